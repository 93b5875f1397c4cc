/*
 * inventory: what runs on this instance, for `slipway ps`: every container
 * the agent manages (label slipway.app plus the configured extra labels) with
 * id, app, service, release, generation, state, health, started_ms, command
 * and memory_bytes (docs/protocol.md, "Inventory").
 *
 * It follows the engine's container events: a change is re-listed after a
 * short pause (events come in bursts during a swap) and reported through
 * `report` when the document differs from the last one reported; every
 * interval_ms it is reported anyway, with fresh memory figures (one-shot
 * stats of each running container). Started and stopped containers are
 * announced to the agent's hooks (container_started / container_stopped),
 * the ones already running at start included. When the event stream
 * reconnects (the engine restarted) `engine_back` runs: container addresses
 * may have changed, so the caller re-sends its proxy routes.
 *
 * Ownership: the array handed to report lives for the call. Threads: loop
 * thread only; never blocks.
 */
#ifndef SLIPWAY_AGENT_INVENTORY_H
#define SLIPWAY_AGENT_INVENTORY_H

#include <stdint.h>

#include <cjson/cJSON.h>

#include "err.h"

struct agent;
struct inventory;

struct inventory_opts {
	void (*report)(const cJSON *containers, void *arg);
	void (*engine_back)(void *arg);
	void *arg;
	int64_t interval_ms;     /* 0 = 60000 */
	int64_t debounce_ms;     /* 0 = 300 */
};

struct inventory *inventory_new(struct agent *a, const struct inventory_opts *opts,
				struct err *err);
/* Subscribes to events and takes the first listing. */
void inventory_start(struct inventory *inv);
/* Re-lists soon (debounced). */
void inventory_changed(struct inventory *inv);
/* The last listing (an array), or NULL before the first one. */
const cJSON *inventory_containers(const struct inventory *inv);
void inventory_free(struct inventory *inv);

#endif
