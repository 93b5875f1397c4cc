/*
 * backoff: retry with full-jitter exponential backoff, as a reusable policy.
 *
 * The delay before retry number n (n >= 1) is uniform in
 * [0, min(cap, base * 2^(n-1))] ("full jitter", AWS Architecture Blog,
 * "Exponential Backoff And Jitter"): clients that failed together spread out
 * instead of retrying in lockstep. A base_ms <= 0 counts as 1 ms; cap_ms <= 0
 * means no cap (the ceiling still stops doubling before it overflows).
 *
 * Pure CPU apart from crypto_random; callable from any thread (a backoff_state
 * belongs to one caller).
 */
#ifndef SLIPWAY_BACKOFF_H
#define SLIPWAY_BACKOFF_H

#include <stdint.h>

struct backoff_policy {
	int64_t base_ms;
	int64_t cap_ms;
	int max_attempts;       /* total attempts including the first; 0 = unlimited */
};

/* Delay before retry `retry` (1 = the first retry; < 1 counts as 1), given a
 * uniform random 64-bit value, scaled (not reduced modulo) onto [0, ceiling]:
 * random 0 gives 0 and UINT64_MAX gives the ceiling. Pure, so tests can pin the
 * jitter. */
int64_t backoff_delay_with(const struct backoff_policy *p, int retry, uint64_t random);

/* Same with a random value from crypto_random (the ceiling if that fails). */
int64_t backoff_delay(const struct backoff_policy *p, int retry);

/* 1 when another attempt is allowed after `attempts_made` attempts. */
int backoff_may_retry(const struct backoff_policy *p, int attempts_made);

/* A state for loops that retry forever (reconnects): call backoff_state_next
 * after each failure for the delay, backoff_state_reset after a success. */
struct backoff_state {
	struct backoff_policy policy;
	int failures;
};
void backoff_state_init(struct backoff_state *s, int64_t base_ms, int64_t cap_ms);
int64_t backoff_state_next(struct backoff_state *s);
void backoff_state_reset(struct backoff_state *s);

#endif
