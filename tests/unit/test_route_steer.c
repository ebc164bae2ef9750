/* The caller's steering of a plan: the body's `provider` object and the
 * x-llmux-provider header, parsed and applied (route/steer.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "config/config.h"
#include "route/steer.h"
#include "base/util.h"

/* Three providers and a plan with one route on each, then a second on a. */
static llmux_provider_conf_t pa = {.name = "a"}, pb = {.name = "b"}, pc = {.name = "c"};
static llmux_provider_conf_t *provs[] = {&pa, &pb, &pc};
static llmux_route_conf_t ra = {.id = "m", .provider = &pa},
                          rb = {.id = "m", .provider = &pb},
                          rc = {.id = "m", .provider = &pc},
                          ra2 = {.id = "n", .provider = &pa};
static llmux_config_t cfg = {.providers = provs, .nproviders = 3};

typedef struct run_s {
  const llmux_route_conf_t *routes[4];
  const llmux_route_conf_t *dropped[4];
  size_t n, ndropped;
  char text[64];
} run_t;

/* Applies `s` to the plan a/m b/m c/m a/n; "a b c a" for what remains. */
static const char *apply(const llmux_steer_t *s, run_t *r) {
  size_t i, k = 0;
  r->routes[0] = &ra;
  r->routes[1] = &rb;
  r->routes[2] = &rc;
  r->routes[3] = &ra2;
  r->n = llmux_steer_apply(s, r->routes, 4, r->dropped, &r->ndropped);
  r->text[0] = '\0';
  for (i = 0; i < r->n; i++)
    k += (size_t)snprintf(r->text + k, sizeof r->text - k, "%s%s/%s", i ? " " : "",
                          r->routes[i]->provider->name, r->routes[i]->id);
  return r->text;
}

static const char *parse(const char *json, llmux_steer_t *s, const char **param) {
  static char msg[256];
  llmux_str_t v = {json, strlen(json)};
  llmux_steer_init(s);
  msg[0] = '\0';
  if (llmux_steer_parse(&cfg, v, s, param, msg, sizeof msg) == 0) return NULL;
  return msg;
}

static void nothing_asked_keeps_the_plan(void **state) {
  llmux_steer_t s;
  run_t r;
  (void)state;
  llmux_steer_init(&s);
  assert_string_equal(apply(&s, &r), "a/m b/m c/m a/n");
  assert_int_equal(r.ndropped, 0);
}

static void order_puts_listed_providers_first_and_keeps_the_rest(void **state) {
  llmux_steer_t s;
  const char *param;
  run_t r;
  (void)state;
  assert_null(parse("{\"order\": [\"c\", \"b\"]}", &s, &param));
  assert_string_equal(apply(&s, &r), "c/m b/m a/m a/n");
  assert_null(parse("{\"order\": [\"c\", \"b\"], \"allow_fallbacks\": false}", &s, &param));
  assert_string_equal(apply(&s, &r), "c/m b/m");
  assert_int_equal(r.ndropped, 2);
  assert_ptr_equal(r.dropped[0], &ra);
}

static void only_and_ignore_filter_by_provider(void **state) {
  llmux_steer_t s;
  const char *param;
  run_t r;
  (void)state;
  assert_null(parse("{\"only\": [\"A\", \"c\"]}", &s, &param)); /* names: any case */
  assert_string_equal(apply(&s, &r), "a/m c/m a/n");
  assert_null(parse("{\"ignore\": [\"a\"]}", &s, &param));
  assert_string_equal(apply(&s, &r), "b/m c/m");
  assert_null(parse("{\"only\": []}", &s, &param));
  assert_string_equal(apply(&s, &r), "");
}

static void sort_maps_to_a_strategy(void **state) {
  llmux_steer_t s;
  const char *param;
  (void)state;
  assert_null(parse("{\"sort\": \"price\"}", &s, &param));
  assert_true(s.has_sort && s.sort == LLMUX_STRATEGY_CHEAPEST);
  assert_null(parse("{\"sort\": \"latency\"}", &s, &param));
  assert_int_equal(s.sort, LLMUX_STRATEGY_LOWEST_LATENCY);
  assert_null(parse("{\"sort\": \"throughput\"}", &s, &param));
  assert_int_equal(s.sort, LLMUX_STRATEGY_LEAST_LOADED);
}

static void malformed_values_name_their_parameter(void **state) {
  static const struct { const char *json, *param, *msg; } bad[] = {
    {"[1]", "provider", "must be an object"},
    {"{\"order\": \"a\"}", "provider.order", "must be an array of provider names"},
    {"{\"only\": [1]}", "provider.only", "must be an array of provider names"},
    {"{\"ignore\": [\"zz\"]}", "provider.ignore", "unknown provider 'zz'"},
    {"{\"allow_fallbacks\": \"no\"}", "provider.allow_fallbacks", "must be a boolean"},
    {"{\"sort\": \"fastest\"}", "provider.sort", "\"price\", \"latency\" or \"throughput\""},
    {"{\"sort\": \"price\", \"sort\": \"price\"}", "provider", "each at most once"},
  };
  llmux_steer_t s;
  const char *param, *msg;
  size_t i;
  (void)state;
  for (i = 0; i < LLMUX_COUNTOF(bad); i++) {
    msg = parse(bad[i].json, &s, &param);
    assert_non_null(msg);
    assert_string_equal(param, bad[i].param);
    if (strstr(msg, bad[i].msg) == NULL) fail_msg("%s: %s", bad[i].json, msg);
  }
}

static void the_header_is_one_provider_without_fallback(void **state) {
  llmux_steer_t s;
  char msg[128];
  run_t r;
  (void)state;
  llmux_steer_init(&s);
  assert_int_equal(llmux_steer_header(&cfg, (llmux_str_t){"a", 1}, &s, msg, sizeof msg), 0);
  assert_string_equal(apply(&s, &r), "a/m a/n");
  llmux_steer_init(&s);
  assert_int_equal(llmux_steer_header(&cfg, (llmux_str_t){"d", 1}, &s, msg, sizeof msg),
                   LLMUX_EINVAL);
  assert_non_null(strstr(msg, "unknown provider 'd'"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(nothing_asked_keeps_the_plan),
    cmocka_unit_test(order_puts_listed_providers_first_and_keeps_the_rest),
    cmocka_unit_test(only_and_ignore_filter_by_provider),
    cmocka_unit_test(sort_maps_to_a_strategy),
    cmocka_unit_test(malformed_values_name_their_parameter),
    cmocka_unit_test(the_header_is_one_provider_without_fallback),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
