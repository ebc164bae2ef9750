/* Loading provider plugins and the host side of the plugin ABI. */
#ifndef LLMUX_PLUGIN_H
#define LLMUX_PLUGIN_H

#include <jansson.h>

#include "llmux/provider.h"

typedef struct llmux_plugin_s {
  char *name;  /* "openai" */
  char *path;  /* ".../plugins/openai.so" */
  void *dl;    /* dlopen handle */
  const llmux_provider_t *vt;
} llmux_plugin_t;

/* A set of loaded plugins, each loaded once per path whatever the number
 * of providers (or configuration reloads) using it, and dlclosed only when
 * the set is freed. */
typedef struct llmux_plugins_s {
  char *dir;                   /* for llmux_plugins_get; may be NULL */
  llmux_plugin_t **items;
  size_t n;
} llmux_plugins_t;

/* The host table handed to every plugin (static, lives for the process). */
const llmux_host_api_t *llmux_host_api(void);

void llmux_plugins_init(llmux_plugins_t *set, const char *dir);
/* Returns the plugin named `name`, loading DIR/NAME.so on first use. On
 * failure returns NULL and writes "<path>: <reason>" into err. */
llmux_plugin_t *llmux_plugins_get(llmux_plugins_t *set, const char *name, char *err,
                                  size_t errlen);
/* The same from DIR/NAME.so: a path loaded before is not loaded again (a
 * new build at the same path needs a restart); a failure is not kept, so a
 * later call tries again. */
llmux_plugin_t *llmux_plugins_load(llmux_plugins_t *set, const char *dir, const char *name,
                                   char *err, size_t errlen);
void llmux_plugins_free(llmux_plugins_t *set);

/* Validates one key of a provider section against the plugin's declared
 * keys: 0 when valid, LLMUX_ENOTFOUND when the plugin does not declare it,
 * LLMUX_EINVAL when the value does not fit its type (err says why). */
int llmux_plugin_check_key(const llmux_plugin_t *p, const char *key, const char *value,
                           char *err, size_t errlen);
/* The declared key `key`, or NULL. */
const llmux_config_key_t *llmux_plugin_key(const llmux_plugin_t *p, const char *key);

/* The host's per-attempt state around the public txn. The proxy embeds
 * this and sets emit/owner; request_json is parsed lazily and released by
 * llmux_host_txn_reset. */
typedef struct llmux_host_txn_s {
  llmux_txn_t txn;
  void *owner;
  int (*emit)(void *owner, const char *data, size_t len);
  json_t *json;
  int json_tried;
} llmux_host_txn_t;

/* Clears the plugin's out fields before (re)translation, keeping buffers. */
void llmux_host_txn_clear_out(llmux_host_txn_t *ht);
/* Lets go of what the host parsed for the txn, keeping its buffers (emptied)
 * for the owner to reuse or free with llmux_buf_free. */
void llmux_host_txn_reset(llmux_host_txn_t *ht);
/* Frees everything the host allocated for the txn (not txn->data). */
void llmux_host_txn_free(llmux_host_txn_t *ht);

#endif
