/* Merging the answers of a fanned-out request (gateway/fanout.h): plain
 * answers become one with every choice and the usage summed; stream chunks
 * get their choice indices rewritten, usage held back and summed, [DONE]
 * held back. The bytes that are not rewritten pass through as they came. */
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "gateway/fanout.h"

#define S(lit) ((llmux_str_t){lit, sizeof(lit) - 1})

static json_t *parse(const llmux_buf_t *b) {
  json_error_t e;
  json_t *j = json_loadb(b->base, b->len, 0, &e);
  if (j == NULL) fail_msg("not JSON (%s): %.*s", e.text, (int)b->len, b->base);
  return j;
}

static json_int_t int_at(json_t *o, const char *path1, const char *path2) {
  json_t *v = json_object_get(json_object_get(o, path1), path2);
  if (!json_is_integer(v)) fail_msg("%s.%s is not an integer", path1, path2);
  return json_integer_value(v);
}

static void test_plain_answers_merge_into_one_with_indices_0_to_n_and_usage_summed(void **st) {
  llmux_str_t a[3] = {
      S("{\"id\":\"msg_a\",\"object\":\"chat.completion\",\"model\":\"c\",\"choices\":[{\"index\":0,"
        "\"message\":{\"role\":\"assistant\",\"content\":\"one\"},\"finish_reason\":\"stop\"}],"
        "\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":3,\"total_tokens\":13}}"),
      S("{\"id\":\"msg_b\",\"object\":\"chat.completion\",\"model\":\"c\",\"choices\":[{\"index\":0,"
        "\"message\":{\"role\":\"assistant\",\"content\":\"two\"},\"finish_reason\":\"length\"}],"
        "\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":15}}"),
      S("{\"id\":\"msg_c\",\"object\":\"chat.completion\",\"model\":\"c\",\"choices\":[ { \"index\" : 0 ,"
        "\"message\":{\"role\":\"assistant\",\"content\":\"th\\\"ree]\"},\"finish_reason\":\"stop\"} ],"
        "\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":1}}"),
  };
  llmux_buf_t out = {0};
  json_t *j, *choices;
  size_t i;
  (void)st;
  assert_int_equal(llmux_fanout_merge(a, 3, &out), 0);
  j = parse(&out);
  assert_string_equal(json_string_value(json_object_get(j, "id")), "msg_a");
  choices = json_object_get(j, "choices");
  assert_int_equal(json_array_size(choices), 3);
  for (i = 0; i < 3; i++)
    assert_int_equal(json_integer_value(json_object_get(json_array_get(choices, i), "index")), i);
  assert_string_equal(json_string_value(json_object_get(json_object_get(json_array_get(choices, 2),
                                                                        "message"), "content")),
                      "th\"ree]");
  assert_string_equal(json_string_value(json_object_get(json_array_get(choices, 1),
                                                        "finish_reason")), "length");
  assert_int_equal(int_at(j, "usage", "prompt_tokens"), 30);
  assert_int_equal(int_at(j, "usage", "completion_tokens"), 9);
  assert_int_equal(int_at(j, "usage", "total_tokens"), 39); /* 13 + 15 + (10 + 1) */
  json_decref(j);
  llmux_buf_free(&out);
}

static void test_what_is_not_rewritten_passes_byte_for_byte(void **st) {
  llmux_str_t a[2] = {S("{\"z\":1.10,\"choices\":[{\"index\":0,\"x\":1e3}],\"tail\":[1, 2]}"),
                      S("{\"z\":9,\"choices\":[{\"index\":0,\"x\":2}]}")};
  llmux_buf_t out = {0};
  (void)st;
  assert_int_equal(llmux_fanout_merge(a, 2, &out), 0);
  assert_string_equal(out.base,
                      "{\"z\":1.10,\"choices\":[{\"index\":0,\"x\":1e3},{\"index\":1,\"x\":2}],"
                      "\"tail\":[1, 2]}");
  llmux_buf_free(&out);
}

static void test_a_copy_with_several_choices_keeps_them_apart(void **st) {
  /* Copy k's choice j is k + j*n: no two choices share an index. */
  llmux_str_t a[2] = {S("{\"choices\":[{\"index\":0},{\"index\":1}]}"),
                      S("{\"choices\":[{\"index\":0},{\"index\":1}]}")};
  llmux_buf_t out = {0};
  (void)st;
  assert_int_equal(llmux_fanout_merge(a, 2, &out), 0);
  assert_string_equal(out.base,
                      "{\"choices\":[{\"index\":0},{\"index\":2},{\"index\":1},{\"index\":3}]}");
  llmux_buf_free(&out);
}

static void test_an_answer_without_choices_cannot_be_merged(void **st) {
  llmux_str_t a[2] = {S("{\"choices\":[{\"index\":0}]}"), S("{\"error\":{\"message\":\"x\"}}")};
  llmux_str_t b[2] = {S("{\"choices\":[{\"index\":0}]}"), S("{\"choices\":[")};
  llmux_buf_t out = {0};
  (void)st;
  assert_int_equal(llmux_fanout_merge(a, 2, &out), LLMUX_EUPSTREAM);
  assert_int_equal(llmux_fanout_merge(b, 2, &out), LLMUX_EUPSTREAM);
  llmux_buf_free(&out);
}

static void test_a_choice_without_an_index_gets_one(void **st) {
  llmux_str_t a[2] = {S("{\"choices\":[{}]}"), S("{\"choices\":[{\"text\":\"x\"}]}")};
  llmux_buf_t out = {0};
  (void)st;
  assert_int_equal(llmux_fanout_merge(a, 2, &out), 0);
  assert_string_equal(out.base, "{\"choices\":[{\"index\":0},{\"index\":1,\"text\":\"x\"}]}");
  llmux_buf_free(&out);
}

static void test_a_stream_chunk_gets_its_copys_index(void **st) {
  static const char chunk[] =
      "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":"
      "{\"content\":\"hi\"},\"finish_reason\":null}]}";
  llmux_fanout_usage_t u = {0};
  llmux_buf_t out = {0};
  (void)st;
  assert_int_equal(llmux_fanout_chunk(chunk, sizeof chunk - 1, 2, 3, &u, &out),
                   LLMUX_FANOUT_CHUNK);
  assert_string_equal(out.base,
                      "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":"
                      "[{\"index\":2,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n");
  assert_int_equal(u.seen, 0);
  llmux_buf_free(&out);
}

static void test_usage_is_held_and_summed_into_one_chunk(void **st) {
  static const char only[] = "{\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,"
                             "\"completion_tokens\":2,\"total_tokens\":9}}";
  static const char with[] = "{\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{}}],"
                             "\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":4,"
                             "\"total_tokens\":11}}";
  llmux_fanout_usage_t u = {0};
  llmux_buf_t out = {0};
  (void)st;
  assert_int_equal(llmux_fanout_chunk(only, sizeof only - 1, 0, 2, &u, &out), LLMUX_FANOUT_USAGE);
  assert_int_equal(out.len, 0);
  /* Usage beside choices: counted, and null in the chunk passed on. */
  assert_int_equal(llmux_fanout_chunk(with, sizeof with - 1, 1, 2, &u, &out), LLMUX_FANOUT_CHUNK);
  assert_string_equal(out.base,
                      "data: {\"id\":\"c2\",\"choices\":[{\"index\":1,\"delta\":{}}],"
                      "\"usage\":null}\n\n");
  assert_int_equal(u.seen, 2);
  out.len = 0;
  assert_int_equal(llmux_fanout_usage_chunk(only, sizeof only - 1, &u, &out), 0);
  assert_string_equal(out.base, "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":14,"
                                "\"completion_tokens\":6,\"total_tokens\":20}}\n\n");
  llmux_buf_free(&out);
}

static void test_done_is_held_and_other_events_pass(void **st) {
  static const char err[] = "{\"error\":{\"message\":\"overloaded\",\"type\":\"upstream_error\"}}";
  llmux_fanout_usage_t u = {0};
  llmux_buf_t out = {0};
  (void)st;
  assert_int_equal(llmux_fanout_chunk("[DONE]", 6, 1, 2, &u, &out), LLMUX_FANOUT_DONE);
  assert_int_equal(llmux_fanout_chunk(" [DONE]\n", 8, 1, 2, &u, &out), LLMUX_FANOUT_DONE);
  assert_int_equal(out.len, 0);
  assert_int_equal(llmux_fanout_chunk(err, sizeof err - 1, 1, 2, &u, &out), LLMUX_FANOUT_PASSED);
  assert_int_equal(llmux_fanout_chunk("not json", 8, 1, 2, &u, &out), LLMUX_FANOUT_PASSED);
  assert_string_equal(out.base, "data: {\"error\":{\"message\":\"overloaded\",\"type\":"
                                "\"upstream_error\"}}\n\ndata: not json\n\n");
  llmux_buf_free(&out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_plain_answers_merge_into_one_with_indices_0_to_n_and_usage_summed),
      cmocka_unit_test(test_what_is_not_rewritten_passes_byte_for_byte),
      cmocka_unit_test(test_a_copy_with_several_choices_keeps_them_apart),
      cmocka_unit_test(test_an_answer_without_choices_cannot_be_merged),
      cmocka_unit_test(test_a_choice_without_an_index_gets_one),
      cmocka_unit_test(test_a_stream_chunk_gets_its_copys_index),
      cmocka_unit_test(test_usage_is_held_and_summed_into_one_chunk),
      cmocka_unit_test(test_done_is_held_and_other_events_pass),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
