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

/* ---- Sharing breakers ------------------------------------------------------ */

/* What the table's observer heard. */
typedef struct heard_s {
  int n;
  llmux_route_change_t last;
  char provider[16], model[16];
} heard_t;

static void on_change(const llmux_route_change_t *c, void *arg) {
  heard_t *h = arg;
  h->n++;
  h->last = *c;
  snprintf(h->provider, sizeof h->provider, "%s", c->provider);
  snprintf(h->model, sizeof h->model, "%s", c->model);
  h->last.provider = h->provider;
  h->last.model = h->model;
}

static void fail_twice(fixture_t *f, size_t idx, uint64_t now) {
  llmux_router_report(f->old_router, idx, LLMUX_OUTCOME_FAILURE, 0, now);
  llmux_router_report(f->old_router, idx, LLMUX_OUTCOME_FAILURE, 0, now + 1);
}

static void the_observer_hears_a_trip_a_failed_probe_and_the_probe_that_closes(void **state) {
  fixture_t *f = *state;
  size_t a = route(f->before, "a", "a-m");
  heard_t h = {0};
  llmux_route_table_on_change(f->table, on_change, &h);
  llmux_router_report(f->old_router, a, LLMUX_OUTCOME_FAILURE, 0, 1000);
  assert_int_equal(h.n, 0); /* one failure of two: still closed */
  llmux_router_report(f->old_router, a, LLMUX_OUTCOME_FAILURE, 0, 1001);
  assert_int_equal(h.n, 1);
  assert_int_equal(h.last.event, LLMUX_ROUTE_OPENED);
  assert_string_equal(h.last.provider, "a");
  assert_string_equal(h.last.model, "a-m");
  assert_int_equal(h.last.now_ms, 1001);
  assert_int_equal(h.last.until_ms, 11001);
  assert_int_equal(h.last.failures, 2);
  assert_false(h.last.probe);

  assert_int_equal(llmux_router_allow(f->old_router, a, 11001), LLMUX_ROUTER_PROBE);
  llmux_router_report(f->old_router, a, LLMUX_OUTCOME_FAILURE, 0, 11500);
  assert_int_equal(h.n, 2);
  assert_int_equal(h.last.event, LLMUX_ROUTE_OPENED);
  assert_true(h.last.probe);
  assert_int_equal(h.last.until_ms, 21500);

  assert_int_equal(llmux_router_allow(f->old_router, a, 21500), LLMUX_ROUTER_PROBE);
  llmux_router_report(f->old_router, a, LLMUX_OUTCOME_SUCCESS, 80, 21600);
  assert_int_equal(h.n, 3);
  assert_int_equal(h.last.event, LLMUX_ROUTE_CLOSED);
  assert_string_equal(h.last.model, "a-m");
  assert_int_equal(h.last.now_ms, 21600);
  /* A success on a closed route is no change. */
  llmux_router_report(f->old_router, a, LLMUX_OUTCOME_SUCCESS, 80, 21700);
  assert_int_equal(h.n, 3);
  /* Nobody listening: nothing is called. */
  llmux_route_table_on_change(f->table, NULL, NULL);
  fail_twice(f, a, 30000);
  assert_int_equal(h.n, 3);
  assert_int_equal(stats(f->old_router, a, 30002).state, LLMUX_BREAKER_OPEN);
}

static void an_opening_from_elsewhere_rests_the_route_and_is_not_sent_back(void **state) {
  fixture_t *f = *state;
  size_t b = route(f->before, "b", "b-m");
  heard_t h = {0};
  llmux_route_table_on_change(f->table, on_change, &h);
  llmux_router_report(f->old_router, b, LLMUX_OUTCOME_FAILURE, 0, 900); /* 1 of 2 */

  assert_int_equal(llmux_route_table_open(f->table, "b", "b-m", 1000, 5000, 1000), 1);

  assert_int_equal(stats(f->old_router, b, 1000).state, LLMUX_BREAKER_OPEN);
  assert_int_equal(stats(f->old_router, b, 1000).until_ms, 5000);
  assert_int_equal(stats(f->old_router, b, 1000).recent_failures, 0);
  assert_int_equal(llmux_router_allow(f->old_router, b, 4999), LLMUX_ROUTER_DENY);
  /* A shorter one changes nothing; a longer one extends the rest. */
  assert_int_equal(llmux_route_table_open(f->table, "b", "b-m", 1200, 3000, 1200), 0);
  assert_int_equal(stats(f->old_router, b, 1200).until_ms, 5000);
  assert_int_equal(llmux_route_table_open(f->table, "b", "b-m", 1300, 8000, 1300), 1);
  assert_int_equal(stats(f->old_router, b, 1300).until_ms, 8000);
  /* One already over is no opening. */
  assert_int_equal(llmux_route_table_open(f->table, "a", "a-m", 100, 1400, 1400), 0);
  assert_int_equal(stats(f->old_router, route(f->before, "a", "a-m"), 1400).state,
                   LLMUX_BREAKER_CLOSED);
  /* Then half-open with one probe, as after a rest of its own. */
  assert_int_equal(llmux_router_allow(f->old_router, b, 8000), LLMUX_ROUTER_PROBE);
  assert_int_equal(llmux_router_allow(f->old_router, b, 8001), LLMUX_ROUTER_DENY);
  assert_int_equal(h.n, 0);
  /* That probe's success is this table's own close: it is heard. */
  llmux_router_report(f->old_router, b, LLMUX_OUTCOME_SUCCESS, 50, 8100);
  assert_int_equal(h.n, 1);
  assert_int_equal(h.last.event, LLMUX_ROUTE_CLOSED);
}

static void a_close_from_elsewhere_ends_an_earlier_opening_not_a_later_one(void **state) {
  fixture_t *f = *state;
  size_t a = route(f->before, "a", "a-m");
  heard_t h = {0};
  llmux_route_table_on_change(f->table, on_change, &h);
  fail_twice(f, a, 1000); /* opened at 1001 */
  assert_int_equal(h.n, 1);
  /* Extended by an opening that began earlier: it still began at 1001. */
  assert_int_equal(llmux_route_table_open(f->table, "a", "a-m", 500, 40000, 1200), 1);
  assert_int_equal(llmux_route_table_close_remote(f->table, "a", "a-m", 800), 0);
  assert_int_equal(stats(f->old_router, a, 1300).until_ms, 40000);

  assert_int_equal(llmux_route_table_close_remote(f->table, "a", "a-m", 1000), 0);
  assert_int_equal(stats(f->old_router, a, 1500).state, LLMUX_BREAKER_OPEN);
  assert_int_equal(llmux_route_table_close_remote(f->table, "a", "a-m", 1500), 1);

  assert_int_equal(stats(f->old_router, a, 1500).state, LLMUX_BREAKER_CLOSED);
  assert_int_equal(llmux_router_allow(f->old_router, a, 1501), LLMUX_ROUTER_ALLOW);
  assert_int_equal(h.n, 1); /* not sent back */
  /* Closed and a fresh count: one failure does not re-open it. */
  llmux_router_report(f->old_router, a, LLMUX_OUTCOME_FAILURE, 0, 1600);
  assert_int_equal(stats(f->old_router, a, 1601).state, LLMUX_BREAKER_CLOSED);
  /* A close for a route nobody knows makes no entry. */
  assert_int_equal(llmux_route_table_close_remote(f->table, "zz", "zz-m", 1700), 0);
  assert_int_equal(llmux_route_table_count(f->table), 2);
}

static void an_opening_older_than_the_last_close_is_stale(void **state) {
  fixture_t *f = *state;
  size_t a = route(f->before, "a", "a-m");
  fail_twice(f, a, 1000); /* open until 11001 */
  assert_int_equal(llmux_router_allow(f->old_router, a, 11001), LLMUX_ROUTER_PROBE);
  llmux_router_report(f->old_router, a, LLMUX_OUTCOME_SUCCESS, 50, 11200); /* closed at 11200 */

  /* Failures elsewhere before that success, heard after it: ignored. */
  assert_int_equal(llmux_route_table_open(f->table, "a", "a-m", 11100, 30000, 11300), 0);
  assert_int_equal(stats(f->old_router, a, 11300).state, LLMUX_BREAKER_CLOSED);
  /* A close heard from elsewhere moves the mark too. */
  assert_int_equal(llmux_route_table_close_remote(f->table, "a", "a-m", 11400), 0);
  assert_int_equal(llmux_route_table_open(f->table, "a", "a-m", 11350, 30000, 11500), 0);
  assert_int_equal(stats(f->old_router, a, 11500).state, LLMUX_BREAKER_CLOSED);
  /* Failures after it rest the route. */
  assert_int_equal(llmux_route_table_open(f->table, "a", "a-m", 11450, 30000, 11500), 1);
  assert_int_equal(stats(f->old_router, a, 11500).state, LLMUX_BREAKER_OPEN);
}

static void a_route_opened_elsewhere_before_a_reload_adds_it_rests_after(void **state) {
  fixture_t *f = *state;
  assert_int_equal(llmux_route_table_count(f->table), 2);

  assert_int_equal(llmux_route_table_open(f->table, "c", "c-m", 1000, 9000, 1000), 1);
  assert_int_equal(llmux_route_table_count(f->table), 3);
  reload(f);

  assert_int_equal(stats(f->new_router, route(f->after, "c", "c-m"), 2000).state,
                   LLMUX_BREAKER_OPEN);
  assert_int_equal(llmux_router_allow(f->new_router, route(f->after, "c", "c-m"), 8999),
                   LLMUX_ROUTER_DENY);
  assert_int_equal(llmux_router_allow(f->new_router, route(f->after, "c", "c-m"), 9000),
                   LLMUX_ROUTER_PROBE);
  /* The entry counts failures like any other once a router maps it. */
  llmux_router_report(f->new_router, route(f->after, "c", "c-m"), LLMUX_OUTCOME_FAILURE, 0,
                      9100);
  assert_int_equal(stats(f->new_router, route(f->after, "c", "c-m"), 9101).until_ms, 19100);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
    T(an_open_breaker_stays_open_after_a_reload_that_moved_the_route),
    T(a_latency_average_is_kept_and_a_new_route_starts_unobserved),
    T(a_request_on_the_old_router_ends_on_the_entry_the_new_one_reads),
    T(failures_counted_before_a_reload_still_count_after_it),
    T(the_observer_hears_a_trip_a_failed_probe_and_the_probe_that_closes),
    T(an_opening_from_elsewhere_rests_the_route_and_is_not_sent_back),
    T(a_close_from_elsewhere_ends_an_earlier_opening_not_a_later_one),
    T(an_opening_older_than_the_last_close_is_stale),
    T(a_route_opened_elsewhere_before_a_reload_adds_it_rests_after),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
