/* gateway/fleet_usage.c: two gateways' usage stores (what the tenant
 * quota check and GET /v1/usage read) on one loop, sharing through a real
 * redis-server. A request is counted as the proxy counts it: llmux_usage_add
 * then llmux_fleet_usage_count. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sqlite3.h>

#include "gateway/fleet.h"
#include "gateway/server.h"
#include "test_shared_support.h"

typedef struct gw_fix_s {
  llmux_gateway_t gw;
  llmux_config_t cfg;
  char db[64];
} gw_fix_t;

typedef struct fix_s {
  uv_loop_t loop;
  redis_server_t srv;
  char url[64];
  gw_fix_t g[2];
  int closed;
  int today;
} fix_t;

static fix_t *setup_fix(void) {
  fix_t *f = calloc(1, sizeof(*f));
  uv_loop_init(&f->loop);
  redis_start(&f->srv);
  redis_url(&f->srv, f->url, sizeof(f->url));
  f->today = llmux_usage_today();
  return f;
}

static void db_path(gw_fix_t *g) {
  int fd;
  snprintf(g->db, sizeof(g->db), "/tmp/llmux-fleet-XXXXXX");
  fd = mkstemp(g->db);
  assert_true(fd >= 0);
  close(fd);
  unlink(g->db);
}

static void db_remove(const char *path) {
  char p[96];
  unlink(path);
  snprintf(p, sizeof(p), "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof(p), "%s-shm", path);
  unlink(p);
}

/* A gateway with (db) or without a usage_db, sharing usage. */
static llmux_gateway_t *start_gw(fix_t *f, int i, int with_db) {
  gw_fix_t *g = &f->g[i];
  llmux_fleet_conf_t fc;
  char err[256];
  if (with_db && g->db[0] == '\0') db_path(g);
  g->gw.loop = &f->loop;
  g->cfg.server.usage_db = with_db ? g->db : NULL;
  g->gw.cfg = &g->cfg;
  assert_int_equal(llmux_usage_open(&f->loop, g->cfg.server.usage_db, f->today, &g->gw.usage,
                                    err, sizeof(err)),
                   0);
  memset(&fc, 0, sizeof(fc));
  fc.url = f->url;
  fc.prefix = "llmux:";
  assert_int_equal(llmux_fleet_usage_start(&g->gw, &fc), 0);
  return &g->gw;
}

static void on_fleet_closed(llmux_gateway_t *gw) {
  fix_t *f = gw->data;
  f->closed++;
}

static void on_usage_closed(llmux_usage_store_t *s, void *arg) {
  ((fix_t *)arg)->closed++;
}

typedef struct {
  fix_t *f;
  int want;
} wait_t;

static int closed_n(void *arg) {
  wait_t *w = arg;
  return w->f->closed >= w->want;
}

/* Fleet first, then the store (fleet.h's order). */
static void stop_gw(fix_t *f, int i) {
  llmux_gateway_t *gw = &f->g[i].gw;
  wait_t w = {f, 1};
  if (gw->usage == NULL) return;
  gw->data = f;
  f->closed = 0;
  llmux_fleet_usage_close(gw, on_fleet_closed);
  run_until(&f->loop, closed_n, &w);
  assert_null(gw->fleet_usage);
  f->closed = 0;
  llmux_usage_close(gw->usage, on_usage_closed, f);
  gw->usage = NULL;
  run_until(&f->loop, closed_n, &w);
}

static void teardown_fix(fix_t *f) {
  int i;
  for (i = 0; i < 2; i++) stop_gw(f, i);
  close_loop(&f->loop);
  redis_stop(&f->srv);
  for (i = 0; i < 2; i++)
    if (f->g[i].db[0]) db_remove(f->g[i].db);
  free(f);
}

static void count(fix_t *f, llmux_gateway_t *gw, const char *tenant, uint64_t in, uint64_t out) {
  llmux_usage_add(gw->usage, tenant, "gpt-4o", f->today, in, out, 0.01);
  llmux_fleet_usage_count(gw, tenant, "gpt-4o", f->today, in, out, 0.01);
}

static uint64_t tokens_today(fix_t *f, llmux_gateway_t *gw, const char *tenant) {
  llmux_usage_counts_t today, month;
  llmux_usage_tenant_totals(gw->usage, tenant, f->today, &today, &month);
  return today.input_tokens + today.output_tokens;
}

typedef struct {
  fix_t *f;
  llmux_gateway_t *gw[2];
  uint64_t want;
} tokens_wait_t;

static int both_see(void *arg) {
  tokens_wait_t *t = arg;
  int i;
  for (i = 0; i < 2; i++)
    if (t->gw[i] && tokens_today(t->f, t->gw[i], "acme") != t->want) return 0;
  return 1;
}

static long long db_requests(const char *path) {
  sqlite3 *db;
  sqlite3_stmt *st;
  long long v = -1;
  assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_prepare_v2(db, "SELECT sum(requests) FROM usage", -1, &st, NULL),
                   SQLITE_OK);
  if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
    v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return v;
}

/* ---- Tests ------------------------------------------------------------------------ */

static void a_tenants_tokens_counted_through_one_gateway_count_in_the_other(void **state) {
  fix_t *f;
  tokens_wait_t t;
  llmux_gateway_t *a, *b;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  a = start_gw(f, 0, 0);
  b = start_gw(f, 1, 0);
  count(f, a, "acme", 600, 300); /* e.g. tokens_per_day = 1000: one more is refused */
  count(f, b, "acme", 50, 50);
  t.f = f;
  t.gw[0] = a;
  t.gw[1] = b;
  t.want = 1000;
  run_until(&f->loop, both_see, &t);
  assert_int_equal(tokens_today(f, a, "acme"), 1000);
  assert_int_equal(tokens_today(f, b, "acme"), 1000);
  assert_int_equal(tokens_today(f, b, "other"), 0);
  assert_int_equal(llmux_fleet_usage_errors(a), 0);
  teardown_fix(f);
}

typedef struct {
  llmux_gateway_t *gw[2];
} writers_t;

static int one_is_writer(void *arg) {
  writers_t *w = arg;
  return llmux_fleet_usage_is_writer(w->gw[0]) + llmux_fleet_usage_is_writer(w->gw[1]) == 1;
}

static void only_the_elected_gateway_writes_its_usage_db(void **state) {
  fix_t *f;
  tokens_wait_t t;
  writers_t w;
  int wi;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  w.gw[0] = start_gw(f, 0, 1);
  w.gw[1] = start_gw(f, 1, 1);
  run_until(&f->loop, one_is_writer, &w);
  wi = llmux_fleet_usage_is_writer(w.gw[0]) ? 0 : 1;
  count(f, w.gw[0], "acme", 1, 1);
  count(f, w.gw[1], "acme", 1, 1);
  count(f, w.gw[1], "acme", 1, 1);
  t.f = f;
  t.gw[0] = w.gw[0];
  t.gw[1] = w.gw[1];
  t.want = 6;
  run_until(&f->loop, both_see, &t);
  assert_int_equal(llmux_usage_flush(w.gw[0]->usage), 0);
  assert_int_equal(llmux_usage_flush(w.gw[1]->usage), 0);
  assert_int_equal(db_requests(f->g[wi].db), 3); /* the fleet's, not its own 1 or 2 */
  assert_int_equal(db_requests(f->g[1 - wi].db), -1);
  teardown_fix(f);
}

static int sees_three(void *arg) {
  tokens_wait_t *t = arg;
  return tokens_today(t->f, t->gw[1], "acme") == 6;
}

static void a_usage_db_from_before_seeds_an_empty_redis(void **state) {
  fix_t *f;
  llmux_usage_store_t *s;
  tokens_wait_t t;
  char err[256];
  int i;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  db_path(&f->g[0]);
  /* The fleet ran on SQLite alone. */
  assert_int_equal(llmux_usage_open(NULL, f->g[0].db, f->today, &s, err, sizeof(err)), 0);
  for (i = 0; i < 3; i++) llmux_usage_add(s, "acme", "gpt-4o", f->today, 1, 1, 0.01);
  llmux_usage_close(s, NULL, NULL);
  start_gw(f, 0, 1);
  start_gw(f, 1, 0); /* a new gateway, no database */
  t.f = f;
  t.gw[0] = NULL;
  t.gw[1] = &f->g[1].gw;
  run_until(&f->loop, sees_three, &t);
  assert_int_equal(tokens_today(f, &f->g[1].gw, "acme"), 6);
  assert_int_equal(tokens_today(f, &f->g[0].gw, "acme"), 6); /* not doubled */
  {
    char key[128], d[11];
    redisReply *r;
    llmux_usage_day_str(f->today, d);
    snprintf(key, sizeof(key), "llmux:usage:%s:4:acme:gpt-4o", d);
    r = redis_admin(&f->srv, "HGET %s requests", key);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, "3");
    freeReplyObject(r);
  }
  teardown_fix(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(a_tenants_tokens_counted_through_one_gateway_count_in_the_other),
    cmocka_unit_test(only_the_elected_gateway_writes_its_usage_db),
    cmocka_unit_test(a_usage_db_from_before_seeds_an_empty_redis),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
