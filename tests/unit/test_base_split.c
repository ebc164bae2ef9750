/* The line and event splitter plugins get from the host (split_*): a body
 * fed in pieces cut anywhere yields exactly the items of the body fed
 * whole, for NDJSON lines and for Server-Sent Events. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "base/split.h"
#include "base/util.h"

/* Every item of `body` fed in the pieces that `cuts` (ascending offsets)
 * make, then eof: the items joined by '|', then "!rc" when the splitter
 * failed. */
static void run(int mode, size_t max, const char *body, const size_t *cuts, size_t ncuts,
                llmux_buf_t *out) {
  llmux_split_t *s = llmux_split_new(mode, max);
  size_t len = strlen(body), from = 0, k;
  int rc = 0;
  assert_non_null(s);
  out->len = 0;
  for (k = 0; k <= ncuts && rc >= 0; k++) {
    size_t to = k < ncuts ? cuts[k] : len, n = to - from;
    const char *p = body + from;
    llmux_str_t item;
    int eof = k == ncuts;
    while ((rc = llmux_split_next(s, &p, &n, eof, &item)) > 0) {
      llmux_buf_append(out, item.base, item.len);
      llmux_buf_append(out, "|", 1);
    }
    if (rc == 0) assert_int_equal(n, 0); /* every byte taken */
    from = to;
  }
  if (rc < 0) llmux_buf_printf(out, "!%d", rc);
  llmux_buf_append(out, "", 1);
  out->len--;
  llmux_split_free(s);
}

/* The whole body's items are `want`; so are those of every cut into two
 * and three pieces, and of the body one byte at a time. */
static void same_items_at_every_boundary(int mode, size_t max, const char *body,
                                         const char *want) {
  llmux_buf_t got = {0};
  size_t len = strlen(body), i, j, cuts[2], bytes[512];
  assert_true(len < LLMUX_COUNTOF(bytes));
  run(mode, max, body, NULL, 0, &got);
  assert_string_equal(got.base, want);
  for (i = 0; i <= len; i++) {
    for (j = i; j <= len; j++) {
      cuts[0] = i;
      cuts[1] = j;
      run(mode, max, body, cuts, 2, &got);
      if (strcmp(got.base, want) != 0)
        fail_msg("cut at %zu and %zu: got \"%s\", want \"%s\"", i, j, got.base, want);
    }
  }
  for (i = 0; i < len; i++) bytes[i] = i + 1;
  run(mode, max, body, bytes, len ? len - 1 : 0, &got);
  assert_string_equal(got.base, want);
  llmux_buf_free(&got);
}

static void ndjson_lines_are_the_same_wherever_the_body_is_cut(void **state) {
  (void)state;
  same_items_at_every_boundary(LLMUX_SPLIT_NDJSON, 0,
                               "{\"a\":1}\n{\"b\":\"x\\ny\"}\r\n\n\r\n{\"c\":3}\n{\"d\":4}",
                               "{\"a\":1}|{\"b\":\"x\\ny\"}|{\"c\":3}|{\"d\":4}|");
}

static void sse_events_are_the_same_wherever_the_body_is_cut(void **state) {
  (void)state;
  same_items_at_every_boundary(
      LLMUX_SPLIT_SSE, 0,
      ": a comment\n"
      "event: message_start\r\n"
      "data: {\"type\":\"a\"}\r\n\r\n"
      "id: 7\rretry: 100\rdata:one\rdata: two\r\r"  /* lone \r ends lines too */
      "event: ping\n\n"                             /* no data: no event */
      "data\n\n"                                    /* an empty data field */
      "data:  spaced\n"                             /* one space is dropped */
      "datax: not data\n"
      "\n"
      "data: [DONE]",                               /* the end counts as its blank line */
      "{\"type\":\"a\"}|one\ntwo|| spaced|[DONE]|");
}

static void a_line_over_the_bound_fails_wherever_the_body_is_cut(void **state) {
  (void)state;
  /* Items before the long line are yielded; then the verdict, whatever the
   * pieces (the bound counts the bytes of a line, \r included). */
  same_items_at_every_boundary(LLMUX_SPLIT_NDJSON, 8, "{\"a\":1}\n12345678\r\nnext\n",
                               "{\"a\":1}|!-18");
  same_items_at_every_boundary(LLMUX_SPLIT_NDJSON, 8, "12345678\n", "12345678|");
  /* An event's data, joined, is bounded too. */
  same_items_at_every_boundary(LLMUX_SPLIT_SSE, 10, "data: 1234\ndata: 5678\ndata: 9\n\n",
                               "!-18");
  same_items_at_every_boundary(LLMUX_SPLIT_SSE, 11, "data: 1234\ndata: 5678\ndata: 9\n\n",
                               "1234\n5678\n9|");
}

static void a_whole_line_or_one_line_event_is_not_copied(void **state) {
  const char *body = "data: {\"x\":1}\n\n", *p = body;
  size_t n = strlen(body);
  llmux_split_t *s = llmux_split_new(LLMUX_SPLIT_SSE, 0);
  llmux_str_t item;
  (void)state;
  assert_int_equal(llmux_split_next(s, &p, &n, 0, &item), 1);
  assert_ptr_equal(item.base, body + 6);
  assert_int_equal(item.len, 7);
  assert_int_equal(llmux_split_next(s, &p, &n, 0, &item), 0);
  llmux_split_free(s);
}

static void without_eof_an_unfinished_item_waits_and_reset_forgets_it(void **state) {
  const char *p = "{\"partial\":";
  size_t n = strlen(p);
  llmux_split_t *s = llmux_split_new(LLMUX_SPLIT_NDJSON, 0);
  llmux_str_t item;
  (void)state;
  assert_int_equal(llmux_split_next(s, &p, &n, 0, &item), 0);
  assert_int_equal(n, 0);
  llmux_split_reset(s); /* a new attempt */
  p = "{\"fresh\":1}\n";
  n = strlen(p);
  assert_int_equal(llmux_split_next(s, &p, &n, 0, &item), 1);
  assert_int_equal(item.len, 11);
  assert_memory_equal(item.base, "{\"fresh\":1}", 11);
  assert_int_equal(llmux_split_next(s, &p, &n, 1, &item), 0);
  llmux_split_free(s);
}

static void the_end_may_come_with_no_bytes_at_all(void **state) {
  const char *p = "{\"last\":1}";
  size_t n = strlen(p);
  llmux_split_t *s = llmux_split_new(LLMUX_SPLIT_NDJSON, 0);
  llmux_str_t item;
  (void)state;
  assert_int_equal(llmux_split_next(s, &p, &n, 0, &item), 0);
  p = NULL; /* eof: nothing more to read */
  n = 0;
  assert_int_equal(llmux_split_next(s, &p, &n, 1, &item), 1);
  assert_int_equal(item.len, 10);
  assert_int_equal(llmux_split_next(s, &p, &n, 1, &item), 0);
  llmux_split_free(s);
}

static void an_unknown_mode_gives_no_splitter(void **state) {
  (void)state;
  assert_null(llmux_split_new(0, 0));
  assert_null(llmux_split_new(3, 0));
  llmux_split_free(NULL);
  llmux_split_reset(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(ndjson_lines_are_the_same_wherever_the_body_is_cut),
    cmocka_unit_test(sse_events_are_the_same_wherever_the_body_is_cut),
    cmocka_unit_test(a_line_over_the_bound_fails_wherever_the_body_is_cut),
    cmocka_unit_test(a_whole_line_or_one_line_event_is_not_copied),
    cmocka_unit_test(without_eof_an_unfinished_item_waits_and_reset_forgets_it),
    cmocka_unit_test(the_end_may_come_with_no_bytes_at_all),
    cmocka_unit_test(an_unknown_mode_gives_no_splitter),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
