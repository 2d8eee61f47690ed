/* test_imap_guard.c — the check in front of libetpan's parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "imap_guard.h"

/* Feeds s in one go and byte by byte; both must agree. */
static int feed(const char *s)
{
	struct imap_guard a, b;
	memset(&a, 0, sizeof a);
	memset(&b, 0, sizeof b);
	size_t n = strlen(s);
	int ra = imap_guard_feed(&a, s, n);
	int rb = 0;
	for (size_t i = 0; i < n && rb == 0; i++)
		rb = imap_guard_feed(&b, s + i, 1);
	assert_int_equal(ra, rb);
	return ra;
}

static void test_normal_session(void **st)
{
	(void)st;
	assert_int_equal(feed("* OK [CAPABILITY IMAP4rev1 LITERAL+] Dovecot ready.\r\n"
	    "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded)\r\n"
	    "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded \\*)] Flags permitted.\r\n"
	    "* OK [PERMANENTFLAGS ()] No permanent flags permitted\r\n"
	    "* 3 EXISTS\r\n* OK [UIDVALIDITY 1700000000] UIDs valid\r\n"
	    "A2 OK [READ-WRITE] Select completed.\r\n"), 0);
	assert_int_equal(feed("* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n"), 0);
	assert_int_equal(feed("* NAMESPACE ((\"INBOX.\" \".\")) NIL ((\"#shared.\" \".\")"
	    "(\"#public.\" \".\" \"X-PARAM\" (\"FLAG1\" \"FLAG2\")))\r\n"), 0);
	assert_int_equal(feed("* NAMESPACE ((\"\" \"\\\\\")) ((\"~\" NIL)) NIL\r\n"), 0);
}

static void test_literals_are_not_checked(void **st)
{
	(void)st;
	/* A message whose text looks like a bad response. */
	const char *body = "* OK [PERMANENTFLAGS (%)]\r\n* NAMESPACE ((\r\n";
	char buf[512];
	snprintf(buf, sizeof buf, "* 1 FETCH (UID 5 BODY[] {%zu}\r\n%s FLAGS ())\r\n"
	    "A3 OK done\r\n", strlen(body), body);
	assert_int_equal(feed(buf), 0);
	snprintf(buf, sizeof buf, "* 1 FETCH (UID 5 BODY[] {%zu+}\r\n%s)\r\n",
	    strlen(body), body);
	assert_int_equal(feed(buf), 0);
}

static void test_bad_permanentflags(void **st)
{
	(void)st;
	assert_int_equal(feed("* OK [PERMANENTFLAGS (%)] x\r\n"), -1);
	assert_int_equal(feed("* OK [PERMANENTFLAGS (\\)] x\r\n"), -1);
	assert_int_equal(feed("* OK [PERMANENTFLAGS (\\\\Seen)] x\r\n"), -1);
	assert_int_equal(feed("* OK [permanentflags (\\ )] x\r\n"), -1);
	assert_int_equal(feed("* OK [PERMANENTFLAGS (\r\n* 1 EXISTS\r\n"), -1);
	assert_int_equal(feed("* OK [PERMANENTFLAGS \\Seen] x\r\n"), -1);
	struct imap_guard g;
	memset(&g, 0, sizeof g);
	assert_int_equal(imap_guard_feed(&g, "* OK [PERMANENTFLAGS (\"x\")]\r\n", 29), -1);
	assert_non_null(g.why);
	/* once it has objected, it goes on objecting */
	assert_int_equal(imap_guard_feed(&g, "* 1 EXISTS\r\n", 12), -1);
}

static void test_bad_namespace(void **st)
{
	(void)st;
	assert_int_equal(feed("* NAMESPACE ((\"\" \".\")) NIL ((\"#s\r\n"), -1);
	assert_int_equal(feed("* NAMESPACE NIL NIL ((\"#s\r\n"), -1);
	assert_int_equal(feed("* NAMESPACE ((\"\" \".\"))\r\n"), -1);
	assert_int_equal(feed("* NAMESPACE ((\"\" \"..\")) NIL NIL\r\n"), -1);
	assert_int_equal(feed("* NAMESPACE ((\"\" \".\")) NIL NIL x\r\n"), -1);
	assert_int_equal(feed("*  NAMESPACE ((\"IN.\\\\\"\r\n"), -1);
	assert_int_equal(feed("*NAMESPACE NIL NIL NIL\r\n"), -1);
	assert_int_equal(feed("* NAMESPACE\t\t((\"\r\n"), -1);
	assert_int_equal(feed("* OK [\tPERMANENTFLAGS\t(%)] x\r\n"), -1);
	assert_int_equal(feed(" * NAMESPACE ((\"IN.\\\\[x\r\n"), -1);
	assert_int_equal(feed("* NAMESPACE (({3}\r\nabc \".\")) NIL NIL\r\n"), -1);
}

static void test_literal_sizes(void **st)
{
	(void)st;
	assert_int_equal(feed("* 1 FETCH (UID 1 BODY[] {4000000000}\r\nabc"), -1);
	assert_int_equal(feed("* 1 FETCH (UID 1 BODY[] {99999999999999999999999}\r\n"), -1);
	assert_int_equal(feed("* 1 FETCH (UID 1 BODY[] {1073741825}\r\n"), -1);
	assert_int_equal(feed("* 1 FETCH (UID 1 BODY[] {1073741824}\r\n"), 0);
	assert_int_equal(feed("* 1 FETCH (UID 1 BODY[] {20971520}\r\n"), 0);
	/* a very long line is followed to its end */
	char big[5000];
	memset(big, 'x', sizeof big);
	memcpy(big, "* 1 FETCH (X ", 13);
	memcpy(big + sizeof big - 20, " {4000000000}\r\n", 16);
	assert_int_equal(feed(big), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_normal_session),
		cmocka_unit_test(test_literals_are_not_checked),
		cmocka_unit_test(test_bad_permanentflags),
		cmocka_unit_test(test_bad_namespace),
		cmocka_unit_test(test_literal_sizes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
