/* Connections: accept, read (through TLS when on), parse with llhttp, hand
 * complete requests to mock_dispatch one at a time, write, close.
 *
 * Requests are answered strictly in order. The parser pauses at the end of
 * each message; bytes that follow (pipelined requests) wait in `in` until the
 * current response is done. Memory of a connection is freed only when both
 * of its handles (tcp, timer) have closed. */
#include "mock.h"

#include <ctype.h>
#include <stdlib.h>

#define MOCK_IN_MAX (8u << 20) /* unparsed input beyond this closes the conn */

static char read_buf[65536]; /* one loop thread: read_cb copies out at once */

static llhttp_settings_t settings;
static int settings_ready;

typedef struct write_req_s {
  uv_write_t req;
  mock_conn_t *conn;
  char data[];
} write_req_t;

static void conn_parse(mock_conn_t *c);

/* ---- parser callbacks: fill c->req ---- */

static mock_conn_t *conn_of(llhttp_t *p) {
  return llmux_container_of(p, mock_conn_t, parser);
}

static int on_message_begin(llhttp_t *p) {
  mock_conn_t *c = conn_of(p);
  mock_req_t *r = c->req;
  r->url.len = r->hdrs.len = r->body.len = 0;
  r->nhdrs = 0;
  mock_knobs_unset(&r->knobs);
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  return llmux_buf_append(&conn_of(p)->req->url, at, len) == 0 ? 0 : -1;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  llmux_buf_t *h = &conn_of(p)->req->hdrs;
  size_t i, start = h->len;
  if (llmux_buf_append(h, at, len) != 0) return -1;
  for (i = start; i < h->len; i++) h->base[i] = (char)tolower((unsigned char)h->base[i]);
  return 0;
}

static int on_header_field_complete(llhttp_t *p) {
  return llmux_buf_append(&conn_of(p)->req->hdrs, "", 1) == 0 ? 0 : -1;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  return llmux_buf_append(&conn_of(p)->req->hdrs, at, len) == 0 ? 0 : -1;
}

/* Finds the start of the last "name\0value" pair and reads x-mock-* knobs. */
static int on_header_value_complete(llhttp_t *p) {
  mock_req_t *r = conn_of(p)->req;
  const char *name, *val;
  size_t vlen;
  if (llmux_buf_append(&r->hdrs, "", 1) != 0) return -1;
  r->nhdrs++;
  val = r->hdrs.base + r->hdrs.len - 1; /* at the value's NUL */
  while (val > r->hdrs.base && val[-1] != '\0') val--;
  name = val - 1;
  while (name > r->hdrs.base && name[-1] != '\0') name--;
  if (strncmp(name, "x-mock-", 7) != 0) return 0;
  vlen = strlen(val);
  while (vlen && (val[vlen - 1] == ' ' || val[vlen - 1] == '\t')) vlen--;
  mock_knob_set(&r->knobs, name + 7, strlen(name + 7), val, vlen); /* bad values are ignored */
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  return llmux_buf_append(&conn_of(p)->req->body, at, len) == 0 ? 0 : -1;
}

static int on_message_complete(llhttp_t *p) {
  return HPE_PAUSED; /* conn_parse dispatches, outside the parser */
}

static void settings_init(void) {
  llhttp_settings_init(&settings);
  settings.on_message_begin = on_message_begin;
  settings.on_url = on_url;
  settings.on_header_field = on_header_field;
  settings.on_header_field_complete = on_header_field_complete;
  settings.on_header_value = on_header_value;
  settings.on_header_value_complete = on_header_value_complete;
  settings.on_body = on_body;
  settings.on_message_complete = on_message_complete;
  settings_ready = 1;
}

/* ---- closing ---- */

static void on_handle_closed(uv_handle_t *h) {
  mock_conn_t *c = h->data;
  if (--c->handles > 0) return;
  if (c->tls) llmux_tls_free(c->tls);
  if (c->req) mock_req_free(c->req);
  llmux_buf_free(&c->in);
  llmux_buf_free(&c->out);
  llmux_buf_free(&c->body);
  llmux_buf_free(&c->slow);
  mock_call_free(&c->call);
  free(c);
}

static void conn_unlink(mock_conn_t *c) {
  mock_server_t *srv = c->srv;
  if (c->prev) c->prev->next = c->next;
  else srv->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = c->next = NULL;
  srv->stats.active--;
}

static int conn_begin_close(mock_conn_t *c) {
  if (c->state == MOCK_CONN_CLOSING) return 0;
  c->state = MOCK_CONN_CLOSING;
  conn_unlink(c);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
  return 1;
}

void mock_conn_close(mock_conn_t *c) {
  if (conn_begin_close(c)) uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

void mock_conn_reset(mock_conn_t *c) {
  if (!conn_begin_close(c)) return;
  if (uv_tcp_close_reset(&c->tcp, on_handle_closed) != 0)
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

/* ---- writing ---- */

static void on_write(uv_write_t *req, int status) {
  write_req_t *w = llmux_container_of(req, write_req_t, req);
  mock_conn_t *c = w->conn;
  free(w);
  c->writes--;
  if (c->state == MOCK_CONN_CLOSING) return;
  if (status < 0) { mock_conn_close(c); return; }
  if (c->writes > 0) return;
  if (c->reset_after_write) mock_conn_reset(c);
  else if (c->close_after_write) mock_conn_close(c);
}

/* Plain bytes to the socket: try at once, queue a copy of the rest. */
static void sock_write(mock_conn_t *c, const uv_buf_t *bufs, unsigned n) {
  size_t total = 0, done = 0, off = 0;
  write_req_t *w;
  uv_buf_t b;
  unsigned i;
  int r;
  for (i = 0; i < n; i++) total += bufs[i].len;
  if (total == 0 || c->state == MOCK_CONN_CLOSING) return;
  if (c->writes == 0) {
    r = uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
    if (r < 0 && r != UV_EAGAIN) { mock_conn_close(c); return; }
    if (r > 0) done = (size_t)r;
    if (done == total) return;
  }
  w = malloc(sizeof(*w) + total - done);
  if (w == NULL) { mock_conn_close(c); return; }
  for (i = 0; i < n; i++) {
    size_t skip = done > bufs[i].len ? bufs[i].len : done;
    done -= skip;
    memcpy(w->data + off, bufs[i].base + skip, bufs[i].len - skip);
    off += bufs[i].len - skip;
  }
  w->conn = c;
  b = uv_buf_init(w->data, (unsigned)off);
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
    free(w);
    mock_conn_close(c);
    return;
  }
  c->writes++;
}

static void tls_flush(mock_conn_t *c) {
  const char *data;
  size_t n;
  while (c->state != MOCK_CONN_CLOSING && (n = llmux_tls_out(c->tls, &data)) > 0) {
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)n);
    sock_write(c, &b, 1);
    llmux_tls_out_consume(c->tls, n);
  }
}

void mock_conn_write(mock_conn_t *c, const uv_buf_t *bufs, unsigned n) {
  unsigned i;
  if (c->tls == NULL) { sock_write(c, bufs, n); return; }
  for (i = 0; i < n; i++) {
    if (bufs[i].len && llmux_tls_write(c->tls, bufs[i].base, bufs[i].len) != 0) {
      mock_conn_close(c);
      return;
    }
  }
  tls_flush(c);
}

void mock_conn_write_buf(mock_conn_t *c, const llmux_buf_t *b) {
  uv_buf_t ub = uv_buf_init(b->base, (unsigned)b->len);
  mock_conn_write(c, &ub, 1);
}

/* ---- timers ---- */

static void on_timer(uv_timer_t *t) {
  mock_conn_t *c = t->data;
  int action = c->timer_action;
  c->timer_action = MOCK_TIMER_NONE;
  switch (action) {
    case MOCK_TIMER_LATENCY: mock_respond(c); break;
    case MOCK_TIMER_STREAM: mock_stream_tick(c); break;
    case MOCK_TIMER_SLOW_HEAD: mock_slow_head_tick(c); break;
    case MOCK_TIMER_RESET: mock_conn_reset(c); break;
    default: break;
  }
}

void mock_conn_timer(mock_conn_t *c, int action, uint64_t ms) {
  if (c->state == MOCK_CONN_CLOSING) return;
  c->timer_action = action;
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

/* ---- reading and parsing ---- */

void mock_conn_done(mock_conn_t *c) {
  if (c->state == MOCK_CONN_CLOSING) return;
  if (!c->keep_alive) { /* stays BUSY: nothing more is parsed */
    if (c->writes == 0) mock_conn_close(c);
    else c->close_after_write = 1;
    return;
  }
  c->state = MOCK_CONN_IDLE;
  if (!c->in_parse) conn_parse(c);
}

/* The request in c->req is complete: log it and answer it. */
static void conn_dispatch(mock_conn_t *c) {
  mock_req_t *r = c->req;
  c->req = mock_req_new(c->srv);
  r->method = llhttp_get_method(&c->parser);
  r->seq = ++c->srv->seq;
  c->keep_alive = llhttp_should_keep_alive(&c->parser);
  c->http10 = llhttp_get_http_major(&c->parser) == 1 && llhttp_get_http_minor(&c->parser) == 0;
  c->state = MOCK_CONN_BUSY;
  mock_dispatch(c, r); /* takes r */
}

static void conn_bad_request(mock_conn_t *c) {
  c->keep_alive = 0;
  c->state = MOCK_CONN_BUSY;
  mock_send_error(c, 400, "invalid_request_error", NULL, NULL, "malformed HTTP request");
  mock_conn_done(c);
}

/* Parses and dispatches requests from data until a response is in
 * progress; returns how many bytes the parser took. */
static size_t parse_bytes(mock_conn_t *c, const char *data, size_t len) {
  size_t used = 0;
  c->in_parse = 1;
  while (c->state == MOCK_CONN_IDLE && used < len) {
    llhttp_errno_t err = llhttp_execute(&c->parser, data + used, len - used);
    if (err == HPE_OK) { used = len; break; }
    if (err != HPE_PAUSED) { conn_bad_request(c); used = len; break; }
    used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
    llhttp_resume(&c->parser);
    conn_dispatch(c);
  }
  c->in_parse = 0;
  return used;
}

/* Parses what waits in c->in (pipelined requests, or input that arrived
 * while a response was in progress). */
static void conn_parse(mock_conn_t *c) {
  c->in_off += parse_bytes(c, c->in.base + c->in_off, c->in.len - c->in_off);
  if (c->state != MOCK_CONN_CLOSING && c->in_off == c->in.len) c->in.len = c->in_off = 0;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  *buf = uv_buf_init(read_buf, sizeof(read_buf));
}

static void conn_peer_gone(mock_conn_t *c) {
  if (c->state == MOCK_CONN_BUSY) c->srv->stats.aborted++;
  mock_conn_close(c);
}

/* Decrypts what TLS has buffered into c->in. 0, or -1 when the conn closed. */
static int tls_input(mock_conn_t *c, const char *data, size_t len) {
  ssize_t n;
  int r;
  if (llmux_tls_feed(c->tls, data, len) != 0) goto fail;
  if (!c->tls_ready) {
    r = llmux_tls_handshake(c->tls);
    tls_flush(c);
    if (r == LLMUX_EAGAIN) return 0;
    if (r != 0) goto fail;
    c->tls_ready = 1;
  }
  while ((n = llmux_tls_read(c->tls, read_buf, sizeof(read_buf))) > 0) {
    if (llmux_buf_append(&c->in, read_buf, (size_t)n) != 0) goto fail;
  }
  if (n == LLMUX_EAGAIN) return 0;
  conn_peer_gone(c); /* close_notify or failure */
  return -1;
fail:
  mock_conn_close(c);
  return -1;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  mock_conn_t *c = s->data;
  if (nread == 0) return;
  if (nread < 0) { conn_peer_gone(c); return; }
  if (c->tls == NULL && c->state == MOCK_CONN_IDLE && c->in.len == 0 && !c->in_parse) {
    /* Common case: parse straight from the read buffer, keep the rest. */
    size_t used = parse_bytes(c, buf->base, (size_t)nread);
    if (c->state != MOCK_CONN_CLOSING && used < (size_t)nread &&
        llmux_buf_append(&c->in, buf->base + used, (size_t)nread - used) != 0)
      mock_conn_close(c);
    return;
  }
  if (c->tls != NULL) {
    if (tls_input(c, buf->base, (size_t)nread) != 0) return;
  } else if (llmux_buf_append(&c->in, buf->base, (size_t)nread) != 0) {
    mock_conn_close(c);
    return;
  }
  if (c->in.len - c->in_off > MOCK_IN_MAX) { mock_conn_close(c); return; }
  if (c->state == MOCK_CONN_IDLE && !c->in_parse) conn_parse(c);
}

static int conn_init(mock_server_t *srv, mock_conn_t *c) {
  if (uv_tcp_init(srv->loop, &c->tcp) != 0) return -1;
  c->tcp.data = c;
  c->handles = 1;
  if (uv_timer_init(srv->loop, &c->timer) != 0) return -1;
  c->timer.data = c;
  c->handles = 2;
  return 0;
}

void mock_conn_accept(mock_server_t *srv) {
  mock_conn_t *c = llmux_xcalloc(1, sizeof(*c));
  if (!settings_ready) settings_init();
  c->srv = srv;
  if (conn_init(srv, c) != 0) goto fail;
  if (uv_accept((uv_stream_t *)&srv->listener, (uv_stream_t *)&c->tcp) != 0) goto fail;
  uv_tcp_nodelay(&c->tcp, 1);
  if (srv->tls && llmux_tls_new(&c->tls, srv->tls, NULL) != 0) goto fail;
  llhttp_init(&c->parser, HTTP_REQUEST, &settings);
  c->req = mock_req_new(srv);
  c->next = srv->conns;
  if (c->next) c->next->prev = c;
  srv->conns = c;
  srv->stats.connections++;
  srv->stats.active++;
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) mock_conn_close(c);
  return;
fail:
  /* Not linked yet: close what was opened without touching the list. */
  c->state = MOCK_CONN_CLOSING;
  if (c->handles == 0) { free(c); return; }
  if (c->handles == 2) uv_close((uv_handle_t *)&c->timer, on_handle_closed);
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}
