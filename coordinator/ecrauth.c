#include "ecrauth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aws_credentials.h"
#include "config.h"
#include "ecr.h"
#include "log.h"

#define REGISTRY_ID_MAX 13

/* One ecrauth_prepare in flight. */
struct prep {
	struct ecrauth *ea;
	struct prep *prev, *next;
	uint64_t id;
	char *repository;           /* NULL: a login only */
	uint64_t create_call;       /* ecr call id while CreateRepository runs */
	uint64_t auth_call;         /* ecr_auth_get id while the token is fetched */
	ecrauth_fn cb;
	void *arg;
};

/* A repository made sure of. */
struct known {
	struct known *next;
	char name[];
};

struct ecrauth {
	struct aws_credentials_provider *creds;
	struct ecr *ecr;
	char registry_id[REGISTRY_ID_MAX];
	struct prep *preps;
	struct known *known;
	size_t nknown;
	uint64_t next_id;
	uint64_t creates;
};

/* ---- settings ---- */

static bool twelve_digits(const char *s)
{
	if (strlen(s) != 12)
		return false;
	for (const char *p = s; *p; p++)
		if (*p < '0' || *p > '9')
			return false;
	return true;
}

int ecrauth_settings(const struct config *cfg, char *host, size_t host_cap, struct err *err)
{
	if (strcmp(config_str(cfg, "registry.kind"), "ecr") != 0)
		return 0;
	const char *region = config_has(cfg, "registry.region") ? config_str(cfg, "registry.region")
								 : "";
	const char *account = config_has(cfg, "registry.account")
				      ? config_str(cfg, "registry.account") : "";
	if (!*region)
		return err_set(err, "registry.kind = ecr needs registry.region");
	for (const char *p = region; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
			return err_set(err, "registry.region: \"%s\" is not an AWS region", region);
	if (*account && !twelve_digits(account))
		return err_set(err, "registry.account: an AWS account is 12 digits");
	/* registry.host left at its default: the account's registry in the region. */
	if (strcmp(config_source(cfg, "registry.host"), "default") != 0) {
		snprintf(host, host_cap, "%s", config_str(cfg, "registry.host"));
	} else if (*account) {
		snprintf(host, host_cap, "%s.dkr.ecr.%s.amazonaws.com", account, region);
	} else {
		return err_set(err, "registry.kind = ecr needs registry.account (or registry.host): "
			       "the registry images are pushed to");
	}
	return 1;
}

const char *ecrauth_repository_prefix(const struct config *cfg, bool ecr)
{
	if (config_has(cfg, "registry.repository_prefix"))
		return config_str(cfg, "registry.repository_prefix");
	return ecr ? ECRAUTH_DEFAULT_PREFIX : "";
}

/* ---- the client ---- */

struct ecrauth *ecrauth_new(struct ev_loop *loop, struct http_client *http,
			    const struct ecrauth_opts *o, struct err *err)
{
	if (!o || !o->region || !*o->region) {
		err_set(err, "ecrauth: a region is required");
		return NULL;
	}
	const char *rid = o->registry_id ? o->registry_id : "";
	if (*rid && !twelve_digits(rid)) {
		err_set(err, "ecrauth: the registry id is 12 digits");
		return NULL;
	}
	struct ecrauth *ea = calloc(1, sizeof *ea);
	if (!ea) {
		err_set(err, "out of memory");
		return NULL;
	}
	ea->next_id = 1;
	snprintf(ea->registry_id, sizeof ea->registry_id, "%s", rid);
	struct aws_credentials_opts co = {0};
	struct ecr_opts eo = {.region = o->region, .endpoint = o->endpoint};
	if (!(ea->creds = aws_credentials_new(loop, http, &co, err)) ||
	    !(ea->ecr = ecr_new(loop, http, ea->creds, &eo, err))) {
		ecrauth_free(ea);
		return NULL;
	}
	log_info("ecrauth.ready", "region=%s registry=%s host=%s endpoint=%s", o->region,
		 *rid ? rid : "default", o->registry_host ? o->registry_host : "-",
		 o->endpoint ? o->endpoint : "default");
	return ea;
}

struct ecrauth *ecrauth_from_config(struct ev_loop *loop, struct http_client *http,
				    const struct config *cfg, struct err *err)
{
	char host[256];
	int rc = ecrauth_settings(cfg, host, sizeof host, err);
	if (rc <= 0) {
		if (rc == 0)
			err_set(err, "registry.kind is not ecr");
		return NULL;
	}
	struct ecrauth_opts o = {
		.region = config_str(cfg, "registry.region"),
		.endpoint = config_has(cfg, "registry.endpoint") ? config_str(cfg, "registry.endpoint")
								 : NULL,
		.registry_id = config_has(cfg, "registry.account") ? config_str(cfg, "registry.account")
								   : NULL,
		.registry_host = host,
	};
	return ecrauth_new(loop, http, &o, err);
}

static void prep_free(struct prep *p)
{
	struct ecrauth *ea = p->ea;
	if (p->create_call)
		ecr_cancel(ea->ecr, p->create_call);
	if (p->auth_call)
		ecr_auth_cancel(ea->ecr, p->auth_call);
	if (p->prev)
		p->prev->next = p->next;
	else
		ea->preps = p->next;
	if (p->next)
		p->next->prev = p->prev;
	free(p->repository);
	free(p);
}

void ecrauth_free(struct ecrauth *ea)
{
	if (!ea)
		return;
	while (ea->preps)
		prep_free(ea->preps);
	while (ea->known) {
		struct known *k = ea->known;
		ea->known = k->next;
		free(k);
	}
	ecr_free(ea->ecr);
	aws_credentials_free(ea->creds);
	free(ea);
}

static bool is_known(const struct ecrauth *ea, const char *name)
{
	for (const struct known *k = ea->known; k; k = k->next)
		if (strcmp(k->name, name) == 0)
			return true;
	return false;
}

static void remember(struct ecrauth *ea, const char *name)
{
	if (is_known(ea, name) || ea->nknown >= ECRAUTH_KNOWN_MAX)
		return; /* past the cap: asked again next time, which is harmless */
	size_t n = strlen(name) + 1;
	struct known *k = malloc(sizeof *k + n);
	if (!k)
		return;
	memcpy(k->name, name, n);
	k->next = ea->known;
	ea->known = k;
	ea->nknown++;
}

/* Answers and forgets the prep. */
static void answer(struct prep *p, const struct ecrauth_login *login, const char *error)
{
	ecrauth_fn cb = p->cb;
	void *arg = p->arg;
	p->create_call = p->auth_call = 0;
	prep_free(p);
	cb(login, error, arg);
}

static void on_auth(const struct ecr_auth *a, const char *error, void *arg)
{
	struct prep *p = arg;
	p->auth_call = 0;
	if (!a) {
		answer(p, NULL, error ? error : "GetAuthorizationToken failed");
		return;
	}
	struct ecrauth_login login = {
		.auth_json = a->auth_json,
		.config_json = a->config_json,
		.registry_host = a->registry_host,
		.expires_ms = a->expires_ms,
		.stale = a->stale,
	};
	answer(p, &login, NULL);
}

static void get_token(struct prep *p)
{
	p->auth_call = ecr_auth_get(p->ea->ecr, p->ea->registry_id, on_auth, p);
	if (!p->auth_call)
		answer(p, NULL, "GetAuthorizationToken could not be started (out of memory)");
}

static void on_created(const struct ecr_result *r, void *arg)
{
	struct prep *p = arg;
	p->create_call = 0;
	if (r->status != ECR_OK) {
		char why[700];
		snprintf(why, sizeof why, "CreateRepository %s: %s%s%s", p->repository,
			 r->error_code && *r->error_code ? r->error_code
			 : r->status == ECR_UNREACHABLE ? "ECR unreachable" : "refused",
			 r->message && *r->message ? ": " : "", r->message ? r->message : "");
		log_warn("ecrauth.create_failed", "repository=%s error=\"%s\"", p->repository, why);
		answer(p, NULL, why);
		return;
	}
	log_info("ecrauth.repository", "repository=%s %s", p->repository,
		 r->existed ? "existed" : "created");
	remember(p->ea, p->repository);
	get_token(p);
}

uint64_t ecrauth_prepare(struct ecrauth *ea, const char *repository, ecrauth_fn cb, void *arg)
{
	if (!ea || !cb || (repository && !ecr_repository_name_valid(repository)))
		return 0;
	struct prep *p = calloc(1, sizeof *p);
	if (!p)
		return 0;
	if (repository && !(p->repository = strdup(repository))) {
		free(p);
		return 0;
	}
	p->ea = ea;
	p->id = ea->next_id++;
	p->cb = cb;
	p->arg = arg;
	p->next = ea->preps;
	if (ea->preps)
		ea->preps->prev = p;
	ea->preps = p;
	uint64_t id = p->id;
	if (repository && !is_known(ea, repository)) {
		/* No tags: tagging on create needs ecr:TagResource too (least privilege). */
		p->create_call = ecr_create_repository(ea->ecr, repository, NULL, 0, true, on_created,
						       p);
		if (p->create_call)
			ea->creates++;
	} else {
		p->auth_call = ecr_auth_get(ea->ecr, ea->registry_id, on_auth, p);
	}
	if (!p->create_call && !p->auth_call) {
		prep_free(p);
		return 0;
	}
	return id;
}

void ecrauth_cancel(struct ecrauth *ea, uint64_t id)
{
	if (!ea || !id)
		return;
	for (struct prep *p = ea->preps; p; p = p->next) {
		if (p->id == id) {
			prep_free(p);
			return;
		}
	}
}

void ecrauth_invalidate(struct ecrauth *ea)
{
	if (ea)
		ecr_auth_invalidate(ea->ecr, ea->registry_id);
}

uint64_t ecrauth_creates(const struct ecrauth *ea)
{
	return ea ? ea->creates : 0;
}

uint64_t ecrauth_fetches(const struct ecrauth *ea)
{
	return ea ? ecr_auth_fetches(ea->ecr) : 0;
}
