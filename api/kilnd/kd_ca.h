/*
 * The node's certificate authority and secrets key (issue 16, secrets;
 * docs/network.md "Secrets"). kilnd holds both under STATE_DIR/ca/:
 *
 *   ca.key       EC P-256 private key, 0600: only kilnd reads it
 *   ca.crt       the CA certificate, 0644: installed into the trust store of
 *                sandboxes created with secrets
 *   secrets.key  32 random bytes, 0600: seals secret values in the registry
 *                (AES-256-GCM), so they survive a restart without plain text
 *
 * Each is made on first start (temp file + rename) and loaded after. The
 * egress proxy asks for a server SSL_CTX per host name it terminates; the
 * leaf certificates (SAN DNS:name, serverAuth, 7 days) share one EC key and
 * are cached (bounded LRU). Thread-safe.
 */
#ifndef KILN_KD_CA_H
#define KILN_KD_CA_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "err.h"

#define KD_CA_LEAF_CACHE	256
#define KD_CA_LEAF_DAYS		7
#define KD_CA_DAYS		3650
#define KD_CA_CN		"kiln node CA"

struct kd_ca;

/* Load or create dir/ca.key, dir/ca.crt and dir/secrets.key (dir made 0700). 0 or -errno with err. */
int kd_ca_open(const char *dir, struct kd_ca **out, struct kiln_err *err);

/* The CA certificate in PEM (owned by ca). */
const char *kd_ca_pem(const struct kd_ca *ca);

/* The CA certificate (owned by ca; for tests that verify a chain). */
X509 *kd_ca_cert(const struct kd_ca *ca);

/*
 * A TLS server context presenting a leaf for host (a DNS name, any case),
 * ALPN http/1.1 only (a client offering only h2 gets no ALPN, i.e. HTTP/1.1).
 * The caller owns a reference: SSL_CTX_free it. NULL with err on failure.
 */
SSL_CTX *kd_ca_leaf_ctx(struct kd_ca *ca, const char *host, struct kiln_err *err);

/*
 * Seal len bytes with AES-256-GCM under secrets.key: a fresh 12-byte nonce,
 * the ciphertext (len bytes) and a 16-byte tag, base64 each into the JSON
 * object o ("nonce", "ct", "tag"). 0 or -errno.
 */
struct json_t;
int kd_ca_seal(struct kd_ca *ca, const void *p, size_t len, struct json_t *o, struct kiln_err *err);

/*
 * Open what kd_ca_seal put in o: *out (malloc'd, len bytes and a NUL; the
 * caller cleanses and frees it). -EBADMSG if it does not authenticate.
 */
int kd_ca_unseal(struct kd_ca *ca, const struct json_t *o, char **out, size_t *len, struct kiln_err *err);

void kd_ca_free(struct kd_ca *ca);

#endif
