/* kiln-agent: control: health, identity, environment, shutdown. */
#include "agent_int.h"

void op_health(struct conn *c, const struct req *r)
{
	struct agent *a = c->ag;
	const struct kp_frame *f = r->f;
	struct timespec ts;
	struct kp_recw w;

	clock_gettime(CLOCK_BOOTTIME, &ts);
	rec_begin(c, &w);
	kp_put_u64(&w, KT_UPTIME_NS, (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
	kp_put_u64(&w, KT_PROCS, a->nlive);
	rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
}


/* ---- control: identity, environment, shutdown --------------------------------------- */

/*
 * The default environment (the base of every exec, what ENV_* edit) is kept
 * here rather than in environ: setenv(3) leaks the strings it replaces, and a
 * host may set variables forever. Bounded by MAX_ENV entries and MAX_ENV_BYTES.
 */
int env_init(struct agent *a)
{
	size_t i;

	a->envs = calloc(MAX_ENV + 1, sizeof(*a->envs));
	if (!a->envs)
		return -ENOMEM;
	for (i = 0; environ[i] && a->nenvs < MAX_ENV; i++) {
		size_t n = strlen(environ[i]);

		if (!strchr(environ[i], '=') || a->env_bytes + n > MAX_ENV_BYTES)
			continue;
		a->envs[a->nenvs] = strdup(environ[i]);
		if (!a->envs[a->nenvs])
			return -ENOMEM;
		a->env_bytes += n;
		a->nenvs++;
	}
	return 0;
}

void env_free(struct agent *a)
{
	size_t i;

	for (i = 0; i < a->nenvs; i++)
		free(a->envs[i]);
	free(a->envs);
	a->envs = NULL;
	a->nenvs = a->env_bytes = 0;
}

/* Index of the entry for key (kl bytes), or -1. */
static ssize_t env_find(struct agent *a, const char *key, size_t kl)
{
	size_t i;

	for (i = 0; i < a->nenvs; i++)
		if (strncmp(a->envs[i], key, kl) == 0 && a->envs[i][kl] == '=')
			return (ssize_t)i;
	return -1;
}

static void env_unset(struct agent *a, const char *key, size_t kl)
{
	ssize_t i = env_find(a, key, kl);

	if (i < 0)
		return;
	a->env_bytes -= strlen(a->envs[i]);
	free(a->envs[i]);
	a->envs[i] = a->envs[--a->nenvs];
	a->envs[a->nenvs] = NULL;
}

static void env_clear(struct agent *a)
{
	while (a->nenvs)
		env_unset(a, a->envs[0], strcspn(a->envs[0], "="));
}

/* Set key (kl bytes) to val. 0, -E2BIG past the limits, -ENOMEM. */
static int env_set(struct agent *a, const char *key, size_t kl, const char *val)
{
	size_t n = kl + 1 + strlen(val);
	ssize_t i = env_find(a, key, kl);
	size_t old = i >= 0 ? strlen(a->envs[i]) : 0;
	char *e;

	if ((i < 0 && a->nenvs >= MAX_ENV) || a->env_bytes - old + n > MAX_ENV_BYTES)
		return -E2BIG;
	e = malloc(n + 1);
	if (!e)
		return -ENOMEM;
	memcpy(e, key, kl);
	e[kl] = '=';
	strcpy(e + kl + 1, val);
	if (i >= 0) {
		free(a->envs[i]);
		a->envs[i] = e;
	} else {
		a->envs[a->nenvs++] = e;
	}
	a->env_bytes = a->env_bytes - old + n;
	return 0;
}

/* A variable name: non-empty, no '=' (the bytes are otherwise the caller's business). */
static int env_key_ok(const char *k, size_t kl)
{
	return kl > 0 && kl < MAX_ENV_BYTES && !memchr(k, '=', kl);
}

/* An entry "KEY=VALUE" with a valid key. */
static int env_entry_ok(const char *e)
{
	const char *eq = strchr(e, '=');

	return eq && env_key_ok(e, (size_t)(eq - e));
}

/* Sandbox ids and hostnames: letters, digits and . _ - : only (they land in files and prompts). */
static int name_ok(const char *s, size_t max, const char *extra)
{
	size_t n = strlen(s), i;

	if (n == 0 || n > max)
		return 0;
	for (i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && !strchr(extra, s[i]))
			return 0;
	return 1;
}

/* Write path atomically (a temporary file renamed over it), creating its directory. */
static int write_small_file(const char *dir, const char *path, const char *text)
{
	char tmp[256];
	size_t n = strlen(text);
	int fd, ret = 0;

	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		return -errno;
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	if (write(fd, text, n) != (ssize_t)n)
		ret = -EIO;
	if (close(fd) < 0 && !ret)
		ret = -errno;
	if (!ret && rename(tmp, path) < 0)
		ret = -errno;
	if (ret)
		unlink(tmp);
	return ret;
}

void op_identity(struct conn *c, const struct req *r)
{
	struct agent *a = c->ag;
	const struct kp_frame *f = r->f;
	int bad = 0, ret, clear = (int)arg_u64(f, KT_CLEAR_ENV, 0, &bad);
	char *id = arg_str(f, KT_SANDBOX_ID, &bad), *host = arg_str(f, KT_HOSTNAME, &bad);
	size_t n = 0, i, add = 0;
	char **ev = arg_list(f, KT_ENV, &n, &bad);
	struct kp_field fl;
	uint64_t rt = 0;
	int has_rt = kp_rec_find(f->payload, f->len, KT_REALTIME_NS, &fl) == 1;
	char line[SANDBOX_ID_MAX + 2];

	if (has_rt && kp_field_u64(&fl, &rt) < 0)
		bad = 1;
	if (bad) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "identity: SANDBOX_ID and HOSTNAME are STR, ENV STR*, "
			   "CLEAR_ENV BOOL, REALTIME_NS U64");
		goto out;
	}
	/* Validate everything before changing anything. */
	if (agent_host_mode(a) && (host || has_rt)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "identity: HOSTNAME and REALTIME_NS would change the host's; "
			   "not in host mode (a test agent)");
		goto out;
	}
	if (id && !name_ok(id, SANDBOX_ID_MAX, "._-:")) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "identity: sandbox id must be 1-%d letters, digits or . _ - :",
			   SANDBOX_ID_MAX);
		goto out;
	}
	if (host && !name_ok(host, 64, ".-")) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "identity: hostname must be 1-64 letters, digits, . or -");
		goto out;
	}
	for (i = 0; i < n; i++) {
		if (!env_entry_ok(ev[i])) {
			send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "identity: env entry %zu is not KEY=VALUE", i);
			goto out;
		}
		add += strlen(ev[i]);
	}
	if ((clear ? 0 : a->nenvs) + n + 1 > MAX_ENV ||
	    (clear ? 0 : a->env_bytes) + add + SANDBOX_ID_MAX + 16 > MAX_ENV_BYTES) {
		send_error(c, f->id, KP_ERR_LIMIT, 0, "identity: the environment would exceed %d entries or %u bytes",
			   MAX_ENV, MAX_ENV_BYTES);
		goto out;
	}
	if (has_rt && (rt == 0 || rt > (uint64_t)INT64_MAX)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "identity: REALTIME_NS %llu is not a time",
			   (unsigned long long)rt);
		goto out;
	}
	/* The clock first: what follows (files written) carries the right times. */
	if (has_rt) {
		struct timespec ts = { .tv_sec = (time_t)(rt / 1000000000u), .tv_nsec = (long)(rt % 1000000000u) };

		if (clock_settime(CLOCK_REALTIME, &ts) < 0) {
			os_error(c, f->id, "identity: clock_settime", "", errno);
			goto out;
		}
	}
	if (host) {
		if (sethostname(host, strlen(host)) < 0) {
			os_error(c, f->id, "identity: sethostname", host, errno);
			goto out;
		}
		snprintf(line, sizeof(line), "%s\n", host);
		write_small_file("/etc", "/etc/hostname", line);
	}
	if (id) {
		snprintf(line, sizeof(line), "%s\n", id);
		ret = agent_host_mode(a) ? 0 : write_small_file("/run/kiln", SANDBOX_ID_FILE, line);
		if (ret < 0) {
			os_error(c, f->id, "identity: write", SANDBOX_ID_FILE, -ret);
			goto out;
		}
		strcpy(a->sandbox_id, id);
	}
	if (clear)
		env_clear(a);
	for (i = 0; i < n; i++) {
		size_t kl = strcspn(ev[i], "=");

		if (env_set(a, ev[i], kl, ev[i] + kl + 1) < 0) {
			send_error(c, f->id, KP_ERR_OS, ENOMEM, "identity: out of memory");
			goto out;
		}
	}
	/* The id survives CLEAR_ENV: processes can always find out where they run. */
	if (a->sandbox_id[0] && env_set(a, "KILN_SANDBOX_ID", 15, a->sandbox_id) < 0) {
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "identity: out of memory");
		goto out;
	}
	send_ok(c, f->id);
out:
	free(id);
	free(host);
	strv_free(ev);
}

void op_env(struct conn *c, const struct req *r)
{
	struct agent *a = c->ag;
	const struct kp_frame *f = r->f;
	uint64_t op = r->op;
	int bad = 0, ret;
	char *key = arg_str(f, KT_KEY, &bad), *val = arg_str(f, KT_VALUE, &bad);
	struct kp_recw w;
	ssize_t i;
	size_t k;

	if (bad || (op != KP_OP_ENV_LIST && (!key || !env_key_ok(key, strlen(key)))) ||
	    (op == KP_OP_ENV_SET && !val)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "env: wants KEY (STR, non-empty, no '=')%s",
			   op == KP_OP_ENV_SET ? " and VALUE (STR)" : "");
		goto out;
	}
	rec_begin(c, &w);
	switch (op) {
	case KP_OP_ENV_GET:
		i = env_find(a, key, strlen(key));
		if (i >= 0)
			kp_put_str(&w, KT_VALUE, a->envs[i] + strlen(key) + 1);
		break;
	case KP_OP_ENV_SET:
		ret = env_set(a, key, strlen(key), val);
		if (ret == -E2BIG) {
			send_error(c, f->id, KP_ERR_LIMIT, 0, "env: the environment would exceed %d entries or %u bytes",
				   MAX_ENV, MAX_ENV_BYTES);
			goto out;
		} else if (ret < 0) {
			send_error(c, f->id, KP_ERR_OS, -ret, "env: %s", strerror(-ret));
			goto out;
		}
		break;
	case KP_OP_ENV_DELETE:
		env_unset(a, key, strlen(key));
		break;
	case KP_OP_ENV_LIST:
		for (k = 0; k < a->nenvs; k++)
			kp_put_str(&w, KT_ENV, a->envs[k]);
		break;
	}
	rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
out:
	free(key);
	free(val);
}

/*
 * Signal every process of the sandbox: in the guest all of them (kill -1
 * spares PID 1, the agent); in host mode only the process groups of the
 * processes the agent started (each leads its own session), never the host's.
 */
void signal_all(struct agent *a, int sig)
{
	struct proc *p;

	if (!agent_host_mode(a)) {
		kill(-1, sig);
		return;
	}
	/* An exited one whose pipes are open has children left in its group. */
	for (p = a->procs; p; p = p->next)
		if (!p->done)
			kill(-p->pid, sig);
}

/* Whether any process signal_all would reach is left. */
int any_left(struct agent *a)
{
	if (!agent_host_mode(a))
		return !(kill(-1, 0) < 0 && errno == ESRCH);
	return a->nlive > 0;
}

/*
 * SHUTDOWN answers at once, then SIGTERMs every process; the main loop
 * SIGKILLs what is left when they are all gone or the grace ends, flushes the
 * connections and hands over to the init (agent_stop: sync, power off).
 */
void op_shutdown(struct conn *c, const struct req *r)
{
	struct agent *a = c->ag;
	const struct kp_frame *f = r->f;
	int bad = 0;
	uint64_t ms = arg_u64(f, KT_TIMEOUT_MS, SHUTDOWN_MS, &bad);
	int reboot = (int)arg_u64(f, KT_REBOOT, 0, &bad);
	struct timespec now;
	int64_t ns;

	if (bad || ms > 600000) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "shutdown: TIMEOUT_MS at most 600000, REBOOT BOOL");
		return;
	}
	clock_gettime(CLOCK_MONOTONIC, &now);
	ns = (int64_t)now.tv_nsec + (int64_t)(ms % 1000) * 1000000;
	now.tv_sec += (time_t)(ms / 1000) + (time_t)(ns / 1000000000);
	now.tv_nsec = (long)(ns % 1000000000);
	/* A second SHUTDOWN may shorten the grace, never lengthen it. */
	if (!a->stopping.active || now.tv_sec < a->stopping.deadline.tv_sec ||
	    (now.tv_sec == a->stopping.deadline.tv_sec && now.tv_nsec < a->stopping.deadline.tv_nsec))
		a->stopping.deadline = now;
	a->stopping.reboot |= reboot;
	if (!a->stopping.active) {
		a->stopping.active = 1;
		fprintf(stderr, "kiln-agent: shutdown requested (%llu ms grace)\n", (unsigned long long)ms);
		signal_all(a, SIGTERM);
	}
	send_ok(c, f->id);
}
