/* kiln agent client: exec, attach, wait and the other process operations. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "agent_proto.h"
#include "agent_client.h"
#include "ac_int.h"

/* ---- exec ------------------------------------------------------------------- */

static int exec_rec(struct op *o, const struct kp_frame *f)
{
	struct kac_exit *ex = o->ex;
	struct kp_rec r;
	struct kp_field fl;
	uint64_t v;
	int64_t i;
	int b, ret;

	if (kp_rec_find(f->payload, f->len, KT_EVENT, &fl) == 1 && !kp_field_u64(&fl, &v) && v == KP_EV_GAP) {
		uint64_t ch = 0, from = 0, to = 0;

		kp_rec_open(&r, f->payload, f->len);
		while ((ret = kp_rec_next(&r, &fl)) == 1) {
			if (fl.tag == KT_CHANNEL)
				kp_field_u64(&fl, &ch);
			else if (fl.tag == KT_LOST_FROM)
				kp_field_u64(&fl, &from);
			else if (fl.tag == KT_LOST_TO)
				kp_field_u64(&fl, &to);
		}
		if (ret < 0 || ch < 1 || ch > 2 || to < from)
			return -EPROTO;
		if (o->gap_fn)
			o->gap_fn(o->gap_arg, (int)ch, from, to);
		return 0;
	}
	kp_rec_open(&r, f->payload, f->len);
	while ((ret = kp_rec_next(&r, &fl)) == 1) {
		switch (fl.tag) {
		case KT_HANDLE: if (!kp_field_u64(&fl, &v)) ex->handle = v; break;
		case KT_PID: if (!kp_field_u64(&fl, &v)) ex->pid = v; break;
		case KT_CODE:
			if (!kp_field_i64(&fl, &i))
				ex->code = i;
			else if (!kp_field_u64(&fl, &v))
				ex->code = (int64_t)v;
			break;
		case KT_SIGNAL: if (!kp_field_u64(&fl, &v)) ex->signal = (int)v; break;
		case KT_CORE: if (!kp_field_bool(&fl, &b)) ex->core = b; break;
		case KT_OOM: if (!kp_field_bool(&fl, &b)) ex->oom = b; break;
		}
	}
	if (ret == 0 && ex->pid && o->started_fn) {
		o->started_fn(o->started_arg, ex->pid);
		o->started_fn = NULL;
	}
	return ret < 0 ? -EPROTO : 0;
}

/* A request o about a process (exec, attach, wait): its answers fill ex. */
static void proc_start(struct kac *c, struct op *o, struct kp_recw *w, uint64_t op, struct kac_exit *ex)
{
	memset(ex, 0, sizeof(*ex));
	ex->code = -1;
	ac_op_start_rec(c, o, w, op, exec_rec, NULL);
	o->ex = ex;
}

/* The streams of exec and attach: stdin, output, signals, the terminal and gaps as eo names them. */
static void proc_streams(struct op *o, const struct kac_exec_opts *eo)
{
	o->in_fd = eo->stdin_fd;
	o->out_fd[1] = eo->stdout_fd;
	o->out_fd[2] = eo->stderr_fd;
	o->out_fn = eo->out_fn;
	o->out_arg = eo->out_arg;
	o->sig_fd = eo->sig_fd;
	o->tty_fd = eo->tty_fd;
	o->gap_fn = eo->gap_fn;
	o->gap_arg = eo->gap_arg;
	o->started_fn = eo->started_fn;
	o->started_arg = eo->started_arg;
}

int kac_exec(struct kac *c, const struct kac_exec_opts *eo, struct kac_exit *ex, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;
	int ret, i;

	if (err)
		err->code = 0;
	if (!eo->argv || !eo->argv[0])
		return ac_fail(err, EINVAL, "exec: no command given");
	proc_start(c, &o, &w, KP_OP_EXEC, ex);
	proc_streams(&o, eo);
	o.in_credit = c->peer_window;
	o.tty_fd = eo->pty ? eo->tty_fd : -1;
	o.detach = eo->detach;
	if (eo->detach) {
		o.in_fd = -1;
		o.sig_fd = -1;
	}

	for (i = 0; eo->argv[i]; i++)
		kp_put_str(&w, KT_ARG, eo->argv[i]);
	for (i = 0; eo->env && eo->env[i]; i++)
		kp_put_str(&w, KT_ENV, eo->env[i]);
	if (eo->cwd)
		kp_put_str(&w, KT_CWD, eo->cwd);
	if (eo->set_ids) {
		kp_put_u64(&w, KT_UID, eo->uid);
		kp_put_u64(&w, KT_GID, eo->gid);
	}
	kp_put_u64(&w, KT_STDIN, eo->stdin_fd >= 0 && !eo->detach ? KP_IO_PIPE : KP_IO_NULL);
	kp_put_u64(&w, KT_STDOUT, KP_IO_PIPE);
	kp_put_u64(&w, KT_STDERR, KP_IO_PIPE);
	if (eo->pty) {
		kp_put_bool(&w, KT_PTY, 1);
		kp_put_u64(&w, KT_ROWS, eo->rows ? eo->rows : 24);
		kp_put_u64(&w, KT_COLS, eo->cols ? eo->cols : 80);
	}
	if (eo->ring)
		kp_put_u64(&w, KT_RING, eo->ring);
	if (eo->overflow_drop)
		kp_put_u64(&w, KT_OVERFLOW, KP_OVF_DROP);
	o.wait = OP_ALIVE_STARTED;
	ret = ac_op_send_run(c, &o, &w, ac_deadline_of(eo->timeout_ms), err);
	/* Leave a detached process running, its output going into its ring. */
	if (ret == 0 && eo->detach)
		return ac_send_cancel(c, o.id, err);
	if (ret == -ETIMEDOUT && !o.done && ex->handle && !c->broken) {
		struct kac_err e2;

		ac_send_signal(c, NULL, ex->handle, SIGKILL, &e2);
		return ac_fail(err, ETIMEDOUT, "timed out after %d ms; the process (pid %llu) was killed",
			       eo->timeout_ms, (unsigned long long)ex->pid);
	}
	return ac_op_out_ret(&o, ret, "the process's output", err);
}

int kac_signal(struct kac *c, uint64_t handle, int sig, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	ac_op_start(c, &o, &w, KP_OP_SIGNAL);
	kp_put_u64(&w, KT_HANDLE, handle);
	kp_put_u64(&w, KT_SIGNAL, (uint64_t)sig);
	return ac_simple(c, &o, &w, err);
}

int kac_attach(struct kac *c, const struct kac_attach_opts *ao, struct kac_exit *ex, struct kac_err *err)
{
	struct kac_exec_opts eo = {
		.stdin_fd = ao->stdin_fd, .stdout_fd = ao->stdout_fd, .stderr_fd = ao->stderr_fd,
		.sig_fd = ao->sig_fd, .tty_fd = ao->tty_fd, .gap_fn = ao->gap_fn, .gap_arg = ao->gap_arg,
	};
	struct kp_recw w;
	struct op o;

	proc_start(c, &o, &w, KP_OP_ATTACH, ex);
	proc_streams(&o, &eo);
	o.in_credit = ao->stdin_fd >= 0 ? c->peer_window : 0;
	kp_put_u64(&w, KT_HANDLE, ao->handle);
	if (ao->out_offset != KAC_FROM_OLDEST)
		kp_put_u64(&w, KT_OUT_OFFSET, ao->out_offset);
	if (ao->err_offset != KAC_FROM_OLDEST)
		kp_put_u64(&w, KT_ERR_OFFSET, ao->err_offset);
	if (ao->stdin_fd >= 0)
		kp_put_u64(&w, KT_STDIN, KP_IO_PIPE);
	o.wait = OP_ALIVE_STARTED;
	return ac_op_out_ret(&o, ac_op_send_run(c, &o, &w, -1, err), "the process's output", err);
}

int kac_wait(struct kac *c, uint64_t handle, int timeout_ms, struct kac_exit *ex, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;
	int ret;

	proc_start(c, &o, &w, KP_OP_WAIT, ex);
	ex->handle = handle;
	kp_put_u64(&w, KT_HANDLE, handle);
	o.wait = OP_ALIVE;
	ret = ac_op_send_run(c, &o, &w, ac_deadline_of(timeout_ms), err);
	if (ret == -ETIMEDOUT && !o.done && !c->broken) {
		ac_send_cancel(c, o.id, NULL);
		return ac_fail(err, ETIMEDOUT, "process %llu still running after %d ms", (unsigned long long)handle,
			       timeout_ms);
	}
	return ret;
}

int kac_release(struct kac *c, uint64_t handle, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	ac_op_start(c, &o, &w, KP_OP_RELEASE);
	kp_put_u64(&w, KT_HANDLE, handle);
	return ac_simple(c, &o, &w, err);
}

int kac_resize(struct kac *c, uint64_t handle, unsigned rows, unsigned cols, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	ac_op_start(c, &o, &w, KP_OP_RESIZE);
	kp_put_u64(&w, KT_HANDLE, handle);
	kp_put_u64(&w, KT_ROWS, rows);
	kp_put_u64(&w, KT_COLS, cols);
	return ac_simple(c, &o, &w, err);
}

struct ps_state {
	kac_proc_fn fn;
	void *arg;
	struct kac_proc pr;
};

static int ps_rec(struct op *o, const struct kp_frame *f)
{
	struct ps_state *st = o->arg;
	struct kp_rec r, e;
	struct kp_field fl, ef;
	uint64_t v;
	int64_t i;
	int b, ret;

	kp_rec_open(&r, f->payload, f->len);
	while ((ret = kp_rec_next(&r, &fl)) == 1) {
		struct kac_proc *p = &st->pr;
		size_t used = 0;

		if (fl.tag != KT_ENTRY || fl.kind != KP_K_REC)
			continue;
		memset(p, 0, sizeof(*p));
		p->exit.code = -1;
		kp_rec_open(&e, fl.val, fl.len);
		while ((ret = kp_rec_next(&e, &ef)) == 1) {
			switch (ef.tag) {
			case KT_HANDLE: if (!kp_field_u64(&ef, &v)) p->exit.handle = v; break;
			case KT_PID: if (!kp_field_u64(&ef, &v)) p->exit.pid = v; break;
			case KT_OUT_OFFSET: if (!kp_field_u64(&ef, &v)) p->out_offset = v; break;
			case KT_ERR_OFFSET: if (!kp_field_u64(&ef, &v)) p->err_offset = v; break;
			case KT_PTY: if (!kp_field_bool(&ef, &b)) p->pty = b; break;
			case KT_CODE:
				p->exited = 1;
				if (!kp_field_i64(&ef, &i))
					p->exit.code = i;
				break;
			case KT_SIGNAL: if (!kp_field_u64(&ef, &v)) p->exit.signal = (int)v; break;
			case KT_CORE: if (!kp_field_bool(&ef, &b)) p->exit.core = b; break;
			case KT_OOM: if (!kp_field_bool(&ef, &b)) p->exit.oom = b; break;
			case KT_ARG:
				if (p->argc < KAC_PROC_ARGS && ef.kind == KP_K_STR && used + ef.len + 1 <= sizeof(p->argbuf)) {
					kp_field_str(&ef, p->argbuf + used, ef.len + 1);
					p->argv[p->argc++] = p->argbuf + used;
					used += ef.len + 1;
				}
				break;
			}
		}
		if (ret < 0)
			return -EPROTO;
		ret = st->fn(st->arg, p);
		if (ret)
			return ret;
	}
	return ret < 0 ? -EPROTO : 0;
}

int kac_proc_list(struct kac *c, kac_proc_fn fn, void *arg, struct kac_err *err)
{
	struct ps_state *st = calloc(1, sizeof(*st));
	struct kp_recw w;
	struct op o;
	int ret;

	if (!st)
		return ac_fail(err, ENOMEM, "out of memory");
	st->fn = fn;
	st->arg = arg;
	ac_op_start_rec(c, &o, &w, KP_OP_PROC_LIST, ps_rec, st);
	ret = ac_simple(c, &o, &w, err);
	free(st);
	return ret;
}
