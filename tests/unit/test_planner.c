/*
 * test_planner.c — folder mapping (src/planner.c): wire names <-> paths on
 * servers with '/' and '.' delimiters and an "INBOX." namespace, and every
 * rule of plan_build() (planner.h): \Noselect, --folder, --exclude, Gmail's
 * virtual folders, --map, --into, pairs from earlier runs, special-use
 * folders, CREATE versus COPY, and the warning for two sources into one
 * destination.
 *
 * Expected modified UTF-7 was computed outside postino (RFC 3501 5.1.3 by
 * hand: UTF-16BE, base64 with ',' for '/'), not with src/mutf7.c.
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

/* U+2215 DIVISION SLASH, U+2024 ONE DOT LEADER, U+FF3C FULLWIDTH REVERSE
 * SOLIDUS in UTF-8 and in modified UTF-7 */
#define U_SLASH "\xE2\x88\x95"
#define U_DOT "\xE2\x80\xA4"
#define U_BSL "\xEF\xBC\xBC"
#define M_SLASH "&IhU-"
#define M_DOT "&ICQ-"
#define M_BSL "&,zw-"

/* ------------------------------------------------------------------ */
/* wire <-> path */

struct conv_case {
	const char *wire;
	const char *prefix;
	char delim;
	const char *path; /* NULL: not valid modified UTF-7 */
};

static const struct conv_case path_cases[] = {
	{"INBOX", "", '/', "INBOX"},
	{"inbox", "", '/', "INBOX"},
	{"Inbox", "INBOX.", '.', "INBOX"},
	{"Work", "", '/', "Work"},
	{"Work/Projects", "", '/', "Work/Projects"},
	{"Work.Projects", "", '.', "Work/Projects"},
	{"INBOX.Work", "INBOX.", '.', "Work"},
	{"INBOX.Work.Projects", "INBOX.", '.', "Work/Projects"},
	/* outside the personal namespace: kept, split at the delimiter */
	{"Shared.team", "INBOX.", '.', "Shared/team"},
	/* the other side's delimiter inside a component: a plain character
	 * on this side, a look-alike in the path only for '/' */
	{"x.y/z", "", '/', "x.y/z"},
	{"a/b.c", "", '.', "a" U_SLASH "b/c"},
	{"INBOX.a/b", "INBOX.", '.', "a" U_SLASH "b"},
	{"a\\b", "", '/', "a\\b"},
	/* non-ASCII names */
	{"Entw&APw-rfe", "", '/', "Entw\xC3\xBCrfe"},
	{"&ZeVnLIqe-/&BB8EPgRIBEIEMA-", "", '/', "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E/"
	    "\xD0\x9F\xD0\xBE\xD1\x88\xD1\x82\xD0\xB0"},
	{"INBOX.&AMk-t&AOk-", "INBOX.", '.', "\xC3\x89t\xC3\xA9"},
	{"a&-b", "", '/', "a&b"},
	/* invalid modified UTF-7 */
	{"bad&Jjo", "", '/', NULL},
	{"caf\xC3\xA9", "", '/', NULL},
};

static void test_path_of(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(path_cases); i++) {
		const struct conv_case *c = &path_cases[i];
		char *p = plan_path_of(c->wire, c->prefix, c->delim);
		if (!c->path) {
			if (p)
				fail_msg("path of '%s': got '%s', want NULL", c->wire, p);
			continue;
		}
		if (!p || strcmp(p, c->path))
			fail_msg("path of '%s' (prefix '%s', delim '%c'): got '%s', want '%s'",
			    c->wire, c->prefix, c->delim, p ? p : "(null)", c->path);
		free(p);
	}
}

static const struct conv_case wire_cases[] = {
	{"INBOX", "", '/', "INBOX"},
	{"INBOX", "INBOX.", '.', "INBOX"},
	{"inbox", "INBOX.", '.', "INBOX"},
	{"Work/Projects", "", '/', "Work/Projects"},
	{"Work/Projects", "", '.', "Work.Projects"},
	{"Work/Projects", "INBOX.", '.', "INBOX.Work.Projects"},
	/* a component holding this side's delimiter gets a look-alike */
	{"a.b/c", "", '/', "a.b/c"},
	{"a.b/c", "INBOX.", '.', "INBOX.a" M_DOT "b.c"},
	{"a\\b", "", '\\', "a" M_BSL "b"},
	/* a '/' of a '.'-server name (a look-alike in the path) is '/' again */
	{"a" U_SLASH "b/c", "", '.', "a/b.c"},
	/* non-ASCII */
	{"Entw\xC3\xBCrfe", "", '/', "Entw&APw-rfe"},
	{"\xC3\x89t\xC3\xA9/x", "INBOX.", '.', "INBOX.&AMk-t&AOk-.x"},
	{"a&b", "", '/', "a&-b"},
	/* not UTF-8 */
	{"caf\xE9", "", '/', NULL},
};

static void test_wire_of(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(wire_cases); i++) {
		const struct conv_case *c = &wire_cases[i];
		/* here .wire is the path and .path the expected wire name */
		char *w = plan_wire_of(c->wire, c->prefix, c->delim);
		if (!c->path) {
			if (w)
				fail_msg("wire of '%s': got '%s', want NULL", c->wire, w);
			continue;
		}
		if (!w || strcmp(w, c->path))
			fail_msg("wire of '%s' (prefix '%s', delim '%c'): got '%s', want '%s'",
			    c->wire, c->prefix, c->delim, w ? w : "(null)", c->path);
		free(w);
	}
}

/* wire -> path -> wire on the same server gives the name back. */
static void test_round_trip_wire(void **state)
{
	(void)state;
	static const struct { const char *wire, *prefix; char delim; } cases[] = {
		{"INBOX", "", '/'},
		{"Work/Projects/2024", "", '/'},
		{"x.y/z", "", '/'},
		{"Entw&APw-rfe/&ZeVnLIqe-", "", '/'},
		{"a&-b", "", '/'},
		{"INBOX", "INBOX.", '.'},
		{"INBOX.Work.Projects", "INBOX.", '.'},
		{"INBOX.&AMk-t&AOk-.Entw&APw-rfe", "INBOX.", '.'},
		{"INBOX.a/b", "INBOX.", '.'},
		{"Work.a/b.c", "", '.'},
	};
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		char *p = plan_path_of(cases[i].wire, cases[i].prefix, cases[i].delim);
		assert_non_null(p);
		char *w = plan_wire_of(p, cases[i].prefix, cases[i].delim);
		if (!w || strcmp(w, cases[i].wire))
			fail_msg("'%s' -> '%s' -> '%s'", cases[i].wire, p, w ? w : "(null)");
		free(p);
		free(w);
	}
}

/* path -> wire -> path, for paths without the server's delimiter inside a
 * component. */
static void test_round_trip_path(void **state)
{
	(void)state;
	static const char *const paths[] = {
		"INBOX", "Work", "Work/Projects/2024", "Entw\xC3\xBCrfe/\xE6\x97\xA5\xE6\x9C\xAC",
		"a&b/c d", "[Gmail]/Sent Mail",
	};
	static const struct { const char *prefix; char delim; } sides[] = {
		{"", '/'}, {"", '.'}, {"INBOX.", '.'}, {"INBOX/", '/'},
	};
	for (size_t s = 0; s < ARRAY_SIZE(sides); s++)
		for (size_t i = 0; i < ARRAY_SIZE(paths); i++) {
			char *w = plan_wire_of(paths[i], sides[s].prefix, sides[s].delim);
			assert_non_null(w);
			char *p = plan_path_of(w, sides[s].prefix, sides[s].delim);
			if (!p || strcmp(p, paths[i]))
				fail_msg("'%s' -> '%s' -> '%s' (prefix '%s', delim '%c')", paths[i], w,
				    p ? p : "(null)", sides[s].prefix, sides[s].delim);
			free(w);
			free(p);
		}
}

/* A name crossing to a server with the other delimiter stays one level. */
static void test_delimiter_never_a_new_level(void **state)
{
	(void)state;
	/* '.' server "INBOX.a/b" to a '/' server */
	char *p = plan_path_of("INBOX.a/b", "INBOX.", '.');
	char *w = plan_wire_of(p, "", '/');
	assert_string_equal(w, "a" M_SLASH "b");
	assert_null(strchr(w, '/'));
	free(p);
	free(w);
	/* '/' server "x.y/z" to a '.' server: two levels, not three */
	p = plan_path_of("x.y/z", "", '/');
	w = plan_wire_of(p, "INBOX.", '.');
	assert_string_equal(w, "INBOX.x" M_DOT "y.z");
	size_t dots = 0;
	for (const char *q = w; *q; q++)
		dots += *q == '.';
	assert_int_equal(dots, 2);
	free(p);
	free(w);
}

/* ------------------------------------------------------------------ */
/* plan_build */

struct fdef {
	const char *name;
	unsigned attrs;
};

/* A folder list from a table ending with a NULL name. */
static struct store_folder_list *flist(char delim, const struct fdef *defs)
{
	struct store_folder_list *l = xcalloc(1, sizeof *l);
	size_t n = 0;
	while (defs[n].name)
		n++;
	l->v = xcalloc(n ? n : 1, sizeof *l->v);
	for (size_t i = 0; i < n; i++)
		l->v[i] = (struct store_folder){xstrdup(defs[i].name), delim, defs[i].attrs};
	l->n = n;
	return l;
}

static void flist_free(struct store_folder_list *l)
{
	store_folder_list_free(l);
	free(l);
}

struct pfx {
	struct store_folder_list *src, *dst;
	struct plan_side s, d;
	struct plan_rules rules;
	struct plan_known known[8];
	size_t nknown;
	struct plan plan;
	char *err;
};

static int setup(void **state)
{
	*state = xcalloc(1, sizeof(struct pfx));
	return 0;
}

static int teardown(void **state)
{
	struct pfx *x = *state;
	if (x->src)
		flist_free(x->src);
	if (x->dst)
		flist_free(x->dst);
	plan_rules_free(&x->rules);
	plan_free(&x->plan);
	free(x->err);
	free(x);
	return 0;
}

static void sides(struct pfx *x, char sdelim, const char *sprefix, const struct fdef *sdefs,
    char ddelim, const char *dprefix, const struct fdef *ddefs)
{
	x->src = flist(sdelim, sdefs);
	x->dst = flist(ddelim, ddefs);
	x->s = (struct plan_side){x->src, sprefix, sdelim, false};
	x->d = (struct plan_side){x->dst, dprefix, ddelim, false};
}

static void add_str(char ***v, size_t *n, const char *s)
{
	*v = xrealloc(*v, (*n + 1) * sizeof **v);
	(*v)[(*n)++] = xstrdup(s);
}

static void add_map(struct plan_rules *r, const char *src, const char *dst)
{
	r->maps = xrealloc(r->maps, (r->nmaps + 1) * sizeof *r->maps);
	r->maps[r->nmaps++] = (struct plan_map){xstrdup(src), xstrdup(dst)};
}

static void build_ok(struct pfx *x)
{
	int r = plan_build(&x->plan, &x->s, &x->d, &x->rules, x->known, x->nknown, &x->err);
	if (r != 0)
		fail_msg("plan_build failed: %s", x->err ? x->err : "(no message)");
	assert_null(x->err);
	assert_int_equal(x->plan.n, x->src->n);
}

static const struct plan_entry *entry(const struct pfx *x, const char *src_name)
{
	for (size_t i = 0; i < x->plan.n; i++)
		if (!strcmp(x->plan.v[i].src_name, src_name))
			return &x->plan.v[i];
	fail_msg("no plan entry for '%s'", src_name);
	return NULL;
}

/* The entry copies src_name to dst_name (wire) / dst_path with action. */
static void expect(const struct pfx *x, const char *src_name, enum plan_action action,
    const char *dst_name, const char *dst_path, const char *reason_part)
{
	const struct plan_entry *e = entry(x, src_name);
	if (e->action != action)
		fail_msg("'%s': action %d, want %d (reason: %s)", src_name, e->action, action,
		    e->reason ? e->reason : "");
	if (reason_part && (!e->reason || !strstr(e->reason, reason_part)))
		fail_msg("'%s': reason '%s' does not say '%s'", src_name,
		    e->reason ? e->reason : "(null)", reason_part);
	if (action == PLAN_SKIP)
		return;
	assert_non_null(e->dst_name);
	if (strcmp(e->dst_name, dst_name))
		fail_msg("'%s': goes to '%s', want '%s'", src_name, e->dst_name, dst_name);
	if (dst_path && strcmp(e->dst_path, dst_path))
		fail_msg("'%s': destination path '%s', want '%s'", src_name, e->dst_path, dst_path);
}

static size_t count_action(const struct pfx *x, enum plan_action a)
{
	size_t n = 0;
	for (size_t i = 0; i < x->plan.n; i++)
		n += x->plan.v[i].action == a;
	return n;
}

static void test_same_names_across_delimiters(void **state)
{
	struct pfx *x = *state;
	static const struct fdef src[] = {
		{"INBOX", 0}, {"Work", 0}, {"Work/Projects", 0}, {"Entw&APw-rfe", 0},
		{"x.y", 0}, {NULL, 0},
	};
	static const struct fdef dst[] = {
		{"INBOX", 0}, {"INBOX.Work", 0}, {NULL, 0},
	};
	sides(x, '/', "", src, '.', "INBOX.", dst);
	build_ok(x);
	expect(x, "INBOX", PLAN_COPY, "INBOX", "INBOX", "same name");
	expect(x, "Work", PLAN_COPY, "INBOX.Work", "Work", "same name");
	expect(x, "Work/Projects", PLAN_CREATE, "INBOX.Work.Projects", "Work/Projects", NULL);
	expect(x, "Entw&APw-rfe", PLAN_CREATE, "INBOX.Entw&APw-rfe", "Entw\xC3\xBCrfe", NULL);
	expect(x, "x.y", PLAN_CREATE, "INBOX.x" M_DOT "y", "x.y", NULL);
	assert_string_equal(entry(x, "Entw&APw-rfe")->src_path, "Entw\xC3\xBCrfe");
	assert_int_equal(x->plan.nwarnings, 0);
}

static void test_dot_source_to_slash_destination(void **state)
{
	struct pfx *x = *state;
	static const struct fdef src[] = {
		{"INBOX", 0}, {"INBOX.Lists", 0}, {"INBOX.Lists.dev", 0}, {"INBOX.a/b", 0},
		{NULL, 0},
	};
	static const struct fdef dst[] = {{"INBOX", 0}, {"Lists", 0}, {NULL, 0}};
	sides(x, '.', "INBOX.", src, '/', "", dst);
	build_ok(x);
	expect(x, "INBOX", PLAN_COPY, "INBOX", "INBOX", NULL);
	expect(x, "INBOX.Lists", PLAN_COPY, "Lists", "Lists", NULL);
	expect(x, "INBOX.Lists.dev", PLAN_CREATE, "Lists/dev", "Lists/dev", NULL);
	/* one level, with a look-alike for the '/' */
	expect(x, "INBOX.a/b", PLAN_CREATE, "a" M_SLASH "b", "a" U_SLASH "b", NULL);
}

static void test_inbox_stays_inbox(void **state)
{
	struct pfx *x = *state;
	/* even with a destination "Inbox" folder spelled otherwise, and a
	 * special-use rule that might have grabbed it */
	static const struct fdef src[] = {{"inbox", FA_ARCHIVE}, {NULL, 0}};
	static const struct fdef dst[] = {
		{"Inbox", 0}, {"INBOX.Archive", FA_ARCHIVE}, {NULL, 0},
	};
	sides(x, '/', "", src, '.', "INBOX.", dst);
	build_ok(x);
	expect(x, "inbox", PLAN_COPY, "INBOX", "INBOX", NULL);
	assert_string_equal(entry(x, "inbox")->src_path, "INBOX");
}

static void test_noselect_skipped(void **state)
{
	struct pfx *x = *state;
	static const struct fdef src[] = {
		{"INBOX", 0}, {"Lists", FA_NOSELECT}, {"Lists/dev", 0},
		{"Gone", FA_NONEXISTENT}, {NULL, 0},
	};
	static const struct fdef dst[] = {{"INBOX", 0}, {NULL, 0}};
	sides(x, '/', "", src, '/', "", dst);
	build_ok(x);
	expect(x, "Lists", PLAN_SKIP, NULL, NULL, "Noselect");
	expect(x, "Gone", PLAN_SKIP, NULL, NULL, NULL);
	expect(x, "Lists/dev", PLAN_CREATE, "Lists/dev", "Lists/dev", NULL);
	assert_int_equal(count_action(x, PLAN_SKIP), 2);
}

/* A \Noselect or \NonExistent folder at the destination is not a folder
 * that can take messages: it must be created, not selected. */
static void test_create_vs_copy(void **state)
{
	struct pfx *x = *state;
	static const struct fdef src[] = {
		{"INBOX", 0}, {"Here", 0}, {"Missing", 0}, {"Parent", 0}, {"Parent/child", 0},
		{"Ghost", 0}, {NULL, 0},
	};
	static const struct fdef dst[] = {
		{"INBOX", 0}, {"Here", 0}, {"Parent", FA_NOSELECT}, {"Parent/child", 0},
		{"Ghost", FA_NONEXISTENT | FA_NOSELECT}, {NULL, 0},
	};
	sides(x, '/', "", src, '/', "", dst);
	build_ok(x);
	expect(x, "INBOX", PLAN_COPY, "INBOX", NULL, NULL);
	expect(x, "Here", PLAN_COPY, "Here", NULL, NULL);
	expect(x, "Missing", PLAN_CREATE, "Missing", NULL, NULL);
	expect(x, "Parent", PLAN_CREATE, "Parent", NULL, NULL);
	expect(x, "Parent/child", PLAN_COPY, "Parent/child", NULL, NULL);
	expect(x, "Ghost", PLAN_CREATE, "Ghost", NULL, NULL);
	assert_int_equal(count_action(x, PLAN_CREATE), 3);
}

static const struct fdef gmail[] = {
	{"INBOX", 0},
	{"[Gmail]", FA_NOSELECT},
	{"[Gmail]/All Mail", FA_ALL},
	{"[Gmail]/Important", FA_IMPORTANT},
	{"[Gmail]/Starred", FA_FLAGGED},
	{"[Gmail]/Sent Mail", FA_SENT},
	{"[Gmail]/Drafts", FA_DRAFTS},
	{"[Gmail]/Trash", FA_TRASH},
	{"[Gmail]/Spam", FA_JUNK},
	{"Receipts", 0},
	{NULL, 0},
};

static const struct fdef dovecot[] = {
	{"INBOX", 0}, {"Sent", FA_SENT}, {"Drafts", FA_DRAFTS}, {"Trash", FA_TRASH},
	{"Junk", FA_JUNK}, {NULL, 0},
};

static void test_gmail_virtual_and_special_use(void **state)
{
	struct pfx *x = *state;
	sides(x, '/', "", gmail, '/', "", dovecot);
	build_ok(x);
	expect(x, "[Gmail]", PLAN_SKIP, NULL, NULL, "Noselect");
	expect(x, "[Gmail]/All Mail", PLAN_SKIP, NULL, NULL, "virtual");
	expect(x, "[Gmail]/Important", PLAN_SKIP, NULL, NULL, "virtual");
	expect(x, "[Gmail]/Starred", PLAN_SKIP, NULL, NULL, "virtual");
	expect(x, "[Gmail]/Sent Mail", PLAN_COPY, "Sent", "Sent", "special-use");
	expect(x, "[Gmail]/Drafts", PLAN_COPY, "Drafts", "Drafts", "special-use");
	expect(x, "[Gmail]/Trash", PLAN_COPY, "Trash", "Trash", "special-use");
	expect(x, "[Gmail]/Spam", PLAN_COPY, "Junk", "Junk", "special-use");
	expect(x, "Receipts", PLAN_CREATE, "Receipts", "Receipts", "same name");
	expect(x, "INBOX", PLAN_COPY, "INBOX", "INBOX", NULL);
	assert_int_equal(count_action(x, PLAN_SKIP), 4);
	assert_int_equal(x->plan.nwarnings, 0);
}

static void test_gmail_virtual_named_by_folder(void **state)
{
	struct pfx *x = *state;
	sides(x, '/', "", gmail, '/', "", dovecot);
	add_str(&x->rules.folders, &x->rules.nfolders, "[[]Gmail]/All Mail");
	build_ok(x);
	expect(x, "[Gmail]/All Mail", PLAN_CREATE, "[Gmail]/All Mail", "[Gmail]/All Mail",
	    "same name");
	expect(x, "[Gmail]/Important", PLAN_SKIP, NULL, NULL, "--folder");
	expect(x, "INBOX", PLAN_SKIP, NULL, NULL, "--folder");
	assert_int_equal(count_action(x, PLAN_CREATE), 1);
	assert_int_equal(count_action(x, PLAN_COPY), 0);
}

static void test_special_use_by_name(void **state)
{
	struct pfx *x = *state;
	static const struct fdef src[] = {
		{"INBOX", 0},
		{"Sent", 0},                  /* by name; same name exists */
		{"Sent Items", 0},            /* by name; first match in list order */
		{"Deleted Items", 0},         /* by name -> destination \Trash */
		{"Elementos enviados", FA_SENT}, /* by attribute -> by name */
		{"Work/Spam", 0},             /* not top level: not special */
		{"Archive", 0},               /* no target: keeps its name */
		{NULL, 0},
	};
	static const struct fdef dst[] = {
		{"INBOX", 0}, {"Sent Messages", 0}, {"Sent", 0}, {"Papierkorb", FA_TRASH},
		{"Spam", 0}, {NULL, 0},
	};
	sides(x, '/', "", src, '/', "", dst);
	build_ok(x);
	expect(x, "Sent", PLAN_COPY, "Sent", "Sent", "special-use");
	expect(x, "Sent Items", PLAN_COPY, "Sent Messages", "Sent Messages", "special-use");
	expect(x, "Deleted Items", PLAN_COPY, "Papierkorb", "Papierkorb", "special-use");
	expect(x, "Elementos enviados", PLAN_COPY, "Sent Messages", NULL, "special-use");
	expect(x, "Work/Spam", PLAN_CREATE, "Work/Spam", "Work/Spam", "same name");
	expect(x, "Archive", PLAN_CREATE, "Archive", "Archive", "same name");
}

/* The attribute at the destination wins over a well-known name there. */
static void test_special_use_attribute_at_destination(void **state)
{
	struct pfx *x = *state;
	static const struct fdef src[] = {{"Sent", FA_SENT}, {"Junk", 0}, {NULL, 0}};
	static const struct fdef dst[] = {
		{"INBOX", 0}, {"INBOX.Sent", 0}, {"INBOX.Gesendet", FA_SENT},
		{"INBOX.Spam", FA_JUNK}, {"INBOX.Junk", 0}, {NULL, 0},
	};
	sides(x, '/', "", src, '.', "INBOX.", dst);
	build_ok(x);
	expect(x, "Sent", PLAN_COPY, "INBOX.Gesendet", "Gesendet", "special-use");
	expect(x, "Junk", PLAN_COPY, "INBOX.Spam", "Spam", "special-use");
}

static const struct fdef plain_src[] = {
	{"INBOX", 0}, {"Work", 0}, {"Work/Projects", 0}, {"Work/Projects/2024", 0},
	{"Workshop", 0}, {"Sent", FA_SENT}, {"Private", 0}, {NULL, 0},
};
static const struct fdef plain_dst[] = {{"INBOX", 0}, {"INBOX.Sent", FA_SENT}, {NULL, 0}};

static void test_folder_globs(void **state)
{
	struct pfx *x = *state;
	sides(x, '/', "", plain_src, '.', "INBOX.", plain_dst);
	add_str(&x->rules.folders, &x->rules.nfolders, "Work/*");
	add_str(&x->rules.folders, &x->rules.nfolders, "INBOX");
	build_ok(x);
	/* '*' also matches '/' */
	expect(x, "Work/Projects", PLAN_CREATE, "INBOX.Work.Projects", NULL, NULL);
	expect(x, "Work/Projects/2024", PLAN_CREATE, "INBOX.Work.Projects.2024", NULL, NULL);
	expect(x, "INBOX", PLAN_COPY, "INBOX", NULL, NULL);
	expect(x, "Work", PLAN_SKIP, NULL, NULL, "--folder");
	expect(x, "Workshop", PLAN_SKIP, NULL, NULL, "--folder");
	expect(x, "Sent", PLAN_SKIP, NULL, NULL, "--folder");
	assert_int_equal(count_action(x, PLAN_SKIP), 4);
}

static void test_folder_glob_without_match(void **state)
{
	struct pfx *x = *state;
	sides(x, '/', "", plain_src, '.', "INBOX.", plain_dst);
	add_str(&x->rules.folders, &x->rules.nfolders, "Work");
	add_str(&x->rules.folders, &x->rules.nfolders, "Wrok*");
	int r = plan_build(&x->plan, &x->s, &x->d, &x->rules, NULL, 0, &x->err);
	assert_int_equal(r, -1);
	assert_non_null(x->err);
	assert_non_null(strstr(x->err, "'Wrok*'"));
	assert_null(strstr(x->err, "'Work'"));
	assert_int_equal(x->plan.n, 0);
	assert_null(x->plan.v);
}

static void test_exclude(void **state)
{
	struct pfx *x = *state;
	sides(x, '/', "", plain_src, '.', "INBOX.", plain_dst);
	add_str(&x->rules.excludes, &x->rules.nexcludes, "Work/*");
	add_str(&x->rules.excludes, &x->rules.nexcludes, "Priv*");
	build_ok(x);
	expect(x, "Work/Projects", PLAN_SKIP, NULL, NULL, "--exclude");
	expect(x, "Work/Projects/2024", PLAN_SKIP, NULL, NULL, "--exclude");
	expect(x, "Private", PLAN_SKIP, NULL, NULL, "--exclude");
	expect(x, "Work", PLAN_CREATE, "INBOX.Work", NULL, NULL);
	expect(x, "Workshop", PLAN_CREATE, "INBOX.Workshop", NULL, NULL);
	assert_int_equal(count_action(x, PLAN_SKIP), 3);
}

static void test_map(void **state)
{
	struct pfx *x = *state;
	sides(x, '/', "", plain_src, '.', "INBOX.", plain_dst);
	add_map(&x->rules, "Work", "Job");
	add_map(&x->rules, "Work/Projects", "Archive/Proj");
	add_map(&x->rules, "Sent", "Sent Old");
	build_ok(x);
	expect(x, "Work", PLAN_CREATE, "INBOX.Job", "Job", "--map");
	/* the longest SRC wins, for the folder and below it */
	expect(x, "Work/Projects", PLAN_CREATE, "INBOX.Archive.Proj", "Archive/Proj", "--map");
	expect(x, "Work/Projects/2024", PLAN_CREATE, "INBOX.Archive.Proj.2024",
	    "Archive/Proj/2024", "--map");
	/* a prefix of a name is not a parent */
	expect(x, "Workshop", PLAN_CREATE, "INBOX.Workshop", "Workshop", "same name");
	/* --map beats special-use */
	expect(x, "Sent", PLAN_CREATE, "INBOX.Sent Old", "Sent Old", "--map");
	expect(x, "INBOX", PLAN_COPY, "INBOX", "INBOX", NULL);
}

/* The order of --map rules does not matter: the longest still wins. */
static void test_map_longest_regardless_of_order(void **state)
{
	struct pfx *x = *state;
	sides(x, '/', "", plain_src, '/', "", plain_dst);
	add_map(&x->rules, "Work/Projects", "P");
	add_map(&x->rules, "Work", "J");
	add_map(&x->rules, "INBOX", "Old/INBOX");
	build_ok(x);
	expect(x, "Work/Projects/2024", PLAN_CREATE, "P/2024", NULL, "--map");
	expect(x, "Work", PLAN_CREATE, "J", NULL, "--map");
	expect(x, "INBOX", PLAN_CREATE, "Old/INBOX", NULL, "--map");
}

static void test_into(void **state)
{
	struct pfx *x = *state;
	sides(x, '/', "", plain_src, '.', "INBOX.", plain_dst);
	x->rules.into = xstrdup("Imported");
	build_ok(x);
	expect(x, "INBOX", PLAN_CREATE, "INBOX.Imported.INBOX", "Imported/INBOX", "--into");
	expect(x, "Work/Projects", PLAN_CREATE, "INBOX.Imported.Work.Projects",
	    "Imported/Work/Projects", "--into");
	/* special-use matching is off */
	expect(x, "Sent", PLAN_CREATE, "INBOX.Imported.Sent", "Imported/Sent", "--into");
	assert_int_equal(count_action(x, PLAN_CREATE), 7);
}

/* A POP3 source is one unnamed mailbox: --into names its folder. */
static void test_into_single_mailbox(void **state)
{
	struct pfx *x = *state;
	static const struct fdef src[] = {{"INBOX", 0}, {NULL, 0}};
	sides(x, '/', "", src, '.', "INBOX.", plain_dst);
	x->s.single = true;
	x->rules.into = xstrdup("Imported/pop");
	build_ok(x);
	expect(x, "INBOX", PLAN_CREATE, "INBOX.Imported.pop", "Imported/pop", "--into");
}

static void test_known_pairs_kept(void **state)
{
	struct pfx *x = *state;
	static const struct fdef src[] = {
		{"INBOX", 0}, {"Work", 0}, {"Sent", FA_SENT}, {"Old", 0}, {NULL, 0},
	};
	/* meanwhile "INBOX.Work" and a \Sent folder appeared at the
	 * destination; the earlier decisions stand */
	static const struct fdef dst[] = {
		{"INBOX", 0}, {"INBOX.Work", 0}, {"INBOX.Old Work", 0}, {"INBOX.Sent", FA_SENT},
		{"INBOX.Sent Items", 0}, {NULL, 0},
	};
	sides(x, '/', "", src, '.', "INBOX.", dst);
	x->known[x->nknown++] = (struct plan_known){"Work", "INBOX.Old Work"};
	x->known[x->nknown++] = (struct plan_known){"Sent", "INBOX.Sent Items"};
	x->known[x->nknown++] = (struct plan_known){"Old", "INBOX.Gone"};
	build_ok(x);
	expect(x, "Work", PLAN_COPY, "INBOX.Old Work", "Old Work", "earlier");
	expect(x, "Sent", PLAN_COPY, "INBOX.Sent Items", "Sent Items", "earlier");
	/* the known destination was deleted meanwhile: created again */
	expect(x, "Old", PLAN_CREATE, "INBOX.Gone", "Gone", "earlier");
	expect(x, "INBOX", PLAN_COPY, "INBOX", NULL, NULL);
}

static void test_two_sources_one_destination_warns(void **state)
{
	struct pfx *x = *state;
	static const struct fdef src[] = {
		{"INBOX", 0}, {"Sent", FA_SENT}, {"Sent Items", 0}, {"A", 0}, {"B", 0}, {NULL, 0},
	};
	static const struct fdef dst[] = {{"INBOX", 0}, {"Sent", FA_SENT}, {NULL, 0}};
	sides(x, '/', "", src, '/', "", dst);
	add_map(&x->rules, "A", "AB");
	add_map(&x->rules, "B", "AB");
	build_ok(x);
	expect(x, "Sent", PLAN_COPY, "Sent", NULL, NULL);
	expect(x, "Sent Items", PLAN_COPY, "Sent", NULL, NULL);
	expect(x, "A", PLAN_CREATE, "AB", NULL, NULL);
	expect(x, "B", PLAN_CREATE, "AB", NULL, NULL);
	assert_int_equal(x->plan.nwarnings, 2);
	assert_string_equal(x->plan.warnings[0], "'Sent' and 'Sent Items' both go to 'Sent'");
	assert_string_equal(x->plan.warnings[1], "'A' and 'B' both go to 'AB'");
}

static void test_invalid_source_name_warns(void **state)
{
	struct pfx *x = *state;
	static const struct fdef src[] = {{"INBOX", 0}, {"bad&Jjo", 0}, {NULL, 0}};
	static const struct fdef dst[] = {{"INBOX", 0}, {NULL, 0}};
	sides(x, '/', "", src, '/', "", dst);
	build_ok(x);
	assert_int_equal(x->plan.nwarnings, 1);
	assert_non_null(strstr(x->plan.warnings[0], "'bad&Jjo'"));
	const struct plan_entry *e = entry(x, "bad&Jjo");
	assert_string_equal(e->src_path, "bad&Jjo");
	assert_int_equal(e->action, PLAN_CREATE);
	assert_non_null(e->dst_name);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_path_of),
		cmocka_unit_test(test_wire_of),
		cmocka_unit_test(test_round_trip_wire),
		cmocka_unit_test(test_round_trip_path),
		cmocka_unit_test(test_delimiter_never_a_new_level),
		cmocka_unit_test_setup_teardown(test_same_names_across_delimiters, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dot_source_to_slash_destination, setup, teardown),
		cmocka_unit_test_setup_teardown(test_inbox_stays_inbox, setup, teardown),
		cmocka_unit_test_setup_teardown(test_noselect_skipped, setup, teardown),
		cmocka_unit_test_setup_teardown(test_create_vs_copy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_gmail_virtual_and_special_use, setup, teardown),
		cmocka_unit_test_setup_teardown(test_gmail_virtual_named_by_folder, setup, teardown),
		cmocka_unit_test_setup_teardown(test_special_use_by_name, setup, teardown),
		cmocka_unit_test_setup_teardown(test_special_use_attribute_at_destination, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_folder_globs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_folder_glob_without_match, setup, teardown),
		cmocka_unit_test_setup_teardown(test_exclude, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_longest_regardless_of_order, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_into, setup, teardown),
		cmocka_unit_test_setup_teardown(test_into_single_mailbox, setup, teardown),
		cmocka_unit_test_setup_teardown(test_known_pairs_kept, setup, teardown),
		cmocka_unit_test_setup_teardown(test_two_sources_one_destination_warns, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_invalid_source_name_warns, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
