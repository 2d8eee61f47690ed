/*
 * copier.h — one-way copy of planned folders, exactly once.
 *
 * For each folder pair of a plan the copier brings the destination up to
 * date with the source: messages the state does not know are copied
 * byte-exact with their flags and INTERNALDATE; flags changed at the source
 * since the last run are pushed. The state DB makes it resumable at any
 * point (docs/design.md, "exactly once"):
 *
 *   1. resolve: intents left PENDING by an interrupted run are looked up at
 *      the destination (by APPENDUID-free search above the recorded UIDNEXT,
 *      Message-ID and size, SHA-256 when there is no Message-ID) and either
 *      recorded as copied or dropped to be sent again;
 *   2. scan the source (CHANGEDSINCE when the folder has CONDSTORE);
 *   3. per batch: fetch bodies into the spool, record one intent per
 *      message and COMMIT (durable), APPEND, record the results, COMMIT.
 *
 * A folder whose UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ are unchanged since
 * the last complete pass costs one SELECT on each side and nothing more.
 */
#ifndef POSTINO_COPIER_H
#define POSTINO_COPIER_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "planner.h"
#include "ratelimit.h"
#include "state.h"
#include "store.h"

struct copy_report;

struct copy_opts {
	unsigned jobs;           /* connections per side (folders in parallel) */
	bool jobs_auto;          /* jobs is the default: fewer for small work */
	unsigned batch_msgs;     /* messages per APPEND batch */
	uint64_t batch_bytes;    /* bytes per batch (one larger message goes alone) */
	int max_retries;         /* reconnect-and-retry rounds per folder */
	bool no_flag_sync;       /* do not push source flag changes */
	struct ratelimit *rate;  /* --max-messages/bytes-per-second, or NULL */
	/* called every progress_ms from a thread of its own while the copy
	 * runs, and once at the end (final true) */
	void (*progress)(void *ctx, const struct copy_report *rep, bool final);
	void *progress_ctx;
	int progress_ms;
	bool skip_duplicates;    /* pair with a message already at the destination
	                            (same Message-ID and size) instead of copying */
};
void copy_opts_default(struct copy_opts *o);

struct refusal {
	char *folder;   /* source path */
	uint32_t uid;
	uint64_t size;
	char *reason;
};

struct folder_report {
	char *src_path, *dst_path;
	uint64_t copied, bytes, flags_set, already, refused, relinked, duplicates;
	/* for progress displays, read while workers run (atomically) */
	uint64_t todo, todo_bytes;  /* messages and bytes this pass will copy */
	int phase;                  /* 0 waiting, 1 being copied, 2 done */
	bool created, failed, skipped_fast;
	char *error;    /* the folder could not be completed */
	char *dropped_keywords; /* keywords the destination refused, or NULL */
};

struct copy_report {
	struct folder_report *folders;
	size_t nfolders;
	struct refusal *refusals;
	size_t nrefusals;
	uint64_t copied, bytes, flags_set, already, refused, duplicates;
	size_t failed_folders;
	int64_t started_ms, ended_ms;
	bool interrupted;
};
void copy_report_free(struct copy_report *r);

/* Set by the signal thread (cli.c): stop at the next safe point. Atomic,
 * not volatile: it is written by one thread and read by the workers. */
extern atomic_int copier_stop;

/*
 * Copies every non-skipped entry of plan. Returns STORE_OK when every
 * folder was completed (some messages may still have been refused: see the
 * report), STORE_BOX_BAD when some folders failed, STORE_CONN_BAD when a
 * side could not be reconnected, STORE_FATAL on auth/TLS/state failures
 * (store_error of the store at fault, or *err_r).
 */
enum store_rc copy_run(struct store *src, struct store *dst, struct state *st,
    const struct plan *plan, const struct copy_opts *o, struct copy_report *rep,
    char **err_r);

/*
 * Transfers, for the mirror: the copier's exactly-once machinery in either
 * direction. dir 0 copies from side a (from) to side b (to), dir 1 from b to
 * a; state rows are written accordingly. The caller selects the source
 * folder on `from` and the target folder on `to`, and tells the target's
 * status with xfer_target() before resolving or copying.
 */
struct xfer;
struct xfer *xfer_new(struct store *from, struct store *to, struct state *st, int dir,
    const struct copy_opts *o, struct copy_report *rep, pthread_mutex_t *lock);
void xfer_free(struct xfer **x);
void xfer_target(struct xfer *x, const struct box_status *target);
/* Resolves this direction's intents left PENDING by an interrupted run:
 * found ones become SYNCED, the others are dropped (their messages are new
 * again for the caller's next scan). */
enum store_rc xfer_resolve(struct xfer *x, struct fpair *fp, char **err_r);
/* Copies these source UIDs (sizes may be NULL) into e->dst_name, in
 * batches; e->src_path names the source folder in messages. */
enum store_rc xfer_copy(struct xfer *x, struct fpair *fp, const struct plan_entry *e,
    const uint32_t *uids, const uint64_t *sizes, size_t n, struct folder_report *fr,
    char **err_r);
/* The store whose connection failed in the last call, or NULL. */
struct store *xfer_failed(const struct xfer *x);
void xfer_clear_failed(struct xfer *x);

/* Test hook: POSTINO_TEST_EXIT_AFTER=N exits with status 99 after the Nth
 * durable step (state commit or APPEND). */
void copier_test_step(void);

#endif
