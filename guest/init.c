/*
 * kiln's guest init (PID 1): mounts the pseudo file systems, runs the command
 * kiln-vmm put on the kernel command line (kiln.cmd=, see abi.h), reaps every
 * orphan, reports the command's status on KILN_PORT_EXIT and ends the VM.
 * Without a command it runs an interactive /bin/sh on the console.
 *
 * It is the seed of kiln-agent: the agent keeps this start-up and adds the
 * vsock listener in place of the single command.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "abi.h"
#include "agent.h"
#include "base64.h"

#define MAX_ARGS 256

static int have_ports;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n > 0)
		(void)!write(2, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

static void mount_or_warn(const char *src, const char *dst, const char *type,
			  unsigned long flags, const char *data)
{
	mkdir(dst, 0755);
	if (mount(src, dst, type, flags, data) < 0 && errno != EBUSY)
		say("kiln-init: mount %s on %s: %s\n", type, dst, strerror(errno));
}

static void setup_console(int raw)
{
	struct termios t;
	int fd = open("/dev/console", O_RDWR | O_NOCTTY);

	if (fd < 0)
		return;
	dup2(fd, 0);
	dup2(fd, 1);
	dup2(fd, 2);
	if (fd > 2)
		close(fd);
	/*
	 * A command's output goes to a file or pipe on the host: keep its bytes
	 * as they are (no \r\n) and do not echo. The host terminal, if any, adds
	 * its own carriage returns.
	 */
	if (raw && tcgetattr(0, &t) == 0) {
		t.c_oflag &= ~(tcflag_t)OPOST;
		t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
		tcsetattr(0, TCSANOW, &t);
	}
}

/* Bring up lo: programs in a sandbox expect localhost to work. */
static void loopback_up(void)
{
	struct ifreq ifr;
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return;
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) == 0) {
		ifr.ifr_flags |= IFF_UP;
		if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
			say("kiln-init: lo: %s\n", strerror(errno));
	}
	close(fd);
}

static void report(uint32_t status)
{
	if (have_ports)
		outl(status, KILN_PORT_EXIT);
}

/* Read /proc/cmdline into buf; returns its length, 0 when unreadable. */
static size_t read_cmdline(char *buf, size_t len)
{
	int fd = open("/proc/cmdline", O_RDONLY);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, len - 1);

	if (fd >= 0)
		close(fd);
	if (n <= 0)
		n = 0;
	buf[n] = '\0';
	return (size_t)n;
}

/* Is word (a whole whitespace-separated token) on the command line? */
static const char *cmdline_find(const char *cmdline, const char *word, int prefix)
{
	size_t wl = strlen(word);
	const char *p = cmdline;

	while ((p = strstr(p, word)) != NULL) {
		int start = p == cmdline || p[-1] == ' ';
		char end = p[wl];

		if (start && (prefix || end == '\0' || end == ' ' || end == '\n'))
			return p;
		p += wl;
	}
	return NULL;
}

/* The value of param (up to a space) into buf: its length, or -1 when absent or longer than len - 1. */
static int cmdline_value(const char *cmdline, const char *param, char *buf, size_t len)
{
	const char *p = cmdline_find(cmdline, param, 1);
	size_t n;

	if (!p)
		return -1;
	p += strlen(param);
	n = strcspn(p, " \n");
	if (n >= len)
		return -1;
	memcpy(buf, p, n);
	buf[n] = '\0';
	return (int)n;
}

/*
 * The gateway is where a sandbox's DNS goes (kilnd answers there, and
 * redirects any other server's port 53 there too): an image's own
 * resolv.conf, perhaps a link into /run, is replaced by one that says so.
 */
static void resolv_write(const char *gw)
{
	int fd;

	mkdir("/etc", 0755);
	unlink("/etc/resolv.conf");
	fd = open("/etc/resolv.conf", O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0) {
		say("kiln-init: /etc/resolv.conf: %s\n", strerror(errno));
		return;
	}
	dprintf(fd, "nameserver %s\noptions timeout:2 attempts:2\n", gw);
	close(fd);
}

/*
 * Configure eth0 from kiln.net=ADDR/PREFIX[,GATEWAY] with ioctls (no ip=,
 * which costs the kernel about 10 ms of boot, and no fork of ip(8)).
 */
static void net_setup(const char *cmdline)
{
	char spec[64], *slash, *comma, *end;
	struct sockaddr_in *sin;
	struct in_addr addr, gw;
	struct rtentry rt;
	struct ifreq ifr;
	long prefix;
	int fd;

	if (!cmdline_find(cmdline, "kiln.net=", 1))
		return;
	if (cmdline_value(cmdline, "kiln.net=", spec, sizeof(spec)) < 0)
		goto bad;
	comma = strchr(spec, ',');
	if (comma)
		*comma++ = '\0';
	slash = strchr(spec, '/');
	if (!slash)
		goto bad;
	*slash++ = '\0';
	prefix = strtol(slash, &end, 10);
	if (inet_pton(AF_INET, spec, &addr) != 1 || end == slash || *end || prefix < 0 || prefix > 32 ||
	    (comma && inet_pton(AF_INET, comma, &gw) != 1))
		goto bad;
	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "eth0");
	sin = (struct sockaddr_in *)&ifr.ifr_addr;
	sin->sin_family = AF_INET;
	sin->sin_addr = addr;
	if (ioctl(fd, SIOCSIFADDR, &ifr) < 0)
		goto fail;
	sin->sin_addr.s_addr = htonl(prefix ? ~0u << (32 - prefix) : 0);
	if (ioctl(fd, SIOCSIFNETMASK, &ifr) < 0 || ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
		goto fail;
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
		goto fail;
	if (comma) {
		memset(&rt, 0, sizeof(rt));
		((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
		((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
		sin = (struct sockaddr_in *)&rt.rt_gateway;
		sin->sin_family = AF_INET;
		sin->sin_addr = gw;
		rt.rt_flags = RTF_UP | RTF_GATEWAY;
		rt.rt_dev = ifr.ifr_name;
		if (ioctl(fd, SIOCADDRT, &rt) < 0)
			goto fail;
		resolv_write(comma);
	}
	close(fd);
	return;
fail:
	say("kiln-init: eth0: %s\n", strerror(errno));
	close(fd);
	return;
bad:
	say("kiln-init: kiln.net= wants ADDR/PREFIX[,GATEWAY], e.g. kiln.net=172.30.0.2/24,172.30.0.1\n");
}

/*
 * Mount the disks named by kiln.mount=DEV:DIR[:FSTYPE[:ro]] (repeatable,
 * FSTYPE ext4 by default), creating DIR. A disk that will not mount is
 * reported and skipped: the command still runs and can look for itself.
 */
static void mount_disks(const char *cmdline)
{
	const char *p = cmdline;

	while ((p = cmdline_find(p, KILN_PARAM_MOUNT, 1)) != NULL) {
		char spec[256], *dev, *dir, *type, *opt;
		unsigned long flags = MS_NOATIME;
		size_t n;

		p += strlen(KILN_PARAM_MOUNT);
		n = strcspn(p, " \n");
		if (n >= sizeof(spec)) {
			say("kiln-init: kiln.mount= spec too long\n");
			continue;
		}
		memcpy(spec, p, n);
		spec[n] = '\0';
		dev = spec;
		dir = strchr(dev, ':');
		if (!dir || dir[1] != '/') {
			say("kiln-init: kiln.mount=%s wants DEV:DIR[:FSTYPE[:ro]]\n", spec);
			continue;
		}
		*dir++ = '\0';
		type = strchr(dir, ':');
		if (type)
			*type++ = '\0';
		opt = type ? strchr(type, ':') : NULL;
		if (opt)
			*opt++ = '\0';
		if (opt && strcmp(opt, "ro") == 0)
			flags |= MS_RDONLY;
		if (!type || !*type)
			type = "ext4";
		mkdir(dir, 0755);
		if (mount(dev, dir, type, flags, NULL) < 0)
			say("kiln-init: mount %s on %s (%s): %s\n", dev, dir, type, strerror(errno));
	}
}

/*
 * kiln.root=LOWER:UPPER: mount the read-only image and the writable layer,
 * join them with overlayfs (the layer holds upper/ and work/) and make the
 * join the root, carrying /dev and /proc along, as switch_root does. PID 1
 * stays this process: the agent runs on from its initramfs copy, and every
 * command it starts sees only the new root. The initramfs stays below,
 * unreachable. 0 when there is nothing to do or it worked; -1 after saying why.
 */
static int switch_root(const char *cmdline)
{
	static const char opts[] = "lowerdir=/.kiln/lower,upperdir=/.kiln/layer/upper,workdir=/.kiln/layer/work";
	char spec[128], *upper;

	if (!cmdline_find(cmdline, KILN_PARAM_ROOT, 1))
		return 0;
	if (cmdline_value(cmdline, KILN_PARAM_ROOT, spec, sizeof(spec)) < 0 || !(upper = strchr(spec, ':')) ||
	    spec[0] != '/' || upper[1] != '/') {
		say("kiln-init: kiln.root= wants LOWER:UPPER, e.g. kiln.root=/dev/vda:/dev/vdb\n");
		return -1;
	}
	*upper++ = '\0';
	mkdir("/.kiln", 0700);
	mkdir("/.kiln/lower", 0755);
	mkdir("/.kiln/layer", 0755);
	mkdir("/.kiln/root", 0755);
	if (mount(spec, "/.kiln/lower", "ext4", MS_RDONLY | MS_NOATIME, NULL) < 0) {
		say("kiln-init: the image on %s will not mount: %s\n", spec, strerror(errno));
		return -1;
	}
	/* noinit_itable: no thread zeroing a sparse layer's inode tables behind the sandbox's back. */
	if (mount(upper, "/.kiln/layer", "ext4", MS_NOATIME, "noinit_itable") < 0) {
		say("kiln-init: the writable layer on %s will not mount: %s\n", upper, strerror(errno));
		return -1;
	}
	if ((mkdir("/.kiln/layer/upper", 0755) < 0 && errno != EEXIST) ||
	    (mkdir("/.kiln/layer/work", 0755) < 0 && errno != EEXIST) ||
	    mount("overlay", "/.kiln/root", "overlay", MS_NOATIME, opts) < 0) {
		say("kiln-init: overlay of %s and %s: %s\n", spec, upper, strerror(errno));
		return -1;
	}
	if (mount("/dev", "/.kiln/root/dev", NULL, MS_MOVE, NULL) < 0 ||
	    mount("/proc", "/.kiln/root/proc", NULL, MS_MOVE, NULL) < 0 || chdir("/.kiln/root") < 0 ||
	    mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 || chdir("/") < 0) {
		say("kiln-init: switching to the overlay root: %s\n", strerror(errno));
		return -1;
	}
	return 0;
}

/*
 * The image's locale (/etc/default/locale, as pam_env would read it at a
 * login): its LANG, LANGUAGE and LC_* lines go into the environment every
 * command inherits.
 */
static void image_locale(void)
{
	char line[256];
	FILE *f = fopen("/etc/default/locale", "re");

	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char *eq = strchr(line, '='), *v;
		size_t n;

		if (!eq || (strncmp(line, "LANG=", 5) && strncmp(line, "LANGUAGE=", 9) && strncmp(line, "LC_", 3)))
			continue;
		*eq = '\0';
		v = eq + 1;
		n = strcspn(v, "\n");
		v[n] = '\0';
		if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
			v[n - 1] = '\0';
			v++;
		}
		if (strspn(line, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_") == strlen(line))
			setenv(line, v, 1);
	}
	fclose(f);
}

/*
 * Field i (from 0) of a colon-separated passwd or group line, copied into
 * buf: NUL-terminated, or NULL when the line is shorter.
 */
static char *field(const char *line, int i, char *buf, size_t len)
{
	char *p = buf;

	snprintf(buf, len, "%s", line);
	while (i-- > 0)
		if (!(p = strchr(p, ':')))
			return NULL;
		else
			p++;
	p[strcspn(p, ":\n")] = '\0';
	return p;
}

static int parse_id(const char *s, uint32_t *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (!*s || *end || errno || v > 0xfffffffful)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

/*
 * kiln.user=NAME: look NAME up in the root's /etc/passwd and /etc/group (the
 * image's own files, read once at boot) for the credentials commands run
 * with by default; HOME, USER and LOGNAME come from it, and PID 1 moves to
 * the home directory, which commands inherit. 1 when u is filled, 0 when
 * there is no kiln.user=, -1 after saying why.
 */
static int default_user(const char *cmdline, struct agent_user *u)
{
	char name[64], line[1024], home[512] = "";
	FILE *f;
	int found = 0;

	if (!cmdline_find(cmdline, KILN_PARAM_USER, 1))
		return 0;
	if (cmdline_value(cmdline, KILN_PARAM_USER, name, sizeof(name)) <= 0) {
		say("kiln-init: kiln.user= wants a user name of at most 63 bytes\n");
		return -1;
	}
	memset(u, 0, sizeof(*u));
	if (!(f = fopen("/etc/passwd", "re"))) {
		say("kiln-init: kiln.user=%s: /etc/passwd: %s\n", name, strerror(errno));
		return -1;
	}
	while (!found && fgets(line, sizeof(line), f)) {
		char b1[1024], b2[1024], b3[1024], b4[1024], *n = field(line, 0, b1, sizeof(b1)),
			*uid = field(line, 2, b2, sizeof(b2)), *gid = field(line, 3, b3, sizeof(b3)),
			*dir = field(line, 5, b4, sizeof(b4));

		if (!n || strcmp(n, name))
			continue;
		found = uid && gid && !parse_id(uid, &u->uid) && !parse_id(gid, &u->gid);
		if (found && dir && dir[0] == '/')
			snprintf(home, sizeof(home), "%s", dir);
	}
	fclose(f);
	if (!found) {
		say("kiln-init: kiln.user=%s: no such user in the image's /etc/passwd\n", name);
		return -1;
	}
	u->groups[u->ngroups++] = u->gid;
	if ((f = fopen("/etc/group", "re"))) {
		while (fgets(line, sizeof(line), f) && u->ngroups < AGENT_USER_GROUPS_MAX) {
			char b1[1024], b2[1024], *gid = field(line, 2, b1, sizeof(b1)),
				*members = field(line, 3, b2, sizeof(b2)), *m, *save;
			uint32_t g;

			if (!gid || parse_id(gid, &g) || g == u->gid)
				continue;
			for (m = members ? strtok_r(members, ",", &save) : NULL; m; m = strtok_r(NULL, ",", &save))
				if (!strcmp(m, name)) {
					u->groups[u->ngroups++] = g;
					break;
				}
		}
		fclose(f);
	}
	setenv("USER", name, 1);
	setenv("LOGNAME", name, 1);
	if (home[0]) {
		setenv("HOME", home, 1);
		if (chdir(home) < 0)
			say("kiln-init: kiln.user=%s: home %s: %s\n", name, home, strerror(errno));
	}
	return 1;
}

/*
 * On an image root, run what nearly every command needs once (the dynamic
 * loader, libc, bash: the Deno SDK runs everything as bash -c) so that its
 * pages are in the page cache when a template is snapshotted: each clone
 * then finds them in memory instead of reading the image.
 */
static void warm_up(void)
{
	static const char *const cmds[][4] = { { "/bin/true", NULL }, { "/bin/bash", "-c", ":", NULL } };

	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		pid_t pid = fork();
		int st;

		if (pid == 0) {
			int fd = open("/dev/null", O_RDWR);

			if (fd >= 0) {
				dup2(fd, 0);
				dup2(fd, 1);
				dup2(fd, 2);
			}
			execv(cmds[i][0], (char *const *)cmds[i]);
			_exit(127);
		}
		while (pid > 0 && waitpid(pid, &st, 0) < 0 && errno == EINTR)
			;
	}
}

/*
 * Decode kiln.cmd= into argv (pointers into buf). Returns the argument count,
 * 0 when there is no command, -1 when it is malformed.
 */
static int decode_command(const char *cmdline, uint8_t *buf, size_t buflen, char **argv)
{
	const char *p = cmdline_find(cmdline, KILN_PARAM_CMD, 1);
	size_t n;
	long len;
	int argc = 0;
	long i, start = 0;

	if (!p)
		return 0;
	p += strlen(KILN_PARAM_CMD);
	n = strcspn(p, " \n");
	if (n / 4 * 3 + 3 > buflen)
		return -1;
	len = b64url_decode(p, n, buf);
	if (len <= 0 || buf[len - 1] != '\0')
		return -1;
	for (i = 0; i < len; i++) {
		if (buf[i] != '\0')
			continue;
		if (argc == MAX_ARGS - 1)
			return -1;
		argv[argc++] = (char *)buf + start;
		start = i + 1;
	}
	argv[argc] = NULL;
	return argc;
}

/*
 * fork and exec argv on the console as a new session. Returns the child's
 * pid; an exec failure comes back through *exec_errno (0 when exec worked),
 * carried over a close-on-exec pipe.
 */
static pid_t spawn(char **argv, int ctty, int *exec_errno)
{
	int pfd[2];
	pid_t pid;
	ssize_t n;

	*exec_errno = 0;
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -1;
	pid = fork();
	if (pid < 0) {
		close(pfd[0]);
		close(pfd[1]);
		return -1;
	}
	if (pid == 0) {
		sigset_t all;
		int err;

		sigemptyset(&all);
		sigprocmask(SIG_SETMASK, &all, NULL);
		setsid();
		/*
		 * Only an interactive shell gets the console as its controlling
		 * tty: when a session leader with one exits, the kernel hangs the
		 * tty up and discards output not yet sent (uart_hangup), which
		 * lost a command's last lines on SMP guests.
		 */
		if (ctty)
			ioctl(0, TIOCSCTTY, 1);
		execvp(argv[0], argv);
		err = errno;
		(void)!write(pfd[1], &err, sizeof(err));
		_exit(127);
	}
	close(pfd[1]);
	do
		n = read(pfd[0], exec_errno, sizeof(*exec_errno));
	while (n < 0 && errno == EINTR);
	if (n != sizeof(*exec_errno))
		*exec_errno = 0;
	close(pfd[0]);
	return pid;
}

/* Reap every child until pid has ended; returns its wait status. */
static int reap_until(pid_t pid)
{
	for (;;) {
		int st;
		pid_t r = wait(&st);

		if (r == pid)
			return st;
		if (r < 0 && errno == ECHILD)
			return 0;
	}
}

/*
 * Wait, at most 2 s, until the console's output queue is empty. Bounded on
 * purpose: a stuck console must not keep the VM alive.
 */
static void console_drain(void)
{
	int i, n = 0;

	for (i = 0; i < 2000; i++) {
		if (ioctl(STDOUT_FILENO, TIOCOUTQ, &n) < 0 || n == 0)
			return;
		usleep(1000);
	}
}

static void finish(uint32_t status)
{
	/* The command has ended: so does its VM. Stop stragglers, flush disks. */
	kill(-1, SIGKILL);
	while (wait(NULL) > 0 || errno == EINTR)
		;
	sync();
	/*
	 * The command's last output may still sit in the console's tty buffer,
	 * drained by interrupts on any CPU: wait for it to reach the UART, or
	 * the VM stops before the host sees it.
	 */
	console_drain();
	report(status);
	/* Not under kiln-vmm (no port): reset, which reboot=k turns into an exit. */
	reboot(RB_AUTOBOOT);
	for (;;)
		pause();
}

/* The agent's SHUTDOWN: power off (kiln-vmm exits 0), or reset the VM. */
static void agent_stop(int reset)
{
	if (!reset)
		finish(KILN_STATUS(KILN_STATUS_EXITED, 0));
	kill(-1, SIGKILL);
	while (wait(NULL) > 0 || errno == EINTR)
		;
	sync();
	console_drain();
	reboot(RB_AUTOBOOT);
	for (;;)
		pause();
}

int main(void)
{
	static char cmdline[KILN_CMDLINE_MAX + 1];
	static uint8_t argbuf[KILN_CMDLINE_MAX];
	char *argv[MAX_ARGS];
	char *shell[] = { "/bin/sh", NULL };
	struct agent_user user;
	int argc, exec_errno, st, agent, has_user;
	uint32_t status;
	pid_t pid;

	mount_or_warn("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	mount_or_warn("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	have_ports = ioperm(KILN_PORT_EXIT, 4, 1) == 0 && ioperm(KILN_PORT_MARK, 1, 1) == 0;
	read_cmdline(cmdline, sizeof(cmdline));
	argc = decode_command(cmdline, argbuf, sizeof(argbuf), argv);
	agent = cmdline_find(cmdline, KILN_PARAM_AGENT, 0) != NULL;
	setup_console(argc != 0 || agent);
	if (have_ports)
		outb(KILN_MARK_USERSPACE, KILN_PORT_MARK);
	if (cmdline_find(cmdline, KILN_PARAM_BOOTMARK, 0))
		say("%s\n", KILN_BOOT_MARK);
	if (switch_root(cmdline) < 0)
		finish(KILN_STATUS(KILN_STATUS_INITFAIL, 3));

	mount_or_warn("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_or_warn("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666");
	mount_or_warn("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	mount_or_warn("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	mount_or_warn("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
	sethostname("kiln", 4);
	loopback_up();
	net_setup(cmdline);
	mount_disks(cmdline);
	setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
	setenv("HOME", "/root", 1);
	setenv("TERM", "linux", 0);
	chdir("/root");
	if (cmdline_find(cmdline, KILN_PARAM_ROOT, 1)) {
		image_locale();
		if (agent)
			warm_up();
	}
	if ((has_user = default_user(cmdline, &user)) < 0)
		finish(KILN_STATUS(KILN_STATUS_INITFAIL, 4));

	if (agent) {
		/* PID 1 serves the agent protocol until the VM is stopped. */
		agent_main(agent_stop, has_user ? &user : NULL);
		say("kiln-init: the agent could not start\n");
		finish(KILN_STATUS(KILN_STATUS_INITFAIL, 2));
	}
	if (argc < 0) {
		say("kiln-init: kiln.cmd on the kernel command line is malformed\n");
		finish(KILN_STATUS(KILN_STATUS_INITFAIL, 1));
	}
	if (argc == 0)
		memcpy(argv, shell, sizeof(shell));

	pid = spawn(argv, argc == 0, &exec_errno);
	if (pid < 0) {
		say("kiln-init: fork: %s\n", strerror(errno));
		finish(KILN_STATUS(KILN_STATUS_INITFAIL, 1));
	}
	st = reap_until(pid);
	if (exec_errno) {
		say("kiln-init: %s: %s\n", argv[0], strerror(exec_errno));
		status = KILN_STATUS(exec_errno == ENOENT ? KILN_STATUS_NOTFOUND : KILN_STATUS_NOEXEC, 0);
	} else if (WIFSIGNALED(st)) {
		status = KILN_STATUS(KILN_STATUS_SIGNALED, WTERMSIG(st));
	} else {
		status = KILN_STATUS(KILN_STATUS_EXITED, WEXITSTATUS(st));
	}
	finish(status);
}
