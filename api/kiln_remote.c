/*
 * The kiln CLI's REST verbs against kilnd (docs/kilnd.md, /v1): create, ls,
 * info, extend, kill, events, metrics, node, token and template. Data goes
 * to stdout (--json: kilnd's object as it came), messages to stderr as
 * "kiln: <kilnd's message>". Exit 0, 1 when kilnd refused (4xx/5xx), 2 on
 * bad usage, 125 when kilnd could not be reached or answered nonsense.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "err.h"
#include "kiln_cli.h"
#include "kiln_remote.h"

/* What a verb's options say. */
struct ropts {
	struct kr_endpoint ep;
	const char *verb;
	int json, all, uds;
	int timeout_ms;			/* --request-timeout; 0: the verb's default */
	json_t *labels, *env;		/* --label, --env: objects, or NULL */
	long long memory, vcpus;	/* -1: not given */
	const char *image;		/* create, template build: --image */
	json_t *volumes;		/* create: --volume PATH=NAME[:ro], an object */
	json_t *allow;			/* create: --allow-net HOST, an array */
	json_t *secrets;		/* create: --secret NAME=HOSTS:VALUE, an object */
	const char *from;		/* volume create: --from IMAGE */
	const char *timeout;		/* create: the sandbox's lifetime */
	const char *to;			/* extend --to MS */
};

enum { RO_JSON = 1, RO_LABEL = 2, RO_ALL = 4, RO_ENV = 8, RO_MEMORY = 16, RO_VCPUS = 32, RO_TIMEOUT = 64,
       RO_TO = 128, RO_AGENT = 256, RO_IMAGE = 512, RO_VOLUME = 1024, RO_FROM = 2048,
       RO_ALLOW = 4096, RO_SECRET = 8192 };

enum { O_ENDPOINT = 300, O_JSON, O_LABEL, O_ALL, O_ENV, O_MEMORY, O_VCPUS, O_TIMEOUT, O_TO, O_REQ_TIMEOUT,
       O_UDS, O_CONNECT_TIMEOUT, O_AGENT_TIMEOUT, O_IMAGE, O_VOLUME, O_FROM, O_ALLOW, O_SECRET };

static const struct option ropt_table[] = {
	{ "endpoint", required_argument, NULL, O_ENDPOINT },
	{ "json", no_argument, NULL, O_JSON },
	{ "label", required_argument, NULL, O_LABEL },
	{ "all", no_argument, NULL, O_ALL },
	{ "env", required_argument, NULL, O_ENV },
	{ "memory", required_argument, NULL, O_MEMORY },
	{ "vcpus", required_argument, NULL, O_VCPUS },
	{ "timeout", required_argument, NULL, O_TIMEOUT },
	{ "to", required_argument, NULL, O_TO },
	{ "request-timeout", required_argument, NULL, O_REQ_TIMEOUT },
	/* kiln ls DIR's, so that `kiln ls` can tell the two apart */
	{ "uds", required_argument, NULL, O_UDS },
	{ "connect-timeout", required_argument, NULL, O_CONNECT_TIMEOUT },
	{ "agent-timeout", required_argument, NULL, O_AGENT_TIMEOUT },
	{ "image", required_argument, NULL, O_IMAGE },
	{ "volume", required_argument, NULL, O_VOLUME },
	{ "from", required_argument, NULL, O_FROM },
	{ "allow-net", required_argument, NULL, O_ALLOW },
	{ "secret", required_argument, NULL, O_SECRET },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

/* Add KEY=VALUE to *obj (created on first use); a key given twice is a usage error. */
static void kv_add(json_t **obj, const char *opt, const char *kv)
{
	const char *eq = strchr(kv, '=');

	if (!eq || eq == kv)
		die_usage("--%s %s: expected KEY=VALUE", opt, kv);
	if (!*obj)
		*obj = json_object();
	json_t *v = json_string(eq + 1);
	if (!*obj || !v)
		die_usage("--%s %s: not UTF-8 text", opt, kv);
	char key[256];
	if ((size_t)(eq - kv) >= sizeof(key))
		die_usage("--%s %s: key longer than %zu bytes", opt, kv, sizeof(key) - 1);
	memcpy(key, kv, (size_t)(eq - kv));
	key[eq - kv] = '\0';
	if (json_object_get(*obj, key))
		die_usage("--%s %s: key %s given twice", opt, kv, key);
	if (json_object_set_new(*obj, key, v))
		die_usage("--%s %s: not UTF-8 text", opt, kv);
}

/* --volume /PATH=NAME[:ro]: kilnd checks the path and name; here only the shape. */
static void volume_add(struct ropts *o, const char *arg)
{
	const char *eq = strchr(arg, '=');
	char path[300], name[80];
	size_t n;
	int ro = 0;

	if (!eq || arg[0] != '/' || (size_t)(eq - arg) >= sizeof(path) || strlen(eq + 1) >= sizeof(name) || !eq[1])
		die_usage("--volume %s: expected /PATH=NAME or /PATH=NAME:ro", arg);
	memcpy(path, arg, (size_t)(eq - arg));
	path[eq - arg] = '\0';
	snprintf(name, sizeof(name), "%s", eq + 1);
	n = strlen(name);
	if (n > 3 && !strcmp(name + n - 3, ":ro")) {
		name[n - 3] = '\0';
		ro = 1;
	}
	if (!o->volumes)
		o->volumes = json_object();
	if (json_object_get(o->volumes, path))
		die_usage("--volume %s: %s given twice", arg, path);
	if (json_object_set_new(o->volumes, path, ro ? json_pack("{s:s, s:b}", "volume", name, "readonly", 1)
						    : json_string(name)))
		die_usage("--volume %s: not UTF-8 text", arg);
}

static const char *endpoint_text(const char *opt)
{
	const char *env = getenv("KILN_ENDPOINT");

	return opt ? opt : env && *env ? env : KR_DEFAULT_ENDPOINT;
}

/*
 * --secret NAME=HOST[,HOST...]:VALUE. NAME ends at the first '='. The hosts
 * end at the first ':' that does not start a port: a port is digits followed
 * by ',' or ':', and a host takes at most one. VALUE is the rest, verbatim;
 * @env:VAR reads it from the environment instead, so it need not be in argv.
 * kilnd checks the name, hosts and value and says what is wrong.
 */
static void secret_add(struct ropts *o, const char *arg)
{
	const char *eq = strchr(arg, '='), *p, *value;
	json_t *hosts, *sec;
	char name[80];
	int had_port = 0;

	if (!eq || eq == arg || (size_t)(eq - arg) >= sizeof(name))
		die_usage("--secret: expected NAME=HOST[,HOST...]:VALUE (or :@env:VAR)");
	memcpy(name, arg, (size_t)(eq - arg));
	name[eq - arg] = '\0';
	for (p = eq + 1; *p; p++) {
		size_t d;

		if (*p == ',') {
			had_port = 0;
			continue;
		}
		if (*p != ':')
			continue;
		d = strspn(p + 1, "0123456789");
		if (!had_port && d && (p[1 + d] == ',' || p[1 + d] == ':')) {
			had_port = 1;
			p += d;
			continue;
		}
		break;
	}
	if (*p != ':' || p == eq + 1)
		die_usage("--secret %s: expected NAME=HOST[,HOST...]:VALUE (or :@env:VAR)", name);
	value = p + 1;
	if (!strncmp(value, "@env:", 5)) {
		const char *v = getenv(value + 5);

		if (!v)
			die_usage("--secret %s: environment variable %s is not set", name, value + 5);
		value = v;
	}
	if (!o->secrets)
		o->secrets = json_object();
	if (json_object_get(o->secrets, name))
		die_usage("--secret %s: given twice", name);
	hosts = json_array();
	{
		const char *h = eq + 1;

		while (h < p) {
			const char *c = memchr(h, ',', (size_t)(p - h));
			const char *end = c ? c : p;

			json_array_append_new(hosts, json_stringn(h, (size_t)(end - h)));
			h = end + 1;
		}
	}
	sec = json_pack("{s:o, s:s}", "hosts", hosts, "value", value);
	if (!sec || json_object_set_new(o->secrets, name, sec))
		die_usage("--secret %s: the value is not valid UTF-8", name);
}

/* Parse argv's options as the verb allows; returns the index of the first operand. */
static int ropts_parse(int argc, char **argv, struct ropts *o, unsigned allowed)
{
	static const unsigned need[] = {
		[O_JSON - O_ENDPOINT] = RO_JSON, [O_LABEL - O_ENDPOINT] = RO_LABEL, [O_ALL - O_ENDPOINT] = RO_ALL,
		[O_ENV - O_ENDPOINT] = RO_ENV, [O_MEMORY - O_ENDPOINT] = RO_MEMORY, [O_VCPUS - O_ENDPOINT] = RO_VCPUS,
		[O_TIMEOUT - O_ENDPOINT] = RO_TIMEOUT, [O_TO - O_ENDPOINT] = RO_TO, [O_UDS - O_ENDPOINT] = RO_AGENT,
		[O_CONNECT_TIMEOUT - O_ENDPOINT] = RO_AGENT, [O_AGENT_TIMEOUT - O_ENDPOINT] = RO_AGENT,
		[O_IMAGE - O_ENDPOINT] = RO_IMAGE, [O_VOLUME - O_ENDPOINT] = RO_VOLUME,
		[O_FROM - O_ENDPOINT] = RO_FROM, [O_ALLOW - O_ENDPOINT] = RO_ALLOW, [O_SECRET - O_ENDPOINT] = RO_SECRET,
	};
	const char *endpoint = NULL;
	struct kiln_err err;
	int c, li;

	memset(o, 0, sizeof(*o));
	o->verb = argv[0];
	o->memory = o->vcpus = -1;
	optind = 0;	/* 0: glibc starts afresh, ordering (+) included */
	/* Options may follow the operands (no guest command here to keep them for). */
	while ((c = getopt_long(argc, argv, "h", ropt_table, &li)) != -1) {
		if (c == 'h') {
			kiln_usage();
			exit(0);
		}
		if (c == '?')
			die_usage("%s: bad option", o->verb);
		if (c > O_ENDPOINT && c - O_ENDPOINT < (int)(sizeof(need) / sizeof(need[0])) &&
		    need[c - O_ENDPOINT] && !(allowed & need[c - O_ENDPOINT]))
			die_usage("%s: --%s does not apply", o->verb, ropt_table[li].name);
		switch (c) {
		case O_ENDPOINT: endpoint = optarg; break;
		case O_JSON: o->json = 1; break;
		case O_LABEL: kv_add(&o->labels, "label", optarg); break;
		case O_ALL: o->all = 1; break;
		case O_ENV: kv_add(&o->env, "env", optarg); break;
		case O_MEMORY: o->memory = (long long)parse_num(optarg, "--memory", 1, 1u << 30, 0); break;
		case O_VCPUS: o->vcpus = (long long)parse_num(optarg, "--vcpus", 1, 1u << 16, 0); break;
		case O_TIMEOUT:
			if (!*optarg || strlen(optarg) > 64)
				die_usage("--timeout %s: expected session or a duration like 30s, 5m, 1h", optarg);
			o->timeout = optarg;
			break;
		case O_TO: o->to = optarg; break;
		case O_VOLUME: volume_add(o, optarg); break;
		case O_FROM: o->from = optarg; break;
		case O_ALLOW:
			/* kilnd checks each entry and says what is wrong with it. */
			if (!o->allow)
				o->allow = json_array();
			if (!*optarg || json_array_append_new(o->allow, json_string(optarg)))
				die_usage("--allow-net %s: expected a host name, *.domain, IP address or CIDR range", optarg);
			break;
		case O_SECRET: secret_add(o, optarg); break;
		case O_IMAGE:
			if (!*optarg || strlen(optarg) > 64 ||
			    strspn(optarg, "abcdefghijklmnopqrstuvwxyz0123456789._-") != strlen(optarg))
				die_usage("--image %s: expected an image name (kiln image ls lists them)", optarg);
			o->image = optarg;
			break;
		case O_REQ_TIMEOUT:
			o->timeout_ms = (int)parse_num(optarg, "--request-timeout", 1, 2000000, 0) * 1000;
			break;
		case O_UDS: o->uds = 1; break;
		default: break;
		}
	}
	if (kr_endpoint_parse(&o->ep, endpoint_text(endpoint), &err) < 0)
		die_usage("%s", err.msg);
	return optind;
}

static void ropts_free(struct ropts *o)
{
	json_decref(o->volumes);
	json_decref(o->allow);
	json_decref(o->secrets);
	json_decref(o->labels);
	json_decref(o->env);
}

void kr_check_id(const char *s, const char *what)
{
	size_t n = strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-");

	if (!*s || s[n] || n > 128 || !strcmp(s, ".") || !strcmp(s, ".."))
		die_usage("%s %s: expected letters, digits and ._:- (at most 128), like sbx_loc_...", what, s);
}

/* ---- output -------------------------------------------------------------------- */

/* Text kilnd sent, printed as put_guest does (a hostile server must not drive our terminal). */
static void put_text(FILE *f, const char *s)
{
	int tty = isatty(fileno(f));

	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		fputc(tty && (ch < 0x20 || ch == 0x7f) ? '?' : ch == '\n' ? ' ' : ch, f);
	}
}

/* A column: s, then spaces up to width (and one more). */
static void put_col(const char *s, int width)
{
	int n = (int)strlen(s);

	put_text(stdout, s);
	printf("%*s", n < width ? width - n + 1 : 1, "");
}

static void print_json(const json_t *j)
{
	json_dumpf(j, stdout, isatty(1) ? JSON_INDENT(2) : JSON_COMPACT);
	putchar('\n');
}

/* A scalar as text into buf: strings as they are, null as "-". */
static const char *scalar(const json_t *v, char *buf, size_t cap)
{
	if (json_is_string(v))
		return json_string_value(v);
	if (json_is_integer(v))
		snprintf(buf, cap, "%lld", (long long)json_integer_value(v));
	else if (json_is_real(v))
		snprintf(buf, cap, "%g", json_real_value(v));
	else if (json_is_true(v))
		return "true";
	else if (json_is_false(v))
		return "false";
	else
		return "-";
	return buf;
}

/* Every leaf of j, one "key value" line each; nested keys as a.b, array items as a[0]. */
static void print_flat(const char *prefix, const json_t *j, int depth)
{
	const char *k;
	json_t *v;
	size_t i;
	char key[256], buf[64];

	if (depth > 8)
		return;
	if (json_is_object(j)) {
		json_object_foreach((json_t *)j, k, v) {
			snprintf(key, sizeof(key), "%s%s%s", prefix, *prefix ? "." : "", k);
			print_flat(key, v, depth + 1);
		}
	} else if (json_is_array(j)) {
		json_array_foreach(j, i, v) {
			snprintf(key, sizeof(key), "%s[%zu]", prefix, i);
			print_flat(key, v, depth + 1);
		}
	} else {
		put_col(prefix, 20);
		put_text(stdout, scalar(j, buf, sizeof(buf)));
		putchar('\n');
	}
}

/* K=V,K2=V2 of a labels object into buf. */
static const char *labels_text(const json_t *labels, char *buf, size_t cap)
{
	const char *k;
	json_t *v;
	size_t n = 0;

	buf[0] = '\0';
	json_object_foreach((json_t *)labels, k, v) {
		int w = snprintf(buf + n, cap - n, "%s%s=%s", n ? "," : "", k,
				 json_is_string(v) ? json_string_value(v) : "?");

		if (w < 0 || (size_t)w >= cap - n) {
			snprintf(buf + (cap > 4 ? cap - 4 : 0), cap > 4 ? 4 : cap, "...");
			break;
		}
		n += (size_t)w;
	}
	return n ? buf : "-";
}

/* Milliseconds since the epoch as ISO 8601 UTC, or "-". */
static const char *ms_text(const json_t *v, char *buf, size_t cap)
{
	struct tm tm;
	time_t s;

	/* Years 1970 to about 33658: anything else is no time kilnd meant. */
	if ((!json_is_integer(v) && !json_is_real(v)) || !(json_number_value(v) >= 0 && json_number_value(v) < 1e15))
		return "-";
	s = (time_t)(json_number_value(v) / 1000);
	if (!gmtime_r(&s, &tm) || !strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm))
		return "-";
	return buf;
}

/* ---- requests ----------------------------------------------------------------- */

/*
 * One request; on a 2xx with the JSON object or text the verb needs,
 * returns 0 with rep filled. Else says why on stderr and returns the exit
 * status: EXIT_FAIL when kilnd refused, EXIT_KILN when it was not reached.
 */
static int call(struct ropts *o, const char *method, const char *path, json_t *body, int slow, int need_json,
		struct kr_reply *rep)
{
	struct kiln_err err;
	const char *msg;
	int status;
	int timeout = o->timeout_ms ? o->timeout_ms : slow ? KR_SLOW_TIMEOUT_MS : KR_TIMEOUT_MS;

	if (kr_request(&o->ep, method, path, body, timeout, rep, &err) < 0) {
		fprintf(stderr, "%s: %s\n", prog, err.msg);
		return EXIT_KILN;
	}
	if (rep->status >= 200 && rep->status < 300) {
		if (!need_json || json_is_object(rep->json))
			return 0;
		fprintf(stderr, "%s: kilnd at %s answered %s %s with HTTP %d but no JSON object (is it kilnd?)\n",
			prog, o->ep.text, method, path, rep->status);
		kr_reply_free(rep);
		return EXIT_KILN;
	}
	status = rep->status;
	msg = json_string_value(json_object_get(rep->json, "message"));
	fprintf(stderr, "%s: ", prog);
	if (msg)
		put_text(stderr, msg);
	else
		fprintf(stderr, "kilnd at %s answered %s %s with HTTP %d", o->ep.text, method, path, status);
	fputc('\n', stderr);
	kr_reply_free(rep);
	return status >= 400 && status < 600 ? EXIT_FAIL : EXIT_KILN;
}

/* A request whose only output is the object (--json) or its leaves, or nothing (quiet). */
static int call_show(struct ropts *o, const char *method, const char *path, json_t *body, int slow, int quiet)
{
	struct kr_reply rep;
	int ret = call(o, method, path, body, slow, 1, &rep);

	if (ret)
		return ret;
	if (o->json)
		print_json(rep.json);
	else if (!quiet)
		print_flat("", rep.json, 0);
	kr_reply_free(&rep);
	return 0;
}

static void want_operands(struct ropts *o, int argc, int i, int n, const char *form)
{
	if (argc - i != n)
		die_usage("%s: expected %s", o->verb, form);
}

/* A listing: GET path, then --json's object, or a header and one row per item of key's array. */
static int call_list(struct ropts *o, const char *path, const char *key, const char *header,
		     void (*row)(const json_t *item))
{
	struct kr_reply rep;
	json_t *list, *item;
	size_t i;
	int ret = call(o, "GET", path, NULL, 0, 1, &rep);

	if (ret)
		return ret;
	list = json_object_get(rep.json, key);
	if (o->json) {
		print_json(rep.json);
	} else if (!json_is_array(list)) {
		fprintf(stderr, "%s: kilnd's answer to GET %s has no \"%s\" array\n", prog, path, key);
		ret = EXIT_KILN;
	} else {
		fputs(header, stdout);
		json_array_foreach(list, i, item)
			row(item);
	}
	kr_reply_free(&rep);
	return ret;
}

/* ---- the verbs ---------------------------------------------------------------- */

/* A request body with the --image, --memory and --vcpus given (create, template build). */
static json_t *shape_body(const struct ropts *o)
{
	json_t *body = json_object();

	if (!body)
		die_usage("out of memory");
	if (o->image)
		json_object_set_new(body, "image", json_string(o->image));
	if (o->memory >= 0)
		json_object_set_new(body, "memory_mb", json_integer(o->memory));
	if (o->vcpus >= 0)
		json_object_set_new(body, "vcpus", json_integer(o->vcpus));
	return body;
}

int kr_cmd_create(int argc, char **argv)
{
	struct ropts o;
	struct kr_reply rep;
	json_t *body;
	const char *id;
	int ret;

	want_operands(&o, argc, ropts_parse(argc, argv, &o, RO_JSON | RO_LABEL | RO_ENV | RO_MEMORY | RO_VCPUS |
					     RO_TIMEOUT | RO_IMAGE | RO_VOLUME | RO_ALLOW | RO_SECRET), 0,
		      "no argument (kiln create [--memory MiB] ...)");
	body = shape_body(&o);
	if (o.timeout)
		json_object_set_new(body, "timeout", json_string(o.timeout));
	if (o.labels)
		json_object_set(body, "labels", o.labels);
	if (o.env)
		json_object_set(body, "env", o.env);
	if (o.volumes)
		json_object_set(body, "volumes", o.volumes);
	if (o.allow)
		json_object_set(body, "allow_net", o.allow);
	if (o.secrets)
		json_object_set(body, "secrets", o.secrets);
	ret = call(&o, "POST", "/v1/sandboxes", body, 1, 1, &rep);
	json_decref(body);
	ropts_free(&o);
	if (ret)
		return ret;
	id = json_string_value(json_object_get(rep.json, "id"));
	if (o.json) {
		print_json(rep.json);
	} else if (id) {
		put_text(stdout, id);
		putchar('\n');
	} else {
		fprintf(stderr, "%s: kilnd's answer to create has no id\n", prog);
		ret = EXIT_KILN;
	}
	kr_reply_free(&rep);
	return ret;
}

/* "%XX" for every byte of s but the unreserved ones (RFC 3986 2.3), appended at *n. */
static int url_escape(char *buf, size_t cap, size_t *n, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";

	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (*n + 4 > cap)
			return -1;
		if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
		    strchr("-._~", ch)) {
			buf[(*n)++] = (char)ch;
		} else {
			buf[(*n)++] = '%';
			buf[(*n)++] = hex[ch >> 4];
			buf[(*n)++] = hex[ch & 15];
		}
	}
	buf[*n] = '\0';
	return 0;
}

static void sandbox_row(const json_t *sb)
{
	const char *stop = json_string_value(json_object_get(sb, "stop_at"));
	const char *to = json_string_value(json_object_get(sb, "timeout"));
	char buf[64], lbuf[512];

	put_col(scalar(json_object_get(sb, "id"), buf, sizeof(buf)), 28);
	put_col(scalar(json_object_get(sb, "state"), buf, sizeof(buf)), 9);
	printf("%6s ", scalar(json_object_get(sb, "memory_mb"), buf, sizeof(buf)));
	printf("%5s ", scalar(json_object_get(sb, "vcpus"), buf, sizeof(buf)));
	put_col(stop ? stop : to && !strcmp(to, "session") ? "session" : "-", 20);
	put_text(stdout, labels_text(json_object_get(sb, "labels"), lbuf, sizeof(lbuf)));
	putchar('\n');
}

static int list_sandboxes(struct ropts *o)
{
	char path[8192];
	const char *k, *sep = "?";
	json_t *v;
	size_t n;

	n = (size_t)snprintf(path, sizeof(path), "/v1/sandboxes");
	json_object_foreach(o->labels, k, v) {
		n += (size_t)snprintf(path + n, sizeof(path) - n, "%slabel=", sep);
		if (n >= sizeof(path) || url_escape(path, sizeof(path), &n, k) ||
		    url_escape(path, sizeof(path), &n, "=") ||
		    url_escape(path, sizeof(path), &n, json_string_value(v)))
			die_usage("ls: the --label filters are too long (at most 8 KB in all)");
		sep = "&";
	}
	if (o->all && n + 16 >= sizeof(path))
		die_usage("ls: the --label filters are too long (at most 8 KB in all)");
	if (o->all)
		snprintf(path + n, sizeof(path) - n, "%sstate=all", sep);
	return call_list(o, path, "sandboxes", "ID                           STATE     MEMORY VCPUS STOP_AT              LABELS\n",
			 sandbox_row);
}

int kr_cmd_ls(int argc, char **argv)
{
	struct ropts o;
	int i = ropts_parse(argc, argv, &o, RO_JSON | RO_LABEL | RO_ALL | RO_AGENT), ret;
	const char *uds = getenv("KILN_UDS");

	/* A directory in a sandbox (kiln ls ID [DIR], or --uds): the agent's listing. */
	if (o.uds || (uds && *uds) || i < argc) {
		if (o.labels || o.all)
			die_usage("ls: --label and --all list sandboxes, so take no ID or DIR");
		ropts_free(&o);
		return cmd_ls(argc, argv);
	}
	ret = list_sandboxes(&o);
	ropts_free(&o);
	return ret;
}

/* The one ID operand of verb, checked; its path under /v1/sandboxes/ into path. */
static const char *sandbox_path(struct ropts *o, int argc, char **argv, int i, int n, const char *tail,
				char *path, size_t cap)
{
	if (argc - i < 1)
		die_usage("%s: expected a sandbox ID", o->verb);
	want_operands(o, argc, i, n, n == 2 ? "ID and a duration (kiln extend ID 10m)" : "one sandbox ID");
	kr_check_id(argv[i], "sandbox ID");
	snprintf(path, cap, "/v1/sandboxes/%s%s", argv[i], tail);
	return path;
}

int kr_cmd_info(int argc, char **argv)
{
	struct ropts o;
	char path[256];
	int i = ropts_parse(argc, argv, &o, RO_JSON);

	return call_show(&o, "GET", sandbox_path(&o, argc, argv, i, 1, "", path, sizeof(path)), NULL, 0, 0);
}

int kr_cmd_kill(int argc, char **argv)
{
	struct ropts o;
	char path[256];
	int i = ropts_parse(argc, argv, &o, RO_JSON);

	return call_show(&o, "DELETE", sandbox_path(&o, argc, argv, i, 1, "", path, sizeof(path)), NULL, 0, 1);
}

int kr_cmd_extend(int argc, char **argv)
{
	struct ropts o;
	struct kr_reply rep;
	char path[256], buf[64];
	json_t *body;
	const char *msg;
	int i = ropts_parse(argc, argv, &o, RO_JSON | RO_TO), ret;

	if (o.to) {
		sandbox_path(&o, argc, argv, i, 1, "/extend", path, sizeof(path));
		body = json_pack("{sI}", "stop_at_ms", (json_int_t)parse_num(o.to, "--to", 1, INT64_MAX, 0));
	} else {
		if (argc - i == 1)
			die_usage("extend: expected a duration (kiln extend ID 10m) or --to MS");
		sandbox_path(&o, argc, argv, i, 2, "/extend", path, sizeof(path));
		if (!*argv[i + 1] || strlen(argv[i + 1]) > 64)
			die_usage("extend %s: expected a duration like 10m", argv[i + 1]);
		body = json_pack("{ss}", "timeout", argv[i + 1]);
	}
	if (!body)
		die_usage("extend: the duration is not UTF-8 text");
	ret = call(&o, "POST", path, body, 0, 1, &rep);
	json_decref(body);
	if (ret)
		return ret;
	msg = json_string_value(json_object_get(rep.json, "message"));
	if (msg) {
		fprintf(stderr, "%s: ", prog);
		put_text(stderr, msg);
		fputc('\n', stderr);
	}
	if (o.json)
		print_json(rep.json);
	else
		printf("%s\n", scalar(json_object_get(rep.json, "stop_at"), buf, sizeof(buf)));
	kr_reply_free(&rep);
	return 0;
}

static void event_row(const json_t *ev)
{
	const char *at = json_string_value(json_object_get(ev, "at"));
	char buf[64], tbuf[64], *dump;
	json_t *d = json_object_get(ev, "detail");

	printf("%5s ", scalar(json_object_get(ev, "seq"), buf, sizeof(buf)));
	put_col(at ? at : ms_text(json_object_get(ev, "at_ms"), tbuf, sizeof(tbuf)), 24);
	put_col(scalar(json_object_get(ev, "kind"), buf, sizeof(buf)), 14);
	if (json_is_object(d) || json_is_array(d)) {
		dump = json_dumps(d, JSON_COMPACT);
		put_text(stdout, dump ? dump : "-");
		free(dump);
	} else {
		put_text(stdout, scalar(d, buf, sizeof(buf)));
	}
	putchar('\n');
}

int kr_cmd_events(int argc, char **argv)
{
	struct ropts o;
	char path[256];
	int i = ropts_parse(argc, argv, &o, RO_JSON);

	return call_list(&o, sandbox_path(&o, argc, argv, i, 1, "/events", path, sizeof(path)), "events",
			 "SEQ   AT                       KIND           DETAIL\n", event_row);
}

int kr_cmd_metrics(int argc, char **argv)
{
	struct ropts o;
	struct kr_reply rep;
	int ret;

	want_operands(&o, argc, ropts_parse(argc, argv, &o, 0), 0, "no argument");
	ret = call(&o, "GET", "/metrics", NULL, 0, 0, &rep);
	if (ret)
		return ret;
	fwrite(rep.body, 1, rep.len, stdout);
	kr_reply_free(&rep);
	return ferror(stdout) ? EXIT_KILN : 0;
}

int kr_cmd_node(int argc, char **argv)
{
	struct ropts o;

	want_operands(&o, argc, ropts_parse(argc, argv, &o, RO_JSON), 0, "no argument");
	return call_show(&o, "GET", "/v1/node", NULL, 0, 0);
}

static void token_row(const json_t *t)
{
	char buf[64], b1[64], b2[64], b3[64];

	put_col(scalar(json_object_get(t, "id"), buf, sizeof(buf)), 24);
	printf("%-20s %-20s %s\n", ms_text(json_object_get(t, "created_ms"), b1, sizeof(b1)),
	       ms_text(json_object_get(t, "last_used_ms"), b2, sizeof(b2)),
	       ms_text(json_object_get(t, "revoked_ms"), b3, sizeof(b3)));
}

/* kiln token create|ls|revoke ID */
int kr_cmd_token(int argc, char **argv)
{
	struct ropts o;
	struct kr_reply rep;
	char path[256], buf[64];
	const char *sub;
	int i = ropts_parse(argc, argv, &o, RO_JSON), ret;

	if (i >= argc)
		die_usage("token: expected create, ls or revoke ID");
	sub = argv[i++];
	o.verb = "token";
	if (!strcmp(sub, "create")) {
		want_operands(&o, argc, i, 0, "nothing after create");
		ret = call(&o, "POST", "/v1/tokens", NULL, 0, 1, &rep);
		if (ret)
			return ret;
		if (o.json) {
			print_json(rep.json);
		} else if (json_is_string(json_object_get(rep.json, "token"))) {
			put_text(stdout, json_string_value(json_object_get(rep.json, "token")));
			putchar('\n');
			fprintf(stderr, "%s: token %s created; it is shown only this once (KILN_TOKEN=...)\n", prog,
				scalar(json_object_get(rep.json, "id"), buf, sizeof(buf)));
		} else {
			fprintf(stderr, "%s: kilnd's answer has no token\n", prog);
			ret = EXIT_KILN;
		}
		kr_reply_free(&rep);
		return ret;
	}
	if (!strcmp(sub, "ls")) {
		want_operands(&o, argc, i, 0, "nothing after ls");
		return call_list(&o, "/v1/tokens", "tokens",
				 "ID                       CREATED              LAST_USED            REVOKED\n", token_row);
	}
	if (!strcmp(sub, "revoke")) {
		want_operands(&o, argc, i, 1, "revoke ID");
		kr_check_id(argv[i], "token ID");
		snprintf(path, sizeof(path), "/v1/tokens/%s", argv[i]);
		return call_show(&o, "DELETE", path, NULL, 0, 1);
	}
	die_usage("token %s: expected create, ls or revoke ID", sub);
}

static void template_row(const json_t *t)
{
	char buf[64], tbuf[64];

	put_col(scalar(json_object_get(t, "image"), buf, sizeof(buf)), 24);
	printf("%6s ", scalar(json_object_get(t, "memory_mb"), buf, sizeof(buf)));
	printf("%5s ", scalar(json_object_get(t, "vcpus"), buf, sizeof(buf)));
	printf("%-20s %s\n", ms_text(json_object_get(t, "created_ms"), tbuf, sizeof(tbuf)),
	       json_is_true(json_object_get(t, "current")) ? "yes" : "no");
}

/* kiln template ls|build [--memory M --vcpus N]|rm IMAGE M N */
int kr_cmd_template(int argc, char **argv)
{
	struct ropts o;
	char path[512];
	const char *sub;
	json_t *body;
	int i = ropts_parse(argc, argv, &o, RO_JSON | RO_MEMORY | RO_VCPUS | RO_IMAGE), ret;

	if (i >= argc)
		die_usage("template: expected ls, build or rm IMAGE MEMORY_MB VCPUS");
	sub = argv[i++];
	o.verb = "template";
	if ((o.memory >= 0 || o.vcpus >= 0 || o.image) && strcmp(sub, "build"))
		die_usage("template %s: --image, --memory and --vcpus go with build", sub);
	if (!strcmp(sub, "ls")) {
		want_operands(&o, argc, i, 0, "nothing after ls");
		return call_list(&o, "/v1/templates", "templates",
				 "IMAGE                    MEMORY VCPUS CREATED              CURRENT\n", template_row);
	}
	if (!strcmp(sub, "build")) {
		want_operands(&o, argc, i, 0, "options only (template build [--image NAME] [--memory MiB] [--vcpus N])");
		body = shape_body(&o);
		ret = call_show(&o, "POST", "/v1/templates", body, 1, 0);
		json_decref(body);
		return ret;
	}
	if (!strcmp(sub, "rm")) {
		want_operands(&o, argc, i, 3, "rm IMAGE MEMORY_MB VCPUS");
		kr_check_id(argv[i], "template IMAGE");
		snprintf(path, sizeof(path), "/v1/templates/%s/%llu/%llu", argv[i],
			 (unsigned long long)parse_num(argv[i + 1], "MEMORY_MB", 1, 1u << 30, 0),
			 (unsigned long long)parse_num(argv[i + 2], "VCPUS", 1, 1u << 16, 0));
		return call_show(&o, "DELETE", path, NULL, 0, 1);
	}
	die_usage("template %s: expected ls, build or rm IMAGE MEMORY_MB VCPUS", sub);
}

static void image_row(const json_t *img)
{
	char buf[64], sbuf[32];
	const json_t *size = json_object_get(img, "size_bytes");

	put_col(scalar(json_object_get(img, "name"), buf, sizeof(buf)), 16);
	put_col(scalar(json_object_get(img, "kind"), buf, sizeof(buf)), 10);
	if (json_is_integer(size))
		snprintf(sbuf, sizeof(sbuf), "%.1f MiB", (double)json_integer_value(size) / (1 << 20));
	else
		snprintf(sbuf, sizeof(sbuf), "-");
	put_col(sbuf, 12);
	printf("%-8s ", json_is_true(json_object_get(img, "default")) ? "yes" : "no");
	put_text(stdout, json_string_value(json_object_get(img, "path")) ? json_string_value(json_object_get(img, "path"))
									    : "(the initramfs)");
	putchar('\n');
}

/* kiln image ls | rm IMAGE */
int kr_cmd_image(int argc, char **argv)
{
	struct ropts o;
	int i = ropts_parse(argc, argv, &o, RO_JSON);

	o.verb = "image";
	if (i < argc && !strcmp(argv[i], "rm")) {
		char path[256];

		want_operands(&o, argc, i + 1, 1, "rm IMAGE");
		kr_check_id(argv[i + 1], "IMAGE");
		snprintf(path, sizeof(path), "/v1/images/%s", argv[i + 1]);
		return call_show(&o, "DELETE", path, NULL, 0, !o.json);
	}
	if (i >= argc || strcmp(argv[i], "ls"))
		die_usage("image: expected ls or rm IMAGE (images are given to kilnd with --image NAME=PATH, or made "
			  "with kiln volume snapshot)");
	want_operands(&o, argc, i + 1, 0, "nothing after ls");
	return call_list(&o, "/v1/images", "images", "NAME             KIND       SIZE         DEFAULT  PATH\n", image_row);
}

static void volume_row(const json_t *v)
{
	char buf[64], sbuf[32], hbuf[32];
	const json_t *size = json_object_get(v, "size_bytes");
	const json_t *use = json_object_get(json_object_get(v, "usage"), "gib_hours");

	put_col(scalar(json_object_get(v, "name"), buf, sizeof(buf)), 20);
	snprintf(sbuf, sizeof(sbuf), "%.0f MiB", json_is_integer(size) ? (double)json_integer_value(size) / (1 << 20) : 0.0);
	put_col(sbuf, 11);
	put_col(scalar(json_object_get(v, "state"), buf, sizeof(buf)), 19);
	snprintf(hbuf, sizeof(hbuf), "%.3f", json_is_number(use) ? json_number_value(use) : 0.0);
	put_col(hbuf, 10);
	put_text(stdout, json_is_string(json_object_get(v, "writer")) ? json_string_value(json_object_get(v, "writer")) : "-");
	putchar('\n');
}

/* kiln volume create NAME SIZE | ls | info NAME | resize NAME SIZE | rm NAME */
int kr_cmd_volume(int argc, char **argv)
{
	struct ropts o;
	char path[256];
	const char *sub;
	json_t *body;
	int i = ropts_parse(argc, argv, &o, RO_JSON | RO_FROM), ret;

	o.verb = "volume";
	if (i >= argc)
		die_usage("volume: expected create NAME SIZE, ls, info NAME, resize NAME SIZE, snapshot NAME IMAGE or rm NAME");
	sub = argv[i++];
	if (o.from && strcmp(sub, "create"))
		die_usage("volume %s: --from goes with create", sub);
	if (!strcmp(sub, "snapshot")) {
		want_operands(&o, argc, i, 2, "snapshot NAME IMAGE (a read-only image to boot with create --image IMAGE)");
		kr_check_id(argv[i], "volume NAME");
		body = json_pack("{s:s}", "image", argv[i + 1]);
		if (!body)
			die_usage("volume snapshot: IMAGE must be UTF-8 text");
		snprintf(path, sizeof(path), "/v1/volumes/%s/snapshot", argv[i]);
		ret = call_show(&o, "POST", path, body, 1, !o.json);
		json_decref(body);
		return ret;
	}
	if (!strcmp(sub, "ls")) {
		want_operands(&o, argc, i, 0, "nothing after ls");
		return call_list(&o, "/v1/volumes", "volumes",
				 "NAME                 SIZE        STATE               GIB_HOURS  WRITER\n", volume_row);
	}
	if (!strcmp(sub, "create") || !strcmp(sub, "resize")) {
		int create = !strcmp(sub, "create");

		want_operands(&o, argc, i, 2, create ? "create NAME SIZE (e.g. create data 1G)" : "resize NAME SIZE");
		kr_check_id(argv[i], "volume NAME");
		body = create ? json_pack("{s:s, s:s}", "name", argv[i], "size", argv[i + 1])
			      : json_pack("{s:s}", "size", argv[i + 1]);
		if (body && o.from)
			json_object_set_new(body, "from", json_string(o.from));
		if (!body)
			die_usage("volume %s: NAME and SIZE must be UTF-8 text", sub);
		snprintf(path, sizeof(path), create ? "/v1/volumes" : "/v1/volumes/%s/resize", argv[i]);
		ret = call_show(&o, "POST", path, body, 1, !o.json);
		json_decref(body);
		return ret;
	}
	if (!strcmp(sub, "info") || !strcmp(sub, "rm")) {
		want_operands(&o, argc, i, 1, !strcmp(sub, "rm") ? "rm NAME" : "info NAME");
		kr_check_id(argv[i], "volume NAME");
		snprintf(path, sizeof(path), "/v1/volumes/%s", argv[i]);
		return call_show(&o, !strcmp(sub, "rm") ? "DELETE" : "GET", path, NULL, 0, !strcmp(sub, "rm") && !o.json);
	}
	die_usage("volume %s: expected create NAME SIZE, ls, info NAME, resize NAME SIZE, snapshot NAME IMAGE or rm NAME",
		  sub);
}
