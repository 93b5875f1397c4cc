#include "clock.h"

#include <ctype.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static atomic_int fake_on;
static _Atomic int64_t fake_wall;
static _Atomic int64_t fake_mono;

static int64_t read_clock(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t clock_wall_ms(void)
{
	if (atomic_load(&fake_on))
		return atomic_load(&fake_wall);
	return read_clock(CLOCK_REALTIME);
}

int64_t clock_mono_ms(void)
{
	if (atomic_load(&fake_on))
		return atomic_load(&fake_mono);
	return read_clock(CLOCK_MONOTONIC);
}

void clock_fake_set(int64_t wall_ms, int64_t mono_ms)
{
	atomic_store(&fake_wall, wall_ms);
	atomic_store(&fake_mono, mono_ms);
	atomic_store(&fake_on, 1);
}

void clock_fake_advance(int64_t ms)
{
	atomic_fetch_add(&fake_wall, ms);
	atomic_fetch_add(&fake_mono, ms);
}

void clock_fake_off(void)
{
	atomic_store(&fake_on, 0);
}

void clock_format_rfc3339(int64_t wall_ms, char out[25])
{
	time_t secs = (time_t)(wall_ms / 1000);
	int ms = (int)(wall_ms % 1000);
	if (ms < 0) {
		ms += 1000;
		secs -= 1;
	}
	struct tm tm;
	gmtime_r(&secs, &tm);
	char base[20];
	if (strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm) != 19) {
		snprintf(out, 25, "0000-00-00T00:00:00.000Z");
		return;
	}
	snprintf(out, 25, "%s.%03uZ", base, (unsigned)ms % 1000u);
}

static int take_digits(const char **p, int n, int *out)
{
	int v = 0;
	for (int i = 0; i < n; i++) {
		if (!isdigit((unsigned char)**p))
			return -1;
		v = v * 10 + (**p - '0');
		(*p)++;
	}
	*out = v;
	return 0;
}

static int expect(const char **p, char c)
{
	if (**p != c)
		return -1;
	(*p)++;
	return 0;
}

static int days_in_month(int year, int month)
{
	static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
	return month == 2 && leap ? 29 : days[month - 1];
}

int clock_parse_rfc3339(const char *s, int64_t *wall_ms)
{
	const char *p = s;
	int y, mo, d, h, mi, sec, ms = 0;
	if (take_digits(&p, 4, &y) || expect(&p, '-') || take_digits(&p, 2, &mo) ||
	    expect(&p, '-') || take_digits(&p, 2, &d))
		return -1;
	if (*p != 'T' && *p != 't' && *p != ' ')
		return -1;
	p++;
	if (take_digits(&p, 2, &h) || expect(&p, ':') || take_digits(&p, 2, &mi) ||
	    expect(&p, ':') || take_digits(&p, 2, &sec))
		return -1;
	if (*p == '.') {
		p++;
		int digits = 0;
		while (isdigit((unsigned char)*p)) {
			if (digits < 3)
				ms = ms * 10 + (*p - '0');
			digits++;
			p++;
		}
		if (digits == 0)
			return -1;
		for (; digits < 3; digits++)
			ms *= 10;
	}
	int offset_min = 0;
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		int sign = *p == '-' ? -1 : 1, oh, om;
		p++;
		if (take_digits(&p, 2, &oh) || expect(&p, ':') || take_digits(&p, 2, &om))
			return -1;
		if (oh > 23 || om > 59)
			return -1;
		offset_min = sign * (oh * 60 + om);
	} else {
		return -1;
	}
	if (*p != '\0')
		return -1;
	/* timegm would quietly turn Feb 31 into Mar 3: reject days the month lacks. */
	if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 ||
	    sec > 60)
		return -1;
	struct tm tm = {0};
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = d;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = sec;
	time_t t = timegm(&tm);
	*wall_ms = ((int64_t)t - (int64_t)offset_min * 60) * 1000 + ms;
	return 0;
}
