/*
 * util.h — small helpers every module uses: checked allocation, a growable
 * byte buffer, string helpers.
 *
 * Allocation failure is not recoverable in postino (the state DB keeps the
 * run resumable), so xmalloc() and friends abort with a message instead of
 * returning NULL.
 */
#ifndef POSTINO_UTIL_H
#define POSTINO_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *xvasprintf(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));

/* Growable buffer; buf.s is always NUL-terminated (when non-NULL). */
struct buf {
	char *s;
	size_t len;
	size_t cap;
};
#define BUF_INIT { NULL, 0, 0 }
void buf_grow(struct buf *b, size_t extra);
void buf_add(struct buf *b, const void *data, size_t len);
void buf_adds(struct buf *b, const char *s);
void buf_addc(struct buf *b, char c);
void buf_addf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_reset(struct buf *b);
/* Returns the string and leaves b empty; the caller owns the result. */
char *buf_detach(struct buf *b);
void buf_release(struct buf *b);

/* qsort and bsearch that accept an empty (NULL) array, which the C
 * standard does not allow the originals. */
void xqsort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *));
void *xbsearch(const void *key, const void *base, size_t n, size_t size,
    int (*cmp)(const void *, const void *));

/* Case-insensitive ASCII comparison (locale-independent). */
/* Display width of a UTF-8 string, counting code points (for tables). */
int utf8_width(const char *s);
int ascii_strcasecmp(const char *a, const char *b);

/* Monotonic clock in milliseconds. */
int64_t now_ms(void);

/* Write all of len bytes; -1 with errno on error. */
int write_all(int fd, const void *data, size_t len);

#endif
