/* A request's trace: the context it takes from the client, the headers its
 * attempts send upstream, and the spans its record becomes (gateway/trace.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "gateway/server.h"
#include "gateway/trace.h"

#define CLIENT_TP "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#define TRACE_HEX "4bf92f3577b34da6a3ce929d0e0e4736"
#define CLIENT_SPAN_HEX "00f067aa0ba902b7"

/* ---- helpers ---------------------------------------------------------------- */

/* A request carrying the given headers (name, value, name, value, ..., NULL). */
typedef struct fake_req_s {
  llmux_http_req_t req;
  llmux_http_header_t h[4];
} fake_req_t;

static llmux_http_req_t *fake_req(fake_req_t *f, ...) {
  va_list ap;
  const char *name;
  memset(f, 0, sizeof *f);
  va_start(ap, f);
  while ((name = va_arg(ap, const char *)) != NULL) {
    const char *value = va_arg(ap, const char *);
    f->h[f->req.nheaders].name = (llmux_str_t){name, strlen(name)};
    f->h[f->req.nheaders++].value = (llmux_str_t){value, strlen(value)};
  }
  va_end(ap);
  f->req.headers = f->h;
  return &f->req;
}

/* A gateway with an exporter that never sends (no span is added), or none. */
typedef struct fixture_s {
  uv_loop_t loop;
  llmux_gateway_t gw;
} fixture_t;

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof *f);
  llmux_otlp_options_t o = {"http://127.0.0.1:4318"};
  uv_loop_init(&f->loop);
  f->gw.loop = &f->loop;
  f->gw.id_state = 42;
  assert_int_equal(llmux_otlp_new(&f->loop, NULL, &o, &f->gw.otlp), 0);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  if (f->gw.otlp) llmux_otlp_close(f->gw.otlp, NULL, NULL);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  free(f);
  return 0;
}

static void hex(const uint8_t *b, size_t n, char *out) {
  size_t i;
  for (i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", b[i]);
}

/* The spans of a record as the JSON a collector reads. */
static void to_json(void *arg, const llmux_span_t *span) {
  json_t *arr = arg;
  llmux_buf_t b = {0};
  json_error_t e;
  json_t *j;
  assert_int_equal(llmux_otlp_encode_span(&b, span), 0);
  j = json_loadb(b.base, b.len, 0, &e);
  if (j == NULL) fail_msg("not JSON: %s", e.text);
  json_array_append_new(arr, j);
  llmux_buf_free(&b);
}

static json_t *spans_of(const llmux_reqlog_t *rec) {
  json_t *arr = json_array();
  size_t n = llmux_trace_spans(rec, to_json, arr);
  assert_int_equal(n, json_array_size(arr));
  return arr;
}

static const char *str(json_t *span, const char *key) {
  return json_string_value(json_object_get(span, key));
}

/* The attribute `key` of a span, or NULL. */
static json_t *attr(json_t *span, const char *key) {
  size_t i;
  json_t *a;
  json_array_foreach(json_object_get(span, "attributes"), i, a) {
    if (strcmp(json_string_value(json_object_get(a, "key")), key) == 0)
      return json_object_get(a, "value");
  }
  return NULL;
}

static const char *attr_str(json_t *span, const char *key) {
  return json_string_value(json_object_get(attr(span, key), "stringValue"));
}

static const char *attr_int(json_t *span, const char *key) {
  return json_string_value(json_object_get(attr(span, key), "intValue"));
}

static int status_code(json_t *span) {
  return (int)json_integer_value(json_object_get(json_object_get(span, "status"), "code"));
}

/* A chat that failed over: groq answered 429, cerebras answered. */
static void failover_record(llmux_gateway_t *gw, llmux_reqlog_t *rec, llmux_http_req_t *req) {
  memset(rec, 0, sizeof *rec);
  rec->prompt_tokens = rec->completion_tokens = -1;
  llmux_trace_begin(gw, rec, req);
  rec->operation = "chat";
  rec->model = "fast";
  rec->canonical_model = "llama-3.3-70b";
  rec->provider = "cerebras";
  rec->provider_model = "llama3.3-70b";
  rec->response_model = "llama3.3-70b";
  rec->status = 200;
  rec->prompt_tokens = 12;
  rec->completion_tokens = 34;
  rec->finish_reason = "stop";
  rec->start_ns = 1700000000000000000ull;
  rec->duration_ns = 900000000ull;
  rec->nattempts = 2;
  rec->attempts[0] = (llmux_reqlog_attempt_t){"groq", "llama-3.3-70b-versatile",
                                              LLMUX_ATTEMPT_RATE_LIMITED, 429,
                                              rec->start_ns + 1000, rec->start_ns + 2000};
  rec->attempts[1] = (llmux_reqlog_attempt_t){"cerebras", "llama3.3-70b", LLMUX_ATTEMPT_OK, 200,
                                              rec->start_ns + 3000, rec->start_ns + 800000000};
  llmux_trace_attempt(gw, rec, rec->attempts[0].span_id);
  llmux_trace_attempt(gw, rec, rec->attempts[1].span_id);
}

/* ---- context in ------------------------------------------------------------- */

static void test_a_client_traceparent_is_our_parent(void **state) {
  fixture_t *f = *state;
  fake_req_t fr;
  llmux_reqlog_t rec;
  char h[33];
  memset(&rec, 0, sizeof rec);
  llmux_trace_begin(&f->gw, &rec, fake_req(&fr, "TraceParent", " " CLIENT_TP " ", NULL));
  assert_true(rec.has_parent);
  hex(rec.trace.trace_id, 16, h);
  assert_string_equal(h, TRACE_HEX);
  hex(rec.trace.span_id, 8, h);
  assert_string_equal(h, CLIENT_SPAN_HEX);
  hex(rec.span_id, 8, h);
  assert_string_not_equal(h, "0000000000000000");
  assert_string_not_equal(h, CLIENT_SPAN_HEX);
}

static void test_without_traceparent_a_fresh_sampled_trace_starts(void **state) {
  fixture_t *f = *state;
  fake_req_t fr;
  llmux_reqlog_t a, b;
  memset(&a, 0, sizeof a);
  memset(&b, 0, sizeof b);
  llmux_trace_begin(&f->gw, &a, fake_req(&fr, "traceparent", "garbage", NULL));
  llmux_trace_begin(&f->gw, &b, fake_req(&fr, NULL));
  assert_false(a.has_parent);
  assert_int_equal(a.trace.flags, 1);
  assert_memory_not_equal(a.trace.trace_id, b.trace.trace_id, 16);
  assert_memory_not_equal(a.span_id, b.span_id, 8);
}

static void test_without_an_exporter_nothing_is_drawn(void **state) {
  fixture_t *f = *state;
  static const uint8_t zero[16];
  fake_req_t fr;
  llmux_reqlog_t rec;
  llmux_otlp_t *o = f->gw.otlp;
  f->gw.otlp = NULL;
  memset(&rec, 0, sizeof rec);
  llmux_trace_begin(&f->gw, &rec, fake_req(&fr, NULL));
  assert_memory_equal(rec.trace.trace_id, zero, 16);
  assert_memory_equal(rec.span_id, zero, 8);
  assert_int_equal(f->gw.id_state, 42);
  f->gw.otlp = o;
}

/* ---- context out -------------------------------------------------------------- */

static void test_a_traced_attempt_sends_its_own_span_upstream(void **state) {
  fixture_t *f = *state;
  fake_req_t fr;
  llmux_http_req_t *req = fake_req(&fr, "traceparent", CLIENT_TP, "tracestate", "congo=t61rcWkgMzE", NULL);
  llmux_reqlog_t rec;
  llmux_buf_t b = {0};
  char want[128], span[17];
  memset(&rec, 0, sizeof rec);
  llmux_trace_begin(&f->gw, &rec, req);
  llmux_trace_attempt(&f->gw, &rec, rec.attempts[0].span_id);
  assert_int_equal(llmux_trace_headers(&rec, rec.attempts[0].span_id, req, &b), 0);
  hex(rec.attempts[0].span_id, 8, span);
  snprintf(want, sizeof want, "traceparent: 00-" TRACE_HEX "-%s-01\r\ntracestate: congo=t61rcWkgMzE\r\n", span);
  assert_string_equal(b.base, want);
  llmux_buf_free(&b);
}

static void test_without_an_exporter_the_client_context_passes_unchanged(void **state) {
  fixture_t *f = *state;
  fake_req_t fr;
  llmux_http_req_t *req = fake_req(&fr, "traceparent", CLIENT_TP, NULL);
  llmux_reqlog_t rec;
  llmux_buf_t b = {0};
  uint8_t span[8];
  llmux_otlp_t *o = f->gw.otlp;
  f->gw.otlp = NULL;
  memset(&rec, 0, sizeof rec);
  llmux_trace_begin(&f->gw, &rec, req);
  llmux_trace_attempt(&f->gw, &rec, span);
  assert_int_equal(llmux_trace_headers(&rec, span, req, &b), 0);
  assert_string_equal(b.base, "traceparent: " CLIENT_TP "\r\n");
  assert_int_equal(llmux_trace_spans(&rec, to_json, NULL), 0);
  llmux_buf_free(&b);
  f->gw.otlp = o;
}

static void test_an_unsampled_client_context_passes_unchanged(void **state) {
  fixture_t *f = *state;
  static const char tp[] = "00-" TRACE_HEX "-" CLIENT_SPAN_HEX "-00";
  fake_req_t fr;
  llmux_http_req_t *req = fake_req(&fr, "traceparent", tp, NULL);
  llmux_reqlog_t rec;
  llmux_buf_t b = {0};
  uint8_t span[8];
  memset(&rec, 0, sizeof rec);
  llmux_trace_begin(&f->gw, &rec, req);
  llmux_trace_attempt(&f->gw, &rec, span);
  assert_int_equal(llmux_trace_headers(&rec, span, req, &b), 0);
  assert_string_equal(b.base, "traceparent: 00-" TRACE_HEX "-" CLIENT_SPAN_HEX "-00\r\n");
  llmux_buf_free(&b);
}

static void test_no_context_no_header(void **state) {
  fixture_t *f = *state;
  fake_req_t fr;
  llmux_reqlog_t rec;
  llmux_buf_t b = {0};
  uint8_t span[8];
  llmux_otlp_t *o = f->gw.otlp;
  f->gw.otlp = NULL;
  memset(&rec, 0, sizeof rec);
  llmux_trace_begin(&f->gw, &rec, fake_req(&fr, "tracestate", "a=b", NULL));
  llmux_trace_attempt(&f->gw, &rec, span);
  assert_int_equal(llmux_trace_headers(&rec, span, &fr.req, &b), 0);
  assert_int_equal(b.len, 0);
  llmux_buf_free(&b);
  f->gw.otlp = o;
}

/* ---- spans -------------------------------------------------------------------- */

static void test_a_request_is_a_server_span_with_genai_attributes(void **state) {
  fixture_t *f = *state;
  fake_req_t fr;
  llmux_reqlog_t rec;
  json_t *spans, *s;
  char id[17];
  failover_record(&f->gw, &rec, fake_req(&fr, "traceparent", CLIENT_TP, NULL));
  spans = spans_of(&rec);
  assert_int_equal(json_array_size(spans), 3);
  s = json_array_get(spans, 0);
  assert_string_equal(str(s, "name"), "chat llama-3.3-70b");
  assert_int_equal(json_integer_value(json_object_get(s, "kind")), LLMUX_SPAN_SERVER);
  assert_string_equal(str(s, "traceId"), TRACE_HEX);
  assert_string_equal(str(s, "parentSpanId"), CLIENT_SPAN_HEX);
  hex(rec.span_id, 8, id);
  assert_string_equal(str(s, "spanId"), id);
  assert_string_equal(str(s, "startTimeUnixNano"), "1700000000000000000");
  assert_string_equal(str(s, "endTimeUnixNano"), "1700000000900000000");
  assert_string_equal(attr_str(s, "gen_ai.operation.name"), "chat");
  assert_string_equal(attr_str(s, "gen_ai.provider.name"), "cerebras");
  assert_string_equal(attr_str(s, "gen_ai.request.model"), "llama-3.3-70b");
  assert_string_equal(attr_str(s, "gen_ai.response.model"), "llama3.3-70b");
  assert_string_equal(attr_int(s, "gen_ai.usage.input_tokens"), "12");
  assert_string_equal(attr_int(s, "gen_ai.usage.output_tokens"), "34");
  assert_string_equal(
      json_string_value(json_object_get(
          json_array_get(json_object_get(json_object_get(attr(s, "gen_ai.response.finish_reasons"),
                                                         "arrayValue"),
                                         "values"),
                         0),
          "stringValue")),
      "stop");
  assert_null(attr(s, "error.type"));
  assert_int_equal(status_code(s), 0);
  json_decref(spans);
}

static void test_each_attempt_is_a_client_span_under_ours(void **state) {
  fixture_t *f = *state;
  fake_req_t fr;
  llmux_reqlog_t rec;
  json_t *spans, *c0, *c1;
  char id[17], a0[17], a1[17];
  failover_record(&f->gw, &rec, fake_req(&fr, "traceparent", CLIENT_TP, NULL));
  spans = spans_of(&rec);
  c0 = json_array_get(spans, 1);
  c1 = json_array_get(spans, 2);
  hex(rec.span_id, 8, id);
  hex(rec.attempts[0].span_id, 8, a0);
  hex(rec.attempts[1].span_id, 8, a1);
  assert_string_not_equal(a0, a1);
  assert_string_equal(str(c0, "spanId"), a0);
  assert_string_equal(str(c1, "spanId"), a1);
  assert_string_equal(str(c0, "parentSpanId"), id);
  assert_string_equal(str(c1, "parentSpanId"), id);
  assert_string_equal(str(c0, "traceId"), TRACE_HEX);
  assert_int_equal(json_integer_value(json_object_get(c0, "kind")), LLMUX_SPAN_CLIENT);
  assert_string_equal(str(c0, "name"), "chat llama-3.3-70b-versatile");
  assert_string_equal(attr_str(c0, "gen_ai.provider.name"), "groq");
  assert_string_equal(attr_str(c0, "gen_ai.request.model"), "llama-3.3-70b-versatile");
  assert_string_equal(attr_int(c0, "http.response.status_code"), "429");
  assert_string_equal(attr_str(c0, "error.type"), "rate_limited");
  assert_int_equal(status_code(c0), 2);
  assert_string_equal(str(c1, "name"), "chat llama3.3-70b");
  assert_string_equal(attr_str(c1, "gen_ai.provider.name"), "cerebras");
  assert_null(attr(c1, "error.type"));
  assert_int_equal(status_code(c1), 0);
  json_decref(spans);
}

static void test_a_fresh_trace_has_a_root_span(void **state) {
  fixture_t *f = *state;
  fake_req_t fr;
  llmux_reqlog_t rec;
  json_t *spans;
  failover_record(&f->gw, &rec, fake_req(&fr, NULL));
  spans = spans_of(&rec);
  assert_null(json_object_get(json_array_get(spans, 0), "parentSpanId"));
  assert_string_equal(str(json_array_get(spans, 0), "traceId"),
                      str(json_array_get(spans, 1), "traceId"));
  json_decref(spans);
}

static void test_a_failed_request_says_its_error_and_omits_the_unknown(void **state) {
  fixture_t *f = *state;
  fake_req_t fr;
  llmux_reqlog_t rec;
  json_t *spans, *s;
  failover_record(&f->gw, &rec, fake_req(&fr, NULL));
  rec.status = 504;
  rec.error_code = "upstream_timeout";
  rec.response_model = NULL;
  rec.prompt_tokens = rec.completion_tokens = -1;
  rec.finish_reason = NULL;
  rec.attempts[1].outcome = LLMUX_ATTEMPT_TIMEOUT;
  rec.attempts[1].status = 0;
  spans = spans_of(&rec);
  s = json_array_get(spans, 0);
  assert_string_equal(attr_str(s, "error.type"), "upstream_timeout");
  assert_int_equal(status_code(s), 2);
  assert_null(attr(s, "gen_ai.response.model"));
  assert_null(attr(s, "gen_ai.usage.input_tokens"));
  assert_null(attr(s, "gen_ai.usage.output_tokens"));
  assert_null(attr(s, "gen_ai.response.finish_reasons"));
  s = json_array_get(spans, 2);
  assert_string_equal(attr_str(s, "error.type"), "timeout");
  assert_null(attr(s, "http.response.status_code"));
  json_decref(spans);
}

static void test_an_error_without_a_code_is_its_status(void **state) {
  fixture_t *f = *state;
  fake_req_t fr;
  llmux_reqlog_t rec;
  json_t *spans;
  failover_record(&f->gw, &rec, fake_req(&fr, NULL));
  rec.status = 503;
  spans = spans_of(&rec);
  assert_string_equal(attr_str(json_array_get(spans, 0), "error.type"), "503");
  json_decref(spans);
}

static void test_an_unknown_model_names_the_operation_alone(void **state) {
  fixture_t *f = *state;
  fake_req_t fr;
  llmux_reqlog_t rec;
  json_t *spans;
  failover_record(&f->gw, &rec, fake_req(&fr, NULL));
  rec.model = "no-such-model";
  rec.canonical_model = rec.provider = NULL;
  rec.status = 404;
  rec.error_code = "model_not_found";
  rec.nattempts = 0;
  spans = spans_of(&rec);
  assert_int_equal(json_array_size(spans), 1);
  assert_string_equal(str(json_array_get(spans, 0), "name"), "chat");
  assert_null(attr(json_array_get(spans, 0), "gen_ai.request.model"));
  json_decref(spans);
}

static void test_attempts_beyond_the_record_are_not_spans(void **state) {
  fixture_t *f = *state;
  fake_req_t fr;
  llmux_reqlog_t rec;
  size_t i;
  json_t *spans;
  failover_record(&f->gw, &rec, fake_req(&fr, NULL));
  for (i = 0; i < LLMUX_REQLOG_MAX_ATTEMPTS; i++) {
    rec.attempts[i] = rec.attempts[0];
    llmux_trace_attempt(&f->gw, &rec, rec.attempts[i].span_id);
  }
  rec.nattempts = LLMUX_REQLOG_MAX_ATTEMPTS + 3;
  spans = spans_of(&rec);
  assert_int_equal(json_array_size(spans), 1 + LLMUX_REQLOG_MAX_ATTEMPTS);
  json_decref(spans);
}

static void test_a_request_the_proxy_did_not_take_is_no_span(void **state) {
  fixture_t *f = *state;
  fake_req_t fr;
  llmux_reqlog_t rec;
  json_t *spans;
  failover_record(&f->gw, &rec, fake_req(&fr, NULL));
  rec.operation = NULL; /* GET /v1/models, /health, /admin/... */
  spans = spans_of(&rec);
  assert_int_equal(json_array_size(spans), 0);
  json_decref(spans);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_a_client_traceparent_is_our_parent, setup, teardown),
      cmocka_unit_test_setup_teardown(test_without_traceparent_a_fresh_sampled_trace_starts, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_without_an_exporter_nothing_is_drawn, setup, teardown),
      cmocka_unit_test_setup_teardown(test_a_traced_attempt_sends_its_own_span_upstream, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_without_an_exporter_the_client_context_passes_unchanged,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_an_unsampled_client_context_passes_unchanged, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_no_context_no_header, setup, teardown),
      cmocka_unit_test_setup_teardown(test_a_request_is_a_server_span_with_genai_attributes, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_each_attempt_is_a_client_span_under_ours, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_a_fresh_trace_has_a_root_span, setup, teardown),
      cmocka_unit_test_setup_teardown(test_a_failed_request_says_its_error_and_omits_the_unknown,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_an_error_without_a_code_is_its_status, setup, teardown),
      cmocka_unit_test_setup_teardown(test_an_unknown_model_names_the_operation_alone, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_attempts_beyond_the_record_are_not_spans, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_a_request_the_proxy_did_not_take_is_no_span, setup,
                                      teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
