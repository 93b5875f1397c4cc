/*
 * crypto: random ids, constant-time compare, SHA-256, HMAC-SHA256 and
 * AES-256-GCM, all on mbedTLS.
 *
 * The random generator is a CTR-DRBG seeded from the kernel's entropy on first
 * use; it is thread-safe. Functions that can fail return 0 / -1; the digest
 * functions cannot fail.
 */
#ifndef SLIPWAY_CRYPTO_H
#define SLIPWAY_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#include <mbedtls/sha256.h>

#include "buf.h"

#define CRYPTO_SHA256_LEN 32
#define CRYPTO_KEY_LEN 32        /* AES-256 */
#define CRYPTO_GCM_NONCE_LEN 12
#define CRYPTO_GCM_TAG_LEN 16
#define CRYPTO_SEAL_OVERHEAD (1 + CRYPTO_GCM_NONCE_LEN + CRYPTO_GCM_TAG_LEN)

int crypto_random(void *out, size_t len);

/* A random token of `nbytes` random bytes, written as lowercase hex
 * (out must hold 2 * nbytes + 1). */
int crypto_random_hex(char *out, size_t nbytes);

/* 1 when equal; the time taken depends only on the lengths. */
int crypto_equal(const void *a, size_t alen, const void *b, size_t blen);

void crypto_sha256(const void *data, size_t len, uint8_t out[CRYPTO_SHA256_LEN]);
void crypto_sha256_hex(const void *data, size_t len, char out[2 * CRYPTO_SHA256_LEN + 1]);
void crypto_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
			uint8_t out[CRYPTO_SHA256_LEN]);

/* Incremental SHA-256 for streamed payloads. */
struct crypto_sha256_ctx {
	mbedtls_sha256_context c;
};
void crypto_sha256_init(struct crypto_sha256_ctx *ctx);
void crypto_sha256_update(struct crypto_sha256_ctx *ctx, const void *data, size_t len);
void crypto_sha256_final(struct crypto_sha256_ctx *ctx, uint8_t out[CRYPTO_SHA256_LEN]);

/* Lowercase hex of len bytes; out holds 2 * len + 1. */
void crypto_hex(const uint8_t *in, size_t len, char *out);
/* Decodes exactly out_len bytes from 2 * out_len hex digits; -1 on anything else. */
int crypto_unhex(const char *hex, size_t hex_len, uint8_t *out, size_t out_len);

/*
 * AES-256-GCM sealing for secrets at rest. The sealed form appended to `out`
 * is: version byte (1) | 12-byte random nonce | ciphertext | 16-byte tag.
 * `aad` binds the ciphertext to its context (e.g. "app:web:env"), so a sealed
 * value copied to another row fails to open. On error `out` is unchanged.
 */
int crypto_seal(const uint8_t key[CRYPTO_KEY_LEN], const void *aad, size_t aad_len,
		const void *plain, size_t plain_len, struct buf *out);
int crypto_open(const uint8_t key[CRYPTO_KEY_LEN], const void *aad, size_t aad_len,
		const void *sealed, size_t sealed_len, struct buf *out);

#endif
