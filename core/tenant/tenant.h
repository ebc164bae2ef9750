/* Tenants at run time: API keys, what each tenant may use, and its limits.
 *
 * Keys. A key is "llmux-" + 43 base64url characters (256 bits from
 * getrandom()). The config holds only its SHA-256; a request's key is hashed
 * and looked up in a table built at start-up, and the digests are compared
 * in constant time. No key and no Authorization header is ever logged.
 *
 * "May use". A tenant without `models` may use every name. Otherwise a
 * request is allowed when any name on its resolution chain (the requested
 * name, the aliases followed, the target) is listed, or when its target is
 * the target of a listed name. So listing an alias allows its model,
 * listing a profile allows the agents that use it, and listing an agent
 * allows that agent (with the tenant's override of it, if any).
 *
 * Limits, checked before any provider limit (ARES: "enforced regardless of
 * provider limits"), in this order:
 *  - budget_usd_per_month: the month's cost (UTC calendar month, from the
 *    usage store, so it survives restarts) has reached the budget ->
 *    QUOTA_EXCEEDED until the next month;
 *  - tokens_per_day: the UTC day's input + output tokens have reached the
 *    limit (also from the usage store) -> until next midnight UTC;
 *  - requests_per_minute, tokens_per_minute: sliding one-minute windows in
 *    an in-memory rate-limit store (key {"tenant:NAME", NULL}); tokens are
 *    reserved from an estimate and corrected with the answer's usage.
 * The request that crosses a day or month total completes; the next one is
 * refused.
 *
 * Everything runs on the loop thread. */
#ifndef LLMUX_TENANT_H
#define LLMUX_TENANT_H

#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "route/ratelimit.h"
#include "config/registry.h"
#include "tenant/usage.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LLMUX_KEY_PREFIX "llmux-"
/* "llmux-" + 43 base64url characters + NUL. */
#define LLMUX_KEY_STRLEN 50

typedef struct llmux_tenant_s {
  void *data;
  /* read-only */
  const llmux_tenant_conf_t *conf;
  char rl_name[80];                /* "tenant:NAME", the rate-limit key */
  const void **allowed_targets;    /* targets of the listed names */
  size_t nallowed;
  llmux_buf_t models_json;         /* GET /v1/models for this tenant */
} llmux_tenant_t;

typedef struct llmux_tenants_s {
  const llmux_config_t *cfg;
  llmux_tenant_t *items;
  size_t n;
  llmux_rl_store_t *rl;            /* per-minute windows, by tenant name */
  /* private */
  int own_rl;                      /* rl is freed with the set */
  /* open-addressing table of key digests */
  struct llmux__key_slot_s *slots;
  size_t nslots;
  /* keys that authenticated, so that a client's next request skips the
   * SHA-256: direct-mapped, indexed by a hash seeded at random */
  struct llmux__seen_key_s *seen;
  size_t nseen;
  uint64_t seen_seed;
} llmux_tenants_t;

/* Builds the runtime view of cfg's tenants (none: an empty set, n == 0).
 * `models_json` builds a tenant's /v1/models body. 0 or LLMUX_E*. */
int llmux_tenants_init(llmux_tenants_t *ts, const llmux_config_t *cfg,
                       int (*models_json)(const llmux_config_t *cfg,
                                          const llmux_tenant_t *t, llmux_buf_t *out));
/* The same over a store the caller keeps (borrowed; it must outlive the
 * set): the windows are keyed by tenant name, so a set built from a new
 * configuration finds the counts of the tenants it keeps, with their new
 * limits applied. */
int llmux_tenants_init_shared(llmux_tenants_t *ts, const llmux_config_t *cfg,
                              llmux_rl_store_t *rl,
                              int (*models_json)(const llmux_config_t *cfg,
                                                 const llmux_tenant_t *t, llmux_buf_t *out));
void llmux_tenants_free(llmux_tenants_t *ts);

/* The tenant holding `key`, or NULL. Constant time in the digest compare.
 * A key that authenticated is remembered (in a small cache of the set's,
 * freed with it, wiped at free), so that its next use compares the key
 * itself in constant time instead of hashing it: SHA-256 was most of what
 * a tenant costs a request. A key not in the cache is hashed as before. */
const llmux_tenant_t *llmux_tenants_auth(const llmux_tenants_t *ts, const char *key,
                                         size_t len);

/* May tenant t use what `res` resolved to? `extra` (may be NULL) is one more
 * name on the chain: the profile a tenant's agent override points to. */
int llmux_tenant_may_use(const llmux_tenant_t *t, const llmux_resolution_t *res,
                         const char *extra);
/* The same for a bare name (for listings). */
int llmux_tenant_may_use_name(const llmux_tenant_t *t, const llmux_config_t *cfg,
                              const char *name);

/* For an agent (the agent endpoint): the profile it goes through for t
 * (after t's override) with the agent's name as one more name. */
int llmux_tenant_may_use_agent(const llmux_tenant_t *t, const llmux_config_t *cfg,
                               const llmux_agent_conf_t *agent);

typedef struct llmux_tenant_verdict_s {
  const char *limit;        /* NULL: admitted; else "requests_per_minute", ... */
  int quota;                /* 1 for budget_usd_per_month (QUOTA_EXCEEDED) */
  uint64_t retry_after_ms;
} llmux_tenant_verdict_t;

/* Checks t's limits for a request of `tokens` estimated tokens and, when
 * they allow it, reserves it in the per-minute windows (*res, to end with
 * llmux_rl_commit). `today` is llmux_usage_today(), `wall_ms` Unix time in
 * ms, `now_ms` monotonic. Returns 0 (admitted), LLMUX_EAGAIN with *v, or
 * LLMUX_RL_EUNAVAILABLE when a shared store failing closed cannot decide,
 * or LLMUX_RL_ESTALE when it asks for a refresh first (nothing reserved). */
int llmux_tenant_admit(llmux_tenants_t *ts, llmux_usage_store_t *usage,
                       const llmux_tenant_t *t, uint64_t tokens, uint64_t now_ms,
                       int64_t wall_ms, llmux_rl_reservation_t *res,
                       llmux_tenant_verdict_t *v);

/* ---- keys ---------------------------------------------------------------- */

void llmux_key_sha256(const char *key, size_t len, unsigned char out[LLMUX_KEY_HASH_LEN]);
void llmux_key_hex(const unsigned char h[LLMUX_KEY_HASH_LEN], char out[2 * LLMUX_KEY_HASH_LEN + 1]);
/* A fresh key into out[LLMUX_KEY_STRLEN]: 0, or LLMUX_EIO when the system's
 * random source fails. */
int llmux_key_generate(char out[LLMUX_KEY_STRLEN]);
/* Constant-time comparison of two digests: 1 when equal. */
int llmux_key_hash_equal(const unsigned char *a, const unsigned char *b);

#ifdef __cplusplus
}
#endif
#endif /* LLMUX_TENANT_H */
