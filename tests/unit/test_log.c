/*
 * Log lines a guest can cause: the token bucket (vmm/util.c) and a guest
 * that breaks a device over and over, with stderr captured in a file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "unit.h"
#include "virtio.h"
#include "virtio_blk.h"
#include "ioloop.h"

#define BASE	0xd0000000ULL
#define DESC	0x100000ULL
#define AVAIL	0x101000ULL
#define QSIZE	16
#define CYCLES	100000

/* stderr goes to a file while a test runs; count its lines after. */
struct capture {
	char path[64];
	int fd, saved;
};

static void capture_start(struct capture *c)
{
	snprintf(c->path, sizeof(c->path), "/tmp/kiln-log-test-XXXXXX");
	c->fd = mkstemp(c->path);
	ck_assert_int_ge(c->fd, 0);
	fflush(stderr);
	c->saved = dup(STDERR_FILENO);
	ck_assert_int_ge(c->saved, 0);
	ck_assert_int_ge(dup2(c->fd, STDERR_FILENO), 0);
}

/* Restore stderr; returns the captured text (free it) and its line count. */
static char *capture_end(struct capture *c, unsigned *lines)
{
	off_t len;
	char *text;

	fflush(stderr);
	ck_assert_int_ge(dup2(c->saved, STDERR_FILENO), 0);
	close(c->saved);
	len = lseek(c->fd, 0, SEEK_END);
	ck_assert_int_ge(len, 0);
	text = calloc(1, (size_t)len + 1);
	ck_assert_ptr_nonnull(text);
	ck_assert_int_eq(pread(c->fd, text, (size_t)len, 0), len);
	close(c->fd);
	unlink(c->path);
	*lines = 0;
	for (off_t i = 0; i < len; i++)
		*lines += text[i] == '\n';
	return text;
}

/* A burst of ten, then a line a second; what was held back is counted once. */
START_TEST(token_bucket)
{
	struct log_limit l = LOG_LIMIT("test");
	const uint64_t s = LOG_LIMIT_PERIOD_NS, t0 = 5 * s;
	uint64_t held = 99;
	unsigned i, allowed = 0;

	for (i = 0; i < 1000; i++)
		allowed += log_limit_allow(&l, t0 + i, &held);
	ck_assert_uint_eq(allowed, LOG_LIMIT_BURST);
	ck_assert_uint_eq(held, 0);
	ck_assert_uint_eq(l.suppressed, 1000 - LOG_LIMIT_BURST);
	/* Not yet a second on: still held back. */
	ck_assert_int_eq(log_limit_allow(&l, t0 + s / 2, &held), 0);
	/* A second on: one line, and it carries the count. */
	ck_assert_int_eq(log_limit_allow(&l, t0 + s, &held), 1);
	ck_assert_uint_eq(held, 1000 - LOG_LIMIT_BURST + 1);
	ck_assert_int_eq(log_limit_allow(&l, t0 + s + 1, &held), 0);
	/* Quiet for a minute: the bucket is full again, no fuller. */
	allowed = 0;
	for (i = 0; i < 100; i++)
		allowed += log_limit_allow(&l, t0 + 61 * s + i, &held);
	ck_assert_uint_eq(allowed, LOG_LIMIT_BURST);
	/* A clock that steps back never adds tokens or wraps. */
	ck_assert_int_eq(log_limit_allow(&l, 0, &held), 0);
}
END_TEST

/* The summary line, and log_flush() for what is still held back at exit. */
START_TEST(summary_lines)
{
	static struct log_limit l = LOG_LIMIT("virtio-test");
	struct capture cap;
	unsigned lines, i;
	char *text;

	capture_start(&cap);
	for (i = 0; i < 25; i++)
		log_guest(&l, "virtio-test: message %u", i);
	log_flush();
	text = capture_end(&cap, &lines);
	ck_assert_uint_eq(lines, LOG_LIMIT_BURST + 1);
	ck_assert_ptr_nonnull(strstr(text, "kiln-vmm: virtio-test: message 0\n"));
	ck_assert_ptr_null(strstr(text, "message 10"));
	ck_assert_ptr_nonnull(strstr(text, "kiln-vmm: virtio-test: 15 similar messages suppressed\n"));
	free(text);
}
END_TEST

static uint64_t ring_at(unsigned q)
{
	(void)q;
	return DESC;
}

/*
 * A guest that resets a disk and hands it a looping descriptor chain, again
 * and again: each cycle puts the device into NEEDS_RESET, and each used to
 * print a line (100k cycles, 14 MB of stderr).
 */
START_TEST(reset_cycles_log_bounded_lines)
{
	struct guest_mem m;
	struct ioloop loop;
	struct virtio_dev dev;
	struct kiln_err err;
	struct capture cap;
	struct virtq_desc *desc;
	uint16_t *avail;
	char path[64], *text;
	unsigned lines, i, resets = 0;
	uint64_t t0, secs;
	int fd;

	unit_mem(&m, 128);
	ck_assert_int_eq(ioloop_init(&loop, 16, &err), 0);
	snprintf(path, sizeof(path), "/tmp/kiln-log-disk-XXXXXX");
	fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, 65536), 0);
	close(fd);
	ck_assert_msg(virtio_blk_create(&dev, path, NULL, &m, &loop, BASE, 5, &err) == 0, "%s", err.msg);
	desc = GUEST_PTR(&m, DESC, 16);
	avail = GUEST_PTR(&m, AVAIL, 4 + 2 * QSIZE);
	*desc = (struct virtq_desc){ 0x200000, 16, VIRTQ_DESC_F_NEXT, 0 };	/* a loop */
	avail[2] = 0;
	avail[1] = 1;

	capture_start(&cap);
	t0 = now_ns();
	for (i = 0; i < CYCLES; i++) {
		vdrv_init(&dev, ~0ULL, 1, QSIZE, ring_at);
		virtio_kick(&dev, 0);
		resets += (vdrv_read(&dev, 0x70) & VIRTIO_STATUS_NEEDS_RESET) != 0;
	}
	secs = (now_ns() - t0) / 1000000000ULL;
	log_flush();
	text = capture_end(&cap, &lines);

	ck_assert_uint_eq(resets, CYCLES);
	/* A burst, then about a line a second, each after a summary line. */
	ck_assert_msg(lines <= 2 * (LOG_LIMIT_BURST + secs + 1), "%u lines of stderr for %u broken rings in %llu s; first: %.200s",
		      lines, CYCLES, (unsigned long long)secs, text);
	ck_assert_ptr_nonnull(strstr(text, "the guest driver broke the device"));
	ck_assert_ptr_nonnull(strstr(text, "similar messages suppressed"));
	free(text);
	virtio_mmio_destroy(&dev);
	ioloop_destroy(&loop);
	guest_mem_free(&m);
	unlink(path);
}
END_TEST

Suite *suite_log(void)
{
	Suite *s = suite_create("log");
	TCase *tc = tcase_create("guest-caused");

	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, token_bucket);
	tcase_add_test(tc, summary_lines);
	tcase_add_test(tc, reset_cycles_log_bounded_lines);
	suite_add_tcase(s, tc);
	return s;
}
