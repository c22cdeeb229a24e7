/*
 * The kiln CLI's side of kilnd (docs: /v1 REST and the agent WebSocket):
 * where kilnd listens, one synchronous HTTP request with a JSON reply, the
 * REST verbs (create, ls, info, extend, kill, events, metrics, node, token,
 * template) and the agent tunnel. HTTP and WebSocket are libwebsockets',
 * JSON is jansson's. Internal to the CLI (api/kiln*.c).
 */
#ifndef KILN_REMOTE_H
#define KILN_REMOTE_H

#include <stddef.h>

#include <jansson.h>

#include "err.h"

#define KR_DEFAULT_ENDPOINT	"unix:/run/kiln/kilnd.sock"
#define KR_BODY_MAX		(16u << 20)	/* the largest reply body we keep */
#define KR_TIMEOUT_MS		60000		/* a request kilnd does not answer */
#define KR_SLOW_TIMEOUT_MS	600000		/* create and template build may boot a template */

/* Where kilnd listens: --endpoint, else $KILN_ENDPOINT, else KR_DEFAULT_ENDPOINT. */
struct kr_endpoint {
	int is_unix;
	char path[108];		/* unix: the socket (sun_path's size) */
	char host[256];		/* http: the host name or address */
	int port;
	const char *text;	/* as given, for messages */
	const char *token;	/* $KILN_TOKEN, sent as Authorization: Bearer; NULL: none */
};

/*
 * Parse "unix:/PATH" or "http://HOST:PORT" (HOST may be [v6]) into ep, and
 * pick up $KILN_TOKEN. Returns 0, or -EINVAL with a message naming the form.
 */
int kr_endpoint_parse(struct kr_endpoint *ep, const char *text, struct kiln_err *err);

/* One answer of kilnd. */
struct kr_reply {
	int status;		/* the HTTP status */
	json_t *json;		/* the body parsed, when it is JSON; else NULL */
	char *body;		/* the body as received, NUL-terminated */
	size_t len;
	size_t cap;		/* bytes allocated at body */
};

/* Free what a reply holds (not rep itself). */
void kr_reply_free(struct kr_reply *rep);

/*
 * One request: METHOD path (with any query) with body (NULL: none) sent as
 * JSON, waiting at most timeout_ms for the whole answer. Returns 0 with
 * *rep filled for any HTTP status; -ECONNREFUSED (or the connect's errno)
 * when kilnd cannot be reached, -ETIMEDOUT, -EFBIG for a body over
 * KR_BODY_MAX, -EPROTO for a broken answer; err says which and how to fix it.
 */
int kr_request(const struct kr_endpoint *ep, const char *method, const char *path, json_t *body,
	       int timeout_ms, struct kr_reply *rep, struct kiln_err *err);

/*
 * Open the agent WebSocket of sandbox id (GET /v1/sandboxes/{id}/agent,
 * subprotocol kiln-agent.v1) within timeout_ms and bridge it to one end of a
 * socketpair, on a thread that runs the libwebsockets loop. Returns 0 with
 * *fd the other end: a stream that carries the agent's bytes both ways, for
 * kac_connect_fd. Closing *fd closes the WebSocket; kilnd closing it ends
 * the stream (EOF on *fd). On failure -errno and err: -ECONNREFUSED (or the
 * connect's errno) when kilnd is unreachable, -EACCES when kilnd refused
 * the upgrade (err holds kilnd's message), -ETIMEDOUT.
 */
int kr_tunnel_open(const struct kr_endpoint *ep, const char *id, int timeout_ms, int *fd,
		   struct kiln_err *err);

/*
 * The reason kilnd gave when it last closed an agent WebSocket (its close
 * frame's text), copied into buf; NULL when it gave none.
 */
const char *kr_tunnel_close_reason(char *buf, size_t cap);

/* ---- used by the two files above ------------------------------------------- */

/*
 * Why a connection to ep fails, found by connecting once more without
 * libwebsockets (which keeps only "Unable to connect"): strerror's text, a
 * name lookup's error in buf, or NULL when it connects now.
 */
const char *kr_probe(const struct kr_endpoint *ep, char *buf, size_t cap);

/* "cannot reach kilnd at EP: WHY (is kilnd running? set KILN_ENDPOINT)" into err; returns -errnum. */
int kr_unreachable(const struct kr_endpoint *ep, int errnum, const char *why, struct kiln_err *err);

/* libwebsockets' logging: quiet unless $KILN_LWS_LOG holds a level mask. */
void kr_lws_log_init(void);

struct lws_context_creation_info;
struct lws_protocols;

/* A client-only context's info: protocols, user (lws_context_user), timeouts past timeout_ms. */
void kr_lws_context_info(struct lws_context_creation_info *info, const struct lws_protocols *protocols,
			 void *user, int timeout_ms);

/* ---- the verbs (kiln_remote.c), each given its argv (argv[0] the verb) ------ */

int kr_cmd_create(int argc, char **argv);
int kr_cmd_ls(int argc, char **argv);
int kr_cmd_info(int argc, char **argv);
int kr_cmd_extend(int argc, char **argv);
int kr_cmd_kill(int argc, char **argv);
int kr_cmd_events(int argc, char **argv);
int kr_cmd_metrics(int argc, char **argv);
int kr_cmd_node(int argc, char **argv);
int kr_cmd_token(int argc, char **argv);
int kr_cmd_template(int argc, char **argv);
int kr_cmd_image(int argc, char **argv);
int kr_cmd_volume(int argc, char **argv);

/* A sandbox, token or template id usable in a URL path, or die_usage naming what. */
void kr_check_id(const char *s, const char *what);

#endif
