/*
 * libFuzzer target for common/json: json_parse on arbitrary bytes, then the
 * getters on a release-shaped schema, json_check_keys, and a round trip: what
 * json_print writes from an accepted document must be accepted again and
 * print the same.
 *
 *   make build/fuzz/fuzz_json
 *   build/fuzz/fuzz_json -max_total_time=60 tests/fuzz/seeds/json
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define DOC_MAX (256 << 10)

static void walk_service(const cJSON *svc, const char *path)
{
	static const char *const allowed[] = {"name", "image", "port", "env", "public", NULL};
	struct err e;
	const char *s;
	int64_t n;
	bool b;
	const cJSON *env;
	size_t count;
	json_check_keys(svc, allowed, path, &e);
	json_get_string(svc, path, "name", 64, &s, &e);
	json_get_string_opt(svc, path, "image", 256, "none", &s, &e);
	json_get_int(svc, path, "port", 1, 65535, &n, &e);
	json_get_bool_opt(svc, path, "public", false, &b, &e);
	if (json_get_array_opt(svc, path, "env", 16, &env, &count, &e) == 0 && env) {
		char ipath[JSON_PATH_MAX];
		size_t i = 0;
		for (const cJSON *it = env->child; it; it = it->next, i++) {
			json_path_index(ipath, sizeof ipath, path, i);
			if (json_get_string(it, ipath, NULL, 128, &s, &e) == 0 && strlen(s) > 128)
				abort();
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct err e;
	memset(e.msg, 'x', sizeof e.msg);
	cJSON *root = json_parse((const char *)data, size, DOC_MAX, &e);
	if (!root) {
		if (!memchr(e.msg, '\0', sizeof e.msg) || e.msg[0] == '\0')
			abort();
		return 0;
	}

	const cJSON *rel, *services;
	size_t count;
	int64_t gen;
	bool b;
	const char *s;
	json_get_int(root, NULL, "generation", 0, JSON_INT_LIMIT, &gen, &e);
	json_get_bool(root, NULL, "paused", &b, &e);
	json_get_string(root, NULL, "app", 64, &s, &e);
	if (json_get_object_opt(root, NULL, "release", &rel, &e) == 0 && rel &&
	    json_get_array(rel, "release", "services", 32, &services, &count, &e) == 0) {
		char path[JSON_PATH_MAX];
		size_t i = 0;
		for (const cJSON *svc = services->child; svc; svc = svc->next, i++) {
			json_path_index(path, sizeof path, "release.services", i);
			walk_service(svc, path);
		}
		if (i != count)
			abort();
	}
	if (cJSON_IsArray(root)) {
		int64_t n;
		for (const cJSON *it = root->child; it; it = it->next)
			json_get_int(it, "[]", NULL, INT64_MIN, INT64_MAX, &n, &e);
	}

	/* What we print from an accepted document must be accepted again and
	 * print the same (a textual compare: cJSON_Compare mishandles duplicate
	 * keys and is quadratic). */
	char *text = json_print(root, 4 * DOC_MAX, &e);
	if (text) {
		cJSON *again = json_parse(text, strlen(text), 4 * DOC_MAX, &e);
		if (!again)
			abort();
		char *text2 = json_print(again, 4 * DOC_MAX, &e);
		if (!text2 || strcmp(text, text2) != 0)
			abort();
		free(text2);
		cJSON_Delete(again);
		free(text);
	}
	cJSON_Delete(root);
	return 0;
}
