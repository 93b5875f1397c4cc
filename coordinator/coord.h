/*
 * coord: the coordinator's shared context. One per process, created by main.c
 * and handed to every module; each module owns the field it creates and frees.
 * Everything here is used from the loop thread only (the store has its own
 * thread behind its API), except that the store thread reads c->slack under
 * slack.c's lock.
 */
#ifndef SLIPWAY_COORD_H
#define SLIPWAY_COORD_H

#include <stdint.h>

#include "crypto.h"

struct ev_loop;
struct config;
struct store;
struct http_client;
struct docker;
struct httpd;
struct worker_pool;
struct queue;
struct builder;
struct server;
struct auth;
struct agents;
struct logsink;
struct logcw;
struct link;
struct slack;
struct sqsqueue;

struct coord {
	struct ev_loop *loop;
	const struct config *cfg;
	struct store *store;
	struct http_client *http;     /* GitLab, Slack */
	struct docker *docker;        /* builds */
	struct httpd *httpd;
	struct worker_pool *workers;  /* archives, key generation: blocking work */
	struct queue *queue;          /* long polls, leases, agent liveness */
	struct builder *builder;
	struct server *server;        /* router on httpd (server.h) */
	struct auth *auth;            /* API key cache */
	struct agents *agents;        /* registry, tokens, liveness */
	struct logsink *logsink;      /* embedded log store */
	struct logcw *logcw;          /* `slipway logs` from CloudWatch (logcw.c); NULL: embedded */
	struct link *link;            /* GitLab linking (link.c: link_register, link_free) */
	struct slack *slack;          /* notifications (slack.c); NULL: none are sent */
	struct sqsqueue *sqsqueue;    /* queue.backend = sqs (sqsqueue.c); NULL: embedded */
	int64_t started_ms;           /* wall clock at start-up */
	uint8_t master_key[CRYPTO_KEY_LEN];
	char data_dir[4096];
};

#endif
