/*
 * flags.h — IMAP message flags as a value: system flags as bits, keywords as
 * a sorted, de-duplicated list (flags are case-insensitive, RFC 3501 2.3.2;
 * the first spelling seen is kept).
 *
 * The canonical text form, used in the state DB and in reports, is the
 * system flags in the fixed order below followed by the keywords sorted
 * case-insensitively, separated by single spaces: "\Seen \Flagged $Junk work".
 */
#ifndef POSTINO_FLAGS_H
#define POSTINO_FLAGS_H

#include <stdbool.h>
#include <stddef.h>

enum {
	FL_SEEN = 1 << 0,
	FL_ANSWERED = 1 << 1,
	FL_FLAGGED = 1 << 2,
	FL_DELETED = 1 << 3,
	FL_DRAFT = 1 << 4,
};
#define FL_ALL_SYS (FL_SEEN | FL_ANSWERED | FL_FLAGGED | FL_DELETED | FL_DRAFT)

struct flagset {
	unsigned sys;  /* FL_* bits */
	size_t nkw;
	char **kw;     /* sorted case-insensitively, no duplicates; owned */
};

#define FLAGSET_INIT { 0, 0, NULL }

void flagset_init(struct flagset *fs);
void flagset_clear(struct flagset *fs);
/* dst must be initialized (FLAGSET_INIT or a used set): its old contents are freed. */
void flagset_copy(struct flagset *dst, const struct flagset *src);

/*
 * Adds one flag given as text: a system flag ("\Seen", any case) sets its bit;
 * "\Recent" and other backslash flags are ignored (returns 0: not an error,
 * nothing to carry); a keyword is added if it is a valid atom. Returns 1 if
 * added, 0 if ignored, -1 if not a valid flag (e.g. contains a space, a
 * paren, a quote, a '%', a '*', a ']' or a control character).
 * A flag already in the set also returns 1 (the first spelling stays).
 */
int flagset_add(struct flagset *fs, const char *flag);
int flagset_add_len(struct flagset *fs, const char *flag, size_t len);
bool flagset_remove_kw(struct flagset *fs, const char *kw);
bool flagset_has_kw(const struct flagset *fs, const char *kw);

/*
 * Parses a space-separated flag list, with or without surrounding parens.
 * Returns 0, or -1 if any item is invalid (the valid ones are still added).
 */
int flagset_parse(struct flagset *fs, const char *text);

/* Canonical text form (see above); caller frees. Empty set gives "". */
char *flagset_format(const struct flagset *fs);

bool flagset_equal(const struct flagset *a, const struct flagset *b);

/* out = a \ b (flags in a and not in b). out is cleared first. */
void flagset_minus(struct flagset *out, const struct flagset *a, const struct flagset *b);

/* True if kw is a valid IMAP flag-keyword atom (RFC 3501 atom, no '\'). */
bool flag_keyword_valid(const char *kw, size_t len);

#endif
