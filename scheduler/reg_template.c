/*
 * Templates (registry.h): one snapshot per (image, memory_mb, vcpus), with
 * the hashes of the kernel and initramfs it was built from.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "registry_int.h"

static const char SQL_TPL_PUT[] = "INSERT OR REPLACE INTO templates (image, memory_mb, vcpus, path, kernel_sha256,"
	" initramfs_sha256, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
static const char SQL_TPL_GET[] = "SELECT image, memory_mb, vcpus, path, kernel_sha256, initramfs_sha256, created_at"
	" FROM templates WHERE image = ?1 AND memory_mb = ?2 AND vcpus = ?3";
static const char SQL_TPL_LIST[] = "SELECT image, memory_mb, vcpus, path, kernel_sha256, initramfs_sha256, created_at"
	" FROM templates ORDER BY image, memory_mb, vcpus";
static const char SQL_TPL_DEL[] = "DELETE FROM templates WHERE image = ?1 AND memory_mb = ?2 AND vcpus = ?3";

int reg_image_check(const char *image, struct kiln_err *err)
{
	return reg_name_check("image", image, err);
}

static int hex_check(const char *what, const char *h, struct kiln_err *err)
{
	if (strnlen(h, REG_SHA256_HEX) != REG_SHA256_HEX - 1 || !reg_in_set(h, REG_SHA256_HEX - 1, "0123456789abcdef"))
		return kiln_fail(err, EINVAL, "%s is not 64 lowercase hex digits", what);
	return 0;
}

int reg_template_put(struct reg *r, const struct reg_template *t, int64_t now_ms, struct kiln_err *err)
{
	const char *what = "storing a template";
	sqlite3_stmt *s;
	int rc, ret;

	if ((ret = reg_image_check(t->image, err)) || (ret = reg_shape_check(t->memory_mb, t->vcpus, err)) ||
	    (ret = reg_path_check("template path", t->path, err)) ||
	    (ret = hex_check("kernel hash", t->kernel_sha256, err)) ||
	    (ret = hex_check("initramfs hash", t->initramfs_sha256, err)))
		return ret;
	if ((ret = reg_begin(r, true, what, err)))
		return ret;
	if ((ret = reg_prep(r, SQL_TPL_PUT, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_bind_text(s, 1, t->image)) || (rc = reg_bind_int(s, 2, t->memory_mb)) ||
	    (rc = reg_bind_int(s, 3, t->vcpus)) ||
	    (rc = reg_bind_text(s, 4, t->path)) || (rc = reg_bind_text(s, 5, t->kernel_sha256)) ||
	    (rc = reg_bind_text(s, 6, t->initramfs_sha256)) || (rc = reg_bind_int(s, 7, now_ms)) || (rc = reg_run(s)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	return reg_commit(r, what, err);
}

static int read_template(struct reg *r, sqlite3_stmt *s, void *elem, struct kiln_err *err)
{
	struct reg_template *t = elem;
	int ret;

	memset(t, 0, sizeof(*t));
	if ((ret = reg_col_text(r, s, 0, t->image, sizeof(t->image), err)) ||
	    (ret = reg_col_text(r, s, 3, t->path, sizeof(t->path), err)) ||
	    (ret = reg_col_text(r, s, 4, t->kernel_sha256, sizeof(t->kernel_sha256), err)) ||
	    (ret = reg_col_text(r, s, 5, t->initramfs_sha256, sizeof(t->initramfs_sha256), err)))
		return ret;
	t->memory_mb = (uint32_t)sqlite3_column_int64(s, 1);
	t->vcpus = (uint32_t)sqlite3_column_int64(s, 2);
	t->created_ms = sqlite3_column_int64(s, 6);
	return 0;
}

static int template_key(sqlite3_stmt *s, const char *image, uint32_t memory_mb, uint32_t vcpus)
{
	int rc;

	if ((rc = reg_bind_text(s, 1, image)) || (rc = reg_bind_int(s, 2, memory_mb)) || (rc = reg_bind_int(s, 3, vcpus)))
		return rc;
	return 0;
}

int reg_template_get(struct reg *r, const char *image, uint32_t memory_mb, uint32_t vcpus,
		     struct reg_template *out, struct kiln_err *err)
{
	const char *what = "reading a template";
	sqlite3_stmt *s;
	int rc, ret;

	if ((ret = reg_image_check(image, err)) || (ret = reg_shape_check(memory_mb, vcpus, err)))
		return ret;
	if ((ret = reg_begin(r, false, what, err)))
		return ret;
	if ((ret = reg_prep(r, SQL_TPL_GET, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = template_key(s, image, memory_mb, vcpus)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	rc = sqlite3_step(s);
	if (rc == SQLITE_DONE)
		return reg_abort(r, kiln_fail(err, ENOENT, "no template for image %s with %u MiB and %u vCPUs",
					     image, memory_mb, vcpus));
	if (rc != SQLITE_ROW)
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	if ((ret = read_template(r, s, out, err)))
		return reg_abort(r, ret);
	return reg_commit(r, what, err);
}

int reg_template_list(struct reg *r, struct reg_template **out, size_t *n, struct kiln_err *err)
{
	const char *what = "listing templates";
	sqlite3_stmt *s;
	void *arr;
	int ret;

	*out = NULL;
	*n = 0;
	if ((ret = reg_begin(r, false, what, err)))
		return ret;
	if ((ret = reg_prep(r, SQL_TPL_LIST, &s, what, err)))
		return reg_abort(r, ret);
	if ((ret = reg_list_rows(r, s, sizeof(**out), read_template, &arr, n, what, err)))
		return ret;
	*out = arr;
	return 0;
}

int reg_template_delete(struct reg *r, const char *image, uint32_t memory_mb, uint32_t vcpus, struct kiln_err *err)
{
	const char *what = "deleting a template";
	sqlite3_stmt *s;
	int rc, ret;

	if ((ret = reg_image_check(image, err)) || (ret = reg_shape_check(memory_mb, vcpus, err)))
		return ret;
	if ((ret = reg_begin(r, true, what, err)))
		return ret;
	if ((ret = reg_prep(r, SQL_TPL_DEL, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = template_key(s, image, memory_mb, vcpus)) || (rc = reg_run(s)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	if (sqlite3_changes64(r->db) != 1)
		return reg_abort(r, kiln_fail(err, ENOENT, "no template for image %s with %u MiB and %u vCPUs",
					     image, memory_mb, vcpus));
	return reg_commit(r, what, err);
}

