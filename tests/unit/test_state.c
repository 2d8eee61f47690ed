/*
 * test_state.c — the state DB (src/state.c): opening, locking, file modes,
 * migrations, and every accessor of state.h, against real SQLite files in
 * a temporary directory per test.
 *
 * Where the API cannot show a fact (user_version, run rows, cascades) the
 * tests look with a second, raw SQLite connection.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "state.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct fx {
	char dir[64];
	char *path; /* dir/state.db */
};

static int rm_entry(const char *p, const struct stat *sb, int type, struct FTW *ftw)
{
	(void)sb;
	(void)type;
	(void)ftw;
	return remove(p);
}

static int setup(void **state)
{
	struct fx *fx = xcalloc(1, sizeof(*fx));

	strcpy(fx->dir, "/tmp/postino-test-state-XXXXXX");
	if (!mkdtemp(fx->dir)) {
		free(fx);
		return -1;
	}
	fx->path = xasprintf("%s/state.db", fx->dir);
	*state = fx;
	return 0;
}

static int teardown(void **state)
{
	struct fx *fx = *state;

	nftw(fx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(fx->path);
	free(fx);
	return 0;
}

static struct state *open_ok(const char *path, unsigned flags)
{
	struct state *st = NULL;
	char *err = NULL;
	enum state_open_rc rc = state_open(&st, path, flags, &err);

	if (rc != STATE_OPEN_OK)
		fail_msg("state_open(%s): %d %s", path, rc, err ? err : "(no message)");
	assert_null(err);
	assert_non_null(st);
	return st;
}

/* Opens expecting failure; returns the message (caller frees). */
static char *open_fails(const char *path, unsigned flags, enum state_open_rc want)
{
	struct state *st = (struct state *)&st; /* must be reset to NULL */
	char *err = NULL;

	assert_int_equal(state_open(&st, path, flags, &err), want);
	assert_null(st);
	assert_non_null(err);
	assert_null(strchr(err, '\n'));
	return err;
}

static void assert_contains(const char *hay, const char *needle)
{
	if (!strstr(hay, needle))
		fail_msg("'%s' does not contain '%s'", hay, needle);
}

/* ---- raw SQLite access, for what the API does not show ---- */

static void raw_exec(const char *path, const char *sql)
{
	sqlite3 *db = NULL;
	char *emsg = NULL;

	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	sqlite3_busy_timeout(db, 5000);
	if (sqlite3_exec(db, sql, NULL, NULL, &emsg) != SQLITE_OK)
		fail_msg("%s: %s", sql, emsg);
	sqlite3_close(db);
}

static int64_t raw_int(const char *path, const char *sql)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *s = NULL;
	int64_t v;

	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(s), SQLITE_ROW);
	v = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	sqlite3_close(db);
	return v;
}

static int file_mode(const char *path)
{
	struct stat sb;

	if (stat(path, &sb) < 0)
		fail_msg("stat(%s): %s", path, strerror(errno));
	return (int)(sb.st_mode & 07777);
}

static bool exists(const char *path)
{
	struct stat sb;
	return stat(path, &sb) == 0;
}

static int64_t new_pair(struct state *st, const char *a, const char *b)
{
	struct fpair fp;
	int64_t id;

	assert_int_equal(state_pair_get(st, a, b, &fp), 0);
	id = fp.id;
	fpair_release(&fp);
	return id;
}

static int64_t add_msg(struct state *st, int64_t pair, uint32_t a_uid, enum msg_state ms)
{
	struct msg_row r = { 0 };

	r.pair = pair;
	r.a_uid = a_uid;
	r.state = ms;
	r.size = 100 + a_uid;
	if (state_msg_insert(st, &r) < 0)
		fail_msg("insert: %s", state_error(st));
	assert_true(r.id > 0);
	return r.id;
}

/* ---- opening ---- */

static void test_create_migrates(void **state)
{
	struct fx *fx = *state;
	struct state *st = open_ok(fx->path, 0);

	assert_true(state_migrations_count >= 1);
	assert_int_equal(state_schema_version(st), state_migrations_count);
	assert_string_equal(state_path(st), fx->path);
	assert_int_equal(state_integrity_check(st), 0);
	assert_int_equal(raw_int(fx->path, "PRAGMA user_version"), state_migrations_count);
	assert_int_equal(raw_int(fx->path, "SELECT count(*) FROM sqlite_schema "
	    "WHERE type = 'table' AND name IN ('meta', 'account', 'folder_pair', "
	    "'msg', 'run')"), 5);
	/* WAL is persistent in the file: a raw reader sees it too. */
	assert_int_equal(raw_int(fx->path, "SELECT journal_mode = 'wal' "
	    "FROM pragma_journal_mode"), 1);
	state_close(&st);
	assert_null(st);
	state_close(&st); /* closing NULL is harmless */
}

static void test_reopen_idempotent(void **state)
{
	struct fx *fx = *state;
	struct state *st = open_ok(fx->path, 0);
	int64_t nschema;
	char *v = NULL;

	assert_int_equal(state_meta_set(st, "job", "one"), 0);
	state_close(&st);
	nschema = raw_int(fx->path, "SELECT count(*) FROM sqlite_schema");
	assert_true(nschema >= 10);

	for (int i = 0; i < 2; i++) {
		st = open_ok(fx->path, 0);
		assert_int_equal(state_schema_version(st), state_migrations_count);
		assert_int_equal(state_meta_get(st, "job", &v), 1);
		assert_string_equal(v, "one");
		free(v);
		state_close(&st);
		assert_int_equal(raw_int(fx->path, "SELECT count(*) FROM sqlite_schema"),
		    nschema);
	}
}

static void test_newer_schema_refused(void **state)
{
	struct fx *fx = *state;
	struct state *st = open_ok(fx->path, 0);
	char sql[64], want[160];
	char *err;

	state_close(&st);
	snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", state_migrations_count + 5);
	raw_exec(fx->path, sql);

	snprintf(want, sizeof(want), "state '%s' has schema version %d, newer than "
	    "this postino (%d): upgrade postino", fx->path, state_migrations_count + 5,
	    state_migrations_count);
	err = open_fails(fx->path, 0, STATE_OPEN_ERROR);
	assert_string_equal(err, want);
	free(err);
	err = open_fails(fx->path, STATE_RDONLY, STATE_OPEN_ERROR);
	assert_string_equal(err, want);
	free(err);
	/* Refusing must not have touched it. */
	assert_int_equal(raw_int(fx->path, "PRAGMA user_version"), state_migrations_count + 5);
}

static void test_not_a_database(void **state)
{
	struct fx *fx = *state;
	char *other = xasprintf("%s/other.db", fx->dir);
	char *err;
	FILE *f;

	f = fopen(fx->path, "w");
	assert_non_null(f);
	for (int i = 0; i < 100; i++)
		fputs("this is a mailbox, not a database at all\n", f);
	fclose(f);

	err = open_fails(fx->path, 0, STATE_OPEN_ERROR);
	assert_contains(err, fx->path);
	assert_contains(err, "is not a postino state database");
	free(err);
	err = open_fails(fx->path, STATE_RDONLY, STATE_OPEN_ERROR);
	assert_contains(err, "is not a postino state database");
	free(err);
	/* Nothing was written into the user's file. */
	f = fopen(fx->path, "r");
	assert_non_null(f);
	char line[64];
	assert_non_null(fgets(line, sizeof(line), f));
	assert_string_equal(line, "this is a mailbox, not a database at all\n");
	fclose(f);

	/* A SQLite database of some other program is not ours either. */
	sqlite3 *db;
	assert_int_equal(sqlite3_open(other, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "CREATE TABLE songs (t TEXT)", NULL, NULL, NULL),
	    SQLITE_OK);
	sqlite3_close(db);
	err = open_fails(other, 0, STATE_OPEN_ERROR);
	assert_contains(err, other);
	assert_contains(err, "is not a postino state database");
	free(err);
	assert_int_equal(raw_int(other, "SELECT count(*) FROM sqlite_schema"), 1);
	free(other);
}

static void test_lock(void **state)
{
	struct fx *fx = *state;
	struct state *st = open_ok(fx->path, 0);
	struct state *st2;
	char want[256];
	char *err;

	snprintf(want, sizeof(want), "state '%s' is in use by another postino run (pid %ld)",
	    fx->path, (long)getpid());
	err = open_fails(fx->path, 0, STATE_OPEN_LOCKED);
	assert_string_equal(err, want);
	free(err);

	/* Workers of the holder and readers do not take the lock. */
	st2 = open_ok(fx->path, STATE_NOLOCK);
	assert_int_equal(state_meta_set(st2, "worker", "yes"), 0);
	state_close(&st2);
	st2 = open_ok(fx->path, STATE_RDONLY);
	state_close(&st2);

	/* Still held: the second handles did not drop it. */
	err = open_fails(fx->path, 0, STATE_OPEN_LOCKED);
	free(err);

	state_close(&st);
	st = open_ok(fx->path, 0);
	state_close(&st);
}

static void test_lock_released_on_close(void **state)
{
	struct fx *fx = *state;
	char *lock = xasprintf("%s.lock", fx->path);
	struct state *st;

	for (int i = 0; i < 3; i++) {
		st = open_ok(fx->path, 0);
		state_close(&st);
	}
	/* The lock file stays (unlinking it would race), empty. */
	assert_true(exists(lock));
	struct stat sb;
	assert_int_equal(stat(lock, &sb), 0);
	assert_int_equal(sb.st_size, 0);
	free(lock);
}

static void test_rdonly_missing(void **state)
{
	struct fx *fx = *state;
	char *sub = xasprintf("%s/sub", fx->dir);
	char *path = xasprintf("%s/state.db", sub);
	char *want = xasprintf("no state at '%s'", path);
	char *err;

	err = open_fails(path, STATE_RDONLY, STATE_OPEN_ERROR);
	assert_string_equal(err, want);
	free(err);
	err = open_fails(fx->path, STATE_RDONLY, STATE_OPEN_ERROR);
	assert_contains(err, "no state at");
	free(err);
	/* Reading created nothing. */
	assert_false(exists(sub));
	assert_false(exists(fx->path));

	/* An empty file is no state either (a reader does not migrate). */
	FILE *f = fopen(fx->path, "w");
	assert_non_null(f);
	fclose(f);
	err = open_fails(fx->path, STATE_RDONLY, STATE_OPEN_ERROR);
	free(want);
	want = xasprintf("no state at '%s' (empty database)", fx->path);
	assert_string_equal(err, want);
	free(err);
	free(sub);
	free(path);
	free(want);
}

static void test_rdonly_reads(void **state)
{
	struct fx *fx = *state;
	struct state *st = open_ok(fx->path, 0);
	struct fpair fp;
	struct msg_row r;
	int64_t pair;

	pair = new_pair(st, "INBOX", "INBOX");
	add_msg(st, pair, 7, MSG_SYNCED);
	state_close(&st);

	st = open_ok(fx->path, STATE_RDONLY);
	assert_int_equal(state_schema_version(st), state_migrations_count);
	assert_int_equal(state_pair_find(st, "INBOX", "INBOX", &fp), 1);
	assert_int_equal(fp.id, pair);
	fpair_release(&fp);
	assert_int_equal(state_msg_by_a(st, pair, 7, &r), 1);
	assert_int_equal(r.size, 107);
	msg_row_release(&r);
	assert_int_equal(state_begin(st), 0);
	assert_int_equal(state_commit(st), 0);
	assert_int_equal(state_meta_set(st, "x", "y"), -1);
	assert_contains(state_error(st), "readonly");
	state_close(&st);
}

static void test_file_modes(void **state)
{
	struct fx *fx = *state;
	char *d1 = xasprintf("%s/x", fx->dir);
	char *d2 = xasprintf("%s/x/y", fx->dir);
	char *path = xasprintf("%s/state.db", d2);
	char *wal = xasprintf("%s-wal", path);
	char *shm = xasprintf("%s-shm", path);
	char *lock = xasprintf("%s.lock", path);
	mode_t old = umask(0);
	struct state *st;

	st = open_ok(path, 0);
	assert_int_equal(state_meta_set(st, "k", "v"), 0);
	assert_int_equal(file_mode(d1), 0700);
	assert_int_equal(file_mode(d2), 0700);
	assert_int_equal(file_mode(path), 0600);
	assert_int_equal(file_mode(lock), 0600);
	assert_true(exists(wal));
	assert_int_equal(file_mode(wal), 0600);
	assert_int_equal(file_mode(shm), 0600);

	/* A second handle makes its own -wal use; still the owner's only. */
	struct state *w = open_ok(path, STATE_NOLOCK);
	assert_int_equal(state_meta_set(w, "k", "w"), 0);
	assert_int_equal(file_mode(wal), 0600);
	state_close(&w);
	state_close(&st);
	umask(old);

	free(d1);
	free(d2);
	free(path);
	free(wal);
	free(shm);
	free(lock);
}

/* ---- accounts and meta ---- */

static void test_accounts(void **state)
{
	struct fx *fx = *state;
	struct state *st = open_ok(fx->path, 0);

	assert_int_equal(state_bind_accounts(st, "imap://alice@a.example",
	    "imap://alice@b.example"), 0);
	assert_int_equal(state_bind_accounts(st, "imap://alice@a.example",
	    "imap://alice@b.example"), 0);
	state_close(&st);

	st = open_ok(fx->path, 0);
	assert_int_equal(state_bind_accounts(st, "imap://alice@a.example",
	    "imap://alice@b.example"), 0);
	assert_int_equal(state_bind_accounts(st, "imap://alice@a.example",
	    "imap://bob@c.example"), -1);
	char *want = xasprintf("state '%s' belongs to 'imap://alice@a.example' -> "
	    "'imap://alice@b.example', not 'imap://alice@a.example' -> "
	    "'imap://bob@c.example' (wrong state file?)", fx->path);
	assert_string_equal(state_error(st), want);
	free(want);
	/* Swapped sides are other accounts too. */
	assert_int_equal(state_bind_accounts(st, "imap://alice@b.example",
	    "imap://alice@a.example"), -1);
	state_close(&st);
	/* The refusal recorded nothing. */
	assert_int_equal(raw_int(fx->path, "SELECT count(*) FROM account"), 2);
	assert_int_equal(raw_int(fx->path, "SELECT count(*) FROM account WHERE side = 1 "
	    "AND url = 'imap://alice@b.example'"), 1);
}

/*
 * A state of an older postino recorded display URLs (TLS mode and
 * mechanism included): the same accounts by identity are accepted and the
 * rows rewritten to the identities; other accounts are still refused, and
 * the refusal rewrites nothing.
 */
static void test_accounts_old_display(void **state)
{
	struct fx *fx = *state;
	struct state *st = open_ok(fx->path, 0);

	/* what an older postino recorded */
	assert_int_equal(state_bind_accounts(st, "imaps://alice@a.example:993?auth=plain",
	    "imap://alice@b.example:993"), 0);
	state_close(&st);

	st = open_ok(fx->path, 0);
	/* another user at the old display's host: refused, nothing rewritten */
	assert_int_equal(state_bind_accounts(st, "imap:bob@a.example:993",
	    "imap:alice@b.example:993"), -1);
	char *want = xasprintf("state '%s' belongs to 'imaps://alice@a.example:993?auth=plain' -> "
	    "'imap://alice@b.example:993', not 'imap:bob@a.example:993' -> "
	    "'imap:alice@b.example:993' (wrong state file?)", fx->path);
	assert_string_equal(state_error(st), want);
	free(want);
	/* another port, another protocol: refused */
	assert_int_equal(state_bind_accounts(st, "imap:alice@a.example:143",
	    "imap:alice@b.example:993"), -1);
	assert_int_equal(state_bind_accounts(st, "imap:alice@a.example:993",
	    "pop3:alice@b.example:993"), -1);
	assert_int_equal(raw_int(fx->path, "SELECT count(*) FROM account WHERE "
	    "(side = 0 AND url = 'imaps://alice@a.example:993?auth=plain') OR "
	    "(side = 1 AND url = 'imap://alice@b.example:993')"), 2);

	/* XOAUTH2 now, implicit TLS at the destination: the same accounts */
	assert_int_equal(state_bind_accounts(st, "imap:alice@a.example:993",
	    "imap:alice@b.example:993"), 0);
	state_close(&st);
	assert_int_equal(raw_int(fx->path, "SELECT count(*) FROM account WHERE "
	    "(side = 0 AND url = 'imap:alice@a.example:993') OR "
	    "(side = 1 AND url = 'imap:alice@b.example:993')"), 2);
	assert_int_equal(raw_int(fx->path, "SELECT count(*) FROM account"), 2);

	/* from now on the identities themselves */
	st = open_ok(fx->path, 0);
	assert_int_equal(state_bind_accounts(st, "imap:alice@a.example:993",
	    "imap:alice@b.example:993"), 0);
	assert_int_equal(state_bind_accounts(st, "imap:alice@b.example:993",
	    "imap:alice@a.example:993"), -1);
	state_close(&st);

	/* One side of the same account and one of another: refused, and the
	 * matching side is not rewritten either (one transaction). */
	raw_exec(fx->path, "UPDATE account SET url = 'imaps://alice@a.example:993' "
	    "WHERE side = 0; UPDATE account SET url = 'imaps://carol@c.example:993' "
	    "WHERE side = 1");
	st = open_ok(fx->path, 0);
	assert_int_equal(state_bind_accounts(st, "imap:alice@a.example:993",
	    "imap:alice@b.example:993"), -1);
	state_close(&st);
	assert_int_equal(raw_int(fx->path, "SELECT count(*) FROM account WHERE "
	    "side = 0 AND url = 'imaps://alice@a.example:993'"), 1);
}

/* state_move: a default state renamed under its lock, its WAL folded in. */
static void test_move(void **state)
{
	struct fx *fx = *state;
	char *to = xasprintf("%s/new.db", fx->dir);
	char *wal = xasprintf("%s-wal", fx->path);
	char *err = NULL;
	struct state *st;
	char *v = NULL;
	pid_t pid;
	int status;

	/* nothing to move */
	assert_int_equal(state_move(fx->path, to, &err), 0);
	assert_null(err);
	assert_false(exists(to));

	/* A run that died: committed transactions left in the WAL. */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		st = open_ok(fx->path, 0);
		if (state_bind_accounts(st, "imap:a@h:993", "imap:b@h:993") < 0 ||
		    state_meta_set(st, "k", "in the wal") < 0)
			_exit(1);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	struct stat sb;
	assert_int_equal(stat(wal, &sb), 0);
	assert_true(sb.st_size > 0);

	/* held by a run: refused, untouched */
	st = open_ok(fx->path, 0);
	assert_int_equal(state_move(fx->path, to, &err), STATE_OPEN_LOCKED);
	assert_contains(err, "in use by another postino run");
	free(err);
	err = NULL;
	state_close(&st);
	assert_false(exists(to));

	/* Open again: closing checkpointed the WAL. Kill it again. */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		st = open_ok(fx->path, 0);
		if (state_meta_set(st, "k2", "in the wal too") < 0)
			_exit(1);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_int_equal(stat(wal, &sb), 0);
	assert_true(sb.st_size > 0);

	assert_int_equal(state_move(fx->path, to, &err), 1);
	assert_null(err);
	assert_false(exists(fx->path));
	assert_false(exists(wal));
	assert_int_equal(file_mode(to), 0600);
	st = open_ok(to, 0);
	assert_int_equal(state_meta_get(st, "k", &v), 1);
	assert_string_equal(v, "in the wal");
	free(v);
	assert_int_equal(state_meta_get(st, "k2", &v), 1);
	assert_string_equal(v, "in the wal too");
	free(v);
	assert_int_equal(state_bind_accounts(st, "imap:a@h:993", "imap:b@h:993"), 0);
	state_close(&st);

	/* the old name gone: another run moved it first */
	assert_int_equal(state_move(fx->path, to, &err), 0);
	/* both names: the new one is never replaced */
	st = open_ok(fx->path, 0);
	state_close(&st);
	assert_int_equal(state_move(fx->path, to, &err), 0);
	assert_true(exists(fx->path));
	st = open_ok(to, 0);
	assert_int_equal(state_meta_get(st, "k", &v), 1);
	free(v);
	state_close(&st);

	free(to);
	free(wal);
}

static void test_meta(void **state)
{
	struct fx *fx = *state;
	struct state *st = open_ok(fx->path, 0);
	char *v = (char *)"sentinel";

	assert_int_equal(state_meta_get(st, "missing", &v), 0);
	assert_null(v);
	assert_int_equal(state_meta_set(st, "a", "1"), 0);
	assert_int_equal(state_meta_set(st, "a", "2"), 0);
	assert_int_equal(state_meta_get(st, "a", &v), 1);
	assert_string_equal(v, "2");
	free(v);
	assert_int_equal(state_meta_set(st, "a", NULL), 0);
	assert_int_equal(state_meta_get(st, "a", &v), 0);
	state_close(&st);
}

/* ---- folder pairs ---- */

struct pair_seen {
	int n;
	int64_t ids[4];
	int stop_at;
};

static int pair_cb(void *ctx, const struct fpair *fp)
{
	struct pair_seen *ps = ctx;

	ps->ids[ps->n++] = fp->id;
	return ps->n == ps->stop_at ? 7 : 0;
}

static void test_pairs(void **state)
{
	struct fx *fx = *state;
	struct state *st = open_ok(fx->path, 0);
	struct fpair fp, fp2;
	struct pair_seen ps = { 0 };

	assert_int_equal(state_pair_find(st, "INBOX", "Archive", &fp), 0);
	fpair_release(&fp);

	assert_int_equal(state_pair_get(st, "INBOX", "Archive", &fp), 0);
	assert_true(fp.id > 0);
	assert_string_equal(fp.a_name, "INBOX");
	assert_string_equal(fp.b_name, "Archive");
	assert_int_equal(fp.a_uidvalidity, 0);
	assert_int_equal(fp.b_uidnext, 0);
	assert_int_equal(fp.a_hms, 0);
	assert_int_equal(fp.last_done, 0);

	assert_int_equal(state_pair_get(st, "INBOX", "Archive", &fp2), 0);
	assert_int_equal(fp2.id, fp.id);
	fpair_release(&fp2);

	fp.a_uidvalidity = 0xffffffffu;
	fp.b_uidvalidity = 1234567;
	fp.a_uidnext = 4001;
	fp.b_uidnext = 17;
	fp.a_hms = UINT64_C(1) << 40;
	fp.b_hms = UINT64_C(9223372036854775807);
	fp.a_exists = 3999;
	fp.b_exists = 16;
	fp.last_done = 1700000000;
	assert_int_equal(state_pair_save(st, &fp), 0);

	assert_int_equal(state_pair_find(st, "INBOX", "Archive", &fp2), 1);
	assert_int_equal(fp2.id, fp.id);
	assert_string_equal(fp2.a_name, "INBOX");
	assert_string_equal(fp2.b_name, "Archive");
	assert_int_equal(fp2.a_uidvalidity, 0xffffffffu);
	assert_int_equal(fp2.b_uidvalidity, 1234567);
	assert_int_equal(fp2.a_uidnext, 4001);
	assert_int_equal(fp2.b_uidnext, 17);
	assert_true(fp2.a_hms == (UINT64_C(1) << 40));
	assert_true(fp2.b_hms == UINT64_C(9223372036854775807));
	assert_int_equal(fp2.a_exists, 3999);
	assert_int_equal(fp2.b_exists, 16);
	assert_int_equal(fp2.last_done, 1700000000);
	fpair_release(&fp2);

	/* 0 is stored as NULL ("not yet known") and reads back as 0. */
	fp.a_uidvalidity = 0;
	assert_int_equal(state_pair_save(st, &fp), 0);
	assert_int_equal(raw_int(fx->path, "SELECT a_uidvalidity IS NULL FROM folder_pair"), 1);

	int64_t second = new_pair(st, "Sent", "Sent Items");
	assert_true(second > fp.id);
	assert_int_equal(state_pairs_each(st, pair_cb, &ps), 0);
	assert_int_equal(ps.n, 2);
	assert_int_equal(ps.ids[0], fp.id);
	assert_int_equal(ps.ids[1], second);
	memset(&ps, 0, sizeof(ps));
	ps.stop_at = 1;
	assert_int_equal(state_pairs_each(st, pair_cb, &ps), 7);
	assert_int_equal(ps.n, 1);

	/* Saving a pair that is not there is a bug worth reporting. */
	fp.id = 999;
	assert_int_equal(state_pair_save(st, &fp), -1);
	assert_contains(state_error(st), "no folder pair with id 999");
	fpair_release(&fp);
	state_close(&st);
}

/* ---- messages ---- */

static void test_msg_roundtrip(void **state)
{
	struct fx *fx = *state;
	struct state *st = open_ok(fx->path, 0);
	int64_t pair = new_pair(st, "INBOX", "INBOX");
	struct msg_row in = { 0 }, out, bare = { 0 };

	in.pair = pair;
	in.a_uid = 42;
	in.b_uid = 4242;
	in.a_uidl = (char *)"uidl-000042";
	in.state = MSG_PENDING;
	in.dir = 1;
	in.size = UINT64_C(5000000000);
	in.msgid = (char *)"<abc@example.com>";
	for (int i = 0; i < 32; i++)
		in.sha256[i] = (uint8_t)(i * 7 + 1);
	in.has_sha = true;
	in.flags = (char *)"\\Seen \\Flagged";
	in.idate = 1699999999;
	in.t_uidnext = 4243;
	in.tries = 2;
	in.error = (char *)"NO [OVERQUOTA] mailbox full";
	assert_int_equal(state_msg_insert(st, &in), 0);
	assert_true(in.id > 0);

	for (int how = 0; how < 3; how++) {
		int rc = how == 0 ? state_msg_by_a(st, pair, 42, &out)
		       : how == 1 ? state_msg_by_b(st, pair, 4242, &out)
				  : state_msg_by_uidl(st, pair, "uidl-000042", &out);
		assert_int_equal(rc, 1);
		assert_int_equal(out.id, in.id);
		assert_int_equal(out.pair, pair);
		assert_int_equal(out.a_uid, 42);
		assert_int_equal(out.b_uid, 4242);
		assert_string_equal(out.a_uidl, "uidl-000042");
		assert_int_equal(out.state, MSG_PENDING);
		assert_int_equal(out.dir, 1);
		assert_true(out.size == UINT64_C(5000000000));
		assert_string_equal(out.msgid, "<abc@example.com>");
		assert_true(out.has_sha);
		assert_memory_equal(out.sha256, in.sha256, 32);
		assert_string_equal(out.flags, "\\Seen \\Flagged");
		assert_int_equal(out.idate, 1699999999);
		assert_int_equal(out.t_uidnext, 4243);
		assert_int_equal(out.tries, 2);
		assert_string_equal(out.error, "NO [OVERQUOTA] mailbox full");
		msg_row_release(&out);
	}
	assert_int_equal(raw_int(fx->path, "SELECT length(sha256) FROM msg"), 32);

	/* Not found: 0, and the row is safe to release. */
	assert_int_equal(state_msg_by_a(st, pair, 43, &out), 0);
	msg_row_release(&out);
	assert_int_equal(state_msg_by_b(st, pair, 42, &out), 0);
	assert_int_equal(state_msg_by_uidl(st, pair, "uidl-x", &out), 0);
	assert_int_equal(state_msg_by_a(st, pair + 1, 42, &out), 0);

	/* Unknowns go in as NULL and come back as 0 / NULL / "". */
	bare.pair = pair;
	bare.a_uid = 43;
	bare.size = 10;
	assert_int_equal(state_msg_insert(st, &bare), 0);
	assert_int_equal(raw_int(fx->path, "SELECT b_uid IS NULL AND a_uidl IS NULL AND "
	    "msgid IS NULL AND sha256 IS NULL AND flags = '' AND idate IS NULL AND "
	    "t_uidnext IS NULL AND error IS NULL FROM msg WHERE a_uid = 43"), 1);
	assert_int_equal(state_msg_by_a(st, pair, 43, &out), 1);
	assert_int_equal(out.id, bare.id);
	assert_int_equal(out.b_uid, 0);
	assert_null(out.a_uidl);
	assert_null(out.msgid);
	assert_false(out.has_sha);
	assert_string_equal(out.flags, "");
	assert_int_equal(out.idate, 0);
	assert_int_equal(out.t_uidnext, 0);
	assert_null(out.error);
	msg_row_release(&out);
	state_close(&st);
}

static void test_msg_updates(void **state)
{
	struct fx *fx = *state;
	struct state *st = open_ok(fx->path, 0);
	int64_t pair = new_pair(st, "INBOX", "INBOX");
	int64_t id = add_msg(st, pair, 5, MSG_PENDING);
	struct msg_row r;

	assert_int_equal(state_msg_refused(st, id, "NO too big"), 0);
	assert_int_equal(state_msg_refused(st, id, "NO still too big"), 0);
	assert_int_equal(state_msg_by_a(st, pair, 5, &r), 1);
	assert_int_equal(r.state, MSG_REFUSED);
	assert_int_equal(r.tries, 2);
	assert_string_equal(r.error, "NO still too big");
	msg_row_release(&r);

	assert_int_equal(state_msg_synced(st, id, 77, "\\Seen"), 0);
	assert_int_equal(state_msg_by_b(st, pair, 77, &r), 1);
	assert_int_equal(r.id, id);
	assert_int_equal(r.state, MSG_SYNCED);
	assert_string_equal(r.flags, "\\Seen");
	assert_null(r.error);
	assert_int_equal(r.tries, 2);
	msg_row_release(&r);

	/* 0 / NULL keep what is known. */
	assert_int_equal(state_msg_synced(st, id, 0, NULL), 0);
	assert_int_equal(state_msg_by_a(st, pair, 5, &r), 1);
	assert_int_equal(r.b_uid, 77);
	assert_string_equal(r.flags, "\\Seen");
	msg_row_release(&r);

	assert_int_equal(state_msg_set_flags(st, id, "\\Answered \\Seen"), 0);
	assert_int_equal(state_msg_set_b_uid(st, id, 78), 0);
	assert_int_equal(state_msg_set_a_uid(st, id, 6), 0);
	assert_int_equal(state_msg_by_a(st, pair, 5, &r), 0);
	assert_int_equal(state_msg_by_b(st, pair, 77, &r), 0);
	assert_int_equal(state_msg_by_a(st, pair, 6, &r), 1);
	assert_int_equal(r.b_uid, 78);
	assert_string_equal(r.flags, "\\Answered \\Seen");
	msg_row_release(&r);
	assert_int_equal(state_msg_set_flags(st, id, NULL), 0);
	assert_int_equal(state_msg_set_a_uid(st, id, 0), 0);
	assert_int_equal(state_msg_by_b(st, pair, 78, &r), 1);
	assert_int_equal(r.a_uid, 0);
	assert_string_equal(r.flags, "");
	msg_row_release(&r);

	assert_int_equal(state_msg_delete(st, id), 0);
	assert_int_equal(state_msg_by_b(st, pair, 78, &r), 0);
	assert_int_equal(state_msg_delete(st, id), -1);
	assert_contains(state_error(st), "no message with id");
	assert_int_equal(state_msg_synced(st, id, 1, ""), -1);
	assert_int_equal(state_msg_refused(st, id, "x"), -1);
	assert_int_equal(state_msg_set_flags(st, id, ""), -1);
	assert_int_equal(state_msg_set_a_uid(st, id, 1), -1);
	assert_int_equal(state_msg_set_b_uid(st, id, 1), -1);
	state_close(&st);
}

struct iter {
	struct state *st;
	int n;
	int64_t last_id;
	int64_t sum_uid;
	int stop_after;
	int mode; /* 0 plain, 1 mark synced, 2 insert a row, 3 delete the pair's next row */
	int64_t pair;
};

static int iter_cb(void *ctx, const struct msg_row *r)
{
	struct iter *it = ctx;

	assert_true(r->id > it->last_id);
	assert_int_equal(r->pair, it->pair);
	it->last_id = r->id;
	it->sum_uid += r->a_uid;
	it->n++;
	if (it->mode == 1)
		assert_int_equal(state_msg_synced(it->st, r->id, 100000 + r->a_uid, "\\Seen"), 0);
	if (it->mode == 2)
		add_msg(it->st, it->pair, 100000 + r->a_uid, r->state);
	if (it->mode == 3)
		/* rows of the two pairs alternate: +2 is this pair's next */
		assert_int_equal(state_msg_delete(it->st, r->id + 2), 0);
	if (it->stop_after && it->n == it->stop_after)
		return 42;
	return 0;
}

static void run_iter(struct state *st, int64_t pair, int ms, struct iter *it, int mode)
{
	memset(it, 0, sizeof(*it));
	it->st = st;
	it->pair = pair;
	it->mode = mode;
	assert_int_equal(state_msgs_each(st, pair, ms, iter_cb, it), 0);
}

static void test_msgs_each(void **state)
{
	struct fx *fx = *state;
	struct state *st = open_ok(fx->path, 0);
	int64_t pair = new_pair(st, "INBOX", "INBOX");
	int64_t other = new_pair(st, "Sent", "Sent");
	struct iter it;
	int64_t counts[3];

	/* Interleave two pairs so that the other pair's rows sit between. */
	assert_int_equal(state_begin(st), 0);
	for (uint32_t uid = 1; uid <= 600; uid++) {
		add_msg(st, pair, uid, (enum msg_state)(uid % 3));
		add_msg(st, other, uid, MSG_PENDING);
	}
	assert_int_equal(state_commit(st), 0);

	run_iter(st, pair, -1, &it, 0);
	assert_int_equal(it.n, 600);
	assert_int_equal(it.sum_uid, 600 * 601 / 2);
	for (int ms = 0; ms < 3; ms++) {
		run_iter(st, pair, ms, &it, 0);
		assert_int_equal(it.n, 200);
		/* exactly the rows inserted with uid % 3 == ms */
		int64_t want = 0;
		for (uint32_t uid = 1; uid <= 600; uid++)
			if ((int)(uid % 3) == ms)
				want += uid;
		assert_int_equal(it.sum_uid, want);
	}

	/* A non-zero return stops and is returned. */
	memset(&it, 0, sizeof(it));
	it.st = st;
	it.pair = pair;
	it.stop_after = 5;
	assert_int_equal(state_msgs_each(st, pair, -1, iter_cb, &it), 42);
	assert_int_equal(it.n, 5);

	/* Callbacks may write: mark every pending row synced. */
	run_iter(st, pair, MSG_PENDING, &it, 1);
	assert_int_equal(it.n, 200);
	assert_int_equal(state_pair_counts(st, pair, counts), 0);
	assert_int_equal(counts[MSG_PENDING], 0);
	assert_int_equal(counts[MSG_SYNCED], 400);
	assert_int_equal(counts[MSG_REFUSED], 200);

	/* Rows inserted during the iteration are not visited. */
	run_iter(st, pair, MSG_REFUSED, &it, 2);
	assert_int_equal(it.n, 200);
	assert_int_equal(state_pair_counts(st, pair, counts), 0);
	assert_int_equal(counts[MSG_REFUSED], 400);

	/* Rows deleted before their turn are skipped. */
	run_iter(st, other, -1, &it, 3);
	assert_int_equal(it.n, 300);
	assert_int_equal(state_pair_counts(st, other, counts), 0);
	assert_int_equal(counts[MSG_PENDING], 300);

	/* An empty pair iterates nothing. */
	run_iter(st, 12345, -1, &it, 0);
	assert_int_equal(it.n, 0);
	state_close(&st);
}

static void test_forget_uids(void **state)
{
	struct fx *fx = *state;
	struct state *st = open_ok(fx->path, 0);
	int64_t pair = new_pair(st, "INBOX", "INBOX");
	int64_t other = new_pair(st, "Sent", "Sent");
	struct msg_row r;

	for (uint32_t uid = 1; uid <= 3; uid++) {
		int64_t id = add_msg(st, pair, uid, MSG_PENDING);
		assert_int_equal(state_msg_synced(st, id, 10 + uid, ""), 0);
		id = add_msg(st, other, uid, MSG_PENDING);
		assert_int_equal(state_msg_synced(st, id, 10 + uid, ""), 0);
	}

	assert_int_equal(state_pair_forget_uids(st, pair, 0), 0);
	assert_int_equal(state_msg_by_a(st, pair, 1, &r), 0);
	assert_int_equal(state_msg_by_b(st, pair, 11, &r), 1);
	assert_int_equal(r.a_uid, 0);
	assert_int_equal(r.b_uid, 11);
	msg_row_release(&r);
	/* The other pair keeps its UIDs. */
	assert_int_equal(state_msg_by_a(st, other, 1, &r), 1);
	assert_int_equal(r.b_uid, 11);
	msg_row_release(&r);
	assert_int_equal(raw_int(fx->path, "SELECT count(*) FROM msg WHERE a_uid IS NULL"), 3);

	assert_int_equal(state_pair_forget_uids(st, other, 1), 0);
	assert_int_equal(state_msg_by_b(st, other, 11, &r), 0);
	assert_int_equal(state_msg_by_a(st, other, 2, &r), 1);
	assert_int_equal(r.b_uid, 0);
	msg_row_release(&r);
	assert_int_equal(raw_int(fx->path, "SELECT count(*) FROM msg WHERE b_uid IS NULL"), 3);

	assert_int_equal(state_pair_forget_uids(st, pair, 2), -1);
	assert_contains(state_error(st), "bad side 2");
	state_close(&st);
}

static void test_counts(void **state)
{
	struct fx *fx = *state;
	struct state *st = open_ok(fx->path, 0);
	int64_t pair = new_pair(st, "INBOX", "INBOX");
	int64_t other = new_pair(st, "Sent", "Sent");
	int64_t counts[3] = { -1, -1, -1 };

	assert_int_equal(state_pair_counts(st, pair, counts), 0);
	assert_int_equal(counts[0], 0);
	assert_int_equal(counts[1], 0);
	assert_int_equal(counts[2], 0);

	for (uint32_t uid = 1; uid <= 4; uid++)
		add_msg(st, pair, uid, MSG_PENDING);
	for (uint32_t uid = 5; uid <= 11; uid++)
		add_msg(st, pair, uid, MSG_SYNCED);
	add_msg(st, pair, 12, MSG_REFUSED);
	add_msg(st, other, 1, MSG_REFUSED);
	add_msg(st, other, 2, MSG_REFUSED);

	assert_int_equal(state_pair_counts(st, pair, counts), 0);
	assert_int_equal(counts[MSG_PENDING], 4);
	assert_int_equal(counts[MSG_SYNCED], 7);
	assert_int_equal(counts[MSG_REFUSED], 1);
	assert_int_equal(state_pair_counts(st, other, counts), 0);
	assert_int_equal(counts[MSG_PENDING], 0);
	assert_int_equal(counts[MSG_SYNCED], 0);
	assert_int_equal(counts[MSG_REFUSED], 2);
	state_close(&st);
}

/* ---- runs ---- */

static void test_runs(void **state)
{
	struct fx *fx = *state;
	struct state *st = open_ok(fx->path, 0);
	int64_t run = 0, run2 = 0;
	int64_t before = (int64_t)time(NULL);

	assert_int_equal(state_run_begin(st, "copy", &run), 0);
	assert_true(run > 0);
	assert_int_equal(state_run_begin(st, "status", &run2), 0);
	assert_true(run2 > run);
	assert_int_equal(state_run_end(st, run, 3, 120, 987654321, 15, 2,
	    "120 copied, 2 refused"), 0);

	char sql[256];
	snprintf(sql, sizeof(sql), "SELECT command = 'copy' AND started >= %lld AND "
	    "ended >= started AND exit_code = 3 AND copied = 120 AND bytes = 987654321 "
	    "AND flags_set = 15 AND refused = 2 AND summary = '120 copied, 2 refused' "
	    "FROM run WHERE id = %lld", (long long)before, (long long)run);
	assert_int_equal(raw_int(fx->path, sql), 1);
	snprintf(sql, sizeof(sql), "SELECT command = 'status' AND ended IS NULL AND "
	    "exit_code IS NULL AND copied = 0 FROM run WHERE id = %lld", (long long)run2);
	assert_int_equal(raw_int(fx->path, sql), 1);

	assert_int_equal(state_run_end(st, 999, 0, 0, 0, 0, 0, NULL), -1);
	assert_contains(state_error(st), "no run with id 999");
	state_close(&st);
}

/* ---- constraints and transactions ---- */

static void test_unique_constraint(void **state)
{
	struct fx *fx = *state;
	struct state *st = open_ok(fx->path, 0);
	int64_t pair = new_pair(st, "INBOX", "INBOX");
	int64_t other = new_pair(st, "Sent", "Sent");
	struct msg_row r = { 0 };

	add_msg(st, pair, 9, MSG_PENDING);
	r.pair = pair;
	r.a_uid = 9;
	r.size = 1;
	assert_int_equal(state_msg_insert(st, &r), -1);
	assert_contains(state_error(st), "UNIQUE constraint failed: msg.pair, msg.a_uid");

	/* Same for side b and for UIDLs. */
	r.a_uid = 10;
	r.b_uid = 500;
	assert_int_equal(state_msg_insert(st, &r), 0);
	r.a_uid = 11;
	assert_int_equal(state_msg_insert(st, &r), -1);
	assert_contains(state_error(st), "UNIQUE constraint failed");
	r.b_uid = 0;
	r.a_uid = 0;
	r.a_uidl = (char *)"U1";
	assert_int_equal(state_msg_insert(st, &r), 0);
	assert_int_equal(state_msg_insert(st, &r), -1);
	assert_contains(state_error(st), "UNIQUE constraint failed");
	r.a_uidl = NULL;

	/* Unknown UIDs (NULL) are not unique; other pairs are separate. */
	assert_int_equal(state_msg_insert(st, &r), 0);
	assert_int_equal(state_msg_insert(st, &r), 0);
	r.pair = other;
	r.a_uid = 9;
	assert_int_equal(state_msg_insert(st, &r), 0);
	assert_int_equal(raw_int(fx->path, "SELECT count(*) FROM msg"), 6);

	/* The pair (a_name, b_name) is unique too: get finds the same row. */
	assert_int_equal(new_pair(st, "INBOX", "INBOX"), pair);
	assert_int_equal(raw_int(fx->path, "SELECT count(*) FROM folder_pair"), 2);
	state_close(&st);
}

static void test_fk_cascade(void **state)
{
	struct fx *fx = *state;
	struct state *st = open_ok(fx->path, 0);
	int64_t pair = new_pair(st, "INBOX", "INBOX");
	int64_t other = new_pair(st, "Sent", "Sent");
	int64_t counts[3];
	struct msg_row r = { 0 };
	char sql[128];

	for (uint32_t uid = 1; uid <= 5; uid++) {
		add_msg(st, pair, uid, MSG_SYNCED);
		add_msg(st, other, uid, MSG_SYNCED);
	}
	snprintf(sql, sizeof(sql), "PRAGMA foreign_keys = ON; "
	    "DELETE FROM folder_pair WHERE id = %lld", (long long)pair);
	raw_exec(fx->path, sql);
	assert_int_equal(state_pair_counts(st, pair, counts), 0);
	assert_int_equal(counts[MSG_SYNCED], 0);
	assert_int_equal(state_pair_counts(st, other, counts), 0);
	assert_int_equal(counts[MSG_SYNCED], 5);
	assert_int_equal(raw_int(fx->path, "SELECT count(*) FROM msg"), 5);

	/* Our own connection enforces foreign keys: no orphan rows. */
	r.pair = pair;
	r.a_uid = 1;
	r.size = 1;
	assert_int_equal(state_msg_insert(st, &r), -1);
	assert_contains(state_error(st), "FOREIGN KEY constraint failed");
	state_close(&st);
}

static void test_transactions(void **state)
{
	struct fx *fx = *state;
	struct state *st = open_ok(fx->path, 0);
	int64_t pair = new_pair(st, "INBOX", "INBOX");
	struct msg_row r;

	assert_int_equal(state_begin(st), 0);
	add_msg(st, pair, 1, MSG_PENDING);
	assert_int_equal(state_meta_set(st, "k", "in tx"), 0);
	state_rollback(st);
	assert_int_equal(state_msg_by_a(st, pair, 1, &r), 0);
	char *v = NULL;
	assert_int_equal(state_meta_get(st, "k", &v), 0);

	assert_int_equal(state_begin(st), 0);
	/* Nested BEGIN is an error, and the transaction stays usable. */
	assert_int_equal(state_begin(st), -1);
	assert_contains(state_error(st), "within a transaction");
	add_msg(st, pair, 2, MSG_PENDING);
	assert_int_equal(state_commit(st), 0);
	assert_int_equal(state_msg_by_a(st, pair, 2, &r), 1);
	msg_row_release(&r);
	/* Committed means durable for another connection. */
	assert_int_equal(raw_int(fx->path, "SELECT count(*) FROM msg WHERE a_uid = 2"), 1);

	/* Commit without a transaction fails; rollback then keeps the error. */
	assert_int_equal(state_commit(st), -1);
	char *saved = xstrdup(state_error(st));
	state_rollback(st);
	assert_string_equal(state_error(st), saved);
	free(saved);

	/* A failing statement inside a transaction, then rollback, keeps the
	 * earlier work of that transaction out too. */
	assert_int_equal(state_begin(st), 0);
	add_msg(st, pair, 3, MSG_PENDING);
	struct msg_row dup = { 0 };
	dup.pair = pair;
	dup.a_uid = 3;
	assert_int_equal(state_msg_insert(st, &dup), -1);
	saved = xstrdup(state_error(st));
	state_rollback(st);
	assert_string_equal(state_error(st), saved);
	assert_contains(saved, "UNIQUE");
	free(saved);
	assert_int_equal(state_msg_by_a(st, pair, 3, &r), 0);
	state_close(&st);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_create_migrates, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reopen_idempotent, setup, teardown),
		cmocka_unit_test_setup_teardown(test_newer_schema_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_not_a_database, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lock, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lock_released_on_close, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rdonly_missing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rdonly_reads, setup, teardown),
		cmocka_unit_test_setup_teardown(test_file_modes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_accounts, setup, teardown),
		cmocka_unit_test_setup_teardown(test_accounts_old_display, setup, teardown),
		cmocka_unit_test_setup_teardown(test_move, setup, teardown),
		cmocka_unit_test_setup_teardown(test_meta, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pairs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_msg_roundtrip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_msg_updates, setup, teardown),
		cmocka_unit_test_setup_teardown(test_msgs_each, setup, teardown),
		cmocka_unit_test_setup_teardown(test_forget_uids, setup, teardown),
		cmocka_unit_test_setup_teardown(test_counts, setup, teardown),
		cmocka_unit_test_setup_teardown(test_runs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unique_constraint, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fk_cascade, setup, teardown),
		cmocka_unit_test_setup_teardown(test_transactions, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
