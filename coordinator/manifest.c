#include "manifest.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <yaml.h>

#include "buf.h"
#include "json.h"

/* ---- a YAML document as a small tree with line numbers ------------------ */

enum node_kind { N_SCALAR, N_MAP, N_SEQ };

struct node {
	enum node_kind kind;
	int line;             /* 1-based */
	int key_line;         /* a mapping's value: the line of its key */
	/* scalar */
	char *text;
	size_t len;
	bool plain;           /* unquoted, untagged: may be null, bool or int */
	/* map (keys and values alternate) and seq */
	struct node **items;
	size_t n, cap;
};

struct parse {
	const char *name;     /* "slipway.yml" */
	size_t nodes;
	struct buf errors;    /* one line per error, capped */
	int error_count;
};

#define ERRORS_KEPT 20

static void node_free(struct node *n)
{
	if (!n)
		return;
	for (size_t i = 0; i < n->n; i++)
		node_free(n->items[i]);
	free(n->items);
	free(n->text);
	free(n);
}

/* Records one error at `line` (0: no line known). */
__attribute__((format(printf, 3, 4))) static void perr(struct parse *p, int line,
						      const char *fmt, ...)
{
	p->error_count++;
	if (p->error_count > ERRORS_KEPT)
		return;
	char msg[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (p->errors.len)
		buf_append_byte(&p->errors, '\n');
	if (line > 0)
		buf_printf(&p->errors, "%s:%d: %s", p->name, line, msg);
	else
		buf_printf(&p->errors, "%s: %s", p->name, msg);
}

static struct node *node_new(struct parse *p, enum node_kind kind, int line)
{
	if (++p->nodes > MANIFEST_NODES_MAX) {
		if (p->nodes == MANIFEST_NODES_MAX + 1)
			perr(p, line, "more than %d YAML nodes", MANIFEST_NODES_MAX);
		return NULL;
	}
	struct node *n = calloc(1, sizeof *n);
	if (!n) {
		perr(p, line, "out of memory");
		return NULL;
	}
	n->kind = kind;
	n->line = line;
	return n;
}

static int node_add(struct parse *p, struct node *parent, struct node *child)
{
	if (parent->n == parent->cap) {
		size_t cap = parent->cap ? parent->cap * 2 : 8;
		struct node **items = realloc(parent->items, cap * sizeof *items);
		if (!items) {
			perr(p, child->line, "out of memory");
			return -1;
		}
		parent->items = items;
		parent->cap = cap;
	}
	parent->items[parent->n++] = child;
	return 0;
}

static const char *yaml_event_name(yaml_event_type_t t)
{
	switch (t) {
	case YAML_SCALAR_EVENT:
		return "scalar";
	case YAML_SEQUENCE_START_EVENT:
		return "sequence";
	case YAML_MAPPING_START_EVENT:
		return "mapping";
	default:
		return "event";
	}
}

/* Reads the events of one document into a tree. NULL after perr. */
static struct node *read_tree(struct parse *p, const char *text, size_t len)
{
	yaml_parser_t yp;
	if (!yaml_parser_initialize(&yp)) {
		perr(p, 0, "out of memory");
		return NULL;
	}
	yaml_parser_set_input_string(&yp, (const unsigned char *)text, len);
	yaml_parser_set_encoding(&yp, YAML_UTF8_ENCODING);

	struct node *stack[MANIFEST_DEPTH_MAX + 1];
	int depth = 0;
	struct node *root = NULL;
	int documents = 0;
	bool done = false, failed = false;

	while (!done && !failed) {
		yaml_event_t ev;
		if (!yaml_parser_parse(&yp, &ev)) {
			int line = (int)yp.problem_mark.line + 1;
			if (yp.context)
				perr(p, line, "invalid YAML: %s %s", yp.context,
				     yp.problem ? yp.problem : "");
			else
				perr(p, line, "invalid YAML: %s", yp.problem ? yp.problem : "error");
			failed = true;
			break;
		}
		int line = (int)ev.start_mark.line + 1;
		struct node *n = NULL;
		switch (ev.type) {
		case YAML_STREAM_START_EVENT:
		case YAML_DOCUMENT_END_EVENT:
			break;
		case YAML_STREAM_END_EVENT:
			done = true;
			break;
		case YAML_DOCUMENT_START_EVENT:
			if (++documents > 1) {
				perr(p, line, "only one YAML document is allowed");
				failed = true;
			}
			break;
		case YAML_ALIAS_EVENT:
			perr(p, line, "aliases (*%s) are not supported",
			     ev.data.alias.anchor ? (const char *)ev.data.alias.anchor : "");
			failed = true;
			break;
		case YAML_SCALAR_EVENT: {
			const char *tag = (const char *)ev.data.scalar.tag;
			if (tag && strcmp(tag, YAML_STR_TAG) != 0 && strcmp(tag, "!") != 0) {
				perr(p, line, "YAML tags (%s) are not supported", tag);
				failed = true;
				break;
			}
			n = node_new(p, N_SCALAR, line);
			if (!n) {
				failed = true;
				break;
			}
			n->len = ev.data.scalar.length;
			n->text = malloc(n->len + 1);
			if (!n->text) {
				perr(p, line, "out of memory");
				node_free(n);
				n = NULL;
				failed = true;
				break;
			}
			memcpy(n->text, ev.data.scalar.value, n->len);
			n->text[n->len] = '\0';
			n->plain = !tag && ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
			break;
		}
		case YAML_SEQUENCE_START_EVENT:
		case YAML_MAPPING_START_EVENT: {
			const char *tag = ev.type == YAML_SEQUENCE_START_EVENT
						  ? (const char *)ev.data.sequence_start.tag
						  : (const char *)ev.data.mapping_start.tag;
			if (tag) {
				perr(p, line, "YAML tags (%s) are not supported", tag);
				failed = true;
				break;
			}
			if (depth >= MANIFEST_DEPTH_MAX) {
				perr(p, line, "nested deeper than %d levels", MANIFEST_DEPTH_MAX);
				failed = true;
				break;
			}
			n = node_new(p, ev.type == YAML_SEQUENCE_START_EVENT ? N_SEQ : N_MAP, line);
			if (!n)
				failed = true;
			break;
		}
		case YAML_SEQUENCE_END_EVENT:
		case YAML_MAPPING_END_EVENT:
			depth--;
			break;
		default:
			perr(p, line, "unexpected YAML %s", yaml_event_name(ev.type));
			failed = true;
			break;
		}
		yaml_event_delete(&ev);
		if (!n)
			continue;
		/* Attach the new node to its parent (or make it the root). */
		if (depth == 0) {
			if (root) {
				node_free(n);
				perr(p, line, "unexpected second root node");
				failed = true;
				continue;
			}
			root = n;
		} else if (node_add(p, stack[depth - 1], n) < 0) {
			node_free(n);
			failed = true;
			continue;
		} else if (stack[depth - 1]->kind == N_MAP && stack[depth - 1]->n % 2 == 0) {
			n->key_line = stack[depth - 1]->items[stack[depth - 1]->n - 2]->line;
		}
		if (n->kind != N_SCALAR)
			stack[depth++] = n;
	}
	yaml_parser_delete(&yp);
	if (failed) {
		node_free(root);
		return NULL;
	}
	if (!root)
		perr(p, 1, "the file is empty: it needs at least `services:`");
	return root;
}

/* ---- typed readers ------------------------------------------------------- */

static bool is_null(const struct node *n)
{
	if (!n)
		return true;
	if (n->kind != N_SCALAR || !n->plain)
		return false;
	return n->len == 0 || strcmp(n->text, "~") == 0 || strcmp(n->text, "null") == 0 ||
	       strcmp(n->text, "Null") == 0 || strcmp(n->text, "NULL") == 0;
}

/* Where a message about a node as a whole points: its key when it has one
 * (a block mapping starts on the line after its key). */
static int at(const struct node *n)
{
	return n->key_line ? n->key_line : n->line;
}

static const char *kind_name(const struct node *n)
{
	if (is_null(n))
		return "null";
	switch (n->kind) {
	case N_MAP:
		return "a mapping";
	case N_SEQ:
		return "a list";
	default:
		return "a scalar";
	}
}

/* A mapping's value for key, or NULL. */
static const struct node *map_get(const struct node *map, const char *key)
{
	for (size_t i = 0; i + 1 < map->n; i += 2)
		if (map->items[i]->kind == N_SCALAR && strcmp(map->items[i]->text, key) == 0)
			return map->items[i + 1];
	return NULL;
}

/* Checks that map is a mapping with scalar, unique keys, each one in allowed
 * (NULL: any key). Reports every problem; -1 if there was one. */
static int check_map(struct parse *p, const struct node *map, const char *path,
		     const char *const *allowed)
{
	if (map->kind != N_MAP) {
		perr(p, map->line, "%s: expected a mapping, got %s", path, kind_name(map));
		return -1;
	}
	int rc = 0;
	for (size_t i = 0; i + 1 < map->n; i += 2) {
		const struct node *k = map->items[i];
		if (k->kind != N_SCALAR || is_null(k)) {
			perr(p, k->line, "%s: keys must be strings", path);
			rc = -1;
			continue;
		}
		for (size_t j = 0; j < i; j += 2) {
			const struct node *prev = map->items[j];
			if (prev->kind == N_SCALAR && strcmp(prev->text, k->text) == 0) {
				perr(p, k->line, "%s: duplicate key '%.64s' (first at line %d)", path,
				     k->text, prev->line);
				rc = -1;
				break;
			}
		}
		if (!allowed)
			continue;
		size_t a = 0;
		while (allowed[a] && strcmp(allowed[a], k->text) != 0)
			a++;
		if (!allowed[a]) {
			char list[256] = "";
			size_t used = 0;
			for (size_t b = 0; allowed[b] && used < sizeof list - 1; b++)
				used += (size_t)snprintf(list + used, sizeof list - used, "%s%s",
							 b ? ", " : "", allowed[b]);
			perr(p, k->line, "%s: unknown key '%.64s' (expected one of: %s)", path,
			     k->text, list);
			rc = -1;
		}
	}
	return rc;
}

static int get_int(struct parse *p, const struct node *n, const char *path, int64_t min,
		   int64_t max, int64_t *out)
{
	bool ok = n->kind == N_SCALAR && n->plain && n->len > 0 && n->len <= 18;
	int64_t v = 0;
	for (size_t i = 0; ok && i < n->len; i++) {
		char c = n->text[i];
		if (i == 0 && (c == '-' || c == '+') && n->len > 1)
			continue;
		if (c < '0' || c > '9')
			ok = false;
	}
	if (ok) {
		v = strtoll(n->text, NULL, 10);
		ok = v >= min && v <= max;
	}
	if (!ok) {
		perr(p, n->line, "%s: expected an integer %lld..%lld", path, (long long)min,
		     (long long)max);
		return -1;
	}
	*out = v;
	return 0;
}

static int get_bool(struct parse *p, const struct node *n, const char *path, bool *out)
{
	if (n->kind == N_SCALAR && n->plain) {
		if (!strcmp(n->text, "true") || !strcmp(n->text, "True") ||
		    !strcmp(n->text, "TRUE")) {
			*out = true;
			return 0;
		}
		if (!strcmp(n->text, "false") || !strcmp(n->text, "False") ||
		    !strcmp(n->text, "FALSE")) {
			*out = false;
			return 0;
		}
	}
	perr(p, n->line, "%s: expected true or false", path);
	return -1;
}

/* Any non-null scalar, as written. */
static int get_string(struct parse *p, const struct node *n, const char *path, size_t max,
		      const char **out)
{
	if (n->kind != N_SCALAR || is_null(n)) {
		perr(p, n->line, "%s: expected a string, got %s", path, kind_name(n));
		return -1;
	}
	if (n->len > max) {
		perr(p, n->line, "%s: longer than %zu bytes", path, max);
		return -1;
	}
	if (memchr(n->text, '\0', n->len)) {
		perr(p, n->line, "%s: contains a NUL byte", path);
		return -1;
	}
	*out = n->text;
	return 0;
}

/* A duration: an integer (seconds) or "<n>ms|s|m|h". */
static int get_duration(struct parse *p, const struct node *n, const char *path, int64_t min_ms,
			int64_t max_ms, int64_t *out)
{
	int64_t ms = -1;
	if (n->kind == N_SCALAR && !is_null(n) && n->len > 0 && n->len < 20) {
		const char *s = n->text;
		size_t digits = 0;
		while (s[digits] >= '0' && s[digits] <= '9')
			digits++;
		const char *unit = s + digits;
		if (digits > 0 && digits <= 12) {
			int64_t v = strtoll(s, NULL, 10);
			if (*unit == '\0' && n->plain)
				ms = v * 1000;
			else if (!strcmp(unit, "ms"))
				ms = v;
			else if (!strcmp(unit, "s"))
				ms = v * 1000;
			else if (!strcmp(unit, "m"))
				ms = v * 60000;
			else if (!strcmp(unit, "h"))
				ms = v * 3600000;
		}
	}
	if (ms < min_ms || ms > max_ms) {
		perr(p, n->line,
		     "%s: expected a duration %lldms..%llds (\"500ms\", \"30s\", \"5m\", \"1h\"; "
		     "a bare number is seconds)",
		     path, (long long)min_ms, (long long)(max_ms / 1000));
		return -1;
	}
	*out = ms;
	return 0;
}

/* Memory: an integer (MiB) or "<n>M" / "<n>G" (binary units; Mi, MB, MiB, Gi,
 * GB and GiB too, any case). 0 or 6..1048576 MiB. */
static int get_memory(struct parse *p, const struct node *n, const char *path, int64_t *out)
{
	int64_t mb = -1;
	if (n->kind == N_SCALAR && !is_null(n) && n->len > 0 && n->len < 20) {
		const char *s = n->text;
		size_t digits = 0;
		while (s[digits] >= '0' && s[digits] <= '9')
			digits++;
		if (digits > 0 && digits <= 9) {
			int64_t v = strtoll(s, NULL, 10);
			const char *u = s + digits;
			if (*u == '\0' && n->plain) {
				mb = v;
			} else if (*u == 'M' || *u == 'm' || *u == 'G' || *u == 'g') {
				int64_t mul = (*u == 'M' || *u == 'm') ? 1 : 1024;
				u++;
				if (*u == 'i')
					u++;
				if (*u == 'B' || *u == 'b')
					u++;
				if (*u == '\0')
					mb = v * mul;
			}
		}
	}
	if (mb != 0 && (mb < 6 || mb > 1048576)) {
		perr(p, n->line,
		     "%s: expected a memory limit of 0 (none) or 6M..1024G (\"256M\", \"1G\"; a "
		     "bare number is MiB)",
		     path);
		return -1;
	}
	*out = mb;
	return 0;
}

/* A relative path inside the repository, normalized ("./a//b/" -> "a/b",
 * "" -> "."). No "..", no absolute paths, no control characters. */
static int get_relpath(struct parse *p, const struct node *n, const char *path, char *out,
		       size_t cap)
{
	const char *s;
	if (get_string(p, n, path, MANIFEST_PATH_MAX, &s) < 0)
		return -1;
	if (s[0] == '/') {
		perr(p, n->line, "%s: must be relative to the repository root", path);
		return -1;
	}
	size_t o = 0;
	const char *seg = s;
	while (*seg) {
		const char *end = strchr(seg, '/');
		size_t len = end ? (size_t)(end - seg) : strlen(seg);
		if (len == 2 && seg[0] == '.' && seg[1] == '.') {
			perr(p, n->line, "%s: must not contain '..'", path);
			return -1;
		}
		for (size_t i = 0; i < len; i++) {
			if ((unsigned char)seg[i] < 0x20 || seg[i] == 0x7f) {
				perr(p, n->line, "%s: contains a control character", path);
				return -1;
			}
		}
		if (len > 0 && !(len == 1 && seg[0] == '.')) {
			if (o + len + 2 > cap) {
				perr(p, n->line, "%s: too long", path);
				return -1;
			}
			if (o)
				out[o++] = '/';
			memcpy(out + o, seg, len);
			o += len;
		}
		seg += len;
		while (*seg == '/')
			seg++;
	}
	if (o == 0)
		out[o++] = '.';
	out[o] = '\0';
	return 0;
}

static bool valid_name(const char *s)
{
	size_t n = strlen(s);
	if (n < 1 || n > 40 || s[0] < 'a' || s[0] > 'z')
		return false;
	for (size_t i = 1; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
			return false;
	return true;
}

static bool valid_env_name(const char *s)
{
	if (!((s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
		return false;
	for (size_t i = 1; s[i]; i++)
		if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
		      (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
			return false;
	return strlen(s) <= 256;
}

/* A host name for the proxy: DNS labels of [a-z0-9-], optionally "*." first;
 * written lowercase into out. */
static bool valid_host(const char *s, char *out, size_t cap)
{
	size_t n = strlen(s);
	if (n == 0 || n > 253 || n + 1 > cap)
		return false;
	size_t i = 0, label = 0;
	if (s[0] == '*' && s[1] == '.') {
		out[0] = '*';
		out[1] = '.';
		i = 2;
	}
	if (i >= n)
		return false;
	for (; i < n; i++) {
		char c = s[i];
		if (c >= 'A' && c <= 'Z')
			c = (char)(c - 'A' + 'a');
		if (c == '.') {
			if (label == 0 || s[i - 1] == '-')
				return false;
			label = 0;
		} else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-') {
			if ((label == 0 && c == '-') || ++label > 63)
				return false;
		} else {
			return false;
		}
		out[i] = c;
	}
	out[n] = '\0';
	return label > 0 && s[n - 1] != '-';
}

/* Image references: the characters of name[:tag][@digest], no blanks. */
static bool valid_image(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || strchr("._-/:@", *s)))
			return false;
	return true;
}

int manifest_split_words(const char *s, cJSON *arr, struct err *err)
{
	struct buf word;
	buf_init(&word, MANIFEST_ARG_MAX_BYTES);
	int count = cJSON_GetArraySize(arr);
	bool in_word = false;
	int rc = 0;
	const char *why = NULL;
	for (const char *c = s;; c++) {
		if (*c == '\0' || *c == ' ' || *c == '\t' || *c == '\n' || *c == '\r') {
			if (in_word) {
				if (++count > MANIFEST_ARGV_MAX) {
					why = "too many words";
					break;
				}
				cJSON *w = cJSON_CreateString(word.data ? word.data : "");
				if (!w || !cJSON_AddItemToArray(arr, w)) {
					cJSON_Delete(w);
					why = "out of memory";
					break;
				}
				buf_reset(&word);
				in_word = false;
			}
			if (*c == '\0')
				break;
			continue;
		}
		in_word = true;
		int bad = 0;
		if (*c == '\'') {
			const char *end = strchr(c + 1, '\'');
			if (!end) {
				why = "unbalanced single quote";
				break;
			}
			if (end > c + 1)
				bad = buf_append(&word, c + 1, (size_t)(end - c - 1));
			c = end;
		} else if (*c == '"') {
			c++;
			for (; *c && *c != '"'; c++) {
				if (*c == '\\' && c[1] && strchr("\"\\$`", c[1]))
					c++;
				else if (*c == '\\' && c[1] == '\n') {
					c++;
					continue;
				}
				bad |= buf_append_byte(&word, *c);
			}
			if (*c != '"') {
				why = "unbalanced double quote";
				break;
			}
		} else if (*c == '\\') {
			if (!c[1]) {
				why = "trailing backslash";
				break;
			}
			c++;
			if (*c != '\n')
				bad = buf_append_byte(&word, *c);
		} else {
			bad = buf_append_byte(&word, *c);
		}
		if (bad) {
			why = "a word is too long";
			break;
		}
	}
	if (why)
		rc = err_set(err, "%s", why);
	buf_free(&word);
	return rc;
}

/* command / release: a string (split into words) or a list of strings. NULL
 * after perr. */
static cJSON *get_argv(struct parse *p, const struct node *n, const char *path)
{
	cJSON *arr = cJSON_CreateArray();
	if (!arr) {
		perr(p, n->line, "out of memory");
		return NULL;
	}
	if (n->kind == N_SCALAR && !is_null(n)) {
		struct err e;
		if (manifest_split_words(n->text, arr, &e) < 0) {
			perr(p, n->line, "%s: %s", path, e.msg);
			goto fail;
		}
	} else if (n->kind == N_SEQ) {
		if (n->n > MANIFEST_ARGV_MAX) {
			perr(p, n->line, "%s: more than %d words", path, MANIFEST_ARGV_MAX);
			goto fail;
		}
		int bad = 0;
		for (size_t i = 0; i < n->n; i++) {
			char ip[160];
			json_path_index(ip, sizeof ip, path, i);
			const char *s;
			if (get_string(p, n->items[i], ip, MANIFEST_ARG_MAX_BYTES, &s) < 0) {
				bad = 1;
				continue;
			}
			cJSON_AddItemToArray(arr, cJSON_CreateString(s));
		}
		if (bad)
			goto fail;
	} else {
		perr(p, n->line, "%s: expected a string or a list of strings, got %s", path,
		     kind_name(n));
		goto fail;
	}
	if (cJSON_GetArraySize(arr) == 0) {
		perr(p, n->line, "%s: must not be empty", path);
		goto fail;
	}
	return arr;
fail:
	cJSON_Delete(arr);
	return NULL;
}

/* ---- the schema ---------------------------------------------------------- */

static const char *const top_keys[] = {"services", "release", NULL};
static const char *const service_keys[] = {"build",  "image",  "command",    "environment",
					   "port",   "health", "scale",      "stop_grace",
					   "proxy",  "metadata_access", NULL};
static const char *const build_keys[] = {"context", "dockerfile", NULL};
static const char *const health_keys[] = {"type", "path", "tcp", "interval",
					  "timeout", "grace", NULL};
static const char *const scale_keys[] = {"count", "memory", NULL};
static const char *const proxy_keys[] = {"listen", "hosts", "protocol", NULL};

/* build: "dir" or {context: dir, dockerfile: path-in-context}. */
static cJSON *parse_build(struct parse *p, const struct node *n, const char *path)
{
	char context[MANIFEST_PATH_MAX + 2] = ".", dockerfile[MANIFEST_PATH_MAX + 2] = "Dockerfile";
	char sub[200];
	if (n->kind == N_MAP) {
		if (check_map(p, n, path, build_keys) < 0)
			return NULL;
		const struct node *c = map_get(n, "context"), *d = map_get(n, "dockerfile");
		int bad = 0;
		json_path_key(sub, sizeof sub, path, "context");
		if (c && get_relpath(p, c, sub, context, sizeof context) < 0)
			bad = 1;
		json_path_key(sub, sizeof sub, path, "dockerfile");
		if (d && get_relpath(p, d, sub, dockerfile, sizeof dockerfile) < 0)
			bad = 1;
		if (!bad && d && strcmp(dockerfile, ".") == 0) {
			perr(p, d->line, "%s: names a directory, not a file", sub);
			bad = 1;
		}
		if (bad)
			return NULL;
	} else if (get_relpath(p, n, path, context, sizeof context) < 0) {
		return NULL;
	}
	cJSON *b = cJSON_CreateObject();
	if (b) {
		cJSON_AddStringToObject(b, "context", context);
		cJSON_AddStringToObject(b, "dockerfile", dockerfile);
	}
	return b;
}

static cJSON *parse_environment(struct parse *p, const struct node *n, const char *path)
{
	cJSON *env = cJSON_CreateObject();
	if (!env)
		return NULL;
	size_t total = 0;
	int bad = 0;
	size_t count = n->kind == N_MAP ? n->n / 2 : n->n;
	if (count > MANIFEST_ENV_VARS_MAX) {
		perr(p, at(n), "%s: more than %d variables", path, MANIFEST_ENV_VARS_MAX);
		cJSON_Delete(env);
		return NULL;
	}
	if (n->kind == N_MAP) {
		if (check_map(p, n, path, NULL) < 0) {
			cJSON_Delete(env);
			return NULL;
		}
		for (size_t i = 0; i + 1 < n->n; i += 2) {
			const struct node *k = n->items[i], *v = n->items[i + 1];
			char sub[200];
			json_path_key(sub, sizeof sub, path, k->text);
			if (!valid_env_name(k->text)) {
				perr(p, k->line,
				     "%s: not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)",
				     sub);
				bad = 1;
				continue;
			}
			const char *s;
			if (v->kind == N_SCALAR && is_null(v)) {
				perr(p, v->line, "%s: has no value (write \"\" for an empty string)",
				     sub);
				bad = 1;
				continue;
			}
			if (get_string(p, v, sub, MANIFEST_ENV_MAX_BYTES, &s) < 0) {
				bad = 1;
				continue;
			}
			total += k->len + v->len;
			cJSON_AddStringToObject(env, k->text, s);
		}
	} else if (n->kind == N_SEQ) {
		/* ["NAME=value", ...], as in Compose files. */
		for (size_t i = 0; i < n->n; i++) {
			const struct node *v = n->items[i];
			char sub[200];
			json_path_index(sub, sizeof sub, path, i);
			const char *s;
			if (get_string(p, v, sub, MANIFEST_ENV_MAX_BYTES, &s) < 0) {
				bad = 1;
				continue;
			}
			const char *eq = strchr(s, '=');
			char name[258];
			size_t nl = eq ? (size_t)(eq - s) : 0;
			if (!eq || nl == 0 || nl > 256) {
				perr(p, v->line, "%s: expected NAME=value", sub);
				bad = 1;
				continue;
			}
			memcpy(name, s, nl);
			name[nl] = '\0';
			if (!valid_env_name(name)) {
				perr(p, v->line,
				     "%s: not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)",
				     sub);
				bad = 1;
				continue;
			}
			if (cJSON_GetObjectItemCaseSensitive(env, name)) {
				perr(p, v->line, "%s: %s is set twice", sub, name);
				bad = 1;
				continue;
			}
			total += v->len;
			cJSON_AddStringToObject(env, name, eq + 1);
		}
	} else {
		perr(p, n->line, "%s: expected a mapping of NAME: value, got %s", path, kind_name(n));
		bad = 1;
	}
	if (!bad && total > MANIFEST_ENV_MAX_BYTES) {
		perr(p, at(n), "%s: larger than %zu KiB", path, MANIFEST_ENV_MAX_BYTES >> 10);
		bad = 1;
	}
	if (bad) {
		cJSON_Delete(env);
		return NULL;
	}
	return env;
}

static cJSON *parse_health(struct parse *p, const struct node *n, const char *path, bool has_port)
{
	if (check_map(p, n, path, health_keys) < 0)
		return NULL;
	const struct node *type = map_get(n, "type"), *hpath = map_get(n, "path"),
			  *tcp = map_get(n, "tcp");
	const char *t = NULL;
	int bad = 0;
	char sub[200];
	if (type) {
		json_path_key(sub, sizeof sub, path, "type");
		if (get_string(p, type, sub, 16, &t) < 0) {
			bad = 1;
		} else if (strcmp(t, "http") && strcmp(t, "tcp") && strcmp(t, "docker") &&
			   strcmp(t, "running")) {
			perr(p, type->line, "%s: expected http, tcp, docker or running", sub);
			bad = 1;
		}
	}
	bool tcp_on = false;
	if (tcp) {
		json_path_key(sub, sizeof sub, path, "tcp");
		if (get_bool(p, tcp, sub, &tcp_on) < 0)
			bad = 1;
	}
	const char *hp = NULL;
	if (hpath) {
		json_path_key(sub, sizeof sub, path, "path");
		if (get_string(p, hpath, sub, MANIFEST_PATH_MAX, &hp) < 0) {
			bad = 1;
		} else {
			bool ok = hp[0] == '/';
			for (const char *c = hp; ok && *c; c++)
				ok = (unsigned char)*c > 0x20 && *c != 0x7f;
			if (!ok) {
				perr(p, hpath->line, "%s: expected a request path starting with '/'",
				     sub);
				bad = 1;
			}
		}
	}
	if (bad)
		return NULL;
	/* The check, from whichever of type / path / tcp says it. */
	const char *kind = t;
	if (hp && tcp_on) {
		perr(p, at(n), "%s: path and tcp exclude each other", path);
		return NULL;
	}
	if (hp && kind && strcmp(kind, "http")) {
		perr(p, hpath->line, "%s.path: only an http check has a path", path);
		return NULL;
	}
	if (tcp_on && kind && strcmp(kind, "tcp")) {
		perr(p, tcp->line, "%s.tcp: contradicts type %s", path, kind);
		return NULL;
	}
	if (!kind)
		kind = hp ? "http" : tcp_on ? "tcp" : has_port ? "tcp" : "running";
	if ((!strcmp(kind, "http") || !strcmp(kind, "tcp")) && !has_port) {
		perr(p, at(n), "%s: an %s check needs the service's port", path, kind);
		return NULL;
	}
	int64_t interval = MANIFEST_DEFAULT_INTERVAL_MS, timeout = MANIFEST_DEFAULT_TIMEOUT_MS;
	int64_t grace = !strcmp(kind, "running") ? MANIFEST_DEFAULT_RUNNING_GRACE_MS
						  : MANIFEST_DEFAULT_GRACE_MS;
	const struct node *v;
	if ((v = map_get(n, "interval"))) {
		json_path_key(sub, sizeof sub, path, "interval");
		bad |= get_duration(p, v, sub, 100, 300000, &interval) < 0;
	}
	if ((v = map_get(n, "timeout"))) {
		json_path_key(sub, sizeof sub, path, "timeout");
		bad |= get_duration(p, v, sub, 100, 300000, &timeout) < 0;
	}
	if ((v = map_get(n, "grace"))) {
		json_path_key(sub, sizeof sub, path, "grace");
		bad |= get_duration(p, v, sub, 0, 3600000, &grace) < 0;
	}
	if (bad)
		return NULL;
	cJSON *h = cJSON_CreateObject();
	if (!h)
		return NULL;
	cJSON_AddStringToObject(h, "type", kind);
	if (!strcmp(kind, "http"))
		cJSON_AddStringToObject(h, "path", hp ? hp : "/");
	cJSON_AddNumberToObject(h, "interval_ms", (double)interval);
	cJSON_AddNumberToObject(h, "timeout_ms", (double)timeout);
	cJSON_AddNumberToObject(h, "grace_ms", (double)grace);
	return h;
}

/* proxy: false/null (none), a listen port, or {listen, hosts, protocol}. */
static int parse_proxy(struct parse *p, const struct node *n, const char *path, int64_t port,
		       cJSON **out)
{
	*out = NULL;
	bool off = is_null(n);
	if (!off && n->kind == N_SCALAR && n->plain &&
	    (!strcmp(n->text, "false") || !strcmp(n->text, "False") || !strcmp(n->text, "FALSE")))
		off = true;
	if (off)
		return 0;
	int64_t listen = port;
	const char *protocol = "http";
	cJSON *hosts = cJSON_CreateArray();
	if (!hosts)
		return -1;
	char sub[200];
	int bad = 0;
	if (n->kind == N_SCALAR) {
		bad = get_int(p, n, path, 1, 65535, &listen) < 0;
	} else if (check_map(p, n, path, proxy_keys) < 0) {
		bad = 1;
	} else {
		const struct node *v;
		if ((v = map_get(n, "listen"))) {
			json_path_key(sub, sizeof sub, path, "listen");
			bad |= get_int(p, v, sub, 1, 65535, &listen) < 0;
		}
		if ((v = map_get(n, "protocol"))) {
			json_path_key(sub, sizeof sub, path, "protocol");
			if (get_string(p, v, sub, 8, &protocol) < 0) {
				bad = 1;
			} else if (strcmp(protocol, "http") && strcmp(protocol, "tcp")) {
				perr(p, v->line, "%s: expected http or tcp", sub);
				bad = 1;
			}
		}
		if ((v = map_get(n, "hosts"))) {
			json_path_key(sub, sizeof sub, path, "hosts");
			if (v->kind == N_SCALAR && !is_null(v)) {
				/* One host may be written without the list. */
				char host[256];
				if (!valid_host(v->text, host, sizeof host)) {
					perr(p, v->line, "%s: '%.64s' is not a host name", sub,
					     v->text);
					bad = 1;
				} else {
					cJSON_AddItemToArray(hosts, cJSON_CreateString(host));
				}
			} else if (v->kind != N_SEQ && !is_null(v)) {
				perr(p, v->line, "%s: expected a list of host names", sub);
				bad = 1;
			} else if (v->n > MANIFEST_HOSTS_MAX) {
				perr(p, v->line, "%s: more than %d hosts", sub, MANIFEST_HOSTS_MAX);
				bad = 1;
			} else {
				for (size_t i = 0; i < v->n; i++) {
					const struct node *h = v->items[i];
					char host[256], hsub[220];
					json_path_index(hsub, sizeof hsub, sub, i);
					const char *s;
					if (get_string(p, h, hsub, 253, &s) < 0) {
						bad = 1;
					} else if (!valid_host(s, host, sizeof host)) {
						perr(p, h->line, "%s: '%.64s' is not a host name",
						     hsub, s);
						bad = 1;
					} else {
						cJSON_AddItemToArray(hosts, cJSON_CreateString(host));
					}
				}
			}
		}
	}
	if (!bad && port < 0) {
		perr(p, at(n), "%s: a proxied service needs a port", path);
		bad = 1;
	}
	if (!bad && !strcmp(protocol, "tcp") && cJSON_GetArraySize(hosts) > 0) {
		perr(p, at(n), "%s: a tcp proxy cannot route by host", path);
		bad = 1;
	}
	if (bad) {
		cJSON_Delete(hosts);
		return -1;
	}
	cJSON *o = cJSON_CreateObject();
	if (!o) {
		cJSON_Delete(hosts);
		return -1;
	}
	cJSON_AddNumberToObject(o, "listen", (double)listen);
	cJSON_AddItemToObject(o, "hosts", hosts);
	cJSON_AddStringToObject(o, "protocol", protocol);
	*out = o;
	return 0;
}

static cJSON *parse_service(struct parse *p, const struct node *n, const char *path)
{
	if (check_map(p, n, path, service_keys) < 0)
		return NULL;
	cJSON *s = cJSON_CreateObject();
	if (!s) {
		perr(p, n->line, "out of memory");
		return NULL;
	}
	char sub[200];
	int bad = 0;
	const struct node *build = map_get(n, "build"), *image = map_get(n, "image"), *v;

	if (build && is_null(build))
		build = NULL;
	if (image && is_null(image))
		image = NULL;
	if (build && image) {
		perr(p, image->line, "%s: build and image exclude each other", path);
		bad = 1;
	} else if (!build && !image) {
		perr(p, at(n), "%s: needs build (a directory with a Dockerfile) or image", path);
		bad = 1;
	}
	cJSON *b = NULL;
	if (build) {
		json_path_key(sub, sizeof sub, path, "build");
		b = parse_build(p, build, sub);
		bad |= !b;
	}
	cJSON_AddItemToObject(s, "build", b ? b : cJSON_CreateNull());
	const char *img = NULL;
	if (image) {
		json_path_key(sub, sizeof sub, path, "image");
		if (get_string(p, image, sub, MANIFEST_IMAGE_MAX, &img) < 0) {
			bad = 1;
		} else if (!valid_image(img)) {
			perr(p, image->line, "%s: '%.80s' is not an image reference", sub, img);
			bad = 1;
			img = NULL;
		}
	}
	cJSON_AddItemToObject(s, "image", img ? cJSON_CreateString(img) : cJSON_CreateNull());

	cJSON *cmd = NULL;
	if ((v = map_get(n, "command")) && !is_null(v)) {
		json_path_key(sub, sizeof sub, path, "command");
		cmd = get_argv(p, v, sub);
		bad |= !cmd;
	}
	cJSON_AddItemToObject(s, "command", cmd ? cmd : cJSON_CreateNull());

	cJSON *env = NULL;
	if ((v = map_get(n, "environment")) && !is_null(v)) {
		json_path_key(sub, sizeof sub, path, "environment");
		env = parse_environment(p, v, sub);
		bad |= !env;
	}
	cJSON_AddItemToObject(s, "environment", env ? env : cJSON_CreateObject());

	int64_t port = -1;
	if ((v = map_get(n, "port")) && !is_null(v)) {
		json_path_key(sub, sizeof sub, path, "port");
		bad |= get_int(p, v, sub, 1, 65535, &port) < 0;
	}
	if (port > 0)
		cJSON_AddNumberToObject(s, "port", (double)port);
	else
		cJSON_AddNullToObject(s, "port");

	cJSON *proxy = NULL;
	if ((v = map_get(n, "proxy"))) {
		json_path_key(sub, sizeof sub, path, "proxy");
		bad |= parse_proxy(p, v, sub, port, &proxy) < 0;
	} else if (port > 0) {
		/* A service with a port is public on the same port unless it says otherwise. */
		proxy = cJSON_CreateObject();
		if (proxy) {
			cJSON_AddNumberToObject(proxy, "listen", (double)port);
			cJSON_AddItemToObject(proxy, "hosts", cJSON_CreateArray());
			cJSON_AddStringToObject(proxy, "protocol", "http");
		}
	}
	cJSON_AddItemToObject(s, "proxy", proxy ? proxy : cJSON_CreateNull());

	cJSON *health = NULL;
	if ((v = map_get(n, "health")) && !is_null(v)) {
		json_path_key(sub, sizeof sub, path, "health");
		health = parse_health(p, v, sub, port > 0);
		bad |= !health;
	} else {
		health = cJSON_CreateObject();
		if (health) {
			bool tcp = port > 0;
			cJSON_AddStringToObject(health, "type", tcp ? "tcp" : "running");
			cJSON_AddNumberToObject(health, "interval_ms", MANIFEST_DEFAULT_INTERVAL_MS);
			cJSON_AddNumberToObject(health, "timeout_ms", MANIFEST_DEFAULT_TIMEOUT_MS);
			cJSON_AddNumberToObject(health, "grace_ms",
						tcp ? MANIFEST_DEFAULT_GRACE_MS
						    : MANIFEST_DEFAULT_RUNNING_GRACE_MS);
		}
	}
	cJSON_AddItemToObject(s, "health", health ? health : cJSON_CreateNull());

	int64_t count = 1, memory = 0;
	if ((v = map_get(n, "scale")) && !is_null(v)) {
		json_path_key(sub, sizeof sub, path, "scale");
		if (check_map(p, v, sub, scale_keys) < 0) {
			bad = 1;
		} else {
			const struct node *c = map_get(v, "count"), *m = map_get(v, "memory");
			char ssub[220];
			if (c) {
				json_path_key(ssub, sizeof ssub, sub, "count");
				bad |= get_int(p, c, ssub, 0, 100, &count) < 0;
			}
			if (m) {
				json_path_key(ssub, sizeof ssub, sub, "memory");
				bad |= get_memory(p, m, ssub, &memory) < 0;
			}
		}
	}
	cJSON_AddNumberToObject(s, "count", (double)count);
	cJSON_AddNumberToObject(s, "memory_mb", (double)memory);

	int64_t stop = MANIFEST_DEFAULT_STOP_GRACE_MS;
	if ((v = map_get(n, "stop_grace"))) {
		json_path_key(sub, sizeof sub, path, "stop_grace");
		bad |= get_duration(p, v, sub, 0, 3600000, &stop) < 0;
	}
	cJSON_AddNumberToObject(s, "stop_grace_ms", (double)stop);

	/* The instance metadata service is closed to containers unless a service
	 * opts in (the agent's iptables rule, agent/imdsblock.h). Written only when
	 * true: older agents refuse a release-spec field they do not know. */
	if ((v = map_get(n, "metadata_access"))) {
		bool on = false;
		json_path_key(sub, sizeof sub, path, "metadata_access");
		bad |= get_bool(p, v, sub, &on) < 0;
		if (on)
			cJSON_AddTrueToObject(s, "metadata_access");
	}

	if (bad) {
		cJSON_Delete(s);
		return NULL;
	}
	return s;
}

/* Two services may share a listen port only as http services told apart by
 * host (at most one of them without hosts: the default route). */
static void check_proxies(struct parse *p, const cJSON *services, const struct node *map)
{
	const cJSON *a, *b;
	size_t ia = 0;
	cJSON_ArrayForEach(a, services) {
		ia++;
		const cJSON *pa = cJSON_GetObjectItemCaseSensitive(a, "proxy");
		if (!cJSON_IsObject(pa))
			continue;
		size_t ib = 0;
		cJSON_ArrayForEach(b, services) {
			if (++ib >= ia)
				break;
			const cJSON *pb = cJSON_GetObjectItemCaseSensitive(b, "proxy");
			if (!cJSON_IsObject(pb))
				continue;
			int la = cJSON_GetObjectItemCaseSensitive(pa, "listen")->valueint;
			int lb = cJSON_GetObjectItemCaseSensitive(pb, "listen")->valueint;
			if (la != lb)
				continue;
			/* The line of service a's key, for the message. */
			int line = 0;
			for (size_t i = 0; i + 1 < map->n; i += 2)
				if (map->items[i]->kind == N_SCALAR &&
				    !strcmp(map->items[i]->text, a->string))
					line = map->items[i]->line;
			const char *prota =
				cJSON_GetObjectItemCaseSensitive(pa, "protocol")->valuestring;
			const char *protb =
				cJSON_GetObjectItemCaseSensitive(pb, "protocol")->valuestring;
			const cJSON *ha = cJSON_GetObjectItemCaseSensitive(pa, "hosts");
			const cJSON *hb = cJSON_GetObjectItemCaseSensitive(pb, "hosts");
			if (strcmp(prota, "http") || strcmp(protb, "http")) {
				perr(p, line, "services.%s.proxy: listen port %d is already used by "
					      "services.%s (only http services can share a port)",
				     a->string, la, b->string);
				continue;
			}
			if (cJSON_GetArraySize(ha) == 0 && cJSON_GetArraySize(hb) == 0) {
				perr(p, line, "services.%s.proxy: listen port %d is shared with "
					      "services.%s and neither names hosts",
				     a->string, la, b->string);
				continue;
			}
			const cJSON *x, *y;
			cJSON_ArrayForEach(x, ha) {
				cJSON_ArrayForEach(y, hb) {
					if (!strcmp(x->valuestring, y->valuestring))
						perr(p, line, "services.%s.proxy: host %s on port %d "
							      "also routes to services.%s",
						     a->string, x->valuestring, la, b->string);
				}
			}
		}
	}
}

static cJSON *parse_root(struct parse *p, const struct node *root)
{
	if (check_map(p, root, "(top level)", top_keys) < 0)
		return NULL;
	cJSON *m = cJSON_CreateObject();
	if (!m) {
		perr(p, root->line, "out of memory");
		return NULL;
	}
	int bad = 0;
	const struct node *rel = map_get(root, "release");
	cJSON *release = NULL;
	if (rel && !is_null(rel)) {
		release = get_argv(p, rel, "release");
		bad |= !release;
	}
	cJSON_AddItemToObject(m, "release", release ? release : cJSON_CreateNull());

	const struct node *svc = map_get(root, "services");
	cJSON *services = cJSON_CreateObject();
	cJSON_AddItemToObject(m, "services", services);
	if (!svc || is_null(svc)) {
		perr(p, svc ? at(svc) : root->line, "services: at least one service is needed");
		bad = 1;
	} else if (check_map(p, svc, "services", NULL) < 0) {
		bad = 1;
	} else if (svc->n / 2 > MANIFEST_SERVICES_MAX) {
		perr(p, at(svc), "services: more than %d services", MANIFEST_SERVICES_MAX);
		bad = 1;
	} else if (svc->n == 0) {
		perr(p, at(svc), "services: at least one service is needed");
		bad = 1;
	} else {
		for (size_t i = 0; i + 1 < svc->n; i += 2) {
			const struct node *k = svc->items[i];
			char path[120];
			snprintf(path, sizeof path, "services.%.64s", k->text);
			if (!valid_name(k->text)) {
				perr(p, k->line,
				     "%s: a service name is 1-40 of [a-z0-9-], starting with a letter",
				     path);
				bad = 1;
				continue;
			}
			cJSON *s = parse_service(p, svc->items[i + 1], path);
			if (!s) {
				bad = 1;
				continue;
			}
			cJSON_AddItemToObject(services, k->text, s);
		}
		if (!bad)
			check_proxies(p, services, svc);
	}
	if (bad || p->error_count) {
		cJSON_Delete(m);
		return NULL;
	}
	return m;
}

cJSON *manifest_parse(const char *text, size_t len, const char *name, struct err *err)
{
	struct parse p = {.name = name && *name ? name : MANIFEST_FILE};
	buf_init(&p.errors, ERR_MSG_MAX * 2);
	cJSON *m = NULL;
	if (len > MANIFEST_MAX_BYTES) {
		perr(&p, 0, "larger than %zu KiB", MANIFEST_MAX_BYTES >> 10);
	} else if (memchr(text, '\0', len)) {
		perr(&p, 0, "contains a NUL byte");
	} else {
		struct node *root = read_tree(&p, text, len);
		if (root)
			m = parse_root(&p, root);
		node_free(root);
	}
	if (!m) {
		/* As many whole lines as fit, then how many were left out. */
		char out[ERR_MSG_MAX];
		size_t used = 0;
		int shown = 0;
		const char *line = p.errors.data ? p.errors.data : "";
		while (*line) {
			const char *nl = strchr(line, '\n');
			size_t ll = nl ? (size_t)(nl - line) : strlen(line);
			if (used + ll + 1 + 40 > sizeof out && shown > 0)
				break;
			if (ll > sizeof out - 41)
				ll = sizeof out - 41;
			if (shown)
				out[used++] = '\n';
			memcpy(out + used, line, ll);
			used += ll;
			shown++;
			line += nl ? (size_t)(nl - line) + 1 : strlen(line);
		}
		out[used] = '\0';
		if (p.error_count > shown)
			snprintf(out + used, sizeof out - used, "%s... and %d more", used ? "\n" : "",
				 p.error_count - shown);
		if (!used && p.error_count <= shown)
			snprintf(out, sizeof out, "%s: invalid", p.name);
		err_set(err, "%s", out);
	}
	buf_free(&p.errors);
	return m;
}

cJSON *manifest_load(const char *dir, struct err *err)
{
	char path[4200];
	snprintf(path, sizeof path, "%s/%s", dir, MANIFEST_FILE);
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			err_set(err, "%s: not found at the root of the repository", MANIFEST_FILE);
		else if (errno == ELOOP)
			err_set(err, "%s: is a symbolic link", MANIFEST_FILE);
		else
			err_set(err, "%s: %s", MANIFEST_FILE, strerror(errno));
		return NULL;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		err_set(err, "%s: not a regular file", MANIFEST_FILE);
		return NULL;
	}
	if ((size_t)st.st_size > MANIFEST_MAX_BYTES) {
		close(fd);
		err_set(err, "%s: larger than %zu KiB", MANIFEST_FILE, MANIFEST_MAX_BYTES >> 10);
		return NULL;
	}
	char *text = malloc((size_t)st.st_size + 1);
	if (!text) {
		close(fd);
		err_set(err, "out of memory");
		return NULL;
	}
	size_t got = 0;
	while (got < (size_t)st.st_size) {
		ssize_t r = read(fd, text + got, (size_t)st.st_size - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	cJSON *m = manifest_parse(text, got, MANIFEST_FILE, err);
	free(text);
	return m;
}
