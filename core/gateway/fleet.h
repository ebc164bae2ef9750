/* The gateway's side of shared state (issue 14): what [server]
 * shared_state configures, and the pieces that share through it.
 *
 * With shared_state set, every process pointing at one Redis (and prefix)
 * shares:
 *   - rate-limit windows, provider headroom and blocks, and tenants'
 *     minute windows: the shared rate-limit store (shared/rl_shared.h),
 *     which replaces the memory stores (gateway/server.c);
 *   - tenant usage, hence daily and monthly quotas and budgets
 *     (llmux_fleet_usage_*, gateway/fleet_usage.c);
 *   - breaker state: a route cooled down anywhere rests everywhere
 *     (llmux_fleet_breakers_*, gateway/fleet_breakers.c).
 * Each piece owns its Redis connections; each counts its failures for
 * llmux_shared_state_errors_total.
 *
 * Everything runs on the loop thread. */
#ifndef LLMUX_GATEWAY_FLEET_H
#define LLMUX_GATEWAY_FLEET_H

#include <stdint.h>

struct llmux_gateway_s;

/* The settings, resolved once at start-up from the first generation's
 * [server] (a reload that changes them warns: restart-only). */
typedef struct llmux_fleet_conf_s {
  const char *url;       /* redis://HOST[:PORT][/DB] */
  const char *password;  /* from shared_state_password_env; NULL: none */
  const char *prefix;    /* "llmux:" by default */
  int fail_closed;       /* shared_state_fail = closed */
} llmux_fleet_conf_t;

typedef void (*llmux_fleet_close_cb)(struct llmux_gateway_s *gw);

/* Usage: rows counted by any process reach every process's usage store
 * (gw->usage), additively; one elected process writes them to usage_db.
 * Starts after gw->usage is open. 0, or LLMUX_E* with a logged reason.
 * Close before the usage store: cb runs once its connections are gone
 * (it never runs inside the call). */
int llmux_fleet_usage_start(struct llmux_gateway_s *gw, const llmux_fleet_conf_t *fc);
void llmux_fleet_usage_close(struct llmux_gateway_s *gw, llmux_fleet_close_cb cb);
uint64_t llmux_fleet_usage_errors(const struct llmux_gateway_s *gw);

/* Breakers: a breaker opened in any process opens in every one for the
 * same time (gw->routes). Same contract as usage. */
int llmux_fleet_breakers_start(struct llmux_gateway_s *gw, const llmux_fleet_conf_t *fc);
void llmux_fleet_breakers_close(struct llmux_gateway_s *gw, llmux_fleet_close_cb cb);
uint64_t llmux_fleet_breakers_errors(const struct llmux_gateway_s *gw);

#endif /* LLMUX_GATEWAY_FLEET_H */
