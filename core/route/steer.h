/* Routing the caller steers (issue 16): a request's `provider` object and
 * its `x-llmux-provider` header, applied to a plan the router ordered.
 *
 * Pure, like the router: no I/O, no allocation. Provider names are checked
 * against the configuration snapshot, so a typo is the caller's 400, not a
 * silent no-op.
 *
 *   order            these providers' routes first, in this order; the
 *                    rest follow in the plan's order (unless
 *                    allow_fallbacks is false: then only these are kept)
 *   only             keep only these providers' routes
 *   ignore           drop these providers' routes
 *   allow_fallbacks  false: never go beyond `order` (or `only`)
 *   sort             "price" -> cheapest, "latency" -> lowest-latency,
 *                    "throughput" -> least-loaded (llmux measures no
 *                    tokens per second: the route with the fewest requests
 *                    in flight is the one likeliest to stream fastest)
 *
 * The header `x-llmux-provider: NAME` is `only: [NAME]` without fallback.
 */
#ifndef LLMUX_STEER_H
#define LLMUX_STEER_H

#include <stddef.h>

#include "llmux/common.h"
#include "config/config.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LLMUX_STEER_MAX 16   /* providers per list */

typedef struct llmux_steer_s {
  int active;               /* the caller asked for something */
  const llmux_provider_conf_t *order[LLMUX_STEER_MAX];
  size_t norder;
  const llmux_provider_conf_t *only[LLMUX_STEER_MAX];
  size_t nonly;
  int has_only;             /* `only` given (even empty: nothing is kept) */
  const llmux_provider_conf_t *ignore[LLMUX_STEER_MAX];
  size_t nignore;
  int allow_fallbacks;      /* 1 unless the caller said false */
  int has_sort;
  llmux_strategy_t sort;    /* with has_sort */
} llmux_steer_t;

/* Nothing asked: every route kept, plan order unchanged. */
void llmux_steer_init(llmux_steer_t *s);

/* Reads a body's `provider` value (raw JSON bytes, already valid JSON) into
 * `s`. 0, or LLMUX_EINVAL with `param` ("provider.order", ...) and a
 * message for the client's 400. */
int llmux_steer_parse(const llmux_config_t *cfg, llmux_str_t value, llmux_steer_t *s,
                      const char **param, char *msg, size_t msgcap);

/* The header `x-llmux-provider: NAME`: only NAME, no fallback. 0, or
 * LLMUX_EINVAL with a message (unknown provider). */
int llmux_steer_header(const llmux_config_t *cfg, llmux_str_t name, llmux_steer_t *s,
                       char *msg, size_t msgcap);

/* Filters and reorders routes[0..n) in place; the routes dropped go to
 * dropped[] (room for n) in plan order. Returns how many remain. */
size_t llmux_steer_apply(const llmux_steer_t *s, const llmux_route_conf_t **routes, size_t n,
                         const llmux_route_conf_t **dropped, size_t *ndropped);

#ifdef __cplusplus
}
#endif
#endif /* LLMUX_STEER_H */
