/*
 * A 16550A UART on COM1: enough of the chip for Linux's 8250 driver to use
 * it interrupt-driven (THRE and RX interrupts, FIFO detection, loopback).
 * Register map: PC16550D datasheet, table 2.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "serial.h"
#include "io.h"
#include "snapfile.h"
#include "vmm.h"

#define UART_RBR	0	/* DLAB=0 read */
#define UART_THR	0	/* DLAB=0 write */
#define UART_IER	1
#define UART_IIR	2	/* read */
#define UART_FCR	2	/* write */
#define UART_LCR	3
#define UART_MCR	4
#define UART_LSR	5
#define UART_MSR	6
#define UART_SCR	7

#define IER_RDI		0x01
#define IER_THRI	0x02
#define IIR_NO_INT	0x01
#define IIR_THRI	0x02
#define IIR_RDI		0x04
#define IIR_FIFO	0xc0
#define FCR_ENABLE	0x01
#define FCR_CLEAR_RX	0x02
#define LCR_DLAB	0x80
#define MCR_DTR		0x01
#define MCR_RTS		0x02
#define MCR_OUT1	0x04
#define MCR_OUT2	0x08
#define MCR_LOOP	0x10
#define LSR_DR		0x01
#define LSR_THRE	0x20
#define LSR_TEMT	0x40
#define MSR_CTS		0x10
#define MSR_DSR		0x20
#define MSR_RI		0x40
#define MSR_DCD		0x80

/*
 * Write to out_fd, waiting as long as it takes: only the writer thread calls
 * this, and only here may serial_destroy() cancel it. Returns bytes or -errno.
 */
static ssize_t tx_write(int fd, const uint8_t *p, size_t n)
{
	ssize_t w;
	int e = 0;

	pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL);
	for (;;) {
		w = write(fd, p, n);
		if (w > 0)
			break;
		e = w == 0 ? EIO : errno;
		if (e == EINTR)
			continue;
		if (e == EAGAIN) {	/* someone made out_fd non-blocking */
			struct pollfd pfd = { .fd = fd, .events = POLLOUT };

			(void)poll(&pfd, 1, -1);
			continue;
		}
		break;
	}
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
	return w > 0 ? w : -e;
}

/* The capped console file is full: start it over with a marker line. */
static int console_restart(struct serial *s, uint64_t written)
{
	char mark[80];
	int len = snprintf(mark, sizeof(mark), "kiln-vmm: console truncated at %" PRIu64 " bytes\n", written);

	if (ftruncate(s->out_fd, 0) < 0 || lseek(s->out_fd, 0, SEEK_SET) < 0 ||
	    write_full(s->out_fd, mark, (size_t)len) < 0)
		return -1;
	s->tx_file_off = (uint64_t)len;
	return 0;
}

/* The writer thread: drains tx[] into out_fd, never holding the lock while it writes. */
static void *serial_writer(void *arg)
{
	struct serial *s = arg;

	pthread_setname_np(pthread_self(), "kiln-console");
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
	pthread_mutex_lock(&s->lock);
	for (;;) {
		const uint8_t *p;
		size_t n;
		ssize_t w;

		while (!s->tx_count && !s->tx_stop)
			pthread_cond_wait(&s->tx_cv, &s->lock);
		if (s->tx_stop)
			break;
		/* The bytes in [tx_head, +n) stay put until tx_count drops: write them in place. */
		p = s->tx + s->tx_head;
		n = s->tx_count < SERIAL_TX_SIZE - s->tx_head ? s->tx_count : SERIAL_TX_SIZE - s->tx_head;
		if (s->tx_max) {
			uint64_t max = s->tx_max, written = s->tx_written;
			int restart = s->tx_file_off >= max, failed = 0;

			if (restart) {
				pthread_mutex_unlock(&s->lock);
				failed = console_restart(s, written) < 0;
				pthread_mutex_lock(&s->lock);
				s->tx_truncations += !failed;
			}
			if (failed) {
				/* The file cannot start over: what is queued is lost. */
				s->tx_dropped += s->tx_count;
				s->tx_head = (s->tx_head + s->tx_count) % SERIAL_TX_SIZE;
				s->tx_count = 0;
				pthread_cond_broadcast(&s->tx_done_cv);
				continue;
			}
			if (n > max - s->tx_file_off)
				n = (size_t)(max - s->tx_file_off);
		}
		pthread_mutex_unlock(&s->lock);
		w = tx_write(s->out_fd, p, n);
		pthread_mutex_lock(&s->lock);
		if (w < 0) {
			s->tx_dropped += n;	/* a reader that went away, a full disk */
			w = (ssize_t)n;
		} else {
			s->tx_written += (uint64_t)w;
			s->tx_file_off += (uint64_t)w;
		}
		s->tx_head = (s->tx_head + (unsigned)w) % SERIAL_TX_SIZE;
		s->tx_count -= (unsigned)w;
		pthread_cond_broadcast(&s->tx_done_cv);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

int serial_init(struct serial *s, int out_fd, void (*set_irq)(void *, int), void *irq_opaque)
{
	pthread_condattr_t ca;
	sigset_t all, old;
	int r;

	memset(s, 0, sizeof(*s));
	pthread_mutex_init(&s->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->tx_cv, &ca);
	pthread_cond_init(&s->tx_done_cv, &ca);
	pthread_condattr_destroy(&ca);
	s->out_fd = out_fd;
	s->set_irq = set_irq;
	s->irq_opaque = irq_opaque;
	s->msr = MSR_DCD | MSR_DSR | MSR_CTS;
	s->mcr = MCR_OUT2;
	if (out_fd < 0)
		return 0;
	/* Signals are for the main thread's signalfd and the vCPUs' kicks. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = pthread_create(&s->writer, NULL, serial_writer, s);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r)
		return -r;
	s->writer_started = 1;
	return 0;
}

void serial_set_console_max(struct serial *s, uint64_t max)
{
	struct stat st;
	off_t off;

	if (s->out_fd < 0 || fstat(s->out_fd, &st) < 0 || !S_ISREG(st.st_mode))
		return;
	if (max && max < SERIAL_CONSOLE_MIN)
		max = SERIAL_CONSOLE_MIN;	/* room for the marker line and more */
	off = lseek(s->out_fd, 0, SEEK_CUR);
	pthread_mutex_lock(&s->lock);
	s->tx_file_off = off > 0 ? (uint64_t)off : 0;
	s->tx_max = max;
	pthread_mutex_unlock(&s->lock);
}

size_t serial_flush(struct serial *s, unsigned idle_ms)
{
	size_t left;

	pthread_mutex_lock(&s->lock);
	while (s->tx_count && s->writer_started) {
		unsigned before = s->tx_count;
		struct timespec ts = deadline_after(CLOCK_MONOTONIC, idle_ms);

		while (s->tx_count == before)
			if (pthread_cond_timedwait(&s->tx_done_cv, &s->lock, &ts) == ETIMEDOUT)
				break;
		if (s->tx_count == before)
			break;		/* no progress for idle_ms */
	}
	left = s->tx_count;
	pthread_mutex_unlock(&s->lock);
	return left;
}

void serial_destroy(struct serial *s)
{
	if (s->writer_started) {
		pthread_mutex_lock(&s->lock);
		s->tx_stop = 1;
		pthread_cond_signal(&s->tx_cv);
		pthread_mutex_unlock(&s->lock);
		/* A writer stuck in write() on a reader that never reads: cancel it there. */
		pthread_cancel(s->writer);
		pthread_join(s->writer, NULL);
		s->writer_started = 0;
	}
	pthread_cond_destroy(&s->tx_done_cv);
	pthread_cond_destroy(&s->tx_cv);
	pthread_mutex_destroy(&s->lock);
}

static uint8_t serial_iir(const struct serial *s)
{
	uint8_t fifo = s->fcr & FCR_ENABLE ? IIR_FIFO : 0;

	if ((s->ier & IER_RDI) && s->rx_count)
		return fifo | IIR_RDI;
	if ((s->ier & IER_THRI) && s->thre_pending)
		return fifo | IIR_THRI;
	return fifo | IIR_NO_INT;
}

/* Drive the line to match the pending interrupts; call with the lock held. */
static void serial_update_irq(struct serial *s)
{
	int level = !(serial_iir(s) & IIR_NO_INT);

	if (level != s->irq_level) {
		s->irq_level = level;
		if (s->set_irq)
			s->set_irq(s->irq_opaque, level);
	}
}

static void rx_push(struct serial *s, uint8_t b)
{
	if (s->rx_count == SERIAL_RX_SIZE)
		return;		/* overrun: the byte is lost, as on the chip */
	s->rx[(s->rx_head + s->rx_count) % SERIAL_RX_SIZE] = b;
	s->rx_count++;
}

/* Offer held input again once the driver takes RX interrupts. */
static void rx_refill(struct serial *s)
{
	unsigned i = 0;

	if (!(s->ier & IER_RDI))
		return;
	while (i < s->nheld && s->rx_count < SERIAL_RX_SIZE)
		rx_push(s, s->held[i++]);
	memmove(s->held, s->held + i, s->nheld - i);
	s->nheld -= i;
}

/*
 * The driver clears the receive FIFO when it probes and starts the port,
 * and Linux's probe sets IER to 0x0f for a moment: input that landed in
 * that window was lost, and an interactive shell waited for it for ever.
 * Host input the guest has not read goes back in front of the queue, to be
 * offered when RX interrupts are on; the driver's own loopback bytes go.
 */
static void rx_clear(struct serial *s)
{
	unsigned n = s->rx_count, i;

	if (s->mcr & MCR_LOOP)
		n = 0;
	if (n > SERIAL_RX_SIZE - s->nheld)
		n = SERIAL_RX_SIZE - s->nheld;
	memmove(s->held + n, s->held, s->nheld);
	for (i = 0; i < n; i++)
		s->held[i] = s->rx[(s->rx_head + i) % SERIAL_RX_SIZE];
	s->nheld += n;
	s->rx_requeued += n;
	s->rx_count = 0;
}

static void tx_byte(struct serial *s, uint8_t b)
{
	if (s->mcr & MCR_LOOP) {
		rx_push(s, b);
	} else if (s->out_fd >= 0) {
		s->tx_bytes++;
		if (s->tx_count == SERIAL_TX_SIZE) {
			s->tx_dropped++;	/* nobody reads fast enough: never stall the vCPU */
		} else {
			s->tx[(s->tx_head + s->tx_count) % SERIAL_TX_SIZE] = b;
			if (s->tx_count++ == 0)
				pthread_cond_signal(&s->tx_cv);
		}
	}
	s->thre_pending = 1;	/* the byte left at once: THR is empty again */
}

static uint8_t serial_read(struct serial *s, unsigned reg)
{
	uint8_t v = 0;

	switch (reg) {
	case UART_RBR:
		if (s->lcr & LCR_DLAB)
			return s->dll;
		if (s->rx_count) {
			v = s->rx[s->rx_head];
			s->rx_head = (s->rx_head + 1) % SERIAL_RX_SIZE;
			s->rx_count--;
			s->rbr_reads++;
		}
		return v;
	case UART_IER:
		return s->lcr & LCR_DLAB ? s->dlm : s->ier;
	case UART_IIR:
		v = serial_iir(s);
		/* Reading IIR with THRE as the source acknowledges it. */
		if ((v & 0x0f) == IIR_THRI)
			s->thre_pending = 0;
		return v;
	case UART_LCR:
		return s->lcr;
	case UART_MCR:
		return s->mcr;
	case UART_LSR:
		return (uint8_t)(LSR_THRE | LSR_TEMT | (s->rx_count ? LSR_DR : 0));
	case UART_MSR:
		if (s->mcr & MCR_LOOP) {
			/* Loopback wires DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD. */
			return (uint8_t)((s->mcr & MCR_DTR ? MSR_DSR : 0) |
					 (s->mcr & MCR_RTS ? MSR_CTS : 0) |
					 (s->mcr & MCR_OUT1 ? MSR_RI : 0) |
					 (s->mcr & MCR_OUT2 ? MSR_DCD : 0));
		}
		return s->msr;
	case UART_SCR:
		return s->scr;
	}
	return 0xff;
}

static void serial_write(struct serial *s, unsigned reg, uint8_t v)
{
	switch (reg) {
	case UART_THR:
		if (s->lcr & LCR_DLAB)
			s->dll = v;
		else
			tx_byte(s, v);
		break;
	case UART_IER:
		if (s->lcr & LCR_DLAB) {
			s->dlm = v;
		} else {
			/* Enabling THRI with THR empty raises the interrupt at once. */
			if ((v & IER_THRI) && !(s->ier & IER_THRI))
				s->thre_pending = 1;
			s->ier = v & 0x0f;
			rx_refill(s);
		}
		break;
	case UART_FCR:
		s->fcr = v & (FCR_ENABLE | 0xc0);
		if (v & FCR_CLEAR_RX)
			rx_clear(s);
		break;
	case UART_LCR:
		s->lcr = v;
		break;
	case UART_MCR:
		s->mcr = v & 0x1f;
		break;
	case UART_SCR:
		s->scr = v;
		break;
	}
}

void serial_io(void *opaque, uint64_t port, uint8_t *data, uint32_t size, int is_write)
{
	struct serial *s = opaque;
	uint64_t reg = port - SERIAL_COM1_BASE;

	/* The UART's registers are bytes; wider accesses touch the first. */
	(void)size;
	if (port < SERIAL_COM1_BASE || reg >= SERIAL_NPORTS)
		return;
	pthread_mutex_lock(&s->lock);
	if (is_write)
		serial_write(s, (unsigned)reg, data[0]);
	else
		data[0] = serial_read(s, (unsigned)reg);
	serial_update_irq(s);
	pthread_mutex_unlock(&s->lock);
}

size_t serial_input(struct serial *s, const uint8_t *buf, size_t len)
{
	size_t n = 0;

	pthread_mutex_lock(&s->lock);
	/*
	 * Hold input until the driver wants it: it clears the FIFO when it
	 * starts the port. Held bytes go first.
	 */
	rx_refill(s);
	while ((s->ier & IER_RDI) && !s->nheld && n < len && s->rx_count < SERIAL_RX_SIZE)
		rx_push(s, buf[n++]);
	s->rx_bytes += n;
	serial_update_irq(s);
	pthread_mutex_unlock(&s->lock);
	return n;
}

/*
 * The registers a driver programs. LSR and IIR follow from these and the
 * FIFO; MSR is fixed; the receive FIFO is dropped (input is best effort).
 */
void serial_save(struct serial *s, struct snap_buf *w)
{
	pthread_mutex_lock(&s->lock);
	snapw_u8(w, s->ier);
	snapw_u8(w, s->lcr);
	snapw_u8(w, s->mcr);
	snapw_u8(w, s->scr);
	snapw_u8(w, s->dll);
	snapw_u8(w, s->dlm);
	snapw_u8(w, s->fcr);
	snapw_u8(w, (uint8_t)s->thre_pending);
	pthread_mutex_unlock(&s->lock);
}

int serial_restore(struct serial *s, struct snap_rd *r, struct kiln_err *err)
{
	uint8_t ier, lcr, mcr, scr, dll, dlm, fcr, thre;

	ier = snapr_u8(r, "IER");
	lcr = snapr_u8(r, "LCR");
	mcr = snapr_u8(r, "MCR");
	scr = snapr_u8(r, "SCR");
	dll = snapr_u8(r, "DLL");
	dlm = snapr_u8(r, "DLM");
	fcr = snapr_u8(r, "FCR");
	thre = snapr_u8(r, "THRE pending");
	if (snapr_end(r, "serial state") < 0)
		return kiln_fail(err, EINVAL, "serial state: %s", r->err);
	/* Only values serial_write can produce. */
	if (ier & ~0x0f || mcr & ~0x1f || fcr & ~(FCR_ENABLE | 0xc0) || thre > 1)
		return kiln_fail(err, EINVAL, "serial state: IER %#x, MCR %#x, FCR %#x or THRE %u out of range",
				 ier, mcr, fcr, thre);
	pthread_mutex_lock(&s->lock);
	s->ier = ier;
	s->lcr = lcr;
	s->mcr = mcr;
	s->scr = scr;
	s->dll = dll;
	s->dlm = dlm;
	s->fcr = fcr;
	s->thre_pending = thre;
	s->rx_head = s->rx_count = s->nheld = 0;
	/* A THRE interrupt the guest has not taken yet must reach it again. */
	s->irq_level = 0;
	serial_update_irq(s);
	pthread_mutex_unlock(&s->lock);
	return 0;
}
