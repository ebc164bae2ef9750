/* Inbound formats: APIs other than OpenAI's chat that clients speak to the
 * gateway (issue 15: Anthropic's Messages API, POST /v1/messages).
 *
 * The proxy works in OpenAI chat from end to end: resolution, tenants,
 * limits, failover and every provider plugin see a chat request and answer
 * in chat. An inbound format is a translator around that path, in the shape
 * of Envoy AI Gateway's (STYLE.md): the client's body becomes an equivalent
 * chat body once, up front; the chat answer becomes the client's format on
 * the way out (the whole body, or a stream event by event); errors are
 * written in the client's shape. The proxy holds a `const llmux_inbound_t *`
 * (NULL on the chat endpoints, which pay nothing for this) and calls it at
 * four points: request conversion, emit, finish and error.
 *
 * Per-request state (a stream's state machine) is the format's, created by
 * `request` and released by `state_free`. Everything here is pure: no
 * gateway, no loop, so each conversion is unit-tested on its own. */
#ifndef LLMUX_GATEWAY_INBOUND_H
#define LLMUX_GATEWAY_INBOUND_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "base/split.h"
#include "llmux/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Why a client's body cannot be converted: a 400 in the format's shape. */
typedef struct llmux_inbound_err_s {
  int status;        /* 400 (413 for a body the format deems too large) */
  char message[300]; /* for the client */
} llmux_inbound_err_t;

/* request() flags: the body asks for a token count, not an answer, so the
 * fields only an answer needs (Anthropic's max_tokens) are not required. */
#define LLMUX_INBOUND_COUNT_ONLY 1u

/* What the proxy knows that the answer needs. */
typedef struct llmux_inbound_ctx_s {
  const char *request_id;  /* the request's id, for ids the answer lacks */
  uint64_t prompt_tokens;  /* the gateway's estimate, until the provider says */
} llmux_inbound_ctx_t;

typedef struct llmux_inbound_s {
  const char *name;   /* "anthropic" */
  /* The response header that carries the request id, on top of
   * x-request-id ("request-id" for Anthropic's clients); NULL: none. */
  const char *request_id_header;

  /* The client's body -> an OpenAI chat body appended to *chat, and the
   * request's state in *state (NULL allowed; freed with state_free even on
   * failure). `flags`: LLMUX_INBOUND_*. 0; LLMUX_EINVAL with *err set (the
   * client's fault); LLMUX_ENOMEM. */
  int (*request)(const char *body, size_t len, unsigned flags, llmux_buf_t *chat,
                 void **state, llmux_inbound_err_t *err);

  /* A whole chat.completion -> the client's answer, appended to *out.
   * 0, or LLMUX_EUPSTREAM (the chat answer makes no sense: the client gets
   * a 502), LLMUX_ENOMEM. */
  int (*answer)(void *state, const llmux_inbound_ctx_t *ctx, const char *chat, size_t len,
                llmux_buf_t *out);

  /* Streams: chat SSE bytes, cut anywhere, -> the client's events appended
   * to *out. A chat error event ({"error":{...}}) becomes the client's
   * in-band error, and nothing follows it. 0 or LLMUX_ENOMEM. */
  int (*stream_feed)(void *state, const llmux_inbound_ctx_t *ctx, const char *data,
                     size_t len, llmux_buf_t *out);
  /* The stream ended well: the closing events. */
  int (*stream_end)(void *state, const llmux_inbound_ctx_t *ctx, llmux_buf_t *out);
  /* The stream broke after the client had our head: the in-band error
   * event, `type` and `code` being the gateway's OpenAI-style ones. */
  int (*stream_error)(void *state, const char *type, const char *code, const char *msg,
                      llmux_buf_t *out);

  /* An error answer's body (before any byte of an answer went out): the
   * HTTP status and the gateway's OpenAI-style type and code decide the
   * format's own error type. `request_id` may be NULL. */
  int (*error_body)(llmux_buf_t *out, int status, const char *type, const char *code,
                    const char *msg, const char *request_id);

  void (*state_free)(void *state);

  /* Optional (NULL: `request` is used). `request` with the caller's
   * argument (llmux_proxy_opts_t.inbound_arg, format-specific, may be
   * NULL), which the state owns from the call on, failure or not. Added
   * at the end: the table only grows. */
  int (*request_arg)(void *arg, const char *body, size_t len, unsigned flags, llmux_buf_t *chat,
                     void **state, llmux_inbound_err_t *err);

  /* Native passthrough (issue 15; llmux/provider.h, LLMUX_FEATURE_MESSAGES
   * and _RESPONSES). On a route whose provider speaks this format itself,
   * the proxy skips every conversion above: the client's own body goes
   * upstream with only its model replaced, and the answer comes back byte
   * for byte. `native_endpoint` is the LLMUX_ENDPOINT_* the plugin is asked
   * for, `native_feature` the LLMUX_FEATURE_* bit a provider declares; 0
   * for both: the format always translates. */
  int native_endpoint;
  unsigned native_feature;
  /* The token usage in one JSON document of a native answer: the whole
   * body, or one stream event's data. Counts it holds go to *in / *out
   * (-1 for one that is not a whole number of 0 to 10^9); those it lacks
   * are left as they are, so a stream's events are fed in order and the
   * last word stands. No tree is built: a scan, skipped at once for a
   * document without a "usage" key. */
  void (*native_usage)(const char *json, size_t len, int64_t *in, int64_t *out);
} llmux_inbound_t;

/* A usage count inside a native answer, as native_usage reads it: a JSON
 * number that is a whole number of 0 to LLMUX_INBOUND_USAGE_MAX, else -1. */
#define LLMUX_INBOUND_USAGE_MAX 1000000000
int64_t llmux_inbound_count(const char *num, size_t len);

/* What both formats read of the provider's chat answer (inbound_anthropic.c):
 *
 * llmux_inbound_load_chat: chat JSON from a provider. An integer beyond 64
 * bits makes jansson refuse the whole document: it is read again with
 * integers as reals, and the count checks refuse the huge ones.
 *
 * llmux_inbound_usage_count: a token count in a usage object, an integer
 * (or whole real) of 0 to LLMUX_INBOUND_USAGE_MAX, else -1 (unknown).
 *
 * llmux_inbound_read_chat: the provider's chat stream, split into its SSE
 * events (in *sse, made on first use): each event's data that is a JSON
 * object goes to chunk, until `[DONE]`, until *done is set, or until chunk
 * returns non-zero (returned). An event beyond the splitter's bound is
 * dropped; LLMUX_ENOMEM when memory runs out. */
json_t *llmux_inbound_load_chat(const char *s, size_t n);
int64_t llmux_inbound_usage_count(const json_t *usage, const char *key);
typedef int (*llmux_inbound_chunk_fn)(void *st, const llmux_inbound_ctx_t *ctx, json_t *ev,
                                      llmux_buf_t *o);
int llmux_inbound_read_chat(llmux_split_t **sse, const int *done, llmux_inbound_chunk_fn chunk,
                            void *st, const llmux_inbound_ctx_t *ctx, const char *data,
                            size_t len, int eof, llmux_buf_t *o);

/* inbound_anthropic.c: Anthropic's Messages API (POST /v1/messages). */
extern const llmux_inbound_t llmux_inbound_anthropic;

/* Anthropic's error type for one of the gateway's answers: by our code
 * first (shutting_down, overloaded ...), else by the HTTP status. */
const char *llmux_inbound_anthropic_error_type(int status, const char *type, const char *code);

/* inbound_responses.c: OpenAI's Responses API (POST /v1/responses).
 *
 * Its argument (request_arg) carries what only the gateway knows: the id
 * the response gets, the stored record previous_response_id names, and
 * where a finished response is kept. A record is
 * {"response":{the response object},"input":[the input items it answered,
 * previous ones included]}: a chain replays record.input + output. */
typedef struct llmux_inbound_responses_arg_s {
  char id[64];          /* "resp_..."; "" : made from the request id */
  char *prior;          /* the record of previous_response_id, or NULL
                           (then previous_response_id is refused, 400) */
  size_t prior_len;
  /* A finished response whose request did not say store: false (status
   * completed or incomplete); NULL: nothing is kept. */
  void (*save)(struct llmux_inbound_responses_arg_s *a, const char *id, const char *record,
               size_t len);
  /* Frees the argument (state_free calls it); NULL: nothing to free. */
  void (*release)(struct llmux_inbound_responses_arg_s *a);
} llmux_inbound_responses_arg_t;

extern const llmux_inbound_t llmux_inbound_responses;

/* OpenAI's error code for an unknown or foreign previous_response_id. */
#define LLMUX_RESPONSES_PREV_NOT_FOUND "previous_response_not_found"

#ifdef __cplusplus
}
#endif
#endif /* LLMUX_GATEWAY_INBOUND_H */
