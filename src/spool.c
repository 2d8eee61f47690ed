/*
 * spool.c — message bodies in an unlinked temp file, hashed on the way in.
 */
#include "spool.h"

#include <errno.h>
#include <fcntl.h>
#include <gnutls/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "message.h"
#include "util.h"

/* The header block is kept in memory up to this size for the Message-ID;
 * a header larger than this is unusual, and then the ID is searched in the
 * first HDR_MAX bytes only. */
#define HDR_MAX (64 * 1024)

/* Bodies arrive in chunks of a few KB (libetpan's reads); they are
 * written in pieces of up to this much: one pwrite per small message
 * rather than one per chunk. */
#define WBUF_SIZE (128 * 1024)

/* A reset keeps the file's blocks up to this size for the next batch:
 * overwriting pages already in the page cache is cheaper than having the
 * kernel allocate and zero new ones (a fifth of postino's CPU in a copy
 * before, docs/performance.md). A larger file (a huge message) is
 * truncated, so that the disk is not held. */
#define KEEP_BYTES ((off_t)64 << 20)

int spool_open(struct spool *sp)
{
	memset(sp, 0, sizeof *sp);
	sp->wbuf = xmalloc(WBUF_SIZE);
	const char *dir = getenv("TMPDIR");
	if (!dir || !*dir)
		dir = "/tmp";
	sp->fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (sp->fd < 0) {
		/* O_TMPFILE unsupported by this file system: mkstemp + unlink */
		char *tmpl = xasprintf("%s/postino-spool-XXXXXX", dir);
		sp->fd = mkostemp(tmpl, O_CLOEXEC);
		if (sp->fd >= 0)
			unlink(tmpl);
		free(tmpl);
		if (sp->fd < 0) {
			free(sp->wbuf);
			sp->wbuf = NULL;
			return -1;
		}
	}
	return 0;
}

/* Writes the buffered bytes where they belong. 0, or -1 (sp->error set). */
static int sp_flush(struct spool *sp)
{
	if (!sp->wlen)
		return 0;
	off_t at = sp->end - (off_t)sp->wlen;
	if (pwrite(sp->fd, sp->wbuf, sp->wlen, at) != (ssize_t)sp->wlen) {
		sp->error = errno ? errno : EIO;
		return -1;
	}
	sp->wlen = 0;
	return 0;
}

static void msg_release(struct spool_msg *m)
{
	free(m->msgid);
	flagset_clear(&m->flags);
}

void spool_reset(struct spool *sp)
{
	for (size_t i = 0; i < sp->n; i++)
		msg_release(&sp->msgs[i]);
	sp->n = 0;
	if (sp->hash) {
		gnutls_hash_deinit(sp->hash, NULL);
		sp->hash = NULL;
	}
	free(sp->hdr);
	sp->hdr = NULL;
	sp->hdr_len = 0;
	sp->hdr_done = false;
	off_t was = sp->end;
	sp->end = sp->cur_off = 0;
	sp->wlen = 0;
	sp->error = 0;
	if (sp->fd >= 0 && was > KEEP_BYTES && ftruncate(sp->fd, 0) < 0)
		sp->error = errno;
}

void spool_close(struct spool *sp)
{
	spool_reset(sp);
	free(sp->msgs);
	sp->msgs = NULL;
	free(sp->wbuf);
	sp->wbuf = NULL;
	sp->cap = 0;
	if (sp->fd >= 0)
		close(sp->fd);
	sp->fd = -1;
}

static int sp_data(void *ctx, const char *bytes, size_t len)
{
	struct spool *sp = ctx;
	if (!sp->hash && gnutls_hash_init((gnutls_hash_hd_t *)&sp->hash, GNUTLS_DIG_SHA256) < 0)
		return -1;
	gnutls_hash(sp->hash, bytes, len);
	if (!sp->hdr_done) {
		size_t take = len;
		if (sp->hdr_len + take > HDR_MAX)
			take = HDR_MAX - sp->hdr_len;
		sp->hdr = xrealloc(sp->hdr, sp->hdr_len + take + 1);
		memcpy(sp->hdr + sp->hdr_len, bytes, take);
		sp->hdr_len += take;
		sp->hdr[sp->hdr_len] = 0;
		size_t hl = msg_header_len(sp->hdr, sp->hdr_len);
		if (hl < sp->hdr_len || sp->hdr_len >= HDR_MAX) {
			sp->hdr_len = hl;
			sp->hdr_done = true;
		}
	}
	if (sp->wlen + len > WBUF_SIZE && sp_flush(sp) < 0)
		return -1;
	if (len >= WBUF_SIZE) {
		if (pwrite(sp->fd, bytes, len, sp->end) != (ssize_t)len) {
			sp->error = errno ? errno : EIO;
			return -1;
		}
	} else {
		memcpy(sp->wbuf + sp->wlen, bytes, len);
		sp->wlen += len;
	}
	sp->end += (off_t)len;
	return 0;
}

static int sp_done(void *ctx, const struct msg_info *mi)
{
	struct spool *sp = ctx;
	if (sp_flush(sp) < 0)
		return -1;
	if (!sp->hash && gnutls_hash_init((gnutls_hash_hd_t *)&sp->hash, GNUTLS_DIG_SHA256) < 0)
		return -1;
	if (sp->n == sp->cap) {
		sp->cap = sp->cap ? sp->cap * 2 : 64;
		sp->msgs = xrealloc(sp->msgs, sp->cap * sizeof *sp->msgs);
	}
	struct spool_msg *m = &sp->msgs[sp->n++];
	memset(m, 0, sizeof *m);
	m->uid = mi->uid;
	m->off = sp->cur_off;
	m->len = (uint64_t)(sp->end - sp->cur_off);
	gnutls_hash_deinit(sp->hash, m->sha256);
	sp->hash = NULL;
	m->msgid = sp->hdr ? msg_message_id(sp->hdr, sp->hdr_len) : NULL;
	flagset_copy(&m->flags, &mi->flags);
	m->idate = mi->idate;
	m->tzoff = mi->tzoff;
	free(sp->hdr);
	sp->hdr = NULL;
	sp->hdr_len = 0;
	sp->hdr_done = false;
	sp->cur_off = sp->end;
	return 0;
}

static void sp_discard(void *ctx)
{
	struct spool *sp = ctx;
	if (sp->hash) {
		uint8_t unused[32];
		gnutls_hash_deinit(sp->hash, unused);
		sp->hash = NULL;
	}
	free(sp->hdr);
	sp->hdr = NULL;
	sp->hdr_len = 0;
	sp->hdr_done = false;
	/* the buffer holds only this message's bytes (a done message is
	 * written out) */
	sp->wlen = 0;
	sp->end = sp->cur_off;
}

void spool_sink(struct spool *sp, struct body_sink *sink)
{
	sink->data = sp_data;
	sink->done = sp_done;
	sink->ctx = sp;
}

bool spool_sink_discard(const struct body_sink *sink)
{
	if (sink->done != sp_done)
		return false;
	sp_discard(sink->ctx);
	return true;
}

int spool_add(struct spool *sp, const char *bytes, size_t len, const struct msg_info *mi)
{
	if (len && sp_data(sp, bytes, len) < 0)
		return -1;
	return sp_done(sp, mi);
}

char *spool_read(const struct spool *sp, const struct spool_msg *m)
{
	char *p = xmalloc(m->len + 1);
	if (pread(sp->fd, p, m->len, m->off) != (ssize_t)m->len) {
		free(p);
		return NULL;
	}
	p[m->len] = 0;
	return p;
}
