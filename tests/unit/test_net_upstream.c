/* The upstream client against a scripted in-process server on 127.0.0.1
 * (plain TCP or TLS through llmux_tls's server role), all on one loop. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "net/tls.h"
#include "net/upstream.h"
#include "base/util.h"
#include "test_net_tls_support.h"

/* ---- a scripted server ------------------------------------------------- */

/* For each request (the Nth overall gets scripts[min(N, n-1)]) the server
 * runs a list of steps; a step may first wait delay_ms. */
enum { A_SEND, A_CLOSE, A_RESET, A_END };
typedef struct {
  int action;
  unsigned delay_ms;
  const char *data;
} step_t;
#define SEND(d) { A_SEND, 0, d }
#define SEND_AFTER(ms, d) { A_SEND, ms, d }
#define CLOSE { A_CLOSE, 0, NULL }
#define RESET_AFTER(ms) { A_RESET, ms, NULL }
#define END { A_END, 0, NULL } /* stay open, wait for the next request */

typedef struct srv_s srv_t;
typedef struct sconn_s {
  srv_t *srv;
  struct sconn_s *next;
  uv_tcp_t tcp;
  uv_timer_t timer;
  llmux_tls_t *tls;
  int handshake_done;
  llmux_buf_t in;
  const step_t *step; /* running script, or NULL */
  int delay_done;
  int closing, pending;
} sconn_t;

struct srv_s {
  uv_loop_t *loop;
  uv_tcp_t listener;
  int port;
  llmux_tls_ctx_t *tls_ctx;
  const step_t *const *scripts;
  size_t nscripts;
  unsigned accepts, requests, peer_closes;
  llmux_buf_t last_request;
  sconn_t *conns;
};

typedef struct {
  uv_write_t w;
  char data[];
} wreq_t;

static void on_swrite(uv_write_t *w, int status) {
  free(w);
}

static void raw_write(sconn_t *sc, const char *data, size_t len) {
  wreq_t *w = malloc(sizeof(*w) + len);
  uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
  memcpy(w->data, data, len);
  if (uv_write(&w->w, (uv_stream_t *)&sc->tcp, &b, 1, on_swrite) != 0) free(w);
}

static void tls_flush(sconn_t *sc) {
  const char *p;
  size_t n = llmux_tls_out(sc->tls, &p);
  if (n == 0) return;
  raw_write(sc, p, n);
  llmux_tls_out_consume(sc->tls, n);
}

static void sconn_write(sconn_t *sc, const char *s) {
  if (sc->tls == NULL) {
    raw_write(sc, s, strlen(s));
    return;
  }
  assert_int_equal(llmux_tls_write(sc->tls, s, strlen(s)), 0);
  tls_flush(sc);
}

static void on_sconn_closed(uv_handle_t *h) {
  sconn_t *sc = h->data, **pp;
  if (--sc->pending > 0) return;
  for (pp = &sc->srv->conns; *pp != sc; pp = &(*pp)->next) {}
  *pp = sc->next;
  llmux_tls_free(sc->tls);
  llmux_buf_free(&sc->in);
  free(sc);
}

static void sconn_close(sconn_t *sc, int reset) {
  if (sc->closing) return;
  sc->closing = 1;
  sc->pending = 2;
  if (reset) uv_tcp_close_reset(&sc->tcp, on_sconn_closed);
  else uv_close((uv_handle_t *)&sc->tcp, on_sconn_closed);
  uv_close((uv_handle_t *)&sc->timer, on_sconn_closed);
}

static void sconn_requests(sconn_t *sc);

static void on_step_timer(uv_timer_t *t);

static void run_steps(sconn_t *sc) {
  while (sc->step != NULL && !sc->closing) {
    const step_t *st = sc->step;
    if (st->delay_ms && !sc->delay_done) {
      sc->delay_done = 1;
      uv_timer_start(&sc->timer, on_step_timer, st->delay_ms, 0);
      return;
    }
    sc->delay_done = 0;
    sc->step++;
    switch (st->action) {
    case A_SEND: sconn_write(sc, st->data); break;
    case A_CLOSE: sconn_close(sc, 0); return;
    case A_RESET: sconn_close(sc, 1); return;
    case A_END:
      sc->step = NULL;
      sconn_requests(sc); /* one may be waiting already */
      return;
    }
  }
}

static void on_step_timer(uv_timer_t *t) {
  run_steps(t->data);
}

/* Takes complete requests (head + Content-Length body) off the input. */
static void sconn_requests(sconn_t *sc) {
  srv_t *srv = sc->srv;
  char *end, *cl;
  size_t head, body = 0, i;

  while (sc->step == NULL && !sc->closing && sc->in.len > 0) {
    end = memmem(sc->in.base, sc->in.len, "\r\n\r\n", 4);
    if (end == NULL) return;
    head = (size_t)(end - sc->in.base) + 4;
    *end = '\0';
    cl = strcasestr(sc->in.base, "\r\ncontent-length:");
    if (cl) body = strtoul(cl + 17, NULL, 10);
    *end = '\r';
    if (sc->in.len < head + body) return;
    srv->last_request.len = 0;
    llmux_buf_append(&srv->last_request, sc->in.base, head + body);
    llmux_buf_consume(&sc->in, head + body);
    i = srv->requests < srv->nscripts ? srv->requests : srv->nscripts - 1;
    srv->requests++;
    sc->step = srv->scripts[i];
    run_steps(sc);
  }
}

static void on_salloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  static char mem[65536];
  *buf = uv_buf_init(mem, sizeof(mem));
}

static void on_sread(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  sconn_t *sc = s->data;
  char plain[16384];
  ssize_t n;
  int r;

  if (nread == 0) return;
  if (nread < 0) {
    sc->srv->peer_closes++;
    sconn_close(sc, 0);
    return;
  }
  if (sc->tls == NULL) {
    llmux_buf_append(&sc->in, buf->base, (size_t)nread);
    sconn_requests(sc);
    return;
  }
  llmux_tls_feed(sc->tls, buf->base, (size_t)nread);
  if (!sc->handshake_done) {
    r = llmux_tls_handshake(sc->tls);
    tls_flush(sc);
    if (r == LLMUX_EAGAIN) return;
    if (r != 0) {
      sconn_close(sc, 0);
      return;
    }
    sc->handshake_done = 1;
  }
  while ((n = llmux_tls_read(sc->tls, plain, sizeof(plain))) > 0)
    llmux_buf_append(&sc->in, plain, (size_t)n);
  sconn_requests(sc);
}

static void on_sconnection(uv_stream_t *l, int status) {
  srv_t *srv = l->data;
  sconn_t *sc = calloc(1, sizeof(*sc));
  assert_int_equal(status, 0);
  sc->srv = srv;
  uv_tcp_init(srv->loop, &sc->tcp);
  uv_timer_init(srv->loop, &sc->timer);
  sc->tcp.data = sc->timer.data = sc;
  assert_int_equal(uv_accept(l, (uv_stream_t *)&sc->tcp), 0);
  if (srv->tls_ctx) assert_int_equal(llmux_tls_new(&sc->tls, srv->tls_ctx, NULL), 0);
  sc->next = srv->conns;
  srv->conns = sc;
  srv->accepts++;
  uv_read_start((uv_stream_t *)&sc->tcp, on_salloc, on_sread);
}

static int bound_port(uv_tcp_t *t) {
  struct sockaddr_storage a;
  int len = sizeof(a);
  assert_int_equal(uv_tcp_getsockname(t, (struct sockaddr *)&a, &len), 0);
  if (a.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&a)->sin6_port);
  return ntohs(((struct sockaddr_in *)&a)->sin_port);
}

/* "127.0.0.1" or "::1" with a port, as a socket address. */
static void ip_addr(const char *ip, int port, struct sockaddr_storage *out) {
  memset(out, 0, sizeof(*out));
  if (strchr(ip, ':')) assert_int_equal(uv_ip6_addr(ip, port, (struct sockaddr_in6 *)out), 0);
  else assert_int_equal(uv_ip4_addr(ip, port, (struct sockaddr_in *)out), 0);
}

static void srv_start(srv_t *srv, uv_loop_t *loop, llmux_tls_ctx_t *tls_ctx,
                      const step_t *const *scripts, size_t n, const char *ip) {
  struct sockaddr_storage a;
  memset(srv, 0, sizeof(*srv));
  srv->loop = loop;
  srv->tls_ctx = tls_ctx;
  srv->scripts = scripts;
  srv->nscripts = n;
  uv_tcp_init(loop, &srv->listener);
  srv->listener.data = srv;
  ip_addr(ip, 0, &a);
  assert_int_equal(uv_tcp_bind(&srv->listener, (struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&srv->listener, 16, on_sconnection), 0);
  srv->port = bound_port(&srv->listener);
}

/* ---- a fake nameserver --------------------------------------------------- */

/* Answers every query on 127.0.0.1 (UDP) as `mode` says; counts them. */
enum { NS_SILENT, NS_NXDOMAIN, NS_LOOPBACK_A };
typedef struct {
  uv_udp_t udp;
  int mode;
  unsigned queries;
  char addr[32]; /* "127.0.0.1:PORT", for llmux_dns_options_t.nameserver */
} fakens_t;

static void on_ns_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  static char mem[2048];
  *buf = uv_buf_init(mem, sizeof(mem));
}

/* The answer echoes the header and the question; NS_LOOPBACK_A adds one A
 * record (127.0.0.1, TTL 60) to A questions and none to the others. */
static void on_ns_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                       const struct sockaddr *from, unsigned flags) {
  static const uint8_t rr_a[] = { 0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1 };
  fakens_t *ns = h->data;
  uint8_t out[600], *q = (uint8_t *)buf->base;
  size_t off = 12, n = (size_t)nread;
  int is_a, answer;
  uv_buf_t b;

  if (nread < 12 || from == NULL) return;
  ns->queries++;
  if (ns->mode == NS_SILENT) return;
  while (off < n && q[off] != 0) off += (size_t)q[off] + 1;
  off += 5; /* root label, QTYPE, QCLASS */
  if (off > n || off + sizeof(rr_a) > sizeof(out)) return;
  is_a = q[off - 4] == 0 && q[off - 3] == 1;
  answer = ns->mode == NS_LOOPBACK_A && is_a;
  memcpy(out, q, off);
  out[2] = 0x81;                                     /* QR, RD */
  out[3] = (uint8_t)(0x80 | (ns->mode == NS_NXDOMAIN ? 3 : 0)); /* RA, rcode */
  memset(out + 4, 0, 8);
  out[5] = 1;                                        /* QDCOUNT */
  out[7] = answer ? 1 : 0;                           /* ANCOUNT */
  if (answer) memcpy(out + off, rr_a, sizeof(rr_a));
  b = uv_buf_init((char *)out, (unsigned)(off + (answer ? sizeof(rr_a) : 0)));
  assert_true(uv_udp_try_send(h, &b, 1, from) >= 0);
}

static void ns_start(fakens_t *ns, uv_loop_t *loop, int mode) {
  struct sockaddr_storage a;
  int len = sizeof(a);
  memset(ns, 0, sizeof(*ns));
  ns->mode = mode;
  ip_addr("127.0.0.1", 0, &a);
  assert_int_equal(uv_udp_init(loop, &ns->udp), 0);
  ns->udp.data = ns;
  assert_int_equal(uv_udp_bind(&ns->udp, (struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_udp_getsockname(&ns->udp, (struct sockaddr *)&a, &len), 0);
  snprintf(ns->addr, sizeof(ns->addr), "127.0.0.1:%d",
           ntohs(((struct sockaddr_in *)&a)->sin_port));
  assert_int_equal(uv_udp_recv_start(&ns->udp, on_ns_alloc, on_ns_recv), 0);
}

static void srv_close(srv_t *srv) {
  sconn_t *sc;
  for (sc = srv->conns; sc != NULL; sc = sc->next) sconn_close(sc, 0);
  uv_close((uv_handle_t *)&srv->listener, NULL);
}

/* ---- the client side --------------------------------------------------- */

typedef struct client_s {
  llmux_upstream_req_t req;
  llmux_upstream_t *up;
  int head_status;
  char x_test[32];
  char head_all[256];         /* "name=value;" for each header, in order */
  int body_before_head;
  llmux_buf_t body;
  unsigned body_calls;
  int done, done_status;
  int cancel_on_body, cancelled;
  int pause_on_head;       /* ms to stay paused after the head; 0: never pause */
  unsigned body_calls_at_resume;
  uv_timer_t resume_timer;
  struct client_s *then; /* started from on_done */
} client_t;

static void on_resume_timer(uv_timer_t *t) {
  client_t *c = t->data;
  c->body_calls_at_resume = c->body_calls;
  llmux_upstream_resume(&c->req);
}

static void on_head(llmux_upstream_req_t *req, int status, const llmux_str_t *h, size_t n) {
  client_t *c = req->data;
  size_t i;
  c->head_status = status;
  for (i = 0; i < n; i++) {
    size_t at = strlen(c->head_all);
    snprintf(c->head_all + at, sizeof c->head_all - at, "%.*s=%.*s;", (int)h[2 * i].len,
             h[2 * i].base, (int)h[2 * i + 1].len, h[2 * i + 1].base);
  }
  for (i = 0; i < n; i++)
    if (h[2 * i].len == 6 && strncasecmp(h[2 * i].base, "x-test", 6) == 0)
      snprintf(c->x_test, sizeof(c->x_test), "%.*s", (int)h[2 * i + 1].len, h[2 * i + 1].base);
  if (c->pause_on_head) {
    llmux_upstream_pause(req);
    uv_timer_start(&c->resume_timer, on_resume_timer, (uint64_t)c->pause_on_head, 0);
  }
}

static void on_body(llmux_upstream_req_t *req, const char *data, size_t len) {
  client_t *c = req->data;
  if (c->head_status == 0) c->body_before_head = 1;
  c->body_calls++;
  llmux_buf_append(&c->body, data, len);
  if (c->cancel_on_body) {
    llmux_upstream_cancel(req);
    c->cancelled = 1;
  }
}

static void on_done(llmux_upstream_req_t *req, int status) {
  client_t *c = req->data;
  c->done++;
  c->done_status = status;
  if (c->then) assert_int_equal(llmux_upstream_start(c->up, &c->then->req), 0);
}

static void client_init(client_t *c, llmux_upstream_t *up, const char *host, int port) {
  memset(c, 0, sizeof(*c));
  llmux_upstream_req_init(&c->req);
  c->up = up;
  c->req.data = c;
  c->req.host = host;
  c->req.port = (uint16_t)port;
  c->req.path = "/v1/test";
  c->req.first_byte_timeout_ms = 2000;
  c->req.total_timeout_ms = 4000;
  c->req.connect_timeout_ms = 2000;
  c->req.on_head = on_head;
  c->req.on_body = on_body;
  c->req.on_done = on_done;
}

static int body_is(const client_t *c, const char *s) {
  return c->body.len == strlen(s) && memcmp(c->body.base, s, c->body.len) == 0;
}

/* ---- per-test harness -------------------------------------------------- */

/* What the pool's resolver sees in a DNS test: a fake nameserver (never
 * the real one: no system fallback), a hosts file, and the server address. */
typedef struct {
  int ns_mode;       /* how the fake nameserver answers (NS_SILENT: never) */
  const char *hosts; /* hosts file content; NULL: none */
  const char *srv_ip; /* NULL: 127.0.0.1 */
} dns_setup_t;

typedef struct {
  uv_loop_t loop;
  srv_t srv;
  llmux_upstream_t *up;
  uv_timer_t watchdog;
  int timed_out, pool_closed;
  llmux_tls_ctx_t *cctx, *sctx;
  fakens_t ns;       /* started by DNS tests */
  int has_ns;
  char hosts_path[64];
  llmux_dns_options_t dopts;
  llmux_upstream_options_t uopts;
} t_t;

static const llmux_upstream_options_t *next_opts; /* for the next t_init */
static const dns_setup_t *next_dns;               /* for the next t_init */

static void write_hosts(t_t *t, const char *content) {
  int fd;
  snprintf(t->hosts_path, sizeof(t->hosts_path), "/tmp/llmux-up-hosts-XXXXXX");
  fd = mkstemp(t->hosts_path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
  close(fd);
}

/* Pool options pointing the resolver at the test's fake world. */
static const llmux_upstream_options_t *dns_opts(t_t *t, const dns_setup_t *d,
                                                const llmux_upstream_options_t *base) {
  ns_start(&t->ns, &t->loop, d->ns_mode);
  t->has_ns = 1;
  if (d->hosts) write_hosts(t, d->hosts);
  t->dopts.nameserver = t->ns.addr;
  t->dopts.resolv_conf = "/nonexistent/resolv.conf";
  t->dopts.hosts_file = d->hosts ? t->hosts_path : "";
  t->dopts.timeout_ms = 1000;
  t->dopts.attempts = 1;
  t->dopts.no_system_fallback = 1;
  if (base) t->uopts = *base;
  t->uopts.dns = &t->dopts;
  return &t->uopts;
}

static void on_watchdog(uv_timer_t *w) {
  t_t *t = w->data;
  t->timed_out = 1;
  uv_stop(&t->loop);
}

static void t_init(t_t *t, int tls, const char *srv_cert, int verify,
                   const step_t *const *scripts, size_t n) {
  const dns_setup_t *d = next_dns;
  const llmux_upstream_options_t *opts = next_opts;
  char err[256];
  memset(t, 0, sizeof(*t));
  next_dns = NULL;
  next_opts = NULL;
  assert_int_equal(uv_loop_init(&t->loop), 0);
  if (tls) {
    assert_int_equal(llmux_tls_ctx_client_new(&t->cctx, cert_path("ca.crt"), verify, err,
                                              sizeof(err)), 0);
    assert_int_equal(llmux_tls_ctx_server_new(&t->sctx, cert_path(srv_cert[0] == 'b' ?
                     "bad.crt" : "server.crt"), cert_path(srv_cert[0] == 'b' ? "bad.key" :
                     "server.key"), err, sizeof(err)), 0);
  }
  srv_start(&t->srv, &t->loop, t->sctx, scripts, n, d && d->srv_ip ? d->srv_ip : "127.0.0.1");
  if (d) opts = dns_opts(t, d, opts);
  assert_int_equal(llmux_upstream_new(&t->loop, opts, &t->up), 0);
  uv_timer_init(&t->loop, &t->watchdog);
  t->watchdog.data = t;
  uv_timer_start(&t->watchdog, on_watchdog, 5000, 0);
}

static void t_run_until(t_t *t, const int *flag) {
  while (!*flag && !t->timed_out) uv_run(&t->loop, UV_RUN_ONCE);
  assert_false(t->timed_out);
}

static void on_nap(uv_timer_t *h) {
  *(int *)h->data = 1;
}

static void on_nap_closed(uv_handle_t *h) {
  *(int *)h->data = 2;
}

/* Runs the loop for `ms` whatever happens meanwhile. */
static void t_run_for(t_t *t, unsigned ms) {
  uv_timer_t nap; /* on the stack: closed before returning */
  int state = 0;
  uv_timer_init(&t->loop, &nap);
  nap.data = &state;
  uv_timer_start(&nap, on_nap, ms, 0);
  t_run_until(t, &state);
  uv_close((uv_handle_t *)&nap, on_nap_closed);
  while (state != 2) uv_run(&t->loop, UV_RUN_ONCE);
}

static int pools_closed;

static void on_pool_closed(llmux_upstream_t *up) {
  pools_closed++;
}

/* Closes the pool, the server and the watchdog; the loop must then close
 * with no handle left. */
static void t_finish(t_t *t, client_t **clients, size_t n) {
  size_t i;
  int before = pools_closed;
  llmux_upstream_close(t->up, on_pool_closed);
  srv_close(&t->srv);
  if (t->has_ns) uv_close((uv_handle_t *)&t->ns.udp, NULL);
  if (t->hosts_path[0]) unlink(t->hosts_path);
  uv_close((uv_handle_t *)&t->watchdog, NULL);
  for (i = 0; i < n; i++) {
    if (clients[i]->pause_on_head) uv_close((uv_handle_t *)&clients[i]->resume_timer, NULL);
  }
  uv_run(&t->loop, UV_RUN_DEFAULT);
  assert_int_equal(pools_closed, before + 1);
  assert_int_equal(uv_loop_close(&t->loop), 0);
  llmux_buf_free(&t->srv.last_request);
  for (i = 0; i < n; i++) llmux_buf_free(&clients[i]->body);
  llmux_tls_ctx_free(t->cctx);
  llmux_tls_ctx_free(t->sctx);
}

static void client_pause_on_head(client_t *c, t_t *t, int ms) {
  c->pause_on_head = ms;
  uv_timer_init(&t->loop, &c->resume_timer);
  c->resume_timer.data = c;
}

#define CLIENTS(...) (client_t *[]){ __VA_ARGS__ }, sizeof((client_t *[]){ __VA_ARGS__ }) / sizeof(client_t *)
#define SCRIPTS(...) (const step_t *const[]){ __VA_ARGS__ }, \
  sizeof((const step_t *const[]){ __VA_ARGS__ }) / sizeof(const step_t *)

static const char R_HELLO[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Test: yes\r\n\r\nhello";
static const char R_WORLD[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nworld";
static const char R_CHUNKED_HEAD[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";

/* ---- tests ------------------------------------------------------------- */

static void get_with_content_length_delivers_head_and_body(void **state) {
  static const step_t s0[] = { SEND(R_HELLO), END };
  t_t t;
  client_t c;
  char expect[256];

  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "127.0.0.1", t.srv.port);
  c.req.headers = "Accept: application/json\r\n";
  c.req.headers_len = strlen(c.req.headers);
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);

  assert_int_equal(c.done_status, 200);
  assert_int_equal(c.head_status, 200);
  assert_string_equal(c.x_test, "yes");
  assert_true(body_is(&c, "hello"));
  assert_false(c.body_before_head);
  assert_int_equal(c.req.bytes_received, strlen(R_HELLO));
  assert_string_equal(c.req.error, "");
  snprintf(expect, sizeof(expect),
           "GET /v1/test HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept: application/json\r\n\r\n",
           t.srv.port);
  assert_string_equal(t.srv.last_request.base, expect);
  assert_int_equal(llmux_upstream_idle_count(t.up), 1); /* kept for reuse */
  t_finish(&t, CLIENTS(&c));
}

/* A head cut inside a name, inside a value and between lines, over five
 * reads: every field arrives whole, in order (the head is copied only
 * once a read ends inside it). */
static void head_cut_across_reads_keeps_every_field(void **state) {
  static const step_t s0[] = {
    SEND("HTTP/1.1 200 OK\r\nContent-Len"), SEND_AFTER(20, "gth: 5\r\nX-Te"),
    SEND_AFTER(20, "st: y"), SEND_AFTER(20, "es\r\nX-Empty:\r\nX-Last: 1"),
    SEND_AFTER(20, "\r\n\r\nhello"), END };
  t_t t;
  client_t c;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "127.0.0.1", t.srv.port);
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);

  assert_int_equal(c.done_status, 200);
  assert_string_equal(c.head_all, "Content-Length=5;X-Test=yes;X-Empty=;X-Last=1;");
  assert_true(body_is(&c, "hello"));
  t_finish(&t, CLIENTS(&c));
}

static void post_sends_body_iovecs_and_reads_a_chunked_response(void **state) {
  static const step_t s0[] = {
    SEND("HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
         "5\r\nabcde\r\n3;ext=1\r\nfgh\r\n0\r\n\r\n"), END };
  uv_buf_t body[2];
  const char *req;
  t_t t;
  client_t c;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "127.0.0.1", t.srv.port);
  body[0] = uv_buf_init((char *)"hello", 5);
  body[1] = uv_buf_init((char *)" world", 6);
  c.req.method = "POST";
  c.req.body = body;
  c.req.nbody = 2;
  c.req.headers = "Content-Type: text/plain\r\n";
  c.req.headers_len = strlen(c.req.headers);
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);

  assert_int_equal(c.done_status, 201);
  assert_true(body_is(&c, "abcdefgh")); /* chunk framing removed */
  req = t.srv.last_request.base;
  assert_true(strncmp(req, "POST /v1/test HTTP/1.1\r\nHost: ", 30) == 0);
  assert_non_null(strstr(req, "\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\n"));
  assert_string_equal(req + t.srv.last_request.len - 11, "hello world");
  assert_int_equal(llmux_upstream_idle_count(t.up), 1);
  t_finish(&t, CLIENTS(&c));
}

static void close_delimited_body_ends_at_eof_and_is_not_pooled(void **state) {
  static const step_t s0[] = {
    SEND("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nabc"),
    SEND_AFTER(20, "def"), CLOSE };
  t_t t;
  client_t c;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "127.0.0.1", t.srv.port);
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);

  assert_int_equal(c.done_status, 200);
  assert_true(body_is(&c, "abcdef"));
  assert_int_equal(c.body_calls, 2);
  assert_int_equal(llmux_upstream_idle_count(t.up), 0);
  t_finish(&t, CLIENTS(&c));
}

static void streamed_chunks_reach_on_body_as_they_arrive(void **state) {
  static const step_t s0[] = {
    SEND(R_CHUNKED_HEAD),
    SEND_AFTER(20, "6\r\ndata:1\r\n"),
    SEND_AFTER(20, "6\r\ndata:2\r\n"),
    SEND_AFTER(20, "6\r\ndata:3\r\n"),
    SEND_AFTER(20, "0\r\n\r\n"), END };
  t_t t;
  client_t c;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "127.0.0.1", t.srv.port);
  c.req.idle_timeout_ms = 1000;
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);

  assert_int_equal(c.done_status, 200);
  assert_int_equal(c.body_calls, 3);
  assert_true(body_is(&c, "data:1data:2data:3"));
  t_finish(&t, CLIENTS(&c));
}

static void informational_100_is_skipped(void **state) {
  static const step_t s0[] = { SEND("HTTP/1.1 100 Continue\r\n\r\n"), SEND(R_WORLD), END };
  t_t t;
  client_t c;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "127.0.0.1", t.srv.port);
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);
  assert_int_equal(c.done_status, 200);
  assert_int_equal(c.head_status, 200);
  assert_true(body_is(&c, "world"));
  t_finish(&t, CLIENTS(&c));
}

static void keep_alive_reuses_the_connection(void **state) {
  static const step_t s0[] = { SEND(R_HELLO), END };
  static const step_t s1[] = { SEND(R_WORLD), END };
  t_t t;
  client_t c1, c2;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0, s1));
  client_init(&c1, t.up, "127.0.0.1", t.srv.port);
  client_init(&c2, t.up, "127.0.0.1", t.srv.port);
  c1.then = &c2; /* started from c1's on_done */
  assert_int_equal(llmux_upstream_start(t.up, &c1.req), 0);
  t_run_until(&t, &c2.done);

  assert_int_equal(c1.done_status, 200);
  assert_int_equal(c2.done_status, 200);
  assert_true(body_is(&c2, "world"));
  assert_false(c1.req.reused);
  assert_true(c2.req.reused);
  assert_int_equal(t.srv.accepts, 1);
  assert_int_equal(t.srv.requests, 2);
  t_finish(&t, CLIENTS(&c1, &c2));
}

static void stale_pooled_connection_is_retried_on_a_new_one(void **state) {
  static const step_t s0[] = { SEND(R_HELLO), END };
  static const step_t s1[] = { CLOSE }; /* the server dropped the idle socket */
  static const step_t s2[] = { SEND(R_WORLD), END };
  t_t t;
  client_t c1, c2;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0, s1, s2));
  client_init(&c1, t.up, "127.0.0.1", t.srv.port);
  client_init(&c2, t.up, "127.0.0.1", t.srv.port);
  c1.then = &c2;
  assert_int_equal(llmux_upstream_start(t.up, &c1.req), 0);
  t_run_until(&t, &c2.done);

  assert_int_equal(c2.done_status, 200);
  assert_int_equal(c2.done, 1);
  assert_true(body_is(&c2, "world"));
  assert_true(c2.req.retried);
  assert_int_equal(t.srv.accepts, 2);
  assert_int_equal(t.srv.requests, 3);
  t_finish(&t, CLIENTS(&c1, &c2));
}

static void close_before_response_on_a_new_connection_is_eof(void **state) {
  static const step_t s0[] = { CLOSE };
  t_t t;
  client_t c;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "127.0.0.1", t.srv.port);
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);

  assert_int_equal(c.done_status, LLMUX_EEOF);
  assert_false(c.req.retried); /* only pooled connections are retried */
  assert_int_equal(c.req.bytes_received, 0);
  assert_int_equal(t.srv.accepts, 1);
  t_finish(&t, CLIENTS(&c));
}

static void connect_to_a_closed_port_is_refused(void **state) {
  static const step_t s0[] = { END };
  struct sockaddr_in a;
  uv_tcp_t bound; /* bound, not listening: connections are refused */
  t_t t;
  client_t c;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  uv_tcp_init(&t.loop, &bound);
  uv_ip4_addr("127.0.0.1", 0, &a);
  assert_int_equal(uv_tcp_bind(&bound, (struct sockaddr *)&a, 0), 0);
  client_init(&c, t.up, "127.0.0.1", bound_port(&bound));
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);

  assert_int_equal(c.done_status, LLMUX_ECONNREFUSED);
  assert_int_equal(c.req.bytes_received, 0);
  assert_non_null(strstr(c.req.error, "127.0.0.1"));
  uv_close((uv_handle_t *)&bound, NULL);
  t_finish(&t, CLIENTS(&c));
}

static void silent_server_hits_the_first_byte_timeout(void **state) {
  static const step_t s0[] = { END }; /* accepts, reads, never answers */
  uint64_t t0;
  t_t t;
  client_t c;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "127.0.0.1", t.srv.port);
  c.req.first_byte_timeout_ms = 50;
  t0 = uv_now(&t.loop);
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);

  assert_int_equal(c.done_status, LLMUX_ETIMEOUT);
  assert_true(uv_now(&t.loop) - t0 >= 50);
  assert_int_equal(c.req.bytes_received, 0);
  assert_non_null(strstr(c.req.error, "first-byte"));
  assert_int_equal(t.srv.requests, 1);
  t_finish(&t, CLIENTS(&c));
}

static void stalled_body_hits_the_idle_timeout(void **state) {
  static const step_t s0[] = {
    SEND("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"), END };
  t_t t;
  client_t c;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "127.0.0.1", t.srv.port);
  c.req.idle_timeout_ms = 50;
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);

  assert_int_equal(c.done_status, LLMUX_ETIMEOUT);
  assert_int_equal(c.head_status, 200);
  assert_true(body_is(&c, "abc"));
  assert_true(c.req.bytes_received > 0); /* the router must not fail over */
  assert_non_null(strstr(c.req.error, "idle"));
  t_finish(&t, CLIENTS(&c));
}

static void slow_stream_hits_the_total_timeout(void **state) {
  static const step_t s0[] = {
    SEND(R_CHUNKED_HEAD), SEND_AFTER(30, "1\r\na\r\n"), SEND_AFTER(30, "1\r\nb\r\n"),
    SEND_AFTER(30, "1\r\nc\r\n"), SEND_AFTER(30, "1\r\nd\r\n"), SEND_AFTER(30, "0\r\n\r\n"),
    END };
  t_t t;
  client_t c;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "127.0.0.1", t.srv.port);
  c.req.idle_timeout_ms = 1000;
  c.req.total_timeout_ms = 80;
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);

  assert_int_equal(c.done_status, LLMUX_ETIMEOUT);
  assert_true(c.body_calls >= 1 && c.body_calls < 5);
  assert_non_null(strstr(c.req.error, "total"));
  t_finish(&t, CLIENTS(&c));
}

static void reset_mid_body_is_connreset_with_bytes_received(void **state) {
  static const step_t s0[] = {
    SEND("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"), RESET_AFTER(50) };
  t_t t;
  client_t c;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "127.0.0.1", t.srv.port);
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);

  assert_int_equal(c.done_status, LLMUX_ECONNRESET);
  assert_true(c.req.bytes_received > 0);
  assert_true(body_is(&c, "abc"));
  t_finish(&t, CLIENTS(&c));
}

static void garbage_response_is_a_protocol_error(void **state) {
  static const step_t s0[] = { SEND("SSH-2.0-OpenSSH_9.2\r\n\r\n"), END };
  t_t t;
  client_t c;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "127.0.0.1", t.srv.port);
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);

  assert_int_equal(c.done_status, LLMUX_EPROTO);
  assert_int_equal(c.head_status, 0);
  assert_int_equal(llmux_upstream_idle_count(t.up), 0);
  t_finish(&t, CLIENTS(&c));
}

static void cancel_mid_response_closes_and_calls_nothing_more(void **state) {
  static const step_t s0[] = {
    SEND(R_CHUNKED_HEAD), SEND_AFTER(10, "3\r\none\r\n"), SEND_AFTER(30, "3\r\ntwo\r\n"),
    SEND_AFTER(30, "0\r\n\r\n"), END };
  t_t t;
  client_t c;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "127.0.0.1", t.srv.port);
  c.cancel_on_body = 1;
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, (const int *)&t.srv.peer_closes); /* the server sees the close */

  assert_true(c.cancelled);
  assert_int_equal(c.done, 0);
  assert_int_equal(c.body_calls, 1);
  assert_null(c.req.conn);
  assert_int_equal(llmux_upstream_idle_count(t.up), 0);
  t_finish(&t, CLIENTS(&c));
}

static void paused_response_waits_without_idle_timeout(void **state) {
  static const step_t s0[] = {
    SEND(R_CHUNKED_HEAD), SEND_AFTER(10, "3\r\none\r\n"), SEND_AFTER(10, "3\r\ntwo\r\n"),
    SEND_AFTER(10, "0\r\n\r\n"), END };
  t_t t;
  client_t c;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "127.0.0.1", t.srv.port);
  c.req.idle_timeout_ms = 40;
  client_pause_on_head(&c, &t, 150); /* paused far longer than the idle timeout */
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);

  assert_int_equal(c.done_status, 200);
  assert_int_equal(c.body_calls_at_resume, 0); /* nothing was read while paused */
  assert_true(body_is(&c, "onetwo"));
  t_finish(&t, CLIENTS(&c));
}

static void closing_the_pool_ends_running_requests(void **state) {
  static const step_t s0[] = { END };
  t_t t;
  client_t c;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "127.0.0.1", t.srv.port);
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, (const int *)&t.srv.requests);
  t_finish(&t, CLIENTS(&c));
  assert_int_equal(c.done, 1);
  assert_int_equal(c.done_status, LLMUX_ECANCELED);
}

static void start_rejects_https_without_a_tls_context(void **state) {
  static const step_t s0[] = { END };
  t_t t;
  client_t c;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "127.0.0.1", t.srv.port);
  c.req.https = 1;
  assert_int_equal(llmux_upstream_start(t.up, &c.req), LLMUX_EINVAL);
  assert_null(c.req.conn);
  t_finish(&t, CLIENTS(&c));
  assert_int_equal(c.done, 0);
}

static void tls_with_ca_file_verifies_and_keeps_alive(void **state) {
  static const step_t s0[] = { SEND(R_HELLO), END };
  static const step_t s1[] = { SEND(R_CHUNKED_HEAD), SEND_AFTER(10, "5\r\nworld\r\n0\r\n\r\n"),
                               END };
  t_t t;
  client_t c1, c2;

  t_init(&t, 1, "server", 1, SCRIPTS(s0, s1));
  client_init(&c1, t.up, "localhost", t.srv.port); /* resolved by getaddrinfo */
  client_init(&c2, t.up, "localhost", t.srv.port);
  c1.req.https = c2.req.https = 1;
  c1.req.tls_ctx = c2.req.tls_ctx = t.cctx;
  c1.then = &c2;
  assert_int_equal(llmux_upstream_start(t.up, &c1.req), 0);
  t_run_until(&t, &c2.done);

  assert_int_equal(c1.done_status, 200);
  assert_true(body_is(&c1, "hello"));
  assert_int_equal(c2.done_status, 200);
  assert_true(body_is(&c2, "world"));
  assert_true(c2.req.reused);
  assert_int_equal(t.srv.accepts, 1);
  assert_non_null(strstr(t.srv.last_request.base, "\r\nHost: localhost:"));
  t_finish(&t, CLIENTS(&c1, &c2));
}

static void tls_untrusted_certificate_is_ecert(void **state) {
  static const step_t s0[] = { SEND(R_HELLO), END };
  t_t t;
  client_t c;

  t_init(&t, 1, "bad", 1, SCRIPTS(s0));
  client_init(&c, t.up, "localhost", t.srv.port);
  c.req.https = 1;
  c.req.tls_ctx = t.cctx;
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);

  assert_int_equal(c.done_status, LLMUX_ECERT);
  assert_non_null(strstr(c.req.error, "trusted"));
  assert_int_equal(t.srv.requests, 0);
  t_finish(&t, CLIENTS(&c));
}

static void tls_wrong_hostname_is_ecert(void **state) {
  static const step_t s0[] = { SEND(R_HELLO), END };
  static const dns_setup_t d = { NS_SILENT, "127.0.0.1 wrong.test\n", NULL };
  t_t t;
  client_t c;

  next_dns = &d;
  t_init(&t, 1, "server", 1, SCRIPTS(s0));
  /* The certificate names localhost and 127.0.0.1, not wrong.test. */
  client_init(&c, t.up, "wrong.test", t.srv.port);
  c.req.https = 1;
  c.req.tls_ctx = t.cctx;
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);

  assert_int_equal(c.done_status, LLMUX_ECERT);
  assert_non_null(strstr(c.req.error, "CN"));
  t_finish(&t, CLIENTS(&c));
}

static void tls_ip_literal_is_checked_against_ip_san(void **state) {
  static const step_t s0[] = { SEND(R_HELLO), END };
  static const step_t s1[] = { SEND(R_HELLO), END };
  t_t t;
  client_t c;

  /* The server certificate carries IP:127.0.0.1: a provider reached by
   * that address verifies, which mbedTLS alone would refuse. */
  t_init(&t, 1, "server", 1, SCRIPTS(s0));
  client_init(&c, t.up, "127.0.0.1", t.srv.port);
  c.req.https = 1;
  c.req.tls_ctx = t.cctx;
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);
  assert_int_equal(c.done_status, 200);
  t_finish(&t, CLIENTS(&c));

  /* The self-signed "bad" certificate names 127.0.0.1 too, but no CA we
   * trust signed it: the address matching does not bypass the chain. */
  t_init(&t, 1, "bad", 1, SCRIPTS(s1));
  client_init(&c, t.up, "127.0.0.1", t.srv.port);
  c.req.https = 1;
  c.req.tls_ctx = t.cctx;
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);
  assert_int_equal(c.done_status, LLMUX_ECERT);
  t_finish(&t, CLIENTS(&c));
}

static void tls_verify_off_accepts_the_bad_certificate(void **state) {
  static const step_t s0[] = { SEND(R_HELLO), END };
  t_t t;
  client_t c;

  t_init(&t, 1, "bad", 0, SCRIPTS(s0));
  client_init(&c, t.up, "localhost", t.srv.port);
  c.req.https = 1;
  c.req.tls_ctx = t.cctx;
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);

  assert_int_equal(c.done_status, 200);
  assert_true(body_is(&c, "hello"));
  t_finish(&t, CLIENTS(&c));
}

static void head_request_has_no_body_despite_content_length(void **state) {
  static const step_t s0[] = { SEND("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
                               END };
  t_t t;
  client_t c;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "127.0.0.1", t.srv.port);
  c.req.method = "HEAD";
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);
  assert_int_equal(c.done_status, 200);
  assert_int_equal(c.body_calls, 0);
  assert_int_equal(llmux_upstream_idle_count(t.up), 1);
  t_finish(&t, CLIENTS(&c));
}

static void cancel_while_resolving_leaves_nothing_behind(void **state) {
  static const step_t s0[] = { END };
  t_t t;
  client_t c;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "localhost", t.srv.port); /* not a literal: getaddrinfo */
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  assert_non_null(c.req.conn);
  llmux_upstream_cancel(&c.req);
  assert_null(c.req.conn);
  llmux_upstream_cancel(&c.req); /* a no-op the second time */
  t_finish(&t, CLIENTS(&c)); /* the loop still closes cleanly */
  assert_int_equal(c.done, 0);
  assert_int_equal(t.srv.accepts, 0);
}

static void idle_connections_expire_and_are_capped_per_key(void **state) {
  static const llmux_upstream_options_t opts = { .max_idle_per_key = 1, .idle_timeout_ms = 60 };
  static const step_t s0[] = { SEND_AFTER(20, R_HELLO), END };
  t_t t;
  client_t c1, c2;

  next_opts = &opts;
  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c1, t.up, "127.0.0.1", t.srv.port);
  client_init(&c2, t.up, "127.0.0.1", t.srv.port);
  assert_int_equal(llmux_upstream_start(t.up, &c1.req), 0); /* two at once: */
  assert_int_equal(llmux_upstream_start(t.up, &c2.req), 0); /* two connections */
  t_run_until(&t, &c1.done);
  t_run_until(&t, &c2.done);
  assert_int_equal(t.srv.accepts, 2);
  assert_int_equal(llmux_upstream_idle_count(t.up), 1); /* the second was closed */
  t_run_until(&t, (const int *)&t.srv.peer_closes);
  while (t.srv.peer_closes < 2 && !t.timed_out) uv_run(&t.loop, UV_RUN_ONCE);
  assert_int_equal(t.srv.peer_closes, 2); /* the kept one expired after 60 ms */
  assert_int_equal(llmux_upstream_idle_count(t.up), 0);
  t_finish(&t, CLIENTS(&c1, &c2));
}

/* ---- name resolution through the pool's resolver ------------------------ */

static int ipv6_loopback_works(void) {
  struct sockaddr_in6 a;
  int fd = socket(AF_INET6, SOCK_STREAM, 0), ok;
  if (fd < 0) return 0;
  memset(&a, 0, sizeof(a));
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(fd, 1) == 0;
  close(fd);
  return ok;
}

/* A TCP socket bound to ip:port (0: any) and not listening, so connects to
 * it are refused. Returns the fd (and the port), or -1 if the port is taken. */
static int reserve_port(const char *ip, int port, int *bound) {
  struct sockaddr_storage a;
  socklen_t len = sizeof(a);
  int fd;
  ip_addr(ip, port, &a);
  fd = socket(a.ss_family, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  if (bind(fd, (struct sockaddr *)&a, a.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
           : sizeof(struct sockaddr_in)) != 0) {
    close(fd);
    return -1;
  }
  assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  if (bound) *bound = ntohs(a.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&a)->sin6_port
                            : ((struct sockaddr_in *)&a)->sin_port);
  return fd;
}

static const char R_HELLO_CLOSE[] =
  "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";

static void hosts_file_names_and_localhost_need_no_query(void **state) {
  static const step_t s0[] = { SEND(R_HELLO), END };
  /* No line for localhost: it is loopback anyway. */
  static const dns_setup_t d = { NS_LOOPBACK_A, "127.0.0.1 api.test\n", NULL };
  t_t t;
  client_t c1, c2;
  char host[64];

  next_dns = &d;
  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c1, t.up, "api.test", t.srv.port);
  client_init(&c2, t.up, "localhost", t.srv.port);
  assert_int_equal(llmux_upstream_start(t.up, &c1.req), 0);
  assert_int_equal(llmux_upstream_start(t.up, &c2.req), 0);
  t_run_until(&t, &c1.done);
  t_run_until(&t, &c2.done);

  assert_int_equal(c1.done_status, 200);
  assert_true(body_is(&c1, "hello"));
  assert_int_equal(c2.done_status, 200);
  assert_int_equal(t.srv.accepts, 2);
  assert_int_equal(t.ns.queries, 0); /* nothing went to the nameserver */
  snprintf(host, sizeof(host), "\r\nHost: localhost:%d\r\n", t.srv.port);
  assert_non_null(strstr(t.srv.last_request.base, host));
  t_finish(&t, CLIENTS(&c1, &c2));
}

static void second_connection_to_a_name_uses_the_cached_answer(void **state) {
  static const step_t s0[] = { SEND(R_HELLO_CLOSE), CLOSE };
  static const dns_setup_t d = { NS_LOOPBACK_A, NULL, NULL };
  t_t t;
  client_t c1, c2;

  next_dns = &d;
  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c1, t.up, "api.example.test", t.srv.port);
  client_init(&c2, t.up, "API.example.test.", t.srv.port); /* same name */
  c1.then = &c2; /* the first connection is closed by then */
  assert_int_equal(llmux_upstream_start(t.up, &c1.req), 0);
  t_run_until(&t, &c2.done);

  assert_int_equal(c1.done_status, 200);
  assert_int_equal(c2.done_status, 200);
  assert_true(body_is(&c2, "hello"));
  assert_false(c2.req.reused);
  assert_int_equal(t.srv.accepts, 2);    /* two connections... */
  assert_int_equal(t.ns.queries, 2);     /* ...one lookup: A and AAAA */
  t_finish(&t, CLIENTS(&c1, &c2));
}

static void nxdomain_is_edns_with_the_resolvers_reason(void **state) {
  static const step_t s0[] = { END };
  static const dns_setup_t d = { NS_NXDOMAIN, NULL, NULL };
  t_t t;
  client_t c;

  next_dns = &d;
  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "missing.example.test", t.srv.port);
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);

  assert_int_equal(c.done_status, LLMUX_EDNS);
  assert_non_null(strstr(c.req.error, "missing.example.test"));
  assert_non_null(strstr(c.req.error, "NXDOMAIN"));
  assert_int_equal(c.req.bytes_received, 0);
  assert_true(t.ns.queries >= 1);
  assert_int_equal(t.srv.accepts, 0);
  t_finish(&t, CLIENTS(&c));
}

static void unanswered_lookup_hits_the_connect_timeout(void **state) {
  static const step_t s0[] = { END };
  static const dns_setup_t d = { NS_SILENT, NULL, NULL };
  uint64_t t0;
  t_t t;
  client_t c;

  next_dns = &d;
  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "slow.example.test", t.srv.port);
  c.req.connect_timeout_ms = 60; /* well before the resolver gives up (1 s) */
  t0 = uv_now(&t.loop);
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);

  assert_int_equal(c.done_status, LLMUX_ETIMEOUT);
  assert_non_null(strstr(c.req.error, "connect timeout"));
  assert_true(uv_now(&t.loop) - t0 >= 60); /* not before the connect timeout */
  t_finish(&t, CLIENTS(&c));
}

static void cancel_while_a_query_is_in_flight_calls_nothing(void **state) {
  static const step_t s0[] = { END };
  static const dns_setup_t d = { NS_SILENT, NULL, NULL };
  t_t t;
  client_t c;

  next_dns = &d;
  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "slow.example.test", t.srv.port);
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, (const int *)&t.ns.queries); /* the lookup is on the wire */
  llmux_upstream_cancel(&c.req);
  assert_null(c.req.conn);
  t_run_for(&t, 30);
  assert_int_equal(c.done, 0);
  t_finish(&t, CLIENTS(&c)); /* the resolver drops the lookup; the loop closes */
  assert_int_equal(c.done, 0);
  assert_int_equal(t.srv.accepts, 0);
}

static void closing_the_pool_while_resolving_ends_with_ecanceled(void **state) {
  static const step_t s0[] = { END };
  static const dns_setup_t d = { NS_SILENT, NULL, NULL };
  t_t t;
  client_t c;

  next_dns = &d;
  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "slow.example.test", t.srv.port);
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, (const int *)&t.ns.queries);
  t_finish(&t, CLIENTS(&c)); /* pool cb once, after the resolver closed */
  assert_int_equal(c.done, 1);
  assert_int_equal(c.done_status, LLMUX_ECANCELED);
}

static void malformed_host_is_rejected_by_start(void **state) {
  static const step_t s0[] = { END };
  t_t t;
  client_t c;

  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "bad host/name", t.srv.port);
  assert_int_equal(llmux_upstream_start(t.up, &c.req), LLMUX_EINVAL);
  assert_null(c.req.conn);
  assert_non_null(strstr(c.req.error, "invalid host name"));
  t_finish(&t, CLIENTS(&c));
  assert_int_equal(c.done, 0);
}

static void refused_first_address_falls_back_to_the_next(void **state) {
  static const step_t s0[] = { SEND(R_HELLO), END };
  static const dns_setup_t d = {
    NS_SILENT, "127.0.0.1 dual.test\n::1 dual.test\n127.0.0.1 v4only.test\n", "::1" };
  static const step_t *const scripts[] = {s0};
  t_t t;
  client_t c1, c2;
  int fd, i;

  if (!ipv6_loopback_works()) {
    print_message("skipped: no IPv6 loopback\n");
    skip();
  }
  /* The server listens on [::1] only, and we hold 127.0.0.1 on the same
   * port closed. Another process may own that port on 127.0.0.1 already
   * (the port was free only on ::1): then try another one. */
  for (i = 0;; i++) {
    next_dns = &d;
    t_init(&t, 0, NULL, 1, scripts, 1); /* not SCRIPTS(): its array would end with the loop */
    fd = reserve_port("127.0.0.1", t.srv.port, NULL);
    if (fd >= 0) break;
    t_finish(&t, NULL, 0);
    assert_true(i < 50);
  }
  client_init(&c1, t.up, "v4only.test", t.srv.port);
  client_init(&c2, t.up, "dual.test", t.srv.port); /* 127.0.0.1 first, then ::1 */
  assert_int_equal(llmux_upstream_start(t.up, &c1.req), 0);
  t_run_until(&t, &c1.done);
  assert_int_equal(llmux_upstream_start(t.up, &c2.req), 0);
  t_run_until(&t, &c2.done);

  assert_int_equal(c1.done_status, LLMUX_ECONNREFUSED); /* 127.0.0.1 refuses */
  assert_non_null(strstr(c1.req.error, "v4only.test"));
  assert_int_equal(c2.done_status, 200);                /* ::1 serves */
  assert_true(body_is(&c2, "hello"));
  assert_string_equal(c2.req.error, "");
  assert_int_equal(t.srv.accepts, 1);
  assert_int_equal(t.ns.queries, 0);
  close(fd);
  t_finish(&t, CLIENTS(&c1, &c2));
}

static void every_address_refused_names_the_host_and_last_reason(void **state) {
  static const step_t s0[] = { END };
  static const dns_setup_t d = { NS_SILENT, "127.0.0.1 dead.test\n::1 dead.test\n", NULL };
  t_t t;
  client_t c;
  int fd4, fd6, port;

  if (!ipv6_loopback_works()) {
    print_message("skipped: no IPv6 loopback\n");
    skip();
  }
  fd4 = reserve_port("127.0.0.1", 0, &port);
  assert_true(fd4 >= 0);
  fd6 = reserve_port("::1", port, NULL);
  if (fd6 < 0) { /* that port is in use on ::1: not our business */
    close(fd4);
    print_message("skipped: port %d busy on ::1\n", port);
    skip();
  }
  next_dns = &d;
  t_init(&t, 0, NULL, 1, SCRIPTS(s0));
  client_init(&c, t.up, "dead.test", port);
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);

  assert_int_equal(c.done_status, LLMUX_ECONNREFUSED);
  assert_non_null(strstr(c.req.error, "dead.test"));
  assert_non_null(strstr(c.req.error, "connection refused"));
  assert_non_null(strstr(c.req.error, "every address failed"));
  close(fd4);
  close(fd6);
  t_finish(&t, CLIENTS(&c));
}

/* A listener whose accept queue is full drops new SYNs: a connect to it
 * hangs like one to a dead host. -1 (and nothing open) if this kernel
 * does not behave so. */
static int blackhole_open(int port, int fds[3]) {
  struct sockaddr_storage a;
  struct pollfd pfd;
  socklen_t len = sizeof(struct sockaddr_in);
  int i;

  ip_addr("127.0.0.1", port, &a);
  for (i = 0; i < 3; i++) /* listener, filler, non-blocking probe */
    fds[i] = socket(AF_INET, SOCK_STREAM | (i == 2 ? SOCK_NONBLOCK : 0), 0);
  if (bind(fds[0], (struct sockaddr *)&a, len) != 0 || listen(fds[0], 0) != 0 ||
      connect(fds[1], (struct sockaddr *)&a, len) != 0) /* fills the queue */
    goto fail;
  if (connect(fds[2], (struct sockaddr *)&a, len) == 0 || errno != EINPROGRESS) goto fail;
  pfd.fd = fds[2];
  pfd.events = POLLOUT;
  if (poll(&pfd, 1, 100) != 0) goto fail; /* the probe got through: no blackhole */
  return 0;
fail:
  for (i = 0; i < 3; i++) close(fds[i]);
  return -1;
}

static void silent_first_address_gets_a_share_of_the_connect_timeout(void **state) {
  static const step_t s0[] = { SEND(R_HELLO), END };
  static const dns_setup_t d = { NS_SILENT, "127.0.0.1 slowv4.test\n::1 slowv4.test\n", "::1" };
  uint64_t t0, took;
  t_t t;
  client_t c;
  int fds[3], i;

  if (!ipv6_loopback_works()) {
    print_message("skipped: no IPv6 loopback\n");
    skip();
  }
  next_dns = &d;
  t_init(&t, 0, NULL, 1, SCRIPTS(s0)); /* the server listens on [::1] only */
  if (blackhole_open(t.srv.port, fds) != 0) {
    t_finish(&t, NULL, 0);
    print_message("skipped: cannot make 127.0.0.1:%d drop connections\n", t.srv.port);
    skip();
  }
  client_init(&c, t.up, "slowv4.test", t.srv.port);
  c.req.connect_timeout_ms = 2000; /* two addresses: 1 s each */
  t0 = uv_now(&t.loop);
  assert_int_equal(llmux_upstream_start(t.up, &c.req), 0);
  t_run_until(&t, &c.done);
  took = uv_now(&t.loop) - t0;

  assert_int_equal(c.done_status, 200);
  assert_true(body_is(&c, "hello"));
  /* It waited for 127.0.0.1 for its share (1 s) and no longer: a 200
   * rather than a connect timeout proves the second address got time. */
  assert_true(took >= 1000);
  assert_int_equal(t.srv.accepts, 1);
  for (i = 0; i < 3; i++) close(fds[i]);
  t_finish(&t, CLIENTS(&c));
}

static int group_setup(void **state) {
  return certs_make();
}

static int group_teardown(void **state) {
  certs_remove();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(get_with_content_length_delivers_head_and_body),
    cmocka_unit_test(head_cut_across_reads_keeps_every_field),
    cmocka_unit_test(post_sends_body_iovecs_and_reads_a_chunked_response),
    cmocka_unit_test(close_delimited_body_ends_at_eof_and_is_not_pooled),
    cmocka_unit_test(streamed_chunks_reach_on_body_as_they_arrive),
    cmocka_unit_test(informational_100_is_skipped),
    cmocka_unit_test(keep_alive_reuses_the_connection),
    cmocka_unit_test(stale_pooled_connection_is_retried_on_a_new_one),
    cmocka_unit_test(close_before_response_on_a_new_connection_is_eof),
    cmocka_unit_test(connect_to_a_closed_port_is_refused),
    cmocka_unit_test(silent_server_hits_the_first_byte_timeout),
    cmocka_unit_test(stalled_body_hits_the_idle_timeout),
    cmocka_unit_test(slow_stream_hits_the_total_timeout),
    cmocka_unit_test(reset_mid_body_is_connreset_with_bytes_received),
    cmocka_unit_test(garbage_response_is_a_protocol_error),
    cmocka_unit_test(cancel_mid_response_closes_and_calls_nothing_more),
    cmocka_unit_test(paused_response_waits_without_idle_timeout),
    cmocka_unit_test(closing_the_pool_ends_running_requests),
    cmocka_unit_test(start_rejects_https_without_a_tls_context),
    cmocka_unit_test(head_request_has_no_body_despite_content_length),
    cmocka_unit_test(cancel_while_resolving_leaves_nothing_behind),
    cmocka_unit_test(idle_connections_expire_and_are_capped_per_key),
    cmocka_unit_test(tls_with_ca_file_verifies_and_keeps_alive),
    cmocka_unit_test(tls_untrusted_certificate_is_ecert),
    cmocka_unit_test(tls_wrong_hostname_is_ecert),
    cmocka_unit_test(tls_ip_literal_is_checked_against_ip_san),
    cmocka_unit_test(tls_verify_off_accepts_the_bad_certificate),
    cmocka_unit_test(hosts_file_names_and_localhost_need_no_query),
    cmocka_unit_test(second_connection_to_a_name_uses_the_cached_answer),
    cmocka_unit_test(nxdomain_is_edns_with_the_resolvers_reason),
    cmocka_unit_test(unanswered_lookup_hits_the_connect_timeout),
    cmocka_unit_test(cancel_while_a_query_is_in_flight_calls_nothing),
    cmocka_unit_test(closing_the_pool_while_resolving_ends_with_ecanceled),
    cmocka_unit_test(malformed_host_is_rejected_by_start),
    cmocka_unit_test(refused_first_address_falls_back_to_the_next),
    cmocka_unit_test(every_address_refused_names_the_host_and_last_reason),
    cmocka_unit_test(silent_first_address_gets_a_share_of_the_connect_timeout),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
