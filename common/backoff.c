#include "backoff.h"

#include "crypto.h"

/* min(cap, base * 2^(retry-1)) without overflow; cap <= 0 means no cap. */
static int64_t backoff_ceiling(const struct backoff_policy *p, int retry)
{
	if (retry < 1)
		retry = 1;
	int64_t ceiling = p->base_ms > 0 ? p->base_ms : 1;
	for (int i = 1; i < retry; i++) {
		if ((p->cap_ms > 0 && ceiling >= p->cap_ms) || ceiling > INT64_MAX / 2)
			break;
		ceiling *= 2;
	}
	if (p->cap_ms > 0 && ceiling > p->cap_ms)
		ceiling = p->cap_ms;
	return ceiling;
}

/* High 64 bits of a * b, portably (no __int128 on every target we build for). */
static uint64_t mul_hi64(uint64_t a, uint64_t b)
{
	uint64_t a_lo = (uint32_t)a, a_hi = a >> 32, b_lo = (uint32_t)b, b_hi = b >> 32;
	uint64_t lo_lo = a_lo * b_lo, hi_lo = a_hi * b_lo, lo_hi = a_lo * b_hi, hi_hi = a_hi * b_hi;
	uint64_t cross = (lo_lo >> 32) + (uint32_t)hi_lo + lo_hi;
	return hi_hi + (hi_lo >> 32) + (cross >> 32);
}

int64_t backoff_delay_with(const struct backoff_policy *p, int retry, uint64_t random)
{
	int64_t ceiling = backoff_ceiling(p, retry);
	/* Scale instead of taking a modulo: exactly uniform over [0, ceiling], monotonic
	 * in `random`, 0 -> 0 and UINT64_MAX -> ceiling. ceiling + 1 <= 2^63 fits. */
	return (int64_t)mul_hi64(random, (uint64_t)ceiling + 1);
}

int64_t backoff_delay(const struct backoff_policy *p, int retry)
{
	uint64_t r = 0;
	if (crypto_random(&r, sizeof r) < 0)
		return backoff_ceiling(p, retry); /* no entropy: the most patient choice */
	return backoff_delay_with(p, retry, r);
}

int backoff_may_retry(const struct backoff_policy *p, int attempts_made)
{
	return p->max_attempts == 0 || attempts_made < p->max_attempts;
}

void backoff_state_init(struct backoff_state *s, int64_t base_ms, int64_t cap_ms)
{
	s->policy.base_ms = base_ms;
	s->policy.cap_ms = cap_ms;
	s->policy.max_attempts = 0;
	s->failures = 0;
}

int64_t backoff_state_next(struct backoff_state *s)
{
	if (s->failures < 64)
		s->failures++;
	return backoff_delay(&s->policy, s->failures);
}

void backoff_state_reset(struct backoff_state *s)
{
	s->failures = 0;
}
