/* kiln-agent: streams: the requests that outlive their first answer. */
#include "agent_int.h"

/* ---- streams and processes ------------------------------------------------------ */

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

struct stream *stream_new(struct conn *c, enum stream_kind kind, uint32_t id)
{
	struct stream *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->kind = kind;
	s->conn = c;
	s->id = id;
	s->fd = -1;
	s->fd2 = -1;
	s->in_credit = KP_DEFAULT_WINDOW;
	s->out_credit = c->peer_window;
	s->credit[1] = s->credit[2] = c->peer_window;
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
	if (s->kind == ST_EXEC && s->proc) {
		s->proc->st = NULL;
		s->proc->inlen = 0;
	}
	if (s->kind == ST_PORT)
		nports--;
	if (s->kind == ST_WALK)
		walk_free(s->walk);
	if (s->fd >= 0)
		close(s->fd);
	if (s->fd2 >= 0)
		close(s->fd2);
	free(s->inbuf);
	free(s);
}

struct conn *stream_conn(const struct stream *s)
{
	struct conn *c;
	struct stream *t;

	for (c = conns; c; c = c->next)
		for (t = c->streams; t; t = t->next)
			if (t == s)
				return c;
	return NULL;
}
