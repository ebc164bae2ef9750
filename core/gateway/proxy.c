#define _GNU_SOURCE
/* Proxying one client request: validate, resolve the model to candidate
 * routes, and try them in order (skipping routes without rate-limit headroom
 * or resting after failures), translating with each provider's plugin,
 * until one answers; then stream the answer back.
 *
 * One proxy_t lives from the client's request until both sides are done.
 * It dies in exactly one place, proxy_free(), reached when the response to
 * the client is finished or the client went away, and never while an
 * upstream request is running (it is cancelled first) or a backoff timer is
 * open (closed first, the memory freed in its close callback). It pins the
 * configuration generation it started in (its providers, routes, tenant)
 * and lets go of it only with its memory, in proxy_release(): a reload never
 * changes a request in flight. */
#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway/agent.h"
#include "gateway/inbound.h"
#include "base/json_scan.h"
#include "base/split.h"
#include "base/log.h"
#include "plugin/plugin.h"
#include "route/ratelimit.h"
#include "config/registry.h"
#include "route/router.h"
#include "route/steer.h"
#include "gateway/fleet.h"
#include "gateway/proxy.h"
#include "gateway/model_lists.h"
#include "shared/rl_shared.h"
#include "gateway/reqlog.h"
#include "gateway/trace.h"
#include "gateway/respond.h"
#include "gateway/unsupported.h"
#include "gateway/fanout.h"
#include "gateway/cache.h"
#include "base/util.h"

/* Stop reading from the provider while this much is queued for the client. */
#define CLIENT_HIGH_WATER (256 * 1024)
#define ERROR_BODY_MAX (64 * 1024)
#define MAX_RESP_HEADERS 64
#define MAX_CANDIDATES 64
#define MAX_FALLBACKS 8           /* names in a body's `models` */

/* A Redis lookup's tie to its proxy (cache = redis), cut if the proxy
 * goes first. */
typedef struct cache_wait_s {
  struct proxy_s *p;
} cache_wait_t;

/* Body `models` (issue 16): the names tried after `model`, and the
 * resolution they merge into (merge_fallbacks). Allocated only for a body
 * that has them. */
typedef struct proxy_fallbacks_s {
  char names[MAX_FALLBACKS][256];
  llmux_model_conf_t *models[MAX_CANDIDATES];
  llmux_route_conf_t *routes[MAX_CANDIDATES];
} proxy_fallbacks_t;

typedef struct proxy_s {
  llmux_gateway_t *gw;
  llmux_generation_t *gen;        /* pinned from the start to the last byte:
                                     its providers, routes and tenants */
  llmux_http_req_t *client;       /* NULL once finished or aborted */
  llmux_buf_t body;               /* the client's body, taken from the request */
  llmux_str_t model_value;        /* "model" inside body */
  int endpoint;
  int stream;
  unsigned caps;                  /* LLMUX_CAP_* the request needs */
  llmux_resolution_t res;
  llmux_passthrough_t *pt;        /* owned: res's model and route for
                                     PROVIDER/ANY-ID; NULL until one is needed */

  /* candidates and the attempts made on them */
  llmux_route_plan_t plan;        /* its arrays: cands, and skips while empty */
  const llmux_route_conf_t **cands; /* plan.nroutes of them: in cands_few
                                     when they fit, else in plan_mem */
  const llmux_route_conf_t *cands_few[4];
  void *plan_mem;                 /* owned: cands, or plan.skipped when there
                                     is no candidate (keep_plan) */
  size_t next;                    /* next candidate to consider */
  unsigned attempts;
  unsigned same_retries;
  uint64_t deadline_ms;           /* loop time */
  uint64_t prompt_tokens;
  uint64_t max_tokens;
  uint64_t min_context;           /* after a context-length error */
  llmux_buf_t tried;              /* "groq/x: 429 rate limited; ..." */
  llmux_buf_t skipped;            /* routes passed over, and why */
  uint64_t rl_wait_ms;            /* shortest wait of a rate-limited route */
  const char *rl_provider;        /* the first provider without headroom */
  uint64_t rl_mark;               /* shared store: its mark after reserving */
  llmux_rl_settle_t settle;       /* waiting for it before the answer ends,
                                     or for a refresh of the mirror */
  int settling;
  int stale;                      /* a check asked for a refresh first */
  int fresh;                      /* the mirror holds every state published
                                     before this request arrived */
  void (*after_refresh)(struct proxy_s *p);
  int shared_down;                /* a route was skipped because the shared
                                     state is unreachable (fail closed) */
  size_t ncooling;

  /* the last failure, for the final answer */
  int have_failure;
  int fail_status;
  const char *fail_type, *fail_code;
  llmux_buf_t fail_msg;
  uint64_t fail_retry_after_ms;

  /* the attempt in flight */
  const llmux_route_conf_t *route;
  llmux_provider_rt_t *prov;
  llmux_rl_reservation_t resv;
  uint64_t resv_tokens;
  llmux_host_txn_t ht;
  llmux_provider_rt_t *txn_prov;  /* whose plugin owns ht.txn.data */
  int up_running;
  llmux_buf_t up_path;
  llmux_buf_t up_headers;
  uint8_t span_id[8];             /* its CLIENT span, told upstream (gateway/trace.h) */
  llmux_buf_t out;                /* non-stream: the whole answer */
  llmux_buf_t pending;            /* stream: events not yet written */
  llmux_buf_t err_body;           /* non-2xx: the provider's body */
  llmux_buf_t resp_hdr_store;     /* the provider's response headers: their
                                     array, then copies of their bytes */
  int started;                    /* stream: the client has our head */
  int emit_failed;                /* 1: client write failed; 2: plugin refused the body */

  int timer_live;                 /* timer (below) is initialized */

  /* time spent upstream or waiting, excluded from x-llmux-overhead-us */
  uint64_t t_start, t_up_start, t_up_head, elsewhere_us;

  /* the tenant calling, and ARES's agent endpoint (issue 8) */
  const llmux_tenant_t *tenant;   /* NULL when llmux runs open */
  llmux_rl_reservation_t tenant_resv; /* its per-minute windows */
  uint64_t tenant_tokens;         /* committed at the end: the answer's usage */
  int agent;                      /* 1: POST /v1/chat, answers in ARES's shapes */
  llmux_agent_req_t areq;
  llmux_agent_stream_t astream;
  const llmux_inbound_t *in;      /* the client's API when not chat (inbound.h) */
  void *in_state;                 /* its per-request state */
  void *in_arg;                   /* opts->inbound_arg until request_arg takes it */
  llmux__proxy_link_t live;       /* in gw->proxies until proxy_free (drain, at the end) */
  int retry_next;                 /* the next attempt is the same route after a backoff */
  /* n > 1 to a provider without it (gateway/fanout.h) */
  unsigned n;                     /* the request's "n" (read_n); 0 or 1: one choice */
  llmux_str_t n_value;            /* its value inside body */
  int fan;                        /* the route being tried fans the request out */
  llmux_fanout_t *fanout;         /* the fanned-out attempt, while it lives */
  const char *n_refused;          /* a provider passed over for lacking n */
  /* Native passthrough (issue 15; inbound.h, native_endpoint): on a route
   * whose provider speaks the client's format, its own body goes upstream
   * (only the model replaced) and the answer back byte for byte. */
  llmux_buf_t in_body;            /* the client's body, beside the chat body it became */
  llmux_str_t in_model;           /* its "model" value, quotes included; NULL: none */
  int native;                     /* the attempt in flight passes through */
  llmux_split_t *native_sse;      /* a native stream's events, read for usage */
  llmux_buf_t fail_native;        /* the last failure's own body, already in the
                                     client's format (a native provider's) */
  /* Routing the caller steers (issue 16): the body's `provider` object or
   * the x-llmux-provider header, applied to the plan (plan_routes). */
  llmux_steer_t *steer;           /* owned; NULL while nothing steers */
  size_t nfallbacks;              /* names in `fb` (body `models`) */
  proxy_fallbacks_t *fb;          /* owned; NULL while the body has none */
  /* The response cache (issue 17; gateway/cache.h, cache_lookup). */
  int deterministic;              /* temperature 0 or a seed (validate) */
  int cache_state;                /* CACHE_* */
  llmux_cache_key_t cache_key;
  struct cache_wait_s *cache_wait; /* a Redis lookup in flight (cache = redis) */
  /* Last, what is written before it is read, so a new proxy zeroes only
   * what comes before: */
  llmux_reqlog_t rec;             /* what metrics and the access log see: set whole
                                     by take_record, filled as facts become known,
                                     ended in proxy_free */
  char rid[160];                  /* set by take_record */
  char model_name[256];           /* a C string: [0] set by proxy_new */
  llmux_upstream_req_t up;        /* set whole by build_upstream (up_running) */
  uv_timer_t timer;               /* backoff before retrying a route (timer_live) */
  char native_ctype[128];         /* the provider's content-type, for the client */
  uv_buf_t iov[LLMUX_TXN_MAX_BODY_PARTS];
} proxy_t;

static void try_next(proxy_t *p);
static void live_link(proxy_t *p);
static void live_unlink(proxy_t *p);

static uint64_t now_ms(const proxy_t *p) {
  return uv_now(p->gw->loop);
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- lifetime ----------------------------------------------------------- */

/* The very end of a proxy: its generation may go with it (the last
 * request of one a reload replaced). */
/* ---- proxies kept for reuse --------------------------------------------- */

/* A finished proxy is kept (up to SPARE_MAX per gateway) with its buffers
 * emptied but allocated, those not above SPARE_BUF_MAX (a stream's batch
 * of events fits): the next request then grows none of them again. The
 * client's body is the request's and goes with it. */
#define SPARE_MAX 8
#define SPARE_BUF_MAX 65536

static const size_t kept_bufs[] = {
    offsetof(proxy_t, tried),        offsetof(proxy_t, skipped),
    offsetof(proxy_t, fail_msg),     offsetof(proxy_t, up_path),
    offsetof(proxy_t, up_headers),   offsetof(proxy_t, out),
    offsetof(proxy_t, pending),      offsetof(proxy_t, err_body),
    offsetof(proxy_t, resp_hdr_store), offsetof(proxy_t, fail_native),
    offsetof(proxy_t, ht.txn.path),  offsetof(proxy_t, ht.txn.headers),
    offsetof(proxy_t, ht.txn.served_model), offsetof(proxy_t, ht.txn.adjusted),
    offsetof(proxy_t, ht.txn.refusal)};
#define NKEPT (sizeof kept_bufs / sizeof kept_bufs[0])

static llmux_buf_t *kept_buf(proxy_t *p, size_t i) {
  return (llmux_buf_t *)((char *)p + kept_bufs[i]);
}

/* A zeroed proxy (up to rec: what follows is written before it is read),
 * a kept one's buffers in place. */
static proxy_t *proxy_new(llmux_gateway_t *gw) {
  llmux_buf_t keep[NKEPT];
  proxy_t *p;
  size_t i;
  if (gw->nspare_proxies == 0) {
    if ((p = malloc(sizeof *p)) != NULL) {
      memset(p, 0, offsetof(proxy_t, rec));
      p->model_name[0] = '\0';
    }
    return p;
  }
  p = gw->spare_proxies[--gw->nspare_proxies];
  for (i = 0; i < NKEPT; i++) keep[i] = *kept_buf(p, i);
  memset(p, 0, offsetof(proxy_t, rec));
  p->model_name[0] = '\0';
  for (i = 0; i < NKEPT; i++) *kept_buf(p, i) = keep[i];
  return p;
}

static void proxy_destroy(proxy_t *p) {
  size_t i;
  for (i = 0; i < NKEPT; i++) llmux_buf_free(kept_buf(p, i));
  free(p);
}

void llmux__proxy_spares_free(llmux_gateway_t *gw) {
  while (gw->nspare_proxies > 0) proxy_destroy(gw->spare_proxies[--gw->nspare_proxies]);
}

static void proxy_release(proxy_t *p) {
  llmux_generation_t *gen = p->gen;
  llmux_gateway_t *gw = p->gw;
  size_t i;
  if (gw->nspare_proxies < SPARE_MAX && !gw->stopping) {
    for (i = 0; i < NKEPT; i++) {
      llmux_buf_t *b = kept_buf(p, i);
      if (b->cap > SPARE_BUF_MAX) llmux_buf_free(b);
      b->len = 0;
    }
    gw->spare_proxies[gw->nspare_proxies++] = p;
  } else {
    proxy_destroy(p);
  }
  llmux_generation_unref(gen);
}

static void on_timer_closed(uv_handle_t *h) {
  proxy_release(h->data);
}

/* Ends the plugin's part of the txn. Until then txn.data survives from one
 * attempt to the next on the same provider (llmux/provider.h, Retries);
 * after, a plugin never sees another instance's state. */
static void free_txn(proxy_t *p) {
  if (p->txn_prov && LLMUX_PROVIDER_HAS(p->txn_prov->plugin->vt, txn_free))
    p->txn_prov->plugin->vt->txn_free(p->txn_prov->instance, &p->ht.txn);
  p->txn_prov = NULL;
  p->ht.txn.data = NULL;
}

static void record_end(proxy_t *p);

static void proxy_free(proxy_t *p) {
  live_unlink(p);
  if (p->gw->shared) llmux_rl_shared_settle_cancel(&p->settle);
  if (p->up_running) {
    llmux_upstream_cancel(&p->up);
    llmux_router_inflight(p->gen->router, p->route->index, -1);
    llmux_router_report(p->gen->router, p->route->index, LLMUX_OUTCOME_NEUTRAL, 0, now_ms(p));
  }
  llmux_fanout_free(p->fanout); /* its copies cancelled likewise */
  p->fanout = NULL;
  record_end(p); /* before anything it points into goes */
  if (p->resv.held) llmux_rl_commit(&p->resv, p->resv_tokens, now_ms(p));
  /* A request that got no answer counts, without tokens, against the
   * tenant's requests_per_minute. */
  if (p->tenant_resv.held) llmux_rl_commit(&p->tenant_resv, p->tenant_tokens, now_ms(p));
  llmux_agent_stream_free(&p->astream);
  if (p->in != NULL) p->in->state_free(p->in_state);
  free_txn(p);
  llmux_host_txn_reset(&p->ht); /* its buffers, with the others kept, go in proxy_release */
  llmux_buf_free(&p->body);
  free(p->plan_mem);
  p->plan_mem = NULL;
  p->cands = NULL;
  free(p->fb);
  p->fb = NULL;
  free(p->pt);
  p->pt = NULL;
  free(p->steer);
  p->steer = NULL;
  llmux_buf_free(&p->in_body);
  llmux_cache_key_free(&p->cache_key);
  if (p->cache_wait != NULL) p->cache_wait->p = NULL; /* its answer finds no one */
  llmux_split_free(p->native_sse);
  if (p->timer_live) {
    uv_timer_stop(&p->timer);
    p->timer.data = p;
    uv_close((uv_handle_t *)&p->timer, on_timer_closed);
    return;
  }
  proxy_release(p);
}

/* The client side is finished: nothing more will be sent. */
static void proxy_finish(proxy_t *p) {
  p->client = NULL;
  proxy_free(p);
}

static void account(proxy_t *p);

static void on_client_abort(llmux_http_req_t *req) {
  proxy_t *p = req->data;
  llmux_debug("%s: client went away; cancelling the upstream request", p->rid);
  if (p->rec.error_code == NULL) p->rec.error_code = "client_closed";
  /* A stream the client left half-way was still served (and billed by the
   * provider): count what is known of it. */
  if (p->started || p->settling) account(p);
  proxy_finish(p);
}

static void on_client_drain(llmux_http_req_t *req) {
  proxy_t *p = req->data;
  if (p->up_running) llmux_upstream_resume(&p->up);
}

/* ---- answers ------------------------------------------------------------ */

static uint64_t overhead_us(const proxy_t *p) {
  uint64_t now = llmux_now_us(), total = now - p->t_start;
  uint64_t upstream = p->elsewhere_us;
  if (p->t_up_start) upstream += (p->t_up_head ? p->t_up_head : now) - p->t_up_start;
  /* A non-stream answer waits for the whole body upstream too. */
  if (!p->stream && p->t_up_start && p->t_up_head) upstream += now - p->t_up_head;
  return total > upstream ? total - upstream : 0;
}

static int served_model_ok(const llmux_buf_t *m);

/* Our response headers into h[] (room for 10: at most 9 here); num holds
 * 2 x 24 bytes. */
static size_t our_headers(proxy_t *p, llmux_http_header_t *h, const char *ctype, char *num) {
  size_t n = 0;
  h[n++] = (llmux_http_header_t){{"Content-Type", 12}, {ctype, strlen(ctype)}};
  h[n++] = (llmux_http_header_t){{"x-request-id", 12}, {p->rid, strlen(p->rid)}};
  if (p->in != NULL && p->in->request_id_header != NULL)
    h[n++] = (llmux_http_header_t){{p->in->request_id_header, strlen(p->in->request_id_header)},
                                   {p->rid, strlen(p->rid)}};
  if (p->route) {
    h[n++] = (llmux_http_header_t){{"x-llmux-provider", 16},
                                   {p->route->provider->name, strlen(p->route->provider->name)}};
    h[n++] = (llmux_http_header_t){{"x-llmux-model", 13},
                                   {p->route->model->id, strlen(p->route->model->id)}};
    if (p->route->passthrough) /* a model the catalog does not name (issue 16) */
      h[n++] = (llmux_http_header_t){{"x-llmux-passthrough", 19}, {"true", 4}};
  }
  llmux_u64_dec(num, p->rec.overhead_us = overhead_us(p));
  h[n++] = (llmux_http_header_t){{"x-llmux-overhead-us", 19}, {num, strlen(num)}};
  llmux_u64_dec(num + 24, p->attempts);
  h[n++] = (llmux_http_header_t){{"x-llmux-attempts", 16}, {num + 24, strlen(num + 24)}};
  /* ABI 1.4: what the plugin of the last attempt changed to serve it. */
  if (served_model_ok(&p->ht.txn.adjusted))
    h[n++] = (llmux_http_header_t){{"x-llmux-adjusted", 16},
                                   {p->ht.txn.adjusted.base, p->ht.txn.adjusted.len}};
  return n;
}

/* An error answer in OpenAI's shape. With `ares`, the rate-limit shape
 * (ARES's fields inside OpenAI's envelope): {"error":{"message","type",
 * "code"},"retry_after":N}. retry_after_s > 0 also sets Retry-After. */
static void respond_error(proxy_t *p, int status, const char *type, const char *code,
                          const char *param, const char *msg, uint64_t retry_after_s,
                          int ares) {
  llmux_http_header_t h[10];
  llmux_buf_t body = {0};
  char num[48], ra[24];
  size_t n;
  if (p->client == NULL) return;
  p->rec.status = status;
  p->rec.error_code = code;
  if (p->in != NULL) {
    p->in->error_body(&body, status, type, code, msg, p->rid);
  } else if (p->agent) {
    llmux_agent_error_json(&body, msg, llmux_agent_error_code(status, code), retry_after_s);
  } else if (ares) {
    llmux_buf_appends(&body, "{\"error\":{\"message\":");
    llmux_buf_append_json_str(&body, msg, strlen(msg));
    llmux_buf_printf(&body, ",\"type\":\"%s\",\"code\":\"%s\"},\"retry_after\":%llu}", type, code,
                     (unsigned long long)retry_after_s);
  } else {
    llmux_http_error_json(&body, type, code, msg, param);
  }
  n = our_headers(p, h, "application/json", num);
  if (retry_after_s > 0) {
    snprintf(ra, sizeof ra, "%llu", (unsigned long long)retry_after_s);
    h[n++] = (llmux_http_header_t){{"Retry-After", 11}, {ra, strlen(ra)}};
  }
  llmux_http_respond_buf(p->client, status, h, n, &body);
}

static void fail_client(proxy_t *p, int status, const char *type, const char *code,
                        const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static void fail_client(proxy_t *p, int status, const char *type, const char *code,
                        const char *param, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  respond_error(p, status, type, code, param, msg, 0, 0);
  proxy_finish(p);
}

/* ---- validation --------------------------------------------------------- */

/* Top-level keys of a request body that may each appear once (json_scan
 * refuses a second occurrence, escaped or not), so that what the gateway
 * checks is what the provider reads: first those read here, in F_ order,
 * then those plugins translate or that change what a request costs. */
static const char *const body_keys[] = {
    "model", "stream", "messages", "prompt", "input", "tools", "response_format",
    "max_completion_tokens", "max_tokens", "n", "provider", "models",
    "stream_options", "best_of", "tool_choice", "parallel_tool_calls", "functions",
    "function_call", "temperature", "top_p", "seed", "stop", "user", "presence_penalty",
    "frequency_penalty", "dimensions", "encoding_format"};
enum { F_MODEL, F_STREAM, F_MESSAGES, F_PROMPT, F_INPUT, F_TOOLS, F_FORMAT, F_MAX_COMPLETION,
       F_MAX_TOKENS, F_N, F_PROVIDER, F_MODELS, F_COUNT = LLMUX_COUNTOF(body_keys) };
/* Read by the response cache only (validate asserts the places). */
enum { F_TEMPERATURE = 18, F_SEED = 20 };

/* The cache's question (issue 17): is the answer meant to be the same
 * every time? temperature 0, or a seed. */
static int deterministic(const llmux_json_field_t *f) {
  if (f[F_SEED].type == LLMUX_JSON_NUMBER) return 1;
  return f[F_TEMPERATURE].type == LLMUX_JSON_NUMBER &&
         strtod(f[F_TEMPERATURE].value.base, NULL) == 0.0;
}

static int validate_fields(proxy_t *p, llmux_json_field_t *f) {
  if (f[F_MODEL].type == LLMUX_JSON_NONE) {
    fail_client(p, 400, "invalid_request_error", "missing_required_parameter", "model",
                "You must provide a model parameter.");
    return -1;
  }
  if (f[F_MODEL].type != LLMUX_JSON_STRING ||
      llmux_json_unquote(f[F_MODEL].value, p->model_name, sizeof p->model_name) != 0 ||
      p->model_name[0] == '\0') {
    fail_client(p, 400, "invalid_request_error", "invalid_type", "model",
                "'model' must be a non-empty string of at most %zu bytes.",
                sizeof p->model_name - 1);
    return -1;
  }
  if (f[F_STREAM].type != LLMUX_JSON_NONE && f[F_STREAM].type != LLMUX_JSON_TRUE &&
      f[F_STREAM].type != LLMUX_JSON_FALSE && f[F_STREAM].type != LLMUX_JSON_NULL) {
    fail_client(p, 400, "invalid_request_error", "invalid_type", "stream",
                "'stream' must be a boolean.");
    return -1;
  }
  if (p->endpoint == LLMUX_ENDPOINT_CHAT && f[F_MESSAGES].type != LLMUX_JSON_ARRAY) {
    fail_client(p, 400, "invalid_request_error",
                f[F_MESSAGES].type == LLMUX_JSON_NONE ? "missing_required_parameter"
                                                      : "invalid_type",
                "messages", "'messages' must be an array of message objects.");
    return -1;
  }
  if (p->endpoint == LLMUX_ENDPOINT_COMPLETIONS && f[F_PROMPT].type == LLMUX_JSON_NONE) {
    fail_client(p, 400, "invalid_request_error", "missing_required_parameter", "prompt",
                "You must provide a prompt parameter.");
    return -1;
  }
  if (p->endpoint == LLMUX_ENDPOINT_EMBEDDINGS && f[F_INPUT].type != LLMUX_JSON_STRING &&
      f[F_INPUT].type != LLMUX_JSON_ARRAY) {
    fail_client(p, 400, "invalid_request_error",
                f[F_INPUT].type == LLMUX_JSON_NONE ? "missing_required_parameter"
                                                   : "invalid_type",
                "input", "'input' must be a string or an array.");
    return -1;
  }
  return 0;
}

/* Does a response_format object ask for JSON? Its "type" as the provider
 * reads it: unescaped, and a repeated "type" counts as asking. */
static int wants_json(llmux_str_t format) {
  llmux_json_field_t f[] = {{"type"}};
  char type[16];
  if (llmux_json_scan(format.base, format.len, f, 1, NULL, NULL) != 0)
    return llmux_json_duplicate(f, 1) != NULL;
  return f[0].type == LLMUX_JSON_STRING &&
         llmux_json_unquote(f[0].value, type, sizeof type) == 0 &&
         (strcmp(type, "json_object") == 0 || strcmp(type, "json_schema") == 0);
}

/* What the request needs from a model, for the router's capability filter. */
static unsigned needed_caps(const proxy_t *p, const llmux_json_field_t *f, int images) {
  unsigned caps = 0;
  if (p->endpoint == LLMUX_ENDPOINT_EMBEDDINGS) return LLMUX_CAP_EMBEDDINGS;
  if (f[F_TOOLS].type == LLMUX_JSON_ARRAY && f[F_TOOLS].value.len > 2) caps |= LLMUX_CAP_TOOLS;
  if (images && f[F_MESSAGES].type == LLMUX_JSON_ARRAY) caps |= LLMUX_CAP_VISION;
  if (f[F_FORMAT].type == LLMUX_JSON_OBJECT && wants_json(f[F_FORMAT].value))
    caps |= LLMUX_CAP_JSON;
  return caps;
}

/* The request's "n" when it may fan out (gateway/fanout.h): a whole number,
 * on chat or completions as the client sent them (an inbound format or
 * ARES's endpoint has none to honour). Anything else is the provider's. */
static void read_n(proxy_t *p, const llmux_json_field_t *f) {
  llmux_str_t v = f[F_N].value;
  unsigned n = 0;
  size_t i;
  if (f[F_N].type != LLMUX_JSON_NUMBER || p->agent || p->in != NULL ||
      p->endpoint == LLMUX_ENDPOINT_EMBEDDINGS)
    return;
  for (i = 0; i < v.len && v.base[i] >= '0' && v.base[i] <= '9' && n < 100000; i++)
    n = n * 10 + (unsigned)(v.base[i] - '0');
  if (i != v.len) return;
  p->n = n;
  p->n_value = v;
}

/* Token estimates for rate limits and the context-window filter, from the
 * one scan validation already made (the estimator is ratelimit's). */
static void estimate_tokens(proxy_t *p, const llmux_json_field_t *f) {
  const llmux_json_field_t *parts[LLMUX_RL_EST_NPARTS] = {&f[F_MESSAGES], &f[F_PROMPT],
                                                          &f[F_INPUT], &f[F_TOOLS]};
  p->prompt_tokens = llmux_rl_estimate_parts(parts);
  if (llmux_rl_max_tokens_parts(&f[F_MAX_COMPLETION], &f[F_MAX_TOKENS], &p->max_tokens) != 0)
    p->max_tokens = 0;
}

/* The caller's say in routing: the x-llmux-provider header, else the body's
 * `provider` object (llmux's own: ignored on ARES's endpoint and inbound
 * formats, whose bodies llmux wrote). A tenant with
 * allow_routing_overrides = false may not steer. */
static int read_steering(proxy_t *p, const llmux_json_field_t *f) {
  const llmux_str_t *h = llmux_http_header(p->client, "x-llmux-provider");
  const llmux_config_t *cfg = p->gen->cfg;
  const char *param = NULL;
  char msg[256];
  int rc = 0;
  int body = f[F_PROVIDER].type != LLMUX_JSON_NONE && f[F_PROVIDER].type != LLMUX_JSON_NULL &&
             !p->agent && p->in == NULL;
  if (p->steer == NULL) {
    if (h == NULL && !body) return 0; /* nothing steers: as an initialised, inactive one */
    if ((p->steer = malloc(sizeof *p->steer)) == NULL) {
      fail_client(p, 503, "server_error", "out_of_memory", NULL, "Out of memory.");
      return -1;
    }
    llmux_steer_init(p->steer);
  }
  if (!p->steer->active) llmux_steer_init(p->steer); /* else: read before the strip */
  if (h != NULL) {
    param = "x-llmux-provider";
    rc = llmux_steer_header(cfg, *h, p->steer, msg, sizeof msg);
  } else if (body) {
    rc = llmux_steer_parse(cfg, f[F_PROVIDER].value, p->steer, &param, msg, sizeof msg);
  }
  if (rc != 0) {
    fail_client(p, 400, "invalid_request_error", "invalid_value", param, "%s", msg);
    return -1;
  }
  if (p->steer->active && p->tenant && !p->tenant->conf->allow_routing_overrides) {
    fail_client(p, 403, "permission_error", "routing_override_not_allowed", param,
                "Tenant '%s' may not choose providers (allow_routing_overrides = false).",
                p->tenant->conf->name);
    return -1;
  }
  return 0;
}

static const char *back_ws(const char *c, const char *start) {
  while (c > start && (c[-1] == ' ' || c[-1] == '\t' || c[-1] == '\n' || c[-1] == '\r')) c--;
  return c;
}

/* The opening quote of the key of the top-level member whose value is `v`
 * (inside b). The body is valid JSON and the key unescapes to a word
 * without quotes (`provider`, `models`), so it is the second quote before
 * the colon. */
static char *key_start(llmux_buf_t *b, llmux_str_t v) {
  char *start = b->base, *from = (char *)back_ws(v.base, start);
  assert(from > start && from[-1] == ':');
  from = (char *)back_ws(from - 1, start) - 1;          /* the key's closing quote */
  while (from > start && from[-1] != '"') from--;
  return from - 1;                                       /* its opening quote */
}

/* Removes that member and one comma beside it: `provider` and `models` are
 * llmux's, and providers refuse what they do not know. */
static void strip_member(llmux_buf_t *b, llmux_str_t v) {
  char *start = b->base, *end = b->base + b->len;
  char *from = key_start(b, v), *to = (char *)v.base + v.len;
  while (to < end && (*to == ' ' || *to == '\t' || *to == '\n' || *to == '\r')) to++;
  if (to < end && *to == ',') to++;                      /* "k": v, next */
  else if (back_ws(from, start)[-1] == ',') from = (char *)back_ws(from, start) - 1;
  memmove(from, to, (size_t)(end - to));
  b->len -= (size_t)(to - from);
}

/* The end of the JSON string whose opening quote is at `c`. */
static const char *string_end(const char *c, const char *e) {
  for (c++; c < e && *c != '"'; c++)
    if (*c == '\\') c++;
  return c < e ? c + 1 : e;
}

/* Body `models`: a list of names to try in turn. With `model`, they follow
 * it and the member goes; without, the member becomes `"model": FIRST` in
 * place (shorter than `"models": [FIRST]`, so it fits) and the rest follow.
 * The body is valid JSON. */
static int read_models(proxy_t *p, llmux_str_t v) {
  const char *c = v.base, *e = v.base + v.len, *first = NULL, *first_end = NULL;
  int has_model = p->model_name[0] != '\0';
  size_t n = 0;
  char name[256];
  if (v.len < 2 || v.base[0] != '[') goto bad;
  for (c++; c < e && *c != ']'; n++) {
    const char *end;
    while (c < e && (*c == ' ' || *c == '\t' || *c == '\n' || *c == '\r' || *c == ',')) c++;
    if (c < e && *c == ']') break;
    if (c == e || *c != '"') goto bad;
    end = string_end(c, e);
    if (llmux_json_unquote((llmux_str_t){c, (size_t)(end - c)}, name, sizeof name) != 0 ||
        name[0] == '\0')
      goto bad;
    if (n == 0 && !has_model) {
      first = c;
      first_end = end;
    } else if (p->nfallbacks == MAX_FALLBACKS) {
      goto bad;
    } else {
      if (p->fb == NULL && (p->fb = malloc(sizeof *p->fb)) == NULL) {
        fail_client(p, 503, "server_error", "out_of_memory", NULL, "Out of memory.");
        return -1;
      }
      memcpy(p->fb->names[p->nfallbacks++], name, sizeof name);
    }
    c = end;
    while (c < e && (*c == ' ' || *c == '\t' || *c == '\n' || *c == '\r' || *c == ',')) c++;
  }
  if (n == 0 && !has_model) goto bad;
  if (first != NULL) {
    char *k = key_start(&p->body, v), *to = (char *)v.base + v.len;
    size_t flen = (size_t)(first_end - first);
    memcpy(k, "\"model\":", 8);
    memmove(k + 8, first, flen);
    memmove(k + 8 + flen, to, (size_t)(p->body.base + p->body.len - to));
    p->body.len -= (size_t)(to - (k + 8 + flen));
  } else {
    strip_member(&p->body, v);
  }
  return 0;

bad:
  fail_client(p, 400, "invalid_request_error", "invalid_value", "models",
              "'models' must be a non-empty array of at most %d model names%s.",
              MAX_FALLBACKS + !has_model, has_model ? " (tried after 'model')" : "");
  return -1;
}

static int validate(proxy_t *p) {
  int images = 0;
  llmux_json_field_t f[F_COUNT];
  const llmux_json_field_t *dup;
  size_t off = 0, i;
  const char *why = NULL;
  if (p->body.len == 0) {
    fail_client(p, 400, "invalid_request_error", "invalid_json", NULL,
                "The request has no body: send a JSON object with at least 'model'.");
    return -1;
  }
  for (i = 0; i < F_COUNT; i++) f[i].key = body_keys[i];
  if (llmux_json_scan_probe(p->body.base, p->body.len, f, F_COUNT, "image_url", &images, &off,
                            &why) != 0) {
    if ((dup = llmux_json_duplicate(f, F_COUNT)) != NULL)
      fail_client(p, 400, "invalid_request_error", "duplicate_key", dup->key,
                  "'%s' appears more than once in the body (the second at byte %zu); "
                  "send it once.", dup->key, off);
    else
      fail_client(p, 400, "invalid_request_error", "invalid_json", NULL,
                  "We could not parse the JSON body of your request: %s at byte %zu.", why,
                  off);
    return -1;
  }
  if (f[F_MODELS].type != LLMUX_JSON_NONE && !p->agent && p->in == NULL) {
    if (f[F_MODEL].type == LLMUX_JSON_STRING)
      llmux_json_unquote(f[F_MODEL].value, p->model_name, sizeof p->model_name);
    if (read_models(p, f[F_MODELS].value) != 0) return -1;
    p->model_name[0] = '\0';
    return validate(p); /* the fields moved: read them again, once */
  }
  if (validate_fields(p, f) != 0) return -1;
  if (read_steering(p, f) != 0) return -1;
  if (f[F_PROVIDER].type != LLMUX_JSON_NONE && !p->agent && p->in == NULL) {
    strip_member(&p->body, f[F_PROVIDER].value);
    return validate(p); /* the fields moved: read them again, once */
  }
  p->stream = f[F_STREAM].type == LLMUX_JSON_TRUE;
  p->model_value = f[F_MODEL].value;
  assert(strcmp(body_keys[F_TEMPERATURE], "temperature") == 0 &&
         strcmp(body_keys[F_SEED], "seed") == 0);
  p->deterministic = deterministic(f);
  p->caps = needed_caps(p, f, images);
  read_n(p, f);
  estimate_tokens(p, f);
  return 0;
}

/* Is a provider's 200 answer a JSON object at all? Its first and last
 * non-blank bytes are braces: that catches garbage and truncated bodies
 * (what a broken provider sends) at no cost, where a full validation of
 * every answer cost a tenth of the proxy's time; the client's JSON parser
 * has the last word on the rest. */
static int looks_like_object(const llmux_buf_t *b) {
  const char *s = b->base, *e = b->base + b->len;
  if (b->len < 2) return 0;
  while (s < e && (*s == ' ' || *s == '\n' || *s == '\r' || *s == '\t')) s++;
  while (e > s && (e[-1] == ' ' || e[-1] == '\n' || e[-1] == '\r' || e[-1] == '\t')) e--;
  return e - s >= 2 && s[0] == '{' && e[-1] == '}';
}

/* ---- streaming to the client -------------------------------------------- */

/* Stream events are gathered in `pending` and written once per upstream
 * read (flush_pending), not once per event: a read often carries dozens. */
static int emit_to_client(void *owner, const char *data, size_t len) {
  proxy_t *p = owner;
  if (p->client == NULL) return LLMUX_ECANCELED;
  if (!p->stream) return llmux_buf_append(&p->out, data, len);
  p->rec.output_chunks++;
  if (p->agent) /* ARES events out of the provider's OpenAI events */
    return llmux_agent_stream_feed(&p->astream, data, len, &p->pending);
  if (p->in != NULL) { /* the client's events out of the provider's chat events */
    llmux_inbound_ctx_t ctx = {p->rid, p->prompt_tokens};
    return p->in->stream_feed(p->in_state, &ctx, data, len, &p->pending);
  }
  return llmux_buf_append(&p->pending, data, len);
}

static void flush_pending(proxy_t *p) {
  int queued;
  if (p->pending.len == 0 || p->client == NULL || !p->started) return;
  if (p->rec.ttft_ns == 0) p->rec.ttft_ns = (llmux_now_us() - p->t_start) * 1000u;
  queued = llmux_http_write_buf(p->client, &p->pending);
  if (queued < 0) {
    p->emit_failed = 1;
    return;
  }
  if ((size_t)queued > CLIENT_HIGH_WATER && p->up_running) llmux_upstream_pause(&p->up);
}

static void on_up_read_end(llmux_upstream_req_t *up) {
  flush_pending(up->data);
}

/* The content-type of our answer: a native one's is the provider's (when
 * it is a plain header value), else `dflt`. */
static const char *answer_ctype(proxy_t *p, const char *dflt) {
  const llmux_str_t *v;
  size_t i;
  if (!p->native) return dflt;
  v = llmux_host_api()->header_get(p->ht.txn.resp_headers, p->ht.txn.nresp_headers, "content-type");
  if (v == NULL || v->len == 0 || v->len >= sizeof p->native_ctype) return dflt;
  for (i = 0; i < v->len; i++)
    if ((unsigned char)v->base[i] < 0x20 || (unsigned char)v->base[i] >= 0x7f) return dflt;
  memcpy(p->native_ctype, v->base, v->len);
  p->native_ctype[v->len] = '\0';
  return p->native_ctype;
}

static size_t cache_header(const proxy_t *p, llmux_http_header_t *h, const char *v);

static void start_stream(proxy_t *p) {
  llmux_http_header_t h[12];
  char num[48];
  size_t n = our_headers(p, h, answer_ctype(p, "text/event-stream"), num);
  n += cache_header(p, h + n, NULL);
  h[n++] = (llmux_http_header_t){{"Cache-Control", 13}, {"no-cache", 8}};
  p->rec.status = 200;
  llmux_http_start(p->client, 200, h, n);
  p->started = 1;
}

/* The stream broke after the client got our head: say so in-band, as an
 * SSE event in OpenAI's error shape (of `type`), and end the stream. */
static void end_stream_as(proxy_t *p, const char *type, const char *code, const char *msg) {
  llmux_buf_t ev = {0};
  p->rec.error_code = code;
  flush_pending(p);
  if (p->in != NULL) {
    p->in->stream_error(p->in_state, type, code, msg, &ev);
    llmux_http_write_buf(p->client, &ev);
    llmux_buf_free(&ev);
    llmux_http_end(p->client);
    proxy_finish(p);
    return;
  }
  llmux_buf_appends(&ev, "data: ");
  if (p->agent) {
    llmux_buf_appends(&ev, "{\"type\":\"error\",\"error\":");
    llmux_buf_append_json_str(&ev, msg, strlen(msg));
    llmux_buf_appends(&ev, ",\"code\":\"UPSTREAM_UNAVAILABLE\"}");
  } else {
    llmux_http_error_json(&ev, type, code, msg, NULL);
  }
  llmux_buf_appends(&ev, "\n\n");
  llmux_http_write_buf(p->client, &ev);
  llmux_buf_free(&ev);
  llmux_http_end(p->client);
  proxy_finish(p);
}

static void end_stream_with_error(proxy_t *p, const char *code, const char *msg) {
  end_stream_as(p, "upstream_error", code, msg);
}

/* The most tokens one answer is believed to use. */
#define USAGE_MAX_TOKENS 1000000000

/* The usage the plugin set, which is its provider's word: a count above
 * USAGE_MAX_TOKENS, or below -1 (the ABI's "unknown"), is made unknown so
 * the estimate stands in, and logged, once (the fix is kept), whatever a
 * third-party plugin checked. Read only through here. */
static llmux_usage_t plugin_usage(proxy_t *p) {
  llmux_usage_t *u = &p->ht.txn.usage;
  int bad_in = u->prompt_tokens < -1 || u->prompt_tokens > USAGE_MAX_TOKENS;
  int bad_out = u->completion_tokens < -1 || u->completion_tokens > USAGE_MAX_TOKENS;
  if (bad_in || bad_out) {
    llmux_warn("%s: provider '%s' reported usage of %lld prompt and %lld completion tokens: "
               "not believed, counted as unknown", p->rid,
               p->route ? p->route->provider->name : "?", (long long)u->prompt_tokens,
               (long long)u->completion_tokens);
    if (bad_in) u->prompt_tokens = -1;
    if (bad_out) u->completion_tokens = -1;
  }
  return *u;
}

/* Tokens to commit to the rate limiter: the answer's, else the reservation. */
static uint64_t answer_tokens(proxy_t *p) {
  llmux_usage_t u = plugin_usage(p);
  return u.prompt_tokens >= 0 && u.completion_tokens >= 0
             ? (uint64_t)(u.prompt_tokens + u.completion_tokens)
             : p->resv_tokens;
}

/* The answer's usage, into the record and per tenant and model; input
 * falls back on the estimate when the provider did not say (a stream
 * without stream_options.include_usage), output is unknown then. */
static void account(proxy_t *p) {
  const llmux_model_conf_t *m = p->route ? p->route->model : NULL;
  llmux_usage_t u;
  uint64_t in, out;
  double cost;
  int day;
  if (m == NULL) return;
  u = plugin_usage(p);
  in = u.prompt_tokens >= 0 ? (uint64_t)u.prompt_tokens : p->prompt_tokens;
  out = u.completion_tokens >= 0 ? (uint64_t)u.completion_tokens : 0;
  /* The route's prices: its own, else the model's (registry.c). */
  cost = ((double)in * p->route->price_in + (double)out * p->route->price_out) / 1e6;
  p->rec.prompt_tokens = (int64_t)in;
  p->rec.completion_tokens = u.completion_tokens >= 0 ? u.completion_tokens : -1;
  p->rec.cost_usd = p->route->has_price ? cost : -1;
  if (p->tenant == NULL) return;
  p->tenant_tokens = in + out;
  day = llmux_usage_today();
  llmux_usage_add(p->gw->usage, p->tenant->conf->name, m->id, day, in, out, cost);
  if (p->gw->fleet_usage)
    llmux_fleet_usage_count(p->gw, p->tenant->conf->name, m->id, day, in, out, cost);
}

static llmux_agent_info_t agent_info(const proxy_t *p) {
  llmux_agent_info_t i;
  i.agent_type = p->areq.agent->name;
  i.tier = p->areq.profile->name;
  i.model = p->route->model->id;
  i.provider = p->route->provider->name;
  return i;
}

/* ARES's answer from the buffered OpenAI one; 0, or the client got a 502. */
static int agent_answer(proxy_t *p) {
  llmux_agent_info_t info = agent_info(p);
  llmux_buf_t a = {0};
  if (llmux_agent_answer(p->out.base, p->out.len, &info, &a) != 0) {
    llmux_buf_free(&a);
    respond_error(p, 502, "upstream_error", "UPSTREAM_UNAVAILABLE", NULL,
                  "The provider's answer has no message.", 0, 0);
    proxy_finish(p);
    return -1;
  }
  llmux_buf_free(&p->out);
  p->out = a;
  return 0;
}

/* The client's answer from the buffered chat one; 0, or the client got a 502. */
static int inbound_answer(proxy_t *p) {
  llmux_inbound_ctx_t ctx = {p->rid, p->prompt_tokens};
  llmux_buf_t a = {0};
  int rc = p->in->answer(p->in_state, &ctx, p->out.base, p->out.len, &a);
  if (rc != 0) {
    llmux_buf_free(&a);
    respond_error(p, rc == LLMUX_ENOMEM ? 500 : 502, "upstream_error",
                  rc == LLMUX_ENOMEM ? "out_of_memory" : "upstream_garbage", NULL,
                  rc == LLMUX_ENOMEM ? "Out of memory."
                                     : "The provider's answer could not be translated.",
                  0, 0);
    proxy_finish(p);
    return -1;
  }
  llmux_buf_free(&p->out);
  p->out = a;
  return 0;
}

/* May the model the plugin says answered go into a header? The provider's
 * words: printable ASCII without spaces, at most 256 bytes, else not told. */
static int served_model_ok(const llmux_buf_t *m) {
  size_t i;
  if (m->len == 0 || m->len > 256) return 0;
  for (i = 0; i < m->len; i++)
    if ((unsigned char)m->base[i] <= 0x20 || (unsigned char)m->base[i] >= 0x7f) return 0;
  return 1;
}

/* ---- the response cache (issue 17; gateway/cache.h) --------------------- *
 *
 * One lookup, after the tenant's admission (a hit counts against its
 * requests_per_minute, never against a provider's limits, and is charged
 * no tokens), and one store, of a non-stream chat answer in finish_ok.
 * Chat completions only, not the agent endpoint or inbound formats. With
 * cache = redis a miss in memory waits for Redis (cache_wait) before it
 * routes. */

enum {
  CACHE_NONE,    /* not cacheable: no header */
  CACHE_STORE,   /* a miss: keep the answer */
  CACHE_NOSTORE  /* a miss or bypass the client asked not to keep */
};

static void cache_count(proxy_t *p, const char *result) {
  llmux_series_add(llmux_metric_series3(p->gw->obs.cache, result, NULL, NULL), 1);
}

/* x-llmux-cache on every answer of a cacheable request. */
static size_t cache_header(const proxy_t *p, llmux_http_header_t *h, const char *v) {
  if (v == NULL && p->cache_state == CACHE_NONE) return 0;
  if (v == NULL) v = "miss";
  *h = (llmux_http_header_t){{"x-llmux-cache", 13}, {v, strlen(v)}};
  return 1;
}

static int header_has(const proxy_t *p, const char *name, const char *word) {
  const llmux_str_t *v = llmux_http_header(p->client, name);
  size_t n = strlen(word), i;
  if (v == NULL) return 0;
  for (i = 0; i + n <= v->len; i++)
    if (strncasecmp(v->base + i, word, n) == 0) return 1;
  return 0;
}

/* The stored answer, in the request's own shape; the client is finished. */
static void cache_hit(proxy_t *p, const llmux_cache_answer_t *a) {
  llmux_http_header_t h[12];
  llmux_buf_t b = {0};
  char num[48];
  int64_t in = a->prompt_tokens, out = a->completion_tokens;
  size_t n;
  const char *model = p->res.model->id;
  p->rec.prompt_tokens = in >= 0 ? in : 0;
  p->rec.completion_tokens = out;
  p->rec.cost_usd = 0;
  p->rec.status = 200;
  if (p->tenant)
    llmux_cache_count_hit(p->gw->resp_cache, p->tenant->conf->name, in > 0 ? (uint64_t)in : 0,
                          out > 0 ? (uint64_t)out : 0);
  cache_count(p, "hit");
  n = our_headers(p, h, p->stream ? "text/event-stream" : "application/json", num);
  n += cache_header(p, h + n, "hit");
  h[n++] = (llmux_http_header_t){{"x-llmux-model", 13}, {model, strlen(model)}};
  llmux_buf_append(&b, a->data, a->len);
  if (!p->stream) {
    llmux_http_respond_buf(p->client, 200, h, n, &b);
    proxy_finish(p);
    return;
  }
  h[n++] = (llmux_http_header_t){{"Cache-Control", 13}, {"no-cache", 8}};
  p->rec.output_chunks++;
  llmux_http_start(p->client, 200, h, n);
  llmux_http_write_buf(p->client, &b);
  llmux_buf_free(&b);
  llmux_http_end(p->client);
  proxy_finish(p);
}

static void route_request(proxy_t *p);

/* Redis's answer (cache = redis): a hit is kept in memory too, then served
 * from there (a stream's rendition is made once); a miss routes. */
static void on_cache_remote(void *arg, const llmux_cache_answer_t *a) {
  cache_wait_t *w = arg;
  proxy_t *p = w->p;
  llmux_cache_answer_t m;
  free(w);
  if (p == NULL) return;
  p->cache_wait = NULL;
  if (a != NULL &&
      llmux_cache_put(p->gw->resp_cache, &p->cache_key, a->data, a->len, a->prompt_tokens,
                      a->completion_tokens, now_ms(p)) == 0 &&
      llmux_cache_get(p->gw->resp_cache, &p->cache_key, now_ms(p), p->stream, &m)) {
    cache_hit(p, &m);
    return;
  }
  cache_count(p, "miss");
  route_request(p);
}

/* 1: answered from the cache (p is gone), or waiting for Redis; 0: go on,
 * p->cache_state set. */
static int cache_lookup(proxy_t *p) {
  llmux_cache_answer_t a;
  if (p->gw->resp_cache == NULL || p->endpoint != LLMUX_ENDPOINT_CHAT || p->agent ||
      p->in != NULL || p->res.model == NULL)
    return 0;
  if (!p->deterministic && !header_has(p, "x-llmux-cache", "force")) return 0;
  if (llmux_cache_key(p->tenant ? p->tenant->conf->name : NULL, p->res.model->id, p->body.base,
                      p->body.len, &p->cache_key) != 0)
    return 0;
  p->cache_state = header_has(p, "cache-control", "no-store") ? CACHE_NOSTORE : CACHE_STORE;
  if (header_has(p, "cache-control", "no-cache")) {
    cache_count(p, "bypass");
    return 0;
  }
  if (!llmux_cache_get(p->gw->resp_cache, &p->cache_key, now_ms(p), p->stream, &a)) {
    cache_wait_t *w = p->gw->fleet_cache ? malloc(sizeof *w) : NULL;
    if (w != NULL) {
      w->p = p;
      if (llmux_fleet_cache_get(p->gw, &p->cache_key, on_cache_remote, w) == 0) {
        p->cache_wait = w;
        return 1;
      }
      free(w);
    }
    cache_count(p, "miss");
    return 0;
  }
  cache_hit(p, &a);
  return 1;
}

/* A non-stream chat answer the provider gave, as it gave it. */
static void cache_store(proxy_t *p) {
  if (p->cache_state != CACHE_STORE || p->stream || p->agent || p->in != NULL || p->native)
    return;
  /* Usage as account() read it (the provider's word, checked), just before. */
  llmux_usage_t u = plugin_usage(p);
  if (llmux_cache_put(p->gw->resp_cache, &p->cache_key, p->out.base, p->out.len, u.prompt_tokens,
                      u.completion_tokens, now_ms(p)) == 0)
    cache_count(p, "store");
  if (p->gw->fleet_cache)
    llmux_fleet_cache_put(p->gw, &p->cache_key, p->out.base, p->out.len, u.prompt_tokens,
                          u.completion_tokens);
}

static void finish_ok(proxy_t *p) {
  llmux_http_header_t h[12];
  char num[48];
  size_t n;
  account(p);
  if (p->stream) {
    flush_pending(p);
    if (p->agent) {
      llmux_agent_info_t info = agent_info(p);
      llmux_buf_t ev = {0};
      if (llmux_agent_stream_end(&p->astream, &info, &ev) == 0) llmux_http_write_buf(p->client, &ev);
      llmux_buf_free(&ev);
    }
    if (p->in != NULL && !p->native) {
      llmux_inbound_ctx_t ctx = {p->rid, p->prompt_tokens};
      llmux_buf_t ev = {0};
      if (p->in->stream_end(p->in_state, &ctx, &ev) == 0) llmux_http_write_buf(p->client, &ev);
      llmux_buf_free(&ev);
    }
    llmux_http_end(p->client);
    proxy_finish(p);
    return;
  }
  cache_store(p);
  if (p->agent && agent_answer(p) != 0) return;
  if (p->in != NULL && !p->native && inbound_answer(p) != 0) return;
  n = our_headers(p, h, answer_ctype(p, "application/json"), num);
  n += cache_header(p, h + n, NULL);
  if (served_model_ok(&p->ht.txn.served_model))
    h[n++] = (llmux_http_header_t){{"x-llmux-served-model", 20},
                                   {p->ht.txn.served_model.base, p->ht.txn.served_model.len}};
  p->rec.status = 200;
  llmux_http_respond_buf(p->client, 200, h, n, &p->out);
  proxy_finish(p);
}

/* With shared limits, the answer ends once Redis has this request's
 * reservation (rl_shared.h, Settling): then a client's next request, to any
 * process, is decided on counts that include this one. */
static void on_settled(llmux_rl_settle_t *w) {
  proxy_t *p = w->data;
  p->settling = 0;
  finish_ok(p);
}

static void finish_settled(proxy_t *p) {
  if (p->gw->shared && !llmux_rl_shared_settled(p->gw->rl, p->rl_mark)) {
    p->settling = 1;
    p->settle.data = p;
    llmux_rl_shared_settle(p->gw->rl, p->rl_mark, &p->settle, on_settled);
    return;
  }
  finish_ok(p);
}

/* ---- the record ---------------------------------------------------------- */

static void attempt_end(proxy_t *p, llmux_attempt_outcome_t outcome) {
  llmux_reqlog_attempt_end(p->gw, &p->rec, outcome, p->ht.txn.status);
}

/* A failure before any answer, as an attempt's outcome. */
static llmux_attempt_outcome_t net_outcome(int err) {
  if (err == LLMUX_ETIMEOUT) return LLMUX_ATTEMPT_TIMEOUT;
  if (err == LLMUX_EPROTO) return LLMUX_ATTEMPT_GARBAGE;
  if (err == LLMUX_ECANCELED) return LLMUX_ATTEMPT_CANCELLED;
  return LLMUX_ATTEMPT_CONNECT_ERROR;
}

/* The plugin's class of an error answer, as an attempt's outcome. */
static llmux_attempt_outcome_t class_outcome(llmux_fail_class_t c, int status) {
  switch (c) {
    case LLMUX_FAIL_RATE_LIMITED:
    case LLMUX_FAIL_QUOTA: return LLMUX_ATTEMPT_RATE_LIMITED;
    case LLMUX_FAIL_OVERLOADED:
    case LLMUX_FAIL_SERVER: return LLMUX_ATTEMPT_SERVER_ERROR;
    case LLMUX_FAIL_TIMEOUT: return LLMUX_ATTEMPT_TIMEOUT;
    case LLMUX_FAIL_AUTH: return LLMUX_ATTEMPT_AUTH_ERROR;
    case LLMUX_FAIL_MODEL_NOT_FOUND: return LLMUX_ATTEMPT_MODEL_NOT_FOUND;
    case LLMUX_FAIL_CONTEXT_LENGTH: return LLMUX_ATTEMPT_CONTEXT_LENGTH;
    case LLMUX_FAIL_UPSTREAM_GARBAGE: return LLMUX_ATTEMPT_GARBAGE;
    case LLMUX_FAIL_BAD_REQUEST:
    case LLMUX_FAIL_CONTENT_FILTER: return LLMUX_ATTEMPT_CLIENT_ERROR;
    default: return status >= 500 ? LLMUX_ATTEMPT_SERVER_ERROR : LLMUX_ATTEMPT_CLIENT_ERROR;
  }
}

static const char *operation_of(int endpoint) {
  return endpoint == LLMUX_ENDPOINT_EMBEDDINGS    ? "embeddings"
         : endpoint == LLMUX_ENDPOINT_COMPLETIONS ? "text_completion"
                                                  : "chat";
}

/* The request ends: what is known last goes in, and the record is done
 * (an attempt still open, cut by the client or a drain, ends cancelled). */
static void record_end(proxy_t *p) {
  llmux_buf_t *served = &p->ht.txn.served_model;
  if (p->rec.status == 0) p->rec.status = 499; /* none went out: nginx's "client closed" */
  if (p->rec.overhead_us == 0) p->rec.overhead_us = overhead_us(p);
  if (served_model_ok(served) && llmux_buf_reserve(served, 1) == 0) {
    served->base[served->len] = '\0';
    p->rec.response_model = served->base;
  } else {
    p->rec.response_model = p->rec.provider_model;
  }
  llmux_reqlog_done(p->gw, &p->rec);
}

/* The 404 for a model the caller cannot use (respond.h). */
static void model_not_found(proxy_t *p) {
  if (p->in != NULL) { /* the same words (tenant or not), in the client's shape */
    char msg[320];
    snprintf(msg, sizeof msg, "The model `%.200s` does not exist or you do not have access "
             "to it.", p->model_name);
    respond_error(p, 404, "invalid_request_error", "model_not_found", "model", msg, 0, 0);
    proxy_finish(p);
    return;
  }
  p->rec.status = 404;
  p->rec.error_code = "model_not_found";
  p->rec.overhead_us = overhead_us(p);
  llmux_respond_model_not_found(p->client, p->gen->cfg, p->tenant, p->model_name);
  proxy_finish(p);
}

/* The record the caller began becomes the proxy's (with its request id),
 * else the proxy begins one. */
static void take_record(proxy_t *p, llmux_http_req_t *req, const llmux_proxy_opts_t *opts) {
  if (opts->rec != NULL) {
    p->rec = *opts->rec;
    size_t n = strlen(opts->rec->request_id);
    if (n >= sizeof p->rid) n = sizeof p->rid - 1;
    memcpy(p->rid, opts->rec->request_id, n);
    p->rid[n] = '\0';
  } else {
    llmux_respond_request_id(p->gw, req, p->rid);
    llmux_reqlog_begin(p->gw, &p->rec, req, p->rid);
    p->rec.endpoint = p->agent ? "agent"
                      : p->endpoint == LLMUX_ENDPOINT_EMBEDDINGS  ? "embeddings"
                      : p->endpoint == LLMUX_ENDPOINT_COMPLETIONS ? "completions"
                                                                  : "chat";
  }
  p->rec.request_id = p->rid;
  p->rec.operation = operation_of(p->endpoint);
  if (p->tenant != NULL) {
    p->rec.tenant = p->tenant->conf->name;
    p->rec.tenant_series = p->tenant->data;
  }
}

/* ---- failures ------------------------------------------------------------ */

static const char *code_for(llmux_fail_class_t c) {
  switch (c) {
    case LLMUX_FAIL_RATE_LIMITED: return "RATE_LIMIT_EXCEEDED";
    case LLMUX_FAIL_QUOTA: return "insufficient_quota";
    case LLMUX_FAIL_OVERLOADED: return "provider_overloaded";
    case LLMUX_FAIL_SERVER: return "upstream_error";
    case LLMUX_FAIL_TIMEOUT: return "upstream_timeout";
    case LLMUX_FAIL_AUTH: return "upstream_auth_failed";
    case LLMUX_FAIL_BAD_REQUEST: return "invalid_request";
    case LLMUX_FAIL_CONTEXT_LENGTH: return "context_length_exceeded";
    case LLMUX_FAIL_MODEL_NOT_FOUND: return "model_not_found";
    case LLMUX_FAIL_CONTENT_FILTER: return "content_filter";
    case LLMUX_FAIL_UPSTREAM_GARBAGE: return "upstream_garbage";
    default: return "upstream_error";
  }
}

static int status_for(llmux_fail_class_t c, int upstream_status) {
  switch (c) {
    case LLMUX_FAIL_RATE_LIMITED:
    case LLMUX_FAIL_QUOTA: return 429;
    case LLMUX_FAIL_BAD_REQUEST:
    case LLMUX_FAIL_CONTEXT_LENGTH:
    case LLMUX_FAIL_CONTENT_FILTER:
      return upstream_status >= 400 && upstream_status < 500 ? upstream_status : 400;
    case LLMUX_FAIL_OVERLOADED: return 503;
    case LLMUX_FAIL_TIMEOUT: return 504;
    default: return 502;
  }
}

/* The route's last error in a few words (GET /admin/routes), after the
 * upstream status; NULL when the failure was the client's request. */
static const char *route_error_words(llmux_fail_class_t c) {
  switch (c) {
    case LLMUX_FAIL_RATE_LIMITED: return "rate limited";
    case LLMUX_FAIL_QUOTA: return "quota exhausted";
    case LLMUX_FAIL_OVERLOADED: return "overloaded";
    case LLMUX_FAIL_TIMEOUT: return "timed out";
    case LLMUX_FAIL_AUTH: return "key refused";
    case LLMUX_FAIL_MODEL_NOT_FOUND: return "model not found";
    case LLMUX_FAIL_UPSTREAM_GARBAGE: return "garbage";
    case LLMUX_FAIL_BAD_REQUEST:
    case LLMUX_FAIL_CONTEXT_LENGTH:
    case LLMUX_FAIL_CONTENT_FILTER: return NULL;
    default: return "server error";
  }
}

/* Remembers an attempt's failure: the last one decides the final answer,
 * and every one is listed in its message. `msg` is for the client;
 * `detail` (may be NULL) is for the log only and may name an address. */
static void record_failure(proxy_t *p, int status, const char *type, const char *code,
                           uint64_t retry_after_ms, const char *msg, const char *detail) {
  p->have_failure = 1;
  p->fail_status = status;
  p->fail_type = type;
  p->fail_code = code;
  p->fail_retry_after_ms = retry_after_ms;
  p->fail_msg.len = 0;
  p->fail_native.len = 0; /* a native body is kept by its caller, after this */
  llmux_buf_appends(&p->fail_msg, msg);
  llmux_buf_printf(&p->tried, "%s%s/%s: %s", p->tried.len ? "; " : "",
                   p->route->provider->name, p->route->id, msg);
  llmux_warn("%s: %s/%s failed: %s%s%s%s", p->rid, p->route->provider->name, p->route->id, msg,
             detail ? " (" : "", detail ? detail : "", detail ? ")" : "");
}

static void note_failure(proxy_t *p, int status, const char *type, const char *code,
                         uint64_t retry_after_ms, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static void note_failure(proxy_t *p, int status, const char *type, const char *code,
                         uint64_t retry_after_ms, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  record_failure(p, status, type, code, retry_after_ms, msg, NULL);
}

/* A failure before any answer. The client hears the route (provider and
 * model id) and the kind of failure (or the plugin's advice); the upstream
 * client's own words name the host and port, so they go to the log only. */
static void note_net_failure(proxy_t *p, int status, const char *type, const char *code,
                             const char *reason) {
  char msg[512];
  snprintf(msg, sizeof msg, "Provider '%s' (route %s/%s): %s", p->route->provider->name,
           p->route->provider->name, p->route->id, reason);
  record_failure(p, status, type, code, 0, msg, p->up.error[0] ? p->up.error : NULL);
}

static void note_skip(proxy_t *p, const llmux_route_conf_t *r, const char *why) {
  llmux_buf_printf(&p->skipped, "%s%s/%s (%s)", p->skipped.len ? ", " : "",
                   r->provider->name, r->id, why);
}

static uint64_t secs_up(uint64_t ms) {
  return ms == 0 ? 1 : (ms + 999) / 1000;
}

/* The last failure was a native provider's error answer: its body, in the
 * client's format already, goes as it is (with our status and headers). */
static void native_error(proxy_t *p) {
  llmux_http_header_t h[10];
  char num[48], ra[24];
  size_t n;
  uint64_t secs = p->fail_status == 429 ? secs_up(p->fail_retry_after_ms) : 0;
  p->rec.status = p->fail_status;
  p->rec.error_code = p->fail_code;
  n = our_headers(p, h, "application/json", num);
  if (secs > 0) {
    snprintf(ra, sizeof ra, "%llu", (unsigned long long)secs);
    h[n++] = (llmux_http_header_t){{"Retry-After", 11}, {ra, strlen(ra)}};
  }
  llmux_http_respond_buf(p->client, p->fail_status, h, n, &p->fail_native);
}

/* No candidate is left: the last failure, or why nothing could be tried. */
static void give_up(proxy_t *p) {
  llmux_buf_t msg = {0};
  if (p->have_failure && p->fail_native.len > 0) {
    native_error(p);
  } else if (p->have_failure) {
    int ares = p->fail_status == 429;
    llmux_buf_append(&msg, p->fail_msg.base, p->fail_msg.len);
    if (p->attempts > 1) llmux_buf_printf(&msg, " (tried: %s)", p->tried.base);
    if (p->skipped.len) llmux_buf_printf(&msg, " (skipped: %s)", p->skipped.base);
    respond_error(p, p->fail_status, p->fail_type, p->fail_code, NULL, msg.base,
                  ares ? secs_up(p->fail_retry_after_ms) : 0, ares);
  } else if (p->shared_down && p->rl_provider == NULL) {
    respond_error(p, 503, "upstream_error", "shared_state_unavailable", NULL,
                  "The gateway's shared state (Redis) is unreachable and shared_state_fail "
                  "= closed: no request is admitted until it is back.", 1, 0);
  } else if (p->rl_provider != NULL) {
    llmux_buf_printf(&msg, "Rate limit exceeded for provider '%s'", p->rl_provider);
    respond_error(p, 429, "rate_limit_error", "RATE_LIMIT_EXCEEDED", NULL, msg.base,
                  secs_up(p->rl_wait_ms), 1);
  } else if (p->ncooling > 0) {
    uint64_t wait = p->plan.retry_at_ms > now_ms(p) ? p->plan.retry_at_ms - now_ms(p) : 0;
    llmux_buf_printf(&msg, "Every route for model '%s' is cooling down after repeated "
                     "failures: %s.", p->model_name, p->skipped.base);
    respond_error(p, 503, "upstream_error", "all_routes_cooling_down", NULL, msg.base,
                  secs_up(wait), 0);
  } else if (p->n_refused != NULL) {
    if (p->gen->cfg->server.fan_out)
      llmux_buf_printf(&msg, "Provider '%s' does not support n > 1, and n = %u is more than "
                       "llmux fans out (at most %d requests).", p->n_refused, p->n,
                       LLMUX_FANOUT_MAX);
    else
      llmux_buf_printf(&msg, "Provider '%s' does not support n > 1, and [server] fan_out = "
                       "off: ask for one choice at a time.", p->n_refused);
    respond_error(p, 400, "invalid_request_error", "n_not_supported", "n", msg.base, 0, 0);
  } else if (llmux_unsupported_message(&p->plan, p->endpoint, p->model_name, &msg)) {
    /* No route of this model could ever take it: the client's 400. */
    respond_error(p, 400, "invalid_request_error", "model_not_supported", "model", msg.base, 0,
                  0);
  } else {
    llmux_buf_printf(&msg, "No provider can serve model '%s' now: %s.", p->model_name,
                     p->skipped.len ? p->skipped.base : "no route is configured for it");
    respond_error(p, 503, "upstream_error", "no_provider_available", "model", msg.base, 0, 0);
  }
  llmux_buf_free(&msg);
  proxy_finish(p);
}

static void on_backoff(uv_timer_t *t) {
  proxy_t *p = t->data;
  try_next(p);
}

/* After a failed attempt: the next candidate now, or, when this was the
 * last one and the failure looked transient, this route again after a
 * backoff with jitter. */
static void failover(proxy_t *p, int retry_same) {
  const llmux_server_conf_t *s = &p->gen->cfg->server;
  if (p->next >= p->plan.nroutes && retry_same && p->same_retries == 0 &&
      p->attempts < (s->max_attempts ? s->max_attempts : 1)) {
    uint64_t delay = llmux_backoff_ms(p->same_retries, s->retry_backoff_ms,
                                      s->retry_backoff_max_ms, llmux_rand_next(&p->gw->id_state));
    if (now_ms(p) + delay < p->deadline_ms) {
      p->same_retries++;
      p->next--;
      p->retry_next = 1;
      if (!p->timer_live) {
        uv_timer_init(p->gw->loop, &p->timer);
        p->timer_live = 1;
      }
      p->timer.data = p;
      p->elsewhere_us += delay * 1000;
      uv_timer_start(&p->timer, on_backoff, delay, 0);
      return;
    }
  }
  try_next(p);
}

/* ---- upstream callbacks --------------------------------------------------- */

static llmux_rl_key_t route_key(const llmux_route_conf_t *r) {
  llmux_rl_key_t k = {r->provider->name, LLMUX_ROUTE_LIMIT_ID(r)};
  return k;
}

/* The provider's headers (at most MAX_RESP_HEADERS), in one buffer: their
 * array first (malloc's alignment suits it), then their bytes. */
static void keep_headers(proxy_t *p, const llmux_str_t *hdrs, size_t n) {
  size_t i, total, off;
  llmux_header_t *h;
  if (n > MAX_RESP_HEADERS) n = MAX_RESP_HEADERS;
  off = total = n * sizeof(*h);
  for (i = 0; i < 2 * n; i++) total += hdrs[i].len;
  p->resp_hdr_store.len = 0;
  /* Sized to fit (they stay for the whole answer), not doubled up to it. */
  if (p->resp_hdr_store.cap < total + 1 || p->resp_hdr_store.cap / 2 > total + 1) {
    char *nb = realloc(p->resp_hdr_store.base, total + 1);
    if (nb != NULL) {
      p->resp_hdr_store.base = nb;
      p->resp_hdr_store.cap = total + 1;
    }
  }
  if (p->resp_hdr_store.cap < total + 1) n = 0;
  h = (llmux_header_t *)(void *)p->resp_hdr_store.base;
  for (i = 0; i < n; i++) {
    char *base = p->resp_hdr_store.base;
    memcpy(base + off, hdrs[2 * i].base, hdrs[2 * i].len);
    h[i].name = (llmux_str_t){base + off, hdrs[2 * i].len};
    off += hdrs[2 * i].len;
    memcpy(base + off, hdrs[2 * i + 1].base, hdrs[2 * i + 1].len);
    h[i].value = (llmux_str_t){base + off, hdrs[2 * i + 1].len};
    off += hdrs[2 * i + 1].len;
  }
  p->resp_hdr_store.len = n ? off : 0;
  p->ht.txn.resp_headers = n ? h : NULL;
  p->ht.txn.nresp_headers = n;
}

/* A stream the client has our head of is never tried again, and the
 * upstream client resends nothing once bytes came back: what only built the
 * upstream request goes (build_upstream makes it anew if ever needed). */
static void drop_request_bufs(proxy_t *p) {
  llmux_buf_free(&p->up_path);
  llmux_buf_free(&p->up_headers);
  llmux_buf_free(&p->ht.txn.path);
  llmux_buf_free(&p->ht.txn.headers);
  p->up.path = NULL;
  p->up.headers = NULL;
  p->up.headers_len = 0;
}

static void on_up_head(llmux_upstream_req_t *up, int status, const llmux_str_t *hdrs,
                       size_t n) {
  proxy_t *p = up->data;
  llmux_rl_key_t key = route_key(p->route);
  p->t_up_head = llmux_now_us();
  keep_headers(p, hdrs, n);
  p->ht.txn.status = status;
  llmux_rl_sync_headers(p->gw->rl, &key, (llmux_rl_style_t)p->prov->rl_style,
                        p->ht.txn.resp_headers, p->ht.txn.nresp_headers, now_ms(p), wall_ms());
  if (status < 200 || status >= 300) return;
  llmux_router_report(p->gen->router, p->route->index, LLMUX_OUTCOME_SUCCESS,
                      (p->t_up_head - p->t_up_start) / 1000, now_ms(p));
  if (p->stream && p->client) {
    start_stream(p);
    drop_request_bufs(p);
  } else {
    /* Size the answer's buffer once rather than doubling it up to size. */
    const llmux_str_t *cl = llmux_host_api()->header_get(p->ht.txn.resp_headers,
                                                         p->ht.txn.nresp_headers, "content-length");
    uint64_t len = 0;
    size_t i;
    for (i = 0; cl != NULL && i < cl->len && cl->base[i] >= '0' && cl->base[i] <= '9'; i++)
      len = len * 10 + (uint64_t)(cl->base[i] - '0');
    if (len > 0 && len <= (64u << 20)) llmux_buf_reserve(&p->out, (size_t)len);
  }
}

/* A native stream's usage, read event by event as it passes (`eof`: the
 * end, an unfinished last event included). */
static void native_stream_usage(proxy_t *p, const char *data, size_t len, int eof) {
  llmux_usage_t *u = &p->ht.txn.usage;
  llmux_str_t ev;
  if (p->native_sse == NULL && (p->native_sse = llmux_split_new(LLMUX_SPLIT_SSE, 0)) == NULL)
    return;
  while (llmux_split_next(p->native_sse, &data, &len, eof, &ev) == 1)
    p->in->native_usage(ev.base, ev.len, &u->prompt_tokens, &u->completion_tokens);
}

/* A native answer's bytes go to the client as they are: a stream's with
 * each read, a plain body whole at the end (finish_ok). */
static void native_body(proxy_t *p, const char *data, size_t len) {
  if (!p->stream) {
    if (llmux_buf_append(&p->out, data, len) != 0) p->emit_failed = 2;
    return;
  }
  native_stream_usage(p, data, len, 0);
  p->rec.output_chunks++;
  if (llmux_buf_append(&p->pending, data, len) != 0) p->emit_failed = 2;
}

/* The end of a native answer: the usage it told. */
static void native_end(proxy_t *p) {
  llmux_usage_t *u = &p->ht.txn.usage;
  if (p->stream) native_stream_usage(p, NULL, 0, 1);
  else p->in->native_usage(p->out.base, p->out.len, &u->prompt_tokens, &u->completion_tokens);
}

static void on_up_body(llmux_upstream_req_t *up, const char *data, size_t len) {
  proxy_t *p = up->data;
  int status = p->ht.txn.status;
  if (status < 200 || status >= 300) {
    if (p->err_body.len + len <= ERROR_BODY_MAX) llmux_buf_append(&p->err_body, data, len);
    return;
  }
  if (p->emit_failed) return;
  if (p->native) {
    native_body(p, data, len);
    return;
  }
  if (p->prov->plugin->vt->parse_response(p->prov->instance, &p->ht.txn, data, len, 0) != 0 &&
      !p->emit_failed)
    p->emit_failed = 2;
}

/* The attempt ended before any answer: a connection-level failure. */
static void attempt_failed_net(proxy_t *p, int status) {
  const char *why = status == LLMUX_EPROTO ? "the answer was not HTTP" : llmux_strerror(status);
  int reached = !(status == LLMUX_ECONNREFUSED || status == LLMUX_EDNS || status == LLMUX_ECERT ||
                  status == LLMUX_ETLS || status == LLMUX_EINVAL);
  llmux_router_report_error(p->gen->router, p->route->index, LLMUX_OUTCOME_FAILURE, now_ms(p),
                            why, wall_ms());
  attempt_end(p, net_outcome(status));
  if (reached) llmux_rl_commit(&p->resv, p->resv_tokens, now_ms(p));
  else llmux_rl_release(&p->resv, now_ms(p));
  llmux_buf_t advice = {0};
  const llmux_provider_t *vt = p->prov->plugin->vt;
  /* A plugin may know what to tell the user ("start it with `ollama serve`"). */
  if (LLMUX_PROVIDER_HAS(vt, explain_error) &&
      vt->explain_error(p->prov->instance, status, why, &advice) == 0 && advice.len > 0)
    why = advice.base;
  if (status == LLMUX_ETIMEOUT)
    note_net_failure(p, 504, "upstream_error", "upstream_timeout", why);
  else if (status == LLMUX_EPROTO)
    note_net_failure(p, 502, "upstream_error", "upstream_garbage", why);
  else
    note_net_failure(p, 502, "upstream_error", llmux_err_code(status), why);
  llmux_buf_free(&advice);
  failover(p, status == LLMUX_ETIMEOUT || status == LLMUX_ECONNRESET || status == LLMUX_EEOF);
}

/* The provider answered with an error status; `given`: already classified
 * (a fanned-out copy's, gateway/fanout.h), else the plugin classifies it. */
static void attempt_failed_http(proxy_t *p, llmux_error_info_t *given) {
  llmux_error_info_t e;
  llmux_rl_key_t key = route_key(p->route);
  int status, upstream = p->ht.txn.status;
  llmux_outcome_t outcome = LLMUX_OUTCOME_FAILURE;
  const char *words;
  char what[LLMUX_ROUTE_ERROR_MAX];
  memset(&e, 0, sizeof e);
  if (given != NULL)
    e = *given;
  else
    p->prov->plugin->vt->classify_error(p->prov->instance, &p->ht.txn, p->err_body.base,
                                        p->err_body.len, &e);
  attempt_end(p, class_outcome(e.cls, upstream));
  llmux_rl_commit(&p->resv, p->resv_tokens, now_ms(p));
  if (e.cls == LLMUX_FAIL_RATE_LIMITED) {
    /* Rest the route until the provider's retry-after (headers synced in
     * on_up_head already cover the x-ratelimit-* state). */
    llmux_rl_block(p->gw->rl, &key, now_ms(p) + (e.retry_after_ms ? e.retry_after_ms : 1000),
                   LLMUX_RL_BLOCK_RETRY_AFTER);
    outcome = LLMUX_OUTCOME_NEUTRAL;
  } else if (e.cls == LLMUX_FAIL_QUOTA) {
    llmux_rl_key_t wide = {p->route->provider->name, NULL};
    llmux_rl_block(p->gw->rl, &wide,
                   now_ms(p) + (e.retry_after_ms ? e.retry_after_ms : 3600000),
                   LLMUX_RL_BLOCK_SPEND_LIMIT);
    outcome = LLMUX_OUTCOME_NEUTRAL;
  } else if (e.cls == LLMUX_FAIL_BAD_REQUEST || e.cls == LLMUX_FAIL_CONTEXT_LENGTH ||
             e.cls == LLMUX_FAIL_CONTENT_FILTER) {
    outcome = LLMUX_OUTCOME_NEUTRAL;
  }
  if ((words = route_error_words(e.cls)) != NULL)
    snprintf(what, sizeof what, "%d %s", upstream, words);
  llmux_router_report_error(p->gen->router, p->route->index, outcome, now_ms(p),
                            words ? what : NULL, wall_ms());
  if (e.cls == LLMUX_FAIL_CONTEXT_LENGTH)
    p->min_context = p->route->model->context_window ? p->route->model->context_window
                                                     : UINT64_MAX;
  status = status_for(e.cls, upstream);
  note_failure(p, status,
               status == 429 ? "rate_limit_error"
               : status < 500 ? "invalid_request_error"
                              : "upstream_error",
               code_for(e.cls), e.retry_after_ms, "Provider '%s' answered %d: %s",
               p->route->provider->name, upstream, e.message.len ? e.message.base : "no details");
  llmux_buf_free(&e.message);
  /* A native provider's error is in the client's format: it is the answer
   * if no other route serves (not a refused key: that one is ours). */
  if (p->native && given == NULL && e.cls != LLMUX_FAIL_AUTH && looks_like_object(&p->err_body))
    llmux_buf_append(&p->fail_native, p->err_body.base, p->err_body.len);
  if (!e.retry_elsewhere) {
    give_up(p);
    return;
  }
  failover(p, e.retry_same);
}

static void on_up_done(llmux_upstream_req_t *up, int status) {
  proxy_t *p = up->data;
  uint64_t now = llmux_now_us();
  p->up_running = 0;
  llmux_router_inflight(p->gen->router, p->route->index, -1);
  if (status < 0 || status < 200 || status >= 300) {
    p->elsewhere_us += now - p->t_up_start;
    p->t_up_start = p->t_up_head = 0;
  }
  if (status < 0 && p->started) {
    char msg[300];
    attempt_end(p, LLMUX_ATTEMPT_BROKEN);
    llmux_rl_commit(&p->resv, p->resv_tokens, now_ms(p));
    snprintf(msg, sizeof msg, "stream broke: %s", llmux_strerror(status));
    llmux_router_report_error(p->gen->router, p->route->index, LLMUX_OUTCOME_FAILURE, now_ms(p),
                              msg, wall_ms());
    snprintf(msg, sizeof msg, "The stream from provider '%s' broke: %s.",
             p->route->provider->name, llmux_strerror(status));
    llmux_warn("%s: %s/%s: stream broke: %s", p->rid, p->route->provider->name, p->route->id,
               up->error[0] ? up->error : llmux_strerror(status));
    end_stream_with_error(p, status == LLMUX_ETIMEOUT ? "upstream_timeout" : "upstream_error",
                          msg);
    return;
  }
  if (status < 0) { attempt_failed_net(p, status); return; }
  if (status < 200 || status >= 300) { attempt_failed_http(p, NULL); return; }

  if (p->native) native_end(p);
  else p->prov->plugin->vt->parse_response(p->prov->instance, &p->ht.txn, NULL, 0, 1);
  llmux_rl_commit(&p->resv, answer_tokens(p), now_ms(p));
  if (p->started) {
    attempt_end(p, p->emit_failed == 2 ? LLMUX_ATTEMPT_GARBAGE : LLMUX_ATTEMPT_OK);
    if (p->emit_failed == 2)
      end_stream_with_error(p, "upstream_garbage", "The provider's stream was malformed.");
    else
      finish_settled(p);
    return;
  }
  /* The body passed through untouched, so check it once: a 200 whose body
   * is not JSON is the provider's fault, and another route may do better. */
  if (p->emit_failed == 2 || !looks_like_object(&p->out)) {
    attempt_end(p, LLMUX_ATTEMPT_GARBAGE);
    p->elsewhere_us += now - p->t_up_start;
    p->t_up_start = p->t_up_head = 0;
    llmux_router_report_error(p->gen->router, p->route->index, LLMUX_OUTCOME_FAILURE, now_ms(p),
                              "200 not a JSON object", wall_ms());
    note_failure(p, 502, "upstream_error", "upstream_garbage", 0,
                 "Provider '%s' answered 200 with a body that is not a JSON object",
                 p->route->provider->name);
    failover(p, 0);
    return;
  }
  attempt_end(p, LLMUX_ATTEMPT_OK);
  finish_settled(p);
}

/* ---- attempts ------------------------------------------------------------ */

/* The lines the host sends upstream before the plugin's, into up_headers. */
static void host_headers(proxy_t *p) {
  p->up_headers.len = 0;
  llmux_buf_appends(&p->up_headers, "Content-Type: application/json\r\n");
  llmux_buf_appends(&p->up_headers,
                    p->stream ? "Accept: text/event-stream\r\n" : "Accept: application/json\r\n");
  llmux_buf_appends(&p->up_headers, "X-Request-Id: ");
  llmux_buf_appends(&p->up_headers, p->rid);
  llmux_buf_appends(&p->up_headers, "\r\n");
  llmux_trace_headers(&p->rec, p->span_id, p->client, &p->up_headers);
}

static void build_upstream(proxy_t *p) {
  const llmux_provider_conf_t *pc = p->prov->conf;
  llmux_txn_t *t = &p->ht.txn;
  uint64_t left = p->deadline_ms > now_ms(p) ? p->deadline_ms - now_ms(p) : 1;
  size_t i;
  p->up_path.len = 0;
  llmux_buf_reserve(&p->up_headers, 511); /* 512 with its NUL, not 1024 */
  llmux_buf_appends(&p->up_path, p->prov->base_path);
  llmux_buf_append(&p->up_path, t->path.base, t->path.len);
  host_headers(p);
  llmux_buf_append(&p->up_headers, t->headers.base, t->headers.len);
  for (i = 0; i < pc->nheaders; i++)
    llmux_buf_printf(&p->up_headers, "%s: %s\r\n", pc->headers[i].key, pc->headers[i].value);
  for (i = 0; i < t->nbody_parts; i++) {
    p->iov[i].base = (char *)t->body_parts[i].base;
    p->iov[i].len = t->body_parts[i].len;
  }
  llmux_upstream_req_init(&p->up);
  p->up.data = p;
  p->up.https = p->prov->tls;
  p->up.host = p->prov->host;
  p->up.port = (uint16_t)p->prov->port;
  p->up.tls_ctx = p->prov->tls_ctx;
  p->up.method = t->method ? t->method : "POST";
  p->up.path = p->up_path.base;
  p->up.headers = p->up_headers.base;
  p->up.headers_len = p->up_headers.len;
  p->up.body = p->iov;
  p->up.nbody = t->nbody_parts;
  p->up.connect_timeout_ms = pc->connect_timeout_ms;
  p->up.first_byte_timeout_ms = pc->timeout_ms;
  p->up.idle_timeout_ms = pc->stream_timeout_ms;
  p->up.total_timeout_ms = pc->total_timeout_ms && pc->total_timeout_ms < left
                               ? pc->total_timeout_ms : left;
  p->up.on_head = on_up_head;
  p->up.on_body = on_up_body;
  p->up.on_done = on_up_done;
  p->up.on_read_end = on_up_read_end;
}

/* ---- n > 1 to a provider without it (gateway/fanout.h) ------------------- */

/* Does rt need the request fanned out? 1 yes, 0 no, -1 rt cannot serve it
 * (fan_out = off, or n beyond LLMUX_FANOUT_MAX). */
static int fan_needed(const proxy_t *p, const llmux_provider_rt_t *rt) {
  const llmux_provider_t *vt = rt->plugin->vt;
  if (p->n < 2 || rt->host == NULL) return 0; /* a local plugin answers as it can */
  if (LLMUX_PROVIDER_HAS(vt, features) && (vt->features(rt->instance) & LLMUX_FEATURE_N))
    return 0;
  return p->gen->cfg->server.fan_out && p->n <= LLMUX_FANOUT_MAX ? 1 : -1;
}

/* Headroom for n requests on r, where has_headroom admitted one: n
 * requests and n times the tokens count against its limits. (A token
 * window that is empty still lets a request through, as for one.) */
static int fan_headroom(proxy_t *p, const llmux_route_conf_t *r, uint64_t tokens) {
  llmux_rl_key_t key = route_key(r);
  llmux_rl_left_t left[LLMUX_RL_NDIMS];
  uint64_t wait = 0;
  char why[64];
  int d, ok = 1;
  if (llmux_rl_left(p->gw->rl, &key, now_ms(p), left) != 0) return 1;
  for (d = 0; d < LLMUX_RL_NDIMS; d++) {
    int requests = d == LLMUX_RL_REQ_MINUTE || d == LLMUX_RL_REQ_DAY;
    uint64_t need = requests ? p->n : p->n * tokens;
    if (!left[d].limited || left[d].remaining >= need) continue;
    if (!requests && left[d].remaining == left[d].limit) continue;
    ok = 0;
    if (left[d].reset_in_ms > wait) wait = left[d].reset_in_ms;
  }
  if (ok) return 1;
  if (p->rl_provider == NULL) p->rl_provider = r->provider->name;
  if (p->rl_wait_ms == 0 || wait < p->rl_wait_ms) p->rl_wait_ms = wait;
  snprintf(why, sizeof why, "no rate-limit headroom for n = %u", p->n);
  note_skip(p, r, why);
  return 0;
}

static void on_fan_head(void *owner) {
  proxy_t *p = owner;
  const llmux_txn_t *t0 = llmux_fanout_txn(p->fanout, 0);
  p->t_up_head = llmux_now_us();
  p->ht.txn.status = 200;
  p->ht.txn.adjusted.len = 0; /* what copy 0's plugin changed: the same in all */
  llmux_buf_append(&p->ht.txn.adjusted, t0->adjusted.base, t0->adjusted.len);
  if (p->stream && p->client) start_stream(p);
}

static void on_fan_read_end(void *owner) {
  flush_pending(owner);
}

/* A fanned-out stream failed after the client got our head. */
static void fan_broken(proxy_t *p, int status) {
  char msg[300];
  const char *why = status == LLMUX_EUPSTREAM ? "malformed" : llmux_strerror(status);
  attempt_end(p, status == LLMUX_EUPSTREAM ? LLMUX_ATTEMPT_GARBAGE : LLMUX_ATTEMPT_BROKEN);
  llmux_rl_commit(&p->resv, p->resv_tokens, now_ms(p));
  snprintf(msg, sizeof msg, "stream broke: %s", why);
  llmux_router_report_error(p->gen->router, p->route->index, LLMUX_OUTCOME_FAILURE, now_ms(p),
                            msg, wall_ms());
  snprintf(msg, sizeof msg, "The stream from provider '%s' broke: %s.",
           p->route->provider->name, why);
  end_stream_with_error(p, status == LLMUX_ETIMEOUT ? "upstream_timeout" : "upstream_error", msg);
}

/* Every copy answered (the merged answer is emitted), or the first failed:
 * then the attempt failed as that copy did, and failover goes on. */
static void on_fan_done(void *owner, int status) {
  proxy_t *p = owner;
  llmux_fanout_t *f = p->fanout;
  llmux_error_info_t e;
  memset(&e, 0, sizeof e);
  if (status >= 200 && status < 300) {
    const llmux_txn_t *t0 = llmux_fanout_txn(f, 0);
    p->ht.txn.usage = llmux_fanout_usage(f);
    llmux_buf_append(&p->ht.txn.served_model, t0->served_model.base, t0->served_model.len);
    p->fanout = NULL;
    llmux_fanout_free(f);
    llmux_rl_commit(&p->resv, answer_tokens(p), now_ms(p));
    attempt_end(p, LLMUX_ATTEMPT_OK);
    finish_settled(p);
    return;
  }
  p->elsewhere_us += llmux_now_us() - p->t_up_start;
  p->t_up_start = p->t_up_head = 0;
  if (status >= 300) llmux_fanout_error(f, &e);
  p->ht.txn.status = status >= 300 ? status : 0;
  snprintf(p->up.error, sizeof p->up.error, "%s", llmux_fanout_error_detail(f));
  p->fanout = NULL; /* before failover may fan out again */
  llmux_fanout_free(f);
  if (p->started) {
    llmux_buf_free(&e.message);
    fan_broken(p, status);
  } else if (status == LLMUX_EUPSTREAM) {
    attempt_end(p, LLMUX_ATTEMPT_GARBAGE);
    llmux_rl_commit(&p->resv, p->resv_tokens, now_ms(p));
    llmux_router_report_error(p->gen->router, p->route->index, LLMUX_OUTCOME_FAILURE, now_ms(p),
                              "garbage", wall_ms());
    note_failure(p, 502, "upstream_error", "upstream_garbage", 0,
                 "Provider '%s' answered 200 with a body that could not be read",
                 p->route->provider->name);
    failover(p, 0);
  } else if (status < 0) {
    attempt_failed_net(p, status);
  } else {
    attempt_failed_http(p, &e);
  }
}

/* attempt()'s translation for a fanned-out route: n copies' (the request
 * fields of p->ht.txn are set). The plugin's refusal lands where
 * attempt() reads it. */
static int fan_translate(proxy_t *p, const llmux_route_conf_t *r, llmux_provider_rt_t *rt,
                         uint64_t tokens) {
  llmux_fanout_conf_t c;
  int rc;
  host_headers(p);
  memset(&c, 0, sizeof c);
  c.owner = p;
  c.gw = p->gw;
  c.router = p->gen->router;
  c.route = r;
  c.prov = rt;
  c.n = p->n;
  c.request = &p->ht.txn;
  c.n_value = p->n_value;
  c.headers = p->up_headers.base;
  c.headers_len = p->up_headers.len;
  c.tokens = tokens;
  c.total_timeout_ms = p->deadline_ms > now_ms(p) ? p->deadline_ms - now_ms(p) : 1;
  c.emit = emit_to_client;
  c.on_head = on_fan_head;
  c.on_read_end = on_fan_read_end;
  c.on_done = on_fan_done;
  rc = llmux_fanout_new(&c, &p->fanout, &p->ht.txn.refusal);
  if (rc != 0) {
    llmux_fanout_free(p->fanout);
    p->fanout = NULL;
  }
  return rc;
}

/* attempt()'s sending for a fanned-out route; a copy that cannot start is
 * the attempt's failure, as for one request. */
static void fan_send(proxy_t *p, const llmux_route_conf_t *r) {
  char why[256];
  int rc;
  p->t_up_start = llmux_now_us();
  p->t_up_head = 0;
  rc = llmux_fanout_send(p->fanout, why, sizeof why);
  if (rc == 0) {
    if (p->gw->shared) p->rl_mark = llmux_rl_shared_mark(p->gw->rl); /* the copies' too */
    llmux_debug("%s: attempt %u: %s -> %s/%s, fanned out to %u requests", p->rid, p->attempts,
                p->model_name, r->provider->name, r->id, p->n);
    return;
  }
  llmux_fanout_free(p->fanout);
  p->fanout = NULL;
  attempt_end(p, net_outcome(rc));
  p->t_up_start = 0;
  llmux_rl_release(&p->resv, now_ms(p));
  llmux_router_report_error(p->gen->router, r->index, LLMUX_OUTCOME_FAILURE, now_ms(p),
                            llmux_strerror(rc), wall_ms());
  snprintf(p->up.error, sizeof p->up.error, "%s", why);
  note_net_failure(p, 502, "upstream_error", llmux_err_code(rc), llmux_strerror(rc));
  try_next(p);
}

/* ABI 1.2: a provider without base_url (rt->host == NULL) is answered by
 * its plugin's respond_local, with no upstream request at all (the
 * `simple` embedding provider). The whole answer is emitted during the
 * call, so it is finished (or failed over) before this returns. A stream's
 * frames wait in p->pending until the call returns, so the head goes out
 * only then: a plugin that fails before it emitted anything is the 400 or
 * the next route, as its contract says, not a broken stream. */
static void respond_locally(proxy_t *p, const llmux_route_conf_t *r, llmux_provider_rt_t *rt) {
  const llmux_provider_t *vt = rt->plugin->vt;
  uint64_t chunks = p->rec.output_chunks;
  int rc;
  rc = vt->respond_local(rt->instance, &p->ht.txn);
  if (rc == 0 && !p->stream && p->emit_failed == 0 &&
      !looks_like_object(&p->out))
    rc = LLMUX_EUPSTREAM;
  if (p->stream && !p->started) {
    if (rc == 0 || p->rec.output_chunks != chunks)
      start_stream(p); /* an answer, or part of one: the client gets it */
    else
      p->pending.len = 0;
  }
  if (rc != 0 && p->started) {
    attempt_end(p, LLMUX_ATTEMPT_BROKEN);
    llmux_rl_release(&p->resv, now_ms(p));
    end_stream_with_error(p, "local_provider_failed", "The local provider failed mid-answer.");
    return;
  }
  if (rc != 0) {
    attempt_end(p, rc == LLMUX_EINVAL ? LLMUX_ATTEMPT_CLIENT_ERROR : LLMUX_ATTEMPT_SERVER_ERROR);
    llmux_rl_release(&p->resv, now_ms(p));
    if (rc == LLMUX_EINVAL)
      note_failure(p, 400, "invalid_request_error", "unsupported_request", 0,
                   "provider '%s' (plugin '%s') cannot serve this request", r->provider->name,
                   rt->plugin->name);
    else
      note_failure(p, 502, "upstream_error", llmux_err_code(rc), 0,
                   "plugin '%s' could not answer: %s", rt->plugin->name, llmux_strerror(rc));
    try_next(p);
    return;
  }
  attempt_end(p, LLMUX_ATTEMPT_OK);
  llmux_rl_commit(&p->resv, answer_tokens(p), now_ms(p));
  llmux_router_report(p->gen->router, r->index, LLMUX_OUTCOME_SUCCESS, 0, now_ms(p));
  finish_ok(p);
}

/* A new attempt's CLIENT span (zero when the request is not traced), kept
 * in its record slot too. */
static void trace_attempt(proxy_t *p) {
  llmux_trace_attempt(p->gw, &p->rec, p->span_id);
  if (p->rec.nattempts <= LLMUX_REQLOG_MAX_ATTEMPTS)
    memcpy(p->rec.attempts[p->rec.nattempts - 1].span_id, p->span_id, sizeof p->span_id);
}

/* Does route r pass the client's body through: its provider speaks the
 * inbound format (llmux/provider.h, LLMUX_FEATURE_MESSAGES, _RESPONSES),
 * or has the Responses API for this model (`capabilities = responses`)? */
static int native_route(const proxy_t *p, const llmux_route_conf_t *r,
                        const llmux_provider_rt_t *rt) {
  const llmux_provider_t *vt = rt->plugin->vt;
  unsigned f;
  if (p->in == NULL || p->in->native_feature == 0 || p->in_model.base == NULL ||
      rt->host == NULL || !LLMUX_PROVIDER_HAS(vt, features))
    return 0;
  f = vt->features(rt->instance);
  if (f & p->in->native_feature) return 1;
  return p->in->native_feature == LLMUX_FEATURE_RESPONSES &&
         (f & LLMUX_FEATURE_RESPONSES_BY_MODEL) && (r->model->capabilities & LLMUX_CAP_RESPONSES);
}

/* The host's parse of txn.body (request_json) belongs to one body: a switch
 * between the chat body and the native one drops it. */
static void forget_json(proxy_t *p) {
  if (p->ht.json != NULL) json_decref(p->ht.json);
  p->ht.json = NULL;
  p->ht.json_tried = 0;
}

/* Sends the request to one route. On a local failure notes it and moves
 * on to the next candidate. */
static void attempt(proxy_t *p, const llmux_route_conf_t *r, llmux_provider_rt_t *rt,
                    uint64_t tokens) {
  llmux_txn_t *t = &p->ht.txn;
  llmux_rl_key_t key = route_key(r);
  int rc;
  p->route = r;
  p->prov = rt;
  p->attempts++;
  p->rec.provider = r->provider->name;
  p->rec.provider_model = r->id;
  p->rec.canonical_model = r->model->id;
  p->rec.passthrough = r->passthrough;
  p->rec.route_series = llmux_generation_route_series(p->gen, r);
  llmux_reqlog_attempt_begin(&p->rec, r->provider->name, r->id, p->retry_next);
  trace_attempt(p);
  p->retry_next = 0;
  p->resv_tokens = tokens;
  memset(&p->resv, 0, sizeof p->resv);
  llmux_rl_reserve(p->gw->rl, &key, tokens, now_ms(p), &p->resv);
  if (p->gw->shared) p->rl_mark = llmux_rl_shared_mark(p->gw->rl);
  p->err_body.len = 0;
  p->out.len = 0;
  p->emit_failed = 0;
  /* A retry runs the translation again from scratch, possibly with another
   * provider's plugin: release the previous plugin's state first. */
  if (p->txn_prov != rt) free_txn(p);
  llmux_host_txn_clear_out(&p->ht);
  t->size = sizeof *t;
  t->endpoint = (llmux_endpoint_t)p->endpoint;
  t->body = (llmux_str_t){p->body.base, p->body.len};
  t->model_value = p->model_value;
  t->stream = p->stream;
  t->attempt = p->attempts - 1;
  t->canonical_model = r->model->id;
  t->provider_model = r->id;
  t->status = 0;
  t->nresp_headers = 0;
  if (native_route(p, r, rt) != p->native) forget_json(p);
  if ((p->native = native_route(p, r, rt))) { /* the client's own body, only its model replaced */
    t->endpoint = (llmux_endpoint_t)p->in->native_endpoint;
    t->body = (llmux_str_t){p->in_body.base, p->in_body.len};
    t->model_value = p->in_model;
    llmux_split_reset(p->native_sse);
  }
  p->ht.owner = p;
  p->ht.emit = emit_to_client;
  p->txn_prov = rt;
  if (rt->host == NULL) { /* no base_url: the plugin answers (ABI 1.2) */
    respond_locally(p, r, rt);
    return;
  }
  rc = p->fan ? fan_translate(p, r, rt, tokens) : rt->plugin->vt->translate_request(rt->instance, t);
  if (rc != 0 ||
      (!p->fan && (t->nbody_parts == 0 || t->nbody_parts > LLMUX_TXN_MAX_BODY_PARTS))) {
    attempt_end(p, rc == LLMUX_EINVAL || rc == 0 ? LLMUX_ATTEMPT_CLIENT_ERROR
                                                 : LLMUX_ATTEMPT_SERVER_ERROR);
    llmux_rl_release(&p->resv, now_ms(p));
    /* EINVAL: the request holds something this provider cannot take (an
     * audio part for Anthropic, say): another route may; if none can, it
     * is the client's 400. Anything else is the plugin's failure. */
    if ((rc == LLMUX_EINVAL || rc == 0) && t->refusal.len) /* ABI 1.4: the plugin's words */
      note_failure(p, 400, "invalid_request_error", "unsupported_by_provider", 0, "%.*s",
                   (int)(t->refusal.len > 400 ? 400 : t->refusal.len), t->refusal.base);
    else if (rc == LLMUX_EINVAL || rc == 0)
      note_failure(p, 400, "invalid_request_error", "unsupported_by_provider", 0,
                   "provider '%s' (plugin '%s') cannot accept this request", r->provider->name,
                   rt->plugin->name);
    else
      note_failure(p, 502, "upstream_error", "translation_failed", 0,
                   "plugin '%s' could not translate the request: %s", rt->plugin->name,
                   llmux_strerror(rc));
    try_next(p);
    return;
  }
  if (p->fan) {
    fan_send(p, r);
    return;
  }
  build_upstream(p);
  p->t_up_start = llmux_now_us();
  p->t_up_head = 0;
  llmux_router_inflight(p->gen->router, r->index, +1);
  rc = llmux_upstream_start(p->gw->up, &p->up);
  if (rc != 0) {
    attempt_end(p, net_outcome(rc));
    llmux_router_inflight(p->gen->router, r->index, -1);
    p->t_up_start = 0;
    llmux_rl_release(&p->resv, now_ms(p));
    llmux_router_report_error(p->gen->router, r->index, LLMUX_OUTCOME_FAILURE, now_ms(p),
                              llmux_strerror(rc), wall_ms());
    note_net_failure(p, 502, "upstream_error", llmux_err_code(rc), llmux_strerror(rc));
    try_next(p);
    return;
  }
  p->up_running = 1;
  llmux_debug("%s: attempt %u: %s -> %s/%s", p->rid, p->attempts, p->model_name,
              r->provider->name, r->id);
}

/* Is there headroom on route r for this request? Notes why not. */
/* llmux_rl_check, telling a shared store when this request's view of it
 * is fresh (rl_shared.h, Refreshing). */
static int shared_check(proxy_t *p, llmux_rl_store_t *rl, const llmux_rl_key_t *key,
                        uint64_t tokens, uint64_t *wait) {
  int rc;
  if (!p->fresh || !p->gw->shared) return llmux_rl_check(rl, key, tokens, now_ms(p), wait);
  llmux_rl_shared_assume_fresh(rl, 1);
  rc = llmux_rl_check(rl, key, tokens, now_ms(p), wait);
  llmux_rl_shared_assume_fresh(rl, 0);
  return rc;
}

static void on_refreshed(llmux_rl_settle_t *w) {
  proxy_t *p = w->data;
  p->fresh = 1;
  p->after_refresh(p);
}

/* A limit is near: read every state published so far, then go on. */
static void refresh(proxy_t *p, void (*then)(proxy_t *p)) {
  p->stale = 0;
  p->after_refresh = then;
  p->settle.data = p;
  if (llmux_rl_shared_refresh(p->gw->rl, &p->settle, on_refreshed) == 0) return;
  p->fresh = 1; /* down: the mirror is all there is */
  then(p);
}

static int has_headroom(proxy_t *p, const llmux_route_conf_t *r, llmux_provider_rt_t *rt,
                        uint64_t *tokens) {
  llmux_rl_key_t key = route_key(r);
  uint64_t wait = 0;
  *tokens = llmux_rl_tokens_to_reserve((llmux_rl_style_t)rt->rl_style, p->prompt_tokens,
                                       p->max_tokens, r->model->context_window);
  int rc = shared_check(p, p->gw->rl, &key, *tokens, &wait);
  if (rc == 0) return 1;
  if (rc == LLMUX_RL_ESTALE) {
    p->stale = 1;
    return 0;
  }
  if (rc == LLMUX_RL_EUNAVAILABLE) {
    p->shared_down = 1;
    note_skip(p, r, "shared state unavailable");
    return 0;
  }
  if (p->rl_provider == NULL) p->rl_provider = r->provider->name;
  if (p->rl_wait_ms == 0 || wait < p->rl_wait_ms) p->rl_wait_ms = wait;
  {
    char why[64];
    snprintf(why, sizeof why, "no rate-limit headroom for %llus",
             (unsigned long long)secs_up(wait));
    note_skip(p, r, why);
  }
  return 0;
}

static int plan_routes(proxy_t *p);

/* `[profile] escalate = NEXT` (seed 002): every route of this profile failed
 * or was filtered out, so NEXT's routes get their turn; attempts and the
 * deadline go on counting, and the tenant must be allowed NEXT. Returns 1
 * with a new plan, 0 when there is nothing to escalate to. */
static int escalate(proxy_t *p) {
  const llmux_server_conf_t *s = &p->gen->cfg->server;
  const llmux_profile_conf_t *next = p->res.profile ? p->res.profile->escalate : NULL;
  llmux_resolution_t r;
  if (next == NULL || p->next < p->plan.nroutes) return 0;
  if (p->attempts >= (s->max_attempts ? s->max_attempts : 1) || now_ms(p) >= p->deadline_ms)
    return 0;
  memset(&r, 0, sizeof r);
  r.kind = r.target_kind = LLMUX_NAME_PROFILE;
  r.target = next->name;
  r.chain[0] = (llmux_resolve_step_t){LLMUX_NAME_PROFILE, next->name};
  r.nchain = 1;
  r.profile = next;
  r.models = next->models;
  r.nmodels = next->nmodels;
  r.routes = next->routes;
  r.nroutes = next->nroutes;
  if (p->tenant && !llmux_tenant_may_use(p->tenant, &r, NULL)) return 0;
  llmux_debug("%s: profile %s escalates to %s", p->rid, p->res.profile->name, next->name);
  p->res = r;
  p->next = 0;
  return plan_routes(p) == 0;
}

static void try_next(proxy_t *p) {
  const llmux_server_conf_t *s = &p->gen->cfg->server;
  if (p->client == NULL) { proxy_free(p); return; }
  uint64_t max_attempts = s->max_attempts ? s->max_attempts : 1;
  while (p->next < p->plan.nroutes && p->attempts < max_attempts &&
         now_ms(p) < p->deadline_ms) {
    const llmux_route_conf_t *r = p->cands[p->next++];
    llmux_provider_rt_t *rt = &p->gen->provs->items[r->provider->index];
    uint64_t tokens;
    if (rt->instance == NULL) { note_skip(p, r, "not available"); continue; }
    if (p->min_context && (r->model->context_window == 0 ||
                           r->model->context_window <= p->min_context)) {
      note_skip(p, r, "context window not larger");
      continue;
    }
    if ((p->fan = fan_needed(p, rt)) < 0) {
      note_skip(p, r, p->gen->cfg->server.fan_out ? "n beyond fan-out" : "no n > 1, fan_out off");
      if (p->n_refused == NULL) p->n_refused = r->provider->name;
      continue;
    }
    if (!has_headroom(p, r, rt, &tokens)) {
      if (p->stale) { /* this route again, once the mirror is fresh */
        p->next--;
        refresh(p, try_next);
        return;
      }
      continue;
    }
    if (p->fan && !fan_headroom(p, r, tokens)) continue;
    if (llmux_router_allow(p->gen->router, r->index, now_ms(p)) == LLMUX_ROUTER_DENY) {
      p->ncooling++;
      note_skip(p, r, "cooling down");
      continue;
    }
    attempt(p, r, rt, tokens);
    return;
  }
  if (escalate(p)) {
    try_next(p); /* bounded: escalation chains end (registry.c) */
    return;
  }
  give_up(p);
}

/* ---- entry --------------------------------------------------------------- */

/* The caller's only/ignore/order over the router's plan; what it drops is
 * said in the final error like any other skip. */
static void steer_plan(proxy_t *p) {
  const llmux_route_conf_t *dropped[MAX_CANDIDATES];
  size_t i, nd;
  if (p->steer == NULL || !p->steer->active) return;
  p->plan.nroutes = llmux_steer_apply(p->steer, p->plan.routes, p->plan.nroutes, dropped, &nd);
  for (i = 0; i < nd; i++) note_skip(p, dropped[i], "excluded by the request's provider");
}

/* The plan's arrays as the request keeps them, sized to what they hold:
 * the candidates (p->cands), and the skips only when there is no candidate
 * (give_up explains those with them; otherwise note_skip said it all). */
static int keep_plan(proxy_t *p) {
  size_t nr = p->plan.nroutes, ns = p->plan.nskipped;
  free(p->plan_mem);
  p->plan_mem = NULL;
  p->cands = NULL;
  if (nr > 0 && nr <= LLMUX_COUNTOF(p->cands_few)) { /* most requests: no allocation */
    p->cands = memcpy(p->cands_few, p->plan.routes, nr * sizeof(*p->cands));
    p->plan.skipped = NULL;
  } else if (nr > 0) {
    if ((p->plan_mem = malloc(nr * sizeof(*p->cands))) == NULL) return LLMUX_ENOMEM;
    p->cands = memcpy(p->plan_mem, p->plan.routes, nr * sizeof(*p->cands));
    p->plan.skipped = NULL;
  } else if (ns > 0) {
    if ((p->plan_mem = malloc(ns * sizeof(*p->plan.skipped))) == NULL) return LLMUX_ENOMEM;
    p->plan.skipped = memcpy(p->plan_mem, p->plan.skipped, ns * sizeof(*p->plan.skipped));
  } else {
    p->plan.skipped = NULL;
  }
  p->plan.routes = p->cands;
  return 0;
}

static int plan_routes(proxy_t *p) {
  const llmux_route_conf_t *cands[MAX_CANDIDATES];
  llmux_route_skip_t skips[MAX_CANDIDATES];
  llmux_route_query_t q;
  size_t i;
  memset(&q, 0, sizeof q);
  q.caps = p->caps;
  q.prompt_tokens = p->prompt_tokens;
  q.seed = llmux_rand_next(&p->gw->id_state);
  p->plan.routes = cands;
  p->plan.skipped = skips;
  p->plan.cap = MAX_CANDIDATES;
  if (p->res.nroutes > MAX_CANDIDATES) p->res.nroutes = MAX_CANDIDATES;
  if (p->steer != NULL && p->steer->has_sort) {
    q.override_strategy = 1;
    q.strategy = p->steer->sort;
  }
  if (llmux_router_order(p->gen->router, &p->res, &q, now_ms(p), &p->plan) < 0) {
    p->plan.routes = NULL; /* nothing points at this frame after it */
    p->plan.skipped = NULL;
    p->plan.nroutes = p->plan.nskipped = 0;
    return -1;
  }
  steer_plan(p);
  for (i = 0; i < p->plan.nskipped; i++) {
    const llmux_route_skip_t *sk = &skips[i];
    if (sk->reason == LLMUX_SKIP_DISABLED) {
      note_skip(p, sk->route, sk->route->provider->disabled_reason
                                  ? sk->route->provider->disabled_reason
                                  : "provider disabled");
    } else {
      note_skip(p, sk->route, llmux_skip_reason_str(sk->reason));
    }
  }
  p->ncooling = p->plan.ncooling;
  if (keep_plan(p) != 0) {
    p->plan.routes = NULL;
    p->plan.skipped = NULL;
    p->plan.nroutes = p->plan.nskipped = 0;
    return -1;
  }
  return 0;
}

/* ARES's body -> an OpenAI chat body through the agent's profile. */
static int agent_request(proxy_t *p) {
  llmux_buf_t body = {0};
  char msg[256];
  int rc = llmux_agent_build_request(p->gen->cfg, p->tenant ? p->tenant->conf : NULL,
                                     p->body.base, p->body.len, &p->areq, &body, msg,
                                     sizeof msg);
  if (rc != 0) {
    llmux_buf_free(&body);
    fail_client(p, 400, "invalid_request_error",
                rc == LLMUX_ENOTFOUND ? "UNKNOWN_AGENT_TYPE" : "INVALID_REQUEST", NULL, "%s",
                msg);
    return -1;
  }
  llmux_buf_free(&p->body);
  p->body = body;
  return 0;
}

/* The client's body, kept for routes that pass it through, and where its
 * model is (the format checked the body: a model that is not a string
 * only means no route passes it through). */
static void keep_native(proxy_t *p) {
  llmux_json_field_t f[] = {{"model"}};
  p->in_body = p->body;
  if (llmux_json_scan(p->in_body.base, p->in_body.len, f, 1, NULL, NULL) == 0 &&
      f[0].type == LLMUX_JSON_STRING)
    p->in_model = f[0].value;
}

/* The client's body (an inbound format's) -> an OpenAI chat body. */
static int inbound_request(proxy_t *p) {
  llmux_buf_t body = {0};
  llmux_inbound_err_t err;
  void *arg = p->in_arg;
  int rc;
  p->in_arg = NULL; /* the state's from here */
  rc = p->in->request_arg != NULL
           ? p->in->request_arg(arg, p->body.base, p->body.len, 0, &body, &p->in_state, &err)
           : p->in->request(p->body.base, p->body.len, 0, &body, &p->in_state, &err);
  if (rc != 0) {
    llmux_buf_free(&body);
    if (rc == LLMUX_EINVAL)
      fail_client(p, err.status, "invalid_request_error", "invalid_request", NULL, "%s",
                  err.message);
    else
      fail_client(p, 500, "server_error", "out_of_memory", NULL, "Out of memory.");
    return -1;
  }
  if (p->in->native_endpoint != 0) keep_native(p);
  else llmux_buf_free(&p->body);
  p->body = body;
  return 0;
}

/* The tenant's say, before any provider's: may it use this, and has it
 * headroom? Reserves its per-minute share. */
static void admit_and_route(proxy_t *p);

static int tenant_admit(proxy_t *p) {
  llmux_tenant_verdict_t v;
  uint64_t tokens;
  int rc;
  char msg[256];
  int allowed = p->agent ? llmux_tenant_may_use_agent(p->tenant, p->gen->cfg, p->areq.agent)
                         : llmux_tenant_may_use(p->tenant, &p->res, NULL);
  if (!allowed && !p->agent) {
    /* The same answer as for a name that does not exist. */
    model_not_found(p);
    return -1;
  }
  if (!allowed) {
    fail_client(p, 403, "invalid_request_error", "AGENT_NOT_ALLOWED", NULL,
                "Tenant '%s' may not use agent '%s': GET /v1/models lists what it may use.",
                p->tenant->conf->name, p->areq.agent->name);
    return -1;
  }
  tokens = llmux_rl_tokens_to_reserve(LLMUX_RL_STYLE_GENERIC, p->prompt_tokens, p->max_tokens, 0);
  if (p->fresh && p->gw->shared) llmux_rl_shared_assume_fresh(p->gw->tenant_rl, 1);
  rc = llmux_tenant_admit(&p->gen->tenants, p->gw->usage, p->tenant, tokens, now_ms(p),
                          wall_ms(), &p->tenant_resv, &v);
  if (p->fresh && p->gw->shared) llmux_rl_shared_assume_fresh(p->gw->tenant_rl, 0);
  if (rc == 0) return 0;
  if (rc == LLMUX_RL_ESTALE) {
    refresh(p, admit_and_route);
    return -1;
  }
  if (rc == LLMUX_RL_EUNAVAILABLE) {
    respond_error(p, 503, "upstream_error", "shared_state_unavailable", NULL,
                  "The gateway's shared state (Redis) is unreachable and shared_state_fail "
                  "= closed: no request is admitted until it is back.", 1, 0);
    proxy_finish(p);
    return -1;
  }
  snprintf(msg, sizeof msg, "%s exceeded for tenant '%s': %s", v.quota ? "Quota" : "Rate limit",
           p->tenant->conf->name, v.limit);
  respond_error(p, 429, v.quota ? "insufficient_quota" : "rate_limit_error",
                v.quota ? "QUOTA_EXCEEDED" : "RATE_LIMIT_EXCEEDED", NULL, msg,
                secs_up(v.retry_after_ms), 1);
  proxy_finish(p);
  return -1;
}

/* The catalog's names first; else PROVIDER/ANY-ID to a passthrough
 * provider, else a bare id its model list holds; with no capability
 * filter: the model declares none, or, for embeddings, the one the request
 * needs. */
static int resolve_model(proxy_t *p) {
  const llmux_config_t *cfg = p->gen->cfg;
  const char *name = p->model_name;
  const llmux_provider_conf_t *listed;
  if (llmux_resolve(cfg, name, &p->res) == 0) return 0;
  if (p->agent) return LLMUX_ENOTFOUND;
  if (p->pt == NULL && (p->pt = malloc(sizeof *p->pt)) == NULL) return LLMUX_ENOMEM;
  if (llmux_resolve_passthrough(cfg, name, strlen(name), p->pt, &p->res) != 0 &&
      ((listed = llmux_model_lists_find(p->gw->model_lists, cfg, name)) == NULL ||
       llmux_resolve_passthrough_to(cfg, listed, name, strlen(name), p->pt, &p->res) != 0))
    return LLMUX_ENOTFOUND;
  p->pt->model.capabilities = p->caps & LLMUX_CAP_EMBEDDINGS;
  return 0;
}

/* Body `models`: each fallback's routes after those of `model`, in list
 * order, as one resolution (a profile's own strategy and preferences give
 * way to the list's order: priority within each name). A name the caller
 * may not use, or that is unknown, is the same 404 as for `model`. */
static int merge_fallbacks(proxy_t *p) {
  llmux_resolution_t r;
  size_t i, j, nm = 0, nr = 0;
  proxy_fallbacks_t *fb = p->fb;
  for (j = 0; j < p->res.nmodels && nm < MAX_CANDIDATES; j++)
    fb->models[nm++] = p->res.models[j];
  for (j = 0; j < p->res.nroutes && nr < MAX_CANDIDATES; j++)
    fb->routes[nr++] = p->res.routes[j];
  for (i = 0; i < p->nfallbacks; i++) {
    if (llmux_resolve(p->gen->cfg, fb->names[i], &r) != 0 ||
        (p->tenant && !llmux_tenant_may_use(p->tenant, &r, NULL))) {
      snprintf(p->model_name, sizeof p->model_name, "%s", fb->names[i]);
      return -1;
    }
    for (j = 0; j < r.nmodels && nm < MAX_CANDIDATES; j++) fb->models[nm++] = r.models[j];
    for (j = 0; j < r.nroutes && nr < MAX_CANDIDATES; j++) fb->routes[nr++] = r.routes[j];
  }
  p->res.models = fb->models;
  p->res.nmodels = nm;
  p->res.routes = fb->routes;
  p->res.nroutes = nr;
  p->res.profile = NULL;
  return 0;
}

void llmux_proxy_handle(llmux_gateway_t *gw, llmux_http_req_t *req, int endpoint) {
  llmux_proxy_opts_t o = {endpoint, NULL, 0, NULL, NULL};
  llmux_proxy_handle_opts(gw, req, &o);
}

void llmux_proxy_handle_opts(llmux_gateway_t *gw, llmux_http_req_t *req,
                             const llmux_proxy_opts_t *opts) {
  proxy_t *p = proxy_new(gw);
  if (p == NULL) {
    if (opts->inbound != NULL) {
      llmux_http_header_t h[1] = {{{"Content-Type", 12}, {"application/json", 16}}};
      llmux_buf_t b = {0};
      opts->inbound->error_body(&b, 503, "server_error", "out_of_memory", "Out of memory.", NULL);
      llmux_http_respond_buf(req, 503, h, 1, &b);
      if (opts->inbound_arg != NULL && opts->inbound->request_arg != NULL) {
        /* The argument is the state's, failure or not: a failing call frees it. */
        llmux_inbound_err_t e;
        void *st = NULL;
        opts->inbound->request_arg(opts->inbound_arg, NULL, 0, 0, &b, &st, &e);
        opts->inbound->state_free(st);
        llmux_buf_free(&b);
      }
    } else {
      llmux_http_send_error(req, 503, "server_error", "out_of_memory", "Out of memory.", NULL);
    }
    if (opts->rec != NULL) {
      llmux_reqlog_t rec = *opts->rec;
      rec.status = 503;
      rec.error_code = "out_of_memory";
      llmux_reqlog_done(gw, &rec);
    }
    return;
  }
  p->gw = gw;
  p->gen = llmux_generation_ref(opts->gen ? opts->gen : gw->current);
  live_link(p);
  p->client = req;
  p->endpoint = opts->endpoint;
  p->tenant = opts->tenant;
  p->agent = opts->agent;
  p->in = opts->inbound;
  p->in_arg = opts->inbound_arg;
  p->t_start = req->start_us;
  req->data = p;
  req->on_abort = on_client_abort;
  req->on_drain = on_client_drain;
  take_record(p, req, opts);
  llmux_trace_begin(gw, &p->rec, req);
  llmux_http_req_take_body(req, &p->body);
  if (p->agent && agent_request(p) != 0) return;
  if (p->in != NULL && inbound_request(p) != 0) return;
  if (validate(p) != 0) return;
  p->rec.model = p->model_name;
  p->rec.stream = p->stream;
  if (resolve_model(p) != 0 || (p->agent && p->res.profile != p->areq.profile)) {
    if (p->agent) {
      fail_client(p, 500, "server_error", "internal_error", NULL,
                  "Profile '%s' of agent '%s' does not resolve to itself.", p->model_name,
                  p->areq.agent->name);
      return;
    }
    model_not_found(p);
    return;
  }
  if (p->nfallbacks && merge_fallbacks(p) != 0) {
    model_not_found(p);
    return;
  }
  if (p->res.model != NULL) p->rec.canonical_model = p->res.model->id;
  p->deadline_ms = now_ms(p) + p->gen->cfg->server.request_timeout_ms;
  admit_and_route(p);
}

/* The tenant's say, then the routes. Again after a refresh the tenant's
 * windows asked for (tenant_admit). */
static void admit_and_route(proxy_t *p) {
  if (p->client == NULL) { proxy_free(p); return; }
  if (p->tenant && tenant_admit(p) != 0) return;
  if (cache_lookup(p)) return;
  route_request(p);
}

/* The routes, once neither the tenant nor the cache answered. */
static void route_request(proxy_t *p) {
  if (plan_routes(p) != 0) {
    fail_client(p, 500, "server_error", "internal_error", NULL, "Routing failed.");
    return;
  }
  try_next(p);
}

/* ==== Drain (issue 12): what still runs when drain_timeout ends ========== *
 *
 * Every proxy is linked in gw->proxies from its start to proxy_free, so the
 * gateway can end them all; the list knows nothing of the configuration. */

static proxy_t *live_proxy(llmux__proxy_link_t *l) {
  return llmux_container_of(l, proxy_t, live);
}

static void live_link(proxy_t *p) {
  p->live.prev = NULL;
  p->live.next = p->gw->proxies;
  if (p->gw->proxies != NULL) p->gw->proxies->prev = &p->live;
  p->gw->proxies = &p->live;
}

static void live_unlink(proxy_t *p) {
  if (p->live.prev != NULL) p->live.prev->next = p->live.next;
  else if (p->gw->proxies == &p->live) p->gw->proxies = p->live.next;
  if (p->live.next != NULL) p->live.next->prev = p->live.prev;
  p->live.prev = p->live.next = NULL;
}

/* A stream the client has our head of ends as one the provider broke
 * (end_stream_as, the same event, code shutting_down); a request not yet
 * answered gets a 503 in its endpoint's shape. Either way the upstream
 * request is cancelled in proxy_free and the route is not blamed. */
static void shut_down(proxy_t *p) {
  static const char msg[] = "the gateway is shutting down";
  if (p->client == NULL) { proxy_free(p); return; }
  if (p->started) {
    account(p); /* served in part (and billed by the provider), as on a client abort */
    end_stream_as(p, "server_error", "shutting_down", msg);
    return;
  }
  respond_error(p, 503, "server_error", "shutting_down", NULL, msg, 0, 0);
  proxy_finish(p);
}

size_t llmux_proxy_shutdown_all(llmux_gateway_t *gw) {
  size_t n = 0;
  llmux__proxy_link_t *l;
  while ((l = gw->proxies) != NULL) {
    shut_down(live_proxy(l));
    assert(gw->proxies != l); /* each one leaves the list, or this never ends */
    n++;
  }
  return n;
}
