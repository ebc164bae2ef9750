/* Breakers shared through Redis: several modules on one loop stand for
 * several gateway processes, each with its own two connections to a real
 * redis-server started by the test. Times are Unix ms around the real wall
 * clock (keys expire in Redis's real time); nothing asserts how long
 * anything took. The last tests wire route tables to the modules the way
 * gateway/fleet_breakers.c does, each "process" on a monotonic clock of its
 * own. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/util.h"
#include "config/config.h"
#include "config/registry.h"
#include "route/router.h"
#include "shared/breaker_shared.h"
#include "test_shared_support.h"

#define NPROC 3
#define REST 60000 /* a rest no test outlives */

typedef struct proc_s {
  llmux_breaker_shared_t *b;
  int opens, closes;          /* heard from others */
  char provider[64], model[64]; /* of the last opening heard */
  char closed_model[64];        /* of the last close heard */
  int64_t since, until, at;
  /* Wired to a route table (the last tests): */
  llmux_route_table_t *table;
  llmux_router_t *router;
  uint64_t base;              /* this process's monotonic clock: uv_now + base */
  uv_loop_t *loop;
} proc_t;

typedef struct fix_s {
  uv_loop_t loop;
  redis_server_t srv;
  char url[64];
  proc_t p[NPROC];
  int closed, synced;
} fix_t;

/* ---- Processes -------------------------------------------------------------- */

static uint64_t proc_now(const proc_t *p) {
  return uv_now(p->loop) + p->base;
}

/* Unix ms minus this process's clock, as fleet_breakers.c takes it. */
static int64_t proc_offset(const proc_t *p) {
  return llmux_breaker_shared_wall_ms() - (int64_t)(llmux_now_us() / 1000 + p->base);
}

static uint64_t to_proc(const proc_t *p, int64_t wall) {
  int64_t t = wall - proc_offset(p);
  return t > 0 ? (uint64_t)t : 0;
}

static void on_open(llmux_breaker_shared_t *b, const char *provider, const char *model,
                    int64_t since, int64_t until, void *arg) {
  proc_t *p = arg;
  p->opens++;
  snprintf(p->provider, sizeof(p->provider), "%s", provider);
  snprintf(p->model, sizeof(p->model), "%s", model);
  p->since = since;
  p->until = until;
  if (p->table)
    llmux_route_table_open(p->table, provider, model, to_proc(p, since), to_proc(p, until),
                           proc_now(p));
}

static void on_close(llmux_breaker_shared_t *b, const char *provider, const char *model,
                     int64_t at, void *arg) {
  proc_t *p = arg;
  p->closes++;
  snprintf(p->closed_model, sizeof(p->closed_model), "%s", model);
  p->at = at;
  if (p->table) llmux_route_table_close_remote(p->table, provider, model, to_proc(p, at));
}

/* The table's own changes, to the fleet (fleet_breakers.c's on_change). */
static void on_change(const llmux_route_change_t *c, void *arg) {
  proc_t *p = arg;
  int64_t off = proc_offset(p);
  if (c->event == LLMUX_ROUTE_OPENED)
    assert_int_equal(llmux_breaker_shared_opened(p->b, c->provider, c->model,
                                                 (int64_t)c->now_ms + off,
                                                 (int64_t)c->until_ms + off), 0);
  else
    assert_int_equal(llmux_breaker_shared_recovered(p->b, c->provider, c->model,
                                                    (int64_t)c->now_ms + off), 0);
}

typedef struct {
  const char *prefix;
  const char *password;
  unsigned timeout_ms;
} opts_t;

static proc_t *start_proc(fix_t *f, int i, const opts_t *o) {
  llmux_breaker_shared_options_t bo;
  proc_t *p = &f->p[i];
  char err[256] = "";
  memset(&bo, 0, sizeof(bo));
  bo.url = f->url;
  bo.prefix = o ? o->prefix : NULL;
  bo.password = o ? o->password : NULL;
  bo.timeout_ms = o && o->timeout_ms ? o->timeout_ms : 2000; /* ASan on a busy CI box */
  bo.backoff_min_ms = 20;
  bo.backoff_max_ms = 200;
  bo.on_open = on_open;
  bo.on_close = on_close;
  bo.arg = p;
  p->loop = &f->loop;
  assert_int_equal(llmux_breaker_shared_new(&f->loop, &bo, &p->b, err, sizeof(err)), 0);
  assert_int_equal(llmux_breaker_shared_start(p->b), 0);
  return p;
}

static fix_t *setup_fix(void) {
  fix_t *f = calloc(1, sizeof(*f));
  uv_loop_init(&f->loop);
  redis_start(&f->srv);
  redis_url(&f->srv, f->url, sizeof(f->url));
  return f;
}

static void on_closed(llmux_breaker_shared_t *b, int status, void *arg) {
  ((fix_t *)arg)->closed++;
}

static int all_closed(void *arg) {
  fix_t *f = arg;
  int i, n = 0;
  for (i = 0; i < NPROC; i++) n += f->p[i].b != NULL;
  return f->closed == n;
}

static void teardown_fix(fix_t *f) {
  int i;
  for (i = 0; i < NPROC; i++)
    if (f->p[i].b) llmux_breaker_shared_close(f->p[i].b, on_closed, f);
  run_until(&f->loop, all_closed, f);
  close_loop(&f->loop);
  redis_stop(&f->srv);
  for (i = 0; i < NPROC; i++) {
    llmux_router_free(f->p[i].router);
    llmux_route_table_free(f->p[i].table);
  }
  free(f);
}

static llmux_breaker_shared_stats_t stats(const proc_t *p) {
  llmux_breaker_shared_stats_t st;
  llmux_breaker_shared_stats(p->b, &st);
  return st;
}

static int all_up(void *arg) {
  fix_t *f = arg;
  int i;
  for (i = 0; i < NPROC; i++)
    if (f->p[i].b && !stats(&f->p[i]).up) return 0;
  return 1;
}

static int first_down(void *arg) {
  fix_t *f = arg;
  return !stats(&f->p[0]).up;
}

static int all_down(void *arg) {
  fix_t *f = arg;
  int i;
  for (i = 0; i < NPROC; i++)
    if (f->p[i].b && stats(&f->p[i]).up) return 0;
  return 1;
}

static void on_synced(llmux_breaker_shared_t *b, int status, void *arg) {
  assert_int_equal(status, 0);
  ((fix_t *)arg)->synced++;
}

static int synced_one(void *arg) { return ((fix_t *)arg)->synced == 1; }

/* Until every word sent so far is in Redis and every process heard every
 * message: one round of barriers puts each process's words in Redis, a
 * second makes every process hear all of them. */
static void settle(fix_t *f) {
  int round, i;
  for (round = 0; round < 2; round++) {
    for (i = 0; i < NPROC; i++) {
      if (f->p[i].b == NULL) continue;
      f->synced = 0;
      assert_int_equal(llmux_breaker_shared_sync(f->p[i].b, on_synced, f), 0);
      run_until(&f->loop, synced_one, f);
    }
  }
}

typedef struct {
  proc_t *p;
  int n;
} count_t;

static int heard_opens(void *arg) {
  count_t *c = arg;
  return c->p->opens >= c->n;
}

static int heard_closes(void *arg) {
  count_t *c = arg;
  return c->p->closes >= c->n;
}

static void wait_opens(fix_t *f, proc_t *p, int n) {
  count_t c = {p, n};
  run_until(&f->loop, heard_opens, &c);
}

static void wait_closes(fix_t *f, proc_t *p, int n) {
  count_t c = {p, n};
  run_until(&f->loop, heard_closes, &c);
}

/* What Redis holds for a route: the value, or "" when no key. */
static void stored(fix_t *f, const char *prefix, const char *provider, const char *model,
                   char *out, size_t n) {
  char key[256];
  redisReply *r;
  snprintf(key, sizeof(key), "%sbr:%zu:%s:%s", prefix, strlen(provider), provider, model);
  r = redis_admin(&f->srv, "GET %s", key);
  assert_non_null(r);
  out[0] = '\0';
  if (r->type == REDIS_REPLY_STRING) snprintf(out, n, "%s", r->str);
  else assert_int_equal(r->type, REDIS_REPLY_NIL);
  freeReplyObject(r);
}

static long long stored_until(fix_t *f, const char *prefix, const char *provider,
                              const char *model) {
  char v[128];
  stored(f, prefix, provider, model, v, sizeof(v));
  return v[0] ? atoll(v) : 0;
}

/* ---- One publish between processes ------------------------------------------ */

static void an_opening_reaches_the_other_process_with_its_times(void **state) {
  int64_t w = llmux_breaker_shared_wall_ms();
  char v[128], want[128];
  redisReply *r;
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  start_proc(f, 0, NULL);
  start_proc(f, 1, NULL);
  run_until(&f->loop, all_up, f);

  assert_int_equal(llmux_breaker_shared_opened(f->p[0].b, "groq", "llama-3.3", w, w + REST), 0);
  wait_opens(f, &f->p[1], 1);

  assert_int_equal(f->p[1].opens, 1);
  assert_string_equal(f->p[1].provider, "groq");
  assert_string_equal(f->p[1].model, "llama-3.3");
  assert_int_equal(f->p[1].since, w);
  assert_int_equal(f->p[1].until, w + REST);
  /* The key says the same, and expires with the rest. */
  stored(f, "llmux:", "groq", "llama-3.3", v, sizeof(v));
  snprintf(want, sizeof(want), "%lld %lld ", (long long)(w + REST), (long long)w);
  assert_memory_equal(v, want, strlen(want));
  assert_int_equal(strlen(v), strlen(want) + 16); /* and the origin */
  r = redis_admin(&f->srv, "PTTL llmux:br:4:groq:llama-3.3");
  assert_int_equal(r->type, REDIS_REPLY_INTEGER);
  assert_true(r->integer > 0 && r->integer <= REST);
  freeReplyObject(r);
  assert_int_equal(stats(&f->p[0]).unsent, 0);
  teardown_fix(f);
}

static void a_close_reaches_the_other_process_and_deletes_the_key(void **state) {
  int64_t w = llmux_breaker_shared_wall_ms();
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  start_proc(f, 0, NULL);
  start_proc(f, 1, NULL);
  run_until(&f->loop, all_up, f);
  assert_int_equal(llmux_breaker_shared_opened(f->p[0].b, "groq", "llama-3.3", w, w + REST), 0);
  wait_opens(f, &f->p[1], 1);

  assert_int_equal(llmux_breaker_shared_recovered(f->p[0].b, "groq", "llama-3.3", w + 1000), 0);
  wait_closes(f, &f->p[1], 1);

  assert_int_equal(f->p[1].closes, 1);
  assert_string_equal(f->p[1].closed_model, "llama-3.3");
  assert_int_equal(f->p[1].at, w + 1000);
  assert_int_equal(stored_until(f, "llmux:", "groq", "llama-3.3"), 0);
  teardown_fix(f);
}

static void a_process_ignores_its_own_messages(void **state) {
  int64_t w = llmux_breaker_shared_wall_ms();
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  start_proc(f, 0, NULL);
  start_proc(f, 1, NULL);
  run_until(&f->loop, all_up, f);

  assert_int_equal(llmux_breaker_shared_opened(f->p[0].b, "groq", "llama-3.3", w, w + REST), 0);
  assert_int_equal(llmux_breaker_shared_recovered(f->p[0].b, "groq", "llama-3.3", w + 1), 0);
  settle(f);

  assert_int_equal(f->p[1].opens, 1); /* published, */
  assert_int_equal(f->p[1].closes, 1);
  assert_int_equal(f->p[0].opens, 0); /* and not heard back */
  assert_int_equal(f->p[0].closes, 0);
  assert_int_equal(stats(&f->p[0]).heard, 0);
  assert_int_equal(stats(&f->p[1]).heard, 2);
  teardown_fix(f);
}

/* ---- Order ---------------------------------------------------------------------- */

static void a_longer_opening_wins_over_a_shorter_one(void **state) {
  int64_t w = llmux_breaker_shared_wall_ms();
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  start_proc(f, 0, NULL);
  start_proc(f, 1, NULL);
  run_until(&f->loop, all_up, f);
  assert_int_equal(llmux_breaker_shared_opened(f->p[0].b, "groq", "m", w, w + REST), 0);
  settle(f);

  assert_int_equal(llmux_breaker_shared_opened(f->p[1].b, "groq", "m", w + 10, w + REST / 2), 0);
  settle(f);

  assert_int_equal(f->p[0].opens, 0); /* the shorter one went nowhere */
  assert_int_equal(stored_until(f, "llmux:", "groq", "m"), w + REST);
  assert_int_equal(stats(&f->p[1]).unsent, 0); /* and is done with */
  /* A longer one extends it everywhere. */
  assert_int_equal(llmux_breaker_shared_opened(f->p[1].b, "groq", "m", w + 20, w + 2 * REST), 0);
  wait_opens(f, &f->p[0], 1);
  assert_int_equal(f->p[0].until, w + 2 * REST);
  assert_int_equal(stored_until(f, "llmux:", "groq", "m"), w + 2 * REST);
  teardown_fix(f);
}

static void a_close_does_not_end_an_opening_that_began_after_it(void **state) {
  int64_t w = llmux_breaker_shared_wall_ms();
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  start_proc(f, 0, NULL);
  start_proc(f, 1, NULL);
  run_until(&f->loop, all_up, f);
  assert_int_equal(llmux_breaker_shared_opened(f->p[1].b, "groq", "m", w + 5000, w + REST), 0);
  settle(f);

  /* A's probe succeeded before B's failures: B's opening stands. */
  assert_int_equal(llmux_breaker_shared_recovered(f->p[0].b, "groq", "m", w + 1000), 0);
  settle(f);
  assert_int_equal(f->p[1].closes, 0);
  assert_int_equal(stored_until(f, "llmux:", "groq", "m"), w + REST);
  /* A success after them ends it. */
  assert_int_equal(llmux_breaker_shared_recovered(f->p[0].b, "groq", "m", w + 6000), 0);
  wait_closes(f, &f->p[1], 1);
  assert_int_equal(f->p[1].at, w + 6000);
  assert_int_equal(stored_until(f, "llmux:", "groq", "m"), 0);
  teardown_fix(f);
}

/* ---- Several fleets on one Redis -------------------------------------------------- */

static void two_prefixes_do_not_see_each_other(void **state) {
  opts_t a = {.prefix = "fleet-a:"}, b = {.prefix = "fleet-b:"};
  int64_t w = llmux_breaker_shared_wall_ms();
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  start_proc(f, 0, &a);
  start_proc(f, 1, &b);
  start_proc(f, 2, &a);
  run_until(&f->loop, all_up, f);

  assert_int_equal(llmux_breaker_shared_opened(f->p[0].b, "groq", "m", w, w + REST), 0);
  wait_opens(f, &f->p[2], 1); /* the same fleet hears it */
  settle(f);

  assert_int_equal(f->p[1].opens, 0);
  assert_int_equal(stored_until(f, "fleet-a:", "groq", "m"), w + REST);
  assert_int_equal(stored_until(f, "fleet-b:", "groq", "m"), 0);
  assert_int_equal(stored_until(f, "llmux:", "groq", "m"), 0);
  teardown_fix(f);
}

/* ---- Connecting late, and outages ---------------------------------------------------- */

static void a_process_started_later_learns_every_live_opening_at_connect(void **state) {
  int64_t w = llmux_breaker_shared_wall_ms();
  char model[32];
  fix_t *f;
  int i;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  start_proc(f, 0, NULL);
  run_until(&f->loop, all_up, f);
  /* More openings than one page of the scan, and one that ends at once. */
  for (i = 0; i < 250; i++) {
    snprintf(model, sizeof(model), "m-%03d", i);
    assert_int_equal(llmux_breaker_shared_opened(f->p[0].b, "groq", model, w, w + REST + i), 0);
  }
  assert_int_equal(llmux_breaker_shared_opened(f->p[0].b, "groq", "brief", w, w + 300), 0);
  settle(f);
  run_for_ms(&f->loop, 400); /* "brief" expires in Redis */
  assert_int_equal(stored_until(f, "llmux:", "groq", "brief"), 0);

  start_proc(f, 1, NULL);
  run_until(&f->loop, all_up, f);

  assert_int_equal(f->p[1].opens, 250);
  assert_int_equal(f->p[0].opens, 0);
  assert_int_equal(stats(&f->p[1]).heard, 250);
  teardown_fix(f);
}

static void the_one_learnt_at_connect_has_its_times(void **state) {
  int64_t w = llmux_breaker_shared_wall_ms();
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  start_proc(f, 0, NULL);
  run_until(&f->loop, all_up, f);
  assert_int_equal(llmux_breaker_shared_opened(f->p[0].b, "open ai", "gpt:4o mini", w - 5,
                                               w + REST), 0);
  settle(f);

  start_proc(f, 1, NULL);
  run_until(&f->loop, all_up, f);

  assert_int_equal(f->p[1].opens, 1);
  assert_string_equal(f->p[1].provider, "open ai");
  assert_string_equal(f->p[1].model, "gpt:4o mini");
  assert_int_equal(f->p[1].since, w - 5);
  assert_int_equal(f->p[1].until, w + REST);
  teardown_fix(f);
}

static void a_lost_subscription_is_made_up_for_by_the_scan_without_echoes(void **state) {
  int64_t w = llmux_breaker_shared_wall_ms();
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  start_proc(f, 0, NULL);
  start_proc(f, 1, NULL);
  run_until(&f->loop, all_up, f);
  assert_int_equal(llmux_breaker_shared_opened(f->p[0].b, "groq", "one", w, w + REST), 0);
  wait_opens(f, &f->p[1], 1);

  /* Every subscriber connection is cut (the command connections stay). */
  freeReplyObject(redis_admin(&f->srv, "CLIENT KILL TYPE pubsub"));
  run_until(&f->loop, all_down, f);
  assert_int_equal(llmux_breaker_shared_opened(f->p[0].b, "groq", "two", w, w + REST), 0);
  run_until(&f->loop, all_up, f);
  settle(f);

  assert_int_equal(f->p[0].opens, 0); /* its own keys, scanned again, are not news */
  assert_true(f->p[1].opens >= 3);    /* "one" again from the scan, and "two" */
  assert_int_equal(stats(&f->p[0]).outages, 1);
  assert_int_equal(stats(&f->p[1]).outages, 1);
  assert_int_equal(stored_until(f, "llmux:", "groq", "two"), w + REST);
  teardown_fix(f);
}

static void redis_restarted_gets_what_was_decided_meanwhile(void **state) {
  int64_t w = llmux_breaker_shared_wall_ms();
  uint64_t errors_before;
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  start_proc(f, 0, NULL);
  start_proc(f, 1, NULL);
  run_until(&f->loop, all_up, f);
  errors_before = stats(&f->p[0]).errors;

  redis_kill(&f->srv);
  run_until(&f->loop, all_down, f);
  assert_true(stats(&f->p[0]).errors > errors_before);
  assert_int_equal(stats(&f->p[0]).outages, 1);
  assert_non_null(strstr(stats(&f->p[0]).last_error, "127.0.0.1"));
  /* Decided while down: an opening that lasts, one closed again, one over
   * before Redis is back. */
  assert_int_equal(llmux_breaker_shared_opened(f->p[0].b, "groq", "lasts", w, w + REST), 0);
  assert_int_equal(llmux_breaker_shared_opened(f->p[0].b, "groq", "closed", w, w + REST), 0);
  assert_int_equal(llmux_breaker_shared_recovered(f->p[0].b, "groq", "closed", w + 1), 0);
  assert_int_equal(llmux_breaker_shared_opened(f->p[0].b, "groq", "over",
                                               llmux_breaker_shared_wall_ms() - 1000,
                                               llmux_breaker_shared_wall_ms() + 100), 0);
  assert_int_equal(stats(&f->p[0]).unsent, 3);
  assert_int_equal(llmux_breaker_shared_sync(f->p[0].b, on_synced, f), LLMUX_ECONNREFUSED);
  msleep(200);

  redis_start(&f->srv); /* empty: restarted without persistence */
  run_until(&f->loop, all_up, f);
  wait_opens(f, &f->p[1], 1);
  settle(f);

  assert_int_equal(f->p[1].opens, 1);
  assert_string_equal(f->p[1].model, "lasts");
  assert_int_equal(f->p[1].until, w + REST);
  assert_int_equal(f->p[1].closes, 1); /* "closed": its latest word */
  assert_string_equal(f->p[1].closed_model, "closed");
  assert_int_equal(stored_until(f, "llmux:", "groq", "lasts"), w + REST);
  assert_int_equal(stored_until(f, "llmux:", "groq", "closed"), 0);
  assert_int_equal(stored_until(f, "llmux:", "groq", "over"), 0);
  assert_int_equal(stats(&f->p[0]).unsent, 0);
  assert_int_equal(stats(&f->p[0]).outages, 1);
  teardown_fix(f);
}

static void a_slow_redis_counts_as_down_and_the_opening_gets_through_once(void **state) {
  opts_t o = {.timeout_ms = 100};
  int64_t w = llmux_breaker_shared_wall_ms();
  uint64_t errors_before;
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  start_proc(f, 0, &o);
  start_proc(f, 1, NULL);
  run_until(&f->loop, all_up, f);
  errors_before = stats(&f->p[0]).errors;
  freeReplyObject(redis_admin(&f->srv, "CLIENT PAUSE 1500 ALL"));

  assert_int_equal(llmux_breaker_shared_opened(f->p[0].b, "groq", "m", w, w + REST), 0);
  run_until(&f->loop, first_down, f); /* p[1] waits on nothing: it stays up */
  assert_true(stats(&f->p[0]).errors > errors_before);
  assert_non_null(strstr(stats(&f->p[0]).last_error, "no reply within 100 ms"));
  run_until(&f->loop, all_up, f);
  settle(f);

  assert_int_equal(f->p[1].opens, 1);
  assert_int_equal(f->p[1].until, w + REST);
  assert_int_equal(stats(&f->p[0]).unsent, 0);
  teardown_fix(f);
}

/* ---- Route tables wired as fleet_breakers.c does ------------------------------------ */

#define MODELS "[model m]\ntier = 3\n"
#define PROVIDER(name) \
  "[provider " name "]\nplugin = openai\nbase_url = http://127.0.0.1:1/v1\npriority = 1\n"
static const char two_routes[] = MODELS PROVIDER("a") PROVIDER("b")
    "[route a m]\nid = a-m\n[route b m]\nid = b-m\n";

static llmux_config_t *load_config(void) {
  char dir[64], path[96];
  llmux_config_t *cfg = NULL;
  llmux_diag_t diag;
  FILE *fp;
  snprintf(dir, sizeof(dir), "/tmp/llmux-breakers-XXXXXX");
  if (mkdtemp(dir) == NULL) abort();
  snprintf(path, sizeof(path), "%s/llmux.ini", dir);
  fp = fopen(path, "w");
  if (fp == NULL) abort();
  fputs(two_routes, fp);
  fclose(fp);
  llmux_diag_init(&diag);
  if (llmux_config_load(path, &cfg, &diag) != 0) llmux_diag_print(&diag, stderr);
  llmux_diag_free(&diag);
  unlink(path);
  rmdir(dir);
  assert_non_null(cfg);
  return cfg;
}

static void wire(proc_t *p, const llmux_config_t *cfg, uint64_t base) {
  llmux_router_options_t o;
  llmux_router_options_default(&o);
  o.failures = 1;
  o.cooldown_ms = 30000;
  p->base = base;
  assert_int_equal(llmux_route_table_new(&p->table), 0);
  assert_int_equal(llmux_router_new_shared(cfg, &o, p->table, &p->router), 0);
  llmux_route_table_on_change(p->table, on_change, p);
}

static size_t route_index(const llmux_config_t *cfg, const char *provider) {
  size_t i;
  for (i = 0; i < cfg->nroutes; i++)
    if (strcmp(cfg->routes[i]->provider->name, provider) == 0) return i;
  fail_msg("no route of %s", provider);
  return 0;
}

typedef struct plan_s {
  const llmux_route_conf_t *routes[4];
  llmux_route_skip_t skipped[4];
  llmux_route_plan_t p;
} plan_t;

/* The order p would try the routes of model m in, now. */
static const char *order(const llmux_config_t *cfg, proc_t *p, plan_t *pl, char *out,
                         size_t n) {
  llmux_resolution_t res;
  size_t i, len = 0;
  memset(pl, 0, sizeof(*pl));
  pl->p.routes = pl->routes;
  pl->p.skipped = pl->skipped;
  pl->p.cap = LLMUX_COUNTOF(pl->routes);
  assert_int_equal(llmux_resolve(cfg, "m", &res), 0);
  assert_true(llmux_router_order(p->router, &res, NULL, proc_now(p), &pl->p) >= 0);
  out[0] = '\0';
  for (i = 0; i < pl->p.nroutes; i++)
    len += (size_t)snprintf(out + len, n - len, "%s%s", i ? " " : "", pl->routes[i]->id);
  return out;
}

static int rests(void *arg) {
  proc_t *p = arg;
  llmux_route_stats_t st;
  llmux_router_stats(p->router, 0, proc_now(p), &st);
  return st.state == LLMUX_BREAKER_OPEN;
}

static int closed_again(void *arg) { return !rests(arg); }

static void a_route_cooled_down_on_one_gateway_is_skipped_by_the_other(void **state) {
  llmux_config_t *cfg;
  proc_t *a, *b;
  plan_t pl;
  char buf[64];
  size_t am;
  uint64_t until_b;
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  cfg = load_config();
  am = route_index(cfg, "a");
  assert_int_equal(am, 0);
  f = setup_fix();
  a = start_proc(f, 0, NULL);
  b = start_proc(f, 1, NULL);
  /* Two monotonic clocks that share no origin. */
  wire(a, cfg, 1000000);
  wire(b, cfg, 777);
  run_until(&f->loop, all_up, f);
  assert_string_equal(order(cfg, b, &pl, buf, sizeof(buf)), "a-m b-m");

  llmux_router_report(a->router, am, LLMUX_OUTCOME_FAILURE, 0, proc_now(a));
  assert_string_equal(order(cfg, a, &pl, buf, sizeof(buf)), "b-m");
  run_until(&f->loop, rests, b);

  assert_string_equal(order(cfg, b, &pl, buf, sizeof(buf)), "b-m");
  assert_int_equal(pl.p.nskipped, 1);
  assert_int_equal(pl.skipped[0].reason, LLMUX_SKIP_COOLDOWN);
  /* For the same time, on B's clock (to within the test's own steps). */
  until_b = pl.skipped[0].until_ms;
  assert_true(until_b > proc_now(b) + 25000 && until_b < proc_now(b) + 31000);
  assert_int_equal(llmux_router_allow(b->router, am, proc_now(b)), LLMUX_ROUTER_DENY);

  /* A's probe, when A's rest is over, succeeds: B closes too, no probe. */
  {
    uint64_t later;
    llmux_route_stats_t st;
    llmux_router_stats(a->router, am, proc_now(a), &st);
    later = st.until_ms;
    assert_int_equal(llmux_router_allow(a->router, am, later), LLMUX_ROUTER_PROBE);
    llmux_router_report(a->router, am, LLMUX_OUTCOME_SUCCESS, 10, later);
  }
  run_until(&f->loop, closed_again, b);
  assert_string_equal(order(cfg, b, &pl, buf, sizeof(buf)), "a-m b-m");
  assert_int_equal(llmux_router_allow(b->router, am, proc_now(b)), LLMUX_ROUTER_ALLOW);
  teardown_fix(f);
  llmux_config_free(cfg);
}

static void a_gateway_that_trips_while_redis_is_down_rests_the_route_everywhere_after(
    void **state) {
  llmux_config_t *cfg;
  proc_t *a, *b;
  plan_t pl;
  char buf[64];
  size_t am;
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  cfg = load_config();
  am = route_index(cfg, "a");
  f = setup_fix();
  a = start_proc(f, 0, NULL);
  b = start_proc(f, 1, NULL);
  wire(a, cfg, 5000);
  wire(b, cfg, 0);
  run_until(&f->loop, all_up, f);
  redis_kill(&f->srv);
  run_until(&f->loop, all_down, f);

  llmux_router_report(a->router, am, LLMUX_OUTCOME_FAILURE, 0, proc_now(a));
  /* Fail-open: A rests the route on its own, B still uses it. */
  assert_string_equal(order(cfg, a, &pl, buf, sizeof(buf)), "b-m");
  run_for_ms(&f->loop, 100);
  assert_string_equal(order(cfg, b, &pl, buf, sizeof(buf)), "a-m b-m");

  redis_start(&f->srv);
  run_until(&f->loop, all_up, f);
  run_until(&f->loop, rests, b);
  assert_string_equal(order(cfg, b, &pl, buf, sizeof(buf)), "b-m");
  teardown_fix(f);
  llmux_config_free(cfg);
}

/* ---- Options ------------------------------------------------------------------------- */

static void bad_options_are_refused_with_a_reason(void **state) {
  llmux_breaker_shared_options_t o;
  llmux_breaker_shared_t *b = (llmux_breaker_shared_t *)1;
  uv_loop_t loop;
  char err[256] = "";
  (void)state;
  uv_loop_init(&loop);
  memset(&o, 0, sizeof(o));
  o.url = "redis://:pw@127.0.0.1:6379";
  o.on_open = on_open;
  o.on_close = on_close;
  assert_int_equal(llmux_breaker_shared_new(&loop, &o, &b, err, sizeof(err)), LLMUX_EINVAL);
  assert_non_null(strstr(err, "shared_state_password_env"));
  assert_null(b);
  o.url = "redis://127.0.0.1:6379";
  o.prefix = "a b:";
  assert_int_equal(llmux_breaker_shared_new(&loop, &o, &b, err, sizeof(err)), LLMUX_EINVAL);
  assert_non_null(strstr(err, "spaces"));
  o.prefix = NULL;
  o.on_close = NULL;
  assert_int_equal(llmux_breaker_shared_new(&loop, &o, &b, err, sizeof(err)), LLMUX_EINVAL);
  close_loop(&loop);
}

static void words_with_bad_names_or_times_are_refused(void **state) {
  llmux_breaker_shared_options_t o;
  llmux_breaker_shared_stats_t st;
  llmux_breaker_shared_t *b = NULL;
  proc_t p;
  uv_loop_t loop;
  char big[1100];
  (void)state;
  uv_loop_init(&loop);
  memset(&p, 0, sizeof(p));
  memset(&o, 0, sizeof(o));
  o.url = "redis://127.0.0.1:1"; /* never started */
  o.on_open = on_open;
  o.on_close = on_close;
  o.arg = &p;
  assert_int_equal(llmux_breaker_shared_new(&loop, &o, &b, NULL, 0), 0);
  memset(big, 'x', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  assert_int_equal(llmux_breaker_shared_opened(b, "", "m", 1, 2), LLMUX_EINVAL);
  assert_int_equal(llmux_breaker_shared_opened(b, "p", big, 1, 2), LLMUX_EINVAL);
  assert_int_equal(llmux_breaker_shared_opened(b, "p", "m", 2, 2), LLMUX_EINVAL);
  assert_int_equal(llmux_breaker_shared_recovered(b, "p", NULL, 1), LLMUX_EINVAL);
  assert_int_equal(llmux_breaker_shared_opened(b, "p", "m", 1, 2), 0);
  llmux_breaker_shared_stats(b, &st);
  assert_int_equal(st.unsent, 1); /* kept while not up */
  assert_false(st.up);
  llmux_breaker_shared_close(b, NULL, NULL); /* never started: freed as the loop runs */
  close_loop(&loop);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(an_opening_reaches_the_other_process_with_its_times),
    cmocka_unit_test(a_close_reaches_the_other_process_and_deletes_the_key),
    cmocka_unit_test(a_process_ignores_its_own_messages),
    cmocka_unit_test(a_longer_opening_wins_over_a_shorter_one),
    cmocka_unit_test(a_close_does_not_end_an_opening_that_began_after_it),
    cmocka_unit_test(two_prefixes_do_not_see_each_other),
    cmocka_unit_test(a_process_started_later_learns_every_live_opening_at_connect),
    cmocka_unit_test(the_one_learnt_at_connect_has_its_times),
    cmocka_unit_test(a_lost_subscription_is_made_up_for_by_the_scan_without_echoes),
    cmocka_unit_test(redis_restarted_gets_what_was_decided_meanwhile),
    cmocka_unit_test(a_slow_redis_counts_as_down_and_the_opening_gets_through_once),
    cmocka_unit_test(a_route_cooled_down_on_one_gateway_is_skipped_by_the_other),
    cmocka_unit_test(a_gateway_that_trips_while_redis_is_down_rests_the_route_everywhere_after),
    cmocka_unit_test(bad_options_are_refused_with_a_reason),
    cmocka_unit_test(words_with_bad_names_or_times_are_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
