/* The providers' rate-limit headers (core/ratelimit.h): every dialect's
 * parser on arbitrary header sets, the value parsers on arbitrary values,
 * and the parsed facts applied to an in-memory store and read back.
 *
 * Input: one control byte (the wall clock's offset and the store's
 * limits), then header lines "name: value" separated by '\n'. A line
 * without ':' is a header with an empty value.
 *
 * Properties: parsing is a pure function (the same headers give the same
 * facts); a dialect that found no fact leaves the result zeroed; a reset or
 * a retry-after is never further away than two days; a value parser that
 * refuses leaves its result untouched; a check that allows a
 * request says there is nothing to wait for; and nothing reads outside the
 * header bytes it was given. */
#include <stdint.h>
#include <string.h>

#include "fuzz.h"
#include "route/ratelimit.h"
#include "base/util.h"

#define MAX_HEADERS 64
/* A reset or a wait further away than this is not believed (dialects.h). */
#define MAX_WAIT_MS (2ull * 86400000u)
#define WALL_BASE_MS INT64_C(1735689600000) /* 2025-01-01T00:00:00Z */

static const llmux_rl_style_t STYLES[] = {LLMUX_RL_STYLE_GENERIC, LLMUX_RL_STYLE_OPENAI,
                                          LLMUX_RL_STYLE_GROQ, LLMUX_RL_STYLE_CEREBRAS,
                                          LLMUX_RL_STYLE_ANTHROPIC};

/* Splits "name: value\n..." into headers (both trimmed of spaces). */
static size_t split_headers(const char *s, size_t n, llmux_header_t *h, size_t max) {
  size_t count = 0;
  const char *end = s + n;
  while (s < end && count < max) {
    const char *eol = memchr(s, '\n', (size_t)(end - s));
    const char *line_end = eol ? eol : end, *colon = memchr(s, ':', (size_t)(line_end - s));
    const char *v = colon ? colon + 1 : line_end;
    while (v < line_end && *v == ' ') v++;
    h[count].name = (llmux_str_t){s, (size_t)((colon ? colon : line_end) - s)};
    h[count].value = (llmux_str_t){v, (size_t)(line_end - v)};
    count++;
    s = eol ? eol + 1 : end;
  }
  return count;
}

/* Copies each header into a heap block of its exact size, so that ASan
 * catches a parser reading past a name or a value. */
static void isolate(llmux_header_t *h, size_t n, char **blocks) {
  size_t i;
  for (i = 0; i < n; i++) {
    char *b = malloc(h[i].name.len + h[i].value.len + 1);
    memcpy(b, h[i].name.base, h[i].name.len);
    memcpy(b + h[i].name.len, h[i].value.base, h[i].value.len);
    h[i].name.base = b;
    h[i].value.base = b + h[i].name.len;
    blocks[i] = b;
  }
}

#define UNTOUCHED 0x5a5a5a5a5a5a5a5aull

/* Each value parser: 0, or LLMUX_EINVAL with *out untouched. */
static void check_values(const llmux_header_t *h, size_t n, int64_t wall) {
  size_t i;
  for (i = 0; i < n; i++) {
    const char *v = h[i].value.base;
    size_t len = h[i].value.len;
    uint64_t ms = UNTOUCHED;
    int64_t at = (int64_t)UNTOUCHED;
    int rc;
    rc = llmux_rl_parse_go_duration(v, len, &ms);
    FUZZ_CHECK(rc == 0 || (rc == LLMUX_EINVAL && ms == UNTOUCHED), "go duration rc %d", rc);
    ms = UNTOUCHED;
    rc = llmux_rl_parse_retry_after(v, len, wall, &ms);
    FUZZ_CHECK(rc == 0 || (rc == LLMUX_EINVAL && ms == UNTOUCHED), "retry-after rc %d", rc);
    FUZZ_CHECK(rc != 0 || ms <= MAX_WAIT_MS, "retry-after of %llu ms", (unsigned long long)ms);
    rc = llmux_rl_parse_rfc3339(v, len, &at);
    FUZZ_CHECK(rc == 0 || (rc == LLMUX_EINVAL && at == (int64_t)UNTOUCHED), "rfc3339 rc %d", rc);
    at = (int64_t)UNTOUCHED;
    rc = llmux_rl_parse_http_date(v, len, &at);
    FUZZ_CHECK(rc == 0 || (rc == LLMUX_EINVAL && at == (int64_t)UNTOUCHED), "http-date rc %d",
               rc);
  }
}

static void check_store(llmux_rl_style_t style, const llmux_header_t *h, size_t n,
                        uint8_t ctl, int64_t wall) {
  llmux_rl_store_t *s = NULL;
  llmux_rl_key_t route = {"fuzz", "model"}, provider = {"fuzz", NULL};
  llmux_limits_t lim;
  llmux_rl_reservation_t res;
  llmux_rl_snapshot_t snap;
  uint64_t now = 1000000, wait = 0, tokens = 1u << (ctl & 15);
  int rc;
  FUZZ_CHECK(llmux_rl_memory_store_new(4, &s) == 0, "store");
  memset(&lim, 0, sizeof lim);
  if (ctl & 0x10) {
    lim.requests_per_minute = 30;
    lim.tokens_per_minute = 6000;
    lim.requests_per_day = 14400;
    lim.tokens_per_day = 500000;
    llmux_rl_set_limits(s, &route, &lim);
  }
  if (ctl & 0x20) llmux_rl_set_limits(s, &provider, &lim);
  FUZZ_CHECK(llmux_rl_sync_headers(s, &route, style, h, n, now, wall) == 0, "sync");
  if (ctl & 0x40) llmux_rl_sync_headers(s, &provider, style, h, n, now, wall);
  rc = llmux_rl_check(s, &route, tokens, now, &wait);
  FUZZ_CHECK(rc == 0 || rc == LLMUX_EAGAIN, "check rc %d", rc);
  FUZZ_CHECK(rc != 0 || wait == 0, "allowed, yet %llu ms to wait", (unsigned long long)wait);
  memset(&res, 0, sizeof res);
  llmux_rl_reserve(s, &route, tokens, now, &res);
  if (ctl & 0x80) llmux_rl_commit(&res, tokens * 3, now + 10);
  else llmux_rl_release(&res, now + 10);
  rc = llmux_rl_snapshot(s, &route, now + 20, &snap); /* unknown without facts or limits */
  FUZZ_CHECK(rc == 0 || rc == LLMUX_ENOTFOUND, "snapshot rc %d", rc);
  FUZZ_CHECK(rc != 0 || snap.inflight == 0, "%llu in flight",
             (unsigned long long)snap.inflight);
  /* Later, past any reset, the route is judged by its own counts again. */
  rc = llmux_rl_check(s, &route, tokens, now + 40ull * 24 * 3600 * 1000, &wait);
  FUZZ_CHECK(rc == 0 || rc == LLMUX_EAGAIN, "check rc %d", rc);
  llmux_rl_store_destroy(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_in_t in = {data, size};
  uint8_t ctl = fuzz_byte(&in);
  int64_t wall = WALL_BASE_MS + (int64_t)(ctl & 0x0f) * 3600000 - 7200000;
  llmux_header_t h[MAX_HEADERS];
  char *blocks[MAX_HEADERS];
  size_t n, i, k;

  n = split_headers((const char *)in.p, in.n, h, MAX_HEADERS);
  isolate(h, n, blocks);
  for (k = 0; k < LLMUX_COUNTOF(STYLES); k++) {
    llmux_rl_info_t a, b;
    int facts = llmux_rl_parse_headers(STYLES[k], h, n, wall, &a);
    FUZZ_CHECK(facts >= 0 && (size_t)facts <= n, "%d facts from %zu headers", facts, n);
    FUZZ_CHECK(llmux_rl_parse_headers(STYLES[k], h, n, wall, &b) == facts &&
               memcmp(&a, &b, sizeof a) == 0, "parsing twice gave different facts");
    FUZZ_CHECK(a.size == sizeof a, "size %zu", a.size);
    if (facts == 0) {
      memset(&b, 0, sizeof b);
      b.size = sizeof b;
      FUZZ_CHECK(memcmp(&a, &b, sizeof a) == 0, "no fact, yet something was set");
    }
    for (i = 0; i < LLMUX_RL_NDIMS; i++)
      FUZZ_CHECK(!a.dims[i].has_reset || a.dims[i].reset_in_ms <= MAX_WAIT_MS,
                 "a reset %llu ms away", (unsigned long long)a.dims[i].reset_in_ms);
    FUZZ_CHECK(!a.has_retry_after || a.retry_after_ms <= MAX_WAIT_MS,
               "a retry-after of %llu ms", (unsigned long long)a.retry_after_ms);
    check_store(STYLES[k], h, n, ctl, wall);
  }
  check_values(h, n, wall);
  for (i = 0; i < n; i++) free(blocks[i]);
  return 0;
}
