/*
 * fakeproc: one of the Python fakes in tests/fakes/ run as a child process
 * of a unit test, and blocking requests to its control API.
 *
 * fakeproc_start runs `python3 $SLIPWAY_TOP/tests/fakes/<script> args...`
 * with a pipe on its stdin (every fake exits when its stdin closes) and waits
 * up to 20 s for the first line of its stdout: the port it listens on, or
 * "ready" for a fake that listens on a unix socket it was given. Its stdout
 * is closed after that line (the fakes print nothing more).
 *
 * Ownership: the caller owns struct fakeproc (usually static in the test);
 * fakeproc_stop/fakeproc_finish reap the child and close the pipe and may be
 * called on a fake that is not running. fakeproc_http returns a malloc'ed
 * string and fakeproc_json a cJSON tree, both the caller's to free.
 *
 * Errors: fakeproc_start returns 0 / -1 (with the reason printed through
 * cmocka's print_error), so it fits both in a test (assert it) and in a
 * group setup (return -1). The control calls fail the running cmocka test
 * on any error. Test-only code: everything blocks; call from the test's
 * thread.
 */
#ifndef SLIPWAY_TESTS_FAKEPROC_H
#define SLIPWAY_TESTS_FAKEPROC_H

#include <sys/types.h>

#include <cjson/cJSON.h>

struct fakeproc {
	pid_t pid;       /* 0 when not running */
	int in;          /* write end of its stdin; -1 when closed */
	int port;        /* the port it printed; 0 for a "ready" fake */
	char base[64];   /* "http://127.0.0.1:<port>"; "" for a "ready" fake */
	char sock[128];  /* set by the caller for a unix-socket fake: fakeproc_json
			  * sends there instead of to port */
};

/* Starts tests/fakes/<script> with args (NULL-terminated, at most 13; NULL for
 * none) and waits for its port or "ready" line. Leaves f->sock alone. */
int fakeproc_start(struct fakeproc *f, const char *script, const char *const *args);

/* Closes its stdin, sends SIGTERM and reaps it. */
void fakeproc_stop(struct fakeproc *f);

/* Closes its stdin and reaps it once it has exited by itself (no signal):
 * for a fake that cleans up at EOF. */
void fakeproc_finish(struct fakeproc *f);

/* A plain HTTP/1.1 request to its port (Connection: close, no timeout);
 * returns the answer's body whatever the status (malloc'ed). */
char *fakeproc_http(const struct fakeproc *f, const char *method, const char *path,
		    const char *body);

/* A JSON control request (Content-Type: application/json, 20 s timeout) to
 * its port or f->sock; fails the test unless the answer is 200 with a JSON
 * body, and returns that (cJSON_Delete it). */
cJSON *fakeproc_json(const struct fakeproc *f, const char *method, const char *path,
		     const char *body);

#endif
