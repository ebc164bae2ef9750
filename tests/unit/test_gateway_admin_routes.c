/* GET /admin/routes's body, built from a route state set up by hand: the
 * router's breaker, latency, in flight and last error, and the limit
 * store's headroom and blocks, read at one instant on both clocks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "gateway/admin.h"
#include "gateway/generation.h"
#include "base/util.h"

/* The loop clock (ms) and the wall clock at that instant:
 * 2024-05-01T12:00:00.000Z. */
#define NOW 100000u
#define WALL 1714564800000LL

static const char config_text[] =
  "[server]\nlisten = 127.0.0.1:0\n"
  "[model m]\ntier = 3\n"
  "[provider groq]\nplugin = openai\nbase_url = http://127.0.0.1:1/v1\n"
  "requests_per_minute = 10\n"
  "[route groq m]\nid = m-versatile\n"
  "[provider off]\nplugin = openai\nbase_url = http://127.0.0.1:1/v1\n"
  "api_key_env = LLMUX_TEST_ROUTES_UNSET_KEY\n"
  "[route off m]\nid = m-off\n";

typedef struct fixture_s {
  char dir[64];
  llmux_config_t *cfg;
  llmux_router_t *router;
  llmux_rl_store_t *rl;
  llmux_generation_t gen;   /* by hand: only what the builder reads */
  json_t *answer;
} fixture_t;

static llmux_config_t *load_text(const char *dir, const char *text) {
  char path[128];
  llmux_config_t *cfg = NULL;
  llmux_diag_t diag;
  FILE *fp;
  snprintf(path, sizeof path, "%s/llmux.ini", dir);
  fp = fopen(path, "w");
  if (fp == NULL) return NULL;
  fputs(text, fp);
  fclose(fp);
  llmux_diag_init(&diag);
  if (llmux_config_load(path, &cfg, &diag) != 0) llmux_diag_print(&diag, stderr);
  llmux_diag_free(&diag);
  unlink(path);
  return cfg;
}

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof *f);
  llmux_router_options_t o;
  unsetenv("LLMUX_TEST_ROUTES_UNSET_KEY");
  snprintf(f->dir, sizeof f->dir, "/tmp/llmux-admin-routes-XXXXXX");
  if (mkdtemp(f->dir) == NULL || (f->cfg = load_text(f->dir, config_text)) == NULL) return -1;
  llmux_router_options_default(&o);
  o.failures = 2;
  o.cooldown_ms = 30000;
  if (llmux_router_new(f->cfg, &o, &f->router) != 0) return -1;
  if (llmux_rl_memory_store_new(16, &f->rl) != 0 || llmux_rl_configure(f->rl, f->cfg) != 0)
    return -1;
  f->gen.number = 7;
  f->gen.cfg = f->cfg;
  f->gen.router = f->router;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  json_decref(f->answer);
  llmux_router_free(f->router);
  llmux_rl_store_destroy(f->rl);
  llmux_config_free(f->cfg);
  rmdir(f->dir);
  free(f);
  return 0;
}

/* Builds the answer at NOW / WALL and returns route `i` of it. */
static json_t *answer_route(fixture_t *f, size_t i) {
  llmux_buf_t b = {0};
  json_error_t err;
  llmux_admin_routes_json(&f->gen, f->rl, NOW, WALL, &b);
  json_decref(f->answer);
  f->answer = json_loadb(b.base, b.len, 0, &err);
  if (f->answer == NULL) fail_msg("not JSON (%s): %.*s", err.text, (int)b.len, b.base);
  llmux_buf_free(&b);
  return json_array_get(json_object_get(f->answer, "routes"), i);
}

/* The string at obj.k1[.k2], or "(null)" for JSON null, "(absent)". */
static const char *str_at(const json_t *obj, const char *k1, const char *k2) {
  const json_t *v = json_object_get(obj, k1);
  if (k2 != NULL) v = json_object_get(v, k2);
  if (json_is_null(v)) return "(null)";
  return json_is_string(v) ? json_string_value(v) : "(absent)";
}

static json_int_t int_at(const json_t *obj, const char *k1, const char *k2) {
  const json_t *v = json_object_get(json_object_get(obj, k1), k2);
  assert_true(json_is_integer(v));
  return json_integer_value(v);
}

static void routes_are_listed_in_config_order_with_their_names(void **state) {
  fixture_t *f = *state;
  json_t *groq = answer_route(f, 0), *off;
  assert_int_equal(json_integer_value(json_object_get(f->answer, "generation")), 7);
  assert_string_equal(str_at(f->answer, "now", NULL), "2024-05-01T12:00:00.000Z");
  assert_int_equal(json_array_size(json_object_get(f->answer, "routes")), 2);
  assert_string_equal(str_at(groq, "provider", NULL), "groq");
  assert_string_equal(str_at(groq, "model", NULL), "m");
  assert_string_equal(str_at(groq, "provider_model", NULL), "m-versatile");
  assert_true(json_is_true(json_object_get(groq, "enabled")));
  assert_string_equal(str_at(groq, "disabled_reason", NULL), "(null)");
  off = json_array_get(json_object_get(f->answer, "routes"), 1);
  assert_string_equal(str_at(off, "provider", NULL), "off");
  assert_true(json_is_false(json_object_get(off, "enabled")));
  assert_string_equal(str_at(off, "disabled_reason", NULL),
                      "LLMUX_TEST_ROUTES_UNSET_KEY is not set");
}

static void an_open_breaker_is_open_until_its_rest_ends_on_the_wall_clock(void **state) {
  fixture_t *f = *state;
  json_t *groq;
  /* Two failures open it at NOW - 5 s for 30 s: until NOW + 25 s. */
  llmux_router_report_error(f->router, 0, LLMUX_OUTCOME_FAILURE, NOW - 10000,
                            "500 server error", WALL - 10000);
  llmux_router_report_error(f->router, 0, LLMUX_OUTCOME_FAILURE, NOW - 5000,
                            "connection refused", WALL - 5000);
  groq = answer_route(f, 0);
  assert_string_equal(str_at(groq, "breaker", "state"), "open");
  assert_string_equal(str_at(groq, "breaker", "until"), "2024-05-01T12:00:25.000Z");
  assert_int_equal(int_at(groq, "breaker", "failures"), 0); /* counting starts again */
  assert_string_equal(str_at(groq, "last_error", "message"), "connection refused");
  assert_string_equal(str_at(groq, "last_error", "at"), "2024-05-01T11:59:55.000Z");
}

static void a_closed_breaker_counts_failures_and_has_no_end(void **state) {
  fixture_t *f = *state;
  json_t *groq;
  llmux_router_report_error(f->router, 0, LLMUX_OUTCOME_FAILURE, NOW - 1000,
                            "429 rate limited", WALL - 1000);
  groq = answer_route(f, 0);
  assert_string_equal(str_at(groq, "breaker", "state"), "closed");
  assert_string_equal(str_at(groq, "breaker", "until"), "(null)");
  assert_int_equal(int_at(groq, "breaker", "failures"), 1);
}

static void remaining_counts_our_requests_and_the_providers_report(void **state) {
  fixture_t *f = *state;
  llmux_rl_key_t key = {"groq", "m-versatile"};
  llmux_header_t h[3] = {
    {{"x-ratelimit-limit-tokens", 24}, {"8000", 4}},
    {{"x-ratelimit-remaining-tokens", 28}, {"500", 3}},
    {{"x-ratelimit-reset-tokens", 24}, {"20s", 3}},
  };
  llmux_rl_reservation_t r;
  json_t *groq, *rem;
  int i;
  for (i = 0; i < 3; i++) { /* three requests in the slot [99 s, 100 s) */
    memset(&r, 0, sizeof r);
    llmux_rl_reserve(f->rl, &key, 100, NOW - 1000, &r);
    llmux_rl_commit(&r, 100, NOW - 1000);
  }
  llmux_rl_sync_headers(f->rl, &key, LLMUX_RL_STYLE_OPENAI, h, 3, NOW, WALL);
  groq = answer_route(f, 0);
  rem = json_object_get(groq, "remaining");
  /* requests_per_minute = 10, three counted: they leave at 160 s. */
  assert_int_equal(int_at(rem, "requests_minute", "remaining"), 7);
  assert_int_equal(int_at(rem, "requests_minute", "limit"), 10);
  assert_string_equal(str_at(rem, "requests_minute", "reset"), "2024-05-01T12:01:00.000Z");
  /* Tokens: nothing configured, the provider's report rules. */
  assert_int_equal(int_at(rem, "tokens_minute", "remaining"), 500);
  assert_int_equal(int_at(rem, "tokens_minute", "limit"), 8000);
  assert_string_equal(str_at(rem, "tokens_minute", "reset"), "2024-05-01T12:00:20.000Z");
  assert_true(json_is_null(json_object_get(rem, "requests_day")));
  assert_true(json_is_null(json_object_get(rem, "tokens_day")));
}

static void a_retry_after_shows_as_blocked_until_it_ends(void **state) {
  fixture_t *f = *state;
  llmux_rl_key_t key = {"groq", "m-versatile"}, wide = {"groq", NULL};
  json_t *groq;
  assert_true(json_is_null(json_object_get(answer_route(f, 0), "blocked")));
  llmux_rl_block(f->rl, &key, NOW + 15000, LLMUX_RL_BLOCK_RETRY_AFTER);
  groq = answer_route(f, 0);
  assert_string_equal(str_at(groq, "blocked", "reason"), "retry_after");
  assert_string_equal(str_at(groq, "blocked", "until"), "2024-05-01T12:00:15.000Z");
  /* A spend limit on the whole provider outranks it, and has no end. */
  llmux_rl_block(f->rl, &wide, LLMUX_RL_FOREVER, LLMUX_RL_BLOCK_SPEND_LIMIT);
  groq = answer_route(f, 0);
  assert_string_equal(str_at(groq, "blocked", "reason"), "spend_limit");
  assert_string_equal(str_at(groq, "blocked", "until"), "(null)");
}

static void in_flight_and_latency_once_observed_and_nulls_before(void **state) {
  fixture_t *f = *state;
  json_t *groq = answer_route(f, 0), *off;
  assert_true(json_is_null(json_object_get(groq, "latency_ms")));
  assert_true(json_is_null(json_object_get(groq, "last_error")));
  assert_int_equal(json_integer_value(json_object_get(groq, "in_flight")), 0);
  llmux_router_report(f->router, 0, LLMUX_OUTCOME_SUCCESS, 120, NOW - 100);
  llmux_router_inflight(f->router, 0, +1);
  groq = answer_route(f, 0);
  assert_int_equal(json_integer_value(json_object_get(groq, "in_flight")), 1);
  assert_true(json_number_value(json_object_get(groq, "latency_ms")) == 120.0);
  llmux_router_inflight(f->router, 0, -1);
  /* The disabled provider's route: nothing limits or was observed. */
  off = answer_route(f, 1);
  assert_string_equal(str_at(off, "breaker", "state"), "closed");
  assert_true(json_is_null(json_object_get(json_object_get(off, "remaining"), "requests_minute")));
  assert_true(json_is_null(json_object_get(off, "latency_ms")));
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
    T(routes_are_listed_in_config_order_with_their_names),
    T(an_open_breaker_is_open_until_its_rest_ends_on_the_wall_clock),
    T(a_closed_breaker_counts_failures_and_has_no_end),
    T(remaining_counts_our_requests_and_the_providers_report),
    T(a_retry_after_shows_as_blocked_until_it_ends),
    T(in_flight_and_latency_once_observed_and_nulls_before),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
