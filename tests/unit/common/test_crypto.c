#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <mbedtls/gcm.h>

#include "buf.h"
#include "crypto.h"

/* Decodes a hex literal of known length into a fresh array (test helper). */
static uint8_t *unhex_alloc(const char *hex, size_t *len)
{
	size_t n = strlen(hex) / 2;
	uint8_t *out = malloc(n ? n : 1);
	assert_non_null(out);
	assert_int_equal(crypto_unhex(hex, strlen(hex), out, n), 0);
	*len = n;
	return out;
}

static void assert_digest(const uint8_t d[CRYPTO_SHA256_LEN], const char *want_hex)
{
	char hex[2 * CRYPTO_SHA256_LEN + 1];
	crypto_hex(d, CRYPTO_SHA256_LEN, hex);
	assert_string_equal(hex, want_hex);
}

/* ---- SHA-256: FIPS 180-2, Appendix B (B.1, B.2, B.3) ---- */

static void test_sha256_fips_180_2(void **state)
{
	(void)state;
	uint8_t d[CRYPTO_SHA256_LEN];
	crypto_sha256("abc", 3, d);
	assert_digest(d, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

	static const char m2[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
	crypto_sha256(m2, sizeof m2 - 1, d); /* 448 bits */
	assert_digest(d, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");

	char *million = malloc(1000000);
	assert_non_null(million);
	memset(million, 'a', 1000000);
	crypto_sha256(million, 1000000, d);
	assert_digest(d, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");

	/* The same million 'a' through the incremental API in uneven pieces. */
	struct crypto_sha256_ctx ctx;
	crypto_sha256_init(&ctx);
	size_t off = 0, step = 1;
	while (off < 1000000) {
		size_t n = step < 1000000 - off ? step : 1000000 - off;
		crypto_sha256_update(&ctx, million + off, n);
		off += n;
		step = step * 3 + 1;
	}
	crypto_sha256_final(&ctx, d);
	assert_digest(d, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
	free(million);

	char hex[2 * CRYPTO_SHA256_LEN + 1];
	crypto_sha256_hex("abc", 3, hex);
	assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	/* Empty message (NIST CAVP SHA256ShortMsg, Len = 0). */
	crypto_sha256_hex("", 0, hex);
	assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

/* ---- HMAC-SHA256: RFC 4231 section 4, test cases 1-4, 6, 7 ---- */

static void check_hmac(const uint8_t *key, size_t key_len, const void *data, size_t len,
		       const char *want)
{
	uint8_t mac[CRYPTO_SHA256_LEN];
	crypto_hmac_sha256(key, key_len, data, len, mac);
	assert_digest(mac, want);
}

static void test_hmac_rfc4231(void **state)
{
	(void)state;
	uint8_t key[131], data[50];

	memset(key, 0x0b, 20); /* 4.2 test case 1 */
	check_hmac(key, 20, "Hi There", 8,
		   "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
	/* 4.3 test case 2: a key shorter than the output */
	check_hmac((const uint8_t *)"Jefe", 4, "what do ya want for nothing?", 28,
		   "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
	memset(key, 0xaa, 20); /* 4.4 test case 3 */
	memset(data, 0xdd, 50);
	check_hmac(key, 20, data, 50,
		   "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
	for (int i = 0; i < 25; i++) /* 4.5 test case 4 */
		key[i] = (uint8_t)(i + 1);
	memset(data, 0xcd, 50);
	check_hmac(key, 25, data, 50,
		   "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b");
	memset(key, 0xaa, 131); /* 4.7 test case 6: key larger than the block */
	static const char tc6[] = "Test Using Larger Than Block-Size Key - Hash Key First";
	check_hmac(key, 131, tc6, sizeof tc6 - 1,
		   "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
	static const char tc7[] = /* 4.8 test case 7: key and data larger than the block */
		"This is a test using a larger than block-size key and a larger than "
		"block-size data. The key needs to be hashed before being used by the HMAC "
		"algorithm.";
	check_hmac(key, 131, tc7, sizeof tc7 - 1,
		   "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");
}

/* ---- AES-256-GCM known answer ----
 * "The Galois/Counter Mode of Operation (GCM)", McGrew and Viega, Appendix B,
 * Test Case 16: AES-256, 96-bit IV, 60-byte plaintext, 20-byte AAD. */
static const char tc16_key[] =
	"feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
static const char tc16_plain[] =
	"d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
	"1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
static const char tc16_aad[] = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
static const char tc16_iv[] = "cafebabefacedbaddecaf888";
static const char tc16_cipher[] =
	"522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
	"8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662";
static const char tc16_tag[] = "76fc6ece0f4e1768cddf8853bb2d551b";

/* mbedTLS itself against the published vector: the library is wired right. */
static void test_gcm_known_answer_mbedtls(void **state)
{
	(void)state;
	size_t klen, plen, alen, ivlen, clen, tlen;
	uint8_t *key = unhex_alloc(tc16_key, &klen), *plain = unhex_alloc(tc16_plain, &plen);
	uint8_t *aad = unhex_alloc(tc16_aad, &alen), *iv = unhex_alloc(tc16_iv, &ivlen);
	uint8_t *cipher = unhex_alloc(tc16_cipher, &clen), *tag = unhex_alloc(tc16_tag, &tlen);
	assert_int_equal(klen, 32);
	assert_int_equal(ivlen, 12);
	assert_int_equal(plen, 60);
	assert_int_equal(clen, plen);

	mbedtls_gcm_context gcm;
	mbedtls_gcm_init(&gcm);
	assert_int_equal(mbedtls_gcm_setkey(&gcm, MBEDTLS_CIPHER_ID_AES, key, 256), 0);
	uint8_t out[60], got_tag[16];
	assert_int_equal(mbedtls_gcm_crypt_and_tag(&gcm, MBEDTLS_GCM_ENCRYPT, plen, iv, ivlen,
						   aad, alen, plain, out, 16, got_tag), 0);
	assert_memory_equal(out, cipher, clen);
	assert_memory_equal(got_tag, tag, 16);
	uint8_t back[60];
	assert_int_equal(mbedtls_gcm_auth_decrypt(&gcm, clen, iv, ivlen, aad, alen, tag, 16,
						  cipher, back), 0);
	assert_memory_equal(back, plain, plen);
	mbedtls_gcm_free(&gcm);
	free(key); free(plain); free(aad); free(iv); free(cipher); free(tag);
}

/* crypto_open on the vector assembled by hand as version 1 | IV | C | T. */
static void test_open_known_answer(void **state)
{
	(void)state;
	size_t klen, plen, alen, ivlen, clen, tlen;
	uint8_t *key = unhex_alloc(tc16_key, &klen), *plain = unhex_alloc(tc16_plain, &plen);
	uint8_t *aad = unhex_alloc(tc16_aad, &alen), *iv = unhex_alloc(tc16_iv, &ivlen);
	uint8_t *cipher = unhex_alloc(tc16_cipher, &clen), *tag = unhex_alloc(tc16_tag, &tlen);
	uint8_t sealed[1 + 12 + 60 + 16];
	sealed[0] = 1;
	memcpy(sealed + 1, iv, 12);
	memcpy(sealed + 13, cipher, 60);
	memcpy(sealed + 73, tag, 16);

	struct buf out;
	buf_init(&out, 0);
	assert_int_equal(crypto_open(key, aad, alen, sealed, sizeof sealed, &out), 0);
	assert_int_equal(out.len, plen);
	assert_memory_equal(out.data, plain, plen);
	/* Without the AAD (Test Case 15's setting) the same bytes do not open. */
	buf_reset(&out);
	assert_int_equal(crypto_open(key, NULL, 0, sealed, sizeof sealed, &out), -1);
	assert_int_equal(out.len, 0);
	buf_free(&out);
	free(key); free(plain); free(aad); free(iv); free(cipher); free(tag);
}

/* ---- seal / open ---- */

static const uint8_t key_a[CRYPTO_KEY_LEN] = "0123456789abcdef0123456789abcde";
static const uint8_t key_b[CRYPTO_KEY_LEN] = "0123456789abcdef0123456789abcdX";
static const char aad[] = "app:web:env";
static const char secret[] = "DATABASE_URL=postgres://u:p@db/web";

static void seal_secret(struct buf *sealed)
{
	buf_init(sealed, 0);
	assert_int_equal(crypto_seal(key_a, aad, sizeof aad - 1, secret, sizeof secret - 1,
				     sealed), 0);
}

static void test_seal_open_round_trip(void **state)
{
	(void)state;
	struct buf sealed, plain;
	seal_secret(&sealed);
	assert_int_equal(sealed.len, sizeof secret - 1 + CRYPTO_SEAL_OVERHEAD);
	assert_int_equal((uint8_t)sealed.data[0], 1);
	assert_null(memmem(sealed.data, sealed.len, "postgres", 8));

	buf_init(&plain, 0);
	assert_int_equal(buf_append_str(&plain, "pre:"), 0); /* open appends */
	assert_int_equal(crypto_open(key_a, aad, sizeof aad - 1, sealed.data, sealed.len,
				     &plain), 0);
	assert_string_equal(plain.data, "pre:DATABASE_URL=postgres://u:p@db/web");

	/* Same input twice: fresh nonce, different bytes, both open. */
	struct buf again;
	seal_secret(&again);
	assert_int_equal(again.len, sealed.len);
	assert_memory_not_equal(again.data, sealed.data, sealed.len);
	assert_memory_not_equal(again.data + 1, sealed.data + 1, CRYPTO_GCM_NONCE_LEN);

	/* Empty plaintext and empty AAD. */
	struct buf e, eo;
	buf_init(&e, 0);
	buf_init(&eo, 0);
	assert_int_equal(crypto_seal(key_a, NULL, 0, "", 0, &e), 0);
	assert_int_equal(e.len, CRYPTO_SEAL_OVERHEAD);
	assert_int_equal(crypto_open(key_a, NULL, 0, e.data, e.len, &eo), 0);
	assert_int_equal(eo.len, 0);
	buf_free(&e);
	buf_free(&eo);

	/* Larger binary payload. */
	uint8_t big[70000];
	for (size_t i = 0; i < sizeof big; i++)
		big[i] = (uint8_t)(i * 7 + 3);
	struct buf bs, bo;
	buf_init(&bs, 0);
	buf_init(&bo, 0);
	assert_int_equal(crypto_seal(key_b, "x", 1, big, sizeof big, &bs), 0);
	assert_int_equal(crypto_open(key_b, "x", 1, bs.data, bs.len, &bo), 0);
	assert_int_equal(bo.len, sizeof big);
	assert_memory_equal(bo.data, big, sizeof big);
	buf_free(&bs);
	buf_free(&bo);
	buf_free(&again);
	buf_free(&sealed);
	buf_free(&plain);
}

/* Opens `sealed` expecting failure and checks `out` ("keep") is untouched. */
static void open_fails(const uint8_t *key, const void *a, size_t alen, const void *s,
		       size_t slen)
{
	struct buf out;
	buf_init(&out, 0);
	assert_int_equal(buf_append_str(&out, "keep"), 0);
	assert_int_equal(crypto_open(key, a, alen, s, slen, &out), -1);
	assert_int_equal(out.len, 4);
	assert_string_equal(out.data, "keep");
	/* The bytes past len were wiped too: no half-decrypted plaintext is left. */
	if (out.alloc > 5)
		assert_null(memmem(out.data + 5, out.alloc - 5, "postgres", 8));
	buf_free(&out);
}

static void test_tamper_detected(void **state)
{
	(void)state;
	struct buf sealed;
	seal_secret(&sealed);
	uint8_t *t = malloc(sealed.len);
	assert_non_null(t);
	const size_t positions[] = {
		1,                                   /* nonce, first byte */
		CRYPTO_GCM_NONCE_LEN,                /* nonce, last byte */
		1 + CRYPTO_GCM_NONCE_LEN,            /* ciphertext, first byte */
		sealed.len - CRYPTO_GCM_TAG_LEN - 1, /* ciphertext, last byte */
		sealed.len - CRYPTO_GCM_TAG_LEN,     /* tag, first byte */
		sealed.len - 1,                      /* tag, last byte */
	};
	for (size_t i = 0; i < sizeof positions / sizeof positions[0]; i++) {
		memcpy(t, sealed.data, sealed.len);
		t[positions[i]] ^= 0x01;
		open_fails(key_a, aad, sizeof aad - 1, t, sealed.len);
	}
	/* Wrong AAD: another row, a prefix, none. */
	open_fails(key_a, "app:api:env", 11, sealed.data, sealed.len);
	open_fails(key_a, aad, sizeof aad - 2, sealed.data, sealed.len);
	open_fails(key_a, NULL, 0, sealed.data, sealed.len);
	/* Wrong key. */
	open_fails(key_b, aad, sizeof aad - 1, sealed.data, sealed.len);
	/* Truncated: one byte short, tag gone, below the fixed overhead, empty. */
	open_fails(key_a, aad, sizeof aad - 1, sealed.data, sealed.len - 1);
	open_fails(key_a, aad, sizeof aad - 1, sealed.data, sealed.len - CRYPTO_GCM_TAG_LEN);
	open_fails(key_a, aad, sizeof aad - 1, sealed.data, CRYPTO_SEAL_OVERHEAD - 1);
	open_fails(key_a, aad, sizeof aad - 1, sealed.data, 0);
	/* Extended by a byte. */
	uint8_t *longer = malloc(sealed.len + 1);
	memcpy(longer, sealed.data, sealed.len);
	longer[sealed.len] = 0;
	open_fails(key_a, aad, sizeof aad - 1, longer, sealed.len + 1);
	free(longer);
	/* Unknown version bytes. */
	memcpy(t, sealed.data, sealed.len);
	t[0] = 0;
	open_fails(key_a, aad, sizeof aad - 1, t, sealed.len);
	t[0] = 2;
	open_fails(key_a, aad, sizeof aad - 1, t, sealed.len);
	t[0] = 0xff;
	open_fails(key_a, aad, sizeof aad - 1, t, sealed.len);
	free(t);
	buf_free(&sealed);
}

static void test_seal_open_caps(void **state)
{
	(void)state;
	/* Seal into a buffer that cannot hold the result: unchanged. */
	struct buf small;
	buf_init(&small, 10 + CRYPTO_SEAL_OVERHEAD);
	assert_int_equal(buf_append_str(&small, "ab"), 0);
	assert_int_equal(crypto_seal(key_a, NULL, 0, "0123456789", 10, &small), -1);
	assert_int_equal(small.len, 2);
	assert_string_equal(small.data, "ab");
	/* The plaintext copied while growing was wiped. */
	assert_null(memmem(small.data, small.alloc, "0123456789", 10));
	/* Exactly fitting works. */
	buf_reset(&small);
	assert_int_equal(crypto_seal(key_a, NULL, 0, "0123456789", 10, &small), 0);
	assert_int_equal(small.len, 10 + CRYPTO_SEAL_OVERHEAD);

	/* Open into a buffer too small for the plaintext: unchanged. */
	struct buf tiny;
	buf_init(&tiny, 9);
	assert_int_equal(buf_append_str(&tiny, "x"), 0);
	assert_int_equal(crypto_open(key_a, NULL, 0, small.data, small.len, &tiny), -1);
	assert_int_equal(tiny.len, 1);
	assert_string_equal(tiny.data, "x");
	buf_free(&tiny);
	buf_init(&tiny, 10);
	assert_int_equal(crypto_open(key_a, NULL, 0, small.data, small.len, &tiny), 0);
	assert_memory_equal(tiny.data, "0123456789", 10);
	buf_free(&tiny);
	buf_free(&small);
}

/* ---- random ---- */

static int is_lower_hex(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	}
	return s[n] == '\0';
}

static void test_random(void **state)
{
	(void)state;
	char a[33], b[33];
	assert_int_equal(crypto_random_hex(a, 16), 0);
	assert_int_equal(crypto_random_hex(b, 16), 0);
	assert_int_equal(strlen(a), 32);
	assert_true(is_lower_hex(a, 32));
	assert_true(is_lower_hex(b, 32));
	assert_string_not_equal(a, b);

	/* Longer than the 64-byte scratch block it used to be limited to. */
	char big[2 * 200 + 1];
	memset(big, 'Z', sizeof big);
	assert_int_equal(crypto_random_hex(big, 200), 0);
	assert_int_equal(strlen(big), 400);
	assert_true(is_lower_hex(big, 400));
	assert_memory_not_equal(big, big + 200, 200);

	char none[1] = {'Z'};
	assert_int_equal(crypto_random_hex(none, 0), 0);
	assert_string_equal(none, "");

	uint8_t r1[32] = {0}, r2[32] = {0}, zero[32] = {0};
	assert_int_equal(crypto_random(r1, sizeof r1), 0);
	assert_int_equal(crypto_random(r2, sizeof r2), 0);
	assert_memory_not_equal(r1, r2, sizeof r1);
	assert_memory_not_equal(r1, zero, sizeof r1);
	assert_int_equal(crypto_random(r1, 0), 0);

	/* More than one DRBG request (MBEDTLS_CTR_DRBG_MAX_REQUEST is 1024). */
	uint8_t *large = calloc(1, 5000);
	assert_int_equal(crypto_random(large, 5000), 0);
	assert_memory_not_equal(large + 4000, zero, 32);
	free(large);
}

/* ---- compare, hex ---- */

static void test_equal(void **state)
{
	(void)state;
	assert_true(crypto_equal("abc", 3, "abc", 3));
	assert_true(crypto_equal("", 0, "", 0));
	assert_true(crypto_equal(NULL, 0, "x", 0));
	assert_false(crypto_equal("abc", 3, "abd", 3));
	assert_false(crypto_equal("abc", 3, "xbc", 3));
	assert_false(crypto_equal("abc", 3, "abcd", 4));
	assert_false(crypto_equal("abcd", 4, "abc", 3));
	/* Zero padding must not make different lengths equal. */
	assert_false(crypto_equal("abc", 3, "abc\0", 4));
	assert_false(crypto_equal("", 0, "\0", 1));
	assert_false(crypto_equal("abc", 3, "", 0));
}

static void test_hex(void **state)
{
	(void)state;
	const uint8_t in[] = {0x00, 0xff, 0x0a, 0xb0, 0x7e};
	char hex[11];
	crypto_hex(in, sizeof in, hex);
	assert_string_equal(hex, "00ff0ab07e");
	crypto_hex(in, 0, hex);
	assert_string_equal(hex, "");

	uint8_t out[5] = {0};
	assert_int_equal(crypto_unhex("00ff0ab07e", 10, out, 5), 0);
	assert_memory_equal(out, in, 5);
	assert_int_equal(crypto_unhex("00FF0AB07E", 10, out, 5), 0); /* upper case too */
	assert_memory_equal(out, in, 5);
	assert_int_equal(crypto_unhex("", 0, out, 0), 0);
	assert_int_equal(crypto_unhex("00ff0ab07", 9, out, 5), -1);   /* odd length */
	assert_int_equal(crypto_unhex("00ff0ab07e00", 12, out, 5), -1); /* too long */
	assert_int_equal(crypto_unhex("00ff0ab0", 8, out, 5), -1);    /* too short */
	assert_int_equal(crypto_unhex("00ff0ab07g", 10, out, 5), -1); /* not hex */
	assert_int_equal(crypto_unhex("0x", 2, out, 1), -1);
	assert_int_equal(crypto_unhex(" 1", 2, out, 1), -1);
	assert_int_equal(crypto_unhex("1 ", 2, out, 1), -1);

	uint8_t all[256], back[256];
	char allhex[513];
	for (int i = 0; i < 256; i++)
		all[i] = (uint8_t)i;
	crypto_hex(all, 256, allhex);
	assert_int_equal(crypto_unhex(allhex, 512, back, 256), 0);
	assert_memory_equal(all, back, 256);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sha256_fips_180_2),
		cmocka_unit_test(test_hmac_rfc4231),
		cmocka_unit_test(test_gcm_known_answer_mbedtls),
		cmocka_unit_test(test_open_known_answer),
		cmocka_unit_test(test_seal_open_round_trip),
		cmocka_unit_test(test_tamper_detected),
		cmocka_unit_test(test_seal_open_caps),
		cmocka_unit_test(test_random),
		cmocka_unit_test(test_equal),
		cmocka_unit_test(test_hex),
	};
	return cmocka_run_group_tests_name("crypto", tests, NULL, NULL);
}
