#define _GNU_SOURCE
/* The `openai` provider plugin: any OpenAI-compatible API (OpenAI, Groq,
 * Cerebras, OpenRouter, NVIDIA, Together, Fireworks, vLLM, Ollama's /v1).
 *
 * The request body goes out as the client sent it, with only the model id
 * spliced in; the response comes back byte for byte. The only parsing on the
 * success path is a scan of the response's last bytes for token usage.
 *
 * Numbers from the provider are untrusted: a usage count is read digit by
 * digit with a bound, so no number overflows, and one that is not a count
 * of 0 to USAGE_MAX tokens reaches the host as unknown (-1). */
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "llmux/provider.h"

static const llmux_host_api_t *host;

static const llmux_config_key_t openai_keys[] = {
  {"auth_header", LLMUX_KEY_STRING, "Authorization",
   "header that carries the key (e.g. api-key for Azure)"},
  {"auth_scheme", LLMUX_KEY_STRING, "Bearer",
   "prefix before the key in auth_header; empty for none"},
  {"organization", LLMUX_KEY_STRING, NULL, "sent as OpenAI-Organization"},
  {"supports_n", LLMUX_KEY_BOOL, "true",
   "the provider answers n > 1 itself; false (Groq): llmux fans the request out"},
  {"responses", LLMUX_KEY_BOOL, "false",
   "the provider serves OpenAI's Responses API (POST /responses) for every model: "
   "POST /v1/responses passes through untranslated"},
  {NULL, 0, NULL, NULL}
};

typedef struct {
  llmux_buf_t auth_line; /* "Authorization: Bearer KEY\r\n...", pre-formatted once */
  const char *name;      /* the section's name, borrowed from cfg, for logs */
  unsigned features;     /* LLMUX_FEATURE_* */
} openai_t;

/* Usage sits in a "usage" object, in the last event of a stream and at the
 * end of a plain body (at most a few hundred bytes from its key to the end,
 * OpenAI's details included). The answer's last TAIL_MAX bytes are kept to
 * find it in, without buffering the answer: a ring each read is copied
 * into once (a stream's event costs a copy of itself, not a search). */
#define TAIL_MAX 1024
#define USAGE_KEY "\"usage\""
#define USAGE_KEY_LEN 7

/* The most tokens one request is believed to use; a provider's larger count
 * is a fault, not usage. */
#define USAGE_MAX 1000000000

/* The model that answered is among the first bytes; a first read shorter
 * than the "model" field keeps up to this many to find it in. */
#define HEAD_MAX 2048

typedef struct {
  llmux_buf_t model_json; /* the provider's model id as a JSON string */
  size_t tail_len;        /* bytes kept in tail */
  size_t tail_end;        /* where the next one goes */
  llmux_buf_t head;       /* the first bytes, while a short first read left
                             the model unseen; freed once it is decided */
  int model_done;         /* served_model found, or given up on */
  char tail[TAIL_MAX];    /* a ring; written before it is read: never zeroed */
} openai_txn_t;

/* A bool key's value as the host validated it (true/false, yes/no, on/off, 1/0). */
static int is_false(const char *v) {
  return v != NULL && (strcasecmp(v, "false") == 0 || strcasecmp(v, "no") == 0 ||
                       strcasecmp(v, "off") == 0 || strcmp(v, "0") == 0);
}

static int is_true(const char *v) {
  return v != NULL && (strcasecmp(v, "true") == 0 || strcasecmp(v, "yes") == 0 ||
                       strcasecmp(v, "on") == 0 || strcmp(v, "1") == 0);
}

static int openai_create(const llmux_provider_config_t *cfg, void **instance, char *err,
                         size_t errlen) {
  openai_t *p = host->malloc(sizeof *p);
  const char *hdr, *scheme, *org;
  int rc = 0;
  if (p == NULL) return LLMUX_ENOMEM;
  memset(p, 0, sizeof *p);
  p->name = cfg->name;
  /* Any provider may have the Responses API for some models (the host asks
   * a model's `capabilities = responses`); `responses = true`: for all. */
  p->features = (is_false(cfg->get(cfg, "supports_n")) ? 0 : LLMUX_FEATURE_N) |
                LLMUX_FEATURE_RESPONSES_BY_MODEL;
  if (is_true(cfg->get(cfg, "responses"))) p->features |= LLMUX_FEATURE_RESPONSES;
  hdr = cfg->get(cfg, "auth_header");
  scheme = cfg->get(cfg, "auth_scheme");
  org = cfg->get(cfg, "organization");
  if (cfg->api_key != NULL && hdr != NULL && *hdr != '\0') {
    rc |= host->buf_printf(&p->auth_line, "%s: %s%s%s\r\n", hdr, scheme ? scheme : "",
                           scheme && *scheme ? " " : "", cfg->api_key);
  }
  if (org != NULL && *org != '\0')
    rc |= host->buf_printf(&p->auth_line, "OpenAI-Organization: %s\r\n", org);
  if (rc != 0) {
    host->buf_free(&p->auth_line);
    host->free(p);
    (void)err; (void)errlen;
    return LLMUX_ENOMEM;
  }
  *instance = p;
  return 0;
}

static void openai_destroy(void *instance) {
  openai_t *p = instance;
  host->buf_free(&p->auth_line);
  host->free(p);
}

static const char *endpoint_path(llmux_endpoint_t ep) {
  switch (ep) {
    case LLMUX_ENDPOINT_CHAT: return "/chat/completions";
    case LLMUX_ENDPOINT_COMPLETIONS: return "/completions";
    case LLMUX_ENDPOINT_EMBEDDINGS: return "/embeddings";
    /* Native passthrough (LLMUX_FEATURE_RESPONSES*): the client's Responses
     * body, spliced like any other; the host passes the answer through and
     * never calls parse_response for it. */
    case LLMUX_ENDPOINT_RESPONSES: return "/responses";
    default: break;
  }
  return NULL;
}

/* Is the client's "model" value already the provider's id? */
static int model_matches(const llmux_txn_t *txn) {
  size_t n = strlen(txn->provider_model);
  return txn->model_value.len == n + 2 &&
         memcmp(txn->model_value.base + 1, txn->provider_model, n) == 0;
}

static int openai_translate_request(void *instance, llmux_txn_t *txn) {
  openai_t *p = instance;
  openai_txn_t *t = txn->data;
  const char *path = endpoint_path(txn->endpoint);
  const char *body = txn->body.base;
  size_t before, after;

  if (path == NULL) return LLMUX_EINVAL;
  if (t == NULL) {
    t = host->malloc(sizeof *t);
    if (t == NULL) return LLMUX_ENOMEM;
    memset(t, 0, offsetof(openai_txn_t, tail));
    txn->data = t;
  }
  /* Another attempt (a failover after a 200 that was garbage) starts afresh. */
  t->tail_len = t->tail_end = t->head.len = 0;
  t->model_done = 0;
  if (host->buf_append(&txn->path, path, strlen(path)) != 0) return LLMUX_ENOMEM;
  if (p->auth_line.len &&
      host->buf_append(&txn->headers, p->auth_line.base, p->auth_line.len) != 0)
    return LLMUX_ENOMEM;

  if (txn->model_value.base == NULL || model_matches(txn)) {
    txn->body_parts[0] = txn->body;
    txn->nbody_parts = 1;
    return 0;
  }
  /* Splice: everything before the old value, the new value, the rest. */
  t->model_json.len = 0;
  if (host->buf_append_json_str(&t->model_json, txn->provider_model,
                                strlen(txn->provider_model)) != 0)
    return LLMUX_ENOMEM;
  before = (size_t)(txn->model_value.base - body);
  after = before + txn->model_value.len;
  txn->body_parts[0] = (llmux_str_t){body, before};
  txn->body_parts[1] = (llmux_str_t){t->model_json.base, t->model_json.len};
  txn->body_parts[2] = (llmux_str_t){body + after, txn->body.len - after};
  txn->nbody_parts = 3;
  return 0;
}

/* The last `"usage"` key in s[0..n): its opening quote, NULL when there
 * is none. Found through its 'u's from the end (memrchr skips the bytes
 * between). */
static const char *last_usage(const char *s, size_t n) {
  const char *u;
  while (n > 0 && (u = memrchr(s, 'u', n)) != NULL) {
    if (u > s && (size_t)(s + n - u) >= USAGE_KEY_LEN - 1 &&
        memcmp(u - 1, USAGE_KEY, USAGE_KEY_LEN) == 0)
      return u - 1;
    n = (size_t)(u - s);
  }
  return NULL;
}

/* libc's memcpy, called: GCC otherwise expands a copy into the ring (a
 * fixed array) as `rep movsq`, slower than libc's for event-sized copies. */
static void *(*volatile ring_copy)(void *, const void *, size_t) = memcpy;

/* Each read's bytes go into the ring once. */
static void keep_tail(openai_txn_t *t, const char *data, size_t len) {
  size_t first;
  if (len >= TAIL_MAX) {
    memcpy(t->tail, data + len - TAIL_MAX, TAIL_MAX);
    t->tail_len = TAIL_MAX;
    t->tail_end = 0;
    return;
  }
  first = len < TAIL_MAX - t->tail_end ? len : TAIL_MAX - t->tail_end;
  ring_copy(t->tail + t->tail_end, data, first);
  if (len > first) ring_copy(t->tail, data + first, len - first);
  t->tail_end = (t->tail_end + len) % TAIL_MAX;
  t->tail_len = t->tail_len + len < TAIL_MAX ? t->tail_len + len : TAIL_MAX;
}

/* The kept bytes in order, into out (TAIL_MAX bytes); their count. */
static size_t tail_bytes(const openai_txn_t *t, char *out) {
  size_t start = (t->tail_end + TAIL_MAX - t->tail_len) % TAIL_MAX;
  size_t first = t->tail_len < TAIL_MAX - start ? t->tail_len : TAIL_MAX - start;
  memcpy(out, t->tail + start, first);
  memcpy(out + first, t->tail, t->tail_len - first);
  return t->tail_len;
}

static int is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

enum { COUNT_ABSENT = 0, COUNT_OK, COUNT_BAD };

/* Where each of the two keys (quoted strings) last is in s[0..end), NULL
 * where it is not: one pass over the quotes. */
static void find_keys(const char *s, const char *end, const char *const keys[2],
                      const char *found[2]) {
  size_t klen[2] = {strlen(keys[0]), strlen(keys[1])};
  const char *q;
  int i;
  found[0] = found[1] = NULL;
  for (q = s; q < end && (q = memchr(q, '"', (size_t)(end - q))) != NULL; q++)
    for (i = 0; i < 2; i++)
      if ((size_t)(end - q) >= klen[i] && q[1] == keys[i][1] && memcmp(q, keys[i], klen[i]) == 0)
        found[i] = q;
}

/* The value after `"key":` at p (NULL: the key is not there; end: where
 * the text ends), as a token count in *out. COUNT_OK; COUNT_ABSENT when
 * there is no such key or it is null; COUNT_BAD for anything else (above
 * USAGE_MAX, negative, fractional, a string), with the value's first bytes
 * in *raw for the log. */
static int count_at(const char *p, const char *end, size_t klen, int64_t *out, llmux_str_t *raw) {
  const char *v;
  int64_t x = 0;
  if (p == NULL) return COUNT_ABSENT;
  for (p += klen; p < end && is_space(*p); p++) {}
  if (p == end || *p != ':') return COUNT_ABSENT; /* the key's text as a value */
  for (p++; p < end && is_space(*p); p++) {}
  if (end - p >= 4 && memcmp(p, "null", 4) == 0) return COUNT_ABSENT;
  /* Digits past the bound stop counting, so any length of them is safe. */
  for (v = p; p < end && *p >= '0' && *p <= '9'; p++)
    if (x <= USAGE_MAX) x = x * 10 + (*p - '0');
  if (p > v && p < end && (*p == ',' || *p == '}' || *p == ']' || is_space(*p)) &&
      x <= USAGE_MAX) {
    *out = x;
    return COUNT_OK;
  }
  for (p = v; p < end && p - v < 24 && *p > ' ' && *p < 0x7f && *p != ',' && *p != '}'; p++) {}
  *raw = (llmux_str_t){v, (size_t)(p - v)};
  return COUNT_BAD;
}

/* The answer's usage for the host, and one log line when the provider's
 * numbers are not token counts (they stay unknown: the host estimates). */
static void read_usage(const openai_t *p, openai_txn_t *t, llmux_txn_t *txn) {
  static const char *const keys[2] = {"\"prompt_tokens\"", "\"completion_tokens\""};
  int64_t *dst[2] = {&txn->usage.prompt_tokens, &txn->usage.completion_tokens};
  char why[160], tail[TAIL_MAX];
  size_t used = 0, n = tail_bytes(t, tail);
  const char *usage = last_usage(tail, n), *at[2] = {NULL, NULL}, *end = tail + n;
  int i;
  /* The counts in the answer's last "usage" object on: a few quotes. */
  if (usage != NULL) find_keys(usage, end, keys, at);
  for (i = 0; i < 2; i++) {
    llmux_str_t raw = {NULL, 0};
    int64_t v = -1;
    if (count_at(at[i], end, strlen(keys[i]), &v, &raw) == COUNT_BAD && used < sizeof why)
      used += (size_t)snprintf(why + used, sizeof why - used, "%s %.*s=%.*s", used ? "," : "",
                               (int)strlen(keys[i]) - 2, keys[i] + 1, (int)raw.len, raw.base);
    *dst[i] = v;
  }
  if (used)
    host->log(LLMUX_LOG_LEVEL_WARN,
              "openai: provider '%s' answered usage%s: not a count of 0 to %d tokens, "
              "reported as unknown", p->name ? p->name : "?", why, USAGE_MAX);
}

/* The first `"model":"..."` value, the id that answered, into served_model;
 * 0 when it is not (all) there. Only the body's first HEAD_MAX bytes count,
 * however the reads were cut, so the answer never depends on them; and only
 * a plain id (printable ASCII, no escapes) is believed, since the host puts
 * it in a response header. */
static int find_served_model(llmux_txn_t *txn, const char *data, size_t len) {
  const char *end = data + (len < HEAD_MAX ? len : HEAD_MAX), *p, *q;
  p = memmem(data, (size_t)(end - data), "\"model\"", 7);
  if (p == NULL) return 0;
  p += 7;
  while (p < end && (*p == ' ' || *p == ':')) p++;
  if (p >= end || *p != '"') return 0;
  for (q = p + 1; q < end && *q != '"'; q++)
    if (*q < 0x20 || *q > 0x7e || *q == '\\') return 0;
  if (q >= end || q - p - 1 > 256) return 0;
  txn->served_model.len = 0;
  host->buf_append(&txn->served_model, p + 1, (size_t)(q - p - 1));
  return 1;
}

/* Looks for the model in the first read, or, when reads are short, in the
 * first HEAD_MAX bytes gathered from several. */
static void look_for_model(openai_txn_t *t, llmux_txn_t *txn, const char *data, size_t len) {
  size_t n = len < HEAD_MAX - t->head.len ? len : HEAD_MAX - t->head.len;
  if (t->head.len == 0 && (find_served_model(txn, data, len) || len >= HEAD_MAX))
    t->model_done = 1;
  else if (host->buf_append(&t->head, data, n) != 0)
    t->model_done = 1; /* out of memory: the model goes unreported */
  else
    t->model_done = find_served_model(txn, t->head.base, t->head.len) || t->head.len == HEAD_MAX;
  if (t->model_done) host->buf_free(&t->head);
}

static int openai_parse_response(void *instance, llmux_txn_t *txn, const char *data,
                                 size_t len, int eof) {
  openai_txn_t *t = txn->data;
  int rc = 0;
  if (len > 0) {
    if (!t->model_done) look_for_model(t, txn, data, len);
    keep_tail(t, data, len);
    rc = host->emit(txn, data, len);
  }
  if (eof) read_usage(instance, t, txn);
  return rc;
}

/* retry-after-ms (OpenAI's, which wins) or retry-after, read by the host
 * as its rate limiter reads them: 0 when absent or not believed. */
static uint64_t retry_after_ms(const llmux_txn_t *txn) {
  llmux_ratelimit_info_t info;
  info.size = sizeof info;
  if (host->parse_ratelimit_headers(NULL, txn->resp_headers, txn->nresp_headers, 0, &info) <= 0 ||
      !info.has_retry_after)
    return 0;
  return info.retry_after_ms;
}

static int has_word(const char *s, const char *word) {
  return s != NULL && strcasestr(s, word) != NULL;
}

/* The host's reading of the status, refined by OpenAI's error code and
 * words: a 429 for money is a quota, and some 4xx another route may serve. */
static void classify(int status, const char *code, const char *msg, llmux_error_info_t *out) {
  llmux_fail_class_t cls = host->classify_status(status, out);
  if (cls == LLMUX_FAIL_RATE_LIMITED && has_word(code, "insufficient_quota")) {
    out->cls = LLMUX_FAIL_QUOTA;
  } else if (cls != LLMUX_FAIL_BAD_REQUEST) {
    return;
  } else if (has_word(code, "context_length") || has_word(msg, "context length") ||
             has_word(msg, "maximum context")) {
    out->cls = LLMUX_FAIL_CONTEXT_LENGTH;
    out->retry_elsewhere = 1;
  } else if (has_word(code, "content_filter") || has_word(code, "content_policy")) {
    out->cls = LLMUX_FAIL_CONTENT_FILTER;
  } else if (has_word(code, "model_not_found")) {
    out->cls = LLMUX_FAIL_MODEL_NOT_FOUND;
    out->retry_elsewhere = 1;
  }
}

static int openai_classify_error(void *instance, llmux_txn_t *txn, const char *body,
                                 size_t len, llmux_error_info_t *out) {
  json_t *root = json_loadb(body, len, 0, NULL), *err;
  const char *code = NULL, *msg = NULL;
  (void)instance;
  err = root ? json_object_get(root, "error") : NULL;
  if (json_is_object(err)) {
    code = json_string_value(json_object_get(err, "code"));
    if (code == NULL) code = json_string_value(json_object_get(err, "type"));
    msg = json_string_value(json_object_get(err, "message"));
  } else if (json_is_string(err)) {
    msg = json_string_value(err);
  }
  classify(txn->status, code, msg, out);
  out->retry_after_ms = retry_after_ms(txn);
  if (msg != NULL)
    host->buf_append(&out->message, msg, strlen(msg));
  else if (len > 0)
    host->buf_append(&out->message, body, len > 300 ? 300 : len);
  json_decref(root);
  return 0;
}

static void openai_txn_free(void *instance, llmux_txn_t *txn) {
  openai_txn_t *t = txn->data;
  (void)instance;
  if (t == NULL) return;
  host->buf_free(&t->model_json);
  host->buf_free(&t->head);
  host->free(t);
  txn->data = NULL;
}

/* ---- model listing (GET /models; issue 16) --------------------------------- */

static int openai_models_request(void *instance, llmux_txn_t *txn) {
  const openai_t *p = instance;
  int rc;
  txn->method = "GET";
  rc = host->buf_append(&txn->path, "/models", 7);
  if (p->auth_line.len) rc |= host->buf_append(&txn->headers, p->auth_line.base, p->auth_line.len);
  return rc ? LLMUX_ENOMEM : 0;
}

/* {"data":[{"id":"..."},...]}, OpenAI's and OpenRouter's shape. */
static int openai_parse_models(void *instance, const char *body, size_t len,
                               llmux_buf_t *names) {
  json_t *root = json_loadb(body, len, 0, NULL), *m;
  json_t *data = json_object_get(root, "data");
  size_t i;
  int rc = 0;
  (void)instance;
  if (!json_is_array(data)) {
    json_decref(root);
    return LLMUX_EUPSTREAM;
  }
  json_array_foreach(data, i, m) {
    const char *id = json_string_value(json_object_get(m, "id"));
    if (id != NULL) rc |= host->buf_append(names, id, strlen(id) + 1);
  }
  json_decref(root);
  return rc ? LLMUX_ENOMEM : 0;
}

/* OpenAI's API and most compatible ones answer `n` themselves; the
 * Responses API is the section's (or a model's) say. */
static unsigned openai_features(void *instance) {
  return ((const openai_t *)instance)->features;
}

static const llmux_provider_t openai_provider = {
  .abi_major = LLMUX_PROVIDER_ABI_MAJOR,
  .abi_minor = LLMUX_PROVIDER_ABI_MINOR,
  .size = sizeof(llmux_provider_t),
  .name = "openai",
  .description = "OpenAI-compatible chat, completions and embeddings APIs",
  .config = openai_keys,
  .create = openai_create,
  .destroy = openai_destroy,
  .translate_request = openai_translate_request,
  .parse_response = openai_parse_response,
  .classify_error = openai_classify_error,
  .txn_free = openai_txn_free,
  .models_request = openai_models_request,
  .parse_models = openai_parse_models,
  /* OpenAI's own headers; Groq, Cerebras and others served through this
   * plugin say theirs with `ratelimit_headers` in their section. */
  .ratelimit_dialect = "openai",
  .features = openai_features,
};

/* Needs the host services of ABI 1.3 (classify_status, rate-limit headers). */
LLMUX_PROVIDER_ENTRY_MIN(host, openai_provider, 3)
