/*
 * store.c — what every store backend shares: construction, errors,
 * reconnection with backoff.
 */
#include "store.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <time.h>

#include "log.h"
#include "util.h"

struct store *store_new(const struct account_url *u, const struct store_opts *o,
    const char *label)
{
	struct store *s;
	switch (u->proto) {
	case PROTO_IMAP:
		s = store_imap_new(u, o);
		break;
	case PROTO_POP3:
		s = store_pop3_new(u, o);
		break;
	default:
		return NULL;
	}
	s->label = label;
	return s;
}

void store_free(struct store **sp)
{
	struct store *s = *sp;
	if (!s)
		return;
	s->ops->disconnect(s);
	free(s->error);
	free(s->ns.prefix);
	s->ops->free(s);
	*sp = NULL;
}

const char *store_error(const struct store *s)
{
	return s->error ? s->error : "no error";
}

enum store_rc store_fail(struct store *s, enum store_rc rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *msg = xvasprintf(fmt, ap);
	va_end(ap);
	free(s->error);
	s->error = msg;
	return rc;
}

/* Longest wait a server's throttling request gets (jitter comes on top). */
#define BACKOFF_CAP_MS 300000L

/* Sleeps as long as the server asked (capped, plus up to 10% jitter so
 * that parallel connections do not all come back at once). */
static void honour_backoff(struct store *s)
{
	long ms = s->backoff_ms;
	s->backoff_ms = 0;
	if (ms <= 0)
		return;
	if (ms > BACKOFF_CAP_MS)
		ms = BACKOFF_CAP_MS;
	ms += rand() % (ms / 10 + 1);
	log_warn("%s: the server asked to back off; waiting %ld ms", s->label, ms);
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

enum store_rc store_reconnect(struct store *s, int max_tries)
{
	enum store_rc rc = STORE_CONN_BAD;
	int delay_ms = 500;
	for (int i = 0; i < max_tries; i++) {
		s->ops->disconnect(s);
		honour_backoff(s);
		if (i > 0) {
			/* exponential backoff with jitter, capped at 30 s */
			int j = delay_ms / 2 + rand() % (delay_ms / 2 + 1);
			log_info("%s: reconnecting in %d ms", s->label, j);
			struct timespec ts = { j / 1000, (long)(j % 1000) * 1000000L };
			nanosleep(&ts, NULL);
			delay_ms = delay_ms * 2 > 30000 ? 30000 : delay_ms * 2;
		}
		rc = s->ops->connect(s);
		if (rc == STORE_OK || rc == STORE_FATAL)
			return rc;
		log_warn("%s: %s", s->label, store_error(s));
	}
	return rc;
}

void store_folder_list_free(struct store_folder_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i].name);
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

void box_status_clear(struct box_status *st)
{
	flagset_clear(&st->perm_keywords);
	*st = (struct box_status){0};
}

/* ------------------------------------------------------------------ */
/* batched calls: pipelined by the backend, or one at a time here */

enum store_rc store_status_many(struct store *s, const char *const *names, size_t n,
    struct box_status *st, enum store_rc *rcs)
{
	if (s->ops->status_many)
		return s->ops->status_many(s, names, n, st, rcs);
	for (size_t i = 0; i < n; i++)
		rcs[i] = STORE_CONN_BAD;
	for (size_t i = 0; i < n; i++) {
		rcs[i] = s->ops->status(s, names[i], &st[i]);
		if (rcs[i] == STORE_CONN_BAD || rcs[i] == STORE_FATAL)
			return rcs[i];
	}
	return STORE_OK;
}

enum store_rc store_create_many(struct store *s, const char *const *names,
    const bool *subscribe, size_t n, enum store_rc *rcs, char **errs)
{
	for (size_t i = 0; i < n; i++) {
		rcs[i] = STORE_CONN_BAD;
		errs[i] = NULL;
	}
	if (!s->ops->create_many) {
		for (size_t i = 0; i < n; i++) {
			rcs[i] = s->ops->create(s, names[i], subscribe[i]);
			if (rcs[i] == STORE_BOX_BAD)
				errs[i] = xstrdup(store_error(s));
			if (rcs[i] == STORE_CONN_BAD || rcs[i] == STORE_FATAL)
				return rcs[i];
		}
		return STORE_OK;
	}
	enum store_rc r = s->ops->create_many(s, names, n, rcs, errs);
	if (r != STORE_OK)
		return r;
	/* subscribe what was made, in one more round trip (best effort, as
	 * create() does it) */
	const char **sub = xcalloc(n ? n : 1, sizeof *sub);
	size_t nsub = 0;
	for (size_t i = 0; i < n; i++)
		if (rcs[i] == STORE_OK && subscribe[i])
			sub[nsub++] = names[i];
	if (nsub && s->ops->subscribe_many)
		r = s->ops->subscribe_many(s, sub, nsub);
	free(sub);
	return r == STORE_CONN_BAD ? STORE_CONN_BAD : STORE_OK;
}

enum store_rc store_set_flags_many(struct store *s, struct store_flag_op *ops, size_t n)
{
	if (s->ops->set_flags_many)
		return s->ops->set_flags_many(s, ops, n);
	for (size_t i = 0; i < n; i++)
		ops[i].rc = STORE_CONN_BAD;
	for (size_t i = 0; i < n; i++) {
		ops[i].rc = s->ops->set_flags(s, ops[i].uids, ops[i].n, ops[i].add, ops[i].del);
		if (ops[i].rc == STORE_CONN_BAD || ops[i].rc == STORE_FATAL)
			return ops[i].rc;
	}
	return STORE_OK;
}
