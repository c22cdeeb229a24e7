/* kiln identity, shutdown and env: the sandbox itself. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent_proto.h"
#include "agent_client.h"
#include "kiln_cli.h"

/* ---- control ------------------------------------------------------------------ */

int cmd_identity(int argc, char **argv)
{
	struct common o;
	struct kac_identity id;
	struct kac_err err = { "", 0 };
	struct kac *c;
	char *end;
	int ret;

	no_operands(argc, argv, parse_opts(argc, argv, &o));
	memset(&id, 0, sizeof(id));
	id.sandbox_id = o.id;
	id.hostname = o.hostname;
	id.env = o.env;
	id.clear_env = o.clear_env;
	id.set_clock = 1;
	if (o.clock && strcmp(o.clock, "none") == 0) {
		id.set_clock = 0;
	} else if (o.clock && strcmp(o.clock, "now") != 0) {
		errno = 0;
		id.realtime_ns = strtoull(o.clock, &end, 10);
		if (errno || *end || !id.realtime_ns || id.realtime_ns > (uint64_t)INT64_MAX)
			die_usage("--clock %s: expected now, none, or nanoseconds since the epoch", o.clock);
	}
	c = connect_or_die(&o);
	ret = kac_identity(c, &id, &err);
	kac_close(c);
	free(o.env);
	if (ret)
		fprintf(stderr, "%s: %s%s\n", prog, err.msg, hint(&err));
	return ret ? EXIT_FAIL : 0;
}

int cmd_shutdown(int argc, char **argv)
{
	struct common o;
	struct kac_err err = { "", 0 };
	struct kac *c;
	long ms = 0;
	char *end;

	no_operands(argc, argv, parse_opts(argc, argv, &o));
	if (o.timeout_arg) {
		errno = 0;
		ms = strtol(o.timeout_arg, &end, 10);
		if (errno || *end || ms < 1 || ms > 600000)
			die_usage("shutdown --timeout %s: expected milliseconds, 1 to 600000", o.timeout_arg);
	}
	c = connect_or_die(&o);
	return cmd_done(c, kac_shutdown(c, (int)ms, o.reboot, &err), "shutdown", &err);
}

static int env_entry(void *arg, const char *e)
{
	struct listing *s = arg;
	size_t kl = strcspn(e, "=");
	char key[4096];

	if (!s->json) {
		put_guest(e, 0);
		putchar('\n');
		return 0;
	}
	snprintf(key, sizeof(key), "%.*s", (int)(kl < sizeof(key) ? kl : sizeof(key) - 1), e);
	printf("%s", s->n++ ? "," : "{");
	json_str(key);
	putchar(':');
	json_str(e[kl] ? e + kl + 1 : "");
	return 0;
}

int cmd_env(int argc, char **argv)
{
	struct common o;
	struct kac_err err = { "", 0 };
	struct listing st = { 0, 0 };
	struct kac *c;
	const char *sub;
	char *val = NULL;
	int i, ret;

	i = parse_opts(argc, argv, &o);
	sub = i < argc ? argv[i++] : "list";
	if ((!strcmp(sub, "list") && i != argc) || (!strcmp(sub, "get") && argc - i != 1) ||
	    (!strcmp(sub, "unset") && argc - i != 1) || (!strcmp(sub, "set") && argc - i != 2))
		die_usage("env: expected list, get KEY, set KEY VALUE or unset KEY");
	if (strcmp(sub, "list") && strcmp(sub, "get") && strcmp(sub, "set") && strcmp(sub, "unset"))
		die_usage("env: %s: expected list, get, set or unset", sub);
	c = connect_or_die(&o);
	if (!strcmp(sub, "list")) {
		st.json = o.json;
		ret = kac_env_list(c, env_entry, &st, &err);
		if (!ret && o.json)
			puts(st.n ? "}" : "{}");
	} else if (!strcmp(sub, "get")) {
		ret = kac_env_get(c, argv[i], &val, &err);
		if (!ret && !val) {
			kac_close(c);
			fprintf(stderr, "%s: env: %s is not set in the guest's default environment\n", prog, argv[i]);
			return EXIT_FAIL;
		}
		if (!ret)
			puts(val);
		free(val);
	} else if (!strcmp(sub, "set")) {
		ret = kac_env_set(c, argv[i], argv[i + 1], &err);
	} else {
		ret = kac_env_unset(c, argv[i], &err);
	}
	return cmd_done(c, ret, "env", &err);
}
