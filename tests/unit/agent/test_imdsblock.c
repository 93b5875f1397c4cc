/*
 * imdsblock: the iptables rules that keep app containers off the instance
 * metadata service, against a stand-in iptables (a script keeping the
 * DOCKER-USER chain in a file, answering -S, -C, -I and -D as iptables does)
 * and a stand-in Docker engine on a unix socket (common/httpd) that knows one
 * network and three containers. The first sync drops the network's subnet and
 * removes this network's stale rules (an ACCEPT of a container it does not
 * know, a DROP of an old subnet) while every other rule stays; an opted-in
 * container gets its ACCEPT above the DROP, others none; a stop removes it;
 * no iptables turns the block off; iptables -S lines parse.
 * (tests/integration/test_agent_scalein.py runs it with the real iptables.)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"
#include "docker.h"
#include "http_client.h"
#include "httpd.h"
#include "imdsblock.h"
#include "log.h"

#define NET "slipway"
#define OPTED "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define PLAIN "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
#define OTHER "aaaaaaaaaaaa"

static char dir[] = "/tmp/slipway-imdsblock-XXXXXX";
static char script[256], state[256], sock[256];

static const char fake_iptables[] =
	"#!/usr/bin/env python3\n"
	"import sys\n"
	"STATE = %s\n"
	"a = sys.argv[1:]\n"
	"if a and a[0] == '-w':\n"
	"    a = a[1:]\n"
	"verb, chain, rest = a[0], a[1], a[2:]\n"
	"if chain != 'DOCKER-USER':\n"
	"    sys.stderr.write('iptables: No chain/target/match by that name.\\n')\n"
	"    sys.exit(1)\n"
	"lines = open(STATE).read().splitlines()\n"
	"rule = '-A %%s %%s' %% (chain, ' '.join(rest))\n"
	"if verb == '-S':\n"
	"    print('-N DOCKER-USER')\n"
	"    for l in lines:\n"
	"        print(l)\n"
	"    sys.exit(0)\n"
	"if verb == '-C':\n"
	"    sys.exit(0 if rule in lines else 1)\n"
	"if verb == '-I':\n"
	"    lines.insert(0, rule)\n"
	"elif verb == '-D':\n"
	"    if rule not in lines:\n"
	"        sys.stderr.write('iptables: Bad rule.\\n')\n"
	"        sys.exit(1)\n"
	"    lines.remove(rule)\n"
	"open(STATE, 'w').write(''.join(l + '\\n' for l in lines))\n";

/* ---- the stand-in engine ---- */

static void json_answer(struct httpd_req *req, const char *text)
{
	httpd_respond(req, 200, "application/json", text, strlen(text));
}

static void engine(struct httpd_req *req, void *arg)
{
	(void)arg;
	const char *p = req->path;
	if (strcmp(p, "/_ping") == 0) {
		httpd_respond(req, 200, "text/plain", "OK", 2);
		return;
	}
	if (strcmp(p, "/version") == 0) {
		json_answer(req, "{\"ApiVersion\":\"1.45\",\"MinAPIVersion\":\"1.24\","
					     "\"Version\":\"27.0.0\"}");
		return;
	}
	if (strstr(p, "/networks/" NET)) {
		json_answer(req, "{\"Name\":\"" NET "\",\"IPAM\":{\"Config\":["
				 "{\"Subnet\":\"fd00::/64\"},{\"Subnet\":\"172.30.0.0/16\","
				 "\"Gateway\":\"172.30.0.1\"}]}}");
		return;
	}
	const char *c = strstr(p, "/containers/");
	if (c) {
		c += strlen("/containers/");
		bool opted = strncmp(c, OPTED, 64) == 0, plain = strncmp(c, PLAIN, 64) == 0;
		if (opted || plain) {
			char body[1024];
			snprintf(body, sizeof body, "{\"Id\":\"%s\",\"Config\":{\"Labels\":{"
				 "\"slipway.app\":\"web\"%s}},\"NetworkSettings\":{\"Networks\":{\"" NET "\":{"
				 "\"IPAddress\":\"%s\"}}}}", opted ? OPTED : PLAIN,
				 opted ? ",\"" IMDSBLOCK_LABEL "\":\"true\"" : "",
				 opted ? "172.30.0.5" : "172.30.0.6");
			json_answer(req, body);
			return;
		}
	}
	httpd_respond_error(req, 404, "not_found", "no such thing");
}

/* ---- fixture ---- */

struct fx {
	struct ev_loop *loop;
	struct httpd *srv;
	struct http_client *http;
	struct docker *docker;
	struct imdsblock *b;
};

static void write_file(const char *path, const char *text, mode_t mode)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	chmod(path, mode);
}

static char *read_file(const char *path)
{
	static char text[8192];
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	size_t n = fread(text, 1, sizeof text - 1, f);
	text[n] = '\0';
	fclose(f);
	return text;
}

static int setup(void **state_)
{
	struct fx *f = calloc(1, sizeof *f);
	assert_non_null(mkdtemp(dir));
	snprintf(script, sizeof script, "%s/iptables", dir);
	snprintf(state, sizeof state, "%s/chain", dir);
	snprintf(sock, sizeof sock, "%s/docker.sock", dir);
	char quoted[300], text[4096];
	snprintf(quoted, sizeof quoted, "'%s'", state);
	snprintf(text, sizeof text, fake_iptables, quoted);
	write_file(script, text, 0755);
	/* Somebody else's rule, another network's block, and this network's
	 * leftovers: an ACCEPT of a container gone, the DROP of an old subnet. */
	write_file(state,
		   "-A DOCKER-USER -s 10.9.0.0/16 -j DROP\n"
		   "-A DOCKER-USER -s 172.99.0.0/16 -d 169.254.169.254/32 -m comment --comment "
		   "slipway-imds:other:block -j DROP\n"
		   "-A DOCKER-USER -s 172.30.0.9/32 -d 169.254.169.254/32 -m comment --comment "
		   "slipway-imds:" NET ":allow:" OTHER " -j ACCEPT\n"
		   "-A DOCKER-USER -s 172.31.0.0/16 -d 169.254.169.254/32 -m comment --comment "
		   "slipway-imds:" NET ":block -j DROP\n"
		   "-A DOCKER-USER -j RETURN\n", 0644);
	f->loop = ev_default_loop(0);
	struct err err = {{0}};
	char listen[300];
	snprintf(listen, sizeof listen, "unix:%s", sock);
	struct httpd_config hc = {.listen = listen, .handler = engine};
	f->srv = httpd_new(f->loop, &hc, &err);
	if (!f->srv)
		fail_msg("httpd: %s", err.msg);
	f->http = http_client_new(f->loop);
	struct docker_opts dopts = {.socket_path = sock};
	f->docker = docker_new(f->loop, f->http, &dopts);
	assert_non_null(f->docker);
	*state_ = f;
	return 0;
}

static int teardown(void **state_)
{
	struct fx *f = *state_;
	imdsblock_free(f->b);
	docker_free(f->docker);
	http_client_free(f->http);
	httpd_free(f->srv);
	unlink(script);
	unlink(state);
	unlink(sock);
	rmdir(dir);
	strcpy(dir, "/tmp/slipway-imdsblock-XXXXXX");
	free(f);
	return 0;
}

static void settle(struct fx *f)
{
	int64_t end = clock_mono_ms() + 20000;
	do
		ev_run(f->loop, EVRUN_ONCE);
	while (!imdsblock_idle(f->b) && clock_mono_ms() < end);
	assert_true(imdsblock_idle(f->b));
}

/* The line's index in the chain file, -1 when absent. */
static int line_of(const char *text, const char *needle)
{
	int i = 0;
	for (const char *p = text; *p; i++) {
		size_t n = strcspn(p, "\n");
		if (memmem(p, n, needle, strlen(needle)))
			return i;
		p += n + (p[n] == '\n');
	}
	return -1;
}

static void test_sync_allow_revoke(void **state_)
{
	struct fx *f = *state_;
	struct err err = {{0}};
	struct imdsblock_opts o = {.loop = f->loop, .docker = f->docker, .network = NET,
				   .iptables = script};
	assert_non_null(f->b = imdsblock_new(&o, &err));
	imdsblock_start(f->b);
	settle(f);
	assert_true(imdsblock_installed(f->b));
	assert_false(imdsblock_disabled(f->b));
	char *chain = read_file(state);
	int drop = line_of(chain, "-s 172.30.0.0/16 -d 169.254.169.254/32 -m comment --comment "
			   "slipway-imds:" NET ":block -j DROP");
	assert_true(drop >= 0);
	assert_int_equal(line_of(chain, "172.31.0.0/16"), -1);         /* old subnet gone */
	assert_int_equal(line_of(chain, ":allow:" OTHER), -1);        /* unknown container */
	assert_true(line_of(chain, "slipway-imds:other:block") >= 0); /* not ours */
	assert_true(line_of(chain, "-s 10.9.0.0/16 -j DROP") >= 0);
	assert_true(line_of(chain, "-j RETURN") > drop);               /* the DROP goes first */

	imdsblock_container_started(f->b, OPTED);
	imdsblock_container_started(f->b, PLAIN);
	settle(f);
	assert_int_equal(imdsblock_allowed(f->b), 1);
	chain = read_file(state);
	int allow = line_of(chain, "-s 172.30.0.5/32 -d 169.254.169.254/32 -m comment --comment "
			    "slipway-imds:" NET ":allow:0123456789ab -j ACCEPT");
	drop = line_of(chain, ":block -j DROP");
	assert_true(allow >= 0 && allow < drop);
	assert_int_equal(line_of(chain, "172.30.0.6"), -1);            /* not opted in */

	/* Started again (an inventory resync): nothing doubles. */
	imdsblock_container_started(f->b, OPTED);
	settle(f);
	chain = read_file(state);
	int count = 0;
	for (const char *p = chain; (p = strstr(p, ":allow:")); p++)
		count++;
	assert_int_equal(count, 1);

	imdsblock_container_stopped(f->b, OPTED);
	imdsblock_container_stopped(f->b, PLAIN);
	settle(f);
	assert_int_equal(imdsblock_allowed(f->b), 0);
	chain = read_file(state);
	assert_int_equal(line_of(chain, ":allow:"), -1);
	assert_true(line_of(chain, ":block -j DROP") >= 0);

	/* A restarted agent keeps the DROP it finds (no second one). */
	imdsblock_free(f->b);
	assert_non_null(f->b = imdsblock_new(&o, &err));
	imdsblock_start(f->b);
	settle(f);
	chain = read_file(state);
	count = 0;
	for (const char *p = chain; (p = strstr(p, NET ":block")); p++)
		count++;
	assert_int_equal(count, 1);
	assert_true(imdsblock_installed(f->b));
}

static void test_no_iptables(void **state_)
{
	struct fx *f = *state_;
	struct err err = {{0}};
	char missing[300];
	snprintf(missing, sizeof missing, "%s/no-such-iptables", dir);
	struct imdsblock_opts o = {.loop = f->loop, .docker = f->docker, .network = NET,
				   .iptables = missing};
	assert_non_null(f->b = imdsblock_new(&o, &err));
	imdsblock_start(f->b);
	settle(f);
	assert_true(imdsblock_disabled(f->b));
	assert_false(imdsblock_installed(f->b));
	imdsblock_container_started(f->b, OPTED); /* ignored, never blocks */
	settle(f);
	assert_int_equal(imdsblock_allowed(f->b), 0);
	/* Bad options are refused at once. */
	struct imdsblock_opts bad = o;
	bad.address = "metadata.local";
	assert_null(imdsblock_new(&bad, &err));
	bad = o;
	bad.network = "bad network";
	assert_null(imdsblock_new(&bad, &err));
}

static void test_parse_rule(void **state_)
{
	(void)state_;
	struct imdsblock_rule r;
	const char *prefix = "slipway-imds:" NET ":";
	assert_int_equal(imdsblock_parse_rule("-A DOCKER-USER -s 172.30.0.0/16 -d "
					      "169.254.169.254/32 -m comment --comment "
					      "slipway-imds:slipway:block -j DROP", "DOCKER-USER",
					      prefix, &r), 1);
	assert_int_equal(r.kind, 'B');
	assert_string_equal(r.source, "172.30.0.0/16");
	assert_int_equal(imdsblock_parse_rule("-A DOCKER-USER -s 172.30.0.5/32 -d "
					      "169.254.169.254/32 -m comment --comment "
					      "\"slipway-imds:slipway:allow:0123456789ab\" -j ACCEPT",
					      "DOCKER-USER", prefix, &r), 1);
	assert_int_equal(r.kind, 'A');
	assert_string_equal(r.container, "0123456789ab");
	assert_string_equal(r.source, "172.30.0.5/32");
	/* Not ours: another network, another chain, no comment, a kind we never write. */
	assert_int_equal(imdsblock_parse_rule("-A DOCKER-USER -m comment --comment "
					      "slipway-imds:slipway2:block -j DROP", "DOCKER-USER",
					      prefix, &r), 0);
	assert_int_equal(imdsblock_parse_rule("-A FORWARD -m comment --comment "
					      "slipway-imds:slipway:block -j DROP", "DOCKER-USER",
					      prefix, &r), 0);
	assert_int_equal(imdsblock_parse_rule("-A DOCKER-USER -j RETURN", "DOCKER-USER", prefix,
					      &r), 0);
	assert_int_equal(imdsblock_parse_rule("-A DOCKER-USER -m comment --comment "
					      "slipway-imds:slipway:blocker -j DROP", "DOCKER-USER",
					      prefix, &r), 0);
	assert_int_equal(imdsblock_parse_rule("-A DOCKER-USER -m comment --comment "
					      "slipway-imds:slipway:allow:XYZ -j ACCEPT",
					      "DOCKER-USER", prefix, &r), 0);
}

int main(void)
{
	log_init("test_imdsblock", getenv("TEST_LOG") ? LOG_LEVEL_DEBUG : LOG_LEVEL_ERROR, 0);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_sync_allow_revoke, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_iptables, setup, teardown),
		cmocka_unit_test(test_parse_rule),
	};
	return cmocka_run_group_tests_name("imdsblock", tests, NULL, NULL);
}
