/*
 * manifest: slipway.yml, the file at the root of an app's repository that
 * says what to build and run, parsed with libyaml's event API into a
 * normalized JSON manifest (docs/manifest.md is the reference).
 *
 *   services:
 *     web:
 *       build: .                 # a directory with a Dockerfile; or `image:`
 *       command: ["/srv/web", "--port", "8080"]
 *       environment: {LOG_LEVEL: info}
 *       port: 8080
 *       health: {path: /health, interval: 1s, timeout: 2s, grace: 30s}
 *       scale: {count: 2, memory: 256M}
 *       stop_grace: 10s
 *       proxy: {listen: 80, hosts: [web.example.com]}
 *   release: bin/migrate         # kept for a later issue (run once before a rollout)
 *
 * Strict: an unknown key, a wrong type, a value out of range, a duplicate key,
 * an alias, a tag other than !!str, or a second document is an error naming
 * the file and line: "slipway.yml:12: services.web.port: expected an integer
 * 1..65535". Every error found is reported, one per line (as many as fit in
 * struct err, then "... and N more").
 *
 * The result is a cJSON object with every default filled in, shaped like the
 * release spec of docs/protocol.md so the releases module copies fields:
 *   {"release": null | [argv...],
 *    "services": {"web": {"build": {"context": ".", "dockerfile": "Dockerfile"} | null,
 *                         "image": null | "ref", "command": null | [argv...],
 *                         "environment": {..}, "port": 8080 | null,
 *                         "proxy": {"listen", "hosts", "protocol"} | null,
 *                         "health": {"type", "path"?, "interval_ms", "timeout_ms",
 *                                    "grace_ms"},
 *                         "count": 1, "memory_mb": 0, "stop_grace_ms": 10000}}}
 *
 * Ownership: manifest_parse / manifest_load return a tree the caller frees
 * with cJSON_Delete; nothing is allocated on error. Pure functions: any
 * thread. manifest_load blocks on reading one small file (worker threads,
 * tests); manifest_parse never blocks.
 */
#ifndef SLIPWAY_COORD_MANIFEST_H
#define SLIPWAY_COORD_MANIFEST_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "err.h"

#define MANIFEST_FILE "slipway.yml"
#define MANIFEST_MAX_BYTES ((size_t)256 << 10)
#define MANIFEST_NODES_MAX 20000          /* YAML nodes in one file */
#define MANIFEST_DEPTH_MAX 32
#define MANIFEST_SERVICES_MAX 32          /* docs/protocol.md: services per release */
#define MANIFEST_ENV_MAX_BYTES ((size_t)256 << 10) /* per service, names + values */
#define MANIFEST_ENV_VARS_MAX 1000
#define MANIFEST_ARGV_MAX 256             /* command / release words */
#define MANIFEST_ARG_MAX_BYTES 8192       /* one word */
#define MANIFEST_HOSTS_MAX 32
#define MANIFEST_PATH_MAX 1024            /* build context, dockerfile, health path */
#define MANIFEST_IMAGE_MAX 512

/* Defaults (docs/manifest.md). */
#define MANIFEST_DEFAULT_INTERVAL_MS 1000
#define MANIFEST_DEFAULT_TIMEOUT_MS 2000
#define MANIFEST_DEFAULT_GRACE_MS 30000
#define MANIFEST_DEFAULT_RUNNING_GRACE_MS 5000
#define MANIFEST_DEFAULT_STOP_GRACE_MS 10000

/* Parses len bytes of YAML; `name` is the file name used in messages
 * ("slipway.yml"). NULL with every error in *err. */
cJSON *manifest_parse(const char *text, size_t len, const char *name, struct err *err);

/* Reads dir/slipway.yml (at most MANIFEST_MAX_BYTES; a missing file, a
 * symlink or anything but a regular file is an error) and parses it. */
cJSON *manifest_load(const char *dir, struct err *err);

/* Splits a command line into words the way a POSIX shell would without
 * expanding anything: blanks separate words, '...' is literal, "..." allows
 * \" \\ \$ \` escapes, a backslash outside quotes escapes the next character.
 * Appends the words to arr (a cJSON array). -1 with a message (unbalanced
 * quote, trailing backslash, too many or too long words). */
int manifest_split_words(const char *s, cJSON *arr, struct err *err);

#endif
