/*
 * The VMM's one I/O thread: a liburing loop over ioeventfds, disk images,
 * taps and sockets. Devices embed a struct io_op in each request they submit;
 * its done() runs on the I/O thread when the request completes.
 */
#ifndef KILN_IOLOOP_H
#define KILN_IOLOOP_H

#include <liburing.h>
#include <pthread.h>

#include "vmm.h"

struct io_op {
	/* res is the CQE's result (bytes or -errno); flags its CQE flags. */
	void (*done)(struct io_op *op, int res, unsigned flags);
	/* Set by ioloop_watch(): the loop re-arms the poll when it ends. */
	int is_watch;
	int watch_fd;
};

struct ioloop {
	struct io_uring ring;
	int ready;
	int stop_efd;
	struct io_op stop_op;
	int call_efd;			/* ioloop_call(): wakes the loop */
	struct io_op call_op;
	pthread_mutex_t call_lock;
	unsigned ncalls;
	int closed;			/* the thread has exited: no more calls */
	struct { void (*fn)(void *); void *arg; } calls[64];
	_Atomic int stopping;
	pthread_t thread;
	int started;
	uint64_t completions;
	unsigned inflight;		/* one-shot ops submitted, not yet completed */
};

/* Set up the ring (entries SQEs). Returns 0 or -errno with err. */
int ioloop_init(struct ioloop *l, unsigned entries, struct kiln_err *err);
void ioloop_destroy(struct ioloop *l);

/*
 * An SQE to fill, tagged with op; submitted by the loop before it next
 * waits. NULL only if the ring is wedged. I/O thread only (or before start).
 */
struct io_uring_sqe *ioloop_sqe(struct ioloop *l, struct io_op *op);

/*
 * Watch fd for readability with a multishot poll: op->done runs on every
 * wake-up (re-armed by the loop if the kernel drops it). Returns 0 or -errno.
 */
int ioloop_watch(struct ioloop *l, int fd, struct io_op *op);

/*
 * Run fn(arg) on the I/O thread, soon (from any thread). Returns 0, or
 * -ENOSPC if too many calls are pending.
 */
int ioloop_call(struct ioloop *l, void (*fn)(void *arg), void *arg);

/*
 * Run fn(arg) on the I/O thread and wait until it has returned (not from the
 * I/O thread). Before ioloop_start(), runs it on the calling thread. Returns
 * 0 or -ENOSPC.
 */
int ioloop_call_sync(struct ioloop *l, void (*fn)(void *arg), void *arg);

/*
 * Submit what is queued and handle completions on the calling thread,
 * waiting for at least min of them. For tests and for loops not started with
 * ioloop_start(). Returns the number handled or -errno.
 */
int ioloop_poll(struct ioloop *l, unsigned min);

/* Start the I/O thread. Returns 0 or -errno. */
int ioloop_start(struct ioloop *l);

/* Ask the loop to finish and join its thread. Safe from any thread. */
void ioloop_stop(struct ioloop *l);

#endif
