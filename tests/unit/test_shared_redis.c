/* The Redis connection on the loop, against a real redis-server started by
 * each test: the handshake (AUTH, SELECT, SCRIPT LOAD), EVALSHA surviving a
 * SCRIPT FLUSH, a slow server treated as down, reconnects, and a close that
 * leaves nothing on the loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "shared/redis.h"
#include "test_shared_support.h"

/* ---- URLs (no server) ------------------------------------------------------ */

static void url_accepts_host_port_and_db(void **state) {
  llmux_redis_url_t u;
  char err[256];
  (void)state;
  assert_int_equal(llmux_redis_parse_url("redis://127.0.0.1:6390/2", &u, err, sizeof(err)), 0);
  assert_string_equal(u.host, "127.0.0.1");
  assert_int_equal(u.port, 6390);
  assert_int_equal(u.db, 2);
  assert_int_equal(llmux_redis_parse_url("redis://cache.internal", &u, err, sizeof(err)), 0);
  assert_string_equal(u.host, "cache.internal");
  assert_int_equal(u.port, 6379);
  assert_int_equal(u.db, 0);
  assert_int_equal(llmux_redis_parse_url("redis://[::1]:7000/", &u, err, sizeof(err)), 0);
  assert_string_equal(u.host, "::1");
  assert_int_equal(u.port, 7000);
}

static void url_rejects_with_a_sentence_that_says_why(void **state) {
  static const struct {
    const char *url, *says;
  } bad[] = {
    {"http://127.0.0.1:6379", "expected redis://"},
    {"redis://:secret@127.0.0.1", "password"},
    {"redis://user@127.0.0.1", "password"},
    {"redis://", "host is empty"},
    {"redis://:6379", "host is empty"},
    {"redis://h:0", "port"},
    {"redis://h:65536", "port"},
    {"redis://h:12ab", "port"},
    {"redis://h/x", "database"},
    {"redis://h/1/2", "database"},
    {"redis://[::1", "unclosed"},
  };
  llmux_redis_url_t u;
  char err[256];
  size_t i;
  (void)state;
  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    err[0] = '\0';
    assert_int_equal(llmux_redis_parse_url(bad[i].url, &u, err, sizeof(err)), LLMUX_EINVAL);
    if (strstr(err, bad[i].says) == NULL) fail_msg("%s: \"%s\"", bad[i].url, err);
  }
}

/* ---- A connection ------------------------------------------------------------ */

typedef struct {
  uv_loop_t loop;
  redis_server_t srv;
  llmux_redis_t r;
  char url[64];
  int ups, downs, closed;
  int replies;
  int last_status;
  long long last_int;
  char last_str[128];
} fix_t;

static const char *const echo_script[] = {"return {KEYS[1], ARGV[1]}"};

static void on_state(llmux_redis_t *r, int ready) {
  fix_t *f = r->data;
  if (ready) f->ups++;
  else f->downs++;
}

static void on_closed(llmux_redis_t *r) {
  fix_t *f = r->data;
  f->closed = 1;
}

static void on_reply(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  fix_t *f = r->data;
  (void)arg;
  f->replies++;
  f->last_status = status;
  f->last_str[0] = '\0';
  if (reply == NULL) return;
  if (reply->type == REDIS_REPLY_INTEGER) f->last_int = reply->integer;
  if (reply->str) snprintf(f->last_str, sizeof(f->last_str), "%s", reply->str);
  if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2)
    snprintf(f->last_str, sizeof(f->last_str), "%s|%s", reply->element[0]->str,
             reply->element[1]->str);
}

static int is_ready(void *arg) { return ((fix_t *)arg)->r.state == LLMUX_REDIS_READY; }
static int is_down(void *arg) { return ((fix_t *)arg)->downs > 0; }
static int got_reply(void *arg) { return ((fix_t *)arg)->replies > 0; }
static int is_closed(void *arg) { return ((fix_t *)arg)->closed; }

static void open_conn(fix_t *f, const char *password, unsigned timeout_ms) {
  llmux_redis_options_t o;
  char err[256];
  memset(&o, 0, sizeof(o));
  o.url = f->url;
  o.password = password;
  o.what = "test";
  o.timeout_ms = timeout_ms;
  o.backoff_min_ms = 20;
  o.backoff_max_ms = 100;
  o.scripts = echo_script;
  o.nscripts = 1;
  o.on_state = on_state;
  assert_int_equal(llmux_redis_init(&f->loop, &f->r, &o, err, sizeof(err)), 0);
  f->r.data = f;
  assert_int_equal(llmux_redis_start(&f->r), 0);
}

static fix_t *setup_fix(const char *server_password) {
  fix_t *f = calloc(1, sizeof(*f));
  uv_loop_init(&f->loop);
  if (server_password) snprintf(f->srv.password, sizeof(f->srv.password), "%s", server_password);
  redis_start(&f->srv);
  redis_url(&f->srv, f->url, sizeof(f->url));
  return f;
}

static void teardown_fix(fix_t *f) {
  llmux_redis_close(&f->r, on_closed);
  run_until(&f->loop, is_closed, f);
  close_loop(&f->loop);
  redis_stop(&f->srv);
  free(f);
}

static int command(fix_t *f, int argc, const char **argv) {
  size_t lens[8];
  int i;
  for (i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
  f->replies = 0;
  return llmux_redis_command(&f->r, on_reply, NULL, argc, argv, lens);
}

static int evalsha(fix_t *f, const char *key, const char *arg) {
  const char *argv[2] = {key, arg};
  size_t lens[2] = {strlen(key), strlen(arg)};
  f->replies = 0;
  return llmux_redis_evalsha(&f->r, 0, on_reply, NULL, 1, 2, argv, lens);
}

static void commands_run_once_ready_and_never_before(void **state) {
  fix_t *f;
  const char *set[] = {"INCRBY", "k", "41"};
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix(NULL);
  open_conn(f, NULL, 0);
  assert_int_equal(command(f, 3, set), LLMUX_ECONNREFUSED); /* not ready yet */
  run_until(&f->loop, is_ready, f);
  assert_int_equal(f->ups, 1);
  assert_int_equal(command(f, 3, set), 0);
  assert_int_equal(f->replies, 0); /* never inside the call */
  run_until(&f->loop, got_reply, f);
  assert_int_equal(f->last_status, 0);
  assert_int_equal(f->last_int, 41);
  teardown_fix(f);
}

static void evalsha_loads_the_script_again_after_a_flush(void **state) {
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix(NULL);
  open_conn(f, NULL, 0);
  run_until(&f->loop, is_ready, f);
  assert_int_equal(evalsha(f, "key", "one"), 0);
  run_until(&f->loop, got_reply, f);
  assert_string_equal(f->last_str, "key|one");
  freeReplyObject(redis_admin(&f->srv, "SCRIPT FLUSH"));
  assert_int_equal(evalsha(f, "key", "two"), 0);
  run_until(&f->loop, got_reply, f);
  assert_int_equal(f->last_status, 0);
  assert_string_equal(f->last_str, "key|two");
  assert_int_equal(f->r.errors, 0);
  teardown_fix(f);
}

static void select_uses_the_database_of_the_url(void **state) {
  fix_t *f;
  const char *set[] = {"SET", "where", "db3"};
  redisReply *r;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix(NULL);
  strcat(f->url, "/3");
  open_conn(f, NULL, 0);
  run_until(&f->loop, is_ready, f);
  assert_int_equal(command(f, 3, set), 0);
  run_until(&f->loop, got_reply, f);
  r = redis_admin(&f->srv, "GET where"); /* db 0 */
  assert_int_equal(r->type, REDIS_REPLY_NIL);
  freeReplyObject(r);
  r = redis_admin(&f->srv, "EVAL %s 0", "redis.call('SELECT', 3) return redis.call('GET', 'where')");
  assert_int_equal(r->type, REDIS_REPLY_STRING);
  assert_string_equal(r->str, "db3");
  freeReplyObject(r);
  teardown_fix(f);
}

static void a_slow_server_is_down_and_the_connection_comes_back(void **state) {
  fix_t *f;
  const char *ping[] = {"PING"};
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix(NULL);
  open_conn(f, NULL, 30);
  run_until(&f->loop, is_ready, f);
  freeReplyObject(redis_admin(&f->srv, "CLIENT PAUSE 400 ALL"));
  assert_int_equal(command(f, 1, ping), 0);
  run_until(&f->loop, got_reply, f);
  assert_int_equal(f->last_status, LLMUX_ETIMEOUT);
  assert_true(f->downs >= 1);
  assert_true(f->r.errors >= 1);
  assert_non_null(strstr(f->r.last_error, "no reply within 30 ms"));
  run_until(&f->loop, is_ready, f); /* after the pause, on its own */
  assert_true(f->ups >= 2);
  assert_int_equal(command(f, 1, ping), 0);
  run_until(&f->loop, got_reply, f);
  assert_int_equal(f->last_status, 0);
  assert_string_equal(f->last_str, "PONG");
  teardown_fix(f);
}

static void a_server_that_appears_later_is_reached_with_backoff(void **state) {
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = calloc(1, sizeof(*f));
  uv_loop_init(&f->loop);
  f->srv.port = free_port(); /* nothing listens yet */
  redis_url(&f->srv, f->url, sizeof(f->url));
  open_conn(f, NULL, 0);
  run_until(&f->loop, is_down, f);
  assert_true(f->r.errors >= 1);
  if (strstr(f->r.last_error, "connect failed") == NULL) fail_msg("%s", f->r.last_error);
  assert_int_equal(f->ups, 0);
  redis_start(&f->srv);
  run_until(&f->loop, is_ready, f);
  assert_int_equal(f->ups, 1);
  teardown_fix(f);
}

static void a_lost_connection_fails_what_is_pending_and_reconnects(void **state) {
  fix_t *f;
  const char *blpop[] = {"BLPOP", "never", "0"};
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix(NULL);
  open_conn(f, NULL, 5000);
  run_until(&f->loop, is_ready, f);
  assert_int_equal(command(f, 3, blpop), 0);
  freeReplyObject(redis_admin(&f->srv, "CLIENT KILL TYPE normal"));
  run_until(&f->loop, got_reply, f);
  assert_int_equal(f->last_status, LLMUX_ECONNRESET);
  assert_true(f->downs >= 1);
  run_until(&f->loop, is_ready, f);
  teardown_fix(f);
}

static void auth_with_the_right_password_connects(void **state) {
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix("s3cret-pw");
  open_conn(f, "s3cret-pw", 0);
  run_until(&f->loop, is_ready, f);
  assert_int_equal(f->r.errors, 0);
  teardown_fix(f);
}

static void a_wrong_password_says_authentication_failed_and_never_shows_it(void **state) {
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix("s3cret-pw");
  open_conn(f, "not-the-password", 0);
  run_until(&f->loop, is_down, f);
  assert_int_equal(f->ups, 0);
  assert_non_null(strstr(f->r.last_error, "authentication failed"));
  assert_non_null(strstr(f->r.last_error, "WRONGPASS"));
  assert_null(strstr(f->r.last_error, "not-the-password"));
  teardown_fix(f);
}

static void no_password_for_a_server_that_wants_one_says_so(void **state) {
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix("s3cret-pw");
  open_conn(f, NULL, 0);
  run_until(&f->loop, is_down, f);
  assert_int_equal(f->ups, 0);
  assert_non_null(strstr(f->r.last_error, "requires a password"));
  teardown_fix(f);
}

static void close_cancels_what_is_pending_and_leaves_nothing(void **state) {
  fix_t *f;
  const char *blpop[] = {"BLPOP", "never", "0"};
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix(NULL);
  open_conn(f, NULL, 5000);
  run_until(&f->loop, is_ready, f);
  assert_int_equal(command(f, 3, blpop), 0);
  llmux_redis_close(&f->r, on_closed);
  assert_int_equal(f->replies, 0); /* on a later iteration */
  run_until(&f->loop, is_closed, f);
  assert_int_equal(f->replies, 1);
  assert_int_equal(f->last_status, LLMUX_ECANCELED);
  close_loop(&f->loop);
  redis_stop(&f->srv);
  free(f);
}

static void close_while_connecting_leaves_nothing(void **state) {
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix(NULL);
  open_conn(f, NULL, 0);
  llmux_redis_close(&f->r, on_closed);
  run_until(&f->loop, is_closed, f);
  assert_int_equal(f->ups, 0);
  close_loop(&f->loop);
  redis_stop(&f->srv);
  free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(url_accepts_host_port_and_db),
    cmocka_unit_test(url_rejects_with_a_sentence_that_says_why),
    cmocka_unit_test(commands_run_once_ready_and_never_before),
    cmocka_unit_test(evalsha_loads_the_script_again_after_a_flush),
    cmocka_unit_test(select_uses_the_database_of_the_url),
    cmocka_unit_test(a_slow_server_is_down_and_the_connection_comes_back),
    cmocka_unit_test(a_server_that_appears_later_is_reached_with_backoff),
    cmocka_unit_test(a_lost_connection_fails_what_is_pending_and_reconnects),
    cmocka_unit_test(auth_with_the_right_password_connects),
    cmocka_unit_test(a_wrong_password_says_authentication_failed_and_never_shows_it),
    cmocka_unit_test(no_password_for_a_server_that_wants_one_says_so),
    cmocka_unit_test(close_cancels_what_is_pending_and_leaves_nothing),
    cmocka_unit_test(close_while_connecting_leaves_nothing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
