/*
 * copier.c — one-way, exactly-once copy of planned folder pairs.
 *
 * The protocol (docs/design.md, "exactly once"): before a batch is
 * appended, one PENDING row per message is committed with the message's
 * size, Message-ID, SHA-256 and a lower bound of the destination's UIDNEXT.
 * After the APPEND the rows become SYNCED (with the APPENDUID) or REFUSED.
 * Whatever is still PENDING at the start of a folder pass was interrupted:
 * it is looked up at the destination above the recorded UIDNEXT and either
 * recorded as copied or dropped and sent again. So a crash at any point
 * loses nothing and duplicates nothing.
 */
#include "copier.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "spool.h"
#include "util.h"

atomic_int copier_stop;

void copy_opts_default(struct copy_opts *o)
{
	memset(o, 0, sizeof *o);
	o->jobs = 4;
	o->jobs_auto = true;
	/* Measured (docs/performance.md): 1,000 small messages a batch made a
	 * 100,000-message copy 1.5x faster than 200 (less work per APPEND for
	 * Dovecot); batch_bytes still bounds a batch of big ones. */
	o->batch_msgs = 1000;
	o->batch_bytes = 32u << 20;
	o->max_retries = 5;
}

/* ------------------------------------------------------------------ */
/* test hook */

static long test_limit = -2, test_steps;

static void test_step_init(void)
{
	if (test_limit == -2) {
		const char *e = getenv("POSTINO_TEST_EXIT_AFTER");
		test_limit = e && *e ? atol(e) : -1;
	}
}

void copier_test_step(void)
{
	test_step_init(); /* also done before any worker thread starts */
	if (test_limit >= 0 && __atomic_add_fetch(&test_steps, 1, __ATOMIC_SEQ_CST) >= test_limit)
		_exit(99);
}

/* ------------------------------------------------------------------ */

struct copier {
	struct store *src, *dst;
	int dir;                 /* 0: src is side a (copy, mirror a->b); 1: src is b */
	struct state *st;
	const struct copy_opts *o;
	struct copy_report *rep;
	struct spool spool;      /* bodies between FETCH and APPEND */
	struct spool next;       /* the next batch's, fetched meanwhile */
	struct spool vspool;     /* bodies fetched back for verification */
	struct store *failed;    /* the side that lost its connection */
	uint32_t dst_uidnext;    /* a lower bound of the destination's UIDNEXT */
	bool dst_renumbered;     /* its UIDVALIDITY changed: intents' UIDNEXTs are void */
	struct box_status dstt;  /* the selected destination folder */
	int64_t orphans;         /* rows of the pair whose source UID is unknown */
	struct flagset dropped;  /* keywords the destination would not keep */
	struct flagset dst_kw;   /* keywords the target folder took this pass */
	bool subs_known;         /* the source tells subscriptions (LSUB) */
	bool overquota;          /* the destination said [OVERQUOTA]: stop */
	pthread_mutex_t *lock;   /* guards the shared report */
	/* POP3 source: message number -> UIDL, from this pass's scan */
	char **uidl_of;
	size_t nuidl;
	/* --skip-duplicates: the destination folder's messages by size and
	 * Message-ID, built at the first batch of a folder */
	struct resolve_ctx *dups;
};

static void uidl_map_clear(struct copier *c)
{
	for (size_t i = 0; i < c->nuidl; i++)
		free(c->uidl_of[i]);
	free(c->uidl_of);
	c->uidl_of = NULL;
	c->nuidl = 0;
}

static void uidl_map_set(struct copier *c, uint32_t num, const char *uidl)
{
	if (num >= c->nuidl) {
		size_t n = c->nuidl ? c->nuidl : 64;
		while (n <= num)
			n *= 2;
		c->uidl_of = xrealloc(c->uidl_of, n * sizeof *c->uidl_of);
		memset(c->uidl_of + c->nuidl, 0, (n - c->nuidl) * sizeof *c->uidl_of);
		c->nuidl = n;
	}
	free(c->uidl_of[num]);
	c->uidl_of[num] = xstrdup(uidl);
}

static const char *uidl_map_get(const struct copier *c, uint32_t num)
{
	return num < c->nuidl ? c->uidl_of[num] : NULL;
}

/*
 * Rows from the copier's point of view. A copy goes from side a to side b;
 * the mirror also copies from b to a (dir 1): then the source's UID is the
 * row's b_uid and the target's its a_uid.
 */
static uint32_t row_src_uid(const struct copier *c, const struct msg_row *r)
{
	return c->dir ? r->b_uid : r->a_uid;
}

static int by_dst_uid(struct copier *c, int64_t pair, uint32_t uid, struct msg_row *r)
{
	return c->dir ? state_msg_by_a(c->st, pair, uid, r) : state_msg_by_b(c->st, pair, uid, r);
}

static int mark_synced(struct copier *c, int64_t id, uint32_t dst_uid, const char *flags)
{
	return state_msg_synced_side(c->st, id, c->dir ? 0 : 1, dst_uid, flags);
}

static const char *target_name(const struct copier *c, const struct fpair *fp)
{
	return c->dir ? fp->a_name : fp->b_name;
}

/* The state row of a source message: by UIDL (POP3) or by UID. */
static int row_of_source(struct copier *c, int64_t pair, uint32_t uid, const char *uidl,
    struct msg_row *r)
{
	if (uidl)
		return state_msg_by_uidl(c->st, pair, uidl, r);
	return c->dir ? state_msg_by_b(c->st, pair, uid, r) : state_msg_by_a(c->st, pair, uid, r);
}

struct uidvec {
	uint32_t *v;
	uint64_t *size;
	size_t n, cap;
};

static void uidvec_push(struct uidvec *u, uint32_t uid, uint64_t size)
{
	if (u->n == u->cap) {
		u->cap = u->cap ? u->cap * 2 : 256;
		u->v = xrealloc(u->v, u->cap * sizeof *u->v);
		u->size = xrealloc(u->size, u->cap * sizeof *u->size);
	}
	u->v[u->n] = uid;
	u->size[u->n] = size;
	u->n++;
}

static void uidvec_free(struct uidvec *u)
{
	free(u->v);
	free(u->size);
	memset(u, 0, sizeof *u);
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* Sorts by UID and drops duplicates (sizes follow their UIDs). */
static void uidvec_sort_unique(struct uidvec *u)
{
	if (!u->n)
		return;
	/* sort pairs: pack into 64-bit keys is not possible with 64-bit
	 * sizes; sort indices instead */
	size_t n = u->n;
	struct pr { uint32_t uid; uint64_t size; } *p = xmalloc(n * sizeof *p);
	for (size_t i = 0; i < n; i++)
		p[i] = (struct pr){u->v[i], u->size[i]};
	xqsort(p, n, sizeof *p, cmp_u32);
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		if (k && p[i].uid == u->v[k - 1])
			continue;
		u->v[k] = p[i].uid;
		u->size[k] = p[i].size;
		k++;
	}
	u->n = k;
	free(p);
}

static enum store_rc state_failed(struct copier *c, char **err_r)
{
	if (err_r && !*err_r)
		*err_r = xasprintf("state DB: %s", state_error(c->st));
	return STORE_FATAL;
}

/* A durable commit: the step the exactly-once protocol leans on. */
static int commit(struct copier *c)
{
	if (state_commit(c->st) < 0)
		return -1;
	copier_test_step();
	return 0;
}

static void add_refusal(struct copier *c, const char *folder, uint32_t uid, uint64_t size,
    const char *reason)
{
	struct copy_report *r = c->rep;
	if (c->lock)
		pthread_mutex_lock(c->lock);
	r->refusals = xrealloc(r->refusals, (r->nrefusals + 1) * sizeof *r->refusals);
	r->refusals[r->nrefusals++] = (struct refusal){xstrdup(folder), uid, size,
	    xstrdup(reason ? reason : "refused")};
	if (c->lock)
		pthread_mutex_unlock(c->lock);
}

/* The flags the destination folder keeps permanently. */
static void filter_flags(struct copier *c, struct flagset *out, const struct flagset *in)
{
	const struct box_status *d = &c->dstt;
	flagset_copy(out, in);
	if (!d->have_permflags)
		return;
	out->sys &= d->permflags;
	if (d->perm_any_keyword)
		return;
	for (size_t i = 0; i < in->nkw; i++)
		if (!flagset_has_kw(&d->perm_keywords, in->kw[i])) {
			flagset_remove_kw(out, in->kw[i]);
			flagset_add(&c->dropped, in->kw[i]);
		}
}

static enum store_rc create_named(struct copier *c, const char *name, bool subscribe)
{
	return c->dst->ops->create(c->dst, name, subscribe);
}

/*
 * Creates the destination folder of e, subscribed if the source folder is
 * (or if the source tells nothing about subscriptions: POP3, or no folder
 * subscribed at all). A name the destination refuses is tried once more
 * under the escape rule (planner.h): e (this run's copy of the plan entry)
 * then goes to the escaped name, and the caller records the pair with it,
 * so that later runs go there directly. On BOX_BAD *err_r says why.
 */
static enum store_rc create_escaped(struct copier *c, struct plan_entry *e,
    struct folder_report *fr, char *why, char **err_r);

static enum store_rc create_folder(struct copier *c, struct plan_entry *e,
    struct folder_report *fr, char **err_r)
{
	bool sub = !c->subs_known || (e->src_attrs & FA_SUBSCRIBED);
	enum store_rc r = create_named(c, e->dst_name, sub);
	if (r != STORE_BOX_BAD)
		return r;
	return create_escaped(c, e, fr, xstrdup(store_error(c->dst)), err_r);
}

/* The second half of create_folder(): e's name was refused for reason
 * `why` (which this takes). */
static enum store_rc create_escaped(struct copier *c, struct plan_entry *e,
    struct folder_report *fr, char *why, char **err_r)
{
	if (!e->dst_escaped || !strcmp(e->dst_name, e->dst_escaped)) {
		if (err_r && !*err_r)
			*err_r = why;
		else
			free(why);
		return STORE_BOX_BAD;
	}
	bool sub = !c->subs_known || (e->src_attrs & FA_SUBSCRIBED);
	enum store_rc r = create_named(c, e->dst_escaped, sub);
	if (r == STORE_OK) {
		log_warn("%s: the destination refused the folder name '%s' (%s); created it as "
		    "'%s' (escape rule)", e->src_path, e->dst_path, why, e->dst_escaped_path);
		e->dst_name = e->dst_escaped;
		e->dst_path = e->dst_escaped_path;
		if (fr) {
			free(fr->dst_path);
			fr->dst_path = xstrdup(e->dst_path);
		}
	} else if (r == STORE_BOX_BAD && err_r && !*err_r) {
		*err_r = xasprintf("%s; nor as '%s' (escape rule): %s", why, e->dst_escaped_path,
		    store_error(c->dst));
	}
	free(why);
	return r;
}

/* ------------------------------------------------------------------ */
/* finding messages at the destination (resolution, re-pairing) */

struct prow {
	int64_t id;
	uint32_t a_uid;
	uint64_t size;
	char *msgid;
	uint8_t sha[32];
	bool has_sha;
	char *flags;
	uint32_t t_uidnext;
	uint32_t b_uid;   /* the match found, 0 if none */
};

struct cand {
	uint32_t uid;
	uint64_t size;
	char *msgid;
	bool taken;
};

struct resolve_ctx {
	struct copier *c;
	int64_t pair;
	bool want_unpaired_synced; /* re-pairing: SYNCED rows without b_uid */
	struct prow *rows;
	size_t nrows, caprows;
	struct cand *cands;
	size_t ncands, capcands;
};

static int collect_row(void *ctx, const struct msg_row *r)
{
	struct resolve_ctx *rc = ctx;
	if (rc->want_unpaired_synced && (r->state != MSG_SYNCED || r->b_uid))
		return 0;
	if (!rc->want_unpaired_synced && r->dir != rc->c->dir)
		return 0; /* an intent of the other direction (mirror) */
	if (rc->nrows == rc->caprows) {
		rc->caprows = rc->caprows ? rc->caprows * 2 : 64;
		rc->rows = xrealloc(rc->rows, rc->caprows * sizeof *rc->rows);
	}
	struct prow *p = &rc->rows[rc->nrows++];
	memset(p, 0, sizeof *p);
	p->id = r->id;
	p->a_uid = row_src_uid(rc->c, r);
	p->size = r->size;
	p->msgid = r->msgid ? xstrdup(r->msgid) : NULL;
	p->has_sha = r->has_sha;
	memcpy(p->sha, r->sha256, 32);
	p->flags = xstrdup(r->flags ? r->flags : "");
	p->t_uidnext = r->t_uidnext;
	return 0;
}

static int collect_cand(void *ctx, const struct msg_info *mi)
{
	struct resolve_ctx *rc = ctx;
	/* A UID the state already pairs with another row is not a candidate. */
	struct msg_row r;
	memset(&r, 0, sizeof r);
	int found = by_dst_uid(rc->c, rc->pair, mi->uid, &r);
	if (found < 0)
		return -1;
	bool mine = false;
	if (found)
		for (size_t i = 0; i < rc->nrows; i++)
			if (rc->rows[i].id == r.id)
				mine = true;
	msg_row_release(&r);
	if (found && !mine)
		return 0;
	if (rc->ncands == rc->capcands) {
		rc->capcands = rc->capcands ? rc->capcands * 2 : 64;
		rc->cands = xrealloc(rc->cands, rc->capcands * sizeof *rc->cands);
	}
	rc->cands[rc->ncands++] = (struct cand){mi->uid, mi->size,
	    mi->msgid ? xstrdup(mi->msgid) : NULL, false};
	return 0;
}

static int cmp_cand(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;
	if (x->size != y->size)
		return x->size < y->size ? -1 : 1;
	if (!x->msgid || !y->msgid)
		return (x->msgid != NULL) - (y->msgid != NULL);
	int r = strcmp(x->msgid, y->msgid);
	if (r)
		return r;
	return x->uid < y->uid ? -1 : x->uid > y->uid;
}

/* First candidate with this size and Message-ID (NULL msgid: none). */
static struct cand *find_cand(struct resolve_ctx *rc, uint64_t size, const char *msgid)
{
	size_t lo = 0, hi = rc->ncands;
	struct cand key = {0, size, (char *)msgid, false};
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		struct cand k2 = rc->cands[mid];
		k2.uid = 0;
		if (cmp_cand(&k2, &key) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (size_t i = lo; i < rc->ncands; i++) {
		struct cand *cd = &rc->cands[i];
		if (cd->size != size)
			break;
		if ((msgid == NULL) != (cd->msgid == NULL))
			break;
		if (msgid && strcmp(msgid, cd->msgid))
			break;
		if (!cd->taken)
			return cd;
	}
	return NULL;
}

/* Bodies of candidates without Message-ID, compared by SHA-256. */
static enum store_rc match_by_hash(struct resolve_ctx *rc)
{
	struct copier *c = rc->c;
	struct uidvec want = {0};
	for (size_t i = 0; i < rc->nrows; i++) {
		struct prow *p = &rc->rows[i];
		if (p->b_uid || !p->has_sha)
			continue;
		for (size_t k = 0; k < rc->ncands; k++) {
			struct cand *cd = &rc->cands[k];
			if (!cd->taken && cd->size == p->size && (!p->msgid || !cd->msgid))
				uidvec_push(&want, cd->uid, cd->size);
		}
	}
	if (!want.n)
		return STORE_OK;
	uidvec_sort_unique(&want);
	spool_reset(&c->vspool);
	struct body_sink sink;
	spool_sink(&c->vspool, &sink);
	enum store_rc r = c->dst->ops->fetch(c->dst, want.v, want.n, &sink);
	uidvec_free(&want);
	if (r) {
		c->failed = c->dst;
		return r;
	}
	for (size_t i = 0; i < rc->nrows; i++) {
		struct prow *p = &rc->rows[i];
		if (p->b_uid || !p->has_sha)
			continue;
		for (size_t m = 0; m < c->vspool.n && !p->b_uid; m++) {
			struct spool_msg *sm = &c->vspool.msgs[m];
			if (memcmp(sm->sha256, p->sha, 32))
				continue;
			for (size_t k = 0; k < rc->ncands; k++)
				if (rc->cands[k].uid == sm->uid && !rc->cands[k].taken) {
					rc->cands[k].taken = true;
					p->b_uid = sm->uid;
					break;
				}
		}
	}
	return STORE_OK;
}

/* Scans the destination from UID `from` and pairs rows with candidates. */
static enum store_rc find_rows(struct copier *c, struct resolve_ctx *rc, uint32_t from)
{
	enum store_rc r = c->dst->ops->scan(c->dst, from, 0, SCAN_SIZE | SCAN_MSGID, collect_cand, rc);
	if (r == (enum store_rc)-1)
		return STORE_FATAL;
	if (r) {
		c->failed = c->dst;
		return r;
	}
	xqsort(rc->cands, rc->ncands, sizeof *rc->cands, cmp_cand);

	/* 1. size and Message-ID */
	for (size_t i = 0; i < rc->nrows; i++) {
		struct prow *p = &rc->rows[i];
		if (!p->msgid)
			continue;
		struct cand *cd = find_cand(rc, p->size, p->msgid);
		if (cd) {
			cd->taken = true;
			p->b_uid = cd->uid;
		}
	}
	/* 2. no Message-ID (or a server that changed the size): SHA-256 */
	r = match_by_hash(rc);
	if (r)
		return r;
	/* 3. a server that rewrote the message (bare LF to CRLF): the same
	 *    Message-ID, alone among the candidates */
	for (size_t i = 0; i < rc->nrows; i++) {
		struct prow *p = &rc->rows[i];
		if (p->b_uid || !p->msgid)
			continue;
		struct cand *only = NULL;
		size_t count = 0;
		for (size_t k = 0; k < rc->ncands; k++)
			if (!rc->cands[k].taken && rc->cands[k].msgid &&
			    !strcmp(rc->cands[k].msgid, p->msgid)) {
				only = &rc->cands[k];
				count++;
			}
		if (count == 1) {
			only->taken = true;
			p->b_uid = only->uid;
		}
	}

	return STORE_OK;
}

/* Unmatched rows after a crash: the killed run's connection may still be
 * feeding the server an APPEND it had fully written (the kernel delivers
 * what was sent). Wait until the folder's UIDNEXT stops moving before
 * concluding that a message never arrived. Returns 1 if UIDNEXT moved past
 * `seen` (scan again), 0 if not, -1 on error. */
static int settle(struct copier *c, const struct fpair *fp, uint32_t seen)
{
	uint32_t last = seen;
	int stable = 0;
	for (int i = 0; i < 60 && stable < 3; i++) {
		struct timespec ts = {0, 500 * 1000000L};
		nanosleep(&ts, NULL);
		struct box_status bs;
		memset(&bs, 0, sizeof bs);
		enum store_rc r = c->dst->ops->status(c->dst, target_name(c, fp), &bs);
		uint32_t now = bs.uidnext;
		box_status_clear(&bs);
		if (r) {
			c->failed = c->dst;
			return -1;
		}
		stable = now == last ? stable + 1 : 0;
		last = now;
	}
	return last != seen;
}

static void reset_matches(struct resolve_ctx *rc)
{
	for (size_t i = 0; i < rc->nrows; i++)
		rc->rows[i].b_uid = 0;
	for (size_t i = 0; i < rc->ncands; i++)
		free(rc->cands[i].msgid);
	rc->ncands = 0;
}

enum resolve_mode {
	RESOLVE_CRASH,        /* PENDING after an interruption: drop what is not found */
	RESOLVE_AFTER_APPEND, /* PENDING after a confirmed APPEND without APPENDUID */
	RESOLVE_REPAIR,       /* SYNCED rows whose destination UID was forgotten */
};

/*
 * Looks the rows up at the destination (which is selected). Found rows
 * become SYNCED with their UID. Not found: RESOLVE_CRASH and RESOLVE_REPAIR
 * delete the row and put its source UID in *requeue (to be copied again);
 * RESOLVE_AFTER_APPEND keeps it SYNCED without a UID (the server confirmed
 * the APPEND; sending it again would duplicate it). *found_r counts matches.
 */
static enum store_rc resolve(struct copier *c, struct fpair *fp, enum resolve_mode mode,
    struct uidvec *requeue, uint64_t *found_r)
{
	struct resolve_ctx rc = {0};
	rc.c = c;
	rc.pair = fp->id;
	rc.want_unpaired_synced = mode == RESOLVE_REPAIR;
	enum store_rc r = STORE_OK;
	if (found_r)
		*found_r = 0;
	if (state_msgs_each(c->st, fp->id, mode == RESOLVE_REPAIR ? MSG_SYNCED : MSG_PENDING,
		collect_row, &rc) < 0) {
		r = STORE_FATAL;
		goto out;
	}
	if (!rc.nrows)
		goto out;

	uint32_t from = UINT32_MAX;
	for (size_t i = 0; i < rc.nrows; i++)
		if (rc.rows[i].t_uidnext < from)
			from = rc.rows[i].t_uidnext;
	if (mode == RESOLVE_REPAIR || from == 0 || c->dst_renumbered)
		from = 1;
	log_info("%s: looking for %zu message%s at the destination from UID %u", target_name(c, fp),
	    rc.nrows, rc.nrows == 1 ? "" : "s", from);
	for (int attempt = 0;; attempt++) {
		struct box_status bs;
		memset(&bs, 0, sizeof bs);
		r = c->dst->ops->status(c->dst, target_name(c, fp), &bs);
		uint32_t uidnext = bs.uidnext;
		box_status_clear(&bs);
		if (!r)
			r = find_rows(c, &rc, from);
		if (r) {
			if (r != STORE_FATAL)
				c->failed = c->dst;
			goto out;
		}
		size_t unmatched = 0;
		for (size_t i = 0; i < rc.nrows; i++)
			unmatched += !rc.rows[i].b_uid;
		if (mode != RESOLVE_CRASH || !unmatched || attempt >= 3)
			break;
		log_info("%s: %zu interrupted message%s not found; waiting for the server to "
		    "settle", target_name(c, fp), unmatched, unmatched == 1 ? "" : "s");
		int moved = settle(c, fp, uidnext);
		if (moved < 0) {
			r = STORE_CONN_BAD;
			goto out;
		}
		if (!moved)
			break;
		reset_matches(&rc);
	}

	if (state_begin(c->st) < 0) {
		r = STORE_FATAL;
		goto out;
	}
	for (size_t i = 0; i < rc.nrows; i++) {
		struct prow *p = &rc.rows[i];
		int sr;
		if (p->b_uid) {
			sr = mark_synced(c, p->id, p->b_uid, p->flags);
			if (found_r)
				(*found_r)++;
			if (p->b_uid >= c->dst_uidnext)
				c->dst_uidnext = p->b_uid + 1;
		} else if (mode == RESOLVE_AFTER_APPEND) {
			log_warn("%s: appended message (source UID %u) not found again at the "
			    "destination; recorded as copied", target_name(c, fp), p->a_uid);
			sr = mark_synced(c, p->id, 0, p->flags);
		} else {
			sr = state_msg_delete(c->st, p->id);
			if (p->a_uid && requeue)
				uidvec_push(requeue, p->a_uid, p->size);
		}
		if (sr < 0) {
			state_rollback(c->st);
			r = STORE_FATAL;
			goto out;
		}
	}
	if (commit(c) < 0)
		r = STORE_FATAL;
out:
	for (size_t i = 0; i < rc.nrows; i++) {
		free(rc.rows[i].msgid);
		free(rc.rows[i].flags);
	}
	free(rc.rows);
	for (size_t i = 0; i < rc.ncands; i++)
		free(rc.cands[i].msgid);
	free(rc.cands);
	return r;
}

/* ------------------------------------------------------------------ */
/* scanning the source */

struct flag_change {
	int64_t id;
	uint32_t b_uid;
	char *old_flags;
	char *new_flags;
};

struct scan_ctx {
	struct copier *c;
	const char *folder;      /* source path, for messages */
	int64_t pair;
	struct uidvec to_copy;
	struct flag_change *changes;
	size_t nchanges, capchanges;
	uint64_t already;
	int err;
};

static int scan_cb(void *ctx, const struct msg_info *mi)
{
	struct scan_ctx *sc = ctx;
	struct msg_row r;
	memset(&r, 0, sizeof r);
	if (mi->uidl)
		uidl_map_set(sc->c, mi->uid, mi->uidl);
	int found = row_of_source(sc->c, sc->pair, mi->uid, mi->uidl, &r);
	if (found < 0) {
		sc->err = 1;
		return -1;
	}
	if (!found || r.state == MSG_REFUSED) {
		uidvec_push(&sc->to_copy, mi->uid, mi->size);
	} else if (r.state == MSG_SYNCED && !mi->uidl && mi->size && r.size &&
	    mi->size != r.size) {
		/* The server gave a UID that was copied to another message
		 * (it lost its last UIDs and reused them: a server bug). The
		 * row no longer names a source message: it becomes an orphan,
		 * and this message is fetched; if its bytes are the row's after
		 * all, it is linked again, not copied. */
		log_warn("%s UID %u: %llu bytes, but %llu were copied from that UID: the "
		    "server reused it; checking by content", sc->folder, mi->uid,
		    (unsigned long long)mi->size, (unsigned long long)r.size);
		if (state_msg_set_a_uid(sc->c->st, r.id, 0) < 0) {
			msg_row_release(&r);
			sc->err = 1;
			return -1;
		}
		sc->c->orphans++;
		uidvec_push(&sc->to_copy, mi->uid, mi->size);
	} else if (r.state == MSG_SYNCED) {
		sc->already++;
		if (!sc->c->o->no_flag_sync && r.b_uid) {
			char *now = flagset_format(&mi->flags);
			if (strcmp(now, r.flags ? r.flags : "")) {
				if (sc->nchanges == sc->capchanges) {
					sc->capchanges = sc->capchanges ? sc->capchanges * 2 : 64;
					sc->changes = xrealloc(sc->changes,
					    sc->capchanges * sizeof *sc->changes);
				}
				sc->changes[sc->nchanges++] = (struct flag_change){r.id, r.b_uid,
				    xstrdup(r.flags ? r.flags : ""), now};
				now = NULL;
			}
			free(now);
		}
	}
	msg_row_release(&r);
	return 0;
}

static int collect_refused(void *ctx, const struct msg_row *r)
{
	struct uidvec *u = ctx;
	if (r->a_uid)
		uidvec_push(u, r->a_uid, r->size);
	return 0;
}

/* ------------------------------------------------------------------ */
/* copying a batch */

static void dups_free(struct copier *c)
{
	if (!c->dups)
		return;
	for (size_t i = 0; i < c->dups->ncands; i++)
		free(c->dups->cands[i].msgid);
	free(c->dups->cands);
	free(c->dups);
	c->dups = NULL;
}

/* Indexes the destination folder (selected) for --skip-duplicates: its
 * messages not yet paired with a message of this source. */
static enum store_rc dups_load(struct copier *c, const struct fpair *fp)
{
	c->dups = xcalloc(1, sizeof *c->dups);
	c->dups->c = c;
	c->dups->pair = fp->id;
	enum store_rc r = c->dst->ops->scan(c->dst, 1, 0, SCAN_SIZE | SCAN_MSGID, collect_cand,
	    c->dups);
	if (r == (enum store_rc)-1)
		return STORE_FATAL;
	if (r) {
		c->failed = c->dst;
		return r;
	}
	xqsort(c->dups->cands, c->dups->ncands, sizeof *c->dups->cands, cmp_cand);
	return STORE_OK;
}

/* Refusals not worth a second try: the account is full, or the message
 * is too big (RFC 5530 codes, which store_imap puts before the text). */
static bool is_overquota(const char *err)
{
	return err && !strncmp(err, "[OVERQUOTA]", 11);
}

static bool final_refusal(const char *err)
{
	return is_overquota(err) || (err && !strncmp(err, "[TOOBIG]", 8));
}

/* out = fs less the keywords the target folder does not have yet (those
 * listed in PERMANENTFLAGS at SELECT, or taken by an APPEND this pass). */
static void known_keywords(struct copier *c, struct flagset *out, const struct flagset *fs)
{
	flagset_copy(out, fs);
	for (size_t i = 0; i < fs->nkw; i++)
		if (!flagset_has_kw(&c->dstt.perm_keywords, fs->kw[i]) &&
		    !flagset_has_kw(&c->dst_kw, fs->kw[i]))
			flagset_remove_kw(out, fs->kw[i]);
}

static void format_date(char out[40], int64_t t, int tzoff)
{
	time_t local = (time_t)(t + (int64_t)tzoff * 60);
	struct tm tm;
	if (!gmtime_r(&local, &tm) || !strftime(out, 40, "%Y-%m-%d %H:%M:%S", &tm)) {
		snprintf(out, 40, "@%lld", (long long)t);
		return;
	}
	int z = tzoff < 0 ? -tzoff : tzoff;
	size_t l = strlen(out);
	snprintf(out + l, 40 - l, " %c%02d%02d", tzoff < 0 ? '-' : '+', (z / 60) % 100, z % 60);
}

/*
 * Second tries for refused messages the destination may take changed
 * (servers.md): first a date before 1970 is sent as 1970-01-01 00:00:00
 * +0000; then the keywords the folder does not have yet are left out
 * (Cyrus fails the whole APPEND at its per-folder keyword limit, "Too many
 * user flags in mailbox"; other servers refuse new keywords). Each change
 * is tried once, and reported when the message is then taken (dropped
 * keywords also go to the folder's report); a message refused again keeps
 * the last refusal's text. A full account or a message too big is not
 * tried again. Returns the append's result: on CONN_BAD the items sent
 * have rc CONN_BAD (their rows stay PENDING, resolved after reconnecting).
 */
static enum store_rc retry_refused(struct copier *c, const struct plan_entry *e,
    struct append_item *items, const struct flagset *fl, const size_t *at, size_t k)
{
	enum store_rc r = STORE_OK;
	size_t *idx = xcalloc(k ? k : 1, sizeof *idx);
	struct append_item *again = xcalloc(k ? k : 1, sizeof *again);
	struct flagset *sent = xcalloc(k ? k : 1, sizeof *sent);
	char **date_why = xcalloc(k ? k : 1, sizeof *date_why); /* refused dates */
	for (int stage = 0; stage < 2 && r == STORE_OK; stage++) {
		size_t n = 0;
		for (size_t i = 0; i < k; i++) {
			struct append_item *it = &items[i];
			if (it->rc != STORE_MSG_BAD || final_refusal(it->error))
				continue;
			if (stage == 0) {
				if (it->idate == IDATE_NONE || it->idate >= 0)
					continue;
				flagset_copy(&sent[n], &fl[i]);
			} else {
				known_keywords(c, &sent[n], &fl[i]);
				if (sent[n].nkw == fl[i].nkw)
					continue;
			}
			if (stage == 0) {
				it->idate = 0;
				it->tzoff = 0;
				date_why[i] = xstrdup(it->error ? it->error : "refused");
			}
			idx[n] = i;
			again[n] = *it;
			again[n].flags = &sent[n];
			again[n].error = NULL;
			n++;
		}
		if (!n)
			continue;
		log_info("%s: %zu refused message%s tried again %s", e->src_path, n,
		    n == 1 ? "" : "s", stage ? "without new keywords" : "dated 1970-01-01");
		uint32_t uv = 0;
		r = c->dst->ops->append(c->dst, e->dst_name, again, n, &uv);
		if (r == STORE_CONN_BAD)
			c->failed = c->dst;
		for (size_t q = 0; q < n; q++) {
			size_t i = idx[q];
			struct append_item *it = &items[i];
			struct append_item *a = &again[q];
			const struct spool_msg *sm = &c->spool.msgs[at[i]];
			if (a->rc == STORE_OK) {
				if (date_why[i]) {
					char d[40];
					format_date(d, sm->idate, sm->tzoff);
					log_warn("%s: message UID %u: the destination refused its date %s "
					    "(%s); copied dated 1970-01-01 00:00:00 +0000", e->src_path,
					    sm->uid, d, date_why[i]);
				}
				if (stage) {
					struct flagset gone = FLAGSET_INIT;
					flagset_minus(&gone, &fl[i], &sent[q]);
					char *t = flagset_format(&gone);
					log_warn("%s: message UID %u copied without the keywords %s (%s)",
					    e->src_path, sm->uid, t, it->error ? it->error : "refused");
					for (size_t g = 0; g < gone.nkw; g++)
						flagset_add(&c->dropped, gone.kw[g]);
					free(t);
					flagset_clear(&gone);
				}
				free(it->error);
				it->error = NULL;
			} else if (a->rc == STORE_MSG_BAD) {
				free(it->error);
				it->error = a->error;
				a->error = NULL;
			}
			it->rc = a->rc;
			it->uid = a->uid;
			free(a->error);
			a->error = NULL;
		}
	}
	for (size_t i = 0; i < k; i++) {
		flagset_clear(&sent[i]);
		free(date_why[i]);
	}
	free(idx);
	free(again);
	free(sent);
	free(date_why);
	return r;
}

/* One batch whose bodies are in c->spool: intents, APPEND, results. */
static enum store_rc copy_batch(struct copier *c, struct fpair *fp,
    const struct plan_entry *e, struct folder_report *fr, char **err_r)
{
	enum store_rc r;
	if (c->o->skip_duplicates && !c->dups) {
		r = dups_load(c, fp);
		if (r)
			return r;
	}

	size_t m = c->spool.n;
	struct append_item *items = xcalloc(m ? m : 1, sizeof *items);
	struct flagset *fl = xcalloc(m ? m : 1, sizeof *fl);
	int64_t *ids = xcalloc(m ? m : 1, sizeof *ids);
	/* item -> its spool message (not by offset: an empty message has
	 * the offset of the one after it) */
	size_t *at = xcalloc(m ? m : 1, sizeof *at);
	size_t k = 0;

	if (state_begin(c->st) < 0)
		goto state_err;
	for (size_t i = 0; i < m; i++) {
		struct spool_msg *sm = &c->spool.msgs[i];
		struct msg_row old;
		memset(&old, 0, sizeof old);
		int tries = 0;

		/* A source UIDVALIDITY change left rows without source UIDs:
		 * the same bytes are the same message, already copied. */
		if (c->orphans > 0) {
			int f = state_msg_find_orphan(c->st, fp->id, sm->len, sm->sha256, &old);
			if (f < 0)
				goto state_err_rb;
			if (f) {
				if (state_msg_set_a_uid(c->st, old.id, sm->uid) < 0) {
					msg_row_release(&old);
					goto state_err_rb;
				}
				msg_row_release(&old);
				fr->relinked++;
				c->orphans--;
				continue;
			}
		}
		/* a retry of a refused message replaces its row */
		const char *uidl = uidl_map_get(c, sm->uid);
		int f = row_of_source(c, fp->id, sm->uid, uidl, &old);
		if (f < 0)
			goto state_err_rb;
		if (f) {
			tries = old.tries;
			int d = old.state == MSG_REFUSED ? state_msg_delete(c->st, old.id) : 0;
			bool skip = old.state != MSG_REFUSED;
			msg_row_release(&old);
			if (d < 0)
				goto state_err_rb;
			if (skip)
				continue;
		}
		/* --skip-duplicates: the same Message-ID and size is already
		 * there (copied from another source): pair with it instead.
		 * Each message there pairs once, so copies are never merged
		 * beyond what the destination holds. */
		struct cand *dup = c->dups && sm->msgid ? find_cand(c->dups, sm->len, sm->msgid) : NULL;
		char *flags = flagset_format(&sm->flags);
		struct msg_row row = {0};
		row.pair = fp->id;
		row.a_uid = uidl || c->dir ? 0 : sm->uid;
		row.b_uid = c->dir ? sm->uid : 0;
		row.dir = c->dir;
		row.a_uidl = (char *)uidl;
		row.state = MSG_PENDING;
		row.size = sm->len;
		row.msgid = sm->msgid;
		memcpy(row.sha256, sm->sha256, 32);
		row.has_sha = true;
		row.flags = flags;
		row.idate = sm->idate == IDATE_NONE ? 0 : sm->idate;
		row.t_uidnext = c->dst_uidnext;
		row.tries = tries; /* refusals so far; state_msg_refused counts one more */
		if (dup) {
			row.state = MSG_SYNCED;
			if (c->dir)
				row.a_uid = dup->uid;
			else
				row.b_uid = dup->uid;
			dup->taken = true;
		}
		int ir = state_msg_insert(c->st, &row);
		free(flags);
		if (ir < 0)
			goto state_err_rb;
		if (dup) {
			fr->duplicates++;
			continue;
		}
		ids[k] = row.id;
		at[k] = i;
		filter_flags(c, &fl[k], &sm->flags);
		items[k] = (struct append_item){
			.fd = c->spool.fd, .off = sm->off, .len = sm->len, .flags = &fl[k],
			.idate = sm->idate, .tzoff = sm->tzoff,
		};
		k++;
	}
	/* The intents are durable before anything is sent. */
	if (commit(c) < 0)
		goto state_err;

	uint32_t uv = 0;
	if (k && c->o->rate) {
		uint64_t bytes = 0;
		for (size_t i = 0; i < k; i++)
			bytes += items[i].len;
		double waited = ratelimit_take(c->o->rate, k, bytes);
		if (waited > 0.5)
			log_debug("rate limit: waited %.1f s", waited);
	}
	r = k ? c->dst->ops->append(c->dst, e->dst_name, items, k, &uv) : STORE_OK;
	if (k)
		copier_test_step();
	if (r == STORE_CONN_BAD)
		c->failed = c->dst;
	for (size_t i = 0; i < k; i++)
		if (items[i].rc == STORE_OK)
			for (size_t g = 0; g < fl[i].nkw; g++)
				flagset_add(&c->dst_kw, fl[i].kw[g]);
	if (r == STORE_OK)
		r = retry_refused(c, e, items, fl, at, k);
	if (r == STORE_FATAL || r == STORE_BOX_BAD)
		goto out;

	bool need_resolve = false;
	if (state_begin(c->st) < 0)
		goto state_err;
	for (size_t i = 0; i < k; i++) {
		struct append_item *it = &items[i];
		struct spool_msg *sm = &c->spool.msgs[at[i]];
		if (it->rc == STORE_OK) {
			__atomic_add_fetch(&fr->copied, 1, __ATOMIC_RELAXED);
			__atomic_add_fetch(&fr->bytes, it->len, __ATOMIC_RELAXED);
			if (it->uid) {
				char *flags = flagset_format(&sm->flags);
				int sr = mark_synced(c, ids[i], it->uid, flags);
				free(flags);
				if (sr < 0)
					goto state_err_rb;
				if (it->uid >= c->dst_uidnext)
					c->dst_uidnext = it->uid + 1;
			} else {
				need_resolve = true;
			}
		} else if (it->rc == STORE_MSG_BAD) {
			fr->refused++;
			if (state_msg_refused(c->st, ids[i], it->error ? it->error : "refused") < 0)
				goto state_err_rb;
			add_refusal(c, e->src_path, sm->uid, sm->len, it->error);
			log_warn("%s: message UID %u (%llu bytes) refused by the destination: %s",
			    e->src_path, sm->uid, (unsigned long long)sm->len,
			    it->error ? it->error : "refused");
		}
		/* CONN_BAD: stays PENDING, resolved after reconnecting */
	}
	if (commit(c) < 0)
		goto state_err;
	if (need_resolve && r == STORE_OK)
		r = resolve(c, fp, RESOLVE_AFTER_APPEND, NULL, NULL);
	/* A full account refuses every further message: stop rather than
	 * send them all (the refusals of this batch are recorded above). */
	for (size_t i = 0; i < k && r == STORE_OK; i++)
		if (items[i].rc == STORE_MSG_BAD && is_overquota(items[i].error)) {
			c->overquota = true;
			free(*err_r);
			*err_r = xasprintf("destination over quota: %s", items[i].error);
			r = STORE_BOX_BAD;
		}
	goto out;

state_err_rb:
	state_rollback(c->st);
state_err:
	r = state_failed(c, err_r);
out:
	for (size_t i = 0; i < m; i++) {
		free(items[i].error);
		flagset_clear(&fl[i]);
	}
	free(items);
	free(fl);
	free(ids);
	free(at);
	return r;
}

/* ------------------------------------------------------------------ */
/* flags */

/* The end of the batch that starts at uids[i]: up to batch_msgs messages
 * and batch_bytes bytes (one larger message goes alone). */
static size_t batch_end(const struct copier *c, const uint64_t *sizes, size_t i, size_t n)
{
	size_t j = i;
	uint64_t bytes = 0;
	do {
		bytes += sizes ? sizes[j] : 0;
		j++;
	} while (j < n && j - i < c->o->batch_msgs &&
	    bytes + (sizes ? sizes[j] : 0) <= c->o->batch_bytes);
	return j;
}

/* Fetches the bodies of uids into sp, on the source connection. */
static enum store_rc fetch_into(struct copier *c, struct spool *sp, const uint32_t *uids,
    size_t n)
{
	spool_reset(sp);
	struct body_sink sink;
	spool_sink(sp, &sink);
	return c->src->ops->fetch(c->src, uids, n, &sink);
}

struct prefetch {
	struct copier *c;
	const uint32_t *uids;
	size_t n;
	enum store_rc rc;
	pthread_t thread;
};

static void *prefetch_main(void *arg)
{
	struct prefetch *p = arg;
	p->rc = fetch_into(p->c, &p->c->next, p->uids, p->n);
	return NULL;
}

/*
 * Copies the messages uids (ascending; sizes[i] bytes each, or NULL) in
 * batches. While a batch is appended, the next one's bodies are fetched on
 * the source connection in a thread of their own, into the second spool:
 * the two connections work at the same time instead of in turn (the
 * source connection and c->next belong to that thread until it is joined;
 * nothing else in a batch uses them). The exactly-once protocol is
 * unchanged: a batch's intents are recorded, durably, after its bodies
 * have arrived and before its APPEND. *done_r: how many of uids were
 * tried. Stops early (OK) when copier_stop is set.
 */
static enum store_rc copy_batches(struct copier *c, struct fpair *fp,
    const struct plan_entry *e, const uint32_t *uids, const uint64_t *sizes, size_t n,
    struct folder_report *fr, char **err_r, size_t *done_r)
{
	*done_r = 0;
	if (!n || copier_stop)
		return STORE_OK;
	size_t j = batch_end(c, sizes, 0, n);
	enum store_rc r = fetch_into(c, &c->spool, uids, j);
	for (;;) {
		if (r) {
			c->failed = c->src; /* to reconnect, or to report its error */
			return r;
		}
		if (c->spool.error) {
			*err_r = xasprintf("cannot write the spool file: %s",
			    strerror(c->spool.error));
			return STORE_FATAL;
		}
		size_t next_end = j < n ? batch_end(c, sizes, j, n) : n;
		struct prefetch pf = {c, uids + j, next_end - j, STORE_OK, 0};
		bool threaded = j < n && !copier_stop &&
		    pthread_create(&pf.thread, NULL, prefetch_main, &pf) == 0;
		r = copy_batch(c, fp, e, fr, err_r);
		*done_r = j;
		if (threaded)
			pthread_join(pf.thread, NULL);
		if (r || j >= n || copier_stop)
			return r;
		if (!threaded)
			pf.rc = fetch_into(c, &c->next, uids + j, next_end - j);
		struct spool t = c->spool;
		c->spool = c->next;
		c->next = t;
		r = pf.rc;
		j = next_end;
	}
}

static int cmp_change(const void *a, const void *b)
{
	const struct flag_change *x = a, *y = b;
	int r = strcmp(x->old_flags, y->old_flags);
	if (!r)
		r = strcmp(x->new_flags, y->new_flags);
	if (!r)
		r = x->b_uid < y->b_uid ? -1 : x->b_uid > y->b_uid;
	return r;
}

/* Pushes source flag changes: one UID STORE per distinct change (two when
 * flags go both ways), all pipelined, then what was set is recorded in one
 * transaction. A change the server refused is reported and left for the
 * next run; one cut off by a lost connection is redone by the next pass. */
static enum store_rc push_flags(struct copier *c, struct scan_ctx *sc,
    struct folder_report *fr, char **err_r)
{
	if (!sc->nchanges)
		return STORE_OK;
	xqsort(sc->changes, sc->nchanges, sizeof *sc->changes, cmp_change);
	uint32_t *uids = xmalloc(sc->nchanges * sizeof *uids);
	/* one op per run of equal changes; first[k] is its first change */
	struct store_flag_op *ops = xcalloc(sc->nchanges, sizeof *ops);
	size_t *first = xcalloc(sc->nchanges + 1, sizeof *first);
	struct flagset *fsets = xcalloc(2 * sc->nchanges, sizeof *fsets);
	size_t nops = 0;
	for (size_t i = 0; i < sc->nchanges;) {
		size_t j = i;
		while (j < sc->nchanges && !strcmp(sc->changes[j].old_flags, sc->changes[i].old_flags) &&
		    !strcmp(sc->changes[j].new_flags, sc->changes[i].new_flags))
			j++;
		struct flagset oldf = FLAGSET_INIT, newf = FLAGSET_INIT, add = FLAGSET_INIT,
		    del = FLAGSET_INIT;
		flagset_parse(&oldf, sc->changes[i].old_flags);
		flagset_parse(&newf, sc->changes[i].new_flags);
		flagset_minus(&add, &newf, &oldf);
		flagset_minus(&del, &oldf, &newf);
		struct flagset *addf = &fsets[2 * nops], *delf = &fsets[2 * nops + 1];
		filter_flags(c, addf, &add);
		filter_flags(c, delf, &del);
		for (size_t q = i; q < j; q++)
			uids[q] = sc->changes[q].b_uid;
		xqsort(uids + i, j - i, sizeof *uids, cmp_u32);
		ops[nops] = (struct store_flag_op){uids + i, j - i, addf, delf, STORE_CONN_BAD};
		first[nops++] = i;
		flagset_clear(&oldf);
		flagset_clear(&newf);
		flagset_clear(&add);
		flagset_clear(&del);
		i = j;
	}
	first[nops] = sc->nchanges;

	enum store_rc r = store_set_flags_many(c->dst, ops, nops);
	if (r == STORE_CONN_BAD)
		c->failed = c->dst;
	if (r != STORE_FATAL) {
		if (state_begin(c->st) < 0) {
			r = state_failed(c, err_r);
			nops = 0;
		}
		for (size_t k = 0; k < nops; k++) {
			size_t n = ops[k].n;
			if (ops[k].rc == STORE_MSG_BAD) {
				log_warn("flags of %zu message%s not updated: %s", n, n == 1 ? "" : "s",
				    store_error(c->dst));
				continue;
			}
			if (ops[k].rc != STORE_OK)
				continue;
			for (size_t q = first[k]; q < first[k + 1]; q++)
				if (state_msg_set_flags(c->st, sc->changes[q].id,
					sc->changes[q].new_flags) < 0) {
					r = state_failed(c, err_r);
					break;
				}
			if (r == STORE_FATAL)
				break;
			fr->flags_set += n;
		}
		if (nops && r != STORE_FATAL && commit(c) < 0)
			r = state_failed(c, err_r);
		else if (nops && r == STORE_FATAL)
			state_rollback(c->st);
	}
	for (size_t k = 0; k < 2 * sc->nchanges; k++)
		flagset_clear(&fsets[k]);
	free(fsets);
	free(first);
	free(ops);
	free(uids);
	return r;
}

/* ------------------------------------------------------------------ */
/* one folder */

static enum store_rc copy_folder(struct copier *c, struct plan_entry *e,
    struct folder_report *fr, char **err_r)
{
	struct fpair fp;
	struct box_status sst;
	struct scan_ctx sc;
	struct uidvec requeue = {0};
	enum store_rc r;
	memset(&fp, 0, sizeof fp);
	memset(&sst, 0, sizeof sst);
	memset(&sc, 0, sizeof sc);

	/* Order matters: creating may choose an escaped name, which the
	 * pair must have. */
	if (e->action == PLAN_CREATE && !fr->created) {
		r = create_folder(c, e, fr, err_r);
		if (r) {
			if (r == STORE_CONN_BAD)
				c->failed = c->dst;
			goto out;
		}
		fr->created = true;
	}

	if (state_pair_get(c->st, e->src_name, e->dst_name, &fp) < 0)
		return state_failed(c, err_r);

	r = c->src->ops->select(c->src, e->src_name, true, &sst);
	if (r) {
		c->failed = c->src; /* to reconnect, or to report its error */
		goto out;
	}
	box_status_clear(&c->dstt);
	r = c->dst->ops->select(c->dst, e->dst_name, false, &c->dstt);
	if (r) {
		if (r == STORE_CONN_BAD)
			c->failed = c->dst;
		goto out;
	}

	/* UIDVALIDITY: the rows' UIDs mean nothing any more. Forget them and
	 * pair again by content; never copy blindly, never delete. */
	/* A UIDNEXT lower than a complete pass saw means the source lost its
	 * last UIDs and may give them to new mail: the UIDs are no longer
	 * trustworthy, as after a UIDVALIDITY change. (POP3 numbers are per
	 * session: not a sign of anything.) */
	bool src_rewound = fp.a_uidvalidity && fp.a_uidvalidity == sst.uidvalidity &&
	    fp.last_done && sst.uidnext < fp.a_uidnext && !c->src->caps.pop3;
	bool src_changed = (fp.a_uidvalidity && fp.a_uidvalidity != sst.uidvalidity) ||
	    src_rewound;
	bool dst_changed = fp.b_uidvalidity && fp.b_uidvalidity != c->dstt.uidvalidity;
	if (src_changed || dst_changed || !fp.a_uidvalidity || !fp.b_uidvalidity) {
		if (state_begin(c->st) < 0)
			goto state_err;
		if (src_changed) {
			if (src_rewound)
				log_warn("%s: source UIDNEXT went back (%u to %u): re-pairing by "
				    "content", e->src_path, fp.a_uidnext, sst.uidnext);
			else
				log_warn("%s: source UIDVALIDITY changed (%u to %u): re-pairing by "
				    "content", e->src_path, fp.a_uidvalidity, sst.uidvalidity);
			if (state_pair_forget_uids(c->st, fp.id, 0) < 0)
				goto state_err_rb;
			fp.a_uidnext = 0;
			fp.a_hms = 0;
			fp.last_done = 0;
		}
		if (dst_changed) {
			log_warn("%s: destination UIDVALIDITY changed (%u to %u): re-pairing by "
			    "content", e->dst_path, fp.b_uidvalidity, c->dstt.uidvalidity);
			if (state_pair_forget_uids(c->st, fp.id, 1) < 0)
				goto state_err_rb;
			fp.b_uidnext = 0;
			fp.b_hms = 0;
			fp.last_done = 0;
		}
		fp.a_uidvalidity = sst.uidvalidity;
		/* A new destination UIDVALIDITY is recorded only once the
		 * re-pairing below is durable: a run that dies before must
		 * re-pair again, or the rows stay without destination UIDs. */
		if (!dst_changed)
			fp.b_uidvalidity = c->dstt.uidvalidity;
		if (state_pair_save(c->st, &fp) < 0)
			goto state_err_rb;
		if (commit(c) < 0)
			goto state_err;
	}
	c->dst_uidnext = c->dstt.uidnext;

	/* 1. resolve what an interrupted run left pending */
	c->dst_renumbered = dst_changed;
	r = resolve(c, &fp, RESOLVE_CRASH, &requeue, NULL);
	c->dst_renumbered = false;
	if (r == STORE_OK && dst_changed) {
		r = resolve(c, &fp, RESOLVE_REPAIR, &requeue, NULL);
		fp.b_uidvalidity = c->dstt.uidvalidity;
		if (r == STORE_OK && state_pair_save(c->st, &fp) < 0)
			goto state_err;
	}
	if (r == STORE_FATAL)
		goto state_err;
	if (r)
		goto out;
	c->orphans = state_pair_orphans(c->st, fp.id);
	if (c->orphans < 0)
		goto state_err;
	int64_t counts[3];
	if (state_pair_counts(c->st, fp.id, counts) < 0)
		goto state_err;

	/* 2. the fast path: nothing new, no flag changed */
	/* (POP3 has no UIDs that last: always a full listing) */
	bool unchanged_uids = fp.last_done && sst.uidnext == fp.a_uidnext &&
	    !c->src->caps.pop3;
	if (unchanged_uids && !requeue.n && !counts[MSG_REFUSED] && !c->orphans &&
	    ((sst.highestmodseq && sst.highestmodseq == fp.a_hms) ||
		(c->o->no_flag_sync && sst.exists == fp.a_exists))) {
		/* nothing to record either: the marks are what they were */
		fr->skipped_fast = true;
		fr->already = (uint64_t)counts[MSG_SYNCED];
		r = STORE_OK;
		goto out;
	}

	/* 3. scan the source */
	sc.c = c;
	sc.folder = e->src_path;
	sc.pair = fp.id;
	uint64_t since = fp.last_done && fp.a_hms && sst.highestmodseq ? fp.a_hms : 0;
	r = c->src->ops->scan(c->src, 1, since, SCAN_FLAGS | SCAN_SIZE, scan_cb, &sc);
	if (sc.err)
		goto state_err;
	if (r) {
		c->failed = c->src; /* to reconnect, or to report its error */
		goto out;
	}
	fr->already = since ? (uint64_t)counts[MSG_SYNCED] : sc.already;
	for (size_t i = 0; i < requeue.n; i++)
		uidvec_push(&sc.to_copy, requeue.v[i], requeue.size[i]);
	if (counts[MSG_REFUSED] &&
	    state_msgs_each(c->st, fp.id, MSG_REFUSED, collect_refused, &sc.to_copy) < 0)
		goto state_err;
	uidvec_sort_unique(&sc.to_copy);
	{
		uint64_t tb = 0;
		for (size_t i = 0; i < sc.to_copy.n; i++)
			tb += sc.to_copy.size[i];
		__atomic_store_n(&fr->todo_bytes, fr->bytes + tb, __ATOMIC_RELAXED);
		__atomic_store_n(&fr->todo, fr->copied + sc.to_copy.n, __ATOMIC_RELAXED);
	}
	if (sc.to_copy.n)
		log_info("%s: %zu message%s to copy", e->src_path, sc.to_copy.n,
		    sc.to_copy.n == 1 ? "" : "s");

	/* 4. copy in batches */
	size_t tried = 0;
	r = copy_batches(c, &fp, e, sc.to_copy.v, sc.to_copy.size, sc.to_copy.n, fr, err_r,
	    &tried);
	if (r && c->overquota && *err_r) {
		char *q = *err_r;
		size_t left = sc.to_copy.n - tried;
		*err_r = xasprintf("%s; the run stops: %zu more message%s of this folder "
		    "not tried, folders not yet started not copied (rerun when there is "
		    "room)", q, left, left == 1 ? "" : "s");
		free(q);
	}
	if (r)
		goto out;
	if (copier_stop) {
		__atomic_store_n(&c->rep->interrupted, true, __ATOMIC_RELAXED); /* any worker */
		goto out;
	}

	/* 5. flag changes made at the source */
	r = push_flags(c, &sc, fr, err_r);
	if (r)
		goto out;

	/* Only a complete pass moves the marks the fast path compares with. */
	if (copier_stop) {
		__atomic_store_n(&c->rep->interrupted, true, __ATOMIC_RELAXED); /* any worker */
		goto out;
	}
	fp.a_uidnext = sst.uidnext;
	fp.a_hms = sst.highestmodseq;
	fp.a_exists = sst.exists;
	fp.b_uidnext = c->dst_uidnext;
	fp.b_hms = c->dstt.highestmodseq;
	fp.b_exists = c->dstt.exists;
	fp.last_done = (int64_t)time(NULL);
	/* orphans no message of this complete pass claimed are gone from
	 * the source (their copies stay at the destination) */
	if (c->orphans > 0 && state_pair_retire_orphans(c->st, fp.id, fp.last_done) < 0)
		goto state_err;
	if (state_pair_save(c->st, &fp) < 0)
		goto state_err;
	copier_test_step();
	r = STORE_OK;
	goto out;

state_err_rb:
	state_rollback(c->st);
state_err:
	r = state_failed(c, err_r);
out:
	if (c->dropped.nkw && !fr->dropped_keywords) {
		fr->dropped_keywords = flagset_format(&c->dropped);
		log_warn("%s: the destination does not keep the keywords %s: messages were "
		    "copied without them", e->dst_path, fr->dropped_keywords);
	}
	flagset_clear(&c->dropped);
	flagset_clear(&c->dst_kw);
	uidl_map_clear(c);
	dups_free(c);
	for (size_t i = 0; i < sc.nchanges; i++) {
		free(sc.changes[i].old_flags);
		free(sc.changes[i].new_flags);
	}
	free(sc.changes);
	uidvec_free(&sc.to_copy);
	uidvec_free(&requeue);
	box_status_clear(&sst);
	fpair_release(&fp);
	return r;
}

/* ------------------------------------------------------------------ */

/*
 * Before any worker starts: one STATUS per folder and side, pipelined (one
 * round trip per side for all folders, store.h), for two things.
 *
 * The fast path without selecting anything: the STATUS on each side says
 * the folder pair is as the last complete pass left it (UIDVALIDITY both
 * sides, UIDNEXT and HIGHESTMODSEQ at the source) and the state has nothing
 * pending, refused or to re-pair. Such a folder needs no worker at all, so
 * a rerun on an unchanged account costs two round trips, not two a folder.
 *
 * The order of work: the biggest folders first (by message count at the
 * source), so that the last folder to finish is a small one and no worker
 * is left alone with a big folder at the end.
 *
 * How many connections are worth opening: *work_r gets an estimate of
 * the messages to copy (new UIDs at the source) and *rtt_ms_r the time the
 * source's STATUS round trip took.
 *
 * Sets done[i] for pairs that can be skipped and weight[i] to the source
 * folder's message count. A failed STATUS just means no fast path.
 */
static void prepass(struct copier *c, const struct plan *plan, bool *done,
    uint32_t *weight, struct copy_report *rep, const size_t *slot, uint64_t *work_r,
    int64_t *rtt_ms_r)
{
	size_t n = plan->n;
	*work_r = UINT64_MAX;
	*rtt_ms_r = -1;
	if (c->src->caps.pop3 || !n)
		return;
	const char **names = xcalloc(n, sizeof *names);
	size_t *at = xcalloc(n, sizeof *at);
	struct box_status *ss = xcalloc(n, sizeof *ss);
	struct box_status *ds = xcalloc(n, sizeof *ds);
	enum store_rc *rcs = xcalloc(n, sizeof *rcs);
	struct fpair *fp = xcalloc(n, sizeof *fp);
	size_t m = 0;
	for (size_t i = 0; i < n; i++)
		if (plan->v[i].action != PLAN_SKIP && !done[i]) {
			names[m] = plan->v[i].src_name;
			at[m++] = i;
		}
	int64_t t0 = now_ms();
	if (store_status_many(c->src, names, m, ss, rcs) == STORE_CONN_BAD)
		log_debug("source: STATUS: %s", store_error(c->src));
	else
		*rtt_ms_r = now_ms() - t0;
	uint64_t work = 0;
	/* which pairs could be skipped, if the destination agrees */
	size_t k = 0;
	for (size_t q = 0; q < m; q++) {
		size_t i = at[q];
		const struct plan_entry *e = &plan->v[i];
		if (rcs[q] != STORE_OK) {
			work = UINT64_MAX;
			continue;
		}
		weight[i] = ss[q].exists;
		if (e->action != PLAN_COPY ||
		    state_pair_find(c->st, e->src_name, e->dst_name, &fp[i]) <= 0 ||
		    !fp[i].last_done || fp[i].a_uidvalidity != ss[q].uidvalidity ||
		    ss[q].uidnext < fp[i].a_uidnext) {
			if (work != UINT64_MAX)
				work += ss[q].exists;
			continue;
		}
		if (work != UINT64_MAX)
			work += ss[q].uidnext - fp[i].a_uidnext;
		/* (a complete pass, the same UIDVALIDITY: checked above) */
		if (fp[i].a_hms && ss[q].uidnext == fp[i].a_uidnext &&
		    ss[q].highestmodseq == fp[i].a_hms) {
			names[k] = e->dst_name;
			at[k++] = i;
		}
	}
	for (size_t q = 0; q < m; q++)
		box_status_clear(&ss[q]);
	*work_r = work;
	t0 = now_ms();
	if (k && store_status_many(c->dst, names, k, ds, rcs) == STORE_CONN_BAD)
		log_debug("destination: STATUS: %s", store_error(c->dst));
	else if (k && now_ms() - t0 < *rtt_ms_r)
		*rtt_ms_r = now_ms() - t0; /* the nearer of the two */
	for (size_t q = 0; q < k; q++) {
		size_t i = at[q];
		int64_t counts[3];
		if (rcs[q] != STORE_OK || ds[q].uidvalidity != fp[i].b_uidvalidity ||
		    state_pair_counts(c->st, fp[i].id, counts) < 0 || counts[MSG_PENDING] ||
		    counts[MSG_REFUSED] || state_pair_orphans(c->st, fp[i].id) != 0)
			continue;
		struct folder_report *fr = &rep->folders[slot[i]];
		fr->skipped_fast = true;
		fr->already = (uint64_t)counts[MSG_SYNCED];
		done[i] = true;
	}
	for (size_t q = 0; q < k; q++)
		box_status_clear(&ds[q]);
	for (size_t i = 0; i < n; i++)
		fpair_release(&fp[i]);
	free(fp);
	free(rcs);
	free(ds);
	free(ss);
	free(at);
	free(names);
}

/* ------------------------------------------------------------------ */
/* transfers, for the mirror: the copier's exactly-once machinery, either way */

struct xfer {
	struct copier c;
};

struct xfer *xfer_new(struct store *from, struct store *to, struct state *st, int dir,
    const struct copy_opts *o, struct copy_report *rep, pthread_mutex_t *lock)
{
	struct xfer *x = xcalloc(1, sizeof *x);
	x->c.src = from;
	x->c.dst = to;
	x->c.dir = dir;
	x->c.st = st;
	x->c.o = o;
	x->c.rep = rep;
	x->c.lock = lock;
	x->c.spool.fd = x->c.next.fd = x->c.vspool.fd = -1;
	if (spool_open(&x->c.spool) < 0 || spool_open(&x->c.next) < 0 ||
	    spool_open(&x->c.vspool) < 0) {
		xfer_free(&x);
		return NULL;
	}
	return x;
}

void xfer_free(struct xfer **xp)
{
	struct xfer *x = *xp;
	if (!x)
		return;
	spool_close(&x->c.spool);
	spool_close(&x->c.next);
	spool_close(&x->c.vspool);
	box_status_clear(&x->c.dstt);
	flagset_clear(&x->c.dropped);
	flagset_clear(&x->c.dst_kw);
	uidl_map_clear(&x->c);
	dups_free(&x->c);
	free(x);
	*xp = NULL;
}

void xfer_target(struct xfer *x, const struct box_status *target)
{
	struct copier *c = &x->c;
	box_status_clear(&c->dstt);
	c->dstt = *target;
	memset(&c->dstt.perm_keywords, 0, sizeof c->dstt.perm_keywords);
	flagset_copy(&c->dstt.perm_keywords, &target->perm_keywords);
	flagset_clear(&c->dst_kw);
	c->dst_uidnext = target->uidnext;
}

enum store_rc xfer_resolve(struct xfer *x, struct fpair *fp, char **err_r)
{
	enum store_rc r = resolve(&x->c, fp, RESOLVE_CRASH, NULL, NULL);
	if (r == STORE_FATAL && err_r && !*err_r)
		*err_r = xasprintf("state DB: %s", state_error(x->c.st));
	return r;
}

enum store_rc xfer_copy(struct xfer *x, struct fpair *fp, const struct plan_entry *e,
    const uint32_t *uids, const uint64_t *sizes, size_t n, struct folder_report *fr,
    char **err_r)
{
	size_t tried;
	return copy_batches(&x->c, fp, e, uids, sizes, n, fr, err_r, &tried);
}

struct store *xfer_failed(const struct xfer *x)
{
	return x->c.failed;
}

void xfer_clear_failed(struct xfer *x)
{
	x->c.failed = NULL;
}

/* ------------------------------------------------------------------ */
/* workers: folders are spread over several connections per side */

/* Below both, a run keeps to the connections it has (copy_run). */
#define LIGHT_WORK 200   /* new messages at the source, at most */
#define NEAR_RTT_MS 15   /* the prepass's STATUS round trip: a 20 ms link
                            is above, a busy machine's loopback below */

struct job {
	pthread_mutex_t lock;
	const struct plan *plan;
	const struct copy_opts *o;
	struct copy_report *rep;
	size_t next;              /* next in order[] to take */
	size_t *order;            /* plan entries, biggest folder first */
	size_t *slot;             /* plan entry -> its folder report */
	bool *done;               /* plan entry needs no worker (unchanged) */
	enum store_rc result;
	char *err;
	bool abort;               /* a fatal failure: everybody stops */
	bool creating;            /* folders are being created: wait */
	pthread_cond_t created;   /* signalled when creating ends */
};

struct worker {
	struct job *job;
	struct copier c;
	bool own;                 /* stores and state are this worker's */
	const struct copier *first; /* whose accounts an own worker connects to */
	pthread_t thread;
};

/* Takes the next folder, or returns NULL when there is none left. */
static struct plan_entry *next_entry(struct job *j, struct folder_report **fr_r)
{
	struct plan_entry *e = NULL;
	pthread_mutex_lock(&j->lock);
	while (j->creating && !j->abort && !copier_stop)
		pthread_cond_wait(&j->created, &j->lock);
	while (!j->abort && !copier_stop && j->next < j->plan->n) {
		size_t i = j->order[j->next++];
		if (j->plan->v[i].action == PLAN_SKIP || j->done[i])
			continue;
		e = &j->plan->v[i];
		*fr_r = &j->rep->folders[j->slot[i]];
		break;
	}
	pthread_mutex_unlock(&j->lock);
	return e;
}

static void copy_one(struct worker *w, struct plan_entry *e, struct folder_report *fr)
{
	struct job *j = w->job;
	struct copier *c = &w->c;
	char *err = NULL;
	enum store_rc r;
	int tries = 0;
	c->overquota = false;
	__atomic_store_n(&fr->phase, 1, __ATOMIC_RELAXED);
	for (;;) {
		c->failed = NULL;
		r = copy_folder(c, e, fr, &err);
		if (r != STORE_CONN_BAD || copier_stop || tries++ >= j->o->max_retries)
			break;
		struct store *s = c->failed ? c->failed : c->dst;
		log_warn("%s: %s; reconnecting", s->label, store_error(s));
		r = store_reconnect(s, 3);
		if (r)
			break;
	}
	if (!r) {
		__atomic_store_n(&fr->phase, 2, __ATOMIC_RELAXED);
		return;
	}
	struct store *s = c->failed ? c->failed : (r == STORE_BOX_BAD ? c->dst : c->src);
	fr->failed = true;
	fr->error = xstrdup(err ? err : store_error(s));
	pthread_mutex_lock(&j->lock);
	if (r == STORE_FATAL || r == STORE_CONN_BAD) {
		/* the run cannot go on: keep the first such failure */
		if (j->result != STORE_FATAL && j->result != STORE_CONN_BAD) {
			j->result = r;
			free(j->err);
			j->err = xstrdup(fr->error);
		}
		j->abort = true;
	} else {
		log_error("%s: %s", e->src_path, fr->error);
		if (j->result == STORE_OK)
			j->result = STORE_BOX_BAD;
		if (c->overquota)
			j->abort = true; /* every folder is in the same account */
	}
	pthread_mutex_unlock(&j->lock);
	free(err);
	__atomic_store_n(&fr->phase, 2, __ATOMIC_RELAXED);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct plan_entry *e;
	struct folder_report *fr;
	while ((e = next_entry(w->job, &fr)))
		copy_one(w, e, fr);
	return NULL;
}

static int worker_open(struct worker *w, const struct copier *first);

/* An extra worker: its own connections first (a server that refuses them
 * just means fewer workers), then folders from the queue. */
static void *worker_thread(void *arg)
{
	struct worker *w = arg;
	if (worker_open(w, w->first) < 0)
		return NULL;
	return worker_main(w);
}

struct connecting {
	struct store *s;
	enum store_rc rc;
};

static void *connect_main(void *arg)
{
	struct connecting *k = arg;
	k->rc = store_connect(k->s);
	return NULL;
}

/* A worker of its own: new connections and a state handle. Returns -1 if
 * it cannot have them (a server's connection limit, say): the run goes on
 * with fewer workers. Both connections are set up at the same time. */
static int worker_open(struct worker *w, const struct copier *first)
{
	struct copier *c = &w->c;
	c->src = store_new(first->src->url, &first->src->opts, first->src->label);
	c->dst = store_new(first->dst->url, &first->dst->opts, first->dst->label);
	if (!c->src || !c->dst)
		return -1;
	struct connecting k = {c->dst, STORE_CONN_BAD};
	pthread_t t;
	bool threaded = pthread_create(&t, NULL, connect_main, &k) == 0;
	enum store_rc rs = store_connect(c->src);
	if (threaded)
		pthread_join(t, NULL);
	else
		connect_main(&k);
	if (rs != STORE_OK || k.rc != STORE_OK) {
		log_info("extra connection refused (%s); going on with fewer",
		    rs != STORE_OK ? store_error(c->src) : store_error(c->dst));
		return -1;
	}
	char *err = NULL;
	if (state_open(&c->st, state_path(first->st), STATE_NOLOCK, &err) != STATE_OPEN_OK) {
		log_warn("state DB: %s", err ? err : "cannot open");
		free(err);
		return -1;
	}
	return 0;
}

static void worker_close(struct worker *w)
{
	struct copier *c = &w->c;
	spool_close(&c->spool);
	spool_close(&c->next);
	spool_close(&c->vspool);
	box_status_clear(&c->dstt);
	if (w->own) {
		store_free(&c->src);
		store_free(&c->dst);
		state_close(&c->st);
	}
}

/* The progress display's clock: a thread that calls o->progress. */
struct ticker {
	const struct copy_opts *o;
	const struct copy_report *rep;
	int stop;
	pthread_t thread;
	bool started;
};

static void *ticker_main(void *arg)
{
	struct ticker *t = arg;
	int ms = t->o->progress_ms > 0 ? t->o->progress_ms : 1000;
	for (;;) {
		for (int waited = 0; waited < ms; waited += 50) {
			if (__atomic_load_n(&t->stop, __ATOMIC_ACQUIRE))
				return NULL;
			struct timespec ts = {0, 50 * 1000000L};
			nanosleep(&ts, NULL);
		}
		t->o->progress(t->o->progress_ctx, t->rep, false);
	}
}

enum store_rc copy_run(struct store *src, struct store *dst, struct state *st,
    const struct plan *plan, const struct copy_opts *o, struct copy_report *rep,
    char **err_r)
{
	struct ticker tick = {o, rep, 0, 0, false};
	struct job j;
	memset(&j, 0, sizeof j);
	memset(rep, 0, sizeof *rep);
	pthread_mutex_init(&j.lock, NULL);
	test_step_init();
	/* This run's copy of the entries: a folder created under an escaped
	 * name goes there (create_folder). The strings stay the plan's. */
	struct plan run_plan = *plan;
	run_plan.v = xcalloc(plan->n ? plan->n : 1, sizeof *run_plan.v);
	if (plan->n)
		memcpy(run_plan.v, plan->v, plan->n * sizeof *plan->v);
	j.plan = &run_plan;
	j.o = o;
	j.rep = rep;
	rep->started_ms = now_ms();
	*err_r = NULL;

	rep->folders = xcalloc(plan->n ? plan->n : 1, sizeof *rep->folders);
	j.slot = xcalloc(plan->n ? plan->n : 1, sizeof *j.slot);
	for (size_t i = 0; i < plan->n; i++) {
		if (plan->v[i].action == PLAN_SKIP)
			continue;
		j.slot[i] = rep->nfolders;
		struct folder_report *fr = &rep->folders[rep->nfolders++];
		fr->src_path = xstrdup(plan->v[i].src_path);
		fr->dst_path = xstrdup(plan->v[i].dst_path);
	}

	/* Subscriptions are copied where the source tells them: a source
	 * with no folder subscribed at all (or POP3) tells nothing, and every
	 * folder created is subscribed then. */
	bool subs_known = false;
	for (size_t i = 0; i < plan->n && !src->caps.pop3; i++)
		if (plan->v[i].src_attrs & FA_SUBSCRIBED)
			subs_known = true;

	j.done = xcalloc(plan->n ? plan->n : 1, sizeof *j.done);
	j.order = xcalloc(plan->n ? plan->n : 1, sizeof *j.order);
	pthread_cond_init(&j.created, NULL);
	enum store_rc result = STORE_OK;

	if (o->progress)
		tick.started = pthread_create(&tick.thread, NULL, ticker_main, &tick) == 0;

	/* Unchanged folders are settled here, on the caller's connections:
	 * only what has work gets a worker; the biggest folders go first. */
	size_t todo = 0;
	uint64_t work = UINT64_MAX;
	int64_t rtt_ms = -1;
	{
		uint32_t *weight = xcalloc(plan->n ? plan->n : 1, sizeof *weight);
		struct copier probe = {0};
		probe.src = src;
		probe.dst = dst;
		probe.st = st;
		if (!copier_stop)
			prepass(&probe, &run_plan, j.done, weight, rep, j.slot, &work, &rtt_ms);
		for (size_t i = 0; i < plan->n; i++) {
			j.order[i] = i;
			todo += run_plan.v[i].action != PLAN_SKIP && !j.done[i];
		}
		/* insertion sort, stable: plan order among equals */
		for (size_t i = 1; i < plan->n; i++) {
			size_t v = j.order[i], q = i;
			for (; q > 0 && weight[j.order[q - 1]] < weight[v]; q--)
				j.order[q] = j.order[q - 1];
			j.order[q] = v;
		}
		free(weight);
	}

	/* No more workers than folders; the first uses the caller's stores.
	 * The others connect in their own threads right away, all at the same
	 * time, while this thread creates folders; they take folders once the
	 * creating is over. */
	unsigned n = o->jobs ? o->jobs : 1;
	if (n > todo)
		n = todo ? (unsigned)todo : 1;
	/* A small change on a near link is done sooner on the connections
	 * already open than after setting up more (each is a TLS handshake:
	 * ~10-30 ms of CPU on both ends; a 1% incremental touches most folders
	 * with a few messages each). More connections pay when there is much
	 * to move, or when round trips are dear. */
	if (n > 1 && o->jobs_auto && work < LIGHT_WORK && rtt_ms >= 0 && rtt_ms < NEAR_RTT_MS)
		n = 1;
	if (o->jobs_auto && todo)
		log_debug("connections per side: %u (new messages: %" PRId64 " at most; STATUS "
		    "round trip: %" PRId64 " ms)", n, work == UINT64_MAX ? (int64_t)-1 :
		    (int64_t)work, rtt_ms);
	struct worker *w = xcalloc(n, sizeof *w);
	unsigned started = 0;
	for (unsigned i = 0; i < n; i++) {
		w[i].job = &j;
		w[i].c.subs_known = subs_known;
		w[i].c.o = o;
		w[i].c.rep = rep;
		w[i].c.lock = &j.lock;
		if (i == 0) {
			w[i].c.src = src;
			w[i].c.dst = dst;
			w[i].c.st = st;
		} else {
			w[i].own = true;
			w[i].first = &w[0].c;
		}
		w[i].c.spool.fd = w[i].c.next.fd = w[i].c.vspool.fd = -1;
		if (spool_open(&w[i].c.spool) < 0 || spool_open(&w[i].c.next) < 0 ||
		    spool_open(&w[i].c.vspool) < 0) {
			*err_r = xasprintf("cannot create a spool file in %s: %s",
			    getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", strerror(errno));
			result = STORE_FATAL;
			worker_close(&w[i]);
			break;
		}
		started++;
	}
	j.creating = true;
	if (result == STORE_OK)
		for (unsigned i = 1; i < started; i++)
			if (pthread_create(&w[i].thread, NULL, worker_thread, &w[i]) != 0) {
				worker_close(&w[i]);
				w[i].c.src = NULL;
				started = i;
				break;
			}

	/* Folders are created before any is copied, on one connection: some
	 * servers do not take concurrent CREATEs well (Dovecot panics on its
	 * list index lock in a new account). The CREATEs are pipelined (one
	 * round trip for all); a folder whose CREATE failed is done again on
	 * its own, which tells one that exists from one that cannot be made
	 * (and tries the escaped name). A folder that cannot be created fails
	 * here; after a lost connection a worker tries again. */
	if (result == STORE_OK) {
		struct copier mk = {0};
		mk.src = src;
		mk.dst = dst;
		mk.st = st;
		mk.subs_known = subs_known;
		size_t nc = 0;
		const char **names = xcalloc(plan->n ? plan->n : 1, sizeof *names);
		bool *sub = xcalloc(plan->n ? plan->n : 1, sizeof *sub);
		enum store_rc *crc = xcalloc(plan->n ? plan->n : 1, sizeof *crc);
		char **cerr = xcalloc(plan->n ? plan->n : 1, sizeof *cerr);
		/* several source folders may go into one (--map): the first
		 * is in the pipeline, the others go the single way below */
		for (size_t i = 0; i < plan->n; i++) {
			if (run_plan.v[i].action != PLAN_CREATE)
				continue;
			bool seen = false;
			for (size_t q = 0; q < nc && !seen; q++)
				seen = !strcmp(names[q], run_plan.v[i].dst_name);
			if (seen)
				continue;
			names[nc] = run_plan.v[i].dst_name;
			sub[nc++] = !subs_known || (run_plan.v[i].src_attrs & FA_SUBSCRIBED);
		}
		if (nc && !copier_stop)
			store_create_many(dst, names, sub, nc, crc, cerr);
		for (size_t i = 0; i < plan->n && !copier_stop; i++) {
			if (run_plan.v[i].action != PLAN_CREATE)
				continue;
			struct folder_report *fr = &rep->folders[j.slot[i]];
			size_t q = 0;
			while (q < nc && names[q] != run_plan.v[i].dst_name)
				q++;
			char *err = NULL;
			enum store_rc cr;
			if (q < nc && crc[q] == STORE_OK)
				cr = STORE_OK;
			else if (q < nc && crc[q] == STORE_BOX_BAD && cerr[q])
				cr = create_escaped(&mk, &run_plan.v[i], fr, xstrdup(cerr[q]), &err);
			else
				cr = create_folder(&mk, &run_plan.v[i], fr, &err);
			if (cr == STORE_OK) {
				fr->created = true;
			} else if (cr == STORE_BOX_BAD) {
				fr->failed = true;
				fr->error = err ? err : xstrdup(store_error(dst));
				err = NULL;
				log_error("%s: %s", fr->src_path, fr->error);
				pthread_mutex_lock(&j.lock);
				j.done[i] = true;
				j.result = STORE_BOX_BAD;
				pthread_mutex_unlock(&j.lock);
			}
			free(err);
		}
		for (size_t q = 0; q < nc; q++)
			free(cerr[q]);
		free(cerr);
		free(crc);
		free(sub);
		free(names);
	}
	pthread_mutex_lock(&j.lock);
	j.creating = false;
	pthread_cond_broadcast(&j.created);
	pthread_mutex_unlock(&j.lock);

	if (result == STORE_OK) {
		/* worker 0 runs on this thread */
		worker_main(&w[0]);
		for (unsigned i = 1; i < started; i++)
			pthread_join(w[i].thread, NULL);
		result = j.result;
		if (j.err)
			*err_r = j.err;
		j.err = NULL;
	}
	for (unsigned i = 0; i < started; i++)
		worker_close(&w[i]);
	free(w);
	if (tick.started) {
		__atomic_store_n(&tick.stop, 1, __ATOMIC_RELEASE);
		pthread_join(tick.thread, NULL);
	}

	for (size_t i = 0; i < rep->nfolders; i++) {
		struct folder_report *fr = &rep->folders[i];
		rep->copied += fr->copied;
		rep->bytes += fr->bytes;
		rep->flags_set += fr->flags_set;
		rep->already += fr->already;
		rep->refused += fr->refused;
		rep->duplicates += fr->duplicates;
		rep->failed_folders += fr->failed;
	}
	if (copier_stop)
		rep->interrupted = true;
	rep->ended_ms = now_ms();
	if (o->progress)
		o->progress(o->progress_ctx, rep, true);
	free(j.err);
	free(j.slot);
	free(j.done);
	free(j.order);
	free(run_plan.v);
	pthread_cond_destroy(&j.created);
	pthread_mutex_destroy(&j.lock);
	return result;
}

void copy_report_free(struct copy_report *r)
{
	for (size_t i = 0; i < r->nfolders; i++) {
		free(r->folders[i].src_path);
		free(r->folders[i].dst_path);
		free(r->folders[i].error);
		free(r->folders[i].dropped_keywords);
	}
	free(r->folders);
	for (size_t i = 0; i < r->nrefusals; i++) {
		free(r->refusals[i].folder);
		free(r->refusals[i].reason);
	}
	free(r->refusals);
	memset(r, 0, sizeof *r);
}
