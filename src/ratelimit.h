/*
 * ratelimit.h — --max-messages-per-second and --max-bytes-per-second: one
 * limit shared by every worker of a run.
 *
 * A schedule, not a bucket that fills up while idle: each call books the
 * time its messages and bytes take at the allowed rates, after what was
 * booked before, and waits until its slot begins. So over any stretch the
 * rate stays at or below the limit, however the calls come.
 */
#ifndef POSTINO_RATELIMIT_H
#define POSTINO_RATELIMIT_H

#include <pthread.h>
#include <stdint.h>

struct ratelimit {
	pthread_mutex_t lock;
	double msgs_per_s;    /* 0: no limit */
	double bytes_per_s;   /* 0: no limit */
	double next;          /* when the next slot begins, in seconds */
	/* the clock and the sleep, replaceable by tests */
	double (*now)(void *ctx);
	void (*sleep)(void *ctx, double seconds);
	void *ctx;
};

void ratelimit_init(struct ratelimit *r, double msgs_per_s, double bytes_per_s);
void ratelimit_destroy(struct ratelimit *r);
/* Waits until n messages of b bytes may go. Returns the seconds waited. */
double ratelimit_take(struct ratelimit *r, uint64_t n, uint64_t b);

#endif
