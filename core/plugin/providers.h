/* The running providers: each `[provider]` section with its plugin loaded,
 * its keys validated against the plugin's declaration, its base URL parsed
 * and a plugin instance created. Built from one config snapshot and freed
 * with it. */
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
  llmux_tls_ctx_t *tls_ctx;       /* borrowed from the set */
  int rl_style;                   /* llmux_rl_style_t: how to read its headers */
} llmux_provider_rt_t;

typedef struct llmux_providers_s {
  llmux_plugins_t plugins;
  llmux_provider_rt_t *items;     /* one per cfg->providers, same index */
  size_t n;
  llmux_tls_ctx_t **tls_ctxs;     /* shared by providers with the same CA settings */
  size_t ntls;
} llmux_providers_t;

enum {
  LLMUX_PROVIDERS_CREATE = 1u << 0, /* create plugin instances */
  LLMUX_PROVIDERS_TLS = 1u << 1     /* load CA bundles (https providers) */
};

/* Loads plugins from plugin_dir, checks every provider and (per flags)
 * creates instances and TLS contexts. Problems go to diag as file:line.
 * Returns 0, or LLMUX_ECONFIG when any error was reported. */
int llmux_providers_build(llmux_providers_t *set, const llmux_config_t *cfg,
                          const char *plugin_dir, unsigned flags, llmux_diag_t *diag);
void llmux_providers_free(llmux_providers_t *set);

/* Splits "https://host:port/path" into its parts; 0 or LLMUX_EINVAL. */
int llmux_url_parse(const char *url, int *tls, char **host, int *port, char **path);

#endif
