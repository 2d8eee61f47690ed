/*
 * spool.h — a batch of message bodies held in an unlinked temporary file
 * between the source's FETCH and the destination's APPEND.
 *
 * Memory stays bounded whatever the size of a message: bytes go to the file
 * (the page cache makes it cheap), never to the heap. While bytes arrive the
 * spool hashes them (SHA-256) and keeps the header block, so that each
 * message leaves with its identity: size, hash, Message-ID.
 */
#ifndef POSTINO_SPOOL_H
#define POSTINO_SPOOL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "store.h"

struct spool_msg {
	uint32_t uid;          /* source UID (or POP3 message number) */
	off_t off;
	uint64_t len;
	uint8_t sha256[32];
	char *msgid;           /* Message-ID, or NULL */
	struct flagset flags;  /* as fetched with the body */
	int64_t idate;
	int tzoff;
};

struct spool {
	int fd;
	off_t end;              /* bytes in the file */
	off_t cur_off;          /* start of the message being received */
	void *hash;             /* gnutls_hash_hd_t of the message being received */
	char *hdr;              /* its header block so far (capped) */
	size_t hdr_len;
	bool hdr_done;
	struct spool_msg *msgs;
	size_t n, cap;
	int error;              /* errno of a failed write */
	/* bytes of the message being received not yet written: they belong
	 * at [end - wlen, end) in the file; written at the latest when the
	 * message is done */
	char *wbuf;
	size_t wlen;
};

/* Opens an unlinked temp file under $TMPDIR (or /tmp). 0, or -1 with errno. */
int spool_open(struct spool *sp);
void spool_close(struct spool *sp);
/* Forgets all messages and truncates the file. */
void spool_reset(struct spool *sp);

/* A body_sink (store.h) that fills the spool. */
void spool_sink(struct spool *sp, struct body_sink *sink);

/* If sink is a spool's sink: forgets the bytes it got since the last
 * message was done (a server sent a message nobody asked for, or one
 * twice) and returns true. False for any other sink. */
bool spool_sink_discard(const struct body_sink *sink);

/* Appends a whole message at once (POP3, tests). */
int spool_add(struct spool *sp, const char *bytes, size_t len, const struct msg_info *mi);

/* Reads a message back (tests, verification); caller frees. */
char *spool_read(const struct spool *sp, const struct spool_msg *m);

#endif
