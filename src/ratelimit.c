/*
 * ratelimit.c — a shared schedule for message and byte rates.
 */
#include "ratelimit.h"

#include <time.h>

static double mono_now(void *ctx)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void mono_sleep(void *ctx, double s)
{
	struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
	while (nanosleep(&ts, &ts) != 0)
		;
}

void ratelimit_init(struct ratelimit *r, double msgs_per_s, double bytes_per_s)
{
	pthread_mutex_init(&r->lock, NULL);
	r->msgs_per_s = msgs_per_s;
	r->bytes_per_s = bytes_per_s;
	r->next = 0;
	r->now = mono_now;
	r->sleep = mono_sleep;
	r->ctx = NULL;
}

void ratelimit_destroy(struct ratelimit *r)
{
	pthread_mutex_destroy(&r->lock);
}

double ratelimit_take(struct ratelimit *r, uint64_t n, uint64_t b)
{
	if (r->msgs_per_s <= 0 && r->bytes_per_s <= 0)
		return 0;
	double need = 0;
	if (r->msgs_per_s > 0)
		need = (double)n / r->msgs_per_s;
	if (r->bytes_per_s > 0 && (double)b / r->bytes_per_s > need)
		need = (double)b / r->bytes_per_s;
	pthread_mutex_lock(&r->lock);
	double now = r->now(r->ctx);
	double start = r->next > now ? r->next : now;
	r->next = start + need;
	pthread_mutex_unlock(&r->lock);
	/* the slot is [start, start + need): waiting until its end keeps
	 * every window at or below the rate */
	double wait = start + need - now;
	if (wait > 0)
		r->sleep(r->ctx, wait);
	return wait > 0 ? wait : 0;
}
