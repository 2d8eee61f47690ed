/*
 * test_url.c — account URL parsing: every accepted form with its decoded
 * fields and canonical display, every refusal with a message that names the
 * part at fault, and passwords never echoed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "url.h"
#include "util.h"

struct good {
	const char *url;
	enum acct_proto proto;
	enum tls_mode tls;
	const char *user;
	const char *host;
	uint16_t port;
	const char *auth; /* or NULL */
	const char *display;
};

static const struct good goods[] = {
	{ "imap://user@host", PROTO_IMAP, TLS_STARTTLS, "user", "host", 143, NULL,
	  "imap://user@host:143" },
	{ "imaps://user@host", PROTO_IMAP, TLS_IMPLICIT, "user", "host", 993, NULL,
	  "imaps://user@host:993" },
	{ "pop3://user@host", PROTO_POP3, TLS_STARTTLS, "user", "host", 110, NULL,
	  "pop3://user@host:110" },
	{ "pop3s://user@host", PROTO_POP3, TLS_IMPLICIT, "user", "host", 995, NULL,
	  "pop3s://user@host:995" },
	{ "IMAPS://User@Mail.Example.COM", PROTO_IMAP, TLS_IMPLICIT, "User",
	  "mail.example.com", 993, NULL, "imaps://User@mail.example.com:993" },
	{ "Pop3S://u@h", PROTO_POP3, TLS_IMPLICIT, "u", "h", 995, NULL, "pop3s://u@h:995" },
	{ "imaps://user%40example.com@mail.example.com", PROTO_IMAP, TLS_IMPLICIT,
	  "user@example.com", "mail.example.com", 993, NULL,
	  "imaps://user%40example.com@mail.example.com:993" },
	/* An unencoded '@' in the user: the host follows the last '@'. */
	{ "imaps://user@example.com@mail.example.com", PROTO_IMAP, TLS_IMPLICIT,
	  "user@example.com", "mail.example.com", 993, NULL,
	  "imaps://user%40example.com@mail.example.com:993" },
	{ "imap://j%C3%B6rg%20m%2Fx@h", PROTO_IMAP, TLS_STARTTLS, "j\xc3\xb6rg m/x", "h", 143,
	  NULL, "imap://j%C3%B6rg%20m%2Fx@h:143" },
	{ "imap://a-b.c_d~e@h", PROTO_IMAP, TLS_STARTTLS, "a-b.c_d~e", "h", 143, NULL,
	  "imap://a-b.c_d~e@h:143" },
	{ "imap://%61%62@h", PROTO_IMAP, TLS_STARTTLS, "ab", "h", 143, NULL, "imap://ab@h:143" },
	{ "imap://user+tag@h", PROTO_IMAP, TLS_STARTTLS, "user+tag", "h", 143, NULL,
	  "imap://user%2Btag@h:143" },
	{ "imap://u@h:1143", PROTO_IMAP, TLS_STARTTLS, "u", "h", 1143, NULL, "imap://u@h:1143" },
	{ "imap://u@h:1", PROTO_IMAP, TLS_STARTTLS, "u", "h", 1, NULL, "imap://u@h:1" },
	{ "imap://u@h:65535", PROTO_IMAP, TLS_STARTTLS, "u", "h", 65535, NULL, "imap://u@h:65535" },
	{ "imaps://u@h:0993", PROTO_IMAP, TLS_IMPLICIT, "u", "h", 993, NULL, "imaps://u@h:993" },
	{ "imap://u@h/", PROTO_IMAP, TLS_STARTTLS, "u", "h", 143, NULL, "imap://u@h:143" },
	{ "imap://u@192.0.2.7:143/", PROTO_IMAP, TLS_STARTTLS, "u", "192.0.2.7", 143, NULL,
	  "imap://u@192.0.2.7:143" },
	{ "imap://u@[::1]", PROTO_IMAP, TLS_STARTTLS, "u", "::1", 143, NULL, "imap://u@[::1]:143" },
	{ "imap://u@[::1]:1143/", PROTO_IMAP, TLS_STARTTLS, "u", "::1", 1143, NULL,
	  "imap://u@[::1]:1143" },
	{ "imaps://u@[2001:DB8:0::0001]", PROTO_IMAP, TLS_IMPLICIT, "u", "2001:db8::1", 993,
	  NULL, "imaps://u@[2001:db8::1]:993" },
	{ "imap://u@[::ffff:192.0.2.1]", PROTO_IMAP, TLS_STARTTLS, "u", "::ffff:192.0.2.1", 143,
	  NULL, "imap://u@[::ffff:192.0.2.1]:143" },
	{ "imap://u@h?tls=none", PROTO_IMAP, TLS_NONE, "u", "h", 143, NULL,
	  "imap://u@h:143?tls=none" },
	{ "pop3://u@h:1110/?TLS=NONE", PROTO_POP3, TLS_NONE, "u", "h", 1110, NULL,
	  "pop3://u@h:1110?tls=none" },
	{ "imaps://u@h?auth=PLAIN", PROTO_IMAP, TLS_IMPLICIT, "u", "h", 993, "plain",
	  "imaps://u@h:993?auth=plain" },
	{ "imaps://u@h?auth=login", PROTO_IMAP, TLS_IMPLICIT, "u", "h", 993, "login",
	  "imaps://u@h:993?auth=login" },
	{ "imaps://u@h?auth=XOAuth2", PROTO_IMAP, TLS_IMPLICIT, "u", "h", 993, "xoauth2",
	  "imaps://u@h:993?auth=xoauth2" },
	{ "imap://u@h?tls=none&auth=cram-md5", PROTO_IMAP, TLS_NONE, "u", "h", 143, "cram-md5",
	  "imap://u@h:143?tls=none&auth=cram-md5" },
	{ "imap://u@[::1]:2143/?auth=CRAM-MD5&tls=none", PROTO_IMAP, TLS_NONE, "u", "::1", 2143,
	  "cram-md5", "imap://u@[::1]:2143?tls=none&auth=cram-md5" },
};

static void check_good(const struct good *g)
{
	struct account_url u;
	char *err = (char *)"untouched";

	if (url_parse(g->url, &u, &err) != 0)
		fail_msg("'%s' refused: %s", g->url, err);
	assert_null(err);
	assert_int_equal(u.proto, g->proto);
	assert_int_equal(u.tls, g->tls);
	assert_string_equal(u.user, g->user);
	assert_string_equal(u.host, g->host);
	assert_int_equal(u.port, g->port);
	if (g->auth)
		assert_string_equal(u.auth, g->auth);
	else
		assert_null(u.auth);
	assert_string_equal(u.display, g->display);
	url_free(&u);
	assert_null(u.user);
	assert_null(u.display);
	assert_null(u.account);
}

static void test_valid(void **state)
{
	for (size_t i = 0; i < ARRAY_SIZE(goods); i++)
		check_good(&goods[i]);
}

static void test_display_roundtrip(void **state)
{
	/* The display form parses back to the same account. */
	for (size_t i = 0; i < ARRAY_SIZE(goods); i++) {
		struct account_url a, b;
		char *err = NULL;
		assert_int_equal(url_parse(goods[i].url, &a, &err), 0);
		assert_int_equal(url_parse(a.display, &b, &err), 0);
		assert_null(err);
		assert_int_equal(a.proto, b.proto);
		assert_int_equal(a.tls, b.tls);
		assert_string_equal(a.user, b.user);
		assert_string_equal(a.host, b.host);
		assert_int_equal(a.port, b.port);
		assert_string_equal(a.display, b.display);
		assert_string_equal(a.account, b.account);
		if (a.auth)
			assert_string_equal(a.auth, b.auth);
		else
			assert_null(b.auth);
		url_free(&a);
		url_free(&b);
	}
}

struct bad {
	const char *url;
	const char *want;    /* must appear in the error */
	const char *secret;  /* must not appear, or NULL */
};

static const struct bad bads[] = {
	{ "ftp://x@y", "unknown scheme 'ftp' in 'ftp://x@y' (use imap, imaps, pop3 or pop3s)", NULL },
	{ "imapx://x@y", "unknown scheme 'imapx'", NULL },
	{ "://x@y", "unknown scheme ''", NULL },
	{ "mail.example.com", "missing scheme in 'mail.example.com'", NULL },
	{ "imap:/u@h", "missing scheme", NULL },
	{ "", "missing scheme in ''", NULL },
	{ "imap://mail.example.com", "missing user in 'imap://mail.example.com'", NULL },
	{ "imaps://mail.example.com:993/", "missing user", NULL },
	{ "imap://@host", "empty user in 'imap://@host'", NULL },
	{ "imap://u@", "missing host in 'imap://u@'", NULL },
	{ "imap://u@/", "missing host", NULL },
	{ "imap://u@:143", "missing host", NULL },
	{ "imap://u@h:", "missing port after ':'", NULL },
	{ "imap://u@h:0", "invalid port '0'", NULL },
	{ "imap://u@h:65536", "invalid port '65536'", NULL },
	{ "imap://u@h:99999999999999999999", "invalid port '99999999999999999999'", NULL },
	{ "imap://u@h:-1", "invalid port '-1'", NULL },
	{ "imap://u@h:+143", "invalid port '+143'", NULL },
	{ "imap://u@h:14a", "invalid port '14a'", NULL },
	{ "imap://u@h:143:1", "invalid port '143:1'", NULL },
	{ "imap://u@[::1]:x", "invalid port 'x'", NULL },
	{ "imap://u@h/INBOX", "unexpected '/INBOX' after the host", NULL },
	{ "imap://u@h//", "unexpected '//'", NULL },
	{ "imap://u@h#frag", "unexpected '#frag'", NULL },
	{ "imap://u@h/INBOX?foo=bar", "unexpected '/INBOX'", "bar" },
	{ "imap://u@ho st", "invalid character in the host 'ho st'", NULL },
	{ "imap://u@h\xc3\xa9", "invalid character in the host", NULL },
	{ "imap://u@[::1", "unterminated IPv6 address", NULL },
	{ "imap://u@[::g]", "invalid IPv6 address '::g'", NULL },
	{ "imap://u@[]", "invalid IPv6 address ''", NULL },
	{ "imap://u@[192.0.2.1]", "invalid IPv6 address '192.0.2.1'", NULL },
	{ "imap://u@[::1]x", "unexpected 'x' after the host", NULL },
	{ "imap://u%4@h", "invalid percent-encoding '%4'", NULL },
	{ "imap://u%zz@h", "invalid percent-encoding '%zz'", NULL },
	{ "imap://u%@h", "invalid percent-encoding '%'", NULL },
	{ "imap://u%00@h", "contains a NUL, CR or LF", NULL },
	{ "imap://u%0D%0A@h", "contains a NUL, CR or LF", NULL },
	{ "imap://u%0a@h", "contains a NUL, CR or LF", NULL },
	{ "imap://a b@h", "invalid character in the user", NULL },
	{ "imap://u@h?tls=yes", "invalid value 'yes' for tls in 'imap://u@h?tls=yes' "
	  "(the only value is tls=none)", NULL },
	{ "imap://u@h?tls=starttls", "invalid value 'starttls' for tls", NULL },
	{ "imap://u@h?auth=gssapi", "unknown auth mechanism 'gssapi'", NULL },
	{ "imap://u@h?auth=plain&auth=login", "parameter 'auth' given twice", NULL },
	{ "imap://u@h?tls=none&tls=none", "parameter 'tls' given twice", NULL },
	{ "imap://u@h?foo=bar", "unknown parameter 'foo' in 'imap://u@h?foo=***'", "bar" },
	{ "imap://u@h?tls=none&password=hunter2", "unknown parameter 'password'", "hunter2" },
	{ "imap://u@h?verbose", "unknown parameter 'verbose'", NULL },
	{ "imap://u@h?", "empty parameter", NULL },
	{ "imap://u@h?tls=none&", "empty parameter", NULL },
	{ "imap://u@h?tls=none&&auth=plain", "empty parameter", NULL },
	{ "imap://u@h?tls", "missing value for parameter 'tls'", NULL },
	{ "imap://u@h?auth=", "missing value for parameter 'auth'", NULL },
	{ "imaps://u@h?tls=none", "tls=none contradicts imaps://", NULL },
	{ "pop3s://u@h?tls=none", "tls=none contradicts pop3s:// in 'pop3s://u@h?tls=none' "
	  "(use pop3:// for plaintext)", NULL },
	/* Passwords: refused, and never echoed. */
	{ "imap://user:hunter2@host", "password in 'imap://user:***@host' refused", "hunter2" },
	{ "imaps://user%40example.com:hunter2@mail.example.com:993",
	  "passwords never go on the command line", "hunter2" },
	{ "imap://user:hun/ter?2@host", "passwords never go on the command line", "ter" },
	{ "imap://user:p@ssw0rd@host", "passwords never go on the command line", "ssw0rd" },
	{ "IMAPS://u:s3cr3t@[::1]:993", "passwords never go on the command line", "s3cr3t" },
	{ "ftp://u:hunter2@host", "passwords never go on the command line", "hunter2" },
	{ "user:hunter2@host", "passwords never go on the command line", "hunter2" },
	{ "imap://u:@host", "passwords never go on the command line", NULL },
	{ "imap://u:hunter2@host?foo=bar", "passwords never go on the command line", "hunter2" },
};

static void test_invalid(void **state)
{
	for (size_t i = 0; i < ARRAY_SIZE(bads); i++) {
		struct account_url u;
		char *err = NULL;

		memset(&u, 0x55, sizeof(u)); /* must be emptied */
		assert_int_equal(url_parse(bads[i].url, &u, &err), -1);
		assert_non_null(err);
		if (!strstr(err, bads[i].want))
			fail_msg("'%s': error '%s' lacks '%s'", bads[i].url, err, bads[i].want);
		if (bads[i].secret && strstr(err, bads[i].secret))
			fail_msg("'%s': error '%s' shows '%s'", bads[i].url, err, bads[i].secret);
		assert_null(strchr(err, '\n'));
		assert_null(u.user);
		assert_null(u.host);
		assert_null(u.auth);
		assert_null(u.display);
		free(err);
		url_free(&u); /* harmless on an emptied url */
	}
}

static void test_password_hint(void **state)
{
	struct account_url u;
	char *err = NULL;

	assert_int_equal(url_parse("imaps://me:Secret!@mail.example.com", &u, &err), -1);
	assert_non_null(strstr(err, "POSTINO_PASSWORD"));
	assert_non_null(strstr(err, "--passfile"));
	assert_non_null(strstr(err, "--passcmd"));
	assert_null(strstr(err, "Secret"));
	free(err);
}

static void test_null_err(void **state)
{
	struct account_url u;

	/* err is optional. */
	assert_int_equal(url_parse("ftp://x@y", &u, NULL), -1);
	assert_null(u.user);
	assert_int_equal(url_parse("imap://x@y", &u, NULL), 0);
	assert_string_equal(u.display, "imap://x@y:143");
	url_free(&u);
	url_free(&u);
}

/* --auth1/--auth2: the same as ?auth= in the URL, display included. */
static void test_set_auth(void **state)
{
	struct account_url u, v;
	char *err = NULL;

	assert_string_equal(url_auth_mech("XOAUTH2"), "xoauth2");
	assert_string_equal(url_auth_mech("Cram-MD5"), "cram-md5");
	assert_null(url_auth_mech("gssapi"));
	assert_null(url_auth_mech(NULL));

	assert_int_equal(url_parse("imaps://me%40x.example@imap.x.example", &u, &err), 0);
	assert_int_equal(url_set_auth(&u, "XOAuth2", &err), 0);
	assert_string_equal(u.auth, "xoauth2");
	assert_int_equal(url_parse("imaps://me%40x.example@imap.x.example?auth=xoauth2", &v,
	    &err), 0);
	assert_string_equal(u.display, v.display);
	url_free(&v);
	/* overrides the URL's own */
	assert_int_equal(url_set_auth(&u, "plain", &err), 0);
	assert_string_equal(u.display, "imaps://me%40x.example@imap.x.example:993?auth=plain");
	assert_int_equal(url_set_auth(&u, "digest-md5", &err), -1);
	assert_non_null(strstr(err, "digest-md5"));
	assert_string_equal(u.auth, "plain");
	free(err);
	url_free(&u);

	assert_int_equal(url_parse("pop3://me@h?tls=none", &u, &err), 0);
	assert_int_equal(url_set_auth(&u, "cram-md5", &err), 0);
	assert_string_equal(u.display, "pop3://me@h:110?tls=none&auth=cram-md5");
	assert_int_equal(url_set_auth(&u, "xoauth2", &err), -1);
	assert_non_null(strstr(err, "POP3"));
	free(err);
	url_free(&u);
}

/*
 * The account identity names the mailbox: protocol family, user, host and
 * port. The TLS mode and the mechanism say how to log in, not which
 * mailbox: they are not part of it.
 */
static void test_account(void **state)
{
	static const struct {
		const char *a, *b;
		int same;
	} cases[] = {
		{ "imaps://me@h", "imaps://me@h?auth=xoauth2", 1 },
		{ "imaps://me@h?auth=plain", "imaps://me@h:993/?auth=XOAUTH2", 1 },
		{ "imap://me@h:993", "imaps://me@h", 1 },      /* STARTTLS -> TLS, same port */
		{ "imap://me@h?tls=none", "imap://me@h", 1 },
		{ "imap://me@h?tls=none&auth=cram-md5", "imap://me@h:143?auth=login", 1 },
		{ "pop3://me@h:995?tls=none", "pop3s://me@h", 1 },
		{ "imap://me@MAIL.Example.org", "imap://me@mail.example.org", 1 },
		{ "imaps://me%40x.example@h", "imaps://me@x.example@h", 1 },
		{ "imaps://me@[::1]", "imaps://me@[0::1]:993?auth=plain", 1 },
		{ "imaps://me@h", "imaps://Me@h", 0 },         /* the user is as given */
		{ "imaps://me@h", "imaps://you@h", 0 },
		{ "imaps://me@h", "imaps://me@h2", 0 },
		{ "imaps://me@h", "imaps://me@h:994", 0 },
		{ "imap://me@h", "imaps://me@h", 0 },          /* ports 143 and 993 */
		{ "imaps://me@h:995", "pop3s://me@h", 0 },     /* another protocol */
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct account_url a, b;
		assert_int_equal(url_parse(cases[i].a, &a, NULL), 0);
		assert_int_equal(url_parse(cases[i].b, &b, NULL), 0);
		if ((strcmp(a.account, b.account) == 0) != cases[i].same)
			fail_msg("'%s' (%s) and '%s' (%s): expected %s accounts", cases[i].a,
			    a.account, cases[i].b, b.account, cases[i].same ? "the same" : "other");
		url_free(&a);
		url_free(&b);
	}

	struct account_url u;
	char *err = NULL;
	assert_int_equal(url_parse("imap://me%40x.example@[2001:db8::1]:1143?tls=none&auth=plain",
	    &u, NULL), 0);
	assert_string_equal(u.account, "imap:me%40x.example@[2001:db8::1]:1143");
	/* --auth1 changes display, not the account */
	assert_int_equal(url_set_auth(&u, "xoauth2", &err), 0);
	assert_string_equal(u.account, "imap:me%40x.example@[2001:db8::1]:1143");
	assert_string_equal(u.display, "imap://me%40x.example@[2001:db8::1]:1143?tls=none&auth=xoauth2");
	url_free(&u);
	assert_int_equal(url_parse("pop3s://u@h", &u, NULL), 0);
	assert_string_equal(u.account, "pop3:u@h:995");
	/* Not a URL: an identity cannot be mistaken for one with a TLS mode. */
	struct account_url v;
	assert_int_equal(url_parse(u.account, &v, NULL), -1);
	url_free(&u);
}

/* The display forms an older postino may have recorded for one account. */
static void test_display_forms(void **state)
{
	struct account_url u, v;
	char **list;
	size_t n;

	assert_int_equal(url_parse("imaps://me@h?auth=xoauth2", &u, NULL), 0);
	n = url_display_forms(&u, &list);
	/* 3 TLS modes x (4 mechanisms + none) */
	assert_int_equal(n, 15);
	assert_string_equal(list[0], u.display);
	for (size_t i = 0; i < n; i++) {
		/* each parses, to this account, and appears once */
		assert_int_equal(url_parse(list[i], &v, NULL), 0);
		assert_string_equal(v.account, u.account);
		url_free(&v);
		for (size_t j = 0; j < i; j++)
			assert_string_not_equal(list[i], list[j]);
	}
	int seen = 0;
	for (size_t i = 0; i < n; i++) {
		seen += !strcmp(list[i], "imaps://me@h:993");
		seen += !strcmp(list[i], "imap://me@h:993?tls=none&auth=cram-md5");
		seen += !strcmp(list[i], "imap://me@h:993?auth=plain");
		free(list[i]);
	}
	assert_int_equal(seen, 3);
	free(list);
	url_free(&u);

	/* POP3: no XOAUTH2 */
	assert_int_equal(url_parse("pop3://me@h", &u, NULL), 0);
	n = url_display_forms(&u, &list);
	assert_int_equal(n, 12);
	for (size_t i = 0; i < n; i++) {
		assert_null(strstr(list[i], "xoauth2"));
		free(list[i]);
	}
	free(list);
	url_free(&u);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid),
		cmocka_unit_test(test_display_roundtrip),
		cmocka_unit_test(test_invalid),
		cmocka_unit_test(test_password_hint),
		cmocka_unit_test(test_null_err),
		cmocka_unit_test(test_set_auth),
		cmocka_unit_test(test_account),
		cmocka_unit_test(test_display_forms),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
