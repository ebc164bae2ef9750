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

/* api_responses.c: POST /v1/responses (through the proxy, with the stored
 * response previous_response_id names), GET and DELETE
 * /v1/responses/{id}, each tenant seeing its own. 0: taken over, the
 * record `rec` included (its copy is ended there or by the proxy); -1: not
 * its method on POST's path (the caller answers, 405). */
struct llmux_proxy_opts_s;
struct llmux_reqlog_s;
int llmux_api_responses(llmux_gateway_t *gw, llmux_http_req_t *req, const char *rid,
                        const struct llmux_proxy_opts_s *po, struct llmux_reqlog_s *rec);

#endif
