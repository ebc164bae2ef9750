/* One finished request, as observability sees it: filled by the proxy (and
 * the endpoints that answer without one) as the facts become known, handed
 * once to llmux_reqlog_done() when the request ends, which feeds the
 * metrics, the access log and the trace exporter from the same facts.
 *
 * Strings are borrowed for the duration of that call only (they point into
 * the request, its generation or the proxy). Nothing here is a secret or a
 * client's text: no key, no message content; `model` is the name the client
 * asked for, which the access log (not metrics labels) may carry. */
#ifndef LLMUX_GATEWAY_REQLOG_H
#define LLMUX_GATEWAY_REQLOG_H

#include <stddef.h>
#include <stdint.h>

#include "base/util.h"
#include "gateway/obs.h"
#include "gateway/otlp.h"

/* Attempts kept whole (the access log's, the trace's spans); more are counted.
 * max_attempts is 4 by default: 8 leaves room, at 56 bytes each a request. */
#define LLMUX_REQLOG_MAX_ATTEMPTS 8

/* Outcome of one upstream attempt; also the `outcome` label of
 * llmux_upstream_attempts_total. */
typedef enum {
  LLMUX_ATTEMPT_OK = 0,
  LLMUX_ATTEMPT_RATE_LIMITED,
  LLMUX_ATTEMPT_SERVER_ERROR,
  LLMUX_ATTEMPT_TIMEOUT,
  LLMUX_ATTEMPT_CONNECT_ERROR,
  LLMUX_ATTEMPT_CLIENT_ERROR,  /* the provider refused the request (4xx): final */
  LLMUX_ATTEMPT_AUTH_ERROR,
  LLMUX_ATTEMPT_MODEL_NOT_FOUND,
  LLMUX_ATTEMPT_CONTEXT_LENGTH,
  LLMUX_ATTEMPT_GARBAGE,       /* not HTTP, or an answer that is not one */
  LLMUX_ATTEMPT_BROKEN,        /* a stream cut after its first byte */
  LLMUX_ATTEMPT_CANCELLED,     /* the client went away, or the gateway stopped */
  LLMUX_ATTEMPT_COUNT
} llmux_attempt_outcome_t;

const char *llmux_attempt_outcome_name(llmux_attempt_outcome_t o); /* "ok", "rate_limited", ... */

typedef struct llmux_reqlog_attempt_s {
  const char *provider;
  const char *model;          /* the provider's model id */
  llmux_attempt_outcome_t outcome;
  int status;                 /* HTTP status, 0 when none arrived */
  uint64_t start_ns, end_ns;  /* Unix time */
  uint8_t span_id[8];         /* the CLIENT span, sent upstream in traceparent */
  int retry;                  /* 1: the same route again after a backoff */
} llmux_reqlog_attempt_t;

/* The series one (generation, tenant) records into, found on its first
 * request and kept: series live as long as their registry (metrics.h), so
 * the pointers stay good for as long as the generation that owns this
 * (it is freed with the generation, whose tenants' `data` point here). */
typedef struct llmux_reqlog_tenant_s {
  const llmux_obs_t *obs;                  /* whose series; NULL: none found yet */
  llmux_series_t *tokens_in, *tokens_out, *cost;
  struct {                                 /* requests_total, by endpoint and status */
    const char *endpoint;
    int status;
    llmux_series_t *s;
  } requests[4];
} llmux_reqlog_tenant_t;

/* The series one (generation, route) records into on success, kept the same
 * way: `provider`, `canonical` and `model` are the route's label values
 * (generation-owned, or llmux_reqlog_star for a passthrough route's), set
 * when the generation is built; the series are found on first use. A record
 * whose labels are these very pointers uses them; any other looks up. */
typedef struct llmux_reqlog_route_s {
  const char *provider, *canonical, *model;
  const llmux_obs_t *obs;                  /* whose series; NULL: none found yet */
  const char *operation;                   /* the GenAI series' operation */
  llmux_series_t *duration_ok, *tokens_in, *tokens_out, *attempt_ok;
  /* The access log's text of the route, escaped once, on first use:
   * `,"canonical_model":C,"provider":P,"provider_model":M` and
   * `{"provider":P,"model":M` (NULL: not yet, or no memory). */
  char *log_names, *log_attempt;
  size_t log_names_len, log_attempt_len;
} llmux_reqlog_route_t;

/* Frees what r holds (its log text), not r. */
void llmux_reqlog_route_release(llmux_reqlog_route_t *r);

/* "*": the model label of passthrough routes (one address, compared). */
extern const char llmux_reqlog_star[];

typedef struct llmux_reqlog_s {
  const char *request_id;
  const char *tenant;         /* NULL when llmux runs open */
  const char *endpoint;       /* "chat", "completions", "embeddings", "agent", ... */
  const char *operation;      /* gen_ai.operation.name: chat, text_completion,
                                 embeddings; NULL for a request the proxy did not
                                 take (no GenAI metrics, no overhead) */
  const char *model;          /* as asked */
  const char *canonical_model;
  const char *provider;       /* the route that answered, else the last tried */
  const char *provider_model;
  const char *response_model; /* what the provider said answered, else provider_model */
  int status;                 /* HTTP status sent to the client */
  const char *error_code;     /* the error's code, NULL on success */
  int stream;
  int passthrough;            /* the models are a client's passthrough id
                                 (issue 16): metrics label them "*" */
  int64_t prompt_tokens, completion_tokens; /* -1: unknown */
  double cost_usd;            /* from the configured prices; -1: unknown */
  uint64_t start_ns;          /* Unix time the request's first byte was parsed */
  uint64_t ttft_ns;           /* time to first token (streams), 0 when none */
  uint64_t duration_ns;
  uint64_t overhead_us;       /* what x-llmux-overhead-us said */
  uint64_t output_chunks;     /* stream events with content, for time per token */
  char client_ip[64];
  const char *finish_reason;  /* NULL when unknown */
  llmux_trace_ctx_t trace;    /* trace id; span_id is the client's span when has_parent */
  int has_parent;
  uint8_t span_id[8];         /* our SERVER span */
  llmux_reqlog_attempt_t attempts[LLMUX_REQLOG_MAX_ATTEMPTS];
  size_t nattempts;           /* attempts beyond the array are counted, not kept */
  unsigned failovers, retries;
  /* private */
  uint64_t mono_start_us;     /* llmux_now_us() at start_ns: durations are monotonic */
  int attempt_open;           /* an attempt began and has not ended */
  const char *cur_provider, *cur_model; /* its route, also past the array */
  llmux_reqlog_tenant_t *tenant_series; /* the tenant's in its generation, may be NULL */
  llmux_reqlog_route_t *route_series;   /* the last attempt's route's, may be NULL */
} llmux_reqlog_t;

struct llmux_gateway_s;
struct llmux_http_req_s;

/* The record's life, on the loop:
 *
 *   llmux_reqlog_begin              when the request is handed over
 *   llmux_reqlog_attempt_begin/end  around each upstream attempt (the proxy)
 *   llmux_reqlog_done               once, when the request ends
 *
 * begin counts the request in llmux_requests_in_flight and done takes it
 * out again; each attempt's end counts llmux_upstream_attempts_total (the
 * outcome is known there, and attempts beyond the array still count);
 * done records everything else: llmux_requests_total, the GenAI
 * histograms, overhead, failovers, retries, tenants' tokens and cost, and
 * the access-log line. */

/* Zeroes rec, marks tokens unknown, and sets the times from the front
 * door's `start_us` (llmux_now_us() of the request's first byte). With an
 * access log, also the client's address (one getpeername: done only when
 * the line will be written). */
void llmux_reqlog_begin(struct llmux_gateway_s *gw, llmux_reqlog_t *rec,
                        const struct llmux_http_req_s *req, const char *request_id);

/* The request goes on elsewhere after all (an operator's request checked
 * at its head and handled later): takes it out of the in-flight gauge,
 * records nothing. */
void llmux_reqlog_cancel(struct llmux_gateway_s *gw, llmux_reqlog_t *rec);

/* An attempt on (provider, its model id) starts now; `retry`: the same route
 * again after a backoff. Counts it in nattempts; kept while there is room. */
void llmux_reqlog_attempt_begin(llmux_reqlog_t *rec, const char *provider, const char *model,
                                int retry);
/* The attempt that began ends now with `outcome` (`status`: the provider's
 * HTTP status, 0 when none). Does nothing when no attempt is open. */
void llmux_reqlog_attempt_end(struct llmux_gateway_s *gw, llmux_reqlog_t *rec,
                              llmux_attempt_outcome_t outcome, int status);

/* The request ended: duration (when the caller left it 0), metrics, the
 * access log. Call once per begin. Strings in rec may go after it returns. */
void llmux_reqlog_done(struct llmux_gateway_s *gw, llmux_reqlog_t *rec);

/* The parts of done that need no gateway, for tests. */
/* Everything done records into o except in-flight and attempts. */
void llmux_reqlog_metrics(llmux_obs_t *o, const llmux_reqlog_t *rec);
/* The access-log line: one JSON object and '\n', appended to out. The
 * fields, in this order: time (the request's end, RFC 3339 UTC with
 * milliseconds), request_id, tenant, endpoint, model, canonical_model,
 * provider, provider_model, status, error_code, attempts ([{provider,
 * model, outcome, ms}]), stream, prompt_tokens, completion_tokens,
 * cost_usd, ttft_ms, duration_ms, overhead_us, client_ip; null for what is
 * unknown. Never a key, never a message's content. 0 or LLMUX_ENOMEM. */
int llmux_reqlog_json(llmux_buf_t *out, const llmux_reqlog_t *rec);

#endif
