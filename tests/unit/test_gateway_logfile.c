/* The batched log writer: what lands in the file, when, and after a
 * rotation. Every test ends with uv_loop_close() == 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "gateway/logfile.h"

static char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  char *buf;
  long len;
  if (f == NULL) { *n = 0; return llmux_xstrdup(""); }
  fseek(f, 0, SEEK_END);
  len = ftell(f);
  fseek(f, 0, SEEK_SET);
  buf = llmux_xmalloc((size_t)len + 1);
  *n = fread(buf, 1, (size_t)len, f);
  buf[*n] = '\0';
  fclose(f);
  return buf;
}

static int closed;
static void on_closed(llmux_logfile_t *lf) { closed++; }

static void tmp_path(char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/llmux-logfile-%d-%s", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
           (int)getpid(), name);
  unlink(out);
}

static void test_lines_are_written_in_batches_and_all_arrive(void **state) {
  uv_loop_t loop;
  llmux_logfile_t lf;
  char path[256], line[64];
  size_t n;
  char *text;
  int i;
  tmp_path(path, sizeof path, "batch");
  uv_loop_init(&loop);
  assert_int_equal(llmux_logfile_open(&lf, &loop, path, 1024, 10, 0), 0);
  for (i = 0; i < 1000; i++) {
    int len = snprintf(line, sizeof line, "{\"n\":%d}\n", i);
    llmux_logfile_append(&lf, line, (size_t)len);
  }
  /* Nothing is written on the caller's stack: it all goes from the loop. */
  uv_run(&loop, UV_RUN_NOWAIT);
  closed = 0;
  llmux_logfile_close(&lf, on_closed);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(closed, 1);
  text = slurp(path, &n);
  assert_non_null(strstr(text, "{\"n\":0}\n{\"n\":1}\n"));
  assert_non_null(strstr(text, "{\"n\":998}\n{\"n\":999}\n"));
  assert_int_equal(lf.written, n);
  assert_int_equal(lf.dropped, 0);
  free(text);
  unlink(path);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_a_timer_flushes_a_quiet_buffer(void **state) {
  uv_loop_t loop;
  llmux_logfile_t lf;
  char path[256];
  size_t n;
  char *text;
  tmp_path(path, sizeof path, "timer");
  uv_loop_init(&loop);
  assert_int_equal(llmux_logfile_open(&lf, &loop, path, 0, 5, 0), 0);
  llmux_logfile_append(&lf, "one\n", 4);
  while (lf.written < 4) uv_run(&loop, UV_RUN_ONCE); /* the timer, then the write */
  text = slurp(path, &n);
  assert_string_equal(text, "one\n");
  free(text);
  llmux_logfile_close(&lf, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  unlink(path);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_reopen_after_rotation_writes_to_the_new_file(void **state) {
  uv_loop_t loop;
  llmux_logfile_t lf;
  char path[256], rotated[300];
  size_t n;
  char *text;
  tmp_path(path, sizeof path, "rot");
  snprintf(rotated, sizeof rotated, "%s.1", path);
  uv_loop_init(&loop);
  assert_int_equal(llmux_logfile_open(&lf, &loop, path, 0, 1, 0), 0);
  llmux_logfile_append(&lf, "before\n", 7);
  while (lf.written < 7) uv_run(&loop, UV_RUN_ONCE);
  assert_int_equal(rename(path, rotated), 0);
  llmux_logfile_reopen(&lf);
  llmux_logfile_append(&lf, "after\n", 6);
  llmux_logfile_close(&lf, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  text = slurp(rotated, &n);
  assert_string_equal(text, "before\n");
  free(text);
  text = slurp(path, &n);
  assert_string_equal(text, "after\n");
  free(text);
  unlink(path);
  unlink(rotated);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_past_max_bytes_lines_are_dropped_and_counted(void **state) {
  uv_loop_t loop;
  llmux_logfile_t lf;
  char path[256];
  size_t n;
  char *text;
  tmp_path(path, sizeof path, "max");
  uv_loop_init(&loop);
  assert_int_equal(llmux_logfile_open(&lf, &loop, path, 1 << 20, 1000, 10), 0);
  llmux_logfile_append(&lf, "12345\n", 6);
  llmux_logfile_append(&lf, "67890\n", 6); /* 12 > 10: dropped */
  assert_int_equal(lf.dropped, 1);
  llmux_logfile_close(&lf, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  text = slurp(path, &n);
  assert_string_equal(text, "12345\n");
  free(text);
  unlink(path);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_an_unopenable_path_is_an_error(void **state) {
  uv_loop_t loop;
  llmux_logfile_t lf;
  uv_loop_init(&loop);
  assert_true(llmux_logfile_open(&lf, &loop, "/nonexistent-dir/x/access.log", 0, 0, 0) < 0);
  assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lines_are_written_in_batches_and_all_arrive),
      cmocka_unit_test(test_a_timer_flushes_a_quiet_buffer),
      cmocka_unit_test(test_reopen_after_rotation_writes_to_the_new_file),
      cmocka_unit_test(test_past_max_bytes_lines_are_dropped_and_counted),
      cmocka_unit_test(test_an_unopenable_path_is_an_error),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
