/* kiln-agent: requests: argument helpers, dispatch, frames from the host. */
#include "agent_int.h"

/* ---- request arguments ----------------------------------------------------------- */

/* A copy of the first STR field tag, NUL-terminated (malloc), or NULL. */
char *arg_str(const struct kp_frame *f, uint8_t tag, int *bad)
{
	struct kp_field fl;
	char *s;

	if (kp_rec_find(f->payload, f->len, tag, &fl) != 1)
		return NULL;
	if (fl.kind != KP_K_STR) {
		*bad = 1;
		return NULL;
	}
	s = malloc(fl.len + 1);
	if (s)
		kp_field_str(&fl, s, fl.len + 1);
	else
		*bad = 1;
	return s;
}

uint64_t arg_u64(const struct kp_frame *f, uint8_t tag, uint64_t dflt, int *bad)
{
	struct kp_field fl;
	uint64_t v;
	int b;

	if (kp_rec_find(f->payload, f->len, tag, &fl) != 1)
		return dflt;
	if (fl.kind == KP_K_BOOL && kp_field_bool(&fl, &b) == 0)
		return (uint64_t)b;
	if (kp_field_u64(&fl, &v) == 0)
		return v;
	*bad = 1;
	return dflt;
}

/* Every STR field tag into a NULL-terminated malloc'd vector; count in *n. */
char **arg_list(const struct kp_frame *f, uint8_t tag, size_t *n, int *bad)
{
	struct kp_rec r;
	struct kp_field fl;
	char **v;
	size_t k = 0;

	*n = 0;
	kp_rec_open(&r, f->payload, f->len);
	while (kp_rec_next(&r, &fl) == 1)
		if (fl.tag == tag)
			k++;
	if (k > MAX_ARGV) {
		*bad = 1;
		return NULL;
	}
	v = calloc(k + 1, sizeof(*v));
	if (!v) {
		*bad = 1;
		return NULL;
	}
	kp_rec_open(&r, f->payload, f->len);
	while (kp_rec_next(&r, &fl) == 1) {
		if (fl.tag != tag)
			continue;
		if (fl.kind != KP_K_STR || !(v[*n] = malloc(fl.len + 1))) {
			*bad = 1;
			break;
		}
		kp_field_str(&fl, v[*n], fl.len + 1);
		(*n)++;
	}
	return v;
}

void strv_free(char **v)
{
	size_t i;

	for (i = 0; v && v[i]; i++)
		free(v[i]);
	free(v);
}


/* ---- frames from the host ----------------------------------------------------------- */

void handle_request(struct conn *c, const struct kp_frame *f)
{
	int bad = 0;
	uint64_t op = arg_u64(f, KT_OP, 0, &bad);

	if (stream_find(c, f->id)) {
		send_error(c, f->id, KP_ERR_ID_IN_USE, 0, "request id %u is live", f->id);
		return;
	}
	if (c->nstreams >= MAX_IDS) {
		send_error(c, f->id, KP_ERR_LIMIT, 0, "%d live requests already", MAX_IDS);
		return;
	}
	c->nreq++;
	if (bad || !op) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "request without a U64 OP");
		return;
	}
	switch (op) {
	case KP_OP_HEALTH:	op_health(c, f); break;
	case KP_OP_IDENTITY:	op_identity(c, f); break;
	case KP_OP_SHUTDOWN:	op_shutdown(c, f); break;
	case KP_OP_ENV_GET:
	case KP_OP_ENV_SET:
	case KP_OP_ENV_DELETE:
	case KP_OP_ENV_LIST:	op_env(c, f, op); break;
	case KP_OP_PORT_CONNECT: op_port_connect(c, f); break;
	case KP_OP_PORT_WAIT:	op_port_wait(c, f); break;
	case KP_OP_PORT_LIST:	op_port_list(c, f); break;
	case KP_OP_EXEC:	op_exec(c, f); break;
	case KP_OP_SIGNAL:	op_signal(c, f); break;
	case KP_OP_ATTACH:	op_attach(c, f); break;
	case KP_OP_RESIZE:	op_resize(c, f); break;
	case KP_OP_WAIT:	op_wait(c, f); break;
	case KP_OP_RELEASE:	op_release(c, f); break;
	case KP_OP_PROC_LIST:	op_proc_list(c, f); break;
	case KP_OP_STAT:	op_stat(c, f); break;
	case KP_OP_READDIR:	op_readdir(c, f); break;
	case KP_OP_MKDIR:	op_mkdir(c, f); break;
	case KP_OP_REMOVE:	op_remove(c, f); break;
	case KP_OP_RENAME:	op_rename(c, f); break;
	case KP_OP_FILE_WRITE:	op_file_write(c, f); break;
	case KP_OP_FILE_READ:	op_file_read(c, f); break;
	case KP_OP_CHMOD:
	case KP_OP_CHOWN:
	case KP_OP_LINK:
	case KP_OP_SYMLINK:
	case KP_OP_TRUNCATE:
	case KP_OP_UTIME:	op_path_simple(c, f, op); break;
	case KP_OP_READLINK:
	case KP_OP_REALPATH:	op_path_query(c, f, op); break;
	case KP_OP_UMASK:	op_umask(c, f); break;
	case KP_OP_MKTEMP:	op_mktemp(c, f); break;
	case KP_OP_COPY:	op_copy(c, f); break;
	case KP_OP_WALK:	op_walk(c, f); break;
	case KP_OP_FH_OPEN:	op_fh_open(c, f); break;
	case KP_OP_FH_READ:
	case KP_OP_FH_WRITE:
	case KP_OP_FH_SEEK:
	case KP_OP_FH_STAT:
	case KP_OP_FH_SYNC:
	case KP_OP_FH_TRUNCATE:
	case KP_OP_FH_LOCK:
	case KP_OP_FH_UNLOCK:
	case KP_OP_FH_UTIME:
	case KP_OP_FH_CLOSE:	op_fh(c, f, op); break;
	default:
		send_error(c, f->id, KP_ERR_UNKNOWN_OP, 0, "unknown op 0x%llx", (unsigned long long)op);
	}
}

/* DATA or EOF on channel 0 of stream s. */
void stream_input(struct conn *c, struct stream *s, const struct kp_frame *f)
{
	const uint8_t *data = NULL;
	uint64_t off;
	uint32_t n = 0;
	uint8_t e[KP_HDR_LEN + 8];

	if (f->type == KP_DATA) {
		kp_parse_data(f, &off, &data, &n);
	} else {
		kp_parse_u64(f, &off);
	}
	if (f->channel != KP_CHAN_IN || (s->kind != ST_EXEC && s->kind != ST_FWRITE && s->kind != ST_PORT) ||
	    (s->kind == ST_EXEC && s->proc->in_eof) || (s->kind == ST_PORT && s->in_eof)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "no input channel %u on this stream", f->channel);
		goto end;
	}
	if (off != s->in_off) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "channel 0 offset %llu, expected %llu",
			   (unsigned long long)off, (unsigned long long)s->in_off);
		goto end;
	}
	if (n > s->in_credit) {
		send_error(c, f->id, KP_ERR_CREDIT, 0, "%u bytes beyond the window", n);
		goto end;
	}
	s->in_off += n;
	s->in_credit -= n;
	if (s->kind == ST_FWRITE) {
		while (n) {
			ssize_t w = write(s->fd, data, n);

			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				os_error(c, f->id, "write", "", w < 0 ? errno : ENOSPC);
				goto end;
			}
			data += w;
			n -= (uint32_t)w;
		}
		if (f->type == KP_DATA) {
			s->in_credit += f->len - 8;
			conn_put(c, e, kp_enc_window(e, f->id, 0, f->len - 8));
		} else {
			struct kp_recw w;
			struct stat st;

			if (fsync(s->fd) < 0 || fstat(s->fd, &st) < 0) {
				os_error(c, f->id, "fsync", "", errno);
				goto end;
			}
			rec_begin(&w);
			kp_put_u64(&w, KT_SIZE, (uint64_t)st.st_size);
			rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
			goto end_quiet;
		}
		return;
	}
	if (s->kind == ST_PORT) {
		/* queue for the socket (bounded by the window granted) */
		if (n) {
			uint8_t *nb = realloc(s->inbuf, s->inlen + n);

			if (!nb) {
				send_error(c, f->id, KP_ERR_OS, ENOMEM, "port: out of memory");
				goto end;
			}
			s->inbuf = nb;
			memcpy(s->inbuf + s->inlen, data, n);
			s->inlen += n;
		}
		if (f->type == KP_EOF)
			s->in_eof = 1;
		port_pump_in(c, s);
		return;
	}
	/* exec: queue for the process's stdin (bounded by the window granted) */
	if (n) {
		struct proc *p = s->proc;
		uint8_t *nb = realloc(p->inbuf, p->inlen + n);

		if (!nb) {
			send_error(c, f->id, KP_ERR_OS, ENOMEM, "stdin: out of memory");
			goto end;
		}
		p->inbuf = nb;
		memcpy(p->inbuf + p->inlen, data, n);
		p->inlen += n;
		if (p->fd[0] < 0) {	/* stdin already gone: the bytes are consumed */
			s->in_credit += p->inlen;
			conn_put(c, e, kp_enc_window(e, f->id, 0, (uint32_t)p->inlen));
			p->inlen = 0;
		}
	}
	if (f->type == KP_EOF)
		s->proc->in_eof = 1;
	proc_pump_in(s->proc);
	return;
end:
	/* ERROR ends the id; an exec's process runs on, detached. */
end_quiet:
	stream_free(c, s);
}

/*
 * CANCEL: the whole request (KP_CHAN_ALL) ends with ERROR CANCELLED (an exec
 * stream detaches; the process runs on); one channel stops: output channels
 * send nothing more (their unsent bytes stay in the ring for a later
 * ATTACH), an input channel ends as with EOF, its queued bytes dropped.
 */
void stream_cancel(struct conn *c, struct stream *s, uint16_t ch)
{
	if (ch != KP_CHAN_ALL && s->kind == ST_EXEC) {
		struct proc *p = s->proc;

		if (ch == KP_CHAN_IN) {
			p->inlen = 0;
			p->in_eof = 1;
			s->in_credit = 0;
			proc_pump_in(p);
		} else {
			s->cancelled[ch] = 1;
			proc_flush(p);
		}
		return;
	}
	if (ch != KP_CHAN_ALL && s->kind == ST_PORT) {
		if (ch == KP_CHAN_IN) {
			s->inlen = 0;
			s->in_eof = 1;
			s->in_credit = 0;
			port_pump_in(c, s);
		} else if (!s->out_eof) {
			shutdown(s->fd, SHUT_RD);
			s->out_eof = 1;
			port_maybe_done(c, s);
		}
		return;
	}
	/* A file stream has one channel, a wait none: cancelling any is cancelling it. */
	send_error(c, s->id, KP_ERR_CANCELLED, 0, "cancelled");
	stream_free(c, s);
}

/* Returns -1 when the connection must close after flushing. */
int handle_frame(struct conn *c, const struct kp_frame *f)
{
	struct stream *s;
	uint8_t b[KP_HDR_LEN + 8];

	if (!c->got_hello) {
		struct kp_field fl;
		uint64_t v;

		if (f->type != KP_HELLO) {
			send_error(c, 0, KP_ERR_PROTO, 0, "%s before HELLO", kp_type_name(f->type));
			return -1;
		}
		c->got_hello = 1;
		if (kp_rec_find(f->payload, f->len, KT_VERSION, &fl) == 1 &&
		    (kp_field_u64(&fl, &v) || v < 1)) {
			send_error(c, 0, KP_ERR_VERSION, 0, "no common protocol version (agent speaks %d)", KP_VERSION);
			return -1;
		}
		if (kp_rec_find(f->payload, f->len, KT_WINDOW, &fl) == 1 && kp_field_u64(&fl, &v) == 0 &&
		    v <= 0xffffffffu)
			c->peer_window = (uint32_t)v;
		if (kp_rec_find(f->payload, f->len, KT_MAX_FRAME, &fl) == 1 && kp_field_u64(&fl, &v) == 0) {
			if (v < KP_MIN_PAYLOAD_CAP) {
				send_error(c, 0, KP_ERR_PROTO, 0, "max_frame %llu below %u",
					   (unsigned long long)v, KP_MIN_PAYLOAD_CAP);
				return -1;
			}
			c->peer_max = v > KP_MAX_PAYLOAD ? KP_MAX_PAYLOAD : (uint32_t)v;
		}
		return 0;
	}
	switch (f->type) {
	case KP_HELLO:
		send_error(c, 0, KP_ERR_PROTO, 0, "second HELLO");
		return -1;
	case KP_PING: {
		uint64_t v;

		kp_parse_u64(f, &v);
		conn_put(c, b, kp_enc_ping(b, KP_PONG, v));
		return 0;
	}
	case KP_PONG:
		return 0;
	case KP_REQUEST:
		handle_request(c, f);
		return 0;
	case KP_CANCEL:
		s = stream_find(c, f->id);
		if (s)
			stream_cancel(c, s, f->channel);
		return 0;	/* no stream: raced with the request's end */
	case KP_DATA:
	case KP_EOF:
		/* A stream that already ended: drop, the bytes may have been in flight. */
		s = stream_find(c, f->id);
		if (s)
			stream_input(c, s, f);
		return 0;
	case KP_WINDOW: {
		uint32_t inc;
		uint64_t *cr = NULL;

		kp_parse_window(f, &inc);
		s = stream_find(c, f->id);
		if (!s)
			return 0;
		if (s->kind == ST_EXEC && f->channel)
			cr = &s->credit[f->channel];
		else if ((s->kind == ST_FREAD || s->kind == ST_PORT) && f->channel == KP_CHAN_OUT)
			cr = &s->out_credit;
		if (!cr)
			return 0;
		if (inc == 0 || *cr + inc > 0xffffffffu) {
			send_error(c, 0, KP_ERR_PROTO, 0, "WINDOW increment %u on id %u overflows", inc, f->id);
			return -1;
		}
		*cr += inc;
		if (s->kind == ST_EXEC && f->channel) {
			struct proc *p = s->proc;
			uint64_t *a = &s->acked[f->channel];

			/* Consumed by the host: block mode may now overwrite it. */
			*a = *a + inc < s->sent[f->channel] ? *a + inc : s->sent[f->channel];
			if (*a > p->keep[f->channel])
				p->keep[f->channel] = *a;
		}
		return 0;
	}
	default:	/* RESPONSE, ERROR, EVENT: only the agent sends those */
		send_error(c, 0, KP_ERR_PROTO, 0, "%s from the host", kp_type_name(f->type));
		return -1;
	}
}
