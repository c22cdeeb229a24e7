/*
 * API tokens (registry.h): ddo_ + 43 base62 characters from getrandom, of
 * which only the SHA-256 is stored, compared in constant time.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "registry_int.h"

#define TOKEN_PREFIX	"ddo_"
#define TOKEN_CHARS	43		/* 43 x log2(62) = 256 bits */
#define TOKEN_ID_CHARS	12

static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

static const char SQL_SYNC_FULL[] = "PRAGMA synchronous = FULL";
static const char SQL_SYNC_NORMAL[] = "PRAGMA synchronous = NORMAL";
static const char SQL_TOK_INSERT[] = "INSERT INTO tokens (id, sha256, created_at) VALUES (?1, ?2, ?3)";
static const char SQL_TOK_ACTIVE[] = "SELECT id, sha256 FROM tokens WHERE revoked_at IS NULL";
static const char SQL_TOK_USED[] = "UPDATE tokens SET last_used = ?2 WHERE id = ?1";
static const char SQL_TOK_GET[] = "SELECT revoked_at FROM tokens WHERE id = ?1";
static const char SQL_TOK_REVOKE[] = "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1";
static const char SQL_TOK_LIST[] = "SELECT id, created_at, last_used, revoked_at FROM tokens ORDER BY created_at, id";

static int token_id_check(const char *id, struct kiln_err *err)
{
	char b[48];

	if (!id || strnlen(id, REG_TOKEN_ID_MAX) != REG_TOKEN_ID_MAX - 1 || memcmp(id, "tok_", 4) ||
	    !reg_in_set(id + 4, TOKEN_ID_CHARS, reg_b32))
		return kiln_fail(err, EINVAL, "token id \"%s\" is malformed (expected tok_ and 12 of %s)",
				 id ? reg_shown(id, b) : "", reg_b32);
	return 0;
}

static int sha256(const char *s, size_t len, unsigned char md[32], struct kiln_err *err)
{
	unsigned int mdlen = 0;

	if (!EVP_Digest(s, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
		return kiln_fail(err, EIO, "registry: SHA-256 from libcrypto failed");
	return 0;
}

/*
 * Token changes commit with synchronous = FULL (NORMAL elsewhere, see
 * configure in registry.c): a revocation must survive a power loss.
 */
static int set_sync(struct reg *r, bool full, struct kiln_err *err)
{
	sqlite3_stmt *s;
	int rc, ret;

	if ((ret = reg_prep(r, full ? SQL_SYNC_FULL : SQL_SYNC_NORMAL, &s, "setting synchronous", err)))
		return ret;
	rc = reg_run(s);
	return rc == SQLITE_OK ? 0 : reg_sqlfail(r, rc, "setting synchronous", err);
}

/* A token change's write transaction: on id, with arg, at now_ms. */
typedef int (*token_tx)(struct reg *r, const char *id, const void *arg, int64_t now_ms, struct kiln_err *err);

static int durably(struct reg *r, token_tx fn, const char *id, const void *arg, int64_t now_ms,
		   struct kiln_err *err)
{
	int ret;

	if ((ret = set_sync(r, true, err)))
		return ret;
	ret = fn(r, id, arg, now_ms, err);
	if (set_sync(r, false, ret ? NULL : err) && !ret)
		ret = -EIO;
	return ret;
}

static int insert_tx(struct reg *r, const char *id, const void *md, int64_t now_ms, struct kiln_err *err)
{
	const char *what = "storing a new token";
	sqlite3_stmt *s;
	int rc, ret;

	if ((ret = reg_begin(r, true, what, err)))
		return ret;
	if ((ret = reg_prep(r, SQL_TOK_INSERT, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_bind_text(s, 1, id)) || (rc = sqlite3_bind_blob(s, 2, md, 32, SQLITE_STATIC)) ||
	    (rc = reg_bind_int(s, 3, now_ms)) || (rc = reg_run(s)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	return reg_commit(r, what, err);
}

int reg_token_create(struct reg *r, int64_t now_ms, char token[REG_TOKEN_MAX], char id[REG_TOKEN_ID_MAX],
		     struct kiln_err *err)
{
	unsigned char md[32];
	int ret;

	_Static_assert(sizeof(TOKEN_PREFIX) - 1 + TOKEN_CHARS < REG_TOKEN_MAX, "REG_TOKEN_MAX");
	memcpy(token, TOKEN_PREFIX, 4);
	memcpy(id, "tok_", 4);
	if (!(ret = reg_random_chars(token + 4, TOKEN_CHARS, b62, 62, err)) &&
	    !(ret = reg_random_chars(id + 4, TOKEN_ID_CHARS, reg_b32, 32, err)) &&
	    !(ret = sha256(token, strlen(token), md, err)))
		ret = durably(r, insert_tx, id, md, now_ms, err);
	OPENSSL_cleanse(md, sizeof(md));
	if (ret)
		OPENSSL_cleanse(token, REG_TOKEN_MAX);
	return ret;
}

/* Compare md with every active token's hash, in constant time, whichever matches; stamp the match. */
static int verify_tx(struct reg *r, const unsigned char md[32], int64_t now_ms, char found[REG_TOKEN_ID_MAX],
		     struct kiln_err *err)
{
	const char *what = "checking a token";
	sqlite3_stmt *s;
	int rc, ret;

	found[0] = '\0';
	if ((ret = reg_begin(r, true, what, err)))
		return ret;
	if ((ret = reg_prep(r, SQL_TOK_ACTIVE, &s, what, err)))
		return reg_abort(r, ret);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		const void *h = sqlite3_column_blob(s, 1);
		bool same = h && sqlite3_column_bytes(s, 1) == 32 && CRYPTO_memcmp(h, md, 32) == 0;

		if (same && (ret = reg_col_text(r, s, 0, found, REG_TOKEN_ID_MAX, err)))
			return reg_abort(r, ret);
	}
	if (rc != SQLITE_DONE)
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	if (!found[0])
		return reg_abort(r, kiln_fail(err, EACCES, "the token is not valid (unknown or revoked); "
					      "create one with `kiln token create`"));
	if ((ret = reg_prep(r, SQL_TOK_USED, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_bind_text(s, 1, found)) || (rc = reg_bind_int(s, 2, now_ms)) || (rc = reg_run(s)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	return reg_commit(r, what, err);
}

int reg_token_verify(struct reg *r, const char *token, int64_t now_ms, char id[REG_TOKEN_ID_MAX],
		     struct kiln_err *err)
{
	char found[REG_TOKEN_ID_MAX];
	unsigned char md[32];
	size_t len;
	int ret;

	len = token ? strnlen(token, REG_TOKEN_MAX) : 0;
	if (len < 4 + 32 || len >= REG_TOKEN_MAX || memcmp(token, TOKEN_PREFIX, 4) ||
	    !reg_in_set(token + 4, len - 4, b62))
		return kiln_fail(err, EACCES, "the token is malformed (expected ddo_ and 32-43 letters and digits)");
	if (!(ret = sha256(token, len, md, err)))
		ret = verify_tx(r, md, now_ms, found, err);
	OPENSSL_cleanse(md, sizeof(md));
	if (ret == 0 && id)
		memcpy(id, found, sizeof(found));
	return ret;
}

static int revoke_tx(struct reg *r, const char *id, const void *unused, int64_t now_ms, struct kiln_err *err)
{
	const char *what = "revoking a token";
	sqlite3_stmt *s;
	int rc, ret;

	(void)unused;
	if ((ret = reg_begin(r, true, what, err)))
		return ret;
	if ((ret = reg_prep(r, SQL_TOK_GET, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_bind_text(s, 1, id)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	rc = sqlite3_step(s);
	if (rc == SQLITE_DONE)
		return reg_abort(r, kiln_fail(err, ENOENT, "token %s not found", id));
	if (rc != SQLITE_ROW)
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	if (sqlite3_column_type(s, 0) != SQLITE_NULL)
		return reg_abort(r, kiln_fail(err, EALREADY, "token %s is already revoked", id));
	if ((ret = reg_prep(r, SQL_TOK_REVOKE, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_bind_text(s, 1, id)) || (rc = reg_bind_int(s, 2, now_ms)) || (rc = reg_run(s)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	return reg_commit(r, what, err);
}

int reg_token_revoke(struct reg *r, const char *id, int64_t now_ms, struct kiln_err *err)
{
	int ret;

	if ((ret = token_id_check(id, err)))
		return ret;
	return durably(r, revoke_tx, id, NULL, now_ms, err);
}

static int read_token(struct reg *r, sqlite3_stmt *s, void *elem, struct kiln_err *err)
{
	struct reg_token *t = elem;
	int ret;

	if ((ret = reg_col_text(r, s, 0, t->id, sizeof(t->id), err)))
		return ret;
	t->created_ms = sqlite3_column_int64(s, 1);
	t->last_used_ms = sqlite3_column_int64(s, 2);
	t->revoked_ms = sqlite3_column_int64(s, 3);
	return 0;
}

int reg_token_list(struct reg *r, struct reg_token **out, size_t *n, struct kiln_err *err)
{
	const char *what = "listing tokens";
	sqlite3_stmt *s;
	void *arr;
	int ret;

	*out = NULL;
	*n = 0;
	if ((ret = reg_begin(r, false, what, err)))
		return ret;
	if ((ret = reg_prep(r, SQL_TOK_LIST, &s, what, err)))
		return reg_abort(r, ret);
	if ((ret = reg_list_rows(r, s, sizeof(**out), read_token, &arr, n, what, err)))
		return ret;
	*out = arr;
	return 0;
}
