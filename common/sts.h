/*
 * sts: instance identity through a presigned sts:GetCallerIdentity request
 * (docs/protocol.md "AWS identity"), both sides of it.
 *
 * Agent: sts_presign_identity signs GET /?Action=GetCallerIdentity&
 * Version=2011-06-15 in the query string (SigV4, service "sts") with the
 * instance role's credentials, valid for at most STS_EXPIRES_MAX_S seconds,
 * and signs a header naming the coordinator (STS_SERVER_HEADER) so a proof
 * made for one coordinator is useless at another, and a random nonce
 * (STS_NONCE_HEADER) so two proofs made in the same second differ (SigV4 is
 * deterministic, and the coordinator takes each signature once). The agent
 * sends the URL and the signed headers; it never sends its credentials.
 *
 * Coordinator: sts_verifier_start checks the proof before anything leaves
 * the process: the URL must point at the configured STS endpoint (same
 * scheme, host and port, path "/": the coordinator is no proxy to anywhere
 * else), carry exactly the expected query parameters (GetCallerIdentity,
 * version, SigV4 scope of service "sts", X-Amz-Expires 1..300), be
 * unexpired by the coordinator's clock, sign "host" and the server header
 * with the values this coordinator expects, and never have been used
 * before (its signature is remembered until it expires). Then it calls STS
 * with only the signed headers, reads Arn, UserId and Account from the XML
 * answer (common/awsquery's strict reader) and accepts only an assumed-role
 * ARN of a configured account and role whose session name is the instance
 * id the agent claims (EC2 names instance-role sessions after the instance).
 *
 * Ownership: results handed to callbacks live for the callback. A verifier
 * borrows the http_client, which must outlive it.
 * Threads: the loop thread; nothing blocks.
 */
#ifndef SLIPWAY_STS_H
#define SLIPWAY_STS_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "aws_credentials.h"
#include "err.h"
#include "sigv4.h"

struct http_client;
struct sts_verifier;

#define STS_SERVICE "sts"
#define STS_VERSION "2011-06-15"
#define STS_EXPIRES_MAX_S 300
#define STS_SERVER_HEADER "X-Slipway-Coordinator"
#define STS_NONCE_HEADER "X-Slipway-Nonce"
#define STS_PROOF_URL_MAX 8192
#define STS_HOST_MAX 256
#define STS_ARN_MAX 2048

/* ---- agent side ---- */

struct sts_proof {
	char *url;                       /* the presigned URL (malloc'ed) */
	char host[STS_HOST_MAX];         /* the signed Host header */
	char server[STS_HOST_MAX];       /* the signed STS_SERVER_HEADER ("" = not signed) */
	char nonce[33];                  /* the signed STS_NONCE_HEADER (32 hex digits) */
};

/* endpoint: NULL for https://sts.<signer's region>.amazonaws.com. server:
 * the coordinator's host[:port] (NULL or "" signs no server header).
 * expires_s: 1..STS_EXPIRES_MAX_S. time_ms 0 = now. */
int sts_presign_identity(struct sigv4_signer *s, const struct aws_credentials *creds,
			 const char *endpoint, const char *server, int64_t expires_s,
			 int64_t time_ms, struct sts_proof *out, struct err *err);
void sts_proof_free(struct sts_proof *p);
/* {"url": ..., "headers": {"Host": ..., "X-Slipway-Coordinator": ...,
 * "X-Slipway-Nonce": ...}}; NULL when out of memory. */
cJSON *sts_proof_json(const struct sts_proof *p);

/* ---- what STS says ---- */

struct sts_identity {
	char account[13];
	char arn[STS_ARN_MAX];
	char user_id[256];
	char partition[16];   /* "aws", "aws-cn", "aws-us-gov", ... */
	char type[24];        /* "assumed-role", "user", "root", "federated-user" */
	char role[65];        /* assumed-role: the role name */
	char session[65];     /* assumed-role: the session name */
};

/* Reads a GetCallerIdentity answer (GetCallerIdentityResponse/
 * GetCallerIdentityResult/{Arn,UserId,Account}); all three are required,
 * Account must be 12 digits and the ARN's account. */
int sts_parse_identity(const char *xml, size_t len, struct sts_identity *out, struct err *err);
/* Fills partition, type, role, session (and checks account) from an STS
 * caller ARN. */
int sts_parse_arn(const char *arn, struct sts_identity *out, struct err *err);

/* Policy: an assumed-role identity whose account is in `accounts` and role
 * in `roles` (comma-separated lists; an empty list allows nothing), and
 * whose session name is instance_id (NULL: not checked). */
int sts_identity_allowed(const struct sts_identity *id, const char *accounts,
			 const char *roles, const char *instance_id, struct err *err);

/* ---- coordinator side ---- */

/* A proof that passed sts_proof_check: what to send, and for how long it counts. */
struct sts_checked {
	char url[STS_PROOF_URL_MAX + 64]; /* the configured endpoint + "/?" + the query */
	char host[STS_HOST_MAX];
	char server[STS_HOST_MAX];
	char nonce[65];                   /* "" when the proof signed none */
	char signature[65];
	int64_t expires_ms;               /* wall ms: X-Amz-Date + X-Amz-Expires */
};

/* Checks a proof object ({"url", "headers"}) against the endpoint the
 * coordinator trusts and the server name it expects (NULL or "": none is
 * required, and a proof signing one is refused). now_ms: wall clock. */
int sts_proof_check(const cJSON *proof, const char *endpoint, const char *server, int64_t now_ms,
		    struct sts_checked *out, struct err *err);

/* Remembers used signatures until they expire (capacity max; 0 = 100000). */
struct sts_replay;
struct sts_replay *sts_replay_new(size_t max);
void sts_replay_free(struct sts_replay *r);
/* 0: first use (now remembered); -1: used before, or the cache is full of live entries. */
int sts_replay_use(struct sts_replay *r, const char *signature, int64_t expires_ms,
		   int64_t now_ms);
size_t sts_replay_count(const struct sts_replay *r);

struct sts_verifier_opts {
	const char *endpoint;    /* required: "https://sts.eu-west-1.amazonaws.com" */
	const char *ca_file;     /* NULL: the system bundle */
	const char *server;      /* the coordinator's name agents sign; NULL: not required */
	const char *accounts;    /* comma-separated 12-digit account ids */
	const char *roles;       /* comma-separated role names */
	int64_t timeout_ms;      /* per attempt; 0 = 5000 */
	int max_attempts;        /* transport errors, throttling, 5xx; 0 = 3 */
};

enum sts_verdict {
	STS_VERIFIED = 0,
	STS_REFUSED,        /* the proof or the identity is not acceptable: 401 */
	STS_UNAVAILABLE,    /* STS could not be asked: 503, the agent retries */
};

/* id is set for STS_VERIFIED (and for a refused identity STS did confirm). */
typedef void (*sts_verify_fn)(enum sts_verdict verdict, const struct sts_identity *id,
			      const char *reason, void *arg);

struct sts_verifier *sts_verifier_new(struct http_client *http,
				      const struct sts_verifier_opts *opts, struct err *err);
void sts_verifier_free(struct sts_verifier *v);   /* cancels (no callbacks) */

/* Checks the proof (a refusal comes back at once: -1 and err, no callback),
 * then asks STS; done is called later, once. Returns a call id (> 0). */
uint64_t sts_verifier_start(struct sts_verifier *v, const cJSON *proof, const char *instance_id,
			    sts_verify_fn done, void *arg, struct err *err);
void sts_verifier_cancel(struct sts_verifier *v, uint64_t id);

#endif
