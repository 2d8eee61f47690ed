/*
 * retire.c — POP3 --delete-after: delete only what is safely copied.
 */
#include "retire.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "util.h"

bool retire_eligible(const struct msg_row *r, int64_t now, int keep_days)
{
	if (r->state != MSG_SYNCED || r->a_gone)
		return false;
	if (keep_days <= 0)
		return true;
	return now - r->updated >= (int64_t)keep_days * 86400;
}

struct listed {
	uint32_t num;
	char *uidl;
};

struct list_ctx {
	struct listed *v;
	size_t n, cap;
};

static int collect(void *ctx, const struct msg_info *mi)
{
	struct list_ctx *l = ctx;
	if (!mi->uidl)
		return 0;
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 128;
		l->v = xrealloc(l->v, l->cap * sizeof *l->v);
	}
	l->v[l->n++] = (struct listed){mi->uid, xstrdup(mi->uidl)};
	return 0;
}

static void list_free(struct list_ctx *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i].uidl);
	free(l->v);
	memset(l, 0, sizeof *l);
}

static bool listed_has(const struct list_ctx *l, const char *uidl)
{
	for (size_t i = 0; i < l->n; i++)
		if (!strcmp(l->v[i].uidl, uidl))
			return true;
	return false;
}

enum store_rc retire_run(struct store *src, struct state *st, const struct plan *plan,
    int keep_days, struct retire_report *rep, char **err_r)
{
	memset(rep, 0, sizeof *rep);
	*err_r = NULL;
	const struct plan_entry *e = NULL;
	for (size_t i = 0; i < plan->n && !e; i++)
		if (plan->v[i].action != PLAN_SKIP)
			e = &plan->v[i];
	if (!e)
		return STORE_OK;
	struct fpair fp;
	int f = state_pair_find(st, e->src_name, e->dst_name, &fp);
	if (f < 0) {
		*err_r = xasprintf("state DB: %s", state_error(st));
		return STORE_FATAL;
	}
	if (!f)
		return STORE_OK;

	struct box_status bs;
	memset(&bs, 0, sizeof bs);
	struct list_ctx before = {0}, after = {0};
	int64_t *ids = NULL;
	uint32_t *nums = NULL;
	char **uidls = NULL;
	size_t n = 0;
	enum store_rc rc = src->ops->select(src, e->src_name, false, &bs);
	if (rc == STORE_OK)
		rc = src->ops->scan(src, 1, 0, 0, collect, &before);
	if (rc)
		goto out;
	ids = xcalloc(before.n ? before.n : 1, sizeof *ids);
	nums = xcalloc(before.n ? before.n : 1, sizeof *nums);
	uidls = xcalloc(before.n ? before.n : 1, sizeof *uidls);
	int64_t now = (int64_t)time(NULL);
	for (size_t i = 0; i < before.n; i++) {
		struct msg_row r;
		f = state_msg_by_uidl(st, fp.id, before.v[i].uidl, &r);
		if (f < 0) {
			*err_r = xasprintf("state DB: %s", state_error(st));
			rc = STORE_FATAL;
			goto out;
		}
		if (f && retire_eligible(&r, now, keep_days)) {
			ids[n] = r.id;
			nums[n] = before.v[i].num;
			uidls[n] = before.v[i].uidl;
			n++;
		} else if (f && r.state == MSG_SYNCED) {
			rep->kept++;
		} else {
			rep->not_copied++;
		}
		msg_row_release(&r);
	}
	if (!n)
		goto out;
	log_info("%s: deleting %zu copied message%s from the server", e->src_path, n,
	    n == 1 ? "" : "s");
	rc = src->ops->expunge(src, nums, n);
	if (rc) {
		/* nothing was committed unless QUIT went through; the listing
		 * below (next run) tells */
		goto out;
	}
	rc = src->ops->scan(src, 1, 0, 0, collect, &after);
	if (rc)
		goto out;
	if (state_begin(st) < 0)
		goto state_err;
	for (size_t i = 0; i < n; i++) {
		if (listed_has(&after, uidls[i])) {
			rep->refused++;
			continue;
		}
		if (state_msg_set_gone(st, ids[i], now) < 0) {
			state_rollback(st);
			goto state_err;
		}
		rep->deleted++;
	}
	if (state_commit(st) < 0)
		goto state_err;
	if (rep->refused)
		log_warn("%s: the server kept %llu message%s it was asked to delete",
		    e->src_path, (unsigned long long)rep->refused, rep->refused == 1 ? "" : "s");
	goto out;
state_err:
	*err_r = xasprintf("state DB: %s", state_error(st));
	rc = STORE_FATAL;
out:
	box_status_clear(&bs);
	list_free(&before);
	list_free(&after);
	free(ids);
	free(nums);
	free(uidls);
	fpair_release(&fp);
	return rc;
}
