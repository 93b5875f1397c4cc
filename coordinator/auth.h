/*
 * auth: API keys (CLI, CI) and the token primitives agent tokens share.
 *
 * Tokens are high-entropy random strings shown once: API keys are
 * "slw_" + 64 hex digits (32 random bytes), agent tokens 96 hex digits (48
 * bytes, docs/protocol.md). The store keeps only their SHA-256. A presented
 * token is hashed and looked up by hash; the candidate's hash is then compared
 * with crypto_equal (constant time), so neither the lookup nor the compare
 * leaks how much of a guess was right.
 *
 * API keys have a role, admin > deploy > read (read: list and inspect; deploy:
 * builds, releases, env, scale; admin: apps, keys and agents), and optionally an
 * app scope: a scoped key only reaches routes of its app.
 *
 * The module keeps every live key in memory (a few dozen at most), loaded from
 * the store at start-up; a token missing from the cache is looked up in the
 * store once (a key made by `slipway-coordinator apikey create` while the
 * daemon runs), and unknown hashes are remembered briefly so a client retrying
 * a bad key costs no store query.
 *
 * Ownership: struct auth is the caller's (auth_free). Threads: auth_new,
 * auth_free, lookups on the loop thread; auth_key_create_tx and auth_load_tx
 * inside store operations; the pure helpers anywhere. Nothing blocks except
 * auth_load (start-up).
 */
#ifndef SLIPWAY_COORD_AUTH_H
#define SLIPWAY_COORD_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "err.h"

struct coord;
struct store_tx;
struct auth;

enum auth_role {
	AUTH_ROLE_NONE = 0,
	AUTH_ROLE_READ = 1,
	AUTH_ROLE_DEPLOY = 2,
	AUTH_ROLE_ADMIN = 3,
};

/* Who made a request, once authenticated. */
struct auth_principal {
	enum auth_role role;   /* API keys; AUTH_ROLE_NONE for agents and webhooks */
	char key_id[40];       /* API key id ("k_..."), "" otherwise */
	char key_name[64];     /* API key name, for events ("alice", "gitlab-ci") */
	char app[48];          /* the key's app scope, "" when unscoped */
	char agent_id[72];     /* agent routes: the authenticated agent */
};

#define AUTH_API_KEY_PREFIX "slw_"
#define AUTH_API_KEY_BYTES 32
#define AUTH_API_KEY_LEN (4 + 2 * AUTH_API_KEY_BYTES)
#define AUTH_AGENT_TOKEN_BYTES 48
#define AUTH_AGENT_TOKEN_LEN (2 * AUTH_AGENT_TOKEN_BYTES)
#define AUTH_TOKEN_MAX 256 /* longer bearer tokens are refused unhashed */

/* "admin" / "deploy" / "read" <-> enum; parse -1 on anything else. */
int auth_role_parse(const char *s, enum auth_role *out);
const char *auth_role_name(enum auth_role role);

/* SHA-256 of a token, the form the store keeps. */
void auth_token_hash(const char *token, uint8_t out[CRYPTO_SHA256_LEN]);

/* The token of "Authorization: Bearer <token>" (scheme case-insensitive), or
 * NULL when the header is missing, another scheme, empty or over
 * AUTH_TOKEN_MAX. Points into header. */
const char *auth_bearer(const char *header);

/* A new random API key / agent token into out (cap >= AUTH_*_LEN + 1). */
int auth_new_api_key(char *out, size_t cap);
int auth_new_agent_token(char *out, size_t cap);

/* A random id: prefix + 12 hex digits ("r_3f9a1c2b7d0e"); -1 when it does not fit. */
int auth_new_id(char *out, size_t cap, const char *prefix);

/* 1 when presented hashes to want (constant time in the compare). */
int auth_token_matches(const char *presented, const uint8_t want[CRYPTO_SHA256_LEN]);

/* ---- the key cache ---- */

struct auth *auth_new(struct coord *c);
void auth_free(struct auth *a);

/* Loads every unrevoked key (start-up, blocks on the store). */
int auth_load(struct auth *a, struct err *err);

/* Cache lookup: 1 found (who filled), 0 unknown to the cache (ask the store),
 * -1 known bad (revoked or recently failed). */
int auth_lookup_cached(struct auth *a, const char *token, struct auth_principal *who);

/* Store lookup for a token the cache does not know: done(found, who, arg) on
 * the loop thread (found 1 with who filled, 0 not found, -1 store error). -1
 * when the store queue is full (done not called). */
typedef void (*auth_lookup_done_fn)(int found, const struct auth_principal *who, void *arg);
int auth_lookup_store(struct auth *a, const char *token, auth_lookup_done_fn done, void *arg);

/* Creates a key inside a store operation: id into id_out (>= 40 bytes), the
 * key itself (shown once) into key_out (>= AUTH_API_KEY_LEN + 1). app NULL or ""
 * for an unscoped key. */
int auth_key_create_tx(struct store_tx *tx, const char *name, enum auth_role role,
		       const char *app, char *id_out, char *key_out);

/* Revokes a key by id inside a store operation (0 also when already revoked;
 * -1 with tx->err "not found" when unknown), and forgets it in the cache. */
int auth_key_revoke_tx(struct store_tx *tx, const char *id);
void auth_forget(struct auth *a, const char *id);

/* Adds a key to the cache (after a create committed). */
void auth_remember(struct auth *a, const struct auth_principal *who,
		   const uint8_t hash[CRYPTO_SHA256_LEN]);

#endif
