/* The host side of the plugin ABI: the services table lent to every plugin
 * (llmux_host_api_t) and the per-attempt state around the public txn.
 * Everything a plugin used to rewrite for itself (reading a status, a
 * Retry-After, rate-limit headers, splitting lines and events) is here
 * once, so every plugin reads a provider the way the gateway does. */
#include "plugin/plugin.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "base/log.h"
#include "base/split.h"
#include "base/util.h"
#include "route/dialects.h"

/* ---- ABI 1.0 ------------------------------------------------------------ */

static void host_log(int level, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  if (level > llmux_log_level) return;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  llmux_log(level, "%s", msg);
}

static int host_buf_printf(llmux_buf_t *b, const char *fmt, ...) {
  va_list ap;
  int n;
  char small[256];
  va_start(ap, fmt);
  n = vsnprintf(small, sizeof small, fmt, ap);
  va_end(ap);
  if (n < 0) return LLMUX_EINVAL;
  if ((size_t)n < sizeof small) return llmux_buf_append(b, small, (size_t)n);
  if (llmux_buf_reserve(b, (size_t)n) != 0) return LLMUX_ENOMEM;
  va_start(ap, fmt);
  vsnprintf(b->base + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return 0;
}

static const llmux_str_t *host_header_get(const llmux_header_t *h, size_t n,
                                          const char *name) {
  size_t i, len = strlen(name);
  for (i = 0; i < n; i++) {
    if (h[i].name.len == len && strncasecmp(h[i].name.base, name, len) == 0)
      return &h[i].value;
  }
  return NULL;
}

static int host_emit(llmux_txn_t *txn, const char *data, size_t len) {
  llmux_host_txn_t *ht = llmux_container_of(txn, llmux_host_txn_t, txn);
  if (ht->emit == NULL) return LLMUX_EINVAL;
  return ht->emit(ht->owner, data, len);
}

static void *host_request_json(llmux_txn_t *txn) {
  llmux_host_txn_t *ht = llmux_container_of(txn, llmux_host_txn_t, txn);
  if (!ht->json_tried) {
    ht->json_tried = 1;
    ht->json = json_loadb(txn->body.base, txn->body.len, 0, NULL);
  }
  return ht->json;
}

/* ---- ABI 1.3 ------------------------------------------------------------ */

static int64_t wall_now_ms(int64_t wall_ms) {
  struct timespec ts;
  if (wall_ms != 0) return wall_ms;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The caller's struct may be older (smaller) than ours: it gets what it
 * has room for, and keeps its own `size`. */
static int host_parse_ratelimit_headers(const char *dialect, const llmux_header_t *headers,
                                        size_t n, int64_t wall_ms,
                                        llmux_ratelimit_info_t *out) {
  llmux_ratelimit_info_t info;
  size_t size;
  int facts;
  if (out == NULL || out->size < offsetof(llmux_ratelimit_info_t, has_retry_after))
    return LLMUX_EINVAL;
  size = out->size < sizeof info ? out->size : sizeof info;
  facts = llmux_rl_parse_headers(llmux_rl_style_from_name(dialect), headers, n,
                                 wall_now_ms(wall_ms), &info);
  info.size = out->size;
  memcpy(out, &info, size);
  return facts;
}

static llmux_fail_class_t host_classify_status(int status, llmux_error_info_t *out) {
  out->retry_elsewhere = 1;
  out->retry_same = 0;
  if (status == 429) {
    out->cls = LLMUX_FAIL_RATE_LIMITED;
  } else if (status == 402) {
    out->cls = LLMUX_FAIL_QUOTA;
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
  } else if (status >= 500 && status <= 599) {
    out->cls = LLMUX_FAIL_SERVER;
    out->retry_same = 1;
  } else if (status >= 400 && status <= 499) {
    out->cls = LLMUX_FAIL_BAD_REQUEST;
    out->retry_elsewhere = 0;
  } else { /* 1xx, 2xx, 3xx or no status: not an answer we can act on */
    out->cls = LLMUX_FAIL_UPSTREAM_GARBAGE;
  }
  return out->cls;
}

static int host_parse_retry_after(const char *value, size_t len, int64_t wall_ms,
                                  uint64_t *out_ms) {
  if (value == NULL || out_ms == NULL) return LLMUX_EINVAL;
  return llmux_rl_parse_retry_after(value, len, wall_now_ms(wall_ms), out_ms);
}

static int host_split_next(llmux_split_t *s, const char **data, size_t *len, int eof,
                           llmux_str_t *item) {
  if (s == NULL || data == NULL || len == NULL || item == NULL) return LLMUX_EINVAL;
  return llmux_split_next(s, data, len, eof, item);
}

static const llmux_host_api_t host_api = {
  .abi_major = LLMUX_PROVIDER_ABI_MAJOR,
  .abi_minor = LLMUX_PROVIDER_ABI_MINOR,
  .size = sizeof(llmux_host_api_t),
  .log = host_log,
  .malloc = malloc,
  .realloc = realloc,
  .free = free,
  .buf_append = llmux_buf_append,
  .buf_printf = host_buf_printf,
  .buf_append_json_str = llmux_buf_append_json_str,
  .buf_free = llmux_buf_free,
  .header_get = host_header_get,
  .emit = host_emit,
  .request_json = host_request_json,
  /* 1.3 */
  .parse_ratelimit_headers = host_parse_ratelimit_headers,
  .classify_status = host_classify_status,
  .parse_retry_after = host_parse_retry_after,
  .split_new = llmux_split_new,
  .split_next = host_split_next,
  .split_reset = llmux_split_reset,
  .split_free = llmux_split_free,
};

const llmux_host_api_t *llmux_host_api(void) {
  return &host_api;
}

/* ---- The txn ------------------------------------------------------------ */

void llmux_host_txn_clear_out(llmux_host_txn_t *ht) {
  llmux_txn_t *t = &ht->txn;
  t->method = NULL;
  t->path.len = 0;
  t->headers.len = 0;
  t->nbody_parts = 0;
  t->usage.prompt_tokens = t->usage.completion_tokens = -1;
  t->served_model.len = 0;
  t->adjusted.len = 0;
  t->refusal.len = 0;
}

void llmux_host_txn_reset(llmux_host_txn_t *ht) {
  llmux_host_txn_clear_out(ht);
  if (ht->json) json_decref(ht->json);
  ht->json = NULL;
  ht->json_tried = 0;
}

void llmux_host_txn_free(llmux_host_txn_t *ht) {
  llmux_buf_free(&ht->txn.path);
  llmux_buf_free(&ht->txn.headers);
  llmux_buf_free(&ht->txn.served_model);
  llmux_buf_free(&ht->txn.adjusted);
  llmux_buf_free(&ht->txn.refusal);
  if (ht->json) json_decref(ht->json);
  ht->json = NULL;
  ht->json_tried = 0;
}
