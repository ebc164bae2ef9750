/* Rate-limit accounting: token estimates, sliding windows and the
 * in-memory store. See ratelimit.h for the model; the providers' header
 * dialects are in dialects.c. */
#include "route/ratelimit.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "base/json_scan.h"
#include "base/util.h"

/* How long a provider's `remaining` is trusted when it sent no reset. */
#define SYNC_TTL_MS 60000u
/* Completion allowance for a Cerebras request with no cap and no known
 * context window. */
#define CEREBRAS_DEFAULT_COMPLETION 4096u

/* A JSON number's digits (json_scan validated it) as an unsigned integer:
 * 0, or LLMUX_EINVAL for a sign, a fraction, an exponent or an overflow. */
static int parse_u64(const char *s, size_t n, uint64_t *out) {
  uint64_t v = 0;
  size_t i;
  if (n == 0) return LLMUX_EINVAL;
  for (i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9' || v > (UINT64_MAX - 9) / 10) return LLMUX_EINVAL;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  *out = v;
  return 0;
}

/* ---- Token estimates --------------------------------------------------- */

static const llmux_json_field_t *field(const llmux_json_field_t *f, size_t n, const char *key) {
  size_t i;
  for (i = 0; i < n; i++)
    if (f[i].type != LLMUX_JSON_NONE && strcmp(f[i].key, key) == 0) return &f[i];
  return NULL;
}

static int present(const llmux_json_field_t *v) {
  return v != NULL && v->type != LLMUX_JSON_NONE;
}

uint64_t llmux_rl_estimate_parts(const llmux_json_field_t *const parts[LLMUX_RL_EST_NPARTS]) {
  uint64_t bytes = 0, msgs = 0;
  size_t i;
  for (i = 0; i < LLMUX_RL_EST_NPARTS; i++) {
    if (!present(parts[i])) continue;
    bytes += parts[i]->text_bytes; /* counted by the scan that found it */
    if (i == 0) msgs = parts[i]->objects;
  }
  return (bytes + 3) / 4 + 4 * msgs + 3;
}

uint64_t llmux_rl_estimate_fields(const llmux_json_field_t *f, size_t n) {
  const llmux_json_field_t *parts[LLMUX_RL_EST_NPARTS] = {
      field(f, n, "messages"), field(f, n, "prompt"), field(f, n, "input"), field(f, n, "tools")};
  return llmux_rl_estimate_parts(parts);
}

int llmux_rl_max_tokens_parts(const llmux_json_field_t *max_completion_tokens,
                              const llmux_json_field_t *max_tokens, uint64_t *out) {
  const llmux_json_field_t *v[2] = {max_completion_tokens, max_tokens};
  size_t i;
  for (i = 0; i < 2; i++)
    if (present(v[i]) && v[i]->type == LLMUX_JSON_NUMBER &&
        parse_u64(v[i]->value.base, v[i]->value.len, out) == 0)
      return 0;
  return LLMUX_ENOTFOUND;
}

int llmux_rl_max_tokens_fields(const llmux_json_field_t *f, size_t n, uint64_t *out) {
  return llmux_rl_max_tokens_parts(field(f, n, "max_completion_tokens"),
                                   field(f, n, "max_tokens"), out);
}

uint64_t llmux_rl_estimate_tokens(const char *body, size_t len) {
  llmux_json_field_t f[] = {{"messages"}, {"prompt"}, {"input"}, {"tools"}};
  if (llmux_json_scan(body, len, f, LLMUX_COUNTOF(f), NULL, NULL) != 0)
    return (uint64_t)len / 4 + 3;
  return llmux_rl_estimate_fields(f, LLMUX_COUNTOF(f));
}

int llmux_rl_parse_max_tokens(const char *body, size_t len, uint64_t *out) {
  llmux_json_field_t f[] = {{"max_completion_tokens"}, {"max_tokens"}};
  if (llmux_json_scan(body, len, f, LLMUX_COUNTOF(f), NULL, NULL) != 0)
    return LLMUX_EINVAL;
  return llmux_rl_max_tokens_fields(f, LLMUX_COUNTOF(f), out);
}

uint64_t llmux_rl_tokens_to_reserve(llmux_rl_style_t style, uint64_t prompt_tokens,
                                    uint64_t max_tokens, uint64_t context_window) {
  uint64_t completion;
  if (style == LLMUX_RL_STYLE_CEREBRAS) {
    if (max_tokens) return prompt_tokens + max_tokens;
    if (context_window) return context_window > prompt_tokens ? context_window : prompt_tokens;
    return prompt_tokens + CEREBRAS_DEFAULT_COMPLETION;
  }
  completion = LLMUX_RL_DEFAULT_COMPLETION_TOKENS;
  if (max_tokens && max_tokens < completion) completion = max_tokens;
  return prompt_tokens + completion;
}

/* ---- Sliding windows --------------------------------------------------- */

#define NSLOTS 60         /* slots per window */
#define RING (NSLOTS + 1) /* slots kept: the window plus the current one */
static const uint64_t slot_ms[2] = {1000u, 1440000u}; /* 60 s and 24 h in 60 */

/* Slot k (absolute: time / slot width) covers [k * w, (k + 1) * w) and is
 * counted until the whole of it is a window old, at (k + 1 + NSLOTS) * w:
 * an event is held for one window plus at most one slot (conservative).
 * It lives at k % RING while in (head - RING, head]. Dimension d uses
 * window d % 2 (minute, day) and counts d / 2 (requests, tokens). */
typedef struct win_s {
  uint64_t head;
  uint64_t count[2][RING];
  uint64_t total[2]; /* the sum of count[kind]: checks need not add 61 slots */
} win_t;

/* Adds n to the current slot. */
static void win_add(win_t *w, int kind, uint64_t n) {
  w->count[kind][w->head % RING] += n;
  w->total[kind] += n;
}

static void win_advance(win_t *w, uint64_t slot_width, uint64_t now) {
  uint64_t idx = now / slot_width, k;
  int kind;
  if (idx <= w->head) return; /* the same slot, or the clock went back */
  if (idx - w->head >= RING) {
    memset(w->count, 0, sizeof(w->count));
    w->total[0] = w->total[1] = 0;
  } else {
    for (k = w->head + 1; k <= idx; k++) {
      for (kind = 0; kind < 2; kind++) {
        w->total[kind] -= w->count[kind][k % RING];
        w->count[kind][k % RING] = 0;
      }
    }
  }
  w->head = idx;
}

/* The oldest slot still counted at `now`. */
static uint64_t win_first(const win_t *w, uint64_t slot_width, uint64_t now) {
  uint64_t idx = now / slot_width;
  if (idx < w->head) idx = w->head; /* the clock went back: as of head */
  return idx >= NSLOTS ? idx - NSLOTS : 0;
}

/* The count over the window at `now`: the running total less the slots
 * that have left it since head (those win_advance would clear). */
static uint64_t win_sum(const win_t *w, int kind, uint64_t slot_width, uint64_t now) {
  uint64_t idx = now / slot_width, k, sum = w->total[kind];
  if (idx <= w->head) return sum; /* the clock went back: as of head */
  if (idx - w->head >= RING) return 0;
  for (k = w->head + 1; k <= idx; k++) sum -= w->count[kind][k % RING];
  return sum;
}

/* Time until the count next goes down: its oldest counted slot leaves.
 * 0 when nothing is counted. */
static uint64_t win_frees_in(const win_t *w, int kind, uint64_t slot_width, uint64_t now) {
  uint64_t k, at;
  for (k = win_first(w, slot_width, now); k <= w->head; k++) {
    if (w->count[kind][k % RING] == 0) continue;
    at = (k + 1 + NSLOTS) * slot_width;
    return at > now ? at - now : 0;
  }
  return 0;
}

/* Time until `cost` fits under `limit` as old slots leave; 0 if it does. */
static uint64_t win_wait(const win_t *w, int kind, uint64_t slot_width, uint64_t limit,
                         uint64_t cost, uint64_t now) {
  uint64_t used = win_sum(w, kind, slot_width, now), k, freed = 0, at;
  if (cost > limit) cost = limit; /* fits once the window is empty */
  if (used + cost <= limit) return 0;
  for (k = win_first(w, slot_width, now); k <= w->head; k++) {
    freed += w->count[kind][k % RING];
    if (used - freed + cost <= limit) break;
  }
  at = (k + 1 + NSLOTS) * slot_width;
  return at > now ? at - now : 0;
}

/* Takes back up to `n` from the slot where something was counted at
 * `at_ms`, if that slot is still kept. */
static void win_uncount(win_t *w, int kind, uint64_t slot_width, uint64_t at_ms,
                        uint64_t n) {
  uint64_t k = at_ms / slot_width, *c;
  if (k > w->head || (w->head >= RING && k <= w->head - RING)) return;
  c = &w->count[kind][k % RING];
  if (n > *c) n = *c;
  *c -= n;
  w->total[kind] -= n;
}

/* ---- The in-memory store ----------------------------------------------- */

typedef struct synced_s {
  int valid;
  uint64_t limit;      /* as reported; 0 when not */
  uint64_t remaining;  /* as reported */
  uint64_t reset_at;   /* monotonic ms */
  uint64_t used_since; /* reserved by us since the report */
} synced_t;

typedef struct entry_s {
  char *provider; /* owned */
  char *model;    /* owned; NULL for the provider-wide key */
  uint64_t hash;
  uint64_t limits[LLMUX_RL_NDIMS];
  win_t win[2];
  synced_t sync[LLMUX_RL_NDIMS];
  uint64_t sync_gen;   /* bumped by every sync: tells reservations apart */
  uint64_t retry_until; /* RETRY_AFTER block, monotonic ms */
  uint64_t spend_until; /* SPEND_LIMIT block */
  uint64_t inflight;
} entry_t;

typedef struct mem_store_s {
  llmux_rl_store_t base;
  entry_t **table; /* open addressing, linear probing, never deleted */
  size_t cap;      /* power of two, at least 2 * max */
  size_t count;
  size_t max;
} mem_store_t;

static mem_store_t *mem_of(llmux_rl_store_t *s) {
  return llmux_container_of(s, mem_store_t, base);
}

static uint64_t fnv(uint64_t h, const char *s) {
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211u;
  return h;
}

/* A key's hash from its provider's (fnv of the provider name): a route's
 * two legs share the provider part. */
static uint64_t key_hash_from(uint64_t hp, const char *model) {
  uint64_t h = (hp ^ (model ? 0x1f : 0x1e)) * 1099511628211u;
  return model ? fnv(h, model) : h;
}

static uint64_t key_hash(const llmux_rl_key_t *key) {
  return key_hash_from(fnv(14695981039346656037u, key->provider), key->model);
}

static int key_matches(const entry_t *e, const llmux_rl_key_t *key) {
  if (strcmp(e->provider, key->provider) != 0) return 0;
  if (e->model == NULL || key->model == NULL) return e->model == key->model;
  return strcmp(e->model, key->model) == 0;
}

/* The slot of `key`: its entry or the empty slot where it would go. */
static entry_t **find_slot(mem_store_t *m, const llmux_rl_key_t *key, uint64_t h) {
  size_t i = (size_t)h & (m->cap - 1);
  while (m->table[i] && (m->table[i]->hash != h || !key_matches(m->table[i], key)))
    i = (i + 1) & (m->cap - 1);
  return &m->table[i];
}

static entry_t *lookup(mem_store_t *m, const llmux_rl_key_t *key) {
  return *find_slot(m, key, key_hash(key));
}

static entry_t *get_or_create(mem_store_t *m, const llmux_rl_key_t *key) {
  uint64_t h = key_hash(key);
  entry_t **slot = find_slot(m, key, h), *e;
  if (*slot) return *slot;
  if (m->count == m->max) return NULL;
  e = llmux_xcalloc(1, sizeof(*e));
  e->provider = llmux_xstrdup(key->provider);
  e->model = key->model ? llmux_xstrdup(key->model) : NULL;
  e->hash = h;
  *slot = e;
  m->count++;
  return e;
}

static int synced_fresh(const synced_t *sy, uint64_t now) {
  return sy->valid && now < sy->reset_at;
}

static uint64_t synced_left(const synced_t *sy) {
  return sy->remaining > sy->used_since ? sy->remaining - sy->used_since : 0;
}

/* Time until dimension d of e has room for `cost`; 0 when it has. Both
 * views must agree: the provider's (it sees every client of the key) and
 * our own count against the configured limit (an operator may give llmux
 * only part of a key's budget). */
static uint64_t dim_wait(const entry_t *e, int d, uint64_t cost, uint64_t now) {
  const synced_t *sy = &e->sync[d];
  uint64_t wait = 0, own;
  if (synced_fresh(sy, now) && cost > synced_left(sy)) wait = sy->reset_at - now;
  if (e->limits[d] == 0) return wait;
  own = win_wait(&e->win[d % 2], d / 2, slot_ms[d % 2], e->limits[d], cost, now);
  return own > wait ? own : wait;
}

static uint64_t block_wait(const entry_t *e, uint64_t now) {
  uint64_t until = e->retry_until > e->spend_until ? e->retry_until : e->spend_until;
  if (until <= now) return 0;
  return until == LLMUX_RL_FOREVER ? LLMUX_RL_FOREVER : until - now;
}

static uint64_t entry_wait(const entry_t *e, uint64_t tokens, uint64_t now) {
  uint64_t wait = block_wait(e, now), w;
  int d;
  for (d = 0; d < LLMUX_RL_NDIMS; d++) {
    w = dim_wait(e, d, d / 2 ? tokens : 1, now);
    if (w > wait) wait = w;
  }
  return wait;
}

/* The route's entry and its provider's, either possibly NULL. */
static void legs(mem_store_t *m, const llmux_rl_key_t *key, entry_t *out[2]) {
  llmux_rl_key_t pk = {key->provider, NULL};
  uint64_t hp = fnv(14695981039346656037u, key->provider);
  out[0] = *find_slot(m, key, key_hash_from(hp, key->model));
  out[1] = key->model ? *find_slot(m, &pk, key_hash_from(hp, NULL)) : NULL;
}

static int mem_set_limits(llmux_rl_store_t *s, const llmux_rl_key_t *key,
                          const llmux_limits_t *l) {
  entry_t *e = get_or_create(mem_of(s), key);
  if (e == NULL) return LLMUX_ETOOLARGE;
  e->limits[LLMUX_RL_REQ_MINUTE] = l->requests_per_minute;
  e->limits[LLMUX_RL_REQ_DAY] = l->requests_per_day;
  e->limits[LLMUX_RL_TOK_MINUTE] = l->tokens_per_minute;
  e->limits[LLMUX_RL_TOK_DAY] = l->tokens_per_day;
  return 0;
}

static int mem_check(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t tokens,
                     uint64_t now, uint64_t *retry_after_ms) {
  entry_t *e[2];
  uint64_t wait = 0, w;
  int i;
  legs(mem_of(s), key, e);
  for (i = 0; i < 2; i++) {
    if (e[i] == NULL) continue;
    w = entry_wait(e[i], tokens, now);
    if (w > wait) wait = w;
  }
  *retry_after_ms = wait;
  return wait ? LLMUX_EAGAIN : 0;
}

/* Adds (sign > 0) or takes back one request and `tokens` on e's provider
 * state, if it is the one the reservation saw. */
static void synced_adjust(entry_t *e, uint64_t gen, int64_t reqs, int64_t tokens) {
  int d;
  if (gen != e->sync_gen) return; /* a later report already counts it */
  for (d = 0; d < LLMUX_RL_NDIMS; d++) {
    synced_t *sy = &e->sync[d];
    int64_t delta = d / 2 ? tokens : reqs;
    if (!sy->valid) continue;
    if (delta >= 0) sy->used_since += (uint64_t)delta;
    else sy->used_since -= (uint64_t)-delta > sy->used_since ? sy->used_since
                                                             : (uint64_t)-delta;
  }
}

static int mem_reserve(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t tokens,
                       uint64_t now, llmux_rl_reservation_t *res) {
  entry_t *e[2];
  int i, w;
  legs(mem_of(s), key, e);
  memset(res->ref, 0, sizeof(res->ref));
  for (i = 0; i < 2; i++) {
    if (e[i] == NULL) continue;
    for (w = 0; w < 2; w++) {
      win_advance(&e[i]->win[w], slot_ms[w], now);
      win_add(&e[i]->win[w], 0, 1);
      win_add(&e[i]->win[w], 1, tokens);
    }
    synced_adjust(e[i], e[i]->sync_gen, 1, (int64_t)tokens);
    e[i]->inflight++;
    res->ref[i] = e[i];
    res->gen[i] = e[i]->sync_gen;
  }
  res->store = s;
  res->held = 1;
  res->tokens = tokens;
  res->at_ms = now;
  return 0;
}

static void mem_commit(llmux_rl_store_t *s, llmux_rl_reservation_t *res, uint64_t actual,
                       uint64_t now) {
  int i, w;
  for (i = 0; i < 2; i++) {
    entry_t *e = res->ref[i];
    if (e == NULL) continue;
    for (w = 0; w < 2; w++) {
      if (actual < res->tokens) {
        win_uncount(&e->win[w], 1, slot_ms[w], res->at_ms, res->tokens - actual);
      } else {
        win_advance(&e->win[w], slot_ms[w], now);
        win_add(&e->win[w], 1, actual - res->tokens);
      }
    }
    synced_adjust(e, res->gen[i], 0, (int64_t)actual - (int64_t)res->tokens);
    e->inflight--;
  }
  res->tokens = actual;
}

static void mem_release(llmux_rl_store_t *s, llmux_rl_reservation_t *res, uint64_t now) {
  int i, w;
  for (i = 0; i < 2; i++) {
    entry_t *e = res->ref[i];
    if (e == NULL) continue;
    for (w = 0; w < 2; w++) {
      win_uncount(&e->win[w], 0, slot_ms[w], res->at_ms, 1);
      win_uncount(&e->win[w], 1, slot_ms[w], res->at_ms, res->tokens);
    }
    synced_adjust(e, res->gen[i], -1, -(int64_t)res->tokens);
    e->inflight--;
  }
}

static void raise_block(entry_t *e, uint64_t until, llmux_rl_block_reason_t reason) {
  uint64_t *slot = reason == LLMUX_RL_BLOCK_SPEND_LIMIT ? &e->spend_until : &e->retry_until;
  if (until > *slot) *slot = until;
}

static int mem_apply(llmux_rl_store_t *s, const llmux_rl_key_t *key,
                     const llmux_rl_info_t *info, uint64_t now) {
  entry_t *e = get_or_create(mem_of(s), key);
  int d, any = 0;
  if (e == NULL) return LLMUX_ETOOLARGE;
  for (d = 0; d < LLMUX_RL_NDIMS; d++) {
    const llmux_rl_dim_info_t *di = &info->dims[d];
    synced_t *sy = &e->sync[d];
    if (!di->has_remaining) continue;
    sy->valid = 1;
    sy->limit = di->has_limit ? di->limit : 0;
    sy->remaining = di->remaining;
    sy->reset_at = now + (di->has_reset ? di->reset_in_ms : SYNC_TTL_MS);
    sy->used_since = 0;
    any = 1;
  }
  if (any) e->sync_gen++;
  if (info->has_retry_after)
    raise_block(e, now + info->retry_after_ms, LLMUX_RL_BLOCK_RETRY_AFTER);
  return 0;
}

static int mem_block(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t until,
                     llmux_rl_block_reason_t reason) {
  entry_t *e;
  if (reason != LLMUX_RL_BLOCK_RETRY_AFTER && reason != LLMUX_RL_BLOCK_SPEND_LIMIT)
    return LLMUX_EINVAL;
  if ((e = get_or_create(mem_of(s), key)) == NULL) return LLMUX_ETOOLARGE;
  raise_block(e, until, reason);
  return 0;
}

static void mem_unblock(llmux_rl_store_t *s, const llmux_rl_key_t *key) {
  entry_t *e = lookup(mem_of(s), key);
  if (e) e->retry_until = e->spend_until = 0;
}

static void fill_snapshot(const entry_t *e, uint64_t now, llmux_rl_snapshot_t *out) {
  int d;
  memset(out, 0, sizeof(*out));
  for (d = 0; d < LLMUX_RL_NDIMS; d++) {
    llmux_rl_dim_snapshot_t *o = &out->dims[d];
    const synced_t *sy = &e->sync[d];
    o->limit = e->limits[d];
    o->used = win_sum(&e->win[d % 2], d / 2, slot_ms[d % 2], now);
    o->frees_in_ms = win_frees_in(&e->win[d % 2], d / 2, slot_ms[d % 2], now);
    if (!synced_fresh(sy, now)) continue;
    o->synced = 1;
    o->synced_limit = sy->limit;
    o->synced_remaining = synced_left(sy);
    o->reset_in_ms = sy->reset_at - now;
  }
  out->blocked_for_ms = block_wait(e, now);
  if (e->spend_until > now) out->block_reason = LLMUX_RL_BLOCK_SPEND_LIMIT;
  else if (e->retry_until > now) out->block_reason = LLMUX_RL_BLOCK_RETRY_AFTER;
  out->inflight = e->inflight;
}

static int mem_snapshot(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t now,
                        llmux_rl_snapshot_t *out) {
  entry_t *e = lookup(mem_of(s), key);
  if (e == NULL) return LLMUX_ENOTFOUND;
  fill_snapshot(e, now, out);
  return 0;
}

static void mem_foreach(llmux_rl_store_t *s, uint64_t now, llmux_rl_foreach_cb cb,
                        void *arg) {
  mem_store_t *m = mem_of(s);
  llmux_rl_snapshot_t snap;
  size_t i;
  for (i = 0; i < m->cap; i++) {
    entry_t *e = m->table[i];
    llmux_rl_key_t key;
    if (e == NULL) continue;
    key.provider = e->provider;
    key.model = e->model;
    fill_snapshot(e, now, &snap);
    cb(arg, &key, &snap);
  }
}

static void mem_destroy(llmux_rl_store_t *s) {
  mem_store_t *m = mem_of(s);
  size_t i;
  for (i = 0; i < m->cap; i++) {
    if (m->table[i] == NULL) continue;
    free(m->table[i]->provider);
    free(m->table[i]->model);
    free(m->table[i]);
  }
  free(m->table);
  free(m);
}

static const llmux_rl_store_vtable_t mem_vtable = {
  mem_set_limits, mem_check, mem_reserve, mem_commit, mem_release, mem_apply,
  mem_block, mem_unblock, mem_snapshot, mem_foreach, mem_destroy,
};

int llmux_rl_memory_store_new(size_t max_keys, llmux_rl_store_t **out) {
  mem_store_t *m;
  size_t cap = 8;
  if (out == NULL || max_keys == 0 || max_keys > ((size_t)1 << 24)) return LLMUX_EINVAL;
  while (cap < 2 * max_keys) cap *= 2;
  m = llmux_xcalloc(1, sizeof(*m));
  m->table = llmux_xcalloc(cap, sizeof(*m->table));
  m->cap = cap;
  m->max = max_keys;
  m->base.vt = &mem_vtable;
  *out = &m->base;
  return 0;
}

/* ---- Public entry points: argument checks, then the store -------------- */

static int key_ok(const llmux_rl_key_t *key) {
  return key != NULL && key->provider != NULL;
}

void llmux_rl_store_destroy(llmux_rl_store_t *s) {
  if (s) s->vt->destroy(s);
}

int llmux_rl_set_limits(llmux_rl_store_t *s, const llmux_rl_key_t *key,
                        const llmux_limits_t *limits) {
  if (s == NULL || !key_ok(key) || limits == NULL) return LLMUX_EINVAL;
  return s->vt->set_limits(s, key, limits);
}

int llmux_rl_configure(llmux_rl_store_t *s, const llmux_config_t *cfg) {
  size_t i;
  int rc;
  if (s == NULL || cfg == NULL) return LLMUX_EINVAL;
  for (i = 0; i < cfg->nroutes; i++) {
    const llmux_route_conf_t *r = cfg->routes[i];
    llmux_rl_key_t key = {r->provider_name, r->id};
    if ((rc = llmux_rl_set_limits(s, &key, &r->limits)) != 0) return rc;
  }
  return 0;
}

int llmux_rl_check(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t tokens,
                   uint64_t now_ms, uint64_t *retry_after_ms) {
  uint64_t dummy;
  if (retry_after_ms == NULL) retry_after_ms = &dummy;
  *retry_after_ms = 0;
  if (s == NULL || !key_ok(key)) return LLMUX_EINVAL;
  return s->vt->check(s, key, tokens, now_ms, retry_after_ms);
}

int llmux_rl_reserve(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t tokens,
                     uint64_t now_ms, llmux_rl_reservation_t *res) {
  if (s == NULL || !key_ok(key) || res == NULL) return LLMUX_EINVAL;
  assert(!res->held);
  return s->vt->reserve(s, key, tokens, now_ms, res);
}

void llmux_rl_commit(llmux_rl_reservation_t *res, uint64_t actual_tokens,
                     uint64_t now_ms) {
  if (res == NULL || !res->held) return;
  res->store->vt->commit(res->store, res, actual_tokens, now_ms);
  res->held = 0;
}

void llmux_rl_release(llmux_rl_reservation_t *res, uint64_t now_ms) {
  if (res == NULL || !res->held) return;
  res->store->vt->release(res->store, res, now_ms);
  res->held = 0;
}

int llmux_rl_apply(llmux_rl_store_t *s, const llmux_rl_key_t *key,
                   const llmux_rl_info_t *info, uint64_t now_ms) {
  if (s == NULL || !key_ok(key) || info == NULL) return LLMUX_EINVAL;
  return s->vt->apply(s, key, info, now_ms);
}

int llmux_rl_sync_headers(llmux_rl_store_t *s, const llmux_rl_key_t *key,
                          llmux_rl_style_t style, const llmux_header_t *headers,
                          size_t n, uint64_t now_ms, int64_t wall_ms) {
  llmux_rl_info_t info;
  if (llmux_rl_parse_headers(style, headers, n, wall_ms, &info) == 0) return 0;
  return llmux_rl_apply(s, key, &info, now_ms);
}

int llmux_rl_block(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t until_ms,
                   llmux_rl_block_reason_t reason) {
  if (s == NULL || !key_ok(key)) return LLMUX_EINVAL;
  return s->vt->block(s, key, until_ms, reason);
}

void llmux_rl_unblock(llmux_rl_store_t *s, const llmux_rl_key_t *key) {
  if (s && key_ok(key)) s->vt->unblock(s, key);
}

int llmux_rl_snapshot(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t now_ms,
                      llmux_rl_snapshot_t *out) {
  if (s == NULL || !key_ok(key) || out == NULL) return LLMUX_EINVAL;
  return s->vt->snapshot(s, key, now_ms, out);
}

/* Takes a view of one dimension when it allows less than what *o holds. */
static void left_take(llmux_rl_left_t *o, uint64_t remaining, uint64_t limit,
                      uint64_t reset_in_ms) {
  if (o->limited && remaining >= o->remaining) return;
  o->limited = 1;
  o->remaining = remaining;
  o->limit = limit;
  o->reset_in_ms = reset_in_ms;
}

/* Folds a key's own count and its provider's report into out. */
static void left_fold(llmux_rl_left_t *out, const llmux_rl_snapshot_t *snap) {
  int d;
  for (d = 0; d < LLMUX_RL_NDIMS; d++) {
    const llmux_rl_dim_snapshot_t *ds = &snap->dims[d];
    if (ds->limit)
      left_take(&out[d], ds->limit > ds->used ? ds->limit - ds->used : 0, ds->limit,
                ds->frees_in_ms);
    if (ds->synced)
      left_take(&out[d], ds->synced_remaining, ds->synced_limit, ds->reset_in_ms);
  }
}

int llmux_rl_left(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t now_ms,
                  llmux_rl_left_t out[LLMUX_RL_NDIMS]) {
  llmux_rl_key_t wide;
  llmux_rl_snapshot_t snap;
  if (s == NULL || !key_ok(key) || out == NULL) return LLMUX_EINVAL;
  memset(out, 0, LLMUX_RL_NDIMS * sizeof *out);
  if (s->vt->snapshot(s, key, now_ms, &snap) == 0) left_fold(out, &snap);
  wide.provider = key->provider;
  wide.model = NULL;
  if (key->model && s->vt->snapshot(s, &wide, now_ms, &snap) == 0) left_fold(out, &snap);
  return 0;
}

void llmux_rl_foreach(llmux_rl_store_t *s, uint64_t now_ms, llmux_rl_foreach_cb cb,
                      void *arg) {
  if (s && cb) s->vt->foreach(s, now_ms, cb, arg);
}
