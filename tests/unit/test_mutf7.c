/*
 * test_mutf7.c — modified UTF-7: known vectors both ways, strict rejection
 * of malformed input in both directions, and a round-trip property over
 * generated strings.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mutf7.h"
#include "util.h"

struct vector {
	const char *utf8;
	const char *mutf7;
};

static const struct vector vectors[] = {
	{ "", "" },
	{ "INBOX", "INBOX" },
	{ "Entw\xc3\xbcrfe", "Entw&APw-rfe" },
	{ "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", "&ZeVnLIqe-" },       /* 日本語 */
	{ "Caf\xc3\xa9", "Caf&AOk-" },
	{ "&", "&-" },
	{ "A&B", "A&-B" },
	{ "&&", "&-&-" },
	{ "\xc3\xa9\xc3\xa9", "&AOkA6Q-" },                             /* one shift */
	{ "\xf0\x9f\x98\x80", "&2D3eAA-" },                             /* U+1F600 */
	{ "a\xf0\x9f\x98\x80" "b", "a&2D3eAA-b" },
	{ "\xf4\x8f\xbf\xbf", "&2,,f,w-" },                             /* U+10FFFF */
	{ "\xef\xbf\xbf", "&,,8-" },                                    /* U+FFFF */
	{ "\t", "&AAk-" },                                              /* controls are shifted */
	{ "a\x7f" "b", "a&AH8-b" },
	/* RFC 3501 5.1.3's example: ~peter/mail/台北/日本語 */
	{ "~peter/mail/\xe5\x8f\xb0\xe5\x8c\x97/\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
	  "~peter/mail/&U,BTFw-/&ZeVnLIqe-" },
	{ "Sent Items/2024 & older", "Sent Items/2024 &- older" },
	{ "- + , / ~", "- + , / ~" },
	{ "\xc3\xa9&\xc3\xa9", "&AOk-&-&AOk-" },
};

static void test_encode_vectors(void **state)
{
	for (size_t i = 0; i < ARRAY_SIZE(vectors); i++) {
		char *s = mutf7_encode(vectors[i].utf8);
		assert_non_null(s);
		assert_string_equal(s, vectors[i].mutf7);
		free(s);
	}
}

static void test_decode_vectors(void **state)
{
	for (size_t i = 0; i < ARRAY_SIZE(vectors); i++) {
		char *s = mutf7_decode(vectors[i].mutf7);
		assert_non_null(s);
		assert_string_equal(s, vectors[i].utf8);
		free(s);
	}
}

static void test_decode_adjacent_shifts(void **state)
{
	/* Not canonical, but unambiguous: accepted, and re-encoded merged. */
	char *s = mutf7_decode("&AOk-&AOk-");
	assert_non_null(s);
	assert_string_equal(s, "\xc3\xa9\xc3\xa9");
	char *e = mutf7_encode(s);
	assert_string_equal(e, "&AOkA6Q-");
	free(s);
	free(e);
}

static void test_decode_invalid(void **state)
{
	static const char *const bad[] = {
		"&",             /* unterminated shift */
		"a&",
		"&A",
		"&AOk",
		"Caf&AOk",
		"&AOkA6Q",
		"&=-",           /* not modified base64 */
		"&/-",           /* '/' is ',' in modified base64 */
		"&AO k-",
		"&AOk=-",
		"&A\xc3\xa9-",
		"&AOl-",         /* non-zero padding bits */
		"&AOm-",
		"&AOkA-",        /* a whole spare sextet */
		"&AOkAAA-",      /* a spare sextet plus U+0000 would-be */
		"&AGE-",         /* 'a', must be direct */
		"&ACY-",         /* '&', must be "&-" */
		"&ACA-",         /* ' ' */
		"&AH4-",         /* '~' */
		"&AAA-",         /* U+0000 */
		"&2D0-",         /* lone high surrogate */
		"&3gA-",         /* lone low surrogate */
		"&2D0A6Q-",      /* high surrogate then a BMP char */
		"&3gDYPQ-",      /* low then high */
		"&2D3YPQ-",      /* high, high */
		"&2D0-&3gA-",    /* a pair split across shifts */
		"Caf\xc3\xa9",   /* raw 8-bit */
		"\x80",
		"a\tb",          /* raw control */
		"a\x7f",
		"&&-",           /* '&' inside a shift */
		"&-&",
	};

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		char *s = mutf7_decode(bad[i]);
		if (s)
			fail_msg("decoded invalid #%zu '%s' to '%s'", i, bad[i], s);
	}
}

static void test_encode_invalid(void **state)
{
	static const char *const bad[] = {
		"\x80",                 /* lone continuation */
		"a\xbf" "b",
		"\xc3",                 /* truncated */
		"caf\xc3",
		"\xe6\x97",
		"\xf0\x9f\x98",
		"\xc3" "a",             /* continuation missing */
		"\xc0\xaf",             /* overlong '/' */
		"\xc1\xbf",
		"\xe0\x80\xaf",
		"\xe0\x9f\xbf",         /* overlong U+07FF */
		"\xf0\x80\x80\xaf",
		"\xf0\x8f\xbf\xbf",     /* overlong U+FFFF */
		"\xed\xa0\x80",         /* U+D800 */
		"\xed\xbf\xbf",         /* U+DFFF */
		"\xed\xa0\xbd\xed\xb8\x80", /* CESU-8 surrogate pair */
		"\xf4\x90\x80\x80",     /* U+110000 */
		"\xf7\xbf\xbf\xbf",
		"\xf8\x88\x80\x80\x80", /* 5-byte form */
		"\xfc\x84\x80\x80\x80\x80",
		"\xfe",
		"\xff",
	};

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		char *s = mutf7_encode(bad[i]);
		if (s)
			fail_msg("encoded invalid UTF-8 #%zu to '%s'", i, s);
	}
}

static void test_encode_boundaries(void **state)
{
	/* Edges of each UTF-8 length that must be accepted. */
	static const struct vector edges[] = {
		{ "\xc2\x80", "&AIA-" },             /* U+0080 */
		{ "\xdf\xbf", "&B,8-" },             /* U+07FF */
		{ "\xe0\xa0\x80", "&CAA-" },         /* U+0800 */
		{ "\xed\x9f\xbf", "&1,8-" },         /* U+D7FF */
		{ "\xee\x80\x80", "&4AA-" },         /* U+E000 */
		{ "\xf0\x90\x80\x80", "&2ADcAA-" },  /* U+10000 */
		{ "\x01", "&AAE-" },
		{ "\x1f", "&AB8-" },
	};

	for (size_t i = 0; i < ARRAY_SIZE(edges); i++) {
		char *e = mutf7_encode(edges[i].utf8);
		assert_non_null(e);
		assert_string_equal(e, edges[i].mutf7);
		char *d = mutf7_decode(e);
		assert_non_null(d);
		assert_string_equal(d, edges[i].utf8);
		free(e);
		free(d);
	}
}

/* Deterministic generator: the same strings on every run. */
static uint32_t rng_state = 0x2545f491;

static uint32_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 17;
	rng_state ^= rng_state << 5;
	return rng_state;
}

/* A random Unicode scalar value, biased to the interesting ranges. */
static uint32_t random_char(void)
{
	uint32_t c;

	switch (rng() % 8) {
	case 0:
	case 1:
		return 0x20 + rng() % 0x5f;            /* printable ASCII */
	case 2:
		return rng() % 2 ? '&' : '-';
	case 3:
		return 1 + rng() % 0x1f;               /* controls */
	case 4:
		return 0x80 + rng() % 0x780;           /* 2-byte */
	case 5:
		do
			c = 0x800 + rng() % 0xf800;    /* 3-byte */
		while (c >= 0xd800 && c <= 0xdfff);
		return c;
	default:
		return 0x10000 + rng() % 0x100000;     /* supplementary */
	}
}

static void put_utf8(struct buf *b, uint32_t c)
{
	if (c < 0x80) {
		buf_addc(b, (char)c);
	} else if (c < 0x800) {
		buf_addc(b, (char)(0xc0 | (c >> 6)));
		buf_addc(b, (char)(0x80 | (c & 0x3f)));
	} else if (c < 0x10000) {
		buf_addc(b, (char)(0xe0 | (c >> 12)));
		buf_addc(b, (char)(0x80 | ((c >> 6) & 0x3f)));
		buf_addc(b, (char)(0x80 | (c & 0x3f)));
	} else {
		buf_addc(b, (char)(0xf0 | (c >> 18)));
		buf_addc(b, (char)(0x80 | ((c >> 12) & 0x3f)));
		buf_addc(b, (char)(0x80 | ((c >> 6) & 0x3f)));
		buf_addc(b, (char)(0x80 | (c & 0x3f)));
	}
}

static void test_roundtrip_property(void **state)
{
	for (int iter = 0; iter < 20000; iter++) {
		struct buf b = BUF_INIT;
		int n = (int)(rng() % 24);

		buf_adds(&b, "");
		for (int i = 0; i < n; i++)
			put_utf8(&b, random_char());

		char *enc = mutf7_encode(b.s);
		assert_non_null(enc);
		/* The wire form is printable ASCII only, and "&" always closes. */
		for (const char *p = enc; *p; p++)
			assert_true(*p >= 0x20 && *p <= 0x7e);
		char *dec = mutf7_decode(enc);
		if (!dec || strcmp(dec, b.s) != 0)
			fail_msg("round trip failed for '%s' (encoded '%s')", b.s, enc);
		/* Canonical: encoding the decoded name gives the same bytes. */
		char *enc2 = mutf7_encode(dec);
		assert_string_equal(enc, enc2);
		free(enc);
		free(enc2);
		free(dec);
		buf_release(&b);
	}
}

static void test_decode_random_garbage(void **state)
{
	/*
	 * Random strings over the alphabet of the wire form (plus raw 8-bit):
	 * whatever decodes must re-encode to exactly the input, unless it had
	 * adjacent shifts, which come back merged.
	 */
	static const char alphabet[] = "&-AaZz09+,/.éx";
	int decoded = 0;

	for (int iter = 0; iter < 20000; iter++) {
		char in[16];
		int n = (int)(rng() % (sizeof(in) - 1));
		for (int i = 0; i < n; i++)
			in[i] = alphabet[rng() % (sizeof(alphabet) - 1)];
		in[n] = 0;
		char *dec = mutf7_decode(in);
		if (!dec)
			continue;
		decoded++;
		char *enc = mutf7_encode(dec);
		assert_non_null(enc);
		if (strcmp(enc, in) != 0) {
			/* Only adjacent shifts may change, and not the meaning. */
			assert_non_null(strstr(in, "-&"));
			char *dec2 = mutf7_decode(enc);
			assert_non_null(dec2);
			assert_string_equal(dec2, dec);
			free(dec2);
		}
		free(enc);
		free(dec);
	}
	assert_true(decoded > 100);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_encode_vectors),
		cmocka_unit_test(test_decode_vectors),
		cmocka_unit_test(test_decode_adjacent_shifts),
		cmocka_unit_test(test_decode_invalid),
		cmocka_unit_test(test_encode_invalid),
		cmocka_unit_test(test_encode_boundaries),
		cmocka_unit_test(test_roundtrip_property),
		cmocka_unit_test(test_decode_random_garbage),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
