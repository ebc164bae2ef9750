#include "base/util.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>

void *llmux_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (p == NULL) abort();
  return p;
}

void *llmux_xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (p == NULL) abort();
  return p;
}

char *llmux_xstrdup(const char *s) {
  return llmux_xstrndup(s, strlen(s));
}

char *llmux_xstrndup(const char *s, size_t n) {
  char *p = llmux_xmalloc(n + 1);
  memcpy(p, s, n);
  p[n] = '\0';
  return p;
}

int llmux_buf_reserve(llmux_buf_t *b, size_t extra) {
  size_t need, cap;
  char *p;
  if (b->len + extra + 1 <= b->cap) return 0;
  need = b->len + extra + 1;
  cap = b->cap ? b->cap : 256;
  while (cap < need) cap *= 2;
  p = realloc(b->base, cap);
  if (p == NULL) return LLMUX_ENOMEM;
  b->base = p;
  b->cap = cap;
  return 0;
}

void llmux_zero(void *p, size_t n) {
  memset(p, 0, n);
}

/* llmux_buf_append (util.h) when the buffer must grow first. */
int llmux__buf_append_grow(llmux_buf_t *b, const void *data, size_t n) {
  if (llmux_buf_reserve(b, n) != 0) return LLMUX_ENOMEM;
  if (n) memcpy(b->base + b->len, data, n);
  b->len += n;
  b->base[b->len] = '\0';
  return 0;
}

/* One vsnprintf when the result fits in the spare capacity (the common
 * case once a buffer has grown), a second only when it must grow. */
int llmux_buf_printf(llmux_buf_t *b, const char *fmt, ...) {
  va_list ap;
  size_t room = b->cap > b->len ? b->cap - b->len : 0;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(room ? b->base + b->len : NULL, room, fmt, ap);
  va_end(ap);
  if (n < 0) return LLMUX_EINVAL;
  if ((size_t)n < room) {
    b->len += (size_t)n;
    return 0;
  }
  if (llmux_buf_reserve(b, (size_t)n) != 0) {
    if (b->base) b->base[b->len] = '\0';
    return LLMUX_ENOMEM;
  }
  va_start(ap, fmt);
  vsnprintf(b->base + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return 0;
}

/* Two digits a division, written from the end: access log lines and
 * headers format several numbers a request. */
size_t llmux_u64_dec(char *out, uint64_t v) {
  static const char pairs[] =
      "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
      "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
      "8081828384858687888990919293949596979899";
  size_t n = 1, i;
  uint64_t t = v;
  while (t >= 10000) { /* the length, four digits a step */
    t /= 10000;
    n += 4;
  }
  n += (t >= 10) + (t >= 100) + (t >= 1000);
  out[n] = '\0';
  i = n;
  while (v >= 100) {
    unsigned d = (unsigned)(v % 100) * 2;
    v /= 100;
    out[--i] = pairs[d + 1];
    out[--i] = pairs[d];
  }
  if (v >= 10) {
    out[--i] = pairs[v * 2 + 1];
    out[--i] = pairs[v * 2];
  } else {
    out[--i] = (char)('0' + v);
  }
  return n;
}

size_t llmux_u64_hex(char *out, uint64_t v, unsigned min_digits) {
  static const char hex[] = "0123456789abcdef";
  size_t n = 1, i;
  while (n < 16 && v >> (4 * n)) n++; /* the digits v needs */
  if (n < min_digits) n = min_digits;
  out[n] = '\0';
  for (i = n; i > 0; i--, v >>= 4) out[i - 1] = hex[v & 15]; /* zeros past v's digits */
  return n;
}

/* The length of the well-formed UTF-8 sequence at p, or 0 when there is
 * none; then *bad is how many bytes one U+FFFD replaces: the longest start
 * of a sequence that could still have been well-formed (Unicode's "maximal
 * subpart", as WHATWG's decoder, so we show what a browser would). */
static size_t utf8_seq(const unsigned char *p, const unsigned char *end, size_t *bad) {
  unsigned c = p[0], lo = 0x80, hi = 0xbf;
  size_t n, i;
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) n = 2;
  else if (c >= 0xe0 && c <= 0xef) n = 3;
  else if (c >= 0xf0 && c <= 0xf4) n = 4;
  else { *bad = 1; return 0; }
  if (c == 0xe0) lo = 0xa0;       /* overlong */
  else if (c == 0xed) hi = 0x9f;  /* a surrogate (CESU-8) */
  else if (c == 0xf0) lo = 0x90;  /* overlong */
  else if (c == 0xf4) hi = 0x8f;  /* above U+10FFFF */
  for (i = 1; i < n; i++) {
    if (p + i >= end || p[i] < lo || p[i] > hi) { *bad = i; return 0; }
    lo = 0x80;
    hi = 0xbf;
  }
  return n;
}

/* Whatever the bytes, the result is valid JSON and valid UTF-8: error
 * messages quote what clients sent, and a client's strict decoder must not
 * choke on our answer to its mistake. Each ill-formed piece becomes \ufffd. */
int llmux_buf_append_json_str(llmux_buf_t *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0, run = 0;
  if (llmux_buf_reserve(b, n + 2) != 0) return LLMUX_ENOMEM;
  b->base[b->len++] = '"';
  while (i < n) {
    unsigned char c;
    char esc[6];
    size_t elen = 0, step = 1;
    /* The common case, in a tight loop: printable ASCII that needs no escape. */
    while (i < n && u[i] >= 0x20 && u[i] < 0x80 && u[i] != '"' && u[i] != '\\') {
      i++;
      run++;
    }
    if (i >= n) break;
    c = u[i];
    if (c >= 0x80) {
      size_t k = utf8_seq(u + i, u + n, &step);
      if (k != 0) { run += k; i += k; continue; }
      memcpy(esc, "\\ufffd", 6); elen = 6;
    } else if (c == '"' || c == '\\') { esc[0] = '\\'; esc[1] = (char)c; elen = 2; }
    else if (c == '\n') { memcpy(esc, "\\n", 2); elen = 2; }
    else if (c == '\r') { memcpy(esc, "\\r", 2); elen = 2; }
    else if (c == '\t') { memcpy(esc, "\\t", 2); elen = 2; }
    else if (c < 0x20) {
      memcpy(esc, "\\u00", 4); esc[4] = hex[c >> 4]; esc[5] = hex[c & 15]; elen = 6;
    }
    if (elen == 0) { run++; i++; continue; }
    if (llmux_buf_append(b, s + i - run, run) != 0) return LLMUX_ENOMEM;
    run = 0;
    if (llmux_buf_append(b, esc, elen) != 0) return LLMUX_ENOMEM;
    i += step;
  }
  if (llmux_buf_append(b, s + n - run, run) != 0) return LLMUX_ENOMEM;
  return llmux_buf_append(b, "\"", 1);
}

void llmux_buf_consume(llmux_buf_t *b, size_t n) {
  if (n >= b->len) { b->len = 0; }
  else { memmove(b->base, b->base + n, b->len - n); b->len -= n; }
  if (b->base) b->base[b->len] = '\0';
}

void llmux_buf_free(llmux_buf_t *b) {
  free(b->base);
  b->base = NULL;
  b->len = b->cap = 0;
}

int llmux_parse_u64(const char *s, uint64_t *out) {
  char *end;
  unsigned long long v;
  if (s == NULL || !isdigit((unsigned char)*s)) return LLMUX_EINVAL;
  errno = 0;
  v = strtoull(s, &end, 10);
  if (errno != 0 || *end != '\0') return LLMUX_EINVAL;
  *out = v;
  return 0;
}

int llmux_parse_double(const char *s, double *out) {
  char *end;
  double v;
  if (s == NULL || *s == '\0') return LLMUX_EINVAL;
  errno = 0;
  v = strtod(s, &end);
  if (errno != 0 || *end != '\0' || v != v) return LLMUX_EINVAL;
  *out = v;
  return 0;
}

/* Parses "<number><unit>" where the unit is looked up in `units`. */
struct unit { const char *name; uint64_t mult; };

static int parse_with_unit(const char *s, const struct unit *units, size_t nunits,
                           uint64_t *out) {
  char *end;
  unsigned long long v;
  size_t i;
  if (s == NULL || !isdigit((unsigned char)*s)) return LLMUX_EINVAL;
  errno = 0;
  v = strtoull(s, &end, 10);
  if (errno != 0) return LLMUX_EINVAL;
  while (*end == ' ') end++;
  for (i = 0; i < nunits; i++) {
    if (strcasecmp(end, units[i].name) == 0) {
      if (units[i].mult && v > UINT64_MAX / units[i].mult) return LLMUX_EINVAL;
      *out = v * units[i].mult;
      return 0;
    }
  }
  return LLMUX_EINVAL;
}

int llmux_parse_duration(const char *s, uint64_t *out_ms) {
  static const struct unit units[] = {
    {"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000},
    {"d", 86400000},
  };
  return parse_with_unit(s, units, LLMUX_COUNTOF(units), out_ms);
}

int llmux_parse_size(const char *s, uint64_t *out) {
  static const struct unit units[] = {
    {"", 1}, {"b", 1}, {"k", 1024}, {"kb", 1024}, {"kib", 1024},
    {"m", 1048576}, {"mb", 1048576}, {"mib", 1048576},
    {"g", 1073741824}, {"gb", 1073741824}, {"gib", 1073741824},
  };
  return parse_with_unit(s, units, LLMUX_COUNTOF(units), out);
}

int llmux_parse_bool(const char *s, int *out) {
  static const char *yes[] = {"true", "yes", "on", "1"};
  static const char *no[] = {"false", "no", "off", "0"};
  size_t i;
  for (i = 0; i < LLMUX_COUNTOF(yes); i++) {
    if (strcasecmp(s, yes[i]) == 0) { *out = 1; return 0; }
    if (strcasecmp(s, no[i]) == 0) { *out = 0; return 0; }
  }
  return LLMUX_EINVAL;
}

char *llmux_trim(char *s) {
  char *e;
  while (isspace((unsigned char)*s)) s++;
  e = s + strlen(s);
  while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
  return s;
}

size_t llmux_split_list(char *s, char **items, size_t max) {
  size_t n = 0;
  char *tok, *save = NULL;
  for (tok = strtok_r(s, ",", &save); tok && n < max; tok = strtok_r(NULL, ",", &save)) {
    tok = llmux_trim(tok);
    if (*tok) items[n++] = tok;
  }
  return n;
}

int llmux_strcaseeq(const char *a, const char *b) {
  return strcasecmp(a, b) == 0;
}

unsigned llmux_edit_distance(const char *a, const char *b, unsigned cap) {
  size_t la = strlen(a), lb = strlen(b), i, j;
  unsigned row[128], prev, tmp, best;
  if (lb >= LLMUX_COUNTOF(row) || la >= 128) return cap;
  for (j = 0; j <= lb; j++) row[j] = (unsigned)j;
  for (i = 1; i <= la; i++) {
    prev = row[0];
    row[0] = (unsigned)i;
    best = row[0];
    for (j = 1; j <= lb; j++) {
      unsigned cost = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
      tmp = row[j];
      row[j] = prev + cost;
      if (row[j - 1] + 1 < row[j]) row[j] = row[j - 1] + 1;
      if (tmp + 1 < row[j]) row[j] = tmp + 1;
      prev = tmp;
      if (row[j] < best) best = row[j];
    }
    if (best >= cap) return cap;
  }
  return row[lb] < cap ? row[lb] : cap;
}

uint64_t llmux_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}
