/*
 * flags.c — IMAP flag sets (RFC 3501 2.3.2): system flags as bits, keywords
 * as a sorted array.
 *
 * Flags are compared case-insensitively, so "$junk" and "$Junk" are one
 * keyword; the first spelling added is the one kept, which makes the result
 * independent of how later servers spell it. Keyword lists are short (a few
 * per message), so a sorted array with binary search and memmove is simpler
 * and faster than anything cleverer.
 */
#include "flags.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

/* RFC 3501 allows any atom; this bound keeps the state DB rows sane. */
#define KEYWORD_MAX 255

/* In canonical output order. */
static const struct {
	const char *name;
	unsigned bit;
} sys_flags[] = {
	{ "\\Seen", FL_SEEN },
	{ "\\Answered", FL_ANSWERED },
	{ "\\Flagged", FL_FLAGGED },
	{ "\\Deleted", FL_DELETED },
	{ "\\Draft", FL_DRAFT },
};

static int lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* Case-insensitive compare of a counted string with a NUL-terminated one. */
static int kw_cmp(const char *a, size_t alen, const char *b)
{
	for (size_t i = 0; i < alen; i++) {
		int ca = lower((unsigned char)a[i]), cb = lower((unsigned char)b[i]);
		if (ca != cb)
			return ca - cb; /* also right when b ends first (cb == 0) */
		if (cb == 0)
			return 1; /* a NUL inside a, where b ends: a is longer */
	}
	return b[alen] ? -1 : 0;
}

/* Case-insensitive equality of a counted string and a NUL-terminated one. */
static bool kw_eq(const char *a, size_t alen, const char *b)
{
	return kw_cmp(a, alen, b) == 0;
}

/*
 * Binary search. Returns true if found; *pos is the keyword's index, or
 * where it would be inserted.
 */
static bool kw_find(const struct flagset *fs, const char *kw, size_t len, size_t *pos)
{
	size_t lo = 0, hi = fs->nkw;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = kw_cmp(kw, len, fs->kw[mid]);
		if (c == 0) {
			*pos = mid;
			return true;
		}
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	*pos = lo;
	return false;
}

/* RFC 3501 ATOM-CHAR, minus '\' (quoted-special) and ']' (resp-special). */
static bool atom_char(unsigned char c)
{
	if (c <= 0x20 || c >= 0x7f)
		return false; /* CTL, SP, and 8-bit: atoms are US-ASCII */
	return !strchr("(){%*\"\\]", c);
}

bool flag_keyword_valid(const char *kw, size_t len)
{
	if (len == 0 || len > KEYWORD_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (!atom_char((unsigned char)kw[i]))
			return false;
	}
	return true;
}

void flagset_init(struct flagset *fs)
{
	fs->sys = 0;
	fs->nkw = 0;
	fs->kw = NULL;
}

void flagset_clear(struct flagset *fs)
{
	for (size_t i = 0; i < fs->nkw; i++)
		free(fs->kw[i]);
	free(fs->kw);
	flagset_init(fs);
}

void flagset_copy(struct flagset *dst, const struct flagset *src)
{
	if (dst == src)
		return;
	flagset_clear(dst);
	dst->sys = src->sys;
	if (src->nkw) {
		dst->kw = xcalloc(src->nkw, sizeof(*dst->kw));
		for (size_t i = 0; i < src->nkw; i++)
			dst->kw[i] = xstrdup(src->kw[i]);
		dst->nkw = src->nkw;
	}
}

/* Inserts at pos; the caller has checked that kw is valid and absent. */
static void kw_insert(struct flagset *fs, size_t pos, const char *kw, size_t len)
{
	fs->kw = xrealloc(fs->kw, (fs->nkw + 1) * sizeof(*fs->kw));
	memmove(fs->kw + pos + 1, fs->kw + pos, (fs->nkw - pos) * sizeof(*fs->kw));
	fs->kw[pos] = xstrndup(kw, len);
	fs->nkw++;
}

int flagset_add_len(struct flagset *fs, const char *flag, size_t len)
{
	if (len > 0 && flag[0] == '\\') {
		for (size_t i = 0; i < ARRAY_SIZE(sys_flags); i++) {
			if (kw_eq(flag, len, sys_flags[i].name)) {
				fs->sys |= sys_flags[i].bit;
				return 1;
			}
		}
		/*
		 * \Recent is session state, \* only appears in PERMANENTFLAGS,
		 * other flag-extensions mean nothing to the other server: none
		 * of them is carried, but none is an error either.
		 */
		if (len == 2 && flag[1] == '*')
			return 0;
		return flag_keyword_valid(flag + 1, len - 1) ? 0 : -1;
	}
	if (!flag_keyword_valid(flag, len))
		return -1;
	size_t pos;
	if (!kw_find(fs, flag, len, &pos))
		kw_insert(fs, pos, flag, len);
	return 1;
}

int flagset_add(struct flagset *fs, const char *flag)
{
	return flagset_add_len(fs, flag, strlen(flag));
}

bool flagset_remove_kw(struct flagset *fs, const char *kw)
{
	size_t pos;
	if (!kw_find(fs, kw, strlen(kw), &pos))
		return false;
	free(fs->kw[pos]);
	memmove(fs->kw + pos, fs->kw + pos + 1, (fs->nkw - pos - 1) * sizeof(*fs->kw));
	fs->nkw--;
	if (fs->nkw == 0) {
		free(fs->kw);
		fs->kw = NULL;
	}
	return true;
}

bool flagset_has_kw(const struct flagset *fs, const char *kw)
{
	size_t pos;
	return kw_find(fs, kw, strlen(kw), &pos);
}

int flagset_parse(struct flagset *fs, const char *text)
{
	int ret = 0;
	const char *p = text, *end = text + strlen(text);

	while (p < end && *p == ' ')
		p++;
	while (end > p && end[-1] == ' ')
		end--;
	/* Parens come as a pair or not at all: "(\Seen" is malformed. */
	bool open = p < end && *p == '(';
	bool close = end > p && end[-1] == ')';
	if (open != close || (open && end - p < 2))
		ret = -1;
	if (open)
		p++;
	if (close && end > p)
		end--;

	while (p < end) {
		if (*p == ' ') {
			p++;
			continue;
		}
		const char *item = p;
		while (p < end && *p != ' ')
			p++;
		if (flagset_add_len(fs, item, (size_t)(p - item)) < 0)
			ret = -1;
	}
	return ret;
}

char *flagset_format(const struct flagset *fs)
{
	struct buf b = BUF_INIT;

	for (size_t i = 0; i < ARRAY_SIZE(sys_flags); i++) {
		if (fs->sys & sys_flags[i].bit) {
			if (b.len)
				buf_addc(&b, ' ');
			buf_adds(&b, sys_flags[i].name);
		}
	}
	for (size_t i = 0; i < fs->nkw; i++) {
		if (b.len)
			buf_addc(&b, ' ');
		buf_adds(&b, fs->kw[i]);
	}
	return buf_detach(&b);
}

bool flagset_equal(const struct flagset *a, const struct flagset *b)
{
	if (a->sys != b->sys || a->nkw != b->nkw)
		return false;
	for (size_t i = 0; i < a->nkw; i++) {
		if (ascii_strcasecmp(a->kw[i], b->kw[i]) != 0)
			return false;
	}
	return true;
}

void flagset_minus(struct flagset *out, const struct flagset *a, const struct flagset *b)
{
	/* Built aside so that out may be a or b. */
	struct flagset res = FLAGSET_INIT;

	res.sys = a->sys & ~b->sys;
	for (size_t i = 0; i < a->nkw; i++) {
		if (!flagset_has_kw(b, a->kw[i]))
			kw_insert(&res, res.nkw, a->kw[i], strlen(a->kw[i]));
	}
	flagset_clear(out);
	*out = res;
}
