/*
 * kac-pipeline-test: IDENTITY sent ahead of an exec (kac_identity_send and
 * kac_identity_wait in api/agent_client.h) against a live agent.
 *
 *   kac-pipeline-test UDS
 *
 * The exec sent right behind IDENTITY must already run as the new identity
 * (the agent handles a connection's requests in order); the answer of an
 * IDENTITY the agent refuses must still come back from kac_identity_wait,
 * after an exec that ran in between; a second IDENTITY while one is on its
 * way is refused by the client. The agent here is kiln-agent-host, which
 * refuses a hostname (it would change the host's). Prints "ok NAME" per
 * check and exits 0, or names the first failure and exits 1.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent_client.h"

static char out[256];
static size_t outlen;

static int collect(void *arg, int chan, const void *p, size_t n)
{
	(void)arg;
	if (chan == 1 && outlen + n < sizeof(out)) {
		memcpy(out + outlen, p, n);
		outlen += n;
		out[outlen] = '\0';
	}
	return 0;
}

/* Run sh -c script; its stdout into out. */
static int run_sh(struct kac *c, const char *script, struct kac_err *err)
{
	const char *const argv[] = { "sh", "-c", script, NULL };
	struct kac_exec_opts eo = { .argv = argv, .stdin_fd = -1, .stdout_fd = -1, .stderr_fd = -1, .sig_fd = -1,
				    .tty_fd = -1, .out_fn = collect };
	struct kac_exit ex;
	int r;

	outlen = 0;
	out[0] = '\0';
	r = kac_exec(c, &eo, &ex, err);
	return r ? r : (int)ex.code;
}

static void fail(const char *what, const char *detail)
{
	printf("FAILED %s: %s\n", what, detail);
	exit(1);
}

int main(int argc, char **argv)
{
	const char *const env[] = { "KILN_PIPE_TEST=piped", NULL };
	struct kac_identity id = { .sandbox_id = "pipe-1", .env = env };
	struct kac_identity bad = { .sandbox_id = "pipe-2", .hostname = "elsewhere" };
	struct kac_err err = { 0 };
	struct kac *c;
	int r;

	if (argc != 2) {
		fprintf(stderr, "usage: kac-pipeline-test UDS\n");
		return 2;
	}
	if (kac_connect(&c, argv[1], 10000, &err)) {
		fprintf(stderr, "kac-pipeline-test: %s\n", err.msg);
		return 2;
	}

	if (kac_identity_send(c, &id, &err))
		fail("identity_send", err.msg);
	if (kac_identity_send(c, &id, &err) != -EBUSY)
		fail("a second identity_send while one is on its way", "not refused with EBUSY");
	if ((r = run_sh(c, "echo $KILN_SANDBOX_ID $KILN_PIPE_TEST", &err)))
		fail("the exec behind IDENTITY", r < 0 ? err.msg : "exited non-zero");
	if (strcmp(out, "pipe-1 piped\n"))
		fail("the exec behind IDENTITY sees the new identity", out);
	if (kac_identity_wait(c, &err))
		fail("identity_wait after the exec", err.msg);
	printf("ok the exec sent behind IDENTITY runs as the new identity, and the answer is kept\n");

	if (kac_identity_wait(c, &err) != -EINVAL)
		fail("identity_wait with none sent", "not refused");
	printf("ok identity_wait with none on its way is refused\n");

	if (kac_identity_send(c, &bad, &err))
		fail("identity_send (refused later)", err.msg);
	if ((r = run_sh(c, "echo $KILN_SANDBOX_ID", &err)) || strcmp(out, "pipe-1\n"))
		fail("an exec behind a refused IDENTITY runs as before", r < 0 ? err.msg : out);
	r = kac_identity_wait(c, &err);
	if (r >= 0 || !strstr(err.msg, "would change the host"))
		fail("the refused IDENTITY's error comes back from identity_wait", r >= 0 ? "no error" : err.msg);
	printf("ok a refused IDENTITY's error comes back from identity_wait, after the exec behind it\n");

	/* Not yet answered when waited for: the wait itself reads the answer. */
	if (kac_identity_send(c, &id, &err) || kac_identity_wait(c, &err))
		fail("identity_send then identity_wait at once", err.msg);
	printf("ok identity_wait right after identity_send reads the answer itself\n");
	kac_close(c);

	/*
	 * kac_connect_early: CONNECT, HELLO, IDENTITY and the exec in one go;
	 * the "OK" line and HELLO are read ahead of the answers.
	 */
	if (kac_connect_early(&c, argv[1], 10000, &err))
		fail("kac_connect_early", err.msg);
	if (kac_identity_send(c, &id, &err))
		fail("identity_send on an early connection", err.msg);
	if ((r = run_sh(c, "echo $KILN_SANDBOX_ID $KILN_PIPE_TEST", &err)) || strcmp(out, "pipe-1 piped\n"))
		fail("the exec on an early connection", r < 0 ? err.msg : out);
	if (kac_identity_wait(c, &err))
		fail("identity_wait on an early connection", err.msg);
	if (!kac_agent_name(c)[0])
		fail("the agent's HELLO on an early connection", "no agent name taken from it");
	printf("ok an early connection sends CONNECT, HELLO, IDENTITY and an exec at once (agent %s)\n",
	       kac_agent_name(c));
	kac_close(c);

	/* Nobody listening: the socket never appears within the timeout. */
	r = kac_connect_early(&c, "/nonexistent/kiln-early.sock", 30, &err);
	if (r != -ENOENT || !strstr(err.msg, "no VM listening"))
		fail("kac_connect_early without a socket", r ? err.msg : "connected");
	printf("ok kac_connect_early without a socket fails with ENOENT and says why\n");
	return 0;
}
