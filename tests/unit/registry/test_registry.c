/*
 * kilnd's registry (scheduler/registry.c) against real SQLite files in a
 * scratch directory: every call, persistence across reopen, a crash in the
 * middle of a transaction, a reader beside a writer, a full disk, and
 * hostile files and arguments. Each test runs in its own forked process
 * (Check's default), so the SQLite auto-extensions some install stay there.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <check.h>
#include <sqlite3.h>

#include "registry.h"

#define T0	1796550000000LL	/* the injected clock */

static char dir[64], path[128];
static struct kiln_err err;

static void setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/kiln-reg-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/registry.db", dir);
	memset(&err, 0, sizeof(err));
}

static void teardown(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
}

static struct reg *open_ok(void)
{
	struct reg *r;
	int ret = reg_open(&r, path, &err);

	ck_assert_msg(ret == 0, "reg_open: %d %s", ret, err.msg);
	return r;
}

#define OK(call) do { int r_ = (call); ck_assert_msg(r_ == 0, "%s: %d %s", #call, r_, err.msg); } while (0)
#define FAILS(call, e, text) do { int r_ = (call); \
	ck_assert_msg(r_ == -(e), "%s: %d, expected %d (%s)", #call, r_, -(e), err.msg); \
	ck_assert_msg(strstr(err.msg, (text)), "%s: \"%s\" lacks \"%s\"", #call, err.msg, (text)); } while (0)

/* A new sandbox's spec with the given labels ("k=v" strings, NULL-terminated). */
static struct reg_sandbox spec(const char *const *labels)
{
	struct reg_sandbox sb = { .image = "debian", .memory_mb = 1280, .vcpus = 2,
				  .timeout_kind = REG_TIMEOUT_DURATION, .timeout_ms = 300000, .stop_at_ms = T0 + 300000 };

	ck_assert_int_eq(reg_sandbox_id_new("lcl", sb.id, &err), 0);
	for (; labels && *labels; labels++) {
		const char *eq = strchr(*labels, '=');

		snprintf(sb.labels[sb.n_labels].key, sizeof(sb.labels[0].key), "%.*s", (int)(eq - *labels), *labels);
		snprintf(sb.labels[sb.n_labels].value, sizeof(sb.labels[0].value), "%s", eq + 1);
		sb.n_labels++;
	}
	return sb;
}

static struct reg_sandbox insert(struct reg *r, const char *const *labels)
{
	struct reg_sandbox sb = spec(labels);

	OK(reg_sandbox_insert(r, &sb, T0, &err));
	return sb;
}

/* One integer from raw SQL on the file, as a second connection sees it. */
static long long raw_int(const char *q)
{
	sqlite3 *db;
	sqlite3_stmt *s;
	long long v = -1;

	ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	ck_assert_msg(sqlite3_prepare_v2(db, q, -1, &s, NULL) == SQLITE_OK, "%s: %s", q, sqlite3_errmsg(db));
	if (sqlite3_step(s) == SQLITE_ROW)
		v = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	sqlite3_close(db);
	return v;
}

static void raw_exec(const char *q)
{
	sqlite3 *db;

	ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL), SQLITE_OK);
	ck_assert_msg(sqlite3_exec(db, q, NULL, NULL, NULL) == SQLITE_OK, "%s: %s", q, sqlite3_errmsg(db));
	sqlite3_close(db);
}

/* ---- opening -------------------------------------------------------------- */

START_TEST(test_open_owner_only)
{
	char wal[160];
	struct stat st;
	struct reg *r;

	umask(0);
	r = open_ok();
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_mode & 07777, 0600);
	insert(r, NULL);
	snprintf(wal, sizeof(wal), "%s-wal", path);
	ck_assert_int_eq(stat(wal, &st), 0);	/* WAL mode, and its files are as private */
	ck_assert_int_eq(st.st_mode & 07777, 0600);
	reg_close(r);
	ck_assert_int_eq(raw_int("PRAGMA user_version"), 3);

	/* An existing file with loose bits is narrowed. */
	ck_assert_int_eq(chmod(path, 0644), 0);
	r = open_ok();
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_mode & 07777, 0600);
	reg_close(r);
	reg_close(NULL);
}
END_TEST

START_TEST(test_open_refuses_odd_files)
{
	char target[160], sub[160];
	struct reg *r = (struct reg *)1;

	snprintf(target, sizeof(target), "%s/real.db", dir);
	ck_assert_int_eq(close(open(target, O_CREAT | O_WRONLY, 0600)), 0);
	ck_assert_int_eq(symlink(target, path), 0);
	FAILS(reg_open(&r, path, &err), ELOOP, "symbolic link");
	ck_assert_ptr_null(r);
	ck_assert_ptr_nonnull(strstr(err.msg, path));
	unlink(path);

	ck_assert_int_eq(mkfifo(path, 0600), 0);
	FAILS(reg_open(&r, path, &err), EINVAL, "not a regular file");
	unlink(path);

	ck_assert_int_eq(mkdir(path, 0700), 0);
	ck_assert_int_lt(reg_open(&r, path, &err), 0);
	ck_assert_ptr_nonnull(strstr(err.msg, path));
	rmdir(path);

	if (geteuid() == 0) {	/* a file planted by another user */
		ck_assert_int_eq(close(open(path, O_CREAT | O_WRONLY, 0600)), 0);
		ck_assert_int_eq(chown(path, 65534, 65534), 0);
		FAILS(reg_open(&r, path, &err), EPERM, "belongs to uid 65534");
		unlink(path);
	}

	snprintf(sub, sizeof(sub), "%s/missing/registry.db", dir);
	FAILS(reg_open(&r, sub, &err), ENOENT, "create the state dir");
	FAILS(reg_open(&r, "", &err), EINVAL, "empty");
}
END_TEST

START_TEST(test_open_refuses_other_files)
{
	static const char junk[] = "this is not a database, it is a shopping list: eggs, flour, milk\n";
	struct reg *r;
	int fd = open(path, O_CREAT | O_WRONLY, 0600);

	for (int i = 0; i < 200; i++)
		ck_assert_int_eq(write(fd, junk, sizeof(junk) - 1), (ssize_t)sizeof(junk) - 1);
	close(fd);
	FAILS(reg_open(&r, path, &err), EBADMSG, "not a SQLite database");
	ck_assert_ptr_nonnull(strstr(err.msg, path));
	ck_assert_ptr_nonnull(strstr(err.msg, "move the file aside"));
	unlink(path);

	raw_exec("CREATE TABLE recipes (name TEXT)");
	FAILS(reg_open(&r, path, &err), EBADMSG, "not kiln's registry");
	unlink(path);

	r = open_ok();
	reg_close(r);
	raw_exec("PRAGMA user_version = 99");
	FAILS(reg_open(&r, path, &err), ENOTSUP, "schema version 99, newer than this kilnd knows (3)");
}
END_TEST

/* ---- sandboxes -------------------------------------------------------------- */

START_TEST(test_sandbox_persists)
{
	static const char *const labels[] = { "team=a", "app.kubernetes.io/name=web", "empty=", NULL };
	struct reg_sandbox sb, got;
	struct reg_event *ev;
	struct reg *r = open_ok();
	size_t n;

	sb = insert(r, labels);
	reg_close(r);

	r = open_ok();
	OK(reg_sandbox_get(r, sb.id, &got, &err));
	ck_assert_str_eq(got.id, sb.id);
	ck_assert_str_eq(got.image, "debian");
	ck_assert_int_eq(got.state, REG_CREATING);
	ck_assert_uint_eq(got.memory_mb, 1280);
	ck_assert_uint_eq(got.vcpus, 2);
	ck_assert_int_eq(got.timeout_kind, REG_TIMEOUT_DURATION);
	ck_assert_int_eq(got.timeout_ms, 300000);
	ck_assert_int_eq(got.stop_at_ms, T0 + 300000);
	ck_assert_int_eq(got.created_ms, T0);
	ck_assert_int_eq(got.ended_ms, 0);
	ck_assert_int_eq(got.end_reason, REG_END_NONE);
	ck_assert_int_eq(got.vmm.pid, 0);
	ck_assert_uint_eq(got.cpu_ns, 0);
	ck_assert_uint_eq(got.n_labels, 3);	/* sorted by key */
	ck_assert_str_eq(got.labels[0].key, "app.kubernetes.io/name");
	ck_assert_str_eq(got.labels[0].value, "web");
	ck_assert_str_eq(got.labels[1].key, "empty");
	ck_assert_str_eq(got.labels[1].value, "");
	ck_assert_str_eq(got.labels[2].key, "team");
	OK(reg_event_list(r, sb.id, 0, 100, &ev, &n, &err));
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(ev[0].kind, "created");
	ck_assert_int_eq(ev[0].at_ms, T0);
	free(ev);
	reg_close(r);
	ck_assert_int_eq(raw_int("SELECT json_extract(labels, '$.team') = 'a' FROM sandboxes"), 1);
	ck_assert_int_eq(raw_int("SELECT count(*) FROM usage"), 1);

	r = open_ok();
	FAILS(reg_sandbox_insert(r, &sb, T0, &err), EEXIST, "already there");
	FAILS(reg_sandbox_get(r, "sbx_lcl_00000000000000000000", &got, &err), ENOENT, "not found");
	reg_close(r);
}
END_TEST

/* A registry of schema 1 (before images) is brought to 2: its sandboxes and templates become "minimal". */
START_TEST(test_upgrade_from_v1)
{
	struct reg_template t = { .image = "base", .memory_mb = 768, .vcpus = 1, .path = "/x/snap" };
	struct reg_sandbox sb, got;
	struct reg *r = open_ok();

	memset(t.kernel_sha256, 'a', 64);
	memset(t.initramfs_sha256, 'b', 64);
	sb = insert(r, NULL);
	OK(reg_template_put(r, &t, T0, &err));
	reg_close(r);
	raw_exec("ALTER TABLE sandboxes DROP COLUMN net; ALTER TABLE sandboxes DROP COLUMN allow_net;"
		 "ALTER TABLE sandboxes DROP COLUMN secrets;"
		 "ALTER TABLE sandboxes DROP COLUMN image; DROP TABLE volume_attachments; DROP TABLE volumes;"
		 "PRAGMA user_version = 1");
	r = open_ok();
	ck_assert_int_eq(raw_int("PRAGMA user_version"), 3);
	OK(reg_sandbox_get(r, sb.id, &got, &err));
	ck_assert_str_eq(got.image, "minimal");
	ck_assert_int_eq(got.net, 0);
	{
		char *allow;

		OK(reg_sandbox_allow_net(r, sb.id, &allow, &err));
		ck_assert_str_eq(allow, "[]");
		free(allow);
		OK(reg_sandbox_secrets(r, sb.id, &allow, &err));
		ck_assert_str_eq(allow, "[]");
		free(allow);
	}
	OK(reg_template_get(r, "minimal", 768, 1, &t, &err));
	ck_assert_str_eq(t.path, "/x/snap");
	reg_close(r);
}
END_TEST

/* Volumes: one writer or many readers, released when a sandbox ends; resize and delete only when free. */
START_TEST(test_volumes)
{
	struct reg *r = open_ok();
	struct reg_sandbox a = spec(NULL), b = spec(NULL), c = spec(NULL), got;
	struct reg_volume v, *list;
	size_t n;

	OK(reg_volume_create(r, "data", 300ull << 20, T0, &err));
	FAILS(reg_volume_create(r, "data", 300ull << 20, T0, &err), EEXIST, "volume data already exists");
	FAILS(reg_volume_create(r, "small", 299ull << 20, T0, &err), EINVAL, "300 MiB to 20 GiB");
	FAILS(reg_volume_create(r, "big", (20ull << 30) + 4096, T0, &err), EINVAL, "300 MiB to 20 GiB");
	FAILS(reg_volume_create(r, "Bad/Name", 300ull << 20, T0, &err), EINVAL, "is malformed");
	FAILS(reg_volume_get(r, "nope", &v, &err), ENOENT, "no volume nope");

	a.vols[0] = (struct reg_attach){ .volume = "data", .path = "/data" };
	a.n_vols = 1;
	OK(reg_sandbox_insert(r, &a, T0, &err));
	OK(reg_sandbox_get(r, a.id, &got, &err));
	ck_assert_uint_eq(got.n_vols, 1);
	ck_assert_str_eq(got.vols[0].volume, "data");
	ck_assert_str_eq(got.vols[0].path, "/data");
	ck_assert_int_eq(got.vols[0].readonly, 0);
	OK(reg_volume_get(r, "data", &v, &err));
	ck_assert_uint_eq(v.writers, 1);
	ck_assert_str_eq(v.writer, a.id);

	b.vols[0] = (struct reg_attach){ .volume = "data", .path = "/d" };
	b.n_vols = 1;
	FAILS(reg_sandbox_insert(r, &b, T0, &err), EBUSY, "attached writable to sandbox sbx_");
	ck_assert_ptr_nonnull(strstr(err.msg, a.id));
	FAILS(reg_sandbox_get(r, b.id, &got, &err), ENOENT, "not found");	/* the refused insert left nothing */
	b.vols[0].readonly = 1;
	FAILS(reg_sandbox_insert(r, &b, T0, &err), EBUSY, "one writer at a time");
	FAILS(reg_volume_resize(r, "data", 400ull << 20, T0, &err), EBUSY, "attached writable");
	FAILS(reg_volume_delete(r, "data", &err), EBUSY, "attached writable");

	OK(reg_sandbox_set_state(r, a.id, REG_STOPPED, REG_END_KILLED, NULL, T0 + 1000, &err));
	OK(reg_volume_get(r, "data", &v, &err));
	ck_assert_uint_eq(v.writers, 0);
	OK(reg_sandbox_insert(r, &b, T0, &err));		/* readers share it */
	c.vols[0] = (struct reg_attach){ .volume = "data", .path = "/d", .readonly = 1 };
	c.n_vols = 1;
	OK(reg_sandbox_insert(r, &c, T0, &err));
	OK(reg_volume_get(r, "data", &v, &err));
	ck_assert_uint_eq(v.readers, 2);
	a = spec(NULL);
	a.vols[0] = (struct reg_attach){ .volume = "data", .path = "/data" };
	a.n_vols = 1;
	FAILS(reg_sandbox_insert(r, &a, T0, &err), EBUSY, "attached read-only");
	a.vols[0] = (struct reg_attach){ .volume = "nope", .path = "/x" };
	FAILS(reg_sandbox_insert(r, &a, T0, &err), ENOENT, "no volume nope");
	a.vols[0] = (struct reg_attach){ .volume = "data", .path = "relative", .readonly = 1 };
	FAILS(reg_sandbox_insert(r, &a, T0, &err), EINVAL, "absolute");
	OK(reg_sandbox_set_state(r, b.id, REG_FAILED, REG_END_LOST, NULL, T0, &err));
	OK(reg_sandbox_set_state(r, c.id, REG_STOPPED, REG_END_KILLED, NULL, T0, &err));

	/* Metering: 300 MiB for an hour, then 600 MiB for an hour. */
	FAILS(reg_volume_resize(r, "data", 299ull << 20, T0, &err), EINVAL, "300 MiB to 20 GiB");
	OK(reg_volume_resize(r, "data", 600ull << 20, T0 + 3600000, &err));
	FAILS(reg_volume_resize(r, "data", 500ull << 20, T0 + 3600000, &err), EINVAL, "only grows");
	OK(reg_volume_get(r, "data", &v, &err));
	ck_assert_uint_eq(v.size_bytes, 600ull << 20);
	ck_assert_double_eq_tol(reg_volume_gib_hours(&v, T0 + 7200000), (300.0 + 600.0) / 1024.0, 1e-9);
	OK(reg_volume_create(r, "b", 1ull << 30, T0, &err));
	OK(reg_volume_list(r, &list, &n, &err));
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(list[0].name, "b");
	free(list);
	OK(reg_volume_delete(r, "data", &err));
	FAILS(reg_volume_get(r, "data", &v, &err), ENOENT, "no volume");
	reg_close(r);
}
END_TEST

START_TEST(test_sandbox_hostile_input)
{
	static const char *const bad_ids[] = {
		"", "sbx_lcl_", "sbx_lcl_0000000000000000000", "sbx_lcl_000000000000000000000",
		"sbx_LCL_00000000000000000000", "sbx_lcl_0000000000000000000i", "sbx_lcl-00000000000000000000",
		"xbx_lcl_00000000000000000000", "sbx_lcl_0000000000000000000'", "sbx_lcl_00000000000'; DROP TABLE",
	};
	struct reg_sandbox sb, got;
	struct reg *r = open_ok();
	struct reg_label f[6] = { { "k", "v" } };
	struct reg_sandbox *list;
	size_t n;

	for (size_t i = 0; i < sizeof(bad_ids) / sizeof(bad_ids[0]); i++) {
		FAILS(reg_sandbox_get(r, bad_ids[i], &got, &err), EINVAL, "is malformed");
		FAILS(reg_sandbox_set_state(r, bad_ids[i], REG_RUNNING, REG_END_NONE, NULL, T0, &err), EINVAL, "malformed");
		FAILS(reg_event_add(r, bad_ids[i], "x", NULL, T0, &err), EINVAL, "malformed");
	}
	FAILS(reg_sandbox_get(r, NULL, &got, &err), EINVAL, "missing");

	sb = spec(NULL);
	sb.memory_mb = 0;
	FAILS(reg_sandbox_insert(r, &sb, T0, &err), EINVAL, "memory_mb 0 is out of range");
	sb = spec(NULL);
	snprintf(sb.image, sizeof(sb.image), "Debian/12");
	FAILS(reg_sandbox_insert(r, &sb, T0, &err), EINVAL, "image name \"Debian/12\" is malformed");
	sb = spec(NULL);
	sb.timeout_ms = 0;
	FAILS(reg_sandbox_insert(r, &sb, T0, &err), EINVAL, "not a valid timeout");
	sb = spec((const char *const[]){ "a=1", "b=2", "c=3", "d=4", "e=5", NULL });
	sb.n_labels = 6;
	FAILS(reg_sandbox_insert(r, &sb, T0, &err), EINVAL, "6 labels given (at most 5)");
	sb = spec((const char *const[]){ "a=1", "a=2", NULL });
	FAILS(reg_sandbox_insert(r, &sb, T0, &err), EINVAL, "given twice");
	sb = spec((const char *const[]){ "=1", NULL });
	FAILS(reg_sandbox_insert(r, &sb, T0, &err), EINVAL, "label key");
	sb = spec((const char *const[]){ "a=line\nbreak", NULL });
	FAILS(reg_sandbox_insert(r, &sb, T0, &err), EINVAL, "control characters");
	sb = spec((const char *const[]){ "a=\xc0\xaf", NULL });	/* an overlong '/' */
	FAILS(reg_sandbox_insert(r, &sb, T0, &err), EINVAL, "not UTF-8");
	sb = spec((const char *const[]){ "a=\xed\xa0\x80", NULL });	/* a surrogate */
	FAILS(reg_sandbox_insert(r, &sb, T0, &err), EINVAL, "not UTF-8");
	sb = spec(NULL);
	memset(sb.labels[0].key, 'k', sizeof(sb.labels[0].key));	/* no NUL */
	sb.n_labels = 1;
	FAILS(reg_sandbox_insert(r, &sb, T0, &err), EINVAL, "not terminated");
	sb = spec((const char *const[]){ "ключ=значение ✓", NULL });
	OK(reg_sandbox_insert(r, &sb, T0, &err));
	OK(reg_sandbox_list(r, 0, NULL, 0, &list, &n, &err));
	ck_assert_uint_eq(n, 1);	/* nothing but the good one went in */
	ck_assert_str_eq(list[0].labels[0].value, "значение ✓");
	free(list);
	FAILS(reg_sandbox_list(r, 0, f, 6, &list, &n, &err), EINVAL, "6 label filters given");
	FAILS(reg_sandbox_list(r, 1u << 9, NULL, 0, &list, &n, &err), EINVAL, "unknown states");
	reg_close(r);
	ck_assert_int_eq(raw_int("SELECT count(*) FROM events"), 1);
}
END_TEST

START_TEST(test_sandbox_states)
{
	struct reg *r = open_ok();
	struct reg_sandbox sb = insert(r, NULL), other = insert(r, NULL), got;
	struct reg_event *ev;
	size_t n;

	FAILS(reg_sandbox_set_state(r, sb.id, REG_RUNNING, REG_END_KILLED, NULL, T0, &err), EINVAL, "end reason");
	FAILS(reg_sandbox_set_state(r, sb.id, REG_STOPPED, REG_END_NONE, NULL, T0, &err), EINVAL, "needs an end reason");
	FAILS(reg_sandbox_set_state(r, sb.id, REG_CREATING, REG_END_NONE, NULL, T0, &err), EINVAL, "cannot become creating");
	OK(reg_sandbox_set_state(r, sb.id, REG_RUNNING, REG_END_NONE, "restored in 12 ms", T0 + 12, &err));
	FAILS(reg_sandbox_set_state(r, sb.id, REG_CREATING, REG_END_NONE, NULL, T0, &err), EINVAL, "is running");
	OK(reg_sandbox_set_state(r, sb.id, REG_STOPPING, REG_END_KILLED, NULL, T0 + 50, &err));
	OK(reg_sandbox_get(r, sb.id, &got, &err));
	ck_assert_int_eq(got.state, REG_STOPPING);
	ck_assert_int_eq(got.end_reason, REG_END_KILLED);
	ck_assert_int_eq(got.ended_ms, 0);
	OK(reg_sandbox_set_state(r, sb.id, REG_STOPPED, REG_END_NONE, NULL, T0 + 60, &err));
	OK(reg_sandbox_get(r, sb.id, &got, &err));
	ck_assert_int_eq(got.state, REG_STOPPED);
	ck_assert_int_eq(got.end_reason, REG_END_KILLED);
	ck_assert_int_eq(got.ended_ms, T0 + 60);
	FAILS(reg_sandbox_set_state(r, sb.id, REG_FAILED, REG_END_OOM, NULL, T0, &err), EALREADY, "already ended");

	OK(reg_event_list(r, sb.id, 0, 100, &ev, &n, &err));
	ck_assert_uint_eq(n, 4);
	ck_assert_str_eq(ev[0].kind, "created");
	ck_assert_str_eq(ev[1].kind, "running");
	ck_assert_str_eq(ev[1].detail, "restored in 12 ms");
	ck_assert_int_eq(ev[1].at_ms, T0 + 12);
	ck_assert_str_eq(ev[2].kind, "killed");
	ck_assert_str_eq(ev[3].kind, "stopped");
	free(ev);

	/* Straight from creating to failed, as a create that went wrong. */
	OK(reg_sandbox_set_state(r, other.id, REG_FAILED, REG_END_CREATE_FAILED, "no memory", T0 + 5, &err));
	OK(reg_sandbox_get(r, other.id, &got, &err));
	ck_assert_int_eq(got.end_reason, REG_END_CREATE_FAILED);
	ck_assert_str_eq(reg_end_name(got.end_reason), "create_failed");
	ck_assert_ptr_null(reg_state_name(REG_STATE_COUNT));
	reg_close(r);
}
END_TEST

START_TEST(test_sandbox_vmm_and_stop_at)
{
	struct reg *r = open_ok();
	struct reg_sandbox sb = insert(r, NULL), got;
	struct reg_vmm vmm = { .pid = 4242, .start_time = 123456789 };
	struct reg_event *ev;
	size_t n;

	strcpy(vmm.control_path, "/var/lib/kiln/run/x/control.sock");
	strcpy(vmm.vsock_path, "/var/lib/kiln/run/x/vsock.sock");
	strcpy(vmm.run_dir, "/var/lib/kiln/run/x");
	OK(reg_sandbox_set_vmm(r, sb.id, &vmm, &err));
	OK(reg_sandbox_set_stop_at(r, sb.id, T0 + 900000, T0 + 1000, &err));
	reg_close(r);

	r = open_ok();
	OK(reg_sandbox_get(r, sb.id, &got, &err));
	ck_assert_int_eq(got.vmm.pid, 4242);
	ck_assert_uint_eq(got.vmm.start_time, 123456789);
	ck_assert_str_eq(got.vmm.control_path, vmm.control_path);
	ck_assert_str_eq(got.vmm.vsock_path, vmm.vsock_path);
	ck_assert_str_eq(got.vmm.run_dir, vmm.run_dir);
	ck_assert_int_eq(got.stop_at_ms, T0 + 900000);
	OK(reg_event_list(r, sb.id, 0, 100, &ev, &n, &err));
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(ev[1].kind, "extended");
	ck_assert_ptr_nonnull(strstr(ev[1].detail, "\"stop_at_ms\":1796550900000"));
	free(ev);

	strcpy(vmm.run_dir, "relative/dir");
	FAILS(reg_sandbox_set_vmm(r, sb.id, &vmm, &err), EINVAL, "not an absolute path");
	strcpy(vmm.run_dir, "/x");
	vmm.pid = 1;
	FAILS(reg_sandbox_set_vmm(r, sb.id, &vmm, &err), EINVAL, "is not a VMM");
	FAILS(reg_sandbox_set_stop_at(r, sb.id, 0, T0, &err), EINVAL, "is not a time");
	FAILS(reg_sandbox_set_stop_at(r, "sbx_lcl_00000000000000000000", T0, T0, &err), ENOENT, "not found");

	OK(reg_sandbox_set_state(r, sb.id, REG_STOPPED, REG_END_TIMED_OUT, NULL, T0 + 2000, &err));
	vmm.pid = 4243;
	FAILS(reg_sandbox_set_vmm(r, sb.id, &vmm, &err), EALREADY, "already ended");
	FAILS(reg_sandbox_set_stop_at(r, sb.id, T0 + 5, T0, &err), EALREADY, "already ended");
	reg_close(r);
}
END_TEST

static int has(const struct reg_sandbox *l, size_t n, const char *id)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(l[i].id, id) == 0)
			return 1;
	return 0;
}

START_TEST(test_sandbox_list_filters)
{
	struct reg *r = open_ok();
	struct reg_sandbox a = insert(r, (const char *const[]){ "team=a", "env=prod", NULL });
	struct reg_sandbox b = insert(r, (const char *const[]){ "team=a", "env=dev", NULL });
	struct reg_sandbox c = insert(r, (const char *const[]){ "team=b", "env=prod", NULL });
	struct reg_sandbox d = insert(r, NULL);
	struct reg_label f[2] = { { "team", "a" }, { "env", "prod" } }, inj = { "team", "a' OR '1'='1" };
	struct reg_sandbox *l;
	size_t n;

	OK(reg_sandbox_list(r, 0, NULL, 0, &l, &n, &err));
	ck_assert_uint_eq(n, 4);
	free(l);
	OK(reg_sandbox_list(r, 0, f, 1, &l, &n, &err));
	ck_assert_uint_eq(n, 2);
	ck_assert(has(l, n, a.id) && has(l, n, b.id));
	ck_assert_uint_eq(l[0].n_labels, 2);
	free(l);
	OK(reg_sandbox_list(r, 0, f, 2, &l, &n, &err));	/* every pair must match */
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(l[0].id, a.id);
	free(l);
	OK(reg_sandbox_list(r, 0, &f[1], 1, &l, &n, &err));
	ck_assert_uint_eq(n, 2);
	ck_assert(has(l, n, a.id) && has(l, n, c.id));
	free(l);
	OK(reg_sandbox_list(r, 0, &inj, 1, &l, &n, &err));
	ck_assert_uint_eq(n, 0);
	ck_assert_ptr_null(l);

	OK(reg_sandbox_set_state(r, a.id, REG_RUNNING, REG_END_NONE, NULL, T0, &err));
	OK(reg_sandbox_set_state(r, b.id, REG_STOPPING, REG_END_KILLED, NULL, T0, &err));
	OK(reg_sandbox_set_state(r, c.id, REG_FAILED, REG_END_VMM_CRASHED, NULL, T0, &err));
	OK(reg_sandbox_list(r, REG_MASK(REG_RUNNING), NULL, 0, &l, &n, &err));
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(l[0].id, a.id);
	free(l);
	OK(reg_sandbox_list(r, REG_MASK(REG_FAILED) | REG_MASK(REG_CREATING), f, 1, &l, &n, &err));
	ck_assert_uint_eq(n, 0);
	free(l);
	uint64_t counts[REG_STATE_COUNT];
	OK(reg_sandbox_count(r, counts, &err));
	ck_assert_uint_eq(counts[REG_CREATING], 1);
	ck_assert_uint_eq(counts[REG_RUNNING], 1);
	ck_assert_uint_eq(counts[REG_STOPPING], 1);
	ck_assert_uint_eq(counts[REG_STOPPED], 0);
	ck_assert_uint_eq(counts[REG_FAILED], 1);
	OK(reg_sandbox_list_live(r, &l, &n, &err));	/* all but the failed one */
	ck_assert_uint_eq(n, 3);
	ck_assert(has(l, n, a.id) && has(l, n, b.id) && has(l, n, d.id));
	free(l);
	reg_close(r);
}
END_TEST

START_TEST(test_sandbox_prune)
{
	struct reg *r = open_ok();
	struct reg_sandbox old = insert(r, (const char *const[]){ "x=1", NULL });
	struct reg_sandbox recent = insert(r, NULL), live = insert(r, NULL), got;
	size_t n;

	OK(reg_sandbox_set_state(r, old.id, REG_STOPPED, REG_END_KILLED, NULL, T0 + 10, &err));
	OK(reg_sandbox_set_state(r, recent.id, REG_FAILED, REG_END_OOM, NULL, T0 + 5000, &err));
	OK(reg_usage_add(r, old.id, 5, 6, &err));
	OK(reg_sandbox_prune(r, T0 + 1000, &n, &err));
	ck_assert_uint_eq(n, 1);
	FAILS(reg_sandbox_get(r, old.id, &got, &err), ENOENT, "not found");
	OK(reg_sandbox_get(r, recent.id, &got, &err));
	OK(reg_sandbox_get(r, live.id, &got, &err));
	OK(reg_sandbox_prune(r, T0 + 1000000, &n, &err));	/* the live one stays */
	ck_assert_uint_eq(n, 1);
	reg_close(r);
	ck_assert_int_eq(raw_int("SELECT count(*) FROM sandboxes"), 1);
	ck_assert_int_eq(raw_int("SELECT count(*) FROM events"), 1);	/* cascaded */
	ck_assert_int_eq(raw_int("SELECT count(*) FROM usage"), 1);
	ck_assert_int_eq(raw_int("SELECT count(*) FROM sandbox_labels"), 0);
}
END_TEST

/* ---- events and usage ---------------------------------------------------------- */

START_TEST(test_events)
{
	struct reg *r = open_ok();
	struct reg_sandbox sb = insert(r, NULL);
	char long_detail[REG_DETAIL_MAX + 1];
	struct reg_event *ev;
	size_t n;

	for (int i = 0; i < 5; i++)
		OK(reg_event_add(r, sb.id, "oom_warning", "{\"used_mb\":1200}", T0 + i, &err));
	OK(reg_event_list(r, sb.id, 0, 3, &ev, &n, &err));
	ck_assert_uint_eq(n, 3);
	ck_assert_str_eq(ev[0].kind, "created");
	ck_assert_str_eq(ev[1].detail, "{\"used_mb\":1200}");
	ck_assert_int_lt(ev[0].seq, ev[1].seq);
	int64_t after = ev[2].seq;
	free(ev);
	OK(reg_event_list(r, sb.id, after, 100, &ev, &n, &err));
	ck_assert_uint_eq(n, 3);
	ck_assert_int_gt(ev[0].seq, after);
	free(ev);

	FAILS(reg_event_add(r, sb.id, "Bad-Kind", NULL, T0, &err), EINVAL, "event kind");
	FAILS(reg_event_add(r, sb.id, "", NULL, T0, &err), EINVAL, "event kind");
	memset(long_detail, 'x', sizeof(long_detail) - 1);
	long_detail[sizeof(long_detail) - 1] = '\0';
	FAILS(reg_event_add(r, sb.id, "x", long_detail, T0, &err), EINVAL, "event detail");
	FAILS(reg_event_add(r, "sbx_lcl_00000000000000000000", "x", NULL, T0, &err), ENOENT, "not found");
	FAILS(reg_event_list(r, sb.id, 0, 0, &ev, &n, &err), EINVAL, "out of range");
	FAILS(reg_event_list(r, "sbx_lcl_00000000000000000000", 0, 1, &ev, &n, &err), ENOENT, "not found");
	reg_close(r);
}
END_TEST

START_TEST(test_usage)
{
	struct reg *r = open_ok();
	struct reg_sandbox sb = insert(r, NULL), got;

	OK(reg_usage_add(r, sb.id, 1000, 1280 * 1000, &err));
	OK(reg_usage_add(r, sb.id, 500, 1280 * 500, &err));
	OK(reg_sandbox_set_state(r, sb.id, REG_STOPPED, REG_END_KILLED, NULL, T0, &err));
	OK(reg_usage_add(r, sb.id, 1, 1, &err));	/* the last tick lands after the end */
	reg_close(r);
	r = open_ok();
	OK(reg_sandbox_get(r, sb.id, &got, &err));
	ck_assert_uint_eq(got.cpu_ns, 1501);
	ck_assert_uint_eq(got.mem_mb_ms, 1280 * 1500 + 1);
	FAILS(reg_usage_add(r, sb.id, INT64_MAX, 0, &err), EOVERFLOW, "INT64_MAX");
	FAILS(reg_usage_add(r, sb.id, (uint64_t)INT64_MAX + 1, 0, &err), EOVERFLOW, "INT64_MAX");
	OK(reg_sandbox_get(r, sb.id, &got, &err));
	ck_assert_uint_eq(got.cpu_ns, 1501);
	FAILS(reg_usage_add(r, "sbx_lcl_00000000000000000000", 1, 1, &err), ENOENT, "not found");
	reg_close(r);
}
END_TEST

/* ---- tokens ---------------------------------------------------------------------- */

/* 1 if the bytes of s appear in the file at p. */
static int file_holds(const char *p, const char *s)
{
	static char buf[1 << 20];
	FILE *f = fopen(p, "rb");
	size_t n;

	if (!f)
		return 0;
	n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	return memmem(buf, n, s, strlen(s)) != NULL;
}

START_TEST(test_tokens)
{
	char token[REG_TOKEN_MAX], id[REG_TOKEN_ID_MAX], id2[REG_TOKEN_ID_MAX], who[REG_TOKEN_ID_MAX], wal[160];
	struct reg *r = open_ok();
	struct reg_token *l;
	size_t n;

	OK(reg_token_create(r, T0, token, id, &err));
	ck_assert_uint_eq(strlen(token), 4 + 43);
	ck_assert(strncmp(token, "ddo_", 4) == 0);
	ck_assert(strncmp(id, "tok_", 4) == 0);
	OK(reg_token_verify(r, token, T0 + 7, who, &err));
	ck_assert_str_eq(who, id);

	char wrong[REG_TOKEN_MAX];
	strcpy(wrong, token);
	wrong[10] = wrong[10] == 'a' ? 'b' : 'a';
	FAILS(reg_token_verify(r, wrong, T0, who, &err), EACCES, "not valid");
	FAILS(reg_token_verify(r, "ddo_short", T0, who, &err), EACCES, "malformed");
	FAILS(reg_token_verify(r, "ddp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", T0, who, &err), EACCES, "malformed");
	FAILS(reg_token_verify(r, "ddo_aaaaaaaaaaaaaaaaaaaaa'aaaaaaaaaaaaaaaaaaaaa", T0, who, &err), EACCES, "malformed");
	FAILS(reg_token_verify(r, NULL, T0, who, &err), EACCES, "malformed");

	OK(reg_token_create(r, T0 + 1, wrong, id2, &err));
	OK(reg_token_list(r, &l, &n, &err));
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(l[0].id, id);
	ck_assert_int_eq(l[0].last_used_ms, T0 + 7);
	ck_assert_int_eq(l[1].last_used_ms, 0);
	free(l);

	OK(reg_token_revoke(r, id, T0 + 9, &err));
	FAILS(reg_token_verify(r, token, T0, who, &err), EACCES, "not valid");
	OK(reg_token_verify(r, wrong, T0, NULL, &err));	/* the other still works */
	FAILS(reg_token_revoke(r, id, T0, &err), EALREADY, "already revoked");
	FAILS(reg_token_revoke(r, "tok_000000000000", T0, &err), ENOENT, "not found");
	FAILS(reg_token_revoke(r, "tok_'; DROP TABLE", T0, &err), EINVAL, "malformed");
	reg_close(r);

	r = open_ok();	/* revocation persists; the plaintext is nowhere on disk */
	FAILS(reg_token_verify(r, token, T0, who, &err), EACCES, "not valid");
	OK(reg_token_list(r, &l, &n, &err));
	ck_assert_int_eq(l[0].revoked_ms, T0 + 9);
	free(l);
	reg_close(r);
	snprintf(wal, sizeof(wal), "%s-wal", path);
	ck_assert(!file_holds(path, token + 4) && !file_holds(wal, token + 4));
	ck_assert(file_holds(path, id));
}
END_TEST

/* ---- templates ---------------------------------------------------------------------- */

START_TEST(test_templates)
{
	struct reg_template t = { .image = "debian-12", .memory_mb = 1280, .vcpus = 2,
				  .path = "/var/lib/kiln/templates/debian-12-1280-2" }, got, *l;
	struct reg *r = open_ok();
	size_t n;

	memset(t.kernel_sha256, 'a', 64);
	memset(t.initramfs_sha256, 'b', 64);
	OK(reg_template_put(r, &t, T0, &err));
	t.vcpus = 4;
	OK(reg_template_put(r, &t, T0 + 1, &err));
	t.initramfs_sha256[0] = 'c';
	OK(reg_template_put(r, &t, T0 + 2, &err));	/* a rebuild replaces it */
	reg_close(r);

	r = open_ok();
	OK(reg_template_get(r, "debian-12", 1280, 4, &got, &err));
	ck_assert_str_eq(got.path, t.path);
	ck_assert_int_eq(got.initramfs_sha256[0], 'c');
	ck_assert_int_eq(got.created_ms, T0 + 2);
	OK(reg_template_list(r, &l, &n, &err));
	ck_assert_uint_eq(n, 2);
	ck_assert_uint_eq(l[0].vcpus, 2);
	free(l);
	OK(reg_template_delete(r, "debian-12", 1280, 2, &err));
	FAILS(reg_template_delete(r, "debian-12", 1280, 2, &err), ENOENT, "no template");
	FAILS(reg_template_get(r, "debian-12", 1280, 2, &got, &err), ENOENT, "no template");
	FAILS(reg_template_get(r, "Debian 12", 1280, 2, &got, &err), EINVAL, "image name");
	FAILS(reg_template_get(r, "debian-12", 1280, 0, &got, &err), EINVAL, "vcpus 0");
	t.kernel_sha256[3] = 'G';
	FAILS(reg_template_put(r, &t, T0, &err), EINVAL, "kernel hash");
	reg_close(r);
}
END_TEST

/* ---- crashes, concurrency, a full disk --------------------------------------------------- */

static volatile int crash_armed;

static int crash_on_commit(void *arg)
{
	(void)arg;
	if (crash_armed)
		_exit(7);	/* the process dies with the transaction's writes done, uncommitted */
	return 0;
}

static int crash_ext(sqlite3 *db, const char **msg, const void *api)
{
	(void)msg;
	(void)api;
	sqlite3_commit_hook(db, crash_on_commit, NULL);
	return SQLITE_OK;
}

START_TEST(test_crash_mid_transaction)
{
	struct reg *r = open_ok();
	struct reg_sandbox sb = insert(r, NULL), got;
	int status;
	pid_t pid;

	reg_close(r);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		sqlite3_auto_extension((void (*)(void))crash_ext);
		if (reg_open(&r, path, &err))
			_exit(1);
		crash_armed = 1;
		reg_sandbox_set_state(r, sb.id, REG_FAILED, REG_END_VMM_CRASHED, NULL, T0 + 1, &err);
		_exit(2);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(WEXITSTATUS(status), 7);

	r = open_ok();
	OK(reg_sandbox_get(r, sb.id, &got, &err));
	ck_assert_int_eq(got.state, REG_CREATING);	/* neither the state nor its event */
	ck_assert_int_eq(got.ended_ms, 0);
	reg_close(r);
	ck_assert_int_eq(raw_int("SELECT count(*) FROM events"), 1);
	ck_assert_int_eq(raw_int("SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'"), 1);
}
END_TEST

START_TEST(test_reader_beside_writer)
{
	struct reg *r = open_ok();
	struct reg_sandbox sb = insert(r, NULL), got, *l;
	char q[160];
	sqlite3 *w;
	size_t n;

	ck_assert_int_eq(sqlite3_open_v2(path, &w, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	snprintf(q, sizeof(q), "BEGIN IMMEDIATE; UPDATE sandboxes SET state = 'running' WHERE id = '%s'", sb.id);
	ck_assert_int_eq(sqlite3_exec(w, q, NULL, NULL, NULL), SQLITE_OK);
	/* The writer holds the write lock; WAL lets readers on at the last commit. */
	OK(reg_sandbox_get(r, sb.id, &got, &err));
	ck_assert_int_eq(got.state, REG_CREATING);
	OK(reg_sandbox_list(r, REG_MASK(REG_CREATING), NULL, 0, &l, &n, &err));
	ck_assert_uint_eq(n, 1);
	free(l);
	ck_assert_int_eq(sqlite3_exec(w, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
	OK(reg_sandbox_get(r, sb.id, &got, &err));
	ck_assert_int_eq(got.state, REG_RUNNING);
	sqlite3_close(w);
	reg_close(r);
}
END_TEST

START_TEST(test_two_writers)
{
	struct reg *r = open_ok();
	struct reg_sandbox *l;
	int status;
	size_t n;
	pid_t pid;

	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {	/* a second process writes at the same time: it waits its turn (busy timeout) */
		struct reg *c;

		if (reg_open(&c, path, &err))
			_exit(1);
		for (int i = 0; i < 50; i++) {
			struct reg_sandbox sb = spec((const char *const[]){ "who=child", NULL });

			if (reg_sandbox_insert(c, &sb, T0, &err))
				_exit(2);
		}
		reg_close(c);
		_exit(0);
	}
	for (int i = 0; i < 50; i++)
		insert(r, (const char *const[]){ "who=parent", NULL });
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(WEXITSTATUS(status), 0);
	OK(reg_sandbox_list(r, 0, (const struct reg_label[]){ { "who", "child" } }, 1, &l, &n, &err));
	ck_assert_uint_eq(n, 50);
	free(l);
	OK(reg_sandbox_list(r, 0, NULL, 0, &l, &n, &err));
	ck_assert_uint_eq(n, 100);
	free(l);
	reg_close(r);
}
END_TEST

static int small_disk_ext(sqlite3 *db, const char **msg, const void *api)
{
	(void)msg;
	(void)api;
	/* The file may not grow: max_page_count cannot fall below its current size. */
	sqlite3_exec(db, "PRAGMA max_page_count = 1", NULL, NULL, NULL);
	return SQLITE_OK;
}

START_TEST(test_disk_full)
{
	struct reg *r = open_ok();
	struct reg_sandbox sb, first = insert(r, NULL), got, *l;
	int ret = 0, i;
	size_t n;

	reg_close(r);
	sqlite3_auto_extension((void (*)(void))small_disk_ext);
	r = open_ok();
	for (i = 0; i < 2000 && ret == 0; i++) {
		sb = spec((const char *const[]){ "team=a-long-label-value-to-fill-pages-quickly", "env=prod", NULL });
		ret = reg_sandbox_insert(r, &sb, T0, &err);
	}
	ck_assert_msg(ret == -ENOSPC, "insert %d: %d %s", i, ret, err.msg);
	ck_assert_ptr_nonnull(strstr(err.msg, "the disk is full"));
	ck_assert_ptr_nonnull(strstr(err.msg, path));
	ck_assert_ptr_nonnull(strstr(err.msg, "free space"));
	FAILS(reg_sandbox_get(r, sb.id, &got, &err), ENOENT, "not found");	/* rolled back whole */
	OK(reg_sandbox_list(r, 0, NULL, 0, &l, &n, &err));
	ck_assert_uint_eq(n, (size_t)i);	/* the first, and the i - 1 that fit */
	free(l);
	OK(reg_sandbox_get(r, first.id, &got, &err));
	reg_close(r);
	sqlite3_reset_auto_extension();
	ck_assert_int_eq(raw_int("SELECT count(*) FROM events"), i);
	ck_assert_int_eq(raw_int("SELECT count(*) FROM sandbox_labels"), 2 * (i - 1));
	r = open_ok();	/* with room again, it goes on */
	OK(reg_sandbox_insert(r, &sb, T0, &err));
	reg_close(r);
}
END_TEST

START_TEST(test_corrupt_page)
{
	struct reg *r = open_ok();
	struct reg_sandbox *l, got;
	char junk[4096];
	size_t n;
	int fd, ret;

	for (int i = 0; i < 50; i++)
		insert(r, (const char *const[]){ "k=v", NULL });
	reg_close(r);	/* the last close checkpoints the WAL into the file */
	memset(junk, 0xa5, sizeof(junk));
	fd = open(path, O_WRONLY);
	for (off_t off = 4096; off < 4096 * 6; off += 4096)
		ck_assert_int_eq(pwrite(fd, junk, sizeof(junk), off), (ssize_t)sizeof(junk));
	close(fd);
	ret = reg_open(&r, path, &err);
	if (ret == 0) {
		ret = reg_sandbox_list(r, 0, NULL, 0, &l, &n, &err);
		if (ret == 0) {
			free(l);
			ret = reg_sandbox_get(r, "sbx_lcl_00000000000000000000", &got, &err);
		}
		reg_close(r);
	}
	ck_assert_msg(ret == -EBADMSG, "%d %s", ret, err.msg);
	ck_assert_ptr_nonnull(strstr(err.msg, "corrupt"));
	ck_assert_ptr_nonnull(strstr(err.msg, path));
}
END_TEST

/* ---- ids and processes --------------------------------------------------------------------- */

START_TEST(test_ids)
{
	char a[REG_ID_MAX], b[REG_ID_MAX];

	OK(reg_sandbox_id_new("ord", a, &err));
	OK(reg_sandbox_id_new("ord", b, &err));
	ck_assert_uint_eq(strlen(a), REG_ID_LEN);
	ck_assert(strncmp(a, "sbx_ord_", 8) == 0);
	ck_assert_str_ne(a, b);
	OK(reg_sandbox_id_check(a, &err));
	for (const char *p = a + 8; *p; p++)	/* Deno's ^sbx_[a-z]{3}_[0-9a-hjkmnp-z]{20}$ */
		ck_assert(strchr("0123456789abcdefghjkmnpqrstuvwxyz", *p));
	FAILS(reg_sandbox_id_new("OR", a, &err), EINVAL, "3 lowercase letters");
	FAILS(reg_sandbox_id_new("ordx", a, &err), EINVAL, "3 lowercase letters");
}
END_TEST

START_TEST(test_start_time)
{
	static const char ok[] = "42 (we)ird) name) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 777 19 20\n";
	uint64_t t = 0, u = 0;
	int status;
	pid_t pid;

	ck_assert_int_eq(reg_parse_start_time(ok, sizeof(ok) - 1, &t), 0);
	ck_assert_uint_eq(t, 777);
	ck_assert_int_eq(reg_parse_start_time("42 (x) S 1 2 3", 14, &t), -EINVAL);
	ck_assert_int_eq(reg_parse_start_time("no paren at all", 15, &t), -EINVAL);
	ck_assert_int_eq(reg_parse_start_time("1 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 7x7 1", 58, &t), -EINVAL);
	ck_assert_int_eq(reg_parse_start_time("1 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 99999999999999999999999 1",
					      79, &t), -EINVAL);

	OK(reg_proc_start_time(getpid(), &t, &err));
	ck_assert_uint_gt(t, 0);
	OK(reg_proc_start_time(getpid(), &u, &err));
	ck_assert_uint_eq(t, u);
	pid = fork();
	if (pid == 0)
		_exit(0);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	FAILS(reg_proc_start_time(pid, &t, &err), ESRCH, "gone");
	FAILS(reg_proc_start_time(0, &t, &err), EINVAL, "not a process");
}
END_TEST

static Suite *suite_registry(void)
{
	Suite *s = suite_create("registry");
	TCase *tc = tcase_create("registry");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_open_owner_only);
	tcase_add_test(tc, test_open_refuses_odd_files);
	tcase_add_test(tc, test_open_refuses_other_files);
	tcase_add_test(tc, test_sandbox_persists);
	tcase_add_test(tc, test_upgrade_from_v1);
	tcase_add_test(tc, test_volumes);
	tcase_add_test(tc, test_sandbox_hostile_input);
	tcase_add_test(tc, test_sandbox_states);
	tcase_add_test(tc, test_sandbox_vmm_and_stop_at);
	tcase_add_test(tc, test_sandbox_list_filters);
	tcase_add_test(tc, test_sandbox_prune);
	tcase_add_test(tc, test_events);
	tcase_add_test(tc, test_usage);
	tcase_add_test(tc, test_tokens);
	tcase_add_test(tc, test_templates);
	tcase_add_test(tc, test_crash_mid_transaction);
	tcase_add_test(tc, test_reader_beside_writer);
	tcase_add_test(tc, test_two_writers);
	tcase_add_test(tc, test_disk_full);
	tcase_add_test(tc, test_corrupt_page);
	tcase_add_test(tc, test_ids);
	tcase_add_test(tc, test_start_time);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(suite_registry());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
