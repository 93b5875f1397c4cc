/*
 * secrets: sealing bound to its cell, the master key file (created 0600,
 * refused when others may read it), the canary, rotation re-sealing every
 * cell, and the repair of a rotation interrupted after its commit.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sys/stat.h>

#include "coord_fixture.h"
#include "secrets.h"

static int setup(void **state)
{
	static struct fx f;
	fx_init(&f, NULL, 0);
	fx_app(&f, "web", "all");
	*state = &f;
	return 0;
}

static int teardown(void **state)
{
	fx_free(*state);
	return 0;
}

static void seal_open(void **state)
{
	(void)state;
	uint8_t k1[CRYPTO_KEY_LEN], k2[CRYPTO_KEY_LEN];
	crypto_random(k1, sizeof k1);
	crypto_random(k2, sizeof k2);
	struct buf sealed, plain;
	buf_init(&sealed, 4096);
	buf_init(&plain, 4096);
	assert_int_equal(secrets_seal(k1, "apps", "web", "environment", "{\"A\":\"1\"}", 9, &sealed),
			 0);
	assert_int_equal(sealed.len, 9 + CRYPTO_SEAL_OVERHEAD);
	struct err err;
	assert_int_equal(secrets_open(k1, "apps", "web", "environment", sealed.data, sealed.len,
				      &plain, &err),
			 0);
	assert_string_equal(plain.data, "{\"A\":\"1\"}");
	buf_reset(&plain);
	assert_int_equal(secrets_open(k1, "apps", "api", "environment", sealed.data, sealed.len,
				      &plain, &err),
			 -1);
	assert_int_equal(secrets_open(k1, "apps", "web", "hook_token", sealed.data, sealed.len,
				      &plain, &err),
			 -1);
	assert_int_equal(secrets_open(k2, "apps", "web", "environment", sealed.data, sealed.len,
				      &plain, &err),
			 -1);
	assert_non_null(strstr(err.msg, "does not open"));
	sealed.data[sealed.len - 1] ^= 1;
	assert_int_equal(secrets_open(k1, "apps", "web", "environment", sealed.data, sealed.len,
				      &plain, &err),
			 -1);
	buf_free(&sealed);
	buf_free(&plain);
}

static struct config *conf(const char *dir, const char *extra)
{
	char text[1024];
	snprintf(text, sizeof text, "data.dir = %s\nagents.bootstrap_token = x12345678\n%s", dir,
		 extra ? extra : "");
	struct err err;
	struct config *cfg = config_load_buffer(coord_settings, coord_settings_count, text,
						strlen(text), "t.conf", NULL, &err);
	if (!cfg)
		fail_msg("config: %s", err.msg);
	return cfg;
}

static void master_key_file(void **state)
{
	struct fx *f = *state;
	struct config *cfg = conf(f->dir, NULL);
	uint8_t k1[CRYPTO_KEY_LEN], k2[CRYPTO_KEY_LEN];
	char path[512];
	struct err err;
	assert_int_equal(secrets_load_master(cfg, k1, path, sizeof path, &err), 0);
	struct stat sb;
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600);
	assert_int_equal(sb.st_size, 65);
	assert_int_equal(secrets_load_master(cfg, k2, path, sizeof path, &err), 0);
	assert_memory_equal(k1, k2, sizeof k1);
	chmod(path, 0644);
	assert_int_equal(secrets_load_master(cfg, k2, path, sizeof path, &err), -1);
	assert_non_null(strstr(err.msg, "chmod 600"));
	config_free(cfg);
	cfg = conf(f->dir, "secrets.master_key = "
			   "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n");
	assert_int_equal(secrets_load_master(cfg, k2, path, sizeof path, &err), 0);
	assert_string_equal(path, "");
	assert_int_equal(k2[31], 0x1f);
	config_free(cfg);
	cfg = conf(f->dir, "secrets.master_key = 0001\n");
	assert_int_equal(secrets_load_master(cfg, k2, path, sizeof path, &err), -1);
	config_free(cfg);
}

struct spec_q {
	struct coord *c;
	const char *id;
	cJSON *spec;
};

static int spec_q_tx(struct store_tx *tx, void *arg)
{
	struct spec_q *q = arg;
	q->spec = releases_spec_tx(tx, q->c->master_key, q->id);
	return q->spec ? 0 : -1;
}

static void on_done(int rc, const char *release, const char *error, void *arg)
{
	(void)error;
	assert_int_equal(rc, 0);
	snprintf(arg, 72, "%s", release);
}

static void rotation(void **state)
{
	struct fx *f = *state;
	struct config *cfg = conf(f->dir, NULL);
	char path[512];
	struct err err;
	assert_int_equal(secrets_load_master(cfg, f->c.master_key, path, sizeof path, &err), 0);
	assert_int_equal(secrets_check_canary(f->c.store, f->c.master_key, path, &err), 0);
	char r1[72], r2[72];
	fx_release(f, "web", "reg/web:v1", NULL, r1, sizeof r1);
	cJSON *set = cJSON_Parse("{\"PASSWORD\":\"p4ss\"}");
	assert_int_equal(releases_env_change(&f->c, "web", set, NULL, 0, "t", on_done, r2), 0);
	cJSON_Delete(set);
	fx_drain(f);
	fx_exec(f, "UPDATE apps SET hook_token = (SELECT environment FROM apps WHERE name = 'web')");
	uint8_t old[CRYPTO_KEY_LEN];
	memcpy(old, f->c.master_key, sizeof old);
	size_t n = 0;
	/* a cell that does not open: rotation refuses and changes nothing */
	assert_int_equal(secrets_rotate(f->c.store, old, path, NULL, &n, &err), -1);
	assert_non_null(strstr(err.msg, "hook_token"));
	char new_path[600];
	snprintf(new_path, sizeof new_path, "%s.new", path);
	assert_int_equal(access(new_path, F_OK), -1);
	fx_exec(f, "UPDATE apps SET hook_token = NULL");
	assert_int_equal(secrets_rotate(f->c.store, old, path, NULL, &n, &err), 0);
	assert_int_equal(n, 2); /* apps.environment and r2's environment */
	uint8_t now[CRYPTO_KEY_LEN];
	assert_int_equal(secrets_load_master(cfg, now, path, sizeof path, &err), 0);
	assert_memory_not_equal(now, old, sizeof now);
	/* the old key no longer opens the store; the new one does */
	assert_int_equal(secrets_check_canary(f->c.store, old, "", &err), -1);
	assert_int_equal(secrets_check_canary(f->c.store, now, path, &err), 0);
	memcpy(f->c.master_key, now, sizeof now);
	struct spec_q q = {.c = &f->c, .id = r2};
	assert_int_equal(store_run(f->c.store, spec_q_tx, &q, &err), 0);
	cJSON *svc = cJSON_GetArrayItem(cJSON_GetObjectItem(q.spec, "services"), 0);
	assert_string_equal(fx_str(cJSON_GetObjectItem(svc, "environment"), "PASSWORD"), "p4ss");
	cJSON_Delete(q.spec);
	/* A rotation that committed but died before renaming its key file: the
	 * next start finds the .new key opens the canary and finishes the job. */
	assert_int_equal(rename(path, new_path), 0);
	FILE *fp = fopen(path, "w");
	char hex[65];
	crypto_hex(old, sizeof old, hex);
	fprintf(fp, "%s\n", hex);
	fclose(fp);
	chmod(path, 0600);
	uint8_t k[CRYPTO_KEY_LEN];
	assert_int_equal(secrets_load_master(cfg, k, path, sizeof path, &err), 0);
	assert_memory_equal(k, old, sizeof k);
	assert_int_equal(secrets_check_canary(f->c.store, k, path, &err), 0);
	assert_memory_equal(k, now, sizeof k);
	assert_int_equal(access(new_path, F_OK), -1);
	assert_int_equal(secrets_load_master(cfg, k, path, sizeof path, &err), 0);
	assert_memory_equal(k, now, sizeof k);
	config_free(cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(seal_open),
		cmocka_unit_test_setup_teardown(master_key_file, setup, teardown),
		cmocka_unit_test_setup_teardown(rotation, setup, teardown),
	};
	return cmocka_run_group_tests_name("secrets", tests, NULL, NULL);
}
