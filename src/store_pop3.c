/*
 * store_pop3.c — a POP3 account as a read-only store with one folder.
 *
 * RFC 1939 (POP3), RFC 2595 (STLS), RFC 2449 (CAPA).
 *
 * The mailbox is one folder, "INBOX". A message's identity is its UIDL
 * (msg_info.uidl); its "UID" is its message number, valid for this session
 * only. Servers without UIDL: the identity is "hdr:" + the SHA-256 of the
 * header block (TOP n 0), with "#k" added for the k-th message with the
 * same header in listing order, so that a double delivery stays two
 * messages (docs/design.md, "POP3").
 *
 * Bodies are streamed: libetpan's RETR builds the whole message in memory,
 * so RETR is written here with the stream's own line reader, undoing the
 * dot-stuffing and passing bytes on as they come.
 *
 * expunge() is --delete-after: DELE for each message, then QUIT, which is
 * the only thing that commits deletions; any error before that drops the
 * connection without QUIT (net_pop3_abort), so nothing is deleted. After
 * QUIT a new session lists the mailbox to confirm what is really gone.
 */
#include "store.h"

#include <errno.h>
#include <gnutls/crypto.h>
#include <stdlib.h>
#include <string.h>

#include <libetpan/libetpan.h>

#include "log.h"
#include "message.h"
#include "net.h"
#include "util.h"

struct pop3_msg {
	unsigned num;
	uint64_t size;
	char *uidl;
};

struct pop3_store {
	struct store base;
	mailpop3 *pop;
	struct pop3_msg *msgs;  /* the listing of this session */
	size_t nmsgs;
	bool listed;
	bool warned_no_uidl;
};

#define PS(s) ((struct pop3_store *)(s))

static void forget_listing(struct pop3_store *ps)
{
	for (size_t i = 0; i < ps->nmsgs; i++)
		free(ps->msgs[i].uidl);
	free(ps->msgs);
	ps->msgs = NULL;
	ps->nmsgs = 0;
	ps->listed = false;
}

static void drop_session(struct pop3_store *ps)
{
	if (ps->pop) {
		/* never QUIT here: QUIT commits pending DELEs */
		net_pop3_abort(ps->pop);
		ps->pop = NULL;
	}
	forget_listing(ps);
}

static const char *server_text(struct pop3_store *ps)
{
	const char *t = ps->pop ? ps->pop->pop3_response : NULL;
	return t && *t ? t : "(no text)";
}

static enum store_rc conn_lost(struct pop3_store *ps, const char *what)
{
	enum store_rc rc = store_fail(&ps->base, STORE_CONN_BAD, "%s: %s: connection lost",
	    ps->base.url->host, what);
	drop_session(ps);
	return rc;
}

static enum store_rc pop3_connect(struct store *s)
{
	struct pop3_store *ps = PS(s);
	drop_session(ps);
	enum store_fatal_kind kind = FATAL_NONE;
	char *err = NULL;
	enum store_rc rc = net_pop3_login(&ps->pop, s->url, &s->opts, &kind, &err);
	if (rc != STORE_OK) {
		s->fatal = kind;
		free(s->error);
		s->error = err ? err : xasprintf("%s: cannot connect", s->url->host);
		ps->pop = NULL;
		return rc;
	}
	memset(&s->caps, 0, sizeof s->caps);
	s->caps.pop3 = true;
	free(s->ns.prefix);
	s->ns.prefix = xstrdup("");
	s->ns.delim = 0;
	return STORE_OK;
}

static void pop3_disconnect(struct store *s)
{
	/* A clean disconnect still sends no QUIT: only expunge() commits. */
	drop_session(PS(s));
}

static enum store_rc pop3_list(struct store *s, struct store_folder_list *out)
{
	out->n = 1;
	out->v = xcalloc(1, sizeof *out->v);
	out->v[0].name = xstrdup("INBOX");
	out->v[0].delim = 0;
	out->v[0].attrs = 0;
	return STORE_OK;
}

static enum store_rc pop3_create(struct store *s, const char *name, bool subscribe)
{
	return store_fail(s, STORE_BOX_BAD, "%s: a POP3 account cannot be a destination",
	    s->url->host);
}

/*
 * Streams message num (RETR, or TOP num lines) to the callbacks.
 *
 * POP3 ends every multi-line answer with a line break before the final
 * ".": a message that did not end with one gains one. The line break of
 * the last line is therefore held back until the end, and dropped when the
 * message without it has exactly the size LIST announced (listed_size; 0:
 * unknown), which is then the message as stored.
 */
static enum store_rc retrieve(struct pop3_store *ps, unsigned num, long top_lines,
    uint64_t listed_size, int (*data)(void *ctx, const char *bytes, size_t len), void *ctx)
{
	char cmd[64];
	if (top_lines >= 0)
		snprintf(cmd, sizeof cmd, "TOP %u %ld\r\n", num, top_lines);
	else
		snprintf(cmd, sizeof cmd, "RETR %u\r\n", num);
	mailstream *st = ps->pop->pop3_stream;
	if (mailstream_write(st, cmd, strlen(cmd)) < 0 || mailstream_flush(st) < 0)
		return conn_lost(ps, "RETR");
	MMAPString *buf = ps->pop->pop3_stream_buffer;
	char *line = mailstream_read_line_remove_eol(st, buf);
	if (!line)
		return conn_lost(ps, "RETR");
	if (strncmp(line, "+OK", 3)) {
		return store_fail(&ps->base, STORE_MSG_BAD, "%s: %s %u: %s", ps->base.url->host,
		    top_lines >= 0 ? "TOP" : "RETR", num, line);
	}
	int cb = 0;
	char held[2];        /* the last line's line break, not passed on yet */
	size_t nheld = 0;
	uint64_t total = 0;  /* bytes passed on */
	for (;;) {
		line = mailstream_read_line(st, buf);
		if (!line)
			return conn_lost(ps, "RETR");
		size_t len = buf->len;
		/* the terminating line: "." and its line break */
		if (line[0] == '.' && (len == 1 || (len == 2 && line[1] == '\n') ||
			(len == 3 && line[1] == '\r' && line[2] == '\n')))
			break;
		const char *p = line;
		if (p[0] == '.') { /* dot-stuffing */
			p++;
			len--;
		}
		if (!cb && nheld)
			cb = data(ctx, held, nheld);
		total += nheld;
		nheld = 0;
		if (len && p[len - 1] == '\n') {
			size_t eol = len >= 2 && p[len - 2] == '\r' ? 2 : 1;
			memcpy(held, p + len - eol, eol);
			nheld = eol;
			len -= eol;
		}
		if (!cb && len)
			cb = data(ctx, p, len);
		total += len;
	}
	if (nheld && !(top_lines < 0 && listed_size && total == listed_size)) {
		if (!cb)
			cb = data(ctx, held, nheld);
	}
	return cb ? store_fail(&ps->base, STORE_FATAL, "cannot keep a fetched message: %s",
	    strerror(errno ? errno : EIO)) : STORE_OK;
}

struct hdr_ctx {
	struct buf b;
};

static int hdr_data(void *ctx, const char *bytes, size_t len)
{
	struct hdr_ctx *h = ctx;
	if (h->b.len < (1u << 20))
		buf_add(&h->b, bytes, len);
	return 0;
}

/* Identities for a server without UIDL: the header's hash (see top). */
static enum store_rc identities_from_headers(struct pop3_store *ps)
{
	if (!ps->warned_no_uidl) {
		log_warn("%s: the server has no UIDL; messages are told apart by a hash of "
		    "their headers", ps->base.url->host);
		ps->warned_no_uidl = true;
	}
	for (size_t i = 0; i < ps->nmsgs; i++) {
		struct hdr_ctx h = {BUF_INIT};
		enum store_rc rc = retrieve(ps, ps->msgs[i].num, 0, 0, hdr_data, &h);
		if (rc) {
			buf_release(&h.b);
			return rc;
		}
		uint8_t d[32];
		size_t hl = h.b.s ? msg_header_len(h.b.s, h.b.len) : 0;
		gnutls_hash_fast(GNUTLS_DIG_SHA256, h.b.s ? h.b.s : "", hl, d);
		buf_release(&h.b);
		char hex[65];
		for (int k = 0; k < 32; k++)
			snprintf(hex + 2 * k, 3, "%02x", d[k]);
		/* the k-th message with this header, in listing order */
		unsigned same = 0;
		for (size_t j = 0; j < i; j++)
			if (!strncmp(ps->msgs[j].uidl, "hdr:", 4) &&
			    !strncmp(ps->msgs[j].uidl + 4, hex, 64))
				same++;
		ps->msgs[i].uidl = same ? xasprintf("hdr:%s#%u", hex, same + 1)
		    : xasprintf("hdr:%s", hex);
	}
	return STORE_OK;
}

static enum store_rc ensure_listing(struct pop3_store *ps)
{
	if (ps->listed)
		return STORE_OK;
	if (!ps->pop)
		return store_fail(&ps->base, STORE_CONN_BAD, "%s: not connected",
		    ps->base.url->host);
	carray *tab = NULL;
	int r = mailpop3_list(ps->pop, &tab);
	if (r == MAILPOP3_ERROR_STREAM)
		return conn_lost(ps, "LIST");
	if (r != MAILPOP3_NO_ERROR)
		return store_fail(&ps->base, STORE_BOX_BAD, "%s: LIST: %s", ps->base.url->host,
		    server_text(ps));
	bool have_uidl = true;
	size_t n = tab ? carray_count(tab) : 0;
	ps->msgs = xcalloc(n ? n : 1, sizeof *ps->msgs);
	for (size_t i = 0; i < n; i++) {
		struct mailpop3_msg_info *mi = carray_get(tab, (unsigned)i);
		if (!mi || mi->msg_deleted)
			continue;
		struct pop3_msg *m = &ps->msgs[ps->nmsgs++];
		m->num = mi->msg_index;
		m->size = mi->msg_size;
		m->uidl = mi->msg_uidl && *mi->msg_uidl ? xstrdup(mi->msg_uidl) : NULL;
		if (!m->uidl)
			have_uidl = false;
	}
	if (!have_uidl || getenv("POSTINO_TEST_POP3_NO_UIDL")) {
		for (size_t i = 0; i < ps->nmsgs; i++) {
			free(ps->msgs[i].uidl);
			ps->msgs[i].uidl = NULL;
		}
		enum store_rc rc = identities_from_headers(ps);
		if (rc)
			return rc;
	}
	ps->listed = true;
	return STORE_OK;
}

static enum store_rc pop3_status(struct store *s, const char *name, struct box_status *st)
{
	struct pop3_store *ps = PS(s);
	box_status_clear(st);
	enum store_rc rc = ensure_listing(ps);
	if (rc)
		return rc;
	/* No UIDs that survive a session: UIDVALIDITY is a constant, UIDNEXT
	 * means nothing (the copier scans a POP3 box in full every time). */
	st->uidvalidity = 1;
	st->uidnext = (uint32_t)ps->nmsgs + 1;
	st->exists = (uint32_t)ps->nmsgs;
	return STORE_OK;
}

static enum store_rc pop3_select(struct store *s, const char *name, bool readonly,
    struct box_status *st)
{
	if (ascii_strcasecmp(name, "INBOX"))
		return store_fail(s, STORE_BOX_BAD, "%s: a POP3 account has only INBOX",
		    s->url->host);
	return pop3_status(s, name, st);
}

static void fill_info(struct pop3_store *ps, const struct pop3_msg *m, struct msg_info *mi)
{
	memset(mi, 0, sizeof *mi);
	mi->uid = m->num;
	mi->uidl = m->uidl;
	mi->size = m->size;
	mi->idate = IDATE_NONE;
	if (ps->base.opts.pop3_mark_seen)
		mi->flags.sys = FL_SEEN;
}

static enum store_rc pop3_scan(struct store *s, uint32_t from_uid, uint64_t changedsince,
    unsigned what, store_scan_cb *cb, void *ctx)
{
	struct pop3_store *ps = PS(s);
	enum store_rc rc = ensure_listing(ps);
	if (rc)
		return rc;
	for (size_t i = 0; i < ps->nmsgs; i++) {
		struct pop3_msg *m = &ps->msgs[i];
		if (m->num < from_uid)
			continue;
		struct msg_info mi;
		fill_info(ps, m, &mi);
		char *msgid = NULL;
		if (what & SCAN_MSGID) {
			struct hdr_ctx h = {BUF_INIT};
			rc = retrieve(ps, m->num, 0, 0, hdr_data, &h);
			if (rc == STORE_OK && h.b.s)
				msgid = msg_message_id(h.b.s, h.b.len);
			buf_release(&h.b);
			if (rc == STORE_CONN_BAD || rc == STORE_FATAL)
				return rc;
			mi.msgid = msgid;
		}
		int r = cb(ctx, &mi);
		free(msgid);
		if (r)
			return (enum store_rc)r;
	}
	return STORE_OK;
}

/* While a message streams to the sink, keep its header for the date. */
struct fetch_ctx {
	struct body_sink *sink;
	struct buf hdr;
	bool hdr_done;
	uint64_t bytes;
};

static int fetch_data(void *ctx, const char *bytes, size_t len)
{
	struct fetch_ctx *f = ctx;
	if (!f->hdr_done) {
		buf_add(&f->hdr, bytes, len);
		size_t hl = msg_header_len(f->hdr.s, f->hdr.len);
		if (hl < f->hdr.len || f->hdr.len > (256u << 10))
			f->hdr_done = true;
	}
	f->bytes += len;
	return f->sink->data(f->sink->ctx, bytes, len);
}

static enum store_rc pop3_fetch(struct store *s, const uint32_t *uids, size_t n,
    struct body_sink *sink)
{
	struct pop3_store *ps = PS(s);
	enum store_rc rc = ensure_listing(ps);
	if (rc)
		return rc;
	for (size_t i = 0; i < n; i++) {
		const struct pop3_msg *m = NULL;
		for (size_t k = 0; k < ps->nmsgs && !m; k++)
			if (ps->msgs[k].num == uids[i])
				m = &ps->msgs[k];
		if (!m)
			continue;
		struct fetch_ctx f = {sink, BUF_INIT, false, 0};
		rc = retrieve(ps, m->num, -1, m->size, fetch_data, &f);
		if (rc == STORE_MSG_BAD) {
			/* gone meanwhile (another client deleted it): skip it */
			log_warn("%s", store_error(s));
			buf_release(&f.hdr);
			continue;
		}
		if (rc) {
			buf_release(&f.hdr);
			return rc;
		}
		struct msg_info mi;
		fill_info(ps, m, &mi);
		mi.size = f.bytes;
		if (!s->opts.pop3_no_date && f.hdr.s) {
			int64_t t;
			int tz;
			if (msg_arrival_date(f.hdr.s, msg_header_len(f.hdr.s, f.hdr.len), &t, &tz) == 0) {
				mi.idate = t;
				mi.tzoff = tz;
			}
		}
		buf_release(&f.hdr);
		s->bytes_in += f.bytes;
		if (sink->done(sink->ctx, &mi))
			return store_fail(s, STORE_FATAL, "cannot keep a fetched message");
	}
	return STORE_OK;
}

static enum store_rc pop3_append(struct store *s, const char *folder,
    struct append_item *items, size_t n, uint32_t *uidvalidity_r)
{
	return pop3_create(s, folder, false);
}

static enum store_rc pop3_set_flags(struct store *s, const uint32_t *uids, size_t n,
    const struct flagset *add, const struct flagset *del)
{
	return STORE_OK; /* POP3 keeps no flags: nothing to do */
}

/*
 * DELE each message, then QUIT to commit, then a new session to confirm.
 * uids are message numbers of this session's listing. On return the
 * listing of the new session is current; STORE_OK means QUIT was accepted
 * (the caller checks which UIDLs are really gone).
 */
static enum store_rc pop3_expunge(struct store *s, const uint32_t *uids, size_t n)
{
	struct pop3_store *ps = PS(s);
	if (!ps->pop)
		return store_fail(s, STORE_CONN_BAD, "%s: not connected", s->url->host);
	for (size_t i = 0; i < n; i++) {
		int r = mailpop3_dele(ps->pop, uids[i]);
		if (r == MAILPOP3_ERROR_STREAM)
			return conn_lost(ps, "DELE"); /* no QUIT: nothing deleted */
		if (r != MAILPOP3_NO_ERROR) {
			enum store_rc rc = store_fail(s, STORE_BOX_BAD, "%s: DELE %u: %s",
			    s->url->host, uids[i], server_text(ps));
			drop_session(ps); /* nothing deleted */
			return rc;
		}
	}
	/* QUIT commits. libetpan's mailpop3_quit reports success whatever the
	 * server says: read the answer ourselves. */
	mailstream *st = ps->pop->pop3_stream;
	if (mailstream_write(st, "QUIT\r\n", 6) < 0 || mailstream_flush(st) < 0)
		return conn_lost(ps, "QUIT");
	char *line = mailstream_read_line_remove_eol(st, ps->pop->pop3_stream_buffer);
	bool ok = line && !strncmp(line, "+OK", 3);
	char *text = xstrdup(line ? line : "connection lost");
	drop_session(ps);
	enum store_rc rc = pop3_connect(s);
	if (rc == STORE_OK)
		rc = ensure_listing(ps);
	if (!ok && rc == STORE_OK)
		log_warn("%s: QUIT answered '%s'; checking what was deleted", s->url->host, text);
	free(text);
	return rc;
}

static void pop3_free(struct store *s)
{
	drop_session(PS(s));
	free(PS(s));
}

static const struct store_ops pop3_ops = {
	.name = "pop3",
	.connect = pop3_connect,
	.disconnect = pop3_disconnect,
	.list = pop3_list,
	.create = pop3_create,
	.status = pop3_status,
	.select = pop3_select,
	.scan = pop3_scan,
	.fetch = pop3_fetch,
	.append = pop3_append,
	.set_flags = pop3_set_flags,
	.expunge = pop3_expunge,
	.free = pop3_free,
};

struct store *store_pop3_new(const struct account_url *u, const struct store_opts *o)
{
	struct pop3_store *ps = xcalloc(1, sizeof *ps);
	ps->base.ops = &pop3_ops;
	ps->base.url = u;
	ps->base.opts = *o;
	return &ps->base;
}
