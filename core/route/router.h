/* Route choice: which routes a request may use, in which order, and which
 * routes rest after failing (a circuit breaker per route).
 *
 * Pure logic: no I/O, no timers, no clock reads. Every call that depends on
 * time takes `now_ms` from the caller (any monotonic millisecond clock), so
 * tests drive time by hand. Single-threaded, like the loop that owns it.
 *
 * One llmux_router_t per configuration snapshot: it maps each route index
 * of that snapshot to the route's state. The state itself (breaker, latency,
 * requests in flight) lives in a llmux_route_table_t keyed by the route's
 * names, (provider name, provider model id), which outlives routers: a
 * reload builds a new router over the same table, so a route that is still
 * configured keeps what was observed of it, a new one starts fresh, and a
 * request still running on the old router reports into the same entry.
 *
 * Ordering (llmux_router_order) keeps the resolution's candidate routes that
 * can serve the request and sorts them by a strategy:
 *
 *   priority        model order of the resolution first (a generic's tier
 *                   order, a profile's listed order), then provider priority
 *                   ascending (1 before 2), then config order. The model comes
 *                   first because a generic or profile lists its models by
 *                   preference; priority picks among the providers of one
 *                   model. For a single model this is just provider priority.
 *                   A profile's `providers = a, b` goes before priority:
 *                   among one model's routes, a's then b's come first, then
 *                   the unlisted ones by priority. (A member written
 *                   MODEL@PROVIDER brings only that provider's route: the
 *                   registry pins it.)
 *   lowest-latency  observed latency (EWMA) ascending across all routes.
 *                   Routes never observed go first, so each gets measured
 *                   once; ties keep priority order.
 *   least-loaded    requests in flight ascending; ties keep priority order.
 *   cheapest        the route's price_in + price_out ascending (a route's
 *                   own prices, else its model's, key by key: so it also
 *                   chooses between the providers of one model); a route
 *                   without a price goes after every priced one; ties keep
 *                   priority order.
 *   weighted        the profile's models are shuffled by weight (model i is
 *                   first with probability w_i / sum(w)), deterministically
 *                   from the caller's 64-bit seed; each model's routes keep
 *                   priority order. No weights: equal weights. A weight of 0
 *                   puts the model last.
 *
 * Filters, applied before ordering, first matching reason wins:
 *   disabled        the provider is disabled (or lacks its API key);
 *   capability      the request needs a capability the model lacks. An
 *                   embeddings request needs a model declaring `embeddings`;
 *                   a chat request never goes to an embeddings model. Other
 *                   capabilities (tools, vision, json) must be declared,
 *                   except by a model that declares no capabilities at all:
 *                   its capabilities are unknown and it is kept (lenient),
 *                   so an unannotated catalog still serves tool calls;
 *   context         the estimated prompt tokens exceed the model's context
 *                   window (a window of 0 is unknown and keeps the route);
 *   cooling down    the route's breaker is open, or half-open with its probe
 *                   already out.
 *
 * Breaker per route: `failures` failures within `window_ms` open it; a
 * success clears the failure history (so only failures without a success
 * between them count). Open, the route rests for `cooldown_ms`; then it is
 * half-open and llmux_router_allow() grants exactly one probe. The probe's
 * success closes the breaker, its failure opens it for another cooldown, a
 * neutral outcome frees the probe slot for another. A probe that never
 * reports lapses after `probe_timeout_ms`, so a lost report cannot park a
 * route forever.
 *
 * Latency: the caller reports time to first byte (request sent -> response
 * status line). For a streamed completion that is time to first token; for a
 * non-streamed one providers answer after generating, so it is close to the
 * full latency. Only successes update it: failures go to the breaker.
 */
#ifndef LLMUX_ROUTER_H
#define LLMUX_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "llmux/common.h"
#include "config/config.h"
#include "config/registry.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct llmux_router_s llmux_router_t;

/* Route state by name, shared by every router built over it. An entry is
 * made the first time a router maps a route to it (or another process
 * opens its breaker: llmux_route_table_open) and stays (its address too)
 * until the table is freed, so a route removed by a reload and added back
 * later finds its state again; entries number the distinct routes ever
 * configured or opened. Free the table after every router built over it. */
typedef struct llmux_route_table_s llmux_route_table_t;
int llmux_route_table_new(llmux_route_table_t **out);  /* 0 or LLMUX_ENOMEM */
void llmux_route_table_free(llmux_route_table_t *t);
size_t llmux_route_table_count(const llmux_route_table_t *t);

typedef struct llmux_router_options_s {
  unsigned failures;          /* failures that open the breaker; default 3 */
  uint64_t window_ms;         /* ... when they fall within this; default 60000 */
  uint64_t cooldown_ms;       /* rest once open; default 30000 */
  uint64_t probe_timeout_ms;  /* an unreported probe lapses; default 60000 */
  double ewma_alpha;          /* weight of a new latency sample, (0, 1];
                                 default 0.3 */
} llmux_router_options_t;

/* Fills `o` with the defaults above. */
void llmux_router_options_default(llmux_router_options_t *o);

/* Creates a router for the routes of `cfg` (it reads the routes' names at
 * creation and keeps no pointer to cfg) over `table` (borrowed: it must
 * outlive the router), making the entries the table lacks. `opts` NULL:
 * defaults; zero fields take their default too. Returns 0 and *out,
 * LLMUX_EINVAL for bad arguments (alpha outside (0, 1]), LLMUX_ENOMEM. The
 * caller frees it with llmux_router_free(). */
int llmux_router_new_shared(const llmux_config_t *cfg, const llmux_router_options_t *opts,
                            llmux_route_table_t *table, llmux_router_t **out);
/* The same over a table of its own, freed with the router. */
int llmux_router_new(const llmux_config_t *cfg, const llmux_router_options_t *opts,
                     llmux_router_t **out);
void llmux_router_free(llmux_router_t *r);

/* ---- Ordering ---------------------------------------------------------- */

typedef enum {
  LLMUX_SKIP_DISABLED = 1,
  LLMUX_SKIP_CAPABILITY,
  LLMUX_SKIP_CONTEXT,
  LLMUX_SKIP_COOLDOWN,
  LLMUX_SKIP_RATE_LIMITED   /* not set here: for the gateway's headroom check,
                               so that one list explains every skip */
} llmux_skip_reason_t;

/* "provider disabled", "missing capability", "prompt exceeds context
 * window", "cooling down", "no rate-limit headroom"; "unknown" otherwise. */
const char *llmux_skip_reason_str(llmux_skip_reason_t reason);

typedef struct llmux_route_skip_s {
  const llmux_route_conf_t *route;  /* points into the config snapshot */
  llmux_skip_reason_t reason;
  unsigned missing_caps;   /* LLMUX_SKIP_CAPABILITY: the LLMUX_CAP_* lacking */
  uint64_t until_ms;       /* LLMUX_SKIP_COOLDOWN: when the route may probe
                              again (now_ms-based) */
} llmux_route_skip_t;

/* What the request needs. Zero-initialised: a chat request with no special
 * needs, unknown size, priority/profile strategy. */
typedef struct llmux_route_query_s {
  unsigned caps;            /* LLMUX_CAP_* required; LLMUX_CAP_EMBEDDINGS for
                               the embeddings endpoint */
  uint64_t prompt_tokens;   /* estimate; 0 = unknown (no context filter) */
  uint64_t seed;            /* random bits for `weighted` (same seed, same
                               order) */
  int override_strategy;    /* nonzero: use `strategy` instead of the
                               profile's */
  llmux_strategy_t strategy;
} llmux_route_query_t;

/* The caller's arrays and what llmux_router_order() wrote into them. */
typedef struct llmux_route_plan_s {
  /* public: set by the caller */
  const llmux_route_conf_t **routes;  /* room for `cap` entries */
  llmux_route_skip_t *skipped;        /* room for `cap` entries, or NULL */
  size_t cap;                         /* >= res->nroutes */
  /* read-only: filled by llmux_router_order() */
  size_t nroutes;                     /* candidates, best first */
  size_t nskipped;                    /* counted even when skipped is NULL */
  size_t ncooling;                    /* skips for LLMUX_SKIP_COOLDOWN */
  uint64_t retry_at_ms;               /* earliest until_ms of a cooling route,
                                         0 when none (for Retry-After) */
  llmux_strategy_t strategy;          /* the strategy applied */
} llmux_route_plan_t;

/* Orders the routes of `res` for the request `q` (NULL: no needs) into
 * `plan`: candidates in plan->routes, filtered routes in plan->skipped in
 * resolution order. The strategy is q->strategy when overridden, else the
 * profile's when `res` names a profile (or an agent), else priority. A
 * route listed twice (a profile naming a model twice) is kept once. Does not
 * change breaker state: llmux_router_allow() decides just before sending.
 * Returns the number of candidates, or LLMUX_EINVAL (plan->cap too small,
 * NULL arguments). */
int llmux_router_order(llmux_router_t *r, const llmux_resolution_t *res,
                       const llmux_route_query_t *q, uint64_t now_ms,
                       llmux_route_plan_t *plan);

/* Appends "provider/model (reason), ..." for every skip in `plan` (for the
 * final error message). 0 or LLMUX_ENOMEM. */
int llmux_route_plan_describe(const llmux_route_plan_t *plan, llmux_buf_t *out);

/* ---- Breaker, latency, load ------------------------------------------- */

typedef enum {
  LLMUX_ROUTER_DENY = 0,   /* cooling down, or the probe is out */
  LLMUX_ROUTER_ALLOW = 1,  /* closed: go */
  LLMUX_ROUTER_PROBE = 2   /* half-open: this request is the single probe */
} llmux_router_verdict_t;

typedef enum {
  LLMUX_OUTCOME_SUCCESS = 0,  /* the route answered (report at the status
                                 line, not at the end of a stream) */
  LLMUX_OUTCOME_FAILURE,      /* the route's fault: 5xx, 429, connect error,
                                 timeout: counts towards the cooldown */
  LLMUX_OUTCOME_NEUTRAL       /* not the route's fault (client error,
                                 canceled): changes nothing but frees a
                                 probe slot */
} llmux_outcome_t;

typedef enum {
  LLMUX_BREAKER_CLOSED = 0,
  LLMUX_BREAKER_OPEN,        /* resting until until_ms */
  LLMUX_BREAKER_HALF_OPEN    /* rest over: one probe may go (or is out) */
} llmux_breaker_state_t;

/* May a request go to route `route_index` now? Grants the half-open probe
 * (and records it), so call it once per attempt, right before sending, and
 * report the attempt's outcome with llmux_router_report(). */
llmux_router_verdict_t llmux_router_allow(llmux_router_t *r, size_t route_index,
                                          uint64_t now_ms);

/* Records an attempt's outcome. `latency_ms` (time to first byte) feeds the
 * latency average on success and is ignored otherwise. */
void llmux_router_report(llmux_router_t *r, size_t route_index, llmux_outcome_t outcome,
                         uint64_t latency_ms, uint64_t now_ms);

/* A failed attempt's report with what went wrong, for status output
 * (GET /admin/routes): llmux_router_report(r, i, outcome, 0, now_ms), then,
 * when `what` is not NULL, `what` becomes the route's last error, at
 * `wall_ms` (Unix ms: the router reads no clock). `what` is a failure class
 * in a few words ("429 rate limited", "connection refused", "timed out"),
 * never an address or a key: it is shown to operators as is. It is copied,
 * cut to LLMUX_ROUTE_ERROR_MAX - 1 bytes. */
#define LLMUX_ROUTE_ERROR_MAX 64
void llmux_router_report_error(llmux_router_t *r, size_t route_index, llmux_outcome_t outcome,
                               uint64_t now_ms, const char *what, int64_t wall_ms);

/* Requests in flight on a route: +1 when an attempt starts, -1 when it ends
 * (stream included). Never goes below 0. */
void llmux_router_inflight(llmux_router_t *r, size_t route_index, int delta);

/* A route's state, for tests, logs and `llmux` status output. */
typedef struct llmux_route_stats_s {
  llmux_breaker_state_t state;
  uint64_t until_ms;        /* OPEN: end of the rest */
  unsigned recent_failures; /* failures since the last success, within window */
  int probe_out;            /* HALF_OPEN: a probe is in flight */
  unsigned inflight;
  int observed;             /* latency_ms is meaningful */
  double latency_ms;        /* EWMA of time to first byte */
  uint64_t samples;
  char last_error[LLMUX_ROUTE_ERROR_MAX]; /* "" when none was reported */
  int64_t last_error_ms;    /* when (Unix ms), 0 when none */
} llmux_route_stats_t;

void llmux_router_stats(const llmux_router_t *r, size_t route_index, uint64_t now_ms,
                        llmux_route_stats_t *out);

/* ---- Sharing breakers --------------------------------------------------- */

/* For a fleet of processes whose breakers rest a route everywhere once it
 * tripped anywhere (gateway/fleet_breakers.c carries these through Redis).
 * The table tells an observer when one of its breakers opens or closes, and
 * takes openings and closes decided elsewhere. Still pure: the observer is
 * called in line, and every time is the caller's now_ms clock (the caller
 * maps other processes' times onto it).
 *
 * Order. Messages between processes can cross, so each opening carries
 * when it began (`since`) and each close when its probe succeeded (`at`):
 * a close ends only an opening that began at or before it, and an opening
 * that began before the last close this table knows of (a successful probe
 * here, or a close taken from elsewhere) is stale and ignored. Whatever the
 * order messages arrive in, a route ends up resting only if it failed after
 * the last success anyone saw (to within the processes' clock skew). */

typedef enum {
  LLMUX_ROUTE_OPENED = 1, /* tripped here: failures in the window, or a
                             failed probe */
  LLMUX_ROUTE_CLOSED      /* a probe (any success while half-open) closed it */
} llmux_route_event_t;

typedef struct llmux_route_change_s {
  llmux_route_event_t event;
  const char *provider;   /* the route's names; valid during the call */
  const char *model;      /* the provider's model id */
  uint64_t now_ms;        /* when: the opening's start (its `since`), or the
                             success that closed it (its `at`) */
  uint64_t until_ms;      /* OPENED: end of the rest; 0 for CLOSED */
  unsigned failures;      /* OPENED: the failures that tripped it (1 for a
                             failed probe) */
  int probe;              /* OPENED: a half-open probe failed */
} llmux_route_change_t;

/* Called in line from llmux_router_report*() when one of the table's
 * breakers opens or closes there, never for llmux_route_table_open() or
 * llmux_route_table_close_remote() (so what comes from elsewhere is not
 * sent back). It must not change the table. */
typedef void (*llmux_route_change_cb)(const llmux_route_change_t *change, void *arg);

/* Sets the table's one observer; cb NULL removes it. */
void llmux_route_table_on_change(llmux_route_table_t *t, llmux_route_change_cb cb, void *arg);

/* Opens the breaker of (provider, model) as another process did: the route
 * rests until `until_ms`, then is half-open with one probe as usual; its
 * failure count starts again. `since_ms` is when that opening began. Does
 * nothing (returns 0) when the rest is already over (until_ms <= now_ms),
 * when the route already rests at least as long, or when the opening is
 * stale (since_ms before the last close known here). A route this table has
 * no entry for yet gets one, as a router would make it, so a reload that
 * configures it later finds it resting. Returns 1 when the breaker changed,
 * 0 when not, LLMUX_EINVAL or LLMUX_ENOMEM. Does not call the observer. */
int llmux_route_table_open(llmux_route_table_t *t, const char *provider, const char *model,
                           uint64_t since_ms, uint64_t until_ms, uint64_t now_ms);

/* Closes the breaker of (provider, model) as another process's successful
 * probe did at `at_ms`: an open or half-open breaker whose opening began at
 * or before at_ms closes (failure count cleared, no probe needed); a later
 * opening stands. Routes without an entry are ignored. Returns 1 when the
 * breaker closed, 0 when not, LLMUX_EINVAL. Does not call the observer. */
int llmux_route_table_close_remote(llmux_route_table_t *t, const char *provider,
                                   const char *model, uint64_t at_ms);

/* ---- Retry helpers ----------------------------------------------------- */

/* Exponential backoff with full jitter for retry number `attempt` (0 for the
 * first retry): a value in [0, min(cap_ms, base_ms * 2^attempt)] chosen by
 * `rnd` (uniform 64-bit random bits). Saturates instead of overflowing. */
uint64_t llmux_backoff_ms(unsigned attempt, uint64_t base_ms, uint64_t cap_ms, uint64_t rnd);

/* splitmix64: advances *state and returns 64 random bits. Good enough for
 * jitter and weighted seeds; not for secrets. */
uint64_t llmux_rand_next(uint64_t *state);

#ifdef __cplusplus
}
#endif
#endif /* LLMUX_ROUTER_H */
