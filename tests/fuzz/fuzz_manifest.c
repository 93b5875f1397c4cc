/*
 * libFuzzer target for coordinator/manifest: manifest_parse on arbitrary
 * bytes (slipway.yml comes from the repository being built: outside input),
 * then what the coordinator does with an accepted manifest: the release
 * spec's services (releases_services_from_manifest, with made-up images for
 * the built services), and the shell-like word splitter on the same bytes.
 *
 * Checks, beyond the sanitizers: a refusal has a message ending inside
 * struct err; an accepted manifest is an object with 1..MANIFEST_SERVICES_MAX
 * services, each with a build or an image, a count 0..100 and a health type;
 * its JSON prints; the splitter never produces more than MANIFEST_ARGV_MAX
 * words.
 *
 *   make build/fuzz/fuzz_manifest
 *   build/fuzz/fuzz_manifest -max_total_time=60 tests/fuzz/seeds/manifest
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "manifest.h"
#include "releases.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int64_t int_of(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	if (!cJSON_IsNumber(v))
		abort();
	return (int64_t)v->valuedouble;
}

static void check_manifest(const cJSON *m)
{
	if (!cJSON_IsObject(m))
		abort();
	const cJSON *services = cJSON_GetObjectItemCaseSensitive(m, "services");
	int n = cJSON_GetArraySize(services);
	if (!cJSON_IsObject(services) || n < 1 || n > MANIFEST_SERVICES_MAX)
		abort();
	const cJSON *svc;
	cJSON_ArrayForEach(svc, services)
	{
		const cJSON *build = cJSON_GetObjectItemCaseSensitive(svc, "build");
		const cJSON *image = cJSON_GetObjectItemCaseSensitive(svc, "image");
		if (!cJSON_IsObject(build) && !cJSON_IsString(image))
			abort();
		int64_t count = int_of(svc, "count");
		if (count < 0 || count > 100)
			abort();
		const cJSON *health = cJSON_GetObjectItemCaseSensitive(svc, "health");
		if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(health, "type")))
			abort();
	}
	char *text = cJSON_PrintUnformatted(m);
	if (!text)
		abort();
	free(text);
}

/* Images as the builder records them, for the services that are built. */
static cJSON *images_for(const cJSON *m)
{
	cJSON *images = cJSON_CreateObject();
	const cJSON *svc;
	cJSON_ArrayForEach(svc, cJSON_GetObjectItemCaseSensitive(m, "services"))
	{
		if (!cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(svc, "build")))
			continue;
		cJSON *img = cJSON_AddObjectToObject(images, svc->string);
		cJSON_AddStringToObject(img, "image", "registry.local:5000/app:web.b_0");
		cJSON_AddStringToObject(img, "digest", "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1"
						       "b2b0b822cd15d6c15b0f00a08");
	}
	return images;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > MANIFEST_MAX_BYTES)
		return 0;
	struct err err;
	memset(err.msg, 'x', sizeof err.msg);
	cJSON *m = manifest_parse((const char *)data, size, MANIFEST_FILE, &err);
	if (!m) {
		if (!memchr(err.msg, '\0', sizeof err.msg) || err.msg[0] == '\0')
			abort();
	} else {
		check_manifest(m);
		cJSON *images = images_for(m);
		cJSON *scale = cJSON_Parse("{\"web\":{\"count\":3,\"memory_mb\":64}}");
		struct err e2;
		cJSON *services = releases_services_from_manifest(m, images, scale, &e2);
		if (services && !cJSON_IsArray(services))
			abort();
		cJSON_Delete(services);
		cJSON_Delete(scale);
		cJSON_Delete(images);
		cJSON_Delete(m);
	}

	/* The same bytes as a `command:` / `release:` string. */
	char *line = malloc(size + 1);
	if (!line)
		return 0;
	memcpy(line, data, size);
	line[size] = '\0';
	cJSON *words = cJSON_CreateArray();
	if (manifest_split_words(line, words, &err) == 0 &&
	    cJSON_GetArraySize(words) > MANIFEST_ARGV_MAX)
		abort();
	cJSON_Delete(words);
	free(line);
	return 0;
}
