#define _GNU_SOURCE
#include "base/json_scan.h"

#include <assert.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 64
#define KEY_MAX 64 /* the longest key looked for, NUL included */

typedef struct {
  const char *p, *end, *start;
  const char *err_msg;
  const char *err_at;
  const char *probe;   /* a key looked for at any depth, or NULL */
  size_t probe_len;
  int probe_hit;
  int escaped;         /* the last string scanned holds a backslash */
  const char *dup_at;  /* the second occurrence of a field's key, if any */
  llmux_json_field_t *cur; /* the top-level field whose value is being scanned */
} scan_t;

static int fail(scan_t *s, const char *at, const char *msg) {
  if (s->err_msg == NULL) {
    s->err_msg = msg;
    s->err_at = at;
  }
  return -1;
}

static inline void skip_ws(scan_t *s) {
  /* Most places have none: one test for any byte above the blank. */
  while (s->p < s->end && (unsigned char)*s->p <= ' ' &&
         (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
    s->p++;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* The length of the well-formed UTF-8 sequence at p (Unicode's table 3-7:
 * no overlong forms, no surrogates, nothing above U+10FFFF), 0 when there
 * is none. Branches on the lead byte and tests only the second byte's
 * range where the table narrows it. */
static inline size_t utf8_len(const unsigned char *p, const unsigned char *end) {
  unsigned c = p[0];
  size_t left = (size_t)(end - p);
  if (c < 0x80) return 1;
  if (c < 0xc2) return 0; /* a continuation byte, or an overlong 2-byte lead */
  if (c < 0xe0) return left >= 2 && (p[1] & 0xc0) == 0x80 ? 2 : 0;
  if (c < 0xf0) {
    if (left < 3 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80) return 0;
    if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] >= 0xa0)) return 0; /* overlong, surrogate */
    return 3;
  }
  if (c < 0xf5) {
    if (left < 4 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80)
      return 0;
    if ((c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] >= 0x90)) return 0; /* overlong, > U+10FFFF */
    return 4;
  }
  return 0;
}

/* Many bytes at a time over plain ASCII string content: the bulk of a
 * request is message text, and a byte-at-a-time loop over it cost more than
 * everything else on the proxy path. A block is skipped whole when none of
 * its bytes is '"', '\\', a control character or non-ASCII; otherwise we stop
 * at the first such byte and let the caller look at it. */
#if defined(__SSE2__)
#include <immintrin.h>
static const char *skip_plain_sse2(const char *p, const char *end) {
  const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\');
  const __m128i space = _mm_set1_epi8(0x20);
  while (end - p >= 16) {
    __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
    /* Signed compare: bytes >= 0x80 are negative, so "< 0x20" catches
     * control characters and non-ASCII at once. */
    __m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
                             _mm_cmplt_epi8(v, space));
    int mask = _mm_movemask_epi8(m);
    if (mask != 0) return p + __builtin_ctz((unsigned)mask);
    p += 16;
  }
  return p;
}

#if defined(__GNUC__) && defined(__x86_64__)
/* The same, 32 bytes at a time, for machines with AVX2 (chosen at run time:
 * the build targets plain x86-64). */
__attribute__((target("avx2"))) static const char *skip_plain_avx2(const char *p,
                                                                  const char *end) {
  const __m256i quote = _mm256_set1_epi8('"'), bslash = _mm256_set1_epi8('\\');
  const __m256i space = _mm256_set1_epi8(0x20);
  while (end - p >= 64) { /* long strings (a prompt): 64 bytes a test */
    __m256i a = _mm256_loadu_si256((const __m256i *)(const void *)p);
    __m256i b = _mm256_loadu_si256((const __m256i *)(const void *)(p + 32));
    __m256i m = _mm256_or_si256(
        _mm256_or_si256(
            _mm256_or_si256(_mm256_cmpeq_epi8(a, quote), _mm256_cmpeq_epi8(a, bslash)),
            _mm256_cmpgt_epi8(space, a)),
        _mm256_or_si256(
            _mm256_or_si256(_mm256_cmpeq_epi8(b, quote), _mm256_cmpeq_epi8(b, bslash)),
            _mm256_cmpgt_epi8(space, b)));
    if (!_mm256_testz_si256(m, m)) break; /* which byte: the loop below says */
    p += 64;
  }
  while (end - p >= 32) {
    __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)p);
    __m256i m = _mm256_or_si256(
        _mm256_or_si256(_mm256_cmpeq_epi8(v, quote), _mm256_cmpeq_epi8(v, bslash)),
        _mm256_cmpgt_epi8(space, v));
    unsigned mask = (unsigned)_mm256_movemask_epi8(m);
    if (mask != 0) return p + __builtin_ctz(mask);
    p += 32;
  }
  return skip_plain_sse2(p, end);
}

static const char *skip_plain(const char *p, const char *end) {
  static int avx2 = -1;
  if (avx2 < 0) avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
  return avx2 ? skip_plain_avx2(p, end) : skip_plain_sse2(p, end);
}
#else
#define skip_plain skip_plain_sse2
#endif
#else
static const char *skip_plain(const char *p, const char *end) {
  const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
  while (end - p >= 8) {
    uint64_t v, q, b;
    memcpy(&v, p, 8);
    q = v ^ (ones * '"');
    b = v ^ (ones * '\\');
    if (((q - ones) & ~q & high) | ((b - ones) & ~b & high) |
        ((v - ones * 0x20) & ~v & high) | (v & high))
      break;
    p += 8;
  }
  return p;
}
#endif

static int scan_string(scan_t *s) {
  const char *open = s->p;
  s->p++; /* opening quote */
  while (s->p < s->end) {
    unsigned char c;
    s->p = skip_plain(s->p, s->end);
    if (s->p >= s->end) break;
    c = (unsigned char)*s->p;
    if (c == '"') { s->p++; return 0; }
    if (c == '\\') {
      s->escaped = 1;
      if (s->p + 1 >= s->end) break;
      c = (unsigned char)s->p[1];
      if (c == 'u') {
        int i;
        if (s->end - s->p < 6) return fail(s, s->p, "truncated \\u escape");
        for (i = 2; i < 6; i++)
          if (hexval(s->p[i]) < 0) return fail(s, s->p, "invalid \\u escape");
        s->p += 6;
        continue;
      }
      if (!strchr("\"\\/bfnrt", c) || c == '\0') return fail(s, s->p, "invalid escape");
      s->p += 2;
      continue;
    }
    if (c < 0x20) return fail(s, s->p, "control character in string");
    if (c < 0x80) { s->p++; continue; }
    { /* a run of non-ASCII text (most prose not in English) is checked here,
       * a character at a time, not by restarting the block scan for each */
      const unsigned char *q = (const unsigned char *)s->p, *e = (const unsigned char *)s->end;
      do {
        size_t n = utf8_len(q, e);
        if (n == 0) return fail(s, (const char *)q, "invalid UTF-8");
        q += n;
      } while (q < e && *q >= 0x80);
      s->p = (const char *)q;
    }
  }
  return fail(s, open, "unterminated string");
}

static int scan_number(scan_t *s) {
  const char *p = s->p;
  if (p < s->end && *p == '-') p++;
  if (p >= s->end) return fail(s, s->p, "invalid number");
  if (*p == '0') p++;
  else if (*p >= '1' && *p <= '9') while (p < s->end && *p >= '0' && *p <= '9') p++;
  else return fail(s, s->p, "invalid number");
  if (p < s->end && *p == '.') {
    p++;
    if (p >= s->end || *p < '0' || *p > '9') return fail(s, s->p, "invalid number");
    while (p < s->end && *p >= '0' && *p <= '9') p++;
  }
  if (p < s->end && (*p == 'e' || *p == 'E')) {
    p++;
    if (p < s->end && (*p == '+' || *p == '-')) p++;
    if (p >= s->end || *p < '0' || *p > '9') return fail(s, s->p, "invalid number");
    while (p < s->end && *p >= '0' && *p <= '9') p++;
  }
  s->p = p;
  return 0;
}

static int scan_literal(scan_t *s, const char *lit) {
  size_t n = strlen(lit);
  if ((size_t)(s->end - s->p) < n || memcmp(s->p, lit, n) != 0)
    return fail(s, s->p, "unexpected character");
  s->p += n;
  return 0;
}

static int scan_value(scan_t *s, int depth, llmux_json_type_t *type);

/* Which field the key raw[0..len) (no quotes) names, if any, and whether it
 * is the probe. A key is compared as the text it spells: a key without a
 * backslash (nearly all) is its own bytes; one with is unescaped first, so
 * "mod\u0065l" is "model" here as it is to the provider. A key too long to
 * be one of ours, or holding \u0000, names nothing. */
static llmux_json_field_t *match_key(scan_t *s, const char *raw, size_t len, int escaped,
                                     llmux_json_field_t *fields, size_t nfields) {
  char buf[KEY_MAX];
  const char *key = raw;
  size_t i;
  if (escaped) {
    if (nfields == 0 && s->probe == NULL) return NULL;
    if (llmux_json_unquote((llmux_str_t){raw - 1, len + 2}, buf, sizeof buf) != 0) return NULL;
    key = buf;
    len = strlen(buf);
  }
  if (s->probe != NULL && len == s->probe_len && memcmp(key, s->probe, len) == 0)
    s->probe_hit = 1;
  for (i = 0; i < nfields && len > 0; i++) {
    if (fields[i].key[0] == key[0] && strlen(fields[i].key) == len &&
        memcmp(fields[i].key, key, len) == 0)
      return &fields[i];
  }
  return NULL;
}

static int scan_container(scan_t *s, int depth, int is_object, llmux_json_field_t *fields,
                          size_t nfields) {
  char close = is_object ? '}' : ']';
  if (depth >= MAX_DEPTH) return fail(s, s->p, "nested too deeply");
  s->p++;
  skip_ws(s);
  if (s->p < s->end && *s->p == close) { s->p++; return 0; }
  for (;;) {
    llmux_json_field_t *field = NULL;
    const char *vstart;
    llmux_json_type_t t;
    skip_ws(s);
    if (is_object) {
      const char *key = s->p;
      if (s->p >= s->end || *s->p != '"') return fail(s, s->p, "expected a string key");
      s->escaped = 0;
      if (scan_string(s) != 0) return -1;
      field = match_key(s, key + 1, (size_t)(s->p - key - 2), s->escaped, fields, nfields);
      if (field != NULL && field->count++ > 0 && s->dup_at == NULL) s->dup_at = key;
      skip_ws(s);
      if (s->p >= s->end || *s->p != ':') return fail(s, s->p, "expected ':'");
      s->p++;
      skip_ws(s);
    }
    vstart = s->p;
    if (field != NULL) s->cur = field; /* nested values count toward their top-level field */
    if (scan_value(s, depth + 1, &t) != 0) return -1;
    if (field != NULL) {
      s->cur = NULL;
      field->type = t;
      field->value.base = vstart;
      field->value.len = (size_t)(s->p - vstart);
    }
    skip_ws(s);
    if (s->p < s->end && *s->p == ',') { s->p++; continue; }
    if (s->p < s->end && *s->p == close) { s->p++; return 0; }
    return fail(s, s->p, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
  }
}

/* depth: 1 for a top-level field's value, 2 for what is directly in it. */
static int scan_value(scan_t *s, int depth, llmux_json_type_t *type) {
  if (s->p >= s->end) return fail(s, s->p, "unexpected end of input");
  switch (*s->p) {
    case '{':
      *type = LLMUX_JSON_OBJECT;
      if (s->cur != NULL && depth == 2) s->cur->objects++;
      return scan_container(s, depth, 1, NULL, 0);
    case '[': *type = LLMUX_JSON_ARRAY; return scan_container(s, depth, 0, NULL, 0);
    case '"': {
      const char *open = s->p;
      *type = LLMUX_JSON_STRING;
      if (scan_string(s) != 0) return -1;
      if (s->cur != NULL) s->cur->text_bytes += (uint64_t)(s->p - open - 2);
      return 0;
    }
    case 't': *type = LLMUX_JSON_TRUE; return scan_literal(s, "true");
    case 'f': *type = LLMUX_JSON_FALSE; return scan_literal(s, "false");
    case 'n': *type = LLMUX_JSON_NULL; return scan_literal(s, "null");
    default: *type = LLMUX_JSON_NUMBER; return scan_number(s);
  }
}

int llmux_json_scan(const char *body, size_t len, llmux_json_field_t *fields,
                    size_t nfields, size_t *err_off, const char **err_msg) {
  return llmux_json_scan_probe(body, len, fields, nfields, NULL, NULL, err_off, err_msg);
}

static void clear_fields(llmux_json_field_t *fields, size_t nfields) {
  size_t i;
  for (i = 0; i < nfields; i++) {
    assert(strlen(fields[i].key) < KEY_MAX);
    fields[i].type = LLMUX_JSON_NONE;
    fields[i].value.base = NULL;
    fields[i].value.len = 0;
    fields[i].count = 0;
    fields[i].text_bytes = fields[i].objects = 0;
  }
}

int llmux_json_scan_probe(const char *body, size_t len, llmux_json_field_t *fields,
                          size_t nfields, const char *probe, int *probe_hit, size_t *err_off,
                          const char **err_msg) {
  scan_t s = {body, body + len, body, NULL, NULL, probe, probe ? strlen(probe) : 0, 0, 0, NULL,
              NULL};
  assert(s.probe_len < KEY_MAX);
  clear_fields(fields, nfields);
  skip_ws(&s);
  if (s.p >= s.end || *s.p != '{') {
    fail(&s, s.p, "the body must be a JSON object");
    goto invalid;
  }
  if (scan_container(&s, 0, 1, fields, nfields) != 0) goto invalid;
  skip_ws(&s);
  if (s.p != s.end) {
    fail(&s, s.p, "unexpected data after the JSON object");
    goto invalid;
  }
  if (probe_hit) *probe_hit = s.probe_hit;
  if (s.dup_at != NULL) {
    fail(&s, s.dup_at, "duplicate key");
    goto fail;
  }
  return 0;

invalid:
  clear_fields(fields, nfields); /* so that no field reads as a duplicate */
fail:
  if (err_off) *err_off = (size_t)(s.err_at - body);
  if (err_msg) *err_msg = s.err_msg;
  return LLMUX_EINVAL;
}

const llmux_json_field_t *llmux_json_duplicate(const llmux_json_field_t *fields,
                                               size_t nfields) {
  size_t i;
  for (i = 0; i < nfields; i++)
    if (fields[i].count > 1) return &fields[i];
  return NULL;
}

static size_t put_utf8(char *out, unsigned cp) {
  if (cp < 0x80) { out[0] = (char)cp; return 1; }
  if (cp < 0x800) {
    out[0] = (char)(0xc0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3f)); return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xe0 | (cp >> 12)); out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[2] = (char)(0x80 | (cp & 0x3f)); return 3;
  }
  out[0] = (char)(0xf0 | (cp >> 18)); out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
  out[2] = (char)(0x80 | ((cp >> 6) & 0x3f)); out[3] = (char)(0x80 | (cp & 0x3f));
  return 4;
}

static unsigned hex4(const char *p) {
  return (unsigned)(hexval(p[0]) << 12 | hexval(p[1]) << 8 | hexval(p[2]) << 4 | hexval(p[3]));
}

int llmux_json_unquote(llmux_str_t v, char *out, size_t cap) {
  const char *p = v.base + 1, *end = v.base + v.len - 1;
  size_t n = 0;
  if (v.len < 2 || v.base[0] != '"' || end[0] != '"') return LLMUX_EINVAL;
  if (memchr(p, '\\', (size_t)(end - p)) == NULL) { /* nothing to unescape: one copy */
    if ((size_t)(end - p) >= cap) return LLMUX_ETOOLARGE;
    memcpy(out, p, (size_t)(end - p));
    out[end - p] = '\0';
    return 0;
  }
  while (p < end) {
    char buf[4];
    size_t k = 1;
    if (*p != '\\') { buf[0] = *p++; }
    else {
      char c = p[1];
      p += 2;
      switch (c) {
        case 'b': buf[0] = '\b'; break;
        case 'f': buf[0] = '\f'; break;
        case 'n': buf[0] = '\n'; break;
        case 'r': buf[0] = '\r'; break;
        case 't': buf[0] = '\t'; break;
        case 'u': {
          unsigned cp;
          if (end - p < 4) return LLMUX_EINVAL;
          cp = hex4(p);
          p += 4;
          if (cp >= 0xd800 && cp <= 0xdbff && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
            unsigned lo = hex4(p + 2);
            if (lo >= 0xdc00 && lo <= 0xdfff) {
              cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
              p += 6;
            }
          }
          /* A lone surrogate has no UTF-8 form (its 3-byte encoding is
           * CESU-8, which strict decoders refuse): say so as U+FFFD. */
          if (cp >= 0xd800 && cp <= 0xdfff) cp = 0xfffd;
          if (cp == 0) return LLMUX_EINVAL; /* no NULs in C strings */
          k = put_utf8(buf, cp);
          break;
        }
        default: buf[0] = c; break;
      }
    }
    if (n + k >= cap) return LLMUX_ETOOLARGE;
    memcpy(out + n, buf, k);
    n += k;
  }
  out[n] = '\0';
  return 0;
}
