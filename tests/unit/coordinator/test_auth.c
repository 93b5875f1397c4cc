/*
 * auth: role names and order, bearer parsing, token shapes, lookup by hash
 * with the constant-time compare, the key cache, store lookups of keys made
 * behind the daemon's back, revocation, the negative cache.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "coord_fixture.h"

static int setup(void **state)
{
	static struct fx f;
	fx_init(&f, NULL, 0);
	*state = &f;
	return 0;
}

static int teardown(void **state)
{
	fx_free(*state);
	return 0;
}

static void roles(void **state)
{
	(void)state;
	enum auth_role r;
	assert_int_equal(auth_role_parse("admin", &r), 0);
	assert_int_equal(r, AUTH_ROLE_ADMIN);
	assert_int_equal(auth_role_parse("deploy", &r), 0);
	assert_int_equal(r, AUTH_ROLE_DEPLOY);
	assert_int_equal(auth_role_parse("read", &r), 0);
	assert_int_equal(r, AUTH_ROLE_READ);
	assert_int_equal(auth_role_parse("Admin", &r), -1);
	assert_int_equal(auth_role_parse("", &r), -1);
	assert_int_equal(auth_role_parse(NULL, &r), -1);
	assert_true(AUTH_ROLE_ADMIN > AUTH_ROLE_DEPLOY && AUTH_ROLE_DEPLOY > AUTH_ROLE_READ &&
		    AUTH_ROLE_READ > AUTH_ROLE_NONE);
	assert_string_equal(auth_role_name(AUTH_ROLE_DEPLOY), "deploy");
}

static void bearer(void **state)
{
	(void)state;
	assert_string_equal(auth_bearer("Bearer abc"), "abc");
	assert_string_equal(auth_bearer("bearer   abc"), "abc");
	assert_null(auth_bearer("Basic abc"));
	assert_null(auth_bearer("Bearer"));
	assert_null(auth_bearer("Bearer "));
	assert_null(auth_bearer("Bearerabc"));
	assert_null(auth_bearer("Bearer a b"));
	assert_null(auth_bearer(NULL));
	char big[AUTH_TOKEN_MAX + 16];
	memcpy(big, "Bearer ", 7);
	memset(big + 7, 'a', AUTH_TOKEN_MAX + 1);
	big[7 + AUTH_TOKEN_MAX + 1] = '\0';
	assert_null(auth_bearer(big));
}

static void tokens(void **state)
{
	(void)state;
	char k1[AUTH_API_KEY_LEN + 1], k2[AUTH_API_KEY_LEN + 1], t[AUTH_AGENT_TOKEN_LEN + 1];
	assert_int_equal(auth_new_api_key(k1, sizeof k1), 0);
	assert_int_equal(auth_new_api_key(k2, sizeof k2), 0);
	assert_int_equal(strlen(k1), AUTH_API_KEY_LEN);
	assert_int_equal(strncmp(k1, "slw_", 4), 0);
	assert_string_not_equal(k1, k2);
	assert_int_equal(auth_new_api_key(k1, 10), -1);
	assert_int_equal(auth_new_agent_token(t, sizeof t), 0);
	assert_int_equal(strlen(t), 96);
	for (size_t i = 0; i < 96; i++)
		assert_true(strchr("0123456789abcdef", t[i]) != NULL);
	uint8_t h[CRYPTO_SHA256_LEN];
	auth_token_hash(t, h);
	assert_true(auth_token_matches(t, h));
	/* One flipped character, a prefix, the hash itself: all refused. */
	char other[sizeof t];
	strcpy(other, t);
	other[95] = other[95] == 'a' ? 'b' : 'a';
	assert_false(auth_token_matches(other, h));
	other[95] = '\0';
	assert_false(auth_token_matches(other, h));
	char hexhash[65];
	crypto_hex(h, sizeof h, hexhash);
	assert_false(auth_token_matches(hexhash, h));
	/* SHA-256("abc"), FIPS 180-2 appendix B.1 */
	auth_token_hash("abc", h);
	crypto_hex(h, sizeof h, hexhash);
	assert_string_equal(hexhash,
			    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	char id[40];
	assert_int_equal(auth_new_id(id, sizeof id, "r_"), 0);
	assert_int_equal(strlen(id), 14);
	assert_int_equal(auth_new_id(id, 8, "r_"), -1);
}

struct mk {
	const char *name;
	enum auth_role role;
	const char *app;
	char id[40];
	char key[AUTH_API_KEY_LEN + 1];
};

static int mk_tx(struct store_tx *tx, void *arg)
{
	struct mk *m = arg;
	return auth_key_create_tx(tx, m->name, m->role, m->app, m->id, m->key);
}

static int revoke_tx(struct store_tx *tx, void *arg)
{
	return auth_key_revoke_tx(tx, arg);
}

struct found {
	int done;
	int found;
	struct auth_principal who;
};

static void found_cb(int found, const struct auth_principal *who, void *arg)
{
	struct found *r = arg;
	r->done = 1;
	r->found = found;
	if (who)
		r->who = *who;
}

static int store_lookup(struct fx *f, const char *token, struct auth_principal *who)
{
	struct found r = {0};
	assert_int_equal(auth_lookup_store(f->c.auth, token, found_cb, &r), 0);
	while (!r.done)
		ev_run(f->loop, EVRUN_ONCE);
	if (who)
		*who = r.who;
	return r.found;
}

static void cache_and_store(void **state)
{
	struct fx *f = *state;
	struct auth_principal who;
	/* The fixture's admin key was loaded at start. */
	assert_int_equal(auth_lookup_cached(f->c.auth, f->admin_key, &who), 1);
	assert_int_equal(who.role, AUTH_ROLE_ADMIN);
	assert_string_equal(who.key_name, "admin");
	assert_string_equal(who.app, "");
	/* Only the hash is stored. */
	assert_int_equal(fx_int(f, "SELECT count(*) FROM api_keys WHERE instr(CAST(key_hash AS TEXT),"
				   " '%s') > 0 OR name = '%s'",
				f->admin_key, f->admin_key),
			 0);
	/* A key made behind the cache's back (the offline command). */
	struct mk m = {.name = "ci", .role = AUTH_ROLE_DEPLOY, .app = "web"};
	struct err err;
	assert_int_equal(store_run(f->c.store, mk_tx, &m, &err), 0);
	assert_int_equal(auth_lookup_cached(f->c.auth, m.key, &who), 0);
	assert_int_equal(store_lookup(f, m.key, &who), 1);
	assert_int_equal(who.role, AUTH_ROLE_DEPLOY);
	assert_string_equal(who.app, "web");
	assert_string_equal(who.key_id, m.id);
	assert_true(fx_int(f, "SELECT last_used_ms FROM api_keys WHERE id = '%s'", m.id) > 0);
	/* Now cached. */
	memset(&who, 0, sizeof who);
	assert_int_equal(auth_lookup_cached(f->c.auth, m.key, &who), 1);
	assert_string_equal(who.key_name, "ci");
	/* A wrong key: the store says no, and the cache remembers that. */
	char wrong[sizeof m.key];
	strcpy(wrong, m.key);
	wrong[10] = wrong[10] == '0' ? '1' : '0';
	assert_int_equal(auth_lookup_cached(f->c.auth, wrong, &who), 0);
	assert_int_equal(store_lookup(f, wrong, NULL), 0);
	assert_int_equal(auth_lookup_cached(f->c.auth, wrong, &who), -1);
	/* Revoked: gone from cache and store. */
	assert_int_equal(store_run(f->c.store, revoke_tx, m.id, &err), 0);
	auth_forget(f->c.auth, m.id);
	assert_int_equal(auth_lookup_cached(f->c.auth, m.key, &who), -1);
	assert_int_equal(store_lookup(f, m.key, NULL), 0);
	assert_int_equal(store_run(f->c.store, revoke_tx, "k_nope", &err), -1);
	assert_string_equal(err.msg, "not found");
	/* Bad input to create. */
	struct mk bad = {.name = "", .role = AUTH_ROLE_READ};
	assert_int_equal(store_run(f->c.store, mk_tx, &bad, &err), -1);
	struct mk norole = {.name = "x", .role = AUTH_ROLE_NONE};
	assert_int_equal(store_run(f->c.store, mk_tx, &norole, &err), -1);
}

static void many_keys_lookup_finds_the_right_one(void **state)
{
	struct fx *f = *state;
	struct mk keys[20];
	struct err err;
	for (int i = 0; i < 20; i++) {
		char name[16];
		snprintf(name, sizeof name, "k%d", i);
		keys[i] = (struct mk){.name = strdup(name), .role = (enum auth_role)(1 + i % 3)};
		assert_int_equal(store_run(f->c.store, mk_tx, &keys[i], &err), 0);
	}
	auth_free(f->c.auth);
	f->c.auth = auth_new(&f->c);
	assert_int_equal(auth_load(f->c.auth, &err), 0);
	for (int i = 0; i < 20; i++) {
		struct auth_principal who;
		assert_int_equal(auth_lookup_cached(f->c.auth, keys[i].key, &who), 1);
		assert_string_equal(who.key_id, keys[i].id);
		assert_int_equal(who.role, keys[i].role);
		free((char *)keys[i].name);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(roles),
		cmocka_unit_test(bearer),
		cmocka_unit_test(tokens),
		cmocka_unit_test_setup_teardown(cache_and_store, setup, teardown),
		cmocka_unit_test_setup_teardown(many_keys_lookup_finds_the_right_one, setup, teardown),
	};
	return cmocka_run_group_tests_name("auth", tests, NULL, NULL);
}
