/* Model registry and name resolution (seed 003's flow).
 *
 * Built once per configuration snapshot by llmux_config_load(); lookups
 * hash the requested name (case-insensitive) and allocate nothing: a
 * resolution points into the snapshot and stays valid as long as it.
 *
 * Order of precedence for a name:
 *   user alias ([alias], may chain) > built-in alias (a model's `aliases`)
 *   > canonical id > generic alias > profile > agent (through its profile).
 */
#ifndef LLMUX_REGISTRY_H
#define LLMUX_REGISTRY_H

#include "config/config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  LLMUX_NAME_NONE = 0,
  LLMUX_NAME_USER_ALIAS,
  LLMUX_NAME_ALIAS,      /* built-in alias of a model */
  LLMUX_NAME_CANONICAL,
  LLMUX_NAME_GENERIC,
  LLMUX_NAME_PROFILE,
  LLMUX_NAME_AGENT,
  LLMUX_NAME_PASSTHROUGH /* PROVIDER/ANY-ID, not in the catalog (issue 16) */
} llmux_name_kind_t;

/* User-alias chains longer than this are a config error. */
#define LLMUX_ALIAS_MAX_DEPTH 8
#define LLMUX_RESOLVE_MAX_CHAIN (LLMUX_ALIAS_MAX_DEPTH + 3)
#define LLMUX_RESOLVE_MAX_SUGGEST 3

typedef struct llmux_resolve_step_s {
  llmux_name_kind_t kind;
  const char *name;      /* as spelled in the config */
} llmux_resolve_step_t;

typedef struct llmux_resolution_s {
  llmux_name_kind_t kind;       /* what the requested name is */
  llmux_name_kind_t target_kind;/* CANONICAL, GENERIC or PROFILE */
  const char *target;           /* canonical id, generic or profile name */
  /* The names followed, requested name first, target last:
   * "gpt-4"(user_alias) -> "llama-3.3-70b"(canonical). */
  llmux_resolve_step_t chain[LLMUX_RESOLVE_MAX_CHAIN];
  size_t nchain;
  const llmux_model_conf_t *model;     /* target_kind CANONICAL */
  const llmux_generic_conf_t *generic; /* target_kind GENERIC */
  const llmux_profile_conf_t *profile; /* target_kind PROFILE (also agents) */
  const llmux_agent_conf_t *agent;     /* when an agent was on the way */
  /* Candidate models and routes, in order (see README of issue 3). */
  llmux_model_conf_t *const *models;
  size_t nmodels;
  llmux_route_conf_t *const *routes;
  size_t nroutes;
  /* Filled only on LLMUX_ENOTFOUND: closest known names, best first. */
  const char *suggestions[LLMUX_RESOLVE_MAX_SUGGEST];
  size_t nsuggestions;
} llmux_resolution_t;

/* Resolves `name`. 0 on success; LLMUX_ENOTFOUND (with suggestions) for an
 * unknown name. Allocation-free; `res` points into `cfg`. */
int llmux_resolve(const llmux_config_t *cfg, const char *name, llmux_resolution_t *res);
/* The same for a name that is not NUL-terminated (a URL path segment). */
int llmux_resolven(const llmux_config_t *cfg, const char *name, size_t len,
                   llmux_resolution_t *res);

/* ---- Passthrough (issue 16) ---------------------------------------------
 *
 * A provider with `passthrough = true` serves models the catalog does not
 * name: "PROVIDER/ANY-ID" is sent to it with model id ANY-ID, under the
 * provider's default limits and with no capability filter (the model has
 * none declared). Every such request shares the provider's one passthrough
 * route (its router state and rate-limit window, key "*"); the route
 * handed out is a copy made for the request, in storage the caller owns. */

#define LLMUX_PASSTHROUGH_MAX_NAME 256

typedef struct llmux_passthrough_s {
  llmux_model_conf_t model;      /* id "PROVIDER/ANY-ID", no capabilities */
  llmux_route_conf_t route;      /* the provider's passthrough route, id ANY-ID */
  llmux_model_conf_t *models[1];
  llmux_route_conf_t *routes[1];
  char name[LLMUX_PASSTHROUGH_MAX_NAME];  /* "PROVIDER/ANY-ID" */
} llmux_passthrough_t;

/* Resolves `name` as PROVIDER/ANY-ID: 0 when PROVIDER (case-insensitive)
 * has passthrough on and ANY-ID is not empty; `res` (kind and target_kind
 * LLMUX_NAME_PASSTHROUGH, one model, one route) then points into `pt` and
 * `cfg`. LLMUX_ENOTFOUND otherwise, `res` cleared. Call it after
 * llmux_resolve failed: a catalog name always wins. */
int llmux_resolve_passthrough(const llmux_config_t *cfg, const char *name, size_t len,
                              llmux_passthrough_t *pt, llmux_resolution_t *res);
/* The same for a bare ANY-ID sent to `provider` (a passthrough provider
 * whose model list holds it). */
int llmux_resolve_passthrough_to(const llmux_config_t *cfg,
                                 const llmux_provider_conf_t *provider, const char *id,
                                 size_t len, llmux_passthrough_t *pt,
                                 llmux_resolution_t *res);

/* Up to `max` known names closest to `name` (llmux_edit_distance), best
 * first, ties in config order. Returns how many were stored. */
size_t llmux_registry_suggest(const llmux_config_t *cfg, const char *name,
                              const char **out, size_t max);
/* The same among the names `keep(arg, name)` accepts (a tenant's: no name
 * it may not use is ever offered to it). */
size_t llmux_registry_suggest_if(const llmux_config_t *cfg, const char *name,
                                 int (*keep)(void *arg, const char *name), void *arg,
                                 const char **out, size_t max);

/* "user_alias", "alias", "canonical", "generic", "profile", "agent". */
const char *llmux_name_kind_str(llmux_name_kind_t k);

/* The routing table as text for `llmux models` and `llmux check`: models
 * with tier, aliases, capabilities and routes; generics, profiles, agents,
 * user aliases and providers. Never prints API keys. */
int llmux_registry_dump(const llmux_config_t *cfg, llmux_buf_t *out);

/* Private, called by llmux_config_load(): links references, checks names
 * and builds the lookup table. Errors go to `diag`. */
int llmux__registry_build(llmux_config_t *cfg, llmux_diag_t *diag);
void llmux__registry_free(struct llmux__registry_s *r);

#ifdef __cplusplus
}
#endif
#endif /* LLMUX_REGISTRY_H */
