/*
 * test_flags.c — flag sets: validation, case-insensitive de-duplication,
 * ordering, the canonical text form and set operations.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "flags.h"
#include "util.h"

/* Formats fs, compares with want, frees. */
static void assert_format(const struct flagset *fs, const char *want)
{
	char *s = flagset_format(fs);
	assert_string_equal(s, want);
	free(s);
}

static void test_keyword_valid(void **state)
{
	static const char *const good[] = {
		"$Junk", "work", "NonJunk", "a", "$Forwarded", "x-y.z_1", "[x", "a+b",
		"!#&'+,-./:;<=>?@^_`|~", "$MDNSent",
	};
	static const char *const bad[] = {
		"", "a b", "a(b", "a)b", "a{b", "a%b", "a*b", "a\"b", "a\\b", "a]b",
		"a\tb", "a\rb", "a\nb", "a\x7f", "\x01", "caf\xc3\xa9", "\x80",
	};

	for (size_t i = 0; i < ARRAY_SIZE(good); i++)
		assert_true(flag_keyword_valid(good[i], strlen(good[i])));
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		assert_false(flag_keyword_valid(bad[i], strlen(bad[i])));

	/* The length is what counts, not a NUL. */
	assert_true(flag_keyword_valid("ab cd", 2));
	assert_false(flag_keyword_valid("a\0b", 3));

	char longkw[300];
	memset(longkw, 'k', sizeof(longkw));
	assert_true(flag_keyword_valid(longkw, 255));
	assert_false(flag_keyword_valid(longkw, 256));
}

static void test_add_system(void **state)
{
	struct flagset fs = FLAGSET_INIT;

	assert_int_equal(flagset_add(&fs, "\\Seen"), 1);
	assert_int_equal(fs.sys, FL_SEEN);
	assert_int_equal(flagset_add(&fs, "\\ANSWERED"), 1);
	assert_int_equal(flagset_add(&fs, "\\flagged"), 1);
	assert_int_equal(flagset_add(&fs, "\\DeLeTeD"), 1);
	assert_int_equal(flagset_add(&fs, "\\draft"), 1);
	assert_int_equal(fs.sys, FL_ALL_SYS);
	assert_int_equal(flagset_add(&fs, "\\Seen"), 1); /* again: still in */
	assert_int_equal(fs.sys, FL_ALL_SYS);
	assert_int_equal(fs.nkw, 0);
	assert_null(fs.kw);
	flagset_clear(&fs);
	assert_int_equal(fs.sys, 0);
}

static void test_add_ignored_and_invalid(void **state)
{
	struct flagset fs;

	flagset_init(&fs);
	assert_int_equal(flagset_add(&fs, "\\Recent"), 0);
	assert_int_equal(flagset_add(&fs, "\\RECENT"), 0);
	assert_int_equal(flagset_add(&fs, "\\Foo"), 0);
	assert_int_equal(flagset_add(&fs, "\\*"), 0);
	assert_int_equal(flagset_add(&fs, "\\Seenx"), 0);
	assert_int_equal(fs.sys, 0);
	assert_int_equal(fs.nkw, 0);

	static const char *const bad[] = {
		"", "\\", "\\Se en", "\\(", "a b", "(a", "a)", "\"a\"", "a%", "a*",
		"a]", "a\x01", "\\\\Seen", "caf\xc3\xa9",
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		assert_int_equal(flagset_add(&fs, bad[i]), -1);
	assert_int_equal(fs.sys, 0);
	assert_int_equal(fs.nkw, 0);
	assert_format(&fs, "");
	flagset_clear(&fs);
}

static void test_add_len(void **state)
{
	struct flagset fs = FLAGSET_INIT;

	/* Counted strings: only the first len bytes are the flag. */
	assert_int_equal(flagset_add_len(&fs, "\\SeenXYZ", 5), 1);
	assert_int_equal(flagset_add_len(&fs, "$Junk $Other", 5), 1);
	assert_int_equal(flagset_add_len(&fs, "\\Draft", 0), -1);
	assert_int_equal(fs.sys, FL_SEEN);
	assert_int_equal(fs.nkw, 1);
	assert_string_equal(fs.kw[0], "$Junk");
	flagset_clear(&fs);
}

static void test_keywords_dedup_first_spelling(void **state)
{
	struct flagset fs = FLAGSET_INIT;

	assert_int_equal(flagset_add(&fs, "$Junk"), 1);
	assert_int_equal(flagset_add(&fs, "$JUNK"), 1);
	assert_int_equal(flagset_add(&fs, "$junk"), 1);
	assert_int_equal(fs.nkw, 1);
	assert_string_equal(fs.kw[0], "$Junk");
	assert_true(flagset_has_kw(&fs, "$jUnK"));
	assert_false(flagset_has_kw(&fs, "$Junk2"));
	assert_false(flagset_has_kw(&fs, "$Jun"));
	flagset_clear(&fs);
}

static void test_keywords_sorted(void **state)
{
	struct flagset fs = FLAGSET_INIT;
	static const char *const in[] = { "zeta", "Alpha", "beta", "$x", "_u", "Beta", "ALPHA", "alp" };

	for (size_t i = 0; i < ARRAY_SIZE(in); i++)
		assert_int_equal(flagset_add(&fs, in[i]), 1);
	assert_int_equal(fs.nkw, 6);
	/* '$' < '_' < letters once letters are lowered; prefixes first. */
	assert_string_equal(fs.kw[0], "$x");
	assert_string_equal(fs.kw[1], "_u");
	assert_string_equal(fs.kw[2], "alp");
	assert_string_equal(fs.kw[3], "Alpha");
	assert_string_equal(fs.kw[4], "beta");
	assert_string_equal(fs.kw[5], "zeta");
	flagset_clear(&fs);
}

static void test_many_keywords(void **state)
{
	struct flagset fs = FLAGSET_INIT;
	uint32_t x = 12345;

	/* Many inserts in scrambled order, each twice in another case. */
	for (int i = 0; i < 500; i++) {
		char kw[16];
		x = x * 1103515245u + 12345u;
		snprintf(kw, sizeof(kw), "k%u", (unsigned)(x >> 16) % 300);
		assert_int_equal(flagset_add(&fs, kw), 1);
		kw[0] = 'K';
		assert_int_equal(flagset_add(&fs, kw), 1);
	}
	assert_true(fs.nkw > 100);
	assert_true(fs.nkw <= 300);
	for (size_t i = 1; i < fs.nkw; i++)
		assert_true(ascii_strcasecmp(fs.kw[i - 1], fs.kw[i]) < 0);
	for (size_t i = 0; i < fs.nkw; i++)
		assert_int_equal(fs.kw[i][0], 'k'); /* first spelling */
	flagset_clear(&fs);
}

static void test_format(void **state)
{
	struct flagset fs = FLAGSET_INIT;

	assert_format(&fs, "");
	/* Added in reverse: output in the fixed order. */
	flagset_add(&fs, "work");
	flagset_add(&fs, "\\Draft");
	flagset_add(&fs, "\\Deleted");
	flagset_add(&fs, "$Junk");
	flagset_add(&fs, "\\Flagged");
	flagset_add(&fs, "\\Answered");
	flagset_add(&fs, "\\Seen");
	assert_format(&fs, "\\Seen \\Answered \\Flagged \\Deleted \\Draft $Junk work");
	flagset_clear(&fs);

	flagset_add(&fs, "\\flagged");
	flagset_add(&fs, "\\seen");
	assert_format(&fs, "\\Seen \\Flagged");
	flagset_clear(&fs);

	flagset_add(&fs, "only");
	assert_format(&fs, "only");
	flagset_clear(&fs);
}

static void test_parse(void **state)
{
	struct flagset fs = FLAGSET_INIT;

	assert_int_equal(flagset_parse(&fs, "(\\Seen $Junk \\Recent)"), 0);
	assert_format(&fs, "\\Seen $Junk");
	flagset_clear(&fs);

	assert_int_equal(flagset_parse(&fs, "  \\Flagged   \\seen  b a "), 0);
	assert_format(&fs, "\\Seen \\Flagged a b");
	flagset_clear(&fs);

	assert_int_equal(flagset_parse(&fs, ""), 0);
	assert_int_equal(flagset_parse(&fs, "()"), 0);
	assert_int_equal(flagset_parse(&fs, "( )"), 0);
	assert_int_equal(flagset_parse(&fs, "   "), 0);
	assert_format(&fs, "");

	/* PERMANENTFLAGS style. */
	assert_int_equal(flagset_parse(&fs, "(\\Deleted \\Seen \\*)"), 0);
	assert_format(&fs, "\\Seen \\Deleted");
	flagset_clear(&fs);

	/* Invalid items: -1, the valid ones still added. */
	assert_int_equal(flagset_parse(&fs, "\\Seen a\"b ok"), -1);
	assert_format(&fs, "\\Seen ok");
	flagset_clear(&fs);
	assert_int_equal(flagset_parse(&fs, "(\\Seen"), -1);
	assert_format(&fs, "\\Seen");
	flagset_clear(&fs);
	assert_int_equal(flagset_parse(&fs, "\\Seen)"), -1);
	assert_format(&fs, "\\Seen");
	flagset_clear(&fs);
	assert_int_equal(flagset_parse(&fs, "("), -1);
	assert_int_equal(flagset_parse(&fs, ")"), -1);
	assert_int_equal(flagset_parse(&fs, "a (b) c"), -1);
	assert_format(&fs, "a c");
	flagset_clear(&fs);
	assert_int_equal(flagset_parse(&fs, "x\ty"), -1);
	assert_format(&fs, "");
}

static void test_format_parse_roundtrip(void **state)
{
	static const char *const inputs[] = {
		"", "\\Seen", "\\Draft \\Seen", "$Junk NonJunk \\Answered", "b A c \\Deleted \\Flagged",
		"$Forwarded $MDNSent \\Seen \\Answered \\Flagged \\Deleted \\Draft z",
	};

	for (size_t i = 0; i < ARRAY_SIZE(inputs); i++) {
		struct flagset a = FLAGSET_INIT, b = FLAGSET_INIT;
		assert_int_equal(flagset_parse(&a, inputs[i]), 0);
		char *text = flagset_format(&a);
		assert_int_equal(flagset_parse(&b, text), 0);
		assert_true(flagset_equal(&a, &b));
		char *again = flagset_format(&b);
		assert_string_equal(text, again);
		free(text);
		free(again);
		flagset_clear(&a);
		flagset_clear(&b);
	}
}

static void test_remove(void **state)
{
	struct flagset fs = FLAGSET_INIT;

	flagset_parse(&fs, "\\Seen a B c");
	assert_false(flagset_remove_kw(&fs, "d"));
	assert_true(flagset_remove_kw(&fs, "b"));
	assert_format(&fs, "\\Seen a c");
	assert_false(flagset_remove_kw(&fs, "B"));
	assert_true(flagset_remove_kw(&fs, "A"));
	assert_true(flagset_remove_kw(&fs, "c"));
	assert_int_equal(fs.nkw, 0);
	assert_null(fs.kw);
	assert_format(&fs, "\\Seen");
	assert_false(flagset_remove_kw(&fs, "c"));
	/* Keywords only: system flags are bits. */
	assert_false(flagset_remove_kw(&fs, "\\Seen"));
	assert_int_equal(fs.sys, FL_SEEN);
	flagset_clear(&fs);
}

static void test_equal(void **state)
{
	struct flagset a = FLAGSET_INIT, b = FLAGSET_INIT;

	assert_true(flagset_equal(&a, &b));
	flagset_parse(&a, "\\Seen $Junk work");
	flagset_parse(&b, "WORK \\seen $junk");
	assert_true(flagset_equal(&a, &b));
	flagset_add(&b, "\\Flagged");
	assert_false(flagset_equal(&a, &b));
	flagset_clear(&b);
	flagset_parse(&b, "\\Seen $Junk");
	assert_false(flagset_equal(&a, &b));
	flagset_add(&b, "worK2");
	assert_false(flagset_equal(&a, &b));
	flagset_clear(&a);
	flagset_clear(&b);
}

static void test_copy(void **state)
{
	struct flagset a = FLAGSET_INIT, b = FLAGSET_INIT;

	flagset_parse(&a, "\\Answered x Y");
	flagset_parse(&b, "\\Draft old stuff here");
	flagset_copy(&b, &a); /* b's old contents freed (valgrind checks) */
	assert_true(flagset_equal(&a, &b));
	assert_ptr_not_equal(a.kw, b.kw);
	assert_ptr_not_equal(a.kw[0], b.kw[0]);
	flagset_add(&a, "z");
	assert_false(flagset_equal(&a, &b));
	assert_format(&b, "\\Answered x Y");

	flagset_copy(&b, &b);
	assert_format(&b, "\\Answered x Y");

	struct flagset empty = FLAGSET_INIT;
	flagset_copy(&b, &empty);
	assert_int_equal(b.nkw, 0);
	assert_int_equal(b.sys, 0);
	flagset_clear(&a);
	flagset_clear(&b);
}

static void test_minus(void **state)
{
	struct flagset a = FLAGSET_INIT, b = FLAGSET_INIT, out = FLAGSET_INIT;

	flagset_parse(&a, "\\Seen \\Flagged $Junk work home");
	flagset_parse(&b, "\\Flagged \\Draft WORK other");
	flagset_add(&out, "stale");
	flagset_minus(&out, &a, &b);
	assert_format(&out, "\\Seen $Junk home");
	flagset_minus(&out, &b, &a);
	assert_format(&out, "\\Draft other");
	flagset_minus(&out, &a, &a);
	assert_format(&out, "");

	/* out may be one of the inputs. */
	flagset_minus(&a, &a, &b);
	assert_format(&a, "\\Seen $Junk home");
	flagset_minus(&b, &a, &b);
	assert_format(&b, "\\Seen $Junk home");
	flagset_clear(&a);
	flagset_clear(&b);
	flagset_clear(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_keyword_valid),
		cmocka_unit_test(test_add_system),
		cmocka_unit_test(test_add_ignored_and_invalid),
		cmocka_unit_test(test_add_len),
		cmocka_unit_test(test_keywords_dedup_first_spelling),
		cmocka_unit_test(test_keywords_sorted),
		cmocka_unit_test(test_many_keywords),
		cmocka_unit_test(test_format),
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_format_parse_roundtrip),
		cmocka_unit_test(test_remove),
		cmocka_unit_test(test_equal),
		cmocka_unit_test(test_copy),
		cmocka_unit_test(test_minus),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
