/* The HTTP/1.1 front door (core/http_server.h) fed raw byte streams over
 * loopback TCP, by up to three clients at once whose reads arrive cut at
 * varying places and interleaved in varying order, against a handler that
 * answers each request in one of several ways: at once or later, whole or
 * streamed, with or without a body, keeping the connection or closing it.
 *
 * Input: two control bytes, then the clients' bytes; the two bytes "\0\0"
 * separate one client's stream from the next (NUL is never valid HTTP, so a
 * stream of real requests cannot hold them).
 *   byte 0, bits 0-1: clients (1-3; 3 means 3);
 *           bit 2: the server with small limits (max_header 512, max_body 2048);
 *           bit 3: clients half-close as soon as their bytes are written
 *                  (else once the server has gone quiet);
 *           bits 4-7: seed of the handler's choices.
 *   byte 1: how each stream is cut into writes (see fuzz.h), and the order
 *           in which the clients write.
 *
 * One event loop, its two servers and an idle handle (the "tick", one per
 * loop iteration) live for the whole process; each input starts its clients
 * and runs the loop until every connection, client and request it made is
 * gone, then checks that only those three handles are left.
 *
 * Properties: every request the handler sees keeps the header's promises
 * (NUL-terminated strings, trimmed header values, body within max_body);
 * whatever the clients send, each one receives a well-formed sequence of
 * HTTP/1.1 responses (checked with llhttp), nothing after a response that
 * said Connection: close, and the server finishes with no handle, request
 * or byte leaked. */
#define _GNU_SOURCE /* memmem */
#include <llhttp.h>
#include <string.h>
#include <uv.h>

#include "fuzz.h"
#include "http/http_server.h"
#include "base/log.h"
#include "base/util.h"

#define MAX_CLIENTS 3
#define MAX_WORK 16
#define QUIET_TICKS 3
#define SMALL_MAX_HEADER 512
#define SMALL_MAX_BODY 2048

typedef struct {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_shutdown_t sreq;
  const uint8_t *data;
  size_t len, off;
  fuzz_split_t split;
  llmux_buf_t in;
  int connected, shut, closing, closed;
} client_t;

/* A request answered over several ticks. */
typedef enum { W_DEFER, W_STREAM } work_kind_t;

typedef struct {
  llmux_http_req_t *req; /* NULL: free slot */
  work_kind_t kind;
  unsigned steps;        /* ticks left */
  int failed;            /* a write failed: wait for on_abort */
  int waiting_drain;
} work_t;

static struct {
  uv_loop_t loop;
  llmux_http_server_t srv[2];
  uv_idle_t tick;
  int ready;
} g;

/* The input being run. */
static struct {
  client_t clients[MAX_CLIENTS];
  size_t nclients, nclosed;
  work_t work[MAX_WORK];
  uint32_t rng, order;
  int early_shut;
  size_t max_body;
  unsigned long ticks, max_ticks;
  unsigned quiet;
  size_t seen_in;
} R;

/* ---- the handler --------------------------------------------------------- */

static void check_str(llmux_str_t s, const char *what) {
  FUZZ_CHECK(s.base != NULL && s.base[s.len] == '\0', "%s is not NUL-terminated", what);
}

static int is_blank(char c) { return c == ' ' || c == '\t'; }

/* What http_server.h promises about a request handed to the handler. */
static void check_request(const llmux_http_req_t *req) {
  size_t i;
  FUZZ_CHECK(req->method != NULL && req->version_major == 1, "method or version");
  check_str(req->target, "target");
  check_str(req->path, "path");
  check_str(req->query, "query");
  check_str(req->body, "body");
  FUZZ_CHECK(req->body.len <= R.max_body, "a body of %zu bytes", req->body.len);
  FUZZ_CHECK(req->nheaders == 0 || req->headers != NULL, "headers");
  for (i = 0; i < req->nheaders; i++) {
    llmux_str_t n = req->headers[i].name, v = req->headers[i].value;
    check_str(n, "header name");
    check_str(v, "header value");
    FUZZ_CHECK(n.len > 0, "an empty header name");
    FUZZ_CHECK(v.len == 0 || (!is_blank(v.base[0]) && !is_blank(v.base[v.len - 1])),
               "header value not trimmed: [%s]", v.base);
    FUZZ_CHECK(memchr(v.base, '\r', v.len) == NULL && memchr(v.base, '\n', v.len) == NULL,
               "CR or LF in a header value");
  }
  if (req->nheaders > 0)
    FUZZ_CHECK(llmux_http_header(req, req->headers[0].name.base) != NULL, "header lookup");
}

static work_t *work_new(llmux_http_req_t *req, work_kind_t kind, unsigned steps) {
  size_t i;
  for (i = 0; i < MAX_WORK; i++) {
    work_t *w = &R.work[i];
    if (w->req != NULL) continue;
    memset(w, 0, sizeof *w);
    w->req = req;
    w->kind = kind;
    w->steps = steps;
    req->data = w;
    return w;
  }
  return NULL;
}

static void on_abort(llmux_http_req_t *req) {
  work_t *w = req->data;
  FUZZ_CHECK(w != NULL && w->req == req, "on_abort for a request we do not hold");
  w->req = NULL;
}

static void on_drain(llmux_http_req_t *req) {
  work_t *w = req->data;
  if (w != NULL && w->req == req) w->waiting_drain = 0;
}

/* A short description of the request, the body of most answers. */
static void describe(llmux_http_req_t *req, llmux_buf_t *b) {
  llmux_buf_printf(b, "%s %s q=%zu h=%zu k=%d b=%zu|", req->method, req->path.base,
                   req->query.len, req->nheaders, req->keep_alive, req->body.len);
}

static void respond_describe(llmux_http_req_t *req, int status) {
  static const llmux_http_header_t hdrs[] = {
    LLMUX_HTTP_HEADER_LIT("Content-Type", "text/plain"),
    LLMUX_HTTP_HEADER_LIT("Content-Length", "5"),          /* the server's: dropped */
    LLMUX_HTTP_HEADER_LIT("X-Forged", "a\r\nSet-Cookie: x"), /* CR LF: dropped */
  };
  llmux_buf_t b = {0};
  describe(req, &b);
  llmux_http_respond_buf(req, status, hdrs, LLMUX_COUNTOF(hdrs), &b);
  llmux_buf_free(&b);
}

static void start_stream(llmux_http_req_t *req, unsigned steps) {
  static const llmux_http_header_t hdrs[] = {
    LLMUX_HTTP_HEADER_LIT("Content-Type", "text/event-stream"),
  };
  work_t *w = work_new(req, W_STREAM, steps);
  if (w == NULL) {
    respond_describe(req, 503);
    return;
  }
  req->on_abort = on_abort;
  req->on_drain = on_drain;
  if (llmux_http_start(req, 200, hdrs, LLMUX_COUNTOF(hdrs)) < 0) w->failed = 1;
}

static void on_request(llmux_http_req_t *req) {
  uint32_t choice = fuzz_rand(&R.rng) % 9;
  check_request(req);
  req->data = NULL;
  switch (choice) {
    case 0: respond_describe(req, 200); break;
    case 1: { /* echo the body, owned */
      llmux_buf_t b = {0};
      llmux_http_req_take_body(req, &b);
      FUZZ_CHECK(req->body.len == 0, "the body stayed after take_body");
      llmux_http_respond_buf(req, 200, NULL, 0, &b);
      llmux_buf_free(&b);
      break;
    }
    case 2: /* an error quoting what the client sent */
      llmux_http_send_error(req, 400 + (int)(fuzz_rand(&R.rng) % 30), "invalid_request_error",
                            "fuzz", req->path.base,
                            req->nheaders ? req->headers[0].value.base : NULL);
      break;
    case 3: req->keep_alive = 0; respond_describe(req, 200); break;
    case 4: respond_describe(req, (fuzz_rand(&R.rng) & 1) ? 204 : 304); break;
    case 5: { /* big enough not to fit the socket at once */
      size_t n = 200 * 1024;
      char *big = malloc(n);
      memset(big, 'x', n);
      llmux_http_respond(req, 200, NULL, 0, big, n);
      free(big);
      break;
    }
    case 6: case 7: start_stream(req, 1 + fuzz_rand(&R.rng) % 5); break;
    default: {
      work_t *w = work_new(req, W_DEFER, 1 + fuzz_rand(&R.rng) % 4);
      if (w == NULL) respond_describe(req, 503);
      else req->on_abort = on_abort;
    }
  }
}

/* One tick of a request answered over time. */
static void work_step(work_t *w) {
  llmux_http_req_t *req = w->req;
  int rc;
  if (w->failed || w->waiting_drain) return;
  if (w->steps > 0) w->steps--;
  if (w->kind == W_DEFER) {
    if (w->steps > 0) return;
    w->req = NULL;
    respond_describe(req, 200);
    return;
  }
  if (w->steps == 0) {
    w->req = NULL;
    llmux_http_end(req);
    return;
  }
  switch (w->steps % 3) {
    case 0: rc = llmux_http_write(req, "data: {\"x\":1}\n\n", 16); break;
    case 1: rc = llmux_http_write(req, "", 0); break;
    default: {
      llmux_buf_t b = {0};
      llmux_buf_append(&b, "data: ", 6);
      describe(req, &b);
      llmux_buf_append(&b, "\n\n", 2);
      rc = llmux_http_write_buf(req, &b);
      FUZZ_CHECK(b.len == 0, "write_buf left bytes in the buffer");
      llmux_buf_free(&b); /* the caller's again when it all went at once */
    }
  }
  if (rc < 0) w->failed = 1;
  else if (rc > 256 * 1024) w->waiting_drain = 1;
}

static unsigned work_active(void) {
  unsigned n = 0, i;
  for (i = 0; i < MAX_WORK; i++) n += R.work[i].req != NULL;
  return n;
}

/* ---- the clients ----------------------------------------------------------- */

static void client_closed(uv_handle_t *h) {
  client_t *c = h->data;
  c->closed = 1;
  R.nclosed++;
}

static void client_close(client_t *c) {
  if (c->closing) return;
  c->closing = 1;
  uv_close((uv_handle_t *)&c->tcp, client_closed);
}

static void client_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out) {
  client_t *c = h->data;
  (void)hint;
  llmux_buf_reserve(&c->in, 65536);
  *out = uv_buf_init(c->in.base + c->in.len, (unsigned)(c->in.cap - c->in.len));
}

static void client_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  client_t *c = s->data;
  (void)buf;
  if (n > 0) c->in.len += (size_t)n;
  else if (n < 0) client_close(c); /* EOF, or a reset */
}

static void client_connected(uv_connect_t *creq, int status) {
  client_t *c = creq->data;
  if (status < 0 || c->closing) {
    client_close(c);
    return;
  }
  c->connected = 1;
  uv_tcp_nodelay(&c->tcp, 1); /* each piece its own segment: no Nagle delay */
  uv_read_start((uv_stream_t *)&c->tcp, client_alloc, client_read);
}

static void client_written(uv_write_t *w, int status) {
  client_t *c = w->data;
  free(w);
  if (status < 0) client_close(c);
}

static void client_shut(uv_shutdown_t *sr, int status) {
  (void)sr;
  (void)status;
}

static void client_write_piece(client_t *c) {
  size_t k = fuzz_split_next(&c->split, c->len - c->off);
  uv_write_t *w = malloc(sizeof *w);
  uv_buf_t b = uv_buf_init((char *)(uintptr_t)(c->data + c->off), (unsigned)k);
  w->data = c;
  c->off += k;
  if (uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, client_written) != 0) {
    free(w);
    client_close(c);
  }
}

static void client_shutdown(client_t *c) {
  c->shut = 1;
  c->sreq.data = c;
  if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, client_shut) != 0) client_close(c);
}

static int client_writing(const client_t *c) {
  return !c->closing && c->connected && c->off < c->len;
}

/* ---- the tick: one per loop iteration -------------------------------------- */

static void count_handle(uv_handle_t *h, void *arg) {
  (void)h;
  ++*(size_t *)arg;
}

static void tick(uv_idle_t *t) {
  size_t i, total_in = 0, handles = 0, first = fuzz_rand(&R.order) % R.nclients;
  int wrote = 0;
  (void)t;
  FUZZ_CHECK(++R.ticks < R.max_ticks, "the run did not finish in %lu ticks", R.ticks);
  for (i = 0; i < MAX_WORK; i++)
    if (R.work[i].req != NULL) work_step(&R.work[i]);
  /* One client writes one piece; which one is the input's choice. */
  for (i = 0; i < R.nclients && !wrote; i++) {
    client_t *c = &R.clients[(first + i) % R.nclients];
    if (client_writing(c)) {
      client_write_piece(c);
      wrote = 1;
    }
  }
  for (i = 0; i < R.nclients; i++) total_in += R.clients[i].in.len;
  if (wrote || work_active() || total_in != R.seen_in) R.quiet = 0;
  else R.quiet++;
  R.seen_in = total_in;
  for (i = 0; i < R.nclients; i++) {
    client_t *c = &R.clients[i];
    if (c->closing || !c->connected || c->shut || c->off < c->len) continue;
    if (R.early_shut || R.quiet >= QUIET_TICKS) client_shutdown(c);
  }
  if (R.nclosed < R.nclients || work_active() > 0) return;
  uv_walk(&g.loop, count_handle, &handles);
  if (handles > 3) return; /* the servers' connections are still closing */
  uv_idle_stop(&g.tick);
  uv_stop(&g.loop);
}

/* ---- checking what the clients received ------------------------------------ */

static int on_response_complete(llhttp_t *p) {
  ++*(unsigned *)p->data;
  return 0;
}

static void check_responses(const client_t *c) {
  llhttp_settings_t s;
  llhttp_t p;
  llhttp_errno_t err;
  unsigned complete = 0;
  /* A response to HEAD announces a body it does not send: llhttp would need
   * to be told which response that is. */
  if (c->len >= 4 && memmem(c->data, c->len, "HEAD", 4) != NULL) return;
  if (c->in.len == 0) return;
  llhttp_settings_init(&s);
  s.on_message_complete = on_response_complete;
  llhttp_init(&p, HTTP_RESPONSE, &s);
  p.data = &complete;
  err = llhttp_execute(&p, c->in.base, c->in.len);
  FUZZ_CHECK(err == HPE_OK, "the client got malformed HTTP (%s: %s) after %u responses:\n%.*s",
             llhttp_errno_name(err), llhttp_get_error_reason(&p), complete, (int)c->in.len,
             c->in.base);
}

/* ---- one input --------------------------------------------------------------- */

static void setup(void) {
  llmux_http_options_t o;
  int i;
  llmux_log_level = -1; /* quiet: inputs are meant to be wrong */
  FUZZ_CHECK(uv_loop_init(&g.loop) == 0, "loop");
  for (i = 0; i < 2; i++) {
    memset(&o, 0, sizeof o);
    o.on_request = on_request;
    if (i == 1) {
      o.max_header = SMALL_MAX_HEADER;
      o.max_body = SMALL_MAX_BODY;
    }
    FUZZ_CHECK(llmux_http_server_init(&g.loop, &g.srv[i], &o) == 0, "server init");
    FUZZ_CHECK(llmux_http_server_listen(&g.srv[i], "127.0.0.1", 0) == 0, "listen");
  }
  uv_idle_init(&g.loop, &g.tick);
  g.ready = 1;
}

/* Splits the clients' bytes at each "\0\0". */
static void split_streams(const uint8_t *p, size_t n, size_t want) {
  size_t i;
  R.nclients = 0;
  for (i = 0; i < want; i++) {
    const uint8_t *sep = i + 1 < want ? memmem(p, n, "\0\0", 2) : NULL;
    size_t len = sep ? (size_t)(sep - p) : n;
    R.clients[R.nclients].data = p;
    R.clients[R.nclients].len = len;
    R.nclients++;
    if (sep == NULL) break;
    p = sep + 2;
    n -= len + 2;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_in_t in = {data, size};
  uint8_t ctl = fuzz_byte(&in), cut = fuzz_byte(&in);
  size_t want = (ctl & 3) ? (size_t)(ctl & 3) : 1, i;
  llmux_http_server_t *srv;
  struct sockaddr_in sa;

  if (!g.ready) setup();
  memset(&R, 0, sizeof R);
  srv = &g.srv[(ctl >> 2) & 1];
  R.max_body = srv->opts.max_body;
  R.early_shut = (ctl >> 3) & 1;
  R.rng = 0x51ed270bu * (1u + (ctl >> 4));
  R.order = 0x2c1b3c6du ^ cut;
  R.max_ticks = 10000 + 64 * (unsigned long)size;
  split_streams(in.p, in.n, want);

  uv_ip4_addr("127.0.0.1", srv->port, &sa);
  for (i = 0; i < R.nclients; i++) {
    client_t *c = &R.clients[i];
    fuzz_split_init(&c->split, cut, (unsigned)i);
    uv_tcp_init(&g.loop, &c->tcp);
    c->tcp.data = c->creq.data = c;
    uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&sa, client_connected);
  }
  uv_idle_start(&g.tick, tick);
  uv_run(&g.loop, UV_RUN_DEFAULT);

  FUZZ_CHECK(g.srv[0].nconns == 0 && g.srv[1].nconns == 0, "connections left open");
  for (i = 0; i < R.nclients; i++) {
    check_responses(&R.clients[i]);
    llmux_buf_free(&R.clients[i].in);
  }
  return 0;
}
