/*
 * The SDK's JSON-RPC methods (shared/deno-sandbox-protocol.md §4.10) on the
 * agent (docs/agent-protocol.md, "The @deno/sandbox SDK, call by call").
 * Each request runs on a thread of its own with an agent connection from
 * its sandbox's pool; results and errors take the shapes the SDK's schemas
 * check (§4.3, §4.4, §4.8), since a missing key there is a ZodError in the
 * user's program.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <regex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>


#include "io.h"
#include "kd_deno.h"
#include "kd_v3conf.h"

#define RPC_FILE_MAX	(32u << 20)	/* readFile's answer travels in one frame: bigger wants fs.open */
#define RPC_IO_CHUNK	(240u << 10)	/* the agent's FH_READ/FH_WRITE limit per call */
#define RPC_CHUNK	(64u << 10)	/* output chunks to the client (§4.6: at most 64 KiB) */
#define RPC_PROCS_MAX	4096		/* exit statuses a socket keeps */
#define RPC_RE_MAX	8		/* match/skip regexes of one walk */

struct rpc {
	struct kd_v3 *v;
	json_t *id;
	json_t *params;
	struct kac *c;
	int broken;			/* c may not be reused */
	struct kac_err err;
};

/* ---- small helpers ------------------------------------------------------------ */

static const char *pstr(const struct rpc *q, const char *k)
{
	return json_string_value(json_object_get(q->params, k));
}

static json_t *popt(const struct rpc *q, const char *k)
{
	json_t *o = json_object_get(q->params, "options");

	return json_is_object(o) ? json_object_get(o, k) : NULL;
}

static int truthy(const json_t *j)
{
	return json_is_true(j);
}

static void bad_params(struct rpc *q, const char *what)
{
	kd_v3_fail(q->v, q->id, kd_v3_serr("TypeError", "EINVAL", "%s", what));
}

static struct kac *conn(struct rpc *q)
{
	if (!q->c)
		q->c = kd_v3_conn_get(q->v, &q->err);
	if (!q->c)
		kd_v3_fail(q->v, q->id, kd_v3_serr("Error", NULL, "cannot reach the sandbox's agent: %s", q->err.msg));
	return q->c;
}

/* An agent call failed: answer it (message "<strerror> (os error N): op 'path'") and note whether c still serves. */
static void agent_fail(struct rpc *q, int ret, const char *op, const char *path)
{
	if (q->err.code == 0 || q->err.code == KAC_ERR_TIMEOUT)
		q->broken = 1;
	if (ret == -ESRCH) {
		kd_v3_fail(q->v, q->id, kd_v3_serr("BadResource", "EBADF", "Bad resource ID"));
		return;
	}
	if (path)
		kd_v3_fail(q->v, q->id, kd_v3_serr_errno(ret, "%s '%s'", op, path));
	else
		kd_v3_fail(q->v, q->id, kd_v3_serr_errno(ret, "%s", op));
}

/* A path param, relative ones from the socket's cwd. 0, or -1 having answered. */
static int path_param(struct rpc *q, const char *key, char *out, size_t n)
{
	const char *p = pstr(q, key);

	if (!p || !*p) {
		char t[80];

		snprintf(t, sizeof(t), "%s must be a non-empty string", key);
		bad_params(q, t);
		return -1;
	}
	if ((p[0] == '/' ? snprintf(out, n, "%s", p) : snprintf(out, n, "%s/%s", q->v->cwd, p)) >= (int)n) {
		kd_v3_fail(q->v, q->id, kd_v3_serr_errno(-ENAMETOOLONG, "%s", key));
		return -1;
	}
	return 0;
}

static json_t *iso_ns(int64_t ns)
{
	time_t s = (time_t)(ns / 1000000000);
	long ms = (long)((ns % 1000000000) / 1000000);
	struct tm tm;
	char b[48];

	if (ns < 0 || !gmtime_r(&s, &tm))
		return json_string("1970-01-01T00:00:00.000Z");
	strftime(b, sizeof(b), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(b + strlen(b), sizeof(b) - strlen(b), ".%03ldZ", ms);
	return json_string(b);
}

/* An ISO date from the SDK (toISOString: 2024-01-02T03:04:05.678Z) to ns; -1 if it is not one. */
static int64_t ns_of_iso(const char *s)
{
	struct tm tm;
	const char *e;
	long ms = 0;

	if (!s)
		return -1;
	memset(&tm, 0, sizeof(tm));
	e = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!e)
		return -1;
	if (*e == '.') {
		int digits = 0;

		for (e++; isdigit((unsigned char)*e); e++, digits++)
			if (digits < 3)
				ms = ms * 10 + (*e - '0');
		for (; digits < 3; digits++)
			ms *= 10;
	}
	if (*e != 'Z' && *e)
		return -1;
	return (int64_t)timegm(&tm) * 1000000000 + (int64_t)ms * 1000000;
}

static json_t *fileinfo(const struct kac_stat *st, int lstat)
{
	unsigned t = st->type & S_IFMT;

	return json_pack("{s:b, s:b, s:b, s:I, s:o, s:o, s:o, s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
			 "s:b, s:b, s:b, s:b}",
			 "isFile", t == S_IFREG, "isDirectory", t == S_IFDIR, "isSymlink", lstat && t == S_IFLNK,
			 "size", (json_int_t)st->size, "mtime", iso_ns(st->mtime_ns), "atime", iso_ns(st->atime_ns),
			 /* statx's btime is not in the agent's STAT; the SDK wants a date, not null (§4.8). */
			 "birthtime", iso_ns(st->ctime_ns), "ctime", iso_ns(st->ctime_ns),
			 "mode", (json_int_t)(t | (st->mode & 07777)), "dev", (json_int_t)st->dev,
			 "ino", (json_int_t)st->ino, "nlink", (json_int_t)st->nlink, "uid", (json_int_t)st->uid,
			 "gid", (json_int_t)st->gid, "rdev", (json_int_t)st->rdev, "blksize", (json_int_t)st->blksize,
			 "blocks", (json_int_t)st->blocks, "isBlockDevice", t == S_IFBLK, "isCharDevice",
			 t == S_IFCHR, "isFifo", t == S_IFIFO, "isSocket", t == S_IFSOCK);
}

/* base64 text to bytes (malloc'd in *out); -EINVAL if it is not base64. */
static int b64_decode(const char *s, unsigned char **out, size_t *n)
{
	size_t len = s ? strlen(s) : 0;
	long r;

	*out = malloc(len / 4 * 3 + 3);
	if (!*out)
		return -ENOMEM;
	r = kd_b64_decode(s, len, *out);
	if (r < 0) {
		free(*out);
		*out = NULL;
		return -EINVAL;
	}
	*n = (size_t)r;
	return 0;
}

/* Bytes as a JSON string, invalid UTF-8 replaced by U+FFFD (readTextFile, §4.10.2). */
static json_t *utf8_json(const unsigned char *p, size_t n)
{
	unsigned char *o = malloc(3 * n + 1);
	size_t i = 0, k = 0;
	json_t *j;

	if (!o)
		return NULL;
	while (i < n) {
		unsigned c = p[i], need = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 :
					(c & 0xf8) == 0xf0 ? 3 : 9;
		unsigned ok = need < 9 && i + need < n + (need == 0);

		for (unsigned a = 1; ok && a <= need; a++)
			ok = i + a < n && (p[i + a] & 0xc0) == 0x80;
		if (ok && need && ((need == 1 && c < 0xc2) || (need == 3 && c > 0xf4)))
			ok = 0;
		if (ok) {
			memcpy(o + k, p + i, need + 1);
			k += need + 1;
			i += need + 1;
		} else {
			memcpy(o + k, "\xef\xbf\xbd", 3);
			k += 3;
			i++;
		}
	}
	j = json_stringn((const char *)o, k);
	if (!j)		/* a surrogate or overlong form jansson still refuses */
		j = json_string("");
	free(o);
	return j;
}

/* ---- whole files -------------------------------------------------------------- */

static void m_read_file(struct rpc *q, int text)
{
	char path[KD_PATH_MAX];
	unsigned char *buf = NULL;
	size_t len = 0, cap = 0;
	uint64_t fh;
	int64_t got;
	int r;

	if (path_param(q, "path", path, sizeof(path)) || !conn(q))
		return;
	if ((r = kac_fh_open(q->c, path, KAC_FH_READ, 0, &fh, &q->err))) {
		agent_fail(q, r, "readfile", path);
		return;
	}
	for (;;) {
		if (kd_v3_aborted(q->v, json_object_get(q->params, "abortId"))) {
			r = -ECANCELED;
			break;
		}
		if (len + RPC_IO_CHUNK > cap) {
			size_t nc = cap ? cap * 2 : 256 * 1024;
			unsigned char *t;

			/* Room for RPC_FILE_MAX and one more read, which tells a file of exactly that size from a bigger one. */
			if (nc > RPC_FILE_MAX + RPC_IO_CHUNK)
				nc = RPC_FILE_MAX + RPC_IO_CHUNK;
			if (nc < len + RPC_IO_CHUNK) {
				r = -EFBIG;
				break;
			}
			t = realloc(buf, nc);
			if (!t) {
				r = -ENOMEM;
				break;
			}
			buf = t;
			cap = nc;
		}
		got = kac_fh_read(q->c, fh, buf + len, RPC_IO_CHUNK, &q->err);
		if (got <= 0) {
			r = (int)got;
			break;
		}
		len += (size_t)got;
		if (len > RPC_FILE_MAX) {
			r = -EFBIG;
			break;
		}
	}
	kac_fh_close(q->c, fh, &q->err);
	if (r == -ECANCELED)
		kd_v3_fail(q->v, q->id, json_pack("{s:s, s:s, s:s, s:n}", "constructorName", "DOMException", "name",
						  "AbortError", "message", "The signal has been aborted", "code"));
	else if (r == -EFBIG)
		kd_v3_fail(q->v, q->id, kd_v3_serr("Error", "EFBIG", "%s is over %u MiB, more than one message may "
						   "carry: read it with fs.open or fs.download", path, RPC_FILE_MAX >> 20));
	else if (r < 0)
		agent_fail(q, r, "readfile", path);
	else
		kd_v3_ok(q->v, q->id, text ? utf8_json(buf, len) : kd_b64_json(buf, len));
	free(buf);
}

/* Write all n bytes at the handle. 0 or -errno. */
static int write_all(struct rpc *q, struct kac *c, uint64_t fh, const unsigned char *p, size_t n)
{
	while (n) {
		int64_t w = kac_fh_write(c, fh, p, n > RPC_IO_CHUNK ? RPC_IO_CHUNK : n, &q->err);

		if (w < 0)
			return (int)w;
		if (w == 0)
			return -EIO;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static void m_write_file(struct rpc *q, int text)
{
	json_t *content = json_object_get(q->params, "content"), *sid = json_object_get(q->params, "contentStreamId");
	json_t *mode = popt(q, "mode");
	unsigned flags = KAC_FH_WRITE;
	char path[KD_PATH_MAX];
	unsigned char *data = NULL;
	size_t n = 0;
	uint64_t fh;
	int r;

	if (path_param(q, "path", path, sizeof(path)))
		goto drop;
	if (json_is_integer(sid) == !!(content && !json_is_null(content))) {
		bad_params(q, "writeFile takes exactly one of content and contentStreamId");
		goto drop;
	}
	if (!json_is_integer(sid)) {
		if (text ? !json_is_string(content) : (!json_is_string(content) ||
							b64_decode(json_string_value(content), &data, &n))) {
			bad_params(q, text ? "content must be a string" : "content must be base64");
			return;
		}
		if (text) {
			n = json_string_length(content);
			data = malloc(n + 1);
			if (!data)
				return;
			memcpy(data, json_string_value(content), n);
		}
	}
	flags |= truthy(popt(q, "append")) ? KAC_FH_APPEND : KAC_FH_TRUNCATE;
	if (truthy(popt(q, "createNew")))
		flags |= KAC_FH_CREATE_NEW;
	else if (!json_is_false(popt(q, "create")))
		flags |= KAC_FH_CREATE;
	if (!conn(q))
		goto drop;
	r = kac_fh_open(q->c, path, flags, json_is_integer(mode) ? (uint32_t)json_integer_value(mode) & 07777 : 0666,
			&fh, &q->err);
	if (r) {
		agent_fail(q, r, "open", path);
		goto drop;
	}
	if (data) {
		r = write_all(q, q->c, fh, data, n);
	} else {
		unsigned char *buf = malloc(RPC_IO_CHUNK);
		ssize_t got = 0;

		r = buf ? 0 : -ENOMEM;
		while (!r && (got = kd_v3_cs_read(q->v, (uint64_t)json_integer_value(sid), buf, RPC_IO_CHUNK)) > 0)
			r = write_all(q, q->c, fh, buf, (size_t)got);
		if (!r && got < 0)
			r = (int)got;
		free(buf);
		kd_v3_cs_drop(q->v, (uint64_t)json_integer_value(sid), r != 0);
		sid = NULL;
	}
	if (kac_fh_close(q->c, fh, &q->err) && !r)
		r = -EIO;
	free(data);
	data = NULL;
	if (r == -EPIPE || r == -EBADF)
		kd_v3_fail(q->v, q->id, kd_v3_serr("Error", NULL, "the content stream of %s ended in an error", path));
	else if (r)
		agent_fail(q, r, "write", path);
	else
		kd_v3_ok(q->v, q->id, NULL);
drop:
	free(data);
	if (json_is_integer(sid))
		kd_v3_cs_drop(q->v, (uint64_t)json_integer_value(sid), 1);
}

/* ---- paths -------------------------------------------------------------------- */

static int dirent_cb(void *arg, const char *name, uint32_t type)
{
	json_t *a = arg;

	json_array_append_new(a, json_pack("{s:s, s:b, s:b, s:b}", "name", name, "isFile", (type & S_IFMT) == S_IFREG,
					   "isDirectory", (type & S_IFMT) == S_IFDIR, "isSymlink",
					   (type & S_IFMT) == S_IFLNK));
	return 0;
}

static void m_path_op(struct rpc *q, const char *m)
{
	char path[KD_PATH_MAX], path2[KD_PATH_MAX];
	struct kac_stat st;
	char *s = NULL;
	json_t *res = NULL;
	int r = 0;

	if (!strcmp(m, "rename") || !strcmp(m, "copyFile")) {
		const char *a = m[0] == 'r' ? "oldPath" : "fromPath", *b = m[0] == 'r' ? "newPath" : "toPath";

		if (path_param(q, a, path, sizeof(path)) || path_param(q, b, path2, sizeof(path2)) || !conn(q))
			return;
		if (m[0] == 'r')
			r = kac_rename(q->c, path, path2, &q->err);
		else
			r = kac_copy(q->c, path, path2, &q->err) < 0 ? -1 : 0;
		if (r) {
			r = r == -1 ? -(int)q->err.code : r;
			if (q->err.code && q->err.code < 4096)
				r = -ENOENT;
		}
		if (r) {
			char both[2 * KD_PATH_MAX + 8];

			snprintf(both, sizeof(both), "%s' -> '%s", path, path2);
			agent_fail(q, r, m[0] == 'r' ? "rename" : "copy", both);
		} else {
			kd_v3_ok(q->v, q->id, NULL);
		}
		return;
	}
	if (!strcmp(m, "link") || !strcmp(m, "symlink")) {
		const char *target = pstr(q, "target");

		if (!target || !*target) {
			bad_params(q, "target must be a non-empty string");
			return;
		}
		if (path_param(q, "path", path, sizeof(path)) || !conn(q))
			return;
		if (m[0] == 'l') {
			char t2[KD_PATH_MAX];

			snprintf(t2, sizeof(t2), target[0] == '/' ? "%s%s" : "%s/%s", target[0] == '/' ? "" : q->v->cwd,
				 target);
			r = kac_link(q->c, t2, path, &q->err);
		} else {
			/* A symlink's target is stored as given: relative targets are relative to the link. */
			r = kac_symlink(q->c, target, path, &q->err);
		}
		if (r)
			agent_fail(q, r, m, path);
		else
			kd_v3_ok(q->v, q->id, NULL);
		return;
	}
	if (!strcmp(m, "truncate")) {
		json_t *len = json_object_get(q->params, "length");

		if (path_param(q, "name", path, sizeof(path)) || !conn(q))
			return;
		r = kac_truncate(q->c, path, json_is_integer(len) && json_integer_value(len) > 0 ?
					     (uint64_t)json_integer_value(len) : 0, &q->err);
		if (r)
			agent_fail(q, r, "truncate", path);
		else
			kd_v3_ok(q->v, q->id, NULL);
		return;
	}
	if (path_param(q, "path", path, sizeof(path)) || !conn(q))
		return;
	if (!strcmp(m, "stat") || !strcmp(m, "lstat")) {
		r = kac_stat(q->c, path, m[0] == 'l', &st, &q->err);
		if (!r)
			res = fileinfo(&st, m[0] == 'l');
	} else if (!strcmp(m, "readDir")) {
		res = json_array();
		r = kac_readdir(q->c, path, dirent_cb, res, &q->err);
	} else if (!strcmp(m, "remove")) {
		r = kac_remove(q->c, path, truthy(popt(q, "recursive")), &q->err);
	} else if (!strcmp(m, "mkdir")) {
		json_t *mode = popt(q, "mode");
		int rec = truthy(popt(q, "recursive"));

		r = kac_mkdir(q->c, path, json_is_integer(mode) ? (uint32_t)json_integer_value(mode) & 07777 : 0777, rec,
			      &q->err);
	} else if (!strcmp(m, "chmod")) {
		json_t *mode = json_object_get(q->params, "mode");

		if (!json_is_integer(mode)) {
			bad_params(q, "mode must be a number");
			return;
		}
		r = kac_chmod(q->c, path, (uint32_t)json_integer_value(mode) & 07777, &q->err);
	} else if (!strcmp(m, "chown")) {
		json_t *u = json_object_get(q->params, "uid"), *g = json_object_get(q->params, "gid");

		r = kac_chown(q->c, path, json_is_integer(u) ? json_integer_value(u) : -1,
			      json_is_integer(g) ? json_integer_value(g) : -1, &q->err);
	} else if (!strcmp(m, "readLink") || !strcmp(m, "realPath")) {
		r = m[1] == 'e' && m[4] == 'L' ? kac_readlink(q->c, path, &s, &q->err)
					       : kac_realpath(q->c, path, &s, &q->err);
		if (!r)
			res = json_string(s);
		free(s);
	} else if (!strcmp(m, "utime")) {
		int64_t a = ns_of_iso(pstr(q, "atime")), mt = ns_of_iso(pstr(q, "mtime"));

		if (a < 0 || mt < 0) {
			bad_params(q, "atime and mtime must be ISO dates");
			return;
		}
		r = kac_utime(q->c, path, a, mt, &q->err);
	}
	if (r) {
		json_decref(res);
		agent_fail(q, r, !strcmp(m, "readDir") ? "readdir" : !strcmp(m, "stat") ? "stat" : m, path);
		return;
	}
	kd_v3_ok(q->v, q->id, res);
}

static void m_umask(struct rpc *q)
{
	json_t *mask = json_object_get(q->params, "mask");
	uint32_t old = 0;
	int r;

	if (!conn(q))
		return;
	r = kac_umask(q->c, json_is_integer(mask), json_is_integer(mask) ? (uint32_t)json_integer_value(mask) & 0777 : 0,
		      &old, &q->err);
	if (r)
		agent_fail(q, r, "umask", NULL);
	else
		kd_v3_ok(q->v, q->id, json_integer(old));
}

static void m_mktemp(struct rpc *q, int dir)
{
	const char *d = json_string_value(popt(q, "dir")), *pre = json_string_value(popt(q, "prefix"));
	const char *suf = json_string_value(popt(q, "suffix"));
	char dpath[KD_PATH_MAX], *out = NULL;
	int r;

	if (d && d[0] != '/') {
		if (snprintf(dpath, sizeof(dpath), "%s/%s", q->v->cwd, d) >= (int)sizeof(dpath)) {
			kd_v3_fail(q->v, q->id, kd_v3_serr_errno(-ENAMETOOLONG, "dir"));
			return;
		}
		d = dpath;
	}
	if (!conn(q))
		return;
	r = kac_mktemp(q->c, dir, d, pre, dir ? NULL : suf, &out, &q->err);
	if (!r && dir && suf && *suf) {
		/* The agent's MKTEMP gives a directory no suffix: its random name gets one by a rename. */
		char *named = NULL;

		if (strchr(suf, '/') || asprintf(&named, "%s%s", out, suf) < 0) {
			r = -EINVAL;
		} else if ((r = kac_rename(q->c, out, named, &q->err))) {
			kac_remove(q->c, out, 0, &q->err);
		} else {
			free(out);
			out = named;
			named = NULL;
		}
		free(named);
	}
	if (r)
		agent_fail(q, r, dir ? "mkdtemp" : "mkstemp", d ? d : "/tmp");
	else
		kd_v3_ok(q->v, q->id, json_string(out));
	free(out);
}

/* ---- file handles (one connection per socket: the agent's handles are per connection) ---- */

static struct kac *fh_conn(struct rpc *q)
{
	int r;

	if (!q->v->fh) {
		r = kac_connect(&q->v->fh, q->v->pool->vsock, KAC_TIMEOUT_DEFAULT_MS, &q->err);
		if (r) {
			q->v->fh = NULL;
			kd_v3_fail(q->v, q->id, kd_v3_serr("Error", NULL, "cannot reach the sandbox's agent: %s",
							   q->err.msg));
			return NULL;
		}
		/* fileLock waits for as long as another holder keeps the lock. */
		kac_set_timeout(q->v->fh, KAC_TIMEOUT_DEFAULT_MS);
		kac_set_fs_user(q->v->fh, 1);
	}
	return q->v->fh;
}

static int fh_param(struct rpc *q, uint64_t *fh)
{
	json_t *j = json_object_get(q->params, "fileHandleId");

	if (!json_is_integer(j) || json_integer_value(j) < 0) {
		kd_v3_fail(q->v, q->id, kd_v3_serr("BadResource", "EBADF", "Bad resource ID"));
		return -1;
	}
	*fh = (uint64_t)json_integer_value(j);
	return 0;
}

static void m_fh(struct rpc *q, const char *m)
{
	struct kd_v3 *v = q->v;
	char path[KD_PATH_MAX];
	struct kac_stat st;
	json_t *res = NULL;
	struct kac *c;
	uint64_t fh = 0;
	int r = 0;

	if (!strcmp(m, "open") || !strcmp(m, "create")) {
		unsigned flags = 0;
		json_t *mode = popt(q, "mode");

		if (path_param(q, "path", path, sizeof(path)))
			return;
		if (m[0] == 'c') {
			flags = KAC_FH_READ | KAC_FH_WRITE | KAC_FH_CREATE | KAC_FH_TRUNCATE;
		} else {
			flags |= truthy(popt(q, "read")) ? KAC_FH_READ : 0;
			flags |= truthy(popt(q, "write")) ? KAC_FH_WRITE : 0;
			flags |= truthy(popt(q, "append")) ? KAC_FH_APPEND : 0;
			flags |= truthy(popt(q, "truncate")) ? KAC_FH_TRUNCATE : 0;
			flags |= truthy(popt(q, "create")) ? KAC_FH_CREATE : 0;
			flags |= truthy(popt(q, "createNew")) ? KAC_FH_CREATE_NEW : 0;
			if (!flags)
				flags = KAC_FH_READ;
		}
		pthread_mutex_lock(&v->fh_m);
		if ((c = fh_conn(q)))
			r = kac_fh_open(c, path, flags, json_is_integer(mode) ? (uint32_t)json_integer_value(mode) & 07777
									      : 0666, &fh, &q->err);
		pthread_mutex_unlock(&v->fh_m);
		if (!c)
			return;
		if (r)
			agent_fail(q, r, "open", path);
		else
			kd_v3_ok(v, q->id, json_pack("{s:I}", "fileHandleId", (json_int_t)fh));
		q->broken = 0;
		return;
	}
	if (fh_param(q, &fh))
		return;
	pthread_mutex_lock(&v->fh_m);
	c = fh_conn(q);
	if (!c) {
		pthread_mutex_unlock(&v->fh_m);
		return;
	}
	if (!strcmp(m, "fileRead")) {
		json_t *len = json_object_get(q->params, "length");
		size_t want = json_is_integer(len) && json_integer_value(len) > 0 ? (size_t)json_integer_value(len) : 0;
		unsigned char *buf;
		size_t got = 0;

		if (want > (16u << 20))
			want = 16u << 20;
		buf = malloc(want ? want : 1);
		while (buf && got < want) {
			int64_t n = kac_fh_read(c, fh, buf + got, want - got > RPC_IO_CHUNK ? RPC_IO_CHUNK : want - got,
						&q->err);

			if (n < 0) {
				r = (int)n;
				break;
			}
			if (n == 0)
				break;
			got += (size_t)n;
			if (got < want && (size_t)n < RPC_IO_CHUNK)
				break;	/* a short read: give what there is */
		}
		if (!r)
			/* EOF is null, never "" (§4.10.4): FsFile.readable loops until null. */
			res = json_pack("{s:o}", "data", got ? kd_b64_json(buf, got) : json_null());
		free(buf);
	} else if (!strcmp(m, "fileWrite")) {
		unsigned char *data = NULL;
		size_t n = 0;

		if (b64_decode(pstr(q, "data"), &data, &n)) {
			pthread_mutex_unlock(&v->fh_m);
			bad_params(q, "data must be base64");
			return;
		}
		r = n ? write_all(q, c, fh, data, n) : 0;
		free(data);
		if (!r && !n)
			r = -EINVAL;	/* bytesWritten 0 would spin FsFile.writable */
		if (!r)
			res = json_pack("{s:I}", "bytesWritten", (json_int_t)n);
	} else if (!strcmp(m, "fileSeek")) {
		json_t *off = json_object_get(q->params, "offset"), *wh = json_object_get(q->params, "whence");
		long long o = json_is_integer(off) ? json_integer_value(off) :
			      json_is_string(off) ? strtoll(json_string_value(off), NULL, 10) : 0;
		int64_t pos = kac_fh_seek(c, fh, o, json_is_integer(wh) ? (int)json_integer_value(wh) : 0, &q->err);

		if (pos < 0)
			r = (int)pos;
		else
			res = json_pack("{s:I}", "position", (json_int_t)pos);
	} else if (!strcmp(m, "fileStat")) {
		r = kac_fh_stat(c, fh, &st, &q->err);
		if (!r)
			res = fileinfo(&st, 0);
	} else if (!strcmp(m, "fileTruncate")) {
		json_t *len = json_object_get(q->params, "len");

		r = kac_fh_truncate(c, fh, json_is_integer(len) && json_integer_value(len) > 0 ?
					   (uint64_t)json_integer_value(len) : 0, &q->err);
	} else if (!strcmp(m, "fileSync") || !strcmp(m, "fileSyncData")) {
		r = kac_fh_sync(c, fh, m[8] == 'D', &q->err);
	} else if (!strcmp(m, "fileUtime")) {
		int64_t a = ns_of_iso(pstr(q, "atime")), mt = ns_of_iso(pstr(q, "mtime"));

		r = a < 0 || mt < 0 ? -EINVAL : kac_fh_utime(c, fh, a, mt, &q->err);
	} else if (!strcmp(m, "fileLock")) {
		r = kac_fh_lock(c, fh, truthy(json_object_get(q->params, "exclusive")), &q->err);
	} else if (!strcmp(m, "fileUnlock")) {
		r = kac_fh_unlock(c, fh, &q->err);
	} else if (!strcmp(m, "fileClose")) {
		r = kac_fh_close(c, fh, &q->err);
	}
	if (r && (q->err.code == 0 || q->err.code == KAC_ERR_TIMEOUT) && r != -EINVAL) {
		/* The connection is gone, and with it every handle it held. */
		kac_close(v->fh);
		v->fh = NULL;
	}
	pthread_mutex_unlock(&v->fh_m);
	if (r) {
		q->broken = 0;	/* not a pool connection */
		agent_fail(q, r, m, NULL);
		q->broken = 0;
	} else {
		kd_v3_ok(v, q->id, res);
	}
}

/* ---- walk and expandGlob ------------------------------------------------------- */

/* A JS regex source as a POSIX extended one, for the common subset (\d, \w, \s and their negations). */
static int re_compile(regex_t *re, const char *src, const char *flags)
{
	size_t n = strlen(src);
	char *o = malloc(n * 12 + 1), *q = o;
	int r;

	if (!o)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (src[i] == '\\' && i + 1 < n) {
			const char *rep = NULL;

			switch (src[++i]) {
			case 'd': rep = "[0-9]"; break;
			case 'D': rep = "[^0-9]"; break;
			case 'w': rep = "[A-Za-z0-9_]"; break;
			case 'W': rep = "[^A-Za-z0-9_]"; break;
			case 's': rep = "[[:space:]]"; break;
			case 'S': rep = "[^[:space:]]"; break;
			case '/': rep = "/"; break;
			}
			if (rep) {
				q += sprintf(q, "%s", rep);
			} else {
				*q++ = '\\';
				*q++ = src[i];
			}
		} else {
			*q++ = src[i];
		}
	}
	*q = '\0';
	r = regcomp(re, o, REG_EXTENDED | REG_NOSUB | (flags && strchr(flags, 'i') ? REG_ICASE : 0));
	free(o);
	return r ? -1 : 0;
}

struct walk {
	struct rpc *q;
	uint64_t sid;
	int files, dirs, links;
	json_t *exts;
	regex_t match[RPC_RE_MAX], skip[RPC_RE_MAX];
	int nmatch, nskip;
	regex_t glob;			/* expandGlob: the whole pattern, anchored */
	int is_glob;
	regex_t excl[RPC_RE_MAX];
	int nexcl;
	json_t *found;			/* expandGlob: entries, sorted before they go */
	int cancelled;
};

static int walk_cb(void *arg, const char *path, const char *name, uint32_t type)
{
	struct walk *w = arg;
	unsigned t = type & S_IFMT;
	json_t *e;
	char *s;
	int r = 0;

	if (kd_v3_sid_cancelled(w->q->v, w->sid))
		return -ECANCELED;
	if ((t == S_IFREG && !w->files) || (t == S_IFDIR && !w->dirs) || (t == S_IFLNK && !w->links))
		return 0;
	if (w->exts && json_array_size(w->exts) && t != S_IFDIR) {
		size_t i, ok = 0, nl = strlen(name);
		json_t *x;

		json_array_foreach(w->exts, i, x) {
			const char *ext = json_string_value(x);
			char dot[80];

			if (!ext)
				continue;
			snprintf(dot, sizeof(dot), "%s%s", ext[0] == '.' ? "" : ".", ext);
			ok |= nl >= strlen(dot) && !strcmp(name + nl - strlen(dot), dot);
		}
		if (!ok)
			return 0;
	}
	for (int i = 0; i < w->nmatch; i++)
		if (regexec(&w->match[i], path, 0, NULL, 0))
			return 0;
	for (int i = 0; i < w->nskip; i++)
		if (!regexec(&w->skip[i], path, 0, NULL, 0))
			return 0;
	if (w->is_glob) {
		if (regexec(&w->glob, path, 0, NULL, 0))
			return 0;
		for (int i = 0; i < w->nexcl; i++)
			if (!regexec(&w->excl[i], path, 0, NULL, 0))
				return 0;
	}
	e = json_pack("{s:s, s:s, s:b, s:b, s:b}", "path", path, "name", name, "isFile", t == S_IFREG, "isDirectory",
		      t == S_IFDIR, "isSymlink", t == S_IFLNK);
	if (w->found) {
		json_array_append_new(w->found, e);
		return json_array_size(w->found) > 1000000 ? -E2BIG : 0;
	}
	/* One JSON document per chunk (§4.6): the SDK parses each chunk alone. */
	s = json_dumps(e, JSON_COMPACT);
	json_decref(e);
	if (!s)
		return -ENOMEM;
	if (kd_v3_stream_data(w->q->v, w->sid, s, strlen(s)) < 0)
		r = -EPIPE;
	free(s);
	return r;
}

static int walk_regexes(json_t *a, regex_t *out, int *n)
{
	size_t i;
	json_t *e;

	json_array_foreach(a, i, e) {
		const char *src = json_string_value(json_object_get(e, "source"));

		if (*n == RPC_RE_MAX || !src || re_compile(&out[*n], src, json_string_value(json_object_get(e, "flags"))))
			return -1;
		(*n)++;
	}
	return 0;
}

/* A glob (@std/path's globToRegExp, the common subset: **, *, ?, [...], {a,b}) as an anchored ERE. */
static int glob_compile(regex_t *re, const char *g, int extended, int icase)
{
	size_t n = strlen(g);
	char *o = malloc(n * 8 + 8), *q = o;
	int depth = 0, r;

	if (!o)
		return -1;
	*q++ = '^';
	for (size_t i = 0; i < n; i++) {
		char c = g[i];

		if (c == '*' && g[i + 1] == '*') {
			i++;
			if (g[i + 1] == '/') {
				i++;
				q += sprintf(q, "(.*/)?");
			} else {
				q += sprintf(q, ".*");
			}
		} else if (c == '*') {
			q += sprintf(q, "[^/]*");
		} else if (c == '?') {
			q += sprintf(q, "[^/]");
		} else if (c == '[') {
			*q++ = '[';
			if (g[i + 1] == '!') {
				*q++ = '^';
				i++;
			}
			while (++i < n && g[i] != ']')
				*q++ = g[i];
			*q++ = ']';
		} else if (extended && c == '{') {
			*q++ = '(';
			depth++;
		} else if (extended && c == '}' && depth) {
			*q++ = ')';
			depth--;
		} else if (extended && c == ',' && depth) {
			*q++ = '|';
		} else {
			if (strchr(".^$+(){}|\\", c))
				*q++ = '\\';
			*q++ = c;
		}
	}
	while (depth--)
		*q++ = ')';
	*q++ = '$';
	*q = '\0';
	r = regcomp(re, o, REG_EXTENDED | REG_NOSUB | (icase ? REG_ICASE : 0));
	free(o);
	return r ? -1 : 0;
}

static int cmp_path(const void *a, const void *b)
{
	return strcmp(json_string_value(json_object_get(*(json_t *const *)a, "path")),
		      json_string_value(json_object_get(*(json_t *const *)b, "path")));
}

static void m_walk(struct rpc *q, int glob)
{
	struct walk w;
	char root[KD_PATH_MAX], start[KD_PATH_MAX], pat[2 * KD_PATH_MAX];
	json_t *md = json_object_get(q->params, "maxDepth");
	uint64_t depth = json_is_integer(md) && json_integer_value(md) >= 0 ? (uint64_t)json_integer_value(md)
									      : KAC_WALK_ALL;
	int follow = truthy(json_object_get(q->params, "followSymlinks")), r;
	char *real = NULL;

	memset(&w, 0, sizeof(w));
	w.q = q;
	w.files = !json_is_false(json_object_get(q->params, "includeFiles"));
	w.dirs = !json_is_false(json_object_get(q->params, "includeDirs"));
	w.links = !json_is_false(json_object_get(q->params, "includeSymlinks"));
	if (!glob) {
		if (path_param(q, "path", root, sizeof(root)))
			return;
		w.exts = json_object_get(q->params, "exts");
		if (walk_regexes(json_object_get(q->params, "match"), w.match, &w.nmatch) ||
		    walk_regexes(json_object_get(q->params, "skip"), w.skip, &w.nskip)) {
			bad_params(q, "match and skip must be at most 8 regexes kilnd can read ({source, flags})");
			goto out;
		}
		snprintf(start, sizeof(start), "%s", root);
	} else {
		const char *g = pstr(q, "glob"), *rt = pstr(q, "root");
		size_t fixed = 0;
		json_t *ex, *e;
		size_t i;

		if (!g || !*g) {
			bad_params(q, "glob must be a non-empty string");
			return;
		}
		if (g[0] == '/')
			snprintf(root, sizeof(root), "/");
		else if (rt && rt[0] == '/')
			snprintf(root, sizeof(root), "%s", rt);
		else
			if (snprintf(root, sizeof(root), "%s%s%s", q->v->cwd, rt ? "/" : "", rt ? rt : "") >=
			    (int)sizeof(root)) {
				kd_v3_fail(q->v, q->id, kd_v3_serr_errno(-ENAMETOOLONG, "root"));
				return;
			}
		snprintf(pat, sizeof(pat), "%s%s%s", g[0] == '/' ? "" : root,
			 g[0] == '/' || root[strlen(root) - 1] == '/' ? "" : "/", g);
		/* Walk from the pattern's fixed directories only. */
		for (size_t k = 0; pat[k] && !strchr("*?[{", pat[k]); k++)
			if (pat[k] == '/')
				fixed = k;
		snprintf(start, sizeof(start), "%.*s", fixed ? (int)fixed : 1, pat);
		w.links = 1;
		w.files = 1;
		w.is_glob = 1;
		if (glob_compile(&w.glob, pat, !json_is_false(json_object_get(q->params, "extended")),
				 truthy(json_object_get(q->params, "caseInsensitive")))) {
			bad_params(q, "glob is not a pattern kilnd can read");
			return;
		}
		ex = json_object_get(q->params, "exclude");
		json_array_foreach(ex, i, e) {
			char ep[2 * KD_PATH_MAX];
			const char *s = json_string_value(e);

			if (!s || w.nexcl == RPC_RE_MAX)
				continue;
			snprintf(ep, sizeof(ep), "%s%s%s", s[0] == '/' ? "" : root, s[0] == '/' ? "" : "/", s);
			if (!glob_compile(&w.excl[w.nexcl], ep, 1, 0))
				w.nexcl++;
		}
		w.found = json_array();
		follow = truthy(json_object_get(q->params, "followSymlinks"));
	}
	if (!conn(q))
		goto out;
	if (!glob && !json_is_false(json_object_get(q->params, "canonicalize")) &&
	    !kac_realpath(q->c, start, &real, &q->err))
		snprintf(start, sizeof(start), "%s", real);
	free(real);
	w.sid = kd_v3_sid_new();
	kd_v3_ok(q->v, q->id, json_pack("{s:I}", "streamId", (json_int_t)w.sid));
	kd_v3_stream_start(q->v, w.sid);
	r = kac_walk(q->c, start, depth, follow, walk_cb, &w, &q->err);
	if (glob && r == -ENOENT)
		r = 0;	/* a pattern whose directory is missing matches nothing */
	if (!r && w.found) {
		size_t n = json_array_size(w.found);
		json_t **v = malloc((n ? n : 1) * sizeof(*v));

		for (size_t i = 0; v && i < n; i++)
			v[i] = json_array_get(w.found, i);
		if (v)
			qsort(v, n, sizeof(*v), cmp_path);
		for (size_t i = 0; v && i < n && !r; i++) {
			char *s = json_dumps(v[i], JSON_COMPACT);

			if (!s || (!w.dirs && json_is_true(json_object_get(v[i], "isDirectory")))) {
				free(s);
				continue;
			}
			if (kd_v3_stream_data(q->v, w.sid, s, strlen(s)) < 0)
				r = -EPIPE;
			free(s);
		}
		free(v);
	}
	if (r == -ECANCELED || r == -EPIPE)
		kd_v3_stream_end(q->v, w.sid);
	else if (r)
		kd_v3_stream_error(q->v, w.sid, kd_v3_serr_errno(r, "walk '%s'", start));
	else
		kd_v3_stream_end(q->v, w.sid);
	if (r && r != -ECANCELED && r != -EPIPE && (q->err.code == 0 || q->err.code == KAC_ERR_TIMEOUT))
		q->broken = 1;
out:
	for (int i = 0; i < w.nmatch; i++)
		regfree(&w.match[i]);
	for (int i = 0; i < w.nskip; i++)
		regfree(&w.skip[i]);
	for (int i = 0; i < w.nexcl; i++)
		regfree(&w.excl[i]);
	if (w.is_glob)
		regfree(&w.glob);
	json_decref(w.found);
}

/* ---- processes ------------------------------------------------------------------ */

static const struct {
	const char *name;
	int sig;
} sigs[] = {
	{ "SIGABRT", SIGABRT }, { "SIGALRM", SIGALRM }, { "SIGBUS", SIGBUS }, { "SIGCHLD", SIGCHLD },
	{ "SIGCONT", SIGCONT }, { "SIGFPE", SIGFPE }, { "SIGHUP", SIGHUP }, { "SIGILL", SIGILL },
	{ "SIGINT", SIGINT }, { "SIGIO", SIGIO }, { "SIGPOLL", SIGPOLL }, { "SIGKILL", SIGKILL },
	{ "SIGPIPE", SIGPIPE }, { "SIGPROF", SIGPROF }, { "SIGPWR", SIGPWR }, { "SIGQUIT", SIGQUIT },
	{ "SIGSEGV", SIGSEGV }, { "SIGSTKFLT", SIGSTKFLT }, { "SIGSTOP", SIGSTOP }, { "SIGSYS", SIGSYS },
	{ "SIGTERM", SIGTERM }, { "SIGTRAP", SIGTRAP }, { "SIGTSTP", SIGTSTP }, { "SIGTTIN", SIGTTIN },
	{ "SIGTTOU", SIGTTOU }, { "SIGURG", SIGURG }, { "SIGUSR1", SIGUSR1 }, { "SIGUSR2", SIGUSR2 },
	{ "SIGVTALRM", SIGVTALRM }, { "SIGWINCH", SIGWINCH }, { "SIGXCPU", SIGXCPU }, { "SIGXFSZ", SIGXFSZ },
};

static const char *sig_name(int sig)
{
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		if (sigs[i].sig == sig && strcmp(sigs[i].name, "SIGPOLL"))
			return sigs[i].name;
	return NULL;
}

static struct kd_v3_proc *proc_find(struct kd_v3 *v, uint64_t handle)
{
	for (struct kd_v3_proc *p = v->procs; p; p = p->next)
		if (p->handle == handle)
			return p;
	return NULL;
}

struct spawn {
	struct rpc *q;
	struct kd_v3_proc *p;
	uint64_t sid[3];		/* 1 stdout, 2 stderr; 0: "null" */
	int replied;
	const char *watcher;		/* spawnDeno --watch: its watcherId (restarts are told) */
	int deno;			/* spawnDeno: the answer has a watcherId */
	int own;			/* fetch: out() answers the request itself */
	int (*out)(struct spawn *s, int chan, const void *p, size_t n);
	void *ctx;			/* out()'s */
	int exit_code;
	int repl;			/* spawnDenoRepl: stdin is repl_rd/repl_wr, stderr carries answers */
	int repl_rd, repl_wr;
	char *rline;			/* an answer line being read (RS .. LF) */
	size_t rlen;
	int in_answer, mid_line;			/* the process's exit status when it ended (own) */
};

static void spawn_started(void *arg, uint64_t pid)
{
	struct spawn *s = arg;
	struct kd_v3 *v = s->q->v;
	unsigned n = 0;

	(void)pid;
	s->p->handle = s->p->ex.handle;
	pthread_mutex_lock(&v->m);
	/* Keep at most RPC_PROCS_MAX statuses: forget the oldest finished ones. */
	for (struct kd_v3_proc **pp = &v->procs; *pp;) {
		if (++n >= RPC_PROCS_MAX && (*pp)->done) {
			struct kd_v3_proc *d = *pp;

			*pp = d->next;
			json_decref(d->replies);
			free(d);
			continue;
		}
		pp = &(*pp)->next;
	}
	s->p->repl_in = -1;
	if (s->repl) {
		s->p->repl = 1;
		s->p->repl_in = s->repl_wr;
		s->p->replies = json_array();
	}
	s->p->next = v->procs;
	v->procs = s->p;
	pthread_mutex_unlock(&v->m);
	s->replied = 1;
	if (s->own)
		return;
	json_t *res = json_pack("{s:I, s:o, s:o}", "pid", (json_int_t)s->p->handle, "stdoutStreamId",
				s->sid[1] ? json_integer((json_int_t)s->sid[1]) : json_null(), "stderrStreamId",
				s->sid[2] ? json_integer((json_int_t)s->sid[2]) : json_null());

	if (s->deno)
		json_object_set_new(res, "watcherId", s->watcher ? json_string(s->watcher) : json_null());
	kd_v3_ok(v, s->q->id, res);
	for (int ch = 1; ch <= 2; ch++)
		if (s->sid[ch])
			kd_v3_stream_start(v, s->sid[ch]);
}

static int spawn_out(void *arg, int chan, const void *p, size_t n);

/* An answer line from the REPL (without RS and LF): to its proc, for the request waiting on it. */
static void repl_answer(struct spawn *s, const char *line, size_t n)
{
	json_t *a = json_loadb(line, n, 0, NULL);
	struct kd_v3 *v = s->q->v;

	if (!json_is_object(a) || !json_is_integer(json_object_get(a, "id"))) {
		json_decref(a);
		return;
	}
	pthread_mutex_lock(&v->m);
	json_array_append_new(s->p->replies, a);
	pthread_cond_broadcast(&v->cv);
	pthread_mutex_unlock(&v->m);
}

/* The REPL's stderr: lines that start with RS are answers; the rest is the program's and goes to the SDK. */
static int repl_filter(struct spawn *s, const unsigned char *p, size_t n)
{
	size_t i = 0, start = 0;

	while (i < n) {
		if (s->in_answer) {
			const unsigned char *nl = memchr(p + i, '\n', n - i);
			size_t k = nl ? (size_t)(nl - (p + i)) : n - i;

			if (s->rlen + k <= (8u << 20)) {
				char *t = realloc(s->rline, s->rlen + k + 1);

				if (t) {
					memcpy(t + s->rlen, p + i, k);
					s->rline = t;
					s->rlen += k;
				}
			}
			i += k;
			if (nl) {
				repl_answer(s, s->rline, s->rlen);
				s->rlen = 0;
				s->in_answer = 0;
				s->mid_line = 0;
				i++;
			}
			start = i;
			continue;
		}
		if (!s->mid_line && p[i] == 0x1e) {
			if (i > start) {
				s->repl = 0;
				spawn_out(s, 2, p + start, i - start);
				s->repl = 1;
			}
			s->in_answer = 1;
			i++;
			continue;
		}
		s->mid_line = p[i] != '\n';
		i++;
	}
	if (!s->in_answer && n > start) {
		s->repl = 0;
		spawn_out(s, 2, p + start, n - start);
		s->repl = 1;
	}
	return 0;
}

/* Output of the process: to its stream in chunks; a full queue to the client stalls the guest process. */
static int spawn_out(void *arg, int chan, const void *p, size_t n)
{
	struct spawn *s = arg;
	const unsigned char *b = p;

	if (s->out)
		return s->out(s, chan, p, n);
	if (s->repl && chan == 2)
		return repl_filter(s, p, n);
	/* deno --watch says so on stderr when it restarts the program (§4.10.7). */
	if (s->watcher && chan == 2 && memmem(p, n, "Restarting!", 11))
		kd_v3_send(s->q->v, json_pack("{s:s, s:s, s:{s:s}}", "jsonrpc", "2.0", "method",
					      "$sandbox.deno.watcher.restart", "params", "watcherId", s->watcher), 1);
	if (chan < 1 || chan > 2 || !s->sid[chan] || kd_v3_sid_cancelled(s->q->v, s->sid[chan]))
		return 0;
	while (n) {
		size_t k = n > RPC_CHUNK ? RPC_CHUNK : n;

		if (kd_v3_stream_data(s->q->v, s->sid[chan], b, k) < 0)
			return 0;	/* the socket closed: the process runs on, its output dropped */
		b += k;
		n -= k;
	}
	return 0;
}

struct feeder {
	struct kd_v3 *v;
	uint64_t id;
	int fd;
};

/* stdin: the client's stream into the pipe the agent reads. */
static void *feed_main(void *arg)
{
	struct feeder *f = arg;
	unsigned char buf[65536];
	ssize_t n;

	while ((n = kd_v3_cs_read(f->v, f->id, buf, sizeof(buf))) > 0)
		if (write_full(f->fd, buf, (size_t)n) < 0)
			break;
	close(f->fd);
	f->fd = -1;
	return NULL;
}

/*
 * Run params' command (spawn's params: command, args, env, cwd,
 * stdinStreamId, stdout, stderr) as the process of s. Answers the request
 * unless s->own. Returns when the process has exited: 0, or -errno if it
 * never started (answered) or the agent went away.
 */
static int spawn_run(struct rpc *q, struct spawn *preset)
{
	struct kd_v3 *v = q->v;
	const char *cmd = pstr(q, "command"), *cwd = pstr(q, "cwd");
	json_t *args = json_object_get(q->params, "args"), *env = json_object_get(q->params, "env");
	json_t *in = json_object_get(q->params, "stdinStreamId");
	const char **argv = NULL, **envv = NULL;
	struct kac_exec_opts o;
	struct spawn s;
	struct feeder fd = { v, 0, -1 };
	pthread_t feeder;
	int pipefd[2] = { -1, -1 }, have_feeder = 0, r;
	char cwdbuf[KD_PATH_MAX];
	size_t na = json_array_size(args), ne = json_object_size(env), i = 0;
	const char *k;
	json_t *val;

	int ret = -EINVAL;

	s = *preset;
	s.q = q;
	if (!cmd || !*cmd) {
		bad_params(q, "command must be a non-empty string");
		goto drop_in;
	}
	argv = calloc(na + 2, sizeof(*argv));
	envv = calloc(ne + 1, sizeof(*envv));
	s.p = calloc(1, sizeof(*s.p));
	if (!argv || !envv || !s.p)
		goto drop_in;
	argv[0] = cmd;
	for (i = 0; i < na; i++)
		if (!(argv[i + 1] = json_string_value(json_array_get(args, i)))) {
			bad_params(q, "args must be strings");
			goto drop_in;
		}
	i = 0;
	json_object_foreach(env, k, val) {
		char *e;

		if (!json_is_string(val) || asprintf(&e, "%s=%s", k, json_string_value(val)) < 0)
			continue;
		envv[i++] = e;
	}
	if (cwd && cwd[0] != '/') {
		if (snprintf(cwdbuf, sizeof(cwdbuf), "%s/%s", v->cwd, cwd) >= (int)sizeof(cwdbuf)) {
			kd_v3_fail(v, q->id, kd_v3_serr_errno(-ENAMETOOLONG, "cwd"));
			goto drop_in;
		}
		cwd = cwdbuf;
	}
	for (int ch = 1; ch <= 2; ch++)
		if (!json_is_string(json_object_get(q->params, ch == 1 ? "stdout" : "stderr")) ||
		    strcmp(pstr(q, ch == 1 ? "stdout" : "stderr"), "null"))
			s.sid[ch] = kd_v3_sid_new();
	memset(&o, 0, sizeof(o));
	o.argv = argv;
	o.env = envv;
	o.cwd = cwd ? cwd : v->cwd;
	o.stdin_fd = -1;
	o.stdout_fd = o.stderr_fd = -1;
	o.out_fn = spawn_out;
	o.out_arg = &s;
	o.sig_fd = -1;
	o.tty_fd = -1;
	o.started_fn = spawn_started;
	o.started_arg = &s;
	if (s.repl) {
		o.stdin_fd = s.repl_rd;
	} else if (json_is_integer(in)) {
		if (pipe2(pipefd, O_CLOEXEC))
			goto drop_in;
		fd.id = (uint64_t)json_integer_value(in);
		fd.fd = pipefd[1];
		if (pthread_create(&feeder, NULL, feed_main, &fd)) {
			close(pipefd[0]);
			close(pipefd[1]);
			goto drop_in;
		}
		have_feeder = 1;
		o.stdin_fd = pipefd[0];
	}
	if (!conn(q))
		goto stop_feeder;
	/* Processes outlive their request: no timeout on the call itself. */
	r = kac_exec(q->c, &o, &s.p->ex, &q->err);
	ret = r;
	preset->exit_code = (int)(s.p->ex.signal ? 128 + s.p->ex.signal : s.p->ex.code);
	preset->replied = s.replied;
	if (!s.replied) {
		ret = r ? r : -EIO;
		if (s.own)
			goto stop_feeder;	/* the caller answers */
		if (r == -ENOENT || r == -EACCES)
			kd_v3_fail(v, q->id, kd_v3_serr_errno(r, "Failed to spawn '%s'", cmd));
		else
			agent_fail(q, r ? r : -EIO, "spawn", cmd);
		if (r && (q->err.code == 0 || q->err.code == KAC_ERR_TIMEOUT))
			q->broken = 1;
		goto stop_feeder;
	}
	if (r)
		q->broken = 1;
	/* All output before the status (§4.10.6): processWait answers after these ends. */
	for (int ch = 1; ch <= 2 && !s.own; ch++)
		if (s.sid[ch]) {
			if (r && r != -ENOENT)
				kd_v3_stream_error(v, s.sid[ch], kd_v3_serr("Error", NULL, "the sandbox's agent went "
									    "away: %s", q->err.msg));
			else
				kd_v3_stream_end(v, s.sid[ch]);
		}
	pthread_mutex_lock(&v->m);
	if (r) {
		/* Lost, not exited: report it as killed so nobody waits forever. */
		s.p->ex.code = -1;
		s.p->ex.signal = SIGKILL;
	}
	s.p->done = 1;
	if (s.p->repl_in >= 0)
		close(s.p->repl_in);
	s.p->repl_in = -1;
	pthread_cond_broadcast(&v->cv);
	pthread_mutex_unlock(&v->m);
	s.p = NULL;	/* v->procs owns it */
stop_feeder:
	if (have_feeder) {
		close(pipefd[0]);
		/* The feeder may wait for client data that will never matter now. */
		kd_v3_cs_drop(v, fd.id, 1);
		pthread_join(feeder, NULL);
		in = NULL;
	}
drop_in:
	if (json_is_integer(in))
		kd_v3_cs_drop(v, (uint64_t)json_integer_value(in), 1);
	if (s.p && !s.replied)
		free(s.p);
	for (i = 0; envv && envv[i]; i++)
		free((char *)envv[i]);
	free(envv);
	free(argv);
	free(s.rline);
	return ret;
}

static void m_spawn(struct rpc *q)
{
	struct spawn s;

	memset(&s, 0, sizeof(s));
	spawn_run(q, &s);
}

/* Copy the spawn-like keys of the request's params into o. */
static void copy_spawn_keys(const struct rpc *q, json_t *o)
{
	static const char *const keys[] = { "env", "clearEnv", "cwd", "stdinStreamId", "stdout", "stderr" };

	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		json_t *v = json_object_get(q->params, keys[i]);

		if (v && !json_is_null(v))
			json_object_set(o, keys[i], v);
	}
}

/* deno asks dl.deno.land for a newer release at every start: not from a sandbox whose network is closed. */
static void deno_env(json_t *params)
{
	json_t *env = json_object_get(params, "env");

	if (!json_is_object(env)) {
		env = json_object();
		json_object_set_new(params, "env", env);
	}
	if (!json_object_get(env, "DENO_NO_UPDATE_CHECK"))
		json_object_set_new(env, "DENO_NO_UPDATE_CHECK", json_string("1"));
}

/* Code to a file in the guest's /tmp, readable by the image's user; its path in out. 0, or -1 having answered. */
static int code_file(struct rpc *q, const char *code, const char *ext, char *out, size_t n)
{
	char suffix[16], *path = NULL;
	uint64_t fh;
	int r;

	snprintf(suffix, sizeof(suffix), ".%s", ext);
	if (!conn(q))
		return -1;
	r = kac_mktemp(q->c, 0, "/tmp", "kiln-deno-", suffix, &path, &q->err);
	if (!r)
		r = kac_chmod(q->c, path, 0644, &q->err);
	if (!r)
		r = kac_fh_open(q->c, path, KAC_FH_WRITE | KAC_FH_TRUNCATE, 0644, &fh, &q->err);
	if (!r) {
		r = write_all(q, q->c, fh, (const unsigned char *)code, strlen(code));
		if (kac_fh_close(q->c, fh, &q->err) && !r)
			r = -EIO;
	}
	if (r) {
		agent_fail(q, r, "write", path ? path : "/tmp");
		free(path);
		return -1;
	}
	snprintf(out, n, "%s", path);
	free(path);
	return 0;
}

/* spawnDeno (§4.10.7): deno run -A [--watch] ENTRYPOINT|CODEFILE ARGS..., with the deno in the image. */
static void m_spawn_deno(struct rpc *q)
{
	static const char *const exts[] = { "js", "cjs", "mjs", "ts", "cts", "mts", "jsx", "tsx" };
	const char *entry = pstr(q, "entrypoint"), *code = pstr(q, "code"), *ext = pstr(q, "extension");
	json_t *watch = json_object_get(q->params, "watch"), *sargs = json_object_get(q->params, "scriptArgs");
	json_t *params = json_object(), *args = json_array(), *saved = q->params, *e;
	char file[KD_PATH_MAX], wid[40], watchopt[4096];
	struct spawn s;
	size_t i;
	int ok = 0;

	memset(&s, 0, sizeof(s));
	s.deno = 1;
	if (!!entry == !!code) {
		bad_params(q, "spawnDeno takes exactly one of entrypoint and code");
		goto out;
	}
	if (code) {
		for (i = 0; i < sizeof(exts) / sizeof(exts[0]); i++)
			ok |= ext && !strcmp(ext, exts[i]);
		if (!ok) {
			bad_params(q, "extension must be one of js, cjs, mjs, ts, cts, mts, jsx, tsx");
			goto out;
		}
		if (code_file(q, code, ext, file, sizeof(file)))
			goto out;
		entry = file;
	}
	json_array_append_new(args, json_string("run"));
	json_array_append_new(args, json_string("-A"));
	if (json_is_true(watch) || json_is_array(watch)) {
		size_t off = (size_t)snprintf(watchopt, sizeof(watchopt), "--watch");

		json_array_foreach(watch, i, e)
			if (json_is_string(e) && off < sizeof(watchopt))
				off += (size_t)snprintf(watchopt + off, sizeof(watchopt) - off, "%s%s", i ? "," : "=",
							json_string_value(e));
		json_array_append_new(args, json_string(watchopt));
		snprintf(wid, sizeof(wid), "w%llu", (unsigned long long)kd_v3_sid_new());
		s.watcher = wid;
	}
	json_array_append_new(args, json_string(entry));
	json_array_foreach(sargs, i, e)
		if (json_is_string(e))
			json_array_append(args, e);
	json_object_set_new(params, "command", json_string("deno"));
	json_object_set(params, "args", args);
	copy_spawn_keys(q, params);
	deno_env(params);
	q->params = params;
	spawn_run(q, &s);
	q->params = saved;
out:
	json_decref(args);
	json_decref(params);
}

/* The guest pid of a process of this socket, or 0; *done whether it has exited. */
static uint64_t guest_pid(struct kd_v3 *v, json_t *pid, int *done)
{
	struct kd_v3_proc *p;
	uint64_t g = 0;

	pthread_mutex_lock(&v->m);
	p = json_is_integer(pid) ? proc_find(v, (uint64_t)json_integer_value(pid)) : NULL;
	if (p) {
		g = p->ex.pid;
		*done = p->done;
	}
	pthread_mutex_unlock(&v->m);
	return g;
}

/* denoHttpWait: true once the runtime (or a child) listens on a TCP port, false if it exits first. */
static void m_http_wait(struct rpc *q)
{
	json_t *pid = json_object_get(q->params, "pid");
	struct kac_listener l;
	int done = 0, r;
	uint64_t g = guest_pid(q->v, pid, &done);

	if (!g) {
		kd_v3_fail(q->v, q->id, kd_v3_serr("NotFound", "ENOENT", "no process %lld on this connection",
						   (long long)json_integer_value(pid)));
		return;
	}
	if (!conn(q))
		return;
	for (;;) {
		r = kac_port_wait(q->c, 0, g, 1000, &l, &q->err);
		if (!r) {
			kd_v3_ok(q->v, q->id, json_true());
			return;
		}
		guest_pid(q->v, pid, &done);
		if (done || (r != -ETIMEDOUT) || q->v->closed) {
			if (r != -ETIMEDOUT && (q->err.code == 0 || q->err.code == KAC_ERR_TIMEOUT))
				q->broken = 1;
			kd_v3_ok(q->v, q->id, json_false());
			return;
		}
	}
}

/*
 * fetch (§4.10.8) from inside the sandbox: curl in the guest, so that the
 * request takes the sandbox's own network and its allow_net. curl writes
 * the response's header blocks to stderr (-D) and the body to stdout; the
 * answer goes once the final block is in (after 1xx, and after redirects
 * when following them), then the body streams.
 */
struct fetch {
	struct spawn s;
	int follow, head;
	char hdr[65536];
	size_t hlen;
	int replied;
	uint64_t sid;			/* the body's stream; 0: none */
	char tail[512];			/* what curl said after the headers (an error) */
	size_t tlen;
};

static json_t *header_block(char *b, int *status, char *text, size_t tn)
{
	json_t *h = json_array();
	char *save = NULL, *line = strtok_r(b, "\r\n", &save);

	*status = 0;
	if (line && !strncmp(line, "HTTP/", 5)) {
		char *sp = strchr(line, ' ');

		*status = sp ? atoi(sp + 1) : 0;
		sp = sp ? strchr(sp + 1, ' ') : NULL;
		snprintf(text, tn, "%s", sp ? sp + 1 : "");
	}
	while ((line = strtok_r(NULL, "\r\n", &save))) {
		char *colon = strchr(line, ':');
		char *val;

		if (!colon || colon == line)
			continue;
		*colon = '\0';
		for (char *c = line; *c; c++)
			*c = (char)tolower((unsigned char)*c);
		val = colon + 1;
		while (*val == ' ' || *val == '\t')
			val++;
		json_array_append_new(h, json_pack("[s, s]", line, val));
	}
	return h;
}

static int fetch_body(struct fetch *f, struct kd_v3 *v, const unsigned char *b, size_t n)
{
	while (f->sid && n && !kd_v3_sid_cancelled(v, f->sid)) {
		size_t k = n > RPC_CHUNK ? RPC_CHUNK : n;

		if (kd_v3_stream_data(v, f->sid, b, k) < 0)
			return 0;
		b += k;
		n -= k;
	}
	return 0;
}

/* stdout: curl's header blocks (-D -), then the final response's body; stderr: curl's own errors. */
static int fetch_out(struct spawn *sp, int chan, const void *p, size_t n)
{
	struct fetch *f = sp->ctx;
	struct kd_v3 *v = sp->q->v;

	if (chan == 2) {
		size_t k = n < sizeof(f->tail) - 1 - f->tlen ? n : sizeof(f->tail) - 1 - f->tlen;

		memcpy(f->tail + f->tlen, p, k);
		f->tlen += k;
		f->tail[f->tlen] = '\0';
		return 0;
	}
	if (f->replied)
		return fetch_body(f, v, p, n);
	if (f->hlen + n >= sizeof(f->hdr)) {
		/* A header block over 64 KiB: not a response the SDK could take either. */
		n = sizeof(f->hdr) - 1 - f->hlen;
	}
	memcpy(f->hdr + f->hlen, p, n);
	f->hlen += n;
	f->hdr[f->hlen] = '\0';
	for (;;) {
		char *end = memmem(f->hdr, f->hlen, "\r\n\r\n", 4), text[256];
		size_t blen, rest;
		int status, more;
		json_t *h;

		if (!end || strncmp(f->hdr, "HTTP/", 5))
			return 0;
		blen = (size_t)(end - f->hdr) + 4;
		*end = '\0';
		h = header_block(f->hdr, &status, text, sizeof(text));
		rest = f->hlen - blen;
		memmove(f->hdr, f->hdr + blen, rest);
		f->hlen = rest;
		f->hdr[rest] = '\0';
		more = status < 200;
		if (!more && f->follow && status >= 300 && status < 400) {
			size_t i;
			json_t *e;

			json_array_foreach(h, i, e)
				more |= !strcmp(json_string_value(json_array_get(e, 0)), "location");
		}
		if (more || status > 599) {
			json_decref(h);
			continue;
		}
		if (!f->head && status != 204 && status != 205 && status != 304)
			f->sid = kd_v3_sid_new();
		kd_v3_ok(v, sp->q->id, json_pack("{s:i, s:s, s:o, s:o}", "status", status, "statusText", text,
						 "headers", h, "bodyStreamId",
						 f->sid ? json_integer((json_int_t)f->sid) : json_null()));
		f->replied = 1;
		if (f->sid)
			kd_v3_stream_start(v, f->sid);
		if (rest)
			fetch_body(f, v, (const unsigned char *)f->hdr, rest);
		f->hlen = 0;
		return 0;
	}
}

static int port_first(void *arg, const struct kac_listener *l)
{
	*(uint16_t *)arg = l->port;
	return 1;	/* stop at the first */
}

static void m_fetch(struct rpc *q)
{
	const char *url = pstr(q, "url"), *method = pstr(q, "method"), *redir = pstr(q, "redirect");
	json_t *hdrs = json_object_get(q->params, "headers"), *body = json_object_get(q->params, "bodyStreamId");
	json_t *pid = json_object_get(q->params, "pid"), *params = json_object(), *args = json_array(), *e;
	json_t *saved = q->params;
	struct fetch *f = calloc(1, sizeof(*f));
	char target[8192];
	size_t i;
	int r;

	if (!f || !url || strncmp(url, "http", 4)) {
		bad_params(q, "url must be an http or https URL");
		goto out;
	}
	snprintf(target, sizeof(target), "%s", url);
	if (json_is_integer(pid)) {
		/* DenoProcess.fetch: that runtime's server, whatever the URL's host. */
		int done = 0;
		uint64_t g = guest_pid(q->v, pid, &done);
		uint16_t port = 0;
		const char *path = strstr(url, "://");

		path = path ? strchr(path + 3, '/') : NULL;
		if (!g || !conn(q)) {
			if (!g)
				kd_v3_fail(q->v, q->id, kd_v3_serr("NotFound", "ENOENT", "no process %lld on this "
								   "connection", (long long)json_integer_value(pid)));
			goto out;
		}
		r = kac_port_list(q->c, g, port_first, &port, &q->err);
		if ((r < 0 && r != 1) || !port) {
			kd_v3_fail(q->v, q->id, kd_v3_serr("TypeError", NULL, "process %lld has no HTTP server "
							   "listening yet", (long long)json_integer_value(pid)));
			goto out;
		}
		snprintf(target, sizeof(target), "http://127.0.0.1:%u%s", port, path ? path : "/");
	}
	f->follow = !redir || strcmp(redir, "manual");
	f->head = method && !strcasecmp(method, "HEAD");
	f->s.own = 1;
	f->s.out = fetch_out;
	f->s.ctx = f;
	/* Headers and body both on stdout (-D -): /dev/stderr, a pipe of the agent's, is not the user's to open. */
	json_array_append_new(args, json_string("-sS"));
	if (f->head) {
		json_array_append_new(args, json_string("-I"));
	} else {
		json_array_append_new(args, json_string("-D"));
		json_array_append_new(args, json_string("-"));
	}
	if (!f->head && method && strcasecmp(method, "GET")) {
		json_array_append_new(args, json_string("-X"));
		json_array_append_new(args, json_string(method));
	}
	if (f->follow) {
		json_array_append_new(args, json_string("-L"));
		json_array_append_new(args, json_string("--max-redirs"));
		json_array_append_new(args, json_string("20"));
	}
	json_array_foreach(hdrs, i, e) {
		const char *n = json_string_value(json_array_get(e, 0)), *val = json_string_value(json_array_get(e, 1));
		char h[8192];

		if (!n || !val || !strcasecmp(n, "content-length"))
			continue;
		snprintf(h, sizeof(h), *val ? "%s: %s" : "%s;", n, val);
		json_array_append_new(args, json_string("-H"));
		json_array_append_new(args, json_string(h));
	}
	if (json_is_integer(body)) {
		json_array_append_new(args, json_string("--data-binary"));
		json_array_append_new(args, json_string("@-"));
		json_object_set(params, "stdinStreamId", body);
		body = NULL;
	}
	json_array_append_new(args, json_string("--url"));
	json_array_append_new(args, json_string(target));
	json_object_set_new(params, "command", json_string("curl"));
	json_object_set(params, "args", args);
	q->params = params;
	r = spawn_run(q, &f->s);
	q->params = saved;
	if (!f->replied) {
		char *msg = f->tail;

		while (*msg == ' ' || *msg == '\n')
			msg++;
		msg[strcspn(msg, "\n")] = '\0';
		if (r && !f->s.replied)
			kd_v3_fail(q->v, q->id, kd_v3_serr("TypeError", NULL, "error sending request for url (%s): %s",
							   url, q->err.msg));
		else
			kd_v3_fail(q->v, q->id, kd_v3_serr("TypeError", NULL, "error sending request for url (%s): %s",
							   url, *msg ? msg : "no response"));
	} else if (f->sid) {
		if (f->s.exit_code && f->tlen)
			kd_v3_stream_error(q->v, f->sid, kd_v3_serr("TypeError", NULL, "error reading a body from "
								    "connection: %s", f->tail));
		else
			kd_v3_stream_end(q->v, f->sid);
	}
out:
	if (json_is_integer(body))
		kd_v3_cs_drop(q->v, (uint64_t)json_integer_value(body), 1);
	free(f);
	json_decref(args);
	json_decref(params);
}

#include "kd_repl_js.h"

/* spawnDenoRepl: kiln's REPL script (guest/deno/repl.js) under deno, its stdin ours. */
static void m_spawn_repl(struct rpc *q)
{
	json_t *params = json_object(), *args = json_array(), *saved = q->params, *e;
	json_t *in = json_object_get(q->params, "stdinStreamId");
	char file[KD_PATH_MAX];
	int pfd[2] = { -1, -1 };
	struct spawn s;
	size_t i;

	memset(&s, 0, sizeof(s));
	/* Its stdin carries kilnd's requests: a stream of the client's has no place there. */
	if (json_is_integer(in))
		kd_v3_cs_drop(q->v, (uint64_t)json_integer_value(in), 1);
	if (code_file(q, kd_repl_js, "js", file, sizeof(file)))
		goto out;
	if (pipe2(pfd, O_CLOEXEC)) {
		kd_v3_fail(q->v, q->id, kd_v3_serr_errno(-errno, "pipe"));
		goto out;
	}
	s.repl = 1;
	s.repl_rd = pfd[0];
	s.repl_wr = pfd[1];
	json_array_append_new(args, json_string("run"));
	json_array_append_new(args, json_string("-A"));
	json_array_append_new(args, json_string(file));
	json_array_foreach(json_object_get(q->params, "scriptArgs"), i, e)
		if (json_is_string(e))
			json_array_append(args, e);
	json_object_set_new(params, "command", json_string("deno"));
	json_object_set(params, "args", args);
	copy_spawn_keys(q, params);
	json_object_del(params, "stdinStreamId");
	deno_env(params);
	q->params = params;
	spawn_run(q, &s);
	q->params = saved;
	close(pfd[0]);
	/* The write end went to the proc (closed when it exited), unless it never started. */
	if (!s.replied)
		close(pfd[1]);
out:
	json_decref(args);
	json_decref(params);
}

/* denoReplEval, denoReplCall: one request line to the REPL, then wait for its answer. */
static void m_repl_req(struct rpc *q, int call)
{
	struct kd_v3 *v = q->v;
	json_t *pid = json_object_get(q->params, "pid"), *req, *ans = NULL;
	struct kd_v3_proc *p;
	uint64_t id;
	char *line;
	int fd = -1;

	if (call ? !json_is_string(json_object_get(q->params, "fn")) : !json_is_string(json_object_get(q->params, "code"))) {
		bad_params(q, call ? "fn must be a string" : "code must be a string");
		return;
	}
	pthread_mutex_lock(&v->m);
	p = json_is_integer(pid) ? proc_find(v, (uint64_t)json_integer_value(pid)) : NULL;
	if (p && p->repl && !p->done && p->repl_in >= 0)
		fd = dup(p->repl_in);
	id = p ? ++p->repl_seq : 0;
	pthread_mutex_unlock(&v->m);
	if (fd < 0) {
		kd_v3_fail(v, q->id, kd_v3_serr("NotFound", "ENOENT", "no REPL %lld is running on this connection",
						(long long)json_integer_value(pid)));
		return;
	}
	req = call ? json_pack("{s:I, s:s, s:O, s:O}", "id", (json_int_t)id, "op", "call", "fn",
			       json_object_get(q->params, "fn"), "args",
			       json_is_array(json_object_get(q->params, "args")) ? json_object_get(q->params, "args")
										 : json_array())
		   : json_pack("{s:I, s:s, s:O}", "id", (json_int_t)id, "op", "eval", "code", json_object_get(q->params, "code"));
	line = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	if (line) {
		size_t n = strlen(line);

		line[n++] = '\n';	/* json_dumps' NUL becomes the line's end */
		write_full(fd, line, n);
	}
	free(line);
	close(fd);
	pthread_mutex_lock(&v->m);
	for (;;) {
		size_t i;
		json_t *a;

		json_array_foreach(p->replies, i, a)
			if ((uint64_t)json_integer_value(json_object_get(a, "id")) == id) {
				ans = json_incref(a);
				json_array_remove(p->replies, i);
				break;
			}
		if (ans || p->done || v->closed)
			break;
		pthread_cond_wait(&v->cv, &v->m);
	}
	pthread_mutex_unlock(&v->m);
	if (!ans) {
		kd_v3_fail(v, q->id, kd_v3_serr("Error", NULL, "the REPL exited before it answered"));
		return;
	}
	if (json_is_object(json_object_get(ans, "error")) &&
	    json_is_string(json_object_get(json_object_get(ans, "error"), "constructorName")))
		kd_v3_fail(v, q->id, json_incref(json_object_get(ans, "error")));
	else
		kd_v3_ok(v, q->id, json_incref(json_object_get(ans, "ok")));
	json_decref(ans);
}

/* denoReplClose: end its input, and the script exits. ENOENT when it is gone (the SDK swallows that). */
static void m_repl_close(struct rpc *q)
{
	struct kd_v3 *v = q->v;
	json_t *pid = json_object_get(q->params, "pid");
	struct kd_v3_proc *p;
	int ok = 0;

	pthread_mutex_lock(&v->m);
	p = json_is_integer(pid) ? proc_find(v, (uint64_t)json_integer_value(pid)) : NULL;
	if (p && p->repl && !p->done && p->repl_in >= 0) {
		close(p->repl_in);
		p->repl_in = -1;
		ok = 1;
	}
	pthread_mutex_unlock(&v->m);
	if (ok)
		kd_v3_ok(v, q->id, NULL);
	else
		kd_v3_fail(v, q->id, kd_v3_serr("NotFound", "ENOENT", "no REPL %lld is running on this connection",
						(long long)json_integer_value(pid)));
}

/* exposeHttp {domain, port | pid}: bind a name the REST call gave this sandbox. */
static void m_expose(struct rpc *q)
{
	const char *domain = pstr(q, "domain");
	json_t *port = json_object_get(q->params, "port"), *pid = json_object_get(q->params, "pid");
	struct kiln_err err;
	uint64_t g = 0;
	int done = 0, r;

	if (!domain || (json_is_integer(port) == json_is_integer(pid)) ||
	    (json_is_integer(port) && (json_integer_value(port) < 1 || json_integer_value(port) > 65535))) {
		bad_params(q, "exposeHttp takes a domain and one of port (1-65535) and pid");
		return;
	}
	if (json_is_integer(pid) && !(g = guest_pid(q->v, pid, &done))) {
		kd_v3_fail(q->v, q->id, kd_v3_serr("NotFound", "ENOENT", "no process %lld on this connection",
						   (long long)json_integer_value(pid)));
		return;
	}
	r = kd_ingress_bind(q->v->kd, q->v->id, domain, json_is_integer(port) ? (uint16_t)json_integer_value(port) : 0,
			    g, &err);
	if (r)
		kd_v3_fail(q->v, q->id, kd_v3_serr(r == -ENOENT ? "NotFound" : "NotSupported",
						   r == -ENOENT ? "ENOENT" : "ENOTSUP", "%s", err.msg));
	else
		kd_v3_ok(q->v, q->id, NULL);
}

static void m_wait(struct rpc *q)
{
	struct kd_v3 *v = q->v;
	json_t *pid = json_object_get(q->params, "pid");
	struct kd_v3_proc *p;
	struct kac_exit ex;
	int done;

	pthread_mutex_lock(&v->m);
	p = json_is_integer(pid) ? proc_find(v, (uint64_t)json_integer_value(pid)) : NULL;
	while (p && !p->done && !v->closed)
		pthread_cond_wait(&v->cv, &v->m);
	done = p && p->done;
	if (done)
		ex = p->ex;
	pthread_mutex_unlock(&v->m);
	if (!p) {
		kd_v3_fail(v, q->id, kd_v3_serr("NotFound", "ENOENT", "no process %lld on this connection",
						(long long)json_integer_value(pid)));
		return;
	}
	if (!done)
		return;	/* the socket closed */
	int64_t code = ex.signal ? 128 + ex.signal : ex.code;
	const char *name = ex.signal ? sig_name(ex.signal) : NULL;

	kd_v3_ok(v, q->id, json_pack("{s:b, s:I, s:o, s:o}", "success", code == 0, "code", (json_int_t)code, "signal",
				     name ? json_string(name) : json_null(), "oom",
				     ex.oom ? json_string("high-confidence") : json_null()));
}

static void m_kill(struct rpc *q)
{
	struct kd_v3 *v = q->v;
	json_t *pid = json_object_get(q->params, "pid");
	const char *name = pstr(q, "signal");
	struct kd_v3_proc *p;
	int sig = name ? 0 : SIGTERM, running, r;
	uint64_t handle = 0;

	for (size_t i = 0; name && i < sizeof(sigs) / sizeof(sigs[0]); i++)
		if (!strcmp(sigs[i].name, name))
			sig = sigs[i].sig;
	if (!sig) {
		kd_v3_fail(v, q->id, kd_v3_serr("TypeError", "EINVAL", "unknown signal %.32s: Linux has no such signal",
						name));
		return;
	}
	pthread_mutex_lock(&v->m);
	p = json_is_integer(pid) ? proc_find(v, (uint64_t)json_integer_value(pid)) : NULL;
	running = p && !p->done;
	if (p)
		handle = p->handle;
	pthread_mutex_unlock(&v->m);
	/* ENOENT is what the SDK swallows for a process that already exited (§4.10.6). */
	if (!running) {
		kd_v3_fail(v, q->id, kd_v3_serr("NotFound", "ENOENT", "process %lld is not running",
						(long long)json_integer_value(pid)));
		return;
	}
	if (!conn(q))
		return;
	r = kac_signal(q->c, handle, sig, &q->err);
	if (r == -ESRCH || r == -ENOENT)
		kd_v3_fail(v, q->id, kd_v3_serr("NotFound", "ENOENT", "process %llu is not running",
						(unsigned long long)handle));
	else if (r)
		agent_fail(q, r, "kill", NULL);
	else
		kd_v3_ok(v, q->id, NULL);
}

/* ---- the sandbox's environment -------------------------------------------------- */

static int env_entry(void *arg, const char *s)
{
	const char *eq = strchr(s, '=');

	if (eq) {
		char *k = strndup(s, (size_t)(eq - s));

		if (k)
			json_object_set_new(arg, k, json_string(eq + 1));
		free(k);
	}
	return 0;
}

static void m_env(struct rpc *q, const char *m)
{
	const char *key = pstr(q, "key"), *val = pstr(q, "value");
	json_t *res = NULL;
	char *out = NULL;
	int r;

	if (strcmp(m, "envToObject") && (!key || !*key || strchr(key, '='))) {
		bad_params(q, "key must be a non-empty string without '='");
		return;
	}
	if (!conn(q))
		return;
	if (!strcmp(m, "envGet")) {
		r = kac_env_get(q->c, key, &out, &q->err);
		res = out ? json_string(out) : json_null();
		free(out);
	} else if (!strcmp(m, "envSet")) {
		r = val ? kac_env_set(q->c, key, val, &q->err) : -EINVAL;
	} else if (!strcmp(m, "envDelete")) {
		r = kac_env_unset(q->c, key, &q->err);
	} else {
		res = json_object();
		r = kac_env_list(q->c, env_entry, res, &q->err);
	}
	if (r) {
		json_decref(res);
		agent_fail(q, r, m, key);
	} else {
		kd_v3_ok(q->v, q->id, res);
	}
}

/* ---- the table ---------------------------------------------------------------------- */

static const char *const methods[] = {
	"abort", "readFile", "readTextFile", "writeFile", "writeTextFile", "readDir", "remove", "mkdir", "rename",
	"stat", "chmod", "chown", "copyFile", "link", "lstat", "makeTempDir", "makeTempFile", "readLink", "realPath",
	"symlink", "truncate", "umask", "utime", "open", "create", "fileClose", "fileLock", "fileRead", "fileSeek",
	"fileStat", "fileSync", "fileSyncData", "fileTruncate", "fileUnlock", "fileUtime", "fileWrite", "walk",
	"expandGlob", "spawn", "processWait", "processKill", "spawnDeno", "denoHttpWait", "spawnDenoRepl",
	"denoReplClose", "denoReplEval", "denoReplCall", "fetch", "exposeHttp", "vscode", "envGet", "envSet",
	"envToObject", "envDelete",
};
_Static_assert(sizeof(methods) / sizeof(methods[0]) == 54, "the protocol has 54 methods (§4.10.11)");

int kd_rpc_known(const char *method)
{
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
		if (!strcmp(methods[i], method))
			return 1;
	return 0;
}

void kd_rpc_serve(struct kd_v3 *v, json_t *msg)
{
	struct rpc q;
	const char *m = json_string_value(json_object_get(msg, "method"));

	memset(&q, 0, sizeof(q));
	q.v = v;
	q.id = json_object_get(msg, "id");
	q.params = json_object_get(msg, "params");
	if (!strcmp(m, "readFile") || !strcmp(m, "readTextFile"))
		m_read_file(&q, m[4] == 'T');
	else if (!strcmp(m, "writeFile") || !strcmp(m, "writeTextFile"))
		m_write_file(&q, m[5] == 'T');
	else if (!strcmp(m, "open") || !strcmp(m, "create") || !strncmp(m, "file", 4))
		m_fh(&q, m);
	else if (!strcmp(m, "walk") || !strcmp(m, "expandGlob"))
		m_walk(&q, m[0] == 'e');
	else if (!strcmp(m, "spawn"))
		m_spawn(&q);
	else if (!strcmp(m, "processWait"))
		m_wait(&q);
	else if (!strcmp(m, "processKill"))
		m_kill(&q);
	else if (!strncmp(m, "env", 3))
		m_env(&q, m);
	else if (!strcmp(m, "umask"))
		m_umask(&q);
	else if (!strcmp(m, "makeTempDir") || !strcmp(m, "makeTempFile"))
		m_mktemp(&q, m[8] == 'D');
	else if (!strcmp(m, "spawnDeno"))
		m_spawn_deno(&q);
	else if (!strcmp(m, "denoHttpWait"))
		m_http_wait(&q);
	else if (!strcmp(m, "fetch"))
		m_fetch(&q);
	else if (!strcmp(m, "spawnDenoRepl"))
		m_spawn_repl(&q);
	else if (!strcmp(m, "denoReplEval") || !strcmp(m, "denoReplCall"))
		m_repl_req(&q, m[8] == 'C');
	else if (!strcmp(m, "denoReplClose"))
		m_repl_close(&q);
	else if (!strcmp(m, "exposeHttp"))
		m_expose(&q);
	else if (!strcmp(m, "vscode"))
		kd_v3_fail(v, q.id, kd_v3_serr("NotSupported", "ENOTSUP", "kiln does not serve %s yet (issue 17 "
					       "leaves Deno runtimes, fetch, expose and VS Code for later): run deno "
					       "or curl with sandbox.sh or spawn instead", m));
	else
		m_path_op(&q, m);
	if (q.c)
		kd_v3_conn_put(v, q.c, !q.broken);
	json_decref(msg);
}

void kd_rpc_socket_gone(struct kd_v3 *v)
{
	while (v->procs) {
		struct kd_v3_proc *p = v->procs;

		v->procs = p->next;
		if (p->repl_in >= 0)
			close(p->repl_in);
		json_decref(p->replies);
		free(p);
	}
	if (v->fh)
		kac_close(v->fh);
	v->fh = NULL;
}
