/*
 * state.c — the state DB: opening, locking, migrating, and the typed
 * accessors of state.h over SQLite.
 *
 * Opening a read-write state happens in this order, and the order matters:
 *
 *   1. create missing parent directories (0700);
 *   2. take the run lock (flock on PATH.lock), so that nothing below races
 *      with another run that is migrating or writing;
 *   3. create the database file ourselves (0600, then fchmod against a
 *      restrictive or odd umask) so that SQLite never creates it with the
 *      process umask; SQLite gives the -wal and -shm files the mode of the
 *      database file, and we chmod them once more after the first write;
 *   4. PRAGMAs, then the migrations, each in its own BEGIN IMMEDIATE
 *      transaction that re-reads user_version (a worker handle opened with
 *      STATE_NOLOCK may race us to it);
 *   5. prepare the statements used on every message once.
 *
 * Every value reaches SQLite through sqlite3_bind_*(); the only SQL built
 * with printf is "PRAGMA user_version=N", which cannot take a parameter and
 * whose N is a migration number compiled into this binary.
 *
 * Statements are reset (and their bindings cleared) before a function
 * returns and before any callback runs, so callbacks may call back into this
 * module, and no cached statement holds a read transaction open between
 * calls (which would keep a WAL snapshot alive and block checkpoints).
 */
#include "state.h"

#include "url.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/*
 * The statements prepared once per handle. ST_* indexes stmt_sql[] and
 * struct state.stmt[].
 */
enum stmt_id {
	ST_BEGIN,
	ST_BEGIN_READ,
	ST_COMMIT,
	ST_ROLLBACK,
	ST_META_GET,
	ST_META_SET,
	ST_META_DEL,
	ST_ACCOUNT_ADD,
	ST_ACCOUNT_GET,
	ST_ACCOUNT_SET,
	ST_PAIR_ADD,
	ST_PAIR_FIND,
	ST_PAIR_SAVE,
	ST_PAIRS_ALL,
	ST_MSG_INSERT,
	ST_MSG_BY_ID,
	ST_MSG_BY_A,
	ST_MSG_BY_UIDL,
	ST_MSG_BY_B,
	ST_MSG_SYNCED,
	ST_MSG_REFUSED,
	ST_MSG_FLAGS,
	ST_MSG_A_UID,
	ST_MSG_B_UID,
	ST_MSG_DELETE,
	ST_MSG_IDS_ALL,
	ST_MSG_IDS_STATE,
	ST_MSG_IDS_UNSYNCED,
	ST_FORGET_A,
	ST_FORGET_B,
	ST_COUNT_ALL,
	ST_COUNT_UNSYNCED,
	ST_RUN_BEGIN,
	ST_RUN_END,
	ST_ORPHAN_COUNT,
	ST_ORPHAN_RETIRE,
	ST_RUNS_LAST,
	ST_MSG_SYNCED_A,
	ST_MSG_MOVE,
	ST_MSG_GONE,
	ST_ORPHAN_FIND,
	ST__COUNT
};

#define PAIR_COLS                                                          \
	"id, a_name, b_name, a_uidvalidity, b_uidvalidity, a_uidnext, "    \
	"b_uidnext, a_highestmodseq, b_highestmodseq, a_exists, b_exists, " \
	"last_done"

#define MSG_COLS                                                            \
	"id, pair, a_uid, b_uid, a_uidl, state, dir, size, msgid, sha256, " \
	"flags, idate, t_uidnext, tries, error, updated, a_gone"

static const char *const stmt_sql[ST__COUNT] = {
	[ST_BEGIN] = "BEGIN IMMEDIATE",
	/* A read-only handle cannot take the write lock; a deferred
	 * transaction still gives it one consistent snapshot. */
	[ST_BEGIN_READ] = "BEGIN",
	[ST_COMMIT] = "COMMIT",
	[ST_ROLLBACK] = "ROLLBACK",
	[ST_META_GET] = "SELECT value FROM meta WHERE key = ?1",
	[ST_META_SET] = "INSERT INTO meta (key, value) VALUES (?1, ?2) "
			"ON CONFLICT (key) DO UPDATE SET value = excluded.value",
	[ST_META_DEL] = "DELETE FROM meta WHERE key = ?1",
	[ST_ACCOUNT_ADD] = "INSERT OR IGNORE INTO account (side, url) VALUES (?1, ?2)",
	[ST_ACCOUNT_GET] = "SELECT url FROM account WHERE side = ?1",
	[ST_ACCOUNT_SET] = "UPDATE account SET url = ?2 WHERE side = ?1",
	[ST_PAIR_ADD] = "INSERT OR IGNORE INTO folder_pair (a_name, b_name) "
			"VALUES (?1, ?2)",
	[ST_PAIR_FIND] = "SELECT " PAIR_COLS " FROM folder_pair "
			 "WHERE a_name = ?1 AND b_name = ?2",
	[ST_PAIR_SAVE] = "UPDATE folder_pair SET a_name = ?2, b_name = ?3, "
			 "a_uidvalidity = ?4, b_uidvalidity = ?5, a_uidnext = ?6, "
			 "b_uidnext = ?7, a_highestmodseq = ?8, b_highestmodseq = ?9, "
			 "a_exists = ?10, b_exists = ?11, last_done = ?12 WHERE id = ?1",
	[ST_PAIRS_ALL] = "SELECT " PAIR_COLS " FROM folder_pair ORDER BY id",
	[ST_MSG_INSERT] = "INSERT INTO msg (pair, a_uid, b_uid, a_uidl, state, dir, "
			  "size, msgid, sha256, flags, idate, t_uidnext, tries, error) "
			  "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, "
			  "?13, ?14)",
	[ST_MSG_BY_ID] = "SELECT " MSG_COLS " FROM msg WHERE id = ?1",
	[ST_MSG_BY_A] = "SELECT " MSG_COLS " FROM msg WHERE pair = ?1 AND a_uid = ?2",
	[ST_MSG_BY_UIDL] = "SELECT " MSG_COLS " FROM msg WHERE pair = ?1 AND a_uidl = ?2",
	[ST_MSG_BY_B] = "SELECT " MSG_COLS " FROM msg WHERE pair = ?1 AND b_uid = ?2",
	/* b_uid and flags: NULL keeps what is known (see state.h). */
	[ST_MSG_SYNCED] = "UPDATE msg SET state = 1, b_uid = coalesce(?2, b_uid), "
			  "flags = coalesce(?3, flags), error = NULL, "
			  "updated = strftime('%s', 'now') WHERE id = ?1",
	[ST_MSG_REFUSED] = "UPDATE msg SET state = 2, error = ?2, tries = tries + 1, "
			   "updated = strftime('%s', 'now') WHERE id = ?1",
	[ST_MSG_FLAGS] = "UPDATE msg SET flags = ?2, updated = strftime('%s', 'now') "
			 "WHERE id = ?1",
	[ST_MSG_A_UID] = "UPDATE msg SET a_uid = ?2, updated = strftime('%s', 'now') "
			 "WHERE id = ?1",
	[ST_MSG_B_UID] = "UPDATE msg SET b_uid = ?2, updated = strftime('%s', 'now') "
			 "WHERE id = ?1",
	[ST_MSG_DELETE] = "DELETE FROM msg WHERE id = ?1",
	[ST_MSG_IDS_ALL] = "SELECT id FROM msg WHERE pair = ?1 ORDER BY id",
	[ST_MSG_IDS_STATE] = "SELECT id FROM msg WHERE pair = ?1 AND state = ?2 "
			     "ORDER BY id",
	/* "state <> 1" repeats the WHERE of the partial index msg_state, which
	 * is what lets SQLite use it (and in rowid order, so no sort). */
	[ST_MSG_IDS_UNSYNCED] = "SELECT id FROM msg WHERE pair = ?1 AND state = ?2 "
				"AND state <> 1 ORDER BY id",
	[ST_FORGET_A] = "UPDATE msg SET a_uid = NULL WHERE pair = ?1 AND a_uid IS NOT NULL",
	[ST_FORGET_B] = "UPDATE msg SET b_uid = NULL WHERE pair = ?1 AND b_uid IS NOT NULL",
	/* Synced rows are counted as total minus the others: both queries are
	 * answered from covering indexes without reading the rows. */
	[ST_COUNT_ALL] = "SELECT count(*) FROM msg WHERE pair = ?1",
	[ST_COUNT_UNSYNCED] = "SELECT state, count(*) FROM msg "
			      "WHERE pair = ?1 AND state <> 1 GROUP BY state",
	[ST_RUN_BEGIN] = "INSERT INTO run (command, started) VALUES (?1, ?2)",
	[ST_RUN_END] = "UPDATE run SET ended = ?2, exit_code = ?3, copied = ?4, "
		       "bytes = ?5, flags_set = ?6, refused = ?7, summary = ?8 "
		       "WHERE id = ?1",
	[ST_MSG_GONE] = "UPDATE msg SET a_gone = ?2, a_uidl = NULL WHERE id = ?1",
	[ST_MSG_SYNCED_A] = "UPDATE msg SET state = 1, a_uid = coalesce(?2, a_uid), "
			    "flags = coalesce(?3, flags), error = NULL, "
			    "updated = strftime('%s', 'now') WHERE id = ?1",
	[ST_MSG_MOVE] = "UPDATE msg SET pair = ?2, a_uid = ?3, b_uid = ?4, "
			"updated = strftime('%s', 'now') WHERE id = ?1",
	[ST_RUNS_LAST] = "SELECT id, command, started, ended, exit_code, copied, bytes, "
			 "flags_set, refused, summary FROM run ORDER BY id DESC LIMIT ?1",
	[ST_ORPHAN_RETIRE] = "UPDATE msg SET a_gone = ?2 WHERE pair = ?1 AND a_uid IS NULL "
			     "AND a_uidl IS NULL AND a_gone IS NULL",
	[ST_ORPHAN_COUNT] = "SELECT count(*) FROM msg WHERE pair = ?1 AND a_uid IS NULL "
			    "AND a_uidl IS NULL AND a_gone IS NULL",
	/* msg_content (pair, size, msgid) narrows it to one size */
	[ST_ORPHAN_FIND] = "SELECT " MSG_COLS " FROM msg WHERE pair = ?1 AND size = ?2 "
			   "AND sha256 = ?3 AND a_uid IS NULL AND a_uidl IS NULL AND a_gone IS NULL "
			   "ORDER BY id LIMIT 1",
};

struct state {
	sqlite3 *db;
	char *path;
	char *err;
	unsigned flags;
	int version;  /* PRAGMA user_version after migrating */
	int lock_fd;  /* PATH.lock, flocked; -1 with STATE_RDONLY/NOLOCK */
	sqlite3_stmt *stmt[ST__COUNT];
};

/* ---- errors ---- */

__attribute__((format(printf, 2, 3)))
static int set_error(struct state *st, const char *fmt, ...)
{
	va_list ap;
	char *msg;

	va_start(ap, fmt);
	msg = xvasprintf(fmt, ap);
	va_end(ap);
	free(st->err);
	st->err = msg;
	return -1;
}

/* Records what failed with SQLite's words; call before anything else
 * touches the connection, or the message is lost. */
static int db_error(struct state *st, const char *what)
{
	return set_error(st, "%s: %s", what, sqlite3_errmsg(st->db));
}

const char *state_error(const struct state *st)
{
	return st->err ? st->err : "no error";
}

const char *state_path(const struct state *st)
{
	return st->path;
}

int state_schema_version(const struct state *st)
{
	return st->version;
}

/* ---- statements ---- */

/*
 * Returns the cached statement, preparing it on first use. After migrating
 * all of them are prepared at open; the lazy path only serves read-only
 * handles on an older schema, where a statement that needs a newer table
 * fails when used rather than making the whole state unreadable.
 */
static sqlite3_stmt *stmt_get(struct state *st, enum stmt_id id)
{
	int rc;

	if (st->stmt[id])
		return st->stmt[id];
	rc = sqlite3_prepare_v3(st->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
	    &st->stmt[id], NULL);
	if (rc != SQLITE_OK) {
		set_error(st, "cannot prepare statement: %s", sqlite3_errmsg(st->db));
		st->stmt[id] = NULL;
		return NULL;
	}
	return st->stmt[id];
}

static void stmt_done(sqlite3_stmt *s)
{
	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
}

/* Binds a UID-like value where 0 means "unknown", stored as NULL. */
static int bind_opt(sqlite3_stmt *s, int i, int64_t v)
{
	return v ? sqlite3_bind_int64(s, i, v) : sqlite3_bind_null(s, i);
}

static int bind_text(sqlite3_stmt *s, int i, const char *v)
{
	return v ? sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC) : sqlite3_bind_null(s, i);
}

static char *column_strdup(sqlite3_stmt *s, int i)
{
	const unsigned char *t = sqlite3_column_text(s, i);
	return t ? xstrdup((const char *)t) : NULL;
}

/*
 * Finishes a statement that returns no row: rc is the result of the binds
 * (SQLITE_OK) or of a failed bind. Returns 0 or -1 with the error set.
 */
static int exec_stmt(struct state *st, sqlite3_stmt *s, int rc, const char *what)
{
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc != SQLITE_DONE && rc != SQLITE_ROW)
		db_error(st, what);
	stmt_done(s);
	return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -1;
}

/*
 * Like exec_stmt() for an UPDATE or DELETE of one row by id: a missing row
 * is an error, since every caller got the id from this state.
 */
static int exec_update(struct state *st, sqlite3_stmt *s, int rc, const char *what,
    const char *table, int64_t id)
{
	if (exec_stmt(st, s, rc, what) < 0)
		return -1;
	if (sqlite3_changes(st->db) == 0)
		return set_error(st, "%s: no %s with id %lld", what, table, (long long)id);
	return 0;
}

/*
 * Runs SQL that needs no parameters (PRAGMAs, migration scripts) on a bare
 * connection. On failure returns -1 and *msg_r holds SQLite's message.
 */
static int exec_sql(sqlite3 *db, const char *sql, char **msg_r)
{
	char *emsg = NULL;
	int rc;

	rc = sqlite3_exec(db, sql, NULL, NULL, &emsg);
	if (rc != SQLITE_OK) {
		*msg_r = xstrdup(emsg ? emsg : sqlite3_errmsg(db));
		sqlite3_free(emsg);
		return -1;
	}
	return 0;
}

/* Reads a single integer result; -1 on error (SQLite's rc in *rc_r). */
static int query_int(sqlite3 *db, const char *sql, int64_t *v_r, int *rc_r)
{
	sqlite3_stmt *s = NULL;
	int rc;

	rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
	if (rc != SQLITE_OK)
		goto end;
	rc = sqlite3_step(s);
	if (rc != SQLITE_ROW)
		goto end;
	*v_r = sqlite3_column_int64(s, 0);
	rc = SQLITE_OK;
end:
	*rc_r = rc;
	sqlite3_finalize(s);
	return rc == SQLITE_OK ? 0 : -1;
}

/* ---- opening ---- */

/* mkdir -p of the directory part of path; existing directories are left
 * as they are (the user may have chosen their mode). */
static int make_parents(const char *path, char **err_r)
{
	char *dir = xstrdup(path);
	char *slash = strrchr(dir, '/');
	int ret = 0;

	if (!slash || slash == dir)
		goto end;
	*slash = 0;
	for (char *p = dir + 1;; p++) {
		if (*p != '/' && *p != 0)
			continue;
		char c = *p;
		*p = 0;
		if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
			*err_r = xasprintf("cannot create directory '%s': %s", dir,
			    strerror(errno));
			ret = -1;
			goto end;
		}
		*p = c;
		if (!c)
			break;
	}
end:
	free(dir);
	return ret;
}

/*
 * Takes the run lock: an exclusive flock on PATH.lock, which the kernel
 * drops when the process dies, so a crashed run never leaves a stale lock.
 * The lock file is never unlinked: a process could hold a lock on an
 * unlinked inode while another locks a new file of the same name.
 */
static enum state_open_rc take_lock(struct state *st, char **err_r)
{
	char *lpath = xasprintf("%s.lock", st->path);
	enum state_open_rc ret = STATE_OPEN_ERROR;
	char pidbuf[32];
	int fd, rc;

	fd = open(lpath, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600);
	if (fd < 0) {
		*err_r = xasprintf("cannot open lock file '%s': %s", lpath, strerror(errno));
		goto end;
	}
	if (fchmod(fd, 0600) < 0) {
		*err_r = xasprintf("cannot chmod lock file '%s': %s", lpath, strerror(errno));
		goto end;
	}
	do
		rc = flock(fd, LOCK_EX | LOCK_NB);
	while (rc < 0 && errno == EINTR);
	if (rc < 0 && errno == EWOULDBLOCK) {
		/* The holder writes its pid right after locking; if we read
		 * in between, the message goes without it. */
		ssize_t n = pread(fd, pidbuf, sizeof(pidbuf) - 1, 0);
		long pid = 0;
		if (n > 0) {
			pidbuf[n] = 0;
			pid = strtol(pidbuf, NULL, 10);
		}
		if (pid > 0)
			*err_r = xasprintf("state '%s' is in use by another postino run (pid %ld)",
			    st->path, pid);
		else
			*err_r = xasprintf("state '%s' is in use by another postino run",
			    st->path);
		ret = STATE_OPEN_LOCKED;
		goto end;
	}
	if (rc < 0) {
		*err_r = xasprintf("cannot lock '%s': %s", lpath, strerror(errno));
		goto end;
	}
	/* The pid only feeds the message above: failing to write it does not
	 * weaken the lock, so it is not an error. */
	snprintf(pidbuf, sizeof(pidbuf), "%ld\n", (long)getpid());
	if (ftruncate(fd, 0) == 0 && pwrite(fd, pidbuf, strlen(pidbuf), 0) < 0) {
		/* ignored: see above */
	}
	st->lock_fd = fd;
	fd = -1;
	ret = STATE_OPEN_OK;
end:
	if (fd >= 0)
		close(fd);
	free(lpath);
	return ret;
}

/* Creates the database file 0600 before SQLite sees it. */
static int create_db_file(const char *path, char **err_r)
{
	int fd;

	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, 0600);
	if (fd < 0 && errno == EEXIST) {
		/* Existing: check we can open it at all, for a clearer
		 * message than SQLite's "unable to open database file". */
		fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY);
		if (fd < 0) {
			*err_r = xasprintf("cannot open state '%s': %s", path, strerror(errno));
			return -1;
		}
		close(fd);
		return 0;
	}
	if (fd < 0) {
		*err_r = xasprintf("cannot create state '%s': %s", path, strerror(errno));
		return -1;
	}
	/* open() applied the umask; the state holds account names and
	 * message ids, so it is the owner's alone whatever the umask. */
	if (fchmod(fd, 0600) < 0) {
		*err_r = xasprintf("cannot chmod state '%s': %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

/*
 * SQLite already creates -wal and -shm with the database file's mode; this
 * makes sure of it for files left by an older run or another tool. Not
 * umask(): it is process-wide, and other threads may be creating files.
 */
static int chmod_side_files(const char *path, char **err_r)
{
	static const char *const suffix[] = { "-wal", "-shm" };

	for (size_t i = 0; i < ARRAY_SIZE(suffix); i++) {
		char *p = xasprintf("%s%s", path, suffix[i]);
		int rc = chmod(p, 0600);
		if (rc < 0 && errno != ENOENT) {
			*err_r = xasprintf("cannot chmod '%s': %s", p, strerror(errno));
			free(p);
			return -1;
		}
		free(p);
	}
	return 0;
}

/*
 * Applies one migration with its version bump in one transaction, so that a
 * crash leaves the state at a whole version. BEGIN IMMEDIATE then re-reading
 * user_version: another handle (STATE_NOLOCK) may have migrated meanwhile.
 * On failure *msg_r holds SQLite's message.
 */
static int apply_migration(struct state *st, const struct state_migration *m,
    char **msg_r)
{
	char *bump = NULL;
	int64_t v = 0;
	int rc, ret = -1;

	if (exec_sql(st->db, "BEGIN IMMEDIATE", msg_r) < 0)
		return -1;
	if (query_int(st->db, "PRAGMA user_version", &v, &rc) < 0) {
		*msg_r = xstrdup(sqlite3_errmsg(st->db));
		goto end;
	}
	if (v < m->version) {
		if (exec_sql(st->db, m->sql, msg_r) < 0)
			goto end;
		bump = xasprintf("PRAGMA user_version = %d", m->version);
		if (exec_sql(st->db, bump, msg_r) < 0)
			goto end;
		v = m->version;
	}
	if (exec_sql(st->db, "COMMIT", msg_r) < 0)
		goto end;
	st->version = (int)v;
	ret = 0;
end:
	if (ret < 0 && !sqlite3_get_autocommit(st->db))
		sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
	free(bump);
	return ret;
}

/* Brings the schema up to this binary's version. */
static int migrate(struct state *st, char **err_r)
{
	char *msg = NULL;

	for (int i = st->version; i < state_migrations_count; i++) {
		const struct state_migration *m = &state_migrations[i];

		if (apply_migration(st, m, &msg) < 0) {
			*err_r = xasprintf("state '%s': migration %s failed: %s",
			    st->path, m->name, msg);
			free(msg);
			return -1;
		}
	}
	return 0;
}

/* Sets the connection's PRAGMAs (journal mode only when writing). */
static int set_pragmas(struct state *st, char **err_r)
{
	sqlite3_stmt *s = NULL;
	char *msg = NULL;
	int rc;

	if (!(st->flags & STATE_RDONLY)) {
		/* WAL lets status read during a run; the mode is persistent,
		 * but asking again costs nothing and repairs a DB switched
		 * back by hand. */
		rc = sqlite3_prepare_v2(st->db, "PRAGMA journal_mode = WAL", -1, &s, NULL);
		if (rc == SQLITE_OK)
			rc = sqlite3_step(s);
		if (rc != SQLITE_ROW) {
			msg = xstrdup(sqlite3_errmsg(st->db));
			goto fail;
		}
		const char *mode = (const char *)sqlite3_column_text(s, 0);
		if (!mode || sqlite3_stricmp(mode, "wal") != 0) {
			*err_r = xasprintf("state '%s': cannot use WAL journal mode "
			    "(got '%s'; a network file system?)", st->path,
			    mode ? mode : "?");
			sqlite3_finalize(s);
			return -1;
		}
		sqlite3_finalize(s);
		s = NULL;
		/* FULL: a commit is on disk before the action it guards. */
		if (exec_sql(st->db, "PRAGMA synchronous = FULL", &msg) < 0)
			goto fail;
	}
	if (exec_sql(st->db, "PRAGMA foreign_keys = ON", &msg) < 0)
		goto fail;
	return 0;
fail:
	sqlite3_finalize(s);
	*err_r = xasprintf("state '%s': %s", st->path, msg);
	free(msg);
	return -1;
}

/*
 * Reads user_version, which is also the first read of the file: this is
 * where a file that is not a database shows. Refuses a newer schema and
 * a foreign database (version 0 but tables in it).
 */
static int check_version(struct state *st, char **err_r)
{
	int64_t v, ntables;
	int rc;

	if (query_int(st->db, "PRAGMA user_version", &v, &rc) < 0) {
		if ((rc & 0xff) == SQLITE_NOTADB)
			*err_r = xasprintf("'%s' is not a postino state database (%s)",
			    st->path, sqlite3_errmsg(st->db));
		else
			*err_r = xasprintf("cannot read state '%s': %s", st->path,
			    sqlite3_errmsg(st->db));
		return -1;
	}
	if (v > state_migrations_count) {
		*err_r = xasprintf("state '%s' has schema version %lld, newer than this "
		    "postino (%d): upgrade postino", st->path, (long long)v,
		    state_migrations_count);
		return -1;
	}
	if (v < 0) {
		*err_r = xasprintf("'%s' is not a postino state database (schema version %lld)",
		    st->path, (long long)v);
		return -1;
	}
	if (v == 0) {
		if (query_int(st->db, "SELECT count(*) FROM sqlite_schema", &ntables, &rc) < 0) {
			*err_r = xasprintf("cannot read state '%s': %s", st->path,
			    sqlite3_errmsg(st->db));
			return -1;
		}
		if (ntables > 0) {
			*err_r = xasprintf("'%s' is not a postino state database "
			    "(a database of something else)", st->path);
			return -1;
		}
		if (st->flags & STATE_RDONLY) {
			*err_r = xasprintf("no state at '%s' (empty database)", st->path);
			return -1;
		}
	}
	st->version = (int)v;
	return 0;
}

/*
 * SQLite's busy handler for a held lock. Its own (sqlite3_busy_timeout)
 * sleeps 1, 2, 5, 10 ... 100 ms between tries: with four workers taking
 * turns at the write lock a commit of a few milliseconds cost a worker up
 * to tens of milliseconds of sleep (0.19 s in a 2,000-message copy,
 * docs/performance.md). Short sleeps first, then 1 ms, ~10 s in all.
 */
static int busy_wait(void *ctx, int tries)
{
	(void)ctx;
	if (tries >= 10100)
		return 0;
	struct timespec ts = {0, tries < 100 ? 100000L : 1000000L};
	nanosleep(&ts, NULL);
	return 1;
}

enum state_open_rc state_open(struct state **st_r, const char *path, unsigned flags,
    char **err_r)
{
	enum state_open_rc ret = STATE_OPEN_ERROR;
	struct state *st;
	char *err = NULL;
	int oflags, rc;

	*st_r = NULL;
	if (err_r)
		*err_r = NULL;
	st = xcalloc(1, sizeof(*st));
	st->path = xstrdup(path);
	st->flags = flags;
	st->lock_fd = -1;

	if (!*path) {
		err = xstrdup("empty state path");
		goto end;
	}
	if (flags & STATE_RDONLY) {
		struct stat sb;
		/* Reading must not create anything, not even a file SQLite
		 * would make on the way. */
		if (stat(path, &sb) < 0) {
			if (errno == ENOENT)
				err = xasprintf("no state at '%s'", path);
			else
				err = xasprintf("cannot open state '%s': %s", path,
				    strerror(errno));
			goto end;
		}
		oflags = SQLITE_OPEN_READONLY;
	} else {
		if (make_parents(path, &err) < 0)
			goto end;
		if (!(flags & STATE_NOLOCK)) {
			ret = take_lock(st, &err);
			if (ret != STATE_OPEN_OK)
				goto end;
			ret = STATE_OPEN_ERROR;
		}
		if (create_db_file(path, &err) < 0)
			goto end;
		oflags = SQLITE_OPEN_READWRITE;
	}

	rc = sqlite3_open_v2(path, &st->db, oflags, NULL);
	if (rc != SQLITE_OK) {
		err = xasprintf("cannot open state '%s': %s", path,
		    st->db ? sqlite3_errmsg(st->db) : sqlite3_errstr(rc));
		goto end;
	}
	sqlite3_extended_result_codes(st->db, 1);
	/* A worker handle or a status reader may briefly hold the write
	 * lock or a checkpoint; wait rather than fail. */
	sqlite3_busy_handler(st->db, busy_wait, NULL);

	if (check_version(st, &err) < 0)
		goto end;
	if (set_pragmas(st, &err) < 0)
		goto end;
	if (!(flags & STATE_RDONLY)) {
		if (migrate(st, &err) < 0)
			goto end;
		if (chmod_side_files(path, &err) < 0)
			goto end;
	}
	if (st->version == state_migrations_count) {
		for (int i = 0; i < ST__COUNT; i++) {
			if (!stmt_get(st, (enum stmt_id)i)) {
				err = xasprintf("state '%s': %s", path, st->err);
				goto end;
			}
		}
	}
	ret = STATE_OPEN_OK;
end:
	if (ret != STATE_OPEN_OK) {
		state_close(&st);
		if (err_r)
			*err_r = err;
		else
			free(err);
		return ret;
	}
	*st_r = st;
	return STATE_OPEN_OK;
}

void state_close(struct state **stp)
{
	struct state *st = *stp;

	if (!st)
		return;
	for (int i = 0; i < ST__COUNT; i++)
		sqlite3_finalize(st->stmt[i]);
	/* The last connection to close checkpoints and removes -wal/-shm. */
	sqlite3_close_v2(st->db);
	if (st->lock_fd >= 0) {
		/* Clear our pid so it does not outlive the lock; the lock
		 * itself goes with the descriptor. */
		if (ftruncate(st->lock_fd, 0) < 0) {
			/* harmless: the pid is only read while locked */
		}
		close(st->lock_fd);
	}
	free(st->path);
	free(st->err);
	free(st);
	*stp = NULL;
}

/* The file systems where link() cannot work but rename() may. */
static bool no_hard_links(int e)
{
	return e == EPERM || e == ENOTSUP || e == EOPNOTSUPP || e == ENOSYS || e == EMLINK;
}

int state_move(const char *from, const char *to, char **err_r)
{
	struct state *st = xcalloc(1, sizeof(*st));
	char *wal = xasprintf("%s-wal", from), *shm = xasprintf("%s-shm", from);
	sqlite3 *db = NULL;
	sqlite3_stmt *s = NULL;
	struct stat sb;
	int rc, ret;

	*err_r = NULL;
	st->path = xstrdup(from);
	st->lock_fd = -1;
	ret = take_lock(st, err_r);
	if (ret != STATE_OPEN_OK)
		goto end;
	ret = STATE_OPEN_ERROR;

	/* Under the lock, look again: another run may have moved it first. */
	if (lstat(from, &sb) < 0) {
		if (errno == ENOENT)
			ret = 0;
		else
			*err_r = xasprintf("cannot open state '%s': %s", from, strerror(errno));
		goto end;
	}
	if (lstat(to, &sb) == 0) {
		ret = 0;
		goto end;
	}
	if (errno != ENOENT) {
		*err_r = xasprintf("cannot open state '%s': %s", to, strerror(errno));
		goto end;
	}

	/* The WAL goes by the file's name: fold it in before renaming. */
	rc = sqlite3_open_v2(from, &db, SQLITE_OPEN_READWRITE, NULL);
	if (rc == SQLITE_OK) {
		sqlite3_busy_timeout(db, 10000);
		rc = sqlite3_prepare_v2(db, "PRAGMA wal_checkpoint(TRUNCATE)", -1, &s, NULL);
	}
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc != SQLITE_ROW) {
		*err_r = xasprintf("cannot open state '%s': %s", from,
		    db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
		goto end;
	}
	if (sqlite3_column_int(s, 0) != 0) {
		*err_r = xasprintf("state '%s' is being read by another process", from);
		goto end;
	}
	sqlite3_finalize(s);
	s = NULL;
	rc = sqlite3_close(db);
	db = NULL;
	if (rc != SQLITE_OK || (stat(wal, &sb) == 0 && sb.st_size > 0)) {
		*err_r = xasprintf("state '%s': cannot checkpoint its WAL", from);
		goto end;
	}

	/* link, then unlink: at every moment one of the names is the state,
	 * and an existing `to` is never replaced. */
	if (link(from, to) == 0) {
		if (unlink(from) < 0) {
			*err_r = xasprintf("cannot remove '%s': %s", from, strerror(errno));
			unlink(to);
			goto end;
		}
	} else if (errno == EEXIST) {
		ret = 0;
		goto end;
	} else if (!no_hard_links(errno) || rename(from, to) < 0) {
		*err_r = xasprintf("cannot rename '%s' to '%s': %s", from, to, strerror(errno));
		goto end;
	}
	/* Left by the checkpoint's connection, empty; the lock file stays
	 * (see take_lock). */
	unlink(wal);
	unlink(shm);
	ret = 1;
end:
	sqlite3_finalize(s);
	sqlite3_close(db);
	state_close(&st);
	free(wal);
	free(shm);
	return ret;
}

int state_integrity_check(struct state *st)
{
	sqlite3_stmt *s = NULL;
	char *first = NULL;
	int nproblems = 0;
	int rc, ret = -1;

	rc = sqlite3_prepare_v2(st->db, "PRAGMA quick_check", -1, &s, NULL);
	if (rc != SQLITE_OK) {
		db_error(st, "cannot check state");
		goto end;
	}
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		const char *line = (const char *)sqlite3_column_text(s, 0);
		if (line && strcmp(line, "ok") == 0)
			continue;
		if (!first)
			first = xstrdup(line ? line : "?");
		nproblems++;
	}
	if (rc != SQLITE_DONE) {
		db_error(st, "cannot check state");
		goto end;
	}
	if (first) {
		set_error(st, "state '%s' is damaged: %s%s", st->path, first,
		    nproblems > 1 ? " (and more)" : "");
		goto end;
	}
	ret = 0;
end:
	sqlite3_finalize(s);
	free(first);
	return ret;
}

/* ---- transactions ---- */

int state_begin(struct state *st)
{
	sqlite3_stmt *s = stmt_get(st, st->flags & STATE_RDONLY ? ST_BEGIN_READ : ST_BEGIN);

	if (!s)
		return -1;
	return exec_stmt(st, s, SQLITE_OK, "cannot begin transaction");
}

int state_commit(struct state *st)
{
	sqlite3_stmt *s = stmt_get(st, ST_COMMIT);

	if (!s)
		return -1;
	return exec_stmt(st, s, SQLITE_OK, "cannot commit");
}

void state_rollback(struct state *st)
{
	sqlite3_stmt *s;

	/* SQLite may already have rolled back (after SQLITE_FULL, for
	 * instance); and the caller's error message must survive. */
	if (sqlite3_get_autocommit(st->db))
		return;
	s = stmt_get(st, ST_ROLLBACK);
	if (!s) {
		sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
		return;
	}
	sqlite3_step(s);
	stmt_done(s);
}

/* Opens a write transaction unless the caller is already in one. */
static int begin_if_needed(struct state *st, bool *own)
{
	*own = false;
	if (!sqlite3_get_autocommit(st->db))
		return 0;
	if (state_begin(st) < 0)
		return -1;
	*own = true;
	return 0;
}

/* ---- meta and accounts ---- */

int state_meta_get(struct state *st, const char *key, char **value_r)
{
	sqlite3_stmt *s = stmt_get(st, ST_META_GET);
	int rc, ret = -1;

	*value_r = NULL;
	if (!s)
		return -1;
	rc = sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		*value_r = column_strdup(s, 0);
		ret = 1;
	} else if (rc == SQLITE_DONE) {
		ret = 0;
	} else {
		db_error(st, "cannot read meta");
	}
	stmt_done(s);
	return ret;
}

int state_meta_set(struct state *st, const char *key, const char *value)
{
	sqlite3_stmt *s = stmt_get(st, value ? ST_META_SET : ST_META_DEL);
	int rc;

	if (!s)
		return -1;
	rc = sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
	if (rc == SQLITE_OK && value)
		rc = sqlite3_bind_text(s, 2, value, -1, SQLITE_STATIC);
	return exec_stmt(st, s, rc, "cannot write meta");
}

/* Reads the URL recorded for a side; NULL in *url_r if none. */
static int account_get(struct state *st, int side, char **url_r)
{
	sqlite3_stmt *s = stmt_get(st, ST_ACCOUNT_GET);
	int rc;

	*url_r = NULL;
	if (!s)
		return -1;
	rc = sqlite3_bind_int(s, 1, side);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc == SQLITE_ROW)
		*url_r = column_strdup(s, 0);
	else if (rc != SQLITE_DONE)
		db_error(st, "cannot read accounts");
	stmt_done(s);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1;
}

/*
 * Whether a recorded account names this one: the same string, or a display
 * URL (what states recorded before account identities: TLS mode and
 * mechanism included) whose identity it is.
 */
static bool same_account(const char *recorded, const char *account)
{
	struct account_url u;
	bool same;

	if (strcmp(recorded, account) == 0)
		return true;
	if (url_parse(recorded, &u, NULL) < 0)
		return false;
	same = strcmp(u.account, account) == 0;
	url_free(&u);
	return same;
}

/* Runs statement `which` (ST_ACCOUNT_ADD or _SET) for one side. */
static int account_put(struct state *st, enum stmt_id which, int side, const char *account)
{
	sqlite3_stmt *s = stmt_get(st, which);
	if (!s)
		return -1;
	int rc = sqlite3_bind_int(s, 1, side);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_text(s, 2, account, -1, SQLITE_STATIC);
	return exec_stmt(st, s, rc, "cannot record accounts");
}

int state_bind_accounts(struct state *st, const char *a_account, const char *b_account)
{
	const char *want[2] = { a_account, b_account };
	char *have[2] = { NULL, NULL };
	bool own = false;
	int ret = -1;

	/* One transaction, so that a crash cannot record one side only, nor
	 * rewrite one old display form and not the other. */
	if (begin_if_needed(st, &own) < 0)
		return -1;
	for (int side = 0; side < 2; side++)
		if (account_put(st, ST_ACCOUNT_ADD, side, want[side]) < 0 ||
		    account_get(st, side, &have[side]) < 0)
			goto end;
	if (!have[0] || !have[1] || !same_account(have[0], a_account) ||
	    !same_account(have[1], b_account)) {
		set_error(st, "state '%s' belongs to '%s' -> '%s', not '%s' -> '%s' "
		    "(wrong state file?)", st->path, have[0] ? have[0] : "?",
		    have[1] ? have[1] : "?", a_account, b_account);
		goto end;
	}
	/* An old display form becomes the identity: later runs compare strings. */
	for (int side = 0; side < 2; side++)
		if (strcmp(have[side], want[side]) != 0 &&
		    account_put(st, ST_ACCOUNT_SET, side, want[side]) < 0)
			goto end;
	if (own && state_commit(st) < 0)
		goto end;
	own = false;
	ret = 0;
end:
	if (own)
		state_rollback(st);
	free(have[0]);
	free(have[1]);
	return ret;
}

/* ---- folder pairs ---- */

void fpair_release(struct fpair *fp)
{
	free(fp->a_name);
	free(fp->b_name);
	fp->a_name = fp->b_name = NULL;
}

static void pair_from_row(sqlite3_stmt *s, struct fpair *fp)
{
	fp->id = sqlite3_column_int64(s, 0);
	fp->a_name = column_strdup(s, 1);
	fp->b_name = column_strdup(s, 2);
	fp->a_uidvalidity = (uint32_t)sqlite3_column_int64(s, 3);
	fp->b_uidvalidity = (uint32_t)sqlite3_column_int64(s, 4);
	fp->a_uidnext = (uint32_t)sqlite3_column_int64(s, 5);
	fp->b_uidnext = (uint32_t)sqlite3_column_int64(s, 6);
	fp->a_hms = (uint64_t)sqlite3_column_int64(s, 7);
	fp->b_hms = (uint64_t)sqlite3_column_int64(s, 8);
	fp->a_exists = (uint32_t)sqlite3_column_int64(s, 9);
	fp->b_exists = (uint32_t)sqlite3_column_int64(s, 10);
	fp->last_done = sqlite3_column_int64(s, 11);
}

int state_pair_find(struct state *st, const char *a_name, const char *b_name,
    struct fpair *fp)
{
	sqlite3_stmt *s = stmt_get(st, ST_PAIR_FIND);
	int rc, ret = -1;

	memset(fp, 0, sizeof(*fp));
	if (!s)
		return -1;
	rc = sqlite3_bind_text(s, 1, a_name, -1, SQLITE_STATIC);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_text(s, 2, b_name, -1, SQLITE_STATIC);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		pair_from_row(s, fp);
		ret = 1;
	} else if (rc == SQLITE_DONE) {
		ret = 0;
	} else {
		db_error(st, "cannot read folder pair");
	}
	stmt_done(s);
	return ret;
}

int state_pair_get(struct state *st, const char *a_name, const char *b_name,
    struct fpair *fp)
{
	sqlite3_stmt *s = stmt_get(st, ST_PAIR_ADD);
	int rc;

	memset(fp, 0, sizeof(*fp));
	if (!s)
		return -1;
	/* OR IGNORE: the pair may exist; the UNIQUE (a_name, b_name)
	 * constraint makes this one atomic step even without a transaction. */
	rc = sqlite3_bind_text(s, 1, a_name, -1, SQLITE_STATIC);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_text(s, 2, b_name, -1, SQLITE_STATIC);
	if (exec_stmt(st, s, rc, "cannot add folder pair") < 0)
		return -1;
	rc = state_pair_find(st, a_name, b_name, fp);
	if (rc == 0)
		return set_error(st, "folder pair '%s' -> '%s' vanished after insert",
		    a_name, b_name);
	return rc < 0 ? -1 : 0;
}

int state_pair_save(struct state *st, const struct fpair *fp)
{
	sqlite3_stmt *s = stmt_get(st, ST_PAIR_SAVE);
	int rc;

	if (!s)
		return -1;
	rc = sqlite3_bind_int64(s, 1, fp->id);
	if (rc == SQLITE_OK)
		rc = bind_text(s, 2, fp->a_name);
	if (rc == SQLITE_OK)
		rc = bind_text(s, 3, fp->b_name);
	if (rc == SQLITE_OK)
		rc = bind_opt(s, 4, fp->a_uidvalidity);
	if (rc == SQLITE_OK)
		rc = bind_opt(s, 5, fp->b_uidvalidity);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s, 6, fp->a_uidnext);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s, 7, fp->b_uidnext);
	/* RFC 7162 bounds mod-sequences to 2^63-1: they fit an int64. */
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s, 8, (int64_t)fp->a_hms);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s, 9, (int64_t)fp->b_hms);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s, 10, fp->a_exists);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s, 11, fp->b_exists);
	if (rc == SQLITE_OK)
		rc = bind_opt(s, 12, fp->last_done);
	return exec_update(st, s, rc, "cannot save folder pair", "folder pair", fp->id);
}

int state_pairs_each(struct state *st, state_pair_cb *cb, void *ctx)
{
	sqlite3_stmt *s = stmt_get(st, ST_PAIRS_ALL);
	struct fpair *pairs = NULL;
	size_t n = 0, cap = 0, i = 0;
	int rc, ret = -1;

	if (!s)
		return -1;
	/* Folder pairs are few (one per folder): read them all, then call
	 * back with no statement active. */
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			pairs = xrealloc(pairs, cap * sizeof(*pairs));
		}
		pair_from_row(s, &pairs[n++]);
	}
	if (rc != SQLITE_DONE) {
		db_error(st, "cannot list folder pairs");
		stmt_done(s);
		goto end;
	}
	stmt_done(s);
	ret = 0;
	for (; i < n && ret == 0; i++)
		ret = cb(ctx, &pairs[i]);
end:
	for (i = 0; i < n; i++)
		fpair_release(&pairs[i]);
	free(pairs);
	return ret;
}

/* ---- messages ---- */

void msg_row_release(struct msg_row *r)
{
	free(r->a_uidl);
	free(r->msgid);
	free(r->flags);
	free(r->error);
	r->a_uidl = r->msgid = r->flags = r->error = NULL;
}

static void msg_from_row(sqlite3_stmt *s, struct msg_row *r)
{
	memset(r, 0, sizeof(*r));
	r->id = sqlite3_column_int64(s, 0);
	r->pair = sqlite3_column_int64(s, 1);
	r->a_uid = (uint32_t)sqlite3_column_int64(s, 2);
	r->b_uid = (uint32_t)sqlite3_column_int64(s, 3);
	r->a_uidl = column_strdup(s, 4);
	r->state = (enum msg_state)sqlite3_column_int(s, 5);
	r->dir = sqlite3_column_int(s, 6);
	r->size = (uint64_t)sqlite3_column_int64(s, 7);
	r->msgid = column_strdup(s, 8);
	/* Anything but 32 bytes was not written by us: treat as absent. */
	if (sqlite3_column_type(s, 9) == SQLITE_BLOB &&
	    sqlite3_column_bytes(s, 9) == (int)sizeof(r->sha256)) {
		memcpy(r->sha256, sqlite3_column_blob(s, 9), sizeof(r->sha256));
		r->has_sha = true;
	}
	r->flags = column_strdup(s, 10);
	if (!r->flags)
		r->flags = xstrdup("");
	r->idate = sqlite3_column_int64(s, 11);
	r->t_uidnext = (uint32_t)sqlite3_column_int64(s, 12);
	r->tries = sqlite3_column_int(s, 13);
	r->error = column_strdup(s, 14);
	r->updated = sqlite3_column_int64(s, 15);
	r->a_gone = sqlite3_column_int64(s, 16);
}

int state_msg_insert(struct state *st, struct msg_row *r)
{
	sqlite3_stmt *s = stmt_get(st, ST_MSG_INSERT);
	int rc;

	if (!s)
		return -1;
	rc = sqlite3_bind_int64(s, 1, r->pair);
	if (rc == SQLITE_OK)
		rc = bind_opt(s, 2, r->a_uid);
	if (rc == SQLITE_OK)
		rc = bind_opt(s, 3, r->b_uid);
	if (rc == SQLITE_OK)
		rc = bind_text(s, 4, r->a_uidl);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int(s, 5, (int)r->state);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int(s, 6, r->dir);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s, 7, (int64_t)r->size);
	if (rc == SQLITE_OK)
		rc = bind_text(s, 8, r->msgid);
	if (rc == SQLITE_OK) {
		if (r->has_sha)
			rc = sqlite3_bind_blob(s, 9, r->sha256, sizeof(r->sha256),
			    SQLITE_STATIC);
		else
			rc = sqlite3_bind_null(s, 9);
	}
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_text(s, 10, r->flags ? r->flags : "", -1, SQLITE_STATIC);
	if (rc == SQLITE_OK)
		rc = bind_opt(s, 11, r->idate);
	if (rc == SQLITE_OK)
		rc = bind_opt(s, 12, r->t_uidnext);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int(s, 13, r->tries);
	if (rc == SQLITE_OK)
		rc = bind_text(s, 14, r->error);
	if (exec_stmt(st, s, rc, "cannot insert message") < 0)
		return -1;
	r->id = sqlite3_last_insert_rowid(st->db);
	return 0;
}

/* Runs a by-key lookup whose key is already bound. */
static int msg_lookup(struct state *st, sqlite3_stmt *s, int rc, struct msg_row *r)
{
	int ret = -1;

	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		msg_from_row(s, r);
		ret = 1;
	} else if (rc == SQLITE_DONE) {
		ret = 0;
	} else {
		db_error(st, "cannot read message");
	}
	stmt_done(s);
	return ret;
}

/* The three lookups share a shape: pair plus an integer side key. */
static int msg_by_uid(struct state *st, enum stmt_id id, int64_t pair, uint32_t uid,
    struct msg_row *r)
{
	sqlite3_stmt *s = stmt_get(st, id);
	int rc;

	memset(r, 0, sizeof(*r));
	if (!s)
		return -1;
	rc = sqlite3_bind_int64(s, 1, pair);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s, 2, uid);
	return msg_lookup(st, s, rc, r);
}

int state_msg_by_a(struct state *st, int64_t pair, uint32_t a_uid, struct msg_row *r)
{
	return msg_by_uid(st, ST_MSG_BY_A, pair, a_uid, r);
}

int state_msg_by_b(struct state *st, int64_t pair, uint32_t b_uid, struct msg_row *r)
{
	return msg_by_uid(st, ST_MSG_BY_B, pair, b_uid, r);
}

int state_msg_by_uidl(struct state *st, int64_t pair, const char *uidl, struct msg_row *r)
{
	sqlite3_stmt *s = stmt_get(st, ST_MSG_BY_UIDL);
	int rc;

	memset(r, 0, sizeof(*r));
	if (!s)
		return -1;
	rc = sqlite3_bind_int64(s, 1, pair);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_text(s, 2, uidl, -1, SQLITE_STATIC);
	return msg_lookup(st, s, rc, r);
}

int state_msg_synced(struct state *st, int64_t id, uint32_t b_uid, const char *flags)
{
	return state_msg_synced_side(st, id, 1, b_uid, flags);
}

int state_msg_synced_side(struct state *st, int64_t id, int side, uint32_t uid,
    const char *flags)
{
	sqlite3_stmt *s = stmt_get(st, side ? ST_MSG_SYNCED : ST_MSG_SYNCED_A);
	uint32_t b_uid = uid;
	int rc;

	if (!s)
		return -1;
	rc = sqlite3_bind_int64(s, 1, id);
	if (rc == SQLITE_OK)
		rc = bind_opt(s, 2, b_uid);
	if (rc == SQLITE_OK)
		rc = bind_text(s, 3, flags);
	return exec_update(st, s, rc, "cannot mark message synced", "message", id);
}

int state_msg_refused(struct state *st, int64_t id, const char *error)
{
	sqlite3_stmt *s = stmt_get(st, ST_MSG_REFUSED);
	int rc;

	if (!s)
		return -1;
	rc = sqlite3_bind_int64(s, 1, id);
	if (rc == SQLITE_OK)
		rc = bind_text(s, 2, error);
	return exec_update(st, s, rc, "cannot mark message refused", "message", id);
}

int state_msg_set_flags(struct state *st, int64_t id, const char *flags)
{
	sqlite3_stmt *s = stmt_get(st, ST_MSG_FLAGS);
	int rc;

	if (!s)
		return -1;
	rc = sqlite3_bind_int64(s, 1, id);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_text(s, 2, flags ? flags : "", -1, SQLITE_STATIC);
	return exec_update(st, s, rc, "cannot set message flags", "message", id);
}

static int msg_set_uid(struct state *st, enum stmt_id sid, int64_t id, uint32_t uid)
{
	sqlite3_stmt *s = stmt_get(st, sid);
	int rc;

	if (!s)
		return -1;
	rc = sqlite3_bind_int64(s, 1, id);
	if (rc == SQLITE_OK)
		rc = bind_opt(s, 2, uid);
	return exec_update(st, s, rc, "cannot set message uid", "message", id);
}

int state_msg_set_a_uid(struct state *st, int64_t id, uint32_t a_uid)
{
	return msg_set_uid(st, ST_MSG_A_UID, id, a_uid);
}

int state_msg_set_b_uid(struct state *st, int64_t id, uint32_t b_uid)
{
	return msg_set_uid(st, ST_MSG_B_UID, id, b_uid);
}

int state_msg_delete(struct state *st, int64_t id)
{
	sqlite3_stmt *s = stmt_get(st, ST_MSG_DELETE);

	if (!s)
		return -1;
	return exec_update(st, s, sqlite3_bind_int64(s, 1, id), "cannot delete message",
	    "message", id);
}

/*
 * Iterates in two steps: first the matching ids (8 bytes a row, read from
 * an index), then each row by primary key just before its callback. No
 * statement is active while a callback runs, so it may update, delete or
 * insert rows, or iterate itself. Rows inserted meanwhile are not visited;
 * rows deleted, or moved out of the requested state, before their turn are
 * skipped; a callback sees its row as it is at that moment.
 */
int state_msgs_each(struct state *st, int64_t pair, int state, state_msg_cb *cb, void *ctx)
{
	enum stmt_id sid;
	sqlite3_stmt *s;
	int64_t *ids = NULL;
	size_t n = 0, cap = 0;
	int rc, ret = -1;

	if (state < 0)
		sid = ST_MSG_IDS_ALL;
	else if (state == MSG_SYNCED)
		sid = ST_MSG_IDS_STATE;
	else
		sid = ST_MSG_IDS_UNSYNCED;
	s = stmt_get(st, sid);
	if (!s)
		return -1;
	rc = sqlite3_bind_int64(s, 1, pair);
	if (rc == SQLITE_OK && state >= 0)
		rc = sqlite3_bind_int(s, 2, state);
	if (rc == SQLITE_OK) {
		while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
			if (n == cap) {
				cap = cap ? cap * 2 : 256;
				ids = xrealloc(ids, cap * sizeof(*ids));
			}
			ids[n++] = sqlite3_column_int64(s, 0);
		}
	}
	if (rc != SQLITE_DONE) {
		db_error(st, "cannot list messages");
		stmt_done(s);
		goto end;
	}
	stmt_done(s);

	s = stmt_get(st, ST_MSG_BY_ID);
	if (!s)
		goto end;
	ret = 0;
	for (size_t i = 0; i < n && ret == 0; i++) {
		struct msg_row r;

		rc = msg_lookup(st, s, sqlite3_bind_int64(s, 1, ids[i]), &r);
		if (rc < 0) {
			ret = -1;
			break;
		}
		if (rc == 0)
			continue;
		if (state < 0 || (int)r.state == state)
			ret = cb(ctx, &r);
		msg_row_release(&r);
	}
end:
	free(ids);
	return ret;
}

int state_pair_forget_uids(struct state *st, int64_t pair, int side)
{
	sqlite3_stmt *s;

	if (side != 0 && side != 1)
		return set_error(st, "cannot forget uids: bad side %d", side);
	s = stmt_get(st, side == 0 ? ST_FORGET_A : ST_FORGET_B);
	if (!s)
		return -1;
	return exec_stmt(st, s, sqlite3_bind_int64(s, 1, pair), "cannot forget uids");
}

int state_pair_counts(struct state *st, int64_t pair, int64_t counts[3])
{
	sqlite3_stmt *s;
	int64_t total = 0;
	int rc;

	counts[0] = counts[1] = counts[2] = 0;
	s = stmt_get(st, ST_COUNT_ALL);
	if (!s)
		return -1;
	rc = sqlite3_bind_int64(s, 1, pair);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		total = sqlite3_column_int64(s, 0);
		rc = SQLITE_DONE;
	}
	if (rc != SQLITE_DONE) {
		db_error(st, "cannot count messages");
		stmt_done(s);
		return -1;
	}
	stmt_done(s);

	s = stmt_get(st, ST_COUNT_UNSYNCED);
	if (!s)
		return -1;
	rc = sqlite3_bind_int64(s, 1, pair);
	if (rc == SQLITE_OK) {
		while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
			int k = sqlite3_column_int(s, 0);
			if (k == MSG_PENDING || k == MSG_REFUSED)
				counts[k] = sqlite3_column_int64(s, 1);
		}
	}
	if (rc != SQLITE_DONE) {
		db_error(st, "cannot count messages");
		stmt_done(s);
		return -1;
	}
	stmt_done(s);
	/* Both counts come from one snapshot only inside a transaction; in
	 * autocommit a concurrent writer could skew this by a few rows. */
	counts[MSG_SYNCED] = total - counts[MSG_PENDING] - counts[MSG_REFUSED];
	if (counts[MSG_SYNCED] < 0)
		counts[MSG_SYNCED] = 0;
	return 0;
}

/* ---- runs ---- */

int state_run_begin(struct state *st, const char *command, int64_t *run_id)
{
	sqlite3_stmt *s = stmt_get(st, ST_RUN_BEGIN);
	int rc;

	*run_id = 0;
	if (!s)
		return -1;
	rc = sqlite3_bind_text(s, 1, command, -1, SQLITE_STATIC);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s, 2, (int64_t)time(NULL));
	if (exec_stmt(st, s, rc, "cannot record run") < 0)
		return -1;
	*run_id = sqlite3_last_insert_rowid(st->db);
	return 0;
}

int state_run_end(struct state *st, int64_t run_id, int exit_code, int64_t copied,
    int64_t bytes, int64_t flags_set, int64_t refused, const char *summary)
{
	sqlite3_stmt *s = stmt_get(st, ST_RUN_END);
	int rc;

	if (!s)
		return -1;
	rc = sqlite3_bind_int64(s, 1, run_id);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s, 2, (int64_t)time(NULL));
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int(s, 3, exit_code);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s, 4, copied);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s, 5, bytes);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s, 6, flags_set);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s, 7, refused);
	if (rc == SQLITE_OK)
		rc = bind_text(s, 8, summary);
	return exec_update(st, s, rc, "cannot record end of run", "run", run_id);
}

/* ---- re-pairing ---- */

int64_t state_pair_orphans(struct state *st, int64_t pair)
{
	sqlite3_stmt *s = stmt_get(st, ST_ORPHAN_COUNT);
	int64_t n = -1;
	int rc;

	if (!s)
		return -1;
	rc = sqlite3_bind_int64(s, 1, pair);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc == SQLITE_ROW)
		n = sqlite3_column_int64(s, 0);
	else
		db_error(st, "cannot count orphan messages");
	stmt_done(s);
	return n;
}

int state_msg_find_orphan(struct state *st, int64_t pair, uint64_t size,
    const uint8_t sha256[32], struct msg_row *r)
{
	sqlite3_stmt *s = stmt_get(st, ST_ORPHAN_FIND);
	int rc;

	memset(r, 0, sizeof(*r));
	if (!s)
		return -1;
	rc = sqlite3_bind_int64(s, 1, pair);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s, 2, (int64_t)size);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_blob(s, 3, sha256, 32, SQLITE_STATIC);
	return msg_lookup(st, s, rc, r);
}

int state_msg_set_gone(struct state *st, int64_t id, int64_t when)
{
	sqlite3_stmt *s = stmt_get(st, ST_MSG_GONE);
	int rc;

	if (!s)
		return -1;
	rc = sqlite3_bind_int64(s, 1, id);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s, 2, when);
	return exec_update(st, s, rc, "cannot record a deletion", "message", id);
}

int state_msg_move(struct state *st, int64_t id, int64_t pair, uint32_t a_uid, uint32_t b_uid)
{
	sqlite3_stmt *s = stmt_get(st, ST_MSG_MOVE);
	int rc;

	if (!s)
		return -1;
	rc = sqlite3_bind_int64(s, 1, id);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s, 2, pair);
	if (rc == SQLITE_OK)
		rc = bind_opt(s, 3, a_uid);
	if (rc == SQLITE_OK)
		rc = bind_opt(s, 4, b_uid);
	return exec_update(st, s, rc, "cannot move message", "message", id);
}

int state_runs_each(struct state *st, int limit, state_run_cb *cb, void *ctx)
{
	sqlite3_stmt *s = stmt_get(st, ST_RUNS_LAST);
	int rc, ret = 0;

	if (!s)
		return -1;
	rc = sqlite3_bind_int(s, 1, limit);
	while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		struct run_row r = {
			.id = sqlite3_column_int64(s, 0),
			.command = (const char *)sqlite3_column_text(s, 1),
			.started = sqlite3_column_int64(s, 2),
			.ended = sqlite3_column_int64(s, 3),
			.exit_code = sqlite3_column_type(s, 4) == SQLITE_NULL ? -1
			    : sqlite3_column_int(s, 4),
			.copied = sqlite3_column_int64(s, 5),
			.bytes = sqlite3_column_int64(s, 6),
			.flags_set = sqlite3_column_int64(s, 7),
			.refused = sqlite3_column_int64(s, 8),
			.summary = (const char *)sqlite3_column_text(s, 9),
		};
		ret = cb(ctx, &r);
		if (ret) {
			rc = SQLITE_DONE;
			break;
		}
		rc = SQLITE_OK;
	}
	if (rc != SQLITE_DONE && rc != SQLITE_OK) {
		db_error(st, "cannot read runs");
		ret = -1;
	}
	stmt_done(s);
	return ret;
}

int state_pair_retire_orphans(struct state *st, int64_t pair, int64_t when)
{
	sqlite3_stmt *s = stmt_get(st, ST_ORPHAN_RETIRE);
	int rc;

	if (!s)
		return -1;
	rc = sqlite3_bind_int64(s, 1, pair);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s, 2, when);
	return exec_stmt(st, s, rc, "cannot retire orphan messages");
}
