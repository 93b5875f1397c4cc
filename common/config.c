#include "config.h"

#include "buf.h"
#include "json.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ENV_PREFIX_MAX 64
#define ENV_NAME_MAX (ENV_PREFIX_MAX + CONFIG_KEY_MAX + sizeof "_FILE")
#define MSG_LINE_MAX 1024
#define MSGS_CAP ((size_t)256 << 10)

enum source { SRC_UNSET, SRC_DEFAULT, SRC_FILE, SRC_ENV };

struct config_value {
	char *text;             /* the value as given (quotes and escapes decoded); NULL: unset */
	int64_t num;            /* INT, BOOL (0/1), DURATION (ms), SIZE (bytes) */
	enum source src;
	char source[24];        /* "default", "file:12", "env", "unset" */
	unsigned file_line;     /* first line of the file naming the key, 0 if none */
	bool failed;            /* some source gave a bad value (already reported) */
};

struct config {
	const struct config_key *schema;
	size_t n;
	struct config_value *v;
};

/* A list of messages: the first CONFIG_ERRORS_MAX are kept, the rest counted. */
struct msgs {
	struct buf text;        /* each message ends in '\n' */
	size_t count;
};

struct loader {
	const struct config_key *schema;
	size_t n;
	struct config *cfg;
	const char *name;       /* the file's name in messages */
	struct msgs errors;
	struct msgs warnings;
};

static const char *const type_names[] = {
	[CONFIG_STRING] = "string", [CONFIG_INT] = "int",   [CONFIG_BOOL] = "bool",
	[CONFIG_DURATION] = "duration", [CONFIG_SIZE] = "size", [CONFIG_ENUM] = "enum",
	[CONFIG_URL] = "url",       [CONFIG_PATH] = "path", [CONFIG_SECRET] = "secret",
};

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("config: programming error: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	abort();
}

static bool msgs_full(const struct msgs *m)
{
	return m->count >= CONFIG_ERRORS_MAX;
}

static void msgs_add(struct msgs *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void msgs_add(struct msgs *m, const char *fmt, ...)
{
	if (m->count++ >= CONFIG_ERRORS_MAX)
		return;
	char line[MSG_LINE_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	/* The cap is far above CONFIG_ERRORS_MAX lines; a failed append only
	 * loses the text, never the count. */
	if (buf_append_str(&m->text, line) == 0)
		buf_append_byte(&m->text, '\n');
}

static bool is_lower(char c)
{
	return c >= 'a' && c <= 'z';
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t';
}

static bool is_control(unsigned char c)
{
	return c < 0x20 || c == 0x7f;
}

static char lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* [a-z][a-z0-9_]* joined by single dots, at most CONFIG_KEY_MAX bytes. */
static bool valid_key(const char *s, size_t len)
{
	if (len == 0 || len > CONFIG_KEY_MAX)
		return false;
	bool seg_start = true;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (seg_start) {
			if (!is_lower(c))
				return false;
			seg_start = false;
		} else if (c == '.') {
			seg_start = true;
		} else if (!is_lower(c) && !is_digit(c) && c != '_') {
			return false;
		}
	}
	return !seg_start;
}

/* A value or key from outside, safe and short for a message: quoted, control
 * characters as '?', cut at 64 bytes on a UTF-8 boundary. */
static const char *shown(char out[80], const char *s, size_t len)
{
	size_t o = 0, i = 0;
	out[o++] = '\'';
	for (; i < len && o < 65; i++) {
		unsigned char c = (unsigned char)s[i];
		out[o++] = is_control(c) ? '?' : (char)c;
	}
	if (i < len) {
		/* Drop a sequence cut in the middle. */
		size_t back = o;
		while (back > 1 && ((unsigned char)out[back - 1] & 0xc0) == 0x80)
			back--;
		if (back > 1 && ((unsigned char)out[back - 1] & 0xc0) == 0xc0)
			o = back - 1;
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o++] = '\'';
	out[o] = '\0';
	return out;
}

/* "1h", "90s", "1500ms": the largest unit that divides exactly. */
static const char *fmt_ms(char out[32], int64_t ms)
{
	if (ms != 0 && ms % 3600000 == 0)
		snprintf(out, 32, "%lldh", (long long)(ms / 3600000));
	else if (ms != 0 && ms % 60000 == 0)
		snprintf(out, 32, "%lldm", (long long)(ms / 60000));
	else if (ms % 1000 == 0)
		snprintf(out, 32, "%llds", (long long)(ms / 1000));
	else
		snprintf(out, 32, "%lldms", (long long)ms);
	return out;
}

static const char *fmt_size(char out[32], int64_t n)
{
	static const char units[] = "TGMk";
	for (int i = 0; i < 4; i++) {
		int64_t unit = (int64_t)1 << (10 * (4 - i));
		if (n != 0 && n % unit == 0) {
			snprintf(out, 32, "%lld%c", (long long)(n / unit), units[i]);
			return out;
		}
	}
	snprintf(out, 32, "%lld", (long long)n);
	return out;
}

/* Decimal digits only, no sign; -1 on anything else or overflow. */
static int parse_digits(const char *s, size_t len, uint64_t limit, uint64_t *out)
{
	if (len == 0)
		return -1;
	uint64_t v = 0;
	for (size_t i = 0; i < len; i++) {
		if (!is_digit(s[i]))
			return -1;
		uint64_t d = (uint64_t)(s[i] - '0');
		if (v > (limit - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

/* Splits "30s" into the number and the unit, multiplies; -1 on unknown units. */
static int parse_scaled(const char *s, size_t len, const char *const *units,
			const int64_t *mults, int64_t *out)
{
	size_t d = 0;
	while (d < len && is_digit(s[d]))
		d++;
	const char *unit = s + d;
	size_t ulen = len - d;
	for (size_t u = 0; units[u]; u++) {
		if (strlen(units[u]) != ulen || strncmp(unit, units[u], ulen) != 0)
			continue;
		uint64_t v;
		if (parse_digits(s, d, (uint64_t)INT64_MAX / (uint64_t)mults[u], &v) < 0)
			return -1;
		*out = (int64_t)v * mults[u];
		return 0;
	}
	return -1;
}

static int check_url(const char *s, char *why, size_t cap)
{
	const char *rest;
	if (strncmp(s, "unix://", 7) == 0) {
		if (s[7] != '/' || s[8] == '\0')
			return snprintf(why, cap, "unix:// URL needs an absolute socket path "
				       "(unix:///run/slipway.sock)"), -1;
		return 0;
	}
	if (strncmp(s, "http://", 7) == 0)
		rest = s + 7;
	else if (strncmp(s, "https://", 8) == 0)
		rest = s + 8;
	else
		return snprintf(why, cap, "expected an http://, https:// or unix:// URL"), -1;
	size_t alen = strcspn(rest, "/?#");
	if (memchr(rest, '@', alen))
		return snprintf(why, cap, "credentials in a URL are refused (use a secret key)"),
		       -1;
	const char *host = rest, *port = NULL;
	size_t hlen;
	if (alen > 0 && rest[0] == '[') {
		const char *close = memchr(rest, ']', alen);
		if (!close)
			return snprintf(why, cap, "unclosed '[' in the URL's host"), -1;
		host = rest + 1;
		hlen = (size_t)(close - host);
		for (size_t i = 0; i < hlen; i++) {
			char c = host[i];
			if (!is_digit(c) && !(lower(c) >= 'a' && lower(c) <= 'f') && c != ':' &&
			    c != '.')
				return snprintf(why, cap, "bad IPv6 address in the URL"), -1;
		}
		const char *after = close + 1;
		if (after < rest + alen) {
			if (*after != ':')
				return snprintf(why, cap, "unexpected text after ']' in the URL"), -1;
			port = after + 1;
		}
	} else {
		const char *colon = memchr(rest, ':', alen);
		hlen = colon ? (size_t)(colon - rest) : alen;
		if (colon)
			port = colon + 1;
		for (size_t i = 0; i < hlen; i++) {
			char c = lower(host[i]);
			if (!is_lower(c) && !is_digit(c) && c != '.' && c != '-' && c != '_')
				return snprintf(why, cap, "bad character in the URL's host"), -1;
		}
	}
	if (hlen == 0)
		return snprintf(why, cap, "URL has no host"), -1;
	if (port) {
		uint64_t p;
		if (parse_digits(port, (size_t)(rest + alen - port), 65535, &p) < 0 || p == 0)
			return snprintf(why, cap, "bad port in the URL"), -1;
	}
	for (const char *p = rest + alen; *p; p++) {
		if (*p == ' ' || is_control((unsigned char)*p))
			return snprintf(why, cap, "space or control character in the URL"), -1;
	}
	return 0;
}

static bool is_string_type(enum config_type t)
{
	return t == CONFIG_STRING || t == CONFIG_PATH || t == CONFIG_URL || t == CONFIG_SECRET ||
	       t == CONFIG_ENUM;
}

static bool has_range(const struct config_key *k)
{
	return k->min != 0 || k->max != 0;
}

/*
 * Checks text (len bytes, NUL-terminated) as a value of k; fills *num for the
 * numeric types. On failure writes the reason into why: never the value of a
 * secret.
 */
static int check_value(const struct config_key *k, const char *text, size_t len, int64_t *num,
		       char *why, size_t cap)
{
	char v[80], a[32], b[32];
	bool secret = k->type == CONFIG_SECRET;
	if (json_utf8_check(text, len, NULL) < 0)
		return snprintf(why, cap, "invalid UTF-8 in value"), -1;
	bool multiline = k->type == CONFIG_STRING || secret;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)text[i];
		if (is_control(c) && !(multiline && (c == '\t' || c == '\n')))
			return snprintf(why, cap, "control character in value"), -1;
	}
	if (is_string_type(k->type) && k->max > 0 && len > (uint64_t)k->max)
		return snprintf(why, cap, "value of %zu bytes, longer than %lld", len,
				(long long)k->max), -1;
	*num = 0;
	switch (k->type) {
	case CONFIG_STRING:
		return 0;
	case CONFIG_SECRET:
		if (len == 0)
			return snprintf(why, cap, "empty secret"), -1;
		return 0;
	case CONFIG_PATH:
		if (len == 0)
			return snprintf(why, cap, "empty path"), -1;
		return 0;
	case CONFIG_URL:
		return check_url(text, why, cap);
	case CONFIG_ENUM: {
		for (size_t i = 0; k->choices[i]; i++) {
			if (strcmp(text, k->choices[i]) == 0)
				return 0;
		}
		size_t o = (size_t)snprintf(why, cap, "expected one of ");
		for (size_t i = 0; k->choices[i] && o < cap; i++)
			o += (size_t)snprintf(why + o, cap - o, "%s%s", i ? ", " : "",
					      k->choices[i]);
		if (o < cap)
			snprintf(why + o, cap - o, "; got %s", shown(v, text, len));
		return -1;
	}
	case CONFIG_BOOL: {
		static const char *const words[] = {"true", "yes", "on", "1",
						    "false", "no", "off", "0"};
		for (size_t i = 0; i < 8; i++) {
			if (strlen(words[i]) != len)
				continue;
			size_t j = 0;
			while (j < len && lower(text[j]) == words[i][j])
				j++;
			if (j == len) {
				*num = i < 4;
				return 0;
			}
		}
		return snprintf(why, cap, "expected true/false, yes/no, on/off or 1/0; got %s",
				shown(v, text, len)), -1;
	}
	case CONFIG_INT: {
		bool neg = len > 0 && text[0] == '-';
		uint64_t u;
		uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
		if (parse_digits(text + neg, len - neg, limit, &u) < 0)
			return snprintf(why, cap, "expected an integer, got %s",
					shown(v, text, len)), -1;
		*num = neg ? (int64_t)(0 - u) : (int64_t)u;
		if (has_range(k) && (*num < k->min || *num > k->max))
			return snprintf(why, cap, "expected an integer in %lld..%lld, got %lld",
					(long long)k->min, (long long)k->max, (long long)*num), -1;
		return 0;
	}
	case CONFIG_DURATION: {
		static const char *const units[] = {"", "ms", "s", "m", "h", NULL};
		static const int64_t mults[] = {1000, 1, 1000, 60000, 3600000};
		if (parse_scaled(text, len, units, mults, num) < 0)
			return snprintf(why, cap, "expected a duration like 500ms, 30s, 5m or 1h; "
					"got %s", shown(v, text, len)), -1;
		if (has_range(k) && (*num < k->min || *num > k->max))
			return snprintf(why, cap, "expected a duration in %s..%s, got %s",
					fmt_ms(a, k->min), fmt_ms(b, k->max),
					shown(v, text, len)), -1;
		return 0;
	}
	case CONFIG_SIZE: {
		static const char *const units[] = {"", "k", "K", "m", "M", "g",
						    "G", "t", "T", NULL};
		static const int64_t mults[] = {1, 1 << 10, 1 << 10, 1 << 20, 1 << 20,
						(int64_t)1 << 30, (int64_t)1 << 30,
						(int64_t)1 << 40, (int64_t)1 << 40};
		if (parse_scaled(text, len, units, mults, num) < 0)
			return snprintf(why, cap, "expected a size like 4096, 64k, 16M or 1G; "
					"got %s", shown(v, text, len)), -1;
		if (has_range(k) && (*num < k->min || *num > k->max))
			return snprintf(why, cap, "expected a size in %s..%s, got %s",
					fmt_size(a, k->min), fmt_size(b, k->max),
					shown(v, text, len)), -1;
		return 0;
	}
	}
	return snprintf(why, cap, "unknown type"), -1;
}

/* "proxy.bind" -> "proxy_bind" (lowercase: schema checks compare these). */
static void env_key(char *out, const char *key)
{
	size_t i = 0;
	for (; key[i]; i++)
		out[i] = key[i] == '.' ? '_' : key[i];
	out[i] = '\0';
}

static void env_name(char out[ENV_NAME_MAX], const char *prefix, const char *key)
{
	size_t o = strlen(prefix);
	memcpy(out, prefix, o);
	for (size_t i = 0; key[i]; i++) {
		char c = key[i];
		out[o++] = c == '.' ? '_' : (is_lower(c) ? (char)(c - 'a' + 'A') : c);
	}
	out[o] = '\0';
}

/* A malformed schema is a programming error: say what and abort. */
static void check_schema(const struct config_key *schema, size_t n, const char *env_prefix)
{
	if (env_prefix && strlen(env_prefix) > ENV_PREFIX_MAX)
		die("env prefix '%s' longer than %d bytes", env_prefix, ENV_PREFIX_MAX);
	if (n > 0 && !schema)
		die("NULL schema with %zu keys", n);
	for (size_t i = 0; i < n; i++) {
		const struct config_key *k = &schema[i];
		if (!k->name || !valid_key(k->name, strlen(k->name)))
			die("schema key %zu: bad name '%s'", i, k->name ? k->name : "(null)");
		if ((unsigned)k->type > CONFIG_SECRET)
			die("%s: bad type %d", k->name, (int)k->type);
		if (k->type == CONFIG_ENUM && (!k->choices || !k->choices[0]))
			die("%s: enum without choices", k->name);
		if (k->required && k->default_value)
			die("%s: required key with a default", k->name);
		if (k->min > k->max)
			die("%s: min > max", k->name);
		if (k->default_value) {
			char why[256];
			int64_t num;
			if (check_value(k, k->default_value, strlen(k->default_value), &num, why,
					sizeof why) < 0)
				die("%s: default '%s': %s", k->name, k->default_value, why);
		}
		char ei[CONFIG_KEY_MAX + 1], ej[CONFIG_KEY_MAX + 1];
		env_key(ei, k->name);
		for (size_t j = 0; j < i; j++) {
			env_key(ej, schema[j].name);
			if (strcmp(ei, ej) == 0)
				die("%s and %s have the same environment name", schema[j].name,
				    k->name);
			/* x.token_file would be the _FILE variant of secret x.token. */
			const char *longer = strlen(ei) > strlen(ej) ? ei : ej;
			const char *shorter = longer == ei ? ej : ei;
			const struct config_key *sk = longer == ei ? &schema[j] : k;
			size_t sl = strlen(shorter);
			if (sk->type == CONFIG_SECRET && strncmp(longer, shorter, sl) == 0 &&
			    strcmp(longer + sl, "_file") == 0)
				die("%s clashes with the _FILE variable of secret %s", k->name,
				    sk->name);
		}
	}
}

static size_t find_key(const struct loader *L, const char *key, size_t len)
{
	for (size_t i = 0; i < L->n; i++) {
		if (strlen(L->schema[i].name) == len && memcmp(L->schema[i].name, key, len) == 0)
			return i;
	}
	return (size_t)-1;
}

/* Levenshtein distance of two short strings (both at most CONFIG_KEY_MAX). */
static size_t distance(const char *a, size_t al, const char *b, size_t bl)
{
	size_t row[CONFIG_KEY_MAX + 1];
	for (size_t j = 0; j <= bl; j++)
		row[j] = j;
	for (size_t i = 1; i <= al; i++) {
		size_t diag = row[0];
		row[0] = i;
		for (size_t j = 1; j <= bl; j++) {
			size_t up = row[j];
			size_t best = diag + (a[i - 1] != b[j - 1]);
			if (up + 1 < best)
				best = up + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			row[j] = best;
			diag = up;
		}
	}
	return row[bl];
}

/* The schema key closest to a misspelt one, or NULL when none is close. */
static const char *suggest(const struct loader *L, const char *key, size_t len)
{
	if (len > CONFIG_KEY_MAX)
		return NULL;
	const char *best = NULL;
	size_t best_d = 3; /* at most two edits */
	for (size_t i = 0; i < L->n; i++) {
		const char *name = L->schema[i].name;
		size_t d = distance(key, len, name, strlen(name));
		if (d < best_d) {
			best_d = d;
			best = name;
		}
	}
	return best;
}

/* Validates and stores a value for key i; a bad one is reported under `where`. */
static void set_value(struct loader *L, size_t i, const char *text, size_t len,
		      const char *where, enum source src)
{
	const struct config_key *k = &L->schema[i];
	struct config_value *v = &L->cfg->v[i];
	char why[512];
	int64_t num;
	if (check_value(k, text, len, &num, why, sizeof why) < 0) {
		msgs_add(&L->errors, "%s: %s", where, why);
		v->failed = true;
		return;
	}
	char *copy = malloc(len + 1);
	if (!copy) {
		msgs_add(&L->errors, "%s: out of memory", where);
		v->failed = true;
		return;
	}
	memcpy(copy, text, len);
	copy[len] = '\0';
	free(v->text);
	v->text = copy;
	v->num = num;
	v->src = src;
	if (src == SRC_FILE)
		snprintf(v->source, sizeof v->source, "file:%u", v->file_line);
	else
		snprintf(v->source, sizeof v->source, "%s", src == SRC_ENV ? "env" : "default");
}

/* One line of the file, without its line ending; already valid UTF-8, no NUL. */
static void parse_line(struct loader *L, const char *l, size_t len, unsigned line)
{
	char sk[80];
	size_t i = 0;
	while (i < len && is_space(l[i]))
		i++;
	if (i == len || l[i] == '#')
		return;
	size_t ks = i;
	while (i < len && l[i] != '=' && !is_space(l[i]) && l[i] != '#')
		i++;
	size_t klen = i - ks;
	while (i < len && is_space(l[i]))
		i++;
	if (i == len || l[i] != '=') {
		msgs_add(&L->errors, "%s:%u: expected 'key = value'", L->name, line);
		return;
	}
	i++;
	if (klen == 0) {
		msgs_add(&L->errors, "%s:%u: missing key before '='", L->name, line);
		return;
	}
	if (!valid_key(l + ks, klen)) {
		msgs_add(&L->errors, "%s:%u: invalid key %s (keys are lowercase dotted names "
			 "like log.level)", L->name, line, shown(sk, l + ks, klen));
		return;
	}
	size_t idx = find_key(L, l + ks, klen);
	if (idx == (size_t)-1) {
		if (msgs_full(&L->errors)) {
			L->errors.count++;
			return;
		}
		const char *near = suggest(L, l + ks, klen);
		msgs_add(&L->errors, "%s:%u: unknown key %s%s%s%s", L->name, line,
			 shown(sk, l + ks, klen), near ? " (did you mean " : "", near ? near : "",
			 near ? "?)" : "");
		return;
	}
	const struct config_key *k = &L->schema[idx];
	struct config_value *v = &L->cfg->v[idx];
	if (v->file_line) {
		msgs_add(&L->errors, "%s:%u: %s given twice (first on line %u)", L->name, line,
			 k->name, v->file_line);
		return;
	}
	v->file_line = line;
	char where[MSG_LINE_MAX / 2];
	snprintf(where, sizeof where, "%s:%u: %s", L->name, line, k->name);

	while (i < len && is_space(l[i]))
		i++;
	if (i == len || l[i] == '#') {
		msgs_add(&L->errors, "%s: missing value (write \"\" for an empty string)", where);
		v->failed = true;
		return;
	}
	char val[CONFIG_LINE_MAX + 1];
	size_t vlen = 0;
	const char *bad = NULL;
	if (l[i] == '"') {
		for (i++;; i++) {
			if (i == len) {
				bad = "unterminated quoted value";
				break;
			}
			char c = l[i];
			if (c == '"') {
				i++;
				break;
			}
			if (c == '\\') {
				if (i + 1 == len) {
					bad = "unterminated quoted value";
					break;
				}
				char e = l[i + 1];
				if (e == '"' || e == '\\') {
					c = e;
				} else if (e == 'n') {
					c = '\n';
				} else if (e == 't') {
					c = '\t';
				} else {
					bad = "unknown escape (use \\\", \\\\, \\n or \\t)";
					break;
				}
				i++;
			} else if (is_control((unsigned char)c) && c != '\t') {
				bad = "control character in quoted value";
				break;
			}
			val[vlen++] = c;
		}
		while (!bad && i < len && is_space(l[i]))
			i++;
		if (!bad && i < len && l[i] != '#')
			bad = "unexpected text after the closing quote";
	} else {
		size_t end = i;
		while (end < len && l[end] != '#')
			end++;
		while (end > i && is_space(l[end - 1]))
			end--;
		for (; i < end && !bad; i++) {
			char c = l[i];
			if (is_space(c))
				bad = "space in a bare value (quote the value)";
			else if (c == '"')
				bad = "'\"' inside a bare value (quote the whole value)";
			else if (is_control((unsigned char)c))
				bad = "control character in value";
			else
				val[vlen++] = c;
		}
	}
	if (bad) {
		msgs_add(&L->errors, "%s: %s", where, bad);
		v->failed = true;
		return;
	}
	val[vlen] = '\0';
	set_value(L, idx, val, vlen, where, SRC_FILE);
}

static void parse_text(struct loader *L, const char *text, size_t len)
{
	size_t pos = 0;
	if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
		pos = 3;
	unsigned line = 0;
	while (pos < len) {
		line++;
		const char *l = text + pos;
		const char *nl = memchr(l, '\n', len - pos);
		size_t llen = nl ? (size_t)(nl - l) : len - pos;
		pos += llen + (nl ? 1 : 0);
		if (llen > 0 && l[llen - 1] == '\r')
			llen--;
		size_t bad;
		if (llen > CONFIG_LINE_MAX)
			msgs_add(&L->errors, "%s:%u: line longer than %d bytes", L->name, line,
				 CONFIG_LINE_MAX);
		else if (memchr(l, '\0', llen))
			msgs_add(&L->errors, "%s:%u: NUL byte", L->name, line);
		else if (json_utf8_check(l, llen, &bad) < 0)
			msgs_add(&L->errors, "%s:%u: invalid UTF-8 at column %zu", L->name, line,
				 bad + 1);
		else
			parse_line(L, l, llen, line);
	}
}

/* Reads a whole file of at most cap bytes into b; -1 with the reason in why. */
static int read_capped(const char *path, size_t cap, struct buf *b, char *why, size_t whycap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return snprintf(why, whycap, "cannot open: %s", strerror(errno)), -1;
	struct stat st;
	if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
		close(fd);
		return snprintf(why, whycap, "is a directory"), -1;
	}
	buf_init(b, cap);
	char chunk[16384];
	for (;;) {
		ssize_t r = read(fd, chunk, sizeof chunk);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			snprintf(why, whycap, "cannot read: %s", strerror(errno));
			break;
		}
		if (r == 0) {
			close(fd);
			if (!b->data && buf_append(b, "", 0) < 0)
				return snprintf(why, whycap, "out of memory"), -1;
			return 0;
		}
		if (buf_append(b, chunk, (size_t)r) < 0) {
			snprintf(why, whycap, "larger than %zu bytes", cap);
			break;
		}
	}
	close(fd);
	buf_free(b);
	return -1;
}

static void load_secret_file(struct loader *L, size_t i, const char *var, const char *path)
{
	char where[MSG_LINE_MAX / 2], why[256];
	struct buf b;
	snprintf(where, sizeof where, "env %s", var);
	if (read_capped(path, CONFIG_SECRET_FILE_MAX, &b, why, sizeof why) < 0) {
		msgs_add(&L->errors, "%s: %s: %s", where, path, why);
		L->cfg->v[i].failed = true;
		return;
	}
	size_t len = b.len;
	if (len > 0 && b.data[len - 1] == '\n') {
		len--;
		if (len > 0 && b.data[len - 1] == '\r')
			len--;
	}
	b.data[len] = '\0';
	if (memchr(b.data, '\0', len)) {
		msgs_add(&L->errors, "%s: %s: NUL byte in the file", where, path);
		L->cfg->v[i].failed = true;
	} else {
		set_value(L, i, b.data, len, where, SRC_ENV);
	}
	/* Do not leave the secret in freed memory. */
	memset(b.data, 0, b.len);
	buf_free(&b);
}

static void load_env(struct loader *L, const char *prefix)
{
	char name[ENV_NAME_MAX], fname[ENV_NAME_MAX + 8];
	for (size_t i = 0; i < L->n; i++) {
		const struct config_key *k = &L->schema[i];
		env_name(name, prefix, k->name);
		const char *val = getenv(name);
		const char *path = NULL;
		if (k->type == CONFIG_SECRET) {
			snprintf(fname, sizeof fname, "%s_FILE", name);
			path = getenv(fname);
		}
		if (val && path) {
			msgs_add(&L->errors, "env %s: both %s and %s are set; use one", name, name,
				 fname);
			L->cfg->v[i].failed = true;
		} else if (val) {
			char where[ENV_NAME_MAX + 8];
			snprintf(where, sizeof where, "env %s", name);
			size_t len = strlen(val);
			if (len > CONFIG_LINE_MAX) {
				msgs_add(&L->errors, "%s: value longer than %d bytes", where,
					 CONFIG_LINE_MAX);
				L->cfg->v[i].failed = true;
			} else {
				set_value(L, i, val, len, where, SRC_ENV);
			}
		} else if (path) {
			load_secret_file(L, i, fname, path);
		}
	}
}

/* Variables under the prefix that name no key: probably typos, so say so. */
static void scan_env(struct loader *L, const char *prefix)
{
	size_t plen = strlen(prefix);
	char name[ENV_NAME_MAX], sv[80];
	for (char **e = environ; e && *e; e++) {
		const char *var = *e;
		const char *eq = strchr(var, '=');
		if (!eq || strncmp(var, prefix, plen) != 0)
			continue;
		size_t nlen = (size_t)(eq - var);
		bool known = false;
		const char *not_secret = NULL;
		for (size_t i = 0; i < L->n && !known; i++) {
			env_name(name, prefix, L->schema[i].name);
			size_t l = strlen(name);
			if (l == nlen && memcmp(var, name, l) == 0) {
				known = true;
			} else if (nlen == l + 5 && memcmp(var, name, l) == 0 &&
				   memcmp(var + l, "_FILE", 5) == 0) {
				if (L->schema[i].type == CONFIG_SECRET)
					known = true;
				else
					not_secret = L->schema[i].name;
			}
		}
		if (known)
			continue;
		shown(sv, var, nlen);
		if (not_secret)
			msgs_add(&L->warnings, "env %s: ignored: %s is not a secret, only secrets "
				 "have a _FILE variable", sv, not_secret);
		else
			msgs_add(&L->warnings, "env %s: ignored: no such configuration key", sv);
	}
}

static void config_free_values(struct config *cfg)
{
	for (size_t i = 0; i < cfg->n; i++) {
		struct config_value *v = &cfg->v[i];
		if (v->text && cfg->schema[i].type == CONFIG_SECRET)
			memset(v->text, 0, strlen(v->text));
		free(v->text);
	}
	free(cfg->v);
	free(cfg);
}

void config_free(struct config *cfg)
{
	if (cfg)
		config_free_values(cfg);
}

/*
 * The loader behind every entry point: text may be NULL (no file); read_error
 * is set when the file could not be read (then nothing else is checked, since
 * every required key would be reported missing). Returns the config, or NULL
 * with the errors in L->errors.
 */
static struct config *load(struct loader *L, const struct config_key *schema, size_t n,
			   const char *text, size_t len, const char *name,
			   const char *env_prefix)
{
	check_schema(schema, n, env_prefix);
	memset(L, 0, sizeof *L);
	L->schema = schema;
	L->n = n;
	L->name = name ? name : "config";
	buf_init(&L->errors.text, MSGS_CAP);
	buf_init(&L->warnings.text, MSGS_CAP);

	struct config *cfg = calloc(1, sizeof *cfg);
	struct config_value *v = calloc(n ? n : 1, sizeof *v);
	if (!cfg || !v) {
		free(cfg);
		free(v);
		msgs_add(&L->errors, "out of memory");
		return NULL;
	}
	cfg->schema = schema;
	cfg->n = n;
	cfg->v = v;
	L->cfg = cfg;
	for (size_t i = 0; i < n; i++) {
		snprintf(v[i].source, sizeof v[i].source, "unset");
		if (schema[i].default_value)
			set_value(L, i, schema[i].default_value, strlen(schema[i].default_value),
				  schema[i].name, SRC_DEFAULT);
	}
	if (text && len > CONFIG_FILE_MAX) {
		/* Like an unreadable file: one error, not every required key missing. */
		msgs_add(&L->errors, "%s: %zu bytes, more than the limit of %zu", L->name, len,
			 CONFIG_FILE_MAX);
		config_free(cfg);
		L->cfg = NULL;
		return NULL;
	}
	if (text)
		parse_text(L, text, len);
	if (env_prefix) {
		load_env(L, env_prefix);
		scan_env(L, env_prefix);
	}
	char envn[ENV_NAME_MAX];
	for (size_t i = 0; i < n; i++) {
		const struct config_key *k = &schema[i];
		if (!k->required || v[i].text || v[i].failed)
			continue;
		if (env_prefix) {
			env_name(envn, env_prefix, k->name);
			msgs_add(&L->errors, "missing required key %s (set it %swith env %s%s)",
				 k->name, text ? "in the file or " : "", envn,
				 k->type == CONFIG_SECRET ? " or its _FILE variant" : "");
		} else {
			msgs_add(&L->errors, "missing required key %s", k->name);
		}
	}
	if (L->errors.count > 0) {
		config_free(cfg);
		L->cfg = NULL;
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		if (schema[i].type == CONFIG_SECRET && v[i].text)
			log_redact_add(v[i].text);
	}
	return cfg;
}

static void loader_done(struct loader *L)
{
	buf_free(&L->errors.text);
	buf_free(&L->warnings.text);
}

/* Fits whole error lines into err, then "... and N more". */
static void errors_to_err(const struct msgs *m, struct err *err)
{
	if (!err)
		return;
	const size_t cap = sizeof err->msg;
	const char *p = m->text.data ? m->text.data : "";
	size_t used = 0, listed = 0;
	err->msg[0] = '\0';
	while (*p) {
		const char *nl = strchr(p, '\n');
		size_t l = nl ? (size_t)(nl - p) : strlen(p);
		size_t reserve = listed + 1 < m->count ? 32 : 0; /* "\n... and N more" */
		size_t sep = used ? 1 : 0;
		if (used + sep + l + reserve >= cap) {
			if (used > 0)
				break;
			l = cap - 1 - reserve; /* one line longer than everything: cut it */
		}
		if (sep)
			err->msg[used++] = '\n';
		memcpy(err->msg + used, p, l);
		used += l;
		err->msg[used] = '\0';
		listed++;
		if (!nl)
			break;
		p = nl + 1;
	}
	if (listed < m->count)
		snprintf(err->msg + used, cap - used, "%s... and %zu more", used ? "\n" : "",
			 m->count - listed);
}

static void log_warnings(const struct msgs *m)
{
	const char *p = m->text.data;
	while (p && *p) {
		const char *nl = strchr(p, '\n');
		int l = nl ? (int)(nl - p) : (int)strlen(p);
		log_warn("config.warning", "%.*s", l, p);
		if (!nl)
			break;
		p = nl + 1;
	}
}

struct config *config_load_buffer(const struct config_key *schema, size_t n, const char *text,
				  size_t len, const char *name, const char *env_prefix,
				  struct err *err)
{
	struct loader L;
	struct config *cfg = load(&L, schema, n, text ? text : "", text ? len : 0, name,
				  env_prefix);
	if (!cfg)
		errors_to_err(&L.errors, err);
	else
		log_warnings(&L.warnings);
	loader_done(&L);
	return cfg;
}

/* Reads path (when not NULL) and runs the loader; L holds the messages. */
static struct config *load_path(struct loader *L, const struct config_key *schema, size_t n,
				const char *path, const char *env_prefix)
{
	if (!path)
		return load(L, schema, n, NULL, 0, NULL, env_prefix);
	struct buf b;
	char why[256];
	if (read_capped(path, CONFIG_FILE_MAX, &b, why, sizeof why) < 0) {
		check_schema(schema, n, env_prefix);
		memset(L, 0, sizeof *L);
		buf_init(&L->errors.text, MSGS_CAP);
		buf_init(&L->warnings.text, MSGS_CAP);
		msgs_add(&L->errors, "%s: %s", path, why);
		return NULL;
	}
	struct config *cfg = load(L, schema, n, b.data, b.len, path, env_prefix);
	/* The file may hold secrets. */
	memset(b.data, 0, b.len);
	buf_free(&b);
	return cfg;
}

struct config *config_load(const struct config_key *schema, size_t n, const char *path,
			   const char *env_prefix, struct err *err)
{
	struct loader L;
	struct config *cfg = load_path(&L, schema, n, path, env_prefix);
	if (!cfg)
		errors_to_err(&L.errors, err);
	else
		log_warnings(&L.warnings);
	loader_done(&L);
	return cfg;
}

static void print_msgs(const struct msgs *m, const char *prefix, FILE *out)
{
	const char *p = m->text.data;
	size_t listed = 0;
	while (p && *p) {
		const char *nl = strchr(p, '\n');
		int l = nl ? (int)(nl - p) : (int)strlen(p);
		fprintf(out, "%s%.*s\n", prefix, l, p);
		listed++;
		if (!nl)
			break;
		p = nl + 1;
	}
	if (listed < m->count)
		fprintf(out, "%s... and %zu more\n", prefix, m->count - listed);
}

int config_check(const struct config_key *schema, size_t n, const char *path,
		 const char *env_prefix, FILE *out)
{
	struct loader L;
	struct config *cfg = load_path(&L, schema, n, path, env_prefix);
	print_msgs(&L.warnings, "warning: ", out);
	int rc = 0;
	if (cfg) {
		config_dump(cfg, out);
		config_free(cfg);
	} else {
		print_msgs(&L.errors, "", out);
		fprintf(out, "%zu error%s in the configuration\n", L.errors.count,
			L.errors.count == 1 ? "" : "s");
		rc = -1;
	}
	loader_done(&L);
	return rc;
}

/* The value of key in cfg, aborting on a key the schema lacks or the wrong type. */
static const struct config_value *get(const struct config *cfg, const char *key, const char *fn,
				      unsigned types)
{
	if (!cfg || !key)
		die("%s(%s): NULL argument", fn, key ? key : "NULL");
	for (size_t i = 0; i < cfg->n; i++) {
		const struct config_key *k = &cfg->schema[i];
		if (strcmp(k->name, key) != 0)
			continue;
		if (!(types & (1u << k->type)))
			die("%s(\"%s\"): the key is of type %s", fn, key, type_names[k->type]);
		return &cfg->v[i];
	}
	die("%s(\"%s\"): no such key in the schema", fn, key);
}

#define T(t) (1u << (t))
#define ANY_TYPE 0xffffffffu

const char *config_str(const struct config *cfg, const char *key)
{
	return get(cfg, key, "config_str",
		   T(CONFIG_STRING) | T(CONFIG_ENUM) | T(CONFIG_URL) | T(CONFIG_PATH) |
			   T(CONFIG_SECRET))->text;
}

int64_t config_int(const struct config *cfg, const char *key)
{
	return get(cfg, key, "config_int", T(CONFIG_INT))->num;
}

bool config_bool(const struct config *cfg, const char *key)
{
	return get(cfg, key, "config_bool", T(CONFIG_BOOL))->num != 0;
}

int64_t config_ms(const struct config *cfg, const char *key)
{
	return get(cfg, key, "config_ms", T(CONFIG_DURATION))->num;
}

int64_t config_size(const struct config *cfg, const char *key)
{
	return get(cfg, key, "config_size", T(CONFIG_SIZE))->num;
}

bool config_has(const struct config *cfg, const char *key)
{
	return get(cfg, key, "config_has", ANY_TYPE)->text != NULL;
}

const char *config_source(const struct config *cfg, const char *key)
{
	return get(cfg, key, "config_source", ANY_TYPE)->source;
}

/* A string value in the file's quoted form. */
static void print_quoted(FILE *out, const char *s)
{
	fputc('"', out);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fprintf(out, "\\%c", *s);
		else if (*s == '\n')
			fputs("\\n", out);
		else if (*s == '\t')
			fputs("\\t", out);
		else
			fputc(*s, out);
	}
	fputc('"', out);
}

void config_dump(const struct config *cfg, FILE *out)
{
	int width = 0;
	for (size_t i = 0; i < cfg->n; i++) {
		int l = (int)strlen(cfg->schema[i].name);
		if (l > width)
			width = l;
	}
	char tmp[32];
	for (size_t i = 0; i < cfg->n; i++) {
		const struct config_key *k = &cfg->schema[i];
		const struct config_value *v = &cfg->v[i];
		fprintf(out, "%-*s = ", width, k->name);
		if (!v->text) {
			fputs("(unset)\n", out);
			continue;
		}
		switch (k->type) {
		case CONFIG_SECRET:
			fputs("[secret]", out);
			break;
		case CONFIG_INT:
			fprintf(out, "%lld", (long long)v->num);
			break;
		case CONFIG_BOOL:
			fputs(v->num ? "true" : "false", out);
			break;
		case CONFIG_DURATION:
			fputs(fmt_ms(tmp, v->num), out);
			break;
		case CONFIG_SIZE:
			fputs(fmt_size(tmp, v->num), out);
			break;
		default:
			print_quoted(out, v->text);
			break;
		}
		fprintf(out, "  # %s\n", v->source);
	}
}

void config_usage(const struct config_key *schema, size_t n, FILE *out)
{
	char a[32], b[32];
	for (size_t i = 0; i < n; i++) {
		const struct config_key *k = &schema[i];
		fprintf(out, "%s (%s", k->name, type_names[k->type]);
		if (k->type == CONFIG_ENUM) {
			for (size_t c = 0; k->choices && k->choices[c]; c++)
				fprintf(out, "%s%s", c ? "|" : ": ", k->choices[c]);
		} else if (has_range(k) && k->type == CONFIG_INT) {
			fprintf(out, " %lld..%lld", (long long)k->min, (long long)k->max);
		} else if (has_range(k) && k->type == CONFIG_DURATION) {
			fprintf(out, " %s..%s", fmt_ms(a, k->min), fmt_ms(b, k->max));
		} else if (has_range(k) && k->type == CONFIG_SIZE) {
			fprintf(out, " %s..%s", fmt_size(a, k->min), fmt_size(b, k->max));
		} else if (is_string_type(k->type) && k->max > 0) {
			fprintf(out, ", at most %lld bytes", (long long)k->max);
		}
		if (k->required) {
			fputs(", required", out);
		} else if (k->default_value && k->type != CONFIG_SECRET) {
			fputs(", default ", out);
			if (k->default_value[0] && !strpbrk(k->default_value, " \t\"#\\\n"))
				fputs(k->default_value, out);
			else
				print_quoted(out, k->default_value);
		} else {
			fputs(", optional", out);
		}
		fputs(")\n", out);
		if (k->help)
			fprintf(out, "    %s\n", k->help);
	}
}
