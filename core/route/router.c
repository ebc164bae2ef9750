/* Route ordering and per-route circuit breakers. See router.h for the rules;
 * this file only adds how. */
#include "route/router.h"

#include <assert.h>
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

/* One route's observed state: an entry of the route table, found by the
 * route's names and never moved or freed before the table, so routers of
 * several configuration snapshots can point at it at once. The failure
 * ring holds the times of the last `ring_cap` failures; the newest router
 * sizes it (cooldown_failures), and every router counts into it as sized. */
typedef struct route_state_s {
  struct route_state_s *next; /* hash chain */
  char *provider;
  char *model;            /* the provider's model id */
  uint64_t *ring;
  unsigned ring_cap;
  unsigned nfails;        /* failure times in the ring (<= ring_cap) */
  unsigned head;          /* next ring slot; the oldest when the ring is full */
  int open;               /* tripped: rests until until_ms, then half-open */
  uint64_t until_ms;
  uint64_t opened_ms;     /* when the current opening began (its `since`) */
  uint64_t closed_ms;     /* the latest close by a probe, here or elsewhere */
  int probe_out;          /* half-open probe granted and not yet reported */
  uint64_t probe_at_ms;
  unsigned inflight;
  uint64_t samples;
  double ewma_ms;
  char last_error[LLMUX_ROUTE_ERROR_MAX]; /* for status output only */
  int64_t last_error_ms;  /* wall clock, as reported */
} route_state_t;

struct llmux_route_table_s {
  route_state_t **buckets;
  size_t nbuckets;        /* a power of two */
  size_t count;
  llmux_route_change_cb on_change; /* NULL: nobody listens */
  void *on_change_arg;
};

/* Ordering workspace entry. */
typedef struct entry_s {
  const llmux_route_conf_t *route;
  size_t model_rank;      /* the model's place: resolution order or shuffled */
  size_t prefer;          /* the provider's place in the profile's
                             `providers`; unlisted ones after them all */
  size_t prank;           /* place in priority order */
  double key;             /* the strategy's sort key, ascending */
} entry_t;

struct llmux_router_s {
  llmux_router_options_t opts;
  size_t nroutes;
  route_state_t **map;    /* route index -> its entry in `table` */
  llmux_route_table_t *table;
  int own_table;          /* llmux_router_new: the table dies with the router */
  entry_t *scratch;       /* nroutes entries, reused by every ordering */
  unsigned *seen;         /* per route: == gen when already taken this call */
  unsigned gen;
  size_t *mrank;          /* weighted: a rank per resolution model */
  size_t mrank_cap;
};

/* ---- Route table --------------------------------------------------------- */

static uint64_t name_hash(const char *provider, const char *model) {
  uint64_t h = 14695981039346656037u;
  const char *c;
  for (c = provider; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211u;
  h = (h ^ 0x1f) * 1099511628211u; /* neither name holds 0x1f: a separator */
  for (c = model; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211u;
  return h;
}

int llmux_route_table_new(llmux_route_table_t **out) {
  llmux_route_table_t *t = calloc(1, sizeof *t);
  if (t != NULL) t->buckets = calloc(64, sizeof *t->buckets);
  if (t == NULL || t->buckets == NULL) {
    free(t);
    *out = NULL;
    return LLMUX_ENOMEM;
  }
  t->nbuckets = 64;
  *out = t;
  return 0;
}

void llmux_route_table_free(llmux_route_table_t *t) {
  size_t i;
  if (t == NULL) return;
  for (i = 0; i < t->nbuckets; i++) {
    route_state_t *s = t->buckets[i], *next;
    for (; s != NULL; s = next) {
      next = s->next;
      free(s->provider);
      free(s->model);
      free(s->ring);
      free(s);
    }
  }
  free(t->buckets);
  free(t);
}

size_t llmux_route_table_count(const llmux_route_table_t *t) {
  return t->count;
}

/* Doubles the buckets; entries are relinked, never moved. */
static void table_grow(llmux_route_table_t *t) {
  size_t n = t->nbuckets * 2, i;
  route_state_t **b = calloc(n, sizeof *b);
  if (b == NULL) return; /* longer chains, still correct */
  for (i = 0; i < t->nbuckets; i++) {
    route_state_t *s = t->buckets[i], *next;
    for (; s != NULL; s = next) {
      size_t k = name_hash(s->provider, s->model) & (n - 1);
      next = s->next;
      s->next = b[k];
      b[k] = s;
    }
  }
  free(t->buckets);
  t->buckets = b;
  t->nbuckets = n;
}

/* The entry of (provider, model); NULL when there is none. */
static route_state_t *table_find(const llmux_route_table_t *t, const char *provider,
                                 const char *model) {
  size_t k = name_hash(provider, model) & (t->nbuckets - 1);
  route_state_t *s;
  for (s = t->buckets[k]; s != NULL; s = s->next) {
    if (strcmp(s->provider, provider) == 0 && strcmp(s->model, model) == 0) return s;
  }
  return NULL;
}

/* The entry of (provider, model), made when missing; NULL when out of memory.
 * A new entry has no failure ring: only a router counts failures, and it
 * sizes the ring of every entry it maps (ring_fit). */
static route_state_t *table_get(llmux_route_table_t *t, const char *provider,
                                const char *model) {
  size_t k = name_hash(provider, model) & (t->nbuckets - 1);
  route_state_t *s = table_find(t, provider, model);
  if (s != NULL) return s;
  s = calloc(1, sizeof *s);
  if (s == NULL) return NULL;
  s->provider = strdup(provider);
  s->model = strdup(model);
  if (s->provider == NULL || s->model == NULL) {
    free(s->provider);
    free(s->model);
    free(s);
    return NULL;
  }
  s->next = t->buckets[k];
  t->buckets[k] = s;
  if (++t->count > t->nbuckets) table_grow(t);
  return s;
}

/* Sizes the entry's failure ring for `n` failures; a new size starts the
 * count again (the rule changed). 0 or LLMUX_ENOMEM. */
static int ring_fit(route_state_t *s, unsigned n) {
  uint64_t *ring;
  if (s->ring_cap == n) return 0;
  ring = calloc(n, sizeof *ring);
  if (ring == NULL) return LLMUX_ENOMEM;
  free(s->ring);
  s->ring = ring;
  s->ring_cap = n;
  s->nfails = 0;
  s->head = 0;
  return 0;
}

/* ---- Life cycle -------------------------------------------------------- */

void llmux_router_options_default(llmux_router_options_t *o) {
  o->failures = 3;
  o->window_ms = 60000;
  o->cooldown_ms = 30000;
  o->probe_timeout_ms = 60000;
  o->ewma_alpha = 0.3;
}

static int take_options(llmux_router_options_t *dst, const llmux_router_options_t *src) {
  llmux_router_options_default(dst);
  if (src == NULL) return 0;
  if (src->failures) dst->failures = src->failures;
  if (src->window_ms) dst->window_ms = src->window_ms;
  if (src->cooldown_ms) dst->cooldown_ms = src->cooldown_ms;
  if (src->probe_timeout_ms) dst->probe_timeout_ms = src->probe_timeout_ms;
  if (src->ewma_alpha != 0) dst->ewma_alpha = src->ewma_alpha;
  if (!(dst->ewma_alpha > 0 && dst->ewma_alpha <= 1)) return LLMUX_EINVAL;
  if (dst->failures > 1024) return LLMUX_EINVAL; /* a ring per route: keep it small */
  return 0;
}

/* Points every route of cfg at its entry. */
static int map_routes(llmux_router_t *r, const llmux_config_t *cfg) {
  size_t i;
  for (i = 0; i < cfg->nroutes; i++) {
    const llmux_route_conf_t *rt = cfg->routes[i];
    route_state_t *s = table_get(r->table, rt->provider->name, rt->id);
    if (s == NULL || ring_fit(s, r->opts.failures) != 0) return LLMUX_ENOMEM;
    r->map[i] = s;
  }
  return 0;
}

int llmux_router_new_shared(const llmux_config_t *cfg, const llmux_router_options_t *opts,
                            llmux_route_table_t *table, llmux_router_t **out) {
  llmux_router_t *r;
  size_t n;
  if (out) *out = NULL;
  if (cfg == NULL || out == NULL || table == NULL) return LLMUX_EINVAL;
  r = calloc(1, sizeof(*r));
  if (r == NULL) return LLMUX_ENOMEM;
  r->table = table;
  if (take_options(&r->opts, opts) != 0) {
    free(r);
    return LLMUX_EINVAL;
  }
  n = cfg->nroutes ? cfg->nroutes : 1; /* calloc(0) may return NULL */
  r->nroutes = cfg->nroutes;
  r->map = calloc(n, sizeof(*r->map));
  r->scratch = calloc(n, sizeof(*r->scratch));
  r->seen = calloc(n, sizeof(*r->seen));
  if (!r->map || !r->scratch || !r->seen || map_routes(r, cfg) != 0) goto fail;
  *out = r;
  return 0;

fail:
  llmux_router_free(r);
  return LLMUX_ENOMEM;
}

int llmux_router_new(const llmux_config_t *cfg, const llmux_router_options_t *opts,
                     llmux_router_t **out) {
  llmux_route_table_t *t;
  int rc;
  if (out) *out = NULL;
  if (cfg == NULL || out == NULL) return LLMUX_EINVAL;
  if (llmux_route_table_new(&t) != 0) return LLMUX_ENOMEM;
  rc = llmux_router_new_shared(cfg, opts, t, out);
  if (rc != 0) {
    llmux_route_table_free(t);
    return rc;
  }
  (*out)->own_table = 1;
  return 0;
}

void llmux_router_free(llmux_router_t *r) {
  if (r == NULL) return;
  if (r->own_table) llmux_route_table_free(r->table);
  free(r->map);
  free(r->scratch);
  free(r->seen);
  free(r->mrank);
  free(r);
}

/* ---- Breaker ----------------------------------------------------------- */

static route_state_t *state_of(const llmux_router_t *r, size_t idx) {
  assert(idx < r->nroutes && "route index from another config snapshot");
  return r->map[idx];
}

static llmux_breaker_state_t breaker(const route_state_t *s, uint64_t now_ms) {
  if (!s->open) return LLMUX_BREAKER_CLOSED;
  return now_ms < s->until_ms ? LLMUX_BREAKER_OPEN : LLMUX_BREAKER_HALF_OPEN;
}

/* A probe is out unless none was granted or it lapsed unreported. */
static int probe_blocks(const llmux_router_t *r, const route_state_t *s, uint64_t now_ms) {
  return s->probe_out && now_ms - s->probe_at_ms < r->opts.probe_timeout_ms;
}

static void notify(const llmux_route_table_t *t, const route_state_t *s,
                   llmux_route_event_t event, uint64_t now_ms, unsigned failures) {
  llmux_route_change_t c;
  if (t->on_change == NULL) return;
  memset(&c, 0, sizeof c);
  c.event = event;
  c.provider = s->provider;
  c.model = s->model;
  c.now_ms = now_ms;
  if (event == LLMUX_ROUTE_OPENED) {
    c.until_ms = s->until_ms;
    c.failures = failures;
    c.probe = failures == 0;
    if (c.probe) c.failures = 1;
  }
  t->on_change(&c, t->on_change_arg);
}

/* Opens the breaker until `until_ms`: the rest starts over, and so does
 * the failure count. */
static void rest(route_state_t *s, uint64_t since_ms, uint64_t until_ms) {
  s->open = 1;
  s->until_ms = until_ms;
  s->opened_ms = since_ms;
  s->probe_out = 0;
  s->nfails = 0;
  s->head = 0;
}

/* `failures`: the count that tripped it; 0 for a failed probe. */
static void trip(const llmux_router_t *r, route_state_t *s, uint64_t now_ms,
                 unsigned failures) {
  rest(s, now_ms, now_ms + r->opts.cooldown_ms);
  notify(r->table, s, LLMUX_ROUTE_OPENED, now_ms, failures);
}

static void close_breaker(route_state_t *s) {
  s->open = 0;
  s->probe_out = 0;
  s->nfails = 0;
  s->head = 0;
}

/* Records a failure of a closed route; trips it when the last `ring_cap`
 * failures all fall within the window. */
static void count_failure(const llmux_router_t *r, route_state_t *s, uint64_t now_ms) {
  unsigned n = s->ring_cap;
  uint64_t oldest;
  s->ring[s->head] = now_ms;
  s->head = (s->head + 1) % n;
  if (s->nfails < n) s->nfails++;
  if (s->nfails < n) return;
  oldest = s->ring[s->head]; /* full ring: head is the oldest of the last n */
  if (now_ms < oldest || now_ms - oldest < r->opts.window_ms) trip(r, s, now_ms, n);
}

llmux_router_verdict_t llmux_router_allow(llmux_router_t *r, size_t route_index,
                                          uint64_t now_ms) {
  route_state_t *s = state_of(r, route_index);
  switch (breaker(s, now_ms)) {
  case LLMUX_BREAKER_CLOSED: return LLMUX_ROUTER_ALLOW;
  case LLMUX_BREAKER_OPEN: return LLMUX_ROUTER_DENY;
  case LLMUX_BREAKER_HALF_OPEN: break;
  }
  if (probe_blocks(r, s, now_ms)) return LLMUX_ROUTER_DENY;
  s->probe_out = 1;
  s->probe_at_ms = now_ms;
  return LLMUX_ROUTER_PROBE;
}

static void observe_latency(const llmux_router_t *r, route_state_t *s, uint64_t latency_ms) {
  double x = (double)latency_ms;
  if (s->samples++ == 0)
    s->ewma_ms = x;
  else
    s->ewma_ms += r->opts.ewma_alpha * (x - s->ewma_ms);
}

/* A report while the route still rests (OPEN) comes from a request sent
 * before it tripped: it says nothing about now, so the breaker ignores it. */
void llmux_router_report(llmux_router_t *r, size_t route_index, llmux_outcome_t outcome,
                         uint64_t latency_ms, uint64_t now_ms) {
  route_state_t *s = state_of(r, route_index);
  llmux_breaker_state_t st = breaker(s, now_ms);
  switch (outcome) {
  case LLMUX_OUTCOME_SUCCESS:
    observe_latency(r, s, latency_ms);
    if (st == LLMUX_BREAKER_OPEN) break;
    close_breaker(s);
    if (st == LLMUX_BREAKER_HALF_OPEN) {
      s->closed_ms = now_ms;
      notify(r->table, s, LLMUX_ROUTE_CLOSED, now_ms, 0);
    }
    break;
  case LLMUX_OUTCOME_FAILURE:
    if (st == LLMUX_BREAKER_CLOSED)
      count_failure(r, s, now_ms);
    else if (st == LLMUX_BREAKER_HALF_OPEN)
      trip(r, s, now_ms, 0);
    break;
  case LLMUX_OUTCOME_NEUTRAL:
    if (st == LLMUX_BREAKER_HALF_OPEN) s->probe_out = 0;
    break;
  }
}

void llmux_router_report_error(llmux_router_t *r, size_t route_index, llmux_outcome_t outcome,
                               uint64_t now_ms, const char *what, int64_t wall_ms) {
  route_state_t *s = state_of(r, route_index);
  size_t n;
  llmux_router_report(r, route_index, outcome, 0, now_ms);
  if (what == NULL) return;
  n = strlen(what);
  if (n >= sizeof s->last_error) {
    n = sizeof s->last_error - 1;
    while (n > 0 && ((unsigned char)what[n] & 0xc0) == 0x80) n--; /* whole UTF-8 only */
  }
  memcpy(s->last_error, what, n);
  s->last_error[n] = '\0';
  s->last_error_ms = wall_ms;
}

void llmux_router_inflight(llmux_router_t *r, size_t route_index, int delta) {
  route_state_t *s = state_of(r, route_index);
  unsigned down;
  if (delta >= 0) {
    s->inflight += (unsigned)delta;
    return;
  }
  down = (unsigned)(-(long long)delta);
  assert(down <= s->inflight && "inflight below zero");
  s->inflight = down > s->inflight ? 0 : s->inflight - down;
}

void llmux_router_stats(const llmux_router_t *r, size_t route_index, uint64_t now_ms,
                        llmux_route_stats_t *out) {
  const route_state_t *s = state_of(r, route_index);
  unsigned i;
  memset(out, 0, sizeof(*out));
  out->state = breaker(s, now_ms);
  out->until_ms = s->open ? s->until_ms : 0;
  for (i = 0; i < s->nfails; i++) {
    if (now_ms < s->ring[i] || now_ms - s->ring[i] < r->opts.window_ms) out->recent_failures++;
  }
  out->probe_out = out->state == LLMUX_BREAKER_HALF_OPEN && probe_blocks(r, s, now_ms);
  out->inflight = s->inflight;
  out->observed = s->samples > 0;
  out->latency_ms = s->ewma_ms;
  out->samples = s->samples;
  memcpy(out->last_error, s->last_error, sizeof out->last_error);
  out->last_error_ms = s->last_error_ms;
}

/* ---- Sharing breakers --------------------------------------------------- */

void llmux_route_table_on_change(llmux_route_table_t *t, llmux_route_change_cb cb, void *arg) {
  t->on_change = cb;
  t->on_change_arg = cb ? arg : NULL;
}

int llmux_route_table_open(llmux_route_table_t *t, const char *provider, const char *model,
                           uint64_t since_ms, uint64_t until_ms, uint64_t now_ms) {
  route_state_t *s;
  if (t == NULL || provider == NULL || model == NULL) return LLMUX_EINVAL;
  if (until_ms <= now_ms) return 0;
  if ((s = table_get(t, provider, model)) == NULL) return LLMUX_ENOMEM;
  if (since_ms < s->closed_ms) return 0; /* a success came after those failures */
  if (s->open && s->until_ms >= until_ms) return 0;
  /* Extending an opening: the later start is the one a close must follow. */
  rest(s, s->open && s->opened_ms > since_ms ? s->opened_ms : since_ms, until_ms);
  return 1;
}

int llmux_route_table_close_remote(llmux_route_table_t *t, const char *provider,
                                   const char *model, uint64_t at_ms) {
  route_state_t *s;
  if (t == NULL || provider == NULL || model == NULL) return LLMUX_EINVAL;
  if ((s = table_find(t, provider, model)) == NULL) return 0;
  if (at_ms > s->closed_ms) s->closed_ms = at_ms;
  if (!s->open || s->opened_ms > at_ms) return 0;
  close_breaker(s);
  return 1;
}

/* ---- Filters ----------------------------------------------------------- */

const char *llmux_skip_reason_str(llmux_skip_reason_t reason) {
  switch (reason) {
  case LLMUX_SKIP_DISABLED: return "provider disabled";
  case LLMUX_SKIP_CAPABILITY: return "missing capability";
  case LLMUX_SKIP_CONTEXT: return "prompt exceeds context window";
  case LLMUX_SKIP_COOLDOWN: return "cooling down";
  case LLMUX_SKIP_RATE_LIMITED: return "no rate-limit headroom";
  }
  return "unknown";
}

/* The capabilities `need` asks for that model capabilities `have` lack; an
 * embeddings-only mismatch in either direction yields LLMUX_CAP_EMBEDDINGS
 * (or ~0u for a chat request to an embeddings model). */
static unsigned missing_caps(unsigned have, unsigned need) {
  unsigned other = need & ~(unsigned)LLMUX_CAP_EMBEDDINGS;
  if (need & LLMUX_CAP_EMBEDDINGS) {
    if (!(have & LLMUX_CAP_EMBEDDINGS)) return LLMUX_CAP_EMBEDDINGS;
  } else if (have & LLMUX_CAP_EMBEDDINGS) {
    return ~0u;
  }
  if (have == 0) return 0; /* nothing declared: unknown, kept */
  return other & ~have;
}

/* 0 when the route may serve the request, else the reason (and details in
 * `skip`). */
static int filter(const llmux_router_t *r, const llmux_route_conf_t *rt,
                  const llmux_route_query_t *q, uint64_t now_ms, llmux_route_skip_t *skip) {
  const llmux_model_conf_t *m = rt->model;
  const route_state_t *s = state_of(r, rt->index);
  llmux_breaker_state_t st;
  unsigned miss;
  memset(skip, 0, sizeof(*skip));
  skip->route = rt;
  if (!rt->provider->enabled) return skip->reason = LLMUX_SKIP_DISABLED;
  miss = missing_caps(m->capabilities, q->caps);
  if (miss) {
    skip->missing_caps = miss == ~0u ? 0 : miss;
    return skip->reason = LLMUX_SKIP_CAPABILITY;
  }
  if (m->context_window && q->prompt_tokens > m->context_window)
    return skip->reason = LLMUX_SKIP_CONTEXT;
  st = breaker(s, now_ms);
  if (st == LLMUX_BREAKER_OPEN) {
    skip->until_ms = s->until_ms;
    return skip->reason = LLMUX_SKIP_COOLDOWN;
  }
  if (st == LLMUX_BREAKER_HALF_OPEN && probe_blocks(r, s, now_ms)) {
    skip->until_ms = s->probe_at_ms + r->opts.probe_timeout_ms; /* an upper bound */
    return skip->reason = LLMUX_SKIP_COOLDOWN;
  }
  return 0;
}

static void add_skip(llmux_route_plan_t *plan, const llmux_route_skip_t *skip) {
  if (plan->skipped) plan->skipped[plan->nskipped] = *skip;
  plan->nskipped++;
  if (skip->reason != LLMUX_SKIP_COOLDOWN) return;
  plan->ncooling++;
  if (plan->retry_at_ms == 0 || skip->until_ms < plan->retry_at_ms)
    plan->retry_at_ms = skip->until_ms;
}

/* ---- Ordering ---------------------------------------------------------- */

uint64_t llmux_rand_next(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static double weight_at(const llmux_profile_conf_t *p, size_t nmodels, size_t i) {
  double w;
  if (p == NULL || p->weights == NULL || p->nweights != nmodels) return 1.0;
  w = p->weights[i];
  return w > 0 ? w : 0; /* also maps NaN to 0 */
}

/* Weighted sampling without replacement: rank[i] is model i's place.
 * Each pick takes an untaken model with probability weight / remaining
 * total; zero-weight models follow in listed order. */
static void weighted_ranks(const llmux_resolution_t *res, uint64_t seed, size_t *rank) {
  size_t n = res->nmodels, i, k;
  uint64_t st = seed;
  for (i = 0; i < n; i++) rank[i] = SIZE_MAX;
  for (k = 0; k < n; k++) {
    double total = 0, x, acc = 0;
    size_t pick = SIZE_MAX;
    for (i = 0; i < n; i++)
      if (rank[i] == SIZE_MAX) total += weight_at(res->profile, n, i);
    if (total <= 0) break;
    x = (double)(llmux_rand_next(&st) >> 11) * 0x1.0p-53 * total;
    for (i = 0; i < n; i++) {
      double w = weight_at(res->profile, n, i);
      if (rank[i] != SIZE_MAX || w <= 0) continue;
      pick = i; /* the last positive one absorbs rounding */
      acc += w;
      if (x < acc) break;
    }
    rank[pick] = k;
  }
  for (i = 0; i < n; i++)
    if (rank[i] == SIZE_MAX) rank[i] = k++;
}

/* The best (lowest) rank of `m` in the resolution: a model listed twice
 * counts at its better place. */
static size_t model_rank(const llmux_resolution_t *res, const size_t *rank,
                         const llmux_model_conf_t *m) {
  size_t i, best = SIZE_MAX;
  for (i = 0; i < res->nmodels; i++) {
    size_t v = rank ? rank[i] : i;
    if (res->models[i] == m && v < best) best = v;
  }
  return best;
}

static int cmp_priority(const void *pa, const void *pb) {
  const entry_t *a = pa, *b = pb;
  if (a->model_rank != b->model_rank) return a->model_rank < b->model_rank ? -1 : 1;
  if (a->prefer != b->prefer) return a->prefer < b->prefer ? -1 : 1;
  if (a->route->provider->priority != b->route->provider->priority)
    return a->route->provider->priority < b->route->provider->priority ? -1 : 1;
  return a->route->index < b->route->index ? -1 : a->route->index > b->route->index;
}

static int cmp_key(const void *pa, const void *pb) {
  const entry_t *a = pa, *b = pb;
  if (a->key != b->key) return a->key < b->key ? -1 : 1;
  return a->prank < b->prank ? -1 : a->prank > b->prank;
}

static double strategy_key(const llmux_router_t *r, llmux_strategy_t s,
                           const llmux_route_conf_t *rt) {
  const route_state_t *st = state_of(r, rt->index);
  switch (s) {
  case LLMUX_STRATEGY_LOWEST_LATENCY: return st->samples ? st->ewma_ms : -1.0;
  case LLMUX_STRATEGY_LEAST_LOADED: return (double)st->inflight;
  case LLMUX_STRATEGY_CHEAPEST:
    return rt->has_price ? rt->price_in + rt->price_out : DBL_MAX;
  default: return 0;
  }
}

static int ensure_mrank(llmux_router_t *r, size_t n) {
  size_t *p;
  if (n <= r->mrank_cap) return 0;
  p = realloc(r->mrank, n * sizeof(*p));
  if (p == NULL) return LLMUX_ENOMEM;
  r->mrank = p;
  r->mrank_cap = n;
  return 0;
}

/* The place of the route's provider in the profile's preferred providers;
 * SIZE_MAX when it is not listed (or there is no profile). */
static size_t preference(const llmux_resolution_t *res, const llmux_route_conf_t *rt) {
  size_t i;
  if (res->profile == NULL) return SIZE_MAX;
  for (i = 0; i < res->profile->nproviders; i++)
    if (res->profile->providers[i] == rt->provider) return i;
  return SIZE_MAX;
}

/* Filters the resolution's routes into r->scratch; returns how many. */
static size_t collect(llmux_router_t *r, const llmux_resolution_t *res,
                      const llmux_route_query_t *q, uint64_t now_ms,
                      const size_t *rank, llmux_route_plan_t *plan) {
  llmux_route_skip_t skip;
  size_t i, n = 0;
  if (++r->gen == 0) {
    memset(r->seen, 0, r->nroutes * sizeof(*r->seen));
    r->gen = 1;
  }
  for (i = 0; i < res->nroutes; i++) {
    const llmux_route_conf_t *rt = res->routes[i];
    assert(rt->index < r->nroutes);
    if (r->seen[rt->index] == r->gen) continue;
    r->seen[rt->index] = r->gen;
    if (filter(r, rt, q, now_ms, &skip)) {
      add_skip(plan, &skip);
      continue;
    }
    r->scratch[n].route = rt;
    r->scratch[n].model_rank = model_rank(res, rank, rt->model);
    r->scratch[n].prefer = preference(res, rt);
    n++;
  }
  return n;
}

int llmux_router_order(llmux_router_t *r, const llmux_resolution_t *res,
                       const llmux_route_query_t *q, uint64_t now_ms,
                       llmux_route_plan_t *plan) {
  static const llmux_route_query_t none;
  const size_t *rank = NULL;
  size_t i, n;
  if (r == NULL || res == NULL || plan == NULL || plan->routes == NULL) return LLMUX_EINVAL;
  if (plan->cap < res->nroutes) return LLMUX_EINVAL;
  if (q == NULL) q = &none;
  plan->nroutes = plan->nskipped = plan->ncooling = 0;
  plan->retry_at_ms = 0;
  plan->strategy = q->override_strategy ? q->strategy
                   : res->profile       ? res->profile->strategy
                                        : LLMUX_STRATEGY_PRIORITY;
  if (plan->strategy == LLMUX_STRATEGY_WEIGHTED && res->nmodels > 0) {
    if (ensure_mrank(r, res->nmodels) != 0) return LLMUX_ENOMEM;
    weighted_ranks(res, q->seed, r->mrank);
    rank = r->mrank;
  }
  n = collect(r, res, q, now_ms, rank, plan);
  qsort(r->scratch, n, sizeof(*r->scratch), cmp_priority);
  for (i = 0; i < n; i++) {
    r->scratch[i].prank = i;
    r->scratch[i].key = strategy_key(r, plan->strategy, r->scratch[i].route);
  }
  qsort(r->scratch, n, sizeof(*r->scratch), cmp_key);
  for (i = 0; i < n; i++) plan->routes[i] = r->scratch[i].route;
  plan->nroutes = n;
  return (int)n;
}

int llmux_route_plan_describe(const llmux_route_plan_t *plan, llmux_buf_t *out) {
  size_t i;
  int rc = llmux_buf_append(out, "", 0);
  for (i = 0; i < plan->nskipped && plan->skipped && rc == 0; i++) {
    const llmux_route_skip_t *s = &plan->skipped[i];
    rc = llmux_buf_printf(out, "%s%s/%s (", i ? ", " : "", s->route->provider->name,
                          s->route->model->id);
    if (rc == 0 && s->reason == LLMUX_SKIP_CAPABILITY && s->missing_caps) {
      rc = llmux_buf_appends(out, "lacks ");
      if (rc == 0) rc = llmux_caps_format(s->missing_caps, out);
    } else if (rc == 0 && s->reason == LLMUX_SKIP_CAPABILITY) {
      rc = llmux_buf_appends(out, "embeddings model");
    } else if (rc == 0) {
      rc = llmux_buf_appends(out, llmux_skip_reason_str(s->reason));
    }
    if (rc == 0) rc = llmux_buf_appends(out, ")");
  }
  return rc;
}

/* ---- Retry helpers ----------------------------------------------------- */

uint64_t llmux_backoff_ms(unsigned attempt, uint64_t base_ms, uint64_t cap_ms, uint64_t rnd) {
  uint64_t ceiling = base_ms < cap_ms ? base_ms : cap_ms;
  unsigned i;
  for (i = 0; i < attempt && ceiling > 0 && ceiling < cap_ms; i++)
    ceiling = ceiling > cap_ms / 2 ? cap_ms : ceiling * 2;
  if (ceiling == UINT64_MAX) return rnd;
  return rnd % (ceiling + 1);
}
