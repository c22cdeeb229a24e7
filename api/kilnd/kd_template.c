/*
 * Templates: one snapshot per (image, memory_mb, vcpus) of a guest whose
 * agent is up, which every create of that shape restores. The first create
 * of a shape boots one (kiln-vmm --template) and later ones find it in the
 * registry. A template records the SHA-256 of the kernel and initramfs it
 * booted and its directory is named by a hash of those, the image's
 * identity and the writable layer's size; when any changes (kilnd hashes
 * them at start) the old one is no longer current and the next create
 * builds a new one beside it and removes the old.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent_client.h"
#include "kilnd.h"

int kd_template_hashes(struct kilnd *kd, struct kiln_err *err)
{
	int r = kd_sha256_file(kd->conf.kernel, kd->kernel_sha, err);

	if (!r)
		r = kd_sha256_file(kd->conf.initrd, kd->initrd_sha, err);
	return r ? kiln_err_prefix(err, r, "kilnd --kernel/--initrd (run make)") : 0;
}

static int rmtree_at(int dfd, const char *name)
{
	int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	DIR *d;
	struct dirent *e;

	if (fd < 0)
		return unlinkat(dfd, name, 0) && errno != ENOENT ? -errno : 0;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (e->d_type == DT_DIR)
			rmtree_at(dirfd(d), e->d_name);
		else
			unlinkat(dirfd(d), e->d_name, 0);
	}
	closedir(d);
	return unlinkat(dfd, name, AT_REMOVEDIR) && errno != ENOENT ? -errno : 0;
}

int kd_rmtree(const char *path)
{
	return rmtree_at(AT_FDCWD, path);
}

/*
 * A template's directory is named by its shape and a hash of everything its
 * snapshot depends on: kernel, initramfs, image name and, for a disk image,
 * the image and the size of the writable layer its clones copy. The name
 * is short on purpose: sockets live in it (at most 107 bytes of path).
 */
static void template_dir(const struct kilnd *kd, const struct kd_image *img, unsigned mem, unsigned vcpus,
			 char *buf, size_t n)
{
	char in[REG_SHA256_HEX * 3 + REG_IMAGE_MAX + 32], hex[REG_SHA256_HEX];
	int len = snprintf(in, sizeof(in), "%s %s %s %s %llu slots=%d net=%d", kd->kernel_sha, kd->initrd_sha,
			   img->name, img->id, img->path[0] ? (unsigned long long)kd->conf.layer_bytes : 0ull,
			   img->path[0] ? KD_SLOTS : 0, kd->net_ok);

	if (kd_sha256_hex(in, (size_t)len, hex))
		memset(hex, '0', 12);
	kd_pathf(buf, n, "%s/templates/%.8s-%um-%uc-%.12s", kd->conf.state_dir, img->name, mem, vcpus, hex);
}

/*
 * A line from the end of a file, for a message ("" if none): the last line
 * holding mark, or with mark NULL the last line. Control bytes become '?'.
 */
static void tail_line(const char *path, const char *mark, char *out, size_t n)
{
	char buf[4096], *p, *line = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t r;

	out[0] = '\0';
	if (fd < 0)
		return;
	off_t end = lseek(fd, 0, SEEK_END);
	r = pread(fd, buf, sizeof(buf) - 1, end > (off_t)sizeof(buf) - 1 ? end - (off_t)sizeof(buf) + 1 : 0);
	close(fd);
	if (r <= 0)
		return;
	buf[r] = '\0';
	while (r > 0 && (buf[r - 1] == '\n' || buf[r - 1] == '\r'))
		buf[--r] = '\0';
	if (mark) {
		for (p = buf; (p = strstr(p, mark)); p++)
			line = p;
		if (!line)
			return;
	} else {
		line = strrchr(buf, '\n');
		line = line ? line + 1 : buf;
	}
	line[strcspn(line, "\r\n")] = '\0';
	snprintf(out, n, "%.200s", line);
	for (p = out; *p; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f)
			*p = '?';
}

/*
 * Boot the guest and snapshot it into dir/snap; 0 or -errno with err. A
 * disk image boots with a fresh writable layer (dir/layer.img), which the
 * snapshot copies in: every clone starts from its own copy of it.
 */
static int template_boot(struct kilnd *kd, const struct kd_image *img, const char *dir, unsigned mem, unsigned vcpus,
			 struct kiln_err *err)
{
	char snap[KD_PATH_MAX + 8], vsock[KD_PATH_MAX + 16], log[KD_PATH_MAX + 16], memarg[16], cpuarg[16],
		console[KD_PATH_MAX + 32], layer[KD_PATH_MAX + 16], disk[KD_PATH_MAX + 8],
		cmdline[256] = "kiln.agent";
	struct kd_netns net;
	pid_t pid;
	int r, st;

	kd_pathf(snap, sizeof(snap), "%s/snap", dir);
	kd_pathf(vsock, sizeof(vsock), "cid=3,uds=%s/vsock", dir);
	kd_pathf(log, sizeof(log), "%s/boot.log", dir);
	kd_pathf(console, sizeof(console), "%s/console.log,max=1M", dir);
	kd_pathf(layer, sizeof(layer), "%s/layer.img", dir);
	snprintf(memarg, sizeof(memarg), "%u", mem);
	snprintf(cpuarg, sizeof(cpuarg), "%u", vcpus);
	char slots[KD_SLOTS][KD_SLOT_ARG_MAX];
	char *argv[48] = { "kiln-vmm", "--kernel", kd->conf.kernel, "--initrd", kd->conf.initrd, "--mem", memarg,
			   "--vcpus", cpuarg, "--cmdline", cmdline, "--console", console, "--vsock", vsock,
			   "--template", snap, "-v", NULL };

	if (img->path[0]) {
		if ((r = kd_image_verify(kd, img, err)) || (r = kd_layer_make(layer, kd->conf.layer_bytes, log, err)))
			return r;
		/*
		 * Disks: the image (/dev/vda), the empty volume slots a restore
		 * fills (/dev/vdb to /dev/vde), then the layer (/dev/vdf), last
		 * because it is the one a restore does not name: it is copied.
		 */
		snprintf(cmdline, sizeof(cmdline), "kiln.agent kiln.root=/dev/vda:/dev/vd%c kiln.user=%s", 'b' + KD_SLOTS,
			 KD_IMAGE_USER);
		kd_image_disk_args(img, argv, sizeof(argv) / sizeof(argv[0]), disk, sizeof(disk));
		kd_slot_args(kd, NULL, 0, argv, sizeof(argv) / sizeof(argv[0]), slots);
		kd_argv_add(argv, sizeof(argv) / sizeof(argv[0]), "--disk", layer);
	}
	/* Every clone restores into a namespace where the same eth0 address works (kd_netns.h). */
	if (kd->net_ok)
		snprintf(cmdline + strlen(cmdline), sizeof(cmdline) - strlen(cmdline), " %s", kd_net_cmdline(kd));
	if ((r = kd_net_prepare(kd, &net, argv, sizeof(argv) / sizeof(argv[0]), err)))
		return r;
	r = kd_vmm_spawn(kd, argv, log, net.nsfd, &pid, err);
	kd_netns_close(&net);
	if (r)
		return r;
	r = kd_vmm_wait(pid, KD_TEMPLATE_TIMEOUT_S * 1000, &st);
	unlink(layer);	/* the snapshot holds its copy; the VMM is gone or going */
	if (r == -ETIMEDOUT) {
		kd_vmm_kill(pid, -1, 1);
		return kiln_fail(err, ETIMEDOUT, "the template of %s, %u MiB, %u vCPUs did not boot within %d s (see %s)",
				 img->name, mem, vcpus, KD_TEMPLATE_TIMEOUT_S, log);
	}
	if (r)
		return kiln_fail(err, -r, "waiting for the template's kiln-vmm: %s", strerror(-r));
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		char why[200], guest[220];

		console[strlen(console) - strlen(",max=1M")] = '\0';
		tail_line(console, "kiln-init: ", guest, sizeof(guest));
		tail_line(log, NULL, why, sizeof(why));
		return kiln_fail(err, EIO, "the template of %s, %u MiB, %u vCPUs failed to boot: kiln-vmm %s %d: %s",
				 img->name, mem, vcpus, WIFEXITED(st) ? "exited" : "killed by signal",
				 WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st),
				 guest[0] ? guest : why[0] ? why : "(no output)");
	}
	return 0;
}

/*
 * Restore the template in dir/snap once, run a clone's first operations
 * (IDENTITY, an exec of `true`, a stat) and have its kiln-vmm record the
 * pages they touched as the template's working set, which every later
 * restore brings in before its vCPUs run (kiln-vmm --prefetch auto). A
 * template without one still works, each clone faulting its pages in: a
 * failure here is logged, not fatal.
 */
static void template_record_ws(struct kilnd *kd, const struct kd_image *img, const char *dir)
{
	char snap[KD_PATH_MAX + 8], uds[KD_PATH_MAX + 16], vsock[KD_PATH_MAX + 32], ctl[KD_PATH_MAX + 16],
		log[KD_PATH_MAX + 16], reply[512], disk[KD_PATH_MAX + 8], slots[KD_SLOTS][KD_SLOT_ARG_MAX];
	const char *const argv_true[] = { "true", NULL };
	struct kac_exec_opts eo = { .argv = argv_true, .stdin_fd = -1, .stdout_fd = -1, .stderr_fd = -1,
				    .sig_fd = -1, .tty_fd = -1 };
	struct kac_identity id = { .sandbox_id = "template", .hostname = "template", .set_clock = 1 };
	struct kiln_err err;
	struct kac_err kerr = { 0 };
	struct kac_stat st;
	struct kac_exit ex;
	struct kac *c = NULL;
	struct kd_netns net;
	pid_t pid;
	int r;

	err.msg[0] = '\0';
	kd_pathf(snap, sizeof(snap), "%s/snap", dir);
	kd_pathf(uds, sizeof(uds), "%s/rec.vsock", dir);
	kd_pathf(vsock, sizeof(vsock), "cid=3,uds=%s", uds);
	kd_pathf(ctl, sizeof(ctl), "%s/rec.ctl", dir);
	kd_pathf(log, sizeof(log), "%s/record.log", dir);
	char *argv[48] = { "kiln-vmm", "--restore", snap, "--prefetch", "none", "--vsock", vsock, "--control", ctl,
			   "--console", "none", NULL };

	kd_image_disk_args(img, argv, sizeof(argv) / sizeof(argv[0]), disk, sizeof(disk));
	if (img->path[0])
		kd_slot_args(kd, NULL, 0, argv, sizeof(argv) / sizeof(argv[0]), slots);
	if ((r = kd_net_prepare(kd, &net, argv, sizeof(argv) / sizeof(argv[0]), &err)))
		goto fail;
	r = kd_vmm_spawn(kd, argv, log, net.nsfd, &pid, &err);
	kd_netns_close(&net);
	if (r)
		goto fail;
	r = kac_connect(&c, uds, KD_AGENT_TIMEOUT_MS, &kerr);
	if (!r)
		r = kac_identity(c, &id, &kerr);
	if (!r)
		r = kac_exec(c, &eo, &ex, &kerr);
	if (!r)
		r = kac_stat(c, "/", 0, &st, &kerr);
	if (r)
		kiln_fail(&err, -r, "the agent: %s", kerr.msg);
	else if ((r = kd_vmm_control(ctl, "workingset", reply, sizeof(reply), KD_AGENT_TIMEOUT_MS)) < 0)
		kiln_fail(&err, -r, "its control socket: %s", strerror(-r));
	else if (!strstr(reply, "\"ok\":true"))
		kiln_fail(&err, EIO, "kiln-vmm: %.300s", reply);
	if (c)
		kac_close(c);
	kd_vmm_kill(pid, -1, 1);
	unlink(uds);
	unlink(ctl);
	if (!r) {
		unlink(log);
		return;
	}
fail:
	lwsl_user("kilnd: template %s: no working set recorded (its clones fault their memory in): %s\n", dir,
		  err.msg);
}

int kd_template_ensure(struct kilnd *kd, const struct kd_image *img, unsigned mem, unsigned vcpus, char *dir,
		       size_t n, int *built, struct kiln_err *err)
{
	struct reg_template t, old;
	char final[KD_PATH_MAX], tmp[KD_PATH_MAX + 8], want[KD_PATH_MAX + 8];
	int r, have_old;

	*built = 0;
	pthread_mutex_lock(&kd->tmpl_lock);
	pthread_mutex_lock(&kd->reg_lock);
	have_old = reg_template_get(kd->reg, img->name, mem, vcpus, &old, NULL) == 0;
	pthread_mutex_unlock(&kd->reg_lock);
	template_dir(kd, img, mem, vcpus, final, sizeof(final));
	kd_pathf(want, sizeof(want), "%s/snap", final);
	/* Current: built from this kernel, initramfs, image and layer size (all in its directory's name). */
	if (have_old && !strcmp(old.path, want) && !strcmp(old.kernel_sha256, kd->kernel_sha) &&
	    !strcmp(old.initramfs_sha256, kd->initrd_sha) && access(old.path, R_OK) == 0) {
		kd_pathf(dir, n, "%s", old.path);
		pthread_mutex_unlock(&kd->tmpl_lock);
		return 0;
	}
	kd_pathf(tmp, sizeof(tmp), "%s.build", final);
	kd_rmtree(tmp);
	kd_rmtree(final);
	if (mkdir(tmp, 0700)) {
		r = kiln_fail(err, errno, "cannot create %s: %s", tmp, strerror(errno));
		goto out;
	}
	r = template_boot(kd, img, tmp, mem, vcpus, err);
	if (r)
		goto out;
	template_record_ws(kd, img, tmp);
	if (rename(tmp, final)) {
		r = kiln_fail(err, errno, "cannot move %s to %s: %s", tmp, final, strerror(errno));
		goto out;
	}
	memset(&t, 0, sizeof(t));
	snprintf(t.image, sizeof(t.image), "%s", img->name);
	t.memory_mb = mem;
	t.vcpus = vcpus;
	kd_pathf(t.path, sizeof(t.path), "%s/snap", final);
	memcpy(t.kernel_sha256, kd->kernel_sha, sizeof(t.kernel_sha256));
	memcpy(t.initramfs_sha256, kd->initrd_sha, sizeof(t.initramfs_sha256));
	pthread_mutex_lock(&kd->reg_lock);
	r = reg_template_put(kd->reg, &t, (int64_t)kd_now_ms(), err);
	pthread_mutex_unlock(&kd->reg_lock);
	if (r)
		goto out;
	/* The old template's clones keep their MAP_PRIVATE mapping of its memory file. */
	if (have_old && strcmp(old.path, t.path)) {
		char *slash = strrchr(old.path, '/');

		if (slash && !strcmp(slash, "/snap")) {
			*slash = '\0';
			kd_rmtree(old.path);
		}
	}
	kd_pathf(dir, n, "%s", t.path);
	*built = 1;
out:
	if (r)
		kd_rmtree(tmp);
	pthread_mutex_unlock(&kd->tmpl_lock);
	return r;
}

int kd_template_remove(struct kilnd *kd, const char *image, unsigned mem, unsigned vcpus, struct kiln_err *err)
{
	struct reg_template t;
	int r;

	pthread_mutex_lock(&kd->tmpl_lock);
	pthread_mutex_lock(&kd->reg_lock);
	r = reg_template_get(kd->reg, image, mem, vcpus, &t, err);
	if (!r)
		r = reg_template_delete(kd->reg, image, mem, vcpus, err);
	pthread_mutex_unlock(&kd->reg_lock);
	if (!r) {
		char *slash = strrchr(t.path, '/');

		if (slash && !strcmp(slash, "/snap")) {
			*slash = '\0';
			kd_rmtree(t.path);
		}
	}
	pthread_mutex_unlock(&kd->tmpl_lock);
	return r;
}
