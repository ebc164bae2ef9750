/* The proxy: a request resolved, admitted and sent to its routes in turn. */
#ifndef LLMUX_GATEWAY_PROXY_H
#define LLMUX_GATEWAY_PROXY_H

#include "gateway/server.h"

/* proxy.c: POST /v1/chat/completions, /v1/completions, /v1/embeddings (and
 * POST /v1/messages, through an inbound format). */
void llmux_proxy_handle(llmux_gateway_t *gw, llmux_http_req_t *req, int endpoint);
/* Frees the finished proxies gw keeps for reuse (at its close). */
void llmux__proxy_spares_free(llmux_gateway_t *gw);

/* How a request enters the proxy (issue 8). */
typedef struct llmux_proxy_opts_s {
  int endpoint;                  /* LLMUX_ENDPOINT_* (CHAT for the agent endpoint) */
  const llmux_tenant_t *tenant;  /* the caller; NULL when llmux runs open */
  int agent;                     /* 1: ARES's POST /v1/chat (agent.h) */
  llmux_generation_t *gen;       /* the generation `tenant` belongs to, which
                                    the request pins; NULL: gw->current */
  const struct llmux_reqlog_s *rec; /* the request's record, begun by the
                                    caller (gateway/reqlog.h): the proxy takes
                                    it over (a copy) and ends it; NULL: the
                                    proxy begins its own */
  const struct llmux_inbound_s *inbound; /* the client's API when it is not
                                    OpenAI's (gateway/inbound.h): its body is
                                    converted to chat up front and the answer
                                    and errors back; NULL: chat as it is */
  void *inbound_arg;             /* the format's argument (inbound.h,
                                    request_arg), owned by the proxy from
                                    the call on; NULL: none */
} llmux_proxy_opts_t;
void llmux_proxy_handle_opts(llmux_gateway_t *gw, llmux_http_req_t *req,
                             const llmux_proxy_opts_t *opts);

/* The drain's last step (issue 12): ends every request still in the proxy.
 * A stream already started gets the SSE error event a broken stream gets,
 * code `shutting_down` (OpenAI's shape, or ARES's on POST /v1/chat), and
 * ends; a request not answered yet gets 503 `shutting_down`. Upstream
 * requests are cancelled. Returns how many were ended. Call it from the
 * loop, never from inside a request's own callback. */
size_t llmux_proxy_shutdown_all(llmux_gateway_t *gw);

#endif
