/* Route choice: strategies, filters with their reasons, cooldowns and
 * backoff. Time is a number the test passes; no clock is read. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "config/config.h"
#include "config/registry.h"
#include "route/router.h"
#include "base/util.h"

/* Providers: free (1), tie (5), cheap (5), paid (10), off (1, disabled).
 * `tie` is written before `cheap`, and routes follow the same order, so a
 * tie at priority 5 must come out tie-then-cheap. */
static const char fixture[] =
    "[server]\n"
    "listen = 127.0.0.1:0\n"
    "\n"
    "[model small]\n"
    "tier = 1\n"
    "capabilities = tools, json\n"
    "context_window = 4096\n"
    "price_in = 0.1\n"
    "price_out = 0.2\n"
    "\n"
    "[model big]\n"
    "tier = 3\n"
    "capabilities = tools, vision\n"
    "context_window = 128000\n"
    "price_in = 3\n"
    "price_out = 15\n"
    "\n"
    "[model plain]\n"
    "tier = 2\n"
    "\n"
    "[model emb]\n"
    "tier = 1\n"
    "capabilities = embeddings\n"
    "price_in = 0.01\n"
    "\n"
    "[profile mix]\n"
    "models = big, small, plain\n"
    "\n"
    "[profile duo]\n"
    "models = plain, small\n"
    "strategy = weighted\n"
    "weights = 1, 3\n"
    "\n"
    "[profile even]\n"
    "models = plain, small\n"
    "strategy = weighted\n"
    "\n"
    "[profile fast]\n"
    "models = small, big\n"
    "strategy = lowest-latency\n"
    "\n"
    "[profile load]\n"
    "models = small\n"
    "strategy = least-loaded\n"
    "\n"
    "[profile thrift]\n"
    "models = plain, big, small\n"
    "strategy = cheapest\n"
    "\n"
    "[profile embmix]\n"
    "models = emb, plain\n"
    "\n"
    "[model duet]\n"
    "tier = 4\n"
    "price_in = 1\n"
    "price_out = 1\n"
    "\n"
    "[profile pair]\n"
    "models = duet\n"
    "strategy = cheapest\n"
    "\n"
    "[profile pref]\n"
    "models = small, big\n"
    "providers = cheap, paid\n"
    "\n"
    "[profile pinned]\n"
    "models = small@paid, big\n"
    "\n"
    "[generic best]\n"
    "min_tier = 1\n"
    "max_tier = 3\n"
    "\n"
    "[provider free]\n"
    "plugin = openai\n"
    "base_url = http://127.0.0.1:1/v1\n"
    "priority = 1\n"
    "[provider tie]\n"
    "plugin = openai\n"
    "base_url = http://127.0.0.1:1/v1\n"
    "priority = 5\n"
    "[provider cheap]\n"
    "plugin = openai\n"
    "base_url = http://127.0.0.1:1/v1\n"
    "priority = 5\n"
    "[provider paid]\n"
    "plugin = openai\n"
    "base_url = http://127.0.0.1:1/v1\n"
    "priority = 10\n"
    "[provider off]\n"
    "plugin = openai\n"
    "base_url = http://127.0.0.1:1/v1\n"
    "priority = 1\n"
    "enabled = false\n"
    "\n"
    "[route paid small]\n"
    "[route tie small]\n"
    "[route cheap small]\n"
    "[route free small]\n"
    "[route off small]\n"
    "[route paid big]\n"
    "[route cheap big]\n"
    "[route tie plain]\n"
    "[route free emb]\n"
    "[route paid duet]\n"
    "price_in = 0.2\n"
    "[route tie duet]\n"
    "[route cheap duet]\n"
    "price_out = 0.1\n";

typedef struct fixture_s {
  char dir[64];
  char path[96];
  llmux_config_t *cfg;
} fixture_t;

static fixture_t fx;

static int load_fixture(void **state) {
  FILE *fp;
  llmux_diag_t diag;
  (void)state;
  snprintf(fx.dir, sizeof fx.dir, "/tmp/llmux-router-XXXXXX");
  if (mkdtemp(fx.dir) == NULL) return -1;
  snprintf(fx.path, sizeof fx.path, "%s/llmux.ini", fx.dir);
  fp = fopen(fx.path, "w");
  if (fp == NULL) return -1;
  fputs(fixture, fp);
  fclose(fp);
  llmux_diag_init(&diag);
  if (llmux_config_load(fx.path, &fx.cfg, &diag) != 0) {
    llmux_diag_print(&diag, stderr);
    llmux_diag_free(&diag);
    return -1;
  }
  llmux_diag_free(&diag);
  return 0;
}

static int unload_fixture(void **state) {
  (void)state;
  llmux_config_free(fx.cfg);
  unlink(fx.path);
  rmdir(fx.dir);
  return 0;
}

static int new_router(void **state) {
  llmux_router_t *r;
  if (llmux_router_new(fx.cfg, NULL, &r) != 0) return -1;
  *state = r;
  return 0;
}

static int free_router(void **state) {
  llmux_router_free(*state);
  return 0;
}

/* The route index of "provider/model". */
static size_t route(const char *name) {
  size_t i;
  char buf[64];
  for (i = 0; i < fx.cfg->nroutes; i++) {
    const llmux_route_conf_t *r = fx.cfg->routes[i];
    snprintf(buf, sizeof buf, "%s/%s", r->provider->name, r->model->id);
    if (strcmp(buf, name) == 0) return i;
  }
  fail_msg("no route %s", name);
  return 0;
}

/* Plan storage big enough for every resolution of the fixture. */
typedef struct plan_s {
  const llmux_route_conf_t *routes[32];
  llmux_route_skip_t skipped[32];
  llmux_route_plan_t p;
  char text[512]; /* candidates as "a/x b/y" */
} plan_t;

static const char *order(llmux_router_t *r, const char *name, const llmux_route_query_t *q,
                         uint64_t now_ms, plan_t *pl) {
  llmux_resolution_t res;
  size_t i, n = 0;
  int rc;
  memset(pl, 0, sizeof(*pl));
  pl->p.routes = pl->routes;
  pl->p.skipped = pl->skipped;
  pl->p.cap = LLMUX_COUNTOF(pl->routes);
  assert_int_equal(llmux_resolve(fx.cfg, name, &res), 0);
  rc = llmux_router_order(r, &res, q, now_ms, &pl->p);
  assert_true(rc >= 0);
  assert_int_equal((size_t)rc, pl->p.nroutes);
  for (i = 0; i < pl->p.nroutes; i++) {
    n += (size_t)snprintf(pl->text + n, sizeof pl->text - n, "%s%s/%s", i ? " " : "",
                          pl->routes[i]->provider->name, pl->routes[i]->model->id);
  }
  return pl->text;
}

static const char *skips(const plan_t *pl, char *buf, size_t size) {
  llmux_buf_t b = {0};
  assert_int_equal(llmux_route_plan_describe(&pl->p, &b), 0);
  snprintf(buf, size, "%s", b.base ? b.base : "");
  llmux_buf_free(&b);
  return buf;
}

/* ---- Strategies -------------------------------------------------------- */

static void priority_puts_lower_numbers_first_and_keeps_config_order_on_ties(void **state) {
  plan_t pl;
  char buf[256];
  assert_string_equal(order(*state, "small", NULL, 0, &pl),
                      "free/small tie/small cheap/small paid/small");
  assert_int_equal(pl.p.strategy, LLMUX_STRATEGY_PRIORITY);
  assert_int_equal(pl.p.nskipped, 1);
  assert_int_equal(pl.skipped[0].reason, LLMUX_SKIP_DISABLED);
  assert_string_equal(skips(&pl, buf, sizeof buf), "off/small (provider disabled)");
}

static void priority_keeps_a_profiles_model_order_before_provider_priority(void **state) {
  plan_t pl;
  assert_string_equal(order(*state, "mix", NULL, 0, &pl),
                      "cheap/big paid/big free/small tie/small cheap/small paid/small tie/plain");
}

static void priority_follows_a_generics_tier_order_without_embedding_models(void **state) {
  plan_t pl;
  assert_string_equal(order(*state, "best", NULL, 0, &pl),
                      "cheap/big paid/big tie/plain free/small tie/small cheap/small paid/small");
}

static void lowest_latency_tries_unobserved_routes_first_then_the_fastest(void **state) {
  llmux_router_t *r = *state;
  llmux_route_stats_t st;
  plan_t pl;
  int i;
  llmux_router_report(r, route("free/small"), LLMUX_OUTCOME_SUCCESS, 300, 0);
  llmux_router_report(r, route("tie/small"), LLMUX_OUTCOME_SUCCESS, 100, 0);
  llmux_router_report(r, route("cheap/small"), LLMUX_OUTCOME_SUCCESS, 200, 0);
  llmux_router_report(r, route("paid/small"), LLMUX_OUTCOME_SUCCESS, 50, 0);
  llmux_router_report(r, route("cheap/big"), LLMUX_OUTCOME_SUCCESS, 400, 0);
  assert_string_equal(order(r, "fast", NULL, 0, &pl),
                      "paid/big paid/small tie/small cheap/small free/small cheap/big");
  assert_int_equal(pl.p.strategy, LLMUX_STRATEGY_LOWEST_LATENCY);

  /* The average decays towards new samples: 300 + 0.3 * (10 - 300) = 213. */
  llmux_router_report(r, route("free/small"), LLMUX_OUTCOME_SUCCESS, 10, 0);
  llmux_router_stats(r, route("free/small"), 0, &st);
  assert_true(st.observed);
  assert_int_equal(st.samples, 2);
  assert_true(st.latency_ms > 212.9 && st.latency_ms < 213.1);
  for (i = 0; i < 10; i++)
    llmux_router_report(r, route("free/small"), LLMUX_OUTCOME_SUCCESS, 10, 0);
  assert_string_equal(order(r, "fast", NULL, 0, &pl),
                      "paid/big free/small paid/small tie/small cheap/small cheap/big");

  /* Failures are the breaker's business, not the average's. */
  llmux_router_report(r, route("free/small"), LLMUX_OUTCOME_FAILURE, 99999, 0);
  llmux_router_stats(r, route("free/small"), 0, &st);
  assert_int_equal(st.samples, 12);
}

static void least_loaded_prefers_fewest_in_flight_and_breaks_ties_by_priority(void **state) {
  llmux_router_t *r = *state;
  plan_t pl;
  assert_string_equal(order(r, "load", NULL, 0, &pl),
                      "free/small tie/small cheap/small paid/small");
  llmux_router_inflight(r, route("free/small"), +1);
  llmux_router_inflight(r, route("free/small"), +1);
  llmux_router_inflight(r, route("tie/small"), +1);
  assert_string_equal(order(r, "load", NULL, 0, &pl),
                      "cheap/small paid/small tie/small free/small");
  llmux_router_inflight(r, route("free/small"), -1);
  llmux_router_inflight(r, route("free/small"), -1);
  assert_string_equal(order(r, "load", NULL, 0, &pl),
                      "free/small cheap/small paid/small tie/small");
}

static void cheapest_orders_by_price_with_unpriced_models_last(void **state) {
  plan_t pl;
  assert_string_equal(order(*state, "thrift", NULL, 0, &pl),
                      "free/small tie/small cheap/small paid/small cheap/big paid/big tie/plain");
}

/* duet costs 1 + 1; paid writes price_in = 0.2 (1.2 in all), cheap writes
 * price_out = 0.1 (1.1), tie keeps the model's (2). */
static void cheapest_uses_a_routes_own_prices_key_by_key_over_the_models(void **state) {
  plan_t pl;
  const llmux_route_conf_t *paid = fx.cfg->routes[route("paid/duet")];
  assert_string_equal(order(*state, "pair", NULL, 0, &pl), "cheap/duet paid/duet tie/duet");
  assert_true(paid->has_price);
  assert_true(paid->price_in == 0.2 && paid->price_out == 1);
  assert_string_equal(order(*state, "duet", NULL, 0, &pl), "tie/duet cheap/duet paid/duet");
}

static void a_profiles_providers_go_first_within_each_model_then_priority(void **state) {
  plan_t pl;
  assert_string_equal(order(*state, "pref", NULL, 0, &pl),
                      "cheap/small paid/small free/small tie/small cheap/big paid/big");
}

static void a_pinned_member_brings_only_its_providers_route(void **state) {
  plan_t pl;
  assert_string_equal(order(*state, "pinned", NULL, 0, &pl), "paid/small cheap/big paid/big");
}

static void a_strategy_can_be_overridden_per_request(void **state) {
  llmux_route_query_t q = {0};
  plan_t pl;
  q.override_strategy = 1;
  q.strategy = LLMUX_STRATEGY_CHEAPEST;
  assert_string_equal(order(*state, "mix", &q, 0, &pl),
                      "free/small tie/small cheap/small paid/small cheap/big paid/big tie/plain");
  assert_int_equal(pl.p.strategy, LLMUX_STRATEGY_CHEAPEST);
}

static void weighted_is_deterministic_per_seed_and_keeps_each_models_routes_together(
    void **state) {
  llmux_route_query_t q = {0};
  plan_t pl;
  char first[512];
  uint64_t seed;
  int saw_plain_first = 0, saw_small_first = 0;
  for (seed = 0; seed < 200; seed++) {
    q.seed = seed * 7919;
    snprintf(first, sizeof first, "%s", order(*state, "duo", &q, 0, &pl));
    assert_string_equal(order(*state, "duo", &q, 0, &pl), first);
    if (strcmp(first, "tie/plain free/small tie/small cheap/small paid/small") == 0)
      saw_plain_first = 1;
    else if (strcmp(first, "free/small tie/small cheap/small paid/small tie/plain") == 0)
      saw_small_first = 1;
    else
      fail_msg("unexpected weighted order: %s", first);
  }
  assert_true(saw_plain_first && saw_small_first);
}

static double share_first(void *r, const char *profile, const char *first_route, int n) {
  llmux_route_query_t q = {0};
  uint64_t rng = 12345;
  plan_t pl;
  int i, hits = 0;
  for (i = 0; i < n; i++) {
    q.seed = llmux_rand_next(&rng);
    order(r, profile, &q, 0, &pl);
    if (strcmp(pl.routes[0]->provider->name, first_route) == 0) hits++;
  }
  return (double)hits / n;
}

static void weighted_picks_models_first_in_proportion_to_their_weights(void **state) {
  /* duo: plain 1, small 3 -> small first 75% of the time. */
  double small = share_first(*state, "duo", "free", 20000);
  double even = share_first(*state, "even", "free", 20000);
  assert_true(small > 0.73 && small < 0.77);
  assert_true(even > 0.48 && even < 0.52);
}

/* ---- Filters ----------------------------------------------------------- */

static void tools_go_to_models_with_tools_or_with_no_declared_capabilities(void **state) {
  llmux_route_query_t q = {0};
  plan_t pl;
  q.caps = LLMUX_CAP_TOOLS;
  assert_string_equal(order(*state, "mix", &q, 0, &pl),
                      "cheap/big paid/big free/small tie/small cheap/small paid/small tie/plain");
}

static void images_skip_models_without_vision_and_say_so(void **state) {
  llmux_route_query_t q = {0};
  plan_t pl;
  char buf[512];
  q.caps = LLMUX_CAP_VISION | LLMUX_CAP_TOOLS;
  assert_string_equal(order(*state, "mix", &q, 0, &pl), "cheap/big paid/big tie/plain");
  assert_int_equal(pl.p.nskipped, 5);
  assert_int_equal(pl.skipped[0].reason, LLMUX_SKIP_CAPABILITY);
  assert_int_equal(pl.skipped[0].missing_caps, LLMUX_CAP_VISION);
  assert_int_equal(pl.p.ncooling, 0);
  assert_string_equal(skips(&pl, buf, sizeof buf),
                      "free/small (lacks vision), off/small (provider disabled), "
                      "tie/small (lacks vision), cheap/small (lacks vision), "
                      "paid/small (lacks vision)");
}

static void embeddings_need_an_embeddings_model_and_chat_never_gets_one(void **state) {
  llmux_route_query_t q = {0};
  plan_t pl;
  char buf[256];
  q.caps = LLMUX_CAP_EMBEDDINGS;
  assert_string_equal(order(*state, "embmix", &q, 0, &pl), "free/emb");
  assert_string_equal(skips(&pl, buf, sizeof buf), "tie/plain (lacks embeddings)");
  assert_string_equal(order(*state, "embmix", NULL, 0, &pl), "tie/plain");
  assert_string_equal(skips(&pl, buf, sizeof buf), "free/emb (embeddings model)");
}

static void a_prompt_larger_than_the_context_window_skips_the_model(void **state) {
  llmux_route_query_t q = {0};
  plan_t pl;
  q.prompt_tokens = 5000; /* small has 4096, big 128000, plain unknown */
  assert_string_equal(order(*state, "mix", &q, 0, &pl), "cheap/big paid/big tie/plain");
  assert_int_equal(pl.skipped[0].reason, LLMUX_SKIP_CONTEXT);
  assert_string_equal(pl.skipped[1].route->provider->name, "off");
  assert_int_equal(pl.skipped[1].reason, LLMUX_SKIP_DISABLED); /* first reason wins */
  q.prompt_tokens = 4096;
  assert_string_equal(order(*state, "small", &q, 0, &pl),
                      "free/small tie/small cheap/small paid/small");
}

static void a_model_listed_twice_is_tried_once(void **state) {
  /* A generic and the model it contains: build a resolution by hand. */
  const llmux_model_conf_t *small = llmux_config_find_model(fx.cfg, "small");
  llmux_model_conf_t *models[2];
  llmux_route_conf_t *routes[16];
  llmux_resolution_t res;
  const llmux_route_conf_t *out[16];
  llmux_route_plan_t plan = {0};
  size_t i;
  memset(&res, 0, sizeof res);
  models[0] = models[1] = (llmux_model_conf_t *)small;
  for (i = 0; i < small->nroutes; i++) routes[i] = routes[i + small->nroutes] = small->routes[i];
  res.models = models;
  res.nmodels = 2;
  res.routes = routes;
  res.nroutes = 2 * small->nroutes;
  plan.routes = out;
  plan.cap = LLMUX_COUNTOF(out);
  assert_int_equal(llmux_router_order(*state, &res, NULL, 0, &plan), 4);
  assert_int_equal(plan.nskipped, 1);
  plan.cap = res.nroutes - 1;
  assert_int_equal(llmux_router_order(*state, &res, NULL, 0, &plan), LLMUX_EINVAL);
}

/* ---- Cooldown ---------------------------------------------------------- */

static void report_failure(llmux_router_t *r, const char *name, uint64_t now_ms) {
  llmux_router_report(r, route(name), LLMUX_OUTCOME_FAILURE, 0, now_ms);
}

static void three_failures_within_the_window_rest_the_route(void **state) {
  llmux_router_t *r = *state;
  size_t idx = route("free/small");
  llmux_route_stats_t st;
  plan_t pl;
  char buf[256];
  report_failure(r, "free/small", 0);
  report_failure(r, "free/small", 10000);
  assert_int_equal(llmux_router_allow(r, idx, 10001), LLMUX_ROUTER_ALLOW);
  report_failure(r, "free/small", 20000);
  assert_int_equal(llmux_router_allow(r, idx, 20001), LLMUX_ROUTER_DENY);
  llmux_router_stats(r, idx, 20001, &st);
  assert_int_equal(st.state, LLMUX_BREAKER_OPEN);
  assert_int_equal(st.until_ms, 50000);

  assert_string_equal(order(r, "small", NULL, 20001, &pl), "tie/small cheap/small paid/small");
  assert_int_equal(pl.p.ncooling, 1);
  assert_int_equal(pl.p.retry_at_ms, 50000);
  assert_string_equal(skips(&pl, buf, sizeof buf),
                      "free/small (cooling down), off/small (provider disabled)");
  assert_int_equal(llmux_router_allow(r, idx, 49999), LLMUX_ROUTER_DENY);
}

static void failures_spread_beyond_the_window_do_not(void **state) {
  llmux_router_t *r = *state;
  size_t idx = route("free/small");
  report_failure(r, "free/small", 0);
  report_failure(r, "free/small", 40000);
  report_failure(r, "free/small", 80000); /* the last three span 80 s > 60 s */
  assert_int_equal(llmux_router_allow(r, idx, 80001), LLMUX_ROUTER_ALLOW);
  report_failure(r, "free/small", 90000); /* 40 s, 80 s, 90 s: within 60 s */
  assert_int_equal(llmux_router_allow(r, idx, 90001), LLMUX_ROUTER_DENY);
}

static void a_success_between_failures_starts_the_count_again(void **state) {
  llmux_router_t *r = *state;
  size_t idx = route("free/small");
  report_failure(r, "free/small", 0);
  report_failure(r, "free/small", 1000);
  llmux_router_report(r, idx, LLMUX_OUTCOME_SUCCESS, 100, 1500);
  report_failure(r, "free/small", 2000);
  report_failure(r, "free/small", 3000);
  assert_int_equal(llmux_router_allow(r, idx, 3001), LLMUX_ROUTER_ALLOW);
  /* Neutral outcomes (client errors) neither count nor reset. */
  llmux_router_report(r, idx, LLMUX_OUTCOME_NEUTRAL, 0, 3500);
  report_failure(r, "free/small", 4000);
  assert_int_equal(llmux_router_allow(r, idx, 4001), LLMUX_ROUTER_DENY);
}

static void trip(llmux_router_t *r, const char *name) {
  report_failure(r, name, 0);
  report_failure(r, name, 1);
  report_failure(r, name, 2); /* open until 30002 */
}

static void after_the_rest_exactly_one_probe_goes(void **state) {
  llmux_router_t *r = *state;
  size_t idx = route("free/small");
  llmux_route_stats_t st;
  plan_t pl;
  trip(r, "free/small");
  assert_string_equal(order(r, "small", NULL, 30002, &pl),
                      "free/small tie/small cheap/small paid/small");
  assert_int_equal(llmux_router_allow(r, idx, 30002), LLMUX_ROUTER_PROBE);
  assert_int_equal(llmux_router_allow(r, idx, 30003), LLMUX_ROUTER_DENY);
  llmux_router_stats(r, idx, 30003, &st);
  assert_int_equal(st.state, LLMUX_BREAKER_HALF_OPEN);
  assert_true(st.probe_out);
  assert_string_equal(order(r, "small", NULL, 30003, &pl), "tie/small cheap/small paid/small");
  assert_int_equal(pl.skipped[0].reason, LLMUX_SKIP_COOLDOWN);
}

static void a_successful_probe_closes_the_breaker(void **state) {
  llmux_router_t *r = *state;
  size_t idx = route("free/small");
  llmux_route_stats_t st;
  trip(r, "free/small");
  assert_int_equal(llmux_router_allow(r, idx, 31000), LLMUX_ROUTER_PROBE);
  llmux_router_report(r, idx, LLMUX_OUTCOME_SUCCESS, 120, 31200);
  llmux_router_stats(r, idx, 31200, &st);
  assert_int_equal(st.state, LLMUX_BREAKER_CLOSED);
  assert_int_equal(st.recent_failures, 0);
  assert_int_equal(llmux_router_allow(r, idx, 31201), LLMUX_ROUTER_ALLOW);
  assert_int_equal(llmux_router_allow(r, idx, 31202), LLMUX_ROUTER_ALLOW);
  /* Closed again means a fresh count: one failure does not re-open it. */
  report_failure(r, "free/small", 31300);
  assert_int_equal(llmux_router_allow(r, idx, 31301), LLMUX_ROUTER_ALLOW);
}

static void a_failed_probe_rests_the_route_again(void **state) {
  llmux_router_t *r = *state;
  size_t idx = route("free/small");
  llmux_route_stats_t st;
  trip(r, "free/small");
  assert_int_equal(llmux_router_allow(r, idx, 40000), LLMUX_ROUTER_PROBE);
  report_failure(r, "free/small", 40500);
  llmux_router_stats(r, idx, 40500, &st);
  assert_int_equal(st.state, LLMUX_BREAKER_OPEN);
  assert_int_equal(st.until_ms, 70500);
  assert_int_equal(llmux_router_allow(r, idx, 70499), LLMUX_ROUTER_DENY);
  assert_int_equal(llmux_router_allow(r, idx, 70500), LLMUX_ROUTER_PROBE);
}

static void a_neutral_or_lost_probe_frees_the_slot_for_another(void **state) {
  llmux_router_t *r = *state;
  size_t idx = route("free/small");
  trip(r, "free/small");
  assert_int_equal(llmux_router_allow(r, idx, 30002), LLMUX_ROUTER_PROBE);
  llmux_router_report(r, idx, LLMUX_OUTCOME_NEUTRAL, 0, 30100);
  assert_int_equal(llmux_router_allow(r, idx, 30101), LLMUX_ROUTER_PROBE);
  /* Never reported: lapses after probe_timeout_ms (60 s). */
  assert_int_equal(llmux_router_allow(r, idx, 90100), LLMUX_ROUTER_DENY);
  assert_int_equal(llmux_router_allow(r, idx, 90101), LLMUX_ROUTER_PROBE);
}

static void late_reports_while_resting_change_nothing(void **state) {
  llmux_router_t *r = *state;
  size_t idx = route("free/small");
  llmux_route_stats_t st;
  trip(r, "free/small");
  report_failure(r, "free/small", 20000);
  llmux_router_report(r, idx, LLMUX_OUTCOME_SUCCESS, 100, 20001);
  llmux_router_stats(r, idx, 20001, &st);
  assert_int_equal(st.state, LLMUX_BREAKER_OPEN);
  assert_int_equal(st.until_ms, 30002);
}

static void when_every_route_rests_the_plan_is_empty_with_a_retry_time(void **state) {
  llmux_router_t *r = *state;
  plan_t pl;
  trip(r, "tie/plain");
  assert_string_equal(order(r, "plain", NULL, 100, &pl), "");
  assert_int_equal(pl.p.nroutes, 0);
  assert_int_equal(pl.p.nskipped, 1);
  assert_int_equal(pl.p.ncooling, pl.p.nskipped);
  assert_int_equal(pl.p.retry_at_ms, 30002);
}

static void options_are_configurable_and_checked(void **state) {
  llmux_router_options_t o;
  llmux_router_t *r;
  size_t idx = route("free/small");
  (void)state;
  llmux_router_options_default(&o);
  o.failures = 1;
  o.cooldown_ms = 5;
  assert_int_equal(llmux_router_new(fx.cfg, &o, &r), 0);
  report_failure(r, "free/small", 100);
  assert_int_equal(llmux_router_allow(r, idx, 104), LLMUX_ROUTER_DENY);
  assert_int_equal(llmux_router_allow(r, idx, 105), LLMUX_ROUTER_PROBE);
  llmux_router_free(r);
  o.ewma_alpha = 1.5;
  assert_int_equal(llmux_router_new(fx.cfg, &o, &r), LLMUX_EINVAL);
  assert_null(r);
  assert_int_equal(llmux_router_new(NULL, NULL, &r), LLMUX_EINVAL);
}

/* ---- Last error --------------------------------------------------------- */

static void a_reported_error_is_the_routes_last_error_cut_to_its_bound(void **state) {
  llmux_router_t *r = *state;
  size_t idx = route("free/small");
  llmux_route_stats_t st;
  char longer[200];
  llmux_router_stats(r, idx, 0, &st);
  assert_string_equal(st.last_error, "");
  assert_int_equal(st.last_error_ms, 0);

  llmux_router_report_error(r, idx, LLMUX_OUTCOME_FAILURE, 10, "500 server error",
                            1714564800000LL);
  llmux_router_stats(r, idx, 10, &st);
  assert_string_equal(st.last_error, "500 server error");
  assert_int_equal(st.last_error_ms, 1714564800000LL);
  assert_int_equal(st.recent_failures, 1); /* and it counts as a report */

  /* No detail (a client's 400): the outcome is reported, the error kept. */
  llmux_router_report_error(r, idx, LLMUX_OUTCOME_NEUTRAL, 20, NULL, 1714564900000LL);
  llmux_router_stats(r, idx, 20, &st);
  assert_string_equal(st.last_error, "500 server error");

  memset(longer, 'x', sizeof longer - 1);
  longer[sizeof longer - 1] = '\0';
  llmux_router_report_error(r, idx, LLMUX_OUTCOME_FAILURE, 30, longer, 1714565000000LL);
  llmux_router_stats(r, idx, 30, &st);
  assert_int_equal(strlen(st.last_error), LLMUX_ROUTE_ERROR_MAX - 1);
  assert_int_equal(st.last_error_ms, 1714565000000LL);
}

/* ---- Backoff ----------------------------------------------------------- */

static void backoff_grows_exponentially_with_full_jitter_up_to_the_cap(void **state) {
  uint64_t rng = 1, v;
  unsigned a;
  int i, saw_low = 0, saw_high = 0;
  (void)state;
  /* The ceiling: rnd = ceiling maps to the top of [0, ceiling]. */
  assert_int_equal(llmux_backoff_ms(0, 100, 10000, 100), 100);
  assert_int_equal(llmux_backoff_ms(0, 100, 10000, 101), 0);
  assert_int_equal(llmux_backoff_ms(3, 100, 10000, 800), 800);
  assert_int_equal(llmux_backoff_ms(3, 100, 10000, 801), 0);
  assert_int_equal(llmux_backoff_ms(7, 100, 10000, 10000), 10000);
  assert_int_equal(llmux_backoff_ms(200, 100, 10000, 10000), 10000);
  assert_int_equal(llmux_backoff_ms(200, 1, UINT64_MAX, UINT64_MAX), UINT64_MAX);
  assert_int_equal(llmux_backoff_ms(5, 0, 10000, 12345), 0);
  assert_int_equal(llmux_backoff_ms(0, 500, 200, 200), 200); /* base above cap */
  for (a = 0; a < 12; a++) {
    uint64_t ceiling = 100ull << a < 5000 ? 100ull << a : 5000;
    for (i = 0; i < 500; i++) {
      v = llmux_backoff_ms(a, 100, 5000, llmux_rand_next(&rng));
      assert_true(v <= ceiling);
      if (v < ceiling / 4) saw_low = 1;
      if (v > ceiling * 3 / 4) saw_high = 1;
    }
  }
  assert_true(saw_low && saw_high);
}

#define T(name) cmocka_unit_test_setup_teardown(name, new_router, free_router)

int main(void) {
  const struct CMUnitTest tests[] = {
    T(priority_puts_lower_numbers_first_and_keeps_config_order_on_ties),
    T(priority_keeps_a_profiles_model_order_before_provider_priority),
    T(priority_follows_a_generics_tier_order_without_embedding_models),
    T(lowest_latency_tries_unobserved_routes_first_then_the_fastest),
    T(least_loaded_prefers_fewest_in_flight_and_breaks_ties_by_priority),
    T(cheapest_orders_by_price_with_unpriced_models_last),
    T(cheapest_uses_a_routes_own_prices_key_by_key_over_the_models),
    T(a_profiles_providers_go_first_within_each_model_then_priority),
    T(a_pinned_member_brings_only_its_providers_route),
    T(a_strategy_can_be_overridden_per_request),
    T(weighted_is_deterministic_per_seed_and_keeps_each_models_routes_together),
    T(weighted_picks_models_first_in_proportion_to_their_weights),
    T(tools_go_to_models_with_tools_or_with_no_declared_capabilities),
    T(images_skip_models_without_vision_and_say_so),
    T(embeddings_need_an_embeddings_model_and_chat_never_gets_one),
    T(a_prompt_larger_than_the_context_window_skips_the_model),
    T(a_model_listed_twice_is_tried_once),
    T(a_reported_error_is_the_routes_last_error_cut_to_its_bound),
    T(three_failures_within_the_window_rest_the_route),
    T(failures_spread_beyond_the_window_do_not),
    T(a_success_between_failures_starts_the_count_again),
    T(after_the_rest_exactly_one_probe_goes),
    T(a_successful_probe_closes_the_breaker),
    T(a_failed_probe_rests_the_route_again),
    T(a_neutral_or_lost_probe_frees_the_slot_for_another),
    T(late_reports_while_resting_change_nothing),
    T(when_every_route_rests_the_plan_is_empty_with_a_retry_time),
    T(options_are_configurable_and_checked),
    T(backoff_grows_exponentially_with_full_jitter_up_to_the_cap),
  };
  return cmocka_run_group_tests(tests, load_fixture, unload_fixture);
}
