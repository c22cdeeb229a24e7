/*
 * Errors a user reads: one message that names what went wrong and, where
 * known, the fix. Library code fills one and returns -errno; only a
 * program's main (or an API layer) prints it.
 */
#ifndef KILN_ERR_H
#define KILN_ERR_H

struct kiln_err {
	char msg[512];
};

/* Fill err (may be NULL) with a formatted message; returns -errnum for `return kiln_fail(...)`. */
int kiln_fail(struct kiln_err *err, int errnum, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * Put what the caller knows ahead of err's message ("virtio-blk: KVM_IRQFD:
 * ..."); err may be NULL. Returns r, for `return kiln_err_prefix(err, r, ...)`.
 */
int kiln_err_prefix(struct kiln_err *err, int r, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
