#include "worker.h"

#include <errno.h>
#include <ev.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

struct job {
	worker_fn work;
	worker_fn done;
	void *arg;
	struct job *next;
};

struct job_list {
	struct job *head, *tail;
};

struct worker_pool {
	struct ev_loop *loop;
	ev_async async;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct job_list todo;      /* waiting for a thread (lock) */
	size_t todo_len;           /* (lock) */
	struct job_list finished;  /* work done, `done` not yet run (lock) */
	int stopping;              /* (lock) */
	size_t queue_max;
	int nthreads;
	pthread_t *threads;
	/* loop thread only */
	size_t outstanding;        /* submitted, `done` not yet run */
	int holds_loop;            /* the async watcher counts as a loop reference */
	int freeing;
	int *freed_flag;           /* set when the pool is freed inside a `done` */
};

static void list_append(struct job_list *l, struct job *j)
{
	j->next = NULL;
	if (l->tail)
		l->tail->next = j;
	else
		l->head = j;
	l->tail = j;
}

static struct job *list_pop(struct job_list *l)
{
	struct job *j = l->head;
	if (j) {
		l->head = j->next;
		if (!l->head)
			l->tail = NULL;
	}
	return j;
}

static void *worker_main(void *arg)
{
	struct worker_pool *p = arg;
	pthread_mutex_lock(&p->lock);
	for (;;) {
		while (!p->todo.head && !p->stopping)
			pthread_cond_wait(&p->cond, &p->lock);
		struct job *j = list_pop(&p->todo);
		if (!j)
			break; /* stopping and nothing left to run */
		p->todo_len--;
		pthread_mutex_unlock(&p->lock);
		j->work(j->arg);
		pthread_mutex_lock(&p->lock);
		list_append(&p->finished, j);
		ev_async_send(p->loop, &p->async);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

/* The async watcher holds the loop only while jobs are outstanding. */
static void update_loop_ref(struct worker_pool *p)
{
	if (p->outstanding > 0 && !p->holds_loop) {
		ev_ref(p->loop);
		p->holds_loop = 1;
	} else if (p->outstanding == 0 && p->holds_loop) {
		ev_unref(p->loop);
		p->holds_loop = 0;
	}
}

/* Runs one finished job's `done`; returns 1 when the pool was freed inside it. */
static int deliver_one(struct worker_pool *p, int *freed)
{
	pthread_mutex_lock(&p->lock);
	struct job *j = list_pop(&p->finished);
	pthread_mutex_unlock(&p->lock);
	if (!j)
		return -1;
	worker_fn done = j->done;
	void *arg = j->arg;
	free(j);
	p->outstanding--;
	if (done)
		done(arg);
	return *freed;
}

static void on_async(struct ev_loop *loop, ev_async *w, int revents)
{
	(void)loop;
	(void)revents;
	struct worker_pool *p = (struct worker_pool *)((char *)w - offsetof(struct worker_pool, async));
	int freed = 0;
	int *outer = p->freed_flag;
	p->freed_flag = &freed;
	int rc;
	while ((rc = deliver_one(p, &freed)) == 0)
		;
	if (rc == 1) {
		if (outer)
			*outer = 1;
		return;
	}
	p->freed_flag = outer;
	update_loop_ref(p);
}

struct worker_pool *worker_pool_new(struct ev_loop *loop, int threads, size_t queue_max,
				    struct err *err)
{
	if (!loop || threads < 1 || threads > 256 || queue_max < 1) {
		err_set(err, "worker pool: need a loop, 1..256 threads and queue_max >= 1");
		return NULL;
	}
	struct worker_pool *p = calloc(1, sizeof *p);
	if (!p || !(p->threads = calloc((size_t)threads, sizeof *p->threads))) {
		free(p);
		err_set(err, "worker pool: out of memory");
		return NULL;
	}
	p->loop = loop;
	p->queue_max = queue_max;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	ev_async_init(&p->async, on_async);
	ev_async_start(loop, &p->async);
	ev_unref(loop); /* idle: do not keep ev_run alive */

	/* Threads start with every signal blocked, so signals go to the loop thread. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int rc = 0;
	for (; p->nthreads < threads; p->nthreads++) {
		rc = pthread_create(&p->threads[p->nthreads], NULL, worker_main, p);
		if (rc != 0)
			break;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		worker_pool_free(p);
		err_set(err, "worker pool: pthread_create: %s", strerror(rc));
		return NULL;
	}
	return p;
}

int worker_submit(struct worker_pool *p, worker_fn work, worker_fn done, void *arg)
{
	if (!p || !work || p->freeing)
		return -1;
	struct job *j = malloc(sizeof *j);
	if (!j)
		return -1;
	j->work = work;
	j->done = done;
	j->arg = arg;
	pthread_mutex_lock(&p->lock);
	if (p->stopping || p->todo_len >= p->queue_max) {
		pthread_mutex_unlock(&p->lock);
		free(j);
		return -1;
	}
	list_append(&p->todo, j);
	p->todo_len++;
	pthread_cond_signal(&p->cond);
	pthread_mutex_unlock(&p->lock);
	p->outstanding++;
	update_loop_ref(p);
	return 0;
}

void worker_pool_free(struct worker_pool *p)
{
	if (!p || p->freeing)
		return;
	p->freeing = 1;
	if (p->freed_flag)
		*p->freed_flag = 1; /* an on_async below us must not touch p again */
	pthread_mutex_lock(&p->lock);
	p->stopping = 1;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	for (int i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	/* Every job has run now; hand each one to its `done`, here. */
	int never = 0;
	while (deliver_one(p, &never) == 0)
		;
	if (!p->holds_loop)
		ev_ref(p->loop); /* balance the ev_unref before stopping the watcher */
	ev_async_stop(p->loop, &p->async);
	pthread_cond_destroy(&p->cond);
	pthread_mutex_destroy(&p->lock);
	free(p->threads);
	free(p);
}
