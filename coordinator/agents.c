#include "agents.h"

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "clock.h"
#include "config.h"
#include "coord.h"
#include "json.h"
#include "log.h"
#include "queue.h"
#include "rollout.h"
#include "server.h"
#include "sqsqueue.h"
#include "store.h"
#include "sts.h"

#define BUCKETS 4096
#define PERSIST_SEEN_EVERY_MS 30000
#define INVENTORY_MAX_CONTAINERS 10000
#define HEARTBEAT_APPS_MAX 1000

struct agents {
	struct coord *c;
	struct agent *buckets[BUCKETS];
	size_t count;
	ev_timer timer;
	int started;
	int flush_busy;
	struct sts_verifier *sts;  /* NULL: no AWS identities (agents.aws_accounts unset) */
};

static size_t bucket_of(const char *id)
{
	uint32_t h = 2166136261u;
	for (const unsigned char *p = (const unsigned char *)id; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h % BUCKETS;
}

struct agent *agents_find(struct agents *a, const char *id)
{
	if (!a || !id)
		return NULL;
	for (struct agent *ag = a->buckets[bucket_of(id)]; ag; ag = ag->next)
		if (strcmp(ag->id, id) == 0)
			return ag;
	return NULL;
}

size_t agents_count(const struct agents *a)
{
	return a->count;
}

static struct agent *agent_add(struct agents *a, const char *id)
{
	struct agent *ag = agents_find(a, id);
	if (ag)
		return ag;
	ag = calloc(1, sizeof *ag);
	if (!ag)
		return NULL;
	snprintf(ag->id, sizeof ag->id, "%s", id);
	size_t b = bucket_of(id);
	ag->next = a->buckets[b];
	a->buckets[b] = ag;
	a->count++;
	return ag;
}

const char *agents_state_name(enum agent_state st)
{
	switch (st) {
	case AGENT_LIVE:
		return "live";
	case AGENT_LOST:
		return "lost";
	case AGENT_DRAINING:
		return "draining";
	default:
		return "gone";
	}
}

static enum agent_state state_parse(const char *s)
{
	if (strcmp(s, "live") == 0)
		return AGENT_LIVE;
	if (strcmp(s, "lost") == 0)
		return AGENT_LOST;
	if (strcmp(s, "draining") == 0)
		return AGENT_DRAINING;
	return AGENT_GONE;
}

int agents_authenticate(struct agents *a, const char *id, const char *token)
{
	struct agent *ag = agents_find(a, id);
	if (!ag || ag->state == AGENT_GONE)
		return 0;
	return auth_token_matches(token, ag->token_hash) ? 1 : -1;
}

/* ---- start-up ---- */

static int load_tx(struct store_tx *tx, void *arg)
{
	struct agents *a = arg;
	sqlite3_stmt *st = store_stmt(tx, "SELECT id, instance_id, fleet, protocol, token_hash, "
					  "state, last_seen_ms FROM agents");
	if (!st)
		return -1;
	int64_t now = clock_wall_ms();
	int rc;
	while ((rc = store_step(tx, st)) == SQLITE_ROW) {
		struct agent *ag = agent_add(a, store_col_text(st, 0));
		if (!ag)
			return err_set(&tx->err, "out of memory");
		snprintf(ag->instance_id, sizeof ag->instance_id, "%s", store_col_text(st, 1));
		snprintf(ag->fleet, sizeof ag->fleet, "%s", store_col_text(st, 2));
		ag->protocol = sqlite3_column_int(st, 3);
		if (sqlite3_column_bytes(st, 4) == CRYPTO_SHA256_LEN)
			memcpy(ag->token_hash, sqlite3_column_blob(st, 4), CRYPTO_SHA256_LEN);
		ag->state = state_parse(store_col_text(st, 5));
		ag->persisted_seen_ms = sqlite3_column_int64(st, 6);
		/* Nobody could call while the coordinator was down: a fresh lost_after. */
		ag->last_seen_ms = ag->persisted_seen_ms > now ? ag->persisted_seen_ms : now;
	}
	return rc == SQLITE_DONE ? 0 : -1;
}

int agents_load(struct agents *a, struct err *err)
{
	return store_run(a->c->store, load_tx, a, err);
}

/* ---- state transitions ---- */

enum transition_kind { T_LOST, T_RETURN, T_DRAIN, T_UNDRAIN };

struct transition {
	struct agents *a;
	struct agent *ag;
	enum transition_kind kind;
	int64_t decided_ms;
	struct queue_wake wake;
	/* The heartbeat waiting for this, if any. */
	struct server_req *r;
	cJSON *answer;
};

static int transition_tx(struct store_tx *tx, void *arg)
{
	struct transition *t = arg;
	const char *to, *kind;
	switch (t->kind) {
	case T_LOST:
		to = "lost", kind = "agent.lost";
		break;
	case T_RETURN:
		to = "live", kind = "agent.returned";
		break;
	case T_DRAIN:
		to = "draining", kind = "agent.draining";
		break;
	default:
		to = "live", kind = "agent.undrained";
		break;
	}
	sqlite3_stmt *st = store_stmt(tx, "UPDATE agents SET state = ?, last_seen_ms = ? "
					  "WHERE id = ? AND state != 'gone'");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, to, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, t->ag->last_seen_ms);
	sqlite3_bind_text(st, 3, t->ag->id, -1, SQLITE_STATIC);
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	if (rollout_event_tx(tx, NULL, kind, "agent=%s instance=%s", t->ag->id,
			     t->ag->instance_id) < 0)
		return -1;
	if (t->kind == T_LOST || t->kind == T_DRAIN)
		return rollout_agent_left_tx(tx, t->a->c, t->ag->id, &t->wake);
	return rollout_agent_joined_tx(tx, t->a->c, t->ag->id, 0, &t->wake);
}

static void transition_start(struct agents *a, struct agent *ag, enum transition_kind kind,
			     struct server_req *r, cJSON *answer);

static void transition_done(int rc, void *arg)
{
	struct transition *t = arg;
	struct agent *ag = t->ag;
	ag->transition = 0;
	if (rc == 0) {
		ag->persisted_seen_ms = ag->last_seen_ms;
		switch (t->kind) {
		case T_LOST:
			/* Scale-in: a draining instance that stops calling is gone. */
			ag->lost_draining = ag->state == AGENT_DRAINING;
			ag->state = AGENT_LOST;
			break;
		case T_DRAIN:
			ag->state = AGENT_DRAINING;
			break;
		default:
			ag->lost_draining = false;
			ag->state = AGENT_LIVE;
			break;
		}
		if (t->a->c->queue)
			queue_wake(t->a->c->queue, &t->wake);
	}
	if (t->r) {
		server_on_abort(t->r, NULL, NULL);
		if (rc < 0)
			server_respond_error(t->r, 503, "unavailable", "the store is busy; retry");
		else
			server_respond_json(t->r, 200, t->answer);
	}
	cJSON_Delete(t->answer);
	queue_wake_free(&t->wake);
	struct agents *a = t->a;
	int called_meanwhile = t->kind == T_LOST && rc == 0 && ag->last_seen_ms > t->decided_ms;
	free(t);
	/* It called while we were marking it lost: it is back. */
	if (called_meanwhile)
		transition_start(a, ag, T_RETURN, NULL, NULL);
}

static void transition_abort(struct server_req *r, void *arg)
{
	(void)r;
	struct transition *t = arg;
	t->r = NULL;
}

static void transition_start(struct agents *a, struct agent *ag, enum transition_kind kind,
			     struct server_req *r, cJSON *answer)
{
	struct transition *t = calloc(1, sizeof *t);
	if (!t) {
		if (r)
			server_respond_error(r, 503, "unavailable", "out of memory");
		cJSON_Delete(answer);
		return;
	}
	t->a = a;
	t->ag = ag;
	t->kind = kind;
	t->decided_ms = clock_wall_ms();
	t->r = r;
	t->answer = answer;
	if (store_submit(a->c->store, transition_tx, transition_done, t) < 0) {
		if (r)
			server_respond_error(r, 503, "unavailable", "the store is busy; retry");
		cJSON_Delete(answer);
		free(t);
		return;
	}
	ag->transition = 1;
	if (r)
		server_on_abort(r, transition_abort, t);
	log_info("agents.transition", "agent=%s kind=%s", ag->id,
		 kind == T_LOST     ? "lost"
		 : kind == T_RETURN ? "returned"
		 : kind == T_DRAIN  ? "draining"
				    : "undrained");
}

void agents_seen(struct agents *a, struct agent *ag)
{
	ag->last_seen_ms = clock_wall_ms();
	if (ag->state == AGENT_LOST && !ag->transition)
		transition_start(a, ag, T_RETURN, NULL, NULL);
}

struct flush {
	struct agents *a;
	size_t n;
	struct {
		char id[AGENT_ID_MAX + 1];
		int64_t seen;
	} *rows;
};

static int flush_tx(struct store_tx *tx, void *arg)
{
	struct flush *f = arg;
	for (size_t i = 0; i < f->n; i++) {
		sqlite3_stmt *st = store_stmt(tx, "UPDATE agents SET last_seen_ms = ? WHERE id = ?");
		if (!st)
			return -1;
		sqlite3_bind_int64(st, 1, f->rows[i].seen);
		sqlite3_bind_text(st, 2, f->rows[i].id, -1, SQLITE_STATIC);
		if (store_step(tx, st) != SQLITE_DONE)
			return -1;
	}
	return 0;
}

static void flush_done(int rc, void *arg)
{
	struct flush *f = arg;
	f->a->flush_busy = 0;
	if (rc == 0)
		for (size_t i = 0; i < f->n; i++) {
			struct agent *ag = agents_find(f->a, f->rows[i].id);
			if (ag && ag->persisted_seen_ms < f->rows[i].seen)
				ag->persisted_seen_ms = f->rows[i].seen;
		}
	free(f->rows);
	free(f);
}

void agents_check_lost(struct agents *a)
{
	int64_t now = clock_wall_ms();
	int64_t lost_after = config_ms(a->c->cfg, "agents.lost_after");
	struct flush *f = NULL;
	for (size_t b = 0; b < BUCKETS; b++) {
		for (struct agent *ag = a->buckets[b]; ag; ag = ag->next) {
			if (ag->transition || ag->state == AGENT_GONE)
				continue;
			if ((ag->state == AGENT_LIVE || ag->state == AGENT_DRAINING) &&
			    now - ag->last_seen_ms >= lost_after) {
				transition_start(a, ag, T_LOST, NULL, NULL);
				continue;
			}
			if (a->flush_busy || ag->last_seen_ms - ag->persisted_seen_ms <
						     PERSIST_SEEN_EVERY_MS)
				continue;
			if (!f) {
				f = calloc(1, sizeof *f);
				if (f)
					f->rows = calloc(a->count, sizeof *f->rows);
				if (!f || !f->rows) {
					free(f);
					return;
				}
				f->a = a;
			}
			snprintf(f->rows[f->n].id, sizeof f->rows[f->n].id, "%s", ag->id);
			f->rows[f->n++].seen = ag->last_seen_ms;
		}
	}
	if (f) {
		if (store_submit(a->c->store, flush_tx, flush_done, f) < 0) {
			free(f->rows);
			free(f);
		} else {
			a->flush_busy = 1;
		}
	}
}

static void tick(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	agents_check_lost(t->data);
}

struct agents *agents_new(struct coord *c)
{
	struct agents *a = calloc(1, sizeof *a);
	if (!a)
		return NULL;
	a->c = c;
	ev_timer_init(&a->timer, tick, 1.0, 1.0);
	a->timer.data = a;
	return a;
}

void agents_start(struct agents *a)
{
	if (a->started)
		return;
	a->started = 1;
	ev_timer_start(a->c->loop, &a->timer);
	ev_unref(a->c->loop);
}

void agents_free(struct agents *a)
{
	if (!a)
		return;
	sts_verifier_free(a->sts);
	if (a->started) {
		ev_ref(a->c->loop);
		ev_timer_stop(a->c->loop, &a->timer);
	}
	for (size_t b = 0; b < BUCKETS; b++) {
		while (a->buckets[b]) {
			struct agent *ag = a->buckets[b];
			a->buckets[b] = ag->next;
			free(ag);
		}
	}
	free(a);
}

/* ---- registration ---- */

struct reg {
	struct agents *a;
	struct server_req *r;
	char instance_id[AGENT_INSTANCE_MAX + 1];
	char hostname[256];
	char fleet[48];
	char version[65];
	char arch[33];
	int protocol;
	char token[AUTH_AGENT_TOKEN_LEN + 1];
	uint8_t token_hash[CRYPTO_SHA256_LEN];
	char agent_id[AGENT_ID_MAX + 1];
	int64_t now;
	struct queue_wake wake;
	uint64_t verifying;        /* the AWS identity check in flight */
};

static int register_tx(struct store_tx *tx, void *arg)
{
	struct reg *g = arg;
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT id FROM agents WHERE instance_id = ?",
				 g->instance_id, &st);
	if (rc < 0)
		return -1;
	int known = rc == SQLITE_ROW;
	if (known)
		snprintf(g->agent_id, sizeof g->agent_id, "%s", store_col_text(st, 0));
	sqlite3_reset(st);
	if (known) {
		st = store_stmt(tx, "UPDATE agents SET hostname = ?, fleet = ?, version = ?, arch = ?, "
				    "protocol = ?, token_hash = ?, state = 'live', last_seen_ms = ? "
				    "WHERE id = ?");
		if (!st)
			return -1;
		sqlite3_bind_text(st, 8, g->agent_id, -1, SQLITE_STATIC);
	} else {
		if (auth_new_id(g->agent_id, sizeof g->agent_id, "ag_") < 0)
			return err_set(&tx->err, "no randomness");
		st = store_stmt(tx, "INSERT INTO agents(hostname, fleet, version, arch, protocol, "
				    "token_hash, state, last_seen_ms, id, instance_id, registered_ms) "
				    "VALUES (?, ?, ?, ?, ?, ?, 'live', ?, ?, ?, ?)");
		if (!st)
			return -1;
		sqlite3_bind_text(st, 8, g->agent_id, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 9, g->instance_id, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 10, g->now);
	}
	sqlite3_bind_text(st, 1, g->hostname, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, g->fleet, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, g->version, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, g->arch, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 5, g->protocol);
	sqlite3_bind_blob(st, 6, g->token_hash, sizeof g->token_hash, SQLITE_STATIC);
	sqlite3_bind_int64(st, 7, g->now);
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	if (known) {
		/* An agent that enrols again lost its state: its leases are void.
		 * Run jobs excepted: a run is never started twice (runs.h), so
		 * theirs expire and fail instead. */
		st = store_stmt(tx, "UPDATE jobs SET state = 'queued', lease_id = NULL, "
				    "lease_expires_ms = NULL WHERE agent = ? AND state = 'leased' "
				    "AND type != 'run'");
		if (!st)
			return -1;
		sqlite3_bind_text(st, 1, g->agent_id, -1, SQLITE_STATIC);
		if (store_step(tx, st) != SQLITE_DONE)
			return -1;
	}
	if (rollout_event_tx(tx, NULL, known ? "agent.reregistered" : "agent.registered",
			     "agent=%s instance=%s hostname=%s fleet=%s version=%s", g->agent_id,
			     g->instance_id, g->hostname, g->fleet, g->version) < 0)
		return -1;
	return rollout_agent_joined_tx(tx, g->a->c, g->agent_id, 1, &g->wake);
}

static void register_done(int rc, void *arg)
{
	struct reg *g = arg;
	struct agents *a = g->a;
	struct agent *ag = rc == 0 ? agent_add(a, g->agent_id) : NULL;
	if (ag) {
		snprintf(ag->instance_id, sizeof ag->instance_id, "%s", g->instance_id);
		snprintf(ag->fleet, sizeof ag->fleet, "%s", g->fleet);
		ag->protocol = g->protocol;
		memcpy(ag->token_hash, g->token_hash, sizeof ag->token_hash);
		ag->state = AGENT_LIVE;
		ag->last_seen_ms = g->now;
		ag->persisted_seen_ms = g->now;
		memset(ag->apps_digest, 0, sizeof ag->apps_digest);
	}
	if (g->r) {
		server_on_abort(g->r, NULL, NULL);
		if (!ag) {
			server_respond_error(g->r, 503, "unavailable", "the store is busy; retry");
		} else {
			const struct config *cfg = a->c->cfg;
			cJSON *b = cJSON_CreateObject();
			cJSON_AddStringToObject(b, "agent_id", g->agent_id);
			cJSON_AddStringToObject(b, "token", g->token);
			cJSON_AddNumberToObject(b, "heartbeat_interval_s",
						(double)(config_ms(cfg, "agents.heartbeat_interval") / 1000));
			cJSON_AddNumberToObject(b, "lost_after_s",
						(double)(config_ms(cfg, "agents.lost_after") / 1000));
			cJSON_AddNumberToObject(b, "lease_s",
						(double)(config_ms(cfg, "queue.lease") / 1000));
			int64_t wait = config_ms(cfg, "queue.poll_wait_max") / 1000;
			cJSON_AddNumberToObject(b, "poll_wait_s",
						(double)(wait > QUEUE_WAIT_MAX_S ? QUEUE_WAIT_MAX_S : wait));
			if (a->c->sqsqueue) /* the answer names the agent's SQS queue */
				sqsqueue_register_answer(a->c->sqsqueue, ag, g->r, b);
			else
				server_respond_json_take(g->r, 200, b);
		}
	}
	if (ag && a->c->queue)
		queue_wake(a->c->queue, &g->wake);
	memset(g->token, 0, sizeof g->token);
	queue_wake_free(&g->wake);
	free(g);
}

static void reg_abort(struct server_req *r, void *arg)
{
	(void)r;
	struct reg *g = arg;
	if (g->verifying) { /* nothing was written yet: stop here */
		sts_verifier_cancel(g->a->sts, g->verifying);
		free(g);
		return;
	}
	g->r = NULL;
}

/* ---- AWS identity (docs/protocol.md "AWS identity") ---- */

int agents_identity_init(struct agents *a, struct err *err)
{
	const struct config *cfg = a->c->cfg;
	const char *accounts = config_has(cfg, "agents.aws_accounts")
				       ? config_str(cfg, "agents.aws_accounts") : "";
	const char *boot = config_has(cfg, "agents.bootstrap_token")
				   ? config_str(cfg, "agents.bootstrap_token") : "";
	if (!*accounts) {
		if (!*boot)
			return err_set(err, "agents.bootstrap_token or agents.aws_accounts must be "
				       "set: agents could not register");
		return 0;
	}
	for (const char *p = accounts; *p;) {
		while (*p == ' ' || *p == ',')
			p++;
		size_t n = strcspn(p, ",");
		size_t t = n;
		while (t && p[t - 1] == ' ')
			t--;
		if (t && (t != 12 || strspn(p, "0123456789") < 12))
			return err_set(err, "agents.aws_accounts: \"%.*s\" is not a 12-digit "
				       "account id", (int)t, p);
		p += n;
	}
	const char *roles = config_has(cfg, "agents.aws_roles") ? config_str(cfg, "agents.aws_roles")
								 : "";
	if (!*roles)
		return err_set(err, "agents.aws_roles: required with agents.aws_accounts");
	char endpoint[512], server[256];
	if (config_has(cfg, "agents.sts_endpoint")) {
		snprintf(endpoint, sizeof endpoint, "%s", config_str(cfg, "agents.sts_endpoint"));
	} else if (config_has(cfg, "agents.sts_region") && *config_str(cfg, "agents.sts_region")) {
		snprintf(endpoint, sizeof endpoint, "https://sts.%s.amazonaws.com",
			 config_str(cfg, "agents.sts_region"));
	} else {
		return err_set(err, "agents.sts_endpoint or agents.sts_region: required with "
			       "agents.aws_accounts");
	}
	if (config_has(cfg, "agents.aws_server_id")) {
		snprintf(server, sizeof server, "%s", config_str(cfg, "agents.aws_server_id"));
	} else {
		/* host[:port] of the public URL: what the agents' coordinator.url names. */
		const char *u = strstr(config_str(cfg, "server.public_url"), "://");
		u = u ? u + 3 : "";
		size_t n = strcspn(u, "/?#");
		snprintf(server, sizeof server, "%.*s", (int)(n < sizeof server ? n : 0), u);
	}
	struct sts_verifier_opts o = {.endpoint = endpoint, .server = server,
				      .accounts = accounts, .roles = roles};
	if (!(a->sts = sts_verifier_new(a->c->http, &o, err)))
		return -1;
	log_info("agents.aws_identity", "sts_endpoint=%s accounts=%s roles=%s server=%s%s",
		 endpoint, accounts, roles, server, *boot ? " (the bootstrap token too)" : "");
	return 0;
}

bool agents_aws_identity(const struct agents *a)
{
	return a && a->sts;
}

static int printable(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return 0;
	return 1;
}

static int instance_id_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > AGENT_INSTANCE_MAX)
		return 0;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '-' || *s == '_' || *s == '.' || *s == ':'))
			return 0;
	return 1;
}

/* The caller is who it says: a token for it, and the store. */
static void register_commit(struct reg *g)
{
	struct server_req *r = g->r;
	if (auth_new_agent_token(g->token, sizeof g->token) < 0) {
		free(g);
		server_respond_error(r, 503, "unavailable", "no randomness");
		return;
	}
	auth_token_hash(g->token, g->token_hash);
	if (store_submit(g->a->c->store, register_tx, register_done, g) < 0) {
		free(g);
		server_respond_error(r, 503, "unavailable", "the store is busy; retry");
		return;
	}
	server_on_abort(r, reg_abort, g);
}

static void identity_checked(enum sts_verdict v, const struct sts_identity *id,
			     const char *reason, void *arg)
{
	struct reg *g = arg;
	struct server_req *r = g->r;
	g->verifying = 0;
	server_on_abort(r, NULL, NULL);
	if (v == STS_VERIFIED) {
		log_info("agents.identity_verified", "instance=%s arn=%s", g->instance_id, id->arn);
		register_commit(g);
		return;
	}
	log_warn("agents.identity_refused", "instance=%s arn=%s reason=\"%s\"", g->instance_id,
		 id ? id->arn : "", reason);
	free(g);
	if (v == STS_UNAVAILABLE)
		server_respond_error(r, 503, "unavailable", "%s", reason);
	else
		server_respond_error(r, 401, "unauthorized", "aws_identity refused: %s", reason);
}

static void register_agent(struct server_req *r, void *arg)
{
	struct agents *a = arg;
	cJSON *body = server_json_body(r);
	if (!body)
		return;
	struct err err;
	const char *instance, *hostname, *fleet, *version, *arch;
	int64_t protocol;
	const cJSON *caps;
	size_t ncaps;
	if (json_get_string(body, NULL, "instance_id", AGENT_INSTANCE_MAX, &instance, &err) < 0 ||
	    json_get_string_opt(body, NULL, "hostname", 255, "", &hostname, &err) < 0 ||
	    json_get_string_opt(body, NULL, "fleet", 40, "default", &fleet, &err) < 0 ||
	    json_get_string_opt(body, NULL, "version", 64, "", &version, &err) < 0 ||
	    json_get_string_opt(body, NULL, "arch", 32, "", &arch, &err) < 0 ||
	    json_get_int_opt(body, NULL, "protocol", 0, 1000000, 1, &protocol, &err) < 0 ||
	    json_get_array_opt(body, NULL, "capabilities", 32, &caps, &ncaps, &err) < 0) {
		cJSON_Delete(body);
		server_respond_error(r, 400, "bad_request", "%s", err.msg);
		return;
	}
	if (protocol != 1) {
		cJSON_Delete(body);
		server_respond_error(r, 400, "protocol_unsupported",
				     "this coordinator speaks protocol 1, not %lld",
				     (long long)protocol);
		return;
	}
	const char *bad = !instance_id_ok(instance)   ? "instance_id: 1..128 of [A-Za-z0-9._:-]"
			  : !server_valid_name(fleet) ? "fleet: [a-z][a-z0-9-]{0,39}"
			  : !printable(hostname) || !printable(version) || !printable(arch)
			      ? "hostname, version and arch: printable text"
			      : NULL;
	if (bad) {
		cJSON_Delete(body);
		server_respond_error(r, 400, "bad_request", "%s", bad);
		return;
	}
	struct reg *g = calloc(1, sizeof *g);
	if (!g) {
		cJSON_Delete(body);
		server_respond_error(r, 503, "unavailable", "out of memory");
		return;
	}
	g->a = a;
	g->r = r;
	snprintf(g->instance_id, sizeof g->instance_id, "%s", instance);
	snprintf(g->hostname, sizeof g->hostname, "%s", hostname);
	snprintf(g->fleet, sizeof g->fleet, "%s", fleet);
	snprintf(g->version, sizeof g->version, "%s", version);
	snprintf(g->arch, sizeof g->arch, "%s", arch);
	g->protocol = (int)protocol;
	g->now = clock_wall_ms();
	/* Who is asking: the bootstrap token (server.c checked it before the body),
	 * or an AWS identity proof, checked with STS now. */
	const cJSON *proof = cJSON_GetObjectItemCaseSensitive(body, "aws_identity");
	const char *bearer = auth_bearer(httpd_req_header(r->http, "Authorization"));
	if (proof && !cJSON_IsNull(proof)) {
		if (!a->sts) {
			cJSON_Delete(body);
			free(g);
			server_respond_error(r, 400, "bad_request", "aws_identity: this coordinator "
					     "does not take AWS identities (agents.aws_accounts)");
			return;
		}
		g->verifying = sts_verifier_start(a->sts, proof, g->instance_id, identity_checked,
						  g, &err);
		cJSON_Delete(body);
		if (!g->verifying) {
			log_warn("agents.identity_refused", "instance=%s reason=\"%s\"", g->instance_id,
				 err.msg);
			free(g);
			server_respond_error(r, 401, "unauthorized", "%s", err.msg);
			return;
		}
		server_on_abort(r, reg_abort, g);
		return;
	}
	cJSON_Delete(body);
	if (!bearer) {
		free(g);
		server_respond_error(r, 401, "unauthorized", "the bootstrap token or an aws_identity "
				     "is required");
		return;
	}
	register_commit(g);
}

/* ---- heartbeat, inventory, desired state ---- */

struct report {
	struct agents *a;
	struct server_req *r;
	char agent[AGENT_ID_MAX + 1];
	int64_t now;
	cJSON *apps;        /* heartbeat: what the agent runs (owned) */
	char *inventory;    /* inventory: the containers array as text (owned) */
	cJSON *answer;      /* desired: filled by the operation */
	char fleet[48];
};

static void report_free(struct report *p)
{
	cJSON_Delete(p->apps);
	cJSON_Delete(p->answer);
	free(p->inventory);
	free(p);
}

static void report_abort(struct server_req *r, void *arg)
{
	(void)r;
	((struct report *)arg)->r = NULL;
}

static int heartbeat_tx(struct store_tx *tx, void *arg)
{
	struct report *p = arg;
	sqlite3_stmt *st = store_stmt(tx, "UPDATE agents SET last_seen_ms = ? WHERE id = ?");
	if (!st)
		return -1;
	sqlite3_bind_int64(st, 1, p->now);
	sqlite3_bind_text(st, 2, p->agent, -1, SQLITE_STATIC);
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	const cJSON *e;
	cJSON_ArrayForEach(e, p->apps)
	{
		const cJSON *app = cJSON_GetObjectItemCaseSensitive(e, "app");
		const cJSON *gen = cJSON_GetObjectItemCaseSensitive(e, "generation");
		const cJSON *rel = cJSON_GetObjectItemCaseSensitive(e, "release");
		const cJSON *state = cJSON_GetObjectItemCaseSensitive(e, "state");
		if (!cJSON_IsString(app) || !cJSON_IsNumber(gen) ||
		    (cJSON_IsString(state) && strcmp(state->valuestring, "running") != 0))
			continue;
		st = store_stmt(tx, "INSERT INTO agent_apps(agent, app, generation, release, "
				    "applied_generation, state, updated_ms) "
				    "SELECT ?1, name, ?2, ?3, ?2, 'converged', ?4 FROM apps WHERE name = ?5 "
				    "ON CONFLICT(agent, app) DO UPDATE SET applied_generation = "
				    "max(applied_generation, excluded.applied_generation), "
				    "state = CASE WHEN generation <= excluded.applied_generation "
				    "THEN 'converged' ELSE state END, updated_ms = excluded.updated_ms");
		if (!st)
			return -1;
		sqlite3_bind_text(st, 1, p->agent, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, (int64_t)gen->valuedouble);
		if (cJSON_IsString(rel))
			sqlite3_bind_text(st, 3, rel->valuestring, -1, SQLITE_STATIC);
		else
			sqlite3_bind_null(st, 3);
		sqlite3_bind_int64(st, 4, p->now);
		sqlite3_bind_text(st, 5, app->valuestring, -1, SQLITE_STATIC);
		if (store_step(tx, st) != SQLITE_DONE)
			return -1;
	}
	return 0;
}

static void heartbeat_done(int rc, void *arg)
{
	struct report *p = arg;
	struct agent *ag = agents_find(p->a, p->agent);
	if (rc == 0 && ag && ag->persisted_seen_ms < p->now)
		ag->persisted_seen_ms = p->now;
	if (p->r) {
		server_on_abort(p->r, NULL, NULL);
		if (rc < 0) {
			if (ag) /* try the apps again next time */
				memset(ag->apps_digest, 0, sizeof ag->apps_digest);
			server_respond_error(p->r, 503, "unavailable", "the store is busy; retry");
		} else {
			cJSON *b = cJSON_CreateObject();
			cJSON_AddNumberToObject(b, "server_time_ms", (double)clock_wall_ms());
			server_respond_json_take(p->r, 200, b);
		}
	}
	report_free(p);
}

static void heartbeat(struct server_req *r, void *arg)
{
	struct agents *a = arg;
	struct agent *ag = agents_find(a, r->who.agent_id);
	cJSON *body = server_json_body(r);
	if (!body)
		return;
	struct err err;
	int64_t uptime;
	bool draining;
	const cJSON *apps;
	size_t napps;
	if (json_get_int_opt(body, NULL, "uptime_s", 0, JSON_INT_LIMIT, 0, &uptime, &err) < 0 ||
	    json_get_bool_opt(body, NULL, "draining", false, &draining, &err) < 0 ||
	    json_get_array_opt(body, NULL, "apps", HEARTBEAT_APPS_MAX, &apps, &napps, &err) < 0) {
		cJSON_Delete(body);
		server_respond_error(r, 400, "bad_request", "%s", err.msg);
		return;
	}
	size_t i = 0;
	const cJSON *e;
	cJSON_ArrayForEach(e, apps)
	{
		char path[JSON_PATH_MAX];
		json_path_index(path, sizeof path, "apps", i++);
		const char *app, *state, *rel;
		int64_t gen;
		if (json_get_string(e, path, "app", 40, &app, &err) < 0 ||
		    json_get_int(e, path, "generation", 0, JSON_INT_LIMIT, &gen, &err) < 0 ||
		    json_get_string_opt(e, path, "release", 64, NULL, &rel, &err) < 0 ||
		    json_get_string_opt(e, path, "state", 32, "running", &state, &err) < 0) {
			cJSON_Delete(body);
			server_respond_error(r, 400, "bad_request", "%s", err.msg);
			return;
		}
	}
	agents_seen(a, ag);
	cJSON *answer = cJSON_CreateObject();
	cJSON_AddNumberToObject(answer, "server_time_ms", (double)clock_wall_ms());
	if (!ag->transition && draining && ag->state == AGENT_LIVE) {
		cJSON_Delete(body);
		transition_start(a, ag, T_DRAIN, r, answer);
		return;
	}
	if (!ag->transition && !draining && ag->state == AGENT_DRAINING) {
		cJSON_Delete(body);
		transition_start(a, ag, T_UNDRAIN, r, answer);
		return;
	}
	/* Write only what changed: the apps report, or a stale last_seen. */
	uint8_t digest[CRYPTO_SHA256_LEN] = {0};
	char *text = apps ? cJSON_PrintUnformatted(apps) : NULL;
	if (text) {
		crypto_sha256(text, strlen(text), digest);
		free(text);
	}
	int apps_changed = apps && memcmp(digest, ag->apps_digest, sizeof digest) != 0;
	int64_t now = clock_wall_ms();
	if (!apps_changed && now - ag->persisted_seen_ms < PERSIST_SEEN_EVERY_MS) {
		cJSON_Delete(body);
		server_respond_json_take(r, 200, answer);
		return;
	}
	cJSON_Delete(answer);
	struct report *p = calloc(1, sizeof *p);
	if (!p) {
		cJSON_Delete(body);
		server_respond_error(r, 503, "unavailable", "out of memory");
		return;
	}
	p->a = a;
	p->r = r;
	p->now = now;
	snprintf(p->agent, sizeof p->agent, "%s", ag->id);
	p->apps = apps_changed ? cJSON_DetachItemFromObjectCaseSensitive(body, "apps") : NULL;
	cJSON_Delete(body);
	if (store_submit(a->c->store, heartbeat_tx, heartbeat_done, p) < 0) {
		report_free(p);
		server_respond_error(r, 503, "unavailable", "the store is busy; retry");
		return;
	}
	if (apps_changed)
		memcpy(ag->apps_digest, digest, sizeof digest);
	server_on_abort(r, report_abort, p);
}

static int inventory_tx(struct store_tx *tx, void *arg)
{
	struct report *p = arg;
	sqlite3_stmt *st = store_stmt(tx, "UPDATE agents SET inventory = ?, inventory_ms = ?, "
					  "last_seen_ms = max(last_seen_ms, ?) WHERE id = ?");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, p->inventory, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, p->now);
	sqlite3_bind_int64(st, 3, p->now);
	sqlite3_bind_text(st, 4, p->agent, -1, SQLITE_STATIC);
	return store_step(tx, st) == SQLITE_DONE ? 0 : -1;
}

static void simple_done(int rc, void *arg)
{
	struct report *p = arg;
	if (p->r) {
		server_on_abort(p->r, NULL, NULL);
		if (rc < 0)
			server_respond_error(p->r, 503, "unavailable", "the store is busy; retry");
		else if (p->answer)
			server_respond_json(p->r, 200, p->answer);
		else
			server_respond(p->r, 200, "application/json", "{}", 2);
	}
	report_free(p);
}

static void inventory(struct server_req *r, void *arg)
{
	struct agents *a = arg;
	struct agent *ag = agents_find(a, r->who.agent_id);
	agents_seen(a, ag);
	cJSON *body = server_json_body(r);
	if (!body)
		return;
	struct err err;
	const cJSON *containers;
	size_t n;
	if (json_get_array(body, NULL, "containers", INVENTORY_MAX_CONTAINERS, &containers, &n,
			   &err) < 0) {
		cJSON_Delete(body);
		server_respond_error(r, 400, "bad_request", "%s", err.msg);
		return;
	}
	const cJSON *e;
	size_t i = 0;
	cJSON_ArrayForEach(e, containers)
	{
		if (!cJSON_IsObject(e)) {
			cJSON_Delete(body);
			server_respond_error(r, 400, "bad_request", "containers[%zu]: expected an object",
					     i);
			return;
		}
		i++;
	}
	struct report *p = calloc(1, sizeof *p);
	char *text = p ? cJSON_PrintUnformatted(containers) : NULL;
	cJSON_Delete(body);
	if (!text) {
		free(p);
		server_respond_error(r, 503, "unavailable", "out of memory");
		return;
	}
	p->a = a;
	p->r = r;
	p->now = clock_wall_ms();
	p->inventory = text;
	snprintf(p->agent, sizeof p->agent, "%s", ag->id);
	if (store_submit(a->c->store, inventory_tx, simple_done, p) < 0) {
		report_free(p);
		server_respond_error(r, 503, "unavailable", "the store is busy; retry");
		return;
	}
	server_on_abort(r, report_abort, p);
}

static int desired_tx(struct store_tx *tx, void *arg)
{
	struct report *p = arg;
	sqlite3_stmt *st = store_stmt(tx, "SELECT name, generation, release FROM apps WHERE "
					  "fleet = ? AND release IS NOT NULL ORDER BY name");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, p->fleet, -1, SQLITE_STATIC);
	p->answer = cJSON_CreateObject();
	cJSON *arr = cJSON_AddArrayToObject(p->answer, "apps");
	if (!arr)
		return err_set(&tx->err, "out of memory");
	int rc;
	while ((rc = store_step(tx, st)) == SQLITE_ROW) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "app", store_col_text(st, 0));
		cJSON_AddNumberToObject(o, "generation", (double)sqlite3_column_int64(st, 1));
		cJSON_AddStringToObject(o, "release", store_col_text(st, 2));
		cJSON_AddItemToArray(arr, o);
	}
	return rc == SQLITE_DONE ? 0 : -1;
}

static void desired(struct server_req *r, void *arg)
{
	struct agents *a = arg;
	struct agent *ag = agents_find(a, r->who.agent_id);
	agents_seen(a, ag);
	struct report *p = calloc(1, sizeof *p);
	if (!p) {
		server_respond_error(r, 503, "unavailable", "out of memory");
		return;
	}
	p->a = a;
	p->r = r;
	snprintf(p->agent, sizeof p->agent, "%s", ag->id);
	snprintf(p->fleet, sizeof p->fleet, "%s", ag->fleet);
	if (store_submit(a->c->store, desired_tx, simple_done, p) < 0) {
		report_free(p);
		server_respond_error(r, 503, "unavailable", "the store is busy; retry");
		return;
	}
	server_on_abort(r, report_abort, p);
}

int agents_register_routes(struct agents *a, struct server *srv)
{
	struct server_route routes[] = {
		{.method = "POST", .pattern = "/v1/agents/register", .auth = SERVER_AUTH_BOOTSTRAP,
		 .fn = register_agent, .arg = a},
		{.method = "POST", .pattern = "/v1/agents/{agent_id}/heartbeat",
		 .auth = SERVER_AUTH_AGENT, .fn = heartbeat, .arg = a},
		{.method = "PUT", .pattern = "/v1/agents/{agent_id}/inventory",
		 .auth = SERVER_AUTH_AGENT, .fn = inventory, .arg = a},
		{.method = "GET", .pattern = "/v1/agents/{agent_id}/desired",
		 .auth = SERVER_AUTH_AGENT, .body = SERVER_BODY_NONE, .fn = desired, .arg = a},
	};
	for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
		if (server_add_route_ex(srv, &routes[i]) < 0)
			return -1;
	return 0;
}
