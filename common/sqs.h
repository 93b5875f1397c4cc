/*
 * sqs: an Amazon SQS client over the AWS JSON 1.0 protocol (POST / with
 * `X-Amz-Target: AmazonSQS.<Action>`, `Content-Type:
 * application/x-amz-json-1.0`), SigV4-signed (service "sqs") per attempt
 * through awsjson, which owns retries (full-jitter backoff for throttling,
 * 5xx and dropped connections), the one credentials refresh after
 * ExpiredToken and the one re-sign after a clock-skew answer.
 *
 * The actions slipway needs: CreateQueue (attributes and tags),
 * GetQueueUrl, DeleteQueue, ListQueues (prefix, pagination), TagQueue,
 * ListQueueTags, SendMessageBatch, ReceiveMessage (long polling),
 * ChangeMessageVisibility and DeleteMessage.
 *
 * Outcomes: SQS_OK; SQS_NOT_FOUND for QueueDoesNotExist
 * (AWS.SimpleQueueService.NonExistentQueue); SQS_UNREACHABLE when retries
 * ran out (transport, 5xx, throttling, credentials: try again later);
 * SQS_REFUSED for any other answer of the service, with its name in
 * error_code (test it with sqs_error_is: QueueDeletedRecently,
 * QueueNameExists, ReceiptHandleIsInvalid, MessageNotInflight, ...).
 * DeleteQueue of a queue that is gone is SQS_OK (SQS answers so itself).
 *
 * SendMessageBatch: 1..10 entries with distinct ids ([A-Za-z0-9_-]{1,80})
 * and at most SQS_BATCH_MAX bytes of bodies in all, each body valid for SQS
 * (Unicode #x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF, in
 * UTF-8); anything else is refused before a request is made. The answer's
 * Failed entries that were not the sender's fault (SenderFault false: the
 * service's own trouble) are sent again, alone, with backoff, up to the
 * client's attempts; the result then lists every entry with its outcome
 * (ok, or the code and sender_fault of its last failure). MD5OfMessageBody
 * of each accepted entry is checked against the body sent.
 *
 * ReceiveMessage: MD5OfBody of every message is checked; a message whose
 * body does not match is left out of the result (it comes back after its
 * visibility timeout) and counted in `corrupt`. ApproximateReceiveCount,
 * SentTimestamp and ApproximateFirstReceiveTimestamp are always asked for.
 *
 * Ownership: inputs are copied; the result and everything it points to live
 * for the duration of done. Threads: the loop thread only; never blocks.
 * sqs_free must not be called from inside a done callback.
 */
#ifndef SLIPWAY_SQS_H
#define SLIPWAY_SQS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aws_credentials.h"
#include "err.h"

struct ev_loop;
struct http_client;
struct sqs;

#define SQS_SERVICE "sqs"
#define SQS_TARGET_PREFIX "AmazonSQS"
#define SQS_CONTENT_TYPE "application/x-amz-json-1.0"
#define SQS_BATCH_ENTRIES_MAX 10
#define SQS_BATCH_MAX ((size_t)256 << 10)     /* bytes of message bodies per batch */
#define SQS_MESSAGE_MAX SQS_BATCH_MAX
#define SQS_WAIT_MAX_S 20
#define SQS_VISIBILITY_MAX_S 43200            /* 12 hours */
#define SQS_QUEUE_NAME_MAX 80
#define SQS_TAGS_MAX 50
#define SQS_ENTRY_ID_MAX 80
#define SQS_MAX_ANSWER ((size_t)16 << 20)

struct sqs_opts {
	const char *region;          /* required, e.g. "eu-west-1" */
	const char *endpoint;        /* NULL: https://sqs.<region>.amazonaws.com */
	const char *ca_file;         /* NULL: the system bundle */
	int64_t timeout_ms;          /* per attempt (a long poll adds its wait); 0 = 30000 */
	int64_t retry_base_ms;       /* 0 = 100 */
	int64_t retry_cap_ms;        /* 0 = 20000 */
	int max_attempts;            /* 5xx and transport failures in a row; 0 = 4 */
	int throttle_attempts;       /* throttled answers per call; 0 = 10 */
};

enum sqs_status {
	SQS_OK = 0,
	SQS_NOT_FOUND,      /* QueueDoesNotExist */
	SQS_REFUSED,        /* the service said no: error_code */
	SQS_UNREACHABLE,    /* retries ran out: try again later */
};

struct sqs_kv {               /* a tag or a queue attribute */
	const char *key;
	const char *value;
};

struct sqs_message {
	const char *message_id;
	const char *receipt_handle;
	const char *body;
	size_t body_len;
	int64_t receive_count;    /* ApproximateReceiveCount (>= 1) */
	int64_t sent_ms;          /* SentTimestamp; 0 when absent */
	int64_t first_receive_ms; /* ApproximateFirstReceiveTimestamp; 0 when absent */
};

struct sqs_send_entry {
	const char *id;           /* distinct within the batch */
	const char *body;
	size_t body_len;
	int delay_s;              /* 0..900 */
};

struct sqs_entry_result {
	const char *id;
	bool ok;
	const char *message_id;   /* ok */
	const char *code;         /* !ok: "InternalError", ... */
	const char *message;      /* !ok */
	bool sender_fault;        /* !ok: the entry itself is wrong (do not resend) */
};

struct sqs_result {
	enum sqs_status status;
	long http_status;
	const char *error_code;   /* "" on success */
	const char *query_code;   /* "AWS.SimpleQueueService.NonExistentQueue" or "" */
	const char *message;      /* "" on success */
	int attempts;             /* requests sent */
	int throttled;
	/* CreateQueue, GetQueueUrl */
	const char *queue_url;
	/* ListQueues */
	const char *const *queue_urls;
	size_t queue_url_count;
	const char *next_token;   /* NULL on the last page */
	/* ListQueueTags */
	const struct sqs_kv *tags;
	size_t tag_count;
	/* ReceiveMessage */
	const struct sqs_message *messages;
	size_t message_count;
	size_t corrupt;           /* messages left out: MD5OfBody mismatch */
	/* SendMessageBatch: every entry, in the order given */
	const struct sqs_entry_result *entries;
	size_t entry_count;
	size_t failed;            /* entries not ok */
};

typedef void (*sqs_done_fn)(const struct sqs_result *res, void *arg);

/* The provider, loop and client are the caller's and must outlive this.
 * NULL (err filled) on a bad region or endpoint. */
struct sqs *sqs_new(struct ev_loop *loop, struct http_client *http,
		    struct aws_credentials_provider *creds, const struct sqs_opts *opts,
		    struct err *err);
/* Cancels every call (no callbacks) and frees. NULL is fine. */
void sqs_free(struct sqs *q);

/* Every call returns an id (> 0), or 0 on bad arguments (no callback then). */

/* Attributes are queue attributes as SQS names them ("VisibilityTimeout":
 * "60", "SqsManagedSseEnabled": "true"); tags at most SQS_TAGS_MAX. An
 * existing queue with the same attributes answers its URL; one with other
 * attributes is QueueNameExists; a name deleted in the last 60 s is
 * QueueDeletedRecently. */
uint64_t sqs_create_queue(struct sqs *q, const char *name, const struct sqs_kv *attrs,
			  size_t nattrs, const struct sqs_kv *tags, size_t ntags, sqs_done_fn done,
			  void *arg);
uint64_t sqs_get_queue_url(struct sqs *q, const char *name, sqs_done_fn done, void *arg);
uint64_t sqs_delete_queue(struct sqs *q, const char *queue_url, sqs_done_fn done, void *arg);
/* One page: prefix may be NULL, next_token NULL for the first page,
 * max_results 1..1000 (0: SQS's default of at most 1000 without pagination). */
uint64_t sqs_list_queues(struct sqs *q, const char *prefix, const char *next_token,
			 int max_results, sqs_done_fn done, void *arg);
uint64_t sqs_tag_queue(struct sqs *q, const char *queue_url, const struct sqs_kv *tags,
		       size_t ntags, sqs_done_fn done, void *arg);
uint64_t sqs_list_queue_tags(struct sqs *q, const char *queue_url, sqs_done_fn done, void *arg);

uint64_t sqs_send_batch(struct sqs *q, const char *queue_url, const struct sqs_send_entry *entries,
			size_t count, sqs_done_fn done, void *arg);

struct sqs_receive_opts {
	int max_messages;         /* 1..10; 0 = 10 */
	int wait_s;               /* long poll 0..20 */
	int visibility_s;         /* -1: the queue's; else 0..43200 */
};
uint64_t sqs_receive(struct sqs *q, const char *queue_url, const struct sqs_receive_opts *o,
		     sqs_done_fn done, void *arg);

/* timeout_s 0..43200 from now. ReceiptHandleIsInvalid or MessageNotInflight
 * (SQS_REFUSED) mean the message was received again or deleted. */
uint64_t sqs_change_visibility(struct sqs *q, const char *queue_url, const char *receipt_handle,
			       int timeout_s, sqs_done_fn done, void *arg);
uint64_t sqs_delete_message(struct sqs *q, const char *queue_url, const char *receipt_handle,
			    sqs_done_fn done, void *arg);

void sqs_cancel(struct sqs *q, uint64_t id);
size_t sqs_pending(const struct sqs *q);

/* 1 when the result's error is `name` under either of its names
 * ("QueueDoesNotExist" or "AWS.SimpleQueueService.NonExistentQueue"). */
int sqs_error_is(const struct sqs_result *res, const char *name);

/* ---- building blocks, exposed for tests ---- */

/* 1 when name is a valid standard-queue name: 1..80 of [A-Za-z0-9_-]. */
int sqs_queue_name_valid(const char *name);
/* 0 when body[0..len) is a valid SQS message body (see above), else -1 and
 * *bad_at (may be NULL) is the offset of the first bad byte. */
int sqs_body_valid(const char *body, size_t len, size_t *bad_at);
/* Lowercase hex MD5 (RFC 1321), as SQS reports MD5OfMessageBody. */
void sqs_md5_hex(const void *data, size_t len, char out[33]);
/* The queue name of a queue URL (its last path segment), or NULL. */
const char *sqs_queue_name_of(const char *queue_url);

#endif
