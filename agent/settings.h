/*
 * settings: the agent's configuration schema (every key, its type, default and
 * meaning). The deployer and the proxy process load the same file with it, so
 * they agree on paths such as the proxy's control socket.
 * docs/configuration.md lists the keys; `slipway-agent --check` validates a file.
 */
#ifndef SLIPWAY_AGENT_SETTINGS_H
#define SLIPWAY_AGENT_SETTINGS_H

#include <stddef.h>

#include "config.h"

#define AGENT_ENV_PREFIX "SLIPWAY_AGENT_"
#define AGENT_DEFAULT_CONFIG "/etc/slipway/agent.conf"

extern const struct config_key agent_settings[];
extern const size_t agent_settings_count;

/* Paths derived from agent.state_dir unless set explicitly; out holds PATH_MAX. */
void agent_settings_path(const struct config *cfg, const char *key, const char *default_name,
			 char *out, size_t cap);

#endif
