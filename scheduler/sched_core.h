/*
 * The scheduler's pure core (issue 13): what kilnd decides about a sandbox
 * before and while it runs, with no I/O, no clock and no KVM of its own.
 *
 *   - requests: kiln's REST create body (JSON) checked field by field into a
 *     struct sched_spec (sched_spec.c);
 *   - durations: "30s", "5m", "1h30m", "500ms", "2d" and "session" (sched_time.c);
 *   - admission: committed memory against the host's MemTotal less a reserve,
 *     times an overcommit ratio, and a per-sandbox vCPU limit (sched.c);
 *   - lifetimes: stop_at, extension, the maximum lifetime and session grace,
 *     all against a clock the caller passes in (sched.c);
 *   - the host's MemTotal and CPU count, read once at start (sched_host.c).
 *
 * Every function that can fail returns -errno and fills a struct kiln_err
 * (may be NULL) with one line a user can read, naming the field and the fix:
 * "memory_mb 600 is out of range (768-4096)". Strings taken from a request
 * are quoted in messages with anything outside printable ASCII escaped, so a
 * message is always one line of printable ASCII. The errno says which HTTP
 * status fits: -EINVAL 400, -E2BIG 413, -ENOSPC 503, -ETIMEDOUT 409 (the
 * sandbox is already over), -ENOMEM 500.
 *
 * Times are milliseconds since the Unix epoch (what the API reports as
 * stop_at_ms); durations are milliseconds. docs/kilnd.md is the user's
 * side of all this.
 */
#ifndef KILN_SCHED_CORE_H
#define KILN_SCHED_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

/* ---- requests -------------------------------------------------------------- */

#define SCHED_MEM_MIN_MB		768u
#define SCHED_MEM_MAX_MB		4096u
#define SCHED_MEM_DEFAULT_MB		1280u
#define SCHED_VCPUS_MIN			1u
#define SCHED_VCPUS_MAX			8u
#define SCHED_VCPUS_DEFAULT		2u
/* A create without "timeout" lives this long: `kiln create` returns at once. */
#define SCHED_TIMEOUT_DEFAULT_MS	(5 * 60 * 1000ull)

#define SCHED_BODY_MAX			(256 * 1024u)	/* bytes of a create body */
/* Deno Sandbox's limits, which the registry keeps too (REG_LABELS_MAX ...). */
#define SCHED_LABELS_MAX		5u
#define SCHED_LABEL_KEY_MAX		63u		/* bytes; at least 1 */
#define SCHED_LABEL_VALUE_MAX		128u		/* bytes */
#define SCHED_IMAGE_MAX			64u		/* bytes of an image name: a-z 0-9 . _ - */
#define SCHED_VOLS_MAX			4u		/* volumes one sandbox attaches */
#define SCHED_VOL_PATH_MAX		256u		/* bytes of a guest mount path */
#define SCHED_ENV_MAX			256u
/* NAME=VALUE\0 of every entry together, as the guest's environ holds them. */
#define SCHED_ENV_BYTES_MAX		(128 * 1024u)

enum sched_timeout_kind {
	SCHED_TIMEOUT_DURATION,		/* lives until stop_at */
	SCHED_TIMEOUT_SESSION,		/* lives while its creator is connected */
};

struct sched_timeout {
	enum sched_timeout_kind kind;
	uint64_t ms;			/* DURATION: how long from create; SESSION: 0 */
};

/* One label or environment entry; both strings are NUL-terminated and owned by the spec. */
struct sched_kv {
	char *key;
	char *value;
};

/* A create request, checked. Labels and env keep the order of the body. */
/* A volume attached at create: {"/data": "NAME"} or {"/data": {"volume": "NAME", "readonly": true}}. */
struct sched_vol {
	char path[SCHED_VOL_PATH_MAX + 1];
	char name[SCHED_IMAGE_MAX + 1];
	int readonly;
};

/*
 * A secret (issue 16): the guest sees NAME=KILN_SECRET_<hex> in its
 * environment, and kilnd's egress proxy puts value in place of that
 * placeholder in the request headers of HTTPS requests to hosts only.
 */
#define SCHED_SECRETS_MAX		32
#define SCHED_SECRET_NAME_MAX		64
#define SCHED_SECRET_VALUE_MAX		4096
#define SCHED_SECRET_HOSTS_MAX		16

struct sched_secret {
	char name[SCHED_SECRET_NAME_MAX + 1];
	char **hosts;			/* allow_net-style entries: NAME or *.DOMAIN, optional :PORT */
	size_t nhosts;
	char *value;			/* value_len bytes and a NUL; no NUL, CR or LF inside */
	size_t value_len;
};

struct sched_spec {
	char image[SCHED_IMAGE_MAX + 1];	/* "": the node's default; "root" says the same */
	int root_given;
	struct sched_vol vols[SCHED_VOLS_MAX];
	size_t nvols;
	unsigned memory_mb;
	unsigned vcpus;
	struct sched_timeout timeout;
	struct sched_kv *labels;
	size_t nlabels;
	struct sched_kv *env;
	size_t nenv;
	/*
	 * Where the guest may connect (sched_net.h's entries, checked). Empty (or not
	 * given): no outbound access at all.
	 */
	char **allow_net;
	size_t nallow;
	int allow_given;
	/* Secrets, in the order of the body; values are cleansed by sched_spec_free. */
	struct sched_secret *secrets;
	size_t nsecrets;
};

/* Fill *s with the defaults: 1280 MiB, 2 vCPUs, timeout 5m, no labels, no env. */
void sched_spec_init(struct sched_spec *s);

/*
 * Parse kiln's REST create body (len bytes, need not be NUL-terminated):
 * a JSON object with the optional fields image (string), memory_mb
 * (integer), vcpus (integer), timeout (string: "session" or a duration),
 * volumes (object of mount path to volume), labels and env
 * (objects of string to string), allow_net (array of entries) and secrets
 * (object of NAME to {"hosts": [HOST...], "value": "..."}; a name may not
 * also be an env key, and no message ever quotes a value); null means the default, an empty body means
 * all defaults. Unknown fields, duplicate keys, wrong types, values out of
 * range and trailing bytes are refused naming the field; malformed JSON
 * names jansson's line and column. Returns 0 with *out filled (free it with
 * sched_spec_free), -E2BIG for a body over SCHED_BODY_MAX, -EINVAL for
 * anything else wrong, -ENOMEM. On failure *out holds nothing.
 */
int sched_spec_from_json(const char *body, size_t len, struct sched_spec *out, struct kiln_err *err);

/* Free what *s owns and reset it to the defaults; safe on a spec that failed to parse. */
void sched_spec_free(struct sched_spec *s);

/*
 * Check one label: a key of 1-63 bytes of [a-zA-Z0-9._/-] and a value of at
 * most 128 bytes with no control bytes (below 0x20, or 0x7f). Lengths are
 * explicit so that an embedded NUL is caught. Returns 0 or -EINVAL. kilnd
 * uses it for the ?labels[k]=v filters of list too.
 */
int sched_label_check(const char *key, size_t klen, const char *value, size_t vlen, struct kiln_err *err);

/*
 * Check one environment entry: a name matching [A-Za-z_][A-Za-z0-9_]* and a
 * value with no NUL byte (any other byte is the user's). Returns 0 or -EINVAL.
 */
int sched_env_check(const char *name, size_t nlen, const char *value, size_t vlen, struct kiln_err *err);

/* ---- durations --------------------------------------------------------------- */

/* The longest duration accepted: far from overflow when added to any time. */
#define SCHED_DURATION_MAX_MS		(365 * 24 * 3600 * 1000ull)
#define SCHED_DURATION_TEXT_MAX		64u	/* bytes of a duration string */

/*
 * Parse a duration: one or more <digits><unit> with units from largest to
 * smallest, each at most once, no signs, spaces or fractions: d (24 h), h,
 * m, s, ms. "30s", "5m", "1h30m", "90s", "500ms", "2d", "1d12h". The total
 * must be above zero and at most 365d. Returns 0 with *ms set, or -EINVAL.
 */
int sched_parse_duration(const char *s, uint64_t *ms, struct kiln_err *err);

/* Parse a timeout: "session", or a duration as above. Returns 0 or -EINVAL. */
int sched_parse_timeout(const char *s, struct sched_timeout *out, struct kiln_err *err);

/*
 * Write ms as the largest units that say it exactly ("1h30m", "500ms",
 * "2d", "0s"), which sched_parse_duration reads back. Returns buf; n of 32
 * holds any value.
 */
char *sched_format_duration(uint64_t ms, char *buf, size_t n);

/* Write an epoch-ms time as UTC ISO 8601 ("2026-12-06T14:30:00Z", ".250Z" for ms). Returns buf; n >= 32. */
char *sched_format_time(uint64_t ms, char *buf, size_t n);

/* ---- admission ------------------------------------------------------------------ */

#define SCHED_MEM_OVERCOMMIT_DEFAULT	1.0
/* 2 so that the default 2-vCPU sandbox is admitted on a 1-CPU host. */
#define SCHED_VCPU_OVERCOMMIT_DEFAULT	2.0
#define SCHED_MEM_OVERCOMMIT_MAX	16.0
#define SCHED_VCPU_OVERCOMMIT_MAX	64.0

/* The node as kilnd sees it: the host's numbers and kilnd's --mem-reserve, --*-overcommit. */
struct sched_host {
	uint64_t mem_total_mb;		/* MemTotal (sched_host_probe) */
	uint64_t reserve_mb;		/* kept for the host and kilnd */
	double mem_overcommit;		/* capacity = (MemTotal - reserve) * this */
	double vcpu_overcommit;		/* a sandbox's vcpus at most cpus * this */
	unsigned cpus;
};

/*
 * Fill *h for a host with mem_total_mb and cpus: the reserve is a quarter of
 * MemTotal up to 1024 MiB, the overcommit ratios their defaults.
 */
void sched_host_init(struct sched_host *h, uint64_t mem_total_mb, unsigned cpus);

/* Check *h (ratios above 0 and at most their maximum, reserve below MemTotal, cpus >= 1). 0 or -EINVAL. */
int sched_host_check(const struct sched_host *h, struct kiln_err *err);

/* Memory that sandboxes may commit on h, in MiB: (MemTotal - reserve) * overcommit, floored. */
uint64_t sched_capacity_mb(const struct sched_host *h);

/* The largest vcpus value one sandbox may have on h: cpus * vcpu_overcommit, floored, at least 1. */
unsigned sched_vcpus_limit(const struct sched_host *h);

/* What is committed to sandboxes (running ones and the warm pool's). Start zeroed. */
struct sched_admit {
	uint64_t mem_mb;
	uint64_t vcpus;
	unsigned sandboxes;
};

/*
 * Admit a sandbox of memory_mb and vcpus on h: commit them to *a and return
 * 0; or return -ENOSPC when the memory does not fit now ("no room for 2048
 * MiB: 1536 MiB of 8192 MiB free for sandboxes (...)"), -EINVAL when vcpus
 * is above sched_vcpus_limit (it never fits on this node) or h is invalid.
 * *a is unchanged on failure.
 */
int sched_admit(struct sched_admit *a, const struct sched_host *h, unsigned memory_mb, unsigned vcpus,
		struct kiln_err *err);

/*
 * Give back what sched_admit committed. Returns 0, or -EINVAL (and changes
 * nothing) when more is released than is committed: a bug in the caller.
 */
int sched_release(struct sched_admit *a, unsigned memory_mb, unsigned vcpus);

/* MiB still free for sandboxes on h: capacity less what *a holds, 0 when overcommitted. */
uint64_t sched_free_mb(const struct sched_admit *a, const struct sched_host *h);

/* ---- lifetimes ----------------------------------------------------------------------- */

#define SCHED_MAX_LIFE_DEFAULT_MS	(24 * 3600 * 1000ull)
#define SCHED_SESSION_GRACE_DEFAULT_MS	(10 * 1000ull)

/* kilnd's --max-lifetime (0: none) and --session-grace. */
struct sched_life_policy {
	uint64_t max_life_ms;
	uint64_t session_grace_ms;
};

/*
 * One sandbox's lifetime. Plain fields, so the registry can persist them and
 * kilnd re-adopt them after a restart (where it calls sched_life_disconnect
 * for every session sandbox: their creators' connections died with it).
 */
struct sched_life {
	enum sched_timeout_kind kind;
	uint64_t created_ms;
	uint64_t stop_at_ms;		/* DURATION: the deadline */
	uint64_t max_at_ms;		/* created + max lifetime; UINT64_MAX for none */
	uint64_t grace_ms;		/* SESSION: from the policy at create */
	int creator_gone;		/* SESSION: the creator disconnected ... */
	uint64_t gone_ms;		/* ... at this time */
};

/* Why a sandbox is over, or SCHED_LIVE. */
enum sched_expiry {
	SCHED_LIVE,
	SCHED_EXPIRED_TIMEOUT,		/* stop_at passed */
	SCHED_EXPIRED_SESSION,		/* the creator left and the grace passed */
	SCHED_EXPIRED_MAX_LIFE,		/* the maximum lifetime passed */
};

/* "live", "timed out", "creator disconnected", "maximum lifetime reached". */
const char *sched_expiry_name(enum sched_expiry e);

/*
 * Start a lifetime at now_ms for timeout t under policy p: stop_at = now +
 * t->ms for a duration. Returns 0, or -EINVAL for a duration longer than the
 * maximum lifetime (naming both and kilnd --max-lifetime).
 */
int sched_life_init(struct sched_life *l, const struct sched_life_policy *p, const struct sched_timeout *t,
		    uint64_t now_ms, struct kiln_err *err);

/* sched_life_extend_* returned this: stop_at was capped by the maximum lifetime (err says so). */
#define SCHED_EXTEND_CAPPED	1

/*
 * Move stop_at to target_ms (an absolute time, the Deno SDK's stop_at_ms).
 * Never shortens: a target before the current stop_at leaves it. A target
 * past the maximum lifetime is capped to it and SCHED_EXTEND_CAPPED returned
 * with err saying so. l->stop_at_ms is the effective deadline afterwards.
 * Returns 0 or SCHED_EXTEND_CAPPED; -EINVAL for a session sandbox or a
 * target not after now_ms (nothing changes); -ETIMEDOUT when l is already
 * over at now_ms.
 */
int sched_life_extend_to(struct sched_life *l, uint64_t target_ms, uint64_t now_ms, struct kiln_err *err);

/* Extend to now_ms + dur_ms (`kiln extend ID 10m`); as sched_life_extend_to. dur_ms must be above 0. */
int sched_life_extend_by(struct sched_life *l, uint64_t dur_ms, uint64_t now_ms, struct kiln_err *err);

/* A session sandbox's creator disconnected at now_ms: it expires at now + grace unless it reconnects. */
void sched_life_disconnect(struct sched_life *l, uint64_t now_ms);

/*
 * The creator came back at now_ms: the grace is cancelled. Returns 0, or
 * -ETIMEDOUT when l is already over at now_ms (too late, nothing changes).
 * For a duration sandbox it only checks that.
 */
int sched_life_reconnect(struct sched_life *l, uint64_t now_ms, struct kiln_err *err);

/* Whether l is over at now_ms, and why (the earliest reason when several hold). */
enum sched_expiry sched_life_check(const struct sched_life *l, uint64_t now_ms);

/* The time at which l is over if nothing changes (arm a timer for it); UINT64_MAX for never. */
uint64_t sched_life_deadline(const struct sched_life *l);

/* ---- the host (I/O: the one part that reads files) ------------------------------------ */

/*
 * Read the host's MemTotal (MiB, floored) and its CPU count: meminfo is
 * /proc/meminfo's format ("MemTotal:  16303016 kB"), cpulist a CPU list as
 * in /sys/devices/system/cpu/online ("0-3,6,8-11"). NULL paths mean those
 * two files. Each file is read up to 64 KiB. Returns 0, or -errno with err
 * naming the file and what was wrong in it.
 */
int sched_host_probe(const char *meminfo, const char *cpulist, uint64_t *mem_total_mb, unsigned *cpus,
		     struct kiln_err *err);

/* Parse MemTotal out of meminfo text (len bytes). 0 or -EINVAL. */
int sched_parse_meminfo(const char *text, size_t len, uint64_t *mem_total_mb, struct kiln_err *err);

/* Count the CPUs in a CPU list ("0-3,6", a trailing newline allowed). 0 or -EINVAL. */
int sched_parse_cpulist(const char *text, size_t len, unsigned *cpus, struct kiln_err *err);

#endif
