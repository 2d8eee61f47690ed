/*
 * mirror.c — two-way mirroring: analyse every folder pair, recognise
 * moves, then apply (see mirror.h for the phases, merge.h for the rules).
 *
 * Crash safety. Copies use the copier's intents (exactly once). Every
 * other change is made on the server first and recorded after, and each is
 * idempotent when redone from the state: a flag change found applied on
 * both sides merges to itself; a deletion found done on both sides forgets
 * the row; a move found done leaves a message gone from both sides of one
 * pair (forgotten) and unknown on both sides of the other (paired again by
 * content, not copied).
 */
#include "mirror.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "merge.h"
#include "spool.h"
#include "util.h"

void mirror_opts_default(struct mirror_opts *o)
{
	memset(o, 0, sizeof *o);
	copy_opts_default(&o->copy);
	o->copy.jobs = 1;
	o->max_delete = 50;
	o->max_delete_percent = 10;
}

/* ------------------------------------------------------------------ */
/* folder pairs */

void mirror_pairs_free(struct mirror_pairs *p)
{
	for (size_t i = 0; i < p->n; i++) {
		free(p->v[i].a_name);
		free(p->v[i].a_path);
		free(p->v[i].b_name);
		free(p->v[i].b_path);
		free(p->v[i].a_escaped);
		free(p->v[i].a_escaped_path);
		free(p->v[i].b_escaped);
		free(p->v[i].b_escaped_path);
	}
	free(p->v);
	p->v = NULL;
	p->n = 0;
}

static struct mirror_pair *add_pair(struct mirror_pairs *out, const char *an,
    const char *ap, const char *bn, const char *bp)
{
	out->v = xrealloc(out->v, (out->n + 1) * sizeof *out->v);
	struct mirror_pair *p = &out->v[out->n++];
	memset(p, 0, sizeof *p);
	p->a_name = xstrdup(an);
	p->a_path = xstrdup(ap);
	p->b_name = xstrdup(bn);
	p->b_path = xstrdup(bp);
	return p;
}

static char *dup_or_null(const char *s)
{
	return s ? xstrdup(s) : NULL;
}

/* Is name the escaped name of a folder some entry of plan p creates? */
static bool is_escape_target(const struct plan *p, const char *name)
{
	for (size_t i = 0; i < p->n; i++)
		if (p->v[i].action == PLAN_CREATE && p->v[i].dst_escaped &&
		    !strcmp(p->v[i].dst_escaped, name))
			return true;
	return false;
}

static const struct mirror_known *find_known(const struct mirror_known *k, size_t nk,
    const char *a_name, const char *b_name)
{
	for (size_t i = 0; i < nk; i++)
		if ((!a_name || !strcmp(k[i].a_name, a_name)) &&
		    (!b_name || !strcmp(k[i].b_name, b_name)))
			return &k[i];
	return NULL;
}

void mirror_pairs_build(struct mirror_pairs *out, const struct plan *ab, const struct plan *ba,
    const struct mirror_known *known, size_t nknown)
{
	memset(out, 0, sizeof *out);
	for (size_t i = 0; i < ab->n; i++) {
		const struct plan_entry *e = &ab->v[i];
		if (e->action == PLAN_SKIP)
			continue;
		/* an escaped name the B->A plan would create on A: that entry's
		 * creation takes this folder (a pass died between the CREATE and
		 * recording the pair) */
		if (!find_known(known, nknown, e->src_name, NULL) && is_escape_target(ba, e->src_name))
			continue;
		bool dup = false;
		for (size_t k = 0; k < out->n && !dup; k++)
			dup = !strcmp(out->v[k].b_name, e->dst_name);
		if (dup) {
			/* two A folders into one B folder cannot be mirrored back */
			log_warn("'%s' is not mirrored: its destination '%s' is taken", e->src_path,
			    e->dst_path);
			continue;
		}
		struct mirror_pair *p = add_pair(out, e->src_name, e->src_path, e->dst_name,
		    e->dst_path);
		const struct mirror_known *k = find_known(known, nknown, e->src_name, e->dst_name);
		p->known = k != NULL;
		if (e->action == PLAN_CREATE) {
			if (k && k->completed) {
				p->b_gone = true;
			} else {
				p->b_missing = true;
				p->b_escaped = dup_or_null(e->dst_escaped);
				p->b_escaped_path = dup_or_null(e->dst_escaped_path);
			}
		}
	}
	for (size_t i = 0; i < ba->n; i++) {
		const struct plan_entry *e = &ba->v[i];
		if (e->action == PLAN_SKIP)
			continue;
		bool listed = false;
		for (size_t k = 0; k < out->n && !listed; k++)
			listed = !strcmp(out->v[k].b_name, e->src_name) ||
			    !strcmp(out->v[k].a_name, e->dst_name) ||
			    (out->v[k].b_escaped && !strcmp(out->v[k].b_escaped, e->src_name));
		if (listed)
			continue;
		struct mirror_pair *p = add_pair(out, e->dst_name, e->dst_path, e->src_name,
		    e->src_path);
		const struct mirror_known *k = find_known(known, nknown, e->dst_name, e->src_name);
		p->known = k != NULL;
		if (e->action == PLAN_CREATE) {
			if (k && k->completed) {
				p->a_gone = true;
			} else {
				p->a_missing = true;
				p->a_escaped = dup_or_null(e->dst_escaped);
				p->a_escaped_path = dup_or_null(e->dst_escaped_path);
			}
		}
	}
}

bool mirror_guard_holds(size_t deletions, uint32_t folder_size, unsigned max_delete,
    unsigned max_delete_percent, bool force)
{
	if (force || !deletions)
		return false;
	uint64_t pct = (uint64_t)folder_size * max_delete_percent / 100;
	uint64_t limit = pct > max_delete ? pct : max_delete;
	return deletions > limit;
}

/* ------------------------------------------------------------------ */
/* what one side holds */

struct smsg {
	uint32_t uid;
	uint64_t size;
	char *flags;   /* canonical */
	char *msgid;   /* when asked for */
	bool claimed;  /* a row or a move accounts for it */
};

struct slist {
	struct smsg *v;
	size_t n, cap;
};

static void slist_free(struct slist *l)
{
	for (size_t i = 0; i < l->n; i++) {
		free(l->v[i].flags);
		free(l->v[i].msgid);
	}
	free(l->v);
	memset(l, 0, sizeof *l);
}

static int slist_add(void *ctx, const struct msg_info *mi)
{
	struct slist *l = ctx;
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 256;
		l->v = xrealloc(l->v, l->cap * sizeof *l->v);
	}
	l->v[l->n++] = (struct smsg){mi->uid, mi->size, flagset_format(&mi->flags),
	    mi->msgid ? xstrdup(mi->msgid) : NULL, false};
	return 0;
}

static int cmp_smsg(const void *x, const void *y)
{
	const struct smsg *a = x, *b = y;
	return a->uid < b->uid ? -1 : a->uid > b->uid;
}

static struct smsg *slist_find(struct slist *l, uint32_t uid)
{
	if (!uid)
		return NULL;
	struct smsg key = {uid, 0, NULL, NULL, false};
	return xbsearch(&key, l->v, l->n, sizeof *l->v, cmp_smsg);
}

/* Message-IDs of the entries no row accounts for (one scan from the
 * lowest of their UIDs). */
struct msgid_ctx {
	struct slist *l;
};

static int msgid_cb(void *ctx, const struct msg_info *mi)
{
	struct msgid_ctx *m = ctx;
	struct smsg *e = slist_find(m->l, mi->uid);
	if (e && !e->claimed && !e->msgid && mi->msgid)
		e->msgid = xstrdup(mi->msgid);
	return 0;
}

static char *sha_key(const uint8_t sha[32])
{
	char hex[65];
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", sha[i]);
	return xasprintf("sha:%s", hex);
}

/*
 * Identities of the entries no row accounts for: the Message-ID, or for a
 * message without one "sha:" and the SHA-256 of its bytes (fetched: such
 * messages are few).
 */
static enum store_rc load_msgids(struct store *s, struct slist *l)
{
	uint32_t from = 0;
	for (size_t i = 0; i < l->n; i++)
		if (!l->v[i].claimed && !l->v[i].msgid) {
			from = l->v[i].uid;
			break;
		}
	if (!from)
		return STORE_OK;
	struct msgid_ctx m = {l};
	enum store_rc r = s->ops->scan(s, from, 0, SCAN_SIZE | SCAN_MSGID, msgid_cb, &m);
	if (r)
		return r;
	size_t n = 0;
	uint32_t *uids = xmalloc((l->n ? l->n : 1) * sizeof *uids);
	for (size_t i = 0; i < l->n; i++)
		if (!l->v[i].claimed && !l->v[i].msgid)
			uids[n++] = l->v[i].uid;
	if (n) {
		struct spool sp;
		if (spool_open(&sp) < 0) {
			free(uids);
			return store_fail(s, STORE_FATAL, "cannot create a spool file");
		}
		struct body_sink sink;
		spool_sink(&sp, &sink);
		r = s->ops->fetch(s, uids, n, &sink);
		for (size_t k = 0; r == STORE_OK && k < sp.n; k++) {
			struct smsg *e = slist_find(l, sp.msgs[k].uid);
			if (e && !e->msgid)
				e->msgid = sha_key(sp.msgs[k].sha256);
		}
		spool_close(&sp);
	}
	free(uids);
	return r;
}

/* ------------------------------------------------------------------ */
/* state rows of a pair */

struct mrow {
	int64_t id;
	uint32_t a_uid, b_uid;
	enum msg_state state;
	uint64_t size;
	char *msgid;
	char *flags;
};

struct rows {
	struct mrow *v;
	size_t n, cap;
};

static int rows_add(void *ctx, const struct msg_row *r)
{
	struct rows *rs = ctx;
	if (rs->n == rs->cap) {
		rs->cap = rs->cap ? rs->cap * 2 : 256;
		rs->v = xrealloc(rs->v, rs->cap * sizeof *rs->v);
	}
	rs->v[rs->n++] = (struct mrow){r->id, r->a_uid, r->b_uid, r->state, r->size,
	    r->msgid ? xstrdup(r->msgid) : r->has_sha ? sha_key(r->sha256) : NULL,
	    xstrdup(r->flags ? r->flags : "")};
	return 0;
}

static void rows_free(struct rows *rs)
{
	for (size_t i = 0; i < rs->n; i++) {
		free(rs->v[i].msgid);
		free(rs->v[i].flags);
	}
	free(rs->v);
	memset(rs, 0, sizeof *rs);
}

/* ------------------------------------------------------------------ */
/* the analysis of one pair */

struct flag_op {
	int64_t row;
	uint32_t a_uid, b_uid;
	char *fa, *fb, *merged; /* A now, B now, the result (new base) */
};

struct del_op {
	int64_t row;
	uint32_t uid;       /* on the side it is deleted from */
	uint32_t other_uid; /* where it was deleted already (0) */
	uint64_t size;
	char *msgid;
	char *base;         /* the row's flags */
	bool moved;         /* recognised as a move: not deleted */
};

struct new_op {
	uint32_t uid;
	uint64_t size;
	char *msgid;
	char *flags;
	bool moved;         /* arrived by a move: not copied */
};

struct vec {
	void *v;
	size_t n, cap, size;
};

static void *vec_push(struct vec *v, size_t size)
{
	v->size = size;
	if (v->n == v->cap) {
		v->cap = v->cap ? v->cap * 2 : 32;
		v->v = xrealloc(v->v, v->cap * size);
	}
	void *p = (char *)v->v + v->n * size;
	memset(p, 0, size);
	v->n++;
	return p;
}

#define VEC_AT(vec, type, i) (&((type *)(vec).v)[i])

struct mfolder {
	struct mirror_pair *mp;
	struct mirror_folder_report *fr;
	struct fpair fp;
	bool analysed, fast, failed;
	bool full_next;         /* the next pass must scan in full (a row left
	                           for pairing by content: see find_moves) */
	struct vec flags;       /* struct flag_op */
	struct vec del_a, del_b;/* struct del_op: delete on A / on B */
	struct vec new_a, new_b;/* struct new_op: new on A (copy to B) / on B */
	struct vec forget;      /* int64_t row ids */
	/* what each side was when analysed: the marks of the pass */
	uint32_t a_uv, a_next, a_exists, b_uv, b_next, b_exists;
	uint64_t a_hms, b_hms;
};

static void mfolder_release(struct mfolder *f)
{
	for (size_t i = 0; i < f->flags.n; i++) {
		struct flag_op *o = VEC_AT(f->flags, struct flag_op, i);
		free(o->fa);
		free(o->fb);
		free(o->merged);
	}
	struct vec *dels[2] = {&f->del_a, &f->del_b}, *news[2] = {&f->new_a, &f->new_b};
	for (int s = 0; s < 2; s++) {
		for (size_t i = 0; i < dels[s]->n; i++) {
			struct del_op *o = VEC_AT(*dels[s], struct del_op, i);
			free(o->msgid);
			free(o->base);
		}
		for (size_t i = 0; i < news[s]->n; i++) {
			struct new_op *o = VEC_AT(*news[s], struct new_op, i);
			free(o->msgid);
			free(o->flags);
		}
		free(dels[s]->v);
		free(news[s]->v);
	}
	free(f->flags.v);
	free(f->forget.v);
	fpair_release(&f->fp);
}

struct mirror {
	struct store *a, *b;
	struct state *st;
	const struct mirror_opts *o;
	struct mirror_report *rep;
	struct xfer *xab, *xba;
	struct store *failed;
	char **err_r;
};

static int commit(struct mirror *m)
{
	if (state_commit(m->st) < 0)
		return -1;
	copier_test_step();
	return 0;
}

static enum store_rc state_failed(struct mirror *m)
{
	if (!*m->err_r)
		*m->err_r = xasprintf("state DB: %s", state_error(m->st));
	return STORE_FATAL;
}

static enum store_rc side_failed(struct mirror *m, struct store *s, enum store_rc r)
{
	if (r == (enum store_rc)-1)
		return state_failed(m);
	m->failed = s;
	return r;
}

/* A's or B's state is stale: a lower UIDNEXT or HIGHESTMODSEQ than the last
 * pass saw, or another UIDVALIDITY. */
static bool stale(uint32_t rec_uv, uint32_t rec_next, uint64_t rec_hms,
    const struct box_status *now)
{
	if (!rec_uv)
		return false;
	return now->uidvalidity != rec_uv || now->uidnext < rec_next ||
	    (now->highestmodseq && rec_hms && now->highestmodseq < rec_hms);
}

static bool flags_differ(const char *x, const char *y)
{
	return strcmp(x ? x : "", y ? y : "");
}

/* The unclaimed entry of l with this identity (Message-ID or "sha:...")
 * and size. Identical copies pair one to one, never merged. */
static struct smsg *match_content(struct slist *l, uint64_t size, const char *key)
{
	if (!key)
		return NULL;
	for (size_t i = 0; i < l->n; i++) {
		struct smsg *e = &l->v[i];
		if (!e->claimed && e->size == size && e->msgid && !strcmp(e->msgid, key))
			return e;
	}
	return NULL;
}

static void push_new(struct vec *v, const struct smsg *e)
{
	struct new_op *n = vec_push(v, sizeof *n);
	n->uid = e->uid;
	n->size = e->size;
	n->msgid = e->msgid ? xstrdup(e->msgid) : NULL;
	n->flags = xstrdup(e->flags);
}

static void push_del(struct vec *v, const struct mrow *r, uint32_t uid)
{
	struct del_op *d = vec_push(v, sizeof *d);
	d->row = r->id;
	d->uid = uid;
	d->size = r->size;
	d->msgid = r->msgid ? xstrdup(r->msgid) : NULL;
	d->base = xstrdup(r->flags);
}

/*
 * Creates the pair's folder on one side. A name the server refuses is tried
 * once more under the planner's escape rule (as the copier does); the pair
 * then goes by the escaped name, and the state records it so, so that later
 * passes (and their plans) use it directly.
 */
static enum store_rc create_side(struct mirror *m, struct mfolder *f, int side)
{
	struct mirror_pair *mp = f->mp;
	struct store *s = side ? m->b : m->a;
	char **name = side ? &mp->b_name : &mp->a_name;
	char **path = side ? &mp->b_path : &mp->a_path;
	const char *esc = side ? mp->b_escaped : mp->a_escaped;
	const char *esc_path = side ? mp->b_escaped_path : mp->a_escaped_path;
	enum store_rc r = s->ops->create(s, *name, true);
	if (r == STORE_BOX_BAD && esc && strcmp(esc, *name)) {
		char *why = xstrdup(store_error(s));
		r = s->ops->create(s, esc, true);
		if (r == STORE_OK) {
			log_warn("%s: %s refused the folder name '%s' (%s); created it as '%s' "
			    "(escape rule)", side ? mp->a_path : mp->b_path, side ? "B" : "A", *path,
			    why, esc_path ? esc_path : esc);
			free(*name);
			*name = xstrdup(esc);
			free(*path);
			*path = xstrdup(esc_path ? esc_path : esc);
			char **rp = side ? &f->fr->b_path : &f->fr->a_path;
			free(*rp);
			*rp = xstrdup(*path);
		} else if (r == STORE_BOX_BAD) {
			char *again = xstrdup(store_error(s));
			store_fail(s, r, "%s; nor as '%s' (escape rule): %s", why,
			    esc_path ? esc_path : esc, again);
			free(again);
		}
		free(why);
	}
	if (r)
		return side_failed(m, s, r);
	if (side)
		f->fr->created_b = true;
	else
		f->fr->created_a = true;
	return STORE_OK;
}

/* ---- incremental scans ---- */

struct uidvec {
	uint32_t *v;
	size_t n, cap;
};

static void uidvec_push(struct uidvec *u, uint32_t uid)
{
	if (u->n == u->cap) {
		u->cap = u->cap ? u->cap * 2 : 64;
		u->v = xrealloc(u->v, u->cap * sizeof *u->v);
	}
	u->v[u->n++] = uid;
}

static int cmp_u32(const void *x, const void *y)
{
	uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
	return a < b ? -1 : a > b;
}

/* Sorts and drops repeats. */
static void uidvec_sort(struct uidvec *u)
{
	xqsort(u->v, u->n, sizeof *u->v, cmp_u32);
	size_t k = 0;
	for (size_t i = 0; i < u->n; i++)
		if (!k || u->v[k - 1] != u->v[i])
			u->v[k++] = u->v[i];
	u->n = k;
}

static bool uidvec_has(const struct uidvec *u, uint32_t uid)
{
	return u->n && xbsearch(&uid, u->v, u->n, sizeof *u->v, cmp_u32) != NULL;
}

/* VANISHED ranges, kept as they come (a few; they may be wide). */
struct ranges {
	uint32_t (*v)[2];
	size_t n, cap;
};

static int ranges_add(void *ctx, uint32_t first, uint32_t last)
{
	struct ranges *r = ctx;
	if (r->n == r->cap) {
		r->cap = r->cap ? r->cap * 2 : 16;
		r->v = xrealloc(r->v, r->cap * sizeof *r->v);
	}
	r->v[r->n][0] = first;
	r->v[r->n][1] = last;
	r->n++;
	return 0;
}

static int cmp_range(const void *x, const void *y)
{
	const uint32_t *a = x, *b = y;
	return a[0] < b[0] ? -1 : a[0] > b[0];
}

/* Sorts the ranges and merges those that overlap or touch. */
static void ranges_sort(struct ranges *r)
{
	xqsort(r->v, r->n, sizeof *r->v, cmp_range);
	size_t k = 0;
	for (size_t i = 0; i < r->n; i++) {
		if (k && (uint64_t)r->v[i][0] <= (uint64_t)r->v[k - 1][1] + 1) {
			if (r->v[i][1] > r->v[k - 1][1])
				r->v[k - 1][1] = r->v[i][1];
			continue;
		}
		r->v[k][0] = r->v[i][0];
		r->v[k][1] = r->v[i][1];
		k++;
	}
	r->n = k;
}

/* Is uid in one of the (sorted, merged) ranges? */
static bool ranges_have(const struct ranges *r, uint32_t uid)
{
	size_t lo = 0, hi = r->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (uid < r->v[mid][0])
			hi = mid;
		else if (uid > r->v[mid][1])
			lo = mid + 1;
		else
			return true;
	}
	return false;
}

/* scan_changes() reports changes and vanished UIDs to one context. */
struct qr_ctx {
	struct slist *changed;
	struct ranges *gone;
};

static int qr_changed(void *ctx, const struct msg_info *mi)
{
	return slist_add(((struct qr_ctx *)ctx)->changed, mi);
}

static int qr_vanished(void *ctx, uint32_t first, uint32_t last)
{
	return ranges_add(((struct qr_ctx *)ctx)->gone, first, last);
}

static int uid_only(void *ctx, const struct msg_info *mi)
{
	uidvec_push(ctx, mi->uid);
	return 0;
}

/*
 * What side `side` of the pair holds now, into `out` (sorted by UID, with
 * flags and sizes), for analyse().
 *
 * In full: every message's UID, flags and size. Incrementally (incr: the
 * last pass over the pair completed, nothing is pending or refused, the
 * side's UIDVALIDITY is the recorded one, and it has CONDSTORE): only the
 * messages changed since the recorded HIGHESTMODSEQ are fetched. Every
 * message that arrived since has a higher MODSEQ, so they are among them;
 * every other message the state knows is unchanged and keeps the flags of
 * its row (the base: after a complete pass a side's flags equal it, or we
 * stored them and their MODSEQ rose). What is gone:
 *  - with QRESYNC, the known UIDs VANISHED reports;
 *  - otherwise, if EXISTS equals the known messages not reported gone plus
 *    the new ones, nothing (after a complete pass every message below the
 *    recorded UIDNEXT is known to the state); else a listing of all UIDs
 *    says which (a deletion is never inferred from anything less), and a
 *    message there that neither the state nor the changes know means the
 *    side is scanned in full after all.
 * Known UIDs at or above the recorded UIDNEXT that the changes do not list
 * are gone: the changes list every message there.
 */
static enum store_rc scan_side(struct mirror *m, struct mfolder *f, int side, bool incr,
    const struct box_status *now, const struct rows *rows, struct slist *out)
{
	struct store *s = side ? m->b : m->a;
	const struct fpair *fp = &f->fp;
	uint32_t rec_next = side ? fp->b_uidnext : fp->a_uidnext;
	uint64_t rec_hms = side ? fp->b_hms : fp->a_hms;
	const char *path = side ? f->mp->b_path : f->mp->a_path, *sname = side ? "B" : "A";
	struct slist ch = {0};
	struct ranges gone = {0};
	struct uidvec known = {0}, listed = {0};
	enum store_rc r = STORE_OK;
	bool vanished = false;

	if (!incr || !rec_next || !rec_hms || !now->highestmodseq || !s->caps.condstore)
		goto full;
	if (s->caps.qresync && s->opts.qresync && s->ops->scan_changes) {
		struct qr_ctx q = {&ch, &gone};
		r = s->ops->scan_changes(s, rec_hms, SCAN_FLAGS | SCAN_SIZE, qr_changed, qr_vanished,
		    &q);
		if (r == STORE_BOX_BAD) {
			log_debug("%s: %s: no VANISHED (%s): counting instead", path, sname,
			    store_error(s));
			slist_free(&ch);
			gone.n = 0;
			r = STORE_OK;
		} else {
			vanished = r == STORE_OK;
		}
	}
	if (!r && !vanished)
		r = s->ops->scan(s, 1, rec_hms, SCAN_FLAGS | SCAN_SIZE, slist_add, &ch);
	if (r)
		goto out;
	xqsort(ch.v, ch.n, sizeof *ch.v, cmp_smsg);
	ranges_sort(&gone);

	for (size_t i = 0; i < rows->n; i++) {
		const struct mrow *rw = &rows->v[i];
		uint32_t uid = side ? rw->b_uid : rw->a_uid;
		if (rw->state == MSG_SYNCED && uid)
			uidvec_push(&known, uid);
	}
	uidvec_sort(&known);
	size_t n_new = 0, n_old = 0;
	for (size_t i = 0; i < ch.n; i++)
		n_new += ch.v[i].uid >= rec_next;
	for (size_t i = 0; i < known.n; i++)
		n_old += known.v[i] < rec_next && !ranges_have(&gone, known.v[i]);
	bool listing = (uint64_t)now->exists != (uint64_t)n_old + n_new;
	if (listing) {
		r = s->ops->scan(s, 1, 0, 0, uid_only, &listed);
		if (r)
			goto out;
		uidvec_sort(&listed);
		for (size_t i = 0; i < listed.n; i++)
			if (!uidvec_has(&known, listed.v[i]) && !slist_find(&ch, listed.v[i])) {
				log_debug("%s: %s holds UID %u that the state does not know: full scan",
				    path, sname, listed.v[i]);
				goto full;
			}
	}
	log_debug("%s: %s scanned incrementally (changed since MODSEQ %llu: %zu; deletions "
	    "from %s)", path, sname, (unsigned long long)rec_hms, ch.n,
	    listing ? "a listing of UIDs" : vanished ? "VANISHED" : "EXISTS");

	/* the view: known messages still there, then whatever changed */
	for (size_t i = 0; i < rows->n; i++) {
		const struct mrow *rw = &rows->v[i];
		uint32_t uid = side ? rw->b_uid : rw->a_uid;
		if (rw->state != MSG_SYNCED || !uid || slist_find(&ch, uid))
			continue;
		bool there = listing ? uidvec_has(&listed, uid)
		    : uid < rec_next && !ranges_have(&gone, uid);
		if (!there)
			continue;
		if (out->n == out->cap) {
			out->cap = out->cap ? out->cap * 2 : 256;
			out->v = xrealloc(out->v, out->cap * sizeof *out->v);
		}
		out->v[out->n++] = (struct smsg){uid, rw->size, xstrdup(rw->flags), NULL, false};
	}
	for (size_t i = 0; i < ch.n; i++) {
		if (out->n == out->cap) {
			out->cap = out->cap ? out->cap * 2 : 256;
			out->v = xrealloc(out->v, out->cap * sizeof *out->v);
		}
		out->v[out->n++] = ch.v[i];
	}
	free(ch.v);
	memset(&ch, 0, sizeof ch);
	xqsort(out->v, out->n, sizeof *out->v, cmp_smsg);
	/* one entry a UID (two rows never share one; be sure) */
	size_t k = 0;
	for (size_t i = 0; i < out->n; i++) {
		if (k && out->v[k - 1].uid == out->v[i].uid) {
			free(out->v[i].flags);
			free(out->v[i].msgid);
			continue;
		}
		out->v[k++] = out->v[i];
	}
	out->n = k;
	f->fr->incremental++;
	goto out;

full:
	slist_free(&ch);
	slist_free(out);
	r = s->ops->scan(s, 1, 0, SCAN_FLAGS | SCAN_SIZE, slist_add, out);
	if (!r)
		xqsort(out->v, out->n, sizeof *out->v, cmp_smsg);
out:
	slist_free(&ch);
	free(gone.v);
	free(known.v);
	free(listed.v);
	return r;
}

static enum store_rc analyse(struct mirror *m, struct mfolder *f)
{
	struct mirror_pair *mp = f->mp;
	struct mirror_folder_report *fr = f->fr;
	struct box_status sa, sb;
	struct slist la = {0}, lb = {0};
	struct rows rows = {0};
	enum store_rc r;
	memset(&sa, 0, sizeof sa);
	memset(&sb, 0, sizeof sb);

	/* Order matters: a creation may choose an escaped name, which the
	 * pair must have. */
	if (mp->a_missing && !fr->created_a && (r = create_side(m, f, 0)))
		return r;
	if (mp->b_missing && !fr->created_b && (r = create_side(m, f, 1)))
		return r;
	if (state_pair_get(m->st, mp->a_name, mp->b_name, &f->fp) < 0)
		return state_failed(m);
	struct fpair *fp = &f->fp;
	int64_t counts[3] = {0, 0, 0};
	if (state_pair_counts(m->st, fp->id, counts) < 0)
		return state_failed(m);
	r = m->a->ops->select(m->a, mp->a_name, false, &sa);
	if (r) {
		r = side_failed(m, m->a, r);
		goto out;
	}
	r = m->b->ops->select(m->b, mp->b_name, false, &sb);
	if (r) {
		r = side_failed(m, m->b, r);
		goto out;
	}

	/* Stale or lost state never deletes: forget that side's UIDs and pair
	 * again by content. */
	bool a_reset = stale(fp->a_uidvalidity, fp->a_uidnext, fp->a_hms, &sa);
	bool b_reset = stale(fp->b_uidvalidity, fp->b_uidnext, fp->b_hms, &sb);
	if (a_reset || b_reset) {
		if (state_begin(m->st) < 0)
			goto state_err;
		if (a_reset) {
			log_warn("%s: A's folder changed under the state (UIDVALIDITY, UIDNEXT or "
			    "HIGHESTMODSEQ): pairing again by content, nothing deleted", mp->a_path);
			if (state_pair_forget_uids(m->st, fp->id, 0) < 0)
				goto state_err_rb;
		}
		if (b_reset) {
			log_warn("%s: B's folder changed under the state (UIDVALIDITY, UIDNEXT or "
			    "HIGHESTMODSEQ): pairing again by content, nothing deleted", mp->b_path);
			if (state_pair_forget_uids(m->st, fp->id, 1) < 0)
				goto state_err_rb;
		}
		fp->last_done = 0;
		fp->a_uidvalidity = sa.uidvalidity;
		fp->b_uidvalidity = sb.uidvalidity;
		fp->a_uidnext = fp->b_uidnext = 0;
		fp->a_hms = fp->b_hms = 0;
		if (state_pair_save(m->st, fp) < 0)
			goto state_err_rb;
		if (commit(m) < 0)
			goto state_err;
	}

	/* copies an interrupted pass left pending, both ways */
	xfer_target(m->xab, &sb);
	r = xfer_resolve(m->xab, fp, m->err_r);
	if (!r) {
		xfer_target(m->xba, &sa);
		r = xfer_resolve(m->xba, fp, m->err_r);
	}
	if (r) {
		struct store *s = xfer_failed(m->xab) ? xfer_failed(m->xab) : xfer_failed(m->xba);
		r = r == STORE_FATAL ? r : side_failed(m, s ? s : m->b, r);
		goto out;
	}

	/* The marks this pass will record are what was seen now, before our
	 * own changes: a change another client makes during the pass then
	 * still shows at the next one (which scans once more, finds nothing
	 * new, and records marks the fast path can use). */
	f->a_uv = sa.uidvalidity;
	f->a_next = sa.uidnext;
	f->a_hms = sa.highestmodseq;
	f->a_exists = sa.exists;
	f->b_uv = sb.uidvalidity;
	f->b_next = sb.uidnext;
	f->b_hms = sb.highestmodseq;
	f->b_exists = sb.exists;

	/* the fast path */
	if (fp->last_done && sa.uidnext == fp->a_uidnext && sb.uidnext == fp->b_uidnext &&
	    sa.exists == fp->a_exists && sb.exists == fp->b_exists && sa.highestmodseq &&
	    sb.highestmodseq && sa.highestmodseq == fp->a_hms && sb.highestmodseq == fp->b_hms) {
		f->fast = true;
		fr->skipped_fast = true;
		f->analysed = true;
		goto out;
	}

	/* Incremental scans need a last pass that completed (a pass marks
	 * the pair unfinished before it changes anything, below), with
	 * nothing pending or refused (their messages are not among the
	 * changes). Stale state has cleared last_done above. */
	bool incr = fp->last_done && !counts[MSG_PENDING] && !counts[MSG_REFUSED];
	if (state_msgs_each(m->st, fp->id, -1, rows_add, &rows) < 0)
		goto state_err;
	r = scan_side(m, f, 0, incr, &sa, &rows, &la);
	if (r) {
		r = side_failed(m, m->a, r);
		goto out;
	}
	r = scan_side(m, f, 1, incr, &sb, &rows, &lb);
	if (r) {
		r = side_failed(m, m->b, r);
		goto out;
	}

	/* rows claim what they know (a refused copy claims nothing: its
	 * message is new again and the copy is retried) */
	for (size_t i = 0; i < rows.n; i++) {
		struct mrow *rw = &rows.v[i];
		if (rw->state != MSG_SYNCED)
			continue;
		struct smsg *ea = slist_find(&la, rw->a_uid), *eb = slist_find(&lb, rw->b_uid);
		if (ea)
			ea->claimed = true;
		if (eb)
			eb->claimed = true;
	}
	/* what nobody claims needs its Message-ID for pairing and moves */
	r = load_msgids(m->a, &la);
	if (r) {
		r = side_failed(m, m->a, r);
		goto out;
	}
	r = load_msgids(m->b, &lb);
	if (r) {
		r = side_failed(m, m->b, r);
		goto out;
	}

	if (state_begin(m->st) < 0)
		goto state_err;
	/* Unfinished until apply() records the marks of this pass: should it
	 * die half way, the next one scans in full. */
	if (fp->last_done) {
		fp->last_done = 0;
		if (state_pair_save(m->st, fp) < 0)
			goto state_err_rb;
	}
	for (size_t i = 0; i < rows.n; i++) {
		struct mrow *rw = &rows.v[i];
		if (rw->state == MSG_REFUSED) {
			/* a refused copy: retried as a new message below */
			continue;
		}
		struct smsg *ea = slist_find(&la, rw->a_uid), *eb = slist_find(&lb, rw->b_uid);
		/* a side whose UIDs were forgotten: find the message again */
		if (!rw->a_uid && eb && (ea = match_content(&la, rw->size, rw->msgid))) {
			ea->claimed = true;
			rw->a_uid = ea->uid;
			if (state_msg_set_a_uid(m->st, rw->id, ea->uid) < 0)
				goto state_err_rb;
			fr->paired++;
		}
		if (!rw->b_uid && ea && (eb = match_content(&lb, rw->size, rw->msgid))) {
			eb->claimed = true;
			rw->b_uid = eb->uid;
			if (state_msg_set_b_uid(m->st, rw->id, eb->uid) < 0)
				goto state_err_rb;
			fr->paired++;
		}
		if (!rw->a_uid || !rw->b_uid) {
			/* still half known: the known half is new to the other side;
			 * the row goes (the copy makes a new one) */
			if (ea)
				ea->claimed = false;
			if (eb)
				eb->claimed = false;
			*(int64_t *)vec_push(&f->forget, sizeof(int64_t)) = rw->id;
			continue;
		}
		bool a_ch = ea && flags_differ(ea->flags, rw->flags);
		bool b_ch = eb && flags_differ(eb->flags, rw->flags);
		enum mirror_action act = mirror_decide(true, ea != NULL, eb != NULL, a_ch, b_ch);
		switch (act) {
		case MA_MERGE_FLAGS:
			if (a_ch || b_ch) {
				struct flagset base = FLAGSET_INIT, fa = FLAGSET_INIT, fb = FLAGSET_INIT,
				    out = FLAGSET_INIT;
				flagset_parse(&base, rw->flags);
				flagset_parse(&fa, ea->flags);
				flagset_parse(&fb, eb->flags);
				flags_merge3(&out, &base, &fa, &fb);
				struct flag_op *op = vec_push(&f->flags, sizeof *op);
				op->row = rw->id;
				op->a_uid = rw->a_uid;
				op->b_uid = rw->b_uid;
				op->fa = xstrdup(ea->flags);
				op->fb = xstrdup(eb->flags);
				op->merged = flagset_format(&out);
				flagset_clear(&base);
				flagset_clear(&fa);
				flagset_clear(&fb);
				flagset_clear(&out);
			}
			break;
		case MA_DELETE_A:
			push_del(&f->del_a, rw, rw->a_uid);
			break;
		case MA_DELETE_B:
			push_del(&f->del_b, rw, rw->b_uid);
			break;
		case MA_RECOPY_AB:
		case MA_RECOPY_BA:
			/* deleted on one side, changed on the other: the change wins */
			log_notice("%s: message %s (%llu bytes) deleted on %s but changed on %s: "
			    "kept, copied back", mp->a_path, rw->msgid ? rw->msgid : "without Message-ID",
			    (unsigned long long)rw->size, act == MA_RECOPY_AB ? "B" : "A",
			    act == MA_RECOPY_AB ? "A" : "B");
			fr->kept++;
			if (ea)
				ea->claimed = false;
			if (eb)
				eb->claimed = false;
			*(int64_t *)vec_push(&f->forget, sizeof(int64_t)) = rw->id;
			break;
		case MA_FORGET:
			*(int64_t *)vec_push(&f->forget, sizeof(int64_t)) = rw->id;
			break;
		default:
			break;
		}
	}
	if (commit(m) < 0)
		goto state_err;

	/* Unknown on both sides with the same content: the same message
	 * (a first run, a lost state, a move found half done). Pair, merge
	 * flags as a union. */
	if (state_begin(m->st) < 0)
		goto state_err;
	for (size_t i = 0; i < la.n; i++) {
		struct smsg *ea = &la.v[i];
		if (ea->claimed)
			continue;
		struct smsg *eb = match_content(&lb, ea->size, ea->msgid);
		if (!eb)
			continue;
		ea->claimed = eb->claimed = true;
		struct flagset fa = FLAGSET_INIT, fb = FLAGSET_INIT, out = FLAGSET_INIT,
		    only_a = FLAGSET_INIT, common = FLAGSET_INIT;
		flagset_parse(&fa, ea->flags);
		flagset_parse(&fb, eb->flags);
		flags_merge3(&out, NULL, &fa, &fb);
		char *merged = flagset_format(&out);
		/* common = A minus what only A has */
		flagset_minus(&only_a, &fa, &fb);
		flagset_minus(&common, &fa, &only_a);
		char *base = flagset_format(&common);
		flagset_clear(&fa);
		flagset_clear(&fb);
		flagset_clear(&out);
		flagset_clear(&only_a);
		flagset_clear(&common);
		struct msg_row row;
		memset(&row, 0, sizeof row);
		row.pair = fp->id;
		row.a_uid = ea->uid;
		row.b_uid = eb->uid;
		row.state = MSG_SYNCED;
		row.size = ea->size;
		if (!strncmp(ea->msgid, "sha:", 4)) {
			for (int k = 0; k < 32; k++) {
				unsigned v;
				sscanf(ea->msgid + 4 + 2 * k, "%2x", &v);
				row.sha256[k] = (uint8_t)v;
			}
			row.has_sha = true;
		} else {
			row.msgid = ea->msgid;
		}
		/* The base is what both have in common, not the union: if the
		 * pass dies before the union is applied, the next one sees the
		 * missing flags as added on one side, and adds them again,
		 * rather than as removed on the other. Applying the flags
		 * records the union as the base. */
		row.flags = base;
		int ir = state_msg_insert(m->st, &row);
		free(base);
		if (ir < 0) {
			free(merged);
			goto state_err_rb;
		}
		fr->paired++;
		if (flags_differ(ea->flags, merged) || flags_differ(eb->flags, merged)) {
			struct flag_op *op = vec_push(&f->flags, sizeof *op);
			op->row = row.id;
			op->a_uid = ea->uid;
			op->b_uid = eb->uid;
			op->fa = xstrdup(ea->flags);
			op->fb = xstrdup(eb->flags);
			op->merged = merged;
		} else {
			free(merged);
		}
	}
	if (commit(m) < 0)
		goto state_err;

	for (size_t i = 0; i < la.n; i++)
		if (!la.v[i].claimed)
			push_new(&f->new_a, &la.v[i]);
	for (size_t i = 0; i < lb.n; i++)
		if (!lb.v[i].claimed)
			push_new(&f->new_b, &lb.v[i]);
	f->analysed = true;
	r = STORE_OK;
	goto out;

state_err_rb:
	state_rollback(m->st);
state_err:
	r = state_failed(m);
out:
	box_status_clear(&sa);
	box_status_clear(&sb);
	slist_free(&la);
	slist_free(&lb);
	rows_free(&rows);
	return r;
}

/* ------------------------------------------------------------------ */
/* moves */

/*
 * A message deleted from folder X on one side and new in folder Y on the
 * same side was moved: move it on the other side too, so it keeps its
 * bytes, date and flags there and nothing is uploaded again.
 */
static enum store_rc find_moves(struct mirror *m, struct mfolder *fs, size_t nf, int side)
{
	/* side 0: moved on A (deleted on A from X = del_b candidates, new on
	 * A in Y = new_a): move on B. side 1: the other way round. Moves from
	 * X to Y go as one UID MOVE. */
	struct store *other = side ? m->a : m->b;
	for (size_t x = 0; x < nf; x++) {
		struct vec *dels = side ? &fs[x].del_a : &fs[x].del_b;
		if (!dels->n)
			continue;
		for (size_t y = 0; y < nf; y++) {
			if (y == x || !fs[y].analysed || fs[y].fast)
				continue;
			struct vec *news = side ? &fs[y].new_b : &fs[y].new_a;
			struct del_op **ds = xcalloc(dels->n, sizeof *ds);
			struct new_op **ns = xcalloc(dels->n, sizeof *ns);
			uint32_t *uids = xcalloc(dels->n, sizeof *uids);
			uint32_t *nu = xcalloc(dels->n, sizeof *nu);
			size_t k = 0;
			for (size_t i = 0; i < dels->n; i++) {
				struct del_op *d = VEC_AT(*dels, struct del_op, i);
				if (!d->msgid || d->moved)
					continue;
				for (size_t j = 0; j < news->n; j++) {
					struct new_op *n = VEC_AT(*news, struct new_op, j);
					if (n->moved || n->size != d->size || !n->msgid ||
					    strcmp(n->msgid, d->msgid))
						continue;
					n->moved = true; /* claimed for this move */
					ds[k] = d;
					ns[k] = n;
					uids[k] = d->uid;
					k++;
					break;
				}
			}
			enum store_rc r = STORE_OK;
			if (k) {
				const char *from = side ? fs[x].mp->a_name : fs[x].mp->b_name;
				const char *to = side ? fs[y].mp->a_name : fs[y].mp->b_name;
				struct box_status bs;
				memset(&bs, 0, sizeof bs);
				r = other->ops->select(other, from, false, &bs);
				box_status_clear(&bs);
				if (!r)
					r = other->ops->move(other, uids, k, to, nu);
			}
			if (k && (r == STORE_BOX_BAD || r == STORE_MSG_BAD)) {
				log_warn("%s: cannot move messages on %s (%s): copying instead",
				    fs[x].mp->a_path, side ? "A" : "B", store_error(other));
				for (size_t i = 0; i < k; i++)
					ns[i]->moved = false;
				k = 0;
				r = STORE_OK;
			}
			if (r) {
				free(ds);
				free(ns);
				free(uids);
				free(nu);
				return side_failed(m, other, r);
			}
			/* The rows follow the messages. Without a new UID (no
			 * COPYUID) a row is left to pair by content. */
			if (k && state_begin(m->st) < 0)
				r = state_failed(m);
			for (size_t i = 0; i < k && !r; i++) {
				struct del_op *d = ds[i];
				struct new_op *n = ns[i];
				int sr;
				if (nu[i]) {
					sr = state_msg_move(m->st, d->row, fs[y].fp.id,
					    side ? nu[i] : n->uid, side ? n->uid : nu[i]);
				} else {
					/* the message it moved is old on one side and
					 * unknown: only a full scan finds it */
					sr = state_msg_delete(m->st, d->row);
					fs[y].full_next = true;
				}
				if (sr < 0) {
					state_rollback(m->st);
					r = state_failed(m);
					break;
				}
				d->moved = true;
				if (side)
					fs[y].fr->moved_a++;
				else
					fs[y].fr->moved_b++;
				/* flags changed with the move: push them */
				if (nu[i] && flags_differ(n->flags, d->base)) {
					struct flag_op *op = vec_push(&fs[y].flags, sizeof *op);
					op->row = d->row;
					op->a_uid = side ? nu[i] : n->uid;
					op->b_uid = side ? n->uid : nu[i];
					op->fa = xstrdup(side ? d->base : n->flags);
					op->fb = xstrdup(side ? n->flags : d->base);
					op->merged = xstrdup(n->flags);
				}
			}
			if (k && !r && commit(m) < 0)
				r = state_failed(m);
			free(ds);
			free(ns);
			free(uids);
			free(nu);
			if (r)
				return r;
		}
	}
	return STORE_OK;
}

/* ------------------------------------------------------------------ */
/* applying */

/*
 * The merged flags of a folder's pairs, set on each side where they
 * differ: one pipelined run of UID STOREs a side (store_set_flags_many),
 * then the new bases in one transaction. A pair whose change a side
 * refused (a keyword its folder does not keep, say) keeps its old base:
 * with the merged flags as the base, the refusing side's flags would read
 * as a removal on the next pass and spread to the other side. It is tried
 * again each pass (the folder is scanned in full until then), and
 * reported. STORE_FATAL: the state failed.
 */
static enum store_rc apply_flags(struct mirror *m, struct mfolder *f,
    struct mirror_folder_report *fr)
{
	size_t n = f->flags.n;
	if (!n)
		return STORE_OK;
	struct store *side[2] = {m->a, m->b};
	struct store_flag_op *ops[2] = {xcalloc(n, sizeof *ops[0]), xcalloc(n, sizeof *ops[1])};
	size_t nops[2] = {0, 0};
	long *at[2] = {xcalloc(n, sizeof *at[0]), xcalloc(n, sizeof *at[1])};
	uint32_t *uids = xcalloc(2 * n, sizeof *uids);
	struct flagset *fs = xcalloc(4 * n, sizeof *fs);
	enum store_rc r = STORE_OK;

	for (size_t i = 0; i < n; i++) {
		struct flag_op *op = VEC_AT(f->flags, struct flag_op, i);
		for (int k = 0; k < 2; k++) {
			const char *have = k ? op->fb : op->fa;
			at[k][i] = -1;
			if (!flags_differ(have, op->merged))
				continue;
			struct flagset h = FLAGSET_INIT, w = FLAGSET_INIT;
			struct flagset *add = &fs[4 * i + 2 * k], *del = add + 1;
			flagset_parse(&h, have);
			flagset_parse(&w, op->merged);
			flagset_minus(add, &w, &h);
			flagset_minus(del, &h, &w);
			flagset_clear(&h);
			flagset_clear(&w);
			uids[2 * i + k] = k ? op->b_uid : op->a_uid;
			at[k][i] = (long)nops[k];
			ops[k][nops[k]++] = (struct store_flag_op){&uids[2 * i + k], 1, add, del,
			    STORE_CONN_BAD};
		}
	}
	for (int k = 0; k < 2 && r == STORE_OK; k++) {
		if (!nops[k])
			continue;
		r = store_set_flags_many(side[k], ops[k], nops[k]);
		if (r)
			r = side_failed(m, side[k], r);
	}
	if (r == STORE_OK) {
		size_t refused[2] = {0, 0};
		if (state_begin(m->st) < 0) {
			r = state_failed(m);
			goto out;
		}
		for (size_t i = 0; i < n; i++) {
			struct flag_op *op = VEC_AT(f->flags, struct flag_op, i);
			bool ok = true;
			for (int k = 0; k < 2; k++) {
				if (at[k][i] < 0)
					continue;
				if (ops[k][at[k][i]].rc == STORE_OK) {
					if (k)
						fr->flags_b++;
					else
						fr->flags_a++;
				} else {
					refused[k]++;
					ok = false;
				}
			}
			if (ok && state_msg_set_flags(m->st, op->row, op->merged) < 0) {
				state_rollback(m->st);
				r = state_failed(m);
				goto out;
			}
		}
		if (commit(m) < 0) {
			r = state_failed(m);
			goto out;
		}
		/* the marks would hide the pair from the next pass */
		if (refused[0] || refused[1])
			f->full_next = true;
		for (int k = 0; k < 2; k++)
			if (refused[k])
				log_warn("%s: flags of %zu message%s not set on %s (tried again next "
				    "time): %s", k ? fr->b_path : fr->a_path, refused[k],
				    refused[k] == 1 ? "" : "s", side[k]->label, store_error(side[k]));
	}
out:
	for (size_t i = 0; i < 4 * n; i++)
		flagset_clear(&fs[i]);
	free(fs);
	free(uids);
	for (int k = 0; k < 2; k++) {
		free(ops[k]);
		free(at[k]);
	}
	return r;
}

static bool guard_holds(const struct mirror *m, size_t deletions, uint32_t folder_size)
{
	return mirror_guard_holds(deletions, folder_size, m->o->max_delete,
	    m->o->max_delete_percent, m->o->force);
}

static enum store_rc apply_deletions(struct mirror *m, struct mfolder *f, struct store *s,
    struct vec *dels, uint32_t folder_size, uint64_t *deleted, uint64_t *held,
    const char *side)
{
	size_t n = 0;
	for (size_t i = 0; i < dels->n; i++)
		n += !VEC_AT(*dels, struct del_op, i)->moved;
	if (!n)
		return STORE_OK;
	if (guard_holds(m, n, folder_size)) {
		*held = n;
		log_warn("%s: %zu of %u messages would be deleted on %s: held back (more than "
		    "%u%% and %u messages); rerun with --force if that is what you want",
		    f->mp->a_path, n, folder_size, side, m->o->max_delete_percent, m->o->max_delete);
		return STORE_OK;
	}
	uint32_t *uids = xmalloc(n * sizeof *uids);
	size_t k = 0;
	for (size_t i = 0; i < dels->n; i++) {
		struct del_op *d = VEC_AT(*dels, struct del_op, i);
		if (!d->moved)
			uids[k++] = d->uid;
	}
	enum store_rc r = s->ops->expunge(s, uids, k);
	free(uids);
	if (r)
		return side_failed(m, s, r);
	if (state_begin(m->st) < 0)
		return state_failed(m);
	for (size_t i = 0; i < dels->n; i++) {
		struct del_op *d = VEC_AT(*dels, struct del_op, i);
		if (!d->moved && state_msg_delete(m->st, d->row) < 0) {
			state_rollback(m->st);
			return state_failed(m);
		}
	}
	if (commit(m) < 0)
		return state_failed(m);
	*deleted += k;
	return STORE_OK;
}

static enum store_rc copy_new(struct mirror *m, struct mfolder *f, int dir, struct vec *news,
    const struct box_status *target, uint64_t *copied)
{
	struct xfer *x = dir ? m->xba : m->xab;
	size_t n = 0;
	for (size_t i = 0; i < news->n; i++)
		n += !VEC_AT(*news, struct new_op, i)->moved;
	if (!n)
		return STORE_OK;
	uint32_t *uids = xmalloc(n * sizeof *uids);
	uint64_t *sizes = xmalloc(n * sizeof *sizes);
	size_t k = 0;
	for (size_t i = 0; i < news->n; i++) {
		struct new_op *o = VEC_AT(*news, struct new_op, i);
		if (!o->moved) {
			uids[k] = o->uid;
			sizes[k] = o->size;
			k++;
		}
	}
	struct plan_entry e;
	memset(&e, 0, sizeof e);
	e.src_name = dir ? f->mp->b_name : f->mp->a_name;
	e.src_path = dir ? f->mp->b_path : f->mp->a_path;
	e.dst_name = dir ? f->mp->a_name : f->mp->b_name;
	e.dst_path = dir ? f->mp->a_path : f->mp->b_path;
	struct folder_report cr;
	memset(&cr, 0, sizeof cr);
	xfer_target(x, target);
	xfer_clear_failed(x);
	enum store_rc r = xfer_copy(x, &f->fp, &e, uids, sizes, k, &cr, m->err_r);
	*copied += cr.copied;
	m->rep->copies.refused += cr.refused;
	free(uids);
	free(sizes);
	free(cr.dropped_keywords);
	if (r && r != STORE_FATAL)
		return side_failed(m, xfer_failed(x) ? xfer_failed(x) : (dir ? m->a : m->b), r);
	return r;
}

static enum store_rc apply(struct mirror *m, struct mfolder *f)
{
	const struct mirror_pair *mp = f->mp;
	struct mirror_folder_report *fr = f->fr;
	struct box_status sa, sb;
	memset(&sa, 0, sizeof sa);
	memset(&sb, 0, sizeof sb);
	enum store_rc r = m->a->ops->select(m->a, mp->a_name, false, &sa);
	if (r) {
		r = side_failed(m, m->a, r);
		goto out;
	}
	r = m->b->ops->select(m->b, mp->b_name, false, &sb);
	if (r) {
		r = side_failed(m, m->b, r);
		goto out;
	}

	/* 1. flags: on the servers first, then the new base (redone from the
	 * state after a crash, a change merges to itself) */
	r = apply_flags(m, f, fr);
	if (r == STORE_FATAL)
		goto state_err;
	if (r)
		goto out;

	/* 2. rows that go: their messages are copied anew where needed */
	if (f->forget.n) {
		if (state_begin(m->st) < 0)
			goto state_err;
		for (size_t i = 0; i < f->forget.n; i++)
			if (state_msg_delete(m->st, *VEC_AT(f->forget, int64_t, i)) < 0) {
				state_rollback(m->st);
				goto state_err;
			}
		if (commit(m) < 0)
			goto state_err;
	}

	/* 3. copies both ways */
	r = copy_new(m, f, 0, &f->new_a, &sb, &fr->copied_ab);
	if (!r)
		r = copy_new(m, f, 1, &f->new_b, &sa, &fr->copied_ba);
	if (r || copier_stop)
		goto out;

	/* 4. deletions, unless the guard holds them */
	r = apply_deletions(m, f, m->b, &f->del_b, sb.exists, &fr->deleted_b, &fr->held_b, "B");
	if (!r)
		r = apply_deletions(m, f, m->a, &f->del_a, sa.exists, &fr->deleted_a, &fr->held_a, "A");
	if (r)
		goto out;

	/* 5. the marks of a complete pass: the sides as analysed */
	struct fpair *fp = &f->fp;
	fp->a_uidvalidity = f->a_uv;
	fp->b_uidvalidity = f->b_uv;
	fp->a_uidnext = f->a_next;
	fp->b_uidnext = f->b_next;
	fp->a_hms = f->a_hms;
	fp->b_hms = f->b_hms;
	fp->a_exists = f->a_exists;
	fp->b_exists = f->b_exists;
	/* a held deletion keeps the folder from the fast path */
	fp->last_done = fr->held_a || fr->held_b || f->full_next ? 0 : (int64_t)time(NULL);
	if (state_pair_save(m->st, fp) < 0)
		goto state_err;
	copier_test_step();
	r = STORE_OK;
	goto out;
state_err:
	r = state_failed(m);
out:
	box_status_clear(&sa);
	box_status_clear(&sb);
	return r;
}

/* ------------------------------------------------------------------ */

/* ------------------------------------------------------------------ */
/* folders gone from one side: renamed there, or removed */

struct keyset {
	char **v;
	size_t n, cap;
};

static int keys_of_rows(void *ctx, const struct msg_row *r)
{
	struct keyset *k = ctx;
	if (r->state != MSG_SYNCED)
		return 0;
	char *key = r->msgid ? xstrdup(r->msgid) : r->has_sha ? sha_key(r->sha256) : NULL;
	if (!key)
		return 0;
	if (k->n == k->cap) {
		k->cap = k->cap ? k->cap * 2 : 64;
		k->v = xrealloc(k->v, k->cap * sizeof *k->v);
	}
	k->v[k->n++] = key;
	return 0;
}

static int cmp_str(const void *x, const void *y)
{
	return strcmp(*(char *const *)x, *(char *const *)y);
}

static void keyset_free(struct keyset *k)
{
	for (size_t i = 0; i < k->n; i++)
		free(k->v[i]);
	free(k->v);
	memset(k, 0, sizeof *k);
}

/*
 * Is folder `name` on store s (new there) the folder the pair `gone` knew,
 * renamed? Yes when at least 80% of the messages the state knows in the
 * pair are in it and at least 80% of its messages are among them (by
 * Message-ID or content hash), and there is at least one. Returns 1, 0, or
 * a store failure as a negative number.
 */
static int is_renamed(struct mirror *m, struct store *s, const char *name,
    const struct mirror_pair *gone, int *err)
{
	struct fpair fp;
	*err = 0;
	if (state_pair_find(m->st, gone->a_name, gone->b_name, &fp) <= 0)
		return 0;
	struct keyset known = {0};
	int f = state_msgs_each(m->st, fp.id, MSG_SYNCED, keys_of_rows, &known);
	fpair_release(&fp);
	if (f < 0 || !known.n) {
		keyset_free(&known);
		return 0;
	}
	xqsort(known.v, known.n, sizeof *known.v, cmp_str);
	struct box_status bs;
	memset(&bs, 0, sizeof bs);
	struct slist l = {0};
	enum store_rc r = s->ops->select(s, name, true, &bs);
	if (!r)
		r = s->ops->scan(s, 1, 0, SCAN_SIZE | SCAN_MSGID, slist_add, &l);
	box_status_clear(&bs);
	int yes = 0;
	if (r) {
		m->failed = s;
		*err = (int)r;
	} else {
		size_t hits = 0, with_id = 0;
		for (size_t i = 0; i < l.n; i++) {
			if (!l.v[i].msgid)
				continue;
			with_id++;
			const char *k = l.v[i].msgid;
			if (xbsearch(&k, known.v, known.n, sizeof *known.v, cmp_str))
				hits++;
		}
		yes = hits > 0 && hits * 10 >= known.n * 8 && hits * 10 >= with_id * 8;
	}
	slist_free(&l);
	keyset_free(&known);
	return yes;
}

/*
 * A folder the state knows on both sides is gone from one: if a new
 * folder on that side holds its messages, it was renamed, and the other
 * side's folder is renamed the same way (the state's pair follows).
 * Otherwise it was removed: the other side's folder is left alone and
 * reported — a folder's worth of deletions is never guessed.
 */
/*
 * The fast path for every pair at once: one STATUS a side (pipelined where
 * the server allows, store_status_many) tells which pairs are unchanged on
 * both sides since their last complete pass: UIDVALIDITY, UIDNEXT, EXISTS
 * and HIGHESTMODSEQ as recorded. Those cost nothing more this pass; the
 * others are selected and analysed. Without CONDSTORE nothing is fast (a
 * flag change leaves no trace in STATUS).
 */
static enum store_rc fast_pairs(struct mirror *m, struct mfolder *fs, size_t n)
{
	size_t *idx = xcalloc(n ? n : 1, sizeof *idx);
	const char **an = xcalloc(n ? n : 1, sizeof *an), **bn = xcalloc(n ? n : 1, sizeof *bn);
	struct fpair *fps = xcalloc(n ? n : 1, sizeof *fps);
	size_t k = 0;
	enum store_rc r = STORE_OK;
	for (size_t i = 0; i < n && m->a->caps.condstore && m->b->caps.condstore; i++) {
		const struct mirror_pair *mp = fs[i].mp;
		if (mp->skip || mp->a_missing || mp->b_missing)
			continue;
		int fr = state_pair_find(m->st, mp->a_name, mp->b_name, &fps[k]);
		if (fr < 0) {
			r = state_failed(m);
			goto out;
		}
		if (!fr || !fps[k].last_done || !fps[k].a_hms || !fps[k].b_hms) {
			fpair_release(&fps[k]);
			continue;
		}
		idx[k] = i;
		an[k] = mp->a_name;
		bn[k] = mp->b_name;
		k++;
	}
	if (!k)
		goto out;
	struct box_status *sa = xcalloc(k, sizeof *sa), *sb = xcalloc(k, sizeof *sb);
	enum store_rc *ra = xcalloc(k, sizeof *ra), *rb = xcalloc(k, sizeof *rb);
	r = store_status_many(m->a, an, k, sa, ra);
	if (r)
		r = side_failed(m, m->a, r);
	else if ((r = store_status_many(m->b, bn, k, sb, rb)))
		r = side_failed(m, m->b, r);
	for (size_t j = 0; j < k && !r; j++) {
		const struct fpair *fp = &fps[j];
		if (ra[j] || rb[j])
			continue; /* analyse() will tell what is wrong */
		if (sa[j].uidvalidity == fp->a_uidvalidity && sa[j].uidnext == fp->a_uidnext &&
		    sa[j].exists == fp->a_exists && sa[j].highestmodseq == fp->a_hms &&
		    sb[j].uidvalidity == fp->b_uidvalidity && sb[j].uidnext == fp->b_uidnext &&
		    sb[j].exists == fp->b_exists && sb[j].highestmodseq == fp->b_hms) {
			struct mfolder *f = &fs[idx[j]];
			f->fast = f->analysed = true;
			f->fr->skipped_fast = true;
		}
	}
	for (size_t j = 0; j < k; j++) {
		box_status_clear(&sa[j]);
		box_status_clear(&sb[j]);
	}
	free(sa);
	free(sb);
	free(ra);
	free(rb);
out:
	for (size_t j = 0; j < k; j++)
		fpair_release(&fps[j]);
	free(fps);
	free(idx);
	free(an);
	free(bn);
	return r;
}

static enum store_rc gone_folders(struct mirror *m, struct mirror_pairs *pairs,
    struct mirror_report *rep)
{
	for (size_t i = 0; i < pairs->n; i++) {
		struct mirror_pair *g = &pairs->v[i];
		if (!g->a_gone && !g->b_gone)
			continue;
		int side = g->a_gone ? 0 : 1;  /* the side it is gone from */
		struct store *here = side ? m->b : m->a, *there = side ? m->a : m->b;
		struct mirror_pair *to = NULL;
		for (size_t j = 0; j < pairs->n && !to; j++) {
			struct mirror_pair *q = &pairs->v[j];
			/* new on the same side, never paired */
			if (q->known || q->skip || !(side ? q->a_missing : q->b_missing))
				continue;
			int err;
			int yes = is_renamed(m, here, side ? q->b_name : q->a_name, g, &err);
			if (err)
				return (enum store_rc)err;
			if (yes)
				to = q;
		}
		g->skip = true;
		struct mirror_folder_report *fr = &rep->folders[i];
		if (!to) {
			log_warn("%s: folder gone on %s; its messages on %s are left alone (remove "
			    "the folder there too, or bring it back)", side ? g->b_path : g->a_path,
			    side ? "B" : "A", side ? "A" : "B");
			fr->vanished = true;
			continue;
		}
		const char *from_name = side ? g->a_name : g->b_name;
		const char *to_name = side ? to->a_name : to->b_name;
		enum store_rc r = there->ops->rename(there, from_name, to_name);
		if (r) {
			m->failed = there;
			return r;
		}
		struct fpair fp;
		if (state_pair_find(m->st, g->a_name, g->b_name, &fp) > 0) {
			free(fp.a_name);
			free(fp.b_name);
			fp.a_name = xstrdup(to->a_name);
			fp.b_name = xstrdup(to->b_name);
			fp.last_done = 0; /* scanned in full under its new name */
			int sr = state_pair_save(m->st, &fp);
			fpair_release(&fp);
			if (sr < 0)
				return state_failed(m);
			copier_test_step();
		}
		log_notice("%s renamed to %s on %s: renamed on %s too", side ? g->b_path : g->a_path,
		    side ? to->b_path : to->a_path, side ? "B" : "A", side ? "A" : "B");
		to->a_missing = to->b_missing = false;
		to->known = true;
		fr->renamed = true;
	}
	return STORE_OK;
}

enum store_rc mirror_run(struct store *a, struct store *b, struct state *st,
    struct mirror_pairs *pairs, const struct mirror_opts *o, struct mirror_report *rep,
    char **err_r)
{
	struct mirror m;
	memset(&m, 0, sizeof m);
	memset(rep, 0, sizeof *rep);
	*err_r = NULL;
	m.a = a;
	m.b = b;
	m.st = st;
	m.o = o;
	m.rep = rep;
	m.err_r = err_r;
	rep->started_ms = now_ms();
	/* deletions from VANISHED where the servers offer QRESYNC (enabled
	 * at a session's first SELECT) */
	a->opts.qresync = b->opts.qresync = true;
	m.xab = xfer_new(a, b, st, 0, &o->copy, &rep->copies, NULL);
	m.xba = xfer_new(b, a, st, 1, &o->copy, &rep->copies, NULL);
	if (!m.xab || !m.xba) {
		*err_r = xstrdup("cannot create a spool file");
		xfer_free(&m.xab);
		xfer_free(&m.xba);
		return STORE_FATAL;
	}
	size_t n = pairs->n;
	rep->folders = xcalloc(n ? n : 1, sizeof *rep->folders);
	rep->nfolders = n;
	struct mfolder *fs = xcalloc(n ? n : 1, sizeof *fs);
	enum store_rc result = STORE_OK;

	for (size_t i = 0; i < n; i++) {
		fs[i].mp = &pairs->v[i];
		fs[i].fr = &rep->folders[i];
		fs[i].fr->a_path = xstrdup(pairs->v[i].a_path);
		fs[i].fr->b_path = xstrdup(pairs->v[i].b_path);
	}
	/* 0. folders gone from one side */
	{
		enum store_rc r = gone_folders(&m, pairs, rep);
		if (r) {
			result = r;
			if (!*err_r)
				*err_r = xstrdup(m.failed ? store_error(m.failed) : "failed");
			goto done;
		}
	}
	/* 1. analyse what the fast path does not settle */
	{
		enum store_rc r = fast_pairs(&m, fs, n);
		if (r) {
			result = r;
			if (!*err_r && m.failed)
				*err_r = xstrdup(store_error(m.failed));
			goto done;
		}
	}
	for (size_t i = 0; i < n && !copier_stop; i++) {
		if (pairs->v[i].skip || fs[i].fast)
			continue;
		enum store_rc r = analyse(&m, &fs[i]);
		if (r == STORE_FATAL || r == STORE_CONN_BAD) {
			result = r;
			if (!*err_r && m.failed)
				*err_r = xstrdup(store_error(m.failed));
			goto done;
		}
		if (r) {
			fs[i].failed = fs[i].fr->failed = true;
			fs[i].fr->error = xstrdup(m.failed ? store_error(m.failed) : "failed");
			log_error("%s: %s", pairs->v[i].a_path, fs[i].fr->error);
			result = STORE_BOX_BAD;
		}
	}
	/* 2. moves, each way */
	if (!copier_stop) {
		enum store_rc r = find_moves(&m, fs, n, 0);
		if (!r)
			r = find_moves(&m, fs, n, 1);
		if (r) {
			result = r;
			if (!*err_r && m.failed)
				*err_r = xstrdup(store_error(m.failed));
			goto done;
		}
	}
	/* 3. apply */
	for (size_t i = 0; i < n && !copier_stop; i++) {
		if (!fs[i].analysed || fs[i].fast)
			continue;
		enum store_rc r = apply(&m, &fs[i]);
		if (r == STORE_FATAL || r == STORE_CONN_BAD) {
			result = r;
			if (!*err_r && m.failed)
				*err_r = xstrdup(store_error(m.failed));
			goto done;
		}
		if (r) {
			fs[i].fr->failed = true;
			fs[i].fr->error = xstrdup(m.failed ? store_error(m.failed) : "failed");
			log_error("%s: %s", pairs->v[i].a_path, fs[i].fr->error);
			result = STORE_BOX_BAD;
		}
	}
done:
	for (size_t i = 0; i < n; i++) {
		struct mirror_folder_report *fr = &rep->folders[i];
		if (!fr->a_path) {
			fr->a_path = xstrdup(pairs->v[i].a_path);
			fr->b_path = xstrdup(pairs->v[i].b_path);
		}
		rep->copied_ab += fr->copied_ab;
		rep->copied_ba += fr->copied_ba;
		rep->flags_set += fr->flags_a + fr->flags_b;
		rep->deleted += fr->deleted_a + fr->deleted_b;
		rep->moved += fr->moved_a + fr->moved_b;
		rep->paired += fr->paired;
		rep->kept += fr->kept;
		rep->held += fr->held_a + fr->held_b;
		rep->renamed += fr->renamed;
		rep->vanished += fr->vanished;
		rep->failed_folders += fr->failed;
		if (fs[i].mp)
			mfolder_release(&fs[i]);
	}
	free(fs);
	xfer_free(&m.xab);
	xfer_free(&m.xba);
	rep->interrupted = copier_stop != 0;
	rep->ended_ms = now_ms();
	return result;
}

void mirror_report_free(struct mirror_report *r)
{
	for (size_t i = 0; i < r->nfolders; i++) {
		free(r->folders[i].a_path);
		free(r->folders[i].b_path);
		free(r->folders[i].error);
	}
	free(r->folders);
	copy_report_free(&r->copies);
	memset(r, 0, sizeof *r);
}
