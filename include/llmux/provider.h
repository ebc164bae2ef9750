/* llmux provider plugin ABI.
 *
 * This is the only header a provider plugin includes (it pulls in
 * llmux/common.h). A plugin is a shared object that exports one symbol,
 * llmux_provider_init(), and never links against the gateway: every service
 * it needs comes through the llmux_host_api_t table passed to that entry
 * point.
 *
 * Threading: every call into a plugin happens on the gateway's event-loop
 * thread. A plugin never blocks and never does I/O of its own: it turns an
 * OpenAI-format request into bytes for its provider, and the provider's
 * bytes back into OpenAI-format bytes for the client. The gateway does the
 * networking, retries and failover.
 *
 * Versioning: LLMUX_PROVIDER_ABI_MAJOR changes when a change would break an
 * existing plugin; the gateway refuses to load a plugin built for another
 * major. MINOR grows when fields or functions are appended. Structs only
 * ever grow at the end (or into their reserved slots), and each starts with
 * its own size so both sides can tell which fields the other knows. The
 * host reads an optional vtable slot only through LLMUX_PROVIDER_HAS; a
 * plugin reads a host service added after 1.0 only through LLMUX_HOST_HAS
 * (or refuses an older host with LLMUX_PROVIDER_ENTRY_MIN).
 */
#ifndef LLMUX_PROVIDER_H
#define LLMUX_PROVIDER_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "llmux/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LLMUX_PROVIDER_ABI_MAJOR 1
#define LLMUX_PROVIDER_ABI_MINOR 4

/* The symbol the gateway looks up with dlsym(). */
#define LLMUX_PROVIDER_INIT_SYMBOL "llmux_provider_init"

#if defined(__GNUC__)
#define LLMUX_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define LLMUX_PLUGIN_EXPORT
#endif

enum {
  LLMUX_LOG_LEVEL_ERROR = 0,
  LLMUX_LOG_LEVEL_WARN = 1,
  LLMUX_LOG_LEVEL_INFO = 2,
  LLMUX_LOG_LEVEL_DEBUG = 3
};

/* ---- Configuration keys a plugin declares ------------------------------ */

typedef enum {
  LLMUX_KEY_STRING = 1,
  LLMUX_KEY_INT,       /* non-negative decimal integer */
  LLMUX_KEY_BOOL,      /* true/false, yes/no, on/off, 1/0 */
  LLMUX_KEY_DURATION,  /* "500ms", "10s", "2m"; bare number = seconds */
  LLMUX_KEY_SIZE,      /* "16k", "8m"; bare number = bytes */
  LLMUX_KEY_DOUBLE
} llmux_key_type_t;

/* A key of the plugin's own in its `[provider NAME]` section. The host
 * validates type and reports mistakes as `file:line: message`, the same way
 * for every plugin. The table ends with an entry whose name is NULL. */
typedef struct llmux_config_key_s {
  const char *name;
  llmux_key_type_t type;
  const char *default_value; /* NULL: no default */
  const char *description;
} llmux_config_key_t;

typedef struct llmux_header_s {
  llmux_str_t name;
  llmux_str_t value;
} llmux_header_t;

/* What create() receives. Everything is borrowed from the gateway's
 * configuration snapshot and stays valid until destroy() returns. */
typedef struct llmux_provider_config_s {
  size_t size;               /* sizeof(llmux_provider_config_t) as the host knows it */
  const char *name;          /* the section's name: "groq" */
  const char *base_url;      /* "https://api.groq.com/openai/v1", no trailing '/' */
  const char *base_path;     /* path part of base_url: "/openai/v1" (may be "") */
  const char *api_key;       /* from the environment; NULL when the provider has none */
  const llmux_header_t *headers; /* `header.NAME = value` lines, in file order */
  size_t nheaders;
  /* The value of a declared key (or its default; NULL when neither). */
  const char *(*get)(const struct llmux_provider_config_s *cfg, const char *key);
  void *reserved[4];
} llmux_provider_config_t;

/* ---- One request passing through a provider ---------------------------- */

typedef enum {
  LLMUX_ENDPOINT_CHAT = 1,        /* POST /v1/chat/completions */
  LLMUX_ENDPOINT_COMPLETIONS = 2, /* POST /v1/completions */
  LLMUX_ENDPOINT_EMBEDDINGS = 3,  /* POST /v1/embeddings */
  /* ABI 1.4, native passthrough: the client spoke the provider's own API,
   * and the host asks for the request as it is, untranslated. A plugin
   * sees these only when its features() declares the format
   * (LLMUX_FEATURE_MESSAGES, LLMUX_FEATURE_RESPONSES, see there). */
  LLMUX_ENDPOINT_MESSAGES = 4,    /* Anthropic's POST /v1/messages */
  LLMUX_ENDPOINT_RESPONSES = 5    /* OpenAI's POST /v1/responses */
} llmux_endpoint_t;

typedef struct llmux_usage_s {
  int64_t prompt_tokens;     /* -1 when unknown */
  int64_t completion_tokens; /* -1 when unknown */
} llmux_usage_t;

#define LLMUX_TXN_MAX_BODY_PARTS 8

/* A transaction: one attempt of one client request on one route. The host
 * owns it; the plugin keeps its per-request state in `data` (allocated in
 * translate_request, released in txn_free).
 *
 * Retries. The same txn carries every attempt of a client request. When an
 * attempt follows one on the same provider (the same `[provider]` section,
 * so the same instance), `data` is kept as the plugin left it, and
 * translate_request runs again with `attempt` one higher: reuse the state
 * and reset what belongs to one attempt. When the next attempt is on
 * another provider, the host first calls txn_free for the old one and sets
 * `data` to NULL, so a plugin never sees another instance's state. */
typedef struct llmux_txn_s {
  void *data; /* public: the plugin's; see Retries above */
  size_t size;

  /* read-only: the client's request, valid for the life of the txn */
  llmux_endpoint_t endpoint;
  llmux_str_t body;        /* the client's JSON body, byte for byte */
  llmux_str_t model_value; /* the "model" string value inside `body`, quotes
                              included, so a plugin can splice in another id
                              without re-serialising the body */
  int stream;              /* the request asked for "stream": true */
  unsigned attempt;        /* 0 on the first try; translation is idempotent */
  const char *canonical_model; /* "llama-3.3-70b" */
  const char *provider_model;  /* the provider's id: "llama-3.3-70b-versatile" */

  /* out, set by translate_request */
  const char *method;        /* static string; NULL means "POST" */
  llmux_buf_t path;          /* appended to base_path: "/chat/completions" */
  llmux_buf_t headers;       /* "Name: value\r\n" lines. The host adds Host,
                                Content-Length, Content-Type (JSON),
                                Connection and the `header.*` extras. */
  llmux_str_t body_parts[LLMUX_TXN_MAX_BODY_PARTS];
  unsigned nbody_parts;      /* the upstream body is these parts in order;
                                each points into `body` or into memory the
                                plugin owns until txn_free */

  /* read-only: the upstream response, set before parse_response and
   * classify_error */
  int status;
  const llmux_header_t *resp_headers; /* valid for the life of the txn */
  size_t nresp_headers;

  /* out, set by parse_response as it learns them */
  llmux_usage_t usage;
  /* The provider's own id of the model that answered ("gpt-4o-2024-08-06"
   * for "gpt-4o"), as its answer names it; leave it empty when it does not.
   * The host reports it to the client in the `x-llmux-served-model` header
   * of answers whose head goes out after the body (not streams: their head
   * leaves before the first byte); `x-llmux-model` stays the configured
   * model of the route that served. Printable ASCII without spaces, at
   * most 256 bytes: anything else is not reported. */
  llmux_buf_t served_model;

  void *reserved[8];

  /* ---- ABI 1.4: appended; a plugin writes them only when
   * LLMUX_TXN_HAS(txn, member) (an older host's txn is shorter) ---------- */

  /* out, set by translate_request: the request fields the plugin changed so
   * that this provider can serve the request ("temperature" clamped to
   * Anthropic's 0-1), comma-separated without spaces. The host reports
   * them to the client in the `x-llmux-adjusted` header (plain answers,
   * stream heads and errors alike); printable ASCII, at most 256 bytes,
   * anything else is not reported. */
  llmux_buf_t adjusted;
  /* out, set by translate_request when it returns LLMUX_EINVAL: why this
   * provider cannot serve the request, in words for the client ("Provider
   * 'anthropic' does not support logprobs"). The host tries the next
   * route; when none serves, the client's 400 carries these words (else
   * the host's generic "cannot accept this request"). */
  llmux_buf_t refusal;
} llmux_txn_t;

/* Does the host's `txn` have `member` (ABI 1.4 and later)? */
#define LLMUX_TXN_HAS(txn, member)                                              \
  ((txn)->size >= offsetof(llmux_txn_t, member) + sizeof((txn)->member))

/* What went wrong, for the router. */
typedef enum {
  LLMUX_FAIL_NONE = 0,
  LLMUX_FAIL_RATE_LIMITED,   /* 429: another route may serve now */
  LLMUX_FAIL_QUOTA,          /* spend/plan limit: this provider is out until reset */
  LLMUX_FAIL_OVERLOADED,     /* 503/529 */
  LLMUX_FAIL_SERVER,         /* other 5xx */
  LLMUX_FAIL_TIMEOUT,
  LLMUX_FAIL_AUTH,           /* 401/403: our key is wrong */
  LLMUX_FAIL_BAD_REQUEST,    /* the client's fault: never retried */
  LLMUX_FAIL_CONTEXT_LENGTH, /* a model with a larger window may succeed */
  LLMUX_FAIL_MODEL_NOT_FOUND,/* this provider lacks the model */
  LLMUX_FAIL_CONTENT_FILTER,
  LLMUX_FAIL_UPSTREAM_GARBAGE
} llmux_fail_class_t;

typedef struct llmux_error_info_s {
  llmux_fail_class_t cls;
  int retry_elsewhere;      /* another route may succeed */
  int retry_same;           /* transient: this route may succeed after a backoff */
  uint64_t retry_after_ms;  /* 0 when the provider said nothing */
  llmux_buf_t message;      /* the provider's own words, for the client */
} llmux_error_info_t;

/* ---- Rate-limit headers (ABI 1.3) -------------------------------------- */

/* A provider's rate-limit headers come in dialects, named by strings:
 *  "openai"    x-ratelimit-{limit,remaining,reset}-{requests,tokens}, per
 *              minute; reset a Go duration ("6m0s", "20ms")
 *  "groq"      the same names, but -requests counts per DAY
 *  "cerebras"  x-ratelimit-*-requests-day and -tokens-minute; reset seconds;
 *              the host also reserves prompt + max tokens up front
 *  "anthropic" anthropic-ratelimit-{requests,tokens,input-tokens,
 *              output-tokens}-{limit,remaining,reset}; reset an RFC 3339 time
 *  "generic"   read like openai (the default)
 * Every dialect reads retry-after (seconds or an HTTP-date) and OpenAI's
 * retry-after-ms, which wins. A plugin names its provider's dialect in its
 * vtable (ratelimit_dialect); a provider's `ratelimit_headers` key wins. */

enum {
  LLMUX_RATELIMIT_REQUESTS_MINUTE = 0,
  LLMUX_RATELIMIT_REQUESTS_DAY,
  LLMUX_RATELIMIT_TOKENS_MINUTE,
  LLMUX_RATELIMIT_TOKENS_DAY,
  LLMUX_RATELIMIT_NDIMS
};

/* One dimension as the provider reported it. */
typedef struct llmux_ratelimit_dim_s {
  int has_limit, has_remaining, has_reset;
  uint64_t limit;
  uint64_t remaining;
  uint64_t reset_in_ms; /* delay from the response's arrival; never above 2 days */
} llmux_ratelimit_dim_t;

/* What parse_ratelimit_headers found. The caller sets `size`. */
typedef struct llmux_ratelimit_info_s {
  size_t size; /* sizeof(llmux_ratelimit_info_t) as the caller knows it */
  llmux_ratelimit_dim_t dims[LLMUX_RATELIMIT_NDIMS];
  int has_retry_after;
  uint64_t retry_after_ms; /* never above 2 days */
} llmux_ratelimit_info_t;

/* ---- Splitting a body into lines or events (ABI 1.3) -------------------- */

/* An incremental splitter, the host's (opaque). Fed a response body in
 * pieces cut anywhere, it yields the same items as for the body whole. */
typedef struct llmux_split_s llmux_split_t;

enum {
  /* NDJSON: lines ended by \n (a \r before it is dropped); empty lines
   * are skipped. */
  LLMUX_SPLIT_NDJSON = 1,
  /* Server-Sent Events: lines ended by \r\n, \n or \r; each item is one
   * event's data, its `data:` lines joined by \n (one space after the
   * colon dropped). Comments and the event, id and retry fields are
   * skipped; a blank line ends an event; one without data is skipped. */
  LLMUX_SPLIT_SSE = 2
};

/* ---- Services the gateway lends the plugin ----------------------------- */

typedef struct llmux_host_api_s {
  unsigned abi_major, abi_minor;
  size_t size; /* sizeof(llmux_host_api_t) as the host knows it */

  void (*log)(int level, const char *fmt, ...);
  void *(*malloc)(size_t n);
  void *(*realloc)(void *p, size_t n);
  void (*free)(void *p);

  /* Buffers grow with the host's allocator; 0 or LLMUX_ENOMEM. */
  int (*buf_append)(llmux_buf_t *b, const void *data, size_t n);
  int (*buf_printf)(llmux_buf_t *b, const char *fmt, ...);
  int (*buf_append_json_str)(llmux_buf_t *b, const char *s, size_t n);
  void (*buf_free)(llmux_buf_t *b);

  /* Case-insensitive header lookup; NULL when absent. */
  const llmux_str_t *(*header_get)(const llmux_header_t *h, size_t n, const char *name);

  /* Sends bytes to the client (the response body, or SSE frames for a
   * stream). The data is borrowed for the duration of the call. */
  int (*emit)(llmux_txn_t *txn, const char *data, size_t len);

  /* The client's body as a jansson json_t*, parsed on first use and owned
   * by the host (a plugin that uses it links libjansson itself). NULL if
   * the body is not JSON. */
  void *(*request_json)(llmux_txn_t *txn);

  /* ---- ABI 1.3: check with LLMUX_HOST_HAS before use ------------------- */

  /* Reads a response's rate-limit headers in `dialect` (see above; NULL or
   * an unknown name: "generic") into *out, whose `size` the caller set.
   * Names are case-insensitive; malformed values and resets or waits
   * beyond 2 days are ignored. `wall_ms` is the Unix time in ms that
   * absolute dates are measured from, 0 for now. Returns the number of
   * facts found (0: none), or LLMUX_EINVAL for a bad `out`. */
  int (*parse_ratelimit_headers)(const char *dialect, const llmux_header_t *headers,
                                 size_t n, int64_t wall_ms, llmux_ratelimit_info_t *out);

  /* The usual reading of an HTTP status, into out->cls, retry_elsewhere
   * and retry_same (nothing else is touched), for classify_error to refine
   * with what the body says. Returns out->cls.
   *   429 RATE_LIMITED, elsewhere      402 QUOTA, elsewhere
   *   401, 403 AUTH, elsewhere         404 MODEL_NOT_FOUND, elsewhere
   *   408, 504 TIMEOUT, elsewhere and same
   *   503, 529 OVERLOADED, elsewhere and same
   *   other 5xx SERVER, elsewhere and same
   *   other 4xx BAD_REQUEST, final (the client's request)
   *   anything else UPSTREAM_GARBAGE, elsewhere (not an error status) */
  llmux_fail_class_t (*classify_status)(int status, llmux_error_info_t *out);

  /* A Retry-After value: delay-seconds (a decimal fraction is accepted and
   * rounded up to the ms) or an HTTP-date (IMF-fixdate, RFC 850, asctime;
   * one in the past is 0), measured from `wall_ms` (Unix ms; 0: now).
   * Surrounding spaces are allowed; a sign, an exponent, "inf", trailing
   * bytes and a wait above 2 days are not. 0 with *out_ms set, or
   * LLMUX_EINVAL with *out_ms untouched. */
  int (*parse_retry_after)(const char *value, size_t len, int64_t wall_ms, uint64_t *out_ms);

  /* A splitter of LLMUX_SPLIT_* `mode` whose lines and items are at most
   * `max` bytes (0: 16 MiB); NULL when out of memory or `mode` is unknown.
   * Free it with split_free (NULL is fine). */
  llmux_split_t *(*split_new)(int mode, size_t max);
  /* Takes bytes from *data / *len (advancing both) up to the end of the
   * next complete item: returns 1 with it in *item, borrowed until the
   * next call on `s` and no longer than the bytes passed in. Returns 0
   * once every byte is taken (an unfinished item is kept for the next
   * call); with `eof`, an unfinished last line and event count as
   * complete first. LLMUX_EUPSTREAM for a line or item above `max`,
   * LLMUX_ENOMEM. Call it again with the same data until it returns 0. */
  int (*split_next)(llmux_split_t *s, const char **data, size_t *len, int eof,
                    llmux_str_t *item);
  /* Forgets everything kept (for a new attempt). */
  void (*split_reset)(llmux_split_t *s);
  void (*split_free)(llmux_split_t *s);
} llmux_host_api_t;

/* Does `host` lend `member`? (It was built with it, and it is set.) */
#define LLMUX_HOST_HAS(host, member)                                            \
  ((host)->size >= offsetof(llmux_host_api_t, member) + sizeof((host)->member) && \
   (host)->member != NULL)

/* ---- What the plugin implements ---------------------------------------- */

typedef struct llmux_provider_s {
  unsigned abi_major, abi_minor; /* LLMUX_PROVIDER_ABI_* the plugin was built with */
  size_t size;                   /* sizeof(llmux_provider_t) */
  const char *name;              /* "openai": matches `plugin = openai` */
  const char *description;
  const llmux_config_key_t *config; /* declared keys, or NULL */

  /* One instance per `[provider]` section. *instance is the plugin's.
   * On failure return a negative LLMUX_E* and write a reason into err. */
  int (*create)(const llmux_provider_config_t *cfg, void **instance, char *err,
                size_t errlen);
  void (*destroy)(void *instance);

  /* Fill txn's out fields. Called again, from scratch, on a retry (the host
   * clears the out fields first). Returns 0 or a negative LLMUX_E*. */
  int (*translate_request)(void *instance, llmux_txn_t *txn);

  /* Fed the bytes of a 2xx response body as they arrive (`eof` set on the
   * last call, possibly with len 0). Sends OpenAI-format bytes to the client
   * with host->emit. Returns 0, or LLMUX_EUPSTREAM for a body it cannot
   * make sense of. */
  int (*parse_response)(void *instance, llmux_txn_t *txn, const char *data, size_t len,
                        int eof);

  /* A non-2xx response, its whole body: how should the router react. */
  int (*classify_error)(void *instance, llmux_txn_t *txn, const char *body, size_t len,
                        llmux_error_info_t *out);

  /* Releases txn->data and whatever the plugin kept for this txn. */
  void (*txn_free)(void *instance, llmux_txn_t *txn);

  /* ---- ABI 1.1: optional; NULL when the plugin does not offer them ---- */

  /* The provider could not be reached at all (`err` is LLMUX_ECONNREFUSED,
   * LLMUX_EDNS, LLMUX_ETIMEOUT, ...; `detail` the host's words): append
   * advice for the user to `out`, e.g. "Ollama is not running: start it
   * with `ollama serve`". The advice goes to API clients: name no address,
   * host or URL (the gateway logs those for the operator). Returns 0, or
   * nonzero for no advice. */
  int (*explain_error)(void *instance, int err, const char *detail, llmux_buf_t *out);

  /* Listing the provider's own models (`llmux models`): fill txn's method,
   * path and headers for the request (body parts may stay empty), then
   * parse the whole 2xx body into model names, each appended to `names`
   * followed by a NUL byte. */
  int (*models_request)(void *instance, llmux_txn_t *txn);
  int (*parse_models)(void *instance, const char *body, size_t len, llmux_buf_t *names);

  /* ---- ABI 1.2: optional ---------------------------------------------- */

  /* Answers the request inside the plugin, with no network at all (the
   * `simple` embedding provider). The host calls it instead of
   * translate_request and the upstream request when the plugin sets it and
   * the provider's section has no base_url (a provider without base_url
   * whose plugin lacks it is a configuration error). The txn's read-only
   * request fields are set as for translate_request; the plugin emits the
   * whole OpenAI-format answer with host->emit before returning (for
   * `stream` the SSE frames and `data: [DONE]`: the host sends the client
   * an event-stream head and the frames once the call returns), and may
   * set usage and served_model.
   * Returns 0, LLMUX_EINVAL when it cannot serve this kind of request
   * (the client's fault, answered 400), or another negative LLMUX_E*
   * (another route is tried). That holds for `stream` too when nothing was
   * emitted; a failure after an emit ends the client's stream with an
   * error event. txn_free follows as usual. */
  int (*respond_local)(void *instance, llmux_txn_t *txn);

  /* ---- ABI 1.3: optional ---------------------------------------------- */

  /* The rate-limit header dialect of the provider this plugin speaks to
   * ("openai", "groq", "cerebras", "anthropic", "generic"; see above), so
   * the host reads its headers right whatever the provider's section is
   * called. NULL: "generic". A section's `ratelimit_headers` key wins (a
   * plugin that serves many providers, like openai, names the usual one). */
  const char *ratelimit_dialect;

  /* ---- ABI 1.4: optional ---------------------------------------------- */

  /* What the provider's API offers beyond the basics: LLMUX_FEATURE_* bits,
   * asked per instance (a plugin that serves many providers may answer by
   * section). NULL: none. */
  unsigned (*features)(void *instance);

  void *reserved[2];
} llmux_provider_t;

/* Bits of features() (ABI 1.4). */
enum {
  /* The provider answers a chat or completions request with `n` > 1 with
   * n choices in one response. Without it the host fans such a request out
   * into n requests with n = 1 through the same route and merges their
   * answers (or refuses it: `[server] fan_out = off`). */
  LLMUX_FEATURE_N = 1u << 0,

  /* Native passthrough. The provider speaks a client-facing API itself, so
   * a client of that API is served untranslated: the host calls
   * translate_request with txn->endpoint LLMUX_ENDPOINT_MESSAGES (or
   * _RESPONSES), txn->body the client's own body and txn->model_value its
   * "model"; the plugin fills path ("/messages", "/responses"), its auth
   * headers and the body parts: the body as it is with only the model id
   * spliced in (the openai plugin's splice), never re-serialised. The host
   * then sends the 2xx answer to the client byte for byte, plain or
   * streamed, and reads its usage itself: parse_response is NOT called for
   * such an attempt. A non-2xx answer goes to classify_error as usual (its
   * body is in the provider's own error shape), and when no other route
   * serves, the client gets that body as it is. Failover to a route whose
   * provider lacks the format translates there, as without the bit. */
  LLMUX_FEATURE_MESSAGES = 1u << 1,  /* Anthropic's Messages API (POST /messages) */
  LLMUX_FEATURE_RESPONSES = 1u << 2, /* OpenAI's Responses API (POST /responses), every model */
  /* The plugin can build a Responses request as above, and the provider
   * has the API for some models only: the host passes through the routes
   * of models whose `[model]` declares `capabilities = responses`. */
  LLMUX_FEATURE_RESPONSES_BY_MODEL = 1u << 3
};

/* The ABI minor that added each optional slot (for LLMUX_PROVIDER_HAS). */
#define LLMUX__SINCE_config 0
#define LLMUX__SINCE_destroy 0
#define LLMUX__SINCE_txn_free 0
#define LLMUX__SINCE_explain_error 1
#define LLMUX__SINCE_models_request 1
#define LLMUX__SINCE_parse_models 1
#define LLMUX__SINCE_respond_local 2
#define LLMUX__SINCE_ratelimit_dialect 3
#define LLMUX__SINCE_features 4

/* Does the plugin offer the optional `slot`? It does when it was built
 * with an ABI that has the slot (its abi_minor: a slot may be one of an
 * older plugin's reserved words), its struct covers the slot (its size),
 * and the slot is set. The host reads optional slots only through this. */
#define LLMUX_PROVIDER_HAS(vt, slot)                                           \
  ((vt)->abi_minor + 1u > LLMUX__SINCE_##slot &&  /* ">=", quiet for 0 */     \
   (vt)->size >= offsetof(llmux_provider_t, slot) + sizeof((vt)->slot) &&     \
   (vt)->slot != NULL)

/* The entry point: check host->abi_major, keep `host` (valid for the life
 * of the process), and return the plugin's static vtable in *out. */
typedef int (*llmux_provider_init_fn)(const llmux_host_api_t *host,
                                      const llmux_provider_t **out);

LLMUX_PLUGIN_EXPORT int llmux_provider_init(const llmux_host_api_t *host,
                                            const llmux_provider_t **out);

/* The usual entry point in one line: checks the host's ABI major, keeps the
 * host table in `host_var` (a `static const llmux_host_api_t *`) and returns
 * `vtable` (a static llmux_provider_t):
 *   static const llmux_host_api_t *host;
 *   static const llmux_provider_t my_provider = { ... };
 *   LLMUX_PROVIDER_ENTRY(host, my_provider) */
#define LLMUX_PROVIDER_ENTRY(host_var, vtable)                                  \
  LLMUX_PLUGIN_EXPORT int llmux_provider_init(const llmux_host_api_t *llmux__h, \
                                              const llmux_provider_t **llmux__out) { \
    if (llmux__h->abi_major != LLMUX_PROVIDER_ABI_MAJOR) return LLMUX_EABI;     \
    host_var = llmux__h;                                                        \
    *llmux__out = &(vtable);                                                    \
    return 0;                                                                   \
  }

/* The same for a plugin that uses host services of ABI 1.`min_minor` (at
 * least 1) without checking each with LLMUX_HOST_HAS: an older host gets
 * LLMUX_EABI, and its `llmux check` says the plugin failed to initialise. */
#define LLMUX_PROVIDER_ENTRY_MIN(host_var, vtable, min_minor)                   \
  LLMUX_PLUGIN_EXPORT int llmux_provider_init(const llmux_host_api_t *llmux__h, \
                                              const llmux_provider_t **llmux__out) { \
    if (llmux__h->abi_major != LLMUX_PROVIDER_ABI_MAJOR ||                      \
        llmux__h->abi_minor < (unsigned)(min_minor))                            \
      return LLMUX_EABI;                                                        \
    host_var = llmux__h;                                                        \
    *llmux__out = &(vtable);                                                    \
    return 0;                                                                   \
  }

#ifdef __cplusplus
}
#endif
#endif /* LLMUX_PROVIDER_H */
