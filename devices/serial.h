/*
 * A 16550A UART on COM1 (serial.c): the guest's console. A port I/O handler
 * (struct bus_dev in vmm/vmm.h) whose state is plain data, so that unit tests
 * drive it without KVM.
 */
#ifndef KILN_SERIAL_H
#define KILN_SERIAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define SERIAL_COM1_BASE	0x3f8
#define SERIAL_COM1_IRQ		4
#define SERIAL_NPORTS		8
#define SERIAL_RX_SIZE		64
#define SERIAL_TX_SIZE		65536	/* output waiting for out_fd's reader */
#define SERIAL_CONSOLE_MIN	4096	/* the smallest cap on a console file */

struct serial {
	pthread_mutex_t lock;
	uint8_t ier, lcr, mcr, lsr_extra, msr, scr, dll, dlm, fcr;
	int thre_pending;	/* transmitter-empty interrupt not yet seen */
	uint8_t rx[SERIAL_RX_SIZE];
	unsigned rx_head, rx_count;
	/* Input the guest cleared from the FIFO unread: offered again with RX interrupts. */
	uint8_t held[SERIAL_RX_SIZE];
	unsigned nheld;
	int irq_level;
	int out_fd;		/* where the guest's output goes; -1 drops it */
	void (*set_irq)(void *opaque, int level);
	void *irq_opaque;
	uint64_t tx_bytes;	/* bytes the guest transmitted */
	/*
	 * Output waits here for the writer thread, so that a vCPU never blocks
	 * on out_fd: when it is full, bytes are dropped and counted.
	 */
	uint8_t tx[SERIAL_TX_SIZE];
	unsigned tx_head, tx_count;
	pthread_cond_t tx_cv;		/* output queued, or the writer must stop */
	pthread_cond_t tx_done_cv;	/* the writer wrote (or dropped) some */
	pthread_t writer;
	int writer_started, tx_stop;
	uint64_t tx_max;		/* out_fd is a file capped at this size; 0: no cap */
	uint64_t tx_file_off;		/* where the next byte lands in it (writer thread) */
	uint64_t tx_written;		/* bytes written to out_fd */
	uint64_t tx_dropped;		/* bytes lost: buffer full, or out_fd failed */
	uint64_t tx_truncations;	/* times the capped file started over */
	uint64_t rx_bytes;	/* bytes of input the UART took */
	uint64_t rbr_reads;	/* received bytes the guest has read */
	uint64_t rx_requeued;	/* input bytes saved from a FIFO clear */
};

/*
 * Initialise a UART writing its output to out_fd (-1: discard) and driving
 * its interrupt line through set_irq(irq_opaque, level). A thread of its own
 * writes the output, with every signal blocked. Returns 0, or -errno if that
 * thread could not start.
 */
int serial_init(struct serial *s, int out_fd, void (*set_irq)(void *, int), void *irq_opaque);
/* Stop the writer thread (even one stuck in write()) and free the UART. */
void serial_destroy(struct serial *s);

/*
 * Cap the output file at max bytes (before the guest runs): when it is full,
 * it is truncated and starts over with the line "kiln-vmm: console truncated
 * at N bytes" (N: the output written so far). Only for a regular file; 0 means
 * no cap, and a cap below SERIAL_CONSOLE_MIN is raised to it.
 */
void serial_set_console_max(struct serial *s, uint64_t max);

/*
 * Wait until the queued output is written, giving up after idle_ms without
 * progress (a reader that stopped reading). Returns the bytes still queued.
 */
size_t serial_flush(struct serial *s, unsigned idle_ms);

/* Append the UART's registers to a snapshot (the receive FIFO is not kept). */
struct snap_buf;
struct snap_rd;
struct kiln_err;
void serial_save(struct serial *s, struct snap_buf *w);
/* Validate and apply saved registers; 0 or -EINVAL with err set. */
int serial_restore(struct serial *s, struct snap_rd *r, struct kiln_err *err);

/* Port I/O handler for [SERIAL_COM1_BASE, +SERIAL_NPORTS). */
void serial_io(void *opaque, uint64_t port, uint8_t *data, uint32_t size, int is_write);

/*
 * Queue input bytes for the guest; returns how many fitted in the FIFO (none
 * until the guest's driver has enabled the receive interrupt).
 */
size_t serial_input(struct serial *s, const uint8_t *buf, size_t len);

#endif
