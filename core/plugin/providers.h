/* The running providers: each `[provider]` section with its plugin loaded,
 * its keys validated against the plugin's declaration, its base URL parsed
 * and a plugin instance created. Built from one config snapshot and freed
 * with it; the plugins and TLS contexts come from a cache that may outlive
 * it (a reload builds a new set over the same cache). */
#ifndef LLMUX_PROVIDERS_H
#define LLMUX_PROVIDERS_H

#include "config/config.h"
#include "plugin/plugin.h"
#include "net/tls.h"

typedef struct llmux_provider_rt_s {
  const llmux_provider_conf_t *conf;
  llmux_plugin_t *plugin;
  void *instance;                 /* the plugin's; NULL when not created */
  llmux_provider_config_t pub;    /* what the plugin's create() saw */
  llmux_header_t *headers;        /* pub.headers */
  /* base_url, parsed */
  int tls;                        /* https */
  char *host;                     /* without brackets */
  int port;
  char *base_path;                /* "" or "/openai/v1" */
  char *host_header;              /* "api.groq.com" or "host:port" */
  llmux_tls_ctx_t *tls_ctx;       /* borrowed from the set's cache */
  int rl_style;                   /* llmux_rl_style_t: how to read its headers */
} llmux_provider_rt_t;

/* What outlives one providers set: plugins, loaded once per path, and TLS
 * client contexts, made once per (ca_file, tls_verify) and shared by every
 * provider and set with those settings. A pooled upstream connection keeps
 * its context, so the cache is freed only after every set built from it and
 * every connection using its contexts are gone (the gateway: at exit).
 * A CA bundle changed on disk at the same path needs a restart. */
typedef struct llmux__tls_entry_s llmux__tls_entry_t;
typedef struct llmux_provider_cache_s {
  llmux_plugins_t plugins;
  llmux__tls_entry_t *tls;
  size_t ntls;
} llmux_provider_cache_t;

void llmux_provider_cache_init(llmux_provider_cache_t *c);
void llmux_provider_cache_free(llmux_provider_cache_t *c);

typedef struct llmux_providers_s {
  llmux_provider_rt_t *items;     /* one per cfg->providers, same index */
  size_t n;
  llmux_provider_cache_t *cache;  /* borrowed, or &own_cache */
  llmux_provider_cache_t own_cache; /* llmux_providers_build's: freed with the set
                                       (so a set is never moved: cache may point here) */
} llmux_providers_t;

enum {
  LLMUX_PROVIDERS_CREATE = 1u << 0, /* create plugin instances */
  LLMUX_PROVIDERS_TLS = 1u << 1,    /* load CA bundles (https providers) */
  /* load each plugin and check its keys, nothing more: for a configuration
   * that already has errors (its values may be missing), `llmux check` */
  LLMUX_PROVIDERS_KEYS_ONLY = 1u << 2
};

/* Loads plugins from plugin_dir, checks every provider and (per flags)
 * creates instances and TLS contexts. Problems go to diag as file:line.
 * Returns 0, or LLMUX_ECONFIG when any error was reported. */
int llmux_providers_build(llmux_providers_t *set, const llmux_config_t *cfg,
                          const char *plugin_dir, unsigned flags, llmux_diag_t *diag);
/* The same, taking plugins and TLS contexts from `cache` (borrowed: it
 * must outlive the set) and adding to it what is missing. */
int llmux_providers_build_cached(llmux_providers_t *set, const llmux_config_t *cfg,
                                 const char *plugin_dir, llmux_provider_cache_t *cache,
                                 unsigned flags, llmux_diag_t *diag);
void llmux_providers_free(llmux_providers_t *set);

/* Splits "https://host:port/path" into its parts; 0 or LLMUX_EINVAL. */
int llmux_url_parse(const char *url, int *tls, char **host, int *port, char **path);

#endif
