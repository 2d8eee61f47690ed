/*
 * imap_guard.h — a check of what an IMAP server sends, before libetpan
 * parses it (docs/reliability.md, "hostile servers").
 *
 * libetpan 1.9.4 (Debian 12) has parser defects that upstream fixed later
 * (docs/libetpan.md, "What is broken"): a PERMANENTFLAGS response code whose
 * first flag does not parse ("* OK [PERMANENTFLAGS (%)]") dereferences NULL
 * and kills the process, and a literal's announced size is allocated up
 * front ({4000000000}). net.c feeds every byte read from an IMAP server
 * through this guard; when it objects, the read fails and the session is
 * dropped as a lost connection, cleanly, before libetpan sees the bytes.
 *
 * The guard follows the stream line by line and skips literals (their bytes
 * are message text, never checked). It keeps at most IMAP_GUARD_KEEP bytes
 * of a line.
 */
#ifndef POSTINO_IMAP_GUARD_H
#define POSTINO_IMAP_GUARD_H

#include <stddef.h>
#include <stdint.h>

#define IMAP_GUARD_KEEP 1024
/* The largest literal a server may announce: far above any provider's
 * message size limit, far below an allocation that hurts. */
#define IMAP_GUARD_MAX_LITERAL ((uint64_t)1 << 30)

struct imap_guard {
	uint64_t literal_left;  /* bytes of a literal still to come */
	size_t len;             /* bytes of the current line kept in line[] */
	char line[IMAP_GUARD_KEEP];
	uint64_t line_total;    /* bytes of the current line seen */
	char tail[32];          /* the last bytes of the current line */
	size_t tail_len;
	const char *why;        /* set once the guard has objected */
};

/* Feeds bytes the server sent, in order. Returns 0, or -1 when the stream
 * must be dropped (g->why says why; every later call fails too). */
int imap_guard_feed(struct imap_guard *g, const char *p, size_t n);

#endif
