#include "gateway/api.h"

#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/log.h"
#include "base/util.h"

/* Tenants and their usage. The database is opened (and this month's rows
 * loaded) before the gateway listens: a blocking start-up step. */
static int init_tenants(llmux_gateway_t *gw) {
  char err[512];
  int rc = llmux_tenants_init(&gw->tenants, gw->cfg, llmux_api_build_tenant_models);
  if (rc != 0) return rc;
  rc = llmux_usage_open(gw->loop, gw->cfg->server.usage_db, llmux_usage_today(), &gw->usage,
                        err, sizeof err);
  if (rc != 0) llmux_error("%s", err);
  return rc;
}

static void free_tenants(llmux_gateway_t *gw) {
  llmux_tenants_free(&gw->tenants);
}

static int init_routing(llmux_gateway_t *gw) {
  const llmux_config_t *cfg = gw->cfg;
  llmux_router_options_t ro;
  size_t i;
  int rc;
  llmux_router_options_default(&ro);
  ro.failures = (unsigned)(cfg->server.cooldown_failures ? cfg->server.cooldown_failures : 1);
  ro.window_ms = cfg->server.cooldown_window_ms;
  ro.cooldown_ms = cfg->server.cooldown_ms;
  rc = llmux_router_new(cfg, &ro, &gw->router);
  if (rc != 0) return rc;
  rc = llmux_rl_memory_store_new(4096 + 2 * cfg->nroutes, &gw->rl);
  if (rc != 0) return rc;
  rc = llmux_rl_configure(gw->rl, cfg);
  for (i = 0; rc == 0 && i < cfg->nproviders; i++) {
    const llmux_limits_t *w = &cfg->providers[i]->wide_limits;
    llmux_rl_key_t key = {cfg->providers[i]->name, NULL};
    if (w->requests_per_minute || w->requests_per_day || w->tokens_per_minute ||
        w->tokens_per_day)
      rc = llmux_rl_set_limits(gw->rl, &key, w);
  }
  return rc;
}

static void free_routing(llmux_gateway_t *gw) {
  if (gw->router) llmux_router_free(gw->router);
  if (gw->rl) llmux_rl_store_destroy(gw->rl);
  gw->router = NULL;
  gw->rl = NULL;
}

int llmux_gateway_init(llmux_gateway_t *gw, uv_loop_t *loop, const llmux_config_t *cfg,
                       llmux_providers_t *provs) {
  llmux_http_options_t opts;
  int rc;
  memset(gw, 0, sizeof *gw);
  gw->loop = loop;
  gw->cfg = cfg;
  gw->provs = provs;
  gw->started_us = llmux_now_us();
  gw->id_state = gw->started_us ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;
  rc = llmux_api_build_models(cfg, &gw->models_json);
  if (rc != 0) return rc;
  memset(&opts, 0, sizeof opts);
  opts.max_header = cfg->server.max_header;
  opts.max_body = cfg->server.max_body;
  opts.header_timeout_ms = cfg->server.header_timeout_ms;
  opts.idle_timeout_ms = cfg->server.idle_timeout_ms;
  opts.max_connections = cfg->server.max_connections > UINT_MAX
                             ? UINT_MAX
                             : (unsigned)cfg->server.max_connections;
  opts.max_memory = (size_t)cfg->server.max_memory;
  opts.on_head = llmux_api_on_head;
  opts.on_request = llmux_api_on_request;
  rc = llmux_http_server_init(loop, &gw->http, &opts);
  if (rc != 0) goto fail;
  gw->http.data = gw;
  rc = init_routing(gw);
  if (rc != 0) goto fail;
  rc = init_tenants(gw);
  if (rc != 0) goto fail;
  rc = llmux_upstream_new(loop, NULL, &gw->up);
  if (rc != 0) goto fail;
  return 0;
fail:
  if (gw->usage) llmux_usage_close(gw->usage, NULL, NULL);
  gw->usage = NULL;
  free_tenants(gw);
  free_routing(gw);
  llmux_buf_free(&gw->models_json);
  return rc;
}

int llmux_gateway_listen(llmux_gateway_t *gw, const char *host, int port) {
  return llmux_http_server_listen(&gw->http, host, port);
}

static void close_step(llmux_gateway_t *gw) {
  if (--gw->close_pending > 0) return;
  free_tenants(gw);
  free_routing(gw);
  llmux_buf_free(&gw->models_json);
  if (gw->close_cb) gw->close_cb(gw);
}

static void on_usage_closed(llmux_usage_store_t *s, void *arg) {
  (void)s;
  close_step(arg);
}

static void on_http_closed(llmux_http_server_t *srv) {
  llmux_gateway_t *gw = srv->data;
  /* The front door first: aborting client requests cancelled their upstream
   * requests, so the pool now closes with nothing running. Its handles are
   * closed by the time uv_run() returns. */
  llmux_upstream_close(gw->up, NULL);
  gw->up = NULL;
  /* Every request is finished and counted: write the last usage now, on
   * this thread, so a clean stop loses nothing. */
  if (gw->usage) {
    gw->close_pending++;
    llmux_usage_close(gw->usage, on_usage_closed, gw);
    gw->usage = NULL;
  }
  close_step(gw);
}

void llmux_gateway_close(llmux_gateway_t *gw, void (*cb)(llmux_gateway_t *gw)) {
  gw->close_cb = cb;
  gw->close_pending = 1;
  llmux_http_server_close(&gw->http, on_http_closed);
}

static void on_signal(uv_signal_t *h, int signum) {
  llmux_gateway_t *gw = h->data;
  if (gw->stopping) return;
  gw->stopping = 1;
  llmux_info("received %s: shutting down", signum == SIGINT ? "SIGINT" : "SIGTERM");
  uv_close((uv_handle_t *)&gw->sigint, NULL);
  uv_close((uv_handle_t *)&gw->sigterm, NULL);
  llmux_gateway_close(gw, NULL);
}

static void log_start(const llmux_gateway_t *gw) {
  size_t i, enabled = 0;
  for (i = 0; i < gw->cfg->nproviders; i++) enabled += gw->cfg->providers[i]->enabled != 0;
  llmux_log(LLMUX_LOG_INFO | LLMUX_LOG_ALWAYS, "llmux listening on http://%s%s%s:%d (%zu models, %zu of %zu providers enabled)",
             strchr(gw->cfg->server.host, ':') ? "[" : "", gw->cfg->server.host,
             strchr(gw->cfg->server.host, ':') ? "]" : "", gw->http.port, gw->cfg->nmodels,
             enabled, gw->cfg->nproviders);
  if (gw->cfg->ntenants == 0)
    llmux_warn("no [tenant] is configured: llmux runs open, every endpoint answers without "
               "an API key (fine for local use; `llmux key new NAME` makes a key)");
  else if (gw->cfg->server.usage_db == NULL)
    llmux_warn("usage_db is not set in [server]: tenant usage and daily quotas are kept in "
               "memory only and start again from zero after a restart");
  if (enabled == 0)
    llmux_warn("no provider is enabled: set the API key variables the provider files name "
               "(api_key_env), e.g. GROQ_API_KEY");
}

int llmux_serve(const llmux_config_t *cfg, llmux_providers_t *provs) {
  llmux_gateway_t gw;
  uv_loop_t loop;
  int rc;
  signal(SIGPIPE, SIG_IGN);
  if ((rc = uv_loop_init(&loop)) != 0) return rc;
  rc = llmux_gateway_init(&gw, &loop, cfg, provs);
  if (rc != 0) {
    llmux_error("cannot start: %s", llmux_strerror(rc));
    uv_loop_close(&loop);
    return rc;
  }
  rc = llmux_gateway_listen(&gw, cfg->server.host, cfg->server.port);
  if (rc != 0) {
    llmux_error("cannot listen on %s: %s", cfg->server.listen, uv_strerror(rc));
    llmux_gateway_close(&gw, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return rc;
  }
  uv_signal_init(&loop, &gw.sigint);
  uv_signal_init(&loop, &gw.sigterm);
  gw.sigint.data = gw.sigterm.data = &gw;
  uv_signal_start(&gw.sigint, on_signal, SIGINT);
  uv_signal_start(&gw.sigterm, on_signal, SIGTERM);
  log_start(&gw);
  uv_run(&loop, UV_RUN_DEFAULT);
  rc = uv_loop_close(&loop);
  if (rc != 0) llmux_warn("event loop closed with handles open: %s", uv_strerror(rc));
  llmux_info("stopped after %llu requests", (unsigned long long)gw.requests);
  return 0;
}
