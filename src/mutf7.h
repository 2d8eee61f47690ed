/*
 * mutf7.h — IMAP modified UTF-7 (RFC 3501 5.1.3) <-> UTF-8.
 */
#ifndef POSTINO_MUTF7_H
#define POSTINO_MUTF7_H

/*
 * Encodes UTF-8 into modified UTF-7. Returns a new string, or NULL if the
 * input is not valid UTF-8.
 */
char *mutf7_encode(const char *utf8);

/*
 * Decodes modified UTF-7 into UTF-8. Returns a new string, or NULL if the
 * input is not valid modified UTF-7 (bad base64, non-zero padding bits,
 * an encoded printable ASCII character, unpaired surrogates, "&-" style
 * empty shifts other than the "&-" escape, raw 8-bit bytes).
 */
char *mutf7_decode(const char *mutf7);

#endif
