/*
 * proxy_main: the proxy process (`slipway-agent proxy [--config FILE]`): it
 * loads the agent's configuration, starts the data plane (agent/proxy.h) and
 * the control server (agent/proxy_ctl.h), and runs until SIGTERM or until a
 * newer proxy process takes over.
 *
 * Start-up: if an older proxy answers on <control_socket>.handover, the new
 * process takes over from it: it receives the listening sockets (the public
 * ports and the control socket itself, SCM_RIGHTS) and the route table,
 * serves them, then tells the old one to stop accepting ("GO"); the old one
 * finishes its requests in flight (proxy.stop_timeout), answers the next
 * request on each idle keep-alive connection with Connection: close, and
 * exits. No socket is ever closed in between, so no connection is refused.
 * Otherwise it loads <state_dir>/proxy-routes.json and binds the sockets
 * itself.
 *
 * SIGTERM/SIGINT: stop accepting, finish in flight (proxy.stop_timeout),
 * exit 0. Exit status 1 on a start-up failure (bad config, a live proxy that
 * does not hand over, unbindable control socket).
 *
 * The hand-over message (one per take-over) is a 4-byte big-endian length
 * and a JSON document {"version":1,"listeners":[{"port","protocol"}],
 * "routes":[...],"draining":bool}; the descriptors ride on it as SCM_RIGHTS
 * in the order: control socket, then the listeners as listed.
 *
 * Control requests that arrive while the message is sent wait in the control
 * socket's backlog and are answered by the new process, so no route change
 * falls between the snapshot and the take-over. If the new process dies
 * before "GO", the old one resumes as if nothing happened.
 *
 * Threads: proxy_main owns the process (signals, the default loop). The
 * handover helpers block (bounded by a 10 s socket timeout); the old process
 * sends its message with them from its loop, which pauses for the few
 * milliseconds that takes (the new process is reading).
 */
#ifndef SLIPWAY_AGENT_PROXY_MAIN_H
#define SLIPWAY_AGENT_PROXY_MAIN_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "err.h"

#define PROXY_HANDOVER_MAX ((size_t)16 << 20)

/* argv[0] is the sub-command ("proxy"); returns the process exit status. */
int proxy_main(int argc, char **argv);

/* Sends doc with fds attached (blocking; at most PROXY_LISTENERS_MAX + 1 fds). */
int proxy_handover_send(int sock, const cJSON *doc, const int *fds, size_t nfds,
			struct err *err);
/* Receives one message: the document (caller frees) and up to max_fds
 * descriptors (close-on-exec; the caller's). NULL on error, with no fd left open. */
cJSON *proxy_handover_recv(int sock, int *fds, size_t max_fds, size_t *nfds, struct err *err);

#endif
