/*
 * Sandboxes from admission to their end: create (admit, record, restore on a
 * worker, hand over identity), the periodic check for VMM deaths and
 * deadlines, session holders, kill, and re-adoption after a restart. Runs on
 * the event loop, but for kd_create_work, which is a job's worker.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent_client.h"
#include "kilnd.h"

int kd_run_dir(const struct kilnd *kd, const char *id, char *buf, size_t n)
{
	return kd_pathf(buf, n, "%s/run/%s", kd->conf.state_dir, id);
}

struct kd_sbx *kd_sbx_find(struct kilnd *kd, const char *id)
{
	for (struct kd_sbx *s = kd->sbx; s; s = s->next)
		if (!strcmp(s->id, id))
			return s;
	return NULL;
}

static void sbx_unlink(struct kilnd *kd, struct kd_sbx *s)
{
	for (struct kd_sbx **pp = &kd->sbx; *pp; pp = &(*pp)->next)
		if (*pp == s) {
			*pp = s->next;
			return;
		}
}

static int reg_locked_state(struct kilnd *kd, const char *id, enum reg_state st, enum reg_end why, const char *detail)
{
	struct kiln_err err;
	int r;

	pthread_mutex_lock(&kd->reg_lock);
	r = reg_sandbox_set_state(kd->reg, id, st, why, detail, (int64_t)kd_now_ms(), &err);
	pthread_mutex_unlock(&kd->reg_lock);
	if (r)
		lwsl_err("kilnd: %s: recording state %s: %s\n", id, reg_state_name(st), err.msg);
	return r;
}

void kd_sbx_usage(const struct kd_sbx *s, uint64_t now_ms, uint64_t *cpu_ns, uint64_t *mem_mb_ms)
{
	*cpu_ns = kd_proc_cpu_ns(s->vmm.pid);
	*mem_mb_ms = now_ms > s->life.created_ms ? (uint64_t)s->memory_mb * (now_ms - s->life.created_ms) : 0;
}

void kd_sbx_end(struct kilnd *kd, struct kd_sbx *s, enum reg_end why, const char *detail)
{
	uint64_t now = kd_now_ms(), cpu = 0, mem = 0;
	char dir[KD_PATH_MAX];
	struct kiln_err err;

	kd_sbx_usage(s, now, &cpu, &mem);
	if (s->net)
		kd_net_forget(kd, s->id);
	kd_vmm_kill(s->vmm.pid, s->pidfd, s->is_child);
	if (s->pidfd >= 0)
		close(s->pidfd);
	s->pidfd = -1;
	if (!kd_run_dir(kd, s->id, dir, sizeof(dir)))
		kd_rmtree(dir);
	kd_tunnels_close(kd, s->id);
	kd_v3_sbx_ended(kd, s->id, why, detail);
	if (sched_release(&kd->admit, s->memory_mb, s->vcpus))
		lwsl_err("kilnd: %s: released more than was admitted\n", s->id);
	pthread_mutex_lock(&kd->reg_lock);
	if (reg_usage_add(kd->reg, s->id, cpu, mem, &err))
		lwsl_err("kilnd: %s: usage: %s\n", s->id, err.msg);
	pthread_mutex_unlock(&kd->reg_lock);
	reg_locked_state(kd, s->id, why == REG_END_CREATE_FAILED ? REG_FAILED : REG_STOPPED, why, detail);
	switch (why) {
	case REG_END_KILLED: kd->m.kills++; break;
	case REG_END_TIMED_OUT: kd->m.timeouts++; break;
	case REG_END_VMM_CRASHED: kd->m.crashes++; break;
	default: break;
	}
	lwsl_user("kilnd: %s ended: %s%s%s\n", s->id, reg_end_name(why), detail && *detail ? ": " : "",
		  detail ? detail : "");
	sbx_unlink(kd, s);
	free(s);
}

static char **env_list(const struct sched_spec *spec)
{
	char **env = calloc(spec->nenv + 1, sizeof(*env));

	if (!env)
		return NULL;
	for (size_t i = 0; i < spec->nenv; i++)
		if (asprintf(&env[i], "%s=%s", spec->env[i].key, spec->env[i].value) < 0) {
			for (size_t k = 0; k < i; k++)
				free(env[k]);
			free(env);
			return NULL;
		}
	return env;
}

int kd_sbx_create(struct kilnd *kd, const struct sched_spec *spec, struct lws *creator, struct kd_sbx **out,
		  struct kiln_err *err)
{
	uint64_t now = kd_now_ms();
	const struct kd_image *img;
	struct kd_pooled *warm;
	struct sched_life life;
	struct reg_sandbox rec;
	struct kd_job *j = NULL;
	struct kd_sbx *s;
	int r;

	/* A request the lifetime rules refuse must not cost a warm VM. */
	r = sched_life_init(&life, &kd->conf.life, &spec->timeout, now, err);
	if (!r)
		r = kd_image_lookup(kd, spec->image, &img, err);
	if (!r)
		r = kd_disk_floor(kd, err);
	if (!r && spec->nallow && !kd->net_ok)
		r = kiln_fail(err, EINVAL, "allow_net needs sandbox networks, which this node does not give: %s",
			      kd->net_why);
	if (!r && spec->nsecrets && !kd->net_ok)
		r = kiln_fail(err, EINVAL, "secrets need sandbox networks, which this node does not give: %s",
			      kd->net_why);
	if (!r && spec->nsecrets && !kd->ca)
		r = kiln_fail(err, EINVAL, "secrets need the node CA, which this node has not: %s", kd->ca_why);
	if (!r && spec->nsecrets && !img->path[0])
		r = kiln_fail(err, EINVAL, "secrets need a disk image with a CA bundle: image %s has none (use debian)",
			      img->name);
	if (!r && spec->nvols && !img->path[0])
		r = kiln_fail(err, EINVAL, "volumes need a disk image: image %s has no slots for them (use debian)",
			      img->name);
	for (size_t i = 0; !r && i < spec->nvols; i++)
		if (kd_volume_busy(kd, spec->vols[i].name))
			r = kiln_fail(err, EBUSY, "volume %s is being made, grown or snapshotted; try again when that is done",
				      spec->vols[i].name);
	if (r)
		return r;
	/*
	 * A warm VM was admitted when the pool filled; its admission passes to
	 * the sandbox. Pools hold the default image with empty volume slots.
	 */
	warm = !strcmp(img->name, kd->conf.default_image) && !spec->nvols ? kd_pool_take(kd, spec->memory_mb, spec->vcpus)
									   : NULL;
	if (!warm && (r = sched_admit(&kd->admit, &kd->conf.host, spec->memory_mb, spec->vcpus, err))) {
		kd->m.refusals++;
		return r;
	}
	s = calloc(1, sizeof(*s));
	j = kd_job_new();
	if (!s || !j) {
		r = kiln_fail(err, ENOMEM, "out of memory");
		goto fail_admit;
	}
	s->pidfd = -1;
	snprintf(s->image, sizeof(s->image), "%s", img->name);
	s->memory_mb = spec->memory_mb;
	s->vcpus = spec->vcpus;
	s->life = life;
	if (warm)
		memcpy(s->id, warm->id, sizeof(s->id));
	else if ((r = reg_sandbox_id_new(kd->conf.region, s->id, err)))
		goto fail_admit;
	if (kd_run_dir(kd, s->id, j->run_dir, sizeof(j->run_dir))) {
		r = kiln_fail(err, ENAMETOOLONG, "the state dir's path is too long for a sandbox's sockets");
		goto fail_admit;
	}
	if (!warm && mkdir(j->run_dir, 0700)) {
		r = kiln_fail(err, errno, "cannot create %s: %s", j->run_dir, strerror(errno));
		goto fail_admit;
	}
	memset(&rec, 0, sizeof(rec));
	memcpy(rec.id, s->id, sizeof(rec.id));
	memcpy(rec.image, s->image, sizeof(rec.image));
	rec.memory_mb = spec->memory_mb;
	rec.vcpus = spec->vcpus;
	rec.timeout_kind = spec->timeout.kind == SCHED_TIMEOUT_SESSION ? REG_TIMEOUT_SESSION : REG_TIMEOUT_DURATION;
	rec.timeout_ms = (int64_t)spec->timeout.ms;
	rec.stop_at_ms = spec->timeout.kind == SCHED_TIMEOUT_SESSION ? 0 : (int64_t)s->life.stop_at_ms;
	for (size_t i = 0; i < spec->nlabels && i < REG_LABELS_MAX; i++) {
		snprintf(rec.labels[i].key, sizeof(rec.labels[i].key), "%s", spec->labels[i].key);
		snprintf(rec.labels[i].value, sizeof(rec.labels[i].value), "%s", spec->labels[i].value);
	}
	rec.n_labels = (unsigned)(spec->nlabels < REG_LABELS_MAX ? spec->nlabels : REG_LABELS_MAX);
	for (size_t i = 0; i < spec->nvols && i < REG_VOLS_MAX; i++) {
		snprintf(rec.vols[i].volume, sizeof(rec.vols[i].volume), "%s", spec->vols[i].name);
		snprintf(rec.vols[i].path, sizeof(rec.vols[i].path), "%s", spec->vols[i].path);
		rec.vols[i].readonly = spec->vols[i].readonly;
	}
	rec.n_vols = (unsigned)(spec->nvols < REG_VOLS_MAX ? spec->nvols : REG_VOLS_MAX);
	rec.net = kd->net_ok;
	s->net = kd->net_ok;
	json_t *allow = kd_allow_json(spec->allow_net, spec->nallow);
	char *allow_text = allow ? json_dumps(allow, JSON_COMPACT) : NULL, *secrets_text = NULL;

	json_decref(allow);
	if (!allow_text) {
		r = kiln_fail(err, ENOMEM, "out of memory");
		goto fail_admit;
	}
	/* The environment first: the secrets add to it. */
	j->env = env_list(spec);
	if (!j->env || (r = kd_secrets_prepare(kd, spec, j, &secrets_text, err))) {
		if (!j->env)
			r = kiln_fail(err, ENOMEM, "out of memory");
		free(allow_text);
		free(secrets_text);
		goto fail_admit;
	}
	rec.allow_net = allow_text;
	rec.secrets = secrets_text;
	pthread_mutex_lock(&kd->reg_lock);
	r = reg_sandbox_insert(kd->reg, &rec, (int64_t)now, err);
	if (!r && warm)
		r = reg_sandbox_set_vmm(kd->reg, s->id, &warm->vmm, err);
	pthread_mutex_unlock(&kd->reg_lock);
	free(allow_text);
	free(secrets_text);
	if (r) {
		kd_rmtree(j->run_dir);
		goto fail_admit;
	}
	j->kind = KD_JOB_CREATE;
	memcpy(j->id, s->id, sizeof(j->id));
	j->image = img;
	memcpy(j->vols, rec.vols, sizeof(j->vols));
	j->nvols = rec.n_vols;
	j->memory_mb = spec->memory_mb;
	j->vcpus = spec->vcpus;
	if (spec->nallow) {
		j->allow = calloc(spec->nallow, sizeof(*j->allow));
		for (size_t i = 0; j->allow && i < spec->nallow; i++)
			if ((j->allow[i] = strdup(spec->allow_net[i])))
				j->nallow = i + 1;
		if (j->nallow != spec->nallow) {
			r = kiln_fail(err, ENOMEM, "out of memory");
			goto fail_row;
		}
	}
	if (!j->env) {
		r = kiln_fail(err, ENOMEM, "out of memory");
		goto fail_row;
	}
	if (warm) {
		j->pooled = 1;
		j->vmm = warm->vmm;
		j->agent = warm->agent;
		warm->agent = NULL;
		j->net = warm->net;
		warm->net.nsfd = warm->net.tcp_fd = warm->net.udp_fd = -1;
	}
	r = kd_job_start(kd, j, err);
	if (r)
		goto fail_row;
	if (warm) {
		s->pidfd = warm->pidfd;
		free(warm);
		warm = NULL;
	}
	s->state = REG_CREATING;
	s->creator = creator;
	if (spec->timeout.kind == SCHED_TIMEOUT_SESSION && creator) {
		s->session_conn = creator;
		s->holders = 1;
	}
	s->t0_ns = kd_mono_ns();
	s->next = kd->sbx;
	kd->sbx = s;
	*out = s;
	kd_pool_refill(kd);
	return 0;

fail_row:
	kd_rmtree(j->run_dir);
	reg_locked_state(kd, s->id, REG_FAILED, REG_END_CREATE_FAILED, err->msg);
fail_admit:
	/* Past admission, ENOSPC is a full disk, not a full node. */
	if (r == -ENOSPC)
		r = -EDQUOT;
	if (warm)
		kd_pooled_discard(kd, warm, 1);
	sched_release(&kd->admit, spec->memory_mb, spec->vcpus);
	kd_job_free(j);
	free(s);
	kd->m.create_failures++;
	return r;
}

/*
 * On the worker: restore the template of j's shape into a VMM with j's run
 * dir and connect to its agent (*c, the HELLO done). A sandbox's VMM is
 * recorded in the registry at once; a pooled one has no row yet.
 */
int kd_restore_work(struct kd_job *j, struct kac **c)
{
	struct kilnd *kd = j->kd;
	char tdir[KD_PATH_MAX], vsock[KD_PATH_MAX + 32], log[KD_PATH_MAX + 16], console[KD_PATH_MAX + 32],
		disk[KD_PATH_MAX + 8], slots[KD_SLOTS][KD_SLOT_ARG_MAX];
	struct kac_err kerr;
	uint64_t t0;
	pid_t pid;
	int r;

	r = kd_template_ensure(kd, j->image, j->memory_mb, j->vcpus, tdir, sizeof(tdir), &j->built, &j->err);
	if (r)
		return r;
	t0 = kd_mono_ns();
	kd_pathf(j->vmm.run_dir, sizeof(j->vmm.run_dir), "%s", j->run_dir);
	kd_pathf(j->vmm.vsock_path, sizeof(j->vmm.vsock_path), "%s/vsock", j->run_dir);
	kd_pathf(j->vmm.control_path, sizeof(j->vmm.control_path), "%s/control", j->run_dir);
	kd_pathf(vsock, sizeof(vsock), "cid=3,uds=%s", j->vmm.vsock_path);
	kd_pathf(console, sizeof(console), "%s/console.log,max=1M", j->run_dir);
	kd_pathf(log, sizeof(log), "%s/vmm.log", j->run_dir);
	char *argv[48] = { "kiln-vmm", "--restore", tdir, "--vsock", vsock, "--control", j->vmm.control_path,
			   "--console", console, NULL };

	/*
	 * The image and the volume slots are the disks a snapshot leaves out;
	 * the writable layer is copied from the template's.
	 */
	kd_image_disk_args(j->image, argv, sizeof(argv) / sizeof(argv[0]), disk, sizeof(disk));
	if (j->image->path[0])
		kd_slot_args(kd, j->vols, j->nvols, argv, sizeof(argv) / sizeof(argv[0]), slots);
	r = kd_net_prepare(kd, &j->net, argv, sizeof(argv) / sizeof(argv[0]), &j->err);
	if (r)
		return r;
	r = kd_vmm_spawn(kd, argv, log, j->net.nsfd, &pid, &j->err);
	/* The VMM holds the namespace now; the job keeps its two sockets for the egress proxy. */
	if (j->net.nsfd >= 0)
		close(j->net.nsfd);
	j->net.nsfd = -1;
	if (r)
		return r;
	j->vmm.pid = pid;
	r = reg_proc_start_time(pid, &j->vmm.start_time, &j->err);
	if (!r && j->kind == KD_JOB_CREATE) {
		pthread_mutex_lock(&kd->reg_lock);
		r = reg_sandbox_set_vmm(kd->reg, j->id, &j->vmm, &j->err);
		pthread_mutex_unlock(&kd->reg_lock);
	}
	if (!r) {
		r = kac_connect(c, j->vmm.vsock_path, KD_AGENT_TIMEOUT_MS, &kerr);
		if (r)
			kiln_fail(&j->err, -r, "the restored VM's agent did not answer: %s (see %s)", kerr.msg, log);
	}
	if (r) {
		kd_vmm_kill(pid, -1, 1);
		j->vmm.pid = 0;
		return r;
	}
	j->restore_ms = (double)(kd_mono_ns() - t0) / 1e6;
	return 0;
}

/* On the worker: a restore (unless a warm VM came with the job), then the sandbox's identity. */
int kd_create_work(struct kd_job *j)
{
	struct kac *c = j->agent;
	char host[REG_ID_MAX];
	struct kac_err kerr;
	uint64_t t0;
	int r;

	j->agent = NULL;
	if (!c && ((r = kd_volumes_prepare(j)) || (r = kd_restore_work(j, &c))))
		return r;
	t0 = kd_mono_ns();
	struct kac_identity id = {
		.sandbox_id = j->id,
		.hostname = host,
		.env = (const char *const *)j->env,
		.set_clock = 1,
	};

	snprintf(host, sizeof(host), "%s", j->id);
	for (char *p = host; *p; p++)
		if (*p == '_')
			*p = '-';
	/* The guest may reach out the moment it runs its user's code: its allow_net is served first. */
	r = kd_net_serve(j->kd, j->id, &j->net, j->allow, j->nallow, j->secrets, j->nsecrets, &j->err);
	if (r) {
		kac_close(c);
		kd_vmm_kill(j->vmm.pid, -1, 1);
		j->vmm.pid = 0;
		return kiln_err_prefix(&j->err, r, "its network");
	}
	r = kac_identity(c, &id, &kerr);
	if (r)
		kiln_fail(&j->err, -r, "the restored VM's agent did not take its identity: %s (see %s/vmm.log)", kerr.msg,
			  j->run_dir);
	else
		r = kd_secrets_trust(j, c);
	if (!r)
		r = kd_volumes_mount(j, c);
	kac_close(c);
	if (r) {
		kd_vmm_kill(j->vmm.pid, -1, 1);
		j->vmm.pid = 0;
		return r;
	}
	j->identity_ms = (double)(kd_mono_ns() - t0) / 1e6;
	return 0;
}

void kd_create_done(struct kilnd *kd, struct kd_job *j)
{
	struct kd_sbx *s = kd_sbx_find(kd, j->id);
	char detail[160];
	double secs;

	if (!s || s->state != REG_CREATING) {
		lwsl_err("kilnd: %s: a create came back for no sandbox\n", j->id);
		kd_vmm_kill(j->vmm.pid, -1, 1);
		return;
	}
	if (j->ret) {
		kd->m.create_failures++;
		if (s->creator)
			kd_http_reply(s->creator, 500, kd_err_json(500, j->err.msg));
		s->creator = NULL;
		kd_sbx_end(kd, s, REG_END_CREATE_FAILED, j->err.msg);
		return;
	}
	s->vmm = j->vmm;
	s->is_child = 1;
	if (s->pidfd < 0)
		s->pidfd = kd_pidfd_open(s->vmm.pid);
	s->state = REG_RUNNING;
	secs = (double)(kd_mono_ns() - s->t0_ns) / 1e9;
	kd_metrics_create(kd, secs);
	if (j->pooled)
		snprintf(detail, sizeof(detail), "taken from the warm pool; identity in %.2f ms; created in %.2f ms",
			 j->identity_ms, secs * 1e3);
	else
		snprintf(detail, sizeof(detail), "restored in %.1f ms%s; created in %.1f ms", j->restore_ms,
			 j->built ? " after booting its template" : "", secs * 1e3);
	reg_locked_state(kd, s->id, REG_RUNNING, REG_END_NONE, detail);
	if (s->kill_asked) {
		kd_sbx_end(kd, s, REG_END_KILLED, "killed while it was being created");
		return;
	}
	kd_v3_sbx_ready(kd, s);
	if (s->creator) {
		struct kiln_err err;
		int st;
		json_t *o = kd_sbx_json(kd, s->id, &err, &st);

		if (o) {
			json_object_set_new(o, "create_ms", json_real(secs * 1e3));
			kd_http_reply(s->creator, 201, o);
		} else {
			kd_http_reply(s->creator, st, kd_err_json(st, err.msg));
		}
		s->creator = NULL;
	}
	/* A session sandbox whose creator left during the create starts its grace now. */
	if (s->life.kind == SCHED_TIMEOUT_SESSION && !s->holders && !s->life.creator_gone)
		sched_life_disconnect(&s->life, kd_now_ms());
}

void kd_sbx_hold(struct kilnd *kd, struct kd_sbx *s)
{
	(void)kd;
	if (s->life.kind != SCHED_TIMEOUT_SESSION)
		return;
	if (s->holders++ == 0 && s->life.creator_gone)
		sched_life_reconnect(&s->life, kd_now_ms(), NULL);
}

void kd_sbx_unhold(struct kilnd *kd, struct kd_sbx *s)
{
	(void)kd;
	if (s->life.kind != SCHED_TIMEOUT_SESSION || !s->holders)
		return;
	if (--s->holders == 0)
		sched_life_disconnect(&s->life, kd_now_ms());
}

void kd_conn_closed(struct kilnd *kd, struct lws *wsi)
{
	kd_jobs_forget(kd, wsi);
	for (struct kd_sbx *s = kd->sbx; s; s = s->next) {
		if (s->creator == wsi)
			s->creator = NULL;
		if (s->session_conn == wsi) {
			s->session_conn = NULL;
			kd_sbx_unhold(kd, s);
		}
	}
}

/* Why a VMM that exited on its own did. */
static enum reg_end vmm_exit_reason(struct kd_sbx *s, char *detail, size_t n)
{
	siginfo_t si;

	memset(&si, 0, sizeof(si));
	if (!s->is_child || waitid(P_PID, (id_t)s->vmm.pid, &si, WEXITED | WNOHANG | WNOWAIT) || !si.si_pid) {
		snprintf(detail, n, "kiln-vmm (pid %d) exited", (int)s->vmm.pid);
		return REG_END_VMM_CRASHED;
	}
	if (si.si_code == CLD_EXITED && si.si_status == 0) {
		snprintf(detail, n, "the guest powered off");
		return REG_END_SHUTDOWN;
	}
	if (si.si_code == CLD_EXITED) {
		snprintf(detail, n, "kiln-vmm exited with status %d (see its log in the run dir)", si.si_status);
		return REG_END_VMM_CRASHED;
	}
	if (si.si_status == SIGKILL) {
		snprintf(detail, n, "kiln-vmm was killed by SIGKILL, not by kilnd (the host's OOM killer?)");
		return REG_END_OOM;
	}
	snprintf(detail, n, "kiln-vmm was killed by signal %d (%s)", si.si_status, strsignal(si.si_status));
	return REG_END_VMM_CRASHED;
}

void kd_tick(lws_sorted_usec_list_t *sul)
{
	struct kilnd *kd = lws_container_of(sul, struct kilnd, tick);
	uint64_t now = kd_now_ms();
	struct kd_sbx *s, *next;
	char detail[200];

	for (s = kd->sbx; s; s = next) {
		enum sched_expiry e;

		next = s->next;
		if (s->state != REG_RUNNING)
			continue;
		if (s->pidfd >= 0) {
			struct pollfd p = { .fd = s->pidfd, .events = POLLIN };

			if (poll(&p, 1, 0) == 1) {
				enum reg_end why = vmm_exit_reason(s, detail, sizeof(detail));

				kd_sbx_end(kd, s, why, detail);
				continue;
			}
		}
		e = sched_life_check(&s->life, now);
		if (e != SCHED_LIVE)
			kd_sbx_end(kd, s, e == SCHED_EXPIRED_SESSION ? REG_END_SESSION_ENDED : REG_END_TIMED_OUT,
				   sched_expiry_name(e));
	}
	kd_pool_check(kd);
	if (!kd->stopping)
		lws_sul_schedule(kd->ctx, 0, &kd->tick, kd_tick, KD_TICK_MS * LWS_US_PER_MS);
}

/* Does the VMM the registry recorded still run, as the same process? */
static int vmm_alive(const struct reg_vmm *v)
{
	struct stat st;
	uint64_t t;

	return v->pid > 0 && reg_proc_start_time(v->pid, &t, NULL) == 0 && t == v->start_time &&
	       stat(v->control_path, &st) == 0 && S_ISSOCK(st.st_mode);
}

static int adopt(struct kilnd *kd, const struct reg_sandbox *row, uint64_t now)
{
	struct kd_sbx *s = calloc(1, sizeof(*s));
	char detail[160];

	if (!s)
		return -ENOMEM;
	memcpy(s->id, row->id, sizeof(s->id));
	memcpy(s->image, row->image, sizeof(s->image));
	s->state = REG_RUNNING;
	s->memory_mb = row->memory_mb;
	s->vcpus = row->vcpus;
	s->vmm = row->vmm;
	s->pidfd = kd_pidfd_open(row->vmm.pid);
	s->net = row->net;
	s->life.kind = row->timeout_kind == REG_TIMEOUT_SESSION ? SCHED_TIMEOUT_SESSION : SCHED_TIMEOUT_DURATION;
	s->life.created_ms = (uint64_t)row->created_ms;
	s->life.stop_at_ms = (uint64_t)row->stop_at_ms;
	s->life.max_at_ms = kd->conf.life.max_life_ms ? (uint64_t)row->created_ms + kd->conf.life.max_life_ms
						       : UINT64_MAX;
	s->life.grace_ms = kd->conf.life.session_grace_ms;
	if (s->life.kind == SCHED_TIMEOUT_SESSION)
		sched_life_disconnect(&s->life, now);
	kd->admit.mem_mb += s->memory_mb;
	kd->admit.vcpus += s->vcpus;
	kd->admit.sandboxes++;
	s->next = kd->sbx;
	kd->sbx = s;
	snprintf(detail, sizeof(detail), "kilnd restarted and re-adopted kiln-vmm pid %d", (int)row->vmm.pid);
	if (s->net) {
		struct kiln_err err;

		if (kd_net_adopt(kd, s->id, row->vmm.pid, &err)) {
			/* Its guest reaches nothing now (nothing serves its namespace), which fails closed. */
			lwsl_err("kilnd: %s: its network could not be served again: %s\n", s->id, err.msg);
			snprintf(detail, sizeof(detail), "kilnd restarted and re-adopted kiln-vmm pid %d; its network is "
				 "down: %.40s", (int)row->vmm.pid, err.msg);
		}
	}
	pthread_mutex_lock(&kd->reg_lock);
	reg_event_add(kd->reg, s->id, "adopted", detail, (int64_t)now, NULL);
	pthread_mutex_unlock(&kd->reg_lock);
	return 0;
}

/* Remove run dirs of sandboxes that are not running (a crash between mkdir and the registry). */
static void sweep_run_dirs(struct kilnd *kd)
{
	char path[KD_PATH_MAX];
	struct dirent *e;
	DIR *d;

	kd_pathf(path, sizeof(path), "%s/run", kd->conf.state_dir);
	d = opendir(path);
	if (!d)
		return;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.' || kd_sbx_find(kd, e->d_name))
			continue;
		if (!kd_run_dir(kd, e->d_name, path, sizeof(path)))
			kd_rmtree(path);
	}
	closedir(d);
}

/*
 * Kill kiln-vmm processes of this state dir that no live sandbox owns: one
 * started by a kilnd killed before it recorded the pid, a warm pool's, a
 * template half built. They are found by the socket paths in their argv.
 */
static void sweep_orphans(struct kilnd *kd)
{
	char run[KD_PATH_MAX + 16], tmpl[KD_PATH_MAX + 16], path[64], argv[4096];
	struct dirent *e;
	DIR *d = opendir("/proc");

	if (!d)
		return;
	kd_pathf(run, sizeof(run), "cid=3,uds=%s/run/", kd->conf.state_dir);
	kd_pathf(tmpl, sizeof(tmpl), "cid=3,uds=%s/templates/", kd->conf.state_dir);
	while ((e = readdir(d))) {
		char *end, id[REG_ID_MAX];
		long pid = strtol(e->d_name, &end, 10);
		ssize_t n;
		int fd;

		if (*end || pid <= 1 || pid == getpid())
			continue;
		snprintf(path, sizeof(path), "/proc/%ld/cmdline", pid);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		n = read(fd, argv, sizeof(argv) - 1);
		close(fd);
		if (n <= 0)
			continue;
		argv[n] = '\0';
		for (char *a = argv; a < argv + n; a += strlen(a) + 1) {
			int orphan = 0;

			if (!strncmp(a, tmpl, strlen(tmpl))) {
				orphan = 1;
			} else if (!strncmp(a, run, strlen(run)) && strlen(a) >= strlen(run) + REG_ID_LEN) {
				memcpy(id, a + strlen(run), REG_ID_LEN);
				id[REG_ID_LEN] = '\0';
				orphan = !kd_sbx_find(kd, id);
			}
			if (orphan) {
				lwsl_user("kilnd: killing kiln-vmm pid %ld, which no sandbox owns (%s)\n", pid, a + 10);
				kill((pid_t)pid, SIGKILL);
				break;
			}
		}
	}
	closedir(d);
}

int kd_readopt(struct kilnd *kd, struct kiln_err *err)
{
	uint64_t now = kd_now_ms();
	struct reg_sandbox *rows = NULL;
	size_t n = 0, adopted = 0, ended = 0;
	int r;

	pthread_mutex_lock(&kd->reg_lock);
	r = reg_sandbox_list_live(kd->reg, &rows, &n, err);
	pthread_mutex_unlock(&kd->reg_lock);
	if (r)
		return r;
	for (size_t i = 0; i < n; i++) {
		const struct reg_sandbox *row = &rows[i];
		int alive = vmm_alive(&row->vmm);
		uint64_t mem = (uint64_t)row->memory_mb * (now - (uint64_t)row->created_ms);

		if (alive && row->state == REG_RUNNING && adopt(kd, row, now) == 0) {
			adopted++;
			continue;
		}
		if (alive)
			kill(row->vmm.pid, SIGKILL);
		pthread_mutex_lock(&kd->reg_lock);
		reg_usage_add(kd->reg, row->id, 0, mem, NULL);
		pthread_mutex_unlock(&kd->reg_lock);
		if (row->state == REG_CREATING)
			reg_locked_state(kd, row->id, REG_FAILED, REG_END_CREATE_FAILED,
					 "kilnd restarted while the sandbox was being created");
		else
			reg_locked_state(kd, row->id, REG_STOPPED, REG_END_LOST,
					 "its VMM was gone when kilnd restarted");
		ended++;
	}
	free(rows);
	sweep_orphans(kd);
	sweep_run_dirs(kd);
	if (n)
		lwsl_user("kilnd: re-adopted %zu sandbox(es); %zu had ended while kilnd was away\n", adopted, ended);
	return 0;
}
