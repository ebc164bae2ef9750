/* Generations: built from one configuration load, shared by the requests
 * that started in them, freed by the last one (see generation.h). */
#include "gateway/generation.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/util.h"
#include "gateway/api.h"
#include "gateway/reqlog.h"

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The breaker's rule comes from [server]; its state from the shared table. */
static int build_router(llmux_generation_t *g, const llmux_gen_shared_t *sh) {
  const llmux_server_conf_t *s = &g->cfg->server;
  llmux_router_options_t ro;
  llmux_router_options_default(&ro);
  ro.failures = (unsigned)(s->cooldown_failures ? s->cooldown_failures : 1);
  ro.window_ms = s->cooldown_window_ms;
  ro.cooldown_ms = s->cooldown_ms;
  return llmux_router_new_shared(g->cfg, &ro, sh->routes, &g->router);
}

/* Every route's limits, then each provider's provider-wide ones. A
 * provider-wide key the store has but the configuration no longer limits
 * is given zeros, so a limit a reload removed is lifted; counts stay. */
static int apply_limits(llmux_rl_store_t *rl, const llmux_config_t *cfg) {
  uint64_t now = llmux_now_us() / 1000;
  size_t i;
  int rc = llmux_rl_configure(rl, cfg);
  for (i = 0; rc == 0 && i < cfg->nproviders; i++) {
    const llmux_limits_t *w = &cfg->providers[i]->wide_limits;
    llmux_rl_key_t key = {cfg->providers[i]->name, NULL};
    llmux_rl_snapshot_t snap;
    if (w->requests_per_minute || w->requests_per_day || w->tokens_per_minute ||
        w->tokens_per_day || llmux_rl_snapshot(rl, &key, now, &snap) == 0)
      rc = llmux_rl_set_limits(rl, &key, w);
  }
  return rc;
}

/* Room for each tenant's metric series, found by reqlog on first use. */
static int tenant_series(llmux_generation_t *g) {
  size_t i;
  if (g->tenants.n == 0) return 0;
  g->tenant_series = calloc(g->tenants.n, sizeof *g->tenant_series);
  if (g->tenant_series == NULL) return LLMUX_ENOMEM;
  for (i = 0; i < g->tenants.n; i++) g->tenants.items[i].data = &g->tenant_series[i];
  return 0;
}

/* Room for each route's metric series, with its label values. */
static int route_series(llmux_generation_t *g) {
  size_t i, n = g->cfg->nroutes;
  if (n == 0) return 0;
  g->route_series = calloc(n, sizeof *g->route_series);
  if (g->route_series == NULL) return LLMUX_ENOMEM;
  for (i = 0; i < n; i++) {
    const llmux_route_conf_t *r = g->cfg->routes[i];
    llmux_reqlog_route_t *s = &g->route_series[i];
    s->provider = r->provider->name;
    s->canonical = r->passthrough ? llmux_reqlog_star : r->model->id;
    s->model = r->passthrough ? llmux_reqlog_star : r->id;
  }
  return 0;
}

llmux_reqlog_route_t *llmux_generation_route_series(const llmux_generation_t *g,
                                                    const llmux_route_conf_t *r) {
  if (g->route_series == NULL || r->index >= g->cfg->nroutes) return NULL;
  return &g->route_series[r->index];
}

/* What is built over cfg and provs. The limits go last: they are the only
 * step that changes something in force (the shared stores). */
static int build(llmux_generation_t *g, const llmux_gen_shared_t *shared, uint64_t number) {
  llmux_gen_shared_t own = *shared, *sh = &own;
  int rc;
  if (sh->prepare != NULL && (rc = sh->prepare(sh->prepare_arg, g->cfg, &sh->rl,
                                               &sh->tenant_rl)) != 0)
    return rc;
  g->number = number;
  g->loaded_at_ms = wall_ms();
  g->refs = 1;
  rc = llmux_api_build_models(g->cfg, &g->models_json);
  if (rc == 0) rc = build_router(g, sh);
  if (rc == 0)
    rc = llmux_tenants_init_shared(&g->tenants, g->cfg, sh->tenant_rl,
                                   llmux_api_build_tenant_models);
  if (rc == 0) rc = tenant_series(g);
  if (rc == 0) rc = route_series(g);
  if (rc == 0) rc = apply_limits(sh->rl, g->cfg);
  return rc;
}

/* Frees what the generation holds (each part may be missing), not itself.
 * Plugin instances are destroyed with the providers; the plugins stay in
 * the cache. */
static void release(llmux_generation_t *g) {
  size_t i;
  llmux_buf_free(&g->models_json);
  llmux_tenants_free(&g->tenants);
  free(g->tenant_series);
  g->tenant_series = NULL;
  for (i = 0; g->route_series != NULL && i < g->cfg->nroutes; i++)
    llmux_reqlog_route_release(&g->route_series[i]);
  free(g->route_series);
  g->route_series = NULL;
  llmux_router_free(g->router);
  g->router = NULL;
  if (g->own_cfg != NULL) {
    llmux_providers_free(&g->own_provs);
    llmux_config_free(g->own_cfg);
    g->own_cfg = NULL;
  }
}

int llmux_generation_new(const llmux_gen_shared_t *sh, const llmux_config_t *cfg,
                         llmux_providers_t *provs, uint64_t number,
                         llmux_generation_t **out) {
  llmux_generation_t *g = calloc(1, sizeof *g);
  int rc;
  *out = NULL;
  if (g == NULL) return LLMUX_ENOMEM;
  g->cfg = cfg;
  g->provs = provs;
  rc = build(g, sh, number);
  if (rc != 0) {
    release(g);
    free(g);
    return rc;
  }
  *out = g;
  return 0;
}

int llmux_generation_load(const llmux_gen_shared_t *sh, const char *config_path,
                          const char *plugin_dir, uint64_t number, llmux_diag_t *diag,
                          llmux_generation_t **out) {
  llmux_generation_t *g = llmux_xcalloc(1, sizeof *g);
  const char *dir;
  int rc;
  *out = NULL;
  if (llmux_config_load(config_path, &g->own_cfg, diag) != 0) goto fail;
  dir = g->own_cfg->server.plugin_dir ? g->own_cfg->server.plugin_dir : plugin_dir;
  if (llmux_providers_build_cached(&g->own_provs, g->own_cfg, dir, sh->cache,
                                   LLMUX_PROVIDERS_CREATE | LLMUX_PROVIDERS_TLS, diag) != 0)
    goto fail;
  g->cfg = g->own_cfg;
  g->provs = &g->own_provs;
  rc = build(g, sh, number);
  if (rc != 0) {
    llmux_diag_add(diag, config_path, 0, LLMUX_DIAG_ERROR,
                   "cannot build the configuration: %s", llmux_strerror(rc));
    goto fail;
  }
  *out = g;
  return 0;
fail:
  release(g);
  free(g);
  return LLMUX_ECONFIG;
}

void llmux_generation_unref(llmux_generation_t *gen) {
  assert(gen->refs > 0 && "generation released more often than taken");
  if (--gen->refs > 0) return;
  release(gen);
  if (gen->on_free != NULL) gen->on_free(gen);
  free(gen);
}
