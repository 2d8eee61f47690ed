/*
 * test_ratelimit.c — the shared rate schedule, on a simulated clock: over
 * any stretch, messages and bytes stay at or below the limits.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ratelimit.h"

struct sim {
	double t;
};

static double sim_now(void *ctx)
{
	return ((struct sim *)ctx)->t;
}

static void sim_sleep(void *ctx, double s)
{
	((struct sim *)ctx)->t += s;
}

static void use_sim(struct ratelimit *r, struct sim *s)
{
	r->now = sim_now;
	r->sleep = sim_sleep;
	r->ctx = s;
}

static void test_unlimited(void **unused)
{
	struct ratelimit r;
	struct sim s = {100};
	ratelimit_init(&r, 0, 0);
	use_sim(&r, &s);
	assert_true(ratelimit_take(&r, 1000, 1 << 30) == 0);
	assert_true(s.t == 100);
	ratelimit_destroy(&r);
}

/* 10 messages a second: 100 messages in batches of 10 take 10 s; after
 * each batch, messages sent <= 10 x elapsed. */
static void test_messages(void **unused)
{
	struct ratelimit r;
	struct sim s = {0};
	ratelimit_init(&r, 10, 0);
	use_sim(&r, &s);
	uint64_t sent = 0;
	for (int i = 0; i < 10; i++) {
		ratelimit_take(&r, 10, 1000);
		sent += 10;
		assert_true((double)sent <= 10 * s.t + 1e-9);
	}
	assert_true(s.t > 9.999 && s.t < 10.001);
	ratelimit_destroy(&r);
}

/* Bytes: 1 MB/s; a 5 MB message alone waits 5 s; messages are not the
 * binding limit here. */
static void test_bytes(void **unused)
{
	struct ratelimit r;
	struct sim s = {0};
	ratelimit_init(&r, 1000, 1000000);
	use_sim(&r, &s);
	double w = ratelimit_take(&r, 1, 5000000);
	assert_true(w > 4.999 && w < 5.001);
	/* the next small batch comes after it */
	ratelimit_take(&r, 1, 100000);
	assert_true(s.t > 5.099 && s.t < 5.101);
	ratelimit_destroy(&r);
}

/* Idle time does not build up a burst allowance. */
static void test_no_burst_after_idle(void **unused)
{
	struct ratelimit r;
	struct sim s = {0};
	ratelimit_init(&r, 2, 0);
	use_sim(&r, &s);
	ratelimit_take(&r, 2, 0);   /* t = 1 */
	s.t += 100;                 /* idle */
	double t0 = s.t;
	ratelimit_take(&r, 10, 0);  /* 10 messages at 2/s: 5 s */
	assert_true(s.t - t0 > 4.999 && s.t - t0 < 5.001);
	ratelimit_destroy(&r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_unlimited),
		cmocka_unit_test(test_messages),
		cmocka_unit_test(test_bytes),
		cmocka_unit_test(test_no_burst_after_idle),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
