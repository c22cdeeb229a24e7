/*
 * fake-kilnd: a stand-in for kilnd's agent WebSocket and a few REST
 * answers, for the CLI's tunnel test (tests/kilnd-cli/tunnel.sh) where no VM
 * can boot. A libwebsockets server on a unix socket:
 *
 *   GET /v1/sandboxes/sbx_ok           200 a running sandbox
 *   GET /v1/sandboxes/OTHER            404 {"code","message"}
 *   GET /v1/sandboxes/sbx_ok/agent     WebSocket kiln-agent.v1, bridged to the
 *                                      agent at AGENT_SOCK (kiln-agent-host),
 *                                      after the CONNECT/OK exchange
 *   GET /v1/sandboxes/sbx_drop/agent   the same, closed after 2 messages out
 *                                      with the reason "sandbox killed"
 *   GET /v1/sandboxes/sbx_text/agent   the same, but sends a text message
 *
 *   fake-kilnd SOCK AGENT_SOCK
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <libwebsockets.h>

static const char *agent_path;
static volatile sig_atomic_t stop;

struct sess {
	struct lws *ws, *file;
	int drop, text, sent;
	unsigned char out[LWS_PRE + 65536];
	size_t out_len;
	int closing;
};

/* The only session at a time (tests run one client at once). */
static struct sess *cur;

static int agent_dial(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char line[64];
	size_t n = 0;
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", agent_path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || write(fd, "CONNECT 1024\n", 13) != 13)
		goto fail;
	while (n < sizeof(line) - 1 && read(fd, line + n, 1) == 1 && line[n] != '\n')
		n++;
	if (strncmp(line, "OK ", 3))
		goto fail;
	return fd;
fail:
	if (fd >= 0)
		close(fd);
	return -1;
}

static int reply(struct lws *wsi, int status, const char *body)
{
	unsigned char buf[LWS_PRE + 1024], *start = buf + LWS_PRE, *p = start, *end = buf + sizeof(buf) - 1;
	size_t n = strlen(body);

	if (lws_add_http_common_headers(wsi, (unsigned)status, "application/json", n, &p, end) ||
	    lws_finalize_write_http_header(wsi, start, &p, end))
		return -1;
	if (lws_write(wsi, (unsigned char *)body, n, LWS_WRITE_HTTP_FINAL) != (int)n)
		return -1;
	return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int http_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	const char *uri = in;

	if (reason == LWS_CALLBACK_HTTP) {
		if (!strcmp(uri, "/v1/sandboxes/sbx_ok"))
			return reply(wsi, 200, "{\"id\":\"sbx_ok\",\"state\":\"running\",\"memory_mb\":1280,\"vcpus\":2,"
				     "\"labels\":{\"team\":\"a\"}}");
		return reply(wsi, 404, "{\"code\":\"not_found\",\"message\":\"no sandbox with that id "
			     "(kiln ls lists them)\"}");
	}
	return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static int agent_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	struct sess *s = cur;
	char uri[128];
	lws_sock_file_fd_type u;
	ssize_t r;

	(void)user;
	switch (reason) {
	case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
		if (lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI) < 0 || cur ||
		    (strcmp(uri, "/v1/sandboxes/sbx_ok/agent") && strcmp(uri, "/v1/sandboxes/sbx_drop/agent") &&
		     strcmp(uri, "/v1/sandboxes/sbx_text/agent")))
			return 1;
		cur = calloc(1, sizeof(*cur));
		cur->drop = strstr(uri, "drop") != NULL;
		cur->text = strstr(uri, "text") != NULL;
		return 0;
	default:
		break;
	}
	if (!s)
		return 0;
	switch (reason) {
	case LWS_CALLBACK_ESTABLISHED:
		s->ws = wsi;
		u.filefd = agent_dial();
		if (u.filefd < 0)
			return -1;
		s->file = lws_adopt_descriptor_vhost(lws_get_vhost(wsi), LWS_ADOPT_RAW_FILE_DESC, u, "kiln-agent.v1", NULL);
		return s->file ? 0 : -1;
	case LWS_CALLBACK_RECEIVE:
		/* Blocking until the agent took it all: a test server may stall. */
		while (s->file && len) {
			struct pollfd p = { .fd = lws_get_socket_fd(s->file), .events = POLLOUT };

			r = write(p.fd, in, len);
			if (r < 0 && errno != EAGAIN && errno != EINTR)
				return -1;
			if (r > 0) {
				in = (char *)in + r;
				len -= (size_t)r;
			} else {
				poll(&p, 1, 1000);
			}
		}
		return 0;
	case LWS_CALLBACK_SERVER_WRITEABLE:
		if (s->out_len) {
			if (lws_write(wsi, s->out + LWS_PRE, s->out_len, s->text ? LWS_WRITE_TEXT : LWS_WRITE_BINARY) < 0)
				return -1;
			s->out_len = 0;
			if (s->drop && ++s->sent >= 2) {
				lws_close_reason(wsi, LWS_CLOSE_STATUS_GOINGAWAY, (unsigned char *)"sandbox killed", 14);
				return -1;
			}
			if (s->text)
				return -1;
			if (s->file)
				lws_rx_flow_control(s->file, 1);
		}
		return s->closing ? -1 : 0;
	case LWS_CALLBACK_CLOSED:
		s->ws = NULL;
		if (s->file)
			lws_set_timeout(s->file, PENDING_TIMEOUT_KILLED_BY_PARENT, LWS_TO_KILL_ASYNC);
		else {
			free(s);
			cur = NULL;
		}
		return 0;
	case LWS_CALLBACK_RAW_RX_FILE:
		r = read(lws_get_socket_fd(wsi), s->out + LWS_PRE, sizeof(s->out) - LWS_PRE);
		if (r <= 0)
			return -1;
		s->out_len = (size_t)r;
		lws_rx_flow_control(wsi, 0);
		if (s->ws)
			lws_callback_on_writable(s->ws);
		return 0;
	case LWS_CALLBACK_RAW_CLOSE_FILE:
		s->file = NULL;
		if (s->ws) {
			s->closing = 1;
			lws_callback_on_writable(s->ws);
		} else {
			free(s);
			cur = NULL;
		}
		return 0;
	default:
		return 0;
	}
}

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

int main(int argc, char **argv)
{
	static const struct lws_protocols protocols[] = {
		{ "http", http_cb, 0, 0, 0, NULL, 0 },
		{ "kiln-agent.v1", agent_cb, 0, 65536, 0, NULL, 0 },
		{ NULL, NULL, 0, 0, 0, NULL, 0 },
	};
	struct lws_context_creation_info info;
	struct lws_context *ctx;

	if (argc != 3) {
		fprintf(stderr, "usage: fake-kilnd SOCK AGENT_SOCK\n");
		return 2;
	}
	agent_path = argv[2];
	signal(SIGTERM, on_term);
	signal(SIGINT, on_term);
	signal(SIGPIPE, SIG_IGN);
	lws_set_log_level(LLL_ERR, NULL);
	memset(&info, 0, sizeof(info));
	info.options = LWS_SERVER_OPTION_UNIX_SOCK;
	info.iface = argv[1];
	info.protocols = protocols;
	info.gid = -1;
	info.uid = -1;
	ctx = lws_create_context(&info);
	if (!ctx)
		return 1;
	while (!stop && lws_service(ctx, 0) >= 0)
		;
	lws_context_destroy(ctx);
	free(cur);
	return 0;
}
