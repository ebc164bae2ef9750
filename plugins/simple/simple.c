/* The `simple` provider plugin: deterministic, hash-based embeddings with
 * no network at all, the offline default for development and tests.
 *
 * A text becomes a bag of features (lower-cased words and the character
 * trigrams of each word); each feature is hashed (FNV-1a, 64 bits) to one
 * of `dimension` components and a sign, the signed counts are summed and
 * the vector is scaled to unit length. Equal texts give equal vectors on
 * every machine, texts sharing words point in similar directions, and no
 * model is involved: it is for plumbing, not for meaning.
 *
 * The plugin serves POST /v1/embeddings through the ABI 1.2 respond_local
 * hook: a `[provider]` section using it has no base_url. */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llmux/provider.h"

#define SIMPLE_MAX_DIMENSION 65536

static const llmux_host_api_t *host;

static const llmux_config_key_t simple_keys[] = {
  {"dimension", LLMUX_KEY_INT, "256",
   "length of every vector (1-65536); a request's `dimensions` may ask for fewer"},
  {NULL, 0, NULL, NULL}
};

typedef struct {
  size_t dimension;
} simple_t;

/* ---- hashing ------------------------------------------------------------- */

static uint64_t fnv1a(uint64_t h, const unsigned char *s, size_t n) {
  size_t i;
  for (i = 0; i < n; i++) {
    h ^= s[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

#define FNV_OFFSET 0xcbf29ce484222325ull

/* One feature: its hash picks the component (low bits, by modulo) and the
 * sign (the top bit), so collisions cancel out on average. */
static void add_feature(float *v, size_t dim, uint64_t seed, const unsigned char *s, size_t n,
                        float weight) {
  uint64_t h = fnv1a(seed, s, n);
  v[h % dim] += (h >> 63) ? -weight : weight;
}

static int is_word_byte(unsigned char c) {
  /* Bytes >= 0x80 belong to UTF-8 sequences: keep them inside words. */
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         c >= 0x80 || c == '_';
}

/* Adds one word (already lower-cased) and its trigrams (with boundary
 * marks, "^ab", "abc", "bc$"). */
static void add_word(float *v, size_t dim, const unsigned char *w, size_t n) {
  unsigned char gram[3];
  size_t i;
  add_feature(v, dim, FNV_OFFSET, w, n, 1.0f);
  if (n < 2) return;
  for (i = 0; i < n; i++) {
    gram[0] = i == 0 ? '^' : w[i - 1];
    gram[1] = w[i];
    gram[2] = i + 1 < n ? w[i + 1] : '$';
    add_feature(v, dim, FNV_OFFSET ^ 0x9e3779b97f4a7c15ull, gram, 3, 0.5f);
  }
}

/* The text's vector into v[0..dim), unit length. Returns the number of
 * words (the "tokens" reported as usage). */
static size_t embed_text(float *v, size_t dim, const char *text, size_t len) {
  unsigned char word[64];
  size_t i = 0, nwords = 0, n;
  double norm = 0;
  memset(v, 0, dim * sizeof *v);
  while (i < len) {
    while (i < len && !is_word_byte((unsigned char)text[i])) i++;
    n = 0;
    while (i < len && is_word_byte((unsigned char)text[i])) {
      unsigned char c = (unsigned char)text[i++];
      if (c >= 'A' && c <= 'Z') c = (unsigned char)(c - 'A' + 'a');
      if (n < sizeof word) word[n++] = c; /* longer words: their first 64 bytes */
    }
    if (n == 0) continue;
    add_word(v, dim, word, n);
    nwords++;
  }
  for (i = 0; i < dim; i++) norm += (double)v[i] * v[i];
  if (norm == 0) {
    /* No word at all (or features that cancelled out): a fixed direction
     * that still depends on the bytes, so the vector stays unit length. */
    v[fnv1a(FNV_OFFSET, (const unsigned char *)text, len) % dim] = 1.0f;
    return nwords;
  }
  norm = sqrt(norm);
  for (i = 0; i < dim; i++) v[i] = (float)(v[i] / norm);
  return nwords;
}

/* ---- the response ---------------------------------------------------------- */

static int append_base64(llmux_buf_t *b, const unsigned char *s, size_t n) {
  static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  char q[4];
  size_t i;
  int rc = 0;
  for (i = 0; i < n && rc == 0; i += 3) {
    uint32_t x = (uint32_t)s[i] << 16;
    if (i + 1 < n) x |= (uint32_t)s[i + 1] << 8;
    if (i + 2 < n) x |= s[i + 2];
    q[0] = tab[(x >> 18) & 63];
    q[1] = tab[(x >> 12) & 63];
    q[2] = i + 1 < n ? tab[(x >> 6) & 63] : '=';
    q[3] = i + 2 < n ? tab[x & 63] : '=';
    rc = host->buf_append(b, q, 4);
  }
  return rc;
}

/* One {"object":"embedding","index":i,"embedding":...} item. base64 is
 * what the official clients ask for by default: the floats as
 * little-endian IEEE-754 binary32. */
static int append_item(llmux_buf_t *b, size_t index, const float *v, size_t dim, int base64) {
  size_t i;
  int rc = host->buf_printf(b, "%s{\"object\":\"embedding\",\"index\":%zu,\"embedding\":",
                            index ? "," : "", index);
  if (base64) {
    unsigned char *bytes = host->malloc(dim * 4);
    if (bytes == NULL) return LLMUX_ENOMEM;
    for (i = 0; i < dim; i++) {
      uint32_t u;
      memcpy(&u, &v[i], 4);
      bytes[4 * i] = (unsigned char)u;
      bytes[4 * i + 1] = (unsigned char)(u >> 8);
      bytes[4 * i + 2] = (unsigned char)(u >> 16);
      bytes[4 * i + 3] = (unsigned char)(u >> 24);
    }
    rc |= host->buf_append(b, "\"", 1);
    rc |= append_base64(b, bytes, dim * 4);
    rc |= host->buf_append(b, "\"}", 2);
    host->free(bytes);
    return rc ? LLMUX_ENOMEM : 0;
  }
  rc |= host->buf_append(b, "[", 1);
  for (i = 0; i < dim && rc == 0; i++) rc = host->buf_printf(b, "%s%.9g", i ? "," : "", v[i]);
  rc |= host->buf_append(b, "]}", 2);
  return rc ? LLMUX_ENOMEM : 0;
}

/* The text of one input item. Token arrays (integers) are embedded by
 * their decimal spelling, so they too map to stable vectors. */
static int item_text(json_t *item, llmux_buf_t *scratch, const char **text, size_t *len) {
  size_t i;
  json_t *tok;
  if (json_is_string(item)) {
    *text = json_string_value(item);
    *len = json_string_length(item);
    return 0;
  }
  if (!json_is_array(item)) return LLMUX_EINVAL;
  scratch->len = 0;
  json_array_foreach(item, i, tok) {
    if (!json_is_integer(tok)) return LLMUX_EINVAL;
    if (host->buf_printf(scratch, "%s%lld", i ? " " : "", (long long)json_integer_value(tok)))
      return LLMUX_ENOMEM;
  }
  *text = scratch->base ? scratch->base : "";
  *len = scratch->len;
  return 0;
}

/* `input` as a list of items: a string or token array is one item; an
 * array of strings or of token arrays is many. */
static int input_items(json_t *input, json_t **items) {
  if (json_is_string(input)) goto one;
  if (!json_is_array(input) || json_array_size(input) == 0) return LLMUX_EINVAL;
  if (json_is_integer(json_array_get(input, 0))) goto one;
  *items = json_incref(input);
  return 0;
one:
  *items = json_array();
  if (*items == NULL || json_array_append(*items, input) != 0) return LLMUX_ENOMEM;
  return 0;
}

typedef struct {
  size_t dim;
  int base64;
  json_t *items;  /* owned */
} embed_req_t;

static int parse_request(simple_t *s, llmux_txn_t *txn, embed_req_t *r) {
  json_t *root = host->request_json(txn), *dims, *fmt;
  const char *f;
  r->dim = s->dimension;
  r->base64 = 0;
  r->items = NULL;
  if (!json_is_object(root)) return LLMUX_EINVAL;
  dims = json_object_get(root, "dimensions");
  if (dims != NULL && !json_is_null(dims)) {
    if (!json_is_integer(dims) || json_integer_value(dims) < 1 ||
        json_integer_value(dims) > (json_int_t)s->dimension)
      return LLMUX_EINVAL;
    r->dim = (size_t)json_integer_value(dims);
  }
  fmt = json_object_get(root, "encoding_format");
  f = json_string_value(fmt);
  if (f != NULL && strcmp(f, "base64") == 0) r->base64 = 1;
  else if (f != NULL && strcmp(f, "float") != 0) return LLMUX_EINVAL;
  return input_items(json_object_get(root, "input"), &r->items);
}

static int build_response(embed_req_t *r, llmux_txn_t *txn, llmux_buf_t *out) {
  llmux_buf_t scratch = {0};
  float *v = host->malloc(r->dim * sizeof *v);
  size_t i, words = 0;
  json_t *item;
  int rc = v ? host->buf_printf(out, "{\"object\":\"list\",\"data\":[") : LLMUX_ENOMEM;
  json_array_foreach(r->items, i, item) {
    const char *text;
    size_t len;
    if (rc != 0) break;
    rc = item_text(item, &scratch, &text, &len);
    if (rc != 0) break;
    words += embed_text(v, r->dim, text, len);
    rc = append_item(out, i, v, r->dim, r->base64);
  }
  if (rc == 0) {
    rc = host->buf_printf(out, "],\"model\":");
    rc |= host->buf_append_json_str(out, txn->provider_model, strlen(txn->provider_model));
    rc |= host->buf_printf(out, ",\"usage\":{\"prompt_tokens\":%zu,\"total_tokens\":%zu}}",
                           words, words);
    if (rc != 0) rc = LLMUX_ENOMEM;
  }
  txn->usage.prompt_tokens = (int64_t)words;
  txn->usage.completion_tokens = 0;
  host->buf_free(&scratch);
  host->free(v);
  return rc;
}

static int simple_respond_local(void *instance, llmux_txn_t *txn) {
  embed_req_t r;
  llmux_buf_t out = {0};
  int rc;
  /* Embeddings only: a chat request routed here is the client's mistake. */
  if (txn->endpoint != LLMUX_ENDPOINT_EMBEDDINGS || txn->stream) return LLMUX_EINVAL;
  rc = parse_request(instance, txn, &r);
  if (rc == 0) rc = build_response(&r, txn, &out);
  if (rc == 0) {
    txn->served_model.len = 0;
    host->buf_append(&txn->served_model, txn->provider_model, strlen(txn->provider_model));
    rc = host->emit(txn, out.base, out.len);
  }
  if (r.items) json_decref(r.items);
  host->buf_free(&out);
  return rc;
}

/* ---- the rest of the vtable ------------------------------------------------ */

static int simple_create(const llmux_provider_config_t *cfg, void **instance, char *err,
                         size_t errlen) {
  const char *d = cfg->get(cfg, "dimension");
  char *end = NULL;
  unsigned long n = d ? strtoul(d, &end, 10) : 0;
  simple_t *s;
  if (d == NULL || end == d || *end != '\0' || n < 1 || n > SIMPLE_MAX_DIMENSION) {
    snprintf(err, errlen, "dimension must be between 1 and %d (not '%s')",
             SIMPLE_MAX_DIMENSION, d ? d : "");
    return LLMUX_ECONFIG;
  }
  s = host->malloc(sizeof *s);
  if (s == NULL) return LLMUX_ENOMEM;
  s->dimension = n;
  *instance = s;
  return 0;
}

static void simple_destroy(void *instance) {
  host->free(instance);
}

/* The host never sends a request for a provider without base_url; these
 * only exist because the ABI requires them. */
static int simple_translate_request(void *instance, llmux_txn_t *txn) {
  (void)instance; (void)txn;
  return LLMUX_EINVAL;
}

static int simple_parse_response(void *instance, llmux_txn_t *txn, const char *data,
                                 size_t len, int eof) {
  (void)instance; (void)txn; (void)data; (void)len; (void)eof;
  return LLMUX_EUPSTREAM;
}

static int simple_classify_error(void *instance, llmux_txn_t *txn, const char *body,
                                 size_t len, llmux_error_info_t *out) {
  (void)instance; (void)txn; (void)body; (void)len;
  out->cls = LLMUX_FAIL_SERVER;
  out->retry_elsewhere = 1;
  return 0;
}

static const llmux_provider_t simple_provider = {
  .abi_major = LLMUX_PROVIDER_ABI_MAJOR,
  .abi_minor = LLMUX_PROVIDER_ABI_MINOR,
  .size = sizeof(llmux_provider_t),
  .name = "simple",
  .description = "deterministic hash-based embeddings, no network (development and tests)",
  .config = simple_keys,
  .create = simple_create,
  .destroy = simple_destroy,
  .translate_request = simple_translate_request,
  .parse_response = simple_parse_response,
  .classify_error = simple_classify_error,
  .respond_local = simple_respond_local,
};

/* respond_local is only ever called by a host of ABI 1.2 or later; an
 * older host would need a base_url and so refuses our config anyway. */
LLMUX_PROVIDER_ENTRY(host, simple_provider)
