/* Trace context in and out, and the OTLP JSON a collector reads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "gateway/otlp.h"

static void test_traceparent_round_trips(void **state) {
  static const char tp[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  llmux_trace_ctx_t c;
  char out[64];
  assert_int_equal(llmux_traceparent_parse(tp, strlen(tp), &c), 0);
  assert_int_equal(c.trace_id[0], 0x4b);
  assert_int_equal(c.span_id[7], 0xb7);
  assert_int_equal(c.flags, 1);
  llmux_traceparent_format(c.trace_id, c.span_id, c.flags, out);
  assert_string_equal(out, tp);
}

static void test_malformed_traceparents_are_refused(void **state) {
  static const char *const bad[] = {
      "",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",          /* short */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",   /* 00 is exact */
      "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",         /* version ff */
      "00-00000000000000000000000000000000-00f067aa0ba902b7-01",         /* zero trace */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",         /* zero span */
      "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",         /* upper case */
      "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
      "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
  };
  llmux_trace_ctx_t c;
  size_t i;
  for (i = 0; i < sizeof bad / sizeof *bad; i++)
    if (llmux_traceparent_parse(bad[i], strlen(bad[i]), &c) == 0) fail_msg("accepted %s", bad[i]);
  /* A later version with more fields is read as 00. */
  assert_int_equal(llmux_traceparent_parse(
                       "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more", 60, &c),
                   0);
}

static void test_a_span_encodes_as_otlp_json(void **state) {
  static const char finish[] = "stop\0length";
  llmux_span_attr_t attrs[] = {
      {"gen_ai.operation.name", LLMUX_ATTR_STR, "chat", 0, 0, 0},
      {"gen_ai.usage.input_tokens", LLMUX_ATTR_INT, NULL, 12, 0, 0},
      {"gen_ai.response.finish_reasons", LLMUX_ATTR_STR_ARRAY, finish, 0, 0, 2},
  };
  llmux_span_t sp;
  llmux_buf_t b = {0};
  json_t *j, *a;
  json_error_t e;
  memset(&sp, 0, sizeof sp);
  memset(sp.trace_id, 0xab, 16);
  memset(sp.span_id, 0x01, 8);
  memset(sp.parent_id, 0x02, 8);
  sp.has_parent = 1;
  sp.name = "chat \"fast\"";
  sp.kind = LLMUX_SPAN_SERVER;
  sp.start_ns = 1700000000000000000ull;
  sp.end_ns = 1700000000500000000ull;
  sp.attrs = attrs;
  sp.nattrs = 3;
  sp.error = 1;
  sp.status_message = "upstream_timeout";
  assert_int_equal(llmux_otlp_encode_span(&b, &sp), 0);
  j = json_loadb(b.base, b.len, 0, &e);
  if (j == NULL) fail_msg("not JSON: %s\n%.*s", e.text, (int)b.len, b.base);
  assert_string_equal(json_string_value(json_object_get(j, "name")), "chat \"fast\"");
  assert_string_equal(json_string_value(json_object_get(j, "traceId")),
                      "abababababababababababababababab");
  assert_string_equal(json_string_value(json_object_get(j, "parentSpanId")), "0202020202020202");
  assert_int_equal(json_integer_value(json_object_get(j, "kind")), 2);
  assert_string_equal(json_string_value(json_object_get(j, "endTimeUnixNano")),
                      "1700000000500000000");
  a = json_object_get(j, "attributes");
  assert_int_equal(json_array_size(a), 3);
  assert_string_equal(
      json_string_value(json_object_get(json_object_get(json_array_get(a, 1), "value"), "intValue")),
      "12");
  assert_string_equal(
      json_string_value(json_object_get(
          json_array_get(json_object_get(json_object_get(json_object_get(json_array_get(a, 2),
                                                                         "value"),
                                                         "arrayValue"),
                                         "values"),
                         1),
          "stringValue")),
      "length");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "status"), "code")), 2);
  json_decref(j);
  llmux_buf_free(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_traceparent_round_trips),
      cmocka_unit_test(test_malformed_traceparents_are_refused),
      cmocka_unit_test(test_a_span_encodes_as_otlp_json),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
