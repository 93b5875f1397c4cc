/*
 * settings: the coordinator's configuration schema (every key, its type,
 * default and meaning). docs/configuration.md lists the keys;
 * `slipway-coordinator --check` validates a file.
 */
#ifndef SLIPWAY_COORD_SETTINGS_H
#define SLIPWAY_COORD_SETTINGS_H

#include <stddef.h>

#include "config.h"

#define COORD_ENV_PREFIX "SLIPWAY_COORDINATOR_"
#define COORD_DEFAULT_CONFIG "/etc/slipway/coordinator.conf"

extern const struct config_key coord_settings[];
extern const size_t coord_settings_count;

/* A path that defaults to a file under data.dir when its key is unset. */
void coord_settings_path(const struct config *cfg, const char *key, const char *default_name,
			 char *out, size_t cap);

#endif
