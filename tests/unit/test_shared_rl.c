/* The shared rate-limit store: two stores on one loop stand for two gateway
 * processes (each has its own two connections to a real redis-server
 * started by the test). Time is the tests' (every store's shared clock is
 * now_ms as given), so windows never move while a test runs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "shared/rl_shared.h"
#include "test_shared_support.h"

#define NOW 1700000040000ull /* a whole second: the minute window's slot starts */
#define WINDOW_WAIT 5000u    /* a retry-after above this is a window, not the gate */

static const llmux_rl_key_t route = {"groq", "llama-3.3-70b-versatile"};
static const llmux_rl_key_t provider = {"groq", NULL};

typedef struct {
  uv_loop_t loop;
  redis_server_t srv;
  char url[64];
  llmux_rl_store_t *s[2];
  int closed;
  int synced;
} fix_t;

typedef struct {
  const char *prefix;
  const char *password;
  int fail_closed;
  unsigned timeout_ms;
  uint64_t rpm, tpm;
  int no_limits; /* leave the route unknown until the test configures it */
  int refresh;
} opts_t;

static llmux_rl_store_t *new_store(fix_t *f, const opts_t *o) {
  llmux_rl_shared_options_t so;
  llmux_rl_store_t *s = NULL;
  llmux_limits_t l;
  char err[256];
  memset(&so, 0, sizeof(so));
  so.url = f->url;
  so.password = o->password;
  so.prefix = o->prefix;
  so.fail_closed = o->fail_closed;
  so.refresh = o->refresh;
  so.timeout_ms = o->timeout_ms ? o->timeout_ms : 2000; /* ASan on a busy CI box */
  so.backoff_min_ms = 20;
  so.backoff_max_ms = 200;
  so.has_clock_offset = 1;
  so.clock_offset_ms = 0;
  assert_int_equal(llmux_rl_shared_new(&f->loop, &so, &s, err, sizeof(err)), 0);
  memset(&l, 0, sizeof(l));
  l.requests_per_minute = o->rpm;
  l.tokens_per_minute = o->tpm;
  if (!o->no_limits) assert_int_equal(llmux_rl_set_limits(s, &route, &l), 0);
  assert_int_equal(llmux_rl_shared_start(s), 0);
  return s;
}

static fix_t *setup_fix(const char *server_password) {
  fix_t *f = calloc(1, sizeof(*f));
  uv_loop_init(&f->loop);
  if (server_password) snprintf(f->srv.password, sizeof(f->srv.password), "%s", server_password);
  redis_start(&f->srv);
  redis_url(&f->srv, f->url, sizeof(f->url));
  return f;
}

static void on_closed(llmux_rl_store_t *s, int status, void *arg) {
  ((fix_t *)arg)->closed++;
}

static int all_closed(void *arg) {
  fix_t *f = arg;
  return f->closed == (f->s[0] != NULL) + (f->s[1] != NULL);
}

static void teardown_fix(fix_t *f) {
  int i;
  for (i = 0; i < 2; i++)
    if (f->s[i]) llmux_rl_shared_close(f->s[i], on_closed, f);
  run_until(&f->loop, all_closed, f);
  close_loop(&f->loop);
  redis_stop(&f->srv);
  free(f);
}

static llmux_rl_shared_stats_t stats(llmux_rl_store_t *s) {
  llmux_rl_shared_stats_t st;
  llmux_rl_shared_stats(s, &st);
  return st;
}

static int both_up(void *arg) {
  fix_t *f = arg;
  return (!f->s[0] || stats(f->s[0]).up) && (!f->s[1] || stats(f->s[1]).up);
}

static int both_down(void *arg) {
  fix_t *f = arg;
  return (!f->s[0] || !stats(f->s[0]).up) && (!f->s[1] || !stats(f->s[1]).up);
}

static int has_failed(void *arg) {
  llmux_rl_shared_stats_t st = stats(arg);
  return st.errors > 0 && st.last_error[0] != '\0';
}

static void on_synced(llmux_rl_store_t *s, int status, void *arg) {
  assert_int_equal(status, 0);
  ((fix_t *)arg)->synced++;
}

static int synced_one(void *arg) { return ((fix_t *)arg)->synced == 1; }

/* Until every change made so far is in Redis and in both mirrors: a first
 * round of barriers, one store after the other, puts every store's changes
 * in Redis; a second makes every store hear all of them. */
static void settle(fix_t *f) {
  int round, i;
  for (round = 0; round < 2; round++) {
    for (i = 0; i < 2; i++) {
      if (f->s[i] == NULL) continue;
      f->synced = 0;
      assert_int_equal(llmux_rl_shared_sync(f->s[i], on_synced, f), 0);
      run_until(&f->loop, synced_one, f);
    }
  }
}

static int check(llmux_rl_store_t *s, const llmux_rl_key_t *k, uint64_t tokens,
                 uint64_t *ra) {
  uint64_t dummy;
  return llmux_rl_check(s, k, tokens, NOW, ra ? ra : &dummy);
}

static void reserve_commit(llmux_rl_store_t *s, const llmux_rl_key_t *k, uint64_t tokens) {
  llmux_rl_reservation_t r;
  memset(&r, 0, sizeof(r));
  assert_int_equal(llmux_rl_reserve(s, k, tokens, NOW, &r), 0);
  llmux_rl_commit(&r, tokens, NOW);
}

static uint64_t used(llmux_rl_store_t *s, int dim) {
  llmux_rl_snapshot_t snap;
  assert_int_equal(llmux_rl_snapshot(s, &route, NOW, &snap), 0);
  return snap.dims[dim].used;
}

/* What Redis itself counts for the route's minute window (requests). */
static long long redis_requests(fix_t *f, const char *prefix) {
  char key[160];
  redisReply *r;
  long long n;
  snprintf(key, sizeof(key), "%srl:r:%zu:%s:%s", prefix, strlen(route.provider),
           route.provider, route.model);
  r = redis_admin(&f->srv, "EVAL %s 1 %s",
                  "local n = 0 local h = redis.call('HGETALL', KEYS[1]) "
                  "for i = 1, #h, 2 do if string.sub(h[i], 1, 2) == '0r' then "
                  "n = n + tonumber(h[i + 1]) end end return n",
                  key);
  assert_int_equal(r->type, REDIS_REPLY_INTEGER);
  n = r->integer;
  freeReplyObject(r);
  return n;
}

/* ---- Exact for sequential requests -------------------------------------------- */

static void sequential_requests_over_two_processes_hold_the_limit_exactly(void **state) {
  opts_t o = {.rpm = 10};
  uint64_t ra = 0;
  fix_t *f;
  int i;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix(NULL);
  f->s[0] = new_store(f, &o);
  f->s[1] = new_store(f, &o);
  run_until(&f->loop, both_up, f);
  for (i = 0; i < 10; i++) {
    llmux_rl_store_t *s = f->s[i % 2];
    assert_int_equal(check(s, &route, 1, &ra), 0);
    reserve_commit(s, &route, 1);
    settle(f);
  }
  assert_int_equal(check(f->s[0], &route, 1, &ra), LLMUX_EAGAIN);
  assert_true(ra > WINDOW_WAIT); /* refused for the window, not for a confirmation */
  assert_int_equal(check(f->s[1], &route, 1, &ra), LLMUX_EAGAIN);
  assert_true(ra > WINDOW_WAIT);
  assert_int_equal(used(f->s[0], LLMUX_RL_REQ_MINUTE), 10);
  assert_int_equal(used(f->s[1], LLMUX_RL_REQ_MINUTE), 10);
  assert_int_equal(redis_requests(f, "llmux:"), 10);
  assert_int_equal(stats(f->s[0]).instances, 2);
  teardown_fix(f);
}

static void on_settle_cb(llmux_rl_settle_t *w) {
  ((fix_t *)w->data)->synced++;
}

/* The race Refreshing closes: B's change is in Redis (B's answer could have
 * gone out) but not yet in A's mirror. Beyond its partition A asks for a
 * refresh instead of admitting on the stale mirror, and after it refuses.
 * Settling: a mark is settled once Redis answered what came before it. */
static void beyond_its_partition_a_process_refreshes_before_admitting(void **state) {
  opts_t o = {.rpm = 2, .refresh = 1};
  llmux_rl_settle_t w;
  uint64_t ra = 0, mark;
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix(NULL);
  f->s[0] = new_store(f, &o);
  f->s[1] = new_store(f, &o);
  run_until(&f->loop, both_up, f);
  settle(f);
  assert_int_equal(stats(f->s[0]).instances, 2); /* partitions of 1 */
  assert_int_equal(check(f->s[0], &route, 1, &ra), 0); /* within A's partition */
  reserve_commit(f->s[0], &route, 1);
  settle(f);
  reserve_commit(f->s[1], &route, 1); /* queued, not yet run: A cannot know */
  mark = llmux_rl_shared_mark(f->s[1]);
  assert_false(llmux_rl_shared_settled(f->s[1], mark));
  /* The stale mirror would admit a third request... */
  llmux_rl_shared_assume_fresh(f->s[0], 1);
  assert_int_equal(check(f->s[0], &route, 1, &ra), 0);
  llmux_rl_shared_assume_fresh(f->s[0], 0);
  /* ...so A asks for a refresh first. */
  assert_int_equal(check(f->s[0], &route, 1, &ra), LLMUX_RL_ESTALE);
  memset(&w, 0, sizeof(w));
  w.data = f;
  f->synced = 0;
  assert_int_equal(llmux_rl_shared_refresh(f->s[0], &w, on_settle_cb), 0);
  run_until(&f->loop, synced_one, f);
  assert_true(llmux_rl_shared_settled(f->s[1], mark)); /* B's change was answered */
  llmux_rl_shared_assume_fresh(f->s[0], 1);
  assert_int_equal(check(f->s[0], &route, 1, &ra), LLMUX_EAGAIN);
  llmux_rl_shared_assume_fresh(f->s[0], 0);
  /* Settling waits for the mark, and a cancelled waiter never runs. */
  reserve_commit(f->s[1], &route, 0);
  mark = llmux_rl_shared_mark(f->s[1]);
  f->synced = 0;
  llmux_rl_shared_settle(f->s[1], mark, &w, on_settle_cb);
  {
    llmux_rl_settle_t gone;
    memset(&gone, 0, sizeof(gone));
    gone.data = f;
    llmux_rl_shared_settle(f->s[1], mark, &gone, on_settle_cb);
    llmux_rl_shared_settle_cancel(&gone);
  }
  assert_int_equal(f->synced, 0);
  run_until(&f->loop, synced_one, f);
  run_for_ms(&f->loop, 20);
  assert_int_equal(f->synced, 1);
  teardown_fix(f);
}

static void a_route_configured_later_starts_from_the_fleet_count(void **state) {
  opts_t a = {.rpm = 3}, b = {.no_limits = 1};
  llmux_limits_t l;
  fix_t *f;
  int i;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix(NULL);
  f->s[0] = new_store(f, &a);
  run_until(&f->loop, both_up, f);
  for (i = 0; i < 3; i++) reserve_commit(f->s[0], &route, 1);
  settle(f);
  f->s[1] = new_store(f, &b); /* a process started after those requests */
  run_until(&f->loop, both_up, f);
  memset(&l, 0, sizeof(l));
  l.requests_per_minute = 3;
  assert_int_equal(llmux_rl_set_limits(f->s[1], &route, &l), 0); /* e.g. a reload */
  settle(f);
  assert_int_equal(used(f->s[1], LLMUX_RL_REQ_MINUTE), 3);
  assert_int_equal(check(f->s[1], &route, 1, NULL), LLMUX_EAGAIN);
  teardown_fix(f);
}

/* ---- Bounded under concurrency ------------------------------------------------- */

typedef struct {
  fix_t *f;
  uint64_t pending;
} progress_t;

static int progressed(void *arg) {
  progress_t *p = arg;
  uint64_t now = stats(p->f->s[0]).pending + stats(p->f->s[1]).pending;
  return now == 0 || now < p->pending;
}

enum { ALL_AT_ONCE, TAKING_TURNS, ONE_BUSY };
static const char *const crowd_names[] = {"all at once", "taking turns", "one busy"};

/* 64 clients, half on each process, all trying in each round; or the
 * processes take turns, so one decides while the other's reservations are
 * in flight; or all on the first process while the second (counted in N)
 * idles. A round ends when some confirmation came back; refused clients try
 * again, until each got in or was refused for the window. Returns how many
 * got in. */
static int crowd(fix_t *f, int mode) {
  enum { CLIENTS = 64 };
  llmux_rl_reservation_t res[CLIENTS];
  int done[CLIENTS] = {0}, admitted = 0, left = CLIENTS, i, round;
  uint64_t ra;
  memset(res, 0, sizeof(res));
  for (round = 0; left > 0; round++) {
    progress_t p = {f, 0};
    assert_true(round < 10000);
    for (i = 0; i < CLIENTS; i++) {
      llmux_rl_store_t *s = f->s[mode == ONE_BUSY ? 0 : i % 2];
      if (done[i] || (mode == TAKING_TURNS && i % 2 != round % 2)) continue;
      if (check(s, &route, 1, &ra) == 0) {
        assert_int_equal(llmux_rl_reserve(s, &route, 1, NOW, &res[i]), 0);
        admitted++;
        done[i] = 1;
        left--;
      } else if (ra > WINDOW_WAIT) {
        done[i] = 2; /* refused: the window is full */
        left--;
      }
    }
    p.pending = stats(f->s[0]).pending + stats(f->s[1]).pending;
    if (p.pending) run_until(&f->loop, progressed, &p);
  }
  for (i = 0; i < CLIENTS; i++)
    if (done[i] == 1) llmux_rl_commit(&res[i], 1, NOW);
  return admitted;
}

static void concurrent_requests_overshoot_by_at_most_one_per_process(void **state) {
  enum { LIMIT = 20 };
  opts_t o = {.rpm = LIMIT};
  int mode, admitted;
  (void)state;
  SKIP_WITHOUT_REDIS();
  for (mode = ALL_AT_ONCE; mode <= ONE_BUSY; mode++) {
    fix_t *f = setup_fix(NULL);
    f->s[0] = new_store(f, &o);
    f->s[1] = new_store(f, &o);
    run_until(&f->loop, both_up, f);
    settle(f); /* each has heard of the other: N = 2 (see the bound) */
    assert_int_equal(stats(f->s[0]).instances, 2);
    assert_int_equal(stats(f->s[1]).instances, 2);
    admitted = crowd(f, mode);
    fprintf(stderr, "  %s: %d admitted for a limit of %d\n", crowd_names[mode], admitted,
            LIMIT);
    assert_true(admitted >= LIMIT);
    assert_true(admitted <= LIMIT + 2);
    /* Alone, a process goes past its partition one request at a time. */
    if (mode == ONE_BUSY) assert_int_equal(admitted, LIMIT);
    settle(f);
    assert_int_equal(redis_requests(f, "llmux:"), admitted);
    assert_int_equal(used(f->s[0], LLMUX_RL_REQ_MINUTE), (uint64_t)admitted);
    assert_int_equal(used(f->s[1], LLMUX_RL_REQ_MINUTE), (uint64_t)admitted);
    teardown_fix(f);
  }
}

/* ---- Tokens, commits and releases ---------------------------------------------- */

static void a_commit_below_the_estimate_gives_tokens_back_to_the_fleet(void **state) {
  opts_t o = {.tpm = 150};
  llmux_rl_reservation_t r;
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix(NULL);
  f->s[0] = new_store(f, &o);
  f->s[1] = new_store(f, &o);
  run_until(&f->loop, both_up, f);
  memset(&r, 0, sizeof(r));
  assert_int_equal(llmux_rl_reserve(f->s[0], &route, 100, NOW, &r), 0);
  settle(f);
  assert_int_equal(check(f->s[1], &route, 60, NULL), LLMUX_EAGAIN);
  llmux_rl_commit(&r, 20, NOW);
  settle(f);
  assert_int_equal(check(f->s[1], &route, 60, NULL), 0);
  assert_int_equal(used(f->s[1], LLMUX_RL_TOK_MINUTE), 20);
  teardown_fix(f);
}

static void a_release_gives_the_request_back_to_the_fleet(void **state) {
  opts_t o = {.rpm = 1};
  llmux_rl_reservation_t r;
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix(NULL);
  f->s[0] = new_store(f, &o);
  f->s[1] = new_store(f, &o);
  run_until(&f->loop, both_up, f);
  memset(&r, 0, sizeof(r));
  assert_int_equal(llmux_rl_reserve(f->s[0], &route, 1, NOW, &r), 0);
  settle(f);
  assert_int_equal(check(f->s[1], &route, 1, NULL), LLMUX_EAGAIN);
  llmux_rl_release(&r, NOW);
  settle(f);
  assert_int_equal(check(f->s[1], &route, 1, NULL), 0);
  assert_int_equal(redis_requests(f, "llmux:"), 0);
  teardown_fix(f);
}

/* ---- Blocks and provider headroom ------------------------------------------------ */

static void a_block_and_an_unblock_reach_the_other_process(void **state) {
  opts_t o = {.rpm = 100};
  uint64_t ra = 0;
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix(NULL);
  f->s[0] = new_store(f, &o);
  f->s[1] = new_store(f, &o);
  run_until(&f->loop, both_up, f);
  /* The provider-wide key is new to both; the second learns it from Redis. */
  assert_int_equal(llmux_rl_block(f->s[0], &provider, NOW + 30000, LLMUX_RL_BLOCK_RETRY_AFTER), 0);
  settle(f);
  assert_int_equal(check(f->s[1], &route, 1, &ra), LLMUX_EAGAIN);
  assert_int_equal(ra, 30000);
  llmux_rl_unblock(f->s[0], &provider);
  settle(f);
  assert_int_equal(check(f->s[1], &route, 1, &ra), 0);
  assert_int_equal(llmux_rl_block(f->s[1], &provider, LLMUX_RL_FOREVER,
                                  LLMUX_RL_BLOCK_SPEND_LIMIT), 0);
  settle(f);
  assert_int_equal(check(f->s[0], &route, 1, &ra), LLMUX_EAGAIN);
  assert_int_equal(ra, LLMUX_RL_FOREVER);
  teardown_fix(f);
}

static void provider_headroom_is_counted_down_by_every_process(void **state) {
  opts_t o = {.rpm = 100};
  llmux_rl_info_t info;
  llmux_rl_snapshot_t snap;
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix(NULL);
  f->s[0] = new_store(f, &o);
  f->s[1] = new_store(f, &o);
  run_until(&f->loop, both_up, f);
  memset(&info, 0, sizeof(info));
  info.size = sizeof(info);
  info.dims[LLMUX_RL_REQ_MINUTE].has_remaining = 1;
  info.dims[LLMUX_RL_REQ_MINUTE].remaining = 2;
  info.dims[LLMUX_RL_REQ_MINUTE].has_limit = 1;
  info.dims[LLMUX_RL_REQ_MINUTE].limit = 30;
  info.dims[LLMUX_RL_REQ_MINUTE].has_reset = 1;
  info.dims[LLMUX_RL_REQ_MINUTE].reset_in_ms = 20000;
  assert_int_equal(llmux_rl_apply(f->s[0], &route, &info, NOW), 0);
  settle(f);
  assert_int_equal(llmux_rl_snapshot(f->s[1], &route, NOW, &snap), 0);
  assert_true(snap.dims[LLMUX_RL_REQ_MINUTE].synced);
  assert_int_equal(snap.dims[LLMUX_RL_REQ_MINUTE].synced_remaining, 2);
  reserve_commit(f->s[1], &route, 1);
  settle(f);
  reserve_commit(f->s[0], &route, 1);
  settle(f);
  assert_int_equal(check(f->s[1], &route, 1, NULL), LLMUX_EAGAIN);
  assert_int_equal(llmux_rl_snapshot(f->s[0], &route, NOW, &snap), 0);
  assert_int_equal(snap.dims[LLMUX_RL_REQ_MINUTE].synced_remaining, 0);
  teardown_fix(f);
}

/* ---- Redis down ------------------------------------------------------------------- */

static void redis_killed_and_restarted_keeps_serving_and_merges_the_counts(void **state) {
  opts_t o = {.rpm = 100};
  fix_t *f;
  uint64_t errors_before;
  int i;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix(NULL);
  f->s[0] = new_store(f, &o);
  f->s[1] = new_store(f, &o);
  run_until(&f->loop, both_up, f);
  for (i = 0; i < 3; i++) reserve_commit(f->s[0], &route, 1);
  for (i = 0; i < 2; i++) reserve_commit(f->s[1], &route, 1);
  settle(f);
  errors_before = stats(f->s[0]).errors;
  redis_kill(&f->srv);
  run_until(&f->loop, both_down, f);
  assert_true(stats(f->s[0]).errors > errors_before);
  assert_int_equal(stats(f->s[0]).outages, 1);
  /* Fail-open: both go on deciding, on what they knew plus their own. */
  for (i = 0; i < 4; i++) {
    assert_int_equal(check(f->s[0], &route, 1, NULL), 0);
    reserve_commit(f->s[0], &route, 1);
  }
  assert_int_equal(check(f->s[1], &route, 1, NULL), 0);
  reserve_commit(f->s[1], &route, 1);
  assert_int_equal(used(f->s[0], LLMUX_RL_REQ_MINUTE), 9);
  assert_int_equal(used(f->s[1], LLMUX_RL_REQ_MINUTE), 6);
  /* Back, empty: every process adds back what it counted. */
  redis_start(&f->srv);
  run_until(&f->loop, both_up, f);
  settle(f);
  assert_int_equal(redis_requests(f, "llmux:"), 10);
  assert_int_equal(used(f->s[0], LLMUX_RL_REQ_MINUTE), 10);
  assert_int_equal(used(f->s[1], LLMUX_RL_REQ_MINUTE), 10);
  /* And sharing is back: a count on one is seen by the other. */
  reserve_commit(f->s[1], &route, 1);
  settle(f);
  assert_int_equal(used(f->s[0], LLMUX_RL_REQ_MINUTE), 11);
  teardown_fix(f);
}

static void a_slow_redis_counts_as_down_and_the_meanwhile_counts_are_added(void **state) {
  opts_t o = {.rpm = 100, .timeout_ms = 100};
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix(NULL);
  f->s[0] = new_store(f, &o);
  f->s[1] = new_store(f, &o);
  run_until(&f->loop, both_up, f);
  reserve_commit(f->s[0], &route, 1);
  reserve_commit(f->s[1], &route, 1);
  settle(f);
  freeReplyObject(redis_admin(&f->srv, "CLIENT PAUSE 1500 ALL"));
  reserve_commit(f->s[0], &route, 1); /* its script waits: the store gives up */
  reserve_commit(f->s[1], &route, 1);
  run_until(&f->loop, both_down, f);
  reserve_commit(f->s[0], &route, 1); /* counted while down */
  run_until(&f->loop, both_up, f);   /* the same Redis, data kept: added once */
  settle(f);
  assert_int_equal(redis_requests(f, "llmux:"), 5);
  assert_int_equal(used(f->s[0], LLMUX_RL_REQ_MINUTE), 5);
  assert_int_equal(used(f->s[1], LLMUX_RL_REQ_MINUTE), 5);
  teardown_fix(f);
}

static void fail_closed_answers_unavailable_while_redis_is_down(void **state) {
  opts_t o = {.rpm = 100, .fail_closed = 1};
  uint64_t ra = 0;
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = calloc(1, sizeof(*f));
  uv_loop_init(&f->loop);
  f->srv.port = free_port(); /* not started yet */
  redis_url(&f->srv, f->url, sizeof(f->url));
  f->s[0] = new_store(f, &o);
  assert_int_equal(check(f->s[0], &route, 1, &ra), LLMUX_RL_EUNAVAILABLE);
  assert_true(ra > 0);
  redis_start(&f->srv);
  run_until(&f->loop, both_up, f);
  assert_int_equal(check(f->s[0], &route, 1, &ra), 0);
  redis_kill(&f->srv);
  run_until(&f->loop, both_down, f);
  assert_int_equal(check(f->s[0], &route, 1, &ra), LLMUX_RL_EUNAVAILABLE);
  teardown_fix(f);
}

/* Changes travel as deltas applied on top of the version before them. A
 * delta that skips versions (one was missed) is not applied: the store reads
 * the whole key instead, so a forged or out-of-order delta never counts. */
static void a_delta_after_a_gap_makes_the_store_read_the_whole_key(void **state) {
  opts_t o = {.rpm = 100};
  char msg[256], key[160];
  fix_t *f;
  int i;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix(NULL);
  f->s[0] = new_store(f, &o);
  f->s[1] = new_store(f, &o);
  run_until(&f->loop, both_up, f);
  for (i = 0; i < 3; i++) reserve_commit(f->s[i % 2], &route, 1);
  settle(f);
  assert_int_equal(used(f->s[0], LLMUX_RL_REQ_MINUTE), 3);
  snprintf(key, sizeof(key), "llmux:rl:r:%zu:%s:%s", strlen(route.provider), route.provider,
           route.model);
  /* version 1000 of the key (in Redis's epoch), claiming 90 requests in
   * this second's slot */
  {
    redisReply *ep = redis_admin(&f->srv, "GET llmux:rl:epoch");
    assert_int_equal(ep->type, REDIS_REPLY_STRING);
    snprintf(msg, sizeof(msg), "D 1000 %s 2 %s 1 0 0 0 0 1 0 r %llu 90\n%s", ep->str,
             "ffffffffffffffff", (unsigned long long)(NOW / 1000), key);
    freeReplyObject(ep);
  }
  freeReplyObject(redis_admin(&f->srv, "PUBLISH llmux:rl %s", msg));
  run_for_ms(&f->loop, 50);
  settle(f);
  assert_int_equal(used(f->s[0], LLMUX_RL_REQ_MINUTE), 3);
  assert_int_equal(used(f->s[1], LLMUX_RL_REQ_MINUTE), 3);
  /* and deltas keep flowing after the read */
  reserve_commit(f->s[1], &route, 1);
  settle(f);
  assert_int_equal(used(f->s[0], LLMUX_RL_REQ_MINUTE), 4);
  assert_int_equal(redis_requests(f, "llmux:"), 4);
  teardown_fix(f);
}

/* ---- Several fleets on one Redis ------------------------------------------------- */

static void two_prefixes_do_not_see_each_other(void **state) {
  opts_t a = {.rpm = 3, .prefix = "fleet-a:"}, b = {.rpm = 3, .prefix = "fleet-b:"};
  fix_t *f;
  int i;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix(NULL);
  f->s[0] = new_store(f, &a);
  f->s[1] = new_store(f, &b);
  run_until(&f->loop, both_up, f);
  for (i = 0; i < 3; i++) {
    reserve_commit(f->s[0], &route, 1);
    settle(f);
  }
  assert_int_equal(check(f->s[0], &route, 1, NULL), LLMUX_EAGAIN);
  for (i = 0; i < 3; i++) {
    assert_int_equal(check(f->s[1], &route, 1, NULL), 0);
    reserve_commit(f->s[1], &route, 1);
    settle(f);
  }
  assert_int_equal(redis_requests(f, "fleet-a:"), 3);
  assert_int_equal(redis_requests(f, "fleet-b:"), 3);
  teardown_fix(f);
}

/* ---- Passwords --------------------------------------------------------------------- */

static void the_store_authenticates_and_a_wrong_password_is_a_clear_error(void **state) {
  opts_t good = {.rpm = 5, .password = "fleet-pw"}, bad = {.rpm = 5, .password = "nope"};
  fix_t *f;
  llmux_rl_shared_stats_t st;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix("fleet-pw");
  f->s[0] = new_store(f, &good);
  run_until(&f->loop, both_up, f);
  reserve_commit(f->s[0], &route, 1);
  settle(f);
  assert_int_equal(redis_requests(f, "llmux:"), 1);
  f->s[1] = new_store(f, &bad);
  run_until(&f->loop, has_failed, f->s[1]);
  st = stats(f->s[1]);
  assert_false(st.up);
  assert_non_null(strstr(st.last_error, "authentication failed"));
  assert_null(strstr(st.last_error, "nope"));
  teardown_fix(f);
}

static void a_bad_url_is_refused_with_a_reason(void **state) {
  llmux_rl_shared_options_t so;
  llmux_rl_store_t *s = NULL;
  uv_loop_t loop;
  char err[256] = "";
  (void)state;
  uv_loop_init(&loop);
  memset(&so, 0, sizeof(so));
  so.url = "redis://:pw@127.0.0.1:6379";
  assert_int_equal(llmux_rl_shared_new(&loop, &so, &s, err, sizeof(err)), LLMUX_EINVAL);
  assert_non_null(strstr(err, "shared_state_password_env"));
  assert_null(s);
  close_loop(&loop);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(sequential_requests_over_two_processes_hold_the_limit_exactly),
    cmocka_unit_test(beyond_its_partition_a_process_refreshes_before_admitting),
    cmocka_unit_test(a_route_configured_later_starts_from_the_fleet_count),
    cmocka_unit_test(concurrent_requests_overshoot_by_at_most_one_per_process),
    cmocka_unit_test(a_commit_below_the_estimate_gives_tokens_back_to_the_fleet),
    cmocka_unit_test(a_release_gives_the_request_back_to_the_fleet),
    cmocka_unit_test(a_block_and_an_unblock_reach_the_other_process),
    cmocka_unit_test(provider_headroom_is_counted_down_by_every_process),
    cmocka_unit_test(redis_killed_and_restarted_keeps_serving_and_merges_the_counts),
    cmocka_unit_test(a_slow_redis_counts_as_down_and_the_meanwhile_counts_are_added),
    cmocka_unit_test(fail_closed_answers_unavailable_while_redis_is_down),
    cmocka_unit_test(a_delta_after_a_gap_makes_the_store_read_the_whole_key),
    cmocka_unit_test(two_prefixes_do_not_see_each_other),
    cmocka_unit_test(the_store_authenticates_and_a_wrong_password_is_a_clear_error),
    cmocka_unit_test(a_bad_url_is_refused_with_a_reason),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
