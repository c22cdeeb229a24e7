# kiln: one Makefile for the VMM, the guest, the tests and the benchmarks.
#
#   make            kiln-vmm, the guest kernel and initramfs (build/)
#   make run        kilnd in the foreground on 127.0.0.1:8080 (KILN_PORT), with a token
#   make demo       boot a guest and run `uname -a` in it
#   make test       unit tests, then integration tests that boot real guests
#   make bench-boot boot-time benchmark against QEMU's microvm machine
#   make bench-snapshot  snapshot restore against cold boot (also bench-agent,
#                   bench-vsock, bench-blk, bench-net)
#   make bench-create    kilnd's create against a raw restore and a cold boot
#   make bench-sdk  the @deno/sandbox SDK against kiln's CLI through kilnd
#   make fuzz       run the libFuzzer targets briefly

CC      ?= gcc
O       := build
WERROR  ?= -Werror
CFLAGS  ?= -O2 -g
WARN    := -Wall -Wextra -Wshadow -Wformat=2 $(WERROR)
# Headers are included by bare name; scripts/check-layers.py holds the layer
# order and `make test` fails on an include that points up it.
CPPFLAGS := -D_GNU_SOURCE -Ilib -Ivmm -Idevices -Isnapshot -Ivmm/kiln-vmm
CPPFLAGS += -Idevices/vsock
CPPFLAGS += -Ischeduler
LDLIBS  := -luring -pthread

# lib/: what guest and host share (the guest ABI, the agent protocol codec,
# the snapshot serialiser, I/O helpers); it includes nothing of kiln's above it.
LIB_SRCS  := lib/err.c lib/io.c lib/snapfile.c
LIB_HDRS  := $(wildcard lib/*.h)
VMM_SRCS  := $(LIB_SRCS) vmm/util.c vmm/memory.c vmm/loader.c vmm/boot.c vmm/kvm.c vmm/cpu.c vmm/exit.c \
             vmm/ioloop.c vmm/vmstate.c vmm/timeline.c vmm/kvmstats.c vmm/tcgkick.c vmm/kiln-vmm/control.c $(sort $(wildcard devices/*.c)) $(sort $(wildcard snapshot/*.c))
VMM_SRCS  += $(sort $(wildcard devices/vsock/*.c))
VMM_HDRS  := $(LIB_HDRS) vmm/vmm.h vmm/ioloop.h vmm/timeline.h vmm/kvmstats.h vmm/tcgkick.h vmm/kiln-vmm/control.h $(wildcard snapshot/*.h) $(wildcard devices/*.h)
VMM_HDRS  += $(wildcard devices/vsock/*.h)
# Owner-only unix sockets with peer checks (--control, --vsock uds=).
VMM_SRCS  += vmm/usock.c
VMM_HDRS  += vmm/usock.h
UNIT_SRCS := $(wildcard tests/unit/*.c)
PROTO_SRCS := lib/agent_proto.c
PROTO_HDRS := $(LIB_HDRS)

ASAN_FLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

.PHONY: all vmm guest kernel image test-image initramfs unit asan demo test check-layers test-unit test-integration test-client test-kilnd-api \
        test-kilnd-cli test-net-host test-ssh-host \
        bench-boot bench-blk bench-net bench-vsock bench-agent bench-snapshot fuzz fuzz-build deps deps-test clean FORCE

all: vmm guest

vmm: $(O)/kiln-vmm $(O)/kiln
guest: kernel initramfs
initramfs: $(O)/guest/initramfs.cpio
asan: $(O)/asan/kiln-vmm $(O)/asan/guest $(O)/asan/kac-fh-test $(O)/asan/kiln-agent-host

deps:
	@scripts/deps.sh build

deps-test:
	@scripts/deps.sh test

$(O)/kiln-vmm: $(VMM_SRCS) vmm/kiln-vmm/main.c $(VMM_HDRS) | $(O)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -o $@ $(VMM_SRCS) vmm/kiln-vmm/main.c $(LDLIBS)

# The agent client library (api/agent_client.h), one file per part.
KAC_SRCS  := api/ac_conn.c api/ac_op.c api/ac_proc.c api/ac_file.c api/ac_fh.c api/ac_ctl.c api/ac_port.c lib/io.c
KAC_HDRS  := api/agent_client.h api/ac_int.h
# kiln: the CLI client of the guest agent (api/).
KILN_SRCS := api/kiln.c api/kiln_exec.c api/kiln_files.c api/kiln_ctl.c api/kiln_port.c $(KAC_SRCS) $(PROTO_SRCS)
# ... and of kilnd: HTTP and the agent WebSocket with libwebsockets, JSON with jansson.
KILN_SRCS += api/kiln_remote.c api/kiln_http.c api/kiln_tunnel.c lib/err.c
KILN_HDRS := api/kiln_cli.h api/kiln_remote.h
KILN_LIBS = $(shell pkg-config --libs libwebsockets 2>/dev/null || echo -lwebsockets) $(JANSSON_LIBS) -pthread

$(O)/kiln: $(KILN_SRCS) $(KILN_HDRS) $(KAC_HDRS) $(PROTO_HDRS) | $(O)
	$(CC) $(CPPFLAGS) -Iapi $(CFLAGS) $(WARN) -o $@ $(KILN_SRCS) $(KILN_LIBS)

# The same sources with AddressSanitizer and UBSan (Solo5's two tenders from one tree).
$(O)/asan/kiln-vmm: $(VMM_SRCS) vmm/kiln-vmm/main.c $(VMM_HDRS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(ASAN_FLAGS) $(WARN) -o $@ $(VMM_SRCS) vmm/kiln-vmm/main.c $(LDLIBS)

# The CLI with ASan and UBSan, for the hostile-agent tests (test-client).
$(O)/asan/kiln: $(KILN_SRCS) $(KILN_HDRS) $(KAC_HDRS) $(PROTO_HDRS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Iapi $(ASAN_FLAGS) $(WARN) -o $@ $(KILN_SRCS) $(KILN_LIBS)

# The C client's file-handle calls against a live agent (tests/integration/agent.sh).
$(O)/asan/kac-fh-test: tests/integration/kac_fh.c $(KAC_SRCS) $(KAC_HDRS) $(PROTO_SRCS) $(PROTO_HDRS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Iapi $(ASAN_FLAGS) $(WARN) -o $@ tests/integration/kac_fh.c $(KAC_SRCS) $(PROTO_SRCS)

# IDENTITY sent ahead of an exec, against kiln-agent-host (tests/agent-host/).
$(O)/asan/kac-pipeline-test: tests/agent-host/kac_pipeline.c $(KAC_SRCS) $(KAC_HDRS) $(PROTO_SRCS) $(PROTO_HDRS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Iapi $(ASAN_FLAGS) $(WARN) -o $@ tests/agent-host/kac_pipeline.c $(KAC_SRCS) $(PROTO_SRCS)

# The path operations (chmod ... umask) against a kiln-agent-host of its own (tests/agent-host/).
$(O)/asan/kac-path-test: tests/agent-host/kac_path.c $(KAC_SRCS) $(KAC_HDRS) $(PROTO_SRCS) $(PROTO_HDRS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Iapi $(ASAN_FLAGS) $(WARN) -o $@ tests/agent-host/kac_path.c $(KAC_SRCS) $(PROTO_SRCS)

# The guest agent (guest/agent/): the guest's PID 1 links it, and so do its host-side tests.
AGENT_SRCS := $(sort $(wildcard guest/agent/*.c))
AGENT_HDRS := $(wildcard guest/agent/*.h)
AGENT_CPPFLAGS := -D_GNU_SOURCE -Iguest/agent -Ilib

# The guest agent on the host (a unix socket, not vsock) for tests/agent-host/.
$(O)/asan/kiln-agent-host: guest/agent_host.c $(AGENT_SRCS) $(AGENT_HDRS) $(PROTO_SRCS) $(PROTO_HDRS) $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) $(ASAN_FLAGS) $(WARN) $(AGENT_CPPFLAGS) -o $@ guest/agent_host.c $(AGENT_SRCS) $(PROTO_SRCS) lib/io.c

$(O)/asan/guest: | $(O)
	@mkdir -p $(O)/asan
	ln -sfn ../guest $@

$(O)/guest/init: guest/init.c $(AGENT_SRCS) $(AGENT_HDRS) $(PROTO_SRCS) $(PROTO_HDRS) $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) -static -Os $(WARN) $(AGENT_CPPFLAGS) -o $@ guest/init.c $(AGENT_SRCS) $(PROTO_SRCS) lib/io.c

# Static helper programs for the guest (guest/tools/NAME.c -> /usr/bin/NAME).
GUEST_TOOLS := $(patsubst guest/tools/%.c,$(O)/guest/tools/%,$(wildcard guest/tools/*.c))

$(O)/guest/tools/%: guest/tools/%.c lib/abi.h
	@mkdir -p $(@D)
	$(CC) -static -Os $(WARN) -D_GNU_SOURCE -Ilib -o $@ $<

$(O)/guest/initramfs.cpio: $(O)/guest/init $(GUEST_TOOLS) guest/mkinitramfs.sh
	guest/mkinitramfs.sh $(O)/guest/init $@ $(GUEST_TOOLS)

# The kernel build is cached outside the repo (guest/build-kernel.sh); this
# only links the cached vmlinux and bzImage into build/guest/.
kernel: | $(O)
	@mkdir -p $(O)/guest
	@dir=$$(guest/build-kernel.sh) && \
	  ln -sf "$$dir/vmlinux" $(O)/guest/vmlinux && \
	  ln -sf "$$dir/bzImage" $(O)/guest/bzImage

# The Debian base image (guest/mkimage.sh), cached outside the repo like the
# kernel, linked as build/guest/debian.ext4: every sandbox's read-only root,
# under its own writable layer (docs/images.md).
image: | $(O)
	@scripts/deps.sh image
	@mkdir -p $(O)/guest
	@dir=$$(guest/mkimage.sh) && \
	  ln -sf "$$dir/rootfs.ext4" $(O)/guest/debian.ext4 && \
	  echo "image: $(O)/guest/debian.ext4 ($$(du -h --apparent-size "$$dir/rootfs.ext4" | cut -f1), sha256 $$(cut -c1-16 "$$dir/rootfs.sha256")...)"

# The image's userland, checked in a chroot over a tmpfs overlay (root).
test-image: image
	tests/image/check.sh $(O)/guest/debian.ext4

$(O):
	@mkdir -p $(O)

# ---- tests -----------------------------------------------------------------

CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null || echo -lcheck)
JANSSON_LIBS := $(shell pkg-config --libs jansson 2>/dev/null || echo -ljansson)

$(O)/unit-tests: $(UNIT_SRCS) $(VMM_SRCS) $(PROTO_SRCS) $(VMM_HDRS) $(PROTO_HDRS) $(wildcard tests/unit/*.h) | $(O)
	$(CC) $(CPPFLAGS) $(ASAN_FLAGS) $(WARN) -Itests/unit -o $@ $(UNIT_SRCS) $(VMM_SRCS) $(PROTO_SRCS) $(CHECK_LIBS) $(LDLIBS)

# The guest agent's own suite: its dispatcher driven over a socketpair (tests/unit/agent/).
AGENT_UNIT_SRCS := $(sort $(wildcard tests/unit/agent/*.c))

$(O)/agent-unit-tests: $(AGENT_UNIT_SRCS) $(AGENT_SRCS) $(AGENT_HDRS) $(PROTO_SRCS) $(PROTO_HDRS) $(LIB_HDRS) | $(O)
	$(CC) $(AGENT_CPPFLAGS) $(ASAN_FLAGS) $(WARN) -o $@ $(AGENT_UNIT_SRCS) $(AGENT_SRCS) $(PROTO_SRCS) lib/io.c $(CHECK_LIBS)

# The scheduler's core (scheduler/sched_core.h): requests, durations, admission, lifetimes.
SCHED_CORE_SRCS := scheduler/sched.c scheduler/sched_spec.c scheduler/sched_time.c scheduler/sched_host.c \
                   scheduler/sched_net.c lib/err.c
SCHED_CORE_HDRS := scheduler/sched_core.h scheduler/sched_int.h scheduler/sched_net.h lib/err.h

SCHED_UNIT_SRCS := tests/unit/sched/test_sched.c tests/unit/sched/test_sched_spec.c tests/unit/sched/test_sched_net.c

$(O)/sched-unit-tests: $(SCHED_UNIT_SRCS) tests/unit/sched/sched_unit.h $(SCHED_CORE_SRCS) $(SCHED_CORE_HDRS) | $(O)
	$(CC) $(CPPFLAGS) -Itests/unit/sched -DSCHED_FIXTURES='"$(CURDIR)/tests/unit/sched/fixtures"' $(ASAN_FLAGS) $(WARN) \
	  -o $@ $(SCHED_UNIT_SRCS) $(SCHED_CORE_SRCS) $(CHECK_LIBS) $(JANSSON_LIBS) -lm

unit test-unit: $(O)/sched-unit-tests

# kilnd's registry (scheduler/registry.c): SQLite, tokens hashed with libcrypto.
REG_LIBS := $(shell pkg-config --libs sqlite3 libcrypto 2>/dev/null || echo -lsqlite3 -lcrypto)

REG_SRCS := scheduler/registry.c scheduler/reg_sandbox.c scheduler/reg_token.c scheduler/reg_template.c \
	scheduler/reg_volume.c lib/err.c
REG_HDRS := scheduler/registry.h scheduler/registry_int.h $(LIB_HDRS)

$(O)/registry-unit-tests: tests/unit/registry/test_registry.c $(REG_SRCS) $(REG_HDRS) | $(O)
	$(CC) $(CPPFLAGS) $(ASAN_FLAGS) $(WARN) -o $@ tests/unit/registry/test_registry.c $(REG_SRCS) $(CHECK_LIBS) $(REG_LIBS)

# kilnd, the node daemon (api/kilnd/): libwebsockets, the scheduler's core, the
# registry and the agent client; also built with ASan/UBSan for the tests.
LWS_LIBS   := $(shell pkg-config --libs libwebsockets 2>/dev/null || echo -lwebsockets)
KILND_SRCS := $(sort $(wildcard api/kilnd/*.c)) scheduler/sched.c scheduler/sched_spec.c scheduler/sched_time.c \
              scheduler/sched_host.c scheduler/sched_net.c scheduler/registry.c scheduler/reg_sandbox.c scheduler/reg_token.c \
              scheduler/reg_template.c scheduler/reg_volume.c $(filter-out lib/io.c,$(KAC_SRCS)) lib/io.c lib/err.c \
              $(PROTO_SRCS)
KILND_HDRS := $(wildcard api/kilnd/*.h) $(SCHED_CORE_HDRS) $(REG_HDRS) $(KAC_HDRS) $(PROTO_HDRS)
# The network (issue 16): nftables through libnftnl and libmnl; the egress
# proxy and resolver on libevent (evdns), TLS's SNI read with OpenSSL, HTTP's
# Host with http-parser.
NET_LIBS   := $(shell pkg-config --libs libnftnl libmnl libevent libevent_pthreads libevent_openssl libssl libcrypto 2>/dev/null || \
                echo -lnftnl -lmnl -levent -levent_pthreads -levent_openssl -lssl -lcrypto) -lhttp_parser
# The SSH gateway (kd_ssh.c): libssh's server API.
SSH_LIBS   := $(shell pkg-config --libs libssh 2>/dev/null || echo -lssh)
KILND_LIBS := $(LWS_LIBS) $(JANSSON_LIBS) $(REG_LIBS) $(NET_LIBS) $(SSH_LIBS) -pthread -lm

# The Deno SDK's REPL (issue 17) is a script kilnd writes into the guest:
# guest/deno/repl.js as a C array, so kilnd needs nothing from the image but deno.
$(O)/gen/kd_repl_js.h: guest/deno/repl.js
	@mkdir -p $(@D)
	{ echo '/* generated from guest/deno/repl.js by the Makefile */'; echo 'static const char kd_repl_js[] = {'; \
	  od -An -v -tx1 $< | sed -e 's/ *\([0-9a-f][0-9a-f]\)/0x\1,/g'; echo '0x00 };'; } >$@.tmp && mv $@.tmp $@

$(O)/kilnd: $(KILND_SRCS) $(KILND_HDRS) $(O)/gen/kd_repl_js.h | $(O)
	$(CC) $(CPPFLAGS) -Iapi -Iapi/kilnd -I$(O)/gen $(CFLAGS) $(WARN) -o $@ $(KILND_SRCS) $(KILND_LIBS)

$(O)/asan/kilnd: $(KILND_SRCS) $(KILND_HDRS) $(O)/gen/kd_repl_js.h
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Iapi -Iapi/kilnd -I$(O)/gen $(ASAN_FLAGS) $(WARN) -o $@ $(KILND_SRCS) $(KILND_LIBS)

vmm: $(O)/kilnd
asan: $(O)/asan/kilnd

unit: $(O)/unit-tests $(O)/agent-unit-tests
unit: $(O)/registry-unit-tests

# A stand-in for kilnd's agent WebSocket, for the CLI's tunnel test (tests/kilnd-cli/tunnel.sh).
$(O)/asan/fake-kilnd: tests/kilnd-cli/fake_kilnd.c
	@mkdir -p $(@D)
	$(CC) -D_GNU_SOURCE $(ASAN_FLAGS) $(WARN) -o $@ $< $(KILN_LIBS)

unit: $(O)/asan/fake-kilnd $(O)/asan/kiln

test-unit: $(O)/unit-tests $(O)/agent-unit-tests $(O)/asan/kiln-agent-host $(O)/kiln $(O)/asan/kac-pipeline-test
test-unit: $(O)/registry-unit-tests $(O)/asan/fake-kilnd $(O)/asan/kiln
test-unit: $(O)/asan/kac-path-test
	CK_DEFAULT_TIMEOUT=120 $(O)/unit-tests
	CK_DEFAULT_TIMEOUT=120 $(O)/registry-unit-tests
	CK_DEFAULT_TIMEOUT=120 $(O)/agent-unit-tests
	CK_DEFAULT_TIMEOUT=120 $(O)/sched-unit-tests
	tests/agent-host/run.sh $(O)/asan/kiln-agent-host $(O)/kiln $(O)/asan/kac-pipeline-test
	$(O)/asan/kac-path-test $(O)/asan/kiln-agent-host
	tests/kilnd-cli/tunnel.sh $(O)/asan/fake-kilnd $(O)/asan/kiln-agent-host $(O)/asan/kiln

# Integration tests boot real guests: directly where /dev/kvm works, else
# inside a nested KVM host under QEMU's TCG (tests/nested/). Both the
# release and the sanitizer builds of kiln-vmm are tested. The run takes
# 45-50 min in the nested host; the limit is there for a hang, and leaves
# CI's 90 minutes room for the set-up before it.
test-integration: all asan image
	tests/nested/kvm-host.sh --timeout 4200 -- tests/integration/run.sh $(O)/kiln-vmm $(O)/asan/kiln-vmm

# The CLI against a kilnd of its own (tests/kilnd-cli/run.sh): the REST verbs
# that need no VM, and the agent tunnel's refusals.
test-kilnd-cli: $(O)/asan/kiln $(O)/asan/kilnd
	tests/kilnd-cli/run.sh $(O)/asan/kilnd $(O)/asan/kiln

# kvm-host.sh --forward, which carries make run's port out of the nested host:
# one nested boot, about 15 s.
.PHONY: test-forward
test-forward:
	tests/nested/forward-test.sh
test-integration: test-forward

# The host client against fake hostile agents on unix sockets: no guest needed.
test-client: $(O)/asan/kiln
	python3 tests/integration/hostile-agent.py $(O)/asan/kiln

# kilnd's REST front against malformed and hostile requests: no guest needed.
test-kilnd-api: $(O)/asan/kilnd
	python3 tests/kilnd-api/run.py $(O)/asan/kilnd

check-layers:
	scripts/check-layers.py

# The host-side tests run beside the integration tests, which in the nested
# host keep one core busy for most of an hour (scripts/test-both.sh).
HOST_TESTS := test-unit fuzz-smoke test-client test-kilnd-api test-kilnd-cli test-image test-net-host test-ssh-host

test: deps-test
	@$(MAKE) --no-print-directory check-layers
	@$(MAKE) --no-print-directory all asan unit fuzz-build image
	@MAKE="$(MAKE)" scripts/test-both.sh $(O)/test-host.log $(HOST_TESTS) -- test-integration

# Sandbox networks without a VM (issue 16), as root: the namespace and its
# nftables rules with real packets from a stand-in guest (tests/netns/); the
# resolver and egress proxy against a fake internet of namespaces, hostile
# clients included (tests/egress/).
test-net-host:
	tests/netns/run.sh $(O)/netns
	tests/egress/run.sh $(O)/egress

# kilnd's SSH gateway without a VM (tests/ssh/): kd_ssh.c with ASan in a
# driver of its own, kiln-agent-host as the sandbox's agent, and OpenSSH's
# ssh, scp and sftp as clients.
$(O)/asan/kd-ssh-test: tests/ssh/ssh_host.c api/kilnd/kd_ssh.c api/kilnd/kd_ssh.h lib/err.c $(KAC_SRCS) $(KAC_HDRS) \
		       $(PROTO_SRCS) $(PROTO_HDRS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Iapi -Iapi/kilnd $(ASAN_FLAGS) $(WARN) -o $@ tests/ssh/ssh_host.c api/kilnd/kd_ssh.c lib/err.c \
	  $(KAC_SRCS) $(PROTO_SRCS) $(SSH_LIBS) -pthread

test-ssh-host: $(O)/asan/kd-ssh-test $(O)/asan/kiln-agent-host
	tests/ssh/run.sh $(O)/asan/kd-ssh-test $(O)/asan/kiln-agent-host

# ---- fuzzing (libFuzzer, Debian's clang) -------------------------------------

FUZZ_TARGETS := $(patsubst tests/fuzz/fuzz_%.c,$(O)/fuzz/fuzz_%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_SECONDS ?= 20

$(O)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(VMM_SRCS) $(PROTO_SRCS) $(VMM_HDRS) $(PROTO_HDRS)
	@mkdir -p $(@D)
	clang $(CPPFLAGS) -g -O1 -fsanitize=fuzzer,address,undefined -o $@ $< $(VMM_SRCS) $(PROTO_SRCS) $(LDLIBS)

# The agent's target links the agent and the codec, not the VMM.
$(O)/fuzz/fuzz_agent: tests/fuzz/fuzz_agent.c $(AGENT_SRCS) $(AGENT_HDRS) $(PROTO_SRCS) $(PROTO_HDRS) $(LIB_HDRS)
	@mkdir -p $(@D)
	clang $(AGENT_CPPFLAGS) -g -O1 -fsanitize=fuzzer,address,undefined -o $@ $< $(AGENT_SRCS) $(PROTO_SRCS) lib/io.c

# The create-body parser's target links the scheduler's core and jansson, not the VMM.
$(O)/fuzz/fuzz_sched_spec: tests/fuzz/fuzz_sched_spec.c $(SCHED_CORE_SRCS) $(SCHED_CORE_HDRS)
	@mkdir -p $(@D)
	clang $(CPPFLAGS) -g -O1 -fsanitize=fuzzer,address,undefined -o $@ $< $(SCHED_CORE_SRCS) $(JANSSON_LIBS) -lm

# The Deno SDK's create config header, decoded by kilnd, then kiln's create-body parser.
$(O)/fuzz/fuzz_v3conf: tests/fuzz/fuzz_v3conf.c api/kilnd/kd_v3conf.c api/kilnd/kd_v3conf.h $(SCHED_CORE_SRCS) $(SCHED_CORE_HDRS)
	@mkdir -p $(@D)
	clang $(CPPFLAGS) -Iapi/kilnd -g -O1 -fsanitize=fuzzer,address,undefined -o $@ $< api/kilnd/kd_v3conf.c \
	  $(SCHED_CORE_SRCS) $(JANSSON_LIBS) $(shell pkg-config --libs libcrypto 2>/dev/null || echo -lcrypto) -lm

# What the egress proxy reads before it knows where a connection goes (TLS SNI, HTTP Host).
$(O)/fuzz/fuzz_sniff: tests/fuzz/fuzz_sniff.c api/kilnd/kd_sniff.c api/kilnd/kd_sniff.h
	@mkdir -p $(@D)
	clang $(CPPFLAGS) -Iapi/kilnd -g -O1 -fsanitize=fuzzer,address,undefined -o $@ $< api/kilnd/kd_sniff.c \
	  $(shell pkg-config --libs libssl libcrypto 2>/dev/null || echo -lssl -lcrypto) -lhttp_parser

# The question of a guest's DNS query, parsed by kilnd's resolver (kd_sniff.c too).
$(O)/fuzz/fuzz_dns: tests/fuzz/fuzz_dns.c api/kilnd/kd_sniff.c api/kilnd/kd_sniff.h
	@mkdir -p $(@D)
	clang $(CPPFLAGS) -Iapi/kilnd -g -O1 -fsanitize=fuzzer,address,undefined -o $@ $< api/kilnd/kd_sniff.c \
	  $(shell pkg-config --libs libssl libcrypto 2>/dev/null || echo -lssl -lcrypto) -lhttp_parser

fuzz-build: $(FUZZ_TARGETS)

# A short run of each target over its corpus in tests/fuzz/corpus/<name>/.
fuzz-smoke: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	  n=$$(basename $$t); mkdir -p $(O)/fuzz/new-$$n; \
	  echo "fuzz: $$n for $(FUZZ_SECONDS)s"; \
	  $$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=0 $(O)/fuzz/new-$$n tests/fuzz/corpus/$$n \
	    2>$(O)/fuzz/$$n.log || { tail -n 40 $(O)/fuzz/$$n.log; exit 1; }; \
	done

fuzz: fuzz-build
	@$(MAKE) --no-print-directory fuzz-smoke FUZZ_SECONDS=$${FUZZ_SECONDS:-300}

# ---- running and benchmarks ----------------------------------------------------

# kiln's main command: kilnd in the foreground on 127.0.0.1:$KILN_PORT (8080), here
# where /dev/kvm works, else in the nested KVM host with that port forwarded
# out of it; prints a token and two lines to try (scripts/run.sh).
.PHONY: run
run: deps-test
	@$(MAKE) --no-print-directory all image
	@scripts/run.sh

demo: deps-test
	@$(MAKE) --no-print-directory all
	tests/nested/kvm-host.sh -- $(O)/kiln-vmm -- uname -a

$(O)/kiln-firstexec: bench/firstexec.c $(KAC_SRCS) $(KAC_HDRS) $(PROTO_HDRS) | $(O)
	$(CC) $(CPPFLAGS) -Iapi $(CFLAGS) $(WARN) -o $@ bench/firstexec.c $(KAC_SRCS) $(PROTO_SRCS)

BENCH_BOOT_SRCS := bench/boot.c bench/boot_run.c bench/boot_report.c

$(O)/bench-boot: $(BENCH_BOOT_SRCS) bench/bench_boot.h lib/abi.h | $(O)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -o $@ $(BENCH_BOOT_SRCS) $(LDLIBS)

BENCH_RUNS ?= 10
bench-boot: deps-test
	@$(MAKE) --no-print-directory all $(O)/bench-boot
	tests/nested/kvm-host.sh -- $(O)/bench-boot --runs $(BENCH_RUNS) --vmm $(O)/kiln-vmm \
	  --kernel $(O)/guest/vmlinux --initrd $(O)/guest/initramfs.cpio

# virtio-blk against the host and QEMU microvm on the same backing device.
BENCH_SECONDS ?= 3
bench-blk: deps-test
	@$(MAKE) --no-print-directory all
	tests/nested/kvm-host.sh -- bench/blk.sh $(O)/kiln-vmm $(O)/guest/vmlinux \
	  $(O)/guest/initramfs.cpio $(O)/guest/tools/kiln-blkbench $(BENCH_SECONDS)

# virtio-net against a veth pair and QEMU microvm, through taps; then a
# Debian sandbox's egress through kilnd's proxy against the veth baseline,
# namespace set-up and a 256-entry allow_net (bench/egress.sh).
BENCH_NET_MIB ?= 32
bench-net: deps-test
	@$(MAKE) --no-print-directory all image
	tests/nested/kvm-host.sh -- bench/net.sh $(O)/kiln-vmm $(O)/guest/vmlinux \
	  $(O)/guest/initramfs.cpio $(BENCH_NET_MIB)
	tests/nested/kvm-host.sh -- bench/egress.sh $(O)/kilnd $(O)/kiln-vmm $(O)/kiln

# vsock echo latency and throughput against a plain unix socket.
bench-vsock: deps-test
	@$(MAKE) --no-print-directory all
	tests/nested/kvm-host.sh -- bench/vsock.sh $(O)/kiln-vmm

# The agent: exec round trips against host fork+exec, stdout and file throughput.
bench-agent: deps-test
	@$(MAKE) --no-print-directory all
	tests/nested/kvm-host.sh -- bench/agent.sh $(O)/kiln-vmm $(O)/kiln

# Snapshot restore against cold boot: first exec, clones at once, memory.
# Knobs (make bench-snapshot BENCH_SNAP_CLONES=20 ...): BENCH_SNAP_ROUNDS
# (default 20; 5 in the nested host), BENCH_SNAP_CLONES (50; 10 nested),
# BENCH_SNAP_MEMVMS (10), BENCH_SNAP_MEM (MiB, 256), BENCH_SNAP_TIMEOUT (s, 120; 300 nested).
BENCH_SNAP_ENV = BENCH_SNAP_ROUNDS BENCH_SNAP_CLONES BENCH_SNAP_MEMVMS BENCH_SNAP_MEM BENCH_SNAP_TIMEOUT
bench-snapshot: deps-test
	@$(MAKE) --no-print-directory all $(O)/kiln-firstexec
	KILN_NESTED_PASSENV="$${KILN_NESTED_PASSENV:-} $(BENCH_SNAP_ENV)" \
	  tests/nested/kvm-host.sh -- bench/snapshot.sh $(O)/kiln-vmm $(O)/kiln-firstexec

# kilnd's create against a raw restore of its template and a cold boot; creates
# per second with 20 clients at once; kilnd's RSS with 0 and 50 sandboxes.
# Knobs: BENCH_CREATE_ROUNDS (20), BENCH_CREATE_CLIENTS (20), BENCH_CREATE_REPEATS
# (3), BENCH_CREATE_MANY (50), BENCH_CREATE_MEM (MiB, 768), BENCH_CREATE_VCPUS (1),
# BENCH_CREATE_TIMEOUT (s per step, 120; 300 nested).
BENCH_CREATE_ENV = BENCH_CREATE_ROUNDS BENCH_CREATE_CLIENTS BENCH_CREATE_REPEATS BENCH_CREATE_MANY \
  BENCH_CREATE_MEM BENCH_CREATE_VCPUS BENCH_CREATE_TIMEOUT
.PHONY: bench-create
bench-create: deps-test
	@$(MAKE) --no-print-directory all image $(O)/kilnd $(O)/kiln-firstexec
	KILN_NESTED_PASSENV="$${KILN_NESTED_PASSENV:-} $(BENCH_CREATE_ENV)" \
	  tests/nested/kvm-host.sh --timeout 1800 -- bench/create.sh $(O)/kiln-vmm $(O)/kilnd $(O)/kiln $(O)/kiln-firstexec

# The @deno/sandbox SDK (tests/sdk) against kiln's CLI through one kilnd: create
# -> first exec, exec round trips, file and directory throughput (bench/sdk.sh).
# Knobs: BENCH_SDK_ROUNDS (10), BENCH_SDK_SH (50), BENCH_SDK_XFER (3),
# BENCH_SDK_MIB (31), BENCH_SDK_TIMEOUT (s per step, 120; 300 nested).
BENCH_SDK_ENV = BENCH_SDK_ROUNDS BENCH_SDK_SH BENCH_SDK_XFER BENCH_SDK_MIB BENCH_SDK_TIMEOUT
.PHONY: bench-sdk
bench-sdk: deps-test
	@$(MAKE) --no-print-directory all image $(O)/kilnd $(O)/kiln
	KILN_NESTED_PASSENV="$${KILN_NESTED_PASSENV:-} $(BENCH_SDK_ENV)" \
	  tests/nested/kvm-host.sh --timeout 1800 -- bench/sdk.sh $(O)/kiln-vmm $(O)/kilnd $(O)/kiln

clean:
	rm -rf $(O)
