/*
 * Taking a snapshot of a paused VM, and parsing one back (snapshot.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "snapshot.h"

#define QUIESCE_TIMEOUT_MS	5000

/* ---- parsing ------------------------------------------------------------------ */

static int meta_parse(struct snap_rd *r, struct snap_meta *m)
{
	memset(m, 0, sizeof(*m));
	snapr_str(r, m->vendor, sizeof(m->vendor), "CPU vendor");
	snapr_str(r, m->vmm_version, sizeof(m->vmm_version), "kiln-vmm version");
	m->mem_size = snapr_u64(r, "memory size");
	m->vcpus = snapr_u32(r, "vCPU count");
	m->kernel_crc = snapr_u32(r, "kernel checksum");
	m->kernel_size = snapr_u64(r, "kernel size");
	snapr_str(r, m->kernel, sizeof(m->kernel), "kernel path");
	m->created_ns = snapr_u64(r, "creation time");
	m->ndevices = snapr_u32(r, "device count");
	if (!snapr_ok(r))
		return -EINVAL;
	if (m->mem_size < KILN_MIN_MEM_MIB * MIB || m->mem_size > KILN_MAX_MEM_MIB * MIB || m->mem_size % (2 * MIB))
		return snapr_fail(r, "memory size %llu bytes is not a multiple of 2 MiB from %d MiB to %llu MiB",
				  (unsigned long long)m->mem_size, KILN_MIN_MEM_MIB, (unsigned long long)KILN_MAX_MEM_MIB);
	if (m->vcpus < 1 || m->vcpus > KILN_MAX_VCPUS)
		return snapr_fail(r, "%u vCPUs: kiln runs 1 to %d", m->vcpus, KILN_MAX_VCPUS);
	if (m->ndevices > SNAP_MAX_DEVICES)
		return snapr_fail(r, "%u devices: at most %d", m->ndevices, SNAP_MAX_DEVICES);
	return snapr_end(r, "header");
}

static int device_parse(struct snap_rd *r, struct snap_device *d)
{
	snapr_str(r, d->kind, sizeof(d->kind), "device kind");
	snapr_str(r, d->spec, sizeof(d->spec), "device spec");
	d->base = snapr_u64(r, "device address");
	d->irq = snapr_u32(r, "device IRQ");
	if (!snapr_ok(r))
		return -EINVAL;
	if (strcmp(d->kind, "disk") && strcmp(d->kind, "net") && strcmp(d->kind, "vsock"))
		return snapr_fail(r, "unknown device kind \"%s\"", d->kind);
	/* The rest is the device's own: virtio_mmio_restore reads it. */
	snapr_init(&d->state, r->p + r->off, snapr_left(r));
	return 0;
}

int snap_parse(const void *p, size_t len, struct snap_state *s, char *err, size_t errlen)
{
	struct snap_rd body, sec;
	uint32_t n, i, tag, nvcpu = 0, ndev = 0;
	int have_meta = 0, have_vm = 0, have_serial = 0;

	memset(s, 0, sizeof(*s));
	if (snap_file_open(p, len, &body, &n, err, errlen) < 0)
		return -EINVAL;
	for (i = 0; i < n; i++) {
		if (snap_next_section(&body, &tag, &sec) < 0)
			goto bad_body;
		if (!have_meta && tag != SNAP_SEC_META) {
			snprintf(err, errlen, "the first section is not the header");
			return -EINVAL;
		}
		switch (tag) {
		case SNAP_SEC_META:
			if (have_meta++) {
				snprintf(err, errlen, "two headers");
				return -EINVAL;
			}
			if (meta_parse(&sec, &s->meta) < 0)
				goto bad_sec;
			s->vcpu = calloc(s->meta.vcpus, sizeof(*s->vcpu));
			if (!s->vcpu) {
				snprintf(err, errlen, "out of memory");
				return -ENOMEM;
			}
			break;
		case SNAP_SEC_VM:
			if (have_vm++) {
				snprintf(err, errlen, "two VM sections");
				return -EINVAL;
			}
			if (vm_state_parse(&sec, &s->vm) < 0)
				goto bad_sec;
			break;
		case SNAP_SEC_VCPU:
			if (nvcpu == s->meta.vcpus) {
				snprintf(err, errlen, "more vCPU sections than the %u vCPUs in the header", s->meta.vcpus);
				return -EINVAL;
			}
			if (vcpu_state_parse(&sec, &s->vcpu[nvcpu]) < 0)
				goto bad_sec;
			if (s->vcpu[nvcpu].id != nvcpu) {
				snprintf(err, errlen, "vCPU section %u is for vCPU %u", nvcpu, s->vcpu[nvcpu].id);
				return -EINVAL;
			}
			nvcpu++;
			break;
		case SNAP_SEC_SERIAL:
			if (have_serial++) {
				snprintf(err, errlen, "two serial sections");
				return -EINVAL;
			}
			s->serial = sec;
			break;
		case SNAP_SEC_DEVICE:
			if (ndev == s->meta.ndevices) {
				snprintf(err, errlen, "more device sections than the %u devices in the header", s->meta.ndevices);
				return -EINVAL;
			}
			if (device_parse(&sec, &s->dev[ndev]) < 0)
				goto bad_sec;
			ndev++;
			break;
		}
	}
	if (!have_vm || !have_serial || nvcpu != s->meta.vcpus || ndev != s->meta.ndevices) {
		snprintf(err, errlen, "incomplete: %s%s%u of %u vCPUs, %u of %u devices",
			 have_vm ? "" : "no VM section, ", have_serial ? "" : "no serial section, ",
			 nvcpu, s->meta.vcpus, ndev, s->meta.ndevices);
		return -EINVAL;
	}
	return 0;
bad_body:
	snprintf(err, errlen, "section %u: %s", i, body.err);
	return -EINVAL;
bad_sec: {
	static const char *const names[] = { "?", "header", "VM", "vCPU", "serial", "device" };

	snprintf(err, errlen, "%s section: %s", names[tag <= SNAP_SEC_DEVICE ? tag : 0], sec.err);
	return -EINVAL;
}
}

void snap_state_free(struct snap_state *s)
{
	free(s->vcpu);
	s->vcpu = NULL;
}

/* ---- host checks -------------------------------------------------------------- */

void snap_cpuid_vendor(const struct kvm_cpuid2 *c, char out[13])
{
	uint32_t i;

	memset(out, 0, 13);
	for (i = 0; i < c->nent; i++)
		if (c->entries[i].function == 0) {
			memcpy(out, &c->entries[i].ebx, 4);
			memcpy(out + 4, &c->entries[i].edx, 4);
			memcpy(out + 8, &c->entries[i].ecx, 4);
			return;
		}
}

int snap_check_cpuid(const struct kvm_cpuid2 *host, const struct snap_vcpu *s, int nvcpus,
		     struct kiln_err *err)
{
	size_t sz = sizeof(*host) + host->nent * sizeof(host->entries[0]);
	struct kvm_cpuid2 *c = malloc(sz);
	uint32_t i, j;
	int r = 0;

	if (!c)
		return kiln_fail(err, ENOMEM, "out of memory");
	memcpy(c, host, sz);
	cpuid_filter(c, (int)s->id, nvcpus);
	if (c->nent != s->ncpuid)
		r = kiln_fail(err, EINVAL, "the snapshot's vCPU %u has %u CPUID leaves, this host gives %u (another CPU model or host kernel)",
			      s->id, s->ncpuid, c->nent);
	for (i = 0; i < s->ncpuid && !r; i++) {
		const struct kvm_cpuid_entry2 *a = &s->cpuid[i], *b = NULL;

		for (j = 0; j < c->nent; j++)
			if (c->entries[j].function == a->function && c->entries[j].index == a->index) {
				b = &c->entries[j];
				break;
			}
		if (!b)
			r = kiln_fail(err, EINVAL, "CPUID leaf %#x.%u of the snapshot is missing on this host (another CPU model or host kernel)",
				      a->function, a->index);
		else if (a->eax != b->eax || a->ebx != b->ebx || a->ecx != b->ecx || a->edx != b->edx || a->flags != b->flags)
			r = kiln_fail(err, EINVAL, "CPUID leaf %#x.%u differs: the snapshot saw %08x %08x %08x %08x, this host gives %08x %08x %08x %08x (another CPU model or host kernel: take the template again here)",
				      a->function, a->index, a->eax, a->ebx, a->ecx, a->edx, b->eax, b->ebx, b->ecx, b->edx);
	}
	free(c);
	return r;
}

int snap_file_crc(const char *path, uint32_t *crc, uint64_t *size)
{
	struct stat st;
	void *p;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
		close(fd);
		return -EINVAL;
	}
	p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		return -errno;
	*crc = snap_crc32c(0, p, (size_t)st.st_size);
	*size = (uint64_t)st.st_size;
	munmap(p, (size_t)st.st_size);
	return 0;
}

/* ---- taking a snapshot ---------------------------------------------------------- */

int snap_copy_file(const char *src, const char *dst, int dst_fd, uint64_t *copied, struct kiln_err *err)
{
	struct stat st;
	int in, out, e = 0;
	off_t off = 0;
	uint64_t total = 0;

	in = open(src, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return kiln_fail(err, errno, "%s: %s", src, strerror(errno));
	if (fstat(in, &st) < 0) {
		e = errno;
		close(in);
		return kiln_fail(err, e, "%s: %s", src, strerror(e));
	}
	out = dst ? open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600) : dst_fd;
	if (out < 0) {
		e = errno;
		close(in);
		return kiln_fail(err, e, "%s: %s", dst, strerror(e));
	}
	/* A reflink shares the extents: instant, and copy-on-write from here on. */
	if (ioctl(out, FICLONE, in) == 0)
		goto done;
	if (ftruncate(out, st.st_size) < 0) {
		e = errno;
		goto done;
	}
	/* Otherwise copy only the data extents; holes stay holes. */
	while (off < st.st_size) {
		off_t data = lseek(in, off, SEEK_DATA), hole;

		if (data < 0) {
			if (errno != ENXIO)
				e = errno;
			break;
		}
		hole = lseek(in, data, SEEK_HOLE);
		if (hole < 0) {
			e = errno;
			break;
		}
		off = data;
		while (off < hole) {
			loff_t io = off, oo = off;
			ssize_t n = copy_file_range(in, &io, out, &oo, (size_t)(hole - off), 0);

			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				e = n < 0 ? errno : EIO;
				break;
			}
			off += n;
			total += (uint64_t)n;
		}
		if (e)
			break;
	}
done:
	if (!e && fsync(out) < 0)
		e = errno;
	close(in);
	if (dst)
		close(out);
	if (e) {
		if (dst)
			unlink(dst);
		return kiln_fail(err, e, "copying %s to %s: %s", src, dst ? dst : "a clone's disk", strerror(e));
	}
	if (copied)
		*copied = total;
	return 0;
}

static double ms_since(uint64_t t0)
{
	return (double)(now_ns() - t0) / 1e6;
}

struct take_ctx {
	const struct snap_source *src;
	const char *dir;
	struct snap_result *res;
	struct kiln_err *err;
	unsigned inflight;
	int rc;
};

static void count_inflight(void *arg)
{
	struct take_ctx *t = arg;
	int i;

	t->inflight = 0;
	for (i = 0; i < t->src->ndevs; i++)
		t->inflight += virtio_mmio_inflight(&t->src->devs[i]);
}

static int write_all_file(const char *path, const void *p, size_t len, struct kiln_err *err)
{
	char tmp[4200];
	int fd, e;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return kiln_fail(err, ENAMETOOLONG, "%s: path too long", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return kiln_fail(err, errno, "%s: %s", tmp, strerror(errno));
	if ((e = write_full(fd, p, len)) < 0) {
		errno = -e;
		goto fail;
	}
	if (fsync(fd) < 0)
		goto fail;
	close(fd);
	/* Renamed into place last: a state file that exists is a whole one. */
	if (rename(tmp, path) < 0) {
		e = errno;
		unlink(tmp);
		return kiln_fail(err, e, "%s: %s", path, strerror(e));
	}
	return 0;
fail:
	e = errno ? errno : EIO;
	close(fd);
	unlink(tmp);
	return kiln_fail(err, e, "%s: %s", tmp, strerror(e));
}

/* On the I/O thread, so no completion touches guest memory while it is copied. */
static void take_on_io_thread(void *arg)
{
	struct take_ctx *t = arg;
	const struct snap_source *src = t->src;
	struct vm *vm = src->vm;
	char path[4200], disk_spec[SNAP_MAX_DEVICES][512];
	struct snap_buf w;
	size_t mark;
	int i, ndisk = 0;

	count_inflight(t);
	if (t->inflight) {
		t->rc = -EAGAIN;
		return;
	}
	snapw_init(&w);
	snapw_begin_file(&w);

	/* Writable disks first: the state records the copies' names. */
	for (i = 0; i < src->ndevs; i++) {
		struct disk_spec ds;
		const char *dpath = ds.path;
		uint64_t n = 0;

		if (snprintf(disk_spec[i], sizeof(disk_spec[i]), "%s", src->dev_spec[i]) >= (int)sizeof(disk_spec[i])) {
			t->rc = kiln_fail(t->err, ENAMETOOLONG, "--%s %s: too long for a snapshot (at most %zu bytes)",
					  src->dev_kind[i], src->dev_spec[i], sizeof(disk_spec[i]) - 1);
			goto out;
		}
		if (strcmp(src->dev_kind[i], "disk"))
			continue;
		if ((t->rc = disk_spec_parse(src->dev_spec[i], &ds, t->err)) < 0)
			goto out;
		if (ds.ro) {
			char abs[4096];

			/* Shared, not copied: recorded by absolute path. */
			if (!realpath(dpath, abs)) {
				t->rc = kiln_fail(t->err, errno, "%s: %s", dpath, strerror(errno));
				goto out;
			}
			if (snprintf(disk_spec[i], sizeof(disk_spec[i]), "%s%s", abs, ds.opts) >= (int)sizeof(disk_spec[i])) {
				t->rc = kiln_fail(t->err, ENAMETOOLONG, "%s: path too long for a snapshot (at most %zu bytes)",
						  abs, sizeof(disk_spec[i]) - 1);
				goto out;
			}
			continue;
		}
		snprintf(path, sizeof(path), "%s/disk%d.img", t->dir, ndisk);
		if ((t->rc = snap_copy_file(dpath, path, -1, &n, t->err)) < 0)
			goto out;
		t->res->disk_bytes += n;
		snprintf(disk_spec[i], sizeof(disk_spec[i]), "disk%d.img%s", ndisk, ds.opts);
		ndisk++;
	}

	mark = snapw_section_begin(&w, SNAP_SEC_META);
	{
		char vendor[13];

		snap_cpuid_vendor(vm->cpuid, vendor);
		snapw_blob(&w, vendor, (uint32_t)strlen(vendor));
	}
	snapw_blob(&w, src->vmm_version, (uint32_t)strlen(src->vmm_version));
	snapw_u64(&w, vm->mem.size);
	snapw_u32(&w, (uint32_t)vm->nvcpus);
	snapw_u32(&w, src->kernel_crc);
	snapw_u64(&w, src->kernel_size);
	snapw_blob(&w, src->kernel_path, (uint32_t)strnlen(src->kernel_path, 255));
	{
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		snapw_u64(&w, (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec);
	}
	snapw_u32(&w, (uint32_t)src->ndevs);
	snapw_section_end(&w, mark);

	if ((t->rc = vm_state_save(vm, &w, t->err)) < 0)
		goto out;
	for (i = 0; i < vm->nvcpus; i++)
		if ((t->rc = vcpu_state_save(&vm->vcpus[i], &w, t->err)) < 0)
			goto out;
	mark = snapw_section_begin(&w, SNAP_SEC_SERIAL);
	serial_save(src->uart, &w);
	snapw_section_end(&w, mark);
	for (i = 0; i < src->ndevs; i++) {
		struct virtio_dev *d = &src->devs[i];

		mark = snapw_section_begin(&w, SNAP_SEC_DEVICE);
		snapw_blob(&w, src->dev_kind[i], (uint32_t)strlen(src->dev_kind[i]));
		snapw_blob(&w, disk_spec[i], (uint32_t)strlen(disk_spec[i]));
		snapw_u64(&w, d->base);
		snapw_u32(&w, d->irq);
		if ((t->rc = virtio_mmio_save(d, &w)) < 0) {
			kiln_fail(t->err, -t->rc, "saving virtio-%s: %s", d->ops->name, strerror(-t->rc));
			goto out;
		}
		snapw_section_end(&w, mark);
	}
	if (snapw_finish(&w) < 0) {
		t->rc = kiln_fail(t->err, ENOMEM, "the state is larger than %u bytes, or out of memory", SNAP_MAX_FILE);
		goto out;
	}
	snprintf(path, sizeof(path), "%s/" SNAP_MEMORY_FILE, t->dir);
	if ((t->rc = guest_mem_save(&vm->mem, path, &t->res->memory_bytes, t->err)) < 0)
		goto out;
	snprintf(path, sizeof(path), "%s/" SNAP_STATE_FILE, t->dir);
	if ((t->rc = write_all_file(path, w.p, w.len, t->err)) < 0)
		goto out;
	t->res->state_bytes = w.len;
	t->rc = 0;
out:
	snapw_free(&w);
}

int snapshot_take(const struct snap_source *src, const char *dir, struct snap_result *res,
		  struct kiln_err *err)
{
	struct take_ctx t = { .src = src, .dir = dir, .res = res, .err = err };
	uint64_t t0 = now_ns();
	int r;

	memset(res, 0, sizeof(*res));
	if (strlen(dir) > 4000)
		return kiln_fail(err, ENAMETOOLONG, "%s: path too long", dir);
	if (src->ndevs > SNAP_MAX_DEVICES)
		return kiln_fail(err, EINVAL, "%d devices: a snapshot holds at most %d", src->ndevs, SNAP_MAX_DEVICES);
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return kiln_fail(err, errno, "%s: %s", dir, strerror(errno));
	/* The vCPUs are parked; let the devices finish what they started. */
	for (;;) {
		if ((r = ioloop_call_sync(src->loop, count_inflight, &t)) < 0)
			return kiln_fail(err, -r, "I/O thread: %s", strerror(-r));
		if (!t.inflight)
			break;
		if (ms_since(t0) > QUIESCE_TIMEOUT_MS)
			return kiln_fail(err, EBUSY, "devices still have %u requests in flight after %d ms (a stuck disk or tap?)",
					 t.inflight, QUIESCE_TIMEOUT_MS);
		usleep(200);
	}
	res->quiesce_ms = ms_since(t0);
	do {
		t.rc = 0;
		if ((r = ioloop_call_sync(src->loop, take_on_io_thread, &t)) < 0)
			return kiln_fail(err, -r, "I/O thread: %s", strerror(-r));
	} while (t.rc == -EAGAIN && ms_since(t0) < QUIESCE_TIMEOUT_MS);
	if (t.rc == -EAGAIN)
		return kiln_fail(err, EBUSY, "devices kept starting I/O while paused");
	res->total_ms = ms_since(t0);
	return t.rc;
}
