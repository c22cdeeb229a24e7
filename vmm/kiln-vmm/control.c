/*
 * kiln-vmm's control socket (--control PATH): a unix stream socket taking
 * one request per line and answering each with one line of JSON. The
 * requests and answers are documented in docs/snapshot.md.
 *
 *   pause | resume | snapshot DIR | shutdown | stats | workingset | vcpus | help
 *
 * One thread serves up to CONTROL_MAX_CLIENTS clients with poll(), each
 * under deadlines, so an idle or slow client holds up no other; only the
 * owner, root and --control-group's members are served (vmm/usock.h).
 * Requests never run on a vCPU or the I/O thread (a snapshot waits for both).
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "control.h"
#include "timeline.h"

#define CONTROL_LINE_MAX	4096
#define PAUSE_TIMEOUT_MS	2000
#define CONTROL_REQUEST_MS	5000	/* to send a whole request line, or take an answer */
#define CONTROL_IDLE_MS		60000	/* between requests, once answered */
#define CONTROL_ACCEPT_BURST	64	/* connections taken per wake-up */

/* Output for one answer: bounded, never more than one line. */
struct out {
	char buf[32768];
	size_t len;
};

static void outf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void outf(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (o->len >= sizeof(o->buf))
		return;
	va_start(ap, fmt);
	n = vsnprintf(o->buf + o->len, sizeof(o->buf) - o->len, fmt, ap);
	va_end(ap);
	if (n > 0)
		o->len += (size_t)n < sizeof(o->buf) - o->len ? (size_t)n : sizeof(o->buf) - o->len - 1;
}

/* A JSON string: quotes, backslashes and control bytes escaped. */
static void out_str(struct out *o, const char *s)
{
	outf(o, "\"");
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			outf(o, "\\%c", c);
		else if (c < 0x20)
			outf(o, "\\u%04x", c);
		else
			outf(o, "%c", c);
	}
	outf(o, "\"");
}

static void out_error(struct out *o, const char *msg)
{
	o->len = 0;
	outf(o, "{\"ok\":false,\"error\":");
	out_str(o, msg);
	outf(o, "}");
}

static const char *state_name(struct control *c)
{
	if (atomic_load(&c->src->vm->stop))
		return "stopped";
	return c->paused ? "paused" : "running";
}

static void req_pause(struct control *c, struct out *o)
{
	uint64_t t0 = now_ns();
	int r = c->paused ? 0 : vm_pause(c->src->vm, PAUSE_TIMEOUT_MS);

	if (r < 0) {
		out_error(o, r == -ESHUTDOWN ? "the VM has stopped" : "the vCPUs did not stop within 2 s");
		return;
	}
	c->paused = 1;
	outf(o, "{\"ok\":true,\"state\":\"paused\",\"ms\":%.3f}", (double)(now_ns() - t0) / 1e6);
}

static void req_resume(struct control *c, struct out *o)
{
	if (c->paused)
		vm_resume(c->src->vm);
	c->paused = 0;
	outf(o, "{\"ok\":true,\"state\":\"%s\"}", state_name(c));
}

static void req_snapshot(struct control *c, const char *dir, struct out *o)
{
	struct kiln_err err = { { 0 } };
	struct snap_result res;
	uint64_t t0 = now_ns();
	int was_paused = c->paused, r;

	if (!*dir) {
		out_error(o, "snapshot: which directory? (snapshot DIR)");
		return;
	}
	if (!was_paused && (r = vm_pause(c->src->vm, PAUSE_TIMEOUT_MS)) < 0) {
		out_error(o, r == -ESHUTDOWN ? "the VM has stopped" : "the vCPUs did not stop within 2 s");
		return;
	}
	r = snapshot_take(c->src, dir, &res, &err);
	/* A running VM is paused only for the snapshot itself. */
	if (!was_paused)
		vm_resume(c->src->vm);
	if (r < 0) {
		out_error(o, err.msg);
		return;
	}
	outf(o, "{\"ok\":true,\"dir\":");
	out_str(o, dir);
	outf(o, ",\"state_bytes\":%llu,\"memory_bytes\":%llu,\"disk_bytes\":%llu,\"quiesce_ms\":%.3f,\"ms\":%.3f,\"state\":\"%s\"}",
	     (unsigned long long)res.state_bytes, (unsigned long long)res.memory_bytes,
	     (unsigned long long)res.disk_bytes, res.quiesce_ms, (double)(now_ns() - t0) / 1e6,
	     state_name(c));
}

static void req_stats(struct control *c, struct out *o)
{
	struct vm *vm = c->src->vm;
	uint64_t exits = 0, touched, priv, kv[KS_N] = { 0 };
	char dev[1024], tl[12288];
	int i, k;

	outf(o, "{\"ok\":true,\"state\":\"%s\",\"uptime_ms\":%.3f,\"vcpus\":[", state_name(c),
	     (double)(now_ns() - c->t_start) / 1e6);
	for (i = 0; i < vm->nvcpus; i++) {
		exits += vm->vcpus[i].exits;
		outf(o, "%s{\"id\":%d,\"exits\":%llu}", i ? "," : "", i, (unsigned long long)vm->vcpus[i].exits);
		(void)kvm_stats_add(&vm->vcpus[i].ks, kv);
	}
	/* KVM's own counters, every vCPU's: exits the VMM never sees (nested page faults, halts). */
	outf(o, "],\"kvm\":{");
	for (k = 0; k < KS_N; k++)
		outf(o, "%s\"%s\":%llu", k ? "," : "", kvm_stat_name((enum kvm_stat)k), (unsigned long long)kv[k]);
	outf(o, "}");
	guest_mem_usage(&vm->mem, &touched, &priv);
	outf(o, ",\"exits\":%llu,\"memory\":{\"size\":%llu,\"touched\":%llu,\"private\":%llu},\"io\":{\"completions\":%llu,\"devices\":[",
	     (unsigned long long)exits, (unsigned long long)vm->mem.size,
	     (unsigned long long)touched, (unsigned long long)priv,
	     (unsigned long long)c->src->loop->completions);
	for (i = 0; i < c->src->ndevs; i++) {
		if (virtio_mmio_stats(&c->src->devs[i], dev, sizeof(dev)) < 0)
			snprintf(dev, sizeof(dev), "{}");
		outf(o, "%s%s", i ? "," : "", dev);
	}
	tl_json(tl, sizeof(tl));
	outf(o, "],\"console_bytes\":%llu},\"prefetched\":{\"read_pages\":%llu,\"write_pages\":%llu,\"kvm_mapped\":%s},\"timeline\":%s}",
	     (unsigned long long)c->src->uart->tx_bytes, (unsigned long long)c->src->prefetched[SNAP_WS_READ],
	     (unsigned long long)c->src->prefetched[SNAP_WS_WRITE], c->src->pre_faulted ? "true" : "false", tl);
}

/*
 * Record the pages of guest memory this clone has touched as its snapshot's
 * working set (snapshot/workingset.h): sent after a restore's first
 * operations, so later restores bring those pages in before they run.
 */
static void req_workingset(struct control *c, struct out *o)
{
	const struct snap_source *src = c->src;
	struct kiln_err err = { { 0 } };
	struct snap_ws ws;

	if (!src->restored) {
		out_error(o, "workingset: this VM was not restored from a snapshot (restore a template, run its first operations, then ask)");
		return;
	}
	if (snap_ws_record(&src->vm->mem, &ws, &err) < 0 ||
	    snap_ws_save(src->restored_dir, &ws, src->restored_id, src->vm->mem.size, &err) < 0) {
		out_error(o, err.msg);
		return;
	}
	outf(o, "{\"ok\":true,\"file\":");
	out_str(o, src->restored_dir);
	outf(o, ",\"ranges\":%u,\"read_pages\":%llu,\"write_pages\":%llu}", ws.n,
	     (unsigned long long)ws.pages[SNAP_WS_READ], (unsigned long long)ws.pages[SNAP_WS_WRITE]);
	snap_ws_free(&ws);
}

/*
 * Where each vCPU is: registers, MP state, pending interrupts and the TSC
 * deadline, read with the VM briefly paused. For a guest that seems hung.
 */
static void req_vcpus(struct control *c, struct out *o)
{
	struct vm *vm = c->src->vm;
	int was_paused = c->paused, i, r;

	if (!was_paused && (r = vm_pause(vm, PAUSE_TIMEOUT_MS)) < 0) {
		out_error(o, r == -ESHUTDOWN ? "the VM has stopped" : "the vCPUs did not stop within 2 s");
		return;
	}
	outf(o, "{\"ok\":true,\"vcpus\":[");
	for (i = 0; i < vm->nvcpus; i++) {
		struct vcpu *v = &vm->vcpus[i];
		struct kvm_regs regs;
		struct kvm_sregs sregs;
		struct kvm_mp_state mp;
		struct kvm_lapic_state lapic;
		struct kvm_vcpu_events ev;
		_Alignas(struct kvm_msrs) uint8_t buf[sizeof(struct kvm_msrs) + 2 * sizeof(struct kvm_msr_entry)];
		struct kvm_msrs *m = (struct kvm_msrs *)buf;
		unsigned irr = 0, isr = 0, k;
		uint32_t lvtt, tmict, tmcct;

		memset(buf, 0, sizeof(buf));
		m->nmsrs = 2;
		m->entries[0].index = 0x10;	/* TSC */
		m->entries[1].index = 0x6e0;	/* TSC_DEADLINE */
		if ((r = VCPU_IOCTL(v, KVM_GET_REGS, &regs, NULL)) < 0 || (r = VCPU_IOCTL(v, KVM_GET_SREGS, &sregs, NULL)) < 0 ||
		    (r = VCPU_IOCTL(v, KVM_GET_MP_STATE, &mp, NULL)) < 0 ||
		    (r = VCPU_IOCTL(v, KVM_GET_LAPIC, &lapic, NULL)) < 0 ||
		    (r = VCPU_IOCTL(v, KVM_GET_VCPU_EVENTS, &ev, NULL)) < 0) {
			outf(o, "%s{\"id\":%d,\"error\":\"%s\"}", i ? "," : "", i, strerror(-r));
			continue;
		}
		(void)VCPU_IOCTL(v, KVM_GET_MSRS, m, NULL);
		/*
		 * IRR at 0x200, ISR at 0x100: 8 registers of 32 bits, 16 bytes
		 * apart; report the highest vector set in each (0: none).
		 */
		for (k = 0; k < 8; k++) {
			uint32_t a, b;

			memcpy(&a, lapic.regs + 0x200 + k * 16, 4);
			memcpy(&b, lapic.regs + 0x100 + k * 16, 4);
			if (a)
				irr = k * 32 + 31 - (unsigned)__builtin_clz(a);
			if (b)
				isr = k * 32 + 31 - (unsigned)__builtin_clz(b);
		}
		/* The timer: LVT entry (mode, mask, vector), initial and current count. */
		memcpy(&lvtt, lapic.regs + 0x320, 4);
		memcpy(&tmict, lapic.regs + 0x380, 4);
		memcpy(&tmcct, lapic.regs + 0x390, 4);
		outf(o, "%s{\"id\":%d,\"rip\":\"%#llx\",\"rflags\":\"%#llx\",\"rsp\":\"%#llx\",\"cr3\":\"%#llx\",\"mp_state\":%u,\"irr\":%u,\"isr\":%u,\"nmi_pending\":%u,\"interrupt_injected\":%u,\"tsc\":%llu,\"tsc_deadline\":%llu,\"lvt_timer\":\"%#x\",\"timer_initial\":%u,\"timer_current\":%u,\"exits\":%llu}",
		     i ? "," : "", i, (unsigned long long)regs.rip, (unsigned long long)regs.rflags,
		     (unsigned long long)regs.rsp, (unsigned long long)sregs.cr3, mp.mp_state,
		     irr, isr, ev.nmi.pending, ev.interrupt.injected,
		     (unsigned long long)m->entries[0].data, (unsigned long long)m->entries[1].data,
		     lvtt, tmict, tmcct, (unsigned long long)v->exits);
	}
	outf(o, "]}");
	if (!was_paused)
		vm_resume(vm);
}

static void handle_line(struct control *c, char *line, struct out *o)
{
	char *arg = strchr(line, ' ');

	if (arg)
		*arg++ = '\0';
	else
		arg = line + strlen(line);
	if (strcmp(line, "pause") == 0 && !*arg)
		req_pause(c, o);
	else if (strcmp(line, "resume") == 0 && !*arg)
		req_resume(c, o);
	else if (strcmp(line, "snapshot") == 0)
		req_snapshot(c, arg, o);
	else if (strcmp(line, "shutdown") == 0 && !*arg) {
		vm_request_stop(c->src->vm, VM_STOP_SHUTDOWN, NULL);
		outf(o, "{\"ok\":true,\"state\":\"stopped\"}");
	} else if (strcmp(line, "stats") == 0 && !*arg)
		req_stats(c, o);
	else if (strcmp(line, "workingset") == 0 && !*arg)
		req_workingset(c, o);
	else if (strcmp(line, "vcpus") == 0 && !*arg)
		req_vcpus(c, o);
	else if (strcmp(line, "help") == 0)
		outf(o, "{\"ok\":true,\"requests\":[\"pause\",\"resume\",\"snapshot DIR\",\"shutdown\",\"stats\",\"workingset\",\"vcpus\",\"help\"]}");
	else {
		char msg[256];

		snprintf(msg, sizeof(msg), "unknown request \"%.60s%s%.60s\" (try: pause, resume, snapshot DIR, shutdown, stats, workingset)",
			 line, *arg ? " " : "", arg);
		out_error(o, msg);
	}
}

/* One client: its request line so far, its unsent answer, its deadline. */
struct control_client {
	int fd;
	char in[CONTROL_LINE_MAX + 1];
	size_t in_len;
	int discard;		/* the line under way is too long: answered with an error at its end */
	uint64_t deadline;	/* closed when it passes (ns, CLOCK_MONOTONIC) */
	struct out out;		/* the answer not yet sent; no request is read while there is one */
	size_t out_off;
};

static uint64_t ms_from_now(unsigned ms)
{
	return now_ns() + (uint64_t)ms * 1000000ULL;
}

static void client_close(struct control *c, int i)
{
	close(c->clients[i]->fd);
	free(c->clients[i]);
	c->clients[i] = NULL;
}

/* Send what the client takes of its answer: 0 all of it, 1 some is left, -1 the client is gone. */
static int client_flush(struct control_client *cl)
{
	while (cl->out_off < cl->out.len) {
		ssize_t n = send(cl->fd, cl->out.buf + cl->out_off, cl->out.len - cl->out_off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return 1;
		if (n <= 0)
			return -1;
		cl->out_off += (size_t)n;
	}
	cl->out.len = cl->out_off = 0;
	return 0;
}

/*
 * Answer the client's complete request lines in order, each once the answer
 * before it has gone. An answer earns the client a new deadline: to take
 * the answer, then to finish the next line or, if none has begun, to idle.
 * Returns -1 once the client is gone.
 */
static int client_answer(struct control *c, struct control_client *cl)
{
	char *nl;
	int r;

	while (!cl->out.len && (nl = memchr(cl->in, '\n', cl->in_len))) {
		size_t used = (size_t)(nl - cl->in) + 1;

		*nl = '\0';
		if (nl > cl->in && nl[-1] == '\r')
			nl[-1] = '\0';
		if (cl->discard) {
			out_error(&cl->out, "request longer than 4096 bytes");
			cl->discard = 0;
		} else if (cl->in[0]) {
			handle_line(c, cl->in, &cl->out);
		}
		memmove(cl->in, cl->in + used, cl->in_len - used);
		cl->in_len -= used;
		if (!cl->out.len)
			continue;	/* an empty line: no answer, no new deadline */
		outf(&cl->out, "\n");
		if (cl->out.buf[cl->out.len - 1] != '\n')
			cl->out.buf[cl->out.len - 1] = '\n';
		r = client_flush(cl);
		if (r < 0)
			return -1;
		cl->deadline = ms_from_now(r || cl->in_len ? CONTROL_REQUEST_MS : CONTROL_IDLE_MS);
	}
	return 0;
}

/* The client is readable: take what it sent and answer what is complete. -1: it is gone. */
static int client_read(struct control *c, struct control_client *cl)
{
	ssize_t n;
	uint64_t line_by;

	if (cl->in_len >= CONTROL_LINE_MAX)
		return -1;	/* cannot happen: a full buffer holds a line or is discarded */
	n = recv(cl->fd, cl->in + cl->in_len, CONTROL_LINE_MAX - cl->in_len, MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return 0;
	if (n <= 0)
		return -1;
	/* A line, once begun, must end within CONTROL_REQUEST_MS; sending more never extends that. */
	line_by = ms_from_now(CONTROL_REQUEST_MS);
	if (line_by < cl->deadline)
		cl->deadline = line_by;
	cl->in_len += (size_t)n;
	if (client_answer(c, cl) < 0)
		return -1;
	/* A line that does not fit is answered with an error once it ends. */
	if (cl->in_len == CONTROL_LINE_MAX && !memchr(cl->in, '\n', cl->in_len)) {
		cl->discard = 1;
		cl->in_len = 0;
	}
	return 0;
}

/* The client takes output again: send the rest of its answer, then answer what waits. */
static int client_write(struct control *c, struct control_client *cl)
{
	int r = client_flush(cl);

	if (r)
		return r < 0 ? -1 : 0;
	cl->deadline = ms_from_now(cl->in_len ? CONTROL_REQUEST_MS : CONTROL_IDLE_MS);
	return client_answer(c, cl);
}

/* Take new connections: refuse peers the socket is not for, and any beyond CONTROL_MAX_CLIENTS. */
static void control_accept(struct control *c)
{
	int k;

	for (k = 0; k < CONTROL_ACCEPT_BURST; k++) {
		struct control_client *cl = NULL;
		int fd = accept4(c->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC), i;

		if (fd < 0) {
			/* Out of descriptors or memory: the listener stays readable, so pause rather than spin. */
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
				c->accept_after = ms_from_now(100);
			return;
		}
		if (!usock_peer_check(&c->acl, fd)) {
			close(fd);
			continue;
		}
		for (i = 0; i < CONTROL_MAX_CLIENTS && c->clients[i]; i++)
			;
		if (i == CONTROL_MAX_CLIENTS || !(cl = calloc(1, sizeof(*cl)))) {
			char busy[128];
			int len = snprintf(busy, sizeof(busy),
					   "{\"ok\":false,\"error\":\"too many control clients (%d connected): close one or try again\"}\n",
					   CONTROL_MAX_CLIENTS);

			(void)!send(fd, busy, (size_t)len, MSG_NOSIGNAL | MSG_DONTWAIT);
			close(fd);
			continue;
		}
		cl->fd = fd;
		cl->deadline = ms_from_now(CONTROL_REQUEST_MS);
		c->clients[i] = cl;
	}
}

static void *control_thread(void *arg)
{
	struct control *c = arg;
	sigset_t all;
	int i;

	pthread_setname_np(pthread_self(), "kiln-control");
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	for (;;) {
		struct pollfd p[2 + CONTROL_MAX_CLIENTS];
		int who[2 + CONTROL_MAX_CLIENTS];
		uint64_t now = now_ns(), next = UINT64_MAX, polled;
		int n = 2, timeout;

		p[0] = (struct pollfd){ .fd = c->quit_efd, .events = POLLIN };
		p[1] = (struct pollfd){ .fd = c->lfd, .events = POLLIN };
		if (c->accept_after > now) {
			p[1].fd = -1;
			next = c->accept_after;
		}
		for (i = 0; i < CONTROL_MAX_CLIENTS; i++) {
			struct control_client *cl = c->clients[i];

			if (!cl)
				continue;
			if (cl->deadline < next)
				next = cl->deadline;
			who[n] = i;
			p[n++] = (struct pollfd){ .fd = cl->fd, .events = cl->out.len ? POLLOUT : POLLIN };
		}
		timeout = next == UINT64_MAX ? -1 : next <= now ? 0 : (int)((next - now + 999999) / 1000000);
		if (poll(p, (nfds_t)n, timeout) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		polled = now_ns();
		if (p[0].revents)
			break;
		if (p[1].revents)
			control_accept(c);
		/* Accepting fills only free slots: who[] still names these clients. */
		for (i = 2; i < n; i++) {
			struct control_client *cl = c->clients[who[i]];

			if (p[i].revents && (cl->out.len ? client_write(c, cl) : client_read(c, cl)) < 0)
				client_close(c, who[i]);
		}
		/*
		 * Close those whose deadline had passed when poll() looked and that
		 * have not earned a new one since. A deadline that passed while a
		 * request ran (a snapshot) waits for the next look: what the client
		 * sent meanwhile counts.
		 */
		for (i = 0; i < CONTROL_MAX_CLIENTS; i++)
			if (c->clients[i] && c->clients[i]->deadline <= polled)
				client_close(c, i);
	}
	for (i = 0; i < CONTROL_MAX_CLIENTS; i++)
		if (c->clients[i])
			client_close(c, i);
	return NULL;
}

int control_start(struct control *c, const char *path, const char *group, const struct snap_source *src,
		  struct kiln_err *err)
{
	char what[160];
	int r;

	memset(c, 0, sizeof(*c));
	c->lfd = c->quit_efd = -1;
	c->src = src;
	c->t_start = now_ns();
	c->acl.group = USOCK_NO_GROUP;
	c->acl.hint = "(--control-group GROUP admits a group's members)";
	snprintf(c->acl.what, sizeof(c->acl.what), "--control %s", path);
	if (group) {
		snprintf(what, sizeof(what), "--control-group %s", group);
		r = usock_group_lookup(group, what, &c->acl.group, err);
		if (r < 0)
			return r;
	}
	c->quit_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (c->quit_efd < 0)
		return kiln_fail(err, errno, "--control: eventfd: %s", strerror(errno));
	c->lfd = usock_listen(path, SOCK_NONBLOCK, 64, &c->acl, err);
	if (c->lfd < 0) {
		r = c->lfd;
		c->lfd = -1;
		control_stop(c);
		return r;
	}
	snprintf(c->path, sizeof(c->path), "%s", path);
	c->bound = 1;
	if ((r = pthread_create(&c->thread, NULL, control_thread, c)) != 0) {
		control_stop(c);
		return kiln_fail(err, r, "cannot start the control thread: %s", strerror(r));
	}
	c->started = 1;
	return 0;
}

void control_stop(struct control *c)
{
	uint64_t one = 1;

	if (c->started) {
		(void)!write(c->quit_efd, &one, sizeof(one));
		pthread_join(c->thread, NULL);
		c->started = 0;
	}
	if (c->paused)
		vm_resume(c->src->vm);
	c->paused = 0;
	if (c->lfd >= 0)
		close(c->lfd);
	if (c->quit_efd >= 0)
		close(c->quit_efd);
	c->lfd = c->quit_efd = -1;
	if (c->bound)
		unlink(c->path);
	c->bound = 0;
}
