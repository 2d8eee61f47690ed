/*
 * test_merge.c — the mirror's three-way flag merge and decision table,
 * table-driven: every combination of base/A/B for each kind of flag, and
 * every combination of (known, on A, on B, A changed, B changed).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "merge.h"
#include "mirror.h"

/* The expected merge of one flag: base, a, b -> result (base -1: none). */
struct flag_case {
	int base, a, b, want;
};

static const struct flag_case flag_cases[] = {
	/* base known: the side that changed wins; nobody changed: unchanged */
	{0, 0, 0, 0}, {0, 1, 0, 1}, {0, 0, 1, 1}, {0, 1, 1, 1},
	{1, 1, 1, 1}, {1, 0, 1, 0}, {1, 1, 0, 0}, {1, 0, 0, 0},
	/* no base: union */
	{-1, 0, 0, 0}, {-1, 1, 0, 1}, {-1, 0, 1, 1}, {-1, 1, 1, 1},
};

static void set_flag(struct flagset *fs, int on, unsigned sys, const char *kw)
{
	if (!on)
		return;
	if (kw)
		assert_int_equal(flagset_add(fs, kw), 1);
	else
		fs->sys |= sys;
}

static void check_flag(unsigned sys, const char *kw)
{
	for (size_t i = 0; i < sizeof flag_cases / sizeof *flag_cases; i++) {
		const struct flag_case *fc = &flag_cases[i];
		struct flagset base = FLAGSET_INIT, a = FLAGSET_INIT, b = FLAGSET_INIT,
		    out = FLAGSET_INIT;
		/* another flag, unchanged everywhere, must survive untouched */
		base.sys = a.sys = b.sys = (sys == FL_DRAFT ? FL_ANSWERED : FL_DRAFT);
		set_flag(&base, fc->base == 1, sys, kw);
		set_flag(&a, fc->a, sys, kw);
		set_flag(&b, fc->b, sys, kw);
		flags_merge3(&out, fc->base < 0 ? NULL : &base, &a, &b);
		bool got = kw ? flagset_has_kw(&out, kw) : (out.sys & sys) != 0;
		if (got != (bool)fc->want)
			fail_msg("flag %s base=%d a=%d b=%d: got %d want %d", kw ? kw : "sys",
			    fc->base, fc->a, fc->b, got, fc->want);
		assert_true(out.sys & (sys == FL_DRAFT ? FL_ANSWERED : FL_DRAFT));
		flagset_clear(&base);
		flagset_clear(&a);
		flagset_clear(&b);
		flagset_clear(&out);
	}
}

static void test_each_system_flag(void **unused)
{
	check_flag(FL_SEEN, NULL);
	check_flag(FL_ANSWERED, NULL);
	check_flag(FL_FLAGGED, NULL);
	check_flag(FL_DELETED, NULL);
	check_flag(FL_DRAFT, NULL);
}

static void test_keywords(void **unused)
{
	check_flag(0, "$Junk");
	check_flag(0, "work");
	check_flag(0, "$Forwarded");
}

/* Independent changes on both sides combine. */
static void test_combined(void **unused)
{
	struct flagset base = FLAGSET_INIT, a = FLAGSET_INIT, b = FLAGSET_INIT,
	    out = FLAGSET_INIT;
	assert_int_equal(flagset_parse(&base, "\\Seen old"), 0);
	assert_int_equal(flagset_parse(&a, "\\Seen \\Flagged old"), 0);   /* A flags it */
	assert_int_equal(flagset_parse(&b, "new"), 0);                    /* B unreads, swaps kw */
	flags_merge3(&out, &base, &a, &b);
	char *t = flagset_format(&out);
	assert_string_equal(t, "\\Flagged new");
	free(t);
	flagset_clear(&base);
	flagset_clear(&a);
	flagset_clear(&b);
	flagset_clear(&out);
}

struct decide_case {
	bool known, on_a, on_b, a_ch, b_ch;
	enum mirror_action want;
};

static void test_decide_table(void **unused)
{
	/* every combination, with the expected action written out */
	for (int bits = 0; bits < 32; bits++) {
		bool known = bits & 1, on_a = bits & 2, on_b = bits & 4, a_ch = bits & 8,
		     b_ch = bits & 16;
		enum mirror_action want;
		if (!known)
			want = on_a && on_b ? MA_MERGE_FLAGS : on_a ? MA_COPY_AB
			    : on_b ? MA_COPY_BA : MA_NOTHING;
		else if (on_a && on_b)
			want = MA_MERGE_FLAGS;
		else if (on_a)
			want = a_ch ? MA_RECOPY_AB : MA_DELETE_A;
		else if (on_b)
			want = b_ch ? MA_RECOPY_BA : MA_DELETE_B;
		else
			want = MA_FORGET;
		enum mirror_action got = mirror_decide(known, on_a, on_b, a_ch, b_ch);
		if (got != want)
			fail_msg("known=%d a=%d b=%d ach=%d bch=%d: got %s want %s", known, on_a,
			    on_b, a_ch, b_ch, mirror_action_name(got), mirror_action_name(want));
	}
	/* and the rows of the table in merge.h, spelled out */
	assert_int_equal(mirror_decide(true, true, false, true, false), MA_RECOPY_AB);
	assert_int_equal(mirror_decide(true, false, true, false, true), MA_RECOPY_BA);
	assert_int_equal(mirror_decide(true, true, false, false, true), MA_DELETE_A);
	assert_int_equal(mirror_decide(true, false, true, true, false), MA_DELETE_B);
	assert_int_equal(mirror_decide(true, false, false, true, true), MA_FORGET);
}

/* The mass-deletion guard: more than max(N, P% of the folder) holds. */
static void test_guard(void **unused)
{
	/* defaults: 50 messages or 10%, the larger */
	assert_false(mirror_guard_holds(0, 100, 50, 10, false));
	assert_false(mirror_guard_holds(50, 100, 50, 10, false));  /* 50 = limit */
	assert_true(mirror_guard_holds(51, 100, 50, 10, false));
	assert_false(mirror_guard_holds(60, 1000, 50, 10, false)); /* 10% = 100 */
	assert_false(mirror_guard_holds(100, 1000, 50, 10, false));
	assert_true(mirror_guard_holds(101, 1000, 50, 10, false));
	assert_true(mirror_guard_holds(60, 60, 50, 10, false));    /* a whole folder */
	/* --force lifts it */
	assert_false(mirror_guard_holds(1000, 1000, 50, 10, true));
	/* stricter settings */
	assert_true(mirror_guard_holds(1, 100, 0, 0, false));
	assert_false(mirror_guard_holds(5, 100, 0, 5, false));
	assert_true(mirror_guard_holds(6, 100, 0, 5, false));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_each_system_flag),
		cmocka_unit_test(test_keywords),
		cmocka_unit_test(test_combined),
		cmocka_unit_test(test_decide_table),
		cmocka_unit_test(test_guard),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
