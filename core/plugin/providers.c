#define _GNU_SOURCE
#include "plugin/providers.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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

static llmux_tls_ctx_t *tls_ctx_for(llmux_providers_t *set, const llmux_provider_conf_t *pc,
                                    llmux_diag_t *diag) {
  /* Contexts are shared by providers with the same CA file and verify flag:
   * parsing the system bundle takes milliseconds and real memory. */
  size_t i;
  char err[512];
  llmux_tls_ctx_t *ctx = NULL;
  for (i = 0; i < set->n; i++) {
    const llmux_provider_rt_t *o = &set->items[i];
    if (o->tls_ctx == NULL || o->conf->tls_verify != pc->tls_verify) continue;
    if ((o->conf->ca_file == NULL) != (pc->ca_file == NULL)) continue;
    if (pc->ca_file && strcmp(o->conf->ca_file, pc->ca_file) != 0) continue;
    return o->tls_ctx;
  }
  if (llmux_tls_ctx_client_new(&ctx, pc->ca_file, pc->tls_verify, err, sizeof err) != 0) {
    llmux_diag_add(diag, pc->file, pc->line, LLMUX_DIAG_ERROR, "provider '%s': %s", pc->name,
                   err);
    return NULL;
  }
  set->tls_ctxs = realloc(set->tls_ctxs, (set->ntls + 1) * sizeof *set->tls_ctxs);
  if (set->tls_ctxs == NULL) abort();
  set->tls_ctxs[set->ntls++] = ctx;
  return ctx;
}

static void check_plugin_keys(llmux_provider_rt_t *rt, llmux_diag_t *diag) {
  const llmux_provider_conf_t *pc = rt->conf;
  char err[512];
  size_t i;
  for (i = 0; i < pc->nextra; i++) {
    const llmux_conf_kv_t *kv = &pc->extra[i];
    int rc = llmux_plugin_check_key(rt->plugin, kv->key, kv->value, err, sizeof err);
    if (rc == LLMUX_ENOTFOUND) {
      llmux_buf_t names = {0};
      const llmux_config_key_t *k;
      for (k = rt->plugin->vt->config; k && k->name; k++)
        llmux_buf_printf(&names, "%s%s", names.len ? ", " : "", k->name);
      llmux_diag_add(diag, kv->file, kv->line, LLMUX_DIAG_ERROR,
                     "unknown key '%s' in [provider %s] (neither a provider key nor one "
                     "that plugin '%s' declares%s%s)",
                     kv->key, pc->name, rt->plugin->name, names.len ? ": " : "",
                     names.len ? names.base : "");
      llmux_buf_free(&names);
    } else if (rc != 0) {
      llmux_diag_add(diag, kv->file, kv->line, LLMUX_DIAG_ERROR, "%s", err);
    }
  }
}

/* ratelimit_headers, else a guess from the provider's name and host: the
 * providers whose headers mean something special are few and well known. */
static int rl_style_for(const llmux_provider_conf_t *pc, const char *host,
                        llmux_diag_t *diag) {
  static const char *const known[] = {"groq", "cerebras", "anthropic", "openai"};
  size_t i;
  if (pc->ratelimit_headers != NULL) {
    if (strcasecmp(pc->ratelimit_headers, "generic") == 0) return LLMUX_RL_STYLE_GENERIC;
    for (i = 0; i < LLMUX_COUNTOF(known); i++)
      if (strcasecmp(pc->ratelimit_headers, known[i]) == 0)
        return (int)llmux_rl_style_from_name(known[i]);
    llmux_diag_add(diag, pc->file, pc->line, LLMUX_DIAG_ERROR,
                   "provider '%s': ratelimit_headers must be one of openai, groq, cerebras, "
                   "anthropic, generic (not '%s')",
                   pc->name, pc->ratelimit_headers);
    return LLMUX_RL_STYLE_GENERIC;
  }
  for (i = 0; i < LLMUX_COUNTOF(known); i++) {
    if (strcasestr(pc->name, known[i]) || strcasestr(host, known[i]))
      return (int)llmux_rl_style_from_name(known[i]);
  }
  return LLMUX_RL_STYLE_GENERIC;
}

static int answers_locally(const llmux_plugin_t *p) {
  const llmux_provider_t *vt = p->vt;
  return vt->size >= offsetof(llmux_provider_t, respond_local) + sizeof(vt->respond_local) &&
         vt->respond_local != NULL;
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

static int build_one(llmux_providers_t *set, llmux_provider_rt_t *rt, unsigned flags,
                     llmux_diag_t *diag) {
  const llmux_provider_conf_t *pc = rt->conf;
  char err[512];
  size_t i, before = diag->errors;

  rt->plugin = llmux_plugins_get(&set->plugins, pc->plugin, err, sizeof err);
  if (rt->plugin == NULL) {
    llmux_diag_add(diag, pc->file, pc->line, LLMUX_DIAG_ERROR,
                   "provider '%s': unknown plugin '%s': %s", pc->name, pc->plugin, err);
    return LLMUX_ECONFIG;
  }
  check_plugin_keys(rt, diag);
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
  rt->rl_style = rl_style_for(pc, rt->host, diag);
  if (diag->errors != before) return LLMUX_ECONFIG;
  if (rt->tls && (flags & LLMUX_PROVIDERS_TLS)) {
    rt->tls_ctx = tls_ctx_for(set, pc, diag);
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
  size_t i, before = diag->errors;
  memset(set, 0, sizeof *set);
  llmux_plugins_init(&set->plugins, plugin_dir);
  set->n = cfg->nproviders;
  set->items = llmux_xcalloc(set->n + 1, sizeof *set->items);
  for (i = 0; i < set->n; i++) {
    set->items[i].conf = cfg->providers[i];
    build_one(set, &set->items[i], flags, diag);
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
  for (i = 0; i < set->ntls; i++) llmux_tls_ctx_free(set->tls_ctxs[i]);
  free(set->tls_ctxs);
  free(set->items);
  llmux_plugins_free(&set->plugins);
  memset(set, 0, sizeof *set);
}
