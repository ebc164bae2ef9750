/* In-process raw HTTP client for unit tests of the front door: it runs on the
 * server's loop, writes a request as a list of pieces (with a gap between
 * them, so the server sees them in separate reads), keeps every byte it
 * receives, and closes when it has seen `until` (or on EOF, or right after
 * writing when close_after_write is set). Header-only: static functions. */
#ifndef LLMUX_HTTP_TEST_CLIENT_H
#define LLMUX_HTTP_TEST_CLIENT_H

#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "base/util.h"

typedef struct tclient_s tclient_t;
typedef void (*tclient_cb)(tclient_t *cl);

struct tclient_s {
  void *data;
  /* set before tclient_start */
  const char *const *pieces; /* NUL-terminated strings... */
  const size_t *lens;        /* ...or explicit lengths (for NUL bytes), may be NULL */
  size_t npieces;
  unsigned gap_ms;
  const char *until;         /* close once `in` holds it until_count times */
  unsigned until_count;      /* 0 means 1 */
  int close_after_write;
  tclient_cb on_done;        /* after both handles closed */
  /* results */
  llmux_buf_t in;
  int connected, got_eof, got_error;
  unsigned seen;
  /* private */
  uv_tcp_t tcp;
  uv_connect_t connect;
  uv_timer_t timer;
  size_t next, scan_from;
  int closing, nclose;
};

/* memmem without _GNU_SOURCE. */
static const char *tclient_find(const char *hay, size_t n, const char *needle, size_t m) {
  size_t i;
  if (m == 0) return hay;
  for (i = 0; i + m <= n; i++)
    if (hay[i] == needle[0] && memcmp(hay + i, needle, m) == 0) return hay + i;
  return NULL;
}

static void tclient__closed(uv_handle_t *h) {
  tclient_t *cl = h->data;
  if (--cl->nclose == 0 && cl->on_done) cl->on_done(cl);
}

static void tclient_close(tclient_t *cl) {
  if (cl->closing) return;
  cl->closing = 1;
  cl->nclose = 2;
  uv_close((uv_handle_t *)&cl->tcp, tclient__closed);
  uv_close((uv_handle_t *)&cl->timer, tclient__closed);
}

static size_t tclient__len(tclient_t *cl, size_t i) {
  return cl->lens ? cl->lens[i] : strlen(cl->pieces[i]);
}

static void tclient__write_next(tclient_t *cl);

static void tclient__on_gap(uv_timer_t *t) { tclient__write_next(t->data); }

static void tclient__write_next(tclient_t *cl) {
  uv_buf_t b;
  if (cl->closing) return;
  if (cl->next >= cl->npieces) {
    if (cl->close_after_write) tclient_close(cl);
    return;
  }
  b = uv_buf_init((char *)cl->pieces[cl->next], (unsigned)tclient__len(cl, cl->next));
  cl->next++;
  /* Test requests are small: the socket takes them whole. */
  if (b.len > 0 && uv_try_write((uv_stream_t *)&cl->tcp, &b, 1) != (int)b.len) {
    cl->got_error = 1;
    tclient_close(cl);
    return;
  }
  if (cl->next < cl->npieces) uv_timer_start(&cl->timer, tclient__on_gap, cl->gap_ms, 0);
  else tclient__write_next(cl);
}

static void tclient__alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out) {
  tclient_t *cl = h->data;
  llmux_buf_reserve(&cl->in, 65536);
  *out = uv_buf_init(cl->in.base + cl->in.len, (unsigned)(cl->in.cap - cl->in.len - 1));
}

static void tclient__on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  tclient_t *cl = s->data;
  size_t ulen;
  if (nread < 0) {
    if (nread == UV_EOF) cl->got_eof = 1;
    else cl->got_error = 1;
    tclient_close(cl);
    return;
  }
  cl->in.len += (size_t)nread;
  cl->in.base[cl->in.len] = '\0';
  if (cl->until == NULL) return;
  ulen = strlen(cl->until);
  for (;;) {
    const char *hit = tclient_find(cl->in.base + cl->scan_from, cl->in.len - cl->scan_from,
                                   cl->until, ulen);
    if (hit == NULL) break;
    cl->seen++;
    cl->scan_from = (size_t)(hit - cl->in.base) + ulen;
  }
  if (cl->seen >= (cl->until_count ? cl->until_count : 1)) tclient_close(cl);
}

static void tclient__on_connect(uv_connect_t *req, int status) {
  tclient_t *cl = req->data;
  if (status < 0) {
    cl->got_error = 1;
    tclient_close(cl);
    return;
  }
  cl->connected = 1;
  uv_read_start((uv_stream_t *)&cl->tcp, tclient__alloc, tclient__on_read);
  tclient__write_next(cl);
}

static void tclient_start(tclient_t *cl, uv_loop_t *loop, int port) {
  struct sockaddr_in sa;
  uv_ip4_addr("127.0.0.1", port, &sa);
  uv_tcp_init(loop, &cl->tcp);
  uv_timer_init(loop, &cl->timer);
  cl->tcp.data = cl->timer.data = cl->connect.data = cl;
  uv_tcp_connect(&cl->connect, &cl->tcp, (const struct sockaddr *)&sa, tclient__on_connect);
  uv_tcp_nodelay(&cl->tcp, 1);
}

#endif /* LLMUX_HTTP_TEST_CLIENT_H */
