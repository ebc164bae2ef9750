/* Traces out: spans encoded as OTLP/HTTP JSON and sent in batches to a
 * collector (`[server] otlp_endpoint`), and W3C `traceparent` in and out.
 *
 * A span is encoded into the pending batch when it ends (a copy of its
 * strings: the caller's memory is free again at once). Batches go out by
 * POST {endpoint}/v1/traces through the gateway's upstream pool, one at a
 * time, every `flush_ms` or when `batch_bytes` is reached. A collector that
 * is down or slow costs memory up to `max_bytes`, then spans are dropped and
 * counted: tracing never holds a request back nor grows without bound.
 *
 * Lifecycle: new -> add_span* -> close(cb); cb runs once no export is in
 * flight. Single-threaded, on the loop. */
#ifndef LLMUX_GATEWAY_OTLP_H
#define LLMUX_GATEWAY_OTLP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base/util.h"
#include "net/upstream.h"

/* W3C trace context. */
typedef struct llmux_trace_ctx_s {
  uint8_t trace_id[16];
  uint8_t span_id[8]; /* the caller's span: our parent */
  uint8_t flags;
} llmux_trace_ctx_t;

/* Parses a `traceparent` header (version 00, or a later one read as 00 per
 * the spec); 0, or LLMUX_EINVAL for anything malformed or all-zero ids. */
int llmux_traceparent_parse(const char *s, size_t n, llmux_trace_ctx_t *out);
/* "00-<trace>-<span>-<flags>" into out (at least 56 bytes incl. NUL). */
void llmux_traceparent_format(const uint8_t trace_id[16], const uint8_t span_id[8],
                              uint8_t flags, char *out);

enum { LLMUX_SPAN_INTERNAL = 1, LLMUX_SPAN_SERVER = 2, LLMUX_SPAN_CLIENT = 3 };
enum { LLMUX_ATTR_STR, LLMUX_ATTR_INT, LLMUX_ATTR_DOUBLE, LLMUX_ATTR_STR_ARRAY };

typedef struct llmux_span_attr_s {
  const char *key;
  int type;             /* LLMUX_ATTR_* */
  const char *s;        /* STR; STR_ARRAY: NUL-separated items, `n` of them */
  int64_t i;            /* INT */
  double d;             /* DOUBLE */
  size_t n;             /* STR_ARRAY item count */
} llmux_span_attr_t;

typedef struct llmux_span_s {
  uint8_t trace_id[16];
  uint8_t span_id[8];
  uint8_t parent_id[8];
  int has_parent;
  const char *name;
  int kind;                       /* LLMUX_SPAN_* */
  uint64_t start_ns, end_ns;      /* Unix time in ns */
  const llmux_span_attr_t *attrs;
  size_t nattrs;
  int error;                      /* status ERROR when nonzero, else UNSET */
  const char *status_message;     /* with error; may be NULL */
} llmux_span_t;

/* Appends one span as an OTLP JSON object to out. 0 or LLMUX_ENOMEM. */
int llmux_otlp_encode_span(llmux_buf_t *out, const llmux_span_t *span);

typedef struct llmux_otlp_s llmux_otlp_t;

typedef struct llmux_otlp_options_s {
  const char *endpoint;      /* "http://host:4318" (https needs tls_ctx) */
  llmux_tls_ctx_t *tls_ctx;  /* for https endpoints; borrowed */
  const char *service_version;
  size_t batch_bytes;        /* 0: 256 KiB */
  uint64_t flush_ms;         /* 0: 1000 */
  size_t max_bytes;          /* 0: 4 MiB */
} llmux_otlp_options_t;

/* 0, LLMUX_EINVAL (endpoint not http(s)://host[:port][/path]) or ENOMEM. */
int llmux_otlp_new(uv_loop_t *loop, llmux_upstream_t *up, const llmux_otlp_options_t *opts,
                   llmux_otlp_t **out);
void llmux_otlp_add_span(llmux_otlp_t *o, const llmux_span_t *span);
/* Sends what is pending (once), then frees and calls cb (may be NULL; never
 * from inside this call). Exports still running 2 s after the call are
 * cancelled and their spans counted as dropped, so a collector that does
 * not answer delays a stop by that much at most. The upstream pool must
 * outlive cb. */
void llmux_otlp_close(llmux_otlp_t *o, void (*cb)(void *arg), void *arg);

/* Counters, for metrics and tests. */
typedef struct llmux_otlp_stats_s {
  uint64_t spans_sent, spans_dropped, exports_ok, exports_failed;
} llmux_otlp_stats_t;
void llmux_otlp_stats(const llmux_otlp_t *o, llmux_otlp_stats_t *out);

#endif
