/* Stored responses in Redis (gateway/fleet_responses.c in front of
 * gateway/responses_store.h): two gateways' stores on one loop stand for
 * two processes of a fleet sharing a real redis-server. What one stores the
 * other finds, per tenant, for responses_ttl; with Redis away each falls
 * back to its memory and database, counting the failures, and shares again
 * once Redis is back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/util.h"
#include "gateway/fleet.h"
#include "gateway/responses_store.h"
#include "gateway/server.h"
#include "test_shared_support.h"

#define TTL_MS 60000

typedef struct fix_s {
  uv_loop_t loop;
  redis_server_t srv;
  char url[64];
  llmux_gateway_t gw[2];
  char db[2][64];
  int closed;
} fix_t;

/* A lookup's answer, when it comes later. */
typedef struct answer_s {
  int done, rc;
  char record[256];
} answer_t;

static fix_t *setup_fix(void) {
  fix_t *f = calloc(1, sizeof(*f));
  uv_loop_init(&f->loop);
  redis_start(&f->srv);
  redis_url(&f->srv, f->url, sizeof(f->url));
  return f;
}

static void db_path(fix_t *f, int i) {
  int fd;
  snprintf(f->db[i], sizeof(f->db[i]), "/tmp/llmux-rresp-XXXXXX");
  fd = mkstemp(f->db[i]);
  assert_true(fd >= 0);
  close(fd);
  unlink(f->db[i]);
}

static void db_remove(const char *path) {
  char p[96];
  unlink(path);
  snprintf(p, sizeof(p), "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof(p), "%s-shm", path);
  unlink(p);
}

static int is_up(void *arg) { return llmux_fleet_responses_up(arg); }
static int is_down(void *arg) { return !llmux_fleet_responses_up(arg); }

/* Gateway i's store (with a database when with_db), Redis in front. */
static llmux_gateway_t *start_gw(fix_t *f, int i, int with_db) {
  llmux_gateway_t *gw = &f->gw[i];
  llmux_responses_opts_t o;
  llmux_fleet_conf_t fc;
  char err[256];
  if (with_db && f->db[i][0] == '\0') db_path(f, i);
  gw->loop = &f->loop;
  gw->data = f;
  memset(&o, 0, sizeof(o));
  o.ttl_ms = TTL_MS;
  o.db_path = with_db ? f->db[i] : NULL;
  assert_int_equal(llmux_responses_open(&f->loop, &o, &gw->responses, err, sizeof(err)), 0);
  memset(&fc, 0, sizeof(fc));
  fc.url = f->url;
  fc.prefix = "llmux:";
  fc.timeout_ms = 2000;
  assert_int_equal(llmux_fleet_responses_start(gw, &fc), 0);
  run_until(&f->loop, is_up, gw);
  return gw;
}

static void on_fleet_closed(llmux_gateway_t *gw) { ((fix_t *)gw->data)->closed++; }
static int closed(void *arg) { return ((fix_t *)arg)->closed > 0; }

/* The fleet first, then the store (fleet.h's order). */
static void stop_gw(fix_t *f, int i) {
  llmux_gateway_t *gw = &f->gw[i];
  if (gw->responses == NULL) return;
  f->closed = 0;
  llmux_fleet_responses_close(gw, on_fleet_closed);
  assert_null(llmux_responses_remote(gw->responses));
  run_until(&f->loop, closed, f);
  llmux_responses_close(gw->responses);
  gw->responses = NULL;
}

static void teardown_fix(fix_t *f) {
  int i;
  for (i = 0; i < 2; i++) stop_gw(f, i);
  close_loop(&f->loop);
  redis_stop(&f->srv);
  for (i = 0; i < 2; i++)
    if (f->db[i][0]) db_remove(f->db[i]);
  free(f);
}

static void on_answer(void *arg, int rc, const char *record, size_t len) {
  answer_t *a = arg;
  a->done++;
  a->rc = rc;
  if (rc == 0) snprintf(a->record, sizeof(a->record), "%.*s", (int)len, record);
}

static int answered(void *arg) { return ((answer_t *)arg)->done > 0; }

/* A lookup, at once or through the loop: rc, and the record in *a. */
static int lookup(fix_t *f, llmux_gateway_t *gw, const char *tenant, const char *id,
                  answer_t *a) {
  llmux_buf_t b = {0};
  int rc;
  memset(a, 0, sizeof(*a));
  rc = llmux_responses_get(gw->responses, tenant, id, &b, on_answer, a);
  if (rc == LLMUX_EAGAIN) {
    run_until(&f->loop, answered, a);
    assert_int_equal(a->done, 1);
    return a->rc;
  }
  if (rc == 0) snprintf(a->record, sizeof(a->record), "%.*s", (int)b.len, b.base);
  llmux_buf_free(&b);
  return rc;
}

/* Runs the loop until key exists in Redis (or not). */
typedef struct {
  fix_t *f;
  const char *key;
  int want;
} key_wait_t;

static int key_is(void *arg) {
  key_wait_t *k = arg;
  redisReply *r = redis_admin(&k->f->srv, "EXISTS %s", k->key);
  int ok = r != NULL && r->type == REDIS_REPLY_INTEGER && r->integer == k->want;
  freeReplyObject(r);
  return ok;
}

static void wait_key(fix_t *f, const char *key, int want) {
  key_wait_t k = {f, key, want};
  run_until(&f->loop, key_is, &k);
}

#define REC "{\"response\":{\"id\":\"resp_1\"},\"input\":[]}"

/* ---- Tests ------------------------------------------------------------------------ */

static void a_response_stored_by_one_process_is_found_by_another(void **state) {
  fix_t *f;
  llmux_gateway_t *a, *b;
  answer_t ans;
  redisReply *r;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  a = start_gw(f, 0, 0);
  b = start_gw(f, 1, 0);
  assert_int_equal(llmux_responses_put(a->responses, "acme", "resp_1", REC, strlen(REC)), 0);
  wait_key(f, "llmux:resp:resp_1", 1);
  assert_int_equal(lookup(f, b, "acme", "resp_1", &ans), 0);
  assert_string_equal(ans.record, REC);
  /* Read once, it is in b's memory: found at once. */
  {
    llmux_buf_t buf = {0};
    assert_int_equal(llmux_responses_get(b->responses, "acme", "resp_1", &buf, NULL, NULL), 0);
    llmux_buf_free(&buf);
  }
  r = redis_admin(&f->srv, "PTTL llmux:resp:resp_1");
  assert_int_equal(r->type, REDIS_REPLY_INTEGER);
  assert_true(r->integer > 0 && r->integer <= TTL_MS);
  freeReplyObject(r);
  assert_int_equal(llmux_fleet_responses_errors(a), 0);
  assert_int_equal(llmux_fleet_responses_errors(b), 0);
  teardown_fix(f);
}

static void another_tenants_lookup_finds_nothing(void **state) {
  fix_t *f;
  llmux_gateway_t *a, *b;
  answer_t ans;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  a = start_gw(f, 0, 0);
  b = start_gw(f, 1, 0);
  assert_int_equal(llmux_responses_put(a->responses, "acme", "resp_1", REC, strlen(REC)), 0);
  wait_key(f, "llmux:resp:resp_1", 1);
  assert_int_equal(lookup(f, b, "other", "resp_1", &ans), LLMUX_ENOTFOUND);
  assert_int_equal(lookup(f, b, "", "resp_1", &ans), LLMUX_ENOTFOUND);
  assert_int_equal(lookup(f, b, "acme", "resp_2", &ans), LLMUX_ENOTFOUND);
  /* Nor may it delete it. */
  llmux_responses_delete(b->responses, "other", "resp_1");
  assert_int_equal(lookup(f, b, "acme", "resp_1", &ans), 0);
  assert_int_equal(llmux_fleet_responses_errors(b), 0);
  teardown_fix(f);
}

static void a_delete_anywhere_removes_it_from_redis(void **state) {
  fix_t *f;
  llmux_gateway_t *a, *b;
  answer_t ans;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  a = start_gw(f, 0, 0);
  b = start_gw(f, 1, 0);
  assert_int_equal(llmux_responses_put(a->responses, "acme", "resp_1", REC, strlen(REC)), 0);
  wait_key(f, "llmux:resp:resp_1", 1);
  llmux_responses_delete(b->responses, "acme", "resp_1");
  wait_key(f, "llmux:resp:resp_1", 0);
  assert_int_equal(lookup(f, b, "acme", "resp_1", &ans), LLMUX_ENOTFOUND);
  teardown_fix(f);
}

static void with_redis_down_records_stay_in_memory_and_errors_are_counted(void **state) {
  fix_t *f;
  llmux_gateway_t *a, *b;
  answer_t ans;
  uint64_t errors;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  a = start_gw(f, 0, 0);
  b = start_gw(f, 1, 0);
  redis_kill(&f->srv);
  run_until(&f->loop, is_down, a);
  run_until(&f->loop, is_down, b);
  errors = llmux_fleet_responses_errors(a);
  assert_int_equal(llmux_responses_put(a->responses, "acme", "resp_1", REC, strlen(REC)), 0);
  assert_true(llmux_fleet_responses_errors(a) > errors);
  assert_int_equal(lookup(f, a, "acme", "resp_1", &ans), 0); /* its own, from memory */
  errors = llmux_fleet_responses_errors(b);
  assert_int_equal(lookup(f, b, "acme", "resp_1", &ans), LLMUX_ENOTFOUND);
  assert_true(llmux_fleet_responses_errors(b) > errors);
  /* Redis back (empty: no persistence): the fleet shares again. */
  redis_start(&f->srv);
  run_until(&f->loop, is_up, a);
  run_until(&f->loop, is_up, b);
  assert_int_equal(llmux_responses_put(a->responses, "acme", "resp_2", REC, strlen(REC)), 0);
  wait_key(f, "llmux:resp:resp_2", 1);
  assert_int_equal(lookup(f, b, "acme", "resp_2", &ans), 0);
  assert_string_equal(ans.record, REC);
  teardown_fix(f);
}

static void what_was_stored_while_redis_was_down_is_found_in_the_database(void **state) {
  fix_t *f;
  llmux_gateway_t *a;
  answer_t ans;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  a = start_gw(f, 0, 1);
  redis_kill(&f->srv);
  run_until(&f->loop, is_down, a);
  assert_int_equal(llmux_responses_put(a->responses, "acme", "resp_1", REC, strlen(REC)), 0);
  /* The process restarts (its memory is gone), and so does Redis. */
  stop_gw(f, 0);
  redis_start(&f->srv);
  a = start_gw(f, 0, 1);
  assert_int_equal(lookup(f, a, "acme", "resp_1", &ans), 0); /* Redis misses, SQLite has it */
  assert_string_equal(ans.record, REC);
  assert_int_equal(lookup(f, a, "other", "resp_1", &ans), LLMUX_ENOTFOUND);
  teardown_fix(f);
}

static void a_lookup_in_flight_at_close_is_answered_once(void **state) {
  fix_t *f;
  llmux_gateway_t *a;
  answer_t ans;
  llmux_buf_t b = {0};
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  a = start_gw(f, 0, 0);
  memset(&ans, 0, sizeof(ans));
  assert_int_equal(llmux_responses_get(a->responses, "acme", "resp_x", &b, on_answer, &ans),
                   LLMUX_EAGAIN);
  f->closed = 0;
  llmux_fleet_responses_close(a, on_fleet_closed);
  llmux_responses_close(a->responses);
  a->responses = NULL;
  assert_int_equal(ans.done, 1);
  assert_int_equal(ans.rc, LLMUX_ECANCELED);
  run_until(&f->loop, closed, f);
  assert_int_equal(ans.done, 1);
  teardown_fix(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(a_response_stored_by_one_process_is_found_by_another),
      cmocka_unit_test(another_tenants_lookup_finds_nothing),
      cmocka_unit_test(a_delete_anywhere_removes_it_from_redis),
      cmocka_unit_test(with_redis_down_records_stay_in_memory_and_errors_are_counted),
      cmocka_unit_test(what_was_stored_while_redis_was_down_is_found_in_the_database),
      cmocka_unit_test(a_lookup_in_flight_at_close_is_answered_once),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
