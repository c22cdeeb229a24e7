/*
 * Images: what a sandbox boots. "minimal" is the initramfs alone (busybox
 * and the agent); every other image is a read-only ext4 root filesystem
 * (kilnd --image NAME=PATH; make image builds Debian's) that the guest's
 * PID 1 joins with a writable layer of the sandbox's own (docs/images.md).
 *
 * An image is known by its recorded SHA-256 (the .sha256 file make image
 * writes beside it), else by its size, mtime and inode: that identity keys
 * its templates, whose memory holds the image's page cache, so a changed
 * image gets new templates. Its content is checked against the recorded
 * sum before the first template of a kilnd's life boots from it: a damaged
 * or truncated image is refused by name instead of booting half a system.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "kilnd.h"

extern char **environ;

static void hex32(const unsigned char md[32], char hex[REG_SHA256_HEX])
{
	for (unsigned i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

int kd_sha256_hex(const void *p, size_t len, char hex[REG_SHA256_HEX])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;

	if (!EVP_Digest(p, len, md, &mdlen, EVP_sha256(), NULL) || mdlen < 32)
		return -ENOMEM;
	hex32(md, hex);
	return 0;
}

int kd_sha256_file(const char *path, char hex[REG_SHA256_HEX], struct kiln_err *err)
{
	unsigned char md[EVP_MAX_MD_SIZE], buf[1 << 16];
	unsigned mdlen = 0;
	EVP_MD_CTX *c;
	ssize_t n;
	int fd, r = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return kiln_fail(err, errno, "cannot read %s: %s", path, strerror(errno));
	c = EVP_MD_CTX_new();
	if (!c || !EVP_DigestInit_ex(c, EVP_sha256(), NULL)) {
		r = kiln_fail(err, ENOMEM, "SHA-256 of %s: libcrypto failed", path);
		goto out;
	}
	while ((n = read(fd, buf, sizeof(buf))) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			r = kiln_fail(err, errno, "reading %s: %s", path, strerror(errno));
			goto out;
		}
		EVP_DigestUpdate(c, buf, (size_t)n);
	}
	if (!EVP_DigestFinal_ex(c, md, &mdlen) || mdlen < 32)
		r = kiln_fail(err, ENOMEM, "SHA-256 of %s: libcrypto failed", path);
	else
		hex32(md, hex);
out:
	EVP_MD_CTX_free(c);
	close(fd);
	return r;
}

int kd_name_ok(const char *s, size_t n)
{
	return n >= 1 && n < REG_IMAGE_MAX && strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789._-") >= n;
}

int kd_image_add(struct kd_conf *c, const char *arg, struct kiln_err *err)
{
	const char *eq = strchr(arg, '=');
	struct kd_image *img;
	size_t n = eq ? (size_t)(eq - arg) : 0;

	if (!eq || !kd_name_ok(arg, n) || !eq[1])
		return kiln_fail(err, EINVAL, "--image %s: expected NAME=PATH, NAME 1-64 of a-z 0-9 . _ -, "
				 "e.g. debian=/var/lib/kiln/images/debian.ext4", arg);
	if (n == strlen(KD_IMAGE_MINIMAL) && !memcmp(arg, KD_IMAGE_MINIMAL, n))
		return kiln_fail(err, EINVAL, "--image %s: \"minimal\" is the initramfs image, always there; "
				 "give this one another name", arg);
	for (unsigned i = 0; i < c->nimages; i++)
		if (strlen(c->images[i].name) == n && !memcmp(c->images[i].name, arg, n))
			return kiln_fail(err, EEXIST, "--image %s: image %.*s is given twice", arg, (int)n, arg);
	if (c->nimages == KD_IMAGES_MAX)
		return kiln_fail(err, E2BIG, "at most %d images (--image)", KD_IMAGES_MAX - 1);
	if (strlen(eq + 1) >= KD_PATH_MAX - 8)
		return kiln_fail(err, ENAMETOOLONG, "--image %s: path too long", arg);
	if (strchr(eq + 1, ','))
		return kiln_fail(err, EINVAL, "--image %s: a path with a comma cannot be a kiln-vmm --disk; move or "
				 "link the image elsewhere", arg);
	img = &c->images[c->nimages++];
	memset(img, 0, sizeof(*img));
	snprintf(img->name, sizeof(img->name), "%.*s", (int)n, arg);
	snprintf(img->path, sizeof(img->path), "%s", eq + 1);
	return 0;
}

/* The recorded sum beside path: IMAGE.sha256 (rootfs.ext4 -> rootfs.sha256), else PATH.sha256. */
static int read_sum(struct kd_image *img, const char *real, char hex[REG_SHA256_HEX], struct kiln_err *err)
{
	char buf[80];
	const char *dot = strrchr(real, '.'), *slash = strrchr(real, '/');
	size_t base = dot && (!slash || dot > slash) ? (size_t)(dot - real) : strlen(real);
	ssize_t n;
	int fd;

	for (int pass = 0; pass < 2; pass++) {
		if (kd_pathf(img->sum_path, sizeof(img->sum_path), "%.*s.sha256", pass ? (int)strlen(real) : (int)base,
			     real))
			continue;
		fd = open(img->sum_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		if (fd < 0)
			continue;
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		buf[n > 0 ? n : 0] = '\0';
		if (n < 64 || strspn(buf, "0123456789abcdef") < 64 || (buf[64] && buf[64] != '\n' && buf[64] != ' '))
			return kiln_fail(err, EINVAL, "image %s: %s does not hold a SHA-256 (64 hex digits): rebuild the "
					 "image (make image) or remove that file", img->name, img->sum_path);
		memcpy(hex, buf, 64);
		hex[64] = '\0';
		return 1;
	}
	img->sum_path[0] = '\0';
	return 0;
}

/* Resolve an image's path and know it: its size and identity (recorded sum, else stat). */
static int image_identify(struct kd_image *img, struct kiln_err *err)
{
	char real[KD_PATH_MAX], hex[REG_SHA256_HEX];
	struct stat st;
	int r;

	if (!realpath(img->path, real) || stat(real, &st))
		return kiln_fail(err, errno, "image %s: %s: %s (make image builds Debian's)", img->name, img->path,
				 strerror(errno));
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
		return kiln_fail(err, EINVAL, "image %s: %s is not a file or block device", img->name, img->path);
	if (S_ISREG(st.st_mode) && (st.st_size < (1 << 20) || st.st_size % 512))
		return kiln_fail(err, EINVAL, "image %s: %s is %lld bytes: not an ext4 image (it needs at least 1 MiB "
				 "in whole 512-byte sectors); rebuild it (make image)", img->name, img->path,
				 (long long)st.st_size);
	if (strchr(real, ','))
		return kiln_fail(err, EINVAL, "image %s: its path %s has a comma, which a kiln-vmm --disk cannot take; "
				 "move the image elsewhere", img->name, real);
	img->bytes = (uint64_t)st.st_size;
	if ((r = read_sum(img, real, hex, err)) < 0)
		return r;
	if (!r) {
		/* No recorded sum: the file as it is now keys the templates. */
		char key[KD_PATH_MAX + 96];
		int kl = snprintf(key, sizeof(key), "%s %llu %lld.%09ld %llu", real, (unsigned long long)st.st_size,
				  (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec, (unsigned long long)st.st_ino);

		if (kd_sha256_hex(key, (size_t)kl, hex))
			return kiln_fail(err, ENOMEM, "image %s: libcrypto failed", img->name);
	}
	memcpy(img->id, hex, sizeof(img->id));
	snprintf(img->path, sizeof(img->path), "%s", real);
	return 0;
}

/* A snapshot image at path, added to the list (not yet identified). */
static int snapshot_add(struct kilnd *kd, const char *name, const char *path, struct kiln_err *err)
{
	char arg[KD_PATH_MAX + 96];
	int r;

	if (kd_image_find(kd, name))
		return kiln_fail(err, EEXIST, "image %s already exists", name);
	if (kd_pathf(arg, sizeof(arg), "%s=%s", name, path))
		return kiln_fail(err, ENAMETOOLONG, "image %s: path too long", name);
	if ((r = kd_image_add(&kd->conf, arg, err)))
		return r;
	kd->conf.images[kd->conf.nimages - 1].snapshot = 1;
	return 0;
}

/* Snapshots of volumes kept in STATE/images: NAME.ext4 with NAME.sha256. */
static int images_load(struct kilnd *kd, struct kiln_err *err)
{
	char dir[KD_PATH_MAX + 16], path[KD_PATH_MAX + 96], name[REG_IMAGE_MAX];
	struct dirent *e;
	DIR *d;
	int r = 0;

	kd_pathf(dir, sizeof(dir), "%s/images", kd->conf.state_dir);
	if (!(d = opendir(dir)))
		return 0;
	while (!r && (e = readdir(d))) {
		size_t n = strlen(e->d_name);

		if (n < 6 || strcmp(e->d_name + n - 5, ".ext4") || !kd_name_ok(e->d_name, n - 5))
			continue;
		snprintf(name, sizeof(name), "%.*s", (int)(n - 5), e->d_name);
		/* An --image of that name wins. */
		if (!kd_image_find(kd, name) && !kd_pathf(path, sizeof(path), "%s/%s", dir, e->d_name))
			r = snapshot_add(kd, name, path, err);
	}
	closedir(d);
	return r;
}

int kd_images_probe(struct kilnd *kd, const char *beside, struct kiln_err *err)
{
	struct kd_conf *c = &kd->conf;
	char debian[KD_PATH_MAX + 32];
	int r;

	/* make image's Debian, found beside kilnd as the kernel is, unless --image names images. */
	if (!c->nimages && beside && !kd_pathf(debian, sizeof(debian), "debian=%s/guest/debian.ext4", beside) &&
	    access(debian + 7, R_OK) == 0 && (r = kd_image_add(c, debian, err)))
		return r;
	if ((r = images_load(kd, err)))
		return r;
	for (unsigned i = 0; i < c->nimages; i++)
		if ((r = image_identify(&c->images[i], err)))
			return r;
	if (!c->default_image[0])
		snprintf(c->default_image, sizeof(c->default_image), "%s",
			 kd_image_find(kd, "debian") ? "debian" : KD_IMAGE_MINIMAL);
	if (!kd_image_find(kd, c->default_image))
		return kiln_fail(err, ENOENT, "--default-image %s: no such image (give it with --image %s=PATH)",
				 c->default_image, c->default_image);
	return 0;
}

int kd_image_register(struct kilnd *kd, const char *name, const char *path, struct kiln_err *err)
{
	struct kd_image *img;
	int r;

	if ((r = snapshot_add(kd, name, path, err)))
		return r;
	img = &kd->conf.images[kd->conf.nimages - 1];
	if ((r = image_identify(img, err))) {
		img->removed = 1;
		img->name[0] = '\0';
	}
	img->verified = 1;	/* its sum was just taken from this very file */
	return r;
}

int kd_image_remove(struct kilnd *kd, const char *name, struct kiln_err *err)
{
	struct kd_image *img = (struct kd_image *)kd_image_find(kd, name);
	struct reg_template *t = NULL;
	char sum[KD_PATH_MAX];
	size_t n = 0;

	if (!img)
		return kiln_fail(err, ENOENT, "no image %s on this node (kiln image ls lists them)", name);
	if (!img->snapshot)
		return kiln_fail(err, EPERM, "image %s is given to kilnd (--image or built in); only snapshots of volumes "
				 "are removed through the API", name);
	for (struct kd_sbx *s = kd->sbx; s; s = s->next)
		if (!strcmp(s->image, name))
			return kiln_fail(err, EBUSY, "image %s is what sandbox %s boots: remove it once that sandbox ends",
					 name, s->id);
	for (struct kd_job *j = kd->pending; j; j = j->pnext)
		if (j->image == img || j->vol_from == img)
			return kiln_fail(err, EBUSY, "image %s is in use by a create or a volume being made; try again", name);
	pthread_mutex_lock(&kd->reg_lock);
	if (reg_template_list(kd->reg, &t, &n, NULL))
		n = 0;
	pthread_mutex_unlock(&kd->reg_lock);
	for (size_t i = 0; i < n; i++)
		if (!strcmp(t[i].image, name))
			kd_template_remove(kd, name, t[i].memory_mb, t[i].vcpus, NULL);
	free(t);
	snprintf(sum, sizeof(sum), "%s", img->sum_path);
	unlink(img->path);
	if (sum[0])
		unlink(sum);
	img->removed = 1;
	img->name[0] = '\0';
	return 0;
}

#define COPY_BUF	(1u << 20)

int kd_copy_sparse(const char *from, const char *to, struct kiln_err *err)
{
	int in = open(from, O_RDONLY | O_CLOEXEC), out = -1, r = 0, plain = 0;
	char *buf = NULL;
	off_t end, off = 0;

	if (in < 0)
		return kiln_fail(err, errno, "cannot read %s: %s", from, strerror(errno));
	out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (out < 0) {
		r = kiln_fail(err, errno, "cannot create %s: %s", to, strerror(errno));
		goto done;
	}
	end = lseek(in, 0, SEEK_END);
	if (end < 0 || ftruncate(out, end) < 0) {
		r = kiln_fail(err, errno, "cannot size %s: %s", to, strerror(errno));
		goto done;
	}
	while (off < end) {
		off_t data = lseek(in, off, SEEK_DATA), hole;

		if (data < 0) {
			if (errno == ENXIO)
				break;	/* only a hole is left */
			r = kiln_fail(err, errno, "reading %s: %s", from, strerror(errno));
			goto done;
		}
		hole = lseek(in, data, SEEK_HOLE);
		if (hole < 0)
			hole = end;
		for (off = data; off < hole;) {
			loff_t io = off, oo = off;
			ssize_t n = -1;

			if (!plain)
				n = copy_file_range(in, &io, out, &oo, (size_t)(hole - off), 0);
			if (n < 0 && !plain && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP))
				plain = 1;	/* across file systems some kernels refuse: read and write */
			if (plain && !buf && !(buf = malloc(COPY_BUF))) {
				r = kiln_fail(err, ENOMEM, "copying %s: out of memory", from);
				goto done;
			}
			if (plain) {
				size_t want = hole - off < (off_t)COPY_BUF ? (size_t)(hole - off) : COPY_BUF;

				n = pread(in, buf, want, off);
				if (n > 0 && pwrite(out, buf, (size_t)n, off) != n)
					n = -1;
			}
			if (n <= 0) {
				r = kiln_fail(err, n < 0 ? errno : EIO, "copying %s to %s: %s", from, to,
					      n < 0 ? strerror(errno) : "short copy");
				goto done;
			}
			off += n;
		}
	}
	if (fsync(out) < 0)
		r = kiln_fail(err, errno, "writing %s: %s", to, strerror(errno));
done:
	free(buf);
	if (out >= 0)
		close(out);
	close(in);
	if (r && out >= 0)
		unlink(to);
	return r;
}

const struct kd_image *kd_image_find(const struct kilnd *kd, const char *name)
{
	static const struct kd_image minimal = { .name = KD_IMAGE_MINIMAL };

	if (!strcmp(name, KD_IMAGE_MINIMAL))
		return &minimal;
	for (unsigned i = 0; i < kd->conf.nimages; i++)
		if (!kd->conf.images[i].removed && !strcmp(kd->conf.images[i].name, name))
			return &kd->conf.images[i];
	return NULL;
}

int kd_image_lookup(const struct kilnd *kd, const char *name, const struct kd_image **out, struct kiln_err *err)
{
	char names[KD_IMAGES_MAX * REG_IMAGE_MAX + 16] = KD_IMAGE_MINIMAL;

	*out = kd_image_find(kd, name && *name ? name : kd->conf.default_image);
	if (*out)
		return 0;
	for (unsigned i = 0; i < kd->conf.nimages; i++) {
		if (kd->conf.images[i].removed)
			continue;
		strcat(names, ", ");
		strcat(names, kd->conf.images[i].name);
	}
	return kiln_fail(err, EINVAL, "image \"%s\" is not on this node (it has %s)", name, names);
}

int kd_image_verify(struct kilnd *kd, const struct kd_image *cimg, struct kiln_err *err)
{
	struct kd_image *img = (struct kd_image *)cimg;
	char hex[REG_SHA256_HEX];
	int r;

	(void)kd;
	if (!img->path[0] || !img->sum_path[0] || img->verified)
		return 0;
	if ((r = kd_sha256_file(img->path, hex, err)))
		return r;
	if (strcmp(hex, img->id))
		return kiln_fail(err, EBADMSG, "image %s (%s) does not match the SHA-256 recorded in %s: it is damaged "
				 "or was changed after it was built; rebuild it (make image)", img->name, img->path,
				 img->sum_path);
	img->verified = 1;
	return 0;
}

void kd_image_disk_args(const struct kd_image *img, char **argv, size_t max, char *buf, size_t n)
{
	if (img && img->path[0] && !kd_pathf(buf, n, "%s,ro", img->path))
		kd_argv_add(argv, max, "--disk", buf);
}

int kd_run_tool(char *const argv[], const char *log, const char *doing, int ok_max, struct kiln_err *err)
{
	char sbin[64], usbin[64];
	const char *const tries[] = { argv[0], usbin, sbin };
	posix_spawn_file_actions_t fa;
	pid_t pid = -1;
	int st, r = ENOENT;

	snprintf(usbin, sizeof(usbin), "/usr/sbin/%.40s", argv[0]);
	snprintf(sbin, sizeof(sbin), "/sbin/%.40s", argv[0]);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0600);
	posix_spawn_file_actions_adddup2(&fa, 1, 2);
	for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]) && r == ENOENT; i++)
		r = posix_spawnp(&pid, tries[i], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (r)
		return kiln_fail(err, r, "cannot %s: cannot run %s: %s (install e2fsprogs)", doing, argv[0], strerror(r));
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return kiln_fail(err, errno, "cannot %s: waiting for %s: %s", doing, argv[0], strerror(errno));
	if (!WIFEXITED(st) || WEXITSTATUS(st) > ok_max)
		return kiln_fail(err, EIO, "cannot %s: %s %s %d (see %s)", doing, argv[0],
				 WIFEXITED(st) ? "exited" : "was killed by signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st),
				 log);
	return 0;
}

int kd_layer_make(const char *path, uint64_t bytes, const char *log, struct kiln_err *err)
{
	char size[32];
	char *const argv[] = { "mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal,^resize_inode", "-m", "0", "-E",
			       "lazy_itable_init=1,nodiscard", "-L", "kiln-layer", (char *)path, size, NULL };
	int fd, r;

	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 || ftruncate(fd, (off_t)bytes) < 0) {
		r = errno;
		if (fd >= 0)
			close(fd);
		return kiln_fail(err, r, "cannot create the writable layer %s: %s", path, strerror(r));
	}
	close(fd);
	snprintf(size, sizeof(size), "%lluk", (unsigned long long)(bytes >> 10));
	return kd_run_tool(argv, log, "make the writable layer", 0, err);
}

int kd_disk_floor(const struct kilnd *kd, struct kiln_err *err)
{
	struct statvfs sv;
	uint64_t free_b;

	if (!kd->conf.min_free_bytes || statvfs(kd->conf.state_dir, &sv))
		return 0;
	free_b = (uint64_t)sv.f_bavail * sv.f_frsize;
	if (free_b >= kd->conf.min_free_bytes)
		return 0;
	return kiln_fail(err, EDQUOT, "the state directory %s has %.2f GiB free, below the floor of %.2f GiB "
			 "(kilnd --min-free): free space there, or lower the floor", kd->conf.state_dir,
			 (double)free_b / (1 << 30), (double)kd->conf.min_free_bytes / (1 << 30));
}

json_t *kd_image_json(const struct kilnd *kd, const struct kd_image *img)
{
	if (!img->path[0])
		return json_pack("{s:s, s:s, s:b, s:b}", "name", KD_IMAGE_MINIMAL, "kind", "initramfs", "default",
				 !strcmp(kd->conf.default_image, KD_IMAGE_MINIMAL), "builtin", 1);
	return json_pack("{s:s, s:s, s:s, s:I, s:s, s:b, s:b, s:I}", "name", img->name, "kind",
			 img->snapshot ? "snapshot" : "disk", "path", img->path, "size_bytes", (json_int_t)img->bytes,
			 img->sum_path[0] ? "sha256" : "id", img->id, "default", !strcmp(kd->conf.default_image, img->name),
			 "builtin", !img->snapshot, "layer_bytes", (json_int_t)kd->conf.layer_bytes);
}

json_t *kd_images_json(const struct kilnd *kd)
{
	json_t *a = json_array();

	json_array_append_new(a, kd_image_json(kd, kd_image_find(kd, KD_IMAGE_MINIMAL)));
	for (unsigned i = 0; i < kd->conf.nimages; i++)
		if (!kd->conf.images[i].removed)
			json_array_append_new(a, kd_image_json(kd, &kd->conf.images[i]));
	return a;
}
