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
 *     (llmux_fleet_breakers_*, gateway/fleet_breakers.c);
 *   - stored responses: a previous_response_id made anywhere continues
 *     anywhere (llmux_fleet_responses_*, gateway/fleet_responses.c).
 *   - the response cache (cache = redis): an answer one process got serves
 *     every other (llmux_fleet_cache_*, gateway/fleet_cache.c).
 * Each piece owns its Redis connections; each counts its failures for
 * llmux_shared_state_errors_total.
 *
 * Everything runs on the loop thread. */
#ifndef LLMUX_GATEWAY_FLEET_H
#define LLMUX_GATEWAY_FLEET_H

#include <stddef.h>
#include <stdint.h>

struct llmux_gateway_s;

/* The settings, resolved once at start-up from the first generation's
 * [server] (a reload that changes them warns: restart-only). */
typedef struct llmux_fleet_conf_s {
  const char *url;       /* redis://HOST[:PORT][/DB] */
  const char *password;  /* from shared_state_password_env; NULL: none */
  const char *prefix;    /* "llmux:" by default */
  int fail_closed;       /* shared_state_fail = closed */
  unsigned timeout_ms;   /* shared_state_timeout */
} llmux_fleet_conf_t;

typedef void (*llmux_fleet_close_cb)(struct llmux_gateway_s *gw);

/* For a piece closed without having started: cb(gw) on a later loop
 * iteration, never inside the call (fleet.c). */
void llmux__fleet_close_later(struct llmux_gateway_s *gw, llmux_fleet_close_cb cb);

/* Usage: rows counted by any process reach every process's usage store
 * (gw->usage), additively; one elected process writes them to usage_db.
 * Starts after gw->usage is open. 0, or LLMUX_E* with a logged reason.
 * Close before the usage store: cb runs once its connections are gone
 * (it never runs inside the call). */
int llmux_fleet_usage_start(struct llmux_gateway_s *gw, const llmux_fleet_conf_t *fc);
void llmux_fleet_usage_close(struct llmux_gateway_s *gw, llmux_fleet_close_cb cb);
uint64_t llmux_fleet_usage_errors(const struct llmux_gateway_s *gw);
/* One answered request, for the fleet: call it next to llmux_usage_add
 * (same arguments; the local store is still counted there, so this
 * process's next decision sees it at once). Queues the delta for Redis;
 * does nothing without shared state or once closing. Hot path: a hash
 * lookup and additions. */
void llmux_fleet_usage_count(struct llmux_gateway_s *gw, const char *tenant, const char *model,
                             int day, uint64_t input_tokens, uint64_t output_tokens,
                             double cost_usd);
/* Whether this process holds the usage_db writer lease (0 without shared
 * state: then the store writes its database as always). */
int llmux_fleet_usage_is_writer(const struct llmux_gateway_s *gw);

/* Breakers: a breaker opened in any process opens in every one for the
 * same time (gw->routes). Same contract as usage. */
int llmux_fleet_breakers_start(struct llmux_gateway_s *gw, const llmux_fleet_conf_t *fc);
void llmux_fleet_breakers_close(struct llmux_gateway_s *gw, llmux_fleet_close_cb cb);
uint64_t llmux_fleet_breakers_errors(const struct llmux_gateway_s *gw);
/* Breakers, when: start once gw->routes exists, before or after the first
 * generation (a route opened elsewhere that no generation configures yet
 * rests once one does). Close before llmux_route_table_free(gw->routes):
 * the close unhooks the table's observer at once, and the Redis
 * connections go later. Calling close without a start still runs cb (on a
 * later loop iteration). Times cross processes as Unix ms, mapped onto the
 * loop's clock (uv_now, which the routers count in) at each use; see
 * shared/breaker_shared.h for the layout, the delay and what an outage
 * does. */

/* Stored responses: gw->responses gets Redis in front of its database
 * (gateway/responses_store.h, "A remote"): records at `<prefix>resp:<id>`
 * with PX = responses_ttl, one command connection of its own. Starts after
 * gw->responses is open; close before llmux_responses_close: it detaches
 * from the store at once, lets the writes already queued be answered, then
 * cb runs once its connection is gone (never inside the call; also without
 * a start). */
int llmux_fleet_responses_start(struct llmux_gateway_s *gw, const llmux_fleet_conf_t *fc);
void llmux_fleet_responses_close(struct llmux_gateway_s *gw, llmux_fleet_close_cb cb);
/* The connection's failures plus the operations that fell back. */
uint64_t llmux_fleet_responses_errors(const struct llmux_gateway_s *gw);
/* 1 while its connection is up. */
int llmux_fleet_responses_up(const struct llmux_gateway_s *gw);

/* The response cache, `cache = redis` (gateway/fleet_cache.c): answers at
 * `<prefix>cache:<sha256 of the key>` with PX = cache_ttl, one command
 * connection of its own, behind gw->resp_cache (memory, in front). */
struct llmux_cache_key_s;
struct llmux_cache_answer_s;
/* The answer (borrowed for the call), or NULL: a miss, or Redis failed. */
typedef void (*llmux_fleet_cache_cb)(void *arg, const struct llmux_cache_answer_s *a);
int llmux_fleet_cache_start(struct llmux_gateway_s *gw, const llmux_fleet_conf_t *fc,
                            uint64_t ttl_ms);
/* 0: cb(arg, ...) runs later, exactly once, never inside this call; else a
 * miss now, and cb never runs. */
int llmux_fleet_cache_get(struct llmux_gateway_s *gw, const struct llmux_cache_key_s *k,
                          llmux_fleet_cache_cb cb, void *arg);
void llmux_fleet_cache_put(struct llmux_gateway_s *gw, const struct llmux_cache_key_s *k,
                           const char *data, size_t len, int64_t prompt_tokens,
                           int64_t completion_tokens);
void llmux_fleet_cache_close(struct llmux_gateway_s *gw, llmux_fleet_close_cb cb);
uint64_t llmux_fleet_cache_errors(const struct llmux_gateway_s *gw);

#endif /* LLMUX_GATEWAY_FLEET_H */
