/*
 * I/O helpers that the guest agent and the host programs share. Plain POSIX,
 * no kiln types: lib/ sits below every other layer.
 */
#ifndef KILN_IO_H
#define KILN_IO_H

#include <stddef.h>

/*
 * Write all n bytes of p to fd, through short writes and EINTR. Returns 0, or
 * -errno (-EIO when fd takes no more bytes: write() returned 0).
 */
int write_full(int fd, const void *p, size_t n);

#endif
