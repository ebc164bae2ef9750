/* JSON string escaping (llmux_buf_append_json_str): whatever bytes it is
 * given, its output is one valid JSON string in valid UTF-8, because error
 * messages quote what clients sent. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <jansson.h>

#include "base/util.h"

/* The escaped form of s[0..n), as a C string the test frees. */
static char *escaped(const char *s, size_t n) {
  llmux_buf_t b = {0};
  assert_int_equal(llmux_buf_append_json_str(&b, s, n), 0);
  return b.base;
}

static void assert_escapes_to(const char *in, size_t n, const char *want) {
  char *out = escaped(in, n);
  assert_string_equal(out, want);
  free(out);
}

static void escapes_quotes_backslashes_and_control_characters(void **state) {
  (void)state;
  assert_escapes_to("", 0, "\"\"");
  assert_escapes_to("a\"b\\c", 5, "\"a\\\"b\\\\c\"");
  assert_escapes_to("\n\r\t\x01\x1f", 5, "\"\\n\\r\\t\\u0001\\u001f\"");
  assert_escapes_to("a\0b", 3, "\"a\\u0000b\"");
}

static void passes_well_formed_utf8_through_as_is(void **state) {
  /* 2, 3 and 4 bytes, the edges of each range, U+FFFF and U+10FFFF. */
  static const char s[] = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xc2\x80 \xed\x9f\xbf "
                          "\xee\x80\x80 \xef\xbf\xbf \xf4\x8f\xbf\xbf";
  char want[sizeof s + 2];
  (void)state;
  snprintf(want, sizeof want, "\"%s\"", s);
  assert_escapes_to(s, sizeof s - 1, want);
}

/* One U+FFFD per maximal ill-formed piece, as WHATWG's decoder (and so a
 * browser, and node's TextDecoder) counts them. */
static void replaces_each_ill_formed_piece_with_u_fffd(void **state) {
  static const struct { const char *in, *want; } cases[] = {
    {"m\xed\xa0\x80", "\"m\\ufffd\\ufffd\\ufffd\""},        /* CESU-8 surrogate U+D800 */
    {"\xed\xb0\x80x", "\"\\ufffd\\ufffd\\ufffdx\""},        /* CESU-8 surrogate U+DC00 */
    {"\xc0\xaf", "\"\\ufffd\\ufffd\""},                     /* overlong '/' */
    {"\xe0\x80\xaf", "\"\\ufffd\\ufffd\\ufffd\""},          /* overlong, 3 bytes */
    {"\xf0\x80\x80\xaf", "\"\\ufffd\\ufffd\\ufffd\\ufffd\""}, /* overlong, 4 bytes */
    {"\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\""}, /* above U+10FFFF */
    {"a\xe2\x82", "\"a\\ufffd\""},                          /* cut at the end */
    {"\xe2\x82z", "\"\\ufffdz\""},                          /* cut in the middle */
    {"\xf0\x9f\x98\"", "\"\\ufffd\\\"\""},                  /* cut before a quote */
    {"\x80\xbf", "\"\\ufffd\\ufffd\""},                     /* continuation bytes alone */
    {"\xff\xfe\xf5", "\"\\ufffd\\ufffd\\ufffd\""},          /* never in UTF-8 */
    {"\xc3", "\"\\ufffd\""},                                /* a lead byte alone */
  };
  size_t i;
  (void)state;
  for (i = 0; i < LLMUX_COUNTOF(cases); i++)
    assert_escapes_to(cases[i].in, strlen(cases[i].in), cases[i].want);
}

/* A still-escaped value (a lone surrogate escape, say) is text with a
 * backslash in it, and its backslash is escaped: never an escape of ours. */
static void keeps_a_raw_escape_sequence_as_text(void **state) {
  (void)state;
  assert_escapes_to("m\\ud800", 7, "\"m\\\\ud800\"");
}

static unsigned long long rng = 0x2545f4914f6cdd1dull;
static unsigned next_rand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (unsigned)(rng >> 11);
}

/* For random bytes, jansson (a strict UTF-8 JSON decoder) reads the output
 * back as one string; when the input was well-formed UTF-8 it reads the
 * input itself. */
static void any_bytes_give_a_valid_json_string(void **state) {
  static const unsigned char alphabet[] = {
    'a', '"', '\\', '\n', 0x00, 0x1f, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc2,
    0xdf, 0xe0, 0xe2, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff};
  char in[24];
  int i;
  (void)state;
  for (i = 0; i < 50000; i++) {
    size_t n = next_rand() % sizeof in, j;
    json_t *back, *orig;
    json_error_t err;
    char *out;
    for (j = 0; j < n; j++) in[j] = (char)alphabet[next_rand() % sizeof alphabet];
    out = escaped(in, n);
    back = json_loads(out, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
    if (!json_is_string(back)) fail_msg("jansson refuses %s: %s", out, err.text);
    orig = json_stringn(in, n); /* NULL unless well-formed UTF-8 */
    if (orig != NULL && !json_equal(orig, back)) fail_msg("changed well-formed text: %s", out);
    json_decref(orig);
    json_decref(back);
    free(out);
  }
}

/* Numbers as headers, ids, chunk sizes and log lines write them. */
static void formats_numbers_in_decimal_and_hex(void **state) {
  static const struct { uint64_t v; const char *dec; } d[] = {
      {0, "0"}, {9, "9"}, {10, "10"}, {99, "99"}, {100, "100"}, {9999, "9999"},
      {10000, "10000"}, {123456789, "123456789"}, {UINT64_MAX, "18446744073709551615"}};
  static const struct { uint64_t v; unsigned min; const char *hex; } h[] = {
      {0, 1, "0"}, {0, 4, "0000"}, {15, 1, "f"}, {16, 1, "10"}, {0xabc, 2, "abc"},
      {0xabc, 6, "000abc"}, {0x2545f4914f6cdd1dull, 16, "2545f4914f6cdd1d"},
      {1, 16, "0000000000000001"}, {UINT64_MAX, 1, "ffffffffffffffff"}};
  char buf[32];
  size_t i;
  (void)state;
  for (i = 0; i < sizeof d / sizeof d[0]; i++) {
    memset(buf, 'x', sizeof buf);
    assert_int_equal(llmux_u64_dec(buf, d[i].v), strlen(d[i].dec));
    assert_string_equal(buf, d[i].dec);
  }
  for (i = 0; i < sizeof h / sizeof h[0]; i++) {
    memset(buf, 'x', sizeof buf);
    assert_int_equal(llmux_u64_hex(buf, h[i].v, h[i].min), strlen(h[i].hex));
    assert_string_equal(buf, h[i].hex);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(escapes_quotes_backslashes_and_control_characters),
    cmocka_unit_test(passes_well_formed_utf8_through_as_is),
    cmocka_unit_test(replaces_each_ill_formed_piece_with_u_fffd),
    cmocka_unit_test(keeps_a_raw_escape_sequence_as_text),
    cmocka_unit_test(any_bytes_give_a_valid_json_string),
    cmocka_unit_test(formats_numbers_in_decimal_and_hex),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
