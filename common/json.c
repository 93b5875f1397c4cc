#include "json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Length of the UTF-8 sequence at p (at most `left` bytes), 0 when invalid. */
static size_t utf8_seq(const unsigned char *p, size_t left)
{
	unsigned char c = p[0];
	if (c < 0x80)
		return 1;
	size_t n;
	unsigned char lo = 0x80, hi = 0xbf; /* range of the second byte */
	if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		if (c == 0xe0)
			lo = 0xa0; /* overlong */
		else if (c == 0xed)
			hi = 0x9f; /* UTF-16 surrogates */
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		if (c == 0xf0)
			lo = 0x90; /* overlong */
		else if (c == 0xf4)
			hi = 0x8f; /* above U+10FFFF */
	} else {
		return 0; /* continuation byte, C0/C1 overlongs, F5..FF */
	}
	if (left < n || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++) {
		if (p[i] < 0x80 || p[i] > 0xbf)
			return 0;
	}
	return n;
}

int json_utf8_check(const char *s, size_t len, size_t *bad_at)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;
	while (i < len) {
		if (p[i] < 0x80) {
			i++;
			continue;
		}
		size_t n = utf8_seq(p + i, len - i);
		if (n == 0) {
			if (bad_at)
				*bad_at = i;
			return -1;
		}
		i += n;
	}
	return 0;
}

static int is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static int is_hex(unsigned char c)
{
	return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int is_number_char(unsigned char c)
{
	return is_digit(c) || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
}

/* Checks the number at p[*i] against RFC 8259's grammar and moves *i past it. */
static int scan_number(const unsigned char *p, size_t len, size_t *i)
{
	size_t k = *i;
	if (k < len && p[k] == '-')
		k++;
	if (k < len && p[k] == '0') {
		k++;
	} else if (k < len && p[k] >= '1' && p[k] <= '9') {
		while (k < len && is_digit(p[k]))
			k++;
	} else {
		return -1;
	}
	if (k < len && p[k] == '.') {
		k++;
		if (k >= len || !is_digit(p[k]))
			return -1;
		while (k < len && is_digit(p[k]))
			k++;
	}
	if (k < len && (p[k] == 'e' || p[k] == 'E')) {
		k++;
		if (k < len && (p[k] == '+' || p[k] == '-'))
			k++;
		if (k >= len || !is_digit(p[k]))
			return -1;
		while (k < len && is_digit(p[k]))
			k++;
	}
	if (k < len && is_number_char(p[k]))
		return -1; /* "01", "1.2.3", "1e5e5" */
	*i = k;
	return 0;
}

/* Scans the string starting at the quote p[*i] and moves *i past its end. */
static int scan_string(const unsigned char *p, size_t len, size_t *i, struct err *err)
{
	size_t start = *i;
	size_t k = start + 1;
	for (;;) {
		if (k >= len)
			return err_set(err, "unterminated string starting at offset %zu", start);
		unsigned char c = p[k];
		if (c == '"') {
			*i = k + 1;
			return 0;
		}
		if (c == '\\') {
			if (k + 1 >= len)
				return err_set(err, "unterminated string starting at offset %zu",
					       start);
			unsigned char e = p[k + 1];
			if (!strchr("\"\\/bfnrtu", e) || e == '\0')
				return err_set(err, "invalid escape at offset %zu", k);
			if (e == 'u') {
				/* cJSON reads a bad digit as 0 and cuts the string there. */
				for (size_t h = 2; h < 6; h++) {
					if (k + h >= len || !is_hex(p[k + h]))
						return err_set(err, "invalid \\u escape at offset %zu",
							       k);
				}
				if (memcmp(p + k + 2, "0000", 4) == 0)
					return err_set(err, "\\u0000 in string at offset %zu", k);
			}
			k += 2;
			continue;
		}
		if (c < 0x20)
			return err_set(err, "%s in string at offset %zu",
				       c ? "unescaped control character" : "NUL byte", k);
		if (c >= 0x80) {
			size_t n = utf8_seq(p + k, len - k);
			if (n == 0)
				return err_set(err, "invalid UTF-8 at offset %zu", k);
			k += n;
			continue;
		}
		k++;
	}
}

/* The pre-pass: everything cJSON accepts but RFC 8259 or we do not. */
static int json_prescan(const unsigned char *p, size_t len, struct err *err)
{
	int depth = 0;
	size_t i = 0;
	while (i < len) {
		unsigned char c = p[i];
		if (c == '"') {
			if (scan_string(p, len, &i, err) < 0)
				return -1;
			continue;
		}
		if (c == '\0')
			return err_set(err, "NUL byte at offset %zu", i);
		if (c >= 0x80) {
			size_t n = utf8_seq(p + i, len - i);
			if (n == 0)
				return err_set(err, "invalid UTF-8 at offset %zu", i);
			i += n;
			continue;
		}
		if (c == '-' || c == '+' || c == '.' || is_digit(c)) {
			size_t at = i;
			if (scan_number(p, len, &i) < 0)
				return err_set(err, "invalid number at offset %zu", at);
			/* cJSON reads at most 63 characters of a number (and fails
			 * further on), and turns 1e400 into infinity, which no
			 * getter wants and json_print would write as null. */
			char num[64];
			if (i - at >= sizeof num)
				return err_set(err, "number longer than %zu characters at offset %zu",
					       sizeof num - 1, at);
			memcpy(num, p + at, i - at);
			num[i - at] = '\0';
			if (!isfinite(strtod(num, NULL)))
				return err_set(err, "number out of range at offset %zu", at);
			continue;
		}
		if (c == '[' || c == '{') {
			if (++depth > JSON_DEPTH_MAX)
				return err_set(err, "nesting deeper than %d levels at offset %zu",
					       JSON_DEPTH_MAX, i);
		} else if (c == ']' || c == '}') {
			depth--;
		}
		i++;
	}
	return 0;
}

cJSON *json_parse(const char *text, size_t len, size_t max_len, struct err *err)
{
	if (len > max_len) {
		err_set(err, "document is %zu bytes, more than the limit of %zu", len, max_len);
		return NULL;
	}
	if (!text || len == 0) {
		err_set(err, "empty document");
		return NULL;
	}
	if (json_prescan((const unsigned char *)text, len, err) < 0)
		return NULL;
	/* cJSON is told the length, but a NUL after the text keeps any read one
	 * past it (inside a library ASan does not instrument) harmless. */
	char *copy = malloc(len + 1);
	if (!copy) {
		err_set(err, "out of memory parsing %zu bytes", len);
		return NULL;
	}
	memcpy(copy, text, len);
	copy[len] = '\0';
	const char *end = NULL;
	cJSON *root = cJSON_ParseWithLengthOpts(copy, len, &end, 0);
	if (!root) {
		size_t at = end && end >= copy && end <= copy + len ? (size_t)(end - copy) : 0;
		free(copy);
		err_set(err, "syntax error at offset %zu", at);
		return NULL;
	}
	size_t at = (size_t)(end - copy);
	while (at < len && (copy[at] == ' ' || copy[at] == '\t' || copy[at] == '\n' ||
			    copy[at] == '\r'))
		at++;
	free(copy);
	if (at != len) {
		cJSON_Delete(root);
		err_set(err, "unexpected data after the JSON value at offset %zu", at);
		return NULL;
	}
	return root;
}

/* Copies as much of s as fits (always NUL-terminated), returns the length used. */
static size_t put(char *out, size_t cap, size_t used, const char *s)
{
	if (used >= cap)
		return used;
	size_t n = strlen(s);
	if (n > cap - 1 - used)
		n = cap - 1 - used;
	memcpy(out + used, s, n);
	out[used + n] = '\0';
	return used + n;
}

char *json_path_key(char *out, size_t cap, const char *path, const char *key)
{
	if (cap == 0)
		return out;
	out[0] = '\0';
	size_t used = 0;
	if (path && *path) {
		used = put(out, cap, used, path);
		used = put(out, cap, used, ".");
	}
	put(out, cap, used, key ? key : "");
	return out;
}

char *json_path_index(char *out, size_t cap, const char *path, size_t index)
{
	if (cap == 0)
		return out;
	out[0] = '\0';
	char idx[32];
	snprintf(idx, sizeof idx, "[%zu]", index);
	size_t used = put(out, cap, 0, path ? path : "");
	put(out, cap, used, idx);
	return out;
}

static const char *type_name(const cJSON *v)
{
	if (!v)
		return "nothing";
	if (cJSON_IsString(v))
		return "string";
	if (cJSON_IsNumber(v))
		return "number";
	if (cJSON_IsBool(v))
		return "boolean";
	if (cJSON_IsNull(v))
		return "null";
	if (cJSON_IsArray(v))
		return "array";
	if (cJSON_IsObject(v))
		return "object";
	return "invalid";
}

/*
 * Finds the value the getter checks: obj[key], or obj itself when key is NULL.
 * Fills where with the value's path for messages. Returns 1 when found (null
 * included), 0 when missing, -1 when obj is not an object.
 */
static int lookup(const cJSON *obj, const char *path, const char *key, const cJSON **v,
		  char where[JSON_PATH_MAX], struct err *err)
{
	if (!key) {
		json_path_key(where, JSON_PATH_MAX, NULL, path && *path ? path : "(root)");
		*v = obj;
		return obj ? 1 : 0;
	}
	json_path_key(where, JSON_PATH_MAX, path, key);
	if (!cJSON_IsObject(obj))
		return err_set(err, "%s: expected object, got %s",
			       path && *path ? path : "(root)", type_name(obj));
	*v = cJSON_GetObjectItemCaseSensitive(obj, key);
	return *v ? 1 : 0;
}

/* lookup() for required getters: missing is an error too. */
static int need(const cJSON *obj, const char *path, const char *key, const cJSON **v,
		char where[JSON_PATH_MAX], struct err *err)
{
	int rc = lookup(obj, path, key, v, where, err);
	if (rc == 0)
		return err_set(err, "%s: missing", where);
	return rc < 0 ? -1 : 0;
}

/* lookup() for _opt getters: 1 when a non-null value is there, 0 for the default. */
static int want(const cJSON *obj, const char *path, const char *key, const cJSON **v,
		char where[JSON_PATH_MAX], struct err *err)
{
	int rc = lookup(obj, path, key, v, where, err);
	if (rc <= 0)
		return rc;
	return cJSON_IsNull(*v) ? 0 : 1;
}

static int check_string(const cJSON *v, const char *where, size_t max_len, const char **out,
			struct err *err)
{
	if (!cJSON_IsString(v) || !v->valuestring)
		return err_set(err, "%s: expected string, got %s", where, type_name(v));
	size_t n = strlen(v->valuestring);
	if (n > max_len)
		return err_set(err, "%s: string of %zu bytes, longer than %zu", where, n, max_len);
	*out = v->valuestring;
	return 0;
}

int json_get_string(const cJSON *obj, const char *path, const char *key, size_t max_len,
		    const char **out, struct err *err)
{
	char where[JSON_PATH_MAX];
	const cJSON *v;
	if (need(obj, path, key, &v, where, err) < 0)
		return -1;
	return check_string(v, where, max_len, out, err);
}

int json_get_string_opt(const cJSON *obj, const char *path, const char *key, size_t max_len,
			const char *def, const char **out, struct err *err)
{
	char where[JSON_PATH_MAX];
	const cJSON *v;
	int rc = want(obj, path, key, &v, where, err);
	if (rc < 0)
		return -1;
	if (rc == 0) {
		*out = def;
		return 0;
	}
	return check_string(v, where, max_len, out, err);
}

static int check_int(const cJSON *v, const char *where, int64_t min, int64_t max, int64_t *out,
		     struct err *err)
{
	if (!cJSON_IsNumber(v))
		return err_set(err, "%s: expected integer %lld..%lld, got %s", where,
			       (long long)min, (long long)max, type_name(v));
	double d = v->valuedouble;
	if (!isfinite(d) || d != floor(d) || d > (double)JSON_INT_LIMIT ||
	    d < -(double)JSON_INT_LIMIT)
		return err_set(err, "%s: expected integer %lld..%lld, got %.17g", where,
			       (long long)min, (long long)max, d);
	int64_t n = (int64_t)d;
	if (n < min || n > max)
		return err_set(err, "%s: expected integer %lld..%lld, got %lld", where,
			       (long long)min, (long long)max, (long long)n);
	*out = n;
	return 0;
}

int json_get_int(const cJSON *obj, const char *path, const char *key, int64_t min, int64_t max,
		 int64_t *out, struct err *err)
{
	char where[JSON_PATH_MAX];
	const cJSON *v;
	if (need(obj, path, key, &v, where, err) < 0)
		return -1;
	return check_int(v, where, min, max, out, err);
}

int json_get_int_opt(const cJSON *obj, const char *path, const char *key, int64_t min,
		     int64_t max, int64_t def, int64_t *out, struct err *err)
{
	char where[JSON_PATH_MAX];
	const cJSON *v;
	int rc = want(obj, path, key, &v, where, err);
	if (rc < 0)
		return -1;
	if (rc == 0) {
		*out = def;
		return 0;
	}
	return check_int(v, where, min, max, out, err);
}

static int check_bool(const cJSON *v, const char *where, bool *out, struct err *err)
{
	if (!cJSON_IsBool(v))
		return err_set(err, "%s: expected boolean, got %s", where, type_name(v));
	*out = cJSON_IsTrue(v);
	return 0;
}

int json_get_bool(const cJSON *obj, const char *path, const char *key, bool *out,
		  struct err *err)
{
	char where[JSON_PATH_MAX];
	const cJSON *v;
	if (need(obj, path, key, &v, where, err) < 0)
		return -1;
	return check_bool(v, where, out, err);
}

int json_get_bool_opt(const cJSON *obj, const char *path, const char *key, bool def, bool *out,
		      struct err *err)
{
	char where[JSON_PATH_MAX];
	const cJSON *v;
	int rc = want(obj, path, key, &v, where, err);
	if (rc < 0)
		return -1;
	if (rc == 0) {
		*out = def;
		return 0;
	}
	return check_bool(v, where, out, err);
}

int json_get_object(const cJSON *obj, const char *path, const char *key, const cJSON **out,
		    struct err *err)
{
	char where[JSON_PATH_MAX];
	const cJSON *v;
	if (need(obj, path, key, &v, where, err) < 0)
		return -1;
	if (!cJSON_IsObject(v))
		return err_set(err, "%s: expected object, got %s", where, type_name(v));
	*out = v;
	return 0;
}

int json_get_object_opt(const cJSON *obj, const char *path, const char *key,
			const cJSON **out, struct err *err)
{
	char where[JSON_PATH_MAX];
	const cJSON *v;
	int rc = want(obj, path, key, &v, where, err);
	if (rc < 0)
		return -1;
	if (rc == 0) {
		*out = NULL;
		return 0;
	}
	if (!cJSON_IsObject(v))
		return err_set(err, "%s: expected object, got %s", where, type_name(v));
	*out = v;
	return 0;
}

static int check_array(const cJSON *v, const char *where, size_t max_items, const cJSON **out,
		       size_t *count, struct err *err)
{
	if (!cJSON_IsArray(v))
		return err_set(err, "%s: expected array, got %s", where, type_name(v));
	size_t n = 0;
	for (const cJSON *it = v->child; it; it = it->next) {
		if (++n > max_items)
			return err_set(err, "%s: more than %zu items", where, max_items);
	}
	*out = v;
	if (count)
		*count = n;
	return 0;
}

int json_get_array(const cJSON *obj, const char *path, const char *key, size_t max_items,
		   const cJSON **out, size_t *count, struct err *err)
{
	char where[JSON_PATH_MAX];
	const cJSON *v;
	if (need(obj, path, key, &v, where, err) < 0)
		return -1;
	return check_array(v, where, max_items, out, count, err);
}

int json_get_array_opt(const cJSON *obj, const char *path, const char *key, size_t max_items,
		       const cJSON **out, size_t *count, struct err *err)
{
	char where[JSON_PATH_MAX];
	const cJSON *v;
	int rc = want(obj, path, key, &v, where, err);
	if (rc < 0)
		return -1;
	if (rc == 0) {
		*out = NULL;
		if (count)
			*count = 0;
		return 0;
	}
	return check_array(v, where, max_items, out, count, err);
}

/* A key from outside, made safe and short for an error message. */
static void quote_key(char out[80], const char *key)
{
	size_t o = 0;
	const unsigned char *p = (const unsigned char *)key;
	for (; *p && o < 64; p++)
		out[o++] = (*p < 0x20 || *p == 0x7f || *p == '"' || *p == '\\') ? '?' : (char)*p;
	/* Do not end in the middle of a UTF-8 sequence. */
	if (*p) {
		while (o > 0 && ((unsigned char)out[o - 1] & 0xc0) == 0x80)
			o--;
		if (o > 0 && ((unsigned char)out[o - 1] & 0xc0) == 0xc0)
			o--;
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o] = '\0';
}

int json_check_keys(const cJSON *obj, const char *const *allowed, const char *path,
		    struct err *err)
{
	const char *where = path && *path ? path : "(root)";
	if (!cJSON_IsObject(obj))
		return err_set(err, "%s: expected object, got %s", where, type_name(obj));
	char shown[80];
	/* Every key must be allowed, so a duplicate shows up within the first
	 * (number of allowed keys + 1) children: the scan back is bounded. */
	for (const cJSON *it = obj->child; it; it = it->next) {
		const char *key = it->string ? it->string : "";
		size_t i = 0;
		while (allowed[i] && strcmp(allowed[i], key) != 0)
			i++;
		if (!allowed[i]) {
			quote_key(shown, key);
			return err_set(err, "%s: unknown key \"%s\"", where, shown);
		}
		for (const cJSON *prev = obj->child; prev != it; prev = prev->next) {
			if (prev->string && strcmp(prev->string, key) == 0) {
				quote_key(shown, key);
				return err_set(err, "%s: duplicate key \"%s\"", where, shown);
			}
		}
	}
	return 0;
}

char *json_print(const cJSON *v, size_t max_len, struct err *err)
{
	if (!v) {
		err_set(err, "nothing to print");
		return NULL;
	}
	char *text = cJSON_PrintUnformatted(v);
	if (!text) {
		err_set(err, "out of memory printing JSON");
		return NULL;
	}
	size_t n = strlen(text);
	if (n > max_len) {
		cJSON_free(text);
		err_set(err, "JSON text of %zu bytes, longer than %zu", n, max_len);
		return NULL;
	}
	return text;
}

int json_to_buf(const cJSON *v, struct buf *out)
{
	if (!v)
		return -1;
	char *text = cJSON_PrintUnformatted(v);
	if (!text)
		return -1;
	int rc = buf_append_str(out, text);
	cJSON_free(text);
	return rc;
}
