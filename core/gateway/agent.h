/* ARES's agent endpoint, POST /v1/chat, as an output mode of the proxy.
 *
 * The request {"message", "agent_type", "system"?, "history"?, "max_tokens"?,
 * "temperature"?, "stream"?} becomes an OpenAI chat body whose model is the
 * agent's profile (or the tenant's `agent.NAME = PROFILE` override); the
 * proxy routes it like any other request. The OpenAI-format answer is
 * turned into ARES's on the way out: the whole body for a plain answer (the
 * proxy buffers it anyway), event by event for a stream.
 *
 * Plain answer:
 *   {"id", "agent_type", "tier" (the profile), "model" (the canonical model
 *    that served), "provider", "message", "finish_reason",
 *    "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}
 * Stream (text/event-stream, one `data: JSON` line per event):
 *   {"type":"delta","content":"..."}          for each piece of text
 *   {"type":"done", ...the plain answer's fields, message in full}   last
 *   {"type":"error","error":"...","code":"UPSTREAM_UNAVAILABLE"}  if it broke
 * Errors (not 2xx), ARES's shape:
 *   {"error": "Rate limit exceeded for provider 'groq'",
 *    "code": "RATE_LIMIT_EXCEEDED", "retry_after": 60}
 *   (retry_after only when there is one; Retry-After is set too). */
#ifndef LLMUX_AGENT_H
#define LLMUX_AGENT_H

#include <stddef.h>
#include <stdint.h>

#include "config/config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct llmux_agent_req_s {
  const llmux_agent_conf_t *agent;
  const llmux_profile_conf_t *profile; /* after the tenant's override */
  int stream;
} llmux_agent_req_t;

/* Parses an ARES body and writes the OpenAI chat body to *out. 0; or
 * LLMUX_EINVAL (INVALID_REQUEST) / LLMUX_ENOTFOUND (UNKNOWN_AGENT_TYPE) with
 * a message for the client in msg. `tenant` may be NULL. */
int llmux_agent_build_request(const llmux_config_t *cfg, const llmux_tenant_conf_t *tenant,
                              const char *body, size_t len, llmux_agent_req_t *req,
                              llmux_buf_t *out, char *msg, size_t msglen);

typedef struct llmux_agent_info_s {
  const char *agent_type;
  const char *tier;
  const char *model;
  const char *provider;
} llmux_agent_info_t;

/* An OpenAI chat.completion body -> the ARES answer. 0 or LLMUX_EUPSTREAM. */
int llmux_agent_answer(const char *openai, size_t len, const llmux_agent_info_t *info,
                       llmux_buf_t *out);

/* Per-request stream state, zeroed before use. */
typedef struct llmux_agent_stream_s {
  llmux_buf_t pending;  /* an unfinished line of the upstream stream */
  llmux_buf_t text;     /* the message so far */
  char id[128];
  char finish[32];
  int64_t prompt_tokens, completion_tokens; /* -1 until known */
  int started;
} llmux_agent_stream_t;

/* Feeds upstream SSE bytes; appends ARES events to *out. 0 or LLMUX_ENOMEM. */
int llmux_agent_stream_feed(llmux_agent_stream_t *st, const char *data, size_t len,
                            llmux_buf_t *out);
/* The final event. */
int llmux_agent_stream_end(llmux_agent_stream_t *st, const llmux_agent_info_t *info,
                           llmux_buf_t *out);
void llmux_agent_stream_free(llmux_agent_stream_t *st);

/* The ARES code for an error answer: from our OpenAI-style code when it is
 * one of ARES's, else from the HTTP status. */
const char *llmux_agent_error_code(int status, const char *code);
/* {"error": msg, "code": code[, "retry_after": N]} */
int llmux_agent_error_json(llmux_buf_t *out, const char *msg, const char *code,
                           uint64_t retry_after_s);

#ifdef __cplusplus
}
#endif
#endif /* LLMUX_AGENT_H */
