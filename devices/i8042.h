/* The i8042 keyboard controller, its reset line only (i8042.c): a port I/O handler. */
#ifndef KILN_I8042_H
#define KILN_I8042_H

#include <stdint.h>

#define I8042_DATA_PORT		0x60
#define I8042_CMD_PORT		0x64
#define I8042_CMD_RESET		0xfe

struct i8042 {
	void (*reset)(void *opaque);	/* the guest pulsed the CPU reset line */
	void *opaque;
};

/* Port I/O handler for 0x60 and 0x64. */
void i8042_io(void *opaque, uint64_t port, uint8_t *data, uint32_t size, int is_write);

#endif
