/* The providers' rate-limit dialects as values: Retry-After read strictly,
 * waits and resets beyond two days disbelieved, dialect names. (What each
 * dialect's headers mean is in test_route_ratelimit.c, where the store
 * applies them.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "base/util.h"
#include "route/dialects.h"

#define WALL 1714564800000LL /* Wed, 01 May 2024 12:00:00 GMT */
#define DAYS2 (2u * 86400000u)

static llmux_header_t hdr(const char *name, const char *value) {
  llmux_header_t h;
  h.name = (llmux_str_t){name, strlen(name)};
  h.value = (llmux_str_t){value, strlen(value)};
  return h;
}

static void retry_after_takes_seconds_and_http_dates(void **state) {
  static const struct { const char *v; uint64_t ms; } ok[] = {
    {"0", 0}, {"20", 20000}, {" 1.5 ", 1500}, {"\t3\t", 3000}, {"0.0001", 1},
    {"172800", DAYS2},                                  /* two days: believed */
    {"Wed, 01 May 2024 12:01:00 GMT", 60000},          /* IMF-fixdate */
    {"Wednesday, 01-May-24 12:00:10 GMT", 10000},      /* RFC 850 */
    {"Wed May  1 12:00:02 2024", 2000},                /* asctime */
    {"Fri, 03 May 2024 12:00:00 GMT", DAYS2},
    {"Sun, 06 Nov 1994 08:49:37 GMT", 0},              /* in the past: now */
  };
  uint64_t ms;
  size_t i;
  (void)state;
  for (i = 0; i < LLMUX_COUNTOF(ok); i++) {
    ms = 12345;
    if (llmux_rl_parse_retry_after(ok[i].v, strlen(ok[i].v), WALL, &ms) != 0)
      fail_msg("'%s' refused", ok[i].v);
    assert_int_equal(ms, ok[i].ms);
  }
}

static void retry_after_refuses_garbage_signs_infinities_and_long_waits(void **state) {
  static const char *bad[] = {
    "", " ", "soon", "-1", "-0", "+1", "1e3", "1E3", "inf", "Infinity", "nan", "0x10", "1.",
    ".5", "1.5.2", "1s", "1 2", "12abc", "1,5",
    "172801", "172800.001",                               /* above two days */
    "99999999999999999999999", "18446744073709551616",    /* overflows */
    "Fri, 03 May 2024 12:00:01 GMT",                      /* a date beyond two days */
    "Wed, 01 May 2024 25:00:00 GMT", "Wed, 01 Foo 2024 12:00:00 GMT", "Wed, 01 May 2024",
  };
  uint64_t ms;
  size_t i;
  (void)state;
  for (i = 0; i < LLMUX_COUNTOF(bad); i++) {
    ms = 12345;
    if (llmux_rl_parse_retry_after(bad[i], strlen(bad[i]), WALL, &ms) != LLMUX_EINVAL)
      fail_msg("'%s' accepted as %llu ms", bad[i], (unsigned long long)ms);
    assert_int_equal(ms, 12345); /* untouched */
  }
}

static void a_retry_after_beyond_two_days_in_a_response_is_ignored(void **state) {
  llmux_header_t h[] = {hdr("retry-after", "172801"), hdr("retry-after-ms", "1e30")};
  llmux_header_t ms[] = {hdr("retry-after", "5"), hdr("retry-after-ms", "172800001")};
  llmux_header_t ok[] = {hdr("retry-after", "5"), hdr("retry-after-ms", "250.5")};
  llmux_rl_info_t info;
  (void)state;
  assert_int_equal(llmux_rl_parse_headers(LLMUX_RL_STYLE_OPENAI, h, 2, WALL, &info), 0);
  assert_false(info.has_retry_after);
  /* A retry-after-ms not believed leaves retry-after to say. */
  assert_int_equal(llmux_rl_parse_headers(LLMUX_RL_STYLE_OPENAI, ms, 2, WALL, &info), 1);
  assert_int_equal(info.retry_after_ms, 5000);
  assert_int_equal(llmux_rl_parse_headers(LLMUX_RL_STYLE_OPENAI, ok, 2, WALL, &info), 2);
  assert_int_equal(info.retry_after_ms, 251);
  assert_int_equal(info.size, sizeof info);
}

static void dialect_names_are_parsed_and_unknown_ones_refused(void **state) {
  static const char *const names[] = {"generic", "openai", "groq", "cerebras", "anthropic"};
  llmux_rl_style_t st;
  size_t i;
  (void)state;
  for (i = 0; i < LLMUX_COUNTOF(names); i++) {
    st = (llmux_rl_style_t)99;
    assert_int_equal(llmux_rl_style_parse(names[i], &st), 0);
    assert_string_equal(llmux_rl_style_name(st), names[i]);
  }
  assert_int_equal(llmux_rl_style_parse("GROQ", &st), 0);
  assert_int_equal(st, LLMUX_RL_STYLE_GROQ);
  st = LLMUX_RL_STYLE_ANTHROPIC;
  assert_int_equal(llmux_rl_style_parse("acme", &st), LLMUX_EINVAL);
  assert_int_equal(llmux_rl_style_parse(NULL, &st), LLMUX_EINVAL);
  assert_int_equal(llmux_rl_style_parse("", &st), LLMUX_EINVAL);
  assert_int_equal(st, LLMUX_RL_STYLE_ANTHROPIC); /* untouched */
  assert_int_equal(llmux_rl_style_from_name("acme"), LLMUX_RL_STYLE_GENERIC);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(retry_after_takes_seconds_and_http_dates),
    cmocka_unit_test(retry_after_refuses_garbage_signs_infinities_and_long_waits),
    cmocka_unit_test(a_retry_after_beyond_two_days_in_a_response_is_ignored),
    cmocka_unit_test(dialect_names_are_parsed_and_unknown_ones_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
