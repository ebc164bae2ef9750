/* Route state across configuration reloads: routers built from two
 * configurations over one llmux_route_table_t share the state of every
 * route named alike, (provider, provider model id), whatever its position;
 * a route new to the second starts fresh. Time is a number the test
 * passes. */
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
#include "route/router.h"

#define MODELS "[model m]\ntier = 3\n[model n]\ntier = 2\n"
#define PROVIDER(name) \
  "[provider " name "]\nplugin = openai\nbase_url = http://127.0.0.1:1/v1\n"

/* Before: a and b serve m. */
static const char before[] = MODELS PROVIDER("a") PROVIDER("b")
    "[route a m]\nid = a-m\n[route b m]\nid = b-m\n";
/* After: a new provider c first, b's route before a's, and b also serves
 * n: every index of before's routes moved. */
static const char after[] = MODELS PROVIDER("c") PROVIDER("b") PROVIDER("a")
    "[route c m]\nid = c-m\n[route b n]\nid = b-n\n[route b m]\nid = b-m\n"
    "[route a m]\nid = a-m\n";

typedef struct fixture_s {
  char dir[64];
  llmux_config_t *before, *after;
  llmux_route_table_t *table;
  llmux_router_t *old_router, *new_router;
} fixture_t;

static llmux_config_t *load_text(const char *dir, const char *name, const char *text) {
  char path[128];
  llmux_config_t *cfg = NULL;
  llmux_diag_t diag;
  FILE *fp;
  snprintf(path, sizeof path, "%s/%s", dir, name);
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
  llmux_router_options_default(&o);
  o.failures = 2;
  o.cooldown_ms = 10000;
  snprintf(f->dir, sizeof f->dir, "/tmp/llmux-route-state-XXXXXX");
  if (mkdtemp(f->dir) == NULL) return -1;
  f->before = load_text(f->dir, "before.ini", before);
  f->after = load_text(f->dir, "after.ini", after);
  if (f->before == NULL || f->after == NULL) return -1;
  if (llmux_route_table_new(&f->table) != 0) return -1;
  if (llmux_router_new_shared(f->before, &o, f->table, &f->old_router) != 0) return -1;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  llmux_router_free(f->old_router);
  llmux_router_free(f->new_router);
  llmux_route_table_free(f->table);
  llmux_config_free(f->before);
  llmux_config_free(f->after);
  rmdir(f->dir);
  free(f);
  return 0;
}

/* The index of route "provider/id" in cfg. */
static size_t route(const llmux_config_t *cfg, const char *provider, const char *id) {
  size_t i;
  for (i = 0; i < cfg->nroutes; i++) {
    if (strcmp(cfg->routes[i]->provider->name, provider) == 0 &&
        strcmp(cfg->routes[i]->id, id) == 0)
      return i;
  }
  fail_msg("no route %s/%s", provider, id);
  return 0;
}

static void reload(fixture_t *f) {
  llmux_router_options_t o;
  llmux_router_options_default(&o);
  o.failures = 2;
  o.cooldown_ms = 10000;
  assert_int_equal(llmux_router_new_shared(f->after, &o, f->table, &f->new_router), 0);
}

static llmux_route_stats_t stats(llmux_router_t *r, size_t idx, uint64_t now) {
  llmux_route_stats_t s;
  llmux_router_stats(r, idx, now, &s);
  return s;
}

static void an_open_breaker_stays_open_after_a_reload_that_moved_the_route(void **state) {
  fixture_t *f = *state;
  size_t a_before = route(f->before, "a", "a-m");
  llmux_router_report(f->old_router, a_before, LLMUX_OUTCOME_FAILURE, 0, 1000);
  llmux_router_report(f->old_router, a_before, LLMUX_OUTCOME_FAILURE, 0, 1001);
  assert_int_equal(stats(f->old_router, a_before, 1002).state, LLMUX_BREAKER_OPEN);

  reload(f);

  assert_int_not_equal(route(f->after, "a", "a-m"), a_before);
  assert_int_equal(stats(f->new_router, route(f->after, "a", "a-m"), 2000).state,
                   LLMUX_BREAKER_OPEN);
  assert_int_equal(llmux_router_allow(f->new_router, route(f->after, "a", "a-m"), 2000),
                   LLMUX_ROUTER_DENY);
  /* ... and its rest ends when it would have without the reload. */
  assert_int_equal(llmux_router_allow(f->new_router, route(f->after, "a", "a-m"), 11001),
                   LLMUX_ROUTER_PROBE);
}

static void a_latency_average_is_kept_and_a_new_route_starts_unobserved(void **state) {
  fixture_t *f = *state;
  size_t b_before = route(f->before, "b", "b-m");
  llmux_route_stats_t s;
  llmux_router_report(f->old_router, b_before, LLMUX_OUTCOME_SUCCESS, 120, 1000);

  reload(f);

  s = stats(f->new_router, route(f->after, "b", "b-m"), 1000);
  assert_true(s.observed);
  assert_int_equal(s.samples, 1);
  assert_true(s.latency_ms == 120.0);
  s = stats(f->new_router, route(f->after, "c", "c-m"), 1000);
  assert_false(s.observed);
  assert_int_equal(s.state, LLMUX_BREAKER_CLOSED);
  s = stats(f->new_router, route(f->after, "b", "b-n"), 1000);
  assert_false(s.observed); /* same provider, another model: its own state */
  assert_int_equal(llmux_route_table_count(f->table), 4);
}

static void a_request_on_the_old_router_ends_on_the_entry_the_new_one_reads(void **state) {
  fixture_t *f = *state;
  size_t a_before = route(f->before, "a", "a-m");
  llmux_router_inflight(f->old_router, a_before, +1);

  reload(f);

  assert_int_equal(stats(f->new_router, route(f->after, "a", "a-m"), 0).inflight, 1);
  llmux_router_inflight(f->old_router, a_before, -1);
  assert_int_equal(stats(f->new_router, route(f->after, "a", "a-m"), 0).inflight, 0);
}

static void failures_counted_before_a_reload_still_count_after_it(void **state) {
  fixture_t *f = *state;
  size_t b_before = route(f->before, "b", "b-m");
  llmux_router_report(f->old_router, b_before, LLMUX_OUTCOME_FAILURE, 0, 1000);

  reload(f);
  llmux_router_report(f->new_router, route(f->after, "b", "b-m"), LLMUX_OUTCOME_FAILURE, 0,
                      1001);

  assert_int_equal(stats(f->new_router, route(f->after, "b", "b-m"), 1002).state,
                   LLMUX_BREAKER_OPEN);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
    T(an_open_breaker_stays_open_after_a_reload_that_moved_the_route),
    T(a_latency_average_is_kept_and_a_new_route_starts_unobserved),
    T(a_request_on_the_old_router_ends_on_the_entry_the_new_one_reads),
    T(failures_counted_before_a_reload_still_count_after_it),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
