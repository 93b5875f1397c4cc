#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker.h"

#define JOBS 2000

struct order {
	int work_seq[JOBS];
	atomic_int work_n;
	int done_seq[JOBS];
	int done_n;
	int done_off_loop;       /* done ran on another thread than the test's */
	atomic_int work_on_loop; /* work ran on the test's thread */
	pthread_t loop_thread;
};

struct job {
	struct order *o;
	int index;
};

static void order_work(void *arg)
{
	struct job *j = arg;
	if (pthread_equal(pthread_self(), j->o->loop_thread))
		atomic_fetch_add(&j->o->work_on_loop, 1);
	int slot = atomic_fetch_add(&j->o->work_n, 1);
	j->o->work_seq[slot] = j->index;
}

static void order_done(void *arg)
{
	struct job *j = arg;
	if (!pthread_equal(pthread_self(), j->o->loop_thread))
		j->o->done_off_loop++;
	j->o->done_seq[j->o->done_n++] = j->index;
	free(j);
}

static void test_one_thread_keeps_order(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct err err;
	struct worker_pool *p = worker_pool_new(loop, 1, JOBS, &err);
	assert_non_null(p);
	struct order *o = calloc(1, sizeof *o);
	o->loop_thread = pthread_self();
	for (int i = 0; i < JOBS; i++) {
		struct job *j = malloc(sizeof *j);
		j->o = o;
		j->index = i;
		assert_int_equal(worker_submit(p, order_work, order_done, j), 0);
	}
	/* The pool holds the loop while jobs are outstanding, so this returns
	 * exactly when every done callback has run. */
	ev_run(loop, 0);
	assert_int_equal(atomic_load(&o->work_n), JOBS);
	assert_int_equal(o->done_n, JOBS);
	for (int i = 0; i < JOBS; i++) {
		assert_int_equal(o->work_seq[i], i);
		assert_int_equal(o->done_seq[i], i);
	}
	assert_int_equal(o->done_off_loop, 0);
	assert_int_equal(atomic_load(&o->work_on_loop), 0);
	worker_pool_free(p);
	ev_loop_destroy(loop);
	free(o);
}

/* Four jobs that can only finish when all four run at the same time. */
struct meet {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int arrived;
	int met;       /* jobs that saw everyone arrive */
	int timed_out;
	int done;
};

static void meet_work(void *arg)
{
	struct meet *m = arg;
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 10;
	pthread_mutex_lock(&m->lock);
	m->arrived++;
	pthread_cond_broadcast(&m->cond);
	while (m->arrived < 4) {
		if (pthread_cond_timedwait(&m->cond, &m->lock, &until) == ETIMEDOUT) {
			m->timed_out++;
			break;
		}
	}
	if (m->arrived >= 4)
		m->met++;
	pthread_mutex_unlock(&m->lock);
}

static void meet_done(void *arg)
{
	struct meet *m = arg;
	m->done++;
}

static atomic_long total;

static void add_work(void *arg)
{
	atomic_fetch_add(&total, (long)(intptr_t)arg);
}

static int add_done_count;

static void add_done(void *arg)
{
	(void)arg;
	add_done_count++;
}

static void test_many_jobs_across_threads(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct worker_pool *p = worker_pool_new(loop, 4, 100000, NULL);
	assert_non_null(p);

	struct meet m = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
	for (int i = 0; i < 4; i++)
		assert_int_equal(worker_submit(p, meet_work, meet_done, &m), 0);
	atomic_store(&total, 0);
	add_done_count = 0;
	long want = 0;
	for (int i = 1; i <= 20000; i++) {
		assert_int_equal(worker_submit(p, add_work, add_done, (void *)(intptr_t)i), 0);
		want += i;
	}
	ev_run(loop, 0);
	assert_int_equal(m.timed_out, 0);
	assert_int_equal(m.met, 4); /* four threads really ran at once */
	assert_int_equal(m.done, 4);
	assert_int_equal(atomic_load(&total), want);
	assert_int_equal(add_done_count, 20000);
	/* work without a done callback is fine too */
	assert_int_equal(worker_submit(p, add_work, NULL, (void *)(intptr_t)5), 0);
	ev_run(loop, 0);
	assert_int_equal(atomic_load(&total), want + 5);
	worker_pool_free(p);
	ev_loop_destroy(loop);
}

/* A job that holds its thread until the test opens the gate. */
struct gate {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int started, open;
};

static void gate_work(void *arg)
{
	struct gate *g = arg;
	pthread_mutex_lock(&g->lock);
	g->started = 1;
	pthread_cond_broadcast(&g->cond);
	while (!g->open)
		pthread_cond_wait(&g->cond, &g->lock);
	pthread_mutex_unlock(&g->lock);
}

static int counted;

static void count_done(void *arg)
{
	(void)arg;
	counted++;
}

static void nothing(void *arg)
{
	(void)arg;
}

static void test_queue_full(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct worker_pool *p = worker_pool_new(loop, 1, 2, NULL);
	assert_non_null(p);
	struct gate g = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
	counted = 0;
	assert_int_equal(worker_submit(p, gate_work, count_done, &g), 0);
	pthread_mutex_lock(&g.lock);
	while (!g.started)
		pthread_cond_wait(&g.cond, &g.lock); /* the thread is busy now */
	pthread_mutex_unlock(&g.lock);

	assert_int_equal(worker_submit(p, nothing, count_done, NULL), 0);
	assert_int_equal(worker_submit(p, nothing, count_done, NULL), 0);
	assert_int_equal(worker_submit(p, nothing, count_done, NULL), -1); /* 2 waiting: full */
	assert_int_equal(worker_submit(p, NULL, count_done, NULL), -1);    /* no work */

	pthread_mutex_lock(&g.lock);
	g.open = 1;
	pthread_cond_broadcast(&g.cond);
	pthread_mutex_unlock(&g.lock);
	ev_run(loop, 0);
	assert_int_equal(counted, 3); /* the refused job never ran its done */
	assert_int_equal(worker_submit(p, nothing, count_done, NULL), 0); /* room again */
	ev_run(loop, 0);
	assert_int_equal(counted, 4);
	worker_pool_free(p);
	ev_loop_destroy(loop);
}

static void test_free_runs_pending_done(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct worker_pool *p = worker_pool_new(loop, 2, 1000, NULL);
	assert_non_null(p);
	struct order *o = calloc(1, sizeof *o);
	o->loop_thread = pthread_self();
	for (int i = 0; i < 500; i++) {
		struct job *j = malloc(sizeof *j);
		j->o = o;
		j->index = i;
		assert_int_equal(worker_submit(p, order_work, order_done, j), 0);
	}
	/* No ev_run: free itself must run every job and every done, here. */
	worker_pool_free(p);
	assert_int_equal(atomic_load(&o->work_n), 500);
	assert_int_equal(o->done_n, 500);
	assert_int_equal(o->done_off_loop, 0);
	int seen[500] = {0};
	for (int i = 0; i < 500; i++)
		seen[o->done_seq[i]]++;
	for (int i = 0; i < 500; i++)
		assert_int_equal(seen[i], 1);
	/* The loop is not held by a freed pool. */
	ev_run(loop, 0);
	ev_loop_destroy(loop);
	free(o);
}

struct self_free {
	struct worker_pool *pool;
	int done;
	int refused; /* worker_submit from a done while the pool is stopping */
};

static void self_free_done(void *arg)
{
	struct self_free *s = arg;
	s->done++;
	if (s->done == 1) {
		worker_pool_free(s->pool);
	} else if (worker_submit(s->pool, nothing, NULL, NULL) < 0) {
		s->refused++;
	}
}

static void test_free_inside_done(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct self_free s = {0};
	s.pool = worker_pool_new(loop, 1, 100, NULL);
	assert_non_null(s.pool);
	for (int i = 0; i < 20; i++)
		assert_int_equal(worker_submit(s.pool, nothing, self_free_done, &s), 0);
	ev_run(loop, 0);
	assert_int_equal(s.done, 20);
	assert_int_equal(s.refused, 19);
	ev_loop_destroy(loop);
}

static void test_bad_arguments(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct err err;
	assert_null(worker_pool_new(loop, 0, 10, &err));
	assert_non_null(strstr(err.msg, "threads"));
	assert_null(worker_pool_new(loop, 1, 0, &err));
	assert_null(worker_pool_new(NULL, 1, 10, &err));
	worker_pool_free(NULL);
	ev_loop_destroy(loop);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_one_thread_keeps_order),
		cmocka_unit_test(test_many_jobs_across_threads),
		cmocka_unit_test(test_queue_full),
		cmocka_unit_test(test_free_runs_pending_done),
		cmocka_unit_test(test_free_inside_done),
		cmocka_unit_test(test_bad_arguments),
	};
	return cmocka_run_group_tests_name("worker", tests, NULL, NULL);
}
