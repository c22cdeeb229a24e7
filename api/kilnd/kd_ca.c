/*
 * The node's CA, its leaf certificates and the secrets key (kd_ca.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "kd_ca.h"

#define CA_PATH_MAX	512
#define SEAL_KEY_LEN	32
#define SEAL_NONCE_LEN	12
#define SEAL_TAG_LEN	16

struct ca_leaf {
	char host[256];
	SSL_CTX *ctx;
	uint64_t used;
	time_t made;
};

struct kd_ca {
	pthread_mutex_t mu;
	EVP_PKEY *key;			/* the CA's */
	X509 *cert;
	char *pem;
	EVP_PKEY *leaf_key;		/* shared by every leaf */
	uint8_t seal_key[SEAL_KEY_LEN];
	struct ca_leaf leaves[KD_CA_LEAF_CACHE];
	uint64_t tick;
};

static int ssl_fail(struct kiln_err *err, int e, const char *what)
{
	char buf[256];
	unsigned long code = ERR_get_error();

	ERR_clear_error();
	if (code)
		ERR_error_string_n(code, buf, sizeof(buf));
	else
		snprintf(buf, sizeof(buf), "unknown error");
	return kiln_fail(err, e, "%s: %s", what, buf);
}

static EVP_PKEY *ec_key_new(void)
{
	return EVP_EC_gen("P-256");
}

/* Write len bytes to path with mode, through a temp file and rename. */
static int write_atomic(const char *path, const void *p, size_t len, mode_t mode, struct kiln_err *err)
{
	char tmp[CA_PATH_MAX + 8];
	const char *b = p;
	int fd;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd < 0)
		return kiln_fail(err, errno, "cannot create %s: %s", tmp, strerror(errno));
	while (len) {
		ssize_t n = write(fd, b, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int e = n < 0 ? errno : EIO;

			close(fd);
			unlink(tmp);
			return kiln_fail(err, e, "cannot write %s: %s", tmp, strerror(e));
		}
		b += n;
		len -= (size_t)n;
	}
	if (fchmod(fd, mode) < 0 || fsync(fd) < 0 || close(fd) < 0 || rename(tmp, path) < 0) {
		int e = errno;

		unlink(tmp);
		return kiln_fail(err, e, "cannot write %s: %s", path, strerror(e));
	}
	return 0;
}

/* A BIO's bytes as a malloc'd string. */
static char *bio_text(BIO *b, size_t *len)
{
	char *p, *out;
	long n = BIO_get_mem_data(b, &p);

	if (n < 0 || !(out = malloc((size_t)n + 1)))
		return NULL;
	memcpy(out, p, (size_t)n);
	out[n] = '\0';
	if (len)
		*len = (size_t)n;
	return out;
}

static int rand_serial(X509 *x)
{
	BIGNUM *bn = BN_new();
	ASN1_INTEGER *s;
	int ok;

	if (!bn)
		return 0;
	ok = BN_rand(bn, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) && (s = X509_get_serialNumber(x)) &&
	     BN_to_ASN1_INTEGER(bn, s);
	BN_free(bn);
	return ok;
}

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ex;
	int ok;

	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
	ex = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	if (!ex)
		return 0;
	ok = X509_add_ext(cert, ex, -1);
	X509_EXTENSION_free(ex);
	return ok;
}

static X509 *ca_make_cert(EVP_PKEY *key)
{
	X509 *x = X509_new();
	X509_NAME *n;

	if (!x)
		return NULL;
	if (!X509_set_version(x, 2) || !rand_serial(x) || !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
	    !X509_gmtime_adj(X509_getm_notAfter(x), (long)KD_CA_DAYS * 86400) || !X509_set_pubkey(x, key))
		goto fail;
	n = X509_get_subject_name(x);
	if (!X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)KD_CA_CN, -1, -1, 0) ||
	    !X509_set_issuer_name(x, n))
		goto fail;
	if (!add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") ||
	    !add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign") ||
	    !add_ext(x, x, NID_subject_key_identifier, "hash") || !X509_sign(x, key, EVP_sha256()))
		goto fail;
	return x;
fail:
	X509_free(x);
	return NULL;
}

/* ca.key and ca.crt: load both, or make both (a key without its certificate is made again). */
static int ca_load_or_make(struct kd_ca *ca, const char *dir, struct kiln_err *err)
{
	char kpath[CA_PATH_MAX], cpath[CA_PATH_MAX];
	FILE *f;
	BIO *b = NULL;
	char *text = NULL;
	size_t len;
	int r;

	snprintf(kpath, sizeof(kpath), "%s/ca.key", dir);
	snprintf(cpath, sizeof(cpath), "%s/ca.crt", dir);
	if (access(kpath, F_OK) == 0 && access(cpath, F_OK) == 0) {
		f = fopen(kpath, "re");
		if (!f)
			return kiln_fail(err, errno, "cannot read %s: %s", kpath, strerror(errno));
		ca->key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
		fclose(f);
		if (!ca->key)
			return ssl_fail(err, EBADMSG, kpath);
		f = fopen(cpath, "re");
		if (!f)
			return kiln_fail(err, errno, "cannot read %s: %s", cpath, strerror(errno));
		ca->cert = PEM_read_X509(f, NULL, NULL, NULL);
		fclose(f);
		if (!ca->cert)
			return ssl_fail(err, EBADMSG, cpath);
		if (X509_check_private_key(ca->cert, ca->key) != 1)
			return kiln_fail(err, EBADMSG, "%s does not belong to %s; delete %s to make a new CA", cpath, kpath,
					 dir);
		return 0;
	}
	ca->key = ec_key_new();
	if (!ca->key)
		return ssl_fail(err, ENOMEM, "making the node CA's key");
	ca->cert = ca_make_cert(ca->key);
	if (!ca->cert)
		return ssl_fail(err, ENOMEM, "making the node CA's certificate");
	r = -ENOMEM;
	b = BIO_new(BIO_s_mem());
	if (!b || !PEM_write_bio_PrivateKey(b, ca->key, NULL, NULL, 0, NULL, NULL) || !(text = bio_text(b, &len))) {
		r = ssl_fail(err, ENOMEM, "writing the node CA's key");
		goto out;
	}
	r = write_atomic(kpath, text, len, 0600, err);
	OPENSSL_cleanse(text, len);
	free(text);
	text = NULL;
	if (r)
		goto out;
	BIO_free(b);
	b = BIO_new(BIO_s_mem());
	if (!b || !PEM_write_bio_X509(b, ca->cert) || !(text = bio_text(b, &len))) {
		r = ssl_fail(err, ENOMEM, "writing the node CA's certificate");
		goto out;
	}
	r = write_atomic(cpath, text, len, 0644, err);
out:
	free(text);
	BIO_free(b);
	return r;
}

static int seal_key_load_or_make(struct kd_ca *ca, const char *dir, struct kiln_err *err)
{
	char path[CA_PATH_MAX];
	int fd = -1;
	ssize_t n;
	int r;

	snprintf(path, sizeof(path), "%s/secrets.key", dir);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		n = read(fd, ca->seal_key, sizeof(ca->seal_key));
		close(fd);
		if (n != (ssize_t)sizeof(ca->seal_key))
			return kiln_fail(err, EBADMSG, "%s is not %d bytes; sandboxes' secrets cannot be opened without it",
					 path, SEAL_KEY_LEN);
		return 0;
	}
	if (errno != ENOENT)
		return kiln_fail(err, errno, "cannot read %s: %s", path, strerror(errno));
	if (RAND_bytes(ca->seal_key, sizeof(ca->seal_key)) != 1)
		return ssl_fail(err, EIO, "making the secrets key");
	r = write_atomic(path, ca->seal_key, sizeof(ca->seal_key), 0600, err);
	return r;
}

int kd_ca_open(const char *dir, struct kd_ca **out, struct kiln_err *err)
{
	struct kd_ca *ca;
	BIO *b = NULL;
	int r;

	*out = NULL;
	if (strlen(dir) > CA_PATH_MAX - 32)
		return kiln_fail(err, ENAMETOOLONG, "CA directory %s: path too long", dir);
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return kiln_fail(err, errno, "cannot create %s: %s", dir, strerror(errno));
	ca = calloc(1, sizeof(*ca));
	if (!ca)
		return kiln_fail(err, ENOMEM, "out of memory");
	pthread_mutex_init(&ca->mu, NULL);
	r = ca_load_or_make(ca, dir, err);
	if (!r)
		r = seal_key_load_or_make(ca, dir, err);
	if (r)
		goto fail;
	ca->leaf_key = ec_key_new();
	b = BIO_new(BIO_s_mem());
	if (!ca->leaf_key || !b || !PEM_write_bio_X509(b, ca->cert) || !(ca->pem = bio_text(b, NULL))) {
		r = ssl_fail(err, ENOMEM, "the node CA");
		goto fail;
	}
	BIO_free(b);
	*out = ca;
	return 0;
fail:
	BIO_free(b);
	kd_ca_free(ca);
	return r;
}

const char *kd_ca_pem(const struct kd_ca *ca)
{
	return ca->pem;
}

X509 *kd_ca_cert(const struct kd_ca *ca)
{
	return ca->cert;
}

static X509 *leaf_make(struct kd_ca *ca, const char *host)
{
	X509 *x = X509_new();
	char san[300];

	if (!x)
		return NULL;
	snprintf(san, sizeof(san), "DNS:%s", host);
	if (!X509_set_version(x, 2) || !rand_serial(x) || !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
	    !X509_gmtime_adj(X509_getm_notAfter(x), (long)KD_CA_LEAF_DAYS * 86400) ||
	    !X509_set_pubkey(x, ca->leaf_key) ||
	    !X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, (const unsigned char *)host,
					-1, -1, 0) ||
	    !X509_set_issuer_name(x, X509_get_subject_name(ca->cert)) ||
	    !add_ext(x, ca->cert, NID_basic_constraints, "critical,CA:FALSE") ||
	    !add_ext(x, ca->cert, NID_key_usage, "critical,digitalSignature") ||
	    !add_ext(x, ca->cert, NID_ext_key_usage, "serverAuth") ||
	    !add_ext(x, ca->cert, NID_subject_alt_name, san) ||
	    !add_ext(x, ca->cert, NID_authority_key_identifier, "keyid:always") ||
	    !X509_sign(x, ca->key, EVP_sha256())) {
		X509_free(x);
		return NULL;
	}
	return x;
}

/* ALPN: HTTP/1.1 only, so the proxy can read the requests (it rewrites no HTTP/2). */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
		       unsigned int inlen, void *arg)
{
	static const unsigned char h11[] = "\x08http/1.1";
	unsigned char *o;

	(void)ssl;
	(void)arg;
	if (SSL_select_next_proto(&o, outlen, h11, sizeof(h11) - 1, in, inlen) != OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_NOACK;
	*out = o;
	return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *leaf_ctx_make(struct kd_ca *ca, const char *host, struct kiln_err *err)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	X509 *x = NULL;

	if (!ctx) {
		ssl_fail(err, ENOMEM, "a TLS context");
		return NULL;
	}
	x = leaf_make(ca, host);
	if (!x || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) || SSL_CTX_use_certificate(ctx, x) != 1 ||
	    SSL_CTX_add1_chain_cert(ctx, ca->cert) != 1 || SSL_CTX_use_PrivateKey(ctx, ca->leaf_key) != 1) {
		ssl_fail(err, ENOMEM, "a leaf certificate");
		X509_free(x);
		SSL_CTX_free(ctx);
		return NULL;
	}
	X509_free(x);
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
	return ctx;
}

SSL_CTX *kd_ca_leaf_ctx(struct kd_ca *ca, const char *host, struct kiln_err *err)
{
	char h[256];
	struct ca_leaf *lru = NULL, *l;
	time_t now = time(NULL);
	size_t n = strlen(host);
	SSL_CTX *ctx;

	if (n == 0 || n >= sizeof(h)) {
		kiln_fail(err, EINVAL, "leaf certificate: host name is empty or too long");
		return NULL;
	}
	for (size_t i = 0; i <= n; i++)
		h[i] = (char)((host[i] >= 'A' && host[i] <= 'Z') ? host[i] + 32 : host[i]);
	if (n && h[n - 1] == '.')
		h[n - 1] = '\0';
	pthread_mutex_lock(&ca->mu);
	for (size_t i = 0; i < KD_CA_LEAF_CACHE; i++) {
		l = &ca->leaves[i];
		/* Renewed a day before the leaf's 7 days are up. */
		if (l->ctx && !strcmp(l->host, h)) {
			if (now - l->made >= (KD_CA_LEAF_DAYS - 1) * 86400) {
				lru = l;	/* stale: make it again in its slot */
				break;
			}
			l->used = ++ca->tick;
			SSL_CTX_up_ref(l->ctx);
			pthread_mutex_unlock(&ca->mu);
			return l->ctx;
		}
		if (!l->ctx) {
			if (!lru || lru->ctx)
				lru = l;
		} else if (!lru || (lru->ctx && l->used < lru->used)) {
			lru = l;
		}
	}
	ctx = leaf_ctx_make(ca, h, err);
	if (ctx) {
		if (lru->ctx)
			SSL_CTX_free(lru->ctx);
		snprintf(lru->host, sizeof(lru->host), "%s", h);
		lru->ctx = ctx;
		lru->used = ++ca->tick;
		lru->made = now;
		SSL_CTX_up_ref(ctx);
	}
	pthread_mutex_unlock(&ca->mu);
	return ctx;
}

/* ---- sealing --------------------------------------------------------------- */

static json_t *b64_json(const uint8_t *p, size_t len)
{
	char *out = malloc(4 * ((len + 2) / 3) + 1);
	json_t *j;

	if (!out)
		return NULL;
	EVP_EncodeBlock((unsigned char *)out, p, (int)len);
	j = json_string(out);
	free(out);
	return j;
}

/* Decode base64 text into at most max bytes; the length, or -1. */
static long b64_take(const json_t *v, uint8_t *out, size_t max)
{
	const char *s = json_string_value(v);
	size_t n = s ? strlen(s) : 0, pad = 0;
	uint8_t *tmp;
	int r;

	if (!s || n % 4 || n / 4 * 3 > max + 2)
		return -1;
	tmp = malloc(n / 4 * 3 + 1);
	if (!tmp)
		return -1;
	r = EVP_DecodeBlock(tmp, (const unsigned char *)s, (int)n);
	if (n >= 1 && s[n - 1] == '=')
		pad++;
	if (n >= 2 && s[n - 2] == '=')
		pad++;
	if (r < 0 || (size_t)r < pad || (size_t)r - pad > max) {
		OPENSSL_cleanse(tmp, n / 4 * 3 + 1);
		free(tmp);
		return -1;
	}
	r -= (int)pad;
	memcpy(out, tmp, (size_t)r);
	OPENSSL_cleanse(tmp, n / 4 * 3 + 1);
	free(tmp);
	return r;
}

int kd_ca_seal(struct kd_ca *ca, const void *p, size_t len, json_t *o, struct kiln_err *err)
{
	uint8_t nonce[SEAL_NONCE_LEN], tag[SEAL_TAG_LEN], *ct;
	EVP_CIPHER_CTX *c;
	int n = 0, fin = 0, r = -EIO;

	if (len > (1u << 20))
		return kiln_fail(err, E2BIG, "sealing a secret: too long");
	ct = malloc(len + 16);
	c = EVP_CIPHER_CTX_new();
	if (!ct || !c) {
		r = kiln_fail(err, ENOMEM, "out of memory");
		goto out;
	}
	if (RAND_bytes(nonce, sizeof(nonce)) != 1 ||
	    EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, sizeof(nonce), NULL) != 1 ||
	    EVP_EncryptInit_ex(c, NULL, NULL, ca->seal_key, nonce) != 1 ||
	    EVP_EncryptUpdate(c, ct, &n, p, (int)len) != 1 || EVP_EncryptFinal_ex(c, ct + n, &fin) != 1 ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, sizeof(tag), tag) != 1) {
		r = ssl_fail(err, EIO, "sealing a secret");
		goto out;
	}
	if (json_object_set_new(o, "nonce", b64_json(nonce, sizeof(nonce))) ||
	    json_object_set_new(o, "ct", b64_json(ct, (size_t)(n + fin))) ||
	    json_object_set_new(o, "tag", b64_json(tag, sizeof(tag)))) {
		r = kiln_fail(err, ENOMEM, "out of memory");
		goto out;
	}
	r = 0;
out:
	EVP_CIPHER_CTX_free(c);
	free(ct);
	return r;
}

int kd_ca_unseal(struct kd_ca *ca, const json_t *o, char **out, size_t *len, struct kiln_err *err)
{
	uint8_t nonce[SEAL_NONCE_LEN], tag[SEAL_TAG_LEN], *ct = NULL;
	char *pt = NULL;
	EVP_CIPHER_CTX *c = NULL;
	long clen;
	int n = 0, fin = 0, r;

	*out = NULL;
	*len = 0;
	ct = malloc(8192);
	pt = malloc(8192 + 1);
	if (!ct || !pt) {
		r = kiln_fail(err, ENOMEM, "out of memory");
		goto out;
	}
	clen = b64_take(json_object_get(o, "ct"), ct, 8192);
	if (b64_take(json_object_get(o, "nonce"), nonce, sizeof(nonce)) != SEAL_NONCE_LEN ||
	    b64_take(json_object_get(o, "tag"), tag, sizeof(tag)) != SEAL_TAG_LEN || clen < 0) {
		r = kiln_fail(err, EBADMSG, "a sealed secret is malformed");
		goto out;
	}
	c = EVP_CIPHER_CTX_new();
	if (!c || EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, sizeof(nonce), NULL) != 1 ||
	    EVP_DecryptInit_ex(c, NULL, NULL, ca->seal_key, nonce) != 1 ||
	    EVP_DecryptUpdate(c, (uint8_t *)pt, &n, ct, (int)clen) != 1 ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, sizeof(tag), tag) != 1 ||
	    EVP_DecryptFinal_ex(c, (uint8_t *)pt + n, &fin) != 1) {
		ERR_clear_error();
		r = kiln_fail(err, EBADMSG, "a sealed secret does not open with this node's secrets.key");
		goto out;
	}
	pt[n + fin] = '\0';
	*out = pt;
	*len = (size_t)(n + fin);
	pt = NULL;
	r = 0;
out:
	EVP_CIPHER_CTX_free(c);
	if (pt) {
		OPENSSL_cleanse(pt, 8192 + 1);
		free(pt);
	}
	free(ct);
	return r;
}

void kd_ca_free(struct kd_ca *ca)
{
	if (!ca)
		return;
	for (size_t i = 0; i < KD_CA_LEAF_CACHE; i++)
		if (ca->leaves[i].ctx)
			SSL_CTX_free(ca->leaves[i].ctx);
	EVP_PKEY_free(ca->key);
	EVP_PKEY_free(ca->leaf_key);
	X509_free(ca->cert);
	free(ca->pem);
	OPENSSL_cleanse(ca->seal_key, sizeof(ca->seal_key));
	pthread_mutex_destroy(&ca->mu);
	free(ca);
}
