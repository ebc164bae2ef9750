/* Providers' rate-limit header dialects: pure parsers, no state, no clock.
 *
 * Knowledge of what a provider's headers mean lives here, named by
 * dialect, never by provider: which dialect a provider speaks is said by
 * its `ratelimit_headers` key or by its plugin (llmux_provider_t's
 * ratelimit_dialect), and chosen in plugin/providers.c. Plugins reach the
 * same parsers through the host table (parse_ratelimit_headers,
 * parse_retry_after), so the gateway and every plugin read a header the
 * same way.
 *
 * The result types are the SDK's (llmux_ratelimit_info_t in
 * llmux/provider.h) under the names the rate limiter has always used. */
#ifndef LLMUX_DIALECTS_H
#define LLMUX_DIALECTS_H

#include <stddef.h>
#include <stdint.h>

#include "llmux/common.h"
#include "llmux/provider.h" /* llmux_header_t, llmux_ratelimit_info_t */

#ifdef __cplusplus
extern "C" {
#endif

/* How a provider's rate-limit headers are to be read. */
typedef enum {
  LLMUX_RL_STYLE_GENERIC = 0, /* x-ratelimit-* read like OpenAI, retry-after */
  LLMUX_RL_STYLE_OPENAI,
  LLMUX_RL_STYLE_GROQ,
  LLMUX_RL_STYLE_CEREBRAS,
  LLMUX_RL_STYLE_ANTHROPIC
} llmux_rl_style_t;

/* "generic", "openai", "groq", "cerebras", "anthropic" (case-insensitive)
 * into *out: 0, or LLMUX_EINVAL for another name or NULL (*out untouched). */
int llmux_rl_style_parse(const char *name, llmux_rl_style_t *out);
/* The same, with GENERIC for anything unknown, NULL included. */
llmux_rl_style_t llmux_rl_style_from_name(const char *name);
const char *llmux_rl_style_name(llmux_rl_style_t style);

/* The dimensions of a report: requests/tokens x minute/day. */
enum {
  LLMUX_RL_REQ_MINUTE = LLMUX_RATELIMIT_REQUESTS_MINUTE,
  LLMUX_RL_REQ_DAY = LLMUX_RATELIMIT_REQUESTS_DAY,
  LLMUX_RL_TOK_MINUTE = LLMUX_RATELIMIT_TOKENS_MINUTE,
  LLMUX_RL_TOK_DAY = LLMUX_RATELIMIT_TOKENS_DAY,
  LLMUX_RL_NDIMS = LLMUX_RATELIMIT_NDIMS
};

/* One dimension as a provider reported it; a whole report. */
typedef llmux_ratelimit_dim_t llmux_rl_dim_info_t;
typedef llmux_ratelimit_info_t llmux_rl_info_t;

/* Reads the rate-limit headers of one response (names case-insensitive;
 * unknown or malformed values are ignored) into *out (all of it: `size` is
 * set to the whole struct). Meanings:
 *  - OPENAI, GENERIC: x-ratelimit-{limit,remaining,reset}-requests are per
 *    minute (RPM), -tokens per minute (TPM); reset is a Go duration: "1s",
 *    "6m0s", "2m59.56s", "7.66s", "20ms" (a bare number is seconds).
 *  - GROQ: the same headers, but -requests are per DAY (RPD); -tokens are
 *    per minute (TPM).
 *  - CEREBRAS: x-ratelimit-{limit,remaining,reset}-requests-day and
 *    -tokens-minute; reset is seconds, fractional ("33011.38").
 *  In every x-ratelimit style an explicit -minute / -day suffix wins over the
 *  style's default (-hour is ignored).
 *  - ANTHROPIC: anthropic-ratelimit-requests-{limit,remaining,reset} (per
 *    minute), -tokens-*, -input-tokens-*, -output-tokens-*; reset is an
 *    RFC 3339 time when the bucket is full again. The token dimension takes
 *    the most restrictive of the three (least remaining).
 *  - all: retry-after as llmux_rl_parse_retry_after reads it; retry-after-ms
 *    (OpenAI) is milliseconds, as strictly, and wins over retry-after.
 * A reset or a wait beyond two days is not believed (ignored). Delays are
 * rounded up to the millisecond. Returns the number of facts found (0: no
 * rate-limit header). */
int llmux_rl_parse_headers(llmux_rl_style_t style, const llmux_header_t *headers,
                           size_t n, int64_t wall_ms, llmux_rl_info_t *out);

/* Value parsers; each returns 0, or LLMUX_EINVAL with *out untouched. */
/* Go duration ("2m59.56s", "1h2m", "20ms", "1.5us") or bare seconds. */
int llmux_rl_parse_go_duration(const char *s, size_t n, uint64_t *out_ms);
/* Retry-After (RFC 9110): delay-seconds, a decimal fraction allowed
 * ("1.5", rounded up to the ms), or an HTTP-date (IMF-fixdate, RFC 850 or
 * asctime) measured from wall_ms; a date in the past gives 0. Spaces
 * around are allowed; a sign, an exponent, "inf", a bare '.', trailing
 * bytes, an overflow and a wait above two days are not. */
int llmux_rl_parse_retry_after(const char *s, size_t n, int64_t wall_ms,
                               uint64_t *out_ms);
/* RFC 3339 date-time -> Unix ms (fractions rounded up). */
int llmux_rl_parse_rfc3339(const char *s, size_t n, int64_t *out_unix_ms);
/* HTTP-date -> Unix ms. */
int llmux_rl_parse_http_date(const char *s, size_t n, int64_t *out_unix_ms);

#ifdef __cplusplus
}
#endif
#endif /* LLMUX_DIALECTS_H */
