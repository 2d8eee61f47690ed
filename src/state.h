/*
 * state.h — the state DB: what postino knows about a job between runs.
 *
 * One SQLite database per job (account pair), schema in state/NNN-*.sql,
 * applied in order with PRAGMA user_version, each step in one transaction;
 * a database newer than this binary is refused. WAL, synchronous=FULL
 * (a commit is durable before the action it guards: see "exactly once" in
 * docs/design.md), foreign keys on. An exclusive lock (flock on FILE.lock)
 * refuses a second run on the same state while one runs; readers (status)
 * do not take it.
 *
 * Functions return 0 on success and -1 on failure with state_error() set,
 * unless stated otherwise.
 */
#ifndef POSTINO_STATE_H
#define POSTINO_STATE_H

#include <stdbool.h>
#include <stdint.h>

struct state_migration {
	int version;
	const char *name;
	const char *sql;
};
extern const struct state_migration state_migrations[];
extern const int state_migrations_count;

struct state;

enum state_open_rc {
	STATE_OPEN_OK = 0,
	STATE_OPEN_ERROR = -1,  /* unusable: path, permissions, corrupt, newer */
	STATE_OPEN_LOCKED = -2, /* another run holds it */
};

enum {
	STATE_RDONLY = 1 << 0,  /* no lock, no migration: status, plan */
	STATE_NOLOCK = 1 << 1,  /* worker handle of a run that holds the lock */
};

/*
 * Opens (creating 0600 file and parent directories) and migrates.
 * On failure *st_r is NULL and *err_r (if err_r is not NULL) holds a
 * one-line message the caller frees. STATE_RDONLY opens an existing state
 * only ("no state at ..." otherwise) and creates nothing.
 */
enum state_open_rc state_open(struct state **st_r, const char *path, unsigned flags,
    char **err_r);
void state_close(struct state **st);
const char *state_error(const struct state *st);
const char *state_path(const struct state *st);
int state_schema_version(const struct state *st);
/* PRAGMA quick_check: 0 if the database is sound, -1 (error set) if not. */
int state_integrity_check(struct state *st);

/*
 * Moves the state at `from` to `to`, a name that must not exist yet (the
 * job's default state path changed: cli.c). It takes from's run lock, so
 * that no run is using it, and folds its WAL into the database file (a
 * crashed run may have left committed transactions there); then links
 * `to` and removes `from`: at every moment one of the two names is the
 * state, and an existing `to` is never replaced. Returns 1 if it moved the
 * state; 0 if there was nothing to move (`from` is gone, or `to` exists:
 * another run was first); STATE_OPEN_LOCKED if a run holds `from`, or
 * STATE_OPEN_ERROR, both with *err_r set to one line (caller frees).
 */
int state_move(const char *from, const char *to, char **err_r);

/*
 * Records the job's accounts (struct account_url's `account` identities) on
 * first use; afterwards refuses (returns -1) a state that belongs to other
 * accounts, so that a --state mix-up cannot pair the wrong mailboxes. A
 * state recorded by an older postino holds display URLs: one whose
 * identity is the same account is accepted and rewritten to the identity,
 * in the same transaction.
 */
int state_bind_accounts(struct state *st, const char *a_account, const char *b_account);

/*
 * BEGIN IMMEDIATE (a deferred BEGIN on a STATE_RDONLY handle). Outside a
 * transaction every call commits on its own. state_rollback() keeps
 * state_error() as it was and does nothing outside a transaction.
 */
int state_begin(struct state *st);
int state_commit(struct state *st);
void state_rollback(struct state *st);

int state_meta_get(struct state *st, const char *key, char **value_r); /* 1 found, 0 not */
int state_meta_set(struct state *st, const char *key, const char *value); /* NULL deletes */

/* ---- folder pairs ---- */

struct fpair {
	int64_t id;
	char *a_name, *b_name;
	uint32_t a_uidvalidity, b_uidvalidity; /* 0: not yet known */
	uint32_t a_uidnext, b_uidnext;
	uint64_t a_hms, b_hms;                 /* HIGHESTMODSEQ */
	uint32_t a_exists, b_exists;
	int64_t last_done;
};
void fpair_release(struct fpair *fp);
/* The functions that fill an fpair or msg_row zero it first; the caller
 * releases it (harmless when nothing was found). */

/* Finds the pair (a_name, b_name), creating it if absent. */
int state_pair_get(struct state *st, const char *a_name, const char *b_name,
    struct fpair *fp);
/* Finds an existing pair; 1 found, 0 not, -1 error. */
int state_pair_find(struct state *st, const char *a_name, const char *b_name,
    struct fpair *fp);
int state_pair_save(struct state *st, const struct fpair *fp);

/* Returns 0, -1, or the callback's first non-zero return (which stops). */
typedef int state_pair_cb(void *ctx, const struct fpair *fp);
int state_pairs_each(struct state *st, state_pair_cb *cb, void *ctx);

/* ---- messages ---- */

enum msg_state { MSG_PENDING = 0, MSG_SYNCED = 1, MSG_REFUSED = 2 };

struct msg_row {
	int64_t id;
	int64_t pair;
	uint32_t a_uid, b_uid;  /* 0: unknown */
	char *a_uidl;
	enum msg_state state;
	int dir;                /* 0: a->b; 1: b->a */
	uint64_t size;
	char *msgid;
	uint8_t sha256[32];
	bool has_sha;
	char *flags;            /* canonical (flags.h) */
	int64_t idate;
	uint32_t t_uidnext;
	int tries;
	char *error;
	int64_t updated;        /* unix time of the last change (read only) */
	int64_t a_gone;         /* when the source's copy was deleted, or 0 */
};
void msg_row_release(struct msg_row *r);

/* Inserts r (r->id set on return). */
int state_msg_insert(struct state *st, struct msg_row *r);
/* Row by side-a UID / UIDL / side-b UID: 1 found, 0 not, -1 error. */
int state_msg_by_a(struct state *st, int64_t pair, uint32_t a_uid, struct msg_row *r);
int state_msg_by_uidl(struct state *st, int64_t pair, const char *uidl, struct msg_row *r);
int state_msg_by_b(struct state *st, int64_t pair, uint32_t b_uid, struct msg_row *r);
/* The updates by id below fail (-1) when no row has that id. */
/* SYNCED, error cleared; b_uid 0 or flags NULL keep the recorded value. */
int state_msg_synced(struct state *st, int64_t id, uint32_t b_uid, const char *flags);
/* The same for either side: side 0 sets a_uid, side 1 b_uid (0 keeps it). */
int state_msg_synced_side(struct state *st, int64_t id, int side, uint32_t uid,
    const char *flags);
/* A message moved to another folder pair (mirror): new pair and UIDs. */
int state_msg_move(struct state *st, int64_t id, int64_t pair, uint32_t a_uid, uint32_t b_uid);
/* REFUSED with the server's words; counts a try. */
int state_msg_refused(struct state *st, int64_t id, const char *error);
int state_msg_set_flags(struct state *st, int64_t id, const char *flags);
int state_msg_set_a_uid(struct state *st, int64_t id, uint32_t a_uid);
int state_msg_set_b_uid(struct state *st, int64_t id, uint32_t b_uid);
int state_msg_delete(struct state *st, int64_t id);
/* Records that the source's copy was deleted (POP3 --delete-after). */
int state_msg_set_gone(struct state *st, int64_t id, int64_t when);

typedef int state_msg_cb(void *ctx, const struct msg_row *r);
/*
 * Rows of a pair in the given state (-1: all), ordered by id. Returns 0, -1,
 * or the callback's first non-zero return, which stops the iteration. The
 * callback may change the state (no statement is active while it runs):
 * rows inserted meanwhile are not visited, rows deleted or moved out of the
 * state before their turn are skipped.
 */
int state_msgs_each(struct state *st, int64_t pair, int state, state_msg_cb *cb, void *ctx);
/* Forgets side-a (or side-b) UIDs of a pair: its UIDVALIDITY changed.
 * side: 0 = a, 1 = b. */
int state_pair_forget_uids(struct state *st, int64_t pair, int side);
/* Counts rows of a pair per state: counts[MSG_PENDING] etc. */
int state_pair_counts(struct state *st, int64_t pair, int64_t counts[3]);

/* ---- runs ---- */
struct run_row {
	int64_t id;
	const char *command;
	int64_t started, ended;  /* ended 0: never finished (killed) */
	int exit_code;
	int64_t copied, bytes, flags_set, refused;
	const char *summary;
};
typedef int state_run_cb(void *ctx, const struct run_row *r);
/* The last `limit` runs, newest first. */
int state_runs_each(struct state *st, int limit, state_run_cb *cb, void *ctx);
int state_run_begin(struct state *st, const char *command, int64_t *run_id);
int state_run_end(struct state *st, int64_t run_id, int exit_code, int64_t copied,
    int64_t bytes, int64_t flags_set, int64_t refused, const char *summary);

/* ---- re-pairing after a UIDVALIDITY change (implemented by the lead) ---- */

/* Number of rows of a pair whose side-a UID is unknown (orphans). */
int64_t state_pair_orphans(struct state *st, int64_t pair);
/* After a complete pass, the orphans left are messages gone from the
 * source: they are marked so (a_gone = when) and no longer count. */
int state_pair_retire_orphans(struct state *st, int64_t pair, int64_t when);
/* An orphan row (a_uid unknown) of this size and SHA-256: 1 found, 0 not. */
int state_msg_find_orphan(struct state *st, int64_t pair, uint64_t size,
    const uint8_t sha256[32], struct msg_row *r);

#endif
