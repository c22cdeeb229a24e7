/*
 * A sandbox's secrets (issue 16; docs/network.md "Secrets"). The guest
 * gets NAME=KILN_SECRET_<32 hex> in its environment and the node CA in its
 * trust store; the value stays in kilnd: sealed (AES-256-GCM under
 * STATE/ca/secrets.key, kd_ca.c) in the registry, and in the egress proxy's
 * memory, which replaces the placeholder on the wire for the secret's
 * hosts only. No value is ever logged or shown by the API.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "agent_client.h"
#include "kd_ca.h"
#include "kilnd.h"

/* Where the guest's trust store takes the node CA (Debian's layout). */
#define GUEST_CA_FILE		"/usr/local/share/ca-certificates/kiln-node.crt"
#define GUEST_CA_BUNDLE		"/etc/ssl/certs/ca-certificates.crt"

void kd_secrets_free(struct kd_secret *x, size_t n)
{
	if (!x)
		return;
	for (size_t i = 0; i < n; i++) {
		free((char *)x[i].name);
		free((char *)x[i].placeholder);
		if (x[i].value) {
			OPENSSL_cleanse((char *)x[i].value, x[i].value_len);
			free((char *)x[i].value);
		}
		for (size_t k = 0; k < x[i].nhosts; k++)
			free(x[i].hosts[k]);
		free((char **)x[i].hosts);
	}
	free(x);
}

/* One secret's copy: name, placeholder, value, hosts; 0 or -ENOMEM. */
static int secret_fill(struct kd_secret *x, const char *name, const char *ph, const char *value, size_t vlen,
		       char *const *hosts, size_t nhosts)
{
	char **h = calloc(nhosts ? nhosts : 1, sizeof(*h));
	char *v = malloc(vlen + 1);

	x->name = strdup(name);
	x->placeholder = strdup(ph);
	x->value = v;
	x->hosts = h;
	if (!h || !v || !x->name || !x->placeholder)
		return -ENOMEM;
	memcpy(v, value, vlen);
	v[vlen] = '\0';
	x->value_len = vlen;
	for (size_t k = 0; k < nhosts; k++) {
		if (!(h[k] = strdup(hosts[k])))
			return -ENOMEM;
		x->nhosts = k + 1;
	}
	return 0;
}

/* One NAME=VALUE more in the guest's environment. */
static int env_add(struct kd_job *j, const char *name, const char *value)
{
	size_t n = 0;
	char **e, *s;

	while (j->env && j->env[n])
		n++;
	if (asprintf(&s, "%s=%s", name, value) < 0)
		return -ENOMEM;
	e = realloc(j->env, (n + 2) * sizeof(*e));
	if (!e) {
		free(s);
		return -ENOMEM;
	}
	e[n] = s;
	e[n + 1] = NULL;
	j->env = e;
	return 0;
}

int kd_secrets_prepare(struct kilnd *kd, const struct sched_spec *spec, struct kd_job *j, char **sealed_json,
		       struct kiln_err *err)
{
	json_t *arr = json_array();
	int r = 0;

	*sealed_json = NULL;
	if (!arr)
		return kiln_fail(err, ENOMEM, "out of memory");
	if (spec->nsecrets) {
		j->secrets = calloc(spec->nsecrets, sizeof(*j->secrets));
		if (!j->secrets) {
			r = kiln_fail(err, ENOMEM, "out of memory");
			goto out;
		}
	}
	for (size_t i = 0; i < spec->nsecrets; i++) {
		const struct sched_secret *s = &spec->secrets[i];
		uint8_t rnd[16];
		char ph[sizeof(KD_SECRET_PREFIX) + 32];
		json_t *o = json_object(), *hosts = json_array();

		if (!o || !hosts) {
			json_decref(o);
			json_decref(hosts);
			r = kiln_fail(err, ENOMEM, "out of memory");
			goto out;
		}
		json_array_append_new(arr, o);
		if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
			json_decref(hosts);
			r = kiln_fail(err, EIO, "secrets: no random bytes for a placeholder");
			goto out;
		}
		snprintf(ph, sizeof(ph), KD_SECRET_PREFIX);
		for (size_t k = 0; k < sizeof(rnd); k++)
			snprintf(ph + strlen(KD_SECRET_PREFIX) + 2 * k, 3, "%02x", rnd[k]);
		for (size_t k = 0; k < s->nhosts; k++)
			json_array_append_new(hosts, json_string(s->hosts[k]));
		json_object_set_new(o, "name", json_string(s->name));
		json_object_set_new(o, "hosts", hosts);
		json_object_set_new(o, "placeholder", json_string(ph));
		r = kd_ca_seal(kd->ca, s->value, s->value_len, o, err);
		if (r)
			goto out;
		j->nsecrets = i + 1;
		if (secret_fill(&j->secrets[i], s->name, ph, s->value, s->value_len, s->hosts, s->nhosts) ||
		    env_add(j, s->name, ph)) {
			r = kiln_fail(err, ENOMEM, "out of memory");
			goto out;
		}
	}
	/* The runtimes that do not read the system's bundle by default. */
	if (spec->nsecrets &&
	    (env_add(j, "DENO_TLS_CA_STORE", "system") || env_add(j, "NODE_EXTRA_CA_CERTS", GUEST_CA_FILE) ||
	     env_add(j, "REQUESTS_CA_BUNDLE", GUEST_CA_BUNDLE) || env_add(j, "SSL_CERT_FILE", GUEST_CA_BUNDLE))) {
		r = kiln_fail(err, ENOMEM, "out of memory");
		goto out;
	}
	*sealed_json = json_dumps(arr, JSON_COMPACT);
	if (!*sealed_json)
		r = kiln_fail(err, ENOMEM, "out of memory");
out:
	json_decref(arr);
	return r;
}

int kd_secrets_load(struct kilnd *kd, const char *id, struct kd_secret **out, size_t *n, struct kiln_err *err)
{
	struct kd_secret *x = NULL;
	char *text = NULL;
	json_t *a, *o;
	size_t i;
	int r;

	*out = NULL;
	*n = 0;
	pthread_mutex_lock(&kd->reg_lock);
	r = reg_sandbox_secrets(kd->reg, id, &text, err);
	pthread_mutex_unlock(&kd->reg_lock);
	if (r)
		return r;
	a = json_loads(text, 0, NULL);
	free(text);
	if (!json_is_array(a) || json_array_size(a) > KD_EGRESS_SECRETS_MAX) {
		json_decref(a);
		return kiln_fail(err, EBADMSG, "its secrets in the registry are not a JSON array");
	}
	if (!json_array_size(a)) {
		json_decref(a);
		return 0;
	}
	if (!kd->ca) {
		json_decref(a);
		return kiln_fail(err, ENOTSUP, "it has secrets and %s", kd->ca_why);
	}
	x = calloc(json_array_size(a), sizeof(*x));
	if (!x) {
		json_decref(a);
		return kiln_fail(err, ENOMEM, "out of memory");
	}
	json_array_foreach(a, i, o) {
		json_t *h = json_object_get(o, "hosts"), *v;
		const char *name = json_string_value(json_object_get(o, "name"));
		const char *ph = json_string_value(json_object_get(o, "placeholder"));
		char *hosts[16], *value = NULL;
		size_t nh = 0, k, vlen = 0;

		if (!name || !ph || !json_is_array(h) || json_array_size(h) > 16) {
			r = kiln_fail(err, EBADMSG, "a secret in the registry is malformed");
			break;
		}
		json_array_foreach(h, k, v)
			if (json_is_string(v))
				hosts[nh++] = (char *)json_string_value(v);
		r = kd_ca_unseal(kd->ca, o, &value, &vlen, err);
		if (r) {
			kiln_err_prefix(err, r, "secret %s", name);
			break;
		}
		*n = i + 1;
		r = secret_fill(&x[i], name, ph, value, vlen, hosts, nh);
		OPENSSL_cleanse(value, vlen);
		free(value);
		if (r) {
			r = kiln_fail(err, ENOMEM, "out of memory");
			break;
		}
	}
	json_decref(a);
	if (r) {
		kd_secrets_free(x, *n);
		*n = 0;
		return r;
	}
	*out = x;
	return 0;
}

json_t *kd_secrets_public(const char *sealed_json)
{
	json_t *a = json_loads(sealed_json, 0, NULL), *out = json_array(), *o;
	size_t i;

	if (out && json_is_array(a))
		json_array_foreach(a, i, o) {
			json_t *p = json_object();

			json_object_set(p, "name", json_object_get(o, "name"));
			json_object_set(p, "hosts", json_object_get(o, "hosts"));
			json_object_set(p, "placeholder", json_object_get(o, "placeholder"));
			json_array_append_new(out, p);
		}
	json_decref(a);
	return out;
}

/*
 * As root in the guest: the CA as a file of its own (NODE_EXTRA_CA_CERTS,
 * and update-ca-certificates keeps it if the user runs it), appended to the
 * bundle that curl, git, python and deno read, and linked by hash for
 * OpenSSL's directory lookups. Faster than update-ca-certificates.
 */
int kd_secrets_trust(struct kd_job *j, struct kac *c)
{
	struct kd_ca *ca = j->kd->ca;
	char script[8192];
	int n;

	if (!j->nsecrets)
		return 0;
	if (!ca)
		return kiln_fail(&j->err, ENOTSUP, "secrets: the node CA is not loaded");
	/* The PEM is base64 and dashes only: safe in a quoted here-document. */
	n = snprintf(script, sizeof(script),
		     "set -e\n"
		     "[ -f " GUEST_CA_BUNDLE " ] || { echo 'no CA bundle at " GUEST_CA_BUNDLE " (secrets need the debian image)' >&2; exit 1; }\n"
		     "mkdir -p /usr/local/share/ca-certificates\n"
		     "cat >" GUEST_CA_FILE " <<'KILN_NODE_CA'\n%sKILN_NODE_CA\n"
		     "chmod 644 " GUEST_CA_FILE "\n"
		     "cat " GUEST_CA_FILE " >>" GUEST_CA_BUNDLE "\n"
		     "ln -sf " GUEST_CA_FILE " /etc/ssl/certs/%08lx.0\n",
		     kd_ca_pem(ca), X509_subject_name_hash(kd_ca_cert(ca)));
	if (n < 0 || (size_t)n >= sizeof(script))
		return kiln_fail(&j->err, E2BIG, "secrets: the trust script is too long");
	return kd_guest_root_sh(j, c, script, "installing the node CA in the guest");
}
