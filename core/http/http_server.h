/* The HTTP/1.1 front door: a server on a libuv loop, parsing with llhttp.
 *
 * One connection hands its requests to the request callback one at a time
 * and answers them strictly in order (pipelined bytes wait in the
 * connection's buffer until the previous response is finished).
 *
 * Lifetimes and ownership
 * -----------------------
 * Server: the caller owns the llmux_http_server_t memory. init -> listen ->
 *   close(cb), or init -> listen -> drain(cb) [-> close(cb2)]. The memory may
 *   be freed (and the loop closed) once the close callback has run, or the
 *   drain's with status 0; uv_loop_close() then returns 0.
 *
 * Drain (a graceful close, as for SIGTERM): the listener closes at once, so
 *   new connections are refused. A connection between requests (idle
 *   keep-alive, or connected and silent) closes at once; if a finished
 *   response is still being written it is sent first. A connection whose
 *   request is with the handler, or whose request is still arriving, keeps
 *   going: that request is answered and its response is the last
 *   (`Connection: close` when its head is sent after the drain began; a
 *   stream that began before closes after its end). Pipelined requests
 *   behind it are not read. The drain's cb runs once, from the loop, when
 *   the listener and every connection are closed: the server is then closed
 *   (as after close's cb). llmux_http_server_close during a drain hurries
 *   it: requests still in flight are aborted, the drain's cb runs with
 *   LLMUX_ECANCELED and close's cb right after it. "Drain" here is the
 *   server's; req->on_drain is about one request's write queue.
 *
 * Request: the server allocates it and hands it to on_request. It stays
 *   valid until exactly one of these happens:
 *   - the handler finishes the response (llmux_http_respond*,
 *     llmux_http_send_error or llmux_http_end returned, with success or not);
 *   - the server calls req->on_abort (the client went away, a write failed,
 *     or the server is closing). on_abort runs at most once, never from inside
 *     an llmux_http_* call the handler made on that request, and never after
 *     the response was finished. When it returns the request is gone.
 *   After that the handler must not touch the request or anything it points
 *   to (headers, path, body). Memory the handler hung on req->data is the
 *   handler's to free, typically in on_abort or right after finishing.
 *   A handler whose work is asynchronous must set on_abort, or it cannot know
 *   the request went away. The server frees the request itself, once the
 *   response is finished (or aborted) and libuv no longer holds any of its
 *   write requests.
 *   A half-closed client (EOF while a response is pending) counts as gone,
 *   as in nginx: the request is aborted.
 *
 * An absolute-form target (`POST http://host/v1/x`) is accepted as RFC 9112
 * requires: `target` is as sent, `path` is its path ("/" if it has none).
 *
 * Strings in a request (target, path, query, header names and values, body)
 * point into memory owned by the request and are NUL-terminated
 * (base[len] == '\0'). Header values have surrounding white space trimmed.
 *
 * Responses: the server adds `Server: llmux`, Content-Length (complete
 * responses) or Transfer-Encoding: chunked (streams; HTTP/1.0 clients get a
 * close-delimited body instead), and `Connection: close` when the connection
 * will close. Caller headers named Content-Length, Transfer-Encoding or
 * Connection are dropped, as are headers whose name or value holds CR or LF.
 * HEAD requests and 204/304 responses send no body bytes.
 *
 * Requests the server answers itself (OpenAI-shaped JSON, then close; the
 * handler never sees them): 400 malformed, bad header name, obs-fold (also
 * with an empty first line), missing Host on 1.1 or more than one Host,
 * Content-Length with Transfer-Encoding, Transfer-Encoding on HTTP/1.0,
 * duplicate or invalid Content-Length, chunk data not followed by CRLF; 501 a transfer-coding other than chunked; 505 not HTTP/1.x;
 * 431 request line + headers > max_header; 413 body > max_body (from
 * Content-Length before reading, or while de-chunking); 417 an Expect other
 * than 100-continue; 408 header or body timeout. `Expect: 100-continue` gets
 * "100 Continue" once the head passed those checks. Idle keep-alive
 * connections close silently. Chunked trailers are read and dropped.
 * Upgrade/CONNECT are parsed as plain requests and the connection closes
 * after the response.
 *
 * Early answers: on_head, when set, is called with each request whose head
 * passed those checks, before any byte of its body is read (req->body is
 * empty, and no "100 Continue" has been sent yet). It runs synchronously,
 * during parsing, and either
 *   - returns without touching the response: the server reads the body and
 *     calls on_request with the same request (what on_head put on req->data
 *     is still there; nothing else is called with it if the request fails
 *     before that, so hang no memory on it here); or
 *   - finishes the response before it returns (llmux_http_respond*,
 *     llmux_http_send_error, or start ... end): the request is gone when
 *     on_head returns, the body is never read, and the connection closes
 *     after the response (it says `Connection: close`).
 * Keeping the request for later, or starting a stream without ending it,
 * is a programming error. This is where a key is checked, so that a client
 * without one cannot make the server hold its body.
 *
 * Memory a client can make the server hold is bounded:
 * - A connection's read buffer holds one header block in progress, or
 *   pipelined bytes waiting while the previous request is handled: it never
 *   grows past max_header + 16 KiB. While a finished response is not yet
 *   written (the client does not read) nothing more is read; a handler
 *   still at work keeps reading only until the buffer is full.
 * - A body buffer grows as bytes arrive (never reserved from Content-Length
 *   up front) and is charged to the server from its first byte until the
 *   request is freed (also after llmux_http_req_take_body).
 * - Read and body buffers of all connections together stay under
 *   max_memory (mem_used, mem_peak): a request whose body or header block
 *   would go beyond it, or whose first bytes find no room, gets 503
 *   `overloaded` (type server_error) and the connection closes. Lingering
 *   connections (closing, reading only to drop) share one small buffer.
 * - Beyond max_connections open connections, a new connection is accepted,
 *   answered 503 `too_many_connections` and closed.
 */
#ifndef LLMUX_HTTP_SERVER_H
#define LLMUX_HTTP_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "llmux/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct llmux_http_server_s llmux_http_server_t;
typedef struct llmux_http_req_s llmux_http_req_t;
typedef struct llmux__http_conn_s llmux__http_conn_t;

typedef struct llmux_http_header_s {
  llmux_str_t name;
  llmux_str_t value;
} llmux_http_header_t;

/* Header from two string literals: LLMUX_HTTP_HEADER_LIT("Content-Type", "text/plain"). */
#define LLMUX_HTTP_HEADER_LIT(n, v) \
  { { (n), sizeof(n) - 1 }, { (v), sizeof(v) - 1 } }

typedef void (*llmux_http_request_cb)(llmux_http_req_t *req);
typedef void (*llmux_http_abort_cb)(llmux_http_req_t *req);
typedef void (*llmux_http_drain_cb)(llmux_http_req_t *req);
typedef void (*llmux_http_close_cb)(llmux_http_server_t *srv);
/* status: 0 (every connection finished) or LLMUX_ECANCELED (closed first). */
typedef void (*llmux_http_drained_cb)(llmux_http_server_t *srv, int status);

typedef struct llmux_http_options_s {
  size_t max_header;          /* request line + headers, bytes; 0: 16 KiB */
  size_t max_body;            /* decoded body bytes; 0: 8 MiB */
  uint64_t header_timeout_ms; /* to receive the header block, and again the
                                 body; also the wait for a first request; 0: 10 s */
  uint64_t idle_timeout_ms;   /* keep-alive wait between requests; 0: 60 s */
  llmux_http_request_cb on_request; /* required */
  llmux_http_request_cb on_head; /* optional: see "Early answers" above */
  unsigned max_connections;   /* open connections; 0: 10000 */
  size_t max_memory;          /* read and body buffers, all connections; 0: 512 MiB */
  /* optional: called with the status of each response to a request given
   * to on_head or on_request, as its head is sent (llmux_http_respond*,
   * llmux_http_send_error, llmux_http_start), before that call returns and
   * while the request is still valid. For metrics and logs: it must not
   * touch the response. Not called for the server's own answers. */
  void (*on_status)(llmux_http_req_t *req, int status);
  void *reserved[1];
} llmux_http_options_t;

struct llmux_http_req_s {
  void *data;                   /* public: the handler's */
  llmux_http_abort_cb on_abort; /* public: set by the handler, see above */
  llmux_http_drain_cb on_drain; /* public: called once the write queue is
                                   empty again after llmux_http_write* returned > 0 */
  int keep_alive;               /* public: the client's wish; set 0 before
                                   responding to close after this response */
  /* read-only */
  llmux_http_server_t *server;
  const char *method;           /* "GET", static storage */
  int method_id;                /* llhttp_method_t */
  int version_major;
  int version_minor;
  llmux_str_t target;           /* request-target as sent */
  llmux_str_t path;             /* target before '?' */
  llmux_str_t query;            /* after '?' (without it); len 0 if none */
  const llmux_http_header_t *headers; /* in arrival order, duplicates kept */
  size_t nheaders;
  llmux_str_t body;             /* decoded (de-chunked); len 0 if none */
  uint64_t start_us;            /* llmux_now_us() when the first byte of the
                                   request was parsed */
  void *reserved[4];
};

struct llmux_http_server_s {
  void *data;                   /* public */
  /* read-only */
  uv_loop_t *loop;
  int port;                     /* bound port, valid after listen */
  llmux_http_options_t opts;    /* with defaults applied */
  size_t mem_used;              /* bytes of read and body buffers held now */
  size_t mem_peak;              /* the most mem_used has been */
  /* private */
  uv_tcp_t listener;
  llmux__http_conn_t *conns;    /* intrusive list of open connections */
  unsigned nconns;
  int listening;
  int closing;
  int draining;                 /* llmux_http_server_drain was called */
  int listener_open;
  llmux_http_close_cb close_cb;
  llmux_http_drained_cb drained_cb;
  char *pool[32];               /* spare read buffers */
  unsigned npool;
  char *sink;                   /* where lingering connections read */
  uint64_t id_state;            /* request ids of the server's own answers */
  void *reserved[1];
};

/* Errors: every function here returns 0 or an LLMUX_E* code, never a libuv
 * one (the two share their numbers: UV_ENOENT is LLMUX_ENOMEM), so
 * llmux_strerror() prints them all. */

/* 0 or a negative error. Does not touch the network. */
int llmux_http_server_init(uv_loop_t *loop, llmux_http_server_t *srv,
                           const llmux_http_options_t *opts);
/* host is an IPv4 or IPv6 literal ("127.0.0.1", "::1", "0.0.0.0"); port 0
 * picks an ephemeral port, read back from srv->port. Returns 0,
 * LLMUX_EADDRINUSE, LLMUX_EACCES (a privileged port), LLMUX_EADDRNOTAVAIL
 * (not an address of this host, or no IPv6), LLMUX_EINVAL (not an address
 * literal) or LLMUX_EIO. */
int llmux_http_server_listen(llmux_http_server_t *srv, const char *host, int port);
/* Flags for llmux_http_server_listen_ex. */
enum {
  /* SO_REUSEPORT: processes of the same user may listen on the same address
   * and the kernel spreads new connections among them (a master's workers,
   * cli/master.h). Linux. */
  LLMUX_HTTP_REUSEPORT = 1u << 0
};
/* The same, with LLMUX_HTTP_* flags; call it once, instead of listen. */
int llmux_http_server_listen_ex(llmux_http_server_t *srv, const char *host, int port,
                                unsigned flags);
/* Stops listening and closes every connection now, aborting requests in
 * flight (their on_abort runs synchronously inside this call, so do not call
 * it from a handler that still holds its own request: finish it first). cb
 * (may be NULL) runs once every handle is closed. During a drain, ends it
 * (see "Drain" above); after the drain's cb has run, does nothing. */
void llmux_http_server_close(llmux_http_server_t *srv, llmux_http_close_cb cb);
/* Starts a drain (see "Drain" above). Connections it closes at once abort
 * nothing; no on_abort runs inside this call. cb (may be NULL) never runs
 * inside it. 0, or LLMUX_EINVAL when the server is already draining or
 * closing (then cb is never called). */
int llmux_http_server_drain(llmux_http_server_t *srv, llmux_http_drained_cb cb);

/* Open connections by what they are doing, read at any time (metrics). */
typedef struct llmux_http_conn_stats_s {
  unsigned idle;      /* between requests, or connected and silent */
  unsigned reading;   /* a request's head or body arriving */
  unsigned active;    /* a request with the handler (a stream included) */
  unsigned closing;   /* last response sent, lingering before the close */
} llmux_http_conn_stats_t;
void llmux_http_server_conn_stats(const llmux_http_server_t *srv,
                                  llmux_http_conn_stats_t *out);

/* Value of the first header called `name` (case-insensitive), or NULL. */
const llmux_str_t *llmux_http_header(const llmux_http_req_t *req, const char *name);
/* Moves the body out: *out takes ownership (free(out->base)), req->body
 * becomes empty. out must be empty or zeroed on entry (it is overwritten). */
void llmux_http_req_take_body(llmux_http_req_t *req, llmux_buf_t *out);
/* Peer address of the request's connection: 0 or a negative error. */
int llmux_http_req_peer(const llmux_http_req_t *req, struct sockaddr_storage *out);

/* Complete responses. Each finishes the request. `body` bytes are borrowed
 * (copied only if the socket cannot take them at once). Returns 0 or a
 * negative error; on error the request is finished all the same and the
 * connection will be closed. */
int llmux_http_respond(llmux_http_req_t *req, int status,
                       const llmux_http_header_t *headers, size_t nheaders,
                       const void *body, size_t len);
/* Same, taking ownership of body->base (freed with free() once written or on
 * failure); *body is zeroed. */
int llmux_http_respond_buf(llmux_http_req_t *req, int status,
                           const llmux_http_header_t *headers, size_t nheaders,
                           llmux_buf_t *body);
/* An OpenAI-shaped JSON error with Content-Type application/json:
 * {"error":{"message":M,"type":T,"param":P|null,"code":C|null}}. */
int llmux_http_send_error(llmux_http_req_t *req, int status, const char *type,
                          const char *code, const char *message, const char *param);
/* The request's id (copied, at most 128 bytes): llmux_http_send_error sends
 * it as x-request-id, so every error carries it, whoever answers: every
 * response to the request gets the header unless the caller sent its own.
 * The server's own answers (400, 413, 431, 503 before a handler saw the
 * request) carry an id of the server's making. */
void llmux_http_set_request_id(llmux_http_req_t *req, const char *id);
/* Appends that JSON error object to out. 0 or LLMUX_ENOMEM. */
int llmux_http_error_json(llmux_buf_t *out, const char *type, const char *code,
                          const char *message, const char *param);

/* Streamed responses: start, any number of writes, end.
 * write* return the number of bytes queued for the client and not yet handed
 * to the kernel (>= 0; large means the client is slow: stop producing and
 * wait for on_drain), or a negative error (then the connection is failing
 * and on_abort will follow from the loop). A zero-length write sends nothing
 * (a zero chunk would end the stream). end finishes the request. */
int llmux_http_start(llmux_http_req_t *req, int status,
                     const llmux_http_header_t *headers, size_t nheaders);
int llmux_http_write(llmux_http_req_t *req, const void *data, size_t len);
/* Writes buf's bytes without copying them. When the socket takes them all
 * at once, *buf is left to the caller emptied (to fill again, no new
 * allocation); else the write owns buf->base (freed with free() after it)
 * and *buf is zeroed. */
int llmux_http_write_buf(llmux_http_req_t *req, llmux_buf_t *buf);
int llmux_http_end(llmux_http_req_t *req);

/* "OK", "Not Found", ...; "Unknown" for codes it does not know. */
const char *llmux_http_status_reason(int status);

#ifdef __cplusplus
}
#endif
#endif /* LLMUX_HTTP_SERVER_H */
