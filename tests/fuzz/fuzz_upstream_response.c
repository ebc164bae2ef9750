/* The upstream client's response parsing (core/upstream.c) fed arbitrary
 * responses by a mock provider over loopback TCP. The parser is private to
 * upstream.c, so it is driven the way the proxy drives it: a request through
 * llmux_upstream_start to 127.0.0.1, answered with the input's bytes, cut
 * into reads at varying places.
 *
 * Input: two control bytes, then the response bytes.
 *   byte 0, bits 0-1: method: GET, POST, HEAD, POST;
 *           bit 2: the mock answers before it has read the request;
 *           bit 3: the caller pauses in on_head and resumes a few ticks later;
 *           bit 4: a second request follows on the same pool from inside
 *                  on_done (a pooled connection the mock has closed: the
 *                  stale-connection retry);
 *           bits 5-7: cancel after that many on_body calls (0: never).
 *   byte 1: how the response is cut into writes (see fuzz.h).
 *
 * The loop, the mock's listener and an idle handle (the "tick", one per loop
 * iteration) live for the whole process; each input makes its own pool
 * (numeric host, no resolver traffic), runs until the pool has closed and
 * the mock's connections are gone, and checks that only those two handles
 * are left.
 *
 * Properties (upstream.h): on_done comes exactly once for a request that
 * was not cancelled, with an HTTP status >= 200 or a negative error that
 * says why; nothing after on_done or cancel; at most one head, before any
 * body; no body for HEAD; the head's strings are readable; the pool closes
 * every connection it opened. */
#include <string.h>
#include <uv.h>

#include "fuzz.h"
#include "net/upstream.h"
#include "base/log.h"
#include "base/util.h"

#define MAX_MOCK 4

/* Where the bytes handed to callbacks are read, so that ASan checks them. */
static volatile unsigned sink;

typedef struct {
  uv_tcp_t tcp;
  uv_shutdown_t sreq;
  size_t off;           /* response bytes written */
  fuzz_split_t split;
  int writing, shut, closing;
} mock_conn_t;

typedef struct {
  llmux_upstream_req_t req;
  uv_buf_t body;
  int started, done, cancelled;
  unsigned heads, bodies;
  uint64_t body_bytes;
} call_t;

static struct {
  uv_loop_t loop;
  uv_tcp_t listener;
  int port;
  uv_idle_t tick;
  int ready;
} g;

/* The input being run. */
static struct {
  const uint8_t *resp;
  size_t len;
  uint8_t cut;
  int eager, pause, second, head;
  unsigned cancel_after;
  const char *method;
  mock_conn_t mock[MAX_MOCK];
  size_t nmock, nmock_closed;
  call_t calls[2];
  unsigned pause_ticks;
  llmux_upstream_t *up;
  int pool_closing, pool_closed;
  unsigned long ticks, max_ticks;
} R;

/* ---- the mock provider ----------------------------------------------------- */

static void mock_closed(uv_handle_t *h) {
  (void)h;
  R.nmock_closed++;
}

static void mock_close(mock_conn_t *m) {
  if (m->closing) return;
  m->closing = 1;
  uv_close((uv_handle_t *)&m->tcp, mock_closed);
}

static void mock_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out) {
  static char sink[65536];
  (void)h;
  (void)hint;
  *out = uv_buf_init(sink, sizeof sink);
}

/* The request is read and dropped; the client's EOF (or reset) ends it. */
static void mock_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  mock_conn_t *m = s->data;
  (void)buf;
  if (n > 0) m->writing = 1;
  else if (n < 0) mock_close(m);
}

static void mock_written(uv_write_t *w, int status) {
  mock_conn_t *m = w->data;
  free(w);
  if (status < 0) mock_close(m);
}

static void mock_shut(uv_shutdown_t *sr, int status) {
  (void)sr;
  (void)status;
}

/* One piece per tick, then FIN. */
static void mock_step(mock_conn_t *m) {
  if (m->closing || !m->writing || m->shut) return;
  if (m->off < R.len) {
    size_t k = fuzz_split_next(&m->split, R.len - m->off);
    uv_write_t *w = malloc(sizeof *w);
    uv_buf_t b = uv_buf_init((char *)(uintptr_t)(R.resp + m->off), (unsigned)k);
    w->data = m;
    m->off += k;
    if (uv_write(w, (uv_stream_t *)&m->tcp, &b, 1, mock_written) != 0) {
      free(w);
      mock_close(m);
    }
    return;
  }
  m->shut = 1;
  if (uv_shutdown(&m->sreq, (uv_stream_t *)&m->tcp, mock_shut) != 0) mock_close(m);
}

static void mock_accept(uv_stream_t *ls, int status) {
  mock_conn_t *m;
  if (status < 0) return;
  /* Two requests, each maybe retried once: four connections at most. */
  FUZZ_CHECK(R.nmock < MAX_MOCK, "the pool opened more than %d connections", MAX_MOCK);
  m = &R.mock[R.nmock++];
  memset(m, 0, sizeof *m);
  uv_tcp_init(&g.loop, &m->tcp);
  m->tcp.data = m;
  m->sreq.data = m;
  FUZZ_CHECK(uv_accept(ls, (uv_stream_t *)&m->tcp) == 0, "accept");
  uv_tcp_nodelay(&m->tcp, 1); /* each piece its own segment: no Nagle delay */
  fuzz_split_init(&m->split, R.cut, (unsigned)R.nmock);
  m->writing = R.eager;
  uv_read_start((uv_stream_t *)&m->tcp, mock_alloc, mock_read);
}

/* ---- the caller -------------------------------------------------------------- */

static void start_call(call_t *c);

static call_t *call_of(llmux_upstream_req_t *req) {
  return llmux_container_of(req, call_t, req);
}

static void on_head(llmux_upstream_req_t *req, int status, const llmux_str_t *h, size_t n) {
  call_t *c = call_of(req);
  size_t i, j;
  FUZZ_CHECK(!c->done && !c->cancelled, "on_head after the end");
  FUZZ_CHECK(++c->heads == 1, "a second head");
  FUZZ_CHECK(c->bodies == 0, "a head after body bytes");
  FUZZ_CHECK(status >= 200 && status <= 999 && req->status == status, "status %d", status);
  FUZZ_CHECK(n <= 128, "%zu headers", n);
  for (i = 0; i < 2 * n; i++) /* every byte is readable (ASan) */
    for (j = 0; j < h[i].len; j++) sink += (unsigned char)h[i].base[j];
  if (R.pause) {
    llmux_upstream_pause(req);
    R.pause_ticks = 1 + R.cut % 4;
  }
}

static void on_body(llmux_upstream_req_t *req, const char *data, size_t len) {
  call_t *c = call_of(req);
  FUZZ_CHECK(!c->done && !c->cancelled, "on_body after the end");
  FUZZ_CHECK(c->heads == 1, "body bytes before the head");
  FUZZ_CHECK(!R.head, "a body for HEAD");
  if (len > 0) sink += (unsigned char)data[0] + (unsigned char)data[len - 1];
  c->bodies++;
  c->body_bytes += len;
  if (R.cancel_after != 0 && c->bodies >= R.cancel_after) {
    llmux_upstream_cancel(req);
    c->cancelled = 1;
  }
}

static void on_read_end(llmux_upstream_req_t *req) {
  call_t *c = call_of(req);
  FUZZ_CHECK(!c->done && !c->cancelled, "on_read_end after the end");
}

static void on_done(llmux_upstream_req_t *req, int status) {
  call_t *c = call_of(req);
  FUZZ_CHECK(!c->done && !c->cancelled, "on_done twice, or after cancel");
  c->done = 1;
  if (status > 0) {
    FUZZ_CHECK(status >= 200 && status == req->status && c->heads == 1, "done with %d", status);
    FUZZ_CHECK(req->error[0] == '\0', "success with an error: %s", req->error);
  } else {
    FUZZ_CHECK(status < 0 && req->error[0] != '\0', "failure %d without a reason", status);
  }
  FUZZ_CHECK(req->bytes_received >= c->body_bytes, "more body than bytes received");
  if (c == &R.calls[0] && R.second) start_call(&R.calls[1]);
}

static void start_call(call_t *c) {
  llmux_upstream_req_t *req = &c->req;
  llmux_upstream_req_init(req);
  req->host = "127.0.0.1";
  req->port = (uint16_t)g.port;
  req->method = R.method;
  req->path = "/v1/chat/completions";
  req->headers = "Content-Type: application/json\r\nX-Fuzz: 1\r\n";
  req->headers_len = strlen(req->headers);
  if (strcmp(R.method, "POST") == 0) {
    c->body = uv_buf_init((char *)"{\"model\":\"m\"}", 13);
    req->body = &c->body;
    req->nbody = 1;
  }
  req->on_head = on_head;
  req->on_body = on_body;
  req->on_done = on_done;
  req->on_read_end = on_read_end;
  c->started = 1;
  FUZZ_CHECK(llmux_upstream_start(R.up, req) == 0, "start: %s", req->error);
}

/* ---- the tick ---------------------------------------------------------------- */

static void count_handle(uv_handle_t *h, void *arg) {
  (void)h;
  ++*(size_t *)arg;
}

static void pool_closed(llmux_upstream_t *up) {
  (void)up;
  R.pool_closed = 1;
}

static int calls_over(void) {
  size_t i;
  for (i = 0; i < 2; i++) {
    const call_t *c = &R.calls[i];
    if (c->started && !c->done && !c->cancelled) return 0;
  }
  return !R.second || R.calls[1].started || R.calls[0].cancelled;
}

static void tick(uv_idle_t *t) {
  size_t i, handles = 0;
  (void)t;
  FUZZ_CHECK(++R.ticks < R.max_ticks, "the run did not finish in %lu ticks", R.ticks);
  for (i = 0; i < R.nmock; i++) mock_step(&R.mock[i]);
  if (R.pause_ticks > 0 && --R.pause_ticks == 0) {
    for (i = 0; i < 2; i++)
      if (R.calls[i].started && !R.calls[i].done && !R.calls[i].cancelled)
        llmux_upstream_resume(&R.calls[i].req);
  }
  if (!R.pool_closing && calls_over()) {
    R.pool_closing = 1;
    llmux_upstream_close(R.up, pool_closed);
  }
  if (!R.pool_closed || R.nmock_closed < R.nmock) return;
  uv_walk(&g.loop, count_handle, &handles);
  if (handles > 2) return; /* something is still closing */
  uv_idle_stop(&g.tick);
  uv_stop(&g.loop);
}

/* ---- one input --------------------------------------------------------------- */

static void setup(void) {
  struct sockaddr_storage ss;
  struct sockaddr_in sa;
  int len = sizeof ss;
  llmux_log_level = -1; /* quiet: inputs are meant to be wrong */
  FUZZ_CHECK(uv_loop_init(&g.loop) == 0, "loop");
  uv_tcp_init(&g.loop, &g.listener);
  uv_ip4_addr("127.0.0.1", 0, &sa);
  FUZZ_CHECK(uv_tcp_bind(&g.listener, (const struct sockaddr *)&sa, 0) == 0, "bind");
  FUZZ_CHECK(uv_listen((uv_stream_t *)&g.listener, 64, mock_accept) == 0, "listen");
  uv_tcp_getsockname(&g.listener, (struct sockaddr *)&ss, &len);
  g.port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  uv_idle_init(&g.loop, &g.tick);
  g.ready = 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const methods[4] = {"GET", "POST", "HEAD", "POST"};
  fuzz_in_t in = {data, size};
  uint8_t ctl = fuzz_byte(&in), cut = fuzz_byte(&in);
  llmux_dns_options_t dns;
  llmux_upstream_options_t opts;

  if (!g.ready) setup();
  memset(&R, 0, sizeof R);
  R.resp = in.p;
  R.len = in.n;
  R.cut = cut;
  R.method = methods[ctl & 3];
  R.head = (ctl & 3) == 2;
  R.eager = (ctl >> 2) & 1;
  R.pause = (ctl >> 3) & 1;
  R.second = (ctl >> 4) & 1;
  R.cancel_after = ctl >> 5;
  R.max_ticks = 10000 + 64 * (unsigned long)size;

  /* Nothing to resolve (a numeric host): no resolv.conf, no hosts file. */
  memset(&dns, 0, sizeof dns);
  dns.resolv_conf = "/dev/null";
  dns.hosts_file = "";
  dns.nameserver = "127.0.0.1:9";
  dns.no_system_fallback = 1;
  memset(&opts, 0, sizeof opts);
  opts.dns = &dns;
  FUZZ_CHECK(llmux_upstream_new(&g.loop, &opts, &R.up) == 0, "pool");
  start_call(&R.calls[0]);
  uv_idle_start(&g.tick, tick);
  uv_run(&g.loop, UV_RUN_DEFAULT);
  return 0;
}
