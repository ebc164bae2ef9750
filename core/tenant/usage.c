/* Usage counters in memory, persisted to SQLite by a writer thread. */
#include "tenant/usage.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "base/log.h"
#include "base/util.h"

#define FLUSH_INTERVAL_MS 1000

typedef struct row_s {
  char *tenant; /* owned */
  char *model;  /* owned */
  int day;
  llmux_usage_counts_t c;
  int dirty;    /* changed since the last snapshot */
} row_t;

/* A tenant's running totals for one day and one month, for quota checks. */
typedef struct agg_s {
  char *tenant;
  int day;
  llmux_usage_counts_t today;
  int month;    /* first day of the month */
  llmux_usage_counts_t month_c;
} agg_t;

typedef struct table_s {
  void **slots;
  size_t cap; /* power of two, or 0 */
  size_t n;
} table_t;

/* Rows copied for the writer thread; strings point into `strings`. */
typedef struct snap_s {
  struct snap_s *next;
  llmux_usage_row_t *rows;
  size_t n;
  char *strings;
} snap_t;

struct llmux_usage_store_s {
  uv_loop_t *loop;
  sqlite3 *db;
  table_t rows;
  table_t aggs;
  size_t ndirty;
  int persist;        /* write the database (llmux_usage_set_persist) */
  /* writer thread; everything below mu is shared with it */
  int threaded;
  uv_thread_t thread;
  uv_timer_t timer;
  uv_async_t async;
  int handles_open;
  llmux_usage_close_cb close_cb;
  void *close_arg;
  uv_mutex_t mu;
  uv_cond_t cv;       /* the thread waits for work */
  uv_cond_t done_cv;  /* flushers wait for the thread */
  snap_t *queue, *queue_tail;
  uint64_t queued_gen, written_gen;
  int stop;
  char thread_err[256];
  int err_reported;
  char last_err[256];
};

/* ---- days --------------------------------------------------------------- */

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant). */
static int days_from_civil(int y, unsigned m, unsigned d) {
  int era;
  unsigned yoe, doy, doe;
  y -= m <= 2;
  era = (y >= 0 ? y : y - 399) / 400;
  yoe = (unsigned)(y - era * 400);
  doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + (int)doe - 719468;
}

static void civil_from_days(int z, int *y, unsigned *m, unsigned *d) {
  int era;
  unsigned doe, yoe, doy, mp;
  z += 719468;
  era = (z >= 0 ? z : z - 146096) / 146097;
  doe = (unsigned)(z - era * 146097);
  yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = (int)yoe + era * 400 + (*m <= 2);
}

int llmux_usage_today(void) {
  /* time() is served by the vDSO: no system call on the hot path. */
  return (int)(time(NULL) / 86400);
}

int llmux_usage_month_start(int day) {
  /* Asked with each request's usage: each thread keeps its last answer. */
  static _Thread_local int last_day = -1, last_start;
  int y;
  unsigned m, d;
  if (day == last_day) return last_start;
  civil_from_days(day, &y, &m, &d);
  last_start = day - (int)d + 1;
  last_day = day;
  return last_start;
}

int llmux_usage_next_month_start(int day) {
  int y;
  unsigned m, d;
  civil_from_days(day, &y, &m, &d);
  return m == 12 ? days_from_civil(y + 1, 1, 1) : days_from_civil(y, m + 1, 1);
}

void llmux_usage_day_str(int day, char out[11]) {
  int y;
  unsigned m, d;
  char tmp[48];
  civil_from_days(day, &y, &m, &d);
  snprintf(tmp, sizeof tmp, "%04d-%02u-%02u", y % 10000, m % 100, d % 100);
  memcpy(out, tmp, 10);
  out[10] = '\0';
}

void llmux_usage_month_str(int day, char out[8]) {
  int y;
  unsigned m, d;
  char tmp[48];
  civil_from_days(day, &y, &m, &d);
  snprintf(tmp, sizeof tmp, "%04d-%02u", y % 10000, m % 100);
  memcpy(out, tmp, 7);
  out[7] = '\0';
}

int llmux_usage_parse_day(const char *s, int *day) {
  unsigned y, m, d;
  char tail;
  if (s == NULL || strlen(s) != 10 || sscanf(s, "%4u-%2u-%2u%c", &y, &m, &d, &tail) != 3)
    return LLMUX_EINVAL;
  if (m < 1 || m > 12 || d < 1 || d > 31) return LLMUX_EINVAL;
  *day = days_from_civil((int)y, m, d);
  return 0;
}

/* ---- hash tables -------------------------------------------------------- */

static uint64_t fnv(uint64_t h, const char *s) {
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
  return h;
}

static uint64_t row_hash(const char *tenant, const char *model, int day) {
  uint64_t h = fnv(0xcbf29ce484222325ull, tenant);
  h = fnv((h ^ 0xff) * 0x100000001b3ull, model);
  return (h ^ (uint64_t)(uint32_t)day) * 0x9e3779b97f4a7c15ull;
}

static uint64_t agg_hash(const char *tenant) {
  return fnv(0xcbf29ce484222325ull, tenant) * 0x9e3779b97f4a7c15ull;
}

/* Finds the slot of an item matching (tenant, model, day) (model NULL:
 * the aggregate table), or the empty slot where it would go. */
static size_t table_find(const table_t *t, uint64_t h, const char *tenant, const char *model,
                         int day) {
  size_t mask = t->cap - 1, i = (size_t)(h >> 7) & mask;
  for (;; i = (i + 1) & mask) {
    void *e = t->slots[i];
    if (e == NULL) return i;
    if (model == NULL) {
      if (strcmp(((agg_t *)e)->tenant, tenant) == 0) return i;
    } else {
      row_t *r = e;
      if (r->day == day && strcmp(r->tenant, tenant) == 0 && strcmp(r->model, model) == 0)
        return i;
    }
  }
}

static uint64_t item_hash(const void *e, int is_agg) {
  if (is_agg) return agg_hash(((const agg_t *)e)->tenant);
  return row_hash(((const row_t *)e)->tenant, ((const row_t *)e)->model, ((const row_t *)e)->day);
}

/* Keeps the load under 1/2 so probes stay short. */
static void table_grow(table_t *t, int is_agg) {
  size_t old = t->cap, i;
  void **slots = t->slots;
  if (t->cap != 0 && (t->n + 1) * 2 <= t->cap) return;
  t->cap = old ? old * 2 : 64;
  t->slots = llmux_xcalloc(t->cap, sizeof(*t->slots));
  for (i = 0; i < old; i++) {
    void *e = slots[i];
    const char *model;
    if (e == NULL) continue;
    model = is_agg ? NULL : ((row_t *)e)->model;
    t->slots[table_find(t, item_hash(e, is_agg), is_agg ? ((agg_t *)e)->tenant
                                                        : ((row_t *)e)->tenant,
                        model, is_agg ? 0 : ((row_t *)e)->day)] = e;
  }
  free(slots);
}

static row_t *get_row(llmux_usage_store_t *s, const char *tenant, const char *model, int day) {
  uint64_t h = row_hash(tenant, model, day);
  size_t i;
  row_t *r;
  if (s->rows.cap) {
    i = table_find(&s->rows, h, tenant, model, day);
    if (s->rows.slots[i]) return s->rows.slots[i];
  }
  table_grow(&s->rows, 0);
  i = table_find(&s->rows, h, tenant, model, day);
  r = llmux_xcalloc(1, sizeof(*r));
  r->tenant = llmux_xstrdup(tenant);
  r->model = llmux_xstrdup(model);
  r->day = day;
  s->rows.slots[i] = r;
  s->rows.n++;
  return r;
}

static agg_t *get_agg(llmux_usage_store_t *s, const char *tenant, int create) {
  uint64_t h = agg_hash(tenant);
  size_t i;
  agg_t *a;
  if (s->aggs.cap) {
    i = table_find(&s->aggs, h, tenant, NULL, 0);
    if (s->aggs.slots[i] || !create) return s->aggs.slots[i];
  }
  if (!create) return NULL;
  table_grow(&s->aggs, 1);
  i = table_find(&s->aggs, h, tenant, NULL, 0);
  a = llmux_xcalloc(1, sizeof(*a));
  a->tenant = llmux_xstrdup(tenant);
  a->day = -1;
  a->month = -1;
  s->aggs.slots[i] = a;
  s->aggs.n++;
  return a;
}

static void counts_add(llmux_usage_counts_t *c, const llmux_usage_counts_t *d) {
  c->requests += d->requests;
  c->input_tokens += d->input_tokens;
  c->output_tokens += d->output_tokens;
  c->cost_usd += d->cost_usd;
}

/* Adds to a tenant's aggregate, starting a new day or month when `day` is
 * past the one it holds (rows of older days only count for their month). */
static void agg_add(agg_t *a, int day, const llmux_usage_counts_t *d) {
  int month = llmux_usage_month_start(day);
  if (day > a->day) {
    a->day = day;
    memset(&a->today, 0, sizeof a->today);
  }
  if (month > a->month) {
    a->month = month;
    memset(&a->month_c, 0, sizeof a->month_c);
  }
  if (day == a->day) counts_add(&a->today, d);
  if (month == a->month) counts_add(&a->month_c, d);
}

static void mark_dirty(llmux_usage_store_t *s, row_t *r) {
  if (!r->dirty) s->ndirty++;
  r->dirty = 1;
}

void llmux_usage_add(llmux_usage_store_t *s, const char *tenant, const char *model, int day,
                     uint64_t input_tokens, uint64_t output_tokens, double cost_usd) {
  llmux_usage_counts_t d = {1, input_tokens, output_tokens, cost_usd};
  row_t *r = get_row(s, tenant, model, day);
  counts_add(&r->c, &d);
  mark_dirty(s, r);
  agg_add(get_agg(s, tenant, 1), day, &d);
}

void llmux_usage_set(llmux_usage_store_t *s, const char *tenant, const char *model, int day,
                     const llmux_usage_counts_t *c) {
  row_t *r = get_row(s, tenant, model, day);
  llmux_usage_counts_t d;
  if (r->c.requests == c->requests && r->c.input_tokens == c->input_tokens &&
      r->c.output_tokens == c->output_tokens && r->c.cost_usd == c->cost_usd)
    return;
  /* Unsigned wrap-around: adding the difference lands on the new totals. */
  d.requests = c->requests - r->c.requests;
  d.input_tokens = c->input_tokens - r->c.input_tokens;
  d.output_tokens = c->output_tokens - r->c.output_tokens;
  d.cost_usd = c->cost_usd - r->c.cost_usd;
  r->c = *c;
  mark_dirty(s, r);
  agg_add(get_agg(s, tenant, 1), day, &d);
}

void llmux_usage_set_persist(llmux_usage_store_t *s, int on) {
  size_t i;
  if (on && !s->persist)
    for (i = 0; i < s->rows.cap; i++)
      if (s->rows.slots[i]) mark_dirty(s, s->rows.slots[i]);
  s->persist = on != 0;
}

void llmux_usage_tenant_totals(llmux_usage_store_t *s, const char *tenant, int day,
                               llmux_usage_counts_t *today, llmux_usage_counts_t *month) {
  agg_t *a = get_agg(s, tenant, 0);
  memset(today, 0, sizeof *today);
  memset(month, 0, sizeof *month);
  if (a == NULL) return;
  if (a->day == day) *today = a->today;
  if (a->month == llmux_usage_month_start(day)) *month = a->month_c;
}

void llmux_usage_foreach(llmux_usage_store_t *s, const char *tenant, int first_day,
                         int last_day, llmux_usage_row_cb cb, void *arg) {
  size_t i;
  for (i = 0; i < s->rows.cap; i++) {
    row_t *r = s->rows.slots[i];
    llmux_usage_row_t out;
    if (r == NULL || r->day < first_day || r->day > last_day) continue;
    if (tenant != NULL && strcmp(r->tenant, tenant) != 0) continue;
    out.tenant = r->tenant;
    out.model = r->model;
    out.day = r->day;
    out.counts = r->c;
    cb(arg, &out);
  }
}

/* ---- SQLite -------------------------------------------------------------- */

static const char schema_sql[] =
  "PRAGMA journal_mode=WAL;"
  "PRAGMA synchronous=NORMAL;"
  "CREATE TABLE IF NOT EXISTS usage ("
  " tenant TEXT NOT NULL, model TEXT NOT NULL, day TEXT NOT NULL,"
  " requests INTEGER NOT NULL DEFAULT 0, input_tokens INTEGER NOT NULL DEFAULT 0,"
  " output_tokens INTEGER NOT NULL DEFAULT 0, cost_usd REAL NOT NULL DEFAULT 0,"
  " PRIMARY KEY (tenant, model, day)) WITHOUT ROWID;";

static const char upsert_sql[] =
  "INSERT INTO usage (tenant, model, day, requests, input_tokens, output_tokens, cost_usd)"
  " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
  " ON CONFLICT (tenant, model, day) DO UPDATE SET requests = excluded.requests,"
  " input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,"
  " cost_usd = excluded.cost_usd";

static int load_rows(llmux_usage_store_t *s, int from_day, char *err, size_t errlen) {
  sqlite3_stmt *st = NULL;
  char from[11];
  int rc;
  llmux_usage_day_str(from_day, from);
  rc = sqlite3_prepare_v2(s->db,
                          "SELECT tenant, model, day, requests, input_tokens, output_tokens,"
                          " cost_usd FROM usage WHERE day >= ?1",
                          -1, &st, NULL);
  if (rc == SQLITE_OK) rc = sqlite3_bind_text(st, 1, from, -1, SQLITE_TRANSIENT);
  while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    const char *tenant = (const char *)sqlite3_column_text(st, 0);
    const char *model = (const char *)sqlite3_column_text(st, 1);
    llmux_usage_counts_t c;
    row_t *r;
    int day;
    rc = SQLITE_OK;
    if (tenant == NULL || model == NULL ||
        llmux_usage_parse_day((const char *)sqlite3_column_text(st, 2), &day) != 0)
      continue; /* not ours: leave it alone */
    c.requests = (uint64_t)sqlite3_column_int64(st, 3);
    c.input_tokens = (uint64_t)sqlite3_column_int64(st, 4);
    c.output_tokens = (uint64_t)sqlite3_column_int64(st, 5);
    c.cost_usd = sqlite3_column_double(st, 6);
    r = get_row(s, tenant, model, day);
    r->c = c;
    agg_add(get_agg(s, tenant, 1), day, &c);
  }
  if (rc != SQLITE_DONE) snprintf(err, errlen, "reading usage: %s", sqlite3_errmsg(s->db));
  sqlite3_finalize(st);
  return rc == SQLITE_DONE ? 0 : LLMUX_EIO;
}

/* Writes a snapshot in one transaction. Runs on the writer thread (or the
 * caller's, without one). 0, or LLMUX_EIO with err filled. */
static int write_snap(sqlite3 *db, const snap_t *sn, char *err, size_t errlen) {
  sqlite3_stmt *st = NULL;
  size_t i;
  int rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
  if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(db, upsert_sql, -1, &st, NULL);
  for (i = 0; rc == SQLITE_OK && i < sn->n; i++) {
    const llmux_usage_row_t *r = &sn->rows[i];
    char day[11];
    llmux_usage_day_str(r->day, day);
    sqlite3_bind_text(st, 1, r->tenant, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, r->model, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, day, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)r->counts.requests);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)r->counts.input_tokens);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)r->counts.output_tokens);
    sqlite3_bind_double(st, 7, r->counts.cost_usd);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) rc = SQLITE_OK;
    sqlite3_reset(st);
  }
  sqlite3_finalize(st);
  if (rc == SQLITE_OK) rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  if (rc == SQLITE_OK) return 0;
  snprintf(err, errlen, "writing usage: %s", sqlite3_errmsg(db));
  sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
  return LLMUX_EIO;
}

/* Copies the changed rows, marking them clean. NULL when none changed. */
static snap_t *take_snapshot(llmux_usage_store_t *s) {
  snap_t *sn;
  size_t i, n = 0, bytes = 0, off = 0;
  if (s->ndirty == 0 || !s->persist) return NULL;
  for (i = 0; i < s->rows.cap; i++) {
    row_t *r = s->rows.slots[i];
    if (r && r->dirty) bytes += strlen(r->tenant) + strlen(r->model) + 2;
  }
  sn = llmux_xcalloc(1, sizeof *sn);
  sn->rows = llmux_xcalloc(s->ndirty, sizeof *sn->rows);
  sn->strings = llmux_xmalloc(bytes);
  for (i = 0; i < s->rows.cap; i++) {
    row_t *r = s->rows.slots[i];
    size_t lt, lm;
    if (r == NULL || !r->dirty) continue;
    lt = strlen(r->tenant) + 1;
    lm = strlen(r->model) + 1;
    memcpy(sn->strings + off, r->tenant, lt);
    sn->rows[n].tenant = sn->strings + off;
    off += lt;
    memcpy(sn->strings + off, r->model, lm);
    sn->rows[n].model = sn->strings + off;
    off += lm;
    sn->rows[n].day = r->day;
    sn->rows[n].counts = r->c;
    r->dirty = 0;
    n++;
  }
  sn->n = n;
  s->ndirty = 0;
  return sn;
}

static void snap_free(snap_t *sn) {
  free(sn->rows);
  free(sn->strings);
  free(sn);
}

/* ---- the writer thread --------------------------------------------------- */

static void writer_main(void *arg) {
  llmux_usage_store_t *s = arg;
  char err[256];
  uv_mutex_lock(&s->mu);
  for (;;) {
    snap_t *batch, *next;
    uint64_t gen;
    int failed = 0;
    while (s->queue == NULL && !s->stop) uv_cond_wait(&s->cv, &s->mu);
    if (s->queue == NULL) break; /* stop, and nothing left */
    batch = s->queue;
    s->queue = s->queue_tail = NULL;
    gen = s->queued_gen;
    uv_mutex_unlock(&s->mu);
    /* The database is the thread's alone from here: no lock while writing. */
    err[0] = '\0';
    for (; batch; batch = next) {
      next = batch->next;
      if (!failed && write_snap(s->db, batch, err, sizeof err) != 0) failed = 1;
      snap_free(batch);
    }
    uv_mutex_lock(&s->mu);
    s->written_gen = gen;
    if (failed) snprintf(s->thread_err, sizeof s->thread_err, "%s", err);
    uv_cond_broadcast(&s->done_cv);
    if (failed && s->handles_open) uv_async_send(&s->async);
  }
  uv_mutex_unlock(&s->mu);
}

static void enqueue(llmux_usage_store_t *s, snap_t *sn) {
  uv_mutex_lock(&s->mu);
  if (s->queue_tail) s->queue_tail->next = sn;
  else s->queue = sn;
  s->queue_tail = sn;
  s->queued_gen++;
  uv_cond_signal(&s->cv);
  uv_mutex_unlock(&s->mu);
}

static void on_tick(uv_timer_t *t) {
  llmux_usage_store_t *s = t->data;
  snap_t *sn = take_snapshot(s);
  if (sn) enqueue(s, sn);
}

/* The thread met an error: report it on the loop, once per new message. */
static void on_async(uv_async_t *a) {
  llmux_usage_store_t *s = a->data;
  uv_mutex_lock(&s->mu);
  if (s->thread_err[0]) {
    snprintf(s->last_err, sizeof s->last_err, "%s", s->thread_err);
    s->thread_err[0] = '\0';
  }
  uv_mutex_unlock(&s->mu);
  if (s->last_err[0] && !s->err_reported) {
    llmux_error("usage database: %s (counts are kept in memory and written again)",
                s->last_err);
    s->err_reported = 1;
  }
}

int llmux_usage_flush(llmux_usage_store_t *s) {
  snap_t *sn = take_snapshot(s);
  char err[256];
  int rc = 0;
  if (s->threaded) {
    uint64_t gen;
    if (sn) enqueue(s, sn);
    uv_mutex_lock(&s->mu);
    gen = s->queued_gen;
    while (s->written_gen < gen) uv_cond_wait(&s->done_cv, &s->mu);
    if (s->thread_err[0]) {
      snprintf(s->last_err, sizeof s->last_err, "%s", s->thread_err);
      s->thread_err[0] = '\0';
      rc = LLMUX_EIO;
    }
    uv_mutex_unlock(&s->mu);
    return rc;
  }
  if (sn == NULL) return 0;
  if (s->db) rc = write_snap(s->db, sn, err, sizeof err);
  if (rc != 0) snprintf(s->last_err, sizeof s->last_err, "%s", err);
  snap_free(sn);
  return rc;
}

const char *llmux_usage_last_error(const llmux_usage_store_t *s) {
  return s->last_err;
}

/* ---- open / close -------------------------------------------------------- */

/* Creates the directories leading to path (as `mkdir -p` would), so that
 * `usage_db = data/usage.db` works on a fresh checkout. Start-up only. */
static void make_parent_dirs(const char *path) {
  char buf[4096];
  size_t i, n = strlen(path);
  if (n >= sizeof buf) return;
  memcpy(buf, path, n + 1);
  for (i = 1; i < n; i++) {
    if (buf[i] != '/') continue;
    buf[i] = '\0';
    (void)mkdir(buf, 0750);
    buf[i] = '/';
  }
}

static int open_db(llmux_usage_store_t *s, const char *path, int today, char *err,
                   size_t errlen) {
  int rc;
  make_parent_dirs(path);
  rc = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                             SQLITE_OPEN_FULLMUTEX, NULL);
  if (rc == SQLITE_OK) sqlite3_busy_timeout(s->db, 2000);
  if (rc == SQLITE_OK) rc = sqlite3_exec(s->db, schema_sql, NULL, NULL, NULL);
  if (rc != SQLITE_OK) {
    snprintf(err, errlen, "cannot open usage database %s: %s%s", path,
             s->db ? sqlite3_errmsg(s->db) : "out of memory",
             rc == SQLITE_CANTOPEN ? " (does its directory exist and may llmux write there?)"
                                   : "");
    return LLMUX_EIO;
  }
  return load_rows(s, llmux_usage_month_start(today), err, errlen);
}

/* Like the other small control structures, a failure to get a mutex or a
 * thread at start-up leaves nothing sensible to do. */
static void start_thread(llmux_usage_store_t *s) {
  if (uv_mutex_init(&s->mu) != 0 || uv_cond_init(&s->cv) != 0 ||
      uv_cond_init(&s->done_cv) != 0)
    abort();
  uv_timer_init(s->loop, &s->timer);
  uv_async_init(s->loop, &s->async, on_async);
  s->timer.data = s->async.data = s;
  s->handles_open = 2;
  s->threaded = 1;
  if (uv_thread_create(&s->thread, writer_main, s) != 0) abort();
  uv_timer_start(&s->timer, on_tick, FLUSH_INTERVAL_MS, FLUSH_INTERVAL_MS);
  /* Neither handle should keep an otherwise idle loop alive. */
  uv_unref((uv_handle_t *)&s->timer);
  uv_unref((uv_handle_t *)&s->async);
}

static void store_free(llmux_usage_store_t *s) {
  size_t i;
  for (i = 0; i < s->rows.cap; i++) {
    row_t *r = s->rows.slots[i];
    if (r == NULL) continue;
    free(r->tenant);
    free(r->model);
    free(r);
  }
  for (i = 0; i < s->aggs.cap; i++) {
    agg_t *a = s->aggs.slots[i];
    if (a == NULL) continue;
    free(a->tenant);
    free(a);
  }
  free(s->rows.slots);
  free(s->aggs.slots);
  if (s->db) sqlite3_close(s->db);
  free(s);
}

int llmux_usage_open(uv_loop_t *loop, const char *db_path, int today,
                     llmux_usage_store_t **out, char *err, size_t errlen) {
  llmux_usage_store_t *s = llmux_xcalloc(1, sizeof *s);
  s->loop = loop;
  s->persist = 1;
  *out = NULL;
  if (db_path != NULL && open_db(s, db_path, today, err, errlen) != 0) goto fail;
  if (db_path != NULL && loop != NULL) start_thread(s);
  *out = s;
  return 0;
fail:
  store_free(s);
  return LLMUX_EIO;
}

static void on_handle_closed(uv_handle_t *h) {
  llmux_usage_store_t *s = h->data;
  if (--s->handles_open > 0) return;
  if (s->close_cb) s->close_cb(s, s->close_arg);
  store_free(s);
}

void llmux_usage_close(llmux_usage_store_t *s, llmux_usage_close_cb cb, void *arg) {
  if (s->threaded) {
    snap_t *sn;
    uv_timer_stop(&s->timer);
    sn = take_snapshot(s);
    uv_mutex_lock(&s->mu);
    if (sn) {
      if (s->queue_tail) s->queue_tail->next = sn;
      else s->queue = sn;
      s->queue_tail = sn;
      s->queued_gen++;
    }
    s->stop = 1;
    uv_cond_signal(&s->cv);
    uv_mutex_unlock(&s->mu);
    /* The gateway is stopping: waiting for the last write is the point. */
    uv_thread_join(&s->thread);
    if (s->thread_err[0]) llmux_error("usage database: %s", s->thread_err);
    uv_cond_destroy(&s->done_cv);
    uv_cond_destroy(&s->cv);
    uv_mutex_destroy(&s->mu);
    s->threaded = 0;
    s->close_cb = cb;
    s->close_arg = arg;
    uv_close((uv_handle_t *)&s->timer, on_handle_closed);
    uv_close((uv_handle_t *)&s->async, on_handle_closed);
    return;
  }
  if (llmux_usage_flush(s) != 0) llmux_error("usage database: %s", s->last_err);
  if (cb) cb(s, arg);
  store_free(s);
}
