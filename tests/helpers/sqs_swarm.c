/*
 * sqs_swarm: N simulated agents on the SQS queue backend, to measure how fast
 * a promoted release reaches all of them through SQS
 * (tests/bench/sqs_scale.sh drives it against a coordinator with
 * queue.backend = sqs and tests/fakes/sqs.py).
 *
 *   sqs_swarm --port P --bootstrap TOKEN --key ADMIN_KEY --agents 1000
 *             --region R --endpoint SQS_URL [--app web] [--pid COORDINATOR_PID]
 *             [--rounds 1]
 *
 * One thread, one libev loop, common/http_client for the coordinator and one
 * common/sqs client (SigV4, credentials from the environment) for every
 * queue. Each agent registers (the answer names its queue), then long-polls
 * its queue (ReceiveMessage, WaitTimeSeconds 20); a release is promoted
 * through the API and the time until each agent has received its job is
 * recorded; each agent acknowledges to the coordinator, then deletes the
 * message; the round ends when the rollout succeeded. With --pid, the
 * coordinator's Private_Clean + Private_Dirty (smaps_rollup) is read once
 * every agent registered and after each round. Prints figures and a last line
 * "RESULT {json}"; exits 1 on any failure.
 */
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "aws_credentials.h"
#include "crypto.h"
#include "http_client.h"
#include "log.h"
#include "sqs.h"

#define REG_WINDOW 100

struct sa {
	int idx;
	char id[80];
	char auth[200];          /* "Authorization: Bearer <token>" */
	char url[512];
	int receiving;
	int got;                 /* this round's job arrived */
	double got_at;
	ev_timer retry;
};

/* One job message on its way: ack, then delete. */
struct pending {
	struct sa *a;
	char receipt[1024];
	int count_ack;           /* a job of this round */
};

static struct ev_loop *loop;
static struct http_client *http;
static struct aws_credentials_provider *creds;
static struct sqs *sqs;
static int port;
static const char *boot, *key, *app = "web", *region, *endpoint;
static char key_auth[200];
static int n_agents = 1000, rounds = 1;
static long coord_pid;
static struct sa *agents;
static int reg_next, registered, failures;
static int round_no, got_count, acked_count;
static double t_start, t_promote, t_registered, t_all_acked, worst_ms, lat_p50, lat_p99, round_max;
static long mem_reg_kb = -1, mem_after_kb = -1;
static double promote_wall; /* wall clock (s) of the last promotion */
static char rollout_id[80], run_tag[16];
static ev_timer tick;
static int phase; /* 0 register, 1 settle, 2 promoted, 3 rollout done, 4 finished */
static int round_reported;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static long private_kb(void)
{
	if (!coord_pid)
		return -1;
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/%ld/smaps_rollup", coord_pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	long total = 0, v;
	while (fgets(line, sizeof line, f)) {
		if (sscanf(line, "Private_Clean: %ld kB", &v) == 1 ||
		    sscanf(line, "Private_Dirty: %ld kB", &v) == 1)
			total += v;
	}
	fclose(f);
	return total;
}

static void fail(const char *what, const char *detail)
{
	failures++;
	if (failures <= 10)
		fprintf(stderr, "failure: %s: %s\n", what, detail ? detail : "");
}

static void coord_call(const char *method, const char *path, const char *auth, const char *body,
		       http_done_fn done, void *arg)
{
	char url[512];
	snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
	const char *headers[] = {auth, "Content-Type: application/json", "Slipway-Protocol: 1",
				 NULL};
	struct http_request r = {.method = method, .url = url, .headers = headers,
				 .body = body, .body_len = body ? strlen(body) : 0,
				 .timeout_ms = 60000, .max_body = (size_t)16 << 20,
				 .on_done = done, .arg = arg};
	if (!http_client_start(http, &r))
		fail("request", path);
}

/* ---- receiving, acking, deleting ---- */

static void receive(struct sa *a);

static void on_deleted(const struct sqs_result *res, void *arg)
{
	struct pending *p = arg;
	if (res->status != SQS_OK)
		fail("DeleteMessage", res->error_code);
	else if (p->count_ack && ++acked_count == n_agents)
		t_all_acked = now();
	free(p);
}

static void on_acked(const struct http_response *resp, void *arg)
{
	struct pending *p = arg;
	if (resp->status != 200) {
		fail("ack", resp->body);
		free(p);
		return;
	}
	if (!sqs_delete_message(sqs, p->a->url, p->receipt, on_deleted, p)) {
		fail("DeleteMessage", "not started");
		free(p);
	}
}

static void handle(struct sa *a, const struct sqs_message *m)
{
	cJSON *job = cJSON_ParseWithLength(m->body, m->body_len);
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(job, "id");
	const cJSON *lease = cJSON_GetObjectItemCaseSensitive(job, "lease_id");
	const cJSON *gen = cJSON_GetObjectItemCaseSensitive(job, "generation");
	if (!cJSON_IsString(id) || !cJSON_IsString(lease) || !cJSON_IsNumber(gen)) {
		fail("job", m->body);
		cJSON_Delete(job);
		return;
	}
	struct pending *p = calloc(1, sizeof *p);
	p->a = a;
	snprintf(p->receipt, sizeof p->receipt, "%s", m->receipt_handle);
	if (phase == 2 && !a->got && (int)gen->valuedouble == round_no) {
		a->got = 1;
		a->got_at = now();
		got_count++;
		p->count_ack = 1;
	}
	char path[256], body[256];
	snprintf(path, sizeof path, "/v1/agents/%s/jobs/%s/ack", a->id, id->valuestring);
	snprintf(body, sizeof body, "{\"lease_id\":\"%s\",\"result\":\"succeeded\","
		 "\"generation\":%.0f}", lease->valuestring, gen->valuedouble);
	coord_call("POST", path, a->auth, body, on_acked, p);
	cJSON_Delete(job);
}

static void on_received(const struct sqs_result *res, void *arg)
{
	struct sa *a = arg;
	a->receiving = 0;
	if (res->status != SQS_OK) {
		fail("ReceiveMessage", res->error_code);
		ev_timer_set(&a->retry, 1.0, 0.0);
		ev_timer_start(loop, &a->retry);
		return;
	}
	if (phase < 4)
		receive(a);
	for (size_t i = 0; i < res->message_count; i++)
		handle(a, &res->messages[i]);
}

static void receive(struct sa *a)
{
	struct sqs_receive_opts o = {.max_messages = 10, .wait_s = 20, .visibility_s = -1};
	a->receiving = 1;
	if (!sqs_receive(sqs, a->url, &o, on_received, a)) {
		a->receiving = 0;
		fail("ReceiveMessage", "not started");
	}
}

static void retry_cb(struct ev_loop *l, ev_timer *t, int revents)
{
	(void)l;
	(void)revents;
	ev_timer_stop(loop, t);
	receive(t->data);
}

/* ---- registration ---- */

static void register_next(void);

static void on_registered(const struct http_response *resp, void *arg)
{
	struct sa *a = arg;
	cJSON *j = resp->status == 200 ? cJSON_Parse(resp->body) : NULL;
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "agent_id");
	const cJSON *tok = cJSON_GetObjectItemCaseSensitive(j, "token");
	const cJSON *url = cJSON_GetObjectItemCaseSensitive(j, "queue_url");
	if (!cJSON_IsString(id) || !cJSON_IsString(tok) || !cJSON_IsString(url)) {
		fail("register (no queue_url?)", resp->body);
	} else {
		snprintf(a->id, sizeof a->id, "%s", id->valuestring);
		snprintf(a->auth, sizeof a->auth, "Authorization: Bearer %s", tok->valuestring);
		snprintf(a->url, sizeof a->url, "%s", url->valuestring);
		registered++;
		receive(a);
	}
	cJSON_Delete(j);
	register_next();
}

static void register_next(void)
{
	if (reg_next >= n_agents)
		return;
	struct sa *a = &agents[reg_next++];
	char body[256];
	snprintf(body, sizeof body, "{\"instance_id\":\"i-%s%05d\",\"hostname\":\"swarm-%d\","
		 "\"fleet\":\"default\",\"version\":\"0.1.0\",\"protocol\":1}", run_tag, a->idx,
		 a->idx);
	char auth[200];
	snprintf(auth, sizeof auth, "Authorization: Bearer %s", boot);
	coord_call("POST", "/v1/agents/register", auth, body, on_registered, a);
}

/* ---- rounds ---- */

static int cmp_double(const void *x, const void *y)
{
	double a = *(const double *)x, b = *(const double *)y;
	return a < b ? -1 : a > b;
}

static void finish_round(void)
{
	double *lat = calloc((size_t)n_agents, sizeof *lat);
	for (int i = 0; i < n_agents; i++)
		lat[i] = (agents[i].got_at - t_promote) * 1000;
	qsort(lat, (size_t)n_agents, sizeof *lat, cmp_double);
	lat_p50 = lat[n_agents / 2];
	lat_p99 = lat[(n_agents * 99) / 100 < n_agents ? (n_agents * 99) / 100 : n_agents - 1];
	round_max = lat[n_agents - 1];
	if (round_max > worst_ms)
		worst_ms = round_max;
	printf("round %d: the release reached all %d agents through SQS in %.1f ms "
	       "(p50 %.1f ms, p99 %.1f ms)\n", round_no, n_agents, round_max, lat_p50, lat_p99);
	fflush(stdout);
	free(lat);
}

static void promote(void);

static void on_rollout(const struct http_response *resp, void *arg)
{
	(void)arg;
	cJSON *j = resp->status == 200 ? cJSON_Parse(resp->body) : NULL;
	const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "state");
	char state[32];
	snprintf(state, sizeof state, "%s", cJSON_IsString(st) ? st->valuestring : "?");
	if (strcmp(state, "running") == 0 || acked_count < n_agents) {
		cJSON_Delete(j);
		ev_timer_set(&tick, 0.05, 0.0);
		ev_timer_start(loop, &tick);
		return;
	}
	if (strcmp(state, "succeeded") != 0)
		fail("rollout", state);
	cJSON_Delete(j);
	mem_after_kb = private_kb();
	printf("round %d: every agent acknowledged %.0f ms after the promotion; rollout %s; "
	       "coordinator private memory %ld kB\n", round_no, (t_all_acked - t_promote) * 1000,
	       state, mem_after_kb);
	fflush(stdout);
	if (round_no < rounds && !failures) {
		promote();
		return;
	}
	phase = 4;
	ev_break(loop, EVBREAK_ALL);
}

static void on_promoted(const struct http_response *resp, void *arg)
{
	(void)arg;
	cJSON *j = resp->status == 202 || resp->status == 200 ? cJSON_Parse(resp->body) : NULL;
	const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "rollout");
	if (!cJSON_IsString(r)) {
		fail("promote", resp->body);
		cJSON_Delete(j);
		phase = 4;
		ev_break(loop, EVBREAK_ALL);
		return;
	}
	snprintf(rollout_id, sizeof rollout_id, "%s", r->valuestring);
	cJSON_Delete(j);
}

static void promote(void)
{
	round_no++;
	got_count = 0;
	acked_count = 0;
	round_reported = 0;
	rollout_id[0] = '\0';
	for (int i = 0; i < n_agents; i++)
		agents[i].got = 0;
	phase = 2;
	char body[512], path[128];
	snprintf(body, sizeof body,
		 "{\"services\":{\"web\":{\"image\":\"registry.local:5000/web:v%d\",\"port\":8080,"
		 "\"health\":{\"type\":\"http\",\"path\":\"/health\"}}},\"description\":\"swarm "
		 "round %d\"}", round_no, round_no);
	snprintf(path, sizeof path, "/v1/apps/%s/releases", app);
	struct timespec wall;
	clock_gettime(CLOCK_REALTIME, &wall);
	promote_wall = (double)wall.tv_sec + wall.tv_nsec / 1e9;
	t_promote = now();
	coord_call("POST", path, key_auth, body, on_promoted, NULL);
	ev_timer_set(&tick, 0.005, 0.0);
	ev_timer_start(loop, &tick);
}

static void tick_cb(struct ev_loop *l, ev_timer *t, int revents)
{
	(void)l;
	(void)revents;
	ev_timer_stop(loop, t);
	if (phase == 0) {
		if (registered + failures >= n_agents) {
			t_registered = now();
			mem_reg_kb = private_kb();
			printf("%d agents registered (each made its queue) in %.0f ms; coordinator "
			       "private memory %ld kB\n", registered, (t_registered - t_start) * 1000,
			       mem_reg_kb);
			fflush(stdout);
			if (registered < n_agents) {
				phase = 4;
				ev_break(loop, EVBREAK_ALL);
				return;
			}
			phase = 1;
			/* Let every long poll reach the fake before the promotion. */
			ev_timer_set(t, 2.0, 0.0);
		} else {
			ev_timer_set(t, 0.05, 0.0);
		}
		ev_timer_start(loop, t);
		return;
	}
	if (phase == 1) {
		promote();
		return;
	}
	if (phase == 2) {
		if (got_count >= n_agents && !round_reported) {
			round_reported = 1;
			finish_round();
		}
		if (round_reported && rollout_id[0]) {
			char path[160];
			snprintf(path, sizeof path, "/v1/apps/%s/rollouts/%s", app, rollout_id);
			coord_call("GET", path, key_auth, NULL, on_rollout, NULL);
			return;
		}
		if (now() - t_promote > 120) {
			fail("round", "not every agent got its job within 120 s");
			phase = 4;
			ev_break(loop, EVBREAK_ALL);
			return;
		}
		ev_timer_set(t, 0.002, 0.0);
		ev_timer_start(loop, t);
	}
}

int main(int argc, char **argv)
{
	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--port") == 0)
			port = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--bootstrap") == 0)
			boot = argv[i + 1];
		else if (strcmp(argv[i], "--key") == 0)
			key = argv[i + 1];
		else if (strcmp(argv[i], "--agents") == 0)
			n_agents = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--app") == 0)
			app = argv[i + 1];
		else if (strcmp(argv[i], "--pid") == 0)
			coord_pid = atol(argv[i + 1]);
		else if (strcmp(argv[i], "--rounds") == 0)
			rounds = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--region") == 0)
			region = argv[i + 1];
		else if (strcmp(argv[i], "--endpoint") == 0)
			endpoint = argv[i + 1];
	}
	if (!port || !boot || !key || !region || !endpoint || n_agents < 1 || rounds < 1) {
		fprintf(stderr, "usage: sqs_swarm --port P --bootstrap T --key K --region R "
				"--endpoint URL [--agents N] [--app A] [--pid PID] [--rounds R]\n");
		return 2;
	}
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	log_init("sqs_swarm", LOG_LEVEL_ERROR, 0);
	crypto_random_hex(run_tag, 4);
	snprintf(key_auth, sizeof key_auth, "Authorization: Bearer %s", key);
	loop = ev_default_loop(0);
	http = http_client_new(loop);
	struct err err = {{0}};
	struct aws_credentials_opts co = {.no_file = 1, .no_imds = 1};
	struct sqs_opts so = {.region = region, .endpoint = endpoint, .timeout_ms = 30000};
	if (!http || !(creds = aws_credentials_new(loop, http, &co, &err)) ||
	    !(sqs = sqs_new(loop, http, creds, &so, &err))) {
		fprintf(stderr, "sqs_swarm: %s\n", err.msg);
		return 1;
	}
	agents = calloc((size_t)n_agents, sizeof *agents);
	for (int i = 0; i < n_agents; i++) {
		agents[i].idx = i;
		ev_timer_init(&agents[i].retry, retry_cb, 1.0, 0.0);
		agents[i].retry.data = &agents[i];
	}
	t_start = now();
	for (int i = 0; i < REG_WINDOW; i++)
		register_next();
	ev_timer_init(&tick, tick_cb, 0.05, 0.0);
	ev_timer_start(loop, &tick);
	ev_run(loop, 0);
	printf("RESULT {\"agents\":%d,\"rounds\":%d,\"p50_ms\":%.1f,\"p99_ms\":%.1f,\"max_ms\":%.1f,"
	       "\"all_acked_ms\":%.1f,\"private_kb_registered\":%ld,\"private_kb_after\":%ld,"
	       "\"failures\":%d,\"promote_wall_s\":%.3f}\n",
	       n_agents, round_no, lat_p50, lat_p99, worst_ms, (t_all_acked - t_promote) * 1000,
	       mem_reg_kb, mem_after_kb, failures, promote_wall);
	for (int i = 0; i < n_agents; i++)
		ev_timer_stop(loop, &agents[i].retry);
	sqs_free(sqs);
	aws_credentials_free(creds);
	http_client_free(http);
	free(agents);
	return failures || round_no < rounds ? 1 : 0;
}
