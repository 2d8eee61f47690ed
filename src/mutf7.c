/*
 * mutf7.c — IMAP modified UTF-7 (RFC 3501 5.1.3), the wire form of mailbox
 * names, to and from UTF-8.
 *
 * Printable US-ASCII other than '&' stands for itself, '&' is "&-", and every
 * other character is written as UTF-16 in a base64 variant (',' for '/', no
 * '=' padding) between '&' and '-'.
 *
 * Both directions are strict. A folder name is an identity: it keys the
 * state DB and is sent back to servers, so two spellings of one name must
 * not both be accepted, and a name that cannot be decoded is reported rather
 * than guessed at. With strict decoding, decode(x) succeeding implies
 * encode(decode(x)) == x, except that adjacent shifts ("&AOk-&AOk-") are
 * accepted and come back merged ("&AOkA6Q-").
 */
#include "mutf7.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "util.h"

static const char b64chars[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

/* The value of a modified-base64 character, or -1. */
static int b64val(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == ',')
		return 63;
	return -1;
}

static bool is_direct(uint32_t c)
{
	return c >= 0x20 && c <= 0x7e;
}

/*
 * Decodes one UTF-8 sequence at *p. Returns the code point and advances *p,
 * or returns UINT32_MAX on anything but the shortest form of a Unicode
 * scalar value (RFC 3629): overlongs, surrogates, > U+10FFFF, truncation.
 */
static uint32_t utf8_next(const unsigned char **p)
{
	const unsigned char *s = *p;
	uint32_t c = s[0], min;
	int n;

	if (c < 0x80) {
		*p = s + 1;
		return c;
	} else if ((c & 0xe0) == 0xc0) {
		n = 1, min = 0x80, c &= 0x1f;
	} else if ((c & 0xf0) == 0xe0) {
		n = 2, min = 0x800, c &= 0x0f;
	} else if ((c & 0xf8) == 0xf0) {
		n = 3, min = 0x10000, c &= 0x07;
	} else {
		return UINT32_MAX; /* continuation byte or 0xf8.. */
	}
	for (int i = 1; i <= n; i++) {
		/* Also stops at the terminating NUL. */
		if ((s[i] & 0xc0) != 0x80)
			return UINT32_MAX;
		c = (c << 6) | (s[i] & 0x3f);
	}
	if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
		return UINT32_MAX;
	*p = s + n + 1;
	return c;
}

static void utf8_put(struct buf *b, uint32_t c)
{
	char tmp[4];
	size_t n;

	if (c < 0x80) {
		tmp[0] = (char)c;
		n = 1;
	} else if (c < 0x800) {
		tmp[0] = (char)(0xc0 | (c >> 6));
		tmp[1] = (char)(0x80 | (c & 0x3f));
		n = 2;
	} else if (c < 0x10000) {
		tmp[0] = (char)(0xe0 | (c >> 12));
		tmp[1] = (char)(0x80 | ((c >> 6) & 0x3f));
		tmp[2] = (char)(0x80 | (c & 0x3f));
		n = 3;
	} else {
		tmp[0] = (char)(0xf0 | (c >> 18));
		tmp[1] = (char)(0x80 | ((c >> 12) & 0x3f));
		tmp[2] = (char)(0x80 | ((c >> 6) & 0x3f));
		tmp[3] = (char)(0x80 | (c & 0x3f));
		n = 4;
	}
	buf_add(b, tmp, n);
}

/* Base64 encoder state for one shift: bits not yet written. */
struct b64out {
	uint32_t bits;
	int nbits;
};

static void b64_put16(struct buf *b, struct b64out *st, uint32_t unit)
{
	st->bits = (st->bits << 16) | unit;
	st->nbits += 16;
	while (st->nbits >= 6) {
		st->nbits -= 6;
		buf_addc(b, b64chars[(st->bits >> st->nbits) & 0x3f]);
	}
	st->bits &= (1u << st->nbits) - 1; /* keep only unwritten bits */
}

/* Ends a shift: the last bits padded with zeros, then '-'. */
static void b64_end(struct buf *b, struct b64out *st)
{
	if (st->nbits > 0)
		buf_addc(b, b64chars[(st->bits << (6 - st->nbits)) & 0x3f]);
	buf_addc(b, '-');
	st->bits = 0;
	st->nbits = 0;
}

char *mutf7_encode(const char *utf8)
{
	struct buf b = BUF_INIT;
	struct b64out st = { 0, 0 };
	bool shifted = false;
	const unsigned char *p = (const unsigned char *)utf8;

	while (*p) {
		uint32_t c = utf8_next(&p);
		if (c == UINT32_MAX)
			goto fail;
		if (is_direct(c)) {
			if (shifted) {
				b64_end(&b, &st);
				shifted = false;
			}
			if (c == '&')
				buf_adds(&b, "&-");
			else
				buf_addc(&b, (char)c);
			continue;
		}
		if (!shifted) {
			buf_addc(&b, '&');
			shifted = true;
		}
		if (c >= 0x10000) {
			c -= 0x10000;
			b64_put16(&b, &st, 0xd800 | (c >> 10));
			b64_put16(&b, &st, 0xdc00 | (c & 0x3ff));
		} else {
			b64_put16(&b, &st, c);
		}
	}
	if (shifted)
		b64_end(&b, &st);
	return buf_detach(&b);

fail:
	buf_release(&b);
	return NULL;
}

/*
 * Decodes the base64 run starting at *p (just after '&') up to and
 * including its '-', appending UTF-8 to b. Returns false if the run is not
 * canonical modified UTF-7.
 */
static bool decode_shift(struct buf *b, const unsigned char **p)
{
	const unsigned char *s = *p;
	uint32_t bits = 0, high = 0; /* high: pending high surrogate, or 0 */
	int nbits = 0;

	for (; *s != '-'; s++) {
		int v = b64val(*s);
		if (v < 0)
			return false; /* bad character, or end of string */
		bits = (bits << 6) | (uint32_t)v;
		nbits += 6;
		if (nbits < 16)
			continue;
		nbits -= 16;
		uint32_t u = (bits >> nbits) & 0xffff;
		bits &= (1u << nbits) - 1;

		if (high) {
			if (u < 0xdc00 || u > 0xdfff)
				return false; /* high surrogate not followed by low */
			utf8_put(b, 0x10000 + ((high - 0xd800) << 10) + (u - 0xdc00));
			high = 0;
		} else if (u >= 0xd800 && u <= 0xdbff) {
			high = u;
		} else if (u >= 0xdc00 && u <= 0xdfff) {
			return false; /* low surrogate alone */
		} else if (u == 0 || is_direct(u)) {
			/* NUL cannot be returned; printable ASCII must be direct. */
			return false;
		} else {
			utf8_put(b, u);
		}
	}
	/*
	 * A canonical encoder leaves 0, 2 or 4 zero bits: a whole spare
	 * sextet or non-zero padding means another spelling of the name.
	 * (An empty run is "&-", which the caller handles.)
	 */
	if (s == *p || nbits >= 6 || bits != 0 || high)
		return false;
	*p = s + 1;
	return true;
}

char *mutf7_decode(const char *mutf7)
{
	struct buf b = BUF_INIT;
	const unsigned char *p = (const unsigned char *)mutf7;

	while (*p) {
		if (*p == '&') {
			p++;
			if (*p == '-') {
				buf_addc(&b, '&');
				p++;
			} else if (!decode_shift(&b, &p)) {
				goto fail;
			}
		} else if (is_direct(*p)) {
			buf_addc(&b, (char)*p++);
		} else {
			goto fail; /* 8-bit or control: never sent raw */
		}
	}
	return buf_detach(&b);

fail:
	buf_release(&b);
	return NULL;
}
