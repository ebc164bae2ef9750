/* The upstream HTTP/1.1 client (see upstream.h).
 *
 * A connection (llmux__upconn_t) goes
 *   RESOLVING -> CONNECTING -> [HANDSHAKE] -> ACTIVE -> IDLE -> ACTIVE ...
 * and ends in conn_close(), which is the only way out of every state. It
 * carries at most one request; the request points back at it while running.
 * One timer per connection serves every deadline: the current phase's
 * (connect, first byte, idle gap, or pooled-idle expiry) and the request's
 * total deadline, whichever comes first.
 *
 * Names go through the pool's resolver (llmux_dns_t): the connection embeds
 * its lookup, and cancelling it is synchronous. The answer is copied into
 * the connection and tried in order; a failed attempt closes the TCP handle
 * and the next address is tried from its close callback, on a fresh handle
 * (a socket is bound to one address family).
 *
 * Memory: a connection is freed only once its two handles are closed, so
 * late libuv callbacks always find it. The pool is freed once every
 * connection and the resolver are closed. A request is never touched after
 * on_done or cancel.
 */
#include "net/upstream.h"

#include <assert.h>
#include <llhttp.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/log.h"
#include "base/util.h"

#define READ_BUF_SIZE (64 * 1024)
#define PLAIN_BUF_SIZE (16 * 1024) /* one TLS record of plaintext */
#define MAX_HEADERS 128
#define HDR_MIN 16 /* first size of a connection's header array */
#define MAX_HEAD_BYTES (64 * 1024)
#define INLINE_IOV 8
#define ATTEMPT_MIN_MS 1000 /* least share of the connect budget per address */

enum {
  C_RESOLVING,
  C_CONNECTING,
  C_HANDSHAKE,
  C_ACTIVE, /* request being sent or response being read */
  C_IDLE    /* in the pool */
};

typedef struct upkey_s upkey_t;

/* Pool key: (scheme, host, port, tls ctx). Few (one per provider), so a
 * list. Keys live until the pool is freed. */
struct upkey_s {
  upkey_t *next;
  int https;
  uint16_t port;
  llmux_tls_ctx_t *tls_ctx;
  llmux__upconn_t *idle; /* LIFO: most recently used first */
  unsigned nidle;
  char host[];
};

typedef struct {
  uint32_t noff, nlen, voff, vlen;
} hdr_t;

/* One resolved address, the port set. */
typedef union {
  struct sockaddr sa;
  struct sockaddr_in in;
  struct sockaddr_in6 in6;
} upaddr_t;

struct llmux__upconn_s {
  llmux_upstream_t *up;
  upkey_t *key;
  llmux__upconn_t *next, *prev;   /* all connections of the pool */
  llmux__upconn_t *inext, *iprev; /* the key's idle list */
  llmux_upstream_req_t *req;      /* the running request, or NULL */
  uv_tcp_t tcp;
  uv_timer_t timer;
  llmux_dns_req_t dreq;
  uv_connect_t creq;
  uv_write_t wreq;
  llmux_tls_t *tls;
  llhttp_t parser;
  upaddr_t *addrs;                /* owned: the resolver's answer, tried in
                                     order; freed once connected */
  unsigned naddrs;
  unsigned next_addr;             /* index of the next address to try */
  uint64_t connect_deadline;      /* loop time (ms) for DNS+TCP+TLS, 0 = none */
  uint64_t phase_deadline;        /* loop time (ms), 0 = none */
  int state;
  int cb_err;                     /* error set by a parser callback */
  int pending_closes;
  unsigned served;                /* responses completed on it */
  unsigned closing : 1;
  unsigned resolving : 1;         /* dreq pending in the resolver */
  unsigned writing : 1;           /* a uv_write outstanding */
  unsigned req_queued : 1;        /* request given to the socket, not yet all written */
  unsigned msg_done : 1;
  unsigned in_1xx : 1;
  unsigned head_method : 1;
  /* Bytes, not bit-fields: the parser's callbacks test them each field. */
  uint8_t hstate;                 /* 0 none, 1 in a field, 2 in a value */
  uint8_t in_head;                /* between message begin and headers complete */
  uint8_t head_split;             /* the head spans reads: its bytes are in hbuf */
  uint8_t head_done;              /* on_head ran: fields after it are trailers */
  uint8_t hdr_scratch;            /* hdr is the pool's scratch array */
  /* Held while they are in use only: a connection that waits for the
   * response's next bytes keeps none of them. */
  llmux_buf_t head;               /* request head, until sent; plain:
                                     referenced by uv_write */
  llmux_buf_t wbuf;               /* TLS ciphertext being written */
  llmux_buf_t hbuf;               /* response header bytes, when they span reads */
  const char *chunk;              /* the bytes being parsed: the head's, while
                                     it fits in them (hdr offsets from here) */
  size_t hbytes;                  /* header (and trailer) bytes of this response */
  size_t nhdr;                    /* its header (and trailer) fields */
  size_t hdr_cap;
  hdr_t *hdr;                     /* until on_head: the pool's scratch while the
                                     head is parsed within one read, else owned */
};

struct llmux_upstream_s {
  uv_loop_t *loop;
  unsigned max_idle;
  uint64_t idle_timeout_ms;
  upkey_t *keys;
  llmux__upconn_t *conns;
  unsigned nconns;
  unsigned nidle;
  int closing;
  int dns_closed;
  void (*close_cb)(llmux_upstream_t *up);
  void *data;                     /* opts->data */
  llmux_dns_t dns;                /* shared by every connection; owned */
  /* Shared by all connections: a read is consumed before the next. */
  char rbuf[READ_BUF_SIZE];
  char pbuf[PLAIN_BUF_SIZE];
  hdr_t hdr_scratch[MAX_HEADERS]; /* the fields of a head parsed within one read */
  llmux_buf_t head_scratch;       /* a request head being sent (build_head) */
  int hdr_scratch_busy;
};

static int conn_open(llmux_upstream_t *up, upkey_t *key, llmux_upstream_req_t *req);
static void conn_connect_next(llmux__upconn_t *conn);
static void attempt_failed(llmux__upconn_t *conn, int uverr);
static int conn_send(llmux__upconn_t *conn);
static int conn_flush(llmux__upconn_t *conn);
static void release_hdr(llmux__upconn_t *conn);
static void conn_close(llmux__upconn_t *conn);
static void conn_fail(llmux__upconn_t *conn, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void pool_maybe_closed(llmux_upstream_t *up);

/* ---- errors and timers ------------------------------------------------ */

static int map_uv(int err) {
  switch (err) {
  case UV_ECONNREFUSED: case UV_ENETUNREACH: case UV_EHOSTUNREACH:
  case UV_EADDRNOTAVAIL:
    return LLMUX_ECONNREFUSED;
  case UV_ECONNRESET: case UV_EPIPE: case UV_ECONNABORTED:
    return LLMUX_ECONNRESET;
  case UV_ETIMEDOUT: return LLMUX_ETIMEOUT;
  case UV_EOF: return LLMUX_EEOF;
  case UV_ENOMEM: case UV_ENOBUFS: return LLMUX_ENOMEM;
  case UV_ECANCELED: return LLMUX_ECANCELED;
  default: return LLMUX_EIO;
  }
}

static void on_timer(uv_timer_t *t);

/* The earlier of the phase and total deadlines (loop ms; 0: none). */
static uint64_t conn_due(const llmux__upconn_t *conn) {
  uint64_t d = conn->phase_deadline, total = conn->req ? conn->req->total_deadline : 0;
  return total && (d == 0 || total < d) ? total : d;
}

/* Makes the timer fire by conn_due. One already running that fires no
 * later is left alone (it fires early, and on_timer starts it again for
 * the rest); with no deadline it is not stopped either (on_timer finds
 * nothing due). So the phases of a request on a kept connection cost a
 * store each, not a timer restart. */
static void conn_rearm(llmux__upconn_t *conn) {
  uint64_t now = uv_now(conn->up->loop), d = conn_due(conn);
  if (d == 0) return;
  if (d > now && uv_is_active((uv_handle_t *)&conn->timer) &&
      uv_timer_get_due_in(&conn->timer) <= d - now)
    return;
  uv_timer_start(&conn->timer, on_timer, d > now ? d - now : 0, 0);
}

/* Enters a phase ending at loop time `deadline` (0: no phase limit). */
static void conn_arm_at(llmux__upconn_t *conn, uint64_t deadline) {
  conn->phase_deadline = deadline;
  conn_rearm(conn);
}

/* Enters a phase lasting at most `ms` (0: no phase limit). */
static void conn_arm(llmux__upconn_t *conn, uint64_t ms) {
  conn_arm_at(conn, ms ? uv_now(conn->up->loop) + ms : 0);
}

static void on_timer(uv_timer_t *t) {
  llmux__upconn_t *conn = llmux_container_of(t, llmux__upconn_t, timer);
  llmux_upstream_req_t *req = conn->req;
  uint64_t now = uv_now(conn->up->loop), due = conn_due(conn);
  const char *what;

  if (conn->closing || due == 0) return;
  if (now < due) { /* a deadline moved later since the timer started */
    uv_timer_start(&conn->timer, on_timer, due - now, 0);
    return;
  }
  if (conn->state == C_IDLE || req == NULL) {
    conn_close(conn); /* pooled connection unused for too long */
    return;
  }
  if (req->total_deadline && now >= req->total_deadline) {
    what = "total timeout";
  } else if (conn->state == C_CONNECTING && now < conn->connect_deadline &&
             !uv_is_closing((uv_handle_t *)&conn->tcp)) {
    attempt_failed(conn, UV_ETIMEDOUT); /* this address's share ran out */
    return;
  } else if (conn->state != C_ACTIVE)
    what = "connect timeout";
  else if (req->bytes_received == 0)
    what = "no response before the first-byte timeout";
  else
    what = "response stalled longer than the idle timeout";
  conn_fail(conn, LLMUX_ETIMEOUT, "%s (%s:%u)", what, conn->key->host, conn->key->port);
}

/* ---- pool bookkeeping ------------------------------------------------- */

static upkey_t *key_get(llmux_upstream_t *up, const llmux_upstream_req_t *req) {
  llmux_tls_ctx_t *ctx = req->https ? req->tls_ctx : NULL;
  size_t n = strlen(req->host);
  upkey_t *k;

  for (k = up->keys; k != NULL; k = k->next)
    if (k->https == req->https && k->port == req->port && k->tls_ctx == ctx &&
        strcmp(k->host, req->host) == 0)
      return k;
  k = llmux_xcalloc(1, sizeof(*k) + n + 1);
  k->https = req->https;
  k->port = req->port;
  k->tls_ctx = ctx;
  memcpy(k->host, req->host, n + 1);
  k->next = up->keys;
  up->keys = k;
  return k;
}

static void idle_remove(llmux__upconn_t *conn) {
  upkey_t *k = conn->key;
  if (conn->iprev) conn->iprev->inext = conn->inext;
  else k->idle = conn->inext;
  if (conn->inext) conn->inext->iprev = conn->iprev;
  conn->inext = conn->iprev = NULL;
  k->nidle--;
  conn->up->nidle--;
}

static llmux__upconn_t *idle_pop(upkey_t *k) {
  llmux__upconn_t *conn = k->idle;
  if (conn == NULL) return NULL;
  idle_remove(conn);
  conn->state = C_ACTIVE; /* no longer pooled, whatever happens next */
  return conn;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);

static void conn_read_start(llmux__upconn_t *conn) {
  (void)uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read); /* EALREADY is fine */
}

/* After a complete response: keep the connection for the next request. */
static void conn_release(llmux__upconn_t *conn) {
  llmux_upstream_t *up = conn->up;
  upkey_t *k = conn->key;

  if (up->closing || k->nidle >= up->max_idle) {
    conn_close(conn);
    return;
  }
  conn->state = C_IDLE;
  conn->inext = k->idle;
  conn->iprev = NULL;
  if (k->idle) k->idle->iprev = conn;
  k->idle = conn;
  k->nidle++;
  up->nidle++;
  conn_read_start(conn); /* an EOF while idle closes it */
  conn_arm(conn, up->idle_timeout_ms);
}

static void conn_attach(llmux__upconn_t *conn, llmux_upstream_req_t *req) {
  conn->req = req;
  req->conn = conn;
}

static void conn_detach(llmux__upconn_t *conn) {
  if (conn->req) conn->req->conn = NULL;
  conn->req = NULL;
}

/* ---- closing ----------------------------------------------------------- */

static void conn_free(llmux__upconn_t *conn) {
  llmux_upstream_t *up = conn->up;
  if (conn->prev) conn->prev->next = conn->next;
  else up->conns = conn->next;
  if (conn->next) conn->next->prev = conn->prev;
  up->nconns--;
  llmux_tls_free(conn->tls);
  llmux_buf_free(&conn->head);
  llmux_buf_free(&conn->wbuf);
  llmux_buf_free(&conn->hbuf);
  release_hdr(conn);
  free(conn->addrs);
  free(conn);
  pool_maybe_closed(up);
}

static void on_conn_handle_closed(uv_handle_t *h) {
  llmux__upconn_t *conn = h->data;
  if (--conn->pending_closes == 0) conn_free(conn);
}

/* The TCP handle's close callback, both for the end of the connection and
 * between two connect attempts (then it opens a fresh handle). */
static void on_tcp_closed(uv_handle_t *h) {
  llmux__upconn_t *conn = h->data;
  if (conn->closing) {
    on_conn_handle_closed(h);
    return;
  }
  uv_tcp_init(conn->up->loop, &conn->tcp);
  conn->tcp.data = conn;
  conn_connect_next(conn);
}

static void conn_close(llmux__upconn_t *conn) {
  if (conn->closing) return;
  conn->closing = 1;
  if (conn->state == C_IDLE) idle_remove(conn);
  conn_detach(conn);
  if (conn->resolving) (void)llmux_dns_cancel(&conn->dreq); /* no callback after this */
  conn->resolving = 0;
  conn->pending_closes = 2;
  /* Closing the TCP handle closes the fd now, so pending writes never read
   * the caller's buffers again: that is what lets cancel return at once.
   * Between two connect attempts it is closing already; its callback
   * counts then. */
  if (!uv_is_closing((uv_handle_t *)&conn->tcp))
    uv_close((uv_handle_t *)&conn->tcp, on_tcp_closed);
  uv_close((uv_handle_t *)&conn->timer, on_conn_handle_closed);
}

static int retryable(const llmux__upconn_t *conn, const llmux_upstream_req_t *req, int err) {
  return conn->served > 0 && req->bytes_received == 0 && !req->retried &&
         !conn->up->closing && (err == LLMUX_EEOF || err == LLMUX_ECONNRESET);
}

/* Ends the request with an error (or retries it), and closes the conn. */
static void conn_fail(llmux__upconn_t *conn, int err, const char *fmt, ...) {
  llmux_upstream_req_t *req = conn->req;
  llmux_upstream_t *up = conn->up;
  upkey_t *key = conn->key;
  va_list ap;
  int r;

  conn_close(conn);
  if (req == NULL) return;
  va_start(ap, fmt);
  vsnprintf(req->error, sizeof(req->error), fmt, ap);
  va_end(ap);
  if (retryable(conn, req, err)) {
    llmux_debug("upstream %s:%u: pooled connection was closed (%s), retrying",
                key->host, key->port, req->error);
    req->retried = 1;
    req->reused = 0;
    req->error[0] = '\0';
    r = conn_open(up, key, req);
    if (r == 0) return;
    err = r;
    snprintf(req->error, sizeof(req->error), "retry failed: %s", llmux_strerror(r));
  }
  req->on_done(req, err);
}

static void fail_uv(llmux__upconn_t *conn, int uverr, const char *what) {
  conn_fail(conn, map_uv(uverr), "%s %s:%u: %s", what, conn->key->host, conn->key->port,
            uv_strerror(uverr));
}

/* A complete response: pool or close the connection, then on_done. */
static void conn_complete(llmux__upconn_t *conn, int clean) {
  llmux_upstream_req_t *req = conn->req;
  int keep = clean && llhttp_should_keep_alive(&conn->parser) && !conn->writing &&
             !(conn->tls && llmux_tls_pending(conn->tls));

  conn->served++;
  conn_detach(conn);
  if (keep) conn_release(conn);
  else conn_close(conn);
  req->error[0] = '\0';
  req->on_done(req, req->status);
}

/* ---- connecting -------------------------------------------------------- */

/* When the current attempt must give up: with more addresses to try, an
 * equal share of the connect budget left (at least ATTEMPT_MIN_MS), so one
 * silent address cannot eat the whole budget; the last one gets the rest. */
static uint64_t attempt_deadline(const llmux__upconn_t *conn) {
  uint64_t now = uv_now(conn->up->loop), left_ms, share;
  unsigned left = conn->naddrs - conn->next_addr + 1; /* this one included */

  if (conn->connect_deadline == 0 || left <= 1 || conn->connect_deadline <= now)
    return conn->connect_deadline;
  left_ms = conn->connect_deadline - now;
  share = left_ms / left;
  if (share < ATTEMPT_MIN_MS) share = left_ms < ATTEMPT_MIN_MS ? left_ms : ATTEMPT_MIN_MS;
  return now + share;
}

static void on_connect(uv_connect_t *creq, int status);

/* Starts a TCP connect to the next address of the answer (one is left). */
static void conn_connect_next(llmux__upconn_t *conn) {
  const upaddr_t *a = &conn->addrs[conn->next_addr++];
  int r;

  assert(conn->next_addr <= conn->naddrs);
  conn->state = C_CONNECTING;
  r = uv_tcp_connect(&conn->creq, &conn->tcp, &a->sa, on_connect);
  if (r != 0) {
    attempt_failed(conn, r);
    return;
  }
  conn_arm_at(conn, attempt_deadline(conn));
}

/* One address failed (refused, unreachable, timed out): fail the request
 * if it was the last one, else close this socket and try the next address
 * from on_tcp_closed. The connect deadline keeps running meanwhile. */
static void attempt_failed(llmux__upconn_t *conn, int uverr) {
  const upkey_t *k = conn->key;

  if (conn->next_addr >= conn->naddrs) {
    conn_fail(conn, map_uv(uverr), "cannot connect to %s:%u: %s%s", k->host, k->port,
              uv_strerror(uverr), conn->naddrs > 1 ? " (every address failed)" : "");
    return;
  }
  llmux_debug("upstream %s:%u: address %u of %u failed (%s), trying the next", k->host,
              k->port, conn->next_addr, conn->naddrs, uv_strerror(uverr));
  conn_arm_at(conn, conn->connect_deadline);
  uv_close((uv_handle_t *)&conn->tcp, on_tcp_closed);
}

static void on_resolved(llmux_dns_req_t *dreq, int status, const struct sockaddr_storage *addrs,
                        size_t naddrs) {
  llmux__upconn_t *conn = dreq->data;
  size_t i;

  conn->resolving = 0;
  if (status != 0) {
    conn_fail(conn, status == LLMUX_ENOMEM || status == LLMUX_ECANCELED ? status : LLMUX_EDNS,
              "cannot resolve %s: %s", conn->key->host,
              dreq->reason ? dreq->reason : llmux_strerror(status));
    return;
  }
  assert(naddrs > 0);
  if (naddrs > LLMUX_DNS_MAX_ADDRS) naddrs = LLMUX_DNS_MAX_ADDRS;
  free(conn->addrs);
  if ((conn->addrs = malloc(naddrs * sizeof(*conn->addrs))) == NULL) {
    conn_fail(conn, LLMUX_ENOMEM, "cannot resolve %s: out of memory", conn->key->host);
    return;
  }
  for (i = 0; i < naddrs; i++)
    memcpy(&conn->addrs[i], &addrs[i], addrs[i].ss_family == AF_INET6 ?
           sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
  conn->naddrs = (unsigned)i;
  conn->next_addr = 0;
  conn_connect_next(conn);
}

static void on_connect(uv_connect_t *creq, int status) {
  llmux__upconn_t *conn = llmux_container_of(creq, llmux__upconn_t, creq);
  int r;

  /* ECANCELED: this attempt was abandoned and its handle is closing. */
  if (conn->closing || status == UV_ECANCELED) return;
  if (status < 0) {
    attempt_failed(conn, status);
    return;
  }
  (void)uv_tcp_nodelay(&conn->tcp, 1);
  conn_read_start(conn);
  if (!conn->key->https) {
    r = conn_send(conn);
    if (r != 0) conn_fail(conn, r, "cannot send request: %s", llmux_strerror(r));
    return;
  }
  conn->state = C_HANDSHAKE;
  conn_arm_at(conn, conn->connect_deadline); /* the rest of the budget */
  r = llmux_tls_new(&conn->tls, conn->key->tls_ctx, conn->key->host);
  if (r == 0) r = llmux_tls_handshake(conn->tls);
  if (r == LLMUX_EAGAIN) r = conn_flush(conn);
  if (r != 0)
    conn_fail(conn, r == LLMUX_ENOMEM ? r : LLMUX_ETLS, "TLS setup with %s failed",
              conn->key->host);
}

static int conn_open(llmux_upstream_t *up, upkey_t *key, llmux_upstream_req_t *req) {
  llmux__upconn_t *conn;
  int r;

  conn = calloc(1, sizeof(*conn));
  if (conn == NULL) return LLMUX_ENOMEM;
  conn->up = up;
  conn->key = key;
  conn->state = C_RESOLVING;
  uv_tcp_init(up->loop, &conn->tcp);
  uv_timer_init(up->loop, &conn->timer);
  conn->tcp.data = conn->timer.data = conn;
  conn->next = up->conns;
  if (up->conns) up->conns->prev = conn;
  up->conns = conn;
  up->nconns++;
  conn_attach(conn, req);
  conn->connect_deadline = req->connect_timeout_ms ?
      uv_now(up->loop) + req->connect_timeout_ms : 0;
  conn_arm_at(conn, conn->connect_deadline);
  r = llmux_dns_resolve(&up->dns, &conn->dreq, key->host, key->port, on_resolved, conn);
  if (r != 0) {
    conn_close(conn); /* detaches req: no callback */
    return r;
  }
  conn->resolving = 1;
  return 0;
}

/* ---- sending ----------------------------------------------------------- */

static void on_write(uv_write_t *w, int status);
static void request_sent(llmux__upconn_t *conn);

/* Writes iov now if the socket takes it all (the common case: no queued
 * write request, and no POLLOUT registration for libuv to undo with an
 * epoll_ctl afterwards); queues the rest with uv_write. Returns 1 when all
 * was written, 0 when a write is outstanding (on_write follows), or a
 * negative LLMUX_E*. The iov array may be modified. */
static int write_now_or_queue(llmux__upconn_t *conn, uv_buf_t *iov, unsigned n) {
  size_t total = 0;
  unsigned i;
  int r;
  for (i = 0; i < n; i++) total += iov[i].len;
  r = uv_try_write((uv_stream_t *)&conn->tcp, iov, n);
  if (r >= 0 && (size_t)r == total) return 1;
  if (r < 0 && r != UV_EAGAIN) return map_uv(r);
  if (r > 0) { /* partial: skip what went out */
    size_t done = (size_t)r;
    while (n > 0 && done >= iov[0].len) {
      done -= iov[0].len;
      iov++;
      n--;
    }
    iov[0].base += done;
    iov[0].len -= done;
  }
  r = uv_write(&conn->wreq, (uv_stream_t *)&conn->tcp, iov, n, on_write);
  if (r != 0) return map_uv(r);
  conn->writing = 1;
  return 0;
}

/* TLS: hands all queued ciphertext to one uv_write (one write at a time;
 * more is sent from on_write). */
static int conn_flush(llmux__upconn_t *conn) {
  uv_buf_t b;
  int r;
  if (conn->writing) return 0;
  if (llmux_tls_out_take(conn->tls, &conn->wbuf) == 0) return 0;
  b = uv_buf_init(conn->wbuf.base, (unsigned)conn->wbuf.len);
  r = write_now_or_queue(conn, &b, 1);
  if (r == 1 && conn->req_queued) {
    const char *more;
    if (llmux_tls_out(conn->tls, &more) == 0) request_sent(conn);
  }
  return r < 0 ? r : 0;
}

static void request_sent(llmux__upconn_t *conn) {
  conn->req_queued = 0;
  /* Every byte of the head went out (or into the TLS engine): a retry on
   * another connection builds its own. */
  llmux_buf_free(&conn->head);
  /* First-byte time counts from the end of the request. */
  if (conn->req && conn->req->bytes_received == 0 && !conn->req->paused)
    conn_arm(conn, conn->req->first_byte_timeout_ms);
}

static void on_write(uv_write_t *w, int status) {
  llmux__upconn_t *conn = llmux_container_of(w, llmux__upconn_t, wreq);
  const char *out;
  int r;

  conn->writing = 0;
  if (conn->closing) return;
  if (status < 0) {
    fail_uv(conn, status, "cannot send to");
    return;
  }
  if (conn->tls && llmux_tls_out(conn->tls, &out) > 0) {
    r = conn_flush(conn);
    if (r != 0) conn_fail(conn, r, "cannot send to %s", conn->key->host);
    return;
  }
  if (conn->req_queued) request_sent(conn);
}

static int method_has_body(const char *m) {
  return strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0 || strcmp(m, "PATCH") == 0;
}

/* "METHOD path HTTP/1.1", Host, the caller's lines, Content-Length. */
/* Into the pool's head_scratch: a head the socket or the TLS engine takes
 * at once needs no buffer of the connection's (send_plain keeps one it
 * could not send whole). */
static int build_head(llmux__upconn_t *conn, const llmux_upstream_req_t *req, size_t body_len) {
  const upkey_t *k = conn->key;
  llmux_buf_t *h = &conn->up->head_scratch;
  int v6 = strchr(k->host, ':') != NULL;
  int r;

  char num[24];
  h->len = 0;
  r = llmux_buf_reserve(h, 128 + req->headers_len);
  if (r == 0) r = llmux_buf_appends(h, req->method ? req->method : "GET");
  if (r == 0) r = llmux_buf_append(h, " ", 1);
  if (r == 0) r = llmux_buf_appends(h, req->path ? req->path : "/");
  if (r == 0) r = llmux_buf_appends(h, v6 ? " HTTP/1.1\r\nHost: [" : " HTTP/1.1\r\nHost: ");
  if (r == 0) r = llmux_buf_appends(h, k->host);
  if (r == 0 && v6) r = llmux_buf_append(h, "]", 1);
  if (r == 0 && k->port != (k->https ? 443 : 80)) {
    num[0] = ':';
    r = llmux_buf_append(h, num, 1 + llmux_u64_dec(num + 1, k->port));
  }
  if (r == 0) r = llmux_buf_append(h, "\r\n", 2);
  if (r == 0 && req->headers_len) r = llmux_buf_append(h, req->headers, req->headers_len);
  if (r == 0 && (req->nbody > 0 || (req->method && method_has_body(req->method)))) {
    r = llmux_buf_appends(h, "Content-Length: ");
    if (r == 0) r = llmux_buf_append(h, num, llmux_u64_dec(num, body_len));
    if (r == 0) r = llmux_buf_append(h, "\r\n", 2);
  }
  if (r == 0) r = llmux_buf_append(h, "\r\n", 2);
  return r;
}

static int send_tls(llmux__upconn_t *conn, const llmux_upstream_req_t *req) {
  unsigned i;
  const llmux_buf_t *h = &conn->up->head_scratch;
  int r = llmux_tls_write(conn->tls, h->base, h->len);
  for (i = 0; r == 0 && i < req->nbody; i++)
    if (req->body[i].len) r = llmux_tls_write(conn->tls, req->body[i].base, req->body[i].len);
  if (r == 0) r = conn_flush(conn);
  return r;
}

/* Plain: head and body in one uv_write; libuv copies the array, not the data. */
static int send_plain(llmux__upconn_t *conn, const llmux_upstream_req_t *req) {
  uv_buf_t small[INLINE_IOV], *iov = small;
  unsigned n = req->nbody + 1;
  int r;

  if (n > INLINE_IOV) {
    iov = malloc(n * sizeof(*iov));
    if (iov == NULL) return LLMUX_ENOMEM;
  }
  iov[0] = uv_buf_init(conn->up->head_scratch.base, (unsigned)conn->up->head_scratch.len);
  if (req->nbody) memcpy(iov + 1, req->body, req->nbody * sizeof(*iov));
  r = write_now_or_queue(conn, iov, n);
  if (iov != small) free(iov);
  if (r == 0) { /* queued: the write refers to the head until on_write */
    llmux_buf_free(&conn->head);
    conn->head = conn->up->head_scratch;
    memset(&conn->up->head_scratch, 0, sizeof conn->up->head_scratch);
  }
  return r < 0 ? r : 0; /* conn_send marks it sent when nothing is queued */
}

static const llhttp_settings_t parser_settings;

static int conn_send(llmux__upconn_t *conn) {
  llmux_upstream_req_t *req = conn->req;
  size_t body_len = 0;
  unsigned i;
  int r;

  for (i = 0; i < req->nbody; i++) body_len += req->body[i].len;
  r = build_head(conn, req, body_len);
  if (r != 0) return r;
  free(conn->addrs); /* connected: no other address will be tried */
  conn->addrs = NULL;
  llhttp_init(&conn->parser, HTTP_RESPONSE, &parser_settings);
  conn->parser.data = conn;
  conn->msg_done = conn->in_1xx = 0;
  conn->cb_err = 0;
  conn->head_method = req->method != NULL && strcmp(req->method, "HEAD") == 0;
  conn->state = C_ACTIVE;
  conn->req_queued = 1;
  if (req->paused) {
    uv_read_stop((uv_stream_t *)&conn->tcp);
    conn_arm(conn, 0);
  } else {
    conn_arm(conn, req->first_byte_timeout_ms);
  }
  r = conn->tls ? send_tls(conn, req) : send_plain(conn, req);
  if (r == 0 && !conn->writing) request_sent(conn);
  return r;
}

/* ---- response parsing -------------------------------------------------- */

/* A head that fits in one read is neither copied nor given an array of its
 * own: its fields are offsets into the bytes being parsed (conn->chunk), in
 * the pool's scratch array, and on_headers_complete lends them on. When a
 * read ends inside the head, park_head moves what it has so far into
 * hbuf and an array of the connection's, and from then on each piece is
 * appended there. After on_head nothing is kept (a stream holds none of
 * it); fields after it are trailers, counted against the same limits but
 * not kept. */
static void release_hdr(llmux__upconn_t *conn) {
  if (conn->hdr_scratch) conn->up->hdr_scratch_busy = 0;
  else free(conn->hdr);
  conn->hdr = NULL;
  conn->hdr_cap = 0;
  conn->hdr_scratch = 0;
}

static int on_message_begin(llhttp_t *p) {
  llmux__upconn_t *conn = p->data;
  release_hdr(conn);
  conn->nhdr = 0;
  conn->hbytes = 0;
  conn->hbuf.len = 0;
  conn->hstate = 0;
  conn->in_head = 1;
  conn->head_split = 0;
  conn->head_done = 0;
  return 0;
}

static int head_fail(llmux__upconn_t *conn, int err, const char *why) {
  conn->cb_err = err;
  llhttp_set_error_reason(&conn->parser, why);
  return -1;
}

/* Counts a piece of the head (or of the trailers) against the limit; for
 * the head, where it is: its offset in hbuf (appended) or in chunk. */
static int header_bytes(llmux__upconn_t *conn, const char *at, size_t len, uint32_t *off) {
  if (len > MAX_HEAD_BYTES - conn->hbytes)
    return head_fail(conn, LLMUX_EPROTO, "response headers too large");
  conn->hbytes += len;
  if (conn->head_done) return 0;
  if (!conn->head_split) {
    *off = (uint32_t)(at - conn->chunk);
    return 0;
  }
  *off = (uint32_t)conn->hbuf.len;
  return llmux_buf_append(&conn->hbuf, at, len) != 0
             ? head_fail(conn, LLMUX_ENOMEM, "out of memory") : 0;
}

/* Room for one more field: the pool's scratch array when free, else an
 * array of the connection's, grown as needed. */
static int hdr_room(llmux__upconn_t *conn) {
  size_t cap;
  hdr_t *nh;
  if (conn->hdr == NULL && !conn->head_split && !conn->up->hdr_scratch_busy) {
    conn->up->hdr_scratch_busy = 1;
    conn->hdr = conn->up->hdr_scratch;
    conn->hdr_cap = MAX_HEADERS;
    conn->hdr_scratch = 1;
    return 0;
  }
  cap = conn->hdr_cap ? conn->hdr_cap * 2 : HDR_MIN;
  if (cap > MAX_HEADERS) cap = MAX_HEADERS;
  if ((nh = realloc(conn->hdr, cap * sizeof(*nh))) == NULL)
    return head_fail(conn, LLMUX_ENOMEM, "out of memory");
  conn->hdr = nh;
  conn->hdr_cap = cap;
  return 0;
}

/* The read ended inside the head: its pieces so far go to hbuf (the piece
 * being read, the last field's name or value, last, so the rest of it
 * lands right after), its fields to an array of the connection's. */
static int park_head(llmux__upconn_t *conn) {
  size_t i;
  if (conn->head_split) return 0;
  conn->head_split = 1;
  if (conn->hdr_scratch) {
    hdr_t *own = malloc((conn->nhdr > HDR_MIN ? conn->nhdr : HDR_MIN) * sizeof(*own));
    if (own == NULL) return head_fail(conn, LLMUX_ENOMEM, "out of memory");
    memcpy(own, conn->hdr, conn->nhdr * sizeof(*own));
    conn->up->hdr_scratch_busy = 0;
    conn->hdr_scratch = 0;
    conn->hdr = own;
    conn->hdr_cap = conn->nhdr > HDR_MIN ? conn->nhdr : HDR_MIN;
  }
  for (i = 0; i < conn->nhdr; i++) {
    hdr_t *h = &conn->hdr[i];
    uint32_t noff = (uint32_t)conn->hbuf.len;
    if (llmux_buf_append(&conn->hbuf, conn->chunk + h->noff, h->nlen) != 0 ||
        llmux_buf_append(&conn->hbuf, conn->chunk + h->voff, h->vlen) != 0)
      return head_fail(conn, LLMUX_ENOMEM, "out of memory");
    h->noff = noff;
    h->voff = noff + h->nlen;
  }
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  llmux__upconn_t *conn = p->data;
  hdr_t *h;
  uint32_t off = 0;
  if (header_bytes(conn, at, len, &off) != 0) return -1;
  if (conn->hstate != 1) {
    if (conn->nhdr == MAX_HEADERS)
      return head_fail(conn, LLMUX_EPROTO, "too many response headers");
    conn->hstate = 1;
    if (conn->head_done) { /* a trailer: counted only */
      conn->nhdr++;
      return 0;
    }
    if (conn->nhdr == conn->hdr_cap && hdr_room(conn) != 0) return -1;
    h = &conn->hdr[conn->nhdr++];
    h->noff = h->voff = off;
    h->nlen = h->vlen = 0;
  }
  if (!conn->head_done) conn->hdr[conn->nhdr - 1].nlen += (uint32_t)len;
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  llmux__upconn_t *conn = p->data;
  hdr_t *h;
  uint32_t off = 0;
  if (header_bytes(conn, at, len, &off) != 0) return -1;
  if (conn->head_done || conn->nhdr == 0) { /* a trailer's: counted only */
    conn->hstate = 2;
    return 0;
  }
  h = &conn->hdr[conn->nhdr - 1];
  if (conn->hstate != 2) {
    h->voff = off;
    conn->hstate = 2;
  }
  h->vlen += (uint32_t)len;
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  llmux__upconn_t *conn = p->data;
  llmux_upstream_req_t *req = conn->req;
  llmux_str_t pairs[2 * MAX_HEADERS];
  size_t i;
  int status = p->status_code;

  conn->in_head = 0;
  if (status == 101) return head_fail(conn, LLMUX_EPROTO, "unexpected protocol upgrade");
  if (status < 200) { /* 100 Continue, 103 Early Hints: skip */
    conn->in_1xx = 1;
    return 0;
  }
  req->status = status;
  if (req->on_head) {
    const char *base = conn->head_split ? conn->hbuf.base : conn->chunk;
    for (i = 0; i < conn->nhdr; i++) {
      pairs[2 * i].base = base + conn->hdr[i].noff;
      pairs[2 * i].len = conn->hdr[i].nlen;
      pairs[2 * i + 1].base = base + conn->hdr[i].voff;
      pairs[2 * i + 1].len = conn->hdr[i].vlen;
    }
    req->on_head(req, status, pairs, conn->nhdr);
  }
  /* The caller copied what it keeps: nothing points into them now. */
  release_hdr(conn);
  llmux_buf_free(&conn->hbuf);
  conn->head_done = 1;
  if (conn->req != req) return -1; /* cancelled */
  return conn->head_method ? 1 : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  llmux__upconn_t *conn = p->data;
  llmux_upstream_req_t *req = conn->req;
  if (conn->in_1xx || req->on_body == NULL) return 0;
  req->on_body(req, at, len);
  return conn->req == req ? 0 : -1;
}

static int on_message_complete(llhttp_t *p) {
  llmux__upconn_t *conn = p->data;
  if (conn->in_1xx) {
    conn->in_1xx = 0;
    return 0;
  }
  conn->msg_done = 1;
  return HPE_PAUSED; /* stop here: anything after it is not ours */
}

static const llhttp_settings_t parser_settings = {
  .on_message_begin = on_message_begin,
  .on_header_field = on_header_field,
  .on_header_value = on_header_value,
  .on_headers_complete = on_headers_complete,
  .on_body = on_body,
  .on_message_complete = on_message_complete,
};

static void conn_on_plain(llmux__upconn_t *conn, const char *data, size_t len) {
  llmux_upstream_req_t *req = conn->req;
  llhttp_errno_t err;
  size_t left;

  if (req == NULL || conn->state != C_ACTIVE) { /* bytes nobody asked for */
    conn_close(conn);
    return;
  }
  req->bytes_received += len;
  if (!req->paused) conn_arm(conn, req->idle_timeout_ms);
  conn->chunk = data;
  err = llhttp_execute(&conn->parser, data, len);
  /* The read's bytes go: a head still being read moves out of them and
   * out of the pool's scratch array (the next read may be another's). */
  if (conn->in_head && err == HPE_OK && conn->req == req) {
    if (park_head(conn) != 0) err = HPE_USER;
  } else if (conn->hdr_scratch) {
    release_hdr(conn);
  }
  if (conn->req != req) return; /* cancelled from a callback */
  if (conn->msg_done) {
    left = (size_t)(data + len - llhttp_get_error_pos(&conn->parser));
    conn_complete(conn, left == 0);
    return;
  }
  if (err != HPE_OK)
    conn_fail(conn, conn->cb_err ? conn->cb_err : LLMUX_EPROTO, "invalid response from %s: %s",
              conn->key->host, llhttp_get_error_reason(&conn->parser));
}

/* The peer closed: the end of a close-delimited body, or an error. */
static void conn_on_eof(llmux__upconn_t *conn) {
  llmux_upstream_req_t *req = conn->req;
  if (conn->state == C_HANDSHAKE) {
    conn_fail(conn, LLMUX_ETLS, "%s closed the connection during the TLS handshake",
              conn->key->host);
    return;
  }
  if (conn->state == C_ACTIVE && req->bytes_received > 0) {
    (void)llhttp_finish(&conn->parser);
    if (conn->req != req) return;
    if (conn->msg_done) {
      conn_complete(conn, 0);
      return;
    }
  }
  conn_fail(conn, LLMUX_EEOF, "%s closed the connection before the response was complete",
            conn->key->host);
}

/* Advances the handshake with what was fed; sends the request once done.
 * Returns 1 when plaintext may follow, 0 when there is nothing more to do. */
static int conn_handshake_step(llmux__upconn_t *conn) {
  int hs = llmux_tls_handshake(conn->tls), r;
  if (hs != 0 && hs != LLMUX_EAGAIN) {
    conn_fail(conn, hs == LLMUX_ECERT || hs == LLMUX_ENOMEM ? hs : LLMUX_ETLS, "%s: %s",
              conn->key->host, llmux_tls_last_error(conn->tls));
    return 0;
  }
  if ((r = conn_flush(conn)) != 0) {
    conn_fail(conn, r, "cannot send to %s", conn->key->host);
    return 0;
  }
  if (hs == LLMUX_EAGAIN) return 0;
  if ((r = conn_send(conn)) != 0) {
    conn_fail(conn, r, "cannot send request to %s: %s", conn->key->host, llmux_strerror(r));
    return 0;
  }
  return 1;
}

static void conn_on_cipher(llmux__upconn_t *conn, const char *data, size_t len) {
  llmux_upstream_req_t *req = conn->req;
  ssize_t n;
  int r;

  if (llmux_tls_feed(conn->tls, data, len) != 0) {
    conn_fail(conn, LLMUX_ENOMEM, "out of memory");
    return;
  }
  if (conn->state == C_HANDSHAKE && !conn_handshake_step(conn)) return;
  for (;;) {
    n = llmux_tls_read(conn->tls, conn->up->pbuf, sizeof(conn->up->pbuf));
    if (n == LLMUX_EAGAIN) break;
    if (n == LLMUX_EEOF) {
      conn_on_eof(conn);
      return;
    }
    if (n < 0) {
      conn_fail(conn, LLMUX_ETLS, "%s: %s", conn->key->host, llmux_tls_last_error(conn->tls));
      return;
    }
    conn_on_plain(conn, conn->up->pbuf, (size_t)n);
    if (conn->closing || conn->req != req) return; /* done, failed or cancelled */
  }
  /* Reading may have queued an alert or a renegotiation refusal. */
  if ((r = conn_flush(conn)) != 0) conn_fail(conn, r, "cannot send to %s", conn->key->host);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  llmux__upconn_t *conn = h->data;
  *buf = uv_buf_init(conn->up->rbuf, sizeof(conn->up->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  llmux__upconn_t *conn = s->data;
  llmux_upstream_req_t *req;

  if (nread == 0 || conn->closing) return;
  if (conn->state == C_IDLE) { /* pooled: the server closed it, or sent junk */
    conn_close(conn);
    return;
  }
  if (nread == UV_EOF) {
    conn_on_eof(conn);
    return;
  }
  if (nread < 0) {
    fail_uv(conn, (int)nread, "reading from");
    return;
  }
  req = conn->req;
  if (conn->tls) conn_on_cipher(conn, buf->base, (size_t)nread);
  else conn_on_plain(conn, buf->base, (size_t)nread);
  /* The connection's memory outlives this call (freed in a close
   * callback); its request is still ours only if nothing ended it. */
  if (req != NULL && conn->req == req && req->on_read_end != NULL) req->on_read_end(req);
}

/* ---- public API -------------------------------------------------------- */

int llmux_upstream_new(uv_loop_t *loop, const llmux_upstream_options_t *opts,
                       llmux_upstream_t **out) {
  llmux_upstream_t *up = calloc(1, sizeof(*up));
  int r;

  if (up == NULL) return LLMUX_ENOMEM;
  r = llmux_dns_init(loop, &up->dns, opts ? opts->dns : NULL);
  if (r != 0) {
    free(up);
    return r;
  }
  up->dns.data = up;
  up->loop = loop;
  up->max_idle = opts && opts->max_idle_per_key ? opts->max_idle_per_key : 256;
  up->idle_timeout_ms = opts && opts->idle_timeout_ms ? opts->idle_timeout_ms : 30000;
  up->data = opts ? opts->data : NULL;
  *out = up;
  return 0;
}

void *llmux_upstream_data(const llmux_upstream_t *up) {
  return up->data;
}

static void pool_free(llmux_upstream_t *up) {
  upkey_t *k, *next;
  for (k = up->keys; k != NULL; k = next) {
    next = k->next;
    free(k);
  }
  llmux_buf_free(&up->head_scratch);
  if (up->close_cb) up->close_cb(up);
  free(up);
}

/* Both come from close callbacks, never from llmux_upstream_close() itself;
 * whichever of the last connection and the resolver closes last frees. */
static void pool_maybe_closed(llmux_upstream_t *up) {
  if (up->closing && up->nconns == 0 && up->dns_closed) pool_free(up);
}

static void on_dns_closed(llmux_dns_t *dns) {
  llmux_upstream_t *up = dns->data;
  up->dns_closed = 1;
  pool_maybe_closed(up);
}

void llmux_upstream_close(llmux_upstream_t *up, void (*cb)(llmux_upstream_t *up)) {
  llmux__upconn_t *conn;
  assert(!up->closing);
  up->closing = 1;
  up->close_cb = cb;
  /* Closed connections stay linked until freed (later), so this walk is
   * safe even when an on_done cancels other requests. */
  for (conn = up->conns; conn != NULL; conn = conn->next) {
    if (conn->closing) continue;
    if (conn->req) conn_fail(conn, LLMUX_ECANCELED, "upstream client shutting down");
    else conn_close(conn);
  }
  /* Every lookup of ours was cancelled above: nothing is answered here. */
  llmux_dns_close(&up->dns, on_dns_closed);
}

void llmux_upstream_req_init(llmux_upstream_req_t *req) {
  memset(req, 0, sizeof(*req));
}

int llmux_upstream_start(llmux_upstream_t *up, llmux_upstream_req_t *req) {
  llmux__upconn_t *conn;
  upkey_t *key;
  int r;

  assert(req->conn == NULL);
  if (up->closing || req->host == NULL || req->host[0] == '\0' || req->on_done == NULL ||
      (req->https && req->tls_ctx == NULL) || (req->nbody && req->body == NULL))
    return LLMUX_EINVAL;
  req->https = !!req->https;
  if (req->port == 0) req->port = req->https ? 443 : 80;
  req->up = up;
  req->status = 0;
  req->bytes_received = 0;
  req->reused = req->retried = req->paused = 0;
  req->error[0] = '\0';
  req->total_deadline = req->total_timeout_ms ? uv_now(up->loop) + req->total_timeout_ms : 0;
  key = key_get(up, req);
  while ((conn = idle_pop(key)) != NULL) {
    conn_attach(conn, req);
    req->reused = 1;
    if (conn_send(conn) == 0) return 0;
    conn_close(conn); /* dead already: try the next one */
    req->reused = 0;
  }
  r = conn_open(up, key, req);
  if (r == LLMUX_EINVAL)
    snprintf(req->error, sizeof(req->error), "invalid host name: %.200s", req->host);
  else if (r != 0)
    snprintf(req->error, sizeof(req->error), "%s", llmux_strerror(r));
  return r;
}

void llmux_upstream_cancel(llmux_upstream_req_t *req) {
  llmux__upconn_t *conn = req->conn;
  if (conn == NULL) return;
  conn_close(conn); /* detaches req */
}

void llmux_upstream_pause(llmux_upstream_req_t *req) {
  llmux__upconn_t *conn = req->conn;
  if (conn == NULL || req->paused) return;
  req->paused = 1;
  if (conn->state != C_ACTIVE) return; /* applied when the request is sent */
  uv_read_stop((uv_stream_t *)&conn->tcp);
  conn_arm(conn, 0); /* the total deadline still runs */
}

void llmux_upstream_resume(llmux_upstream_req_t *req) {
  llmux__upconn_t *conn = req->conn;
  if (conn == NULL || !req->paused) return;
  req->paused = 0;
  if (conn->state != C_ACTIVE) return;
  conn_read_start(conn);
  conn_arm(conn, req->bytes_received ? req->idle_timeout_ms : req->first_byte_timeout_ms);
}

unsigned llmux_upstream_idle_count(const llmux_upstream_t *up) {
  return up->nidle;
}
