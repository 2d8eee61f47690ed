/*
 * fake_store.c — an in-memory IMAP-like account behind struct store_ops,
 * with fault injection and a file image for crash tests (see fake_store.h).
 *
 * It models what the copier depends on and nothing more: one connection
 * that can be down, one selected folder, UIDs that only grow, MODSEQs
 * bumped on every change, APPENDUID only with UIDPLUS, PERMANENTFLAGS
 * enforced (a flag the folder does not keep is refused, not silently
 * dropped, so that a caller that forgets to filter is caught).
 */
#include "fake_store.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "message.h"
#include "util.h"

#define MAX_FAULTS 8
#define FAKE_MAGIC "postino-fake-store 2"

struct fault_slot {
	struct fake_fault f;
	bool armed;
	unsigned count; /* counted operations since armed or last fired */
};

struct fake_store {
	struct store base; /* first: what the code under test sees */
	char delim;
	uint32_t next_uidvalidity;
	struct fake_folder **folders;
	size_t nfolders, capfolders;

	bool connected;
	struct fake_folder *sel;
	bool sel_ro;

	struct fault_slot faults[MAX_FAULTS];
	unsigned fired;
	fake_refuse_pred *refuse;
	void *refuse_ctx;
	char *refuse_text;

	unsigned calls[FOP__COUNT + 1];
	unsigned bodies_fetched, appended;
	unsigned full_scans, uid_listings;
	char *autosave;
	size_t chunk;
	bool crlf;
	bool vanished_sloppy;
	char *refuse_chars;
};

static const struct store_ops fake_ops;

static struct fake_store *FS(struct store *s)
{
	return (struct fake_store *)s;
}

/* ------------------------------------------------------------------ */
/* the account */

static void msg_free(struct fake_msg *m)
{
	free(m->body);
	flagset_clear(&m->flags);
}

static void folder_free(struct fake_folder *f)
{
	for (size_t i = 0; i < f->n; i++)
		msg_free(&f->msgs[i]);
	free(f->msgs);
	free(f->gone);
	free(f->name);
	flagset_clear(&f->perm_keywords);
	free(f);
}

struct fake_store *fake_store_new(const char *label, char delim, const char *ns_prefix)
{
	struct fake_store *fs = xcalloc(1, sizeof *fs);
	fs->base.ops = &fake_ops;
	fs->base.label = label;
	fs->base.caps.uidplus = true;
	fs->base.caps.multiappend = true;
	fs->base.caps.literal_plus = true;
	fs->base.caps.namespace_ = true;
	fs->base.caps.move = true;
	fs->base.ns.prefix = xstrdup(ns_prefix ? ns_prefix : "");
	fs->base.ns.delim = delim;
	fs->delim = delim;
	fs->next_uidvalidity = 1000;
	fs->chunk = 7;
	return fs;
}

struct store *fake_store_base(struct fake_store *fs)
{
	return &fs->base;
}

struct fake_store *fake_store_of(struct store *s)
{
	return s && s->ops == &fake_ops ? FS(s) : NULL;
}

void fake_store_set_caps(struct fake_store *fs, bool uidplus, bool condstore)
{
	fs->base.caps.uidplus = uidplus;
	fs->base.caps.condstore = condstore;
}

void fake_store_set_qresync(struct fake_store *fs, bool on, bool sloppy)
{
	fs->base.caps.qresync = on;
	if (on)
		fs->base.caps.condstore = true;
	fs->vanished_sloppy = sloppy;
}

void fake_store_refuse_chars(struct fake_store *fs, const char *chars)
{
	free(fs->refuse_chars);
	fs->refuse_chars = chars && *chars ? xstrdup(chars) : NULL;
}

void fake_store_set_crlf(struct fake_store *fs, bool on)
{
	fs->crlf = on;
}

void fake_store_set_chunk(struct fake_store *fs, size_t chunk)
{
	fs->chunk = chunk ? chunk : 1;
}

struct fake_folder *fake_store_folder(struct fake_store *fs, const char *name)
{
	for (size_t i = 0; i < fs->nfolders; i++) {
		struct fake_folder *f = fs->folders[i];
		if (!strcmp(f->name, name) ||
		    (!ascii_strcasecmp(name, "INBOX") && !ascii_strcasecmp(f->name, "INBOX")))
			return f;
	}
	return NULL;
}

size_t fake_store_nfolders(const struct fake_store *fs)
{
	return fs->nfolders;
}

struct fake_folder *fake_store_folder_at(struct fake_store *fs, size_t i)
{
	return i < fs->nfolders ? fs->folders[i] : NULL;
}

static struct fake_folder *folder_new(struct fake_store *fs, const char *name, unsigned attrs)
{
	struct fake_folder *f = xcalloc(1, sizeof *f);
	f->name = xstrdup(name);
	f->delim = fs->delim;
	f->attrs = attrs;
	f->uidvalidity = fs->next_uidvalidity++;
	f->uidnext = 1;
	f->hms = 1;
	f->send_permflags = true;
	f->permflags = FL_ALL_SYS;
	f->perm_any_keyword = true;
	if (fs->nfolders == fs->capfolders) {
		fs->capfolders = fs->capfolders ? fs->capfolders * 2 : 8;
		fs->folders = xrealloc(fs->folders, fs->capfolders * sizeof *fs->folders);
	}
	fs->folders[fs->nfolders++] = f;
	return f;
}

struct fake_folder *fake_store_add_folder(struct fake_store *fs, const char *name,
    unsigned attrs)
{
	struct fake_folder *f = fake_store_folder(fs, name);
	if (f) {
		f->attrs = attrs;
		return f;
	}
	return folder_new(fs, name, attrs);
}

void fake_store_set_permflags(struct fake_folder *f, unsigned sys, bool any_keyword,
    const char *keywords)
{
	f->send_permflags = true;
	f->permflags = sys;
	f->perm_any_keyword = any_keyword;
	flagset_clear(&f->perm_keywords);
	if (keywords)
		flagset_parse(&f->perm_keywords, keywords);
}

static struct fake_msg *msg_push(struct fake_folder *f)
{
	if (f->n == f->cap) {
		f->cap = f->cap ? f->cap * 2 : 16;
		f->msgs = xrealloc(f->msgs, f->cap * sizeof *f->msgs);
	}
	struct fake_msg *m = &f->msgs[f->n++];
	memset(m, 0, sizeof *m);
	return m;
}

static uint32_t deliver(struct fake_folder *f, char *body, size_t len,
    const struct flagset *flags, int64_t idate, int tzoff)
{
	struct fake_msg *m = msg_push(f);
	m->uid = f->uidnext++;
	m->body = body;
	m->len = len;
	flagset_copy(&m->flags, flags);
	m->idate = idate;
	m->tzoff = tzoff;
	m->modseq = ++f->hms;
	return m->uid;
}

static char *bytes_dup(const char *p, size_t len)
{
	char *b = xmalloc(len + 1);
	if (len)
		memcpy(b, p, len);
	b[len] = 0;
	return b;
}

uint32_t fake_store_add_msg(struct fake_store *fs, struct fake_folder *f, const char *body,
    size_t len, const char *flags, int64_t idate, int tzoff)
{
	(void)fs;
	struct flagset fl = FLAGSET_INIT;
	if (flags)
		flagset_parse(&fl, flags);
	uint32_t uid = deliver(f, bytes_dup(body, len), len, &fl, idate, tzoff);
	flagset_clear(&fl);
	return uid;
}

struct fake_msg *fake_store_msg(struct fake_folder *f, uint32_t uid)
{
	size_t lo = 0, hi = f->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (f->msgs[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < f->n && f->msgs[lo].uid == uid ? &f->msgs[lo] : NULL;
}

static void autosave(struct fake_store *fs)
{
	if (fs->autosave && fake_store_save(fs, fs->autosave) < 0) {
		fprintf(stderr, "fake_store: cannot save %s: %s\n", fs->autosave, strerror(errno));
		abort();
	}
}

void fake_store_msg_set_flags(struct fake_store *fs, struct fake_folder *f, uint32_t uid,
    const char *flags)
{
	struct fake_msg *m = fake_store_msg(f, uid);
	if (!m)
		return;
	flagset_clear(&m->flags);
	if (flags)
		flagset_parse(&m->flags, flags);
	m->modseq = ++f->hms;
	autosave(fs);
}

static void msg_remove_at(struct fake_folder *f, size_t i)
{
	if (f->ngone == f->capgone) {
		f->capgone = f->capgone ? f->capgone * 2 : 16;
		f->gone = xrealloc(f->gone, f->capgone * sizeof *f->gone);
	}
	f->gone[f->ngone++] = (struct fake_gone){f->msgs[i].uid, ++f->hms};
	msg_free(&f->msgs[i]);
	memmove(&f->msgs[i], &f->msgs[i + 1], (f->n - i - 1) * sizeof *f->msgs);
	f->n--;
}

/* Copies message m into folder `to` (a new UID there). */
static uint32_t copy_msg(struct fake_folder *to, const struct fake_msg *m)
{
	return deliver(to, bytes_dup(m->body, m->len), m->len, &m->flags, m->idate, m->tzoff);
}

uint32_t fake_store_msg_move(struct fake_store *fs, struct fake_folder *f, uint32_t uid,
    struct fake_folder *to)
{
	struct fake_msg *m = fake_store_msg(f, uid);
	if (!m || !to)
		return 0;
	uint32_t nu = copy_msg(to, m);
	msg_remove_at(f, (size_t)(m - f->msgs));
	autosave(fs);
	return nu;
}

struct fake_msg *fake_store_find_body(struct fake_folder *f, const char *body, size_t len)
{
	for (size_t i = 0; i < f->n; i++)
		if (f->msgs[i].len == len && (!len || !memcmp(f->msgs[i].body, body, len)))
			return &f->msgs[i];
	return NULL;
}

/* Is name `name` equal to, or below, folder `top`? */
static bool at_or_below(const char *name, const char *top, char delim)
{
	size_t n = strlen(top);
	return !strncmp(name, top, n) && (!name[n] || (delim && name[n] == delim));
}

int fake_store_rename_folder(struct fake_store *fs, const char *from, const char *to)
{
	if (!fake_store_folder(fs, from) || fake_store_folder(fs, to))
		return -1;
	size_t n = strlen(from);
	for (size_t i = 0; i < fs->nfolders; i++) {
		struct fake_folder *f = fs->folders[i];
		if (!at_or_below(f->name, from, fs->delim))
			continue;
		char *nn = xasprintf("%s%s", to, f->name + n);
		free(f->name);
		f->name = nn;
	}
	autosave(fs);
	return 0;
}

void fake_store_msg_remove(struct fake_store *fs, struct fake_folder *f, uint32_t uid)
{
	struct fake_msg *m = fake_store_msg(f, uid);
	if (!m)
		return;
	msg_remove_at(f, (size_t)(m - f->msgs));
	autosave(fs);
}

void fake_store_set_uidvalidity(struct fake_store *fs, struct fake_folder *f,
    uint32_t uidvalidity, uint32_t first_uid)
{
	f->uidvalidity = uidvalidity;
	f->uidnext = first_uid ? first_uid : 1;
	f->ngone = 0;
	for (size_t i = 0; i < f->n; i++) {
		f->msgs[i].uid = f->uidnext++;
		f->msgs[i].modseq = ++f->hms;
	}
	autosave(fs);
}

/* ------------------------------------------------------------------ */
/* faults */

void fake_store_fault(struct fake_store *fs, const struct fake_fault *f)
{
	for (size_t i = 0; i < MAX_FAULTS; i++)
		if (!fs->faults[i].armed) {
			fs->faults[i] = (struct fault_slot){*f, true, 0};
			return;
		}
	fprintf(stderr, "fake_store: more than %d faults\n", MAX_FAULTS);
	abort();
}

void fake_store_clear_faults(struct fake_store *fs)
{
	memset(fs->faults, 0, sizeof fs->faults);
}

unsigned fake_store_faults_fired(const struct fake_store *fs)
{
	return fs->fired;
}

void fake_store_refuse(struct fake_store *fs, fake_refuse_pred *pred, void *ctx,
    const char *text)
{
	fs->refuse = pred;
	fs->refuse_ctx = ctx;
	free(fs->refuse_text);
	fs->refuse_text = pred ? xstrdup(text ? text : "refused") : NULL;
}

bool fake_refuse_containing(void *ctx, const char *folder, const char *body, size_t len)
{
	(void)folder;
	const char *needle = ctx;
	size_t nl = strlen(needle);
	if (!nl || nl > len)
		return false;
	for (size_t i = 0; i + nl <= len; i++)
		if (!memcmp(body + i, needle, nl))
			return true;
	return false;
}

/* Process death as the test hook does it: what was done is on disk. */
static void crash(struct fake_store *fs)
{
	autosave(fs);
	_exit(99);
}

static enum store_rc conn_lost(struct fake_store *fs, const char *what)
{
	fs->connected = false;
	fs->sel = NULL;
	return store_fail(&fs->base, STORE_CONN_BAD, "%s: connection reset during %s (injected)",
	    fs->base.label ? fs->base.label : "fake", what);
}

/*
 * Counts one operation. Returns the fault that fires at it, or NULL.
 * Operations on a connection that is down are counted as calls but not
 * towards faults: they never reach the server.
 */
static const struct fake_fault *count_op(struct fake_store *fs, enum fake_op kind)
{
	const struct fake_fault *hit = NULL;
	fs->calls[kind]++;
	fs->calls[FOP_ANY]++;
	if (kind != FOP_CONNECT && !fs->connected)
		return NULL;
	for (size_t i = 0; i < MAX_FAULTS; i++) {
		struct fault_slot *sl = &fs->faults[i];
		if (!sl->armed || (sl->f.kind != FOP_ANY && sl->f.kind != kind))
			continue;
		if (++sl->count < sl->f.nth || hit)
			continue;
		hit = &sl->f;
		fs->fired++;
		sl->count = 0;
		if (!sl->f.repeat)
			sl->armed = false;
	}
	return hit;
}

/* The common start of an operation: counting, faults, the connection. */
static enum store_rc op_enter(struct fake_store *fs, enum fake_op kind, const char *what)
{
	const struct fake_fault *hit = count_op(fs, kind);
	if (kind != FOP_CONNECT && !fs->connected)
		return store_fail(&fs->base, STORE_CONN_BAD, "%s: not connected",
		    fs->base.label ? fs->base.label : "fake");
	if (hit) {
		if (hit->action == FAULT_CRASH)
			crash(fs);
		return conn_lost(fs, what);
	}
	return STORE_OK;
}

/* ------------------------------------------------------------------ */
/* store_ops */

static enum store_rc fake_connect(struct store *s)
{
	struct fake_store *fs = FS(s);
	fs->connected = true; /* a fault at connect time takes it down again */
	enum store_rc rc = op_enter(fs, FOP_CONNECT, "connect");
	if (rc)
		return rc;
	fs->sel = NULL;
	for (size_t i = 0; i < MAX_FAULTS; i++)
		if (fs->faults[i].armed && fs->faults[i].f.clear_on_connect)
			fs->faults[i].armed = false;
	return STORE_OK;
}

static void fake_disconnect(struct store *s)
{
	struct fake_store *fs = FS(s);
	fs->connected = false;
	fs->sel = NULL;
}

static enum store_rc fake_list(struct store *s, struct store_folder_list *out)
{
	struct fake_store *fs = FS(s);
	out->n = 0;
	out->v = NULL;
	enum store_rc rc = op_enter(fs, FOP_LIST, "LIST");
	if (rc)
		return rc;
	out->v = xcalloc(fs->nfolders ? fs->nfolders : 1, sizeof *out->v);
	for (size_t i = 0; i < fs->nfolders; i++) {
		const struct fake_folder *f = fs->folders[i];
		out->v[i] = (struct store_folder){xstrdup(f->name), f->delim, f->attrs};
	}
	out->n = fs->nfolders;
	return STORE_OK;
}

static enum store_rc fake_create(struct store *s, const char *name, bool subscribe)
{
	struct fake_store *fs = FS(s);
	enum store_rc rc = op_enter(fs, FOP_CREATE, "CREATE");
	if (rc)
		return rc;
	struct fake_folder *f = fake_store_folder(fs, name);
	if (f && !(f->attrs & (FA_NOSELECT | FA_NONEXISTENT)))
		return STORE_OK; /* like store_imap.c: it exists, fine */
	if (fs->refuse_chars && strpbrk(name, fs->refuse_chars))
		return store_fail(s, STORE_BOX_BAD, "cannot create folder '%s': [CANNOT] Invalid "
		    "mailbox name", name);
	if (f)
		f->attrs &= ~(unsigned)(FA_NOSELECT | FA_NONEXISTENT);
	else
		folder_new(fs, name, 0);
	autosave(fs);
	return STORE_OK;
}

static enum store_rc usable_folder(struct fake_store *fs, const char *name,
    struct fake_folder **f_r)
{
	struct fake_folder *f = fake_store_folder(fs, name);
	*f_r = f;
	if (!f)
		return store_fail(&fs->base, STORE_BOX_BAD, "folder '%s' does not exist", name);
	if (f->attrs & (FA_NOSELECT | FA_NONEXISTENT))
		return store_fail(&fs->base, STORE_BOX_BAD, "folder '%s' cannot be selected", name);
	if (f->broken)
		return store_fail(&fs->base, STORE_BOX_BAD, "folder '%s': %s", name, f->broken);
	return STORE_OK;
}

static void status_of(struct fake_store *fs, const struct fake_folder *f,
    struct box_status *st)
{
	st->uidvalidity = f->uidvalidity;
	st->uidnext = f->uidnext;
	st->exists = (uint32_t)f->n;
	st->highestmodseq = fs->base.caps.condstore ? f->hms : 0;
}

static enum store_rc fake_status(struct store *s, const char *name, struct box_status *st)
{
	struct fake_store *fs = FS(s);
	box_status_clear(st);
	enum store_rc rc = op_enter(fs, FOP_STATUS, "STATUS");
	if (rc)
		return rc;
	struct fake_folder *f;
	rc = usable_folder(fs, name, &f);
	if (rc)
		return rc;
	status_of(fs, f, st);
	return STORE_OK;
}

static enum store_rc fake_select(struct store *s, const char *name, bool readonly,
    struct box_status *st)
{
	struct fake_store *fs = FS(s);
	box_status_clear(st);
	enum store_rc rc = op_enter(fs, FOP_SELECT, "SELECT");
	if (rc)
		return rc;
	fs->sel = NULL;
	struct fake_folder *f;
	rc = usable_folder(fs, name, &f);
	if (rc)
		return rc;
	status_of(fs, f, st);
	if (f->send_permflags) {
		st->have_permflags = true;
		st->permflags = f->permflags;
		st->perm_any_keyword = f->perm_any_keyword;
		flagset_copy(&st->perm_keywords, &f->perm_keywords);
	}
	fs->sel = f;
	fs->sel_ro = readonly;
	return STORE_OK;
}

static enum store_rc scan_selected(struct fake_store *fs, uint32_t from_uid,
    uint64_t changedsince, unsigned what, store_scan_cb *cb, void *ctx);

static enum store_rc fake_scan(struct store *s, uint32_t from_uid, uint64_t changedsince,
    unsigned what, store_scan_cb *cb, void *ctx)
{
	struct fake_store *fs = FS(s);
	enum store_rc rc = op_enter(fs, FOP_SCAN, "FETCH");
	if (rc)
		return rc;
	if (!changedsince && from_uid <= 1 && (what & SCAN_FLAGS))
		fs->full_scans++;
	if (!changedsince && from_uid <= 1 && !what)
		fs->uid_listings++;
	return scan_selected(fs, from_uid, changedsince, what, cb, ctx);
}

static enum store_rc scan_selected(struct fake_store *fs, uint32_t from_uid,
    uint64_t changedsince, unsigned what, store_scan_cb *cb, void *ctx)
{
	struct store *s = &fs->base;
	struct fake_folder *f = fs->sel;
	if (!f)
		return store_fail(s, STORE_BOX_BAD, "scan without a selected folder");
	if (changedsince && !s->caps.condstore)
		return store_fail(s, STORE_BOX_BAD, "CHANGEDSINCE without CONDSTORE");
	/* The callback cannot change this store: iterate in place. */
	for (size_t i = 0; i < f->n; i++) {
		const struct fake_msg *m = &f->msgs[i];
		if (m->uid < from_uid || (changedsince && m->modseq <= changedsince))
			continue;
		struct msg_info mi;
		memset(&mi, 0, sizeof mi);
		mi.uid = m->uid;
		mi.size = (what & SCAN_SIZE) ? m->len : 0;
		if (what & SCAN_FLAGS)
			mi.flags = m->flags; /* borrowed for the call */
		mi.idate = (what & SCAN_DATE) ? m->idate : IDATE_NONE;
		mi.tzoff = (what & SCAN_DATE) ? m->tzoff : 0;
		mi.modseq = s->caps.condstore ? m->modseq : 0;
		char *msgid = NULL;
		if (what & SCAN_MSGID)
			msgid = msg_message_id(m->body, msg_header_len(m->body, m->len));
		mi.msgid = msgid;
		int r = cb(ctx, &mi);
		free(msgid);
		if (r)
			return (enum store_rc)r;
	}
	return STORE_OK;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static enum store_rc fake_fetch(struct store *s, const uint32_t *uids, size_t n,
    struct body_sink *sink)
{
	struct fake_store *fs = FS(s);
	enum store_rc rc = op_enter(fs, FOP_FETCH, "FETCH");
	if (rc)
		return rc;
	struct fake_folder *f = fs->sel;
	if (!f)
		return store_fail(s, STORE_BOX_BAD, "fetch without a selected folder");
	/* Like a server: answers in its own (ascending) order, skips UIDs
	 * that do not exist. */
	uint32_t *want = xmalloc((n ? n : 1) * sizeof *want);
	if (n)
		memcpy(want, uids, n * sizeof *want);
	xqsort(want, n, sizeof *want, cmp_u32);
	for (size_t i = 0; i < f->n && rc == STORE_OK; i++) {
		const struct fake_msg *m = &f->msgs[i];
		if (!n || !bsearch(&m->uid, want, n, sizeof *want, cmp_u32))
			continue;
		for (size_t off = 0; off < m->len && rc == STORE_OK; off += fs->chunk) {
			size_t take = m->len - off < fs->chunk ? m->len - off : fs->chunk;
			if (sink->data(sink->ctx, m->body + off, take))
				rc = store_fail(s, STORE_FATAL, "body sink refused data");
		}
		if (rc)
			break;
		struct msg_info mi;
		memset(&mi, 0, sizeof mi);
		mi.uid = m->uid;
		mi.size = m->len;
		mi.flags = m->flags;
		mi.idate = m->idate;
		mi.tzoff = m->tzoff;
		mi.modseq = s->caps.condstore ? m->modseq : 0;
		if (sink->done(sink->ctx, &mi))
			rc = store_fail(s, STORE_FATAL, "body sink refused message");
		fs->bodies_fetched++;
	}
	free(want);
	return rc;
}

/* The first flag of fl that folder f does not keep, or NULL (static text). */
static const char *unkept_flag(const struct fake_folder *f, const struct flagset *fl)
{
	static const struct { unsigned bit; const char *name; } sys[] = {
		{FL_SEEN, "\\Seen"}, {FL_ANSWERED, "\\Answered"}, {FL_FLAGGED, "\\Flagged"},
		{FL_DELETED, "\\Deleted"}, {FL_DRAFT, "\\Draft"},
	};
	if (!fl || !f->send_permflags)
		return NULL;
	for (size_t i = 0; i < ARRAY_SIZE(sys); i++)
		if ((fl->sys & sys[i].bit) && !(f->permflags & sys[i].bit))
			return sys[i].name;
	if (f->perm_any_keyword)
		return NULL;
	for (size_t i = 0; i < fl->nkw; i++)
		if (!flagset_has_kw(&f->perm_keywords, fl->kw[i]))
			return fl->kw[i];
	return NULL;
}

static int read_item(const struct append_item *it, char **body_r)
{
	char *b = xmalloc(it->len + 1);
	size_t got = 0;
	while (got < it->len) {
		ssize_t r = pread(it->fd, b + got, it->len - got, it->off + (off_t)got);
		if (r <= 0) {
			free(b);
			return -1;
		}
		got += (size_t)r;
	}
	b[it->len] = 0;
	*body_r = b;
	return 0;
}

/* Bare LF to CRLF; takes body, returns the new one. */
static char *to_crlf(char *body, size_t *len)
{
	struct buf b = BUF_INIT;
	buf_adds(&b, "");
	for (size_t i = 0; i < *len; i++) {
		if (body[i] == '\n' && (i == 0 || body[i - 1] != '\r'))
			buf_addc(&b, '\r');
		buf_addc(&b, body[i]);
	}
	free(body);
	*len = b.len;
	return buf_detach(&b);
}

static enum store_rc fake_append(struct store *s, const char *folder,
    struct append_item *items, size_t n, uint32_t *uidvalidity_r)
{
	struct fake_store *fs = FS(s);
	*uidvalidity_r = 0;
	for (size_t i = 0; i < n; i++) {
		items[i].rc = STORE_CONN_BAD;
		items[i].uid = 0;
		items[i].error = NULL;
	}
	const struct fake_fault *hit = count_op(fs, FOP_APPEND);
	if (!fs->connected)
		return store_fail(s, STORE_CONN_BAD, "%s: not connected", s->label);
	struct fake_folder *f;
	enum store_rc rc = usable_folder(fs, folder, &f);
	if (rc && !hit)
		return store_fail(s, STORE_BOX_BAD, "[TRYCREATE] %s", store_error(s));
	if (rc)
		f = NULL; /* the fault below fires before anything is applied */
	size_t stop = hit ? (f ? hit->append_after : 0) : SIZE_MAX;
	for (size_t i = 0; i < n && f; i++) {
		struct append_item *it = &items[i];
		if (i == stop)
			break;
		char *body;
		if (read_item(it, &body) < 0) {
			autosave(fs);
			return store_fail(s, STORE_FATAL, "cannot read the message to append");
		}
		const char *bad = unkept_flag(f, it->flags);
		if (fs->refuse && fs->refuse(fs->refuse_ctx, folder, body, it->len)) {
			it->rc = STORE_MSG_BAD;
			it->error = xstrdup(fs->refuse_text);
			free(body);
			continue;
		}
		if (bad) {
			it->rc = STORE_MSG_BAD;
			it->error = xasprintf("[CANNOT] flag %s cannot be stored in this folder", bad);
			free(body);
			continue;
		}
		size_t len = it->len;
		if (fs->crlf)
			body = to_crlf(body, &len);
		static const struct flagset none = FLAGSET_INIT;
		bool dated = it->idate != IDATE_NONE;
		uint32_t uid = deliver(f, body, len, it->flags ? it->flags : &none,
		    dated ? it->idate : (int64_t)time(NULL), dated ? it->tzoff : 0);
		fs->appended++;
		it->rc = STORE_OK;
		it->uid = s->caps.uidplus ? uid : 0;
	}
	if (hit) {
		/* Everything before stop is done at the server. */
		if (hit->action == FAULT_CRASH)
			crash(fs);
		if (hit->lose_answers)
			for (size_t i = 0; i < n && i < stop; i++) {
				free(items[i].error);
				items[i].error = NULL;
				items[i].rc = STORE_CONN_BAD;
				items[i].uid = 0;
			}
		autosave(fs);
		return conn_lost(fs, "APPEND");
	}
	if (s->caps.uidplus)
		*uidvalidity_r = f->uidvalidity;
	autosave(fs);
	return STORE_OK;
}

static enum store_rc fake_set_flags(struct store *s, const uint32_t *uids, size_t n,
    const struct flagset *add, const struct flagset *del)
{
	struct fake_store *fs = FS(s);
	enum store_rc rc = op_enter(fs, FOP_SET_FLAGS, "STORE");
	if (rc)
		return rc;
	struct fake_folder *f = fs->sel;
	if (!f)
		return store_fail(s, STORE_BOX_BAD, "STORE without a selected folder");
	if (fs->sel_ro)
		return store_fail(s, STORE_BOX_BAD, "STORE in a read-only folder");
	const char *bad = unkept_flag(f, add);
	if (bad)
		return store_fail(s, STORE_MSG_BAD, "[CANNOT] flag %s cannot be stored", bad);
	bool changed = false;
	for (size_t i = 0; i < n; i++) {
		struct fake_msg *m = fake_store_msg(f, uids[i]);
		if (!m)
			continue;
		struct flagset before = FLAGSET_INIT;
		flagset_copy(&before, &m->flags);
		if (add) {
			m->flags.sys |= add->sys;
			for (size_t k = 0; k < add->nkw; k++)
				flagset_add(&m->flags, add->kw[k]);
		}
		if (del) {
			m->flags.sys &= ~del->sys;
			for (size_t k = 0; k < del->nkw; k++)
				flagset_remove_kw(&m->flags, del->kw[k]);
		}
		if (!flagset_equal(&before, &m->flags)) {
			m->modseq = ++f->hms;
			changed = true;
		}
		flagset_clear(&before);
	}
	if (changed)
		autosave(fs);
	return STORE_OK;
}

static enum store_rc fake_expunge(struct store *s, const uint32_t *uids, size_t n)
{
	struct fake_store *fs = FS(s);
	enum store_rc rc = op_enter(fs, FOP_EXPUNGE, "EXPUNGE");
	if (rc)
		return rc;
	struct fake_folder *f = fs->sel;
	if (!f)
		return store_fail(s, STORE_BOX_BAD, "EXPUNGE without a selected folder");
	if (fs->sel_ro)
		return store_fail(s, STORE_BOX_BAD, "EXPUNGE in a read-only folder");
	bool changed = false;
	for (size_t i = 0; i < n; i++) {
		struct fake_msg *m = fake_store_msg(f, uids[i]);
		if (m) {
			msg_remove_at(f, (size_t)(m - f->msgs));
			changed = true;
		}
	}
	if (changed)
		autosave(fs);
	return STORE_OK;
}

static enum store_rc fake_scan_changes(struct store *s, uint64_t changedsince, unsigned what,
    store_scan_cb *cb, store_vanished_cb *vcb, void *ctx)
{
	struct fake_store *fs = FS(s);
	enum store_rc rc = op_enter(fs, FOP_SCAN_CHANGES, "UID FETCH (VANISHED)");
	if (rc)
		return rc;
	if (!s->caps.qresync || !s->opts.qresync || !changedsince)
		return store_fail(s, STORE_BOX_BAD, "VANISHED without ENABLE QRESYNC");
	struct fake_folder *f = fs->sel;
	if (!f)
		return store_fail(s, STORE_BOX_BAD, "scan without a selected folder");
	rc = scan_selected(fs, 1, changedsince, what, cb, ctx);
	if (rc)
		return rc;
	if (fs->vanished_sloppy) {
		/* every UID below UIDNEXT that is not there */
		uint32_t next = 1;
		for (size_t i = 0; i <= f->n; i++) {
			uint32_t upto = i < f->n ? f->msgs[i].uid : f->uidnext;
			if (upto > next) {
				int r = vcb(ctx, next, upto - 1);
				if (r)
					return (enum store_rc)r;
			}
			next = upto + 1;
		}
		return STORE_OK;
	}
	for (size_t i = 0; i < f->ngone; i++)
		if (f->gone[i].modseq > changedsince) {
			int r = vcb(ctx, f->gone[i].uid, f->gone[i].uid);
			if (r)
				return (enum store_rc)r;
		}
	return STORE_OK;
}

static enum store_rc fake_move(struct store *s, const uint32_t *uids, size_t n, const char *to,
    uint32_t *new_uids)
{
	struct fake_store *fs = FS(s);
	enum store_rc rc = op_enter(fs, FOP_MOVE, "MOVE");
	if (rc)
		return rc;
	struct fake_folder *f = fs->sel, *t;
	if (!f)
		return store_fail(s, STORE_BOX_BAD, "MOVE without a selected folder");
	if (fs->sel_ro)
		return store_fail(s, STORE_BOX_BAD, "MOVE in a read-only folder");
	rc = usable_folder(fs, to, &t);
	if (rc)
		return store_fail(s, STORE_BOX_BAD, "[TRYCREATE] %s", store_error(s));
	bool changed = false;
	for (size_t i = 0; i < n; i++) {
		new_uids[i] = 0;
		struct fake_msg *m = fake_store_msg(f, uids[i]);
		if (!m)
			continue;
		uint32_t nu = copy_msg(t, m);
		msg_remove_at(f, (size_t)(m - f->msgs));
		new_uids[i] = s->caps.uidplus ? nu : 0;
		changed = true;
	}
	if (changed)
		autosave(fs);
	return STORE_OK;
}

static enum store_rc fake_rename(struct store *s, const char *from, const char *to)
{
	struct fake_store *fs = FS(s);
	enum store_rc rc = op_enter(fs, FOP_RENAME, "RENAME");
	if (rc)
		return rc;
	if (fs->sel && at_or_below(fs->sel->name, from, fs->delim))
		fs->sel = NULL;
	if (fake_store_rename_folder(fs, from, to) < 0)
		return store_fail(s, STORE_BOX_BAD, "cannot rename '%s' to '%s'", from, to);
	return STORE_OK;
}

/* store_free() has freed base.error and base.ns.prefix already. */
static void fake_free(struct store *s)
{
	struct fake_store *fs = FS(s);
	for (size_t i = 0; i < fs->nfolders; i++)
		folder_free(fs->folders[i]);
	free(fs->folders);
	free(fs->refuse_text);
	free(fs->refuse_chars);
	free(fs->autosave);
	free(fs);
}

static const struct store_ops fake_ops = {
	.name = "fake",
	.connect = fake_connect,
	.disconnect = fake_disconnect,
	.list = fake_list,
	.create = fake_create,
	.status = fake_status,
	.select = fake_select,
	.scan = fake_scan,
	.fetch = fake_fetch,
	.append = fake_append,
	.set_flags = fake_set_flags,
	.expunge = fake_expunge,
	.scan_changes = fake_scan_changes,
	.move = fake_move,
	.rename = fake_rename,
	.free = fake_free,
};

/* ------------------------------------------------------------------ */
/* counters */

unsigned fake_store_calls(const struct fake_store *fs, enum fake_op kind)
{
	return kind <= FOP_ANY ? fs->calls[kind] : 0;
}

unsigned fake_store_bodies_fetched(const struct fake_store *fs)
{
	return fs->bodies_fetched;
}

unsigned fake_store_msgs_appended(const struct fake_store *fs)
{
	return fs->appended;
}

unsigned fake_store_full_scans(const struct fake_store *fs)
{
	return fs->full_scans;
}

unsigned fake_store_uid_listings(const struct fake_store *fs)
{
	return fs->uid_listings;
}

void fake_store_reset_counters(struct fake_store *fs)
{
	memset(fs->calls, 0, sizeof fs->calls);
	fs->bodies_fetched = fs->appended = 0;
	fs->full_scans = fs->uid_listings = 0;
}

/* ------------------------------------------------------------------ */
/* persistence: numbers as text, strings as LEN:BYTES */

static void put_str(FILE *f, const char *s, size_t len)
{
	fprintf(f, "%zu:", len);
	if (len)
		fwrite(s, 1, len, f);
}

static char *get_str(FILE *f, size_t *len_r)
{
	size_t len;
	if (fscanf(f, " %zu:", &len) != 1 || len > (1u << 30))
		return NULL;
	char *s = xmalloc(len + 1);
	if (fread(s, 1, len, f) != len) {
		free(s);
		return NULL;
	}
	s[len] = 0;
	if (len_r)
		*len_r = len;
	return s;
}

int fake_store_save(const struct fake_store *fs, const char *path)
{
	char *tmp = xasprintf("%s.tmp", path);
	FILE *f = fopen(tmp, "wb");
	if (!f) {
		free(tmp);
		return -1;
	}
	fprintf(f, "%s\n%d %d %d %d %d %" PRIu32 " ", FAKE_MAGIC, (int)(unsigned char)fs->delim,
	    fs->base.caps.uidplus, fs->base.caps.condstore, fs->base.caps.qresync,
	    fs->vanished_sloppy, fs->next_uidvalidity);
	put_str(f, fs->base.ns.prefix, strlen(fs->base.ns.prefix));
	fprintf(f, "\n%zu\n", fs->nfolders);
	for (size_t i = 0; i < fs->nfolders; i++) {
		const struct fake_folder *fo = fs->folders[i];
		char *pk = flagset_format(&fo->perm_keywords);
		fprintf(f, "F ");
		put_str(f, fo->name, strlen(fo->name));
		fprintf(f, " %d %u %" PRIu32 " %" PRIu32 " %" PRIu64 " %d %u %d ",
		    (int)(unsigned char)fo->delim, fo->attrs, fo->uidvalidity, fo->uidnext, fo->hms,
		    fo->send_permflags, fo->permflags, fo->perm_any_keyword);
		put_str(f, pk, strlen(pk));
		fprintf(f, " %zu\n", fo->n);
		free(pk);
		for (size_t k = 0; k < fo->n; k++) {
			const struct fake_msg *m = &fo->msgs[k];
			char *fl = flagset_format(&m->flags);
			fprintf(f, "M %" PRIu32 " %" PRId64 " %d %" PRIu64 " ", m->uid, m->idate,
			    m->tzoff, m->modseq);
			put_str(f, fl, strlen(fl));
			fputc(' ', f);
			put_str(f, m->body, m->len);
			fputc('\n', f);
			free(fl);
		}
		fprintf(f, "G %zu", fo->ngone);
		for (size_t k = 0; k < fo->ngone; k++)
			fprintf(f, " %" PRIu32 " %" PRIu64, fo->gone[k].uid, fo->gone[k].modseq);
		fputc('\n', f);
	}
	int bad = ferror(f);
	if (fflush(f) != 0)
		bad = 1;
	if (fclose(f) != 0)
		bad = 1;
	if (bad || rename(tmp, path) < 0) {
		int e = errno;
		unlink(tmp);
		free(tmp);
		errno = e ? e : EIO;
		return -1;
	}
	free(tmp);
	return 0;
}

struct fake_store *fake_store_load(const char *path, const char *label)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	struct fake_store *fs = NULL;
	char magic[64];
	int delim, uidplus, condstore, qresync, sloppy;
	uint32_t nextuv;
	size_t nfolders;
	char *prefix = NULL;
	if (!fgets(magic, sizeof magic, f) || strncmp(magic, FAKE_MAGIC, strlen(FAKE_MAGIC)))
		goto bad;
	if (fscanf(f, "%d %d %d %d %d %" SCNu32, &delim, &uidplus, &condstore, &qresync, &sloppy,
		&nextuv) != 6)
		goto bad;
	if (!(prefix = get_str(f, NULL)) || fscanf(f, " %zu", &nfolders) != 1)
		goto bad;
	fs = fake_store_new(label, (char)delim, prefix);
	fake_store_set_caps(fs, uidplus, condstore);
	fake_store_set_qresync(fs, qresync, sloppy);
	for (size_t i = 0; i < nfolders; i++) {
		char *name = NULL, *pk = NULL;
		int fdelim, send_perm, any_kw;
		unsigned attrs, permflags;
		uint32_t uv, uidnext;
		uint64_t hms;
		size_t nmsgs;
		char tag;
		if (fscanf(f, " %c", &tag) != 1 || tag != 'F' || !(name = get_str(f, NULL)))
			goto bad;
		struct fake_folder *fo = folder_new(fs, name, 0);
		free(name);
		if (fscanf(f, " %d %u %" SCNu32 " %" SCNu32 " %" SCNu64 " %d %u %d", &fdelim,
			&attrs, &uv, &uidnext, &hms, &send_perm, &permflags, &any_kw) != 8 ||
		    !(pk = get_str(f, NULL)) || fscanf(f, " %zu", &nmsgs) != 1) {
			free(pk);
			goto bad;
		}
		fo->delim = (char)fdelim;
		fo->attrs = attrs;
		fo->uidvalidity = uv;
		fo->uidnext = uidnext;
		fo->hms = hms;
		fake_store_set_permflags(fo, permflags, any_kw, pk);
		fo->send_permflags = send_perm;
		free(pk);
		for (size_t k = 0; k < nmsgs; k++) {
			struct fake_msg *m = msg_push(fo);
			char *fl, mtag;
			if (fscanf(f, " %c %" SCNu32 " %" SCNd64 " %d %" SCNu64, &mtag, &m->uid, &m->idate,
				&m->tzoff, &m->modseq) != 5 || mtag != 'M' || !(fl = get_str(f, NULL)))
				goto bad;
			flagset_parse(&m->flags, fl);
			free(fl);
			if (!(m->body = get_str(f, &m->len)))
				goto bad;
		}
		char gtag;
		size_t ngone;
		if (fscanf(f, " %c %zu", &gtag, &ngone) != 2 || gtag != 'G')
			goto bad;
		for (size_t k = 0; k < ngone; k++) {
			struct fake_gone g;
			if (fscanf(f, " %" SCNu32 " %" SCNu64, &g.uid, &g.modseq) != 2)
				goto bad;
			if (fo->ngone == fo->capgone) {
				fo->capgone = fo->capgone ? fo->capgone * 2 : 16;
				fo->gone = xrealloc(fo->gone, fo->capgone * sizeof *fo->gone);
			}
			fo->gone[fo->ngone++] = g;
		}
	}
	fs->next_uidvalidity = nextuv;
	free(prefix);
	fclose(f);
	return fs;
bad:
	free(prefix);
	fclose(f);
	if (fs) {
		struct store *s = &fs->base;
		store_free(&s);
	}
	return NULL;
}

void fake_store_autosave(struct fake_store *fs, const char *path)
{
	free(fs->autosave);
	fs->autosave = path ? xstrdup(path) : NULL;
}

/* ------------------------------------------------------------------ */
/* comparing */

static uint64_t fnv1a(const char *p, size_t len)
{
	uint64_t h = 0xcbf29ce484222325u;
	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)p[i];
		h *= 0x100000001b3u;
	}
	return h;
}

char *fake_folder_dump(const struct fake_folder *f)
{
	struct buf b = BUF_INIT;
	buf_adds(&b, "");
	for (size_t i = 0; i < f->n; i++) {
		const struct fake_msg *m = &f->msgs[i];
		char *fl = flagset_format(&m->flags);
		buf_addf(&b, "%zu %016" PRIx64 " \"", m->len, fnv1a(m->body, m->len));
		for (size_t k = 0; k < m->len && k < 24; k++) {
			unsigned char c = (unsigned char)m->body[k];
			if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
				buf_addc(&b, (char)c);
			else
				buf_addf(&b, "\\x%02x", c);
		}
		buf_addf(&b, "\" [%s] %" PRId64 " %+d\n", fl, m->idate, m->tzoff);
		free(fl);
	}
	return buf_detach(&b);
}
