#include "apiop.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord.h"
#include "json.h"
#include "server.h"
#include "store.h"

int apiop_refuse(struct apiop *op, int status, const char *code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(op->message, sizeof op->message, fmt, ap);
	va_end(ap);
	snprintf(op->code, sizeof op->code, "%s", code);
	op->status = status;
	return 0;
}

int apiop_tx(struct store_tx *tx, void *arg)
{
	struct apiop *op = arg;
	int rc = op->fn(tx, op);
	if (rc < 0) {
		op->status = 500;
		snprintf(op->message, sizeof op->message, "%s", tx->err.msg);
		return -1;
	}
	return op->status >= 400 ? -1 : 0;
}

void apiop_free(struct apiop *op)
{
	cJSON_Delete(op->in);
	cJSON_Delete(op->out);
	if (op->secret) {
		memset(op->secret, 0, strlen(op->secret));
		free(op->secret);
	}
	queue_wake_free(&op->wake);
	free(op);
}

void apiop_done(int rc, void *arg)
{
	struct apiop *op = arg;
	if (rc == 0) {
		if (op->c->queue)
			queue_wake(op->c->queue, &op->wake);
		if (op->after)
			op->after(op);
	}
	if (op->r) {
		server_on_abort(op->r, NULL, NULL);
		if (op->status >= 400 && op->status != 500)
			server_respond_error(op->r, op->status, op->code, "%s", op->message);
		else if (rc < 0)
			server_respond_internal(op->r, "store operation",
						op->message[0] ? op->message : "commit failed");
		else if (op->out)
			server_respond_json(op->r, op->status ? op->status : 200, op->out);
		else
			server_respond(op->r, op->status ? op->status : 200, "application/json", "{}",
				       2);
	}
	apiop_free(op);
}

void apiop_abort(struct server_req *r, void *arg)
{
	(void)r;
	((struct apiop *)arg)->r = NULL;
}

struct apiop *apiop_new(struct server_req *r, apiop_fn fn)
{
	struct apiop *op = calloc(1, sizeof *op);
	if (!op) {
		server_respond_error(r, 503, "unavailable", "out of memory");
		return NULL;
	}
	op->c = r->coord;
	op->r = r;
	op->fn = fn;
	op->res.wake = &op->wake;
	op->principal = r->who;
	const char *app = server_param(r, "app");
	if (app)
		snprintf(op->app, sizeof op->app, "%s", app);
	if (r->who.key_name[0])
		snprintf(op->who, sizeof op->who, "%s", r->who.key_name);
	return op;
}

void apiop_submit(struct apiop *op)
{
	if (store_submit(op->c->store, apiop_tx, apiop_done, op) < 0) {
		server_respond_error(op->r, 503, "unavailable", "the store is busy; retry");
		apiop_free(op);
		return;
	}
	server_on_abort(op->r, apiop_abort, op);
}

struct apiop *apiop_start(struct server_req *r, apiop_fn fn, int with_body, int submit)
{
	cJSON *in = NULL;
	if (with_body) {
		in = server_json_body(r);
		if (!in)
			return NULL;
	}
	struct apiop *op = apiop_new(r, fn);
	if (!op) {
		cJSON_Delete(in);
		return NULL;
	}
	op->in = in;
	if (submit)
		apiop_submit(op);
	return op;
}

int apiop_query_limit(struct server_req *r, int64_t *out)
{
	char v[16];
	int rc = server_query(r, "limit", v, sizeof v);
	*out = APIOP_LIST_DEFAULT;
	if (rc == 0)
		return 0;
	char *end;
	long n = rc > 0 ? strtol(v, &end, 10) : 0;
	if (rc < 0 || *end || n < 1 || n > APIOP_LIST_MAX) {
		server_respond_error(r, 400, "bad_request", "limit: 1..%d", APIOP_LIST_MAX);
		return -1;
	}
	*out = n;
	return 0;
}

int apiop_app_exists(struct store_tx *tx, struct apiop *op)
{
	int ex = store_app_exists(tx, op->app);
	if (ex == 0)
		return apiop_refuse(op, 404, "not_found", "unknown app %s", op->app);
	return ex;
}

/* ---- row helpers ---- */

void apiop_add_text(cJSON *o, const char *key, sqlite3_stmt *st, int col)
{
	if (sqlite3_column_type(st, col) == SQLITE_NULL)
		cJSON_AddNullToObject(o, key);
	else
		cJSON_AddStringToObject(o, key, store_col_text(st, col));
}

void apiop_add_int(cJSON *o, const char *key, sqlite3_stmt *st, int col)
{
	if (sqlite3_column_type(st, col) == SQLITE_NULL)
		cJSON_AddNullToObject(o, key);
	else
		cJSON_AddNumberToObject(o, key, (double)sqlite3_column_int64(st, col));
}

void apiop_add_json(cJSON *o, const char *key, sqlite3_stmt *st, int col)
{
	const char *t = (const char *)sqlite3_column_text(st, col);
	cJSON *v = t && *t ? json_parse(t, strlen(t), (size_t)16 << 20, NULL) : NULL;
	if (v)
		cJSON_AddItemToObject(o, key, v);
	else
		cJSON_AddNullToObject(o, key);
}

void apiop_add_fields(cJSON *o, sqlite3_stmt *st, int first, const struct apiop_field *fields,
		      size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int col = first + (int)i;
		const char *key = fields[i].key;
		switch (fields[i].type) {
		case APIOP_TEXT:
			cJSON_AddStringToObject(o, key, store_col_text(st, col));
			break;
		case APIOP_TEXT_OR_NULL:
			apiop_add_text(o, key, st, col);
			break;
		case APIOP_INT:
			cJSON_AddNumberToObject(o, key, (double)sqlite3_column_int64(st, col));
			break;
		case APIOP_INT_OR_NULL:
			apiop_add_int(o, key, st, col);
			break;
		case APIOP_BOOL:
			cJSON_AddBoolToObject(o, key, sqlite3_column_int(st, col));
			break;
		case APIOP_JSON:
			apiop_add_json(o, key, st, col);
			break;
		}
	}
}

int apiop_add_rows(struct store_tx *tx, cJSON *parent, const char *key, sqlite3_stmt *st,
		   const struct apiop_field *fields, size_t n)
{
	cJSON *arr = cJSON_AddArrayToObject(parent, key);
	int rc;
	while ((rc = store_step(tx, st)) == SQLITE_ROW) {
		cJSON *o = cJSON_CreateObject();
		apiop_add_fields(o, st, 0, fields, n);
		cJSON_AddItemToArray(arr, o);
	}
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? 0 : -1;
}
