/* Stored responses: an LRU table in memory, SQLite behind it on a thread,
 * and a remote (Redis) in front of SQLite when a fleet shares them. */
#include "gateway/responses_store.h"

#include <assert.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "base/log.h"
#include "base/util.h"

#define DEFAULT_TTL_MS (24ull * 3600 * 1000)
#define DEFAULT_MAX_MEMORY (64ull << 20)
#define SWEEP_INTERVAL_MS 60000
/* What an entry costs beside its bytes. */
#define ENTRY_OVERHEAD 64

typedef struct entry_s {
  struct entry_s *hnext;        /* hash chain */
  struct entry_s *prev, *next;  /* LRU: head most recent */
  uint64_t hash;
  int64_t expires_ms;
  size_t keylen;                /* tenant '\n' id */
  size_t len;
  char *key;                    /* owned: key, then the record, one block */
  char *record;
} entry_t;

enum { OP_PUT, OP_DELETE, OP_GET, OP_SWEEP };

/* Work for the thread; a GET comes back on `done` with its answer. */
typedef struct op_s {
  struct op_s *next;
  int type;
  int64_t now_ms, expires_ms;
  char *tenant, *id;            /* owned, one block with the record */
  char *record;
  size_t len;
  llmux_responses_get_cb cb;    /* OP_GET */
  void *arg;
  int rc;                       /* the thread's answer */
  char *found;                  /* malloc'd by the thread */
  size_t found_len;
} op_t;

/* A lookup the remote owes; `s` is NULL once the store closed (and
 * answered it): then the remote's answer only frees it. */
typedef struct rget_s {
  struct rget_s *prev, *next;
  llmux_responses_store_t *s;
  llmux_responses_get_cb cb;
  void *arg;
  int64_t now_ms;
  char *tenant, *id;            /* one block with this */
} rget_t;

struct llmux_responses_store_s {
  uv_loop_t *loop;
  llmux_responses_remote_t remote;
  int has_remote;
  rget_t *rgets;                /* owed by the remote */
  sqlite3 *db;
  uint64_t ttl_ms, max_memory;
  int64_t (*now_ms)(void *arg);
  void *now_arg;
  /* the table */
  entry_t **slots;
  size_t cap, count, bytes;
  entry_t *lru_head, *lru_tail;
  /* the thread; what is below mu is shared with it */
  int threaded;
  uv_thread_t thread;
  uv_async_t async;
  uv_timer_t sweep;
  int handles_open;
  uv_mutex_t mu;
  uv_cond_t cv;
  op_t *queue, *queue_tail;     /* for the thread */
  op_t *done, *done_tail;       /* answered lookups, for the loop */
  int stop;
  int err_reported;
};

static int64_t real_now_ms(void *arg) {
  struct timespec ts;
  (void)arg;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_ms(const llmux_responses_store_t *s) {
  return s->now_ms(s->now_arg);
}

/* ---- the table ----------------------------------------------------------- */

static uint64_t key_hash(const char *tenant, const char *id) {
  uint64_t h = 0xcbf29ce484222325ull;
  const char *p;
  for (p = tenant; *p; p++) h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
  h = (h ^ '\n') * 0x100000001b3ull;
  for (p = id; *p; p++) h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
  return h * 0x9e3779b97f4a7c15ull;
}

static int key_is(const entry_t *e, const char *tenant, const char *id) {
  size_t lt = strlen(tenant);
  return e->keylen == lt + 1 + strlen(id) && memcmp(e->key, tenant, lt) == 0 &&
         e->key[lt] == '\n' && strcmp(e->key + lt + 1, id) == 0;
}

static entry_t **find_slot(llmux_responses_store_t *s, uint64_t h, const char *tenant,
                           const char *id) {
  entry_t **pp;
  if (s->cap == 0) return NULL;
  for (pp = &s->slots[(h >> 7) & (s->cap - 1)]; *pp; pp = &(*pp)->hnext)
    if ((*pp)->hash == h && key_is(*pp, tenant, id)) return pp;
  return pp;
}

static void lru_unlink(llmux_responses_store_t *s, entry_t *e) {
  if (e->prev) e->prev->next = e->next;
  else s->lru_head = e->next;
  if (e->next) e->next->prev = e->prev;
  else s->lru_tail = e->prev;
  e->prev = e->next = NULL;
}

static void lru_push(llmux_responses_store_t *s, entry_t *e) {
  e->prev = NULL;
  e->next = s->lru_head;
  if (s->lru_head) s->lru_head->prev = e;
  s->lru_head = e;
  if (s->lru_tail == NULL) s->lru_tail = e;
}

static size_t entry_cost(const entry_t *e) {
  return e->keylen + e->len + ENTRY_OVERHEAD;
}

/* Unlinks *pp (its slot) and frees it. */
static void drop(llmux_responses_store_t *s, entry_t **pp) {
  entry_t *e = *pp;
  *pp = e->hnext;
  lru_unlink(s, e);
  s->bytes -= entry_cost(e);
  s->count--;
  free(e->key);
  free(e);
}

static void drop_entry(llmux_responses_store_t *s, entry_t *e) {
  entry_t **pp = &s->slots[(e->hash >> 7) & (s->cap - 1)];
  while (*pp != e) pp = &(*pp)->hnext;
  drop(s, pp);
}

static int grow(llmux_responses_store_t *s) {
  size_t cap = s->cap ? s->cap * 2 : 256, i;
  entry_t **slots, *e, *next;
  if (s->cap && s->count * 2 < s->cap) return 0;
  if ((slots = calloc(cap, sizeof *slots)) == NULL) return LLMUX_ENOMEM;
  for (i = 0; i < s->cap; i++)
    for (e = s->slots[i]; e; e = next) {
      next = e->hnext;
      e->hnext = slots[(e->hash >> 7) & (cap - 1)];
      slots[(e->hash >> 7) & (cap - 1)] = e;
    }
  free(s->slots);
  s->slots = slots;
  s->cap = cap;
  return 0;
}

/* Into the table (replacing one of the same key), evicting the least
 * recently used for room. */
static int table_put(llmux_responses_store_t *s, const char *tenant, const char *id,
                     const char *record, size_t len, int64_t expires_ms) {
  size_t lt = strlen(tenant), li = strlen(id);
  uint64_t h = key_hash(tenant, id);
  entry_t *e, **pp;
  if (lt + li + 1 + len + ENTRY_OVERHEAD > s->max_memory) return LLMUX_ETOOLARGE;
  if (grow(s) != 0) return LLMUX_ENOMEM;
  if ((pp = find_slot(s, h, tenant, id)) != NULL && *pp != NULL) drop(s, pp);
  if ((e = calloc(1, sizeof *e)) == NULL || (e->key = malloc(lt + li + 2 + len + 1)) == NULL) {
    free(e);
    return LLMUX_ENOMEM;
  }
  e->hash = h;
  e->expires_ms = expires_ms;
  e->keylen = lt + 1 + li;
  memcpy(e->key, tenant, lt);
  e->key[lt] = '\n';
  memcpy(e->key + lt + 1, id, li + 1);
  e->record = e->key + e->keylen + 1;
  memcpy(e->record, record, len);
  e->record[len] = '\0';
  e->len = len;
  while (s->lru_tail && s->bytes + entry_cost(e) > s->max_memory) drop_entry(s, s->lru_tail);
  pp = find_slot(s, h, tenant, id);
  *pp = e;
  lru_push(s, e);
  s->bytes += entry_cost(e);
  s->count++;
  return 0;
}

/* ---- SQLite (the thread's, or the caller's without a loop) ----------------- */

static const char schema_sql[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=NORMAL;"
    "CREATE TABLE IF NOT EXISTS responses ("
    " tenant TEXT NOT NULL, id TEXT NOT NULL, expires_at INTEGER NOT NULL,"
    " record BLOB NOT NULL, PRIMARY KEY (tenant, id)) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS responses_expiry ON responses (expires_at);";

static int db_exec_op(sqlite3 *db, op_t *op) {
  static const char *const sql[] = {
      "INSERT OR REPLACE INTO responses (tenant, id, expires_at, record) VALUES (?1, ?2, ?3, ?4)",
      "DELETE FROM responses WHERE tenant = ?1 AND id = ?2",
      "SELECT record FROM responses WHERE tenant = ?1 AND id = ?2 AND expires_at > ?3",
      "DELETE FROM responses WHERE expires_at <= ?3"};
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(db, sql[op->type], -1, &st, NULL);
  if (rc != SQLITE_OK) return LLMUX_EIO;
  if (op->type != OP_SWEEP) {
    sqlite3_bind_text(st, 1, op->tenant, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, op->id, -1, SQLITE_STATIC);
  }
  if (op->type == OP_PUT) {
    sqlite3_bind_int64(st, 3, op->expires_ms);
    sqlite3_bind_blob(st, 4, op->record, (int)op->len, SQLITE_STATIC);
  } else if (op->type != OP_DELETE) {
    sqlite3_bind_int64(st, 3, op->now_ms);
  }
  rc = sqlite3_step(st);
  if (op->type == OP_GET && rc == SQLITE_ROW) {
    const void *b = sqlite3_column_blob(st, 0);
    size_t n = (size_t)sqlite3_column_bytes(st, 0);
    op->found = malloc(n + 1);
    if (op->found != NULL) {
      if (n) memcpy(op->found, b, n);
      op->found[n] = '\0';
      op->found_len = n;
    }
    rc = op->found ? 0 : LLMUX_ENOMEM;
  } else if (op->type == OP_GET && rc == SQLITE_DONE) {
    rc = LLMUX_ENOTFOUND;
  } else {
    rc = rc == SQLITE_DONE ? 0 : LLMUX_EIO;
  }
  sqlite3_finalize(st);
  return rc;
}

static op_t *op_new(int type, const char *tenant, const char *id, const char *record,
                    size_t len) {
  size_t lt = tenant ? strlen(tenant) + 1 : 0, li = id ? strlen(id) + 1 : 0;
  op_t *op = calloc(1, sizeof *op + lt + li + len);
  char *p;
  if (op == NULL) return NULL;
  p = (char *)(op + 1);
  op->type = type;
  if (tenant) op->tenant = memcpy(p, tenant, lt), p += lt;
  if (id) op->id = memcpy(p, id, li), p += li;
  if (record) op->record = memcpy(p, record, len);
  op->len = len;
  return op;
}

static void op_free(op_t *op) {
  free(op->found);
  free(op);
}

/* ---- the thread ---------------------------------------------------------- */

static void thread_main(void *arg) {
  llmux_responses_store_t *s = arg;
  uv_mutex_lock(&s->mu);
  for (;;) {
    op_t *batch, *next;
    int answered = 0, failed = 0;
    while (s->queue == NULL && !s->stop) uv_cond_wait(&s->cv, &s->mu);
    if (s->queue == NULL) break;
    batch = s->queue;
    s->queue = s->queue_tail = NULL;
    uv_mutex_unlock(&s->mu);
    /* The database is the thread's alone: no lock while it works. */
    sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL);
    for (; batch; batch = next) {
      next = batch->next;
      batch->next = NULL;
      batch->rc = db_exec_op(s->db, batch);
      if (batch->type != OP_GET) {
        failed |= batch->rc != 0;
        op_free(batch);
        continue;
      }
      uv_mutex_lock(&s->mu);
      if (s->done_tail) s->done_tail->next = batch;
      else s->done = batch;
      s->done_tail = batch;
      uv_mutex_unlock(&s->mu);
      answered = 1;
    }
    if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) failed = 1;
    if (failed && !s->err_reported) {
      s->err_reported = 1; /* once: the thread must not flood the log */
      llmux_error("responses database: %s (records stay in memory only)", sqlite3_errmsg(s->db));
    }
    uv_mutex_lock(&s->mu);
    if (answered) uv_async_send(&s->async);
  }
  uv_mutex_unlock(&s->mu);
}

static void enqueue(llmux_responses_store_t *s, op_t *op) {
  uv_mutex_lock(&s->mu);
  if (s->queue_tail) s->queue_tail->next = op;
  else s->queue = op;
  s->queue_tail = op;
  uv_cond_signal(&s->cv);
  uv_mutex_unlock(&s->mu);
}

/* Answered lookups, on the loop: the record found goes back in the table. */
static void on_async(uv_async_t *a) {
  llmux_responses_store_t *s = a->data;
  op_t *op, *next;
  uv_mutex_lock(&s->mu);
  op = s->done;
  s->done = s->done_tail = NULL;
  uv_mutex_unlock(&s->mu);
  for (; op; op = next) {
    next = op->next;
    if (op->rc == 0)
      table_put(s, op->tenant, op->id, op->found, op->found_len,
                op->now_ms + (int64_t)s->ttl_ms); /* refreshed in memory only */
    op->cb(op->arg, op->rc, op->found, op->found_len);
    op_free(op);
  }
}

/* Expired records leave memory here, and the database on the thread. */
static void on_sweep(uv_timer_t *t) {
  llmux_responses_store_t *s = t->data;
  int64_t now = now_ms(s);
  entry_t *e, *prev;
  op_t *op;
  for (e = s->lru_tail; e; e = prev) {
    prev = e->prev;
    if (e->expires_ms <= now) drop_entry(s, e);
  }
  if ((op = op_new(OP_SWEEP, NULL, NULL, NULL, 0)) == NULL) return;
  op->now_ms = now;
  enqueue(s, op);
}

/* Runs an op now: without a thread (no loop), on the caller's. */
static int run_or_queue(llmux_responses_store_t *s, op_t *op) {
  int rc;
  if (s->threaded) {
    enqueue(s, op);
    return 0;
  }
  rc = db_exec_op(s->db, op);
  if (op->type != OP_GET) op_free(op);
  return rc;
}

/* ---- the remote ----------------------------------------------------------- */

static void rget_unlink(llmux_responses_store_t *s, rget_t *g) {
  if (g->prev) g->prev->next = g->next;
  else s->rgets = g->next;
  if (g->next) g->next->prev = g->prev;
  g->prev = g->next = NULL;
}

/* The remote's answer. A miss (or a remote that could not answer) asks the
 * database, which may hold what was put while the remote was away. */
static void on_remote_get(void *arg, int rc, const char *record, size_t len) {
  rget_t *g = arg;
  llmux_responses_store_t *s = g->s;
  op_t *op;
  if (s == NULL) { /* the store closed and answered it */
    free(g);
    return;
  }
  rget_unlink(s, g);
  if (rc == 0) {
    table_put(s, g->tenant, g->id, record, len, now_ms(s) + (int64_t)s->ttl_ms);
    g->cb(g->arg, 0, record, len);
  } else if (s->db != NULL && s->threaded &&
             (op = op_new(OP_GET, g->tenant, g->id, NULL, 0)) != NULL) {
    op->now_ms = g->now_ms;
    op->cb = g->cb;
    op->arg = g->arg;
    enqueue(s, op); /* answered through on_async */
  } else {
    g->cb(g->arg, s->db != NULL && s->threaded ? LLMUX_ENOMEM : LLMUX_ENOTFOUND, NULL, 0);
  }
  free(g);
}

/* 0: the remote answers later; else it cannot be asked now. */
static int remote_get(llmux_responses_store_t *s, const char *tenant, const char *id,
                      int64_t now, llmux_responses_get_cb cb, void *arg) {
  size_t lt = strlen(tenant) + 1, li = strlen(id) + 1;
  rget_t *g = calloc(1, sizeof *g + lt + li);
  if (g == NULL) return LLMUX_ENOMEM;
  g->s = s;
  g->cb = cb;
  g->arg = arg;
  g->now_ms = now;
  g->tenant = memcpy((char *)(g + 1), tenant, lt);
  g->id = memcpy(g->tenant + lt, id, li);
  g->next = s->rgets;
  if (s->rgets) s->rgets->prev = g;
  s->rgets = g;
  if (s->remote.get(s->remote.data, tenant, id, on_remote_get, g) == 0) return 0;
  rget_unlink(s, g);
  free(g);
  return LLMUX_ECONNREFUSED;
}

void llmux_responses_set_remote(llmux_responses_store_t *s, const llmux_responses_remote_t *r) {
  assert(r == NULL || s->loop != NULL);
  s->has_remote = r != NULL;
  if (r != NULL) s->remote = *r;
  else memset(&s->remote, 0, sizeof s->remote);
}

const llmux_responses_remote_t *llmux_responses_remote(const llmux_responses_store_t *s) {
  return s->has_remote ? &s->remote : NULL;
}

/* ---- API ----------------------------------------------------------------- */

int llmux_responses_put(llmux_responses_store_t *s, const char *tenant, const char *id,
                        const char *record, size_t len) {
  int64_t expires = now_ms(s) + (int64_t)s->ttl_ms;
  int rc = table_put(s, tenant, id, record, len, expires);
  op_t *op;
  if (rc == LLMUX_ENOMEM) return rc;
  if (s->has_remote &&
      s->remote.put(s->remote.data, tenant, id, record, len, s->ttl_ms) == 0)
    return 0; /* the fleet's: the database is for when the remote is away */
  if (s->db == NULL) return rc;
  if ((op = op_new(OP_PUT, tenant, id, record, len)) == NULL) return LLMUX_ENOMEM;
  op->expires_ms = expires;
  run_or_queue(s, op);
  return 0; /* kept, in the database at least */
}

int llmux_responses_get(llmux_responses_store_t *s, const char *tenant, const char *id,
                        llmux_buf_t *out, llmux_responses_get_cb cb, void *arg) {
  entry_t **pp = find_slot(s, key_hash(tenant, id), tenant, id);
  int64_t now = now_ms(s);
  op_t *op;
  int rc;
  if (pp != NULL && *pp != NULL) {
    entry_t *e = *pp;
    if (e->expires_ms <= now) {
      drop(s, pp);
      return LLMUX_ENOTFOUND;
    }
    lru_unlink(s, e);
    lru_push(s, e);
    return llmux_buf_append(out, e->record, e->len) ? LLMUX_ENOMEM : 0;
  }
  if (s->has_remote && remote_get(s, tenant, id, now, cb, arg) == 0) return LLMUX_EAGAIN;
  if (s->db == NULL) return LLMUX_ENOTFOUND;
  if ((op = op_new(OP_GET, tenant, id, NULL, 0)) == NULL) return LLMUX_ENOMEM;
  op->now_ms = now;
  op->cb = cb;
  op->arg = arg;
  if (s->threaded) {
    enqueue(s, op);
    return LLMUX_EAGAIN;
  }
  rc = db_exec_op(s->db, op);
  if (rc == 0) {
    table_put(s, tenant, id, op->found, op->found_len, now + (int64_t)s->ttl_ms);
    rc = llmux_buf_append(out, op->found, op->found_len) ? LLMUX_ENOMEM : 0;
  }
  op_free(op);
  return rc;
}

void llmux_responses_delete(llmux_responses_store_t *s, const char *tenant, const char *id) {
  entry_t **pp = find_slot(s, key_hash(tenant, id), tenant, id);
  op_t *op;
  if (pp != NULL && *pp != NULL) drop(s, pp);
  if (s->has_remote) s->remote.del(s->remote.data, tenant, id);
  if (s->db != NULL && (op = op_new(OP_DELETE, tenant, id, NULL, 0)) != NULL)
    run_or_queue(s, op);
}

void llmux_responses_stats(const llmux_responses_store_t *s, size_t *bytes, size_t *count) {
  *bytes = s->bytes;
  *count = s->count;
}

/* ---- open / close -------------------------------------------------------- */

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

static int open_db(llmux_responses_store_t *s, const char *path, char *err, size_t errlen) {
  int rc;
  make_parent_dirs(path);
  rc = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                         SQLITE_OPEN_FULLMUTEX, NULL);
  if (rc == SQLITE_OK) sqlite3_busy_timeout(s->db, 2000);
  if (rc == SQLITE_OK) rc = sqlite3_exec(s->db, schema_sql, NULL, NULL, NULL);
  if (rc == SQLITE_OK) return 0;
  snprintf(err, errlen, "cannot open responses database %s: %s", path,
           s->db ? sqlite3_errmsg(s->db) : "out of memory");
  return LLMUX_EIO;
}

static void store_free(llmux_responses_store_t *s) {
  while (s->lru_head) drop_entry(s, s->lru_head);
  free(s->slots);
  if (s->db) sqlite3_close(s->db);
  free(s);
}

int llmux_responses_open(uv_loop_t *loop, const llmux_responses_opts_t *o,
                         llmux_responses_store_t **out, char *err, size_t errlen) {
  llmux_responses_store_t *s = calloc(1, sizeof *s);
  *out = NULL;
  if (s == NULL) {
    snprintf(err, errlen, "out of memory");
    return LLMUX_ENOMEM;
  }
  s->loop = loop;
  s->ttl_ms = o->ttl_ms ? o->ttl_ms : DEFAULT_TTL_MS;
  s->max_memory = o->max_memory ? o->max_memory : DEFAULT_MAX_MEMORY;
  s->now_ms = o->now_ms ? o->now_ms : real_now_ms;
  s->now_arg = o->now_arg;
  if (o->db_path != NULL && open_db(s, o->db_path, err, errlen) != 0) {
    store_free(s);
    return LLMUX_EIO;
  }
  if (loop != NULL) {
    uv_timer_init(loop, &s->sweep);
    s->sweep.data = s;
    uv_timer_start(&s->sweep, on_sweep, SWEEP_INTERVAL_MS, SWEEP_INTERVAL_MS);
    uv_unref((uv_handle_t *)&s->sweep);
    s->handles_open = 1;
  }
  if (loop != NULL && s->db != NULL) {
    /* As in usage.c: no mutex or thread at start-up leaves nothing to do. */
    if (uv_mutex_init(&s->mu) != 0 || uv_cond_init(&s->cv) != 0) abort();
    uv_async_init(loop, &s->async, on_async);
    s->async.data = s;
    uv_unref((uv_handle_t *)&s->async);
    s->handles_open = 2;
    s->threaded = 1;
    if (uv_thread_create(&s->thread, thread_main, s) != 0) abort();
  }
  *out = s;
  return 0;
}

static void on_closed(uv_handle_t *h) {
  llmux_responses_store_t *s = h->data;
  if (--s->handles_open == 0) store_free(s);
}

/* Lookups the remote still owes: answered now; its answers free them. */
static void cancel_rgets(llmux_responses_store_t *s) {
  rget_t *g;
  while ((g = s->rgets) != NULL) {
    rget_unlink(s, g);
    g->s = NULL;
    g->cb(g->arg, LLMUX_ECANCELED, NULL, 0);
  }
  s->has_remote = 0;
}

void llmux_responses_close(llmux_responses_store_t *s) {
  op_t *op, *next;
  if (s == NULL) return;
  cancel_rgets(s);
  if (s->threaded) {
    uv_mutex_lock(&s->mu);
    s->stop = 1;
    uv_cond_signal(&s->cv);
    uv_mutex_unlock(&s->mu);
    uv_thread_join(&s->thread); /* the last writes land: the point of a clean stop */
    s->threaded = 0;
    /* Lookups the loop has not delivered yet: their answers, now. */
    op = s->done;
    s->done = s->done_tail = NULL;
    for (; op; op = next) {
      next = op->next;
      op->cb(op->arg, op->rc == 0 ? LLMUX_ECANCELED : op->rc, NULL, 0);
      op_free(op);
    }
    uv_cond_destroy(&s->cv);
    uv_mutex_destroy(&s->mu);
    uv_close((uv_handle_t *)&s->async, on_closed);
  }
  if (s->handles_open > 0) {
    uv_timer_stop(&s->sweep);
    uv_close((uv_handle_t *)&s->sweep, on_closed);
    return;
  }
  store_free(s);
}
