/*
 * verify.c — compares the two servers folder by folder (see verify.h).
 *
 * Per destination folder (several source folders may go into one: they
 * are compared together): scan the source folder(s) and the destination
 * (UID, size, flags, INTERNALDATE, Message-ID), fetch the bodies that the
 * comparison needs (all of them with --deep, else only messages without a
 * Message-ID), match, fetch the bodies of the leftovers that share a
 * Message-ID (to tell a server's rewrite from a changed message), match
 * again, and record the differences. Nothing is written to either side:
 * folders are EXAMINEd and bodies fetched with BODY.PEEK.
 */
#include "verify.h"

#include <gnutls/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "log.h"
#include "util.h"

#define FETCH_CHUNK 200

/* ------------------------------------------------------------------ */
/* hashing: raw and with line endings made CRLF */

struct verify_hasher {
	gnutls_hash_hd_t raw, crlf;
	bool prev_cr;
	char out[8192];
	size_t nout;
};

static void hasher_start(struct verify_hasher *h)
{
	if (gnutls_hash_init(&h->raw, GNUTLS_DIG_SHA256) < 0 ||
	    gnutls_hash_init(&h->crlf, GNUTLS_DIG_SHA256) < 0) {
		log_error("cannot initialise SHA-256");
		abort();
	}
	h->prev_cr = false;
	h->nout = 0;
}

struct verify_hasher *verify_hasher_new(void)
{
	struct verify_hasher *h = xcalloc(1, sizeof *h);
	hasher_start(h);
	return h;
}

static void out_flush(struct verify_hasher *h)
{
	if (h->nout)
		gnutls_hash(h->crlf, h->out, h->nout);
	h->nout = 0;
}

static void out_add(struct verify_hasher *h, const char *s, size_t n)
{
	if (h->nout + n > sizeof h->out)
		out_flush(h);
	memcpy(h->out + h->nout, s, n);
	h->nout += n;
}

void verify_hasher_feed(struct verify_hasher *h, const char *bytes, size_t len)
{
	gnutls_hash(h->raw, bytes, len);
	for (size_t i = 0; i < len; i++) {
		char c = bytes[i];
		if (c == '\r') {
			if (h->prev_cr)
				out_add(h, "\r\n", 2); /* the previous CR stood alone */
			h->prev_cr = true;
		} else if (c == '\n') {
			out_add(h, "\r\n", 2);  /* CRLF, or a bare LF */
			h->prev_cr = false;
		} else {
			if (h->prev_cr)
				out_add(h, "\r\n", 2);
			h->prev_cr = false;
			out_add(h, &c, 1);
		}
	}
}

void verify_hasher_done(struct verify_hasher *h, uint8_t raw[32], uint8_t crlf[32])
{
	if (h->prev_cr)
		out_add(h, "\r\n", 2);
	out_flush(h);
	gnutls_hash_deinit(h->raw, raw);
	gnutls_hash_deinit(h->crlf, crlf);
	hasher_start(h);
}

void verify_hasher_free(struct verify_hasher *h)
{
	if (!h)
		return;
	gnutls_hash_deinit(h->raw, NULL);
	gnutls_hash_deinit(h->crlf, NULL);
	free(h);
}

/* ------------------------------------------------------------------ */
/* messages of one side of a folder group */

struct vmsg {
	size_t entry;         /* plan entry (source side), 0 at the destination */
	uint32_t uid;
	uint64_t size;
	char *msgid;
	struct flagset flags;
	int64_t idate;
	uint8_t sha[32], nsha[32];
	bool hashed;
	bool want;            /* body needed */
	long peer;            /* index of its match on the other side, -1 */
	enum verify_kind how; /* VD_MISSING: exact; VD_CONTENT, VD_REWRITTEN */
};

struct side {
	struct vmsg *v;
	size_t n;
};

static void side_free(struct side *s)
{
	for (size_t i = 0; i < s->n; i++) {
		free(s->v[i].msgid);
		flagset_clear(&s->v[i].flags);
	}
	free(s->v);
	memset(s, 0, sizeof *s);
}

struct scan_ctx {
	struct side *side;
	size_t entry;
};

static int scan_cb(void *ctx, const struct msg_info *mi)
{
	struct scan_ctx *sc = ctx;
	struct side *s = sc->side;
	s->v = xrealloc(s->v, (s->n + 1) * sizeof *s->v);
	struct vmsg *m = &s->v[s->n++];
	memset(m, 0, sizeof *m);
	m->entry = sc->entry;
	m->uid = mi->uid;
	m->size = mi->size;
	m->msgid = mi->msgid ? xstrdup(mi->msgid) : NULL;
	flagset_init(&m->flags);
	flagset_copy(&m->flags, &mi->flags);
	m->idate = mi->idate;
	m->peer = -1;
	return 0;
}

static int cmp_entry_uid(const void *a, const void *b)
{
	const struct vmsg *x = a, *y = b;
	if (x->entry != y->entry)
		return x->entry < y->entry ? -1 : 1;
	return x->uid < y->uid ? -1 : x->uid > y->uid;
}

/* The body sink: hashes each message and files the digests by UID. */
struct hash_sink {
	struct verify_hasher *h;
	struct vmsg *v;       /* the slice of one folder, sorted by UID */
	size_t n;
};

static int hs_data(void *ctx, const char *bytes, size_t len)
{
	struct hash_sink *hs = ctx;
	verify_hasher_feed(hs->h, bytes, len);
	return 0;
}

static int hs_done(void *ctx, const struct msg_info *mi)
{
	struct hash_sink *hs = ctx;
	uint8_t raw[32], crlf[32];
	verify_hasher_done(hs->h, raw, crlf);
	size_t lo = 0, hi = hs->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (hs->v[mid].uid < mi->uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < hs->n && hs->v[lo].uid == mi->uid) {
		memcpy(hs->v[lo].sha, raw, 32);
		memcpy(hs->v[lo].nsha, crlf, 32);
		hs->v[lo].hashed = true;
	}
	return 0;
}

/* Fetches and hashes the wanted, not yet hashed messages of v[0..n) (one
 * folder, selected, sorted by UID). */
static enum store_rc fetch_hashes(struct store *st, struct vmsg *v, size_t n)
{
	uint32_t *uids = xcalloc(n ? n : 1, sizeof *uids);
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (v[i].want && !v[i].hashed)
			uids[k++] = v[i].uid;
	struct hash_sink hs = {verify_hasher_new(), v, n};
	struct body_sink sink = {hs_data, hs_done, &hs};
	enum store_rc r = STORE_OK;
	for (size_t i = 0; i < k && r == STORE_OK; i += FETCH_CHUNK) {
		size_t m = k - i < FETCH_CHUNK ? k - i : FETCH_CHUNK;
		r = st->ops->fetch(st, uids + i, m, &sink);
	}
	verify_hasher_free(hs.h);
	free(uids);
	return r;
}

/* ------------------------------------------------------------------ */
/* matching */

/* The key of the first matching round. */
static int key_cmp(const struct vmsg *a, const struct vmsg *b, bool deep)
{
	if (deep) {
		if (a->hashed != b->hashed)
			return a->hashed ? -1 : 1;
		if (a->hashed)
			return memcmp(a->sha, b->sha, 32);
		return a->size < b->size ? -1 : a->size > b->size;
	}
	int ka = a->msgid ? 0 : a->hashed ? 1 : 2;
	int kb = b->msgid ? 0 : b->hashed ? 1 : 2;
	if (ka != kb)
		return ka - kb;
	if (ka == 0) {
		int c = strcmp(a->msgid, b->msgid);
		if (c)
			return c;
	} else if (ka == 1) {
		int c = memcmp(a->sha, b->sha, 32);
		if (c)
			return c;
	}
	return a->size < b->size ? -1 : a->size > b->size;
}

static bool deep_mode; /* for the qsort comparators; verify runs one at a time */

static int cmp_key_ptr(const void *a, const void *b)
{
	const struct vmsg *x = *(struct vmsg *const *)a, *y = *(struct vmsg *const *)b;
	int c = key_cmp(x, y, deep_mode);
	if (c)
		return c;
	if (x->idate != y->idate)
		return x->idate < y->idate ? -1 : 1;
	if (x->entry != y->entry)
		return x->entry < y->entry ? -1 : 1;
	return x->uid < y->uid ? -1 : x->uid > y->uid;
}

static bool same_meta(const struct vmsg *a, const struct vmsg *b, const struct verify_opts *o)
{
	if (!o->no_flags && !flagset_equal(&a->flags, &b->flags))
		return false;
	if (!o->no_dates && a->idate != IDATE_NONE && b->idate != IDATE_NONE &&
	    a->idate != b->idate)
		return false;
	return true;
}

static void pair(struct side *s, size_t i, struct side *d, size_t k, enum verify_kind how)
{
	s->v[i].peer = (long)k;
	d->v[k].peer = (long)i;
	s->v[i].how = how;
	d->v[k].how = how;
}

/* Round 1: equal keys; within a run of equal keys, equal flags and dates
 * pair first, so that duplicates are not blamed for each other's flags. */
static void match_exact(struct side *s, struct side *d, const struct verify_opts *o)
{
	struct vmsg **a = xcalloc(s->n ? s->n : 1, sizeof *a);
	struct vmsg **b = xcalloc(d->n ? d->n : 1, sizeof *b);
	for (size_t i = 0; i < s->n; i++)
		a[i] = &s->v[i];
	for (size_t i = 0; i < d->n; i++)
		b[i] = &d->v[i];
	deep_mode = o->deep;
	xqsort(a, s->n, sizeof *a, cmp_key_ptr);
	xqsort(b, d->n, sizeof *b, cmp_key_ptr);
	size_t i = 0, k = 0;
	while (i < s->n && k < d->n) {
		int c = key_cmp(a[i], b[k], o->deep);
		if (c < 0) {
			i++;
			continue;
		}
		if (c > 0) {
			k++;
			continue;
		}
		size_t ie = i, ke = k;
		while (ie < s->n && !key_cmp(a[ie], a[i], o->deep))
			ie++;
		while (ke < d->n && !key_cmp(b[ke], b[k], o->deep))
			ke++;
		/* unhashed messages without a Message-ID (deep mode: a fetch
		 * that did not return them) are never equal */
		bool unknown = o->deep ? !a[i]->hashed : (!a[i]->msgid && !a[i]->hashed);
		if (!unknown) {
			for (int round = 0; round < 2; round++)
				for (size_t x = i; x < ie; x++) {
					if (a[x]->peer >= 0)
						continue;
					for (size_t y = k; y < ke; y++) {
						if (b[y]->peer >= 0)
							continue;
						if (round == 0 && !same_meta(a[x], b[y], o))
							continue;
						pair(s, (size_t)(a[x] - s->v), d, (size_t)(b[y] - d->v),
						    VD_MISSING);
						break;
					}
				}
		}
		i = ie;
		k = ke;
	}
	free(a);
	free(b);
}

/* Fast mode: leftovers that share a Message-ID need their bodies. */
static size_t want_leftover_bodies(struct side *s, struct side *d)
{
	size_t n = 0;
	for (size_t i = 0; i < s->n; i++) {
		if (s->v[i].peer >= 0 || !s->v[i].msgid)
			continue;
		for (size_t k = 0; k < d->n; k++) {
			if (d->v[k].peer >= 0 || !d->v[k].msgid ||
			    strcmp(s->v[i].msgid, d->v[k].msgid))
				continue;
			if (!s->v[i].hashed && !s->v[i].want) {
				s->v[i].want = true;
				n++;
			}
			if (!d->v[k].hashed && !d->v[k].want) {
				d->v[k].want = true;
				n++;
			}
		}
	}
	return n;
}

/* Round 2: the destination's rewrite (equal with CRLF line endings), then
 * the same Message-ID with other bytes. */
static void match_leftovers(struct side *s, struct side *d, const struct verify_opts *o)
{
	for (int round = 0; round < 2; round++)
		for (size_t i = 0; i < s->n; i++) {
			struct vmsg *a = &s->v[i];
			if (a->peer >= 0)
				continue;
			if (round == 0 && !a->hashed)
				continue;
			if (round == 1 && !a->msgid)
				continue;
			long best = -1;
			for (size_t k = 0; k < d->n; k++) {
				struct vmsg *b = &d->v[k];
				if (b->peer >= 0)
					continue;
				bool ok = round == 0 ? b->hashed && !memcmp(a->nsha, b->nsha, 32)
				    : b->msgid && !strcmp(a->msgid, b->msgid);
				if (!ok)
					continue;
				if (best < 0 || (same_meta(a, b, o) && !same_meta(a, &d->v[best], o)))
					best = (long)k;
			}
			if (best >= 0)
				pair(s, i, d, (size_t)best, round == 0 ? VD_REWRITTEN : VD_CONTENT);
		}
}

/* ------------------------------------------------------------------ */
/* the report */

static struct verify_diff *add_diff(struct verify_folder *f, enum verify_kind kind,
    const char *src_path, const struct vmsg *a, const struct vmsg *b)
{
	f->diffs = xrealloc(f->diffs, (f->ndiffs + 1) * sizeof *f->diffs);
	struct verify_diff *x = &f->diffs[f->ndiffs++];
	memset(x, 0, sizeof *x);
	x->kind = kind;
	x->src_path = src_path ? xstrdup(src_path) : NULL;
	x->a_date = x->b_date = IDATE_NONE;
	if (a) {
		x->a_uid = a->uid;
		x->a_size = a->size;
		x->a_date = a->idate;
		if (a->msgid)
			x->msgid = xstrdup(a->msgid);
	}
	if (b) {
		x->b_uid = b->uid;
		x->b_size = b->size;
		x->b_date = b->idate;
		if (!x->msgid && b->msgid)
			x->msgid = xstrdup(b->msgid);
	}
	return x;
}

static void record(struct verify_folder *f, const struct plan *plan, struct side *s,
    struct side *d, const struct verify_opts *o)
{
	f->n_src = s->n;
	f->n_dst = d->n;
	for (size_t i = 0; i < s->n; i++) {
		const struct vmsg *a = &s->v[i];
		const char *path = plan->v[a->entry].src_path;
		if (a->peer < 0) {
			add_diff(f, VD_MISSING, path, a, NULL);
			f->missing++;
			continue;
		}
		const struct vmsg *b = &d->v[a->peer];
		if (a->how == VD_REWRITTEN) {
			add_diff(f, VD_REWRITTEN, path, a, b);
			f->rewritten++;
		} else if (a->how == VD_CONTENT) {
			add_diff(f, VD_CONTENT, path, a, b);
			f->content++;
		}
		if (!o->no_flags && !flagset_equal(&a->flags, &b->flags)) {
			struct verify_diff *x = add_diff(f, VD_FLAGS, path, a, b);
			x->a_flags = flagset_format(&a->flags);
			x->b_flags = flagset_format(&b->flags);
			f->flags++;
		}
		if (!o->no_dates && a->idate != IDATE_NONE && b->idate != IDATE_NONE &&
		    a->idate != b->idate) {
			add_diff(f, VD_DATE, path, a, b);
			f->dates++;
		}
	}
	for (size_t k = 0; k < d->n; k++)
		if (d->v[k].peer < 0) {
			add_diff(f, VD_EXTRA, NULL, NULL, &d->v[k]);
			f->extra++;
		}
}

static void folder_clear(struct verify_folder *f)
{
	for (size_t i = 0; i < f->ndiffs; i++) {
		free(f->diffs[i].src_path);
		free(f->diffs[i].msgid);
		free(f->diffs[i].a_flags);
		free(f->diffs[i].b_flags);
	}
	free(f->diffs);
	f->diffs = NULL;
	f->ndiffs = 0;
	free(f->error);
	f->error = NULL;
	f->failed = false;
	f->n_src = f->n_dst = 0;
	f->missing = f->extra = f->flags = f->dates = f->content = f->rewritten = 0;
}

void verify_report_free(struct verify_report *r)
{
	for (size_t i = 0; i < r->nfolders; i++) {
		folder_clear(&r->folders[i]);
		free(r->folders[i].src_path);
		free(r->folders[i].dst_path);
		free(r->folders[i].skip_reason);
	}
	free(r->folders);
	memset(r, 0, sizeof *r);
}

/* ------------------------------------------------------------------ */
/* one destination folder and the source folders that go into it */

struct group {
	size_t *entries;
	size_t n;
};

/* Selects and scans one folder, fetching the wanted bodies. */
static enum store_rc load_side(struct store *st, const char *name, size_t entry,
    struct side *side, bool deep, struct store **failed)
{
	struct box_status bs;
	memset(&bs, 0, sizeof bs);
	enum store_rc r = st->ops->select(st, name, true, &bs);
	box_status_clear(&bs);
	if (r == STORE_OK) {
		struct scan_ctx sc = {side, entry};
		size_t first = side->n;
		r = st->ops->scan(st, 1, 0, SCAN_FLAGS | SCAN_SIZE | SCAN_DATE | SCAN_MSGID,
		    scan_cb, &sc);
		if (r == STORE_OK) {
			struct vmsg *v = side->v + first;
			size_t n = side->n - first;
			xqsort(v, n, sizeof *v, cmp_entry_uid);
			for (size_t i = 0; i < n; i++)
				v[i].want = deep || !v[i].msgid;
			r = fetch_hashes(st, v, n);
		}
	}
	if (r != STORE_OK)
		*failed = st;
	return r;
}

/* Fetches the bodies marked wanted since the first load. */
static enum store_rc load_more(struct store *st, const char *name, struct vmsg *v,
    size_t n, struct store **failed)
{
	bool any = false;
	for (size_t i = 0; i < n && !any; i++)
		any = v[i].want && !v[i].hashed;
	if (!any)
		return STORE_OK;
	struct box_status bs;
	memset(&bs, 0, sizeof bs);
	enum store_rc r = st->ops->select(st, name, true, &bs);
	box_status_clear(&bs);
	if (r == STORE_OK)
		r = fetch_hashes(st, v, n);
	if (r != STORE_OK)
		*failed = st;
	return r;
}

static enum store_rc verify_group(struct store *src, struct store *dst, const struct plan *plan,
    const struct group *g, const struct verify_opts *o, struct verify_folder *f,
    struct store **failed)
{
	struct side s = {0}, d = {0};
	enum store_rc r = STORE_OK;
	const struct plan_entry *e0 = &plan->v[g->entries[0]];
	for (size_t i = 0; i < g->n && r == STORE_OK; i++) {
		const struct plan_entry *e = &plan->v[g->entries[i]];
		r = load_side(src, e->src_name, g->entries[i], &s, o->deep, failed);
		if (r == STORE_BOX_BAD)
			f->error = xasprintf("source folder %s: %s", e->src_path, store_error(src));
	}
	f->dst_missing = e0->action == PLAN_CREATE;
	if (r == STORE_OK && !f->dst_missing) {
		r = load_side(dst, e0->dst_name, 0, &d, o->deep, failed);
		if (r == STORE_BOX_BAD)
			f->error = xasprintf("destination folder %s: %s", e0->dst_path,
			    store_error(dst));
	}
	if (r == STORE_OK) {
		match_exact(&s, &d, o);
		if (!o->deep && want_leftover_bodies(&s, &d)) {
			/* per source folder: the slices of s are sorted by entry */
			for (size_t i = 0, lo = 0; i < g->n && r == STORE_OK; i++) {
				size_t hi = lo;
				while (hi < s.n && s.v[hi].entry == g->entries[i])
					hi++;
				r = load_more(src, plan->v[g->entries[i]].src_name, s.v + lo, hi - lo,
				    failed);
				lo = hi;
			}
			if (r == STORE_OK)
				r = load_more(dst, e0->dst_name, d.v, d.n, failed);
		}
	}
	if (r == STORE_OK) {
		match_leftovers(&s, &d, o);
		record(f, plan, &s, &d, o);
	}
	side_free(&s);
	side_free(&d);
	return r;
}

static void group_add(struct group **gs, size_t *ng, const struct plan *plan, size_t idx)
{
	const struct plan_entry *e = &plan->v[idx];
	for (size_t i = 0; i < *ng; i++) {
		const struct plan_entry *x = &plan->v[(*gs)[i].entries[0]];
		if (!strcmp(x->dst_name, e->dst_name)) {
			struct group *g = &(*gs)[i];
			g->entries = xrealloc(g->entries, (g->n + 1) * sizeof *g->entries);
			g->entries[g->n++] = idx;
			return;
		}
	}
	*gs = xrealloc(*gs, (*ng + 1) * sizeof **gs);
	struct group *g = &(*gs)[(*ng)++];
	g->entries = xcalloc(1, sizeof *g->entries);
	g->entries[0] = idx;
	g->n = 1;
}

enum store_rc verify_run(struct store *src, struct store *dst, const struct plan *plan,
    const struct verify_opts *o, struct verify_report *rep, char **err_r)
{
	memset(rep, 0, sizeof *rep);
	rep->deep = o->deep;
	rep->started_ms = now_ms();
	*err_r = NULL;

	struct group *gs = NULL;
	size_t ng = 0;
	for (size_t i = 0; i < plan->n; i++)
		if (plan->v[i].action != PLAN_SKIP)
			group_add(&gs, &ng, plan, i);

	/* folders in plan order: each group where its first entry stands,
	 * skipped entries where they stand */
	rep->folders = xcalloc(plan->n ? plan->n : 1, sizeof *rep->folders);
	enum store_rc result = STORE_OK;
	for (size_t i = 0; i < plan->n; i++) {
		const struct plan_entry *e = &plan->v[i];
		if (e->action == PLAN_SKIP) {
			struct verify_folder *f = &rep->folders[rep->nfolders++];
			f->src_path = xstrdup(e->src_path);
			f->skip_reason = xstrdup(e->reason ? e->reason : "skipped");
			rep->skipped++;
			continue;
		}
		struct group *g = NULL;
		for (size_t k = 0; k < ng && !g; k++)
			if (gs[k].entries[0] == i)
				g = &gs[k];
		if (!g)
			continue; /* a later source folder of an earlier group */
		struct verify_folder *f = &rep->folders[rep->nfolders++];
		struct buf names = BUF_INIT;
		for (size_t k = 0; k < g->n; k++)
			buf_addf(&names, "%s%s", k ? ", " : "", plan->v[g->entries[k]].src_path);
		f->src_path = buf_detach(&names);
		f->dst_path = xstrdup(e->dst_path);
		log_info("verifying %s -> %s", f->src_path, f->dst_path);

		enum store_rc r;
		for (int attempt = 0;; attempt++) {
			struct store *failed = NULL;
			folder_clear(f);
			r = verify_group(src, dst, plan, g, o, f, &failed);
			if (r != STORE_CONN_BAD || attempt >= 2 || !failed)
				break;
			log_notice("%s: connection lost (%s); reconnecting", failed->label,
			    store_error(failed));
			if (store_reconnect(failed, 3) != STORE_OK) {
				r = failed->fatal ? STORE_FATAL : STORE_CONN_BAD;
				break;
			}
		}
		if (r == STORE_MSG_BAD || r == STORE_BOX_BAD) {
			f->failed = true;
			if (!f->error)
				f->error = xstrdup("cannot be read");
			continue;
		}
		if (r != STORE_OK) {
			struct store *bad = src->fatal ? src : dst->fatal ? dst : NULL;
			if (bad)
				*err_r = xasprintf("%s: %s", bad->label, store_error(bad));
			else
				*err_r = xasprintf("the connection kept failing (while verifying "
				    "%s)", f->src_path);
			f->failed = true;
			f->error = xstrdup(*err_r);
			result = r;
			break;
		}
	}
	for (size_t k = 0; k < ng; k++)
		free(gs[k].entries);
	free(gs);

	for (size_t i = 0; i < rep->nfolders; i++) {
		struct verify_folder *f = &rep->folders[i];
		if (f->skip_reason)
			continue;
		rep->checked++;
		rep->n_src += f->n_src;
		rep->n_dst += f->n_dst;
		rep->missing += f->missing;
		rep->extra += f->extra;
		rep->flags += f->flags;
		rep->dates += f->dates;
		rep->content += f->content;
		rep->rewritten += f->rewritten;
		if (f->failed)
			rep->failed++;
		else if (f->missing || f->flags || f->dates || f->content)
			rep->differing++;
	}
	rep->ended_ms = now_ms();
	return result;
}

bool verify_all_there(const struct verify_report *r)
{
	return !r->missing && !r->flags && !r->dates && !r->content && !r->failed;
}

/* ------------------------------------------------------------------ */
/* output */

static void fmt_date(char out[40], int64_t t)
{
	if (t == IDATE_NONE) {
		snprintf(out, 40, "unknown date");
		return;
	}
	time_t tt = (time_t)t;
	struct tm tm;
	if (!gmtime_r(&tt, &tm)) {
		snprintf(out, 40, "@%lld", (long long)t);
		return;
	}
	strftime(out, 40, "%Y-%m-%d %H:%M:%S UTC", &tm);
}

static const char *const kind_label[] = {
	[VD_MISSING] = "missing",
	[VD_FLAGS] = "flags",
	[VD_DATE] = "date",
	[VD_CONTENT] = "content",
	[VD_REWRITTEN] = "rewritten by the server: line endings",
	[VD_EXTRA] = "extra at the destination",
};

static void print_diff(FILE *out, const struct verify_diff *x, bool several)
{
	char da[40], db[40];
	fmt_date(da, x->a_date);
	fmt_date(db, x->b_date);
	char *mid = x->msgid ? xasprintf("<%s>", x->msgid) : xstrdup("no Message-ID");
	fprintf(out, "    %s: ", kind_label[x->kind]);
	if (several && x->src_path)
		fprintf(out, "%s ", x->src_path);
	switch (x->kind) {
	case VD_MISSING:
		fprintf(out, "UID %u (%llu bytes, %s, %s)\n", x->a_uid,
		    (unsigned long long)x->a_size, mid, da);
		break;
	case VD_EXTRA:
		fprintf(out, "UID %u (%llu bytes, %s, %s)\n", x->b_uid,
		    (unsigned long long)x->b_size, mid, db);
		break;
	case VD_FLAGS:
		fprintf(out, "UID %u -> UID %u: \"%s\" in the source, \"%s\" at the destination\n",
		    x->a_uid, x->b_uid, x->a_flags, x->b_flags);
		break;
	case VD_DATE:
		fprintf(out, "UID %u -> UID %u: %s in the source, %s at the destination\n",
		    x->a_uid, x->b_uid, da, db);
		break;
	case VD_CONTENT:
		fprintf(out, "UID %u -> UID %u (%s): other bytes (%llu in the source, %llu at "
		    "the destination; SHA-256 differs)\n", x->a_uid, x->b_uid,
		    mid, (unsigned long long)x->a_size,
		    (unsigned long long)x->b_size);
		break;
	case VD_REWRITTEN:
		fprintf(out, "UID %u -> UID %u (%s, %llu -> %llu bytes)\n", x->a_uid, x->b_uid,
		    mid, (unsigned long long)x->a_size,
		    (unsigned long long)x->b_size);
		break;
	}
	free(mid);
}

static void counts_text(struct buf *b, const struct verify_folder *f)
{
	const struct {
		uint64_t n;
		const char *what;
	} c[] = {
		{f->missing, "missing"},
		{f->flags, "with other flags"},
		{f->dates, "with another date"},
		{f->content, "with other content"},
		{f->rewritten, "rewritten by the server (line endings)"},
		{f->extra, "extra at the destination"},
	};
	bool first = true;
	for (size_t i = 0; i < ARRAY_SIZE(c); i++) {
		if (!c[i].n)
			continue;
		buf_addf(b, "%s%llu %s", first ? "" : ", ", (unsigned long long)c[i].n, c[i].what);
		first = false;
	}
}

void verify_print_text(FILE *out, const struct verify_report *r, const char *src_url,
    const char *dst_url, size_t limit)
{
	fprintf(out, "verify: %s -> %s (%s)\n", src_url, dst_url,
	    r->deep ? "deep: SHA-256 of every message" : "Message-ID and size");
	for (size_t i = 0; i < r->nfolders; i++) {
		const struct verify_folder *f = &r->folders[i];
		if (f->skip_reason) {
			fprintf(out, "  %s: skipped (%s)\n", f->src_path, f->skip_reason);
			continue;
		}
		fprintf(out, "  %s -> %s: ", f->src_path, f->dst_path);
		if (f->failed) {
			fprintf(out, "NOT VERIFIED: %s\n", f->error ? f->error : "error");
			continue;
		}
		struct buf b = BUF_INIT;
		counts_text(&b, f);
		bool bad = f->missing || f->flags || f->dates || f->content;
		if (f->dst_missing)
			fprintf(out, "%llu in the source; the destination folder does not exist: "
			    "DIFFERENT: %s\n", (unsigned long long)f->n_src, b.s ? b.s : "");
		else if (!bad)
			fprintf(out, "%llu message%s, all there%s%s%s\n", (unsigned long long)f->n_src,
			    f->n_src == 1 ? "" : "s", b.s ? " (" : "", b.s ? b.s : "", b.s ? ")" : "");
		else
			fprintf(out, "%llu in the source, %llu at the destination: DIFFERENT: %s\n",
			    (unsigned long long)f->n_src, (unsigned long long)f->n_dst, b.s);
		buf_release(&b);
		bool several = strchr(f->src_path, ',') != NULL;
		size_t shown[VD_EXTRA + 1] = {0}, hidden = 0;
		for (size_t k = 0; k < f->ndiffs; k++) {
			const struct verify_diff *x = &f->diffs[k];
			if (limit && shown[x->kind] >= limit) {
				hidden++;
				continue;
			}
			shown[x->kind]++;
			print_diff(out, x, several);
		}
		if (hidden)
			fprintf(out, "    ... and %zu more (-v or --json lists all)\n", hidden);
	}
	double secs = (double)(r->ended_ms - r->started_ms) / 1000.0;
	if (verify_all_there(r)) {
		fprintf(out, "verdict: ALL THERE: %llu message%s in %zu folder%s",
		    (unsigned long long)r->n_src, r->n_src == 1 ? "" : "s", r->checked,
		    r->checked == 1 ? "" : "s");
		if (r->rewritten)
			fprintf(out, "; %llu rewritten by the server (line endings)",
			    (unsigned long long)r->rewritten);
		if (r->extra)
			fprintf(out, "; %llu extra at the destination", (unsigned long long)r->extra);
		fprintf(out, " (%.1f s)\n", secs);
	} else {
		fprintf(out, "verdict: DIFFERENT: %llu missing, %llu with other flags, %llu with "
		    "another date, %llu with other content, in %zu of %zu folders",
		    (unsigned long long)r->missing, (unsigned long long)r->flags,
		    (unsigned long long)r->dates, (unsigned long long)r->content,
		    r->differing + r->failed, r->checked);
		if (r->failed)
			fprintf(out, " (%zu could not be verified)", r->failed);
		fprintf(out, " (%.1f s)\n", secs);
	}
	fflush(out);
}

/* A JSON string: escapes, and U+FFFD for bytes that are not UTF-8. */
static void json_str(FILE *out, const char *s)
{
	if (!s) {
		fputs("null", out);
		return;
	}
	fputc('"', out);
	const unsigned char *p = (const unsigned char *)s;
	while (*p) {
		unsigned c = *p;
		if (c == '"' || c == '\\') {
			fprintf(out, "\\%c", c);
			p++;
		} else if (c < 0x20 || c == 0x7f) {
			fprintf(out, "\\u%04x", c);
			p++;
		} else if (c < 0x80) {
			fputc((int)c, out);
			p++;
		} else {
			size_t n = c >= 0xf0 && c < 0xf5 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
			if (c >= 0xf5)
				n = 0;
			bool ok = n > 0;
			for (size_t k = 1; k < n && ok; k++)
				ok = (p[k] & 0xc0) == 0x80;
			if (ok) {
				fwrite(p, 1, n, out);
				p += n;
			} else {
				fputs("\\ufffd", out);
				p++;
			}
		}
	}
	fputc('"', out);
}

static void json_date(FILE *out, int64_t t)
{
	if (t == IDATE_NONE) {
		fputs("null", out);
		return;
	}
	char d[40];
	time_t tt = (time_t)t;
	struct tm tm;
	if (gmtime_r(&tt, &tm) && strftime(d, sizeof d, "%Y-%m-%dT%H:%M:%SZ", &tm))
		json_str(out, d);
	else
		fprintf(out, "%lld", (long long)t);
}

static const char *const kind_json[] = {
	[VD_MISSING] = "missing", [VD_FLAGS] = "flags", [VD_DATE] = "date",
	[VD_CONTENT] = "content", [VD_REWRITTEN] = "rewritten", [VD_EXTRA] = "extra",
};

static void json_diff(FILE *out, const struct verify_diff *x)
{
	fprintf(out, "{\"kind\": \"%s\"", kind_json[x->kind]);
	if (x->kind == VD_REWRITTEN)
		fputs(", \"cause\": \"line endings\"", out);
	if (x->src_path) {
		fputs(", \"source_folder\": ", out);
		json_str(out, x->src_path);
	}
	fputs(", \"message_id\": ", out);
	json_str(out, x->msgid);
	if (x->kind != VD_EXTRA) {
		fprintf(out, ", \"source_uid\": %u, \"source_size\": %llu, \"source_date\": ",
		    x->a_uid, (unsigned long long)x->a_size);
		json_date(out, x->a_date);
	}
	if (x->kind != VD_MISSING) {
		fprintf(out, ", \"destination_uid\": %u, \"destination_size\": %llu, "
		    "\"destination_date\": ", x->b_uid, (unsigned long long)x->b_size);
		json_date(out, x->b_date);
	}
	if (x->kind == VD_FLAGS) {
		fputs(", \"source_flags\": ", out);
		json_str(out, x->a_flags);
		fputs(", \"destination_flags\": ", out);
		json_str(out, x->b_flags);
	}
	fputc('}', out);
}

void verify_print_json(FILE *out, const struct verify_report *r, const char *src_url,
    const char *dst_url, int exit_code)
{
	fputs("{\n  \"postino\": ", out);
	json_str(out, POSTINO_VERSION);
	fputs(",\n  \"command\": \"verify\",\n  \"source\": ", out);
	json_str(out, src_url);
	fputs(",\n  \"destination\": ", out);
	json_str(out, dst_url);
	fprintf(out, ",\n  \"mode\": \"%s\",\n  \"folders\": [", r->deep ? "deep" : "headers");
	for (size_t i = 0; i < r->nfolders; i++) {
		const struct verify_folder *f = &r->folders[i];
		fputs(i ? ",\n    {" : "\n    {", out);
		fputs("\"source\": ", out);
		json_str(out, f->src_path);
		fputs(", \"destination\": ", out);
		json_str(out, f->dst_path);
		const char *status = f->skip_reason ? "skipped" : f->failed ? "error" :
		    (f->missing || f->flags || f->dates || f->content) ? "different" : "ok";
		fprintf(out, ", \"status\": \"%s\"", status);
		if (f->skip_reason) {
			fputs(", \"reason\": ", out);
			json_str(out, f->skip_reason);
			fputc('}', out);
			continue;
		}
		if (f->failed) {
			fputs(", \"error\": ", out);
			json_str(out, f->error);
		}
		fprintf(out, ", \"destination_exists\": %s, \"source_messages\": %llu, "
		    "\"destination_messages\": %llu, \"missing\": %llu, \"extra\": %llu, "
		    "\"flags\": %llu, \"dates\": %llu, \"content\": %llu, \"rewritten\": %llu, "
		    "\"differences\": [", f->dst_missing ? "false" : "true",
		    (unsigned long long)f->n_src, (unsigned long long)f->n_dst,
		    (unsigned long long)f->missing, (unsigned long long)f->extra,
		    (unsigned long long)f->flags, (unsigned long long)f->dates,
		    (unsigned long long)f->content, (unsigned long long)f->rewritten);
		for (size_t k = 0; k < f->ndiffs; k++) {
			fputs(k ? ",\n      " : "\n      ", out);
			json_diff(out, &f->diffs[k]);
		}
		fputs(f->ndiffs ? "\n    ]}" : "]}", out);
	}
	fprintf(out, "%s],\n  \"totals\": {\"folders\": %zu, \"skipped\": %zu, \"different\": %zu, "
	    "\"not_verified\": %zu, \"source_messages\": %llu, \"destination_messages\": %llu, "
	    "\"missing\": %llu, \"extra\": %llu, \"flags\": %llu, \"dates\": %llu, "
	    "\"content\": %llu, \"rewritten\": %llu},\n", r->nfolders ? "\n  " : "", r->checked,
	    r->skipped, r->differing, r->failed, (unsigned long long)r->n_src,
	    (unsigned long long)r->n_dst, (unsigned long long)r->missing,
	    (unsigned long long)r->extra, (unsigned long long)r->flags,
	    (unsigned long long)r->dates, (unsigned long long)r->content,
	    (unsigned long long)r->rewritten);
	fprintf(out, "  \"verdict\": \"%s\",\n  \"exit_code\": %d,\n  \"duration_s\": %.3f\n}\n",
	    exit_code == 0 ? "all there" : exit_code == 1 ? "different" : "not verified",
	    exit_code, (double)(r->ended_ms - r->started_ms) / 1000.0);
	fflush(out);
}
