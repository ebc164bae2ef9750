/* An example third-party llmux provider plugin: `uppercase`.
 *
 * It talks to any OpenAI-compatible chat API at its base_url and hands the
 * answers back in capital letters, plain or streamed. Small as it is, it
 * uses every part of the ABI a real plugin uses: declared config keys,
 * create/destroy, translate_request (with the host's parsed request),
 * parse_response fed bytes as they arrive, classify_error, txn_free, the
 * optional explain_error and model listing (`llmux models`), and the ABI
 * 1.3 host services every plugin needs (an SSE splitter, the usual reading
 * of an HTTP status, a strict Retry-After parser) and rate-limit dialect.
 *
 * It includes only <llmux/provider.h> (found with pkg-config) and links
 * libjansson itself; it never links the gateway. Build it with the
 * CMakeLists.txt beside it; docs/plugins.md walks through it. */
#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llmux/provider.h>

static const llmux_host_api_t *host; /* lent by llmux for the life of the process */

/* Keys of our own in a [provider] section; the host validates their type. */
static const llmux_config_key_t uppercase_keys[] = {
  {"chat_path", LLMUX_KEY_STRING, "/chat/completions", "appended to base_url for chat"},
  {NULL, 0, NULL, NULL}
};

/* One per [provider] section. */
typedef struct {
  char *chat_path;
  llmux_buf_t auth;      /* "Authorization: Bearer KEY\r\n", or empty */
  char *base_url;        /* for explain_error */
} uppercase_t;

/* One per request, in txn->data: it survives retries on the same provider. */
typedef struct {
  char *body;            /* the upstream request body (json_dumps) */
  llmux_buf_t in;        /* a plain answer's bytes so far */
  llmux_split_t *sse;    /* a stream's events: the host's splitter, made on first use */
} attempt_t;

/* ---- lifecycle ------------------------------------------------------------ */

static char *dup_str(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = host->malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

static void uppercase_destroy(void *instance) {
  uppercase_t *u = instance;
  host->free(u->chat_path);
  host->free(u->base_url);
  host->buf_free(&u->auth);
  host->free(u);
}

static int uppercase_create(const llmux_provider_config_t *cfg, void **instance, char *err,
                            size_t errlen) {
  uppercase_t *u = host->malloc(sizeof *u);
  const char *path = cfg->get(cfg, "chat_path"); /* ours, or its default */
  if (u == NULL) return LLMUX_ENOMEM;
  memset(u, 0, sizeof *u);
  if (path == NULL || path[0] != '/') {
    snprintf(err, errlen, "chat_path must start with '/'");
    host->free(u);
    return LLMUX_ECONFIG;
  }
  u->chat_path = dup_str(path);
  u->base_url = dup_str(cfg->base_url ? cfg->base_url : "");
  /* The key is a secret: keep it only in the header we send, never log it. */
  if (cfg->api_key) host->buf_printf(&u->auth, "Authorization: Bearer %s\r\n", cfg->api_key);
  if (u->chat_path == NULL || u->base_url == NULL) {
    uppercase_destroy(u);
    return LLMUX_ENOMEM;
  }
  *instance = u;
  return 0;
}

/* ---- request ------------------------------------------------------------- */

static int uppercase_translate_request(void *instance, llmux_txn_t *txn) {
  uppercase_t *u = instance;
  attempt_t *a = txn->data;
  json_t *req = host->request_json(txn), *copy; /* owned by the host */
  if (txn->endpoint != LLMUX_ENDPOINT_CHAT || req == NULL) return LLMUX_EINVAL;
  if (a == NULL) { /* a retry calls us again: reuse the state */
    a = host->malloc(sizeof *a);
    if (a == NULL) return LLMUX_ENOMEM;
    memset(a, 0, sizeof *a);
    txn->data = a;
  }
  free(a->body);
  a->body = NULL;
  a->in.len = 0;
  host->split_reset(a->sse); /* a retry starts a new answer */
  /* The client's body with the provider's model id. */
  copy = json_deep_copy(req);
  if (copy == NULL) return LLMUX_ENOMEM;
  json_object_set_new(copy, "model", json_string(txn->provider_model));
  a->body = json_dumps(copy, JSON_COMPACT);
  json_decref(copy);
  if (a->body == NULL) return LLMUX_ENOMEM;
  if (host->buf_append(&txn->path, u->chat_path, strlen(u->chat_path)) != 0 ||
      host->buf_append(&txn->headers, u->auth.base, u->auth.len) != 0)
    return LLMUX_ENOMEM;
  txn->body_parts[0] = (llmux_str_t){a->body, strlen(a->body)};
  txn->nbody_parts = 1;
  return 0;
}

/* ---- response ------------------------------------------------------------ */

/* Capitals for the `content` string of obj[key], in place. */
static void shout(json_t *obj, const char *key) {
  json_t *s = json_object_get(obj, key);
  char *text;
  size_t i, n;
  if (!json_is_string(s)) return;
  n = json_string_length(s);
  text = malloc(n + 1);
  if (text == NULL) return;
  memcpy(text, json_string_value(s), n + 1);
  for (i = 0; i < n; i++)
    if ((unsigned char)text[i] < 0x80) text[i] = (char)toupper((unsigned char)text[i]);
  json_string_setn(s, text, n);
  free(text);
}

static void read_usage(llmux_txn_t *txn, json_t *msg) {
  json_t *usage = json_object_get(msg, "usage");
  if (!json_is_object(usage)) return;
  txn->usage.prompt_tokens = json_integer_value(json_object_get(usage, "prompt_tokens"));
  txn->usage.completion_tokens =
      json_integer_value(json_object_get(usage, "completion_tokens"));
}

/* Rewrites one JSON answer (or stream chunk) and sends it on. */
static int rewrite(llmux_txn_t *txn, const char *data, size_t len, int chunk) {
  json_t *msg = json_loadb(data, len, 0, NULL), *choice;
  size_t i;
  char *out;
  int rc;
  if (!json_is_object(msg)) {
    json_decref(msg);
    return LLMUX_EUPSTREAM;
  }
  json_array_foreach(json_object_get(msg, "choices"), i, choice)
    shout(json_object_get(choice, chunk ? "delta" : "message"), "content");
  read_usage(txn, msg);
  out = json_dumps(msg, JSON_COMPACT);
  json_decref(msg);
  if (out == NULL) return LLMUX_ENOMEM;
  rc = chunk ? host->emit(txn, "data: ", 6) : 0;
  if (rc == 0) rc = host->emit(txn, out, strlen(out));
  if (rc == 0 && chunk) rc = host->emit(txn, "\n\n", 2);
  free(out);
  return rc;
}

/* Stream: the host's splitter hands over each event's data, whatever the
 * read boundaries; `[DONE]` passes as is. */
static int stream_events(llmux_txn_t *txn, attempt_t *a, const char *data, size_t len,
                         int eof) {
  llmux_str_t ev;
  int rc = 0, more = 0;
  if (a->sse == NULL && (a->sse = host->split_new(LLMUX_SPLIT_SSE, 0)) == NULL)
    return LLMUX_ENOMEM;
  while (rc == 0 && (more = host->split_next(a->sse, &data, &len, eof, &ev)) > 0) {
    if (ev.len == 6 && memcmp(ev.base, "[DONE]", 6) == 0)
      rc = host->emit(txn, "data: [DONE]\n\n", 14);
    else if (ev.len > 0)
      rc = rewrite(txn, ev.base, ev.len, 1);
  }
  return rc ? rc : more < 0 ? more : 0;
}

static int uppercase_parse_response(void *instance, llmux_txn_t *txn, const char *data,
                                    size_t len, int eof) {
  attempt_t *a = txn->data;
  (void)instance;
  if (txn->stream) return stream_events(txn, a, data, len, eof);
  if (len > 0 && host->buf_append(&a->in, data, len) != 0) return LLMUX_ENOMEM;
  /* Plain answer: one JSON object, rewritten once it is all here. */
  return eof ? rewrite(txn, a->in.base ? a->in.base : "", a->in.len, 0) : 0;
}

/* ---- errors ----------------------------------------------------------------- */

static int uppercase_classify_error(void *instance, llmux_txn_t *txn, const char *body,
                                    size_t len, llmux_error_info_t *out) {
  json_t *root = json_loadb(body, len, 0, NULL);
  const char *msg = json_string_value(json_object_get(json_object_get(root, "error"), "message"));
  const llmux_str_t *ra = host->header_get(txn->resp_headers, txn->nresp_headers, "retry-after");
  (void)instance;
  /* The usual reading: 429 rate limited, 401/403 auth, 404 no such model,
   * 5xx retryable, other 4xx the client's fault (a plugin refines it with
   * what the body says). */
  host->classify_status(txn->status, out);
  if (ra != NULL && host->parse_retry_after(ra->base, ra->len, 0, &out->retry_after_ms) != 0)
    out->retry_after_ms = 0; /* garbage, negative or beyond two days: not believed */
  if (msg) host->buf_append(&out->message, msg, strlen(msg));
  json_decref(root);
  return 0;
}

static int uppercase_explain_error(void *instance, int err, const char *detail,
                                   llmux_buf_t *out) {
  uppercase_t *u = instance;
  if (err != LLMUX_ECONNREFUSED) return 1; /* the host's words will do */
  return host->buf_printf(out, "nothing answers at %s (%s): is the server running?",
                          u->base_url, detail);
}

static void uppercase_txn_free(void *instance, llmux_txn_t *txn) {
  attempt_t *a = txn->data;
  (void)instance;
  if (a == NULL) return;
  free(a->body); /* from json_dumps: jansson's allocator */
  host->buf_free(&a->in);
  host->split_free(a->sse);
  host->free(a);
  txn->data = NULL;
}

/* ---- model listing (`llmux models`) ---------------------------------------- */

static int uppercase_models_request(void *instance, llmux_txn_t *txn) {
  uppercase_t *u = instance;
  txn->method = "GET";
  if (host->buf_append(&txn->path, "/models", 7) != 0) return LLMUX_ENOMEM;
  return host->buf_append(&txn->headers, u->auth.base, u->auth.len);
}

static int uppercase_parse_models(void *instance, const char *body, size_t len,
                                  llmux_buf_t *names) {
  json_t *root = json_loadb(body, len, 0, NULL), *m;
  size_t i;
  int rc = json_is_array(json_object_get(root, "data")) ? 0 : LLMUX_EUPSTREAM;
  (void)instance;
  json_array_foreach(json_object_get(root, "data"), i, m) {
    const char *id = json_string_value(json_object_get(m, "id"));
    if (id && rc == 0) rc = host->buf_append(names, id, strlen(id) + 1); /* NUL included */
  }
  json_decref(root);
  return rc;
}

/* ---- the vtable and the entry point ---------------------------------------- */

static const llmux_provider_t uppercase_provider = {
  .abi_major = LLMUX_PROVIDER_ABI_MAJOR,
  .abi_minor = LLMUX_PROVIDER_ABI_MINOR,
  .size = sizeof(llmux_provider_t),
  .name = "uppercase",
  .description = "an example: OpenAI-compatible chat, answered in capitals",
  .config = uppercase_keys,
  .create = uppercase_create,
  .destroy = uppercase_destroy,
  .translate_request = uppercase_translate_request,
  .parse_response = uppercase_parse_response,
  .classify_error = uppercase_classify_error,
  .txn_free = uppercase_txn_free,
  .explain_error = uppercase_explain_error,
  .models_request = uppercase_models_request,
  .parse_models = uppercase_parse_models,
  /* How the provider's rate-limit headers read (ABI 1.3); a provider's
   * `ratelimit_headers` key overrides it. */
  .ratelimit_dialect = "openai",
};

/* Uses the host services of ABI 1.3 unchecked: refuse an older llmux. */
LLMUX_PROVIDER_ENTRY_MIN(host, uppercase_provider, 3)
