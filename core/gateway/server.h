/* The running gateway: one libuv loop with the HTTP front door, the
 * upstream pool, and the configuration generation it serves (a reload makes
 * a new one current; requests keep the one they started in). */
#ifndef LLMUX_SERVER_H
#define LLMUX_SERVER_H

#include <uv.h>

#include "config/config.h"
#include "gateway/generation.h"
#include "gateway/logfile.h"
#include "gateway/obs.h"
#include "gateway/otlp.h"
#include "http/http_server.h"
#include "plugin/providers.h"
#include "route/ratelimit.h"
#include "route/router.h"
#include "tenant/tenant.h"
#include "net/upstream.h"
#include "tenant/usage.h"

/* A link in the gateway's list of requests in the proxy (proxy.c), embedded
 * in each; the drain reaches them through it. */
typedef struct llmux__proxy_link_s {
  struct llmux__proxy_link_s *prev, *next;
} llmux__proxy_link_t;

typedef struct llmux_gateway_s {
  void *data;
  /* public: after each successful POST /admin/reload; NULL: nothing. A
   * master's worker tells its master there, which has the other workers
   * reload (llmux_serve_worker). */
  void (*on_admin_reload)(struct llmux_gateway_s *gw);
  /* read-only */
  uv_loop_t *loop;
  llmux_generation_t *current; /* what new requests take (the gateway holds a
                                  reference); a request keeps its own */
  const llmux_config_t *cfg;   /* current->cfg: today's settings, for what is
                                  not a request's (a request reads its own
                                  generation's) */
  llmux_http_server_t http;
  /* What outlives generations (see generation.h), keyed by names: */
  llmux_upstream_t *up;        /* keep-alive pools, per origin */
  struct llmux_model_lists_s *model_lists; /* passthrough providers' model
                                  lists, by name (gateway/model_lists.h) */
  llmux_rl_store_t *rl;        /* route and provider limits */
  llmux_rl_store_t *tenant_rl; /* tenants' minute windows */
  llmux_route_table_t *routes; /* breakers, latency, in flight */
  llmux_provider_cache_t cache; /* plugins and TLS contexts */
  llmux_usage_store_t *usage;  /* per-tenant usage, persisted to usage_db */
  struct llmux_responses_store_s *responses; /* POST /v1/responses' records
                                  (gateway/responses_store.h) */
  struct llmux_cache_s *resp_cache; /* [server] cache (gateway/cache.h);
                                  NULL: off. From the first generation. */
  llmux_obs_t obs;             /* metrics (GET /metrics; gateway/reqlog.h) */
  llmux_logfile_t *access_log; /* [server] access_log; NULL: off */
  llmux_otlp_t *otlp;          /* [server] otlp_endpoint; NULL: off (gateway/trace.h) */
  /* [server] shared_state (gateway/fleet.h); NULL/0 without it: */
  int shared;                  /* rl and tenant_rl are the shared store */
  void *fleet_usage;           /* gateway/fleet_usage.c's state */
  void *fleet_cache;           /* gateway/fleet_cache.c's state (cache = redis) */
  void *fleet_breakers;        /* gateway/fleet_breakers.c's state */
  uint64_t generations;        /* number of the newest generation built */
  uint64_t started_us;
  uint64_t requests;           /* requests handled */
  uint64_t id_state;           /* request-id generator state */
  int draining;                /* SIGTERM/SIGINT seen: finishing what is in flight */
  /* private */
  char *config_path;           /* reloads read it; NULL: a borrowed snapshot */
  char *plugin_dir;            /* when the configuration names none */
  int keep_log_level;          /* -v: a reload leaves llmux_log_level alone */
  unsigned live_generations;   /* built and not yet freed: the close waits */
  int generations_closing;     /* the last one freed is a close step */
  uv_signal_t sighup;          /* reload (llmux_serve only, with sigint) */
  uv_signal_t sigusr1;         /* reopen the access log (llmux_serve only) */
  llmux_buf_t log_line;        /* each access-log line is built here */
  int answered_status;         /* the status of the last response head the
                                  front door sent (its on_status hook): what
                                  an endpoint that answers at once answered */
  uv_signal_t sigint, sigterm;
  int signals_live;            /* sigint/sigterm are open (llmux_serve only) */
  uv_timer_t drain_timer;      /* drain_timeout, then a short grace */
  int drain_timer_live;
  int drain_expired;           /* drain_timeout passed: requests were ended */
  llmux__proxy_link_t *proxies; /* requests in the proxy; NULL: none */
  void *spare_proxies[8];      /* finished ones kept for reuse (proxy.c) */
  unsigned nspare_proxies;
  int stopping;
  int close_pending;
  void (*close_cb)(struct llmux_gateway_s *gw);
} llmux_gateway_t;

/* Loads `config_path` (plugins from its plugin_dir, else `plugin_dir`),
 * prints its `file:line` diagnostics to stderr, and serves until
 * SIGINT/SIGTERM; SIGHUP reloads (llmux_gateway_reload), SIGUSR1 reopens
 * the access log (for rotation; a successful reload also does). `verbose`: keep
 * the log level the caller set rather than the configuration's. The first
 * stop signal drains: no new connection,
 * idle ones closed, requests in flight answered; after [server]
 * drain_timeout what still runs is ended (a stream with an SSE error event
 * `shutting_down`, a request not yet answered with 503). A second signal
 * stops at once. Returns 0 on a clean stop. */
int llmux_serve(const char *config_path, const char *plugin_dir, int verbose);
/* llmux_serve, in one of the worker processes of a master (cli/master.h):
 * the listener is bound with SO_REUSEPORT, beside the other workers' (the
 * kernel spreads connections among them); the first load prints only its
 * errors (the master printed the warnings once); `on_admin_reload` (may be
 * NULL) becomes the gateway's. */
int llmux_serve_worker(const char *config_path, const char *plugin_dir, int verbose,
                       void (*on_admin_reload)(llmux_gateway_t *gw));

/* Lower-level pieces, for tests that run a gateway on their own loop. */
/* A gateway serving one snapshot the caller keeps (borrowed until the
 * close callback; `llmux chat`): llmux_gateway_reload refuses. */
int llmux_gateway_init(llmux_gateway_t *gw, uv_loop_t *loop, const llmux_config_t *cfg,
                       llmux_providers_t *provs);
/* A gateway that loads `config_path` itself, and again on each reload.
 * Diagnostics (errors and warnings) go to diag; LLMUX_ECONFIG when the
 * configuration has errors. */
int llmux_gateway_open(llmux_gateway_t *gw, uv_loop_t *loop, const char *config_path,
                       const char *plugin_dir, llmux_diag_t *diag);
/* Loads the files again. A valid configuration becomes the current
 * generation at once (requests in flight finish on theirs); an invalid one
 * changes nothing: its errors go to diag and to the log as `file:line:
 * message` lines, and LLMUX_ECONFIG returns. LLMUX_EINVAL: this gateway
 * has no files (llmux_gateway_init) or is stopping. Runs on the loop and
 * blocks it while the files are read and plugins loaded: an operator's
 * action, not a request's. */
int llmux_gateway_reload(llmux_gateway_t *gw, llmux_diag_t *diag);
int llmux_gateway_listen(llmux_gateway_t *gw, const char *host, int port);
void llmux_gateway_close(llmux_gateway_t *gw, void (*cb)(llmux_gateway_t *gw));

#endif
