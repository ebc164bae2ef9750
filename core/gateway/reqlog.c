/* A finished request into metrics and the access log (see reqlog.h): the
 * one place that turns a request's facts into observations. */
#include "gateway/reqlog.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "gateway/server.h"
#include "gateway/trace.h"

static const char *const outcome_names[LLMUX_ATTEMPT_COUNT] = {
    "ok",          "rate_limited",    "server_error",   "timeout",
    "connect_error", "client_error",  "auth_error",     "model_not_found",
    "context_length", "garbage",      "broken",         "cancelled"};

const char *llmux_attempt_outcome_name(llmux_attempt_outcome_t o) {
  return (unsigned)o < LLMUX_ATTEMPT_COUNT ? outcome_names[o] : "unknown";
}

/* ---- times ---------------------------------------------------------------- */

static uint64_t wall_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Unix time of a monotonic instant of this request. */
static uint64_t unix_ns_at(const llmux_reqlog_t *rec, uint64_t mono_us) {
  return rec->start_ns + (mono_us - rec->mono_start_us) * 1000u;
}

/* ---- the record's life ------------------------------------------------------ */

/* The peer's address as text. IPv4 by hand: inet_ntop goes through
 * sprintf, which would be most of what a log line costs. */
static void peer_string(const llmux_http_req_t *req, char *out, size_t cap) {
  struct sockaddr_storage ss;
  if (llmux_http_req_peer(req, &ss) != 0) return;
  if (ss.ss_family == AF_INET && cap >= 16) {
    const unsigned char *a =
        (const unsigned char *)&((const struct sockaddr_in *)&ss)->sin_addr.s_addr;
    int i;
    for (i = 0; i < 4; i++) {
      out += llmux_u64_dec(out, a[i]);
      *out++ = i < 3 ? '.' : '\0';
    }
  } else if (ss.ss_family == AF_INET6) {
    if (inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&ss)->sin6_addr, out,
                  (socklen_t)cap) == NULL)
      out[0] = '\0';
  }
}

void llmux_reqlog_begin(llmux_gateway_t *gw, llmux_reqlog_t *rec, const llmux_http_req_t *req,
                        const char *request_id) {
  uint64_t now_us = llmux_now_us();
  llmux_zero(rec, sizeof *rec);
  rec->request_id = request_id;
  rec->prompt_tokens = rec->completion_tokens = -1;
  rec->cost_usd = -1;
  rec->mono_start_us = req->start_us <= now_us ? req->start_us : now_us;
  rec->start_ns = wall_ns() - (now_us - rec->mono_start_us) * 1000u;
  if (gw->access_log != NULL) peer_string(req, rec->client_ip, sizeof rec->client_ip);
  llmux_series_add(gw->obs.in_flight_s, 1);
}

void llmux_reqlog_cancel(llmux_gateway_t *gw, llmux_reqlog_t *rec) {
  (void)rec;
  llmux_series_add(gw->obs.in_flight_s, -1);
}

void llmux_reqlog_attempt_begin(llmux_reqlog_t *rec, const char *provider, const char *model,
                                int retry) {
  size_t i = rec->nattempts++;
  rec->attempt_open = 1;
  rec->cur_provider = provider;
  rec->cur_model = model;
  if (i > 0) {
    if (retry) rec->retries++;
    else rec->failovers++;
  }
  if (i < LLMUX_REQLOG_MAX_ATTEMPTS) {
    llmux_reqlog_attempt_t *a = &rec->attempts[i];
    memset(a, 0, sizeof *a);
    a->provider = provider;
    a->model = model;
    a->retry = retry;
    a->start_ns = unix_ns_at(rec, llmux_now_us());
  }
}

const char llmux_reqlog_star[] = "*";

/* The route's series kept for registry o, NULL when there are none to keep
 * (no route, or another registry's: tests). */
static llmux_reqlog_route_t *route_series(const llmux_obs_t *o, const llmux_reqlog_t *rec) {
  llmux_reqlog_route_t *r = rec->route_series;
  if (r == NULL || (r->obs != NULL && r->obs != o)) return NULL;
  return r;
}

static llmux_series_t *attempt_series(llmux_obs_t *o, const llmux_reqlog_t *rec,
                                      llmux_attempt_outcome_t outcome) {
  const char *model = rec->passthrough ? llmux_reqlog_star : rec->cur_model;
  llmux_reqlog_route_t *r = route_series(o, rec);
  int keep = r != NULL && outcome == LLMUX_ATTEMPT_OK && rec->cur_provider == r->provider &&
             model == r->model;
  llmux_series_t *s;
  if (keep && r->attempt_ok != NULL) return r->attempt_ok;
  s = llmux_metric_series3(o->attempts, rec->cur_provider, model,
                           llmux_attempt_outcome_name(outcome));
  if (keep && s != NULL) {
    r->obs = o;
    r->attempt_ok = s;
  }
  return s;
}

void llmux_reqlog_attempt_end(llmux_gateway_t *gw, llmux_reqlog_t *rec,
                              llmux_attempt_outcome_t outcome, int status) {
  size_t i = rec->nattempts - 1;
  if (!rec->attempt_open) return;
  rec->attempt_open = 0;
  if (i < LLMUX_REQLOG_MAX_ATTEMPTS) {
    rec->attempts[i].outcome = outcome;
    rec->attempts[i].status = status;
    rec->attempts[i].end_ns = unix_ns_at(rec, llmux_now_us());
  }
  llmux_series_add(attempt_series(&gw->obs, rec, outcome), 1);
}

void llmux_reqlog_done(llmux_gateway_t *gw, llmux_reqlog_t *rec) {
  if (rec->attempt_open) llmux_reqlog_attempt_end(gw, rec, LLMUX_ATTEMPT_CANCELLED, 0);
  if (rec->duration_ns == 0) rec->duration_ns = (llmux_now_us() - rec->mono_start_us) * 1000u;
  llmux_series_add(gw->obs.in_flight_s, -1);
  llmux_reqlog_metrics(&gw->obs, rec);
  if (gw->access_log != NULL) {
    gw->log_line.len = 0;
    if (llmux_reqlog_json(&gw->log_line, rec) == 0)
      llmux_logfile_append(gw->access_log, gw->log_line.base, gw->log_line.len);
  }
  llmux_trace_request_done(gw, rec); /* spans, when traced (gateway/trace.h) */
}

/* ---- metrics ---------------------------------------------------------------- */

/* The GenAI label values: operation, provider, request model (canonical),
 * response model, and a fifth (token type or error type). The response
 * model is the route's configured id, not what the provider's answer said:
 * labels stay bounded by configuration whatever a provider sends (and "*"
 * for a passthrough model, whatever a client sends). */
static void genai_labels(const llmux_reqlog_t *rec, const char *v[5]) {
  v[0] = rec->operation;
  v[1] = rec->provider ? rec->provider : "";
  v[2] = rec->canonical_model ? rec->canonical_model : "unknown";
  v[3] = rec->provider_model ? rec->provider_model : "";
  if (rec->passthrough) v[2] = v[3] = llmux_reqlog_star; /* any id a client sends: not a label */
  v[4] = "";
}

/* Time per output token after the first: over the output tokens when the
 * provider counted them, else over the stream's events. 0: not enough to
 * say. */
static double time_per_token(const llmux_reqlog_t *rec) {
  uint64_t n = rec->completion_tokens > 1   ? (uint64_t)rec->completion_tokens - 1
               : rec->completion_tokens < 0 && rec->output_chunks > 1 ? rec->output_chunks - 1
                                                                      : 0;
  if (n == 0 || rec->duration_ns <= rec->ttft_ns) return 0;
  return (double)(rec->duration_ns - rec->ttft_ns) / 1e9 / (double)n;
}

/* A successful request's series from its route's kept ones, found and kept
 * when they are not yet (or kept for another operation); NULL: look up. */
static llmux_reqlog_route_t *genai_series(llmux_obs_t *o, const llmux_reqlog_t *rec,
                                          const char *const v[5]) {
  llmux_reqlog_route_t *r = route_series(o, rec);
  const char *w[5];
  if (r == NULL || v[1] != r->provider || v[2] != r->canonical || v[3] != r->model) return NULL;
  if (r->obs == o && r->operation == v[0]) return r;
  memcpy(w, v, sizeof w);
  w[4] = "";
  r->duration_ok = llmux_metric_series(o->op_duration, w);
  w[4] = "input";
  r->tokens_in = llmux_metric_series(o->token_usage, w);
  w[4] = "output";
  r->tokens_out = llmux_metric_series(o->token_usage, w);
  if (r->duration_ok == NULL || r->tokens_in == NULL || r->tokens_out == NULL) {
    r->operation = NULL;
    return NULL;
  }
  r->obs = o;
  r->operation = v[0];
  return r;
}

static void record_genai(llmux_obs_t *o, const llmux_reqlog_t *rec, const char *status) {
  const char *v[5];
  int ok = rec->error_code == NULL && rec->status >= 200 && rec->status < 300;
  llmux_reqlog_route_t *r;
  double tpot;
  genai_labels(rec, v);
  v[4] = ok ? "" : rec->error_code ? rec->error_code : status;
  r = ok ? genai_series(o, rec, v) : NULL;
  llmux_series_observe(r ? r->duration_ok : llmux_metric_series(o->op_duration, v),
                       (double)rec->duration_ns / 1e9);
  if (rec->prompt_tokens >= 0) {
    v[4] = "input";
    llmux_series_observe(r ? r->tokens_in : llmux_metric_series(o->token_usage, v),
                         (double)rec->prompt_tokens);
  }
  if (rec->completion_tokens >= 0 && strcmp(rec->operation, "embeddings") != 0) {
    v[4] = "output";
    llmux_series_observe(r ? r->tokens_out : llmux_metric_series(o->token_usage, v),
                         (double)rec->completion_tokens);
  }
  if (!ok || !rec->stream || rec->ttft_ns == 0) return;
  llmux_series_observe(llmux_metric_series(o->ttft, v), (double)rec->ttft_ns / 1e9);
  if ((tpot = time_per_token(rec)) > 0) llmux_series_observe(llmux_metric_series(o->tpot, v), tpot);
}

/* The record's tenant series for registry o, found now when they were not
 * yet; NULL when the record has none kept (no tenant, or a record made
 * outside a generation) or out of memory: then each lookup is done anew. */
static llmux_reqlog_tenant_t *tenant_series(llmux_obs_t *o, const llmux_reqlog_t *rec) {
  llmux_reqlog_tenant_t *t = rec->tenant_series;
  if (t == NULL || rec->tenant == NULL) return NULL;
  if (t->obs == o) return t;
  if (t->obs != NULL) return NULL; /* another registry's (tests): not ours to keep */
  t->tokens_in = llmux_metric_series3(o->tenant_tokens, rec->tenant, "input", NULL);
  t->tokens_out = llmux_metric_series3(o->tenant_tokens, rec->tenant, "output", NULL);
  t->cost = llmux_metric_series3(o->tenant_cost, rec->tenant, NULL, NULL);
  if (t->tokens_in == NULL || t->tokens_out == NULL || t->cost == NULL) return NULL;
  t->obs = o;
  return t;
}

static void record_tenant(llmux_obs_t *o, const llmux_reqlog_t *rec) {
  llmux_reqlog_tenant_t *t;
  if (rec->tenant == NULL || rec->prompt_tokens < 0) return;
  if ((t = tenant_series(o, rec)) == NULL) {
    llmux_series_add(llmux_metric_series3(o->tenant_tokens, rec->tenant, "input", NULL),
                     (double)rec->prompt_tokens);
    llmux_series_add(llmux_metric_series3(o->tenant_tokens, rec->tenant, "output", NULL),
                     rec->completion_tokens > 0 ? (double)rec->completion_tokens : 0);
    llmux_series_add(llmux_metric_series3(o->tenant_cost, rec->tenant, NULL, NULL),
                     rec->cost_usd > 0 ? rec->cost_usd : 0);
    return;
  }
  llmux_series_add(t->tokens_in, (double)rec->prompt_tokens);
  llmux_series_add(t->tokens_out, rec->completion_tokens > 0 ? (double)rec->completion_tokens : 0);
  llmux_series_add(t->cost, rec->cost_usd > 0 ? rec->cost_usd : 0);
}

/* requests_total{endpoint, status, tenant}: from the tenant's few kept
 * (endpoint, status) pairs when it has them, else looked up (and kept). */
static llmux_series_t *requests_series(llmux_obs_t *o, const llmux_reqlog_t *rec,
                                       const char *endpoint, const char *status) {
  llmux_reqlog_tenant_t *t = tenant_series(o, rec);
  llmux_series_t *s;
  size_t i;
  if (t != NULL)
    for (i = 0; i < sizeof t->requests / sizeof t->requests[0]; i++)
      if (t->requests[i].s != NULL && t->requests[i].status == rec->status &&
          strcmp(t->requests[i].endpoint, endpoint) == 0)
        return t->requests[i].s;
  s = llmux_metric_series3(o->requests, endpoint, status, rec->tenant ? rec->tenant : "");
  if (t != NULL && s != NULL) {
    i = (size_t)rec->status & 3;
    /* endpoint: the series keeps a copy of the same bytes, alive with it */
    t->requests[i].endpoint = llmux_series_label(s, 0);
    t->requests[i].status = rec->status;
    t->requests[i].s = s;
  }
  return s;
}

void llmux_reqlog_metrics(llmux_obs_t *o, const llmux_reqlog_t *rec) {
  char status[24];
  llmux_u64_dec(status, rec->status > 0 ? (uint64_t)rec->status : 0);
  llmux_series_add(requests_series(o, rec, rec->endpoint ? rec->endpoint : "unknown", status), 1);
  if (rec->operation == NULL) return;
  llmux_series_observe(o->overhead_s, (double)rec->overhead_us / 1e6);
  if (rec->failovers) llmux_series_add(o->failovers_s, rec->failovers);
  if (rec->retries) llmux_series_add(o->retries_s, rec->retries);
  record_genai(o, rec, status);
  record_tenant(o, rec);
}

/* ---- the access-log line ------------------------------------------------------ */

/* A line is written through a cursor into room reserved up front for the
 * longest it can be (line_room), so no piece checks for room: a request
 * pays for a few copies, not a buffer call per field. */
typedef struct line_s {
  llmux_buf_t *b;
  char *w;
} line_t;

#define LINE_FIXED 768 /* keys, punctuation and numbers of one line */
#define ATTEMPT_FIXED 128

static size_t str_room(const char *s) {
  return s && *s ? 6 * strlen(s) + 2 : 4; /* a byte escapes to at most \uXXXX; null */
}

/* r: the route's log text stands for its names (and, where they are its
 * own, an attempt's). */
static size_t line_room(const llmux_reqlog_t *rec, size_t nattempts,
                        const llmux_reqlog_route_t *r) {
  size_t i, n = LINE_FIXED + str_room(rec->request_id) + str_room(rec->tenant) +
                str_room(rec->endpoint) + str_room(rec->model) + str_room(rec->error_code) +
                str_room(rec->client_ip);
  n += r != NULL ? r->log_names_len + r->log_attempt_len
                 : str_room(rec->canonical_model) + str_room(rec->provider) +
                       str_room(rec->provider_model);
  for (i = 0; i < nattempts; i++)
    n += ATTEMPT_FIXED + str_room(rec->attempts[i].provider) + str_room(rec->attempts[i].model);
  return n;
}

static void put(line_t *l, const char *s, size_t n) {
  memcpy(l->w, s, n);
  l->w += n;
}
#define PUT(l, lit) put((l), (lit), sizeof(lit) - 1)

/* A JSON string (null for NULL or ""). Names from the configuration need
 * no escape and are copied as they are; anything else goes through the
 * shared escaper. */
#define X16(v) v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v
/* 1 for a byte copied as it is into a JSON string: printable ASCII but the
 * quote and the backslash (0 ends the scan, NUL included). */
static const unsigned char plain[256] = {
  X16(0), X16(0),
  1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x22 '"' */
  X16(1), X16(1),
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, /* 0x5c '\\' */
  X16(1), X16(1),
  X16(0), X16(0), X16(0), X16(0), X16(0), X16(0), X16(0), X16(0),
};
#undef X16

static void put_str(line_t *l, const char *s) {
  const unsigned char *u = (const unsigned char *)s;
  size_t n = 0;
  if (s == NULL || *s == '\0') {
    PUT(l, "null");
    return;
  }
  while (plain[u[n]]) n++;
  if (u[n] == '\0') {
    *l->w++ = '"';
    put(l, s, n);
    *l->w++ = '"';
    return;
  }
  l->b->len = (size_t)(l->w - l->b->base);
  llmux_buf_append_json_str(l->b, s, n + strlen(s + n)); /* in reserved room: cannot fail */
  l->w = l->b->base + l->b->len;
}

static void put_u64(line_t *l, uint64_t v) {
  l->w += llmux_u64_dec(l->w, v);
}

static void put_int(line_t *l, int64_t v) {
  if (v < 0) PUT(l, "null");
  else put_u64(l, (uint64_t)v);
}

/* `digits` decimal digits of v, zero-padded. */
static void put_frac(line_t *l, uint64_t v, int digits) {
  int i;
  for (i = digits - 1; i >= 0; i--, v /= 10) l->w[i] = (char)('0' + v % 10);
  l->w += digits;
}

/* Nanoseconds as milliseconds with three decimals (12.345); null for 0
 * when `zero_null`. */
static void put_ms(line_t *l, uint64_t ns, int zero_null) {
  uint64_t us = ns / 1000u;
  if (ns == 0 && zero_null) {
    PUT(l, "null");
    return;
  }
  put_u64(l, us / 1000u);
  PUT(l, ".");
  put_frac(l, us % 1000u, 3);
}

/* USD to ten decimals, trailing zeros dropped (0.000022); null when
 * unknown. */
static void put_usd(line_t *l, double usd) {
  uint64_t n;
  int digits = 10;
  if (!(usd >= 0) || usd >= 1e9) {
    PUT(l, "null");
    return;
  }
  n = (uint64_t)(usd * 1e10 + 0.5);
  put_u64(l, n / 10000000000ull);
  n %= 10000000000ull;
  if (n == 0) return;
  while (n % 10 == 0) {
    n /= 10;
    digits--;
  }
  PUT(l, ".");
  put_frac(l, n, digits);
}

/* "YYYY-MM-DDTHH:MM:SS.mmmZ". The seconds part is formatted once per
 * second: lines come in bursts. */
static void put_time(line_t *l, uint64_t unix_ns) {
  static time_t cached = (time_t)-1;
  static char text[24];
  time_t secs = (time_t)(unix_ns / 1000000000u);
  if (secs != cached) {
    struct tm tm;
    gmtime_r(&secs, &tm);
    strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &tm);
    cached = secs;
  }
  put(l, text, strlen(text));
  PUT(l, ".");
  put_frac(l, unix_ns / 1000000u % 1000u, 3);
  PUT(l, "Z");
}

/* The route's log text (reqlog.h), made on first use. */
static char *route_text(const char *const *keys, const char *const *vals, size_t n,
                        size_t *len) {
  llmux_buf_t b = {0};
  size_t i;
  int rc = 0;
  for (i = 0; i < n; i++) {
    rc |= llmux_buf_appends(&b, keys[i]);
    rc |= vals[i] && *vals[i] ? llmux_buf_append_json_str(&b, vals[i], strlen(vals[i]))
                              : llmux_buf_appends(&b, "null");
  }
  if (rc != 0) {
    llmux_buf_free(&b);
    return NULL;
  }
  *len = b.len;
  return b.base;
}

/* The record's route's log text, when its names are the route's own (not
 * a passthrough's client-given id); NULL otherwise. */
static const llmux_reqlog_route_t *log_route(const llmux_reqlog_t *rec) {
  llmux_reqlog_route_t *r = rec->route_series;
  if (r == NULL || rec->passthrough) return NULL;
  if (r->log_names == NULL) {
    static const char *const nk[] = {",\"canonical_model\":", ",\"provider\":",
                                     ",\"provider_model\":"};
    static const char *const ak[] = {"{\"provider\":", ",\"model\":"};
    const char *nv[] = {r->canonical, r->provider, r->model}, *av[] = {r->provider, r->model};
    if ((r->log_names = route_text(nk, nv, 3, &r->log_names_len)) == NULL) return NULL;
    if ((r->log_attempt = route_text(ak, av, 2, &r->log_attempt_len)) == NULL) {
      free(r->log_names);
      r->log_names = NULL;
      return NULL;
    }
  }
  return r;
}

void llmux_reqlog_route_release(llmux_reqlog_route_t *r) {
  free(r->log_names);
  free(r->log_attempt);
  r->log_names = r->log_attempt = NULL;
}

static void put_attempts(line_t *l, const llmux_reqlog_attempt_t *a, size_t n,
                         const llmux_reqlog_route_t *r) {
  size_t i;
  PUT(l, ",\"attempts\":[");
  for (i = 0; i < n; i++, a++) {
    if (i) PUT(l, ",");
    if (r != NULL && a->provider == r->provider && a->model == r->model) {
      put(l, r->log_attempt, r->log_attempt_len);
    } else {
      PUT(l, "{\"provider\":");
      put_str(l, a->provider);
      PUT(l, ",\"model\":");
      put_str(l, a->model);
    }
    PUT(l, ",\"outcome\":\"");
    put(l, llmux_attempt_outcome_name(a->outcome), strlen(llmux_attempt_outcome_name(a->outcome)));
    PUT(l, "\",\"ms\":");
    put_ms(l, a->end_ns > a->start_ns ? a->end_ns - a->start_ns : 0, 0);
    PUT(l, "}");
  }
  PUT(l, "]");
}

int llmux_reqlog_json(llmux_buf_t *out, const llmux_reqlog_t *rec) {
  size_t n = rec->nattempts < LLMUX_REQLOG_MAX_ATTEMPTS ? rec->nattempts
                                                         : LLMUX_REQLOG_MAX_ATTEMPTS;
  const llmux_reqlog_route_t *r = log_route(rec);
  line_t l;
  /* the route's names, when r's, are its log text: */
  if (r != NULL && (rec->canonical_model != r->canonical || rec->provider != r->provider ||
                    rec->provider_model != r->model))
    r = NULL;
  if (llmux_buf_reserve(out, line_room(rec, n, r)) != 0) return LLMUX_ENOMEM;
  l.b = out;
  l.w = out->base + out->len;
  PUT(&l, "{\"time\":\"");
  put_time(&l, rec->start_ns + rec->duration_ns);
  PUT(&l, "\",\"request_id\":");
  put_str(&l, rec->request_id);
  PUT(&l, ",\"tenant\":");
  put_str(&l, rec->tenant);
  PUT(&l, ",\"endpoint\":");
  put_str(&l, rec->endpoint);
  PUT(&l, ",\"model\":");
  put_str(&l, rec->model);
  if (r != NULL) {
    put(&l, r->log_names, r->log_names_len);
  } else {
    PUT(&l, ",\"canonical_model\":");
    put_str(&l, rec->canonical_model);
    PUT(&l, ",\"provider\":");
    put_str(&l, rec->provider);
    PUT(&l, ",\"provider_model\":");
    put_str(&l, rec->provider_model);
  }
  PUT(&l, ",\"status\":");
  put_int(&l, rec->status);
  PUT(&l, ",\"error_code\":");
  put_str(&l, rec->error_code);
  put_attempts(&l, rec->attempts, n, log_route(rec));
  if (rec->stream) PUT(&l, ",\"stream\":true");
  else PUT(&l, ",\"stream\":false");
  PUT(&l, ",\"prompt_tokens\":");
  put_int(&l, rec->prompt_tokens);
  PUT(&l, ",\"completion_tokens\":");
  put_int(&l, rec->completion_tokens);
  PUT(&l, ",\"cost_usd\":");
  put_usd(&l, rec->cost_usd);
  PUT(&l, ",\"ttft_ms\":");
  put_ms(&l, rec->ttft_ns, 1);
  PUT(&l, ",\"duration_ms\":");
  put_ms(&l, rec->duration_ns, 0);
  PUT(&l, ",\"overhead_us\":");
  put_int(&l, rec->operation ? (int64_t)rec->overhead_us : -1);
  PUT(&l, ",\"client_ip\":");
  put_str(&l, rec->client_ip);
  PUT(&l, "}\n");
  out->len = (size_t)(l.w - out->base);
  out->base[out->len] = '\0';
  return 0;
}
