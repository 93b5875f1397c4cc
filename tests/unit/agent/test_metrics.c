/*
 * metrics: the EMF document shape (CloudWatch embedded metric format
 * specification: "_aws" with Timestamp and CloudWatchMetrics [{Namespace,
 * Dimensions, Metrics [{Name, Unit}]}], values and dimensions as top-level
 * members), the Prometheus text format (0.0.4) over the local endpoint, and
 * the /proc parsers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "docker.h"
#include "http_client.h"
#include "json.h"
#include "log.h"
#include "metrics.h"

static void test_emf_shape(void **state)
{
	(void)state;
	struct buf out;
	buf_init(&out, 0);
	struct metrics_dim d[] = {{"App", "web"}, {"Service", "api"}, {"InstanceId", "i-0abc"}};
	struct metrics_dim x[] = {{"ContainerId", "3f9a1c2b4d5e"}};
	struct metrics_value v[] = {{"ContainerCpuPercent", "Percent", 12.5},
				    {"ContainerMemoryBytes", "Bytes", 41943040},
				    {"ContainerOomKills", "Count", 0}};
	assert_int_equal(metrics_emf(&out, "Slipway", "App,Service,InstanceId", 1795600000123LL, d,
				     3, x, 1, v, 3), 0);
	cJSON *doc = json_parse(out.data, out.len, out.len, NULL);
	assert_non_null(doc);
	const cJSON *aws = cJSON_GetObjectItemCaseSensitive(doc, "_aws");
	assert_int_equal(cJSON_GetObjectItemCaseSensitive(aws, "Timestamp")->valuedouble,
			 1795600000123.0);
	const cJSON *cwm = cJSON_GetObjectItemCaseSensitive(aws, "CloudWatchMetrics");
	assert_int_equal(cJSON_GetArraySize(cwm), 1);
	const cJSON *dir = cJSON_GetArrayItem(cwm, 0);
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(dir, "Namespace")->valuestring,
			    "Slipway");
	const cJSON *dims = cJSON_GetObjectItemCaseSensitive(dir, "Dimensions");
	assert_int_equal(cJSON_GetArraySize(dims), 1);
	const cJSON *set = cJSON_GetArrayItem(dims, 0);
	assert_int_equal(cJSON_GetArraySize(set), 3);
	assert_string_equal(cJSON_GetArrayItem(set, 0)->valuestring, "App");
	assert_string_equal(cJSON_GetArrayItem(set, 2)->valuestring, "InstanceId");
	const cJSON *mets = cJSON_GetObjectItemCaseSensitive(dir, "Metrics");
	assert_int_equal(cJSON_GetArraySize(mets), 3);
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(mets, 1), "Unit")
				    ->valuestring, "Bytes");
	/* Every dimension and metric is a member of the document (the spec requires
	 * the dimension values and the metric values as top-level members). */
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(doc, "App")->valuestring, "web");
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(doc, "InstanceId")->valuestring,
			    "i-0abc");
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(doc, "ContainerId")->valuestring,
			    "3f9a1c2b4d5e");
	assert_true(cJSON_GetObjectItemCaseSensitive(doc, "ContainerCpuPercent")->valuedouble ==
		    12.5);
	assert_true(cJSON_GetObjectItemCaseSensitive(doc, "ContainerMemoryBytes")->valuedouble ==
		    41943040.0);
	cJSON_Delete(doc);

	/* Only the configured dimensions form the set; the others stay members. */
	buf_reset(&out);
	assert_int_equal(metrics_emf(&out, "Team/App", "InstanceId, App", 1, d, 3, NULL, 0, v, 1), 0);
	doc = json_parse(out.data, out.len, out.len, NULL);
	aws = cJSON_GetObjectItemCaseSensitive(doc, "_aws");
	set = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(
			cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(aws, "CloudWatchMetrics"), 0),
			"Dimensions"), 0);
	assert_int_equal(cJSON_GetArraySize(set), 2);
	assert_string_equal(cJSON_GetArrayItem(set, 0)->valuestring, "App");
	assert_string_equal(cJSON_GetArrayItem(set, 1)->valuestring, "InstanceId");
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(doc, "Service")->valuestring, "api");
	cJSON_Delete(doc);
	buf_free(&out);
}

static void test_proc_parsers(void **state)
{
	(void)state;
	uint64_t busy, total;
	/* proc(5): user nice system idle iowait irq softirq steal */
	assert_int_equal(metrics_parse_proc_stat("cpu  100 5 50 800 40 1 2 2 0 0\ncpu0 1 2 3 4\n",
						 &busy, &total), 0);
	assert_int_equal(total, 1000);
	assert_int_equal(busy, 160);
	assert_int_equal(metrics_parse_proc_stat("intr 1 2 3\n", &busy, &total), -1);
	uint64_t mt, ma;
	assert_int_equal(metrics_parse_meminfo("MemTotal:       16384 kB\nMemFree:    1 kB\n"
					       "MemAvailable:    4096 kB\n", &mt, &ma), 0);
	assert_int_equal(mt, 16384 * 1024);
	assert_int_equal(ma, 4096 * 1024);
	assert_int_equal(metrics_parse_meminfo("MemTotal: 1 kB\n", &mt, &ma), -1);
	uint64_t rss, priv;
	const char smaps[] = "55a0-7ffd ---p 00000000 00:00 0   [rollup]\nRss:  9000 kB\n"
			     "Pss:  8000 kB\nPrivate_Clean:   300 kB\nPrivate_Dirty:  7000 kB\n";
	assert_int_equal(metrics_parse_smaps_rollup(smaps, &rss, &priv), 0);
	assert_int_equal(rss, 9000 * 1024);
	assert_int_equal(priv, 7300 * 1024);
}

static void test_prom_label(void **state)
{
	(void)state;
	struct buf out;
	buf_init(&out, 0);
	metrics_prom_label(&out, "a\"b\\c\nd");
	assert_string_equal(out.data, "\"a\\\"b\\\\c\\nd\"");
	buf_free(&out);
}

struct client {
	int port;
	char reply[65536];
	atomic_int done;
};

static void *get_metrics(void *arg)
{
	struct client *c = arg;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
		const char req[] = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
		if (write(fd, req, sizeof req - 1) > 0) {
			size_t n = 0;
			ssize_t r;
			while (n < sizeof c->reply - 1 &&
			       (r = read(fd, c->reply + n, sizeof c->reply - 1 - n)) > 0)
				n += (size_t)r;
			c->reply[n] = '\0';
		}
	}
	close(fd);
	atomic_store(&c->done, 1);
	return NULL;
}

/* The local endpoint answers Prometheus text, swaps and agent figures included. */
static void test_prometheus_endpoint(void **state)
{
	(void)state;
	log_init("test", LOG_LEVEL_ERROR, 0);
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct http_client *http = http_client_new(loop);
	struct docker_opts dopts = {.socket_path = "/nonexistent/docker.sock"};
	struct docker *docker = docker_new(loop, http, &dopts);
	struct metrics_opts o = {.loop = loop, .docker = docker, .listen = "127.0.0.1:0",
				 .instance_id = "i-test"};
	struct err err;
	struct metrics *m = metrics_new(&o, &err);
	assert_non_null(m);
	assert_true(metrics_port(m) > 0);
	metrics_swap(m, "web", "succeeded", 4200);
	metrics_swap(m, "web", "failed", 900);
	metrics_swap(m, "web\"x", "succeeded", 1);
	struct client c = {.port = metrics_port(m)};
	pthread_t th;
	pthread_create(&th, NULL, get_metrics, &c);
	for (int i = 0; i < 2000 && !atomic_load(&c.done); i++)
		ev_run(loop, EVRUN_NOWAIT), usleep(1000);
	pthread_join(th, NULL);
	assert_non_null(strstr(c.reply, "HTTP/1.1 200"));
	assert_non_null(strstr(c.reply, "Content-Type: text/plain; version=0.0.4"));
	assert_non_null(strstr(c.reply, "# TYPE slipway_swaps_total counter\n"));
	assert_non_null(strstr(c.reply, "slipway_swaps_total{app=\"web\",outcome=\"succeeded\"} 1\n"));
	assert_non_null(strstr(c.reply, "slipway_swaps_total{app=\"web\",outcome=\"failed\"} 1\n"));
	assert_non_null(strstr(c.reply, "slipway_swap_last_duration_ms{app=\"web\"} 900\n"));
	assert_non_null(strstr(c.reply, "{app=\"web\\\"x\",outcome=\"succeeded\"} 1\n"));
	/* The agent's own memory, read from smaps_rollup at scrape time. */
	const char *pm = strstr(c.reply, "\nslipway_agent_private_memory_bytes ");
	assert_non_null(pm);
	assert_true(strtod(pm + strlen("\nslipway_agent_private_memory_bytes "), NULL) > 0);
	/* Every sample line belongs to a declared metric. */
	struct buf text;
	buf_init(&text, 0);
	assert_int_equal(metrics_prometheus(m, &text), 0);
	for (char *line = strtok(text.data, "\n"); line; line = strtok(NULL, "\n")) {
		if (line[0] == '#')
			continue;
		char name[128];
		assert_int_equal(sscanf(line, "%127[a-z_]", name), 1);
		char decl[160];
		snprintf(decl, sizeof decl, "# TYPE %s ", name);
		assert_non_null(strstr(c.reply, decl));
	}
	buf_free(&text);
	metrics_free(m);
	docker_free(docker);
	http_client_free(http);
	ev_loop_destroy(loop);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_emf_shape),
		cmocka_unit_test(test_proc_parsers),
		cmocka_unit_test(test_prom_label),
		cmocka_unit_test(test_prometheus_endpoint),
	};
	return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
