/* Breakers shared by the fleet (gateway/fleet.h): the route table's own
 * openings and closes go out through shared/breaker_shared.h, and what the
 * other processes decide comes back into the table (gw->routes, which
 * every router reads), so a route that rests in one process is skipped by
 * all of them.
 *
 * Clocks. The routers count in the loop's clock (uv_now, monotonic); the
 * fleet speaks Unix milliseconds. Each conversion takes the offset between
 * the two afresh (wall clock minus monotonic clock, both read now), so NTP
 * slewing the wall clock over a long uptime does not pull this process's
 * times away from the others'. What remains is the machines' NTP skew
 * (breaker_shared.h says what it costs).
 *
 * A remote opening of a route this process has not configured makes its
 * entry (llmux_route_table_open), so a reload that adds the route finds it
 * resting; a remote close of an unknown route is ignored. */
#include "gateway/fleet.h"

#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/util.h"
#include "gateway/server.h"
#include "route/router.h"
#include "shared/breaker_shared.h"

typedef struct fleet_breakers_s {
  llmux_gateway_t *gw;
  llmux_breaker_shared_t *bs;
  int closing;
  llmux_fleet_close_cb close_cb;
} fleet_breakers_t;

/* Unix ms minus the loop clock's ms, now. */
static int64_t wall_offset(void) {
  return llmux_breaker_shared_wall_ms() - (int64_t)(llmux_now_us() / 1000);
}

static uint64_t to_loop(int64_t wall_ms, int64_t offset) {
  int64_t t = wall_ms - offset;
  return t > 0 ? (uint64_t)t : 0;
}

/* The table's own openings and closes, to the fleet. */
static void on_change(const llmux_route_change_t *c, void *arg) {
  fleet_breakers_t *fb = arg;
  int64_t offset = wall_offset();
  if (fb->closing) return;
  if (c->event == LLMUX_ROUTE_OPENED)
    llmux_breaker_shared_opened(fb->bs, c->provider, c->model, (int64_t)c->now_ms + offset,
                                (int64_t)c->until_ms + offset);
  else
    llmux_breaker_shared_recovered(fb->bs, c->provider, c->model,
                                   (int64_t)c->now_ms + offset);
}

/* Another process's opening, into the table. */
static void on_open(llmux_breaker_shared_t *b, const char *provider, const char *model,
                    int64_t since_ms, int64_t until_ms, void *arg) {
  fleet_breakers_t *fb = arg;
  int64_t offset = wall_offset();
  uint64_t now = uv_now(fb->gw->loop), until = to_loop(until_ms, offset);
  if (fb->closing) return;
  if (llmux_route_table_open(fb->gw->routes, provider, model, to_loop(since_ms, offset), until,
                             now) == 1)
    llmux_info("route %s/%s: cooling down for %llu ms (opened by another process)", provider,
               model, (unsigned long long)(until - now));
}

/* Another process's successful probe, into the table. */
static void on_close(llmux_breaker_shared_t *b, const char *provider, const char *model,
                     int64_t at_ms, void *arg) {
  fleet_breakers_t *fb = arg;
  if (fb->closing) return;
  if (llmux_route_table_close_remote(fb->gw->routes, provider, model,
                                     to_loop(at_ms, wall_offset())) == 1)
    llmux_info("route %s/%s: recovered (probed by another process)", provider, model);
}

int llmux_fleet_breakers_start(struct llmux_gateway_s *gw, const llmux_fleet_conf_t *fc) {
  llmux_breaker_shared_options_t o;
  fleet_breakers_t *fb;
  char err[300] = "";
  int rc;
  if (gw == NULL || fc == NULL || fc->url == NULL || gw->routes == NULL ||
      gw->fleet_breakers != NULL)
    return LLMUX_EINVAL;
  fb = llmux_xcalloc(1, sizeof(*fb));
  fb->gw = gw;
  memset(&o, 0, sizeof(o));
  o.url = fc->url;
  o.password = fc->password;
  o.prefix = fc->prefix;
  o.timeout_ms = fc->timeout_ms;
  o.on_open = on_open;
  o.on_close = on_close;
  o.arg = fb;
  rc = llmux_breaker_shared_new(gw->loop, &o, &fb->bs, err, sizeof(err));
  if (rc == 0) rc = llmux_breaker_shared_start(fb->bs);
  if (rc != 0) {
    llmux_error("shared breakers: %s", rc == LLMUX_EINVAL && *err ? err : llmux_strerror(rc));
    if (fb->bs != NULL) {
      fb->closing = 1;
      llmux_breaker_shared_close(fb->bs, NULL, NULL); /* the loop frees it */
    }
    free(fb);
    return rc;
  }
  llmux_route_table_on_change(gw->routes, on_change, fb);
  gw->fleet_breakers = fb;
  return 0;
}

static void on_closed(llmux_breaker_shared_t *b, int status, void *arg) {
  fleet_breakers_t *fb = arg;
  llmux_gateway_t *gw = fb->gw;
  llmux_fleet_close_cb cb = fb->close_cb;
  gw->fleet_breakers = NULL;
  free(fb);
  if (cb) cb(gw);
}


void llmux_fleet_breakers_close(struct llmux_gateway_s *gw, llmux_fleet_close_cb cb) {
  fleet_breakers_t *fb = gw->fleet_breakers;
  if (fb == NULL) {
    llmux__fleet_close_later(gw, cb); /* never started */
    return;
  }
  if (fb->closing) return;
  fb->closing = 1;
  fb->close_cb = cb;
  if (gw->routes != NULL) llmux_route_table_on_change(gw->routes, NULL, NULL);
  llmux_breaker_shared_close(fb->bs, on_closed, fb);
}

uint64_t llmux_fleet_breakers_errors(const struct llmux_gateway_s *gw) {
  const fleet_breakers_t *fb = gw->fleet_breakers;
  llmux_breaker_shared_stats_t st;
  if (fb == NULL) return 0;
  llmux_breaker_shared_stats(fb->bs, &st);
  return st.errors;
}
