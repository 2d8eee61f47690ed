/*
 * url.c — parses account URLs (see url.h for the grammar).
 *
 * The parser is strict on purpose: a typo in an account URL should stop the
 * run with a message naming the part at fault, not connect somewhere
 * unexpected or, worse, in plaintext. Error messages quote the URL, so it is
 * first redacted: a password (user:pass@) is refused, but the user must not
 * find it echoed in a terminal or a log either.
 */
#include "url.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static const struct {
	const char *name;
	enum acct_proto proto;
	enum tls_mode tls;
	uint16_t port;
} schemes[] = {
	{ "imap", PROTO_IMAP, TLS_STARTTLS, 143 },
	{ "imaps", PROTO_IMAP, TLS_IMPLICIT, 993 },
	{ "pop3", PROTO_POP3, TLS_STARTTLS, 110 },
	{ "pop3s", PROTO_POP3, TLS_IMPLICIT, 995 },
};

static const char *const auth_mechs[] = { "plain", "login", "cram-md5", "xoauth2" };

static const char password_hint[] =
	"passwords never go on the command line "
	"(use POSTINO_PASSWORDN, --passfileN or --passcmdN)";

static void set_err(char **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_err(char **err, const char *fmt, ...)
{
	va_list ap;

	if (!err)
		return;
	va_start(ap, fmt);
	*err = xvasprintf(fmt, ap);
	va_end(ap);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* ASCII case-insensitive match (whatever the locale) of a span and a lowercase word. */
static bool span_eq(const char *s, size_t len, const char *word)
{
	size_t i;

	for (i = 0; i < len && word[i]; i++) {
		char c = s[i];
		if (c >= 'A' && c <= 'Z')
			c = (char)(c + ('a' - 'A'));
		if (c != word[i])
			return false;
	}
	return i == len && !word[i];
}

/*
 * Finds a password in s: the text between the first ':' of the userinfo
 * and the last '@'. Deliberately generous: whatever the rest of the URL
 * looks like, a ':' before the last '@' is taken to start a password, so
 * that a password containing '/', '?' or '@' is still caught. Returns
 * true with the span [*start, *end) if one is found.
 */
static bool find_password(const char *s, size_t *start, size_t *end)
{
	const char *at = strrchr(s, '@');
	if (!at)
		return false;
	const char *from = strstr(s, "://");
	if (from && from < at) {
		from += 3;
	} else {
		/* "imap:/u@h" is a typo, not a password: skip "SCHEME:/". */
		size_t n = strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-");
		from = n > 0 && s[n] == ':' && s[n + 1] == '/' ? s + n + 1 : s;
	}
	if (from > at)
		return false;
	const char *colon = memchr(from, ':', (size_t)(at - from));
	if (!colon)
		return false;
	*start = (size_t)(colon + 1 - s);
	*end = (size_t)(at - s);
	return true;
}

static bool known_param(const char *name, size_t len)
{
	return span_eq(name, len, "tls") || span_eq(name, len, "auth");
}

/*
 * The URL as quoted in error messages: a password and the values of
 * unknown query parameters ("?pass=...") replaced by "***".
 */
static char *redact(const char *s)
{
	struct buf b = BUF_INIT;
	size_t pstart, pend;
	const char *q;

	if (find_password(s, &pstart, &pend)) {
		buf_add(&b, s, pstart);
		buf_adds(&b, "***");
		s += pend;
	}
	q = strchr(s, '?');
	if (!q) {
		buf_adds(&b, s);
		return buf_detach(&b);
	}
	buf_add(&b, s, (size_t)(q - s));
	for (const char *p = q; *p;) {
		/* p is at '?' or '&': copy the name, and the value if known. */
		buf_addc(&b, *p++);
		size_t n = strcspn(p, "&");
		const char *eq = memchr(p, '=', n);
		if (eq && !known_param(p, (size_t)(eq - p))) {
			buf_add(&b, p, (size_t)(eq - p));
			buf_adds(&b, "=***");
		} else {
			buf_add(&b, p, n);
		}
		p += n;
	}
	return buf_detach(&b);
}

/* Percent-decodes the user part; on error sets *err and returns NULL. */
static char *decode_user(const char *p, size_t len, const char *shown, char **err)
{
	struct buf b = BUF_INIT;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c == '%') {
			int hi = i + 1 < len ? hexval(p[i + 1]) : -1;
			int lo = i + 2 < len ? hexval(p[i + 2]) : -1;
			if (hi < 0 || lo < 0) {
				set_err(err, "invalid percent-encoding '%.*s' in the user of '%s'",
					(int)(len - i < 3 ? len - i : 3), p + i, shown);
				goto fail;
			}
			c = (unsigned char)(hi * 16 + lo);
			i += 2;
			/* These would end or split a protocol line. */
			if (c == 0 || c == '\r' || c == '\n') {
				set_err(err, "the user in '%s' contains a NUL, CR or LF", shown);
				goto fail;
			}
		} else if (c <= 0x20 || c == 0x7f) {
			set_err(err, "invalid character in the user of '%s' (percent-encode it)",
				shown);
			goto fail;
		}
		buf_addc(&b, (char)c);
	}
	return buf_detach(&b);

fail:
	buf_release(&b);
	return NULL;
}

/* The user as it appears in display: RFC 3986 unreserved chars kept. */
static void encode_user(struct buf *b, const char *user)
{
	for (const unsigned char *p = (const unsigned char *)user; *p; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		    (*p >= '0' && *p <= '9') || strchr("-._~", *p))
			buf_addc(b, (char)*p);
		else
			buf_addf(b, "%%%02X", *p);
	}
}

static bool host_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_';
}

/*
 * Parses HOST[:PORT] (len bytes at p) into u->host and u->port. Returns 0,
 * or -1 with *err set.
 */
static int parse_hostport(const char *p, size_t len, struct account_url *u,
			  const char *shown, char **err)
{
	const char *end = p + len, *hend;

	if (len == 0) {
		set_err(err, "missing host in '%s'", shown);
		return -1;
	}
	if (*p == '[') {
		const char *close = memchr(p, ']', len);
		char lit[INET6_ADDRSTRLEN + 1], canon[INET6_ADDRSTRLEN];
		struct in6_addr a;
		size_t n = close ? (size_t)(close - p - 1) : 0;

		if (!close) {
			set_err(err, "unterminated IPv6 address (missing ']') in '%s'", shown);
			return -1;
		}
		if (n >= sizeof(lit)) {
			set_err(err, "invalid IPv6 address '%.*s' in '%s'", (int)n, p + 1, shown);
			return -1;
		}
		memcpy(lit, p + 1, n);
		lit[n] = 0;
		/* Canonical text, so that one server has one display form. */
		if (inet_pton(AF_INET6, lit, &a) != 1 ||
		    !inet_ntop(AF_INET6, &a, canon, sizeof(canon))) {
			set_err(err, "invalid IPv6 address '%s' in '%s'", lit, shown);
			return -1;
		}
		u->host = xstrdup(canon);
		hend = close + 1;
		if (hend < end && *hend != ':') {
			set_err(err, "unexpected '%.*s' after the host in '%s'",
				(int)(end - hend), hend, shown);
			return -1;
		}
	} else {
		hend = memchr(p, ':', len);
		if (!hend)
			hend = end;
		if (hend == p) {
			set_err(err, "missing host in '%s'", shown);
			return -1;
		}
		for (const char *h = p; h < hend; h++) {
			if (!host_char(*h)) {
				set_err(err, "invalid character in the host '%.*s' of '%s'",
					(int)(hend - p), p, shown);
				return -1;
			}
		}
		/* Host names are case-insensitive: keep one form. */
		u->host = xstrndup(p, (size_t)(hend - p));
		for (char *h = u->host; *h; h++) {
			if (*h >= 'A' && *h <= 'Z')
				*h = (char)(*h + ('a' - 'A'));
		}
	}

	if (hend == end)
		return 0;
	/* *hend == ':' */
	const char *port = hend + 1;
	size_t plen = (size_t)(end - port);
	unsigned long v = 0;
	if (plen == 0) {
		set_err(err, "missing port after ':' in '%s'", shown);
		return -1;
	}
	for (size_t i = 0; i < plen; i++) {
		if (port[i] < '0' || port[i] > '9' || v > 65535) {
			v = 0; /* also catches very long digit strings */
			break;
		}
		v = v * 10 + (unsigned long)(port[i] - '0');
	}
	if (v == 0 || v > 65535) {
		set_err(err, "invalid port '%.*s' in '%s' (expected 1-65535)",
			(int)plen, port, shown);
		return -1;
	}
	u->port = (uint16_t)v;
	return 0;
}

/* Parses the query (after '?'). Returns 0, or -1 with *err set. */
static int parse_query(const char *q, struct account_url *u, const char *shown, char **err)
{
	bool seen_tls = false;

	for (;;) {
		size_t n = strcspn(q, "&");
		const char *eq = memchr(q, '=', n);
		size_t nlen = eq ? (size_t)(eq - q) : n;
		const char *val = eq ? eq + 1 : q + n;
		size_t vlen = (size_t)(q + n - val);

		if (n == 0) {
			set_err(err, "empty parameter in '%s'", shown);
			return -1;
		}
		if (!known_param(q, nlen)) {
			set_err(err, "unknown parameter '%.*s' in '%s' (known: tls, auth)",
				(int)nlen, q, shown);
			return -1;
		}
		if (!eq || vlen == 0) {
			set_err(err, "missing value for parameter '%.*s' in '%s'",
				(int)nlen, q, shown);
			return -1;
		}
		if (span_eq(q, nlen, "tls")) {
			if (seen_tls) {
				set_err(err, "parameter 'tls' given twice in '%s'", shown);
				return -1;
			}
			seen_tls = true;
			if (!span_eq(val, vlen, "none")) {
				set_err(err, "invalid value '%.*s' for tls in '%s' "
					"(the only value is tls=none)", (int)vlen, val, shown);
				return -1;
			}
			u->tls = TLS_NONE;
		} else {
			if (u->auth) {
				set_err(err, "parameter 'auth' given twice in '%s'", shown);
				return -1;
			}
			for (size_t i = 0; i < ARRAY_SIZE(auth_mechs); i++) {
				if (span_eq(val, vlen, auth_mechs[i]))
					u->auth = xstrdup(auth_mechs[i]);
			}
			if (!u->auth && span_eq(val, vlen, "apop")) {
				set_err(err, "APOP is not supported in '%s': libetpan 1.9.4's APOP "
					"is broken on 64-bit systems; use USER/PASS (the default) or "
					"auth=plain over TLS", shown);
				return -1;
			}
			if (!u->auth) {
				set_err(err, "unknown auth mechanism '%.*s' in '%s' "
					"(use plain, login, cram-md5 or xoauth2)",
					(int)vlen, val, shown);
				return -1;
			}
		}
		if (!q[n])
			return 0;
		q += n + 1;
	}
}

static const char *scheme_name(enum acct_proto proto, enum tls_mode tls)
{
	if (proto == PROTO_IMAP)
		return tls == TLS_IMPLICIT ? "imaps" : "imap";
	return tls == TLS_IMPLICIT ? "pop3s" : "pop3";
}

/* USER@HOST:PORT, the part of display and account that names the mailbox. */
static void add_userhostport(struct buf *b, const struct account_url *u)
{
	encode_user(b, u->user);
	if (strchr(u->host, ':'))
		buf_addf(b, "@[%s]:%u", u->host, (unsigned)u->port);
	else
		buf_addf(b, "@%s:%u", u->host, (unsigned)u->port);
}

/* The display form of u's account with this TLS mode and mechanism. */
static char *make_display_as(const struct account_url *u, enum tls_mode tls,
			     const char *auth)
{
	struct buf b = BUF_INIT;

	buf_adds(&b, scheme_name(u->proto, tls));
	buf_adds(&b, "://");
	add_userhostport(&b, u);
	if (tls == TLS_NONE)
		buf_adds(&b, "?tls=none");
	if (auth)
		buf_addf(&b, "%cauth=%s", tls == TLS_NONE ? '&' : '?', auth);
	return buf_detach(&b);
}

static char *make_display(const struct account_url *u)
{
	return make_display_as(u, u->tls, u->auth);
}

/* Not a URL on purpose (no "//"): it says which mailbox, not how to connect. */
static char *make_account(const struct account_url *u)
{
	struct buf b = BUF_INIT;

	buf_adds(&b, u->proto == PROTO_IMAP ? "imap:" : "pop3:");
	add_userhostport(&b, u);
	return buf_detach(&b);
}

int url_parse(const char *s, struct account_url *u, char **err)
{
	int ret = -1;
	char *shown = redact(s);
	const char *sep, *rest, *at, *tail, *q;
	size_t alen, pstart, pend, i;

	memset(u, 0, sizeof(*u));
	if (err)
		*err = NULL;

	/* First, so that no later message can be about a password's text. */
	if (find_password(s, &pstart, &pend)) {
		set_err(err, "password in '%s' refused: %s", shown, password_hint);
		goto out;
	}

	sep = strstr(s, "://");
	if (!sep) {
		set_err(err, "missing scheme in '%s' (use imap://, imaps://, pop3:// or pop3s://)",
			shown);
		goto out;
	}
	for (i = 0; i < ARRAY_SIZE(schemes); i++) {
		if (span_eq(s, (size_t)(sep - s), schemes[i].name))
			break;
	}
	if (i == ARRAY_SIZE(schemes)) {
		set_err(err, "unknown scheme '%.*s' in '%s' (use imap, imaps, pop3 or pop3s)",
			(int)(sep - s), s, shown);
		goto out;
	}
	u->proto = schemes[i].proto;
	u->tls = schemes[i].tls;
	u->port = schemes[i].port;

	rest = sep + 3;
	alen = strcspn(rest, "/?#");
	/* The last '@': a user written unencoded as me@example.com still works. */
	at = NULL;
	for (const char *p = rest; p < rest + alen; p++) {
		if (*p == '@')
			at = p;
	}
	if (!at) {
		set_err(err, "missing user in '%s' (expected %s://USER@HOST)",
			shown, schemes[i].name);
		goto out;
	}
	if (at == rest) {
		set_err(err, "empty user in '%s'", shown);
		goto out;
	}
	u->user = decode_user(rest, (size_t)(at - rest), shown, err);
	if (!u->user)
		goto out;
	if (parse_hostport(at + 1, (size_t)(rest + alen - at - 1), u, shown, err) < 0)
		goto out;

	tail = rest + alen;
	q = *tail == '/' ? tail + 1 : tail;
	if (*q == '?') {
		if (parse_query(q + 1, u, shown, err) < 0)
			goto out;
	} else if (*q) {
		/* Not the query: never contains a password at this point. */
		set_err(err, "unexpected '%.*s' after the host in '%s' "
			"(only a '/' and ?tls=none or ?auth=MECH may follow)",
			(int)strcspn(tail, "?"), tail, shown);
		goto out;
	}
	if (u->tls == TLS_NONE && schemes[i].tls == TLS_IMPLICIT) {
		set_err(err, "tls=none contradicts %s:// in '%s' (use %s:// for plaintext)",
			schemes[i].name, shown, u->proto == PROTO_IMAP ? "imap" : "pop3");
		goto out;
	}

	u->display = make_display(u);
	u->account = make_account(u);
	ret = 0;

out:
	if (ret < 0)
		url_free(u);
	free(shown);
	return ret;
}

const char *url_auth_mech(const char *mech)
{
	for (size_t i = 0; mech && i < ARRAY_SIZE(auth_mechs); i++)
		if (ascii_strcasecmp(mech, auth_mechs[i]) == 0)
			return auth_mechs[i];
	return NULL;
}

int url_set_auth(struct account_url *u, const char *mech, char **err)
{
	const char *m = url_auth_mech(mech);

	if (!m) {
		set_err(err, "unknown auth mechanism '%s' (use plain, login, cram-md5 or xoauth2)",
			mech);
		return -1;
	}
	if (u->proto == PROTO_POP3 && strcmp(m, "xoauth2") == 0) {
		set_err(err, "XOAUTH2 is not supported for POP3 ('%s')", u->display);
		return -1;
	}
	free(u->auth);
	u->auth = xstrdup(m);
	free(u->display);
	u->display = make_display(u);
	return 0;
}

size_t url_display_forms(const struct account_url *u, char ***list_r)
{
	static const enum tls_mode tls[] = { TLS_IMPLICIT, TLS_STARTTLS, TLS_NONE };
	size_t n = 0, max = ARRAY_SIZE(tls) * (ARRAY_SIZE(auth_mechs) + 1);
	char **list = xcalloc(max, sizeof(*list));

	list[n++] = xstrdup(u->display);
	for (size_t t = 0; t < ARRAY_SIZE(tls); t++) {
		/* i == ARRAY_SIZE(auth_mechs): no mechanism */
		for (size_t i = 0; i <= ARRAY_SIZE(auth_mechs); i++) {
			const char *auth = i < ARRAY_SIZE(auth_mechs) ? auth_mechs[i] : NULL;
			if (auth && u->proto == PROTO_POP3 && strcmp(auth, "xoauth2") == 0)
				continue;
			char *d = make_display_as(u, tls[t], auth);
			if (strcmp(d, u->display) == 0)
				free(d);
			else
				list[n++] = d;
		}
	}
	*list_r = list;
	return n;
}

void url_free(struct account_url *u)
{
	free(u->user);
	free(u->host);
	free(u->auth);
	free(u->display);
	free(u->account);
	memset(u, 0, sizeof(*u));
}
