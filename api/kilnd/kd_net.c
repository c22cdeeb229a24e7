/*
 * Each sandbox's network, as kilnd wires it (issue 16; docs/network.md).
 *
 * A node whose kilnd may make network namespaces (root, or CAP_NET_ADMIN,
 * with tun and nf_tables) gives every VM one: templates boot in one with
 * eth0 at KD_NET_GUEST, so every clone restores with the same address
 * into a namespace of its own (kd_netns.c). Nothing in a namespace routes
 * out; the guest reaches only kilnd's resolver and egress proxy
 * (kd_egress.c), which let through what the sandbox's allow_net allows
 * and nothing else. A node that cannot (kilnd not root, --no-net) runs
 * sandboxes without a network device, and a create that asks for
 * allow_net there is refused saying why.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kd_ca.h"
#include "kd_egress.h"
#include "kilnd.h"

static void egress_event(void *arg, const char *id, const char *kind, const char *detail)
{
	struct kilnd *kd = arg;

	pthread_mutex_lock(&kd->reg_lock);
	reg_event_add(kd->reg, id, kind, detail, (int64_t)kd_now_ms(), NULL);
	pthread_mutex_unlock(&kd->reg_lock);
	lwsl_user("kilnd: %s: %s: %s\n", id, kind, detail);
}

void kd_net_init(struct kilnd *kd)
{
	struct kd_egress_conf ec = { .event = egress_event, .arg = kd };
	struct kiln_err err = { 0 };

	kd->net_ok = 0;
	if (kd->conf.no_net) {
		snprintf(kd->net_why, sizeof(kd->net_why), "kilnd was started with --no-net");
		return;
	}
	if (kd_netns_probe(&err)) {
		snprintf(kd->net_why, sizeof(kd->net_why), "%s", err.msg);
		lwsl_user("kilnd: sandboxes get no network: %s\n", err.msg);
		return;
	}
	snprintf(ec.dns_upstream, sizeof(ec.dns_upstream), "%s", kd->conf.dns_upstream);
	snprintf(ec.upstream_ca, sizeof(ec.upstream_ca), "%s", kd->conf.upstream_ca);
	/* The node CA (secrets): without it sandboxes still get networks, but a create with secrets is refused. */
	{
		char dir[KD_PATH_MAX + 8];

		snprintf(dir, sizeof(dir), "%s/ca", kd->conf.state_dir);
		if (kd_ca_open(dir, &kd->ca, &err)) {
			snprintf(kd->ca_why, sizeof(kd->ca_why), "the node CA did not load: %.500s", err.msg);
			lwsl_user("kilnd: sandboxes cannot have secrets: %s\n", kd->ca_why);
			kd->ca = NULL;
			err.msg[0] = '\0';
		}
		ec.ca = kd->ca;
	}
	if (kd_egress_start(&ec, &kd->egress, &err)) {
		snprintf(kd->net_why, sizeof(kd->net_why), "the egress proxy did not start: %.400s", err.msg);
		kd_ca_free(kd->ca);
		kd->ca = NULL;
		lwsl_user("kilnd: sandboxes get no network: %s\n", kd->net_why);
		return;
	}
	kd->net_ok = 1;
	lwsl_user("kilnd: sandboxes get a network namespace each; outbound only to their allow_net (DNS %s)\n",
		  kd->conf.dns_upstream[0] ? kd->conf.dns_upstream : "from /etc/resolv.conf");
}

void kd_net_stop(struct kilnd *kd)
{
	if (kd->egress)
		kd_egress_stop(kd->egress);
	kd->egress = NULL;
	kd_ca_free(kd->ca);
	kd->ca = NULL;
	kd->net_ok = 0;
}

const char *kd_net_cmdline(const struct kilnd *kd)
{
	return kd->net_ok ? KD_NET_CMDLINE : "";
}

int kd_net_prepare(struct kilnd *kd, struct kd_netns *n, char **argv, size_t max, struct kiln_err *err)
{
	int r;

	n->nsfd = n->tcp_fd = n->udp_fd = -1;
	if (!kd->net_ok)
		return 0;
	r = kd_netns_create(n, geteuid(), getegid(), err);
	if (r)
		return r;
	r = kd_argv_add(argv, max, "--net", "tap=" KD_NET_TAP);
	if (r) {
		kd_netns_close(n);
		return kiln_fail(err, -r, "kiln-vmm's arguments do not fit");
	}
	return 0;
}

int kd_net_serve(struct kilnd *kd, const char *id, struct kd_netns *n, char *const *allow, size_t nallow,
		 const struct kd_secret *secrets, size_t nsecrets, struct kiln_err *err)
{
	int tcp = n->tcp_fd, udp = n->udp_fd;

	if (!kd->egress || tcp < 0 || udp < 0)
		return 0;
	/* The egress thread owns the sockets from here, even when it fails. */
	n->tcp_fd = n->udp_fd = -1;
	return kd_egress_add(kd->egress, id, tcp, udp, allow, nallow, secrets, nsecrets, err);
}

int kd_net_adopt(struct kilnd *kd, const char *id, pid_t vmm, struct kiln_err *err)
{
	struct kd_netns n = { -1, -1, -1 };
	char **allow = NULL, *text = NULL;
	struct kd_secret *secrets = NULL;
	size_t nallow = 0, nsecrets = 0, i;
	json_t *a = NULL, *v;
	int r;

	if (!kd->net_ok)
		return kiln_fail(err, ENOTSUP, "this kilnd gives sandboxes no network (%s)", kd->net_why);
	pthread_mutex_lock(&kd->reg_lock);
	r = reg_sandbox_allow_net(kd->reg, id, &text, err);
	pthread_mutex_unlock(&kd->reg_lock);
	if (r)
		return r;
	a = json_loads(text, 0, NULL);
	free(text);
	if (!json_is_array(a) || json_array_size(a) > 4096) {
		json_decref(a);
		return kiln_fail(err, EBADMSG, "its allow_net in the registry is not a JSON array");
	}
	allow = calloc(json_array_size(a) + 1, sizeof(*allow));
	if (!allow) {
		json_decref(a);
		return kiln_fail(err, ENOMEM, "out of memory");
	}
	json_array_foreach(a, i, v)
		if (json_is_string(v))
			allow[nallow++] = (char *)json_string_value(v);
	r = kd_secrets_load(kd, id, &secrets, &nsecrets, err);
	if (!r)
		r = kd_netns_adopt(&n, vmm, err);
	if (!r)
		r = kd_net_serve(kd, id, &n, allow, nallow, secrets, nsecrets, err);
	kd_secrets_free(secrets, nsecrets);
	kd_netns_close(&n);
	free(allow);
	json_decref(a);
	return r;
}

void kd_net_forget(struct kilnd *kd, const char *id)
{
	if (kd->egress)
		kd_egress_remove(kd->egress, id);
}

json_t *kd_allow_json(char *const *allow, size_t nallow)
{
	json_t *a = json_array();

	for (size_t i = 0; a && i < nallow; i++)
		json_array_append_new(a, json_string(allow[i]));
	return a;
}
