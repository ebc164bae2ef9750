/* The services table the host lends every plugin (ABI 1.3 additions):
 * what a plugin gets when it calls them, and how it tells which ones a
 * host has. The parsers behind them have their own tests
 * (test_route_dialects.c, test_base_split.c); these check the table. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "base/util.h"
#include "plugin/plugin.h"

#define WALL 1714564800000LL /* Wed, 01 May 2024 12:00:00 GMT */

static llmux_header_t hdr(const char *name, const char *value) {
  llmux_header_t h;
  h.name = (llmux_str_t){name, strlen(name)};
  h.value = (llmux_str_t){value, strlen(value)};
  return h;
}

static void the_table_is_this_abi_and_lends_every_1_3_service(void **state) {
  const llmux_host_api_t *h = llmux_host_api();
  llmux_host_api_t older;
  (void)state;
  assert_int_equal(h->abi_major, LLMUX_PROVIDER_ABI_MAJOR);
  assert_int_equal(h->abi_minor, 4);
  assert_int_equal(h->size, sizeof(llmux_host_api_t));
  assert_true(LLMUX_HOST_HAS(h, parse_ratelimit_headers));
  assert_true(LLMUX_HOST_HAS(h, classify_status));
  assert_true(LLMUX_HOST_HAS(h, parse_retry_after));
  assert_true(LLMUX_HOST_HAS(h, split_new) && LLMUX_HOST_HAS(h, split_next) &&
              LLMUX_HOST_HAS(h, split_reset) && LLMUX_HOST_HAS(h, split_free));
  /* A 1.2 host's table ends at request_json: a plugin sees no 1.3 service. */
  older = *h;
  older.abi_minor = 2;
  older.size = offsetof(llmux_host_api_t, parse_ratelimit_headers);
  assert_true(LLMUX_HOST_HAS(&older, request_json));
  assert_false(LLMUX_HOST_HAS(&older, parse_ratelimit_headers));
  assert_false(LLMUX_HOST_HAS(&older, split_free));
}

static void classify_status_gives_the_usual_reading_of_each_status(void **state) {
  static const struct { int status; llmux_fail_class_t cls; int elsewhere, same; } t[] = {
    {429, LLMUX_FAIL_RATE_LIMITED, 1, 0},
    {402, LLMUX_FAIL_QUOTA, 1, 0},
    {401, LLMUX_FAIL_AUTH, 1, 0},
    {403, LLMUX_FAIL_AUTH, 1, 0},
    {404, LLMUX_FAIL_MODEL_NOT_FOUND, 1, 0},
    {408, LLMUX_FAIL_TIMEOUT, 1, 1},
    {504, LLMUX_FAIL_TIMEOUT, 1, 1},
    {503, LLMUX_FAIL_OVERLOADED, 1, 1},
    {529, LLMUX_FAIL_OVERLOADED, 1, 1},
    {500, LLMUX_FAIL_SERVER, 1, 1},
    {502, LLMUX_FAIL_SERVER, 1, 1},
    {599, LLMUX_FAIL_SERVER, 1, 1},
    {400, LLMUX_FAIL_BAD_REQUEST, 0, 0},   /* the client's request: final */
    {413, LLMUX_FAIL_BAD_REQUEST, 0, 0},
    {422, LLMUX_FAIL_BAD_REQUEST, 0, 0},
    {499, LLMUX_FAIL_BAD_REQUEST, 0, 0},
    {302, LLMUX_FAIL_UPSTREAM_GARBAGE, 1, 0}, /* not an error status at all */
    {200, LLMUX_FAIL_UPSTREAM_GARBAGE, 1, 0},
    {0, LLMUX_FAIL_UPSTREAM_GARBAGE, 1, 0},
    {600, LLMUX_FAIL_UPSTREAM_GARBAGE, 1, 0},
  };
  const llmux_host_api_t *h = llmux_host_api();
  size_t i;
  (void)state;
  for (i = 0; i < LLMUX_COUNTOF(t); i++) {
    llmux_error_info_t e;
    memset(&e, 0x5a, sizeof e); /* whatever was there */
    e.message = (llmux_buf_t){0};
    e.retry_after_ms = 777;
    if (h->classify_status(t[i].status, &e) != t[i].cls || e.cls != t[i].cls)
      fail_msg("status %d: class %d, want %d", t[i].status, (int)e.cls, (int)t[i].cls);
    assert_int_equal(e.retry_elsewhere, t[i].elsewhere);
    assert_int_equal(e.retry_same, t[i].same);
    assert_int_equal(e.retry_after_ms, 777); /* not its business */
    assert_null(e.message.base);
  }
}

static void parse_retry_after_is_the_strict_parser(void **state) {
  const llmux_host_api_t *h = llmux_host_api();
  uint64_t ms = 0;
  (void)state;
  assert_int_equal(h->parse_retry_after("17", 2, WALL, &ms), 0);
  assert_int_equal(ms, 17000);
  assert_int_equal(h->parse_retry_after("Wed, 01 May 2024 12:00:30 GMT", 29, WALL, &ms), 0);
  assert_int_equal(ms, 30000);
  /* wall 0: the host's clock; a date long past is now. */
  assert_int_equal(h->parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 29, 0, &ms), 0);
  assert_int_equal(ms, 0);
  ms = 5;
  assert_int_equal(h->parse_retry_after("-5", 2, WALL, &ms), LLMUX_EINVAL);
  assert_int_equal(h->parse_retry_after("inf", 3, WALL, &ms), LLMUX_EINVAL);
  assert_int_equal(h->parse_retry_after("1e999", 5, WALL, &ms), LLMUX_EINVAL);
  assert_int_equal(h->parse_retry_after("172801", 6, WALL, &ms), LLMUX_EINVAL);
  assert_int_equal(ms, 5);
}

static void rate_limit_headers_are_read_in_the_named_dialect(void **state) {
  const llmux_host_api_t *h = llmux_host_api();
  llmux_header_t hs[] = {
    hdr("x-ratelimit-limit-requests", "14400"), hdr("x-ratelimit-remaining-requests", "14370"),
    hdr("x-ratelimit-reset-requests", "2m59.56s"), hdr("retry-after", "2"),
  };
  llmux_ratelimit_info_t info;
  (void)state;
  info.size = sizeof info;
  assert_int_equal(h->parse_ratelimit_headers("groq", hs, 4, WALL, &info), 4);
  assert_true(info.dims[LLMUX_RATELIMIT_REQUESTS_DAY].has_remaining);
  assert_int_equal(info.dims[LLMUX_RATELIMIT_REQUESTS_DAY].remaining, 14370);
  assert_int_equal(info.dims[LLMUX_RATELIMIT_REQUESTS_DAY].reset_in_ms, 179560);
  assert_false(info.dims[LLMUX_RATELIMIT_REQUESTS_MINUTE].has_remaining);
  assert_true(info.has_retry_after);
  assert_int_equal(info.retry_after_ms, 2000);
  assert_int_equal(info.size, sizeof info);
  /* Names are case-insensitive; NULL and unknown names read generic,
   * where -requests are per minute, as OpenAI means them. */
  assert_int_equal(h->parse_ratelimit_headers("GROQ", hs, 4, WALL, &info), 4);
  assert_true(info.dims[LLMUX_RATELIMIT_REQUESTS_DAY].has_remaining);
  assert_int_equal(h->parse_ratelimit_headers("openai", hs, 4, WALL, &info), 4);
  assert_true(info.dims[LLMUX_RATELIMIT_REQUESTS_MINUTE].has_remaining);
  assert_false(info.dims[LLMUX_RATELIMIT_REQUESTS_DAY].has_remaining);
  assert_int_equal(h->parse_ratelimit_headers(NULL, hs, 4, WALL, &info), 4);
  assert_true(info.dims[LLMUX_RATELIMIT_REQUESTS_MINUTE].has_remaining);
  assert_int_equal(h->parse_ratelimit_headers("acme", hs, 4, WALL, &info), 4);
  assert_true(info.dims[LLMUX_RATELIMIT_REQUESTS_MINUTE].has_remaining);
}

static void an_older_callers_smaller_result_gets_what_it_has_room_for(void **state) {
  const llmux_host_api_t *h = llmux_host_api();
  llmux_header_t hs[] = {hdr("x-ratelimit-remaining-tokens", "99"), hdr("retry-after", "2")};
  union {
    llmux_ratelimit_info_t info;
    unsigned char bytes[sizeof(llmux_ratelimit_info_t)];
  } u;
  size_t small = offsetof(llmux_ratelimit_info_t, has_retry_after), i;
  (void)state;
  memset(&u, 0xee, sizeof u);
  u.info.size = small; /* a caller whose struct ended before has_retry_after */
  assert_int_equal(h->parse_ratelimit_headers(NULL, hs, 2, WALL, &u.info), 2);
  assert_int_equal(u.info.size, small);
  assert_int_equal(u.info.dims[LLMUX_RATELIMIT_TOKENS_MINUTE].remaining, 99);
  for (i = small; i < sizeof u; i++) assert_int_equal(u.bytes[i], 0xee);
  u.info.size = sizeof(size_t);
  assert_int_equal(h->parse_ratelimit_headers(NULL, hs, 2, WALL, &u.info), LLMUX_EINVAL);
  assert_int_equal(h->parse_ratelimit_headers(NULL, hs, 2, WALL, NULL), LLMUX_EINVAL);
}

static void the_splitter_is_lent_through_the_table(void **state) {
  const llmux_host_api_t *h = llmux_host_api();
  llmux_split_t *s = h->split_new(LLMUX_SPLIT_SSE, 0);
  const char *p = "data: {\"a\":1}\n\ndata: {\"b\"";
  size_t n = strlen(p);
  llmux_str_t item;
  (void)state;
  assert_non_null(s);
  assert_null(h->split_new(42, 0));
  assert_int_equal(h->split_next(s, &p, &n, 0, &item), 1);
  assert_int_equal(item.len, 7);
  assert_int_equal(h->split_next(s, &p, &n, 0, &item), 0);
  p = ":2}\n\n";
  n = strlen(p);
  assert_int_equal(h->split_next(s, &p, &n, 0, &item), 1);
  assert_int_equal(item.len, 7);
  assert_memory_equal(item.base, "{\"b\":2}", 7);
  assert_int_equal(h->split_next(NULL, &p, &n, 0, &item), LLMUX_EINVAL);
  h->split_reset(s);
  h->split_free(s);
  h->split_free(NULL);
}

/* ABI 1.4 appended adjusted and refusal to the txn: a plugin writes them
 * only when the host's txn is long enough, and the host clears and frees
 * them with the other out fields. */
static void the_txn_tells_which_members_the_host_has(void **state) {
  llmux_host_txn_t ht;
  (void)state;
  memset(&ht, 0, sizeof ht);
  ht.txn.size = sizeof ht.txn;
  assert_true(LLMUX_TXN_HAS(&ht.txn, adjusted) && LLMUX_TXN_HAS(&ht.txn, refusal));
  ht.txn.size = offsetof(llmux_txn_t, adjusted); /* a 1.3 host's */
  assert_false(LLMUX_TXN_HAS(&ht.txn, adjusted));
  assert_false(LLMUX_TXN_HAS(&ht.txn, refusal));
  assert_true(LLMUX_TXN_HAS(&ht.txn, served_model));
  ht.txn.size = sizeof ht.txn;
  assert_int_equal(llmux_buf_appends(&ht.txn.adjusted, "temperature"), 0);
  assert_int_equal(llmux_buf_appends(&ht.txn.refusal, "no"), 0);
  llmux_host_txn_clear_out(&ht);
  assert_int_equal(ht.txn.adjusted.len, 0);
  assert_int_equal(ht.txn.refusal.len, 0);
  llmux_host_txn_free(&ht); /* LeakSanitizer: both freed */
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(the_table_is_this_abi_and_lends_every_1_3_service),
    cmocka_unit_test(classify_status_gives_the_usual_reading_of_each_status),
    cmocka_unit_test(parse_retry_after_is_the_strict_parser),
    cmocka_unit_test(rate_limit_headers_are_read_in_the_named_dialect),
    cmocka_unit_test(an_older_callers_smaller_result_gets_what_it_has_room_for),
    cmocka_unit_test(the_splitter_is_lent_through_the_table),
    cmocka_unit_test(the_txn_tells_which_members_the_host_has),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
