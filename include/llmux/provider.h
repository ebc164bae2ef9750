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
 * ever grow at the end, and each starts with its own size so both sides can
 * tell which fields the other knows.
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
#define LLMUX_PROVIDER_ABI_MINOR 2

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
  LLMUX_ENDPOINT_EMBEDDINGS = 3   /* POST /v1/embeddings */
} llmux_endpoint_t;

typedef struct llmux_usage_s {
  int64_t prompt_tokens;     /* -1 when unknown */
  int64_t completion_tokens; /* -1 when unknown */
} llmux_usage_t;

#define LLMUX_TXN_MAX_BODY_PARTS 8

/* A transaction: one attempt of one client request on one route. The host
 * owns it; the plugin keeps its per-request state in `data` (allocated in
 * translate_request, released in txn_free). */
typedef struct llmux_txn_s {
  void *data; /* public: the plugin's */
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
  llmux_buf_t served_model;  /* the model the provider says answered */

  void *reserved[8];
} llmux_txn_t;

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
} llmux_host_api_t;

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
   * `stream` the client already has an event-stream head: emit the SSE
   * frames and `data: [DONE]`), and may set usage and served_model.
   * Returns 0, LLMUX_EINVAL when it cannot serve this kind of request
   * (the client's fault, answered 400), or another negative LLMUX_E*
   * (another route is tried). txn_free follows as usual. */
  int (*respond_local)(void *instance, llmux_txn_t *txn);

  void *reserved[4];
} llmux_provider_t;

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

#ifdef __cplusplus
}
#endif
#endif /* LLMUX_PROVIDER_H */
