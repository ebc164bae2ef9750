/* The response cache (gateway/cache.h): the canonical key, an LRU bounded
 * by bytes, expiry after the ttl on a clock the test drives, and a stored
 * completion replayed as a stream. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "base/util.h"
#include "gateway/cache.h"

static void key_of(const char *tenant, const char *model, const char *body, llmux_cache_key_t *k) {
  llmux_cache_key_free(k);
  assert_int_equal(llmux_cache_key(tenant, model, body, strlen(body), k), 0);
}

static int same(const llmux_cache_key_t *a, const llmux_cache_key_t *b) {
  return a->hash == b->hash && a->bytes.len == b->bytes.len &&
         memcmp(a->bytes.base, b->bytes.base, a->bytes.len) == 0;
}

static void test_the_key_ignores_key_order_whitespace_stream_and_user(void **st) {
  llmux_cache_key_t a = {{0}}, b = {{0}};
  (void)st;
  key_of("t", "m", "{\"model\":\"x\",\"temperature\":0,\"messages\":[{\"role\":\"user\","
                   "\"content\":\"hi\"}]}", &a);
  key_of("t", "m", "{ \"messages\" : [{\"content\":\"hi\",\"role\":\"user\"}], \"stream\":true,"
                   "\"stream_options\":{\"include_usage\":true},\"user\":\"bob\","
                   "\"temperature\":0, \"model\":\"alias-of-x\"}", &b);
  assert_true(same(&a, &b));
  llmux_cache_key_free(&a);
  llmux_cache_key_free(&b);
}

static void test_the_key_separates_tenants_models_and_bodies(void **st) {
  llmux_cache_key_t a = {{0}}, b = {{0}};
  const char *body = "{\"temperature\":0,\"messages\":[]}";
  (void)st;
  key_of("t1", "m", body, &a);
  key_of("t2", "m", body, &b);
  assert_false(same(&a, &b));
  key_of(NULL, "m", body, &a);
  key_of("", "m", body, &b); /* no tenant and the empty name are the same */
  assert_true(same(&a, &b));
  key_of("t", "m1", body, &a);
  key_of("t", "m2", body, &b);
  assert_false(same(&a, &b));
  key_of("t", "m", "{\"temperature\":0,\"messages\":[1]}", &a);
  key_of("t", "m", body, &b);
  assert_false(same(&a, &b));
  /* Parts are delimited: ("ab","c") is not ("a","bc"). */
  key_of("ab", "c", body, &a);
  key_of("a", "bc", body, &b);
  assert_false(same(&a, &b));
  llmux_cache_key_free(&a);
  llmux_cache_key_free(&b);
}

static void test_a_body_that_is_not_an_object_has_no_key(void **st) {
  llmux_cache_key_t k = {{0}};
  (void)st;
  assert_int_equal(llmux_cache_key("t", "m", "[1]", 3, &k), LLMUX_EINVAL);
  assert_int_equal(llmux_cache_key("t", "m", "{", 1, &k), LLMUX_EINVAL);
  assert_int_equal(llmux_cache_key("t", "m", "{\"a\":\"x\\\"}", 9, &k), LLMUX_EINVAL);
  assert_null(k.bytes.base);
}

static void test_nested_objects_are_sorted_and_escapes_kept(void **st) {
  llmux_cache_key_t a = {{0}}, b = {{0}};
  (void)st;
  key_of("t", "m", "{\"x\":[{\"b\":1,\"a\":{\"d\":\"q\\\"}\",\"c\":null}}]}", &a);
  key_of("t", "m", "{ \"x\" : [ { \"a\" : { \"c\" : null , \"d\" : \"q\\\"}\" } , \"b\" : 1 } ] }", &b);
  assert_true(same(&a, &b));
  key_of("t", "m", "{\"x\":\"a b\"}", &a); /* blanks inside strings count */
  key_of("t", "m", "{\"x\":\"ab\"}", &b);
  assert_false(same(&a, &b));
  llmux_cache_key_free(&a);
  llmux_cache_key_free(&b);
}

static void key_n(int i, llmux_cache_key_t *k) {
  char body[64];
  snprintf(body, sizeof body, "{\"n\":%d}", i);
  key_of("t", "m", body, k);
}

static void test_answers_expire_after_the_ttl(void **st) {
  llmux_cache_t *c;
  llmux_cache_key_t k = {{0}};
  llmux_cache_answer_t a;
  (void)st;
  assert_int_equal(llmux_cache_new(0, 1000, &c), 0);
  key_n(1, &k);
  assert_false(llmux_cache_get(c, &k, 0, 0, &a));
  assert_int_equal(llmux_cache_put(c, &k, "{\"a\":1}", 7, 3, -1, 5000), 0);
  assert_true(llmux_cache_get(c, &k, 5999, 0, &a));
  assert_int_equal(a.len, 7);
  assert_string_equal(a.data, "{\"a\":1}");
  assert_int_equal(a.prompt_tokens, 3);
  assert_int_equal(a.completion_tokens, -1);
  assert_false(llmux_cache_get(c, &k, 6000, 0, &a));
  assert_int_equal(llmux_cache_count(c), 0);
  assert_int_equal(llmux_cache_bytes(c), 0);
  llmux_cache_key_free(&k);
  llmux_cache_free(c);
}

static void test_memory_is_bounded_least_recently_used_first(void **st) {
  llmux_cache_t *c;
  llmux_cache_key_t k[8] = {{{0}}};
  char val[1000];
  llmux_cache_answer_t a;
  int i;
  (void)st;
  memset(val, 'x', sizeof val);
  for (i = 0; i < 8; i++) key_n(i, &k[i]);
  /* Room for three answers of 1000 bytes with their entries, not four. */
  assert_int_equal(llmux_cache_new(3 * 1200, 60000, &c), 0);
  for (i = 0; i < 3; i++) assert_int_equal(llmux_cache_put(c, &k[i], val, sizeof val, 0, 0, 0), 0);
  assert_int_equal(llmux_cache_count(c), 3);
  assert_true(llmux_cache_get(c, &k[0], 1, 0, &a)); /* 0 is now the most recent */
  assert_int_equal(llmux_cache_put(c, &k[3], val, sizeof val, 0, 0, 2), 0);
  assert_int_equal(llmux_cache_count(c), 3);
  assert_false(llmux_cache_get(c, &k[1], 3, 0, &a)); /* the least recently used went */
  assert_true(llmux_cache_get(c, &k[0], 3, 0, &a));
  assert_true(llmux_cache_get(c, &k[2], 3, 0, &a));
  assert_true(llmux_cache_get(c, &k[3], 3, 0, &a));
  assert_true(llmux_cache_bytes(c) <= 3 * 1200);
  /* Replacing an answer does not count it twice. */
  assert_int_equal(llmux_cache_put(c, &k[3], "{}", 2, 0, 0, 4), 0);
  assert_int_equal(llmux_cache_count(c), 3);
  /* An answer larger than the whole cache is not kept. */
  {
    char *big = calloc(1, 4000);
    assert_int_equal(llmux_cache_put(c, &k[4], big, 4000, 0, 0, 5), LLMUX_ETOOLARGE);
    free(big);
  }
  for (i = 0; i < 8; i++) llmux_cache_key_free(&k[i]);
  llmux_cache_free(c);
}

static void test_many_answers_grow_the_table(void **st) {
  llmux_cache_t *c;
  llmux_cache_key_t k = {{0}};
  llmux_cache_answer_t a;
  int i;
  (void)st;
  assert_int_equal(llmux_cache_new(0, 60000, &c), 0);
  for (i = 0; i < 3000; i++) {
    key_n(i, &k);
    assert_int_equal(llmux_cache_put(c, &k, "{}", 2, 0, 0, 0), 0);
  }
  for (i = 0; i < 3000; i++) {
    key_n(i, &k);
    assert_true(llmux_cache_get(c, &k, 1, 0, &a));
  }
  llmux_cache_key_free(&k);
  llmux_cache_free(c);
}

static void test_hits_are_counted_per_tenant(void **st) {
  llmux_cache_t *c;
  llmux_cache_tenant_counts_t n;
  (void)st;
  assert_int_equal(llmux_cache_new(0, 0, &c), 0);
  llmux_cache_count_hit(c, "a", 10, 2);
  llmux_cache_count_hit(c, "a", 1, 1);
  llmux_cache_count_hit(c, NULL, 5, 5);
  n = llmux_cache_tenant(c, "a");
  assert_int_equal(n.requests, 2);
  assert_int_equal(n.input_tokens, 11);
  assert_int_equal(n.output_tokens, 3);
  assert_int_equal(llmux_cache_tenant(c, "b").requests, 0);
  llmux_cache_free(c);
}

static void test_a_completion_replays_as_chunks(void **st) {
  const char *done =
      "{\"id\":\"c1\",\"object\":\"chat.completion\",\"created\":7,\"model\":\"m\","
      "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hello\","
      "\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\","
      "\"arguments\":\"{}\"}}]},\"finish_reason\":\"tool_calls\"}],"
      "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}";
  llmux_buf_t b = {0};
  char *s;
  (void)st;
  assert_int_equal(llmux_cache_sse(done, strlen(done), &b), 0);
  llmux_buf_append(&b, "", 1);
  s = b.base;
  assert_non_null(strstr(s, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\""));
  assert_non_null(strstr(s, "\"delta\":{\"role\":\"assistant\",\"content\":\"\"}"));
  assert_non_null(strstr(s, "\"delta\":{\"content\":\"Hello\"}"));
  assert_non_null(strstr(s, "\"tool_calls\":[{"));
  assert_non_null(strstr(s, "\"index\":0"));
  assert_non_null(strstr(s, "\"finish_reason\":\"tool_calls\""));
  assert_non_null(strstr(s, "\"choices\":[],\"usage\":{\"prompt_tokens\":3"));
  assert_non_null(strstr(s, "data: [DONE]\n\n"));
  assert_true(strstr(s, "\"content\":\"Hello\"") < strstr(s, "\"finish_reason\":\"tool_calls\""));
  llmux_buf_free(&b);
  assert_int_equal(llmux_cache_sse("{}", 2, &b), LLMUX_EINVAL);
  llmux_buf_free(&b);
}

static void test_a_stream_rendition_is_made_once_and_counted(void **st) {
  const char *done = "{\"id\":\"c\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,"
                     "\"message\":{\"role\":\"assistant\",\"content\":\"x\"},"
                     "\"finish_reason\":\"stop\"}]}";
  llmux_cache_t *c;
  llmux_cache_answer_t a;
  llmux_cache_key_t k = {{0}};
  uint64_t before;
  const char *first;
  (void)st;
  assert_int_equal(llmux_cache_new(0, 0, &c), 0);
  key_n(1, &k);
  assert_int_equal(llmux_cache_put(c, &k, done, strlen(done), 1, 1, 0), 0);
  before = llmux_cache_bytes(c);
  assert_true(llmux_cache_get(c, &k, 1, 1, &a));
  assert_non_null(strstr(a.data, "data: [DONE]"));
  assert_true(llmux_cache_bytes(c) == before + a.len);
  first = a.data;
  assert_true(llmux_cache_get(c, &k, 2, 1, &a));
  assert_ptr_equal(a.data, first);
  assert_true(llmux_cache_get(c, &k, 2, 0, &a));
  assert_string_equal(a.data, done);
  llmux_cache_key_free(&k);
  llmux_cache_free(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_the_key_ignores_key_order_whitespace_stream_and_user),
      cmocka_unit_test(test_the_key_separates_tenants_models_and_bodies),
      cmocka_unit_test(test_a_body_that_is_not_an_object_has_no_key),
      cmocka_unit_test(test_nested_objects_are_sorted_and_escapes_kept),
      cmocka_unit_test(test_answers_expire_after_the_ttl),
      cmocka_unit_test(test_memory_is_bounded_least_recently_used_first),
      cmocka_unit_test(test_many_answers_grow_the_table),
      cmocka_unit_test(test_hits_are_counted_per_tenant),
      cmocka_unit_test(test_a_completion_replays_as_chunks),
      cmocka_unit_test(test_a_stream_rendition_is_made_once_and_counted),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
