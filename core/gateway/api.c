/* The gateway's endpoints: which handler serves a request. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <strings.h>

#include "gateway/admin.h"
#include "gateway/agent.h"
#include "gateway/model_lists.h"
#include "llmux/provider.h"
#include "base/log.h"
#include "config/registry.h"
#include "gateway/api.h"
#include "gateway/cache.h"
#include "gateway/inbound.h"
#include "gateway/proxy.h"
#include "gateway/reqlog.h"
#include "gateway/respond.h"
#include "gateway/scrape.h"
#include "base/json_scan.h"
#include "route/ratelimit.h"
#include "shared/rl_shared.h"
#include "base/util.h"

#define JSON_CT LLMUX_HTTP_HEADER_LIT("Content-Type", "application/json")
#define RESP_PREFIX "/v1/responses/"
#define RESP_PREFIX_LEN 14

static int str_eq(llmux_str_t s, const char *lit) {
  size_t n = strlen(lit);
  return s.len == n && memcmp(s.base, lit, n) == 0;
}

/* ---- GET /v1/models ----------------------------------------------------- */

static void json_str(llmux_buf_t *b, const char *s) {
  llmux_buf_append_json_str(b, s, strlen(s));
}

static void append_model_list(llmux_buf_t *b, llmux_model_conf_t *const *models, size_t n) {
  size_t i;
  llmux_buf_appends(b, "[");
  for (i = 0; i < n; i++) {
    if (i) llmux_buf_appends(b, ",");
    json_str(b, models[i]->id);
  }
  llmux_buf_appends(b, "]");
}

static void append_caps(llmux_buf_t *b, unsigned caps) {
  static const char *names[] = {"tools", "vision", "json", "embeddings", "responses"};
  size_t i, n = 0;
  llmux_buf_appends(b, "[");
  for (i = 0; i < LLMUX_COUNTOF(names); i++) {
    if (!(caps & (1u << i))) continue;
    llmux_buf_printf(b, "%s\"%s\"", n++ ? "," : "", names[i]);
  }
  llmux_buf_appends(b, "]");
}

/* A route's effective limits (its own keys, else its provider's); only
 * those that are set. */
static void append_limits(llmux_buf_t *b, const llmux_limits_t *l) {
  static const char *const names[] = {"requests_per_minute", "requests_per_day",
                                      "tokens_per_minute", "tokens_per_day"};
  uint64_t v[4];
  size_t i, n = 0;
  v[0] = l->requests_per_minute;
  v[1] = l->requests_per_day;
  v[2] = l->tokens_per_minute;
  v[3] = l->tokens_per_day;
  llmux_buf_appends(b, ",\"limits\":{");
  for (i = 0; i < 4; i++) {
    if (v[i] == 0) continue;
    llmux_buf_printf(b, "%s\"%s\":%llu", n++ ? "," : "", names[i], (unsigned long long)v[i]);
  }
  llmux_buf_appends(b, "}");
}

static void append_providers(llmux_buf_t *b, llmux_route_conf_t *const *routes, size_t n) {
  size_t i;
  llmux_buf_appends(b, "[");
  for (i = 0; i < n; i++) {
    llmux_buf_appends(b, i ? ",{\"provider\":" : "{\"provider\":");
    json_str(b, routes[i]->provider->name);
    llmux_buf_appends(b, ",\"model\":");
    json_str(b, routes[i]->model->id);
    llmux_buf_appends(b, ",\"provider_model\":");
    json_str(b, routes[i]->id);
    llmux_buf_printf(b, ",\"enabled\":%s", routes[i]->provider->enabled ? "true" : "false");
    append_limits(b, &routes[i]->limits);
    llmux_buf_appends(b, "}");
  }
  llmux_buf_appends(b, "]");
}

static void append_model_object(llmux_buf_t *b, const char *id, const char *kind) {
  llmux_buf_appends(b, "{\"id\":");
  json_str(b, id);
  llmux_buf_printf(b, ",\"object\":\"model\",\"created\":0,\"owned_by\":\"llmux\","
                      "\"llmux\":{\"kind\":\"%s\"", kind);
}

static void append_canonical(llmux_buf_t *b, const llmux_model_conf_t *m) {
  size_t i;
  llmux_buf_printf(b, ",\"tier\":%d", m->tier);
  if (m->display_name) {
    llmux_buf_appends(b, ",\"display_name\":");
    json_str(b, m->display_name);
  }
  if (m->family) {
    llmux_buf_appends(b, ",\"family\":");
    json_str(b, m->family);
  }
  llmux_buf_appends(b, ",\"aliases\":[");
  for (i = 0; i < m->aliases.len; i++) {
    if (i) llmux_buf_appends(b, ",");
    json_str(b, m->aliases.items[i]);
  }
  llmux_buf_appends(b, "],\"capabilities\":");
  append_caps(b, m->capabilities);
  if (m->context_window)
    llmux_buf_printf(b, ",\"context_window\":%llu", (unsigned long long)m->context_window);
  if (m->has_price)
    llmux_buf_printf(b, ",\"price_in\":%g,\"price_out\":%g", m->price_in, m->price_out);
  llmux_buf_appends(b, ",\"routes\":");
  append_providers(b, m->routes, m->nroutes);
}

/* Lists every name tenant t may use (t NULL: all of them). */
int llmux_api_build_tenant_models(const llmux_config_t *cfg, const llmux_tenant_t *t,
                                  llmux_buf_t *out) {
  size_t i, n = 0;
#define KEEP(name) (t == NULL || llmux_tenant_may_use_name(t, cfg, (name)))
  llmux_buf_appends(out, "{\"object\":\"list\",\"data\":[");
  for (i = 0; i < cfg->nmodels; i++) {
    if (!KEEP(cfg->models[i]->id)) continue;
    if (n++) llmux_buf_appends(out, ",");
    append_model_object(out, cfg->models[i]->id, "canonical");
    append_canonical(out, cfg->models[i]);
    llmux_buf_appends(out, "}}");
  }
  for (i = 0; i < cfg->ngenerics; i++) {
    const llmux_generic_conf_t *g = cfg->generics[i];
    if (!KEEP(g->name)) continue;
    if (n++) llmux_buf_appends(out, ",");
    append_model_object(out, g->name, "generic");
    if (g->tier) llmux_buf_printf(out, ",\"tier\":%d", g->tier);
    if (g->min_tier) llmux_buf_printf(out, ",\"min_tier\":%d", g->min_tier);
    llmux_buf_appends(out, ",\"models\":");
    append_model_list(out, g->models, g->nmodels);
    llmux_buf_appends(out, "}}");
  }
  for (i = 0; i < cfg->nprofiles; i++) {
    const llmux_profile_conf_t *p = cfg->profiles[i];
    if (!KEEP(p->name)) continue;
    if (n++) llmux_buf_appends(out, ",");
    append_model_object(out, p->name, "profile");
    llmux_buf_printf(out, ",\"strategy\":\"%s\",\"models\":", llmux_strategy_name(p->strategy));
    append_model_list(out, p->models, p->nmodels);
    llmux_buf_appends(out, "}}");
  }
  for (i = 0; i < cfg->nagents; i++) {
    const llmux_agent_conf_t *a = cfg->agents[i];
    const llmux_profile_conf_t *p = llmux_tenant_agent_profile(t ? t->conf : NULL, a);
    if (t != NULL && !llmux_tenant_may_use_agent(t, cfg, a)) continue;
    if (n++) llmux_buf_appends(out, ",");
    append_model_object(out, a->name, "agent");
    llmux_buf_appends(out, ",\"profile\":");
    json_str(out, p->name);
    llmux_buf_appends(out, "}}");
  }
#undef KEEP
  return llmux_buf_appends(out, "]}");
}

int llmux_api_build_models(const llmux_config_t *cfg, llmux_buf_t *out) {
  return llmux_api_build_tenant_models(cfg, NULL, out);
}

/* ---- GET /v1/models/{id} ------------------------------------------------ */

static int hexdig(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Percent-decodes s into out (cap bytes); -1 on bad escapes or overflow. */
static int url_decode(const char *s, size_t n, char *out, size_t cap) {
  size_t i, o = 0;
  for (i = 0; i < n; i++) {
    char c = s[i];
    if (c == '%') {
      int hi, lo;
      if (i + 2 >= n) return -1;
      hi = hexdig(s[i + 1]);
      lo = hexdig(s[i + 2]);
      if (hi < 0 || lo < 0) return -1;
      c = (char)(hi * 16 + lo);
      if (c == '\0') return -1;
      i += 2;
    }
    if (o + 1 >= cap) return -1;
    out[o++] = c;
  }
  out[o] = '\0';
  return (int)o;
}

static int send_json(llmux_http_req_t *req, int status, llmux_buf_t *body, const char *rid) {
  llmux_http_header_t h[2] = {JSON_CT, LLMUX_HTTP_HEADER_LIT("x-request-id", "")};
  h[1].value = (llmux_str_t){rid, strlen(rid)};
  return llmux_http_respond_buf(req, status, h, 2, body);
}

static void handle_model(llmux_gateway_t *gw, llmux_http_req_t *req, const char *rid,
                         const llmux_tenant_t *tenant) {
  char name[512];
  llmux_resolution_t res;
  llmux_passthrough_t pt;
  llmux_buf_t b = {0};
  size_t i;
  const char *prefix = "/v1/models/";
  llmux_str_t raw = {req->path.base + strlen(prefix), req->path.len - strlen(prefix)};

  if (url_decode(raw.base, raw.len, name, sizeof name) <= 0) {
    llmux_http_send_error(req, 400, "invalid_request_error", "invalid_model",
                          "The model name in the URL is empty or badly encoded.", "model");
    return;
  }
  if ((llmux_resolve(gw->cfg, name, &res) != 0 &&
       llmux_resolve_passthrough(gw->cfg, name, strlen(name), &pt, &res) != 0 &&
       llmux_resolve_passthrough_to(gw->cfg,
                                    llmux_model_lists_find(gw->model_lists, gw->cfg, name),
                                    name, strlen(name), &pt, &res) != 0) ||
      (tenant != NULL && !llmux_tenant_may_use(tenant, &res, NULL))) {
    llmux_respond_model_not_found(req, gw->cfg, tenant, name);
    return;
  }
  append_model_object(&b, name, llmux_name_kind_str(res.kind));
  llmux_buf_appends(&b, ",\"resolves_to\":");
  json_str(&b, res.target);
  llmux_buf_printf(&b, ",\"target_kind\":\"%s\",\"chain\":[", llmux_name_kind_str(res.target_kind));
  for (i = 0; i < res.nchain; i++) {
    llmux_buf_appends(&b, i ? ",{\"name\":" : "{\"name\":");
    json_str(&b, res.chain[i].name);
    llmux_buf_printf(&b, ",\"kind\":\"%s\"}", llmux_name_kind_str(res.chain[i].kind));
  }
  llmux_buf_appends(&b, "]");
  if (res.model) {
    append_canonical(&b, res.model);
  } else {
    llmux_buf_appends(&b, ",\"models\":");
    append_model_list(&b, res.models, res.nmodels);
    llmux_buf_appends(&b, ",\"routes\":");
    append_providers(&b, res.routes, res.nroutes);
  }
  llmux_buf_appends(&b, "}}");
  send_json(req, 200, &b, rid);
}

/* ---- tenants ------------------------------------------------------------ */

/* The key a request carries: `Authorization: Bearer KEY`, else `x-api-key`
 * (Anthropic's clients). Never logged. */
static llmux_str_t request_key(const llmux_http_req_t *req) {
  const llmux_str_t *v = llmux_http_header(req, "authorization");
  llmux_str_t k = {NULL, 0};
  if (v != NULL && v->len > 7 && strncasecmp(v->base, "Bearer ", 7) == 0) {
    k.base = v->base + 7;
    k.len = v->len - 7;
    while (k.len > 0 && *k.base == ' ') { k.base++; k.len--; }
    if (k.len > 0) return k;
  }
  v = llmux_http_header(req, "x-api-key");
  if (v != NULL && v->len > 0) k = *v;
  return k;
}

static void unauthorized(llmux_http_req_t *req, const llmux_proxy_opts_t *po, int missing,
                         const char *rid) {
  llmux_http_header_t h[4] = {JSON_CT, LLMUX_HTTP_HEADER_LIT("x-request-id", ""),
                              LLMUX_HTTP_HEADER_LIT("WWW-Authenticate", "Bearer"),
                              LLMUX_HTTP_HEADER_LIT("request-id", "")};
  llmux_buf_t body = {0};
  const char *msg = missing ? "You didn't provide an API key: send it as 'Authorization: "
                              "Bearer KEY' (or 'x-api-key: KEY')."
                            : "Incorrect API key provided.";
  h[1].value = h[3].value = (llmux_str_t){rid, strlen(rid)};
  if (po->inbound != NULL)
    po->inbound->error_body(&body, 401, "invalid_request_error", "invalid_api_key", msg, rid);
  else if (po->agent) llmux_agent_error_json(&body, msg, "INVALID_API_KEY", 0);
  else llmux_http_error_json(&body, "invalid_request_error", "invalid_api_key", msg, NULL);
  llmux_http_respond_buf(req, 401, h, po->inbound != NULL ? 4 : 3, &body);
}

/* The operator's endpoints, /admin/... and /metrics, take the admin key
 * (admin.h), never a tenant's. */
static int operator_path(llmux_str_t path) {
  return llmux_admin_path(path) || llmux_scrape_path(path);
}

/* With tenants, everything but /health, /health/ready and the operator's
 * endpoints needs a key. */
static int needs_key(const llmux_gateway_t *gw, const llmux_http_req_t *req) {
  return gw->current->tenants.n > 0 && !str_eq(req->path, "/health") &&
         !str_eq(req->path, "/health/ready") && !operator_path(req->path);
}

/* The tenant of the current generation whose key the request carries, or
 * NULL; *missing: it carries none. */
static const llmux_tenant_t *key_tenant(llmux_gateway_t *gw, const llmux_http_req_t *req,
                                        int *missing) {
  llmux_str_t key = request_key(req);
  *missing = key.len == 0;
  return key.len ? llmux_tenants_auth(&gw->current->tenants, key.base, key.len) : NULL;
}

/* The same, answering 401 when there is none. */
static const char *classify(llmux_str_t p, llmux_proxy_opts_t *po);

static const llmux_tenant_t *authenticate(llmux_gateway_t *gw, llmux_http_req_t *req,
                                          const char *rid) {
  int missing;
  llmux_proxy_opts_t po = {0};
  const llmux_tenant_t *t = key_tenant(gw, req, &missing);
  classify(req->path, &po);
  if (t == NULL) unauthorized(req, &po, missing, rid);
  return t;
}

/* The `endpoint` label and access-log field: one of a fixed set, never the
 * path itself. Also says which proxy endpoint the path is (0: none). */
static const char *classify(llmux_str_t p, llmux_proxy_opts_t *po) {
  static const struct {
    const char *path, *name;
    int endpoint, agent;
    const llmux_inbound_t *inbound;
  } paths[] = {
      {"/v1/chat/completions", "chat", LLMUX_ENDPOINT_CHAT, 0, NULL},
      {"/v1/completions", "completions", LLMUX_ENDPOINT_COMPLETIONS, 0, NULL},
      {"/v1/embeddings", "embeddings", LLMUX_ENDPOINT_EMBEDDINGS, 0, NULL},
      {"/v1/chat", "agent", LLMUX_ENDPOINT_CHAT, 1, NULL},
      {"/v1/messages", "messages", LLMUX_ENDPOINT_CHAT, 0, &llmux_inbound_anthropic},
      {"/v1/messages/count_tokens", "count_tokens", 0, 0, &llmux_inbound_anthropic},
      {"/v1/responses", "responses", LLMUX_ENDPOINT_CHAT, 0, &llmux_inbound_responses},
      {"/v1/models", "models", 0, 0, NULL},
      {"/v1/usage", "usage", 0, 0, NULL},
      {"/health", "health", 0, 0, NULL},
      {"/health/ready", "ready", 0, 0, NULL},
      {"/metrics", "metrics", 0, 0, NULL},
  };
  size_t i;
  for (i = 0; i < LLMUX_COUNTOF(paths); i++) {
    if (!str_eq(p, paths[i].path)) continue;
    po->endpoint = paths[i].endpoint;
    po->agent = paths[i].agent;
    po->inbound = paths[i].inbound;
    return paths[i].name;
  }
  if (p.len > 11 && memcmp(p.base, "/v1/models/", 11) == 0) return "model";
  if (p.len > RESP_PREFIX_LEN && memcmp(p.base, RESP_PREFIX, RESP_PREFIX_LEN) == 0) {
    po->inbound = &llmux_inbound_responses;
    return "response";
  }
  if (llmux_admin_path(p)) return "admin";
  return "unknown";
}

/* The front door's on_status: what was answered, for the record of a
 * request answered at once (gateway/reqlog.h). */
void llmux_api_on_status(llmux_http_req_t *req, int status) {
  llmux_gateway_t *gw = req->server->data;
  gw->answered_status = status;
}

/* What the head leaves on req->data for llmux_api_on_request: the tenant
 * as its place in the current generation and that generation's number,
 * not a pointer. The head cannot pin the generation (a request that fails
 * before its body is in is never handed back, so nothing would unpin it),
 * and a reload may come while the body arrives: on_request uses the place
 * only if the same generation is still current, else checks the key again.
 * A number of 0 (no stash) never matches: generations count from 1. */
#define STASH_INDEX_BITS 20

static void *stash_tenant(const llmux_generation_t *gen, const llmux_tenant_t *t) {
  uintptr_t idx = (uintptr_t)(t - gen->tenants.items) + 1;
  if (idx >= ((uintptr_t)1 << STASH_INDEX_BITS)) return NULL; /* checked again later */
  return (void *)((uintptr_t)gen->number << STASH_INDEX_BITS | idx);
}

static const llmux_tenant_t *stashed_tenant(const llmux_generation_t *gen, const void *data) {
  uintptr_t v = (uintptr_t)data, idx = v & (((uintptr_t)1 << STASH_INDEX_BITS) - 1);
  uintptr_t number = ((uintptr_t)gen->number << STASH_INDEX_BITS) >> STASH_INDEX_BITS;
  if (idx == 0 || idx > gen->tenants.n || v >> STASH_INDEX_BITS != number) return NULL;
  return &gen->tenants.items[idx - 1];
}

/* Keys are checked at the head, before a byte of the body is read: a client
 * without one cannot make the gateway hold its body. The tenant is stashed
 * on req->data for llmux_api_on_request (which checks again when there is
 * none: the front door was set up without this hook, or a reload came).
 * A request answered here (401, 403) is recorded here: on_request never
 * runs for it. */
void llmux_api_on_head(llmux_http_req_t *req) {
  llmux_gateway_t *gw = req->server->data;
  const llmux_tenant_t *t = NULL;
  llmux_proxy_opts_t po = {0};
  llmux_reqlog_t rec;
  char rid[160];
  int operator = operator_path(req->path), missing = 0;
  if (!operator) {
    if (!needs_key(gw, req)) return;
    if ((t = key_tenant(gw, req, &missing)) != NULL) {
      req->data = stash_tenant(gw->current, t);
      return;
    }
  }
  llmux_respond_request_id(gw, req, rid);
  llmux_http_set_request_id(req, rid);
  llmux_reqlog_begin(gw, &rec, req, rid);
  rec.endpoint = classify(req->path, &po);
  if (operator && llmux_admin_allow(gw, req, rid)) {
    llmux_reqlog_cancel(gw, &rec); /* on_request records it */
    return;
  }
  if (!operator) {
    unauthorized(req, &po, missing, rid);
    rec.error_code = "invalid_api_key";
  }
  gw->requests++; /* answered, and gone */
  rec.status = gw->answered_status;
  llmux_reqlog_done(gw, &rec);
}

/* ---- GET /v1/usage -------------------------------------------------------- */

typedef struct usage_acc_s {
  json_t *today, *month; /* model -> counts */
  int day;
} usage_acc_t;

/* Dollars to the nano-dollar: sums of doubles (0.1 + 0.2) would otherwise
 * print as 0.30000000000000004. Dumped with 15 significant digits. */
static double usd9(double usd) {
  return floor(usd * 1e9 + 0.5) / 1e9;
}

static void acc_add(json_t *per_model, const llmux_usage_row_t *r) {
  json_t *m = json_object_get(per_model, r->model);
  if (m == NULL) {
    m = json_pack("{s:s,s:I,s:I,s:I,s:f}", "model", r->model, "requests", (json_int_t)0,
                  "input_tokens", (json_int_t)0, "output_tokens", (json_int_t)0, "cost_usd", 0.0);
    json_object_set_new(per_model, r->model, m);
  }
#define ADD_INT(k, v) \
  json_object_set_new(m, k, json_integer(json_integer_value(json_object_get(m, k)) + (json_int_t)(v)))
  ADD_INT("requests", r->counts.requests);
  ADD_INT("input_tokens", r->counts.input_tokens);
  ADD_INT("output_tokens", r->counts.output_tokens);
#undef ADD_INT
  json_object_set_new(m, "cost_usd",
                      json_real(usd9(json_real_value(json_object_get(m, "cost_usd")) +
                                     r->counts.cost_usd)));
}

static void on_usage_row(void *arg, const llmux_usage_row_t *r) {
  usage_acc_t *a = arg;
  acc_add(a->month, r);
  if (r->day == a->day) acc_add(a->today, r);
}

/* {"requests","input_tokens","output_tokens","cost_usd","models":[...]} */
static json_t *period(const char *key, const char *label, json_t *per_model,
                      const llmux_usage_counts_t *tot) {
  json_t *models = json_array(), *m;
  const char *k;
  json_object_foreach(per_model, k, m) json_array_append(models, m);
  return json_pack("{s:s,s:I,s:I,s:I,s:f,s:o}", key, label, "requests",
                   (json_int_t)tot->requests, "input_tokens", (json_int_t)tot->input_tokens,
                   "output_tokens", (json_int_t)tot->output_tokens, "cost_usd", usd9(tot->cost_usd),
                   "models", models);
}

static json_t *limit_or_null(uint64_t v) {
  return v ? json_integer((json_int_t)v) : json_null();
}

static void handle_usage(llmux_gateway_t *gw, llmux_http_req_t *req, const char *rid,
                         const llmux_tenant_t *t) {
  const llmux_tenant_conf_t *c;
  usage_acc_t a;
  llmux_usage_counts_t today, month;
  char day[11], mon[8], *text;
  json_t *o;
  llmux_buf_t b = {0};
  if (t == NULL) {
    llmux_http_send_error(req, 404, "invalid_request_error", "no_tenants",
                          "Usage is kept per tenant, and no [tenant] is configured.", NULL);
    return;
  }
  c = t->conf;
  a.day = llmux_usage_today();
  a.today = json_object();
  a.month = json_object();
  llmux_usage_foreach(gw->usage, c->name, llmux_usage_month_start(a.day), a.day, on_usage_row, &a);
  llmux_usage_tenant_totals(gw->usage, c->name, a.day, &today, &month);
  llmux_usage_day_str(a.day, day);
  llmux_usage_month_str(a.day, mon);
  o = json_pack("{s:s,s:s,s:o,s:o,s:{s:o,s:o,s:o,s:o}}", "object", "usage", "tenant", c->name,
                "today", period("date", day, a.today, &today),
                "month", period("month", mon, a.month, &month), "limits",
                "requests_per_minute", limit_or_null(c->limits.requests_per_minute),
                "tokens_per_minute", limit_or_null(c->limits.tokens_per_minute),
                "tokens_per_day", limit_or_null(c->limits.tokens_per_day),
                "budget_usd_per_month",
                c->has_budget ? json_real(c->budget_usd_per_month) : json_null());
  if (o != NULL && gw->resp_cache != NULL) {
    /* Answered from the response cache (gateway/cache.h): at no cost, kept
     * apart from the rows above, since the process started. */
    llmux_cache_tenant_counts_t k = llmux_cache_tenant(gw->resp_cache, c->name);
    json_object_set_new(o, "cached",
                        json_pack("{s:I,s:I,s:I,s:f}", "requests", (json_int_t)k.requests,
                                  "input_tokens", (json_int_t)k.input_tokens, "output_tokens",
                                  (json_int_t)k.output_tokens, "cost_usd", 0.0));
  }
  text = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
  json_decref(o);
  json_decref(a.today);
  json_decref(a.month);
  if (text == NULL) {
    llmux_http_send_error(req, 500, "server_error", "internal_error", "Out of memory.", NULL);
    return;
  }
  llmux_buf_appends(&b, text);
  free(text);
  send_json(req, 200, &b, rid);
}

/* ---- dispatch ----------------------------------------------------------- */

static void handle_health(llmux_gateway_t *gw, llmux_http_req_t *req, const char *rid) {
  llmux_buf_t b = {0};
  size_t i, enabled = 0;
  for (i = 0; i < gw->cfg->nproviders; i++) enabled += gw->cfg->providers[i]->enabled != 0;
  llmux_buf_printf(&b,
                   "{\"status\":\"ok\",\"uptime_s\":%llu,\"models\":%zu,"
                   "\"providers\":{\"enabled\":%zu,\"total\":%zu}}",
                   (unsigned long long)((llmux_now_us() - gw->started_us) / 1000000u),
                   gw->cfg->nmodels, enabled, gw->cfg->nproviders);
  send_json(req, 200, &b, rid);
}

/* Readiness, for a load balancer: 200 while the gateway takes traffic and
 * some provider is enabled; 503 while it drains (SIGTERM) or with none, or
 * while the shared state is away with shared_state_fail = closed.
 * /health stays the liveness answer, 200 as long as the process serves. */
static void handle_ready(llmux_gateway_t *gw, llmux_http_req_t *req, const char *rid) {
  llmux_buf_t b = {0};
  size_t i, enabled = 0;
  const char *status = "ready";
  for (i = 0; i < gw->cfg->nproviders; i++) enabled += gw->cfg->providers[i]->enabled != 0;
  if (gw->draining) status = "draining";
  else if (enabled == 0) status = "no_provider";
  else if (gw->shared && gw->cfg->server.shared_state_fail_closed) {
    llmux_rl_shared_stats_t st;
    llmux_rl_shared_stats(gw->rl, &st);
    if (!st.up) status = "shared_state_unavailable"; /* it would refuse every request */
  }
  llmux_buf_printf(&b, "{\"status\":\"%s\",\"providers\":{\"enabled\":%zu,\"total\":%zu}}",
                   status, enabled, gw->cfg->nproviders);
  send_json(req, strcmp(status, "ready") == 0 ? 200 : 503, &b, rid);
}

static void method_not_allowed(llmux_http_req_t *req, const char *allow) {
  char msg[160];
  llmux_http_header_t h[2] = {JSON_CT, LLMUX_HTTP_HEADER_LIT("Allow", "")};
  llmux_buf_t body = {0};
  h[1].value = (llmux_str_t){allow, strlen(allow)};
  snprintf(msg, sizeof msg, "Method %s is not allowed on %.*s: use %s.", req->method,
           (int)(req->path.len > 80 ? 80 : req->path.len), req->path.base, allow);
  llmux_http_error_json(&body, "invalid_request_error", "method_not_allowed", msg, NULL);
  llmux_http_respond_buf(req, 405, h, 2, &body);
}

/* The same 405 in an inbound format's shape. */
static void inbound_method_not_allowed(llmux_http_req_t *req, const llmux_inbound_t *in,
                                       const char *rid) {
  char msg[160];
  llmux_http_header_t h[4] = {JSON_CT, LLMUX_HTTP_HEADER_LIT("Allow", "POST"),
                              LLMUX_HTTP_HEADER_LIT("x-request-id", ""),
                              LLMUX_HTTP_HEADER_LIT("request-id", "")};
  llmux_buf_t body = {0};
  h[2].value = h[3].value = (llmux_str_t){rid, strlen(rid)};
  snprintf(msg, sizeof msg, "Method %s is not allowed on %.*s: use POST.", req->method,
           (int)(req->path.len > 80 ? 80 : req->path.len), req->path.base);
  in->error_body(&body, 405, "invalid_request_error", "method_not_allowed", msg, rid);
  llmux_http_respond_buf(req, 405, h, 4, &body);
}

static int is_get(const llmux_http_req_t *req) {
  return strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
}

/* The caller's tenant into *t (NULL: llmux runs open, or the endpoint
 * takes no tenant key): 0, or -1 once answered 401. */
static int tenant_of(llmux_gateway_t *gw, llmux_http_req_t *req, const char *rid,
                     const llmux_tenant_t **t) {
  *t = NULL;
  if (!needs_key(gw, req)) return 0;
  *t = stashed_tenant(gw->current, req->data); /* on_head checked the key */
  if (*t == NULL) *t = authenticate(gw, req, rid);
  return *t != NULL ? 0 : -1;
}

/* ---- POST /v1/messages/count_tokens ---------------------------------------- */

static void inbound_error(llmux_http_req_t *req, const llmux_inbound_t *in, int status,
                          const char *code, const char *msg, const char *rid) {
  llmux_http_header_t h[3] = {JSON_CT, LLMUX_HTTP_HEADER_LIT("x-request-id", ""),
                              LLMUX_HTTP_HEADER_LIT("request-id", "")};
  llmux_buf_t body = {0};
  h[1].value = h[2].value = (llmux_str_t){rid, strlen(rid)};
  in->error_body(&body, status, "invalid_request_error", code, msg, rid);
  llmux_http_respond_buf(req, status, h, 3, &body);
}

/* The gateway's own estimate of a Messages request's input tokens (the
 * one rate limits reserve by: about bytes/4 of the text), for a model the
 * caller may use; nothing goes to a provider. {"input_tokens": N} */
static void handle_count_tokens(llmux_gateway_t *gw, llmux_http_req_t *req, const char *rid,
                                const llmux_proxy_opts_t *po) {
  const llmux_inbound_t *in = po->inbound;
  llmux_json_field_t f[] = {{"model"}, {"messages"}, {"tools"}};
  llmux_buf_t body = {0}, chat = {0}, out = {0};
  llmux_inbound_err_t err;
  llmux_resolution_t res;
  void *state = NULL;
  char model[256];
  int rc;
  llmux_http_req_take_body(req, &body);
  rc = in->request(body.base, body.len, LLMUX_INBOUND_COUNT_ONLY, &chat, &state, &err);
  if (rc != 0) {
    inbound_error(req, in, rc == LLMUX_EINVAL ? err.status : 500,
                  rc == LLMUX_EINVAL ? "invalid_request" : "out_of_memory",
                  rc == LLMUX_EINVAL ? err.message : "Out of memory.", rid);
  } else if (llmux_json_scan(chat.base, chat.len, f, LLMUX_COUNTOF(f), NULL, NULL) != 0 ||
             llmux_json_unquote(f[0].value, model, sizeof model) != 0) {
    inbound_error(req, in, 500, "internal_error", "The request could not be estimated.", rid);
  } else if (llmux_resolve(gw->cfg, model, &res) != 0 ||
             (po->tenant != NULL && !llmux_tenant_may_use(po->tenant, &res, NULL))) {
    char msg[320];
    snprintf(msg, sizeof msg, "The model `%.200s` does not exist or you do not have access "
             "to it.", model);
    inbound_error(req, in, 404, "model_not_found", msg, rid);
  } else {
    llmux_buf_printf(&out, "{\"input_tokens\":%llu}",
                     (unsigned long long)llmux_rl_estimate_fields(f, LLMUX_COUNTOF(f)));
    send_json(req, 200, &out, rid);
  }
  in->state_free(state);
  llmux_buf_free(&body);
  llmux_buf_free(&chat);
}

/* What the gateway answers itself, at once (the proxy aside). */
static void answer(llmux_gateway_t *gw, llmux_http_req_t *req, const char *rid,
                   const llmux_proxy_opts_t *po) {
  llmux_str_t p = req->path;
  if (llmux_admin_path(p)) return llmux_admin_handle(gw, req, rid);
  if (llmux_scrape_path(p)) return llmux_scrape_handle(gw, req, rid);
  if (po->inbound != NULL && strcmp(req->method, "POST") != 0)
    return inbound_method_not_allowed(req, po->inbound, rid);
  if (po->endpoint != 0) return method_not_allowed(req, "POST");
  if (po->inbound != NULL) return handle_count_tokens(gw, req, rid, po);
  if (str_eq(p, "/v1/usage")) {
    if (!is_get(req)) return method_not_allowed(req, "GET, HEAD");
    return handle_usage(gw, req, rid, po->tenant);
  }
  if (str_eq(p, "/health")) {
    if (!is_get(req)) return method_not_allowed(req, "GET, HEAD");
    return handle_health(gw, req, rid);
  }
  if (str_eq(p, "/health/ready")) {
    if (!is_get(req)) return method_not_allowed(req, "GET, HEAD");
    return handle_ready(gw, req, rid);
  }
  if (str_eq(p, "/v1/models")) {
    llmux_http_header_t h[2] = {JSON_CT, LLMUX_HTTP_HEADER_LIT("x-request-id", "")};
    if (!is_get(req)) return method_not_allowed(req, "GET, HEAD");
    h[1].value = (llmux_str_t){rid, strlen(rid)};
    if (po->tenant != NULL)
      llmux_http_respond(req, 200, h, 2, po->tenant->models_json.base,
                         po->tenant->models_json.len);
    else
      llmux_http_respond(req, 200, h, 2, gw->current->models_json.base,
                         gw->current->models_json.len);
    return;
  }
  if (p.len > 11 && memcmp(p.base, "/v1/models/", 11) == 0) {
    if (!is_get(req)) return method_not_allowed(req, "GET, HEAD");
    return handle_model(gw, req, rid, po->tenant);
  }
  {
    char msg[200];
    snprintf(msg, sizeof msg, "Invalid URL (%s %.*s): see GET /v1/models and "
             "POST /v1/chat/completions.", req->method,
             (int)(p.len > 100 ? 100 : p.len), p.base);
    llmux_http_send_error(req, 404, "invalid_request_error", "unknown_url", msg, NULL);
  }
}

/* Every request's record begins here: the proxy takes it over, or it ends
 * once the answer went out. */
void llmux_api_on_request(llmux_http_req_t *req) {
  llmux_gateway_t *gw = req->server->data;
  llmux_proxy_opts_t po = {0, NULL, 0, NULL, NULL};
  llmux_reqlog_t rec;
  char rid[160];

  gw->requests++;
  llmux_respond_request_id(gw, req, rid);
  llmux_http_set_request_id(req, rid);
  llmux_reqlog_begin(gw, &rec, req, rid);
  rec.endpoint = classify(req->path, &po);
  gw->answered_status = 0;
  if (tenant_of(gw, req, rid, &po.tenant) == 0) {
    if (po.tenant != NULL) {
      rec.tenant = po.tenant->conf->name;
      rec.tenant_series = po.tenant->data;
    }
    if (po.inbound == &llmux_inbound_responses &&
        llmux_api_responses(gw, req, rid, &po, &rec) == 0)
      return; /* taken over, record and all (api_responses.c) */
    if (po.endpoint != 0 && strcmp(req->method, "POST") == 0) {
      po.gen = gw->current; /* the tenant's: the proxy pins it */
      po.rec = &rec;
      llmux_proxy_handle_opts(gw, req, &po);
      return;
    }
    answer(gw, req, rid, &po);
  } else {
    rec.error_code = "invalid_api_key";
  }
  rec.status = gw->answered_status;
  llmux_reqlog_done(gw, &rec);
}
