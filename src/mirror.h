/*
 * mirror.h — two-way mirroring of two IMAP accounts (postino mirror).
 *
 * A pass over every folder pair, in three phases:
 *
 *  1. analyse each pair: select both sides, resolve interrupted copies,
 *     check the state is still valid (UIDVALIDITY, UIDNEXT and
 *     HIGHESTMODSEQ not lower than recorded: else forget that side's UIDs
 *     and pair again by content, which never deletes), scan both sides,
 *     pair what is unknown by Message-ID and size, and decide each
 *     message's fate (merge.h);
 *  2. find moves: a message gone from one folder and new in another on the
 *     same side is moved on the other side (MOVE), not uploaded again and
 *     deleted;
 *  3. apply: flags, copies both ways (the copier's exactly-once intents),
 *     deletions — unless a folder would lose more than the guard allows
 *     (default: more than 50 messages and more than 10% of the folder),
 *     in which case its deletions wait for --force.
 *
 * A pair whose UIDVALIDITY, UIDNEXT, EXISTS and HIGHESTMODSEQ are unchanged
 * on both sides since the last pass costs one STATUS a side (pipelined for
 * all pairs where the server allows). Otherwise a side with CONDSTORE is
 * scanned incrementally when the last pass over the pair completed: the messages changed since its HIGHESTMODSEQ, the
 * deletions from QRESYNC's VANISHED, or, without QRESYNC, from a listing
 * of UIDs made only when EXISTS says something is gone. Without CONDSTORE
 * (or after an interrupted pass, a refusal, or stale state) a side is
 * scanned in full.
 */
#ifndef POSTINO_MIRROR_H
#define POSTINO_MIRROR_H

#include <stdbool.h>
#include <stdint.h>

#include "copier.h"
#include "planner.h"
#include "state.h"
#include "store.h"

struct mirror_opts {
	struct copy_opts copy;       /* batch sizes */
	bool force;                  /* lift the mass-deletion guard */
	unsigned max_delete;         /* guard: at most this many ... */
	unsigned max_delete_percent; /* ... or this share of a folder, the larger */
};
void mirror_opts_default(struct mirror_opts *o);

/* A folder pair to mirror: names on both sides, which side lacks it. */
struct mirror_pair {
	char *a_name, *a_path;
	char *b_name, *b_path;
	bool a_missing, b_missing; /* new on the other side: create it */
	bool a_gone, b_gone;       /* paired before, now gone on that side:
	                              renamed there, or removed */
	bool known;                /* paired in an earlier pass */
	bool skip;                 /* nothing to do this pass */
	/* the name to create instead when the server refuses a_name or
	 * b_name (the planner's escape rule), or NULL */
	char *a_escaped, *a_escaped_path;
	char *b_escaped, *b_escaped_path;
};

/* A pair the state knows, and whether a pass ever completed it. */
struct mirror_known {
	const char *a_name, *b_name;
	bool completed;
};

struct mirror_pairs {
	struct mirror_pair *v;
	size_t n;
};
void mirror_pairs_free(struct mirror_pairs *p);

/*
 * The folder pairs of a mirror from the plans both ways: every A folder
 * the A->B plan keeps, and every B folder the B->A plan keeps that no A
 * folder goes to. A folder missing on one side of a pair the state knows
 * as completed is not created again: it was renamed or removed there. A
 * folder that is the escaped name of a folder to create on its side (made
 * by an earlier pass that died before it recorded the pair) is not a pair
 * of its own: the creation finds it.
 */
void mirror_pairs_build(struct mirror_pairs *out, const struct plan *ab, const struct plan *ba,
    const struct mirror_known *known, size_t nknown);

/* The mass-deletion guard: may a pass delete `deletions` of a folder of
 * folder_size messages? (pure) */
bool mirror_guard_holds(size_t deletions, uint32_t folder_size, unsigned max_delete,
    unsigned max_delete_percent, bool force);

struct mirror_folder_report {
	char *a_path, *b_path;
	uint64_t copied_ab, copied_ba, flags_a, flags_b, deleted_a, deleted_b;
	uint64_t moved_a, moved_b, paired, kept;  /* kept: deletion lost to a change */
	uint64_t held_a, held_b;                   /* deletions held by the guard */
	bool created_a, created_b, skipped_fast, failed;
	unsigned incremental; /* sides scanned incrementally this pass (0-2) */
	bool renamed;     /* recognised as a rename and renamed on the other side */
	bool vanished;    /* gone on one side, left alone on the other */
	char *error;
};

struct mirror_report {
	struct mirror_folder_report *folders;
	size_t nfolders;
	uint64_t copied_ab, copied_ba, flags_set, deleted, moved, paired, kept, held;
	uint64_t renamed, vanished;
	size_t failed_folders;
	bool interrupted;
	int64_t started_ms, ended_ms;
	struct copy_report copies; /* refusals of the copies, both ways */
};
void mirror_report_free(struct mirror_report *r);

/* One pass. Returns STORE_OK, STORE_BOX_BAD (some folders failed),
 * STORE_CONN_BAD or STORE_FATAL (*err_r says why). */
enum store_rc mirror_run(struct store *a, struct store *b, struct state *st,
    struct mirror_pairs *pairs, const struct mirror_opts *o, struct mirror_report *rep,
    char **err_r);

#endif
