#include "metrics.h"

#include <ev.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "agent.h"
#include "clock.h"
#include "cwlogs.h"
#include "dlist.h"
#include "docker.h"
#include "httpd.h"
#include "json.h"
#include "log.h"
#include "logdest.h"
#include "logship.h"
#include "worker.h"

#define DEFAULT_INTERVAL_MS 60000
#define CALLS_MAX 8                 /* inspects and stats at a time */
#define COORD_METRICS_MAX 1000      /* the protocol's cap per request */
#define PROC_FILE_MAX 65536

struct cstat {
	char id[72];
	char short_id[13];
	char app[64];
	char service[64];
	char health[16];            /* healthy, unhealthy, starting, none */
	int64_t restarts;
	int64_t ooms;
	bool oom_seen;              /* an oom event since the last start */
	bool present;               /* in the latest listing */
	double cpu_s;               /* cumulative */
	double cpu_pct;             /* between the last two samples */
	uint64_t cpu_prev_ns;
	int64_t cpu_prev_mono;
	double mem;
	int64_t restarts_reported;  /* for per-interval counts in EMF */
	int64_t ooms_reported;
	uint64_t call;
	int pending;                /* inspect + stats of this round */
	struct metrics *m;
};

struct swapstat {
	char app[64];
	uint64_t succeeded, failed, other;
	int64_t last_ms;
};

struct ccall;
struct disk_job;

struct metrics {
	struct ev_loop *loop;
	struct docker *docker;
	struct logship *ship;
	struct logdest *coord;
	struct worker_pool *workers;
	struct httpd *httpd;
	int64_t interval_ms;
	char ns[256];
	char dims[256];
	char instance[256];
	char prefix[256];
	char root[1024];
	const char *filters[AGENT_LABELS_MAX + 2];
	char *filter_store[AGENT_LABELS_MAX + 1];
	ev_timer round_timer;
	uint64_t events_sub;
	uint64_t list_call;
	struct cstat *c;
	size_t nc, capc;
	size_t calls;               /* in flight */
	size_t next_call;           /* index into c for the next inspect/stats */
	bool in_round;
	struct swapstat *swaps;
	size_t nswaps;
	/* instance */
	uint64_t cpu_busy_prev, cpu_total_prev;
	double host_cpu_pct;
	uint64_t mem_total, mem_avail;
	uint64_t disk_total, disk_free;
	bool statvfs_running;
	struct disk_job *disk_job;      /* on the pool */
	/* agent */
	uint64_t rss, private_bytes;
	uint64_t rounds;
	uint64_t coord_post;
	struct ccall *ccalls;
};

/* ---- text helpers ---- */

static int read_small(const char *path, char *out, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t len = 0;
	ssize_t r;
	while (len + 1 < cap && (r = read(fd, out + len, cap - 1 - len)) > 0)
		len += (size_t)r;
	close(fd);
	out[len] = '\0';
	return 0;
}

int metrics_parse_proc_stat(const char *text, uint64_t *busy, uint64_t *total)
{
	unsigned long long v[8] = {0};
	if (strncmp(text, "cpu ", 4) != 0)
		return -1;
	int n = sscanf(text + 4, "%llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
		       &v[3], &v[4], &v[5], &v[6], &v[7]);
	if (n < 4)
		return -1;
	uint64_t t = 0;
	for (int i = 0; i < n; i++)
		t += v[i];
	uint64_t idle = v[3] + (n > 4 ? v[4] : 0); /* idle + iowait */
	*total = t;
	*busy = t - idle;
	return 0;
}

static int kb_field(const char *text, const char *name, uint64_t *out)
{
	const char *p = text;
	size_t nl = strlen(name);
	while (p && *p) {
		if (strncmp(p, name, nl) == 0 && p[nl] == ':') {
			unsigned long long v;
			if (sscanf(p + nl + 1, " %llu", &v) != 1)
				return -1;
			*out = (uint64_t)v * 1024;
			return 0;
		}
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	return -1;
}

int metrics_parse_meminfo(const char *text, uint64_t *total, uint64_t *available)
{
	return kb_field(text, "MemTotal", total) == 0 && kb_field(text, "MemAvailable", available) == 0
		       ? 0
		       : -1;
}

int metrics_parse_smaps_rollup(const char *text, uint64_t *rss, uint64_t *private_bytes)
{
	uint64_t clean = 0, dirty = 0;
	if (kb_field(text, "Rss", rss) < 0 || kb_field(text, "Private_Clean", &clean) < 0 ||
	    kb_field(text, "Private_Dirty", &dirty) < 0)
		return -1;
	*private_bytes = clean + dirty;
	return 0;
}

int metrics_prom_label(struct buf *out, const char *value)
{
	int rc = buf_append_byte(out, '"');
	for (const char *p = value; *p && rc == 0; p++) {
		if (*p == '\\')
			rc = buf_append_str(out, "\\\\");
		else if (*p == '"')
			rc = buf_append_str(out, "\\\"");
		else if (*p == '\n')
			rc = buf_append_str(out, "\\n");
		else
			rc = buf_append_byte(out, *p);
	}
	return rc | buf_append_byte(out, '"');
}

static bool dim_allowed(const char *allowed, const char *name)
{
	size_t nl = strlen(name);
	for (const char *p = allowed; p && *p;) {
		while (*p == ' ' || *p == ',')
			p++;
		size_t l = strcspn(p, ", ");
		if (l == nl && strncmp(p, name, nl) == 0)
			return true;
		p += l;
	}
	return false;
}

static int json_num(struct buf *out, double v)
{
	if (!isfinite(v))
		v = 0;
	if (v == (double)(int64_t)v && fabs(v) < 9e15)
		return buf_printf(out, "%" PRId64, (int64_t)v);
	return buf_printf(out, "%.6g", v);
}

/* ,"name":"value" for each (string members of an EMF document). */
static int emf_members(struct buf *out, const struct metrics_dim *m, size_t n)
{
	int rc = 0;
	for (size_t i = 0; i < n; i++) {
		rc |= buf_append_byte(out, ',');
		rc |= cwlogs_json_string(out, m[i].name, strlen(m[i].name));
		rc |= buf_append_byte(out, ':');
		rc |= cwlogs_json_string(out, m[i].value, strlen(m[i].value));
	}
	return rc;
}

int metrics_emf(struct buf *out, const char *namespace_, const char *allowed, int64_t ts_ms,
		const struct metrics_dim *dims, size_t ndims, const struct metrics_dim *extra,
		size_t nextra, const struct metrics_value *vals, size_t nvals)
{
	int rc = buf_printf(out, "{\"_aws\":{\"Timestamp\":%" PRId64 ",\"CloudWatchMetrics\":[{"
				 "\"Namespace\":", ts_ms);
	rc |= cwlogs_json_string(out, namespace_, strlen(namespace_));
	rc |= buf_append_str(out, ",\"Dimensions\":[[");
	int first = 1;
	for (size_t i = 0; i < ndims; i++) {
		if (!dim_allowed(allowed, dims[i].name))
			continue;
		rc |= buf_append_str(out, first ? "" : ",");
		rc |= cwlogs_json_string(out, dims[i].name, strlen(dims[i].name));
		first = 0;
	}
	rc |= buf_append_str(out, "]],\"Metrics\":[");
	for (size_t i = 0; i < nvals; i++) {
		rc |= buf_append_str(out, i ? ",{\"Name\":" : "{\"Name\":");
		rc |= cwlogs_json_string(out, vals[i].name, strlen(vals[i].name));
		rc |= buf_append_str(out, ",\"Unit\":");
		rc |= cwlogs_json_string(out, vals[i].unit, strlen(vals[i].unit));
		rc |= buf_append_byte(out, '}');
	}
	rc |= buf_append_str(out, "]}]}");
	rc |= emf_members(out, dims, ndims);
	rc |= emf_members(out, extra, nextra);
	for (size_t i = 0; i < nvals; i++) {
		rc |= buf_append_byte(out, ',');
		rc |= cwlogs_json_string(out, vals[i].name, strlen(vals[i].name));
		rc |= buf_append_byte(out, ':');
		rc |= json_num(out, vals[i].value);
	}
	rc |= buf_append_byte(out, '}');
	return rc ? -1 : 0;
}

/* ---- containers ---- */

static struct cstat *cfind(struct metrics *m, const char *id)
{
	for (size_t i = 0; i < m->nc; i++)
		if (strcmp(m->c[i].id, id) == 0)
			return &m->c[i];
	return NULL;
}

static struct cstat *cadd(struct metrics *m, const char *id)
{
	if (m->nc == m->capc) {
		size_t nc = m->capc ? m->capc * 2 : 16;
		struct cstat *c = realloc(m->c, nc * sizeof *c);
		if (!c)
			return NULL;
		m->c = c;
		m->capc = nc;
	}
	struct cstat *c = &m->c[m->nc++];
	memset(c, 0, sizeof *c);
	c->m = m;
	snprintf(c->id, sizeof c->id, "%s", id);
	snprintf(c->short_id, sizeof c->short_id, "%.12s", id);
	snprintf(c->health, sizeof c->health, "none");
	return c;
}

static const char *jstr(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(v) ? v->valuestring : "";
}

static double jnum(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static void publish(struct metrics *m);
static void next_calls(struct metrics *m);

static void call_done(struct metrics *m, struct cstat *c)
{
	(void)c;
	m->calls--;
	next_calls(m);
}

static void on_cinspect(const struct docker_result *res, void *arg);
static void on_cstats(const struct docker_result *res, void *arg);

/* Index of a container by pointer value may move when the table grows:
 * calls carry the id instead. */
struct ccall {
	struct metrics *m;
	struct ccall *prev, *next;
	uint64_t call;
	char id[72];
	int kind; /* 0 inspect, 1 stats, 2 OOM check */
};

static struct ccall *ccall_new(struct metrics *m, const char *id, int kind)
{
	struct ccall *cc = calloc(1, sizeof *cc);
	if (!cc)
		return NULL;
	cc->m = m;
	cc->kind = kind;
	snprintf(cc->id, sizeof cc->id, "%s", id);
	DLIST_PUSH(m->ccalls, cc);
	return cc;
}

static void ccall_free(struct ccall *cc)
{
	struct metrics *m = cc->m;
	DLIST_UNLINK(m->ccalls, cc);
	free(cc);
}

static void next_calls(struct metrics *m)
{
	while (m->in_round && m->calls < CALLS_MAX && m->next_call < 2 * m->nc) {
		size_t i = m->next_call / 2;
		int kind = (int)(m->next_call % 2);
		m->next_call++;
		struct cstat *c = &m->c[i];
		if (!c->present)
			continue;
		struct ccall *cc = ccall_new(m, c->id, kind);
		if (!cc)
			continue;
		cc->call = kind == 0 ? docker_container_inspect(m->docker, c->id, 0, on_cinspect, cc)
				     : docker_container_stats(m->docker, c->id, 0, on_cstats, cc);
		if (!cc->call) {
			ccall_free(cc);
			continue;
		}
		m->calls++;
	}
	if (m->in_round && m->calls == 0 && m->next_call >= 2 * m->nc) {
		m->in_round = false;
		publish(m);
	}
}

static void on_cinspect(const struct docker_result *res, void *arg)
{
	struct ccall *cc = arg;
	struct metrics *m = cc->m;
	struct cstat *c = cfind(m, cc->id);
	if (c && res->error == DOCKER_OK) {
		const cJSON *st = cJSON_GetObjectItemCaseSensitive(res->json, "State");
		const cJSON *h = cJSON_GetObjectItemCaseSensitive(st, "Health");
		const char *hs = jstr(h, "Status");
		snprintf(c->health, sizeof c->health, "%s", *hs ? hs : "none");
		c->restarts = (int64_t)jnum(res->json, "RestartCount");
	}
	ccall_free(cc);
	call_done(m, c);
}

static void on_cstats(const struct docker_result *res, void *arg)
{
	struct ccall *cc = arg;
	struct metrics *m = cc->m;
	struct cstat *c = cfind(m, cc->id);
	if (c && res->error == DOCKER_OK) {
		const cJSON *cpu = cJSON_GetObjectItemCaseSensitive(res->json, "cpu_stats");
		const cJSON *usage = cJSON_GetObjectItemCaseSensitive(cpu, "cpu_usage");
		uint64_t ns = (uint64_t)jnum(usage, "total_usage");
		int64_t now = clock_mono_ms();
		if (c->cpu_prev_mono && now > c->cpu_prev_mono && ns >= c->cpu_prev_ns)
			c->cpu_pct = (double)(ns - c->cpu_prev_ns) / 1e6 /
				     (double)(now - c->cpu_prev_mono) * 100.0;
		c->cpu_prev_ns = ns;
		c->cpu_prev_mono = now;
		c->cpu_s = (double)ns / 1e9;
		const cJSON *ms = cJSON_GetObjectItemCaseSensitive(res->json, "memory_stats");
		const cJSON *stats = cJSON_GetObjectItemCaseSensitive(ms, "stats");
		double inactive = jnum(stats, "total_inactive_file"); /* cgroup v1 */
		if (inactive == 0)
			inactive = jnum(stats, "inactive_file");      /* cgroup v2 */
		double used = jnum(ms, "usage") - inactive;
		c->mem = used > 0 ? used : 0;
	}
	ccall_free(cc);
	call_done(m, c);
}

static void on_list(const struct docker_result *res, void *arg)
{
	struct metrics *m = arg;
	m->list_call = 0;
	if (res->error != DOCKER_OK) {
		log_warn("metrics.list_failed", "error=\"%s\"", res->message);
		m->in_round = false;
		publish(m);
		return;
	}
	for (size_t i = 0; i < m->nc; i++)
		m->c[i].present = false;
	const cJSON *it;
	cJSON_ArrayForEach(it, res->json) {
		const char *id = jstr(it, "Id");
		const cJSON *labels = cJSON_GetObjectItemCaseSensitive(it, "Labels");
		if (!*id || strlen(id) >= sizeof m->c[0].id)
			continue;
		struct cstat *c = cfind(m, id);
		if (!c && !(c = cadd(m, id)))
			continue;
		c->present = true;
		snprintf(c->app, sizeof c->app, "%s", jstr(labels, "slipway.app"));
		snprintf(c->service, sizeof c->service, "%s", jstr(labels, "slipway.service"));
	}
	/* Containers gone from the listing are forgotten. */
	size_t w = 0;
	for (size_t i = 0; i < m->nc; i++)
		if (m->c[i].present)
			m->c[w++] = m->c[i];
	m->nc = w;
	m->next_call = 0;
	next_calls(m);
}

/* ---- instance ---- */

struct disk_job {
	struct metrics *m;
	char path[1024];
	uint64_t total, free;
	int rc;
};

static void disk_work(void *arg)
{
	struct disk_job *j = arg;
	struct statvfs sv;
	j->rc = statvfs(j->path, &sv);
	if (j->rc == 0) {
		j->total = (uint64_t)sv.f_blocks * sv.f_frsize;
		j->free = (uint64_t)sv.f_bavail * sv.f_frsize;
	}
}

static void disk_done(void *arg)
{
	struct disk_job *j = arg;
	if (!j->m) { /* the module went away meanwhile */
		free(j);
		return;
	}
	j->m->disk_job = NULL;
	j->m->statvfs_running = false;
	if (j->rc == 0) {
		j->m->disk_total = j->total;
		j->m->disk_free = j->free;
	}
	free(j);
}

static void sample_instance(struct metrics *m)
{
	char text[PROC_FILE_MAX];
	uint64_t busy, total;
	if (read_small("/proc/stat", text, sizeof text) == 0 &&
	    metrics_parse_proc_stat(text, &busy, &total) == 0) {
		if (m->cpu_total_prev && total > m->cpu_total_prev)
			m->host_cpu_pct = 100.0 * (double)(busy - m->cpu_busy_prev) /
					  (double)(total - m->cpu_total_prev);
		m->cpu_busy_prev = busy;
		m->cpu_total_prev = total;
	}
	if (read_small("/proc/meminfo", text, sizeof text) == 0)
		metrics_parse_meminfo(text, &m->mem_total, &m->mem_avail);
	if (read_small("/proc/self/smaps_rollup", text, sizeof text) == 0)
		metrics_parse_smaps_rollup(text, &m->rss, &m->private_bytes);
	if (m->statvfs_running)
		return;
	struct disk_job *j = calloc(1, sizeof *j);
	if (!j)
		return;
	j->m = m;
	snprintf(j->path, sizeof j->path, "%s", m->root);
	if (m->workers && worker_submit(m->workers, disk_work, disk_done, j) == 0) {
		m->statvfs_running = true;
		m->disk_job = j;
		return;
	}
	disk_work(j);
	m->statvfs_running = true;
	disk_done(j);
}

/* ---- rounds ---- */

static void on_round(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	struct metrics *m = t->data;
	if (m->in_round)
		return; /* the engine is slow: skip a beat rather than pile up */
	m->in_round = true;
	m->rounds++;
	sample_instance(m);
	m->list_call = docker_container_list(m->docker, 0, m->filters, 0, on_list, m);
	if (!m->list_call) {
		m->in_round = false;
		publish(m);
	}
}

static void on_oom_inspect(const struct docker_result *res, void *arg)
{
	struct ccall *cc = arg;
	struct cstat *c = cfind(cc->m, cc->id);
	const cJSON *st = res->error == DOCKER_OK ? cJSON_GetObjectItemCaseSensitive(res->json, "State")
						  : NULL;
	if (c && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(st, "OOMKilled")) && !c->oom_seen) {
		c->ooms++;
		c->oom_seen = true;
		log_warn("metrics.oom", "container=%.12s app=%s service=%s (exit 137, OOMKilled)",
			 c->id, c->app, c->service);
	}
	ccall_free(cc);
}

static void oom_check(struct metrics *m, const char *id)
{
	struct ccall *cc = ccall_new(m, id, 2);
	if (cc && !(cc->call = docker_container_inspect(m->docker, id, 0, on_oom_inspect, cc)))
		ccall_free(cc);
}

static void on_event(const cJSON *ev, int64_t time_ns, void *arg)
{
	(void)time_ns;
	struct metrics *m = arg;
	const char *action = jstr(ev, "Action");
	const cJSON *actor = cJSON_GetObjectItemCaseSensitive(ev, "Actor");
	const char *id = jstr(actor, "ID");
	const cJSON *attrs = cJSON_GetObjectItemCaseSensitive(actor, "Attributes");
	if (!*id)
		return;
	struct cstat *c = cfind(m, id);
	if (!c && (strcmp(action, "oom") == 0 || strcmp(action, "die") == 0)) {
		if (!(c = cadd(m, id)))
			return;
		c->present = true;
		snprintf(c->app, sizeof c->app, "%s", jstr(attrs, "slipway.app"));
		snprintf(c->service, sizeof c->service, "%s", jstr(attrs, "slipway.service"));
	}
	if (!c)
		return;
	if (strcmp(action, "oom") == 0) {
		/* The kernel may report several for one kill: one per run counts. */
		if (!c->oom_seen) {
			c->ooms++;
			c->oom_seen = true;
			log_warn("metrics.oom", "container=%.12s app=%s service=%s", id, c->app,
				 c->service);
		}
	} else if (strcmp(action, "die") == 0) {
		/* No oom event came (cgroup v2 may not send one): exit 137 plus
		 * State.OOMKilled says it. */
		if (!c->oom_seen && strcmp(jstr(attrs, "exitCode"), "137") == 0)
			oom_check(m, id);
	} else if (strcmp(action, "start") == 0) {
		c->oom_seen = false;
	} else if (strncmp(action, "health_status", 13) == 0) {
		const char *hs = strchr(action, ':');
		if (hs) {
			hs++;
			while (*hs == ' ')
				hs++;
			snprintf(c->health, sizeof c->health, "%s", hs);
		}
	}
}

/* ---- publishing ---- */

static void agent_group(const struct metrics *m, char *out, size_t cap)
{
	snprintf(out, cap, "%s%s", m->prefix, METRICS_AGENT_GROUP);
}

static void emit_doc(struct metrics *m, const char *group, struct buf *doc)
{
	char stream[512];
	snprintf(stream, sizeof stream, "metrics/%s", m->instance);
	for (char *p = stream; *p; p++)
		if (*p == ':' || *p == '*')
			*p = '_';
	if (doc->len)
		logship_emit(m->ship, group, stream, clock_wall_ms(), doc->data, doc->len);
	buf_reset(doc);
}

struct coord_batch {
	struct metrics *m;
	cJSON *arr;
	size_t n;
	int64_t ts;
};

static void on_coord_posted(const struct logdest_result *res, void *arg)
{
	(void)arg;
	if (res->status != LOGDEST_OK)
		log_warn("metrics.post_failed", "error=\"%s\"", res->message);
}

static void coord_flush(struct coord_batch *b)
{
	if (!b->n)
		return;
	cJSON *doc = cJSON_CreateObject();
	cJSON_AddItemToObject(doc, "metrics", b->arr);
	char *text = cJSON_PrintUnformatted(doc);
	if (text) {
		logdest_post_metrics(b->m->coord, text, strlen(text), on_coord_posted, NULL);
		b->m->coord_post++;
	}
	free(text);
	cJSON_Delete(doc);
	b->arr = cJSON_CreateArray();
	b->n = 0;
}

static void coord_add(struct coord_batch *b, const char *name, double value, const char *unit,
		      const struct metrics_dim *dims, size_t ndims)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "name", name);
	cJSON_AddNumberToObject(o, "value", isfinite(value) ? value : 0);
	cJSON_AddStringToObject(o, "unit", unit);
	cJSON_AddNumberToObject(o, "ts_ms", (double)b->ts);
	cJSON *d = cJSON_AddObjectToObject(o, "dimensions");
	for (size_t i = 0; i < ndims; i++)
		cJSON_AddStringToObject(d, dims[i].name, dims[i].value);
	cJSON_AddItemToArray(b->arr, o);
	if (++b->n >= COORD_METRICS_MAX)
		coord_flush(b);
}

static void publish(struct metrics *m)
{
	int64_t now = clock_wall_ms();
	struct logship_stats ls = {0};
	if (m->ship)
		logship_stats(m->ship, &ls);
	double mem_used = m->mem_total > m->mem_avail ? (double)(m->mem_total - m->mem_avail) : 0;
	double disk_used = m->disk_total > m->disk_free ? (double)(m->disk_total - m->disk_free) : 0;
	double disk_pct = m->disk_total ? 100.0 * disk_used / (double)m->disk_total : 0;
	struct metrics_value inst[] = {
		{"InstanceCpuPercent", "Percent", m->host_cpu_pct},
		{"InstanceMemoryUsedBytes", "Bytes", mem_used},
		{"InstanceMemoryPercent", "Percent",
		 m->mem_total ? 100.0 * mem_used / (double)m->mem_total : 0},
		{"InstanceDiskUsedPercent", "Percent", disk_pct},
		{"InstanceDiskFreeBytes", "Bytes", (double)m->disk_free},
	};
	struct metrics_value agent[] = {
		{"AgentPrivateMemoryBytes", "Bytes", (double)m->private_bytes},
		{"AgentRssBytes", "Bytes", (double)m->rss},
		{"LogEventsShipped", "Count", (double)ls.events_shipped},
		{"LogEventsDropped", "Count",
		 (double)(ls.dropped_too_old + ls.dropped_too_new + ls.events_rejected +
			  ls.events_refused + ls.spool_dropped)},
		{"LogEventsSpooled", "Count", (double)ls.events_spooled},
		{"LogRetries", "Count", (double)ls.retries},
		{"LogQueueLagMs", "Milliseconds", (double)ls.queue_lag_ms},
		{"LogSpoolBytes", "Bytes", (double)ls.spool_bytes},
	};
	struct metrics_dim idim[] = {{"InstanceId", m->instance}};
	if (!m->coord && m->ship) {
		struct buf doc;
		buf_init(&doc, (size_t)256 << 10);
		char group[512];
		agent_group(m, group, sizeof group);
		metrics_emf(&doc, m->ns, m->dims, now, idim, 1, NULL, 0, inst,
			    sizeof inst / sizeof inst[0]);
		emit_doc(m, group, &doc);
		metrics_emf(&doc, m->ns, m->dims, now, idim, 1, NULL, 0, agent,
			    sizeof agent / sizeof agent[0]);
		emit_doc(m, group, &doc);
		for (size_t i = 0; i < m->nc; i++) {
			struct cstat *c = &m->c[i];
			if (!c->present || !c->app[0])
				continue;
			struct metrics_dim d[] = {{"App", c->app}, {"Service", c->service},
						  {"InstanceId", m->instance}};
			struct metrics_dim x[] = {{"ContainerId", c->short_id}, {"Health", c->health}};
			struct metrics_value v[] = {
				{"ContainerCpuPercent", "Percent", c->cpu_pct},
				{"ContainerMemoryBytes", "Bytes", c->mem},
				{"ContainerHealthy", "None", strcmp(c->health, "healthy") == 0 ||
								      strcmp(c->health, "none") == 0
							      ? 1
							      : 0},
				{"ContainerRestarts", "Count", (double)(c->restarts - c->restarts_reported)},
				{"ContainerOomKills", "Count", (double)(c->ooms - c->ooms_reported)},
			};
			c->restarts_reported = c->restarts;
			c->ooms_reported = c->ooms;
			metrics_emf(&doc, m->ns, m->dims, now, d, 3, x, 2, v, sizeof v / sizeof v[0]);
			logship_group_name(m->prefix, c->app, group, sizeof group);
			emit_doc(m, group, &doc);
		}
		buf_free(&doc);
		return;
	}
	if (!m->coord)
		return;
	struct coord_batch b = {.m = m, .arr = cJSON_CreateArray(), .ts = now};
	for (size_t i = 0; i < sizeof inst / sizeof inst[0]; i++)
		coord_add(&b, inst[i].name, inst[i].value, inst[i].unit, idim, 1);
	for (size_t i = 0; i < sizeof agent / sizeof agent[0]; i++)
		coord_add(&b, agent[i].name, agent[i].value, agent[i].unit, idim, 1);
	for (size_t i = 0; i < m->nc; i++) {
		struct cstat *c = &m->c[i];
		if (!c->present || !c->app[0])
			continue;
		struct metrics_dim d[] = {{"App", c->app}, {"Service", c->service},
					  {"InstanceId", m->instance}, {"ContainerId", c->short_id}};
		coord_add(&b, "ContainerCpuPercent", c->cpu_pct, "Percent", d, 4);
		coord_add(&b, "ContainerMemoryBytes", c->mem, "Bytes", d, 4);
		coord_add(&b, "ContainerHealthy",
			  strcmp(c->health, "healthy") == 0 || strcmp(c->health, "none") == 0, "None",
			  d, 4);
		coord_add(&b, "ContainerRestarts", (double)c->restarts, "Count", d, 4);
		coord_add(&b, "ContainerOomKills", (double)c->ooms, "Count", d, 4);
	}
	for (size_t i = 0; i < m->nswaps; i++) {
		struct swapstat *s = &m->swaps[i];
		struct metrics_dim d[] = {{"App", s->app}, {"InstanceId", m->instance}};
		coord_add(&b, "SwapsSucceeded", (double)s->succeeded, "Count", d, 2);
		coord_add(&b, "SwapsFailed", (double)s->failed, "Count", d, 2);
		coord_add(&b, "SwapLastDurationMs", (double)s->last_ms, "Milliseconds", d, 2);
	}
	coord_flush(&b);
	cJSON_Delete(b.arr);
}

void metrics_swap(struct metrics *m, const char *app, const char *outcome, int64_t duration_ms)
{
	if (!m || !app || !outcome)
		return;
	struct swapstat *s = NULL;
	for (size_t i = 0; i < m->nswaps; i++)
		if (strcmp(m->swaps[i].app, app) == 0)
			s = &m->swaps[i];
	if (!s) {
		struct swapstat *ns = realloc(m->swaps, (m->nswaps + 1) * sizeof *ns);
		if (!ns)
			return;
		m->swaps = ns;
		s = &m->swaps[m->nswaps++];
		memset(s, 0, sizeof *s);
		snprintf(s->app, sizeof s->app, "%s", app);
	}
	bool ok = strcmp(outcome, "succeeded") == 0, failed = strcmp(outcome, "failed") == 0;
	if (ok)
		s->succeeded++;
	else if (failed)
		s->failed++;
	else
		s->other++;
	s->last_ms = duration_ms;
	if (m->coord || !m->ship)
		return; /* the coordinator gets the totals with the next round */
	struct metrics_dim d[] = {{"App", app}, {"InstanceId", m->instance}};
	struct metrics_dim x[] = {{"Outcome", outcome}};
	struct metrics_value v[] = {
		{"SwapDurationMs", "Milliseconds", (double)duration_ms},
		{"SwapSucceeded", "Count", ok ? 1 : 0},
		{"SwapFailed", "Count", failed ? 1 : 0},
	};
	struct buf doc;
	buf_init(&doc, (size_t)64 << 10);
	char group[512];
	logship_group_name(m->prefix, app, group, sizeof group);
	if (metrics_emf(&doc, m->ns, m->dims, clock_wall_ms(), d, 2, x, 1, v, 3) == 0)
		emit_doc(m, group, &doc);
	buf_free(&doc);
}

/* ---- Prometheus ---- */

static int prom_head(struct buf *out, const char *name, const char *type, const char *help)
{
	return buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static int prom_cline(struct buf *out, const char *name, const struct cstat *c, double v)
{
	int rc = buf_printf(out, "%s{app=", name);
	rc |= metrics_prom_label(out, c->app);
	rc |= buf_append_str(out, ",service=");
	rc |= metrics_prom_label(out, c->service);
	rc |= buf_append_str(out, ",container=");
	rc |= metrics_prom_label(out, c->short_id);
	rc |= buf_append_str(out, "} ");
	rc |= json_num(out, v);
	return rc | buf_append_byte(out, '\n');
}

static int prom_plain(struct buf *out, const char *name, const char *type, const char *help,
		      double v)
{
	int rc = prom_head(out, name, type, help);
	rc |= buf_printf(out, "%s ", name);
	rc |= json_num(out, v);
	return rc | buf_append_byte(out, '\n');
}

int metrics_prometheus(struct metrics *m, struct buf *out)
{
	char text[PROC_FILE_MAX];
	if (read_small("/proc/self/smaps_rollup", text, sizeof text) == 0)
		metrics_parse_smaps_rollup(text, &m->rss, &m->private_bytes);
	int rc = 0;
	static const struct {
		const char *name, *type, *help;
		int which;
	} cm[] = {
		{"slipway_container_healthy", "gauge",
		 "1 when the container's health check passes (or it has none)", 0},
		{"slipway_container_restarts_total", "counter", "Restarts by Docker's restart policy", 1},
		{"slipway_container_oom_kills_total", "counter", "Kills by the out-of-memory killer", 2},
		{"slipway_container_cpu_seconds_total", "counter", "CPU time used", 3},
		{"slipway_container_cpu_percent", "gauge", "CPU use between the last two samples, "
		 "percent of one CPU", 4},
		{"slipway_container_memory_bytes", "gauge", "Memory use minus inactive page cache", 5},
	};
	for (size_t k = 0; k < sizeof cm / sizeof cm[0]; k++) {
		rc |= prom_head(out, cm[k].name, cm[k].type, cm[k].help);
		for (size_t i = 0; i < m->nc; i++) {
			const struct cstat *c = &m->c[i];
			if (!c->present || !c->app[0])
				continue;
			double v = cm[k].which == 0 ? (strcmp(c->health, "healthy") == 0 ||
						       strcmp(c->health, "none") == 0)
				   : cm[k].which == 1 ? (double)c->restarts
				   : cm[k].which == 2 ? (double)c->ooms
				   : cm[k].which == 3 ? c->cpu_s
				   : cm[k].which == 4 ? c->cpu_pct
						      : c->mem;
			rc |= prom_cline(out, cm[k].name, c, v);
		}
	}
	double mem_used = m->mem_total > m->mem_avail ? (double)(m->mem_total - m->mem_avail) : 0;
	rc |= prom_plain(out, "slipway_instance_cpu_percent", "gauge", "Instance CPU busy, percent",
			 m->host_cpu_pct);
	rc |= prom_plain(out, "slipway_instance_memory_used_bytes", "gauge",
			 "MemTotal minus MemAvailable", mem_used);
	rc |= prom_plain(out, "slipway_instance_memory_total_bytes", "gauge", "MemTotal",
			 (double)m->mem_total);
	rc |= prom_plain(out, "slipway_instance_disk_free_bytes", "gauge",
			 "Free bytes on Docker's root file system", (double)m->disk_free);
	rc |= prom_plain(out, "slipway_instance_disk_total_bytes", "gauge",
			 "Size of Docker's root file system", (double)m->disk_total);
	rc |= prom_head(out, "slipway_swaps_total", "counter", "Swaps by outcome");
	for (size_t i = 0; i < m->nswaps; i++) {
		const struct swapstat *s = &m->swaps[i];
		const char *names[] = {"succeeded", "failed", "other"};
		const uint64_t vals[] = {s->succeeded, s->failed, s->other};
		for (int k = 0; k < 3; k++) {
			rc |= buf_append_str(out, "slipway_swaps_total{app=");
			rc |= metrics_prom_label(out, s->app);
			rc |= buf_printf(out, ",outcome=\"%s\"} %" PRIu64 "\n", names[k], vals[k]);
		}
	}
	rc |= prom_head(out, "slipway_swap_last_duration_ms", "gauge", "Duration of the last swap");
	for (size_t i = 0; i < m->nswaps; i++) {
		rc |= buf_append_str(out, "slipway_swap_last_duration_ms{app=");
		rc |= metrics_prom_label(out, m->swaps[i].app);
		rc |= buf_printf(out, "} %" PRId64 "\n", m->swaps[i].last_ms);
	}
	rc |= prom_plain(out, "slipway_agent_private_memory_bytes", "gauge",
			 "Private_Clean + Private_Dirty of the agent (smaps_rollup)",
			 (double)m->private_bytes);
	rc |= prom_plain(out, "slipway_agent_rss_bytes", "gauge", "Resident set size of the agent",
			 (double)m->rss);
	if (m->ship) {
		struct logship_stats s;
		logship_stats(m->ship, &s);
		rc |= prom_plain(out, "slipway_log_lines_read_total", "counter",
				 "Lines read from containers", (double)s.lines_read);
		rc |= prom_plain(out, "slipway_log_events_shipped_total", "counter",
				 "Log events accepted by the destination", (double)s.events_shipped);
		rc |= prom_head(out, "slipway_log_events_dropped_total", "counter",
				"Log events dropped, by reason");
		const char *reasons[] = {"too_old", "too_new", "empty", "rejected", "refused",
					 "spool_cap"};
		const uint64_t counts[] = {s.dropped_too_old, s.dropped_too_new, s.dropped_empty,
					   s.events_rejected, s.events_refused, s.spool_dropped};
		for (int k = 0; k < 6; k++)
			rc |= buf_printf(out, "slipway_log_events_dropped_total{reason=\"%s\"} %" PRIu64
					 "\n", reasons[k], counts[k]);
		rc |= prom_plain(out, "slipway_log_events_spooled_total", "counter",
				 "Log events written to the spool", (double)s.events_spooled);
		rc |= prom_plain(out, "slipway_log_duplicates_skipped_total", "counter",
				 "Events already shipped, skipped on a resumed read",
				 (double)s.duplicates_skipped);
		rc |= prom_plain(out, "slipway_log_utf8_replaced_total", "counter",
				 "Invalid UTF-8 sequences replaced by U+FFFD", (double)s.utf8_replaced);
		rc |= prom_plain(out, "slipway_log_events_split_total", "counter",
				 "Extra events made by cutting lines over 1 MiB", (double)s.events_split);
		rc |= prom_plain(out, "slipway_log_batches_sent_total", "counter", "Batches sent",
				 (double)s.batches_sent);
		rc |= prom_plain(out, "slipway_log_retries_total", "counter",
				 "Requests repeated after a failure", (double)s.retries);
		rc |= prom_plain(out, "slipway_log_throttled_total", "counter",
				 "Throttling answers", (double)s.throttled);
		rc |= prom_plain(out, "slipway_log_pauses_total", "counter",
				 "Log streams paused for backpressure", (double)s.pauses);
		rc |= prom_plain(out, "slipway_log_reads_total", "counter",
				 "Log connections opened", (double)s.reads);
		rc |= prom_plain(out, "slipway_log_queue_lag_ms", "gauge",
				 "Age of the oldest event not yet accepted or spooled",
				 (double)s.queue_lag_ms);
		rc |= prom_plain(out, "slipway_log_memory_bytes", "gauge", "Batches held in memory",
				 (double)s.memory_bytes);
		rc |= prom_plain(out, "slipway_log_spool_bytes", "gauge", "Bytes in the spool",
				 (double)s.spool_bytes);
		rc |= prom_plain(out, "slipway_log_spool_files", "gauge", "Batches in the spool",
				 (double)s.spool_files);
		rc |= prom_plain(out, "slipway_log_streams", "gauge", "Streams known",
				 (double)s.streams);
		rc |= prom_plain(out, "slipway_log_following", "gauge", "Open log connections",
				 (double)s.following);
		rc |= prom_plain(out, "slipway_log_paused", "gauge",
				 "Log connections held back for backpressure", (double)s.paused);
		rc |= prom_plain(out, "slipway_log_destination_up", "gauge",
				 "0 while the destination cannot be reached", s.destination_down ? 0 : 1);
	}
	return rc ? -1 : 0;
}

static void on_http(struct httpd_req *req, void *arg)
{
	struct metrics *m = arg;
	if (strcmp(req->path, "/metrics") != 0) {
		httpd_respond_error(req, 404, "not_found", "only /metrics is served here");
		return;
	}
	if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
		httpd_respond_error(req, 405, "method_not_allowed", "GET /metrics");
		return;
	}
	struct buf out;
	buf_init(&out, (size_t)16 << 20);
	if (metrics_prometheus(m, &out) < 0) {
		buf_free(&out);
		httpd_respond_error(req, 500, "internal", "the metrics text is too large");
		return;
	}
	httpd_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", out.data ? out.data : "",
		      out.len);
	buf_free(&out);
}

/* ---- the module ---- */

struct metrics *metrics_new(const struct metrics_opts *o, struct err *err)
{
	if (!o || !o->loop || !o->docker || !o->instance_id) {
		err_set(err, "metrics: loop, docker and instance id are required");
		return NULL;
	}
	struct metrics *m = calloc(1, sizeof *m);
	if (!m) {
		err_set(err, "out of memory");
		return NULL;
	}
	m->loop = o->loop;
	m->docker = o->docker;
	m->ship = o->ship;
	m->coord = o->coord;
	m->workers = o->workers;
	m->interval_ms = o->interval_ms > 0 ? o->interval_ms : DEFAULT_INTERVAL_MS;
	snprintf(m->ns, sizeof m->ns, "%s", o->namespace_ ? o->namespace_ : METRICS_DEFAULT_NAMESPACE);
	snprintf(m->dims, sizeof m->dims, "%s",
		 o->dimensions ? o->dimensions : METRICS_DEFAULT_DIMENSIONS);
	snprintf(m->instance, sizeof m->instance, "%s", o->instance_id);
	snprintf(m->prefix, sizeof m->prefix, "%s", o->group_prefix ? o->group_prefix : "/slipway/");
	snprintf(m->root, sizeof m->root, "%s",
		 o->docker_root ? o->docker_root : METRICS_DEFAULT_DOCKER_ROOT);
	size_t nf = 0;
	m->filters[nf++] = "slipway.app";
	for (const char *const *l = o->labels; l && *l && nf <= AGENT_LABELS_MAX; l++) {
		if (!(m->filter_store[nf - 1] = strdup(*l))) {
			metrics_free(m);
			err_set(err, "out of memory");
			return NULL;
		}
		m->filters[nf] = m->filter_store[nf - 1];
		nf++;
	}
	m->filters[nf] = NULL;
	ev_timer_init(&m->round_timer, on_round, 0.0, (double)m->interval_ms / 1000.0);
	m->round_timer.data = m;
	if (o->listen && *o->listen) {
		struct httpd_config hc = {.listen = o->listen, .handler = on_http, .arg = m,
					  .max_connections = 16, .body_max = 1};
		struct err herr = {{0}};
		/* A busy port costs the local page, not the agent: deploys go on. */
		if (!(m->httpd = httpd_new(m->loop, &hc, &herr)))
			log_warn("metrics.listen_failed", "listen=%s error=\"%s\": no Prometheus "
				  "endpoint", o->listen, herr.msg);
	}
	return m;
}

void metrics_start(struct metrics *m)
{
	if (!m)
		return;
	struct docker_events_opts eo = {.type = "container", .labels = m->filters,
					.on_event = on_event, .arg = m};
	m->events_sub = docker_events_subscribe(m->docker, &eo);
	/* The first round at once (fills the Prometheus page), then every interval. */
	ev_timer_set(&m->round_timer, 0.0, (double)m->interval_ms / 1000.0);
	ev_timer_start(m->loop, &m->round_timer);
}

void metrics_free(struct metrics *m)
{
	if (!m)
		return;
	ev_timer_stop(m->loop, &m->round_timer);
	if (m->events_sub)
		docker_cancel(m->docker, m->events_sub);
	if (m->list_call)
		docker_cancel(m->docker, m->list_call);
	while (m->ccalls) {
		if (m->ccalls->call)
			docker_cancel(m->docker, m->ccalls->call);
		ccall_free(m->ccalls);
	}
	if (m->disk_job)
		m->disk_job->m = NULL;
	httpd_free(m->httpd);
	for (size_t i = 0; i < AGENT_LABELS_MAX + 1; i++)
		free(m->filter_store[i]);
	free(m->c);
	free(m->swaps);
	free(m);
}

int metrics_port(const struct metrics *m)
{
	return m && m->httpd ? httpd_port(m->httpd) : 0;
}
