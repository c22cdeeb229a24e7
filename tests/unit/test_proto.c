/* The agent protocol's frame codec and records (docs/agent-protocol.md). */
#include <stdlib.h>
#include <string.h>

#include "agent_proto.h"
#include "unit.h"

#define STREAM_CAP	(8u << 10)

struct sample {
	uint8_t stream[STREAM_CAP];
	size_t len;
	struct kp_frame want[16];
	uint8_t copies[16][1024];	/* payloads of want[], independent of stream */
	unsigned n;
};

static void add(struct sample *s, int size)
{
	const uint8_t *at = s->stream + s->len;
	struct kp_frame *f = &s->want[s->n];

	ck_assert_int_gt(size, KP_HDR_LEN - 1);
	f->len = (uint32_t)size - KP_HDR_LEN;
	f->type = at[4];
	f->flags = at[5];
	f->channel = (uint16_t)(at[6] | at[7] << 8);
	f->id = (uint32_t)at[8] | (uint32_t)at[9] << 8 | (uint32_t)at[10] << 16 |
		(uint32_t)at[11] << 24;
	ck_assert_uint_le(f->len, sizeof(s->copies[0]));
	memcpy(s->copies[s->n], at + KP_HDR_LEN, f->len);
	f->payload = s->copies[s->n];
	s->len += (size_t)size;
	s->n++;
}

/* One frame of every type, with records of every kind. */
static void build(struct sample *s)
{
	struct kp_recw w;
	uint8_t *b;
	uint32_t mark;
	static const uint8_t bin[] = { 0, 1, 0xff, '\n', 0x80 };

	memset(s, 0, sizeof(*s));
	add(s, kp_enc_hello(s->stream, STREAM_CAP, KP_DEFAULT_WINDOW, KP_MAX_PAYLOAD, "kiln-agent"));
	add(s, kp_enc_ping(s->stream + s->len, KP_PING, 0x0123456789abcdefULL));
	add(s, kp_enc_ping(s->stream + s->len, KP_PONG, 0x0123456789abcdefULL));

	b = s->stream + s->len;
	kp_recw_init(&w, b + KP_HDR_LEN, 512);
	kp_put_u64(&w, KT_OP, KP_OP_EXEC);
	kp_put_str(&w, KT_ARG, "sh");
	kp_put_str(&w, KT_ARG, "-c");
	kp_put_str(&w, KT_ARG, "echo hi; echo err >&2");
	kp_put_str(&w, KT_ENV, "A=1");
	kp_put_bool(&w, KT_PTY, 0);
	kp_put_u64(&w, KT_STDERR, KP_IO_PIPE);
	kp_put_i64(&w, KT_UID, -1);
	add(s, kp_enc_rec_frame(b, 600, KP_REQUEST, 0, 7, &w));

	b = s->stream + s->len;
	kp_recw_init(&w, b + KP_HDR_LEN, 512);
	kp_put_u64(&w, KT_HANDLE, 1);
	kp_put_u64(&w, KT_PID, 42);
	add(s, kp_enc_rec_frame(b, 600, KP_RESPONSE, 0, 7, &w));

	add(s, kp_enc_data_hdr(s->stream + s->len, 7, KP_CHAN_OUT, 0, sizeof(bin)) + (int)sizeof(bin));
	memcpy(s->stream + s->len - sizeof(bin), bin, sizeof(bin));
	memcpy(s->copies[s->n - 1] + 8, bin, sizeof(bin));
	add(s, kp_enc_window(s->stream + s->len, 7, KP_CHAN_IN, 65536));
	add(s, kp_enc_eof(s->stream + s->len, 7, KP_CHAN_OUT, 0, sizeof(bin)));
	add(s, kp_enc_cancel(s->stream + s->len, 7, KP_CHAN_ALL));

	b = s->stream + s->len;
	kp_recw_init(&w, b + KP_HDR_LEN, 512);
	kp_put_u64(&w, KT_EVENT, KP_EV_EXIT);
	kp_put_i64(&w, KT_CODE, 0);
	mark = kp_nest_begin(&w, KT_ENTRY);
	kp_put_bytes(&w, KT_DATA, bin, sizeof(bin));
	kp_nest_end(&w, mark);
	add(s, kp_enc_rec_frame(b, 600, KP_EVENT, KP_F_END, 7, &w));

	add(s, kp_enc_error(s->stream + s->len, 600, 9, KP_ERR_OS, 2, "no such file"));
	add(s, kp_enc_data_hdr(s->stream + s->len, 3, KP_CHAN_IN, 1ULL << 40, 0));
	ck_assert_uint_le(s->len, STREAM_CAP);
}

static void same(const struct kp_frame *got, const struct kp_frame *want)
{
	ck_assert_uint_eq(got->type, want->type);
	ck_assert_uint_eq(got->flags, want->flags);
	ck_assert_uint_eq(got->channel, want->channel);
	ck_assert_uint_eq(got->id, want->id);
	ck_assert_uint_eq(got->len, want->len);
	ck_assert_int_eq(memcmp(got->payload, want->payload, want->len), 0);
}

/* Decode s's stream in pieces cut at the given points; check every frame. */
static void decode_cut(const struct sample *s, const size_t *cuts, unsigned ncuts)
{
	static uint8_t buf[4096];
	struct kp_decoder d;
	struct kp_frame f;
	unsigned got = 0, c;
	size_t from = 0, to, used;
	int ret;

	kp_dec_init(&d, buf, sizeof(buf));
	for (c = 0; c <= ncuts; c++) {
		to = c < ncuts ? cuts[c] : s->len;
		while (from < to) {
			ret = kp_dec_feed(&d, s->stream + from, to - from, &used, &f);
			ck_assert_int_ge(ret, 0);
			ck_assert_uint_le(used, to - from);
			from += used;
			if (ret == 1) {
				ck_assert_uint_lt(got, s->n);
				same(&f, &s->want[got++]);
			} else {
				ck_assert_uint_eq(from, to);
			}
		}
	}
	ck_assert_uint_eq(got, s->n);
	ck_assert_int_eq(kp_dec_finish(&d), 0);
}

START_TEST(round_trip_every_type)
{
	static struct sample s;
	struct kp_field fl;
	uint64_t v;
	uint32_t inc, n;
	const uint8_t *data;
	unsigned i;
	uint8_t again[1100];

	build(&s);
	decode_cut(&s, NULL, 0);
	ck_assert_int_eq(kp_parse_u64(&s.want[1], &v), 0);
	ck_assert(v == 0x0123456789abcdefULL);
	ck_assert_int_eq(kp_parse_data(&s.want[5], &v, &data, &n), 0);
	ck_assert_uint_eq(n, 5);
	ck_assert_uint_eq(data[2], 0xff);
	ck_assert_int_eq(kp_parse_window(&s.want[6], &inc), 0);
	ck_assert_uint_eq(inc, 65536);
	ck_assert_int_eq(kp_parse_u64(&s.want[7], &v), 0);
	ck_assert(v == 5);
	ck_assert_uint_eq(s.want[8].channel, KP_CHAN_ALL);
	ck_assert_int_eq(kp_parse_data(&s.want[11], &v, &data, &n), 0);
	ck_assert(v == 1ULL << 40 && n == 0);
	ck_assert_int_eq(kp_rec_find(s.want[10].payload, s.want[10].len, KT_ERRNO, &fl), 1);
	ck_assert_int_eq(kp_field_u64(&fl, &v), 0);
	ck_assert(v == 2);
	ck_assert_int_eq(kp_rec_find(s.want[0].payload, s.want[0].len, KT_MAX_FRAME, &fl), 1);
	ck_assert_int_eq(kp_field_u64(&fl, &v), 0);
	ck_assert(v == KP_MAX_PAYLOAD);
	/* Re-encoding a decoded frame gives the same bytes. */
	for (i = 0, n = 0; i < s.n; i++) {
		int len = kp_enc_frame(again, sizeof(again), &s.want[i]);

		ck_assert_int_eq(len, KP_HDR_LEN + (int)s.want[i].len);
		ck_assert_int_eq(memcmp(again, s.stream + n, (size_t)len), 0);
		n += (uint32_t)len;
	}
}
END_TEST

START_TEST(split_at_every_boundary)
{
	static struct sample s;
	size_t cuts[2], i, j;

	build(&s);
	for (i = 1; i < s.len; i++) {
		cuts[0] = i;
		decode_cut(&s, cuts, 1);
	}
	/* Two cuts close together: header and payload pieces of every size. */
	for (i = 1; i < s.len; i += 3)
		for (j = i + 1; j < s.len && j < i + 40; j++) {
			cuts[0] = i;
			cuts[1] = j;
			decode_cut(&s, cuts, 2);
		}
}
END_TEST

START_TEST(byte_at_a_time)
{
	static struct sample s;
	static size_t cuts[STREAM_CAP];
	size_t i;

	build(&s);
	for (i = 0; i + 1 < s.len; i++)
		cuts[i] = i + 1;
	decode_cut(&s, cuts, (unsigned)(s.len - 1));
}
END_TEST

/* Feed raw bytes in one go; return the decoder's result. */
static int feed_all(const uint8_t *p, size_t n, uint32_t cap, size_t *consumed)
{
	static uint8_t buf[KP_MAX_PAYLOAD];
	struct kp_decoder d;
	struct kp_frame f;
	size_t used, off = 0;
	int ret = 0;

	kp_dec_init(&d, buf, cap);
	while (off < n) {
		ret = kp_dec_feed(&d, p + off, n - off, &used, &f);
		off += used;
		if (ret < 0)
			break;
	}
	if (consumed)
		*consumed = off;
	if (ret >= 0)
		ret = kp_dec_finish(&d);
	return ret;
}

static void hdr(uint8_t *b, uint32_t length, uint8_t type, uint8_t flags, uint16_t ch, uint32_t id)
{
	b[0] = (uint8_t)length;
	b[1] = (uint8_t)(length >> 8);
	b[2] = (uint8_t)(length >> 16);
	b[3] = (uint8_t)(length >> 24);
	b[4] = type;
	b[5] = flags;
	b[6] = (uint8_t)ch;
	b[7] = (uint8_t)(ch >> 8);
	b[8] = (uint8_t)id;
	b[9] = b[10] = b[11] = 0;
}

START_TEST(hostile_headers)
{
	uint8_t b[64] = { 0 };
	size_t used;

	hdr(b, 7, KP_REQUEST, 0, 0, 1);
	ck_assert_int_eq(feed_all(b, 12, 4096, NULL), -KP_EBADLEN);
	hdr(b, 0, KP_REQUEST, 0, 0, 1);
	ck_assert_int_eq(feed_all(b, 12, 4096, NULL), -KP_EBADLEN);
	hdr(b, 8, 0x7f, 0, 0, 1);
	ck_assert_int_eq(feed_all(b, 12, 4096, NULL), -KP_ETYPE);
	hdr(b, 8, 0, 0, 0, 1);
	ck_assert_int_eq(feed_all(b, 12, 4096, NULL), -KP_ETYPE);
	/* A huge length is refused from the header alone, before any payload. */
	hdr(b, 0xffffffffu, KP_DATA, 0, 1, 1);
	ck_assert_int_eq(feed_all(b, 12, 4096, &used), -KP_EOVERSIZE);
	ck_assert_uint_eq(used, 12);
	hdr(b, 8 + 4097, KP_DATA, 0, 1, 1);
	ck_assert_int_eq(feed_all(b, 12, 4096, NULL), -KP_EOVERSIZE);
	hdr(b, 8 + KP_MAX_CONTROL + 1, KP_REQUEST, 0, 0, 1);
	ck_assert_int_eq(feed_all(b, 12, KP_MAX_PAYLOAD, NULL), -KP_EOVERSIZE);
	hdr(b, 8 + 9, KP_PING, 0, 0, 0);
	ck_assert_int_eq(feed_all(b, 12 + 9, 4096, NULL), -KP_EBADLEN);
	hdr(b, 8 + 3, KP_WINDOW, 0, 1, 1);
	ck_assert_int_eq(feed_all(b, 12 + 3, 4096, NULL), -KP_EBADLEN);
	hdr(b, 8 + 7, KP_DATA, 0, 1, 1);
	ck_assert_int_eq(feed_all(b, 12 + 7, 4096, NULL), -KP_EBADLEN);
	hdr(b, 8 + 1, KP_CANCEL, 0, 1, 1);
	ck_assert_int_eq(feed_all(b, 12 + 1, 4096, NULL), -KP_EBADLEN);
	hdr(b, 8, KP_REQUEST, 0x80, 0, 1);
	ck_assert_int_eq(feed_all(b, 12, 4096, NULL), -KP_EFLAGS);
	hdr(b, 8, KP_REQUEST, KP_F_END, 0, 1);
	ck_assert_int_eq(feed_all(b, 12, 4096, NULL), -KP_EFLAGS);
	hdr(b, 8, KP_REQUEST, 0, 1, 1);
	ck_assert_int_eq(feed_all(b, 12, 4096, NULL), -KP_ECHANNEL);
	hdr(b, 16, KP_DATA, 0, 3, 1);
	ck_assert_int_eq(feed_all(b, 20, 4096, NULL), -KP_ECHANNEL);
	hdr(b, 8, KP_CANCEL, 0, 0xfffe, 1);
	ck_assert_int_eq(feed_all(b, 12, 4096, NULL), -KP_ECHANNEL);
	hdr(b, 8, KP_CANCEL, 0, KP_CHAN_ALL, 1);
	ck_assert_int_eq(feed_all(b, 12, 4096, NULL), 0);
	hdr(b, 8, KP_REQUEST, 0, 0, 0);
	ck_assert_int_eq(feed_all(b, 12, 4096, NULL), -KP_EID);
	hdr(b, 8, KP_HELLO, 0, 0, 5);
	ck_assert_int_eq(feed_all(b, 12, 4096, NULL), -KP_EID);
	hdr(b, 8, KP_ERROR, 0, 0, 0);
	ck_assert_int_eq(feed_all(b, 12, 4096, NULL), 0);
}
END_TEST

START_TEST(truncated_and_sticky)
{
	static struct sample s;
	uint8_t buf[4096];
	struct kp_decoder d;
	struct kp_frame f;
	size_t used, i;
	uint8_t bad[12];

	build(&s);
	/* Every proper prefix of a frame's bytes is a truncated stream. */
	for (i = 1; i < s.want[0].len + KP_HDR_LEN; i++)
		ck_assert_int_eq(feed_all(s.stream, i, 4096, NULL), -KP_ETRUNCATED);
	/* An error is sticky: a good frame afterwards is not decoded. */
	kp_dec_init(&d, buf, sizeof(buf));
	hdr(bad, 8, 0x7f, 0, 0, 1);
	ck_assert_int_eq(kp_dec_feed(&d, bad, sizeof(bad), &used, &f), -KP_ETYPE);
	ck_assert_int_eq(kp_dec_feed(&d, s.stream, s.len, &used, &f), -KP_ETYPE);
	ck_assert_uint_eq(used, 0);
	ck_assert_int_eq(kp_dec_finish(&d), -KP_ETYPE);
}
END_TEST

START_TEST(hostile_records)
{
	uint8_t b[64];
	uint8_t *p = b + KP_HDR_LEN;
	int i;

	/* A field header cut short. */
	hdr(b, 8 + 3, KP_REQUEST, 0, 0, 1);
	p[0] = KT_OP; p[1] = KP_K_U64; p[2] = 8;
	ck_assert_int_eq(feed_all(b, 12 + 3, 4096, NULL), -KP_EREC);
	/* A value running past the record. */
	hdr(b, 8 + 6 + 4, KP_REQUEST, 0, 0, 1);
	memset(p, 0, 10);
	p[0] = KT_PATH; p[1] = KP_K_STR; p[2] = 5;
	ck_assert_int_eq(feed_all(b, 12 + 10, 4096, NULL), -KP_EREC);
	p[2] = 0xff; p[5] = 0xff;
	ck_assert_int_eq(feed_all(b, 12 + 10, 4096, NULL), -KP_EREC);
	/* A NUL inside a string, a bool of 2, a u64 of 4 bytes, an unknown kind, tag 0. */
	hdr(b, 8 + 6 + 3, KP_REQUEST, 0, 0, 1);
	p[0] = KT_PATH; p[1] = KP_K_STR; p[2] = 3; p[3] = p[4] = p[5] = 0;
	p[6] = 'a'; p[7] = 0; p[8] = 'b';
	ck_assert_int_eq(feed_all(b, 12 + 9, 4096, NULL), -KP_EREC);
	hdr(b, 8 + 7, KP_REQUEST, 0, 0, 1);
	p[0] = KT_PTY; p[1] = KP_K_BOOL; p[2] = 1; p[6] = 2;
	ck_assert_int_eq(feed_all(b, 12 + 7, 4096, NULL), -KP_EREC);
	hdr(b, 8 + 10, KP_REQUEST, 0, 0, 1);
	p[0] = KT_OP; p[1] = KP_K_U64; p[2] = 4;
	ck_assert_int_eq(feed_all(b, 12 + 10, 4096, NULL), -KP_EREC);
	hdr(b, 8 + 6, KP_REQUEST, 0, 0, 1);
	p[0] = KT_OP; p[1] = 99; p[2] = 0;
	ck_assert_int_eq(feed_all(b, 12 + 6, 4096, NULL), -KP_EREC);
	p[0] = 0; p[1] = KP_K_BYTES;
	ck_assert_int_eq(feed_all(b, 12 + 6, 4096, NULL), -KP_EREC);
	/* Nesting deeper than KP_REC_DEPTH. */
	for (i = 0; i < KP_REC_DEPTH; i++) {
		uint8_t *q = p + 6 * i;

		q[0] = KT_ENTRY; q[1] = KP_K_REC;
		q[2] = (uint8_t)(6 * (KP_REC_DEPTH - 1 - i)); q[3] = q[4] = q[5] = 0;
	}
	hdr(b, 8 + 6 * KP_REC_DEPTH, KP_RESPONSE, 0, 0, 1);
	ck_assert_int_eq(feed_all(b, 12 + 6 * KP_REC_DEPTH, 4096, NULL), -KP_EREC);
	/* One level less is fine. */
	p[2] = (uint8_t)(p[2] - 6);
	hdr(b, 8 + 6 * (KP_REC_DEPTH - 1), KP_RESPONSE, 0, 0, 1);
	for (i = 1; i < KP_REC_DEPTH - 1; i++)
		p[6 * i + 2] = (uint8_t)(p[6 * i + 2] - 6);
	ck_assert_int_eq(feed_all(b, 12 + 6 * (KP_REC_DEPTH - 1), 4096, NULL), 0);
}
END_TEST

START_TEST(largest_frames)
{
	static uint8_t big[KP_HDR_LEN + KP_MAX_PAYLOAD];
	struct kp_frame f = { KP_DATA, 0, KP_CHAN_OUT, 1, big + KP_HDR_LEN, KP_MAX_PAYLOAD };

	ck_assert_int_eq(kp_enc_frame(big, sizeof(big), &f), (int)sizeof(big));
	ck_assert_int_eq(feed_all(big, sizeof(big), KP_MAX_PAYLOAD, NULL), 0);
	ck_assert_int_eq(feed_all(big, sizeof(big), KP_MAX_PAYLOAD - 1, NULL), -KP_EOVERSIZE);
	f.len++;
	ck_assert_int_eq(kp_enc_frame(big, sizeof(big) + 1, &f), -KP_EOVERSIZE);
	ck_assert_int_eq(kp_enc_data_hdr(big, 1, KP_CHAN_OUT, 0, KP_MAX_DATA), KP_DATA_HDR_LEN);
	ck_assert_int_eq(kp_enc_data_hdr(big, 1, KP_CHAN_OUT, 0, KP_MAX_DATA + 1), -KP_EOVERSIZE);
}
END_TEST

START_TEST(encoders_refuse_bad_frames)
{
	uint8_t b[256];
	struct kp_frame f = { KP_REQUEST, KP_F_END, 0, 1, NULL, 0 };
	struct kp_recw w;

	ck_assert_int_eq(kp_enc_frame(b, sizeof(b), &f), -KP_EFLAGS);
	f.flags = 0;
	f.id = 0;
	ck_assert_int_eq(kp_enc_frame(b, sizeof(b), &f), -KP_EID);
	f.id = 1;
	ck_assert_int_eq(kp_enc_frame(b, 11, &f), -KP_ENOSPC);
	ck_assert_int_eq(kp_enc_frame(b, 12, &f), 12);
	f.type = 0x40;
	ck_assert_int_eq(kp_enc_frame(b, sizeof(b), &f), -KP_ETYPE);
	ck_assert_int_eq(kp_enc_ping(b, KP_DATA, 1), -KP_ETYPE);
	ck_assert_int_eq(kp_enc_window(b, 0, KP_CHAN_IN, 1), -KP_EID);
	ck_assert_int_eq(kp_enc_eof(b, 1, KP_CHAN_ALL, 0, 0), -KP_ECHANNEL);
	ck_assert_int_eq(kp_enc_eof(b, 1, KP_CHAN_ERR, KP_F_END, 0), KP_HDR_LEN + 8);
	ck_assert_int_eq(kp_enc_data_hdr(b, 1, 5, 0, 1), -KP_ECHANNEL);
	ck_assert_int_eq(kp_enc_error(b, 20, 1, KP_ERR_OS, 0, "too long for twenty bytes"), -KP_ENOSPC);
	/* Record frames must be written in place, after the header. */
	kp_recw_init(&w, b + 20, 100);
	ck_assert_int_eq(kp_enc_rec_frame(b, sizeof(b), KP_REQUEST, 0, 1, &w), -KP_ENOSPC);
	kp_recw_init(&w, b + KP_HDR_LEN, 100);
	ck_assert_int_eq(kp_enc_rec_frame(b, sizeof(b), KP_DATA, 0, 1, &w), -KP_ETYPE);
	ck_assert_int_eq(kp_enc_rec_frame(b, sizeof(b), KP_HELLO, 0, 0, &w), KP_HDR_LEN);
}
END_TEST

START_TEST(records_round_trip)
{
	uint8_t b[256], sub_bytes[3] = { 0, 0xfe, 0 };
	struct kp_recw w;
	struct kp_rec r, sub;
	struct kp_field f;
	uint64_t u;
	int64_t i;
	int v, len;
	uint32_t mark;
	char s[8];

	kp_recw_init(&w, b, sizeof(b));
	kp_put_u64(&w, KT_OP, UINT64_MAX);
	kp_put_i64(&w, KT_CODE, INT64_MIN);
	kp_put_bool(&w, KT_PTY, 7);
	kp_put_str(&w, KT_PATH, "/tmp/x");
	kp_put_strn(&w, KT_ARG, "", 0);
	mark = kp_nest_begin(&w, KT_ENTRY);
	kp_put_bytes(&w, KT_DATA, sub_bytes, sizeof(sub_bytes));
	kp_put_str(&w, KT_NAME, "n");
	kp_nest_end(&w, mark);
	len = kp_recw_done(&w);
	ck_assert_int_gt(len, 0);
	ck_assert_int_eq(kp_rec_validate(b, (uint32_t)len), 0);

	kp_rec_open(&r, b, (uint32_t)len);
	ck_assert_int_eq(kp_rec_next(&r, &f), 1);
	ck_assert_int_eq(kp_field_u64(&f, &u), 0);
	ck_assert(u == UINT64_MAX);
	ck_assert_int_eq(kp_field_i64(&f, &i), -KP_EKIND);
	ck_assert_int_eq(kp_rec_next(&r, &f), 1);
	ck_assert_int_eq(kp_field_i64(&f, &i), 0);
	ck_assert(i == INT64_MIN);
	ck_assert_int_eq(kp_rec_next(&r, &f), 1);
	ck_assert_int_eq(kp_field_bool(&f, &v), 0);
	ck_assert_int_eq(v, 1);
	ck_assert_int_eq(kp_rec_next(&r, &f), 1);
	ck_assert_int_eq(kp_field_str(&f, s, 6), -KP_ENOSPC);
	ck_assert_int_eq(kp_field_str(&f, s, 7), 0);
	ck_assert_str_eq(s, "/tmp/x");
	ck_assert_int_eq(kp_field_u64(&f, &u), -KP_EKIND);
	ck_assert_int_eq(kp_rec_next(&r, &f), 1);
	ck_assert_int_eq(kp_field_str(&f, s, 1), 0);
	ck_assert_str_eq(s, "");
	ck_assert_int_eq(kp_rec_next(&r, &f), 1);
	ck_assert_uint_eq(f.tag, KT_ENTRY);
	ck_assert_int_eq(kp_field_rec(&f, &sub), 0);
	ck_assert_int_eq(kp_rec_next(&sub, &f), 1);
	ck_assert_uint_eq(f.kind, KP_K_BYTES);
	ck_assert_uint_eq(f.len, 3);
	ck_assert_int_eq(memcmp(f.val, sub_bytes, 3), 0);
	ck_assert_int_eq(kp_rec_next(&sub, &f), 1);
	ck_assert_int_eq(kp_rec_next(&sub, &f), 0);
	ck_assert_int_eq(kp_rec_next(&r, &f), 0);
	ck_assert_int_eq(kp_rec_find(b, (uint32_t)len, KT_PATH, &f), 1);
	ck_assert_int_eq(kp_rec_find(b, (uint32_t)len, KT_NAME, &f), 0);

	/* Writer errors are sticky and reported once at the end. */
	kp_recw_init(&w, b, 10);
	kp_put_u64(&w, KT_OP, 1);
	kp_put_u64(&w, KT_OP, 2);
	ck_assert_int_eq(kp_recw_done(&w), -KP_ENOSPC);
	kp_recw_init(&w, b, sizeof(b));
	kp_put_strn(&w, KT_ARG, "a\0b", 3);
	kp_put_u64(&w, KT_OP, 2);
	ck_assert_int_eq(kp_recw_done(&w), -KP_EREC);
	kp_recw_init(&w, b, sizeof(b));
	kp_put_u64(&w, 0, 2);
	ck_assert_int_eq(kp_recw_done(&w), -KP_EREC);
	ck_assert_str_eq(kp_strerror(-KP_EOVERSIZE), "frame too large");
	ck_assert_str_eq(kp_strerror(-1000), "unknown error");
	ck_assert_str_eq(kp_type_name(KP_WINDOW), "WINDOW");
	ck_assert_ptr_null(kp_type_name(0x7f));
}
END_TEST

/* ---- the agent's argument checks for COPY/WALK/FH_* (kp_args_*) ---------------- */

/* A request record with the given BOOL flags (tags, 0-terminated) and a PATH. */
static uint32_t open_req(uint8_t *b, uint32_t cap, const uint8_t *tags)
{
	struct kp_recw w;

	kp_recw_init(&w, b, cap);
	kp_put_u64(&w, KT_OP, KP_OP_FH_OPEN);
	kp_put_str(&w, KT_PATH, "/tmp/f");
	for (; *tags; tags++)
		kp_put_bool(&w, *tags, 1);
	ck_assert_int_gt(kp_recw_done(&w), 0);
	return w.len;
}

START_TEST(args_fh_open)
{
	static const struct {
		uint8_t tags[4];
		int ok;
		unsigned flags;
	} cases[] = {
		{ { 0 }, 1, KP_OPEN_READ },				/* Deno's open() default */
		{ { KT_READ }, 1, KP_OPEN_READ },
		{ { KT_WRITE }, 1, KP_OPEN_WRITE },
		{ { KT_READ, KT_WRITE }, 1, KP_OPEN_READ | KP_OPEN_WRITE },
		{ { KT_WRITE, KT_CREATE, KT_TRUNCATE }, 1, KP_OPEN_WRITE | KP_OPEN_CREATE | KP_OPEN_TRUNCATE },
		{ { KT_APPEND, KT_CREATE }, 1, KP_OPEN_APPEND | KP_OPEN_CREATE },
		{ { KT_APPEND, KT_TRUNCATE, KT_CREATE_NEW }, 1,
		  KP_OPEN_APPEND | KP_OPEN_TRUNCATE | KP_OPEN_CREATE_NEW },
		{ { KT_CREATE }, 0, 0 },				/* create without write */
		{ { KT_READ, KT_TRUNCATE }, 0, 0 },
		{ { KT_CREATE_NEW }, 0, 0 },
		{ { KT_APPEND, KT_TRUNCATE }, 0, 0 },
	};
	struct kp_open_args a;
	struct kp_recw w;
	uint8_t b[256];
	const char *why = NULL;
	uint32_t len;
	unsigned i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		len = open_req(b, sizeof(b), cases[i].tags);
		why = NULL;
		ck_assert_int_eq(kp_args_fh_open(b, len, &a, &why), cases[i].ok ? 0 : -1);
		if (cases[i].ok) {
			ck_assert_uint_eq(a.flags, cases[i].flags);
			ck_assert_uint_eq(a.mode, 0666);
			ck_assert_uint_eq(a.path.len, 6);
			ck_assert_int_eq(memcmp(a.path.val, "/tmp/f", 6), 0);
		} else {
			ck_assert_ptr_nonnull(why);
		}
	}
	/* No PATH, a PATH of the wrong kind, a flag of the wrong kind, a mode too large. */
	kp_recw_init(&w, b, sizeof(b));
	kp_put_bool(&w, KT_READ, 1);
	ck_assert_int_eq(kp_args_fh_open(b, w.len, &a, &why), -1);
	kp_recw_init(&w, b, sizeof(b));
	kp_put_bytes(&w, KT_PATH, "/x", 2);
	ck_assert_int_eq(kp_args_fh_open(b, w.len, &a, &why), -1);
	kp_recw_init(&w, b, sizeof(b));
	kp_put_str(&w, KT_PATH, "/x");
	kp_put_u64(&w, KT_WRITE, 1);
	ck_assert_int_eq(kp_args_fh_open(b, w.len, &a, &why), -1);
	ck_assert_ptr_nonnull(strstr(why, "BOOL"));
	kp_recw_init(&w, b, sizeof(b));
	kp_put_str(&w, KT_PATH, "/x");
	kp_put_u64(&w, KT_MODE, 010000);
	ck_assert_int_eq(kp_args_fh_open(b, w.len, &a, &why), -1);
	kp_recw_init(&w, b, sizeof(b));
	kp_put_str(&w, KT_PATH, "/x/../y");
	kp_put_u64(&w, KT_MODE, 0600);
	ck_assert_int_eq(kp_args_fh_open(b, w.len, &a, &why), 0);
	ck_assert_uint_eq(a.mode, 0600);
	/* A truncated record is refused, not read past its end. */
	ck_assert_int_eq(kp_args_fh_open(b, w.len - 1, &a, &why), -1);
}
END_TEST

START_TEST(args_fh)
{
	static uint8_t big[KP_FH_IO_MAX + 1];
	static uint8_t b[KP_MAX_CONTROL];
	struct kp_fh_args a;
	struct kp_recw w;
	const char *why;
	uint64_t op;

	/* Every FH op wants a non-zero U64 FH. */
	for (op = KP_OP_FH_READ; op <= KP_OP_FH_CLOSE; op++) {
		kp_recw_init(&w, b, sizeof(b));
		ck_assert_int_eq(kp_args_fh(b, w.len, op, &a, &why), -1);
		kp_put_u64(&w, KT_FH, 0);
		ck_assert_int_eq(kp_args_fh(b, w.len, op, &a, &why), -1);
		kp_recw_init(&w, b, sizeof(b));
		kp_put_i64(&w, KT_FH, 3);
		ck_assert_int_eq(kp_args_fh(b, w.len, op, &a, &why), -1);
	}
	kp_recw_init(&w, b, sizeof(b));
	kp_put_u64(&w, KT_FH, 7);
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_OPEN, &a, &why), -1);	/* not this function's */
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_CLOSE, &a, &why), 0);
	ck_assert_uint_eq(a.fh, 7);
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_STAT, &a, &why), 0);
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_TRUNCATE, &a, &why), 0);
	ck_assert_uint_eq(a.length, 0);
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_LOCK, &a, &why), 0);
	ck_assert_int_eq(a.exclusive, 0);
	/* FH_READ: LENGTH required, at most KP_FH_IO_MAX. */
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_READ, &a, &why), -1);
	kp_put_u64(&w, KT_LENGTH, KP_FH_IO_MAX + 1);
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_READ, &a, &why), -1);
	kp_recw_init(&w, b, sizeof(b));
	kp_put_u64(&w, KT_FH, 7);
	kp_put_u64(&w, KT_LENGTH, KP_FH_IO_MAX);
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_READ, &a, &why), 0);
	ck_assert_uint_eq(a.length, KP_FH_IO_MAX);
	/* FH_WRITE: DATA BYTES required, at most KP_FH_IO_MAX. */
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_WRITE, &a, &why), -1);
	kp_put_str(&w, KT_DATA, "abc");
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_WRITE, &a, &why), -1);
	kp_recw_init(&w, b, sizeof(b));
	kp_put_u64(&w, KT_FH, 7);
	kp_put_bytes(&w, KT_DATA, big, sizeof(big));
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_WRITE, &a, &why), -1);
	kp_recw_init(&w, b, sizeof(b));
	kp_put_u64(&w, KT_FH, 7);
	kp_put_bytes(&w, KT_DATA, big, KP_FH_IO_MAX);
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_WRITE, &a, &why), 0);
	ck_assert_uint_eq(a.data_len, KP_FH_IO_MAX);
	/* FH_SEEK: OFFSET I64 (or a U64 below 2^63), WHENCE 0-2. */
	kp_recw_init(&w, b, sizeof(b));
	kp_put_u64(&w, KT_FH, 7);
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_SEEK, &a, &why), -1);
	kp_put_i64(&w, KT_OFFSET, -5);
	kp_put_u64(&w, KT_WHENCE, 2);
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_SEEK, &a, &why), 0);
	ck_assert_int_eq(a.offset, -5);
	ck_assert_int_eq(a.whence, 2);
	kp_put_u64(&w, KT_WHENCE, 3);		/* a repeated tag: the first one counts */
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_SEEK, &a, &why), 0);
	kp_recw_init(&w, b, sizeof(b));
	kp_put_u64(&w, KT_FH, 7);
	kp_put_u64(&w, KT_OFFSET, 1ull << 63);
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_SEEK, &a, &why), -1);
	kp_recw_init(&w, b, sizeof(b));
	kp_put_u64(&w, KT_FH, 7);
	kp_put_u64(&w, KT_OFFSET, 10);
	kp_put_u64(&w, KT_WHENCE, 3);
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_SEEK, &a, &why), -1);
	/* FH_UTIME: both times, I64. */
	kp_recw_init(&w, b, sizeof(b));
	kp_put_u64(&w, KT_FH, 7);
	kp_put_i64(&w, KT_ATIME, -1);
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_UTIME, &a, &why), -1);
	kp_put_i64(&w, KT_MTIME, 123);
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_UTIME, &a, &why), 0);
	ck_assert_int_eq(a.atime, -1);
	ck_assert_int_eq(a.mtime, 123);
	/* FH_SYNC, FH_LOCK, FH_TRUNCATE options. */
	kp_recw_init(&w, b, sizeof(b));
	kp_put_u64(&w, KT_FH, 7);
	kp_put_bool(&w, KT_DATA_ONLY, 1);
	kp_put_bool(&w, KT_EXCLUSIVE, 1);
	kp_put_u64(&w, KT_LENGTH, 99);
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_SYNC, &a, &why), 0);
	ck_assert_int_eq(a.data_only, 1);
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_LOCK, &a, &why), 0);
	ck_assert_int_eq(a.exclusive, 1);
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_TRUNCATE, &a, &why), 0);
	ck_assert_uint_eq(a.length, 99);
	kp_recw_init(&w, b, sizeof(b));
	kp_put_u64(&w, KT_FH, 7);
	kp_put_u64(&w, KT_EXCLUSIVE, 1);
	kp_put_u64(&w, KT_LENGTH, 1ull << 63);
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_LOCK, &a, &why), -1);
	ck_assert_int_eq(kp_args_fh(b, w.len, KP_OP_FH_TRUNCATE, &a, &why), -1);
}
END_TEST

START_TEST(args_walk)
{
	struct kp_walk_args a;
	struct kp_recw w;
	uint8_t b[256];
	const char *why;

	kp_recw_init(&w, b, sizeof(b));
	ck_assert_int_eq(kp_args_walk(b, w.len, &a, &why), -1);
	kp_put_str(&w, KT_PATH, "/tmp/../etc");
	ck_assert_int_eq(kp_args_walk(b, w.len, &a, &why), 0);
	ck_assert(a.max_depth == KP_WALK_UNLIMITED);
	ck_assert_int_eq(a.nofollow, 0);
	ck_assert_uint_eq(a.path.len, 11);
	kp_put_u64(&w, KT_MAX_DEPTH, 0);
	kp_put_bool(&w, KT_NOFOLLOW, 1);
	ck_assert_int_eq(kp_args_walk(b, w.len, &a, &why), 0);
	ck_assert(a.max_depth == 0);
	ck_assert_int_eq(a.nofollow, 1);
	kp_recw_init(&w, b, sizeof(b));
	kp_put_str(&w, KT_PATH, "/");
	kp_put_i64(&w, KT_MAX_DEPTH, 2);
	ck_assert_int_eq(kp_args_walk(b, w.len, &a, &why), -1);
	kp_recw_init(&w, b, sizeof(b));
	kp_put_str(&w, KT_PATH, "/");
	kp_put_str(&w, KT_NOFOLLOW, "yes");
	ck_assert_int_eq(kp_args_walk(b, w.len, &a, &why), -1);
	ck_assert_ptr_nonnull(strstr(why, "NOFOLLOW"));
}
END_TEST

Suite *suite_proto(void)
{
	Suite *s = suite_create("proto");
	TCase *tc = tcase_create("frames");
	TCase *tr = tcase_create("records");
	TCase *ta = tcase_create("file op arguments");

	tcase_add_test(tc, round_trip_every_type);
	tcase_add_test(tc, split_at_every_boundary);
	tcase_add_test(tc, byte_at_a_time);
	tcase_add_test(tc, hostile_headers);
	tcase_add_test(tc, truncated_and_sticky);
	tcase_add_test(tc, largest_frames);
	tcase_add_test(tc, encoders_refuse_bad_frames);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tr, hostile_records);
	tcase_add_test(tr, records_round_trip);
	suite_add_tcase(s, tc);
	suite_add_tcase(s, tr);
	tcase_add_test(ta, args_fh_open);
	tcase_add_test(ta, args_fh);
	tcase_add_test(ta, args_walk);
	suite_add_tcase(s, ta);
	return s;
}
