/*
 * api: the /v1 API the CLI and CI call (docs/api.md is the reference): apps,
 * builds and their logs, releases (promote, rollback, from images), rollouts,
 * environment, scale, ps, agents, events and API keys.
 *
 * Every endpoint takes and answers JSON (build logs are text) and needs an API
 * key of the role the route names (read, deploy, admin; server.h checks it,
 * app-scoped keys included). A handler validates the request on the loop
 * thread, then runs ONE store operation that checks, changes and reads what
 * it needs and builds the answer; the answer is sent after the commit, so a
 * 2xx always reports durable state. Refusals (404, 409, 400 found only in the
 * store) roll their operation back and change nothing.
 *
 * Secrets: environment values are returned only by GET .../env (role deploy);
 * release answers carry variable names, never values; hook tokens, deploy
 * keys and API key hashes are never returned.
 *
 * Ownership: nothing to free beyond api_register's routes (static). Threads:
 * the loop thread; nothing blocks.
 */
#ifndef SLIPWAY_COORD_API_H
#define SLIPWAY_COORD_API_H

struct coord;

#define SLIPWAY_VERSION "0.1.0"

/* Registers every /v1 API route on c->server; -1 when one is refused. */
int api_register(struct coord *c);

/* Ends the build-log streams (graceful shutdown). */
void api_shutdown(struct coord *c);

#endif
