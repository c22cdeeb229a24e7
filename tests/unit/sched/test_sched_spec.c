/*
 * kiln's REST create body and durations (scheduler/sched_core.h): tables of
 * inputs and the exact message a user reads for each.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sched_unit.h"

/* ---- create bodies ------------------------------------------------------------ */

static int spec_parse(const char *body, struct sched_spec *s, struct kiln_err *err)
{
	return sched_spec_from_json(body, strlen(body), s, err);
}

START_TEST(spec_defaults)
{
	static const char *const bodies[] = {
		"", "{}", " { } ", "{\"image\":null,\"memory_mb\":null,\"vcpus\":null,\"timeout\":null,\"labels\":null,\"env\":null}",
		"{\"labels\":{},\"env\":{}}",
	};
	struct kiln_err err = { { 0 } };
	struct sched_spec s;
	int i;

	for (i = 0; i < ROWS(bodies); i++) {
		ck_assert_msg(spec_parse(bodies[i], &s, &err) == 0, "%s: %s", bodies[i], err.msg);
		ck_assert_str_eq(s.image, "");
		ck_assert_uint_eq(s.memory_mb, 1280);
		ck_assert_uint_eq(s.vcpus, 2);
		ck_assert_int_eq(s.timeout.kind, SCHED_TIMEOUT_DURATION);
		ck_assert_uint_eq(s.timeout.ms, 5 * MIN);
		ck_assert_uint_eq(s.nlabels, 0);
		ck_assert_uint_eq(s.nenv, 0);
		sched_spec_free(&s);
	}
}
END_TEST

START_TEST(spec_full)
{
	static const char body[] =
		"{\"image\": \"debian-12.x_y\", \"memory_mb\": 2048, \"vcpus\": 4, \"timeout\": \"1h30m\",\n"
		" \"volumes\": {\"/data\": \"d1\", \"/srv/ro\": {\"volume\": \"d2\", \"readonly\": true}},\n"
		" \"labels\": {\"team\": \"a\", \"app.example/tier-1_x\": \"caf\\u00e9\", \"empty\": \"\"},\n"
		" \"env\": {\"PATH\": \"/usr/bin\", \"_x1\": \"line\\nbreak\", \"E\": \"\"},\n"
		" \"allow_net\": [\"api.example.com\", \"*.example.org:443\", \"203.0.113.0/24\", \"[2001:db8::1]:22\"]}";
	struct kiln_err err = { { 0 } };
	struct sched_spec s;

	ck_assert_msg(spec_parse(body, &s, &err) == 0, "%s", err.msg);
	ck_assert_str_eq(s.image, "debian-12.x_y");
	ck_assert_uint_eq(s.nvols, 2);
	ck_assert_str_eq(s.vols[0].path, "/data");
	ck_assert_str_eq(s.vols[0].name, "d1");
	ck_assert_int_eq(s.vols[0].readonly, 0);
	ck_assert_str_eq(s.vols[1].path, "/srv/ro");
	ck_assert_str_eq(s.vols[1].name, "d2");
	ck_assert_int_eq(s.vols[1].readonly, 1);
	ck_assert_uint_eq(s.memory_mb, 2048);
	ck_assert_uint_eq(s.vcpus, 4);
	ck_assert_int_eq(s.timeout.kind, SCHED_TIMEOUT_DURATION);
	ck_assert_uint_eq(s.timeout.ms, HOUR + 30 * MIN);
	ck_assert_uint_eq(s.nlabels, 3);
	ck_assert_str_eq(s.labels[0].key, "team");
	ck_assert_str_eq(s.labels[0].value, "a");
	ck_assert_str_eq(s.labels[1].key, "app.example/tier-1_x");
	ck_assert_str_eq(s.labels[1].value, "caf\xc3\xa9");
	ck_assert_str_eq(s.labels[2].key, "empty");
	ck_assert_str_eq(s.labels[2].value, "");
	ck_assert_uint_eq(s.nenv, 3);
	ck_assert_str_eq(s.env[0].key, "PATH");
	ck_assert_str_eq(s.env[0].value, "/usr/bin");
	ck_assert_str_eq(s.env[1].key, "_x1");
	ck_assert_str_eq(s.env[1].value, "line\nbreak");
	ck_assert_str_eq(s.env[2].value, "");
	ck_assert_uint_eq(s.nallow, 4);
	ck_assert_int_eq(s.allow_given, 1);
	ck_assert_str_eq(s.allow_net[0], "api.example.com");
	ck_assert_str_eq(s.allow_net[3], "[2001:db8::1]:22");
	sched_spec_free(&s);
	ck_assert_uint_eq(s.nlabels, 0);
	ck_assert_ptr_null(s.labels);
	sched_spec_free(&s);		/* twice is harmless */
}
END_TEST

START_TEST(spec_secrets)
{
	static const char body[] =
		"{\"env\": {\"X\": \"1\"}, \"secrets\": {\"API_KEY\": {\"hosts\": [\"api.example.com\", \"*.example.org:443\"],"
		" \"value\": \"sk-top secret\"}, \"_b\": {\"value\": \"v\", \"hosts\": [\"b.test\"]}}}";
	struct kiln_err err = { { 0 } };
	struct sched_spec s;
	char *many;
	size_t o = 0;

	ck_assert_msg(spec_parse(body, &s, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(s.nsecrets, 2);
	ck_assert_str_eq(s.secrets[0].name, "API_KEY");
	ck_assert_uint_eq(s.secrets[0].nhosts, 2);
	ck_assert_str_eq(s.secrets[0].hosts[1], "*.example.org:443");
	ck_assert_str_eq(s.secrets[0].value, "sk-top secret");
	ck_assert_uint_eq(s.secrets[0].value_len, 13);
	ck_assert_str_eq(s.secrets[1].name, "_b");
	sched_spec_free(&s);
	ck_assert_uint_eq(s.nsecrets, 0);
	ck_assert_ptr_null(s.secrets);
	/* 33 secrets: one too many. */
	many = malloc(8192);
	o += (size_t)snprintf(many + o, 8192 - o, "{\"secrets\": {");
	for (int i = 0; i < 33; i++)
		o += (size_t)snprintf(many + o, 8192 - o, "%s\"S%d\": {\"hosts\": [\"a.test\"], \"value\": \"v\"}",
				      i ? "," : "", i);
	snprintf(many + o, 8192 - o, "}}");
	ck_assert_int_eq(spec_parse(many, &s, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "secrets: 33 given (at most 32)");
	free(many);
	/* No message quotes a value. */
	ck_assert_int_eq(spec_parse("{\"secrets\":{\"A\":{\"hosts\":[\"1.2.3.4\"],\"value\":\"sk-hidden\"}}}", &s, &err),
			 -EINVAL);
	ck_assert_ptr_null(strstr(err.msg, "sk-hidden"));
}
END_TEST

START_TEST(spec_edges)
{
	static const struct {
		const char *body;
		unsigned memory_mb, vcpus;
		enum sched_timeout_kind kind;
		uint64_t ms;
	} rows[] = {
		{ "{\"memory_mb\":768}", 768, 2, SCHED_TIMEOUT_DURATION, 5 * MIN },
		{ "{\"memory_mb\":4096}", 4096, 2, SCHED_TIMEOUT_DURATION, 5 * MIN },
		{ "{\"vcpus\":1}", 1280, 1, SCHED_TIMEOUT_DURATION, 5 * MIN },
		{ "{\"vcpus\":8}", 1280, 8, SCHED_TIMEOUT_DURATION, 5 * MIN },
		{ "{\"timeout\":\"session\"}", 1280, 2, SCHED_TIMEOUT_SESSION, 0 },
		{ "{\"timeout\":\"30s\"}", 1280, 2, SCHED_TIMEOUT_DURATION, 30 * SEC },
		{ "{\"memory_mb\":1024e0}", 0, 0, 0, 0 },	/* a real: refused below */
	};
	struct kiln_err err = { { 0 } };
	struct sched_spec s;
	int i;

	for (i = 0; i < ROWS(rows) - 1; i++) {
		ck_assert_msg(spec_parse(rows[i].body, &s, &err) == 0, "%s: %s", rows[i].body, err.msg);
		ck_assert_uint_eq(s.memory_mb, rows[i].memory_mb);
		ck_assert_uint_eq(s.vcpus, rows[i].vcpus);
		ck_assert_int_eq(s.timeout.kind, rows[i].kind);
		ck_assert_uint_eq(s.timeout.ms, rows[i].ms);
		sched_spec_free(&s);
	}
	ck_assert_int_eq(spec_parse(rows[i].body, &s, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "memory_mb must be an integer (MiB), not a fractional number");
}
END_TEST

/* Bad bodies and the exact message each gets. */
static const struct {
	const char *body;
	const char *msg;
} bad_bodies[] = {
	{ "{\"memory_mb\":600}", "memory_mb 600 is out of range (768-4096)" },
	{ "{\"memory_mb\":767}", "memory_mb 767 is out of range (768-4096)" },
	{ "{\"memory_mb\":4097}", "memory_mb 4097 is out of range (768-4096)" },
	{ "{\"memory_mb\":-1}", "memory_mb -1 is out of range (768-4096)" },
	{ "{\"memory_mb\":9223372036854775807}", "memory_mb 9223372036854775807 is out of range (768-4096)" },
	{ "{\"memory_mb\":\"1280\"}", "memory_mb must be an integer (MiB), not a string" },
	{ "{\"memory_mb\":1280.5}", "memory_mb must be an integer (MiB), not a fractional number" },
	{ "{\"memory_mb\":true}", "memory_mb must be an integer (MiB), not a boolean" },
	{ "{\"memory_mb\":{}}", "memory_mb must be an integer (MiB), not an object" },
	{ "{\"image\":\"a\",\"root\":\"b\"}", "root \"b\" and image \"a\" differ: give one of them" },
	{ "{\"root\":\"b\",\"image\":\"a\"}", "image \"a\" and root \"b\" differ: give one of them" },
	{ "{\"root\":7}", "root: image must be a string (an image name such as \"debian\"), not an integer" },
	{ "{\"image\":5}", "image must be a string (an image name such as \"debian\"), not an integer" },
	{ "{\"image\":\"Debian\"}", "image \"Debian\" is not an image name (1-64 of a-z 0-9 . _ -)" },
	{ "{\"image\":\"\"}", "image \"\" is not an image name (1-64 of a-z 0-9 . _ -)" },
	{ "{\"image\":\"a\\u0000b\"}", "image \"a\\x00b\" is not an image name (1-64 of a-z 0-9 . _ -)" },
	{ "{\"allow_net\":\"a.test\"}", "allow_net must be an array of host names, *.domain, IP addresses or CIDR ranges, "
	  "such as [\"api.example.com\", \"*.example.org:443\"], not a string" },
	{ "{\"allow_net\":[7]}", "allow_net[0] must be a string, not an integer" },
	{ "{\"volumes\":[]}", "volumes must be an object of mount path to volume, such as {\"/data\": \"mydata\"}, not an array" },
	{ "{\"volumes\":{\"data\":\"v\"}}", "volumes: mount path \"data\" must be absolute, 2-256 bytes, and not /" },
	{ "{\"volumes\":{\"/\":\"v\"}}", "volumes: mount path \"/\" must be absolute, 2-256 bytes, and not /" },
	{ "{\"volumes\":{\"/a/../b\":\"v\"}}", "volumes: mount path \"/a/../b\" is not clean (no trailing /, //, . or ..)" },
	{ "{\"volumes\":{\"/a/\":\"v\"}}", "volumes: mount path \"/a/\" is not clean (no trailing /, //, . or ..)" },
	{ "{\"volumes\":{\"/proc/x\":\"v\"}}", "volumes: mount path \"/proc/x\" is under /proc, which the system needs" },
	{ "{\"volumes\":{\"/devices\":\"V\"}}", "volumes \"/devices\": \"V\" is not a volume name (1-64 of a-z 0-9 . _ -)" },
	{ "{\"volumes\":{\"/a,b\":\"v\"}}", "volumes: mount path \"/a,b\" may hold only letters, digits and / . _ - + @ = :" },
	{ "{\"volumes\":{\"/a'b\":\"v\"}}", "volumes: mount path \"/a'b\" may hold only letters, digits and / . _ - + @ = :" },
	{ "{\"volumes\":{\"/d\":1}}", "volumes \"/d\" must name a volume (a string, or {\"volume\": NAME, \"readonly\": true}), not an integer" },
	{ "{\"volumes\":{\"/d\":{\"readonly\":true}}}", "volumes \"/d\" must name a volume (a string, or {\"volume\": NAME, \"readonly\": true}), not an object without one" },
	{ "{\"volumes\":{\"/d\":{\"volume\":\"v\",\"readonly\":1}}}", "volumes \"/d\": readonly must be true or false, not an integer" },
	{ "{\"volumes\":{\"/d\":{\"volume\":\"v\",\"ro\":true}}}", "volumes \"/d\": unknown field \"ro\"; it takes volume and readonly" },
	{ "{\"volumes\":{\"/a\":\"v\",\"/b\":\"v\",\"/c\":\"v\",\"/d\":\"v\",\"/e\":\"v\"}}", "volumes: 5 given (at most 4)" },
	{ "{\"vcpus\":0}", "vcpus 0 is out of range (1-8)" },
	{ "{\"vcpus\":9}", "vcpus 9 is out of range (1-8)" },
	{ "{\"vcpus\":[2]}", "vcpus must be an integer, not an array" },
	{ "{\"timeout\":5}", "timeout must be a string (\"session\" or a duration such as 5m), not an integer" },
	{ "{\"timeout\":\"5x\"}", "timeout \"5x\" has an unknown unit \"x\"; use d, h, m, s or ms" },
	{ "{\"timeout\":\"sesion\"}",
	  "timeout \"sesion\" is neither \"session\" nor a duration such as 30s, 5m, 1h30m or 500ms" },
	{ "{\"timeout\":\"\"}", "timeout is empty; write a duration such as 30s, 5m, 1h30m or 500ms" },
	{ "{\"timeout\":\"0s\"}", "timeout \"0s\" is zero; it must be above zero, such as 30s, 5m, 1h30m or 500ms" },
	{ "{\"timeout\":\"5m\\u0000\"}", "timeout \"5m\\x00\" has a NUL byte" },
	{ "{\"foo\":1}", "unknown field \"foo\"; a create takes image (or root), memory_mb, vcpus, timeout, volumes, labels, env, allow_net and secrets" },
	{ "{\"memory\":2048}", "unknown field \"memory\"; a create takes image (or root), memory_mb, vcpus, timeout, volumes, labels, env, allow_net and secrets" },
	{ "{\"Memory_MB\":2048}",
	  "unknown field \"Memory_MB\"; a create takes image (or root), memory_mb, vcpus, timeout, volumes, labels, env, allow_net and secrets" },
	{ "{\"\\u00e9\\n\":null}",
	  "unknown field \"\\xc3\\xa9\\x0a\"; a create takes image (or root), memory_mb, vcpus, timeout, volumes, labels, env, allow_net and secrets" },
	{ "{\"labels\":[]}", "labels must be an object of string to string, not an array" },
	{ "{\"labels\":\"a=b\"}", "labels must be an object of string to string, not a string" },
	{ "{\"labels\":{\"a\":1}}", "label \"a\" must be a string, not an integer" },
	{ "{\"labels\":{\"a\":null}}", "label \"a\" must be a string, not null" },
	{ "{\"labels\":{\"\":\"x\"}}", "label key \"\" is empty; keys are 1-63 bytes of [a-zA-Z0-9._/-]" },
	{ "{\"labels\":{\"a b\":\"x\"}}", "label key \"a b\" has \" \"; keys are 1-63 bytes of [a-zA-Z0-9._/-]" },
	{ "{\"labels\":{\"a=b\":\"x\"}}", "label key \"a=b\" has \"=\"; keys are 1-63 bytes of [a-zA-Z0-9._/-]" },
	{ "{\"labels\":{\"caf\\u00e9\":\"x\"}}",
	  "label key \"caf\\xc3\\xa9\" has \"\\xc3\"; keys are 1-63 bytes of [a-zA-Z0-9._/-]" },
	{ "{\"labels\":{\"a\":\"x\\ny\"}}", "label \"a\" value has a control byte (0x0a)" },
	{ "{\"labels\":{\"a\":\"x\\u007f\"}}", "label \"a\" value has a control byte (0x7f)" },
	{ "{\"labels\":{\"a\":\"\\u0000\"}}", "label \"a\" value has a control byte (0x00)" },
	{ "{\"env\":[]}", "env must be an object of string to string, not an array" },
	{ "{\"env\":{\"1X\":\"v\"}}", "env name \"1X\" is not a variable name; names match [A-Za-z_][A-Za-z0-9_]*" },
	{ "{\"env\":{\"A-B\":\"v\"}}", "env name \"A-B\" is not a variable name; names match [A-Za-z_][A-Za-z0-9_]*" },
	{ "{\"env\":{\"\":\"v\"}}", "env name \"\" is not a variable name; names match [A-Za-z_][A-Za-z0-9_]*" },
	{ "{\"env\":{\"A=B\":\"v\"}}", "env name \"A=B\" is not a variable name; names match [A-Za-z_][A-Za-z0-9_]*" },
	{ "{\"env\":{\"A\":\"x\\u0000y\"}}", "env \"A\" value has a NUL byte" },
	{ "{\"env\":{\"A\":null}}", "env \"A\" must be a string, not null" },
	{ "{\"env\":{\"A\":1}}", "env \"A\" must be a string, not an integer" },
	{ "{\"secrets\":[]}", "secrets must be an object of NAME to {\"hosts\": [HOST...], \"value\": \"...\"}, not an array" },
	{ "{\"secrets\":{\"1A\":{\"hosts\":[\"a.test\"],\"value\":\"v\"}}}",
	  "secret name \"1A\" is not a variable name; names are 1-64 bytes matching [A-Za-z_][A-Za-z0-9_]*" },
	{ "{\"secrets\":{\"A-B\":{\"hosts\":[\"a.test\"],\"value\":\"v\"}}}",
	  "secret name \"A-B\" is not a variable name; names are 1-64 bytes matching [A-Za-z_][A-Za-z0-9_]*" },
	{ "{\"secrets\":{\"A\":\"v\"}}", "secrets \"A\" must be {\"hosts\": [HOST...], \"value\": \"...\"}, not a string" },
	{ "{\"secrets\":{\"A\":{\"hosts\":[\"a.test\"],\"value\":\"v\",\"x\":1}}}",
	  "secrets \"A\": unknown field \"x\"; a secret takes hosts and value" },
	{ "{\"secrets\":{\"A\":{\"value\":\"v\"}}}",
	  "secrets \"A\": hosts must be an array of host names or *.domain, such as [\"api.example.com\"], not missing" },
	{ "{\"secrets\":{\"A\":{\"hosts\":[],\"value\":\"v\"}}}",
	  "secrets \"A\": hosts has 0 entries (1-16: the hosts the secret is sent to)" },
	{ "{\"secrets\":{\"A\":{\"hosts\":[\"203.0.113.7\"],\"value\":\"v\"}}}",
	  "secrets \"A\": host \"203.0.113.7\" is not a host name or *.domain (optionally with :PORT); secrets go only to named hosts, never to an address, range or *" },
	{ "{\"secrets\":{\"A\":{\"hosts\":[\"*\"],\"value\":\"v\"}}}",
	  "secrets \"A\": host \"*\" is not a host name or *.domain (optionally with :PORT); secrets go only to named hosts, never to an address, range or *" },
	{ "{\"secrets\":{\"A\":{\"hosts\":[\"exa mple.com\"],\"value\":\"v\"}}}",
	  "secrets \"A\": host \"exa mple.com\" is not a host name or *.domain (optionally with :PORT); secrets go only to named hosts, never to an address, range or *" },
	{ "{\"secrets\":{\"A\":{\"hosts\":[1],\"value\":\"v\"}}}", "secrets \"A\": hosts[0] must be a string, not an integer" },
	{ "{\"secrets\":{\"A\":{\"hosts\":[\"a.test\"]}}}", "secrets \"A\": value must be a string of 1-4096 bytes, not missing" },
	{ "{\"secrets\":{\"A\":{\"hosts\":[\"a.test\"],\"value\":\"\"}}}", "secrets \"A\": value is 0 bytes (1-4096)" },
	{ "{\"secrets\":{\"A\":{\"hosts\":[\"a.test\"],\"value\":\"top\\r\\nsecret\"}}}",
	  "secrets \"A\": value has a NUL, CR or LF byte, which cannot go in an HTTP header; remove it" },
	{ "{\"secrets\":{\"A\":{\"hosts\":[\"a.test\"],\"value\":\"top\\u0000secret\"}}}",
	  "secrets \"A\": value has a NUL, CR or LF byte, which cannot go in an HTTP header; remove it" },
	{ "{\"env\":{\"TOKEN\":\"x\"},\"secrets\":{\"TOKEN\":{\"hosts\":[\"a.test\"],\"value\":\"topsecret\"}}}",
	  "secrets \"TOKEN\": env sets TOKEN too; a secret is an environment variable of its own, so remove it from env" },
	{ "{\"secrets\":{\"TOKEN\":{\"hosts\":[\"a.test\"],\"value\":\"topsecret\"}},\"env\":{\"TOKEN\":\"x\"}}",
	  "secrets \"TOKEN\": env sets TOKEN too; a secret is an environment variable of its own, so remove it from env" },
	{ "[1]", "the request body must be a JSON object, not an array" },
	{ "{\"memory_mb\":", "malformed JSON at line 1, column 13: unexpected token near end of file" },
	{ "{\"memory_mb\":2048,\n\"memory_mb\":1024}",
	  "malformed JSON at line 2, column 11: duplicate object key near '\"memory_mb\"'" },
	{ "{} x", "malformed JSON at line 1, column 4: end of file expected near 'x'" },
	{ "\"x\"", "malformed JSON at line 1, column 3: '[' or '{' expected near '\"x\"'" },
	{ "   ", "malformed JSON at line 1, column 3: '[' or '{' expected near end of file" },
	{ "{\"memory_mb\":99999999999999999999}",
	  "malformed JSON at line 1, column 33: too big integer near '99999999999999999999'" },
	{ "{\"timeout\":\"\xff\"}", "malformed JSON at line 1, column 12: unable to decode byte 0xff near '\"'" },
	{ "{\"labels\":{\"a\":\"b\nc\"}}", "malformed JSON at line 1, column 17: unexpected newline near '\"b'" },
	{ "{\"a\\u0000b\":1}",
	  "malformed JSON at line 1, column 11: NUL byte in object key not supported near '\"a\\u0000b\"'" },
	{ "{\"vcpus\":2}\x01", "malformed JSON at line 1, column 12: end of file expected near '\\x01'" },
};

START_TEST(spec_bad)
{
	struct kiln_err err = { { 0 } };
	struct sched_spec s;
	const char *body = bad_bodies[_i].body;

	memset(&s, 0xa5, sizeof(s));
	ck_assert_int_eq(spec_parse(body, &s, &err), -EINVAL);
	ck_assert_str_eq(err.msg, bad_bodies[_i].msg);
	assert_printable(err.msg);
	/* Nothing is left in *out on failure: the defaults, no labels or env. */
	ck_assert_uint_eq(s.memory_mb, 1280);
	ck_assert_ptr_null(s.labels);
	ck_assert_ptr_null(s.env);
	sched_spec_free(&s);
	/* NULL err: same answer, no crash. */
	ck_assert_int_eq(spec_parse(body, &s, NULL), -EINVAL);
}
END_TEST

/* A body of n labels (or env entries) built by gen(i, key, value). */
static char *build_obj(const char *field, int n, void (*gen)(int i, char *k, size_t kn, char *v, size_t vn))
{
	size_t cap = 64 + (size_t)n * 300 + 200000, o = 0;
	char *b = malloc(cap), *k = malloc(100000), *v = malloc(200000);
	int i;

	ck_assert_ptr_nonnull(b);
	o += (size_t)snprintf(b + o, cap - o, "{\"%s\":{", field);
	for (i = 0; i < n; i++) {
		gen(i, k, 100000, v, 200000);
		o += (size_t)snprintf(b + o, cap - o, "%s\"%s\":\"%s\"", i ? "," : "", k, v);
		ck_assert_uint_lt(o, cap);
	}
	snprintf(b + o, cap - o, "}}");
	free(k);
	free(v);
	return b;
}

static void gen_label(int i, char *k, size_t kn, char *v, size_t vn)
{
	snprintf(k, kn, "k%d", i);
	snprintf(v, vn, "v%d", i);
}

static void gen_env(int i, char *k, size_t kn, char *v, size_t vn)
{
	snprintf(k, kn, "E%d", i);
	snprintf(v, vn, "%d", i);
}

/* Two entries whose NAME=VALUE\0 come to env_total bytes together ("A0=", value, NUL). */
static size_t env_total;
static void gen_env_big(int i, char *k, size_t kn, char *v, size_t vn)
{
	size_t len = env_total / 2 - 3;		/* the value's length + 1 */

	snprintf(k, kn, "A%d", i);
	ck_assert_uint_lt(len, vn);
	memset(v, 'x', len - 1);
	v[len - 1] = '\0';
}

static void gen_long_key(int i, char *k, size_t kn, char *v, size_t vn)
{
	size_t len = 63 + (size_t)i;

	ck_assert_uint_lt(len, kn);
	memset(k, 'k', len);
	k[len] = '\0';
	snprintf(v, vn, "v");
}

static void gen_long_value(int i, char *k, size_t kn, char *v, size_t vn)
{
	size_t len = 128 + (size_t)i;

	snprintf(k, kn, "k%d", i);
	ck_assert_uint_lt(len, vn);
	memset(v, 'v', len);
	v[len] = '\0';
}

START_TEST(spec_bounds)
{
	struct kiln_err err = { { 0 } };
	struct sched_spec s;
	char *b;

	b = build_obj("labels", 5, gen_label);
	ck_assert_msg(spec_parse(b, &s, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(s.nlabels, 5);
	ck_assert_str_eq(s.labels[4].key, "k4");
	sched_spec_free(&s);
	free(b);

	b = build_obj("labels", 6, gen_label);
	ck_assert_int_eq(spec_parse(b, &s, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "labels has 6 entries (at most 5)");
	free(b);

	b = build_obj("env", 256, gen_env);
	ck_assert_msg(spec_parse(b, &s, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(s.nenv, 256);
	sched_spec_free(&s);
	free(b);

	b = build_obj("env", 257, gen_env);
	ck_assert_int_eq(spec_parse(b, &s, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "env has 257 entries (at most 256)");
	free(b);

	/* A key of 63 bytes is the longest; 64 is refused, shown cut after 48 bytes. */
	b = build_obj("labels", 1, gen_long_key);
	ck_assert_msg(spec_parse(b, &s, &err) == 0, "%s", err.msg);
	sched_spec_free(&s);
	free(b);
	b = build_obj("labels", 2, gen_long_key);
	ck_assert_int_eq(spec_parse(b, &s, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "label key \"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk\"... is 64 bytes (at most 63)");
	free(b);

	b = build_obj("labels", 2, gen_long_value);
	ck_assert_int_eq(spec_parse(b, &s, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "label \"k1\" value is 129 bytes (at most 128)");
	free(b);

	/* env: NAME=VALUE\0 of all entries, 128 KiB at most. */
	env_total = 128 * 1024;
	b = build_obj("env", 2, gen_env_big);
	ck_assert_msg(spec_parse(b, &s, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(s.nenv, 2);
	sched_spec_free(&s);
	free(b);
	env_total = 128 * 1024 + 2;
	b = build_obj("env", 2, gen_env_big);
	ck_assert_int_eq(spec_parse(b, &s, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "env is 131074 bytes in all (at most 131072, counting NAME=VALUE and a NUL for each)");
	free(b);
}
END_TEST

START_TEST(spec_body_size)
{
	struct kiln_err err = { { 0 } };
	struct sched_spec s;
	size_t n = SCHED_BODY_MAX;
	char *b = malloc(n + 1);

	/* A body of exactly the limit is parsed (here: an object padded with spaces). */
	memset(b, ' ', n + 1);
	b[0] = '{';
	b[n - 1] = '}';
	ck_assert_msg(sched_spec_from_json(b, n, &s, &err) == 0, "%s", err.msg);
	sched_spec_free(&s);
	b[n] = '}';
	b[n - 1] = ' ';
	ck_assert_int_eq(sched_spec_from_json(b, n + 1, &s, &err), -E2BIG);
	ck_assert_str_eq(err.msg, "request body is 262145 bytes (at most 262144)");
	/* Not NUL-terminated: only len bytes are read. */
	memcpy(b, "{\"vcpus\":3}XXXX", 15);
	ck_assert_int_eq(sched_spec_from_json(b, 11, &s, &err), 0);
	ck_assert_uint_eq(s.vcpus, 3);
	sched_spec_free(&s);
	free(b);
}
END_TEST

START_TEST(label_env_checks)
{
	struct kiln_err err = { { 0 } };

	ck_assert_int_eq(sched_label_check("a", 1, "b", 1, &err), 0);
	ck_assert_int_eq(sched_label_check("a\0b", 3, "", 0, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "label key \"a\\x00b\" has \"\\x00\"; keys are 1-63 bytes of [a-zA-Z0-9._/-]");
	ck_assert_int_eq(sched_label_check("a\"\\", 3, "", 0, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "label key \"a\\\"\\\\\" has \"\\\"\"; keys are 1-63 bytes of [a-zA-Z0-9._/-]");
	ck_assert_int_eq(sched_env_check("HOME", 4, "/root", 5, &err), 0);
	ck_assert_int_eq(sched_env_check("_", 1, "", 0, &err), 0);
	ck_assert_int_eq(sched_env_check("a\0", 2, "", 0, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "env name \"a\\x00\" is not a variable name; names match [A-Za-z_][A-Za-z0-9_]*");
}
END_TEST

/* ---- durations --------------------------------------------------------------- */

static const struct {
	const char *text;
	uint64_t ms;
} good_durations[] = {
	{ "30s", 30 * SEC }, { "5m", 5 * MIN }, { "1h", HOUR }, { "1h30m", HOUR + 30 * MIN },
	{ "90s", 90 * SEC }, { "500ms", 500 }, { "2d", 2 * DAY }, { "1d12h", DAY + 12 * HOUR },
	{ "1m30s500ms", MIN + 30 * SEC + 500 }, { "1ms", 1 }, { "365d", 365 * DAY }, { "8760h", 365 * DAY },
	{ "0h5m", 5 * MIN }, { "600s", 600 * SEC }, { "007s", 7 * SEC }, { "1d1h1m1s1ms", DAY + HOUR + MIN + SEC + 1 },
	{ "31536000000ms", 365 * DAY },
};

START_TEST(duration_good)
{
	struct kiln_err err = { { 0 } };
	uint64_t ms = 0;

	ck_assert_msg(sched_parse_duration(good_durations[_i].text, &ms, &err) == 0, "%s: %s",
		      good_durations[_i].text, err.msg);
	ck_assert_uint_eq(ms, good_durations[_i].ms);
}
END_TEST

static const struct {
	const char *text;
	const char *msg;
} bad_durations[] = {
	{ "", "duration is empty; write a duration such as 30s, 5m, 1h30m or 500ms" },
	{ "-5m", "duration \"-5m\" has a sign; write a positive duration such as 30s, 5m, 1h30m or 500ms" },
	{ "+5m", "duration \"+5m\" has a sign; write a positive duration such as 30s, 5m, 1h30m or 500ms" },
	{ " 5m", "duration \" 5m\" has a space; write it without, such as 1h30m" },
	{ "5m ", "duration \"5m \" has a space; write it without, such as 1h30m" },
	{ "5 m", "duration \"5 m\" has a space; write it without, such as 1h30m" },
	{ "1h 30m", "duration \"1h 30m\" has a space; write it without, such as 1h30m" },
	{ "5", "duration \"5\" has no unit after 5; write d, h, m, s or ms, such as 30s, 5m, 1h30m or 500ms" },
	{ "1h30", "duration \"1h30\" has no unit after 30; write d, h, m, s or ms, such as 30s, 5m, 1h30m or 500ms" },
	{ "5M", "duration \"5M\" has an unknown unit \"M\"; use d, h, m, s or ms" },
	{ "5min", "duration \"5min\" has an unknown unit \"min\"; use d, h, m, s or ms" },
	{ "2w", "duration \"2w\" has an unknown unit \"w\"; use d, h, m, s or ms" },
	{ "1.5h", "duration \"1.5h\" has a fraction; write whole units, such as 1h30m or 1500ms" },
	{ "1,5h", "duration \"1,5h\" has a fraction; write whole units, such as 1h30m or 1500ms" },
	{ "0s", "duration \"0s\" is zero; it must be above zero, such as 30s, 5m, 1h30m or 500ms" },
	{ "0m0s", "duration \"0m0s\" is zero; it must be above zero, such as 30s, 5m, 1h30m or 500ms" },
	{ "30m1h",
	  "duration \"30m1h\" repeats a unit or puts a smaller one first; write each once, largest first, such as 1h30m" },
	{ "1m1m",
	  "duration \"1m1m\" repeats a unit or puts a smaller one first; write each once, largest first, such as 1h30m" },
	{ "366d", "duration \"366d\" is too long (at most 365d)" },
	{ "365d1ms", "duration \"365d1ms\" is too long (at most 365d)" },
	{ "8761h", "duration \"8761h\" is too long (at most 365d)" },
	{ "99999999999999999999s", "duration \"99999999999999999999s\" is too long (at most 365d)" },
	{ "18446744073709551617ms", "duration \"18446744073709551617ms\" is too long (at most 365d)" },
	{ "abc", "duration \"abc\" is not a duration; write a number and a unit, such as 30s, 5m, 1h30m or 500ms" },
	{ "ms", "duration \"ms\" is not a duration; write a number and a unit, such as 30s, 5m, 1h30m or 500ms" },
	{ "5m!", "duration \"5m!\" is not a duration; write a number and a unit, such as 30s, 5m, 1h30m or 500ms" },
	{ "5\xc3\xa9", "duration \"5\\xc3\\xa9\" is not a duration; write a number and a unit, such as 30s, 5m, 1h30m or 500ms" },
	{ "1h\n", "duration \"1h\\x0a\" has a space; write it without, such as 1h30m" },
	{ "00000000000000000000000000000000000000000000000000000000000000001s",
	  "duration \"000000000000000000000000000000000000000000000000\"... is 66 bytes long (at most 64)" },
};

START_TEST(duration_bad)
{
	struct kiln_err err = { { 0 } };
	uint64_t ms = 12345;

	ck_assert_int_eq(sched_parse_duration(bad_durations[_i].text, &ms, &err), -EINVAL);
	ck_assert_str_eq(err.msg, bad_durations[_i].msg);
	assert_printable(err.msg);
	ck_assert_uint_eq(ms, 12345);
}
END_TEST

START_TEST(timeout_parse)
{
	struct kiln_err err = { { 0 } };
	struct sched_timeout t;

	ck_assert_int_eq(sched_parse_timeout("session", &t, &err), 0);
	ck_assert_int_eq(t.kind, SCHED_TIMEOUT_SESSION);
	ck_assert_uint_eq(t.ms, 0);
	ck_assert_int_eq(sched_parse_timeout("15m", &t, &err), 0);
	ck_assert_int_eq(t.kind, SCHED_TIMEOUT_DURATION);
	ck_assert_uint_eq(t.ms, 15 * MIN);
	ck_assert_int_eq(sched_parse_timeout("Session", &t, &err), -EINVAL);
	ck_assert_str_eq(err.msg,
			 "timeout \"Session\" is neither \"session\" nor a duration such as 30s, 5m, 1h30m or 500ms");
	ck_assert_int_eq(sched_parse_timeout("sessions", &t, &err), -EINVAL);
	ck_assert_str_eq(err.msg,
			 "timeout \"sessions\" is neither \"session\" nor a duration such as 30s, 5m, 1h30m or 500ms");
	ck_assert_int_eq(sched_parse_timeout("-1s", &t, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "timeout \"-1s\" has a sign; write a positive duration such as 30s, 5m, 1h30m or 500ms");
	ck_assert_int_eq(sched_parse_timeout("", &t, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "timeout is empty; write a duration such as 30s, 5m, 1h30m or 500ms");
}
END_TEST

START_TEST(duration_format)
{
	static const struct {
		uint64_t ms;
		const char *text;
	} rows[] = {
		{ 0, "0s" }, { 1, "1ms" }, { 999, "999ms" }, { SEC, "1s" }, { 90 * SEC, "1m30s" },
		{ HOUR + 30 * MIN, "1h30m" }, { 2 * DAY, "2d" }, { 1500, "1s500ms" }, { DAY + 1, "1d1ms" },
		{ 365 * DAY, "365d" }, { UINT64_MAX, "213503982334d14h25m51s615ms" },
	};
	char buf[32];
	int i;

	for (i = 0; i < ROWS(rows); i++)
		ck_assert_str_eq(sched_format_duration(rows[i].ms, buf, sizeof(buf)), rows[i].text);
	/* A short buffer is cut, never overrun. */
	ck_assert_str_eq(sched_format_duration(HOUR + 30 * MIN, buf, 3), "1h");
}
END_TEST

/* format then parse gives the value back, across the whole range. */
START_TEST(duration_round_trip)
{
	struct kiln_err err = { { 0 } };
	uint64_t x = 1, ms;
	char buf[32];
	int i;

	for (i = 0; i < 20000; i++) {
		uint64_t v = x % SCHED_DURATION_MAX_MS + 1;

		x = x * 6364136223846793005ull + 1442695040888963407ull;
		if (i % 3 == 0)
			v -= v % SEC;
		if (i % 7 == 0)
			v -= v % MIN;
		if (!v)
			v = 1;
		ck_assert_msg(sched_parse_duration(sched_format_duration(v, buf, sizeof(buf)), &ms, &err) == 0,
			      "%s: %s", buf, err.msg);
		ck_assert_uint_eq(ms, v);
	}
}
END_TEST

START_TEST(time_format)
{
	char buf[40];

	ck_assert_str_eq(sched_format_time(0, buf, sizeof(buf)), "1970-01-01T00:00:00Z");
	ck_assert_str_eq(sched_format_time(NOW, buf, sizeof(buf)), "2027-01-15T08:00:00Z");
	ck_assert_str_eq(sched_format_time(1796550139576ull, buf, sizeof(buf)), "2026-12-06T09:42:19.576Z");
	ck_assert_str_eq(sched_format_time(UINT64_MAX, buf, sizeof(buf)), "@18446744073709551615 ms");
}
END_TEST

TCase *tcase_sched_spec(void)
{
	TCase *tc = tcase_create("spec");

	tcase_add_test(tc, spec_defaults);
	tcase_add_test(tc, spec_full);
	tcase_add_test(tc, spec_edges);
	tcase_add_test(tc, spec_secrets);
	tcase_add_loop_test(tc, spec_bad, 0, ROWS(bad_bodies));
	tcase_add_test(tc, spec_bounds);
	tcase_add_test(tc, spec_body_size);
	tcase_add_test(tc, label_env_checks);
	return tc;
}

TCase *tcase_sched_duration(void)
{
	TCase *tc = tcase_create("duration");

	tcase_add_loop_test(tc, duration_good, 0, ROWS(good_durations));
	tcase_add_loop_test(tc, duration_bad, 0, ROWS(bad_durations));
	tcase_add_test(tc, timeout_parse);
	tcase_add_test(tc, duration_format);
	tcase_add_test(tc, duration_round_trip);
	tcase_add_test(tc, time_format);
	return tc;
}
