#include "imdsblock.h"

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "docker.h"
#include "log.h"
#include "proc.h"

#define ARGS_MAX 32
#define CMD_TIMEOUT_MS 20000
#define DOCKER_TIMEOUT_MS 15000
#define ID12 12

enum op_kind { OP_SYNC, OP_ALLOW, OP_REVOKE };

struct op {
	struct op *next;
	enum op_kind kind;
	char id[72];          /* container id (allow, revoke) */
	char ip[64];          /* allow: its address on the network */
	int step;
};

struct allowed {
	struct allowed *next;
	char id[72];
	char ip[64];
};

typedef void (*cmd_done_fn)(struct imdsblock *b, int status, const char *out);

struct imdsblock {
	struct ev_loop *loop;
	struct docker *docker;
	char network[128];
	char address[64];
	char iptables[256];
	char chain[64];
	char prefix[200];      /* "slipway-imds:<network>:" */
	struct allowed *allowed;
	size_t nallowed;
	char subnet[64];
	bool installed, disabled;
	struct op *head, *tail;
	struct proc *proc;
	cmd_done_fn proc_done;  /* what the command in flight reports to */
	uint64_t docker_call;
	/* the sync in progress */
	char (*stale)[512];
	size_t nstale, istale;
	bool drop_present;
};

static void next_op(struct imdsblock *b);
static void op_step(struct imdsblock *b);

/* ---- rules ---- */

int imdsblock_parse_rule(const char *line, const char *chain, const char *prefix,
			 struct imdsblock_rule *out)
{
	memset(out, 0, sizeof *out);
	char head[96];
	snprintf(head, sizeof head, "-A %s ", chain);
	if (strncmp(line, head, strlen(head)) != 0)
		return 0;
	const char *args = line + strlen(head);
	const char *c = strstr(args, "--comment ");
	if (!c)
		return 0;
	c += 10;
	if (*c == '"')
		c++;
	size_t pl = strlen(prefix);
	if (strncmp(c, prefix, pl) != 0)
		return 0;
	const char *what = c + pl;
	size_t al = strcspn(args, "\r\n");
	if (al >= sizeof out->args)
		return 0;
	memcpy(out->args, args, al);
	out->args[al] = '\0';
	if (strncmp(what, "block", 5) == 0 && (what[5] == ' ' || what[5] == '"' || !what[5])) {
		out->kind = 'B';
	} else if (strncmp(what, "allow:", 6) == 0) {
		out->kind = 'A';
		size_t n = strspn(what + 6, "0123456789abcdef");
		if (n == 0 || n >= sizeof out->container)
			return 0;
		memcpy(out->container, what + 6, n);
		out->container[n] = '\0';
	} else {
		return 0;
	}
	const char *s = strstr(args, "-s ");
	if (s) {
		s += 3;
		size_t n = strcspn(s, " ");
		if (n < sizeof out->source) {
			memcpy(out->source, s, n);
			out->source[n] = '\0';
		}
	}
	return 1;
}

static void drop_args(const struct imdsblock *b, char *out, size_t cap)
{
	snprintf(out, cap, "-s %s -d %s/32 -m comment --comment %sblock -j DROP", b->subnet,
		 b->address, b->prefix);
}

static void allow_args(const struct imdsblock *b, const char *id, const char *ip, char *out,
		       size_t cap)
{
	snprintf(out, cap, "-s %s/32 -d %s/32 -m comment --comment %sallow:%.12s -j ACCEPT", ip,
		 b->address, b->prefix, id);
}

/* ---- running iptables ---- */

static void on_exit_cb(int status, const char *tail, size_t len, void *arg)
{
	(void)len;
	struct imdsblock *b = arg;
	proc_free(b->proc);
	b->proc = NULL;
	cmd_done_fn done = b->proc_done;
	b->proc_done = NULL;
	done(b, status, tail);
}

/* iptables -w <verb> <chain> [args]; done gets the exit status and output. */
static void run(struct imdsblock *b, const char *verb, const char *args, cmd_done_fn done)
{
	char buf[512];
	snprintf(buf, sizeof buf, "%s", args ? args : "");
	const char *argv[ARGS_MAX + 6];
	size_t n = 0;
	argv[n++] = b->iptables;
	argv[n++] = "-w";
	argv[n++] = verb;
	argv[n++] = b->chain;
	char *save = NULL;
	for (char *t = strtok_r(buf, " ", &save); t && n < ARGS_MAX + 4;
	     t = strtok_r(NULL, " ", &save)) {
		/* iptables -S quotes comments with odd characters; ours have none. */
		if (*t == '"') {
			t++;
			size_t l = strlen(t);
			if (l && t[l - 1] == '"')
				t[l - 1] = '\0';
		}
		argv[n++] = t;
	}
	argv[n] = NULL;
	struct proc_opts po = {.argv = argv, .on_exit = on_exit_cb, .timeout_ms = CMD_TIMEOUT_MS,
			       .arg = b};
	struct err err = {{0}};
	b->proc_done = done;
	b->proc = proc_spawn(b->loop, &po, &err);
	if (!b->proc) {
		b->proc_done = NULL;
		log_error("imdsblock.disabled", "error=\"%s\": app containers are NOT kept off the "
			  "instance metadata service", err.msg);
		b->disabled = true;
		done(b, 127, err.msg);
	}
}

/* ---- the queue ---- */

static void enqueue(struct imdsblock *b, enum op_kind kind, const char *id)
{
	if (b->disabled)
		return;
	struct op *o = calloc(1, sizeof *o);
	if (!o) {
		log_error("imdsblock.oom", "kind=%d", (int)kind);
		return;
	}
	o->kind = kind;
	snprintf(o->id, sizeof o->id, "%s", id ? id : "");
	bool idle = !b->head;
	if (b->tail)
		b->tail->next = o;
	else
		b->head = o;
	b->tail = o;
	if (idle)
		op_step(b);
}

static void op_done(struct imdsblock *b)
{
	struct op *o = b->head;
	b->head = o->next;
	if (!b->head)
		b->tail = NULL;
	free(o);
	next_op(b);
}

static void next_op(struct imdsblock *b)
{
	if (b->head)
		op_step(b);
}

static struct allowed *find_allowed(struct imdsblock *b, const char *id, size_t n)
{
	for (struct allowed *a = b->allowed; a; a = a->next)
		if (strncmp(a->id, id, n) == 0)
			return a;
	return NULL;
}

static void forget_allowed(struct imdsblock *b, const char *id)
{
	for (struct allowed **pp = &b->allowed; *pp; pp = &(*pp)->next) {
		if (strcmp((*pp)->id, id) == 0) {
			struct allowed *a = *pp;
			*pp = a->next;
			free(a);
			b->nallowed--;
			return;
		}
	}
}

/* ---- sync: the DROP for the subnet, stale rules out ---- */

static void sync_listed(struct imdsblock *b, int status, const char *out);
static void sync_deleted(struct imdsblock *b, int status, const char *out);
static void sync_inserted(struct imdsblock *b, int status, const char *out);

static void on_network(const struct docker_result *res, void *arg)
{
	struct imdsblock *b = arg;
	b->docker_call = 0;
	if (res->error != DOCKER_OK) {
		/* No network yet (no release ran): the first container start syncs again. */
		if (res->error != DOCKER_ERR_NOT_FOUND)
			log_warn("imdsblock.network", "network=%s error=\"%s\"", b->network,
				 res->message);
		op_done(b);
		return;
	}
	const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(
		cJSON_GetObjectItemCaseSensitive(res->json, "IPAM"), "Config");
	const cJSON *c;
	char subnet[64] = "";
	cJSON_ArrayForEach(c, cfg)
	{
		const cJSON *s = cJSON_GetObjectItemCaseSensitive(c, "Subnet");
		if (cJSON_IsString(s) && strchr(s->valuestring, '.') && !strchr(s->valuestring, ' ') &&
		    strlen(s->valuestring) < sizeof subnet) {
			snprintf(subnet, sizeof subnet, "%s", s->valuestring);
			break;
		}
	}
	if (!subnet[0]) {
		log_warn("imdsblock.no_subnet", "network=%s: no IPv4 subnet", b->network);
		op_done(b);
		return;
	}
	if (strcmp(subnet, b->subnet) != 0)
		b->installed = false;
	snprintf(b->subnet, sizeof b->subnet, "%s", subnet);
	run(b, "-S", NULL, sync_listed);
}

static void sync_listed(struct imdsblock *b, int status, const char *out)
{
	if (status != 0) {
		if (!b->disabled)
			log_error("imdsblock.disabled", "chain=%s status=%d output=\"%.200s\": app "
				  "containers are NOT kept off the instance metadata service (does "
				  "Docker manage iptables?)", b->chain, status, out);
		b->disabled = true;
		op_done(b);
		return;
	}
	free(b->stale);
	b->stale = NULL;
	b->nstale = b->istale = 0;
	b->drop_present = false;
	size_t lines = 1;
	for (const char *p = out; *p; p++)
		lines += *p == '\n';
	b->stale = calloc(lines, sizeof *b->stale);
	if (!b->stale) {
		op_done(b);
		return;
	}
	const char *p = out;
	while (*p) {
		size_t n = strcspn(p, "\n");
		char line[600];
		snprintf(line, sizeof line, "%.*s", (int)(n < sizeof line - 1 ? n : sizeof line - 1),
			 p);
		struct imdsblock_rule r;
		if (imdsblock_parse_rule(line, b->chain, b->prefix, &r)) {
			bool keep;
			if (r.kind == 'B')
				keep = strcmp(r.source, b->subnet) == 0 && !b->drop_present;
			else
				keep = find_allowed(b, r.container, strlen(r.container)) != NULL;
			if (keep && r.kind == 'B')
				b->drop_present = true;
			if (!keep)
				snprintf(b->stale[b->nstale++], sizeof b->stale[0], "%s", r.args);
		}
		p += n;
		if (*p == '\n')
			p++;
	}
	sync_deleted(b, 0, "");
}

static void sync_deleted(struct imdsblock *b, int status, const char *out)
{
	if (status != 0)
		log_warn("imdsblock.delete_failed", "status=%d output=\"%.200s\"", status, out);
	if (b->istale < b->nstale) {
		const char *args = b->stale[b->istale++];
		log_info("imdsblock.stale_rule", "removing=\"%s\"", args);
		run(b, "-D", args, sync_deleted);
		return;
	}
	if (b->drop_present) {
		b->installed = true;
		op_done(b);
		return;
	}
	char args[512];
	drop_args(b, args, sizeof args);
	run(b, "-I", args, sync_inserted);
}

/* The ACCEPTs we know go back above the new DROP: delete, then insert at the top. */
static void reinsert_next(struct imdsblock *b, int status, const char *out)
{
	(void)status;
	(void)out;
	struct op *o = b->head;
	size_t i = 0;
	for (struct allowed *a = b->allowed; a; a = a->next, i++) {
		if (i < (size_t)o->step / 2)
			continue;
		char args[512];
		allow_args(b, a->id, a->ip, args, sizeof args);
		bool del = o->step % 2 == 0;
		o->step++;
		run(b, del ? "-D" : "-I", args, reinsert_next);
		return;
	}
	op_done(b);
}

static void sync_inserted(struct imdsblock *b, int status, const char *out)
{
	if (status != 0) {
		log_error("imdsblock.insert_failed", "subnet=%s status=%d output=\"%.200s\"",
			  b->subnet, status, out);
		op_done(b);
		return;
	}
	b->installed = true;
	log_info("imdsblock.installed", "network=%s subnet=%s address=%s chain=%s", b->network,
		 b->subnet, b->address, b->chain);
	b->head->step = 0;
	reinsert_next(b, 0, "");
}

/* ---- allow and revoke ---- */

static void allow_checked(struct imdsblock *b, int status, const char *out);

static void allow_done(struct imdsblock *b, int status, const char *out)
{
	struct op *o = b->head;
	if (status != 0) {
		log_error("imdsblock.allow_failed", "container=%.12s status=%d output=\"%.200s\"",
			  o->id, status, out);
	} else if (!find_allowed(b, o->id, sizeof o->id)) {
		struct allowed *a = calloc(1, sizeof *a);
		if (a) {
			snprintf(a->id, sizeof a->id, "%s", o->id);
			snprintf(a->ip, sizeof a->ip, "%s", o->ip);
			a->next = b->allowed;
			b->allowed = a;
			b->nallowed++;
			log_info("imdsblock.allowed", "container=%.12s address=%s", o->id, o->ip);
		}
	}
	op_done(b);
}

static void allow_checked(struct imdsblock *b, int status, const char *out)
{
	(void)out;
	struct op *o = b->head;
	if (status == 0) { /* already there (an agent restart) */
		allow_done(b, 0, "");
		return;
	}
	char args[512];
	allow_args(b, o->id, o->ip, args, sizeof args);
	run(b, "-I", args, allow_done);
}

static void on_container(const struct docker_result *res, void *arg)
{
	struct imdsblock *b = arg;
	b->docker_call = 0;
	struct op *o = b->head;
	if (res->error != DOCKER_OK) {
		op_done(b);
		return;
	}
	const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(res->json, "Config");
	const cJSON *lab = cJSON_GetObjectItemCaseSensitive(
		cJSON_GetObjectItemCaseSensitive(cfg, "Labels"), IMDSBLOCK_LABEL);
	const cJSON *net = cJSON_GetObjectItemCaseSensitive(
		cJSON_GetObjectItemCaseSensitive(
			cJSON_GetObjectItemCaseSensitive(res->json, "NetworkSettings"), "Networks"),
		b->network);
	const cJSON *ip = cJSON_GetObjectItemCaseSensitive(net, "IPAddress");
	if (!cJSON_IsString(lab) || strcmp(lab->valuestring, "true") != 0 || !cJSON_IsString(ip) ||
	    !ip->valuestring[0] || strlen(ip->valuestring) >= sizeof o->ip ||
	    strspn(ip->valuestring, "0123456789.") != strlen(ip->valuestring)) {
		op_done(b); /* blocked, as every container is by default */
		return;
	}
	snprintf(o->ip, sizeof o->ip, "%s", ip->valuestring);
	char args[512];
	allow_args(b, o->id, o->ip, args, sizeof args);
	run(b, "-C", args, allow_checked);
}

static void revoke_done(struct imdsblock *b, int status, const char *out)
{
	struct op *o = b->head;
	if (status != 0)
		log_warn("imdsblock.revoke_failed", "container=%.12s status=%d output=\"%.200s\"",
			 o->id, status, out);
	else
		log_info("imdsblock.revoked", "container=%.12s", o->id);
	forget_allowed(b, o->id);
	op_done(b);
}

static void op_step(struct imdsblock *b)
{
	struct op *o = b->head;
	if (b->disabled) {
		op_done(b);
		return;
	}
	switch (o->kind) {
	case OP_SYNC:
		b->docker_call = docker_network_inspect(b->docker, b->network, DOCKER_TIMEOUT_MS,
							on_network, b);
		if (!b->docker_call)
			op_done(b);
		return;
	case OP_ALLOW:
		if (find_allowed(b, o->id, sizeof o->id)) {
			op_done(b);
			return;
		}
		b->docker_call = docker_container_inspect(b->docker, o->id, DOCKER_TIMEOUT_MS,
							  on_container, b);
		if (!b->docker_call)
			op_done(b);
		return;
	case OP_REVOKE: {
		struct allowed *a = find_allowed(b, o->id, sizeof o->id);
		if (!a) {
			op_done(b);
			return;
		}
		snprintf(o->ip, sizeof o->ip, "%s", a->ip);
		char args[512];
		allow_args(b, o->id, o->ip, args, sizeof args);
		run(b, "-D", args, revoke_done);
		return;
	}
	}
}

/* ---- public ---- */

static bool name_ok(const char *s, size_t max)
{
	size_t n = s ? strlen(s) : 0;
	if (!n || n > max)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '-' || *s == '_' || *s == '.'))
			return false;
	return true;
}

struct imdsblock *imdsblock_new(const struct imdsblock_opts *o, struct err *err)
{
	const char *addr = o->address && *o->address ? o->address : IMDSBLOCK_DEFAULT_ADDRESS;
	const char *chain = o->chain && *o->chain ? o->chain : IMDSBLOCK_DEFAULT_CHAIN;
	if (!o->loop || !o->docker || !name_ok(o->network, 64)) {
		err_set(err, "metadata block: loop, docker and a network name are required");
		return NULL;
	}
	if (strspn(addr, "0123456789.") != strlen(addr) || strlen(addr) > 15)
		return err_set(err, "metadata.address: \"%s\" is not an IPv4 address", addr), NULL;
	if (!name_ok(chain, 28))
		return err_set(err, "metadata block: bad chain name"), NULL;
	struct imdsblock *b = calloc(1, sizeof *b);
	if (!b) {
		err_set(err, "metadata block: out of memory");
		return NULL;
	}
	b->loop = o->loop;
	b->docker = o->docker;
	snprintf(b->network, sizeof b->network, "%s", o->network);
	snprintf(b->address, sizeof b->address, "%s", addr);
	snprintf(b->iptables, sizeof b->iptables, "%s",
		 o->iptables && *o->iptables ? o->iptables : "iptables");
	snprintf(b->chain, sizeof b->chain, "%s", chain);
	snprintf(b->prefix, sizeof b->prefix, IMDSBLOCK_TAG ":%s:", o->network);
	return b;
}

void imdsblock_free(struct imdsblock *b)
{
	if (!b)
		return;
	proc_free(b->proc);
	if (b->docker_call)
		docker_cancel(b->docker, b->docker_call);
	while (b->head) {
		struct op *o = b->head;
		b->head = o->next;
		free(o);
	}
	while (b->allowed) {
		struct allowed *a = b->allowed;
		b->allowed = a->next;
		free(a);
	}
	free(b->stale);
	free(b);
}

void imdsblock_start(struct imdsblock *b)
{
	if (b)
		enqueue(b, OP_SYNC, NULL);
}

void imdsblock_container_started(struct imdsblock *b, const char *container_id)
{
	if (!b || !container_id || strlen(container_id) < ID12 ||
	    strlen(container_id) >= sizeof ((struct op *)0)->id)
		return;
	/* The network may be new (this is the first container on it). */
	if (!b->installed)
		enqueue(b, OP_SYNC, NULL);
	enqueue(b, OP_ALLOW, container_id);
}

void imdsblock_container_stopped(struct imdsblock *b, const char *container_id)
{
	if (!b || !container_id || strlen(container_id) >= sizeof ((struct op *)0)->id)
		return;
	enqueue(b, OP_REVOKE, container_id);
}

bool imdsblock_idle(const struct imdsblock *b)
{
	return !b || !b->head;
}

bool imdsblock_installed(const struct imdsblock *b)
{
	return b && b->installed;
}

size_t imdsblock_allowed(const struct imdsblock *b)
{
	return b ? b->nallowed : 0;
}

bool imdsblock_disabled(const struct imdsblock *b)
{
	return !b || b->disabled;
}
