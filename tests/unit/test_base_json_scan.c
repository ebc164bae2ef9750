/* The request scanner: finds top-level fields and rejects invalid JSON. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include <jansson.h>

#include "json_scan.h"
#include "util.h"

static int scan(const char *body, llmux_json_field_t *f, size_t n, size_t *off,
                const char **msg) {
  return llmux_json_scan(body, strlen(body), f, n, off, msg);
}

static void finds_top_level_model_and_stream(void **state) {
  const char *body =
      "{\"messages\":[{\"role\":\"user\",\"content\":\"hi \\\"model\\\": x\","
      "\"model\":\"nested\"}], \"model\" : \"gpt-4\", \"stream\":true}";
  llmux_json_field_t f[] = {{"model"}, {"stream"}, {"messages"}, {"tools"}};
  (void)state;
  assert_int_equal(scan(body, f, 4, NULL, NULL), 0);
  assert_int_equal(f[0].type, LLMUX_JSON_STRING);
  assert_int_equal(f[0].value.len, 7);
  assert_memory_equal(f[0].value.base, "\"gpt-4\"", 7);
  assert_int_equal(f[1].type, LLMUX_JSON_TRUE);
  assert_int_equal(f[2].type, LLMUX_JSON_ARRAY);
  assert_int_equal(f[3].type, LLMUX_JSON_NONE);
}

static void rejects_what_is_not_one_valid_object(void **state) {
  static const char *bad[] = {
    "", "[]", "\"x\"", "{", "{\"a\":}", "{\"a\":1,}", "{\"a\":01}", "{\"a\":tru}",
    "{\"a\":\"\x01\"}", "{\"a\":\"\\x\"}", "{\"a\":1} {}", "{a:1}", "{\"a\":\"\xff\"}",
    "{\"a\":1.}", "{\"a\":-}", "{\"a\":\"\\u12\"}",
  };
  size_t i, off;
  const char *msg;
  llmux_json_field_t f[] = {{"model"}};
  (void)state;
  for (i = 0; i < LLMUX_COUNTOF(bad); i++) {
    msg = NULL;
    assert_int_equal(scan(bad[i], f, 1, &off, &msg), LLMUX_EINVAL);
    assert_non_null(msg);
    assert_true(off <= strlen(bad[i]));
  }
}

static void accepts_all_value_kinds(void **state) {
  const char *body = " {\"a\":[1,-2.5e+3,0,true,false,null,{\"b\":[]},\"\\u00e9\\n\"],"
                     "\"u\":\"caf\xc3\xa9 \xf0\x9f\x98\x80\"} \n";
  llmux_json_field_t f[] = {{"a"}, {"u"}};
  (void)state;
  assert_int_equal(scan(body, f, 2, NULL, NULL), 0);
  assert_int_equal(f[0].type, LLMUX_JSON_ARRAY);
  assert_int_equal(f[1].type, LLMUX_JSON_STRING);
}

static void limits_nesting_depth(void **state) {
  char body[300];
  size_t i, n = 0;
  (void)state;
  n += (size_t)sprintf(body, "{\"a\":");
  for (i = 0; i < 100; i++) body[n++] = '[';
  for (i = 0; i < 100; i++) body[n++] = ']';
  body[n++] = '}';
  body[n] = '\0';
  assert_int_equal(scan(body, NULL, 0, NULL, NULL), LLMUX_EINVAL);
}

static void unquotes_escapes_and_surrogates(void **state) {
  char out[32];
  llmux_str_t v = {"\"a\\\"b\\u00e9\\ud83d\\ude00\"", 0};
  (void)state;
  v.len = strlen(v.base);
  assert_int_equal(llmux_json_unquote(v, out, sizeof out), 0);
  assert_string_equal(out, "a\"b\xc3\xa9\xf0\x9f\x98\x80");
  assert_int_equal(llmux_json_unquote(v, out, 4), LLMUX_ETOOLARGE);
}

/* The word-at-a-time skip must stop at every special byte wherever it
 * falls in a word. */
static void finds_special_bytes_at_every_alignment(void **state) {
  char body[128];
  size_t pos;
  (void)state;
  for (pos = 0; pos < 40; pos++) {
    llmux_json_field_t f[] = {{"a"}, {"b"}};
    memset(body, 0, sizeof body);
    memcpy(body, "{\"a\":\"", 6);
    memset(body + 6, 'x', 48);
    memcpy(body + 6 + pos, "\\\"", 2); /* an escaped quote inside */
    memcpy(body + 54, "\",\"b\":1}", 9);
    assert_int_equal(llmux_json_scan(body, strlen(body), f, 2, NULL, NULL), 0);
    assert_int_equal(f[0].value.len, 50);
    assert_int_equal(f[1].type, LLMUX_JSON_NUMBER);
    body[6 + pos] = '\x01'; /* a raw control character is invalid */
    assert_int_equal(llmux_json_scan(body, strlen(body), f, 2, NULL, NULL), LLMUX_EINVAL);
    body[6 + pos] = '\xc3'; /* a lone UTF-8 lead byte is invalid */
    assert_int_equal(llmux_json_scan(body, strlen(body), f, 2, NULL, NULL), LLMUX_EINVAL);
  }
}

static void probes_a_key_at_any_depth_in_the_same_pass(void **state) {
  const char *img = "{\"messages\":[{\"content\":[{\"type\":\"image_url\","
                    "\"image_url\":{\"url\":\"data:x\"}}]}]}";
  const char *txt = "{\"messages\":[{\"content\":\"the image_url key\"}]}";
  int hit = -1;
  (void)state;
  assert_int_equal(llmux_json_scan_probe(img, strlen(img), NULL, 0, "image_url", &hit, NULL, NULL), 0);
  assert_int_equal(hit, 1);
  assert_int_equal(llmux_json_scan_probe(txt, strlen(txt), NULL, 0, "image_url", &hit, NULL, NULL), 0);
  assert_int_equal(hit, 0);
}

/* Differential check against jansson over mutated documents (fixed seed):
 * whatever one accepts as a JSON object, the other must too. */
static unsigned long long rng = 0x9e3779b97f4a7c15ull;
static unsigned next_rand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (unsigned)(rng >> 11);
}

static void agrees_with_jansson_on_mutated_documents(void **state) {
  static const char *seeds[] = {
    "{\"model\":\"gpt-4\",\"messages\":[{\"role\":\"user\",\"content\":\"h\\u00e9\\n\"}],"
    "\"stream\":true,\"n\":-1.5e3,\"x\":null,\"y\":false,\"z\":{}}",
    "{\"a\":[1,2,[3,{\"b\":\"\\\"q\\\"\"}]],\"c\":0.25,\"d\":\"caf\xc3\xa9\"}",
  };
  static const char alphabet[] = "{}[]\":,0123456789-+.eEtrufalsn \\u\x01\xc3\xa9\xff";
  char buf[512];
  int i, k;
  (void)state;
  for (i = 0; i < 20000; i++) {
    const char *seed = seeds[i % 2];
    size_t n = strlen(seed), j;
    int mine, theirs;
    json_t *doc;
    memcpy(buf, seed, n + 1);
    for (k = 0; k < 1 + (int)(next_rand() % 3); k++) {
      size_t at = next_rand() % n;
      char c = alphabet[next_rand() % (sizeof(alphabet) - 1)];
      switch (next_rand() % 3) {
        case 0: buf[at] = c; break; /* replace */
        case 1: /* insert */
          if (n + 1 < sizeof buf) { memmove(buf + at + 1, buf + at, n - at + 1); buf[at] = c; n++; }
          break;
        default: /* delete */
          memmove(buf + at, buf + at + 1, n - at);
          n--;
      }
    }
    /* Known, deliberate differences: jansson refuses \u0000 by default. */
    for (j = 0; j + 5 < n; j++)
      if (memcmp(buf + j, "\\u0000", 6) == 0) break;
    if (j + 5 < n) continue;
    mine = llmux_json_scan(buf, n, NULL, 0, NULL, NULL) == 0;
    doc = json_loadb(buf, n, 0, NULL);
    theirs = doc != NULL && json_is_object(doc);
    json_decref(doc);
    if (mine != theirs) fail_msg("scanner %s, jansson %s: %.*s", mine ? "accepts" : "refuses",
                                 theirs ? "accepts" : "refuses", (int)n, buf);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(finds_top_level_model_and_stream),
    cmocka_unit_test(rejects_what_is_not_one_valid_object),
    cmocka_unit_test(accepts_all_value_kinds),
    cmocka_unit_test(limits_nesting_depth),
    cmocka_unit_test(unquotes_escapes_and_surrogates),
    cmocka_unit_test(finds_special_bytes_at_every_alignment),
    cmocka_unit_test(probes_a_key_at_any_depth_in_the_same_pass),
    cmocka_unit_test(agrees_with_jansson_on_mutated_documents),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
