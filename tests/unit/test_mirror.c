/*
 * test_mirror.c — the two-way mirror (src/mirror.c) end to end against two
 * fake stores (fake_store.c), with the real state DB and the real planner,
 * pairs built as `postino mirror` builds them (src/cli.c, mirror_pass).
 *
 * A is a '/'-delimited account without a namespace prefix; B a
 * '.'-delimited one with "INBOX.", so that every folder has another wire
 * name on each side. Each test says what it changes through the fake's
 * "client" calls (fake_store_msg_set_flags etc.), runs passes, and checks
 * both accounts against each other (every folder's messages as a multiset:
 * bytes, flags, date) and against what the rules say, and the commands the
 * pass sent (the fake counts them).
 *
 * The interrupt tests fork: a child loads both accounts from files (both
 * save themselves after every change, as servers would keep them), runs a
 * pass with POSTINO_TEST_EXIT_AFTER=N (exit 99 after the Nth durable step,
 * src/copier.c) and dies; another child resumes. The hook caches the
 * variable once per process and fork() inherits it, so those tests run
 * first, before this process ever runs a pass itself.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fake_store.h"
#include "log.h"
#include "mirror.h"
#include "planner.h"
#include "state.h"
#include "util.h"

/* The copier waits for a server to settle when it resolves an interrupted
 * copy (STATUS polls with nanosleep); the fake settles at once, so the
 * waits cost nothing here (as in test_copier.c). */
int nanosleep(const struct timespec *req, struct timespec *rem)
{
	(void)req;
	if (rem)
		rem->tv_sec = rem->tv_nsec = 0;
	return 0;
}

static bool g_ran_in_process;

/* ------------------------------------------------------------------ */
/* messages */

/* A message with a Message-ID (tag) or without one ("noid:" tag). */
static char *msg_text(const char *tag)
{
	if (!strncmp(tag, "noid:", 5))
		return xasprintf("From: x@example.org\r\nSubject: %s\r\n\r\nno id, body %s\r\n",
		    tag + 5, tag + 5);
	return xasprintf("From: x@example.org\r\nMessage-ID: <%s@test.postino>\r\nSubject: %s"
	    "\r\n\r\nbody of %s\r\n", tag, tag, tag);
}

static uint32_t put(struct fake_store *fs, const char *folder, const char *tag,
    const char *flags)
{
	struct fake_folder *f = fake_store_folder(fs, folder);
	if (!f)
		f = fake_store_add_folder(fs, folder, 0);
	char *t = msg_text(tag);
	size_t h = 0;
	for (const char *p = tag; *p; p++)
		h = h * 31 + (unsigned char)*p;
	uint32_t uid = fake_store_add_msg(fs, f, t, strlen(t), flags,
	    1600000000 + (int64_t)(h % 100000), (int)(h % 3) * 60 - 60);
	free(t);
	return uid;
}

/* The UID of the message `tag` in folder, 0 if absent (asserts one copy). */
static uint32_t uid_of(struct fake_store *fs, const char *folder, const char *tag)
{
	struct fake_folder *f = fake_store_folder(fs, folder);
	if (!f)
		return 0;
	char *t = msg_text(tag);
	uint32_t uid = 0;
	unsigned n = 0;
	for (size_t i = 0; i < f->n; i++)
		if (f->msgs[i].len == strlen(t) && !memcmp(f->msgs[i].body, t, f->msgs[i].len)) {
			uid = f->msgs[i].uid;
			n++;
		}
	free(t);
	if (n > 1)
		fail_msg("%s has %u copies of %s", folder, n, tag);
	return uid;
}

static unsigned copies_of(struct fake_store *fs, const char *folder, const char *tag)
{
	struct fake_folder *f = fake_store_folder(fs, folder);
	char *t = msg_text(tag);
	unsigned n = 0;
	for (size_t i = 0; f && i < f->n; i++)
		n += f->msgs[i].len == strlen(t) && !memcmp(f->msgs[i].body, t, f->msgs[i].len);
	free(t);
	return n;
}

static char *flags_of(struct fake_store *fs, const char *folder, const char *tag)
{
	uint32_t uid = uid_of(fs, folder, tag);
	if (!uid)
		fail_msg("%s: no %s", folder, tag);
	return flagset_format(&fake_store_msg(fake_store_folder(fs, folder), uid)->flags);
}

#define assert_flags(fs, folder, tag, want) do { \
		char *got_ = flags_of(fs, folder, tag); \
		if (strcmp(got_, want)) \
			fail_msg("%s %s: flags [%s], want [%s]", folder, tag, got_, want); \
		free(got_); \
	} while (0)

static void set_flags(struct fake_store *fs, const char *folder, const char *tag,
    const char *flags)
{
	uint32_t uid = uid_of(fs, folder, tag);
	assert_true(uid);
	fake_store_msg_set_flags(fs, fake_store_folder(fs, folder), uid, flags);
}

/* Expunges a message (the first copy of it). */
static void expunge(struct fake_store *fs, const char *folder, const char *tag)
{
	struct fake_folder *f = fake_store_folder(fs, folder);
	char *t = msg_text(tag);
	struct fake_msg *m = f ? fake_store_find_body(f, t, strlen(t)) : NULL;
	free(t);
	if (!m)
		fail_msg("%s: no %s to expunge", folder, tag);
	else
		fake_store_msg_remove(fs, f, m->uid);
}

static void move(struct fake_store *fs, const char *from, const char *to, const char *tag)
{
	uint32_t uid = uid_of(fs, from, tag);
	assert_true(uid);
	assert_true(fake_store_msg_move(fs, fake_store_folder(fs, from), uid,
	    fake_store_folder(fs, to)));
}

/* ------------------------------------------------------------------ */
/* comparing accounts */

static int cmp_line(const void *x, const void *y)
{
	return strcmp(*(char *const *)x, *(char *const *)y);
}

/* A folder's dump with its lines sorted: the messages as a multiset. */
static char *folder_text(const struct fake_folder *f)
{
	char *d = fake_folder_dump(f);
	char **lines = NULL;
	size_t n = 0;
	for (char *p = d, *nl; *p; p = nl + 1) {
		nl = strchr(p, '\n');
		*nl = 0;
		lines = xrealloc(lines, (n + 1) * sizeof *lines);
		lines[n++] = p;
	}
	xqsort(lines, n, sizeof *lines, cmp_line);
	struct buf b = BUF_INIT;
	buf_adds(&b, "");
	for (size_t i = 0; i < n; i++)
		buf_addf(&b, "%s\n", lines[i]);
	free(lines);
	free(d);
	return buf_detach(&b);
}

/* The whole account, folder by folder in name order (A's names), as
 * text; B's names are translated to A's. */
static char *account_text(struct fake_store *fs, bool is_b)
{
	size_t n = fake_store_nfolders(fs);
	char **parts = xcalloc(n ? n : 1, sizeof *parts);
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		struct fake_folder *f = fake_store_folder_at(fs, i);
		if (f->attrs & (FA_NOSELECT | FA_NONEXISTENT))
			continue;
		char *name = xstrdup(f->name);
		if (is_b && strcmp(name, "INBOX")) {
			free(name);
			name = xstrdup(f->name + 6);
			for (char *p = name; *p; p++)
				if (*p == '.')
					*p = '/';
		}
		char *t = folder_text(f);
		parts[k++] = xasprintf("== %s\n%s", name, t);
		free(t);
		free(name);
	}
	xqsort(parts, k, sizeof *parts, cmp_line);
	struct buf b = BUF_INIT;
	buf_adds(&b, "");
	for (size_t i = 0; i < k; i++) {
		buf_adds(&b, parts[i]);
		free(parts[i]);
	}
	free(parts);
	return buf_detach(&b);
}

static void assert_same(struct fake_store *a, struct fake_store *b)
{
	char *ta = account_text(a, false), *tb = account_text(b, true);
	if (strcmp(ta, tb))
		fail_msg("A and B differ:\n--- A\n%s--- B\n%s", ta, tb);
	free(ta);
	free(tb);
}

/* ------------------------------------------------------------------ */
/* one pass, as `postino mirror` makes it */

struct known_vec {
	struct plan_known *v;
	size_t n;
	bool seen_only; /* pairs seen on both sides (mirror_known) */
};

static int known_cb(void *ctx, const struct fpair *fp)
{
	struct known_vec *k = ctx;
	if (k->seen_only && (!fp->a_uidvalidity || !fp->b_uidvalidity))
		return 0;
	k->v = xrealloc(k->v, (k->n + 1) * sizeof *k->v);
	k->v[k->n++] = (struct plan_known){xstrdup(fp->a_name), xstrdup(fp->b_name)};
	return 0;
}

static void known_free(struct known_vec *k)
{
	for (size_t i = 0; i < k->n; i++) {
		free((char *)k->v[i].src_name);
		free((char *)k->v[i].dst_name);
	}
	free(k->v);
}

static enum store_rc mirror_pass(struct fake_store *fa, struct fake_store *fb,
    struct state *st, const struct mirror_opts *o, struct mirror_report *rep)
{
	struct store *a = fake_store_base(fa), *b = fake_store_base(fb);
	struct store_folder_list l[2] = {{0, NULL}, {0, NULL}};
	struct known_vec k = {NULL, 0, false}, kr = {NULL, 0, false}, seen = {NULL, 0, true};
	struct plan ab, ba;
	char *err = NULL;
	memset(&ab, 0, sizeof ab);
	memset(&ba, 0, sizeof ba);
	if (a->ops->list(a, &l[0]) || b->ops->list(b, &l[1]))
		fail_msg("list failed");
	if (state_pairs_each(st, known_cb, &k) < 0 || state_pairs_each(st, known_cb, &seen) < 0)
		fail_msg("state: %s", state_error(st));
	kr.v = xcalloc(k.n ? k.n : 1, sizeof *kr.v);
	for (size_t i = 0; i < k.n; i++)
		kr.v[i] = (struct plan_known){k.v[i].dst_name, k.v[i].src_name};
	struct plan_side sa = {&l[0], a->ns.prefix, a->ns.delim, false};
	struct plan_side sb = {&l[1], b->ns.prefix, b->ns.delim, false};
	struct plan_rules rules, rrules;
	memset(&rules, 0, sizeof rules);
	memset(&rrules, 0, sizeof rrules);
	rrules.allow_unmatched = true;
	if (plan_build(&ab, &sa, &sb, &rules, k.v, k.n, &err) < 0 ||
	    plan_build(&ba, &sb, &sa, &rrules, kr.v, k.n, &err) < 0)
		fail_msg("plan: %s", err);
	struct mirror_known *mk = xcalloc(seen.n ? seen.n : 1, sizeof *mk);
	for (size_t i = 0; i < seen.n; i++)
		mk[i] = (struct mirror_known){seen.v[i].src_name, seen.v[i].dst_name, true};
	struct mirror_pairs pairs;
	mirror_pairs_build(&pairs, &ab, &ba, mk, seen.n);
	enum store_rc rc = mirror_run(a, b, st, &pairs, o, rep, &err);
	if (rc && getenv("POSTINO_TEST_VERBOSE"))
		fprintf(stderr, "mirror_run: %d %s\n", rc, err ? err : "");
	free(err);
	free(mk);
	mirror_pairs_free(&pairs);
	plan_free(&ab);
	plan_free(&ba);
	free(kr.v);
	known_free(&k);
	known_free(&seen);
	store_folder_list_free(&l[0]);
	store_folder_list_free(&l[1]);
	return rc;
}

/* ------------------------------------------------------------------ */
/* fixture */

struct fx {
	char *dir, *a_path, *b_path, *state_path;
	struct fake_store *a, *b;
	struct state *st;
	struct mirror_opts o;
	struct mirror_report rep;
};

enum caps { CAPS_NONE, CAPS_CONDSTORE, CAPS_QRESYNC, CAPS_QRESYNC_SLOPPY };

static void set_caps(struct fake_store *fs, enum caps c, bool uidplus)
{
	fake_store_set_caps(fs, uidplus, c != CAPS_NONE);
	fake_store_set_qresync(fs, c >= CAPS_QRESYNC, c == CAPS_QRESYNC_SLOPPY);
}

static struct fx *fx_new(enum caps c)
{
	struct fx *fx = xcalloc(1, sizeof *fx);
	char tmpl[] = "/tmp/postino-test-mirror-XXXXXX";
	assert_non_null(mkdtemp(tmpl));
	fx->dir = xstrdup(tmpl);
	fx->a_path = xasprintf("%s/a.fake", fx->dir);
	fx->b_path = xasprintf("%s/b.fake", fx->dir);
	fx->state_path = xasprintf("%s/state.db", fx->dir);
	fx->a = fake_store_new("A", '/', "");
	fx->b = fake_store_new("B", '.', "INBOX.");
	set_caps(fx->a, c, true);
	set_caps(fx->b, c, true);
	fake_store_add_folder(fx->a, "INBOX", 0);
	fake_store_add_folder(fx->b, "INBOX", 0);
	mirror_opts_default(&fx->o);
	return fx;
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static void fx_free(struct fx *fx)
{
	if (fx->st)
		state_close(&fx->st);
	mirror_report_free(&fx->rep);
	struct store *a = fake_store_base(fx->a), *b = fake_store_base(fx->b);
	store_free(&a);
	store_free(&b);
	nftw(fx->dir, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
	free(fx->dir);
	free(fx->a_path);
	free(fx->b_path);
	free(fx->state_path);
	free(fx);
}

static void drop_state(struct fx *fx)
{
	if (fx->st)
		state_close(&fx->st);
	static const char *const sfx[] = {"", "-wal", "-shm", ".lock"};
	for (size_t i = 0; i < ARRAY_SIZE(sfx); i++) {
		char *p = xasprintf("%s%s", fx->state_path, sfx[i]);
		unlink(p);
		free(p);
	}
}

/* One pass in this process; counters are reset first. */
static enum store_rc pass(struct fx *fx)
{
	g_ran_in_process = true;
	if (!fx->st) {
		char *err = NULL;
		if (state_open(&fx->st, fx->state_path, 0, &err) != STATE_OPEN_OK)
			fail_msg("state: %s", err);
		if (state_bind_accounts(fx->st, "imap://a", "imap://b") < 0)
			fail_msg("state: %s", state_error(fx->st));
	}
	store_connect(fake_store_base(fx->a));
	store_connect(fake_store_base(fx->b));
	fake_store_reset_counters(fx->a);
	fake_store_reset_counters(fx->b);
	mirror_report_free(&fx->rep);
	return mirror_pass(fx->a, fx->b, fx->st, &fx->o, &fx->rep);
}

static const struct mirror_folder_report *folder_rep(const struct fx *fx, const char *a_path)
{
	for (size_t i = 0; i < fx->rep.nfolders; i++)
		if (!strcmp(fx->rep.folders[i].a_path, a_path))
			return &fx->rep.folders[i];
	fail_msg("no report for folder %s", a_path);
	return NULL;
}

/* Nothing was written to either side. */
static void assert_no_writes(const struct fx *fx, const char *what)
{
	static const enum fake_op writes[] = {FOP_CREATE, FOP_APPEND, FOP_SET_FLAGS, FOP_EXPUNGE,
		FOP_MOVE, FOP_RENAME};
	for (int s = 0; s < 2; s++)
		for (size_t i = 0; i < ARRAY_SIZE(writes); i++) {
			unsigned n = fake_store_calls(s ? fx->b : fx->a, writes[i]);
			if (n)
				fail_msg("%s: %u write calls (kind %d) to %s", what, n, writes[i],
				    s ? "B" : "A");
		}
}

/* Passes until one changes nothing; the one after that costs one STATUS
 * a folder pair and a side (the fast path). */
static void settle(struct fx *fx)
{
	assert_int_equal(pass(fx), STORE_OK);
	assert_no_writes(fx, "a pass after a complete one");
	assert_int_equal(pass(fx), STORE_OK);
	assert_no_writes(fx, "the pass after that");
	for (size_t i = 0; i < fx->rep.nfolders; i++)
		if (!fx->rep.folders[i].skipped_fast && fake_store_base(fx->a)->caps.condstore)
			fail_msg("%s: not on the fast path after two passes without change",
			    fx->rep.folders[i].a_path);
}

/* The usual start: messages on each side, identical ones on both. */
static void populate(struct fx *fx)
{
	put(fx->a, "INBOX", "a1", "\\Seen");
	put(fx->a, "INBOX", "s1", "\\Seen");
	put(fx->a, "INBOX", "s2", NULL);
	put(fx->a, "INBOX", "dup", "\\Seen");
	put(fx->a, "INBOX", "dup", "\\Seen");
	put(fx->a, "INBOX", "noid:n1", "work");
	put(fx->a, "Work", "w1", "\\Flagged $Label1");
	put(fx->a, "Work", "w2", NULL);
	put(fx->b, "INBOX", "b1", NULL);
	put(fx->b, "INBOX", "s1", "\\Seen");
	put(fx->b, "INBOX", "s2", "\\Flagged");
	put(fx->b, "INBOX", "noid:n1", "work");
	put(fx->b, "INBOX.Lists", "l1", "$Label1");
	fake_store_add_folder(fx->b, "INBOX.Empty", 0);
}

/* ------------------------------------------------------------------ */
/* in-process tests */

static void first_run_union(enum caps c)
{
	struct fx *fx = fx_new(c);
	populate(fx);
	assert_int_equal(pass(fx), STORE_OK);
	assert_same(fx->a, fx->b);
	/* identical messages paired (s1, s2, n1), not copied; flags: union */
	assert_int_equal(fx->rep.paired, 3);
	assert_int_equal(fx->rep.copied_ab, 5); /* a1, dup, dup, w1, w2 */
	assert_int_equal(fx->rep.copied_ba, 2); /* b1, l1 */
	assert_int_equal(fx->rep.deleted + fx->rep.held + fx->rep.moved + fx->rep.kept, 0);
	assert_int_equal(copies_of(fx->b, "INBOX", "dup"), 2);
	assert_int_equal(copies_of(fx->a, "INBOX", "s1"), 1);
	assert_flags(fx->a, "INBOX", "s2", "\\Flagged");
	assert_flags(fx->b, "INBOX", "s2", "\\Flagged");
	assert_flags(fx->b, "INBOX.Work", "w1", "\\Flagged $Label1");
	assert_non_null(fake_store_folder(fx->a, "Empty"));
	assert_non_null(fake_store_folder(fx->a, "Lists"));
	settle(fx);
	assert_same(fx->a, fx->b);
	fx_free(fx);
}

static void test_first_run_union(void **state)
{
	(void)state;
	first_run_union(CAPS_NONE);
	first_run_union(CAPS_CONDSTORE);
	first_run_union(CAPS_QRESYNC);
}

/* Flags changed on one side reach the other; changed on both: merged. */
static void flag_merge(enum caps c)
{
	struct fx *fx = fx_new(c);
	populate(fx);
	assert_int_equal(pass(fx), STORE_OK);
	settle(fx);
	set_flags(fx->a, "INBOX", "a1", NULL);                  /* \Seen off on A */
	set_flags(fx->b, "INBOX", "b1", "\\Answered");          /* on B */
	set_flags(fx->a, "INBOX", "s2", "\\Flagged \\Seen");    /* both: different */
	set_flags(fx->b, "INBOX", "s2", "work");                /* flags */
	set_flags(fx->a, "Work", "w1", "\\Flagged");            /* the same change */
	set_flags(fx->b, "INBOX.Work", "w1", "\\Flagged");      /* on both */
	assert_int_equal(pass(fx), STORE_OK);
	assert_same(fx->a, fx->b);
	assert_flags(fx->b, "INBOX", "a1", "");
	assert_flags(fx->a, "INBOX", "b1", "\\Answered");
	assert_flags(fx->a, "INBOX", "s2", "\\Seen work");
	assert_flags(fx->b, "INBOX.Work", "w1", "\\Flagged");
	assert_int_equal(fx->rep.copied_ab + fx->rep.copied_ba + fx->rep.deleted, 0);
	assert_int_equal(fake_store_calls(fx->a, FOP_APPEND) + fake_store_calls(fx->b, FOP_APPEND),
	    0);
	if (c != CAPS_NONE) {
		/* the incremental path, on both sides */
		assert_int_equal(folder_rep(fx, "INBOX")->incremental, 2);
		assert_int_equal(fake_store_full_scans(fx->a) + fake_store_full_scans(fx->b), 0);
	} else {
		assert_true(fake_store_full_scans(fx->a) > 0);
	}
	settle(fx);
	fx_free(fx);
}

static void test_flag_merge(void **state)
{
	(void)state;
	flag_merge(CAPS_NONE);
	flag_merge(CAPS_CONDSTORE);
	flag_merge(CAPS_QRESYNC);
}

/* A keyword one side does not keep (its PERMANENTFLAGS, so its STORE is
 * refused) is not taken for a removal there on the next pass: the side
 * that has it keeps it, pass after pass. */
static void refused_flag(enum caps c)
{
	struct fx *fx = fx_new(c);
	populate(fx);
	assert_int_equal(pass(fx), STORE_OK);
	settle(fx);
	fake_store_set_permflags(fake_store_folder(fx->b, "INBOX"), FL_ALL_SYS, false, "work");
	set_flags(fx->a, "INBOX", "s1", "\\Seen $Odd");
	for (int round = 0; round < 3; round++) {
		assert_int_equal(pass(fx), STORE_OK);
		assert_flags(fx->a, "INBOX", "s1", "\\Seen $Odd");
		assert_flags(fx->b, "INBOX", "s1", "\\Seen");
	}
	/* once B keeps it, it gets there */
	fake_store_set_permflags(fake_store_folder(fx->b, "INBOX"), FL_ALL_SYS, true, NULL);
	assert_int_equal(pass(fx), STORE_OK);
	assert_flags(fx->b, "INBOX", "s1", "\\Seen $Odd");
	assert_same(fx->a, fx->b);
	fx_free(fx);
}

static void test_refused_flag(void **state)
{
	(void)state;
	refused_flag(CAPS_NONE);
	refused_flag(CAPS_CONDSTORE);
	refused_flag(CAPS_QRESYNC);
}

/* New messages and deletions, each way. */
static void new_and_deleted(enum caps c)
{
	struct fx *fx = fx_new(c);
	populate(fx);
	assert_int_equal(pass(fx), STORE_OK);
	settle(fx);
	put(fx->a, "INBOX", "new-a", "\\Seen");
	put(fx->b, "INBOX.Lists", "new-b", NULL);
	expunge(fx->a, "INBOX", "b1");          /* came from B */
	expunge(fx->b, "INBOX.Work", "w2");     /* came from A */
	expunge(fx->b, "INBOX", "dup");         /* one of two identical ones */
	assert_int_equal(pass(fx), STORE_OK);
	assert_same(fx->a, fx->b);
	assert_int_equal(copies_of(fx->b, "INBOX", "new-a"), 1);
	assert_int_equal(copies_of(fx->a, "Lists", "new-b"), 1);
	assert_int_equal(copies_of(fx->b, "INBOX", "b1"), 0);
	assert_int_equal(copies_of(fx->a, "Work", "w2"), 0);
	assert_int_equal(copies_of(fx->a, "INBOX", "dup"), 1);
	assert_int_equal(fx->rep.deleted, 3);
	assert_int_equal(fx->rep.copied_ab, 1);
	assert_int_equal(fx->rep.copied_ba, 1);
	if (c != CAPS_NONE) {
		assert_int_equal(fake_store_full_scans(fx->a) + fake_store_full_scans(fx->b), 0);
		assert_int_equal(folder_rep(fx, "INBOX")->incremental, 2);
		/* deletions: from VANISHED with QRESYNC, else from a listing of
		 * UIDs, made only where EXISTS says something is gone */
		unsigned listings = fake_store_uid_listings(fx->a) + fake_store_uid_listings(fx->b);
		if (c == CAPS_CONDSTORE)
			assert_int_equal(listings, 3); /* A: INBOX; B: INBOX, Work */
		else
			assert_int_equal(listings, 0);
		if (c >= CAPS_QRESYNC)
			assert_true(fake_store_calls(fx->a, FOP_SCAN_CHANGES) > 0);
	}
	settle(fx);
	fx_free(fx);
}

static void test_new_and_deleted(void **state)
{
	(void)state;
	new_and_deleted(CAPS_NONE);
	new_and_deleted(CAPS_CONDSTORE);
	new_and_deleted(CAPS_QRESYNC);
	new_and_deleted(CAPS_QRESYNC_SLOPPY);
}

/* A big folder with one change costs no full scan; nothing changed at
 * all costs one STATUS a side. */
static void test_incremental_big_folder(void **state)
{
	(void)state;
	for (enum caps c = CAPS_CONDSTORE; c <= CAPS_QRESYNC; c++) {
		struct fx *fx = fx_new(c);
		char tag[32];
		for (int i = 0; i < 500; i++) {
			snprintf(tag, sizeof tag, "big%03d", i);
			put(fx->a, "Big", tag, i % 2 ? "\\Seen" : NULL);
		}
		assert_int_equal(pass(fx), STORE_OK);
		assert_int_equal(fx->rep.copied_ab, 500);
		settle(fx);
		/* unchanged: one STATUS a folder and side, nothing else */
		for (int sd = 0; sd < 2; sd++) {
			struct fake_store *fs = sd ? fx->b : fx->a;
			assert_int_equal(fake_store_calls(fs, FOP_STATUS), 2); /* INBOX, Big */
			assert_int_equal(fake_store_calls(fs, FOP_ANY), 3);     /* and LIST */
		}
		set_flags(fx->a, "Big", "big123", "\\Flagged");
		assert_int_equal(pass(fx), STORE_OK);
		assert_flags(fx->b, "INBOX.Big", "big123", "\\Flagged");
		assert_int_equal(fake_store_full_scans(fx->a) + fake_store_full_scans(fx->b), 0);
		assert_int_equal(fake_store_uid_listings(fx->a) + fake_store_uid_listings(fx->b), 0);
		assert_int_equal(fake_store_calls(fx->b, FOP_SET_FLAGS), 1);
		assert_int_equal(fake_store_calls(fx->a, FOP_SET_FLAGS), 0);
		assert_int_equal(folder_rep(fx, "Big")->incremental, 2);
		assert_true(folder_rep(fx, "INBOX")->skipped_fast);
		settle(fx);
		assert_same(fx->a, fx->b);
		fx_free(fx);
	}
}

/* Deleted on one side, changed on the other: the change wins, the
 * message is copied back and reported. */
static void test_change_beats_deletion(void **state)
{
	(void)state;
	for (enum caps c = CAPS_NONE; c <= CAPS_QRESYNC; c++) {
		struct fx *fx = fx_new(c);
		populate(fx);
		assert_int_equal(pass(fx), STORE_OK);
		settle(fx);
		expunge(fx->a, "Work", "w1");
		set_flags(fx->b, "INBOX.Work", "w1", "\\Flagged $Label1 \\Answered");
		expunge(fx->b, "INBOX", "a1");
		set_flags(fx->a, "INBOX", "a1", NULL); /* not there any more on B */
		assert_int_equal(pass(fx), STORE_OK);
		assert_same(fx->a, fx->b);
		assert_int_equal(fx->rep.kept, 2);
		assert_int_equal(fx->rep.deleted, 0);
		assert_flags(fx->a, "Work", "w1", "\\Answered \\Flagged $Label1");
		assert_flags(fx->b, "INBOX", "a1", "");
		settle(fx);
		fx_free(fx);
	}
}

/* The mass-deletion guard holds a folder's deletions (and only that
 * folder's) until --force; the held messages are not copied back. */
static void test_deletion_guard(void **state)
{
	(void)state;
	for (enum caps c = CAPS_NONE; c <= CAPS_QRESYNC; c++) {
		struct fx *fx = fx_new(c);
		populate(fx);
		char tag[32];
		for (int i = 0; i < 100; i++) {
			snprintf(tag, sizeof tag, "bulk%03d", i);
			put(fx->a, "Bulk", tag, NULL);
		}
		assert_int_equal(pass(fx), STORE_OK);
		settle(fx);
		for (int i = 0; i < 60; i++) {
			snprintf(tag, sizeof tag, "bulk%03d", i);
			expunge(fx->a, "Bulk", tag);
		}
		expunge(fx->a, "INBOX", "a1");
		for (int attempt = 0; attempt < 2; attempt++) {
			assert_int_equal(pass(fx), STORE_OK);
			assert_int_equal(fx->rep.held, 60);
			assert_int_equal(folder_rep(fx, "Bulk")->held_b, 60);
			assert_int_equal(fx->rep.deleted, attempt ? 0 : 1); /* a1 went through */
			assert_int_equal(fake_store_folder(fx->b, "INBOX.Bulk")->n, 100);
			assert_int_equal(fake_store_folder(fx->a, "Bulk")->n, 40);
			assert_int_equal(fx->rep.copied_ab + fx->rep.copied_ba, 0);
			assert_int_equal(copies_of(fx->b, "INBOX", "a1"), 0);
		}
		fx->o.force = true;
		assert_int_equal(pass(fx), STORE_OK);
		assert_int_equal(fx->rep.deleted, 60);
		assert_int_equal(fx->rep.held, 0);
		assert_int_equal(fake_store_folder(fx->b, "INBOX.Bulk")->n, 40);
		fx->o.force = false;
		assert_same(fx->a, fx->b);
		settle(fx);
		/* a lower guard holds fewer */
		for (int i = 60; i < 70; i++) {
			snprintf(tag, sizeof tag, "bulk%03d", i);
			expunge(fx->b, "INBOX.Bulk", tag);
		}
		fx->o.max_delete = 5;
		fx->o.max_delete_percent = 10;
		assert_int_equal(pass(fx), STORE_OK);
		assert_int_equal(fx->rep.held, 10);
		assert_int_equal(fake_store_folder(fx->a, "Bulk")->n, 40);
		mirror_opts_default(&fx->o);
		assert_int_equal(pass(fx), STORE_OK);
		assert_int_equal(fx->rep.deleted, 10);
		assert_same(fx->a, fx->b);
		fx_free(fx);
	}
}

/* A message moved between folders on one side is moved on the other:
 * one MOVE, no APPEND, its flags and date kept. */
static void moves(enum caps c, bool uidplus)
{
	struct fx *fx = fx_new(c);
	set_caps(fx->b, c, uidplus);
	set_caps(fx->a, c, uidplus);
	populate(fx);
	assert_int_equal(pass(fx), STORE_OK);
	settle(fx);
	move(fx->a, "INBOX", "Work", "a1");
	move(fx->a, "INBOX", "Work", "s1");
	move(fx->b, "INBOX.Lists", "INBOX", "l1");
	assert_int_equal(pass(fx), STORE_OK);
	assert_same(fx->a, fx->b);
	assert_int_equal(fx->rep.moved, 3);
	assert_int_equal(fx->rep.copied_ab + fx->rep.copied_ba + fx->rep.deleted, 0);
	assert_int_equal(fake_store_calls(fx->b, FOP_MOVE), 1); /* INBOX -> Work as one */
	assert_int_equal(fake_store_calls(fx->a, FOP_MOVE), 1);
	assert_int_equal(fake_store_msgs_appended(fx->a) + fake_store_msgs_appended(fx->b), 0);
	assert_flags(fx->b, "INBOX.Work", "a1", "\\Seen");
	assert_int_equal(copies_of(fx->b, "INBOX", "a1"), 0);
	/* without COPYUID the rows go and the messages pair again by
	 * content: nothing copied, nothing deleted */
	assert_int_equal(pass(fx), STORE_OK);
	assert_no_writes(fx, "the pass after the moves");
	settle(fx);
	assert_same(fx->a, fx->b);
	fx_free(fx);
}

static void test_moves(void **state)
{
	(void)state;
	moves(CAPS_NONE, true);
	moves(CAPS_CONDSTORE, true);
	moves(CAPS_QRESYNC, true);
	moves(CAPS_QRESYNC, false);
	moves(CAPS_CONDSTORE, false);
}

/* State that no longer matches a server (lost, UIDVALIDITY changed,
 * HIGHESTMODSEQ or UIDNEXT lower than recorded) never deletes: the
 * messages are paired again by content and what is missing is copied. */
static void stale(enum caps c, int how)
{
	struct fx *fx = fx_new(c);
	populate(fx);
	assert_int_equal(pass(fx), STORE_OK);
	settle(fx);
	/* with a valid state, this would be a deletion on A */
	expunge(fx->b, "INBOX", "a1");
	struct fake_folder *bi = fake_store_folder(fx->b, "INBOX");
	switch (how) {
	case 0: /* the state file is lost */
		drop_state(fx);
		break;
	case 1: /* B's INBOX has a new UIDVALIDITY (all UIDs new) */
		fake_store_set_uidvalidity(fx->b, bi, bi->uidvalidity + 77, 1);
		break;
	case 2: /* B's INBOX lost its MODSEQs (restored from a backup) */
		if (c == CAPS_NONE) {
			fx_free(fx);
			return;
		}
		bi->hms = 2;
		break;
	case 3: /* ... or its UIDNEXT (renumbered, the same UIDVALIDITY) */
		fake_store_set_uidvalidity(fx->b, bi, bi->uidvalidity, 1);
		break;
	}
	assert_int_equal(pass(fx), STORE_OK);
	assert_int_equal(fx->rep.deleted, 0);
	assert_int_equal(fake_store_calls(fx->a, FOP_EXPUNGE) + fake_store_calls(fx->b, FOP_EXPUNGE),
	    0);
	assert_int_equal(copies_of(fx->a, "INBOX", "a1"), 1);
	assert_int_equal(copies_of(fx->b, "INBOX", "a1"), 1);
	assert_int_equal(fx->rep.copied_ab, 1);
	assert_int_equal(fx->rep.copied_ba, 0);
	assert_same(fx->a, fx->b);
	settle(fx);
	assert_same(fx->a, fx->b);
	fx_free(fx);
}

static void test_stale_state(void **state)
{
	(void)state;
	for (int how = 0; how < 4; how++) {
		stale(CAPS_NONE, how);
		stale(CAPS_CONDSTORE, how);
		stale(CAPS_QRESYNC, how);
	}
}

/* A folder name the other side refuses is created under the escape rule
 * (both ways); the state keeps the pair, later passes use it. */
static void test_escape_create(void **state)
{
	(void)state;
	struct fx *fx = fx_new(CAPS_QRESYNC);
	fake_store_refuse_chars(fx->b, "%");
	fake_store_refuse_chars(fx->a, "!");
	put(fx->a, "Offers 50%", "o1", "\\Seen");
	put(fx->b, "INBOX.News!", "n1", NULL);
	char *b_esc = plan_escape_wire("INBOX.Offers 50%", "INBOX.", '.');
	char *a_esc = plan_escape_wire("News!", "", '/');
	assert_string_not_equal(b_esc, "INBOX.Offers 50%");
	assert_int_equal(pass(fx), STORE_OK);
	assert_null(fake_store_folder(fx->b, "INBOX.Offers 50%"));
	assert_null(fake_store_folder(fx->a, "News!"));
	assert_int_equal(copies_of(fx->b, b_esc, "o1"), 1);
	assert_int_equal(copies_of(fx->a, a_esc, "n1"), 1);
	assert_int_equal(folder_rep(fx, "Offers 50%")->created_b, 1);
	struct fpair fp;
	assert_int_equal(state_pair_find(fx->st, "Offers 50%", b_esc, &fp), 1);
	fpair_release(&fp);
	assert_int_equal(state_pair_find(fx->st, a_esc, "INBOX.News!", &fp), 1);
	fpair_release(&fp);
	/* later passes: no CREATE, changes flow both ways through the pair */
	assert_int_equal(pass(fx), STORE_OK);
	assert_no_writes(fx, "the pass after the escaped creations");
	put(fx->b, b_esc, "o2", NULL);
	set_flags(fx->a, "Offers 50%", "o1", "\\Flagged");
	put(fx->a, a_esc, "n2", "\\Seen");
	assert_int_equal(pass(fx), STORE_OK);
	assert_int_equal(fake_store_calls(fx->a, FOP_CREATE) + fake_store_calls(fx->b, FOP_CREATE),
	    0);
	assert_int_equal(copies_of(fx->a, "Offers 50%", "o2"), 1);
	assert_flags(fx->b, b_esc, "o1", "\\Flagged");
	assert_int_equal(copies_of(fx->b, "INBOX.News!", "n2"), 1);
	assert_int_equal(fx->rep.copied_ab + fx->rep.copied_ba, 2);
	/* a name refused under both forms fails that folder alone */
	fake_store_refuse_chars(fx->b, "%&"); /* '&': modified UTF-7 */
	put(fx->a, "Deals%", "d1", NULL);
	assert_int_equal(pass(fx), STORE_BOX_BAD);
	const struct mirror_folder_report *fr = folder_rep(fx, "Deals%");
	assert_true(fr->failed);
	assert_non_null(strstr(fr->error, "escape rule"));
	assert_int_equal(fx->rep.failed_folders, 1);
	free(a_esc);
	free(b_esc);
	fx_free(fx);
}

/* A pass that died between an escaped CREATE and recording the pair
 * left the escaped folder without a pair: the next pass pairs it with the
 * folder it was made for, and does not mirror it as a folder of its own
 * (which would make a look-alike folder on the other side). */
static void test_escape_crash_window(void **state)
{
	(void)state;
	struct fx *fx = fx_new(CAPS_QRESYNC);
	fake_store_refuse_chars(fx->b, "%");
	fake_store_refuse_chars(fx->a, "!");
	char *b_esc = plan_escape_wire("INBOX.Offers 50%", "INBOX.", '.');
	char *a_esc = plan_escape_wire("News!", "", '/');
	put(fx->a, "Offers 50%", "o1", "\\Seen");
	fake_store_add_folder(fx->b, b_esc, 0);      /* made, never recorded */
	put(fx->b, "INBOX.News!", "n1", NULL);
	fake_store_add_folder(fx->a, a_esc, 0);
	size_t na = fake_store_nfolders(fx->a), nb = fake_store_nfolders(fx->b);
	assert_int_equal(pass(fx), STORE_OK);
	assert_int_equal(fake_store_nfolders(fx->a), na);
	assert_int_equal(fake_store_nfolders(fx->b), nb);
	assert_int_equal(copies_of(fx->b, b_esc, "o1"), 1);
	assert_int_equal(copies_of(fx->a, a_esc, "n1"), 1);
	struct fpair fp;
	assert_int_equal(state_pair_find(fx->st, "Offers 50%", b_esc, &fp), 1);
	fpair_release(&fp);
	assert_int_equal(state_pair_find(fx->st, a_esc, "INBOX.News!", &fp), 1);
	fpair_release(&fp);
	settle(fx);
	assert_int_equal(fake_store_nfolders(fx->a), na);
	assert_int_equal(fake_store_nfolders(fx->b), nb);
	free(a_esc);
	free(b_esc);
	fx_free(fx);
}

/* ------------------------------------------------------------------ */
/* interrupted at every step (forked) */

struct child_out {
	int rc;
	uint64_t copied, deleted, moved, flags_set, held, kept;
	unsigned writes;  /* write calls to both sides */
};

static void child_main(const char *a_path, const char *b_path, const char *state_path,
    long exit_after, int wfd)
{
	struct fake_store *a = fake_store_load(a_path, "A");
	struct fake_store *b = fake_store_load(b_path, "B");
	if (!a || !b)
		_exit(3);
	fake_store_autosave(a, a_path);
	fake_store_autosave(b, b_path);
	if (store_connect(fake_store_base(a)) || store_connect(fake_store_base(b)))
		_exit(4);
	struct state *st = NULL;
	if (state_open(&st, state_path, 0, NULL) != STATE_OPEN_OK)
		_exit(5);
	if (exit_after > 0) {
		char n[32];
		snprintf(n, sizeof n, "%ld", exit_after);
		setenv("POSTINO_TEST_EXIT_AFTER", n, 1);
	}
	struct mirror_opts o;
	mirror_opts_default(&o);
	struct mirror_report rep;
	memset(&rep, 0, sizeof rep);
	struct child_out out;
	memset(&out, 0, sizeof out);
	out.rc = mirror_pass(a, b, st, &o, &rep);
	out.copied = rep.copied_ab + rep.copied_ba;
	out.deleted = rep.deleted;
	out.moved = rep.moved;
	out.flags_set = rep.flags_set;
	out.held = rep.held;
	out.kept = rep.kept;
	static const enum fake_op writes[] = {FOP_CREATE, FOP_APPEND, FOP_SET_FLAGS, FOP_EXPUNGE,
		FOP_MOVE, FOP_RENAME};
	for (size_t i = 0; i < ARRAY_SIZE(writes); i++)
		out.writes += fake_store_calls(a, writes[i]) + fake_store_calls(b, writes[i]);
	mirror_report_free(&rep);
	state_close(&st);
	struct store *sa = fake_store_base(a), *sb = fake_store_base(b);
	store_free(&sa);
	store_free(&sb);
	if (write(wfd, &out, sizeof out) != (ssize_t)sizeof out)
		_exit(7);
	_exit(0);
}

/* Runs one pass in a child; its exit status (99: the test hook). */
static int run_child(struct fx *fx, long exit_after, struct child_out *out)
{
	if (g_ran_in_process)
		fail_msg("forked tests must run before any in-process pass (see the top)");
	int p[2];
	assert_int_equal(pipe(p), 0);
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(p[0]);
		child_main(fx->a_path, fx->b_path, fx->state_path, exit_after, p[1]);
	}
	close(p[1]);
	struct child_out tmp;
	memset(&tmp, 0, sizeof tmp);
	ssize_t got = read(p[0], &tmp, sizeof tmp);
	close(p[0]);
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (!WIFEXITED(status))
		fail_msg("child died with signal %d", WIFSIGNALED(status) ? WTERMSIG(status) : -1);
	int code = WEXITSTATUS(status);
	if (code == 0) {
		assert_int_equal(got, (ssize_t)sizeof tmp);
		if (out)
			*out = tmp;
	}
	return code;
}

static struct fake_store *load(const char *path, const char *label)
{
	struct fake_store *fs = fake_store_load(path, label);
	if (!fs)
		fail_msg("cannot load %s", path);
	return fs;
}

static char *both_text(struct fx *fx)
{
	struct fake_store *a = load(fx->a_path, "A"), *b = load(fx->b_path, "B");
	char *ta = account_text(a, false), *tb = account_text(b, true);
	if (strcmp(ta, tb))
		fail_msg("A and B differ:\n--- A\n%s--- B\n%s", ta, tb);
	free(tb);
	struct store *sa = fake_store_base(a), *sb = fake_store_base(b);
	store_free(&sa);
	store_free(&sb);
	return ta;
}

static void cp(const char *from, const char *to)
{
	FILE *a = fopen(from, "rb");
	if (!a && errno == ENOENT) {
		unlink(to);
		return;
	}
	assert_non_null(a);
	FILE *b = fopen(to, "wb");
	assert_non_null(b);
	char buf[8192];
	size_t n;
	while ((n = fread(buf, 1, sizeof buf, a)) > 0)
		assert_int_equal(fwrite(buf, 1, n, b), n);
	fclose(a);
	assert_int_equal(fclose(b), 0);
}

/* Saves (or restores) the accounts and the state under a suffix. */
static void snapshot(struct fx *fx, const char *sfx, bool restore)
{
	static const char *const st_sfx[] = {"", "-wal", "-shm"};
	const char *paths[] = {fx->a_path, fx->b_path};
	for (size_t i = 0; i < 2; i++) {
		char *s = xasprintf("%s.%s", paths[i], sfx);
		restore ? cp(s, paths[i]) : cp(paths[i], s);
		free(s);
	}
	for (size_t i = 0; i < ARRAY_SIZE(st_sfx); i++) {
		char *live = xasprintf("%s%s", fx->state_path, st_sfx[i]);
		char *s = xasprintf("%s%s.%s", fx->state_path, st_sfx[i], sfx);
		restore ? cp(s, live) : cp(live, s);
		free(live);
		free(s);
	}
}

/* The changes between the first and the incremental pass, on the files. */
static void change_files(struct fx *fx)
{
	struct fake_store *a = load(fx->a_path, "A"), *b = load(fx->b_path, "B");
	put(a, "INBOX", "c-new-a", "\\Seen");
	set_flags(a, "INBOX", "s1", NULL);
	expunge(a, "INBOX", "a1");
	move(a, "Work", "INBOX", "w2");
	put(b, "INBOX.Lists", "c-new-b", NULL);
	set_flags(b, "INBOX.Work", "w1", "\\Flagged \\Answered $Label1");
	expunge(b, "INBOX", "b1");
	fake_store_add_folder(b, "INBOX.Neu", 0);
	put(b, "INBOX.Neu", "c-neu", "work");
	assert_int_equal(fake_store_save(a, fx->a_path), 0);
	assert_int_equal(fake_store_save(b, fx->b_path), 0);
	struct store *sa = fake_store_base(a), *sb = fake_store_base(b);
	store_free(&sa);
	store_free(&sb);
}

/*
 * For every N until a pass finishes by itself: a pass dies after its Nth
 * durable step, another one resumes; both accounts must then equal what
 * an uninterrupted pass gives, and a further pass writes nothing.
 */
static void interrupt_every_step(enum caps c, bool incremental)
{
	struct fx *fx = fx_new(c);
	populate(fx);
	assert_int_equal(fake_store_save(fx->a, fx->a_path), 0);
	assert_int_equal(fake_store_save(fx->b, fx->b_path), 0);
	struct child_out out;
	if (incremental) {
		assert_int_equal(run_child(fx, 0, &out), 0);
		assert_int_equal(out.rc, STORE_OK);
		change_files(fx);
	}
	snapshot(fx, "start", false);
	assert_int_equal(run_child(fx, 0, &out), 0);
	assert_int_equal(out.rc, STORE_OK);
	if (incremental)
		assert_true(out.deleted >= 2 && out.moved == 1 && out.copied >= 3);
	char *ref = both_text(fx);

	unsigned n;
	for (n = 1; n < 400; n++) {
		snapshot(fx, "start", true);
		int code = run_child(fx, (long)n, &out);
		if (code != 99 && code != 0)
			fail_msg("N=%u: child exited %d", n, code);
		bool finished = code == 0;
		if (!finished) {
			code = run_child(fx, 0, &out);
			if (code != 0 || out.rc != STORE_OK)
				fail_msg("N=%u: resume exited %d rc %d", n, code, out.rc);
			if (out.held)
				fail_msg("N=%u: the resumed pass held deletions", n);
		}
		char *got = both_text(fx);
		if (strcmp(ref, got))
			fail_msg("caps %d%s, N=%u: differs from the uninterrupted pass:\n--- want\n"
			    "%s--- got\n%s", c, incremental ? " (incremental)" : "", n, ref, got);
		free(got);
		/* converged: a further pass (or two: the resumed pass may have
		 * recorded marks from before its own changes) writes nothing */
		for (int k = 0; k < 2; k++) {
			assert_int_equal(run_child(fx, 0, &out), 0);
			if (out.writes)
				fail_msg("caps %d%s, N=%u: a further pass made %u writes (%" PRIu64
				    " copied, %" PRIu64 " deleted, %" PRIu64 " flags)", c,
				    incremental ? " (incremental)" : "", n, out.writes, out.copied,
				    out.deleted, out.flags_set);
		}
		if (finished)
			break;
	}
	print_message("caps %d%s: interrupted at each of %u steps\n", c,
	    incremental ? ", incremental pass" : ", first pass", n - 1);
	assert_true(n - 1 >= 5);
	free(ref);
	fx_free(fx);
}

static void test_interrupt_first_pass(void **state)
{
	(void)state;
	interrupt_every_step(CAPS_NONE, false);
	interrupt_every_step(CAPS_QRESYNC, false);
}

static void test_interrupt_incremental_pass(void **state)
{
	(void)state;
	interrupt_every_step(CAPS_NONE, true);
	interrupt_every_step(CAPS_CONDSTORE, true);
	interrupt_every_step(CAPS_QRESYNC, true);
}

int main(void)
{
	if (!getenv("POSTINO_TEST_VERBOSE"))
		log_set_level(LOG_ERROR);
	const struct CMUnitTest tests[] = {
		/* forked first: see the top of this file */
		cmocka_unit_test(test_interrupt_first_pass),
		cmocka_unit_test(test_interrupt_incremental_pass),
		cmocka_unit_test(test_first_run_union),
		cmocka_unit_test(test_flag_merge),
		cmocka_unit_test(test_refused_flag),
		cmocka_unit_test(test_new_and_deleted),
		cmocka_unit_test(test_incremental_big_folder),
		cmocka_unit_test(test_change_beats_deletion),
		cmocka_unit_test(test_deletion_guard),
		cmocka_unit_test(test_moves),
		cmocka_unit_test(test_stale_state),
		cmocka_unit_test(test_escape_create),
		cmocka_unit_test(test_escape_crash_window),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
