/*
 * imap_guard.c — see imap_guard.h.
 */
#include "imap_guard.h"

#include <stdbool.h>
#include <string.h>

static int lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static const char *find_ci(const char *hay, size_t n, const char *needle)
{
	size_t m = strlen(needle);
	for (size_t i = 0; i + m <= n; i++) {
		size_t j = 0;
		while (j < m && lower((unsigned char)hay[i + j]) == lower((unsigned char)needle[j]))
			j++;
		if (j == m)
			return hay + i;
	}
	return NULL;
}

/* RFC 3501 ATOM-CHAR: any CHAR except atom-specials. */
static bool atom_char(unsigned char c)
{
	if (c <= 0x1f || c >= 0x7f)
		return false;
	return !strchr("(){ %*\"\\]", c);
}

/*
 * Checks "(flag-perm *(SP flag-perm))" or "()" at p: flag-perm is "\*",
 * "\" atom or atom. Anything else, or a line that ends first, is refused.
 */
static bool permflags_ok(const char *p, const char *end)
{
	if (p >= end || *p != '(')
		return false;
	p++;
	for (;;) {
		while (p < end && *p == ' ')
			p++;
		if (p >= end)
			return false;
		if (*p == ')')
			return true;
		if (*p == '\\') {
			p++;
			if (p < end && *p == '*') {
				p++;
				continue;
			}
		}
		if (p >= end || !atom_char((unsigned char)*p))
			return false;
		while (p < end && atom_char((unsigned char)*p))
			p++;
		if (p < end && *p != ' ' && *p != ')')
			return false;
	}
}

/* A cursor over a line, for the NAMESPACE check. */
struct cur {
	const char *p, *end;
};

static bool eat(struct cur *c, const char *tok)
{
	size_t m = strlen(tok);
	if ((size_t)(c->end - c->p) < m)
		return false;
	for (size_t i = 0; i < m; i++)
		if (lower((unsigned char)c->p[i]) != lower((unsigned char)tok[i]))
			return false;
	c->p += m;
	return true;
}

/* A quoted string (a literal inside NAMESPACE is refused: no server sends
 * one, and libetpan's error path is where it breaks). */
static bool quoted(struct cur *c)
{
	if (!eat(c, "\""))
		return false;
	while (c->p < c->end) {
		char ch = *c->p++;
		if (ch == '"')
			return true;
		if (ch == '\\') {
			if (c->p >= c->end || (*c->p != '"' && *c->p != '\\'))
				return false;
			c->p++;
		} else if (ch == '\r' || ch == '\n' || ch == '\0') {
			return false;
		}
	}
	return false;
}

/* "(" string SP (DQUOTE char DQUOTE / NIL) *(SP string SP "(" string
 * *(SP string) ")") ")" */
static bool ns_desc(struct cur *c)
{
	if (!eat(c, "(") || !quoted(c) || !eat(c, " "))
		return false;
	if (!eat(c, "NIL")) {
		const char *q = c->p;
		if (!quoted(c))
			return false;
		size_t n = (size_t)(c->p - q); /* "x" or "\x" */
		if (n != 3 && !(n == 4 && q[1] == '\\'))
			return false;
	}
	while (eat(c, " ")) {
		if (!quoted(c) || !eat(c, " ") || !eat(c, "(") || !quoted(c))
			return false;
		while (eat(c, " "))
			if (!quoted(c))
				return false;
		if (!eat(c, ")"))
			return false;
	}
	return eat(c, ")");
}

static bool ns_one(struct cur *c)
{
	if (eat(c, "NIL"))
		return true;
	if (!eat(c, "(") || !ns_desc(c))
		return false;
	while (c->p < c->end && *c->p == '(')
		if (!ns_desc(c))
			return false;
	return eat(c, ")");
}

/* "* NAMESPACE" SP ns SP ns SP ns, nothing after. */
static bool namespace_ok(const char *p, const char *end)
{
	struct cur c = { p, end };
	return ns_one(&c) && eat(&c, " ") && ns_one(&c) && eat(&c, " ") && ns_one(&c) &&
	    c.p == c.end;
}

/* Every "[ PERMANENTFLAGS" response code of the line (spaces allowed,
 * as libetpan allows them) must hold a well-formed list. */
static bool line_permflags_ok(const char *line, size_t len)
{
	const char *end = line + len, *p = line;
	while ((p = find_ci(p, (size_t)(end - p), "PERMANENTFLAGS"))) {
		const char *b = p;
		while (b > line && (b[-1] == ' ' || b[-1] == '\t'))
			b--;
		p += 14;
		if (b == line || b[-1] != '[')
			continue;
		const char *q = p;
		while (q < end && (*q == ' ' || *q == '\t'))
			q++;
		if (!permflags_ok(q, end))
			return false;
	}
	return true;
}

/* A complete line (without its line break) has been seen. */
static int end_of_line(struct imap_guard *g)
{
	/* spaces, "*", spaces, NAMESPACE: then exactly "* NAMESPACE " and the
	 * RFC 2342 form. */
	const char *l = g->line, *e = g->line + g->len, *q = l;
	while (q < e && (*q == ' ' || *q == '\t'))
		q++;
	if (q < e && *q == '*') {
		q++;
		while (q < e && (*q == ' ' || *q == '\t'))
			q++;
		struct cur c = { q, e };
		if (eat(&c, "NAMESPACE") && (c.p == e || !atom_char((unsigned char)*c.p)) &&
		    (q != l + 2 || l[1] != ' ' || g->len != g->line_total || !eat(&c, " ") ||
			!namespace_ok(c.p, e))) {
			g->why = "malformed NAMESPACE response";
			return -1;
		}
	}
	if (!line_permflags_ok(g->line, g->len)) {
		g->why = "malformed PERMANENTFLAGS response code";
		return -1;
	}
	/* A literal follows when the line ends with {N} (or {N+}). */
	size_t t = g->tail_len;
	const char *s = g->tail;
	if (t >= 3 && s[t - 1] == '}') {
		size_t i = t - 1;
		if (i > 0 && s[i - 1] == '+')
			i--;
		size_t digits_end = i;
		while (i > 0 && s[i - 1] >= '0' && s[i - 1] <= '9')
			i--;
		if (i > 0 && s[i - 1] == '{' && digits_end > i) {
			if (digits_end - i > 19) {
				g->why = "the server announced an impossible literal size";
				return -1;
			}
			uint64_t v = 0;
			for (size_t k = i; k < digits_end; k++)
				v = v * 10 + (uint64_t)(s[k] - '0');
			if (v > IMAP_GUARD_MAX_LITERAL) {
				g->why = "the server announced a literal larger than 1 GiB";
				return -1;
			}
			g->literal_left = v;
		}
	}
	g->len = 0;
	g->tail_len = 0;
	g->line_total = 0;
	return 0;
}

int imap_guard_feed(struct imap_guard *g, const char *p, size_t n)
{
	if (g->why)
		return -1;
	while (n) {
		if (g->literal_left) {
			size_t take = g->literal_left < n ? (size_t)g->literal_left : n;
			g->literal_left -= take;
			p += take;
			n -= take;
			continue;
		}
		char c = *p++;
		n--;
		if (c == '\n') {
			/* drop the CR of CRLF from what is kept */
			if (g->tail_len && g->tail[g->tail_len - 1] == '\r') {
				g->tail_len--;
				if (g->len == g->line_total)
					g->len--;
				g->line_total--;
			}
			if (end_of_line(g) < 0)
				return -1;
			continue;
		}
		g->line_total++;
		if (g->len < sizeof g->line)
			g->line[g->len++] = c;
		if (g->tail_len == sizeof g->tail) {
			memmove(g->tail, g->tail + 1, sizeof g->tail - 1);
			g->tail_len--;
		}
		g->tail[g->tail_len++] = c;
	}
	return 0;
}
