/*
 * Volumes: ext4 files of 300 MiB to 20 GiB under STATE/volumes/, made,
 * grown and removed through /v1/volumes, attached to sandboxes at create
 * (one writer, or any number of readers) and outliving them
 * (docs/images.md).
 *
 * A template of a disk image has four volume slots, empty virtio-blk
 * disks (/dev/vdb to /dev/vde): a restore puts the sandbox's volumes in
 * them (kiln-vmm --disk FILE,slot[,ro]), the VMM tells the guest driver
 * their new size, and kilnd mounts them through the agent as root. The
 * registry holds who has which volume attached; the slow file work
 * (mke2fs, e2fsck, resize2fs) runs on worker threads, and a volume being
 * made or grown is busy: no create attaches it meanwhile.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent_client.h"
#include "kilnd.h"

#define EXT4_SB_OFFSET		1024
#define EXT4_INCOMPAT_OFF	0x60
#define EXT4_INCOMPAT_RECOVER	0x0004

int kd_volume_path(const struct kilnd *kd, const char *name, char *buf, size_t n)
{
	return kd_pathf(buf, n, "%s/volumes/%s.ext4", kd->conf.state_dir, name);
}

/*
 * Volume jobs out (kd->pending, the loop's): all of them, or with volume
 * those on that volume, or with image the snapshot making that image.
 */
static unsigned volume_jobs(const struct kilnd *kd, const char *volume, const char *image)
{
	unsigned n = 0;

	for (const struct kd_job *j = kd->pending; j; j = j->pnext)
		if (j->kind == KD_JOB_VOLUME && (!volume || !strcmp(j->vol_name, volume)) &&
		    (!image || (j->vol_op == KD_VOL_SNAPSHOT && !strcmp(j->snap_name, image))))
			n++;
	return n;
}

int kd_volume_busy(const struct kilnd *kd, const char *name)
{
	return volume_jobs(kd, name, NULL) > 0;
}

/* "1G", "512M", "300MiB" or a number of bytes; 0 when malformed. */
static uint64_t size_of(const json_t *v)
{
	uint64_t n;

	if (json_is_integer(v))
		return json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
	return json_is_string(v) && !kd_parse_size(json_string_value(v), &n) ? n : 0;
}

static json_t *volume_json(const struct reg_volume *v, int64_t now)
{
	return json_pack("{s:s, s:I, s:I, s:I, s:s, s:o, s:i, s:{s:f}}", "name", v->name, "size_bytes",
			 (json_int_t)v->size_bytes, "size_mb", (json_int_t)(v->size_bytes >> 20), "created_ms",
			 (json_int_t)v->created_ms, "state", v->writers ? "attached" : v->readers ? "attached-read-only" : "free",
			 "writer", v->writer[0] ? json_string(v->writer) : json_null(), "readers", (int)v->readers, "usage",
			 "gib_hours", reg_volume_gib_hours(v, now));
}

json_t *kd_sbx_vols_json(const struct reg_sandbox *sb)
{
	json_t *o = json_object();

	for (unsigned i = 0; i < sb->n_vols; i++)
		json_object_set_new(o, sb->vols[i].path, json_pack("{s:s, s:b}", "volume", sb->vols[i].volume, "readonly",
								  sb->vols[i].readonly));
	return o;
}

/* ---- on a worker: making, growing, recovering volume files ---- */

/*
 * A volume from an image: a sparse copy of it, given a journal (the image
 * has none: it is only ever read) and grown to the volume's size.
 */
static int volume_from_image(struct kd_job *j, const char *path, const char *log)
{
	char *const journal[] = { "tune2fs", "-O", "has_journal", (char *)path, NULL };
	char *const fsck[] = { "e2fsck", "-f", "-y", (char *)path, NULL };
	char *const grow[] = { "resize2fs", (char *)path, NULL };
	int r = kd_copy_sparse(j->vol_from->path, path, &j->err);

	if (!r && truncate(path, (off_t)j->vol_bytes) < 0)
		r = kiln_fail(&j->err, errno, "cannot size %s: %s", path, strerror(errno));
	if (!r)
		r = kd_run_tool(journal, log, "give the volume a journal", 0, &j->err);
	if (!r)
		r = kd_run_tool(fsck, log, "check the volume", 1, &j->err);
	if (!r)
		r = kd_run_tool(grow, log, "grow the volume to its size", 0, &j->err);
	return r;
}

static int volume_make(struct kd_job *j)
{
	char path[KD_PATH_MAX + 80], log[KD_PATH_MAX + 80], size[32];
	char *const argv[] = { "mke2fs", "-q", "-F", "-t", "ext4", "-m", "0", "-E",
			       "lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=1000:1000", "-L", "kiln-volume",
			       path, size, NULL };
	int fd, r;

	kd_volume_path(j->kd, j->vol_name, path, sizeof(path));
	kd_pathf(log, sizeof(log), "%s/volumes/%s.log", j->kd->conf.state_dir, j->vol_name);
	if (j->vol_from) {
		if ((r = volume_from_image(j, path, log)))
			unlink(path);
		else
			unlink(log);
		return r;
	}
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return kiln_fail(&j->err, errno, "cannot create %s: %s", path, strerror(errno));
	r = ftruncate(fd, (off_t)j->vol_bytes) < 0 ? -errno : 0;
	close(fd);
	snprintf(size, sizeof(size), "%lluk", (unsigned long long)(j->vol_bytes >> 10));
	if (r)
		r = kiln_fail(&j->err, -r, "cannot size %s: %s", path, strerror(-r));
	else
		r = kd_run_tool(argv, log, "make the volume's file system", 0, &j->err);
	if (r)
		unlink(path);
	else
		unlink(log);
	return r;
}

static int volume_grow(struct kd_job *j)
{
	char path[KD_PATH_MAX + 80], log[KD_PATH_MAX + 80];
	char *const fsck[] = { "e2fsck", "-f", "-y", path, NULL };
	char *const grow[] = { "resize2fs", path, NULL };
	int r;

	kd_volume_path(j->kd, j->vol_name, path, sizeof(path));
	kd_pathf(log, sizeof(log), "%s/volumes/%s.log", j->kd->conf.state_dir, j->vol_name);
	/* e2fsck exits 1 when it fixed something (a journal replayed): fine. */
	r = kd_run_tool(fsck, log, "check the volume before growing it", 1, &j->err);
	if (!r && truncate(path, (off_t)j->vol_bytes) < 0)
		r = kiln_fail(&j->err, errno, "cannot grow %s: %s", path, strerror(errno));
	if (!r)
		r = kd_run_tool(grow, log, "grow the volume's file system", 0, &j->err);
	if (!r)
		unlink(log);
	return r;
}

/*
 * A read-only image of the volume as it is (STATE/images/NAME.ext4, with
 * its SHA-256 beside it): a sparse copy whose journal, if its last writer
 * was killed, is replayed into the copy. The loop registers it.
 */
static int volume_snapshot(struct kd_job *j)
{
	char src[KD_PATH_MAX + 80], tmp[KD_PATH_MAX + 96], dst[KD_PATH_MAX + 96], sum[KD_PATH_MAX + 96],
		log[KD_PATH_MAX + 96], hex[REG_SHA256_HEX], line[REG_SHA256_HEX + 1];
	char *const fsck[] = { "e2fsck", "-p", tmp, NULL };
	int fd, r;

	kd_volume_path(j->kd, j->vol_name, src, sizeof(src));
	kd_pathf(tmp, sizeof(tmp), "%s/images/%s.ext4.tmp", j->kd->conf.state_dir, j->snap_name);
	kd_pathf(dst, sizeof(dst), "%s/images/%s.ext4", j->kd->conf.state_dir, j->snap_name);
	kd_pathf(sum, sizeof(sum), "%s/images/%s.sha256", j->kd->conf.state_dir, j->snap_name);
	kd_pathf(log, sizeof(log), "%s/images/%s.log", j->kd->conf.state_dir, j->snap_name);
	unlink(tmp);
	if ((r = kd_copy_sparse(src, tmp, &j->err)) || (r = kd_run_tool(fsck, log, "replay the copy's journal", 1, &j->err)) ||
	    (r = kd_sha256_file(tmp, hex, &j->err)))
		goto fail;
	snprintf(line, sizeof(line), "%s\n", hex);
	fd = open(sum, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 || write(fd, line, strlen(line)) != (ssize_t)strlen(line) || fsync(fd) < 0) {
		r = kiln_fail(&j->err, errno, "cannot write %s: %s", sum, strerror(errno));
		if (fd >= 0)
			close(fd);
		goto fail;
	}
	close(fd);
	if (rename(tmp, dst) < 0) {
		r = kiln_fail(&j->err, errno, "cannot move %s into place: %s", dst, strerror(errno));
		unlink(sum);
		goto fail;
	}
	unlink(log);
	return 0;
fail:
	unlink(tmp);
	return r;
}

int kd_volume_work(struct kd_job *j)
{
	struct kilnd *kd = j->kd;
	int r = j->vol_op == KD_VOL_CREATE ? volume_make(j) : j->vol_op == KD_VOL_RESIZE ? volume_grow(j)
											  : volume_snapshot(j);

	pthread_mutex_lock(&kd->reg_lock);
	if (j->vol_op == KD_VOL_CREATE && r)
		reg_volume_delete(kd->reg, j->vol_name, NULL);
	else if (j->vol_op == KD_VOL_RESIZE && !r)
		r = reg_volume_resize(kd->reg, j->vol_name, j->vol_bytes, (int64_t)kd_now_ms(), &j->err);
	pthread_mutex_unlock(&kd->reg_lock);
	return r;
}

/*
 * A volume whose writer was killed has a journal to replay. A read-only
 * attach cannot replay it in the guest (its slot refuses writes), so the
 * host does, before the restore: e2fsck -p, under vol_lock so two readers
 * starting at once do not both. No reader can have it mounted meanwhile:
 * the first one would have found it needing recovery too.
 */
static int volume_recover(struct kilnd *kd, const char *name, struct kiln_err *err)
{
	char path[KD_PATH_MAX + 80], log[KD_PATH_MAX + 80];
	char *const fsck[] = { "e2fsck", "-p", path, NULL };
	uint8_t incompat[4];
	int fd, r = 0;

	kd_volume_path(kd, name, path, sizeof(path));
	kd_pathf(log, sizeof(log), "%s/volumes/%s.log", kd->conf.state_dir, name);
	pthread_mutex_lock(&kd->vol_lock);
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		r = kiln_fail(err, errno, "volume %s: %s: %s", name, path, strerror(errno));
	} else {
		ssize_t n = pread(fd, incompat, sizeof(incompat), EXT4_SB_OFFSET + EXT4_INCOMPAT_OFF);

		close(fd);
		if (n == (ssize_t)sizeof(incompat) && (incompat[0] & EXT4_INCOMPAT_RECOVER)) {
			r = kd_run_tool(fsck, log, "replay the volume's journal", 1, err);
		}
	}
	pthread_mutex_unlock(&kd->vol_lock);
	return r;
}

int kd_volumes_prepare(struct kd_job *j)
{
	for (unsigned i = 0; i < j->nvols; i++) {
		int r;

		if (j->vols[i].readonly && (r = volume_recover(j->kd, j->vols[i].volume, &j->err)))
			return r;
	}
	return 0;
}

void kd_slot_args(const struct kilnd *kd, const struct reg_attach *vols, unsigned nvols, char **argv, size_t max,
		  char bufs[][KD_SLOT_ARG_MAX])
{
	for (unsigned s = 0; s < KD_SLOTS; s++) {
		const struct reg_attach *a = s < nvols ? &vols[s] : NULL;
		char path[KD_PATH_MAX + 80];

		if (a)
			kd_volume_path(kd, a->volume, path, sizeof(path));
		else
			kd_pathf(path, sizeof(path), "%s/empty.img", kd->conf.state_dir);
		/* The empty file is every sandbox's: shared, so read-only. */
		kd_pathf(bufs[s], KD_SLOT_ARG_MAX, "%s,slot%s", path, !a || a->readonly ? ",ro" : "");
		kd_argv_add(argv, max, "--disk", bufs[s]);
	}
}

/* Collect what a root script prints, for the error message. */
struct out_buf {
	char text[512];
	size_t n;
};

static int collect(void *arg, int chan, const void *p, size_t n)
{
	struct out_buf *o = arg;

	(void)chan;
	if (n > sizeof(o->text) - 1 - o->n)
		n = sizeof(o->text) - 1 - o->n;
	memcpy(o->text + o->n, p, n);
	o->n += n;
	o->text[o->n] = '\0';
	return 0;
}

int kd_guest_root_sh(struct kd_job *j, struct kac *c, const char *script, const char *doing)
{
	const char *argv[] = { "/bin/sh", "-c", script, NULL };
	struct out_buf out = { .n = 0 };
	struct kac_exec_opts eo = { .argv = argv, .stdin_fd = -1, .stdout_fd = -1, .stderr_fd = -1, .sig_fd = -1,
				    .tty_fd = -1, .out_fn = collect, .out_arg = &out, .timeout_ms = KD_AGENT_TIMEOUT_MS,
				    .set_ids = 1, .uid = 0, .gid = 0 };
	struct kac_exit ex;
	struct kac_err kerr;
	int r;

	r = kac_exec(c, &eo, &ex, &kerr);
	if (r)
		return kiln_fail(&j->err, -r, "%s: the agent: %s", doing, kerr.msg);
	if (ex.code != 0) {
		while (out.n && out.text[out.n - 1] == '\n')
			out.text[--out.n] = '\0';
		return kiln_fail(&j->err, EIO, "%s failed: %s", doing, out.n ? out.text : "(no output)");
	}
	return 0;
}

/*
 * Mount each volume in its slot, as root, shallow paths first: wait (a few
 * seconds at most) for the driver to see the slot's new size, then mkdir
 * and mount. A read-only volume mounts with noload: its journal was
 * replayed on the host.
 */
int kd_volumes_mount(struct kd_job *j, struct kac *c)
{
	char script[4096];
	size_t n = 0;
	unsigned order[KD_SLOTS];

	if (!j->nvols)
		return 0;
	for (unsigned i = 0; i < j->nvols; i++)
		order[i] = i;
	for (unsigned i = 1; i < j->nvols; i++)
		for (unsigned k = i; k > 0 && strlen(j->vols[order[k]].path) < strlen(j->vols[order[k - 1]].path); k--) {
			unsigned t = order[k];

			order[k] = order[k - 1];
			order[k - 1] = t;
		}
	n += (size_t)snprintf(script + n, sizeof(script) - n, "set -e\n");
	for (unsigned i = 0; i < j->nvols; i++) {
		const struct reg_attach *a = &j->vols[order[i]];
		char dev = (char)('b' + order[i]);	/* /dev/vda is the image */

		/* Paths are checked clean (no quotes, spaces or control bytes): they go in single quotes. */
		n += (size_t)snprintf(script + n, sizeof(script) - n,
				      "i=0; while [ \"$(cat /sys/block/vd%c/size)\" = 0 ]; do i=$((i + 1)); "
				      "[ $i -lt 500 ] || { echo 'volume %s: its disk did not appear' >&2; exit 1; }; sleep 0.01; done\n"
				      "mkdir -p '%s' && mount -t ext4 -o noatime%s /dev/vd%c '%s'\n",
				      dev, a->volume, a->path, a->readonly ? ",ro,noload" : "", dev, a->path);
	}
	if (n >= sizeof(script))
		return kiln_fail(&j->err, E2BIG, "the volumes' mount script is too long");
	for (unsigned i = 0; i < j->nvols; i++)
		if (strchr(j->vols[i].path, '\''))
			return kiln_fail(&j->err, EINVAL, "volume path %s has a quote", j->vols[i].path);
	return kd_guest_root_sh(j, c, script, "mounting the volumes");
}

/* ---- on the loop: /v1/volumes ---- */

static int fail_msg(json_t **body, int status, struct kiln_err *err)
{
	*body = kd_err_json(status, err->msg);
	return status;
}

static int start_job(struct kilnd *kd, const struct kd_req *r, const char *name, uint64_t bytes, int op,
		     const struct kd_image *from, const char *snap, json_t **body)
{
	struct kiln_err err;
	struct kd_job *j = kd_job_new();

	if (!j || volume_jobs(kd, NULL, NULL) >= KD_VOL_JOBS_MAX) {
		free(j);
		kiln_fail(&err, EBUSY, "too many volume operations at once; try again in a moment");
		return fail_msg(body, 503, &err);
	}
	j->kind = KD_JOB_VOLUME;
	j->vol_op = op;
	j->vol_bytes = bytes;
	j->vol_from = from;
	if (snap)
		snprintf(j->snap_name, sizeof(j->snap_name), "%s", snap);
	j->wsi = r->wsi;
	j->deno = r->deno;
	snprintf(j->vol_name, sizeof(j->vol_name), "%s", name);
	if (kd_job_start(kd, j, &err)) {
		free(j);
		return fail_msg(body, 500, &err);
	}
	return 0;	/* kd_volume_done answers; until then the volume is busy */
}

void kd_volume_done(struct kilnd *kd, struct kd_job *j)
{
	struct reg_volume v;
	struct kiln_err err;
	int r;

	if (j->vol_op == KD_VOL_SNAPSHOT) {
		char path[KD_PATH_MAX + 96];

		kd_pathf(path, sizeof(path), "%s/images/%s.ext4", kd->conf.state_dir, j->snap_name);
		if (!j->ret && (r = kd_image_register(kd, j->snap_name, path, &j->err)))
			j->ret = r;
		if (!j->wsi)
			return;
		if (j->ret) {
			kd_http_reply(j->wsi, kd_errno_status(j->ret), kd_err_json(kd_errno_status(j->ret), j->err.msg));
		} else {
			json_t *img = kd_image_json(kd, kd_image_find(kd, j->snap_name));

			kd_http_reply(j->wsi, 201, j->deno ? kd_v2_snapshot_json(kd, img) : json_incref(img));
			json_decref(img);
		}
		return;
	}
	if (!j->wsi)
		return;
	if (j->ret) {
		kd_http_reply(j->wsi, kd_errno_status(j->ret), kd_err_json(kd_errno_status(j->ret), j->err.msg));
		return;
	}
	pthread_mutex_lock(&kd->reg_lock);
	r = reg_volume_get(kd->reg, j->vol_name, &v, &err);
	pthread_mutex_unlock(&kd->reg_lock);
	if (r)
		kd_http_reply(j->wsi, kd_errno_status(r), kd_err_json(kd_errno_status(r), err.msg));
	else if (j->deno) {
		json_t *o = volume_json(&v, (int64_t)kd_now_ms());

		kd_http_reply(j->wsi, 201, kd_v2_volume_json(kd, o));
		json_decref(o);
	} else
		kd_http_reply(j->wsi, j->vol_op == KD_VOL_CREATE ? 201 : 200, volume_json(&v, (int64_t)kd_now_ms()));
}

static int body_json(const struct kd_req *r, json_t **root, json_t **body)
{
	json_error_t je;

	*root = json_loadb(r->body ? r->body : "", r->body_len, JSON_REJECT_DUPLICATES, &je);
	if (!*root || !json_is_object(*root)) {
		json_decref(*root);
		*body = kd_err_json(400, "the body must be a JSON object, such as {\"name\": \"data\", \"size\": \"1G\"}");
		return 400;
	}
	return 0;
}

static int size_field(json_t *root, uint64_t *bytes, json_t **body)
{
	json_t *sz = json_object_get(root, "size"), *mb = json_object_get(root, "size_mb");
	char msg[200];

	if (sz && mb) {
		*body = kd_err_json(400, "give size or size_mb, not both");
		return 400;
	}
	*bytes = mb ? (json_is_integer(mb) && json_integer_value(mb) > 0 ? (uint64_t)json_integer_value(mb) << 20 : 0)
		    : sz ? size_of(sz) : 0;
	if (!*bytes) {
		snprintf(msg, sizeof(msg), "size must be a size such as \"1G\" or \"512M\" (or size_mb), %llu MiB to %llu GiB",
			 REG_VOL_MIN_BYTES >> 20, REG_VOL_MAX_BYTES >> 30);
		*body = kd_err_json(400, msg);
		return 400;
	}
	*bytes = (*bytes + 4095) & ~4095ull;
	return 0;
}

int kd_volumes_route(struct kilnd *kd, const struct kd_req *r, const char *rest, json_t **body)
{
	struct kiln_err err;
	struct reg_volume v, *list;
	char name[REG_IMAGE_MAX], path[KD_PATH_MAX + 80];
	int64_t now = (int64_t)kd_now_ms();
	json_t *root, *a;
	uint64_t bytes;
	size_t n, len;
	int st;

	if (!*rest && r->method == LWSHUMETH_GET) {
		pthread_mutex_lock(&kd->reg_lock);
		st = reg_volume_list(kd->reg, &list, &n, &err);
		pthread_mutex_unlock(&kd->reg_lock);
		if (st)
			return fail_msg(body, kd_errno_status(st), &err);
		a = json_array();
		for (size_t i = 0; i < n; i++)
			json_array_append_new(a, volume_json(&list[i], now));
		free(list);
		*body = json_pack("{s:o}", "volumes", a);
		return 200;
	}
	if (!*rest && r->method == LWSHUMETH_POST) {
		const struct kd_image *from = NULL;
		const char *nm, *fr;

		if ((st = body_json(r, &root, body)))
			return st;
		fr = json_string_value(json_object_get(root, "from"));
		if (json_object_get(root, "from") && (!fr || !(from = kd_image_find(kd, fr)) || !from->path[0])) {
			kiln_fail(&err, EINVAL, "from must name a disk image of this node (kiln image ls), such as \"debian\"");
			json_decref(root);
			return fail_msg(body, 400, &err);
		}
		json_object_del(root, "from");
		nm = json_string_value(json_object_get(root, "name"));
		snprintf(name, sizeof(name), "%s", nm ? nm : "");
		if (nm && strlen(nm) >= sizeof(name))
			name[0] = '\0';	/* too long: refused below as malformed */
		json_object_del(root, "name");
		st = size_field(root, &bytes, body);
		json_object_del(root, "size");
		json_object_del(root, "size_mb");
		if (!st && json_object_size(root)) {
			*body = kd_err_json(400, "a volume takes name, size (or size_mb) and from");
			st = 400;
		}
		if (!st && from && bytes < from->bytes) {
			char msg[200];

			snprintf(msg, sizeof(msg), "image %s is %llu MiB: a volume made from it needs at least that", from->name,
				 (unsigned long long)((from->bytes + (1 << 20) - 1) >> 20));
			*body = kd_err_json(400, msg);
			st = 400;
		}
		json_decref(root);
		if (st)
			return st;
		if (kd_volume_busy(kd, name)) {
			kiln_fail(&err, EBUSY, "volume %s is being made or grown", name);
			return fail_msg(body, 409, &err);
		}
		if ((st = kd_disk_floor(kd, &err)))
			return fail_msg(body, kd_errno_status(st), &err);
		pthread_mutex_lock(&kd->reg_lock);
		st = reg_volume_create(kd->reg, name, bytes, now, &err);
		pthread_mutex_unlock(&kd->reg_lock);
		if (st)
			return fail_msg(body, kd_errno_status(st), &err);
		return start_job(kd, r, name, bytes, KD_VOL_CREATE, from, NULL, body);
	}
	if (rest[0] != '/' || (len = strcspn(rest + 1, "/")) == 0 || len >= sizeof(name)) {
		kiln_fail(&err, ENOENT, "no such path: /v1/volumes, /v1/volumes/NAME, /v1/volumes/NAME/resize and /snapshot");
		return fail_msg(body, 404, &err);
	}
	memcpy(name, rest + 1, len);
	name[len] = '\0';
	rest += 1 + len;
	if ((st = reg_volume_name_check(name, &err)))
		return fail_msg(body, 400, &err);
	if (!*rest && r->method == LWSHUMETH_GET) {
		pthread_mutex_lock(&kd->reg_lock);
		st = reg_volume_get(kd->reg, name, &v, &err);
		pthread_mutex_unlock(&kd->reg_lock);
		if (st)
			return fail_msg(body, kd_errno_status(st), &err);
		*body = volume_json(&v, now);
		return 200;
	}
	if (kd_volume_busy(kd, name)) {
		kiln_fail(&err, EBUSY, "volume %s is being made, grown or snapshotted; try again when that is done", name);
		return fail_msg(body, 409, &err);
	}
	if (!*rest && r->method == LWSHUMETH_DELETE) {
		pthread_mutex_lock(&kd->reg_lock);
		st = reg_volume_delete(kd->reg, name, &err);
		pthread_mutex_unlock(&kd->reg_lock);
		if (st)
			return fail_msg(body, kd_errno_status(st), &err);
		kd_volume_path(kd, name, path, sizeof(path));
		unlink(path);
		*body = json_pack("{s:s, s:b}", "name", name, "deleted", 1);
		return 200;
	}
	if (!strcmp(rest, "/snapshot") && r->method == LWSHUMETH_POST) {
		const char *im;
		char image[REG_IMAGE_MAX];

		if ((st = body_json(r, &root, body)))
			return st;
		im = json_string_value(json_object_get(root, "image"));
		snprintf(image, sizeof(image), "%s", im && strlen(im) < sizeof(image) ? im : "");
		json_decref(root);
		if ((st = reg_volume_name_check(image, &err)))
			return fail_msg(body, 400, &err);
		if (kd_image_find(kd, image) || volume_jobs(kd, NULL, image) || !strcmp(image, KD_IMAGE_MINIMAL)) {
			kiln_fail(&err, EEXIST, "image %s already exists: name the snapshot otherwise", image);
			return fail_msg(body, 409, &err);
		}
		pthread_mutex_lock(&kd->reg_lock);
		st = reg_volume_get(kd->reg, name, &v, &err);
		pthread_mutex_unlock(&kd->reg_lock);
		if (st)
			return fail_msg(body, kd_errno_status(st), &err);
		if (v.writers) {
			kiln_fail(&err, EBUSY, "volume %s is attached writable to sandbox %s: snapshot it once that sandbox ends",
				  name, v.writer);
			return fail_msg(body, 409, &err);
		}
		if ((st = kd_disk_floor(kd, &err)))
			return fail_msg(body, kd_errno_status(st), &err);
		return start_job(kd, r, name, 0, KD_VOL_SNAPSHOT, NULL, image, body);
	}
	if (!strcmp(rest, "/resize") && r->method == LWSHUMETH_POST) {
		if ((st = body_json(r, &root, body)))
			return st;
		st = size_field(root, &bytes, body);
		json_decref(root);
		if (st)
			return st;
		pthread_mutex_lock(&kd->reg_lock);
		st = reg_volume_get(kd->reg, name, &v, &err);
		pthread_mutex_unlock(&kd->reg_lock);
		if (st)
			return fail_msg(body, kd_errno_status(st), &err);
		if (v.writers || v.readers) {
			kiln_fail(&err, EBUSY, "volume %s is attached to %s%s: grow it once no sandbox has it", name,
				  v.writers ? "sandbox " : "read-only sandboxes", v.writers ? v.writer : "");
			return fail_msg(body, 409, &err);
		}
		if (bytes < v.size_bytes || bytes > REG_VOL_MAX_BYTES) {
			kiln_fail(&err, EINVAL, "volume %s is %llu MiB: it can only grow, up to %llu GiB (asked %llu MiB)", name,
				  (unsigned long long)(v.size_bytes >> 20), REG_VOL_MAX_BYTES >> 30,
				  (unsigned long long)(bytes >> 20));
			return fail_msg(body, 400, &err);
		}
		return start_job(kd, r, name, bytes, KD_VOL_RESIZE, NULL, NULL, body);
	}
	kiln_fail(&err, EINVAL, "volumes: GET or POST /v1/volumes; GET or DELETE /v1/volumes/NAME; POST /v1/volumes/NAME/resize or /snapshot");
	return fail_msg(body, 405, &err);
}
