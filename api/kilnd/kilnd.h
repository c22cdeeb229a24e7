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
#include "registry.h"
#include "sched_core.h"

#define KD_LISTEN_MAX		8
#define KD_PATH_MAX		REG_PATH_MAX
/* A state dir's path leaves room for run/<id>/vsock_<port> in a unix socket's 108 bytes. */
#define KD_STATE_DIR_MAX	48
#define KD_IMAGE_DEFAULT	"base"		/* the initramfs userland; issue 15 adds debian */
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
};

/* One sandbox as the loop sees it, from admission until kd_sbx_end. */
struct kd_sbx {
	struct kd_sbx *next;
	char id[REG_ID_MAX];
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
	volatile int stopping;
};

/* ---- main.c ---- */
/* snprintf for paths: -ENAMETOOLONG (and buf cut) when the result does not fit. */
int kd_pathf(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
uint64_t kd_now_ms(void);
uint64_t kd_mono_ns(void);

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

/* ---- template.c ---- */
/* Hash the kernel and initramfs (they key templates). */
int kd_template_hashes(struct kilnd *kd, struct kiln_err *err);
/*
 * The template for (image, memory_mb, vcpus) built from the current kernel
 * and initramfs: found in the registry, or booted and snapshotted now (on a
 * worker thread; one build at a time). dir gets its path.
 */
int kd_template_ensure(struct kilnd *kd, const char *image, unsigned memory_mb, unsigned vcpus, char *dir,
		       size_t n, int *built, struct kiln_err *err);
int kd_template_remove(struct kilnd *kd, const char *image, unsigned memory_mb, unsigned vcpus,
		       struct kiln_err *err);
/* rm -rf of a directory kilnd made (no symlinks followed). */
int kd_rmtree(const char *path);

/* ---- vmm.c: kiln-vmm processes ---- */
/* Start kiln-vmm with argv (NULL-terminated, argv[0] ignored) in its own session, output to log. */
int kd_vmm_spawn(const struct kilnd *kd, char *const argv[], const char *log, pid_t *pid, struct kiln_err *err);
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

/* ---- jobs.c: worker threads ---- */
enum kd_job_kind { KD_JOB_CREATE, KD_JOB_TEMPLATE, KD_JOB_DIAL, KD_JOB_POOL };

struct kd_job {
	struct kd_job *next;		/* the done queue (q_lock) */
	struct kd_job *pnext;		/* kd->pending: the loop's list of jobs out */
	enum kd_job_kind kind;
	struct kilnd *kd;
	/* in */
	char id[REG_ID_MAX];
	unsigned memory_mb, vcpus;
	char **env;			/* KEY=VALUE, NULL-terminated (CREATE) */
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
};

/* Run j on a new thread; it comes back through kd_jobs_drain. 0 or -errno. */
int kd_job_start(struct kilnd *kd, struct kd_job *j, struct kiln_err *err);
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

/* ---- metrics.c ---- */
void kd_metrics_create(struct kilnd *kd, double seconds);
char *kd_metrics_text(struct kilnd *kd);

static inline struct kilnd *kd_of(struct lws *wsi)
{
	return lws_context_user(lws_get_context(wsi));
}

#endif
