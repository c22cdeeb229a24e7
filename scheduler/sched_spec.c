/*
 * kiln's REST create body, checked field by field (sched_core.h). jansson parses
 * the JSON; every field has an entry in one table with its parser, so an
 * unknown field, a wrong type or a value out of range is refused with the
 * field's name before anything is acted on.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "sched_core.h"
#include "sched_int.h"
#include "sched_net.h"

#define LABEL_KEY_CHARS "[a-zA-Z0-9._/-]"
#define ENV_NAME_FORM "[A-Za-z_][A-Za-z0-9_]*"

void sched_spec_init(struct sched_spec *s)
{
	memset(s, 0, sizeof(*s));
	s->memory_mb = SCHED_MEM_DEFAULT_MB;
	s->vcpus = SCHED_VCPUS_DEFAULT;
	s->timeout.kind = SCHED_TIMEOUT_DURATION;
	s->timeout.ms = SCHED_TIMEOUT_DEFAULT_MS;
}

static void kv_free(struct sched_kv *kv, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		free(kv[i].key);
		free(kv[i].value);
	}
	free(kv);
}

void sched_spec_free(struct sched_spec *s)
{
	kv_free(s->labels, s->nlabels);
	kv_free(s->env, s->nenv);
	for (size_t i = 0; i < s->nallow; i++)
		free(s->allow_net[i]);
	free(s->allow_net);
	for (size_t i = 0; i < s->nsecrets; i++) {
		struct sched_secret *x = &s->secrets[i];

		for (size_t k = 0; k < x->nhosts; k++)
			free(x->hosts[k]);
		free(x->hosts);
		if (x->value) {
			explicit_bzero(x->value, x->value_len);
			free(x->value);
		}
	}
	free(s->secrets);
	sched_spec_init(s);
}

/* What a value is, for "must be an integer, not a string". */
static const char *json_kind(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:
		return "an object";
	case JSON_ARRAY:
		return "an array";
	case JSON_STRING:
		return "a string";
	case JSON_INTEGER:
		return "an integer";
	case JSON_REAL:
		return "a fractional number";
	case JSON_TRUE:
	case JSON_FALSE:
		return "a boolean";
	case JSON_NULL:
		return "null";
	}
	return "something else";
}

static int is_label_key_byte(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == '-' || c == '/';
}

int sched_label_check(const char *key, size_t klen, const char *value, size_t vlen, struct kiln_err *err)
{
	char q[SCHED_QUOTE_MAX], b[SCHED_QUOTE_MAX];
	size_t i;

	if (klen == 0)
		return kiln_fail(err, EINVAL, "label key \"\" is empty; keys are 1-%u bytes of " LABEL_KEY_CHARS,
				 SCHED_LABEL_KEY_MAX);
	sched_quote(key, klen, q);
	if (klen > SCHED_LABEL_KEY_MAX)
		return kiln_fail(err, EINVAL, "label key %s is %zu bytes (at most %u)", q, klen, SCHED_LABEL_KEY_MAX);
	for (i = 0; i < klen; i++)
		if (!is_label_key_byte((unsigned char)key[i]))
			return kiln_fail(err, EINVAL, "label key %s has %s; keys are 1-%u bytes of " LABEL_KEY_CHARS,
					 q, sched_quote(key + i, 1, b), SCHED_LABEL_KEY_MAX);
	if (vlen > SCHED_LABEL_VALUE_MAX)
		return kiln_fail(err, EINVAL, "label %s value is %zu bytes (at most %u)", q, vlen,
				 SCHED_LABEL_VALUE_MAX);
	for (i = 0; i < vlen; i++) {
		unsigned char c = (unsigned char)value[i];

		if (c < 0x20 || c == 0x7f)
			return kiln_fail(err, EINVAL, "label %s value has a control byte (0x%02x)", q, c);
	}
	return 0;
}

int sched_env_check(const char *name, size_t nlen, const char *value, size_t vlen, struct kiln_err *err)
{
	char q[SCHED_QUOTE_MAX];
	size_t i;
	int ok = nlen > 0;

	for (i = 0; ok && i < nlen; i++) {
		char c = name[i];

		ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || (i > 0 && c >= '0' && c <= '9');
	}
	sched_quote(name, nlen, q);
	if (!ok)
		return kiln_fail(err, EINVAL, "env name %s is not a variable name; names match " ENV_NAME_FORM, q);
	if (memchr(value, '\0', vlen))
		return kiln_fail(err, EINVAL, "env %s value has a NUL byte", q);
	return 0;
}

/* A copy of len bytes as a C string (the caller checked that they hold no NUL). */
static char *dup_n(const char *s, size_t len)
{
	char *p = malloc(len + 1);

	if (p) {
		memcpy(p, s, len);
		p[len] = '\0';
	}
	return p;
}

/* Parse an object of string to string into kv: labels and env share all but the checks. */
static int parse_kv(const json_t *v, const char *field, size_t max, const char *entry,
		    int (*check)(const char *, size_t, const char *, size_t, struct kiln_err *),
		    struct sched_kv **out, size_t *nout, size_t *bytes, struct kiln_err *err)
{
	char q[SCHED_QUOTE_MAX];
	const char *key;
	size_t klen, n, i = 0;
	json_t *val;
	int r;

	if (!json_is_object(v))
		return kiln_fail(err, EINVAL, "%s must be an object of string to string, not %s", field, json_kind(v));
	n = json_object_size(v);
	if (n > max)
		return kiln_fail(err, EINVAL, "%s has %zu entries (at most %zu)", field, n, max);
	if (n == 0)
		return 0;
	*out = calloc(n, sizeof(**out));
	if (!*out)
		return kiln_fail(err, ENOMEM, "%s: out of memory", field);
	*bytes = 0;
	json_object_keylen_foreach((json_t *)v, key, klen, val) {
		const char *s;
		size_t slen;

		if (!json_is_string(val))
			return kiln_fail(err, EINVAL, "%s %s must be a string, not %s", entry,
					 sched_quote(key, klen, q), json_kind(val));
		s = json_string_value(val);
		slen = json_string_length(val);
		r = check(key, klen, s, slen, err);
		if (r < 0)
			return r;
		(*out)[i].key = dup_n(key, klen);
		(*out)[i].value = dup_n(s, slen);
		*nout = ++i;
		if (!(*out)[i - 1].key || !(*out)[i - 1].value)
			return kiln_fail(err, ENOMEM, "%s: out of memory", field);
		*bytes += klen + 1 + slen + 1;
	}
	return 0;
}

/* An integer field in [min, max]; `what` follows "must be" ("an integer (MiB)"). */
static int parse_range(const json_t *v, const char *field, const char *what, unsigned min, unsigned max,
		       unsigned *out, struct kiln_err *err)
{
	json_int_t n;

	if (!json_is_integer(v))
		return kiln_fail(err, EINVAL, "%s must be %s, not %s", field, what, json_kind(v));
	n = json_integer_value(v);
	if (n < min || n > max)
		return kiln_fail(err, EINVAL, "%s %lld is out of range (%u-%u)", field, (long long)n, min, max);
	*out = (unsigned)n;
	return 0;
}

static int name_ok(const char *n, size_t len)
{
	return len >= 1 && len <= SCHED_IMAGE_MAX && strspn(n, "abcdefghijklmnopqrstuvwxyz0123456789._-") == len;
}

/* An image's name; whether this node has it is kilnd's to say. */
static int parse_image(const json_t *v, struct sched_spec *s, struct kiln_err *err)
{
	char q[SCHED_QUOTE_MAX];
	const char *n;
	size_t len;

	if (s->root_given && json_is_string(v) && strcmp(json_string_value(v), s->image))
		return kiln_fail(err, EINVAL, "image \"%.64s\" and root \"%s\" differ: give one of them",
				 json_string_value(v), s->image);
	if (!json_is_string(v))
		return kiln_fail(err, EINVAL, "image must be a string (an image name such as \"debian\"), not %s",
				 json_kind(v));
	n = json_string_value(v);
	len = json_string_length(v);
	if (!name_ok(n, len))
		return kiln_fail(err, EINVAL, "image %s is not an image name (1-%u of a-z 0-9 . _ -)",
				 sched_quote(n, len, q), SCHED_IMAGE_MAX);
	memcpy(s->image, n, len);
	s->image[len] = '\0';
	return 0;
}

/*
 * A guest mount path: absolute, clean (no empty, . or .. components), of
 * printable bytes, and not where the system lives (/, /proc, /sys, /dev and
 * what is below them).
 */
static int mount_path_check(const char *p, size_t len, struct kiln_err *err)
{
	static const char *const system[] = { "/proc", "/sys", "/dev" };
	char q[SCHED_QUOTE_MAX];

	sched_quote(p, len, q);
	if (len < 2 || len > SCHED_VOL_PATH_MAX || p[0] != '/')
		return kiln_fail(err, EINVAL, "volumes: mount path %s must be absolute, 2-%u bytes, and not /", q,
				 SCHED_VOL_PATH_MAX);
	/* A plain charset: the path reaches a guest shell and kiln-vmm's option syntax. */
	if (strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+@=:") != len)
		return kiln_fail(err, EINVAL, "volumes: mount path %s may hold only letters, digits and / . _ - + @ = :", q);
	if (p[len - 1] == '/' || strstr(p, "//") || strstr(p, "/./") || strstr(p, "/../") ||
	    (len >= 2 && !strcmp(p + len - 2, "/.")) || (len >= 3 && !strcmp(p + len - 3, "/..")))
		return kiln_fail(err, EINVAL, "volumes: mount path %s is not clean (no trailing /, //, . or ..)", q);
	for (size_t i = 0; i < sizeof(system) / sizeof(system[0]); i++) {
		size_t n = strlen(system[i]);

		if (!strncmp(p, system[i], n) && (p[n] == '\0' || p[n] == '/'))
			return kiln_fail(err, EINVAL, "volumes: mount path %s is under %s, which the system needs", q,
					 system[i]);
	}
	return 0;
}

static int parse_volumes(const json_t *v, struct sched_spec *s, struct kiln_err *err)
{
	char q[SCHED_QUOTE_MAX];
	const char *key;
	size_t klen;
	json_t *val;
	int r;

	if (!json_is_object(v))
		return kiln_fail(err, EINVAL, "volumes must be an object of mount path to volume, such as "
				 "{\"/data\": \"mydata\"}, not %s", json_kind(v));
	if (json_object_size(v) > SCHED_VOLS_MAX)
		return kiln_fail(err, EINVAL, "volumes: %zu given (at most %u)", json_object_size(v), SCHED_VOLS_MAX);
	json_object_keylen_foreach((json_t *)v, key, klen, val) {
		struct sched_vol *sv = &s->vols[s->nvols];
		const json_t *name = val, *ro = NULL;
		const char *n;
		size_t nlen;

		if ((r = mount_path_check(key, klen, err)))
			return r;
		sched_quote(key, klen, q);
		if (json_is_object(val)) {
			const char *k2;
			json_t *v2;

			json_object_foreach((json_t *)val, k2, v2)
				if (strcmp(k2, "volume") && strcmp(k2, "readonly")) {
					char kq[SCHED_QUOTE_MAX];

					return kiln_fail(err, EINVAL, "volumes %s: unknown field %s; it takes volume and readonly", q,
							 sched_quote(k2, strlen(k2), kq));
				}
			name = json_object_get(val, "volume");
			ro = json_object_get(val, "readonly");
			if (ro && !json_is_boolean(ro))
				return kiln_fail(err, EINVAL, "volumes %s: readonly must be true or false, not %s", q, json_kind(ro));
		}
		if (!name || !json_is_string(name))
			return kiln_fail(err, EINVAL, "volumes %s must name a volume (a string, or {\"volume\": NAME, "
					 "\"readonly\": true}), not %s", q, name ? json_kind(name) : "an object without one");
		n = json_string_value(name);
		nlen = json_string_length(name);
		if (!name_ok(n, nlen)) {
			char nq[SCHED_QUOTE_MAX];

			return kiln_fail(err, EINVAL, "volumes %s: %s is not a volume name (1-%u of a-z 0-9 . _ -)", q,
					 sched_quote(n, nlen, nq), SCHED_IMAGE_MAX);
		}
		memcpy(sv->path, key, klen);
		sv->path[klen] = '\0';
		memcpy(sv->name, n, nlen);
		sv->name[nlen] = '\0';
		sv->readonly = ro && json_is_true(ro);
		s->nvols++;
	}
	return 0;
}

/* root: Deno Sandbox's name for the image a sandbox boots (a snapshot of a volume, or a base image). */
static int parse_root(const json_t *v, struct sched_spec *s, struct kiln_err *err)
{
	char saved[sizeof(s->image)];
	int r;

	memcpy(saved, s->image, sizeof(saved));
	if ((r = parse_image(v, s, err)))
		return kiln_err_prefix(err, r, "root");
	if (saved[0] && strcmp(saved, s->image))
		return kiln_fail(err, EINVAL, "root \"%s\" and image \"%s\" differ: give one of them", s->image, saved);
	s->root_given = 1;
	return 0;
}

static int parse_memory(const json_t *v, struct sched_spec *s, struct kiln_err *err)
{
	return parse_range(v, "memory_mb", "an integer (MiB)", SCHED_MEM_MIN_MB, SCHED_MEM_MAX_MB, &s->memory_mb, err);
}

static int parse_vcpus(const json_t *v, struct sched_spec *s, struct kiln_err *err)
{
	return parse_range(v, "vcpus", "an integer", SCHED_VCPUS_MIN, SCHED_VCPUS_MAX, &s->vcpus, err);
}

static int parse_timeout(const json_t *v, struct sched_spec *s, struct kiln_err *err)
{
	if (!json_is_string(v))
		return kiln_fail(err, EINVAL,
				 "timeout must be a string (\"session\" or a duration such as 5m), not %s", json_kind(v));
	return sched_parse_timeout_n(json_string_value(v), json_string_length(v), &s->timeout, err);
}

static int parse_labels(const json_t *v, struct sched_spec *s, struct kiln_err *err)
{
	size_t bytes;

	return parse_kv(v, "labels", SCHED_LABELS_MAX, "label", sched_label_check, &s->labels, &s->nlabels,
			&bytes, err);
}

static int parse_env(const json_t *v, struct sched_spec *s, struct kiln_err *err)
{
	size_t bytes = 0;
	int r;

	r = parse_kv(v, "env", SCHED_ENV_MAX, "env", sched_env_check, &s->env, &s->nenv, &bytes, err);
	if (r < 0)
		return r;
	if (bytes > SCHED_ENV_BYTES_MAX)
		return kiln_fail(err, EINVAL, "env is %zu bytes in all (at most %u, counting NAME=VALUE and a NUL for each)",
				 bytes, SCHED_ENV_BYTES_MAX);
	return 0;
}

/*
 * allow_net: an array of up to SCHED_ALLOW_MAX entries (sched_net.h). An
 * empty array says what leaving it out says: no outbound access.
 */
static int parse_allow_net(const json_t *v, struct sched_spec *s, struct kiln_err *err)
{
	struct sched_allow a;
	size_t i, n;

	if (!json_is_array(v))
		return kiln_fail(err, EINVAL, "allow_net must be an array of host names, *.domain, IP addresses or "
				 "CIDR ranges, such as [\"api.example.com\", \"*.example.org:443\"], not %s", json_kind(v));
	n = json_array_size(v);
	if (n > SCHED_ALLOW_MAX)
		return kiln_fail(err, EINVAL, "allow_net: %zu entries given (at most %u)", n, SCHED_ALLOW_MAX);
	s->allow_given = 1;
	if (!n)
		return 0;
	s->allow_net = calloc(n, sizeof(*s->allow_net));
	if (!s->allow_net)
		return kiln_fail(err, ENOMEM, "allow_net: out of memory");
	for (i = 0; i < n; i++) {
		const json_t *e = json_array_get(v, i);
		char q[SCHED_QUOTE_MAX];
		int r;

		if (!json_is_string(e))
			return kiln_fail(err, EINVAL, "allow_net[%zu] must be a string, not %s", i, json_kind(e));
		if (json_string_length(e) > SCHED_ALLOW_LEN_MAX || strlen(json_string_value(e)) != json_string_length(e))
			return kiln_fail(err, EINVAL, "allow_net entry %s is not a host name, *.domain, IP address or CIDR range",
					 sched_quote(json_string_value(e), json_string_length(e), q));
		r = sched_allow_parse(json_string_value(e), &a, err);
		if (r < 0)
			return r;
		s->allow_net[i] = strdup(json_string_value(e));
		if (!s->allow_net[i])
			return kiln_fail(err, ENOMEM, "allow_net: out of memory");
		s->nallow = i + 1;
	}
	return 0;
}

/* One secret's hosts: NAME or *.DOMAIN entries (sched_net.h), optionally with :PORT. */
static int parse_secret_hosts(const json_t *v, const char *q, struct sched_secret *x, struct kiln_err *err)
{
	struct sched_allow a;
	size_t i, n;

	if (!json_is_array(v))
		return kiln_fail(err, EINVAL, "secrets %s: hosts must be an array of host names or *.domain, such as "
				 "[\"api.example.com\"], not %s", q, v ? json_kind(v) : "missing");
	n = json_array_size(v);
	if (n < 1 || n > SCHED_SECRET_HOSTS_MAX)
		return kiln_fail(err, EINVAL, "secrets %s: hosts has %zu entries (1-%u: the hosts the secret is sent to)",
				 q, n, SCHED_SECRET_HOSTS_MAX);
	x->hosts = calloc(n, sizeof(*x->hosts));
	if (!x->hosts)
		return kiln_fail(err, ENOMEM, "secrets: out of memory");
	for (i = 0; i < n; i++) {
		const json_t *e = json_array_get(v, i);
		char hq[SCHED_QUOTE_MAX];

		if (!json_is_string(e))
			return kiln_fail(err, EINVAL, "secrets %s: hosts[%zu] must be a string, not %s", q, i, json_kind(e));
		sched_quote(json_string_value(e), json_string_length(e), hq);
		if (json_string_length(e) > SCHED_ALLOW_LEN_MAX || strlen(json_string_value(e)) != json_string_length(e) ||
		    sched_allow_parse(json_string_value(e), &a, err) < 0 ||
		    (a.kind != SCHED_ALLOW_NAME && a.kind != SCHED_ALLOW_WILD))
			return kiln_fail(err, EINVAL, "secrets %s: host %s is not a host name or *.domain (optionally "
					 "with :PORT); secrets go only to named hosts, never to an address, range or *", q, hq);
		x->hosts[i] = strdup(json_string_value(e));
		if (!x->hosts[i])
			return kiln_fail(err, ENOMEM, "secrets: out of memory");
		x->nhosts = i + 1;
	}
	return 0;
}

/*
 * secrets: {"NAME": {"hosts": [...], "value": "..."}}. A message names the
 * secret and what to fix, and never quotes the value.
 */
static int parse_secrets(const json_t *v, struct sched_spec *s, struct kiln_err *err)
{
	const char *key;
	size_t klen, n;
	json_t *val;
	int r;

	if (!json_is_object(v))
		return kiln_fail(err, EINVAL, "secrets must be an object of NAME to {\"hosts\": [HOST...], \"value\": "
				 "\"...\"}, not %s", json_kind(v));
	n = json_object_size(v);
	if (n > SCHED_SECRETS_MAX)
		return kiln_fail(err, EINVAL, "secrets: %zu given (at most %u)", n, SCHED_SECRETS_MAX);
	if (!n)
		return 0;
	s->secrets = calloc(n, sizeof(*s->secrets));
	if (!s->secrets)
		return kiln_fail(err, ENOMEM, "secrets: out of memory");
	json_object_keylen_foreach((json_t *)v, key, klen, val) {
		struct sched_secret *x = &s->secrets[s->nsecrets];
		char q[SCHED_QUOTE_MAX];
		const json_t *hosts, *value;
		const char *k2, *vs;
		json_t *v2;
		size_t vlen;
		int ok = klen >= 1 && klen <= SCHED_SECRET_NAME_MAX;

		for (size_t i = 0; ok && i < klen; i++) {
			char c = key[i];

			ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || (i > 0 && c >= '0' && c <= '9');
		}
		sched_quote(key, klen, q);
		if (!ok)
			return kiln_fail(err, EINVAL, "secret name %s is not a variable name; names are 1-%u bytes matching "
					 "[A-Za-z_][A-Za-z0-9_]*", q, SCHED_SECRET_NAME_MAX);
		memcpy(x->name, key, klen);
		x->name[klen] = '\0';
		s->nsecrets++;
		if (!json_is_object(val))
			return kiln_fail(err, EINVAL, "secrets %s must be {\"hosts\": [HOST...], \"value\": \"...\"}, not %s", q,
					 json_kind(val));
		json_object_foreach(val, k2, v2)
			if (strcmp(k2, "hosts") && strcmp(k2, "value")) {
				char kq[SCHED_QUOTE_MAX];

				return kiln_fail(err, EINVAL, "secrets %s: unknown field %s; a secret takes hosts and value", q,
						 sched_quote(k2, strlen(k2), kq));
			}
		hosts = json_object_get(val, "hosts");
		value = json_object_get(val, "value");
		if ((r = parse_secret_hosts(hosts, q, x, err)))
			return r;
		if (!value || !json_is_string(value))
			return kiln_fail(err, EINVAL, "secrets %s: value must be a string of 1-%u bytes, not %s", q,
					 SCHED_SECRET_VALUE_MAX, value ? json_kind(value) : "missing");
		vs = json_string_value(value);
		vlen = json_string_length(value);
		if (vlen < 1 || vlen > SCHED_SECRET_VALUE_MAX)
			return kiln_fail(err, EINVAL, "secrets %s: value is %zu bytes (1-%u)", q, vlen, SCHED_SECRET_VALUE_MAX);
		if (memchr(vs, '\0', vlen) || memchr(vs, '\r', vlen) || memchr(vs, '\n', vlen))
			return kiln_fail(err, EINVAL, "secrets %s: value has a NUL, CR or LF byte, which cannot go in an "
					 "HTTP header; remove it", q);
		x->value = malloc(vlen + 1);
		if (!x->value)
			return kiln_fail(err, ENOMEM, "secrets: out of memory");
		memcpy(x->value, vs, vlen);
		x->value[vlen] = '\0';
		x->value_len = vlen;
	}
	return 0;
}

/* After all fields: a secret's name is an environment variable, so env may not set it too. */
static int secrets_check_env(const struct sched_spec *s, struct kiln_err *err)
{
	for (size_t i = 0; i < s->nsecrets; i++)
		for (size_t k = 0; k < s->nenv; k++)
			if (!strcmp(s->secrets[i].name, s->env[k].key))
				return kiln_fail(err, EINVAL, "secrets \"%s\": env sets %s too; a secret is an environment "
						 "variable of its own, so remove it from env", s->secrets[i].name,
						 s->secrets[i].name);
	return 0;
}

/* The create body's fields: a field not here is refused by name. */
static const struct spec_field {
	const char *name;
	int (*parse)(const json_t *v, struct sched_spec *s, struct kiln_err *err);
} spec_fields[] = {
	{ "image", parse_image },
	{ "root", parse_root },
	{ "memory_mb", parse_memory },
	{ "vcpus", parse_vcpus },
	{ "timeout", parse_timeout },
	{ "labels", parse_labels },
	{ "env", parse_env },
	{ "volumes", parse_volumes },
	{ "allow_net", parse_allow_net },
	{ "secrets", parse_secrets },
};
#define NFIELDS (sizeof(spec_fields) / sizeof(spec_fields[0]))

/* jansson's message, with anything outside printable ASCII escaped (it can quote the input). */
static int malformed(const json_error_t *je, struct kiln_err *err)
{
	char text[JSON_ERROR_TEXT_LENGTH * 4];
	size_t i, o = 0;

	if (json_error_code(je) == json_error_out_of_memory)
		return kiln_fail(err, ENOMEM, "request body: out of memory");
	for (i = 0; i < sizeof(je->text) - 1 && je->text[i] && o + 5 < sizeof(text); i++) {
		unsigned char c = (unsigned char)je->text[i];

		if (c < 0x20 || c > 0x7e)
			o += (size_t)snprintf(text + o, sizeof(text) - o, "\\x%02x", c);
		else
			text[o++] = (char)c;
	}
	text[o] = '\0';
	return kiln_fail(err, EINVAL, "malformed JSON at line %d, column %d: %s", je->line, je->column, text);
}

int sched_spec_from_json(const char *body, size_t len, struct sched_spec *out, struct kiln_err *err)
{
	char q[SCHED_QUOTE_MAX];
	struct sched_spec s;
	json_error_t je;
	const char *key;
	size_t klen;
	json_t *root, *v;
	int r = 0;

	sched_spec_init(out);
	if (len > SCHED_BODY_MAX)
		return kiln_fail(err, E2BIG, "request body is %zu bytes (at most %u)", len, SCHED_BODY_MAX);
	if (len == 0)
		return 0;
	root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
	if (!root)
		return malformed(&je, err);
	sched_spec_init(&s);
	if (!json_is_object(root)) {
		r = kiln_fail(err, EINVAL, "the request body must be a JSON object, not %s", json_kind(root));
		goto out;
	}
	json_object_keylen_foreach(root, key, klen, v) {
		size_t i;

		for (i = 0; i < NFIELDS; i++)
			if (strlen(spec_fields[i].name) == klen && !memcmp(key, spec_fields[i].name, klen))
				break;
		if (i == NFIELDS) {
			r = kiln_fail(err, EINVAL, "unknown field %s; a create takes image (or root), memory_mb, vcpus, timeout, volumes, labels, env, allow_net and secrets",
				      sched_quote(key, klen, q));
			goto out;
		}
		if (json_is_null(v))
			continue;	/* null: the default */
		r = spec_fields[i].parse(v, &s, err);
		if (r < 0)
			goto out;
	}
	r = secrets_check_env(&s, err);
	if (r < 0)
		goto out;
	*out = s;
	json_decref(root);
	return 0;
out:
	sched_spec_free(&s);
	json_decref(root);
	return r;
}
