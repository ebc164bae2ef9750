/* The running gateway: one libuv loop with the HTTP front door, the
 * upstream pool and the configuration snapshot it serves. */
#ifndef LLMUX_SERVER_H
#define LLMUX_SERVER_H

#include <uv.h>

#include "config/config.h"
#include "http/http_server.h"
#include "plugin/providers.h"
#include "route/ratelimit.h"
#include "route/router.h"
#include "tenant/tenant.h"
#include "net/upstream.h"
#include "tenant/usage.h"

typedef struct llmux_gateway_s {
  void *data;
  /* read-only */
  uv_loop_t *loop;
  const llmux_config_t *cfg;
  llmux_providers_t *provs;
  llmux_http_server_t http;
  llmux_upstream_t *up;
  llmux_router_t *router;      /* route order, latency, cooldowns */
  llmux_rl_store_t *rl;        /* rate-limit state */
  llmux_buf_t models_json;     /* GET /v1/models, built once per snapshot */
  llmux_tenants_t tenants;     /* keys and limits; tenants.n == 0: open */
  llmux_usage_store_t *usage;  /* per-tenant usage, persisted to usage_db */
  uint64_t started_us;
  uint64_t requests;           /* requests handled */
  uint64_t id_state;           /* request-id generator state */
  /* private */
  uv_signal_t sigint, sigterm;
  int stopping;
  int close_pending;
  void (*close_cb)(struct llmux_gateway_s *gw);
} llmux_gateway_t;

/* Serves until SIGINT/SIGTERM. Returns 0 on a clean stop. */
int llmux_serve(const llmux_config_t *cfg, llmux_providers_t *provs);

/* Lower-level pieces, for tests that run a gateway on their own loop. */
int llmux_gateway_init(llmux_gateway_t *gw, uv_loop_t *loop, const llmux_config_t *cfg,
                       llmux_providers_t *provs);
int llmux_gateway_listen(llmux_gateway_t *gw, const char *host, int port);
void llmux_gateway_close(llmux_gateway_t *gw, void (*cb)(llmux_gateway_t *gw));

#endif
