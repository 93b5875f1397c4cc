#include "crypto.h"

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/gcm.h>
#include <mbedtls/md.h>
#include <pthread.h>
#include <string.h>

#define SEAL_VERSION 1

static pthread_mutex_t drbg_lock = PTHREAD_MUTEX_INITIALIZER;
static mbedtls_entropy_context entropy;
static mbedtls_ctr_drbg_context drbg;
static int drbg_ready;

int crypto_random(void *out, size_t len)
{
	int rc = -1;
	pthread_mutex_lock(&drbg_lock);
	if (!drbg_ready) {
		mbedtls_entropy_init(&entropy);
		mbedtls_ctr_drbg_init(&drbg);
		static const char pers[] = "slipway";
		if (mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy,
					  (const unsigned char *)pers, sizeof pers - 1) != 0) {
			mbedtls_ctr_drbg_free(&drbg);
			mbedtls_entropy_free(&entropy);
			goto out;
		}
		drbg_ready = 1;
	}
	unsigned char *p = out;
	while (len > 0) {
		size_t n = len > MBEDTLS_CTR_DRBG_MAX_REQUEST ? MBEDTLS_CTR_DRBG_MAX_REQUEST : len;
		if (mbedtls_ctr_drbg_random(&drbg, p, n) != 0)
			goto out;
		p += n;
		len -= n;
	}
	rc = 0;
out:
	pthread_mutex_unlock(&drbg_lock);
	return rc;
}

int crypto_random_hex(char *out, size_t nbytes)
{
	uint8_t raw[64];
	out[0] = '\0';
	for (size_t done = 0; done < nbytes;) {
		size_t n = nbytes - done < sizeof raw ? nbytes - done : sizeof raw;
		if (crypto_random(raw, n) < 0)
			return -1;
		crypto_hex(raw, n, out + 2 * done);
		done += n;
	}
	return 0;
}

int crypto_equal(const void *a, size_t alen, const void *b, size_t blen)
{
	const unsigned char *x = a, *y = b;
	/* Compare over the longer length so the time does not reveal a prefix. */
	size_t n = alen > blen ? alen : blen;
	/* Not (unsigned)(alen ^ blen): that loses the high bits of a size_t. */
	unsigned diff = alen != blen;
	for (size_t i = 0; i < n; i++) {
		unsigned char cx = i < alen ? x[i] : 0;
		unsigned char cy = i < blen ? y[i] : 0;
		diff |= (unsigned)(cx ^ cy);
	}
	return diff == 0;
}

void crypto_sha256(const void *data, size_t len, uint8_t out[CRYPTO_SHA256_LEN])
{
	mbedtls_sha256_ret(data, len, out, 0);
}

void crypto_sha256_hex(const void *data, size_t len, char out[2 * CRYPTO_SHA256_LEN + 1])
{
	uint8_t d[CRYPTO_SHA256_LEN];
	crypto_sha256(data, len, d);
	crypto_hex(d, sizeof d, out);
}

void crypto_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
			uint8_t out[CRYPTO_SHA256_LEN])
{
	mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), key, key_len, data, len, out);
}

void crypto_sha256_init(struct crypto_sha256_ctx *ctx)
{
	mbedtls_sha256_init(&ctx->c);
	mbedtls_sha256_starts_ret(&ctx->c, 0);
}

void crypto_sha256_update(struct crypto_sha256_ctx *ctx, const void *data, size_t len)
{
	mbedtls_sha256_update_ret(&ctx->c, data, len);
}

void crypto_sha256_final(struct crypto_sha256_ctx *ctx, uint8_t out[CRYPTO_SHA256_LEN])
{
	mbedtls_sha256_finish_ret(&ctx->c, out);
	mbedtls_sha256_free(&ctx->c);
}

void crypto_hex(const uint8_t *in, size_t len, char *out)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < len; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * len] = '\0';
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int crypto_unhex(const char *hex, size_t hex_len, uint8_t *out, size_t out_len)
{
	if (hex_len != 2 * out_len)
		return -1;
	for (size_t i = 0; i < out_len; i++) {
		int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -1;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

int crypto_seal(const uint8_t key[CRYPTO_KEY_LEN], const void *aad, size_t aad_len,
		const void *plain, size_t plain_len, struct buf *out)
{
	size_t start = out->len;
	uint8_t nonce[CRYPTO_GCM_NONCE_LEN];
	if (crypto_random(nonce, sizeof nonce) < 0)
		return -1;
	if (plain_len > (size_t)-1 - CRYPTO_SEAL_OVERHEAD)
		return -1;
	uint8_t version = SEAL_VERSION;
	if (buf_append(out, &version, 1) < 0 || buf_append(out, nonce, sizeof nonce) < 0)
		goto fail;
	size_t ct_off = out->len;
	/* Grow by plain_len + tag; the bytes are overwritten below. */
	if (buf_append(out, plain, plain_len) < 0)
		goto fail;
	uint8_t tag[CRYPTO_GCM_TAG_LEN] = {0};
	if (buf_append(out, tag, sizeof tag) < 0)
		goto fail;

	mbedtls_gcm_context gcm;
	mbedtls_gcm_init(&gcm);
	int rc = mbedtls_gcm_setkey(&gcm, MBEDTLS_CIPHER_ID_AES, key, 256);
	if (rc == 0)
		rc = mbedtls_gcm_crypt_and_tag(&gcm, MBEDTLS_GCM_ENCRYPT, plain_len, nonce,
					       sizeof nonce, aad, aad_len, plain,
					       (unsigned char *)out->data + ct_off, sizeof tag,
					       (unsigned char *)out->data + ct_off + plain_len);
	mbedtls_gcm_free(&gcm);
	if (rc != 0)
		goto fail;
	return 0;
fail:
	/* The plaintext may have been copied past `start`: wipe it before giving up. */
	if (out->data && out->len > start)
		memset(out->data + start, 0, out->len - start);
	out->len = start;
	if (out->data)
		out->data[start] = '\0';
	return -1;
}

int crypto_open(const uint8_t key[CRYPTO_KEY_LEN], const void *aad, size_t aad_len,
		const void *sealed, size_t sealed_len, struct buf *out)
{
	const uint8_t *s = sealed;
	if (sealed_len < CRYPTO_SEAL_OVERHEAD || s[0] != SEAL_VERSION)
		return -1;
	const uint8_t *nonce = s + 1;
	const uint8_t *ct = nonce + CRYPTO_GCM_NONCE_LEN;
	size_t ct_len = sealed_len - CRYPTO_SEAL_OVERHEAD;
	const uint8_t *tag = ct + ct_len;

	size_t start = out->len;
	if (buf_append(out, ct, ct_len) < 0) /* room for the plaintext */
		return -1;
	mbedtls_gcm_context gcm;
	mbedtls_gcm_init(&gcm);
	int rc = mbedtls_gcm_setkey(&gcm, MBEDTLS_CIPHER_ID_AES, key, 256);
	if (rc == 0)
		rc = mbedtls_gcm_auth_decrypt(&gcm, ct_len, nonce, CRYPTO_GCM_NONCE_LEN, aad,
					      aad_len, tag, CRYPTO_GCM_TAG_LEN, ct,
					      (unsigned char *)out->data + start);
	mbedtls_gcm_free(&gcm);
	if (rc != 0) {
		/* Wipe what the failed decryption wrote before giving the bytes back. */
		memset(out->data + start, 0, ct_len);
		out->len = start;
		out->data[start] = '\0';
		return -1;
	}
	return 0;
}
