/*
 * kiln agent protocol: the frame codec shared by kiln-agent (guest PID 1) and
 * the host's client (kilnd). Pure C: no I/O, no allocation, only string.h and
 * stdint.h, so the static guest binary links it as is. The wire format is
 * specified in docs/agent-protocol.md; constant names follow that document.
 *
 * A frame is a 12-byte little-endian header and a payload:
 *   u32 length | u8 type | u8 flags | u16 channel | u32 id | payload
 * where length counts the bytes after itself (8 + payload length).
 * Control payloads (HELLO, REQUEST, RESPONSE, ERROR, EVENT) are records:
 * a sequence of fields  u8 tag | u8 kind | u32 len | value  (kp_rec_*).
 */
#ifndef KILN_AGENT_PROTO_H
#define KILN_AGENT_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define KP_VERSION		1
#define KP_VSOCK_PORT		1024	/* the agent's listening vsock port */
#define KP_HDR_LEN		12
#define KP_DATA_HDR_LEN		(KP_HDR_LEN + 8)	/* header + u64 offset */
#define KP_MAX_DATA		(1u << 20)		/* bytes in one DATA frame */
#define KP_MAX_PAYLOAD		(KP_MAX_DATA + 8)	/* largest payload of any frame */
#define KP_MAX_CONTROL		(256u << 10)		/* largest record payload */
#define KP_MIN_PAYLOAD_CAP	(64u << 10)		/* smallest max_frame a peer may announce */
#define KP_DEFAULT_WINDOW	(256u << 10)		/* initial credit per channel */
#define KP_REC_DEPTH		4			/* nesting limit of records */

/* Frame types (docs/agent-protocol.md, "Frame types"). */
enum kp_type {
	KP_HELLO	= 0x01,	/* record, id 0: version and limits, both ways first */
	KP_PING		= 0x02,	/* u64 opaque, id 0 */
	KP_PONG		= 0x03,	/* u64 echoed, id 0 */
	KP_REQUEST	= 0x10,	/* record, id = request id (client-chosen, != 0) */
	KP_RESPONSE	= 0x11,	/* record; KP_F_END ends the id */
	KP_ERROR	= 0x12,	/* record; always ends the id (id 0: connection) */
	KP_EVENT	= 0x13,	/* record, asynchronous news on a stream */
	KP_CANCEL	= 0x14,	/* empty: abandon a request or one channel */
	KP_DATA		= 0x20,	/* u64 offset | raw bytes, on one channel */
	KP_EOF		= 0x21,	/* u64 final offset: the channel is finished */
	KP_WINDOW	= 0x22,	/* u32 credit increment for one channel */
};

/* Frame flags. Undefined bits are rejected. */
#define KP_F_END	0x01	/* last frame of this id (RESPONSE, EVENT, EOF) */

/* Channels of a stream (DATA, EOF, WINDOW, CANCEL). */
#define KP_CHAN_IN	0	/* stdin, file write bytes, port host->guest */
#define KP_CHAN_OUT	1	/* stdout (or pty), file read bytes, port guest->host */
#define KP_CHAN_ERR	2	/* stderr */
#define KP_CHAN_MAX	2
#define KP_CHAN_ALL	0xffff	/* CANCEL only: the whole stream */

/* Codec errors, returned negated. */
enum kp_err {
	KP_EBADLEN = 1,	/* length field below 8, or wrong for a fixed-size type */
	KP_ETYPE,	/* unknown frame type */
	KP_EOVERSIZE,	/* payload larger than the type's limit or the buffer */
	KP_ETRUNCATED,	/* stream ended inside a frame */
	KP_EFLAGS,	/* flag bits not defined for this type */
	KP_ECHANNEL,	/* channel not allowed for this type */
	KP_EID,		/* id 0 where one is needed, or non-zero on a connection frame */
	KP_EREC,	/* malformed record payload */
	KP_ENOSPC,	/* encoder: output buffer too small */
	KP_EKIND,	/* record field of another kind than asked for */
};

/* A frame; payload points into the decoder's buffer or the caller's input. */
struct kp_frame {
	uint8_t type;
	uint8_t flags;
	uint16_t channel;
	uint32_t id;
	const uint8_t *payload;
	uint32_t len;		/* payload length */
};

/* Incremental decoder. buf holds one payload of up to cap bytes. */
struct kp_decoder {
	uint8_t *buf;
	uint32_t cap;
	uint8_t hdr[KP_HDR_LEN];
	uint32_t hlen;		/* header bytes gathered */
	uint32_t plen;		/* payload length of the current frame */
	uint32_t have;		/* payload bytes gathered */
	int err;		/* sticky negative error */
};

/* Name of a codec error (for logs); never NULL. */
const char *kp_strerror(int err);

/* Name of a frame type, or NULL if unknown. */
const char *kp_type_name(uint8_t type);

/*
 * Prepare d to decode frames whose payload is at most cap bytes (the
 * max_frame this side announced in HELLO, at most KP_MAX_PAYLOAD), gathered
 * in buf (cap bytes, owned by the caller). Larger frames are refused from
 * their header, before any payload byte is buffered.
 */
void kp_dec_init(struct kp_decoder *d, uint8_t *buf, uint32_t cap);

/*
 * Feed n bytes at p. Consumes bytes until one frame completes or the input is
 * used up, and sets *used to the count consumed. Returns 1 with *f filled
 * (valid until the next call, or until p's memory changes: a frame wholly
 * inside p is not copied), 0 when more input is needed (*used == n), or a
 * negative kp_err; errors are sticky: the connection must be closed.
 * A frame may be split at any byte boundary across calls.
 */
int kp_dec_feed(struct kp_decoder *d, const uint8_t *p, size_t n, size_t *used,
		struct kp_frame *f);

/* At end of input: 0 if d is between frames, -KP_ETRUNCATED inside one, or the sticky error. */
int kp_dec_finish(const struct kp_decoder *d);

/*
 * Check a frame against the rules of its type (flags, channel, id, payload
 * size and shape, records well formed) for a peer whose payload limit is
 * max_payload. Returns 0 or a negative kp_err. The decoder and every encoder
 * apply it, so neither side can emit what the other refuses.
 */
int kp_frame_check(const struct kp_frame *f, uint32_t max_payload);

/* Write a 12-byte header for a payload of paylen bytes (no checks; for writev). */
void kp_enc_header(uint8_t *hdr, uint8_t type, uint8_t flags, uint16_t channel,
		   uint32_t id, uint32_t paylen);

/*
 * Encode f (header and a copy of its payload) into buf of cap bytes.
 * Returns the frame's size or a negative kp_err (-KP_ENOSPC if it does not fit).
 */
int kp_enc_frame(uint8_t *buf, size_t cap, const struct kp_frame *f);

/*
 * Header and offset of a DATA frame carrying n bytes (KP_DATA_HDR_LEN bytes
 * into hdr); the n bytes follow from the caller's own buffer (writev), so
 * data is never copied. Returns KP_DATA_HDR_LEN or a negative kp_err.
 */
int kp_enc_data_hdr(uint8_t *hdr, uint32_t id, uint16_t channel, uint64_t offset, uint32_t n);

/* Fixed-size frames into buf (at least KP_HDR_LEN + 8 bytes); return the size. */
int kp_enc_ping(uint8_t *buf, uint8_t type, uint64_t opaque);	/* KP_PING or KP_PONG */
int kp_enc_eof(uint8_t *buf, uint32_t id, uint16_t channel, uint8_t flags, uint64_t offset);
int kp_enc_window(uint8_t *buf, uint32_t id, uint16_t channel, uint32_t increment);
int kp_enc_cancel(uint8_t *buf, uint32_t id, uint16_t channel);

/* Fixed-size payloads of a checked frame. Return 0 or -KP_EBADLEN/-KP_ETYPE. */
int kp_parse_u64(const struct kp_frame *f, uint64_t *v);	/* PING, PONG, EOF */
int kp_parse_window(const struct kp_frame *f, uint32_t *increment);
int kp_parse_data(const struct kp_frame *f, uint64_t *offset, const uint8_t **data, uint32_t *n);

/* ---- records ---------------------------------------------------------------- */

enum kp_kind {
	KP_K_U64 = 1,	/* 8 bytes LE */
	KP_K_I64,	/* 8 bytes LE, two's complement */
	KP_K_BOOL,	/* 1 byte, 0 or 1 */
	KP_K_BYTES,	/* any bytes */
	KP_K_STR,	/* bytes without NUL (paths, argv, env: not necessarily UTF-8) */
	KP_K_REC,	/* a nested record */
};

#define KP_FIELD_HDR	6	/* u8 tag | u8 kind | u32 len */

struct kp_field {
	uint8_t tag;
	uint8_t kind;
	uint32_t len;
	const uint8_t *val;
};

struct kp_rec {
	const uint8_t *p;
	uint32_t len;
	uint32_t pos;
};

/* Record writer over a caller's buffer; errors are sticky until kp_recw_done. */
struct kp_recw {
	uint8_t *p;
	uint32_t cap;
	uint32_t len;
	int err;
};

/* Validate a whole record (field bounds, kinds, values, nesting). 0 or -KP_EREC. */
int kp_rec_validate(const uint8_t *p, uint32_t len);

/* Iterate the fields of a record (validated or not). */
void kp_rec_open(struct kp_rec *r, const uint8_t *p, uint32_t len);
/* Next field into *f: 1, 0 at the end, or -KP_EREC. */
int kp_rec_next(struct kp_rec *r, struct kp_field *f);
/* First field with tag in a record: 1 found, 0 absent, or -KP_EREC. */
int kp_rec_find(const uint8_t *p, uint32_t len, uint8_t tag, struct kp_field *f);

/* Field values; each returns 0 or -KP_EKIND. */
int kp_field_u64(const struct kp_field *f, uint64_t *v);
int kp_field_i64(const struct kp_field *f, int64_t *v);
int kp_field_bool(const struct kp_field *f, int *v);
/* Copy a STR field and a NUL into dst of cap bytes; -KP_ENOSPC if too long. */
int kp_field_str(const struct kp_field *f, char *dst, size_t cap);
/* Open a REC field for iteration. */
int kp_field_rec(const struct kp_field *f, struct kp_rec *sub);

void kp_recw_init(struct kp_recw *w, uint8_t *buf, uint32_t cap);
void kp_put_u64(struct kp_recw *w, uint8_t tag, uint64_t v);
void kp_put_i64(struct kp_recw *w, uint8_t tag, int64_t v);
void kp_put_bool(struct kp_recw *w, uint8_t tag, int v);
void kp_put_bytes(struct kp_recw *w, uint8_t tag, const void *p, uint32_t n);
/* A STR field of n bytes; a NUL among them fails the record with -KP_EREC. */
void kp_put_strn(struct kp_recw *w, uint8_t tag, const char *s, uint32_t n);
void kp_put_str(struct kp_recw *w, uint8_t tag, const char *s);
/* Open a nested record; returns a mark for kp_nest_end. */
uint32_t kp_nest_begin(struct kp_recw *w, uint8_t tag);
void kp_nest_end(struct kp_recw *w, uint32_t mark);
/* The record's length, or the first error (-KP_ENOSPC, -KP_EREC). */
int kp_recw_done(const struct kp_recw *w);

/*
 * A record frame: write the record at buf + KP_HDR_LEN (kp_recw_init(w,
 * buf + KP_HDR_LEN, cap - KP_HDR_LEN)), then call this to add the header
 * and check the frame. Returns the frame's size or a negative kp_err.
 */
int kp_enc_rec_frame(uint8_t *buf, size_t cap, uint8_t type, uint8_t flags, uint32_t id,
		     const struct kp_recw *w);

/* HELLO with this side's version, receive window and max payload. */
int kp_enc_hello(uint8_t *buf, size_t cap, uint32_t window, uint32_t max_payload,
		 const char *agent);
/* ERROR for id with a protocol code, an errno (0: none) and a message. */
int kp_enc_error(uint8_t *buf, size_t cap, uint32_t id, uint32_t code, uint32_t err_no,
		 const char *msg);

/* ---- control vocabulary (docs/agent-protocol.md, "Operations") ---------------- */

/* Operation codes: the KT_OP field of a REQUEST. */
enum kp_op {
	/* control */
	KP_OP_HEALTH = 0x01, KP_OP_IDENTITY, KP_OP_SHUTDOWN,
	KP_OP_ENV_GET, KP_OP_ENV_SET, KP_OP_ENV_DELETE, KP_OP_ENV_LIST,
	/* processes */
	KP_OP_EXEC = 0x10, KP_OP_ATTACH, KP_OP_SIGNAL, KP_OP_RESIZE, KP_OP_WAIT,
	KP_OP_RELEASE, KP_OP_PROC_LIST,
	/* files by path */
	KP_OP_STAT = 0x20, KP_OP_READDIR, KP_OP_MKDIR, KP_OP_REMOVE, KP_OP_RENAME,
	KP_OP_FILE_WRITE, KP_OP_FILE_READ, KP_OP_CHMOD, KP_OP_CHOWN, KP_OP_COPY,
	KP_OP_LINK, KP_OP_SYMLINK, KP_OP_READLINK, KP_OP_REALPATH, KP_OP_TRUNCATE,
	KP_OP_UTIME, KP_OP_MKTEMP, KP_OP_UMASK, KP_OP_WALK,
	/* file handles */
	KP_OP_FH_OPEN = 0x38, KP_OP_FH_READ, KP_OP_FH_WRITE, KP_OP_FH_SEEK, KP_OP_FH_STAT,
	KP_OP_FH_SYNC, KP_OP_FH_TRUNCATE, KP_OP_FH_LOCK, KP_OP_FH_UNLOCK, KP_OP_FH_UTIME,
	KP_OP_FH_CLOSE,
	/* ports */
	KP_OP_PORT_CONNECT = 0x50, KP_OP_PORT_WAIT, KP_OP_PORT_LIST,
};

/* Field tags: one space for all records (the document lists kinds and uses). */
enum kp_tag {
	KT_OP = 1, KT_VERSION, KT_WINDOW, KT_MAX_FRAME, KT_FEATURE, KT_AGENT,
	KT_CODE = 8, KT_ERRNO, KT_MESSAGE, KT_EVENT,
	/* exec */
	KT_ARG = 16, KT_SHELL, KT_ENV, KT_CLEAR_ENV, KT_CWD, KT_UID, KT_GID,
	KT_STDIN, KT_STDOUT, KT_STDERR, KT_PTY, KT_ROWS, KT_COLS, KT_RING, KT_OVERFLOW,
	KT_HANDLE, KT_PID, KT_SIGNAL, KT_CORE, KT_OOM, KT_GROUP, KT_OUT_OFFSET,
	KT_ERR_OFFSET, KT_LOST_FROM, KT_LOST_TO, KT_CHANNEL,
	/* files */
	KT_PATH = 48, KT_PATH2, KT_MODE, KT_RECURSIVE, KT_APPEND, KT_CREATE, KT_CREATE_NEW,
	KT_TRUNCATE, KT_READ, KT_WRITE, KT_OFFSET, KT_LENGTH, KT_SIZE, KT_NOFOLLOW,
	KT_ENTRY, KT_NAME, KT_TYPE, KT_DEV, KT_INO, KT_NLINK, KT_RDEV, KT_BLKSIZE,
	KT_BLOCKS, KT_ATIME, KT_MTIME, KT_CTIME, KT_BTIME, KT_FH, KT_WHENCE,
	KT_EXCLUSIVE, KT_DATA, KT_EOF, KT_DIRECTORY, KT_PREFIX, KT_SUFFIX, KT_MAX_DEPTH,
	KT_DATA_ONLY, KT_AS_USER,
	/* ports and control */
	KT_PORT = 96, KT_ADDR, KT_RAW, KT_TIMEOUT_MS, KT_SANDBOX_ID, KT_HOSTNAME,
	KT_REALTIME_NS, KT_KEY, KT_VALUE, KT_UPTIME_NS, KT_PROCS, KT_REBOOT,
};

/* ERROR codes (KT_CODE). */
enum kp_code {
	KP_ERR_PROTO = 1,	/* malformed or out-of-order frame: connection closes */
	KP_ERR_VERSION,		/* no common protocol version */
	KP_ERR_UNKNOWN_OP,
	KP_ERR_BAD_ARGS,	/* a field missing, of the wrong kind or out of range */
	KP_ERR_ID_IN_USE,	/* request id already live on this connection */
	KP_ERR_NO_SUCH,		/* unknown handle, file handle or stream */
	KP_ERR_CANCELLED,
	KP_ERR_DETACHED,	/* another connection attached to the process */
	KP_ERR_LIMIT,		/* a bound was reached (processes, handles, streams) */
	KP_ERR_OS,		/* a system call failed: KT_ERRNO says which errno */
	KP_ERR_CREDIT,		/* DATA beyond the granted window */
	KP_ERR_INTERNAL,
};

/* KT_EVENT values of an EVENT record. */
enum kp_event { KP_EV_EXIT = 1, KP_EV_GAP, KP_EV_LISTEN };

/* KT_STDIN/KT_STDOUT/KT_STDERR values. */
enum kp_stdio { KP_IO_NULL = 0, KP_IO_PIPE, KP_IO_MERGE };

/* KT_OVERFLOW values: what a full output ring does. */
enum kp_overflow { KP_OVF_BLOCK = 0, KP_OVF_DROP };

/* ---- arguments of the file operations (checked here: pure, unit-tested) --------- */

#define KP_FH_MAX		256		/* open file handles per connection */
#define KP_FH_IO_MAX		(240u << 10)	/* bytes of one FH_READ or FH_WRITE */
#define KP_WALK_UNLIMITED	UINT64_MAX	/* WALK without KT_MAX_DEPTH */

/* What FH_OPEN asks for: its BOOL fields. */
enum kp_open_flag {
	KP_OPEN_READ = 1 << 0, KP_OPEN_WRITE = 1 << 1, KP_OPEN_APPEND = 1 << 2,
	KP_OPEN_TRUNCATE = 1 << 3, KP_OPEN_CREATE = 1 << 4, KP_OPEN_CREATE_NEW = 1 << 5,
};

struct kp_open_args {
	struct kp_field path;	/* STR */
	unsigned flags;		/* KP_OPEN_*: a combination open(2) can honour */
	uint32_t mode;		/* permission bits of a created file (default 0666, less the umask) */
};

/* The arguments of FH_READ .. FH_CLOSE; which are set depends on the op. */
struct kp_fh_args {
	uint64_t fh;		/* non-zero */
	uint64_t length;	/* FH_READ (at most KP_FH_IO_MAX), FH_TRUNCATE (default 0) */
	const uint8_t *data;	/* FH_WRITE: KT_DATA, at most KP_FH_IO_MAX bytes */
	uint32_t data_len;
	int64_t offset;		/* FH_SEEK */
	int whence;		/* FH_SEEK: 0 start (default), 1 current, 2 end (SEEK_SET/CUR/END) */
	int data_only;		/* FH_SYNC */
	int exclusive;		/* FH_LOCK */
	int64_t atime, mtime;	/* FH_UTIME: ns since the epoch */
};

struct kp_walk_args {
	struct kp_field path;	/* STR */
	uint64_t max_depth;	/* KP_WALK_UNLIMITED when absent; 0: PATH alone */
	int nofollow;		/* do not descend into symlinks to directories */
};

/*
 * Decode and check the arguments of a REQUEST record (rec, len) for FH_OPEN,
 * for op one of FH_READ .. FH_CLOSE, and for WALK. Fields of the wrong kind,
 * missing ones, values out of range and (FH_OPEN) flag combinations open(2)
 * cannot honour are refused. Return 0, or -1 with *why set to a message for
 * people (the agent answers it with KP_ERR_BAD_ARGS).
 *
 * FH_OPEN follows Rust's OpenOptions, which Deno's open() uses: at least one
 * of READ, WRITE, APPEND (none of the flags at all: READ); TRUNCATE, CREATE
 * and CREATE_NEW need WRITE or APPEND; TRUNCATE with APPEND only under
 * CREATE_NEW (which then ignores it).
 */
int kp_args_fh_open(const uint8_t *rec, uint32_t len, struct kp_open_args *a, const char **why);
int kp_args_fh(const uint8_t *rec, uint32_t len, uint64_t op, struct kp_fh_args *a, const char **why);
int kp_args_walk(const uint8_t *rec, uint32_t len, struct kp_walk_args *a, const char **why);

#endif
