/*
 * The liburing event loop. Everything a device waits on is a submission on
 * this one ring, so the vCPU threads only ever handle config-space exits.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "ioloop.h"

static void stop_done(struct io_op *op, int res, unsigned flags)
{
	(void)op;
	(void)res;
	(void)flags;
}

/* Run the functions queued by ioloop_call(), in order. */
static void call_done(struct io_op *op, int res, unsigned flags)
{
	struct ioloop *l = (struct ioloop *)((char *)op - offsetof(struct ioloop, call_op));
	uint64_t v;
	unsigned i, n;

	(void)res;
	(void)flags;
	(void)!read(l->call_efd, &v, sizeof(v));
	for (;;) {
		void (*fn)(void *);
		void *arg;

		pthread_mutex_lock(&l->call_lock);
		n = l->ncalls;
		if (n == 0) {
			pthread_mutex_unlock(&l->call_lock);
			break;
		}
		fn = l->calls[0].fn;
		arg = l->calls[0].arg;
		for (i = 1; i < n; i++)
			l->calls[i - 1] = l->calls[i];
		l->ncalls = n - 1;
		pthread_mutex_unlock(&l->call_lock);
		fn(arg);
	}
}

int ioloop_call(struct ioloop *l, void (*fn)(void *arg), void *arg)
{
	uint64_t one = 1;

	pthread_mutex_lock(&l->call_lock);
	if (l->closed) {
		pthread_mutex_unlock(&l->call_lock);
		return -ESHUTDOWN;
	}
	if (l->ncalls == sizeof(l->calls) / sizeof(l->calls[0])) {
		pthread_mutex_unlock(&l->call_lock);
		return -ENOSPC;
	}
	l->calls[l->ncalls].fn = fn;
	l->calls[l->ncalls].arg = arg;
	l->ncalls++;
	pthread_mutex_unlock(&l->call_lock);
	(void)!write(l->call_efd, &one, sizeof(one));
	return 0;
}

struct sync_call {
	void (*fn)(void *);
	void *arg;
	pthread_mutex_t lock;
	pthread_cond_t cv;
	int done;
};

static void sync_call_run(void *arg)
{
	struct sync_call *c = arg;

	c->fn(c->arg);
	pthread_mutex_lock(&c->lock);
	c->done = 1;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->lock);
}

int ioloop_call_sync(struct ioloop *l, void (*fn)(void *arg), void *arg)
{
	struct sync_call c = { .fn = fn, .arg = arg, .lock = PTHREAD_MUTEX_INITIALIZER,
			       .cv = PTHREAD_COND_INITIALIZER };
	int r;

	if (!l->started) {
		fn(arg);
		return 0;
	}
	r = ioloop_call(l, sync_call_run, &c);
	if (r == -ESHUTDOWN) {
		fn(arg);	/* the I/O thread has finished: nothing runs beside us */
		return 0;
	}
	if (r < 0)
		return r;
	pthread_mutex_lock(&c.lock);
	while (!c.done)
		pthread_cond_wait(&c.cv, &c.lock);
	pthread_mutex_unlock(&c.lock);
	return 0;
}

int ioloop_init(struct ioloop *l, unsigned entries, struct kiln_err *err)
{
	int r;

	memset(l, 0, sizeof(*l));
	pthread_mutex_init(&l->call_lock, NULL);
	l->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	l->call_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (l->stop_efd < 0 || l->call_efd < 0)
		return kiln_fail(err, errno, "eventfd: %s", strerror(errno));
	r = io_uring_queue_init(entries, &l->ring, 0);
	if (r < 0) {
		close(l->stop_efd);
		if (r == -ENOSYS || r == -EPERM)
			return kiln_fail(err, -r, "io_uring is unavailable: %s (enable it: sysctl kernel.io_uring_disabled=0)",
					 strerror(-r));
		return kiln_fail(err, -r, "io_uring_queue_init: %s", strerror(-r));
	}
	l->ready = 1;
	l->stop_op.done = stop_done;
	l->call_op.done = call_done;
	r = ioloop_watch(l, l->stop_efd, &l->stop_op);
	return r < 0 ? r : ioloop_watch(l, l->call_efd, &l->call_op);
}

void ioloop_destroy(struct ioloop *l)
{
	if (l->ready)
		io_uring_queue_exit(&l->ring);
	l->ready = 0;
	if (l->stop_efd >= 0)
		close(l->stop_efd);
	if (l->call_efd >= 0)
		close(l->call_efd);
	l->stop_efd = l->call_efd = -1;
	pthread_mutex_destroy(&l->call_lock);
}

struct io_uring_sqe *ioloop_sqe(struct ioloop *l, struct io_op *op)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);

	if (!sqe) {
		/* Ring full: hand what we have to the kernel and try again. */
		io_uring_submit(&l->ring);
		sqe = io_uring_get_sqe(&l->ring);
		if (!sqe)
			return NULL;
	}
	io_uring_sqe_set_data(sqe, op);
	if (op && !op->is_watch)
		l->inflight++;
	return sqe;
}

static int arm_watch(struct ioloop *l, struct io_op *op)
{
	struct io_uring_sqe *sqe = ioloop_sqe(l, op);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_poll_multishot(sqe, op->watch_fd, POLLIN);
	return 0;
}

int ioloop_watch(struct ioloop *l, int fd, struct io_op *op)
{
	op->is_watch = 1;
	op->watch_fd = fd;
	return arm_watch(l, op);
}

int ioloop_poll(struct ioloop *l, unsigned min)
{
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;
	int r = io_uring_submit_and_wait(&l->ring, min);

	if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
		return r;
	io_uring_for_each_cqe(&l->ring, head, cqe) {
		struct io_op *op = io_uring_cqe_get_data(cqe);
		int res = cqe->res, rearm;
		unsigned flags = cqe->flags;

		n++;
		if (!op)
			continue;
		/* A multishot poll that ended (no F_MORE) is armed again. Decide
		 * before done(): a one-shot op may be freed by it. */
		rearm = op->is_watch && !(flags & IORING_CQE_F_MORE) && res != -ECANCELED;
		if (!op->is_watch && !(flags & IORING_CQE_F_MORE))
			l->inflight--;
		op->done(op, res, flags);
		if (rearm)
			arm_watch(l, op);
	}
	io_uring_cq_advance(&l->ring, n);
	l->completions += n;
	return (int)n;
}

static void *ioloop_thread(void *arg)
{
	struct ioloop *l = arg;
	sigset_t all;

	pthread_setname_np(pthread_self(), "kiln-io");
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	while (!atomic_load(&l->stopping)) {
		int r = ioloop_poll(l, 1);

		if (r < 0) {
			fprintf(stderr, "kiln-vmm: io_uring_submit_and_wait: %s\n", strerror(-r));
			break;
		}
	}
	/* Calls queued while stopping still run: a caller may be waiting in ioloop_call_sync. */
	pthread_mutex_lock(&l->call_lock);
	l->closed = 1;
	pthread_mutex_unlock(&l->call_lock);
	l->call_op.done(&l->call_op, 0, 0);
	return NULL;
}

int ioloop_start(struct ioloop *l)
{
	int r = pthread_create(&l->thread, NULL, ioloop_thread, l);

	if (r)
		return -r;
	l->started = 1;
	return 0;
}

void ioloop_stop(struct ioloop *l)
{
	uint64_t one = 1;

	atomic_store(&l->stopping, 1);
	if (l->stop_efd >= 0)
		(void)!write(l->stop_efd, &one, sizeof(one));
	if (l->started)
		pthread_join(l->thread, NULL);
	l->started = 0;
}
