/*
 * message.h — the little postino needs to know about RFC 5322 messages:
 * finding a header field in a header block, the Message-ID, dates.
 * Messages themselves are never changed: postino copies bytes.
 */
#ifndef POSTINO_MESSAGE_H
#define POSTINO_MESSAGE_H

#include <stddef.h>
#include <stdint.h>

/* Length of the header block (up to and including the empty line), or len
 * if the message has no body separator. Accepts CRLF and bare LF. */
size_t msg_header_len(const char *msg, size_t len);

/*
 * The unfolded value of the first header field called name (case-
 * insensitive) in the header block hdr, leading/trailing white space
 * trimmed; NULL if absent. Caller frees.
 */
char *msg_header_get(const char *hdr, size_t len, const char *name);

/*
 * The Message-ID of a header block, normalised: the text between the first
 * '<' and the following '>' with white space removed, or the trimmed field
 * value when it has no angle brackets; NULL if absent or empty. Caller frees.
 */
char *msg_message_id(const char *hdr, size_t len);

/*
 * Parses an RFC 5322 date-time ("Tue, 1 Jan 2024 10:00:00 +0100", obsolete
 * forms too). Returns 0 with Unix time and zone (minutes east of UTC), or
 * -1 if it is not a date.
 */
int msg_date_parse(const char *s, size_t len, int64_t *t_r, int *tzoff_r);

/*
 * When a message arrived, from its header block: the date of the topmost
 * Received: field (added by the last server, the one that delivered it),
 * else the Date: field. Returns 0, or -1 if neither gives a date.
 */
int msg_arrival_date(const char *hdr, size_t len, int64_t *t_r, int *tzoff_r);

/* Formats an IMAP date-time: "dd-Mon-yyyy hh:mm:ss +zzzz" (27 bytes + NUL). */
void imap_date_format(char out[32], int64_t t, int tzoff_min);

#endif
