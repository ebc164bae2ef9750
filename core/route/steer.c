/* Caller steering of a route plan. See steer.h for the rules. */
#include "route/steer.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "base/json_scan.h"

void llmux_steer_init(llmux_steer_t *s) {
  memset(s, 0, sizeof *s);
  s->allow_fallbacks = 1;
}

static const char *skip_ws(const char *c, const char *e) {
  while (c < e && (*c == ' ' || *c == '\t' || *c == '\n' || *c == '\r')) c++;
  return c;
}

/* The end of the JSON string starting at `c` (its opening quote). */
static const char *string_end(const char *c, const char *e) {
  for (c++; c < e && *c != '"'; c++)
    if (*c == '\\') c++;
  return c < e ? c + 1 : e;
}

/* A JSON array of provider names into out[]. The whole body was scanned
 * already, so the bytes are valid JSON: only the shape is checked here. */
static int read_names(const llmux_config_t *cfg, llmux_str_t v, const char *param,
                      const llmux_provider_conf_t **out, size_t *n, char *msg, size_t cap) {
  const char *c = v.base, *e = v.base + v.len;
  char name[128];
  *n = 0;
  c = skip_ws(c, e);
  if (c == e || *c != '[') goto not_names;
  for (c = skip_ws(c + 1, e); c < e && *c != ']';) {
    const char *end;
    const llmux_provider_conf_t *pv;
    if (*c != '"') goto not_names;
    end = string_end(c, e);
    if (llmux_json_unquote((llmux_str_t){c, (size_t)(end - c)}, name, sizeof name) != 0)
      goto not_names;
    if ((pv = llmux_config_find_provider(cfg, name)) == NULL) {
      snprintf(msg, cap, "'%s' names unknown provider '%s'.", param, name);
      return LLMUX_EINVAL;
    }
    if (*n == LLMUX_STEER_MAX) {
      snprintf(msg, cap, "'%s' lists more than %d providers.", param, LLMUX_STEER_MAX);
      return LLMUX_EINVAL;
    }
    out[(*n)++] = pv;
    c = skip_ws(end, e);
    if (c < e && *c == ',') c = skip_ws(c + 1, e);
  }
  return 0;

not_names:
  snprintf(msg, cap, "'%s' must be an array of provider names.", param);
  return LLMUX_EINVAL;
}

static int read_sort(llmux_str_t v, llmux_steer_t *s, char *msg, size_t cap) {
  char word[16];
  if (llmux_json_unquote(v, word, sizeof word) == 0) {
    s->has_sort = 1;
    if (strcmp(word, "price") == 0) s->sort = LLMUX_STRATEGY_CHEAPEST;
    else if (strcmp(word, "latency") == 0) s->sort = LLMUX_STRATEGY_LOWEST_LATENCY;
    else if (strcmp(word, "throughput") == 0) s->sort = LLMUX_STRATEGY_LEAST_LOADED;
    else s->has_sort = 0;
  }
  if (s->has_sort) return 0;
  snprintf(msg, cap, "'provider.sort' must be \"price\", \"latency\" or \"throughput\".");
  return LLMUX_EINVAL;
}

enum { S_ORDER, S_ONLY, S_IGNORE, S_FALLBACKS, S_SORT, S_COUNT };

int llmux_steer_parse(const llmux_config_t *cfg, llmux_str_t value, llmux_steer_t *s,
                      const char **param, char *msg, size_t msgcap) {
  llmux_json_field_t f[S_COUNT] = {{"order"}, {"only"}, {"ignore"}, {"allow_fallbacks"},
                                   {"sort"}};
  *param = "provider";
  if (llmux_json_scan(value.base, value.len, f, S_COUNT, NULL, NULL) != 0) {
    snprintf(msg, msgcap, "'provider' must be an object with order, only, ignore, "
                          "allow_fallbacks and sort, each at most once.");
    return LLMUX_EINVAL;
  }
  s->active = 1;
  if (f[S_ORDER].type != LLMUX_JSON_NONE &&
      read_names(cfg, f[S_ORDER].value, *param = "provider.order", s->order, &s->norder, msg,
                 msgcap) != 0)
    return LLMUX_EINVAL;
  if (f[S_ONLY].type != LLMUX_JSON_NONE &&
      read_names(cfg, f[S_ONLY].value, *param = "provider.only", s->only, &s->nonly, msg,
                 msgcap) != 0)
    return LLMUX_EINVAL;
  s->has_only = s->has_only || f[S_ONLY].type != LLMUX_JSON_NONE;
  if (f[S_IGNORE].type != LLMUX_JSON_NONE &&
      read_names(cfg, f[S_IGNORE].value, *param = "provider.ignore", s->ignore, &s->nignore,
                 msg, msgcap) != 0)
    return LLMUX_EINVAL;
  *param = "provider.allow_fallbacks";
  if (f[S_FALLBACKS].type == LLMUX_JSON_FALSE) s->allow_fallbacks = 0;
  else if (f[S_FALLBACKS].type != LLMUX_JSON_NONE && f[S_FALLBACKS].type != LLMUX_JSON_TRUE) {
    snprintf(msg, msgcap, "'provider.allow_fallbacks' must be a boolean.");
    return LLMUX_EINVAL;
  }
  *param = "provider.sort";
  if (f[S_SORT].type != LLMUX_JSON_NONE && read_sort(f[S_SORT].value, s, msg, msgcap) != 0)
    return LLMUX_EINVAL;
  *param = NULL;
  return 0;
}

int llmux_steer_header(const llmux_config_t *cfg, llmux_str_t name, llmux_steer_t *s,
                       char *msg, size_t msgcap) {
  char buf[128];
  const llmux_provider_conf_t *pv = NULL;
  if (name.len < sizeof buf) {
    memcpy(buf, name.base, name.len);
    buf[name.len] = '\0';
    pv = llmux_config_find_provider(cfg, buf);
  }
  if (pv == NULL) {
    snprintf(msg, msgcap, "x-llmux-provider names unknown provider '%.*s'.",
             (int)(name.len < 64 ? name.len : 64), name.base);
    return LLMUX_EINVAL;
  }
  s->active = 1;
  s->only[0] = pv;
  s->nonly = 1;
  s->has_only = 1;
  s->allow_fallbacks = 0;
  return 0;
}

/* The place of `pv` in list[0..n), or n. */
static size_t place(const llmux_provider_conf_t *const *list, size_t n,
                    const llmux_provider_conf_t *pv) {
  size_t i;
  for (i = 0; i < n && list[i] != pv; i++) {}
  return i;
}

static int kept(const llmux_steer_t *s, const llmux_provider_conf_t *pv) {
  if (s->has_only && place(s->only, s->nonly, pv) == s->nonly) return 0;
  if (place(s->ignore, s->nignore, pv) < s->nignore) return 0;
  if (!s->allow_fallbacks && s->norder && place(s->order, s->norder, pv) == s->norder)
    return 0;
  return 1;
}

size_t llmux_steer_apply(const llmux_steer_t *s, const llmux_route_conf_t **routes, size_t n,
                         const llmux_route_conf_t **dropped, size_t *ndropped) {
  size_t i, k, m = 0;
  *ndropped = 0;
  for (i = 0; i < n; i++) {
    if (kept(s, routes[i]->provider)) routes[m++] = routes[i];
    else dropped[(*ndropped)++] = routes[i];
  }
  /* `order`: a stable pass per listed provider, then the unlisted. An
   * insertion sort keyed by the provider's place: plans are short. */
  for (i = 1; i < m && s->norder; i++) {
    const llmux_route_conf_t *r = routes[i];
    size_t key = place(s->order, s->norder, r->provider);
    for (k = i; k > 0 && place(s->order, s->norder, routes[k - 1]->provider) > key; k--)
      routes[k] = routes[k - 1];
    routes[k] = r;
  }
  return m;
}
