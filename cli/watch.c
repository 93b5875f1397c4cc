#include "watch.h"

#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "table.h"

/* ---- build logs ---- */

struct logout {
	FILE *out;
	int failed;
	int mid_line;     /* the last byte written was not a newline */
};

static int log_chunk(const char *data, size_t len, void *arg)
{
	struct logout *lo = arg;
	char clean[4096];
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)data[i];
		if (ch == '\r')
			continue; /* progress redraws: the newline follows */
		if (ch == '\n' && !lo->mid_line)
			continue; /* an empty line is the coordinator's keepalive, not log */
		lo->mid_line = ch != '\n';
		clean[o++] = (ch < 0x20 && ch != '\n' && ch != '\t') || ch == 0x7F ? '?' : (char)ch;
		if (o == sizeof clean) {
			if (fwrite(clean, 1, o, lo->out) != o)
				lo->failed = 1;
			o = 0;
		}
	}
	if (o && fwrite(clean, 1, o, lo->out) != o)
		lo->failed = 1;
	fflush(lo->out);
	return lo->failed ? -1 : 0;
}

int watch_build_log(struct cli *cli, const char *build, FILE *out, struct err *err)
{
	char path[256] = "/v1/builds/";
	if (client_escape(path, sizeof path, build) < 0 ||
	    strlen(path) + 5 >= sizeof path)
		return err_set(err, "build id too long");
	strcat(path, "/log");
	struct logout lo = {.out = out};
	/* No stall limit: a docker build step can be silent for minutes. */
	if (client_stream(&cli->client, path, 0, log_chunk, &lo, err) < 0)
		return -1;
	if (lo.failed)
		return err_set(err, "writing the log failed");
	return 0;
}

/* ---- rollouts ---- */

#define JOBS_TRACKED 4096

struct seen_job {
	char id[72];
	char key[64]; /* state/result last printed */
};

struct watch {
	struct seen_job *jobs;
	size_t n;
};

static struct seen_job *seen(struct watch *w, const char *id)
{
	for (size_t i = 0; i < w->n; i++) {
		if (strcmp(w->jobs[i].id, id) == 0)
			return &w->jobs[i];
	}
	if (w->n == JOBS_TRACKED)
		return NULL;
	struct seen_job *j = &w->jobs[w->n++];
	snprintf(j->id, sizeof j->id, "%s", id);
	j->key[0] = '\0';
	return j;
}

static void print_job(struct cli *cli, struct watch *w, const cJSON *job)
{
	const char *id = cli_str(job, "id");
	const char *state = cli_str(job, "state");
	const char *result = cli_str(job, "result");
	if (!id || !state)
		return;
	struct seen_job *s = seen(w, id);
	char key[64];
	snprintf(key, sizeof key, "%s/%s", state, result ? result : "");
	if (!s || strcmp(s->key, key) == 0)
		return;
	snprintf(s->key, sizeof s->key, "%s", key);
	char inst[128], agent[96], what[400], dur[TABLE_TIME_MAX], reason[256];
	table_clean(cli_str(job, "instance_id"), inst, sizeof inst);
	table_clean(cli_str(job, "agent"), agent, sizeof agent);
	table_clean(cli_str(job, "reason"), reason, sizeof reason);
	table_duration(cli_int(job, "duration_ms"), dur);
	if (!strcmp(state, "queued"))
		snprintf(what, sizeof what, "queued");
	else if (!strcmp(state, "leased"))
		snprintf(what, sizeof what, "deploying");
	else if (result && !strcmp(result, "succeeded"))
		snprintf(what, sizeof what, "live after %s", dur);
	else
		snprintf(what, sizeof what, "%s%s%s", result ? result : state,
			 reason[0] ? ": " : "", reason);
	fprintf(cli->out, "  %s (%s): %s\n", inst[0] ? inst : "?", agent, what);
	fflush(cli->out);
}

/* The end of a rollout: 0 for succeeded, -1 with err otherwise. */
static int ended(struct cli *cli, const cJSON *ro, struct err *err)
{
	const char *state = cli_str(ro, "state");
	char rid[80], rel[80], reason[300], dur[TABLE_TIME_MAX];
	table_clean(cli_str(ro, "id"), rid, sizeof rid);
	table_clean(cli_str(ro, "release"), rel, sizeof rel);
	table_clean(cli_str(ro, "reason"), reason, sizeof reason);
	int64_t end = cli_int(ro, "ended_ms");
	table_duration((end ? end : cli_now_ms()) - cli_int(ro, "started_ms"), dur);
	if (strcmp(state, "succeeded") == 0) {
		int total = 0, ok = 0;
		const cJSON *j;
		cJSON_ArrayForEach(j, cJSON_GetObjectItemCaseSensitive(ro, "jobs"))
		{
			total++;
			const char *r = cli_str(j, "result");
			ok += r && !strcmp(r, "succeeded");
		}
		if (ok == 0)
			fprintf(cli->out, "Rollout %s succeeded, but no agent runs this app's fleet: "
					  "release %s goes to instances as they register.\n", rid,
				rel);
		else
			fprintf(cli->out, "Release %s is live on %d instance%s (rollout %s took %s).\n",
				rel, ok, ok == 1 ? "" : "s", rid, dur);
		fflush(cli->out);
		return 0;
	}
	char prev[80];
	table_clean(cli_str(ro, "previous_release"), prev, sizeof prev);
	if (strcmp(state, "rolled back") == 0)
		return err_set(err, "rollout %s of %s was rolled back%s%s: %s keeps serving", rid,
			       rel, reason[0] ? ": " : "", reason,
			       prev[0] ? prev : "the previous release");
	if (strcmp(state, "superseded") == 0)
		return err_set(err, "rollout %s of %s was superseded by a newer promotion%s%s", rid,
			       rel, reason[0] ? ": " : "", reason);
	return err_set(err, "rollout %s of %s %s%s%s", rid, rel, state, reason[0] ? ": " : "",
		       reason);
}

int watch_rollout(struct cli *cli, const char *app, const char *rollout, int64_t timeout_ms,
		  struct err *err)
{
	char path[256] = "/v1/apps/";
	if (client_escape(path, sizeof path, app) < 0 || strlen(path) + 11 >= sizeof path)
		return err_set(err, "app name too long");
	strcat(path, "/rollouts/");
	if (client_escape(path, sizeof path, rollout) < 0)
		return err_set(err, "rollout id too long");
	struct watch w = {.jobs = calloc(JOBS_TRACKED, sizeof(struct seen_job))};
	if (!w.jobs)
		return err_set(err, "out of memory");
	int64_t deadline = timeout_ms > 0 ? clock_mono_ms() + timeout_ms : 0;
	int warned = 0, rc = -1;
	for (;;) {
		cJSON *ro = NULL;
		struct err perr;
		if (client_json(&cli->client, "GET", path, NULL, &ro, &perr) < 0) {
			long st = cli->client.status;
			if (client_interrupted || (st > 0 && st < 500)) {
				*err = perr;
				break;
			}
			if (!warned++)
				cli_note(cli, "slipway: %s (still trying)", perr.msg);
		} else {
			warned = 0;
			const cJSON *j;
			cJSON_ArrayForEach(j, cJSON_GetObjectItemCaseSensitive(ro, "jobs"))
				print_job(cli, &w, j);
			const char *state = cli_str(ro, "state");
			if (!state) {
				cJSON_Delete(ro);
				err_set(err, "the rollout's answer has no state");
				break;
			}
			if (strcmp(state, "running") != 0) {
				rc = ended(cli, ro, err);
				cJSON_Delete(ro);
				break;
			}
			cJSON_Delete(ro);
		}
		if (deadline && clock_mono_ms() >= deadline) {
			char d[TABLE_TIME_MAX];
			err_set(err, "gave up waiting for rollout %s after %s (it goes on: `slipway "
				     "apps info %s` shows it)", rollout, table_duration(timeout_ms, d),
				app);
			break;
		}
		if (client_sleep(&cli->client, WATCH_POLL_MS, err) < 0)
			break;
	}
	free(w.jobs);
	return rc;
}

int watch_promoted(struct cli *cli, const char *app, const cJSON *answer, const char *what,
		   bool wait, int64_t timeout_ms)
{
	char rel[80], ro[80];
	table_clean(cli_str(answer, "release"), rel, sizeof rel);
	table_clean(cli_str(answer, "rollout"), ro, sizeof ro);
	if (!rel[0]) {
		fprintf(cli->out, "%s: %s has no release yet; the first one gets it.\n", what, app);
		return CLI_OK;
	}
	if (!ro[0]) {
		fprintf(cli->out, "%s: release %s (not deployed; `slipway releases promote %s "
				  "--app %s` deploys it).\n", what, rel, rel, app);
		return CLI_OK;
	}
	fprintf(cli->out, "%s: release %s, rollout %s (generation %lld).\n", what, rel, ro,
		(long long)cli_int(answer, "generation"));
	fflush(cli->out);
	if (!wait)
		return CLI_OK;
	struct err err;
	if (watch_rollout(cli, app, ro, timeout_ms, &err) < 0)
		return cli_fail(cli, &err);
	return CLI_OK;
}

int watch_timeout(struct cli *cli, const struct cli_cmd *spec, const struct args *a,
		  int64_t *ms)
{
	struct err err;
	*ms = WATCH_DEFAULT_TIMEOUT_MS;
	if (args_get(a, "timeout") &&
	    args_duration_ms("--timeout", args_get(a, "timeout"), ms, &err) < 0)
		return cli_usage_error(cli, spec, "%s", err.msg);
	return CLI_OK;
}

int watch_answer(struct cli *cli, const struct args *a, const char *app, cJSON *doc,
		 const char *what, int64_t timeout_ms)
{
	int rc;
	if (args_has(a, "json") && !args_has(a, "wait"))
		rc = cli_print_json(cli, doc);
	else
		rc = watch_promoted(cli, app, doc, what, args_has(a, "wait"), timeout_ms);
	cJSON_Delete(doc);
	return rc;
}
