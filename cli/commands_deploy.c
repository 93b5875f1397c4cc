#include "commands_deploy.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "context.h"
#include "table.h"
#include "watch.h"

#define DESCRIPTION_MAX 120

static const struct args_opt deploy_opts[] = {
	CLI_OPT_APP,
	{"wait", 'w', ARGS_FLAG, NULL,
	 "follow the rollout; exit 0 only when the release is live on every instance"},
	{"description", 'd', ARGS_VALUE, "TEXT", "what this deploy is (shown by `builds`)"},
	{"timeout", 0, ARGS_VALUE, "DURATION", "give up waiting for the rollout after this long "
					       "(default 30m)"},
};

static const struct cli_cmd deploy_cmd = {
	.name = "deploy",
	.synopsis = "deploy [<dir>] --app APP [--wait] [--description TEXT] [--timeout 30m]",
	.description =
		"Packs the directory (default: the current one) as tar.gz, leaving out .git and "
		"what its top-level .dockerignore excludes (Docker's rules), uploads it, and "
		"prints the build log as the coordinator builds every service of its "
		"slipway.yml. The build's release then rolls out. With --wait, follows the "
		"rollout and exits 0 only once the release is live on every instance of the "
		"app's fleet; a failed build, a failed or rolled-back rollout, or the timeout "
		"exit 1. Needs a deploy key.",
	.opts = deploy_opts,
	.nopts = sizeof deploy_opts / sizeof deploy_opts[0],
	.min_pos = 0,
	.max_pos = 1,
};

/* The private temporary directory and the archive in it. */
struct tmp {
	char dir[PATH_MAX];
	char file[PATH_MAX + 32];
};

static void tmp_remove(struct tmp *t)
{
	if (t->file[0])
		unlink(t->file);
	if (t->dir[0])
		rmdir(t->dir);
	t->file[0] = t->dir[0] = '\0';
}

/* Refuses a .dockerignore that would leave slipway.yml out: the build needs it. */
static int check_ignore(const char *dir, struct err *err)
{
	char path[PATH_MAX + 32];
	snprintf(path, sizeof path, "%s/.dockerignore", dir);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : err_set(err, "%s: %s", path, strerror(errno));
	struct buf b;
	buf_init(&b, CONTEXT_IGNORE_MAX_BYTES);
	char tmp[8192];
	ssize_t r;
	int rc = 0;
	while ((r = read(fd, tmp, sizeof tmp)) != 0) {
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 || buf_append(&b, tmp, (size_t)r) < 0) {
			rc = err_set(err, "%s: %s", path, r < 0 ? strerror(errno) : "too large");
			break;
		}
	}
	close(fd);
	if (rc == 0) {
		struct context_ignore *ig = context_ignore_parse(b.data ? b.data : "", b.len, err);
		if (!ig)
			rc = -1;
		else if (context_ignore_excluded(ig, "slipway.yml"))
			rc = err_set(err, "%s excludes slipway.yml, which the build needs: add a "
					  "line !slipway.yml", path);
		context_ignore_free(ig);
	}
	buf_free(&b);
	return rc;
}

static int pack(struct cli *cli, const char *dir, struct tmp *t, struct context_stats *st,
		struct err *err)
{
	char real[PATH_MAX];
	struct stat sb;
	if (!realpath(dir, real) || stat(real, &sb) < 0)
		return err_set(err, "%s: %s", dir, strerror(errno));
	if (!S_ISDIR(sb.st_mode))
		return err_set(err, "%s is not a directory", dir);
	char manifest[PATH_MAX + 16], dockerfile[PATH_MAX + 16];
	snprintf(manifest, sizeof manifest, "%s/slipway.yml", real);
	snprintf(dockerfile, sizeof dockerfile, "%s/Dockerfile", real);
	if (lstat(manifest, &sb) < 0 || !S_ISREG(sb.st_mode))
		return err_set(err, "%s has no slipway.yml (a regular file at its top: "
				    "docs/manifest.md)", dir);
	if (check_ignore(real, err) < 0)
		return -1;
	const char *tmpdir = getenv("TMPDIR");
	snprintf(t->dir, sizeof t->dir, "%s/slipway-deploy-XXXXXX",
		 tmpdir && *tmpdir ? tmpdir : "/tmp");
	if (!mkdtemp(t->dir)) {
		int e = errno;
		t->dir[0] = '\0';
		return err_set(err, "temporary directory: %s", strerror(e));
	}
	snprintf(t->file, sizeof t->file, "%s/context.tar.gz", t->dir);
	/* context_build always sends its "Dockerfile": the real one when there is one,
	 * else slipway.yml, which every upload needs anyway. */
	struct stat df;
	struct context_opts o = {
		.root = real,
		.context = ".",
		.dockerfile = lstat(dockerfile, &df) == 0 ? "Dockerfile" : "slipway.yml",
		.out_path = t->file,
		.cancel = &client_interrupted,
	};
	fprintf(cli->out, "Packing %s...\n", real);
	fflush(cli->out);
	if (context_build(&o, st, err) < 0) {
		t->file[0] = '\0'; /* context_build removed it */
		return client_interrupted ? err_set(err, "interrupted") : -1;
	}
	char bytes[TABLE_TIME_MAX], archive[TABLE_TIME_MAX];
	fprintf(cli->out, "Packed %llu files, %s (%llu left out by .dockerignore or .git): %s to "
			  "upload.\n",
		(unsigned long long)st->files, table_bytes(st->bytes, bytes),
		(unsigned long long)st->excluded, table_bytes(st->archive_bytes, archive));
	fflush(cli->out);
	return 0;
}

static int get_build(struct cli *cli, const char *build, cJSON **doc, struct err *err)
{
	char path[200];
	if (cli_path(path, sizeof path, "/v1/builds/%s", build) < 0)
		return err_set(err, "build id too long");
	return client_json(&cli->client, "GET", path, NULL, doc, err);
}

/* Waits until the build ended. A complete build names its release and the
 * rollout that promoted it (the coordinator makes both in the transaction
 * that completes the build): into rel and ro. */
static int await_build(struct cli *cli, const char *build, char *rel, char *ro, size_t cap,
		       struct err *err)
{
	for (;;) {
		cJSON *b;
		if (get_build(cli, build, &b, err) < 0)
			return -1;
		const char *status = cli_str(b, "status");
		if (status && !strcmp(status, "failed")) {
			char why[300];
			table_clean(cli_str(b, "error"), why, sizeof why);
			err_set(err, "build %s failed%s%s", build, why[0] ? ": " : "", why);
			cJSON_Delete(b);
			return -1;
		}
		if (status && !strcmp(status, "complete")) {
			table_clean(cli_str(b, "release"), rel, cap);
			table_clean(cli_str(b, "rollout"), ro, cap);
			char dur[TABLE_TIME_MAX];
			table_duration(cli_int(b, "ended_ms") - cli_int(b, "started_ms"), dur);
			cJSON_Delete(b);
			if (!rel[0] || !ro[0])
				return err_set(err, "build %s is complete but names no release or "
						    "rollout (`slipway builds info %s` shows why)",
					       build, build);
			fprintf(cli->out, "Build %s complete after %s: release %s.\n", build, dur,
				rel);
			return 0;
		}
		cJSON_Delete(b);
		if (client_sleep(&cli->client, WATCH_POLL_MS, err) < 0)
			return -1;
	}
}

static int deploy(struct cli *cli, const struct args *a, const char *app, const char *dir,
		  int64_t timeout, struct tmp *t)
{
	struct err err;
	struct context_stats st = {0};
	if (pack(cli, dir, t, &st, &err) < 0)
		return cli_fail(cli, &err);
	int rc = cli_connect(cli);
	if (rc != CLI_OK)
		return rc;
	char path[512];
	if (cli_path(path, sizeof path, "/v1/apps/%s/builds", app) < 0)
		return cli_failf(cli, "app name too long");
	const char *desc = args_get(a, "description");
	if (desc && (strcat(path, "?description="), client_escape(path, sizeof path, desc) < 0))
		return cli_failf(cli, "description too long");
	fprintf(cli->out, "Uploading to %s...\n", app);
	fflush(cli->out);
	cJSON *doc;
	if (client_upload(&cli->client, path, t->file, "application/gzip", &doc, &err) < 0)
		return cli_fail(cli, &err);
	tmp_remove(t); /* uploaded: the coordinator has its own copy */
	char build[80];
	table_clean(cli_str(doc, "build"), build, sizeof build);
	cJSON_Delete(doc);
	if (!build[0])
		return cli_failf(cli, "the coordinator did not name the build");
	fprintf(cli->out, "Build %s created; its log follows.\n\n", build);
	fflush(cli->out);
	if (watch_build_log(cli, build, cli->out, &err) < 0) {
		if (client_interrupted)
			return cli_fail(cli, &err);
		/* The log is a convenience; the build goes on. Wait for its end anyway. */
		cli_note(cli, "slipway: the build log stopped (%s); waiting for the build", err.msg);
	}
	fputc('\n', cli->out);
	char rel[80], ro[80];
	if (await_build(cli, build, rel, ro, sizeof rel, &err) < 0)
		return cli_fail(cli, &err);
	if (!args_has(a, "wait")) {
		fprintf(cli->out, "Release %s is rolling out (rollout %s): `slipway apps info %s` "
				  "shows where it stands; `deploy --wait` follows it to the end.\n",
			rel, ro, app);
		return CLI_OK;
	}
	fprintf(cli->out, "Rolling out %s (rollout %s)...\n", rel, ro);
	fflush(cli->out);
	if (watch_rollout(cli, app, ro, timeout, &err) < 0)
		return cli_fail(cli, &err);
	return CLI_OK;
}

int commands_deploy(struct cli *cli, int argc, char **argv)
{
	struct args a;
	int rc;
	if (!cli_parse(cli, &deploy_cmd, argc, argv, &a, &rc))
		return rc;
	const char *app = cli_app(cli, &deploy_cmd, args_get(&a, "app"), &rc);
	if (!app)
		return rc;
	int64_t timeout;
	if ((rc = watch_timeout(cli, &deploy_cmd, &a, &timeout)) != CLI_OK)
		return rc;
	const char *desc = args_get(&a, "description");
	if (desc && (strlen(desc) > DESCRIPTION_MAX || !*desc))
		return cli_usage_error(cli, &deploy_cmd, "--description: 1 to %d bytes",
				       DESCRIPTION_MAX);
	/* Check the connection settings before packing a large directory for nothing. */
	if ((rc = cli_connect(cli)) != CLI_OK)
		return rc;
	struct tmp t = {{0}, {0}};
	rc = deploy(cli, &a, app, a.npos ? a.pos[0] : ".", timeout, &t);
	tmp_remove(&t);
	return rc;
}
