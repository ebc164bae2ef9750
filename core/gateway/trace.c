/* Traces: a request's trace context, its spans, and the exporter's life. */
#include "gateway/trace.h"

#include <stdio.h>
#include <string.h>

#include "base/log.h"
#include "gateway/server.h"
#include "route/router.h" /* llmux_rand_next */

#ifndef LLMUX_VERSION
#define LLMUX_VERSION "0.0.0"
#endif

#define TRACESTATE_MAX 512

static int is_zero(const uint8_t *b, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    if (b[i]) return 0;
  return 1;
}

/* Ids from the gateway's splitmix64 generator (the request ids' state):
 * unique, cheap, not secrets. Never all zero, which W3C forbids. */
static void draw_id(llmux_gateway_t *gw, uint8_t *out, size_t n) {
  size_t i;
  for (i = 0; i < n; i += 8) {
    uint64_t x = llmux_rand_next(&gw->id_state);
    memcpy(out + i, &x, n - i < 8 ? n - i : 8);
  }
  if (is_zero(out, n)) out[n - 1] = 1;
}

static int traced(const llmux_reqlog_t *rec) {
  return !is_zero(rec->span_id, 8);
}

/* ---- per request ---------------------------------------------------------- */

static const llmux_str_t *header_trimmed(const llmux_http_req_t *req, const char *name,
                                         llmux_str_t *out) {
  const llmux_str_t *v = llmux_http_header(req, name);
  if (v == NULL) return NULL;
  *out = *v;
  while (out->len > 0 && (out->base[0] == ' ' || out->base[0] == '\t')) out->base++, out->len--;
  while (out->len > 0 && (out->base[out->len - 1] == ' ' || out->base[out->len - 1] == '\t'))
    out->len--;
  return out;
}

void llmux_trace_begin(llmux_gateway_t *gw, llmux_reqlog_t *rec, const llmux_http_req_t *req) {
  llmux_str_t v;
  llmux_trace_ctx_t c;
  int parent = req != NULL && header_trimmed(req, "traceparent", &v) != NULL &&
               llmux_traceparent_parse(v.base, v.len, &c) == 0;
  if (parent) {
    rec->trace = c;
    rec->has_parent = 1;
  }
  /* No exporter, or the client's caller decided not to sample: we make no
   * span and pass its context on as it came (ParentBased sampling). */
  if (gw->otlp == NULL || (parent && !(c.flags & 1))) return;
  if (!parent) {
    draw_id(gw, rec->trace.trace_id, 16);
    rec->trace.flags = 1; /* sampled */
  }
  draw_id(gw, rec->span_id, 8);
}

void llmux_trace_attempt(llmux_gateway_t *gw, const llmux_reqlog_t *rec, uint8_t span_id[8]) {
  if (traced(rec)) draw_id(gw, span_id, 8);
  else memset(span_id, 0, 8);
}

int llmux_trace_headers(const llmux_reqlog_t *rec, const uint8_t span_id[8],
                        const llmux_http_req_t *client, llmux_buf_t *headers) {
  char tp[56];
  llmux_str_t ts;
  int rc = 0;
  if (traced(rec))
    llmux_traceparent_format(rec->trace.trace_id, span_id, rec->trace.flags, tp);
  else if (rec->has_parent)
    llmux_traceparent_format(rec->trace.trace_id, rec->trace.span_id, rec->trace.flags, tp);
  else
    return 0;
  rc |= llmux_buf_appends(headers, "traceparent: ");
  rc |= llmux_buf_append(headers, tp, 55);
  rc |= llmux_buf_appends(headers, "\r\n");
  /* W3C: tracestate travels with the traceparent it belongs to. The front
   * door refused CR and LF in header values. */
  if (client != NULL && header_trimmed(client, "tracestate", &ts) != NULL && ts.len > 0 &&
      ts.len <= TRACESTATE_MAX) {
    rc |= llmux_buf_appends(headers, "tracestate: ");
    rc |= llmux_buf_append(headers, ts.base, ts.len);
    rc |= llmux_buf_appends(headers, "\r\n");
  }
  return rc ? LLMUX_ENOMEM : 0;
}

/* ---- spans ---------------------------------------------------------------- */

#define MAX_ATTRS 12

typedef struct attrs_s {
  llmux_span_attr_t a[MAX_ATTRS];
  size_t n;
} attrs_t;

static void attr_str(attrs_t *at, const char *key, const char *v) {
  if (v == NULL || *v == '\0' || at->n == MAX_ATTRS) return;
  at->a[at->n++] = (llmux_span_attr_t){key, LLMUX_ATTR_STR, v, 0, 0, 0};
}

static void attr_int(attrs_t *at, const char *key, int64_t v) {
  if (v < 0 || at->n == MAX_ATTRS) return; /* unknown */
  at->a[at->n++] = (llmux_span_attr_t){key, LLMUX_ATTR_INT, NULL, v, 0, 0};
}

/* `{gen_ai.operation.name} {gen_ai.request.model}`, or the operation alone
 * when no model is known (semantic conventions). */
static const char *span_name(char *buf, size_t size, const char *op, const char *model) {
  if (model == NULL || *model == '\0') return op;
  snprintf(buf, size, "%s %s", op, model);
  return buf;
}

/* The client's request as we served it. */
static void server_span(const llmux_reqlog_t *rec, llmux_span_t *sp, attrs_t *at, char *name,
                        size_t name_size, char *status) {
  memset(sp, 0, sizeof *sp);
  memcpy(sp->trace_id, rec->trace.trace_id, 16);
  memcpy(sp->span_id, rec->span_id, 8);
  if (rec->has_parent) {
    memcpy(sp->parent_id, rec->trace.span_id, 8);
    sp->has_parent = 1;
  }
  sp->name = span_name(name, name_size, rec->operation, rec->canonical_model);
  sp->kind = LLMUX_SPAN_SERVER;
  sp->start_ns = rec->start_ns;
  sp->end_ns = rec->start_ns + rec->duration_ns;
  attr_str(at, "gen_ai.operation.name", rec->operation);
  attr_str(at, "gen_ai.provider.name", rec->provider);
  attr_str(at, "gen_ai.request.model", rec->canonical_model);
  attr_str(at, "gen_ai.response.model", rec->response_model);
  attr_int(at, "gen_ai.usage.input_tokens", rec->prompt_tokens);
  attr_int(at, "gen_ai.usage.output_tokens", rec->completion_tokens);
  if (rec->finish_reason != NULL && *rec->finish_reason != '\0')
    at->a[at->n++] = (llmux_span_attr_t){"gen_ai.response.finish_reasons", LLMUX_ATTR_STR_ARRAY,
                                         rec->finish_reason, 0, 0, 1};
  if (rec->status > 0) attr_int(at, "http.response.status_code", rec->status);
  if (rec->status >= 400) {
    snprintf(status, 16, "%d", rec->status);
    attr_str(at, "error.type", rec->error_code ? rec->error_code : status);
    sp->error = 1;
  }
  sp->attrs = at->a;
  sp->nattrs = at->n;
}

/* One upstream attempt, under the SERVER span. */
static void client_span(const llmux_reqlog_t *rec, const llmux_reqlog_attempt_t *a,
                        llmux_span_t *sp, attrs_t *at, char *name, size_t name_size) {
  memset(sp, 0, sizeof *sp);
  memcpy(sp->trace_id, rec->trace.trace_id, 16);
  memcpy(sp->span_id, a->span_id, 8);
  memcpy(sp->parent_id, rec->span_id, 8);
  sp->has_parent = 1;
  sp->name = span_name(name, name_size, rec->operation, a->model);
  sp->kind = LLMUX_SPAN_CLIENT;
  sp->start_ns = a->start_ns;
  /* An attempt the request's end cut short ends with it. */
  sp->end_ns = a->end_ns >= a->start_ns && a->end_ns ? a->end_ns : rec->start_ns + rec->duration_ns;
  attr_str(at, "gen_ai.operation.name", rec->operation);
  attr_str(at, "gen_ai.provider.name", a->provider);
  attr_str(at, "gen_ai.request.model", a->model);
  if (a->status > 0) attr_int(at, "http.response.status_code", a->status);
  if (a->outcome != LLMUX_ATTEMPT_OK) {
    attr_str(at, "error.type", llmux_attempt_outcome_name(a->outcome));
    sp->error = 1;
  }
  sp->attrs = at->a;
  sp->nattrs = at->n;
}

size_t llmux_trace_spans(const llmux_reqlog_t *rec,
                         void (*emit)(void *arg, const llmux_span_t *span), void *arg) {
  llmux_span_t sp;
  attrs_t at;
  char name[320], status[16];
  size_t i, n = rec->nattempts < LLMUX_REQLOG_MAX_ATTEMPTS ? rec->nattempts
                                                            : LLMUX_REQLOG_MAX_ATTEMPTS;
  if (!traced(rec) || rec->operation == NULL) return 0;
  at.n = 0;
  server_span(rec, &sp, &at, name, sizeof name, status);
  emit(arg, &sp);
  for (i = 0; i < n; i++) {
    at.n = 0;
    client_span(rec, &rec->attempts[i], &sp, &at, name, sizeof name);
    emit(arg, &sp);
  }
  return n + 1;
}

static void to_exporter(void *arg, const llmux_span_t *span) {
  llmux_otlp_add_span(arg, span);
}

void llmux_trace_request_done(llmux_gateway_t *gw, const llmux_reqlog_t *rec) {
  if (gw->otlp == NULL || !traced(rec)) return;
  llmux_trace_spans(rec, to_exporter, gw->otlp);
}

/* ---- the exporter's life ---------------------------------------------------- */

static int open_exporter(llmux_gateway_t *gw, const char *endpoint) {
  llmux_otlp_options_t o;
  int rc;
  memset(&o, 0, sizeof o);
  o.endpoint = endpoint;
  o.service_version = LLMUX_VERSION;
  rc = llmux_otlp_new(gw->loop, gw->up, &o, &gw->otlp);
  if (rc != 0) {
    gw->otlp = NULL;
    llmux_error("otlp_endpoint %s: cannot export traces: %s", endpoint, llmux_strerror(rc));
    return rc;
  }
  llmux_info("traces: spans go to %s/v1/traces", endpoint);
  return 0;
}

int llmux_trace_open(llmux_gateway_t *gw) {
  const char *endpoint = gw->cfg->server.otlp_endpoint;
  return endpoint ? open_exporter(gw, endpoint) : 0;
}

void llmux_trace_reload(llmux_gateway_t *gw, const llmux_config_t *next) {
  const char *was = gw->cfg->server.otlp_endpoint, *now = next->server.otlp_endpoint;
  if (was == now || (was && now && strcmp(was, now) == 0)) return;
  /* The old exporter sends what it holds through the same pool, which
   * outlives it (its close ends within 2 s, or when the pool closes). */
  if (gw->otlp != NULL) llmux_otlp_close(gw->otlp, NULL, NULL);
  gw->otlp = NULL;
  if (now != NULL) open_exporter(gw, now);
  else llmux_info("traces: otlp_endpoint removed: no more spans are exported");
}

int llmux_trace_close(llmux_gateway_t *gw, void (*cb)(void *arg), void *arg) {
  llmux_otlp_t *o = gw->otlp;
  if (o == NULL) return 0;
  gw->otlp = NULL; /* requests that end from now on export nothing */
  llmux_otlp_close(o, cb, arg);
  return 1;
}
