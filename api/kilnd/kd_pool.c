/*
 * Warm pools (kilnd --pool MEM:VCPUS:N): per shape, N VMs restored from the
 * template ahead of demand, their agents connected, so that a create of
 * that shape only hands over the sandbox's identity. A pooled VM holds its
 * memory against admission like a sandbox (its admission passes to the
 * sandbox that takes it), has an id and run dir minted at fill but no
 * registry row: if kilnd dies, the next start kills it as an orphan
 * (kd_readopt), and a stop kills the pool outright. Fills run on worker
 * threads; a failed fill waits 10 s before the pool tries again.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent_client.h"
#include "kilnd.h"

#define POOL_RETRY_MS	10000

static struct kd_pool *pool_of(struct kilnd *kd, unsigned mem, unsigned vcpus)
{
	for (unsigned i = 0; i < kd->npools; i++)
		if (kd->pools[i].memory_mb == mem && kd->pools[i].vcpus == vcpus)
			return &kd->pools[i];
	return NULL;
}

static int pool_fill_one(struct kilnd *kd, struct kd_pool *p)
{
	struct kiln_err err;
	struct kd_job *j;

	if (sched_admit(&kd->admit, &kd->conf.host, p->memory_mb, p->vcpus, &err))
		return -ENOSPC;	/* the pool waits for room like anyone */
	j = kd_job_new();
	if (!j)
		goto fail;
	j->kind = KD_JOB_POOL;
	j->image = kd_image_find(kd, kd->conf.default_image);
	j->memory_mb = p->memory_mb;
	j->vcpus = p->vcpus;
	if (reg_sandbox_id_new(kd->conf.region, j->id, &err) || kd_run_dir(kd, j->id, j->run_dir, sizeof(j->run_dir)) ||
	    mkdir(j->run_dir, 0700))
		goto fail;
	if (kd_job_start(kd, j, &err)) {
		kd_rmtree(j->run_dir);
		goto fail;
	}
	p->filling++;
	return 0;
fail:
	free(j);
	sched_release(&kd->admit, p->memory_mb, p->vcpus);
	p->retry_at_ms = kd_now_ms() + POOL_RETRY_MS;
	return -EIO;
}

void kd_pool_refill(struct kilnd *kd)
{
	uint64_t now = kd_now_ms();

	if (kd->stopping)
		return;
	for (unsigned i = 0; i < kd->npools; i++) {
		struct kd_pool *p = &kd->pools[i];

		while (p->nready + p->filling < p->size && now >= p->retry_at_ms)
			if (pool_fill_one(kd, p))
				break;
	}
}

int kd_pool_work(struct kd_job *j)
{
	return kd_restore_work(j, &j->agent);
}

void kd_pooled_discard(struct kilnd *kd, struct kd_pooled *v, int kill_it)
{
	char dir[KD_PATH_MAX];

	if (kill_it)
		kd_vmm_kill(v->vmm.pid, v->pidfd, 1);
	if (v->pidfd >= 0)
		close(v->pidfd);
	if (v->agent)
		kac_close(v->agent);
	kd_netns_close(&v->net);
	if (!kd_run_dir(kd, v->id, dir, sizeof(dir)))
		kd_rmtree(dir);
	free(v);
}

/* A pooled VM leaves the pool: killed (kill_it), its admission given back too. */
static void pooled_free(struct kilnd *kd, struct kd_pool *p, struct kd_pooled *v, int kill_it)
{
	kd_pooled_discard(kd, v, kill_it);
	if (kill_it)
		sched_release(&kd->admit, p->memory_mb, p->vcpus);
}

void kd_pool_done(struct kilnd *kd, struct kd_job *j)
{
	struct kd_pool *p = pool_of(kd, j->memory_mb, j->vcpus);
	struct kd_pooled *v;

	if (p && p->filling)
		p->filling--;
	if (j->ret || !p || kd->stopping || !(v = calloc(1, sizeof(*v)))) {
		if (j->ret)
			lwsl_err("kilnd: warm pool %u MiB/%u vCPUs: %s\n", j->memory_mb, j->vcpus, j->err.msg);
		if (p)
			p->retry_at_ms = kd_now_ms() + POOL_RETRY_MS;
		kd_vmm_kill(j->vmm.pid, -1, 1);
		kd_rmtree(j->run_dir);
		sched_release(&kd->admit, j->memory_mb, j->vcpus);
		return;
	}
	memcpy(v->id, j->id, sizeof(v->id));
	v->vmm = j->vmm;
	v->pidfd = kd_pidfd_open(v->vmm.pid);
	v->agent = j->agent;
	v->net = j->net;
	j->net.nsfd = j->net.tcp_fd = j->net.udp_fd = -1;
	j->agent = NULL;
	v->next = p->ready;
	p->ready = v;
	p->nready++;
}

struct kd_pooled *kd_pool_take(struct kilnd *kd, unsigned mem, unsigned vcpus)
{
	struct kd_pool *p = pool_of(kd, mem, vcpus);
	struct kd_pooled *v;

	if (!p || !p->ready)
		return NULL;
	v = p->ready;
	p->ready = v->next;
	p->nready--;
	return v;
}

void kd_pool_check(struct kilnd *kd)
{
	for (unsigned i = 0; i < kd->npools; i++) {
		struct kd_pool *p = &kd->pools[i];

		for (struct kd_pooled **pp = &p->ready; *pp;) {
			struct kd_pooled *v = *pp;
			struct pollfd pf = { .fd = v->pidfd, .events = POLLIN };

			if (v->pidfd >= 0 && poll(&pf, 1, 0) == 1) {
				lwsl_err("kilnd: a warm pool VM (kiln-vmm pid %d) exited; replacing it\n", (int)v->vmm.pid);
				*pp = v->next;
				p->nready--;
				pooled_free(kd, p, v, 1);
				continue;
			}
			pp = &v->next;
		}
	}
	kd_pool_refill(kd);
}

void kd_pool_drain(struct kilnd *kd)
{
	for (unsigned i = 0; i < kd->npools; i++) {
		struct kd_pool *p = &kd->pools[i];

		while (p->ready) {
			struct kd_pooled *v = p->ready;

			p->ready = v->next;
			p->nready--;
			pooled_free(kd, p, v, 1);
		}
	}
}
