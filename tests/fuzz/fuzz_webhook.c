/*
 * libFuzzer target for coordinator/webhook: webhook_parse on arbitrary
 * bodies under each X-Gitlab-Event, then webhook_decide for every kind of app
 * (deploy branch / tags / pipeline, a branch or the default, a project id or
 * any), the deduplication key, the summary and the description.
 *
 * Input: byte 0 picks the event header, byte 1 the key headers, the rest is
 * the body. Checks, beyond the sanitizers: every string of the event ends
 * inside its buffer; a body that parses has no error message, one that does
 * not has one; a build decision names a sha and has no problem; the reason
 * of an ignore is a non-empty string; the key and the description end inside
 * their buffers.
 *
 *   make build/fuzz/fuzz_webhook
 *   build/fuzz/fuzz_webhook -max_total_time=60 tests/fuzz/seeds/webhook
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "webhook.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TERMINATED(field) (memchr((field), '\0', sizeof(field)) != NULL)

static const char *const events[] = {
	NULL, "Push Hook", "Tag Push Hook", "Pipeline Hook", "Merge Request Hook", "System Hook",
	"",
};

static const struct webhook_app apps[] = {
	{"branch", NULL, 0},	  {"branch", "main", 0},   {"branch", "feature/x", 42},
	{"tags", NULL, 0},	  {"tags", NULL, 15},	   {"pipeline", NULL, 0},
	{"pipeline", "main", 15}, {"branch", "", 7},
};

static void check_event(const struct webhook_event *ev)
{
	if (!TERMINATED(ev->event) || !TERMINATED(ev->ref) || !TERMINATED(ev->name) ||
	    !TERMINATED(ev->sha) || !TERMINATED(ev->before) || !TERMINATED(ev->project) ||
	    !TERMINATED(ev->default_branch) || !TERMINATED(ev->ssh_url) ||
	    !TERMINATED(ev->author) || !TERMINATED(ev->status) || !TERMINATED(ev->source) ||
	    !TERMINATED(ev->problem))
		abort();
	if ((unsigned)ev->kind > WEBHOOK_OTHER)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	const char *header = events[data[0] % (sizeof events / sizeof events[0])];
	uint8_t keys = data[1];
	const char *body = (const char *)data + 2;
	size_t len = size - 2;

	struct webhook_event ev;
	struct err err;
	memset(&ev, 0xA5, sizeof ev);
	memset(err.msg, 'x', sizeof err.msg);
	if (webhook_parse(header, body, len, &ev, &err) < 0) {
		if (!TERMINATED(err.msg) || err.msg[0] == '\0')
			abort();
	} else {
		check_event(&ev);
		for (size_t i = 0; i < sizeof apps / sizeof apps[0]; i++) {
			char why[256];
			memset(why, 'x', sizeof why);
			int build = webhook_decide(&apps[i], &ev, why, sizeof why);
			if (build == 1) {
				if (ev.sha[0] == '\0' || ev.problem[0] != '\0' || ev.deleted)
					abort();
			} else if (build != 0 || !TERMINATED(why) || why[0] == '\0') {
				abort();
			}
		}
		cJSON *summary = webhook_summary(&ev);
		cJSON_Delete(summary);
		char desc[600];
		memset(desc, 'x', sizeof desc);
		webhook_description(&ev, desc, sizeof desc);
		if (!TERMINATED(desc))
			abort();
	}

	/* The key headers come from outside too: take them from the body. */
	char idem[300] = "", uuid[300] = "";
	size_t take = len < 200 ? len : 200;
	if (keys & 1) {
		memcpy(idem, body, take);
		idem[take] = '\0';
	}
	if (keys & 2) {
		memcpy(uuid, body + len - take, take);
		uuid[take] = '\0';
	}
	char key[512];
	memset(key, 'x', sizeof key);
	webhook_dedup_key("web", (keys & 1) ? idem : NULL, (keys & 2) ? uuid : NULL, header,
			  body, len, key, sizeof key);
	if (!TERMINATED(key) || strncmp(key, "web:", 4) != 0)
		abort();
	return 0;
}
