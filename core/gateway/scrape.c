/* GET /metrics and the gauges read at scrape time (see scrape.h). */
#include "gateway/scrape.h"

#include <string.h>

#include "base/util.h"
#include "gateway/admin.h"
#include "gateway/fleet.h"
#include "shared/rl_shared.h"

static const char *const dimension_names[LLMUX_RL_NDIMS] = {
    [LLMUX_RL_REQ_MINUTE] = "requests_minute",
    [LLMUX_RL_REQ_DAY] = "requests_day",
    [LLMUX_RL_TOK_MINUTE] = "tokens_minute",
    [LLMUX_RL_TOK_DAY] = "tokens_day",
};

/* The breaker as the metric numbers it: 0 closed, 1 half-open, 2 open. */
static double breaker_value(llmux_breaker_state_t s) {
  return s == LLMUX_BREAKER_OPEN ? 2 : s == LLMUX_BREAKER_HALF_OPEN ? 1 : 0;
}

static void collect_route(llmux_gateway_t *gw, const llmux_route_conf_t *r, uint64_t now) {
  llmux_obs_t *o = &gw->obs;
  const char *prov = r->provider->name;
  llmux_rl_key_t key = {prov, r->id};
  llmux_rl_left_t left[LLMUX_RL_NDIMS];
  llmux_route_stats_t st;
  int d;
  llmux_router_stats(gw->current->router, r->index, now, &st);
  llmux_series_set(llmux_metric_series3(o->route_state, prov, r->id, NULL),
                   breaker_value(st.state));
  if (st.observed)
    llmux_series_set(llmux_metric_series3(o->route_latency, prov, r->id, NULL),
                     st.latency_ms / 1000.0);
  if (llmux_rl_left(gw->rl, &key, now, left) != 0) return;
  for (d = 0; d < LLMUX_RL_NDIMS; d++)
    if (left[d].limited)
      llmux_series_set(llmux_metric_series3(o->route_remaining, prov, r->id, dimension_names[d]),
                       (double)left[d].remaining);
}

static void collect_routes(llmux_gateway_t *gw) {
  const llmux_config_t *cfg = gw->current->cfg;
  uint64_t now = uv_now(gw->loop);
  size_t i;
  llmux_metric_reset_unset(gw->obs.route_state);
  llmux_metric_reset_unset(gw->obs.route_remaining);
  llmux_metric_reset_unset(gw->obs.route_latency);
  for (i = 0; i < cfg->nroutes; i++) collect_route(gw, cfg->routes[i], now);
}

static void collect_tenants(llmux_gateway_t *gw) {
  const llmux_tenants_t *ts = &gw->current->tenants;
  int today = llmux_usage_today();
  size_t i;
  llmux_metric_reset_unset(gw->obs.tenant_budget);
  for (i = 0; i < ts->n && gw->usage != NULL; i++) {
    const llmux_tenant_conf_t *c = ts->items[i].conf;
    llmux_usage_counts_t day, month;
    double left;
    if (!c->has_budget) continue;
    llmux_usage_tenant_totals(gw->usage, c->name, today, &day, &month);
    left = c->budget_usd_per_month - month.cost_usd;
    llmux_series_set(llmux_metric_series3(gw->obs.tenant_budget, c->name, NULL, NULL),
                     left > 0 ? left : 0);
  }
}

static void collect_front(llmux_gateway_t *gw) {
  llmux_obs_t *o = &gw->obs;
  llmux_http_conn_stats_t cs;
  llmux_http_server_conn_stats(&gw->http, &cs);
  llmux_series_set(llmux_metric_series3(o->connections, "idle", NULL, NULL), cs.idle);
  llmux_series_set(llmux_metric_series3(o->connections, "reading", NULL, NULL), cs.reading);
  llmux_series_set(llmux_metric_series3(o->connections, "active", NULL, NULL), cs.active);
  llmux_series_set(llmux_metric_series3(o->connections, "closing", NULL, NULL), cs.closing);
}

/* Each part of the shared state counts its own failures. */
static void collect_shared(llmux_gateway_t *gw) {
  llmux_obs_t *o = &gw->obs;
  llmux_rl_shared_stats_t st;
  if (!gw->shared) return;
  llmux_rl_shared_stats(gw->rl, &st);
  llmux_series_set(llmux_metric_series3(o->shared_errors, "rate_limits", NULL, NULL),
                   (double)st.errors);
  llmux_series_set(llmux_metric_series3(o->shared_up, "rate_limits", NULL, NULL), st.up);
  llmux_series_set(llmux_metric_series3(o->shared_errors, "usage", NULL, NULL),
                   (double)llmux_fleet_usage_errors(gw));
  llmux_series_set(llmux_metric_series3(o->shared_errors, "breakers", NULL, NULL),
                   (double)llmux_fleet_breakers_errors(gw));
  llmux_series_set(llmux_metric_series3(o->shared_errors, "responses", NULL, NULL),
                   (double)llmux_fleet_responses_errors(gw));
  llmux_series_set(llmux_metric_series3(o->shared_up, "responses", NULL, NULL),
                   llmux_fleet_responses_up(gw));
  if (gw->fleet_cache) /* cache = redis */
    llmux_series_set(llmux_metric_series3(o->shared_errors, "cache", NULL, NULL),
                     (double)llmux_fleet_cache_errors(gw));
}

static void collect(llmux_metrics_t *m, void *arg) {
  llmux_gateway_t *gw = arg;
  (void)m;
  if (gw->current == NULL) return;
  llmux_series_set(llmux_metric_series(gw->obs.generation, NULL), (double)gw->current->number);
  collect_routes(gw);
  collect_tenants(gw);
  collect_front(gw);
  collect_shared(gw);
}

int llmux_scrape_init(llmux_gateway_t *gw) {
  return llmux_metrics_on_collect(gw->obs.reg, collect, gw);
}

int llmux_scrape_path(llmux_str_t path) {
  return path.len == 8 && memcmp(path.base, "/metrics", 8) == 0;
}

void llmux_scrape_handle(llmux_gateway_t *gw, llmux_http_req_t *req, const char *rid) {
  llmux_http_header_t h[2] = {LLMUX_HTTP_HEADER_LIT("Content-Type", LLMUX_METRICS_CONTENT_TYPE),
                              LLMUX_HTTP_HEADER_LIT("x-request-id", "")};
  llmux_buf_t body = {0};
  if (!llmux_admin_allow(gw, req, rid)) return;
  if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
    llmux_http_header_t allow[2] = {LLMUX_HTTP_HEADER_LIT("Content-Type", "application/json"),
                                    LLMUX_HTTP_HEADER_LIT("Allow", "GET, HEAD")};
    llmux_http_error_json(&body, "invalid_request_error", "method_not_allowed",
                          "Method not allowed on /metrics: use GET.", NULL);
    llmux_http_respond_buf(req, 405, allow, 2, &body);
    return;
  }
  if (llmux_metrics_render(gw->obs.reg, &body) != 0) {
    llmux_buf_free(&body);
    llmux_http_send_error(req, 503, "server_error", "out_of_memory", "Out of memory.", NULL);
    return;
  }
  h[1].value = (llmux_str_t){rid, strlen(rid)};
  llmux_http_respond_buf(req, 200, h, 2, &body);
}
