#include "auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clock.h"
#include "coord.h"
#include "log.h"
#include "store.h"

#define NEGATIVE_SLOTS 64
#define NEGATIVE_TTL_MS 30000
#define LAST_USED_EVERY_MS 60000

struct key_entry {
	uint8_t hash[CRYPTO_SHA256_LEN];
	struct auth_principal who;
	int64_t last_used_written;
	struct key_entry *next;
};

struct negative {
	uint8_t hash[CRYPTO_SHA256_LEN];
	int64_t until;
};

struct auth {
	struct coord *c;
	struct key_entry *keys;
	struct negative neg[NEGATIVE_SLOTS];
	size_t neg_next;
};

/* ---- pure helpers ---- */

int auth_role_parse(const char *s, enum auth_role *out)
{
	if (!s)
		return -1;
	if (strcmp(s, "admin") == 0)
		*out = AUTH_ROLE_ADMIN;
	else if (strcmp(s, "deploy") == 0)
		*out = AUTH_ROLE_DEPLOY;
	else if (strcmp(s, "read") == 0)
		*out = AUTH_ROLE_READ;
	else
		return -1;
	return 0;
}

const char *auth_role_name(enum auth_role role)
{
	switch (role) {
	case AUTH_ROLE_ADMIN:
		return "admin";
	case AUTH_ROLE_DEPLOY:
		return "deploy";
	case AUTH_ROLE_READ:
		return "read";
	default:
		return "none";
	}
}

void auth_token_hash(const char *token, uint8_t out[CRYPTO_SHA256_LEN])
{
	crypto_sha256(token, strlen(token), out);
}

const char *auth_bearer(const char *header)
{
	if (!header)
		return NULL;
	while (*header == ' ' || *header == '\t')
		header++;
	if (strncasecmp(header, "Bearer", 6) != 0 || (header[6] != ' ' && header[6] != '\t'))
		return NULL;
	const char *t = header + 6;
	while (*t == ' ' || *t == '\t')
		t++;
	size_t n = strlen(t);
	if (n == 0 || n > AUTH_TOKEN_MAX)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)t[i] <= 0x20 || (unsigned char)t[i] >= 0x7f)
			return NULL;
	return t;
}

int auth_new_api_key(char *out, size_t cap)
{
	if (cap < AUTH_API_KEY_LEN + 1)
		return -1;
	memcpy(out, AUTH_API_KEY_PREFIX, 4);
	return crypto_random_hex(out + 4, AUTH_API_KEY_BYTES);
}

int auth_new_agent_token(char *out, size_t cap)
{
	if (cap < AUTH_AGENT_TOKEN_LEN + 1)
		return -1;
	return crypto_random_hex(out, AUTH_AGENT_TOKEN_BYTES);
}

int auth_token_matches(const char *presented, const uint8_t want[CRYPTO_SHA256_LEN])
{
	uint8_t h[CRYPTO_SHA256_LEN];
	auth_token_hash(presented, h);
	return crypto_equal(h, sizeof h, want, CRYPTO_SHA256_LEN);
}

int auth_new_id(char *out, size_t cap, const char *prefix)
{
	char hex[2 * 6 + 1];
	if (crypto_random_hex(hex, 6) < 0)
		return -1;
	int n = snprintf(out, cap, "%s%s", prefix, hex);
	return n > 0 && (size_t)n < cap ? 0 : -1;
}

/* ---- cache ---- */

struct auth *auth_new(struct coord *c)
{
	struct auth *a = calloc(1, sizeof *a);
	if (a)
		a->c = c;
	return a;
}

void auth_free(struct auth *a)
{
	if (!a)
		return;
	while (a->keys) {
		struct key_entry *k = a->keys;
		a->keys = k->next;
		free(k);
	}
	free(a);
}

void auth_remember(struct auth *a, const struct auth_principal *who,
		   const uint8_t hash[CRYPTO_SHA256_LEN])
{
	for (struct key_entry *k = a->keys; k; k = k->next) {
		if (crypto_equal(k->hash, sizeof k->hash, hash, CRYPTO_SHA256_LEN)) {
			k->who = *who;
			return;
		}
	}
	struct key_entry *k = calloc(1, sizeof *k);
	if (!k)
		return; /* the store lookup still finds it */
	memcpy(k->hash, hash, CRYPTO_SHA256_LEN);
	k->who = *who;
	k->last_used_written = clock_wall_ms();
	k->next = a->keys;
	a->keys = k;
	/* A key that now exists must not stay in the negative cache. */
	for (size_t i = 0; i < NEGATIVE_SLOTS; i++)
		if (crypto_equal(a->neg[i].hash, CRYPTO_SHA256_LEN, hash, CRYPTO_SHA256_LEN))
			a->neg[i].until = 0;
}

void auth_forget(struct auth *a, const char *id)
{
	struct key_entry **pp = &a->keys;
	while (*pp) {
		struct key_entry *k = *pp;
		if (strcmp(k->who.key_id, id) == 0) {
			/* Remember the hash as bad so no store lookup revives it. */
			struct negative *n = &a->neg[a->neg_next++ % NEGATIVE_SLOTS];
			memcpy(n->hash, k->hash, CRYPTO_SHA256_LEN);
			n->until = clock_mono_ms() + NEGATIVE_TTL_MS;
			*pp = k->next;
			free(k);
			continue;
		}
		pp = &k->next;
	}
}

static int touch_tx(struct store_tx *tx, void *arg)
{
	char *id = arg;
	sqlite3_stmt *st = store_stmt(tx, "UPDATE api_keys SET last_used_ms = ? WHERE id = ?");
	if (!st)
		return -1;
	sqlite3_bind_int64(st, 1, clock_wall_ms());
	sqlite3_bind_text(st, 2, id, -1, SQLITE_TRANSIENT);
	return store_step(tx, st) == SQLITE_DONE ? 0 : -1;
}

static void touch_done(int rc, void *arg)
{
	(void)rc;
	free(arg);
}

static void note_used(struct auth *a, struct key_entry *k)
{
	int64_t now = clock_wall_ms();
	if (now - k->last_used_written < LAST_USED_EVERY_MS || !a->c || !a->c->store)
		return;
	k->last_used_written = now;
	char *id = strdup(k->who.key_id);
	if (id && store_submit(a->c->store, touch_tx, touch_done, id) < 0)
		free(id);
}

int auth_lookup_cached(struct auth *a, const char *token, struct auth_principal *who)
{
	uint8_t h[CRYPTO_SHA256_LEN];
	auth_token_hash(token, h);
	int found = 0;
	struct key_entry *hit = NULL;
	/* Every entry is compared, so the time does not tell which one matched. */
	for (struct key_entry *k = a->keys; k; k = k->next) {
		if (crypto_equal(k->hash, sizeof k->hash, h, sizeof h) && !found) {
			found = 1;
			hit = k;
		}
	}
	if (found) {
		*who = hit->who;
		note_used(a, hit);
		return 1;
	}
	int64_t now = clock_mono_ms();
	for (size_t i = 0; i < NEGATIVE_SLOTS; i++)
		if (a->neg[i].until > now && crypto_equal(a->neg[i].hash, sizeof h, h, sizeof h))
			return -1;
	return 0;
}

struct lookup {
	struct auth *a;
	uint8_t hash[CRYPTO_SHA256_LEN];
	int found;
	struct auth_principal who;
	auth_lookup_done_fn done;
	void *arg;
};

static void fill_principal(sqlite3_stmt *st, int col, struct auth_principal *who)
{
	memset(who, 0, sizeof *who);
	snprintf(who->key_id, sizeof who->key_id, "%s", store_col_text(st, col));
	snprintf(who->key_name, sizeof who->key_name, "%s", store_col_text(st, col + 1));
	enum auth_role role = AUTH_ROLE_NONE;
	auth_role_parse(store_col_text(st, col + 2), &role);
	who->role = role;
	snprintf(who->app, sizeof who->app, "%s", store_col_text(st, col + 3));
}

static int lookup_tx(struct store_tx *tx, void *arg)
{
	struct lookup *l = arg;
	sqlite3_stmt *st = store_stmt(tx, "SELECT id, name, role, app, key_hash FROM api_keys "
					  "WHERE key_hash = ? AND revoked_ms IS NULL");
	if (!st)
		return -1;
	sqlite3_bind_blob(st, 1, l->hash, sizeof l->hash, SQLITE_STATIC);
	int rc = store_step(tx, st);
	if (rc < 0)
		return -1;
	if (rc == SQLITE_ROW && sqlite3_column_bytes(st, 4) == CRYPTO_SHA256_LEN &&
	    crypto_equal(sqlite3_column_blob(st, 4), CRYPTO_SHA256_LEN, l->hash, sizeof l->hash)) {
		fill_principal(st, 0, &l->who);
		l->found = 1;
	}
	if (l->found) {
		sqlite3_stmt *up = store_stmt(tx, "UPDATE api_keys SET last_used_ms = ? WHERE id = ?");
		if (!up)
			return -1;
		sqlite3_bind_int64(up, 1, clock_wall_ms());
		sqlite3_bind_text(up, 2, l->who.key_id, -1, SQLITE_STATIC);
		if (store_step(tx, up) != SQLITE_DONE)
			return -1;
	}
	return 0;
}

static void lookup_done(int rc, void *arg)
{
	struct lookup *l = arg;
	int found = rc < 0 ? -1 : l->found;
	if (found == 1) {
		auth_remember(l->a, &l->who, l->hash);
	} else if (found == 0) {
		struct negative *n = &l->a->neg[l->a->neg_next++ % NEGATIVE_SLOTS];
		memcpy(n->hash, l->hash, sizeof l->hash);
		n->until = clock_mono_ms() + NEGATIVE_TTL_MS;
	}
	l->done(found, found == 1 ? &l->who : NULL, l->arg);
	free(l);
}

int auth_lookup_store(struct auth *a, const char *token, auth_lookup_done_fn done, void *arg)
{
	struct lookup *l = calloc(1, sizeof *l);
	if (!l)
		return -1;
	l->a = a;
	auth_token_hash(token, l->hash);
	l->done = done;
	l->arg = arg;
	if (store_submit(a->c->store, lookup_tx, lookup_done, l) < 0) {
		free(l);
		return -1;
	}
	return 0;
}

static int load_tx(struct store_tx *tx, void *arg)
{
	struct auth *a = arg;
	sqlite3_stmt *st = store_stmt(tx, "SELECT id, name, role, app, key_hash FROM api_keys "
					  "WHERE revoked_ms IS NULL");
	if (!st)
		return -1;
	int rc;
	while ((rc = store_step(tx, st)) == SQLITE_ROW) {
		if (sqlite3_column_bytes(st, 4) != CRYPTO_SHA256_LEN)
			continue;
		struct auth_principal who;
		fill_principal(st, 0, &who);
		auth_remember(a, &who, sqlite3_column_blob(st, 4));
	}
	return rc == SQLITE_DONE ? 0 : -1;
}

int auth_load(struct auth *a, struct err *err)
{
	return store_run(a->c->store, load_tx, a, err);
}

int auth_key_create_tx(struct store_tx *tx, const char *name, enum auth_role role,
		       const char *app, char *id_out, char *key_out)
{
	if (!name || !*name || strlen(name) > 63)
		return err_set(&tx->err, "name: 1 to 63 characters");
	if (role == AUTH_ROLE_NONE)
		return err_set(&tx->err, "role: admin, deploy or read");
	if (auth_new_id(id_out, 40, "k_") < 0 || auth_new_api_key(key_out, AUTH_API_KEY_LEN + 1) < 0)
		return err_set(&tx->err, "no randomness");
	uint8_t h[CRYPTO_SHA256_LEN];
	auth_token_hash(key_out, h);
	sqlite3_stmt *st = store_stmt(tx, "INSERT INTO api_keys(id, name, key_hash, role, app, "
					  "created_ms) VALUES (?, ?, ?, ?, ?, ?)");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, id_out, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
	sqlite3_bind_blob(st, 3, h, sizeof h, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 4, auth_role_name(role), -1, SQLITE_STATIC);
	if (app && *app)
		sqlite3_bind_text(st, 5, app, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 5);
	sqlite3_bind_int64(st, 6, clock_wall_ms());
	return store_step(tx, st) == SQLITE_DONE ? 0 : -1;
}

int auth_key_revoke_tx(struct store_tx *tx, const char *id)
{
	sqlite3_stmt *st = store_stmt(tx, "UPDATE api_keys SET revoked_ms = coalesce(revoked_ms, ?) "
					  "WHERE id = ?");
	if (!st)
		return -1;
	sqlite3_bind_int64(st, 1, clock_wall_ms());
	sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	if (sqlite3_changes(tx->db) == 0)
		return err_set(&tx->err, "not found");
	return 0;
}
