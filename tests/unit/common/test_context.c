#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <archive.h>
#include <archive_entry.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "context.h"
#include "worker.h"

static char dir[64];

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof dir, "/tmp/slipway-context-XXXXXX");
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void put(const char *rel, const char *content)
{
	char path[512];
	snprintf(path, sizeof path, "%s/%s", dir, rel);
	/* mkdir -p of the parents */
	for (char *s = path + strlen(dir) + 1; (s = strchr(s, '/')); s++) {
		*s = '\0';
		mkdir(path, 0755);
		*s = '/';
	}
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(content, f);
	fclose(f);
}

static void test_patterns(void **state)
{
	(void)state;
	struct {
		const char *pattern, *path;
		int want;
	} cases[] = {
		{"*.go", "a.go", 1},
		{"*.go", "d/a.go", 0},
		{"**/*.go", "a.go", 1},
		{"**/*.go", "d/e/a.go", 1},
		{"**", "anything/at/all", 1},
		{"a/**", "a/b/c", 1},
		{"a/**", "a", 0},
		{"a/**/b", "a/b", 1},
		{"a/**/b", "a/x/y/b", 1},
		{"a/**/b", "a/x/y/c", 0},
		{"**/x/**/y", "p/x/q/r/y", 1},
		{"?.txt", "a.txt", 1},
		{"?.txt", "ab.txt", 0},
		{"?", "/", 0},
		{"[a-c].txt", "b.txt", 1},
		{"[a-c].txt", "d.txt", 0},
		{"[^a-c].txt", "d.txt", 1},
		{"[^a-c].txt", "a.txt", 0},
		{"\\*.txt", "*.txt", 1},
		{"\\*.txt", "a.txt", 0},
		{"[unclosed", "[unclosed", 1},
		{"*", "a/b", 0},
		{"*/b", "a/b", 1},
		{"a*b", "a/b", 0},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int got = context_pattern_match(cases[i].pattern, cases[i].path);
		if (got != cases[i].want) {
			print_error("pattern '%s' path '%s': got %d want %d\n", cases[i].pattern,
				    cases[i].path, got, cases[i].want);
			fail();
		}
	}
	/* A pathological pattern gives up instead of running for ages. */
	char pat[512] = "", path[1024] = "";
	for (int i = 0; i < 30; i++)
		strcat(pat, "*a");
	strcat(pat, "b");
	for (int i = 0; i < 200; i++)
		strcat(path, "a");
	assert_int_equal(context_pattern_match(pat, path), 0);
}

static void test_ignore_rules(void **state)
{
	(void)state;
	const char *text = "# comment\n"
			   "\n"
			   "  node_modules  \n"
			   "!node_modules/keep.js\n"
			   "*.log\n"
			   "!important.log\n"
			   "./docs//**/*.md\n"
			   "/temp?\r\n"
			   "build/../dist\n"
			   "**/*.tmp\n"
			   "!\n";
	struct err e;
	struct context_ignore *ig = context_ignore_parse(text, strlen(text), &e);
	assert_non_null(ig);
	assert_true(context_ignore_has_exceptions(ig));
	struct {
		const char *path;
		int excluded;
	} cases[] = {
		{"node_modules", 1},
		{"node_modules/x/y.js", 1},
		{"node_modules/keep.js", 0},
		{"app.log", 1},
		{"sub/app.log", 0}, /* "*.log" is top level only */
		{"important.log", 0},
		{"docs/a.md", 1},
		{"docs/x/y/a.md", 1},
		{"docs/a.txt", 0},
		{"temp1", 1},
		{"temp1/inner", 1},
		{"temp12", 0},
		{"dist/a", 1},
		{"build/a", 0},
		{"x/y/z.tmp", 1},
		{"src/main.c", 0},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int got = context_ignore_excluded(ig, cases[i].path);
		if (got != cases[i].excluded) {
			print_error("%s: excluded %d, want %d\n", cases[i].path, got,
				    cases[i].excluded);
			fail();
		}
	}
	context_ignore_free(ig);
	assert_int_equal(context_ignore_excluded(NULL, "x"), 0);

	/* The last match wins: an exception then an exclusion. */
	const char *t2 = "!a.txt\n*.txt\n";
	ig = context_ignore_parse(t2, strlen(t2), &e);
	assert_int_equal(context_ignore_excluded(ig, "a.txt"), 1);
	context_ignore_free(ig);
}

/* Entry names (and link targets as "name -> target") of a tar.gz. */
static char *list_archive(const char *path)
{
	struct archive *a = archive_read_new();
	archive_read_support_filter_gzip(a);
	archive_read_support_format_tar(a);
	assert_int_equal(archive_read_open_filename(a, path, 16384), ARCHIVE_OK);
	static char out[8192];
	out[0] = '\0';
	struct archive_entry *e;
	while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
		strcat(out, archive_entry_pathname(e));
		if (archive_entry_filetype(e) == AE_IFLNK) {
			strcat(out, " -> ");
			strcat(out, archive_entry_symlink(e));
		}
		assert_int_equal(archive_entry_uid(e), 0);
		strcat(out, "\n");
	}
	archive_read_free(a);
	return out;
}

static void make_tree(void)
{
	put("Dockerfile", "FROM scratch\n");
	put(".dockerignore", "Dockerfile\n.dockerignore\n*.log\nsecret/\n!secret/public.txt\n"
			     "!.git\n");
	put("app/main.c", "int main(void) { return 0; }\n");
	put("app/.git", "gitdir: ../.git/modules/app\n"); /* a submodule's .git file */
	put(".git/HEAD", "ref: refs/heads/main\n");
	put(".git/config", "[core]\n");
	put("debug.log", "noise\n");
	put("secret/key.pem", "PRIVATE\n");
	put("secret/public.txt", "hello\n");
	char p[512], fifo[512];
	snprintf(p, sizeof p, "%s/link", dir);
	assert_int_equal(symlink("app/main.c", p), 0);
	snprintf(fifo, sizeof fifo, "%s/fifo", dir);
	assert_int_equal(mkfifo(fifo, 0600), 0);
}

static void test_build(void **state)
{
	(void)state;
	make_tree();
	char out[256];
	snprintf(out, sizeof out, "%s/ctx.tar.gz", dir);
	struct context_opts o = {.root = dir, .context = ".", .out_path = out};
	struct context_stats st;
	struct err e;
	/* The output lives in the context here: exclude it (it is created first). */
	put(".dockerignore", "Dockerfile\n.dockerignore\n*.log\nsecret/\n!secret/public.txt\n"
			     "!.git\nctx.tar.gz\n");
	if (context_build(&o, &st, &e) < 0)
		print_error("%s\n", e.msg);
	struct context_stats again;
	assert_int_equal(context_build(&o, &again, &e), -1); /* exists: O_EXCL */
	assert_non_null(strstr(e.msg, "File exists"));
	const char *list = list_archive(out);
	assert_string_equal(list, ".dockerignore\n"
				  "Dockerfile\n"
				  "app/\n"
				  "app/main.c\n"
				  "link -> app/main.c\n"
				  "secret/public.txt\n");
	assert_int_equal(st.files, 6);
	assert_true(st.bytes > 0);
	assert_true(st.archive_bytes > 0);
	/* .git x2, debug.log, fifo, secret (dir), secret/key.pem, ctx.tar.gz */
	assert_int_equal(st.excluded, 7);
	struct stat sb;
	assert_int_equal(stat(out, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600);
}

static void test_caps_and_escapes(void **state)
{
	(void)state;
	make_tree();
	char out[256];
	snprintf(out, sizeof out, "%s/../ctx-%d.tar.gz", dir, (int)getpid());
	struct err e;
	struct context_opts o = {.root = dir, .out_path = out, .max_files = 3};
	assert_int_equal(context_build(&o, NULL, &e), -1);
	assert_non_null(strstr(e.msg, "more than 3 files"));
	assert_int_equal(access(out, F_OK), -1); /* removed on error */

	o.max_files = 0;
	o.max_bytes = 10;
	assert_int_equal(context_build(&o, NULL, &e), -1);
	assert_non_null(strstr(e.msg, "larger than"));
	assert_int_equal(access(out, F_OK), -1);

	o.max_bytes = 0;
	o.dockerfile = "Dockerfile.missing";
	assert_int_equal(context_build(&o, NULL, &e), -1);
	assert_non_null(strstr(e.msg, "Dockerfile.missing not found"));

	/* A context that is a symlink out of the repository. */
	char p[512];
	snprintf(p, sizeof p, "%s/escape", dir);
	assert_int_equal(symlink("/etc", p), 0);
	o.dockerfile = NULL;
	o.context = "escape";
	assert_int_equal(context_build(&o, NULL, &e), -1);
	assert_non_null(strstr(e.msg, "leads out of the repository"));

	/* A Dockerfile that is a symlink out of the context. */
	snprintf(p, sizeof p, "%s/app/Dockerfile", dir);
	assert_int_equal(symlink("../Dockerfile", p), 0);
	o.context = "app";
	assert_int_equal(context_build(&o, NULL, &e), -1);
	assert_non_null(strstr(e.msg, "leads out of the build context"));

	/* A sub-directory context with its own Dockerfile and no .dockerignore. */
	unlink(p);
	put("app/Dockerfile", "FROM scratch\n");
	assert_int_equal(context_build(&o, NULL, &e), 0);
	assert_string_equal(list_archive(out), "Dockerfile\nmain.c\n");
	unlink(out);

	/* An oversized .dockerignore. */
	char *big = malloc(CONTEXT_IGNORE_MAX_BYTES + 2);
	assert_non_null(big);
	memset(big, 'x', CONTEXT_IGNORE_MAX_BYTES + 1);
	big[CONTEXT_IGNORE_MAX_BYTES + 1] = '\0';
	put(".dockerignore", big);
	free(big);
	o.context = ".";
	assert_int_equal(context_build(&o, NULL, &e), -1);
	assert_non_null(strstr(e.msg, ".dockerignore: larger than"));
}

struct async_result {
	int calls, rc;
	char error[256];
	uint64_t files;
};

static void async_done(int rc, const char *error, const struct context_stats *st, void *arg)
{
	struct async_result *r = arg;
	r->calls++;
	r->rc = rc;
	snprintf(r->error, sizeof r->error, "%s", error);
	r->files = st->files;
}

static void test_async(void **state)
{
	(void)state;
	make_tree();
	struct ev_loop *loop = ev_loop_new(0);
	struct err e;
	struct worker_pool *pool = worker_pool_new(loop, 2, 8, &e);
	assert_non_null(pool);
	char out[256];
	snprintf(out, sizeof out, "%s/../ctx-async-%d.tar.gz", dir, (int)getpid());
	struct context_opts o = {.root = dir, .out_path = out};
	struct async_result r = {0};
	assert_non_null(context_build_async(pool, &o, async_done, &r, &e));
	ev_run(loop, 0);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.rc, 0);
	assert_true(r.files >= 5);
	unlink(out);

	/* Cancelled before it ran: done still comes, with "cancelled". */
	struct async_result c = {0};
	struct context_job *job = context_build_async(pool, &o, async_done, &c, &e);
	assert_non_null(job);
	context_job_cancel(job);
	ev_run(loop, 0);
	assert_int_equal(c.calls, 1);
	assert_int_equal(c.rc, -1);
	assert_string_equal(c.error, "cancelled");
	assert_int_equal(access(out, F_OK), -1);
	worker_pool_free(pool);
	ev_loop_destroy(loop);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_patterns),
		cmocka_unit_test(test_ignore_rules),
		cmocka_unit_test_setup_teardown(test_build, setup, teardown),
		cmocka_unit_test_setup_teardown(test_caps_and_escapes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_async, setup, teardown),
	};
	return cmocka_run_group_tests_name("context", tests, NULL, NULL);
}
