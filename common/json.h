/*
 * json: strict parsing and typed, bounds-checked getters over cJSON.
 *
 * json_parse accepts only what RFC 8259 allows, within caps: at most max_len
 * bytes, valid UTF-8 (no overlongs, no surrogates; cJSON itself accepts any
 * bytes), no NUL byte, no "\u0000" and no "\u" with a bad hex digit (cJSON
 * reads both as 0 and silently cuts the string there), no raw control
 * characters in strings, strict number syntax (cJSON takes "+1", "01", ".5"),
 * numbers of at most 63 characters that fit a double (1e400 is refused, not
 * made infinite), nesting at most JSON_DEPTH_MAX, and nothing but whitespace
 * after the value. A pre-pass checks all of that before cJSON builds a tree, so
 * a hostile document costs one linear scan. Errors give the byte offset
 * ("syntax error at offset 17"). Duplicate object keys are not
 * rejected here (cJSON keeps both, the getters see the first); objects with a
 * strict schema go through json_check_keys, which rejects them.
 *
 * Getters share one design for error paths: each takes the path of the object
 * it reads from (NULL or "" for the document root) and the key, and on failure
 * says "release.services[2].port: expected integer 1..65535, got string".
 * Build the path of a nested object with json_path_key / json_path_index into
 * a char[JSON_PATH_MAX]. A NULL key checks obj itself (an array element):
 * json_get_int(item, "ports[3]", NULL, 1, 65535, &port, err). Required getters
 * fail on a missing key and on null; the _opt variants give the default for
 * both. Getters return 0 / -1 and write *out only on success.
 *
 * Ownership: json_parse returns a tree the caller frees with cJSON_Delete;
 * strings and nodes returned by getters point into the tree. json_print's
 * result is freed with free() (cJSON's default allocator; slipway never
 * installs other hooks). Thread-safe apart from cJSON's own global error slot,
 * which every parse writes (slipway never reads it). Never blocks.
 */
#ifndef SLIPWAY_JSON_H
#define SLIPWAY_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "buf.h"
#include "err.h"

#define JSON_DEPTH_MAX 64
#define JSON_PATH_MAX 256
#define JSON_INT_LIMIT 9007199254740991LL   /* 2^53 - 1: exact in a double */

/* Parses exactly len bytes of text (no NUL terminator needed). */
cJSON *json_parse(const char *text, size_t len, size_t max_len, struct err *err);

/* Writes "path.key" / "path[index]" into out (cap bytes, cut if longer);
 * returns out. A NULL or empty path yields the key alone. */
char *json_path_key(char *out, size_t cap, const char *path, const char *key);
char *json_path_index(char *out, size_t cap, const char *path, size_t index);

int json_get_string(const cJSON *obj, const char *path, const char *key, size_t max_len,
		    const char **out, struct err *err);
int json_get_string_opt(const cJSON *obj, const char *path, const char *key, size_t max_len,
			const char *def, const char **out, struct err *err);
/* An integral number in min..max (and within +-JSON_INT_LIMIT): 1.5, 1e300 and
 * 9007199254740993 are refused; 2.0 is 2. */
int json_get_int(const cJSON *obj, const char *path, const char *key, int64_t min, int64_t max,
		 int64_t *out, struct err *err);
int json_get_int_opt(const cJSON *obj, const char *path, const char *key, int64_t min,
		     int64_t max, int64_t def, int64_t *out, struct err *err);
int json_get_bool(const cJSON *obj, const char *path, const char *key, bool *out,
		  struct err *err);
int json_get_bool_opt(const cJSON *obj, const char *path, const char *key, bool def, bool *out,
		      struct err *err);
int json_get_object(const cJSON *obj, const char *path, const char *key, const cJSON **out,
		    struct err *err);
/* Missing or null: *out = NULL. */
int json_get_object_opt(const cJSON *obj, const char *path, const char *key,
			const cJSON **out, struct err *err);
/* An array of at most max_items; *count (may be NULL) gets its length. */
int json_get_array(const cJSON *obj, const char *path, const char *key, size_t max_items,
		   const cJSON **out, size_t *count, struct err *err);
/* Missing or null: *out = NULL, *count = 0. */
int json_get_array_opt(const cJSON *obj, const char *path, const char *key, size_t max_items,
		       const cJSON **out, size_t *count, struct err *err);

/* obj must be an object whose keys are all in allowed (NULL-terminated), each
 * at most once. path names obj in the message. */
int json_check_keys(const cJSON *obj, const char *const *allowed, const char *path,
		    struct err *err);

/* Unformatted text; NULL (and err) when longer than max_len bytes. */
char *json_print(const cJSON *v, size_t max_len, struct err *err);
/* Appends the unformatted text to out; -1 (out unchanged) past its cap. */
int json_to_buf(const cJSON *v, struct buf *out);

/* 0 when s[0..len) is valid UTF-8 (RFC 3629: no overlongs, no surrogates, nothing
 * above U+10FFFF); else -1 and *bad_at (may be NULL) is the offending offset.
 * NUL bytes are valid UTF-8: callers that refuse them check separately. */
int json_utf8_check(const char *s, size_t len, size_t *bad_at);

#endif
