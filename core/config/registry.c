/* Model registry: one case-insensitive hash table of every name a client
 * may send, built once per snapshot, and the precomputed route lists that
 * resolution hands out without allocating. */
#include "config/registry.h"

#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/util.h"

typedef struct name_entry_s name_entry_t;

struct name_entry_s {
  const char *name;               /* NULL: empty slot; spelled as in config */
  size_t len;
  uint32_t hash;
  llmux_name_kind_t kind;         /* built-in kind, NONE if only a user alias */
  const void *ptr;                /* model, generic, profile or agent */
  const char *file;               /* where the built-in name was defined */
  int line;
  const llmux_alias_conf_t *user; /* a user alias of this name: wins */
  const name_entry_t *user_target;
};

struct llmux__registry_s {
  name_entry_t *slots;
  size_t mask;
  const char **names;             /* distinct names in config order */
  size_t nnames;
  llmux_model_conf_t **singles;   /* singles[i] = cfg->models[i]: the model
                                     list of a resolution to one model */
};

typedef struct build_s {
  llmux_config_t *cfg;
  struct llmux__registry_s *reg;
  llmux_diag_t *diag;
} build_t;

/* ---- Hash table -------------------------------------------------------- */

static uint32_t hash_name(const char *s, size_t len) {
  uint32_t h = 2166136261u;
  size_t i;
  for (i = 0; i < len; i++) {
    h ^= (uint32_t)tolower((unsigned char)s[i]);
    h *= 16777619u;
  }
  return h;
}

static name_entry_t *slot_for(const struct llmux__registry_s *reg, const char *name,
                              size_t len, uint32_t h) {
  size_t i = h & reg->mask;
  for (;;) {
    name_entry_t *e = &reg->slots[i];
    if (e->name == NULL) return e;
    if (e->hash == h && e->len == len && strncasecmp(e->name, name, len) == 0) return e;
    i = (i + 1) & reg->mask;
  }
}

static const name_entry_t *lookup(const struct llmux__registry_s *reg, const char *name,
                                  size_t len) {
  const name_entry_t *e;
  if (reg == NULL || reg->slots == NULL) return NULL;
  e = slot_for(reg, name, len, hash_name(name, len));
  return e->name ? e : NULL;
}

static const name_entry_t *lookup_s(const struct llmux__registry_s *reg, const char *s) {
  return lookup(reg, s, strlen(s));
}

/* The entry for `name`, created empty if needed. */
static name_entry_t *intern(build_t *b, const char *name) {
  size_t len = strlen(name);
  uint32_t h = hash_name(name, len);
  name_entry_t *e = slot_for(b->reg, name, len, h);
  if (e->name == NULL) {
    e->name = name;
    e->len = len;
    e->hash = h;
    b->reg->names[b->reg->nnames++] = name;
  }
  return e;
}

static const char *kind_noun(llmux_name_kind_t k) {
  switch (k) {
  case LLMUX_NAME_USER_ALIAS: return "user alias";
  case LLMUX_NAME_ALIAS: return "alias";
  case LLMUX_NAME_CANONICAL: return "model";
  case LLMUX_NAME_GENERIC: return "generic";
  case LLMUX_NAME_PROFILE: return "profile";
  case LLMUX_NAME_AGENT: return "agent";
  case LLMUX_NAME_PASSTHROUGH: return "passthrough";
  default: return "name";
  }
}

const char *llmux_name_kind_str(llmux_name_kind_t k) {
  switch (k) {
  case LLMUX_NAME_USER_ALIAS: return "user_alias";
  case LLMUX_NAME_ALIAS: return "alias";
  case LLMUX_NAME_CANONICAL: return "canonical";
  case LLMUX_NAME_GENERIC: return "generic";
  case LLMUX_NAME_PROFILE: return "profile";
  case LLMUX_NAME_AGENT: return "agent";
  case LLMUX_NAME_PASSTHROUGH: return "passthrough";
  default: return "none";
  }
}

/* ---- Suggestions ------------------------------------------------------- */

/* `keep` (may be NULL) narrows the candidates: a tenant is offered only
 * names it may use. It is asked only about names close enough to offer. */
static size_t suggest_from(const char *const *names, size_t n, const char *name,
                           int (*keep)(void *arg, const char *name), void *arg,
                           const char **out, size_t max) {
  unsigned dist[LLMUX_RESOLVE_MAX_SUGGEST + 1], cap, d;
  size_t i, j, got = 0;
  if (max > LLMUX_RESOLVE_MAX_SUGGEST) max = LLMUX_RESOLVE_MAX_SUGGEST;
  /* Far-off names are noise: allow about one typo per three characters. */
  cap = (unsigned)strlen(name) / 3 + 1;
  if (cap < 2) cap = 2;
  if (cap > 8) cap = 8;
  for (i = 0; i < n; i++) {
    d = llmux_edit_distance(name, names[i], cap + 1);
    if (d > cap || d == 0) continue;
    if (keep != NULL && !keep(arg, names[i])) continue;
    /* Insert in order of distance; equal distances keep config order. */
    for (j = got; j > 0 && dist[j - 1] > d; j--) {
      if (j < max) { dist[j] = dist[j - 1]; out[j] = out[j - 1]; }
    }
    if (j < max) {
      dist[j] = d;
      out[j] = names[i];
      if (got < max) got++;
    }
  }
  return got;
}

size_t llmux_registry_suggest(const llmux_config_t *cfg, const char *name,
                              const char **out, size_t max) {
  return llmux_registry_suggest_if(cfg, name, NULL, NULL, out, max);
}

size_t llmux_registry_suggest_if(const llmux_config_t *cfg, const char *name,
                                 int (*keep)(void *arg, const char *name), void *arg,
                                 const char **out, size_t max) {
  const struct llmux__registry_s *reg = cfg->registry;
  if (reg == NULL) return 0;
  return suggest_from(reg->names, reg->nnames, name, keep, arg, out, max);
}

/* Bits of llmux_name_kind_t for the names a suggestion may come from. */
#define KIND_BIT(k) (1u << (k))
#define ANY_NAME (~0u)
#define MODEL_NAMES (KIND_BIT(LLMUX_NAME_CANONICAL) | KIND_BIT(LLMUX_NAME_ALIAS))

/* "; did you mean 'x'?" or "", from the names of the kinds in `mask`. */
static const char *did_you_mean(build_t *b, const char *name, unsigned mask, char *buf,
                                size_t size) {
  const char **cands = llmux_xcalloc(b->reg->nnames + 1, sizeof(*cands));
  const char *best[1];
  size_t i, n = 0;
  for (i = 0; i < b->reg->nnames; i++) {
    const name_entry_t *e = lookup_s(b->reg, b->reg->names[i]);
    if ((mask & KIND_BIT(e->kind) && e->kind != LLMUX_NAME_NONE) ||
        (mask & KIND_BIT(LLMUX_NAME_USER_ALIAS) && e->user))
      cands[n++] = e->name;
  }
  buf[0] = '\0';
  if (suggest_from(cands, n, name, NULL, NULL, best, 1) == 1)
    snprintf(buf, size, "; did you mean '%s'?", best[0]);
  free(cands);
  return buf;
}

/* ---- Building: names --------------------------------------------------- */

static void add_builtin(build_t *b, const char *name, llmux_name_kind_t kind,
                        const void *ptr, const char *file, int line) {
  name_entry_t *e = intern(b, name);
  if (e->kind != LLMUX_NAME_NONE) {
    if (kind == LLMUX_NAME_CANONICAL && e->kind == LLMUX_NAME_CANONICAL)
      llmux_diag_add(b->diag, file, line, LLMUX_DIAG_ERROR,
                     "duplicate model '%s' (first defined at %s:%d)", name, e->file,
                     e->line);
    else
      llmux_diag_add(b->diag, file, line, LLMUX_DIAG_ERROR,
                     "%s '%s' has the same name as %s '%s' defined at %s:%d",
                     kind_noun(kind), name, kind_noun(e->kind), e->name, e->file, e->line);
    return;
  }
  e->kind = kind;
  e->ptr = ptr;
  e->file = file;
  e->line = line;
}

static void add_model_alias(build_t *b, const llmux_model_conf_t *m, size_t i) {
  const char *alias = m->aliases.items[i];
  int line = m->aliases.lines[i];
  name_entry_t *e = intern(b, alias);
  const llmux_model_conf_t *other = e->ptr;
  if (e->kind == LLMUX_NAME_NONE) {
    e->kind = LLMUX_NAME_ALIAS;
    e->ptr = m;
    e->file = m->file;
    e->line = line;
  } else if (e->kind == LLMUX_NAME_CANONICAL && other == m) {
    llmux_diag_add(b->diag, m->file, line, LLMUX_DIAG_WARNING,
                   "model '%s' lists its own id as an alias", m->id);
  } else if (e->kind == LLMUX_NAME_CANONICAL) {
    llmux_diag_add(b->diag, m->file, line, LLMUX_DIAG_ERROR,
                   "alias '%s' of model '%s' is the id of model '%s' defined at %s:%d",
                   alias, m->id, other->id, e->file, e->line);
  } else if (other == m) {
    llmux_diag_add(b->diag, m->file, line, LLMUX_DIAG_WARNING,
                   "alias '%s' is listed twice for model '%s' (first at %s:%d)", alias,
                   m->id, e->file, e->line);
  } else {
    llmux_diag_add(b->diag, m->file, line, LLMUX_DIAG_ERROR,
                   "duplicate alias '%s': for model '%s' here and for model '%s' at %s:%d",
                   alias, m->id, other->id, e->file, e->line);
  }
}

static void add_user_alias(build_t *b, const llmux_alias_conf_t *a) {
  name_entry_t *e = intern(b, a->name);
  if (e->user != NULL) {
    llmux_diag_add(b->diag, a->file, a->line, LLMUX_DIAG_ERROR,
                   "duplicate alias '%s' (first defined at %s:%d)", a->name, e->user->file,
                   e->user->line);
    return;
  }
  e->user = a;
}

static size_t count_names(const llmux_config_t *cfg) {
  size_t n = cfg->nmodels + cfg->ngenerics + cfg->nprofiles + cfg->nagents + cfg->naliases;
  size_t i;
  for (i = 0; i < cfg->nmodels; i++) n += cfg->models[i]->aliases.len;
  return n;
}

static void build_names(build_t *b) {
  llmux_config_t *cfg = b->cfg;
  size_t i, j, n = count_names(cfg), cap = 16;
  while (cap < n * 2) cap *= 2;
  b->reg->slots = llmux_xcalloc(cap, sizeof(*b->reg->slots));
  b->reg->mask = cap - 1;
  b->reg->names = llmux_xcalloc(n + 1, sizeof(*b->reg->names));
  b->reg->singles = llmux_xcalloc(cfg->nmodels + 1, sizeof(*b->reg->singles));

  for (i = 0; i < cfg->nmodels; i++) {
    llmux_model_conf_t *m = cfg->models[i];
    m->index = i;
    b->reg->singles[i] = m;
    add_builtin(b, m->id, LLMUX_NAME_CANONICAL, m, m->file, m->line);
  }
  for (i = 0; i < cfg->nmodels; i++) {
    for (j = 0; j < cfg->models[i]->aliases.len; j++) add_model_alias(b, cfg->models[i], j);
  }
  for (i = 0; i < cfg->ngenerics; i++) {
    llmux_generic_conf_t *g = cfg->generics[i];
    g->index = i;
    add_builtin(b, g->name, LLMUX_NAME_GENERIC, g, g->file, g->line);
  }
  for (i = 0; i < cfg->nprofiles; i++) {
    llmux_profile_conf_t *p = cfg->profiles[i];
    p->index = i;
    add_builtin(b, p->name, LLMUX_NAME_PROFILE, p, p->file, p->line);
  }
  for (i = 0; i < cfg->nagents; i++) {
    llmux_agent_conf_t *a = cfg->agents[i];
    a->index = i;
    add_builtin(b, a->name, LLMUX_NAME_AGENT, a, a->file, a->line);
  }
  for (i = 0; i < cfg->naliases; i++) add_user_alias(b, cfg->aliases[i]);
}

/* ---- Building: providers and routes ------------------------------------ */

static void check_providers(build_t *b) {
  llmux_config_t *cfg = b->cfg;
  size_t i, j;
  for (i = 0; i < cfg->nproviders; i++) {
    for (j = 0; j < i; j++) {
      if (strcasecmp(cfg->providers[i]->name, cfg->providers[j]->name) != 0) continue;
      llmux_diag_add(b->diag, cfg->providers[i]->file, cfg->providers[i]->line,
                     LLMUX_DIAG_ERROR, "duplicate provider '%s' (first defined at %s:%d)",
                     cfg->providers[i]->name, cfg->providers[j]->file,
                     cfg->providers[j]->line);
      break;
    }
  }
}

static void closest_provider(const llmux_config_t *cfg, const char *name, char *buf,
                             size_t size) {
  const char *names[64];
  const char *best[1];
  size_t i, n = 0;
  for (i = 0; i < cfg->nproviders && n < LLMUX_COUNTOF(names); i++)
    names[n++] = cfg->providers[i]->name;
  buf[0] = '\0';
  if (suggest_from(names, n, name, NULL, NULL, best, 1) == 1)
    snprintf(buf, size, "; did you mean '%s'?", best[0]);
}

static void effective_limits(llmux_route_conf_t *r) {
  const llmux_limits_t *p = &r->provider->limits;
  unsigned set = r->limits.set;
  if (!(set & LLMUX_LIMIT_RPM)) r->limits.requests_per_minute = p->requests_per_minute;
  if (!(set & LLMUX_LIMIT_RPD)) r->limits.requests_per_day = p->requests_per_day;
  if (!(set & LLMUX_LIMIT_TPM)) r->limits.tokens_per_minute = p->tokens_per_minute;
  if (!(set & LLMUX_LIMIT_TPD)) r->limits.tokens_per_day = p->tokens_per_day;
}

/* A route's own price_in/price_out override the model's, key by key, so
 * `cheapest` can choose between the providers of one model. */
static void effective_prices(llmux_route_conf_t *r) {
  const llmux_model_conf_t *m = r->model;
  if (!(r->price_set & LLMUX_ROUTE_PRICE_IN)) r->price_in = m->price_in;
  if (!(r->price_set & LLMUX_ROUTE_PRICE_OUT)) r->price_out = m->price_out;
  r->has_price = r->price_set != 0 || m->has_price;
}

static int link_route(build_t *b, llmux_route_conf_t *r) {
  const name_entry_t *e = lookup_s(b->reg, r->model_name);
  char hint[160];
  int ok = 1;
  r->provider = (llmux_provider_conf_t *)llmux_config_find_provider(b->cfg, r->provider_name);
  if (r->provider == NULL) {
    closest_provider(b->cfg, r->provider_name, hint, sizeof(hint));
    llmux_diag_add(b->diag, r->file, r->line, LLMUX_DIAG_ERROR,
                   "route names unknown provider '%s'%s", r->provider_name, hint);
    ok = 0;
  }
  if (e != NULL && e->kind == LLMUX_NAME_CANONICAL) {
    r->model = (llmux_model_conf_t *)e->ptr;
  } else if (e != NULL && e->kind == LLMUX_NAME_ALIAS) {
    llmux_diag_add(b->diag, r->file, r->line, LLMUX_DIAG_ERROR,
                   "route names '%s', an alias of model '%s': use the canonical id",
                   r->model_name, ((const llmux_model_conf_t *)e->ptr)->id);
    ok = 0;
  } else {
    llmux_diag_add(b->diag, r->file, r->line, LLMUX_DIAG_ERROR,
                   "route names unknown model '%s'%s", r->model_name,
                   did_you_mean(b, r->model_name, KIND_BIT(LLMUX_NAME_CANONICAL), hint,
                                sizeof(hint)));
    ok = 0;
  }
  if (ok) effective_limits(r);
  if (ok) effective_prices(r);
  return ok;
}

static int route_cmp(const void *pa, const void *pb) {
  const llmux_route_conf_t *a = *(llmux_route_conf_t *const *)pa;
  const llmux_route_conf_t *b = *(llmux_route_conf_t *const *)pb;
  if (a->provider->priority != b->provider->priority)
    return a->provider->priority < b->provider->priority ? -1 : 1;
  return a->index < b->index ? -1 : a->index > b->index;
}

static void build_routes(build_t *b) {
  llmux_config_t *cfg = b->cfg;
  size_t i, j;
  int *ok = llmux_xcalloc(cfg->nroutes + 1, sizeof(*ok));
  for (i = 0; i < cfg->nroutes; i++) {
    llmux_route_conf_t *r = cfg->routes[i];
    r->index = i;
    ok[i] = link_route(b, r);
    if (ok[i]) r->model->nroutes++;
  }
  for (i = 0; i < cfg->nmodels; i++) {
    llmux_model_conf_t *m = cfg->models[i];
    m->routes = llmux__arena_alloc(cfg->arena, (m->nroutes + 1) * sizeof(*m->routes));
    m->nroutes = 0;
  }
  for (i = 0; i < cfg->nroutes; i++) {
    llmux_route_conf_t *r = cfg->routes[i];
    llmux_model_conf_t *m = r->model;
    if (!ok[i]) continue;
    for (j = 0; j < m->nroutes; j++) {
      if (m->routes[j]->provider != r->provider) continue;
      llmux_diag_add(b->diag, r->file, r->line, LLMUX_DIAG_ERROR,
                     "duplicate route for provider '%s' and model '%s' (first at %s:%d)",
                     r->provider->name, m->id, m->routes[j]->file, m->routes[j]->line);
      break;
    }
    if (j == m->nroutes) m->routes[m->nroutes++] = r;
  }
  for (i = 0; i < cfg->nmodels; i++) {
    llmux_model_conf_t *m = cfg->models[i];
    if (m->nroutes > 1) qsort(m->routes, m->nroutes, sizeof(*m->routes), route_cmp);
  }
  free(ok);
}

/* ---- Building: passthrough routes -------------------------------------- */

/* One route per passthrough provider, after the configured ones: model
 * NAME, "/" and "*" (in no list and under no name), id "*", the
 * provider's limits.
 * Requests copy it (llmux_resolve_passthrough); its index gives them one
 * router state and llmux_rl_configure one rate-limit window. */
static void add_passthrough_routes(build_t *b) {
  llmux_config_t *cfg = b->cfg;
  size_t i, n = 0;
  for (i = 0; i < cfg->nproviders; i++) n += cfg->providers[i]->passthrough != 0;
  if (n == 0) return;
  cfg->routes = realloc(cfg->routes, (cfg->nroutes + n) * sizeof(*cfg->routes));
  if (cfg->routes == NULL) abort();
  for (i = 0; i < cfg->nproviders; i++) {
    llmux_provider_conf_t *p = cfg->providers[i];
    llmux_model_conf_t *m;
    llmux_route_conf_t *r;
    size_t len = strlen(p->name);
    char *id;
    if (!p->passthrough) continue;
    m = llmux__arena_alloc(cfg->arena, sizeof(*m));
    r = llmux__arena_alloc(cfg->arena, sizeof(*r));
    memset(m, 0, sizeof(*m));
    memset(r, 0, sizeof(*r));
    id = llmux__arena_alloc(cfg->arena, len + 3);
    memcpy(id, p->name, len);
    memcpy(id + len, "/*", 3);
    m->id = id;
    m->file = p->file;
    m->line = p->line;
    m->index = (size_t)-1; /* not in cfg->models */
    m->routes = llmux__arena_alloc(cfg->arena, sizeof(*m->routes));
    m->routes[0] = r;
    m->nroutes = 1;
    r->provider_name = p->name;
    r->model_name = m->id;
    r->id = "*";
    r->file = p->file;
    r->line = p->line;
    r->provider = p;
    r->model = m;
    r->passthrough = 1;
    r->index = cfg->nroutes;
    effective_limits(r);
    cfg->routes[cfg->nroutes++] = r;
    p->passthrough_route = r;
  }
}

/* ---- Building: expansions ---------------------------------------------- */

/* Concatenates the routes of `models`, model by model. */
static llmux_route_conf_t **concat_routes(build_t *b, llmux_model_conf_t **models,
                                          size_t n, size_t *nroutes) {
  llmux_route_conf_t **out;
  size_t i, j, total = 0, k = 0;
  for (i = 0; i < n; i++) total += models[i]->nroutes;
  out = llmux__arena_alloc(b->cfg->arena, (total + 1) * sizeof(*out));
  for (i = 0; i < n; i++) {
    for (j = 0; j < models[i]->nroutes; j++) out[k++] = models[i]->routes[j];
  }
  *nroutes = total;
  return out;
}

static void expand_generic(build_t *b, llmux_generic_conf_t *g) {
  llmux_config_t *cfg = b->cfg;
  int hi = g->tier ? g->tier : (g->max_tier ? g->max_tier : 5);
  int lo = g->tier ? g->tier : g->min_tier, t;
  size_t i;
  g->models = llmux__arena_alloc(cfg->arena, (cfg->nmodels + 1) * sizeof(*g->models));
  if (lo < 1) lo = 1; /* a broken generic (already reported) expands to nothing */
  for (t = hi; t >= lo; t--) {
    for (i = 0; i < cfg->nmodels; i++) {
      /* Tiers rank chat models: embedding models never join a generic. */
      if (cfg->models[i]->tier == t && !(cfg->models[i]->capabilities & LLMUX_CAP_EMBEDDINGS))
        g->models[g->nmodels++] = cfg->models[i];
    }
  }
  g->routes = concat_routes(b, g->models, g->nmodels, &g->nroutes);
  if (g->nmodels == 0 && (g->tier || g->min_tier))
    llmux_diag_add(b->diag, g->file, g->line, LLMUX_DIAG_WARNING,
                   "generic '%s' matches no model", g->name);
}

/* The provider `name` names, or NULL after an error at `line` (with the
 * closest provider as a hint). */
static llmux_provider_conf_t *profile_provider(build_t *b, const llmux_profile_conf_t *p,
                                               const char *name, int line) {
  llmux_provider_conf_t *pv;
  char hint[160];
  pv = (llmux_provider_conf_t *)llmux_config_find_provider(b->cfg, name);
  if (pv != NULL) return pv;
  closest_provider(b->cfg, name, hint, sizeof(hint));
  llmux_diag_add(b->diag, p->file, line, LLMUX_DIAG_ERROR,
                 "profile '%s' names unknown provider '%s'%s", p->name, name, hint);
  return NULL;
}

/* Member i of the profile, `MODEL` or `MODEL@PROVIDER`: appends the model
 * (and its pin) or reports why not. A name that resolves whole is never
 * split, so a model id holding '@' still works. */
static void add_profile_member(build_t *b, llmux_profile_conf_t *p, size_t i) {
  const char *name = p->model_names.items[i], *at = strrchr(name, '@');
  int line = p->model_names.lines[i];
  size_t len = strlen(name), j;
  llmux_provider_conf_t *pin = NULL;
  const name_entry_t *e;
  char hint[160], part[256];
  if (at != NULL && lookup_s(b->reg, name) == NULL) {
    len = (size_t)(at - name);
    if ((pin = profile_provider(b, p, at + 1, line)) == NULL) return;
  }
  snprintf(part, sizeof part, "%.*s", (int)len, name);
  e = lookup(b->reg, name, len);
  if (e && (e->kind == LLMUX_NAME_CANONICAL || e->kind == LLMUX_NAME_ALIAS)) {
    llmux_model_conf_t *m = (llmux_model_conf_t *)e->ptr;
    for (j = 0; pin && j < m->nroutes && m->routes[j]->provider != pin; j++) {}
    if (pin && j == m->nroutes) {
      llmux_diag_add(b->diag, p->file, line, LLMUX_DIAG_ERROR,
                     "profile '%s' pins model '%s' to provider '%s', which has no route "
                     "for it: add [route %s %s]", p->name, m->id, pin->name, pin->name, m->id);
      return;
    }
    p->pins[p->nmodels] = pin;
    p->models[p->nmodels++] = m;
  } else if (e && e->kind != LLMUX_NAME_NONE) {
    llmux_diag_add(b->diag, p->file, line, LLMUX_DIAG_ERROR,
                   "profile '%s' lists '%s', which is a %s, not a model", p->name, part,
                   kind_noun(e->kind));
  } else {
    llmux_diag_add(b->diag, p->file, line, LLMUX_DIAG_ERROR,
                   "profile '%s' names unknown model '%s'%s", p->name, part,
                   did_you_mean(b, part, MODEL_NAMES, hint, sizeof(hint)));
  }
}

/* The members' routes, member by member; a pinned member brings only its
 * pinned provider's route. */
static void profile_routes(build_t *b, llmux_profile_conf_t *p) {
  size_t i, j, total = 0;
  for (i = 0; i < p->nmodels; i++) total += p->models[i]->nroutes;
  p->routes = llmux__arena_alloc(b->cfg->arena, (total + 1) * sizeof(*p->routes));
  p->nroutes = 0;
  for (i = 0; i < p->nmodels; i++) {
    for (j = 0; j < p->models[i]->nroutes; j++) {
      llmux_route_conf_t *r = p->models[i]->routes[j];
      if (p->pins[i] == NULL || r->provider == p->pins[i]) p->routes[p->nroutes++] = r;
    }
  }
}

static void expand_profile(build_t *b, llmux_profile_conf_t *p) {
  llmux_config_t *cfg = b->cfg;
  size_t i, n = p->model_names.len;
  p->models = llmux__arena_alloc(cfg->arena, (n + 1) * sizeof(*p->models));
  p->pins = llmux__arena_alloc(cfg->arena, (n + 1) * sizeof(*p->pins));
  for (i = 0; i < n; i++) add_profile_member(b, p, i);
  profile_routes(b, p);
  n = p->provider_names.len;
  p->providers = llmux__arena_alloc(cfg->arena, (n + 1) * sizeof(*p->providers));
  for (i = 0; i < n; i++) {
    llmux_provider_conf_t *pv =
        profile_provider(b, p, p->provider_names.items[i], p->provider_names.lines[i]);
    if (pv != NULL) p->providers[p->nproviders++] = pv;
  }
}

/* `escalate = PROFILE`: the profile, or an error at its line. */
static void link_escalation(build_t *b, llmux_profile_conf_t *p) {
  const name_entry_t *e;
  char hint[160];
  if (p->escalate_name == NULL) return;
  e = lookup_s(b->reg, p->escalate_name);
  if (e && e->kind == LLMUX_NAME_PROFILE) {
    p->escalate = (llmux_profile_conf_t *)e->ptr;
    return;
  }
  llmux_diag_add(b->diag, p->file, p->escalate_line, LLMUX_DIAG_ERROR,
                 "profile '%s' escalates to unknown profile '%s'%s", p->name, p->escalate_name,
                 did_you_mean(b, p->escalate_name, KIND_BIT(LLMUX_NAME_PROFILE), hint,
                              sizeof(hint)));
}

/* `fallback_local = PROFILE`: another profile, or an error at its line. */
static void link_fallback_local(build_t *b, llmux_profile_conf_t *p) {
  const name_entry_t *e;
  char hint[160];
  if (p->fallback_local_name == NULL) return;
  e = lookup_s(b->reg, p->fallback_local_name);
  if (e && e->kind == LLMUX_NAME_PROFILE && e->ptr != (void *)p) {
    p->fallback_local = (llmux_profile_conf_t *)e->ptr;
    return;
  }
  if (e && e->ptr == (void *)p)
    llmux_diag_add(b->diag, p->file, p->fallback_local_line, LLMUX_DIAG_ERROR,
                   "profile '%s' falls back to itself", p->name);
  else
    llmux_diag_add(b->diag, p->file, p->fallback_local_line, LLMUX_DIAG_ERROR,
                   "profile '%s' falls back to unknown profile '%s'%s", p->name,
                   p->fallback_local_name,
                   did_you_mean(b, p->fallback_local_name, KIND_BIT(LLMUX_NAME_PROFILE), hint,
                                sizeof(hint)));
}

/* Escalation must end: a chain that comes back to where it began is an
 * error at the line of its first `escalate`. */
static void check_escalations(build_t *b) {
  llmux_config_t *cfg = b->cfg;
  size_t i, steps;
  for (i = 0; i < cfg->nprofiles; i++) {
    llmux_profile_conf_t *p = cfg->profiles[i], *q = p->escalate;
    for (steps = 0; q != NULL && q != p && steps < cfg->nprofiles; steps++) q = q->escalate;
    if (q == p)
      llmux_diag_add(b->diag, p->file, p->escalate_line, LLMUX_DIAG_ERROR,
                     "profile '%s' escalates in a circle (back to itself)", p->name);
  }
}

static void link_agent(build_t *b, llmux_agent_conf_t *a) {
  const name_entry_t *e;
  char hint[160];
  if (a->profile_name == NULL) return; /* reported by the loader */
  e = lookup_s(b->reg, a->profile_name);
  if (e && e->kind == LLMUX_NAME_PROFILE) {
    a->profile = (llmux_profile_conf_t *)e->ptr;
  } else if (e && e->kind != LLMUX_NAME_NONE) {
    llmux_diag_add(b->diag, a->file, a->profile_line, LLMUX_DIAG_ERROR,
                   "agent '%s' names '%s', which is a %s, not a profile", a->name,
                   a->profile_name, kind_noun(e->kind));
  } else {
    llmux_diag_add(b->diag, a->file, a->profile_line, LLMUX_DIAG_ERROR,
                   "agent '%s' names unknown profile '%s'%s", a->name, a->profile_name,
                   did_you_mean(b, a->profile_name, KIND_BIT(LLMUX_NAME_PROFILE), hint,
                                sizeof(hint)));
  }
}

/* ---- Building: user aliases -------------------------------------------- */

static void link_user_alias(build_t *b, const llmux_alias_conf_t *a) {
  name_entry_t *self = (name_entry_t *)lookup_s(b->reg, a->name);
  const name_entry_t *t = lookup_s(b->reg, a->target);
  char hint[160];
  if (self->user != a) return; /* a duplicate, already reported */
  if (t == NULL) {
    llmux_diag_add(b->diag, a->file, a->line, LLMUX_DIAG_ERROR,
                   "alias '%s' points to unknown name '%s'%s", a->name, a->target,
                   did_you_mean(b, a->target, ANY_NAME, hint, sizeof(hint)));
    return;
  }
  self->user_target = t;
}

static void report_cycle(build_t *b, const llmux_alias_conf_t *start, char *reported) {
  const llmux_alias_conf_t *a = start, *first = start;
  llmux_buf_t msg = {0};
  /* Report once, at the member defined first. */
  do {
    if (a->index < first->index) first = a;
    a = lookup_s(b->reg, a->name)->user_target->user;
  } while (a != start);
  if (reported[first->index]) return;
  a = first;
  do {
    reported[a->index] = 1;
    llmux_buf_printf(&msg, "%s -> ", a->name);
    a = lookup_s(b->reg, a->name)->user_target->user;
  } while (a != first);
  llmux_buf_printf(&msg, "%s", first->name);
  llmux_diag_add(b->diag, first->file, first->line, LLMUX_DIAG_ERROR, "alias cycle: %s",
                 msg.base);
  llmux_buf_free(&msg);
}

/* Walks each user alias's chain; a chain that meets itself is a cycle. */
static void check_alias_chains(build_t *b) {
  llmux_config_t *cfg = b->cfg;
  size_t n = cfg->naliases, i, steps;
  size_t *walk = llmux_xcalloc(n + 1, sizeof(*walk));
  char *reported = llmux_xcalloc(n + 1, 1);
  for (i = 0; i < n; i++) {
    const llmux_alias_conf_t *a = cfg->aliases[i];
    const name_entry_t *e = lookup_s(b->reg, a->name);
    if (e->user != a) continue;
    for (steps = 0; e && e->user; steps++) {
      if (walk[e->user->index] == i + 1) {
        report_cycle(b, e->user, reported);
        break;
      }
      walk[e->user->index] = i + 1;
      if (steps == LLMUX_ALIAS_MAX_DEPTH) {
        llmux_diag_add(b->diag, a->file, a->line, LLMUX_DIAG_ERROR,
                       "alias '%s' goes through more than %d aliases", a->name,
                       LLMUX_ALIAS_MAX_DEPTH);
        break;
      }
      e = e->user_target;
    }
  }
  free(walk);
  free(reported);
}

int llmux__registry_build(llmux_config_t *cfg, llmux_diag_t *diag) {
  build_t b;
  size_t i, errors = diag->errors;
  b.cfg = cfg;
  b.diag = diag;
  b.reg = llmux_xcalloc(1, sizeof(*b.reg));
  cfg->registry = b.reg;

  build_names(&b);
  check_providers(&b);
  build_routes(&b);
  add_passthrough_routes(&b);
  for (i = 0; i < cfg->ngenerics; i++) expand_generic(&b, cfg->generics[i]);
  for (i = 0; i < cfg->nprofiles; i++) expand_profile(&b, cfg->profiles[i]);
  for (i = 0; i < cfg->nprofiles; i++) link_escalation(&b, cfg->profiles[i]);
  for (i = 0; i < cfg->nprofiles; i++) link_fallback_local(&b, cfg->profiles[i]);
  check_escalations(&b);
  for (i = 0; i < cfg->nagents; i++) link_agent(&b, cfg->agents[i]);
  for (i = 0; i < cfg->naliases; i++) link_user_alias(&b, cfg->aliases[i]);
  check_alias_chains(&b);
  for (i = 0; i < cfg->nmodels; i++) {
    const llmux_model_conf_t *m = cfg->models[i];
    if (m->nroutes == 0)
      llmux_diag_add(diag, m->file, m->line, LLMUX_DIAG_WARNING,
                     "model '%s' has no route: add [route PROVIDER %s]", m->id, m->id);
  }
  return diag->errors > errors ? LLMUX_ECONFIG : 0;
}

void llmux__registry_free(struct llmux__registry_s *r) {
  if (r == NULL) return;
  free(r->slots);
  free(r->names);
  free(r->singles);
  free(r);
}

/* ---- Resolution -------------------------------------------------------- */

static void push(llmux_resolution_t *res, llmux_name_kind_t kind, const char *name) {
  if (res->nchain < LLMUX_RESOLVE_MAX_CHAIN) {
    res->chain[res->nchain].kind = kind;
    res->chain[res->nchain].name = name;
    res->nchain++;
  }
}

static void set_model(const llmux_config_t *cfg, llmux_resolution_t *res,
                      const llmux_model_conf_t *m) {
  res->target_kind = LLMUX_NAME_CANONICAL;
  res->target = m->id;
  res->model = m;
  res->models = &cfg->registry->singles[m->index];
  res->nmodels = 1;
  res->routes = m->routes;
  res->nroutes = m->nroutes;
}

/* The profile a request for p gets: p, or its fallback_local while no route
 * of p is on an enabled provider and no provider that takes a key is
 * enabled either (the zero-key first run: only Ollama and the like answer).
 * With some key set, p's 503 that names the missing one is the better
 * answer. One hop, decided per resolution, so `llmux chat --provider`
 * (which disables the others) is seen. */
static const llmux_profile_conf_t *offline_fallback(const llmux_config_t *cfg,
                                                    const llmux_profile_conf_t *p) {
  size_t i;
  if (p->fallback_local == NULL) return p;
  for (i = 0; i < p->nroutes; i++)
    if (p->routes[i]->provider->enabled) return p;
  for (i = 0; i < cfg->nproviders; i++)
    if (cfg->providers[i]->enabled && cfg->providers[i]->api_key_env != NULL) return p;
  return p->fallback_local;
}

static void set_profile(const llmux_config_t *cfg, llmux_resolution_t *res,
                        const llmux_profile_conf_t *p) {
  const llmux_profile_conf_t *local = offline_fallback(cfg, p);
  if (local != p) push(res, LLMUX_NAME_PROFILE, p->name); /* the chain shows both */
  p = local;
  push(res, LLMUX_NAME_PROFILE, p->name);
  res->target_kind = LLMUX_NAME_PROFILE;
  res->target = p->name;
  res->profile = p;
  res->models = p->models;
  res->nmodels = p->nmodels;
  res->routes = p->routes;
  res->nroutes = p->nroutes;
}

static void not_found(const llmux_config_t *cfg, const char *name, size_t len,
                      llmux_resolution_t *res) {
  char buf[128];
  if (len >= sizeof(buf)) len = sizeof(buf) - 1;
  memcpy(buf, name, len);
  buf[len] = '\0';
  res->nsuggestions = llmux_registry_suggest(cfg, buf, res->suggestions,
                                             LLMUX_RESOLVE_MAX_SUGGEST);
}

int llmux_resolven(const llmux_config_t *cfg, const char *name, size_t len,
                   llmux_resolution_t *res) {
  const name_entry_t *e = lookup(cfg->registry, name, len);
  const llmux_generic_conf_t *g;
  memset(res, 0, sizeof(*res));
  if (e == NULL) {
    not_found(cfg, name, len, res);
    return LLMUX_ENOTFOUND;
  }
  res->kind = e->user ? LLMUX_NAME_USER_ALIAS : e->kind;
  while (e->user && e->user_target && res->nchain < LLMUX_ALIAS_MAX_DEPTH + 1) {
    push(res, LLMUX_NAME_USER_ALIAS, e->user->name);
    e = e->user_target;
  }
  switch (e->kind) {
  case LLMUX_NAME_ALIAS:
    push(res, LLMUX_NAME_ALIAS, e->name);
    /* fall through */
  case LLMUX_NAME_CANONICAL:
    push(res, LLMUX_NAME_CANONICAL, ((const llmux_model_conf_t *)e->ptr)->id);
    set_model(cfg, res, e->ptr);
    return 0;
  case LLMUX_NAME_GENERIC:
    g = e->ptr;
    push(res, LLMUX_NAME_GENERIC, g->name);
    res->target_kind = LLMUX_NAME_GENERIC;
    res->target = g->name;
    res->generic = g;
    res->models = g->models;
    res->nmodels = g->nmodels;
    res->routes = g->routes;
    res->nroutes = g->nroutes;
    return 0;
  case LLMUX_NAME_AGENT:
    res->agent = e->ptr;
    push(res, LLMUX_NAME_AGENT, res->agent->name);
    set_profile(cfg, res, res->agent->profile);
    return 0;
  case LLMUX_NAME_PROFILE:
    set_profile(cfg, res, e->ptr);
    return 0;
  default:
    /* Only possible in a snapshot that failed to load. */
    memset(res, 0, sizeof(*res));
    return LLMUX_ENOTFOUND;
  }
}

int llmux_resolve(const llmux_config_t *cfg, const char *name, llmux_resolution_t *res) {
  return llmux_resolven(cfg, name, strlen(name), res);
}

/* ---- Passthrough -------------------------------------------------------- */

int llmux_resolve_passthrough_to(const llmux_config_t *cfg,
                                 const llmux_provider_conf_t *provider, const char *id,
                                 size_t len, llmux_passthrough_t *pt,
                                 llmux_resolution_t *res) {
  const llmux_route_conf_t *base = provider ? provider->passthrough_route : NULL;
  size_t plen;
  (void)cfg;
  memset(res, 0, sizeof(*res));
  if (base == NULL || len == 0) return LLMUX_ENOTFOUND;
  plen = strlen(provider->name);
  if (plen + 1 + len >= sizeof(pt->name)) return LLMUX_ENOTFOUND;
  memcpy(pt->name, provider->name, plen);
  pt->name[plen] = '/';
  memcpy(pt->name + plen + 1, id, len);
  pt->name[plen + 1 + len] = '\0';
  pt->model = *base->model;
  pt->model.id = pt->name;
  pt->route = *base;
  pt->route.id = pt->name + plen + 1;
  pt->route.model_name = pt->name;
  pt->route.model = &pt->model;
  pt->model.routes = pt->routes;
  pt->models[0] = &pt->model;
  pt->routes[0] = &pt->route;
  res->kind = res->target_kind = LLMUX_NAME_PASSTHROUGH;
  res->target = pt->name;
  push(res, LLMUX_NAME_PASSTHROUGH, pt->name);
  res->model = &pt->model;
  res->models = pt->models;
  res->nmodels = 1;
  res->routes = pt->routes;
  res->nroutes = 1;
  return 0;
}

int llmux_resolve_passthrough(const llmux_config_t *cfg, const char *name, size_t len,
                              llmux_passthrough_t *pt, llmux_resolution_t *res) {
  const char *slash = memchr(name, '/', len);
  size_t i, plen;
  memset(res, 0, sizeof(*res));
  if (slash == NULL) return LLMUX_ENOTFOUND;
  plen = (size_t)(slash - name);
  for (i = 0; i < cfg->nproviders; i++) {
    const llmux_provider_conf_t *p = cfg->providers[i];
    if (p->passthrough_route == NULL || strlen(p->name) != plen ||
        strncasecmp(p->name, name, plen) != 0)
      continue;
    return llmux_resolve_passthrough_to(cfg, p, slash + 1, len - plen - 1, pt, res);
  }
  return LLMUX_ENOTFOUND;
}

const llmux_model_conf_t *llmux_config_find_model(const llmux_config_t *cfg,
                                                  const char *canonical_id) {
  const name_entry_t *e = lookup_s(cfg->registry, canonical_id);
  return e && e->kind == LLMUX_NAME_CANONICAL ? e->ptr : NULL;
}

/* ---- Dump -------------------------------------------------------------- */

static void dump_limits(llmux_buf_t *out, const llmux_limits_t *l) {
  if (l->requests_per_minute) llmux_buf_printf(out, " rpm=%llu", (unsigned long long)l->requests_per_minute);
  if (l->requests_per_day) llmux_buf_printf(out, " rpd=%llu", (unsigned long long)l->requests_per_day);
  if (l->tokens_per_minute) llmux_buf_printf(out, " tpm=%llu", (unsigned long long)l->tokens_per_minute);
  if (l->tokens_per_day) llmux_buf_printf(out, " tpd=%llu", (unsigned long long)l->tokens_per_day);
}

static void dump_model(llmux_buf_t *out, const llmux_model_conf_t *m) {
  size_t j;
  llmux_buf_printf(out, "  %s  tier %d", m->id, m->tier);
  if (m->display_name) llmux_buf_printf(out, "  \"%s\"", m->display_name);
  if (m->family) llmux_buf_printf(out, "  family %s", m->family);
  if (m->capabilities) {
    llmux_buf_appends(out, "  caps ");
    llmux_caps_format(m->capabilities, out);
  }
  if (m->context_window) llmux_buf_printf(out, "  context %llu", (unsigned long long)m->context_window);
  if (m->has_price) llmux_buf_printf(out, "  $%g/$%g per Mtok", m->price_in, m->price_out);
  llmux_buf_appends(out, "\n");
  if (m->aliases.len) {
    llmux_buf_appends(out, "      aliases:");
    for (j = 0; j < m->aliases.len; j++) llmux_buf_printf(out, " %s", m->aliases.items[j]);
    llmux_buf_appends(out, "\n");
  }
  for (j = 0; j < m->nroutes; j++) {
    const llmux_route_conf_t *r = m->routes[j];
    llmux_buf_printf(out, "      -> %s %s (priority %d%s)", r->provider->name, r->id,
                     r->provider->priority, r->provider->enabled ? "" : ", disabled");
    dump_limits(out, &r->limits);
    if (r->price_set) llmux_buf_printf(out, "  $%g/$%g per Mtok", r->price_in, r->price_out);
    llmux_buf_appends(out, "\n");
  }
}

/* A profile's preferred providers, pins and escalation, when it has any. */
static void dump_profile_steering(llmux_buf_t *out, const llmux_config_t *cfg,
                                  const llmux_profile_conf_t *p) {
  size_t j;
  if (p->nproviders) {
    llmux_buf_appends(out, "      providers:");
    for (j = 0; j < p->nproviders; j++)
      llmux_buf_printf(out, "%s %s", j ? "," : "", p->providers[j]->name);
    llmux_buf_appends(out, "\n");
  }
  for (j = 0; j < p->nmodels; j++)
    if (p->pins[j])
      llmux_buf_printf(out, "      pin: %s@%s\n", p->models[j]->id, p->pins[j]->name);
  if (p->escalate) llmux_buf_printf(out, "      escalate: %s\n", p->escalate->name);
  if (p->fallback_local)
    llmux_buf_printf(out, "      fallback_local: %s%s\n", p->fallback_local->name,
                     offline_fallback(cfg, p) != p ? " (in use: no API key is set)" : "");
}

static void dump_list(llmux_buf_t *out, llmux_model_conf_t *const *models, size_t n) {
  size_t j;
  for (j = 0; j < n; j++) llmux_buf_printf(out, "%s%s", j ? ", " : "", models[j]->id);
  llmux_buf_appends(out, "\n");
}

int llmux_registry_dump(const llmux_config_t *cfg, llmux_buf_t *out) {
  size_t i;
  llmux_buf_appends(out, "models:\n");
  for (i = 0; i < cfg->nmodels; i++) dump_model(out, cfg->models[i]);
  llmux_buf_appends(out, "generic aliases:\n");
  for (i = 0; i < cfg->ngenerics; i++) {
    const llmux_generic_conf_t *g = cfg->generics[i];
    if (g->tier) llmux_buf_printf(out, "  %s  tier %d: ", g->name, g->tier);
    else llmux_buf_printf(out, "  %s  tier >= %d: ", g->name, g->min_tier);
    dump_list(out, g->models, g->nmodels);
  }
  llmux_buf_appends(out, "profiles:\n");
  for (i = 0; i < cfg->nprofiles; i++) {
    const llmux_profile_conf_t *p = cfg->profiles[i];
    llmux_buf_printf(out, "  %s  (%s): ", p->name, llmux_strategy_name(p->strategy));
    dump_list(out, p->models, p->nmodels);
    dump_profile_steering(out, cfg, p);
  }
  llmux_buf_appends(out, "agents:\n");
  for (i = 0; i < cfg->nagents; i++)
    llmux_buf_printf(out, "  %s -> profile %s\n", cfg->agents[i]->name,
                     cfg->agents[i]->profile_name);
  llmux_buf_appends(out, "user aliases:\n");
  for (i = 0; i < cfg->naliases; i++)
    llmux_buf_printf(out, "  %s -> %s\n", cfg->aliases[i]->name, cfg->aliases[i]->target);
  llmux_buf_appends(out, "providers:\n");
  for (i = 0; i < cfg->nproviders; i++) {
    const llmux_provider_conf_t *p = cfg->providers[i];
    llmux_buf_printf(out, "  %s  plugin %s  %s  priority %d  %s%s%s", p->name,
                     p->plugin ? p->plugin : "?", p->base_url ? p->base_url : "(local)",
                     p->priority, p->enabled ? "enabled" : "disabled",
                     p->enabled ? "" : ": ", p->enabled ? "" : p->disabled_reason);
    dump_limits(out, &p->limits);
    llmux_buf_appends(out, "\n");
  }
  return out->base ? 0 : LLMUX_ENOMEM;
}
