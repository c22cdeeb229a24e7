/* kiln agent client: control operations (identity, shutdown, health, env). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent_proto.h"
#include "agent_client.h"
#include "ac_int.h"

/* ---- control -------------------------------------------------------------------- */

/* The IDENTITY request for id, as o with its record w. */
static void identity_req(struct kac *c, struct op *o, struct kp_recw *w, const struct kac_identity *id)
{
	int i;

	ac_op_start(c, o, w, KP_OP_IDENTITY);
	if (id->sandbox_id)
		kp_put_str(w, KT_SANDBOX_ID, id->sandbox_id);
	if (id->hostname)
		kp_put_str(w, KT_HOSTNAME, id->hostname);
	if (id->clear_env)
		kp_put_bool(w, KT_CLEAR_ENV, 1);
	for (i = 0; id->env && id->env[i]; i++)
		kp_put_str(w, KT_ENV, id->env[i]);
	if (id->set_clock) {
		uint64_t ns = id->realtime_ns;

		if (!ns) {
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
		}
		kp_put_u64(w, KT_REALTIME_NS, ns);
	}
}

int kac_identity(struct kac *c, const struct kac_identity *id, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	identity_req(c, &o, &w, id);
	return ac_simple(c, &o, &w, err);
}

int kac_identity_send(struct kac *c, const struct kac_identity *id, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;
	int ret;

	if (c->pend_id)
		return ac_fail(err, EBUSY, "identity: one is already on its way (kac_identity_wait first)");
	identity_req(c, &o, &w, id);
	if ((ret = ac_req_send(c, o.id, &w, err)) == 0) {
		c->pend_id = o.id;
		c->pend_done = 0;
		c->pend_ret = 0;
	}
	return ret;
}

int kac_identity_wait(struct kac *c, struct kac_err *err)
{
	struct op o;
	int ret;

	if (!c->pend_id)
		return ac_fail(err, EINVAL, "identity: none was sent (kac_identity_send)");
	if (c->pend_done) {
		ret = c->pend_ret;
		if (ret && err)
			memcpy(err->msg, c->pend_msg, sizeof(err->msg));
	} else {
		ac_op_init(&o, c->pend_id);
		c->pend_id = 0;		/* its frames are o's now */
		ret = ac_op_run(c, &o, -1, err);
	}
	c->pend_id = 0;
	return ret;
}

int kac_shutdown(struct kac *c, int grace_ms, int reboot, struct kac_err *err)
{
	struct kp_recw w;
	struct kp_frame f;
	struct op o;
	int64_t deadline;
	int ret;

	ac_op_start(c, &o, &w, KP_OP_SHUTDOWN);
	if (grace_ms > 0)
		kp_put_u64(&w, KT_TIMEOUT_MS, (uint64_t)grace_ms);
	if (reboot)
		kp_put_bool(&w, KT_REBOOT, 1);
	ret = ac_simple(c, &o, &w, err);
	if (ret)
		return ret;
	/* Accepted: wait for the VM to stop, which closes the connection. */
	deadline = ac_now_ms() + (grace_ms > 0 ? grace_ms : 5000) + 30000;
	for (;;) {
		ret = ac_read_frame(c, &f, deadline, err);
		if (ret == -ECONNRESET)
			return 0;
		if (ret == -ETIMEDOUT)
			return ac_fail(err, ETIMEDOUT, "the agent accepted the shutdown but the VM was still up "
				       "%d s later", (int)((grace_ms > 0 ? grace_ms : 5000) / 1000 + 30));
		if (ret)
			return ret;
	}
}

struct health_arg {
	uint64_t *uptime, *procs;
};

static int health_rec(struct op *o, const struct kp_frame *f)
{
	struct health_arg *h = o->arg;
	struct kp_field fl;

	if (kp_rec_find(f->payload, f->len, KT_UPTIME_NS, &fl) == 1)
		kp_field_u64(&fl, h->uptime);
	if (kp_rec_find(f->payload, f->len, KT_PROCS, &fl) == 1)
		kp_field_u64(&fl, h->procs);
	return 0;
}

int kac_health(struct kac *c, uint64_t *uptime_ns, uint64_t *procs, struct kac_err *err)
{
	struct health_arg h = { uptime_ns, procs };
	struct kp_recw w;
	struct op o;

	*uptime_ns = *procs = 0;
	ac_op_start_rec(c, &o, &w, KP_OP_HEALTH, health_rec, &h);
	return ac_simple(c, &o, &w, err);
}

static int env_get_rec(struct op *o, const struct kp_frame *f)
{
	char **v = o->arg;
	struct kp_field fl;

	if (kp_rec_find(f->payload, f->len, KT_VALUE, &fl) != 1 || fl.kind != KP_K_STR)
		return 0;
	free(*v);
	*v = malloc(fl.len + 1);
	if (!*v)
		return -ENOMEM;
	kp_field_str(&fl, *v, fl.len + 1);
	return 0;
}

int kac_env_get(struct kac *c, const char *key, char **value, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;
	int ret;

	*value = NULL;
	ac_op_start_rec(c, &o, &w, KP_OP_ENV_GET, env_get_rec, value);
	kp_put_str(&w, KT_KEY, key);
	ret = ac_simple(c, &o, &w, err);
	if (ret) {
		free(*value);
		*value = NULL;
	}
	return ret;
}

int kac_env_set(struct kac *c, const char *key, const char *value, struct kac_err *err)
{
	return ac_simple_str(c, KP_OP_ENV_SET, KT_KEY, key, KT_VALUE, value, err);
}

int kac_env_unset(struct kac *c, const char *key, struct kac_err *err)
{
	return ac_simple_str(c, KP_OP_ENV_DELETE, KT_KEY, key, 0, NULL, err);
}

static int env_entry(struct ac_list *l, const struct kp_field *fl)
{
	char *e;

	if (fl->kind != KP_K_STR)
		return 0;
	e = malloc(fl->len + 1);
	if (!e)
		return -ENOMEM;
	kp_field_str(fl, e, fl->len + 1);
	l->ret = l->fn.str(l->arg, e);
	free(e);
	return 0;
}

int kac_env_list(struct kac *c, kac_str_fn fn, void *arg, struct kac_err *err)
{
	struct ac_list a = { .tag = KT_ENV, .entry = env_entry, .fn.str = fn, .arg = arg };
	struct kp_recw w;
	struct op o;

	ac_op_start(c, &o, &w, KP_OP_ENV_LIST);
	return ac_list_run(c, &o, &w, &a, "env list", NULL, err);
}
