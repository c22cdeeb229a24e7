/*
 * Exposed HTTP (issue 17, the SDK's exposeHttp): kilnd's ingress, a TLS
 * listener (--expose-listen) for names under --expose-domain (default
 * localhost, so a browser on the node reaches them). The REST call
 * allocates a name for a sandbox; the RPC binds it to a guest port, or to
 * the port a Deno runtime listens on. Each connection is terminated with a
 * leaf of the node CA minted for its SNI, then carried byte for byte to
 * that port through the agent (a raw PORT_CONNECT), so HTTP/1.1, keep-alive
 * and WebSockets all pass. A name dies with its sandbox.
 *
 * One thread accepts; each connection has a thread of its own (at most
 * KD_INGRESS_CONNS), doing blocking I/O with deadlines: a handshake must
 * finish within 10 s, and a connection idle both ways for 10 minutes ends.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "agent_client.h"
#include "io.h"
#include "kd_ca.h"
#include "kilnd.h"

#define KD_INGRESS_CONNS	512
#define KD_INGRESS_NAMES	64		/* names per sandbox */
#define INGRESS_IDLE_MS		(10 * 60 * 1000)

struct binding {
	struct binding *next;
	char host[192];			/* the name, without the port */
	char id[REG_ID_MAX];
	char vsock[KD_PATH_MAX];
	uint16_t port;			/* bound guest port; 0 with guest_pid: the runtime's port */
	uint64_t guest_pid;
	int bound;
};

struct kd_ingress {
	struct kilnd *kd;
	int lfd;
	uint16_t public_port;
	char domain[96];
	SSL_CTX *base;
	pthread_t th;
	pthread_mutex_t m;
	struct binding *b;
	unsigned nconn;
	volatile int stop;
};

static struct binding *find_host(struct kd_ingress *in, const char *host)
{
	for (struct binding *b = in->b; b; b = b->next)
		if (!strcasecmp(b->host, host))
			return b;
	return NULL;
}

/* SNI: a name we gave out gets a leaf of the node CA; any other, an alert. */
static int sni_cb(SSL *ssl, int *ad, void *arg)
{
	struct kd_ingress *in = arg;
	const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
	struct kiln_err err;
	SSL_CTX *leaf;
	int known;

	if (!name) {
		*ad = SSL_AD_UNRECOGNIZED_NAME;
		return SSL_TLSEXT_ERR_ALERT_FATAL;
	}
	pthread_mutex_lock(&in->m);
	known = find_host(in, name) != NULL;
	pthread_mutex_unlock(&in->m);
	if (!known || !(leaf = kd_ca_leaf_ctx(in->kd->ca, name, &err))) {
		*ad = SSL_AD_UNRECOGNIZED_NAME;
		return SSL_TLSEXT_ERR_ALERT_FATAL;
	}
	SSL_set_SSL_CTX(ssl, leaf);
	SSL_CTX_free(leaf);
	return SSL_TLSEXT_ERR_OK;
}

static void ssl_say(SSL *ssl, const char *status, const char *msg)
{
	char b[512];
	int n = snprintf(b, sizeof(b), "HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n%s\n", status, strlen(msg) + 1, msg);

	SSL_write(ssl, b, n);
}

static int first_port(void *arg, const struct kac_listener *l)
{
	*(uint16_t *)arg = l->port;
	return 1;
}

struct conn_arg {
	struct kd_ingress *in;
	int fd;
};

/* Bytes both ways until one side ends: TLS (fd, ssl) and the guest's TCP stream (rfd). */
static void pump(SSL *ssl, int fd, int rfd)
{
	char buf[65536];
	int half = 0;

	for (;;) {
		struct pollfd p[2] = { { fd, POLLIN, 0 }, { rfd, half ? 0 : POLLIN, 0 } };
		int r = SSL_pending(ssl) ? 1 : poll(p, 2, INGRESS_IDLE_MS);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return;
		if (SSL_pending(ssl) || (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
			int n = SSL_read(ssl, buf, sizeof(buf));

			if (n <= 0) {
				/* The client is done: the guest sees EOF and may still answer. */
				shutdown(rfd, SHUT_WR);
				if (half)
					return;
				/* Drain what the guest still says, then end. */
				for (;;) {
					ssize_t k = read(rfd, buf, sizeof(buf));

					if (k <= 0 || SSL_write(ssl, buf, (int)k) <= 0)
						return;
				}
			}
			if (write_full(rfd, buf, (size_t)n) < 0)
				return;
		}
		if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t n = read(rfd, buf, sizeof(buf));

			if (n <= 0) {
				SSL_shutdown(ssl);
				return;
			}
			if (SSL_write(ssl, buf, (int)n) <= 0)
				return;
		}
	}
}

static void *conn_main(void *arg)
{
	struct conn_arg *ca = arg;
	struct kd_ingress *in = ca->in;
	struct timeval tv = { 10, 0 };
	char vsock[KD_PATH_MAX], host[192];
	struct kac_err kerr;
	struct binding *b;
	struct kac *c = NULL;
	uint16_t port = 0;
	uint64_t gpid = 0;
	int rfd = -1, bound = 0;
	SSL *ssl = SSL_new(in->base);

	setsockopt(ca->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(ca->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (!ssl || !SSL_set_fd(ssl, ca->fd) || SSL_accept(ssl) != 1)
		goto out;
	snprintf(host, sizeof(host), "%s", SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name));
	pthread_mutex_lock(&in->m);
	b = find_host(in, host);
	if (b) {
		bound = b->bound;
		port = b->port;
		gpid = b->guest_pid;
		snprintf(vsock, sizeof(vsock), "%s", b->vsock);
	}
	pthread_mutex_unlock(&in->m);
	if (!b) {
		ssl_say(ssl, "404 Not Found", "kiln: no sandbox exposes this name (it may have ended)");
		goto out;
	}
	if (!bound) {
		ssl_say(ssl, "502 Bad Gateway", "kiln: this name is allocated but bound to no port yet (exposeHttp)");
		goto out;
	}
	if (kac_connect(&c, vsock, 10000, &kerr)) {
		ssl_say(ssl, "502 Bad Gateway", "kiln: the sandbox's agent does not answer");
		goto out;
	}
	if (!port && gpid) {
		int r = kac_port_list(c, gpid, first_port, &port, &kerr);

		/* A raw port stream needs a connection that has served nothing yet: list on this one, dial another. */
		kac_close(c);
		c = NULL;
		if (r < 0 || !port || kac_connect(&c, vsock, 10000, &kerr)) {
			ssl_say(ssl, "502 Bad Gateway", "kiln: the Deno runtime bound to this name listens on no port yet");
			goto out;
		}
	}
	/* kac_port_raw consumes c. */
	if (kac_port_raw(c, port, NULL, &rfd, &kerr)) {
		ssl_say(ssl, "502 Bad Gateway", "kiln: nothing listens on the sandbox's port");
		goto out;
	}
	tv.tv_sec = 0;
	setsockopt(ca->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	tv.tv_sec = 30;
	setsockopt(ca->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	pump(ssl, ca->fd, rfd);
out:
	if (rfd >= 0)
		close(rfd);
	SSL_free(ssl);
	ERR_clear_error();
	close(ca->fd);
	pthread_mutex_lock(&in->m);
	in->nconn--;
	pthread_mutex_unlock(&in->m);
	free(ca);
	return NULL;
}

static void *accept_main(void *arg)
{
	struct kd_ingress *in = arg;
	pthread_attr_t attr;

	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, 256 * 1024);
	while (!in->stop) {
		int fd = accept4(in->lfd, NULL, NULL, SOCK_CLOEXEC);
		struct conn_arg *ca;
		pthread_t th;
		int full;

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE)
				usleep(errno == EMFILE || errno == ENFILE ? 100000 : 0);
			continue;
		}
		pthread_mutex_lock(&in->m);
		full = in->nconn >= KD_INGRESS_CONNS;
		if (!full)
			in->nconn++;
		pthread_mutex_unlock(&in->m);
		ca = full ? NULL : malloc(sizeof(*ca));
		if (!ca) {
			close(fd);
			if (!full) {
				pthread_mutex_lock(&in->m);
				in->nconn--;
				pthread_mutex_unlock(&in->m);
			}
			continue;
		}
		ca->in = in;
		ca->fd = fd;
		if (pthread_create(&th, &attr, conn_main, ca)) {
			close(fd);
			free(ca);
			pthread_mutex_lock(&in->m);
			in->nconn--;
			pthread_mutex_unlock(&in->m);
		}
	}
	pthread_attr_destroy(&attr);
	return NULL;
}

int kd_ingress_start(struct kilnd *kd, struct kiln_err *err)
{
	const struct kd_conf *c = &kd->conf;
	struct sockaddr_in sa = { .sin_family = AF_INET };
	char host[64], *colon;
	struct kd_ingress *in;
	int one = 1;
	long port;

	if (!c->expose_listen[0])
		return 0;
	if (!kd->ca)
		return kiln_fail(err, EINVAL, "--expose-listen needs the node CA, which this node has not: %s",
				 kd->ca_why[0] ? kd->ca_why : kd->net_why);
	snprintf(host, sizeof(host), "%s", c->expose_listen);
	colon = strrchr(host, ':');
	port = colon ? strtol(colon + 1, NULL, 10) : 0;
	if (!colon || port <= 0 || port > 65535)
		return kiln_fail(err, EINVAL, "--expose-listen %s: give ADDR:PORT, such as 127.0.0.1:8443", c->expose_listen);
	*colon = '\0';
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
		return kiln_fail(err, EINVAL, "--expose-listen %s: %s is not an IPv4 address", c->expose_listen, host);
	sa.sin_port = htons((uint16_t)port);
	in = calloc(1, sizeof(*in));
	if (!in)
		return kiln_fail(err, ENOMEM, "out of memory");
	in->kd = kd;
	in->public_port = (uint16_t)port;
	snprintf(in->domain, sizeof(in->domain), "%s", c->expose_domain[0] ? c->expose_domain : "localhost");
	pthread_mutex_init(&in->m, NULL);
	in->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (in->lfd < 0 || setsockopt(in->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(in->lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(in->lfd, 128)) {
		int e = errno;

		if (in->lfd >= 0)
			close(in->lfd);
		free(in);
		return kiln_fail(err, e, "--expose-listen %s: %s", c->expose_listen, strerror(e));
	}
	in->base = SSL_CTX_new(TLS_server_method());
	if (!in->base) {
		close(in->lfd);
		free(in);
		return kiln_fail(err, ENOMEM, "cannot make a TLS context");
	}
	SSL_CTX_set_min_proto_version(in->base, TLS1_2_VERSION);
	SSL_CTX_set_tlsext_servername_callback(in->base, sni_cb);
	SSL_CTX_set_tlsext_servername_arg(in->base, in);
	if (pthread_create(&in->th, NULL, accept_main, in)) {
		SSL_CTX_free(in->base);
		close(in->lfd);
		free(in);
		return kiln_fail(err, EAGAIN, "cannot start the ingress thread");
	}
	kd->ingress = in;
	lwsl_user("kilnd: exposed ports served on https://*.%s:%ld (TLS from the node CA, STATE/ca/ca.crt)\n",
		  in->domain, port);
	return 0;
}

int kd_ingress_alloc(struct kilnd *kd, const char *id, const char *vsock, char *domain, size_t n, struct kiln_err *err)
{
	struct kd_ingress *in = kd->ingress;
	static const char alpha[] = "0123456789abcdefghjkmnpqrstvwxyz";
	unsigned char rnd[8];
	struct binding *b;
	unsigned count = 0;
	char label[REG_ID_MAX];

	if (!in)
		return kiln_fail(err, ENOTSUP, "this node exposes no ports: start kilnd with --expose-listen ADDR:PORT "
				 "(make run does)");
	if (getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd))
		return kiln_fail(err, EIO, "getrandom failed");
	snprintf(label, sizeof(label), "%s", id);
	for (char *p = label; *p; p++)
		if (*p == '_')
			*p = '-';
	b = calloc(1, sizeof(*b));
	if (!b)
		return kiln_fail(err, ENOMEM, "out of memory");
	snprintf(b->host, sizeof(b->host), "%s-%c%c%c%c%c%c.%s", label, alpha[rnd[0] & 31], alpha[rnd[1] & 31],
		 alpha[rnd[2] & 31], alpha[rnd[3] & 31], alpha[rnd[4] & 31], alpha[rnd[5] & 31], in->domain);
	snprintf(b->id, sizeof(b->id), "%s", id);
	snprintf(b->vsock, sizeof(b->vsock), "%s", vsock);
	pthread_mutex_lock(&in->m);
	for (struct binding *x = in->b; x; x = x->next)
		count += !strcmp(x->id, id);
	if (count >= KD_INGRESS_NAMES) {
		pthread_mutex_unlock(&in->m);
		free(b);
		return kiln_fail(err, ENOSPC, "sandbox %s has %u exposed names already", id, count);
	}
	b->next = in->b;
	in->b = b;
	pthread_mutex_unlock(&in->m);
	if (in->public_port == 443)
		snprintf(domain, n, "%s", b->host);
	else
		snprintf(domain, n, "%s:%u", b->host, in->public_port);
	return 0;
}

int kd_ingress_bind(struct kilnd *kd, const char *id, const char *domain, uint16_t port, uint64_t guest_pid,
		    struct kiln_err *err)
{
	struct kd_ingress *in = kd->ingress;
	char host[192];
	struct binding *b;

	if (!in)
		return kiln_fail(err, ENOTSUP, "this node exposes no ports (kilnd --expose-listen)");
	snprintf(host, sizeof(host), "%s", domain);
	host[strcspn(host, ":")] = '\0';
	pthread_mutex_lock(&in->m);
	b = find_host(in, host);
	if (b && !strcmp(b->id, id)) {
		b->port = port;
		b->guest_pid = guest_pid;
		b->bound = 1;
	}
	pthread_mutex_unlock(&in->m);
	if (!b || strcmp(b->id, id))
		return kiln_fail(err, ENOENT, "%s is not a name exposed for sandbox %s: allocate it with the expose "
				 "call first", domain, id);
	return 0;
}

void kd_ingress_forget(struct kilnd *kd, const char *id)
{
	struct kd_ingress *in = kd->ingress;

	if (!in)
		return;
	pthread_mutex_lock(&in->m);
	for (struct binding **pp = &in->b; *pp;) {
		if (!strcmp((*pp)->id, id)) {
			struct binding *d = *pp;

			*pp = d->next;
			free(d);
			continue;
		}
		pp = &(*pp)->next;
	}
	pthread_mutex_unlock(&in->m);
}
