/*
 * kiln's REST API, /v1 (docs/kilnd.md "API"): each endpoint checks its
 * input whole, then acts, and answers JSON or {"code", "message"}.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include "kilnd.h"

#define SBX_PREFIX	"/v1/sandboxes"
#define TOK_PREFIX	"/v1/tokens"
#define TMPL_PREFIX	"/v1/templates"

static int fail(json_t **body, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(json_t **body, int status, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	*body = kd_err_json(status, msg);
	return status;
}

static int fail_err(json_t **body, int ret, const struct kiln_err *err)
{
	int st = kd_errno_status(ret);

	*body = kd_err_json(st, err->msg);
	return st;
}

static json_t *time_json(uint64_t ms)
{
	char b[40];

	return ms ? json_string(sched_format_time(ms, b, sizeof(b))) : json_null();
}

static json_t *row_json(struct kilnd *kd, const struct reg_sandbox *sb)
{
	struct kd_sbx *s = kd_sbx_find(kd, sb->id);
	uint64_t cpu = sb->cpu_ns, mem = sb->mem_mb_ms;
	json_t *labels = json_object(), *o;
	char dur[32];

	for (unsigned i = 0; i < sb->n_labels; i++)
		json_object_set_new(labels, sb->labels[i].key, json_string(sb->labels[i].value));
	if (s && s->state == REG_RUNNING) {
		uint64_t c, m;

		kd_sbx_usage(s, kd_now_ms(), &c, &m);
		cpu += c;
		mem += m;
	}
	o = json_pack("{s:s, s:s, s:s, s:i, s:i, s:s, s:o, s:o, s:I, s:o, s:o, s:o, s:o, s:o, s:{s:f, s:f}}",
		      "id", sb->id, "state", reg_state_name(sb->state), "image", sb->image, "memory_mb", (int)sb->memory_mb,
		      "vcpus", (int)sb->vcpus, "timeout",
		      sb->timeout_kind == REG_TIMEOUT_SESSION ? "session"
							  : sched_format_duration((uint64_t)sb->timeout_ms, dur, sizeof(dur)),
		      "stop_at_ms", sb->stop_at_ms ? json_integer(sb->stop_at_ms) : json_null(),
		      "stop_at", time_json((uint64_t)sb->stop_at_ms), "created_ms", (json_int_t)sb->created_ms,
		      "created", time_json((uint64_t)sb->created_ms),
		      "ended_ms", sb->ended_ms ? json_integer(sb->ended_ms) : json_null(),
		      "end_reason", sb->end_reason ? json_string(reg_end_name(sb->end_reason)) : json_null(),
		      "labels", labels, "session_holders", json_integer(s ? s->holders : 0),
		      "usage", "cpu_seconds", (double)cpu / 1e9, "memory_gib_seconds", (double)mem / 1024.0 / 1000.0);
	/* Volumes while it holds them (an ended sandbox has let go). */
	if (o) {
		json_object_set_new(o, "volumes", kd_sbx_vols_json(sb));
		json_object_set_new(o, "network", json_boolean(sb->net));
	}
	return o;
}

json_t *kd_sbx_json(struct kilnd *kd, const char *id, struct kiln_err *err, int *status)
{
	struct reg_sandbox sb;
	int r;

	if ((r = reg_sandbox_id_check(id, err))) {
		*status = 400;
		return NULL;
	}
	pthread_mutex_lock(&kd->reg_lock);
	r = reg_sandbox_get(kd->reg, id, &sb, err);
	pthread_mutex_unlock(&kd->reg_lock);
	if (r) {
		if (r == -ENOENT)
			kiln_fail(err, ENOENT, "no sandbox %s on this node (kiln ls --all lists them)", id);
		*status = kd_errno_status(r);
		return NULL;
	}
	json_t *o = row_json(kd, &sb);
	char *allow = NULL;

	/* Its allow_net, as recorded (what its egress proxy and resolver let through). */
	pthread_mutex_lock(&kd->reg_lock);
	r = reg_sandbox_allow_net(kd->reg, id, &allow, NULL);
	pthread_mutex_unlock(&kd->reg_lock);
	if (o && !r)
		json_object_set_new(o, "allow_net", json_loads(allow, 0, NULL) ?: json_array());
	free(allow);
	allow = NULL;
	/* Its secrets: names, hosts and placeholders; never a value (the registry holds them sealed). */
	pthread_mutex_lock(&kd->reg_lock);
	r = reg_sandbox_secrets(kd->reg, id, &allow, NULL);
	pthread_mutex_unlock(&kd->reg_lock);
	if (o && !r)
		json_object_set_new(o, "secrets", kd_secrets_public(allow));
	free(allow);
	return o;
}

static int sbx_get(struct kilnd *kd, const char *id, json_t **body)
{
	struct kiln_err err;
	int st;

	*body = kd_sbx_json(kd, id, &err, &st);
	return *body ? 200 : fail(body, st, "%s", err.msg);
}

static int sbx_create(struct kilnd *kd, const struct kd_req *r, json_t **body)
{
	struct sched_spec spec;
	struct kiln_err err;
	struct kd_sbx *s;
	int ret;

	ret = sched_spec_from_json(r->body ? r->body : "", r->body_len, &spec, &err);
	if (ret)
		return fail_err(body, ret, &err);
	if (spec.vcpus > sched_vcpus_limit(&kd->conf.host)) {
		ret = sched_admit(&kd->admit, &kd->conf.host, spec.memory_mb, spec.vcpus, &err);
		sched_spec_free(&spec);
		return fail_err(body, ret ? ret : -EINVAL, &err);
	}
	ret = kd_sbx_create(kd, &spec, r->wsi, &s, &err);
	sched_spec_free(&spec);
	if (ret)
		return fail_err(body, ret, &err);
	return 0;	/* kd_create_done answers */
}

/* ?label=K=V (repeatable) and ?state=all|running|... */
static int list_args(struct lws *wsi, struct reg_label *f, size_t *nf, unsigned *mask, json_t **body)
{
	char arg[256];
	struct kiln_err err;

	*nf = 0;
	*mask = REG_LIVE;
	for (int i = 0; i < 32; i++) {
		int n = lws_hdr_copy_fragment(wsi, arg, sizeof(arg), WSI_TOKEN_HTTP_URI_ARGS, i);
		char *eq, *v;

		if (n < 0)
			break;
		if (!strncmp(arg, "label=", 6)) {
			eq = strchr(arg + 6, '=');
			if (!eq)
				return fail(body, 400, "label filter \"%.64s\" is not K=V", arg + 6);
			*eq = '\0';
			v = eq + 1;
			if (sched_label_check(arg + 6, strlen(arg + 6), v, strlen(v), &err))
				return fail(body, 400, "%s", err.msg);
			if (*nf == REG_LABELS_MAX)
				return fail(body, 400, "more than %d label filters", REG_LABELS_MAX);
			snprintf(f[*nf].key, sizeof(f[*nf].key), "%.63s", arg + 6);
			snprintf(f[*nf].value, sizeof(f[*nf].value), "%.128s", v);
			(*nf)++;
		} else if (!strcmp(arg, "state=all")) {
			*mask = 0;
		} else if (!strncmp(arg, "state=", 6)) {
			unsigned s;

			for (s = 0; s < REG_STATE_COUNT; s++)
				if (!strcmp(arg + 6, reg_state_name(s)))
					break;
			if (s == REG_STATE_COUNT)
				return fail(body, 400, "state \"%.32s\" is not one of all, creating, running, stopping, "
					    "stopped, failed", arg + 6);
			*mask = REG_MASK(s);
		} else if (strncmp(arg, "after=", 6)) {
			return fail(body, 400, "unknown query argument \"%.64s\"; list takes label=K=V and state=", arg);
		}
	}
	return 0;
}

static int sbx_list(struct kilnd *kd, const struct kd_req *r, json_t **body)
{
	struct reg_label f[REG_LABELS_MAX];
	struct reg_sandbox *rows = NULL;
	struct kiln_err err;
	unsigned mask;
	size_t nf, n = 0;
	json_t *a;
	int ret;

	if ((ret = list_args(r->wsi, f, &nf, &mask, body)))
		return ret;
	pthread_mutex_lock(&kd->reg_lock);
	ret = reg_sandbox_list(kd->reg, mask, f, nf, &rows, &n, &err);
	pthread_mutex_unlock(&kd->reg_lock);
	if (ret)
		return fail_err(body, ret, &err);
	a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, row_json(kd, &rows[i]));
	free(rows);
	*body = json_pack("{s:o}", "sandboxes", a);
	return 200;
}

static int sbx_kill(struct kilnd *kd, const char *id, json_t **body)
{
	struct kd_sbx *s = kd_sbx_find(kd, id);
	struct kiln_err err;

	if (!s) {
		int st;
		json_t *o = kd_sbx_json(kd, id, &err, &st);

		if (!o)
			return fail(body, st, "%s", err.msg);
		json_decref(o);
		return fail(body, 409, "sandbox %s has already ended", id);
	}
	if (s->state == REG_CREATING) {
		s->kill_asked = 1;
		return sbx_get(kd, id, body);
	}
	kd_sbx_end(kd, s, REG_END_KILLED, "killed through the API");
	return sbx_get(kd, id, body);
}

static int sbx_extend(struct kilnd *kd, const struct kd_req *r, const char *id, json_t **body)
{
	struct kd_sbx *s = kd_sbx_find(kd, id);
	uint64_t now = kd_now_ms();
	struct kiln_err err = { { 0 } };
	json_error_t je;
	json_t *in, *v;
	const char *k;
	int ret = -EINVAL, capped = 0;

	if (!s || s->state != REG_RUNNING) {
		int st = sbx_get(kd, id, body);

		if (st != 200)
			return st;
		json_decref(*body);
		return fail(body, 409, "sandbox %s is %s: only a running sandbox can be extended", id,
			    s ? "still being created" : "over");
	}
	in = json_loadb(r->body ? r->body : "", r->body_len, JSON_REJECT_DUPLICATES, &je);
	if (!in || !json_is_object(in)) {
		json_decref(in);
		return fail(body, 400, "an extend takes a JSON object: {\"timeout\": \"10m\"} or {\"stop_at_ms\": N}");
	}
	json_object_foreach(in, k, v) {
		if (strcmp(k, "timeout") && strcmp(k, "stop_at_ms")) {
			json_decref(in);
			return fail(body, 400, "unknown field \"%.32s\"; an extend takes timeout or stop_at_ms", k);
		}
	}
	if (json_object_size(in) != 1) {
		json_decref(in);
		return fail(body, 400, "an extend takes exactly one of timeout and stop_at_ms");
	}
	if ((v = json_object_get(in, "timeout"))) {
		uint64_t ms;

		if (!json_is_string(v))
			ret = kiln_fail(&err, EINVAL, "timeout must be a duration string such as \"10m\"");
		else if (!(ret = sched_parse_duration(json_string_value(v), &ms, &err)))
			ret = sched_life_extend_by(&s->life, ms, now, &err);
	} else {
		v = json_object_get(in, "stop_at_ms");
		if (!json_is_integer(v) || json_integer_value(v) <= 0)
			ret = kiln_fail(&err, EINVAL, "stop_at_ms must be a positive integer (ms since the epoch)");
		else
			ret = sched_life_extend_to(&s->life, (uint64_t)json_integer_value(v), now, &err);
	}
	json_decref(in);
	if (ret < 0)
		return fail_err(body, ret, &err);
	capped = ret == SCHED_EXTEND_CAPPED;
	pthread_mutex_lock(&kd->reg_lock);
	ret = reg_sandbox_set_stop_at(kd->reg, id, (int64_t)s->life.stop_at_ms, (int64_t)now, capped ? NULL : &err);
	pthread_mutex_unlock(&kd->reg_lock);
	if (ret)
		return fail_err(body, ret, &err);
	ret = sbx_get(kd, id, body);
	if (capped && ret == 200)
		json_object_set_new(*body, "message", json_string(err.msg));
	return ret;
}

static int sbx_events(struct kilnd *kd, const struct kd_req *r, const char *id, json_t **body)
{
	struct reg_event *ev = NULL;
	struct kiln_err err;
	size_t n = 0;
	int64_t after = 0;
	char arg[64];
	const char *val;
	json_t *a;
	int ret;

	if ((ret = sbx_get(kd, id, body)) != 200)
		return ret;
	json_decref(*body);
	/* lws answers a pointer just past "after=" inside arg (the buffer holds the name too). */
	if ((val = lws_get_urlarg_by_name(r->wsi, "after=", arg, sizeof(arg)))) {
		char *end;

		errno = 0;
		after = strtoll(val, &end, 10);
		if (errno || *end || after < 0)
			return fail(body, 400, "after \"%.32s\" is not an event sequence number", val);
	}
	pthread_mutex_lock(&kd->reg_lock);
	ret = reg_event_list(kd->reg, id, after, 10000, &ev, &n, &err);
	pthread_mutex_unlock(&kd->reg_lock);
	if (ret)
		return fail_err(body, ret, &err);
	a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, json_pack("{s:I, s:I, s:o, s:s, s:s}", "seq", (json_int_t)ev[i].seq, "at_ms",
						   (json_int_t)ev[i].at_ms, "at", time_json((uint64_t)ev[i].at_ms),
						   "kind", ev[i].kind, "detail", ev[i].detail));
	free(ev);
	*body = json_pack("{s:o}", "events", a);
	return 200;
}

static int node_info(struct kilnd *kd, json_t **body)
{
	const struct sched_host *h = &kd->conf.host;
	struct statvfs sv;
	json_int_t disk_free = statvfs(kd->conf.state_dir, &sv) ? -1 : (json_int_t)((uint64_t)sv.f_bavail * sv.f_frsize);

	*body = json_pack("{s:I, s:I, s:I, s:I, s:I, s:i, s:i, s:i, s:s, s:s, s:s, s:o, s:I, s:I, s:I}", "memory_total_mb",
			  (json_int_t)h->mem_total_mb, "reserve_mb", (json_int_t)h->reserve_mb, "capacity_mb",
			  (json_int_t)sched_capacity_mb(h), "committed_mb", (json_int_t)kd->admit.mem_mb, "free_mb",
			  (json_int_t)sched_free_mb(&kd->admit, h), "cpus", (int)h->cpus, "vcpus_limit",
			  (int)sched_vcpus_limit(h), "sandboxes", (int)kd->admit.sandboxes, "kernel_sha256",
			  kd->kernel_sha, "initramfs_sha256", kd->initrd_sha, "default_image", kd->conf.default_image,
			  "images", kd_images_json(kd), "layer_bytes", (json_int_t)kd->conf.layer_bytes, "disk_free_bytes",
			  disk_free, "min_free_bytes", (json_int_t)kd->conf.min_free_bytes);
	if (*body) {
		json_object_set_new(*body, "network", json_boolean(kd->net_ok));
		if (!kd->net_ok)
			json_object_set_new(*body, "network_why", json_string(kd->net_why));
	}
	return 200;
}

static int tokens(struct kilnd *kd, const struct kd_req *r, const char *rest, json_t **body)
{
	struct kiln_err err;
	int ret;

	if (!r->is_unix)
		return fail(body, 403, "tokens are managed over kilnd's unix socket: run `kiln token` on the node");
	pthread_mutex_lock(&kd->reg_lock);
	if (!*rest && r->method == LWSHUMETH_POST) {
		char tok[REG_TOKEN_MAX], id[REG_TOKEN_ID_MAX];

		ret = reg_token_create(kd->reg, (int64_t)kd_now_ms(), tok, id, &err);
		if (!ret)
			*body = json_pack("{s:s, s:s}", "id", id, "token", tok);
		ret = ret ? fail_err(body, ret, &err) : 201;
	} else if (!*rest && r->method == LWSHUMETH_GET) {
		struct reg_token *t = NULL;
		size_t n = 0;

		ret = reg_token_list(kd->reg, &t, &n, &err);
		if (!ret) {
			json_t *a = json_array();

			for (size_t i = 0; i < n; i++)
				json_array_append_new(a, json_pack("{s:s, s:I, s:o, s:o}", "id", t[i].id, "created_ms",
								   (json_int_t)t[i].created_ms, "last_used_ms",
								   t[i].last_used_ms ? json_integer(t[i].last_used_ms) : json_null(),
								   "revoked_ms",
								   t[i].revoked_ms ? json_integer(t[i].revoked_ms) : json_null()));
			*body = json_pack("{s:o}", "tokens", a);
		}
		free(t);
		ret = ret ? fail_err(body, ret, &err) : 200;
	} else if (rest[0] == '/' && r->method == LWSHUMETH_DELETE) {
		ret = reg_token_revoke(kd->reg, rest + 1, (int64_t)kd_now_ms(), &err);
		ret = ret ? fail_err(body, ret, &err) : (*body = json_pack("{s:s, s:b}", "id", rest + 1, "revoked", 1), 200);
	} else {
		ret = fail(body, 405, "tokens: POST /v1/tokens, GET /v1/tokens, DELETE /v1/tokens/ID");
	}
	pthread_mutex_unlock(&kd->reg_lock);
	return ret;
}

static json_t *template_json(struct kilnd *kd, const struct reg_template *t)
{
	int current = !strcmp(t->kernel_sha256, kd->kernel_sha) && !strcmp(t->initramfs_sha256, kd->initrd_sha);

	return json_pack("{s:s, s:i, s:i, s:I, s:o, s:b}", "image", t->image, "memory_mb", (int)t->memory_mb, "vcpus",
			 (int)t->vcpus, "created_ms", (json_int_t)t->created_ms, "created",
			 time_json((uint64_t)t->created_ms), "current", current);
}

static int templates(struct kilnd *kd, const struct kd_req *r, const char *rest, json_t **body)
{
	struct kiln_err err;
	int ret;

	if (!*rest && r->method == LWSHUMETH_GET) {
		struct reg_template *t = NULL;
		size_t n = 0;
		json_t *a;

		pthread_mutex_lock(&kd->reg_lock);
		ret = reg_template_list(kd->reg, &t, &n, &err);
		pthread_mutex_unlock(&kd->reg_lock);
		if (ret)
			return fail_err(body, ret, &err);
		a = json_array();
		for (size_t i = 0; i < n; i++)
			json_array_append_new(a, template_json(kd, &t[i]));
		free(t);
		*body = json_pack("{s:o}", "templates", a);
		return 200;
	}
	if (!*rest && r->method == LWSHUMETH_POST) {
		struct sched_spec spec;
		struct kd_job *j;

		ret = sched_spec_from_json(r->body ? r->body : "", r->body_len, &spec, &err);
		if (ret)
			return fail_err(body, ret, &err);
		j = kd_job_new();
		if (!j) {
			sched_spec_free(&spec);
			return fail(body, 500, "out of memory");
		}
		j->kind = KD_JOB_TEMPLATE;
		if ((ret = kd_image_lookup(kd, spec.image, &j->image, &err))) {
			sched_spec_free(&spec);
			free(j);
			return fail_err(body, ret, &err);
		}
		j->memory_mb = spec.memory_mb;
		j->vcpus = spec.vcpus;
		j->wsi = r->wsi;
		sched_spec_free(&spec);
		if ((ret = kd_job_start(kd, j, &err))) {
			free(j);
			return fail_err(body, ret, &err);
		}
		return 0;
	}
	if (rest[0] == '/' && r->method == LWSHUMETH_DELETE) {
		char image[REG_IMAGE_MAX];
		unsigned mem, vcpus;
		int used = 0;

		if (sscanf(rest, "/%64[a-z0-9._-]/%u/%u%n", image, &mem, &vcpus, &used) != 3 || rest[used])
			return fail(body, 400, "DELETE /v1/templates/IMAGE/MEMORY_MB/VCPUS, e.g. /v1/templates/debian/1280/2");
		ret = kd_template_remove(kd, image, mem, vcpus, &err);
		if (ret)
			return fail_err(body, ret, &err);
		*body = json_pack("{s:b}", "deleted", 1);
		return 200;
	}
	return fail(body, 405, "templates: GET or POST /v1/templates, DELETE /v1/templates/IMAGE/MEMORY_MB/VCPUS");
}

void kd_template_done(struct kilnd *kd, struct kd_job *j)
{
	struct reg_template t;
	struct kiln_err err;

	if (!j->wsi)
		return;
	if (j->ret) {
		kd_http_reply(j->wsi, kd_errno_status(j->ret), kd_err_json(kd_errno_status(j->ret), j->err.msg));
		return;
	}
	pthread_mutex_lock(&kd->reg_lock);
	int r = reg_template_get(kd->reg, j->image->name, j->memory_mb, j->vcpus, &t, &err);
	pthread_mutex_unlock(&kd->reg_lock);
	if (r)
		kd_http_reply(j->wsi, 500, kd_err_json(500, err.msg));
	else
		kd_http_reply(j->wsi, j->built ? 201 : 200, template_json(kd, &t));
}

int kd_api_route(struct kilnd *kd, const struct kd_req *r, json_t **body, char **text)
{
	const char *p = r->path, *rest;
	int m = r->method;

	if (!strcmp(p, "/metrics")) {
		if (m != LWSHUMETH_GET)
			return fail(body, 405, "/metrics takes GET");
		*text = kd_metrics_text(kd);
		return *text ? 200 : fail(body, 500, "out of memory");
	}
	if (!strncmp(p, "/api/", 5))
		return kd_deno_route(kd, r, body);
	if (!strcmp(p, "/v1/node"))
		return m == LWSHUMETH_GET ? node_info(kd, body) : fail(body, 405, "/v1/node takes GET");
	if (!strncmp(p, "/v1/volumes", 11) && (!p[11] || p[11] == '/'))
		return kd_volumes_route(kd, r, p + 11, body);
	if (!strcmp(p, "/v1/images")) {
		if (m != LWSHUMETH_GET)
			return fail(body, 405, "/v1/images takes GET (images are given to kilnd with --image NAME=PATH, "
				    "or made with POST /v1/volumes/NAME/snapshot)");
		*body = json_pack("{s:o}", "images", kd_images_json(kd));
		return 200;
	}
	if (!strncmp(p, "/v1/images/", 11)) {
		const struct kd_image *img = kd_image_find(kd, p + 11);
		struct kiln_err err;
		int ret;

		if (m == LWSHUMETH_GET)
			return img ? (*body = kd_image_json(kd, img), 200)
				   : fail(body, 404, "no image %.64s on this node (kiln image ls lists them)", p + 11);
		if (m != LWSHUMETH_DELETE)
			return fail(body, 405, "/v1/images/NAME takes GET or DELETE");
		if ((ret = kd_image_remove(kd, p + 11, &err)))
			return fail_err(body, ret, &err);
		*body = json_pack("{s:s, s:b}", "name", p + 11, "deleted", 1);
		return 200;
	}
	if (!strncmp(p, TOK_PREFIX, strlen(TOK_PREFIX)) && (!p[strlen(TOK_PREFIX)] || p[strlen(TOK_PREFIX)] == '/'))
		return tokens(kd, r, p + strlen(TOK_PREFIX), body);
	if (!strncmp(p, TMPL_PREFIX, strlen(TMPL_PREFIX)) && (!p[strlen(TMPL_PREFIX)] || p[strlen(TMPL_PREFIX)] == '/'))
		return templates(kd, r, p + strlen(TMPL_PREFIX), body);
	if (strncmp(p, SBX_PREFIX, strlen(SBX_PREFIX)))
		return fail(body, 404, "no such path %.64s: kilnd serves /v1/sandboxes, /v1/node, /v1/images, "
			    "/v1/volumes, /v1/tokens, /v1/templates and /metrics (docs/kilnd.md)", p);
	rest = p + strlen(SBX_PREFIX);
	if (!*rest || !strcmp(rest, "/")) {
		if (m == LWSHUMETH_POST)
			return sbx_create(kd, r, body);
		if (m == LWSHUMETH_GET)
			return sbx_list(kd, r, body);
		return fail(body, 405, "/v1/sandboxes takes GET (list) or POST (create)");
	}
	if (rest[0] != '/')
		return fail(body, 404, "no such path %.64s", p);
	char id[REG_ID_MAX + 1];
	const char *slash = strchr(rest + 1, '/');
	size_t idlen = slash ? (size_t)(slash - rest - 1) : strlen(rest + 1);
	struct kiln_err err;

	if (idlen > REG_ID_LEN) {
		kiln_fail(&err, EINVAL, "sandbox id is %zu bytes; ids are sbx_, 3 letters, _ and 20 base32", idlen);
		return fail(body, 400, "%s", err.msg);
	}
	memcpy(id, rest + 1, idlen);
	id[idlen] = '\0';
	if (reg_sandbox_id_check(id, &err))
		return fail(body, 400, "%s", err.msg);
	if (!slash) {
		if (m == LWSHUMETH_GET)
			return sbx_get(kd, id, body);
		if (m == LWSHUMETH_DELETE)
			return sbx_kill(kd, id, body);
		return fail(body, 405, "/v1/sandboxes/ID takes GET (info) or DELETE (kill)");
	}
	if (!strcmp(slash, "/extend"))
		return m == LWSHUMETH_POST ? sbx_extend(kd, r, id, body) : fail(body, 405, "extend takes POST");
	if (!strcmp(slash, "/events"))
		return m == LWSHUMETH_GET ? sbx_events(kd, r, id, body) : fail(body, 405, "events takes GET");
	if (!strcmp(slash, "/agent"))
		return fail(body, 400, "/v1/sandboxes/ID/agent is a WebSocket: upgrade with protocol kiln-agent.v1");
	return fail(body, 404, "no such path %.64s", p);
}
