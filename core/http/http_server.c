/* HTTP/1.1 front door: libuv for I/O, llhttp for parsing.
 *
 * Per connection: one read buffer (pooled across connections), one llhttp
 * parser, one timer (header/body/idle timeouts, lingering close and deferred
 * work), and at most one request being parsed (`pending`) plus one handed to
 * the handler (`req`). Parsing stops while `req` is unfinished, so pipelined
 * requests wait, unparsed, in the read buffer and responses go out in order.
 *
 * While the header block is being parsed, llhttp's spans are remembered as
 * offsets from the message start (the buffer may be reallocated or
 * compacted between reads). At the end of the header block they are copied
 * once into the request's single allocation; the body is copied once, into
 * the request's body buffer.
 *
 * Memory a client can make us hold (see the header): the read buffer is
 * bounded, reading stops while an answer waits to be written, a body buffer
 * grows only as bytes arrive, and every read and body buffer is charged to
 * the server's mem_used, which stays within max_memory. */
#include "http/http_server.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/log.h"
#include "base/util.h"

#define RBUF_SIZE (16 * 1024)
#define BODY_MIN (16 * 1024) /* a body buffer's first size, if the body is larger */
#define HEAD_STACK 2048
#define LINGER_MS 2000
#define SINK_SIZE 4096
#define BACKLOG 511

enum phase {
  PH_IDLE,     /* between requests: idle (or first-request) timeout */
  PH_HEAD,     /* header block begun: header timeout, 408 */
  PH_BODY,     /* header block parsed, body arriving: body timeout, 408 */
  PH_HANDLING, /* request handed to the handler: no timer */
  PH_CLOSING   /* last response queued, shutdown sent: lingering close */
};

typedef struct {
  size_t name_off, name_len, val_off, val_len; /* from the message start */
} span_t;

typedef struct http_req_s {
  llmux_http_req_t pub; /* first: the handler's pointer is ours */
  llmux__http_conn_t *conn;
  llmux_buf_t body;
  size_t charged;       /* body bytes charged to the server, until freed */
  unsigned nwrites;     /* uv_write requests in flight that point at us */
  unsigned in_head : 1; /* lent to on_head: an answer closes the connection */
  unsigned finished : 1;
  unsigned aborted : 1;
  unsigned started : 1; /* streamed head sent */
  unsigned chunked : 1; /* stream framing: chunked, else close-delimited */
  unsigned no_body : 1; /* HEAD request, or 1xx/204/304 response */
  unsigned want_drain : 1;
  char rid[129];        /* llmux_http_set_request_id; "" when none */
} http_req_t;

struct llmux__http_conn_s {
  uv_tcp_t tcp;
  uv_timer_t timer;               /* runs on_timer's action at `due` (arm) */
  uint64_t due;                   /* loop ms; 0: nothing due (disarmed) */
  uv_shutdown_t shutdown;
  llhttp_t parser;
  llmux_http_server_t *srv;
  llmux__http_conn_t *next, *prev;
  char *rb; /* read buffer: [0, rpos) parsed, [rpos, rlen) not yet */
  size_t rlen, rcap, rpos;
  size_t head_start; /* offset of the message's first byte, when have_head */
  span_t *spans;
  size_t nspans, spans_cap;
  size_t url_off, url_len;
  uint64_t start_us;
  http_req_t *pending; /* headers parsed, body arriving */
  http_req_t *req;     /* handed to the handler, not finished */
  int phase;
  int hstate; /* 0 between header parts, 1 in a name, 2 in a value */
  int err_status;
  const char *err_code;
  const char *err_msg;
  unsigned nwrites;
  unsigned nrequests;
  unsigned nclose; /* close callbacks still to come */
  unsigned have_head : 1;
  unsigned send_continue : 1;
  unsigned closed : 1;
  unsigned failed : 1; /* write failed inside an API call: close from the loop */
  unsigned reading : 1;
  unsigned in_process : 1;
  unsigned direct : 1;  /* the last read went straight into the body buffer */
  unsigned skip_read : 1; /* the body is complete: no speculative read now */
  unsigned send_armed : 1; /* PH_HANDLING: the timer bounds a stalled client */
  unsigned resume_armed : 1;
  unsigned resume_on_drain : 1;
  unsigned eof : 1;
  unsigned no_room : 1; /* on_alloc found the read buffer full */
};

typedef struct {
  uv_write_t w;
  llmux__http_conn_t *conn;
  http_req_t *req; /* NULL for the server's own responses */
  char *owned;     /* freed when the write completes */
  uv_buf_t bufs[4];
  char copy[];     /* borrowed bytes that could not be written at once */
} wreq_t;

static void conn_process(llmux__http_conn_t *c);
static void conn_close(llmux__http_conn_t *c);
static void conn_error(llmux__http_conn_t *c, int status, const char *code,
                       const char *msg);
static void on_timer(uv_timer_t *t);

/* ---- small helpers ---------------------------------------------------- */

/* libuv's errors are negative errnos and share their numbers with LLMUX_E*
 * (UV_ENOENT is -2, so is LLMUX_ENOMEM): none leaves this file untranslated,
 * as in upstream.c. The listen errors keep their meaning for the operator. */
static int map_uv(int err) {
  switch (err) {
  case 0: return 0;
  case UV_EADDRINUSE: return LLMUX_EADDRINUSE;
  case UV_EACCES: case UV_EPERM: return LLMUX_EACCES;
  case UV_EADDRNOTAVAIL: case UV_EAFNOSUPPORT: return LLMUX_EADDRNOTAVAIL;
  case UV_EINVAL: return LLMUX_EINVAL;
  case UV_ENOMEM: case UV_ENOBUFS: return LLMUX_ENOMEM;
  case UV_ECONNRESET: case UV_EPIPE: case UV_ECONNABORTED: case UV_ENOTCONN:
    return LLMUX_ECONNRESET;
  case UV_ECANCELED: return LLMUX_ECANCELED;
  case UV_EOF: return LLMUX_EEOF;
  default: return LLMUX_EIO;
  }
}

static size_t write_queue(llmux__http_conn_t *c) {
  return uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
}

/* on_timer's action becomes due in `ms` (0: on the next loop turn). A
 * running timer due no later is left alone: it fires early, finds the
 * action not yet due and starts again for the rest (on_timer). So the
 * timeouts a keep-alive connection arms with each request (header, idle)
 * cost a store, not a timer restart, and disarm stops nothing. */
static void arm(llmux__http_conn_t *c, uint64_t ms) {
  uint64_t now = uv_now(c->srv->loop);
  c->resume_armed = 0;
  c->due = now + ms;
  if (ms > 0 && uv_is_active((uv_handle_t *)&c->timer) &&
      uv_timer_get_due_in(&c->timer) <= ms)
    return;
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void disarm(llmux__http_conn_t *c) {
  c->resume_armed = 0;
  c->due = 0;
}

static void read_stop(llmux__http_conn_t *c) {
  if (c->reading) uv_read_stop((uv_stream_t *)&c->tcp);
  c->reading = 0;
}

/* ---- memory a client can make us hold --------------------------------- */

static int mem_fits(const llmux_http_server_t *srv, size_t more) {
  return more <= srv->opts.max_memory && srv->mem_used <= srv->opts.max_memory - more;
}

static void mem_charge(llmux_http_server_t *srv, size_t n) {
  srv->mem_used += n;
  if (srv->mem_used > srv->mem_peak) srv->mem_peak = srv->mem_used;
}

static void mem_release(llmux_http_server_t *srv, size_t n) {
  assert(srv->mem_used >= n);
  srv->mem_used -= n;
}

static char *pool_get(llmux_http_server_t *srv) {
  if (srv->npool > 0) return srv->pool[--srv->npool];
  return malloc(RBUF_SIZE);
}

static void pool_put(llmux_http_server_t *srv, char *b, size_t cap) {
  if (cap == RBUF_SIZE && !srv->closing && srv->npool < LLMUX_COUNTOF(srv->pool))
    srv->pool[srv->npool++] = b;
  else
    free(b);
}

static void rbuf_release(llmux__http_conn_t *c) {
  if (c->rb == NULL) return;
  mem_release(c->srv, c->rcap);
  pool_put(c->srv, c->rb, c->rcap);
  c->rb = NULL;
  c->rlen = c->rcap = c->rpos = 0;
}

static void rbuf_release_if_empty(llmux__http_conn_t *c) {
  if (c->rb != NULL && c->rlen == 0) rbuf_release(c);
}

/* Room for the next read. The buffer grows only for a header block in
 * progress (it must hold max_header bytes, and a read more to see that a
 * head is too large), never while the handler holds a request (pipelined
 * bytes wait in what is there), never past RBUF_SIZE + max_header and never
 * past the server's max_memory. 0: no room (see conn_no_room). */
static size_t rbuf_room(llmux__http_conn_t *c) {
  llmux_http_server_t *srv = c->srv;
  size_t max = RBUF_SIZE + srv->opts.max_header, cap;
  char *nb;
  if (c->rb == NULL) {
    if (!mem_fits(srv, RBUF_SIZE) || (c->rb = pool_get(srv)) == NULL) return 0;
    c->rcap = RBUF_SIZE;
    mem_charge(srv, RBUF_SIZE);
  }
  if (c->rcap - c->rlen < RBUF_SIZE / 4 && c->rcap < max && c->req == NULL) {
    cap = c->rcap * 2 < max ? c->rcap * 2 : max;
    if (mem_fits(srv, cap - c->rcap) && (nb = realloc(c->rb, cap)) != NULL) {
      mem_charge(srv, cap - c->rcap);
      c->rb = nb;
      c->rcap = cap;
    }
  }
  return c->rcap - c->rlen;
}

/* Makes room for `more` body bytes of a body that will hold at most `most`:
 * the buffer doubles from BODY_MIN, but never past `most` (+1 for the NUL),
 * so a declared Content-Length is a ceiling, not a reservation. What it adds
 * is charged to the server. 0, LLMUX_ENOMEM, or LLMUX_ETOOLARGE when it
 * would go beyond max_memory. */
static int body_grow(llmux__http_conn_t *c, http_req_t *r, size_t more, size_t most) {
  llmux_http_server_t *srv = c->srv;
  llmux_buf_t *b = &r->body;
  size_t need = b->len + more + 1, cap;
  char *nb;
  if (need <= b->cap) return 0;
  cap = b->cap ? b->cap * 2 : BODY_MIN;
  if (cap > most + 1) cap = most + 1;
  if (cap < need) cap = need;
  if (!mem_fits(srv, cap - b->cap)) return LLMUX_ETOOLARGE;
  if ((nb = realloc(b->base, cap)) == NULL) return LLMUX_ENOMEM;
  mem_charge(srv, cap - b->cap);
  r->charged += cap - b->cap;
  b->base = nb;
  b->cap = cap;
  return 0;
}

/* Drops parsed bytes; keeps the header block in progress, whose spans are
 * offsets from its first byte. */
static void rbuf_compact(llmux__http_conn_t *c) {
  size_t keep = c->rpos;
  int in_head = c->phase == PH_HEAD && c->have_head;
  if (in_head && c->head_start < keep) keep = c->head_start;
  if (keep == 0) return;
  memmove(c->rb, c->rb + keep, c->rlen - keep);
  c->rlen -= keep;
  c->rpos -= keep;
  if (in_head) c->head_start -= keep;
}

/* Closing or draining: every response is a connection's last. */
static int winding_down(const llmux_http_server_t *srv) {
  return srv->closing || srv->draining;
}

static void req_maybe_free(http_req_t *r) {
  if (!(r->finished || r->aborted) || r->nwrites > 0) return;
  mem_release(r->pub.server, r->charged);
  llmux_buf_free(&r->body);
  free(r);
}

static int req_usable(const http_req_t *r) {
  return !r->finished && !r->aborted;
}

/* ---- writing ---------------------------------------------------------- */

static void conn_fail(llmux__http_conn_t *c) {
  /* Found inside an API call: the handler still holds its request, so the
   * abort must come later, from the loop. */
  if (c->closed || c->failed) return;
  c->failed = 1;
  read_stop(c);
  arm(c, 0);
}

static void on_write(uv_write_t *w, int status) {
  wreq_t *wr = llmux_container_of(w, wreq_t, w);
  llmux__http_conn_t *c = wr->conn;
  http_req_t *r = wr->req;
  free(wr->owned);
  free(wr);
  c->nwrites--;
  if (status < 0) {
    if (!c->closed) conn_close(c); /* aborts c->req; r is kept by nwrites */
  } else if (!c->closed && write_queue(c) == 0) {
    if (c->send_armed) {
      c->send_armed = 0;
      if (c->phase == PH_HANDLING) disarm(c);
    }
    if (r != NULL && r->want_drain && req_usable(r) && r->pub.on_drain != NULL) {
      r->want_drain = 0;
      r->pub.on_drain(&r->pub);
    }
    if (c->resume_on_drain && !c->closed) {
      c->resume_on_drain = 0;
      conn_process(c);
    }
  }
  if (r != NULL) {
    r->nwrites--;
    req_maybe_free(r);
  }
}

/* Writes bufs in order, trying the socket first so that the common case
 * needs neither a copy nor an allocation. What is left is queued: bytes of
 * bufs[owned_idx] stay in `owned` (freed after the write), the other bufs
 * are borrowed and copied. Errors from the socket arrive in on_write. */
static int conn_write(llmux__http_conn_t *c, http_req_t *r, uv_buf_t *bufs,
                      unsigned n, int owned_idx, char *owned, int *kept) {
  size_t total = 0, done = 0, copy = 0;
  unsigned i, j, k = 0;
  wreq_t *w;
  char *p;
  int rc;

  assert(n <= LLMUX_COUNTOF(w->bufs));
  if (c->closed || c->failed) { free(owned); return LLMUX_ECONNRESET; }
  for (i = 0; i < n; i++) total += bufs[i].len;
  if (c->nwrites == 0) {
    rc = uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
    if (rc > 0) done = (size_t)rc;
  }
  if (done == total) {
    if (kept != NULL) *kept = 1; /* all went at once: owned stays the caller's */
    else free(owned);
    return 0;
  }
  for (i = 0; done > 0 && done >= bufs[i].len; i++) done -= bufs[i].len;
  bufs[i].base += done;
  bufs[i].len -= done;
  if (owned_idx >= 0 && (unsigned)owned_idx < i) { free(owned); owned = NULL; }
  for (j = i; j < n; j++)
    if ((int)j != owned_idx) copy += bufs[j].len;
  w = malloc(sizeof(*w) + copy);
  if (w == NULL) { free(owned); conn_fail(c); return LLMUX_ENOMEM; }
  p = w->copy;
  for (j = i; j < n; j++) {
    if (bufs[j].len == 0) continue;
    if ((int)j == owned_idx) { w->bufs[k++] = bufs[j]; continue; }
    memcpy(p, bufs[j].base, bufs[j].len);
    /* Consecutive copied bufs are adjacent in w->copy: merge them. */
    if (k > 0 && w->bufs[k - 1].base + w->bufs[k - 1].len == p)
      w->bufs[k - 1].len += bufs[j].len;
    else
      w->bufs[k++] = uv_buf_init(p, (unsigned)bufs[j].len);
    p += bufs[j].len;
  }
  w->conn = c;
  w->req = r;
  w->owned = owned;
  rc = uv_write(&w->w, (uv_stream_t *)&c->tcp, w->bufs, k, on_write);
  if (rc < 0) { free(owned); free(w); conn_fail(c); return map_uv(rc); }
  c->nwrites++;
  if (r != NULL) r->nwrites++;
  return 0;
}

/* ---- response heads --------------------------------------------------- */

const char *llmux_http_status_reason(int status) {
  switch (status) {
  case 100: return "Continue";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 206: return "Partial Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 304: return "Not Modified";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 402: return "Payment Required";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 411: return "Length Required";
  case 413: return "Content Too Large";
  case 415: return "Unsupported Media Type";
  case 417: return "Expectation Failed";
  case 422: return "Unprocessable Content";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 499: return "Client Closed Request";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  default: return "Unknown";
  }
}

static int name_is(llmux_str_t s, const char *lit) {
  size_t n = strlen(lit);
  return s.len == n && strncasecmp(s.base, lit, n) == 0;
}

/* RFC 9110 5.6.2: the bytes of a field name (tchar), and the bytes no field
 * value may hold. */
#ifndef NDEBUG /* header_valid's check that llhttp did its part */
static const unsigned char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1,
    ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1};
#endif
static const unsigned char value_bad[256] = {[0] = 1, ['\r'] = 1, ['\n'] = 1};

/* Does s hold a NUL, CR or LF? 16 bytes at a time (GCC/Clang vectors, so
 * SSE2 or NEON or plain words, whatever the target has), the last 16
 * overlapping; shorter strings byte by byte. */
typedef unsigned char u8x16_t __attribute__((vector_size(16)));

static unsigned bytes_bad(llmux_str_t s) {
  const unsigned char *b = (const unsigned char *)s.base;
  unsigned bad = 0;
  size_t i;
  if (s.len >= 16) {
    u8x16_t v, acc = {0};
    uint64_t w[2];
    for (i = 0;; i += 16) {
      if (i + 16 > s.len) i = s.len - 16;
      memcpy(&v, b + i, 16);
      acc |= (u8x16_t)((v == 0) | (v == '\r') | (v == '\n'));
      if (i + 16 == s.len) break;
    }
    memcpy(w, &acc, sizeof w);
    return (w[0] | w[1]) != 0;
  }
  for (i = 0; i < s.len; i++) bad |= value_bad[b[i]];
  return bad;
}

/* Framing headers are the server's. */
static int framing_header(const llmux_http_header_t *h) {
  switch (h->name.len) {
  case 10: return strncasecmp(h->name.base, "connection", 10) == 0;
  case 14: return strncasecmp(h->name.base, "content-length", 14) == 0;
  case 17: return strncasecmp(h->name.base, "transfer-encoding", 17) == 0;
  }
  return 0;
}

/* CR, LF or NUL in a name or value would let it forge headers. */
static int header_dropped(const llmux_http_header_t *h) {
  return framing_header(h) || (bytes_bad(h->name) | bytes_bad(h->value)) != 0;
}

/* The sum of a vector's 16 byte lanes. */
static size_t lanes_sum(u8x16_t v) {
  uint64_t w[2], x;
  memcpy(w, &v, sizeof w);
  x = (w[0] & 0x00ff00ff00ff00ffull) + ((w[0] >> 8) & 0x00ff00ff00ff00ffull) +
      (w[1] & 0x00ff00ff00ff00ffull) + ((w[1] >> 8) & 0x00ff00ff00ff00ffull);
  return (size_t)((x * 0x0001000100010001ull) >> 48); /* four 16-bit lanes, each < 1021 */
}

/* Does a formatted head (at least 16 bytes) hold exactly `lines` CRLFs'
 * worth of CR and LF bytes and no NUL? Every line of ours ends in CRLF, so
 * a name or value that brought a CR or LF makes more. 16 bytes at a time,
 * the last 16 overlapping with only their new lanes counted: one pass over
 * the head rather than a check of each header. */
static int head_clean(const char *s, size_t len, size_t lines) {
  static const unsigned char tail_mask[32] = {
      0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
      0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
      0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  const unsigned char *b = (const unsigned char *)s;
  u8x16_t v, m, nul = {0};
  size_t breaks = 0, i = 0, k;
  assert(len >= 16);
  while (len - i >= 16) {
    u8x16_t acc = {0};
    for (k = 0; k < 255 && len - i >= 16; k++, i += 16) { /* a lane counts to 255 */
      memcpy(&v, b + i, 16);
      acc -= (u8x16_t)((v == '\r') | (v == '\n'));
      nul |= (u8x16_t)(v == 0);
    }
    breaks += lanes_sum(acc);
  }
  if (i < len) {
    memcpy(&v, b + len - 16, 16);
    memcpy(&m, tail_mask + (len - i), 16);
    breaks += lanes_sum((u8x16_t)((v == '\r') | (v == '\n')) & m & 1);
    nul |= (u8x16_t)(v == 0);
  }
  return breaks == 2 * lines && lanes_sum(nul & 1) == 0;
}

static size_t head_size(const llmux_http_header_t *h, size_t n) {
  size_t i, size = 256; /* status line, Server, framing, Connection, CRLF */
  for (i = 0; i < n; i++) size += h[i].name.len + h[i].value.len + 4;
  return size;
}

enum { FRAME_NONE = 0, FRAME_LENGTH = 1, FRAME_CHUNKED = 2 };

/* out must hold head_size(h, n) bytes. Returns the length written.
 * `checked`: each header is looked at for CR, LF and NUL (and dropped with
 * one); else the caller checks the whole head (format_head). */
static size_t format_head_with(char *out, int status, const llmux_http_header_t *h, size_t n,
                               int framing, size_t clen, int close, int keep_alive_10,
                               int checked, size_t *lines) {
  char *p = out;
  size_t i;
  *lines = 3; /* status line, Server, the empty line */
  if (status < 100 || status > 999) status = 500;
  {
    const char *reason = llmux_http_status_reason(status);
    size_t rl = strlen(reason);
    memcpy(p, "HTTP/1.1 ", 9);
    p += 9;
    p += llmux_u64_dec(p, (uint64_t)(status < 0 ? 0 : status));
    *p++ = ' ';
    memcpy(p, reason, rl);
    p += rl;
    memcpy(p, "\r\nServer: llmux\r\n", 17);
    p += 17;
  }
  for (i = 0; i < n; i++) {
    if (checked ? header_dropped(&h[i]) : framing_header(&h[i])) continue;
    ++*lines;
    memcpy(p, h[i].name.base, h[i].name.len);
    p += h[i].name.len;
    *p++ = ':';
    *p++ = ' ';
    memcpy(p, h[i].value.base, h[i].value.len);
    p += h[i].value.len;
    *p++ = '\r';
    *p++ = '\n';
  }
#define LIT(s) (memcpy(p, s, sizeof(s) - 1), p += sizeof(s) - 1)
  if (framing == FRAME_LENGTH) {
    LIT("Content-Length: ");
    p += llmux_u64_dec(p, clen);
    LIT("\r\n");
    ++*lines;
  }
  if (framing == FRAME_CHUNKED) LIT("Transfer-Encoding: chunked\r\n"), ++*lines;
  if (close) LIT("Connection: close\r\n"), ++*lines;
  else if (keep_alive_10) LIT("Connection: keep-alive\r\n"), ++*lines;
#undef LIT
  *p++ = '\r';
  *p++ = '\n';
  return (size_t)(p - out);
}

/* The head, each header checked only when the whole was not clean. */
static size_t format_head(char *out, int status, const llmux_http_header_t *h, size_t n,
                          int framing, size_t clen, int close, int keep_alive_10) {
  size_t lines, len = format_head_with(out, status, h, n, framing, clen, close, keep_alive_10,
                                       0, &lines);
  if (head_clean(out, len, lines)) return len;
  return format_head_with(out, status, h, n, framing, clen, close, keep_alive_10, 1, &lines);
}

/* ---- connection life -------------------------------------------------- */

static void server_maybe_closed(llmux_http_server_t *srv) {
  llmux_http_drained_cb drained = srv->drained_cb;
  llmux_http_close_cb closed = srv->close_cb;
  int cut_short = srv->closing;
  unsigned i;
  if (!(srv->closing || srv->draining) || srv->listener_open || srv->nconns > 0) return;
  srv->closing = 1; /* a finished drain is a close: a later close does nothing */
  srv->draining = 0;
  srv->drained_cb = NULL;
  srv->close_cb = NULL;
  for (i = 0; i < srv->npool; i++) free(srv->pool[i]);
  srv->npool = 0;
  free(srv->sink);
  srv->sink = NULL;
  /* Either callback may free srv: nothing touches it after them. */
  if (drained != NULL) drained(srv, cut_short ? LLMUX_ECANCELED : 0);
  if (cut_short && closed != NULL) closed(srv);
}

static void req_discard(http_req_t *r) {
  if (r == NULL) return;
  r->aborted = 1;
  req_maybe_free(r);
}

static void on_conn_closed(uv_handle_t *h) {
  llmux__http_conn_t *c = h->data;
  llmux_http_server_t *srv = c->srv;
  if (--c->nclose > 0) return;
  rbuf_release(c);
  free(c->spans);
  free(c);
  srv->nconns--;
  server_maybe_closed(srv);
}

static void conn_unlink(llmux__http_conn_t *c) {
  if (c->prev != NULL) c->prev->next = c->next;
  else c->srv->conns = c->next;
  if (c->next != NULL) c->next->prev = c->prev;
  c->next = c->prev = NULL;
}

/* Immediate close. A request the handler has not finished is aborted here. */
static void conn_close(llmux__http_conn_t *c) {
  http_req_t *r = c->req;
  if (c->closed) return;
  c->closed = 1;
  c->phase = PH_CLOSING;
  c->req = NULL;
  conn_unlink(c); /* first: on_abort may close the server, which walks the list */
  if (r != NULL && req_usable(r)) {
    r->aborted = 1;
    if (r->pub.on_abort != NULL) r->pub.on_abort(&r->pub);
    req_maybe_free(r);
  }
  req_discard(c->pending);
  c->pending = NULL;
  c->nclose = 2;
  uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
  uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

static void on_shutdown(uv_shutdown_t *sr, int status) {
  llmux__http_conn_t *c = sr->data;
  if (c->closed) return;
  if (status < 0 || c->eof) { conn_close(c); return; }
  /* Lingering close: read and drop what the client still sends until it
   * closes, so that our response is not destroyed by a reset. */
  arm(c, c->srv->opts.header_timeout_ms < LINGER_MS ? c->srv->opts.header_timeout_ms
                                                    : LINGER_MS);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out);

static void read_start(llmux__http_conn_t *c) {
  if (c->reading || c->closed || c->failed || c->eof) return;
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) c->reading = 1;
}

/* Graceful close after the last queued write: FIN, then linger. */
static void conn_shutdown(llmux__http_conn_t *c) {
  if (c->closed || c->phase == PH_CLOSING) return;
  c->phase = PH_CLOSING;
  req_discard(c->pending);
  c->pending = NULL;
  c->shutdown.data = c;
  /* Bounds the wait for a client that does not read its last response. */
  arm(c, c->srv->opts.idle_timeout_ms);
  if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
    conn_close(c);
    return;
  }
  read_start(c);
}

/* The previous response is finished: parse what is buffered, but from the
 * loop, never from inside the handler's call. */
static void conn_resume(llmux__http_conn_t *c) {
  if (c->in_process) return; /* conn_process's loop goes on by itself */
  if (write_queue(c) > 0) {
    c->resume_on_drain = 1;
    read_stop(c); /* a client that does not read is not read either */
    arm(c, c->srv->opts.idle_timeout_ms); /* doubles as a send timeout */
    return;
  }
  if (c->rpos == c->rlen) { /* nothing buffered, so nothing to parse: wait */
    conn_process(c);     /* (arms the idle timeout, reads) */
    return;
  }
  arm(c, 0);
  c->resume_armed = 1;
}

static void req_finish(http_req_t *r) {
  llmux__http_conn_t *c = r->conn;
  r->finished = 1;
  if (c->req == r) c->req = NULL;
  if (!c->closed && !c->failed) {
    if (!r->pub.keep_alive || winding_down(c->srv)) conn_shutdown(c);
    else { c->phase = PH_IDLE; conn_resume(c); }
  }
  req_maybe_free(r);
}

/* ---- the server's own error responses --------------------------------- */

int llmux_http_error_json(llmux_buf_t *out, const char *type, const char *code,
                          const char *message, const char *param) {
  int rc = 0;
  if (message == NULL) message = "";
  if (type == NULL) type = "invalid_request_error";
  rc |= llmux_buf_appends(out, "{\"error\":{\"message\":");
  rc |= llmux_buf_append_json_str(out, message, strlen(message));
  rc |= llmux_buf_appends(out, ",\"type\":");
  rc |= llmux_buf_append_json_str(out, type, strlen(type));
  rc |= llmux_buf_appends(out, ",\"param\":");
  rc |= param ? llmux_buf_append_json_str(out, param, strlen(param))
              : llmux_buf_appends(out, "null");
  rc |= llmux_buf_appends(out, ",\"code\":");
  rc |= code ? llmux_buf_append_json_str(out, code, strlen(code))
             : llmux_buf_appends(out, "null");
  rc |= llmux_buf_appends(out, "}}");
  return rc ? LLMUX_ENOMEM : 0;
}

static const llmux_http_header_t json_ct[] = {
    LLMUX_HTTP_HEADER_LIT("Content-Type", "application/json")};

/* A request id for an answer no handler gave ("req_" and 16 hex digits,
 * as the gateway's): xorshift64*, enough to correlate logs. */
static void server_request_id(llmux_http_server_t *srv, char buf[32]) {
  uint64_t x = srv->id_state;
  if (x == 0) x = uv_hrtime() ^ (uint64_t)(uintptr_t)srv ^ 0x9e3779b97f4a7c15ull;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  srv->id_state = x;
  memcpy(buf, "req_", 4);
  llmux_u64_hex(buf + 4, x * 0x2545f4914f6cdd1dull, 16);
}

/* An error for a request that never reached the handler; always closes. */
static void conn_error(llmux__http_conn_t *c, int status, const char *code,
                       const char *msg) {
  llmux_buf_t body = {0};
  char head[HEAD_STACK], rid[32];
  uv_buf_t bufs[2];
  llmux_http_header_t h[2] = {json_ct[0], LLMUX_HTTP_HEADER_LIT("x-request-id", "")};
  const char *type = status == 500 || status == 503 ? "server_error" : "invalid_request_error";
  if (c->closed || c->phase == PH_CLOSING) return;
  server_request_id(c->srv, rid);
  h[1].value = (llmux_str_t){rid, strlen(rid)};
  llmux_debug("http: %d %s: %s (%s)", status, code, msg, rid);
  if (llmux_http_error_json(&body, type, code, msg, NULL) != 0) {
    llmux_buf_free(&body);
    conn_close(c);
    return;
  }
  bufs[0] = uv_buf_init(head, (unsigned)format_head(head, status, h, 2, FRAME_LENGTH,
                                                    body.len, 1, 0));
  bufs[1] = uv_buf_init(body.base, (unsigned)body.len);
  disarm(c);
  conn_write(c, NULL, bufs, 2, 1, body.base, NULL);
  conn_shutdown(c);
}

/* ---- llhttp callbacks ------------------------------------------------- */

#define CONN(p) ((llmux__http_conn_t *)(p)->data)

static int fail_with(llmux__http_conn_t *c, int status, const char *code, const char *msg) {
  c->err_status = status;
  c->err_code = code;
  c->err_msg = msg;
  return -1;
}

/* Offset of `at` from the message start; checks the header size limit. */
static int head_span(llmux__http_conn_t *c, const char *at, size_t len, size_t *off) {
  size_t abs = (size_t)(at - c->rb);
  if (!c->have_head) {
    c->have_head = 1;
    c->head_start = abs;
  }
  *off = abs - c->head_start;
  if (*off + len > c->srv->opts.max_header)
    return fail_with(c, 431, "headers_too_large", "request headers too large");
  return 0;
}

static int on_message_begin(llhttp_t *p) {
  llmux__http_conn_t *c = CONN(p);
  c->phase = PH_HEAD;
  c->start_us = llmux_now_us();
  c->have_head = 0;
  c->nspans = 0;
  c->url_len = 0;
  c->hstate = 0;
  c->send_continue = 0;
  arm(c, c->srv->opts.header_timeout_ms);
  return 0;
}

static int on_method(llhttp_t *p, const char *at, size_t len) {
  size_t off;
  return head_span(CONN(p), at, len, &off);
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  llmux__http_conn_t *c = CONN(p);
  size_t off;
  if (head_span(c, at, len, &off) != 0) return -1;
  if (c->url_len == 0) c->url_off = off;
  c->url_len += len;
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  llmux__http_conn_t *c = CONN(p);
  size_t off;
  span_t *s;
  if (c->phase != PH_HEAD) return 0; /* chunked trailers: ignored */
  if (head_span(c, at, len, &off) != 0) return -1;
  if (c->hstate != 1) {
    if (c->nspans == c->spans_cap) {
      size_t cap = c->spans_cap ? c->spans_cap * 2 : 32;
      span_t *ns = realloc(c->spans, cap * sizeof(*ns));
      if (ns == NULL) return fail_with(c, 500, "out_of_memory", "out of memory");
      c->spans = ns;
      c->spans_cap = cap;
    }
    s = &c->spans[c->nspans++];
    s->name_off = off;
    s->name_len = s->val_off = s->val_len = 0;
    c->hstate = 1;
  }
  c->spans[c->nspans - 1].name_len += len;
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  llmux__http_conn_t *c = CONN(p);
  size_t off;
  span_t *s;
  if (c->phase != PH_HEAD) return 0;
  if (head_span(c, at, len, &off) != 0) return -1;
  if (c->nspans == 0) return 0;
  s = &c->spans[c->nspans - 1];
  if (c->hstate != 2) {
    /* Between the name and its value only ':' and blanks may stand; a line
     * break there is an obs-fold with an empty first line. */
    const char *gap = c->rb + c->head_start + s->name_off + s->name_len;
    size_t i, n = off - s->name_off - s->name_len;
    for (i = 0; i < n; i++)
      if (gap[i] == '\n' || gap[i] == '\r')
        return fail_with(c, 400, "bad_request", "obsolete line folding in a header");
    s->val_off = off;
    s->val_len = 0;
    c->hstate = 2;
  } else if (off != s->val_off + s->val_len) {
    /* llhttp hands a folded value over in pieces with the fold between. */
    return fail_with(c, 400, "bad_request", "obsolete line folding in a header");
  }
  s->val_len += len;
  return 0;
}

static int on_header_part_complete(llhttp_t *p) {
  CONN(p)->hstate = 0;
  return 0;
}

static llmux_str_t trim(const char *s, size_t n) {
  while (n > 0 && (*s == ' ' || *s == '\t')) { s++; n--; }
  while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
  return (llmux_str_t){s, n};
}

static llmux_str_t copy_str(char **dst, const char *src, size_t n) {
  llmux_str_t s = {*dst, n};
  memcpy(*dst, src, n);
  (*dst)[n] = '\0';
  *dst += n + 1;
  return s;
}

/* Where the path starts in a request-target. An absolute-form target
 * (`http://host/v1/x`, RFC 9112 3.2.2) has its scheme and authority skipped;
 * origin-form starts at 0. *no_path is set when an absolute-form target has
 * no path at all (`http://host`), which means "/". */
static size_t path_start(const char *t, size_t n, int *no_path) {
  size_t i = 0;
  const char *slash;
  *no_path = 0;
  if (n == 0 || t[0] == '/') return 0;
  while (i < n && (isalnum((unsigned char)t[i]) || t[i] == '+' || t[i] == '-' || t[i] == '.'))
    i++;
  if (i == 0 || n - i < 3 || memcmp(t + i, "://", 3) != 0) return 0;
  i += 3;
  slash = memchr(t + i, '/', n - i);
  if (slash == NULL) {
    const char *q = memchr(t + i, '?', n - i);
    *no_path = 1;
    return q ? (size_t)(q - t) : n;
  }
  return (size_t)(slash - t);
}

/* One allocation: the request, its header array and every string. */
static http_req_t *build_req(llmux__http_conn_t *c) {
  const char *head = c->rb + c->head_start;
  size_t i, n = c->nspans, bytes = 2 * (c->url_len + 1);
  llmux_http_header_t *hdrs;
  http_req_t *r;
  const char *q, *url = head + c->url_off;
  size_t p0;
  int no_path;
  char *dst;

  for (i = 0; i < n; i++) bytes += c->spans[i].name_len + c->spans[i].val_len + 2;
  p0 = path_start(url, c->url_len, &no_path);
  bytes += 1; /* room for the "/" of a path-less absolute-form target */
  r = malloc(sizeof(*r) + n * sizeof(*hdrs) + bytes);
  if (r == NULL) return NULL;
  memset(r, 0, sizeof(*r));
  hdrs = (llmux_http_header_t *)(r + 1);
  dst = (char *)(hdrs + n);
  r->conn = c;
  r->pub.server = c->srv;
  r->pub.target = copy_str(&dst, url, c->url_len);
  q = memchr(r->pub.target.base + p0, '?', c->url_len - p0);
  if (no_path)
    r->pub.path = copy_str(&dst, "/", 1);
  else
    r->pub.path = copy_str(&dst, url + p0,
                           (q ? (size_t)(q - r->pub.target.base) : c->url_len) - p0);
  r->pub.query.base = q ? q + 1 : r->pub.target.base + c->url_len;
  r->pub.query.len = q ? (size_t)(r->pub.target.base + c->url_len - q - 1) : 0;
  for (i = 0; i < n; i++) {
    llmux_str_t v = trim(head + c->spans[i].val_off, c->spans[i].val_len);
    hdrs[i].name = copy_str(&dst, head + c->spans[i].name_off, c->spans[i].name_len);
    hdrs[i].value = copy_str(&dst, v.base, v.len);
  }
  r->pub.headers = hdrs;
  r->pub.nheaders = n;
  r->pub.body.base = "";
  r->pub.start_us = c->start_us;
  return r;
}

#ifndef NDEBUG
static int is_token(llmux_str_t s) {
  const unsigned char *b = (const unsigned char *)s.base;
  unsigned bad = s.len == 0;
  size_t i;
  for (i = 0; i < s.len; i++) bad |= tchar[b[i]] ^ 1u;
  return !bad;
}
#endif

/* A name of anything but tchar, or a value with a CTL (obs-fold
 * included), could smuggle a header past a proxy. llhttp in strict mode
 * (CMakeLists.txt) refuses them all (tests/unit/test_http_parse.c, and
 * on_header_value for folds), so release builds do not look again at
 * every byte; debug builds check that it did. */
static int header_valid(const llmux_http_header_t *h) {
  assert(h->name.len == 0 || (is_token(h->name) && !bytes_bad(h->value)));
  return h->name.len > 0;
}

/* Framing rules beyond llhttp's, checked before any body byte is read. */
static int check_head(llmux__http_conn_t *c, http_req_t *r) {
  llhttp_t *p = &c->parser;
  const llmux_str_t *expect = llmux_http_header(&r->pub, "expect");
  size_t i, nhost = 0;
  int has_body = (p->flags & F_CHUNKED) || p->content_length > 0;

  if (p->http_major != 1)
    return fail_with(c, 505, "http_version_not_supported", "only HTTP/1.x is supported");
  for (i = 0; i < r->pub.nheaders; i++) {
    const llmux_http_header_t *h = &r->pub.headers[i];
    if (!header_valid(h)) return fail_with(c, 400, "bad_request", "invalid header field");
    if (name_is(h->name, "host") && nhost++ > 0)
      return fail_with(c, 400, "bad_request", "more than one Host header");
    if (!name_is(h->name, "transfer-encoding")) continue;
    /* RFC 9112 6.1: a 1.0 message with Transfer-Encoding is faulty framing. */
    if (p->http_minor == 0)
      return fail_with(c, 400, "bad_request", "Transfer-Encoding in an HTTP/1.0 request");
    if (p->flags & F_CONTENT_LENGTH)
      return fail_with(c, 400, "bad_request", "Content-Length with Transfer-Encoding");
    if (!name_is(h->value, "chunked"))
      return fail_with(c, 501, "unsupported_transfer_encoding",
                       "only the chunked transfer-encoding is supported");
  }
  if ((p->flags & F_CONTENT_LENGTH) && p->content_length > c->srv->opts.max_body)
    return fail_with(c, 413, "request_too_large", "request body too large");
  if (expect != NULL) {
    if (!name_is(*expect, "100-continue"))
      return fail_with(c, 417, "expectation_failed", "unsupported expectation");
    c->send_continue = has_body && p->http_major == 1 && p->http_minor >= 1;
  }
  if (p->http_major == 1 && p->http_minor >= 1 && llmux_http_header(&r->pub, "host") == NULL)
    return fail_with(c, 400, "bad_request", "missing Host header");
  return 0;
}

/* Lends the request to on_head. 1: the handler answered, so the request is
 * finished (perhaps freed) and the connection is closing. */
static int head_answered(llmux__http_conn_t *c, http_req_t *r) {
  c->pending = NULL;
  c->req = r;
  r->in_head = 1;
  c->srv->opts.on_head(&r->pub);
  if (c->req == NULL) return 1; /* req_finish ran */
  assert(!r->started);          /* on_head answers whole or not at all */
  r->in_head = 0;
  c->req = NULL;
  c->pending = r;
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  llmux__http_conn_t *c = CONN(p);
  http_req_t *r = build_req(c);
  static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
  uv_buf_t buf;

  /* Copied into the request: a connection that waits holds no spans. */
  free(c->spans);
  c->spans = NULL;
  c->nspans = c->spans_cap = 0;
  if (r == NULL) return fail_with(c, 500, "out_of_memory", "out of memory");
  c->pending = r;
  if (check_head(c, r) != 0) return -1;
  r->pub.method_id = p->method;
  r->pub.method = llhttp_method_name((llhttp_method_t)p->method);
  r->pub.version_major = p->http_major;
  r->pub.version_minor = p->http_minor;
  r->pub.keep_alive = llhttp_should_keep_alive(p);
  r->no_body = p->method == HTTP_HEAD;
  if (p->upgrade) { /* no upgrades or tunnels: parse on as a plain request */
    p->upgrade = 0;
    r->pub.keep_alive = 0;
  }
  c->phase = PH_BODY;
  c->have_head = 0; /* the header bytes are copied: the buffer may drop them */
  if (c->srv->opts.on_head != NULL && head_answered(c, r))
    return HPE_PAUSED; /* the body is never read; conn_process stops here */
  arm(c, c->srv->opts.header_timeout_ms);
  if (c->send_continue) {
    buf = uv_buf_init((char *)cont, sizeof(cont) - 1);
    conn_write(c, NULL, &buf, 1, -1, NULL, NULL);
  }
  return 0;
}

static int on_chunk_header(llhttp_t *p) {
  llmux__http_conn_t *c = CONN(p);
  if (c->pending->body.len + p->content_length > c->srv->opts.max_body)
    return fail_with(c, 413, "request_too_large", "request body too large");
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  llmux__http_conn_t *c = CONN(p);
  http_req_t *r = c->pending;
  size_t most;
  int rc;
  if (r->body.len + len > c->srv->opts.max_body)
    return fail_with(c, 413, "request_too_large", "request body too large");
  if (r->body.base == NULL || at != r->body.base + r->body.len) { /* else read in place */
    /* llhttp has already taken len off the declared length still to come. */
    most = (p->flags & F_CONTENT_LENGTH) ? r->body.len + len + (size_t)p->content_length
                                         : c->srv->opts.max_body;
    rc = body_grow(c, r, len, most);
    if (rc == LLMUX_ETOOLARGE)
      return fail_with(c, 503, "overloaded", "the server is overloaded: try again later");
    if (rc != 0) return fail_with(c, 500, "out_of_memory", "out of memory");
    memcpy(r->body.base + r->body.len, at, len);
  }
  r->body.len += len;
  r->body.base[r->body.len] = '\0';
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  llmux__http_conn_t *c = CONN(p);
  c->phase = PH_HANDLING;
  disarm(c);
  return HPE_PAUSED; /* one request at a time: conn_process dispatches it */
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_method = on_method,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    /* A field's end starts the value; a value's end needs no callback: the
     * next field finds hstate 2 and starts a new one. */
    .on_header_field_complete = on_header_part_complete,
    .on_headers_complete = on_headers_complete,
    .on_chunk_header = on_chunk_header,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- parsing loop ----------------------------------------------------- */

static void dispatch(llmux__http_conn_t *c) {
  http_req_t *r = c->pending;
  assert(r != NULL);
  c->pending = NULL;
  c->req = r;
  c->nrequests++;
  if (r->body.base != NULL) r->pub.body = (llmux_str_t){r->body.base, r->body.len};
  c->srv->opts.on_request(&r->pub);
}

static void parse_error(llmux__http_conn_t *c, llhttp_errno_t err) {
  char msg[160];
  if (c->err_status != 0) {
    conn_error(c, c->err_status, c->err_code, c->err_msg);
    return;
  }
  snprintf(msg, sizeof(msg), "malformed request: %s", llhttp_get_error_reason(&c->parser));
  conn_error(c, 400, "bad_request", msg);
  (void)err;
}

static int head_too_large(llmux__http_conn_t *c) {
  return c->phase == PH_HEAD && c->have_head &&
         c->rlen - c->head_start > c->srv->opts.max_header;
}

static int conn_busy(llmux__http_conn_t *c) {
  return c->closed || c->failed || c->phase == PH_CLOSING || c->req != NULL;
}

static void conn_process(llmux__http_conn_t *c) {
  llhttp_errno_t err;
  if (c->in_process) return;
  c->in_process = 1;
  while (!conn_busy(c) && c->rlen > c->rpos) {
    if (write_queue(c) > 0) { c->resume_on_drain = 1; break; }
    err = llhttp_execute(&c->parser, c->rb + c->rpos, c->rlen - c->rpos);
    if (err == HPE_OK) {
      c->rpos = c->rlen;
      if (head_too_large(c)) conn_error(c, 431, "headers_too_large", "request headers too large");
    } else if (err == HPE_PAUSED) {
      c->rpos = (size_t)(llhttp_get_error_pos(&c->parser) - c->rb);
      llhttp_resume(&c->parser);
      if (c->phase == PH_HANDLING) dispatch(c); /* else on_head answered */
    } else {
      parse_error(c, err);
    }
    if (!c->closed) rbuf_compact(c);
  }
  c->in_process = 0;
  if (c->closed || c->failed || c->phase == PH_CLOSING) return;
  rbuf_compact(c);
  if (c->req == NULL && c->phase == PH_IDLE && !c->resume_armed)
    arm(c, c->nrequests == 0 ? c->srv->opts.header_timeout_ms : c->srv->opts.idle_timeout_ms);
  if (c->resume_on_drain) read_stop(c); /* an answer waits: read again once it is out */
  else read_start(c);
}

static void on_timer(uv_timer_t *t) {
  llmux__http_conn_t *c = t->data;
  uint64_t now = uv_now(c->srv->loop);
  if (c->closed || c->due == 0) return;
  if (now < c->due) { /* armed again for later since this one started */
    uv_timer_start(&c->timer, on_timer, c->due - now, 0);
    return;
  }
  c->due = 0;
  if (c->failed) { conn_close(c); return; }
  switch (c->phase) {
  case PH_IDLE:
    if (c->resume_armed) { c->resume_armed = 0; conn_process(c); }
    else conn_close(c); /* idle keep-alive: close without a word */
    break;
  case PH_HEAD:
  case PH_BODY:
    conn_error(c, 408, "request_timeout", "timed out reading the request");
    break;
  case PH_CLOSING:
    conn_close(c);
    break;
  case PH_HANDLING:
    if (c->send_armed && write_queue(c) > 0) conn_close(c); /* aborts the request */
    c->send_armed = 0;
    break;
  default:
    break;
  }
}

/* Reads of at least this much body go straight into the body buffer. */
#define DIRECT_MIN 4096

/* In the middle of a body of known length with nothing unparsed buffered:
 * let the kernel write into the request's body buffer, which on_body then
 * only has to extend, instead of copying every byte from the read buffer
 * (the body of a large prompt is most of a request). The buffer grows in
 * steps as the body arrives; the read asks for no more than the body's
 * rest, so no byte of a pipelined next request can land there. 0: read
 * into the read buffer (also when max_memory refuses: on_body answers). */
static int direct_read(llmux__http_conn_t *c, uv_buf_t *out) {
  http_req_t *r = c->pending;
  size_t rest, room;
  if (c->phase != PH_BODY || c->req != NULL || r == NULL || c->rlen != c->rpos ||
      !(c->parser.flags & F_CONTENT_LENGTH) || (c->parser.flags & F_CHUNKED) ||
      c->parser.content_length < DIRECT_MIN || c->parser.content_length >= UINT32_MAX)
    return 0;
  rest = (size_t)c->parser.content_length;
  if (body_grow(c, r, DIRECT_MIN, r->body.len + rest) != 0) return 0;
  room = r->body.cap - r->body.len - 1;
  c->direct = 1;
  *out = uv_buf_init(r->body.base + r->body.len, (unsigned)(room < rest ? room : rest));
  return 1;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out) {
  llmux__http_conn_t *c = h->data;
  size_t room;
  /* libuv reads again after a read that filled its buffer; after a direct
   * read that completed the body there is nothing more to expect, and that
   * read would only return EAGAIN. An empty buffer skips it (read_cb gets
   * UV_ENOBUFS; the next readiness reads as usual). */
  if (c->skip_read) {
    c->skip_read = 0;
    *out = uv_buf_init(NULL, 0);
    return;
  }
  if (c->phase == PH_CLOSING) {
    /* Lingering: what arrives is dropped, so one buffer serves every such
     * connection (reads on one loop never overlap), and none holds memory. */
    if (c->srv->sink == NULL) c->srv->sink = malloc(SINK_SIZE);
    *out = uv_buf_init(c->srv->sink, c->srv->sink ? SINK_SIZE : 0);
  } else if (!direct_read(c, out)) {
    room = rbuf_room(c);
    *out = uv_buf_init(room ? c->rb + c->rlen : NULL, (unsigned)room);
  }
  c->no_room = out->len == 0; /* read_cb gets UV_ENOBUFS */
}

static void on_eof(llmux__http_conn_t *c) {
  c->eof = 1;
  c->reading = 0;
  /* Half-closed with a finished response still queued: deliver it first. */
  if (c->req == NULL && c->nwrites > 0) {
    conn_shutdown(c); /* no-op if already shutting down; on_shutdown closes */
    return;
  }
  conn_close(c);
}

/* Parses body bytes that were read in place (see on_alloc). */
static void conn_process_direct(llmux__http_conn_t *c, const char *data, size_t n) {
  llhttp_errno_t err;
  c->in_process = 1;
  err = llhttp_execute(&c->parser, data, n);
  if (err == HPE_PAUSED) {
    llhttp_resume(&c->parser);
    dispatch(c);
  } else if (err != HPE_OK) {
    parse_error(c, err);
  }
  c->in_process = 0;
  if (!c->closed) conn_process(c); /* the usual tail: timers, reading */
}

/* The read buffer is full and may not grow. */
static void conn_no_room(llmux__http_conn_t *c) {
  c->no_room = 0;
  if (c->req != NULL || c->resume_on_drain || c->phase == PH_CLOSING)
    read_stop(c); /* conn_process reads again once the answer is out */
  else /* a request (its head, or its first bytes) and max_memory refused it room */
    conn_error(c, 503, "overloaded", "the server is overloaded: try again later");
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  llmux__http_conn_t *c = s->data;
  if (nread == UV_ENOBUFS) { /* see skip_read and no_room */
    if (c->no_room) conn_no_room(c);
    return;
  }
  if (c->direct) {
    c->direct = 0;
    if (nread > 0 && c->pending != NULL) {
      if ((uint64_t)nread == c->parser.content_length) c->skip_read = 1;
      conn_process_direct(c, buf->base, (size_t)nread);
      return;
    }
  }
  if (nread < 0) {
    /* The buffer on_alloc gave this read holds nothing: let it go now, not
     * from the close callback (streams that end together would otherwise
     * hold one each until the next loop turn). */
    rbuf_release_if_empty(c);
    if (nread == UV_EOF) on_eof(c);
    else conn_close(c);
    return;
  }
  if (c->phase == PH_CLOSING) { /* lingering: read into the sink; drop the rest */
    c->rlen = 0;
  } else {
    c->rlen += (size_t)nread;
    if (c->req == NULL) conn_process(c); /* else parsed after this response */
  }
  if (c->closed) return;
  rbuf_release_if_empty(c);
  if (c->reading && c->rb != NULL && c->phase != PH_CLOSING && rbuf_room(c) == 0)
    conn_no_room(c);
}

static void on_connection(uv_stream_t *ls, int status) {
  llmux_http_server_t *srv = ls->data;
  llmux__http_conn_t *c;
  if (status < 0) {
    llmux_warn("http: accept: %s", uv_strerror(status));
    return;
  }
  c = calloc(1, sizeof(*c));
  if (c == NULL) return;
  c->srv = srv;
  uv_tcp_init(srv->loop, &c->tcp);
  uv_timer_init(srv->loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  c->next = srv->conns;
  if (srv->conns != NULL) srv->conns->prev = c;
  srv->conns = c;
  srv->nconns++;
  if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  llhttp_init(&c->parser, HTTP_REQUEST, &settings);
  c->parser.data = c;
  c->phase = PH_IDLE;
  if (srv->nconns > srv->opts.max_connections) {
    /* Told, not dropped: the client learns why and need not retry at once. */
    conn_error(c, 503, "too_many_connections", "too many connections: try again later");
    return;
  }
  arm(c, srv->opts.header_timeout_ms);
  read_start(c);
}

/* ---- public API ------------------------------------------------------- */

int llmux_http_server_init(uv_loop_t *loop, llmux_http_server_t *srv,
                           const llmux_http_options_t *opts) {
  int rc;
  if (loop == NULL || srv == NULL || opts == NULL || opts->on_request == NULL)
    return LLMUX_EINVAL;
  memset(srv, 0, sizeof(*srv));
  srv->loop = loop;
  srv->opts = *opts;
  if (srv->opts.max_header == 0) srv->opts.max_header = 16 * 1024;
  if (srv->opts.max_body == 0) srv->opts.max_body = 8 * 1024 * 1024;
  if (srv->opts.header_timeout_ms == 0) srv->opts.header_timeout_ms = 10000;
  if (srv->opts.idle_timeout_ms == 0) srv->opts.idle_timeout_ms = 60000;
  if (srv->opts.max_connections == 0) srv->opts.max_connections = 10000;
  if (srv->opts.max_memory == 0) srv->opts.max_memory = (size_t)512 << 20;
  rc = uv_tcp_init(loop, &srv->listener);
  if (rc != 0) return map_uv(rc);
  srv->listener.data = srv;
  srv->listener_open = 1;
  return 0;
}

/* libuv (1.44) sets no SO_REUSEPORT on a TCP socket it makes: the socket
 * is made here, with the option, and handed to the listener unbound, so
 * that uv_tcp_bind binds it as it would its own. */
static int open_reuseport(llmux_http_server_t *srv, int family) {
  int one = 1, rc, fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return map_uv(-errno);
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
    rc = -errno;
    close(fd);
    return map_uv(rc);
  }
  rc = uv_tcp_open(&srv->listener, fd); /* the handle owns fd from here */
  if (rc != 0) close(fd);
  return map_uv(rc);
}

int llmux_http_server_listen(llmux_http_server_t *srv, const char *host, int port) {
  return llmux_http_server_listen_ex(srv, host, port, 0);
}

int llmux_http_server_listen_ex(llmux_http_server_t *srv, const char *host, int port,
                                unsigned flags) {
  struct sockaddr_storage ss;
  int len = sizeof(ss), rc;
  if (strchr(host, ':') != NULL)
    rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss);
  else
    rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
  if (rc != 0) return map_uv(rc);
  if ((flags & LLMUX_HTTP_REUSEPORT) && (rc = open_reuseport(srv, ss.ss_family)) != 0)
    return rc;
  rc = uv_tcp_bind(&srv->listener, (const struct sockaddr *)&ss, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&srv->listener, BACKLOG, on_connection);
  if (rc == 0) rc = uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &len);
  if (rc != 0) return map_uv(rc);
  srv->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                             : ((struct sockaddr_in *)&ss)->sin_port);
  srv->listening = 1;
  return 0;
}

static void on_listener_closed(uv_handle_t *h) {
  llmux_http_server_t *srv = h->data;
  srv->listener_open = 0;
  server_maybe_closed(srv);
}

/* Stops accepting: the listening socket goes, so new connections are
 * refused by the kernel rather than accepted and dropped. */
static void listener_close(llmux_http_server_t *srv) {
  srv->listening = 0;
  if (srv->listener_open && !uv_is_closing((uv_handle_t *)&srv->listener))
    uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
}

void llmux_http_server_close(llmux_http_server_t *srv, llmux_http_close_cb cb) {
  if (srv->closing) return;
  srv->closing = 1;
  srv->close_cb = cb;
  listener_close(srv);
  while (srv->conns != NULL) conn_close(srv->conns);
}

/* A draining connection between requests goes now; one whose request is
 * with the handler or still arriving goes after that response (req_finish
 * sees winding_down). A response still being written, or bytes we read and
 * did not parse, ask for the graceful close, so nothing queued is lost and
 * no reset destroys it. */
static void conn_drain(llmux__http_conn_t *c) {
  if (c->closed || c->failed || c->phase != PH_IDLE || c->req != NULL) return;
  if (c->nwrites > 0 || c->rlen > c->rpos) conn_shutdown(c);
  else conn_close(c);
}

int llmux_http_server_drain(llmux_http_server_t *srv, llmux_http_drained_cb cb) {
  llmux__http_conn_t *c, *next;
  if (srv->closing || srv->draining) return LLMUX_EINVAL;
  srv->draining = 1;
  srv->drained_cb = cb;
  listener_close(srv); /* its close callback ends the drain if no connection is left */
  for (c = srv->conns; c != NULL; c = next) {
    next = c->next; /* conn_close unlinks c; its memory goes from the loop */
    conn_drain(c);
  }
  return 0;
}

const llmux_str_t *llmux_http_header(const llmux_http_req_t *req, const char *name) {
  size_t i, n = strlen(name);
  for (i = 0; i < req->nheaders; i++) {
    const llmux_str_t *h = &req->headers[i].name;
    if (h->len == n && strncasecmp(h->base, name, n) == 0) return &req->headers[i].value;
  }
  return NULL;
}

void llmux_http_req_take_body(llmux_http_req_t *req, llmux_buf_t *out) {
  http_req_t *r = (http_req_t *)req;
  *out = r->body;
  memset(&r->body, 0, sizeof(r->body));
  req->body = (llmux_str_t){"", 0};
}

void llmux_http_server_conn_stats(const llmux_http_server_t *srv,
                                  llmux_http_conn_stats_t *out) {
  const llmux__http_conn_t *c;
  memset(out, 0, sizeof *out);
  for (c = srv->conns; c != NULL; c = c->next) {
    if (c->closed || c->phase == PH_CLOSING) out->closing++;
    else if (c->phase == PH_HANDLING) out->active++;
    else if (c->phase == PH_HEAD || c->phase == PH_BODY) out->reading++;
    else out->idle++;
  }
}

int llmux_http_req_peer(const llmux_http_req_t *req, struct sockaddr_storage *out) {
  const http_req_t *r = (const http_req_t *)req;
  int len = sizeof(*out);
  return map_uv(uv_tcp_getpeername(&r->conn->tcp, (struct sockaddr *)out, &len));
}

static int no_body_status(int status) {
  return status < 200 || status == 204 || status == 304;
}

/* The headers with the request's id added (set_request_id), when it has
 * one and the caller sent no x-request-id: into `with` (RID_HEADERS_MAX). */
#define RID_HEADERS_MAX 16
static const llmux_http_header_t *with_request_id(const http_req_t *r,
                                                  const llmux_http_header_t *h, size_t *n,
                                                  llmux_http_header_t *with) {
  size_t i;
  if (r->rid[0] == '\0' || *n >= RID_HEADERS_MAX) return h;
  for (i = 0; i < *n; i++)
    if (h[i].name.len == 12 && strncasecmp(h[i].name.base, "x-request-id", 12) == 0) return h;
  if (*n > 0) memcpy(with, h, *n * sizeof *h);
  with[*n].name = (llmux_str_t){"x-request-id", 12};
  with[*n].value = (llmux_str_t){r->rid, strlen(r->rid)};
  (*n)++;
  return with;
}

/* Sends the head (and body, if any) and finishes the request. */
static int respond(http_req_t *r, int status, const llmux_http_header_t *h, size_t n,
                   const char *body, size_t len, char *owned) {
  llmux__http_conn_t *c = r->conn;
  char stack[HEAD_STACK], *head = stack;
  llmux_http_header_t with[RID_HEADERS_MAX];
  size_t need;
  int close, rc, framing = no_body_status(status) ? FRAME_NONE : FRAME_LENGTH;
  uv_buf_t bufs[2];

  if (!req_usable(r) || r->started) { free(owned); return r->started ? LLMUX_EINVAL : LLMUX_ECANCELED; }
  h = with_request_id(r, h, &n, with);
  need = head_size(h, n);
  if (c->srv->opts.on_status != NULL) c->srv->opts.on_status(&r->pub, status);
  if (r->in_head) r->pub.keep_alive = 0; /* the body is left unread */
  if (need > sizeof(stack) && (head = malloc(need)) == NULL) {
    free(owned);
    r->pub.keep_alive = 0;
    conn_fail(c);
    req_finish(r);
    return LLMUX_ENOMEM;
  }
  close = !r->pub.keep_alive || winding_down(c->srv);
  bufs[0].base = head;
  bufs[0].len = format_head(head, status, h, n, framing, len, close,
                            r->pub.version_minor == 0);
  bufs[1] = uv_buf_init((char *)body, (unsigned)len);
  if (r->no_body || framing == FRAME_NONE || len == 0) {
    free(owned);
    rc = conn_write(c, r, bufs, 1, -1, NULL, NULL);
  } else {
    rc = conn_write(c, r, bufs, 2, owned ? 1 : -1, owned, NULL);
  }
  if (head != stack) free(head);
  req_finish(r);
  return rc;
}

int llmux_http_respond(llmux_http_req_t *req, int status, const llmux_http_header_t *headers,
                       size_t nheaders, const void *body, size_t len) {
  return respond((http_req_t *)req, status, headers, nheaders, body, len, NULL);
}

int llmux_http_respond_buf(llmux_http_req_t *req, int status, const llmux_http_header_t *headers,
                           size_t nheaders, llmux_buf_t *body) {
  llmux_buf_t b = *body;
  memset(body, 0, sizeof(*body));
  return respond((http_req_t *)req, status, headers, nheaders, b.base, b.len, b.base);
}

int llmux_http_send_error(llmux_http_req_t *req, int status, const char *type,
                          const char *code, const char *message, const char *param) {
  llmux_buf_t body = {0};
  if (llmux_http_error_json(&body, type, code, message, param) != 0) {
    llmux_buf_free(&body);
    return respond((http_req_t *)req, 500, NULL, 0, NULL, 0, NULL);
  }
  if (((http_req_t *)req)->rid[0] != '\0') {
    const char *rid = ((http_req_t *)req)->rid;
    llmux_http_header_t h[2] = {json_ct[0], {{"x-request-id", 12}, {rid, strlen(rid)}}};
    return llmux_http_respond_buf(req, status, h, 2, &body);
  }
  return llmux_http_respond_buf(req, status, json_ct, 1, &body);
}

void llmux_http_set_request_id(llmux_http_req_t *req, const char *id) {
  http_req_t *r = (http_req_t *)req;
  size_t n = strlen(id);
  if (n >= sizeof r->rid) n = 0; /* never cut: a wrong id misleads */
  memcpy(r->rid, id, n);
  r->rid[n] = '\0';
}

int llmux_http_start(llmux_http_req_t *req, int status, const llmux_http_header_t *headers,
                     size_t nheaders) {
  http_req_t *r = (http_req_t *)req;
  llmux__http_conn_t *c = r->conn;
  char stack[HEAD_STACK], *head = stack;
  llmux_http_header_t with[RID_HEADERS_MAX];
  size_t need;
  uv_buf_t buf;
  int rc;

  if (!req_usable(r)) return LLMUX_ECANCELED;
  if (r->started) return LLMUX_EINVAL;
  headers = with_request_id(r, headers, &nheaders, with);
  need = head_size(headers, nheaders);
  r->started = 1;
  if (c->srv->opts.on_status != NULL) c->srv->opts.on_status(req, status);
  if (r->in_head) req->keep_alive = 0; /* the body is left unread */
  if (no_body_status(status)) r->no_body = 1;
  r->chunked = req->version_minor >= 1 && !r->no_body;
  if (!r->chunked && !r->no_body) req->keep_alive = 0; /* body ends at close */
  if (need > sizeof(stack) && (head = malloc(need)) == NULL) { conn_fail(c); return LLMUX_ENOMEM; }
  buf.base = head;
  buf.len = format_head(head, status, headers, nheaders,
                        r->chunked ? FRAME_CHUNKED : FRAME_NONE, 0,
                        !req->keep_alive || winding_down(c->srv), req->version_minor == 0);
  rc = conn_write(c, r, &buf, 1, -1, NULL, NULL);
  if (head != stack) free(head);
  return rc;
}

static int write_chunk(http_req_t *r, const char *data, size_t len, char *owned, int *kept) {
  llmux__http_conn_t *c = r->conn;
  char size_line[24];
  uv_buf_t bufs[3];
  size_t q;
  int rc;

  if (!req_usable(r)) { free(owned); return LLMUX_ECANCELED; }
  if (!r->started) { free(owned); return LLMUX_EINVAL; }
  if (len == 0 || r->no_body) { free(owned); return (int)write_queue(c); }
  if (r->chunked) {
    {
      size_t sl = llmux_u64_hex(size_line, len, 1);
      size_line[sl++] = '\r';
      size_line[sl++] = '\n';
      bufs[0] = uv_buf_init(size_line, (unsigned)sl);
    }
    bufs[1] = uv_buf_init((char *)data, (unsigned)len);
    bufs[2] = uv_buf_init((char *)"\r\n", 2);
    rc = conn_write(c, r, bufs, 3, owned ? 1 : -1, owned, kept);
  } else {
    bufs[0] = uv_buf_init((char *)data, (unsigned)len);
    rc = conn_write(c, r, bufs, 1, owned ? 0 : -1, owned, kept);
  }
  if (rc < 0) return rc;
  q = write_queue(c);
  if (q > 0) {
    r->want_drain = 1;
    /* A client that stops reading a stream must not hold it (and its
     * provider connection) for ever: if nothing drains within the idle
     * timeout, the connection is closed and the request aborted. */
    if (!c->send_armed && c->phase == PH_HANDLING) {
      c->send_armed = 1;
      arm(c, c->srv->opts.idle_timeout_ms);
    }
  }
  return q > INT32_MAX ? INT32_MAX : (int)q;
}

int llmux_http_write(llmux_http_req_t *req, const void *data, size_t len) {
  return write_chunk((http_req_t *)req, data, len, NULL, NULL);
}

int llmux_http_write_buf(llmux_http_req_t *req, llmux_buf_t *buf) {
  llmux_buf_t b = *buf;
  int kept = 0, rc;
  memset(buf, 0, sizeof(*buf));
  rc = write_chunk((http_req_t *)req, b.base, b.len, b.base, &kept);
  if (kept) { /* written at once: the caller's buffer, emptied, to fill again */
    *buf = b;
    buf->len = 0;
    buf->base[0] = '\0';
  }
  return rc;
}

int llmux_http_end(llmux_http_req_t *req) {
  http_req_t *r = (http_req_t *)req;
  uv_buf_t buf = uv_buf_init((char *)"0\r\n\r\n", 5);
  int rc = 0;
  if (!req_usable(r)) return LLMUX_ECANCELED;
  if (!r->started) return LLMUX_EINVAL;
  if (r->chunked) rc = conn_write(r->conn, r, &buf, 1, -1, NULL, NULL);
  req_finish(r);
  return rc;
}
