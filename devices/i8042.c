/*
 * The i8042 keyboard controller, reduced to what a guest without a keyboard
 * uses: the CPU reset line (command 0xfe on port 0x64), which reboot=k and a
 * panic with panic=-1 pulse to end the VM.
 */
#include "i8042.h"

void i8042_io(void *opaque, uint64_t port, uint8_t *data, uint32_t size, int is_write)
{
	struct i8042 *k = opaque;

	(void)size;
	if (!is_write) {
		data[0] = 0;	/* status: no data, input buffer empty */
		return;
	}
	if (port == I8042_CMD_PORT && data[0] == I8042_CMD_RESET && k->reset)
		k->reset(k->opaque);
}
