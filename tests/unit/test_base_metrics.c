/* The Prometheus registry: what a scrape reads back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "base/metrics.h"

static char *render(llmux_metrics_t *m) {
  llmux_buf_t b = {0};
  assert_int_equal(llmux_metrics_render(m, &b), 0);
  llmux_buf_append(&b, "", 0);
  return b.base;
}

#define assert_has(text, s) \
  do { if (strstr((text), (s)) == NULL) fail_msg("missing [%s] in:\n%s", (s), (text)); } while (0)

static void test_counter_series_are_written_with_their_labels(void **state) {
  static const char *const labels[] = {"provider", "model", "outcome"};
  llmux_metrics_t *m = llmux_metrics_new();
  llmux_metric_t *f = llmux_metrics_declare(m, LLMUX_METRIC_COUNTER,
                                            "llmux_upstream_attempts_total", "Attempts.",
                                            labels, 3, NULL, 0);
  llmux_series_t *a = llmux_metric_series3(f, "groq", "llama", "ok");
  char *t;
  assert_ptr_equal(a, llmux_metric_series3(f, "groq", "llama", "ok"));
  assert_ptr_not_equal(a, llmux_metric_series3(f, "groq", "llamaok", ""));
  llmux_series_add(a, 1);
  llmux_series_add(a, 2);
  t = render(m);
  assert_has(t, "# HELP llmux_upstream_attempts_total Attempts.\n"
                "# TYPE llmux_upstream_attempts_total counter\n");
  assert_has(t, "llmux_upstream_attempts_total{provider=\"groq\",model=\"llama\",outcome=\"ok\"} 3\n");
  assert_has(t, "{provider=\"groq\",model=\"llamaok\",outcome=\"\"} 0\n");
  free(t);
  llmux_metrics_free(m);
}

static void test_histogram_buckets_are_cumulative_with_inf_sum_and_count(void **state) {
  static const double b[] = {0.01, 0.1, 1};
  static const char *const labels[] = {"op"};
  llmux_metrics_t *m = llmux_metrics_new();
  llmux_metric_t *f = llmux_metrics_declare(m, LLMUX_METRIC_HISTOGRAM, "d_seconds", "D.",
                                            labels, 1, b, 3);
  llmux_series_t *s = llmux_metric_series3(f, "chat", NULL, NULL);
  char *t;
  llmux_series_observe(s, 0.01); /* on a bound: that bucket (le is <=) */
  llmux_series_observe(s, 0.5);
  llmux_series_observe(s, 7);
  t = render(m);
  assert_has(t, "d_seconds_bucket{op=\"chat\",le=\"0.01\"} 1\n");
  assert_has(t, "d_seconds_bucket{op=\"chat\",le=\"0.1\"} 1\n");
  assert_has(t, "d_seconds_bucket{op=\"chat\",le=\"1\"} 2\n");
  assert_has(t, "d_seconds_bucket{op=\"chat\",le=\"+Inf\"} 3\n");
  assert_has(t, "d_seconds_sum{op=\"chat\"} 7.51\n");
  assert_has(t, "d_seconds_count{op=\"chat\"} 3\n");
  free(t);
  llmux_metrics_free(m);
}

static void test_label_values_and_help_are_escaped(void **state) {
  static const char *const labels[] = {"tenant"};
  llmux_metrics_t *m = llmux_metrics_new();
  llmux_metric_t *f = llmux_metrics_declare(m, LLMUX_METRIC_GAUGE, "g", "a\\b\nc", labels, 1,
                                            NULL, 0);
  char *t;
  llmux_series_set(llmux_metric_series3(f, "q\"u\\o\nte", NULL, NULL), -2.5);
  t = render(m);
  assert_has(t, "# HELP g a\\\\b\\nc\n");
  assert_has(t, "g{tenant=\"q\\\"u\\\\o\\nte\"} -2.5\n");
  free(t);
  llmux_metrics_free(m);
}

static void unset_all(llmux_metrics_t *m, void *arg) {
  llmux_metric_t *f = arg;
  llmux_metric_reset_unset(f);
  llmux_series_set(llmux_metric_series3(f, "kept", NULL, NULL), 1);
}

static void test_gauges_a_collector_no_longer_sets_disappear(void **state) {
  static const char *const labels[] = {"route"};
  llmux_metrics_t *m = llmux_metrics_new();
  llmux_metric_t *f = llmux_metrics_declare(m, LLMUX_METRIC_GAUGE, "route_state", "S.",
                                            labels, 1, NULL, 0);
  char *t;
  llmux_series_set(llmux_metric_series3(f, "gone", NULL, NULL), 2);
  assert_int_equal(llmux_metrics_on_collect(m, unset_all, f), 0);
  t = render(m);
  assert_has(t, "route_state{route=\"kept\"} 1\n");
  assert_null(strstr(t, "gone"));
  free(t);
  llmux_metrics_free(m);
}

static void test_bad_declarations_are_refused(void **state) {
  static const char *const bad_label[] = {"le"};
  static const char *const ok_label[] = {"a"};
  static const double unsorted[] = {1, 0.5};
  llmux_metrics_t *m = llmux_metrics_new();
  assert_null(llmux_metrics_declare(m, LLMUX_METRIC_COUNTER, "9lives", "", NULL, 0, NULL, 0));
  assert_null(llmux_metrics_declare(m, LLMUX_METRIC_COUNTER, "a-b", "", NULL, 0, NULL, 0));
  assert_null(llmux_metrics_declare(m, LLMUX_METRIC_HISTOGRAM, "h", "", bad_label, 1,
                                    unsorted, 1));
  assert_null(llmux_metrics_declare(m, LLMUX_METRIC_HISTOGRAM, "h", "", ok_label, 1,
                                    unsorted, 2));
  assert_null(llmux_metrics_declare(m, LLMUX_METRIC_HISTOGRAM, "h", "", ok_label, 1, NULL, 0));
  assert_non_null(llmux_metrics_declare(m, LLMUX_METRIC_COUNTER, "c", "", NULL, 0, NULL, 0));
  assert_null(llmux_metrics_declare(m, LLMUX_METRIC_COUNTER, "c", "", NULL, 0, NULL, 0));
  llmux_metrics_free(m);
}

static void test_many_series_keep_their_identity(void **state) {
  static const char *const labels[] = {"n"};
  llmux_metrics_t *m = llmux_metrics_new();
  llmux_metric_t *f = llmux_metrics_declare(m, LLMUX_METRIC_COUNTER, "c", "", labels, 1,
                                            NULL, 0);
  llmux_series_t *first[500];
  char name[16];
  int i;
  for (i = 0; i < 500; i++) {
    snprintf(name, sizeof name, "s%d", i);
    first[i] = llmux_metric_series3(f, name, NULL, NULL);
    llmux_series_add(first[i], i);
  }
  for (i = 0; i < 500; i++) {
    snprintf(name, sizeof name, "s%d", i);
    assert_ptr_equal(first[i], llmux_metric_series3(f, name, NULL, NULL));
    assert_true(llmux_series_value(first[i]) == i);
  }
  llmux_metrics_free(m);
}

/* Lookups remember series by the addresses of their values; an address
 * that now holds other bytes (a configuration freed by a reload, its memory
 * used again) finds the series of those bytes, never the old one. */
static void test_the_same_address_with_other_bytes_is_another_series(void **state) {
  static const char *const labels[] = {"provider", "model"};
  llmux_metrics_t *m = llmux_metrics_new();
  llmux_metric_t *f = llmux_metrics_declare(m, LLMUX_METRIC_COUNTER, "x_total", "x", labels, 2,
                                            NULL, 0);
  char prov[8] = "a", model[8] = "m";
  llmux_series_t *a, *b;
  a = llmux_metric_series3(f, prov, model, NULL);
  assert_ptr_equal(llmux_metric_series3(f, prov, model, NULL), a);
  assert_ptr_equal(llmux_metric_series3(f, "a", "m", NULL), a); /* other addresses, same bytes */
  strcpy(prov, "b");
  b = llmux_metric_series3(f, prov, model, NULL);
  assert_ptr_not_equal(b, a);
  strcpy(prov, "a");
  assert_ptr_equal(llmux_metric_series3(f, prov, model, NULL), a);
  llmux_metrics_free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_counter_series_are_written_with_their_labels),
      cmocka_unit_test(test_histogram_buckets_are_cumulative_with_inf_sum_and_count),
      cmocka_unit_test(test_label_values_and_help_are_escaped),
      cmocka_unit_test(test_gauges_a_collector_no_longer_sets_disappear),
      cmocka_unit_test(test_bad_declarations_are_refused),
      cmocka_unit_test(test_many_series_keep_their_identity),
      cmocka_unit_test(test_the_same_address_with_other_bytes_is_another_series),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
