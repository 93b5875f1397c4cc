/*
 * libFuzzer target for common/config: config_load_buffer on arbitrary text with
 * a schema shaped like the agent's (every type, ranges, a secret, a required
 * key), then every getter and the dump. The environment is not fuzzed (no
 * variable carries the prefix), so runs are reproducible.
 *
 *   make build/fuzz/fuzz_config
 *   build/fuzz/fuzz_config -max_total_time=60 tests/fuzz/seeds/config
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const levels[] = {"debug", "info", "warn", "error", NULL};

static const struct config_key schema[] = {
	{.name = "coordinator.url", .type = CONFIG_URL, .required = true, .help = "Coordinator."},
	{.name = "proxy.bind", .type = CONFIG_STRING, .default_value = "0.0.0.0:80"},
	{.name = "proxy.max_conns", .type = CONFIG_INT, .default_value = "1024", .min = 1,
	 .max = 65535},
	{.name = "proxy.offset", .type = CONFIG_INT},
	{.name = "log.json", .type = CONFIG_BOOL, .default_value = "no"},
	{.name = "log.level", .type = CONFIG_ENUM, .default_value = "info", .choices = levels},
	{.name = "drain.timeout", .type = CONFIG_DURATION, .default_value = "30s", .min = 100,
	 .max = 3600000},
	{.name = "poll.interval", .type = CONFIG_DURATION},
	{.name = "spool.max", .type = CONFIG_SIZE, .default_value = "16M", .min = 4096,
	 .max = (int64_t)1 << 30},
	{.name = "spool.chunk", .type = CONFIG_SIZE},
	{.name = "state.dir", .type = CONFIG_PATH, .default_value = "/var/lib/slipway"},
	{.name = "agent.bootstrap_token", .type = CONFIG_SECRET},
	{.name = "agent.name", .type = CONFIG_STRING, .max = 64},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static FILE *sink;
	if (!sink) {
		sink = fopen("/dev/null", "w");
		log_init("fuzz", LOG_LEVEL_ERROR, 0);
	}
	struct err e;
	memset(e.msg, 'x', sizeof e.msg);
	struct config *cfg = config_load_buffer(schema, CONFIG_SCHEMA_LEN(schema),
						(const char *)data, size, "fuzz.conf",
						"SLIPWAY_FUZZ_", &e);
	if (!cfg) {
		/* Every failure explains itself within the struct. */
		if (!memchr(e.msg, '\0', sizeof e.msg) || e.msg[0] == '\0')
			abort();
		return 0;
	}
	const char *url = config_str(cfg, "coordinator.url");
	if (!url || (strncmp(url, "http", 4) != 0 && strncmp(url, "unix://", 7) != 0))
		abort();
	int64_t conns = config_int(cfg, "proxy.max_conns");
	if (conns < 1 || conns > 65535)
		abort();
	int64_t ms = config_ms(cfg, "drain.timeout");
	if (ms < 100 || ms > 3600000)
		abort();
	int64_t spool = config_size(cfg, "spool.max");
	if (spool < 4096 || spool > ((int64_t)1 << 30))
		abort();
	if (config_ms(cfg, "poll.interval") < 0 || config_size(cfg, "spool.chunk") < 0)
		abort();
	const char *name = config_str(cfg, "agent.name");
	if (name && strlen(name) > 64)
		abort();
	(void)config_bool(cfg, "log.json");
	(void)config_int(cfg, "proxy.offset");
	(void)config_str(cfg, "proxy.bind");
	(void)config_str(cfg, "log.level");
	(void)config_str(cfg, "state.dir");
	for (size_t i = 0; i < CONFIG_SCHEMA_LEN(schema); i++) {
		(void)config_source(cfg, schema[i].name);
		(void)config_has(cfg, schema[i].name);
	}
	if (sink)
		config_dump(cfg, sink);
	config_free(cfg);
	return 0;
}
