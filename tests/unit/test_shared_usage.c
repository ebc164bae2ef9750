/* Shared tenant usage: stores on one loop stand for gateway processes (each
 * has its own two connections to a real redis-server started by the test).
 * What a process "sees" is what its on_row callback last reported for a
 * row: what the gateway would set in its usage store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "shared/usage_shared.h"
#include "test_shared_support.h"

#define NPROCS 3
#define MAX_SEEN 16

typedef struct seen_s {
  char tenant[64], model[128];
  int day;
  llmux_usage_shared_counts_t c;
} seen_t;

struct fix_s;

typedef struct proc_s {
  struct fix_s *f;
  llmux_usage_shared_t *s;
  seen_t seen[MAX_SEEN];
  size_t nseen;
  int writer;       /* as on_writer last said */
  int became_writer; /* times on_writer said 1 */
} proc_t;

typedef struct fix_s {
  uv_loop_t loop;
  redis_server_t srv;
  char url[64];
  proc_t p[NPROCS];
  int closed, to_close;
  int synced;
  int today;
} fix_t;

typedef struct {
  const char *prefix;
  int candidate;
  unsigned timeout_ms;
  unsigned lease_ms;
  int no_start;
} opts_t;

static void on_row(void *arg, const char *tenant, const char *model, int day,
                   const llmux_usage_shared_counts_t *c) {
  proc_t *p = arg;
  size_t i;
  for (i = 0; i < p->nseen; i++) {
    seen_t *s = &p->seen[i];
    if (s->day == day && strcmp(s->tenant, tenant) == 0 && strcmp(s->model, model) == 0) {
      s->c = *c;
      return;
    }
  }
  assert_true(p->nseen < MAX_SEEN);
  snprintf(p->seen[p->nseen].tenant, sizeof(p->seen[0].tenant), "%s", tenant);
  snprintf(p->seen[p->nseen].model, sizeof(p->seen[0].model), "%s", model);
  p->seen[p->nseen].day = day;
  p->seen[p->nseen++].c = *c;
}

static void on_writer(void *arg, int writer) {
  proc_t *p = arg;
  p->writer = writer;
  p->became_writer += writer;
}

static fix_t *setup_fix(void) {
  fix_t *f = calloc(1, sizeof(*f));
  int i;
  uv_loop_init(&f->loop);
  redis_start(&f->srv);
  redis_url(&f->srv, f->url, sizeof(f->url));
  f->today = (int)(time(NULL) / 86400);
  for (i = 0; i < NPROCS; i++) f->p[i].f = f;
  return f;
}

static proc_t *new_proc(fix_t *f, int i, const opts_t *o) {
  llmux_usage_shared_options_t so;
  char err[256];
  proc_t *p = &f->p[i];
  memset(&so, 0, sizeof(so));
  so.url = f->url;
  so.prefix = o->prefix;
  so.candidate = o->candidate;
  so.timeout_ms = o->timeout_ms ? o->timeout_ms : 2000; /* ASan on a busy CI box */
  so.backoff_min_ms = 20;
  so.backoff_max_ms = 200;
  so.lease_ms = o->lease_ms ? o->lease_ms : 3000;
  so.on_row = on_row;
  so.on_writer = on_writer;
  so.arg = p;
  assert_int_equal(llmux_usage_shared_new(&f->loop, &so, &p->s, err, sizeof(err)), 0);
  if (!o->no_start) assert_int_equal(llmux_usage_shared_start(p->s), 0);
  return p;
}

static void on_closed(llmux_usage_shared_t *s, int status, void *arg) {
  proc_t *p = arg;
  assert_int_equal(status, 0);
  p->s = NULL;
  p->f->closed++;
}

static int enough_closed(void *arg) {
  fix_t *f = arg;
  return f->closed == f->to_close;
}

static void close_proc(proc_t *p) {
  fix_t *f = p->f;
  f->closed = 0;
  f->to_close = 1;
  llmux_usage_shared_close(p->s, on_closed, p);
  run_until(&f->loop, enough_closed, f);
}

static void teardown_fix(fix_t *f) {
  int i;
  f->closed = f->to_close = 0;
  for (i = 0; i < NPROCS; i++) {
    if (f->p[i].s == NULL) continue;
    f->to_close++;
    llmux_usage_shared_close(f->p[i].s, on_closed, &f->p[i]);
  }
  run_until(&f->loop, enough_closed, f);
  close_loop(&f->loop);
  redis_stop(&f->srv);
  free(f);
}

static llmux_usage_shared_stats_t stats(const proc_t *p) {
  llmux_usage_shared_stats_t st;
  llmux_usage_shared_stats(p->s, &st);
  return st;
}

static int all_up(void *arg) {
  fix_t *f = arg;
  int i;
  for (i = 0; i < NPROCS; i++)
    if (f->p[i].s && !stats(&f->p[i]).up) return 0;
  return 1;
}

static int all_down(void *arg) {
  fix_t *f = arg;
  int i;
  for (i = 0; i < NPROCS; i++)
    if (f->p[i].s && stats(&f->p[i]).up) return 0;
  return 1;
}

static int is_down(void *arg) { return !stats(arg).up; }
static int is_writer(void *arg) { return ((proc_t *)arg)->writer; }

static void on_synced(llmux_usage_shared_t *s, int status, void *arg) {
  assert_int_equal(status, 0);
  ((fix_t *)arg)->synced++;
}

static int synced_one(void *arg) { return ((fix_t *)arg)->synced == 1; }

/* Until every add made so far is in Redis and every process heard it: a
 * first round of barriers puts every process's adds in Redis, a second
 * makes every process hear all of them. */
static void settle(fix_t *f) {
  int round, i;
  for (round = 0; round < 2; round++) {
    for (i = 0; i < NPROCS; i++) {
      if (f->p[i].s == NULL) continue;
      f->synced = 0;
      assert_int_equal(llmux_usage_shared_sync(f->p[i].s, on_synced, f), 0);
      run_until(&f->loop, synced_one, f);
    }
  }
}

static void add_day(proc_t *p, const char *tenant, const char *model, int day, uint64_t in,
                    uint64_t out, double cost) {
  llmux_usage_shared_counts_t d = {1, in, out, cost};
  llmux_usage_shared_add(p->s, tenant, model, day, &d);
}

static void add(proc_t *p, const char *tenant, const char *model, uint64_t in, uint64_t out,
                double cost) {
  add_day(p, tenant, model, p->f->today, in, out, cost);
}

static const seen_t *seen_day(const proc_t *p, const char *tenant, const char *model, int day) {
  size_t i;
  for (i = 0; i < p->nseen; i++)
    if (p->seen[i].day == day && strcmp(p->seen[i].tenant, tenant) == 0 &&
        strcmp(p->seen[i].model, model) == 0)
      return &p->seen[i];
  return NULL;
}

/* What a process sees for a row today: its requests, 0 if never told. */
static uint64_t requests(const proc_t *p, const char *tenant, const char *model) {
  const seen_t *s = seen_day(p, tenant, model, p->f->today);
  return s ? s->c.requests : 0;
}

static void day_text(int day, char out[11]) {
  time_t t = (time_t)day * 86400;
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, 11, "%Y-%m-%d", &tm);
}

static void row_key(const fix_t *f, const char *prefix, const char *tenant, const char *model,
                    int day, char *out, size_t n) {
  char d[11];
  day_text(day, d);
  snprintf(out, n, "%susage:%s:%zu:%s:%s", prefix, d, strlen(tenant), tenant, model);
}

/* A field of a row's hash in Redis; -1 when the row or field is missing. */
static long long redis_field(fix_t *f, const char *prefix, const char *tenant, const char *model,
                             const char *field) {
  char key[256];
  redisReply *r;
  long long v = -1;
  row_key(f, prefix, tenant, model, f->today, key, sizeof(key));
  r = redis_admin(&f->srv, "HGET %s %s", key, field);
  assert_non_null(r);
  if (r->type == REDIS_REPLY_STRING) v = strtoll(r->str, NULL, 10);
  freeReplyObject(r);
  return v;
}

static long long redis_count_keys(fix_t *f, const char *pattern) {
  redisReply *r = redis_admin(&f->srv, "EVAL %s 0 %s",
                              "return #redis.call('KEYS', ARGV[1])", pattern);
  long long n;
  assert_int_equal(r->type, REDIS_REPLY_INTEGER);
  n = r->integer;
  freeReplyObject(r);
  return n;
}

/* ---- Sharing -------------------------------------------------------------------- */

static void adds_through_two_processes_sum_in_redis_and_both_see_the_sum(void **state) {
  opts_t o = {0};
  fix_t *f;
  const seen_t *s[2];
  int i;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  new_proc(f, 0, &o);
  new_proc(f, 1, &o);
  run_until(&f->loop, all_up, f);
  for (i = 0; i < 3; i++) add(&f->p[0], "acme", "openai/gpt-4o", 10, 5, 0.001);
  for (i = 0; i < 2; i++) add(&f->p[1], "acme", "openai/gpt-4o", 20, 1, 0.5);
  settle(f);
  for (i = 0; i < 2; i++) {
    s[i] = seen_day(&f->p[i], "acme", "openai/gpt-4o", f->today);
    assert_non_null(s[i]);
    assert_int_equal(s[i]->c.requests, 5);
    assert_int_equal(s[i]->c.input_tokens, 70);
    assert_int_equal(s[i]->c.output_tokens, 17);
    assert_true(s[i]->c.cost_usd > 1.002999 && s[i]->c.cost_usd < 1.003001);
  }
  assert_int_equal(redis_field(f, "llmux:", "acme", "openai/gpt-4o", "requests"), 5);
  assert_int_equal(redis_field(f, "llmux:", "acme", "openai/gpt-4o", "input_tokens"), 70);
  assert_int_equal(redis_field(f, "llmux:", "acme", "openai/gpt-4o", "output_tokens"), 17);
  assert_int_equal(redis_field(f, "llmux:", "acme", "openai/gpt-4o", "cost_micro_usd"), 1003000);
  assert_int_equal(stats(&f->p[0]).pending_rows, 0);
  teardown_fix(f);
}

static void a_process_started_later_loads_this_months_rows(void **state) {
  opts_t o = {0};
  fix_t *f;
  int first, last_month;
  time_t t;
  struct tm tm;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  t = (time_t)f->today * 86400;
  gmtime_r(&t, &tm);
  first = f->today - (tm.tm_mday - 1); /* the first of this month */
  last_month = first - 1;
  new_proc(f, 0, &o);
  run_until(&f->loop, all_up, f);
  add(&f->p[0], "acme", "m", 1, 1, 0);
  add(&f->p[0], "acme", "m", 1, 1, 0);
  if (first != f->today) add_day(&f->p[0], "acme", "m", first, 1, 1, 0);
  add_day(&f->p[0], "acme", "m", last_month, 1, 1, 0);
  settle(f);
  new_proc(f, 1, &o); /* a process started after those requests */
  run_until(&f->loop, all_up, f);
  assert_int_equal(requests(&f->p[1], "acme", "m"), 2);
  if (first != f->today) {
    assert_non_null(seen_day(&f->p[1], "acme", "m", first));
    assert_int_equal(seen_day(&f->p[1], "acme", "m", first)->c.requests, 1);
  }
  assert_null(seen_day(&f->p[1], "acme", "m", last_month)); /* not this month's */
  teardown_fix(f);
}

static int batches_at_least(void *arg) {
  proc_t *p = arg;
  return stats(p).batches >= 2;
}

static void adds_made_while_a_batch_is_in_flight_go_together_in_the_next(void **state) {
  opts_t o = {0};
  fix_t *f;
  int i;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  new_proc(f, 0, &o);
  new_proc(f, 1, &o);
  run_until(&f->loop, all_up, f);
  /* Adds of one loop iteration: one batch. */
  for (i = 0; i < 1000; i++) add(&f->p[0], "acme", i % 2 ? "a" : "b", 1, 1, 0.000001);
  settle(f);
  assert_int_equal(stats(&f->p[0]).batches, 1);
  /* One goes at once; what comes while it is in flight waits for it. */
  add(&f->p[0], "acme", "a", 1, 1, 0);
  run_until(&f->loop, batches_at_least, &f->p[0]);
  assert_int_equal(stats(&f->p[0]).pending_rows, 1); /* in flight */
  for (i = 0; i < 500; i++) add(&f->p[0], "acme", i % 2 ? "a" : "b", 1, 1, 0);
  settle(f);
  assert_int_equal(stats(&f->p[0]).batches, 3);
  assert_int_equal(redis_field(f, "llmux:", "acme", "a", "requests"), 751);
  assert_int_equal(redis_field(f, "llmux:", "acme", "b", "requests"), 750);
  assert_int_equal(redis_field(f, "llmux:", "acme", "a", "cost_micro_usd"), 500);
  assert_int_equal(requests(&f->p[1], "acme", "a"), 751);
  assert_int_equal(requests(&f->p[1], "acme", "b"), 750);
  teardown_fix(f);
}

/* ---- Exactly once ------------------------------------------------------------------ */

static void a_batch_whose_reply_was_lost_is_sent_again_and_counted_once(void **state) {
  opts_t o = {0};
  fix_t *f;
  llmux_usage_shared_stats_t st;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  new_proc(f, 0, &o);
  new_proc(f, 1, &o);
  run_until(&f->loop, all_up, f);
  add(&f->p[0], "acme", "m", 7, 3, 0);
  settle(f);
  llmux__usage_shared_lose_next_reply(f->p[0].s);
  add(&f->p[0], "acme", "m", 7, 3, 0); /* Redis runs it; the reply is lost */
  run_until(&f->loop, is_down, &f->p[0]);
  run_until(&f->loop, all_up, f);
  settle(f);
  st = stats(&f->p[0]);
  assert_int_equal(st.resent, 1);
  assert_int_equal(st.duplicates, 1); /* Redis knew it: skipped */
  assert_int_equal(redis_field(f, "llmux:", "acme", "m", "requests"), 2);
  assert_int_equal(redis_field(f, "llmux:", "acme", "m", "input_tokens"), 14);
  assert_int_equal(requests(&f->p[0], "acme", "m"), 2);
  assert_int_equal(requests(&f->p[1], "acme", "m"), 2);
  teardown_fix(f);
}

static void a_slow_redis_counts_as_down_and_the_adds_arrive_once(void **state) {
  opts_t o = {.timeout_ms = 100};
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  new_proc(f, 0, &o);
  new_proc(f, 1, &o);
  run_until(&f->loop, all_up, f);
  add(&f->p[1], "acme", "m", 1, 1, 0);
  settle(f);
  freeReplyObject(redis_admin(&f->srv, "CLIENT PAUSE 1500 ALL"));
  add(&f->p[0], "acme", "m", 1, 1, 0); /* its batch waits: the store gives up */
  add(&f->p[0], "acme", "m", 1, 1, 0);
  run_until(&f->loop, is_down, &f->p[0]);
  assert_true(stats(&f->p[0]).errors > 0);
  add(&f->p[0], "acme", "m", 1, 1, 0); /* counted while down */
  run_until(&f->loop, all_up, f);     /* the same Redis, data kept */
  settle(f);
  assert_int_equal(redis_field(f, "llmux:", "acme", "m", "requests"), 4);
  assert_int_equal(requests(&f->p[0], "acme", "m"), 4);
  assert_int_equal(requests(&f->p[1], "acme", "m"), 4);
  teardown_fix(f);
}

static void redis_killed_and_restarted_loses_no_request_and_shares_again(void **state) {
  opts_t o = {0};
  fix_t *f;
  uint64_t errors_before;
  int i;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  new_proc(f, 0, &o);
  new_proc(f, 1, &o);
  run_until(&f->loop, all_up, f);
  for (i = 0; i < 3; i++) add(&f->p[0], "acme", "m", 10, 1, 0.01);
  for (i = 0; i < 2; i++) add(&f->p[1], "acme", "m", 10, 1, 0.01);
  settle(f);
  errors_before = stats(&f->p[0]).errors;
  redis_kill(&f->srv);
  run_until(&f->loop, all_down, f);
  assert_true(stats(&f->p[0]).errors > errors_before);
  assert_int_equal(stats(&f->p[0]).outages, 1);
  for (i = 0; i < 4; i++) add(&f->p[0], "acme", "m", 10, 1, 0.01); /* while down */
  assert_int_equal(stats(&f->p[0]).pending_rows, 1);
  /* Back, empty: the totals known are restored and the meanwhile added. */
  redis_start(&f->srv);
  run_until(&f->loop, all_up, f);
  settle(f);
  assert_int_equal(redis_field(f, "llmux:", "acme", "m", "requests"), 9);
  assert_int_equal(redis_field(f, "llmux:", "acme", "m", "input_tokens"), 90);
  assert_int_equal(redis_field(f, "llmux:", "acme", "m", "cost_micro_usd"), 90000);
  assert_int_equal(requests(&f->p[0], "acme", "m"), 9);
  assert_int_equal(requests(&f->p[1], "acme", "m"), 9);
  /* And sharing is back. */
  add(&f->p[1], "acme", "m", 10, 1, 0.01);
  settle(f);
  assert_int_equal(requests(&f->p[0], "acme", "m"), 10);
  assert_int_equal(redis_field(f, "llmux:", "acme", "m", "requests"), 10);
  teardown_fix(f);
}

static void redis_flushed_while_connected_gets_the_totals_back(void **state) {
  opts_t o = {0};
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  new_proc(f, 0, &o);
  new_proc(f, 1, &o);
  run_until(&f->loop, all_up, f);
  add(&f->p[0], "acme", "m", 1, 1, 0);
  add(&f->p[1], "acme", "m", 1, 1, 0);
  settle(f);
  freeReplyObject(redis_admin(&f->srv, "FLUSHALL"));
  add(&f->p[0], "acme", "m", 1, 1, 0); /* its reply names a new epoch */
  run_until(&f->loop, is_down, &f->p[0]);
  run_until(&f->loop, all_up, f);
  settle(f);
  assert_int_equal(redis_field(f, "llmux:", "acme", "m", "requests"), 3);
  assert_int_equal(requests(&f->p[0], "acme", "m"), 3);
  assert_int_equal(requests(&f->p[1], "acme", "m"), 3);
  teardown_fix(f);
}

/* ---- The writer ------------------------------------------------------------------- */

static char *lease_holder(fix_t *f) {
  redisReply *r = redis_admin(&f->srv, "GET llmux:usage:writer");
  char *v = r->type == REDIS_REPLY_STRING ? strdup(r->str) : NULL;
  freeReplyObject(r);
  return v;
}

static int one_writer(void *arg) {
  fix_t *f = arg;
  return f->p[0].writer + f->p[1].writer == 1;
}

static void the_writer_lease_is_held_by_one_and_taken_over_when_it_closes(void **state) {
  opts_t cand = {.candidate = 1, .lease_ms = 3000};
  fix_t *f;
  proc_t *w, *other;
  char *before, *after;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  new_proc(f, 0, &cand);
  new_proc(f, 1, &cand);
  run_until(&f->loop, all_up, f);
  run_until(&f->loop, one_writer, f);
  run_for_ms(&f->loop, 1500); /* every process tried at least once more */
  assert_int_equal(f->p[0].writer + f->p[1].writer, 1);
  assert_int_equal(f->p[0].became_writer + f->p[1].became_writer, 1);
  w = f->p[0].writer ? &f->p[0] : &f->p[1];
  other = w == &f->p[0] ? &f->p[1] : &f->p[0];
  assert_true(llmux_usage_shared_is_writer(w->s));
  assert_false(llmux_usage_shared_is_writer(other->s));
  before = lease_holder(f);
  assert_non_null(before);
  close_proc(w); /* gives the lease back */
  after = lease_holder(f);
  assert_true(after == NULL || strcmp(after, before) != 0);
  run_until(&f->loop, is_writer, other);
  assert_int_equal(other->became_writer, 1);
  free(before);
  free(after);
  teardown_fix(f);
}

static void a_process_that_is_not_a_candidate_never_writes(void **state) {
  opts_t plain = {.lease_ms = 300};
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  new_proc(f, 0, &plain);
  run_until(&f->loop, all_up, f);
  run_for_ms(&f->loop, 400);
  assert_int_equal(f->p[0].became_writer, 0);
  assert_null(lease_holder(f));
  teardown_fix(f);
}

static void seed(proc_t *p, const char *tenant, const char *model, uint64_t req) {
  llmux_usage_shared_counts_t c = {req, req * 10, req, (double)req / 100};
  llmux_usage_shared_seed(p->s, tenant, model, p->f->today, &c);
}

static void the_writer_seeds_redis_from_its_database_once_per_epoch(void **state) {
  opts_t plain = {0}, cand = {.candidate = 1, .no_start = 1};
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  new_proc(f, 1, &plain); /* counts before any writer is there */
  run_until(&f->loop, all_up, f);
  add(&f->p[1], "acme", "m", 1, 1, 0);
  settle(f);
  new_proc(f, 0, &cand);
  seed(&f->p[0], "acme", "m", 10);
  seed(&f->p[0], "beta", "m", 4);
  assert_int_equal(llmux_usage_shared_start(f->p[0].s), 0);
  run_until(&f->loop, is_writer, &f->p[0]);
  settle(f);
  assert_int_equal(redis_field(f, "llmux:", "acme", "m", "requests"), 11); /* additive */
  assert_int_equal(redis_field(f, "llmux:", "acme", "m", "input_tokens"), 101);
  assert_int_equal(redis_field(f, "llmux:", "beta", "m", "requests"), 4);
  assert_int_equal(redis_field(f, "llmux:", "beta", "m", "cost_micro_usd"), 40000);
  assert_int_equal(requests(&f->p[1], "acme", "m"), 11);
  assert_int_equal(requests(&f->p[1], "beta", "m"), 4);
  assert_int_equal(requests(&f->p[0], "acme", "m"), 11);
  /* The next writer's database holds what Redis has: no seed again. */
  close_proc(&f->p[0]);
  new_proc(f, 2, &cand);
  seed(&f->p[2], "acme", "m", 11);
  assert_int_equal(llmux_usage_shared_start(f->p[2].s), 0);
  run_until(&f->loop, is_writer, &f->p[2]);
  settle(f);
  assert_int_equal(redis_field(f, "llmux:", "acme", "m", "requests"), 11);
  teardown_fix(f);
}

/* ---- Keys ---------------------------------------------------------------------------- */

static void two_prefixes_do_not_see_each_other(void **state) {
  opts_t a = {.prefix = "fleet-a:"}, b = {.prefix = "fleet-b:"};
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  new_proc(f, 0, &a);
  new_proc(f, 1, &b);
  run_until(&f->loop, all_up, f);
  add(&f->p[0], "acme", "m", 1, 1, 0);
  add(&f->p[0], "acme", "m", 1, 1, 0);
  add(&f->p[1], "acme", "m", 1, 1, 0);
  settle(f);
  assert_int_equal(requests(&f->p[0], "acme", "m"), 2);
  assert_int_equal(requests(&f->p[1], "acme", "m"), 1);
  assert_int_equal(redis_field(f, "fleet-a:", "acme", "m", "requests"), 2);
  assert_int_equal(redis_field(f, "fleet-b:", "acme", "m", "requests"), 1);
  assert_int_equal(redis_count_keys(f, "llmux:*"), 0);
  teardown_fix(f);
}

static void a_tenant_name_with_a_colon_cannot_collide_with_another(void **state) {
  opts_t o = {0};
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  new_proc(f, 0, &o);
  new_proc(f, 1, &o);
  run_until(&f->loop, all_up, f);
  add(&f->p[0], "a:1", "b", 1, 1, 0);     /* ...:3:a:1:b */
  add(&f->p[0], "a", "1:b", 1, 1, 0);     /* ...:1:a:1:b */
  add(&f->p[0], "a", "1:b", 1, 1, 0);
  settle(f);
  assert_int_equal(requests(&f->p[1], "a:1", "b"), 1);
  assert_int_equal(requests(&f->p[1], "a", "1:b"), 2);
  assert_int_equal(redis_field(f, "llmux:", "a:1", "b", "requests"), 1);
  assert_int_equal(redis_field(f, "llmux:", "a", "1:b", "requests"), 2);
  teardown_fix(f);
}

static void a_bad_url_is_refused_with_a_reason(void **state) {
  llmux_usage_shared_options_t so;
  llmux_usage_shared_t *s = NULL;
  uv_loop_t loop;
  char err[256] = "";
  (void)state;
  uv_loop_init(&loop);
  memset(&so, 0, sizeof(so));
  so.url = "redis://:pw@127.0.0.1:6379";
  so.on_row = on_row;
  assert_int_equal(llmux_usage_shared_new(&loop, &so, &s, err, sizeof(err)), LLMUX_EINVAL);
  assert_non_null(strstr(err, "shared_state_password_env"));
  assert_null(s);
  close_loop(&loop);
}

static void closing_sends_what_is_queued_first(void **state) {
  opts_t o = {0};
  fix_t *f;
  (void)state;
  SKIP_WITHOUT_REDIS();
  f = setup_fix();
  new_proc(f, 0, &o);
  run_until(&f->loop, all_up, f);
  add(&f->p[0], "acme", "m", 1, 1, 0);
  add(&f->p[0], "acme", "m", 1, 1, 0);
  close_proc(&f->p[0]); /* the adds have not even been sent */
  assert_int_equal(redis_field(f, "llmux:", "acme", "m", "requests"), 2);
  teardown_fix(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(adds_through_two_processes_sum_in_redis_and_both_see_the_sum),
    cmocka_unit_test(a_process_started_later_loads_this_months_rows),
    cmocka_unit_test(adds_made_while_a_batch_is_in_flight_go_together_in_the_next),
    cmocka_unit_test(a_batch_whose_reply_was_lost_is_sent_again_and_counted_once),
    cmocka_unit_test(a_slow_redis_counts_as_down_and_the_adds_arrive_once),
    cmocka_unit_test(redis_killed_and_restarted_loses_no_request_and_shares_again),
    cmocka_unit_test(redis_flushed_while_connected_gets_the_totals_back),
    cmocka_unit_test(the_writer_lease_is_held_by_one_and_taken_over_when_it_closes),
    cmocka_unit_test(a_process_that_is_not_a_candidate_never_writes),
    cmocka_unit_test(the_writer_seeds_redis_from_its_database_once_per_epoch),
    cmocka_unit_test(two_prefixes_do_not_see_each_other),
    cmocka_unit_test(a_tenant_name_with_a_colon_cannot_collide_with_another),
    cmocka_unit_test(a_bad_url_is_refused_with_a_reason),
    cmocka_unit_test(closing_sends_what_is_queued_first),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
