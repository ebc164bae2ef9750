/* The response cache (issue 17): answers of chat completions kept under a
 * key of (tenant, resolved model, canonical body), so that an identical
 * deterministic request is answered without a provider.
 *
 * Key. The tenant's name, the resolved canonical model id and the body
 * canonicalised from its bytes (every object's keys sorted, no whitespace;
 * `model`, `stream`, `stream_options` and `user` left out: the resolved
 * model stands for the first, the others change the answer's shape or the
 * caller's label, not the answer). The whole key is kept with the answer
 * and compared on lookup, so a match is exact and a cache never crosses
 * tenants; a fast 64-bit hash of it only picks the hash chain. (SHA-256 of
 * the key was the first design: it cost more than proxying the request,
 * bench/cache_cost.mjs.) Only a cacheable request is canonicalised, so the
 * normal path pays nothing but the eligibility check on fields the proxy
 * already scanned.
 *
 * Value. The non-stream chat.completion JSON, as the provider answered it,
 * and its usage.
 * Only non-stream answers are stored; a stream request that hits is
 * replayed as SSE chunks synthesised from the stored completion
 * (llmux_cache_sse: role, content, tool_calls, finish, usage, [DONE]).
 *
 * Memory. A hash table with an LRU list, bounded by `max_bytes` (records,
 * keys and entries counted); beyond it the least recently used go. An entry
 * older than `ttl_ms` is a miss and is dropped when seen. Loop thread only,
 * no lock. Times are the caller's milliseconds (tests drive them).
 *
 * Redis (`cache = redis`, gateway/fleet_cache.c) stands behind this table:
 * the proxy asks it on a miss here, stores there too, and keeps what it
 * reads from it here. */
#ifndef LLMUX_GATEWAY_CACHE_H
#define LLMUX_GATEWAY_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "base/util.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct llmux_cache_s llmux_cache_t;

/* A request's key: its canonical bytes (owned) and their hash. */
typedef struct llmux_cache_key_s {
  llmux_buf_t bytes;
  uint64_t hash;
} llmux_cache_key_t;

/* What one tenant's hits saved (since start: kept in memory only). */
typedef struct llmux_cache_tenant_counts_s {
  uint64_t requests;
  uint64_t input_tokens;
  uint64_t output_tokens;
} llmux_cache_tenant_counts_t;

/* 0 and *out, or LLMUX_ENOMEM. max_bytes 0: 64 MiB; ttl_ms 0: 1 h. */
int llmux_cache_new(uint64_t max_bytes, uint64_t ttl_ms, llmux_cache_t **out);
void llmux_cache_free(llmux_cache_t *c);

/* The key of a request into *k (zeroed first by the caller): 0, or
 * LLMUX_EINVAL when the body is not a JSON object (k left empty). `tenant`
 * may be NULL (llmux runs open). Free with llmux_cache_key_free. */
int llmux_cache_key(const char *tenant, const char *model, const char *body, size_t len,
                    llmux_cache_key_t *k);
void llmux_cache_key_free(llmux_cache_key_t *k);

/* A stored answer, borrowed until the next put, get or free. */
typedef struct llmux_cache_answer_s {
  const char *data;
  size_t len;
  int64_t prompt_tokens, completion_tokens; /* as stored; -1: unknown */
} llmux_cache_answer_t;

/* 1 and *a on a hit, which becomes the most recently used; 0 on a miss (an
 * expired entry is dropped). With `sse`, a->data is the answer as a stream
 * (llmux_cache_sse), made on the first such get and kept with the entry
 * (its bytes counted); 0 when the answer cannot be one. */
int llmux_cache_get(llmux_cache_t *c, const llmux_cache_key_t *k, uint64_t now_ms,
                    int sse, llmux_cache_answer_t *a);

/* Keeps a copy of the answer and its usage (replacing one under the same
 * key), evicting the least recently used beyond max_bytes. An answer larger
 * than the whole cache is not kept. 0, or LLMUX_ENOMEM / LLMUX_ETOOLARGE
 * (not kept). */
int llmux_cache_put(llmux_cache_t *c, const llmux_cache_key_t *k, const char *data,
                    size_t len, int64_t prompt_tokens, int64_t completion_tokens,
                    uint64_t now_ms);

/* Bytes and entries held. */
uint64_t llmux_cache_bytes(const llmux_cache_t *c);
size_t llmux_cache_count(const llmux_cache_t *c);

/* Per-tenant counts of hits, for GET /v1/usage. */
void llmux_cache_count_hit(llmux_cache_t *c, const char *tenant, uint64_t in, uint64_t out);
llmux_cache_tenant_counts_t llmux_cache_tenant(const llmux_cache_t *c, const char *tenant);

/* A stored completion replayed as OpenAI chat.completion.chunk SSE events
 * into out, ending with `data: [DONE]`. 0, or LLMUX_EINVAL (not a
 * completion) / LLMUX_ENOMEM. */
int llmux_cache_sse(const char *completion, size_t len, llmux_buf_t *out);

#ifdef __cplusplus
}
#endif
#endif /* LLMUX_GATEWAY_CACHE_H */
