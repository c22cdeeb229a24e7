/*
 * kiln-vmm's control socket (--control PATH): a unix stream socket taking
 * one request per line and answering each with one line of JSON. The
 * requests and answers are documented in docs/snapshot.md.
 *
 *   pause | resume | snapshot DIR | shutdown | stats | vcpus | help
 *
 * One thread serves one client at a time; requests never run on a vCPU or
 * the I/O thread, so a slow snapshot holds up nothing but its caller.
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
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "control.h"

#define CONTROL_LINE_MAX	4096
#define PAUSE_TIMEOUT_MS	2000

/* Output for one answer: bounded, never more than one line. */
struct out {
	char buf[16384];
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
	uint64_t exits = 0, touched, priv;
	char dev[1024];
	int i;

	outf(o, "{\"ok\":true,\"state\":\"%s\",\"uptime_ms\":%.3f,\"vcpus\":[", state_name(c),
	     (double)(now_ns() - c->t_start) / 1e6);
	for (i = 0; i < vm->nvcpus; i++) {
		exits += vm->vcpus[i].exits;
		outf(o, "%s{\"id\":%d,\"exits\":%llu}", i ? "," : "", i, (unsigned long long)vm->vcpus[i].exits);
	}
	guest_mem_usage(&vm->mem, &touched, &priv);
	outf(o, "],\"exits\":%llu,\"memory\":{\"size\":%llu,\"touched\":%llu,\"private\":%llu},\"io\":{\"completions\":%llu,\"devices\":[",
	     (unsigned long long)exits, (unsigned long long)vm->mem.size,
	     (unsigned long long)touched, (unsigned long long)priv,
	     (unsigned long long)c->src->loop->completions);
	for (i = 0; i < c->src->ndevs; i++) {
		if (virtio_mmio_stats(&c->src->devs[i], dev, sizeof(dev)) < 0)
			snprintf(dev, sizeof(dev), "{}");
		outf(o, "%s%s", i ? "," : "", dev);
	}
	outf(o, "],\"console_bytes\":%llu}}", (unsigned long long)c->src->uart->tx_bytes);
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
		if (ioctl(v->fd, KVM_GET_REGS, &regs) < 0 || ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0 ||
		    ioctl(v->fd, KVM_GET_MP_STATE, &mp) < 0 ||
		    ioctl(v->fd, KVM_GET_LAPIC, &lapic) < 0 || ioctl(v->fd, KVM_GET_VCPU_EVENTS, &ev) < 0) {
			outf(o, "%s{\"id\":%d,\"error\":\"%s\"}", i ? "," : "", i, strerror(errno));
			continue;
		}
		(void)ioctl(v->fd, KVM_GET_MSRS, m);
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
	else if (strcmp(line, "vcpus") == 0 && !*arg)
		req_vcpus(c, o);
	else if (strcmp(line, "help") == 0)
		outf(o, "{\"ok\":true,\"requests\":[\"pause\",\"resume\",\"snapshot DIR\",\"shutdown\",\"stats\",\"vcpus\",\"help\"]}");
	else {
		char msg[200];

		snprintf(msg, sizeof(msg), "unknown request \"%.60s%s%.60s\" (try: pause, resume, snapshot DIR, shutdown, stats)",
			 line, *arg ? " " : "", arg);
		out_error(o, msg);
	}
}

/* Serve one client until it hangs up or kiln-vmm stops. */
static void serve(struct control *c, int fd)
{
	char line[CONTROL_LINE_MAX + 1];
	size_t len = 0;
	int discard = 0;

	for (;;) {
		struct pollfd p[2] = { { .fd = fd, .events = POLLIN }, { .fd = c->quit_efd, .events = POLLIN } };
		ssize_t n;
		char *nl;

		if (poll(p, 2, -1) < 0 && errno != EINTR)
			return;
		if (p[1].revents)
			return;
		if (!p[0].revents)
			continue;
		n = read(fd, line + len, CONTROL_LINE_MAX - len);
		if (n <= 0)
			return;
		len += (size_t)n;
		while ((nl = memchr(line, '\n', len))) {
			struct out o;
			size_t used = (size_t)(nl - line) + 1;

			*nl = '\0';
			if (nl > line && nl[-1] == '\r')
				nl[-1] = '\0';
			o.len = 0;
			if (discard) {
				out_error(&o, "request longer than 4096 bytes");
				discard = 0;
			} else if (line[0]) {
				handle_line(c, line, &o);
			}
			if (o.len) {
				outf(&o, "\n");
				if (o.buf[o.len - 1] != '\n')
					o.buf[o.len - 1] = '\n';
				if (write_full(fd, o.buf, o.len) < 0)
					return;
			}
			memmove(line, line + used, len - used);
			len -= used;
		}
		/* A line that does not fit is answered with an error once it ends. */
		if (len == CONTROL_LINE_MAX) {
			discard = 1;
			len = 0;
		}
	}
}

static void *control_thread(void *arg)
{
	struct control *c = arg;
	sigset_t all;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	for (;;) {
		struct pollfd p[2] = { { .fd = c->lfd, .events = POLLIN }, { .fd = c->quit_efd, .events = POLLIN } };
		int fd;

		if (poll(p, 2, -1) < 0 && errno != EINTR)
			break;
		if (p[1].revents)
			break;
		if (!p[0].revents)
			continue;
		fd = accept4(c->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		serve(c, fd);
		close(fd);
	}
	return NULL;
}

int control_start(struct control *c, const char *path, const struct snap_source *src, struct kiln_err *err)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct stat st;
	int r;

	memset(c, 0, sizeof(*c));
	c->lfd = c->quit_efd = -1;
	c->src = src;
	c->t_start = now_ns();
	if (strlen(path) >= sizeof(a.sun_path))
		return kiln_fail(err, ENAMETOOLONG, "--control %s: longer than %zu bytes (use a shorter path)",
				 path, sizeof(a.sun_path) - 1);
	/* Replace a stale socket, never some other file. */
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			return kiln_fail(err, EEXIST, "--control %s: exists and is not a socket", path);
		unlink(path);
	}
	strcpy(a.sun_path, path);
	snprintf(c->path, sizeof(c->path), "%s", path);
	c->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	c->quit_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (c->lfd < 0 || c->quit_efd < 0 || bind(c->lfd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    listen(c->lfd, 8) < 0) {
		r = kiln_fail(err, errno, "--control %s: %s", path, strerror(errno));
		control_stop(c);
		return r;
	}
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
