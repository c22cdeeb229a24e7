/*
 * kilnd [--listen unix:PATH|tcp:ADDR:PORT]... [--state-dir DIR] [OPTIONS]
 *
 * Start-up order: flags, the host's numbers, the state dir (owner-only,
 * locked against a second kilnd), the registry, the kernel's and
 * initramfs' hashes (they key templates), re-adoption of the sandboxes a
 * previous kilnd left running, then the listeners and the loop. A stop
 * (SIGINT, SIGTERM) leaves every sandbox running for the next start.
 */
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "kd_ssh.h"
#include "kilnd.h"

static const char usage_text[] =
"usage: kilnd [--listen unix:PATH|tcp:ADDR:PORT]... [--state-dir DIR] [OPTIONS]\n"
"\n"
"kiln's node daemon: serves kiln's REST API (/v1) and agent WebSockets,\n"
"and runs one kiln-vmm per sandbox (docs/kilnd.md).\n"
"\n"
"  --listen unix:PATH      a unix socket (default unix:/run/kiln/kilnd.sock); it\n"
"                          admits root, kilnd's user and --socket-group\n"
"  --listen tcp:ADDR:PORT  a TCP listener; every request needs a bearer token\n"
"                          (kiln token create); repeat --listen for more\n"
"  --state-dir DIR         registry, templates, run dirs (default /var/lib/kiln)\n"
"  --socket-group NAME     unix sockets are 0660 for this group's members too\n"
"  --vmm PATH              kiln-vmm (default: beside kilnd)\n"
"  --kernel PATH           guest kernel (default: guest/vmlinux beside kilnd)\n"
"  --initrd PATH           guest initramfs (default: guest/initramfs.cpio beside kilnd)\n"
"  --mem-reserve MIB       memory kept for the host (default: a quarter of it, at most 1024)\n"
"  --mem-overcommit R      sandbox memory may reach (MemTotal - reserve) x R (default 1.0)\n"
"  --vcpu-overcommit R     one sandbox may have CPUs x R vCPUs (default 2.0)\n"
"  --max-lifetime DUR      no sandbox lives longer (default 1d; 0: no limit)\n"
"  --session-grace DUR     a session sandbox outlives its creator's connection by this (default 10s)\n"
"  --region ABC            the 3 letters in sandbox ids, sbx_ABC_... (default loc)\n"
"  --pool MEM:VCPUS:N      keep N VMs of that shape restored ahead of demand (a warm\n"
"                          pool of the default image, counted against admission);\n"
"                          repeat for more shapes\n"
"  --image NAME=PATH       a read-only ext4 root image sandboxes may boot (\"image\" at\n"
"                          create); repeat for more. Default: guest/debian.ext4 beside\n"
"                          kilnd, as debian, when it exists (make image builds it)\n"
"  --default-image NAME    what a create naming no image boots (default: debian when\n"
"                          there is one, else minimal, the initramfs alone)\n"
"  --layer-size SIZE       each sandbox's writable layer over a disk image, sparse\n"
"                          (default 10G; 64M at least)\n"
"  --min-free SIZE         refuse creates while the state dir has less free (default 1G; 0: never)\n"
"  --dns-upstream IP[:PORT] where the sandboxes' resolver looks allowed names up\n"
"  --upstream-ca FILE       also trust these CAs (PEM) for the upstreams of secret hosts (tests)\n"
"  --expose-listen ADDR:PORT  serve the Deno SDK's exposeHttp names over TLS here (off by default;\n"
"                          make run uses 127.0.0.1:8443); certificates from the node CA\n"
"  --expose-domain NAME     exposed names are NAME's subdomains (default localhost)\n"
"  --ssh-listen ADDR:PORT   serve the Deno SDK's exposeSsh here (off by default; make run uses\n"
"                          port 22 where free, else 2222); host key STATE/ssh_host_ed25519_key\n"
"  --ssh-hostname NAME      the host exposeSsh names (default: the listen address)\n"
"                          (default: the nameservers in /etc/resolv.conf)\n"
"  --no-net                sandboxes get no network device (the default when kilnd\n"
"                          cannot make network namespaces: it runs as root)\n"
"  -v, --verbose           log connections and libwebsockets' notices\n"
"  -h, --help              show this help\n";

static struct kilnd *signalled;

int kd_pathf(char *buf, size_t n, const char *fmt, ...)
{
	va_list ap;
	int w;

	va_start(ap, fmt);
	w = vsnprintf(buf, n, fmt, ap);
	va_end(ap);
	return w < 0 || (size_t)w >= n ? -ENAMETOOLONG : 0;
}

uint64_t kd_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint64_t kd_mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
	va_list ap;

	fputs("kilnd: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static void on_signal(int sig)
{
	(void)sig;
	if (signalled) {
		signalled->stopping = 1;
		lws_cancel_service(signalled->ctx);
	}
}

static void set_path(char *dst, const char *src, const char *what)
{
	if (strlen(src) >= KD_PATH_MAX)
		die("%s %.60s... is too long (at most %d bytes)", what, src, KD_PATH_MAX - 1);
	snprintf(dst, KD_PATH_MAX, "%s", src);
}

static void add_listen(struct kd_conf *c, const char *arg)
{
	struct kd_listen *l;

	if (c->nlisten == KD_LISTEN_MAX)
		die("at most %d --listen", KD_LISTEN_MAX);
	l = &c->listen[c->nlisten];
	memset(l, 0, sizeof(*l));
	if (!strncmp(arg, "unix:", 5)) {
		if (arg[5] != '/' || strlen(arg + 5) >= sizeof(((struct sockaddr_un *)0)->sun_path))
			die("--listen %s: give an absolute socket path of at most 107 bytes, e.g. unix:/run/kiln/kilnd.sock",
			    arg);
		l->is_unix = 1;
		snprintf(l->path, sizeof(l->path), "%s", arg + 5);
	} else if (!strncmp(arg, "tcp:", 4)) {
		const char *colon = strrchr(arg + 4, ':');
		char *end;
		long port;

		if (!colon || colon == arg + 4 || (size_t)(colon - arg - 4) >= sizeof(l->addr))
			die("--listen %s: expected tcp:ADDR:PORT, e.g. tcp:127.0.0.1:8080", arg);
		port = strtol(colon + 1, &end, 10);
		if (*end || port < 1 || port > 65535)
			die("--listen %s: port %s is not 1-65535", arg, colon + 1);
		memcpy(l->addr, arg + 4, (size_t)(colon - arg - 4));
		l->port = (int)port;
	} else {
		die("--listen %s: expected unix:PATH or tcp:ADDR:PORT", arg);
	}
	c->nlisten++;
}

static double parse_ratio(const char *s, const char *what)
{
	char *end;
	double v = strtod(s, &end);

	if (*end || !(v > 0))
		die("%s %s is not a positive number", what, s);
	return v;
}

static uint64_t parse_dur(const char *s, const char *what, int zero_ok)
{
	struct kiln_err err;
	uint64_t ms;

	if (zero_ok && !strcmp(s, "0"))
		return 0;
	if (sched_parse_duration(s, &ms, &err))
		die("%s: %s", what, err.msg);
	return ms;
}

/* SIZE: bytes, or a number with K, M, G or T (binary units). */
int kd_parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (end == s || errno || s[0] == '-')
		return -EINVAL;
	switch (*end) {
	case 'K': case 'k': shift = 10; end++; break;
	case 'M': case 'm': shift = 20; end++; break;
	case 'G': case 'g': shift = 30; end++; break;
	case 'T': case 't': shift = 40; end++; break;
	}
	if (*end == 'i' && end[1] == 'B')
		end += 2;
	else if (*end == 'B')
		end++;
	if (*end || (shift && v > (~0ull >> shift)))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

static uint64_t parse_size(const char *s, const char *what)
{
	uint64_t v;

	if (kd_parse_size(s, &v))
		die("%s %s is not a size such as 10G or 512M", what, s);
	return v;
}

static char beside[PATH_MAX];	/* kilnd's directory */

/* Paths beside the kilnd binary: build/kiln-vmm, build/guest/... */
static void default_paths(struct kd_conf *c)
{
	char exe[PATH_MAX], *dir;
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

	if (n <= 0)
		die("cannot find kilnd's own path: give --vmm, --kernel and --initrd");
	exe[n] = '\0';
	dir = dirname(exe);
	snprintf(beside, sizeof(beside), "%s", dir);
	if (!c->vmm[0])
		kd_pathf(c->vmm, sizeof(c->vmm), "%.200s/kiln-vmm", dir);
	if (!c->kernel[0])
		kd_pathf(c->kernel, sizeof(c->kernel), "%.200s/guest/vmlinux", dir);
	if (!c->initrd[0])
		kd_pathf(c->initrd, sizeof(c->initrd), "%.200s/guest/initramfs.cpio", dir);
}

static void parse_opts(struct kilnd *kd, int argc, char **argv, int *verbose)
{
	enum { O_STATE = 256, O_GROUP, O_VMM, O_KERNEL, O_INITRD, O_RESERVE, O_MEMOC, O_CPUOC, O_MAXLIFE, O_GRACE,
	       O_REGION, O_POOL, O_IMAGE, O_DEFIMAGE, O_LAYER, O_MINFREE, O_NONET, O_DNS, O_UPCA, O_EXPOSE, O_EXPDOM,
	       O_SSH, O_SSHHOST };
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },	{ "state-dir", required_argument, NULL, O_STATE },
		{ "socket-group", required_argument, NULL, O_GROUP }, { "vmm", required_argument, NULL, O_VMM },
		{ "kernel", required_argument, NULL, O_KERNEL }, { "initrd", required_argument, NULL, O_INITRD },
		{ "mem-reserve", required_argument, NULL, O_RESERVE },
		{ "mem-overcommit", required_argument, NULL, O_MEMOC },
		{ "vcpu-overcommit", required_argument, NULL, O_CPUOC },
		{ "max-lifetime", required_argument, NULL, O_MAXLIFE },
		{ "session-grace", required_argument, NULL, O_GRACE }, { "region", required_argument, NULL, O_REGION },
		{ "pool", required_argument, NULL, O_POOL },	{ "image", required_argument, NULL, O_IMAGE },
		{ "default-image", required_argument, NULL, O_DEFIMAGE },
		{ "layer-size", required_argument, NULL, O_LAYER }, { "min-free", required_argument, NULL, O_MINFREE },
		{ "no-net", no_argument, NULL, O_NONET },	{ "dns-upstream", required_argument, NULL, O_DNS },
		{ "upstream-ca", required_argument, NULL, O_UPCA },
		{ "expose-listen", required_argument, NULL, O_EXPOSE },
		{ "expose-domain", required_argument, NULL, O_EXPDOM },
		{ "ssh-listen", required_argument, NULL, O_SSH },
		{ "ssh-hostname", required_argument, NULL, O_SSHHOST },
		{ "verbose", no_argument, NULL, 'v' },		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	struct kd_conf *c = &kd->conf;
	const char *reserve = NULL, *memoc = NULL, *cpuoc = NULL;
	struct kiln_err err;
	uint64_t mem;
	unsigned cpus;
	int o;

	c->sock_gid = (gid_t)-1;
	snprintf(c->state_dir, sizeof(c->state_dir), "/var/lib/kiln");
	snprintf(c->region, sizeof(c->region), "loc");
	c->life.max_life_ms = SCHED_MAX_LIFE_DEFAULT_MS;
	c->life.session_grace_ms = SCHED_SESSION_GRACE_DEFAULT_MS;
	c->prune_after_ms = 7 * 24 * 3600 * 1000ull;
	c->layer_bytes = KD_LAYER_DEFAULT;
	c->min_free_bytes = KD_MIN_FREE_DEFAULT;
	while ((o = getopt_long(argc, argv, "vh", opts, NULL)) != -1) {
		switch (o) {
		case 'l': add_listen(c, optarg); break;
		case O_STATE:
			if (optarg[0] != '/' || strlen(optarg) > KD_STATE_DIR_MAX)
				die("--state-dir %s: give an absolute path of at most %d bytes (sandboxes' sockets live "
				    "under it)", optarg, KD_STATE_DIR_MAX);
			set_path(c->state_dir, optarg, "--state-dir");
			break;
		case O_VMM: set_path(c->vmm, optarg, "--vmm"); break;
		case O_KERNEL: set_path(c->kernel, optarg, "--kernel"); break;
		case O_INITRD: set_path(c->initrd, optarg, "--initrd"); break;
		case O_RESERVE: reserve = optarg; break;
		case O_MEMOC: memoc = optarg; break;
		case O_CPUOC: cpuoc = optarg; break;
		case O_MAXLIFE: c->life.max_life_ms = parse_dur(optarg, "--max-lifetime", 1); break;
		case O_GRACE: c->life.session_grace_ms = parse_dur(optarg, "--session-grace", 0); break;
		case O_GROUP: {
			struct group *g = getgrnam(optarg);
			char *end;
			unsigned long v = strtoul(optarg, &end, 10);

			if (g)
				c->sock_gid = g->gr_gid;
			else if (*optarg && !*end)
				c->sock_gid = (gid_t)v;
			else
				die("--socket-group %s: no such group", optarg);
			break;
		}
		case O_REGION:
			if (strlen(optarg) != 3 || strspn(optarg, "abcdefghijklmnopqrstuvwxyz") != 3)
				die("--region %s: give 3 lowercase letters, e.g. fra", optarg);
			snprintf(c->region, sizeof(c->region), "%s", optarg);
			break;
		case O_POOL: {
			struct kd_pool *p = &kd->pools[kd->npools];
			int used = 0;

			if (kd->npools == KD_POOLS_MAX)
				die("at most %d --pool", KD_POOLS_MAX);
			memset(p, 0, sizeof(*p));
			if (sscanf(optarg, "%u:%u:%u%n", &p->memory_mb, &p->vcpus, &p->size, &used) != 3 || optarg[used] ||
			    p->memory_mb < SCHED_MEM_MIN_MB || p->memory_mb > SCHED_MEM_MAX_MB || p->vcpus < SCHED_VCPUS_MIN ||
			    p->vcpus > SCHED_VCPUS_MAX || p->size < 1 || p->size > 256)
				die("--pool %s: expected MEMORY_MB:VCPUS:N, e.g. 1280:2:4 (memory %u-%u, vcpus %u-%u, N 1-256)",
				    optarg, SCHED_MEM_MIN_MB, SCHED_MEM_MAX_MB, SCHED_VCPUS_MIN, SCHED_VCPUS_MAX);
			kd->npools++;
			break;
		}
		case O_IMAGE:
			if (kd_image_add(c, optarg, &err))
				die("%s", err.msg);
			break;
		case O_DEFIMAGE:
			if (!kd_name_ok(optarg, strlen(optarg)))
				die("--default-image %s: not an image name (1-64 of a-z 0-9 . _ -)", optarg);
			snprintf(c->default_image, sizeof(c->default_image), "%s", optarg);
			break;
		case O_LAYER:
			c->layer_bytes = parse_size(optarg, "--layer-size") & ~4095ull;
			if (c->layer_bytes < KD_LAYER_MIN || c->layer_bytes > (16ull << 40))
				die("--layer-size %s is out of range (64M-16T)", optarg);
			break;
		case O_MINFREE: c->min_free_bytes = parse_size(optarg, "--min-free"); break;
		case O_NONET: c->no_net = 1; break;
		case O_DNS:
			if (strlen(optarg) >= sizeof(c->dns_upstream) || !*optarg)
				die("--dns-upstream %.80s: give an IP address, optionally with :PORT", optarg);
			snprintf(c->dns_upstream, sizeof(c->dns_upstream), "%s", optarg);
			break;
		case O_EXPOSE:
			if (strlen(optarg) >= sizeof(c->expose_listen) || !strchr(optarg, ':'))
				die("--expose-listen %.80s: give ADDR:PORT, such as 127.0.0.1:8443", optarg);
			snprintf(c->expose_listen, sizeof(c->expose_listen), "%s", optarg);
			break;
		case O_EXPDOM:
			if (strlen(optarg) >= sizeof(c->expose_domain) || !*optarg || strspn(optarg,
			    "abcdefghijklmnopqrstuvwxyz0123456789.-") != strlen(optarg) || optarg[0] == '.' || optarg[0] == '-')
				die("--expose-domain %.80s: give a DNS name (a-z 0-9 . -), such as localhost", optarg);
			snprintf(c->expose_domain, sizeof(c->expose_domain), "%s", optarg);
			break;
		case O_SSH:
			if (strlen(optarg) >= sizeof(c->ssh_listen) || !strchr(optarg, ':'))
				die("--ssh-listen %.80s: give ADDR:PORT, such as 0.0.0.0:22", optarg);
			snprintf(c->ssh_listen, sizeof(c->ssh_listen), "%s", optarg);
			break;
		case O_SSHHOST:
			if (strlen(optarg) >= sizeof(c->ssh_hostname) || !*optarg || strspn(optarg,
			    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:") != strlen(optarg))
				die("--ssh-hostname %.80s: give a host name or address", optarg);
			snprintf(c->ssh_hostname, sizeof(c->ssh_hostname), "%s", optarg);
			break;
		case O_UPCA:
			if (strlen(optarg) >= sizeof(c->upstream_ca) || access(optarg, R_OK))
				die("--upstream-ca %.80s: give a readable PEM file of CA certificates", optarg);
			snprintf(c->upstream_ca, sizeof(c->upstream_ca), "%s", optarg);
			break;
		case 'v': *verbose = 1; break;
		case 'h': fputs(usage_text, stdout); exit(0);
		default: fputs(usage_text, stderr); exit(2);
		}
	}
	if (optind < argc)
		die("unexpected argument %s (see kilnd --help)", argv[optind]);
	if (!c->nlisten)
		add_listen(c, "unix:/run/kiln/kilnd.sock");
	default_paths(c);
	if (sched_host_probe(NULL, NULL, &mem, &cpus, &err))
		die("%s", err.msg);
	sched_host_init(&c->host, mem, cpus);
	if (reserve) {
		char *end;
		unsigned long long v = strtoull(reserve, &end, 10);

		if (*end || !*reserve)
			die("--mem-reserve %s is not a number of MiB", reserve);
		c->host.reserve_mb = v;
	}
	if (memoc)
		c->host.mem_overcommit = parse_ratio(memoc, "--mem-overcommit");
	if (cpuoc)
		c->host.vcpu_overcommit = parse_ratio(cpuoc, "--vcpu-overcommit");
	if (sched_host_check(&c->host, &err))
		die("%s", err.msg);
}

/* mkdir -p for one level, owner-only, refusing a symlink or another owner's directory. */
static void own_dir(const char *path)
{
	struct stat st;

	if (mkdir(path, 0700) && errno != EEXIST)
		die("cannot create %s: %s", path, strerror(errno));
	if (lstat(path, &st))
		die("cannot stat %s: %s", path, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		die("%s is not a directory (a symbolic link?): give --state-dir a directory of kilnd's own", path);
	if (st.st_uid != geteuid())
		die("%s belongs to uid %u, not kilnd's %u: give --state-dir a directory of kilnd's own", path,
		    (unsigned)st.st_uid, (unsigned)geteuid());
	if ((st.st_mode & 077) && chmod(path, 0700))
		die("cannot make %s owner-only: %s", path, strerror(errno));
}

static int lock_state(const char *dir)
{
	char path[KD_PATH_MAX + 16];
	int fd;

	kd_pathf(path, sizeof(path), "%s/kilnd.lock", dir);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		die("cannot open %s: %s", path, strerror(errno));
	if (flock(fd, LOCK_EX | LOCK_NB))
		die("another kilnd already uses %s (it holds %s); stop it or give another --state-dir", dir, path);
	return fd;
}

/* A unix socket path: its directory made, a stale socket removed, a live one refused. */
static void prepare_socket(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char dir[KD_PATH_MAX];
	struct stat st;
	int fd;

	kd_pathf(dir, sizeof(dir), "%s", path);
	if (mkdir(dirname(dir), 0755) && errno != EEXIST)
		die("cannot create the directory of %s: %s", path, strerror(errno));
	if (lstat(path, &st))
		return;
	if (!S_ISSOCK(st.st_mode))
		die("%s exists and is not a socket: remove it or give another --listen unix:PATH", path);
	memcpy(sa.sun_path, path, strlen(path));
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
		die("%s is in use by another server (a second kilnd?): stop it or give another --listen", path);
	if (fd >= 0)
		close(fd);
	unlink(path);
}

/* A WebSocket that names no protocol (the Deno SDK's) goes to deno-sandbox. */
static const struct lws_protocol_vhost_options pvo_default = { NULL, NULL, "default", "1" };
static const struct lws_protocol_vhost_options pvo_deno = { NULL, &pvo_default, "deno-sandbox", "" };

static void make_vhosts(struct kilnd *kd)
{
	for (unsigned i = 0; i < kd->conf.nlisten; i++) {
		struct kd_listen *l = &kd->conf.listen[i];
		struct lws_context_creation_info info;

		memset(&info, 0, sizeof(info));
		info.protocols = kd_protocols;
		info.vhost_name = l->is_unix ? "unix" : "tcp";
		/* The Deno SDK's config header carries labels and secrets: several KiB. */
		info.max_http_header_data = 61440;
		info.pvo = &pvo_deno;
		info.timeout_secs = 30;
		info.keepalive_timeout = 60;
		if (l->is_unix) {
			prepare_socket(l->path);
			info.options = LWS_SERVER_OPTION_UNIX_SOCK;
			info.iface = l->path;
			info.port = 0;
		} else {
			info.iface = l->addr;
			info.port = l->port;
			if (!strchr(l->addr, ':'))
				info.options = LWS_SERVER_OPTION_DISABLE_IPV6;
		}
		l->vh = lws_create_vhost(kd->ctx, &info);
		if (!l->vh)
			die("cannot listen on %s%s%s:%d (in use? see the lines above)", l->is_unix ? "unix:" : "tcp:",
			    l->is_unix ? l->path : l->addr, l->is_unix ? "" : "", l->is_unix ? 0 : l->port);
		if (l->is_unix) {
			mode_t mode = kd->conf.sock_gid != (gid_t)-1 ? 0660 : 0600;

			if (kd->conf.sock_gid != (gid_t)-1 && chown(l->path, (uid_t)-1, kd->conf.sock_gid))
				die("cannot give %s to group %u: %s", l->path, (unsigned)kd->conf.sock_gid, strerror(errno));
			if (chmod(l->path, mode))
				die("cannot chmod %s: %s", l->path, strerror(errno));
			lwsl_user("kilnd: serving on unix:%s\n", l->path);
		} else {
			lwsl_user("kilnd: serving on http://%s:%d (bearer tokens: kiln token create)\n", l->addr, l->port);
		}
	}
}

int main(int argc, char **argv)
{
	static struct kilnd kd_store;
	struct kilnd *kd = &kd_store;
	struct lws_context_creation_info info;
	char path[KD_PATH_MAX + 16];
	struct kiln_err err;
	struct rlimit rl;
	int verbose = 0, lockfd;

	umask(077);
	signal(SIGPIPE, SIG_IGN);
	parse_opts(kd, argc, argv, &verbose);
	lws_set_log_level(verbose ? LLL_USER | LLL_ERR | LLL_WARN | LLL_NOTICE : LLL_USER | LLL_ERR, NULL);
	if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max > 65536 ? 65536 : rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	pthread_mutex_init(&kd->reg_lock, NULL);
	pthread_mutex_init(&kd->tmpl_lock, NULL);
	pthread_mutex_init(&kd->q_lock, NULL);
	pthread_mutex_init(&kd->vol_lock, NULL);

	own_dir(kd->conf.state_dir);
	lockfd = lock_state(kd->conf.state_dir);
	kd_pathf(path, sizeof(path), "%s/run", kd->conf.state_dir);
	own_dir(path);
	kd_pathf(path, sizeof(path), "%s/templates", kd->conf.state_dir);
	own_dir(path);
	kd_pathf(path, sizeof(path), "%s/volumes", kd->conf.state_dir);
	own_dir(path);
	kd_pathf(path, sizeof(path), "%s/images", kd->conf.state_dir);
	own_dir(path);
	/* What an empty volume slot holds. */
	kd_pathf(path, sizeof(path), "%s/empty.img", kd->conf.state_dir);
	{
		int efd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);

		if (efd < 0)
			die("cannot create %s: %s", path, strerror(errno));
		close(efd);
	}
	kd_pathf(path, sizeof(path), "%s/registry.db", kd->conf.state_dir);
	if (reg_open(&kd->reg, path, &err))
		die("%s", err.msg);
	if (access(kd->conf.vmm, X_OK))
		die("cannot run %s: %s (build it with make, or give --vmm)", kd->conf.vmm, strerror(errno));
	if (kd_template_hashes(kd, &err) || kd_images_probe(kd, beside, &err))
		die("%s", err.msg);
	kd_net_init(kd);
	if (kd_ingress_start(kd, &err))
		die("%s", err.msg);
	if (kd->conf.ssh_listen[0]) {
		if (kd_ssh_start(kd->conf.ssh_listen, kd->conf.state_dir, &kd->ssh, &err))
			die("--ssh-listen %s: %s", kd->conf.ssh_listen, err.msg);
		if (!kd->conf.ssh_hostname[0]) {
			/* The listen address, unless it is every address: then the machine's name. */
			size_t hl = strcspn(kd->conf.ssh_listen, ":");

			snprintf(kd->conf.ssh_hostname, sizeof(kd->conf.ssh_hostname), "%.*s", (int)hl, kd->conf.ssh_listen);
			if (!strcmp(kd->conf.ssh_hostname, "0.0.0.0"))
				gethostname(kd->conf.ssh_hostname, sizeof(kd->conf.ssh_hostname) - 1);
		}
		lwsl_user("kilnd: exposeSsh served on %s (users: ssh USER@%s%s%s)\n", kd->conf.ssh_listen,
			  kd->conf.ssh_hostname, strcmp(strrchr(kd->conf.ssh_listen, ':'), ":22") ? " -p " : "",
			  strcmp(strrchr(kd->conf.ssh_listen, ':'), ":22") ? strrchr(kd->conf.ssh_listen, ':') + 1 : "");
	}
	if (kd_readopt(kd, &err))
		die("%s", err.msg);

	memset(&info, 0, sizeof(info));
	info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
	/* Header buffers are the context's: the Deno SDK's config header needs more than lws's 4 KiB. */
	info.max_http_header_data = 61440;
	info.user = kd;
	info.timeout_secs = 30;
	kd->ctx = lws_create_context(&info);
	if (!kd->ctx)
		die("libwebsockets could not start");
	make_vhosts(kd);
	lwsl_user("kilnd: %u CPUs, %llu MiB for sandboxes of %llu MiB; state in %s\n", kd->conf.host.cpus,
		  (unsigned long long)sched_capacity_mb(&kd->conf.host),
		  (unsigned long long)kd->conf.host.mem_total_mb, kd->conf.state_dir);

	signalled = kd;
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	lws_sul_schedule(kd->ctx, 0, &kd->tick, kd_tick, KD_TICK_MS * LWS_US_PER_MS);
	kd_pool_refill(kd);
	while (!kd->stopping)
		if (lws_service(kd->ctx, 0) < 0)
			break;
	kd_pool_drain(kd);
	if (kd->ssh)
		kd_ssh_stop(kd->ssh);
	lwsl_user("kilnd: stopping; %u sandbox(es) keep running and are re-adopted at the next start\n",
		  kd->admit.sandboxes);
	for (unsigned i = 0; i < kd->conf.nlisten; i++)
		if (kd->conf.listen[i].is_unix)
			unlink(kd->conf.listen[i].path);
	/* Workers still out would call into the context: leave it to exit. */
	if (!kd->jobs_running)
		lws_context_destroy(kd->ctx);
	if (!kd->jobs_running)
		kd_net_stop(kd);
	pthread_mutex_lock(&kd->reg_lock);
	reg_close(kd->reg);
	close(lockfd);
	exit(0);
}
