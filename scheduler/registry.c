/*
 * kilnd's registry in SQLite (registry.h): opening the file, its schema and
 * the plumbing the other parts share (registry_int.h). One connection per
 * struct reg, statements prepared once and kept. The parts: reg_sandbox.c
 * (sandboxes, events, usage), reg_token.c, reg_template.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "registry_int.h"

#define REG_SCHEMA	3
#define REG_APP_ID	0x6b696c6e	/* "kiln": PRAGMA application_id */
#define REG_BUSY_MS	5000

const char reg_b32[] = "0123456789abcdefghjkmnpqrstvwxyz";

static const char *const migrations[REG_SCHEMA] = {
	"CREATE TABLE sandboxes ("
	" id TEXT PRIMARY KEY NOT NULL CHECK (length(id) = 28 AND id GLOB 'sbx_[a-z][a-z][a-z]_*'),"
	" state TEXT NOT NULL CHECK (state IN ('creating', 'running', 'stopping', 'stopped', 'failed')),"
	" memory_mb INTEGER NOT NULL CHECK (memory_mb > 0),"
	" vcpus INTEGER NOT NULL CHECK (vcpus > 0),"
	" timeout_kind TEXT NOT NULL CHECK (timeout_kind IN ('session', 'duration')),"
	" timeout_ms INTEGER NOT NULL CHECK (timeout_ms >= 0),"
	" stop_at INTEGER,"
	" created_at INTEGER NOT NULL,"
	" ended_at INTEGER,"
	" end_reason TEXT,"
	" labels TEXT NOT NULL DEFAULT '{}',"
	" vmm_pid INTEGER,"
	" vmm_start_time INTEGER,"
	" control_path TEXT,"
	" vsock_path TEXT,"
	" run_dir TEXT) STRICT;"
	"CREATE INDEX sandboxes_state ON sandboxes (state);"
	"CREATE INDEX sandboxes_ended ON sandboxes (ended_at) WHERE ended_at IS NOT NULL;"
	"CREATE TABLE sandbox_labels ("
	" sandbox_id TEXT NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,"
	" key TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND 64),"
	" value TEXT NOT NULL CHECK (length(value) <= 128),"
	" PRIMARY KEY (sandbox_id, key)) STRICT, WITHOUT ROWID;"
	"CREATE INDEX sandbox_labels_kv ON sandbox_labels (key, value);"
	"CREATE TABLE events ("
	" seq INTEGER PRIMARY KEY AUTOINCREMENT,"
	" sandbox_id TEXT NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,"
	" at INTEGER NOT NULL,"
	" kind TEXT NOT NULL,"
	" detail TEXT NOT NULL DEFAULT '') STRICT;"
	"CREATE INDEX events_sandbox ON events (sandbox_id, seq);"
	"CREATE TABLE usage ("
	" sandbox_id TEXT PRIMARY KEY NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,"
	" cpu_ns INTEGER NOT NULL DEFAULT 0 CHECK (cpu_ns >= 0),"
	" mem_mb_ms INTEGER NOT NULL DEFAULT 0 CHECK (mem_mb_ms >= 0)) STRICT;"
	"CREATE TABLE tokens ("
	" id TEXT PRIMARY KEY NOT NULL,"
	" sha256 BLOB NOT NULL UNIQUE CHECK (length(sha256) = 32),"
	" created_at INTEGER NOT NULL,"
	" last_used INTEGER,"
	" revoked_at INTEGER) STRICT;"
	"CREATE TABLE templates ("
	" image TEXT NOT NULL,"
	" memory_mb INTEGER NOT NULL CHECK (memory_mb > 0),"
	" vcpus INTEGER NOT NULL CHECK (vcpus > 0),"
	" path TEXT NOT NULL,"
	" kernel_sha256 TEXT NOT NULL CHECK (length(kernel_sha256) = 64),"
	" initramfs_sha256 TEXT NOT NULL CHECK (length(initramfs_sha256) = 64),"
	" created_at INTEGER NOT NULL,"
	" PRIMARY KEY (image, memory_mb, vcpus)) STRICT;"
	"PRAGMA application_id = 1802071150;"
	"PRAGMA user_version = 1;",
	/* 2: the image a sandbox boots (issue 15); the old initramfs-only one is "minimal". */
	"ALTER TABLE sandboxes ADD COLUMN image TEXT NOT NULL DEFAULT 'minimal'"
	" CHECK (length(image) BETWEEN 1 AND 64);"
	"UPDATE templates SET image = 'minimal' WHERE image = 'base';"
	"CREATE TABLE volumes ("
	" name TEXT PRIMARY KEY NOT NULL CHECK (length(name) BETWEEN 1 AND 64),"
	" size_bytes INTEGER NOT NULL CHECK (size_bytes > 0),"
	" created_at INTEGER NOT NULL,"
	" metered_at INTEGER NOT NULL,"
	" mib_ms INTEGER NOT NULL DEFAULT 0 CHECK (mib_ms >= 0)) STRICT;"
	"CREATE TABLE volume_attachments ("
	" sandbox_id TEXT NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,"
	" volume TEXT NOT NULL REFERENCES volumes (name),"
	" path TEXT NOT NULL CHECK (length(path) BETWEEN 2 AND 256),"
	" readonly INTEGER NOT NULL CHECK (readonly IN (0, 1)),"
	" PRIMARY KEY (sandbox_id, path)) STRICT, WITHOUT ROWID;"
	"CREATE INDEX volume_attachments_volume ON volume_attachments (volume);"
	"PRAGMA user_version = 2;",
	/*
	 * 3: the network a sandbox has (issue 16): a namespace or none, its allow_net
	 * entries, and its secrets (values sealed with the node's key, never plain).
	 */
	"ALTER TABLE sandboxes ADD COLUMN net INTEGER NOT NULL DEFAULT 0 CHECK (net IN (0, 1));"
	"ALTER TABLE sandboxes ADD COLUMN allow_net TEXT NOT NULL DEFAULT '[]' CHECK (length(allow_net) <= 131072);"
	"ALTER TABLE sandboxes ADD COLUMN secrets TEXT NOT NULL DEFAULT '[]' CHECK (length(secrets) <= 1048576);"
	"PRAGMA user_version = 3;",
};
_Static_assert(REG_APP_ID == 1802071150, "migration 1 spells the application id out");

/* ---- checking what comes in ------------------------------------------------ */

/* A hostile string, quoted for a message: at most 40 bytes, unprintables as '?'. */
const char *reg_shown(const char *s, char buf[48])
{
	size_t i;

	for (i = 0; s[i] && i < 40; i++)
		buf[i] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
	strcpy(buf + i, s[i] ? "..." : "");
	return buf;
}

/* Valid UTF-8 (no overlongs, surrogates or code points past U+10FFFF) without control characters. */
static bool text_ok(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s, *end = p + len;

	while (p < end) {
		unsigned c = *p++, n, cp;

		if (c < 0x20 || c == 0x7f)
			return false;
		if (c < 0x80)
			continue;
		if (c >= 0xc2 && c <= 0xdf)
			n = 1, cp = c & 0x1f;
		else if (c >= 0xe0 && c <= 0xef)
			n = 2, cp = c & 0x0f;
		else if (c >= 0xf0 && c <= 0xf4)
			n = 3, cp = c & 0x07;
		else
			return false;
		if ((size_t)(end - p) < n)
			return false;
		for (unsigned i = 0; i < n; i++, p++) {
			if ((*p & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (*p & 0x3f);
		}
		if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
			return false;
	}
	return true;
}

/* A caller's string: present, at most max bytes (min at least), UTF-8 text. */
int reg_str_check(const char *what, const char *s, size_t min, size_t max, struct kiln_err *err)
{
	char b[48];
	size_t len;

	if (!s)
		return kiln_fail(err, EINVAL, "%s is missing", what);
	len = strnlen(s, max + 1);
	if (len < min || len > max)
		return kiln_fail(err, EINVAL, "%s \"%s\" is %s%zu bytes (%zu-%zu allowed)", what, reg_shown(s, b),
				 len > max ? "over " : "", len > max ? max : len, min, max);
	if (!text_ok(s, len))
		return kiln_fail(err, EINVAL, "%s \"%s\" has control characters or is not UTF-8", what, reg_shown(s, b));
	return 0;
}

bool reg_in_set(const char *s, size_t len, const char *set)
{
	for (size_t i = 0; i < len; i++)
		if (!s[i] || !strchr(set, s[i]))
			return false;
	return true;
}

int reg_name_check(const char *what, const char *name, struct kiln_err *err)
{
	char b[48];

	if (!name || !*name || strnlen(name, REG_IMAGE_MAX) >= REG_IMAGE_MAX ||
	    !reg_in_set(name, strlen(name), "abcdefghijklmnopqrstuvwxyz0123456789._-"))
		return kiln_fail(err, EINVAL, "%s name \"%s\" is malformed (1-64 of a-z 0-9 . _ -)", what,
				 name ? reg_shown(name, b) : "");
	return 0;
}

int reg_path_check(const char *what, const char *p, struct kiln_err *err)
{
	int r = reg_str_check(what, p, 1, REG_PATH_MAX - 1, err);

	if (r == 0 && p[0] != '/')
		r = kiln_fail(err, EINVAL, "%s \"%s\" is not an absolute path", what, p);
	return r;
}

int reg_shape_check(uint32_t memory_mb, uint32_t vcpus, struct kiln_err *err)
{
	if (memory_mb < 1 || memory_mb > 1u << 20)
		return kiln_fail(err, EINVAL, "memory_mb %u is out of range (1-1048576)", memory_mb);
	if (vcpus < 1 || vcpus > 255)
		return kiln_fail(err, EINVAL, "vcpus %u is out of range (1-255)", vcpus);
	return 0;
}

static int random_fill(void *buf, size_t len, struct kiln_err *err)
{
	unsigned char *p = buf;

	while (len) {
		ssize_t n = getrandom(p, len, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return kiln_fail(err, n < 0 ? errno : EIO, "getrandom: %s", strerror(n < 0 ? errno : EIO));
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* n characters of alphabet (of size k, dividing 256 or not) without modulo bias. */
int reg_random_chars(char *out, size_t n, const char *alphabet, unsigned k, struct kiln_err *err)
{
	unsigned char buf[64];
	unsigned limit = 256 - 256 % k;
	size_t done = 0;
	int r;

	while (done < n) {
		if ((r = random_fill(buf, sizeof(buf), err)))
			return r;
		for (size_t i = 0; i < sizeof(buf) && done < n; i++)
			if (buf[i] < limit)
				out[done++] = alphabet[buf[i] % k];
	}
	OPENSSL_cleanse(buf, sizeof(buf));
	out[n] = '\0';
	return 0;
}

/* ---- SQLite plumbing --------------------------------------------------------- */

/* Turn a SQLite result into -errno and a message that names the file and the fix. */
int reg_sqlfail(struct reg *r, int rc, const char *what, struct kiln_err *err)
{
	const char *msg = r->db ? sqlite3_errmsg(r->db) : sqlite3_errstr(rc);

	switch (rc & 0xff) {
	case SQLITE_FULL:
		return kiln_fail(err, ENOSPC, "registry %s: %s: the disk is full (%s); nothing was changed; "
				 "free space on its filesystem and retry", r->path, what, msg);
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
		return kiln_fail(err, EBADMSG, "registry %s: %s: the file is corrupt or not a SQLite database (%s); "
				 "stop kilnd and move the file aside (an empty registry is made) or restore a backup",
				 r->path, what, msg);
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return kiln_fail(err, EBUSY, "registry %s: %s: locked by another connection for over %d ms (%s); "
				 "is another kilnd using this state dir?", r->path, what, REG_BUSY_MS, msg);
	case SQLITE_READONLY:
		return kiln_fail(err, EROFS, "registry %s: %s: read-only (%s); make the file and its directory writable",
				 r->path, what, msg);
	case SQLITE_NOMEM:
		return kiln_fail(err, ENOMEM, "registry %s: %s: out of memory", r->path, what);
	case SQLITE_CANTOPEN:
		return kiln_fail(err, EACCES, "registry %s: %s: cannot open (%s); check the state dir is writable",
				 r->path, what, msg);
	case SQLITE_CONSTRAINT:
		if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE)
			return kiln_fail(err, EEXIST, "registry %s: %s: already there (%s)", r->path, what, msg);
		return kiln_fail(err, EINVAL, "registry %s: %s: refused by the schema (%s)", r->path, what, msg);
	default:
		return kiln_fail(err, EIO, "registry %s: %s: %s; check the disk under the state dir", r->path, what, msg);
	}
}

int reg_prep(struct reg *r, const char *sql, sqlite3_stmt **out, const char *what, struct kiln_err *err)
{
	int i, rc;

	for (i = 0; i < r->n_stmts; i++)
		if (r->stmts[i].sql == sql) {
			sqlite3_reset(r->stmts[i].st);
			sqlite3_clear_bindings(r->stmts[i].st);
			*out = r->stmts[i].st;
			return 0;
		}
	if (i == REG_STMTS)
		return kiln_fail(err, ENOSPC, "registry: over %d statements; raise REG_STMTS", REG_STMTS);
	rc = sqlite3_prepare_v3(r->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &r->stmts[i].st, NULL);
	if (rc != SQLITE_OK)
		return reg_sqlfail(r, rc, what, err);
	r->stmts[i].sql = sql;
	r->n_stmts++;
	*out = r->stmts[i].st;
	return 0;
}

static void reset_all(struct reg *r)
{
	for (int i = 0; i < r->n_stmts; i++)
		sqlite3_reset(r->stmts[i].st);
}

int reg_bind_text(sqlite3_stmt *s, int i, const char *v)
{
	return v ? sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC) : sqlite3_bind_null(s, i);
}

int reg_bind_opt(sqlite3_stmt *s, int i, int64_t v)
{
	return v ? sqlite3_bind_int64(s, i, v) : sqlite3_bind_null(s, i);
}

int reg_run(sqlite3_stmt *s)
{
	int rc = sqlite3_step(s);

	sqlite3_reset(s);
	return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

static const char SQL_BEGIN_W[] = "BEGIN IMMEDIATE";
static const char SQL_BEGIN_R[] = "BEGIN DEFERRED";
static const char SQL_COMMIT[] = "COMMIT";
static const char SQL_ROLLBACK[] = "ROLLBACK";

int reg_begin(struct reg *r, bool write, const char *what, struct kiln_err *err)
{
	sqlite3_stmt *s;
	int rc, ret;

	if ((ret = reg_prep(r, write ? SQL_BEGIN_W : SQL_BEGIN_R, &s, what, err)))
		return ret;
	rc = reg_run(s);
	return rc == SQLITE_OK ? 0 : reg_sqlfail(r, rc, what, err);
}

int reg_abort(struct reg *r, int ret)
{
	sqlite3_stmt *s;

	reset_all(r);
	/* SQLITE_FULL and others may have rolled back already. */
	if (!sqlite3_get_autocommit(r->db) && reg_prep(r, SQL_ROLLBACK, &s, "rolling back", NULL) == 0)
		reg_run(s);
	return ret;
}

int reg_commit(struct reg *r, const char *what, struct kiln_err *err)
{
	sqlite3_stmt *s;
	int rc, ret;

	reset_all(r);
	if ((ret = reg_prep(r, SQL_COMMIT, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_run(s)) != SQLITE_OK)
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	return 0;
}
static int name_index(const char *const *names, int count, const char *s)
{
	for (int i = 0; i < count; i++)
		if (strcmp(names[i], s) == 0)
			return i;
	return -1;
}

/* Copy column i's text into buf of size; -EBADMSG (a file changed by hand) if it does not fit. */
int reg_col_text(struct reg *r, sqlite3_stmt *s, int i, char *buf, size_t size, struct kiln_err *err)
{
	const unsigned char *t = sqlite3_column_text(s, i);
	size_t len = (size_t)sqlite3_column_bytes(s, i);

	if (!t) {
		if (sqlite3_column_type(s, i) != SQLITE_NULL)
			return reg_sqlfail(r, SQLITE_NOMEM, "reading a row", err);
		buf[0] = '\0';
		return 0;
	}
	if (len >= size || strlen((const char *)t) != len)
		return kiln_fail(err, EBADMSG, "registry %s: column %s holds %zu bytes (at most %zu); the file was "
				 "changed outside kilnd: move it aside", r->path, sqlite3_column_name(s, i), len, size - 1);
	memcpy(buf, t, len + 1);
	return 0;
}

int reg_col_enum(struct reg *r, sqlite3_stmt *s, int i, const char *const *names, int count, int *out,
		    struct kiln_err *err)
{
	char buf[32];
	int v, ret;

	if ((ret = reg_col_text(r, s, i, buf, sizeof(buf), err)))
		return ret;
	if ((v = name_index(names, count, buf)) < 0)
		return kiln_fail(err, EBADMSG, "registry %s: column %s holds \"%s\", which this kilnd does not know; "
				 "the file was changed outside kilnd: move it aside", r->path, sqlite3_column_name(s, i), buf);
	*out = v;
	return 0;
}

int reg_list_rows(struct reg *r, sqlite3_stmt *s, size_t size, reg_row_fn fn, void **out, size_t *n,
		  const char *what, struct kiln_err *err)
{
	size_t cap = 0, cnt = 0;
	char *arr = NULL, *p;
	int rc, ret;

	*out = NULL;
	*n = 0;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		if (cnt == cap) {
			cap = cap ? cap * 2 : 16;
			if (!(p = reallocarray(arr, cap, size))) {
				ret = kiln_fail(err, ENOMEM, "registry %s: %s: out of memory for %zu rows", r->path, what, cap);
				goto fail;
			}
			arr = p;
		}
		if ((ret = fn(r, s, arr + cnt * size, err)))
			goto fail;
		cnt++;
	}
	if (rc != SQLITE_DONE) {
		ret = reg_sqlfail(r, rc, what, err);
		goto fail;
	}
	if ((ret = reg_commit(r, what, err))) {
		free(arr);
		return ret;
	}
	*out = arr;
	*n = cnt;
	return 0;
fail:
	free(arr);
	return reg_abort(r, ret);
}

/* ---- opening and the schema ------------------------------------------------------ */

static int exec_int(struct reg *r, const char *q, int64_t *out, struct kiln_err *err)
{
	sqlite3_stmt *s;
	int rc = sqlite3_prepare_v2(r->db, q, -1, &s, NULL);

	if (rc != SQLITE_OK)
		return reg_sqlfail(r, rc, q, err);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		*out = sqlite3_column_int64(s, 0);
		rc = SQLITE_OK;
	} else if (rc == SQLITE_DONE) {
		*out = 0;
		rc = SQLITE_OK;
	}
	sqlite3_finalize(s);
	return rc == SQLITE_OK ? 0 : reg_sqlfail(r, rc, q, err);
}

static int exec_sql(struct reg *r, const char *q, const char *what, struct kiln_err *err)
{
	int rc = sqlite3_exec(r->db, q, NULL, NULL, NULL);

	return rc == SQLITE_OK ? 0 : reg_sqlfail(r, rc, what, err);
}

/* Bring the schema to REG_SCHEMA in one transaction (two kilnds racing here take turns). */
static int migrate(struct reg *r, struct kiln_err *err)
{
	int64_t version, app, tables;
	int ret;

	if ((ret = exec_sql(r, "BEGIN IMMEDIATE", "locking it to check its schema", err)))
		return ret;
	if ((ret = exec_int(r, "PRAGMA user_version", &version, err)) ||
	    (ret = exec_int(r, "PRAGMA application_id", &app, err)) ||
	    (ret = exec_int(r, "SELECT count(*) FROM sqlite_schema", &tables, err)))
		goto fail;
	if (version > REG_SCHEMA) {
		ret = kiln_fail(err, ENOTSUP, "registry %s has schema version %lld, newer than this kilnd knows (%d); "
				"run the kilnd that wrote it, or move the file aside to start empty",
				r->path, (long long)version, REG_SCHEMA);
		goto fail;
	}
	if ((version == 0 && tables > 0) || (version > 0 && app != REG_APP_ID)) {
		ret = kiln_fail(err, EBADMSG, "registry %s is a SQLite database but not kiln's registry; "
				"give kilnd a state dir of its own or move the file aside", r->path);
		goto fail;
	}
	for (int64_t v = version; v < REG_SCHEMA; v++)
		if ((ret = exec_sql(r, migrations[v], "creating its schema", err)))
			goto fail;
	if ((ret = exec_sql(r, "COMMIT", "committing its schema", err)))
		goto fail;
	return 0;
fail:
	sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
	return ret;
}

/*
 * synchronous = NORMAL: in WAL mode a commit is not fsynced, only
 * checkpoints are. It survives kilnd crashing or being killed at any point
 * (the WAL is in the page cache); only an OS crash or power loss can undo
 * the last commits, and never corrupts the file. After a power loss every
 * VMM is gone anyway and the restart marks those sandboxes lost, so losing
 * their last state change costs nothing, while FULL would put an fsync in
 * every create. Token changes are the exception (reg_token.c): a
 * revocation undone by a power loss would let a revoked token in again.
 */
static int configure(struct reg *r, struct kiln_err *err)
{
	const unsigned char *mode;
	sqlite3_stmt *s;
	int64_t fk;
	int rc, ret;

	sqlite3_extended_result_codes(r->db, 1);
	sqlite3_busy_timeout(r->db, REG_BUSY_MS);
	/* No writable_schema tricks, no trust in functions named by the schema. */
	sqlite3_db_config(r->db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL);
	sqlite3_db_config(r->db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, NULL);
	rc = sqlite3_prepare_v2(r->db, "PRAGMA journal_mode = WAL", -1, &s, NULL);
	if (rc != SQLITE_OK)
		return reg_sqlfail(r, rc, "reading it", err);
	rc = sqlite3_step(s);
	mode = rc == SQLITE_ROW ? sqlite3_column_text(s, 0) : NULL;
	if (rc != SQLITE_ROW) {
		ret = reg_sqlfail(r, rc, "reading it", err);
		sqlite3_finalize(s);
		return ret;
	}
	if (!mode || strcmp((const char *)mode, "wal")) {
		ret = kiln_fail(err, ENOTSUP, "registry %s: its filesystem does not support SQLite's WAL mode "
				"(journal mode stays %s); put the state dir on a local filesystem",
				r->path, mode ? (const char *)mode : "unknown");
		sqlite3_finalize(s);
		return ret;
	}
	sqlite3_finalize(s);
	if ((ret = exec_sql(r, "PRAGMA synchronous = NORMAL", "setting synchronous", err)) ||
	    (ret = exec_sql(r, "PRAGMA foreign_keys = ON", "turning foreign keys on", err)) ||
	    (ret = exec_int(r, "PRAGMA foreign_keys", &fk, err)))
		return ret;
	if (fk != 1)
		return kiln_fail(err, ENOTSUP, "registry %s: this SQLite has no foreign keys; install Debian's libsqlite3",
				 r->path);
	return migrate(r, err);
}

/* Create or check the file itself before SQLite sees it: owner-only, ours, regular, no symlink. */
static int open_file(const char *path, struct stat *st, struct kiln_err *err)
{
	int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0600);
	int e;

	if (fd < 0) {
		e = errno;
		if (e == ELOOP)
			return kiln_fail(err, e, "registry %s is a symbolic link; give kilnd the real file's path "
					 "(or a state dir without links)", path);
		if (e == ENOENT)
			return kiln_fail(err, e, "registry %s: its directory does not exist; create the state dir first",
					 path);
		return kiln_fail(err, e, "registry %s: cannot open or create it: %s", path, strerror(e));
	}
	if (fstat(fd, st) < 0) {
		e = errno;
		close(fd);
		return kiln_fail(err, e, "registry %s: fstat: %s", path, strerror(e));
	}
	if (!S_ISREG(st->st_mode)) {
		close(fd);
		return kiln_fail(err, EINVAL, "registry %s is not a regular file; give kilnd a file path", path);
	}
	if (st->st_uid != geteuid()) {
		close(fd);
		return kiln_fail(err, EPERM, "registry %s belongs to uid %u, not to kilnd's uid %u; "
				 "chown it or move it aside", path, (unsigned)st->st_uid, (unsigned)geteuid());
	}
	if ((st->st_mode & 07777) != 0600 && fchmod(fd, 0600) < 0) {
		e = errno;
		close(fd);
		return kiln_fail(err, e, "registry %s: chmod 0600: %s", path, strerror(e));
	}
	return fd;
}

int reg_open(struct reg **out, const char *path, struct kiln_err *err)
{
	struct stat st, now;
	struct reg *r;
	int fd, rc, ret;

	*out = NULL;
	if (!path || !*path || strnlen(path, PATH_MAX) >= PATH_MAX)
		return kiln_fail(err, EINVAL, "registry path is empty or too long");
	if (!(r = calloc(1, sizeof(*r))))
		return kiln_fail(err, ENOMEM, "registry %s: out of memory", path);
	strcpy(r->path, path);
	if ((fd = open_file(path, &st, err)) < 0) {
		free(r);
		return fd;
	}
	/* Our own descriptor holds the file while SQLite opens it by name. */
	rc = sqlite3_open_v2(path, &r->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		ret = reg_sqlfail(r, rc, "opening it", err);
		goto fail;
	}
	if (lstat(path, &now) < 0 || now.st_dev != st.st_dev || now.st_ino != st.st_ino) {
		ret = kiln_fail(err, EBUSY, "registry %s was replaced while kilnd opened it; "
				"nothing but kilnd may write its state dir", path);
		goto fail;
	}
	if ((ret = configure(r, err)))
		goto fail;
	close(fd);
	*out = r;
	return 0;
fail:
	close(fd);
	reg_close(r);
	return ret;
}

void reg_close(struct reg *r)
{
	if (!r)
		return;
	for (int i = 0; i < r->n_stmts; i++)
		sqlite3_finalize(r->stmts[i].st);
	sqlite3_close(r->db);
	free(r);
}
