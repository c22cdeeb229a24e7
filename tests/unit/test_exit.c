/* handle_exit driven with made-up kvm_run structures: no KVM involved. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "i8042.h"
#include "serial.h"
#include "unit.h"

static struct vm vm;
static struct vcpu vcpu;
static _Alignas(8) uint8_t runbuf[8192];
#define DATA_OFF 4096	/* where KVM puts port I/O data: the page after kvm_run */
static struct serial uart;
static int pipefd[2];

static void setup(void)
{
	memset(&vm, 0, sizeof(vm));
	pthread_mutex_init(&vm.lock, NULL);
	vm.stop_efd = -1;
	memset(&vcpu, 0, sizeof(vcpu));
	vcpu.vm = &vm;
	vcpu.run_size = sizeof(runbuf);
	memset(runbuf, 0, sizeof(runbuf));
	ck_assert_int_eq(pipe(pipefd), 0);
	serial_init(&uart, pipefd[1], NULL, NULL);
	ck_assert_int_eq(bus_add(&vm.pio, SERIAL_COM1_BASE, SERIAL_NPORTS, serial_io, &uart), 0);
	ck_assert_int_eq(bus_add(&vm.pio, KILN_PORT_EXIT, 4, guest_port_io, &vm), 0);
}

static void teardown(void)
{
	close(pipefd[0]);
	close(pipefd[1]);
	serial_destroy(&uart);
	pthread_mutex_destroy(&vm.lock);
}

static struct kvm_run *io_exit(int dir, uint16_t port, uint8_t size, uint32_t count)
{
	struct kvm_run *run = (struct kvm_run *)runbuf;

	run->exit_reason = KVM_EXIT_IO;
	run->io.direction = (uint8_t)dir;
	run->io.port = port;
	run->io.size = size;
	run->io.count = count;
	run->io.data_offset = DATA_OFF;
	return run;
}

START_TEST(serial_output_reaches_console)
{
	struct kvm_run *run = io_exit(KVM_EXIT_IO_OUT, SERIAL_COM1_BASE, 1, 3);
	char out[4] = { 0 };

	memcpy(runbuf + DATA_OFF, "abc", 3);	/* rep outsb of three bytes */
	ck_assert_int_eq(handle_exit(&vcpu, run), EXIT_CONTINUE);
	ck_assert_int_eq(read(pipefd[0], out, 3), 3);
	ck_assert_str_eq(out, "abc");
}
END_TEST

START_TEST(unclaimed_port_reads_all_ones)
{
	struct kvm_run *run = io_exit(KVM_EXIT_IO_IN, 0x71, 2, 1);

	memset(runbuf + DATA_OFF, 0, 2);
	ck_assert_int_eq(handle_exit(&vcpu, run), EXIT_CONTINUE);
	ck_assert_uint_eq(runbuf[DATA_OFF], 0xff);
	ck_assert_uint_eq(runbuf[DATA_OFF + 1], 0xff);
	/* A write to it goes nowhere and harms nothing. */
	run = io_exit(KVM_EXIT_IO_OUT, 0x80, 1, 1);
	ck_assert_int_eq(handle_exit(&vcpu, run), EXIT_CONTINUE);
}
END_TEST

START_TEST(status_port_stops_the_vm)
{
	struct kvm_run *run = io_exit(KVM_EXIT_IO_OUT, KILN_PORT_EXIT, 4, 1);
	uint32_t st = KILN_STATUS(KILN_STATUS_EXITED, 3);

	memcpy(runbuf + DATA_OFF, &st, 4);
	ck_assert_int_eq(handle_exit(&vcpu, run), EXIT_STOP);
	ck_assert_int_eq(atomic_load(&vm.stop), VM_STOP_STATUS);
	ck_assert_uint_eq(vm.status, st);
}
END_TEST

START_TEST(malformed_io_exit_is_an_error)
{
	struct kvm_run *run = io_exit(KVM_EXIT_IO_OUT, SERIAL_COM1_BASE, 1, 100000);

	ck_assert_int_eq(handle_exit(&vcpu, run), EXIT_STOP);
	ck_assert_int_eq(atomic_load(&vm.stop), VM_STOP_ERROR);
}
END_TEST

START_TEST(bad_io_size_is_an_error)
{
	struct kvm_run *run = io_exit(KVM_EXIT_IO_OUT, SERIAL_COM1_BASE, 3, 1);

	ck_assert_int_eq(handle_exit(&vcpu, run), EXIT_STOP);
	ck_assert_int_eq(atomic_load(&vm.stop), VM_STOP_ERROR);
}
END_TEST

START_TEST(unknown_exit_reason_stops)
{
	struct kvm_run *run = (struct kvm_run *)runbuf;

	run->exit_reason = 63;
	ck_assert_int_eq(handle_exit(&vcpu, run), EXIT_STOP);
	ck_assert_int_eq(atomic_load(&vm.stop), VM_STOP_ERROR);
	ck_assert_ptr_nonnull(strstr(vm.stop_detail, "unhandled KVM exit reason 63"));
	run->exit_reason = 100000;
	ck_assert_int_eq(handle_exit(&vcpu, run), EXIT_STOP);
}
END_TEST

START_TEST(triple_fault_is_a_reset)
{
	struct kvm_run *run = (struct kvm_run *)runbuf;

	run->exit_reason = KVM_EXIT_SHUTDOWN;
	ck_assert_int_eq(handle_exit(&vcpu, run), EXIT_STOP);
	ck_assert_int_eq(atomic_load(&vm.stop), VM_STOP_RESET);
}
END_TEST

START_TEST(mmio_read_is_zeroed)
{
	struct kvm_run *run = (struct kvm_run *)runbuf;

	run->exit_reason = KVM_EXIT_MMIO;
	run->mmio.phys_addr = 0xd0000000;
	run->mmio.len = 4;
	run->mmio.is_write = 0;
	memset(run->mmio.data, 0xab, sizeof(run->mmio.data));
	ck_assert_int_eq(handle_exit(&vcpu, run), EXIT_CONTINUE);
	ck_assert_uint_eq(run->mmio.data[0], 0);
	ck_assert_uint_eq(run->mmio.data[7], 0);
}
END_TEST

START_TEST(pio_overlap_refused)
{
	ck_assert_int_eq(bus_add(&vm.pio, SERIAL_COM1_BASE + 4, 2, serial_io, &uart), -EEXIST);
}
END_TEST

Suite *suite_exit(void)
{
	Suite *s = suite_create("exit");
	TCase *tc = tcase_create("dispatch");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, serial_output_reaches_console);
	tcase_add_test(tc, unclaimed_port_reads_all_ones);
	tcase_add_test(tc, status_port_stops_the_vm);
	tcase_add_test(tc, malformed_io_exit_is_an_error);
	tcase_add_test(tc, bad_io_size_is_an_error);
	tcase_add_test(tc, unknown_exit_reason_stops);
	tcase_add_test(tc, triple_fault_is_a_reset);
	tcase_add_test(tc, mmio_read_is_zeroed);
	tcase_add_test(tc, pio_overlap_refused);
	suite_add_tcase(s, tc);
	return s;
}
