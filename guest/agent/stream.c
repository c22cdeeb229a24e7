/*
 * kiln-agent: streams, the requests that outlive their first answer. What is
 * the same for every kind lives here (ids, channel 0 offsets and credit,
 * CANCEL, WINDOW); each kind's own behaviour is its struct stream_ops.
 */
#include "agent_int.h"

void fd_close(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

struct stream *stream_find(struct conn *c, uint32_t id)
{
	struct stream *s;

	for (s = c->streams; s; s = s->next)
		if (s->id == id)
			return s;
	return NULL;
}

struct stream *stream_new(struct conn *c, const struct stream_ops *ops, uint32_t id, const char *what)
{
	struct stream *s = calloc(1, ops->size);

	if (!s) {
		send_error(c, id, KP_ERR_OS, ENOMEM, "%s: out of memory", what);
		return NULL;
	}
	s->ops = ops;
	s->conn = c;
	s->id = id;
	s->in_credit = KP_DEFAULT_WINDOW;
	s->next = c->streams;
	c->streams = s;
	c->nstreams++;
	return s;
}

/*
 * Forget stream s. An exec stream's process is detached, not stopped: its
 * output goes on into the rings and its stdin stays open for a later ATTACH;
 * stdin bytes queued but not yet written are dropped with the stream.
 */
void stream_free(struct conn *c, struct stream *s)
{
	struct stream **pp;

	for (pp = &c->streams; *pp; pp = &(*pp)->next)
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	c->nstreams--;
	if (s->ops->release)
		s->ops->release(c->ag, s);
	free(s);
}

struct conn *stream_conn(struct agent *a, const struct stream *s)
{
	struct conn *c;
	struct stream *t;

	for (c = a->conns; c; c = c->next)
		for (t = c->streams; t; t = t->next)
			if (t == s)
				return c;
	return NULL;
}

int buf_append(uint8_t **buf, size_t *len, const uint8_t *data, uint32_t n)
{
	uint8_t *nb = realloc(*buf, *len + n);

	if (!nb)
		return -ENOMEM;
	memcpy(nb + *len, data, n);
	*buf = nb;
	*len += n;
	return 0;
}

int credit_add(uint64_t *cr, uint32_t inc)
{
	if (inc == 0 || *cr + inc > 0xffffffffu)
		return -1;
	*cr += inc;
	return 0;
}

/* DATA or EOF on channel 0 of stream s. */
void stream_input(struct conn *c, struct stream *s, const struct kp_frame *f)
{
	const uint8_t *data = NULL;
	uint64_t off;
	uint32_t n = 0;

	if (f->type == KP_DATA)
		kp_parse_data(f, &off, &data, &n);
	else
		kp_parse_u64(f, &off);
	if (f->channel != KP_CHAN_IN || !s->ops->input || (s->ops->input_ended && s->ops->input_ended(s))) {
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
	s->ops->input(c, s, f, data, n);
	return;
end:
	/* ERROR ends the id; an exec's process runs on, detached. */
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
	if (ch != KP_CHAN_ALL && s->ops->cancel_channel) {
		s->ops->cancel_channel(c, s, ch);
		return;
	}
	/* A file stream has one channel, a wait none: cancelling any is cancelling it. */
	send_error(c, s->id, KP_ERR_CANCELLED, 0, "cancelled");
	stream_free(c, s);
}

int stream_window(struct conn *c, struct stream *s, const struct kp_frame *f)
{
	uint32_t inc;

	kp_parse_window(f, &inc);
	if (!s->ops->window || s->ops->window(s, f->channel, inc) == 0)
		return 0;
	send_error(c, 0, KP_ERR_PROTO, 0, "WINDOW increment %u on id %u overflows", inc, f->id);
	return -1;
}
