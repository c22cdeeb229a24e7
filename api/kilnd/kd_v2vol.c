/*
 * The Deno console's volume and snapshot API (shared/deno-sandbox-protocol.md
 * §6.4, §6.5) on kiln's own: a Deno volume is a kiln volume whose slug is its
 * name (and its id), a Deno snapshot is the disk image kiln makes of a
 * volume, which `root` then boots. The requests are translated into /v1's
 * and go through kd_volumes_route, so every check and limit is kiln's; the
 * answers are translated back, also for the creates that finish on a worker
 * (kd_volume_done, with kd_req.deno set).
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kilnd.h"

json_t *kd_v2_volume_json(const struct kilnd *kd, const json_t *v)
{
	const char *name = json_string_value(json_object_get(v, "name"));
	json_int_t size = json_integer_value(json_object_get(v, "size_bytes"));

	return json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:b, s:n}", "id", name ? name : "", "slug", name ? name : "",
			 "region", kd->conf.region, "capacity", size, "estimated_allocated_size", size,
			 "estimated_flattened_size", size, "is_bootable", 0, "base_snapshot");
}

json_t *kd_v2_snapshot_json(const struct kilnd *kd, const json_t *img)
{
	const char *name = json_string_value(json_object_get(img, "name"));
	json_int_t size = json_integer_value(json_object_get(img, "size_bytes"));

	/* kiln keeps no link from an image back to the volume it was made of. */
	return json_pack("{s:s, s:s, s:s, s:I, s:I, s:b, s:n}", "id", name ? name : "", "slug", name ? name : "",
			 "region", kd->conf.region, "allocated_size", size, "flattened_size", size, "is_bootable", 1,
			 "volume");
}

/* A Deno capacity: bytes, or a number with GB/MB/kB (decimal) or GiB/MiB/KiB (binary). 0 if it is none. */
static uint64_t capacity_of(const json_t *c)
{
	static const struct {
		const char *unit;
		uint64_t mul;
	} units[] = { { "GiB", 1ull << 30 }, { "MiB", 1ull << 20 }, { "KiB", 1ull << 10 },
		      { "GB", 1000000000ull }, { "MB", 1000000ull }, { "kB", 1000ull } };
	const char *s = json_string_value(c);
	char *end;
	double v;

	if (json_is_integer(c))
		return json_integer_value(c) > 0 ? (uint64_t)json_integer_value(c) : 0;
	if (!s || !isdigit((unsigned char)*s))
		return 0;
	v = strtod(s, &end);
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		if (!strcmp(end, units[i].unit))
			return v > 0 && v < 1e15 ? (uint64_t)(v * (double)units[i].mul) : 0;
	return 0;
}

/* A copy of r with another body, answered in the Deno shape when it finishes on a worker. */
static int route_as(struct kilnd *kd, const struct kd_req *r, const char *rest, json_t *in, json_t **body)
{
	struct kd_req r2 = *r;
	char *text = in ? json_dumps(in, JSON_COMPACT) : NULL;
	int st;

	r2.deno = 1;
	r2.body = text;
	r2.body_len = text ? strlen(text) : 0;
	st = kd_volumes_route(kd, &r2, rest, body);
	free(text);
	return st;
}

static int volumes(struct kilnd *kd, const struct kd_req *r, const char *rest, json_t **body)
{
	json_t *in = NULL, *out = NULL, *e;
	char buf[128];
	const char *search = NULL;
	size_t i;
	int st;

	if (!*rest && r->method == LWSHUMETH_GET) {
		/* lws gives back a pointer to the value within buf. */
		search = lws_get_urlarg_by_name(r->wsi, "search=", buf, sizeof(buf));
		st = kd_volumes_route(kd, r, "", &out);
		if (st != 200) {
			*body = out;
			return st;
		}
		*body = json_array();
		json_array_foreach(json_object_get(out, "volumes"), i, e)
			if (!search || !*search || strstr(json_string_value(json_object_get(e, "name")), search))
				json_array_append_new(*body, kd_v2_volume_json(kd, e));
		json_decref(out);
		return 200;
	}
	if (!*rest && r->method == LWSHUMETH_POST) {
		json_error_t je;
		json_t *d = json_loadb(r->body ? r->body : "", r->body_len, 0, &je), *from;
		const char *slug = json_string_value(json_object_get(d, "slug"));
		uint64_t bytes = capacity_of(json_object_get(d, "capacity"));

		if (!slug || !bytes) {
			json_decref(d);
			return kd_deno_fail(body, 400, "INVALID_VOLUME", "a volume takes a slug and a capacity (bytes, or a size "
				      "such as \"10GB\" or \"512MiB\")");
		}
		/* Deno's token, org and apiEndpoint ride in this body too: they are left out here. */
		in = json_pack("{s:s, s:I}", "name", slug, "size", (json_int_t)bytes);
		from = json_object_get(d, "from");
		if (json_is_string(from))
			json_object_set_new(in, "from", json_string(!strncmp(json_string_value(from), "builtin:debian", 14)
								    ? "debian" : json_string_value(from)));
		json_decref(d);
		st = route_as(kd, r, "", in, body);
		json_decref(in);
		return st;
	}
	if (rest[0] != '/')
		return kd_deno_fail(body, 404, "NOT_FOUND", "no such volume path");
	if (r->method == LWSHUMETH_GET || r->method == LWSHUMETH_DELETE) {
		st = kd_volumes_route(kd, r, rest, &out);
		if (st == 200)
			*body = r->method == LWSHUMETH_GET ? kd_v2_volume_json(kd, out) : json_object();
		else
			*body = json_incref(out);
		json_decref(out);
		return st;
	}
	if (r->method == LWSHUMETH_POST && strlen(rest) > 9 && !strcmp(rest + strlen(rest) - 9, "/snapshot")) {
		json_error_t je;
		json_t *d = json_loadb(r->body ? r->body : "", r->body_len, 0, &je);
		const char *slug = json_string_value(json_object_get(d, "slug"));

		if (!slug) {
			json_decref(d);
			return kd_deno_fail(body, 400, "INVALID_SNAPSHOT", "a snapshot takes a slug");
		}
		in = json_pack("{s:s}", "image", slug);
		json_decref(d);
		st = route_as(kd, r, rest, in, body);
		json_decref(in);
		return st;
	}
	return kd_deno_fail(body, 405, "METHOD_NOT_ALLOWED", "volumes: GET or POST /api/v2/volumes; GET or DELETE "
		      "/api/v2/volumes/ID; POST /api/v2/volumes/ID/snapshot");
}

static int snapshots(struct kilnd *kd, const struct kd_req *r, const char *rest, json_t **body)
{
	const struct kd_image *img;
	struct kiln_err err;

	if (!*rest && r->method == LWSHUMETH_GET) {
		*body = json_array();
		for (unsigned i = 0; i < kd->conf.nimages; i++)
			if (kd->conf.images[i].snapshot && !kd->conf.images[i].removed) {
				json_t *j = kd_image_json(kd, &kd->conf.images[i]);

				json_array_append_new(*body, kd_v2_snapshot_json(kd, j));
				json_decref(j);
			}
		return 200;
	}
	if (rest[0] != '/' || !rest[1])
		return kd_deno_fail(body, 404, "NOT_FOUND", "no such snapshot path");
	img = kd_image_find(kd, rest + 1);
	if (!img || !img->snapshot || img->removed)
		return kd_deno_fail(body, 404, "SNAPSHOT_NOT_FOUND", "no snapshot of that id or slug on this node");
	if (r->method == LWSHUMETH_GET) {
		json_t *j = kd_image_json(kd, img);

		*body = kd_v2_snapshot_json(kd, j);
		json_decref(j);
		return 200;
	}
	if (r->method == LWSHUMETH_DELETE) {
		int st = kd_image_remove(kd, rest + 1, &err);

		if (st)
			return kd_deno_fail(body, kd_errno_status(st), st == -EBUSY ? "SNAPSHOT_IN_USE" : "INVALID_SNAPSHOT",
				      "%s", err.msg);
		*body = json_object();
		return 200;
	}
	return kd_deno_fail(body, 405, "METHOD_NOT_ALLOWED", "snapshots: GET /api/v2/snapshots[/ID], DELETE /api/v2/snapshots/ID");
}

int kd_v2_volumes_route(struct kilnd *kd, const struct kd_req *r, json_t **body)
{
	if (!strncmp(r->path, "/api/v2/volumes", 15) && (!r->path[15] || r->path[15] == '/'))
		return volumes(kd, r, r->path + 15, body);
	if (!strncmp(r->path, "/api/v2/snapshots", 17) && (!r->path[17] || r->path[17] == '/'))
		return snapshots(kd, r, r->path + 17, body);
	return kd_deno_fail(body, 404, "NOT_FOUND", "no such path");
}
