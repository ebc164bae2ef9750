/* The families /metrics exposes: every name the issue and dashboards rely
 * on is declared with its type, and the process gauges are filled. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "gateway/obs.h"

static void test_every_family_is_declared_with_its_type(void **state) {
  static const char *const expect[] = {
      "# TYPE gen_ai_client_token_usage histogram",
      "# TYPE gen_ai_client_operation_duration_seconds histogram",
      "# TYPE gen_ai_server_time_to_first_token_seconds histogram",
      "# TYPE gen_ai_server_time_per_output_token_seconds histogram",
      "# TYPE llmux_requests_total counter", "# TYPE llmux_requests_in_flight gauge",
      "# TYPE llmux_overhead_seconds histogram", "# TYPE llmux_upstream_attempts_total counter",
      "# TYPE llmux_failovers_total counter", "# TYPE llmux_retries_total counter",
      "# TYPE llmux_route_state gauge", "# TYPE llmux_route_remaining gauge",
      "# TYPE llmux_route_latency_seconds gauge", "# TYPE llmux_tenant_tokens_total counter",
      "# TYPE llmux_tenant_cost_usd_total counter",
      "# TYPE llmux_tenant_budget_remaining_usd gauge", "# TYPE llmux_build_info gauge",
      "# TYPE llmux_config_generation gauge", "# TYPE llmux_config_reload_total counter",
      "# TYPE llmux_connections gauge", "# TYPE process_resident_memory_bytes gauge",
      "# TYPE process_cpu_seconds_total counter", "# TYPE process_open_fds gauge",
      "llmux_build_info{version=\"1.2.3\",abi=\"1.3\"} 1\n",
      "llmux_config_reload_total{result=\"failure\"} 0\n",
      "llmux_overhead_seconds_bucket{le=\"5e-06\"} 0\n",
  };
  llmux_obs_t o;
  llmux_buf_t b = {0};
  size_t i;
  assert_int_equal(llmux_obs_init(&o, "1.2.3", "1.3"), 0);
  assert_int_equal(llmux_metrics_render(o.reg, &b), 0);
  llmux_buf_append(&b, "", 0);
  for (i = 0; i < sizeof expect / sizeof *expect; i++)
    if (strstr(b.base, expect[i]) == NULL) fail_msg("missing [%s] in:\n%s", expect[i], b.base);
  llmux_buf_free(&b);
  llmux_obs_free(&o);
}

static void test_process_gauges_are_read_at_scrape_time(void **state) {
  llmux_obs_t o;
  llmux_buf_t b = {0};
  const char *rss;
  assert_int_equal(llmux_obs_init(&o, "x", "1.3"), 0);
  assert_int_equal(llmux_metrics_render(o.reg, &b), 0);
  llmux_buf_append(&b, "", 0);
  rss = strstr(b.base, "\nprocess_resident_memory_bytes ");
  assert_non_null(rss);
  assert_true(strtod(rss + strlen("\nprocess_resident_memory_bytes "), NULL) > 1e5);
  assert_non_null(strstr(b.base, "\nprocess_open_fds "));
  assert_non_null(strstr(b.base, "\nprocess_cpu_seconds_total "));
  llmux_buf_free(&b);
  llmux_obs_free(&o);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_family_is_declared_with_its_type),
      cmocka_unit_test(test_process_gauges_are_read_at_scrape_time),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
