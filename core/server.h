/* The running gateway: one libuv loop with the HTTP front door, the
 * upstream pool and the configuration snapshot it serves. */
#ifndef LLMUX_SERVER_H
#define LLMUX_SERVER_H

#include <uv.h>

#include "config.h"
#include "http_server.h"
#include "providers.h"
#include "ratelimit.h"
#include "router.h"
#include "tenant.h"
#include "upstream.h"
#include "usage.h"

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

/* api.c: the request router behind the front door. on_head checks the
 * tenant key as soon as a head is parsed, so a client without one is
 * answered 401 before a byte of its body is read; on_request finds the
 * tenant on req->data. */
void llmux_api_on_head(llmux_http_req_t *req);
void llmux_api_on_request(llmux_http_req_t *req);
int llmux_api_build_models(const llmux_config_t *cfg, llmux_buf_t *out);
/* The same, listing only what tenant t may use (t NULL: everything). */
int llmux_api_build_tenant_models(const llmux_config_t *cfg, const llmux_tenant_t *t,
                                  llmux_buf_t *out);
/* The request's x-request-id: the client's when it sent a sane one, else a
 * fresh one, written into buf (at least 64 bytes). */
const char *llmux_api_request_id(llmux_gateway_t *gw, llmux_http_req_t *req, char *buf);

/* The 404 model_not_found for a name that does not resolve or, with a
 * tenant, one it may not use: the same answer for both (OpenAI's), naming
 * as the closest matches only names the tenant may use. */
int llmux_api_model_not_found(llmux_http_req_t *req, const llmux_config_t *cfg,
                              const llmux_tenant_t *tenant, const char *name);

/* proxy.c: POST /v1/chat/completions, /v1/completions, /v1/embeddings. */
void llmux_proxy_handle(llmux_gateway_t *gw, llmux_http_req_t *req, int endpoint);

/* How a request enters the proxy (issue 8). */
typedef struct llmux_proxy_opts_s {
  int endpoint;                  /* LLMUX_ENDPOINT_* (CHAT for the agent endpoint) */
  const llmux_tenant_t *tenant;  /* the caller; NULL when llmux runs open */
  int agent;                     /* 1: ARES's POST /v1/chat (agent.h) */
} llmux_proxy_opts_t;
void llmux_proxy_handle_opts(llmux_gateway_t *gw, llmux_http_req_t *req,
                             const llmux_proxy_opts_t *opts);

#endif
