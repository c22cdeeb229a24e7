/*
 * The guest agent driven over a socketpair that stands for its vsock
 * connection, as test_exit.c drives handle_exit: requests are encoded with
 * the codec (agent_proto.h), the agent's loop is turned with agent_step and
 * its frames are decoded back. The agent runs in host mode, so nothing of
 * the machine's is touched; each test runs in its own forked process.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "agent_proto.h"

/* The host's end of one connection to an agent. */
struct fake {
	struct agent *a;
	int fd;
	struct kp_decoder dec;
	uint8_t dbuf[KP_MAX_PAYLOAD];
	uint8_t in[1 << 16];		/* bytes read from the agent, not yet decoded */
	size_t inoff, inlen;
	uint8_t payload[KP_MAX_PAYLOAD];	/* the last frame's payload */
	uint8_t out[KP_HDR_LEN + KP_MAX_CONTROL];
	int closed;			/* the agent closed its end */
};

static struct fake T;

static void fake_send(const void *p, size_t n)
{
	const uint8_t *b = p;

	while (n) {
		ssize_t k = write(T.fd, b, n);

		if (k < 0 && errno == EAGAIN) {
			agent_step(T.a, 10);
			continue;
		}
		ck_assert_int_gt(k, 0);
		b += k;
		n -= (size_t)k;
	}
}

/* The next frame from the agent within ms, turning its loop meanwhile: 1, or 0 if none came. */
static int fake_next(struct kp_frame *f, int ms)
{
	struct timespec t0, now;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		size_t used;
		int ret;
		ssize_t k;

		if (T.inoff < T.inlen) {
			ret = kp_dec_feed(&T.dec, T.in + T.inoff, T.inlen - T.inoff, &used, f);
			T.inoff += used;
			ck_assert_int_ge(ret, 0);
			if (ret == 1) {
				memcpy(T.payload, f->payload, f->len);
				f->payload = T.payload;
				return 1;
			}
		}
		if (T.inoff == T.inlen)
			T.inoff = T.inlen = 0;
		k = recv(T.fd, T.in + T.inlen, sizeof(T.in) - T.inlen, MSG_DONTWAIT);
		if (k > 0) {
			T.inlen += (size_t)k;
			continue;
		}
		if (k == 0) {
			T.closed = 1;
			return 0;
		}
		clock_gettime(CLOCK_MONOTONIC, &now);
		if ((now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000 > ms)
			return 0;
		agent_step(T.a, 10);
	}
}

/* The next frame, which must be of type for id. */
static void expect(struct kp_frame *f, uint8_t type, uint32_t id)
{
	ck_assert_msg(fake_next(f, 10000), "no frame from the agent (wanted %s id %u)", kp_type_name(type), id);
	ck_assert_msg(f->type == type && f->id == id, "got %s id %u, wanted %s id %u",
		      kp_type_name(f->type), f->id, kp_type_name(type), id);
}

static uint64_t field_u64(const struct kp_frame *f, uint8_t tag)
{
	struct kp_field fl;
	uint64_t v = 0;
	int64_t i;

	ck_assert_int_eq(kp_rec_find(f->payload, f->len, tag, &fl), 1);
	if (fl.kind == KP_K_I64) {
		ck_assert_int_eq(kp_field_i64(&fl, &i), 0);
		return (uint64_t)i;
	}
	ck_assert_int_eq(kp_field_u64(&fl, &v), 0);
	return v;
}

static const char *field_str(const struct kp_frame *f, uint8_t tag)
{
	static char s[4096];
	struct kp_field fl;

	if (kp_rec_find(f->payload, f->len, tag, &fl) != 1)
		return NULL;
	ck_assert_int_eq(kp_field_str(&fl, s, sizeof(s)), 0);
	return s;
}

/* An ERROR for id with code (and errno err, when non-zero). */
static void expect_error(uint32_t id, uint32_t code, int err)
{
	struct kp_frame f;

	expect(&f, KP_ERROR, id);
	ck_assert_uint_eq(field_u64(&f, KT_CODE), code);
	if (err)
		ck_assert_uint_eq(field_u64(&f, KT_ERRNO), (uint64_t)err);
}

static void req_begin(struct kp_recw *w, uint64_t op)
{
	kp_recw_init(w, T.out + KP_HDR_LEN, KP_MAX_CONTROL);
	kp_put_u64(w, KT_OP, op);
}

static void req_send(uint32_t id, struct kp_recw *w)
{
	int n = kp_enc_rec_frame(T.out, sizeof(T.out), KP_REQUEST, 0, id, w);

	ck_assert_int_gt(n, 0);
	fake_send(T.out, (size_t)n);
}

/* A request with one STR argument (0: none). */
static void req_path(uint32_t id, uint64_t op, uint8_t tag, const char *s)
{
	struct kp_recw w;

	req_begin(&w, op);
	if (tag)
		kp_put_str(&w, tag, s);
	req_send(id, &w);
}

/* Connect to a new agent with flags, exchange HELLOs. */
static void fake_open(unsigned flags)
{
	int sv[2], n;
	struct kp_frame f;

	memset(&T, 0, sizeof(T));
	ck_assert_int_eq(agent_new(&T.a, AGENT_HOST | flags, NULL), 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	ck_assert_int_eq(agent_conn_add(T.a, sv[1], 0), 0);
	T.fd = sv[0];
	fcntl(T.fd, F_SETFL, O_NONBLOCK);
	kp_dec_init(&T.dec, T.dbuf, sizeof(T.dbuf));
	expect(&f, KP_HELLO, 0);
	ck_assert_uint_eq(field_u64(&f, KT_VERSION), KP_VERSION);
	ck_assert_str_eq(field_str(&f, KT_AGENT), "kiln-agent 0.1");
	n = kp_enc_hello(T.out, sizeof(T.out), KP_DEFAULT_WINDOW, KP_MAX_PAYLOAD, "agent unit test");
	ck_assert_int_gt(n, 0);
	fake_send(T.out, (size_t)n);
}

static void setup(void)
{
	fake_open(0);
}

static void teardown(void)
{
	if (T.fd >= 0)
		close(T.fd);
	agent_free(T.a);
}

/* ---- control ------------------------------------------------------------------------ */

START_TEST(health_answers_after_hello)
{
	struct kp_frame f;

	req_path(1, KP_OP_HEALTH, 0, NULL);
	expect(&f, KP_RESPONSE, 1);
	ck_assert_uint_eq(f.flags, KP_F_END);
	ck_assert_uint_gt(field_u64(&f, KT_UPTIME_NS), 0);
	ck_assert_uint_eq(field_u64(&f, KT_PROCS), 0);
}
END_TEST

START_TEST(ping_gets_pong)
{
	uint8_t b[KP_HDR_LEN + 8];
	struct kp_frame f;
	uint64_t v;

	fake_send(b, (size_t)kp_enc_ping(b, KP_PING, 0x1234567890ull));
	expect(&f, KP_PONG, 0);
	ck_assert_int_eq(kp_parse_u64(&f, &v), 0);
	ck_assert_uint_eq(v, 0x1234567890ull);
}
END_TEST

START_TEST(identity_sets_id_and_env)
{
	struct kp_recw w;
	struct kp_frame f;

	req_begin(&w, KP_OP_IDENTITY);
	kp_put_str(&w, KT_SANDBOX_ID, "sb-unit.1");
	kp_put_str(&w, KT_ENV, "GREETING=hello");
	req_send(2, &w);
	expect(&f, KP_RESPONSE, 2);
	ck_assert_uint_eq(f.flags, KP_F_END);
	req_path(3, KP_OP_ENV_GET, KT_KEY, "KILN_SANDBOX_ID");
	expect(&f, KP_RESPONSE, 3);
	ck_assert_str_eq(field_str(&f, KT_VALUE), "sb-unit.1");
	req_path(4, KP_OP_ENV_GET, KT_KEY, "GREETING");
	expect(&f, KP_RESPONSE, 4);
	ck_assert_str_eq(field_str(&f, KT_VALUE), "hello");
}
END_TEST

START_TEST(identity_in_host_mode_refuses_hostname)
{
	struct kp_recw w;

	req_begin(&w, KP_OP_IDENTITY);
	kp_put_str(&w, KT_HOSTNAME, "box");
	req_send(5, &w);
	expect_error(5, KP_ERR_BAD_ARGS, 0);
	req_begin(&w, KP_OP_IDENTITY);
	kp_put_str(&w, KT_SANDBOX_ID, "bad id with spaces");
	req_send(6, &w);
	expect_error(6, KP_ERR_BAD_ARGS, 0);
}
END_TEST

START_TEST(shutdown_ends_the_loop)
{
	struct kp_frame f;
	int i, done = 0;

	req_path(7, KP_OP_SHUTDOWN, 0, NULL);
	expect(&f, KP_RESPONSE, 7);
	for (i = 0; i < 100 && !done; i++)
		done = agent_step(T.a, 10);
	ck_assert_int_eq(done, 1);
}
END_TEST

/* ---- errors ------------------------------------------------------------------------- */

START_TEST(unknown_op_is_refused_and_the_connection_lives)
{
	struct kp_recw w;
	struct kp_frame f;

	req_begin(&w, 0x7f);
	req_send(8, &w);
	expect_error(8, KP_ERR_UNKNOWN_OP, 0);
	kp_recw_init(&w, T.out + KP_HDR_LEN, KP_MAX_CONTROL);
	kp_put_str(&w, KT_PATH, "/");
	req_send(9, &w);			/* no OP at all */
	expect_error(9, KP_ERR_BAD_ARGS, 0);
	req_path(10, KP_OP_STAT, KT_PATH, "/");
	expect(&f, KP_RESPONSE, 10);
	ck_assert_uint_eq(field_u64(&f, KT_TYPE), S_IFDIR);
}
END_TEST

START_TEST(a_live_id_cannot_be_reused)
{
	struct kp_recw w;
	struct kp_frame f;

	req_path(11, KP_OP_FILE_WRITE, KT_PATH, "/dev/null");	/* open until its EOF */
	expect(&f, KP_RESPONSE, 11);
	req_begin(&w, KP_OP_HEALTH);
	req_send(11, &w);
	expect_error(11, KP_ERR_ID_IN_USE, 0);
}
END_TEST

/* Frames the agent answers with ERROR PROTO on id 0, then closes the connection. */
static const uint8_t bad_frames[][KP_HDR_LEN] = {
	{ 8, 0, 0, 0, 0x55, 0, 0, 0, 0, 0, 0, 0 },		/* an unknown type */
	{ 3, 0, 0, 0, KP_PING, 0, 0, 0, 0, 0, 0, 0 },		/* a length below 8 */
	{ 8, 0, 0, 0, KP_RESPONSE, 0, 0, 0, 12, 0, 0, 0 },	/* what only the agent sends */
};

START_TEST(bad_frame_closes_the_connection)
{
	struct kp_frame f;

	fake_send(bad_frames[_i], KP_HDR_LEN);
	expect_error(0, KP_ERR_PROTO, 0);
	ck_assert_int_eq(fake_next(&f, 2000), 0);
	ck_assert_int_eq(T.closed, 1);
}
END_TEST

START_TEST(request_before_hello_is_a_protocol_error)
{
	struct kp_recw w;
	struct kp_frame f;
	int sv[2];

	/* A second connection that skips its HELLO. */
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	ck_assert_int_eq(agent_conn_add(T.a, sv[1], 0), 0);
	close(T.fd);
	T.fd = sv[0];
	fcntl(T.fd, F_SETFL, O_NONBLOCK);
	kp_dec_init(&T.dec, T.dbuf, sizeof(T.dbuf));
	T.inoff = T.inlen = 0;
	expect(&f, KP_HELLO, 0);
	req_begin(&w, KP_OP_HEALTH);
	req_send(13, &w);
	expect_error(0, KP_ERR_PROTO, 0);
}
END_TEST

/* ---- processes ---------------------------------------------------------------------- */

/* Run argv; collect stdout until the EXIT event. Returns the exit code. */
static int run(uint32_t id, const char *const *argv, char *out, size_t cap)
{
	struct kp_recw w;
	struct kp_frame f;
	size_t len = 0;
	int code = -1000;

	req_begin(&w, KP_OP_EXEC);
	for (; *argv; argv++)
		kp_put_str(&w, KT_ARG, *argv);
	req_send(id, &w);
	expect(&f, KP_RESPONSE, id);
	ck_assert_uint_gt(field_u64(&f, KT_HANDLE), 0);
	ck_assert_uint_gt(field_u64(&f, KT_PID), 0);
	while (fake_next(&f, 10000)) {
		ck_assert_uint_eq(f.id, id);
		if (f.type == KP_DATA && f.channel == KP_CHAN_OUT) {
			uint64_t off;
			const uint8_t *d;
			uint32_t n;

			ck_assert_int_eq(kp_parse_data(&f, &off, &d, &n), 0);
			ck_assert_uint_eq(off, len);
			ck_assert_uint_lt(len + n, cap);
			memcpy(out + len, d, n);
			len += n;
		} else if (f.type == KP_EVENT) {
			ck_assert_uint_eq(f.flags, KP_F_END);
			ck_assert_uint_eq(field_u64(&f, KT_EVENT), KP_EV_EXIT);
			code = (int)field_u64(&f, KT_CODE);
			break;
		} else {
			ck_assert_uint_eq(f.type, KP_EOF);
		}
	}
	out[len] = '\0';
	return code;
}

/* Host binaries, their stdout and exit status, one request id each. */
static const struct {
	const char *argv[4];
	const char *out;
	int code;
} runs[] = {
	{ { "/bin/true" }, "", 0 },
	{ { "/bin/echo", "hello", "agent" }, "hello agent\n", 0 },
	{ { "/bin/sh", "-c", "echo out; exit 3" }, "out\n", 3 },
};

START_TEST(exec_stdout_and_exit_status)
{
	char out[64];

	ck_assert_int_eq(run(20 + (uint32_t)_i, runs[_i].argv, out, sizeof(out)), runs[_i].code);
	ck_assert_str_eq(out, runs[_i].out);
}
END_TEST

START_TEST(exec_missing_program_is_enoent)
{
	req_path(23, KP_OP_EXEC, KT_ARG, "/nonexistent/kiln-agent-unit");
	expect_error(23, KP_ERR_OS, ENOENT);
}
END_TEST

START_TEST(exec_without_argv_is_bad_args)
{
	req_path(24, KP_OP_EXEC, KT_CWD, "/");
	expect_error(24, KP_ERR_BAD_ARGS, 0);
}
END_TEST

START_TEST(wait_and_release_unknown_handle)
{
	struct kp_recw w;

	req_begin(&w, KP_OP_WAIT);
	kp_put_u64(&w, KT_HANDLE, 999);
	req_send(25, &w);
	expect_error(25, KP_ERR_NO_SUCH, 0);
}
END_TEST

/* ---- files -------------------------------------------------------------------------- */

static char dir[64];

static void files_setup(void)
{
	strcpy(dir, "/tmp/kiln-agent-unit.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	fake_open(0);
}

static void files_teardown(void)
{
	char cmd[128];

	teardown();
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	ck_assert_int_eq(system(cmd), 0);
}

START_TEST(file_write_read_stat_round_trip)
{
	uint8_t b[KP_DATA_HDR_LEN + 16];
	const char text[] = "kiln agent\n";
	char path[128];
	struct kp_recw w;
	struct kp_frame f;
	uint64_t off;
	const uint8_t *d;
	uint32_t n;

	snprintf(path, sizeof(path), "%s/f.txt", dir);
	req_path(30, KP_OP_FILE_WRITE, KT_PATH, path);
	expect(&f, KP_RESPONSE, 30);
	ck_assert_uint_eq(f.flags, 0);
	ck_assert_int_eq(kp_enc_data_hdr(b, 30, KP_CHAN_IN, 0, sizeof(text) - 1), KP_DATA_HDR_LEN);
	memcpy(b + KP_DATA_HDR_LEN, text, sizeof(text) - 1);
	fake_send(b, KP_DATA_HDR_LEN + sizeof(text) - 1);
	fake_send(b, (size_t)kp_enc_eof(b, 30, KP_CHAN_IN, 0, sizeof(text) - 1));
	expect(&f, KP_WINDOW, 30);
	expect(&f, KP_RESPONSE, 30);
	ck_assert_uint_eq(f.flags, KP_F_END);
	ck_assert_uint_eq(field_u64(&f, KT_SIZE), sizeof(text) - 1);

	req_path(31, KP_OP_FILE_READ, KT_PATH, path);
	expect(&f, KP_RESPONSE, 31);
	ck_assert_uint_eq(field_u64(&f, KT_SIZE), sizeof(text) - 1);
	expect(&f, KP_DATA, 31);
	ck_assert_int_eq(kp_parse_data(&f, &off, &d, &n), 0);
	ck_assert_uint_eq(off, 0);
	ck_assert_uint_eq(n, sizeof(text) - 1);
	ck_assert_int_eq(memcmp(d, text, n), 0);
	expect(&f, KP_EOF, 31);
	ck_assert_uint_eq(f.flags, KP_F_END);

	req_begin(&w, KP_OP_STAT);
	kp_put_str(&w, KT_PATH, path);
	req_send(32, &w);
	expect(&f, KP_RESPONSE, 32);
	ck_assert_uint_eq(field_u64(&f, KT_TYPE), S_IFREG);
	ck_assert_uint_eq(field_u64(&f, KT_SIZE), sizeof(text) - 1);
}
END_TEST

START_TEST(file_read_missing_is_enoent)
{
	char path[128];

	snprintf(path, sizeof(path), "%s/absent", dir);
	req_path(33, KP_OP_FILE_READ, KT_PATH, path);
	expect_error(33, KP_ERR_OS, ENOENT);
	req_path(34, KP_OP_STAT, 0, NULL);
	expect_error(34, KP_ERR_BAD_ARGS, 0);
}
END_TEST

START_TEST(data_at_the_wrong_offset_is_refused)
{
	uint8_t b[KP_DATA_HDR_LEN + 4];
	char path[128];
	struct kp_frame f;

	snprintf(path, sizeof(path), "%s/gap", dir);
	req_path(35, KP_OP_FILE_WRITE, KT_PATH, path);
	expect(&f, KP_RESPONSE, 35);
	ck_assert_int_eq(kp_enc_data_hdr(b, 35, KP_CHAN_IN, 5, 4), KP_DATA_HDR_LEN);
	memcpy(b + KP_DATA_HDR_LEN, "abcd", 4);
	fake_send(b, sizeof(b));
	expect_error(35, KP_ERR_BAD_ARGS, 0);
}
END_TEST

START_TEST(file_handles_are_bounded_per_connection)
{
	char path[128];
	struct kp_recw w;
	struct kp_frame f;
	uint32_t i;

	snprintf(path, sizeof(path), "%s/h", dir);
	close(open(path, O_CREAT | O_WRONLY, 0644));
	for (i = 0; i <= KP_FH_MAX; i++) {
		req_begin(&w, KP_OP_FH_OPEN);
		kp_put_str(&w, KT_PATH, path);
		req_send(100 + i, &w);
		if (i < KP_FH_MAX) {
			expect(&f, KP_RESPONSE, 100 + i);
			ck_assert_uint_eq(field_u64(&f, KT_FH), i + 1);
		}
	}
	expect_error(100 + KP_FH_MAX, KP_ERR_LIMIT, 0);
	req_begin(&w, KP_OP_FH_CLOSE);
	kp_put_u64(&w, KT_FH, 1);
	req_send(99, &w);
	expect(&f, KP_RESPONSE, 99);
	req_begin(&w, KP_OP_FH_READ);
	kp_put_u64(&w, KT_FH, 1);
	kp_put_u64(&w, KT_LENGTH, 16);
	req_send(98, &w);
	expect_error(98, KP_ERR_NO_SUCH, 0);
}
END_TEST

/* ---- the refusals of a fuzzer's agent ----------------------------------------------- */

static void jail_setup(void)
{
	fake_open(AGENT_NO_EXEC | AGENT_NO_PORTS | AGENT_JAIL);
}

START_TEST(jail_refuses_exec_ports_and_outside_paths)
{
	struct kp_recw w;

	req_path(40, KP_OP_EXEC, KT_ARG, "/bin/true");
	expect_error(40, KP_ERR_OS, EPERM);
	req_begin(&w, KP_OP_PORT_LIST);
	req_send(41, &w);
	expect_error(41, KP_ERR_OS, EPERM);
	req_path(42, KP_OP_STAT, KT_PATH, "/etc");
	expect_error(42, KP_ERR_BAD_ARGS, 0);
	req_path(43, KP_OP_READDIR, KT_PATH, "a/../..");
	expect_error(43, KP_ERR_BAD_ARGS, 0);
	req_begin(&w, KP_OP_SYMLINK);
	kp_put_str(&w, KT_PATH, "/etc/passwd");
	kp_put_str(&w, KT_PATH2, "link");
	req_send(44, &w);
	expect_error(44, KP_ERR_BAD_ARGS, 0);
}
END_TEST

/* A test case of n tests sharing a fixture. */
static void add_case(Suite *s, const char *name, void (*up)(void), void (*down)(void),
		     const TTest *const *tests, size_t n)
{
	TCase *tc = tcase_create(name);
	size_t i;

	tcase_add_checked_fixture(tc, up, down);
	for (i = 0; i < n; i++)
		tcase_add_test(tc, tests[i]);
	suite_add_tcase(s, tc);
}

#define ADD_CASE(s, name, up, down, ...) \
	add_case(s, name, up, down, (const TTest *const[]){ __VA_ARGS__ }, \
		 sizeof((const TTest *const[]){ __VA_ARGS__ }) / sizeof(const TTest *))

static Suite *suite_agent(void)
{
	Suite *s = suite_create("agent");
	TCase *tc;

	ADD_CASE(s, "control", setup, teardown, health_answers_after_hello, ping_gets_pong,
		 identity_sets_id_and_env, identity_in_host_mode_refuses_hostname, shutdown_ends_the_loop);
	ADD_CASE(s, "errors", setup, teardown, unknown_op_is_refused_and_the_connection_lives,
		 a_live_id_cannot_be_reused, request_before_hello_is_a_protocol_error);
	tc = tcase_create("bad frames");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_loop_test(tc, bad_frame_closes_the_connection, 0, (int)(sizeof(bad_frames) / sizeof(bad_frames[0])));
	suite_add_tcase(s, tc);
	ADD_CASE(s, "processes", setup, teardown, exec_missing_program_is_enoent, exec_without_argv_is_bad_args,
		 wait_and_release_unknown_handle);
	tc = tcase_create("exec");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_loop_test(tc, exec_stdout_and_exit_status, 0, (int)(sizeof(runs) / sizeof(runs[0])));
	suite_add_tcase(s, tc);
	ADD_CASE(s, "files", files_setup, files_teardown, file_write_read_stat_round_trip,
		 file_read_missing_is_enoent, data_at_the_wrong_offset_is_refused,
		 file_handles_are_bounded_per_connection);
	ADD_CASE(s, "jail", jail_setup, teardown, jail_refuses_exec_ports_and_outside_paths);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(suite_agent());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
