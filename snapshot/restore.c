/*
 * Restoring a snapshot (docs/snapshot.md): map the memory file, bring back
 * KVM and vCPU state, then recreate each device at its slot and apply its
 * state. The state file is hostile input ("Trust" in docs/snapshot.md):
 * every file it names is opened in the snapshot's directory without
 * following links, and host resources (taps, sockets, shared disks) come
 * from the restorer's options, never from the file.
 */
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "snapshot.h"
#include "timeline.h"

/* What a restore holds while it runs; the persist hooks' copy_out reaches it. */
struct restore_ctx {
	const struct snap_restore_opts *o;
	char state_path[4096], state_dir[4096];
	int dfd;
	struct dev_persist persist;
};

/* One of the snapshot's own files, name, in its directory: never through a link. */
static int open_own(struct restore_ctx *c, const char *name, struct kiln_err *err)
{
	int fd = openat(c->dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	struct stat st;

	if (fd < 0)
		return kiln_fail(err, errno, "--restore %s/%s: %s%s", c->state_dir, name, strerror(errno),
				 errno == ELOOP ? " (a symbolic link: a snapshot's files must be regular files in its directory)" : "");
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return kiln_fail(err, EINVAL, "--restore %s/%s: not a regular file", c->state_dir, name);
	}
	return fd;
}

/* Read a whole state file, open as fd (closed here), into memory: at most SNAP_MAX_FILE bytes. */
static uint8_t *read_state_file(int fd, const char *path, size_t *len, struct kiln_err *err)
{
	struct stat st;
	uint8_t *buf = NULL;
	size_t off = 0;

	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		kiln_fail(err, EINVAL, "--restore %s: not a regular file", path);
		goto out;
	}
	if ((uint64_t)st.st_size > SNAP_MAX_FILE) {
		kiln_fail(err, EFBIG, "--restore %s: %lld bytes, more than a state file can be", path, (long long)st.st_size);
		goto out;
	}
	if (!(buf = malloc((size_t)st.st_size + 1))) {
		kiln_fail(err, ENOMEM, "out of memory");
		goto out;
	}
	while (off < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + off, (size_t)st.st_size - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			kiln_fail(err, n < 0 ? errno : EIO, "--restore %s: %s", path,
				  n < 0 ? strerror(errno) : "shrank while being read");
			free(buf);
			buf = NULL;
			goto out;
		}
		off += (size_t)n;
	}
	*len = off;
out:
	close(fd);
	return buf;
}

/*
 * The persist hooks' copy_out: a clone's own copy of the snapshot's file
 * name, as copy in --clone-dir, or an unnamed file (O_TMPFILE) in the snapshot's
 * directory, so a reflink can share its extents, else in $TMPDIR. Its path
 * (for the device to open) goes to out.
 */
static int restore_copy_out(struct dev_persist *p, const char *name, const char *copy, char *out, size_t outlen,
			    struct kiln_err *err)
{
	struct restore_ctx *c = p->opaque;
	const char *tmpdir = getenv("TMPDIR");
	char src[8200];
	int in, fd, r;

	if ((in = open_own(c, name, err)) < 0)
		return in;
	snprintf(src, sizeof(src), "%s/%s", c->state_dir, name);
	if (c->o->clone_dir) {
		if (mkdir(c->o->clone_dir, 0700) < 0 && errno != EEXIST) {
			r = kiln_fail(err, errno, "--clone-dir %s: %s", c->o->clone_dir, strerror(errno));
			goto out;
		}
		snprintf(out, outlen, "%s/%s", c->o->clone_dir, copy);
		fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd < 0) {
			r = kiln_fail(err, errno, "--clone-dir: %s: %s", out, strerror(errno));
			goto out;
		}
		r = snap_copy_fd(in, src, fd, out, NULL, err);
		close(fd);
		goto out;
	}
	fd = openat(c->dfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0)
		fd = open(tmpdir && *tmpdir ? tmpdir : "/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0) {
		r = kiln_fail(err, errno, "cannot create a copy of %s for this clone: %s (or give --clone-dir DIR)",
			      src, strerror(errno));
		goto out;
	}
	if ((r = snap_copy_fd(in, src, fd, "a clone's copy", NULL, err)) < 0) {
		close(fd);
		goto out;
	}
	/* The device reopens it by this name; the file lives while this fd does (the process). */
	snprintf(out, outlen, "/proc/self/fd/%d", fd);
out:
	close(in);
	return r;
}

/* Find and open the state file: DIR/state (never a link), or the STATE file the user named. */
static int open_state(struct restore_ctx *c, struct kiln_err *err)
{
	const char *path = c->o->path, *slash;
	struct stat sb;
	int is_dir = stat(path, &sb) == 0 && S_ISDIR(sb.st_mode), fd;

	if (strlen(path) > 4000)
		return kiln_fail(err, ENAMETOOLONG, "--restore %s: path too long", path);
	if (is_dir) {
		snprintf(c->state_dir, sizeof(c->state_dir), "%s", path);
		snprintf(c->state_path, sizeof(c->state_path), "%s/" SNAP_STATE_FILE, path);
	} else {
		snprintf(c->state_path, sizeof(c->state_path), "%s", path);
		if ((slash = strrchr(path, '/')))
			snprintf(c->state_dir, sizeof(c->state_dir), "%.*s", slash == path ? 1 : (int)(slash - path), path);
		else
			snprintf(c->state_dir, sizeof(c->state_dir), ".");
	}
	c->dfd = open(c->state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (c->dfd < 0)
		return kiln_fail(err, errno, "--restore %s: %s", c->state_dir, strerror(errno));
	/* The user named a state file: theirs to follow. The directory's own "state": no link. */
	if (is_dir)
		return open_own(c, SNAP_STATE_FILE, err);
	if ((fd = open(c->state_path, O_RDONLY | O_CLOEXEC)) < 0)
		return kiln_fail(err, errno, "--restore %s: %s", c->state_path, strerror(errno));
	return fd;
}

/* What the options say of the machine must be what the snapshot holds. */
static int check_meta(struct restore_ctx *c, const struct snap_meta *m, struct kiln_err *err)
{
	const struct snap_restore_opts *o = c->o;
	uint32_t crc;
	uint64_t size;

	if (o->mem_size && o->mem_size != m->mem_size)
		return kiln_fail(err, EINVAL, "--restore %s: the snapshot's guest has %llu MiB of memory, not the %llu MiB asked for (drop --mem)",
				 c->state_path, (unsigned long long)(m->mem_size / MIB), (unsigned long long)(o->mem_size / MIB));
	if (o->vcpus && (uint32_t)o->vcpus != m->vcpus)
		return kiln_fail(err, EINVAL, "--restore %s: the snapshot's guest has %u vCPUs, not %d (drop --vcpus)",
				 c->state_path, m->vcpus, o->vcpus);
	if (!o->kernel)
		return 0;
	if (snap_file_crc(o->kernel, &crc, &size) < 0)
		return kiln_fail(err, EIO, "--kernel %s: cannot read it", o->kernel);
	if (crc != m->kernel_crc || size != m->kernel_size)
		return kiln_fail(err, EINVAL, "--restore %s: the snapshot's guest runs another kernel (%s, %llu bytes) than --kernel %s: take the template again with this kernel",
				 c->state_path, m->kernel, (unsigned long long)m->kernel_size, o->kernel);
	return 0;
}

/*
 * The pages --prefetch asks for into src->ws: every data extent of the
 * memory file mfd (all), or the snapshot's recorded working set (ws; auto
 * when it has one). 1 if there is something to bring in, 0 if not, or -errno.
 */
static int load_working_set(struct restore_ctx *c, struct snap_source *src, const struct snap_meta *m, int mfd,
			    struct kiln_err *err)
{
	char msg[256], path[4200];
	uint8_t *buf;
	size_t len;
	int fd, r;

	switch (c->o->prefetch) {
	case SNAP_PREFETCH_NONE:
		return 0;
	case SNAP_PREFETCH_ALL:
		if ((r = snap_ws_from_extents(mfd, m->mem_size, &src->ws, err)) < 0)
			return kiln_err_prefix(err, r, "--prefetch all");
		return 1;
	case SNAP_PREFETCH_AUTO:
	case SNAP_PREFETCH_WS:
		break;
	}
	fd = openat(c->dfd, SNAP_WS_FILE, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT && c->o->prefetch == SNAP_PREFETCH_AUTO)
		return 0;
	snprintf(path, sizeof(path), "%s/" SNAP_WS_FILE, c->state_dir);
	if (fd < 0)
		return kiln_fail(err, errno, "--prefetch ws: %s: %s%s", path, strerror(errno),
				 errno == ENOENT ? " (record one: restore with --control and send it \"workingset\" after the first exec)" : "");
	if (!(buf = read_state_file(fd, path, &len, err)))
		return -EINVAL;
	r = snap_ws_parse(buf, len, m->id, m->mem_size, &src->ws, msg, sizeof(msg));
	free(buf);
	if (r < 0)
		return kiln_fail(err, EINVAL, "--restore %s: %s (or restore with --prefetch none)", path, msg);
	return 1;
}

static void *prefetch_thread(void *arg)
{
	struct snap_source *src = arg;

	pthread_setname_np(pthread_self(), "kiln-prefetch");
	src->prefetch_err = snap_ws_prefetch(src->vm, &src->ws, &src->pre_faulted);
	return NULL;
}

int snap_prefetch_wait(struct snap_source *src)
{
	if (src->prefetching) {
		pthread_join(src->prefetch_thread, NULL);
		src->prefetching = 0;
		tl_mark(TL_PREFETCHED);
		memcpy(src->prefetched, src->ws.pages, sizeof(src->prefetched));
	}
	snap_ws_free(&src->ws);
	return src->prefetch_err;
}

/* The memory file, whole and this state's (its trailer holds the state's id), mapped as guest RAM. */
static int map_memory(struct restore_ctx *c, struct snap_source *src, const struct snap_meta *m,
		      struct guest_mem *mem, struct kiln_err *err)
{
	char mem_path[4200];
	int mfd, r;

	if (c->o->memory) {
		snprintf(mem_path, sizeof(mem_path), "%s", c->o->memory);
		if ((mfd = open(c->o->memory, O_RDONLY | O_CLOEXEC)) < 0)
			return kiln_fail(err, errno, "--memory %s: %s", c->o->memory, strerror(errno));
	} else {
		snprintf(mem_path, sizeof(mem_path), "%s/" SNAP_MEMORY_FILE, c->state_dir);
		if ((mfd = open_own(c, SNAP_MEMORY_FILE, err)) < 0)
			return mfd;
	}
	if ((r = snap_mem_check(mfd, mem_path, m->mem_size, m->id, err)) < 0 ||
	    (r = guest_mem_map_fd(mem, mfd, mem_path, m->mem_size, err)) < 0)
		kiln_err_prefix(err, r, "--restore");
	else
		r = load_working_set(c, src, m, mfd, err);
	close(mfd);
	return r;
}

/* KVM's VM and vCPU state, on a CPU like the one the snapshot was taken on. */
static int restore_kvm(struct restore_ctx *c, const struct snap_state *st, struct vm *vm,
		       struct guest_mem *mem, struct kiln_err *err)
{
	char vendor[13];
	int i, r;

	/* A standby VMM made the VM (and maybe its vCPUs) before it knew the snapshot. */
	if ((!vm->made && (r = vm_create_bare(vm, vm->kvm_fd, err)) < 0) || (r = vm_set_memory(vm, mem, err)) < 0)
		return r;
	if (vm->nvcpus_made && vm->nvcpus_made != (int)st->meta.vcpus)
		return kiln_fail(err, EINVAL, "--restore %s: the snapshot's guest has %u vCPUs, not the %d this standby VMM made (--vcpus)",
				 c->state_path, st->meta.vcpus, vm->nvcpus_made);
	vm->nvcpus = (int)st->meta.vcpus;
	snap_cpuid_vendor(vm->cpuid, vendor);
	if (strcmp(vendor, st->meta.vendor))
		return kiln_fail(err, EINVAL, "--restore %s: taken on a %s CPU, this host has %s: take the template again on this host",
				 c->state_path, st->meta.vendor, vendor);
	for (i = 0; i < vm->nvcpus; i++)
		if ((r = snap_check_cpuid(vm->cpuid, &st->vcpu[i], vm->nvcpus, err)) < 0)
			goto bad;
	if ((r = vm_state_apply(vm, &st->vm, err)) < 0)
		goto bad;
	for (i = 0; i < vm->nvcpus; i++) {
		if (i >= vm->nvcpus_made && (r = vcpu_create_bare(vm, i, err)) < 0)
			return r;
		if ((r = vcpu_state_apply(&vm->vcpus[i], &st->vcpu[i], err)) < 0)
			goto bad;
	}
	return 0;
bad:
	return kiln_err_prefix(err, r, "--restore %s", c->state_path);
}

/* Each device at its slot: from its option, or from the snapshot's own copy, then its state. */
static int restore_devices(struct restore_ctx *c, const struct snap_state *st, const int *plan,
			   struct snap_source *src, struct kiln_err *err)
{
	uint64_t base;
	uint32_t irq;
	int i, r;

	c->persist = (struct dev_persist){ .opaque = c, .dir = c->state_path, .copy_out = restore_copy_out };
	for (i = 0; i < (int)st->meta.ndevices; i++) {
		const struct snap_device *sd = &st->dev[i];
		const char *spec;
		char path[4200];

		if (virtio_slot_place(i, &base, &irq) < 0 || sd->base != base || sd->irq != irq)
			return kiln_fail(err, EINVAL, "--restore %s: device %d at %#llx IRQ %u, not where kiln-vmm puts it",
					 c->state_path, i, (unsigned long long)sd->base, sd->irq);
		if (plan[i] >= 0) {
			spec = c->o->specs[plan[i]];
		} else {
			/* The snapshot's own backing (spec_check allowed only a file of its own). */
			if (!sd->own || !sd->type->spec_clone)
				return kiln_fail(err, EINVAL, "--restore %s: device %d: no option for it", c->state_path, i);
			c->persist.slot = i;
			if ((r = sd->type->spec_clone(sd->spec, &c->persist, path, sizeof(path), err)) < 0)
				return r;
			spec = path;
		}
		if ((r = snap_source_add(src, i, sd->type, spec, err)) < 0)
			return r;
		if ((r = virtio_mmio_restore(&src->devs[i], (struct snap_rd *)&sd->state, err)) < 0)
			return kiln_err_prefix(err, r, "--restore %s", c->state_path);
	}
	return 0;
}

int snap_restore(const struct snap_restore_opts *o, struct snap_source *src, struct kiln_err *err)
{
	struct restore_ctx *c = calloc(1, sizeof(*c));
	int plan[SNAP_MAX_DEVICES], sfd, r;
	struct snap_state st;
	struct guest_mem mem;
	uint8_t *file = NULL;
	char msg[512];
	size_t len;

	memset(&st, 0, sizeof(st));
	if (!c)
		return kiln_fail(err, ENOMEM, "out of memory");
	c->o = o;
	c->dfd = -1;
	if ((sfd = r = open_state(c, err)) < 0)
		goto out;
	if (!(file = read_state_file(sfd, c->state_path, &len, err))) {
		r = -EINVAL;
		goto out;
	}
	if (snap_parse(file, len, &st, msg, sizeof(msg)) < 0) {
		r = kiln_fail(err, EINVAL, "--restore %s: %s", c->state_path, msg);
		goto out;
	}
	if ((r = check_meta(c, &st.meta, err)) < 0)
		goto out;
	src->kernel_crc = st.meta.kernel_crc;
	src->kernel_size = st.meta.kernel_size;
	snprintf(src->kernel_buf, sizeof(src->kernel_buf), "%s", st.meta.kernel);
	src->kernel_path = src->kernel_buf;
	tl_mark(TL_PARSED);

	if ((r = map_memory(c, src, &st.meta, &mem, err)) < 0)
		goto out;
	tl_mark(TL_MAPPED);
	src->restored = 1;
	snprintf(src->restored_dir, sizeof(src->restored_dir), "%s", c->state_dir);
	memcpy(src->restored_id, st.meta.id, SNAP_ID_LEN);
	/* Which option replaces which device, and every host resource named by one. */
	if ((r = snap_plan_devices(&st, o->kinds, o->specs, o->ndevices, plan, err)) < 0) {
		kiln_err_prefix(err, r, "--restore %s", c->state_path);
		goto out;
	}
	if ((r = restore_kvm(c, &st, src->vm, &mem, err)) < 0)
		goto out;
	/* The working set comes in while the devices are rebuilt (vm->mem is set now). */
	if (src->ws.n && pthread_create(&src->prefetch_thread, NULL, prefetch_thread, src) == 0)
		src->prefetching = 1;
	tl_mark(TL_KVM);
	if ((r = restore_devices(c, &st, plan, src, err)) < 0)
		goto out;
	src->ndevs = (int)st.meta.ndevices;
	if ((r = serial_restore(src->uart, &st.serial, err)) < 0)
		kiln_err_prefix(err, r, "--restore %s", c->state_path);
	else
		tl_mark(TL_DEVICES);
out:
	snap_state_free(&st);
	free(file);
	if (c->dfd >= 0)
		close(c->dfd);
	free(c);
	return r;
}
