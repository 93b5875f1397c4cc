/*
 * clock: the one place slipway reads the time from.
 *
 * Backoff, leases, credential expiry and batching windows all ask this module,
 * so a test can freeze time and move it forward by hand (clock_fake_*) instead
 * of sleeping. Wall time is for timestamps that leave the process (log events,
 * SigV4 dates, expiry stamps from AWS); monotonic time is for every interval
 * measured inside it.
 *
 * Thread-safe: worker threads may read the clock while a test drives it.
 */
#ifndef SLIPWAY_CLOCK_H
#define SLIPWAY_CLOCK_H

#include <stdint.h>

int64_t clock_wall_ms(void);   /* milliseconds since the Unix epoch */
int64_t clock_mono_ms(void);   /* milliseconds on a clock that never jumps */

/* Tests only: freeze both clocks at the given values, move them, release them. */
void clock_fake_set(int64_t wall_ms, int64_t mono_ms);
void clock_fake_advance(int64_t ms);
void clock_fake_off(void);

/* Formats wall time as RFC 3339 UTC with milliseconds ("2026-11-26T05:39:11.123Z").
 * out must hold 25 bytes. */
void clock_format_rfc3339(int64_t wall_ms, char out[25]);

/* Parses RFC 3339 / ISO 8601 UTC or with offset ("2026-11-26T05:39:11Z",
 * "...11.123456789Z", "...11+02:00"); fractions beyond milliseconds are truncated,
 * a leap second (:60) counts as the next second. -1 on anything else, including
 * days the month does not have (Feb 30), offsets beyond 23:59 and trailing bytes. */
int clock_parse_rfc3339(const char *s, int64_t *wall_ms);

#endif
