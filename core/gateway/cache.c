/* The response cache: see cache.h. */
#include "gateway/cache.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "llmux/common.h"

typedef struct entry_s {
  struct entry_s *hnext;          /* hash chain */
  struct entry_s *prev, *next;    /* LRU: head most recent */
  uint64_t hash;
  uint64_t stored_ms;
  int64_t prompt_tokens, completion_tokens;
  char *sse;                      /* the answer as a stream, made when first asked */
  size_t sse_len;
  size_t key_len, len;
  char data[];                    /* the key, then the answer, NUL-terminated */
} entry_t;

typedef struct tenant_hits_s {
  struct tenant_hits_s *next;
  llmux_cache_tenant_counts_t counts;
  char name[];
} tenant_hits_t;

struct llmux_cache_s {
  entry_t **buckets;
  size_t nbuckets;                /* a power of two */
  size_t count;
  uint64_t bytes, max_bytes, ttl_ms;
  entry_t *head, *tail;
  tenant_hits_t *tenants;
};

/* ---- the table ----------------------------------------------------------- */

static size_t entry_bytes(size_t key_len, size_t len) {
  return sizeof(entry_t) + key_len + len + 1;
}

static size_t held(const entry_t *e) {
  return entry_bytes(e->key_len, e->len) + e->sse_len;
}

static const char *answer_of(const entry_t *e) {
  return e->data + e->key_len;
}

int llmux_cache_new(uint64_t max_bytes, uint64_t ttl_ms, llmux_cache_t **out) {
  llmux_cache_t *c = calloc(1, sizeof *c);
  if (c == NULL) return LLMUX_ENOMEM;
  c->nbuckets = 1024;
  c->buckets = calloc(c->nbuckets, sizeof *c->buckets);
  if (c->buckets == NULL) {
    free(c);
    return LLMUX_ENOMEM;
  }
  c->max_bytes = max_bytes ? max_bytes : (uint64_t)64 << 20;
  c->ttl_ms = ttl_ms ? ttl_ms : 3600000;
  *out = c;
  return 0;
}

void llmux_cache_free(llmux_cache_t *c) {
  entry_t *e, *n;
  tenant_hits_t *t, *tn;
  if (c == NULL) return;
  for (e = c->head; e != NULL; e = n) {
    n = e->next;
    free(e->sse);
    free(e);
  }
  for (t = c->tenants; t != NULL; t = tn) {
    tn = t->next;
    free(t);
  }
  free(c->buckets);
  free(c);
}

static void lru_unlink(llmux_cache_t *c, entry_t *e) {
  if (e->prev) e->prev->next = e->next;
  else c->head = e->next;
  if (e->next) e->next->prev = e->prev;
  else c->tail = e->prev;
  e->prev = e->next = NULL;
}

static void lru_push(llmux_cache_t *c, entry_t *e) {
  e->prev = NULL;
  e->next = c->head;
  if (c->head) c->head->prev = e;
  c->head = e;
  if (c->tail == NULL) c->tail = e;
}

/* Exact match: the hash picks the chain, the whole key decides. */
static entry_t **find_slot(llmux_cache_t *c, const llmux_cache_key_t *k) {
  entry_t **pp = &c->buckets[k->hash & (c->nbuckets - 1)];
  while (*pp != NULL && ((*pp)->hash != k->hash || (*pp)->key_len != k->bytes.len ||
                         memcmp((*pp)->data, k->bytes.base, k->bytes.len) != 0))
    pp = &(*pp)->hnext;
  return pp;
}

static void drop(llmux_cache_t *c, entry_t *e) {
  entry_t **pp = &c->buckets[e->hash & (c->nbuckets - 1)];
  while (*pp != e) pp = &(*pp)->hnext;
  *pp = e->hnext;
  lru_unlink(c, e);
  c->bytes -= held(e);
  c->count--;
  free(e->sse);
  free(e);
}

/* Twice the buckets once there are more entries than buckets. */
static void grow(llmux_cache_t *c) {
  size_t n = c->nbuckets * 2, i;
  entry_t **b = calloc(n, sizeof *b), *e, *next;
  if (b == NULL) return; /* longer chains, still correct */
  for (i = 0; i < c->nbuckets; i++) {
    for (e = c->buckets[i]; e != NULL; e = next) {
      next = e->hnext;
      e->hnext = b[e->hash & (n - 1)];
      b[e->hash & (n - 1)] = e;
    }
  }
  free(c->buckets);
  c->buckets = b;
  c->nbuckets = n;
}

/* The stream rendition of e, made once and kept with it (counted). */
static int make_sse(llmux_cache_t *c, entry_t *e) {
  llmux_buf_t b = {0};
  int rc = llmux_cache_sse(answer_of(e), e->len, &b);
  if (rc != 0) {
    llmux_buf_free(&b);
    return rc;
  }
  e->sse = b.base;
  e->sse_len = b.len;
  c->bytes += b.len;
  /* Room for it from the others; e is the most recent, so goes last. */
  while (c->bytes > c->max_bytes && c->tail != e) drop(c, c->tail);
  return 0;
}

int llmux_cache_get(llmux_cache_t *c, const llmux_cache_key_t *k, uint64_t now_ms, int sse,
                    llmux_cache_answer_t *a) {
  entry_t *e = *find_slot(c, k);
  if (e == NULL) return 0;
  if (now_ms - e->stored_ms >= c->ttl_ms) {
    drop(c, e);
    return 0;
  }
  lru_unlink(c, e);
  lru_push(c, e);
  if (sse && e->sse == NULL && make_sse(c, e) != 0) return 0;
  a->data = sse ? e->sse : answer_of(e);
  a->len = sse ? e->sse_len : e->len;
  a->prompt_tokens = e->prompt_tokens;
  a->completion_tokens = e->completion_tokens;
  return 1;
}

int llmux_cache_put(llmux_cache_t *c, const llmux_cache_key_t *k, const char *data, size_t len,
                    int64_t prompt_tokens, int64_t completion_tokens, uint64_t now_ms) {
  size_t need = entry_bytes(k->bytes.len, len);
  entry_t **pp, *e;
  if (need > c->max_bytes) return LLMUX_ETOOLARGE;
  if ((e = malloc(need)) == NULL) return LLMUX_ENOMEM;
  memset(e, 0, sizeof *e);
  e->hash = k->hash;
  e->key_len = k->bytes.len;
  e->len = len;
  memcpy(e->data, k->bytes.base, k->bytes.len);
  memcpy(e->data + e->key_len, data, len);
  e->data[e->key_len + len] = '\0';
  e->stored_ms = now_ms;
  e->prompt_tokens = prompt_tokens;
  e->completion_tokens = completion_tokens;
  if (*(pp = find_slot(c, k)) != NULL) drop(c, *pp);
  while (c->tail != NULL && c->bytes + need > c->max_bytes) drop(c, c->tail);
  pp = &c->buckets[k->hash & (c->nbuckets - 1)];
  e->hnext = *pp;
  *pp = e;
  lru_push(c, e);
  c->bytes += need;
  if (++c->count > c->nbuckets) grow(c);
  return 0;
}

uint64_t llmux_cache_bytes(const llmux_cache_t *c) {
  return c->bytes;
}

size_t llmux_cache_count(const llmux_cache_t *c) {
  return c->count;
}

/* ---- per-tenant hits ------------------------------------------------------ */

static tenant_hits_t *tenant_find(const llmux_cache_t *c, const char *name) {
  tenant_hits_t *t;
  for (t = c->tenants; t != NULL; t = t->next)
    if (strcmp(t->name, name) == 0) return t;
  return NULL;
}

void llmux_cache_count_hit(llmux_cache_t *c, const char *tenant, uint64_t in, uint64_t out) {
  tenant_hits_t *t;
  if (tenant == NULL) return;
  if ((t = tenant_find(c, tenant)) == NULL) {
    size_t n = strlen(tenant);
    if ((t = calloc(1, sizeof *t + n + 1)) == NULL) return;
    memcpy(t->name, tenant, n + 1);
    t->next = c->tenants;
    c->tenants = t;
  }
  t->counts.requests++;
  t->counts.input_tokens += in;
  t->counts.output_tokens += out;
}

llmux_cache_tenant_counts_t llmux_cache_tenant(const llmux_cache_t *c, const char *tenant) {
  llmux_cache_tenant_counts_t none = {0, 0, 0};
  const tenant_hits_t *t = c && tenant ? tenant_find(c, tenant) : NULL;
  return t ? t->counts : none;
}

/* ---- the key -------------------------------------------------------------- *
 *
 * The body canonicalised straight from its bytes, with no parse into a
 * tree (a jansson load and sorted dump cost more than proxying the request):
 * whitespace outside strings dropped, every object's members sorted by
 * their key's bytes (stable), strings and numbers as written. So "\u0061"
 * and "a", or 1.0 and 1, are different requests: exact match. */

#define CANON_DEPTH 64
#define CANON_INLINE 32

typedef struct span_s {
  const char *b, *e;
} span_t;

typedef struct member_s {
  span_t key, val;
} member_t;

static const char *skip_ws(const char *p, const char *e) {
  while (p < e && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
  return p;
}

/* p at '"': past the closing quote, or NULL. A quote ends the string when
 * an even number of backslashes comes before it. */
static const char *skip_str(const char *p, const char *e) {
  const char *q = p + 1, *b;
  while ((q = memchr(q, '"', (size_t)(e - q))) != NULL) {
    for (b = q; b > p + 1 && b[-1] == '\\'; b--) {}
    if ((q - b) % 2 == 0) return q + 1;
    q++;
  }
  return NULL;
}

/* Past one value (p at its first byte), or NULL. */
static const char *skip_value(const char *p, const char *e) {
  int depth = 0;
  do {
    if (p >= e) return NULL;
    if (*p == '"') {
      if ((p = skip_str(p, e)) == NULL) return NULL;
      continue;
    }
    if (*p == '{' || *p == '[') depth++;
    else if (*p == '}' || *p == ']') depth--;
    else if (depth == 0) { /* a scalar: up to a delimiter */
      while (p < e && !strchr(",]} \n\r\t:", *p)) p++;
      return p;
    }
    p++;
  } while (depth > 0);
  return p;
}

static int key_less(const span_t *a, const span_t *b) {
  size_t la = (size_t)(a->e - a->b), lb = (size_t)(b->e - b->b);
  int c = memcmp(a->b, b->b, la < lb ? la : lb);
  return c < 0 || (c == 0 && la < lb);
}

static int is_key(const span_t *k, const char *quoted) {
  size_t n = strlen(quoted);
  return (size_t)(k->e - k->b) == n && memcmp(k->b, quoted, n) == 0;
}

static int canon(const char *p, const char *e, int depth, int top, llmux_buf_t *out);

/* The members of the object at p (its '{'), into *ms (grown on the heap
 * beyond CANON_INLINE); their count, or -1. */
static long members(const char *p, const char *e, member_t **ms, member_t *inline_ms) {
  size_t n = 0, cap = CANON_INLINE;
  p = skip_ws(p + 1, e);
  if (p < e && *p == '}') return 0;
  for (;;) {
    member_t m;
    if (p >= e || *p != '"') return -1;
    m.key.b = p;
    if ((m.key.e = skip_str(p, e)) == NULL) return -1;
    p = skip_ws(m.key.e, e);
    if (p >= e || *p != ':') return -1;
    m.val.b = skip_ws(p + 1, e);
    if ((m.val.e = skip_value(m.val.b, e)) == NULL) return -1;
    if (n == cap) {
      member_t *g = malloc(2 * cap * sizeof *g);
      if (g == NULL) return -1;
      memcpy(g, *ms, n * sizeof *g);
      if (*ms != inline_ms) free(*ms);
      *ms = g;
      cap *= 2;
    }
    (*ms)[n++] = m;
    p = skip_ws(m.val.e, e);
    if (p < e && *p == ',') { p = skip_ws(p + 1, e); continue; }
    if (p < e && *p == '}') return (long)n;
    return -1;
  }
}

static int canon_object(const char *p, const char *e, int depth, int top, llmux_buf_t *out) {
  member_t inline_ms[CANON_INLINE], *ms = inline_ms, m;
  long n = members(p, e, &ms, inline_ms), i, j;
  int rc = n < 0 ? LLMUX_EINVAL : 0, first = 1;
  for (i = 1; i < n; i++) { /* insertion sort: stable, and objects are small */
    m = ms[i];
    for (j = i; j > 0 && key_less(&m.key, &ms[j - 1].key); j--) ms[j] = ms[j - 1];
    ms[j] = m;
  }
  if (rc == 0) rc = llmux_buf_append(out, "{", 1);
  for (i = 0; rc == 0 && i < n; i++) {
    if (top && (is_key(&ms[i].key, "\"stream\"") || is_key(&ms[i].key, "\"stream_options\"") ||
                is_key(&ms[i].key, "\"user\"") || is_key(&ms[i].key, "\"model\"")))
      continue; /* the resolved model stands for "model" */
    if (!first) rc = llmux_buf_append(out, ",", 1);
    first = 0;
    if (rc == 0) rc = llmux_buf_append(out, ms[i].key.b, (size_t)(ms[i].key.e - ms[i].key.b));
    if (rc == 0) rc = llmux_buf_append(out, ":", 1);
    if (rc == 0) rc = canon(ms[i].val.b, ms[i].val.e, depth + 1, 0, out);
  }
  if (rc == 0) rc = llmux_buf_append(out, "}", 1);
  if (ms != inline_ms) free(ms);
  return rc;
}

static int canon_array(const char *p, const char *e, int depth, llmux_buf_t *out) {
  const char *v;
  int rc = llmux_buf_append(out, "[", 1);
  p = skip_ws(p + 1, e);
  if (p < e && *p == ']') return rc == 0 ? llmux_buf_append(out, "]", 1) : rc;
  while (rc == 0) {
    if ((v = skip_value(p, e)) == NULL) return LLMUX_EINVAL;
    if ((rc = canon(p, v, depth + 1, 0, out)) != 0) return rc;
    p = skip_ws(v, e);
    if (p < e && *p == ',') {
      p = skip_ws(p + 1, e);
      rc = llmux_buf_append(out, ",", 1);
    } else if (p < e && *p == ']') {
      return llmux_buf_append(out, "]", 1);
    } else {
      return LLMUX_EINVAL;
    }
  }
  return rc;
}

/* One value spanning [p, e) (blanks around it allowed), canonical, into out. */
static int canon(const char *p, const char *e, int depth, int top, llmux_buf_t *out) {
  const char *v;
  p = skip_ws(p, e);
  if (p >= e || depth > CANON_DEPTH) return LLMUX_EINVAL;
  if (*p == '{') return canon_object(p, e, depth, top, out);
  if (top) return LLMUX_EINVAL;
  if (*p == '[') return canon_array(p, e, depth, out);
  if ((v = skip_value(p, e)) == NULL || v == p) return LLMUX_EINVAL;
  return llmux_buf_append(out, p, (size_t)(v - p));
}

/* A table's hash (not a digest: the whole key decides a match): 8 bytes at
 * a time, multiplied and rotated, then mixed (MurmurHash3's finaliser). */
static uint64_t hash_bytes(const char *s, size_t n) {
  uint64_t h = 0x9e3779b97f4a7c15ull ^ n, w;
  for (; n >= 8; s += 8, n -= 8) {
    memcpy(&w, s, 8);
    h = ((h << 5 | h >> 59) ^ w) * 0x517cc1b727220a95ull;
  }
  w = 0;
  memcpy(&w, s, n);
  h = ((h << 5 | h >> 59) ^ w) * 0x517cc1b727220a95ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

int llmux_cache_key(const char *tenant, const char *model, const char *body, size_t len,
                    llmux_cache_key_t *k) {
  int rc;
  k->bytes.len = 0;
  if (tenant == NULL) tenant = "";
  /* Each part ends with a NUL (names hold none), so ("ab","c") is not ("a","bc"). */
  rc = llmux_buf_append(&k->bytes, tenant, strlen(tenant) + 1);
  if (rc == 0) rc = llmux_buf_append(&k->bytes, model, strlen(model) + 1);
  if (rc == 0) rc = canon(body, body + len, 0, 1, &k->bytes);
  if (rc != 0) {
    llmux_cache_key_free(k);
    return rc;
  }
  k->hash = hash_bytes(k->bytes.base, k->bytes.len);
  return 0;
}

void llmux_cache_key_free(llmux_cache_key_t *k) {
  llmux_buf_free(&k->bytes);
  k->hash = 0;
}

/* ---- replay as a stream ---------------------------------------------------- */

static int emit(llmux_buf_t *out, json_t *chunk) {
  char *s = json_dumps(chunk, JSON_COMPACT);
  int rc = s ? llmux_buf_printf(out, "data: %s\n\n", s) : LLMUX_ENOMEM;
  free(s);
  json_decref(chunk);
  return rc;
}

/* A chunk's envelope around choices (stolen). */
static json_t *chunk_of(json_t *done, json_t *choices) {
  json_t *c = json_object();
  json_object_set(c, "id", json_object_get(done, "id"));
  json_object_set_new(c, "object", json_string("chat.completion.chunk"));
  json_object_set(c, "created", json_object_get(done, "created"));
  json_object_set(c, "model", json_object_get(done, "model"));
  if (json_object_get(done, "system_fingerprint"))
    json_object_set(c, "system_fingerprint", json_object_get(done, "system_fingerprint"));
  json_object_set_new(c, "choices", choices);
  return c;
}

static json_t *one_choice(json_t *index, json_t *delta, json_t *finish) {
  json_t *a = json_array();
  json_array_append_new(a, json_pack("{s:O,s:o,s:o}", "index", index, "delta", delta,
                                     "finish_reason", finish ? finish : json_null()));
  return a;
}

static int replay_choice(json_t *done, json_t *ch, llmux_buf_t *out) {
  json_t *idx = json_object_get(ch, "index"), *msg = json_object_get(ch, "message");
  json_t *content = json_object_get(msg, "content"), *tools = json_object_get(msg, "tool_calls");
  json_t *finish = json_object_get(ch, "finish_reason"), *calls, *tc;
  size_t i;
  int rc;
  if (!json_is_object(msg) || !json_is_integer(idx)) return LLMUX_EINVAL;
  rc = emit(out, chunk_of(done, one_choice(idx, json_pack("{s:s,s:s}", "role", "assistant",
                                                          "content", ""), NULL)));
  if (rc == 0 && json_is_string(content) && json_string_length(content) > 0)
    rc = emit(out, chunk_of(done, one_choice(idx, json_pack("{s:O}", "content", content), NULL)));
  if (rc == 0 && json_is_array(tools) && json_array_size(tools) > 0) {
    calls = json_array();
    json_array_foreach(tools, i, tc) {
      json_t *c = json_deep_copy(tc);
      json_object_set_new(c, "index", json_integer((json_int_t)i));
      json_array_append_new(calls, c);
    }
    rc = emit(out, chunk_of(done, one_choice(idx, json_pack("{s:o}", "tool_calls", calls), NULL)));
  }
  if (rc == 0)
    rc = emit(out, chunk_of(done, one_choice(idx, json_object(),
                                             finish ? json_incref(finish) : NULL)));
  return rc;
}

int llmux_cache_sse(const char *completion, size_t len, llmux_buf_t *out) {
  json_t *done = json_loadb(completion, len, 0, NULL), *choices, *ch, *usage;
  size_t i;
  int rc = LLMUX_EINVAL;
  choices = json_object_get(done, "choices");
  if (!json_is_array(choices)) goto end;
  rc = 0;
  json_array_foreach(choices, i, ch) {
    if ((rc = replay_choice(done, ch, out)) != 0) goto end;
  }
  if ((usage = json_object_get(done, "usage")) != NULL && json_is_object(usage)) {
    json_t *c = chunk_of(done, json_array());
    json_object_set(c, "usage", usage);
    if ((rc = emit(out, c)) != 0) goto end;
  }
  rc = llmux_buf_appends(out, "data: [DONE]\n\n");
end:
  json_decref(done);
  return rc;
}
