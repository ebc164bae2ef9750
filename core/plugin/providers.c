#define _GNU_SOURCE
#include "plugin/providers.h"

#include <dirent.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "base/log.h"
#include "route/ratelimit.h"
#include "base/util.h"

int llmux_url_parse(const char *url, int *tls, char **host, int *port, char **path) {
  const char *p, *h, *hend, *slash;
  uint64_t portnum;
  if (strncasecmp(url, "https://", 8) == 0) { *tls = 1; p = url + 8; *port = 443; }
  else if (strncasecmp(url, "http://", 7) == 0) { *tls = 0; p = url + 7; *port = 80; }
  else return LLMUX_EINVAL;
  slash = strchr(p, '/');
  if (slash == NULL) slash = p + strlen(p);
  if (*p == '[') {
    h = p + 1;
    hend = memchr(h, ']', (size_t)(slash - h));
    if (hend == NULL) return LLMUX_EINVAL;
    p = hend + 1;
  } else {
    h = p;
    hend = memchr(p, ':', (size_t)(slash - p));
    if (hend == NULL) hend = slash;
    p = hend;
  }
  if (hend == h || memchr(h, '@', (size_t)(hend - h)) || memchr(h, '?', (size_t)(hend - h)))
    return LLMUX_EINVAL;
  if (p < slash) {
    char num[8];
    if (*p != ':' || slash - p - 1 < 1 || slash - p - 1 > 5) return LLMUX_EINVAL;
    memcpy(num, p + 1, (size_t)(slash - p - 1));
    num[slash - p - 1] = '\0';
    if (llmux_parse_u64(num, &portnum) != 0 || portnum == 0 || portnum > 65535)
      return LLMUX_EINVAL;
    *port = (int)portnum;
  }
  if (strchr(slash, '?') || strchr(slash, '#')) return LLMUX_EINVAL;
  *host = llmux_xstrndup(h, (size_t)(hend - h));
  *path = llmux_xstrdup(slash);
  {
    size_t n = strlen(*path);
    while (n > 0 && (*path)[n - 1] == '/') (*path)[--n] = '\0';
  }
  return 0;
}

static const char *rt_get(const llmux_provider_config_t *pub, const char *key) {
  const llmux_provider_rt_t *rt = llmux_container_of(pub, llmux_provider_rt_t, pub);
  const llmux_config_key_t *k;
  size_t i;
  for (i = 0; i < rt->conf->nextra; i++) {
    if (strcasecmp(rt->conf->extra[i].key, key) == 0) return rt->conf->extra[i].value;
  }
  k = rt->plugin ? llmux_plugin_key(rt->plugin, key) : NULL;
  return k ? k->default_value : NULL;
}

/* ---- the cache ------------------------------------------------------------ */

struct llmux__tls_entry_s {
  char *ca_file;                  /* NULL: the system bundle */
  int verify;
  llmux_tls_ctx_t *ctx;
};

void llmux_provider_cache_init(llmux_provider_cache_t *c) {
  memset(c, 0, sizeof *c);
  llmux_plugins_init(&c->plugins, NULL);
}

void llmux_provider_cache_free(llmux_provider_cache_t *c) {
  size_t i;
  for (i = 0; i < c->ntls; i++) {
    llmux_tls_ctx_free(c->tls[i].ctx);
    free(c->tls[i].ca_file);
  }
  free(c->tls);
  llmux_plugins_free(&c->plugins);
  memset(c, 0, sizeof *c);
}

static llmux_tls_ctx_t *tls_ctx_for(llmux_provider_cache_t *c, const llmux_provider_conf_t *pc,
                                    llmux_diag_t *diag) {
  /* Contexts are shared by providers with the same CA file and verify flag:
   * parsing the system bundle takes milliseconds and real memory. */
  size_t i;
  char err[512];
  llmux_tls_ctx_t *ctx = NULL;
  for (i = 0; i < c->ntls; i++) {
    const llmux__tls_entry_t *e = &c->tls[i];
    if (e->verify != pc->tls_verify || (e->ca_file == NULL) != (pc->ca_file == NULL)) continue;
    if (pc->ca_file && strcmp(e->ca_file, pc->ca_file) != 0) continue;
    return e->ctx;
  }
  if (llmux_tls_ctx_client_new(&ctx, pc->ca_file, pc->tls_verify, err, sizeof err) != 0) {
    llmux_diag_add(diag, pc->file, pc->line, LLMUX_DIAG_ERROR, "provider '%s': %s", pc->name,
                   err);
    return NULL;
  }
  c->tls = realloc(c->tls, (c->ntls + 1) * sizeof *c->tls);
  if (c->tls == NULL) abort();
  c->tls[c->ntls].ca_file = pc->ca_file ? llmux_xstrdup(pc->ca_file) : NULL;
  c->tls[c->ntls].verify = pc->tls_verify;
  c->tls[c->ntls++].ctx = ctx;
  return ctx;
}

/* The closest of `name` among `cands` (within 3 edits), else NULL. */
static const char *closest(const char *name, const char *cand, const char *best,
                           unsigned *best_d) {
  unsigned d = llmux_edit_distance(name, cand, 4);
  if (d < *best_d && d <= 3 && d < strlen(name)) {
    *best_d = d;
    return cand;
  }
  return best;
}

/* An unknown key: the closest known one, then every key the host and the
 * plugin read, so a misspelt base_url is as easy to fix as a plugin's key. */
static void unknown_key(const llmux_provider_rt_t *rt, const llmux_conf_kv_t *kv,
                        llmux_diag_t *diag) {
  llmux_buf_t host = {0}, own = {0};
  const llmux_config_key_t *k;
  const char *best = NULL, *name;
  unsigned best_d = 4;
  size_t i;
  for (i = 0; (name = llmux_config_provider_key(i)) != NULL; i++) {
    best = closest(kv->key, name, best, &best_d);
    llmux_buf_printf(&host, "%s%s", host.len ? ", " : "", name);
  }
  for (k = rt->plugin->vt->config; k && k->name; k++) {
    best = closest(kv->key, k->name, best, &best_d);
    llmux_buf_printf(&own, "%s%s", own.len ? ", " : "", k->name);
  }
  llmux_diag_add(diag, kv->file, kv->line, LLMUX_DIAG_ERROR,
                 "unknown key '%s' in [provider %s]%s%s%s (neither a provider key: %s; nor "
                 "one that plugin '%s' declares%s%s)",
                 kv->key, rt->conf->name, best ? "; did you mean '" : "", best ? best : "",
                 best ? "'?" : "", host.base, rt->plugin->name, own.len ? ": " : "",
                 own.len ? own.base : "");
  llmux_buf_free(&host);
  llmux_buf_free(&own);
}

static void check_plugin_keys(llmux_provider_rt_t *rt, llmux_diag_t *diag) {
  const llmux_provider_conf_t *pc = rt->conf;
  char err[512];
  size_t i;
  for (i = 0; i < pc->nextra; i++) {
    const llmux_conf_kv_t *kv = &pc->extra[i];
    int rc = llmux_plugin_check_key(rt->plugin, kv->key, kv->value, err, sizeof err);
    if (rc == LLMUX_ENOTFOUND) {
      unknown_key(rt, kv, diag);
    } else if (rc != 0) {
      llmux_diag_add(diag, kv->file, kv->line, LLMUX_DIAG_ERROR, "%s", err);
    }
  }
}

/* How to read the provider's rate-limit headers: its `ratelimit_headers`,
 * else the dialect its plugin declares (ABI 1.3), else generic. Nothing is
 * guessed from names: a provider called "acme" whose plugin speaks Groq's
 * dialect is read as Groq, and one called "groq" on a plugin that declares
 * nothing is generic unless its section says otherwise. */
static int rl_style_for(const llmux_provider_conf_t *pc, const llmux_plugin_t *plugin,
                        llmux_diag_t *diag) {
  llmux_rl_style_t style = LLMUX_RL_STYLE_GENERIC;
  const char *declared;
  if (pc->ratelimit_headers != NULL) {
    if (llmux_rl_style_parse(pc->ratelimit_headers, &style) != 0)
      llmux_diag_add(diag, pc->file, pc->line, LLMUX_DIAG_ERROR,
                     "provider '%s': ratelimit_headers must be one of openai, groq, cerebras, "
                     "anthropic, generic (not '%s')",
                     pc->name, pc->ratelimit_headers);
    return (int)style;
  }
  if (!LLMUX_PROVIDER_HAS(plugin->vt, ratelimit_dialect)) return LLMUX_RL_STYLE_GENERIC;
  declared = plugin->vt->ratelimit_dialect;
  if (llmux_rl_style_parse(declared, &style) != 0)
    /* A plugin newer than this llmux may name a dialect it does not know. */
    llmux_diag_add(diag, pc->file, pc->line, LLMUX_DIAG_WARNING,
                   "provider '%s': plugin '%s' declares rate-limit headers '%.40s', which "
                   "this llmux does not know: they are read as generic (set "
                   "ratelimit_headers to choose)",
                   pc->name, plugin->name, declared);
  return (int)style;
}

static int answers_locally(const llmux_plugin_t *p) {
  return LLMUX_PROVIDER_HAS(p->vt, respond_local);
}

/* A provider without base_url: its plugin answers every request itself
 * (ABI 1.2 respond_local), so there is no host, TLS or header set. The
 * proxy tells such a provider by rt->host == NULL. */
/* The plugin's instance for an enabled provider, when asked for. */
static int create_instance(llmux_provider_rt_t *rt, unsigned flags, llmux_diag_t *diag) {
  const llmux_provider_conf_t *pc = rt->conf;
  char err[512];
  if (!(flags & LLMUX_PROVIDERS_CREATE) || !pc->enabled) return 0;
  err[0] = '\0';
  if (rt->plugin->vt->create(&rt->pub, &rt->instance, err, sizeof err) != 0) {
    llmux_diag_add(diag, pc->file, pc->line, LLMUX_DIAG_ERROR,
                   "provider '%s': plugin '%s' refused the configuration: %s", pc->name,
                   pc->plugin, err[0] ? err : "no reason given");
    rt->instance = NULL;
    return LLMUX_ECONFIG;
  }
  return 0;
}

static int build_local(llmux_provider_rt_t *rt, unsigned flags, llmux_diag_t *diag) {
  const llmux_provider_conf_t *pc = rt->conf;
  if (!answers_locally(rt->plugin)) {
    llmux_diag_add(diag, pc->file, pc->line, LLMUX_DIAG_ERROR,
                   "provider '%s' has no base_url (plugin '%s' needs one)", pc->name,
                   pc->plugin);
    return LLMUX_ECONFIG;
  }
  rt->base_path = llmux_xstrdup("");
  rt->rl_style = LLMUX_RL_STYLE_GENERIC;
  rt->headers = llmux_xcalloc(1, sizeof *rt->headers);
  rt->pub.size = sizeof rt->pub;
  rt->pub.name = pc->name;
  rt->pub.base_path = rt->base_path;
  rt->pub.api_key = pc->api_key;
  rt->pub.headers = rt->headers;
  rt->pub.get = rt_get;
  return create_instance(rt, flags, diag);
}

/* A plugin that did not load: why, and when no such file exists, the
 * plugins that do (name.so in plugin_dir) with the closest first. */
static void unknown_plugin(const llmux_provider_conf_t *pc, const char *plugin_dir,
                           const char *err, llmux_diag_t *diag) {
  llmux_buf_t found = {0}, path = {0};
  const char *best = NULL;
  unsigned best_d = 4;
  struct dirent *e;
  DIR *dir;
  llmux_buf_printf(&path, "%s/%s.so", plugin_dir, pc->plugin);
  dir = access(path.base, F_OK) != 0 ? opendir(plugin_dir) : NULL;
  while (dir != NULL && (e = readdir(dir)) != NULL) {
    size_t n = strlen(e->d_name);
    if (n <= 3 || strcmp(e->d_name + n - 3, ".so") != 0) continue;
    e->d_name[n - 3] = '\0';
    llmux_buf_printf(&found, "%s%s", found.len ? ", " : "", e->d_name);
  }
  if (dir != NULL) closedir(dir);
  if (found.len) {
    char *p, *save = NULL, *copy = llmux_xstrdup(found.base);
    for (p = strtok_r(copy, ", ", &save); p; p = strtok_r(NULL, ", ", &save))
      best = closest(pc->plugin, p, best, &best_d);
    best = best ? llmux_xstrdup(best) : NULL;
    free(copy);
  }
  llmux_diag_add(diag, pc->file, pc->line, LLMUX_DIAG_ERROR,
                 "provider '%s': unknown plugin '%s': %s%s%s%s%s%s%s", pc->name, pc->plugin,
                 err, best ? "; did you mean '" : "", best ? best : "", best ? "'?" : "",
                 found.len ? " (plugins found: " : "", found.len ? found.base : "",
                 found.len ? ")" : "");
  free((char *)best);
  llmux_buf_free(&found);
  llmux_buf_free(&path);
}

static int build_one(llmux_providers_t *set, const char *plugin_dir, llmux_provider_rt_t *rt,
                     unsigned flags, llmux_diag_t *diag) {
  const llmux_provider_conf_t *pc = rt->conf;
  char err[512];
  size_t i, before = diag->errors;

  if (pc->plugin == NULL) return LLMUX_ECONFIG; /* reported by the config */
  rt->plugin = llmux_plugins_load(&set->cache->plugins, plugin_dir, pc->plugin, err, sizeof err);
  if (rt->plugin == NULL) {
    unknown_plugin(pc, plugin_dir, err, diag);
    return LLMUX_ECONFIG;
  }
  check_plugin_keys(rt, diag);
  if (flags & LLMUX_PROVIDERS_KEYS_ONLY) return diag->errors != before ? LLMUX_ECONFIG : 0;
  if (pc->base_url == NULL)
    return diag->errors != before ? LLMUX_ECONFIG : build_local(rt, flags, diag);
  if (llmux_url_parse(pc->base_url, &rt->tls, &rt->host, &rt->port, &rt->base_path) != 0) {
    llmux_diag_add(diag, pc->file, pc->line, LLMUX_DIAG_ERROR,
                   "provider '%s': invalid base_url '%s': expected http(s)://host[:port][/path]",
                   pc->name, pc->base_url);
    return LLMUX_ECONFIG;
  }
  rt->host_header = (rt->port == (rt->tls ? 443 : 80)) ? llmux_xstrdup(rt->host) : NULL;
  if (rt->host_header == NULL) {
    llmux_buf_t hb = {0};
    int v6 = strchr(rt->host, ':') != NULL;
    llmux_buf_printf(&hb, "%s%s%s:%d", v6 ? "[" : "", rt->host, v6 ? "]" : "", rt->port);
    rt->host_header = hb.base;
  }
  if (rt->tls && !pc->tls_verify)
    llmux_warn("provider '%s': tls_verify = false: the certificate of %s is NOT checked",
               pc->name, rt->host);
  rt->rl_style = rl_style_for(pc, rt->plugin, diag);
  if (diag->errors != before) return LLMUX_ECONFIG;
  if (rt->tls && (flags & LLMUX_PROVIDERS_TLS)) {
    rt->tls_ctx = tls_ctx_for(set->cache, pc, diag);
    if (rt->tls_ctx == NULL) return LLMUX_ECONFIG;
  }

  rt->headers = llmux_xcalloc(pc->nheaders + 1, sizeof *rt->headers);
  for (i = 0; i < pc->nheaders; i++) {
    rt->headers[i].name = (llmux_str_t){pc->headers[i].key, strlen(pc->headers[i].key)};
    rt->headers[i].value = (llmux_str_t){pc->headers[i].value, strlen(pc->headers[i].value)};
  }
  rt->pub.size = sizeof rt->pub;
  rt->pub.name = pc->name;
  rt->pub.base_url = pc->base_url;
  rt->pub.base_path = rt->base_path;
  rt->pub.api_key = pc->api_key;
  rt->pub.headers = rt->headers;
  rt->pub.nheaders = pc->nheaders;
  rt->pub.get = rt_get;
  return create_instance(rt, flags, diag);
}

int llmux_providers_build(llmux_providers_t *set, const llmux_config_t *cfg,
                          const char *plugin_dir, unsigned flags, llmux_diag_t *diag) {
  llmux_provider_cache_t own;
  int rc;
  llmux_provider_cache_init(&own);
  rc = llmux_providers_build_cached(set, cfg, plugin_dir, &own, flags, diag);
  set->own_cache = own;
  set->cache = &set->own_cache;
  return rc;
}

int llmux_providers_build_cached(llmux_providers_t *set, const llmux_config_t *cfg,
                                 const char *plugin_dir, llmux_provider_cache_t *cache,
                                 unsigned flags, llmux_diag_t *diag) {
  size_t i, before = diag->errors;
  memset(set, 0, sizeof *set);
  set->cache = cache;
  set->n = cfg->nproviders;
  set->items = llmux_xcalloc(set->n + 1, sizeof *set->items);
  for (i = 0; i < set->n; i++) {
    set->items[i].conf = cfg->providers[i];
    build_one(set, plugin_dir, &set->items[i], flags, diag);
  }
  return diag->errors != before ? LLMUX_ECONFIG : 0;
}

void llmux_providers_free(llmux_providers_t *set) {
  size_t i;
  for (i = 0; i < set->n; i++) {
    llmux_provider_rt_t *rt = &set->items[i];
    if (rt->instance && rt->plugin->vt->destroy) rt->plugin->vt->destroy(rt->instance);
    free(rt->headers);
    free(rt->host);
    free(rt->base_path);
    free(rt->host_header);
  }
  free(set->items);
  /* Plugins are closed last: the instances above ran their code. */
  if (set->cache == &set->own_cache) llmux_provider_cache_free(&set->own_cache);
  memset(set, 0, sizeof *set);
}
