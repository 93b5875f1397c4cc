#include "args.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int find_long(const struct args_opt *opts, size_t n, const char *name, size_t len)
{
	for (size_t i = 0; i < n; i++) {
		if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0)
			return (int)i;
	}
	return -1;
}

static int find_short(const struct args_opt *opts, size_t n, char c)
{
	for (size_t i = 0; i < n; i++) {
		if (opts[i].short_name && opts[i].short_name == c)
			return (int)i;
	}
	return -1;
}

static int add_pos(struct args *a, char *arg, struct err *err)
{
	if (a->npos >= ARGS_POS_MAX)
		return err_set(err, "too many arguments (at most %d)", ARGS_POS_MAX);
	a->pos[a->npos++] = arg;
	return 0;
}

/* Records option i with its value (NULL for a flag). */
static int set_opt(struct args *a, int i, const char *shown, const char *value, struct err *err)
{
	if (a->seen[i])
		return err_set(err, "%s given twice", shown);
	a->seen[i] = true;
	a->values[i] = value;
	return 0;
}

int args_parse(const struct args_opt *opts, size_t nopts, int argc, char **argv,
	       struct args *out, struct err *err)
{
	memset(out, 0, sizeof *out);
	out->opts = opts;
	out->nopts = nopts;
	out->dashdash = -1;
	if (nopts > ARGS_OPTS_MAX)
		return err_set(err, "internal: too many options");
	for (int k = 0; k < argc; k++) {
		char *arg = argv[k];
		if (out->dashdash >= 0 || arg[0] != '-' || arg[1] == '\0') {
			if (add_pos(out, arg, err) < 0)
				return -1;
			continue;
		}
		if (strcmp(arg, "--") == 0) {
			out->dashdash = out->npos;
			continue;
		}
		if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
			out->help = true;
			continue;
		}
		int i;
		const char *inline_value = NULL;
		char shown[80];
		if (arg[1] == '-') {
			const char *name = arg + 2;
			const char *eq = strchr(name, '=');
			size_t len = eq ? (size_t)(eq - name) : strlen(name);
			snprintf(shown, sizeof shown, "--%.*s", (int)(len > 60 ? 60 : len), name);
			i = find_long(opts, nopts, name, len);
			if (eq)
				inline_value = eq + 1;
		} else {
			if (arg[2] != '\0')
				return err_set(err, "unknown option %.60s (options are --name or -x)",
					       arg);
			snprintf(shown, sizeof shown, "-%c", arg[1]);
			i = find_short(opts, nopts, arg[1]);
		}
		if (i < 0)
			return err_set(err, "unknown option %s", shown);
		if (opts[i].kind == ARGS_FLAG) {
			if (inline_value)
				return err_set(err, "%s takes no value", shown);
			if (set_opt(out, i, shown, NULL, err) < 0)
				return -1;
			continue;
		}
		const char *value = inline_value;
		if (!value) {
			if (k + 1 >= argc)
				return err_set(err, "%s needs a value (%s)", shown,
					       opts[i].metavar ? opts[i].metavar : "VALUE");
			value = argv[++k];
		}
		if (set_opt(out, i, shown, value, err) < 0)
			return -1;
	}
	return 0;
}

static int index_of(const struct args *a, const char *name)
{
	return find_long(a->opts, a->nopts, name, strlen(name));
}

const char *args_get(const struct args *a, const char *name)
{
	int i = index_of(a, name);
	return i >= 0 && a->seen[i] ? a->values[i] : NULL;
}

bool args_has(const struct args *a, const char *name)
{
	int i = index_of(a, name);
	return i >= 0 && a->seen[i];
}

/* Writes text word-wrapped at width columns, keeping its own line breaks. */
static void wrap(FILE *out, const char *text, size_t width)
{
	size_t col = 0;
	const char *p = text;
	while (*p) {
		if (*p == '\n') {
			fputc('\n', out);
			col = 0;
			p++;
			continue;
		}
		size_t word = strcspn(p, " \n");
		if (col > 0 && col + 1 + word > width) {
			fputc('\n', out);
			col = 0;
		} else if (col > 0) {
			fputc(' ', out);
			col++;
		}
		fwrite(p, 1, word, out);
		col += word;
		p += word;
		while (*p == ' ')
			p++;
	}
	fputc('\n', out);
}

void args_usage(FILE *out, const char *synopsis, const char *description,
		const struct args_opt *opts, size_t nopts)
{
	fprintf(out, "usage: slipway %s\n", synopsis);
	if (description && *description) {
		fputc('\n', out);
		wrap(out, description, 78);
	}
	fprintf(out, "\noptions:\n");
	for (size_t i = 0; i < nopts; i++) {
		char left[96];
		int n = 0;
		if (opts[i].short_name)
			n = snprintf(left, sizeof left, "-%c, ", opts[i].short_name);
		snprintf(left + n, sizeof left - (size_t)n, "--%s%s%s", opts[i].name,
			 opts[i].kind == ARGS_VALUE ? " " : "",
			 opts[i].kind == ARGS_VALUE ? (opts[i].metavar ? opts[i].metavar : "VALUE")
						    : "");
		fprintf(out, "  %-26s %s\n", left, opts[i].help ? opts[i].help : "");
	}
	fprintf(out, "  %-26s %s\n", "-h, --help", "show this help");
}

int args_int(const char *name, const char *s, int64_t min, int64_t max, int64_t *out,
	     struct err *err)
{
	if (!s || !*s || !(isdigit((unsigned char)s[0]) || (s[0] == '-' && isdigit((unsigned char)s[1]))))
		return err_set(err, "%s: expected a whole number %lld..%lld", name, (long long)min,
			       (long long)max);
	errno = 0;
	char *end;
	long long v = strtoll(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return err_set(err, "%s: expected a whole number %lld..%lld, got '%.40s'", name,
			       (long long)min, (long long)max, s);
	*out = v;
	return 0;
}

/* Splits "123unit" into the number and the unit; -1 when there is no number. */
static int number_unit(const char *s, long long *num, const char **unit)
{
	if (!s || !isdigit((unsigned char)s[0]))
		return -1;
	errno = 0;
	char *end;
	long long v = strtoll(s, &end, 10);
	if (errno || v < 0)
		return -1;
	*num = v;
	*unit = end;
	return 0;
}

int args_duration_ms(const char *name, const char *s, int64_t *out, struct err *err)
{
	long long v;
	const char *unit;
	if (number_unit(s, &v, &unit) < 0)
		goto bad;
	int64_t mult = !*unit ? 1000
		       : !strcmp(unit, "ms") ? 1
		       : !strcmp(unit, "s") ? 1000
		       : !strcmp(unit, "m") ? 60000
		       : !strcmp(unit, "h") ? 3600000
		       : !strcmp(unit, "d") ? 86400000
					    : 0;
	if (!mult || v > INT64_MAX / mult)
		goto bad;
	*out = v * mult;
	return 0;
bad:
	return err_set(err, "%s: expected a duration such as 500ms, 30s, 10m, 2h or 1d, got '%.40s'",
		       name, s ? s : "");
}

int args_memory_mb(const char *name, const char *s, int64_t *out, struct err *err)
{
	long long v;
	const char *unit;
	if (number_unit(s, &v, &unit) < 0)
		goto bad;
	int64_t mult = (!*unit || !strcasecmp(unit, "m") || !strcasecmp(unit, "mb") ||
			!strcasecmp(unit, "mi") || !strcasecmp(unit, "mib"))
			       ? 1
		       : (!strcasecmp(unit, "g") || !strcasecmp(unit, "gb") ||
			  !strcasecmp(unit, "gi") || !strcasecmp(unit, "gib"))
			       ? 1024
			       : 0;
	if (!mult || v > (1LL << 40) / mult)
		goto bad;
	*out = v * mult;
	return 0;
bad:
	return err_set(err, "%s: expected memory in MiB such as 256, 512M or 1G, got '%.40s'", name,
		       s ? s : "");
}
