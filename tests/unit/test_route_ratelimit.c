/* Rate-limit accounting: what the router sees when it asks whether a route
 * has headroom. Time is passed explicitly, so every case is exact. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "route/ratelimit.h"
#include "base/util.h"

#define MIN 60000u
#define DAY 86400000u
/* 2024-05-01T12:00:00Z */
#define WALL 1714564800000LL

static const llmux_rl_key_t groq_70b = {"groq", "llama-3.3-70b-versatile"};
static const llmux_rl_key_t groq_8b = {"groq", "llama-3.1-8b-instant"};
static const llmux_rl_key_t groq_all = {"groq", NULL};

static llmux_header_t hdr(const char *name, const char *value) {
  llmux_header_t h;
  h.name.base = name;
  h.name.len = strlen(name);
  h.value.base = value;
  h.value.len = strlen(value);
  return h;
}

static llmux_rl_store_t *store_with(const llmux_rl_key_t *key, uint64_t rpm, uint64_t rpd,
                                    uint64_t tpm, uint64_t tpd) {
  llmux_rl_store_t *s = NULL;
  llmux_limits_t l;
  memset(&l, 0, sizeof(l));
  l.requests_per_minute = rpm;
  l.requests_per_day = rpd;
  l.tokens_per_minute = tpm;
  l.tokens_per_day = tpd;
  assert_int_equal(llmux_rl_memory_store_new(16, &s), 0);
  if (key) assert_int_equal(llmux_rl_set_limits(s, key, &l), 0);
  return s;
}

static void reserve_committed(llmux_rl_store_t *s, const llmux_rl_key_t *key,
                              uint64_t tokens, uint64_t now) {
  llmux_rl_reservation_t r;
  memset(&r, 0, sizeof(r));
  assert_int_equal(llmux_rl_reserve(s, key, tokens, now, &r), 0);
  llmux_rl_commit(&r, tokens, now);
}

/* ---- Own counting ------------------------------------------------------ */

static void rpm_exhausted_waits_until_the_oldest_request_leaves(void **state) {
  llmux_rl_store_t *s = store_with(&groq_70b, 3, 0, 0, 0);
  uint64_t ra = 0;
  (void)state;
  reserve_committed(s, &groq_70b, 10, 1000);
  reserve_committed(s, &groq_70b, 10, 2000);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 10, 2500, &ra), 0);
  assert_int_equal(ra, 0);
  reserve_committed(s, &groq_70b, 10, 3000);

  assert_int_equal(llmux_rl_check(s, &groq_70b, 10, 3000, &ra), LLMUX_EAGAIN);
  /* the request of t=1s is held until its whole 1 s slot is 60 s old */
  assert_int_equal(ra, 59000);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 10, 61999, &ra), LLMUX_EAGAIN);
  assert_int_equal(ra, 1);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 10, 62000, &ra), 0);
  assert_int_equal(ra, 0);
  llmux_rl_store_destroy(s);
}

static void rpm_frees_everything_after_a_quiet_window(void **state) {
  llmux_rl_store_t *s = store_with(&groq_70b, 1, 0, 0, 0);
  uint64_t ra;
  (void)state;
  reserve_committed(s, &groq_70b, 1, 5 * MIN);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 1, 5 * MIN, &ra), LLMUX_EAGAIN);
  assert_int_equal(ra, MIN + 1000);
  reserve_committed(s, &groq_70b, 1, 50 * MIN); /* long after: the ring wrapped */
  assert_int_equal(llmux_rl_check(s, &groq_70b, 1, 51 * MIN, &ra), LLMUX_EAGAIN);
  assert_int_equal(ra, 1000);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 1, 51 * MIN + 1000, &ra), 0);
  llmux_rl_store_destroy(s);
}

static void tpm_counts_the_estimate_then_the_actual_usage(void **state) {
  llmux_rl_store_t *s = store_with(&groq_70b, 0, 0, 1000, 0);
  llmux_rl_reservation_t r;
  llmux_rl_snapshot_t snap;
  uint64_t ra;
  (void)state;
  memset(&r, 0, sizeof(r));
  llmux_rl_reserve(s, &groq_70b, 800, 0, &r);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 300, 100, &ra), LLMUX_EAGAIN);
  assert_int_equal(ra, MIN + 1000 - 100);

  llmux_rl_commit(&r, 200, 2000); /* the response said 200 tokens */
  assert_int_equal(r.tokens, 200);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 300, 2000, &ra), 0);

  memset(&r, 0, sizeof(r));
  llmux_rl_reserve(s, &groq_70b, 100, 3000, &r);
  llmux_rl_commit(&r, 700, 4000); /* more than estimated: counted now */
  assert_int_equal(llmux_rl_snapshot(s, &groq_70b, 4000, &snap), 0);
  assert_int_equal(snap.dims[LLMUX_RL_TOK_MINUTE].used, 900);
  assert_int_equal(snap.dims[LLMUX_RL_REQ_MINUTE].used, 2);
  assert_int_equal(snap.inflight, 0);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 200, 4000, &ra), LLMUX_EAGAIN);
  assert_int_equal(ra, MIN + 1000 - 4000); /* when the 200 of t=0 leave */
  llmux_rl_store_destroy(s);
}

static void a_request_larger_than_the_limit_waits_for_an_empty_window(void **state) {
  llmux_rl_store_t *s = store_with(&groq_70b, 0, 0, 1000, 0);
  uint64_t ra;
  (void)state;
  assert_int_equal(llmux_rl_check(s, &groq_70b, 5000, 0, &ra), 0);
  reserve_committed(s, &groq_70b, 10, 0);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 5000, 0, &ra), LLMUX_EAGAIN);
  assert_int_equal(ra, MIN + 1000);
  llmux_rl_store_destroy(s);
}

static void rpd_limits_the_day_with_24_minute_slots(void **state) {
  llmux_rl_store_t *s = store_with(&groq_8b, 100, 2, 0, 0);
  uint64_t ra;
  llmux_rl_snapshot_t snap;
  (void)state;
  reserve_committed(s, &groq_8b, 1, 0);
  reserve_committed(s, &groq_8b, 1, 10 * MIN);
  assert_int_equal(llmux_rl_check(s, &groq_8b, 1, 30 * MIN, &ra), LLMUX_EAGAIN);
  /* both sit in the first 24-min slot, held until all of it is a day old */
  assert_int_equal(ra, DAY + 24 * MIN - 30 * MIN);
  assert_int_equal(llmux_rl_snapshot(s, &groq_8b, 30 * MIN, &snap), 0);
  assert_int_equal(snap.dims[LLMUX_RL_REQ_DAY].used, 2);
  assert_int_equal(snap.dims[LLMUX_RL_REQ_MINUTE].used, 0);
  assert_int_equal(llmux_rl_check(s, &groq_8b, 1, DAY, &ra), LLMUX_EAGAIN);
  assert_int_equal(llmux_rl_check(s, &groq_8b, 1, DAY + 24 * MIN, &ra), 0);
  llmux_rl_store_destroy(s);
}

static void a_released_request_gives_its_share_back(void **state) {
  llmux_rl_store_t *s = store_with(&groq_70b, 1, 0, 100, 0);
  llmux_rl_reservation_t r;
  uint64_t ra;
  (void)state;
  memset(&r, 0, sizeof(r));
  llmux_rl_reserve(s, &groq_70b, 90, 500, &r);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 1, 600, &ra), LLMUX_EAGAIN);
  llmux_rl_release(&r, 700); /* connect failed: never reached the provider */
  llmux_rl_release(&r, 700); /* a second end changes nothing */
  assert_int_equal(llmux_rl_check(s, &groq_70b, 100, 700, &ra), 0);
  llmux_rl_store_destroy(s);
}

static void the_provider_wide_limit_applies_on_top_of_each_route(void **state) {
  llmux_rl_store_t *s = store_with(&groq_70b, 10, 0, 0, 0);
  llmux_limits_t wide;
  uint64_t ra;
  (void)state;
  memset(&wide, 0, sizeof(wide));
  wide.requests_per_minute = 2;
  assert_int_equal(llmux_rl_set_limits(s, &groq_all, &wide), 0);
  reserve_committed(s, &groq_70b, 1, 0);
  reserve_committed(s, &groq_8b, 1, 1000); /* no limits of its own */
  assert_int_equal(llmux_rl_check(s, &groq_70b, 1, 1000, &ra), LLMUX_EAGAIN);
  assert_int_equal(ra, MIN);
  assert_int_equal(llmux_rl_check(s, &groq_8b, 1, 1000, &ra), LLMUX_EAGAIN);
  assert_int_equal(llmux_rl_check(s, &groq_all, 1, 30000, &ra), LLMUX_EAGAIN);
  assert_int_equal(ra, 31000);
  assert_int_equal(llmux_rl_check(s, &groq_8b, 1, MIN + 1000, &ra), 0);
  llmux_rl_store_destroy(s);
}

/* ---- State synced from provider headers -------------------------------- */

static void openai_headers_rule_requests_and_tokens_per_minute(void **state) {
  llmux_rl_store_t *s = store_with(NULL, 0, 0, 0, 0);
  llmux_header_t h[] = {
    hdr("X-RateLimit-Limit-Requests", "60"), hdr("x-ratelimit-remaining-requests", "0"),
    hdr("x-ratelimit-reset-requests", "1s"), hdr("x-ratelimit-limit-tokens", "150000"),
    hdr("x-ratelimit-remaining-tokens", "100"),
    hdr("x-ratelimit-reset-tokens", "2m59.56s"), hdr("content-type", "application/json"),
  };
  llmux_rl_key_t key = {"openai", "gpt-4o"};
  llmux_rl_snapshot_t snap;
  uint64_t ra;
  (void)state;
  assert_int_equal(llmux_rl_sync_headers(s, &key, LLMUX_RL_STYLE_OPENAI, h, 7, 10000, WALL),
                   0);
  assert_int_equal(llmux_rl_check(s, &key, 50, 10000, &ra), LLMUX_EAGAIN);
  assert_int_equal(ra, 1000);
  assert_int_equal(llmux_rl_check(s, &key, 50, 11000, &ra), 0); /* requests reset */
  assert_int_equal(llmux_rl_check(s, &key, 200, 11000, &ra), LLMUX_EAGAIN);
  assert_int_equal(ra, 179560 - 1000);
  assert_int_equal(llmux_rl_snapshot(s, &key, 11000, &snap), 0);
  assert_true(snap.dims[LLMUX_RL_TOK_MINUTE].synced);
  assert_int_equal(snap.dims[LLMUX_RL_TOK_MINUTE].synced_limit, 150000);
  assert_int_equal(snap.dims[LLMUX_RL_TOK_MINUTE].synced_remaining, 100);
  assert_false(snap.dims[LLMUX_RL_REQ_MINUTE].synced);
  llmux_rl_store_destroy(s);
}

static void a_fresh_provider_report_below_our_count_holds_requests(void **state) {
  llmux_rl_store_t *s = store_with(&groq_70b, 0, 0, 100000, 0);
  llmux_header_t plenty[] = {hdr("x-ratelimit-remaining-tokens", "5000"),
                             hdr("x-ratelimit-reset-tokens", "30s")};
  llmux_header_t none[] = {hdr("x-ratelimit-remaining-tokens", "0"),
                           hdr("x-ratelimit-reset-tokens", "7.66s")};
  uint64_t ra;
  (void)state;
  llmux_rl_sync_headers(s, &groq_70b, LLMUX_RL_STYLE_GROQ, plenty, 2, 1000, WALL);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 500, 1000, &ra), 0);
  /* what we send after the report is taken off what it said */
  reserve_committed(s, &groq_70b, 4800, 1000);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 500, 1000, &ra), LLMUX_EAGAIN);
  assert_int_equal(ra, 30000);

  llmux_rl_sync_headers(s, &groq_70b, LLMUX_RL_STYLE_GROQ, none, 2, 2 * MIN, WALL);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 1, 2 * MIN, &ra), LLMUX_EAGAIN);
  assert_int_equal(ra, 7660);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 1, 2 * MIN + 7660, &ra), 0);
  llmux_rl_store_destroy(s);
}

static void a_configured_limit_holds_even_when_the_provider_reports_more(void **state) {
  llmux_rl_store_t *s = store_with(&groq_70b, 0, 0, 1000, 0);
  llmux_header_t plenty[] = {hdr("x-ratelimit-remaining-tokens", "5000"),
                             hdr("x-ratelimit-reset-tokens", "30s")};
  uint64_t ra;
  (void)state;
  reserve_committed(s, &groq_70b, 1000, 0);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 500, 0, &ra), LLMUX_EAGAIN);
  llmux_rl_sync_headers(s, &groq_70b, LLMUX_RL_STYLE_GROQ, plenty, 2, 1000, WALL);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 500, 1000, &ra), LLMUX_EAGAIN);
  assert_true(ra > 30000);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 500, MIN + 1000, &ra), 0);
  llmux_rl_store_destroy(s);
}

static void a_commit_after_a_newer_report_is_not_counted_twice(void **state) {
  llmux_rl_store_t *s = store_with(NULL, 0, 0, 0, 0);
  llmux_header_t h1[] = {hdr("x-ratelimit-remaining-tokens", "1000"),
                         hdr("x-ratelimit-reset-tokens", "60s")};
  llmux_header_t h2[] = {hdr("x-ratelimit-remaining-tokens", "500"),
                         hdr("x-ratelimit-reset-tokens", "60s")};
  llmux_rl_reservation_t r;
  llmux_rl_snapshot_t snap;
  (void)state;
  memset(&r, 0, sizeof(r));
  llmux_rl_sync_headers(s, &groq_70b, LLMUX_RL_STYLE_OPENAI, h1, 2, 0, WALL);
  llmux_rl_reserve(s, &groq_70b, 400, 0, &r);
  llmux_rl_snapshot(s, &groq_70b, 0, &snap);
  assert_int_equal(snap.dims[LLMUX_RL_TOK_MINUTE].synced_remaining, 600);
  llmux_rl_commit(&r, 100, 10);
  llmux_rl_snapshot(s, &groq_70b, 10, &snap);
  assert_int_equal(snap.dims[LLMUX_RL_TOK_MINUTE].synced_remaining, 900);

  memset(&r, 0, sizeof(r));
  llmux_rl_reserve(s, &groq_70b, 100, 20, &r);
  /* this request's own response reports the provider's count with it in */
  llmux_rl_sync_headers(s, &groq_70b, LLMUX_RL_STYLE_OPENAI, h2, 2, 30, WALL);
  llmux_rl_commit(&r, 400, 30);
  llmux_rl_snapshot(s, &groq_70b, 30, &snap);
  assert_int_equal(snap.dims[LLMUX_RL_TOK_MINUTE].synced_remaining, 500);
  llmux_rl_store_destroy(s);
}

static void groq_request_headers_are_per_day_and_token_headers_per_minute(void **state) {
  llmux_rl_store_t *s = store_with(&groq_8b, 30, 0, 0, 0);
  llmux_header_t h[] = {
    hdr("x-ratelimit-limit-requests", "14400"), hdr("x-ratelimit-remaining-requests", "0"),
    hdr("x-ratelimit-reset-requests", "2m59.56s"), hdr("x-ratelimit-limit-tokens", "6000"),
    hdr("x-ratelimit-remaining-tokens", "5990"), hdr("x-ratelimit-reset-tokens", "100ms"),
  };
  llmux_rl_snapshot_t snap;
  uint64_t ra;
  (void)state;
  llmux_rl_sync_headers(s, &groq_8b, LLMUX_RL_STYLE_GROQ, h, 6, 0, WALL);
  assert_int_equal(llmux_rl_snapshot(s, &groq_8b, 0, &snap), 0);
  assert_true(snap.dims[LLMUX_RL_REQ_DAY].synced);
  assert_int_equal(snap.dims[LLMUX_RL_REQ_DAY].synced_limit, 14400);
  assert_false(snap.dims[LLMUX_RL_REQ_MINUTE].synced);
  assert_true(snap.dims[LLMUX_RL_TOK_MINUTE].synced);
  assert_int_equal(snap.dims[LLMUX_RL_TOK_MINUTE].synced_remaining, 5990);
  assert_int_equal(snap.dims[LLMUX_RL_TOK_MINUTE].reset_in_ms, 100);
  assert_false(snap.dims[LLMUX_RL_TOK_DAY].synced);
  assert_int_equal(llmux_rl_check(s, &groq_8b, 10, 0, &ra), LLMUX_EAGAIN);
  assert_int_equal(ra, 179560);

  /* the same headers read OpenAI's way are a per-minute request limit */
  llmux_rl_store_destroy(s);
  s = store_with(NULL, 0, 0, 0, 0);
  llmux_rl_sync_headers(s, &groq_8b, LLMUX_RL_STYLE_OPENAI, h, 6, 0, WALL);
  llmux_rl_snapshot(s, &groq_8b, 0, &snap);
  assert_true(snap.dims[LLMUX_RL_REQ_MINUTE].synced);
  assert_false(snap.dims[LLMUX_RL_REQ_DAY].synced);
  llmux_rl_store_destroy(s);
}

static void cerebras_headers_name_their_window_and_reset_in_seconds(void **state) {
  llmux_header_t h[] = {
    hdr("x-ratelimit-limit-requests-day", "14400"),
    hdr("x-ratelimit-remaining-requests-day", "14000"),
    hdr("x-ratelimit-reset-requests-day", "33011.382867097855"),
    hdr("x-ratelimit-limit-tokens-minute", "60000"),
    hdr("x-ratelimit-remaining-tokens-minute", "0"),
    hdr("x-ratelimit-reset-tokens-minute", "11.382867097854614"),
  };
  llmux_rl_info_t info;
  llmux_rl_store_t *s = store_with(NULL, 0, 0, 0, 0);
  llmux_rl_key_t key = {"cerebras", "llama-3.3-70b"};
  uint64_t ra;
  (void)state;
  assert_int_equal(llmux_rl_parse_headers(LLMUX_RL_STYLE_CEREBRAS, h, 6, WALL, &info), 6);
  assert_int_equal(info.dims[LLMUX_RL_REQ_DAY].remaining, 14000);
  assert_int_equal(info.dims[LLMUX_RL_REQ_DAY].reset_in_ms, 33011383);
  assert_int_equal(info.dims[LLMUX_RL_TOK_MINUTE].limit, 60000);
  assert_int_equal(info.dims[LLMUX_RL_TOK_MINUTE].reset_in_ms, 11383);
  assert_false(info.dims[LLMUX_RL_REQ_MINUTE].has_remaining);
  assert_int_equal(llmux_rl_apply(s, &key, &info, 0), 0);
  assert_int_equal(llmux_rl_check(s, &key, 1, 0, &ra), LLMUX_EAGAIN);
  assert_int_equal(ra, 11383);
  llmux_rl_store_destroy(s);
}

static void anthropic_resets_are_rfc3339_times(void **state) {
  llmux_header_t h[] = {
    hdr("anthropic-ratelimit-requests-limit", "50"),
    hdr("anthropic-ratelimit-requests-remaining", "0"),
    hdr("anthropic-ratelimit-requests-reset", "2024-05-01T12:00:30Z"),
    hdr("anthropic-ratelimit-tokens-remaining", "5000"),
    hdr("anthropic-ratelimit-tokens-reset", "2024-05-01T12:00:05Z"),
    hdr("anthropic-ratelimit-input-tokens-limit", "40000"),
    hdr("anthropic-ratelimit-input-tokens-remaining", "1000"),
    hdr("anthropic-ratelimit-input-tokens-reset", "2024-05-01T14:00:12.5+02:00"),
    hdr("anthropic-ratelimit-output-tokens-remaining", "2000"),
    hdr("x-ratelimit-remaining-requests", "99"), /* not Anthropic's: ignored */
  };
  llmux_rl_info_t info;
  (void)state;
  assert_int_equal(llmux_rl_parse_headers(LLMUX_RL_STYLE_ANTHROPIC, h, 10, WALL, &info), 9);
  assert_int_equal(info.dims[LLMUX_RL_REQ_MINUTE].limit, 50);
  assert_int_equal(info.dims[LLMUX_RL_REQ_MINUTE].remaining, 0);
  assert_int_equal(info.dims[LLMUX_RL_REQ_MINUTE].reset_in_ms, 30000);
  /* tokens: the input-token limit is the one that stops us first */
  assert_int_equal(info.dims[LLMUX_RL_TOK_MINUTE].remaining, 1000);
  assert_int_equal(info.dims[LLMUX_RL_TOK_MINUTE].limit, 40000);
  assert_int_equal(info.dims[LLMUX_RL_TOK_MINUTE].reset_in_ms, 12500);
  /* a reset already past means "now" */
  h[2] = hdr("anthropic-ratelimit-requests-reset", "2024-05-01T11:59:00Z");
  llmux_rl_parse_headers(LLMUX_RL_STYLE_ANTHROPIC, h, 10, WALL, &info);
  assert_int_equal(info.dims[LLMUX_RL_REQ_MINUTE].reset_in_ms, 0);
}

static void retry_after_in_a_response_blocks_the_route(void **state) {
  llmux_rl_store_t *s = store_with(NULL, 0, 0, 0, 0);
  llmux_header_t secs[] = {hdr("Retry-After", "2")};
  llmux_header_t both[] = {hdr("retry-after", "2"), hdr("retry-after-ms", "250.5")};
  llmux_rl_snapshot_t snap;
  uint64_t ra;
  (void)state;
  llmux_rl_sync_headers(s, &groq_70b, LLMUX_RL_STYLE_GROQ, secs, 1, 1000, WALL);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 1, 1000, &ra), LLMUX_EAGAIN);
  assert_int_equal(ra, 2000);
  assert_int_equal(llmux_rl_check(s, &groq_8b, 1, 1000, &ra), 0); /* other routes: no */
  llmux_rl_snapshot(s, &groq_70b, 1000, &snap);
  assert_int_equal(snap.block_reason, LLMUX_RL_BLOCK_RETRY_AFTER);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 1, 3000, &ra), 0);

  llmux_rl_sync_headers(s, &groq_70b, LLMUX_RL_STYLE_OPENAI, both, 2, 5000, WALL);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 1, 5000, &ra), LLMUX_EAGAIN);
  assert_int_equal(ra, 251); /* retry-after-ms wins, rounded up */
  llmux_rl_store_destroy(s);
}

static void retry_after_values_in_every_form(void **state) {
  static const struct { const char *v; uint64_t ms; } ok[] = {
    {"20", 20000}, {" 1.5 ", 1500}, {"0", 0}, {"0.0001", 1},
    {"Wed, 01 May 2024 12:01:00 GMT", 60000},
    {"Wednesday, 01-May-24 12:00:10 GMT", 10000},
    {"Wed May  1 12:00:02 2024", 2000},
    {"Tue, 30 Apr 2024 12:00:00 GMT", 0}, /* in the past */
  };
  static const char *bad[] = {"", "soon", "-1", "1s", "Wed, 01 May 2024 25:00:00 GMT",
                              "Wed, 01 Foo 2024 12:00:00 GMT", "1.5.2"};
  uint64_t ms;
  size_t i;
  (void)state;
  for (i = 0; i < LLMUX_COUNTOF(ok); i++) {
    ms = 12345;
    assert_int_equal(llmux_rl_parse_retry_after(ok[i].v, strlen(ok[i].v), WALL, &ms), 0);
    assert_int_equal(ms, ok[i].ms);
  }
  for (i = 0; i < LLMUX_COUNTOF(bad); i++)
    assert_int_equal(llmux_rl_parse_retry_after(bad[i], strlen(bad[i]), WALL, &ms),
                     LLMUX_EINVAL);
}

static void go_durations_as_openai_and_groq_send_them(void **state) {
  static const struct { const char *v; uint64_t ms; } ok[] = {
    {"1s", 1000}, {"6m0s", 360000}, {"2m59.56s", 179560}, {"7.66s", 7660},
    {"20ms", 20}, {"1h2m3s", 3723000}, {"1.5us", 1}, {"0s", 0}, {"12", 12000},
    {"0.25", 250}, {"1m30.001s", 90001},
  };
  static const char *bad[] = {"", "s", "1x", "-1s", "1s2", "m1", "1 s"};
  uint64_t ms;
  size_t i;
  (void)state;
  for (i = 0; i < LLMUX_COUNTOF(ok); i++) {
    ms = 12345;
    assert_int_equal(llmux_rl_parse_go_duration(ok[i].v, strlen(ok[i].v), &ms), 0);
    assert_int_equal(ms, ok[i].ms);
  }
  for (i = 0; i < LLMUX_COUNTOF(bad); i++)
    assert_int_equal(llmux_rl_parse_go_duration(bad[i], strlen(bad[i]), &ms),
                     LLMUX_EINVAL);
}

static void rfc3339_times_with_offsets_and_fractions(void **state) {
  int64_t t;
  (void)state;
  assert_int_equal(llmux_rl_parse_rfc3339("2024-05-01T12:00:00Z", 20, &t), 0);
  assert_int_equal(t, WALL);
  assert_int_equal(llmux_rl_parse_rfc3339("2024-05-01t07:30:00.0001-04:30", 30, &t), 0);
  assert_int_equal(t, WALL + 1);
  assert_int_equal(llmux_rl_parse_rfc3339("1970-01-01T00:00:00Z", 20, &t), 0);
  assert_int_equal(t, 0);
  assert_int_equal(llmux_rl_parse_rfc3339("2024-02-29T00:00:00Z", 20, &t), 0);
  assert_int_equal(t, 1709164800000LL);
  assert_int_equal(llmux_rl_parse_rfc3339("2024-05-01T12:00:00", 19, &t), LLMUX_EINVAL);
  assert_int_equal(llmux_rl_parse_rfc3339("2024-13-01T12:00:00Z", 20, &t), LLMUX_EINVAL);
  assert_int_equal(llmux_rl_parse_rfc3339("2024-05-01T12:00:00Zx", 21, &t), LLMUX_EINVAL);
}

/* ---- Blocks ------------------------------------------------------------ */

static void a_spend_limit_block_stays_until_its_reset(void **state) {
  llmux_rl_store_t *s = store_with(NULL, 0, 0, 0, 0);
  llmux_rl_key_t sonnet = {"anthropic", "claude-3-5-sonnet"};
  llmux_rl_key_t wide = {"anthropic", NULL};
  llmux_header_t fine[] = {hdr("anthropic-ratelimit-requests-remaining", "49"),
                           hdr("retry-after", "1")};
  llmux_rl_snapshot_t snap;
  uint64_t ra, hour = 60u * MIN;
  (void)state;
  assert_int_equal(llmux_rl_block(s, &wide, 1000 + hour, LLMUX_RL_BLOCK_SPEND_LIMIT), 0);
  /* a late response of an earlier request, and a shorter block, change nothing */
  llmux_rl_sync_headers(s, &sonnet, LLMUX_RL_STYLE_ANTHROPIC, fine, 2, 2000, WALL);
  llmux_rl_block(s, &wide, 5000, LLMUX_RL_BLOCK_RETRY_AFTER);
  assert_int_equal(llmux_rl_check(s, &sonnet, 1, 2000, &ra), LLMUX_EAGAIN);
  assert_int_equal(ra, hour - 1000);
  assert_int_equal(llmux_rl_snapshot(s, &wide, 2000, &snap), 0);
  assert_int_equal(snap.block_reason, LLMUX_RL_BLOCK_SPEND_LIMIT);
  assert_int_equal(snap.blocked_for_ms, hour - 1000);
  assert_int_equal(llmux_rl_check(s, &sonnet, 1, 1000 + hour - 1, &ra), LLMUX_EAGAIN);
  assert_int_equal(llmux_rl_check(s, &sonnet, 1, 1000 + hour, &ra), 0);

  llmux_rl_block(s, &wide, LLMUX_RL_FOREVER, LLMUX_RL_BLOCK_SPEND_LIMIT);
  assert_int_equal(llmux_rl_check(s, &sonnet, 1, 100 * DAY, &ra), LLMUX_EAGAIN);
  assert_true(ra == LLMUX_RL_FOREVER);
  llmux_rl_unblock(s, &wide);
  assert_int_equal(llmux_rl_check(s, &sonnet, 1, 100 * DAY, &ra), 0);
  assert_int_equal(llmux_rl_block(s, &wide, 1, LLMUX_RL_BLOCK_NONE), LLMUX_EINVAL);
  llmux_rl_store_destroy(s);
}

/* ---- Token estimates --------------------------------------------------- */

static void cerebras_reserves_the_prompt_plus_max_completion_tokens(void **state) {
  const char *body = "{\"model\":\"llama-3.3-70b\",\"max_tokens\":50,"
                     "\"messages\":[{\"role\":\"user\",\"content\":\"Hello there!\"}],"
                     "\"max_completion_tokens\":1000}";
  uint64_t prompt = llmux_rl_estimate_tokens(body, strlen(body)), max = 0;
  (void)state;
  assert_int_equal(llmux_rl_parse_max_tokens(body, strlen(body), &max), 0);
  assert_int_equal(max, 1000); /* max_completion_tokens wins over max_tokens */
  assert_int_equal(llmux_rl_tokens_to_reserve(LLMUX_RL_STYLE_CEREBRAS, prompt, max, 8192),
                   prompt + 1000);
  assert_int_equal(llmux_rl_tokens_to_reserve(LLMUX_RL_STYLE_CEREBRAS, prompt, 0, 8192),
                   8192);
  assert_int_equal(llmux_rl_tokens_to_reserve(LLMUX_RL_STYLE_CEREBRAS, prompt, 0, 0),
                   prompt + 4096);
  assert_int_equal(llmux_rl_tokens_to_reserve(LLMUX_RL_STYLE_GROQ, prompt, max, 8192),
                   prompt + LLMUX_RL_DEFAULT_COMPLETION_TOKENS);
  assert_int_equal(llmux_rl_tokens_to_reserve(LLMUX_RL_STYLE_OPENAI, prompt, 100, 0),
                   prompt + 100);
}

static void max_tokens_is_read_from_the_body(void **state) {
  static const struct { const char *body; int rc; uint64_t v; } cases[] = {
    {"{\"max_tokens\":64}", 0, 64},
    {"{\"max_completion_tokens\":-1,\"max_tokens\":10}", 0, 10},
    {"{\"max_completion_tokens\":-1}", LLMUX_ENOTFOUND, 0},
    {"{\"max_tokens\":\"5\"}", LLMUX_ENOTFOUND, 0},
    {"{\"max_tokens\":1.5}", LLMUX_ENOTFOUND, 0},
    {"{\"messages\":[{\"max_tokens\":5}]}", LLMUX_ENOTFOUND, 0},
    {"{\"max_tokens\":5", LLMUX_EINVAL, 0},
  };
  size_t i;
  uint64_t v;
  (void)state;
  for (i = 0; i < LLMUX_COUNTOF(cases); i++) {
    v = 0;
    assert_int_equal(llmux_rl_parse_max_tokens(cases[i].body, strlen(cases[i].body), &v),
                     cases[i].rc);
    assert_int_equal(v, cases[i].v);
  }
}

static void token_estimate_is_a_quarter_of_the_message_text(void **state) {
  char body[1024], text[401];
  uint64_t est;
  (void)state;
  memset(text, 'x', 400);
  text[400] = '\0';
  snprintf(body, sizeof(body),
           "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"%s\"},"
           "{\"role\":\"assistant\",\"content\" : \"ok\"}]}", text);
  est = llmux_rl_estimate_tokens(body, strlen(body));
  /* text: user 4 + 400 + assistant 9 + ok 2 = 415 bytes -> 104; 2 messages */
  assert_int_equal(est, 104 + 2 * 4 + 3);
  assert_int_equal(llmux_rl_estimate_tokens("{\"prompt\":\"abcdefgh\"}", 21), 2 + 3);
  assert_int_equal(llmux_rl_estimate_tokens("{}", 2), 3);
  assert_int_equal(llmux_rl_estimate_tokens("not json at all!", 16), 4 + 3);
}

static void token_estimate_finds_string_ends_past_escaped_quotes(void **state) {
  /* The value's raw text is ab\"c\"d\\ (10 bytes): escaped quotes inside,
   * and a string ending in an escaped backslash. */
  const char *body = "{\"prompt\":\"ab\\\"c\\\"d\\\\\",\"n\":1}";
  llmux_json_field_t f[] = {{"prompt"}, {"max_tokens"}, {"max_completion_tokens"}};
  uint64_t max = 7;
  (void)state;
  assert_int_equal(llmux_rl_estimate_tokens(body, strlen(body)), (10 + 3) / 4 + 3);
  assert_int_equal(llmux_json_scan(body, strlen(body), f, 3, NULL, NULL), 0);
  assert_int_equal(llmux_rl_estimate_fields(f, 3), (10 + 3) / 4 + 3);
  assert_int_equal(llmux_rl_max_tokens_fields(f, 3, &max), LLMUX_ENOTFOUND);
}

/* ---- The store itself -------------------------------------------------- */

static void the_store_holds_at_most_max_keys(void **state) {
  llmux_rl_store_t *s = NULL;
  llmux_limits_t l;
  llmux_rl_key_t k[3] = {{"a", "1"}, {"a", NULL}, {"b", "1"}};
  llmux_header_t h[] = {hdr("x-ratelimit-remaining-tokens", "1")};
  llmux_rl_snapshot_t snap;
  uint64_t ra = 7;
  (void)state;
  memset(&l, 0, sizeof(l));
  l.requests_per_minute = 1;
  assert_int_equal(llmux_rl_memory_store_new(0, &s), LLMUX_EINVAL);
  assert_int_equal(llmux_rl_memory_store_new(2, &s), 0);
  assert_int_equal(llmux_rl_set_limits(s, &k[0], &l), 0);
  assert_int_equal(llmux_rl_set_limits(s, &k[1], &l), 0); /* a different key */
  assert_int_equal(llmux_rl_set_limits(s, &k[0], &l), 0); /* the same key again */
  assert_int_equal(llmux_rl_set_limits(s, &k[2], &l), LLMUX_ETOOLARGE);
  assert_int_equal(llmux_rl_block(s, &k[2], 10, LLMUX_RL_BLOCK_RETRY_AFTER), LLMUX_ETOOLARGE);
  assert_int_equal(llmux_rl_sync_headers(s, &k[2], LLMUX_RL_STYLE_OPENAI, h, 1, 0, WALL),
                   LLMUX_ETOOLARGE);
  /* a key never seen has headroom and no snapshot */
  assert_int_equal(llmux_rl_check(s, &k[2], 1, 0, &ra), 0);
  assert_int_equal(ra, 0);
  assert_int_equal(llmux_rl_snapshot(s, &k[2], 0, &snap), LLMUX_ENOTFOUND);
  llmux_rl_store_destroy(s);
}

static void count_key(void *arg, const llmux_rl_key_t *key, const llmux_rl_snapshot_t *snap) {
  int *seen = arg;
  if (key->model == NULL) seen[0]++;
  else if (strcmp(key->model, "llama-3.3-70b-versatile") == 0 &&
           snap->dims[LLMUX_RL_REQ_MINUTE].used == 1)
    seen[1]++;
}

static void foreach_reports_every_key_with_its_counts(void **state) {
  llmux_rl_store_t *s = store_with(&groq_70b, 5, 0, 0, 0);
  int seen[2] = {0, 0};
  (void)state;
  llmux_rl_block(s, &groq_all, 10, LLMUX_RL_BLOCK_RETRY_AFTER);
  reserve_committed(s, &groq_70b, 1, 0);
  llmux_rl_foreach(s, 0, count_key, seen);
  assert_int_equal(seen[0], 1);
  assert_int_equal(seen[1], 1);
  llmux_rl_store_destroy(s);
}

static void configure_sets_every_route_of_a_config(void **state) {
  llmux_rl_store_t *s = store_with(NULL, 0, 0, 0, 0);
  llmux_route_conf_t r[2], *routes[2] = {&r[0], &r[1]};
  llmux_config_t cfg;
  llmux_rl_snapshot_t snap;
  uint64_t ra;
  (void)state;
  memset(r, 0, sizeof(r));
  memset(&cfg, 0, sizeof(cfg));
  r[0].provider_name = "groq";
  r[0].id = "llama-3.3-70b-versatile";
  r[0].limits.requests_per_minute = 30;
  r[0].limits.tokens_per_minute = 6000;
  r[1].provider_name = "cerebras";
  r[1].id = "llama-3.3-70b";
  r[1].limits.requests_per_day = 14400;
  cfg.routes = routes;
  cfg.nroutes = 2;
  assert_int_equal(llmux_rl_configure(s, &cfg), 0);
  assert_int_equal(llmux_rl_snapshot(s, &groq_70b, 0, &snap), 0);
  assert_int_equal(snap.dims[LLMUX_RL_REQ_MINUTE].limit, 30);
  assert_int_equal(snap.dims[LLMUX_RL_TOK_MINUTE].limit, 6000);
  assert_int_equal(snap.dims[LLMUX_RL_REQ_DAY].limit, 0);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 6001, 0, &ra), 0); /* window empty */
  reserve_committed(s, &groq_70b, 1, 0);
  assert_int_equal(llmux_rl_check(s, &groq_70b, 6000, 0, &ra), LLMUX_EAGAIN);
  llmux_rl_store_destroy(s);
}

/* ---- What is left (GET /admin/routes) ----------------------------------- */

static void left_is_the_least_of_our_count_the_providers_report_and_the_provider_wide_key(
    void **state) {
  llmux_rl_store_t *s = store_with(&groq_70b, 10, 0, 6000, 0);
  llmux_limits_t wide;
  llmux_header_t h[] = {hdr("x-ratelimit-limit-tokens", "8000"),
                        hdr("x-ratelimit-remaining-tokens", "500"),
                        hdr("x-ratelimit-reset-tokens", "20s")};
  llmux_rl_left_t left[LLMUX_RL_NDIMS];
  (void)state;
  memset(&wide, 0, sizeof wide);
  wide.requests_per_day = 5;
  assert_int_equal(llmux_rl_set_limits(s, &groq_all, &wide), 0);
  reserve_committed(s, &groq_70b, 100, 1000);  /* slot [1 s, 2 s) */
  reserve_committed(s, &groq_70b, 100, 3500);  /* slot [3 s, 4 s) */
  llmux_rl_sync_headers(s, &groq_70b, LLMUX_RL_STYLE_OPENAI, h, 3, 4000, WALL);

  assert_int_equal(llmux_rl_left(s, &groq_70b, 5000, left), 0);
  /* Our count: 10 - 2, until the first request leaves at 62 s. */
  assert_true(left[LLMUX_RL_REQ_MINUTE].limited);
  assert_int_equal(left[LLMUX_RL_REQ_MINUTE].remaining, 8);
  assert_int_equal(left[LLMUX_RL_REQ_MINUTE].limit, 10);
  assert_int_equal(left[LLMUX_RL_REQ_MINUTE].reset_in_ms, 62000 - 5000);
  /* The provider-wide key's day: 5 - 2. */
  assert_int_equal(left[LLMUX_RL_REQ_DAY].remaining, 3);
  assert_int_equal(left[LLMUX_RL_REQ_DAY].limit, 5);
  /* Tokens: the provider's 500 (below our 6000 - 200), its limit and reset. */
  assert_int_equal(left[LLMUX_RL_TOK_MINUTE].remaining, 500);
  assert_int_equal(left[LLMUX_RL_TOK_MINUTE].limit, 8000);
  assert_int_equal(left[LLMUX_RL_TOK_MINUTE].reset_in_ms, 19000);
  assert_false(left[LLMUX_RL_TOK_DAY].limited);

  /* Past the provider's reset our own count speaks again. */
  assert_int_equal(llmux_rl_left(s, &groq_70b, 30000, left), 0);
  assert_int_equal(left[LLMUX_RL_TOK_MINUTE].remaining, 6000 - 200);
  assert_int_equal(left[LLMUX_RL_TOK_MINUTE].limit, 6000);
  llmux_rl_store_destroy(s);
}

static void left_of_an_unknown_key_is_unlimited(void **state) {
  llmux_rl_store_t *s = store_with(NULL, 0, 0, 0, 0);
  llmux_rl_left_t left[LLMUX_RL_NDIMS];
  int d;
  (void)state;
  assert_int_equal(llmux_rl_left(s, &groq_8b, 0, left), 0);
  for (d = 0; d < LLMUX_RL_NDIMS; d++) assert_false(left[d].limited);
  assert_int_equal(llmux_rl_left(NULL, &groq_8b, 0, left), LLMUX_EINVAL);
  llmux_rl_store_destroy(s);
}

static void style_names_round_trip(void **state) {
  (void)state;
  assert_int_equal(llmux_rl_style_from_name("Groq"), LLMUX_RL_STYLE_GROQ);
  assert_int_equal(llmux_rl_style_from_name("anthropic"), LLMUX_RL_STYLE_ANTHROPIC);
  assert_int_equal(llmux_rl_style_from_name("cerebras"), LLMUX_RL_STYLE_CEREBRAS);
  assert_int_equal(llmux_rl_style_from_name("vllm"), LLMUX_RL_STYLE_GENERIC);
  assert_int_equal(llmux_rl_style_from_name(NULL), LLMUX_RL_STYLE_GENERIC);
  assert_string_equal(llmux_rl_style_name(LLMUX_RL_STYLE_OPENAI), "openai");
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(rpm_exhausted_waits_until_the_oldest_request_leaves),
    cmocka_unit_test(rpm_frees_everything_after_a_quiet_window),
    cmocka_unit_test(tpm_counts_the_estimate_then_the_actual_usage),
    cmocka_unit_test(a_request_larger_than_the_limit_waits_for_an_empty_window),
    cmocka_unit_test(rpd_limits_the_day_with_24_minute_slots),
    cmocka_unit_test(a_released_request_gives_its_share_back),
    cmocka_unit_test(the_provider_wide_limit_applies_on_top_of_each_route),
    cmocka_unit_test(openai_headers_rule_requests_and_tokens_per_minute),
    cmocka_unit_test(a_fresh_provider_report_below_our_count_holds_requests),
    cmocka_unit_test(a_configured_limit_holds_even_when_the_provider_reports_more),
    cmocka_unit_test(a_commit_after_a_newer_report_is_not_counted_twice),
    cmocka_unit_test(groq_request_headers_are_per_day_and_token_headers_per_minute),
    cmocka_unit_test(cerebras_headers_name_their_window_and_reset_in_seconds),
    cmocka_unit_test(anthropic_resets_are_rfc3339_times),
    cmocka_unit_test(retry_after_in_a_response_blocks_the_route),
    cmocka_unit_test(retry_after_values_in_every_form),
    cmocka_unit_test(go_durations_as_openai_and_groq_send_them),
    cmocka_unit_test(rfc3339_times_with_offsets_and_fractions),
    cmocka_unit_test(a_spend_limit_block_stays_until_its_reset),
    cmocka_unit_test(cerebras_reserves_the_prompt_plus_max_completion_tokens),
    cmocka_unit_test(max_tokens_is_read_from_the_body),
    cmocka_unit_test(token_estimate_is_a_quarter_of_the_message_text),
    cmocka_unit_test(token_estimate_finds_string_ends_past_escaped_quotes),
    cmocka_unit_test(the_store_holds_at_most_max_keys),
    cmocka_unit_test(foreach_reports_every_key_with_its_counts),
    cmocka_unit_test(configure_sets_every_route_of_a_config),
    cmocka_unit_test(left_is_the_least_of_our_count_the_providers_report_and_the_provider_wide_key),
    cmocka_unit_test(left_of_an_unknown_key_is_unlimited),
    cmocka_unit_test(style_names_round_trip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
