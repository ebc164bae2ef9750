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

static void expand_profile(build_t *b, llmux_profile_conf_t *p) {
  llmux_config_t *cfg = b->cfg;
  size_t i, n = p->model_names.len;
  char hint[160];
  p->models = llmux__arena_alloc(cfg->arena, (n + 1) * sizeof(*p->models));
  for (i = 0; i < n; i++) {
    const char *name = p->model_names.items[i];
    const name_entry_t *e = lookup_s(b->reg, name);
    if (e && (e->kind == LLMUX_NAME_CANONICAL || e->kind == LLMUX_NAME_ALIAS)) {
      p->models[p->nmodels++] = (llmux_model_conf_t *)e->ptr;
    } else if (e && e->kind != LLMUX_NAME_NONE) {
      llmux_diag_add(b->diag, p->file, p->model_names.lines[i], LLMUX_DIAG_ERROR,
                     "profile '%s' lists '%s', which is a %s, not a model", p->name, name,
                     kind_noun(e->kind));
    } else {
      llmux_diag_add(b->diag, p->file, p->model_names.lines[i], LLMUX_DIAG_ERROR,
                     "profile '%s' names unknown model '%s'%s", p->name, name,
                     did_you_mean(b, name, MODEL_NAMES, hint, sizeof(hint)));
    }
  }
  p->routes = concat_routes(b, p->models, p->nmodels, &p->nroutes);
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
  for (i = 0; i < cfg->ngenerics; i++) expand_generic(&b, cfg->generics[i]);
  for (i = 0; i < cfg->nprofiles; i++) expand_profile(&b, cfg->profiles[i]);
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

static void set_profile(llmux_resolution_t *res, const llmux_profile_conf_t *p) {
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
    set_profile(res, res->agent->profile);
    return 0;
  case LLMUX_NAME_PROFILE:
    set_profile(res, e->ptr);
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
    llmux_buf_appends(out, "\n");
  }
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
