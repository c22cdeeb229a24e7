/*
 * kiln agent protocol codec (docs/agent-protocol.md). Every length is checked
 * before it is used; the decoder refuses a frame from its header, before any
 * payload byte is buffered, so a peer cannot make either side allocate or wait
 * for more than its announced max_frame.
 */
#include <string.h>

#include "agent_proto.h"

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
	put16(p, (uint16_t)v);
	put16(p + 2, (uint16_t)(v >> 16));
}

static void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

/* ---- per-type rules ----------------------------------------------------------- */

enum id_rule { ID_ZERO, ID_NONZERO, ID_ANY };
enum chan_rule { CH_NONE, CH_DATA, CH_CANCEL };

struct type_rule {
	const char *name;
	uint32_t min;		/* payload bounds; max 0: up to the buffer */
	uint32_t max;
	uint8_t fixed;		/* payload is exactly min bytes */
	uint8_t flags;		/* flags allowed */
	uint8_t id;		/* enum id_rule */
	uint8_t chan;		/* enum chan_rule */
	uint8_t rec;		/* payload is a record */
};

static const struct type_rule rules[256] = {
	[KP_HELLO]	= { "HELLO", 0, KP_MAX_CONTROL, 0, 0, ID_ZERO, CH_NONE, 1 },
	[KP_PING]	= { "PING", 8, 8, 1, 0, ID_ZERO, CH_NONE, 0 },
	[KP_PONG]	= { "PONG", 8, 8, 1, 0, ID_ZERO, CH_NONE, 0 },
	[KP_REQUEST]	= { "REQUEST", 0, KP_MAX_CONTROL, 0, 0, ID_NONZERO, CH_NONE, 1 },
	[KP_RESPONSE]	= { "RESPONSE", 0, KP_MAX_CONTROL, 0, KP_F_END, ID_NONZERO, CH_NONE, 1 },
	[KP_ERROR]	= { "ERROR", 0, KP_MAX_CONTROL, 0, 0, ID_ANY, CH_NONE, 1 },
	[KP_EVENT]	= { "EVENT", 0, KP_MAX_CONTROL, 0, KP_F_END, ID_NONZERO, CH_NONE, 1 },
	[KP_CANCEL]	= { "CANCEL", 0, 0, 1, 0, ID_NONZERO, CH_CANCEL, 0 },
	[KP_DATA]	= { "DATA", 8, 0, 0, 0, ID_NONZERO, CH_DATA, 0 },
	[KP_EOF]	= { "EOF", 8, 8, 1, KP_F_END, ID_NONZERO, CH_DATA, 0 },
	[KP_WINDOW]	= { "WINDOW", 4, 4, 1, 0, ID_NONZERO, CH_DATA, 0 },
};

const char *kp_type_name(uint8_t type)
{
	return rules[type].name;
}

const char *kp_strerror(int err)
{
	static const char *const names[] = {
		[0]		= "ok",
		[KP_EBADLEN]	= "bad frame length",
		[KP_ETYPE]	= "unknown frame type",
		[KP_EOVERSIZE]	= "frame too large",
		[KP_ETRUNCATED]	= "stream ended inside a frame",
		[KP_EFLAGS]	= "undefined flags",
		[KP_ECHANNEL]	= "bad channel",
		[KP_EID]	= "bad id",
		[KP_EREC]	= "malformed record",
		[KP_ENOSPC]	= "buffer too small",
		[KP_EKIND]	= "field of another kind",
	};
	unsigned e = err < 0 ? (unsigned)-err : (unsigned)err;

	_Static_assert(sizeof(names) / sizeof(names[0]) == KP_EKIND + 1, "kp_strerror covers kp_err");
	return e < sizeof(names) / sizeof(names[0]) ? names[e] : "unknown error";
}

/* The checks that need only the header: type, flags, channel, id, length. */
static int check_header(uint8_t type, uint8_t flags, uint16_t channel, uint32_t id,
			uint32_t len, uint32_t max_payload)
{
	const struct type_rule *r = &rules[type];
	uint32_t max;

	if (!r->name)
		return -KP_ETYPE;
	if (r->fixed ? len != r->min : len < r->min)
		return -KP_EBADLEN;
	max = r->max && r->max < max_payload ? r->max : max_payload;
	if (len > max)
		return -KP_EOVERSIZE;
	if (flags & ~r->flags)
		return -KP_EFLAGS;
	if ((r->chan == CH_NONE && channel) ||
	    (r->chan == CH_DATA && channel > KP_CHAN_MAX) ||
	    (r->chan == CH_CANCEL && channel > KP_CHAN_MAX && channel != KP_CHAN_ALL))
		return -KP_ECHANNEL;
	if ((r->id == ID_ZERO && id) || (r->id == ID_NONZERO && !id))
		return -KP_EID;
	return 0;
}

int kp_frame_check(const struct kp_frame *f, uint32_t max_payload)
{
	int ret;

	if (max_payload > KP_MAX_PAYLOAD)
		max_payload = KP_MAX_PAYLOAD;
	ret = check_header(f->type, f->flags, f->channel, f->id, f->len, max_payload);
	if (ret)
		return ret;
	if (rules[f->type].rec && kp_rec_validate(f->payload, f->len))
		return -KP_EREC;
	return 0;
}

/* ---- decoder ---------------------------------------------------------------- */

void kp_dec_init(struct kp_decoder *d, uint8_t *buf, uint32_t cap)
{
	memset(d, 0, sizeof(*d));
	d->buf = buf;
	d->cap = cap > KP_MAX_PAYLOAD ? KP_MAX_PAYLOAD : cap;
}

/* Parse a 12-byte header into f (payload unset) and check it against d's limit. */
static int parse_header(const struct kp_decoder *d, const uint8_t *hdr, struct kp_frame *f)
{
	uint32_t length = get32(hdr);

	if (length < KP_HDR_LEN - 4)
		return -KP_EBADLEN;
	f->len = length - (KP_HDR_LEN - 4);
	f->type = hdr[4];
	f->flags = hdr[5];
	f->channel = (uint16_t)(hdr[6] | hdr[7] << 8);
	f->id = get32(hdr + 8);
	f->payload = NULL;
	return check_header(f->type, f->flags, f->channel, f->id, f->len, d->cap);
}

static int fail(struct kp_decoder *d, int err)
{
	d->err = err;
	return err;
}

/* A complete frame in *f: validate its payload and reset for the next one. */
static int complete(struct kp_decoder *d, struct kp_frame *f)
{
	d->hlen = 0;
	d->have = 0;
	if (rules[f->type].rec && kp_rec_validate(f->payload, f->len))
		return fail(d, -KP_EREC);
	return 1;
}

int kp_dec_feed(struct kp_decoder *d, const uint8_t *p, size_t n, size_t *used,
		struct kp_frame *f)
{
	size_t off = 0, take;
	int ret;

	*used = 0;
	if (d->err)
		return d->err;

	/* Fast path: a whole frame at the start of the input is not copied. */
	if (d->hlen == 0 && n >= KP_HDR_LEN) {
		ret = parse_header(d, p, f);
		if (ret) {
			*used = KP_HDR_LEN;
			return fail(d, ret);
		}
		if (n - KP_HDR_LEN >= f->len) {
			f->payload = p + KP_HDR_LEN;
			*used = KP_HDR_LEN + f->len;
			return complete(d, f);
		}
	}

	if (d->hlen < KP_HDR_LEN) {
		take = KP_HDR_LEN - d->hlen;
		if (take > n)
			take = n;
		memcpy(d->hdr + d->hlen, p, take);
		d->hlen += (uint32_t)take;
		off = take;
		*used = off;
		if (d->hlen < KP_HDR_LEN)
			return 0;
		ret = parse_header(d, d->hdr, f);
		if (ret)
			return fail(d, ret);
		d->plen = f->len;
		d->have = 0;
	}

	take = d->plen - d->have;
	if (take > n - off)
		take = n - off;
	if (take)
		memcpy(d->buf + d->have, p + off, take);
	d->have += (uint32_t)take;
	*used = off + take;
	if (d->have < d->plen)
		return 0;
	ret = parse_header(d, d->hdr, f);
	if (ret)
		return fail(d, ret);
	f->payload = d->buf;
	return complete(d, f);
}

int kp_dec_finish(const struct kp_decoder *d)
{
	if (d->err)
		return d->err;
	return d->hlen ? -KP_ETRUNCATED : 0;
}

/* ---- encoders --------------------------------------------------------------- */

void kp_enc_header(uint8_t *hdr, uint8_t type, uint8_t flags, uint16_t channel,
		   uint32_t id, uint32_t paylen)
{
	put32(hdr, paylen + (KP_HDR_LEN - 4));
	hdr[4] = type;
	hdr[5] = flags;
	put16(hdr + 6, channel);
	put32(hdr + 8, id);
}

int kp_enc_frame(uint8_t *buf, size_t cap, const struct kp_frame *f)
{
	int ret = kp_frame_check(f, KP_MAX_PAYLOAD);

	if (ret)
		return ret;
	if (cap < KP_HDR_LEN || cap - KP_HDR_LEN < f->len)
		return -KP_ENOSPC;
	kp_enc_header(buf, f->type, f->flags, f->channel, f->id, f->len);
	if (f->len)
		memmove(buf + KP_HDR_LEN, f->payload, f->len);
	return (int)(KP_HDR_LEN + f->len);
}

int kp_enc_data_hdr(uint8_t *hdr, uint32_t id, uint16_t channel, uint64_t offset, uint32_t n)
{
	int ret;

	if (n > KP_MAX_DATA)
		return -KP_EOVERSIZE;
	ret = check_header(KP_DATA, 0, channel, id, n + 8, KP_MAX_PAYLOAD);
	if (ret)
		return ret;
	kp_enc_header(hdr, KP_DATA, 0, channel, id, n + 8);
	put64(hdr + KP_HDR_LEN, offset);
	return KP_DATA_HDR_LEN;
}

static int enc_fixed(uint8_t *buf, uint8_t type, uint8_t flags, uint16_t channel,
		     uint32_t id, const uint8_t *payload, uint32_t len)
{
	int ret = check_header(type, flags, channel, id, len, KP_MAX_PAYLOAD);

	if (ret)
		return ret;
	kp_enc_header(buf, type, flags, channel, id, len);
	if (len)
		memcpy(buf + KP_HDR_LEN, payload, len);
	return (int)(KP_HDR_LEN + len);
}

int kp_enc_ping(uint8_t *buf, uint8_t type, uint64_t opaque)
{
	uint8_t v[8];

	if (type != KP_PING && type != KP_PONG)
		return -KP_ETYPE;
	put64(v, opaque);
	return enc_fixed(buf, type, 0, 0, 0, v, 8);
}

int kp_enc_eof(uint8_t *buf, uint32_t id, uint16_t channel, uint8_t flags, uint64_t offset)
{
	uint8_t v[8];

	put64(v, offset);
	return enc_fixed(buf, KP_EOF, flags, channel, id, v, 8);
}

int kp_enc_window(uint8_t *buf, uint32_t id, uint16_t channel, uint32_t increment)
{
	uint8_t v[4];

	put32(v, increment);
	return enc_fixed(buf, KP_WINDOW, 0, channel, id, v, 4);
}

int kp_enc_cancel(uint8_t *buf, uint32_t id, uint16_t channel)
{
	return enc_fixed(buf, KP_CANCEL, 0, channel, id, NULL, 0);
}

int kp_parse_u64(const struct kp_frame *f, uint64_t *v)
{
	if (f->type != KP_PING && f->type != KP_PONG && f->type != KP_EOF)
		return -KP_ETYPE;
	if (f->len != 8)
		return -KP_EBADLEN;
	*v = get64(f->payload);
	return 0;
}

int kp_parse_window(const struct kp_frame *f, uint32_t *increment)
{
	if (f->type != KP_WINDOW)
		return -KP_ETYPE;
	if (f->len != 4)
		return -KP_EBADLEN;
	*increment = get32(f->payload);
	return 0;
}

int kp_parse_data(const struct kp_frame *f, uint64_t *offset, const uint8_t **data, uint32_t *n)
{
	if (f->type != KP_DATA)
		return -KP_ETYPE;
	if (f->len < 8)
		return -KP_EBADLEN;
	*offset = get64(f->payload);
	*data = f->payload + 8;
	*n = f->len - 8;
	return 0;
}

/* ---- records ---------------------------------------------------------------- */

void kp_rec_open(struct kp_rec *r, const uint8_t *p, uint32_t len)
{
	r->p = p;
	r->len = len;
	r->pos = 0;
}

/* One field's header and value bounds and its kind-specific shape. */
int kp_rec_next(struct kp_rec *r, struct kp_field *f)
{
	const uint8_t *h;

	if (r->pos == r->len)
		return 0;
	if (r->len - r->pos < KP_FIELD_HDR)
		return -KP_EREC;
	h = r->p + r->pos;
	f->tag = h[0];
	f->kind = h[1];
	f->len = get32(h + 2);
	if (f->len > r->len - r->pos - KP_FIELD_HDR || f->tag == 0)
		return -KP_EREC;
	f->val = h + KP_FIELD_HDR;
	switch (f->kind) {
	case KP_K_U64:
	case KP_K_I64:
		if (f->len != 8)
			return -KP_EREC;
		break;
	case KP_K_BOOL:
		if (f->len != 1 || f->val[0] > 1)
			return -KP_EREC;
		break;
	case KP_K_STR:
		if (f->len && memchr(f->val, 0, f->len))
			return -KP_EREC;
		break;
	case KP_K_BYTES:
	case KP_K_REC:
		break;
	default:
		return -KP_EREC;
	}
	r->pos += KP_FIELD_HDR + f->len;
	return 1;
}

static int rec_validate(const uint8_t *p, uint32_t len, unsigned depth)
{
	struct kp_rec r;
	struct kp_field f;
	int ret;

	kp_rec_open(&r, p, len);
	while ((ret = kp_rec_next(&r, &f)) == 1) {
		if (f.kind != KP_K_REC)
			continue;
		if (depth + 1 >= KP_REC_DEPTH || rec_validate(f.val, f.len, depth + 1))
			return -KP_EREC;
	}
	return ret;
}

int kp_rec_validate(const uint8_t *p, uint32_t len)
{
	if (len && !p)
		return -KP_EREC;
	return rec_validate(p, len, 0);
}

int kp_rec_find(const uint8_t *p, uint32_t len, uint8_t tag, struct kp_field *f)
{
	struct kp_rec r;
	int ret;

	kp_rec_open(&r, p, len);
	while ((ret = kp_rec_next(&r, f)) == 1)
		if (f->tag == tag)
			return 1;
	return ret;
}

int kp_field_u64(const struct kp_field *f, uint64_t *v)
{
	if (f->kind != KP_K_U64 || f->len != 8)
		return -KP_EKIND;
	*v = get64(f->val);
	return 0;
}

int kp_field_i64(const struct kp_field *f, int64_t *v)
{
	uint64_t u;

	if (f->kind != KP_K_I64 || f->len != 8)
		return -KP_EKIND;
	u = get64(f->val);
	memcpy(v, &u, sizeof(*v));
	return 0;
}

int kp_field_bool(const struct kp_field *f, int *v)
{
	if (f->kind != KP_K_BOOL || f->len != 1)
		return -KP_EKIND;
	*v = f->val[0] != 0;
	return 0;
}

int kp_field_str(const struct kp_field *f, char *dst, size_t cap)
{
	if (f->kind != KP_K_STR)
		return -KP_EKIND;
	if (cap == 0 || f->len > cap - 1)
		return -KP_ENOSPC;
	if (f->len)
		memcpy(dst, f->val, f->len);
	dst[f->len] = '\0';
	return 0;
}

int kp_field_rec(const struct kp_field *f, struct kp_rec *sub)
{
	if (f->kind != KP_K_REC)
		return -KP_EKIND;
	kp_rec_open(sub, f->val, f->len);
	return 0;
}

void kp_recw_init(struct kp_recw *w, uint8_t *buf, uint32_t cap)
{
	w->p = buf;
	w->cap = cap;
	w->len = 0;
	w->err = 0;
}

/* Reserve a field of n value bytes; NULL (and a sticky error) if it does not fit. */
static uint8_t *put_field(struct kp_recw *w, uint8_t tag, uint8_t kind, uint32_t n)
{
	uint8_t *h;

	if (w->err)
		return NULL;
	if (tag == 0) {
		w->err = -KP_EREC;
		return NULL;
	}
	if (w->cap - w->len < KP_FIELD_HDR || w->cap - w->len - KP_FIELD_HDR < n) {
		w->err = -KP_ENOSPC;
		return NULL;
	}
	h = w->p + w->len;
	h[0] = tag;
	h[1] = kind;
	put32(h + 2, n);
	w->len += KP_FIELD_HDR + n;
	return h + KP_FIELD_HDR;
}

void kp_put_u64(struct kp_recw *w, uint8_t tag, uint64_t v)
{
	uint8_t *p = put_field(w, tag, KP_K_U64, 8);

	if (p)
		put64(p, v);
}

void kp_put_i64(struct kp_recw *w, uint8_t tag, int64_t v)
{
	uint8_t *p = put_field(w, tag, KP_K_I64, 8);
	uint64_t u;

	memcpy(&u, &v, sizeof(u));
	if (p)
		put64(p, u);
}

void kp_put_bool(struct kp_recw *w, uint8_t tag, int v)
{
	uint8_t *p = put_field(w, tag, KP_K_BOOL, 1);

	if (p)
		p[0] = v != 0;
}

void kp_put_bytes(struct kp_recw *w, uint8_t tag, const void *src, uint32_t n)
{
	uint8_t *p = put_field(w, tag, KP_K_BYTES, n);

	if (p && n)
		memcpy(p, src, n);
}

void kp_put_strn(struct kp_recw *w, uint8_t tag, const char *s, uint32_t n)
{
	uint8_t *p;

	if (n && memchr(s, 0, n)) {
		if (!w->err)
			w->err = -KP_EREC;
		return;
	}
	p = put_field(w, tag, KP_K_STR, n);
	if (p && n)
		memcpy(p, s, n);
}

void kp_put_str(struct kp_recw *w, uint8_t tag, const char *s)
{
	size_t n = strlen(s);

	if (n > 0xffffffffu) {
		w->err = w->err ? w->err : -KP_ENOSPC;
		return;
	}
	kp_put_strn(w, tag, s, (uint32_t)n);
}

uint32_t kp_nest_begin(struct kp_recw *w, uint8_t tag)
{
	uint32_t mark = w->len;

	put_field(w, tag, KP_K_REC, 0);
	return mark;
}

void kp_nest_end(struct kp_recw *w, uint32_t mark)
{
	if (w->err || mark > w->len || w->len - mark < KP_FIELD_HDR)
		return;
	put32(w->p + mark + 2, w->len - mark - KP_FIELD_HDR);
}

int kp_recw_done(const struct kp_recw *w)
{
	if (w->err)
		return w->err;
	if (w->len > KP_MAX_CONTROL)
		return -KP_EOVERSIZE;
	return (int)w->len;
}

int kp_enc_rec_frame(uint8_t *buf, size_t cap, uint8_t type, uint8_t flags, uint32_t id,
		     const struct kp_recw *w)
{
	struct kp_frame f;
	int len = kp_recw_done(w), ret;

	if (len < 0)
		return len;
	if (cap < KP_HDR_LEN || cap - KP_HDR_LEN < (size_t)len || w->p != buf + KP_HDR_LEN)
		return -KP_ENOSPC;
	f.type = type;
	f.flags = flags;
	f.channel = 0;
	f.id = id;
	f.payload = w->p;
	f.len = (uint32_t)len;
	if (!rules[type].rec)
		return -KP_ETYPE;
	ret = kp_frame_check(&f, KP_MAX_PAYLOAD);
	if (ret)
		return ret;
	kp_enc_header(buf, type, flags, 0, id, f.len);
	return (int)(KP_HDR_LEN + f.len);
}

int kp_enc_hello(uint8_t *buf, size_t cap, uint32_t window, uint32_t max_payload,
		 const char *agent)
{
	struct kp_recw w;

	if (cap < KP_HDR_LEN)
		return -KP_ENOSPC;
	kp_recw_init(&w, buf + KP_HDR_LEN, cap - KP_HDR_LEN > KP_MAX_CONTROL ?
		     KP_MAX_CONTROL : (uint32_t)(cap - KP_HDR_LEN));
	kp_put_u64(&w, KT_VERSION, KP_VERSION);
	kp_put_u64(&w, KT_WINDOW, window);
	kp_put_u64(&w, KT_MAX_FRAME, max_payload);
	if (agent)
		kp_put_str(&w, KT_AGENT, agent);
	return kp_enc_rec_frame(buf, cap, KP_HELLO, 0, 0, &w);
}

int kp_enc_error(uint8_t *buf, size_t cap, uint32_t id, uint32_t code, uint32_t err_no,
		 const char *msg)
{
	struct kp_recw w;

	if (cap < KP_HDR_LEN)
		return -KP_ENOSPC;
	kp_recw_init(&w, buf + KP_HDR_LEN, cap - KP_HDR_LEN > KP_MAX_CONTROL ?
		     KP_MAX_CONTROL : (uint32_t)(cap - KP_HDR_LEN));
	kp_put_u64(&w, KT_CODE, code);
	if (err_no)
		kp_put_u64(&w, KT_ERRNO, err_no);
	if (msg)
		kp_put_str(&w, KT_MESSAGE, msg);
	return kp_enc_rec_frame(buf, cap, KP_ERROR, 0, id, &w);
}

/* ---- arguments of the file operations ------------------------------------------ */

/*
 * The first field tag of a request record, of kind kind: 1 found, 0 absent,
 * -1 present with another kind (or a record that does not parse).
 */
static int arg_field(const uint8_t *rec, uint32_t len, uint8_t tag, uint8_t kind, struct kp_field *f)
{
	int ret = kp_rec_find(rec, len, tag, f);

	if (ret < 0 || (ret == 1 && f->kind != kind))
		return -1;
	return ret;
}

/* An optional BOOL: 0 absent or false, 1 true, -1 of another kind. */
static int arg_bool(const uint8_t *rec, uint32_t len, uint8_t tag)
{
	struct kp_field f;
	int ret = arg_field(rec, len, tag, KP_K_BOOL, &f), v;

	if (ret <= 0)
		return ret;
	return kp_field_bool(&f, &v) ? -1 : v;
}

/* An optional U64 into *v (left as is when absent): 0, or -1 of another kind. */
static int arg_u64(const uint8_t *rec, uint32_t len, uint8_t tag, uint64_t *v)
{
	struct kp_field f;
	int ret = arg_field(rec, len, tag, KP_K_U64, &f);

	if (ret <= 0)
		return ret;
	return kp_field_u64(&f, v) ? -1 : 0;
}

/* A required I64 into *v; a U64 below 2^63 is taken as well (offsets are U64 elsewhere). */
static int arg_i64(const uint8_t *rec, uint32_t len, uint8_t tag, int64_t *v)
{
	struct kp_field f;
	uint64_t u;

	if (kp_rec_find(rec, len, tag, &f) != 1)
		return -1;
	if (kp_field_i64(&f, v) == 0)
		return 0;
	if (kp_field_u64(&f, &u) || u > (uint64_t)INT64_MAX)
		return -1;
	*v = (int64_t)u;
	return 0;
}

int kp_args_fh_open(const uint8_t *rec, uint32_t len, struct kp_open_args *a, const char **why)
{
	static const struct { uint8_t tag; unsigned flag; } bools[] = {
		{ KT_READ, KP_OPEN_READ }, { KT_WRITE, KP_OPEN_WRITE }, { KT_APPEND, KP_OPEN_APPEND },
		{ KT_TRUNCATE, KP_OPEN_TRUNCATE }, { KT_CREATE, KP_OPEN_CREATE },
		{ KT_CREATE_NEW, KP_OPEN_CREATE_NEW },
	};
	uint64_t mode = 0666;
	unsigned i, fl = 0, wr;

	memset(a, 0, sizeof(*a));
	if (arg_field(rec, len, KT_PATH, KP_K_STR, &a->path) != 1) {
		*why = "fh open: wants PATH (STR)";
		return -1;
	}
	for (i = 0; i < sizeof(bools) / sizeof(bools[0]); i++) {
		int v = arg_bool(rec, len, bools[i].tag);

		if (v < 0) {
			*why = "fh open: READ, WRITE, APPEND, TRUNCATE, CREATE and CREATE_NEW are BOOL";
			return -1;
		}
		if (v)
			fl |= bools[i].flag;
	}
	if (arg_u64(rec, len, KT_MODE, &mode) < 0 || mode > 07777) {
		*why = "fh open: MODE is U64 permission bits, at most 07777";
		return -1;
	}
	if (!fl)
		fl = KP_OPEN_READ;	/* Deno's open() without options */
	wr = fl & (KP_OPEN_WRITE | KP_OPEN_APPEND);
	if (!(fl & KP_OPEN_READ) && !wr) {
		*why = "fh open: wants at least one of READ, WRITE and APPEND";
		return -1;
	}
	if (!wr && (fl & (KP_OPEN_TRUNCATE | KP_OPEN_CREATE | KP_OPEN_CREATE_NEW))) {
		*why = "fh open: TRUNCATE, CREATE and CREATE_NEW need WRITE or APPEND";
		return -1;
	}
	if ((fl & KP_OPEN_APPEND) && (fl & KP_OPEN_TRUNCATE) && !(fl & KP_OPEN_CREATE_NEW)) {
		*why = "fh open: TRUNCATE and APPEND together make no sense";
		return -1;
	}
	a->flags = fl;
	a->mode = (uint32_t)mode;
	return 0;
}

int kp_args_fh(const uint8_t *rec, uint32_t len, uint64_t op, struct kp_fh_args *a, const char **why)
{
	struct kp_field f;
	uint64_t whence = 0;
	int v;

	memset(a, 0, sizeof(*a));
	if (op < KP_OP_FH_READ || op > KP_OP_FH_CLOSE) {
		*why = "not a file handle operation";
		return -1;
	}
	if (arg_u64(rec, len, KT_FH, &a->fh) < 0 || !a->fh) {
		*why = "fh: wants FH (U64, from FH_OPEN)";
		return -1;
	}
	switch (op) {
	case KP_OP_FH_READ:
		a->length = UINT64_MAX;
		if (arg_u64(rec, len, KT_LENGTH, &a->length) < 0 || a->length > KP_FH_IO_MAX) {
			*why = "fh read: wants LENGTH (U64), at most 240 KiB";
			return -1;
		}
		break;
	case KP_OP_FH_WRITE:
		if (arg_field(rec, len, KT_DATA, KP_K_BYTES, &f) != 1 || f.len > KP_FH_IO_MAX) {
			*why = "fh write: wants DATA (BYTES), at most 240 KiB";
			return -1;
		}
		a->data = f.val;
		a->data_len = f.len;
		break;
	case KP_OP_FH_SEEK:
		if (arg_i64(rec, len, KT_OFFSET, &a->offset) < 0 || arg_u64(rec, len, KT_WHENCE, &whence) < 0 ||
		    whence > 2) {
			*why = "fh seek: wants OFFSET (I64) and WHENCE? (0 start, 1 current, 2 end)";
			return -1;
		}
		a->whence = (int)whence;
		break;
	case KP_OP_FH_SYNC:
		if ((v = arg_bool(rec, len, KT_DATA_ONLY)) < 0) {
			*why = "fh sync: DATA_ONLY is BOOL";
			return -1;
		}
		a->data_only = v;
		break;
	case KP_OP_FH_TRUNCATE:
		if (arg_u64(rec, len, KT_LENGTH, &a->length) < 0 || a->length > (uint64_t)INT64_MAX) {
			*why = "fh truncate: LENGTH? is U64, below 2^63";
			return -1;
		}
		break;
	case KP_OP_FH_LOCK:
		if ((v = arg_bool(rec, len, KT_EXCLUSIVE)) < 0) {
			*why = "fh lock: EXCLUSIVE is BOOL";
			return -1;
		}
		a->exclusive = v;
		break;
	case KP_OP_FH_UTIME:
		if (arg_field(rec, len, KT_ATIME, KP_K_I64, &f) != 1 || kp_field_i64(&f, &a->atime) ||
		    arg_field(rec, len, KT_MTIME, KP_K_I64, &f) != 1 || kp_field_i64(&f, &a->mtime)) {
			*why = "fh utime: wants ATIME and MTIME (I64 ns since the epoch)";
			return -1;
		}
		break;
	}
	return 0;
}

int kp_args_walk(const uint8_t *rec, uint32_t len, struct kp_walk_args *a, const char **why)
{
	int v;

	memset(a, 0, sizeof(*a));
	a->max_depth = KP_WALK_UNLIMITED;
	if (arg_field(rec, len, KT_PATH, KP_K_STR, &a->path) != 1) {
		*why = "walk: wants PATH (STR)";
		return -1;
	}
	if (arg_u64(rec, len, KT_MAX_DEPTH, &a->max_depth) < 0 || (v = arg_bool(rec, len, KT_NOFOLLOW)) < 0) {
		*why = "walk: MAX_DEPTH is U64, NOFOLLOW BOOL";
		return -1;
	}
	a->nofollow = v;
	return 0;
}
