/*
 * apiop: one API request = one store operation, the shape every /v1 handler
 * of api.c, link.c (GET .../link) and slack.c (.../slack) has.
 *
 * A handler validates the request on the loop thread, makes an op
 * (apiop_new / apiop_start) and submits it; op->fn runs on the store thread,
 * checks, changes and reads what it needs and builds the answer in op->out.
 * The answer goes out on the loop thread only after the commit, so a 2xx
 * always reports durable state. A refusal (apiop_refuse: 4xx with a code and
 * a message) rolls the operation back and changes nothing. op->after runs on
 * the loop thread after a successful commit, before the answer (registry and
 * cache updates, kicks). Agents named in op->wake are woken after the commit.
 *
 * Ownership: the op owns in, out and secret (secret is wiped when freed) and
 * frees itself after answering; a client that goes away (on_abort) only
 * drops op->r, the operation still completes. Threads: loop thread, except
 * fn (store thread). Nothing blocks.
 *
 * Row helpers: JSON members from a result column, null for SQL NULL.
 */
#ifndef SLIPWAY_COORD_APIOP_H
#define SLIPWAY_COORD_APIOP_H

#include <stdint.h>

#include <cjson/cJSON.h>
#include <sqlite3.h>

#include "auth.h"
#include "crypto.h"
#include "queue.h"
#include "releases.h"

struct coord;
struct server_req;
struct store_tx;
struct apiop;

typedef int (*apiop_fn)(struct store_tx *tx, struct apiop *op);
typedef void (*apiop_after_fn)(struct apiop *op);

#define APIOP_LIST_DEFAULT 50
#define APIOP_LIST_MAX 1000

struct apiop {
	struct coord *c;
	struct server_req *r;    /* NULL once the client went away */
	apiop_fn fn;
	apiop_after_fn after;    /* on the loop thread after a commit */
	void *arg;               /* the handler's (its route argument) */
	cJSON *in;               /* the request body (owned) */
	cJSON *out;              /* the answer, built on the store thread (owned) */
	char *secret;            /* a plaintext the op carries (owned, wiped when freed) */
	int status;              /* answer status; >= 400 with code/message is a refusal */
	char code[32];
	char message[512];
	char app[48];            /* the {app} parameter, when the route has one */
	char id[72];
	char who[80];            /* the calling key's name */
	struct auth_principal principal;
	int64_t n1, n2;
	int flag;
	uint8_t hash[CRYPTO_SHA256_LEN];
	struct queue_wake wake;
	struct releases_result res;
};

/* Notes a refusal in op (the operation rolls back); returns 0 so fn can
 * `return apiop_refuse(...)`. */
int apiop_refuse(struct apiop *op, int status, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* A new op for r (app and who filled from the request). NULL after answering
 * 503 when out of memory. */
struct apiop *apiop_new(struct server_req *r, apiop_fn fn);

/* Submits op: answers 503 and frees it when the store queue is full. */
void apiop_submit(struct apiop *op);

/* apiop_new with the JSON body parsed into op->in (with_body; NULL after the
 * 400 answer when it is not JSON), submitted when submit is set. */
struct apiop *apiop_start(struct server_req *r, apiop_fn fn, int with_body, int submit);

/* For handlers that submit with their own done: the store function, the
 * standard done (answers and frees), the abort hook, and free. */
int apiop_tx(struct store_tx *tx, void *arg);
void apiop_done(int rc, void *arg);
void apiop_abort(struct server_req *r, void *arg);
void apiop_free(struct apiop *op);

/* ?limit= (1..APIOP_LIST_MAX, default APIOP_LIST_DEFAULT); -1 after answering 400. */
int apiop_query_limit(struct server_req *r, int64_t *out);

/* 1 when op->app exists; 0 after refusing 404 "unknown app"; -1 store error. */
int apiop_app_exists(struct store_tx *tx, struct apiop *op);

/* ---- row helpers ---- */

void apiop_add_text(cJSON *o, const char *key, sqlite3_stmt *st, int col);
void apiop_add_int(cJSON *o, const char *key, sqlite3_stmt *st, int col);
/* A JSON text column as a tree (null when empty or unparsable). */
void apiop_add_json(cJSON *o, const char *key, sqlite3_stmt *st, int col);

/* Declarative rows: field i is column first + i of the result. */
enum apiop_type {
	APIOP_TEXT,         /* a string ("" for NULL) */
	APIOP_TEXT_OR_NULL, /* a string or null */
	APIOP_INT,          /* a number (0 for NULL) */
	APIOP_INT_OR_NULL,  /* a number or null */
	APIOP_BOOL,
	APIOP_JSON,         /* a JSON text column as a tree, or null */
};

struct apiop_field {
	const char *key;
	enum apiop_type type;
};

#define APIOP_FIELDS(array) (array), sizeof(array) / sizeof((array)[0])

void apiop_add_fields(cJSON *o, sqlite3_stmt *st, int first, const struct apiop_field *fields,
		      size_t n);

/* Every remaining row of st as an object of fields, into a new array `key`
 * of parent. 0, or -1 on a store error. */
int apiop_add_rows(struct store_tx *tx, cJSON *parent, const char *key, sqlite3_stmt *st,
		   const struct apiop_field *fields, size_t n);

#endif
