/* `n` > 1 for a provider without it (issue 15): one attempt of the proxy
 * becomes n upstream requests with n = 1 through the same route, sent at
 * once, whose answers are merged into the one the client asked for.
 *
 * Which providers need it is the plugin's word (llmux/provider.h,
 * features() without LLMUX_FEATURE_N: Anthropic, Ollama, an openai section
 * with `supports_n = false`); `[server] fan_out = off` refuses instead
 * (the proxy decides; see proxy.c, fan_needed).
 *
 * What the proxy sees is one attempt on one route (one entry in the
 * record, one span, x-llmux-attempts counts it once), while the route sees
 * n requests: n reservations against its rate limits (the proxy checked
 * headroom for all n first), n requests in flight, n successes or the
 * failure. The proxy keeps failover for the whole request: when any copy
 * fails before the client got a byte, the others are cancelled and the
 * attempt failed as that copy did, so the next route is tried with the
 * whole request (a copy is not retried alone: the answer is then always n
 * choices from one route). Once a stream's head went out, a failure ends
 * the stream in-band, as for a single request.
 *
 * Answers, in OpenAI's format (each copy went through the plugin):
 *   plain   copy 0's object, its `choices` replaced by every copy's choices
 *           (copy k's choice j gets index k + j*n: with one choice each,
 *           0..n-1), its `usage` by the sum of the copies' usage;
 *   stream  every copy's chunks in arrival order, `choices[].index`
 *           rewritten the same way; each copy's `[DONE]` is held back, and
 *           usage (stream_options.include_usage) is summed into one usage
 *           chunk, after every copy ended and before the one `[DONE]`. The
 *           client's head goes out once every copy answered 2xx (chunks
 *           that came before are held until then), so that a copy refused
 *           at its head still fails over the whole request.
 * A stream is not paused for a slow client (each copy is small; the
 * client's buffer grows instead).
 *
 * Lifetime: llmux_fanout_new -> llmux_fanout_send -> on_head? -> emit* ->
 * on_done once -> llmux_fanout_free. on_done is never called from inside
 * send; the owner may free the fan-out inside on_done, or at any time
 * before (then nothing more is called: running copies are cancelled). */
#ifndef LLMUX_GATEWAY_FANOUT_H
#define LLMUX_GATEWAY_FANOUT_H

#include "gateway/server.h"
#include "plugin/plugin.h"
#include "plugin/providers.h"
#include "route/router.h"

/* The most copies one request fans out into; a larger n to a provider
 * without `n` is refused (400 n_not_supported). */
#define LLMUX_FANOUT_MAX 16

/* ---- Merging answers (pure) --------------------------------------------- */

typedef struct llmux_fanout_usage_s {
  uint64_t prompt_tokens, completion_tokens, total_tokens;
  unsigned seen;              /* usage objects added */
} llmux_fanout_usage_t;

/* The n plain answers (OpenAI JSON objects, copy k at answers[k]) as one,
 * appended to `out`. 0, LLMUX_EUPSTREAM when an answer is not an object
 * with a `choices` array, LLMUX_ENOMEM. */
int llmux_fanout_merge(const llmux_str_t *answers, unsigned n, llmux_buf_t *out);

/* What llmux_fanout_chunk did with one stream event. */
enum {
  LLMUX_FANOUT_CHUNK = 0,   /* appended, its choices' indices rewritten */
  LLMUX_FANOUT_PASSED,      /* appended as it came (no choices: an error...) */
  LLMUX_FANOUT_USAGE,       /* usage only: added to *usage, nothing appended */
  LLMUX_FANOUT_DONE         /* "[DONE]": nothing appended */
};

/* One event's data (`data:` removed) of copy `copy` of n, appended to `out`
 * as an SSE frame ("data: ...\n\n") with `choices[].index` rewritten to
 * copy + index*n. A `usage` object is added to *usage (and replaced by
 * null in a chunk that has choices). Returns LLMUX_FANOUT_*, or
 * LLMUX_ENOMEM. */
int llmux_fanout_chunk(const char *data, size_t len, unsigned copy, unsigned n,
                       llmux_fanout_usage_t *usage, llmux_buf_t *out);

/* The one usage chunk of a merged stream: `tmpl` (a chunk that carried
 * usage) with no choices and *usage summed, as an SSE frame appended to
 * `out`. 0, LLMUX_EUPSTREAM (tmpl not an object), LLMUX_ENOMEM. */
int llmux_fanout_usage_chunk(const char *tmpl, size_t len, const llmux_fanout_usage_t *usage,
                             llmux_buf_t *out);

/* ---- Running the copies --------------------------------------------------- */

typedef struct llmux_fanout_s llmux_fanout_t;

typedef struct llmux_fanout_conf_s {
  void *owner;                     /* passed to every callback */
  llmux_gateway_t *gw;             /* its loop, upstream pool, rate limits */
  llmux_router_t *router;          /* the generation's */
  const llmux_route_conf_t *route;
  llmux_provider_rt_t *prov;
  unsigned n;                      /* 2..LLMUX_FANOUT_MAX */
  const llmux_txn_t *request;      /* its read-only request fields (body,
                                      model_value, endpoint, stream, models)
                                      are every copy's, with n = 1 */
  llmux_str_t n_value;             /* the value of "n" inside request->body */
  const char *headers;             /* lines every copy carries before the
                                      plugin's (Content-Type, Accept,
                                      X-Request-Id, trace); copied */
  size_t headers_len;
  uint64_t tokens;                 /* reserved per copy */
  uint64_t total_timeout_ms;       /* what is left of the request's deadline */
  /* Everything in the client's format (OpenAI), to be sent on. */
  int (*emit)(void *owner, const char *data, size_t len);
  /* Every copy answered 2xx: a stream's head may go now. */
  void (*on_head)(void *owner);
  /* A stream: what one read brought was emitted. */
  void (*on_read_end)(void *owner);
  /* The end: 200 when every copy answered and the merged answer was
   * emitted; else the first failure: a copy's HTTP status (>= 300; its
   * classification in llmux_fanout_error), a negative LLMUX_E* of the
   * upstream client (llmux_fanout_error_detail says why), or
   * LLMUX_EUPSTREAM for an answer that could not be read or merged. */
  void (*on_done)(void *owner, int status);
} llmux_fanout_conf_t;

/* Translates the request n times (no I/O). 0 and *out; else the plugin's
 * error (LLMUX_EINVAL: it cannot take this request; its words, ABI 1.4,
 * appended to `refusal` when not NULL) or LLMUX_ENOMEM, with *out to
 * free all the same (it may be NULL). */
int llmux_fanout_new(const llmux_fanout_conf_t *conf, llmux_fanout_t **out,
                     llmux_buf_t *refusal);

/* Sends the copies, reserving `tokens` on the route for each but the first
 * (copy 0's share is the caller's reservation, which is committed with the
 * tokens of all: the others end counting their request only). 0; or the
 * upstream client's error for a copy that could not be started, with its
 * words in `why` (for the log): then no callback will come, and the caller
 * frees f (which cancels the copies started). */
int llmux_fanout_send(llmux_fanout_t *f, char *why, size_t whylen);

/* Cancels what still runs (neutral for the route, the reservations
 * committed: the provider saw them) and frees everything. NULL is fine. */
void llmux_fanout_free(llmux_fanout_t *f);

/* After on_done: the copies' usage summed (-1 in a field any copy did not
 * report); a copy's txn (served_model, adjusted); for a failure with an
 * HTTP status, the plugin's classification of it (ownership of e->message
 * passes to the caller); for one of the upstream client, its words. */
llmux_usage_t llmux_fanout_usage(const llmux_fanout_t *f);
const llmux_txn_t *llmux_fanout_txn(const llmux_fanout_t *f, unsigned copy);
void llmux_fanout_error(llmux_fanout_t *f, llmux_error_info_t *e);
const char *llmux_fanout_error_detail(const llmux_fanout_t *f);

#endif
