/*
 * test_escape.c — the escape rule for folder names a destination refuses
 * (planner.h): golden values, round trips, no collisions, and what the plan
 * does with it (an escaped name for every folder to create, never one that
 * merges two folders, and a known escaped pair shown as such).
 *
 * Expected UTF-8 bytes were written by hand from the code points (the
 * fullwidth form of an ASCII character is U+FEE0 above it); expected
 * modified UTF-7 was computed outside postino (Python, tests/integration/
 * harness.py's encoder), not with src/mutf7.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "planner.h"
#include "util.h"

/* U+2215 DIVISION SLASH and the fullwidth forms, in UTF-8 */
#define U_SLASH "\xE2\x88\x95"
#define FW_EXCL "\xEF\xBC\x81"   /* ! U+FF01 */
#define FW_PCT "\xEF\xBC\x85"    /* % U+FF05 */
#define FW_STAR "\xEF\xBC\x8A"   /* * U+FF0A */
#define FW_SEMI "\xEF\xBC\x9B"   /* ; U+FF1B */
#define FW_LT "\xEF\xBC\x9C"     /* < U+FF1C */
#define FW_GT "\xEF\xBC\x9E"     /* > U+FF1E */
#define FW_BTICK "\xEF\xBD\x80"  /* ` U+FF40 */
#define FW_LBRACE "\xEF\xBD\x9B" /* { U+FF5B */
#define FW_BAR "\xEF\xBD\x9C"    /* | U+FF5C */
#define FW_RBRACE "\xEF\xBD\x9D" /* } U+FF5D */

/* ------------------------------------------------------------------ */
/* one component */

static const struct { const char *in, *out; } golden[] = {
	{"", ""},
	{"Work", "Work"},
	{"Caf\xC3\xA9", "Caf\xC3\xA9"},
	{"a.b", "a.b"},          /* the delimiter rule is the planner's, not this */
	{"a&b c", "a&b c"},
	{"\xE6\x97\xA5\xE6\x9C\xAC", "\xE6\x97\xA5\xE6\x9C\xAC"},
	{"a/b", "a" U_SLASH "b"},
	{"50%", "50" FW_PCT},
	{"Offers 50%!", "Offers 50" FW_PCT FW_EXCL},
	{";", FW_SEMI},
	{"<tag>", FW_LT "tag" FW_GT},
	{"{x}", FW_LBRACE "x" FW_RBRACE},
	{"a|b", "a" FW_BAR "b"},
	{"`cmd`", FW_BTICK "cmd" FW_BTICK},
	{"*", FW_STAR},
	{"/%!;<>{}|`*", U_SLASH FW_PCT FW_EXCL FW_SEMI FW_LT FW_GT FW_LBRACE FW_RBRACE FW_BAR
	    FW_BTICK FW_STAR},
};

static void test_golden(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(golden); i++) {
		char *e = plan_escape_name(golden[i].in);
		if (strcmp(e, golden[i].out))
			fail_msg("escape '%s': got '%s', want '%s'", golden[i].in, e, golden[i].out);
		char *u = plan_unescape_name(e);
		if (strcmp(u, golden[i].in))
			fail_msg("unescape '%s': got '%s', want '%s'", e, u, golden[i].in);
		/* nothing a server refuses is left */
		for (const char *p = e; *p; p++)
			if (strchr(PLAN_ESCAPED_CHARS, *p))
				fail_msg("escape '%s' left '%c' in '%s'", golden[i].in, *p, e);
		free(e);
		free(u);
	}
}

/* Look-alikes of characters outside the rule, and other fullwidth
 * characters, are not touched by unescape. */
static void test_unescape_leaves_others(void **state)
{
	(void)state;
	static const char *const keep[] = {
		"\xEF\xBC\xA1",          /* U+FF21 FULLWIDTH A */
		"\xEF\xBC\x8E",          /* U+FF0E FULLWIDTH FULL STOP ('.' is not escaped) */
		"\xEF\xBC\xBC",          /* U+FF3C, the '\' delimiter look-alike */
		"\xE2\x80\xA4",          /* U+2024, the '.' delimiter look-alike */
		"\xEF\xBD\x9E",          /* U+FF5E FULLWIDTH TILDE */
		"\xEF\xBC",              /* a truncated sequence */
	};
	for (size_t i = 0; i < ARRAY_SIZE(keep); i++) {
		char *u = plan_unescape_name(keep[i]);
		assert_string_equal(u, keep[i]);
		free(u);
	}
}

/*
 * Every name of up to 4 characters over an alphabet with every escaped
 * character, the delimiters and non-ASCII: escape then unescape is the
 * identity, and no two names escape to the same name.
 */
static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_round_trip_no_collisions(void **state)
{
	(void)state;
	static const char *const alpha[] = {
		"a", " ", ".", "&", "\xC3\xA9", "/", "%", "!", ";", "<", ">", "{", "}", "|",
		"`", "*",
	};
	const size_t na = ARRAY_SIZE(alpha);
	size_t total = 0;
	for (size_t len = 0, n = 1; len <= 4; len++, n *= na)
		total += n;
	char **out = xcalloc(total, sizeof *out);
	size_t k = 0;
	for (size_t len = 0, n = 1; len <= 4; len++, n *= na)
		for (size_t x = 0; x < n; x++) {
			char in[32] = "";
			for (size_t d = 0, v = x; d < len; d++, v /= na)
				strcat(in, alpha[v % na]);
			char *e = plan_escape_name(in);
			char *u = plan_unescape_name(e);
			if (strcmp(u, in))
				fail_msg("'%s' -> '%s' -> '%s'", in, e, u);
			free(u);
			out[k++] = e;
		}
	assert_int_equal(k, total);
	xqsort(out, k, sizeof *out, cmp_str);
	for (size_t i = 1; i < k; i++)
		if (!strcmp(out[i - 1], out[i]))
			fail_msg("two names escape to '%s'", out[i]);
	for (size_t i = 0; i < k; i++)
		free(out[i]);
	free(out);
}

/* A name that holds a look-alike already meets the escaped form of
 * another: the rule alone is not injective there, which is why the plan
 * guards it (test_plan_never_merges). */
static void test_lookalike_in_source_meets(void **state)
{
	(void)state;
	char *a = plan_escape_name("a%");
	char *b = plan_escape_name("a" FW_PCT);
	assert_string_equal(a, b);
	free(a);
	free(b);
}

/* ------------------------------------------------------------------ */
/* wire names */

static const struct {
	const char *wire, *prefix;
	char delim;
	const char *want; /* NULL: not valid modified UTF-7 */
} wire_cases[] = {
	{"INBOX", "INBOX.", '.', "INBOX"},
	{"inbox", "", '/', "INBOX"},
	{"Work", "", '/', "Work"},
	{"INBOX.Offers 50%!", "INBOX.", '.', "INBOX.Offers 50&,wX,AQ-"},
	{"a%b/c!", "", '/', "a&,wU-b/c&,wE-"},
	/* a '/' inside a name on a '.' server: the U+2215 of the delimiter rule */
	{"INBOX.a/b", "INBOX.", '.', "INBOX.a&IhU-b"},
	/* the prefix and the delimiter are left alone */
	{"INBOX.x%.y", "INBOX.", '.', "INBOX.x&,wU-.y"},
	/* non-ASCII next to an escaped character */
	{"Caf&AOk- | x", "", '/', "Caf&AOk- &,1w- x"},
	{"%!;<>{}|`*", "", '/', "&,wX,Af8b,xz,Hv9b,13,XP9A,wo-"},
	/* nothing to escape: the same name */
	{"INBOX.&ZeVnLIqe-.a&-b", "INBOX.", '.', "INBOX.&ZeVnLIqe-.a&-b"},
	{"bad&Jjo", "", '/', NULL},
};

static void test_wire(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(wire_cases); i++) {
		char *w = plan_escape_wire(wire_cases[i].wire, wire_cases[i].prefix,
		    wire_cases[i].delim);
		if (!wire_cases[i].want) {
			if (w)
				fail_msg("escape wire '%s': got '%s', want NULL", wire_cases[i].wire, w);
			continue;
		}
		if (!w || strcmp(w, wire_cases[i].want))
			fail_msg("escape wire '%s': got '%s', want '%s'", wire_cases[i].wire,
			    w ? w : "(null)", wire_cases[i].want);
		free(w);
	}
}

/* The escaped wire name seen as a path holds the look-alikes, one level
 * per component: nothing became a new level. */
static void test_wire_path(void **state)
{
	(void)state;
	char *w = plan_escape_wire("INBOX.a/b.c%", "INBOX.", '.');
	assert_non_null(w);
	char *p = plan_path_of(w, "INBOX.", '.');
	assert_string_equal(p, "a" U_SLASH "b/c" FW_PCT);
	free(w);
	free(p);
}

/* ------------------------------------------------------------------ */
/* in the plan */

static struct store_folder_list *flist(char delim, const char *const *names, size_t n,
    unsigned attrs)
{
	struct store_folder_list *l = xcalloc(1, sizeof *l);
	l->v = xcalloc(n ? n : 1, sizeof *l->v);
	for (size_t i = 0; i < n; i++)
		l->v[i] = (struct store_folder){xstrdup(names[i]), delim, attrs};
	l->n = n;
	return l;
}

static const struct plan_entry *entry(const struct plan *p, const char *src_name)
{
	for (size_t i = 0; i < p->n; i++)
		if (!strcmp(p->v[i].src_name, src_name))
			return &p->v[i];
	fail_msg("no plan entry for '%s'", src_name);
	return NULL;
}

/* Every folder to create carries its escaped name (as wire name and as a
 * path); folders that exist, or whose names need nothing, carry none. */
static void test_plan_offers_escaped(void **state)
{
	(void)state;
	static const char *const sn[] = {"INBOX", "Offers 50%!", "Work", "a.b%", "Old|x"};
	static const char *const dn[] = {"INBOX", "INBOX.Old|x"};
	struct store_folder_list *src = flist('/', sn, ARRAY_SIZE(sn), 0);
	struct store_folder_list *dst = flist('.', dn, ARRAY_SIZE(dn), 0);
	struct plan_side s = {src, "", '/', false}, d = {dst, "INBOX.", '.', false};
	struct plan_rules rules;
	memset(&rules, 0, sizeof rules);
	struct plan p;
	char *err = NULL;
	assert_int_equal(plan_build(&p, &s, &d, &rules, NULL, 0, &err), 0);
	assert_null(err);

	const struct plan_entry *e = entry(&p, "Offers 50%!");
	assert_int_equal(e->action, PLAN_CREATE);
	assert_string_equal(e->dst_name, "INBOX.Offers 50%!");
	assert_string_equal(e->dst_escaped, "INBOX.Offers 50&,wX,AQ-");
	assert_string_equal(e->dst_escaped_path, "Offers 50" FW_PCT FW_EXCL);

	e = entry(&p, "Work");
	assert_int_equal(e->action, PLAN_CREATE);
	assert_null(e->dst_escaped);
	assert_null(e->dst_escaped_path);

	/* the '.' of the name is the delimiter rule's U+2024, the '%' this one's */
	e = entry(&p, "a.b%");
	assert_string_equal(e->dst_name, "INBOX.a&ICQ-b%");
	assert_string_equal(e->dst_escaped, "INBOX.a&ICQ-b&,wU-");

	e = entry(&p, "Old|x"); /* exists: copied, never created */
	assert_int_equal(e->action, PLAN_COPY);
	assert_null(e->dst_escaped);

	e = entry(&p, "INBOX");
	assert_null(e->dst_escaped);
	plan_free(&p);
	store_folder_list_free(src);
	store_folder_list_free(dst);
	free(src);
	free(dst);
}

/* Two source folders never meet under an escaped name: the one whose
 * escaped name is another's destination gets none, with a warning. */
static void test_plan_never_merges(void **state)
{
	(void)state;
	static const char *const sn[] = {"INBOX", "a%", "a&,wU-", "b!", "b&,wE-x"};
	struct store_folder_list *src = flist('/', sn, ARRAY_SIZE(sn), 0);
	struct store_folder_list *dst = flist('/', sn, 1, 0);
	struct plan_side s = {src, "", '/', false}, d = {dst, "", '/', false};
	struct plan_rules rules;
	memset(&rules, 0, sizeof rules);
	struct plan p;
	char *err = NULL;
	assert_int_equal(plan_build(&p, &s, &d, &rules, NULL, 0, &err), 0);
	/* "a%" would become "a％", which is where "a％" goes */
	assert_null(entry(&p, "a%")->dst_escaped);
	assert_string_equal(entry(&p, "a&,wU-")->dst_name, "a&,wU-");
	/* "b!" escapes to "b！", which nobody else has: offered */
	assert_string_equal(entry(&p, "b!")->dst_escaped, "b&,wE-");
	bool warned = false;
	for (size_t i = 0; i < p.nwarnings; i++)
		if (strstr(p.warnings[i], "'a%'") && strstr(p.warnings[i], "a" FW_PCT))
			warned = true;
	assert_true(warned);
	/* no two offered escaped names are equal, nor any escaped name a
	 * destination of another entry */
	for (size_t i = 0; i < p.n; i++)
		for (size_t j = 0; j < p.n; j++) {
			if (i == j || !p.v[i].dst_escaped)
				continue;
			assert_string_not_equal(p.v[i].dst_escaped, p.v[j].dst_name);
			if (p.v[j].dst_escaped)
				assert_string_not_equal(p.v[i].dst_escaped, p.v[j].dst_escaped);
		}
	plan_free(&p);
	store_folder_list_free(src);
	store_folder_list_free(dst);
	free(src);
	free(dst);
}

/* A pair recorded with an escaped name (an earlier run was refused the
 * plain one) keeps it, and the plan says why. */
static void test_plan_known_escaped(void **state)
{
	(void)state;
	static const char *const sn[] = {"INBOX", "Offers 50%!", "Work"};
	static const char *const dn[] = {"INBOX", "INBOX.Offers 50&,wX,AQ-", "INBOX.Work"};
	struct store_folder_list *src = flist('/', sn, ARRAY_SIZE(sn), 0);
	struct store_folder_list *dst = flist('.', dn, ARRAY_SIZE(dn), 0);
	struct plan_side s = {src, "", '/', false}, d = {dst, "INBOX.", '.', false};
	struct plan_rules rules;
	memset(&rules, 0, sizeof rules);
	struct plan_known known[] = {
		{"Offers 50%!", "INBOX.Offers 50&,wX,AQ-"},
		{"Work", "INBOX.Work"},
	};
	struct plan p;
	char *err = NULL;
	assert_int_equal(plan_build(&p, &s, &d, &rules, known, ARRAY_SIZE(known), &err), 0);
	const struct plan_entry *e = entry(&p, "Offers 50%!");
	assert_int_equal(e->action, PLAN_COPY);
	assert_string_equal(e->dst_name, "INBOX.Offers 50&,wX,AQ-");
	assert_string_equal(e->dst_path, "Offers 50" FW_PCT FW_EXCL);
	assert_non_null(strstr(e->reason, "escaped"));
	e = entry(&p, "Work");
	assert_string_equal(e->reason, "as in earlier runs");
	plan_free(&p);
	store_folder_list_free(src);
	store_folder_list_free(dst);
	free(src);
	free(dst);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_golden),
		cmocka_unit_test(test_unescape_leaves_others),
		cmocka_unit_test(test_round_trip_no_collisions),
		cmocka_unit_test(test_lookalike_in_source_meets),
		cmocka_unit_test(test_wire),
		cmocka_unit_test(test_wire_path),
		cmocka_unit_test(test_plan_offers_escaped),
		cmocka_unit_test(test_plan_never_merges),
		cmocka_unit_test(test_plan_known_escaped),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
