/* GET /metrics: the gauges read from the gateway's state at scrape time,
 * and the answer in Prometheus's text format (0.0.4).
 *
 * What requests record goes in as they end (gateway/reqlog.h); what is a
 * state rather than an event is read here, from the generation current at
 * the scrape and the state outside generations, and costs nothing between
 * scrapes:
 *   llmux_route_state{provider,model}          0 closed, 1 half-open, 2 open
 *   llmux_route_remaining{provider,model,dimension}
 *                                               what the limit store thinks
 *                                               is left (llmux_rl_left); a
 *                                               dimension nothing limits has
 *                                               no series
 *   llmux_route_latency_seconds{provider,model} the router's decaying average
 *                                               (after the first success)
 *   llmux_tenant_budget_remaining_usd{tenant}   budget_usd_per_month less this
 *                                               month's cost (tenants with one)
 *   llmux_config_generation, llmux_connections{state}
 * `model` is the provider's model id of the route, as in
 * llmux_upstream_attempts_total. Routes and tenants a reload removed leave
 * these gauges.
 *
 * Access is the admin endpoints' (gateway/admin.h): the admin key when one
 * is configured, else loopback only; never a tenant's key. */
#ifndef LLMUX_GATEWAY_SCRAPE_H
#define LLMUX_GATEWAY_SCRAPE_H

#include "gateway/server.h"

/* Registers the collectors on gw->obs. 0 or LLMUX_ENOMEM. */
int llmux_scrape_init(llmux_gateway_t *gw);

/* Is `path` /metrics? */
int llmux_scrape_path(llmux_str_t path);

/* Serves GET (or HEAD) /metrics, after llmux_admin_allow. */
void llmux_scrape_handle(llmux_gateway_t *gw, llmux_http_req_t *req, const char *rid);

#endif
