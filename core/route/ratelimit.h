/* Rate-limit accounting for routes: pure logic, no I/O, no timers.
 *
 * The router asks, before trying a route, whether the route has headroom
 * (llmux_rl_check), counts the attempt before sending (llmux_rl_reserve),
 * corrects the token count with the response's usage (llmux_rl_commit) or
 * gives it back when the request never reached the provider
 * (llmux_rl_release), and feeds every provider response's headers back in
 * (llmux_rl_sync_headers) so that the provider's own view wins over ours.
 *
 * Keys. Providers limit per model, so state is kept per route
 * (provider name + provider model id). A key with model == NULL is the
 * provider-wide key: when it exists (limits set on it, a block, a sync), a
 * check or reservation on any route of that provider also applies to it.
 *
 * Time. Every call takes `now_ms`, a monotonic clock in milliseconds
 * (llmux_now_us() / 1000 in the gateway, anything in tests). Header values
 * that are absolute dates (HTTP-date, RFC 3339) also need the wall clock,
 * `wall_ms` (Unix time in ms), only to turn them into a delay.
 *
 * Windows. Own counting uses a sliding window of 60 slots: the minute
 * window has 1 s slots, the day window 24 min slots. The count of a window
 * is the sum of its slots, and a slot leaves whole once all of it is one
 * window old (an event is held between one window and one window plus one
 * slot). So a route never exceeds its limit in any span of one window (a
 * provider running a token bucket or a fixed window accepts that), and a
 * retry-after is exact to the slot: the time until enough old slots have
 * left. We chose this over a fixed window (which lets 2x the limit
 * through around a window edge and then gets 429s) and over a log of events
 * (memory grows with the limit: 14400 requests a day). A request bigger than
 * the whole limit is let through when its window is empty, so a route with a
 * too-low estimate is not starved for ever; the provider has the last word.
 *
 * Provider state. A sync records, per dimension (requests/tokens x
 * minute/day), the provider's `remaining` and its reset time. Until that
 * reset, the dimension is judged by `remaining` minus what we reserved since
 * the sync (the provider also sees other clients of the same key) AND by our
 * own count against the configured limit (an operator may give llmux only
 * part of a key's budget): both must allow a request. Partial replenishment before the reset is not
 * modelled: we wait for the reset (conservative). A retry-after makes a
 * block; a block only ever grows, and a spend-limit block (Anthropic's 429
 * for a spend limit) keeps its reason until it ends or llmux_rl_unblock.
 *
 * Store. The state lives behind a vtable so that a shared store (Redis, for
 * a fleet of gateways) can replace the in-memory one. The calls are
 * synchronous because the router decides in line on the loop: a shared store
 * would keep a local mirror and exchange deltas with the server in the
 * background. Header parsing (llmux_rl_parse_headers) is independent of the
 * store, so every store applies the same parsed facts; the dialects live in
 * route/dialects.h (plugins reach them through the host table).
 *
 * Everything here runs on the loop thread; nothing is thread-safe. */
#ifndef LLMUX_RATELIMIT_H
#define LLMUX_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

#include "llmux/common.h"
#include "llmux/provider.h" /* llmux_header_t */
#include "config/config.h"         /* llmux_limits_t, llmux_config_t */
#include "base/json_scan.h"      /* llmux_json_field_t */
#include "route/dialects.h"      /* styles, dimensions, header parsing */

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Keys and blocks --------------------------------------------------- */

typedef struct llmux_rl_key_s {
  const char *provider; /* "groq"; never NULL */
  const char *model;    /* the provider's model id; NULL: provider-wide key */
} llmux_rl_key_t;

typedef enum {
  LLMUX_RL_BLOCK_NONE = 0,
  LLMUX_RL_BLOCK_RETRY_AFTER, /* a 429/503 with retry-after: transient */
  LLMUX_RL_BLOCK_SPEND_LIMIT  /* spend/usage limit: final until its reset */
} llmux_rl_block_reason_t;

/* A block with this `until_ms` lasts until llmux_rl_unblock. */
#define LLMUX_RL_FOREVER UINT64_MAX

/* ---- Token estimates (pure) -------------------------------------------- */

/* Default completion allowance when reserving for a request that states no
 * (or a larger) max_tokens, for styles that count actual usage. */
#define LLMUX_RL_DEFAULT_COMPLETION_TOKENS 256

/* A request body's prompt size in tokens, about bytes/4 of the text of
 * "messages" (string values only; keys and punctuation excluded), "prompt",
 * "input" and "tools", plus 4 per message and 3 per request. A body that is
 * not a JSON object is estimated as len/4 + 3. Never 0. */
uint64_t llmux_rl_estimate_tokens(const char *body, size_t len);
/* The same from fields the caller already found with llmux_json_scan (its
 * keys "messages", "prompt", "input", "tools"; others are ignored), so the
 * proxy scans a request once. */
uint64_t llmux_rl_estimate_fields(const llmux_json_field_t *f, size_t n);
/* The same from the fields themselves, in the order "messages", "prompt",
 * "input", "tools" (NULL or LLMUX_JSON_NONE: absent): no search by key. */
#define LLMUX_RL_EST_NPARTS 4
uint64_t llmux_rl_estimate_parts(const llmux_json_field_t *const parts[LLMUX_RL_EST_NPARTS]);

/* The request's completion cap: max_completion_tokens, else max_tokens.
 * 0 with *out set; LLMUX_ENOTFOUND when neither is a non-negative integer
 * (Cerebras's -1 means "no cap"); LLMUX_EINVAL when body is not JSON. */
int llmux_rl_parse_max_tokens(const char *body, size_t len, uint64_t *out);
/* The same from already-scanned fields ("max_completion_tokens",
 * "max_tokens"): 0 with *out set, or LLMUX_ENOTFOUND. */
int llmux_rl_max_tokens_fields(const llmux_json_field_t *f, size_t n, uint64_t *out);
/* The same from the two fields themselves (NULL or LLMUX_JSON_NONE: absent). */
int llmux_rl_max_tokens_parts(const llmux_json_field_t *max_completion_tokens,
                              const llmux_json_field_t *max_tokens, uint64_t *out);

/* Tokens to reserve for one request. CEREBRAS counts the prompt plus the
 * completion cap against the limit up front: prompt + max_tokens, or without
 * a cap the whole context window (its "maximum sequence length"), or prompt +
 * 4096 when that is unknown too. Others count what was used: prompt +
 * min(max_tokens, LLMUX_RL_DEFAULT_COMPLETION_TOKENS). max_tokens and
 * context_window are 0 when unknown. */
uint64_t llmux_rl_tokens_to_reserve(llmux_rl_style_t style, uint64_t prompt_tokens,
                                    uint64_t max_tokens, uint64_t context_window);

/* ---- The store --------------------------------------------------------- */

typedef struct llmux_rl_store_s llmux_rl_store_t;
typedef struct llmux_rl_store_vtable_s llmux_rl_store_vtable_t;

/* One attempt's share, owned by the caller (usually on its txn): zeroed
 * before its first use, filled by llmux_rl_reserve, and ended by exactly
 * one llmux_rl_commit or llmux_rl_release (a second end is a no-op). It
 * refers to store state, so it must end before the store is destroyed. */
typedef struct llmux_rl_reservation_s {
  void *data;         /* public: the caller's */
  /* read-only */
  int held;           /* 1 between reserve and commit/release */
  uint64_t tokens;    /* tokens counted now: the estimate, then the actual */
  uint64_t at_ms;     /* when it was reserved */
  /* private: the store's */
  llmux_rl_store_t *store;
  void *ref[2];       /* route and provider-wide state, or NULL */
  uint64_t gen[2];    /* their sync generation at reserve time */
} llmux_rl_reservation_t;

typedef struct llmux_rl_dim_snapshot_s {
  uint64_t limit;          /* configured; 0 = none */
  uint64_t used;           /* own count in the current window */
  int synced;              /* provider state is fresh and used instead */
  uint64_t synced_limit;   /* as reported; 0 when not reported */
  uint64_t synced_remaining; /* reported remaining minus reserved since */
  uint64_t reset_in_ms;    /* until the provider state expires */
  uint64_t frees_in_ms;    /* until `used` next goes down (its oldest
                              counted slot leaves); 0 when used is 0 */
} llmux_rl_dim_snapshot_t;

typedef struct llmux_rl_snapshot_s {
  llmux_rl_dim_snapshot_t dims[LLMUX_RL_NDIMS];
  llmux_rl_block_reason_t block_reason; /* NONE when not blocked now */
  uint64_t blocked_for_ms;  /* LLMUX_RL_FOREVER for an open-ended block */
  uint64_t inflight;        /* reservations not yet committed/released */
} llmux_rl_snapshot_t;

typedef void (*llmux_rl_foreach_cb)(void *arg, const llmux_rl_key_t *key,
                                    const llmux_rl_snapshot_t *snap);

/* What a store implements; the public functions below dispatch to it and
 * document the semantics. Grows only at the end. */
struct llmux_rl_store_vtable_s {
  int (*set_limits)(llmux_rl_store_t *s, const llmux_rl_key_t *key,
                    const llmux_limits_t *limits);
  int (*check)(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t tokens,
               uint64_t now_ms, uint64_t *retry_after_ms);
  int (*reserve)(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t tokens,
                 uint64_t now_ms, llmux_rl_reservation_t *res);
  void (*commit)(llmux_rl_store_t *s, llmux_rl_reservation_t *res,
                 uint64_t actual_tokens, uint64_t now_ms);
  void (*release)(llmux_rl_store_t *s, llmux_rl_reservation_t *res, uint64_t now_ms);
  int (*apply)(llmux_rl_store_t *s, const llmux_rl_key_t *key,
               const llmux_rl_info_t *info, uint64_t now_ms);
  int (*block)(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t until_ms,
               llmux_rl_block_reason_t reason);
  void (*unblock)(llmux_rl_store_t *s, const llmux_rl_key_t *key);
  int (*snapshot)(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t now_ms,
                  llmux_rl_snapshot_t *out);
  void (*foreach)(llmux_rl_store_t *s, uint64_t now_ms, llmux_rl_foreach_cb cb,
                  void *arg);
  void (*destroy)(llmux_rl_store_t *s);
};

struct llmux_rl_store_s {
  void *data;                        /* public: the user's */
  const llmux_rl_store_vtable_t *vt; /* read-only */
  void *reserved[4];
};

/* The in-memory store: a hash map of at most `max_keys` keys, each created
 * on first set_limits/sync/block (about 2 KiB each). 0 and *out, or
 * LLMUX_EINVAL. Free with llmux_rl_store_destroy. */
int llmux_rl_memory_store_new(size_t max_keys, llmux_rl_store_t **out);
void llmux_rl_store_destroy(llmux_rl_store_t *s);

/* Configures a key's limits (0 = unlimited); keeps its counts. 0, or
 * LLMUX_ETOOLARGE when the store is full. */
int llmux_rl_set_limits(llmux_rl_store_t *s, const llmux_rl_key_t *key,
                        const llmux_limits_t *limits);
/* set_limits for every route of `cfg` (key: provider name, route id). */
int llmux_rl_configure(llmux_rl_store_t *s, const llmux_config_t *cfg);

/* May `key` be tried now with `tokens` estimated tokens? 0 if every
 * dimension of the route and of its provider-wide key has headroom
 * (*retry_after_ms = 0); LLMUX_EAGAIN otherwise, with *retry_after_ms the
 * time until all of them have (LLMUX_RL_FOREVER for an open-ended block).
 * A key the store has never seen has headroom. Changes nothing. A shared
 * store that cannot decide (its backend unreachable, and configured to
 * fail closed) answers LLMUX_RL_EUNAVAILABLE: not a limit, an outage. */
#define LLMUX_RL_EUNAVAILABLE LLMUX_ECONNREFUSED
/* A shared store asked to (shared/rl_shared.h, Refreshing) answers this when
 * it would admit on a mirror that may lack other processes' latest
 * changes: refresh it, then check again. */
#define LLMUX_RL_ESTALE LLMUX_ESTALE
int llmux_rl_check(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t tokens,
                   uint64_t now_ms, uint64_t *retry_after_ms);
/* Counts one request and `tokens` on the route and its provider-wide key
 * (those the store knows), whether or not there is headroom: call check
 * first. Fills *res. Returns 0. */
int llmux_rl_reserve(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t tokens,
                     uint64_t now_ms, llmux_rl_reservation_t *res);
/* The provider answered: replaces the estimate with `actual_tokens`
 * (prompt + completion from usage; pass res->tokens when unknown). Less is
 * given back where it was counted; more is counted now. */
void llmux_rl_commit(llmux_rl_reservation_t *res, uint64_t actual_tokens,
                     uint64_t now_ms);
/* The request never reached the provider: uncounts request and tokens. */
void llmux_rl_release(llmux_rl_reservation_t *res, uint64_t now_ms);

/* Parses `headers` in `style` and applies them to `key`: fresh provider
 * state per dimension, and a RETRY_AFTER block for retry-after. 0, or
 * LLMUX_ETOOLARGE when the store is full (nothing applied). */
int llmux_rl_sync_headers(llmux_rl_store_t *s, const llmux_rl_key_t *key,
                          llmux_rl_style_t style, const llmux_header_t *headers,
                          size_t n, uint64_t now_ms, int64_t wall_ms);
int llmux_rl_apply(llmux_rl_store_t *s, const llmux_rl_key_t *key,
                   const llmux_rl_info_t *info, uint64_t now_ms);
/* Blocks `key` (a route, or a whole provider with model NULL) until
 * `until_ms` (monotonic; LLMUX_RL_FOREVER: until unblocked). A block never
 * shrinks; SPEND_LIMIT outranks RETRY_AFTER for the reason. 0, or
 * LLMUX_ETOOLARGE / LLMUX_EINVAL. */
int llmux_rl_block(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t until_ms,
                   llmux_rl_block_reason_t reason);
void llmux_rl_unblock(llmux_rl_store_t *s, const llmux_rl_key_t *key);

/* The key's own state (not its provider-wide key's). 0, or LLMUX_ENOTFOUND. */
int llmux_rl_snapshot(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t now_ms,
                      llmux_rl_snapshot_t *out);

/* What is left of one dimension for a request on a route. */
typedef struct llmux_rl_left_s {
  int limited;          /* 0: nothing limits this dimension (the rest is 0) */
  uint64_t remaining;   /* the least any view allows */
  uint64_t limit;       /* that view's limit: configured, or as the provider
                           reported it (0 when it reported none) */
  uint64_t reset_in_ms; /* until that view's count next rises: the
                           provider's reset, or the oldest request or tokens
                           of our own count leaving its window; 0 when
                           nothing is counted */
} llmux_rl_left_t;

/* Per dimension (LLMUX_RL_REQ_MINUTE...), what the store thinks is left for
 * a request on `key`: the least of the configured limit minus our own count
 * and the provider's reported remaining minus what we reserved since, over
 * the route's key and its provider-wide key. Blocks (retry-after, spend
 * limit) are not counted here: see llmux_rl_snapshot. A key the store has
 * never seen is unlimited. 0, or LLMUX_EINVAL. Changes nothing. */
int llmux_rl_left(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t now_ms,
                  llmux_rl_left_t out[LLMUX_RL_NDIMS]);

/* Calls cb for every key, in no particular order. cb must not change s. */
void llmux_rl_foreach(llmux_rl_store_t *s, uint64_t now_ms, llmux_rl_foreach_cb cb,
                      void *arg);

#ifdef __cplusplus
}
#endif
#endif /* LLMUX_RATELIMIT_H */
