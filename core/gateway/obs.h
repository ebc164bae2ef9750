/* The gateway's metrics: every family /metrics exposes, declared once, and
 * the process gauges read at scrape time.
 *
 * Names follow OpenTelemetry's GenAI semantic conventions as Prometheus
 * exports them (dots to underscores, the unit `s` as `_seconds`), with the
 * conventions' advisory bucket boundaries; the gateway's own are prefixed
 * `llmux_`. Labels come from configuration only (endpoints, providers,
 * models, tenants, outcomes): never a request id or text from a client. */
#ifndef LLMUX_GATEWAY_OBS_H
#define LLMUX_GATEWAY_OBS_H

#include <stdint.h>

#include "base/metrics.h"

typedef struct llmux_obs_s {
  llmux_metrics_t *reg;
  /* OpenTelemetry GenAI */
  llmux_metric_t *token_usage;      /* op, provider, request model, response model, token type */
  llmux_metric_t *op_duration;      /* op, provider, request model, response model, error_type */
  llmux_metric_t *ttft;             /* op, provider, request model, response model */
  llmux_metric_t *tpot;             /* the same */
  /* gateway */
  llmux_metric_t *requests;         /* endpoint, status, tenant */
  llmux_metric_t *in_flight;
  llmux_metric_t *overhead;
  llmux_metric_t *attempts;         /* provider, model, outcome */
  llmux_metric_t *failovers;
  llmux_metric_t *retries;
  llmux_metric_t *route_state;      /* provider, model */
  llmux_metric_t *route_remaining;  /* provider, model, dimension */
  llmux_metric_t *route_latency;    /* provider, model */
  llmux_metric_t *tenant_tokens;    /* tenant, token_type */
  llmux_metric_t *tenant_cost;      /* tenant */
  llmux_metric_t *tenant_budget;    /* tenant */
  llmux_metric_t *cache;            /* result: hit, miss, bypass, store (gateway/cache.h) */
  /* process */
  llmux_metric_t *build_info;       /* version, abi */
  llmux_metric_t *generation;
  llmux_metric_t *reloads;          /* result */
  llmux_metric_t *connections;      /* state */
  llmux_metric_t *shared_errors;    /* component: [server] shared_state */
  llmux_metric_t *shared_up;        /* component */
  llmux_metric_t *rss, *cpu, *fds;
  /* series every request touches, looked up once */
  llmux_series_t *in_flight_s, *overhead_s, *failovers_s, *retries_s;
} llmux_obs_t;

/* Declares every family; the process collector is registered. 0 or
 * LLMUX_ENOMEM. */
int llmux_obs_init(llmux_obs_t *o, const char *version, const char *abi);
void llmux_obs_free(llmux_obs_t *o);

/* Buckets, as the conventions advise (seconds or tokens). */
extern const double llmux_obs_token_buckets[14];
extern const double llmux_obs_duration_buckets[14];
extern const double llmux_obs_ttft_buckets[16];
extern const double llmux_obs_tpot_buckets[13];
extern const double llmux_obs_overhead_buckets[12];

#endif
