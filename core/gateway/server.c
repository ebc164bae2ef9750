#include "gateway/api.h"
#include "gateway/proxy.h"

#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/log.h"
#include "base/util.h"
#include "gateway/fleet.h"
#include "gateway/model_lists.h"
#include "gateway/responses_store.h"
#include "gateway/cache.h"
#include "gateway/scrape.h"
#include "shared/rl_shared.h"
#include "gateway/trace.h"
#include "llmux/provider.h"

#ifndef LLMUX_VERSION
#define LLMUX_VERSION "0.0.0"
#endif
#define STR_(x) #x
#define STR(x) STR_(x)
#define ABI_STRING STR(LLMUX_PROVIDER_ABI_MAJOR) "." STR(LLMUX_PROVIDER_ABI_MINOR)

/* ---- what outlives generations ------------------------------------------ */

/* The limit stores keep a key per route and tenant ever configured (one a
 * reload removes keeps its windows, should it come back): room for many
 * reloads' worth. A key costs memory only once made. */
#define RL_KEYS 16384
#define TENANT_RL_KEYS 4096

static int init_shared(llmux_gateway_t *gw) {
  int rc;
  llmux_provider_cache_init(&gw->cache);
  if ((rc = llmux_obs_init(&gw->obs, LLMUX_VERSION, ABI_STRING)) != 0) return rc;
  if ((rc = llmux_scrape_init(gw)) != 0) return rc;
  return llmux_route_table_new(&gw->routes);
}

/* The shared rate-limit store for [server] shared_state: one store, and
 * so one pair of Redis connections, for routes and tenants (tenant keys
 * are "tenant:NAME", which no provider name can be). It starts connecting
 * at once; until it is up it decides on its own counts (or refuses, when
 * failing closed). */
/* [server] shared_state's settings, the password read from the
 * environment. 0, or LLMUX_EINVAL (logged) when the variable is unset. */
static int fleet_conf(const llmux_server_conf_t *s, llmux_fleet_conf_t *fc) {
  memset(fc, 0, sizeof *fc);
  fc->url = s->shared_state;
  fc->prefix = s->shared_state_prefix;
  fc->fail_closed = s->shared_state_fail_closed;
  fc->timeout_ms = s->shared_state_timeout_ms > 60000 ? 60000
                   : s->shared_state_timeout_ms ? (unsigned)s->shared_state_timeout_ms : 1;
  if (s->shared_state_password_env == NULL) return 0;
  fc->password = getenv(s->shared_state_password_env);
  if (fc->password == NULL || *fc->password == '\0') {
    llmux_error("shared_state_password_env names %s, which is not set: export Redis's "
                "password there, or remove the key for a Redis without AUTH",
                s->shared_state_password_env);
    return LLMUX_EINVAL;
  }
  return 0;
}

static int open_shared_rl(llmux_gateway_t *gw, const llmux_server_conf_t *s) {
  llmux_rl_shared_options_t o;
  llmux_fleet_conf_t fc;
  char err[300];
  int rc;
  if ((rc = fleet_conf(s, &fc)) != 0) return rc;
  memset(&o, 0, sizeof o);
  o.url = s->shared_state;
  o.password = fc.password;
  o.prefix = s->shared_state_prefix;
  o.max_keys = RL_KEYS + TENANT_RL_KEYS;
  o.fail_closed = s->shared_state_fail_closed;
  o.refresh = 1; /* exact for sequential requests (rl_shared.h, Refreshing) */
  o.timeout_ms = fc.timeout_ms;
  rc = llmux_rl_shared_new(gw->loop, &o, &gw->rl, err, sizeof err);
  if (rc == 0) rc = llmux_rl_shared_start(gw->rl);
  if (rc != 0) {
    llmux_error("shared_state: %s", rc == LLMUX_EINVAL && *err ? err : llmux_strerror(rc));
    if (gw->rl != NULL) llmux_rl_store_destroy(gw->rl);
    gw->rl = NULL;
    return rc;
  }
  gw->tenant_rl = gw->rl;
  gw->shared = 1;
  llmux_info("shared state: %s (prefix %s, fail %s)", s->shared_state, s->shared_state_prefix,
             s->shared_state_fail_closed ? "closed" : "open");
  return 0;
}

/* The generations' prepare hook: the first configuration chooses the
 * limit stores, which then outlive every generation (a reload that
 * changes shared_state warns: restart-only). */
static int prepare_stores(void *arg, const llmux_config_t *cfg, llmux_rl_store_t **rl,
                          llmux_rl_store_t **tenant_rl) {
  llmux_gateway_t *gw = arg;
  int rc = 0;
  if (gw->rl == NULL) {
    if (cfg->server.shared_state != NULL) {
      rc = open_shared_rl(gw, &cfg->server);
    } else {
      rc = llmux_rl_memory_store_new(RL_KEYS, &gw->rl);
      if (rc == 0) rc = llmux_rl_memory_store_new(TENANT_RL_KEYS, &gw->tenant_rl);
    }
    if (rc != 0) return rc;
  }
  *rl = gw->rl;
  *tenant_rl = gw->tenant_rl;
  return 0;
}

/* After the last generation and the upstream pool: plugins are closed
 * only once no instance is left, TLS contexts once no connection is. (A
 * shared store lets go of its connections here; the loop frees the rest.) */
static void free_shared(llmux_gateway_t *gw) {
  llmux_route_table_free(gw->routes);
  if (gw->tenant_rl && gw->tenant_rl != gw->rl) llmux_rl_store_destroy(gw->tenant_rl);
  if (gw->rl) llmux_rl_store_destroy(gw->rl);
  llmux_provider_cache_free(&gw->cache);
  llmux_obs_free(&gw->obs);
  llmux_buf_free(&gw->log_line);
  llmux__proxy_spares_free(gw);
  free(gw->config_path);
  free(gw->plugin_dir);
  gw->routes = NULL;
  gw->rl = gw->tenant_rl = NULL;
  gw->config_path = gw->plugin_dir = NULL;
}

static const llmux_gen_shared_t *shared_of(llmux_gateway_t *gw, llmux_gen_shared_t *sh) {
  sh->routes = gw->routes;
  sh->rl = gw->rl;
  sh->tenant_rl = gw->tenant_rl;
  sh->cache = &gw->cache;
  sh->prepare = prepare_stores;
  sh->prepare_arg = gw;
  return sh;
}

static void close_step(llmux_gateway_t *gw);

/* The last request of an old generation ended, or the gateway let go of
 * the current one while closing. */
static void on_generation_freed(llmux_generation_t *gen) {
  llmux_gateway_t *gw = gen->data;
  if (--gw->live_generations == 0 && gw->generations_closing) close_step(gw);
}

/* Makes `gen` current, taking over its builder's reference; the previous
 * one lives on while requests hold it. */
static void set_current(llmux_gateway_t *gw, llmux_generation_t *gen) {
  llmux_generation_t *old = gw->current;
  gen->data = gw;
  gen->on_free = on_generation_freed;
  gw->live_generations++;
  gw->generations = gen->number;
  gw->current = gen;
  gw->cfg = gen->cfg;
  if (old != NULL) llmux_generation_unref(old);
}

static void drop_current(llmux_gateway_t *gw) {
  llmux_generation_t *gen = gw->current;
  gw->current = NULL;
  gw->cfg = NULL;
  if (gen != NULL) llmux_generation_unref(gen);
}

/* ---- the access log ------------------------------------------------------- */

/* The memory goes once the last line is written; `data` is the gateway
 * when the close was one of its close steps. */
static void on_log_closed(llmux_logfile_t *lf) {
  llmux_gateway_t *gw = lf->data;
  free(lf);
  if (gw != NULL) close_step(gw);
}

/* `path` ("stdout" or a file) opened for the access log; NULL and an error
 * logged when it cannot be. */
static llmux_logfile_t *log_open(llmux_gateway_t *gw, const char *path) {
  llmux_logfile_t *lf = llmux_xmalloc(sizeof *lf);
  int rc = llmux_logfile_open(lf, gw->loop, path, 0, 0, 0);
  if (rc != 0) {
    llmux_error("cannot open the access log %s: %s", path, uv_strerror(rc)); /* libuv's */
    free(lf);
    return NULL;
  }
  return lf;
}

/* Writes what is pending, then closes; `step`: a step of the gateway's close. */
static void log_close(llmux_gateway_t *gw, llmux_logfile_t *lf, int step) {
  lf->data = step ? gw : NULL;
  if (step) gw->close_pending++;
  llmux_logfile_close(lf, on_log_closed);
}

/* After a reload: the same file is opened again (as on SIGUSR1: a rotated
 * file is let go), another one replaces it, "off" closes it. A new file that
 * cannot be opened leaves the old one in use. */
static void log_reload(llmux_gateway_t *gw) {
  const char *path = gw->cfg->server.access_log;
  llmux_logfile_t *old = gw->access_log, *lf = NULL;
  if (old != NULL && path != NULL && strcmp(old->path, path) == 0) {
    llmux_logfile_reopen(old);
    return;
  }
  if (path != NULL && (lf = log_open(gw, path)) == NULL) return;
  gw->access_log = lf;
  if (old != NULL) log_close(gw, old, 0);
  if (lf != NULL) llmux_info("access log: %s", path);
}

static void on_sigusr1(uv_signal_t *h, int signum) {
  llmux_gateway_t *gw = h->data;
  (void)signum;
  if (gw->access_log == NULL) return;
  llmux_info("received SIGUSR1: reopening the access log %s", gw->access_log->path);
  llmux_logfile_reopen(gw->access_log);
}

/* ---- start ---------------------------------------------------------------- */

static void reset(llmux_gateway_t *gw, uv_loop_t *loop) {
  memset(gw, 0, sizeof *gw);
  gw->loop = loop;
  gw->started_us = llmux_now_us();
  gw->id_state = gw->started_us ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;
}

/* Stored responses (POST /v1/responses): responses_db, else beside usage_db,
 * else in memory only. */
static int open_responses(llmux_gateway_t *gw, const llmux_server_conf_t *s, char *err,
                          size_t errlen) {
  llmux_responses_opts_t o;
  char path[4096];
  memset(&o, 0, sizeof o);
  o.ttl_ms = s->responses_ttl_ms;
  o.max_memory = s->responses_max_memory;
  o.db_path = s->responses_db;
  if (o.db_path == NULL && s->usage_db != NULL) {
    snprintf(path, sizeof path, "%s.responses", s->usage_db);
    o.db_path = path;
  }
  return llmux_responses_open(gw->loop, &o, &gw->responses, err, errlen);
}

/* The front door and usage, from the first generation's [server]: a reload
 * does not change them (see warn_restart_only). The database is opened
 * (and this month's rows loaded) before the gateway listens: a blocking
 * start-up step. */
static int init_front(llmux_gateway_t *gw) {
  const llmux_server_conf_t *s = &gw->cfg->server;
  llmux_http_options_t opts;
  char err[512];
  int rc;
  if (s->access_log != NULL && (gw->access_log = log_open(gw, s->access_log)) == NULL)
    return LLMUX_EIO;
  rc = llmux_usage_open(gw->loop, s->usage_db, llmux_usage_today(), &gw->usage, err,
                        sizeof err);
  if (rc == 0) rc = open_responses(gw, s, err, sizeof err);
  if (rc == 0 && s->cache != LLMUX_CACHE_OFF &&
      (rc = llmux_cache_new(s->cache_size, s->cache_ttl_ms, &gw->resp_cache)) != 0)
    snprintf(err, sizeof err, "the response cache: out of memory");
  if (rc != 0) {
    llmux_error("%s", err);
    return rc;
  }
  memset(&opts, 0, sizeof opts);
  opts.max_header = s->max_header;
  opts.max_body = s->max_body;
  opts.header_timeout_ms = s->header_timeout_ms;
  opts.idle_timeout_ms = s->idle_timeout_ms;
  opts.max_connections = s->max_connections > UINT_MAX ? UINT_MAX : (unsigned)s->max_connections;
  opts.max_memory = (size_t)s->max_memory;
  opts.on_head = llmux_api_on_head;
  opts.on_request = llmux_api_on_request;
  opts.on_status = llmux_api_on_status;
  rc = llmux_http_server_init(gw->loop, &gw->http, &opts);
  gw->http.data = gw;
  return rc;
}

/* Usage and breakers through the shared state, once the usage store and
 * the route table exist (the rate-limit store came with the first
 * generation). */
static int start_fleet(llmux_gateway_t *gw) {
  llmux_fleet_conf_t fc;
  int rc = fleet_conf(&gw->cfg->server, &fc);
  if (rc == 0) rc = llmux_fleet_usage_start(gw, &fc);
  if (rc == 0) rc = llmux_fleet_breakers_start(gw, &fc);
  if (rc == 0) rc = llmux_fleet_responses_start(gw, &fc);
  if (rc == 0 && gw->cfg->server.cache == LLMUX_CACHE_REDIS)
    rc = llmux_fleet_cache_start(gw, &fc, gw->cfg->server.cache_ttl_ms);
  return rc;
}

/* Everything after the first generation (rc: how making it went); on a
 * failure, undoes it all. The front door's listener handle closes on the
 * loop: the caller runs it once before closing the loop. */
static int start(llmux_gateway_t *gw, int rc) {
  llmux_upstream_options_t uo;
  int front = rc == 0 && (rc = init_front(gw)) == 0;
  memset(&uo, 0, sizeof uo);
  uo.data = gw;
  if (rc == 0) rc = llmux_upstream_new(gw->loop, &uo, &gw->up);
  if (rc == 0 && gw->shared) rc = start_fleet(gw);
  if (rc == 0) {
    llmux_trace_open(gw); /* best effort: a failure is logged, requests go on */
    /* Best effort too: without lists, bare ids are not passed through. */
    gw->model_lists = llmux_model_lists_new(gw->up);
    llmux_model_lists_refresh(gw->model_lists, gw->current);
    return 0;
  }
  if (gw->fleet_usage) llmux_fleet_usage_close(gw, NULL);
  if (gw->fleet_breakers) llmux_fleet_breakers_close(gw, NULL);
  if (gw->responses && llmux_responses_remote(gw->responses))
    llmux_fleet_responses_close(gw, NULL);
  llmux_fleet_cache_close(gw, NULL);
  if (front) llmux_http_server_close(&gw->http, NULL);
  if (gw->usage) llmux_usage_close(gw->usage, NULL, NULL);
  gw->usage = NULL;
  llmux_responses_close(gw->responses);
  gw->responses = NULL;
  llmux_cache_free(gw->resp_cache);
  gw->resp_cache = NULL;
  if (gw->access_log) log_close(gw, gw->access_log, 0);
  gw->access_log = NULL;
  drop_current(gw);
  free_shared(gw);
  return rc;
}

int llmux_gateway_init(llmux_gateway_t *gw, uv_loop_t *loop, const llmux_config_t *cfg,
                       llmux_providers_t *provs) {
  llmux_gen_shared_t sh;
  llmux_generation_t *gen = NULL;
  int rc;
  reset(gw, loop);
  rc = init_shared(gw);
  if (rc == 0) rc = llmux_generation_new(shared_of(gw, &sh), cfg, provs, 1, &gen);
  if (rc == 0) set_current(gw, gen);
  return start(gw, rc);
}

int llmux_gateway_open(llmux_gateway_t *gw, uv_loop_t *loop, const char *config_path,
                       const char *plugin_dir, llmux_diag_t *diag) {
  llmux_gen_shared_t sh;
  llmux_generation_t *gen = NULL;
  int rc;
  reset(gw, loop);
  gw->config_path = llmux_xstrdup(config_path);
  gw->plugin_dir = llmux_xstrdup(plugin_dir);
  rc = init_shared(gw);
  if (rc == 0)
    rc = llmux_generation_load(shared_of(gw, &sh), config_path, plugin_dir, 1, diag, &gen);
  if (rc == 0) set_current(gw, gen);
  return start(gw, rc);
}

int llmux_gateway_listen(llmux_gateway_t *gw, const char *host, int port) {
  return llmux_http_server_listen(&gw->http, host, port);
}

/* ---- reload --------------------------------------------------------------- */

static int str_same(const char *a, const char *b) {
  return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* [server] keys read once, at start-up: a reload that changes one says so. */
static void warn_restart_only(const llmux_server_conf_t *was, const llmux_server_conf_t *now) {
  static const struct { const char *key; size_t off; } nums[] = {
    {"max_body", offsetof(llmux_server_conf_t, max_body)},
    {"max_header", offsetof(llmux_server_conf_t, max_header)},
    {"max_connections", offsetof(llmux_server_conf_t, max_connections)},
    {"max_memory", offsetof(llmux_server_conf_t, max_memory)},
    {"header_timeout", offsetof(llmux_server_conf_t, header_timeout_ms)},
    {"idle_timeout", offsetof(llmux_server_conf_t, idle_timeout_ms)},
  };
  size_t i;
  for (i = 0; i < LLMUX_COUNTOF(nums); i++) {
    if (*(const uint64_t *)((const char *)was + nums[i].off) !=
        *(const uint64_t *)((const char *)now + nums[i].off))
      llmux_warn("reload: [server] %s changed: it takes effect at the next restart",
                 nums[i].key);
  }
  if (strcmp(was->host, now->host) != 0 || was->port != now->port)
    llmux_warn("reload: [server] listen changed: it takes effect at the next restart");
  if ((was->usage_db == NULL) != (now->usage_db == NULL) ||
      (was->usage_db && strcmp(was->usage_db, now->usage_db) != 0))
    llmux_warn("reload: [server] usage_db changed: it takes effect at the next restart");
  if (!str_same(was->shared_state, now->shared_state) ||
      !str_same(was->shared_state_prefix, now->shared_state_prefix) ||
      !str_same(was->shared_state_password_env, now->shared_state_password_env) ||
      was->shared_state_fail_closed != now->shared_state_fail_closed ||
      was->shared_state_timeout_ms != now->shared_state_timeout_ms)
    llmux_warn("reload: [server] shared_state settings changed: they take effect at the next "
               "restart");
  if (was->workers != now->workers)
    llmux_warn("reload: [server] workers changed: it takes effect at the next restart");
}

/* Logs the entries a reload added to diag, from `from` on: errors at
 * error level, warnings at warn level, as `file:line: message`. */
static void log_diag(const llmux_diag_t *diag, size_t from) {
  llmux_buf_t line = {0};
  size_t i;
  for (i = from; i < diag->len; i++) {
    line.len = 0;
    if (llmux_diag_format(&diag->items[i], &line) != 0) continue;
    if (diag->items[i].severity == LLMUX_DIAG_ERROR) llmux_error("%s", line.base);
    else llmux_warn("%s", line.base);
  }
  llmux_buf_free(&line);
}

int llmux_gateway_reload(llmux_gateway_t *gw, llmux_diag_t *diag) {
  llmux_gen_shared_t sh;
  llmux_generation_t *gen;
  size_t from = diag->len;
  if (gw->config_path == NULL || gw->stopping || gw->draining) return LLMUX_EINVAL;
  if (llmux_generation_load(shared_of(gw, &sh), gw->config_path, gw->plugin_dir,
                            gw->generations + 1, diag, &gen) != 0) {
    llmux_series_add(llmux_metric_series3(gw->obs.reloads, "failure", NULL, NULL), 1);
    log_diag(diag, from);
    llmux_error("reload of %s failed: the configuration has errors; generation %llu still "
                "serves", gw->config_path, (unsigned long long)gw->generations);
    return LLMUX_ECONFIG;
  }
  warn_restart_only(&gw->cfg->server, &gen->cfg->server);
  llmux_trace_reload(gw, gen->cfg); /* compares with the current one: before set_current */
  set_current(gw, gen);
  llmux_model_lists_refresh(gw->model_lists, gen);
  llmux_series_add(llmux_metric_series3(gw->obs.reloads, "success", NULL, NULL), 1);
  if (!gw->keep_log_level) llmux_log_level = gen->cfg->server.log_level;
  log_reload(gw);
  log_diag(diag, from);
  llmux_log(LLMUX_LOG_INFO | LLMUX_LOG_ALWAYS,
            "reloaded %s: generation %llu (%zu files, %zu models, %zu routes)",
            gw->config_path, (unsigned long long)gen->number, gen->cfg->nfiles,
            gen->cfg->nmodels, gen->cfg->nroutes);
  return 0;
}

static void on_sighup(uv_signal_t *h, int signum) {
  llmux_gateway_t *gw = h->data;
  llmux_diag_t diag;
  (void)signum;
  if (gw->stopping || gw->draining) {
    llmux_warn("received SIGHUP while stopping: not reloading");
    return;
  }
  llmux_info("received SIGHUP: reloading %s", gw->config_path);
  llmux_diag_init(&diag);
  llmux_gateway_reload(gw, &diag);
  llmux_diag_free(&diag);
}

/* ---- close ---------------------------------------------------------------- */

/* Before the upstream pool closes: fetches in flight are cancelled. */
static void close_model_lists(llmux_gateway_t *gw) {
  llmux_model_lists_free(gw->model_lists);
  gw->model_lists = NULL;
}

static void close_step(llmux_gateway_t *gw) {
  if (--gw->close_pending > 0) return;
  free_shared(gw);
  if (gw->close_cb) gw->close_cb(gw);
}

static void on_usage_closed(llmux_usage_store_t *s, void *arg) {
  (void)s;
  close_step(arg);
}

static void close_usage(llmux_gateway_t *gw) {
  if (gw->usage == NULL) return;
  gw->close_pending++;
  llmux_usage_close(gw->usage, on_usage_closed, gw);
  gw->usage = NULL;
}

static void on_fleet_usage_closed(llmux_gateway_t *gw) {
  close_usage(gw);
  close_step(gw);
}

static void on_upstream_closed(llmux_upstream_t *up) {
  close_step(llmux_upstream_data(up));
}

static void close_upstream(llmux_gateway_t *gw) {
  llmux_upstream_t *up = gw->up;
  gw->up = NULL;
  llmux_upstream_close(up, on_upstream_closed);
}

/* The trace exporter sent its last spans through the pool: now the pool. */
static void on_trace_closed(void *arg) {
  close_upstream(arg);
}

static void on_http_closed(llmux_http_server_t *srv) {
  llmux_gateway_t *gw = srv->data;
  /* The front door first: aborting client requests cancelled their upstream
   * requests, so the pool now closes with nothing running; its TLS sessions
   * are gone when it calls back. Only the trace exporter may still send
   * through it: its last batch goes first (2 s at most). */
  gw->close_pending++;
  if (!llmux_trace_close(gw, on_trace_closed, gw)) close_upstream(gw);
  /* Every request is finished and logged: the access log's last lines go
   * out before it closes. */
  if (gw->access_log) {
    log_close(gw, gw->access_log, 1);
    gw->access_log = NULL;
  }
  /* Every request is finished and counted: the fleet gets the last usage
   * first (rows may still arrive from it until it is closed), then the
   * store writes it, on this thread, so a clean stop loses nothing. */
  if (gw->fleet_usage) {
    gw->close_pending++;
    llmux_fleet_usage_close(gw, on_fleet_usage_closed);
  } else {
    close_usage(gw);
  }
  /* Every request is finished: what they stored goes to Redis and disk. */
  if (gw->shared) {
    gw->close_pending++;
    llmux_fleet_responses_close(gw, close_step);
  }
  if (gw->fleet_cache) {
    gw->close_pending++;
    llmux_fleet_cache_close(gw, close_step);
  }
  llmux_responses_close(gw->responses);
  gw->responses = NULL;
  llmux_cache_free(gw->resp_cache);
  gw->resp_cache = NULL;
  /* The breakers' fleet lets go of the route table before it is freed. */
  if (gw->fleet_breakers) {
    gw->close_pending++;
    llmux_fleet_breakers_close(gw, close_step);
  }
  /* A request whose backoff timer is still closing holds its generation:
   * the shared state goes once the last generation has. */
  gw->close_pending++;
  gw->generations_closing = 1;
  drop_current(gw); /* the last generation's on_free steps */
  close_step(gw);
}

/* ---- stopping: the drain (first SIGTERM/SIGINT) and the hard close ------ */

/* After drain_timeout ended what still ran, connections get this long to
 * take their last bytes (the SSE error event) before they are cut. */
#define DRAIN_GRACE_MS 2000

/* The handles only the stopping needs; gone once the gateway closes, so
 * that uv_run() can return. */
static void close_stop_handles(llmux_gateway_t *gw) {
  if (gw->signals_live) {
    gw->signals_live = 0;
    uv_close((uv_handle_t *)&gw->sigint, NULL);
    uv_close((uv_handle_t *)&gw->sigterm, NULL);
    uv_close((uv_handle_t *)&gw->sighup, NULL);
    uv_close((uv_handle_t *)&gw->sigusr1, NULL);
  }
  if (gw->drain_timer_live) {
    gw->drain_timer_live = 0;
    uv_close((uv_handle_t *)&gw->drain_timer, NULL);
  }
}

/* The hard stop: requests in flight are aborted (their upstream requests
 * cancelled), then the pool and the usage store close. Also ends a drain. */
void llmux_gateway_close(llmux_gateway_t *gw, void (*cb)(llmux_gateway_t *gw)) {
  if (gw->stopping) return;
  gw->stopping = 1;
  close_stop_handles(gw);
  close_model_lists(gw);
  gw->close_cb = cb;
  gw->close_pending = 1;
  llmux_http_server_close(&gw->http, on_http_closed);
}

/* Every connection finished by itself: the front door is closed, and the
 * rest closes as after llmux_gateway_close. */
static void on_http_drained(llmux_http_server_t *srv, int status) {
  llmux_gateway_t *gw = srv->data;
  if (status != 0) return; /* llmux_gateway_close cut it short: on_http_closed follows */
  llmux_log(LLMUX_LOG_INFO | LLMUX_LOG_ALWAYS, "drained: every connection is closed");
  gw->stopping = 1;
  close_stop_handles(gw);
  close_model_lists(gw);
  gw->close_pending = 1;
  on_http_closed(srv);
}

/* drain_timeout passed: end what still runs (streams with an SSE error
 * event, the rest with 503), then give the connections a grace to take it;
 * the second time, cut them. */
static void on_drain_timer(uv_timer_t *t) {
  llmux_gateway_t *gw = t->data;
  size_t n;
  if (gw->drain_expired) {
    llmux_warn("connections still open %d ms after drain_timeout: closing them",
               DRAIN_GRACE_MS);
    llmux_gateway_close(gw, NULL);
    return;
  }
  gw->drain_expired = 1;
  n = llmux_proxy_shutdown_all(gw);
  llmux_warn("drain_timeout reached: ended %zu request%s still in flight", n, n == 1 ? "" : "s");
  uv_timer_start(&gw->drain_timer, on_drain_timer, DRAIN_GRACE_MS, 0);
}

/* Requests in flight keep the upstream pool, router and usage store they
 * started with: nothing closes before the drain ends. */
static void drain_start(llmux_gateway_t *gw) {
  gw->draining = 1; /* GET /health/ready answers 503 from now on */
  if (llmux_http_server_drain(&gw->http, on_http_drained) != 0) return; /* already closing */
  uv_timer_init(gw->loop, &gw->drain_timer);
  gw->drain_timer.data = gw;
  gw->drain_timer_live = 1;
  uv_timer_start(&gw->drain_timer, on_drain_timer, gw->cfg->server.drain_timeout_ms, 0);
}

static void on_signal(uv_signal_t *h, int signum) {
  llmux_gateway_t *gw = h->data;
  const char *name = signum == SIGINT ? "SIGINT" : "SIGTERM";
  if (gw->stopping) return;
  if (gw->draining) {
    llmux_log(LLMUX_LOG_INFO | LLMUX_LOG_ALWAYS, "received %s again: stopping now", name);
    llmux_gateway_close(gw, NULL);
    return;
  }
  llmux_log(LLMUX_LOG_INFO | LLMUX_LOG_ALWAYS,
            "received %s: draining: no new connections, up to %llu ms for the requests in "
            "flight (send it again to stop now)",
            name, (unsigned long long)gw->cfg->server.drain_timeout_ms);
  drain_start(gw);
}

static void log_start(const llmux_gateway_t *gw) {
  size_t i, enabled = 0;
  for (i = 0; i < gw->cfg->nproviders; i++) enabled += gw->cfg->providers[i]->enabled != 0;
  llmux_log(LLMUX_LOG_INFO | LLMUX_LOG_ALWAYS, "llmux listening on http://%s%s%s:%d (%zu models, %zu of %zu providers enabled, %zu tenant%s, usage_db %s)",
             strchr(gw->cfg->server.host, ':') ? "[" : "", gw->cfg->server.host,
             strchr(gw->cfg->server.host, ':') ? "]" : "", gw->http.port, gw->cfg->nmodels,
             enabled, gw->cfg->nproviders, gw->cfg->ntenants, gw->cfg->ntenants == 1 ? "" : "s",
             gw->cfg->server.usage_db ? gw->cfg->server.usage_db : "none");
  if (gw->cfg->ntenants == 0)
    llmux_warn("no [tenant] is configured: llmux runs open, every endpoint answers without "
               "an API key (fine for local use; `llmux key new NAME` makes a key)");
  else if (gw->cfg->server.usage_db == NULL)
    llmux_warn("usage_db is not set in [server]: tenant usage and daily quotas are kept in "
               "memory only and start again from zero after a restart");
  if (enabled == 0)
    llmux_warn("no provider is enabled: set the API key variables the provider files name "
               "(api_key_env), e.g. GROQ_API_KEY");
}

/* Errors only: a master's worker, whose master printed the warnings. */
static void print_errors(const llmux_diag_t *diag) {
  llmux_buf_t line = {0};
  size_t i;
  for (i = 0; i < diag->len; i++) {
    line.len = 0;
    if (diag->items[i].severity != LLMUX_DIAG_ERROR ||
        llmux_diag_format(&diag->items[i], &line) != 0)
      continue;
    fprintf(stderr, "%s\n", line.base);
  }
  llmux_buf_free(&line);
}

/* The first load, as `llmux check` reports one: every diagnostic on
 * stderr (`warnings` 0: the errors only), then how many errors. */
static int open_reporting(llmux_gateway_t *gw, uv_loop_t *loop, const char *config_path,
                          const char *plugin_dir, int warnings) {
  llmux_diag_t diag;
  int rc;
  llmux_diag_init(&diag);
  rc = llmux_gateway_open(gw, loop, config_path, plugin_dir, &diag);
  if (warnings) llmux_diag_print(&diag, stderr);
  else print_errors(&diag);
  if (rc == LLMUX_ECONFIG)
    fprintf(stderr, "llmux: %zu error%s in the configuration (%s)\n", diag.errors,
            diag.errors == 1 ? "" : "s", config_path);
  else if (rc != 0)
    llmux_error("cannot start: %s", llmux_strerror(rc));
  llmux_diag_free(&diag);
  return rc;
}

/* llmux_serve; `worker`: as a master's worker (llmux_serve_worker). */
static int serve(const char *config_path, const char *plugin_dir, int verbose, int worker,
                 void (*on_admin_reload)(llmux_gateway_t *gw)) {
  const llmux_config_t *cfg;
  llmux_gateway_t gw;
  uv_loop_t loop;
  int rc;
  signal(SIGPIPE, SIG_IGN);
  if ((rc = uv_loop_init(&loop)) != 0) {
    llmux_error("cannot start the event loop: %s", uv_strerror(rc)); /* libuv's code */
    return LLMUX_EIO;
  }
  rc = open_reporting(&gw, &loop, config_path, plugin_dir, !worker);
  if (rc != 0) {
    uv_run(&loop, UV_RUN_DEFAULT); /* what a failed start left closing */
    uv_loop_close(&loop);
    return rc;
  }
  gw.keep_log_level = verbose;
  gw.on_admin_reload = on_admin_reload;
  if (!verbose) llmux_log_level = gw.cfg->server.log_level;
  cfg = gw.cfg;
  rc = llmux_http_server_listen_ex(&gw.http, cfg->server.host, cfg->server.port,
                                   worker ? LLMUX_HTTP_REUSEPORT : 0);
  if (rc != 0) {
    llmux_error("cannot listen on %s: %s", cfg->server.listen, llmux_strerror(rc));
    llmux_gateway_close(&gw, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return rc;
  }
  uv_signal_init(&loop, &gw.sigint);
  uv_signal_init(&loop, &gw.sigterm);
  uv_signal_init(&loop, &gw.sighup);
  uv_signal_init(&loop, &gw.sigusr1);
  gw.sigint.data = gw.sigterm.data = gw.sighup.data = gw.sigusr1.data = &gw;
  gw.signals_live = 1;
  uv_signal_start(&gw.sigint, on_signal, SIGINT);
  uv_signal_start(&gw.sigterm, on_signal, SIGTERM);
  uv_signal_start(&gw.sighup, on_sighup, SIGHUP);
  uv_signal_start(&gw.sigusr1, on_sigusr1, SIGUSR1);
  log_start(&gw);
  uv_run(&loop, UV_RUN_DEFAULT);
  rc = uv_loop_close(&loop);
  if (rc != 0) llmux_warn("event loop closed with handles open: %s", uv_strerror(rc));
  llmux_info("stopped after %llu requests", (unsigned long long)gw.requests);
  return 0;
}

int llmux_serve(const char *config_path, const char *plugin_dir, int verbose) {
  return serve(config_path, plugin_dir, verbose, 0, NULL);
}

int llmux_serve_worker(const char *config_path, const char *plugin_dir, int verbose,
                       void (*on_admin_reload)(llmux_gateway_t *gw)) {
  return serve(config_path, plugin_dir, verbose, 1, on_admin_reload);
}
