/*
 * retire.h — deleting messages from a POP3 source once they are safely
 * copied: --delete-after, optionally --keep-days N (leave mail on the
 * server for N days, as mail clients do).
 *
 * A message is deleted only if the state DB says it is SYNCED (its APPEND
 * was confirmed and that was committed: the commit is durable before the
 * DELE is sent) and it was copied at least keep_days ago. The DELEs are
 * committed by QUIT only at the end of a clean run; on any error the
 * session is dropped without QUIT and nothing is deleted. A new listing
 * after QUIT confirms what is really gone, and only that is recorded.
 */
#ifndef POSTINO_RETIRE_H
#define POSTINO_RETIRE_H

#include <stdbool.h>
#include <stdint.h>

#include "planner.h"
#include "state.h"
#include "store.h"

/* May this message be deleted now? (pure: the rule above) */
bool retire_eligible(const struct msg_row *r, int64_t now, int keep_days);

struct retire_report {
	uint64_t deleted;     /* confirmed gone */
	uint64_t kept;        /* copied but younger than --keep-days */
	uint64_t not_copied;  /* left on the server: not safely copied */
	uint64_t refused;     /* the server would not delete them */
};

/*
 * Deletes what may be deleted from the POP3 source of plan. Returns
 * STORE_OK, or a failure (nothing is deleted then, unless QUIT had been
 * accepted: what is gone is recorded either way).
 */
enum store_rc retire_run(struct store *src, struct state *st, const struct plan *plan,
    int keep_days, struct retire_report *rep, char **err_r);

#endif
