/* A validating JSON scanner that walks one level of an object or array and
 * hands out spans of the members. The mock reads a handful of top-level
 * request fields; building a jansson tree of a 64 KiB body per request
 * would make the mock the slowest part of the benchmark. */
#include "mock.h"

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define MAX_DEPTH 128

static const char *skip_ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

static int is_hex(char ch) {
  return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull
#define HAS_ZERO(v) (((v) - ONES) & ~(v) & HIGHS)
#define HAS_LESS(v, n) (((v) - ONES * (n)) & ~(v) & HIGHS)

/* Skips 8 bytes at a time while none of them is '"', '\\' or a control
 * character: string content is most of a chat request. */
static const char *skip_plain(const char *p, const char *end) {
#ifdef __SSE2__
  const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\');
  const __m128i ctl = _mm_set1_epi8(0x1f);
  while (end - p >= 16) {
    __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
    __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, bslash)),
                               _mm_cmpeq_epi8(_mm_max_epu8(x, ctl), ctl));
    if (_mm_movemask_epi8(hit) != 0) break;
    p += 16;
  }
#endif
  while (end - p >= 8) {
    uint64_t x;
    memcpy(&x, p, 8);
    if (HAS_ZERO(x ^ (ONES * '"')) | HAS_ZERO(x ^ (ONES * '\\')) | HAS_LESS(x, 0x20)) break;
    p += 8;
  }
  return p;
}

/* p at the opening quote; returns the byte after the closing quote. */
static const char *skip_string(const char *p, const char *end) {
  p++;
  for (;;) {
    unsigned char ch;
    p = skip_plain(p, end);
    if (p >= end) return NULL;
    ch = (unsigned char)*p;
    if (ch == '"') return p + 1;
    if (ch < 0x20) return NULL;
    if (ch != '\\') { p++; continue; }
    if (++p >= end) return NULL;
    if (*p == 'u') {
      if (end - p < 5 || !is_hex(p[1]) || !is_hex(p[2]) || !is_hex(p[3]) || !is_hex(p[4]))
        return NULL;
      p += 5;
    } else if (*p != '\0' && strchr("\"\\/bfnrt", *p) != NULL) {
      p++;
    } else {
      return NULL;
    }
  }
}

static const char *skip_digits(const char *p, const char *end) {
  const char *s = p;
  while (p < end && *p >= '0' && *p <= '9') p++;
  return p == s ? NULL : p;
}

static const char *skip_number(const char *p, const char *end) {
  if (*p == '-') p++;
  if (p >= end) return NULL;
  if (*p == '0') p++;
  else if ((p = skip_digits(p, end)) == NULL) return NULL;
  if (p < end && *p == '.' && (p = skip_digits(p + 1, end)) == NULL) return NULL;
  if (p < end && (*p == 'e' || *p == 'E')) {
    p++;
    if (p < end && (*p == '+' || *p == '-')) p++;
    if ((p = skip_digits(p, end)) == NULL) return NULL;
  }
  return p;
}

static const char *skip_value(const char *p, const char *end, int depth);

/* p at '{' or '['; returns the byte after the matching close. */
static const char *skip_container(const char *p, const char *end, int depth) {
  char close = *p == '{' ? '}' : ']';
  int object = *p == '{';
  if (depth >= MAX_DEPTH) return NULL;
  p = skip_ws(p + 1, end);
  if (p < end && *p == close) return p + 1;
  for (;;) {
    if (object) {
      if (p >= end || *p != '"' || (p = skip_string(p, end)) == NULL) return NULL;
      p = skip_ws(p, end);
      if (p >= end || *p != ':') return NULL;
      p = skip_ws(p + 1, end);
    }
    if ((p = skip_value(p, end, depth + 1)) == NULL) return NULL;
    p = skip_ws(p, end);
    if (p >= end) return NULL;
    if (*p == close) return p + 1;
    if (*p != ',') return NULL;
    p = skip_ws(p + 1, end);
  }
}

static const char *skip_literal(const char *p, const char *end, const char *lit) {
  size_t n = strlen(lit);
  if ((size_t)(end - p) < n || memcmp(p, lit, n) != 0) return NULL;
  return p + n;
}

/* p at the first byte of a value (white space already skipped). */
static const char *skip_value(const char *p, const char *end, int depth) {
  if (p >= end) return NULL;
  switch (*p) {
    case '"': return skip_string(p, end);
    case '{': case '[': return skip_container(p, end, depth);
    case 't': return skip_literal(p, end, "true");
    case 'f': return skip_literal(p, end, "false");
    case 'n': return skip_literal(p, end, "null");
    default:
      if (*p == '-' || (*p >= '0' && *p <= '9')) return skip_number(p, end);
      return NULL;
  }
}

/* Walks the members of the container that is the whole of [p, p+len),
 * validating as it goes: callbacks may have seen earlier members when a
 * later one turns out broken, so callers discard what they gathered when
 * this fails. */
static int walk(const char *p, size_t len, char open, mock_json_member_cb mcb,
                mock_json_elem_cb ecb, void *ud) {
  const char *end = p + len, *vstart;
  char close = open == '{' ? '}' : ']';
  llmux_str_t key = {NULL, 0}, val;
  size_t index = 0;
  int rc;
  p = skip_ws(p, end);
  if (p >= end || *p != open) return LLMUX_EPROTO;
  p = skip_ws(p + 1, end);
  if (p < end && *p == close) return skip_ws(p + 1, end) == end ? 0 : LLMUX_EPROTO;
  for (;;) {
    if (open == '{') {
      const char *kend;
      if (p >= end || *p != '"' || (kend = skip_string(p, end)) == NULL) return LLMUX_EPROTO;
      key.base = p + 1;
      key.len = (size_t)(kend - p) - 2;
      p = skip_ws(kend, end);
      if (p >= end || *p != ':') return LLMUX_EPROTO;
      p = skip_ws(p + 1, end);
    }
    vstart = p;
    if ((p = skip_value(p, end, 1)) == NULL) return LLMUX_EPROTO;
    val.base = vstart;
    val.len = (size_t)(p - vstart);
    rc = open == '{' ? mcb(ud, key, val) : ecb(ud, index++, val);
    if (rc != 0) return rc;
    p = skip_ws(p, end);
    if (p >= end) return LLMUX_EPROTO;
    if (*p == close) break;
    if (*p != ',') return LLMUX_EPROTO;
    p = skip_ws(p + 1, end);
  }
  return skip_ws(p + 1, end) == end ? 0 : LLMUX_EPROTO;
}

int mock_json_object(const char *p, size_t len, mock_json_member_cb cb, void *ud) {
  return walk(p, len, '{', cb, NULL, ud);
}

int mock_json_array(const char *p, size_t len, mock_json_elem_cb cb, void *ud) {
  return walk(p, len, '[', NULL, cb, ud);
}

int mock_json_type(llmux_str_t val) {
  if (val.len == 0) return 0;
  switch (val.base[0]) {
    case '"': case '{': case '[': case 't': case 'f': case 'n': return val.base[0];
    default: return '0';
  }
}

int mock_json_is(llmux_str_t s, const char *lit) {
  size_t n = strlen(lit);
  return s.len == n && memcmp(s.base, lit, n) == 0;
}

llmux_str_t mock_json_strval(llmux_str_t val) {
  llmux_str_t s = {val.base, 0};
  if (val.len >= 2 && val.base[0] == '"') {
    s.base = val.base + 1;
    s.len = val.len - 2;
  }
  return s;
}
