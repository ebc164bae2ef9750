/* Tenant usage shared by the fleet (gateway/fleet.h): shared/usage_shared.h
 * carries every process's counts to every other, and this file connects it
 * to the gateway's usage store (gw->usage), which the quota checks
 * (tenant/tenant.c) and GET /v1/usage read.
 *
 *   - the proxy counts a request in gw->usage (llmux_usage_add) and here
 *     (llmux_fleet_usage_count), which queues the delta for Redis;
 *   - a row's fleet values (Redis's plus this process's unconfirmed adds)
 *     come back through on_row and are set in gw->usage (llmux_usage_set);
 *   - only the elected writer's store writes usage_db: a process with a
 *     usage_db is a candidate, its store stops writing at start and writes
 *     again (every row it holds, the fleet's) while it holds the lease;
 *   - the rows gw->usage loaded from usage_db at open seed an epoch of
 *     Redis that has not been seeded (usage_shared.h, "Seeding from SQLite"). */
#include "gateway/fleet.h"

#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/util.h"
#include "gateway/server.h"
#include "shared/usage_shared.h"
#include "tenant/usage.h"

typedef struct fleet_usage_s {
  llmux_gateway_t *gw;
  llmux_usage_shared_t *us;
  int closing;
  llmux_fleet_close_cb close_cb;
} fleet_usage_t;

static void on_row(void *arg, const char *tenant, const char *model, int day,
                   const llmux_usage_shared_counts_t *c) {
  fleet_usage_t *fu = arg;
  llmux_usage_counts_t counts;
  if (fu->gw->usage == NULL) return;
  counts.requests = c->requests;
  counts.input_tokens = c->input_tokens;
  counts.output_tokens = c->output_tokens;
  counts.cost_usd = c->cost_usd;
  llmux_usage_set(fu->gw->usage, tenant, model, day, &counts);
}

static void on_writer(void *arg, int writer) {
  fleet_usage_t *fu = arg;
  if (fu->gw->usage != NULL) llmux_usage_set_persist(fu->gw->usage, writer);
}

static void seed_row(void *arg, const llmux_usage_row_t *row) {
  llmux_usage_shared_counts_t c;
  c.requests = row->counts.requests;
  c.input_tokens = row->counts.input_tokens;
  c.output_tokens = row->counts.output_tokens;
  c.cost_usd = row->counts.cost_usd;
  llmux_usage_shared_seed(arg, row->tenant, row->model, row->day, &c);
}

int llmux_fleet_usage_start(struct llmux_gateway_s *gw, const llmux_fleet_conf_t *fc) {
  llmux_usage_shared_options_t o;
  fleet_usage_t *fu;
  char err[300] = "";
  int rc, today = llmux_usage_today();
  if (gw == NULL || fc == NULL || fc->url == NULL || gw->usage == NULL ||
      gw->fleet_usage != NULL)
    return LLMUX_EINVAL;
  fu = llmux_xcalloc(1, sizeof(*fu));
  fu->gw = gw;
  memset(&o, 0, sizeof(o));
  o.url = fc->url;
  o.password = fc->password;
  o.prefix = fc->prefix;
  o.timeout_ms = fc->timeout_ms;
  o.candidate = gw->cfg != NULL && gw->cfg->server.usage_db != NULL;
  o.on_row = on_row;
  o.on_writer = on_writer;
  o.arg = fu;
  rc = llmux_usage_shared_new(gw->loop, &o, &fu->us, err, sizeof(err));
  if (rc == 0 && o.candidate)
    llmux_usage_foreach(gw->usage, NULL, llmux_usage_month_start(today), today, seed_row,
                        fu->us);
  if (rc == 0) rc = llmux_usage_shared_start(fu->us);
  if (rc != 0) {
    llmux_error("shared usage: %s", rc == LLMUX_EINVAL && *err ? err : llmux_strerror(rc));
    if (fu->us != NULL) {
      fu->closing = 1;
      llmux_usage_shared_close(fu->us, NULL, NULL); /* the loop frees it */
    }
    free(fu);
    return rc;
  }
  /* Until elected, usage_db is the writer's. */
  if (o.candidate) llmux_usage_set_persist(gw->usage, 0);
  gw->fleet_usage = fu;
  return 0;
}

void llmux_fleet_usage_count(struct llmux_gateway_s *gw, const char *tenant, const char *model,
                             int day, uint64_t input_tokens, uint64_t output_tokens,
                             double cost_usd) {
  fleet_usage_t *fu = gw->fleet_usage;
  llmux_usage_shared_counts_t d;
  if (fu == NULL || fu->closing) return;
  d.requests = 1;
  d.input_tokens = input_tokens;
  d.output_tokens = output_tokens;
  d.cost_usd = cost_usd;
  llmux_usage_shared_add(fu->us, tenant, model, day, &d);
}

static void on_closed(llmux_usage_shared_t *us, int status, void *arg) {
  fleet_usage_t *fu = arg;
  llmux_gateway_t *gw = fu->gw;
  llmux_fleet_close_cb cb = fu->close_cb;
  gw->fleet_usage = NULL;
  free(fu);
  if (cb) cb(gw);
}


void llmux_fleet_usage_close(struct llmux_gateway_s *gw, llmux_fleet_close_cb cb) {
  fleet_usage_t *fu = gw->fleet_usage;
  if (fu == NULL) {
    llmux__fleet_close_later(gw, cb); /* never started */
    return;
  }
  if (fu->closing) return;
  fu->closing = 1;
  fu->close_cb = cb;
  llmux_usage_shared_close(fu->us, on_closed, fu);
}

uint64_t llmux_fleet_usage_errors(const struct llmux_gateway_s *gw) {
  const fleet_usage_t *fu = gw->fleet_usage;
  llmux_usage_shared_stats_t st;
  if (fu == NULL) return 0;
  llmux_usage_shared_stats(fu->us, &st);
  return st.errors;
}

int llmux_fleet_usage_is_writer(const struct llmux_gateway_s *gw) {
  const fleet_usage_t *fu = gw->fleet_usage;
  return fu != NULL && llmux_usage_shared_is_writer(fu->us);
}
