/* Tenants: key lookup, "may use" and tenant limits (see tenant.h). */
#include "tenant/tenant.h"

#include <errno.h>
#include <mbedtls/sha256.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "base/util.h"

struct llmux__key_slot_s {
  const unsigned char *hash; /* into the config snapshot; NULL: empty */
  const llmux_tenant_t *tenant;
};

/* A key that authenticated: its bytes (zero-padded, so that every compare
 * reads the same number of bytes) and its tenant. */
#define SEEN_WORDS ((LLMUX_KEY_STRLEN + 7) / 8)

struct llmux__seen_key_s {
  uint64_t key[SEEN_WORDS];     /* the key's bytes, zero-padded */
  size_t len;
  const llmux_tenant_t *tenant; /* NULL: empty */
};

/* ---- keys ---------------------------------------------------------------- */

void llmux_key_sha256(const char *key, size_t len, unsigned char out[LLMUX_KEY_HASH_LEN]) {
  mbedtls_sha256_ret((const unsigned char *)key, len, out, 0);
}

void llmux_key_hex(const unsigned char h[LLMUX_KEY_HASH_LEN],
                   char out[2 * LLMUX_KEY_HASH_LEN + 1]) {
  static const char hex[] = "0123456789abcdef";
  size_t i;
  for (i = 0; i < LLMUX_KEY_HASH_LEN; i++) {
    out[2 * i] = hex[h[i] >> 4];
    out[2 * i + 1] = hex[h[i] & 15];
  }
  out[2 * LLMUX_KEY_HASH_LEN] = '\0';
}

int llmux_key_generate(char out[LLMUX_KEY_STRLEN]) {
  static const char b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  unsigned char r[33]; /* 32 random bytes, one zero byte of padding */
  size_t got = 0, i, o = sizeof LLMUX_KEY_PREFIX - 1;
  while (got < 32) {
    ssize_t n = getrandom(r + got, 32 - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return LLMUX_EIO;
    got += (size_t)n;
  }
  r[32] = 0;
  memcpy(out, LLMUX_KEY_PREFIX, o);
  /* 256 bits = 42 groups of 6 bits and 4 bits: 43 characters, no padding. */
  for (i = 0; i < 33; i += 3) {
    unsigned v = (unsigned)r[i] << 16 | (i + 1 < 33 ? (unsigned)r[i + 1] << 8 : 0) |
                 (i + 2 < 33 ? r[i + 2] : 0);
    out[o++] = b64[v >> 18 & 63];
    out[o++] = b64[v >> 12 & 63];
    if (o < LLMUX_KEY_STRLEN - 1) out[o++] = b64[v >> 6 & 63];
    if (o < LLMUX_KEY_STRLEN - 1) out[o++] = b64[v & 63];
  }
  out[LLMUX_KEY_STRLEN - 1] = '\0';
  memset(r, 0, sizeof r);
  return 0;
}

int llmux_key_hash_equal(const unsigned char *a, const unsigned char *b) {
  unsigned char d = 0;
  size_t i;
  for (i = 0; i < LLMUX_KEY_HASH_LEN; i++) d |= a[i] ^ b[i];
  return d == 0;
}

/* Digests are uniformly random: their first bytes are a fine hash. */
static size_t slot_of(const unsigned char *h, size_t nslots) {
  uint64_t v;
  memcpy(&v, h, sizeof v);
  return (size_t)v & (nslots - 1);
}

static void build_key_table(llmux_tenants_t *ts) {
  size_t i, k, total = 0, n = 16;
  for (i = 0; i < ts->n; i++) total += ts->items[i].conf->nkeys;
  while (n < 2 * total) n *= 2;
  ts->slots = llmux_xcalloc(n, sizeof *ts->slots);
  ts->nslots = n;
  for (i = 0; i < ts->n; i++) {
    const llmux_tenant_conf_t *c = ts->items[i].conf;
    for (k = 0; k < c->nkeys; k++) {
      size_t s = slot_of(c->key_hashes[k], n);
      while (ts->slots[s].hash != NULL) s = (s + 1) & (n - 1);
      ts->slots[s].hash = c->key_hashes[k];
      ts->slots[s].tenant = &ts->items[i];
    }
  }
  /* The cache: room for every key twice over; without a random basis for
   * its index, none (every key is then hashed, as before). */
  if (total > 0 && getrandom(&ts->seen_seed, sizeof ts->seen_seed, GRND_NONBLOCK) ==
                       (ssize_t)sizeof ts->seen_seed) {
    ts->seen = llmux_xcalloc(n, sizeof *ts->seen);
    ts->nseen = n;
    ts->seen_seed ^= 0xcbf29ce484222325ull;
  }
}

/* The cache's slot for a key: FNV-1a from a random basis (a presented key
 * can only choose which one slot it is compared with). */
/* A key (len < LLMUX_KEY_STRLEN) as zero-padded words. */
static void seen_words(const char *key, size_t len, uint64_t w[SEEN_WORDS]) {
  memset(w, 0, SEEN_WORDS * sizeof *w);
  memcpy(w, key, len);
}

static size_t seen_slot(const llmux_tenants_t *ts, const uint64_t w[SEEN_WORDS], size_t len) {
  uint64_t h = ts->seen_seed ^ len;
  size_t i;
  for (i = 0; i < SEEN_WORDS; i++) h = (h ^ w[i]) * 0x9e3779b97f4a7c15ull, h ^= h >> 29;
  return (size_t)h & (ts->nseen - 1);
}

/* Constant time over the whole slot, whatever the key. */
static int seen_equal(const struct llmux__seen_key_s *e, const uint64_t w[SEEN_WORDS],
                      size_t len) {
  uint64_t d = e->len ^ len; /* trailing NULs are not padding */
  size_t i;
  for (i = 0; i < SEEN_WORDS; i++) d |= e->key[i] ^ w[i];
  return d == 0;
}

const llmux_tenant_t *llmux_tenants_auth(const llmux_tenants_t *ts, const char *key,
                                         size_t len) {
  unsigned char h[LLMUX_KEY_HASH_LEN];
  const llmux_tenant_t *found = NULL;
  struct llmux__seen_key_s *e = NULL;
  uint64_t w[SEEN_WORDS];
  size_t s;
  if (ts->nslots == 0 || key == NULL || len == 0) return NULL;
  if (ts->seen != NULL && len < LLMUX_KEY_STRLEN) {
    seen_words(key, len, w);
    e = &ts->seen[seen_slot(ts, w, len)];
    if (e->tenant != NULL && seen_equal(e, w, len)) return e->tenant;
  }
  llmux_key_sha256(key, len, h);
  for (s = slot_of(h, ts->nslots); ts->slots[s].hash != NULL; s = (s + 1) & (ts->nslots - 1)) {
    if (llmux_key_hash_equal(ts->slots[s].hash, h)) {
      found = ts->slots[s].tenant;
      break;
    }
  }
  memset(h, 0, sizeof h);
  if (found != NULL && e != NULL) {
    memcpy(e->key, w, sizeof e->key);
    e->len = len;
    e->tenant = found;
  }
  return found;
}

/* ---- may use --------------------------------------------------------------- */

static const void *target_of(const llmux_resolution_t *res) {
  switch (res->target_kind) {
  case LLMUX_NAME_CANONICAL: return res->model;
  case LLMUX_NAME_GENERIC: return res->generic;
  case LLMUX_NAME_PROFILE: return res->profile;
  default: return NULL;
  }
}

static int listed(const llmux_tenant_t *t, const char *name) {
  size_t i;
  for (i = 0; i < t->conf->models.len; i++) {
    if (strcasecmp(t->conf->models.items[i], name) == 0) return 1;
  }
  return 0;
}

int llmux_tenant_may_use(const llmux_tenant_t *t, const llmux_resolution_t *res,
                         const char *extra) {
  const void *target = target_of(res);
  size_t i;
  if (!t->conf->has_models) return 1;
  for (i = 0; i < res->nchain; i++) {
    if (listed(t, res->chain[i].name)) return 1;
  }
  if (extra != NULL && listed(t, extra)) return 1;
  for (i = 0; target != NULL && i < t->nallowed; i++) {
    if (t->allowed_targets[i] == target) return 1;
  }
  return 0;
}

int llmux_tenant_may_use_name(const llmux_tenant_t *t, const llmux_config_t *cfg,
                              const char *name) {
  llmux_resolution_t res;
  if (!t->conf->has_models) return 1;
  if (llmux_resolve(cfg, name, &res) != 0) return 0;
  return llmux_tenant_may_use(t, &res, NULL);
}

int llmux_tenant_may_use_agent(const llmux_tenant_t *t, const llmux_config_t *cfg,
                               const llmux_agent_conf_t *agent) {
  const llmux_profile_conf_t *p = llmux_tenant_agent_profile(t->conf, agent);
  llmux_resolution_t res;
  if (!t->conf->has_models) return 1;
  if (llmux_resolve(cfg, p->name, &res) != 0) return 0;
  return llmux_tenant_may_use(t, &res, agent->name);
}

/* ---- limits ---------------------------------------------------------------- */

static uint64_t ms_until_day(int day, int64_t wall_ms) {
  int64_t at = (int64_t)day * 86400000;
  return at > wall_ms ? (uint64_t)(at - wall_ms) : 1000;
}

static int refuse(llmux_tenant_verdict_t *v, const char *limit, int quota, uint64_t ms) {
  v->limit = limit;
  v->quota = quota;
  v->retry_after_ms = ms;
  return LLMUX_EAGAIN;
}

int llmux_tenant_admit(llmux_tenants_t *ts, llmux_usage_store_t *usage,
                       const llmux_tenant_t *t, uint64_t tokens, uint64_t now_ms,
                       int64_t wall_ms, llmux_rl_reservation_t *res,
                       llmux_tenant_verdict_t *v) {
  const llmux_tenant_conf_t *c = t->conf;
  llmux_rl_key_t key = {t->rl_name, NULL};
  int today = (int)(wall_ms / 86400000);
  uint64_t wait = 0;
  int rc;
  memset(v, 0, sizeof *v);
  if (usage != NULL && (c->has_budget || c->limits.tokens_per_day)) {
    llmux_usage_counts_t day, month;
    llmux_usage_tenant_totals(usage, c->name, today, &day, &month);
    if (c->has_budget && month.cost_usd >= c->budget_usd_per_month)
      return refuse(v, "budget_usd_per_month", 1,
                    ms_until_day(llmux_usage_next_month_start(today), wall_ms));
    if (c->limits.tokens_per_day &&
        day.input_tokens + day.output_tokens >= c->limits.tokens_per_day)
      return refuse(v, "tokens_per_day", 0, ms_until_day(today + 1, wall_ms));
  }
  rc = llmux_rl_check(ts->rl, &key, tokens, now_ms, &wait);
  if (rc == LLMUX_RL_EUNAVAILABLE || rc == LLMUX_RL_ESTALE) return rc;
  if (rc != 0) {
    llmux_rl_snapshot_t snap;
    const char *which = "tokens_per_minute";
    if (llmux_rl_snapshot(ts->rl, &key, now_ms, &snap) == 0 &&
        snap.dims[LLMUX_RL_REQ_MINUTE].limit &&
        snap.dims[LLMUX_RL_REQ_MINUTE].used >= snap.dims[LLMUX_RL_REQ_MINUTE].limit)
      which = "requests_per_minute";
    return refuse(v, which, 0, wait);
  }
  memset(res, 0, sizeof *res);
  llmux_rl_reserve(ts->rl, &key, tokens, now_ms, res);
  return 0;
}

/* ---- init -------------------------------------------------------------------- */

static int init_tenant(llmux_tenants_t *ts, llmux_tenant_t *t) {
  const llmux_tenant_conf_t *c = t->conf;
  llmux_limits_t l;
  size_t i;
  snprintf(t->rl_name, sizeof t->rl_name, "tenant:%s", c->name);
  t->allowed_targets = llmux_xcalloc(c->models.len + 1, sizeof *t->allowed_targets);
  for (i = 0; i < c->models.len; i++) {
    llmux_resolution_t res;
    if (llmux_resolve(ts->cfg, c->models.items[i], &res) == 0 && target_of(&res))
      t->allowed_targets[t->nallowed++] = target_of(&res);
  }
  /* Only the minute windows live in the store: day totals come from usage. */
  memset(&l, 0, sizeof l);
  l.requests_per_minute = c->limits.requests_per_minute;
  l.tokens_per_minute = c->limits.tokens_per_minute;
  return llmux_rl_set_limits(ts->rl, &(llmux_rl_key_t){t->rl_name, NULL}, &l);
}

int llmux_tenants_init(llmux_tenants_t *ts, const llmux_config_t *cfg,
                       int (*models_json)(const llmux_config_t *cfg,
                                          const llmux_tenant_t *t, llmux_buf_t *out)) {
  llmux_rl_store_t *rl;
  int rc = llmux_rl_memory_store_new(cfg->ntenants + 16, &rl);
  if (rc != 0) return rc;
  rc = llmux_tenants_init_shared(ts, cfg, rl, models_json);
  if (rc != 0) {
    llmux_rl_store_destroy(rl);
    return rc;
  }
  ts->own_rl = 1;
  return 0;
}

int llmux_tenants_init_shared(llmux_tenants_t *ts, const llmux_config_t *cfg,
                              llmux_rl_store_t *rl,
                              int (*models_json)(const llmux_config_t *cfg,
                                                 const llmux_tenant_t *t, llmux_buf_t *out)) {
  size_t i;
  int rc;
  memset(ts, 0, sizeof *ts);
  ts->cfg = cfg;
  ts->rl = rl;
  ts->n = cfg->ntenants;
  ts->items = llmux_xcalloc(ts->n + 1, sizeof *ts->items);
  for (i = 0; i < ts->n; i++) {
    ts->items[i].conf = cfg->tenants[i];
    rc = init_tenant(ts, &ts->items[i]);
    if (rc == 0 && models_json) rc = models_json(cfg, &ts->items[i], &ts->items[i].models_json);
    if (rc != 0) goto fail;
  }
  build_key_table(ts);
  return 0;
fail:
  llmux_tenants_free(ts);
  return rc;
}

void llmux_tenants_free(llmux_tenants_t *ts) {
  size_t i;
  for (i = 0; i < ts->n; i++) {
    free(ts->items[i].allowed_targets);
    llmux_buf_free(&ts->items[i].models_json);
  }
  free(ts->items);
  free(ts->slots);
  if (ts->seen != NULL) { /* keys: wiped, not just freed */
    memset(ts->seen, 0, ts->nseen * sizeof *ts->seen);
    free(ts->seen);
  }
  if (ts->own_rl && ts->rl) llmux_rl_store_destroy(ts->rl);
  memset(ts, 0, sizeof *ts);
}
