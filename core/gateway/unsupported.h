/* A request its model cannot serve at all (issue 15): a 400 the client
 * should not retry, told apart from "no route available now" (a 503).
 *
 * The router filters out routes whose model lacks a capability the request
 * needs (route/router.h, LLMUX_SKIP_CAPABILITY). When that filter removed
 * every route of the resolution, nothing else (a disabled provider, a
 * cooldown, a rate limit) stands between the request and an answer: no
 * route of this model will ever take it, and the answer is 400
 * `model_not_supported` naming what is missing. When any route was skipped
 * for another reason, or some route remains, this says nothing and the
 * usual 503/429 stands. Pure: no I/O. */
#ifndef LLMUX_GATEWAY_UNSUPPORTED_H
#define LLMUX_GATEWAY_UNSUPPORTED_H

#include "route/router.h"

/* 1 when every route of `plan` (as llmux_router_order filled it, with its
 * `skipped` array) was filtered for capability, with the client's message
 * for model `model` appended to `msg`:
 *   embeddings endpoint  "Model 'x' is not an embeddings model (no route of
 *                         it declares the 'embeddings' capability)."
 *   chat to an embeddings model
 *                        "Model 'x' is an embeddings model: it serves
 *                         /v1/embeddings only."
 *   a capability no route has
 *                        "Model 'x' does not support tools (no route of it
 *                         declares the 'tools' capability)."
 *   capabilities each route lacks a different one of
 *                        "Model 'x' does not support tools and vision in one
 *                         request (no route of it declares all of 'tools',
 *                         'vision')."
 * 0 otherwise (msg untouched). `endpoint` is LLMUX_ENDPOINT_*. */
int llmux_unsupported_message(const llmux_route_plan_t *plan, int endpoint, const char *model,
                              llmux_buf_t *msg);

#endif
