/* A generation: everything built from one load of the configuration, the
 * catalog and its routes, the providers with their plugin instances, the
 * router, the tenants' keys, the /v1/models body. Nothing in it changes
 * after it is built; a reload builds a new one.
 *
 * Lifetime. A generation is reference-counted. The gateway holds one
 * reference to its current generation; each request takes one when it
 * starts (llmux_generation_ref, an increment: no allocation) and drops it
 * when it is done, after its last byte (llmux_generation_unref). So a
 * stream keeps the providers and routes it started with while a reload
 * makes a newer generation current, and the old one is freed, plugin
 * instances destroyed and configuration released, when its last request
 * ends.
 *
 * What outlives generations is not in them: it is the gateway's, handed to
 * every generation as llmux_gen_shared_t and keyed by names, never by
 * positions in one configuration, so a reload keeps it for every route and
 * tenant that is still configured:
 *   - rate-limit windows and provider-synced headroom, by (provider, model)
 *     and provider; tenants' minute windows by "tenant:NAME";
 *   - breakers, latency averages and requests in flight, by route name
 *     (llmux_route_table_t);
 *   - plugins, loaded once per path, and TLS client contexts, by settings
 *     (llmux_provider_cache_t: a pooled upstream connection keeps its
 *     context, so contexts live until the gateway closes);
 *   - usage (per tenant name) and the upstream keep-alive pools (per
 *     origin) stay on the gateway itself.
 *
 * Everything runs on the loop thread. */
#ifndef LLMUX_GATEWAY_GENERATION_H
#define LLMUX_GATEWAY_GENERATION_H

#include <stdint.h>

#include "config/config.h"
#include "plugin/providers.h"
#include "route/ratelimit.h"
#include "route/router.h"
#include "tenant/tenant.h"

typedef struct llmux_generation_s llmux_generation_t;

/* Called once the last reference went and what the generation owned is
 * freed, just before its own memory is: only `data` may be read. */
typedef void (*llmux_generation_free_cb)(llmux_generation_t *gen);

/* What generations share, borrowed by each: every field must outlive every
 * generation built over it. */
typedef struct llmux_gen_shared_s {
  llmux_route_table_t *routes;    /* breakers, latency, in flight */
  llmux_rl_store_t *rl;           /* route and provider-wide limits */
  llmux_rl_store_t *tenant_rl;    /* tenants' minute windows */
  llmux_provider_cache_t *cache;  /* plugins, TLS contexts (llmux_generation_load) */
  /* Called first when a generation is built over a loaded configuration,
   * may be NULL: makes the stores that depend on it (the first
   * generation's [server] shared_state chooses the rate-limit store) and
   * fills *rl and *tenant_rl when they were NULL. 0, or LLMUX_E* (the
   * generation is not built). */
  int (*prepare)(void *arg, const llmux_config_t *cfg, llmux_rl_store_t **rl,
                 llmux_rl_store_t **tenant_rl);
  void *prepare_arg;
} llmux_gen_shared_t;

struct llmux_generation_s {
  void *data;
  /* public */
  llmux_generation_free_cb on_free;  /* may be NULL */
  /* read-only */
  uint64_t number;              /* given by the builder: grows with each load */
  int64_t loaded_at_ms;         /* wall clock (Unix ms) when it was built */
  const llmux_config_t *cfg;    /* cfg->files and cfg->file_sha256: what was read */
  llmux_providers_t *provs;
  llmux_router_t *router;       /* this snapshot's routes -> shared route state */
  llmux_tenants_t tenants;      /* keys and limits; tenants.n == 0: open */
  llmux_buf_t models_json;      /* GET /v1/models without tenants */
  unsigned refs;
  /* private */
  llmux_config_t *own_cfg;      /* set when built by llmux_generation_load */
  llmux_providers_t own_provs;
  struct llmux_reqlog_tenant_s *tenant_series; /* one per tenant: tenants.items[i].data */
  struct llmux_reqlog_route_s *route_series;   /* one per cfg->routes[i] */
  void *reserved[2];
};

/* A generation over a configuration and providers the caller keeps
 * (borrowed: they must outlive it; `llmux chat` and tests). Applies cfg's
 * limits to the shared stores. Holds one reference for the caller.
 * 0 and *out, or LLMUX_ENOMEM / LLMUX_ETOOLARGE (a limit store is full). */
/* The metric series kept for route r of g (reqlog.h); NULL for a route
 * not in g's configuration. */
struct llmux_reqlog_route_s *llmux_generation_route_series(const llmux_generation_t *g,
                                                           const struct llmux_route_conf_s *r);

int llmux_generation_new(const llmux_gen_shared_t *sh, const llmux_config_t *cfg,
                         llmux_providers_t *provs, uint64_t number,
                         llmux_generation_t **out);

/* Loads `config_path` and builds its providers (instances and TLS contexts,
 * plugins from the config's plugin_dir, else `plugin_dir`, through
 * sh->cache) into a generation that owns them. Errors and warnings go to
 * diag as `file:line: message`. On an error nothing is kept and the limits
 * in force are unchanged (they are applied last; the cache may keep a
 * plugin it loaded), and LLMUX_ECONFIG returns. */
int llmux_generation_load(const llmux_gen_shared_t *sh, const char *config_path,
                          const char *plugin_dir, uint64_t number, llmux_diag_t *diag,
                          llmux_generation_t **out);

static inline llmux_generation_t *llmux_generation_ref(llmux_generation_t *gen) {
  gen->refs++;
  return gen;
}

/* Drops one reference; the last one frees the generation. */
void llmux_generation_unref(llmux_generation_t *gen);

#endif
