/*
 * store_imap.c — the IMAP backend of the store interface (store.h).
 *
 * RFC 3501 (IMAP4rev1), RFC 4315 (UIDPLUS), RFC 7162 (CONDSTORE), RFC 3502
 * (MULTIAPPEND), RFC 7888 (LITERAL+ / LITERAL-), RFC 2342 (NAMESPACE),
 * RFC 6154 (SPECIAL-USE), RFC 6851 (MOVE).
 *
 * libetpan does the parsing. What it cannot do is done here with its
 * exported low-level calls (docs/design.md, "libetpan"):
 *  - streaming FETCH: message attributes and body bytes are handed to
 *    callbacks as they arrive, so nothing accumulates per message;
 *  - APPEND from a spool file, pipelined (LITERAL+) or as one MULTIAPPEND,
 *    written by hand: libetpan's own APPEND wants the message in memory and
 *    waits a round trip per message;
 *  - every error after which libetpan's session is unusable (stream, parse,
 *    protocol, BYE) is reported as STORE_CONN_BAD and the session dropped.
 */
#include "store.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libetpan/libetpan.h>

#include "log.h"
#include "message.h"
#include "net.h"
#include "spool.h"
#include "util.h"

/* UIDs per FETCH command when scanning a whole folder: libetpan buffers the
 * non-literal text of a response, so a scan is cut into chunks. */
#define SCAN_CHUNK 2000

enum fetch_mode { MODE_NONE, MODE_SCAN, MODE_BODY };

struct imap_store {
	struct store base;
	mailimap *imap;
	char *selected;         /* wire name of the selected folder, or NULL */
	bool selected_ro;
	bool qresync_on;        /* ENABLE QRESYNC answered in this session */

	/* the FETCH being processed (callbacks) */
	enum fetch_mode mode;
	unsigned scan_what;
	store_scan_cb *scan_cb;
	void *scan_ctx;
	int cb_rc;              /* first non-zero callback result */
	struct body_sink *sink;
	bool body_seen;         /* bytes of the current message reached the sink */
	const uint32_t *want;   /* the UIDs a body FETCH asked for (ascending) */
	size_t nwant;
	bool *delivered;        /* want[i] has reached the sink */
	uint32_t last_uid;
};

#define IS(s) ((struct imap_store *)(s))

/* ------------------------------------------------------------------ */
/* errors */

static bool session_broken(int r)
{
	switch (r) {
	case MAILIMAP_ERROR_STREAM:
	case MAILIMAP_ERROR_PARSE:
	case MAILIMAP_ERROR_FATAL:
	case MAILIMAP_ERROR_PROTOCOL:
	case MAILIMAP_ERROR_MEMORY:
	case MAILIMAP_ERROR_BAD_STATE:
	case MAILIMAP_ERROR_CONNECTION_REFUSED:
	case MAILIMAP_ERROR_NEEDS_MORE_DATA:
		return true;
	default:
		return false;
	}
}

static const char *server_text(struct imap_store *is)
{
	const char *t = is->imap ? is->imap->imap_response : NULL;
	return t && *t ? t : "(no text)";
}

/*
 * Throttling (Office 365): "NO Request is throttled. Suggested Backoff
 * Time: N milliseconds", then BYE; or a [THROTTLED] response code. Returns
 * the wait asked for in ms (2000 when none is given), 0 if not throttled.
 */
static long throttle_ms(const char *text)
{
	if (!text)
		return 0;
	const char *p = strcasestr(text, "Suggested Backoff Time:");
	if (p) {
		char *end;
		long ms = strtol(p + 23, &end, 10);
		if (end != p + 23 && ms > 0)
			return ms;
		return 2000;
	}
	if (strcasestr(text, "[THROTTLED]") || strcasestr(text, "is throttled"))
		return 2000;
	return 0;
}

static void drop_session(struct imap_store *is)
{
	if (is->imap) {
		/* No LOGOUT on a broken session: close the stream and free. */
		net_imap_abort(is->imap);
		is->imap = NULL;
	}
	free(is->selected);
	is->selected = NULL;
	is->qresync_on = false;
}

/*
 * Maps a libetpan result to a store result. no_rc is what a plain NO from
 * the server means for this command.
 */
static enum store_rc imap_fail(struct imap_store *is, int r, enum store_rc no_rc,
    const char *what)
{
	struct store *s = &is->base;
	if (session_broken(r)) {
		const char *why = r == MAILIMAP_ERROR_FATAL ? "server closed the session"
		    : r == MAILIMAP_ERROR_STREAM ? "connection lost"
		    : r == MAILIMAP_ERROR_PARSE ? "unparsable server response"
		    : "protocol error";
		long ms = throttle_ms(server_text(is));
		if (ms > s->backoff_ms)
			s->backoff_ms = ms;
		enum store_rc rc = store_fail(s, STORE_CONN_BAD, "%s: %s: %s (%s)", s->url->host,
		    what, why, r == MAILIMAP_ERROR_FATAL || r == MAILIMAP_ERROR_PROTOCOL ?
		    server_text(is) : "");
		drop_session(is);
		return rc;
	}
	return store_fail(s, no_rc, "%s: %s: %s", s->url->host, what, server_text(is));
}

static enum store_rc need_session(struct imap_store *is)
{
	if (is->imap)
		return STORE_OK;
	return store_fail(&is->base, STORE_CONN_BAD, "%s: not connected", is->base.url->host);
}

/* ------------------------------------------------------------------ */
/* conversions */

static void flags_from_fetch(struct flagset *fs, clist *list)
{
	for (clistiter *it = clist_begin(list); it; it = clist_next(it)) {
		struct mailimap_flag_fetch *ff = clist_content(it);
		if (ff->fl_type != MAILIMAP_FLAG_FETCH_OTHER || !ff->fl_flag)
			continue;
		struct mailimap_flag *f = ff->fl_flag;
		switch (f->fl_type) {
		case MAILIMAP_FLAG_ANSWERED: fs->sys |= FL_ANSWERED; break;
		case MAILIMAP_FLAG_FLAGGED: fs->sys |= FL_FLAGGED; break;
		case MAILIMAP_FLAG_DELETED: fs->sys |= FL_DELETED; break;
		case MAILIMAP_FLAG_SEEN: fs->sys |= FL_SEEN; break;
		case MAILIMAP_FLAG_DRAFT: fs->sys |= FL_DRAFT; break;
		case MAILIMAP_FLAG_KEYWORD:
			if (f->fl_data.fl_keyword && flagset_add(fs, f->fl_data.fl_keyword) < 0)
				log_debug("ignoring invalid keyword '%s'", f->fl_data.fl_keyword);
			break;
		default: /* \Recent and server-defined backslash flags */
			break;
		}
	}
}

static int64_t date_to_epoch(const struct mailimap_date_time *dt, int *tzoff_r)
{
	struct tm tm = {0};
	tm.tm_mday = dt->dt_day;
	tm.tm_mon = dt->dt_month - 1;
	tm.tm_year = dt->dt_year - 1900;
	tm.tm_hour = dt->dt_hour;
	tm.tm_min = dt->dt_min;
	tm.tm_sec = dt->dt_sec;
	/* dt_zone is decimal HHMM: -330 means -03:30 */
	int z = dt->dt_zone < 0 ? -dt->dt_zone : dt->dt_zone;
	int off = (z / 100) * 60 + z % 100;
	if (dt->dt_zone < 0)
		off = -off;
	*tzoff_r = off;
	return (int64_t)timegm(&tm) - (int64_t)off * 60;
}

static struct mailimap_set *set_from_uids(const uint32_t *uids, size_t n)
{
	struct mailimap_set *set = mailimap_set_new_empty();
	for (size_t i = 0; i < n;) {
		size_t j = i;
		while (j + 1 < n && uids[j + 1] == uids[j] + 1)
			j++;
		mailimap_set_add_interval(set, uids[i], uids[j]);
		i = j + 1;
	}
	return set;
}

/* Writes a mailbox name as an IMAP quoted string. Wire names are 7-bit
 * (modified UTF-7), so a quoted string always suffices. */
static void buf_add_quoted(struct buf *b, const char *s)
{
	buf_addc(b, '"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			buf_addc(b, '\\');
		buf_addc(b, *s);
	}
	buf_addc(b, '"');
}

static void buf_add_flags(struct buf *b, const struct flagset *fs)
{
	char *t = flagset_format(fs);
	buf_addc(b, '(');
	buf_adds(b, t);
	buf_addc(b, ')');
	free(t);
}

/* ------------------------------------------------------------------ */
/* streaming FETCH callbacks */

static void msg_info_from_att(struct msg_info *mi, struct mailimap_msg_att *att,
    const char **hdr_r, size_t *hdr_len_r)
{
	memset(mi, 0, sizeof *mi);
	mi->idate = IDATE_NONE;
	*hdr_r = NULL;
	*hdr_len_r = 0;
	for (clistiter *it = clist_begin(att->att_list); it; it = clist_next(it)) {
		struct mailimap_msg_att_item *item = clist_content(it);
		if (item->att_type == MAILIMAP_MSG_ATT_ITEM_DYNAMIC) {
			if (item->att_data.att_dyn && item->att_data.att_dyn->att_list)
				flags_from_fetch(&mi->flags, item->att_data.att_dyn->att_list);
		} else if (item->att_type == MAILIMAP_MSG_ATT_ITEM_STATIC) {
			struct mailimap_msg_att_static *st = item->att_data.att_static;
			switch (st->att_type) {
			case MAILIMAP_MSG_ATT_UID:
				mi->uid = st->att_data.att_uid;
				break;
			case MAILIMAP_MSG_ATT_RFC822_SIZE:
				mi->size = st->att_data.att_rfc822_size;
				break;
			case MAILIMAP_MSG_ATT_INTERNALDATE:
				if (st->att_data.att_internal_date)
					mi->idate = date_to_epoch(st->att_data.att_internal_date, &mi->tzoff);
				break;
			case MAILIMAP_MSG_ATT_BODY_SECTION:
				if (st->att_data.att_body_section) {
					*hdr_r = st->att_data.att_body_section->sec_body_part;
					*hdr_len_r = st->att_data.att_body_section->sec_length;
				}
				break;
			default:
				break;
			}
		} else if (item->att_type == MAILIMAP_MSG_ATT_ITEM_EXTENSION) {
			struct mailimap_extension_data *ext = item->att_data.att_extension_data;
			if (ext && ext->ext_extension &&
			    ext->ext_extension->ext_id == MAILIMAP_EXTENSION_CONDSTORE &&
			    ext->ext_type == MAILIMAP_CONDSTORE_TYPE_FETCH_DATA && ext->ext_data) {
				struct mailimap_condstore_fetch_mod_resp *m = ext->ext_data;
				mi->modseq = m->cs_modseq_value;
			}
		}
	}
}

/* For a body FETCH: is uid one that was asked for and not yet delivered?
 * Marks it delivered. */
static bool wanted_once(struct imap_store *is, uint32_t uid)
{
	size_t lo = 0, hi = is->nwant;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (is->want[mid] == uid) {
			if (is->delivered[mid])
				return false;
			is->delivered[mid] = true;
			return true;
		}
		if (is->want[mid] < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return false;
}

static void on_msg_att(struct mailimap_msg_att *att, void *ctx)
{
	struct imap_store *is = ctx;
	if (is->mode == MODE_NONE || is->cb_rc)
		return;
	struct msg_info mi;
	const char *hdr;
	size_t hdr_len;
	msg_info_from_att(&mi, att, &hdr, &hdr_len);
	if (!mi.uid) {
		/* an unsolicited FETCH (a flag change by another client) */
		flagset_clear(&mi.flags);
		return;
	}
	char *msgid = NULL;
	if (is->mode == MODE_SCAN) {
		if ((is->scan_what & SCAN_MSGID) && hdr)
			msgid = msg_message_id(hdr, hdr_len);
		mi.msgid = msgid;
		is->cb_rc = is->scan_cb(is->scan_ctx, &mi);
	} else if (!wanted_once(is, mi.uid)) {
		/* A server that sends a message nobody asked for, or one
		 * twice: its bytes must not become a message of the batch. */
		log_debug("%s: ignoring unrequested or repeated FETCH of UID %u",
		    is->base.label, mi.uid);
		if (is->body_seen && !spool_sink_discard(is->sink))
			is->cb_rc = is->sink->done(is->sink->ctx, &mi);
		is->body_seen = false;
	} else {
		/* A body that came as a quoted string or NIL never reached the
		 * body handler. */
		if (!is->body_seen && hdr && hdr_len)
			is->cb_rc = is->sink->data(is->sink->ctx, hdr, hdr_len);
		if (!is->cb_rc)
			is->cb_rc = is->sink->done(is->sink->ctx, &mi);
		is->body_seen = false;
		is->base.bytes_in += mi.size;
	}
	if (mi.uid > is->last_uid)
		is->last_uid = mi.uid;
	free(msgid);
	flagset_clear(&mi.flags);
}

static bool on_body(int type, struct mailimap_msg_att_body_section *section,
    const char *bytes, size_t len, void *ctx)
{
	struct imap_store *is = ctx;
	if (is->mode != MODE_BODY || is->cb_rc)
		return is->cb_rc == 0;
	is->body_seen = true;
	is->cb_rc = is->sink->data(is->sink->ctx, bytes, len);
	return is->cb_rc == 0;
}

static void on_progress(size_t current, size_t maximum, void *ctx)
{
	/* libetpan runs the handlers only when a progress callback is set. */
}

/* ------------------------------------------------------------------ */
/* connection */

static bool has_cap(mailimap *imap, const char *name)
{
	return mailimap_has_extension(imap, name) != 0;
}

static void read_caps(struct imap_store *is)
{
	mailimap *imap = is->imap;
	struct store_caps *c = &is->base.caps;
	memset(c, 0, sizeof *c);
	c->uidplus = has_cap(imap, "UIDPLUS");
	c->condstore = has_cap(imap, "CONDSTORE") || has_cap(imap, "QRESYNC");
	c->qresync = has_cap(imap, "QRESYNC");
	c->multiappend = has_cap(imap, "MULTIAPPEND");
	c->literal_plus = has_cap(imap, "LITERAL+");
	c->literal_minus = has_cap(imap, "LITERAL-");
	c->move = has_cap(imap, "MOVE");
	c->special_use = has_cap(imap, "SPECIAL-USE");
	c->namespace_ = has_cap(imap, "NAMESPACE");
	c->idle = has_cap(imap, "IDLE");
	c->unselect = has_cap(imap, "UNSELECT");
	if (getenv("POSTINO_TEST_NO_LITERAL_PLUS"))
		c->literal_plus = c->literal_minus = false;
	if (getenv("POSTINO_TEST_NO_MULTIAPPEND"))
		c->multiappend = false;
}

static void read_namespace(struct imap_store *is)
{
	struct store *s = &is->base;
	free(s->ns.prefix);
	s->ns.prefix = xstrdup("");
	s->ns.delim = 0;
	if (!s->caps.namespace_)
		return;
	struct mailimap_namespace_data *nd = NULL;
	int r = mailimap_namespace(is->imap, &nd);
	if (r != MAILIMAP_NO_ERROR || !nd) {
		log_debug("%s: NAMESPACE failed: %s", s->label, server_text(is));
		return;
	}
	if (nd->ns_personal && nd->ns_personal->ns_data_list) {
		clistiter *it = clist_begin(nd->ns_personal->ns_data_list);
		if (it) {
			struct mailimap_namespace_info *ni = clist_content(it);
			free(s->ns.prefix);
			s->ns.prefix = xstrdup(ni->ns_prefix ? ni->ns_prefix : "");
			s->ns.delim = ni->ns_delimiter;
		}
	}
	mailimap_namespace_data_free(nd);
}

static enum store_rc imap_connect(struct store *s)
{
	struct imap_store *is = IS(s);
	drop_session(is);
	enum store_fatal_kind kind = FATAL_NONE;
	char *err = NULL;
	enum store_rc rc = net_imap_login(&is->imap, s->url, &s->opts, &kind, &err);
	if (rc != STORE_OK) {
		s->fatal = kind;
		free(s->error);
		s->error = err ? err : xasprintf("%s: cannot connect", s->url->host);
		is->imap = NULL;
		return rc;
	}
	mailimap_set_progress_callback(is->imap, on_progress, on_progress, is);
	mailimap_set_msg_att_handler(is->imap, on_msg_att, is);
	read_caps(is);
	read_namespace(is);
	log_debug("%s: connected to %s (UIDPLUS=%d CONDSTORE=%d MULTIAPPEND=%d LITERAL+=%d)",
	    s->label, s->url->host, s->caps.uidplus, s->caps.condstore, s->caps.multiappend,
	    s->caps.literal_plus);
	return STORE_OK;
}

static void imap_disconnect(struct store *s)
{
	struct imap_store *is = IS(s);
	/* Say LOGOUT, but do not wait a round trip for its answer: there is
	 * nothing left to learn from it. */
	if (is->imap && is->imap->imap_stream) {
		char line[32];
		int n = snprintf(line, sizeof line, "%d LOGOUT\r\n", is->imap->imap_tag + 1);
		if (mailstream_write(is->imap->imap_stream, line, (size_t)n) >= 0)
			mailstream_flush(is->imap->imap_stream);
	}
	drop_session(is);
}

/* ------------------------------------------------------------------ */
/* folders */

static unsigned attrs_from_list(struct mailimap_mbx_list_flags *fl)
{
	unsigned a = 0;
	if (!fl)
		return 0;
	if (fl->mbf_type == MAILIMAP_MBX_LIST_FLAGS_SFLAG &&
	    fl->mbf_sflag == MAILIMAP_MBX_LIST_SFLAG_NOSELECT)
		a |= FA_NOSELECT;
	static const struct { const char *name; unsigned bit; } map[] = {
		{"Noselect", FA_NOSELECT}, {"NonExistent", FA_NONEXISTENT | FA_NOSELECT},
		{"Noinferiors", FA_NOINFERIORS}, {"All", FA_ALL}, {"Archive", FA_ARCHIVE},
		{"Drafts", FA_DRAFTS}, {"Flagged", FA_FLAGGED}, {"Junk", FA_JUNK},
		{"Sent", FA_SENT}, {"Trash", FA_TRASH}, {"Important", FA_IMPORTANT},
		{"Subscribed", FA_SUBSCRIBED},
	};
	for (clistiter *it = fl->mbf_oflags ? clist_begin(fl->mbf_oflags) : NULL; it;
	    it = clist_next(it)) {
		struct mailimap_mbx_list_oflag *of = clist_content(it);
		if (of->of_type == MAILIMAP_MBX_LIST_OFLAG_NOINFERIORS) {
			a |= FA_NOINFERIORS;
			continue;
		}
		if (of->of_type != MAILIMAP_MBX_LIST_OFLAG_FLAG_EXT || !of->of_flag_ext)
			continue;
		for (size_t i = 0; i < ARRAY_SIZE(map); i++)
			if (!ascii_strcasecmp(of->of_flag_ext, map[i].name))
				a |= map[i].bit;
	}
	return a;
}

static enum store_rc imap_list(struct store *s, struct store_folder_list *out)
{
	struct imap_store *is = IS(s);
	enum store_rc rc = need_session(is);
	if (rc)
		return rc;
	clist *list = NULL;
	int r = mailimap_list(is->imap, "", "*", &list);
	if (r != MAILIMAP_NO_ERROR)
		return imap_fail(is, r, STORE_FATAL, "LIST");
	out->n = 0;
	out->v = xcalloc(list ? (size_t)clist_count(list) : 0, sizeof *out->v);
	for (clistiter *it = list ? clist_begin(list) : NULL; it; it = clist_next(it)) {
		struct mailimap_mailbox_list *mb = clist_content(it);
		if (!mb->mb_name)
			continue;
		struct store_folder *f = &out->v[out->n++];
		f->name = xstrdup(mb->mb_name);
		f->delim = mb->mb_delimiter;
		f->attrs = attrs_from_list(mb->mb_flag);
		if (!ascii_strcasecmp(f->name, "INBOX")) {
			/* INBOX is case-insensitive; always use its canonical name */
			free(f->name);
			f->name = xstrdup("INBOX");
		}
	}
	if (list)
		mailimap_list_result_free(list);

	/* Subscriptions: LSUB, best effort. */
	clist *sub = NULL;
	r = mailimap_lsub(is->imap, "", "*", &sub);
	if (r == MAILIMAP_NO_ERROR && sub) {
		for (clistiter *it = clist_begin(sub); it; it = clist_next(it)) {
			struct mailimap_mailbox_list *mb = clist_content(it);
			for (size_t i = 0; mb->mb_name && i < out->n; i++)
				if (!strcmp(out->v[i].name, mb->mb_name) ||
				    (!ascii_strcasecmp(mb->mb_name, "INBOX") &&
					!strcmp(out->v[i].name, "INBOX")))
					out->v[i].attrs |= FA_SUBSCRIBED;
		}
		mailimap_list_result_free(sub);
	} else if (session_broken(r)) {
		store_folder_list_free(out);
		return imap_fail(is, r, STORE_FATAL, "LSUB");
	}
	return STORE_OK;
}

/* Does folder name exist (LIST name)? 1 yes, 0 no, -1 connection trouble. */
static int folder_exists(struct imap_store *is, const char *name)
{
	clist *list = NULL;
	int r = mailimap_list(is->imap, "", name, &list);
	if (r != MAILIMAP_NO_ERROR)
		return session_broken(r) ? -1 : 0;
	int found = 0;
	for (clistiter *it = list ? clist_begin(list) : NULL; it; it = clist_next(it)) {
		struct mailimap_mailbox_list *mb = clist_content(it);
		if (mb->mb_name && !strcmp(mb->mb_name, name) &&
		    !(attrs_from_list(mb->mb_flag) & FA_NONEXISTENT))
			found = 1;
	}
	if (list)
		mailimap_list_result_free(list);
	return found;
}

/*
 * CREATE; a folder this call made is subscribed if `subscribe` (the copier
 * subscribes what is subscribed at the source); one that was there already
 * is left as it is.
 */
static enum store_rc imap_create(struct store *s, const char *name, bool subscribe)
{
	struct imap_store *is = IS(s);
	enum store_rc rc = need_session(is);
	if (rc)
		return rc;
	int r = mailimap_create(is->imap, name);
	if (r == MAILIMAP_NO_ERROR) {
		/* best effort: a subscribed folder shows in every client */
		if (subscribe)
			mailimap_subscribe(is->imap, name);
		return STORE_OK;
	}
	if (session_broken(r))
		return imap_fail(is, r, STORE_BOX_BAD, "CREATE");
	/* A NO may mean it exists already, with [ALREADYEXISTS] or (Cyrus)
	 * without: ask the server rather than trusting the text. */
	char *text = xstrdup(server_text(is));
	int ex = folder_exists(is, name);
	if (ex < 0) {
		free(text);
		return imap_fail(is, MAILIMAP_ERROR_STREAM, STORE_BOX_BAD, "LIST");
	}
	if (ex) {
		free(text);
		return STORE_OK;
	}
	rc = store_fail(s, STORE_BOX_BAD, "%s: cannot create folder '%s': %s", s->url->host,
	    name, text);
	free(text);
	return rc;
}

static void status_from_info(struct box_status *st, clist *info)
{
	for (clistiter *it = info ? clist_begin(info) : NULL; it; it = clist_next(it)) {
		struct mailimap_status_info *si = clist_content(it);
		switch (si->st_att) {
		case MAILIMAP_STATUS_ATT_MESSAGES: st->exists = si->st_value; break;
		case MAILIMAP_STATUS_ATT_UIDNEXT: st->uidnext = si->st_value; break;
		case MAILIMAP_STATUS_ATT_UIDVALIDITY: st->uidvalidity = si->st_value; break;
		case MAILIMAP_STATUS_ATT_HIGHESTMODSEQ:
		case MAILIMAP_STATUS_ATT_EXTENSION:
			if (si->st_ext_data && si->st_ext_data->ext_extension &&
			    si->st_ext_data->ext_extension->ext_id == MAILIMAP_EXTENSION_CONDSTORE &&
			    si->st_ext_data->ext_data) {
				struct mailimap_condstore_status_info *ci = si->st_ext_data->ext_data;
				st->highestmodseq = ci->cs_highestmodseq_value;
			}
			break;
		default:
			break;
		}
	}
}

static enum store_rc imap_status(struct store *s, const char *name, struct box_status *st)
{
	struct imap_store *is = IS(s);
	enum store_rc rc = need_session(is);
	if (rc)
		return rc;
	box_status_clear(st);
	struct mailimap_status_att_list *al = mailimap_status_att_list_new_empty();
	mailimap_status_att_list_add(al, MAILIMAP_STATUS_ATT_MESSAGES);
	mailimap_status_att_list_add(al, MAILIMAP_STATUS_ATT_UIDNEXT);
	mailimap_status_att_list_add(al, MAILIMAP_STATUS_ATT_UIDVALIDITY);
	if (s->caps.condstore)
		mailimap_status_att_list_add(al, MAILIMAP_STATUS_ATT_HIGHESTMODSEQ);
	struct mailimap_mailbox_data_status *res = NULL;
	int r = mailimap_status(is->imap, name, al, &res);
	mailimap_status_att_list_free(al);
	if (r != MAILIMAP_NO_ERROR)
		return imap_fail(is, r, STORE_BOX_BAD, "STATUS");
	status_from_info(st, res ? res->st_info_list : NULL);
	if (res)
		mailimap_mailbox_data_status_free(res);
	return STORE_OK;
}

static void permflags_from_sel(struct box_status *st, clist *perm)
{
	if (!perm)
		return;
	st->have_permflags = true;
	for (clistiter *it = clist_begin(perm); it; it = clist_next(it)) {
		struct mailimap_flag_perm *fp = clist_content(it);
		if (fp->fl_type == MAILIMAP_FLAG_PERM_ALL) {
			st->perm_any_keyword = true;
			continue;
		}
		struct mailimap_flag *f = fp->fl_flag;
		if (!f)
			continue;
		switch (f->fl_type) {
		case MAILIMAP_FLAG_ANSWERED: st->permflags |= FL_ANSWERED; break;
		case MAILIMAP_FLAG_FLAGGED: st->permflags |= FL_FLAGGED; break;
		case MAILIMAP_FLAG_DELETED: st->permflags |= FL_DELETED; break;
		case MAILIMAP_FLAG_SEEN: st->permflags |= FL_SEEN; break;
		case MAILIMAP_FLAG_DRAFT: st->permflags |= FL_DRAFT; break;
		case MAILIMAP_FLAG_KEYWORD:
			if (f->fl_data.fl_keyword)
				flagset_add(&st->perm_keywords, f->fl_data.fl_keyword);
			break;
		default:
			break;
		}
	}
}

static enum store_rc imap_select(struct store *s, const char *name, bool readonly,
    struct box_status *st)
{
	struct imap_store *is = IS(s);
	enum store_rc rc = need_session(is);
	if (rc)
		return rc;
	box_status_clear(st);
	free(is->selected);
	is->selected = NULL;
	int r;
	uint64_t hms = 0;
	/* QRESYNC is enabled once per session, before the first SELECT
	 * (RFC 5161: ENABLE is valid in the authenticated state only). The
	 * SELECT stays a CONDSTORE one: libetpan's SELECT (QRESYNC ...) is
	 * malformed (docs/libetpan.md); scan_changes() asks for VANISHED. */
	if (s->opts.qresync && s->caps.qresync && !is->qresync_on &&
	    is->imap->imap_state == MAILIMAP_STATE_AUTHENTICATED) {
		clist *caps = clist_new();
		clist_append(caps, mailimap_capability_new(MAILIMAP_CAPABILITY_NAME, NULL,
		    xstrdup("QRESYNC")));
		struct mailimap_capability_data *want = mailimap_capability_data_new(caps);
		struct mailimap_capability_data *got = NULL;
		r = mailimap_enable(is->imap, want, &got);
		mailimap_capability_data_free(want);
		if (r == MAILIMAP_NO_ERROR && got)
			for (clistiter *it = clist_begin(got->cap_list); it; it = clist_next(it)) {
				struct mailimap_capability *c = clist_content(it);
				if (c->cap_type == MAILIMAP_CAPABILITY_NAME && c->cap_data.cap_name &&
				    !ascii_strcasecmp(c->cap_data.cap_name, "QRESYNC"))
					is->qresync_on = true;
			}
		if (got)
			mailimap_capability_data_free(got);
		if (session_broken(r))
			return imap_fail(is, r, STORE_BOX_BAD, "ENABLE QRESYNC");
		log_debug("%s: QRESYNC %s", s->label, is->qresync_on ? "enabled" : "refused");
	}
	if (s->caps.condstore)
		r = readonly ? mailimap_examine_condstore(is->imap, name, &hms)
		    : mailimap_select_condstore(is->imap, name, &hms);
	else
		r = readonly ? mailimap_examine(is->imap, name) : mailimap_select(is->imap, name);
	if (r != MAILIMAP_NO_ERROR)
		return imap_fail(is, r, STORE_BOX_BAD, readonly ? "EXAMINE" : "SELECT");
	struct mailimap_selection_info *si = is->imap->imap_selection_info;
	if (si) {
		st->uidvalidity = si->sel_uidvalidity;
		st->uidnext = si->sel_uidnext;
		st->exists = si->sel_exists;
		permflags_from_sel(st, si->sel_perm_flags);
	}
	st->highestmodseq = hms;
	if (!st->uidnext) {
		/* Some servers omit UIDNEXT on SELECT; STATUS has it. */
		struct box_status st2;
		memset(&st2, 0, sizeof st2);
		rc = imap_status(s, name, &st2);
		if (rc)
			return rc;
		st->uidnext = st2.uidnext;
		box_status_clear(&st2);
	}
	is->selected = xstrdup(name);
	is->selected_ro = readonly;
	return STORE_OK;
}

/* ------------------------------------------------------------------ */
/* scanning and fetching */

static struct mailimap_fetch_type *scan_fetch_type(struct store *s, unsigned what)
{
	struct mailimap_fetch_type *ft = mailimap_fetch_type_new_fetch_att_list_empty();
	mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_uid());
	if (what & SCAN_FLAGS)
		mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_flags());
	if (what & SCAN_SIZE)
		mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_rfc822_size());
	if (what & SCAN_DATE)
		mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_internaldate());
	if (what & SCAN_MSGID) {
		clist *hdrs = clist_new();
		clist_append(hdrs, xstrdup("MESSAGE-ID"));
		struct mailimap_header_list *hl = mailimap_header_list_new(hdrs);
		struct mailimap_section *sec = mailimap_section_new_header_fields(hl);
		mailimap_fetch_type_new_fetch_att_list_add(ft,
		    mailimap_fetch_att_new_body_peek_section(sec));
	}
	if (s->caps.condstore)
		mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_modseq());
	return ft;
}

static enum store_rc run_fetch(struct imap_store *is, bool uid, struct mailimap_set *set,
    struct mailimap_fetch_type *ft, uint64_t changedsince, const char *what)
{
	clist *result = NULL;
	int r;
	if (changedsince)
		r = uid ? mailimap_uid_fetch_changedsince(is->imap, set, ft, changedsince, &result)
		    : mailimap_fetch_changedsince(is->imap, set, ft, changedsince, &result);
	else
		r = uid ? mailimap_uid_fetch(is->imap, set, ft, &result)
		    : mailimap_fetch(is->imap, set, ft, &result);
	if (result)
		mailimap_fetch_list_free(result);
	/* A FETCH of UIDs that are all gone answers NO on some servers. */
	if (r != MAILIMAP_NO_ERROR && r != MAILIMAP_ERROR_FETCH && r != MAILIMAP_ERROR_UID_FETCH)
		return imap_fail(is, r, STORE_BOX_BAD, what);
	return STORE_OK;
}

/* Sets the FETCH callbacks up for a scan; returns what to FETCH. */
static struct mailimap_fetch_type *scan_begin(struct imap_store *is, unsigned what,
    store_scan_cb *cb, void *ctx)
{
	is->mode = MODE_SCAN;
	is->scan_what = what;
	is->scan_cb = cb;
	is->scan_ctx = ctx;
	is->cb_rc = 0;
	mailimap_set_msg_body_handler(is->imap, NULL, NULL);
	return scan_fetch_type(&is->base, what);
}

static enum store_rc imap_scan(struct store *s, uint32_t from_uid, uint64_t changedsince,
    unsigned what, store_scan_cb *cb, void *ctx)
{
	struct imap_store *is = IS(s);
	enum store_rc rc = need_session(is);
	if (rc)
		return rc;
	if (!is->selected)
		return store_fail(s, STORE_BOX_BAD, "scan without a selected folder");
	struct mailimap_fetch_type *ft = scan_begin(is, what, cb, ctx);

	if (from_uid <= 1 && !changedsince) {
		/* A whole folder: in sequence-number chunks, so that no single
		 * response grows with the folder. EXISTS may grow meanwhile;
		 * the last chunk is open-ended. */
		uint32_t exists = is->imap->imap_selection_info ?
		    is->imap->imap_selection_info->sel_exists : 0;
		uint32_t lo = 1;
		do {
			uint32_t hi = lo + SCAN_CHUNK - 1;
			struct mailimap_set *set = hi >= exists ?
			    mailimap_set_new_interval(lo, 0) : mailimap_set_new_interval(lo, hi);
			rc = exists ? run_fetch(is, false, set, ft, 0, "FETCH") : STORE_OK;
			mailimap_set_free(set);
			lo = hi + 1;
		} while (rc == STORE_OK && !is->cb_rc && lo <= exists);
	} else {
		struct mailimap_set *set = mailimap_set_new_interval(from_uid ? from_uid : 1, 0);
		rc = run_fetch(is, true, set, ft, changedsince, "UID FETCH");
		mailimap_set_free(set);
	}
	mailimap_fetch_type_free(ft);
	is->mode = MODE_NONE;
	if (rc == STORE_OK && is->cb_rc)
		return (enum store_rc)is->cb_rc;
	return rc;
}

/* Reports the UID ranges of one VANISHED response to vcb. */
static int report_vanished(struct mailimap_qresync_vanished *v, store_vanished_cb *vcb,
    void *ctx)
{
	if (!v || !v->qr_known_uids)
		return 0;
	for (clistiter *it = clist_begin(v->qr_known_uids->set_list); it; it = clist_next(it)) {
		struct mailimap_set_item *si = clist_content(it);
		uint32_t lo = si->set_first, hi = si->set_last;
		if (!hi)            /* '*' is not allowed here; take the one UID */
			hi = lo;
		if (lo > hi) {
			uint32_t t = lo;
			lo = hi;
			hi = t;
		}
		int r = lo ? vcb(ctx, lo, hi) : 0;
		if (r)
			return r;
	}
	return 0;
}

/*
 * UID FETCH 1:* (...) (CHANGEDSINCE m VANISHED) (RFC 7162 3.2.6), after
 * ENABLE QRESYNC. The changed messages stream to the scan callback as in
 * imap_scan(); the VANISHED (EARLIER) answers (and any VANISHED for an
 * expunge happening meanwhile) go to vcb. libetpan hands back the first
 * VANISHED response only: the others are taken from the response info.
 */
static enum store_rc imap_scan_changes(struct store *s, uint64_t changedsince, unsigned what,
    store_scan_cb *cb, store_vanished_cb *vcb, void *ctx)
{
	struct imap_store *is = IS(s);
	enum store_rc rc = need_session(is);
	if (rc)
		return rc;
	if (!is->selected)
		return store_fail(s, STORE_BOX_BAD, "scan without a selected folder");
	if (!is->qresync_on || !changedsince)
		return store_fail(s, STORE_BOX_BAD, "%s: QRESYNC is not enabled", s->url->host);
	struct mailimap_fetch_type *ft = scan_begin(is, what, cb, ctx);
	struct mailimap_set *set = mailimap_set_new_interval(1, 0);
	clist *result = NULL;
	struct mailimap_qresync_vanished *first = NULL;
	int r = mailimap_uid_fetch_qresync(is->imap, set, ft, changedsince, &result, &first);
	mailimap_set_free(set);
	mailimap_fetch_type_free(ft);
	is->mode = MODE_NONE;
	if (result)
		mailimap_fetch_list_free(result);
	if (r != MAILIMAP_NO_ERROR) {
		if (first)
			mailimap_qresync_vanished_free(first);
		return imap_fail(is, r, STORE_BOX_BAD, "UID FETCH (CHANGEDSINCE VANISHED)");
	}
	int vr = report_vanished(first, vcb, ctx);
	if (first)
		mailimap_qresync_vanished_free(first);
	struct mailimap_response_info *ri = is->imap->imap_response_info;
	for (clistiter *it = ri && ri->rsp_extension_list ? clist_begin(ri->rsp_extension_list)
	    : NULL; it && !vr; it = clist_next(it)) {
		struct mailimap_extension_data *ext = clist_content(it);
		if (ext && ext->ext_extension &&
		    ext->ext_extension->ext_id == MAILIMAP_EXTENSION_QRESYNC &&
		    ext->ext_type == MAILIMAP_QRESYNC_TYPE_VANISHED)
			vr = report_vanished(ext->ext_data, vcb, ctx);
	}
	if (is->cb_rc)
		return (enum store_rc)is->cb_rc;
	return (enum store_rc)vr;
}

static enum store_rc imap_fetch(struct store *s, const uint32_t *uids, size_t n,
    struct body_sink *sink)
{
	struct imap_store *is = IS(s);
	enum store_rc rc = need_session(is);
	if (rc)
		return rc;
	if (!n)
		return STORE_OK;
	struct mailimap_fetch_type *ft = mailimap_fetch_type_new_fetch_att_list_empty();
	mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_uid());
	mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_flags());
	mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_internaldate());
	mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_rfc822_size());
	mailimap_fetch_type_new_fetch_att_list_add(ft,
	    mailimap_fetch_att_new_body_peek_section(mailimap_section_new(NULL)));
	is->mode = MODE_BODY;
	is->sink = sink;
	is->cb_rc = 0;
	is->body_seen = false;
	is->want = uids;
	is->nwant = n;
	is->delivered = xcalloc(n, sizeof *is->delivered);
	mailimap_set_msg_body_handler(is->imap, on_body, is);
	struct mailimap_set *set = set_from_uids(uids, n);
	rc = run_fetch(is, true, set, ft, 0, "UID FETCH");
	mailimap_set_free(set);
	mailimap_fetch_type_free(ft);
	if (is->imap)
		mailimap_set_msg_body_handler(is->imap, NULL, NULL);
	is->mode = MODE_NONE;
	is->sink = NULL;
	free(is->delivered);
	is->delivered = NULL;
	is->want = NULL;
	is->nwant = 0;
	if (rc == STORE_OK && is->cb_rc)
		return store_fail(s, STORE_FATAL, "cannot keep fetched message: %s",
		    strerror(errno ? errno : EIO));
	return rc;
}

/* ------------------------------------------------------------------ */
/* APPEND */

/* Writes " (flags) "date" {N+}\r\n" and the literal from the spool. */
static int send_message(struct imap_store *is, struct append_item *it, bool nonsync,
    bool wait_continuation, int tag)
{
	mailstream *st = is->imap->imap_stream;
	struct buf b = BUF_INIT;
	buf_addc(&b, ' ');
	if (it->flags)
		buf_add_flags(&b, it->flags);
	else
		buf_adds(&b, "()");
	if (it->idate != IDATE_NONE) {
		char d[32];
		imap_date_format(d, it->idate, it->tzoff);
		buf_addf(&b, " \"%s\"", d);
	}
	buf_addf(&b, " {%llu%s}\r\n", (unsigned long long)it->len, nonsync ? "+" : "");
	int r = mailstream_write(st, b.s, b.len) < 0 ? -1 : 0;
	buf_release(&b);
	if (r < 0)
		return -1;
	if (wait_continuation) {
		if (mailstream_flush(st) < 0)
			return -1;
		/* Skip untagged data; a tagged answer means refused up front. */
		for (;;) {
			char *line = mailimap_read_line(is->imap);
			if (!line)
				return -1;
			if (line[0] == '+')
				break;
			if (line[0] == '*')
				continue;
			return 1; /* tagged: the caller parses it */
		}
	}
	char chunk[65536];
	uint64_t left = it->len;
	off_t off = it->off;
	while (left) {
		size_t want = left > sizeof chunk ? sizeof chunk : (size_t)left;
		ssize_t got = pread(it->fd, chunk, want, off);
		if (got <= 0)
			return -2;
		if (mailstream_write(st, chunk, (size_t)got) < 0)
			return -1;
		left -= (uint64_t)got;
		off += got;
	}
	(void)tag;
	return 0;
}

/* The APPENDUID of the response just parsed, if any. libetpan moves
 * response-code extension data out of the response into the session's
 * response info, which it renews for every response. */
static struct mailimap_uidplus_resp_code_apnd *appenduid_of(struct imap_store *is)
{
	struct mailimap_response_info *ri = is->imap->imap_response_info;
	if (!ri || !ri->rsp_extension_list)
		return NULL;
	for (clistiter *it = clist_begin(ri->rsp_extension_list); it; it = clist_next(it)) {
		struct mailimap_extension_data *ext = clist_content(it);
		if (ext && ext->ext_extension &&
		    ext->ext_extension->ext_id == MAILIMAP_EXTENSION_UIDPLUS &&
		    ext->ext_type == MAILIMAP_UIDPLUS_RESP_CODE_APND)
			return ext->ext_data;
	}
	return NULL;
}

/* The text of a refusal, with its response code in front when it has one
 * ("[OVERQUOTA] Quota exceeded", "[TOOBIG] ..."; RFC 5530): the copier
 * tells an account that is full from a message that is refused. */
static char *refusal_text(struct imap_store *is, const struct mailimap_resp_cond_state *cs)
{
	const struct mailimap_resp_text_code *rc = cs && cs->rsp_text ? cs->rsp_text->rsp_code : NULL;
	const char *code = rc && rc->rc_type == MAILIMAP_RESP_TEXT_CODE_OTHER ?
	    rc->rc_data.rc_atom.atom_name : NULL;
	/* libetpan moves an unknown code's atom into the session's response
	 * info, renewed for every response */
	if (!code && is->imap->imap_response_info)
		code = is->imap->imap_response_info->rsp_atom;
	if (code && *code)
		return xasprintf("[%s] %s", code, server_text(is));
	return xstrdup(server_text(is));
}

/* After libetpan's parser gave MAILIMAP_ERROR_PROTOCOL: was it a tagged
 * BAD for command `tag`? That leaves the session in step; a tag mismatch
 * does not. The stream buffer holds the response just parsed. */
static bool tagged_bad(struct imap_store *is, int tag)
{
	char want[24];
	int wl = snprintf(want, sizeof want, "%d BAD", tag);
	const char *buf = is->imap->imap_stream_buffer->str;
	const char *p = wl > 0 ? strstr(buf, want) : NULL;
	return p && (p == buf || p[-1] == '\n');
}

/* Reads the tagged answer to command `tag`. Returns STORE_OK (OK),
 * STORE_MSG_BAD (NO or BAD, text in *text_r) or STORE_CONN_BAD. On OK the
 * UIDs of APPENDUID go to uids[0..n) in order. */
static enum store_rc read_append_result(struct imap_store *is, int tag, bool line_read,
    uint32_t *uids, size_t n, uint32_t *uidvalidity_r, char **text_r)
{
	is->imap->imap_tag = tag;
	if (!line_read && !mailimap_read_line(is->imap))
		return STORE_CONN_BAD;
	struct mailimap_response *resp = NULL;
	int r = mailimap_parse_response(is->imap, &resp);
	if (r == MAILIMAP_ERROR_PROTOCOL) {
		if (tagged_bad(is, tag)) {
			*text_r = xstrdup(server_text(is));
			return STORE_MSG_BAD;
		}
		return STORE_CONN_BAD;
	}
	if (r != MAILIMAP_NO_ERROR)
		return STORE_CONN_BAD;
	int type = resp->rsp_resp_done->rsp_data.rsp_tagged->rsp_cond_state->rsp_type;
	enum store_rc rc;
	if (type == MAILIMAP_RESP_COND_STATE_OK) {
		rc = STORE_OK;
		struct mailimap_uidplus_resp_code_apnd *ap = appenduid_of(is);
		if (ap && ap->uid_set) {
			*uidvalidity_r = ap->uid_uidvalidity;
			size_t k = 0;
			for (clistiter *it = clist_begin(ap->uid_set->set_list); it && k < n;
			    it = clist_next(it)) {
				struct mailimap_set_item *si = clist_content(it);
				for (uint64_t u = si->set_first; u <= si->set_last && k < n; u++)
					uids[k++] = (uint32_t)u;
			}
			if (k != n) /* an APPENDUID that does not fit: ignore it */
				for (size_t i = 0; i < n; i++)
					uids[i] = 0;
		}
	} else if (throttle_ms(server_text(is))) {
		/* Not a verdict on the message: the server wants us to wait
		 * (and usually says BYE next). Unknown outcome, as if the
		 * connection had died: the message stays pending and is sent
		 * again after the backoff (store_reconnect). */
		long ms = throttle_ms(server_text(is));
		if (ms > is->base.backoff_ms)
			is->base.backoff_ms = ms;
		log_warn("%s: %s", is->base.label, server_text(is));
		rc = STORE_CONN_BAD;
	} else {
		rc = STORE_MSG_BAD;
		*text_r = refusal_text(is, resp->rsp_resp_done->rsp_data.rsp_tagged->rsp_cond_state);
	}
	mailimap_response_free(resp);
	return rc;
}

static void write_command_start(struct imap_store *is, int *tag_r, const char *folder,
    struct buf *b)
{
	is->imap->imap_tag++;
	*tag_r = is->imap->imap_tag;
	buf_reset(b);
	buf_addf(b, "%d APPEND ", *tag_r);
	buf_add_quoted(b, folder);
}

/* One MULTIAPPEND command for all items (LITERAL+ required). Returns OK
 * with every item appended, MSG_BAD if the server refused the whole
 * command (none appended: the caller retries one by one), CONN_BAD. */
static enum store_rc append_multi(struct imap_store *is, const char *folder,
    struct append_item *items, size_t n, uint32_t *uidvalidity_r)
{
	mailstream *st = is->imap->imap_stream;
	struct buf b = BUF_INIT;
	int tag;
	write_command_start(is, &tag, folder, &b);
	int w = mailstream_write(st, b.s, b.len) < 0 ? -1 : 0;
	buf_release(&b);
	for (size_t i = 0; w == 0 && i < n; i++)
		w = send_message(is, &items[i], true, false, tag);
	if (w == 0 && (mailstream_write(st, "\r\n", 2) < 0 || mailstream_flush(st) < 0))
		w = -1;
	if (w == -2)
		return store_fail(&is->base, STORE_FATAL, "cannot read spool: %s", strerror(errno));
	if (w < 0) {
		drop_session(is);
		return store_fail(&is->base, STORE_CONN_BAD, "%s: APPEND: connection lost",
		    is->base.url->host);
	}
	uint32_t *uids = xcalloc(n, sizeof *uids);
	char *text = NULL;
	enum store_rc rc = read_append_result(is, tag, false, uids, n, uidvalidity_r, &text);
	if (rc == STORE_OK) {
		for (size_t i = 0; i < n; i++) {
			items[i].rc = STORE_OK;
			items[i].uid = uids[i];
			is->base.bytes_out += items[i].len;
		}
	} else if (rc == STORE_MSG_BAD && !strncmp(text, "[OVERQUOTA]", 11)) {
		/* A full account takes none of them one by one either: each
		 * item gets the refusal, and the caller stops. */
		for (size_t i = 0; i < n; i++) {
			items[i].rc = STORE_MSG_BAD;
			items[i].error = xstrdup(text);
		}
		rc = STORE_OK;
	} else if (rc == STORE_MSG_BAD) {
		log_debug("%s: MULTIAPPEND of %zu refused (%s); trying one by one",
		    is->base.label, n, text);
	} else {
		drop_session(is);
		store_fail(&is->base, STORE_CONN_BAD, "%s: APPEND: connection lost",
		    is->base.url->host);
	}
	free(text);
	free(uids);
	return rc;
}

/* One APPEND per item: pipelined with LITERAL+ (or LITERAL- for small
 * messages), else one round trip each with synchronising literals. */
static enum store_rc append_each(struct imap_store *is, const char *folder,
    struct append_item *items, size_t n, uint32_t *uidvalidity_r)
{
	mailstream *st = is->imap->imap_stream;
	const struct store_caps *c = &is->base.caps;
	struct buf b = BUF_INIT;
	int *tags = xcalloc(n, sizeof *tags);
	bool *early = xcalloc(n, sizeof *early); /* tagged answer already read */
	enum store_rc rc = STORE_OK;
	size_t sent = 0, done = 0;

	while (done < n && rc == STORE_OK) {
		/* send a window of non-synchronising commands, or one synchronising */
		size_t first = sent;
		while (sent < n) {
			struct append_item *it = &items[sent];
			bool nonsync = c->literal_plus || (c->literal_minus && it->len <= 4096);
			if (!nonsync && sent > first)
				break;
			write_command_start(is, &tags[sent], folder, &b);
			int w = mailstream_write(st, b.s, b.len) < 0 ? -1 : 0;
			if (w == 0)
				w = send_message(is, it, nonsync, !nonsync, tags[sent]);
			if (w == 1) {
				early[sent++] = true;
				break;
			}
			if (w == 0 && (mailstream_write(st, "\r\n", 2) < 0))
				w = -1;
			if (w == -2) {
				rc = store_fail(&is->base, STORE_FATAL, "cannot read spool: %s",
				    strerror(errno));
				break;
			}
			if (w < 0) {
				rc = STORE_CONN_BAD;
				break;
			}
			sent++;
			if (!nonsync)
				break;
		}
		if (rc == STORE_OK && mailstream_flush(st) < 0)
			rc = STORE_CONN_BAD;
		/* read the answers to what was sent */
		while (rc == STORE_OK && done < sent) {
			uint32_t uid = 0;
			char *text = NULL;
			enum store_rc r = read_append_result(is, tags[done], early[done], &uid, 1,
			    uidvalidity_r, &text);
			if (r == STORE_CONN_BAD) {
				rc = STORE_CONN_BAD;
				break;
			}
			items[done].rc = r;
			items[done].uid = r == STORE_OK ? uid : 0;
			items[done].error = text;
			if (r == STORE_OK)
				is->base.bytes_out += items[done].len;
			done++;
		}
	}
	/* restore the tag counter to the last one sent */
	if (is->imap && sent)
		is->imap->imap_tag = tags[sent - 1];
	buf_release(&b);
	free(tags);
	free(early);
	if (rc == STORE_CONN_BAD) {
		for (size_t i = done; i < n; i++)
			items[i].rc = STORE_CONN_BAD;
		drop_session(is);
		return store_fail(&is->base, STORE_CONN_BAD, "%s: APPEND: connection lost",
		    is->base.url->host);
	}
	return rc;
}

static enum store_rc imap_append(struct store *s, const char *folder,
    struct append_item *items, size_t n, uint32_t *uidvalidity_r)
{
	struct imap_store *is = IS(s);
	enum store_rc rc = need_session(is);
	if (rc)
		return rc;
	*uidvalidity_r = 0;
	for (size_t i = 0; i < n; i++) {
		items[i].rc = STORE_CONN_BAD;
		items[i].uid = 0;
		items[i].error = NULL;
	}
	if (!n)
		return STORE_OK;
	if (n > 1 && s->caps.multiappend && s->caps.literal_plus) {
		rc = append_multi(is, folder, items, n, uidvalidity_r);
		if (rc != STORE_MSG_BAD)
			return rc;
	}
	return append_each(is, folder, items, n, uidvalidity_r);
}

/* ------------------------------------------------------------------ */
/* flags and expunge */

static struct mailimap_flag_list *flag_list_of(const struct flagset *fs)
{
	struct mailimap_flag_list *fl = mailimap_flag_list_new_empty();
	if (fs->sys & FL_SEEN) mailimap_flag_list_add(fl, mailimap_flag_new_seen());
	if (fs->sys & FL_ANSWERED) mailimap_flag_list_add(fl, mailimap_flag_new_answered());
	if (fs->sys & FL_FLAGGED) mailimap_flag_list_add(fl, mailimap_flag_new_flagged());
	if (fs->sys & FL_DELETED) mailimap_flag_list_add(fl, mailimap_flag_new_deleted());
	if (fs->sys & FL_DRAFT) mailimap_flag_list_add(fl, mailimap_flag_new_draft());
	for (size_t i = 0; i < fs->nkw; i++)
		mailimap_flag_list_add(fl, mailimap_flag_new_flag_keyword(xstrdup(fs->kw[i])));
	return fl;
}

static enum store_rc imap_set_flags(struct store *s, const uint32_t *uids, size_t n,
    const struct flagset *add, const struct flagset *del)
{
	struct imap_store *is = IS(s);
	enum store_rc rc = need_session(is);
	if (rc)
		return rc;
	for (int pass = 0; pass < 2; pass++) {
		const struct flagset *fs = pass ? del : add;
		if (!fs || (!fs->sys && !fs->nkw))
			continue;
		struct mailimap_flag_list *fl = flag_list_of(fs);
		struct mailimap_store_att_flags *sa = pass
		    ? mailimap_store_att_flags_new_remove_flags_silent(fl)
		    : mailimap_store_att_flags_new_add_flags_silent(fl);
		struct mailimap_set *set = set_from_uids(uids, n);
		int r = mailimap_uid_store(is->imap, set, sa);
		mailimap_set_free(set);
		mailimap_store_att_flags_free(sa);
		if (r != MAILIMAP_NO_ERROR)
			return imap_fail(is, r, STORE_MSG_BAD, "UID STORE");
	}
	return STORE_OK;
}

static enum store_rc imap_expunge(struct store *s, const uint32_t *uids, size_t n)
{
	struct imap_store *is = IS(s);
	enum store_rc rc = need_session(is);
	if (rc)
		return rc;
	if (!n)
		return STORE_OK;
	if (!s->caps.uidplus)
		return store_fail(s, STORE_BOX_BAD,
		    "%s: cannot expunge single messages without UIDPLUS", s->url->host);
	struct flagset del = FLAGSET_INIT;
	del.sys = FL_DELETED;
	rc = imap_set_flags(s, uids, n, &del, NULL);
	if (rc)
		return rc;
	struct mailimap_set *set = set_from_uids(uids, n);
	int r = mailimap_uid_expunge(is->imap, set);
	mailimap_set_free(set);
	if (r != MAILIMAP_NO_ERROR)
		return imap_fail(is, r, STORE_BOX_BAD, "UID EXPUNGE");
	return STORE_OK;
}

/* Spreads a COPYUID answer over new_uids, in the order of uids. */
static void map_copyuid(const uint32_t *uids, size_t n, struct mailimap_set *src,
    struct mailimap_set *dst, uint32_t *new_uids)
{
	for (size_t i = 0; i < n; i++)
		new_uids[i] = 0;
	if (!src || !dst)
		return;
	/* both sets list UIDs in corresponding order */
	clistiter *si = clist_begin(src->set_list), *di = clist_begin(dst->set_list);
	uint32_t su = 0, sl = 0, du = 0, dl = 0;
	bool sv = false, dv = false;
	for (;;) {
		if (!sv || su > sl) {
			if (!si)
				break;
			struct mailimap_set_item *it = clist_content(si);
			su = it->set_first;
			sl = it->set_last;
			si = clist_next(si);
			sv = true;
		}
		if (!dv || du > dl) {
			if (!di)
				break;
			struct mailimap_set_item *it = clist_content(di);
			du = it->set_first;
			dl = it->set_last;
			di = clist_next(di);
			dv = true;
		}
		for (size_t i = 0; i < n; i++)
			if (uids[i] == su)
				new_uids[i] = du;
		su++;
		du++;
	}
}

static enum store_rc imap_move(struct store *s, const uint32_t *uids, size_t n, const char *to,
    uint32_t *new_uids)
{
	struct imap_store *is = IS(s);
	enum store_rc rc = need_session(is);
	if (rc)
		return rc;
	for (size_t i = 0; i < n; i++)
		new_uids[i] = 0;
	if (!n)
		return STORE_OK;
	if (!s->caps.uidplus)
		return store_fail(s, STORE_BOX_BAD, "%s: cannot move single messages without UIDPLUS",
		    s->url->host);
	struct mailimap_set *set = set_from_uids(uids, n);
	struct mailimap_set *src = NULL, *dst = NULL;
	uint32_t uv = 0;
	int r;
	if (s->caps.move) {
		r = mailimap_uidplus_uid_move(is->imap, set, to, &uv, &src, &dst);
	} else {
		r = mailimap_uidplus_uid_copy(is->imap, set, to, &uv, &src, &dst);
		if (r == MAILIMAP_NO_ERROR) {
			map_copyuid(uids, n, src, dst, new_uids);
			if (src)
				mailimap_set_free(src);
			if (dst)
				mailimap_set_free(dst);
			src = dst = NULL;
			mailimap_set_free(set);
			/* the copy is there: removing the original is an expunge */
			return imap_expunge(s, uids, n);
		}
	}
	mailimap_set_free(set);
	if (r != MAILIMAP_NO_ERROR)
		return imap_fail(is, r, STORE_BOX_BAD, s->caps.move ? "UID MOVE" : "UID COPY");
	map_copyuid(uids, n, src, dst, new_uids);
	if (src)
		mailimap_set_free(src);
	if (dst)
		mailimap_set_free(dst);
	return STORE_OK;
}

static enum store_rc imap_rename(struct store *s, const char *from, const char *to)
{
	struct imap_store *is = IS(s);
	enum store_rc rc = need_session(is);
	if (rc)
		return rc;
	if (is->selected && !strcmp(is->selected, from)) {
		/* leave the folder first: some servers refuse to rename it */
		struct box_status bs;
		memset(&bs, 0, sizeof bs);
		rc = imap_select(s, "INBOX", true, &bs);
		box_status_clear(&bs);
		if (rc)
			return rc;
	}
	int r = mailimap_rename(is->imap, from, to);
	if (r != MAILIMAP_NO_ERROR)
		return imap_fail(is, r, STORE_BOX_BAD, "RENAME");
	mailimap_unsubscribe(is->imap, from);
	mailimap_subscribe(is->imap, to);
	return STORE_OK;
}

static enum store_rc imap_idle_begin(struct store *s)
{
	struct imap_store *is = IS(s);
	enum store_rc rc = need_session(is);
	if (rc)
		return rc;
	if (!s->caps.idle)
		return store_fail(s, STORE_BOX_BAD, "%s: no IDLE", s->url->host);
	int r = mailimap_idle(is->imap);
	if (r != MAILIMAP_NO_ERROR)
		return imap_fail(is, r, STORE_BOX_BAD, "IDLE");
	return STORE_OK;
}

static int imap_idle_fd(struct store *s, bool *pending)
{
	struct imap_store *is = IS(s);
	*pending = is->imap && is->imap->imap_stream &&
	    is->imap->imap_stream->read_buffer_len > 0;
	return is->imap ? mailimap_idle_get_fd(is->imap) : -1;
}

static enum store_rc imap_idle_end(struct store *s)
{
	struct imap_store *is = IS(s);
	enum store_rc rc = need_session(is);
	if (rc)
		return rc;
	int r = mailimap_idle_done(is->imap);
	if (r != MAILIMAP_NO_ERROR)
		return imap_fail(is, r, STORE_BOX_BAD, "IDLE DONE");
	return STORE_OK;
}

/* ------------------------------------------------------------------ */
/*
 * Pipelining: a run of commands written at once, their answers read in
 * order, one round trip for all (store.h, the *_many calls). libetpan has
 * no such call; its parser reads each answer in turn, with the session's
 * tag set to that command's, as libetpan's own commands do.
 */

/* Commands written before reading: bounded so that answers waiting in the
 * server's socket buffer never stop it from reading the rest. */
#define PIPE_WINDOW 128

/* Reads the answer to command `tag`: *cond_r gets MAILIMAP_RESP_COND_STATE_
 * OK, NO or BAD (the text in server_text()); the untagged data that came
 * with it stays in the session's response info until the next read.
 * CONN_BAD (session dropped, error set) if the session is lost. */
static enum store_rc read_answer(struct imap_store *is, int tag, const char *what,
    int *cond_r)
{
	is->imap->imap_tag = tag;
	struct mailimap_response *resp = NULL;
	int r = mailimap_read_line(is->imap) ? mailimap_parse_response(is->imap, &resp)
	    : MAILIMAP_ERROR_STREAM;
	if (r == MAILIMAP_ERROR_PROTOCOL && tagged_bad(is, tag)) {
		*cond_r = MAILIMAP_RESP_COND_STATE_BAD;
		return STORE_OK;
	}
	if (r != MAILIMAP_NO_ERROR)
		return imap_fail(is, session_broken(r) ? r : MAILIMAP_ERROR_STREAM,
		    STORE_CONN_BAD, what);
	*cond_r = resp->rsp_resp_done->rsp_data.rsp_tagged->rsp_cond_state->rsp_type;
	mailimap_response_free(resp);
	return STORE_OK;
}

/* Writes cmds (complete lines after the tag, CRLF included) with
 * consecutive tags, the first in *tag0_r. CONN_BAD if the write failed. */
static enum store_rc send_run(struct imap_store *is, const struct buf *cmds, size_t n,
    const char *what, int *tag0_r)
{
	struct buf b = BUF_INIT;
	*tag0_r = is->imap->imap_tag + 1;
	for (size_t i = 0; i < n; i++) {
		buf_addf(&b, "%d ", ++is->imap->imap_tag);
		buf_add(&b, cmds[i].s, cmds[i].len);
	}
	mailstream *st = is->imap->imap_stream;
	int w = mailstream_write(st, b.s, b.len) < 0 || mailstream_flush(st) < 0;
	buf_release(&b);
	if (w) {
		drop_session(is);
		return store_fail(&is->base, STORE_CONN_BAD, "%s: %s: connection lost",
		    is->base.url->host, what);
	}
	return STORE_OK;
}

/*
 * Runs n commands, built by make(ctx, i, buf) into an empty buffer, in
 * windows of PIPE_WINDOW; done(ctx, i, cond) sees each answer while the
 * session's response info holds what came with it. Items never answered
 * are left to the caller (they keep their CONN_BAD).
 */
static enum store_rc run_pipelined(struct imap_store *is, size_t n, const char *what,
    void (*make)(void *ctx, size_t i, struct buf *b),
    void (*done)(struct imap_store *is, void *ctx, size_t i, int cond), void *ctx)
{
	enum store_rc rc = need_session(is);
	if (rc)
		return rc;
	struct buf cmds[PIPE_WINDOW];
	for (size_t k = 0; k < PIPE_WINDOW; k++)
		cmds[k] = (struct buf)BUF_INIT;
	for (size_t base = 0; base < n && rc == STORE_OK; base += PIPE_WINDOW) {
		size_t m = n - base < PIPE_WINDOW ? n - base : PIPE_WINDOW;
		for (size_t k = 0; k < m; k++) {
			buf_reset(&cmds[k]);
			make(ctx, base + k, &cmds[k]);
		}
		int tag0;
		rc = send_run(is, cmds, m, what, &tag0);
		for (size_t k = 0; k < m && rc == STORE_OK; k++) {
			int cond = MAILIMAP_RESP_COND_STATE_BAD;
			rc = read_answer(is, tag0 + (int)k, what, &cond);
			if (rc == STORE_OK)
				done(is, ctx, base + k, cond);
		}
	}
	for (size_t k = 0; k < PIPE_WINDOW; k++)
		buf_release(&cmds[k]);
	return rc;
}

struct pl_names {
	const char *const *names;
	struct box_status *st;
	enum store_rc *rcs;
	const char *verb;
	const char *tail;
	char **errs;    /* the server's refusal, per item (CREATE) */
};

static void make_named(void *ctx, size_t i, struct buf *b)
{
	struct pl_names *p = ctx;
	buf_adds(b, p->verb);
	buf_addc(b, ' ');
	buf_add_quoted(b, p->names[i]);
	buf_adds(b, p->tail);
	buf_adds(b, "\r\n");
}

/* Is the name a STATUS answer gave (libetpan leaves a quoted string with
 * its quotes and backslashes) the folder `want`? */
static bool same_folder(const char *got, const char *want)
{
	struct buf b = BUF_INIT;
	if (*got == '"') {
		for (const char *p = got + 1; *p && *p != '"'; p++) {
			if (*p == '\\' && p[1])
				p++;
			buf_addc(&b, *p);
		}
		got = b.s ? b.s : "";
	}
	bool same = !strcmp(got, want) ||
	    (!ascii_strcasecmp(got, "INBOX") && !ascii_strcasecmp(want, "INBOX"));
	buf_release(&b);
	return same;
}

static void status_done(struct imap_store *is, void *ctx, size_t i, int cond)
{
	struct pl_names *p = ctx;
	struct mailimap_response_info *ri = is->imap->imap_response_info;
	struct mailimap_mailbox_data_status *res = ri ? ri->rsp_status : NULL;
	if (cond == MAILIMAP_RESP_COND_STATE_OK && res && res->st_mailbox &&
	    same_folder(res->st_mailbox, p->names[i])) {
		status_from_info(&p->st[i], res->st_info_list);
		p->rcs[i] = STORE_OK;
	} else {
		/* the single call says why, if the caller asks again */
		p->rcs[i] = STORE_BOX_BAD;
	}
}

static enum store_rc imap_status_many(struct store *s, const char *const *names, size_t n,
    struct box_status *st, enum store_rc *rcs)
{
	struct pl_names p = {names, st, rcs, "STATUS",
	    s->caps.condstore ? " (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)"
	    : " (MESSAGES UIDNEXT UIDVALIDITY)", NULL};
	for (size_t i = 0; i < n; i++) {
		box_status_clear(&st[i]);
		rcs[i] = STORE_CONN_BAD;
	}
	return run_pipelined(IS(s), n, "STATUS", make_named, status_done, &p);
}

static void cond_done(struct imap_store *is, void *ctx, size_t i, int cond)
{
	struct pl_names *p = ctx;
	if (p->rcs)
		p->rcs[i] = cond == MAILIMAP_RESP_COND_STATE_OK ? STORE_OK : STORE_BOX_BAD;
	if (p->errs && cond != MAILIMAP_RESP_COND_STATE_OK)
		p->errs[i] = xasprintf("%s: cannot create folder '%s': %s", is->base.url->host,
		    p->names[i], server_text(is));
}

static enum store_rc imap_create_many(struct store *s, const char *const *names, size_t n,
    enum store_rc *rcs, char **errs)
{
	struct imap_store *is = IS(s);
	struct pl_names p = {names, NULL, rcs, "CREATE", "", errs};
	for (size_t i = 0; i < n; i++)
		rcs[i] = STORE_CONN_BAD;
	enum store_rc rc = run_pipelined(is, n, "CREATE", make_named, cond_done, &p);
	if (rc != STORE_OK)
		return rc;
	/* A NO may mean the folder is there already (see imap_create): the
	 * server's text was kept per folder by cond_done. */
	for (size_t i = 0; i < n; i++) {
		if (rcs[i] != STORE_BOX_BAD)
			continue;
		int ex = folder_exists(is, names[i]);
		if (ex < 0)
			return imap_fail(is, MAILIMAP_ERROR_STREAM, STORE_BOX_BAD, "LIST");
		if (ex) {
			rcs[i] = STORE_OK;
			free(errs[i]);
			errs[i] = NULL;
		}
	}
	return STORE_OK;
}

/* best effort, like the single create()'s SUBSCRIBE */
static enum store_rc imap_subscribe_many(struct store *s, const char *const *names, size_t n)
{
	struct pl_names p = {names, NULL, NULL, "SUBSCRIBE", "", NULL};
	return run_pipelined(IS(s), n, "SUBSCRIBE", make_named, cond_done, &p);
}

/* A UID set in IMAP syntax, ranges joined ("1:5,7,9:10"); uids ascending. */
static void buf_add_uidset(struct buf *b, const uint32_t *uids, size_t n)
{
	for (size_t i = 0; i < n;) {
		size_t j = i;
		while (j + 1 < n && uids[j + 1] == uids[j] + 1)
			j++;
		if (i)
			buf_addc(b, ',');
		if (j > i)
			buf_addf(b, "%u:%u", uids[i], uids[j]);
		else
			buf_addf(b, "%u", uids[i]);
		i = j + 1;
	}
}

/* set_flags_many: each flag_op is one or two UID STOREs (add, remove) */
struct pl_store {
	struct store_flag_op *ops;
	size_t *op_of;    /* command -> its flag_op */
	bool *removing;   /* command -> -FLAGS (else +FLAGS) */
	size_t ncmd;
};

static void make_store(void *ctx, size_t i, struct buf *b)
{
	struct pl_store *p = ctx;
	const struct store_flag_op *op = &p->ops[p->op_of[i]];
	buf_adds(b, "UID STORE ");
	buf_add_uidset(b, op->uids, op->n);
	buf_adds(b, p->removing[i] ? " -FLAGS.SILENT " : " +FLAGS.SILENT ");
	buf_add_flags(b, p->removing[i] ? op->del : op->add);
	buf_adds(b, "\r\n");
}

static void store_done(struct imap_store *is, void *ctx, size_t i, int cond)
{
	struct pl_store *p = ctx;
	struct store_flag_op *op = &p->ops[p->op_of[i]];
	/* an op is OK once its last command is answered OK (an op cut off
	 * half done stays CONN_BAD); a refusal of either command makes it
	 * MSG_BAD, as set_flags() would say */
	bool last = i + 1 == p->ncmd || p->op_of[i + 1] != p->op_of[i];
	if (cond == MAILIMAP_RESP_COND_STATE_OK) {
		if (last && op->rc == STORE_CONN_BAD)
			op->rc = STORE_OK;
	} else {
		op->rc = STORE_MSG_BAD;
		store_fail(&is->base, STORE_MSG_BAD, "%s: UID STORE: %s", is->base.url->host,
		    server_text(is));
	}
}

static bool flags_empty(const struct flagset *fs)
{
	return !fs || (!fs->sys && !fs->nkw);
}

static enum store_rc imap_set_flags_many(struct store *s, struct store_flag_op *ops, size_t n)
{
	struct pl_store p = {ops, xcalloc(2 * n + 1, sizeof *p.op_of),
	    xcalloc(2 * n + 1, sizeof *p.removing), 0};
	size_t ncmd = 0;
	for (size_t i = 0; i < n; i++) {
		ops[i].rc = STORE_CONN_BAD;
		if (!ops[i].n || (flags_empty(ops[i].add) && flags_empty(ops[i].del))) {
			ops[i].rc = STORE_OK;
			continue;
		}
		for (int pass = 0; pass < 2; pass++)
			if (!flags_empty(pass ? ops[i].del : ops[i].add)) {
				p.op_of[ncmd] = i;
				p.removing[ncmd++] = pass;
			}
	}
	p.ncmd = ncmd;
	enum store_rc rc = run_pipelined(IS(s), ncmd, "UID STORE", make_store, store_done, &p);
	free(p.op_of);
	free(p.removing);
	return rc;
}

static void imap_free(struct store *s)
{
	free(IS(s));
}

static const struct store_ops imap_ops = {
	.name = "imap",
	.connect = imap_connect,
	.disconnect = imap_disconnect,
	.list = imap_list,
	.create = imap_create,
	.status = imap_status,
	.select = imap_select,
	.scan = imap_scan,
	.scan_changes = imap_scan_changes,
	.fetch = imap_fetch,
	.append = imap_append,
	.set_flags = imap_set_flags,
	.expunge = imap_expunge,
	.move = imap_move,
	.rename = imap_rename,
	.idle_begin = imap_idle_begin,
	.idle_fd = imap_idle_fd,
	.idle_end = imap_idle_end,
	.free = imap_free,
	.status_many = imap_status_many,
	.create_many = imap_create_many,
	.subscribe_many = imap_subscribe_many,
	.set_flags_many = imap_set_flags_many,
};

struct store *store_imap_new(const struct account_url *u, const struct store_opts *o)
{
	struct imap_store *is = xcalloc(1, sizeof *is);
	is->base.ops = &imap_ops;
	is->base.url = u;
	is->base.opts = *o;
	return &is->base;
}
