/* Configuration: the main INI file plus every providers/NAME.ini, loaded into
 * one immutable snapshot.
 *
 * Ownership: llmux_config_load() returns a snapshot that owns every string
 * and struct reachable from it; nothing in it changes after load, and one
 * llmux_config_free() releases all of it. There are no globals, so an old
 * and a new snapshot can live side by side during a reload.
 *
 * Every mistake in the files becomes a diagnostic `file:line: message` in a
 * llmux_diag_t the caller owns; loading goes on after an error so that the
 * user sees all of them at once. */
#ifndef LLMUX_CONFIG_H
#define LLMUX_CONFIG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "llmux/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Diagnostics ------------------------------------------------------- */

enum {
  LLMUX_DIAG_ERROR = 0,
  LLMUX_DIAG_WARNING = 1
};

typedef struct llmux_diag_entry_s {
  char *file;     /* owned by the llmux_diag_t; may be "" */
  int line;       /* 1-based; 0 when the message is about a whole file */
  int severity;   /* LLMUX_DIAG_ERROR or LLMUX_DIAG_WARNING */
  char *message;  /* owned; no file/line prefix, no trailing newline */
} llmux_diag_entry_t;

/* A zero-initialised llmux_diag_t is ready to use. */
typedef struct llmux_diag_s {
  llmux_diag_entry_t *items;
  size_t len;
  size_t cap;
  size_t errors;
  size_t warnings;
} llmux_diag_t;

void llmux_diag_init(llmux_diag_t *d);
void llmux_diag_free(llmux_diag_t *d);
/* Appends one diagnostic. `file` and the formatted message are copied. */
void llmux_diag_add(llmux_diag_t *d, const char *file, int line, int severity,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void llmux_diag_vadd(llmux_diag_t *d, const char *file, int line, int severity,
                     const char *fmt, va_list ap);
/* "file:line: message" for errors, "file:line: warning: message" for
 * warnings ("file: ..." when line is 0), no newline. */
int llmux_diag_format(const llmux_diag_entry_t *e, llmux_buf_t *out);
/* Writes every entry, one per line. */
void llmux_diag_print(const llmux_diag_t *d, FILE *fp);

/* ---- The snapshot ------------------------------------------------------ */

/* Model capabilities (`capabilities = tools, vision, json, embeddings,
 * responses`). */
enum {
  LLMUX_CAP_TOOLS = 1u << 0,
  LLMUX_CAP_VISION = 1u << 1,
  LLMUX_CAP_JSON = 1u << 2,
  LLMUX_CAP_EMBEDDINGS = 1u << 3,
  /* The model's provider serves OpenAI's Responses API for it: POST
   * /v1/responses passes through untranslated on its routes whose plugin
   * can (LLMUX_FEATURE_RESPONSES_BY_MODEL, the openai plugin). It never
   * filters routes: no request needs it. */
  LLMUX_CAP_RESPONSES = 1u << 4
};

/* Bits of llmux_limits_t.set. */
enum {
  LLMUX_LIMIT_RPM = 1u << 0,
  LLMUX_LIMIT_RPD = 1u << 1,
  LLMUX_LIMIT_TPM = 1u << 2,
  LLMUX_LIMIT_TPD = 1u << 3
};

/* Rate limits. 0 means "no limit configured". */
typedef struct llmux_limits_s {
  uint64_t requests_per_minute;
  uint64_t requests_per_day;
  uint64_t tokens_per_minute;
  uint64_t tokens_per_day;
  unsigned set; /* LLMUX_LIMIT_* bits of the keys written in this section */
} llmux_limits_t;

typedef enum {
  LLMUX_STRATEGY_PRIORITY = 0,
  LLMUX_STRATEGY_LOWEST_LATENCY,
  LLMUX_STRATEGY_LEAST_LOADED,
  LLMUX_STRATEGY_CHEAPEST,
  LLMUX_STRATEGY_WEIGHTED
} llmux_strategy_t;

/* A list of names, each with the line it was written on. */
typedef struct llmux_strlist_s {
  const char **items;
  int *lines;
  size_t len;
} llmux_strlist_t;

/* One `key = value` line kept for a later check (a provider's extra keys,
 * `header.NAME` and `header_env.NAME` lines). */
typedef struct llmux_conf_kv_s {
  const char *key;   /* for headers: the header name, without "header." */
  const char *value; /* for header_env: the variable's content, a secret
                        ("" when unset: the provider is disabled) */
  const char *file;
  int line;
  const char *env;   /* header_env: the variable's name; else NULL */
} llmux_conf_kv_t;

typedef struct llmux_server_conf_s {
  const char *listen;        /* as written (or from LLMUX_LISTEN) */
  const char *host;          /* "127.0.0.1", "::1" (brackets removed) */
  int port;                  /* 0-65535; 0 = ephemeral */
  const char *providers_dir; /* resolved against the main file's directory */
  const char *plugin_dir;    /* NULL: the caller's default (plugins/ beside
                                the binary); LLMUX_PLUGIN_DIR wins */
  uint64_t max_body;         /* bytes */
  uint64_t max_header;       /* bytes */
  /* What clients can make the gateway hold (issue 11). */
  uint64_t max_connections;  /* open client connections; beyond: 503; 10000 */
  uint64_t max_memory;       /* bytes of request buffers, all clients; beyond:
                                503 overloaded; 512m */
  uint64_t header_timeout_ms;
  uint64_t idle_timeout_ms;
  int log_level;             /* LLMUX_LOG_* */
  /* Failover and retries (issue 6). */
  uint64_t max_attempts;       /* attempts per request, all routes; default 4 */
  uint64_t retry_backoff_ms;   /* base of the exponential backoff; 200ms */
  uint64_t retry_backoff_max_ms; /* its cap; 2s */
  uint64_t request_timeout_ms; /* deadline for a request, retries included; 120s */
  uint64_t cooldown_failures;  /* failures inside cooldown_window that rest a route; 3 */
  uint64_t cooldown_window_ms; /* 60s */
  uint64_t cooldown_ms;        /* how long it rests; 30s */
  /* Tenants (issue 8). */
  const char *usage_db;        /* SQLite file for per-tenant usage, resolved
                                  against the main file's directory; NULL:
                                  usage is kept in memory only */
  /* Operations (issue 12). */
  unsigned char (*admin_key_hashes)[32]; /* admin_key_sha256 digests: Bearer keys
                                            for the admin endpoints (none: loopback only) */
  int *admin_key_lines;
  size_t nadmin_keys;
  uint64_t drain_timeout_ms;   /* SIGTERM: how long streams may finish; 30s */
  /* Observability (issue 13). */
  const char *access_log;      /* one JSON line per request: a file (resolved
                                  against the main file's directory), "stdout",
                                  or NULL ("off", the default) */
  const char *otlp_endpoint;   /* a collector's http:// base URL: spans go to
                                  {it}/v1/traces (gateway/trace.h); NULL: off */
  /* Fleets (issue 14). */
  uint64_t workers;            /* worker processes; 1 (no master) by default */
  int workers_auto;            /* `workers = auto`: workers is the CPU count */
  int workers_line;            /* where workers was written; 0: not written */
  const char *shared_state;    /* redis://HOST[:PORT][/DB]; NULL: each process
                                  keeps its own state (the embedded default) */
  int shared_state_line;
  const char *shared_state_password_env; /* the variable holding Redis's
                                            password; NULL: no AUTH */
  const char *shared_state_prefix; /* keys and channels; "llmux:" */
  int shared_state_fail_closed; /* shared_state_fail = closed: 503 while Redis
                                   is unreachable; open (default): serve on
                                   local state */
  uint64_t shared_state_timeout_ms; /* a command slower than this is an outage;
                                       50ms */
  /* POST /v1/responses (issue 15; gateway/responses_store.h). */
  const char *responses_db;    /* SQLite file of stored responses; NULL:
                                  usage_db's path + ".responses" when
                                  usage_db is set, else memory only */
  uint64_t responses_ttl_ms;   /* how long a stored response is kept; 1d */
  uint64_t responses_max_memory; /* bytes of responses kept in memory; 64m */
  /* `n` > 1 to a provider without it (issue 15; gateway/fanout.h). */
  /* The response cache (issue 17; gateway/cache.h). */
  int cache;                   /* LLMUX_CACHE_OFF (default), _MEMORY or _REDIS
                                  (memory in front of the shared state) */
  int cache_line;             /* where cache was written; 0: not written */
  uint64_t cache_size;         /* bytes of answers kept in memory; 64m */
  uint64_t cache_ttl_ms;       /* how long an answer is served; 1h */
  int fan_out;                 /* 1 (default): n requests, answers merged;
                                  0 (`fan_out = off`): such a route is not
                                  used, and a 400 when none other is */
} llmux_server_conf_t;

enum { LLMUX_CACHE_OFF = 0, LLMUX_CACHE_MEMORY = 1, LLMUX_CACHE_REDIS = 2 };

typedef struct llmux_model_conf_s llmux_model_conf_t;
typedef struct llmux_provider_conf_s llmux_provider_conf_t;
typedef struct llmux_route_conf_s llmux_route_conf_t;
typedef struct llmux_profile_conf_s llmux_profile_conf_t;

/* [model ID] */
struct llmux_model_conf_s {
  const char *id;            /* canonical id */
  int tier;                  /* 1-5 */
  const char *family;        /* NULL when not given */
  const char *display_name;  /* a name for people (seed 003); NULL: none */
  llmux_strlist_t aliases;   /* built-in aliases */
  unsigned capabilities;     /* LLMUX_CAP_* */
  uint64_t context_window;   /* tokens; 0 = unknown */
  double price_in;           /* USD per million tokens */
  double price_out;
  int has_price;             /* price_in or price_out was written */
  const char *file;
  int line;
  /* read-only, filled at load */
  size_t index;                     /* position in cfg->models */
  llmux_route_conf_t **routes;      /* provider priority ascending, then
                                       config order */
  size_t nroutes;
};

/* [generic NAME]: seed 003's generic aliases. */
typedef struct llmux_generic_conf_s {
  const char *name;
  int tier;                  /* exact tier, or 0 */
  int min_tier;              /* tiers >= min_tier (highest first), or 0 */
  int max_tier;              /* optional upper bound with min_tier, or 0 */
  const char *file;
  int line;
  /* read-only, filled at load */
  size_t index;
  llmux_model_conf_t **models;     /* the expansion, in resolution order */
  size_t nmodels;
  llmux_route_conf_t **routes;     /* every model's routes, model by model */
  size_t nroutes;
} llmux_generic_conf_t;

/* One line of [alias]: a user alias. */
typedef struct llmux_alias_conf_s {
  const char *name;
  const char *target;        /* any resolvable name, user aliases included */
  const char *file;
  int line;
  size_t index;
} llmux_alias_conf_t;

/* [profile NAME] */
struct llmux_profile_conf_s {
  const char *name;
  llmux_strlist_t model_names;     /* as written (canonical ids or aliases) */
  llmux_strategy_t strategy;
  double *weights;                 /* one per model, or NULL */
  size_t nweights;
  llmux_strlist_t provider_names;  /* `providers =`: preferred first */
  const char *escalate_name;       /* `escalate = PROFILE`, or NULL */
  int escalate_line;
  const char *fallback_local_name; /* `fallback_local = PROFILE`, or NULL */
  int fallback_local_line;
  const char *file;
  int line;
  int models_line;
  /* read-only, filled at load */
  size_t index;
  llmux_model_conf_t **models;     /* in listed order */
  llmux_provider_conf_t **pins;    /* one per model: `MODEL@PROVIDER` limits
                                      that member to one provider; NULL: any */
  size_t nmodels;
  llmux_provider_conf_t **providers; /* provider_names, linked: among one
                                        model's routes these go first, in this
                                        order, before provider priority */
  size_t nproviders;
  llmux_profile_conf_t *escalate;  /* tried when every route of this one
                                      failed or was filtered out; NULL: none */
  llmux_profile_conf_t *fallback_local; /* what this name resolves to while no
                                      route of it is on an enabled provider
                                      (no key set): the local one; NULL: none */
  llmux_route_conf_t **routes;     /* every model's routes, model by model */
  size_t nroutes;
};

/* [agent NAME] */
typedef struct llmux_agent_conf_s {
  const char *name;
  const char *profile_name;
  const char *file;
  int line;
  int profile_line;
  /* read-only, filled at load */
  size_t index;
  llmux_profile_conf_t *profile;
} llmux_agent_conf_t;

/* SHA-256 digests of tenant keys are kept in binary. */
#define LLMUX_KEY_HASH_LEN 32

/* One `agent.NAME = PROFILE` line of a [tenant]. */
typedef struct llmux_agent_override_s {
  const char *agent_name;    /* as written */
  const char *profile_name;
  const char *file;
  int line;
  /* read-only, filled at load */
  const llmux_agent_conf_t *agent;
  const llmux_profile_conf_t *profile;
} llmux_agent_override_t;

/* [tenant NAME]: one team calling llmux with its own keys and limits. */
typedef struct llmux_tenant_conf_s {
  const char *name;
  unsigned char (*key_hashes)[LLMUX_KEY_HASH_LEN]; /* `key_sha256` lines, decoded */
  int *key_lines;
  size_t nkeys;
  llmux_strlist_t models;    /* names it may use, as written */
  int has_models;            /* 0: `models` absent, every name is allowed */
  llmux_limits_t limits;     /* requests_per_minute, tokens_per_minute,
                                tokens_per_day; 0 = none */
  double budget_usd_per_month; /* 0 with has_budget 0: none */
  int has_budget;
  llmux_agent_override_t *agent_overrides;
  size_t nagent_overrides;
  int allow_routing_overrides; /* 1 (default): its requests may choose
                                  providers (body `provider`, header
                                  x-llmux-provider); 0: a 403 */
  const char *file;
  int line;
  /* read-only, filled at load */
  size_t index;
} llmux_tenant_conf_t;

/* [provider NAME] */
struct llmux_provider_conf_s {
  const char *name;
  const char *plugin;        /* "openai" -> plugins/openai.so */
  const char *base_url;      /* no trailing '/' */
  const char *api_key_env;   /* NULL: the provider needs no key */
  const char *api_key;       /* getenv(api_key_env) at load, copied; NULL
                                when none. Never log or print it. */
  int priority;              /* lower first; default 100 */
  int enabled;               /* `enabled` and, when api_key_env is set, a
                                non-empty key */
  const char *disabled_reason; /* NULL when enabled */
  llmux_limits_t limits;     /* provider defaults */
  llmux_limits_t wide_limits;/* provider-wide (`total_*` keys), on top of
                                every route's own; 0 = none */
  const char *ratelimit_headers; /* how to read its rate-limit headers:
                                openai, groq, cerebras, anthropic, generic;
                                NULL: the dialect its plugin declares */
  uint64_t connect_timeout_ms;
  uint64_t timeout_ms;         /* first response byte */
  uint64_t stream_timeout_ms;  /* gap between stream chunks */
  uint64_t total_timeout_ms;
  int tls_verify;
  const char *ca_file;       /* resolved against its file's directory, or NULL */
  llmux_conf_kv_t *headers;  /* `header.NAME = value` and `header_env.NAME =
                                VARIABLE`, in file order */
  size_t nheaders;
  llmux_conf_kv_t *extra;    /* keys the host does not know: the plugin's */
  size_t nextra;
  int passthrough;           /* `passthrough = true` (issue 16): PROVIDER/ANY-ID
                                is sent to it as is (registry.h) */
  const char *file;
  int line;
  /* read-only, filled at load */
  size_t index;
  llmux_route_conf_t *passthrough_route; /* with passthrough: its route in
                                cfg->routes (model NAME, "/" and "*"; id "*"; the
                                provider's limits); NULL otherwise */
};

/* [route PROVIDER MODEL] */
#define LLMUX_ROUTE_PRICE_IN 1u
#define LLMUX_ROUTE_PRICE_OUT 2u
struct llmux_route_conf_s {
  const char *provider_name;
  const char *model_name;
  const char *id;            /* the provider's model id (default: the
                                canonical id) */
  llmux_limits_t limits;     /* effective: this section's keys, else the
                                provider's; .set says which were written here */
  double price_in;           /* effective USD per million tokens: this
                                section's price_in/price_out, else the model's */
  double price_out;
  unsigned price_set;        /* LLMUX_ROUTE_PRICE_* written in this section */
  int has_price;             /* effective: written here or on the model */
  const char *file;
  int line;
  /* read-only, filled at load */
  size_t index;                  /* position in cfg->routes */
  llmux_provider_conf_t *provider;
  llmux_model_conf_t *model;
  int passthrough;               /* a provider's passthrough route, or a copy
                                    of it made for one request */
};

/* The model of a route's rate-limit key: every model a passthrough route
 * sends shares the provider's default limits, kept under "*". */
#define LLMUX_ROUTE_LIMIT_ID(r) ((r)->passthrough ? "*" : (r)->id)

typedef struct llmux_config_s {
  void *data;                /* for the user */
  /* read-only */
  const char *path;          /* the main file as given */
  llmux_server_conf_t server;
  llmux_model_conf_t **models;       /* config order (files, then lines) */
  size_t nmodels;
  llmux_generic_conf_t **generics;
  size_t ngenerics;
  llmux_alias_conf_t **aliases;
  size_t naliases;
  llmux_profile_conf_t **profiles;
  size_t nprofiles;
  llmux_agent_conf_t **agents;
  size_t nagents;
  llmux_provider_conf_t **providers;
  size_t nproviders;
  llmux_route_conf_t **routes;
  size_t nroutes;
  llmux_tenant_conf_t **tenants;
  size_t ntenants;
  const char **files;                /* every file read, in load order */
  size_t nfiles;
  unsigned char (*file_sha256)[32];  /* SHA-256 of each file's bytes exactly as
                                        parsed, same order as files */
  /* private */
  struct llmux__arena_s *arena;
  struct llmux__registry_s *registry;
  void *reserved[4];
} llmux_config_t;

/* Loads `main_path` and every *.ini in its providers_dir (sorted by name),
 * applies LLMUX_LISTEN and LLMUX_PLUGIN_DIR, reads API keys with getenv and
 * builds the registry. Returns 0 and *out on success (warnings may have been
 * added to `diag`); LLMUX_ECONFIG with *out = NULL when any error was
 * reported; LLMUX_EINVAL for NULL arguments. `diag` may be NULL. */
int llmux_config_load(const char *main_path, llmux_config_t **out, llmux_diag_t *diag);
/* As llmux_config_load, but *out holds what was parsed even when errors
 * were reported (LLMUX_ECONFIG): `llmux check` goes on to check the
 * providers' plugins and keys, so one run reports every mistake. Such a
 * configuration is for diagnostics only. The caller frees *out. */
int llmux_config_load_partial(const char *main_path, llmux_config_t **out, llmux_diag_t *diag);
/* The i-th key the host reads in a [provider] section; NULL past the last. */
const char *llmux_config_provider_key(size_t i);
void llmux_config_free(llmux_config_t *cfg);
/* Private, for load.c: the files read and checked without the registry
 * (never NULL), and its release. */
llmux_config_t *llmux__config_parse(const char *main_path, llmux_diag_t *diag);
void llmux__config_free_parsed(llmux_config_t *cfg);

/* Lookups by exact name (case-insensitive), NULL when absent. */
const llmux_provider_conf_t *llmux_config_find_provider(const llmux_config_t *cfg,
                                                        const char *name);
const llmux_model_conf_t *llmux_config_find_model(const llmux_config_t *cfg,
                                                  const char *canonical_id);
const llmux_tenant_conf_t *llmux_config_find_tenant(const llmux_config_t *cfg,
                                                    const char *name);
/* The profile a tenant's requests for `agent` go through: the tenant's
 * `agent.NAME = PROFILE` override, else the agent's own profile. `tenant`
 * may be NULL. */
const llmux_profile_conf_t *llmux_tenant_agent_profile(const llmux_tenant_conf_t *tenant,
                                                       const llmux_agent_conf_t *agent);

const char *llmux_strategy_name(llmux_strategy_t s);
/* "tools,json": capability names joined by ','. */
int llmux_caps_format(unsigned caps, llmux_buf_t *out);

/* Private: the arena every snapshot string and struct lives in. */
void *llmux__arena_alloc(struct llmux__arena_s *a, size_t n);
char *llmux__arena_strdup(struct llmux__arena_s *a, const char *s);

#ifdef __cplusplus
}
#endif
#endif /* LLMUX_CONFIG_H */
