/* What the fleet pieces (fleet_*.c) share. */
#include "gateway/fleet.h"

#include <stdlib.h>

#include "base/util.h"
#include "gateway/server.h"

typedef struct later_s {
  uv_timer_t timer;
  llmux_gateway_t *gw;
  llmux_fleet_close_cb cb;
} later_t;

static void later_closed(uv_handle_t *h) {
  later_t *l = llmux_container_of((uv_timer_t *)h, later_t, timer);
  llmux_fleet_close_cb cb = l->cb;
  llmux_gateway_t *gw = l->gw;
  free(l);
  if (cb) cb(gw);
}

static void later_cb(uv_timer_t *t) { uv_close((uv_handle_t *)t, later_closed); }

void llmux__fleet_close_later(struct llmux_gateway_s *gw, llmux_fleet_close_cb cb) {
  later_t *l = llmux_xcalloc(1, sizeof *l);
  l->gw = gw;
  l->cb = cb;
  uv_timer_init(gw->loop, &l->timer);
  uv_timer_start(&l->timer, later_cb, 0, 0);
}
