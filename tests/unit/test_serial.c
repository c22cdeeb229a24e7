/* The 16550A as Linux's 8250 driver drives it. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "serial.h"
#include "unit.h"

static int irq_level, irq_changes;

static void record_irq(void *opaque, int level)
{
	(void)opaque;
	irq_level = level;
	irq_changes++;
}

static uint8_t rd(struct serial *s, unsigned reg)
{
	uint8_t v = 0;

	serial_io(s, (uint16_t)(SERIAL_COM1_BASE + reg), &v, 1, 0);
	return v;
}

static void wr(struct serial *s, unsigned reg, uint8_t v)
{
	serial_io(s, (uint16_t)(SERIAL_COM1_BASE + reg), &v, 1, 1);
}

START_TEST(thre_interrupt_cycle)
{
	struct serial s;
	int fds[2];
	char c;

	ck_assert_int_eq(pipe(fds), 0);
	irq_level = irq_changes = 0;
	serial_init(&s, fds[1], record_irq, NULL);
	ck_assert_uint_eq(rd(&s, 2) & 0x0f, 0x01);	/* no interrupt */
	wr(&s, 1, 0x02);				/* IER: THRI */
	ck_assert_int_eq(irq_level, 1);
	ck_assert_uint_eq(rd(&s, 2) & 0x0f, 0x02);	/* THRE, and reading acks it */
	ck_assert_int_eq(irq_level, 0);
	wr(&s, 0, 'x');
	ck_assert_int_eq(irq_level, 1);
	ck_assert_int_eq(read(fds[0], &c, 1), 1);
	ck_assert_int_eq(c, 'x');
	ck_assert_uint_eq(rd(&s, 5) & 0x60, 0x60);	/* LSR: THRE | TEMT */
	wr(&s, 1, 0);
	ck_assert_int_eq(irq_level, 0);
	serial_destroy(&s);
	close(fds[0]);
	close(fds[1]);
}
END_TEST

START_TEST(fifo_detected_as_16550a)
{
	struct serial s;

	serial_init(&s, -1, NULL, NULL);
	wr(&s, 2, 0x01);
	ck_assert_uint_eq(rd(&s, 2) & 0xc0, 0xc0);
	wr(&s, 7, 0x5a);
	ck_assert_uint_eq(rd(&s, 7), 0x5a);
	serial_destroy(&s);
}
END_TEST

START_TEST(divisor_latch)
{
	struct serial s;

	serial_init(&s, -1, NULL, NULL);
	wr(&s, 3, 0x80);
	wr(&s, 0, 0x01);
	wr(&s, 1, 0x00);
	ck_assert_uint_eq(rd(&s, 0), 0x01);
	wr(&s, 3, 0x03);
	ck_assert_uint_eq(rd(&s, 1), 0);		/* IER untouched by the DLM write */
	serial_destroy(&s);
}
END_TEST

START_TEST(input_and_loopback)
{
	struct serial s;
	uint8_t big[200];
	size_t i;

	irq_level = 0;
	serial_init(&s, -1, record_irq, NULL);
	ck_assert_uint_eq(serial_input(&s, (const uint8_t *)"early", 5), 0);
	wr(&s, 1, 0x01);				/* IER: RDI */
	ck_assert_uint_eq(serial_input(&s, (const uint8_t *)"hi", 2), 2);
	ck_assert_int_eq(irq_level, 1);
	ck_assert_uint_eq(rd(&s, 5) & 1, 1);
	ck_assert_uint_eq(rd(&s, 0), 'h');
	ck_assert_uint_eq(rd(&s, 0), 'i');
	ck_assert_int_eq(irq_level, 0);
	ck_assert_uint_eq(rd(&s, 0), 0);		/* empty FIFO reads 0 */
	/* The FIFO is bounded: the rest waits for the guest to drain it. */
	memset(big, 'z', sizeof(big));
	ck_assert_uint_eq(serial_input(&s, big, sizeof(big)), SERIAL_RX_SIZE);
	for (i = 0; i < SERIAL_RX_SIZE; i++)
		ck_assert_uint_eq(rd(&s, 0), 'z');
	/* Loopback: a transmitted byte comes back as input, not out. */
	wr(&s, 4, 0x10 | 0x0b);
	ck_assert_uint_eq(rd(&s, 6) & 0xf0, 0xb0);
	wr(&s, 0, 'L');
	ck_assert_uint_eq(rd(&s, 0), 'L');
	ck_assert_uint_eq(s.tx_bytes, 0);
	serial_destroy(&s);
}
END_TEST

/* Linux's probe sets IER to 0x0f for a moment, then clears the FIFO: input that landed then is kept. */
START_TEST(input_survives_a_fifo_clear)
{
	struct serial s;

	irq_level = 0;
	serial_init(&s, -1, record_irq, NULL);
	wr(&s, 1, 0x0f);
	ck_assert_uint_eq(serial_input(&s, (const uint8_t *)"ab", 2), 2);
	ck_assert_uint_eq(rd(&s, 0), 'a');		/* the guest reads one byte */
	wr(&s, 1, 0x00);
	wr(&s, 2, 0x07);				/* FCR: enable, clear both FIFOs */
	ck_assert_uint_eq(rd(&s, 5) & 1, 0);		/* LSR: nothing to read now */
	ck_assert_uint_eq(rd(&s, 0), 0);
	ck_assert_uint_eq(serial_input(&s, (const uint8_t *)"c", 1), 0);	/* still held */
	wr(&s, 1, 0x01);				/* RX interrupts on: held input comes back first */
	ck_assert_int_eq(irq_level, 1);
	ck_assert_uint_eq(serial_input(&s, (const uint8_t *)"c", 1), 1);
	ck_assert_uint_eq(rd(&s, 0), 'b');
	ck_assert_uint_eq(rd(&s, 0), 'c');
	ck_assert_int_eq(irq_level, 0);
	ck_assert_uint_eq(s.rx_requeued, 1);
	/* The driver's own loopback bytes are cleared for good. */
	wr(&s, 4, 0x10);
	wr(&s, 0, 'L');
	wr(&s, 2, 0x03);
	wr(&s, 4, 0x08);
	wr(&s, 1, 0x01);
	ck_assert_uint_eq(rd(&s, 5) & 1, 0);
	serial_destroy(&s);
}
END_TEST

START_TEST(out_of_range_ports_ignored)
{
	struct serial s;
	uint8_t v = 0x77;

	serial_init(&s, -1, NULL, NULL);
	serial_io(&s, SERIAL_COM1_BASE + 9, &v, 1, 0);
	ck_assert_uint_eq(v, 0x77);
	serial_io(&s, SERIAL_COM1_BASE - 1, &v, 1, 1);
	serial_destroy(&s);
}
END_TEST

#define BIG_OUTPUT	(1024 * 1024)

/*
 * A console nobody reads (a pipe left full) must not stall the guest: the
 * vCPU's THR write returns, and what does not fit is dropped and counted.
 */
START_TEST(blocked_output_never_stalls_the_guest)
{
	struct serial *s = calloc(1, sizeof(*s));
	char buf[4096];
	size_t i, got = 0, kept;
	int fds[2];

	ck_assert_ptr_nonnull(s);
	ck_assert_int_eq(pipe(fds), 0);
	ck_assert_int_eq(serial_init(s, fds[1], NULL, NULL), 0);
	for (i = 0; i < BIG_OUTPUT; i++)
		wr(s, 0, (uint8_t)('a' + i % 26));
	ck_assert_uint_eq(s->tx_bytes, BIG_OUTPUT);
	ck_assert_uint_gt(s->tx_dropped, 0);
	ck_assert_uint_le(s->tx_dropped, BIG_OUTPUT);
	/* A reader comes: what was kept comes out in order, and nothing else is lost. */
	kept = BIG_OUTPUT - s->tx_dropped;
	ck_assert_uint_ge(kept, SERIAL_TX_SIZE);
	while (got < kept) {
		ssize_t n = read(fds[0], buf, sizeof(buf));

		ck_assert_int_gt(n, 0);
		if (got == 0)
			ck_assert_int_eq(memcmp(buf, "abcdefghijklmnopqrstuvwxyz", 26), 0);
		got += (size_t)n;
	}
	ck_assert_uint_eq(serial_flush(s, 10000), 0);
	ck_assert_uint_eq(s->tx_written, kept);
	wr(s, 0, 'z');
	ck_assert_int_eq(read(fds[0], buf, 1), 1);
	ck_assert_int_eq(buf[0], 'z');
	/* Full again, with the writer stuck: a flush gives up, and teardown does not hang. */
	for (i = 0; i < BIG_OUTPUT; i++)
		wr(s, 0, 'q');
	ck_assert_uint_gt(serial_flush(s, 50), 0);
	serial_destroy(s);
	close(fds[0]);
	close(fds[1]);
	free(s);
}
END_TEST

/* --console FILE,max=N: the file never grows past N; it starts over with a marker line. */
START_TEST(console_file_capped)
{
	struct serial *s = calloc(1, sizeof(*s));
	char path[] = "/tmp/kiln-console-test-XXXXXX", head[64];
	struct stat st;
	size_t i;
	int fd = mkstemp(path);

	ck_assert_ptr_nonnull(s);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(serial_init(s, fd, NULL, NULL), 0);
	serial_set_console_max(s, 8192);
	for (i = 0; i < 3 * 8192 + 100; i++)
		wr(s, 0, (uint8_t)('a' + i % 26));
	ck_assert_uint_eq(serial_flush(s, 10000), 0);
	ck_assert_int_eq(fstat(fd, &st), 0);
	ck_assert_int_le(st.st_size, 8192);
	ck_assert_uint_ge(s->tx_truncations, 3);
	ck_assert_uint_eq(s->tx_dropped, 0);
	ck_assert_int_eq(pread(fd, head, sizeof(head) - 1, 0), sizeof(head) - 1);
	head[sizeof(head) - 1] = 0;
	ck_assert_msg(strncmp(head, "kiln-vmm: console truncated at ", 31) == 0, "%s", head);
	serial_destroy(s);
	close(fd);
	unlink(path);
	free(s);
}
END_TEST

Suite *suite_serial(void)
{
	Suite *s = suite_create("serial");
	TCase *tc = tcase_create("16550a");

	tcase_add_test(tc, thre_interrupt_cycle);
	tcase_add_test(tc, fifo_detected_as_16550a);
	tcase_add_test(tc, divisor_latch);
	tcase_add_test(tc, input_and_loopback);
	tcase_add_test(tc, input_survives_a_fifo_clear);
	tcase_add_test(tc, out_of_range_ports_ignored);
	suite_add_tcase(s, tc);
	tc = tcase_create("output");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, blocked_output_never_stalls_the_guest);
	tcase_add_test(tc, console_file_capped);
	suite_add_tcase(s, tc);
	return s;
}
