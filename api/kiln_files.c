/* kiln cp, copy, ls, walk, stat, mkdir, rm and mv: the guest's files. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent_proto.h"
#include "agent_client.h"
#include "kiln_cli.h"

/* ---- files ------------------------------------------------------------------ */

/* Copy a file inside the guest (COPY); to an existing directory, under the source's name. */
static int guest_copy(const struct common *o, const char *from, const char *to)
{
	struct kac_err err = { "", 0 };
	static char path[8192];
	struct kac_stat st;
	struct kac *c = connect_or_die(o);
	int64_t n;

	if (to[strlen(to) - 1] == '/' || (kac_stat(c, to, 0, &st, &err) == 0 && S_ISDIR(st.type))) {
		const char *b = strrchr(from, '/');

		if ((size_t)snprintf(path, sizeof(path), "%s%s%s", to, to[strlen(to) - 1] == '/' ? "" : "/",
				     b ? b + 1 : from) >= sizeof(path))
			die_usage("%s: path too long", to);
		to = path;
	}
	n = kac_copy(c, from, to, &err);
	return cmd_done(c, n < 0, "copy", &err);
}

int cmd_copy(int argc, char **argv)
{
	struct common o;
	int i = parse_opts(argc, argv, &o);

	if (argc - i != 2)
		die_usage("copy: expected FROM TO (guest paths)");
	return guest_copy(&o, guest_arg(argv[i]), guest_arg(argv[i + 1]));
}

/*
 * Open the host file a download writes, as cp and scp do without -p: an
 * existing file is truncated and keeps its mode (a symlink to one is
 * followed); a new one gets the guest file's permission bits without
 * setuid, setgid and sticky (the guest is not trusted), less our umask.
 * O_EXCL keeps a dangling symlink, which could point anywhere, from being
 * written through (GNU cp refuses it too). Returns the fd, or -1 (told).
 */
static int open_download(const char *dst, uint32_t guest_mode)
{
	int fd = open(dst, O_WRONLY | O_TRUNC | O_CLOEXEC);

	if (fd < 0 && errno == ENOENT) {
		fd = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, guest_mode & 0777);
		if (fd < 0 && errno == EEXIST) {
			fprintf(stderr, "%s: %s: not writing through a dangling symlink (remove it, or name "
				"the file it points to)\n", prog, dst);
			return -1;
		}
	}
	if (fd < 0)
		fprintf(stderr, "%s: %s: %s\n", prog, dst, strerror(errno));
	return fd;
}

int cmd_cp(int argc, char **argv)
{
	struct common o;
	struct kac_err err = { "", 0 };
	struct kac *c;
	const char *gsrc, *gdst, *src, *dst;
	static char path[8192];
	struct stat lst;
	struct kac_stat gst;
	int64_t n;
	int i, fd, ret;

	i = parse_opts(argc, argv, &o);
	if (argc - i != 2)
		die_usage("cp: expected SRC DST, one of them guest:/path");
	src = argv[i];
	dst = argv[i + 1];
	gsrc = guest_path(src);
	gdst = guest_path(dst);
	if (!gsrc && !gdst)
		die_usage("cp: SRC or DST (or both) must be guest:/path");
	if ((gsrc && !*gsrc) || (gdst && !*gdst))
		die_usage("cp: guest: needs a path (guest:/tmp/file)");
	if (gsrc && gdst)
		return guest_copy(&o, gsrc, gdst);

	if (gdst) {
		/* upload */
		if (strcmp(src, "-") == 0) {
			fd = 0;
			lst.st_mode = 0644;
		} else {
			fd = open(src, O_RDONLY | O_CLOEXEC);
			if (fd < 0 || fstat(fd, &lst) < 0) {
				fprintf(stderr, "%s: %s: %s\n", prog, src, strerror(errno));
				return EXIT_FAIL;
			}
			if (S_ISDIR(lst.st_mode)) {
				fprintf(stderr, "%s: %s: is a directory (kiln cp copies one file)\n", prog, src);
				return EXIT_FAIL;
			}
		}
		c = connect_or_die(&o);
		if (gdst[strlen(gdst) - 1] == '/' && strcmp(src, "-") != 0) {
			const char *b = strrchr(src, '/');

			if ((size_t)snprintf(path, sizeof(path), "%s%s", gdst, b ? b + 1 : src) >= sizeof(path))
				die_usage("%s: path too long", gdst);
			gdst = path;
		}
		n = kac_file_write(c, gdst, fd, lst.st_mode & 07777, &err);
		kac_close(c);
		if (n < 0)
			return op_fail(gdst, &err);
		return 0;
	}

	/* download */
	c = connect_or_die(&o);
	ret = kac_stat(c, gsrc, 0, &gst, &err);
	if (ret)
		return op_fail(gsrc, &err);
	if (S_ISDIR(gst.type)) {
		fprintf(stderr, "%s: %s: is a directory in the guest (kiln cp copies one file)\n", prog, gsrc);
		return EXIT_FAIL;
	}
	if (strcmp(dst, "-") == 0) {
		fd = 1;
	} else {
		if (stat(dst, &lst) == 0 && S_ISDIR(lst.st_mode)) {
			const char *b = strrchr(gsrc, '/');

			if ((size_t)snprintf(path, sizeof(path), "%s/%s", dst, b ? b + 1 : gsrc) >= sizeof(path))
				die_usage("%s: path too long", dst);
			dst = path;
		}
		fd = open_download(dst, gst.mode);
		if (fd < 0)
			return EXIT_FAIL;
	}
	signal(SIGPIPE, SIG_IGN);
	n = kac_file_read(c, gsrc, fd, &err);
	kac_close(c);
	if (n < 0)
		return op_fail(gsrc, &err);
	if (fd != 1 && close(fd) < 0) {
		fprintf(stderr, "%s: %s: %s\n", prog, dst, strerror(errno));
		return EXIT_FAIL;
	}
	return 0;
}

static int ls_entry(void *arg, const char *name, uint32_t type)
{
	struct listing *s = arg;

	if (s->json) {
		printf("%s{\"name\":", list_sep(s));
		json_str(name);
		printf(",\"type\":\"%s\"}", type_name(type));
	} else {
		put_guest(name, 0);
		printf("%s\n", (type & S_IFMT) == S_IFDIR ? "/" : "");
	}
	return 0;
}

int cmd_ls(int argc, char **argv)
{
	struct common o;
	struct kac_err err = { "", 0 };
	struct listing s;
	struct kac *c;
	const char *path;
	int i;

	i = parse_opts(argc, argv, &o);
	if (argc - i > 1)
		die_usage("ls: one directory at a time");
	path = guest_arg(i < argc ? argv[i] : "/");
	c = connect_or_die(&o);
	list_begin(&s, &o);
	return list_end(&s, c, kac_readdir(c, path, ls_entry, &s, &err), path, &err);
}

static int walk_entry(void *arg, const char *path, const char *name, uint32_t type)
{
	struct listing *s = arg;
	int dir = (type & S_IFMT) == S_IFDIR, slash = dir && path[strlen(path) - 1] != '/';

	if (s->json) {
		printf("%s{\"path\":", list_sep(s));
		json_str(path);
		printf(",\"name\":");
		json_str(name);
		printf(",\"type\":\"%s\"}", type_name(type));
	} else {
		put_guest(path, 0);
		printf("%s\n", slash ? "/" : "");
	}
	return ferror(stdout) ? -EIO : 0;
}

int cmd_walk(int argc, char **argv)
{
	struct common o;
	struct kac_err err = { "", 0 };
	struct listing s;
	int i = parse_opts(argc, argv, &o);
	const char *path = one_path(argc, argv, i);
	struct kac *c = connect_or_die(&o);

	list_begin(&s, &o);
	return list_end(&s, c, kac_walk(c, path, o.max_depth, o.follow, walk_entry, &s, &err), path, &err);
}

int cmd_stat(int argc, char **argv)
{
	struct common o;
	struct kac_err err = { "", 0 };
	struct kac_stat st;
	struct kac *c;
	const char *path;
	int i, ret;

	i = parse_opts(argc, argv, &o);
	path = one_path(argc, argv, i);
	c = connect_or_die(&o);
	ret = kac_stat(c, path, 0, &st, &err);
	if (cmd_done(c, ret, path, &err))
		return EXIT_FAIL;
	if (o.json) {
		printf("{\"path\":");
		json_str(path);
		printf(",\"type\":\"%s\",\"mode\":\"%04o\",\"size\":%llu,\"uid\":%llu,\"gid\":%llu,"
		       "\"nlink\":%llu,\"ino\":%llu,\"mtime_ns\":%lld}\n",
		       type_name(st.type), st.mode & 07777, (unsigned long long)st.size,
		       (unsigned long long)st.uid, (unsigned long long)st.gid,
		       (unsigned long long)st.nlink, (unsigned long long)st.ino,
		       (long long)st.mtime_ns);
	} else {
		printf("%s: %s, mode %04o, %llu bytes, uid %llu, gid %llu, mtime %lld.%09lld\n",
		       path, type_name(st.type), st.mode & 07777, (unsigned long long)st.size,
		       (unsigned long long)st.uid, (unsigned long long)st.gid,
		       (long long)(st.mtime_ns / 1000000000), (long long)(st.mtime_ns % 1000000000));
	}
	return 0;
}

int cmd_simple(int argc, char **argv)
{
	const char *cmd = argv[0];
	struct common o;
	struct kac_err err = { "", 0 };
	struct kac *c;
	const char *path, *path2 = NULL;
	int i, ret;

	i = parse_opts(argc, argv, &o);
	if (strcmp(cmd, "mv") == 0) {
		if (argc - i != 2)
			die_usage("mv: expected FROM TO");
		path = guest_arg(argv[i]);
		path2 = guest_arg(argv[i + 1]);
	} else {
		path = one_path(argc, argv, i);
	}
	c = connect_or_die(&o);
	if (strcmp(cmd, "mkdir") == 0)
		ret = kac_mkdir(c, path, o.mode, o.recursive, &err);
	else if (strcmp(cmd, "rm") == 0)
		ret = kac_remove(c, path, o.recursive, &err);
	else
		ret = kac_rename(c, path, path2, &err);
	return cmd_done(c, ret, path, &err);
}
