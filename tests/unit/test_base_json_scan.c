/* The request scanner: finds top-level fields by the text their keys spell,
 * refuses a field given twice, and rejects invalid JSON. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <cmocka.h>

#include <jansson.h>

#include "base/json_scan.h"
#include "base/util.h"

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

/* Keys are the text they spell, as the provider's parser reads them. */
static void matches_keys_after_unescaping(void **state) {
  const char *body = "{\"m\\u006fdel\":\"fast\",\"\\u0073\\u0054ream\":1,"
                     "\"max\\u005Ftokens\":7,\"mod\\u00e9l\":2,\"model\\u0000\":3}";
  llmux_json_field_t f[] = {{"model"}, {"sTream"}, {"max_tokens"}, {"mod\xc3\xa9l"}};
  (void)state;
  assert_int_equal(scan(body, f, 4, NULL, NULL), 0);
  assert_int_equal(f[0].type, LLMUX_JSON_STRING);
  assert_memory_equal(f[0].value.base, "\"fast\"", 6);
  assert_int_equal(f[0].count, 1); /* "model\u0000" is another key */
  assert_int_equal(f[1].type, LLMUX_JSON_NUMBER);
  assert_int_equal(f[2].type, LLMUX_JSON_NUMBER);
  assert_memory_equal(f[2].value.base, "7", 1);
  assert_int_equal(f[3].type, LLMUX_JSON_NUMBER);
}

static void refuses_a_key_asked_for_given_twice(void **state) {
  static const struct { const char *body, *key; size_t second; } cases[] = {
    {"{\"model\":\"fast\",\"mod\\u0065l\":\"secret\"}", "model", 16},
    {"{\"model\":\"a\", \"model\":\"a\"}", "model", 14},
    {"{\"messages\":[],\"x\":{},\"\\u006dessages\":[]}", "messages", 22},
    {"{\"max_tokens\":1,\"max\\u005ftokens\":100000}", "max_tokens", 16},
  };
  llmux_json_field_t f[] = {{"model"}, {"messages"}, {"max_tokens"}};
  size_t i, off;
  const char *msg;
  (void)state;
  for (i = 0; i < LLMUX_COUNTOF(cases); i++) {
    const llmux_json_field_t *dup;
    assert_int_equal(scan(cases[i].body, f, 3, &off, &msg), LLMUX_EINVAL);
    assert_string_equal(msg, "duplicate key");
    assert_int_equal(off, cases[i].second);
    dup = llmux_json_duplicate(f, 3);
    assert_non_null(dup);
    assert_string_equal(dup->key, cases[i].key);
    assert_int_equal(dup->count, 2);
  }
}

static void lets_other_keys_repeat_and_nested_keys_alone(void **state) {
  const char *body = "{\"x\":1,\"x\":2,\"messages\":[{\"model\":1,\"model\":2}],"
                     "\"model\":\"m\",\"o\":{\"model\":3}}";
  llmux_json_field_t f[] = {{"model"}, {"messages"}};
  (void)state;
  assert_int_equal(scan(body, f, 2, NULL, NULL), 0);
  assert_int_equal(f[0].count, 1);
  assert_memory_equal(f[0].value.base, "\"m\"", 3);
  assert_null(llmux_json_duplicate(f, 2));
}

/* A body that is not JSON is reported as such, whatever else it holds. */
static void invalid_json_wins_over_a_duplicate(void **state) {
  const char *msg = NULL;
  llmux_json_field_t f[] = {{"model"}};
  (void)state;
  assert_int_equal(scan("{\"model\":\"a\",\"model\":\"b\",}", f, 1, NULL, &msg), LLMUX_EINVAL);
  assert_string_not_equal(msg, "duplicate key");
  assert_null(llmux_json_duplicate(f, 1));
  assert_int_equal(f[0].type, LLMUX_JSON_NONE);
}

static void probes_an_escaped_key_too(void **state) {
  const char *img = "{\"messages\":[{\"content\":[{\"image\\u005furl\":{\"url\":\"x\"}}]}]}";
  int hit = 0;
  (void)state;
  assert_int_equal(llmux_json_scan_probe(img, strlen(img), NULL, 0, "image_url", &hit, NULL, NULL), 0);
  assert_int_equal(hit, 1);
}

/* A lone surrogate has no UTF-8 form: U+FFFD stands for it, so what the
 * gateway quotes back (an unknown model's name) is valid UTF-8. */
static void unquotes_a_lone_surrogate_as_u_fffd(void **state) {
  static const struct { const char *in, *want; } cases[] = {
    {"\"m\\ud800\"", "m\xef\xbf\xbd"},
    {"\"\\udc00x\"", "\xef\xbf\xbdx"},
    {"\"\\ud800\\u0041\"", "\xef\xbf\xbd" "A"},
    {"\"\\uD83D\\uDE00\"", "\xf0\x9f\x98\x80"},
  };
  char out[32];
  size_t i;
  (void)state;
  for (i = 0; i < LLMUX_COUNTOF(cases); i++) {
    llmux_str_t v = {cases[i].in, strlen(cases[i].in)};
    assert_int_equal(llmux_json_unquote(v, out, sizeof out), 0);
    assert_string_equal(out, cases[i].want);
  }
}

/* Differential check against jansson over mutated documents (fixed seed):
 * whatever one accepts as a JSON object, the other must too; and the
 * fields the scanner reports are the values jansson reads for those keys. */
static unsigned long long rng = 0x9e3779b97f4a7c15ull;
static unsigned next_rand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (unsigned)(rng >> 11);
}

/* The value jansson reads for a field, against the bytes the scanner
 * reported: both absent, or equal once parsed. */
static int same_as_jansson(json_t *doc, const llmux_json_field_t *f) {
  json_t *theirs = json_object_get(doc, f->key), *mine;
  int same;
  if (f->type == LLMUX_JSON_NONE || theirs == NULL) return f->type == LLMUX_JSON_NONE && !theirs;
  mine = json_loadb(f->value.base, f->value.len, JSON_DECODE_ANY, NULL);
  same = json_equal(mine, theirs);
  json_decref(mine);
  return same;
}

static void agrees_with_jansson_on_mutated_documents(void **state) {
  static const char *seeds[] = {
    "{\"model\":\"gpt-4\",\"messages\":[{\"role\":\"user\",\"content\":\"h\\u00e9\\n\"}],"
    "\"stream\":true,\"n\":-1.5e3,\"x\":null,\"y\":false,\"z\":{}}",
    "{\"a\":[1,2,[3,{\"b\":\"\\\"q\\\"\"}]],\"c\":0.25,\"d\":\"caf\xc3\xa9\"}",
    "{\"m\\u006fdel\":\"x\",\"\\u006e\":[1],\"str\\u0065am\":false,\"messages\":{\"n\":1}}",
  };
  static const char alphabet[] = "{}[]\":,0123456789-+.eEtrufalsn \\u\x01\xc3\xa9\xff";
  char buf[512];
  int i, k;
  (void)state;
  for (i = 0; i < 30000; i++) {
    const char *seed = seeds[i % 3];
    llmux_json_field_t f[] = {{"model"}, {"messages"}, {"stream"}, {"n"}, {"c"}};
    size_t n = strlen(seed), j;
    int rc, mine, theirs;
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
    /* Known, deliberate differences: jansson refuses \u0000 by default,
     * and lone surrogate escapes (which JSON allows). */
    for (j = 0; j + 5 < n; j++)
      if (memcmp(buf + j, "\\u0000", 6) == 0 || strncasecmp(buf + j, "\\ud", 4) == 0) break;
    if (j + 5 < n) continue;
    rc = llmux_json_scan(buf, n, f, LLMUX_COUNTOF(f), NULL, NULL);
    mine = rc == 0 || llmux_json_duplicate(f, LLMUX_COUNTOF(f)) != NULL;
    doc = json_loadb(buf, n, 0, NULL);
    theirs = doc != NULL && json_is_object(doc);
    if (mine != theirs) fail_msg("scanner %s, jansson %s: %.*s", mine ? "accepts" : "refuses",
                                 theirs ? "accepts" : "refuses", (int)n, buf);
    for (j = 0; rc == 0 && j < LLMUX_COUNTOF(f); j++)
      if (!same_as_jansson(doc, &f[j])) fail_msg("'%s' differs: %.*s", f[j].key, (int)n, buf);
    json_decref(doc);
  }
}

/* Objects built from members whose keys are random spellings (escaped
 * letter by letter, or not) of a few names: the scanner reports a duplicate
 * exactly when a name asked for occurs twice at the top level, and
 * otherwise reads what jansson reads. */
static void append_spelling(char *out, size_t *n, const char *name) {
  out[(*n)++] = '"';
  for (; *name; name++) {
    if ((unsigned char)*name < 0x80 && next_rand() % 3 == 0)
      *n += (size_t)sprintf(out + *n, next_rand() % 2 ? "\\u%04x" : "\\u%04X", *name);
    else
      out[(*n)++] = *name;
  }
  out[(*n)++] = '"';
}

static void finds_duplicates_however_keys_are_spelled(void **state) {
  static const char *names[] = {"model", "messages", "n", "mode", "models", "x",
                                "mod\xc3\xa9l", "max_tokens_but_longer_than_any_key_we_"
                                "look_for_is_allowed_to_be"};
  static const char *values[] = {"\"v\"", "1", "[1,{\"model\":2}]", "{\"model\":1,\"model\":2}",
                                 "\"\\u0041\""};
  char buf[2048];
  int i;
  (void)state;
  for (i = 0; i < 5000; i++) {
    llmux_json_field_t f[] = {{"model"}, {"messages"}, {"n"}, {"mod\xc3\xa9l"}};
    unsigned count[LLMUX_COUNTOF(names)] = {0};
    unsigned members = next_rand() % 6, m, k;
    size_t n = 0, j;
    int rc, want_dup = 0;
    json_t *doc;
    buf[n++] = '{';
    for (m = 0; m < members; m++) {
      unsigned which = next_rand() % LLMUX_COUNTOF(names);
      const char *v = values[next_rand() % LLMUX_COUNTOF(values)];
      if (m) buf[n++] = ',';
      append_spelling(buf, &n, names[which]);
      n += (size_t)sprintf(buf + n, ":%s", v);
      count[which]++;
    }
    buf[n++] = '}';
    for (k = 0; k < LLMUX_COUNTOF(names); k++)
      for (j = 0; j < LLMUX_COUNTOF(f); j++)
        if (strcmp(names[k], f[j].key) == 0 && count[k] > 1) want_dup = 1;
    rc = llmux_json_scan(buf, n, f, LLMUX_COUNTOF(f), NULL, NULL);
    if ((rc != 0) != want_dup || (rc != 0 && llmux_json_duplicate(f, LLMUX_COUNTOF(f)) == NULL))
      fail_msg("duplicate %s, scanner %d: %.*s", want_dup ? "expected" : "not expected", rc,
               (int)n, buf);
    if (rc != 0) continue;
    doc = json_loadb(buf, n, 0, NULL);
    assert_non_null(doc);
    for (j = 0; j < LLMUX_COUNTOF(f); j++)
      if (!same_as_jansson(doc, &f[j])) fail_msg("'%s' differs: %.*s", f[j].key, (int)n, buf);
    json_decref(doc);
  }
}

/* Raw UTF-8 in strings: every well-formed sequence passes, in runs of any
 * length and next to ASCII; each ill-formed one (Unicode's table 3-7) is
 * refused where it starts. */
static void raw_utf8_is_checked_sequence_by_sequence(void **state) {
  static const char *const good[] = {
      "\xc2\x80", "\xdf\xbf", "\xe0\xa0\x80", "\xe1\x80\x80", "\xed\x9f\xbf",
      "\xee\x80\x80", "\xef\xbf\xbf", "\xf0\x90\x80\x80", "\xf3\xbf\xbf\xbf",
      "\xf4\x8f\xbf\xbf", "\xe4\xbd\xa0\xe5\xa5\xbd\xe4\xb8\x96 ok \xf0\x9f\x98\x80\xc3\xa9"};
  static const char *const bad[] = {
      "\x80", "\xbf", "\xc0\x80", "\xc1\xbf", "\xc2", "\xc2\x41", "\xe0\x9f\xbf",
      "\xed\xa0\x80", "\xed\xbf\xbf", "\xe1\x80", "\xe1\x80\x41", "\xf0\x8f\xbf\xbf",
      "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xff",
      "\xe4\xbd\xa0\xe5\xa5"}; /* the last: a whole character, then a cut one at +3 */
  char body[128];
  size_t i, off;
  const char *why;
  llmux_json_field_t f[] = {{"p"}};
  (void)state;
  for (i = 0; i < sizeof good / sizeof good[0]; i++) {
    int n = snprintf(body, sizeof body, "{\"p\":\"a%s%s\"}", good[i], good[i]);
    assert_int_equal(llmux_json_scan(body, (size_t)n, f, 1, NULL, NULL), 0);
    assert_int_equal(f[0].text_bytes, (uint64_t)(n - 8)); /* all between the quotes */
  }
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int n = snprintf(body, sizeof body, "{\"p\":\"\xc3\xa9%s\"}", bad[i]);
    assert_int_not_equal(llmux_json_scan(body, (size_t)n, f, 1, &off, &why), 0);
    assert_string_equal(why, "invalid UTF-8");
    /* where the ill-formed sequence starts, after the é (and the whole one) */
    if (off != 8 + (i == sizeof bad / sizeof bad[0] - 1 ? 3 : 0))
      fail_msg("case %zu: refused at byte %zu", i, off);
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
    cmocka_unit_test(matches_keys_after_unescaping),
    cmocka_unit_test(refuses_a_key_asked_for_given_twice),
    cmocka_unit_test(lets_other_keys_repeat_and_nested_keys_alone),
    cmocka_unit_test(invalid_json_wins_over_a_duplicate),
    cmocka_unit_test(probes_an_escaped_key_too),
    cmocka_unit_test(unquotes_a_lone_surrogate_as_u_fffd),
    cmocka_unit_test(raw_utf8_is_checked_sequence_by_sequence),
    cmocka_unit_test(agrees_with_jansson_on_mutated_documents),
    cmocka_unit_test(finds_duplicates_however_keys_are_spelled),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
