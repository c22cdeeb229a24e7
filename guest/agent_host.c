/*
 * kiln-agent-host: the guest agent on the host, serving a unix socket, for
 * tests that build it with ASan and UBSan (make's build/asan/kiln-agent-host).
 * Never the guest's init: it mounts nothing and signals only what it started.
 *
 *   kiln-agent-host --listen unix:PATH
 */
#include <stdio.h>
#include <string.h>

#include "agent.h"

int main(int argc, char **argv)
{
	if (argc != 3 || strcmp(argv[1], "--listen") != 0 || strncmp(argv[2], "unix:", 5) != 0 || !argv[2][5]) {
		fprintf(stderr, "usage: kiln-agent-host --listen unix:PATH  (a test harness: the agent on a unix socket)\n");
		return 2;
	}
	return agent_main_unix(argv[2] + 5) < 0 ? 1 : 0;
}
