/* Loading provider plugins: dlopen, the entry point, the ABI checks, and
 * the plugin's declared keys. The services lent to plugins are in host.c. */
#include "plugin/plugin.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/log.h"
#include "base/util.h"

void llmux_plugins_init(llmux_plugins_t *set, const char *dir) {
  memset(set, 0, sizeof *set);
  set->dir = dir ? llmux_xstrdup(dir) : NULL;
}

static int plugin_open(llmux_plugin_t *p, char *err, size_t errlen) {
  llmux_provider_init_fn init;
  const llmux_provider_t *vt = NULL;
  int rc;

  p->dl = dlopen(p->path, RTLD_NOW | RTLD_LOCAL);
  if (p->dl == NULL) {
    snprintf(err, errlen, "%s: cannot load plugin: %s", p->path, dlerror());
    return LLMUX_ENOTFOUND;
  }
  *(void **)&init = dlsym(p->dl, LLMUX_PROVIDER_INIT_SYMBOL);
  if (init == NULL) {
    snprintf(err, errlen, "%s: not an llmux plugin: no symbol %s", p->path,
             LLMUX_PROVIDER_INIT_SYMBOL);
    return LLMUX_EABI;
  }
  rc = init(llmux_host_api(), &vt);
  if (rc != 0 || vt == NULL) {
    snprintf(err, errlen, "%s: %s() failed: %s", p->path, LLMUX_PROVIDER_INIT_SYMBOL,
             llmux_strerror(rc));
    return rc ? rc : LLMUX_EABI;
  }
  if (vt->abi_major != LLMUX_PROVIDER_ABI_MAJOR ||
      vt->size < offsetof(llmux_provider_t, explain_error)) {
    snprintf(err, errlen,
             "%s: plugin built for ABI %u.%u (struct size %zu), this llmux speaks ABI %d.%d",
             p->path, vt->abi_major, vt->abi_minor, vt->size, LLMUX_PROVIDER_ABI_MAJOR,
             LLMUX_PROVIDER_ABI_MINOR);
    return LLMUX_EABI;
  }
  if (vt->create == NULL || vt->translate_request == NULL || vt->parse_response == NULL ||
      vt->classify_error == NULL) {
    snprintf(err, errlen, "%s: plugin leaves a required function unset", p->path);
    return LLMUX_EABI;
  }
  p->vt = vt;
  return 0;
}

static void plugin_free(llmux_plugin_t *p) {
  if (p->dl) dlclose(p->dl);
  free(p->name);
  free(p->path);
  free(p);
}

static int valid_plugin_name(const char *name) {
  const char *c;
  if (*name == '\0') return 0;
  for (c = name; *c; c++) {
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
          *c == '_' || *c == '-'))
      return 0;
  }
  return 1;
}

llmux_plugin_t *llmux_plugins_get(llmux_plugins_t *set, const char *name, char *err,
                                  size_t errlen) {
  return llmux_plugins_load(set, set->dir ? set->dir : ".", name, err, errlen);
}

llmux_plugin_t *llmux_plugins_load(llmux_plugins_t *set, const char *dir, const char *name,
                                   char *err, size_t errlen) {
  llmux_plugin_t *p;
  llmux_buf_t path = {0};
  size_t i;
  if (!valid_plugin_name(name)) {
    snprintf(err, errlen, "invalid plugin name '%s'", name);
    return NULL;
  }
  if (llmux_buf_printf(&path, "%s/%s.so", dir, name) != 0) abort();
  for (i = 0; i < set->n; i++) {
    if (strcmp(set->items[i]->path, path.base) == 0) {
      llmux_buf_free(&path);
      return set->items[i];
    }
  }
  p = llmux_xcalloc(1, sizeof *p);
  p->name = llmux_xstrdup(name);
  p->path = path.base;
  if (plugin_open(p, err, errlen) != 0) {
    plugin_free(p);
    return NULL;
  }
  set->items = realloc(set->items, (set->n + 1) * sizeof *set->items);
  if (set->items == NULL) abort();
  set->items[set->n++] = p;
  return p;
}

void llmux_plugins_free(llmux_plugins_t *set) {
  size_t i;
  for (i = 0; i < set->n; i++) plugin_free(set->items[i]);
  free(set->items);
  free(set->dir);
  memset(set, 0, sizeof *set);
}

const llmux_config_key_t *llmux_plugin_key(const llmux_plugin_t *p, const char *key) {
  const llmux_config_key_t *k;
  for (k = p->vt->config; k != NULL && k->name != NULL; k++) {
    if (strcasecmp(k->name, key) == 0) return k;
  }
  return NULL;
}

int llmux_plugin_check_key(const llmux_plugin_t *p, const char *key, const char *value,
                           char *err, size_t errlen) {
  const llmux_config_key_t *k = llmux_plugin_key(p, key);
  uint64_t u;
  double d;
  int b, rc = 0;
  const char *what = NULL;
  if (k == NULL) return LLMUX_ENOTFOUND;
  switch (k->type) {
    case LLMUX_KEY_STRING: break;
    case LLMUX_KEY_INT: rc = llmux_parse_u64(value, &u); what = "a non-negative integer"; break;
    case LLMUX_KEY_BOOL: rc = llmux_parse_bool(value, &b); what = "true or false"; break;
    case LLMUX_KEY_DURATION:
      rc = llmux_parse_duration(value, &u); what = "a duration such as 500ms, 10s or 2m"; break;
    case LLMUX_KEY_SIZE: rc = llmux_parse_size(value, &u); what = "a size such as 16k or 8m"; break;
    case LLMUX_KEY_DOUBLE: rc = llmux_parse_double(value, &d); what = "a number"; break;
  }
  if (rc != 0) {
    snprintf(err, errlen, "invalid value '%s' for '%s': expected %s", value, k->name, what);
    return LLMUX_EINVAL;
  }
  return 0;
}
