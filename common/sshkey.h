/*
 * sshkey: SSH key pairs for GitLab deploy keys, on mbedTLS.
 *
 * mbedTLS 2.28 has no Ed25519, so the pair is ECDSA on NIST P-256, which
 * OpenSSH accepts as `ecdsa-sha2-nistp256`:
 *   - the public half in authorized_keys form, "ecdsa-sha2-nistp256 <b64> <comment>",
 *     where <b64> is the RFC 5656 section 3.1 blob: string "ecdsa-sha2-nistp256",
 *     string "nistp256", string Q (the point, uncompressed: 0x04 || X || Y),
 *     each string a big-endian uint32 length and the bytes (RFC 4251 5);
 *   - the private half as PEM "EC PRIVATE KEY" (SEC1, RFC 5915), which ssh,
 *     git's ssh and `ssh-keygen -y` read as they are;
 *   - the fingerprint as OpenSSH prints it: "SHA256:" + unpadded base64 of
 *     the SHA-256 of the blob (ssh-keygen -l, GitLab's fingerprint_sha256).
 *
 * Ownership: sshkey_generate fills a caller-owned struct sshkey whose strings
 * are heap-allocated; sshkey_free wipes the private half and frees both. On
 * error nothing is left allocated.
 *
 * Threads: everything is callable from any thread. sshkey_generate BLOCKS (it
 * draws randomness, which may wait for the kernel's entropy at first use, and
 * does the EC arithmetic): daemons call sshkey_generate_async, which runs it
 * on a common/worker pool and delivers the key on the loop thread. The other
 * functions are pure CPU and quick.
 */
#ifndef SLIPWAY_SSHKEY_H
#define SLIPWAY_SSHKEY_H

#include <stddef.h>

#include "err.h"

struct worker_pool;

#define SSHKEY_TYPE "ecdsa-sha2-nistp256"
#define SSHKEY_FINGERPRINT_MAX 64  /* "SHA256:" + 43 base64 characters + NUL fits */
#define SSHKEY_COMMENT_MAX 200

struct sshkey {
	char *public_line;   /* "ecdsa-sha2-nistp256 AAAA... <comment>", no newline */
	char *private_pem;   /* "-----BEGIN EC PRIVATE KEY-----\n...\n-----END EC PRIVATE KEY-----\n" */
	char fingerprint[SSHKEY_FINGERPRINT_MAX]; /* "SHA256:..." */
};

/* A new P-256 key pair; comment (e.g. "slipway-web") ends the public line and
 * holds at most SSHKEY_COMMENT_MAX bytes of [A-Za-z0-9._@-]. Blocks (see above). */
int sshkey_generate(const char *comment, struct sshkey *out, struct err *err);

/* Wipes and frees what *k holds; the struct may be reused. NULL is fine. */
void sshkey_free(struct sshkey *k);

/* The public line and fingerprint of a PEM private key written by
 * sshkey_generate (any P-256 "EC PRIVATE KEY" PEM); out->private_pem is a copy
 * of pem. For checks and tests. */
int sshkey_from_private(const char *pem, const char *comment, struct sshkey *out,
			struct err *err);

/* The fingerprint of an authorized_keys line ("type base64 [comment]") of any
 * key type: SHA256 of the decoded blob, as OpenSSH prints it. */
int sshkey_fingerprint(const char *public_line, char *out, size_t cap, struct err *err);

/* 1 when two authorized_keys lines name the same key (same type and blob;
 * comments and surrounding spaces ignored), else 0. GitLab may hand a key back
 * without its comment. */
int sshkey_same_public(const char *a, const char *b);

/* Runs sshkey_generate on pool; done(key, error, arg) follows on the loop
 * thread with the key (the callee owns it: sshkey_free + free) or NULL and the
 * reason. -1 when the pool refused the job: then done is never called. Loop
 * thread only. */
typedef void (*sshkey_done_fn)(struct sshkey *key, const char *error, void *arg);
int sshkey_generate_async(struct worker_pool *pool, const char *comment, sshkey_done_fn done,
			  void *arg);

#endif
