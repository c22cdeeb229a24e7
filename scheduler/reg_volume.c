/*
 * Volumes in the registry (registry.h): their sizes and metering, and which
 * sandboxes have them attached. The files themselves are kilnd's.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry_int.h"

#define VOL_COLS "SELECT v.name, v.size_bytes, v.created_at, v.metered_at, v.mib_ms," \
	" (SELECT count(*) FROM volume_attachments a WHERE a.volume = v.name AND a.readonly = 0)," \
	" (SELECT count(*) FROM volume_attachments a WHERE a.volume = v.name AND a.readonly = 1)," \
	" (SELECT a.sandbox_id FROM volume_attachments a WHERE a.volume = v.name AND a.readonly = 0 LIMIT 1)" \
	" FROM volumes v"

static const char SQL_VOL_INSERT[] = "INSERT INTO volumes (name, size_bytes, created_at, metered_at) VALUES (?1, ?2, ?3, ?3)";
static const char SQL_VOL_GET[] = VOL_COLS " WHERE v.name = ?1";
static const char SQL_VOL_LIST[] = VOL_COLS " ORDER BY v.name";
static const char SQL_VOL_RESIZE[] = "UPDATE volumes SET mib_ms = mib_ms + (size_bytes >> 20) * max(0, ?3 - metered_at),"
	" metered_at = max(metered_at, ?3), size_bytes = ?2 WHERE name = ?1";
static const char SQL_VOL_DELETE[] = "DELETE FROM volumes WHERE name = ?1";

int reg_volume_name_check(const char *name, struct kiln_err *err)
{
	return reg_name_check("volume", name, err);
}

static int size_check(uint64_t size, struct kiln_err *err)
{
	if (size < REG_VOL_MIN_BYTES || size > REG_VOL_MAX_BYTES || size % 4096)
		return kiln_fail(err, EINVAL, "a volume's size must be %llu MiB to %llu GiB in whole 4 KiB blocks, not %llu bytes",
				 REG_VOL_MIN_BYTES >> 20, REG_VOL_MAX_BYTES >> 30, (unsigned long long)size);
	return 0;
}

int reg_volume_create(struct reg *r, const char *name, uint64_t size, int64_t now_ms, struct kiln_err *err)
{
	const char *what = "recording a new volume";
	sqlite3_stmt *s;
	int rc, ret;

	if ((ret = reg_volume_name_check(name, err)) || (ret = size_check(size, err)))
		return ret;
	if ((ret = reg_begin(r, true, what, err)))
		return ret;
	if ((ret = reg_prep(r, SQL_VOL_INSERT, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_bind_text(s, 1, name)) || (rc = reg_bind_int(s, 2, (int64_t)size)) ||
	    (rc = reg_bind_int(s, 3, now_ms)) || (rc = reg_run(s))) {
		if ((rc & 0xff) == SQLITE_CONSTRAINT)
			return reg_abort(r, kiln_fail(err, EEXIST, "volume %s already exists", name));
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	}
	return reg_commit(r, what, err);
}

static int read_volume(struct reg *r, sqlite3_stmt *s, void *elem, struct kiln_err *err)
{
	struct reg_volume *v = elem;
	int ret;

	memset(v, 0, sizeof(*v));
	if ((ret = reg_col_text(r, s, 0, v->name, sizeof(v->name), err)) ||
	    (sqlite3_column_type(s, 7) != SQLITE_NULL && (ret = reg_col_text(r, s, 7, v->writer, sizeof(v->writer), err))))
		return ret;
	v->size_bytes = (uint64_t)sqlite3_column_int64(s, 1);
	v->created_ms = sqlite3_column_int64(s, 2);
	v->metered_ms = sqlite3_column_int64(s, 3);
	v->mib_ms = (uint64_t)sqlite3_column_int64(s, 4);
	v->writers = (unsigned)sqlite3_column_int64(s, 5);
	v->readers = (unsigned)sqlite3_column_int64(s, 6);
	return 0;
}

int reg_volume_get(struct reg *r, const char *name, struct reg_volume *out, struct kiln_err *err)
{
	const char *what = "reading a volume";
	sqlite3_stmt *s;
	int rc, ret;

	if ((ret = reg_volume_name_check(name, err)))
		return ret;
	if ((ret = reg_begin(r, false, what, err)))
		return ret;
	if ((ret = reg_prep(r, SQL_VOL_GET, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_bind_text(s, 1, name)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	rc = sqlite3_step(s);
	if (rc == SQLITE_DONE)
		return reg_abort(r, kiln_fail(err, ENOENT, "no volume %s on this node (kiln volume ls lists them)", name));
	if (rc != SQLITE_ROW)
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	if ((ret = read_volume(r, s, out, err)))
		return reg_abort(r, ret);
	return reg_commit(r, what, err);
}

int reg_volume_list(struct reg *r, struct reg_volume **out, size_t *n, struct kiln_err *err)
{
	const char *what = "listing volumes";
	sqlite3_stmt *s;
	void *arr;
	int ret;

	*out = NULL;
	*n = 0;
	if ((ret = reg_begin(r, false, what, err)))
		return ret;
	if ((ret = reg_prep(r, SQL_VOL_LIST, &s, what, err)))
		return reg_abort(r, ret);
	if ((ret = reg_list_rows(r, s, sizeof(**out), read_volume, &arr, n, what, err)))
		return ret;
	*out = arr;
	return 0;
}

/* In a write transaction: the volume, which nothing may have attached. */
static int get_unattached(struct reg *r, const char *name, const char *doing, struct reg_volume *v,
			  struct kiln_err *err)
{
	sqlite3_stmt *s;
	int rc, ret;

	if ((ret = reg_prep(r, SQL_VOL_GET, &s, doing, err)))
		return ret;
	if ((rc = reg_bind_text(s, 1, name)))
		return reg_sqlfail(r, rc, doing, err);
	rc = sqlite3_step(s);
	if (rc == SQLITE_DONE)
		return kiln_fail(err, ENOENT, "no volume %s on this node (kiln volume ls lists them)", name);
	if (rc != SQLITE_ROW)
		return reg_sqlfail(r, rc, doing, err);
	if ((ret = read_volume(r, s, v, err)))
		return ret;
	sqlite3_reset(s);
	if (v->writers)
		return kiln_fail(err, EBUSY, "volume %s is attached writable to sandbox %s: %s it once that sandbox ends",
				 name, v->writer, doing);
	if (v->readers)
		return kiln_fail(err, EBUSY, "volume %s is attached read-only to %u sandbox%s: %s it once they end", name,
				 v->readers, v->readers == 1 ? "" : "es", doing);
	return 0;
}

int reg_volume_resize(struct reg *r, const char *name, uint64_t size, int64_t now_ms, struct kiln_err *err)
{
	const char *what = "resize";
	struct reg_volume v;
	sqlite3_stmt *s;
	int rc, ret;

	if ((ret = reg_volume_name_check(name, err)) || (ret = size_check(size, err)))
		return ret;
	if ((ret = reg_begin(r, true, what, err)))
		return ret;
	if ((ret = get_unattached(r, name, what, &v, err)))
		return reg_abort(r, ret);
	if (size < v.size_bytes)
		return reg_abort(r, kiln_fail(err, EINVAL, "volume %s is %llu MiB; a volume only grows (asked %llu MiB)",
					     name, (unsigned long long)(v.size_bytes >> 20),
					     (unsigned long long)(size >> 20)));
	if ((ret = reg_prep(r, SQL_VOL_RESIZE, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_bind_text(s, 1, name)) || (rc = reg_bind_int(s, 2, (int64_t)size)) ||
	    (rc = reg_bind_int(s, 3, now_ms)) || (rc = reg_run(s)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	return reg_commit(r, what, err);
}

int reg_volume_delete(struct reg *r, const char *name, struct kiln_err *err)
{
	const char *what = "delete";
	struct reg_volume v;
	sqlite3_stmt *s;
	int rc, ret;

	if ((ret = reg_volume_name_check(name, err)))
		return ret;
	if ((ret = reg_begin(r, true, what, err)))
		return ret;
	if ((ret = get_unattached(r, name, what, &v, err)))
		return reg_abort(r, ret);
	/* Ended sandboxes' rows still name it: they keep no attachment. */
	if ((ret = reg_prep(r, SQL_VOL_DELETE, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_bind_text(s, 1, name)) || (rc = reg_run(s)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	return reg_commit(r, what, err);
}

double reg_volume_gib_hours(const struct reg_volume *v, int64_t now_ms)
{
	double mib_ms = (double)v->mib_ms;

	if (now_ms > v->metered_ms)
		mib_ms += (double)(v->size_bytes >> 20) * (double)(now_ms - v->metered_ms);
	return mib_ms / 1024.0 / 3600000.0;
}
