/*
 * merge.c — three-way flag merge and the per-message decision table of the
 * mirror (see merge.h for the rules).
 */
#include "merge.h"

#include <stddef.h>

static bool has(const struct flagset *fs, unsigned sys, const char *kw)
{
	return kw ? flagset_has_kw(fs, kw) : (fs->sys & sys) != 0;
}

/* One flag: the value it takes after the merge. */
static bool merge_one(const struct flagset *base, const struct flagset *a,
    const struct flagset *b, unsigned sys, const char *kw)
{
	bool va = has(a, sys, kw), vb = has(b, sys, kw);
	if (!base)
		return va || vb;
	bool v0 = has(base, sys, kw);
	if (va != v0)
		return va; /* A changed it (and if B did too, the same way) */
	return vb;         /* only B changed it, or nobody did */
}

static void add_kw_merged(struct flagset *out, const struct flagset *base,
    const struct flagset *a, const struct flagset *b, const struct flagset *from)
{
	for (size_t i = 0; i < from->nkw; i++)
		if (!flagset_has_kw(out, from->kw[i]) && merge_one(base, a, b, 0, from->kw[i]))
			flagset_add(out, from->kw[i]);
}

void flags_merge3(struct flagset *out, const struct flagset *base, const struct flagset *a,
    const struct flagset *b)
{
	flagset_clear(out);
	for (unsigned bit = 1; bit & FL_ALL_SYS; bit <<= 1)
		if (merge_one(base, a, b, bit, NULL))
			out->sys |= bit;
	/* a keyword can only end up set if some side has it now */
	add_kw_merged(out, base, a, b, a);
	add_kw_merged(out, base, a, b, b);
}

enum mirror_action mirror_decide(bool known, bool on_a, bool on_b, bool a_changed,
    bool b_changed)
{
	if (!known) {
		if (on_a && on_b)
			return MA_MERGE_FLAGS; /* paired by content by the caller */
		if (on_a)
			return MA_COPY_AB;
		if (on_b)
			return MA_COPY_BA;
		return MA_NOTHING;
	}
	if (on_a && on_b)
		return MA_MERGE_FLAGS;
	if (on_a)
		return a_changed ? MA_RECOPY_AB : MA_DELETE_A;
	if (on_b)
		return b_changed ? MA_RECOPY_BA : MA_DELETE_B;
	return MA_FORGET;
}

const char *mirror_action_name(enum mirror_action a)
{
	static const char *const names[] = {
		"nothing", "copy A->B", "copy B->A", "merge flags", "copy A->B again",
		"copy B->A again", "delete on A", "delete on B", "forget",
	};
	return (unsigned)a < sizeof names / sizeof *names ? names[a] : "?";
}
