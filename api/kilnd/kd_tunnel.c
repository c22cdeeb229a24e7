/*
 * The agent WebSocket, GET /v1/sandboxes/{id}/agent with protocol
 * kiln-agent.v1: the agent's binary protocol carried unchanged between a
 * WebSocket and the VMM's vsock socket (the CONNECT done here, the HELLO
 * left to the client), so `kiln exec` works through kilnd as through --uds.
 *
 * Each way has one buffer of at most about KD_WS_BUF_MAX bytes: past half
 * of it the sending side's reads stop (lws_rx_flow_control) until the other
 * side has written it out, so a slow reader slows its writer and nothing
 * grows without bound. Either side closing closes the other once what was
 * already read from it has been written on.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent_client.h"
#include "kilnd.h"

struct kd_tun {
	struct kd_tun *next;
	struct lws *ws, *raw;
	char id[REG_ID_MAX];
	unsigned char *ta;		/* to the agent: LWS_PRE, then ta_len bytes */
	size_t ta_len, ta_cap;
	unsigned char *tc;		/* to the client: LWS_PRE, then tc_len bytes */
	size_t tc_len, tc_cap;
	int ws_paused, raw_paused;
	int raw_closed;
	int held;
};

struct kd_tun_pss {
	struct kd_tun *t;
};

static int buf_append(unsigned char **b, size_t *len, size_t *cap, const void *p, size_t n)
{
	if (*len + n > *cap) {
		size_t nc = *cap ? *cap : 16384;
		unsigned char *q;

		while (nc < *len + n)
			nc *= 2;
		q = realloc(*b, LWS_PRE + nc);
		if (!q)
			return -ENOMEM;
		*b = q;
		*cap = nc;
	}
	memcpy(*b + LWS_PRE + *len, p, n);
	*len += n;
	return 0;
}

static void tun_unlink(struct kilnd *kd, struct kd_tun *t)
{
	for (struct kd_tun **pp = (struct kd_tun **)&kd->tunnels; *pp; pp = &(*pp)->next)
		if (*pp == t) {
			*pp = t->next;
			return;
		}
}

static void tun_free_if_done(struct kilnd *kd, struct kd_tun *t)
{
	if (t->ws || t->raw)
		return;
	tun_unlink(kd, t);
	free(t->ta);
	free(t->tc);
	free(t);
}

static void close_with(struct lws *wsi, enum lws_close_status st, const char *msg)
{
	lws_close_reason(wsi, st, (unsigned char *)msg, strlen(msg) > 120 ? 120 : strlen(msg));
}

void kd_tunnels_close(struct kilnd *kd, const char *id)
{
	for (struct kd_tun *t = kd->tunnels; t; t = t->next)
		if (!strcmp(t->id, id) && t->raw) {
			lws_set_opaque_user_data(t->raw, NULL);
			lws_set_timeout(t->raw, PENDING_TIMEOUT_KILLED_BY_PARENT, LWS_TO_KILL_ASYNC);
			t->raw = NULL;
			t->raw_closed = 1;
			t->held = 0;	/* the sandbox is gone */
			if (t->ws)
				lws_callback_on_writable(t->ws);
		}
}

/* Which sandbox a tunnel's URI names: /v1/sandboxes/ID/agent. */
static int tunnel_target(struct lws *wsi, char id[REG_ID_MAX], char *msg, size_t n)
{
	char uri[128];
	struct kiln_err err;
	size_t l;

	if (lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI) < 0 || strncmp(uri, "/v1/sandboxes/", 14)) {
		snprintf(msg, n, "the agent WebSocket is GET /v1/sandboxes/ID/agent");
		return -EINVAL;
	}
	l = strlen(uri + 14);
	if (l != REG_ID_LEN + 6 || strcmp(uri + 14 + REG_ID_LEN, "/agent")) {
		snprintf(msg, n, "the agent WebSocket is GET /v1/sandboxes/ID/agent");
		return -EINVAL;
	}
	memcpy(id, uri + 14, REG_ID_LEN);
	id[REG_ID_LEN] = '\0';
	if (reg_sandbox_id_check(id, &err)) {
		snprintf(msg, n, "%.200s", err.msg);
		return -EINVAL;
	}
	return 0;
}

static int tunnel_open(struct kilnd *kd, struct lws *wsi, struct kd_tun_pss *pss)
{
	char msg[256], id[REG_ID_MAX];
	struct kiln_err err;
	struct kd_sbx *s;
	struct kd_tun *t;
	struct kd_job *j;

	if (kd_authorize(wsi, msg, sizeof(msg)) || tunnel_target(wsi, id, msg, sizeof(msg))) {
		close_with(wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION, msg);
		return -1;
	}
	s = kd_sbx_find(kd, id);
	if (!s || s->state != REG_RUNNING) {
		snprintf(msg, sizeof(msg), "sandbox %s is %s", id, s ? "still being created" : "not running on this node");
		close_with(wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION, msg);
		return -1;
	}
	t = calloc(1, sizeof(*t));
	j = kd_job_new();
	if (!t || !j) {
		free(t);
		free(j);
		close_with(wsi, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "kilnd is out of memory");
		return -1;
	}
	t->ws = wsi;
	memcpy(t->id, id, sizeof(t->id));
	j->kind = KD_JOB_DIAL;
	j->wsi = wsi;
	memcpy(j->id, id, sizeof(j->id));
	kd_pathf(j->vsock, sizeof(j->vsock), "%s", s->vmm.vsock_path);
	if (kd_job_start(kd, j, &err)) {
		free(t);
		free(j);
		close_with(wsi, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, err.msg);
		return -1;
	}
	pss->t = t;
	t->next = kd->tunnels;
	kd->tunnels = t;
	t->held = 1;
	s->tunnels++;
	kd_sbx_hold(kd, s);
	/* Hold the client's bytes until the agent is there to take them. */
	lws_rx_flow_control(wsi, 0);
	t->ws_paused = 1;
	return 0;
}

int kd_dial_work(struct kd_job *j)
{
	struct kac_err kerr;
	int r = kac_dial(j->vsock, 10000, &j->fd, &kerr);

	if (r)
		kiln_fail(&j->err, -r, "cannot reach sandbox %s's agent: %s", j->id, kerr.msg);
	return r;
}

void kd_dial_done(struct kilnd *kd, struct kd_job *j)
{
	struct kd_tun_pss *pss = j->wsi ? lws_wsi_user(j->wsi) : NULL;
	struct kd_tun *t = pss ? pss->t : NULL;
	lws_sock_file_fd_type fd;

	if (!t || t->raw_closed) {
		if (j->fd >= 0)
			close(j->fd);
		return;
	}
	if (j->ret) {
		close_with(t->ws, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, j->err.msg);
		lws_set_timeout(t->ws, PENDING_TIMEOUT_KILLED_BY_PARENT, LWS_TO_KILL_ASYNC);
		return;
	}
	fd.sockfd = j->fd;
	t->raw = lws_adopt_descriptor_vhost(lws_get_vhost(t->ws), LWS_ADOPT_SOCKET, fd, "kiln-agent-raw", NULL);
	j->fd = -1;
	if (!t->raw) {
		close_with(t->ws, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "kilnd could not take the agent's stream");
		lws_set_timeout(t->ws, PENDING_TIMEOUT_KILLED_BY_PARENT, LWS_TO_KILL_ASYNC);
		return;
	}
	lws_set_opaque_user_data(t->raw, t);
	lws_rx_flow_control(t->ws, 1);
	t->ws_paused = 0;
	if (t->ta_len)
		lws_callback_on_writable(t->raw);
	(void)kd;
}

static void tunnel_closed(struct kilnd *kd, struct lws *wsi, struct kd_tun *t)
{
	kd_jobs_forget(kd, wsi);
	if (!t)
		return;
	t->ws = NULL;
	if (t->held) {
		struct kd_sbx *s = kd_sbx_find(kd, t->id);

		if (s) {
			s->tunnels--;
			kd_sbx_unhold(kd, s);
		}
		t->held = 0;
	}
	if (t->raw) {
		lws_set_opaque_user_data(t->raw, NULL);
		lws_set_timeout(t->raw, PENDING_TIMEOUT_KILLED_BY_PARENT, LWS_TO_KILL_ASYNC);
		t->raw = NULL;
	}
	tun_free_if_done(kd, t);
}

int kd_tunnel_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	struct kilnd *kd = kd_of(wsi);
	struct kd_tun_pss *pss = user;
	struct kd_tun *t = pss ? pss->t : NULL;

	switch (reason) {
	case LWS_CALLBACK_ESTABLISHED:
		return tunnel_open(kd, wsi, pss);
	case LWS_CALLBACK_RECEIVE:
		if (!t)
			return -1;
		if (buf_append(&t->ta, &t->ta_len, &t->ta_cap, in, len))
			return -1;
		if (t->ta_len >= KD_WS_BUF_MAX / 2 && !t->ws_paused) {
			lws_rx_flow_control(wsi, 0);
			t->ws_paused = 1;
		}
		if (t->raw)
			lws_callback_on_writable(t->raw);
		return 0;
	case LWS_CALLBACK_SERVER_WRITEABLE:
		if (!t)
			return 0;
		if (t->tc_len) {
			size_t n = t->tc_len;

			if (lws_write(wsi, t->tc + LWS_PRE, n, LWS_WRITE_BINARY) < (int)n)
				return -1;
			t->tc_len = 0;
			if (t->raw_paused && t->raw) {
				lws_rx_flow_control(t->raw, 1);
				t->raw_paused = 0;
			}
			if (t->raw_closed)
				lws_callback_on_writable(wsi);
			return 0;
		}
		if (t->raw_closed) {
			close_with(wsi, LWS_CLOSE_STATUS_NORMAL, "the agent closed the connection");
			return -1;
		}
		return 0;
	case LWS_CALLBACK_WSI_DESTROY:
		kd_jobs_forget(kd, wsi);
		return 0;
	case LWS_CALLBACK_CLOSED:
		tunnel_closed(kd, wsi, t);
		if (pss)
			pss->t = NULL;
		return 0;
	default:
		return 0;
	}
}

int kd_raw_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	struct kd_tun *t = lws_get_opaque_user_data(wsi);
	struct kilnd *kd = kd_of(wsi);

	(void)user;
	switch (reason) {
	case LWS_CALLBACK_RAW_RX:
		if (!t || !t->ws)
			return -1;
		if (buf_append(&t->tc, &t->tc_len, &t->tc_cap, in, len))
			return -1;
		if (t->tc_len >= KD_WS_BUF_MAX / 2 && !t->raw_paused) {
			lws_rx_flow_control(wsi, 0);
			t->raw_paused = 1;
		}
		lws_callback_on_writable(t->ws);
		return 0;
	case LWS_CALLBACK_RAW_WRITEABLE:
		if (!t)
			return -1;
		if (t->ta_len) {
			size_t n = t->ta_len;

			if (lws_write(wsi, t->ta + LWS_PRE, n, LWS_WRITE_RAW) < (int)n)
				return -1;
			t->ta_len = 0;
			if (t->ws_paused && t->ws) {
				lws_rx_flow_control(t->ws, 1);
				t->ws_paused = 0;
			}
		}
		return 0;
	case LWS_CALLBACK_RAW_CLOSE:
		if (!t)
			return 0;
		lws_set_opaque_user_data(wsi, NULL);
		t->raw = NULL;
		t->raw_closed = 1;
		if (t->ws)
			lws_callback_on_writable(t->ws);
		tun_free_if_done(kd, t);
		return 0;
	default:
		return 0;
	}
}
