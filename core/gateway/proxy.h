/* The proxy: a request resolved, admitted and sent to its routes in turn. */
#ifndef LLMUX_GATEWAY_PROXY_H
#define LLMUX_GATEWAY_PROXY_H

#include "gateway/server.h"

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
