/*
 * kilnd: kiln's node daemon (issue 13). One process per node serves kiln's
 * REST API (/v1, JSON) and the agent WebSocket on unix and TCP listeners
 * (libwebsockets), decides with the scheduler's core (scheduler/sched_core.h)
 * whether a sandbox fits and how long it lives, keeps what it knows in the
 * registry (scheduler/registry.h), and runs one kiln-vmm per sandbox.
 *
 * Threads: one event loop (libwebsockets) owns every struct kd_sbx, every
 * connection and the timers. What may block (booting a template, restoring
 * a VM and handing it its identity, dialling an agent) runs on a worker
 * thread as a struct kd_job and comes back to the loop through a queue
 * (jobs.c). The registry is shared under kd->reg_lock.
 *
 * Every resource a sandbox holds (its VMM, sockets, run dir, admission) is
 * released by one path, kd_sbx_end() (node.c), which is also what a restart
 * runs for a sandbox whose VMM died while kilnd was away.
 */
#ifndef KILN_KILND_H
#define KILN_KILND_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>
#include <libwebsockets.h>

#include "err.h"
#include "kd_egress.h"
#include "kd_netns.h"
#include "registry.h"
#include "sched_core.h"

#define KD_LISTEN_MAX		8
#define KD_PATH_MAX		REG_PATH_MAX
/* A state dir's path leaves room for run/<id>/vsock_<port> in a unix socket's 108 bytes. */
#define KD_STATE_DIR_MAX	48
#define KD_IMAGE_MINIMAL	"minimal"	/* the initramfs alone: busybox and the agent */
#define KD_IMAGES_MAX		32		/* --image and snapshots of volumes, minimal aside */
#define KD_IMAGE_USER		"app"		/* a disk image's commands run as this user */
#define KD_LAYER_DEFAULT	(10ull << 30)	/* a sandbox's writable layer, apparent size */
#define KD_LAYER_MIN		(64ull << 20)
#define KD_MIN_FREE_DEFAULT	(1ull << 30)	/* creates stop when the state dir has less free */
#define KD_SLOTS		REG_VOLS_MAX	/* volume slots in a disk image's template: /dev/vdb.. */
#define KD_SLOT_ARG_MAX		(KD_PATH_MAX + 96)
#define KD_VOL_JOBS_MAX		16		/* volumes being made, grown or snapshotted at once */
#define KD_AGENT_TIMEOUT_MS	60000		/* a restored agent answers IDENTITY within this */
#define KD_TEMPLATE_TIMEOUT_S	600		/* a template boot and snapshot */
#define KD_KILL_WAIT_MS		1000		/* a SIGKILLed VMM is gone within this */
#define KD_TICK_MS		100		/* VMM deaths and deadlines are checked this often */
#define KD_WS_BUF_MAX		(1u << 20)	/* bytes a tunnel holds each way before it pushes back */

struct kd_listen {
	int is_unix;
	char path[KD_PATH_MAX];		/* unix */
	char addr[64];			/* tcp */
	int port;
	struct lws_vhost *vh;
};

/*
 * An image sandboxes boot: "minimal" (no path), or a read-only ext4 root
 * joined in the guest with a writable layer of each sandbox's own
 * (--image NAME=PATH; image.c).
 */
struct kd_image {
	char name[REG_IMAGE_MAX];
	char path[KD_PATH_MAX];		/* resolved; "" for minimal */
	char sum_path[KD_PATH_MAX];	/* the SHA-256 recorded beside it; "" if none */
	char id[REG_SHA256_HEX];	/* that SHA-256, else a hash of its path, size, mtime and inode */
	uint64_t bytes;
	int verified;			/* its content matched sum_path (checked once, before a template boot) */
	int snapshot;			/* made from a volume (STATE/images/NAME.ext4); kilnd may remove it */
	int removed;			/* removed: its slot stays, for jobs that still point at it */
};

/* kilnd's flags (main.c). */
struct kd_conf {
	struct kd_listen listen[KD_LISTEN_MAX];
	unsigned nlisten;
	char state_dir[KD_PATH_MAX];
	char vmm[KD_PATH_MAX];		/* kiln-vmm */
	char kernel[KD_PATH_MAX];
	char initrd[KD_PATH_MAX];
	char region[4];			/* the sbx_<region>_ part of ids */
	gid_t sock_gid;			/* --socket-group: admitted on unix sockets; (gid_t)-1 none */
	struct sched_host host;
	struct sched_life_policy life;
	uint64_t prune_after_ms;	/* ended sandboxes' rows are kept this long */
	struct kd_image images[KD_IMAGES_MAX];	/* --image, and Debian's found beside kilnd */
	unsigned nimages;
	char default_image[REG_IMAGE_MAX];	/* a create that names none boots this */
	uint64_t layer_bytes;		/* --layer-size */
	uint64_t min_free_bytes;	/* --min-free: the state dir's floor */
	int no_net;			/* --no-net: sandboxes get no network device at all */
	char dns_upstream[64];		/* --dns-upstream: the resolver's upstream ("": /etc/resolv.conf) */
	char expose_listen[64];		/* --expose-listen ADDR:PORT: the ingress of exposed ports ("": none) */
	char expose_domain[96];		/* --expose-domain: exposed names are under it (default localhost) */
	char ssh_listen[64];		/* --ssh-listen ADDR:PORT: the SSH gateway (exposeSsh; "": none) */
	char ssh_hostname[96];		/* --ssh-hostname: what exposeSsh tells users to ssh to */
	char upstream_ca[512];		/* --upstream-ca: a PEM file of CAs trusted for secret hosts' upstreams,
					 * besides the system's store (tests) */
};

/* One sandbox as the loop sees it, from admission until kd_sbx_end. */
struct kd_sbx {
	struct kd_sbx *next;
	char id[REG_ID_MAX];
	char image[REG_IMAGE_MAX];
	enum reg_state state;		/* CREATING until its job is back, then RUNNING */
	unsigned memory_mb, vcpus;
	struct sched_life life;
	struct reg_vmm vmm;		/* pid 0 until the VMM runs */
	int pidfd;			/* -1: none */
	int is_child;			/* ours to reap (not re-adopted after a restart) */
	struct lws *creator;		/* the HTTP connection waiting for the create, or NULL */
	struct lws *session_conn;	/* SESSION: the creating connection while it lasts (a holder) */
	unsigned holders;		/* SESSION: connections that keep it alive */
	unsigned tunnels;		/* agent WebSockets open to it */
	int kill_asked;			/* killed while CREATING: ended when its job is back */
	int net;			/* it has a network namespace, served by kd->egress */
	uint64_t t0_ns;			/* create started (CLOCK_MONOTONIC) */
};

/* A warm pool (kilnd --pool MEM:VCPUS:N): VMs restored ahead of demand, agent connected, no identity yet. */
#define KD_POOLS_MAX		8
struct kd_pooled {
	struct kd_pooled *next;
	char id[REG_ID_MAX];		/* minted at fill: its run dir is run/ID */
	struct reg_vmm vmm;
	int pidfd;
	struct kac *agent;
	struct kd_netns net;		/* its namespace's sockets, until a sandbox takes it */
};
struct kd_pool {
	unsigned memory_mb, vcpus, size;
	unsigned filling, nready;
	struct kd_pooled *ready;
	uint64_t retry_at_ms;		/* after a failed fill */
};

/* Counters for GET /metrics. */
#define KD_HIST_BUCKETS		12
struct kd_metrics {
	uint64_t creates, create_failures, refusals, kills, timeouts, crashes;
	uint64_t hist[KD_HIST_BUCKETS + 1];	/* create latency; the last is +Inf */
	double hist_sum_s;
	uint64_t hist_count;
};

struct kd_job;
struct kd_tun;
struct kd_v3;
struct kd_ingress;
struct kd_egress;

struct kilnd {
	struct kd_conf conf;
	struct lws_context *ctx;
	struct reg *reg;
	pthread_mutex_t reg_lock;
	pthread_mutex_t tmpl_lock;	/* one template build at a time */
	char kernel_sha[REG_SHA256_HEX];
	char initrd_sha[REG_SHA256_HEX];
	struct sched_admit admit;
	struct kd_pool pools[KD_POOLS_MAX];
	unsigned npools;
	struct kd_sbx *sbx;		/* every sandbox not yet ended */
	struct kd_metrics m;
	lws_sorted_usec_list_t tick;
	pthread_mutex_t q_lock;		/* guards done */
	struct kd_job *done;		/* jobs back from their workers */
	struct kd_job *pending;		/* jobs out, the loop's list: a closed connection is unhooked */
	unsigned jobs_running;
	struct kd_tun *tunnels;		/* agent WebSockets (tunnel.c) */
	struct kd_v3 *v3s;		/* the Deno SDK's control sockets (v3.c) */
	struct kd_ingress *ingress;	/* exposed HTTP (ingress.c); NULL without --expose-listen */
	struct kd_ssh *ssh;		/* the SSH gateway (ssh.c); NULL without --ssh-listen */
	pthread_mutex_t vol_lock;	/* one host-side journal replay at a time */
	int net_ok;			/* sandboxes get a network namespace (kd_net_init) */
	char net_why[600];		/* why not, when not */
	struct kd_egress *egress;	/* the resolver and egress proxy (net_ok) */
	struct kd_ca *ca;		/* the node CA and secrets key (STATE/ca), when net_ok; NULL: no secrets */
	char ca_why[600];		/* why not, when net_ok and no ca */
	volatile int stopping;
};

/* ---- main.c ---- */
/* snprintf for paths: -ENAMETOOLONG (and buf cut) when the result does not fit. */
int kd_pathf(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
uint64_t kd_now_ms(void);
uint64_t kd_mono_ns(void);
/* A size: bytes, or a number with K, M, G or T (binary; an optional B or iB). 0, or -EINVAL. */
int kd_parse_size(const char *s, uint64_t *out);

/* ---- node.c: sandboxes ---- */
struct kd_sbx *kd_sbx_find(struct kilnd *kd, const char *id);
/*
 * Admit and start a sandbox for spec: a registry row in state creating and a
 * job that restores (building its template first if needed) and hands over
 * identity. creator is the HTTP connection to answer when it is back (the
 * holder of a session sandbox). 0 with *out, or -errno with err (-ENOSPC:
 * no room, -EINVAL: a spec this node refuses).
 */
int kd_sbx_create(struct kilnd *kd, const struct sched_spec *spec, struct lws *creator, struct kd_sbx **out,
		  struct kiln_err *err);
/* End a sandbox for reason: kill its VMM, remove its files, free its admission, record usage. Frees s. */
void kd_sbx_end(struct kilnd *kd, struct kd_sbx *s, enum reg_end reason, const char *detail);
/* A connection that held session sandboxes closed: start their grace. */
void kd_conn_closed(struct kilnd *kd, struct lws *wsi);
/* Holders of a session sandbox come and go (agent WebSockets, the creator). */
void kd_sbx_hold(struct kilnd *kd, struct kd_sbx *s);
void kd_sbx_unhold(struct kilnd *kd, struct kd_sbx *s);
/* Find every VMM the registry says runs: adopt what lives, end what died. */
int kd_readopt(struct kilnd *kd, struct kiln_err *err);
/* The periodic check: VMM deaths, deadlines. */
void kd_tick(lws_sorted_usec_list_t *sul);
/* Usage of a sandbox so far (running or ended). */
void kd_sbx_usage(const struct kd_sbx *s, uint64_t now_ms, uint64_t *cpu_ns, uint64_t *mem_mb_ms);
/* A sandbox's run dir and its sockets. */
int kd_run_dir(const struct kilnd *kd, const char *id, char *buf, size_t n);

/* ---- pool.c ---- */
/* Start fills for every pool below its size (admission permitting). */
void kd_pool_refill(struct kilnd *kd);
/* Take a warm VM of this shape, or NULL; its admission passes to the sandbox. */
struct kd_pooled *kd_pool_take(struct kilnd *kd, unsigned memory_mb, unsigned vcpus);
/*
 * Throw a warm VM away: SIGKILL its VMM (kill_it), close its pidfd and
 * agent, remove its run dir, free v. Its admission is the caller's to give
 * back (a taken VM's passed to the sandbox that failed to use it).
 */
void kd_pooled_discard(struct kilnd *kd, struct kd_pooled *v, int kill_it);
/* Pooled VMs that died: drop them (from the tick). Kill them all (at stop). */
void kd_pool_check(struct kilnd *kd);
void kd_pool_drain(struct kilnd *kd);

/* ---- image.c ---- */
/* SHA-256 of len bytes at p, as 64 hex digits; -ENOMEM if libcrypto fails. */
int kd_sha256_hex(const void *p, size_t len, char hex[REG_SHA256_HEX]);
/* SHA-256 of a file, as 64 hex digits. */
int kd_sha256_file(const char *path, char hex[REG_SHA256_HEX], struct kiln_err *err);
/* Do the first n bytes of s make an image name (1-64 of a-z 0-9 . _ -)? */
int kd_name_ok(const char *s, size_t n);
/* --image NAME=PATH. */
int kd_image_add(struct kd_conf *c, const char *arg, struct kiln_err *err);
/* At start: Debian's image beside kilnd (dir beside) unless --image gave some; each one's identity; the default. */
int kd_images_probe(struct kilnd *kd, const char *beside, struct kiln_err *err);
const struct kd_image *kd_image_find(const struct kilnd *kd, const char *name);
/* name (NULL or "": the default) as an image of this node, or -EINVAL naming the ones it has. */
int kd_image_lookup(const struct kilnd *kd, const char *name, const struct kd_image **out, struct kiln_err *err);
/* Check a disk image against its recorded SHA-256, once per kilnd (-EBADMSG naming it). */
int kd_image_verify(struct kilnd *kd, const struct kd_image *img, struct kiln_err *err);
/* Append "--disk PATH,ro" for a disk image to a NULL-terminated argv of max slots (buf holds the spec). */
void kd_image_disk_args(const struct kd_image *img, char **argv, size_t max, char *buf, size_t n);
/*
 * Run a tool (argv[0] on PATH, else in /usr/sbin or /sbin), output to log;
 * an exit status above ok_max fails, saying what it could not do.
 */
int kd_run_tool(char *const argv[], const char *log, const char *doing, int ok_max, struct kiln_err *err);
/* An empty, sparse ext4 writable layer of bytes at path (mke2fs, output to log). */
int kd_layer_make(const char *path, uint64_t bytes, const char *log, struct kiln_err *err);
/* -EDQUOT when the state dir's free space is below --min-free. */
int kd_disk_floor(const struct kilnd *kd, struct kiln_err *err);
json_t *kd_images_json(const struct kilnd *kd);
json_t *kd_image_json(const struct kilnd *kd, const struct kd_image *img);
/* A sparse copy of the file at from into a new file at to (0600); -errno with err. */
int kd_copy_sparse(const char *from, const char *to, struct kiln_err *err);
/* Register a snapshot image made at path (its .sha256 beside it). */
int kd_image_register(struct kilnd *kd, const char *name, const char *path, struct kiln_err *err);
/* DELETE /v1/images/NAME: a snapshot image no live sandbox boots, with its templates. */
int kd_image_remove(struct kilnd *kd, const char *name, struct kiln_err *err);

/* ---- volume.c ---- */
struct kd_req;
struct kac;
int kd_volume_path(const struct kilnd *kd, const char *name, char *buf, size_t n);
/* Being made, grown or snapshotted (a volume job is out for it): no create may attach it. */
int kd_volume_busy(const struct kilnd *kd, const char *name);
/* /v1/volumes (rest: what follows it). */
int kd_volumes_route(struct kilnd *kd, const struct kd_req *r, const char *rest, json_t **body);
int kd_volume_work(struct kd_job *j);
void kd_volume_done(struct kilnd *kd, struct kd_job *j);
/* On the worker, before the restore: replay the journals of volumes attached read-only. */
int kd_volumes_prepare(struct kd_job *j);
/* Append "--disk FILE,slot[,ro]" for each of the KD_SLOTS slots (an empty file where no volume goes). */
void kd_slot_args(const struct kilnd *kd, const struct reg_attach *vols, unsigned nvols, char **argv, size_t max,
		  char bufs[][KD_SLOT_ARG_MAX]);
/*
 * On a worker: run script with /bin/sh -c in the guest as root; a failure
 * becomes j->err, "DOING failed: <what it printed>".
 */
int kd_guest_root_sh(struct kd_job *j, struct kac *c, const char *script, const char *doing);
/* After IDENTITY: mount the job's volumes in the guest, as root. */
int kd_volumes_mount(struct kd_job *j, struct kac *c);
json_t *kd_sbx_vols_json(const struct reg_sandbox *sb);

/* ---- template.c ---- */
/* Hash the kernel and initramfs (they key templates). */
int kd_template_hashes(struct kilnd *kd, struct kiln_err *err);
/*
 * The template for (image, memory_mb, vcpus) built from the current kernel,
 * initramfs and image: found in the registry, or booted and snapshotted now
 * (on a worker thread; one build at a time). dir gets its path.
 */
int kd_template_ensure(struct kilnd *kd, const struct kd_image *image, unsigned memory_mb, unsigned vcpus,
		       char *dir, size_t n, int *built, struct kiln_err *err);
int kd_template_remove(struct kilnd *kd, const char *image, unsigned memory_mb, unsigned vcpus,
		       struct kiln_err *err);
/* rm -rf of a directory kilnd made (no symlinks followed). */
int kd_rmtree(const char *path);

/* ---- vmm.c: kiln-vmm processes ---- */
/* Append OPT VAL to a NULL-terminated argv of max slots; -E2BIG when it does not fit. */
int kd_argv_add(char **argv, size_t max, char *opt, char *val);
/*
 * Start kiln-vmm with argv (NULL-terminated, argv[0] ignored) in its own
 * session, output to log, inside the network namespace nsfd (-1: kilnd's).
 */
int kd_vmm_spawn(const struct kilnd *kd, char *const argv[], const char *log, int nsfd, pid_t *pid,
		 struct kiln_err *err);
/*
 * One request to a kiln-vmm's control socket at path: its one-line JSON
 * answer into reply (n bytes, NUL-terminated, newline dropped) within ms.
 * 0, or -errno (-ETIMEDOUT).
 */
int kd_vmm_control(const char *path, const char *req, char *reply, size_t n, int ms);
/* Wait up to ms for pid (a child) to exit; its status, or -ETIMEDOUT. */
int kd_vmm_wait(pid_t pid, int ms, int *status);
/* SIGKILL a VMM and wait until it is gone (pidfd may be -1). */
void kd_vmm_kill(pid_t pid, int pidfd, int is_child);
/* utime + stime of a process, in ns; 0 if it is gone. */
uint64_t kd_proc_cpu_ns(pid_t pid);
int kd_pidfd_open(pid_t pid);

/* ---- net.c: each sandbox's network (issue 16) ---- */
/* At start: can sandboxes have networks here? Start the resolver and egress proxy if so. */
void kd_net_init(struct kilnd *kd);
void kd_net_stop(struct kilnd *kd);
/*
 * On a worker, before a VMM starts: a namespace for it in *n and "--net
 * tap=kt0" in argv, when the node gives sandboxes networks (else n->nsfd
 * stays -1 and argv unchanged). 0 or -errno with err.
 */
int kd_net_prepare(struct kilnd *kd, struct kd_netns *n, char **argv, size_t max, struct kiln_err *err);
/* The guest's kernel command line for its network ("" when none). */
const char *kd_net_cmdline(const struct kilnd *kd);
/* Serve a sandbox's namespace (its sockets pass to the egress thread) with its allow_net. */
int kd_net_serve(struct kilnd *kd, const char *id, struct kd_netns *n, char *const *allow, size_t nallow,
		 const struct kd_secret *secrets, size_t nsecrets,
		 struct kiln_err *err);
/* After a restart: serve the namespace of a re-adopted sandbox's VMM again, with its recorded allow_net. */
int kd_net_adopt(struct kilnd *kd, const char *id, pid_t vmm, struct kiln_err *err);
/* A sandbox ended: stop serving it (its namespace goes with its VMM). */
void kd_net_forget(struct kilnd *kd, const char *id);
/*
 * A create's secrets (issue 16): placeholders made, values sealed for the
 * registry (*sealed_json, malloc'd), copies for the job (j->secrets) and the
 * guest's environment entries added to j->env. 0 or -errno with err.
 */
int kd_secrets_prepare(struct kilnd *kd, const struct sched_spec *spec, struct kd_job *j, char **sealed_json,
		       struct kiln_err *err);
/* On the worker, after the identity: put the node CA into the guest's trust store (sandboxes with secrets). */
int kd_secrets_trust(struct kd_job *j, struct kac *c);
/* After a restart: a sandbox's secrets from the registry, opened with the node's key (free with kd_secrets_free). */
int kd_secrets_load(struct kilnd *kd, const char *id, struct kd_secret **out, size_t *n, struct kiln_err *err);
/* Free a job's secrets, their values cleansed. */
void kd_secrets_free(struct kd_secret *x, size_t n);
/* The API's view of a sealed secrets column: [{name, hosts, placeholder}], never a value. */
json_t *kd_secrets_public(const char *sealed_json);
/* allow_net entries as a JSON array (for the registry and the API). */
json_t *kd_allow_json(char *const *allow, size_t nallow);

/* ---- jobs.c: worker threads ---- */
enum kd_job_kind { KD_JOB_CREATE, KD_JOB_TEMPLATE, KD_JOB_DIAL, KD_JOB_POOL, KD_JOB_VOLUME };
enum { KD_VOL_CREATE, KD_VOL_RESIZE, KD_VOL_SNAPSHOT };

struct kd_job {
	struct kd_job *next;		/* the done queue (q_lock) */
	struct kd_job *pnext;		/* kd->pending: the loop's list of jobs out */
	enum kd_job_kind kind;
	struct kilnd *kd;
	/* in */
	char id[REG_ID_MAX];
	const struct kd_image *image;	/* CREATE, POOL, TEMPLATE: what it boots */
	struct reg_attach vols[REG_VOLS_MAX];	/* CREATE: volumes in its slots, in order */
	unsigned nvols;
	char vol_name[REG_IMAGE_MAX];	/* VOLUME: which, how big, make, grow or snapshot */
	uint64_t vol_bytes;
	int vol_op;
	const struct kd_image *vol_from;	/* VOLUME create: copy this image in; NULL: empty */
	char snap_name[REG_IMAGE_MAX];	/* VOLUME snapshot: the image to make */
	unsigned memory_mb, vcpus;
	char **env;			/* KEY=VALUE, NULL-terminated (CREATE) */
	char **allow;			/* CREATE: allow_net entries (nallow), for the egress proxy */
	size_t nallow;
	struct kd_secret *secrets;	/* CREATE: its secrets (owned; values cleansed on free) */
	size_t nsecrets;
	struct kd_netns net;		/* CREATE, POOL: the VM's namespace (nsfd -1: none) */
	char run_dir[KD_PATH_MAX];
	char vsock[KD_PATH_MAX];	/* DIAL: the VMM's vsock socket */
	struct lws *wsi;		/* DIAL: the tunnel; TEMPLATE: the request */
	unsigned long gen;		/* DIAL: the tunnel's generation, to spot a reused wsi */
	/* out */
	int ret;
	struct kiln_err err;
	struct reg_vmm vmm;		/* CREATE: the VMM started */
	int fd;				/* DIAL: the agent stream */
	int built;			/* a template was booted for it */
	int pooled;			/* CREATE: its VM came from the warm pool */
	struct kac *agent;		/* CREATE from the pool: the agent, connected; POOL: out */
	double restore_ms, identity_ms;
	int deno;			/* VOLUME: answer in the Deno API's shape (v2vol.c) */
};

/* Run j on a new thread; it comes back through kd_jobs_drain. 0 or -errno. */
int kd_job_start(struct kilnd *kd, struct kd_job *j, struct kiln_err *err);
/* A zeroed job with no namespace held (NULL when out of memory). */
struct kd_job *kd_job_new(void);
void kd_job_free(struct kd_job *j);
/* A connection closed: jobs that would answer it answer nobody. */
void kd_jobs_forget(struct kilnd *kd, struct lws *wsi);
/* On the loop: handle every finished job. */
void kd_jobs_drain(struct kilnd *kd);
/* Handlers on the loop (node.c, http.c, tunnel.c). */
void kd_create_done(struct kilnd *kd, struct kd_job *j);
void kd_template_done(struct kilnd *kd, struct kd_job *j);
void kd_dial_done(struct kilnd *kd, struct kd_job *j);
/* The worker side of CREATE, POOL and DIAL. */
int kd_create_work(struct kd_job *j);
struct kac;
int kd_restore_work(struct kd_job *j, struct kac **c);
int kd_pool_work(struct kd_job *j);
void kd_pool_done(struct kilnd *kd, struct kd_job *j);
int kd_dial_work(struct kd_job *j);

/* ---- http.c: the REST front ---- */
extern const struct lws_protocols kd_protocols[];
/* Answer a connection that waits (a create): status and a JSON body (stolen). */
void kd_http_reply(struct lws *wsi, int status, json_t *body);
/* A JSON error body {"code","message"} for status. */
json_t *kd_err_json(int status, const char *message);
/* May wsi use the API (peer credentials or token)? 0, or an HTTP status with msg. */
int kd_authorize(struct lws *wsi, char *msg, size_t n);
/* -errno from the core to an HTTP status. */
int kd_errno_status(int ret);

/* ---- api.c: the endpoints ---- */
struct kd_req {
	int method;			/* LWSHUMETH_* */
	char path[256];
	char *body;
	size_t body_len;
	int is_unix;
	struct lws *wsi;
	int deno;			/* a translated Deno API call: a later answer takes the Deno shape */
};
/*
 * Route one request; returns the status and sets *body (a JSON object, or a
 * string for /metrics with *text set) — or returns 0 when the answer comes
 * later (a create, a template build).
 */
int kd_api_route(struct kilnd *kd, const struct kd_req *r, json_t **body, char **text);
json_t *kd_sbx_json(struct kilnd *kd, const char *id, struct kiln_err *err, int *status);

/* ---- tunnel.c ---- */
int kd_tunnel_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len);
int kd_raw_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len);
/* Close every tunnel to a sandbox that ended. */
void kd_tunnels_close(struct kilnd *kd, const char *id);

/* ---- v3.c: the @deno/sandbox protocol (kd_deno.h) ---- */
int kd_v3_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len);
/*
 * An upgrade to a WebSocket: for /api/v3 paths, authorize, then admit and
 * start the create, or find the sandbox to connect to. 0 lets the upgrade
 * go on, 1 means it was refused with a JSON answer, -1 hangs up.
 */
int kd_v3_confirm(struct kilnd *kd, struct lws *wsi);
/* A connection went away: if it was a control socket, forget it. */
void kd_v3_wsi_gone(struct kilnd *kd, struct lws *wsi);
/* A sandbox is running: its sockets' requests may start. */
void kd_v3_sbx_ready(struct kilnd *kd, const struct kd_sbx *s);
/* A sandbox ended: close its sockets (1000 killed, 1001 timed out or stopped, 1011 failed). */
void kd_v3_sbx_ended(struct kilnd *kd, const char *id, enum reg_end why, const char *detail);
/* v2vol.c: the Deno volume and snapshot API on kiln's volumes and images. */
int kd_v2_volumes_route(struct kilnd *kd, const struct kd_req *r, json_t **body);
/* kiln's volume JSON (/v1) as a Deno volume; an image's as a Deno snapshot. */
json_t *kd_v2_volume_json(const struct kilnd *kd, const json_t *v);
json_t *kd_v2_snapshot_json(const struct kilnd *kd, const json_t *img);
/* A refusal in the Deno API's shape, {"code", "message"}: *body set, status returned. */
int kd_deno_fail(json_t **body, int status, const char *code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* /api/v3/sandbox/ID (kill, extendTimeout, expose) and /api/v2 as REST. */
int kd_deno_route(struct kilnd *kd, const struct kd_req *r, json_t **body);

/* ---- ingress.c: exposed HTTP (the SDK's exposeHttp) ---- */
/* With --expose-listen: listen, and serve exposed names on threads of its own. 0 or -errno with err. */
int kd_ingress_start(struct kilnd *kd, struct kiln_err *err);
/* A new name for sandbox id (host[:port] into domain), bound to nothing yet. -ENOTSUP without an ingress. */
int kd_ingress_alloc(struct kilnd *kd, const char *id, const char *vsock, char *domain, size_t n, struct kiln_err *err);
/* Bind id's name domain to a guest port, or (port 0) to the port guest process guest_pid listens on. Thread-safe. */
int kd_ingress_bind(struct kilnd *kd, const char *id, const char *domain, uint16_t port, uint64_t guest_pid,
		    struct kiln_err *err);
/* A sandbox ended: its names die. */
void kd_ingress_forget(struct kilnd *kd, const char *id);

/* ---- metrics.c ---- */
void kd_metrics_create(struct kilnd *kd, double seconds);
char *kd_metrics_text(struct kilnd *kd);

static inline struct kilnd *kd_of(struct lws *wsi)
{
	return lws_context_user(lws_get_context(wsi));
}

#endif
