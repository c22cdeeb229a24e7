/*
 * kd-ssh-test: kilnd's SSH gateway (api/kilnd/kd_ssh.c) alone, for
 * tests/ssh/run.sh. Starts it on ADDR:PORT with STATE_DIR's host key, makes
 * a credential for sandbox "sbx-ssh-test" whose agent is at VSOCK (a
 * kiln-agent-host socket: it speaks the VMM's CONNECT/OK itself), one for
 * another sandbox at the same socket and one for a sandbox whose socket is
 * missing, prints the three usernames on a line, then "auth ok" once
 * libssh's client got in with a password and with a key (OpenSSH always
 * tries "none" first, so only this exercises those callbacks), then at each
 * line on stdin: forgets "sbx-ssh-test", then stops.
 *
 *   kd-ssh-test ADDR:PORT STATE_DIR VSOCK
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libssh/libssh.h>

#include "err.h"
#include "kd_ssh.h"

#define SBX	"sbx-ssh-test"

static int line(void)
{
	char b[64];

	return fgets(b, sizeof(b), stdin) ? 0 : -1;
}

/* Authenticate as user at addr ("IP:PORT") by password, or with a fresh key (probe, then signed): SSH_AUTH_*. */
static int auth(const char *addr, const char *user, int by_key)
{
	char host[64];
	char *colon;
	ssh_session ss = ssh_new();
	ssh_key key = NULL;
	bool no = false;
	int r = SSH_AUTH_ERROR;
	unsigned port;

	snprintf(host, sizeof(host), "%s", addr);
	colon = strrchr(host, ':');
	if (!ss || !colon)
		goto out;
	*colon = '\0';
	port = (unsigned)atoi(colon + 1);
	ssh_options_set(ss, SSH_OPTIONS_PROCESS_CONFIG, &no);
	ssh_options_set(ss, SSH_OPTIONS_HOST, host);
	ssh_options_set(ss, SSH_OPTIONS_PORT, &port);
	ssh_options_set(ss, SSH_OPTIONS_USER, user);
	if (ssh_connect(ss) != SSH_OK)
		goto out;
	if (!by_key) {
		r = ssh_userauth_password(ss, NULL, "any password at all");
	} else if (ssh_pki_generate(SSH_KEYTYPE_ED25519, 0, &key) == SSH_OK) {
		r = ssh_userauth_try_publickey(ss, NULL, key);
		if (r == SSH_AUTH_SUCCESS)
			r = ssh_userauth_publickey(ss, NULL, key);
	}
	ssh_disconnect(ss);
out:
	ssh_key_free(key);
	ssh_free(ss);
	return r;
}

int main(int argc, char **argv)
{
	char user[KD_SSH_USER_MAX], other[KD_SSH_USER_MAX], gone[KD_SSH_USER_MAX], nosock[4200];
	struct kiln_err err = { "" };
	struct kd_ssh *s;
	int r;

	if (argc != 4) {
		fprintf(stderr, "usage: kd-ssh-test ADDR:PORT STATE_DIR VSOCK\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (kd_ssh_start(argv[1], argv[2], &s, &err)) {
		fprintf(stderr, "kd-ssh-test: %s\n", err.msg);
		return 1;
	}
	/* The API's refusals, before the credential the script uses. */
	r = kd_ssh_user_new(s, "", argv[3], user, sizeof(user), &err);
	if (r != -EINVAL) {
		fprintf(stderr, "kd-ssh-test: an empty sandbox id was taken (%d)\n", r);
		return 1;
	}
	r = kd_ssh_user_new(s, SBX, argv[3], user, 8, &err);
	if (r != -EINVAL) {
		fprintf(stderr, "kd-ssh-test: a short username buffer was taken (%d)\n", r);
		return 1;
	}
	snprintf(nosock, sizeof(nosock), "%s.gone", argv[3]);
	if (kd_ssh_user_new(s, SBX, argv[3], user, sizeof(user), &err) ||
	    kd_ssh_user_new(s, "sbx-other", argv[3], other, sizeof(other), &err) ||
	    kd_ssh_user_new(s, "sbx-gone", nosock, gone, sizeof(gone), &err)) {
		fprintf(stderr, "kd-ssh-test: %s\n", err.msg);
		return 1;
	}
	/* The other sandbox's username outlives SBX's forget. */
	printf("%s %s %s\n", user, other, gone);
	r = auth(argv[1], user, 0) == SSH_AUTH_SUCCESS && auth(argv[1], user, 1) == SSH_AUTH_SUCCESS &&
	    auth(argv[1], "kiln-aaaaaaaaaaaaaaaaaaaaaaaa", 0) == SSH_AUTH_DENIED &&
	    auth(argv[1], "kiln-aaaaaaaaaaaaaaaaaaaaaaaa", 1) == SSH_AUTH_DENIED;
	printf("auth %s\n", r ? "ok" : "failed");
	if (line())
		goto stop;
	kd_ssh_forget(s, SBX);
	printf("forgot\n");
	line();
stop:
	kd_ssh_stop(s);
	printf("stopped\n");
	return 0;
}
