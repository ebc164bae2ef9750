/* The gateway's endpoints: which handler serves a request. */
#ifndef LLMUX_GATEWAY_API_H
#define LLMUX_GATEWAY_API_H

#include "gateway/server.h"

/* api.c: the request router behind the front door. on_head checks the
 * tenant key as soon as a head is parsed, so a client without one is
 * answered 401 before a byte of its body is read; on_request finds the
 * tenant on req->data. */
void llmux_api_on_head(llmux_http_req_t *req);
void llmux_api_on_request(llmux_http_req_t *req);
/* The front door's on_status hook (records what was answered). */
void llmux_api_on_status(llmux_http_req_t *req, int status);
int llmux_api_build_models(const llmux_config_t *cfg, llmux_buf_t *out);
/* The same, listing only what tenant t may use (t NULL: everything). */
int llmux_api_build_tenant_models(const llmux_config_t *cfg, const llmux_tenant_t *t,
                                  llmux_buf_t *out);

#endif
