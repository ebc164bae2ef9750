#define _GNU_SOURCE
/* The `openai` provider plugin: any OpenAI-compatible API (OpenAI, Groq,
 * Cerebras, OpenRouter, NVIDIA, Together, Fireworks, vLLM, Ollama's /v1).
 *
 * The request body goes out as the client sent it, with only the model id
 * spliced in; the response comes back byte for byte. The only parsing on the
 * success path is a scan of the response's last bytes for token usage. */
#include <jansson.h>
#include <stddef.h>
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
  {NULL, 0, NULL, NULL}
};

typedef struct {
  llmux_buf_t auth_line; /* "Authorization: Bearer KEY\r\n...", pre-formatted once */
} openai_t;

/* Usage sits in the last event of a stream and at the end of a plain body;
 * keep that many trailing bytes to find it without buffering the response. */
#define TAIL_MAX 4096

typedef struct {
  llmux_buf_t model_json; /* the provider's model id as a JSON string */
  char tail[TAIL_MAX];
  size_t tail_len;
  int seen_first;
} openai_txn_t;

static int openai_create(const llmux_provider_config_t *cfg, void **instance, char *err,
                         size_t errlen) {
  openai_t *p = host->malloc(sizeof *p);
  const char *hdr, *scheme, *org;
  int rc = 0;
  if (p == NULL) return LLMUX_ENOMEM;
  memset(p, 0, sizeof *p);
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
    /* The tail buffer is written before it is read: zero the rest only. */
    memset(t, 0, offsetof(openai_txn_t, tail));
    t->tail_len = 0;
    t->seen_first = 0;
    txn->data = t;
  }
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

static void keep_tail(openai_txn_t *t, const char *data, size_t len) {
  if (len >= TAIL_MAX) {
    memcpy(t->tail, data + len - TAIL_MAX, TAIL_MAX);
    t->tail_len = TAIL_MAX;
    return;
  }
  if (t->tail_len + len > TAIL_MAX) {
    size_t drop = t->tail_len + len - TAIL_MAX;
    memmove(t->tail, t->tail + drop, t->tail_len - drop);
    t->tail_len -= drop;
  }
  memcpy(t->tail + t->tail_len, data, len);
  t->tail_len += len;
}

/* The integer after the last `"key":` in s[0..n), or -1. Searched from the
 * end: usage is among the last bytes of an answer and of a stream. */
static int64_t last_int_field(const char *s, size_t n, const char *key) {
  size_t klen = strlen(key);
  const char *p, *end = s + n;
  int64_t v;
  if (n < klen) return -1;
  for (p = end - klen;; p--) {
    if (*p == key[0] && memcmp(p, key, klen) == 0) break;
    if (p == s) return -1;
  }
  p += klen;
  while (p < end && (*p == ' ' || *p == ':' || *p == '"')) p++;
  if (p >= end || *p < '0' || *p > '9') return -1;
  for (v = 0; p < end && *p >= '0' && *p <= '9'; p++) v = v * 10 + (*p - '0');
  return v;
}

/* The first `"model":"..."` value of the response, the id that answered. */
static void find_served_model(llmux_txn_t *txn, const char *data, size_t len) {
  const char *p = memmem(data, len < 2048 ? len : 2048, "\"model\"", 7), *end, *q;
  if (p == NULL) return;
  end = data + len;
  p += 7;
  while (p < end && (*p == ' ' || *p == ':')) p++;
  if (p >= end || *p != '"') return;
  q = memchr(p + 1, '"', (size_t)(end - p - 1));
  if (q == NULL) return;
  txn->served_model.len = 0;
  host->buf_append(&txn->served_model, p + 1, (size_t)(q - p - 1));
}

static int openai_parse_response(void *instance, llmux_txn_t *txn, const char *data,
                                 size_t len, int eof) {
  openai_txn_t *t = txn->data;
  int rc = 0;
  (void)instance;
  if (len > 0) {
    if (!t->seen_first) {
      t->seen_first = 1;
      find_served_model(txn, data, len);
    }
    keep_tail(t, data, len);
    rc = host->emit(txn, data, len);
  }
  if (eof) {
    txn->usage.prompt_tokens = last_int_field(t->tail, t->tail_len, "\"prompt_tokens\"");
    txn->usage.completion_tokens =
        last_int_field(t->tail, t->tail_len, "\"completion_tokens\"");
  }
  return rc;
}

/* retry-after: seconds (possibly fractional); retry-after-ms: milliseconds. */
static uint64_t retry_after_ms(const llmux_txn_t *txn) {
  const llmux_str_t *v;
  char tmp[32];
  v = host->header_get(txn->resp_headers, txn->nresp_headers, "retry-after-ms");
  if (v != NULL && v->len < sizeof tmp) {
    memcpy(tmp, v->base, v->len);
    tmp[v->len] = '\0';
    return (uint64_t)strtod(tmp, NULL);
  }
  v = host->header_get(txn->resp_headers, txn->nresp_headers, "retry-after");
  if (v != NULL && v->len < sizeof tmp) {
    double s;
    memcpy(tmp, v->base, v->len);
    tmp[v->len] = '\0';
    s = strtod(tmp, NULL);
    if (s > 0) return (uint64_t)(s * 1000.0);
  }
  return 0;
}

static int has_word(const char *s, const char *word) {
  return s != NULL && strcasestr(s, word) != NULL;
}

static void classify_status(int status, const char *code, const char *msg,
                            llmux_error_info_t *out) {
  out->retry_elsewhere = 1;
  out->retry_same = 0;
  if (status == 429) {
    out->cls = has_word(code, "insufficient_quota") ? LLMUX_FAIL_QUOTA : LLMUX_FAIL_RATE_LIMITED;
  } else if (status == 401 || status == 403) {
    out->cls = LLMUX_FAIL_AUTH;
  } else if (status == 404) {
    out->cls = LLMUX_FAIL_MODEL_NOT_FOUND;
  } else if (status == 408 || status == 504) {
    out->cls = LLMUX_FAIL_TIMEOUT;
    out->retry_same = 1;
  } else if (status == 503 || status == 529) {
    out->cls = LLMUX_FAIL_OVERLOADED;
    out->retry_same = 1;
  } else if (status >= 500) {
    out->cls = LLMUX_FAIL_SERVER;
    out->retry_same = 1;
  } else if (has_word(code, "context_length") || has_word(msg, "context length") ||
             has_word(msg, "maximum context")) {
    out->cls = LLMUX_FAIL_CONTEXT_LENGTH;
  } else if (has_word(code, "content_filter") || has_word(code, "content_policy")) {
    out->cls = LLMUX_FAIL_CONTENT_FILTER;
    out->retry_elsewhere = 0;
  } else if (has_word(code, "model_not_found")) {
    out->cls = LLMUX_FAIL_MODEL_NOT_FOUND;
  } else {
    out->cls = LLMUX_FAIL_BAD_REQUEST;
    out->retry_elsewhere = 0;
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
  classify_status(txn->status, code, msg, out);
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
  host->free(t);
  txn->data = NULL;
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
};

LLMUX_PROVIDER_ENTRY(host, openai_provider)
