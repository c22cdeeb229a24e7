/*
 * Taking a snapshot of a paused VM, and parsing one back (snapshot.h).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "io.h"
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
	snapr_copy(r, m->id, SNAP_ID_LEN, "snapshot id");
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

int snap_is_own_file(const char *name)
{
	int i;

	if (!strcmp(name, SNAP_STATE_FILE) || !strcmp(name, SNAP_MEMORY_FILE) || !strcmp(name, "state.tmp"))
		return 1;
	for (i = 0; virtio_kinds[i]; i++)
		if (virtio_kinds[i]->own_file && virtio_kinds[i]->own_file(name))
			return 1;
	return 0;
}

static int device_parse(struct snap_rd *r, struct snap_device *d)
{
	struct kiln_err e;

	snapr_str(r, d->kind, sizeof(d->kind), "device kind");
	snapr_str(r, d->spec, sizeof(d->spec), "device spec");
	d->base = snapr_u64(r, "device address");
	d->irq = snapr_u32(r, "device IRQ");
	if (!snapr_ok(r))
		return -EINVAL;
	if (!(d->type = virtio_kind_find(d->kind)))
		return snapr_fail(r, "unknown device kind \"%s\"", d->kind);
	d->own = 0;
	if (d->type->spec_check && d->type->spec_check(d->spec, &d->own, &e) < 0)
		return snapr_fail(r, "%s", e.msg);
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

int snap_plan_devices(const struct snap_state *s, const char *const *kinds, const char *const *specs,
		      int nopts, int *opt, struct kiln_err *err)
{
	int used[SNAP_MAX_DEVICES * 4] = { 0 }, i, j;
	uint32_t d;

	if (nopts < 0 || nopts > (int)(sizeof(used) / sizeof(used[0])))
		return kiln_fail(err, EINVAL, "%d device options: at most %zu", nopts, sizeof(used) / sizeof(used[0]));
	for (d = 0; d < s->meta.ndevices; d++) {
		opt[d] = -1;
		for (j = 0; j < nopts; j++)
			if (!used[j] && !strcmp(kinds[j], s->dev[d].kind)) {
				used[j] = 1;
				opt[d] = j;
				break;
			}
	}
	/* An option left over first: the user asked for something that cannot be. */
	for (j = 0; j < nopts; j++)
		if (!used[j])
			return kiln_fail(err, EINVAL, "--%s %s: the snapshot has no further %s device to replace (a restore cannot add devices)",
					 kinds[j], specs[j], kinds[j]);
	for (i = 0; i < (int)s->meta.ndevices; i++) {
		const struct snap_device *sd = &s->dev[i];
		char needs[600];

		if (opt[i] >= 0 || sd->own)
			continue;
		if (sd->type->spec_needs)
			sd->type->spec_needs(sd->spec, needs, sizeof(needs));
		else
			snprintf(needs, sizeof(needs), "a %s device: pass --%s for it", sd->kind, sd->kind);
		return kiln_fail(err, EINVAL, "device %d is %s", i, needs);
	}
	return 0;
}

/* The trailer's fields: magic, id, RAM size, CRC-32C of those; zeros to the page's end. */
#define MEM_TRAILER_FIELDS	(8 + SNAP_ID_LEN + 8)

void snap_mem_trailer(uint8_t out[SNAP_MEM_TRAILER], const uint8_t id[SNAP_ID_LEN], uint64_t size)
{
	uint32_t crc;
	int i;

	memset(out, 0, SNAP_MEM_TRAILER);
	memcpy(out, SNAP_MEM_MAGIC, 8);
	memcpy(out + 8, id, SNAP_ID_LEN);
	for (i = 0; i < 8; i++)
		out[8 + SNAP_ID_LEN + i] = (uint8_t)(size >> (8 * i));
	crc = snap_crc32c(0, out, MEM_TRAILER_FIELDS);
	for (i = 0; i < 4; i++)
		out[MEM_TRAILER_FIELDS + i] = (uint8_t)(crc >> (8 * i));
}

int snap_mem_check(int fd, const char *name, uint64_t size, const uint8_t id[SNAP_ID_LEN], struct kiln_err *err)
{
	uint8_t got[SNAP_MEM_TRAILER], want[SNAP_MEM_TRAILER];
	struct stat st;
	ssize_t n;

	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		return kiln_fail(err, EINVAL, "%s: not a regular file (the snapshot's memory file)", name);
	if ((uint64_t)st.st_size != size + SNAP_MEM_TRAILER)
		return kiln_fail(err, EINVAL, "%s: %llu bytes, but the snapshot's guest has %llu MiB of memory and a 4 KiB trailer (truncated, or the memory file of another snapshot)",
				 name, (unsigned long long)st.st_size, (unsigned long long)(size / MIB));
	do
		n = pread(fd, got, sizeof(got), (off_t)size);
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)sizeof(got))
		return kiln_fail(err, n < 0 ? errno : EIO, "%s: reading its trailer: %s", name, n < 0 ? strerror(errno) : "short read");
	snap_mem_trailer(want, id, size);
	if (memcmp(got, SNAP_MEM_MAGIC, 8))
		return kiln_fail(err, EINVAL, "%s: no snapshot trailer: not a whole memory file (a snapshot cut short, or the memory file of another snapshot)", name);
	if (memcmp(got, want, sizeof(got)))
		return kiln_fail(err, EINVAL, "%s: the memory file of another snapshot (its id is not the state's): restore the state it was written with, or take the snapshot again", name);
	return 0;
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

int snap_source_add(struct snap_source *src, int slot, const struct virtio_dev_ops *kind, const char *spec,
		    struct kiln_err *err)
{
	int r;

	if (slot < 0 || slot >= SNAP_MAX_DEVICES)
		return kiln_fail(err, EINVAL, "device %d: at most %d devices", slot, SNAP_MAX_DEVICES);
	if ((r = virtio_dev_create_at(&src->devs[slot], slot, kind, spec, src->vm, &src->vm->mem, src->loop, err)) < 0)
		return r;
	snprintf(src->spec_buf[slot], sizeof(src->spec_buf[slot]), "%s", spec);
	src->dev_spec[slot] = src->spec_buf[slot];
	return 0;
}

/* ---- taking a snapshot ---------------------------------------------------------- */

int snap_copy_fd(int in, const char *src, int out, const char *dst, uint64_t *copied, struct kiln_err *err)
{
	struct stat st;
	int e = 0;
	off_t off = 0;
	uint64_t total = 0;

	if (fstat(in, &st) < 0)
		return kiln_fail(err, errno, "%s: %s", src, strerror(errno));
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
	if (e)
		return kiln_fail(err, e, "copying %s to %s: %s", src, dst, strerror(e));
	if (copied)
		*copied = total;
	return 0;
}

int snap_copy_file(const char *src, const char *dst, uint64_t *copied, struct kiln_err *err)
{
	int in, out, r;

	in = open(src, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return kiln_fail(err, errno, "%s: %s", src, strerror(errno));
	out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (out < 0) {
		r = kiln_fail(err, errno, "%s: %s%s", dst, strerror(errno),
			      errno == ELOOP ? " (a symbolic link: kiln never writes a copy through one)" : "");
		close(in);
		return r;
	}
	r = snap_copy_fd(in, src, out, dst, copied, err);
	close(in);
	close(out);
	if (r < 0)
		unlink(dst);
	return r;
}

static double ms_since(uint64_t t0)
{
	return (double)(now_ns() - t0) / 1e6;
}

struct take_ctx {
	const struct snap_source *src;
	const char *dir;		/* the target, for messages */
	struct snap_dir sd;		/* the fresh directory the files go into */
	uint8_t id[SNAP_ID_LEN];
	struct snap_result *res;
	struct kiln_err *err;
	unsigned inflight;
	struct dev_persist persist;	/* what the devices' spec_persist hooks get */
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

/* A new file in the fresh directory: never an existing one, never through a link. */
static int create_new(const struct take_ctx *t, const char *name)
{
	return snap_dir_create(&t->sd, name, t->err);
}

/* The persist hooks' copy_in: a host file copied into a new file of the snapshot. */
static int take_copy_in(struct dev_persist *p, const char *path, const char *name, struct kiln_err *err)
{
	struct take_ctx *t = p->opaque;
	char dst[4200];
	uint64_t n = 0;
	int in, out, r;

	snprintf(dst, sizeof(dst), "%s/%s", t->dir, name);
	if ((in = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return kiln_fail(err, errno, "%s: %s", path, strerror(errno));
	if ((out = create_new(t, name)) < 0) {
		close(in);
		return out;
	}
	r = snap_copy_fd(in, path, out, dst, &n, err);
	close(in);
	close(out);
	p->bytes += n;
	return r;
}

/* RAM, then the trailer that binds it to this snapshot's state, then fsync. */
static int write_memory(struct take_ctx *t, const struct guest_mem *mem)
{
	static uint8_t trailer[SNAP_MEM_TRAILER];
	char name[4200];
	int fd, r, e;

	snprintf(name, sizeof(name), "%s/" SNAP_MEMORY_FILE, t->dir);
	if ((fd = create_new(t, SNAP_MEMORY_FILE)) < 0)
		return fd;
	if ((r = guest_mem_save(mem, fd, name, &t->res->memory_bytes, t->err)) < 0)
		goto out;
	snap_mem_trailer(trailer, t->id, mem->size);
	if (pwrite(fd, trailer, sizeof(trailer), (off_t)mem->size) != (ssize_t)sizeof(trailer) || fsync(fd) < 0) {
		e = errno ? errno : EIO;
		r = kiln_fail(t->err, e, "%s: %s", name, strerror(e));
	}
out:
	close(fd);
	return r;
}

static int write_state(struct take_ctx *t, const void *p, size_t len)
{
	int fd, e;

	if ((fd = create_new(t, SNAP_STATE_FILE)) < 0)
		return fd;
	if ((e = write_full(fd, p, len)) < 0 || (fsync(fd) < 0 && (e = -errno) < 0)) {
		close(fd);
		return kiln_fail(t->err, -e, "%s/" SNAP_STATE_FILE ": %s", t->dir, strerror(-e));
	}
	close(fd);
	return 0;
}

/* On the I/O thread, so no completion touches guest memory while it is copied. */
static void take_on_io_thread(void *arg)
{
	struct take_ctx *t = arg;
	const struct snap_source *src = t->src;
	struct vm *vm = src->vm;
	char dev_spec[SNAP_MAX_DEVICES][512];
	struct snap_buf w;
	size_t mark;
	int i;

	count_inflight(t);
	if (t->inflight) {
		t->rc = -EAGAIN;
		return;
	}
	snapw_init(&w);
	snapw_begin_file(&w);

	/* Each kind's persist hook first: the state records what it wrote. */
	t->persist = (struct dev_persist){ .opaque = t, .dir = t->dir, .copy_in = take_copy_in };
	for (i = 0; i < src->ndevs; i++) {
		const struct virtio_dev_ops *type = src->devs[i].ops;

		if (snprintf(dev_spec[i], sizeof(dev_spec[i]), "%s", src->dev_spec[i]) >= (int)sizeof(dev_spec[i])) {
			t->rc = kiln_fail(t->err, ENAMETOOLONG, "--%s %s: too long for a snapshot (at most %zu bytes)",
					  type->kind, src->dev_spec[i], sizeof(dev_spec[i]) - 1);
			goto out;
		}
		if (type->spec_persist &&
		    (t->rc = type->spec_persist(src->dev_spec[i], &t->persist, dev_spec[i], sizeof(dev_spec[i]), t->err)) < 0)
			goto out;
	}
	t->res->disk_bytes += t->persist.bytes;

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
	snapw_bytes(&w, t->id, SNAP_ID_LEN);
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
		snapw_blob(&w, d->ops->kind, (uint32_t)strlen(d->ops->kind));
		snapw_blob(&w, dev_spec[i], (uint32_t)strlen(dev_spec[i]));
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
	if ((t->rc = write_memory(t, &vm->mem)) < 0)
		goto out;
	/* The state last: a directory with one holds a whole snapshot. */
	if ((t->rc = write_state(t, w.p, w.len)) < 0)
		goto out;
	t->res->state_bytes = w.len;
	t->rc = 0;
out:
	snapw_free(&w);
}

/* ---- the snapshot directory, written whole ---------------------------------------- */

/* Remove directory name in pfd if it holds only a snapshot's regular files; else leave it. */
static void remove_snapshot_dir(int pfd, const char *name)
{
	int fd = openat(pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	struct dirent *e;
	DIR *d;

	if (fd < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return;
	}
	/* The state first: what is left of a half-removed snapshot is never whole. */
	unlinkat(fd, SNAP_STATE_FILE, 0);
	while ((e = readdir(d)))
		if (snap_is_own_file(e->d_name))
			unlinkat(fd, e->d_name, 0);
	closedir(d);
	unlinkat(pfd, name, AT_REMOVEDIR);
}

enum { TARGET_NEW, TARGET_EMPTY, TARGET_SNAPSHOT };

/* What is at dir now: nothing, an empty directory, or a snapshot to replace; anything else is refused. */
static int target_check(int pfd, const char *base, const char *dir, int *kind, struct kiln_err *err)
{
	struct stat st;
	struct dirent *e;
	int fd, n = 0, r = 0;
	DIR *d;

	if (fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		if (errno != ENOENT)
			return kiln_fail(err, errno, "%s: %s", dir, strerror(errno));
		*kind = TARGET_NEW;
		return 0;
	}
	if (S_ISLNK(st.st_mode))
		return kiln_fail(err, ELOOP, "%s is a symbolic link: name the directory itself (a snapshot is never written through a link)", dir);
	if (!S_ISDIR(st.st_mode))
		return kiln_fail(err, ENOTDIR, "%s exists and is not a directory: name a new directory for the snapshot", dir);
	fd = openat(pfd, base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 || !(d = fdopendir(fd))) {
		r = kiln_fail(err, errno, "%s: %s", dir, strerror(errno));
		if (fd >= 0)
			close(fd);
		return r;
	}
	while (!r && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (!snap_is_own_file(e->d_name))
			r = kiln_fail(err, EEXIST, "%s holds %.100s, which is not part of a snapshot: name a new or empty directory, or an older snapshot to replace",
				      dir, e->d_name);
		else if (fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
			r = kiln_fail(err, EEXIST, "%s/%s is not a regular file (a symbolic link?): a snapshot is never written through one; remove it, or name another directory",
				      dir, e->d_name);
		n++;
	}
	closedir(d);
	*kind = n ? TARGET_SNAPSHOT : TARGET_EMPTY;
	return r;
}

/* Move the fresh directory tmp to base, replacing what target_check found there. */
static int target_commit(int pfd, const char *tmp, const char *base, int kind,
			 const char *dir, struct kiln_err *err)
{
	char aside[320];
	int r;

	switch (kind) {
	case TARGET_NEW:
		r = renameat2(pfd, tmp, pfd, base, RENAME_NOREPLACE);
		if (r < 0 && errno == EINVAL)	/* a filesystem without RENAME_NOREPLACE */
			r = renameat(pfd, tmp, pfd, base);
		break;
	case TARGET_EMPTY:
		r = renameat(pfd, tmp, pfd, base);	/* replaces an empty directory only */
		break;
	case TARGET_SNAPSHOT:
		/* One step: dir holds the old snapshot or the new one, never a mix. */
		r = renameat2(pfd, tmp, pfd, base, RENAME_EXCHANGE);
		if (r == 0) {
			remove_snapshot_dir(pfd, tmp);
			break;
		}
		if (errno != EINVAL)
			break;
		/* No RENAME_EXCHANGE here: the old one aside, the new one in, the old one removed. */
		snprintf(aside, sizeof(aside), "%s.old", tmp);
		if ((r = renameat(pfd, base, pfd, aside)) < 0)
			break;
		if ((r = renameat(pfd, tmp, pfd, base)) < 0) {
			int e = errno;

			renameat(pfd, aside, pfd, base);
			errno = e;
			break;
		}
		remove_snapshot_dir(pfd, aside);
		break;
	default:
		r = -1;
		errno = EINVAL;
	}
	if (r < 0)
		return kiln_fail(err, errno, "%s: %s%s", dir, strerror(errno),
				 errno == EEXIST || errno == ENOTEMPTY ? " (something else was written there meanwhile)" : "");
	fsync(pfd);
	return 0;
}

int snap_dir_begin(struct snap_dir *d, const char *dir, struct kiln_err *err)
{
	char parent[4096];
	size_t len = strlen(dir);
	const char *slash;
	int r, i;

	memset(d, 0, sizeof(*d));
	d->pfd = d->dfd = -1;
	d->dir = dir;
	if (len > 4000)
		return kiln_fail(err, ENAMETOOLONG, "%s: path too long", dir);
	/* dir's parent and its last component, trailing slashes dropped. */
	while (len > 1 && dir[len - 1] == '/')
		len--;
	for (slash = dir + len; slash > dir && slash[-1] != '/'; slash--)
		;
	if ((size_t)(dir + len - slash) >= sizeof(d->base) - 20)
		return kiln_fail(err, ENAMETOOLONG, "%s: name too long", dir);
	snprintf(d->base, sizeof(d->base), "%.*s", (int)(dir + len - slash), slash);
	if (slash == dir)
		snprintf(parent, sizeof(parent), ".");
	else
		snprintf(parent, sizeof(parent), "%.*s", slash - dir == 1 ? 1 : (int)(slash - dir - 1), dir);
	if (!name_is_local(d->base))
		return kiln_fail(err, EINVAL, "%s: name the snapshot's directory by a path that ends in its name", dir);
	d->pfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (d->pfd < 0)
		return kiln_fail(err, errno, "%s: %s", parent, strerror(errno));
	if ((r = target_check(d->pfd, d->base, dir, &d->kind, err)) < 0)
		goto fail;
	/* A fresh, private directory beside the target: nothing in it but what we write. */
	for (i = 0;; i++) {
		uint32_t rnd;

		if (getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd))
			rnd = (uint32_t)now_ns() ^ (uint32_t)getpid();
		snprintf(d->tmp, sizeof(d->tmp), ".%s.partial-%06x", d->base, rnd & 0xffffff);
		if (mkdirat(d->pfd, d->tmp, 0700) == 0)
			break;
		if (errno != EEXIST || i == 100) {
			r = kiln_fail(err, errno, "%s/%s: %s", parent, d->tmp, strerror(errno));
			d->tmp[0] = '\0';
			goto fail;
		}
	}
	d->dfd = openat(d->pfd, d->tmp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (d->dfd < 0) {
		r = kiln_fail(err, errno, "%s/%s: %s", parent, d->tmp, strerror(errno));
		goto fail;
	}
	return 0;
fail:
	snap_dir_abort(d);
	return r;
}

int snap_dir_create(const struct snap_dir *d, const char *name, struct kiln_err *err)
{
	int fd = openat(d->dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);

	if (fd < 0)
		return kiln_fail(err, errno, "%s/%s: %s", d->dir, name, strerror(errno));
	return fd;
}

int snap_dir_commit(struct snap_dir *d, struct kiln_err *err)
{
	int r;

	if (fsync(d->dfd) < 0) {
		r = kiln_fail(err, errno, "%s: %s", d->dir, strerror(errno));
		snap_dir_abort(d);
		return r;
	}
	if ((r = target_commit(d->pfd, d->tmp, d->base, d->kind, d->dir, err)) < 0) {
		snap_dir_abort(d);
		return r;
	}
	d->tmp[0] = '\0';
	snap_dir_abort(d);	/* only closes now */
	return 0;
}

void snap_dir_abort(struct snap_dir *d)
{
	if (d->dfd >= 0)
		close(d->dfd);
	if (d->pfd >= 0 && d->tmp[0])
		remove_snapshot_dir(d->pfd, d->tmp);
	if (d->pfd >= 0)
		close(d->pfd);
	d->dfd = d->pfd = -1;
	d->tmp[0] = '\0';
}

int snapshot_take(const struct snap_source *src, const char *dir, struct snap_result *res,
		  struct kiln_err *err)
{
	struct take_ctx t = { .src = src, .dir = dir, .res = res, .err = err };
	uint64_t t0 = now_ns();
	int r;

	memset(res, 0, sizeof(*res));
	if (src->ndevs > SNAP_MAX_DEVICES)
		return kiln_fail(err, EINVAL, "%d devices: a snapshot holds at most %d", src->ndevs, SNAP_MAX_DEVICES);
	if ((r = snap_dir_begin(&t.sd, dir, err)) < 0)
		return r;
	if (getrandom(t.id, sizeof(t.id), 0) != sizeof(t.id)) {
		r = kiln_fail(err, errno, "getrandom: %s", strerror(errno));
		goto fail;
	}
	/* The vCPUs are parked; let the devices finish what they started. */
	for (;;) {
		if ((r = ioloop_call_sync(src->loop, count_inflight, &t)) < 0) {
			r = kiln_fail(err, -r, "I/O thread: %s", strerror(-r));
			goto fail;
		}
		if (!t.inflight)
			break;
		if (ms_since(t0) > QUIESCE_TIMEOUT_MS) {
			r = kiln_fail(err, EBUSY, "devices still have %u requests in flight after %d ms (a stuck disk or tap?)",
				      t.inflight, QUIESCE_TIMEOUT_MS);
			goto fail;
		}
		usleep(200);
	}
	res->quiesce_ms = ms_since(t0);
	do {
		t.rc = 0;
		if ((r = ioloop_call_sync(src->loop, take_on_io_thread, &t)) < 0) {
			r = kiln_fail(err, -r, "I/O thread: %s", strerror(-r));
			goto fail;
		}
	} while (t.rc == -EAGAIN && ms_since(t0) < QUIESCE_TIMEOUT_MS);
	if (t.rc == -EAGAIN)
		r = kiln_fail(err, EBUSY, "devices kept starting I/O while paused");
	else
		r = t.rc;
	if (r < 0)
		goto fail;
	if ((r = snap_dir_commit(&t.sd, err)) < 0)
		return r;
	res->total_ms = ms_since(t0);
	return 0;
fail:
	snap_dir_abort(&t.sd);
	return r;
}
