/*
 * The contract between kiln-vmm and the guest's init: I/O ports the init
 * writes and the kernel command-line parameters it reads. Shared by vmm/ and
 * guest/ so that the two cannot drift apart.
 */
#ifndef KILN_GUEST_ABI_H
#define KILN_GUEST_ABI_H

/*
 * The init writes a 32-bit status here when the guest command has finished;
 * the VMM stops the VM and exits with it. QEMU's isa-debug-exit device sits
 * on the same port, so the same initramfs also ends a QEMU guest (bench/).
 */
#define KILN_PORT_EXIT		0xf4
/*
 * Progress marks, one byte written to KILN_PORT_MARK: the init reached
 * userspace (boot timing), and the agent is listening (kiln-vmm --template
 * snapshots the VM at that moment; bench/ stops the boot clock there).
 */
#define KILN_PORT_MARK		0xf8
#define KILN_MARK_USERSPACE	1
#define KILN_MARK_AGENT_READY	2

/* Status word: bits 0-7 exit code or signal, bits 8-15 the kind below. */
#define KILN_STATUS_EXITED	0	/* command exited with code */
#define KILN_STATUS_SIGNALED	1	/* command was killed by signal */
#define KILN_STATUS_NOTFOUND	2	/* command not found */
#define KILN_STATUS_NOEXEC	3	/* command found but not executable */
#define KILN_STATUS_INITFAIL	4	/* the init itself could not run it */
#define KILN_STATUS(kind, val)	((((kind) & 0xffu) << 8) | ((val) & 0xffu))
#define KILN_STATUS_KIND(s)	(((s) >> 8) & 0xffu)
#define KILN_STATUS_VAL(s)	((s) & 0xffu)

/*
 * Kernel command-line parameters for the init. kiln.cmd carries the guest
 * command as base64url (RFC 4648 section 5, no padding) of its arguments,
 * each terminated by a NUL byte, so any byte survives the kernel's own
 * command-line parsing. kiln.bootmark makes the init print KILN_BOOT_MARK on
 * the console as soon as it runs (bench/ times both VMMs by it).
 */
#define KILN_PARAM_CMD		"kiln.cmd="
#define KILN_PARAM_BOOTMARK	"kiln.bootmark"
/* kiln.mount=DEV:DIR[:FSTYPE[:ro]]: the init mounts a disk (repeatable). */
#define KILN_PARAM_MOUNT	"kiln.mount="
/* kiln.agent: the init serves the agent protocol on vsock (docs/agent-protocol.md). */
#define KILN_PARAM_AGENT	"kiln.agent"
/*
 * kiln.root=LOWER:UPPER: the init mounts the read-only image on disk LOWER
 * and the writable ext4 layer on disk UPPER, joins them with overlayfs and
 * makes that the root before anything else runs (docs/images.md).
 */
#define KILN_PARAM_ROOT		"kiln.root="
/* kiln.user=NAME: commands run as NAME (the root's /etc/passwd), in its home, unless they ask otherwise. */
#define KILN_PARAM_USER		"kiln.user="
#define KILN_BOOT_MARK		"kiln-boot-mark"

/* x86 COMMAND_LINE_SIZE: the kernel truncates anything longer. */
#define KILN_CMDLINE_MAX	2048

#endif
