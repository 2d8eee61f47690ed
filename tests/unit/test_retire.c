/*
 * test_retire.c — the --delete-after rule (retire_eligible) and the POP3
 * side of the planner (one mailbox: INBOX by default, FOLDER with --into).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "planner.h"
#include "retire.h"
#include "util.h"

#define DAY 86400

static struct msg_row row(enum msg_state st, int64_t updated, int64_t gone)
{
	struct msg_row r;
	memset(&r, 0, sizeof r);
	r.state = st;
	r.updated = updated;
	r.a_gone = gone;
	return r;
}

static void test_only_synced(void **unused)
{
	int64_t now = 1000 * DAY;
	struct msg_row p = row(MSG_PENDING, now - 10 * DAY, 0);
	struct msg_row x = row(MSG_REFUSED, now - 10 * DAY, 0);
	struct msg_row s = row(MSG_SYNCED, now - 10 * DAY, 0);
	assert_false(retire_eligible(&p, now, 0));
	assert_false(retire_eligible(&x, now, 0));
	assert_true(retire_eligible(&s, now, 0));
}

static void test_already_gone(void **unused)
{
	int64_t now = 1000 * DAY;
	struct msg_row s = row(MSG_SYNCED, now - 10 * DAY, now - DAY);
	assert_false(retire_eligible(&s, now, 0));
}

static void test_keep_days(void **unused)
{
	int64_t now = 1000 * DAY;
	struct msg_row young = row(MSG_SYNCED, now - 3 * DAY + 1, 0);
	struct msg_row edge = row(MSG_SYNCED, now - 3 * DAY, 0);
	struct msg_row old = row(MSG_SYNCED, now - 30 * DAY, 0);
	assert_false(retire_eligible(&young, now, 3));
	assert_true(retire_eligible(&edge, now, 3));
	assert_true(retire_eligible(&old, now, 3));
	/* 0 days: as soon as it is copied */
	struct msg_row fresh = row(MSG_SYNCED, now, 0);
	assert_true(retire_eligible(&fresh, now, 0));
	assert_false(retire_eligible(&fresh, now, 1));
}

/* A POP3 source is one folder, INBOX; --into puts it at FOLDER itself. */
static void plan_pop3(const char *into, const char *want_dst, enum plan_action want)
{
	struct store_folder sf = {xstrdup("INBOX"), 0, 0};
	struct store_folder_list src = {1, &sf};
	struct store_folder df[2] = {{xstrdup("INBOX"), '.', 0}, {xstrdup("Imported.old-isp"), '.', 0}};
	struct store_folder_list dst = {2, df};
	struct plan_side s = {&src, "", 0, true};
	struct plan_side d = {&dst, "", '.', false};
	struct plan_rules rules;
	memset(&rules, 0, sizeof rules);
	rules.into = into ? xstrdup(into) : NULL;
	struct plan p;
	char *err = NULL;
	assert_int_equal(plan_build(&p, &s, &d, &rules, NULL, 0, &err), 0);
	assert_null(err);
	assert_int_equal(p.n, 1);
	assert_string_equal(p.v[0].src_path, "INBOX");
	assert_string_equal(p.v[0].dst_name, want_dst);
	assert_int_equal(p.v[0].action, want);
	plan_free(&p);
	plan_rules_free(&rules);
	free(sf.name);
	free(df[0].name);
	free(df[1].name);
}

static void test_pop3_default_inbox(void **unused)
{
	plan_pop3(NULL, "INBOX", PLAN_COPY);
}

static void test_pop3_into_folder(void **unused)
{
	plan_pop3("Imported/old-isp", "Imported.old-isp", PLAN_COPY);
	plan_pop3("Imported/new-isp", "Imported.new-isp", PLAN_CREATE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_only_synced),
		cmocka_unit_test(test_already_gone),
		cmocka_unit_test(test_keep_days),
		cmocka_unit_test(test_pop3_default_inbox),
		cmocka_unit_test(test_pop3_into_folder),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
