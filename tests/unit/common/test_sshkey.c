/*
 * sshkey: the RFC 5656 public key blob byte by byte, and OpenSSH itself
 * (ssh-keygen from openssh-client) as the judge of the private PEM and the
 * fingerprint.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ev.h>
#include <mbedtls/base64.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sshkey.h"
#include "worker.h"

static char tmpdir[64];

static int setup(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof tmpdir, "/tmp/slipway-sshkey-XXXXXX");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void write_file(const char *path, const char *text, mode_t mode)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(fputs(text, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
	assert_int_equal(chmod(path, mode), 0);
}

/* Runs cmd and returns its first output line (static), or NULL. */
static const char *run_line(const char *cmd)
{
	static char line[4096];
	FILE *p = popen(cmd, "r");
	if (!p)
		return NULL;
	char *got = fgets(line, sizeof line, p);
	int rc = pclose(p);
	if (!got || rc != 0)
		return NULL;
	line[strcspn(line, "\n")] = '\0';
	return line;
}

static int have_ssh_keygen(void)
{
	return access("/usr/bin/ssh-keygen", X_OK) == 0;
}

/* RFC 5656 3.1: string "ecdsa-sha2-nistp256", string "nistp256", string Q. */
static void test_public_blob_layout(void **state)
{
	(void)state;
	struct sshkey k;
	struct err err;
	assert_int_equal(sshkey_generate("slipway-web", &k, &err), 0);
	assert_non_null(k.public_line);
	assert_non_null(k.private_pem);

	char type[64], b64[512], comment[64];
	assert_int_equal(sscanf(k.public_line, "%63s %511s %63s", type, b64, comment), 3);
	assert_string_equal(type, "ecdsa-sha2-nistp256");
	assert_string_equal(comment, "slipway-web");

	uint8_t blob[256];
	size_t n = 0;
	assert_int_equal(mbedtls_base64_decode(blob, sizeof blob, &n, (const unsigned char *)b64,
					       strlen(b64)),
			 0);
	assert_int_equal(n, 4 + 19 + 4 + 8 + 4 + 65);
	assert_int_equal(get_u32(blob), 19);
	assert_memory_equal(blob + 4, "ecdsa-sha2-nistp256", 19);
	assert_int_equal(get_u32(blob + 23), 8);
	assert_memory_equal(blob + 27, "nistp256", 8);
	assert_int_equal(get_u32(blob + 35), 65);
	assert_int_equal(blob[39], 0x04); /* uncompressed point */

	assert_non_null(strstr(k.private_pem, "-----BEGIN EC PRIVATE KEY-----\n"));
	assert_non_null(strstr(k.private_pem, "-----END EC PRIVATE KEY-----"));
	assert_int_equal(strncmp(k.fingerprint, "SHA256:", 7), 0);
	assert_int_equal(strlen(k.fingerprint), 7 + 43);

	/* The PEM round-trips to the same public key and fingerprint. */
	struct sshkey again;
	assert_int_equal(sshkey_from_private(k.private_pem, "other", &again, &err), 0);
	assert_true(sshkey_same_public(k.public_line, again.public_line));
	assert_string_equal(k.fingerprint, again.fingerprint);
	sshkey_free(&again);
	sshkey_free(&k);
	assert_null(k.public_line);
}

static void test_keys_differ(void **state)
{
	(void)state;
	struct sshkey a, b;
	assert_int_equal(sshkey_generate("a", &a, NULL), 0);
	assert_int_equal(sshkey_generate("a", &b, NULL), 0);
	assert_false(sshkey_same_public(a.public_line, b.public_line));
	assert_string_not_equal(a.fingerprint, b.fingerprint);
	sshkey_free(&a);
	sshkey_free(&b);
}

/* `ssh-keygen -y -f key` derives the public key from our PEM: OpenSSH reads it. */
static void test_ssh_keygen_reads_private(void **state)
{
	(void)state;
	if (!have_ssh_keygen())
		skip();
	for (int i = 0; i < 3; i++) {
		struct sshkey k;
		assert_int_equal(sshkey_generate("slipway-app", &k, NULL), 0);
		char path[128], cmd[256];
		snprintf(path, sizeof path, "%s/key%d", tmpdir, i);
		write_file(path, k.private_pem, 0600);
		snprintf(cmd, sizeof cmd, "ssh-keygen -y -f '%s' 2>&1", path);
		const char *line = run_line(cmd);
		assert_non_null(line);
		if (!sshkey_same_public(line, k.public_line))
			fail_msg("ssh-keygen -y: %s\nours:          %s", line, k.public_line);
		sshkey_free(&k);
	}
}

/* `ssh-keygen -lf key.pub` prints the same SHA256 fingerprint. */
static void test_fingerprint_matches_ssh_keygen(void **state)
{
	(void)state;
	if (!have_ssh_keygen())
		skip();
	struct sshkey k;
	assert_int_equal(sshkey_generate("slipway-fp", &k, NULL), 0);
	char path[128], cmd[256], text[1024];
	snprintf(path, sizeof path, "%s/fp.pub", tmpdir);
	snprintf(text, sizeof text, "%s\n", k.public_line);
	write_file(path, text, 0644);
	snprintf(cmd, sizeof cmd, "ssh-keygen -E sha256 -lf '%s' 2>&1", path);
	const char *line = run_line(cmd);
	assert_non_null(line);
	char want[128];
	snprintf(want, sizeof want, "256 %s slipway-fp (ECDSA)", k.fingerprint);
	assert_string_equal(line, want);

	/* sshkey_fingerprint on any line agrees with ssh-keygen too (an ed25519
	 * key made by ssh-keygen itself). */
	char ed[128];
	snprintf(ed, sizeof ed, "%s/ed", tmpdir);
	snprintf(cmd, sizeof cmd, "ssh-keygen -q -t ed25519 -N '' -C x -f '%s' >/dev/null 2>&1",
		 ed);
	assert_int_equal(system(cmd), 0);
	snprintf(cmd, sizeof cmd, "cat '%s.pub'", ed);
	char pub[512];
	snprintf(pub, sizeof pub, "%s", run_line(cmd));
	snprintf(cmd, sizeof cmd, "ssh-keygen -E sha256 -lf '%s.pub' | cut -d' ' -f2", ed);
	const char *theirs = run_line(cmd);
	assert_non_null(theirs);
	char ours[SSHKEY_FINGERPRINT_MAX];
	assert_int_equal(sshkey_fingerprint(pub, ours, sizeof ours, NULL), 0);
	assert_string_equal(ours, theirs);
	assert_int_equal(sshkey_fingerprint(k.public_line, ours, sizeof ours, NULL), 0);
	assert_string_equal(ours, k.fingerprint);
	sshkey_free(&k);
}

static void test_refusals(void **state)
{
	(void)state;
	struct sshkey k;
	struct err err;
	assert_int_equal(sshkey_generate("bad comment", &k, &err), -1);
	assert_null(k.public_line);
	assert_int_equal(sshkey_generate("x\ny", &k, &err), -1);
	assert_int_equal(sshkey_from_private("not a key", "c", &k, &err), -1);
	assert_null(k.private_pem);
	char fp[SSHKEY_FINGERPRINT_MAX];
	assert_int_equal(sshkey_fingerprint("", fp, sizeof fp, &err), -1);
	assert_int_equal(sshkey_fingerprint("ecdsa-sha2-nistp256", fp, sizeof fp, &err), -1);
	assert_int_equal(sshkey_fingerprint("ecdsa-sha2-nistp256 !!!notbase64", fp, sizeof fp, &err),
			 -1);
	assert_non_null(strstr(err.msg, "base64"));
	/* Comments and spacing do not matter; type and blob do. */
	assert_true(sshkey_same_public("ecdsa-sha2-nistp256 AAAA x", "ecdsa-sha2-nistp256  AAAA\n"));
	assert_false(sshkey_same_public("ecdsa-sha2-nistp256 AAAA", "ssh-ed25519 AAAA"));
	assert_false(sshkey_same_public("ecdsa-sha2-nistp256 AAAA", "ecdsa-sha2-nistp256 AAAB"));
	assert_false(sshkey_same_public(NULL, "ecdsa-sha2-nistp256 AAAA"));
}

struct async_result {
	int done;
	struct sshkey *key;
	char error[256];
};

static void on_key(struct sshkey *key, const char *error, void *arg)
{
	struct async_result *r = arg;
	r->done++;
	r->key = key;
	if (error)
		snprintf(r->error, sizeof r->error, "%s", error);
}

/* The daemon path: generated on a pool thread, delivered on the loop. */
static void test_generate_async(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct err err;
	struct worker_pool *pool = worker_pool_new(loop, 1, 4, &err);
	assert_non_null(pool);
	struct async_result r = {0};
	assert_int_equal(sshkey_generate_async(pool, "slipway-async", on_key, &r), 0);
	assert_int_equal(r.done, 0); /* never from inside the call */
	while (!r.done)
		ev_run(loop, EVRUN_ONCE);
	assert_int_equal(r.done, 1);
	assert_non_null(r.key);
	assert_non_null(strstr(r.key->public_line, " slipway-async"));
	sshkey_free(r.key);
	free(r.key);
	worker_pool_free(pool);
	ev_loop_destroy(loop);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_public_blob_layout),
		cmocka_unit_test(test_keys_differ),
		cmocka_unit_test(test_ssh_keygen_reads_private),
		cmocka_unit_test(test_fingerprint_matches_ssh_keygen),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_generate_async),
	};
	return cmocka_run_group_tests_name("sshkey", tests, setup, teardown);
}
