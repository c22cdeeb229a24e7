/*
 * kilnd's registry: what it knows about sandboxes, their events and usage,
 * API tokens and templates, persisted in one SQLite file (WAL mode) so that a
 * restarted kilnd re-adopts what still runs. docs/kilnd.md ("The registry")
 * documents the schema.
 *
 * Every function returns 0 or -errno and fills err (may be NULL) with one
 * line that names the problem and the fix. Every state change is one
 * transaction: it happens whole or not at all. Times are milliseconds since
 * the Unix epoch and come from the caller (now_ms), so tests inject the clock.
 * Strings are copied into the structs below; nothing of SQLite's leaks out.
 * A struct reg is used by one thread at a time.
 */
#ifndef KILN_REGISTRY_H
#define KILN_REGISTRY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "err.h"

#define REG_ID_LEN		28	/* sbx_ + 3-letter region + _ + 20 base32 */
#define REG_ID_MAX		(REG_ID_LEN + 1)
#define REG_LABELS_MAX		5	/* Deno's limits: 5 labels, key 64, value 128 bytes */
#define REG_LABEL_KEY_MAX	64
#define REG_LABEL_VALUE_MAX	128
#define REG_PATH_MAX		256	/* with the NUL */
#define REG_KIND_MAX		32	/* an event kind, [a-z_], with the NUL */
#define REG_DETAIL_MAX		1024	/* an event's detail, with the NUL */
#define REG_TOKEN_ID_MAX	17	/* tok_ + 12 base32, with the NUL */
#define REG_TOKEN_MAX		48	/* ddo_ + 43 base62, with the NUL */
#define REG_IMAGE_MAX		65	/* [a-z0-9._-]{1,64}, with the NUL */
#define REG_SHA256_HEX		65	/* 64 lowercase hex digits, with the NUL */

struct reg;

enum reg_state {
	REG_CREATING,
	REG_RUNNING,
	REG_STOPPING,
	REG_STOPPED,	/* ended */
	REG_FAILED,	/* ended */
	REG_STATE_COUNT
};

/* Bits for a state filter: REG_MASK(REG_RUNNING) | ...; 0 means all. */
#define REG_MASK(s)	(1u << (s))
/* Sandboxes that may still hold a VMM, sockets or files: what a restart re-adopts. */
#define REG_LIVE	(REG_MASK(REG_CREATING) | REG_MASK(REG_RUNNING) | REG_MASK(REG_STOPPING))

enum reg_end {
	REG_END_NONE,
	REG_END_KILLED,
	REG_END_TIMED_OUT,
	REG_END_OOM,
	REG_END_VMM_CRASHED,
	REG_END_CREATE_FAILED,
	REG_END_SESSION_ENDED,	/* its creating connection went away */
	REG_END_LOST,		/* its VMM was gone when kilnd restarted */
	REG_END_SHUTDOWN,	/* the guest powered off */
	REG_END_COUNT
};

enum reg_timeout { REG_TIMEOUT_SESSION, REG_TIMEOUT_DURATION, REG_TIMEOUT_COUNT };

struct reg_label {
	char key[REG_LABEL_KEY_MAX + 1];
	char value[REG_LABEL_VALUE_MAX + 1];
};

/* What kilnd needs to find a VMM again after a restart. */
struct reg_vmm {
	pid_t pid;			/* 0: none recorded yet */
	uint64_t start_time;		/* /proc/PID/stat field 22, clock ticks after boot */
	char control_path[REG_PATH_MAX];
	char vsock_path[REG_PATH_MAX];
	char run_dir[REG_PATH_MAX];
};

/* Volumes: ext4 files kilnd keeps, attached to sandboxes at create (reg_volume.c). */
#define REG_VOLS_MAX		4		/* attached to one sandbox: its template has four slots */
#define REG_VOL_PATH_MAX	257		/* a guest mount path, with the NUL */
#define REG_VOL_MIN_BYTES	(300ull << 20)
#define REG_VOL_MAX_BYTES	(20ull << 30)

struct reg_attach {
	char volume[REG_IMAGE_MAX];	/* names as images: [a-z0-9._-]{1,64} */
	char path[REG_VOL_PATH_MAX];	/* where the guest mounts it */
	int readonly;
};

struct reg_volume {
	char name[REG_IMAGE_MAX];
	uint64_t size_bytes;
	int64_t created_ms;
	int64_t metered_ms;		/* mib_ms counts up to here */
	uint64_t mib_ms;		/* MiB x milliseconds of size before metered_ms */
	unsigned writers, readers;	/* live attachments */
	char writer[REG_ID_MAX];	/* the sandbox attached writable, "" if none */
};

struct reg_sandbox {
	char id[REG_ID_MAX];
	char image[REG_IMAGE_MAX];	/* what it boots: "minimal", "debian", ... */
	enum reg_state state;
	uint32_t memory_mb;
	uint32_t vcpus;
	enum reg_timeout timeout_kind;
	int64_t timeout_ms;		/* the duration asked for; 0 for session */
	int64_t stop_at_ms;		/* 0: none */
	int64_t created_ms;
	int64_t ended_ms;		/* 0 while not ended */
	enum reg_end end_reason;
	struct reg_label labels[REG_LABELS_MAX];	/* sorted by key */
	unsigned n_labels;
	struct reg_vmm vmm;
	uint64_t cpu_ns;		/* usage, kept after the sandbox ends */
	uint64_t mem_mb_ms;		/* memory_mb x milliseconds alive */
	struct reg_attach vols[REG_VOLS_MAX];	/* released when it ends */
	unsigned n_vols;
	int net;			/* it has a network namespace (issue 16) */
	const char *allow_net;		/* insert only: its allow_net as a JSON array (NULL: "[]"); reg_sandbox_allow_net reads it */
	const char *secrets;		/* insert only: its secrets as a JSON array of sealed values (NULL: "[]");
					 * reg_sandbox_secrets reads it. Never plain values: kilnd seals them. */
};

struct reg_event {
	int64_t seq;			/* increasing; page with after_seq */
	int64_t at_ms;
	char kind[REG_KIND_MAX];
	char detail[REG_DETAIL_MAX];
};

struct reg_token {
	char id[REG_TOKEN_ID_MAX];
	int64_t created_ms;
	int64_t last_used_ms;		/* 0: never */
	int64_t revoked_ms;		/* 0: valid */
};

struct reg_template {
	char image[REG_IMAGE_MAX];
	uint32_t memory_mb;
	uint32_t vcpus;
	char path[REG_PATH_MAX];
	char kernel_sha256[REG_SHA256_HEX];
	char initramfs_sha256[REG_SHA256_HEX];
	int64_t created_ms;
};

/*
 * Volumes. create: a new row (-EEXIST if the name is taken); size within
 * REG_VOL_MIN_BYTES..REG_VOL_MAX_BYTES. resize: grow only, and only while
 * nothing has it attached (-EBUSY). delete: only while nothing has it
 * attached (-EBUSY). A sandbox attaches volumes in reg_sandbox_insert: one
 * writer, or any number of readers, at a time (-EBUSY naming who has it);
 * an ended sandbox lets go of them.
 */
int reg_volume_create(struct reg *r, const char *name, uint64_t size_bytes, int64_t now_ms, struct kiln_err *err);
int reg_volume_get(struct reg *r, const char *name, struct reg_volume *out, struct kiln_err *err);
int reg_volume_list(struct reg *r, struct reg_volume **out, size_t *n, struct kiln_err *err);
int reg_volume_resize(struct reg *r, const char *name, uint64_t size_bytes, int64_t now_ms, struct kiln_err *err);
int reg_volume_delete(struct reg *r, const char *name, struct kiln_err *err);
/* Its usage so far: size x time since it was made, in GiB-hours. */
double reg_volume_gib_hours(const struct reg_volume *v, int64_t now_ms);
int reg_volume_name_check(const char *name, struct kiln_err *err);

/* Names as stored and shown ("running", "timed_out", "session"); NULL if out of range. */
const char *reg_state_name(enum reg_state s);
const char *reg_end_name(enum reg_end e);
const char *reg_timeout_name(enum reg_timeout t);

/*
 * Open the registry at path, creating it owner-only (0600) if missing, and
 * bring its schema up to this build's version. Refuses a symlink, anything
 * but a regular file, a file of another owner, a file that is not SQLite or
 * not kiln's, and a schema newer than this build knows. The directory is the
 * caller's to create and protect.
 */
int reg_open(struct reg **out, const char *path, struct kiln_err *err);
/* Close it (NULL is fine). */
void reg_close(struct reg *r);

/* Mint a sandbox id, "sbx_" + region ([a-z]{3}) + "_" + 20 base32 (getrandom). */
int reg_sandbox_id_new(const char *region, char id[REG_ID_MAX], struct kiln_err *err);
/* 0 if id has the shape of a sandbox id, else -EINVAL with a message. */
int reg_sandbox_id_check(const char *id, struct kiln_err *err);

/*
 * Record a new sandbox in state creating with its labels, a zero usage row
 * and a "created" event. Reads id, memory_mb, vcpus, timeout_kind,
 * timeout_ms, stop_at_ms, labels and n_labels of sb. -EEXIST if the id is taken.
 */
int reg_sandbox_insert(struct reg *r, const struct reg_sandbox *sb, int64_t now_ms, struct kiln_err *err);

/*
 * Move a sandbox to state, with an event in the same transaction: the
 * reason's name when one is given ("killed"), else the state's name
 * ("running"), with detail (may be NULL or ""). Stopping may carry the
 * reason; stopped and failed need one (given now or with stopping) and stamp
 * ended_at. -EALREADY if the sandbox has already ended, -EINVAL for a move
 * that goes backwards.
 */
int reg_sandbox_set_state(struct reg *r, const char *id, enum reg_state state, enum reg_end reason,
			  const char *detail, int64_t now_ms, struct kiln_err *err);

/* Record the sandbox's VMM (pid, start time, sockets, run dir); not once it has ended. */
int reg_sandbox_set_vmm(struct reg *r, const char *id, const struct reg_vmm *vmm, struct kiln_err *err);

/* Set stop_at (an extend), with an "extended" event; not once it has ended. */
int reg_sandbox_set_stop_at(struct reg *r, const char *id, int64_t stop_at_ms, int64_t now_ms,
			    struct kiln_err *err);

/* One sandbox by id; -ENOENT if unknown. */
int reg_sandbox_get(struct reg *r, const char *id, struct reg_sandbox *out, struct kiln_err *err);

/*
 * Sandboxes whose state is in state_mask (0: any) and that carry every one
 * of the n_filters labels (key and value equal), oldest first, into a new
 * array (*out, free() it) of *n entries.
 */
int reg_sandbox_list(struct reg *r, unsigned state_mask, const struct reg_label *filters, size_t n_filters,
		     struct reg_sandbox **out, size_t *n, struct kiln_err *err);

/* The sandboxes a restart must re-adopt or clean up: reg_sandbox_list with REG_LIVE. */
int reg_sandbox_list_live(struct reg *r, struct reg_sandbox **out, size_t *n, struct kiln_err *err);

/* How many sandboxes are in each state (for /metrics), without reading them. */
int reg_sandbox_count(struct reg *r, uint64_t counts[REG_STATE_COUNT], struct kiln_err *err);

/* Delete sandboxes that ended before ended_before_ms, with their labels, events and usage. */
int reg_sandbox_prune(struct reg *r, int64_t ended_before_ms, size_t *deleted, struct kiln_err *err);

/* Append an event; kind is [a-z_]{1,31}, detail text (may be NULL) under REG_DETAIL_MAX bytes. */
/* A sandbox's allow_net, as the JSON array text it was recorded with (malloc'd, the caller frees). */
int reg_sandbox_allow_net(struct reg *r, const char *id, char **json, struct kiln_err *err);
/* A sandbox's secrets, as the JSON array text it was recorded with (sealed; malloc'd, the caller frees). */
int reg_sandbox_secrets(struct reg *r, const char *id, char **json, struct kiln_err *err);

int reg_event_add(struct reg *r, const char *id, const char *kind, const char *detail, int64_t now_ms,
		  struct kiln_err *err);

/* Up to max (1-10000) events of a sandbox with seq > after_seq, oldest first, into a new array. */
int reg_event_list(struct reg *r, const char *id, int64_t after_seq, size_t max, struct reg_event **out,
		   size_t *n, struct kiln_err *err);

/* Add to a sandbox's usage (also after it ended); -EOVERFLOW past INT64_MAX. */
int reg_usage_add(struct reg *r, const char *id, uint64_t cpu_ns, uint64_t mem_mb_ms, struct kiln_err *err);

/*
 * Create an API token: the plaintext (ddo_ + 43 base62) goes to token once and
 * only its SHA-256 is stored; id names it for list and revoke.
 */
int reg_token_create(struct reg *r, int64_t now_ms, char token[REG_TOKEN_MAX], char id[REG_TOKEN_ID_MAX],
		     struct kiln_err *err);
/*
 * 0 (and its id, if id is not NULL, and last_used stamped) if token is a
 * valid, unrevoked token; -EACCES otherwise. Hashes are compared in constant time.
 */
int reg_token_verify(struct reg *r, const char *token, int64_t now_ms, char id[REG_TOKEN_ID_MAX],
		     struct kiln_err *err);
/* Revoke a token by id; -ENOENT if unknown, -EALREADY if already revoked. */
int reg_token_revoke(struct reg *r, const char *id, int64_t now_ms, struct kiln_err *err);
/* All tokens, oldest first, into a new array (free() it). */
int reg_token_list(struct reg *r, struct reg_token **out, size_t *n, struct kiln_err *err);

/* Insert or replace the template of (image, memory_mb, vcpus), created_ms = now_ms. */
int reg_template_put(struct reg *r, const struct reg_template *t, int64_t now_ms, struct kiln_err *err);
/* -ENOENT if there is none for that shape. */
int reg_template_get(struct reg *r, const char *image, uint32_t memory_mb, uint32_t vcpus,
		     struct reg_template *out, struct kiln_err *err);
int reg_template_list(struct reg *r, struct reg_template **out, size_t *n, struct kiln_err *err);
int reg_template_delete(struct reg *r, const char *image, uint32_t memory_mb, uint32_t vcpus,
			struct kiln_err *err);

/* A process's start time, field 22 of /proc/PID/stat; -ESRCH if it is gone. */
int reg_proc_start_time(pid_t pid, uint64_t *out, struct kiln_err *err);
/* The same from the text of a stat file (len bytes), for tests; -EINVAL if malformed. */
int reg_parse_start_time(const char *stat, size_t len, uint64_t *out);
/* Field want (3 and up, as proc(5) numbers them) of a stat file's text as a number; -EINVAL if malformed. */
int reg_parse_stat_field(const char *stat, size_t len, unsigned want, uint64_t *out);
/* utime + stime of a process (fields 14 and 15), in clock ticks; -ESRCH if it is gone. */
int reg_proc_cpu_ticks(pid_t pid, uint64_t *out, struct kiln_err *err);

#endif
