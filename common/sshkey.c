#include "sshkey.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/base64.h>
#include <mbedtls/ecp.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>

#include "crypto.h"
#include "worker.h"

#define P256_POINT_LEN 65          /* 0x04 || X (32) || Y (32) */
#define PEM_MAX 1024               /* a P-256 SEC1 PEM is about 230 bytes */
#define BLOB_MAX 4096              /* decoded public blobs we fingerprint (RSA 8192 fits) */

/* mbedTLS wants 0 on success; crypto_random is the process's one DRBG. */
static int rng(void *ctx, unsigned char *out, size_t len)
{
	(void)ctx;
	return crypto_random(out, len) == 0 ? 0 : MBEDTLS_ERR_ECP_RANDOM_FAILED;
}

static int comment_ok(const char *c)
{
	size_t n = strlen(c);
	if (n > SSHKEY_COMMENT_MAX)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char ch = c[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
		      ch == '.' || ch == '_' || ch == '@' || ch == '-'))
			return 0;
	}
	return 1;
}

/* Appends an RFC 4251 string: uint32 length, big-endian, then the bytes. */
static size_t put_string(uint8_t *out, const void *data, size_t len)
{
	out[0] = (uint8_t)(len >> 24);
	out[1] = (uint8_t)(len >> 16);
	out[2] = (uint8_t)(len >> 8);
	out[3] = (uint8_t)len;
	memcpy(out + 4, data, len);
	return 4 + len;
}

/* "SHA256:" + unpadded base64 of SHA-256(blob). */
static int fingerprint_of_blob(const uint8_t *blob, size_t len, char *out, size_t cap,
			       struct err *err)
{
	uint8_t digest[CRYPTO_SHA256_LEN];
	crypto_sha256(blob, len, digest);
	unsigned char b64[64];
	size_t olen = 0;
	if (mbedtls_base64_encode(b64, sizeof b64, &olen, digest, sizeof digest) != 0)
		return err_set(err, "fingerprint: base64 failed");
	while (olen > 0 && b64[olen - 1] == '=')
		olen--;
	b64[olen] = '\0';
	if ((size_t)snprintf(out, cap, "SHA256:%s", (const char *)b64) >= cap)
		return err_set(err, "fingerprint: buffer too small");
	return 0;
}

/* Public line and fingerprint of an EC key pair on P-256. */
static int describe_public(const mbedtls_ecp_keypair *ec, const char *comment, struct sshkey *out,
			   struct err *err)
{
	static const char type[] = SSHKEY_TYPE;
	static const char curve[] = "nistp256";
	if (ec->grp.id != MBEDTLS_ECP_DP_SECP256R1)
		return err_set(err, "not a P-256 key");
	uint8_t point[P256_POINT_LEN];
	size_t plen = 0;
	if (mbedtls_ecp_point_write_binary(&ec->grp, &ec->Q, MBEDTLS_ECP_PF_UNCOMPRESSED, &plen,
					   point, sizeof point) != 0 ||
	    plen != P256_POINT_LEN)
		return err_set(err, "cannot encode the public point");
	/* RFC 5656 3.1: string "ecdsa-sha2-nistp256", string "nistp256", string Q. */
	uint8_t blob[4 + sizeof type - 1 + 4 + sizeof curve - 1 + 4 + P256_POINT_LEN];
	size_t n = 0;
	n += put_string(blob + n, type, sizeof type - 1);
	n += put_string(blob + n, curve, sizeof curve - 1);
	n += put_string(blob + n, point, plen);
	unsigned char b64[256];
	size_t blen = 0;
	if (mbedtls_base64_encode(b64, sizeof b64, &blen, blob, n) != 0)
		return err_set(err, "cannot encode the public key");
	b64[blen] = '\0';
	size_t cap = sizeof type + blen + 2 + strlen(comment) + 1;
	out->public_line = malloc(cap);
	if (!out->public_line)
		return err_set(err, "out of memory");
	snprintf(out->public_line, cap, "%s %s%s%s", type, (const char *)b64, *comment ? " " : "",
		 comment);
	if (fingerprint_of_blob(blob, n, out->fingerprint, sizeof out->fingerprint, err) < 0) {
		free(out->public_line);
		out->public_line = NULL;
		return -1;
	}
	return 0;
}

void sshkey_free(struct sshkey *k)
{
	if (!k)
		return;
	if (k->private_pem) {
		mbedtls_platform_zeroize(k->private_pem, strlen(k->private_pem));
		free(k->private_pem);
	}
	free(k->public_line);
	memset(k, 0, sizeof *k);
}

int sshkey_generate(const char *comment, struct sshkey *out, struct err *err)
{
	memset(out, 0, sizeof *out);
	if (!comment)
		comment = "";
	if (!comment_ok(comment))
		return err_set(err, "key comment: at most %d of [A-Za-z0-9._@-]", SSHKEY_COMMENT_MAX);
	mbedtls_pk_context pk;
	mbedtls_pk_init(&pk);
	unsigned char pem[PEM_MAX];
	int rc = -1;
	if (mbedtls_pk_setup(&pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)) != 0) {
		err_set(err, "cannot set up an EC key");
		goto out;
	}
	if (mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(pk), rng, NULL) != 0) {
		err_set(err, "P-256 key generation failed (no randomness?)");
		goto out;
	}
	if (mbedtls_pk_write_key_pem(&pk, pem, sizeof pem) != 0) {
		err_set(err, "cannot write the private key as PEM");
		goto out;
	}
	if (describe_public(mbedtls_pk_ec(pk), comment, out, err) < 0)
		goto out;
	out->private_pem = strdup((const char *)pem);
	if (!out->private_pem) {
		sshkey_free(out);
		err_set(err, "out of memory");
		goto out;
	}
	rc = 0;
out:
	mbedtls_platform_zeroize(pem, sizeof pem);
	mbedtls_pk_free(&pk);
	return rc;
}

int sshkey_from_private(const char *pem, const char *comment, struct sshkey *out,
			struct err *err)
{
	memset(out, 0, sizeof *out);
	if (!comment)
		comment = "";
	if (!comment_ok(comment))
		return err_set(err, "key comment: at most %d of [A-Za-z0-9._@-]", SSHKEY_COMMENT_MAX);
	size_t len = strlen(pem);
	if (len == 0 || len >= PEM_MAX * 4)
		return err_set(err, "private key: empty or too large");
	mbedtls_pk_context pk;
	mbedtls_pk_init(&pk);
	int rc = -1;
	/* PEM input must include its NUL in keylen (mbedTLS 2.x). */
	if (mbedtls_pk_parse_key(&pk, (const unsigned char *)pem, len + 1, NULL, 0) != 0) {
		err_set(err, "private key: not a PEM key mbedTLS can read");
		goto out;
	}
	if (mbedtls_pk_get_type(&pk) != MBEDTLS_PK_ECKEY) {
		err_set(err, "private key: not an EC key");
		goto out;
	}
	if (describe_public(mbedtls_pk_ec(pk), comment, out, err) < 0)
		goto out;
	out->private_pem = strdup(pem);
	if (!out->private_pem) {
		sshkey_free(out);
		err_set(err, "out of memory");
		goto out;
	}
	rc = 0;
out:
	mbedtls_pk_free(&pk);
	return rc;
}

/* Splits "type base64 [comment]" into its first two fields (pointers into a
 * copy the caller frees); -1 when there are not two fields. */
static int split_line(const char *line, char **copy, const char **type, const char **b64)
{
	*copy = strdup(line ? line : "");
	if (!*copy)
		return -1;
	char *save = NULL;
	*type = strtok_r(*copy, " \t\r\n", &save);
	*b64 = *type ? strtok_r(NULL, " \t\r\n", &save) : NULL;
	if (!*type || !*b64) {
		free(*copy);
		*copy = NULL;
		return -1;
	}
	return 0;
}

int sshkey_fingerprint(const char *public_line, char *out, size_t cap, struct err *err)
{
	char *copy;
	const char *type, *b64;
	if (split_line(public_line, &copy, &type, &b64) < 0)
		return err_set(err, "public key: expected \"type base64 [comment]\"");
	uint8_t *blob = malloc(BLOB_MAX);
	size_t n = 0;
	int rc;
	if (!blob)
		rc = err_set(err, "out of memory");
	else if (mbedtls_base64_decode(blob, BLOB_MAX, &n, (const unsigned char *)b64,
				       strlen(b64)) != 0 ||
		 n < 4)
		rc = err_set(err, "public key: the key is not valid base64");
	else
		rc = fingerprint_of_blob(blob, n, out, cap, err);
	free(blob);
	free(copy);
	return rc;
}

int sshkey_same_public(const char *a, const char *b)
{
	char *ca, *cb;
	const char *ta, *ba, *tb, *bb;
	if (split_line(a, &ca, &ta, &ba) < 0)
		return 0;
	if (split_line(b, &cb, &tb, &bb) < 0) {
		free(ca);
		return 0;
	}
	int same = strcmp(ta, tb) == 0 && strcmp(ba, bb) == 0;
	free(ca);
	free(cb);
	return same;
}

/* ---- on a worker thread ---- */

struct gen_job {
	char comment[SSHKEY_COMMENT_MAX + 1];
	sshkey_done_fn done;
	void *arg;
	struct sshkey *key;
	struct err err;
};

static void gen_work(void *arg)
{
	struct gen_job *j = arg;
	j->key = calloc(1, sizeof *j->key);
	if (!j->key) {
		err_set(&j->err, "out of memory");
		return;
	}
	if (sshkey_generate(j->comment, j->key, &j->err) < 0) {
		free(j->key);
		j->key = NULL;
	}
}

static void gen_done(void *arg)
{
	struct gen_job *j = arg;
	j->done(j->key, j->key ? NULL : j->err.msg, j->arg);
	free(j);
}

int sshkey_generate_async(struct worker_pool *pool, const char *comment, sshkey_done_fn done,
			  void *arg)
{
	if (!pool || !done || (comment && strlen(comment) > SSHKEY_COMMENT_MAX))
		return -1;
	struct gen_job *j = calloc(1, sizeof *j);
	if (!j)
		return -1;
	snprintf(j->comment, sizeof j->comment, "%s", comment ? comment : "");
	j->done = done;
	j->arg = arg;
	if (worker_submit(pool, gen_work, gen_done, j) < 0) {
		free(j);
		return -1;
	}
	return 0;
}
