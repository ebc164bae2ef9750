/* Tenant usage shared through Redis. See usage_shared.h for the layout and
 * the guarantees; usage_shared.lua is the script that changes Redis.
 *
 * Per row the store keeps three layers:
 *   abs       what Redis had at version `ver` (replaced by newer states)
 *   inflight  the part of the batch in flight on this row, until a state
 *             that includes the batch arrives
 *   unsent    what was added since, for the next batch
 * and reports abs + inflight + unsent. A batch owns a copy of its deltas,
 * so it can be sent again after a failure whatever happened to the rows. */
#include "shared/usage_shared.h"

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/log.h"
#include "base/util.h"
#include "shared/redis.h"
#include "shared/usage_shared_lua.h" /* generated from usage_shared.lua */

#define DEFAULT_LEASE_MS 15000u
#define MAX_BATCH 128      /* rows per batch script */
#define CHUNK 128          /* rows per restore or seed script */
#define LOAD_COUNT "256"   /* SSCAN COUNT of a load page */
#define PLEN_MAX 200       /* prefix bytes */

/* Integer counts, as Redis holds them (cost in micro-USD). */
typedef struct tally_s {
  uint64_t req, in, out, micro;
} tally_t;

typedef struct row_s {
  char *tenant, *model; /* owned */
  size_t tenant_len, model_len;
  int day;
  char *key;            /* the Redis key, owned */
  size_t key_len;
  uint64_t hash;
  int known;            /* abs holds values Redis had */
  uint64_t ver;
  tally_t abs;
  tally_t inflight;
  tally_t unsent;       /* micro unused: unsent_cost instead */
  double unsent_cost;   /* USD, rounded to micro-USD when sent */
  struct row_s *next_dirty;
  int dirty;            /* on the dirty list */
  int in_batch;
  int redeliver;        /* a batch was confirmed: report it once more */
} row_t;

typedef struct item_s {
  row_t *row;
  tally_t d;
} item_t;

typedef struct batch_s {
  uint64_t seq;
  int sent;       /* on the live connection */
  int confirmed;  /* a state that includes it arrived */
  unsigned tries;
  size_t n;
  item_t items[];
} batch_t;

typedef struct seed_s {
  char *key;
  size_t key_len;
  tally_t v;
} seed_t;

typedef struct waiter_s {
  struct waiter_s *next;
  uint64_t seq;
  int sent, marker_seen, reply_seen;
  llmux_usage_shared_cb cb;
  void *arg;
} waiter_t;

/* What a load page's reply must find again: its join and its day. */
typedef struct page_s {
  uint64_t join_id;
  int day;
} page_t;

struct llmux_usage_shared_s {
  uv_loop_t *loop;
  llmux_redis_t cmd, sub;
  uv_timer_t tick;        /* lease renewal, daily prune */
  uv_check_t kick;        /* sends a batch after the adds of an iteration */
  int handles_left;
  char *prefix, *channel, *meta_key, *seq_key, *lease_key;
  size_t plen;
  char origin[17];
  int candidate;
  unsigned lease_ms;
  llmux_usage_shared_row_cb on_row;
  llmux_usage_shared_writer_cb on_writer;
  void *arg;
  /* state */
  int up, joining, warned, writer, closing, conns_closing, releasing;
  uint64_t join_id;
  size_t join_left;
  uint64_t epoch;         /* 0: not known yet */
  uint64_t seq;
  uint64_t lose_seq;      /* test hook: this batch's reply and message are lost */
  batch_t *batch;
  row_t *dirty_head, *dirty_tail;
  size_t ndirty;
  int lease_inflight;
  uint64_t seed_join;     /* the join the seed was sent in; 0: not sent */
  seed_t *seeds;
  size_t nseeds, seeds_cap;
  waiter_t *waiters;
  uint64_t wseq;
  int pruned_day;
  uint64_t outages, batches, resent, duplicates;
  llmux_usage_shared_cb close_cb;
  void *close_arg;
  /* rows */
  row_t **table;
  size_t cap, count;
};

static const char *const scripts[1] = {llmux__usage_shared_lua};

/* ---- Days (UTC; as tenant/usage.h, which this layer may not include) ------ */

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

static void day_str(int day, char out[11]) {
  int y;
  unsigned m, d;
  char tmp[48];
  civil_from_days(day, &y, &m, &d);
  snprintf(tmp, sizeof(tmp), "%04d-%02u-%02u", y % 10000, m % 100, d % 100);
  memcpy(out, tmp, 10);
  out[10] = '\0';
}

/* Exactly "YYYY-MM-DD" in s[0..10). */
static int parse_day(const char *s, int *day) {
  unsigned v[3] = {0, 0, 0}, i, k = 0;
  static const unsigned width[3] = {4, 2, 2};
  size_t at = 0;
  for (i = 0; i < 3; i++) {
    for (k = 0; k < width[i]; k++, at++) {
      if (s[at] < '0' || s[at] > '9') return -1;
      v[i] = v[i] * 10 + (unsigned)(s[at] - '0');
    }
    if (i < 2 && s[at++] != '-') return -1;
  }
  if (v[1] < 1 || v[1] > 12 || v[2] < 1 || v[2] > 31) return -1;
  *day = days_from_civil((int)v[0], v[1], v[2]);
  return 0;
}

static int month_start(int day) {
  int y;
  unsigned m, d;
  civil_from_days(day, &y, &m, &d);
  return day - (int)d + 1;
}

static int today(void) { return (int)(time(NULL) / 86400); }

/* ---- Counts --------------------------------------------------------------- */

static void tally_add(tally_t *t, const tally_t *d) {
  t->req += d->req;
  t->in += d->in;
  t->out += d->out;
  t->micro += d->micro;
}

static void tally_sub(tally_t *t, const tally_t *d) {
  t->req -= d->req;
  t->in -= d->in;
  t->out -= d->out;
  t->micro -= d->micro;
}

static uint64_t to_micro(double usd) {
  double v = usd * 1e6;
  return v > 0 ? (uint64_t)llround(v) : 0;
}

static int tally_zero(const tally_t *t) {
  return t->req == 0 && t->in == 0 && t->out == 0 && t->micro == 0;
}

/* ---- Rows ------------------------------------------------------------------ */

static uint64_t fnv(uint64_t h, const char *s, size_t n) {
  size_t i;
  for (i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211u;
  return h;
}

static uint64_t row_hash(const char *t, size_t tl, const char *m, size_t ml, int day) {
  uint64_t h = fnv(14695981039346656037u, t, tl);
  h = fnv((h ^ 0x1f) * 1099511628211u, m, ml);
  return (h ^ (uint64_t)(uint32_t)day) * 0x9e3779b97f4a7c15u;
}

static int row_is(const row_t *r, const char *t, size_t tl, const char *m, size_t ml,
                  int day) {
  return r->day == day && r->tenant_len == tl && r->model_len == ml &&
         memcmp(r->tenant, t, tl) == 0 && memcmp(r->model, m, ml) == 0;
}

static row_t **slot_of(row_t **table, size_t cap, uint64_t h, const char *t, size_t tl,
                       const char *m, size_t ml, int day) {
  size_t i = (size_t)(h >> 7) & (cap - 1);
  while (table[i] && (table[i]->hash != h || !row_is(table[i], t, tl, m, ml, day)))
    i = (i + 1) & (cap - 1);
  return &table[i];
}

/* Puts every row in a table of `cap` slots, leaving out (and freeing)
 * those `drop` says go. */
static void rehash(llmux_usage_shared_t *us, size_t cap, int (*drop)(const row_t *, int),
                   int arg);

static void row_free(row_t *r) {
  free(r->tenant);
  free(r->model);
  free(r->key);
  free(r);
}

static char *make_key(const llmux_usage_shared_t *us, const char *t, size_t tl, const char *m,
                      size_t ml, int day, size_t *len) {
  llmux_buf_t b = {0};
  char d[11];
  day_str(day, d);
  llmux_buf_printf(&b, "%susage:%s:%zu:", us->prefix, d, tl);
  llmux_buf_append(&b, t, tl);
  llmux_buf_append(&b, ":", 1);
  llmux_buf_append(&b, m, ml);
  if (b.base == NULL) abort(); /* as llmux_x*: a small control structure */
  *len = b.len;
  return b.base;
}

static row_t *find_row(llmux_usage_shared_t *us, const char *t, size_t tl, const char *m,
                       size_t ml, int day, int create) {
  uint64_t h = row_hash(t, tl, m, ml, day);
  row_t **slot = slot_of(us->table, us->cap, h, t, tl, m, ml, day), *r;
  if (*slot || !create) return *slot;
  if ((us->count + 1) * 2 > us->cap) {
    rehash(us, us->cap * 2, NULL, 0);
    slot = slot_of(us->table, us->cap, h, t, tl, m, ml, day);
  }
  r = llmux_xcalloc(1, sizeof(*r));
  r->tenant = llmux_xstrndup(t, tl);
  r->model = llmux_xstrndup(m, ml);
  r->tenant_len = tl;
  r->model_len = ml;
  r->day = day;
  r->hash = h;
  r->key = make_key(us, t, tl, m, ml, day, &r->key_len);
  *slot = r;
  us->count++;
  return r;
}

static void rehash(llmux_usage_shared_t *us, size_t cap, int (*drop)(const row_t *, int),
                   int arg) {
  row_t **old = us->table, **table = llmux_xcalloc(cap, sizeof(*table));
  size_t i;
  for (i = 0; i < us->cap; i++) {
    row_t *r = old[i];
    if (r == NULL) continue;
    if (drop && drop(r, arg)) {
      row_free(r);
      us->count--;
      continue;
    }
    *slot_of(table, cap, r->hash, r->tenant, r->tenant_len, r->model, r->model_len,
             r->day) = r;
  }
  free(old);
  us->table = table;
  us->cap = cap;
}

/* Rows of days before the previous month, with nothing pending. */
static int prunable(const row_t *r, int first_kept) {
  return r->day < first_kept && !r->dirty && !r->in_batch && tally_zero(&r->inflight);
}

static void prune(llmux_usage_shared_t *us) {
  int t = today();
  if (t == us->pruned_day) return;
  us->pruned_day = t;
  rehash(us, us->cap, prunable, month_start(month_start(t) - 1));
}

/* The key a Redis key name stands for; 0, or -1 when it is not a row's. */
static int parse_key(const llmux_usage_shared_t *us, const char *k, size_t n, llmux_str_t *t,
                     llmux_str_t *m, int *day) {
  size_t at = us->plen + 6, len = 0, digits = 0;
  if (n < at + 11 || memcmp(k, us->prefix, us->plen) != 0 ||
      memcmp(k + us->plen, "usage:", 6) != 0 || memchr(k, '\0', n) != NULL ||
      parse_day(k + at, day) != 0 || k[at + 10] != ':')
    return -1;
  for (at += 11; at < n && k[at] >= '0' && k[at] <= '9' && digits < 6; at++, digits++)
    len = len * 10 + (size_t)(k[at] - '0');
  if (digits == 0 || at >= n || k[at] != ':' || len == 0 || at + 1 + len + 1 >= n ||
      k[at + 1 + len] != ':')
    return -1;
  t->base = k + at + 1;
  t->len = len;
  m->base = k + at + 2 + len;
  m->len = n - (at + 2 + len);
  return 0;
}

/* ---- What the caller sees --------------------------------------------------- */

static void deliver(llmux_usage_shared_t *us, row_t *r) {
  llmux_usage_shared_counts_t c;
  r->redeliver = 0;
  if (!r->known) return;
  c.requests = r->abs.req + r->inflight.req + r->unsent.req;
  c.input_tokens = r->abs.in + r->inflight.in + r->unsent.in;
  c.output_tokens = r->abs.out + r->inflight.out + r->unsent.out;
  c.cost_usd = (double)(r->abs.micro + r->inflight.micro) / 1e6 + r->unsent_cost;
  us->on_row(us->arg, r->tenant, r->model, r->day, &c);
}

static void set_writer(llmux_usage_shared_t *us, int writer) {
  if (us->writer == writer) return;
  us->writer = writer;
  llmux_info("usage sharing: this process %s the usage_db writer",
             writer ? "is now" : "is no longer");
  if (us->on_writer) us->on_writer(us->arg, writer);
}

/* ---- Script arguments --------------------------------------------------------- */

typedef llmux_redis_args_t args_t;



static void arg_s(args_t *a, const char *s) { llmux_redis_arg_str(a, s, strlen(s)); }


static void arg_tally(args_t *a, const tally_t *t) {
  llmux_redis_arg_u64(a, t->req);
  llmux_redis_arg_u64(a, t->in);
  llmux_redis_arg_u64(a, t->out);
  llmux_redis_arg_u64(a, t->micro);
}

/* Keys go first: KEYS[1] is always the meta hash. */
static args_t *args_begin(llmux_usage_shared_t *us, int cap, const char *key2) {
  args_t *a = llmux_redis_args_new(cap);
  arg_s(a, us->meta_key);
  if (key2) arg_s(a, key2);
  return a;
}

/* Runs the script. When it cannot even be queued the connection is
 * dropped (the store goes down, in this call) and -1 returned. */
static int run(llmux_usage_shared_t *us, args_t *a, int nkeys, llmux_redis_cb cb, void *arg) {
  int rc = llmux_redis_evalsha(&us->cmd, 0, cb, arg, nkeys, a->n, a->v, a->len);
  free(a);
  if (rc == 0) return 0;
  llmux_redis_reset(&us->cmd, "could not queue a script");
  return -1;
}

/* ---- Replies and states --------------------------------------------------------- */

/* A script's reply: an array of at least n whose first element is the
 * epoch. 0, or -1 after dropping the connection (an error reply). */
static int check_reply(llmux_usage_shared_t *us, int status, const redisReply *reply, size_t n,
                       uint64_t *epoch) {
  char why[160];
  if (status != 0) return -1; /* the connection is gone: went_down handles it */
  if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= n &&
      reply->element[0]->type == REDIS_REPLY_STRING) {
    *epoch = strtoull(reply->element[0]->str, NULL, 10);
    return 0;
  }
  snprintf(why, sizeof(why), "usage script: %s",
           reply->type == REDIS_REPLY_ERROR && reply->str ? reply->str : "bad reply");
  llmux_redis_reset(&us->cmd, why);
  return -1;
}

/* Redis lost its data while connected: join again (which restores). */
static int epoch_moved(llmux_usage_shared_t *us, uint64_t epoch) {
  if (epoch == us->epoch) return 0;
  llmux_redis_reset(&us->cmd, "Redis lost its data (new epoch)");
  return 1;
}

static int next_u64(const char **p, const char *end, uint64_t *out) {
  uint64_t v = 0;
  const char *s = *p;
  if (s >= end || *s < '0' || *s > '9') return -1;
  for (; s < end && *s >= '0' && *s <= '9'; s++) {
    if (v > (UINT64_MAX - 9) / 10) return -1;
    v = v * 10 + (uint64_t)(*s - '0');
  }
  if (s < end && *s != ' ' && *s != '\n') return -1;
  *p = s < end && *s == ' ' ? s + 1 : s;
  *out = v;
  return 0;
}

typedef struct hdr_s {
  uint64_t epoch, seq;
  const char *origin;
  size_t origin_len;
  const char *body; /* the first row's line */
} hdr_t;

/* "U <epoch> <origin> <seq>\n". 0, or -1 if malformed. */
static int parse_header(const char *s, size_t len, hdr_t *h) {
  const char *end = s + len, *p = s + 2, *nl = memchr(s, '\n', len), *sp;
  if (len < 2 || s[0] != 'U' || s[1] != ' ' || nl == NULL) return -1;
  if (next_u64(&p, nl, &h->epoch) != 0 || (sp = memchr(p, ' ', (size_t)(nl - p))) == NULL)
    return -1;
  h->origin = p;
  h->origin_len = (size_t)(sp - p);
  p = sp + 1;
  if (next_u64(&p, nl, &h->seq) != 0 || p != nl) return -1;
  h->body = nl + 1 <= end ? nl + 1 : end;
  return 0;
}

static void take_row(llmux_usage_shared_t *us, const char *key, size_t klen, uint64_t v,
                     const tally_t *t) {
  llmux_str_t tenant, model;
  row_t *r;
  int day;
  if (parse_key(us, key, klen, &tenant, &model, &day) != 0) {
    llmux_debug("usage sharing: ignored a key that is not a row's");
    return;
  }
  r = find_row(us, tenant.base, tenant.len, model.base, model.len, day, 1);
  if (v <= r->ver) return;
  r->ver = v;
  r->abs = *t;
  r->known = 1;
  deliver(us, r);
}

/* The rows of a state text (after its header). */
static void take_rows(llmux_usage_shared_t *us, const char *p, const char *end) {
  while (p < end) {
    uint64_t v, klen;
    tally_t t;
    if (next_u64(&p, end, &v) || next_u64(&p, end, &t.req) || next_u64(&p, end, &t.in) ||
        next_u64(&p, end, &t.out) || next_u64(&p, end, &t.micro) ||
        next_u64(&p, end, &klen) || klen > (uint64_t)(end - p) ||
        (p + klen < end && p[klen] != '\n')) {
      llmux_debug("usage sharing: ignored a malformed state");
      return;
    }
    take_row(us, p, (size_t)klen, v, &t);
    p += klen + 1;
  }
}

/* A state text of the live epoch: its rows. */
static void take_text(llmux_usage_shared_t *us, const redisReply *e) {
  hdr_t h;
  if (e->type != REDIS_REPLY_STRING || parse_header(e->str, e->len, &h) != 0) return;
  if (h.epoch == us->epoch) take_rows(us, h.body, e->str + e->len);
}

/* ---- Batches --------------------------------------------------------------------- */

/* The batch is in a state that arrived: its rows' inflight part goes (the
 * caller takes that state, then redelivers what it did not change). */
static void confirm_batch(batch_t *b) {
  size_t i;
  if (b->confirmed) return;
  b->confirmed = 1;
  for (i = 0; i < b->n; i++) {
    tally_sub(&b->items[i].row->inflight, &b->items[i].d);
    b->items[i].row->redeliver = 1;
  }
}

/* Rows of a confirmed batch that the state taken with it did not report
 * (a newer state had come first, counting the batch on top of inflight):
 * their value changed all the same. */
static void redeliver(llmux_usage_shared_t *us, const batch_t *b) {
  size_t i;
  for (i = 0; i < b->n; i++)
    if (b->items[i].row->redeliver) deliver(us, b->items[i].row);
}

static void free_batch(llmux_usage_shared_t *us) {
  batch_t *b = us->batch;
  size_t i;
  if (b == NULL) return;
  confirm_batch(b);
  for (i = 0; i < b->n; i++) b->items[i].row->in_batch = 0;
  free(b);
  us->batch = NULL;
}

static batch_t *take_batch(llmux_usage_shared_t *us) {
  size_t n = us->ndirty < MAX_BATCH ? us->ndirty : MAX_BATCH, i;
  batch_t *b = llmux_xcalloc(1, sizeof(*b) + n * sizeof(item_t));
  b->seq = ++us->seq;
  b->n = n;
  for (i = 0; i < n; i++) {
    row_t *r = us->dirty_head;
    item_t *it = &b->items[i];
    us->dirty_head = r->next_dirty;
    if (us->dirty_head == NULL) us->dirty_tail = NULL;
    us->ndirty--;
    r->next_dirty = NULL;
    r->dirty = 0;
    r->in_batch = 1;
    it->row = r;
    it->d = r->unsent;
    it->d.micro = to_micro(r->unsent_cost);
    r->unsent_cost -= (double)it->d.micro / 1e6; /* the rounding's remainder waits */
    memset(&r->unsent, 0, sizeof(r->unsent));
    tally_add(&r->inflight, &it->d);
  }
  return b;
}

static void batch_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg);

static void send_batch(llmux_usage_shared_t *us) {
  batch_t *b = us->batch;
  args_t *a = args_begin(us, 7 + 5 * (int)b->n, us->seq_key);
  size_t i;
  for (i = 0; i < b->n; i++) llmux_redis_arg_str(a, b->items[i].row->key, b->items[i].row->key_len);
  arg_s(a, "batch");
  llmux_redis_arg_u64(a, us->plen);
  arg_s(a, us->channel);
  arg_s(a, us->origin);
  llmux_redis_arg_u64(a, b->seq);
  for (i = 0; i < b->n; i++) arg_tally(a, &b->items[i].d);
  b->sent = 1;
  if (b->tries++ > 0) us->resent++;
  us->batches++;
  run(us, a, 2 + (int)b->n, batch_cb, (void *)(uintptr_t)b->seq);
}

static void kick_waiters(llmux_usage_shared_t *us);
static void close_step(llmux_usage_shared_t *us);

/* Sends the next batch when up and none is in flight; when idle, lets the
 * barriers and the close go on. */
static void pump(llmux_usage_shared_t *us) {
  if (!us->up || us->conns_closing) return;
  if (us->batch == NULL && us->ndirty > 0) us->batch = take_batch(us);
  if (us->batch) {
    if (!us->batch->sent) send_batch(us);
    return;
  }
  kick_waiters(us);
  if (us->closing) close_step(us);
}

static void batch_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  llmux_usage_shared_t *us = r->data;
  uint64_t epoch;
  batch_t *b = us->batch;
  if (b == NULL || b->seq != (uint64_t)(uintptr_t)arg || us->conns_closing) return;
  if (status == 0 && us->lose_seq == b->seq) {
    us->lose_seq = 0;
    llmux_redis_reset(&us->cmd, "test: a batch reply was lost");
    return;
  }
  if (check_reply(us, status, reply, 3, &epoch) != 0) return;
  if (epoch != us->epoch) {
    /* Run in a newer epoch: its counts are there; the join reads them. */
    free_batch(us);
    epoch_moved(us, epoch);
    return;
  }
  if (reply->element[1]->type == REDIS_REPLY_INTEGER && reply->element[1]->integer == 1)
    us->duplicates++;
  confirm_batch(b);
  take_text(us, reply->element[2]);
  redeliver(us, b);
  free_batch(us);
  pump(us);
}

/* ---- The subscription ------------------------------------------------------------- */

static void fire_waiters(llmux_usage_shared_t *us, int status) {
  waiter_t **pw = &us->waiters, *w;
  while ((w = *pw) != NULL) {
    if (status == 0 && !(w->marker_seen && w->reply_seen)) {
      pw = &w->next;
      continue;
    }
    *pw = w->next;
    w->cb(us, status, w->arg);
    free(w);
  }
}

static void on_state_message(llmux_usage_shared_t *us, const char *msg, size_t len) {
  hdr_t h;
  batch_t *b = us->batch;
  if (parse_header(msg, len, &h) != 0) {
    llmux_debug("usage sharing: ignored a malformed message");
    return;
  }
  if (us->epoch == 0 || h.epoch < us->epoch) return; /* not joined yet, or stale */
  if (h.epoch > us->epoch) {
    if (us->up) epoch_moved(us, h.epoch);
    return;
  }
  if (h.origin_len == 16 && memcmp(h.origin, us->origin, 16) == 0 && b && b->seq == h.seq) {
    if (us->lose_seq == h.seq) return; /* test hook: lost with the reply */
    confirm_batch(b);
    take_rows(us, h.body, msg + len);
    redeliver(us, b);
    return;
  }
  take_rows(us, h.body, msg + len);
}

static void on_message(llmux_redis_t *r, const char *msg, size_t len) {
  llmux_usage_shared_t *us = r->data;
  waiter_t *w;
  if (us->conns_closing) return;
  if (len > 2 && msg[0] == 'U' && msg[1] == ' ') {
    on_state_message(us, msg, len);
  } else if (len > 19 && msg[0] == 'M' && msg[1] == ' ' && msg[18] == ' ' &&
             memcmp(msg + 2, us->origin, 16) == 0) {
    uint64_t seq = strtoull(msg + 19, NULL, 10); /* hiredis ends it with a NUL */
    for (w = us->waiters; w; w = w->next)
      if (w->seq == seq) w->marker_seen = 1;
    fire_waiters(us, 0);
  }
}

static void marker_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  llmux_usage_shared_t *us = r->data;
  waiter_t *w;
  if (status != 0) return;
  for (w = us->waiters; w; w = w->next)
    if (w->seq == (uint64_t)(uintptr_t)arg) w->reply_seen = 1;
  fire_waiters(us, 0);
}

/* Idle: the barriers not yet under way publish their markers. */
static void kick_waiters(llmux_usage_shared_t *us) {
  waiter_t *w;
  for (w = us->waiters; w && us->up; w = w->next) {
    char msg[48];
    const char *argv[3];
    size_t lens[3];
    if (w->sent) continue;
    snprintf(msg, sizeof(msg), "M %s %" PRIu64, us->origin, w->seq);
    argv[0] = "PUBLISH";
    argv[1] = us->channel;
    argv[2] = msg;
    lens[0] = 7;
    lens[1] = strlen(us->channel);
    lens[2] = strlen(msg);
    w->sent = 1;
    if (llmux_redis_command(&us->cmd, marker_cb, (void *)(uintptr_t)w->seq, 3, argv, lens) != 0) {
      llmux_redis_reset(&us->cmd, "could not queue a marker");
      return;
    }
  }
}

int llmux_usage_shared_sync(llmux_usage_shared_t *s, llmux_usage_shared_cb cb, void *arg) {
  waiter_t *w;
  if (!s->up || s->closing) return LLMUX_ECONNREFUSED;
  w = llmux_xcalloc(1, sizeof(*w));
  w->seq = ++s->wseq;
  w->cb = cb;
  w->arg = arg;
  w->next = s->waiters;
  s->waiters = w;
  if (s->batch == NULL && s->ndirty == 0) kick_waiters(s);
  return 0;
}

/* ---- Restores and seeds --------------------------------------------------------- */

static void join_step_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg);
static void seed_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg);

/* One `base` script for n rows: a restore or a seed (usage_shared.lua). */
static int send_base(llmux_usage_shared_t *us, const char *mode, const char *flag,
                     const char *const *keys, const size_t *klens, const tally_t *vals,
                     size_t n, llmux_redis_cb cb, void *arg) {
  args_t *a = args_begin(us, 8 + 5 * (int)n, us->lease_key);
  size_t i;
  for (i = 0; i < n; i++) llmux_redis_arg_str(a, keys[i], klens[i]);
  arg_s(a, "base");
  llmux_redis_arg_u64(a, us->plen);
  arg_s(a, us->channel);
  arg_s(a, us->origin);
  arg_s(a, mode);
  arg_s(a, flag);
  for (i = 0; i < n; i++) arg_tally(a, &vals[i]);
  return run(us, a, 2 + (int)n, cb, arg);
}

/* Proposes, in chunks, the last values the old epoch confirmed for every
 * row known here (see "Redis lost its data"). Returns the scripts sent, or
 * -1 when the connection went. */
static int send_restore(llmux_usage_shared_t *us, uint64_t old_epoch) {
  const char *keys[CHUNK];
  size_t klens[CHUNK], n = 0, i;
  tally_t vals[CHUNK];
  char flag[24];
  int sent = 0;
  llmux_u64_dec(flag, old_epoch);
  for (i = 0; i <= us->cap; i++) {
    row_t *r = i < us->cap ? us->table[i] : NULL;
    if (r && r->known && !tally_zero(&r->abs)) {
      keys[n] = r->key;
      klens[n] = r->key_len;
      vals[n++] = r->abs;
    }
    if (n == CHUNK || (i == us->cap && n > 0)) {
      if (send_base(us, "restore", flag, keys, klens, vals, n, join_step_cb,
                    (void *)(uintptr_t)us->join_id) != 0)
        return -1;
      sent++;
      n = 0;
    }
  }
  return sent;
}

static void free_seeds(llmux_usage_shared_t *us) {
  size_t i;
  for (i = 0; i < us->nseeds; i++) free(us->seeds[i].key);
  free(us->seeds);
  us->seeds = NULL;
  us->nseeds = us->seeds_cap = 0;
}

/* The writer of an unseeded epoch: the database's rows, in chunks, the
 * last one marking the epoch seeded (one with no row when there are none). */
static void send_seed(llmux_usage_shared_t *us) {
  const char *keys[CHUNK];
  size_t klens[CHUNK], i = 0, n;
  tally_t vals[CHUNK];
  us->seed_join = us->join_id;
  do {
    for (n = 0; n < CHUNK && i < us->nseeds; n++, i++) {
      keys[n] = us->seeds[i].key;
      klens[n] = us->seeds[i].key_len;
      vals[n] = us->seeds[i].v;
    }
    if (send_base(us, "seed", i == us->nseeds ? "1" : "0", keys, klens, vals, n, seed_cb,
                  (void *)(uintptr_t)(i == us->nseeds)) != 0)
      return;
  } while (i < us->nseeds);
}

static void seed_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  llmux_usage_shared_t *us = r->data;
  uint64_t epoch;
  if (us->conns_closing || check_reply(us, status, reply, 3, &epoch) != 0 ||
      epoch_moved(us, epoch))
    return;
  take_text(us, reply->element[2]);
  if (arg == NULL) return;
  if (reply->element[1]->type == REDIS_REPLY_INTEGER && reply->element[1]->integer == 1) {
    llmux_info("usage sharing: Redis seeded from usage_db (%zu rows)", us->nseeds);
    free_seeds(us);
  } else {
    us->seed_join = 0; /* not the holder any more: the next lease may try again */
  }
}

void llmux_usage_shared_seed(llmux_usage_shared_t *s, const char *tenant, const char *model,
                             int day, const llmux_usage_shared_counts_t *c) {
  seed_t *sd;
  if (!s->candidate) return;
  if (s->nseeds == s->seeds_cap) {
    seed_t *grown;
    s->seeds_cap = s->seeds_cap ? s->seeds_cap * 2 : 64;
    grown = realloc(s->seeds, s->seeds_cap * sizeof(*s->seeds));
    if (grown == NULL) abort();
    s->seeds = grown;
  }
  sd = &s->seeds[s->nseeds++];
  sd->key = make_key(s, tenant, strlen(tenant), model, strlen(model), day, &sd->key_len);
  sd->v.req = c->requests;
  sd->v.in = c->input_tokens;
  sd->v.out = c->output_tokens;
  sd->v.micro = to_micro(c->cost_usd);
}

/* ---- The lease ------------------------------------------------------------------ */

static void lease_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  llmux_usage_shared_t *us = r->data;
  uint64_t epoch;
  int held, seeded;
  if ((uint64_t)(uintptr_t)arg != us->join_id || us->conns_closing) return;
  us->lease_inflight = 0;
  if (check_reply(us, status, reply, 3, &epoch) != 0 || epoch_moved(us, epoch)) return;
  held = reply->element[1]->type == REDIS_REPLY_INTEGER && reply->element[1]->integer == 1;
  seeded = reply->element[2]->type == REDIS_REPLY_STRING &&
           strcmp(reply->element[2]->str, "1") == 0;
  if (seeded) free_seeds(us);
  if (us->closing) return;
  set_writer(us, held);
  if (held && !seeded && us->seed_join != us->join_id) send_seed(us);
}

static void lease_try(llmux_usage_shared_t *us) {
  args_t *a;
  if (!us->candidate || !us->up || us->closing || us->lease_inflight) return;
  a = args_begin(us, 5, us->lease_key);
  arg_s(a, "lease");
  arg_s(a, us->origin);
  llmux_redis_arg_u64(a, us->lease_ms);
  us->lease_inflight = 1;
  run(us, a, 2, lease_cb, (void *)(uintptr_t)us->join_id);
}

static void tick_cb(uv_timer_t *t) {
  llmux_usage_shared_t *us = t->data;
  prune(us);
  lease_try(us);
}

/* ---- Down, join, up ---------------------------------------------------------------- */

static void went_down(llmux_usage_shared_t *us, const llmux_redis_t *r) {
  if (us->conns_closing) return;
  if (us->up) us->outages++;
  if (!us->warned && !us->closing) {
    llmux_warn("usage sharing: Redis unavailable (%s); counting locally until it is back",
               r->last_error);
    us->warned = 1;
  }
  us->up = 0;
  us->joining = 0;
  us->join_id++;
  us->lease_inflight = 0;
  /* A batch seen applied is in the mirror already; any other goes again. */
  if (us->batch && us->batch->confirmed) free_batch(us);
  else if (us->batch) us->batch->sent = 0;
  if (!us->closing) set_writer(us, 0);
  fire_waiters(us, LLMUX_ECONNRESET);
  if (us->closing) close_step(us);
}

static void now_up(llmux_usage_shared_t *us) {
  us->up = 1;
  us->joining = 0;
  if (us->warned) llmux_info("usage sharing: Redis is back; usage shared again");
  us->warned = 0;
  pump(us);
  lease_try(us);
}

static void join_done_one(llmux_usage_shared_t *us) {
  if (--us->join_left == 0) now_up(us);
}

static void join_step_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  llmux_usage_shared_t *us = r->data;
  uint64_t epoch;
  if ((uint64_t)(uintptr_t)arg != us->join_id || !us->joining ||
      check_reply(us, status, reply, 3, &epoch) != 0 || epoch_moved(us, epoch))
    return;
  take_text(us, reply->element[2]);
  join_done_one(us);
}

static void load_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg);

static int send_load(llmux_usage_shared_t *us, int day, const char *cursor) {
  page_t *pg = llmux_xmalloc(sizeof(*pg));
  args_t *a;
  llmux_buf_t set = {0};
  char d[11];
  int rc;
  day_str(day, d);
  llmux_buf_printf(&set, "%susage:%s", us->prefix, d);
  if (set.base == NULL) abort();
  a = args_begin(us, 5, set.base);
  arg_s(a, "load");
  arg_s(a, cursor);
  arg_s(a, LOAD_COUNT);
  pg->join_id = us->join_id;
  pg->day = day;
  rc = llmux_redis_evalsha(&us->cmd, 0, load_cb, pg, 2, a->n, a->v, a->len);
  free(a);
  llmux_buf_free(&set);
  if (rc == 0) return 0;
  free(pg);
  llmux_redis_reset(&us->cmd, "could not queue a script");
  return -1;
}

static void load_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  llmux_usage_shared_t *us = r->data;
  page_t pg = *(page_t *)arg;
  uint64_t epoch;
  free(arg);
  if (pg.join_id != us->join_id || !us->joining ||
      check_reply(us, status, reply, 3, &epoch) != 0 || epoch_moved(us, epoch))
    return;
  take_text(us, reply->element[2]);
  if (reply->element[1]->type == REDIS_REPLY_STRING && strcmp(reply->element[1]->str, "0") != 0) {
    send_load(us, pg.day, reply->element[1]->str); /* the next page of the day */
    return;
  }
  join_done_one(us);
}

/* Redis lost its data: the mirror takes the new epoch's states whatever
 * their versions, and what it knew is proposed back. */
static int new_epoch(llmux_usage_shared_t *us, uint64_t old_epoch) {
  size_t i;
  llmux_info("usage sharing: Redis lost its data (new epoch); restoring the totals known here");
  if (us->batch && us->batch->confirmed) free_batch(us);
  for (i = 0; i < us->cap; i++)
    if (us->table[i]) us->table[i]->ver = 0;
  return send_restore(us, old_epoch);
}

static void hello_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  llmux_usage_shared_t *us = r->data;
  uint64_t epoch, old = us->epoch;
  int day, first, sent = 0;
  if ((uint64_t)(uintptr_t)arg != us->join_id || !us->joining ||
      check_reply(us, status, reply, 2, &epoch) != 0)
    return;
  if (reply->element[1]->type == REDIS_REPLY_STRING && strcmp(reply->element[1]->str, "1") == 0)
    free_seeds(us);
  us->epoch = epoch;
  if (old != 0 && epoch != old && (sent = new_epoch(us, old)) < 0) return;
  us->join_left = (size_t)sent + 1; /* held until every load is queued */
  day = today();
  for (first = month_start(day); first <= day; first++) {
    if (send_load(us, first, "0") != 0) return;
    us->join_left++;
  }
  join_done_one(us);
}

static void start_join(llmux_usage_shared_t *us) {
  args_t *a = args_begin(us, 2, NULL);
  us->joining = 1;
  us->join_id++;
  arg_s(a, "hello");
  run(us, a, 1, hello_cb, (void *)(uintptr_t)us->join_id);
}

static void on_conn_state(llmux_redis_t *r, int ready) {
  llmux_usage_shared_t *us = r->data;
  if (!ready) {
    went_down(us, r);
    return;
  }
  if (!us->closing && us->cmd.state == LLMUX_REDIS_READY && us->sub.state == LLMUX_REDIS_READY)
    start_join(us);
}

/* ---- Adds ------------------------------------------------------------------------ */

static void kick_cb(uv_check_t *c) {
  llmux_usage_shared_t *us = c->data;
  uv_check_stop(c);
  pump(us);
}

void llmux_usage_shared_add(llmux_usage_shared_t *s, const char *tenant, const char *model,
                            int day, const llmux_usage_shared_counts_t *d) {
  row_t *r = find_row(s, tenant, strlen(tenant), model, strlen(model), day, 1);
  r->unsent.req += d->requests;
  r->unsent.in += d->input_tokens;
  r->unsent.out += d->output_tokens;
  r->unsent_cost += d->cost_usd;
  if (!r->dirty) {
    r->dirty = 1;
    if (s->dirty_tail) s->dirty_tail->next_dirty = r;
    else s->dirty_head = r;
    s->dirty_tail = r;
    s->ndirty++;
  }
  /* Sent after this loop iteration's other adds, from the check phase. */
  if (s->up && s->batch == NULL && !s->closing) uv_check_start(&s->kick, kick_cb);
}

void llmux__usage_shared_lose_next_reply(llmux_usage_shared_t *s) {
  s->lose_seq = s->batch ? s->batch->seq : s->seq + 1;
}

/* ---- Lifecycle -------------------------------------------------------------------- */

static void make_origin(char out[17]) {
  unsigned char b[8];
  uint64_t x;
  int i;
  if (uv_random(NULL, NULL, b, sizeof(b), 0, NULL) != 0) {
    x = uv_hrtime() ^ ((uint64_t)(uintptr_t)out << 17) ^ (uint64_t)time(NULL);
    memcpy(b, &x, sizeof(b));
  }
  for (i = 0; i < 8; i++) snprintf(out + 2 * i, 3, "%02x", b[i]);
}

static char *joined(const char *a, const char *b, const char *c) {
  llmux_buf_t buf = {0};
  llmux_buf_printf(&buf, "%s%s%s", a, b, c ? c : "");
  if (buf.base == NULL) abort();
  return buf.base;
}

static int conn_init(llmux_usage_shared_t *us, llmux_redis_t *r,
                     const llmux_usage_shared_options_t *o, int subscriber, char *err,
                     size_t errlen) {
  llmux_redis_options_t ro;
  int rc;
  memset(&ro, 0, sizeof(ro));
  ro.url = o->url;
  ro.password = o->password;
  ro.what = subscriber ? "usage sharing (subscriber)" : "usage sharing";
  ro.timeout_ms = o->timeout_ms;
  ro.connect_timeout_ms = o->connect_timeout_ms;
  ro.backoff_min_ms = o->backoff_min_ms;
  ro.backoff_max_ms = o->backoff_max_ms;
  if (subscriber) {
    ro.subscribe = us->channel;
    ro.on_message = on_message;
  } else {
    ro.scripts = scripts;
    ro.nscripts = 1;
  }
  ro.on_state = on_conn_state;
  if ((rc = llmux_redis_init(us->loop, r, &ro, err, errlen)) != 0) return rc;
  r->data = us;
  return 0;
}

static void free_store(llmux_usage_shared_t *us) {
  size_t i;
  free_batch(us);
  for (i = 0; i < us->cap; i++)
    if (us->table[i]) row_free(us->table[i]);
  free(us->table);
  free_seeds(us);
  while (us->waiters) {
    waiter_t *w = us->waiters;
    us->waiters = w->next;
    free(w);
  }
  free(us->prefix);
  free(us->channel);
  free(us->meta_key);
  free(us->seq_key);
  free(us->lease_key);
  free(us);
}

static int bad(char *err, size_t errlen, const char *why) {
  if (err && errlen) snprintf(err, errlen, "%s", why);
  return LLMUX_EINVAL;
}

int llmux_usage_shared_new(uv_loop_t *loop, const llmux_usage_shared_options_t *o,
                           llmux_usage_shared_t **out, char *err, size_t errlen) {
  llmux_usage_shared_t *us;
  llmux_redis_url_t url;
  const char *prefix;
  int rc;
  if (loop == NULL || o == NULL || out == NULL || o->url == NULL || o->on_row == NULL)
    return LLMUX_EINVAL;
  if ((rc = llmux_redis_parse_url(o->url, &url, err, errlen)) != 0) return rc;
  prefix = o->prefix ? o->prefix : "llmux:";
  if (strpbrk(prefix, " \t\r\n") != NULL)
    return bad(err, errlen, "shared_state_prefix must not contain spaces");
  if (strlen(prefix) > PLEN_MAX) return bad(err, errlen, "shared_state_prefix is too long");
  us = llmux_xcalloc(1, sizeof(*us));
  us->loop = loop;
  us->prefix = llmux_xstrdup(prefix);
  us->plen = strlen(prefix);
  make_origin(us->origin);
  us->channel = joined(prefix, "usage", NULL);
  us->meta_key = joined(prefix, "usage:meta", NULL);
  us->seq_key = joined(prefix, "usage:seq:", us->origin);
  us->lease_key = joined(prefix, "usage:writer", NULL);
  us->candidate = o->candidate;
  us->lease_ms = o->lease_ms ? o->lease_ms : DEFAULT_LEASE_MS;
  if (us->lease_ms < 30) us->lease_ms = 30;
  us->on_row = o->on_row;
  us->on_writer = o->on_writer;
  us->arg = o->arg;
  us->pruned_day = today();
  us->cap = 64;
  us->table = llmux_xcalloc(us->cap, sizeof(*us->table));
  /* The URL was checked above: the only thing init checks that can fail. */
  if (conn_init(us, &us->cmd, o, 0, err, errlen) != 0) {
    free_store(us);
    return LLMUX_EINVAL;
  }
  rc = conn_init(us, &us->sub, o, 1, err, errlen);
  assert(rc == 0);
  uv_timer_init(loop, &us->tick);
  uv_check_init(loop, &us->kick);
  us->tick.data = us->kick.data = us;
  uv_unref((uv_handle_t *)&us->tick);
  uv_unref((uv_handle_t *)&us->kick);
  *out = us;
  return 0;
}

int llmux_usage_shared_start(llmux_usage_shared_t *s) {
  int rc = llmux_redis_start(&s->sub);
  if (rc == 0) rc = llmux_redis_start(&s->cmd);
  if (rc == 0) uv_timer_start(&s->tick, tick_cb, s->lease_ms / 3, s->lease_ms / 3);
  return rc;
}

int llmux_usage_shared_is_writer(const llmux_usage_shared_t *s) { return s->writer; }

void llmux_usage_shared_stats(const llmux_usage_shared_t *s, llmux_usage_shared_stats_t *out) {
  const batch_t *b = s->batch;
  size_t i;
  memset(out, 0, sizeof(*out));
  out->up = s->up;
  out->writer = s->writer;
  out->errors = s->cmd.errors + s->sub.errors;
  out->outages = s->outages;
  out->batches = s->batches;
  out->resent = s->resent;
  out->duplicates = s->duplicates;
  out->pending_rows = s->ndirty;
  for (i = 0; b && !b->confirmed && i < b->n; i++)
    if (!b->items[i].row->dirty) out->pending_rows++;
  out->rows = s->count;
  out->last_error = s->cmd.last_error[0] ? s->cmd.last_error : s->sub.last_error;
}

static void one_closed(llmux_usage_shared_t *us) {
  if (--us->handles_left > 0) return;
  if (us->close_cb) us->close_cb(us, 0, us->close_arg);
  free_store(us);
}

static void handle_closed(uv_handle_t *h) { one_closed(h->data); }

static void conn_closed(llmux_redis_t *r) { one_closed(r->data); }

static void release_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  llmux_usage_shared_t *us = r->data;
  if (us->conns_closing) return;
  us->releasing = 2; /* done, whatever the answer */
  us->writer = 0;
  close_step(us);
}

/* The close goes on: the last batches while up, then the lease, then the
 * connections. Each step is bounded by timeout_ms (a failure goes down,
 * which comes back here). */
static void close_step(llmux_usage_shared_t *us) {
  if (us->conns_closing) return;
  if (us->up && (us->batch || us->ndirty)) {
    pump(us);
    return;
  }
  if (us->up && us->writer && us->releasing == 0) {
    args_t *a = args_begin(us, 4, us->lease_key);
    arg_s(a, "release");
    arg_s(a, us->origin);
    us->releasing = 1;
    run(us, a, 2, release_cb, NULL); /* a failure went down: back here, closed */
    return;
  }
  if (us->up && us->releasing == 1) return;
  if (us->ndirty || us->batch)
    llmux_warn("usage sharing: closing with usage not sent to Redis (Redis unavailable): "
               "it stays in this process's own count");
  us->conns_closing = 1;
  us->up = 0;
  llmux_redis_close(&us->sub, conn_closed);
  llmux_redis_close(&us->cmd, conn_closed);
}

void llmux_usage_shared_close(llmux_usage_shared_t *s, llmux_usage_shared_cb cb, void *arg) {
  if (s->closing) return;
  s->closing = 1;
  s->close_cb = cb;
  s->close_arg = arg;
  s->handles_left = 4; /* tick, kick, cmd, sub */
  fire_waiters(s, LLMUX_ECANCELED);
  uv_timer_stop(&s->tick);
  uv_check_stop(&s->kick);
  uv_close((uv_handle_t *)&s->tick, handle_closed);
  uv_close((uv_handle_t *)&s->kick, handle_closed);
  close_step(s);
}
