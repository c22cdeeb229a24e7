/*
 * libFuzzer target: the agent protocol's frame decoder and records
 * (lib/agent_proto.c). Arbitrary bytes are decoded twice, once whole and
 * once in chunks whose sizes come from the input; both must see the same
 * frames and the same error. Every decoded frame is re-encoded, and the
 * encoding must decode alone to the identical frame; record payloads are
 * walked to the bottom. The decoder must never read or write out of bounds
 * (ASan, UBSan) nor accept what the encoder refuses.
 *
 * Input: [0] payload limit selector, [1] chunk-size seed, then the stream.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent_proto.h"

static uint8_t buf_a[KP_MAX_PAYLOAD], buf_b[KP_MAX_PAYLOAD], buf_c[KP_MAX_PAYLOAD];
static uint8_t again[KP_HDR_LEN + KP_MAX_PAYLOAD];

struct trace {
	unsigned frames;
	uint64_t hash;
	int err;
};

static void walk_rec(const uint8_t *p, uint32_t len, unsigned depth, uint64_t *h)
{
	struct kp_rec r;
	struct kp_field f;
	uint64_t u;
	int64_t i;
	int b;
	char s[64];

	if (depth > KP_REC_DEPTH)
		abort();
	kp_rec_open(&r, p, len);
	while (kp_rec_next(&r, &f) == 1) {
		struct kp_rec sub;

		*h = *h * 31 + f.tag + f.kind + f.len;
		if (!kp_field_u64(&f, &u) || !kp_field_i64(&f, &i))
			*h += f.val[0];
		if (!kp_field_bool(&f, &b))
			*h += (uint64_t)b;
		if (!kp_field_str(&f, s, sizeof(s)) && strlen(s) != f.len)
			abort();
		if (!kp_field_rec(&f, &sub))
			walk_rec(sub.p, sub.len, depth + 1, h);
	}
	/* Iteration of a validated record ends cleanly. */
	if (r.pos != r.len)
		abort();
}

/*
 * A request's arguments as the agent checks them for FH_OPEN, FH_* and WALK:
 * whatever the record, the checks answer, and what they accept is in range
 * and points into the record.
 */
static void check_args(const struct kp_frame *f)
{
	const uint8_t *end = f->payload + f->len;
	struct kp_open_args o;
	struct kp_fh_args a;
	struct kp_walk_args w;
	const char *why;
	uint64_t op;

	if (kp_args_fh_open(f->payload, f->len, &o, &why) == 0) {
		if (o.mode > 07777 || !(o.flags & (KP_OPEN_READ | KP_OPEN_WRITE | KP_OPEN_APPEND)) ||
		    o.path.kind != KP_K_STR || o.path.val < f->payload || o.path.val + o.path.len > end)
			abort();
	} else if (!why) {
		abort();
	}
	for (op = KP_OP_FH_READ; op <= KP_OP_FH_CLOSE; op++) {
		why = NULL;
		if (kp_args_fh(f->payload, f->len, op, &a, &why) != 0) {
			if (!why)
				abort();
			continue;
		}
		if (!a.fh || a.whence > 2 || (op == KP_OP_FH_READ && a.length > KP_FH_IO_MAX) ||
		    (op == KP_OP_FH_WRITE && (a.data_len > KP_FH_IO_MAX || a.data < f->payload ||
					      a.data + a.data_len > end)))
			abort();
	}
	if (kp_args_walk(f->payload, f->len, &w, &why) == 0 &&
	    (w.path.kind != KP_K_STR || w.path.val + w.path.len > end))
		abort();
}

static void check_frame(const struct kp_frame *f, uint32_t cap, struct trace *t)
{
	struct kp_decoder d;
	struct kp_frame g;
	size_t used;
	uint64_t v;
	uint32_t inc, n;
	const uint8_t *data;
	int len;

	t->frames++;
	t->hash = t->hash * 1000003 + ((uint64_t)f->type << 40) + ((uint64_t)f->flags << 32) +
		  ((uint64_t)f->channel << 16) + f->id + f->len;
	if (f->len)
		t->hash += f->payload[0] + f->payload[f->len - 1];
	if (kp_frame_check(f, cap))
		abort();
	switch (f->type) {
	case KP_PING: case KP_PONG: case KP_EOF:
		if (kp_parse_u64(f, &v))
			abort();
		break;
	case KP_WINDOW:
		if (kp_parse_window(f, &inc))
			abort();
		break;
	case KP_DATA:
		if (kp_parse_data(f, &v, &data, &n) || n + 8 != f->len)
			abort();
		break;
	case KP_CANCEL:
		break;
	default:
		if (kp_rec_validate(f->payload, f->len))
			abort();
		walk_rec(f->payload, f->len, 1, &t->hash);
		if (f->type == KP_REQUEST)
			check_args(f);
	}

	len = kp_enc_frame(again, sizeof(again), f);
	if (len != (int)(KP_HDR_LEN + f->len))
		abort();
	kp_dec_init(&d, buf_c, cap);
	if (kp_dec_feed(&d, again, (size_t)len, &used, &g) != 1 || used != (size_t)len)
		abort();
	if (g.type != f->type || g.flags != f->flags || g.channel != f->channel ||
	    g.id != f->id || g.len != f->len || memcmp(g.payload, f->payload, f->len))
		abort();
	if (kp_dec_finish(&d))
		abort();
}

static void run(const uint8_t *p, size_t n, uint32_t cap, uint8_t *buf, uint8_t seed,
		struct trace *t)
{
	struct kp_decoder d;
	struct kp_frame f;
	size_t off = 0, used, chunk;
	uint32_t x = seed ? seed : 1;
	int ret = 0;

	memset(t, 0, sizeof(*t));
	kp_dec_init(&d, buf, cap);
	while (off < n) {
		chunk = n - off;
		if (seed) {
			/* xorshift: chunk sizes of 1 to 64 bytes, sometimes the rest. */
			x ^= x << 13;
			x ^= x >> 17;
			x ^= x << 5;
			if (x % 8)
				chunk = 1 + x % 64 < chunk ? 1 + x % 64 : chunk;
		}
		while (chunk) {
			ret = kp_dec_feed(&d, p + off, chunk, &used, &f);
			if (used > chunk)
				abort();
			off += used;
			chunk -= used;
			if (ret < 0)
				break;
			if (ret == 1)
				check_frame(&f, cap, t);
			else if (chunk)
				abort();
		}
		if (ret < 0)
			break;
	}
	t->err = ret < 0 ? ret : kp_dec_finish(&d);
	if (ret < 0 && kp_dec_feed(&d, p, n, &used, &f) != ret)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint32_t caps[] = { KP_MAX_PAYLOAD, 4096, 64, 0 };
	struct trace whole, chunked;
	uint32_t cap;

	if (size < 2)
		return 0;
	cap = caps[data[0] % 4];
	run(data + 2, size - 2, cap, buf_a, 0, &whole);
	run(data + 2, size - 2, cap, buf_b, data[1] | 1, &chunked);
	if (whole.frames != chunked.frames || whole.hash != chunked.hash || whole.err != chunked.err)
		abort();
	return 0;
}
