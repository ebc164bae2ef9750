/* The rate-limit store shared through Redis. See rl_shared.h for the
 * algorithm and its bound; rl_shared.lua is the script that changes Redis.
 *
 * Per key the store keeps four layers, all on the shared clock:
 *   glob    what Redis held at version `ver` (replaced by newer states)
 *   pend    changes sent and not yet seen back, one record each (recs)
 *   unsent  changes made while down, added to Redis on reconnect
 *   own     everything this process counted, re-sent if Redis lost it all
 * and decides on glob + pend + unsent. Blocks and provider headroom set
 * here are held in `loc` overlays until Redis's state includes them.
 *
 * The mirror is not a wrapped memory store: that store has no way to take
 * counts learned from elsewhere, slot by slot, and its slots are on this
 * process's monotonic clock, not on one the fleet shares. The windows are
 * shared/window.h's; the semantics are ratelimit.c's, view for view. */
#include "shared/rl_shared.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/log.h"
#include "base/util.h"
#include "shared/redis.h"
#include "shared/rl_shared_lua.h" /* generated from rl_shared.lua */
#include "shared/window.h"

#define DEFAULT_MAX_KEYS 16384u
#define SYNC_TTL_MS 60000u /* as the memory store: a report with no reset */
#define NDIMS LLMUX_RL_NDIMS
#define MAX_ITEMS (2 * LLMUX_WIN_RING)

enum { REC_COUNT, REC_APPLY, REC_BLOCK, REC_UNBLOCK };
enum { DIRTY_SYNC = 1, DIRTY_BLOCK = 2, DIRTY_UNBLOCK = 4 };

typedef struct item_s {
  int which;      /* LLMUX_WIN_MINUTE / DAY */
  uint64_t slot;
  int64_t req, tok;
} item_t;

typedef struct synced_s {
  int valid;
  uint64_t limit, remaining, reset_at, used_since; /* reset_at: shared ms */
} synced_t;

/* One change sent to Redis, on one key, until a state includes it. */
typedef struct rec_s {
  struct rec_s *next;
  uint64_t seq;
  uint64_t ver;   /* the version that includes it; 0 until known */
  int kind;
  int64_t sreq, stok; /* headroom deltas counted in pend_s */
  size_t nitems;
  item_t items[];
} rec_t;

typedef struct entry_s {
  char *provider, *model; /* owned; model NULL for the provider-wide key */
  char *rkey;             /* the Redis key */
  size_t rkey_len;
  uint64_t hash;
  uint64_t limits[NDIMS];
  /* glob: Redis's state */
  uint64_t ver;
  int stale;              /* take the next state whatever its version */
  int reading;            /* a read of the whole key is in flight */
  uint64_t heard;         /* the newest version any line told of */
  llmux_win_t glob[2];
  synced_t sync[NDIMS];
  uint64_t gen;
  uint64_t retry_until, spend_until; /* shared ms; UINT64_MAX forever */
  /* pend */
  llmux_win_t pend[2];
  int64_t pend_s[2];      /* headroom used_since deltas: requests, tokens */
  rec_t *recs, *recs_tail;
  unsigned napply, nblock; /* pending APPLY / BLOCK records */
  /* unsent (allocated on first use) */
  llmux_win_t *unsent;
  int64_t unsent_s[2];
  int dirty;
  /* loc overlays, valid while their change is pending or dirty */
  synced_t loc_sync[NDIMS];
  uint64_t loc_retry, loc_spend;
  /* own */
  llmux_win_t own[2];
  uint64_t inflight;
} entry_t;

typedef struct waiter_s {
  struct waiter_s *next;
  uint64_t seq;
  int marker_seen, reply_seen;
  llmux_rl_shared_cb cb;
  void *arg;
} waiter_t;

typedef struct shared_s {
  llmux_rl_store_t base;
  uv_loop_t *loop;
  llmux_redis_t cmd, sub;
  int closed_conns;
  char *prefix, *channel, *epoch_key, *inst_key;
  char origin[17];
  uint64_t seq;
  int64_t offset;
  int wall;           /* offset makes the shared clock Unix time */
  uint64_t last_now;  /* the latest shared time a call brought */
  int fail_closed;
  int refresh, fresh;  /* Refreshing (rl_shared.h) */
  int want_full;       /* replies carry whole states (joins, a new epoch) */
  uint64_t change_mark; /* cmd.queued once the latest change was queued */
  uint64_t touched_ms; /* when a script last touched the instances set */
  unsigned timeout_ms;
  /* state */
  int up, joining, warned;
  uint64_t join_id;
  size_t join_left;
  uint64_t epoch;
  uint64_t instances;
  uint64_t outages;
  uint64_t npending;
  waiter_t *waiters;
  llmux_rl_settle_t *settle_head, *settle_tail; /* by mark, ascending */
  llmux_rl_shared_cb close_cb;
  void *close_arg;
  /* keys */
  entry_t **table;
  size_t cap, count, max;
} shared_t;

static const char *const scripts[1] = {llmux__rl_shared_lua};

static shared_t *shared_of(llmux_rl_store_t *s) {
  return llmux_container_of(s, shared_t, base);
}

static uint64_t snow(const shared_t *st, uint64_t now_ms) {
  return (uint64_t)((int64_t)now_ms + st->offset);
}

/* The shared time of a call's now_ms, remembered for the scripts that run
 * outside calls (blocks, reconnects). */
static uint64_t at(shared_t *st, uint64_t now_ms) {
  uint64_t now = snow(st, now_ms);
  if (now > st->last_now) st->last_now = now;
  return now;
}

/* The shared time when no call brought one: the wall clock when that is the
 * shared clock, else the latest a call brought (tests drive it by hand). */
static uint64_t st_now(const shared_t *st) {
  uint64_t wall;
  if (!st->wall) return st->last_now;
  wall = snow(st, llmux_now_us() / 1000);
  return wall > st->last_now ? wall : st->last_now;
}

/* ---- Keys ----------------------------------------------------------------- */

static uint64_t fnv(uint64_t h, const char *s, size_t n) {
  size_t i;
  for (i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211u;
  return h;
}

static uint64_t key_hash(const char *provider, size_t plen, const char *model, size_t mlen) {
  uint64_t h = fnv(14695981039346656037u, provider, plen);
  h = (h ^ (model ? 0x1f : 0x1e)) * 1099511628211u;
  return model ? fnv(h, model, mlen) : h;
}

static int matches(const entry_t *e, const char *p, size_t plen, const char *m, size_t mlen) {
  if (strlen(e->provider) != plen || memcmp(e->provider, p, plen) != 0) return 0;
  if (e->model == NULL || m == NULL) return e->model == NULL && m == NULL;
  return strlen(e->model) == mlen && memcmp(e->model, m, mlen) == 0;
}

static entry_t **find_slot(shared_t *st, const char *p, size_t plen, const char *m,
                           size_t mlen, uint64_t h) {
  size_t i = (size_t)h & (st->cap - 1);
  while (st->table[i] &&
         (st->table[i]->hash != h || !matches(st->table[i], p, plen, m, mlen)))
    i = (i + 1) & (st->cap - 1);
  return &st->table[i];
}

static entry_t *find(shared_t *st, const char *p, size_t plen, const char *m, size_t mlen,
                     int create) {
  uint64_t h = key_hash(p, plen, m, mlen);
  entry_t **slot = find_slot(st, p, plen, m, mlen, h), *e;
  llmux_buf_t b = {0};
  if (*slot || !create) return *slot;
  if (st->count == st->max) return NULL;
  e = llmux_xcalloc(1, sizeof(*e));
  e->provider = llmux_xstrndup(p, plen);
  e->model = m ? llmux_xstrndup(m, mlen) : NULL;
  e->hash = h;
  if (m)
    llmux_buf_printf(&b, "%srl:r:%zu:%s:%s", st->prefix, plen, e->provider, e->model);
  else
    llmux_buf_printf(&b, "%srl:p:%s", st->prefix, e->provider);
  e->rkey = b.base;
  e->rkey_len = b.len;
  *slot = e;
  st->count++;
  return e;
}

static entry_t *lookup(shared_t *st, const llmux_rl_key_t *key, int create) {
  return find(st, key->provider, strlen(key->provider), key->model,
              key->model ? strlen(key->model) : 0, create);
}

static void read_key(shared_t *st, entry_t *e);

/* lookup(create) for a caller's key: one new while up is read from Redis
 * at once (what the fleet already counted on it), as the join reads the
 * others. */
static entry_t *lookup_new(shared_t *st, const llmux_rl_key_t *key) {
  size_t before = st->count;
  entry_t *e = lookup(st, key, 1);
  if (e && st->count > before && st->up) read_key(st, e);
  return e;
}

/* The key a Redis key name stands for; 0, or -1 when it is not one of ours. */
static int parse_rkey(const shared_t *st, const char *k, size_t n, llmux_str_t *p,
                      llmux_str_t *m) {
  size_t pl = strlen(st->prefix), len = 0, i;
  if (n < pl + 5 || memcmp(k, st->prefix, pl) != 0) return -1;
  k += pl;
  n -= pl;
  if (memcmp(k, "rl:p:", 5) == 0) {
    p->base = k + 5;
    p->len = n - 5;
    m->base = NULL;
    m->len = 0;
    return p->len ? 0 : -1;
  }
  if (memcmp(k, "rl:r:", 5) != 0) return -1;
  for (i = 5; i < n && k[i] >= '0' && k[i] <= '9' && len < n; i++)
    len = len * 10 + (size_t)(k[i] - '0');
  if (i == 5 || i >= n || k[i] != ':' || len == 0 || i + 1 + len + 1 > n ||
      k[i + 1 + len] != ':')
    return -1;
  p->base = k + i + 1;
  p->len = len;
  m->base = k + i + 2 + len;
  m->len = n - (i + 2 + len);
  return 0;
}

/* ---- Views ---------------------------------------------------------------- */

/* The window `which` as decided on: glob + pend + unsent, slots at >= 0. */
static void view(const entry_t *e, int which, uint64_t now, llmux_win_t *out) {
  const llmux_win_t *ws[3] = {&e->glob[which], &e->pend[which],
                              e->unsent ? &e->unsent[which] : NULL};
  llmux_win_combine(out, ws, 3, llmux_win_slot(which, now));
}

static int loc_sync_live(const entry_t *e) {
  return e->napply > 0 || (e->dirty & DIRTY_SYNC);
}

static int loc_block_live(const entry_t *e) {
  return e->nblock > 0 || (e->dirty & DIRTY_BLOCK);
}

/* The provider headroom of dimension d as decided on. */
static synced_t synced_view(const entry_t *e, int d, uint64_t now) {
  synced_t s = loc_sync_live(e) && e->loc_sync[d].valid ? e->loc_sync[d] : e->sync[d];
  int64_t used = (int64_t)s.used_since + e->pend_s[d / 2] + (e->unsent ? e->unsent_s[d / 2] : 0);
  s.used_since = used > 0 ? (uint64_t)used : 0;
  if (!s.valid || now >= s.reset_at) s.valid = 0;
  return s;
}

static uint64_t synced_left(const synced_t *s) {
  return s->remaining > s->used_since ? s->remaining - s->used_since : 0;
}

static void blocks(const entry_t *e, uint64_t *retry, uint64_t *spend) {
  *retry = e->retry_until;
  *spend = e->spend_until;
  if (!loc_block_live(e)) return;
  if (e->loc_retry > *retry) *retry = e->loc_retry;
  if (e->loc_spend > *spend) *spend = e->loc_spend;
}

static uint64_t block_wait(const entry_t *e, uint64_t now) {
  uint64_t r, s, until;
  blocks(e, &r, &s);
  until = r > s ? r : s;
  if (until <= now) return 0;
  return until == LLMUX_RL_FOREVER ? LLMUX_RL_FOREVER : until - now;
}

/* As the memory store: the time until every view of every dimension has
 * room for the request. */
static uint64_t entry_wait(const entry_t *e, uint64_t tokens, uint64_t now) {
  uint64_t wait = block_wait(e, now), w;
  llmux_win_t v[2];
  int d;
  view(e, 0, now, &v[0]);
  view(e, 1, now, &v[1]);
  for (d = 0; d < NDIMS; d++) {
    uint64_t cost = d / 2 ? tokens : 1;
    synced_t s = synced_view(e, d, now);
    if (s.valid && cost > synced_left(&s) && s.reset_at - now > wait) wait = s.reset_at - now;
    if (e->limits[d] == 0) continue;
    w = llmux_win_wait(&v[d % 2], d % 2, d / 2, e->limits[d], cost, now);
    if (w > wait) wait = w;
  }
  return wait;
}

/* The sum of a window's slots at now (signed: pend may hold releases). */
static int64_t signed_sum(const llmux_win_t *w, int which, int kind, uint64_t now) {
  int64_t sum = 0;
  uint64_t k;
  for (k = llmux_win_first(which, w->head, now); k <= w->head; k++)
    sum += llmux_win_get(w, kind, k);
  return sum;
}

/* The rule of rl_shared.h, "The bound": within its partition of a limit
 * (limit / N of the window, counted on its own reservations) a process
 * reserves without waiting for Redis; beyond it, only with nothing of its
 * own in flight on the key. Provider headroom has no partition (the
 * provider counts others too): there a process takes at most its 1/N share
 * of what Redis confirmed while it has changes in flight. 1: wait. */
static int gated(const shared_t *st, const entry_t *e, uint64_t tokens, uint64_t now) {
  uint64_t n = st->instances;
  int d;
  for (d = 0; d < NDIMS; d++) {
    uint64_t cost = d / 2 ? tokens : 1, lim = e->limits[d];
    int64_t u = signed_sum(&e->pend[d % 2], d % 2, d / 2, now), mine;
    synced_t s = e->sync[d];
    if (lim && u > 0) {
      mine = signed_sum(&e->own[d % 2], d % 2, d / 2, now);
      if (cost > lim) cost = lim;
      if (n == 0 || mine < 0 || (uint64_t)mine + cost > lim / n) return 1;
    }
    if (s.valid && now < s.reset_at && e->pend_s[d / 2] > 0 &&
        (n == 0 || ((uint64_t)e->pend_s[d / 2] + cost) * n > synced_left(&s)))
      return 1;
  }
  return 0;
}

/* Would this request take the process past its partition of a limit? */
static int beyond_partition(const shared_t *st, const entry_t *e, uint64_t tokens,
                            uint64_t now) {
  uint64_t n = st->instances;
  int d;
  for (d = 0; d < NDIMS; d++) {
    uint64_t cost = d / 2 ? tokens : 1, lim = e->limits[d];
    int64_t mine;
    if (lim == 0) continue;
    mine = signed_sum(&e->own[d % 2], d % 2, d / 2, now);
    if (cost > lim) cost = lim;
    if (n == 0 || mine < 0 || (uint64_t)mine + cost > lim / n) return 1;
  }
  return 0;
}

static void legs(shared_t *st, const llmux_rl_key_t *key, entry_t *out[2]) {
  llmux_rl_key_t pk = {key->provider, NULL};
  out[0] = lookup(st, key, 0);
  out[1] = key->model ? lookup(st, &pk, 0) : NULL;
}

/* ---- Script arguments ------------------------------------------------------ */

typedef llmux_redis_args_t args_t;




/* KEYS and the common ARGV of every call. */
/* Scripts touch the instances set this often (and at every join). */
#define TOUCH_MS 5000

static args_t *args_begin(shared_t *st, int extra, entry_t *const *keys, int nkeys,
                          const char *op, uint64_t now, uint64_t seq) {
  args_t *a = llmux_redis_args_new(2 + nkeys + 6 + extra);
  uint64_t t = uv_now(st->loop);
  int i, flags = 0;
  if (st->joining || st->touched_ms == 0 || t - st->touched_ms >= TOUCH_MS) {
    flags |= 1;
    st->touched_ms = t ? t : 1;
  }
  if (st->joining || st->want_full) flags |= 2;
  llmux_redis_arg_str(a, st->epoch_key, strlen(st->epoch_key));
  llmux_redis_arg_str(a, st->inst_key, strlen(st->inst_key));
  for (i = 0; i < nkeys; i++) llmux_redis_arg_str(a, keys[i]->rkey, keys[i]->rkey_len);
  llmux_redis_arg_str(a, op, strlen(op));
  llmux_redis_arg_i64(a, (int64_t)now);
  llmux_redis_arg_str(a, st->origin, 16);
  llmux_redis_arg_i64(a, (int64_t)seq);
  llmux_redis_arg_str(a, st->channel, strlen(st->channel));
  llmux_redis_arg_i64(a, flags);
  return a;
}

/* ---- Taking states ---------------------------------------------------------- */

typedef struct state_s {
  uint64_t v, epoch, n, seq, g;
  char origin[17];
  int64_t rb, sb;
  synced_t sync[NDIMS];
  llmux_win_t win[2];     /* S: the whole windows */
  int delta;              /* D: only the slots in sets[] changed */
  size_t nsets;
  struct { int w, kind; uint64_t slot; int64_t count; } sets[4 * LLMUX_WIN_RING];
  const char *key;
  size_t key_len;
} state_t;

static void skip_spaces(const char **p, const char *end) {
  while (*p < end && **p == ' ') (*p)++;
}

static int next_i64(const char **p, const char *end, int64_t *out) {
  char *q;
  long long v;
  skip_spaces(p, end);
  if (*p >= end) return -1;
  v = strtoll(*p, &q, 10);
  if (q == *p || q > end || (q < end && *q != ' ')) return -1;
  *p = q;
  *out = v;
  return 0;
}

static int next_u64(const char **p, const char *end, uint64_t *out) {
  int64_t v;
  if (next_i64(p, end, &v) != 0 || v < 0) return -1;
  *out = (uint64_t)v;
  return 0;
}

/* One token of exactly n characters. */
static int next_word(const char **p, const char *end, const char **w, size_t n) {
  skip_spaces(p, end);
  if ((size_t)(end - *p) < n || (*p + n < end && (*p)[n] != ' ')) return -1;
  *w = *p;
  *p += n;
  return 0;
}

static int parse_sync(const char **p, const char *end, state_t *st) {
  synced_t sy = {1, 0, 0, 0, 0};
  uint64_t d;
  if (next_u64(p, end, &d) || d >= NDIMS || next_u64(p, end, &sy.limit) ||
      next_u64(p, end, &sy.remaining) || next_u64(p, end, &sy.reset_at) ||
      next_u64(p, end, &sy.used_since))
    return -1;
  st->sync[d] = sy;
  return 0;
}

static int parse_slot(const char **p, const char *end, state_t *st) {
  uint64_t w, slot;
  const char *kind;
  int64_t c;
  if (next_u64(p, end, &w) || w > 1 || next_word(p, end, &kind, 1) ||
      (*kind != 'r' && *kind != 't') || next_u64(p, end, &slot) || next_i64(p, end, &c))
    return -1;
  if (st->delta) {
    if (st->nsets == LLMUX_COUNTOF(st->sets)) return -1;
    st->sets[st->nsets].w = (int)w;
    st->sets[st->nsets].kind = *kind == 't';
    st->sets[st->nsets].slot = slot;
    st->sets[st->nsets++].count = c;
    return 0;
  }
  llmux_win_add(&st->win[w], *kind == 't', slot, c);
  return 0;
}

/* A state or delta line of rl_shared.lua (see its header). 0, or -1 if
 * malformed. */
static int parse_state(const char *s, size_t len, state_t *st) {
  const char *p = s + 1, *nl = memchr(s, '\n', len), *origin;
  uint64_t ns, nw, i;
  if (len < 2 || (s[0] != 'S' && s[0] != 'D') || nl == NULL) return -1;
  memset(st, 0, offsetof(state_t, win));
  if (s[0] == 'S') memset(st->win, 0, sizeof(st->win));
  st->delta = s[0] == 'D';
  st->nsets = 0;
  if (next_u64(&p, nl, &st->v) || next_u64(&p, nl, &st->epoch) || next_u64(&p, nl, &st->n) ||
      next_word(&p, nl, &origin, 16) || next_u64(&p, nl, &st->seq) ||
      next_u64(&p, nl, &st->g) || next_i64(&p, nl, &st->rb) || next_i64(&p, nl, &st->sb) ||
      next_u64(&p, nl, &ns) || ns > NDIMS)
    return -1;
  memcpy(st->origin, origin, 16);
  for (i = 0; i < ns; i++)
    if (parse_sync(&p, nl, st) != 0) return -1;
  if (next_u64(&p, nl, &nw) || nw > 4 * LLMUX_WIN_RING) return -1;
  for (i = 0; i < nw; i++)
    if (parse_slot(&p, nl, st) != 0) return -1;
  st->key = nl + 1;
  st->key_len = len - (size_t)(nl + 1 - s);
  return 0;
}

static void pend_add(entry_t *e, const rec_t *r, int sign) {
  size_t i;
  for (i = 0; i < r->nitems; i++) {
    const item_t *it = &r->items[i];
    llmux_win_add(&e->pend[it->which], 0, it->slot, sign * it->req);
    llmux_win_add(&e->pend[it->which], 1, it->slot, sign * it->tok);
  }
  e->pend_s[0] += sign * r->sreq;
  e->pend_s[1] += sign * r->stok;
  if (r->kind == REC_APPLY) e->napply += sign > 0 ? 1 : -1;
  if (r->kind == REC_BLOCK) e->nblock += sign > 0 ? 1 : -1;
}

static void clear_loc(entry_t *e) {
  if (!loc_sync_live(e)) memset(e->loc_sync, 0, sizeof(e->loc_sync));
  if (!loc_block_live(e)) e->loc_retry = e->loc_spend = 0;
}

/* Drops the records a state at e->ver includes: all up to the last one
 * whose version is known and not newer (records were executed in order). */
static void pop_confirmed(shared_t *st, entry_t *e) {
  rec_t *r, *last = NULL;
  for (r = e->recs; r; r = r->next)
    if (r->ver && r->ver <= e->ver) last = r;
  while (last && e->recs) {
    int was_last = (r = e->recs) == last;
    e->recs = r->next;
    if (e->recs == NULL) e->recs_tail = NULL;
    pend_add(e, r, -1);
    st->npending--;
    free(r);
    if (was_last) break;
  }
  clear_loc(e);
}

static uint64_t until_of(int64_t v) {
  return v < 0 ? LLMUX_RL_FOREVER : (uint64_t)v;
}

static void mark_epoch_change(shared_t *st, uint64_t epoch);
static size_t push_entry(shared_t *st, entry_t *e, uint64_t now, llmux_redis_cb cb,
                         void *arg);

/* The whole key again: after a missed version, or a state taken as stale. */
static void read_whole(shared_t *st, entry_t *e) {
  if (e->reading || !st->up) return;
  e->reading = 1;
  read_key(st, e);
}

static void take_state(shared_t *st, const char *text, size_t len, int from_sub) {
  state_t *s = llmux_xmalloc(sizeof(*s));
  llmux_str_t p, m;
  entry_t *e;
  rec_t *r;
  size_t i;
  if (parse_state(text, len, s) != 0 || parse_rkey(st, s->key, s->key_len, &p, &m) != 0) {
    llmux_debug("shared state: ignored a malformed state");
    goto done;
  }
  if (s->epoch < st->epoch) goto done; /* from before Redis lost its data */
  if (st->epoch == 0) st->epoch = s->epoch;
  else if (s->epoch > st->epoch) mark_epoch_change(st, s->epoch);
  /* N as of the line's script. Only the subscription brings lines in
   * Redis's order; a reply may be older than a message already taken. */
  if (from_sub) st->instances = s->n;
  if ((e = find(st, p.base, p.len, m.base, m.len, 1)) == NULL) goto done;
  if (s->v > e->heard) e->heard = s->v;
  if (memcmp(s->origin, st->origin, 16) == 0) {
    for (r = e->recs; r; r = r->next)
      if (r->seq == s->seq && r->ver == 0) r->ver = s->v;
  }
  if (s->delta) {
    /* Deltas arrive in Redis's order on the subscription: each applies on
     * top of the version before it; a gap means one was missed. */
    if (s->v <= e->ver && !e->stale) goto confirm;
    if (s->v != e->ver + 1 || e->stale) {
      read_whole(st, e);
      goto confirm;
    }
    for (i = 0; i < s->nsets; i++)
      llmux_win_set(&e->glob[s->sets[i].w], s->sets[i].kind, s->sets[i].slot,
                    s->sets[i].count);
  } else {
    e->reading = 0;
    if (!(s->v > e->ver || e->stale)) goto confirm;
    e->stale = 0;
    e->glob[0] = s->win[0];
    e->glob[1] = s->win[1];
  }
  e->ver = s->v;
  memcpy(e->sync, s->sync, sizeof(e->sync));
  e->gen = s->g;
  e->retry_until = s->rb ? until_of(s->rb) : 0;
  e->spend_until = s->sb ? until_of(s->sb) : 0;
confirm:
  /* A version told of and not applied (a delta that came while the key
   * was stale): the whole key again. */
  if (e->heard > e->ver) read_whole(st, e);
  pop_confirmed(st, e);
done:
  free(s);
}

/* A reply line "V v seq\nkey": the version that holds one of our changes. */
static void take_version(shared_t *st, const char *text, size_t len) {
  const char *p = text + 1, *nl = memchr(text, '\n', len);
  llmux_str_t prov, model;
  uint64_t v, seq;
  entry_t *e;
  rec_t *r;
  if (nl == NULL || next_u64(&p, nl, &v) || next_u64(&p, nl, &seq) ||
      parse_rkey(st, nl + 1, len - (size_t)(nl + 1 - text), &prov, &model) != 0)
    return;
  if ((e = find(st, prov.base, prov.len, model.base, model.len, 0)) == NULL) return;
  for (r = e->recs; r; r = r->next)
    if (r->seq == seq && r->ver == 0) r->ver = v;
  pop_confirmed(st, e);
}

/* A script's reply: {epoch, n, state...}. 0, or -1 when it is not one. */
static int take_reply(shared_t *st, redisReply *reply) {
  size_t i;
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 2 ||
      reply->element[0]->type != REDIS_REPLY_STRING)
    return -1;
  for (i = 2; i < reply->elements; i++) {
    const redisReply *x = reply->element[i];
    if (x->type != REDIS_REPLY_STRING || x->len < 2) continue;
    if (x->str[0] == 'V') take_version(st, x->str, x->len);
    else take_state(st, x->str, x->len, 0);
  }
  return 0;
}

static void fire_waiters(shared_t *st, int status);

static int check_reply(shared_t *st, int status, redisReply *reply) {
  char why[160];
  if (status != 0) return -1; /* the connection is gone: went_down handles it */
  if (reply->type == REDIS_REPLY_ERROR || take_reply(st, reply) != 0) {
    snprintf(why, sizeof(why), "script: %s",
             reply->type == REDIS_REPLY_ERROR && reply->str ? reply->str : "bad reply");
    llmux_redis_reset(&st->cmd, why);
    return -1;
  }
  return 0;
}

static void op_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  check_reply(r->data, status, reply);
}

/* ---- Sending changes ------------------------------------------------------- */

static rec_t *rec_new(size_t nitems) {
  return llmux_xcalloc(1, sizeof(rec_t) + nitems * sizeof(item_t));
}

static void rec_push(shared_t *st, entry_t *e, rec_t *r) {
  if (e->recs_tail) e->recs_tail->next = r;
  else e->recs = r;
  e->recs_tail = r;
  pend_add(e, r, +1);
  st->npending++;
}

static void unsend(shared_t *st, entry_t *e);

/* Runs the script for `keys`. When it cannot even be queued, the connection
 * is dropped (the store goes down) and the keys' pending changes go back to
 * unsent, as after any failure. */
static int send_args(shared_t *st, args_t *a, entry_t *const *keys, int nkeys,
                     llmux_redis_cb cb, void *arg) {
  int rc = llmux_redis_evalsha(&st->cmd, 0, cb, arg, nkeys + 2, a->n, a->v, a->len), i;
  free(a);
  if (rc == 0) {
    st->change_mark = st->cmd.queued;
    return 0;
  }
  llmux_redis_reset(&st->cmd, "could not queue a script");
  for (i = 0; i < nkeys; i++) unsend(st, keys[i]);
  return rc;
}

static llmux_win_t *unsent_of(entry_t *e) {
  if (e->unsent == NULL) e->unsent = llmux_xcalloc(2, sizeof(llmux_win_t));
  return e->unsent;
}

/* Does any decision on e depend on tokens? */
static int counts_tokens(const entry_t *e) {
  return e->limits[LLMUX_RL_TOK_MINUTE] || e->limits[LLMUX_RL_TOK_DAY] ||
         e->sync[LLMUX_RL_TOK_MINUTE].valid || e->sync[LLMUX_RL_TOK_DAY].valid ||
         e->loc_sync[LLMUX_RL_TOK_MINUTE].valid || e->loc_sync[LLMUX_RL_TOK_DAY].valid;
}

/* Counts items (and headroom deltas) on the legs: in own, and in pend with
 * a script when up, else in unsent. gens[i] < 0: whatever generation. */
static void count(shared_t *st, entry_t *const *es, const int64_t *gens, int n,
                  const item_t *items, size_t nitems, int64_t sreq, int64_t stok,
                  uint64_t now) {
  uint64_t seq = ++st->seq;
  entry_t *keys[2];
  int64_t key_gens[2];
  int nk = 0, i, tok_only = sreq == 0;
  size_t j;
  for (j = 0; j < nitems; j++)
    if (items[j].req != 0) tok_only = 0;
  for (i = 0; i < n; i++) {
    entry_t *e = es[i];
    int synced;
    if (e == NULL) continue;
    synced = gens[i] < 0 || (uint64_t)gens[i] == e->gen;
    for (j = 0; j < nitems; j++) {
      llmux_win_add(&e->own[items[j].which], 0, items[j].slot, items[j].req);
      llmux_win_add(&e->own[items[j].which], 1, items[j].slot, items[j].tok);
    }
    /* A token correction (a commit) on a key that neither limits tokens
     * nor holds token headroom changes no decision anywhere: it stays
     * local, which saves a script per request on such keys. */
    if (tok_only && !counts_tokens(e)) continue;
    key_gens[nk] = gens[i];
    if (st->up) {
      rec_t *r = rec_new(nitems);
      r->seq = seq;
      r->kind = REC_COUNT;
      r->nitems = nitems;
      memcpy(r->items, items, nitems * sizeof(item_t));
      r->sreq = synced ? sreq : 0;
      r->stok = synced ? stok : 0;
      rec_push(st, e, r);
    } else {
      llmux_win_t *u = unsent_of(e);
      for (j = 0; j < nitems; j++) {
        llmux_win_add(&u[items[j].which], 0, items[j].slot, items[j].req);
        llmux_win_add(&u[items[j].which], 1, items[j].slot, items[j].tok);
      }
      if (synced) {
        e->unsent_s[0] += sreq;
        e->unsent_s[1] += stok;
      }
    }
    keys[nk++] = e;
  }
  if (!st->up || nk == 0) return;
  {
    args_t *a = args_begin(st, nk + 2 + 4 * (int)nitems, keys, nk, "count", now, seq);
    for (i = 0; i < nk; i++) llmux_redis_arg_i64(a, key_gens[i]);
    llmux_redis_arg_i64(a, sreq);
    llmux_redis_arg_i64(a, stok);
    for (j = 0; j < nitems; j++) {
      llmux_redis_arg_i64(a, items[j].which);
      llmux_redis_arg_i64(a, (int64_t)items[j].slot);
      llmux_redis_arg_i64(a, items[j].req);
      llmux_redis_arg_i64(a, items[j].tok);
    }
    send_args(st, a, keys, nk, op_cb, NULL);
  }
}

/* One request's items at time t: its minute and day slots. */
static size_t items_at(item_t *it, uint64_t t, int64_t req, int64_t tok) {
  int w;
  for (w = 0; w < 2; w++) {
    it[w].which = w;
    it[w].slot = llmux_win_slot(w, t);
    it[w].req = req;
    it[w].tok = tok;
  }
  return 2;
}

static void send_apply(shared_t *st, entry_t *e, uint64_t retry_until, uint64_t now,
                       llmux_redis_cb cb, void *arg) {
  args_t *a = args_begin(st, 17, &e, 1, "apply", now, ++st->seq);
  rec_t *r = rec_new(0);
  int d;
  for (d = 0; d < NDIMS; d++) {
    const synced_t *s = &e->loc_sync[d];
    llmux_redis_arg_i64(a, s->valid);
    llmux_redis_arg_i64(a, (int64_t)s->limit);
    llmux_redis_arg_i64(a, (int64_t)s->remaining);
    llmux_redis_arg_i64(a, (int64_t)s->reset_at);
  }
  llmux_redis_arg_i64(a, retry_until == LLMUX_RL_FOREVER ? -1 : (int64_t)retry_until);
  r->seq = st->seq;
  r->kind = REC_APPLY;
  rec_push(st, e, r);
  send_args(st, a, &e, 1, cb, arg);
}

static void send_block(shared_t *st, entry_t *e, const char *field, uint64_t until,
                       uint64_t now, llmux_redis_cb cb, void *arg) {
  args_t *a = args_begin(st, 2, &e, 1, "block", now, ++st->seq);
  rec_t *r = rec_new(0);
  llmux_redis_arg_str(a, field, 2);
  llmux_redis_arg_i64(a, until == LLMUX_RL_FOREVER ? -1 : (int64_t)until);
  r->seq = st->seq;
  r->kind = REC_BLOCK;
  rec_push(st, e, r);
  send_args(st, a, &e, 1, cb, arg);
}

static void send_unblock(shared_t *st, entry_t *e, uint64_t now, llmux_redis_cb cb,
                         void *arg) {
  args_t *a = args_begin(st, 0, &e, 1, "unblock", now, ++st->seq);
  rec_t *r = rec_new(0);
  r->seq = st->seq;
  r->kind = REC_UNBLOCK;
  rec_push(st, e, r);
  send_args(st, a, &e, 1, cb, arg);
}

static void read_key(shared_t *st, entry_t *e) {
  args_t *a;
  st->want_full++;
  a = args_begin(st, 3, &e, 1, "count", st_now(st), ++st->seq);
  st->want_full--;
  llmux_redis_arg_i64(a, -1);
  llmux_redis_arg_i64(a, 0);
  llmux_redis_arg_i64(a, 0);
  send_args(st, a, &e, 1, op_cb, NULL);
}

/* ---- The vtable ------------------------------------------------------------ */

static int sh_set_limits(llmux_rl_store_t *s, const llmux_rl_key_t *key,
                         const llmux_limits_t *l) {
  entry_t *e = lookup_new(shared_of(s), key);
  if (e == NULL) return LLMUX_ETOOLARGE;
  e->limits[LLMUX_RL_REQ_MINUTE] = l->requests_per_minute;
  e->limits[LLMUX_RL_REQ_DAY] = l->requests_per_day;
  e->limits[LLMUX_RL_TOK_MINUTE] = l->tokens_per_minute;
  e->limits[LLMUX_RL_TOK_DAY] = l->tokens_per_day;
  return 0;
}

static int sh_check(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t tokens,
                    uint64_t now_ms, uint64_t *retry_after_ms) {
  shared_t *st = shared_of(s);
  uint64_t now = at(st, now_ms), wait = 0, w;
  entry_t *e[2];
  int i;
  if (st->fail_closed && !st->up) {
    *retry_after_ms = 1000;
    return LLMUX_RL_EUNAVAILABLE;
  }
  legs(st, key, e);
  for (i = 0; i < 2; i++) {
    if (e[i] == NULL) continue;
    w = entry_wait(e[i], tokens, now);
    if (w > wait) wait = w;
  }
  if (wait == 0 && st->up) {
    for (i = 0; i < 2; i++)
      if (e[i] && gated(st, e[i], tokens, now)) wait = st->timeout_ms;
    if (wait == 0 && st->refresh && !st->fresh) {
      for (i = 0; i < 2; i++) {
        if (e[i] && beyond_partition(st, e[i], tokens, now)) {
          *retry_after_ms = 0;
          return LLMUX_RL_ESTALE;
        }
      }
    }
  }
  *retry_after_ms = wait;
  return wait ? LLMUX_EAGAIN : 0;
}

static int sh_reserve(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t tokens,
                      uint64_t now_ms, llmux_rl_reservation_t *res) {
  shared_t *st = shared_of(s);
  uint64_t now = at(st, now_ms);
  entry_t *e[2];
  int64_t gens[2] = {-1, -1};
  item_t it[2];
  int i;
  legs(st, key, e);
  memset(res->ref, 0, sizeof(res->ref));
  count(st, e, gens, 2, it, items_at(it, now, 1, (int64_t)tokens), 1, (int64_t)tokens, now);
  for (i = 0; i < 2; i++) {
    if (e[i] == NULL) continue;
    e[i]->inflight++;
    res->ref[i] = e[i];
    res->gen[i] = e[i]->gen;
  }
  res->store = s;
  res->held = 1;
  res->tokens = tokens;
  res->at_ms = now_ms;
  return 0;
}

static void end_reservation(llmux_rl_store_t *s, llmux_rl_reservation_t *res,
                            const item_t *it, size_t n, int64_t sreq, int64_t stok,
                            uint64_t now) {
  shared_t *st = shared_of(s);
  entry_t *e[2] = {res->ref[0], res->ref[1]};
  int64_t gens[2] = {(int64_t)res->gen[0], (int64_t)res->gen[1]};
  int i;
  if (n || sreq || stok) count(st, e, gens, 2, it, n, sreq, stok, now);
  for (i = 0; i < 2; i++)
    if (e[i]) e[i]->inflight--;
}

static void sh_commit(llmux_rl_store_t *s, llmux_rl_reservation_t *res, uint64_t actual,
                      uint64_t now_ms) {
  shared_t *st = shared_of(s);
  uint64_t then = snow(st, res->at_ms), now = at(st, now_ms);
  int64_t d = (int64_t)actual - (int64_t)res->tokens;
  item_t it[2];
  size_t n = 0;
  if (d < 0) n = items_at(it, then, 0, d);      /* given back where it was counted */
  else if (d > 0) n = items_at(it, now, 0, d); /* the rest counted now */
  end_reservation(s, res, it, n, 0, d, now);
  res->tokens = actual;
}

static void sh_release(llmux_rl_store_t *s, llmux_rl_reservation_t *res, uint64_t now_ms) {
  shared_t *st = shared_of(s);
  item_t it[2];
  size_t n = items_at(it, snow(st, res->at_ms), -1, -(int64_t)res->tokens);
  end_reservation(s, res, it, n, -1, -(int64_t)res->tokens, at(st, now_ms));
}

static void raise_loc(entry_t *e, uint64_t until, llmux_rl_block_reason_t reason) {
  uint64_t *slot = reason == LLMUX_RL_BLOCK_SPEND_LIMIT ? &e->loc_spend : &e->loc_retry;
  if (until > *slot) *slot = until;
}

static int sh_apply(llmux_rl_store_t *s, const llmux_rl_key_t *key,
                    const llmux_rl_info_t *info, uint64_t now_ms) {
  shared_t *st = shared_of(s);
  uint64_t now = at(st, now_ms), retry = 0;
  entry_t *e = lookup_new(st, key);
  int d, any = 0;
  if (e == NULL) return LLMUX_ETOOLARGE;
  if (!loc_sync_live(e)) memset(e->loc_sync, 0, sizeof(e->loc_sync));
  for (d = 0; d < NDIMS; d++) {
    const llmux_rl_dim_info_t *di = &info->dims[d];
    synced_t *sy = &e->loc_sync[d];
    if (!di->has_remaining) continue;
    sy->valid = 1;
    sy->limit = di->has_limit ? di->limit : 0;
    sy->remaining = di->remaining;
    sy->reset_at = now + (di->has_reset ? di->reset_in_ms : SYNC_TTL_MS);
    sy->used_since = 0;
    any = 1;
  }
  if (info->has_retry_after) {
    retry = now + info->retry_after_ms;
    if (!loc_block_live(e)) e->loc_retry = e->loc_spend = 0;
    raise_loc(e, retry, LLMUX_RL_BLOCK_RETRY_AFTER);
  }
  if (!any && !retry) return 0;
  if (st->up) {
    if (any) send_apply(st, e, retry, now, op_cb, NULL);
    else send_block(st, e, "rb", retry, now, op_cb, NULL);
  } else {
    e->dirty |= (any ? DIRTY_SYNC : 0) | (retry ? DIRTY_BLOCK : 0);
  }
  return 0;
}

static int sh_block(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t until_ms,
                    llmux_rl_block_reason_t reason) {
  shared_t *st = shared_of(s);
  entry_t *e;
  uint64_t until;
  if (reason != LLMUX_RL_BLOCK_RETRY_AFTER && reason != LLMUX_RL_BLOCK_SPEND_LIMIT)
    return LLMUX_EINVAL;
  if ((e = lookup_new(st, key)) == NULL) return LLMUX_ETOOLARGE;
  until = until_ms == LLMUX_RL_FOREVER ? LLMUX_RL_FOREVER : snow(st, until_ms);
  if (!loc_block_live(e)) e->loc_retry = e->loc_spend = 0;
  raise_loc(e, until, reason);
  if (st->up)
    send_block(st, e, reason == LLMUX_RL_BLOCK_SPEND_LIMIT ? "sb" : "rb", until, st_now(st),
               op_cb, NULL);
  else
    e->dirty |= DIRTY_BLOCK;
  return 0;
}

static void sh_unblock(llmux_rl_store_t *s, const llmux_rl_key_t *key) {
  shared_t *st = shared_of(s);
  entry_t *e = lookup(st, key, 0);
  if (e == NULL) return;
  e->retry_until = e->spend_until = e->loc_retry = e->loc_spend = 0;
  e->dirty &= ~DIRTY_BLOCK;
  if (st->up) send_unblock(st, e, st_now(st), op_cb, NULL);
  else e->dirty |= DIRTY_UNBLOCK;
}

static void fill_snapshot(const entry_t *e, uint64_t now, llmux_rl_snapshot_t *out) {
  llmux_win_t v[2];
  uint64_t r, sp;
  int d;
  memset(out, 0, sizeof(*out));
  view(e, 0, now, &v[0]);
  view(e, 1, now, &v[1]);
  for (d = 0; d < NDIMS; d++) {
    llmux_rl_dim_snapshot_t *o = &out->dims[d];
    synced_t s = synced_view(e, d, now);
    o->limit = e->limits[d];
    o->used = llmux_win_sum(&v[d % 2], d % 2, d / 2, now);
    o->frees_in_ms = llmux_win_frees_in(&v[d % 2], d % 2, d / 2, now);
    if (!s.valid) continue;
    o->synced = 1;
    o->synced_limit = s.limit;
    o->synced_remaining = synced_left(&s);
    o->reset_in_ms = s.reset_at - now;
  }
  out->blocked_for_ms = block_wait(e, now);
  blocks(e, &r, &sp);
  if (sp > now) out->block_reason = LLMUX_RL_BLOCK_SPEND_LIMIT;
  else if (r > now) out->block_reason = LLMUX_RL_BLOCK_RETRY_AFTER;
  out->inflight = e->inflight;
}

static int sh_snapshot(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t now_ms,
                       llmux_rl_snapshot_t *out) {
  shared_t *st = shared_of(s);
  entry_t *e = lookup(st, key, 0);
  if (e == NULL) return LLMUX_ENOTFOUND;
  fill_snapshot(e, snow(st, now_ms), out);
  return 0;
}

static void sh_foreach(llmux_rl_store_t *s, uint64_t now_ms, llmux_rl_foreach_cb cb,
                       void *arg) {
  shared_t *st = shared_of(s);
  llmux_rl_snapshot_t snap;
  size_t i;
  for (i = 0; i < st->cap; i++) {
    entry_t *e = st->table[i];
    llmux_rl_key_t key;
    if (e == NULL) continue;
    key.provider = e->provider;
    key.model = e->model;
    fill_snapshot(e, snow(st, now_ms), &snap);
    cb(arg, &key, &snap);
  }
}

static void sh_destroy(llmux_rl_store_t *s) { llmux_rl_shared_close(s, NULL, NULL); }

static const llmux_rl_store_vtable_t shared_vtable = {
  sh_set_limits, sh_check, sh_reserve, sh_commit, sh_release, sh_apply,
  sh_block, sh_unblock, sh_snapshot, sh_foreach, sh_destroy,
};

/* ---- Down, join, up -------------------------------------------------------- */

/* What was pending goes back to unsent (it may have been executed: counted
 * again, on the side of refusing), overlays to dirty. */
static void unsend(shared_t *st, entry_t *e) {
  while (e->recs) {
    rec_t *r = e->recs;
    llmux_win_t *u;
    size_t i;
    e->recs = r->next;
    pend_add(e, r, -1);
    st->npending--;
    if (r->kind == REC_APPLY) e->dirty |= DIRTY_SYNC;
    if (r->kind == REC_BLOCK) e->dirty |= DIRTY_BLOCK;
    if (r->kind == REC_UNBLOCK) e->dirty |= DIRTY_UNBLOCK;
    if (r->kind == REC_COUNT) {
      u = unsent_of(e);
      for (i = 0; i < r->nitems; i++) {
        llmux_win_add(&u[r->items[i].which], 0, r->items[i].slot, r->items[i].req);
        llmux_win_add(&u[r->items[i].which], 1, r->items[i].slot, r->items[i].tok);
      }
      e->unsent_s[0] += r->sreq;
      e->unsent_s[1] += r->stok;
    }
    free(r);
  }
  e->recs_tail = NULL;
}

/* ---- Settling: changes answered before a request's answer goes out ------ */

/* Runs the waiters whose mark the command connection has reached, or all
 * of them (`all`: the store went down or closes; nothing to wait for). A
 * callback may add or cancel waiters. */
static void fire_settled(shared_t *st, int all) {
  llmux_rl_settle_t *w;
  while ((w = st->settle_head) != NULL && (all || w->mark <= st->cmd.answered)) {
    st->settle_head = w->next;
    if (st->settle_head == NULL) st->settle_tail = NULL;
    else st->settle_head->prev = NULL;
    w->next = w->prev = NULL;
    w->store = NULL;
    w->cb(w);
  }
}

static void on_answered(llmux_redis_t *r) {
  shared_t *st = r->data;
  if (st->settle_head) fire_settled(st, 0);
}

uint64_t llmux_rl_shared_mark(llmux_rl_store_t *s) {
  return shared_of(s)->change_mark;
}

int llmux_rl_shared_settled(llmux_rl_store_t *s, uint64_t mark) {
  shared_t *st = shared_of(s);
  return !st->up || st->cmd.answered >= mark;
}

void llmux_rl_shared_settle(llmux_rl_store_t *s, uint64_t mark, llmux_rl_settle_t *w,
                            llmux_rl_settle_cb cb) {
  shared_t *st = shared_of(s);
  w->mark = mark;
  w->cb = cb;
  w->store = s;
  w->next = NULL;
  /* Marks only grow, so the list stays sorted by appending; an older mark
   * (a request that waited long to ask) goes in its place. */
  w->prev = st->settle_tail;
  while (w->prev && w->prev->mark > mark) w->prev = w->prev->prev;
  w->next = w->prev ? w->prev->next : st->settle_head;
  if (w->next) w->next->prev = w;
  else st->settle_tail = w;
  if (w->prev) w->prev->next = w;
  else st->settle_head = w;
}

static void refresh_done(llmux_rl_store_t *s, int status, void *arg) {
  llmux_rl_settle_t *w = arg;
  (void)s;
  (void)status;
  if (w == NULL) return; /* cancelled */
  w->store = NULL;
  w->refreshing = 0;
  w->cb(w);
}

int llmux_rl_shared_refresh(llmux_rl_store_t *s, llmux_rl_settle_t *w, llmux_rl_settle_cb cb) {
  w->cb = cb;
  w->next = w->prev = NULL;
  if (llmux_rl_shared_sync(s, refresh_done, w) != 0) return LLMUX_ECONNREFUSED;
  w->store = s;
  w->refreshing = 1;
  return 0;
}

void llmux_rl_shared_assume_fresh(llmux_rl_store_t *s, int on) {
  shared_of(s)->fresh = on;
}

void llmux_rl_shared_settle_cancel(llmux_rl_settle_t *w) {
  shared_t *st;
  if (w->store == NULL) return;
  st = shared_of(w->store);
  if (w->refreshing) { /* its sync waiter stays, pointing at nothing */
    waiter_t *x;
    for (x = st->waiters; x; x = x->next)
      if (x->arg == w) x->arg = NULL;
    w->store = NULL;
    w->refreshing = 0;
    return;
  }
  if (w->prev) w->prev->next = w->next;
  else st->settle_head = w->next;
  if (w->next) w->next->prev = w->prev;
  else st->settle_tail = w->prev;
  w->next = w->prev = NULL;
  w->store = NULL;
}

static void went_down(shared_t *st, const llmux_redis_t *r) {
  size_t i;
  const char *why = r->last_error;
  if (st->up) st->outages++;
  if (!st->warned) {
    llmux_warn("shared state: Redis unavailable (%s); %s until it is back", why,
               st->fail_closed ? "refusing requests (shared_state_fail = closed)"
                               : "deciding on local state");
    st->warned = 1;
  }
  st->up = 0;
  st->joining = 0;
  st->instances = 0; /* the join learns it again */
  st->join_id++;
  for (i = 0; i < st->cap; i++) {
    if (st->table[i] == NULL) continue;
    unsend(st, st->table[i]);
    st->table[i]->reading = 0;
  }
  st->touched_ms = 0; /* the join touches the set again */
  fire_waiters(st, LLMUX_ECONNRESET);
  fire_settled(st, 1);
}

/* Redis lost its data (restarted empty, or flushed): what this process
 * knows goes back in, as additions, and the mirror takes the next states
 * whatever their versions. */
static void mark_epoch_change(shared_t *st, uint64_t epoch) {
  size_t i;
  llmux_info("shared state: Redis lost its data (new epoch); adding back this process's counts");
  st->epoch = epoch;
  for (i = 0; i < st->cap; i++) {
    entry_t *e = st->table[i];
    int d;
    if (e == NULL) continue;
    memcpy(unsent_of(e), e->own, sizeof(e->own));
    e->unsent_s[0] = e->unsent_s[1] = 0;
    e->stale = 1;
    e->ver = 0;
    e->heard = 0; /* versions start again */
    if (!loc_sync_live(e)) {
      for (d = 0; d < NDIMS; d++) {
        e->loc_sync[d] = e->sync[d];
        e->loc_sync[d].remaining = synced_left(&e->sync[d]);
        e->loc_sync[d].used_since = 0;
      }
    }
    if (!loc_block_live(e)) {
      e->loc_retry = e->retry_until;
      e->loc_spend = e->spend_until;
    }
    e->dirty |= DIRTY_SYNC | DIRTY_BLOCK;
  }
  if (!st->up) return; /* the join sends it */
  st->want_full++; /* the replies replace the stale mirrors */
  for (i = 0; i < st->cap; i++)
    if (st->table[i]) push_entry(st, st->table[i], st_now(st), op_cb, NULL);
  st->want_full--;
}

/* Sends what an entry owes Redis: unblock, headroom, blocks, then what was
 * counted while down (or just a read), every reply through cb. Returns the
 * number of scripts sent. */
static size_t push_entry(shared_t *st, entry_t *e, uint64_t now, llmux_redis_cb cb,
                         void *arg) {
  size_t sent = 0, n = 0;
  item_t *items = NULL;
  int dirty = e->dirty, w;
  uint64_t k;
  e->dirty = 0;
  if (dirty & DIRTY_UNBLOCK) sent++, send_unblock(st, e, now, cb, arg);
  if (dirty & DIRTY_SYNC) sent++, send_apply(st, e, 0, now, cb, arg);
  if (dirty & DIRTY_BLOCK) {
    if (e->loc_retry) sent++, send_block(st, e, "rb", e->loc_retry, now, cb, arg);
    if (e->loc_spend) sent++, send_block(st, e, "sb", e->loc_spend, now, cb, arg);
  }
  if (e->unsent) {
    items = llmux_xcalloc(MAX_ITEMS, sizeof(*items));
    for (w = 0; w < 2; w++) {
      const llmux_win_t *u = &e->unsent[w];
      for (k = u->head >= LLMUX_WIN_RING ? u->head - LLMUX_WIN_RING + 1 : 0; k <= u->head; k++) {
        int64_t r = llmux_win_get(u, 0, k), t = llmux_win_get(u, 1, k);
        if (r == 0 && t == 0) continue;
        items[n].which = w;
        items[n].slot = k;
        items[n].req = r;
        items[n++].tok = t;
      }
    }
  }
  if (n || (e->unsent && (e->unsent_s[0] || e->unsent_s[1])) || sent == 0) {
    uint64_t seq = ++st->seq;
    args_t *a = args_begin(st, 3 + 4 * (int)n, &e, 1, "count", now, seq);
    size_t j;
    llmux_redis_arg_i64(a, -1);
    llmux_redis_arg_i64(a, e->unsent ? e->unsent_s[0] : 0);
    llmux_redis_arg_i64(a, e->unsent ? e->unsent_s[1] : 0);
    for (j = 0; j < n; j++) {
      llmux_redis_arg_i64(a, items[j].which);
      llmux_redis_arg_i64(a, (int64_t)items[j].slot);
      llmux_redis_arg_i64(a, items[j].req);
      llmux_redis_arg_i64(a, items[j].tok);
    }
    if (n || (e->unsent && (e->unsent_s[0] || e->unsent_s[1]))) {
      rec_t *r = rec_new(n);
      r->seq = seq;
      r->kind = REC_COUNT;
      r->nitems = n;
      memcpy(r->items, items, n * sizeof(*items));
      r->sreq = e->unsent_s[0];
      r->stok = e->unsent_s[1];
      rec_push(st, e, r);
    }
    free(e->unsent);
    e->unsent = NULL;
    e->unsent_s[0] = e->unsent_s[1] = 0;
    sent++;
    send_args(st, a, &e, 1, cb, arg);
  }
  free(items);
  return sent;
}

static void now_up(shared_t *st) {
  size_t i;
  st->up = 1;
  st->joining = 0;
  if (st->warned) llmux_info("shared state: Redis is back; shared limits resumed");
  st->warned = 0;
  /* What was counted during the join goes now, as ordinary changes; a key
   * that heard of versions it could not apply meanwhile is read again. */
  for (i = 0; i < st->cap && st->up; i++) {
    entry_t *e = st->table[i];
    if (e && (e->unsent || e->dirty)) push_entry(st, e, st_now(st), op_cb, NULL);
    if (e && st->up && e->heard > e->ver) read_whole(st, e);
  }
}

static void join_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  shared_t *st = r->data;
  if (check_reply(st, status, reply) != 0 || (uint64_t)(uintptr_t)arg != st->join_id ||
      !st->joining)
    return;
  if (--st->join_left == 0) now_up(st);
}

static void hello_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  shared_t *st = r->data;
  uint64_t epoch;
  size_t i;
  if (check_reply(st, status, reply) != 0 || (uint64_t)(uintptr_t)arg != st->join_id ||
      !st->joining)
    return;
  epoch = strtoull(reply->element[0]->str, NULL, 10);
  if (reply->element[1]->type == REDIS_REPLY_INTEGER)
    /* A join published since (an "N" message) may already be in. */
    if ((uint64_t)reply->element[1]->integer > st->instances)
      st->instances = (uint64_t)reply->element[1]->integer;
  if (st->epoch == 0) st->epoch = epoch;
  else if (epoch > st->epoch) mark_epoch_change(st, epoch);
  st->join_left = 1;
  for (i = 0; i < st->cap && st->joining; i++)
    if (st->table[i])
      st->join_left += push_entry(st, st->table[i], st_now(st), join_cb, arg);
  if (!st->joining) return; /* a script could not be queued: down again */
  if (--st->join_left == 0) now_up(st);
}

static void start_join(shared_t *st) {
  args_t *a;
  st->joining = 1;
  st->join_id++;
  a = args_begin(st, 0, NULL, 0, "hello", st_now(st), 0);
  send_args(st, a, NULL, 0, hello_cb, (void *)(uintptr_t)st->join_id);
}

static void on_conn_state(llmux_redis_t *r, int ready) {
  shared_t *st = r->data;
  if (!ready) {
    went_down(st, r);
    return;
  }
  if (st->cmd.state == LLMUX_REDIS_READY && st->sub.state == LLMUX_REDIS_READY)
    start_join(st);
}

/* ---- The subscription ------------------------------------------------------- */

static void fire_waiters(shared_t *st, int status) {
  waiter_t **pw = &st->waiters, *w;
  while ((w = *pw) != NULL) {
    if (status == 0 && !(w->marker_seen && w->reply_seen)) {
      pw = &w->next;
      continue;
    }
    *pw = w->next;
    w->cb(&st->base, status, w->arg);
    free(w);
  }
}

static void on_message(llmux_redis_t *r, const char *msg, size_t len) {
  shared_t *st = r->data;
  waiter_t *w;
  if (len > 2 && (msg[0] == 'D' || msg[0] == 'S') && msg[1] == ' ') {
    take_state(st, msg, len, 1);
  } else if (len > 2 && msg[0] == 'N' && msg[1] == ' ') {
    st->instances = strtoull(msg + 2, NULL, 10); /* a process joined */
  } else if (len > 19 && msg[0] == 'M' && msg[1] == ' ' && msg[18] == ' ' &&
             memcmp(msg + 2, st->origin, 16) == 0) {
    uint64_t seq = strtoull(msg + 19, NULL, 10); /* hiredis ends it with a NUL */
    for (w = st->waiters; w; w = w->next)
      if (w->seq == seq) w->marker_seen = 1;
    fire_waiters(st, 0);
  }
}

static void marker_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  shared_t *st = r->data;
  waiter_t *w;
  if (status != 0) return;
  for (w = st->waiters; w; w = w->next)
    if (w->seq == (uint64_t)(uintptr_t)arg) w->reply_seen = 1;
  fire_waiters(st, 0);
}

int llmux_rl_shared_sync(llmux_rl_store_t *s, llmux_rl_shared_cb cb, void *arg) {
  shared_t *st = shared_of(s);
  char msg[48];
  const char *argv[3];
  size_t lens[3];
  waiter_t *w;
  int rc;
  if (!st->up) return LLMUX_ECONNREFUSED;
  w = llmux_xcalloc(1, sizeof(*w));
  w->seq = ++st->seq;
  w->cb = cb;
  w->arg = arg;
  snprintf(msg, sizeof(msg), "M %s %" PRIu64, st->origin, w->seq);
  argv[0] = "PUBLISH";
  argv[1] = st->channel;
  argv[2] = msg;
  lens[0] = 7;
  lens[1] = strlen(st->channel);
  lens[2] = strlen(msg);
  rc = llmux_redis_command(&st->cmd, marker_cb, (void *)(uintptr_t)w->seq, 3, argv, lens);
  if (rc != 0) {
    free(w);
    return LLMUX_ECONNREFUSED;
  }
  w->next = st->waiters;
  st->waiters = w;
  return 0;
}

/* ---- Lifecycle -------------------------------------------------------------- */

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

static char *joined(const char *a, const char *b) {
  llmux_buf_t buf = {0};
  llmux_buf_printf(&buf, "%s%s", a, b);
  return buf.base;
}

static int64_t wall_offset(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 - (int64_t)(llmux_now_us() / 1000);
}

static int conn_init(shared_t *st, llmux_redis_t *r, const llmux_rl_shared_options_t *o,
                     int subscriber, char *err, size_t errlen) {
  llmux_redis_options_t ro;
  int rc;
  memset(&ro, 0, sizeof(ro));
  ro.url = o->url;
  ro.password = o->password;
  ro.what = subscriber ? "shared state (subscriber)" : "shared state";
  ro.timeout_ms = o->timeout_ms;
  ro.connect_timeout_ms = o->connect_timeout_ms;
  ro.backoff_min_ms = o->backoff_min_ms;
  ro.backoff_max_ms = o->backoff_max_ms;
  if (subscriber) {
    ro.subscribe = st->channel;
    ro.on_message = on_message;
  } else {
    ro.scripts = scripts;
    ro.nscripts = 1;
  }
  ro.on_state = on_conn_state;
  if (!subscriber) ro.on_answered = on_answered;
  if ((rc = llmux_redis_init(st->loop, r, &ro, err, errlen)) != 0) return rc;
  r->data = st;
  return 0;
}

static void free_store(shared_t *st) {
  size_t i;
  for (i = 0; i < st->cap; i++) {
    entry_t *e = st->table[i];
    if (e == NULL) continue;
    while (e->recs) {
      rec_t *r = e->recs;
      e->recs = r->next;
      free(r);
    }
    free(e->unsent);
    free(e->provider);
    free(e->model);
    free(e->rkey);
    free(e);
  }
  free(st->table);
  free(st->prefix);
  free(st->channel);
  free(st->epoch_key);
  free(st->inst_key);
  free(st);
}

int llmux_rl_shared_new(uv_loop_t *loop, const llmux_rl_shared_options_t *o,
                        llmux_rl_store_t **out, char *err, size_t errlen) {
  shared_t *st;
  size_t max, cap = 8;
  int rc;
  const char *prefix;
  if (loop == NULL || o == NULL || out == NULL || o->url == NULL) return LLMUX_EINVAL;
  max = o->max_keys ? o->max_keys : DEFAULT_MAX_KEYS;
  if (max > ((size_t)1 << 24)) return LLMUX_EINVAL;
  {
    llmux_redis_url_t url;
    if ((rc = llmux_redis_parse_url(o->url, &url, err, errlen)) != 0) return rc;
  }
  prefix = o->prefix ? o->prefix : "llmux:";
  if (strpbrk(prefix, " \t\r\n") != NULL) {
    if (err && errlen) snprintf(err, errlen, "shared_state_prefix must not contain spaces");
    return LLMUX_EINVAL;
  }
  while (cap < 2 * max) cap *= 2;
  st = llmux_xcalloc(1, sizeof(*st));
  st->loop = loop;
  st->prefix = llmux_xstrdup(prefix);
  st->channel = joined(prefix, "rl");
  st->epoch_key = joined(prefix, "rl:epoch");
  st->inst_key = joined(prefix, "rl:inst");
  st->fail_closed = o->fail_closed;
  st->refresh = o->refresh;
  st->timeout_ms = o->timeout_ms ? o->timeout_ms : 50;
  st->wall = !o->has_clock_offset || o->clock_offset_ms == LLMUX_RL_SHARED_WALL_CLOCK;
  st->offset = st->wall ? wall_offset() : o->clock_offset_ms;
  make_origin(st->origin);
  st->table = llmux_xcalloc(cap, sizeof(*st->table));
  st->cap = cap;
  st->max = max;
  st->base.vt = &shared_vtable;
  /* The URL was checked above: the only thing init checks that can fail. */
  if (conn_init(st, &st->cmd, o, 0, err, errlen) != 0) {
    free_store(st);
    return LLMUX_EINVAL;
  }
  rc = conn_init(st, &st->sub, o, 1, err, errlen);
  assert(rc == 0);
  *out = &st->base;
  return 0;
}

int llmux_rl_shared_start(llmux_rl_store_t *s) {
  shared_t *st = shared_of(s);
  int rc = llmux_redis_start(&st->sub);
  return rc ? rc : llmux_redis_start(&st->cmd);
}

static void conn_closed(llmux_redis_t *r) {
  shared_t *st = r->data;
  if (++st->closed_conns < 2) return;
  if (st->close_cb) st->close_cb(&st->base, 0, st->close_arg);
  free_store(st);
}

void llmux_rl_shared_close(llmux_rl_store_t *s, llmux_rl_shared_cb cb, void *arg) {
  shared_t *st = shared_of(s);
  st->close_cb = cb;
  st->close_arg = arg;
  st->up = 0;
  fire_waiters(st, LLMUX_ECANCELED);
  fire_settled(st, 1);
  llmux_redis_close(&st->sub, conn_closed);
  llmux_redis_close(&st->cmd, conn_closed);
}

void llmux_rl_shared_stats(llmux_rl_store_t *s, llmux_rl_shared_stats_t *out) {
  shared_t *st = shared_of(s);
  memset(out, 0, sizeof(*out));
  out->up = st->up;
  out->errors = st->cmd.errors + st->sub.errors;
  out->outages = st->outages;
  out->pending = st->npending;
  out->instances = st->instances;
  out->keys = st->count;
  out->last_error = st->cmd.last_error[0] ? st->cmd.last_error : st->sub.last_error;
}
