/* A finished request's record, as metrics and the access log see it: which
 * series it moves (rendered in the text format, as a scrape would read
 * them), what stays out of labels, and the access-log line, field by field.
 * The gateway here is a bare one: its registry, no access log. */
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "gateway/reqlog.h"
#include "gateway/server.h"

static llmux_gateway_t gw;

static int setup(void **state) {
  memset(&gw, 0, sizeof gw);
  return llmux_obs_init(&gw.obs, "9.9.9", "1.3");
}

static int teardown(void **state) {
  llmux_obs_free(&gw.obs);
  llmux_buf_free(&gw.log_line);
  return 0;
}

/* The registry as a scrape reads it, NUL-terminated (free it). */
static char *scrape(void) {
  llmux_buf_t b = {0};
  assert_int_equal(llmux_metrics_render(gw.obs.reg, &b), 0);
  llmux_buf_append(&b, "", 1);
  return b.base;
}

static void assert_has(const char *text, const char *line) {
  if (strstr(text, line) == NULL) fail_msg("missing [%s] in:\n%s", line, text);
}

static void assert_lacks(const char *text, const char *what) {
  if (strstr(text, what) != NULL) fail_msg("unexpected [%s] in:\n%s", what, text);
}

/* A record begun 5 ms ago, as the front door would have. */
static void begin(llmux_reqlog_t *rec, const char *endpoint) {
  llmux_http_req_t req;
  memset(&req, 0, sizeof req);
  req.start_us = llmux_now_us() - 5000;
  llmux_reqlog_begin(&gw, rec, &req, "req_test");
  rec->endpoint = endpoint;
}

/* A chat stream that failed over from a 429 on route a to route b, for
 * tenant acme: 16 tokens in, 3 out, first token after 2 ms of 6. */
static void served_stream(llmux_reqlog_t *rec) {
  begin(rec, "chat");
  rec->operation = "chat";
  rec->tenant = "acme";
  rec->model = "gpt-4";
  llmux_reqlog_attempt_begin(rec, "a", "a-id", 0);
  llmux_reqlog_attempt_end(&gw, rec, LLMUX_ATTEMPT_RATE_LIMITED, 429);
  llmux_reqlog_attempt_begin(rec, "b", "b-id", 0);
  llmux_reqlog_attempt_end(&gw, rec, LLMUX_ATTEMPT_OK, 200);
  rec->canonical_model = "m";
  rec->provider = "b";
  rec->provider_model = "b-id";
  rec->response_model = "b-id-2025-01-01";
  rec->status = 200;
  rec->stream = 1;
  rec->prompt_tokens = 16;
  rec->completion_tokens = 3;
  rec->cost_usd = 2.2e-05;
  rec->ttft_ns = 2000000;
  rec->duration_ns = 6000000;
  rec->overhead_us = 7;
  rec->output_chunks = 5;
}

static void test_a_served_stream_moves_every_series_it_concerns(void **state) {
  llmux_reqlog_t rec;
  char *text;
  served_stream(&rec);
  llmux_reqlog_done(&gw, &rec);
  text = scrape();
  assert_has(text, "\nllmux_requests_total{endpoint=\"chat\",status=\"200\",tenant=\"acme\"} 1\n");
  assert_has(text, "\nllmux_requests_in_flight 0\n");
  assert_has(text, "\nllmux_upstream_attempts_total{provider=\"a\",model=\"a-id\","
                   "outcome=\"rate_limited\"} 1\n");
  assert_has(text, "\nllmux_upstream_attempts_total{provider=\"b\",model=\"b-id\",outcome=\"ok\"} 1\n");
  assert_has(text, "\nllmux_failovers_total 1\n");
  assert_has(text, "\nllmux_retries_total 0\n");
  assert_has(text, "\nllmux_overhead_seconds_bucket{le=\"5e-06\"} 0\n");
  assert_has(text, "\nllmux_overhead_seconds_bucket{le=\"1e-05\"} 1\n");
#define GENAI "gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"b\"," \
              "gen_ai_request_model=\"m\",gen_ai_response_model=\"b-id\""
  assert_has(text, "\ngen_ai_client_token_usage_sum{" GENAI ",gen_ai_token_type=\"input\"} 16\n");
  assert_has(text, "\ngen_ai_client_token_usage_sum{" GENAI ",gen_ai_token_type=\"output\"} 3\n");
  assert_has(text, "\ngen_ai_client_token_usage_bucket{" GENAI
                   ",gen_ai_token_type=\"input\",le=\"16\"} 1\n");
  assert_has(text, "\ngen_ai_client_operation_duration_seconds_sum{" GENAI
                   ",error_type=\"\"} 0.006\n");
  assert_has(text, "\ngen_ai_server_time_to_first_token_seconds_sum{" GENAI "} 0.002\n");
  /* (6 ms - 2 ms) over the 2 tokens after the first */
  assert_has(text, "\ngen_ai_server_time_per_output_token_seconds_sum{" GENAI "} 0.002\n");
#undef GENAI
  assert_has(text, "\nllmux_tenant_tokens_total{tenant=\"acme\",token_type=\"input\"} 16\n");
  assert_has(text, "\nllmux_tenant_tokens_total{tenant=\"acme\",token_type=\"output\"} 3\n");
  assert_has(text, "\nllmux_tenant_cost_usd_total{tenant=\"acme\"} 2.2e-05\n");
  /* the provider's own words about its model stay out of labels */
  assert_lacks(text, "b-id-2025-01-01");
  free(text);
}

static void test_time_per_token_falls_back_on_stream_events(void **state) {
  llmux_reqlog_t rec;
  char *text;
  served_stream(&rec);
  rec.completion_tokens = -1; /* the provider did not count them */
  llmux_reqlog_done(&gw, &rec);
  text = scrape();
  /* (6 ms - 2 ms) over the 4 events after the first */
  assert_has(text, "gen_ai_request_model=\"m\",gen_ai_response_model=\"b-id\"} 0.001\n");
  assert_lacks(text, "gen_ai_token_type=\"output\"");
  free(text);
}

static void test_a_model_that_did_not_resolve_is_labelled_unknown_never_by_its_name(void **state) {
  llmux_reqlog_t rec;
  char *text;
  begin(&rec, "chat");
  rec.operation = "chat";
  rec.model = "whatever-the-client-typed";
  rec.status = 404;
  rec.error_code = "model_not_found";
  llmux_reqlog_done(&gw, &rec);
  text = scrape();
  assert_has(text, "gen_ai_client_operation_duration_seconds_count{gen_ai_operation_name=\"chat\","
                   "gen_ai_provider_name=\"\",gen_ai_request_model=\"unknown\","
                   "gen_ai_response_model=\"\",error_type=\"model_not_found\"} 1\n");
  assert_has(text, "\nllmux_requests_total{endpoint=\"chat\",status=\"404\",tenant=\"\"} 1\n");
  assert_lacks(text, "whatever-the-client-typed");
  assert_lacks(text, "req_test");
  assert_lacks(text, "gen_ai_client_token_usage_count{");
  free(text);
}

static void test_an_answer_without_the_proxy_counts_in_requests_total_only(void **state) {
  llmux_reqlog_t rec;
  char *text;
  begin(&rec, "health");
  rec.status = 200;
  llmux_reqlog_done(&gw, &rec);
  text = scrape();
  assert_has(text, "\nllmux_requests_total{endpoint=\"health\",status=\"200\",tenant=\"\"} 1\n");
  assert_has(text, "\nllmux_overhead_seconds_count 0\n");
  assert_lacks(text, "gen_ai_client_operation_duration_seconds_count{");
  free(text);
}

static void test_a_record_in_flight_counts_until_done_and_not_after_cancel(void **state) {
  llmux_reqlog_t a, b;
  begin(&a, "chat");
  begin(&b, "admin");
  assert_true(llmux_series_value(gw.obs.in_flight_s) == 2);
  llmux_reqlog_cancel(&gw, &b);
  assert_true(llmux_series_value(gw.obs.in_flight_s) == 1);
  a.status = 200;
  llmux_reqlog_done(&gw, &a);
  assert_true(llmux_series_value(gw.obs.in_flight_s) == 0);
}

static void test_every_attempt_counts_even_past_the_kept_ones_and_a_retry_is_not_a_failover(
    void **state) {
  llmux_reqlog_t rec;
  char *text;
  int i;
  begin(&rec, "chat");
  rec.operation = "chat";
  for (i = 0; i < LLMUX_REQLOG_MAX_ATTEMPTS + 4; i++) {
    llmux_reqlog_attempt_begin(&rec, "a", "a-id", i % 2);
    llmux_reqlog_attempt_end(&gw, &rec, LLMUX_ATTEMPT_SERVER_ERROR, 500);
  }
  llmux_reqlog_attempt_begin(&rec, "a", "a-id", 0); /* still open at the end */
  rec.status = 502;
  rec.error_code = "upstream_error";
  llmux_reqlog_done(&gw, &rec);
  text = scrape();
  { /* M + 4 failed attempts, every other one a retry, and one left open */
    char want[96];
    snprintf(want, sizeof want, "outcome=\"server_error\"} %d\n", LLMUX_REQLOG_MAX_ATTEMPTS + 4);
    assert_has(text, want);
    snprintf(want, sizeof want, "\nllmux_retries_total %d\n", (LLMUX_REQLOG_MAX_ATTEMPTS + 4) / 2);
    assert_has(text, want);
    snprintf(want, sizeof want, "\nllmux_failovers_total %d\n", (LLMUX_REQLOG_MAX_ATTEMPTS + 4) / 2);
    assert_has(text, want);
  }
  assert_has(text, "outcome=\"cancelled\"} 1\n");
  assert_int_equal(rec.nattempts, LLMUX_REQLOG_MAX_ATTEMPTS + 5);
  free(text);
}

/* ---- the access-log line -------------------------------------------------- */

static json_t *parse_line(const llmux_reqlog_t *rec) {
  llmux_buf_t b = {0};
  json_error_t err;
  json_t *o;
  assert_int_equal(llmux_reqlog_json(&b, rec), 0);
  assert_true(b.len > 2 && b.base[b.len - 1] == '\n');
  assert_null(memchr(b.base, '\n', b.len - 1)); /* one line */
  o = json_loadb(b.base, b.len, 0, &err);
  if (o == NULL) fail_msg("not JSON (%s): %.*s", err.text, (int)b.len, b.base);
  llmux_buf_free(&b);
  return o;
}

static void test_the_access_log_line_has_exactly_the_fields_of_the_issue(void **state) {
  static const char *const keys[] = {
      "time", "request_id", "tenant", "endpoint", "model", "canonical_model", "provider",
      "provider_model", "status", "error_code", "attempts", "stream", "prompt_tokens",
      "completion_tokens", "cost_usd", "ttft_ms", "duration_ms", "overhead_us", "client_ip"};
  llmux_reqlog_t rec;
  json_t *o, *a;
  size_t i;
  served_stream(&rec);
  snprintf(rec.client_ip, sizeof rec.client_ip, "192.0.2.7");
  llmux_reqlog_done(&gw, &rec);
  o = parse_line(&rec);
  assert_int_equal(json_object_size(o), LLMUX_COUNTOF(keys));
  for (i = 0; i < LLMUX_COUNTOF(keys); i++)
    if (json_object_get(o, keys[i]) == NULL) fail_msg("no field %s", keys[i]);
  assert_string_equal(json_string_value(json_object_get(o, "request_id")), "req_test");
  assert_string_equal(json_string_value(json_object_get(o, "tenant")), "acme");
  assert_string_equal(json_string_value(json_object_get(o, "model")), "gpt-4");
  assert_string_equal(json_string_value(json_object_get(o, "canonical_model")), "m");
  assert_string_equal(json_string_value(json_object_get(o, "provider")), "b");
  assert_string_equal(json_string_value(json_object_get(o, "provider_model")), "b-id");
  assert_int_equal(json_integer_value(json_object_get(o, "status")), 200);
  assert_true(json_is_null(json_object_get(o, "error_code")));
  assert_true(json_is_true(json_object_get(o, "stream")));
  assert_int_equal(json_integer_value(json_object_get(o, "prompt_tokens")), 16);
  assert_int_equal(json_integer_value(json_object_get(o, "completion_tokens")), 3);
  assert_true(json_number_value(json_object_get(o, "cost_usd")) == 2.2e-05);
  assert_true(json_number_value(json_object_get(o, "ttft_ms")) == 2.0);
  assert_true(json_number_value(json_object_get(o, "duration_ms")) == 6.0);
  assert_int_equal(json_integer_value(json_object_get(o, "overhead_us")), 7);
  assert_string_equal(json_string_value(json_object_get(o, "client_ip")), "192.0.2.7");
  /* RFC 3339, UTC, milliseconds */
  assert_int_equal(strlen(json_string_value(json_object_get(o, "time"))), 24);
  assert_int_equal(json_string_value(json_object_get(o, "time"))[23], 'Z');
  a = json_object_get(o, "attempts");
  assert_int_equal(json_array_size(a), 2);
  assert_string_equal(json_string_value(json_object_get(json_array_get(a, 0), "provider")), "a");
  assert_string_equal(json_string_value(json_object_get(json_array_get(a, 0), "model")), "a-id");
  assert_string_equal(json_string_value(json_object_get(json_array_get(a, 0), "outcome")),
                      "rate_limited");
  assert_true(json_is_number(json_object_get(json_array_get(a, 0), "ms")));
  assert_string_equal(json_string_value(json_object_get(json_array_get(a, 1), "outcome")), "ok");
  assert_int_equal(json_object_size(json_array_get(a, 1)), 4);
  json_decref(o);
}

static void test_what_is_unknown_is_null_and_odd_bytes_stay_valid_json(void **state) {
  static const char *const nulls[] = {"tenant", "canonical_model", "provider", "provider_model",
                                      "prompt_tokens", "completion_tokens", "cost_usd",
                                      "ttft_ms", "overhead_us", "client_ip"};
  llmux_reqlog_t rec;
  json_t *o;
  size_t i;
  begin(&rec, "unknown");
  rec.model = "quote\" backslash\\ newline\n bad\xff utf8";
  rec.status = 404;
  rec.error_code = "unknown_url";
  llmux_reqlog_done(&gw, &rec);
  o = parse_line(&rec);
  for (i = 0; i < LLMUX_COUNTOF(nulls); i++)
    if (!json_is_null(json_object_get(o, nulls[i]))) fail_msg("%s is not null", nulls[i]);
  assert_int_equal(json_array_size(json_object_get(o, "attempts")), 0);
  assert_true(json_is_false(json_object_get(o, "stream")));
  assert_string_equal(json_string_value(json_object_get(o, "error_code")), "unknown_url");
  assert_non_null(strstr(json_string_value(json_object_get(o, "model")), "newline\n bad"));
  json_decref(o);
}

static void test_outcome_names_are_the_label_values(void **state) {
  assert_string_equal(llmux_attempt_outcome_name(LLMUX_ATTEMPT_OK), "ok");
  assert_string_equal(llmux_attempt_outcome_name(LLMUX_ATTEMPT_RATE_LIMITED), "rate_limited");
  assert_string_equal(llmux_attempt_outcome_name(LLMUX_ATTEMPT_SERVER_ERROR), "server_error");
  assert_string_equal(llmux_attempt_outcome_name(LLMUX_ATTEMPT_TIMEOUT), "timeout");
  assert_string_equal(llmux_attempt_outcome_name(LLMUX_ATTEMPT_CONNECT_ERROR), "connect_error");
  assert_string_equal(llmux_attempt_outcome_name(LLMUX_ATTEMPT_CANCELLED), "cancelled");
  assert_string_equal(llmux_attempt_outcome_name(LLMUX_ATTEMPT_COUNT), "unknown");
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

/* A tenant's series kept on its generation (reqlog.h) count exactly as
 * lookups would: the same slot over requests of many (endpoint, status)
 * pairs, more than it keeps, and a record without the slot beside them. */
static void test_a_tenants_kept_series_count_like_lookups(void **state) {
  static const int statuses[] = {200, 429, 200, 500, 401, 404, 200, 503, 429};
  llmux_reqlog_tenant_t slot;
  llmux_reqlog_t rec;
  char *text;
  size_t i;
  memset(&slot, 0, sizeof slot);
  for (i = 0; i < sizeof statuses / sizeof statuses[0]; i++) {
    served_stream(&rec);
    if (i == 7) rec.endpoint = "embeddings";
    rec.status = statuses[i];
    rec.tenant_series = i == 4 ? NULL : &slot;
    llmux_reqlog_done(&gw, &rec);
  }
  text = scrape();
  assert_has(text, "\nllmux_requests_total{endpoint=\"chat\",status=\"200\",tenant=\"acme\"} 3\n");
  assert_has(text, "\nllmux_requests_total{endpoint=\"chat\",status=\"429\",tenant=\"acme\"} 2\n");
  assert_has(text, "\nllmux_requests_total{endpoint=\"chat\",status=\"500\",tenant=\"acme\"} 1\n");
  assert_has(text, "\nllmux_requests_total{endpoint=\"chat\",status=\"401\",tenant=\"acme\"} 1\n");
  assert_has(text, "\nllmux_requests_total{endpoint=\"chat\",status=\"404\",tenant=\"acme\"} 1\n");
  assert_has(text, "\nllmux_requests_total{endpoint=\"embeddings\",status=\"503\","
                   "tenant=\"acme\"} 1\n");
  assert_lacks(text, "endpoint=\"chat\",status=\"503\"");
  assert_has(text, "\nllmux_tenant_tokens_total{tenant=\"acme\",token_type=\"input\"} 144\n");
  assert_has(text, "\nllmux_tenant_tokens_total{tenant=\"acme\",token_type=\"output\"} 27\n");
  free(text);
}

/* A route's kept series and log text (reqlog.h) give what lookups give:
 * the same access-log line, names that need escaping (a quote, a
 * backslash) escaped once and kept; an attempt on another route written
 * as it is; and the same counts. A passthrough route's client-given id is
 * never the kept text. */
static void test_a_routes_kept_series_and_log_text_match_lookups(void **state) {
  static const char prov[] = "pr\"ov", canon[] = "can\\on", id[] = "id\"1";
  llmux_reqlog_route_t slot;
  llmux_reqlog_t rec;
  llmux_buf_t kept = {0}, looked = {0};
  char *text;
  int i;
  memset(&slot, 0, sizeof slot);
  slot.provider = prov;
  slot.canonical = canon;
  slot.model = id;
  for (i = 0; i < 4; i++) {
    begin(&rec, "chat");
    rec.operation = "chat";
    rec.model = "gpt-4";
    llmux_reqlog_attempt_begin(&rec, "other", "o-id", 0);
    llmux_reqlog_attempt_end(&gw, &rec, LLMUX_ATTEMPT_SERVER_ERROR, 500);
    llmux_reqlog_attempt_begin(&rec, prov, id, 0);
    llmux_reqlog_attempt_end(&gw, &rec, LLMUX_ATTEMPT_OK, 200);
    rec.canonical_model = canon;
    rec.provider = prov;
    rec.provider_model = id;
    rec.status = 200;
    rec.prompt_tokens = 4;
    rec.completion_tokens = 2;
    rec.duration_ns = 1000000;
    rec.route_series = i % 2 ? &slot : NULL;
    llmux_reqlog_done(&gw, &rec);
  }
  /* the last record's line, from the kept text and by lookups: the same */
  assert_int_equal(llmux_reqlog_json(&kept, &rec), 0);
  assert_non_null(slot.log_names); /* made and kept */
  rec.route_series = NULL;
  assert_int_equal(llmux_reqlog_json(&looked, &rec), 0);
  rec.route_series = &slot;
  assert_int_equal(kept.len, looked.len);
  assert_memory_equal(kept.base, looked.base, kept.len);
  assert_non_null(strstr(kept.base, ",\"canonical_model\":\"can\\\\on\",\"provider\":\"pr\\\"ov\","
                                    "\"provider_model\":\"id\\\"1\""));
  assert_non_null(strstr(kept.base, "{\"provider\":\"other\",\"model\":\"o-id\",\"outcome\":\"server_error\""));
  text = scrape();
  assert_has(text, "llmux_upstream_attempts_total{provider=\"pr\\\"ov\",model=\"id\\\"1\",outcome=\"ok\"} 4\n");
  free(text);
  /* a passthrough's record: its own id in the line, not the route's text */
  rec.passthrough = 1;
  rec.provider_model = "client/any-id";
  kept.len = 0;
  assert_int_equal(llmux_reqlog_json(&kept, &rec), 0);
  assert_non_null(strstr(kept.base, "\"provider_model\":\"client/any-id\""));
  llmux_reqlog_route_release(&slot);
  llmux_buf_free(&kept);
  llmux_buf_free(&looked);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_a_served_stream_moves_every_series_it_concerns),
      T(test_time_per_token_falls_back_on_stream_events),
      T(test_a_model_that_did_not_resolve_is_labelled_unknown_never_by_its_name),
      T(test_an_answer_without_the_proxy_counts_in_requests_total_only),
      T(test_a_record_in_flight_counts_until_done_and_not_after_cancel),
      T(test_every_attempt_counts_even_past_the_kept_ones_and_a_retry_is_not_a_failover),
      T(test_the_access_log_line_has_exactly_the_fields_of_the_issue),
      T(test_what_is_unknown_is_null_and_odd_bytes_stay_valid_json),
      T(test_outcome_names_are_the_label_values),
      T(test_a_tenants_kept_series_count_like_lookups),
      T(test_a_routes_kept_series_and_log_text_match_lookups),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
