/*
 * test_copier.c — the exactly-once copy (src/copier.c) against the fake
 * store (fake_store.c), with the real state DB and a plan from the real
 * planner.
 *
 * The source is a '/'-delimited account with varied messages (two
 * byte-identical ones in a folder, two empty ones, no Message-ID, a folded
 * Message-ID, keywords, old dates with zones, bare LF, 8-bit bytes, a large
 * one that the fake streams 7 bytes at a time); the destination a
 * '.'-delimited one with an "INBOX." namespace and an unrelated message
 * already in its INBOX.
 *
 * The crash tests fork: a child loads both accounts from files, runs
 * copy_run() with POSTINO_TEST_EXIT_AFTER=N (the copier's own hook exits
 * with 99 after the Nth durable step) while the fake destination saves
 * itself after every change, and dies; another child resumes. The hook
 * reads the environment once per process and the cached value is
 * inherited by fork(), so these tests run first, before this process ever
 * calls copy_run() itself (run_child() checks).
 *
 * copy_run() runs with one worker (jobs = 1): extra workers connect with
 * store_new(), which cannot make fake stores.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "copier.h"
#include "fake_store.h"
#include "log.h"
#include "planner.h"
#include "state.h"
#include "util.h"

/*
 * Time. The copier waits for a server to settle before it drops an
 * interrupted intent (settle() in src/copier.c: STATUS every 0.5 s until
 * UIDNEXT holds still), and store_reconnect() backs off; both sleep with
 * nanosleep(). The fake server settles at once, so this definition takes
 * the place of libc's in this program: the waits still happen (the STATUS
 * polls are made) but cost no time. g_slept_ns says how long they would
 * have taken.
 */
static unsigned long long g_slept_ns;

int nanosleep(const struct timespec *req, struct timespec *rem)
{
	if (req)
		__atomic_add_fetch(&g_slept_ns,
		    (unsigned long long)req->tv_sec * 1000000000ull + (unsigned long long)req->tv_nsec,
		    __ATOMIC_SEQ_CST);
	if (rem)
		rem->tv_sec = rem->tv_nsec = 0;
	return 0;
}

/* ------------------------------------------------------------------ */
/* the corpus */

#define REFUSE_TOKEN "X-Content-Filter: REFUSE-ME"
#define REFUSE_TEXT "[LIMIT] message rejected by the content filter"

struct corpus_msg {
	const char *folder; /* source wire name */
	const char *body;   /* NULL: the large generated message */
	const char *flags;
	int64_t idate;
	int tzoff;
};

#define M1 "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hello\r\n" \
	   "Message-ID: <m1@example.org>\r\n\r\nHi Bob.\r\n"

static const struct corpus_msg corpus[] = {
	{"INBOX", M1, "\\Seen", 1700000000, 60},
	/* byte-identical to the first, other flags */
	{"INBOX", M1, "\\Seen \\Flagged", 1700000000, 60},
	{"INBOX", "From: carol@example.org\r\nSubject: no id\r\n\r\nbody without id\r\n", NULL,
	    1700000100, 0},
	{"INBOX", "", NULL, 1700000200, 0},
	{"INBOX", "From: a@example.org\r\nMessage-ID: <m5@example.org>\r\nSubject: kw\r\n\r\n"
	    "keywords\r\n", "\\Answered $Forwarded Work $Label1", 1700000300, -300},
	{"INBOX", "From: old@example.org\r\nMessage-ID: <m6@example.org>\r\nSubject: 1998\r\n\r\n"
	    "an old one\r\n", "\\Seen", 883612800, -300},
	{"INBOX", "From: dave@example.org\nMessage-ID: <m7@example.org>\nSubject: lf\n\nline1\n"
	    "line2\n", "\\Seen", 1700000400, 330},
	{"INBOX", NULL, "\\Seen", 1700000500, 0},
	/* empty again (byte-identical to the other empty one), other flags */
	{"INBOX", "", "\\Seen", 1700000600, 0},
	{"INBOX", "From: e@example.org\r\nMessage-ID:\r\n <m10@example.org>\r\n" REFUSE_TOKEN
	    "\r\nSubject: folded id\r\n\r\ntext\r\n", "\\Seen", 1700000700, 0},
	/* the same Message-ID as the first, other bytes (a resent copy) */
	{"INBOX", "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hello again\r\n"
	    "Message-ID: <m1@example.org>\r\n\r\nHi Bob, again.\r\n", NULL, 1700000800, 60},
	{"Sent", "From: me@example.org\r\nMessage-ID: <s1@example.org>\r\nSubject: s1\r\n\r\n"
	    "sent 1\r\n", "\\Seen", 1600000000, 120},
	{"Sent", "From: me@example.org\r\nMessage-ID: <s2@example.org>\r\nSubject: "
	    "\xC3\xA9t\xC3\xA9\r\n\r\n8-bit \xE2\x82\xAC\r\n", "\\Seen \\Answered", 1600000100, 120},
	{"Sent", "From: me@example.org\r\nSubject: s3, no id\r\n\r\nsent 3\r\n", "\\Seen",
	    1600000200, 120},
	{"Work", "From: boss@example.org\r\nMessage-ID: <w1@example.org>\r\n\r\nwork 1\r\n",
	    "\\Seen \\Draft", 1500000000, 0},
	{"Work", "From: boss@example.org\r\nMessage-ID: <w2@example.org>\r\n\r\nwork 2\r\n", NULL,
	    1500000100, 0},
	{"Work/Projects", "From: p@example.org\r\nMessage-ID: <p1@example.org>\r\n\r\np1\r\n",
	    "\\Seen", 1400000000, -600},
	{"Work/Projects", "From: p@example.org\r\nMessage-ID: <p2@example.org>\r\n"
	    REFUSE_TOKEN "\r\n\r\np2\r\n", "\\Flagged", 1400000100, -600},
	/* the same message as INBOX's first, in another folder */
	{"Work/Projects", M1, "\\Seen", 1700000000, 60},
	{"Lists/dev", "From: list@example.org\r\nMessage-ID: <l1@example.org>\r\n\r\nl1\r\n",
	    "\\Seen", 1300000000, 0},
	{"Lists/dev", "From: list@example.org\r\n\r\nl2 without id\r\n", NULL, 1300000100, 0},
};
#define NCORPUS ARRAY_SIZE(corpus)
#define NINBOX 11

/* The large message: 5000 bytes with a Message-ID. */
static const char *large_body(size_t *len_r)
{
	static char big[5001];
	if (!big[0]) {
		struct buf b = BUF_INIT;
		buf_adds(&b, "From: big@example.org\r\nMessage-ID: <big@example.org>\r\n"
		    "Subject: large\r\n\r\n");
		for (int i = 0; b.len < 5000; i++)
			buf_addf(&b, "line %05d of a long message body......\r\n", i);
		memcpy(big, b.s, 5000);
		big[5000] = 0;
		buf_release(&b);
	}
	*len_r = 5000;
	return big;
}

static const char *corpus_body(const struct corpus_msg *m, size_t *len_r)
{
	if (!m->body)
		return large_body(len_r);
	*len_r = strlen(m->body);
	return m->body;
}

static const struct { const char *name; unsigned attrs; } src_folders[] = {
	{"INBOX", 0}, {"Sent", FA_SENT}, {"Work", 0}, {"Work/Projects", 0},
	{"Lists", FA_NOSELECT}, {"Lists/dev", 0}, {"Empty", 0},
};
#define NCOPIED_FOLDERS 6

static struct fake_store *make_source(void)
{
	struct fake_store *fs = fake_store_new("source", '/', "");
	for (size_t i = 0; i < ARRAY_SIZE(src_folders); i++)
		fake_store_add_folder(fs, src_folders[i].name, src_folders[i].attrs);
	for (size_t i = 0; i < NCORPUS; i++) {
		size_t len;
		const char *body = corpus_body(&corpus[i], &len);
		fake_store_add_msg(fs, fake_store_folder(fs, corpus[i].folder), body, len,
		    corpus[i].flags, corpus[i].idate, corpus[i].tzoff);
	}
	return fs;
}

#define PRE_BODY "From: someone@example.com\r\nMessage-ID: <pre@example.com>\r\n\r\nalready here\r\n"

static struct fake_store *make_dest(bool uidplus, bool condstore)
{
	struct fake_store *fs = fake_store_new("destination", '.', "INBOX.");
	fake_store_set_caps(fs, uidplus, condstore);
	struct fake_folder *in = fake_store_add_folder(fs, "INBOX", 0);
	fake_store_add_folder(fs, "INBOX.Sent", FA_SENT);
	fake_store_add_msg(fs, in, PRE_BODY, strlen(PRE_BODY), "\\Seen", 1000000000, 0);
	return fs;
}

/* Where each source folder goes (the plan, written out to check it). */
static const struct { const char *src, *dst, *dst_path; } expected_map[] = {
	{"INBOX", "INBOX", "INBOX"},
	{"Sent", "INBOX.Sent", "Sent"},
	{"Work", "INBOX.Work", "Work"},
	{"Work/Projects", "INBOX.Work.Projects", "Work/Projects"},
	{"Lists/dev", "INBOX.Lists.dev", "Lists/dev"},
	{"Empty", "INBOX.Empty", "Empty"},
};

static size_t corpus_count(const char *folder)
{
	size_t n = 0;
	for (size_t i = 0; i < NCORPUS; i++)
		n += !strcmp(corpus[i].folder, folder);
	return n;
}

static uint64_t corpus_bytes(void)
{
	uint64_t n = 0;
	for (size_t i = 0; i < NCORPUS; i++) {
		size_t len;
		corpus_body(&corpus[i], &len);
		n += len;
	}
	return n;
}

/* ------------------------------------------------------------------ */
/* fixture */

struct fx {
	char dir[80];
	char *state_path, *src_path, *dst_path, *dst0_path, *state0_path;
	struct fake_store *src, *dst;
	struct state *st;
	struct copy_opts o;
	struct copy_report rep;
};

static bool g_copied_in_process;

static int rm_entry(const char *p, const struct stat *sb, int type, struct FTW *ftw)
{
	(void)sb;
	(void)type;
	(void)ftw;
	return remove(p);
}

static struct fx *fx_new(bool uidplus, bool condstore)
{
	struct fx *fx = xcalloc(1, sizeof *fx);
	/* tmpfs if there is one: the state DB syncs every commit */
	const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
	snprintf(fx->dir, sizeof fx->dir, "%s/postino-test-copier-XXXXXX", base);
	if (!mkdtemp(fx->dir))
		fail_msg("mkdtemp: %s", strerror(errno));
	fx->state_path = xasprintf("%s/state.db", fx->dir);
	fx->state0_path = xasprintf("%s/state0.db", fx->dir);
	fx->src_path = xasprintf("%s/src.fake", fx->dir);
	fx->dst_path = xasprintf("%s/dst.fake", fx->dir);
	fx->dst0_path = xasprintf("%s/dst0.fake", fx->dir);
	fx->src = make_source();
	fx->dst = make_dest(uidplus, condstore);
	fake_store_set_caps(fx->src, true, condstore);
	copy_opts_default(&fx->o);
	/* Extra workers open their own connections with store_new(), which
	 * can only make IMAP and POP3 stores: one worker, the caller's. */
	fx->o.jobs = 1;
	return fx;
}

static void close_state(struct fx *fx)
{
	if (fx->st)
		state_close(&fx->st);
}

static struct state *open_state(struct fx *fx)
{
	if (!fx->st) {
		char *err = NULL;
		if (state_open(&fx->st, fx->state_path, 0, &err) != STATE_OPEN_OK)
			fail_msg("state_open: %s", err ? err : "?");
	}
	return fx->st;
}

static int teardown(void **state)
{
	struct fx *fx = *state;
	if (!fx)
		return 0;
	close_state(fx);
	copy_report_free(&fx->rep);
	struct store *s = fake_store_base(fx->src), *d = fake_store_base(fx->dst);
	store_free(&s);
	store_free(&d);
	nftw(fx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(fx->state_path);
	free(fx->state0_path);
	free(fx->src_path);
	free(fx->dst_path);
	free(fx->dst0_path);
	free(fx);
	return 0;
}

static void connect_both(struct fake_store *src, struct fake_store *dst)
{
	if (store_connect(fake_store_base(src)) != STORE_OK ||
	    store_connect(fake_store_base(dst)) != STORE_OK)
		fail_msg("cannot connect the fake stores");
}

/* ------------------------------------------------------------------ */
/* running the copier */

struct known_vec {
	struct plan_known *v;
	size_t n;
};

static int known_cb(void *ctx, const struct fpair *fp)
{
	struct known_vec *k = ctx;
	k->v = xrealloc(k->v, (k->n + 1) * sizeof *k->v);
	k->v[k->n++] = (struct plan_known){xstrdup(fp->a_name), xstrdup(fp->b_name)};
	return 0;
}

/* The plan as the CLI makes it: both folder lists and the state's pairs.
 * Returns 0 or -1 (no cmocka here: children call it). */
static int make_plan(struct store *src, struct store *dst, struct state *st, struct plan *p)
{
	struct store_folder_list l[2] = {{0, NULL}, {0, NULL}};
	struct known_vec k = {NULL, 0};
	int r = -1;
	char *err = NULL;
	if (src->ops->list(src, &l[0]) || dst->ops->list(dst, &l[1]))
		goto out;
	if (state_pairs_each(st, known_cb, &k) < 0)
		goto out;
	struct plan_side s = {&l[0], src->ns.prefix, src->ns.delim, false};
	struct plan_side d = {&l[1], dst->ns.prefix, dst->ns.delim, false};
	struct plan_rules rules;
	memset(&rules, 0, sizeof rules);
	r = plan_build(p, &s, &d, &rules, k.v, k.n, &err);
out:
	free(err);
	for (size_t i = 0; i < k.n; i++) {
		free((char *)k.v[i].src_name);
		free((char *)k.v[i].dst_name);
	}
	free(k.v);
	store_folder_list_free(&l[0]);
	store_folder_list_free(&l[1]);
	return r;
}

/* One copy_run in this process, with fx's stores and state. */
static enum store_rc run_copy(struct fx *fx)
{
	g_copied_in_process = true;
	struct plan p;
	struct state *st = open_state(fx);
	if (make_plan(fake_store_base(fx->src), fake_store_base(fx->dst), st, &p) < 0)
		fail_msg("make_plan failed");
	copy_report_free(&fx->rep);
	char *err = NULL;
	enum store_rc rc = copy_run(fake_store_base(fx->src), fake_store_base(fx->dst), st, &p,
	    &fx->o, &fx->rep, &err);
	if (rc != STORE_OK && err && getenv("POSTINO_TEST_VERBOSE"))
		fprintf(stderr, "copy_run: %d %s\n", rc, err);
	free(err);
	plan_free(&p);
	return rc;
}

static void run_copy_ok(struct fx *fx)
{
	enum store_rc rc = run_copy(fx);
	if (rc != STORE_OK)
		fail_msg("copy_run returned %d", rc);
	assert_int_equal(fx->rep.failed_folders, 0);
	assert_false(fx->rep.interrupted);
}

/* What a child run reports back through a pipe. */
struct run_out {
	int rc;
	uint64_t copied, refused, flags_set, already, relinked;
	unsigned src_bodies, dst_appended, src_scans, dst_scans;
};

struct run_cfg {
	long exit_after; /* POSTINO_TEST_EXIT_AFTER; 0: unset */
	unsigned batch_msgs;
	void (*configure)(struct fake_store *src, struct fake_store *dst, void *ctx);
	void *ctx;
};

/* The child's side: no cmocka here, only exit codes. */
static void child_main(struct fx *fx, const struct run_cfg *cfg, int wfd)
{
	struct fake_store *src = fake_store_load(fx->src_path, "source");
	struct fake_store *dst = fake_store_load(fx->dst_path, "destination");
	if (!src || !dst)
		_exit(3);
	fake_store_autosave(dst, fx->dst_path);
	if (store_connect(fake_store_base(src)) || store_connect(fake_store_base(dst)))
		_exit(4);
	if (cfg->configure)
		cfg->configure(src, dst, cfg->ctx);
	struct state *st = NULL;
	if (state_open(&st, fx->state_path, 0, NULL) != STATE_OPEN_OK)
		_exit(5);
	if (cfg->exit_after > 0) {
		char n[32];
		snprintf(n, sizeof n, "%ld", cfg->exit_after);
		setenv("POSTINO_TEST_EXIT_AFTER", n, 1);
	}
	struct plan p;
	if (make_plan(fake_store_base(src), fake_store_base(dst), st, &p) < 0)
		_exit(6);
	struct copy_opts o;
	copy_opts_default(&o);
	o.jobs = 1;
	if (cfg->batch_msgs)
		o.batch_msgs = cfg->batch_msgs;
	struct copy_report rep;
	char *err = NULL;
	fake_store_reset_counters(src);
	fake_store_reset_counters(dst);
	struct run_out out;
	memset(&out, 0, sizeof out);
	out.rc = copy_run(fake_store_base(src), fake_store_base(dst), st, &p, &o, &rep, &err);
	out.copied = rep.copied;
	out.refused = rep.refused;
	out.flags_set = rep.flags_set;
	out.already = rep.already;
	for (size_t i = 0; i < rep.nfolders; i++)
		out.relinked += rep.folders[i].relinked;
	out.src_bodies = fake_store_bodies_fetched(src);
	out.dst_appended = fake_store_msgs_appended(dst);
	out.src_scans = fake_store_calls(src, FOP_SCAN);
	out.dst_scans = fake_store_calls(dst, FOP_SCAN);
	if (err && getenv("POSTINO_TEST_VERBOSE"))
		fprintf(stderr, "child copy_run: %s\n", err);
	free(err);
	copy_report_free(&rep);
	plan_free(&p);
	state_close(&st);
	struct store *bs = fake_store_base(src), *bd = fake_store_base(dst);
	store_free(&bs);
	store_free(&bd);
	if (write(wfd, &out, sizeof out) != (ssize_t)sizeof out)
		_exit(7);
	_exit(0);
}

/* Runs copy_run in a child on the files of fx. Returns its exit status
 * (99: killed by the test hook) and, if it completed, *out. */
static int run_child(struct fx *fx, const struct run_cfg *cfg, struct run_out *out)
{
	if (g_copied_in_process)
		fail_msg("crash tests must run before any in-process copy_run(): "
		    "copier_test_step() caches POSTINO_TEST_EXIT_AFTER across fork()");
	close_state(fx);
	int p[2];
	assert_int_equal(pipe(p), 0);
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(p[0]);
		child_main(fx, cfg, p[1]);
	}
	close(p[1]);
	struct run_out tmp;
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

static void copy_file(const char *from, const char *to)
{
	FILE *a = fopen(from, "rb");
	if (!a) {
		if (errno == ENOENT) {
			unlink(to);
			return;
		}
		fail_msg("open %s: %s", from, strerror(errno));
	}
	FILE *b = fopen(to, "wb");
	assert_non_null(b);
	char buf[8192];
	size_t n;
	while ((n = fread(buf, 1, sizeof buf, a)) > 0)
		assert_int_equal(fwrite(buf, 1, n, b), n);
	fclose(a);
	assert_int_equal(fclose(b), 0);
}

static void copy_state(const char *from, const char *to)
{
	static const char *const sfx[] = {"", "-wal", "-shm"};
	for (size_t i = 0; i < ARRAY_SIZE(sfx); i++) {
		char *f = xasprintf("%s%s", from, sfx[i]), *t = xasprintf("%s%s", to, sfx[i]);
		copy_file(f, t);
		free(f);
		free(t);
	}
}

static void remove_state(const char *path)
{
	static const char *const sfx[] = {"", "-wal", "-shm", "-journal"};
	for (size_t i = 0; i < ARRAY_SIZE(sfx); i++) {
		char *f = xasprintf("%s%s", path, sfx[i]);
		unlink(f);
		free(f);
	}
}

/* ------------------------------------------------------------------ */
/* comparing */

/* Copy of f's messages with the flags g keeps (PERMANENTFLAGS), dumped. */
static char *dump_filtered(const struct fake_folder *f, const struct fake_folder *g)
{
	struct fake_folder t = *f;
	t.msgs = xcalloc(f->n ? f->n : 1, sizeof *t.msgs);
	for (size_t i = 0; i < f->n; i++) {
		t.msgs[i] = f->msgs[i];
		flagset_init(&t.msgs[i].flags);
		flagset_copy(&t.msgs[i].flags, &f->msgs[i].flags);
		if (g && g->send_permflags) {
			t.msgs[i].flags.sys &= g->permflags;
			for (size_t k = 0; !g->perm_any_keyword && k < f->msgs[i].flags.nkw; k++)
				if (!flagset_has_kw(&g->perm_keywords, f->msgs[i].flags.kw[k]))
					flagset_remove_kw(&t.msgs[i].flags, f->msgs[i].flags.kw[k]);
		}
	}
	char *d = fake_folder_dump(&t);
	for (size_t i = 0; i < f->n; i++)
		flagset_clear(&t.msgs[i].flags);
	free(t.msgs);
	return d;
}

static char *pre_dump(void)
{
	struct fake_store *d = make_dest(true, false);
	char *s = fake_folder_dump(fake_store_folder(d, "INBOX"));
	struct store *b = fake_store_base(d);
	store_free(&b);
	return s;
}

/* Sorts the lines of a dump (for results whose UID order may differ). */
static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *sorted_lines(const char *s)
{
	char *copy = xstrdup(s);
	char **v = NULL;
	size_t n = 0;
	for (char *save = NULL, *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		v = xrealloc(v, (n + 1) * sizeof *v);
		v[n++] = l;
	}
	xqsort(v, n, sizeof *v, cmp_str);
	struct buf b = BUF_INIT;
	buf_adds(&b, "");
	for (size_t i = 0; i < n; i++)
		buf_addf(&b, "%s\n", v[i]);
	free(v);
	free(copy);
	return buf_detach(&b);
}

/*
 * Each destination folder holds exactly the messages of its source folder
 * (bytes, the flags it can keep, date and zone), in source order after
 * what was there before; INBOX keeps its unrelated message. any_order:
 * compare as multisets.
 */
static void assert_dest_matches(struct fake_store *src, struct fake_store *dst, bool any_order)
{
	char *pre = pre_dump();
	for (size_t i = 0; i < ARRAY_SIZE(expected_map); i++) {
		struct fake_folder *f = fake_store_folder(src, expected_map[i].src);
		struct fake_folder *g = fake_store_folder(dst, expected_map[i].dst);
		assert_non_null(f);
		if (!g)
			fail_msg("destination folder '%s' missing", expected_map[i].dst);
		char *want0 = dump_filtered(f, g);
		char *want = !strcmp(expected_map[i].dst, "INBOX") ? xasprintf("%s%s", pre, want0)
		    : xstrdup(want0);
		char *got = fake_folder_dump(g);
		if (any_order) {
			char *a = sorted_lines(want), *b = sorted_lines(got);
			free(want);
			free(got);
			want = a;
			got = b;
		}
		if (strcmp(want, got))
			fail_msg("destination folder '%s' differs from '%s':\n--- want\n%s--- got\n%s",
			    expected_map[i].dst, expected_map[i].src, want, got);
		free(want0);
		free(want);
		free(got);
	}
	/* nothing else appeared at the destination */
	assert_int_equal(fake_store_nfolders(dst), ARRAY_SIZE(expected_map));
	free(pre);
}

/* All folders of an account, by name, for comparing two results. */
static char *account_dump(struct fake_store *fs, bool any_order)
{
	struct buf b = BUF_INIT;
	buf_adds(&b, "");
	for (size_t i = 0; i < fake_store_nfolders(fs); i++) {
		struct fake_folder *f = fake_store_folder_at(fs, i);
		char *d = fake_folder_dump(f);
		if (any_order) {
			char *s = sorted_lines(d);
			free(d);
			d = s;
		}
		buf_addf(&b, "== %s (%zu)\n%s", f->name, f->n, d);
		free(d);
	}
	return buf_detach(&b);
}

static char *account_dump_file(const char *path, bool any_order)
{
	struct fake_store *fs = fake_store_load(path, "x");
	if (!fs)
		fail_msg("cannot load %s", path);
	char *d = account_dump(fs, any_order);
	struct store *b = fake_store_base(fs);
	store_free(&b);
	return d;
}

struct row_check {
	struct fake_folder *a, *b;
	size_t rows;
	const char *bad;
	char why[256];
};

static int row_check_cb(void *ctx, const struct msg_row *r)
{
	struct row_check *rc = ctx;
	rc->rows++;
	struct fake_msg *ma = r->a_uid ? fake_store_msg(rc->a, r->a_uid) : NULL;
	struct fake_msg *mb = r->b_uid ? fake_store_msg(rc->b, r->b_uid) : NULL;
	if (r->state != MSG_SYNCED)
		snprintf(rc->why, sizeof rc->why, "row %" PRId64 " in state %d", r->id, r->state);
	else if (!ma || !mb)
		snprintf(rc->why, sizeof rc->why, "row %" PRId64 " (a %u b %u) not on both sides",
		    r->id, r->a_uid, r->b_uid);
	else if (ma->len != mb->len || ma->len != r->size ||
	    (ma->len && memcmp(ma->body, mb->body, ma->len)))
		snprintf(rc->why, sizeof rc->why, "row %" PRId64 " pairs different messages (a %u, b %u)",
		    r->id, r->a_uid, r->b_uid);
	else {
		char *fl = flagset_format(&ma->flags);
		if (strcmp(fl, r->flags ? r->flags : ""))
			snprintf(rc->why, sizeof rc->why, "row %" PRId64 " flags '%s', source has '%s'",
			    r->id, r->flags, fl);
		free(fl);
	}
	return rc->why[0] ? 1 : 0;
}

/*
 * The state agrees with both accounts: every message of every copied source
 * folder has one SYNCED row whose destination UID holds the same bytes and
 * whose flags are the source's.
 */
static void assert_state_consistent(struct fx *fx, struct fake_store *src, struct fake_store *dst)
{
	struct state *st = open_state(fx);
	for (size_t i = 0; i < ARRAY_SIZE(expected_map); i++) {
		struct fpair fp;
		assert_int_equal(state_pair_find(st, expected_map[i].src, expected_map[i].dst, &fp), 1);
		struct row_check rc;
		memset(&rc, 0, sizeof rc);
		rc.a = fake_store_folder(src, expected_map[i].src);
		rc.b = fake_store_folder(dst, expected_map[i].dst);
		int r = state_msgs_each(st, fp.id, -1, row_check_cb, &rc);
		if (r)
			fail_msg("%s: %s", expected_map[i].src, rc.why[0] ? rc.why : state_error(st));
		assert_int_equal(rc.rows, rc.a->n);
		fpair_release(&fp);
	}
}

static struct folder_report *folder_rep(struct fx *fx, const char *src_path)
{
	for (size_t i = 0; i < fx->rep.nfolders; i++)
		if (!strcmp(fx->rep.folders[i].src_path, src_path))
			return &fx->rep.folders[i];
	fail_msg("no report for '%s'", src_path);
	return NULL;
}

static int64_t pair_count(struct fx *fx, const char *a, const char *b, enum msg_state s)
{
	struct state *st = open_state(fx);
	struct fpair fp;
	assert_int_equal(state_pair_find(st, a, b, &fp), 1);
	int64_t c[3];
	assert_int_equal(state_pair_counts(st, fp.id, c), 0);
	fpair_release(&fp);
	return c[s];
}

/* ------------------------------------------------------------------ */
/* crash tests (forked; these must come first, see the top) */

/* Steps of one uninterrupted first run at least: per folder the pair's
 * first commit and the final save, per batch intent, APPEND, result. */
static unsigned min_steps(unsigned batch)
{
	unsigned n = 0;
	for (size_t i = 0; i < ARRAY_SIZE(expected_map); i++) {
		size_t c = corpus_count(expected_map[i].src);
		n += 2 + 3 * (unsigned)((c + batch - 1) / batch);
	}
	return n;
}

/*
 * Copies with a crash after every durable step N = 1, 2, ... until a run
 * completes (N = steps + 1); each time another process resumes, the result
 * must equal the uninterrupted one, and a further run changes nothing.
 */
static void interrupt_every_step(bool uidplus, unsigned batch)
{
	struct fx *fx = fx_new(uidplus, false);
	assert_int_equal(fake_store_save(fx->src, fx->src_path), 0);
	assert_int_equal(fake_store_save(fx->dst, fx->dst0_path), 0);

	/* the uninterrupted result */
	struct run_cfg cfg = {0, batch, NULL, NULL};
	struct run_out out;
	copy_file(fx->dst0_path, fx->dst_path);
	assert_int_equal(run_child(fx, &cfg, &out), 0);
	assert_int_equal(out.rc, STORE_OK);
	assert_int_equal(out.copied, NCORPUS);
	char *ref = account_dump_file(fx->dst_path, false);
	{
		struct fake_store *d = fake_store_load(fx->dst_path, "destination");
		assert_dest_matches(fx->src, d, false);
		struct store *b = fake_store_base(d);
		store_free(&b);
	}

	unsigned n;
	for (n = 1; n < 1000; n++) {
		copy_file(fx->dst0_path, fx->dst_path);
		remove_state(fx->state_path);
		struct run_cfg crash = {(long)n, batch, NULL, NULL};
		int code = run_child(fx, &crash, &out);
		if (code != 99 && code != 0)
			fail_msg("N=%u: child exited %d", n, code);
		bool finished = code == 0;
		if (!finished) {
			code = run_child(fx, &cfg, &out);
			if (code != 0 || out.rc != STORE_OK)
				fail_msg("N=%u: resume exited %d rc %d", n, code, out.rc);
		}
		char *got = account_dump_file(fx->dst_path, false);
		if (strcmp(ref, got))
			fail_msg("N=%u: destination differs from the uninterrupted run:\n--- want\n"
			    "%s--- got\n%s", n, ref, got);
		free(got);
		struct fake_store *d = fake_store_load(fx->dst_path, "destination");
		assert_state_consistent(fx, fx->src, d);
		struct store *b = fake_store_base(d);
		store_free(&b);
		/* and then nothing is left to do */
		code = run_child(fx, &cfg, &out);
		assert_int_equal(code, 0);
		if (out.copied || out.src_bodies || out.dst_appended || out.flags_set)
			fail_msg("N=%u: a further run copied %" PRIu64 ", fetched %u, appended %u, "
			    "set flags on %" PRIu64, n, out.copied, out.src_bodies, out.dst_appended,
			    out.flags_set);
		assert_int_equal(out.already, NCORPUS);
		if (finished)
			break;
	}
	/* every step of the run was interrupted once */
	print_message("uidplus %d, batch %u: interrupted at each of %u steps\n", uidplus, batch,
	    n - 1);
	if (n - 1 < min_steps(batch))
		fail_msg("the run completed after %u steps, fewer than %u", n - 1, min_steps(batch));
	free(ref);
	void *st = fx;
	teardown(&st);
}

static void test_interrupt_every_step_uidplus_batch1(void **state)
{
	(void)state;
	interrupt_every_step(true, 1);
}

static void test_interrupt_every_step_uidplus_batch4(void **state)
{
	(void)state;
	interrupt_every_step(true, 4);
}

static void test_interrupt_every_step_no_uidplus_batch1(void **state)
{
	(void)state;
	interrupt_every_step(false, 1);
}

static void test_interrupt_every_step_no_uidplus_batch4(void **state)
{
	(void)state;
	interrupt_every_step(false, 4);
}

/*
 * A run killed after every N steps, again and again, still gets there. A
 * run spends a step on each folder it finds complete (its pair is saved)
 * and one on resolving, so N must leave room for an intent and its APPEND
 * after those: with six folders that is N >= 8.
 */
static void test_interrupt_repeatedly(void **state)
{
	(void)state;
	static const struct { bool uidplus; long n; } cases[] = {
		{true, 8}, {false, 8}, {true, 9}, {false, 10}, {true, 12}, {false, 13},
	};
	for (size_t c = 0; c < ARRAY_SIZE(cases); c++) {
		struct fx *fx = fx_new(cases[c].uidplus, false);
		assert_int_equal(fake_store_save(fx->src, fx->src_path), 0);
		assert_int_equal(fake_store_save(fx->dst, fx->dst_path), 0);
		struct run_cfg crash = {cases[c].n, 4, NULL, NULL};
		struct run_out out;
		int runs, code = 99;
		for (runs = 0; runs < 300 && code == 99; runs++)
			code = run_child(fx, &crash, &out);
		assert_int_equal(code, 0);
		assert_true(runs > 3);
		struct fake_store *d = fake_store_load(fx->dst_path, "destination");
		assert_dest_matches(fx->src, d, false);
		assert_state_consistent(fx, fx->src, d);
		struct store *b = fake_store_base(d);
		store_free(&b);
		void *st = fx;
		teardown(&st);
	}
}

struct crash_append {
	size_t after;
	bool lose;
};

static void arm_crash_in_append(struct fake_store *src, struct fake_store *dst, void *ctx)
{
	(void)src;
	const struct crash_append *ca = ctx;
	struct fake_fault f = {FOP_APPEND, 1, ca->after, FAULT_CRASH, false, false, false};
	fake_store_fault(dst, &f);
}

/* The process dies in the middle of an APPEND batch, after j of its
 * messages reached the server. */
static void test_interrupt_mid_append(void **state)
{
	(void)state;
	for (int uidplus = 0; uidplus < 2; uidplus++) {
		struct fx *fx = fx_new(uidplus, false);
		assert_int_equal(fake_store_save(fx->src, fx->src_path), 0);
		assert_int_equal(fake_store_save(fx->dst, fx->dst0_path), 0);
		for (size_t j = 0; j <= NINBOX; j++) {
			copy_file(fx->dst0_path, fx->dst_path);
			remove_state(fx->state_path);
			struct crash_append ca = {j, false};
			struct run_cfg crash = {0, 0, arm_crash_in_append, &ca};
			struct run_cfg plain = {0, 0, NULL, NULL};
			struct run_out out;
			assert_int_equal(run_child(fx, &crash, NULL), 99);
			{
				/* j messages of the INBOX batch made it */
				struct fake_store *d = fake_store_load(fx->dst_path, "destination");
				assert_int_equal(fake_store_folder(d, "INBOX")->n, 1 + j);
				struct store *b = fake_store_base(d);
				store_free(&b);
			}
			assert_int_equal(run_child(fx, &plain, &out), 0);
			assert_int_equal(out.rc, STORE_OK);
			assert_int_equal(out.copied, NCORPUS - j);
			struct fake_store *d = fake_store_load(fx->dst_path, "destination");
			assert_dest_matches(fx->src, d, false);
			assert_state_consistent(fx, fx->src, d);
			struct store *b = fake_store_base(d);
			store_free(&b);
			assert_int_equal(run_child(fx, &plain, &out), 0);
			assert_int_equal(out.copied, 0);
			assert_int_equal(out.dst_appended, 0);
			assert_int_equal(out.src_bodies, 0);
		}
		void *st = fx;
		teardown(&st);
	}
}

/*
 * A run dies right after an APPEND, before recording it; then the
 * destination renumbers the folder (new UIDVALIDITY, UIDs from 1, lower
 * than those the intents recorded). The resumed run must still find what
 * arrived instead of sending it again.
 */
static void test_interrupt_then_dest_renumbered(void **state)
{
	(void)state;
	for (int uidplus = 0; uidplus < 2; uidplus++) {
		struct fx *fx = fx_new(uidplus, false);
		/* messages came and went there: UIDNEXT is well above 1 */
		fake_store_folder(fx->dst, "INBOX")->uidnext = 42;
		assert_int_equal(fake_store_save(fx->src, fx->src_path), 0);
		assert_int_equal(fake_store_save(fx->dst, fx->dst_path), 0);
		struct crash_append ca = {NINBOX, false};
		struct run_cfg crash = {0, 0, arm_crash_in_append, &ca};
		struct run_cfg plain = {0, 0, NULL, NULL};
		struct run_out out;
		assert_int_equal(run_child(fx, &crash, NULL), 99);
		struct fake_store *d = fake_store_load(fx->dst_path, "destination");
		struct fake_folder *in = fake_store_folder(d, "INBOX");
		assert_int_equal(in->n, 1 + NINBOX);
		assert_int_equal(in->msgs[1].uid, 42);
		fake_store_set_uidvalidity(d, in, 7000, 1);
		assert_int_equal(fake_store_save(d, fx->dst_path), 0);
		struct store *b = fake_store_base(d);
		store_free(&b);

		assert_int_equal(run_child(fx, &plain, &out), 0);
		assert_int_equal(out.rc, STORE_OK);
		d = fake_store_load(fx->dst_path, "destination");
		assert_int_equal(fake_store_folder(d, "INBOX")->n, 1 + NINBOX);
		assert_dest_matches(fx->src, d, false);
		assert_state_consistent(fx, fx->src, d);
		b = fake_store_base(d);
		store_free(&b);
		assert_int_equal(run_child(fx, &plain, &out), 0);
		assert_int_equal(out.copied, 0);
		assert_int_equal(out.dst_appended, 0);
		void *st = fx;
		teardown(&st);
	}
}

/* The destination's INBOX lost two messages and got a new UIDVALIDITY. */
static void break_dest_inbox(const char *path)
{
	struct fake_store *d = fake_store_load(path, "destination");
	assert_non_null(d);
	struct fake_folder *in = fake_store_folder(d, "INBOX");
	/* UIDs: 1 is the unrelated message, 2.. the corpus in order */
	fake_store_msg_remove(d, in, 4);  /* no Message-ID */
	fake_store_msg_remove(d, in, 7);  /* <m6@example.org> */
	fake_store_set_uidvalidity(d, in, 7000, 1);
	assert_int_equal(fake_store_save(d, path), 0);
	struct store *b = fake_store_base(d);
	store_free(&b);
}

/*
 * After a destination UIDVALIDITY change the next run re-pairs by content
 * and copies what is missing; a crash at any step of that run must not
 * lose the re-pairing.
 */
static void test_interrupt_dest_uidvalidity_repair(void **state)
{
	(void)state;
	struct fx *fx = fx_new(true, false);
	assert_int_equal(fake_store_save(fx->src, fx->src_path), 0);
	assert_int_equal(fake_store_save(fx->dst, fx->dst_path), 0);
	struct run_cfg plain = {0, 4, NULL, NULL};
	struct run_out out;
	assert_int_equal(run_child(fx, &plain, &out), 0);
	assert_int_equal(out.copied, NCORPUS);
	break_dest_inbox(fx->dst_path);
	copy_file(fx->dst_path, fx->dst0_path);
	copy_state(fx->state_path, fx->state0_path);

	assert_int_equal(run_child(fx, &plain, &out), 0);
	assert_int_equal(out.rc, STORE_OK);
	assert_int_equal(out.copied, 2);
	char *ref = account_dump_file(fx->dst_path, true);

	unsigned n;
	for (n = 1; n < 200; n++) {
		copy_file(fx->dst0_path, fx->dst_path);
		remove_state(fx->state_path);
		copy_state(fx->state0_path, fx->state_path);
		struct run_cfg crash = {(long)n, 4, NULL, NULL};
		int code = run_child(fx, &crash, &out);
		assert_true(code == 99 || code == 0);
		bool finished = code == 0;
		if (!finished)
			assert_int_equal(run_child(fx, &plain, &out), 0);
		char *got = account_dump_file(fx->dst_path, true);
		if (strcmp(ref, got))
			fail_msg("N=%u: destination differs:\n--- want\n%s--- got\n%s", n, ref, got);
		free(got);
		struct fake_store *d = fake_store_load(fx->dst_path, "destination");
		assert_dest_matches(fx->src, d, true);
		assert_state_consistent(fx, fx->src, d);
		struct store *b = fake_store_base(d);
		store_free(&b);
		assert_int_equal(run_child(fx, &plain, &out), 0);
		assert_int_equal(out.copied, 0);
		assert_int_equal(out.dst_appended, 0);
		if (finished)
			break;
	}
	assert_true(n > 3);
	free(ref);
	void *st = fx;
	teardown(&st);
}

/* ------------------------------------------------------------------ */
/* in-process tests */

static int setup_plain(void **state)
{
	struct fx *fx = fx_new(true, false);
	connect_both(fx->src, fx->dst);
	*state = fx;
	return 0;
}

static int setup_no_uidplus(void **state)
{
	struct fx *fx = fx_new(false, false);
	connect_both(fx->src, fx->dst);
	*state = fx;
	return 0;
}

static int setup_condstore(void **state)
{
	struct fx *fx = fx_new(true, true);
	connect_both(fx->src, fx->dst);
	*state = fx;
	return 0;
}

static void check_full_copy(struct fx *fx)
{
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, NCORPUS);
	assert_int_equal(fx->rep.bytes, corpus_bytes());
	assert_int_equal(fx->rep.refused, 0);
	assert_int_equal(fx->rep.nrefusals, 0);
	assert_int_equal(fx->rep.nfolders, NCOPIED_FOLDERS);
	assert_dest_matches(fx->src, fx->dst, false);
	assert_state_consistent(fx, fx->src, fx->dst);
	for (size_t i = 0; i < ARRAY_SIZE(expected_map); i++) {
		struct folder_report *fr = folder_rep(fx, expected_map[i].src);
		assert_string_equal(fr->dst_path, expected_map[i].dst_path);
		assert_int_equal(fr->copied, corpus_count(expected_map[i].src));
		assert_false(fr->failed);
		assert_null(fr->dropped_keywords);
		/* created: the three the destination did not have */
		bool existed = !strcmp(expected_map[i].src, "INBOX") ||
		    !strcmp(expected_map[i].src, "Sent");
		assert_int_equal(fr->created, !existed);
		assert_int_equal(pair_count(fx, expected_map[i].src, expected_map[i].dst, MSG_SYNCED),
		    (int64_t)corpus_count(expected_map[i].src));
		assert_int_equal(pair_count(fx, expected_map[i].src, expected_map[i].dst,
		    MSG_PENDING), 0);
	}
	/* the large message went through the 7-byte chunks whole */
	assert_int_equal(fake_store_msg(fake_store_folder(fx->dst, "INBOX"), 9)->len, 5000);
}

static void test_full_copy(void **state)
{
	check_full_copy(*state);
}

static void test_full_copy_no_uidplus(void **state)
{
	check_full_copy(*state);
}

static void test_full_copy_batch1(void **state)
{
	struct fx *fx = *state;
	fx->o.batch_msgs = 1;
	check_full_copy(fx);
	/* one APPEND per message */
	assert_int_equal(fake_store_calls(fx->dst, FOP_APPEND), NCORPUS);
}

static void test_full_copy_small_byte_batches(void **state)
{
	struct fx *fx = *state;
	fx->o.batch_bytes = 100; /* most batches hold one message */
	check_full_copy(fx);
	assert_true(fake_store_calls(fx->dst, FOP_APPEND) >= NCORPUS - 4);
}

static void check_rerun_copies_nothing(struct fx *fx)
{
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, NCORPUS);
	char *before = account_dump(fx->dst, false);
	fake_store_reset_counters(fx->src);
	fake_store_reset_counters(fx->dst);
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, 0);
	assert_int_equal(fx->rep.bytes, 0);
	assert_int_equal(fx->rep.flags_set, 0);
	assert_int_equal(fx->rep.already, NCORPUS);
	assert_int_equal(fake_store_calls(fx->src, FOP_FETCH), 0);
	assert_int_equal(fake_store_calls(fx->dst, FOP_FETCH), 0);
	assert_int_equal(fake_store_bodies_fetched(fx->src), 0);
	assert_int_equal(fake_store_calls(fx->dst, FOP_APPEND), 0);
	assert_int_equal(fake_store_calls(fx->dst, FOP_CREATE), 0);
	assert_int_equal(fake_store_calls(fx->dst, FOP_SET_FLAGS), 0);
	char *after = account_dump(fx->dst, false);
	assert_string_equal(before, after);
	free(before);
	free(after);
}

static void test_rerun_copies_nothing(void **state)
{
	check_rerun_copies_nothing(*state);
}

static void test_rerun_copies_nothing_no_uidplus(void **state)
{
	check_rerun_copies_nothing(*state);
}

static void test_condstore_fast_path(void **state)
{
	struct fx *fx = *state;
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, NCORPUS);
	fake_store_reset_counters(fx->src);
	fake_store_reset_counters(fx->dst);
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, 0);
	assert_int_equal(fx->rep.already, NCORPUS);
	assert_int_equal(fake_store_calls(fx->src, FOP_SCAN), 0);
	assert_int_equal(fake_store_calls(fx->dst, FOP_SCAN), 0);
	assert_int_equal(fake_store_calls(fx->src, FOP_FETCH), 0);
	/* unchanged folders are settled by one STATUS a side, no SELECT */
	assert_int_equal(fake_store_calls(fx->src, FOP_SELECT), 0);
	assert_int_equal(fake_store_calls(fx->src, FOP_STATUS), NCOPIED_FOLDERS);
	assert_int_equal(fake_store_calls(fx->dst, FOP_STATUS), NCOPIED_FOLDERS);
	for (size_t i = 0; i < fx->rep.nfolders; i++)
		assert_true(fx->rep.folders[i].skipped_fast);

	/* one flag change and one new message: those folders only */
	struct fake_folder *sent = fake_store_folder(fx->src, "Sent");
	fake_store_msg_set_flags(fx->src, sent, 1, "\\Seen \\Flagged");
	struct fake_folder *work = fake_store_folder(fx->src, "Work");
	static const char nb[] = "From: boss@example.org\r\nMessage-ID: <w3@example.org>\r\n\r\nw3\r\n";
	fake_store_add_msg(fx->src, work, nb, strlen(nb), "\\Seen", 1500000200, 0);
	fake_store_reset_counters(fx->src);
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, 1);
	assert_int_equal(fx->rep.flags_set, 1);
	assert_int_equal(fake_store_calls(fx->src, FOP_SCAN), 2);
	assert_int_equal(fake_store_bodies_fetched(fx->src), 1);
	assert_true(folder_rep(fx, "INBOX")->skipped_fast);
	assert_false(folder_rep(fx, "Sent")->skipped_fast);
	assert_false(folder_rep(fx, "Work")->skipped_fast);
	assert_true(folder_rep(fx, "Work/Projects")->skipped_fast);
	assert_dest_matches(fx->src, fx->dst, false);
	assert_state_consistent(fx, fx->src, fx->dst);

	/* and quiet again */
	fake_store_reset_counters(fx->src);
	run_copy_ok(fx);
	assert_int_equal(fake_store_calls(fx->src, FOP_SCAN), 0);
	assert_int_equal(fx->rep.already, NCORPUS + 1);
}

/* Without CONDSTORE every run scans, but fetches no body. */
static void test_no_condstore_scans(void **state)
{
	struct fx *fx = *state;
	run_copy_ok(fx);
	fake_store_reset_counters(fx->src);
	run_copy_ok(fx);
	assert_int_equal(fake_store_calls(fx->src, FOP_SCAN), NCOPIED_FOLDERS);
	assert_int_equal(fake_store_bodies_fetched(fx->src), 0);
	for (size_t i = 0; i < fx->rep.nfolders; i++)
		assert_false(fx->rep.folders[i].skipped_fast);
}

static void check_flag_changes(struct fx *fx)
{
	run_copy_ok(fx);
	struct fake_folder *in = fake_store_folder(fx->src, "INBOX");
	struct fake_folder *sent = fake_store_folder(fx->src, "Sent");
	struct fake_folder *work = fake_store_folder(fx->src, "Work");
	fake_store_msg_set_flags(fx->src, in, 1, "\\Seen \\Flagged");          /* add system */
	fake_store_msg_set_flags(fx->src, in, 5, "\\Answered Work");           /* drop keywords */
	fake_store_msg_set_flags(fx->src, in, 2, "\\Seen \\Flagged");          /* no change */
	fake_store_msg_set_flags(fx->src, sent, 2, "\\Answered");              /* drop system */
	fake_store_msg_set_flags(fx->src, work, 2, "$Important NewKw \\Seen"); /* add keywords */
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, 0);
	assert_int_equal(fx->rep.flags_set, 4);
	assert_int_equal(folder_rep(fx, "INBOX")->flags_set, 2);
	assert_int_equal(folder_rep(fx, "Sent")->flags_set, 1);
	assert_int_equal(folder_rep(fx, "Work")->flags_set, 1);
	assert_dest_matches(fx->src, fx->dst, false);
	assert_state_consistent(fx, fx->src, fx->dst);
	/* the destination's copies, by their UIDs */
	struct fake_folder *din = fake_store_folder(fx->dst, "INBOX");
	char *f1 = flagset_format(&fake_store_msg(din, 2)->flags);
	char *f5 = flagset_format(&fake_store_msg(din, 6)->flags);
	assert_string_equal(f1, "\\Seen \\Flagged");
	assert_string_equal(f5, "\\Answered Work");
	free(f1);
	free(f5);
	fake_store_reset_counters(fx->dst);
	run_copy_ok(fx);
	assert_int_equal(fx->rep.flags_set, 0);
	assert_int_equal(fake_store_calls(fx->dst, FOP_SET_FLAGS), 0);
}

static void test_flag_changes_pushed(void **state)
{
	check_flag_changes(*state);
}

static void test_flag_changes_pushed_condstore(void **state)
{
	check_flag_changes(*state);
}

static void test_no_flag_sync_option(void **state)
{
	struct fx *fx = *state;
	run_copy_ok(fx);
	fake_store_msg_set_flags(fx->src, fake_store_folder(fx->src, "INBOX"), 1, "");
	fx->o.no_flag_sync = true;
	fake_store_reset_counters(fx->dst);
	run_copy_ok(fx);
	assert_int_equal(fx->rep.flags_set, 0);
	assert_int_equal(fake_store_calls(fx->dst, FOP_SET_FLAGS), 0);
	char *f = flagset_format(&fake_store_msg(fake_store_folder(fx->dst, "INBOX"), 2)->flags);
	assert_string_equal(f, "\\Seen");
	free(f);
}

static void test_no_new_keywords(void **state)
{
	struct fx *fx = *state;
	struct fake_folder *din = fake_store_folder(fx->dst, "INBOX");
	/* no \Draft, no new keywords; $Forwarded exists */
	fake_store_set_permflags(din, FL_ALL_SYS & ~FL_DRAFT, false, "$Forwarded");
	static const char db[] = "From: me@example.org\r\nMessage-ID: <d1@example.org>\r\n\r\nd\r\n";
	fake_store_add_msg(fx->src, fake_store_folder(fx->src, "INBOX"), db, strlen(db),
	    "\\Draft \\Seen", 1700000900, 0);
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, NCORPUS + 1);
	assert_int_equal(fx->rep.refused, 0);
	struct folder_report *fr = folder_rep(fx, "INBOX");
	assert_non_null(fr->dropped_keywords);
	assert_string_equal(fr->dropped_keywords, "$Label1 Work");
	assert_null(folder_rep(fx, "Sent")->dropped_keywords);
	char *f5 = flagset_format(&fake_store_msg(din, 6)->flags);
	assert_string_equal(f5, "\\Answered $Forwarded");
	free(f5);
	char *fd = flagset_format(&fake_store_msg(din, NINBOX + 2)->flags);
	assert_string_equal(fd, "\\Seen");
	free(fd);
	assert_dest_matches(fx->src, fx->dst, false);

	/* nothing to push again: the state keeps the source's flags */
	fake_store_reset_counters(fx->dst);
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, 0);
	assert_int_equal(fx->rep.flags_set, 0);
	assert_int_equal(fake_store_calls(fx->dst, FOP_SET_FLAGS), 0);
	assert_null(folder_rep(fx, "INBOX")->dropped_keywords);

	/* a new keyword at the source later: not sent, and said so */
	fake_store_msg_set_flags(fx->src, fake_store_folder(fx->src, "INBOX"), 1,
	    "\\Seen Later $Forwarded");
	run_copy_ok(fx);
	assert_int_equal(fx->rep.flags_set, 1);
	assert_string_equal(folder_rep(fx, "INBOX")->dropped_keywords, "Later");
	char *f1 = flagset_format(&fake_store_msg(din, 2)->flags);
	assert_string_equal(f1, "\\Seen $Forwarded");
	free(f1);
	assert_dest_matches(fx->src, fx->dst, false);
}

static void test_refused_messages(void **state)
{
	struct fx *fx = *state;
	fake_store_refuse(fx->dst, fake_refuse_containing, (void *)REFUSE_TOKEN, REFUSE_TEXT);
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, NCORPUS - 2);
	assert_int_equal(fx->rep.refused, 2);
	assert_int_equal(fx->rep.nrefusals, 2);
	/* in plan order: INBOX's tenth, then Work/Projects' second */
	assert_string_equal(fx->rep.refusals[0].folder, "INBOX");
	assert_int_equal(fx->rep.refusals[0].uid, 10);
	assert_int_equal(fx->rep.refusals[0].size, strlen(corpus[9].body));
	assert_string_equal(fx->rep.refusals[0].reason, REFUSE_TEXT);
	assert_string_equal(fx->rep.refusals[1].folder, "Work/Projects");
	assert_int_equal(fx->rep.refusals[1].uid, 2);
	assert_int_equal(fx->rep.refusals[1].size, strlen(corpus[17].body));
	assert_string_equal(fx->rep.refusals[1].reason, REFUSE_TEXT);
	assert_int_equal(folder_rep(fx, "INBOX")->refused, 1);
	assert_int_equal(folder_rep(fx, "Work/Projects")->refused, 1);
	assert_int_equal(fake_store_folder(fx->dst, "INBOX")->n, 1 + NINBOX - 1);
	assert_int_equal(fake_store_folder(fx->dst, "INBOX.Work.Projects")->n, 2);
	assert_int_equal(pair_count(fx, "INBOX", "INBOX", MSG_REFUSED), 1);
	assert_int_equal(pair_count(fx, "Work/Projects", "INBOX.Work.Projects", MSG_REFUSED), 1);
	assert_int_equal(pair_count(fx, "INBOX", "INBOX", MSG_SYNCED), NINBOX - 1);
	{
		struct msg_row r;
		struct fpair fp;
		assert_int_equal(state_pair_find(open_state(fx), "INBOX", "INBOX", &fp), 1);
		assert_int_equal(state_msg_by_a(open_state(fx), fp.id, 10, &r), 1);
		assert_int_equal(r.state, MSG_REFUSED);
		assert_string_equal(r.error, REFUSE_TEXT);
		msg_row_release(&r);
		fpair_release(&fp);
	}

	/* retried on the next run, refused again */
	fake_store_reset_counters(fx->dst);
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, 0);
	assert_int_equal(fx->rep.refused, 2);
	assert_int_equal(fx->rep.nrefusals, 2);
	assert_int_equal(fake_store_calls(fx->dst, FOP_APPEND), 2);
	assert_int_equal(fake_store_msgs_appended(fx->dst), 0);
	/* the other folders are complete: CONDSTORE skips them */
	assert_true(folder_rep(fx, "Sent")->skipped_fast);
	assert_false(folder_rep(fx, "INBOX")->skipped_fast);

	/* the filter is gone: copied now */
	fake_store_refuse(fx->dst, NULL, NULL, NULL);
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, 2);
	assert_int_equal(fx->rep.refused, 0);
	assert_int_equal(fx->rep.nrefusals, 0);
	assert_int_equal(pair_count(fx, "INBOX", "INBOX", MSG_REFUSED), 0);
	assert_int_equal(pair_count(fx, "INBOX", "INBOX", MSG_SYNCED), NINBOX);
	assert_dest_matches(fx->src, fx->dst, true);
	assert_state_consistent(fx, fx->src, fx->dst);
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, 0);
}

/*
 * The connection to the destination dies in the APPEND of INBOX's batch
 * after j of its messages; with lose, the server did them but the answers
 * were lost. The copier reconnects, finds what arrived and sends the rest.
 */
static void test_conn_dies_mid_append(void **state)
{
	(void)state;
	for (int uidplus = 0; uidplus < 2; uidplus++)
		for (int lose = 0; lose < 2; lose++)
			for (size_t j = 0; j <= NINBOX; j++) {
				struct fx *fx = fx_new(uidplus, false);
				connect_both(fx->src, fx->dst);
				struct fake_fault f = {FOP_APPEND, 1, j, FAULT_CONN_BAD, lose, false, false};
				fake_store_fault(fx->dst, &f);
				unsigned long long slept = g_slept_ns;
				run_copy_ok(fx);
				assert_int_equal(fake_store_faults_fired(fx->dst), 1);
				/* intents never sent: the copier waited for the
				 * server to settle (3 quiet polls, 0.5 s apart)
				 * before sending them again */
				if (j < NINBOX)
					assert_true(g_slept_ns - slept >= 1500000000ull);
				else
					assert_true(g_slept_ns == slept);
				/* one reconnect */
				assert_int_equal(fake_store_calls(fx->dst, FOP_CONNECT), 2);
				assert_dest_matches(fx->src, fx->dst, false);
				assert_state_consistent(fx, fx->src, fx->dst);
				/* what was confirmed before the failure counts as
				 * copied; what arrived unconfirmed is found again
				 * by resolution, which (as the copier stands) does
				 * not count it */
				if (!lose)
					assert_int_equal(fx->rep.copied, NCORPUS);
				else
					assert_int_equal(fx->rep.copied, NCORPUS - j);
				fake_store_reset_counters(fx->dst);
				run_copy_ok(fx);
				assert_int_equal(fx->rep.copied, 0);
				assert_int_equal(fake_store_msgs_appended(fx->dst), 0);
				void *st = fx;
				teardown(&st);
			}
}

/*
 * The connection dies at every operation in turn, on either side; each time
 * the copier reconnects that side and the result is exact.
 */
static void test_conn_dies_at_every_operation(void **state)
{
	(void)state;
	for (int uidplus = 0; uidplus < 2; uidplus++)
		for (int side = 0; side < 2; side++) {
			/* count the operations of a clean run */
			struct fx *fx = fx_new(uidplus, false);
			connect_both(fx->src, fx->dst);
			fx->o.batch_msgs = 4;
			struct fake_store *s0 = side ? fx->dst : fx->src;
			fake_store_reset_counters(s0);
			run_copy_ok(fx);
			unsigned ops = fake_store_calls(s0, FOP_ANY);
			void *st = fx;
			teardown(&st);
			assert_true(ops > 10);
			/* operation 1 is the LIST that makes the plan */
			for (unsigned k = 2; k <= ops; k++) {
				fx = fx_new(uidplus, false);
				connect_both(fx->src, fx->dst);
				fx->o.batch_msgs = 4;
				struct fake_store *s = side ? fx->dst : fx->src;
				struct fake_fault f = {FOP_ANY, k, 2, FAULT_CONN_BAD, false, false, false};
				fake_store_fault(s, &f);
				enum store_rc rc = run_copy(fx);
				if (rc != STORE_OK)
					fail_msg("%s op %u (uidplus %d): copy_run %d", side ? "destination" :
					    "source", k, uidplus, rc);
				assert_int_equal(fake_store_faults_fired(s), 1);
				assert_int_equal(fake_store_calls(s, FOP_CONNECT), 2);
				assert_dest_matches(fx->src, fx->dst, false);
				assert_state_consistent(fx, fx->src, fx->dst);
				st = fx;
				teardown(&st);
			}
		}
}

/* A destination that stays down: the run stops with CONN_BAD and says so. */
static void test_conn_stays_down(void **state)
{
	struct fx *fx = *state;
	struct fake_fault f = {FOP_APPEND, 1, 0, FAULT_CONN_BAD, false, true, false};
	struct fake_fault c = {FOP_CONNECT, 1, 0, FAULT_CONN_BAD, false, true, false};
	fake_store_fault(fx->dst, &f);
	fake_store_fault(fx->dst, &c);
	fx->o.max_retries = 2;
	enum store_rc rc = run_copy(fx);
	assert_int_equal(rc, STORE_CONN_BAD);
	assert_int_equal(fx->rep.failed_folders, 1);
	assert_true(fx->rep.folders[0].failed);
	assert_non_null(fx->rep.folders[0].error);
	assert_non_null(strstr(fx->rep.folders[0].error, "injected"));
	assert_int_equal(fx->rep.copied, 0);
	assert_int_equal(fake_store_folder(fx->dst, "INBOX")->n, 1);
	/* later, with the server back, everything arrives once */
	fake_store_clear_faults(fx->dst);
	assert_int_equal(store_connect(fake_store_base(fx->dst)), STORE_OK);
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, NCORPUS);
	assert_dest_matches(fx->src, fx->dst, false);
	assert_state_consistent(fx, fx->src, fx->dst);
}

static void check_src_uidvalidity_change(struct fx *fx)
{
	run_copy_ok(fx);
	struct fake_folder *in = fake_store_folder(fx->src, "INBOX");
	fake_store_set_uidvalidity(fx->src, in, 5000, 100);
	static const char nb[] = "From: new@example.org\r\nMessage-ID: <n1@example.org>\r\n\r\nnew\r\n";
	fake_store_add_msg(fx->src, in, nb, strlen(nb), "\\Seen", 1700001000, 0);
	fake_store_reset_counters(fx->dst);
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, 1);
	assert_int_equal(fake_store_msgs_appended(fx->dst), 1);
	assert_int_equal(folder_rep(fx, "INBOX")->relinked, NINBOX);
	assert_int_equal(fake_store_folder(fx->dst, "INBOX")->n, 1 + NINBOX + 1);
	assert_dest_matches(fx->src, fx->dst, false);
	assert_state_consistent(fx, fx->src, fx->dst);
	/* settled */
	fake_store_reset_counters(fx->src);
	fake_store_reset_counters(fx->dst);
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, 0);
	assert_int_equal(fake_store_bodies_fetched(fx->src), 0);
	assert_int_equal(fake_store_msgs_appended(fx->dst), 0);
	/* and flags still reach the right copies */
	fake_store_msg_set_flags(fx->src, in, 101, "\\Seen \\Answered");
	run_copy_ok(fx);
	assert_int_equal(fx->rep.flags_set, 1);
	assert_dest_matches(fx->src, fx->dst, false);
}

static void test_src_uidvalidity_change(void **state)
{
	check_src_uidvalidity_change(*state);
}

static void test_src_uidvalidity_change_condstore(void **state)
{
	check_src_uidvalidity_change(*state);
}

static void check_dst_uidvalidity_change(struct fx *fx)
{
	run_copy_ok(fx);
	struct fake_folder *din = fake_store_folder(fx->dst, "INBOX");
	fake_store_msg_remove(fx->dst, din, 4);  /* no Message-ID */
	fake_store_msg_remove(fx->dst, din, 7);  /* <m6@example.org> */
	fake_store_set_uidvalidity(fx->dst, din, 7000, 1);
	fake_store_reset_counters(fx->dst);
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, 2);
	assert_int_equal(fake_store_msgs_appended(fx->dst), 2);
	assert_int_equal(din->n, 1 + NINBOX);
	assert_dest_matches(fx->src, fx->dst, true);
	assert_state_consistent(fx, fx->src, fx->dst);
	/* settled, and flag changes go to the re-paired copies */
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, 0);
	struct fake_folder *in = fake_store_folder(fx->src, "INBOX");
	fake_store_msg_set_flags(fx->src, in, 2, "\\Answered");
	fake_store_msg_set_flags(fx->src, in, 9, "\\Seen \\Flagged");
	run_copy_ok(fx);
	assert_int_equal(fx->rep.flags_set, 2);
	assert_dest_matches(fx->src, fx->dst, true);
	assert_state_consistent(fx, fx->src, fx->dst);
}

static void test_dst_uidvalidity_change(void **state)
{
	check_dst_uidvalidity_change(*state);
}

static void test_dst_uidvalidity_change_no_uidplus(void **state)
{
	check_dst_uidvalidity_change(*state);
}

/*
 * A server that stores bare LF as CRLF, without UIDPLUS: appended messages
 * are found again by Message-ID alone; one without a Message-ID cannot be
 * found, and is recorded as copied rather than sent twice.
 */
static void test_server_rewrites_bare_lf(void **state)
{
	struct fx *fx = *state;
	fake_store_set_crlf(fx->dst, true);
	static const char lf[] = "From: x@example.org\nSubject: lf, no id\n\nbare\n";
	uint32_t extra = fake_store_add_msg(fx->src, fake_store_folder(fx->src, "INBOX"), lf,
	    strlen(lf), "\\Seen", 1700002000, 0);
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, NCORPUS + 1);
	struct fake_folder *din = fake_store_folder(fx->dst, "INBOX");
	assert_int_equal(din->n, 1 + NINBOX + 1);
	/* the corpus's LF message (source UID 7) is UID 8 there, rewritten */
	struct fake_msg *m7 = fake_store_msg(din, 8);
	assert_int_equal(m7->len, strlen(corpus[6].body) + 6);
	assert_non_null(strstr(m7->body, "Subject: lf\r\n\r\nline1\r\n"));
	struct state *st = open_state(fx);
	struct fpair fp;
	assert_int_equal(state_pair_find(st, "INBOX", "INBOX", &fp), 1);
	struct msg_row r;
	assert_int_equal(state_msg_by_a(st, fp.id, 7, &r), 1);
	assert_int_equal(r.state, MSG_SYNCED);
	assert_int_equal(r.b_uid, 8);
	msg_row_release(&r);
	assert_int_equal(state_msg_by_a(st, fp.id, extra, &r), 1);
	assert_int_equal(r.state, MSG_SYNCED);
	assert_int_equal(r.b_uid, 0);
	msg_row_release(&r);
	fpair_release(&fp);
	fake_store_reset_counters(fx->dst);
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, 0);
	assert_int_equal(fake_store_msgs_appended(fx->dst), 0);
	assert_int_equal(din->n, 1 + NINBOX + 1);
}

/* A source folder that cannot be selected fails alone, with its error. */
static void test_source_folder_unusable(void **state)
{
	struct fx *fx = *state;
	fake_store_folder(fx->src, "Work")->broken = "mailbox is corrupt";
	enum store_rc rc = run_copy(fx);
	assert_int_equal(rc, STORE_BOX_BAD);
	assert_int_equal(fx->rep.failed_folders, 1);
	struct folder_report *fr = folder_rep(fx, "Work");
	assert_true(fr->failed);
	assert_non_null(fr->error);
	if (!strstr(fr->error, "mailbox is corrupt"))
		fail_msg("the folder's error says '%s', not the source's words", fr->error);
	assert_int_equal(fx->rep.copied, NCORPUS - corpus_count("Work"));
	assert_false(folder_rep(fx, "Work/Projects")->failed);
	assert_int_equal(folder_rep(fx, "Work/Projects")->copied, corpus_count("Work/Projects"));
	/* repaired: the rest arrives */
	fake_store_folder(fx->src, "Work")->broken = NULL;
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, corpus_count("Work"));
	assert_dest_matches(fx->src, fx->dst, false);
	assert_state_consistent(fx, fx->src, fx->dst);
}

/* A stop request (SIGINT) before the run: nothing is done, and says so. */
static void test_stop_requested(void **state)
{
	struct fx *fx = *state;
	copier_stop = 1;
	enum store_rc rc = run_copy(fx);
	copier_stop = 0;
	assert_int_equal(rc, STORE_OK);
	assert_true(fx->rep.interrupted);
	assert_int_equal(fx->rep.copied, 0);
	assert_int_equal(fake_store_calls(fx->dst, FOP_APPEND), 0);
	assert_int_equal(fake_store_folder(fx->dst, "INBOX")->n, 1);
	run_copy_ok(fx);
	assert_int_equal(fx->rep.copied, NCORPUS);
	assert_dest_matches(fx->src, fx->dst, false);
}

/* ------------------------------------------------------------------ */
/* the fake store itself: the tests above are only as good as it is */

struct sink_rec {
	unsigned chunks, done;
	struct buf bytes;
	uint32_t last_uid;
};

static int rec_data(void *ctx, const char *bytes, size_t len)
{
	struct sink_rec *r = ctx;
	r->chunks++;
	assert_true(len <= 7);
	buf_add(&r->bytes, bytes, len);
	return 0;
}

static int rec_done(void *ctx, const struct msg_info *mi)
{
	struct sink_rec *r = ctx;
	r->done++;
	r->last_uid = mi->uid;
	return 0;
}

struct scan_rec {
	uint32_t uids[8];
	char *msgids[8];
	size_t n;
};

static int rec_scan(void *ctx, const struct msg_info *mi)
{
	struct scan_rec *r = ctx;
	assert_true(r->n < 8);
	r->msgids[r->n] = mi->msgid ? xstrdup(mi->msgid) : NULL;
	r->uids[r->n++] = mi->uid;
	return 0;
}

static void scan_rec_free(struct scan_rec *r)
{
	for (size_t i = 0; i < r->n; i++)
		free(r->msgids[i]);
	memset(r, 0, sizeof *r);
}

static void test_fake_store_behaves(void **state)
{
	(void)state;
	struct fake_store *fs = fake_store_new("t", '/', "");
	struct store *s = fake_store_base(fs);
	struct fake_folder *f = fake_store_add_folder(fs, "INBOX", 0);
	fake_store_add_msg(fs, f, M1, strlen(M1), "\\Seen", 1, 0);
	static const char b2[] = "Subject: x\r\n\r\n12345678901234567890";
	fake_store_add_msg(fs, f, b2, strlen(b2), NULL, 2, 0);
	struct box_status st;
	memset(&st, 0, sizeof st);
	/* nothing works before connect */
	assert_int_equal(s->ops->select(s, "INBOX", true, &st), STORE_CONN_BAD);
	assert_int_equal(store_connect(s), STORE_OK);
	assert_int_equal(s->ops->select(s, "INBOX", true, &st), STORE_OK);
	assert_int_equal(st.uidvalidity, 1000);
	assert_int_equal(st.uidnext, 3);
	assert_int_equal(st.exists, 2);
	assert_int_equal(st.highestmodseq, 0);
	assert_true(st.have_permflags && st.perm_any_keyword);
	assert_int_equal(s->ops->select(s, "Nope", true, &st), STORE_BOX_BAD);
	assert_int_equal(s->ops->select(s, "INBOX", false, &st), STORE_OK);

	/* scan: from_uid, Message-ID, CHANGEDSINCE only with CONDSTORE */
	struct scan_rec sr;
	memset(&sr, 0, sizeof sr);
	assert_int_equal(s->ops->scan(s, 2, 0, SCAN_SIZE, rec_scan, &sr), STORE_OK);
	assert_int_equal(sr.n, 1);
	assert_int_equal(sr.uids[0], 2);
	assert_null(sr.msgids[0]);
	scan_rec_free(&sr);
	assert_int_equal(s->ops->scan(s, 0, 0, SCAN_MSGID, rec_scan, &sr), STORE_OK);
	assert_int_equal(sr.n, 2);
	assert_string_equal(sr.msgids[0], "m1@example.org");
	assert_null(sr.msgids[1]);
	scan_rec_free(&sr);
	assert_int_equal(s->ops->scan(s, 1, 5, SCAN_SIZE, rec_scan, &sr), STORE_BOX_BAD);
	fake_store_set_caps(fs, true, true);
	assert_int_equal(s->ops->select(s, "INBOX", false, &st), STORE_OK);
	assert_int_equal(st.highestmodseq, 3);
	fake_store_msg_set_flags(fs, f, 1, "\\Seen \\Flagged");
	assert_int_equal(s->ops->scan(s, 1, 3, SCAN_FLAGS, rec_scan, &sr), STORE_OK);
	assert_int_equal(sr.n, 1);
	assert_int_equal(sr.uids[0], 1);
	scan_rec_free(&sr);

	/* fetch: 7-byte chunks, missing UIDs skipped */
	struct sink_rec rec;
	memset(&rec, 0, sizeof rec);
	struct body_sink sink = {rec_data, rec_done, &rec};
	uint32_t want[] = {2, 9};
	assert_int_equal(s->ops->fetch(s, want, 2, &sink), STORE_OK);
	assert_int_equal(rec.done, 1);
	assert_int_equal(rec.last_uid, 2);
	assert_int_equal(rec.chunks, (strlen(b2) + 6) / 7);
	assert_int_equal(rec.bytes.len, strlen(b2));
	assert_memory_equal(rec.bytes.s, b2, strlen(b2));
	buf_release(&rec.bytes);
	assert_int_equal(fake_store_bodies_fetched(fs), 1);

	/* append: APPENDUID only with UIDPLUS; flags it does not keep refused */
	int fd = open("/tmp", O_TMPFILE | O_RDWR, 0600);
	if (fd < 0) {
		char tmpl[] = "/tmp/postino-fake-XXXXXX";
		fd = mkstemp(tmpl);
		unlink(tmpl);
	}
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "abcdef", 6), 6);
	struct flagset kw = FLAGSET_INIT;
	flagset_parse(&kw, "$Junk");
	struct append_item it[2] = {
		{.fd = fd, .off = 0, .len = 3, .flags = NULL, .idate = 77, .tzoff = 60},
		{.fd = fd, .off = 3, .len = 3, .flags = &kw, .idate = IDATE_NONE},
	};
	uint32_t uv = 0;
	assert_int_equal(s->ops->append(s, "INBOX", it, 2, &uv), STORE_OK);
	assert_int_equal(uv, 1000);
	assert_int_equal(it[0].rc, STORE_OK);
	assert_int_equal(it[0].uid, 3);
	assert_int_equal(it[1].uid, 4);
	assert_memory_equal(fake_store_msg(f, 3)->body, "abc", 3);
	assert_int_equal(fake_store_msg(f, 3)->idate, 77);
	assert_int_equal(fake_store_msg(f, 3)->tzoff, 60);
	fake_store_set_permflags(f, FL_ALL_SYS, false, NULL);
	fake_store_set_caps(fs, false, true);
	assert_int_equal(s->ops->append(s, "INBOX", it, 2, &uv), STORE_OK);
	assert_int_equal(uv, 0);
	assert_int_equal(it[0].rc, STORE_OK);
	assert_int_equal(it[0].uid, 0);
	assert_int_equal(it[1].rc, STORE_MSG_BAD);
	assert_non_null(strstr(it[1].error, "[CANNOT]"));
	free(it[1].error);
	assert_int_equal(fake_store_msg(f, 5)->len, 3);
	assert_null(fake_store_msg(f, 6));
	assert_int_equal(s->ops->append(s, "Nope", it, 1, &uv), STORE_BOX_BAD);

	/* faults: by kind, the connection stays down until connect */
	struct fake_fault ff = {FOP_FETCH, 2, 0, FAULT_CONN_BAD, false, false, false};
	fake_store_fault(fs, &ff);
	assert_int_equal(s->ops->fetch(s, want, 1, &sink), STORE_OK);
	assert_int_equal(s->ops->fetch(s, want, 1, &sink), STORE_CONN_BAD);
	assert_int_equal(s->ops->scan(s, 1, 0, 0, rec_scan, &sr), STORE_CONN_BAD);
	assert_int_equal(fake_store_faults_fired(fs), 1);
	assert_int_equal(store_reconnect(s, 1), STORE_OK);
	/* a new connection has nothing selected */
	assert_int_equal(s->ops->scan(s, 1, 0, 0, rec_scan, &sr), STORE_BOX_BAD);
	assert_int_equal(s->ops->fetch(s, want, 1, &sink), STORE_BOX_BAD);
	/* across kinds; a transient one is gone after a connect */
	struct fake_fault any = {FOP_ANY, 3, 0, FAULT_CONN_BAD, false, false, false};
	struct fake_fault tr = {FOP_STATUS, 1, 0, FAULT_CONN_BAD, false, true, true};
	fake_store_fault(fs, &any);
	assert_int_equal(s->ops->select(s, "INBOX", false, &st), STORE_OK);
	assert_int_equal(s->ops->select(s, "INBOX", false, &st), STORE_OK);
	assert_int_equal(s->ops->select(s, "INBOX", false, &st), STORE_CONN_BAD);
	fake_store_fault(fs, &tr);
	assert_int_equal(store_connect(s), STORE_OK);
	assert_int_equal(s->ops->status(s, "INBOX", &st), STORE_OK);
	assert_int_equal(fake_store_faults_fired(fs), 2);
	/* a partial APPEND: the first item done, the rest unknown */
	struct fake_fault pa = {FOP_APPEND, 1, 1, FAULT_CONN_BAD, false, false, false};
	fake_store_fault(fs, &pa);
	fake_store_set_permflags(f, FL_ALL_SYS, true, NULL);
	size_t before = f->n;
	assert_int_equal(s->ops->append(s, "INBOX", it, 2, &uv), STORE_CONN_BAD);
	assert_int_equal(it[0].rc, STORE_OK);
	assert_int_equal(it[1].rc, STORE_CONN_BAD);
	assert_int_equal(f->n, before + 1);
	assert_int_equal(store_connect(s), STORE_OK);
	/* refusals */
	fake_store_refuse(fs, fake_refuse_containing, (void *)"def", "no def");
	assert_int_equal(s->ops->append(s, "INBOX", it, 2, &uv), STORE_OK);
	assert_int_equal(it[0].rc, STORE_OK);
	assert_int_equal(it[1].rc, STORE_MSG_BAD);
	assert_string_equal(it[1].error, "no def");
	free(it[1].error);
	close(fd);
	flagset_clear(&kw);
	box_status_clear(&st);
	/* a new UIDVALIDITY renumbers */
	uint32_t last = f->msgs[f->n - 1].uid;
	fake_store_set_uidvalidity(fs, f, 4242, 100);
	assert_int_equal(f->uidvalidity, 4242);
	assert_int_equal(f->msgs[0].uid, 100);
	assert_int_equal(f->uidnext, 100 + f->n);
	assert_true(f->msgs[f->n - 1].uid != last);
	buf_release(&rec.bytes);
	store_free(&s);
}

static void test_fake_store_save_load(void **state)
{
	(void)state;
	struct fx *fx = fx_new(false, true);
	struct fake_folder *in = fake_store_folder(fx->dst, "INBOX");
	fake_store_set_permflags(in, FL_SEEN | FL_FLAGGED, false, "$Forwarded Work");
	in->uidnext = 77;
	assert_int_equal(fake_store_save(fx->src, fx->src_path), 0);
	assert_int_equal(fake_store_save(fx->dst, fx->dst_path), 0);
	struct fake_store *src = fake_store_load(fx->src_path, "source");
	struct fake_store *dst = fake_store_load(fx->dst_path, "destination");
	assert_non_null(src);
	assert_non_null(dst);
	char *a = account_dump(fx->src, false), *b = account_dump(src, false);
	assert_string_equal(a, b);
	assert_true(strstr(a, "== Work/Projects (3)") != NULL);
	free(a);
	free(b);
	a = account_dump(fx->dst, false);
	b = account_dump(dst, false);
	assert_string_equal(a, b);
	free(a);
	free(b);
	struct fake_folder *in2 = fake_store_folder(dst, "INBOX");
	assert_int_equal(in2->uidnext, 77);
	assert_int_equal(in2->uidvalidity, in->uidvalidity);
	assert_int_equal(in2->permflags, FL_SEEN | FL_FLAGGED);
	assert_false(in2->perm_any_keyword);
	assert_true(flagset_has_kw(&in2->perm_keywords, "work"));
	assert_int_equal(fake_store_folder(src, "Lists")->attrs, FA_NOSELECT);
	assert_string_equal(fake_store_base(dst)->ns.prefix, "INBOX.");
	assert_false(fake_store_base(dst)->caps.uidplus);
	assert_true(fake_store_base(dst)->caps.condstore);
	/* the large message, byte for byte */
	size_t len;
	const char *big = large_body(&len);
	struct fake_msg *m = fake_store_msg(fake_store_folder(src, "INBOX"), 8);
	assert_int_equal(m->len, len);
	assert_memory_equal(m->body, big, len);
	/* a damaged file is refused */
	FILE *f = fopen(fx->dst_path, "r+");
	assert_non_null(f);
	fseek(f, 30, SEEK_SET);
	fputs("garbage garbage", f);
	fclose(f);
	assert_null(fake_store_load(fx->dst_path, "x"));
	struct store *s1 = fake_store_base(src), *s2 = fake_store_base(dst);
	store_free(&s1);
	store_free(&s2);
	void *st = fx;
	teardown(&st);
}

int main(void)
{
	if (!getenv("POSTINO_TEST_VERBOSE"))
		log_set_level(LOG_ERROR);
	const struct CMUnitTest tests[] = {
		/* forked crash tests first: see the top of this file */
		cmocka_unit_test(test_interrupt_every_step_uidplus_batch1),
		cmocka_unit_test(test_interrupt_every_step_uidplus_batch4),
		cmocka_unit_test(test_interrupt_every_step_no_uidplus_batch1),
		cmocka_unit_test(test_interrupt_every_step_no_uidplus_batch4),
		cmocka_unit_test(test_interrupt_repeatedly),
		cmocka_unit_test(test_interrupt_mid_append),
		cmocka_unit_test(test_interrupt_dest_uidvalidity_repair),
		cmocka_unit_test(test_interrupt_then_dest_renumbered),
		/* in-process */
		cmocka_unit_test(test_fake_store_behaves),
		cmocka_unit_test(test_fake_store_save_load),
		cmocka_unit_test_setup_teardown(test_full_copy, setup_plain, teardown),
		cmocka_unit_test_setup_teardown(test_full_copy_no_uidplus, setup_no_uidplus, teardown),
		cmocka_unit_test_setup_teardown(test_full_copy_batch1, setup_plain, teardown),
		cmocka_unit_test_setup_teardown(test_full_copy_small_byte_batches, setup_no_uidplus,
		    teardown),
		cmocka_unit_test_setup_teardown(test_rerun_copies_nothing, setup_plain, teardown),
		cmocka_unit_test_setup_teardown(test_rerun_copies_nothing_no_uidplus, setup_no_uidplus,
		    teardown),
		cmocka_unit_test_setup_teardown(test_condstore_fast_path, setup_condstore, teardown),
		cmocka_unit_test_setup_teardown(test_no_condstore_scans, setup_plain, teardown),
		cmocka_unit_test_setup_teardown(test_flag_changes_pushed, setup_plain, teardown),
		cmocka_unit_test_setup_teardown(test_flag_changes_pushed_condstore, setup_condstore,
		    teardown),
		cmocka_unit_test_setup_teardown(test_no_flag_sync_option, setup_plain, teardown),
		cmocka_unit_test_setup_teardown(test_no_new_keywords, setup_plain, teardown),
		cmocka_unit_test_setup_teardown(test_refused_messages, setup_condstore, teardown),
		cmocka_unit_test(test_conn_dies_mid_append),
		cmocka_unit_test(test_conn_dies_at_every_operation),
		cmocka_unit_test_setup_teardown(test_conn_stays_down, setup_plain, teardown),
		cmocka_unit_test_setup_teardown(test_src_uidvalidity_change, setup_plain, teardown),
		cmocka_unit_test_setup_teardown(test_src_uidvalidity_change_condstore, setup_condstore,
		    teardown),
		cmocka_unit_test_setup_teardown(test_dst_uidvalidity_change, setup_plain, teardown),
		cmocka_unit_test_setup_teardown(test_dst_uidvalidity_change_no_uidplus,
		    setup_no_uidplus, teardown),
		cmocka_unit_test_setup_teardown(test_server_rewrites_bare_lf, setup_no_uidplus,
		    teardown),
		cmocka_unit_test_setup_teardown(test_source_folder_unusable, setup_plain, teardown),
		cmocka_unit_test_setup_teardown(test_stop_requested, setup_plain, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
