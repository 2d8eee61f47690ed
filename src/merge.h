/*
 * merge.h — the decisions of two-way mirroring, as pure functions.
 *
 * Flags merge three ways, one flag at a time. The base is the flag set both
 * sides had after the last sync (msg.flags in the state DB); a side's
 * change is its difference from the base:
 *   - a flag changed on one side only: that change wins;
 *   - a flag changed on both sides: both changed it the same way (a flag
 *     is on or off), so there is nothing to choose;
 *   - no base (a first pairing, or re-pairing after lost state): a flag set
 *     on either side is set on both (union). Nothing is ever cleared
 *     without a base that says it was set.
 *
 * A message's fate follows from the state and the two sides:
 *
 *   known  on A  on B  changed     action
 *   no     yes   -     -           copy A->B
 *   no     -     yes   -           copy B->A
 *   yes    yes   yes   -           merge flags
 *   yes    yes   no    A changed   copy A->B again (change beats deletion)
 *   yes    yes   no    no          delete on A
 *   yes    no    yes   B changed   copy B->A again
 *   yes    no    yes   no          delete on B
 *   yes    no    no    -           forget the row
 */
#ifndef POSTINO_MERGE_H
#define POSTINO_MERGE_H

#include <stdbool.h>

#include "flags.h"

/* out = merge of a and b over base (NULL: no base). out is cleared first. */
void flags_merge3(struct flagset *out, const struct flagset *base, const struct flagset *a,
    const struct flagset *b);

enum mirror_action {
	MA_NOTHING = 0,
	MA_COPY_AB,      /* new on A: copy to B */
	MA_COPY_BA,      /* new on B: copy to A */
	MA_MERGE_FLAGS,  /* on both: merge flags (may be a no-op) */
	MA_RECOPY_AB,    /* deleted on B but changed on A: copy to B again */
	MA_RECOPY_BA,    /* deleted on A but changed on B: copy to A again */
	MA_DELETE_A,     /* deleted on B: delete on A */
	MA_DELETE_B,     /* deleted on A: delete on B */
	MA_FORGET,       /* gone from both: drop the row */
};

enum mirror_action mirror_decide(bool known, bool on_a, bool on_b, bool a_changed,
    bool b_changed);

const char *mirror_action_name(enum mirror_action a);

#endif
