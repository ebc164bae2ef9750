/* Answers every endpoint gives alike: the request id, the model that is
 * not there. Below api.c and proxy.c, so neither reaches into the other. */
#ifndef LLMUX_GATEWAY_RESPOND_H
#define LLMUX_GATEWAY_RESPOND_H

#include "gateway/server.h"

/* The request's x-request-id: the client's when it sent a sane one, else a
 * fresh one, written into buf (at least 64 bytes). */
const char *llmux_respond_request_id(llmux_gateway_t *gw, llmux_http_req_t *req, char *buf);

/* The 404 model_not_found for a name that does not resolve or, with a
 * tenant, one it may not use: the same answer for both (OpenAI's), naming
 * as the closest matches only names the tenant may use. */
int llmux_respond_model_not_found(llmux_http_req_t *req, const llmux_config_t *cfg,
                              const llmux_tenant_t *tenant, const char *name);

#endif
