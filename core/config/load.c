/* A configuration load: the files parsed (config.c), then the registry built
 * over them (registry.c), then the checks that resolve names. Kept apart so
 * that config.c and registry.c each depend only on the types in config.h,
 * not on one another. */
#include "config/config.h"
#include "config/registry.h"

#include <stdlib.h>

/* Each name a tenant may use must resolve. */
static void check_tenant_models(llmux_config_t *cfg, llmux_diag_t *d) {
  size_t i, j;
  for (i = 0; i < cfg->ntenants; i++) {
    const llmux_tenant_conf_t *t = cfg->tenants[i];
    for (j = 0; j < t->models.len; j++) {
      llmux_resolution_t res;
      if (llmux_resolve(cfg, t->models.items[j], &res) == 0) continue;
      llmux_diag_add(d, t->file, t->models.lines[j], LLMUX_DIAG_ERROR,
                     "tenant '%s' may use unknown model '%s'%s%s%s", t->name,
                     t->models.items[j], res.nsuggestions ? "; did you mean '" : "",
                     res.nsuggestions ? res.suggestions[0] : "", res.nsuggestions ? "'?" : "");
    }
  }
}

int llmux_config_load_partial(const char *main_path, llmux_config_t **out,
                              llmux_diag_t *diag) {
  llmux_diag_t local = {0};
  size_t errors;
  int rc;

  if (main_path == NULL || out == NULL) return LLMUX_EINVAL;
  if (diag == NULL) diag = &local;
  errors = diag->errors;
  *out = llmux__config_parse(main_path, diag);
  if (llmux__registry_build(*out, diag) == 0) check_tenant_models(*out, diag);
  rc = diag->errors > errors ? LLMUX_ECONFIG : 0;
  llmux_diag_free(&local);
  return rc;
}

int llmux_config_load(const char *main_path, llmux_config_t **out, llmux_diag_t *diag) {
  llmux_config_t *cfg;
  int rc;

  if (main_path == NULL || out == NULL) return LLMUX_EINVAL;
  *out = NULL;
  rc = llmux_config_load_partial(main_path, &cfg, diag);
  if (rc != 0) {
    llmux_config_free(cfg);
    return rc;
  }
  *out = cfg;
  return 0;
}

void llmux_config_free(llmux_config_t *cfg) {
  if (cfg == NULL) return;
  llmux__registry_free(cfg->registry);
  cfg->registry = NULL;
  llmux__config_free_parsed(cfg);
}
