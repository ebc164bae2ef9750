/* The families /metrics exposes, and the process gauges. */
#include "gateway/obs.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "llmux/common.h"

/* gen_ai.client.token.usage */
const double llmux_obs_token_buckets[14] = {1,      4,       16,      64,       256,
                                            1024,   4096,    16384,   65536,    262144,
                                            1048576, 4194304, 16777216, 67108864};
/* gen_ai.client.operation.duration */
const double llmux_obs_duration_buckets[14] = {0.01, 0.02, 0.04, 0.08,  0.16,  0.32,  0.64,
                                               1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92};
/* gen_ai.server.time_to_first_token */
const double llmux_obs_ttft_buckets[16] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                           0.25,  0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0};
/* gen_ai.server.time_per_output_token */
const double llmux_obs_tpot_buckets[13] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                           0.3,  0.4,   0.5,  0.75,  1.0, 2.5};
/* What llmux adds to a request: from 5 µs up. */
const double llmux_obs_overhead_buckets[12] = {5e-6,   1e-5,   2.5e-5, 5e-5, 1e-4, 2.5e-4,
                                               5e-4,   1e-3,   2.5e-3, 5e-3, 1e-2, 5e-2};

static const char *const genai_labels[] = {"gen_ai_operation_name", "gen_ai_provider_name",
                                           "gen_ai_request_model", "gen_ai_response_model",
                                           "gen_ai_token_type"};
static const char *const genai_err_labels[] = {"gen_ai_operation_name", "gen_ai_provider_name",
                                               "gen_ai_request_model", "gen_ai_response_model",
                                               "error_type"};
static const char *const request_labels[] = {"endpoint", "status", "tenant"};
static const char *const attempt_labels[] = {"provider", "model", "outcome"};
static const char *const route_labels[] = {"provider", "model", "dimension"};
static const char *const tenant_labels[] = {"tenant", "token_type"};
static const char *const build_labels[] = {"version", "abi"};
static const char *const result_labels[] = {"result"};
static const char *const state_labels[] = {"state"};
static const char *const component_labels[] = {"component"};

static long page_size(void) {
  long p = sysconf(_SC_PAGESIZE);
  return p > 0 ? p : 4096;
}

static void collect_process(llmux_metrics_t *m, void *arg) {
  llmux_obs_t *o = arg;
  struct rusage ru;
  unsigned long size = 0, resident = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  DIR *d;
  double fds = 0;
  (void)m;
  if (f != NULL) {
    if (fscanf(f, "%lu %lu", &size, &resident) == 2)
      llmux_series_set(llmux_metric_series(o->rss, NULL), (double)resident * (double)page_size());
    fclose(f);
  }
  if (getrusage(RUSAGE_SELF, &ru) == 0)
    llmux_series_set(llmux_metric_series(o->cpu, NULL),
                     (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
                         ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6);
  if ((d = opendir("/proc/self/fd")) != NULL) {
    struct dirent *e;
    while ((e = readdir(d)) != NULL) fds += e->d_name[0] != '.';
    closedir(d);
    llmux_series_set(llmux_metric_series(o->fds, NULL), fds - 1); /* less opendir's own */
  }
}

#define DECL(field, type, name, help, labels, n, b, nb)                                  \
  do {                                                                                    \
    if ((o->field = llmux_metrics_declare(o->reg, type, name, help, labels, n, b, nb)) == \
        NULL)                                                                             \
      goto fail;                                                                          \
  } while (0)

static int declare_genai(llmux_obs_t *o) {
  DECL(token_usage, LLMUX_METRIC_HISTOGRAM, "gen_ai_client_token_usage",
       "Number of input and output tokens used.", genai_labels, 5, llmux_obs_token_buckets, 14);
  DECL(op_duration, LLMUX_METRIC_HISTOGRAM, "gen_ai_client_operation_duration_seconds",
       "GenAI operation duration.", genai_err_labels, 5, llmux_obs_duration_buckets, 14);
  DECL(ttft, LLMUX_METRIC_HISTOGRAM, "gen_ai_server_time_to_first_token_seconds",
       "Time to generate first token for successful responses.", genai_labels, 4,
       llmux_obs_ttft_buckets, 16);
  DECL(tpot, LLMUX_METRIC_HISTOGRAM, "gen_ai_server_time_per_output_token_seconds",
       "Time per output token generated after the first token for successful responses.",
       genai_labels, 4, llmux_obs_tpot_buckets, 13);
  return 0;
fail:
  return LLMUX_ENOMEM;
}

static int declare_gateway(llmux_obs_t *o) {
  DECL(requests, LLMUX_METRIC_COUNTER, "llmux_requests_total",
       "Requests answered, by endpoint, HTTP status and tenant.", request_labels, 3, NULL, 0);
  DECL(in_flight, LLMUX_METRIC_GAUGE, "llmux_requests_in_flight",
       "Requests being handled.", NULL, 0, NULL, 0);
  DECL(overhead, LLMUX_METRIC_HISTOGRAM, "llmux_overhead_seconds",
       "Time a request spent inside llmux itself (x-llmux-overhead-us).", NULL, 0,
       llmux_obs_overhead_buckets, 12);
  DECL(attempts, LLMUX_METRIC_COUNTER, "llmux_upstream_attempts_total",
       "Upstream attempts by route and outcome.", attempt_labels, 3, NULL, 0);
  DECL(failovers, LLMUX_METRIC_COUNTER, "llmux_failovers_total",
       "Attempts moved on to another route after a failure.", NULL, 0, NULL, 0);
  DECL(retries, LLMUX_METRIC_COUNTER, "llmux_retries_total",
       "Attempts that retried the same route after a backoff.", NULL, 0, NULL, 0);
  DECL(route_state, LLMUX_METRIC_GAUGE, "llmux_route_state",
       "Breaker state per route: 0 closed, 1 half-open, 2 open.", route_labels, 2, NULL, 0);
  DECL(route_remaining, LLMUX_METRIC_GAUGE, "llmux_route_remaining",
       "What the limit store thinks is left per route and dimension.", route_labels, 3, NULL,
       0);
  DECL(route_latency, LLMUX_METRIC_GAUGE, "llmux_route_latency_seconds",
       "Decaying average time to first byte per route, as the router sees it.", route_labels,
       2, NULL, 0);
  DECL(tenant_tokens, LLMUX_METRIC_COUNTER, "llmux_tenant_tokens_total",
       "Tokens used per tenant and token type.", tenant_labels, 2, NULL, 0);
  DECL(tenant_cost, LLMUX_METRIC_COUNTER, "llmux_tenant_cost_usd_total",
       "Cost in USD per tenant, from the configured prices.", tenant_labels, 1, NULL, 0);
  DECL(cache, LLMUX_METRIC_COUNTER, "llmux_cache_requests_total",
       "Response cache decisions: hit (answered from the cache, at no cost), miss, bypass "
       "(Cache-Control: no-cache) and store (an answer kept).", result_labels, 1, NULL, 0);
  DECL(tenant_budget, LLMUX_METRIC_GAUGE, "llmux_tenant_budget_remaining_usd",
       "What is left of the tenant's monthly budget.", tenant_labels, 1, NULL, 0);
  return 0;
fail:
  return LLMUX_ENOMEM;
}

static int declare_process(llmux_obs_t *o) {
  DECL(build_info, LLMUX_METRIC_GAUGE, "llmux_build_info",
       "Always 1; the labels say which build runs.", build_labels, 2, NULL, 0);
  DECL(generation, LLMUX_METRIC_GAUGE, "llmux_config_generation",
       "The configuration generation being served.", NULL, 0, NULL, 0);
  DECL(reloads, LLMUX_METRIC_COUNTER, "llmux_config_reload_total",
       "Configuration reloads by result.", result_labels, 1, NULL, 0);
  DECL(connections, LLMUX_METRIC_GAUGE, "llmux_connections",
       "Client connections by state.", state_labels, 1, NULL, 0);
  DECL(shared_errors, LLMUX_METRIC_COUNTER, "llmux_shared_state_errors_total",
       "Failures talking to the shared state (Redis): refused or lost connections, timeouts, "
       "error replies; while they last each process decides on its own counts.",
       component_labels, 1, NULL, 0);
  DECL(shared_up, LLMUX_METRIC_GAUGE, "llmux_shared_state_up",
       "1 while the component is connected to the shared state and in sync.",
       component_labels, 1, NULL, 0);
  DECL(rss, LLMUX_METRIC_GAUGE, "process_resident_memory_bytes",
       "Resident memory size in bytes.", NULL, 0, NULL, 0);
  DECL(cpu, LLMUX_METRIC_COUNTER, "process_cpu_seconds_total",
       "Total user and system CPU time spent in seconds.", NULL, 0, NULL, 0);
  DECL(fds, LLMUX_METRIC_GAUGE, "process_open_fds", "Number of open file descriptors.", NULL,
       0, NULL, 0);
  return 0;
fail:
  return LLMUX_ENOMEM;
}

int llmux_obs_init(llmux_obs_t *o, const char *version, const char *abi) {
  memset(o, 0, sizeof *o);
  if ((o->reg = llmux_metrics_new()) == NULL) return LLMUX_ENOMEM;
  if (declare_genai(o) != 0 || declare_gateway(o) != 0 || declare_process(o) != 0) goto fail;
  if (llmux_metrics_on_collect(o->reg, collect_process, o) != 0) goto fail;
  llmux_series_set(llmux_metric_series3(o->build_info, version, abi, NULL), 1);
  llmux_series_set(llmux_metric_series(o->generation, NULL), 0);
  o->in_flight_s = llmux_metric_series(o->in_flight, NULL);
  o->overhead_s = llmux_metric_series(o->overhead, NULL);
  o->failovers_s = llmux_metric_series(o->failovers, NULL);
  o->retries_s = llmux_metric_series(o->retries, NULL);
  llmux_series_set(o->in_flight_s, 0);
  if (!o->in_flight_s || !o->overhead_s || !o->failovers_s || !o->retries_s) goto fail;
  llmux_metric_series3(o->reloads, "success", NULL, NULL);
  llmux_metric_series3(o->reloads, "failure", NULL, NULL);
  return 0;
fail:
  llmux_obs_free(o);
  return LLMUX_ENOMEM;
}

void llmux_obs_free(llmux_obs_t *o) {
  llmux_metrics_free(o->reg);
  memset(o, 0, sizeof *o);
}
