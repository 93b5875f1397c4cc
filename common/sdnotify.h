/*
 * sdnotify: the systemd notification protocol (sd_notify(3)) without
 * libsystemd, so the static agent needs no extra library.
 *
 * A message is one datagram of "KEY=VALUE" lines sent to the AF_UNIX socket
 * named by $NOTIFY_SOCKET: an absolute path, or an abstract name written
 * with a leading '@'. The daemons send READY=1 once they serve, STATUS=...
 * for `systemctl status`, WATCHDOG=1 from their event loop (so a loop that
 * is stuck stops pinging and systemd restarts the unit) and STOPPING=1 when
 * a SIGTERM starts their shutdown. Without $NOTIFY_SOCKET (not started by
 * systemd, or not Type=notify) every call is a no-op that succeeds.
 *
 * The watchdog interval comes from $WATCHDOG_USEC, for this process only
 * when $WATCHDOG_PID is unset or names it; the loop timer pings at half that
 * interval, as sd_watchdog_enabled(3) recommends.
 *
 * State: one per process. sdnotify_init reads the three variables and
 * removes them from the environment, so a process the daemon starts (the
 * proxy the agent spawns) cannot speak to systemd in the daemon's name
 * (systemd would refuse it and log a warning). Call it at start-up, before
 * threads; calling it again re-reads the environment (tests). The send
 * functions may be called from any thread; the watchdog functions from the
 * loop's thread. Sending never blocks: the socket is non-blocking and a full
 * receive queue is an error for that one message. Nothing is allocated
 * except the watchdog's timer, freed by sdnotify_watchdog_stop.
 */
#ifndef SLIPWAY_SDNOTIFY_H
#define SLIPWAY_SDNOTIFY_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"

struct ev_loop;

#define SDNOTIFY_MESSAGE_MAX 4096

/* Reads and unsets NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID. A malformed
 * NOTIFY_SOCKET (relative path, too long) disables notifications and is
 * reported in err (-1); everything else returns 0. */
int sdnotify_init(struct err *err);

/* true when sdnotify_init found a usable NOTIFY_SOCKET. */
bool sdnotify_enabled(void);

/* The watchdog interval for this process in microseconds; 0 when none. */
uint64_t sdnotify_watchdog_usec(void);

/* Sends msg (one or more "KEY=VALUE" lines, at most SDNOTIFY_MESSAGE_MAX
 * bytes) as one datagram. 0 when sent or when notifications are off. */
int sdnotify_send(const char *msg, struct err *err);

/* printf-style sdnotify_send. */
int sdnotify_sendf(struct err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The usual messages; failures are logged (log.h), not returned: a daemon
 * keeps running when systemd cannot be told. status may be NULL. */
void sdnotify_ready(const char *status);
void sdnotify_status(const char *status);
void sdnotify_stopping(void);

/* Starts a repeating timer on loop that sends WATCHDOG=1 at once and then
 * every half interval. 1 when started, 0 when this process has no watchdog
 * (or it is already started), -1 when out of memory. */
int sdnotify_watchdog_start(struct ev_loop *loop);
/* Stops and frees the timer (nothing when none runs). */
void sdnotify_watchdog_stop(void);
/* Pings sent since the watchdog started (tests). */
uint64_t sdnotify_watchdog_pings(void);

#endif
