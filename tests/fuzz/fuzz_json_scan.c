/* The request scanner (core/json_scan.h) on arbitrary bytes, checked
 * against jansson, and the token estimates built on it (core/ratelimit.h).
 *
 * Properties, for every input:
 *  - a refusal names an offset inside the input and a reason, and leaves
 *    every field absent unless the reason is a duplicate key;
 *  - the scan with a probe agrees with the scan without one;
 *  - the scanner accepts exactly what jansson parses as a JSON object,
 *    except where the two deliberately differ: nesting deeper than 64 (the
 *    scanner's limit), a key asked for that occurs twice (the scanner's
 *    error, jansson's last-wins), numbers too big for jansson's int/double,
 *    lone UTF-16 surrogates in \u escapes and \u0000 in keys (valid JSON
 *    that jansson refuses), and raw NUL bytes between tokens (invalid JSON
 *    that jansson 2.14 skips: its reader takes NUL for the end of a block);
 *  - for accepted inputs, every field found has jansson's type for that
 *    key (keys compared after unescaping), and the probe hits exactly when
 *    jansson has an "image_url" key at any depth;
 *  - every string value found unquotes to jansson's decoding of it, and
 *    always to valid UTF-8. */
#include <jansson.h>
#include <stdint.h>
#include <string.h>

#include "fuzz.h"
#include "base/json_scan.h"
#include "route/ratelimit.h"
#include "base/util.h"

static const char *const KEYS[] = {"model", "stream", "messages", "tools", "input",
                                   "prompt", "max_tokens", "max_completion_tokens"};
#define NKEYS (sizeof(KEYS) / sizeof(KEYS[0]))
#define PROBE "image_url"

static int jansson_type_is(const json_t *v, llmux_json_type_t t) {
  switch (t) {
    case LLMUX_JSON_OBJECT: return json_is_object(v);
    case LLMUX_JSON_ARRAY: return json_is_array(v);
    case LLMUX_JSON_STRING: return json_is_string(v);
    case LLMUX_JSON_NUMBER: return json_is_number(v);
    case LLMUX_JSON_TRUE: return json_is_true(v);
    case LLMUX_JSON_FALSE: return json_is_false(v);
    case LLMUX_JSON_NULL: return json_is_null(v);
    case LLMUX_JSON_NONE: return v == NULL;
  }
  return 0;
}

/* Levels of containers: {} is 1, {"a":[]} is 2. */
static int depth(const json_t *v) {
  const char *k;
  json_t *c;
  size_t i;
  int d = 0;
  if (json_is_object(v)) {
    json_object_foreach((json_t *)v, k, c) if (depth(c) > d) d = depth(c);
    return d + 1;
  }
  if (json_is_array(v)) {
    json_array_foreach(v, i, c) if (depth(c) > d) d = depth(c);
    return d + 1;
  }
  return 0;
}

static int has_key(const json_t *v, const char *key) {
  const char *k;
  json_t *c;
  size_t i;
  if (json_is_object(v)) {
    json_object_foreach((json_t *)v, k, c) {
      if (strcmp(k, key) == 0 || has_key(c, key)) return 1;
    }
  } else if (json_is_array(v)) {
    json_array_foreach(v, i, c) if (has_key(c, key)) return 1;
  }
  return 0;
}

/* A divergence from jansson that is deliberate (see the top). */
static int known_difference(const json_error_t *e) {
  return strstr(e->text, "too big") != NULL || strstr(e->text, "overflow") != NULL ||
         strstr(e->text, "invalid Unicode") != NULL || strstr(e->text, "NUL byte") != NULL;
}

/* Well-formed UTF-8 (no overlongs, surrogates or values past U+10FFFF). */
static int utf8_valid(const unsigned char *p, size_t n) {
  size_t i = 0, k, j;
  while (i < n) {
    unsigned c = p[i], lo = 0x80, hi = 0xbf;
    if (c < 0x80) { i++; continue; }
    if (c >= 0xc2 && c <= 0xdf) k = 2;
    else if (c >= 0xe0 && c <= 0xef) k = 3;
    else if (c >= 0xf0 && c <= 0xf4) k = 4;
    else return 0;
    if (c == 0xe0) lo = 0xa0;
    else if (c == 0xed) hi = 0x9f;
    else if (c == 0xf0) lo = 0x90;
    else if (c == 0xf4) hi = 0x8f;
    for (j = 1; j < k; j++, lo = 0x80, hi = 0xbf)
      if (i + j >= n || p[i + j] < lo || p[i + j] > hi) return 0;
    i += k;
  }
  return 1;
}

/* One string value as the scanner found it: unquote agrees with jansson,
 * and gives valid UTF-8 even where jansson refuses (lone surrogates). */
static void check_unquote(llmux_str_t v) {
  json_error_t e;
  json_t *s = json_loadb(v.base, v.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
  size_t cap = v.len + 2; /* decoding never grows a string; a lone surrogate
                             (6 bytes) becomes U+FFFD (3 bytes) */
  char *out = malloc(cap);
  int rc = llmux_json_unquote(v, out, cap);
  FUZZ_CHECK(rc == 0 || rc == LLMUX_EINVAL, "unquote rc %d", rc);
  if (rc == 0) FUZZ_CHECK(utf8_valid((const unsigned char *)out, strlen(out)), "not UTF-8");
  if (s == NULL) {
    FUZZ_CHECK(known_difference(&e), "jansson refuses the string value: %s", e.text);
  } else {
    size_t want = json_string_length(s);
    FUZZ_CHECK(json_is_string(s), "a string value that is not a string");
    if (memchr(json_string_value(s), '\0', want) != NULL) {
      FUZZ_CHECK(rc == LLMUX_EINVAL, "unquote of a string holding U+0000: %d", rc);
    } else {
      FUZZ_CHECK(rc == 0, "unquote refused a valid string: %d", rc);
      FUZZ_CHECK(strlen(out) == want && memcmp(out, json_string_value(s), want) == 0,
                 "unquote and jansson decode differently");
      if (want > 0) /* one byte short of room for the NUL */
        FUZZ_CHECK(llmux_json_unquote(v, out, want) == LLMUX_ETOOLARGE, "no room, no error");
    }
    json_decref(s);
  }
  free(out);
}

static void check_against_jansson(const char *body, size_t len, const llmux_json_field_t *f,
                                  int ok, const char *msg, int probe_hit) {
  json_error_t e;
  json_t *doc = json_loadb(body, len, JSON_ALLOW_NUL, &e);
  int theirs = doc != NULL && json_is_object(doc);
  const llmux_json_field_t *dup = llmux_json_duplicate(f, NKEYS);
  size_t i;
  if (doc != NULL && depth(doc) > 64) {
    FUZZ_CHECK(!ok, "accepted nesting deeper than 64");
  } else if (doc == NULL && known_difference(&e)) {
    /* deliberate */
  } else if (!ok && theirs && memchr(body, '\0', len) != NULL) {
    /* deliberate: jansson skipped a NUL byte */
  } else if (!ok && theirs && dup != NULL) {
    FUZZ_CHECK(json_object_get(doc, dup->key) != NULL, "a duplicate \"%s\" jansson lacks",
               dup->key);
  } else {
    FUZZ_CHECK(ok == theirs, "scanner %s (%s), jansson %s (%s)", ok ? "accepts" : "refuses",
               ok ? "" : msg, theirs ? "accepts" : "refuses",
               theirs ? "" : doc ? "not an object" : e.text);
  }
  if (ok && theirs) {
    for (i = 0; i < NKEYS; i++) {
      const json_t *v = json_object_get(doc, f[i].key);
      FUZZ_CHECK(jansson_type_is(v, f[i].type), "key \"%s\": scanner type %d", f[i].key,
                 (int)f[i].type);
    }
    FUZZ_CHECK(probe_hit == has_key(doc, PROBE), "probe %d, jansson %d", probe_hit,
               has_key(doc, PROBE));
  }
  json_decref(doc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *body = (const char *)data;
  llmux_json_field_t f[NKEYS], g[NKEYS];
  size_t i, off = (size_t)-1, off2 = (size_t)-1;
  const char *msg = NULL, *msg2 = NULL;
  int rc, rc2, hit = -1;
  uint64_t max_tokens;

  for (i = 0; i < NKEYS; i++) f[i].key = g[i].key = KEYS[i];
  rc = llmux_json_scan_probe(body, size, f, NKEYS, PROBE, &hit, &off, &msg);
  rc2 = llmux_json_scan(body, size, g, NKEYS, &off2, &msg2);
  FUZZ_CHECK(rc == 0 || rc == LLMUX_EINVAL, "rc %d", rc);
  FUZZ_CHECK(rc == rc2, "the probe changed the result: %d vs %d", rc, rc2);
  if (rc != 0) {
    FUZZ_CHECK(off <= size && msg != NULL, "error at %zu of %zu", off, size);
    FUZZ_CHECK(off == off2 && msg == msg2, "the probe changed the error");
    if (llmux_json_duplicate(f, NKEYS) == NULL)
      for (i = 0; i < NKEYS; i++)
        FUZZ_CHECK(f[i].type == LLMUX_JSON_NONE, "invalid JSON, yet %s was found", f[i].key);
  } else {
    FUZZ_CHECK(llmux_json_duplicate(f, NKEYS) == NULL, "a duplicate, yet no error");
    FUZZ_CHECK(hit == 0 || hit == 1, "probe_hit %d", hit);
    for (i = 0; i < NKEYS; i++) {
      FUZZ_CHECK(f[i].type == g[i].type && f[i].value.base == g[i].value.base &&
                 f[i].value.len == g[i].value.len, "field %s differs with a probe", f[i].key);
      if (f[i].type == LLMUX_JSON_NONE) continue;
      FUZZ_CHECK(f[i].value.base >= body && f[i].value.base + f[i].value.len <= body + size,
                 "field %s points outside the body", f[i].key);
      if (f[i].type == LLMUX_JSON_STRING) check_unquote(f[i].value);
    }
    /* The estimates the proxy makes from the same fields. */
    FUZZ_CHECK(llmux_rl_estimate_fields(f, NKEYS) > 0, "an estimate of 0 tokens");
    (void)llmux_rl_max_tokens_fields(f, NKEYS, &max_tokens);
  }
  check_against_jansson(body, size, f, rc == 0, msg, hit);
  FUZZ_CHECK(llmux_rl_estimate_tokens(body, size) > 0, "an estimate of 0 tokens");
  rc2 = llmux_rl_parse_max_tokens(body, size, &max_tokens);
  FUZZ_CHECK(rc2 == 0 || rc2 == LLMUX_ENOTFOUND || rc2 == LLMUX_EINVAL, "rc %d", rc2);
  return 0;
}
