/*
 * Work that may block, off the event loop: each job runs on its own
 * detached thread and is queued back to the loop when done; the loop is
 * woken with lws_cancel_service and drains the queue (kd_jobs_drain) from
 * LWS_CALLBACK_EVENT_WAIT_CANCELLED. A worker touches only its job and,
 * under kd->reg_lock, the registry; struct kd_sbx stays the loop's.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "agent_client.h"
#include "kilnd.h"

static void *job_thread(void *arg)
{
	struct kd_job *j = arg;
	struct kilnd *kd = j->kd;

	switch (j->kind) {
	case KD_JOB_CREATE:
		j->ret = kd_create_work(j);
		break;
	case KD_JOB_TEMPLATE:
		j->ret = kd_template_ensure(kd, j->image, j->memory_mb, j->vcpus, j->run_dir,
					    sizeof(j->run_dir), &j->built, &j->err);
		break;
	case KD_JOB_DIAL:
		j->ret = kd_dial_work(j);
		break;
	case KD_JOB_POOL:
		j->ret = kd_pool_work(j);
		break;
	case KD_JOB_VOLUME:
		j->ret = kd_volume_work(j);
		break;
	}
	pthread_mutex_lock(&kd->q_lock);
	j->next = kd->done;
	kd->done = j;
	pthread_mutex_unlock(&kd->q_lock);
	lws_cancel_service(kd->ctx);
	return NULL;
}

int kd_job_start(struct kilnd *kd, struct kd_job *j, struct kiln_err *err)
{
	pthread_attr_t a;
	pthread_t t;
	int e;

	j->kd = kd;
	j->fd = -1;
	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	e = pthread_create(&t, &a, job_thread, j);
	pthread_attr_destroy(&a);
	if (e)
		return kiln_fail(err, e, "cannot start a worker thread: %s", strerror(e));
	kd->jobs_running++;
	j->pnext = kd->pending;
	kd->pending = j;
	return 0;
}

void kd_jobs_forget(struct kilnd *kd, struct lws *wsi)
{
	for (struct kd_job *j = kd->pending; j; j = j->pnext)
		if (j->wsi == wsi)
			j->wsi = NULL;
}

static void unpend(struct kilnd *kd, struct kd_job *j)
{
	for (struct kd_job **pp = &kd->pending; *pp; pp = &(*pp)->pnext)
		if (*pp == j) {
			*pp = j->pnext;
			return;
		}
}

struct kd_job *kd_job_new(void)
{
	struct kd_job *j = calloc(1, sizeof(*j));

	if (j)
		j->net.nsfd = j->net.tcp_fd = j->net.udp_fd = -1;
	return j;
}

void kd_job_free(struct kd_job *j)
{
	if (!j)
		return;
	if (j->agent)
		kac_close(j->agent);
	kd_netns_close(&j->net);
	for (size_t i = 0; i < j->nallow; i++)
		free(j->allow[i]);
	free(j->allow);
	kd_secrets_free(j->secrets, j->nsecrets);
	if (j->env)
		for (char **e = j->env; *e; e++)
			free(*e);
	free(j->env);
	free(j);
}

void kd_jobs_drain(struct kilnd *kd)
{
	struct kd_job *list, *rev = NULL;

	pthread_mutex_lock(&kd->q_lock);
	list = kd->done;
	kd->done = NULL;
	pthread_mutex_unlock(&kd->q_lock);
	/* Oldest first. */
	while (list) {
		struct kd_job *n = list->next;

		list->next = rev;
		rev = list;
		list = n;
	}
	while (rev) {
		struct kd_job *j = rev;

		rev = j->next;
		kd->jobs_running--;
		unpend(kd, j);
		switch (j->kind) {
		case KD_JOB_CREATE:
			kd_create_done(kd, j);
			break;
		case KD_JOB_TEMPLATE:
			kd_template_done(kd, j);
			break;
		case KD_JOB_DIAL:
			kd_dial_done(kd, j);
			break;
		case KD_JOB_POOL:
			kd_pool_done(kd, j);
			break;
		case KD_JOB_VOLUME:
			kd_volume_done(kd, j);
			break;
		}
		kd_job_free(j);
	}
}
