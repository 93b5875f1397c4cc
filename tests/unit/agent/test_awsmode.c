/*
 * awsmode: the agent's AWS settings and its identity prover, against
 * tests/fakes/imds.py (the instance role's credentials). The proofs it makes
 * are checked with the coordinator's own checker (sts_proof_check): signed
 * for aws.server_id, else host[:port] of coordinator.url, pointing at
 * aws.sts_endpoint, a new nonce each time. Without credentials the prover
 * says why; a withdrawn ask is never answered; --check's rules; nothing on,
 * no awsmode at all; metadata.block = auto follows AWS mode. coord_client
 * registers with the prover and no bootstrap token, a new proof per attempt. (The scale-in steps run in
 * tests/integration/test_agent_scalein.py against real containers.)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ev.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "agent.h"
#include "aws_credentials.h"
#include "awsmode.h"
#include "clock.h"
#include "config.h"
#include "coord_client.h"
#include "fakeproc.h"
#include "http_client.h"
#include "httpd.h"
#include "log.h"
#include "settings.h"
#include "sts.h"
#include "worker.h"

#define AKID "ASIAAWSMODETEST00001"
#define SECRET "awsmode-test-secret"
#define STS "https://sts.eu-west-1.amazonaws.com"

static struct fakeproc imds;

static void imds_start(void)
{
	const char *args[] = {"--access-key-id", AKID, "--secret-access-key", SECRET, "--token",
			      "awsmode-session", NULL};
	assert_int_equal(fakeproc_start(&imds, "imds.py", args), 0);
	setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.base, 1);
}

/* POST /_control to the fake (blocking; the answer is read and dropped). */
static void imds_control(const char *json)
{
	free(fakeproc_http(&imds, "POST", "/_control", json));
}

static int group_setup(void **state)
{
	(void)state;
	log_init("test_awsmode", LOG_LEVEL_ERROR, 0);
	unsetenv("AWS_ACCESS_KEY_ID");
	unsetenv("AWS_SECRET_ACCESS_KEY");
	unsetenv("AWS_SESSION_TOKEN");
	unsetenv("AWS_PROFILE");
	unsetenv("AWS_EC2_METADATA_DISABLED");
	setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/slipway-test-credentials", 1);
	imds_start();
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	fakeproc_stop(&imds);
	return 0;
}

/* ---- an agent with just enough for awsmode ---- */

struct fx {
	struct agent a;
	struct config *cfg;
};

static struct config *load(const char *extra, struct err *err)
{
	char text[2048];
	snprintf(text, sizeof text, "coordinator.url = \"http://10.0.0.5:8700\"\n"
		 "agent.state_dir = \"/tmp\"\n%s", extra);
	return config_load_buffer(agent_settings, agent_settings_count, text, strlen(text),
				  "test.conf", NULL, err);
}

static void fx_open(struct fx *f, const char *extra)
{
	struct err err = {{0}};
	memset(f, 0, sizeof *f);
	f->cfg = load(extra, &err);
	assert_non_null(f->cfg);
	f->a.cfg = f->cfg;
	f->a.loop = ev_default_loop(0);
	f->a.http = http_client_new(f->a.loop);
	assert_non_null(f->a.http);
	f->a.set.network = "slipway";
	f->a.set.name_prefix = "slipway";
}

static void fx_close(struct fx *f)
{
	awsmode_free(f->a.awsmode);
	aws_credentials_free(f->a.aws);
	http_client_free(f->a.http);
	config_free(f->cfg);
}

struct answer {
	int calls;
	cJSON *proof;
	char error[512];
};

static void on_ready(void *arg, const cJSON *proof, const char *error)
{
	struct answer *an = arg;
	an->calls++;
	an->proof = proof ? cJSON_Duplicate(proof, 1) : NULL;
	snprintf(an->error, sizeof an->error, "%s", error ? error : "");
}

static void wait_answer(struct fx *f, struct answer *an)
{
	int64_t end = clock_mono_ms() + 10000;
	while (!an->calls && clock_mono_ms() < end)
		ev_run(f->a.loop, EVRUN_ONCE);
	assert_int_equal(an->calls, 1);
}

/* ---- tests ---- */

static void test_proofs(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f, "coordinator.aws_identity = true\naws.region = \"eu-west-1\"\n"
		    "metadata.block = \"off\"\n");
	struct err err = {{0}};
	assert_int_equal(awsmode_new(&f.a, "i-0123456789abcdef0", false, &err), 0);
	assert_non_null(f.a.awsmode);
	assert_non_null(f.a.aws); /* made here: logs had none */
	struct coord_prover p = awsmode_prover(f.a.awsmode);
	assert_non_null(p.prove);
	struct answer a1 = {0}, a2 = {0};
	p.prove(p.ctx, on_ready, &a1);
	assert_int_equal(a1.calls, 0); /* never from inside prove */
	wait_answer(&f, &a1);
	p.prove(p.ctx, on_ready, &a2);
	wait_answer(&f, &a2);
	assert_non_null(a1.proof);
	assert_non_null(a2.proof);
	/* The coordinator's checker takes it: default endpoint of the region, the
	 * server name host:port of coordinator.url. */
	struct sts_checked c1, c2;
	int rc = sts_proof_check(a1.proof, STS, "10.0.0.5:8700", clock_wall_ms(), &c1, &err);
	if (rc < 0)
		fail_msg("proof refused: %s", err.msg);
	assert_int_equal(sts_proof_check(a2.proof, STS, "10.0.0.5:8700", clock_wall_ms(), &c2,
					 &err), 0);
	assert_string_equal(c1.server, "10.0.0.5:8700");
	assert_true(c1.expires_ms - clock_wall_ms() <= AWSMODE_PROOF_EXPIRES_S * 1000 + 1000);
	assert_string_not_equal(c1.nonce, c2.nonce);
	assert_string_not_equal(c1.signature, c2.signature);
	/* The instance role's session token travels; its secret never does. */
	char *text = cJSON_PrintUnformatted(a1.proof);
	assert_non_null(strstr(text, AKID));
	assert_null(strstr(text, SECRET));
	assert_int_equal(sts_proof_check(a1.proof, STS, "another:8700", clock_wall_ms(), &c1,
					 &err), -1);
	free(text);
	cJSON_Delete(a1.proof);
	cJSON_Delete(a2.proof);
	fx_close(&f);
}

static void test_configured_names(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f, "coordinator.aws_identity = true\naws.region = \"eu-west-1\"\n"
		    "aws.sts_endpoint = \"http://127.0.0.1:4599\"\naws.server_id = \"my-stack\"\n"
		    "metadata.block = \"off\"\n");
	struct err err = {{0}};
	assert_int_equal(awsmode_new(&f.a, "i-0123456789abcdef0", false, &err), 0);
	struct coord_prover p = awsmode_prover(f.a.awsmode);
	struct answer an = {0};
	p.prove(p.ctx, on_ready, &an);
	wait_answer(&f, &an);
	struct sts_checked c;
	assert_int_equal(sts_proof_check(an.proof, "http://127.0.0.1:4599", "my-stack",
					 clock_wall_ms(), &c, &err), 0);
	assert_int_equal(sts_proof_check(an.proof, STS, "my-stack", clock_wall_ms(), &c, &err),
			 -1);
	cJSON_Delete(an.proof);
	fx_close(&f);
}

static void test_no_credentials_and_cancel(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f, "coordinator.aws_identity = true\naws.region = \"eu-west-1\"\n"
		    "metadata.block = \"off\"\n");
	struct err err = {{0}};
	assert_int_equal(awsmode_new(&f.a, "i-0123456789abcdef0", false, &err), 0);
	struct coord_prover p = awsmode_prover(f.a.awsmode);
	/* A withdrawn ask is never answered. */
	struct answer gone = {0}, an = {0};
	p.prove(p.ctx, on_ready, &gone);
	p.cancel(p.ctx, &gone);
	imds_control("{\"role\": null}");
	p.prove(p.ctx, on_ready, &an);
	wait_answer(&f, &an);
	imds_control("{\"role\": \"slipway-test-role\"}");
	assert_null(an.proof);
	assert_true(an.error[0]);
	assert_int_equal(gone.calls, 0);
	/* An ask left pending when the awsmode goes is dropped silently. */
	struct answer left = {0};
	p.prove(p.ctx, on_ready, &left);
	fx_close(&f);
	assert_int_equal(left.calls, 0);
}

static void test_check_and_off(void **state)
{
	(void)state;
	struct err err = {{0}};
	struct config *c = load("", &err);
	assert_non_null(c);
	assert_int_equal(awsmode_check(c, &err), -1);
	assert_non_null(strstr(err.msg, "coordinator.bootstrap_token"));
	config_free(c);
	c = load("coordinator.bootstrap_token = \"boot-token\"\nlifecycle.enabled = true\n"
		 "lifecycle.hook_name = \"bad hook!\"\n", &err);
	assert_non_null(c);
	assert_int_equal(awsmode_check(c, &err), -1);
	config_free(c);
	c = load("coordinator.aws_identity = true\nmetadata.address = \"metadata\"\n", &err);
	assert_non_null(c);
	assert_int_equal(awsmode_check(c, &err), -1);
	assert_non_null(strstr(err.msg, "metadata.address"));
	config_free(c);
	c = load("coordinator.aws_identity = true\nlifecycle.enabled = true\n", &err);
	assert_non_null(c);
	assert_int_equal(awsmode_check(c, &err), 0);
	config_free(c);

	/* Nothing on (the block's auto off EC2): no awsmode, no credentials. */
	struct fx f;
	fx_open(&f, "coordinator.bootstrap_token = \"boot-token\"\n");
	assert_int_equal(awsmode_new(&f.a, "web-1", false, &err), 0);
	assert_null(f.a.awsmode);
	assert_null(f.a.aws);
	assert_null(awsmode_prover(f.a.awsmode).prove);
	awsmode_container_started(f.a.awsmode, "0123456789abcdef"); /* NULL is fine */
	fx_close(&f);
	/* metadata.block = auto is on with AWS mode even when the instance id was
	 * configured (the stack's user data names it): here it fails for want of
	 * a Docker client, which shows it was wanted. */
	fx_open(&f, "coordinator.aws_identity = true\naws.region = \"eu-west-1\"\n");
	assert_int_equal(awsmode_new(&f.a, "i-0123456789abcdef0", false, &err), -1);
	assert_non_null(strstr(err.msg, "metadata block"));
	assert_null(f.a.awsmode);
	fx_close(&f);
	/* The region from the instance metadata when no setting names one. */
	fx_open(&f, "coordinator.aws_identity = true\nmetadata.block = \"off\"\n");
	imds_control("{\"region\": \"ap-southeast-2\"}");
	assert_int_equal(awsmode_new(&f.a, "i-0123456789abcdef0", true, &err), 0);
	struct coord_prover p = awsmode_prover(f.a.awsmode);
	struct answer an = {0};
	p.prove(p.ctx, on_ready, &an);
	wait_answer(&f, &an);
	struct sts_checked ck;
	assert_int_equal(sts_proof_check(an.proof, "https://sts.ap-southeast-2.amazonaws.com",
					 "10.0.0.5:8700", clock_wall_ms(), &ck, &err), 0);
	cJSON_Delete(an.proof);
	fx_close(&f);
}

/* ---- coord_client with the prover: a stand-in coordinator ---- */

struct coordinator {
	int registers;
	bool authorization;          /* any register request carried one */
	char nonces[4][40];
	bool registered;
};

static void coordinator(struct httpd_req *req, void *arg)
{
	struct coordinator *c = arg;
	if (strcmp(req->path, "/v1/agents/register") != 0) {
		/* heartbeats, polls */
		httpd_respond(req, 200, "application/json", "{\"jobs\":[]}", 11);
		return;
	}
	for (size_t i = 0; i < req->header_count; i++)
		if (strcasecmp(req->headers[i].name, "Authorization") == 0)
			c->authorization = true;
	cJSON *body = cJSON_Parse(req->body);
	const cJSON *nonce = cJSON_GetObjectItemCaseSensitive(
		cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(
			body, "aws_identity"), "headers"), STS_NONCE_HEADER);
	if (c->registers < 4)
		snprintf(c->nonces[c->registers], sizeof c->nonces[0], "%s",
			 cJSON_IsString(nonce) ? nonce->valuestring : "");
	cJSON_Delete(body);
	/* The first attempt meets an STS outage (503): the agent must come back
	 * with a new proof, since the coordinator takes each signature once. */
	if (c->registers++ == 0) {
		httpd_respond_error(req, 503, "unavailable", "STS: connection refused");
		return;
	}
	const char *ok = "{\"agent_id\":\"ag_1\",\"token\":\"t0123456789\","
			 "\"heartbeat_interval_s\":10,\"lost_after_s\":45,\"lease_s\":60,"
			 "\"poll_wait_s\":1}";
	httpd_respond(req, 200, "application/json", ok, strlen(ok));
}

static void on_registered(void *arg)
{
	((struct coordinator *)arg)->registered = true;
}

static void test_register_with_proof(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f, "coordinator.aws_identity = true\naws.region = \"eu-west-1\"\n"
		    "metadata.block = \"off\"\n");
	struct err err = {{0}};
	assert_int_equal(awsmode_new(&f.a, "i-0123456789abcdef0", false, &err), 0);
	struct coordinator co = {0};
	struct httpd_config hc = {.listen = "127.0.0.1:0", .handler = coordinator, .arg = &co};
	struct httpd *srv = httpd_new(f.a.loop, &hc, &err);
	assert_non_null(srv);
	char dir[] = "/tmp/slipway-awsmode-XXXXXX", url[64];
	assert_non_null(mkdtemp(dir));
	snprintf(url, sizeof url, "http://127.0.0.1:%d", httpd_port(srv));
	struct worker_pool *wp = worker_pool_new(f.a.loop, 1, 16, &err);
	assert_non_null(wp);
	struct coord_client_opts co_opts = {
		.loop = f.a.loop, .http = f.a.http, .workers = wp, .url = url,
		.prover = awsmode_prover(f.a.awsmode), .state_dir = dir,
		.instance_id = "i-0123456789abcdef0", .retry_base_ms = 10, .retry_cap_ms = 50,
		.on_registered = on_registered, .arg = &co,
	};
	struct coord_client *cc = coord_client_new(&co_opts, &err);
	assert_non_null(cc);
	coord_client_start(cc);
	int64_t end = clock_mono_ms() + 10000;
	while (!co.registered && clock_mono_ms() < end)
		ev_run(f.a.loop, EVRUN_ONCE);
	assert_true(co.registered);
	assert_string_equal(coord_client_agent_id(cc), "ag_1");
	assert_int_equal(co.registers, 2);
	assert_false(co.authorization);              /* no bootstrap token at all */
	assert_int_equal(strlen(co.nonces[0]), 32);
	assert_int_equal(strlen(co.nonces[1]), 32);
	assert_string_not_equal(co.nonces[0], co.nonces[1]); /* a new proof per attempt */
	coord_client_free(cc);
	worker_pool_free(wp);
	httpd_free(srv);
	char path[128];
	snprintf(path, sizeof path, "%s/%s", dir, COORD_IDENTITY_FILE);
	unlink(path);
	rmdir(dir);
	fx_close(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_proofs),
		cmocka_unit_test(test_configured_names),
		cmocka_unit_test(test_no_credentials_and_cancel),
		cmocka_unit_test(test_check_and_off),
		cmocka_unit_test(test_register_with_proof),
	};
	return cmocka_run_group_tests_name("awsmode", tests, group_setup, group_teardown);
}
