/*
 * test_report.c — the JSON reports are stable: golden documents for a copy
 * and a mirror report, and JSON string escaping (control characters,
 * quotes, invalid UTF-8 from a server's text).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "report.h"

static char *read_golden(const char *name)
{
	char path[1024];
	snprintf(path, sizeof path, "%s/tests/data/golden/%s", SOURCE_ROOT, name);
	FILE *f = fopen(path, "rb");
	if (!f)
		fail_msg("cannot read %s", path);
	static char buf[65536];
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = 0;
	return buf;
}

static void test_escape(void **unused)
{
	struct buf b = BUF_INIT;
	json_add_str(&b, "a\"b\\c\n\x01 é \xff end");
	assert_string_equal(b.s, "\"a\\\"b\\\\c\\u000a\\u0001 é \\ufffd end\"");
	buf_reset(&b);
	json_add_str(&b, NULL);
	assert_string_equal(b.s, "null");
	buf_reset(&b);
	/* an overlong encoding and a lone continuation byte are not UTF-8 */
	json_add_str(&b, "\xc0\xaf\x80");
	assert_string_equal(b.s, "\"\\ufffd\\ufffd\\ufffd\"");
	buf_release(&b);
}

static void test_copy_golden(void **unused)
{
	struct folder_report f[2];
	memset(f, 0, sizeof f);
	f[0] = (struct folder_report){.src_path = "INBOX", .dst_path = "INBOX", .copied = 10,
	    .bytes = 12345, .flags_set = 2, .already = 5, .refused = 1,
	    .dropped_keywords = "$Junk"};
	f[1] = (struct folder_report){.src_path = "Archive/2024", .dst_path = "Archive.2024",
	    .created = true, .skipped_fast = false, .failed = true, .error = "server said \"NO\""};
	struct refusal ref = {"INBOX", 42, 999, "NO [TOOBIG] Maximum size exceeded"};
	struct copy_report r;
	memset(&r, 0, sizeof r);
	r.folders = f;
	r.nfolders = 2;
	r.refusals = &ref;
	r.nrefusals = 1;
	r.copied = 10;
	r.bytes = 12345;
	r.flags_set = 2;
	r.already = 5;
	r.refused = 1;
	r.failed_folders = 1;
	r.started_ms = 1000;
	r.ended_ms = 3500;
	char *j = report_copy_json(&r, "imaps://a@x:993", "imaps://b@y:993", 1);
	assert_string_equal(j, read_golden("copy_report.json"));
	free(j);
}

static void test_mirror_golden(void **unused)
{
	struct mirror_folder_report f;
	memset(&f, 0, sizeof f);
	f.a_path = "INBOX";
	f.b_path = "INBOX";
	f.copied_ab = 3;
	f.copied_ba = 1;
	f.flags_a = 2;
	f.deleted_b = 4;
	f.moved_b = 1;
	f.held_a = 60;
	struct mirror_report r;
	memset(&r, 0, sizeof r);
	r.folders = &f;
	r.nfolders = 1;
	r.copied_ab = 3;
	r.copied_ba = 1;
	r.flags_set = 2;
	r.deleted = 4;
	r.moved = 1;
	r.held = 60;
	r.started_ms = 0;
	r.ended_ms = 250;
	char *j = report_mirror_json(&r, "imaps://a@x:993", "imaps://b@y:993", 1);
	assert_string_equal(j, read_golden("mirror_report.json"));
	free(j);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_escape),
		cmocka_unit_test(test_copy_golden),
		cmocka_unit_test(test_mirror_golden),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
