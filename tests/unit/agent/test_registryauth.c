/*
 * registryauth: which images are pulled with ECR tokens (ECR hosts of every
 * partition and FIPS, the configured extra host, nothing else), the settings
 * it refuses; then pulls through tests/fakes/docker_engine.py with logins
 * from tests/fakes/ecr.py (both child processes; the ECR fake checks every
 * SigV4 signature): an ECR image's pull carries X-Registry-Auth with a
 * password the fake issued and still honours, asked for the right registry;
 * other images carry none; concurrent pulls share one token; a failed login
 * fails the pull with DOCKER_ERR_DENIED and says why; cancelled pulls are
 * never answered.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <ev.h>
#include <mbedtls/base64.h>

#include "clock.h"
#include "docker.h"
#include "ecr.h"
#include "fakeproc.h"
#include "http_client.h"
#include "json.h"
#include "log.h"
#include "registryauth.h"

#define AKID "AKIDUNITREGAUTH"
#define SECRET "unit-secret-for-registryauth"
#define ACCOUNT "123456789012"
#define EXTRA "127.0.0.1:5997"
#define PROXY "http://" EXTRA

/* ---- the fakes ---- */

static struct fakeproc ecr_fake, engine_fake;
static char engine_dir[64];

static void fakes_start(void)
{
	const char *ecr_args[] = {"--access-key", AKID, "--secret-key", SECRET,
				  "--proxy-endpoint", PROXY, "--account", ACCOUNT, NULL};
	assert_int_equal(fakeproc_start(&ecr_fake, "ecr.py", ecr_args), 0);

	snprintf(engine_dir, sizeof engine_dir, "/tmp/slipway-regauth-XXXXXX");
	assert_non_null(mkdtemp(engine_dir));
	snprintf(engine_fake.sock, sizeof engine_fake.sock, "%s/docker.sock", engine_dir);
	const char *engine_args[] = {engine_fake.sock, "--profile", "new", NULL};
	assert_int_equal(fakeproc_start(&engine_fake, "docker_engine.py", engine_args), 0);
}

static void fakes_stop(void)
{
	fakeproc_stop(&ecr_fake);
	if (engine_fake.pid > 0) {
		fakeproc_finish(&engine_fake); /* its stdin closing stops it */
		unlink(engine_fake.sock);
		rmdir(engine_dir);
	}
}

/* A blocking control request to a fake (unix: the engine's socket). */
static cJSON *ctl(bool engine, const char *method, const char *path)
{
	return fakeproc_json(engine ? &engine_fake : &ecr_fake, method, path, NULL);
}

static int live_password(const char *pw)
{
	char *esc = curl_easy_escape(NULL, pw, 0);
	char path[512];
	snprintf(path, sizeof path, "/_fake/check?password=%s", esc);
	curl_free(esc);
	cJSON *doc = ctl(false, "GET", path);
	int ok = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "valid"));
	cJSON_Delete(doc);
	return ok;
}

/* The X-Registry-Auth of the engine's pulls of fromImage=repo (decoded), in
 * order; n of them at most. Returns how many pulls there were. */
static int pull_auths(const char *repo, char auth[][1024], int n)
{
	cJSON *reqs = ctl(true, "GET", "/_fake/requests");
	int k = 0;
	char *esc = curl_easy_escape(NULL, repo, 0);
	char want[512];
	snprintf(want, sizeof want, "fromImage=%s&", esc);
	curl_free(esc);
	const cJSON *r;
	cJSON_ArrayForEach(r, reqs)
	{
		const char *path = cJSON_GetObjectItemCaseSensitive(r, "path")->valuestring;
		if (!strstr(path, "/images/create?") || !strstr(path, want))
			continue;
		if (k < n) {
			const cJSON *h = cJSON_GetObjectItemCaseSensitive(
				cJSON_GetObjectItemCaseSensitive(r, "headers"), "x-registry-auth");
			auth[k][0] = '\0';
			if (cJSON_IsString(h)) {
				/* base64url with padding -> base64 */
				char b64[1024];
				snprintf(b64, sizeof b64, "%s", h->valuestring);
				for (char *p = b64; *p; p++)
					*p = *p == '-' ? '+' : *p == '_' ? '/' : *p;
				size_t olen = 0;
				assert_int_equal(mbedtls_base64_decode((unsigned char *)auth[k], 1023,
								       &olen, (unsigned char *)b64,
								       strlen(b64)), 0);
				auth[k][olen] = '\0';
			}
		}
		k++;
	}
	cJSON_Delete(reqs);
	return k;
}

/* ---- fixture ---- */

struct got {
	int done;
	enum docker_error error;
	char message[1100];
	char digest[100];
};

struct fix {
	struct ev_loop *loop;
	struct http_client *http;
	struct docker *docker;
	struct registryauth *ra;
	struct got g[3];
};

static void on_done(const struct docker_result *r, void *arg)
{
	struct got *g = arg;
	g->done++;
	g->error = r->error;
	snprintf(g->message, sizeof g->message, "%s", r->message ? r->message : "");
	snprintf(g->digest, sizeof g->digest, "%s", r->digest ? r->digest : "");
}

static void wait_done(struct fix *f, struct got *g)
{
	int64_t deadline = clock_mono_ms() + 30000;
	while (!g->done && clock_mono_ms() < deadline)
		ev_run(f->loop, EVRUN_ONCE);
	assert_int_equal(g->done, 1);
}

static struct registryauth *make(struct fix *f, const char *account)
{
	char endpoint[64];
	snprintf(endpoint, sizeof endpoint, "http://127.0.0.1:%d", ecr_fake.port);
	struct registryauth_opts o = {
		.loop = f->loop, .http = f->http, .docker = f->docker, .endpoint = endpoint,
		.extra_host = EXTRA, .extra_region = "us-east-1", .extra_account = account,
	};
	struct err err = {{0}};
	struct registryauth *ra = registryauth_new(&o, &err);
	if (!ra)
		fail_msg("registryauth_new: %s", err.msg);
	return ra;
}

static int setup(void **state)
{
	struct fix *f = calloc(1, sizeof *f);
	log_init("test", LOG_LEVEL_ERROR, 0);
	setenv("AWS_ACCESS_KEY_ID", AKID, 1);
	setenv("AWS_SECRET_ACCESS_KEY", SECRET, 1);
	unsetenv("AWS_SESSION_TOKEN");
	setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/slipway-test", 1);
	setenv("AWS_EC2_METADATA_DISABLED", "true", 1);
	fakes_start();
	f->loop = ev_loop_new(EVFLAG_AUTO);
	f->http = http_client_new(f->loop);
	struct docker_opts dopts = {.socket_path = engine_fake.sock};
	f->docker = docker_new(f->loop, f->http, &dopts);
	assert_non_null(f->docker);
	f->ra = make(f, ACCOUNT);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;
	registryauth_free(f->ra);
	docker_free(f->docker);
	http_client_free(f->http);
	ev_loop_destroy(f->loop);
	fakes_stop();
	free(f);
	return 0;
}

/* ---- which images ---- */

static void test_match(void **state)
{
	struct fix *f = *state;
	char id[13], region[64];
	assert_int_equal(registryauth_match(f->ra, "210987654321.dkr.ecr.eu-west-1.amazonaws.com/"
					    "slipway/web:web.b_1@sha256:00", id, region), 1);
	assert_string_equal(id, "210987654321");
	assert_string_equal(region, "eu-west-1");
	assert_int_equal(registryauth_match(f->ra, "210987654321.dkr.ecr-fips.us-gov-west-1."
					    "amazonaws.com/x:1", id, region), 1);
	assert_string_equal(region, "us-gov-west-1");
	assert_int_equal(registryauth_match(f->ra, "210987654321.dkr.ecr.cn-north-1.amazonaws.com.cn"
					    "/x:1", id, region), 1);
	assert_string_equal(region, "cn-north-1");
	/* The extra host: its configured region and account. */
	assert_int_equal(registryauth_match(f->ra, EXTRA "/slipway/web:v1", id, region), 1);
	assert_string_equal(id, ACCOUNT);
	assert_string_equal(region, "us-east-1");
	/* Not ECR: Docker Hub, another registry, a look-alike, the extra host's neighbour. */
	assert_int_equal(registryauth_match(f->ra, "nginx:1.27", id, region), 0);
	assert_int_equal(registryauth_match(f->ra, "registry.example:5000/web:v1", id, region), 0);
	assert_int_equal(registryauth_match(f->ra, "210987654321.dkr.ecr.eu-west-1.evil.com/x:1", id,
					    region), 0);
	assert_int_equal(registryauth_match(f->ra, "127.0.0.1:59970/web:v1", id, region), 0);
	assert_int_equal(registryauth_match(f->ra, "127.0.0.1:599/web:v1", id, region), 0);
}

static void test_bad_settings(void **state)
{
	struct fix *f = *state;
	struct err err = {{0}};
	struct registryauth_opts o = {.loop = f->loop, .http = f->http, .docker = f->docker,
				      .extra_host = EXTRA};
	assert_null(registryauth_new(&o, &err));
	assert_non_null(strstr(err.msg, "ecr.region"));
	o.extra_region = "us-east-1";
	o.extra_account = "12345";
	assert_null(registryauth_new(&o, &err));
	assert_non_null(strstr(err.msg, "12 digits"));
	o.extra_account = NULL;
	o.extra_host = EXTRA "/path";
	assert_null(registryauth_new(&o, &err));
	/* No extra host at all: fine (ECR hosts are recognised anyway). */
	o.extra_host = NULL;
	o.extra_region = NULL;
	struct registryauth *ra = registryauth_new(&o, &err);
	assert_non_null(ra);
	registryauth_free(ra);
}

/* What Docker says when a registry refuses credentials (worth one retry with
 * a new token), and what it says about other failures (not). Messages as
 * Docker 20.10..29 and ECR word them. */
static void test_denied_messages(void **state)
{
	(void)state;
	static const char *const denied[] = {
		"Head \"https://1.dkr.ecr.eu-west-1.amazonaws.com/v2/web/manifests/v1\": "
		"no basic auth credentials",
		"unauthorized: authentication required",
		"denied: Your authorization token has expired. Reauthenticate and try again.",
		"pull access denied for web, repository does not exist or may require 'docker login'",
		"error parsing HTTP 401 Unauthorized response body",
		"UNAUTHORIZED: access to the requested resource is not authorized",
	};
	static const char *const other[] = {
		"manifest for web:v9 not found: manifest unknown: manifest unknown",
		"Get \"http://127.0.0.1:5000/v2/\": dial tcp 127.0.0.1:5000: connect: connection "
		"refused",
		"context deadline exceeded",
		"",
	};
	for (size_t i = 0; i < sizeof denied / sizeof denied[0]; i++)
		assert_true(ecr_docker_denied(denied[i]));
	for (size_t i = 0; i < sizeof other / sizeof other[0]; i++)
		assert_false(ecr_docker_denied(other[i]));
	assert_false(ecr_docker_denied(NULL));
}

/* ---- pulls ---- */

static void test_ecr_pull_logs_in(void **state)
{
	struct fix *f = *state;
	struct got *a = &f->g[0], *b = &f->g[1], *c = &f->g[2];
	/* Two pulls from the registry at once (one token), one from elsewhere. */
	assert_true(registryauth_pull(f->ra, EXTRA "/slipway/web:v1", 0, NULL, on_done, a) > 0);
	assert_true(registryauth_pull(f->ra, EXTRA "/slipway/api:v1", 0, NULL, on_done, b) > 0);
	assert_true(registryauth_pull(f->ra, "registry.example:5000/web:v1", 0, NULL, on_done, c) >
		    0);
	assert_int_equal(a->done + b->done + c->done, 0); /* never from inside the call */
	wait_done(f, a);
	wait_done(f, b);
	wait_done(f, c);
	assert_int_equal(a->error, DOCKER_OK);
	assert_int_equal(b->error, DOCKER_OK);
	assert_int_equal(c->error, DOCKER_OK);
	assert_true(strncmp(a->digest, "sha256:", 7) == 0);
	assert_int_equal(registryauth_fetches(f->ra), 1);

	char auth[2][1024];
	assert_int_equal(pull_auths(EXTRA "/slipway/web", auth, 2), 1);
	cJSON *doc = cJSON_Parse(auth[0]);
	assert_non_null(doc);
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(doc, "username")->valuestring, "AWS");
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(doc, "serveraddress")->valuestring,
			    PROXY);
	const char *pw = cJSON_GetObjectItemCaseSensitive(doc, "password")->valuestring;
	assert_true(live_password(pw));
	char second[2][1024];
	assert_int_equal(pull_auths(EXTRA "/slipway/api", second, 2), 1);
	assert_string_equal(second[0], auth[0]); /* the same token */
	cJSON_Delete(doc);

	/* The other registry got no credentials (docker.c sends the empty document). */
	assert_int_equal(pull_auths("registry.example:5000/web", auth, 2), 1);
	assert_string_equal(auth[0], "{}");

	/* The token was asked for the configured account, by our key. */
	cJSON *toks = ctl(false, "GET", "/_fake/tokens");
	const cJSON *t0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(toks, "tokens"), 0);
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(t0, "registry")->valuestring, ACCOUNT);
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(t0, "akid")->valuestring, AKID);
	cJSON_Delete(toks);

	/* Later pulls reuse the cached token. */
	memset(a, 0, sizeof *a);
	assert_true(registryauth_pull(f->ra, EXTRA "/slipway/web:v1", 0, NULL, on_done, a) > 0);
	wait_done(f, a);
	assert_int_equal(a->error, DOCKER_OK);
	assert_int_equal(registryauth_fetches(f->ra), 1);
}

static void test_failed_login_fails_pull(void **state)
{
	struct fix *f = *state;
	/* A registry of another account: the fake will not hand out its token. */
	struct registryauth *foreign = make(f, "210987654321");
	struct got *a = &f->g[0];
	assert_true(registryauth_pull(foreign, EXTRA "/slipway/web:v1", 0, NULL, on_done, a) > 0);
	wait_done(f, a);
	assert_int_equal(a->error, DOCKER_ERR_DENIED);
	assert_non_null(strstr(a->message, "no ECR login for " EXTRA));
	assert_non_null(strstr(a->message, "GetAuthorizationToken"));
	registryauth_free(foreign);
	/* Nothing reached the engine for it. */
	char auth[1][1024];
	assert_int_equal(pull_auths(EXTRA "/slipway/web", auth, 1), 0);

	/* Wrong credentials: refused at the signature check. */
	setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret", 1);
	struct registryauth *wrong = make(f, ACCOUNT);
	struct got *b = &f->g[1];
	assert_true(registryauth_pull(wrong, EXTRA "/slipway/web:v1", 0, NULL, on_done, b) > 0);
	wait_done(f, b);
	assert_int_equal(b->error, DOCKER_ERR_DENIED);
	assert_non_null(strstr(b->message, "InvalidSignatureException"));
	registryauth_free(wrong);
	setenv("AWS_SECRET_ACCESS_KEY", SECRET, 1);
}

static void test_engine_errors_pass_through(void **state)
{
	struct fix *f = *state;
	/* A missing manifest is no login problem: reported as the engine said it,
	 * with no second token. */
	struct got *a = &f->g[0];
	assert_true(registryauth_pull(f->ra, EXTRA "/slipway/web:missing", 0, NULL, on_done, a) > 0);
	wait_done(f, a);
	assert_int_equal(a->error, DOCKER_ERR_STREAM);
	assert_non_null(strstr(a->message, "manifest unknown"));
	assert_int_equal(registryauth_fetches(f->ra), 1);
}

static void test_cancel_and_bad_args(void **state)
{
	struct fix *f = *state;
	struct got *a = &f->g[0], *b = &f->g[1];
	assert_int_equal(registryauth_pull(f->ra, "", 0, NULL, on_done, a), 0);
	assert_int_equal(registryauth_pull(f->ra, EXTRA "/x:1", 0, NULL, NULL, a), 0);
	assert_int_equal(registryauth_pull(NULL, EXTRA "/x:1", 0, NULL, on_done, a), 0);
	uint64_t id1 = registryauth_pull(f->ra, EXTRA "/slipway/web:v1", 0, NULL, on_done, a);
	uint64_t id2 = registryauth_pull(f->ra, "registry.example:5000/web:v1", 0, NULL, on_done,
					 b);
	assert_true(id1 > 0 && id2 > 0 && id1 != id2);
	registryauth_cancel(f->ra, id1); /* while the token is fetched */
	registryauth_cancel(f->ra, id2); /* while the engine pulls */
	int64_t until = clock_mono_ms() + 500;
	while (clock_mono_ms() < until)
		ev_run(f->loop, EVRUN_NOWAIT);
	assert_int_equal(a->done + b->done, 0);
	/* In flight at registryauth_free (teardown): no callback, no leak. */
	assert_true(registryauth_pull(f->ra, EXTRA "/slipway/web:v1", 0, NULL, on_done, a) > 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_match, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_settings, setup, teardown),
		cmocka_unit_test(test_denied_messages),
		cmocka_unit_test_setup_teardown(test_ecr_pull_logs_in, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_login_fails_pull, setup, teardown),
		cmocka_unit_test_setup_teardown(test_engine_errors_pass_through, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_and_bad_args, setup, teardown),
	};
	return cmocka_run_group_tests_name("registryauth", tests, NULL, NULL);
}
