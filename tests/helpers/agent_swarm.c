/*
 * agent_swarm: N simulated agents long-polling a real coordinator at once, to
 * measure how fast a promoted release reaches all of them
 * (tests/bench/coordinator_scale.sh drives it).
 *
 *   agent_swarm --port P --bootstrap TOKEN --key ADMIN_KEY --agents 1000
 *               [--app web] [--pid COORDINATOR_PID] [--rounds 1]
 *
 * One thread, one libev loop, one keep-alive connection per agent, requests
 * written by hand and answers parsed with http-parser: a thousand agents cost
 * a few megabytes here, so the coordinator gets the CPU. Each agent registers,
 * then polls (wait=30); once the coordinator holds every poll, a release is
 * promoted through the API and the time until each agent holds its job is
 * recorded; each agent acks and polls again; the round ends when the rollout
 * succeeded. With --pid, the coordinator's Private_Clean + Private_Dirty
 * (smaps_rollup) is read while it holds the polls and after each round.
 * Prints figures and a last line "RESULT {json}"; exits 1 on any failure.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "buf.h"

#define REG_WINDOW 100

struct sa;
typedef void (*done_fn)(struct sa *a, int status, const char *body);

struct sa {
	int idx;
	int fd;
	ev_io io;
	struct buf out;
	size_t out_off;
	http_parser parser;
	struct buf body;
	int status;
	int complete;
	int busy;
	done_fn cb;
	char id[80];
	char token[128];
	double polled_at;   /* when the current poll was sent */
	double got_at;      /* when this round's job arrived */
	int got;
	char job[80];
	char lease[80];
};

static struct ev_loop *loop;
static int port;
static const char *boot, *key, *app = "web";
static int n_agents = 1000, rounds = 1;
static long coord_pid;
static struct sa *agents;
static struct sa ctl;
static int registered, reg_next, failures;
static int round_no;
static double t_promote;
static int got_count;
static char rollout_id[80];
static double t_all_acked;
static int phase; /* 0 register, 1 waiting for polls, 2 promoted, 3 done */

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

/* ---- one connection per agent ---- */

static int on_body(http_parser *p, const char *at, size_t len)
{
	struct sa *a = p->data;
	return buf_append(&a->body, at, len) < 0 ? -1 : 0;
}

static int on_complete(http_parser *p)
{
	struct sa *a = p->data;
	a->status = (int)p->status_code;
	a->complete = 1;
	return 0;
}

static http_parser_settings settings = {.on_body = on_body, .on_message_complete = on_complete};

static void fail(struct sa *a, const char *what)
{
	fprintf(stderr, "agent %d: %s\n", a->idx, what);
	failures++;
	ev_break(loop, EVBREAK_ALL);
}

static void io_cb(struct ev_loop *l, ev_io *w, int revents);

static int connect_sa(struct sa *a)
{
	a->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (a->fd < 0)
		return -1;
	int one = 1;
	setsockopt(a->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(a->fd, (struct sockaddr *)&sin, sizeof sin) < 0 && errno != EINPROGRESS) {
		close(a->fd);
		a->fd = -1;
		return -1;
	}
	ev_io_init(&a->io, io_cb, a->fd, EV_READ | EV_WRITE);
	a->io.data = a;
	ev_io_start(loop, &a->io);
	return 0;
}

static void close_sa(struct sa *a)
{
	if (a->fd >= 0) {
		ev_io_stop(loop, &a->io);
		close(a->fd);
		a->fd = -1;
	}
}

static void send_req(struct sa *a, const char *method, const char *path, const char *token,
		     const char *body, done_fn cb)
{
	if (a->busy) {
		fail(a, "request while busy");
		return;
	}
	buf_reset(&a->out);
	a->out_off = 0;
	buf_printf(&a->out,
		   "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nSlipway-Protocol: 1\r\n"
		   "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
		   "Content-Length: %zu\r\n\r\n%s",
		   method, path, token, body ? strlen(body) : 0, body ? body : "");
	a->cb = cb;
	a->busy = 1;
	a->complete = 0;
	buf_reset(&a->body);
	http_parser_init(&a->parser, HTTP_RESPONSE);
	a->parser.data = a;
	if (a->fd < 0 && connect_sa(a) < 0) {
		fail(a, "connect");
		return;
	}
	ev_io_stop(loop, &a->io);
	ev_io_set(&a->io, a->fd, EV_READ | EV_WRITE);
	ev_io_start(loop, &a->io);
}

static void io_cb(struct ev_loop *l, ev_io *w, int revents)
{
	(void)l;
	struct sa *a = w->data;
	if ((revents & EV_WRITE) && a->out_off < a->out.len) {
		ssize_t n = write(a->fd, a->out.data + a->out_off, a->out.len - a->out_off);
		if (n < 0 && errno != EAGAIN && errno != EINPROGRESS && errno != ENOTCONN) {
			fail(a, strerror(errno));
			return;
		}
		if (n > 0)
			a->out_off += (size_t)n;
		if (a->out_off == a->out.len) {
			ev_io_stop(loop, &a->io);
			ev_io_set(&a->io, a->fd, EV_READ);
			ev_io_start(loop, &a->io);
		}
	}
	if (!(revents & EV_READ))
		return;
	char in[16384];
	ssize_t n = read(a->fd, in, sizeof in);
	if (n < 0 && errno == EAGAIN)
		return;
	if (n <= 0) {
		close_sa(a);
		if (a->busy)
			fail(a, n == 0 ? "connection closed by the coordinator" : strerror(errno));
		return;
	}
	size_t used = http_parser_execute(&a->parser, &settings, in, (size_t)n);
	if (used != (size_t)n && !a->complete) {
		fail(a, http_errno_name(HTTP_PARSER_ERRNO(&a->parser)));
		return;
	}
	if (a->complete) {
		a->busy = 0;
		if (!http_should_keep_alive(&a->parser))
			close_sa(a);
		done_fn cb = a->cb;
		a->cb = NULL;
		cb(a, a->status, a->body.data ? a->body.data : "");
	}
}

/* ---- the agents ---- */

static void poll_jobs(struct sa *a);

static void acked(struct sa *a, int status, const char *body)
{
	if (status != 200) {
		fprintf(stderr, "ack: %d %s\n", status, body);
		fail(a, "ack refused");
		return;
	}
	poll_jobs(a);
}

static void polled(struct sa *a, int status, const char *body)
{
	if (status != 200) {
		fprintf(stderr, "poll: %d %s\n", status, body);
		fail(a, "poll refused");
		return;
	}
	cJSON *j = cJSON_Parse(body);
	cJSON *jobs = cJSON_GetObjectItem(j, "jobs");
	cJSON *job = cJSON_GetArrayItem(jobs, cJSON_GetArraySize(jobs) - 1);
	if (!job) {
		cJSON_Delete(j);
		poll_jobs(a);
		return;
	}
	if (phase == 2 && !a->got) {
		a->got = 1;
		a->got_at = now();
		got_count++;
	}
	snprintf(a->job, sizeof a->job, "%s", cJSON_GetObjectItem(job, "id")->valuestring);
	snprintf(a->lease, sizeof a->lease, "%s",
		 cJSON_GetObjectItem(job, "lease_id")->valuestring);
	/* Every job of the poll is acknowledged; the swarm only keeps the last. */
	cJSON_Delete(j);
	char path[256], ackb[256];
	snprintf(path, sizeof path, "/v1/agents/%s/jobs/%s/ack", a->id, a->job);
	snprintf(ackb, sizeof ackb, "{\"lease_id\":\"%s\",\"result\":\"succeeded\",\"duration_ms\":1}",
		 a->lease);
	send_req(a, "POST", path, a->token, ackb, acked);
}

static void poll_jobs(struct sa *a)
{
	char path[200];
	snprintf(path, sizeof path, "/v1/agents/%s/jobs?wait=30&max=10", a->id);
	a->polled_at = now();
	send_req(a, "GET", path, a->token, NULL, polled);
}

static void register_next(void);

static void registered_cb(struct sa *a, int status, const char *body)
{
	if (status != 200) {
		fprintf(stderr, "register: %d %s\n", status, body);
		fail(a, "register refused");
		return;
	}
	cJSON *j = cJSON_Parse(body);
	snprintf(a->id, sizeof a->id, "%s", cJSON_GetObjectItem(j, "agent_id")->valuestring);
	snprintf(a->token, sizeof a->token, "%s", cJSON_GetObjectItem(j, "token")->valuestring);
	cJSON_Delete(j);
	registered++;
	poll_jobs(a);
	register_next();
}

static void register_next(void)
{
	if (reg_next >= n_agents)
		return;
	struct sa *a = &agents[reg_next++];
	char body[256];
	snprintf(body, sizeof body,
		 "{\"instance_id\":\"i-swarm-%05d\",\"hostname\":\"swarm-%d\",\"protocol\":1}",
		 a->idx, a->idx);
	send_req(a, "POST", "/v1/agents/register", boot, body, registered_cb);
}

/* ---- the controller ---- */

static ev_timer tick;
static long mem_polls_kb = -1, mem_after_kb = -1;
static double lat_max, lat_p50, lat_p99, worst_ms, t_registered;
static int round_reported;
static void health(void);

static int cmp_double(const void *x, const void *y)
{
	double a = *(const double *)x, b = *(const double *)y;
	return a < b ? -1 : a > b;
}

static void rollout_state(struct sa *c, int status, const char *body);

static void check_rollout(void)
{
	char path[256];
	snprintf(path, sizeof path, "/v1/apps/%s/rollouts/%s", app, rollout_id);
	send_req(&ctl, "GET", path, key, NULL, rollout_state);
}

static void finish_round(void)
{
	double *lat = malloc(sizeof(double) * (size_t)n_agents);
	for (int i = 0; i < n_agents; i++)
		lat[i] = (agents[i].got_at - t_promote) * 1000;
	qsort(lat, (size_t)n_agents, sizeof *lat, cmp_double);
	lat_p50 = lat[n_agents / 2];
	lat_p99 = lat[(n_agents * 99) / 100 - (n_agents >= 100 ? 1 : 0)];
	lat_max = lat[n_agents - 1];
	if (lat_max > worst_ms)
		worst_ms = lat_max;
	free(lat);
	printf("round %d: release reached %d agents: p50 %.1f ms, p99 %.1f ms, max %.1f ms\n",
	       round_no, n_agents, lat_p50, lat_p99, lat_max);
	fflush(stdout);
}

static void rollout_state(struct sa *c, int status, const char *body)
{
	(void)c;
	if (status != 200) {
		fail(&ctl, "rollout query");
		return;
	}
	cJSON *j = cJSON_Parse(body);
	const char *st = cJSON_GetObjectItem(j, "state")->valuestring;
	int ok = strcmp(st, "succeeded") == 0, running = strcmp(st, "running") == 0;
	cJSON_Delete(j);
	if (running) {
		ev_timer_set(&tick, 0.05, 0.0);
		ev_timer_start(loop, &tick);
		return;
	}
	if (!ok) {
		fprintf(stderr, "rollout ended %s\n", st);
		fail(&ctl, "rollout failed");
		return;
	}
	t_all_acked = now();
	mem_after_kb = private_kb();
	printf("round %d: rollout succeeded (all %d acked) %.1f ms after the promotion; "
	       "coordinator private memory %ld kB\n",
	       round_no, n_agents, (t_all_acked - t_promote) * 1000, mem_after_kb);
	fflush(stdout);
	if (round_no < rounds) {
		phase = 1;
		ev_timer_set(&tick, 0.2, 0.0);
		ev_timer_start(loop, &tick);
		return;
	}
	phase = 3;
	ev_break(loop, EVBREAK_ALL);
}

static void promoted(struct sa *c, int status, const char *body)
{
	(void)c;
	if (status != 202) {
		fprintf(stderr, "promote: %d %s\n", status, body);
		fail(&ctl, "promote refused");
		return;
	}
	cJSON *j = cJSON_Parse(body);
	snprintf(rollout_id, sizeof rollout_id, "%s",
		 cJSON_GetObjectItem(j, "rollout")->valuestring);
	cJSON_Delete(j);
	ev_timer_set(&tick, 0.01, 0.0);
	ev_timer_start(loop, &tick);
}

static void promote(void)
{
	round_no++;
	got_count = 0;
	round_reported = 0;
	for (int i = 0; i < n_agents; i++)
		agents[i].got = 0;
	phase = 2;
	char body[512];
	snprintf(body, sizeof body,
		 "{\"services\":{\"web\":{\"image\":\"registry.local:5000/web:v%d\",\"port\":8080,"
		 "\"health\":{\"type\":\"http\",\"path\":\"/health\"}}},\"description\":\"swarm "
		 "round %d\"}",
		 round_no, round_no);
	char path[128];
	snprintf(path, sizeof path, "/v1/apps/%s/releases", app);
	t_promote = now();
	send_req(&ctl, "POST", path, key, body, promoted);
}

static void health_cb(struct sa *c, int status, const char *body)
{
	(void)c;
	if (status != 200) {
		fail(&ctl, "health");
		return;
	}
	cJSON *j = cJSON_Parse(body);
	int polls = (int)cJSON_GetObjectItem(j, "polls")->valuedouble;
	cJSON_Delete(j);
	if (polls >= n_agents) {
		mem_polls_kb = private_kb();
		printf("round %d: coordinator holds %d long polls; private memory %ld kB\n",
		       round_no + 1, polls, mem_polls_kb);
		fflush(stdout);
		promote();
		return;
	}
	ev_timer_set(&tick, 0.05, 0.0);
	ev_timer_start(loop, &tick);
}

static void health(void)
{
	send_req(&ctl, "GET", "/v1/health", key, NULL, health_cb);
}

static void tick_cb(struct ev_loop *l, ev_timer *t, int revents)
{
	(void)l;
	(void)revents;
	ev_timer_stop(loop, t);
	if (phase == 0 && registered == n_agents) {
		phase = 1;
		t_registered = now();
	}
	if (phase == 0) {
		ev_timer_set(t, 0.05, 0.0);
		ev_timer_start(loop, t);
		return;
	}
	if (phase == 1) {
		health();
		return;
	}
	if (phase == 2) {
		if (got_count < n_agents) {
			ev_timer_set(t, 0.01, 0.0);
			ev_timer_start(loop, t);
			return;
		}
		if (!round_reported) {
			round_reported = 1;
			finish_round();
		}
		check_rollout();
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
	}
	if (!port || !boot || !key || n_agents < 1 || rounds < 1) {
		fprintf(stderr, "usage: agent_swarm --port P --bootstrap T --key K [--agents N] "
				"[--app A] [--pid PID] [--rounds R]\n");
		return 2;
	}
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	loop = ev_default_loop(0);
	agents = calloc((size_t)n_agents, sizeof *agents);
	for (int i = 0; i < n_agents; i++) {
		agents[i].idx = i;
		agents[i].fd = -1;
		buf_init(&agents[i].out, 8192);
		buf_init(&agents[i].body, (size_t)4 << 20);
	}
	ctl.idx = -1;
	ctl.fd = -1;
	buf_init(&ctl.out, 8192);
	buf_init(&ctl.body, (size_t)16 << 20);
	double t0 = now();
	for (int i = 0; i < REG_WINDOW; i++)
		register_next();
	ev_timer_init(&tick, tick_cb, 0.05, 0.0);
	ev_timer_start(loop, &tick);
	ev_run(loop, 0);
	printf("registration of %d agents took %.0f ms\n", n_agents, (t_registered - t0) * 1000);
	/* max_ms: the worst over every round; the others are of the last round. */
	printf("RESULT {\"agents\":%d,\"rounds\":%d,\"p50_ms\":%.1f,\"p99_ms\":%.1f,\"max_ms\":%.1f,"
	       "\"all_acked_ms\":%.1f,\"private_kb_polls\":%ld,\"private_kb_after\":%ld,"
	       "\"failures\":%d}\n",
	       n_agents, round_no, lat_p50, lat_p99, worst_ms, (t_all_acked - t_promote) * 1000,
	       mem_polls_kb, mem_after_kb, failures);
	for (int i = 0; i < n_agents; i++) {
		close_sa(&agents[i]);
		buf_free(&agents[i].out);
		buf_free(&agents[i].body);
	}
	close_sa(&ctl);
	buf_free(&ctl.out);
	buf_free(&ctl.body);
	free(agents);
	return failures || phase != 3 ? 1 : 0;
}
