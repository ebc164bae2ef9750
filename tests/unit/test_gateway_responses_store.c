/* Stored responses (gateway/responses_store.h): per-tenant records, an LRU
 * bounded by bytes, expiry after the ttl on a clock the test drives, and a
 * SQLite file that outlives the store, read on its thread when memory
 * misses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "base/util.h"
#include "gateway/responses_store.h"

static int64_t fake_now = 1700000000000;

static int64_t clock_fn(void *arg) {
  (void)arg;
  return fake_now;
}

static llmux_responses_store_t *open_store(uv_loop_t *loop, const char *db, uint64_t max_mem) {
  llmux_responses_opts_t o;
  llmux_responses_store_t *s = NULL;
  char err[256];
  memset(&o, 0, sizeof o);
  o.db_path = db;
  o.ttl_ms = 60000;
  o.max_memory = max_mem;
  o.now_ms = clock_fn;
  assert_int_equal(llmux_responses_open(loop, &o, &s, err, sizeof err), 0);
  return s;
}

static int get(llmux_responses_store_t *s, const char *tenant, const char *id, char *out) {
  llmux_buf_t b = {0};
  int rc = llmux_responses_get(s, tenant, id, &b, NULL, NULL);
  if (rc == 0) {
    memcpy(out, b.base, b.len);
    out[b.len] = '\0';
  }
  llmux_buf_free(&b);
  return rc;
}

static void test_a_record_is_found_by_its_tenant_only(void **st) {
  llmux_responses_store_t *s = open_store(NULL, NULL, 0);
  char got[64];
  (void)st;
  assert_int_equal(llmux_responses_put(s, "a", "resp_1", "{\"x\":1}", 7), 0);
  assert_int_equal(get(s, "a", "resp_1", got), 0);
  assert_string_equal(got, "{\"x\":1}");
  assert_int_equal(get(s, "b", "resp_1", got), LLMUX_ENOTFOUND);
  assert_int_equal(get(s, "", "resp_1", got), LLMUX_ENOTFOUND);
  llmux_responses_delete(s, "a", "resp_1");
  assert_int_equal(get(s, "a", "resp_1", got), LLMUX_ENOTFOUND);
  llmux_responses_close(s);
}

static void test_records_expire_after_the_ttl(void **st) {
  llmux_responses_store_t *s = open_store(NULL, NULL, 0);
  char got[64];
  (void)st;
  llmux_responses_put(s, "", "resp_1", "r", 1);
  fake_now += 59999;
  assert_int_equal(get(s, "", "resp_1", got), 0);
  fake_now += 1;
  assert_int_equal(get(s, "", "resp_1", got), LLMUX_ENOTFOUND);
  llmux_responses_close(s);
}

static void test_memory_is_bounded_least_recently_used_first(void **st) {
  llmux_responses_store_t *s = open_store(NULL, NULL, 600);
  char rec[200], got[256], id[16];
  size_t bytes, count;
  int i;
  (void)st;
  memset(rec, 'x', sizeof rec - 1);
  rec[sizeof rec - 1] = '\0';
  for (i = 0; i < 3; i++) {
    snprintf(id, sizeof id, "resp_%d", i);
    assert_int_equal(llmux_responses_put(s, "t", id, rec, strlen(rec)), 0);
    if (i == 1) assert_int_equal(get(s, "t", "resp_0", got), 0); /* 0 is now the most recent */
  }
  llmux_responses_stats(s, &bytes, &count);
  assert_true(bytes <= 600);
  assert_int_equal(count, 2);
  assert_int_equal(get(s, "t", "resp_0", got), 0);
  assert_int_equal(get(s, "t", "resp_1", got), LLMUX_ENOTFOUND);
  assert_int_equal(get(s, "t", "resp_2", got), 0);
  /* Bigger than the whole budget: refused. */
  {
    char *big = calloc(1, 1000);
    memset(big, 'y', 999);
    assert_int_equal(llmux_responses_put(s, "t", "resp_big", big, 999), LLMUX_ETOOLARGE);
    free(big);
  }
  llmux_responses_close(s);
}

static void test_the_database_outlives_the_store(void **st) {
  char path[] = "/tmp/llmux-resp-test-XXXXXX", db[64], got[64];
  llmux_responses_store_t *s;
  (void)st;
  assert_non_null(mkdtemp(path));
  snprintf(db, sizeof db, "%s/r.db", path);
  s = open_store(NULL, db, 0);
  llmux_responses_put(s, "a", "resp_1", "one", 3);
  llmux_responses_put(s, "a", "resp_2", "two", 3);
  llmux_responses_delete(s, "a", "resp_2");
  llmux_responses_close(s);
  s = open_store(NULL, db, 0);
  assert_int_equal(get(s, "a", "resp_1", got), 0);
  assert_string_equal(got, "one");
  assert_int_equal(get(s, "a", "resp_2", got), LLMUX_ENOTFOUND);
  assert_int_equal(get(s, "b", "resp_1", got), LLMUX_ENOTFOUND);
  fake_now += 60000; /* expired rows are not read back */
  llmux_responses_delete(s, "x", "warm"); /* no-op */
  assert_int_equal(llmux_responses_put(s, "a", "resp_3", "three", 5), 0);
  llmux_responses_close(s);
  s = open_store(NULL, db, 0);
  assert_int_equal(get(s, "a", "resp_3", got), 0);
  llmux_responses_close(s);
  s = open_store(NULL, db, 0);
  fake_now += 60000;
  assert_int_equal(get(s, "a", "resp_3", got), LLMUX_ENOTFOUND);
  llmux_responses_close(s);
  unlink(db);
  snprintf(got, sizeof got, "%s/r.db-wal", path);
  unlink(got);
  snprintf(got, sizeof got, "%s/r.db-shm", path);
  unlink(got);
  rmdir(path);
}

typedef struct answer_s {
  int calls, rc;
  char rec[64];
} answer_t;

static void on_answer(void *arg, int rc, const char *rec, size_t len) {
  answer_t *a = arg;
  a->calls++;
  a->rc = rc;
  if (rc == 0) snprintf(a->rec, sizeof a->rec, "%.*s", (int)len, rec);
}

static void on_tick(uv_timer_t *t) {
  (void)t;
}

static void test_a_miss_is_read_on_the_thread_and_answered_on_the_loop(void **st) {
  char path[] = "/tmp/llmux-resp-test-XXXXXX", db[64], got[64];
  llmux_responses_store_t *s;
  llmux_buf_t b = {0};
  answer_t a = {0}, none = {0};
  uv_loop_t loop;
  uv_timer_t keepalive;
  (void)st;
  assert_non_null(mkdtemp(path));
  snprintf(db, sizeof db, "%s/r.db", path);
  uv_loop_init(&loop);
  s = open_store(&loop, db, 0);
  llmux_responses_put(s, "a", "resp_1", "one", 3);
  llmux_responses_close(s); /* writes it, stops the thread */
  uv_run(&loop, UV_RUN_DEFAULT);
  s = open_store(&loop, db, 0);
  assert_int_equal(llmux_responses_get(s, "a", "resp_1", &b, on_answer, &a), LLMUX_EAGAIN);
  assert_int_equal(llmux_responses_get(s, "a", "resp_9", &b, on_answer, &none), LLMUX_EAGAIN);
  assert_int_equal(a.calls, 0); /* never inside the call */
  /* The store's handles do not keep a loop alive (the gateway's do): a
   * timer does, while the test waits. */
  uv_timer_init(&loop, &keepalive);
  uv_timer_start(&keepalive, on_tick, 5, 5);
  while (a.calls == 0 || none.calls == 0) uv_run(&loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&keepalive, NULL);
  assert_int_equal(a.rc, 0);
  assert_string_equal(a.rec, "one");
  assert_int_equal(none.rc, LLMUX_ENOTFOUND);
  /* Read back into memory: now found at once. */
  assert_int_equal(get(s, "a", "resp_1", got), 0);
  /* Asked just before the store closes: answered (cancelled or not), once. */
  memset(&a, 0, sizeof a);
  assert_int_equal(llmux_responses_get(s, "a", "resp_8", &b, on_answer, &a), LLMUX_EAGAIN);
  llmux_responses_close(s);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(a.calls, 1);
  assert_int_equal(uv_loop_close(&loop), 0);
  llmux_buf_free(&b);
  unlink(db);
  snprintf(got, sizeof got, "%s/r.db-wal", path);
  unlink(got);
  snprintf(got, sizeof got, "%s/r.db-shm", path);
  unlink(got);
  rmdir(path);
}

/* A remote the test answers by hand: what was put, and one lookup owed. */
typedef struct fake_remote_s {
  int up, puts, dels;
  char rec[64];
  llmux_responses_get_cb cb;
  void *arg;
} fake_remote_t;

static int fake_put(void *data, const char *tenant, const char *id, const char *record,
                    size_t len, uint64_t ttl_ms) {
  fake_remote_t *f = data;
  (void)tenant, (void)id, (void)ttl_ms;
  if (!f->up) return LLMUX_ECONNREFUSED;
  f->puts++;
  snprintf(f->rec, sizeof f->rec, "%.*s", (int)len, record);
  return 0;
}

static int fake_get(void *data, const char *tenant, const char *id, llmux_responses_get_cb cb,
                    void *arg) {
  fake_remote_t *f = data;
  (void)tenant, (void)id;
  if (!f->up) return LLMUX_ECONNREFUSED;
  f->cb = cb;
  f->arg = arg;
  return 0;
}

static void fake_del(void *data, const char *tenant, const char *id) {
  (void)tenant, (void)id;
  ((fake_remote_t *)data)->dels++;
}

static void run_until_answered(uv_loop_t *loop, answer_t *a) {
  uv_timer_t keepalive;
  uv_timer_init(loop, &keepalive);
  uv_timer_start(&keepalive, on_tick, 5, 5);
  while (a->calls == 0) uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&keepalive, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

static void test_a_remote_stands_in_front_of_the_database(void **st) {
  char path[] = "/tmp/llmux-resp-test-XXXXXX", db[64], got[64];
  fake_remote_t f = {0};
  llmux_responses_remote_t rm = {&f, fake_put, fake_get, fake_del};
  llmux_responses_store_t *s;
  llmux_buf_t b = {0};
  answer_t a = {0};
  uv_loop_t loop;
  (void)st;
  assert_non_null(mkdtemp(path));
  snprintf(db, sizeof db, "%s/r.db", path);
  uv_loop_init(&loop);
  s = open_store(&loop, db, 0);
  llmux_responses_set_remote(s, &rm);
  assert_ptr_equal(llmux_responses_remote(s)->data, &f);
  /* Up: a put goes to the remote, not the database. */
  f.up = 1;
  assert_int_equal(llmux_responses_put(s, "a", "resp_r", "remote", 6), 0);
  assert_int_equal(f.puts, 1);
  /* Down: the database keeps it. */
  f.up = 0;
  assert_int_equal(llmux_responses_put(s, "a", "resp_d", "disk", 4), 0);
  llmux_responses_close(s);
  uv_run(&loop, UV_RUN_DEFAULT);
  /* Another process: memory misses, the remote is asked first. */
  s = open_store(&loop, db, 0);
  llmux_responses_set_remote(s, &rm);
  f.up = 1;
  assert_int_equal(llmux_responses_get(s, "a", "resp_r", &b, on_answer, &a), LLMUX_EAGAIN);
  f.cb(f.arg, 0, f.rec, strlen(f.rec));
  assert_int_equal(a.calls, 1);
  assert_string_equal(a.rec, "remote");
  assert_int_equal(get(s, "a", "resp_r", got), 0); /* cached */
  /* The remote has none: the database may (stored while it was away). */
  memset(&a, 0, sizeof a);
  assert_int_equal(llmux_responses_get(s, "a", "resp_d", &b, on_answer, &a), LLMUX_EAGAIN);
  f.cb(f.arg, LLMUX_ENOTFOUND, NULL, 0);
  run_until_answered(&loop, &a);
  assert_int_equal(a.rc, 0);
  assert_string_equal(a.rec, "disk");
  /* Unreachable at once: the database answers. */
  f.up = 0;
  memset(&a, 0, sizeof a);
  assert_int_equal(llmux_responses_get(s, "a", "resp_r2", &b, on_answer, &a), LLMUX_EAGAIN);
  run_until_answered(&loop, &a);
  assert_int_equal(a.rc, LLMUX_ENOTFOUND);
  llmux_responses_delete(s, "a", "resp_r");
  assert_int_equal(f.dels, 1);
  /* Owed at close: answered once, by the store; the remote's late answer only frees. */
  f.up = 1;
  memset(&a, 0, sizeof a);
  assert_int_equal(llmux_responses_get(s, "a", "resp_q", &b, on_answer, &a), LLMUX_EAGAIN);
  llmux_responses_close(s);
  assert_int_equal(a.calls, 1);
  assert_int_equal(a.rc, LLMUX_ECANCELED);
  f.cb(f.arg, LLMUX_ECANCELED, NULL, 0);
  assert_int_equal(a.calls, 1);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  llmux_buf_free(&b);
  unlink(db);
  snprintf(got, sizeof got, "%s/r.db-wal", path);
  unlink(got);
  snprintf(got, sizeof got, "%s/r.db-shm", path);
  unlink(got);
  rmdir(path);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_record_is_found_by_its_tenant_only),
      cmocka_unit_test(test_records_expire_after_the_ttl),
      cmocka_unit_test(test_memory_is_bounded_least_recently_used_first),
      cmocka_unit_test(test_the_database_outlives_the_store),
      cmocka_unit_test(test_a_miss_is_read_on_the_thread_and_answered_on_the_loop),
      cmocka_unit_test(test_a_remote_stands_in_front_of_the_database),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
