/*
 * What the registry's files share (registry.c: opening, the schema and the
 * SQLite plumbing; reg_sandbox.c; reg_token.c; reg_template.c). kilnd
 * includes registry.h only.
 */
#ifndef KILN_REGISTRY_INT_H
#define KILN_REGISTRY_INT_H

#include <limits.h>
#include <stdbool.h>
#include <sqlite3.h>

#include "registry.h"

#define REG_STMTS	40	/* statements kept prepared, more than the registry has */

struct reg {
	sqlite3 *db;
	struct {
		const char *sql;	/* a static string: compared by address */
		sqlite3_stmt *st;
	} stmts[REG_STMTS];
	int n_stmts;
	char path[PATH_MAX];
};

extern const char reg_b32[];	/* Crockford's base32 alphabet, lowercase */

/* Turn a SQLite result into -errno and a message that names the file and the fix. */
int reg_sqlfail(struct reg *r, int rc, const char *what, struct kiln_err *err);

/* The statement for sql (a static string), prepared once, reset and unbound. */
int reg_prep(struct reg *r, const char *sql, sqlite3_stmt **out, const char *what, struct kiln_err *err);
/* Bind text (NULL binds NULL), or an int64 where 0 means NULL ("none"). SQLite result codes. */
int reg_bind_text(sqlite3_stmt *s, int i, const char *v);
int reg_bind_opt(sqlite3_stmt *s, int i, int64_t v);
static inline int reg_bind_int(sqlite3_stmt *s, int i, int64_t v)
{
	return sqlite3_bind_int64(s, i, v);
}
/* Step a statement once and reset it; SQLITE_OK or the error. */
int reg_run(sqlite3_stmt *s);

/*
 * One transaction: BEGIN IMMEDIATE for a write (it waits for the lock
 * rather than fail upgrading a read lock, which WAL mode cannot wait for),
 * BEGIN DEFERRED for a read. reg_abort rolls back and returns ret (err keeps
 * what failed); reg_commit rolls back itself if the commit fails.
 */
int reg_begin(struct reg *r, bool write, const char *what, struct kiln_err *err);
int reg_abort(struct reg *r, int ret);
int reg_commit(struct reg *r, const char *what, struct kiln_err *err);

/* Copy column i's text into buf; -EBADMSG (a file changed by hand) if it does not fit. NULL reads "". */
int reg_col_text(struct reg *r, sqlite3_stmt *s, int i, char *buf, size_t size, struct kiln_err *err);
/* Column i's text as an index into names[count]; -EBADMSG if it is none of them. */
int reg_col_enum(struct reg *r, sqlite3_stmt *s, int i, const char *const *names, int count, int *out,
		 struct kiln_err *err);

/*
 * Read every row of s, bound inside a transaction the caller began, into a
 * new array of elements of size filled by fn, then end the transaction:
 * *out and *n on success, nothing (and the transaction rolled back) on failure.
 */
typedef int (*reg_row_fn)(struct reg *r, sqlite3_stmt *s, void *elem, struct kiln_err *err);
int reg_list_rows(struct reg *r, sqlite3_stmt *s, size_t size, reg_row_fn fn, void **out, size_t *n,
		  const char *what, struct kiln_err *err);

/* Checks on what callers pass in. */
bool reg_in_set(const char *s, size_t len, const char *set);
const char *reg_shown(const char *s, char buf[48]);
int reg_str_check(const char *what, const char *s, size_t min, size_t max, struct kiln_err *err);
int reg_path_check(const char *what, const char *p, struct kiln_err *err);
int reg_shape_check(uint32_t memory_mb, uint32_t vcpus, struct kiln_err *err);
/* A name of an image or volume (what): 1-64 of a-z 0-9 . _ - (0, or -EINVAL naming it). */
int reg_name_check(const char *what, const char *name, struct kiln_err *err);
int reg_image_check(const char *image, struct kiln_err *err);
/* n characters of alphabet (k of them) from getrandom, unbiased, and a NUL. */
int reg_random_chars(char *out, size_t n, const char *alphabet, unsigned k, struct kiln_err *err);

#endif
