/* The upstream HTTP/1.1 client: one request at a time per connection,
 * keep-alive pools, TLS, timeouts; everything on the caller's libuv loop.
 *
 * Lifecycle (libuv style):
 *   llmux_upstream_new(loop, NULL, &up);            once per loop
 *   llmux_upstream_req_init(&r->req);               the request is embedded
 *   r->req.host = ...; r->req.on_done = ...;        in the caller's struct
 *   llmux_upstream_start(up, &r->req);
 *   ... on_head, on_body*, then exactly one on_done (unless cancelled) ...
 *   llmux_upstream_close(up, closed_cb);            at shutdown
 *
 * Ownership: every pointer a request holds (host, method, path, headers,
 * body buffers and the TLS context) is borrowed and must stay valid until
 * on_done has been called or llmux_upstream_cancel() has returned. The
 * library never copies the body: plain HTTP hands the caller's buffers to
 * one uv_write together with the head; TLS encrypts them into the
 * connection's output buffer.
 *
 * Names are resolved by the pool's own resolver (core/dns.h): numeric
 * addresses and the hosts file need no query, other names are cached for
 * their TTL, so a new connection to a known host costs no lookup. When a
 * name has several addresses (IPv4 first), a TCP connect that fails
 * (refused, unreachable, or its share of the connect timeout ran out) moves
 * on to the next address before the request fails.
 *
 * Callbacks run on the loop. Inside any of them the caller may call
 * llmux_upstream_pause/resume/cancel on the request, and inside on_done it
 * may free the request or start it (or another) again. on_done is never
 * called from inside llmux_upstream_start().
 */
#ifndef LLMUX_UPSTREAM_H
#define LLMUX_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "net/dns.h"
#include "llmux/common.h"
#include "net/tls.h"

typedef struct llmux_upstream_s llmux_upstream_t;
typedef struct llmux_upstream_req_s llmux_upstream_req_t;
typedef struct llmux__upconn_s llmux__upconn_t;

/* Response head. `headers` holds 2 * nheaders strings: name, value, name,
 * value... in arrival order, not NUL-terminated; they point into bytes
 * the connection read and are valid only during the call. */
typedef void (*llmux_upstream_head_cb)(llmux_upstream_req_t *req, int status,
                                       const llmux_str_t *headers, size_t nheaders);
/* Body bytes as they arrive, chunked framing removed. Valid during the call. */
typedef void (*llmux_upstream_body_cb)(llmux_upstream_req_t *req, const char *data,
                                       size_t len);
/* The end: the HTTP status (>= 200) after the whole body was delivered, or a
 * negative LLMUX_E*: ETIMEOUT, ECONNREFUSED, ECONNRESET, EDNS, ETLS, ECERT,
 * EEOF (closed before the response was complete), EPROTO (not HTTP/1.x),
 * ENOMEM, EIO (other socket errors), ECANCELED (pool closed under it).
 * req->error then says why in words, naming the host (for EDNS with the
 * resolver's reason: "cannot resolve api.example: NXDOMAIN"; for a failed
 * connect with the last attempt's reason); req->bytes_received says whether any
 * response byte arrived (if so, a retry elsewhere must not replay a response
 * the client may already have seen). */
typedef void (*llmux_upstream_done_cb)(llmux_upstream_req_t *req, int status);
/* Everything one socket read brought has been delivered through on_body:
 * a caller that gathers what on_body produced sends it now, in one write,
 * instead of one write per stream event. Not called after on_done. */
typedef void (*llmux_upstream_read_end_cb)(llmux_upstream_req_t *req);

typedef struct llmux_upstream_options_s {
  unsigned max_idle_per_key; /* idle connections kept per key; 0 -> 256 */
  uint64_t idle_timeout_ms;  /* an idle connection is closed after; 0 -> 30000 */
  /* The pool's resolver (nameservers, hosts file, timeouts; tests point it
   * at a fake nameserver). Read during llmux_upstream_new() only. NULL:
   * resolv.conf and /etc/hosts. */
  const llmux_dns_options_t *dns;
  void *data;                /* the caller's, for llmux_upstream_data() */
} llmux_upstream_options_t;

struct llmux_upstream_req_s {
  void *data;

  /* public: set between req_init and start; borrowed until the end */
  int https;                     /* 0 http, 1 https */
  const char *host;              /* name or IP literal; SNI and Host header */
  uint16_t port;                 /* 0 -> 80 / 443 */
  llmux_tls_ctx_t *tls_ctx;      /* client context; required when https */
  const char *method;            /* "POST"; NULL -> "GET" */
  const char *path;              /* "/v1/chat/completions"; NULL -> "/" */
  /* Extra header lines, each "Name: value\r\n" (no blank line at the end).
   * The client writes Host and, when there is a body or the method is
   * POST/PUT/PATCH, Content-Length itself: do not include them, nor
   * Transfer-Encoding or Connection. */
  const char *headers;
  size_t headers_len;
  const uv_buf_t *body;          /* body pieces, sent in order */
  unsigned nbody;
  /* Timeouts in ms, 0 = none. connect covers name resolution, TCP connect
   * and the TLS handshake; when the name has several addresses, each TCP
   * attempt but the last gets an equal share of what is left (at least 1 s
   * if the budget allows) so the next address still has time.
   * first_byte runs from the moment the request is handed to the socket
   * (restarted once it is fully written) until the first response byte. idle is the longest gap between two reads once
   * the response started (stream chunks); it is suspended while paused.
   * total covers everything, the stale-connection retry included. */
  uint64_t connect_timeout_ms;
  uint64_t first_byte_timeout_ms;
  uint64_t idle_timeout_ms;
  uint64_t total_timeout_ms;
  llmux_upstream_head_cb on_head;  /* optional */
  llmux_upstream_body_cb on_body;  /* optional */
  llmux_upstream_done_cb on_done;  /* required */
  llmux_upstream_read_end_cb on_read_end; /* optional */

  /* read-only */
  int status;                    /* HTTP status once the head arrived, else 0 */
  uint64_t bytes_received;       /* response bytes (plaintext) received */
  unsigned reused : 1;           /* the response came on a pooled connection */
  unsigned retried : 1;          /* a stale pooled connection was replaced */
  char error[256];               /* why on_done got an error ("" otherwise) */

  /* private */
  llmux_upstream_t *up;
  llmux__upconn_t *conn;         /* NULL when not running */
  uint64_t total_deadline;       /* loop time (ms), 0 = none */
  unsigned paused : 1;
  void *reserved[4];
};

/* Creates a pool on `loop` (opts may be NULL for defaults), with its
 * resolver: reads the hosts file and resolv.conf (blocking: call at
 * start-up). 0, ENOMEM, or the resolver's LLMUX_EINVAL (bad nameserver
 * option) / LLMUX_EIO. */
int llmux_upstream_new(uv_loop_t *loop, const llmux_upstream_options_t *opts,
                       llmux_upstream_t **out);
/* Closes every idle connection, ends any running request with on_done
 * (LLMUX_ECANCELED), closes the resolver, then calls cb (never from inside
 * this call) once all handles (the resolver's too) are closed, and frees
 * the pool. No start() after this. */
void llmux_upstream_close(llmux_upstream_t *up, void (*cb)(llmux_upstream_t *up));

/* Zeroes the request: call before filling it, and before reusing it. */
void llmux_upstream_req_init(llmux_upstream_req_t *req);
/* Sends the request on an idle pooled connection for (scheme, host, port,
 * tls_ctx), or on a new one. A request that fails on a pooled connection
 * before any response byte (the server had closed it: EOF or reset) is sent
 * again once on a new connection. Returns 0, or LLMUX_EINVAL (missing
 * field, malformed host name, https without tls_ctx, pool closing) / ENOMEM
 * / another error if nothing could be started; then no callback will come
 * and req->error says why. Resolution failures come through on_done. */
int llmux_upstream_start(llmux_upstream_t *up, llmux_upstream_req_t *req);
/* Stops the request now: its connection is closed (never pooled) and no
 * callback at all follows, not even on_done. After it returns the library
 * holds no pointer to req or to anything it borrowed, so the caller may
 * free them. A no-op on a request that is not running. */
void llmux_upstream_cancel(llmux_upstream_req_t *req);
/* Backpressure: stop / restart reading the response from the socket. Bytes
 * already read (at most one 64 KiB read, or what TLS had decrypted) are
 * still delivered; the idle timeout is suspended while paused, the total
 * timeout is not. No-ops when not running. */
void llmux_upstream_pause(llmux_upstream_req_t *req);
void llmux_upstream_resume(llmux_upstream_req_t *req);

/* opts->data as given to llmux_upstream_new (NULL without opts): how the
 * close callback finds its owner. */
void *llmux_upstream_data(const llmux_upstream_t *up);

/* Idle connections currently pooled (all keys); for tests and stats. */
unsigned llmux_upstream_idle_count(const llmux_upstream_t *up);

#endif /* LLMUX_UPSTREAM_H */
