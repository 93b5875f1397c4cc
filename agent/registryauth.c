#include "registryauth.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aws_credentials.h"
#include "config.h"
#include "ecr.h"
#include "log.h"

#define REGISTRY_ID_MAX 13
#define REGION_MAX 64
#define HOST_MAX 256

struct region_client {
	char region[REGION_MAX];
	struct ecr *ecr;
};

/* One registryauth_pull in flight. */
struct rpull {
	struct registryauth *ra;
	struct rpull *prev, *next;
	uint64_t id;
	char *image;
	int64_t timeout_ms;
	docker_progress_fn progress;
	docker_done_fn done;
	void *arg;
	struct ecr *ecr;             /* NULL: pulled without credentials */
	char registry_id[REGISTRY_ID_MAX];
	uint64_t auth_call;
	uint64_t docker_call;
	bool retried;                /* refused once: pulled again with a new token */
};

struct registryauth {
	struct ev_loop *loop;
	struct http_client *http;
	struct docker *docker;
	struct aws_credentials_provider *creds;
	bool own_creds;
	char *endpoint, *ca_file;
	char extra_host[HOST_MAX];
	char extra_region[REGION_MAX];
	char extra_account[REGISTRY_ID_MAX];
	struct region_client regions[REGISTRYAUTH_REGIONS_MAX];
	size_t nregions;
	struct rpull *pulls;
	uint64_t next_id;
};

static bool twelve_digits(const char *s)
{
	if (strlen(s) != 12)
		return false;
	for (const char *p = s; *p; p++)
		if (*p < '0' || *p > '9')
			return false;
	return true;
}

static bool valid_region(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n >= REGION_MAX)
		return false;
	for (const char *p = s; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
			return false;
	return true;
}

struct registryauth *registryauth_new(const struct registryauth_opts *o, struct err *err)
{
	if (!o || !o->loop || !o->http || !o->docker) {
		err_set(err, "registryauth: loop, http and docker are required");
		return NULL;
	}
	const char *host = o->extra_host ? o->extra_host : "";
	const char *region = o->extra_region ? o->extra_region : "";
	const char *account = o->extra_account ? o->extra_account : "";
	if (*host && (strlen(host) >= HOST_MAX || strchr(host, '/'))) {
		err_set(err, "ecr.registry: a registry host[:port], without a path");
		return NULL;
	}
	if (*host && !valid_region(region)) {
		err_set(err, "ecr.registry needs ecr.region (the AWS region its tokens come from)");
		return NULL;
	}
	if (*account && !twelve_digits(account)) {
		err_set(err, "ecr.account: an AWS account is 12 digits");
		return NULL;
	}
	struct registryauth *ra = calloc(1, sizeof *ra);
	if (!ra) {
		err_set(err, "out of memory");
		return NULL;
	}
	ra->loop = o->loop;
	ra->http = o->http;
	ra->docker = o->docker;
	ra->creds = o->creds;
	ra->next_id = 1;
	snprintf(ra->extra_host, sizeof ra->extra_host, "%s", host);
	snprintf(ra->extra_region, sizeof ra->extra_region, "%s", *host ? region : "");
	snprintf(ra->extra_account, sizeof ra->extra_account, "%s", account);
	if ((o->endpoint && !(ra->endpoint = strdup(o->endpoint))) ||
	    (o->ca_file && !(ra->ca_file = strdup(o->ca_file)))) {
		registryauth_free(ra);
		err_set(err, "out of memory");
		return NULL;
	}
	return ra;
}

struct registryauth *registryauth_from_config(const struct config *cfg, struct ev_loop *loop,
					      struct http_client *http, struct docker *docker,
					      struct aws_credentials_provider *creds,
					      struct err *err)
{
#define OPT(key) (config_has(cfg, key) ? config_str(cfg, key) : NULL)
	struct registryauth_opts o = {
		.loop = loop,
		.http = http,
		.docker = docker,
		.creds = creds,
		.endpoint = OPT("ecr.endpoint"),
		.ca_file = OPT("ecr.ca_file"),
		.extra_host = OPT("ecr.registry"),
		.extra_region = OPT("ecr.region"),
		.extra_account = OPT("ecr.account"),
	};
#undef OPT
	struct registryauth *ra = registryauth_new(&o, err);
	if (ra && ra->extra_host[0])
		log_info("registryauth.ready", "registry=%s region=%s account=%s endpoint=%s",
			 ra->extra_host, ra->extra_region,
			 ra->extra_account[0] ? ra->extra_account : "default",
			 ra->endpoint ? ra->endpoint : "default");
	return ra;
}

static void pull_free(struct rpull *p)
{
	struct registryauth *ra = p->ra;
	if (p->auth_call)
		ecr_auth_cancel(p->ecr, p->auth_call);
	if (p->docker_call)
		docker_cancel(ra->docker, p->docker_call);
	if (p->prev)
		p->prev->next = p->next;
	else
		ra->pulls = p->next;
	if (p->next)
		p->next->prev = p->prev;
	free(p->image);
	free(p);
}

void registryauth_free(struct registryauth *ra)
{
	if (!ra)
		return;
	while (ra->pulls)
		pull_free(ra->pulls);
	for (size_t i = 0; i < ra->nregions; i++)
		ecr_free(ra->regions[i].ecr);
	if (ra->own_creds)
		aws_credentials_free(ra->creds);
	free(ra->endpoint);
	free(ra->ca_file);
	free(ra);
}

int registryauth_match(const struct registryauth *ra, const char *image, char *registry_id,
		       char *region)
{
	if (!ra || !image)
		return 0;
	size_t hl = strcspn(image, "/");
	if (image[hl] != '/')
		return 0; /* no registry host: Docker Hub */
	if (ra->extra_host[0] && strlen(ra->extra_host) == hl &&
	    strncmp(image, ra->extra_host, hl) == 0) {
		snprintf(registry_id, REGISTRY_ID_MAX, "%s", ra->extra_account);
		snprintf(region, REGION_MAX, "%s", ra->extra_region);
		return 1;
	}
	char id[REGISTRY_ID_MAX], r[REGION_MAX];
	if (!ecr_image_registry(image, id, r))
		return 0;
	snprintf(registry_id, REGISTRY_ID_MAX, "%s", id);
	snprintf(region, REGION_MAX, "%s", r);
	return 1;
}

/* The ECR client of a region, made the first time. */
static struct ecr *region_client(struct registryauth *ra, const char *region, struct err *err)
{
	for (size_t i = 0; i < ra->nregions; i++)
		if (strcmp(ra->regions[i].region, region) == 0)
			return ra->regions[i].ecr;
	if (ra->nregions >= REGISTRYAUTH_REGIONS_MAX) {
		err_set(err, "images from more than %d regions", REGISTRYAUTH_REGIONS_MAX);
		return NULL;
	}
	if (!ra->creds) {
		struct aws_credentials_opts co = {0};
		if (!(ra->creds = aws_credentials_new(ra->loop, ra->http, &co, err)))
			return NULL;
		ra->own_creds = true;
	}
	struct ecr_opts eo = {.region = region, .endpoint = ra->endpoint, .ca_file = ra->ca_file};
	struct ecr *e = ecr_new(ra->loop, ra->http, ra->creds, &eo, err);
	if (!e)
		return NULL;
	struct region_client *rc = &ra->regions[ra->nregions++];
	snprintf(rc->region, sizeof rc->region, "%s", region);
	rc->ecr = e;
	return e;
}

/* Answers and forgets the pull. */
static void finish(struct rpull *p, const struct docker_result *res)
{
	docker_done_fn done = p->done;
	void *arg = p->arg;
	p->auth_call = p->docker_call = 0;
	pull_free(p);
	done(res, arg);
}

static void fail(struct rpull *p, enum docker_error code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void fail(struct rpull *p, enum docker_error code, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	struct docker_result r = {.error = code, .message = msg};
	finish(p, &r);
}

static void ask_token(struct rpull *p);

static void on_pulled(const struct docker_result *res, void *arg)
{
	struct rpull *p = arg;
	p->docker_call = 0;
	if (res->error != DOCKER_OK && p->ecr &&
	    (res->error == DOCKER_ERR_DENIED || ecr_docker_denied(res->message))) {
		if (!p->retried) {
			/* Expired or revoked before its time: once more with a new token. */
			log_warn("registryauth.refused", "image=%s error=\"%s\" (pulling again with a "
				 "new ECR token)", p->image, res->message);
			p->retried = true;
			ecr_auth_invalidate(p->ecr, p->registry_id);
			ask_token(p);
			return;
		}
		fail(p, res->error, "the registry refused the ECR token, also a new one: %s",
		     res->message);
		return;
	}
	finish(p, res);
}

static void on_token(const struct ecr_auth *a, const char *error, void *arg)
{
	struct rpull *p = arg;
	p->auth_call = 0;
	if (!a) {
		fail(p, DOCKER_ERR_DENIED, "no ECR login for %.*s: %s",
		     (int)strcspn(p->image, "/"), p->image, error ? error : "unknown error");
		return;
	}
	if (a->stale)
		log_warn("registryauth.stale_token", "image=%s (a new token could not be fetched; "
			 "the current one is valid until %lld)", p->image, (long long)a->expires_ms);
	p->docker_call = docker_image_pull(p->ra->docker, p->image, a->auth_json, p->timeout_ms,
					   p->progress, on_pulled, p);
	if (!p->docker_call)
		fail(p, DOCKER_ERR_INTERNAL, "the pull of %s could not start", p->image);
}

static void ask_token(struct rpull *p)
{
	p->auth_call = ecr_auth_get(p->ecr, p->registry_id, on_token, p);
	if (!p->auth_call)
		fail(p, DOCKER_ERR_INTERNAL, "the ECR login could not start (out of memory)");
}

uint64_t registryauth_pull(struct registryauth *ra, const char *image, int64_t timeout_ms,
			   docker_progress_fn progress, docker_done_fn done, void *arg)
{
	if (!ra || !image || !*image || !done)
		return 0;
	char rid[REGISTRY_ID_MAX] = "", region[REGION_MAX] = "";
	struct ecr *e = NULL;
	if (registryauth_match(ra, image, rid, region)) {
		struct err err = {{0}};
		if (!(e = region_client(ra, region, &err))) {
			log_error("registryauth.client", "image=%s region=%s error=\"%s\"", image, region,
				  err.msg);
			return 0;
		}
	}
	struct rpull *p = calloc(1, sizeof *p);
	if (!p || !(p->image = strdup(image))) {
		free(p);
		return 0;
	}
	p->ra = ra;
	p->id = ra->next_id++;
	p->timeout_ms = timeout_ms;
	p->progress = progress;
	p->done = done;
	p->arg = arg;
	p->ecr = e;
	snprintf(p->registry_id, sizeof p->registry_id, "%s", rid);
	p->next = ra->pulls;
	if (ra->pulls)
		ra->pulls->prev = p;
	ra->pulls = p;
	uint64_t id = p->id;
	if (e)
		p->auth_call = ecr_auth_get(e, p->registry_id, on_token, p);
	else
		p->docker_call = docker_image_pull(ra->docker, image, NULL, timeout_ms, progress,
						   on_pulled, p);
	if (!p->auth_call && !p->docker_call) {
		pull_free(p);
		return 0;
	}
	return id;
}

void registryauth_cancel(struct registryauth *ra, uint64_t id)
{
	if (!ra || !id)
		return;
	for (struct rpull *p = ra->pulls; p; p = p->next) {
		if (p->id == id) {
			pull_free(p);
			return;
		}
	}
}

uint64_t registryauth_fetches(const struct registryauth *ra)
{
	uint64_t n = 0;
	for (size_t i = 0; ra && i < ra->nregions; i++)
		n += ecr_auth_fetches(ra->regions[i].ecr);
	return n;
}
