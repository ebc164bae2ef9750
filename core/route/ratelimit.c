/* Rate-limit accounting: header parsing, token estimates, sliding windows
 * and the in-memory store. See ratelimit.h for the model. */
#include "route/ratelimit.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/json_scan.h"
#include "base/util.h"

/* How long a provider's `remaining` is trusted when it sent no reset. */
#define SYNC_TTL_MS 60000u
/* A reset further away than this is not believed (a misread epoch). */
#define MAX_RESET_MS (2u * 86400000u)
/* Completion allowance for a Cerebras request with no cap and no known
 * context window. */
#define CEREBRAS_DEFAULT_COMPLETION 4096u

/* ---- Styles ------------------------------------------------------------ */

static const char *const style_names[] = {"generic", "openai", "groq", "cerebras",
                                          "anthropic"};

llmux_rl_style_t llmux_rl_style_from_name(const char *name) {
  size_t i;
  if (name == NULL) return LLMUX_RL_STYLE_GENERIC;
  for (i = 0; i < LLMUX_COUNTOF(style_names); i++)
    if (strcasecmp(name, style_names[i]) == 0) return (llmux_rl_style_t)i;
  return LLMUX_RL_STYLE_GENERIC;
}

const char *llmux_rl_style_name(llmux_rl_style_t style) {
  if ((unsigned)style >= LLMUX_COUNTOF(style_names)) return "generic";
  return style_names[style];
}

/* ---- Small string helpers over borrowed ranges ------------------------- */

static void trim(const char **s, size_t *n) {
  while (*n && (**s == ' ' || **s == '\t')) { (*s)++; (*n)--; }
  while (*n && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t')) (*n)--;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* Case-insensitive: does s start with the lowercase literal p? */
static int ci_prefix(const char *s, size_t n, const char *p) {
  size_t i, k = strlen(p);
  if (n < k) return 0;
  for (i = 0; i < k; i++) {
    char c = s[i];
    if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
    if (c != p[i]) return 0;
  }
  return 1;
}

static int ci_equal(const char *s, size_t n, const char *p) {
  return n == strlen(p) && ci_prefix(s, n, p);
}

/* Reads up to `max` digits at *p as an integer; -1 if there are none. */
static int64_t read_int(const char **p, const char *end, int max) {
  int64_t v = 0;
  int k = 0;
  while (*p < end && is_digit(**p) && k < max) { v = v * 10 + (**p - '0'); (*p)++; k++; }
  return k ? v : -1;
}

static int parse_u64(const char *s, size_t n, uint64_t *out) {
  uint64_t v = 0;
  size_t i;
  trim(&s, &n);
  if (n == 0) return LLMUX_EINVAL;
  for (i = 0; i < n; i++) {
    if (!is_digit(s[i]) || v > (UINT64_MAX - 9) / 10) return LLMUX_EINVAL;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  *out = v;
  return 0;
}

/* ---- Durations and dates ---------------------------------------------- */

/* Adds "<digits>[.<digits>]" at *p times unit_ns to *acc. Fraction digits
 * beyond the unit's nanosecond resolution are dropped. */
static int add_number(const char **p, const char *end, uint64_t unit_ns, uint64_t *acc) {
  uint64_t ip = 0, add, scale;
  int digits = 0;
  while (*p < end && is_digit(**p)) {
    if (ip > (UINT64_MAX - 9) / 10) return LLMUX_EINVAL;
    ip = ip * 10 + (uint64_t)(**p - '0');
    (*p)++;
    digits++;
  }
  if (*p < end && **p == '.') {
    (*p)++;
    for (scale = unit_ns; *p < end && is_digit(**p); (*p)++, digits++) {
      scale /= 10;
      if (*acc > UINT64_MAX - scale * 9) return LLMUX_EINVAL;
      *acc += scale * (uint64_t)(**p - '0');
    }
  }
  if (digits == 0) return LLMUX_EINVAL;
  if (unit_ns && ip > UINT64_MAX / unit_ns) return LLMUX_EINVAL;
  add = ip * unit_ns;
  if (*acc > UINT64_MAX - add) return LLMUX_EINVAL;
  *acc += add;
  return 0;
}

static uint64_t ns_to_ms_up(uint64_t ns) {
  return ns / 1000000u + (ns % 1000000u != 0);
}

/* Go's time.Duration.String() units, longest first where they share a
 * prefix. */
static const struct { const char *name; uint64_t ns; } go_units[] = {
  {"ms", 1000000u}, {"us", 1000u}, {"\xc2\xb5s", 1000u}, {"ns", 1u},
  {"h", 3600000000000u}, {"m", 60000000000u}, {"s", 1000000000u},
};

int llmux_rl_parse_go_duration(const char *s, size_t n, uint64_t *out_ms) {
  const char *p, *end, *num;
  uint64_t ns = 0, tmp;
  size_t i;
  trim(&s, &n);
  p = s;
  end = s + n;
  if (n == 0) return LLMUX_EINVAL;
  while (p < end) {
    num = p;
    tmp = 0;
    if (add_number(&p, end, 1, &tmp) != 0) return LLMUX_EINVAL; /* syntax */
    if (p == end && num == s) { /* a bare number: seconds (Cerebras) */
      p = num;
      if (add_number(&p, end, 1000000000u, &ns) != 0) return LLMUX_EINVAL;
      break;
    }
    for (i = 0; i < LLMUX_COUNTOF(go_units); i++)
      if (ci_prefix(p, (size_t)(end - p), go_units[i].name)) break;
    if (i == LLMUX_COUNTOF(go_units)) return LLMUX_EINVAL;
    p = num;
    if (add_number(&p, end, go_units[i].ns, &ns) != 0) return LLMUX_EINVAL;
    p += strlen(go_units[i].name);
  }
  *out_ms = ns_to_ms_up(ns);
  return 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (the civil-from-days
 * inverse, by 400-year eras so that it is exact for any year). */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {
  int64_t era, yoe, doy, doe;
  y -= m <= 2;
  era = (y >= 0 ? y : y - 399) / 400;
  yoe = y - era * 400;
  doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

static int civil_to_ms(int64_t y, int64_t mo, int64_t d, int64_t h, int64_t mi,
                       int64_t sec, int64_t *out) {
  if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > 31 || h < 0 || h > 23 || mi < 0 ||
      mi > 59 || sec < 0 || sec > 60)
    return LLMUX_EINVAL;
  *out = ((days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60000 + sec * 1000;
  return 0;
}

/* "HH:MM:SS" at *p. */
static int read_hms(const char **p, const char *end, int64_t *h, int64_t *m, int64_t *s) {
  *h = read_int(p, end, 2);
  if (*h < 0 || *p >= end || **p != ':') return LLMUX_EINVAL;
  (*p)++;
  *m = read_int(p, end, 2);
  if (*m < 0 || *p >= end || **p != ':') return LLMUX_EINVAL;
  (*p)++;
  *s = read_int(p, end, 2);
  return *s < 0 ? LLMUX_EINVAL : 0;
}

int llmux_rl_parse_rfc3339(const char *s, size_t n, int64_t *out_unix_ms) {
  const char *p, *end;
  int64_t y, mo, d, h, mi, sec, ms = 0, off = 0, oh, om, t;
  int k = 0, rest = 0;
  trim(&s, &n);
  p = s;
  end = s + n;
  y = read_int(&p, end, 4);
  if (y < 0 || p >= end || *p++ != '-') return LLMUX_EINVAL;
  mo = read_int(&p, end, 2);
  if (mo < 0 || p >= end || *p++ != '-') return LLMUX_EINVAL;
  d = read_int(&p, end, 2);
  if (d < 0 || p >= end || (*p != 'T' && *p != 't' && *p != ' ')) return LLMUX_EINVAL;
  p++;
  if (read_hms(&p, end, &h, &mi, &sec) != 0) return LLMUX_EINVAL;
  if (p < end && *p == '.') {
    for (p++; p < end && is_digit(*p); p++, k++) {
      if (k < 3) ms = ms * 10 + (*p - '0');
      else if (*p != '0') rest = 1;
    }
    if (k == 0) return LLMUX_EINVAL;
    for (; k < 3; k++) ms *= 10;
    ms += rest; /* round up: a reset is never earlier than said */
  }
  if (p < end && (*p == 'Z' || *p == 'z')) {
    p++;
  } else if (p < end && (*p == '+' || *p == '-')) {
    int sign = *p++ == '-' ? -1 : 1;
    oh = read_int(&p, end, 2);
    if (oh < 0 || p >= end || *p++ != ':') return LLMUX_EINVAL;
    om = read_int(&p, end, 2);
    if (om < 0 || oh > 23 || om > 59) return LLMUX_EINVAL;
    off = sign * (oh * 60 + om) * 60000;
  } else {
    return LLMUX_EINVAL;
  }
  if (p != end || civil_to_ms(y, mo, d, h, mi, sec, &t) != 0) return LLMUX_EINVAL;
  *out_unix_ms = t + ms - off;
  return 0;
}

static int month_from_name(const char *s, size_t n) {
  static const char *const months[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                       "jul", "aug", "sep", "oct", "nov", "dec"};
  int i;
  for (i = 0; i < 12; i++)
    if (ci_equal(s, n, months[i])) return i + 1;
  return 0;
}

/* Splits at ' ', ',' and '-' into at most `max` tokens. */
static size_t tokenize(const char *s, size_t n, llmux_str_t *tok, size_t max) {
  size_t i = 0, k = 0, start;
  while (i < n) {
    while (i < n && (s[i] == ' ' || s[i] == ',' || s[i] == '-')) i++;
    if (i == n) break;
    start = i;
    while (i < n && s[i] != ' ' && s[i] != ',' && s[i] != '-') i++;
    if (k == max) return max + 1;
    tok[k].base = s + start;
    tok[k].len = i - start;
    k++;
  }
  return k;
}

static int tok_int(llmux_str_t t, int64_t *out) {
  uint64_t v;
  if (t.len > 4 || parse_u64(t.base, t.len, &v) != 0) return LLMUX_EINVAL;
  *out = (int64_t)v;
  return 0;
}

/* IMF-fixdate "Sun, 06 Nov 1994 08:49:37 GMT", RFC 850
 * "Sunday, 06-Nov-94 08:49:37 GMT" and asctime "Sun Nov  6 08:49:37 1994". */
int llmux_rl_parse_http_date(const char *s, size_t n, int64_t *out_unix_ms) {
  llmux_str_t t[6];
  size_t k;
  int64_t y, mo, d, h, mi, sec;
  const char *p;
  llmux_str_t time;
  trim(&s, &n);
  k = tokenize(s, n, t, 6);
  if (k < 5 || k > 6) return LLMUX_EINVAL;
  if ((mo = month_from_name(t[1].base, t[1].len)) != 0) { /* asctime */
    if (k != 5 || tok_int(t[2], &d) || tok_int(t[4], &y)) return LLMUX_EINVAL;
    time = t[3];
  } else {
    if (k != 6 || !ci_equal(t[5].base, t[5].len, "gmt")) return LLMUX_EINVAL;
    mo = month_from_name(t[2].base, t[2].len);
    if (!mo || tok_int(t[1], &d) || tok_int(t[3], &y)) return LLMUX_EINVAL;
    if (t[3].len == 2) y += y < 70 ? 2000 : 1900;
    time = t[4];
  }
  p = time.base;
  if (read_hms(&p, time.base + time.len, &h, &mi, &sec) != 0 ||
      p != time.base + time.len)
    return LLMUX_EINVAL;
  return civil_to_ms(y, mo, d, h, mi, sec, out_unix_ms);
}

static uint64_t delay_until(int64_t at_ms, int64_t wall_ms) {
  return at_ms > wall_ms ? (uint64_t)(at_ms - wall_ms) : 0;
}

/* A plain decimal, maybe fractional, of `unit_ns` units, with nothing
 * after it. */
static int parse_decimal_ms(const char *s, size_t n, uint64_t unit_ns, uint64_t *out_ms) {
  const char *p;
  uint64_t ns = 0;
  trim(&s, &n);
  p = s;
  if (n == 0 || add_number(&p, s + n, unit_ns, &ns) != 0 || p != s + n)
    return LLMUX_EINVAL;
  *out_ms = ns_to_ms_up(ns);
  return 0;
}

int llmux_rl_parse_retry_after(const char *s, size_t n, int64_t wall_ms,
                               uint64_t *out_ms) {
  int64_t at;
  trim(&s, &n);
  if (n && is_digit(s[0])) return parse_decimal_ms(s, n, 1000000000u, out_ms);
  if (llmux_rl_parse_http_date(s, n, &at) != 0) return LLMUX_EINVAL;
  *out_ms = delay_until(at, wall_ms);
  return 0;
}

/* ---- Header parsing ---------------------------------------------------- */

enum { F_LIMIT, F_REMAINING, F_RESET };

/* Reads "limit-", "remaining-" or "reset-" at the front of *s. */
static int take_field(const char **s, size_t *n) {
  static const char *const names[] = {"limit-", "remaining-", "reset-"};
  int i;
  for (i = 0; i < 3; i++) {
    size_t k = strlen(names[i]);
    if (ci_prefix(*s, *n, names[i])) { *s += k; *n -= k; return i; }
  }
  return -1;
}

/* Stores one numeric fact; the reset value is already a delay. */
static int set_fact(llmux_rl_dim_info_t *d, int field, uint64_t v) {
  switch (field) {
  case F_LIMIT: d->has_limit = 1; d->limit = v; break;
  case F_REMAINING: d->has_remaining = 1; d->remaining = v; break;
  default:
    if (v > MAX_RESET_MS) return 0;
    d->has_reset = 1;
    d->reset_in_ms = v;
    break;
  }
  return 1;
}

/* "x-ratelimit-" already removed: FIELD-(requests|tokens)[-minute|-day]. */
static int parse_xrl(llmux_rl_style_t style, const char *s, size_t n, llmux_str_t value,
                     llmux_rl_info_t *out) {
  int field = take_field(&s, &n), tokens, day;
  uint64_t v;
  if (field < 0) return 0;
  if (ci_prefix(s, n, "requests")) { tokens = 0; s += 8; n -= 8; }
  else if (ci_prefix(s, n, "tokens")) { tokens = 1; s += 6; n -= 6; }
  else return 0;
  if (n == 0) day = !tokens && style == LLMUX_RL_STYLE_GROQ; /* Groq: RPD */
  else if (ci_equal(s, n, "-minute")) day = 0;
  else if (ci_equal(s, n, "-day")) day = 1;
  else return 0; /* -hour, -input, ... */
  if (field == F_RESET) {
    if (llmux_rl_parse_go_duration(value.base, value.len, &v) != 0) return 0;
  } else if (parse_u64(value.base, value.len, &v) != 0) {
    return 0;
  }
  return set_fact(&out->dims[tokens * 2 + day], field, v);
}

/* "anthropic-ratelimit-" removed: (requests|tokens|input-tokens|
 * output-tokens)-(limit|remaining|reset). Token facts go to cand[0..2]. */
static int parse_anthropic(const char *s, size_t n, llmux_str_t value, int64_t wall_ms,
                           llmux_rl_info_t *out, llmux_rl_dim_info_t *cand) {
  static const char *const kinds[] = {"requests-", "tokens-", "input-tokens-",
                                      "output-tokens-"};
  static const char *const fields[] = {"limit", "remaining", "reset"};
  llmux_rl_dim_info_t *d = NULL;
  int i, field = -1;
  int64_t at;
  uint64_t v;
  for (i = 0; i < 4 && d == NULL; i++) {
    if (!ci_prefix(s, n, kinds[i])) continue;
    s += strlen(kinds[i]);
    n -= strlen(kinds[i]);
    d = i == 0 ? &out->dims[LLMUX_RL_REQ_MINUTE] : &cand[i - 1];
  }
  for (i = 0; i < 3 && d != NULL; i++)
    if (ci_equal(s, n, fields[i])) field = i;
  if (field < 0) return 0;
  if (field == F_RESET) {
    if (llmux_rl_parse_rfc3339(value.base, value.len, &at) != 0) return 0;
    v = delay_until(at, wall_ms);
  } else if (parse_u64(value.base, value.len, &v) != 0) {
    return 0;
  }
  return set_fact(d, field, v);
}

/* Anthropic's token dimension: the candidate with the least remaining (the
 * one that will stop us first); on a tie the later reset. */
static void pick_anthropic_tokens(const llmux_rl_dim_info_t *cand, llmux_rl_info_t *out) {
  const llmux_rl_dim_info_t *best = NULL;
  int i;
  for (i = 0; i < 3; i++) {
    const llmux_rl_dim_info_t *c = &cand[i];
    if (!c->has_remaining) continue;
    if (best == NULL || c->remaining < best->remaining ||
        (c->remaining == best->remaining && c->reset_in_ms > best->reset_in_ms))
      best = c;
  }
  if (best == NULL && (cand[0].has_limit || cand[0].has_reset)) best = &cand[0];
  if (best) out->dims[LLMUX_RL_TOK_MINUTE] = *best;
}

int llmux_rl_parse_headers(llmux_rl_style_t style, const llmux_header_t *headers,
                           size_t n, int64_t wall_ms, llmux_rl_info_t *out) {
  llmux_rl_dim_info_t cand[3];
  uint64_t ra_ms = 0, v;
  int facts = 0, has_ms = 0;
  size_t i;
  memset(out, 0, sizeof(*out));
  memset(cand, 0, sizeof(cand));
  for (i = 0; i < n; i++) {
    const char *name = headers[i].name.base;
    size_t len = headers[i].name.len;
    llmux_str_t val = headers[i].value;
    if (ci_equal(name, len, "retry-after-ms")) {
      if (parse_decimal_ms(val.base, val.len, 1000000u, &v) == 0) {
        ra_ms = v; has_ms = 1; facts++;
      }
    } else if (ci_equal(name, len, "retry-after")) {
      if (llmux_rl_parse_retry_after(val.base, val.len, wall_ms, &v) == 0) {
        out->has_retry_after = 1; out->retry_after_ms = v; facts++;
      }
    } else if (style == LLMUX_RL_STYLE_ANTHROPIC) {
      if (ci_prefix(name, len, "anthropic-ratelimit-"))
        facts += parse_anthropic(name + 20, len - 20, val, wall_ms, out, cand);
    } else if (ci_prefix(name, len, "x-ratelimit-")) {
      facts += parse_xrl(style, name + 12, len - 12, val, out);
    }
  }
  if (style == LLMUX_RL_STYLE_ANTHROPIC) pick_anthropic_tokens(cand, out);
  if (has_ms) { out->has_retry_after = 1; out->retry_after_ms = ra_ms; }
  return facts;
}

/* ---- Token estimates --------------------------------------------------- */

/* Bytes of string values (not keys) in one JSON value that json_scan has
 * already validated, and the number of objects directly inside it (the
 * messages of a "messages" array). */
static void count_text(llmux_str_t v, uint64_t *bytes, uint64_t *objects) {
  const char *p = v.base, *end = v.base + v.len, *start, *q, *r;
  int depth = 0;
  while (p < end) {
    char c = *p++;
    if (c == '{' || c == '[') {
      if (c == '{' && depth == 1) (*objects)++;
      depth++;
    } else if (c == '}' || c == ']') {
      depth--;
    } else if (c == '"') {
      /* The string's end: the next quote not escaped by an odd run of
       * backslashes, found with memchr (strings are most of a request). */
      for (start = p;;) {
        size_t bs = 0;
        q = memchr(p, '"', (size_t)(end - p));
        if (q == NULL) return;
        for (r = q; r > start && r[-1] == '\\'; r--) bs++;
        p = q + 1;
        if (bs % 2 == 0) break;
      }
      q = p;
      while (q < end && (*q == ' ' || *q == '\n' || *q == '\r' || *q == '\t')) q++;
      if (q == end || *q != ':') *bytes += (uint64_t)(p - 1 - start);
    }
  }
}

static const llmux_json_field_t *field(const llmux_json_field_t *f, size_t n, const char *key) {
  size_t i;
  for (i = 0; i < n; i++)
    if (f[i].type != LLMUX_JSON_NONE && strcmp(f[i].key, key) == 0) return &f[i];
  return NULL;
}

uint64_t llmux_rl_estimate_fields(const llmux_json_field_t *f, size_t n) {
  static const char *const keys[] = {"messages", "prompt", "input", "tools"};
  uint64_t bytes = 0, msgs = 0;
  size_t i;
  for (i = 0; i < LLMUX_COUNTOF(keys); i++) {
    const llmux_json_field_t *v = field(f, n, keys[i]);
    uint64_t objs = 0;
    if (v == NULL) continue;
    count_text(v->value, &bytes, &objs);
    if (i == 0) msgs = objs;
  }
  return (bytes + 3) / 4 + 4 * msgs + 3;
}

int llmux_rl_max_tokens_fields(const llmux_json_field_t *f, size_t n, uint64_t *out) {
  static const char *const keys[] = {"max_completion_tokens", "max_tokens"};
  size_t i;
  for (i = 0; i < LLMUX_COUNTOF(keys); i++) {
    const llmux_json_field_t *v = field(f, n, keys[i]);
    if (v != NULL && v->type == LLMUX_JSON_NUMBER &&
        parse_u64(v->value.base, v->value.len, out) == 0)
      return 0;
  }
  return LLMUX_ENOTFOUND;
}

uint64_t llmux_rl_estimate_tokens(const char *body, size_t len) {
  llmux_json_field_t f[] = {{"messages"}, {"prompt"}, {"input"}, {"tools"}};
  if (llmux_json_scan(body, len, f, LLMUX_COUNTOF(f), NULL, NULL) != 0)
    return (uint64_t)len / 4 + 3;
  return llmux_rl_estimate_fields(f, LLMUX_COUNTOF(f));
}

int llmux_rl_parse_max_tokens(const char *body, size_t len, uint64_t *out) {
  llmux_json_field_t f[] = {{"max_completion_tokens"}, {"max_tokens"}};
  if (llmux_json_scan(body, len, f, LLMUX_COUNTOF(f), NULL, NULL) != 0)
    return LLMUX_EINVAL;
  return llmux_rl_max_tokens_fields(f, LLMUX_COUNTOF(f), out);
}

uint64_t llmux_rl_tokens_to_reserve(llmux_rl_style_t style, uint64_t prompt_tokens,
                                    uint64_t max_tokens, uint64_t context_window) {
  uint64_t completion;
  if (style == LLMUX_RL_STYLE_CEREBRAS) {
    if (max_tokens) return prompt_tokens + max_tokens;
    if (context_window) return context_window > prompt_tokens ? context_window : prompt_tokens;
    return prompt_tokens + CEREBRAS_DEFAULT_COMPLETION;
  }
  completion = LLMUX_RL_DEFAULT_COMPLETION_TOKENS;
  if (max_tokens && max_tokens < completion) completion = max_tokens;
  return prompt_tokens + completion;
}

/* ---- Sliding windows --------------------------------------------------- */

#define NSLOTS 60         /* slots per window */
#define RING (NSLOTS + 1) /* slots kept: the window plus the current one */
static const uint64_t slot_ms[2] = {1000u, 1440000u}; /* 60 s and 24 h in 60 */

/* Slot k (absolute: time / slot width) covers [k * w, (k + 1) * w) and is
 * counted until the whole of it is a window old, at (k + 1 + NSLOTS) * w:
 * an event is held for one window plus at most one slot (conservative).
 * It lives at k % RING while in (head - RING, head]. Dimension d uses
 * window d % 2 (minute, day) and counts d / 2 (requests, tokens). */
typedef struct win_s {
  uint64_t head;
  uint64_t count[2][RING];
} win_t;

static void win_advance(win_t *w, uint64_t slot_width, uint64_t now) {
  uint64_t idx = now / slot_width, k;
  if (idx <= w->head) return; /* the same slot, or the clock went back */
  if (idx - w->head >= RING) {
    memset(w->count, 0, sizeof(w->count));
  } else {
    for (k = w->head + 1; k <= idx; k++)
      w->count[0][k % RING] = w->count[1][k % RING] = 0;
  }
  w->head = idx;
}

/* The oldest slot still counted at `now`. */
static uint64_t win_first(const win_t *w, uint64_t slot_width, uint64_t now) {
  uint64_t idx = now / slot_width;
  if (idx < w->head) idx = w->head; /* the clock went back: as of head */
  return idx >= NSLOTS ? idx - NSLOTS : 0;
}

static uint64_t win_sum(const win_t *w, int kind, uint64_t slot_width, uint64_t now) {
  uint64_t k, sum = 0;
  for (k = win_first(w, slot_width, now); k <= w->head; k++)
    sum += w->count[kind][k % RING];
  return sum;
}

/* Time until `cost` fits under `limit` as old slots leave; 0 if it does. */
static uint64_t win_wait(const win_t *w, int kind, uint64_t slot_width, uint64_t limit,
                         uint64_t cost, uint64_t now) {
  uint64_t used = win_sum(w, kind, slot_width, now), k, freed = 0, at;
  if (cost > limit) cost = limit; /* fits once the window is empty */
  if (used + cost <= limit) return 0;
  for (k = win_first(w, slot_width, now); k <= w->head; k++) {
    freed += w->count[kind][k % RING];
    if (used - freed + cost <= limit) break;
  }
  at = (k + 1 + NSLOTS) * slot_width;
  return at > now ? at - now : 0;
}

/* Takes back up to `n` from the slot where something was counted at
 * `at_ms`, if that slot is still kept. */
static void win_uncount(win_t *w, int kind, uint64_t slot_width, uint64_t at_ms,
                        uint64_t n) {
  uint64_t k = at_ms / slot_width, *c;
  if (k > w->head || (w->head >= RING && k <= w->head - RING)) return;
  c = &w->count[kind][k % RING];
  *c = *c > n ? *c - n : 0;
}

/* ---- The in-memory store ----------------------------------------------- */

typedef struct synced_s {
  int valid;
  uint64_t limit;      /* as reported; 0 when not */
  uint64_t remaining;  /* as reported */
  uint64_t reset_at;   /* monotonic ms */
  uint64_t used_since; /* reserved by us since the report */
} synced_t;

typedef struct entry_s {
  char *provider; /* owned */
  char *model;    /* owned; NULL for the provider-wide key */
  uint64_t hash;
  uint64_t limits[LLMUX_RL_NDIMS];
  win_t win[2];
  synced_t sync[LLMUX_RL_NDIMS];
  uint64_t sync_gen;   /* bumped by every sync: tells reservations apart */
  uint64_t retry_until; /* RETRY_AFTER block, monotonic ms */
  uint64_t spend_until; /* SPEND_LIMIT block */
  uint64_t inflight;
} entry_t;

typedef struct mem_store_s {
  llmux_rl_store_t base;
  entry_t **table; /* open addressing, linear probing, never deleted */
  size_t cap;      /* power of two, at least 2 * max */
  size_t count;
  size_t max;
} mem_store_t;

static mem_store_t *mem_of(llmux_rl_store_t *s) {
  return llmux_container_of(s, mem_store_t, base);
}

static uint64_t fnv(uint64_t h, const char *s) {
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211u;
  return h;
}

static uint64_t key_hash(const llmux_rl_key_t *key) {
  uint64_t h = fnv(14695981039346656037u, key->provider);
  h = (h ^ (key->model ? 0x1f : 0x1e)) * 1099511628211u;
  return key->model ? fnv(h, key->model) : h;
}

static int key_matches(const entry_t *e, const llmux_rl_key_t *key) {
  if (strcmp(e->provider, key->provider) != 0) return 0;
  if (e->model == NULL || key->model == NULL) return e->model == key->model;
  return strcmp(e->model, key->model) == 0;
}

/* The slot of `key`: its entry or the empty slot where it would go. */
static entry_t **find_slot(mem_store_t *m, const llmux_rl_key_t *key, uint64_t h) {
  size_t i = (size_t)h & (m->cap - 1);
  while (m->table[i] && (m->table[i]->hash != h || !key_matches(m->table[i], key)))
    i = (i + 1) & (m->cap - 1);
  return &m->table[i];
}

static entry_t *lookup(mem_store_t *m, const llmux_rl_key_t *key) {
  return *find_slot(m, key, key_hash(key));
}

static entry_t *get_or_create(mem_store_t *m, const llmux_rl_key_t *key) {
  uint64_t h = key_hash(key);
  entry_t **slot = find_slot(m, key, h), *e;
  if (*slot) return *slot;
  if (m->count == m->max) return NULL;
  e = llmux_xcalloc(1, sizeof(*e));
  e->provider = llmux_xstrdup(key->provider);
  e->model = key->model ? llmux_xstrdup(key->model) : NULL;
  e->hash = h;
  *slot = e;
  m->count++;
  return e;
}

static int synced_fresh(const synced_t *sy, uint64_t now) {
  return sy->valid && now < sy->reset_at;
}

static uint64_t synced_left(const synced_t *sy) {
  return sy->remaining > sy->used_since ? sy->remaining - sy->used_since : 0;
}

/* Time until dimension d of e has room for `cost`; 0 when it has. Both
 * views must agree: the provider's (it sees every client of the key) and
 * our own count against the configured limit (an operator may give llmux
 * only part of a key's budget). */
static uint64_t dim_wait(const entry_t *e, int d, uint64_t cost, uint64_t now) {
  const synced_t *sy = &e->sync[d];
  uint64_t wait = 0, own;
  if (synced_fresh(sy, now) && cost > synced_left(sy)) wait = sy->reset_at - now;
  if (e->limits[d] == 0) return wait;
  own = win_wait(&e->win[d % 2], d / 2, slot_ms[d % 2], e->limits[d], cost, now);
  return own > wait ? own : wait;
}

static uint64_t block_wait(const entry_t *e, uint64_t now) {
  uint64_t until = e->retry_until > e->spend_until ? e->retry_until : e->spend_until;
  if (until <= now) return 0;
  return until == LLMUX_RL_FOREVER ? LLMUX_RL_FOREVER : until - now;
}

static uint64_t entry_wait(const entry_t *e, uint64_t tokens, uint64_t now) {
  uint64_t wait = block_wait(e, now), w;
  int d;
  for (d = 0; d < LLMUX_RL_NDIMS; d++) {
    w = dim_wait(e, d, d / 2 ? tokens : 1, now);
    if (w > wait) wait = w;
  }
  return wait;
}

/* The route's entry and its provider's, either possibly NULL. */
static void legs(mem_store_t *m, const llmux_rl_key_t *key, entry_t *out[2]) {
  llmux_rl_key_t pk = {key->provider, NULL};
  out[0] = lookup(m, key);
  out[1] = key->model ? lookup(m, &pk) : NULL;
}

static int mem_set_limits(llmux_rl_store_t *s, const llmux_rl_key_t *key,
                          const llmux_limits_t *l) {
  entry_t *e = get_or_create(mem_of(s), key);
  if (e == NULL) return LLMUX_ETOOLARGE;
  e->limits[LLMUX_RL_REQ_MINUTE] = l->requests_per_minute;
  e->limits[LLMUX_RL_REQ_DAY] = l->requests_per_day;
  e->limits[LLMUX_RL_TOK_MINUTE] = l->tokens_per_minute;
  e->limits[LLMUX_RL_TOK_DAY] = l->tokens_per_day;
  return 0;
}

static int mem_check(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t tokens,
                     uint64_t now, uint64_t *retry_after_ms) {
  entry_t *e[2];
  uint64_t wait = 0, w;
  int i;
  legs(mem_of(s), key, e);
  for (i = 0; i < 2; i++) {
    if (e[i] == NULL) continue;
    w = entry_wait(e[i], tokens, now);
    if (w > wait) wait = w;
  }
  *retry_after_ms = wait;
  return wait ? LLMUX_EAGAIN : 0;
}

/* Adds (sign > 0) or takes back one request and `tokens` on e's provider
 * state, if it is the one the reservation saw. */
static void synced_adjust(entry_t *e, uint64_t gen, int64_t reqs, int64_t tokens) {
  int d;
  if (gen != e->sync_gen) return; /* a later report already counts it */
  for (d = 0; d < LLMUX_RL_NDIMS; d++) {
    synced_t *sy = &e->sync[d];
    int64_t delta = d / 2 ? tokens : reqs;
    if (!sy->valid) continue;
    if (delta >= 0) sy->used_since += (uint64_t)delta;
    else sy->used_since -= (uint64_t)-delta > sy->used_since ? sy->used_since
                                                             : (uint64_t)-delta;
  }
}

static int mem_reserve(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t tokens,
                       uint64_t now, llmux_rl_reservation_t *res) {
  entry_t *e[2];
  int i, w;
  legs(mem_of(s), key, e);
  memset(res->ref, 0, sizeof(res->ref));
  for (i = 0; i < 2; i++) {
    if (e[i] == NULL) continue;
    for (w = 0; w < 2; w++) {
      win_advance(&e[i]->win[w], slot_ms[w], now);
      e[i]->win[w].count[0][e[i]->win[w].head % RING] += 1;
      e[i]->win[w].count[1][e[i]->win[w].head % RING] += tokens;
    }
    synced_adjust(e[i], e[i]->sync_gen, 1, (int64_t)tokens);
    e[i]->inflight++;
    res->ref[i] = e[i];
    res->gen[i] = e[i]->sync_gen;
  }
  res->store = s;
  res->held = 1;
  res->tokens = tokens;
  res->at_ms = now;
  return 0;
}

static void mem_commit(llmux_rl_store_t *s, llmux_rl_reservation_t *res, uint64_t actual,
                       uint64_t now) {
  int i, w;
  for (i = 0; i < 2; i++) {
    entry_t *e = res->ref[i];
    if (e == NULL) continue;
    for (w = 0; w < 2; w++) {
      if (actual < res->tokens) {
        win_uncount(&e->win[w], 1, slot_ms[w], res->at_ms, res->tokens - actual);
      } else {
        win_advance(&e->win[w], slot_ms[w], now);
        e->win[w].count[1][e->win[w].head % RING] += actual - res->tokens;
      }
    }
    synced_adjust(e, res->gen[i], 0, (int64_t)actual - (int64_t)res->tokens);
    e->inflight--;
  }
  res->tokens = actual;
}

static void mem_release(llmux_rl_store_t *s, llmux_rl_reservation_t *res, uint64_t now) {
  int i, w;
  for (i = 0; i < 2; i++) {
    entry_t *e = res->ref[i];
    if (e == NULL) continue;
    for (w = 0; w < 2; w++) {
      win_uncount(&e->win[w], 0, slot_ms[w], res->at_ms, 1);
      win_uncount(&e->win[w], 1, slot_ms[w], res->at_ms, res->tokens);
    }
    synced_adjust(e, res->gen[i], -1, -(int64_t)res->tokens);
    e->inflight--;
  }
}

static void raise_block(entry_t *e, uint64_t until, llmux_rl_block_reason_t reason) {
  uint64_t *slot = reason == LLMUX_RL_BLOCK_SPEND_LIMIT ? &e->spend_until : &e->retry_until;
  if (until > *slot) *slot = until;
}

static int mem_apply(llmux_rl_store_t *s, const llmux_rl_key_t *key,
                     const llmux_rl_info_t *info, uint64_t now) {
  entry_t *e = get_or_create(mem_of(s), key);
  int d, any = 0;
  if (e == NULL) return LLMUX_ETOOLARGE;
  for (d = 0; d < LLMUX_RL_NDIMS; d++) {
    const llmux_rl_dim_info_t *di = &info->dims[d];
    synced_t *sy = &e->sync[d];
    if (!di->has_remaining) continue;
    sy->valid = 1;
    sy->limit = di->has_limit ? di->limit : 0;
    sy->remaining = di->remaining;
    sy->reset_at = now + (di->has_reset ? di->reset_in_ms : SYNC_TTL_MS);
    sy->used_since = 0;
    any = 1;
  }
  if (any) e->sync_gen++;
  if (info->has_retry_after)
    raise_block(e, now + info->retry_after_ms, LLMUX_RL_BLOCK_RETRY_AFTER);
  return 0;
}

static int mem_block(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t until,
                     llmux_rl_block_reason_t reason) {
  entry_t *e;
  if (reason != LLMUX_RL_BLOCK_RETRY_AFTER && reason != LLMUX_RL_BLOCK_SPEND_LIMIT)
    return LLMUX_EINVAL;
  if ((e = get_or_create(mem_of(s), key)) == NULL) return LLMUX_ETOOLARGE;
  raise_block(e, until, reason);
  return 0;
}

static void mem_unblock(llmux_rl_store_t *s, const llmux_rl_key_t *key) {
  entry_t *e = lookup(mem_of(s), key);
  if (e) e->retry_until = e->spend_until = 0;
}

static void fill_snapshot(const entry_t *e, uint64_t now, llmux_rl_snapshot_t *out) {
  int d;
  memset(out, 0, sizeof(*out));
  for (d = 0; d < LLMUX_RL_NDIMS; d++) {
    llmux_rl_dim_snapshot_t *o = &out->dims[d];
    const synced_t *sy = &e->sync[d];
    o->limit = e->limits[d];
    o->used = win_sum(&e->win[d % 2], d / 2, slot_ms[d % 2], now);
    if (!synced_fresh(sy, now)) continue;
    o->synced = 1;
    o->synced_limit = sy->limit;
    o->synced_remaining = synced_left(sy);
    o->reset_in_ms = sy->reset_at - now;
  }
  out->blocked_for_ms = block_wait(e, now);
  if (e->spend_until > now) out->block_reason = LLMUX_RL_BLOCK_SPEND_LIMIT;
  else if (e->retry_until > now) out->block_reason = LLMUX_RL_BLOCK_RETRY_AFTER;
  out->inflight = e->inflight;
}

static int mem_snapshot(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t now,
                        llmux_rl_snapshot_t *out) {
  entry_t *e = lookup(mem_of(s), key);
  if (e == NULL) return LLMUX_ENOTFOUND;
  fill_snapshot(e, now, out);
  return 0;
}

static void mem_foreach(llmux_rl_store_t *s, uint64_t now, llmux_rl_foreach_cb cb,
                        void *arg) {
  mem_store_t *m = mem_of(s);
  llmux_rl_snapshot_t snap;
  size_t i;
  for (i = 0; i < m->cap; i++) {
    entry_t *e = m->table[i];
    llmux_rl_key_t key;
    if (e == NULL) continue;
    key.provider = e->provider;
    key.model = e->model;
    fill_snapshot(e, now, &snap);
    cb(arg, &key, &snap);
  }
}

static void mem_destroy(llmux_rl_store_t *s) {
  mem_store_t *m = mem_of(s);
  size_t i;
  for (i = 0; i < m->cap; i++) {
    if (m->table[i] == NULL) continue;
    free(m->table[i]->provider);
    free(m->table[i]->model);
    free(m->table[i]);
  }
  free(m->table);
  free(m);
}

static const llmux_rl_store_vtable_t mem_vtable = {
  mem_set_limits, mem_check, mem_reserve, mem_commit, mem_release, mem_apply,
  mem_block, mem_unblock, mem_snapshot, mem_foreach, mem_destroy,
};

int llmux_rl_memory_store_new(size_t max_keys, llmux_rl_store_t **out) {
  mem_store_t *m;
  size_t cap = 8;
  if (out == NULL || max_keys == 0 || max_keys > ((size_t)1 << 24)) return LLMUX_EINVAL;
  while (cap < 2 * max_keys) cap *= 2;
  m = llmux_xcalloc(1, sizeof(*m));
  m->table = llmux_xcalloc(cap, sizeof(*m->table));
  m->cap = cap;
  m->max = max_keys;
  m->base.vt = &mem_vtable;
  *out = &m->base;
  return 0;
}

/* ---- Public entry points: argument checks, then the store -------------- */

static int key_ok(const llmux_rl_key_t *key) {
  return key != NULL && key->provider != NULL;
}

void llmux_rl_store_destroy(llmux_rl_store_t *s) {
  if (s) s->vt->destroy(s);
}

int llmux_rl_set_limits(llmux_rl_store_t *s, const llmux_rl_key_t *key,
                        const llmux_limits_t *limits) {
  if (s == NULL || !key_ok(key) || limits == NULL) return LLMUX_EINVAL;
  return s->vt->set_limits(s, key, limits);
}

int llmux_rl_configure(llmux_rl_store_t *s, const llmux_config_t *cfg) {
  size_t i;
  int rc;
  if (s == NULL || cfg == NULL) return LLMUX_EINVAL;
  for (i = 0; i < cfg->nroutes; i++) {
    const llmux_route_conf_t *r = cfg->routes[i];
    llmux_rl_key_t key = {r->provider_name, r->id};
    if ((rc = llmux_rl_set_limits(s, &key, &r->limits)) != 0) return rc;
  }
  return 0;
}

int llmux_rl_check(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t tokens,
                   uint64_t now_ms, uint64_t *retry_after_ms) {
  uint64_t dummy;
  if (retry_after_ms == NULL) retry_after_ms = &dummy;
  *retry_after_ms = 0;
  if (s == NULL || !key_ok(key)) return LLMUX_EINVAL;
  return s->vt->check(s, key, tokens, now_ms, retry_after_ms);
}

int llmux_rl_reserve(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t tokens,
                     uint64_t now_ms, llmux_rl_reservation_t *res) {
  if (s == NULL || !key_ok(key) || res == NULL) return LLMUX_EINVAL;
  assert(!res->held);
  return s->vt->reserve(s, key, tokens, now_ms, res);
}

void llmux_rl_commit(llmux_rl_reservation_t *res, uint64_t actual_tokens,
                     uint64_t now_ms) {
  if (res == NULL || !res->held) return;
  res->store->vt->commit(res->store, res, actual_tokens, now_ms);
  res->held = 0;
}

void llmux_rl_release(llmux_rl_reservation_t *res, uint64_t now_ms) {
  if (res == NULL || !res->held) return;
  res->store->vt->release(res->store, res, now_ms);
  res->held = 0;
}

int llmux_rl_apply(llmux_rl_store_t *s, const llmux_rl_key_t *key,
                   const llmux_rl_info_t *info, uint64_t now_ms) {
  if (s == NULL || !key_ok(key) || info == NULL) return LLMUX_EINVAL;
  return s->vt->apply(s, key, info, now_ms);
}

int llmux_rl_sync_headers(llmux_rl_store_t *s, const llmux_rl_key_t *key,
                          llmux_rl_style_t style, const llmux_header_t *headers,
                          size_t n, uint64_t now_ms, int64_t wall_ms) {
  llmux_rl_info_t info;
  if (llmux_rl_parse_headers(style, headers, n, wall_ms, &info) == 0) return 0;
  return llmux_rl_apply(s, key, &info, now_ms);
}

int llmux_rl_block(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t until_ms,
                   llmux_rl_block_reason_t reason) {
  if (s == NULL || !key_ok(key)) return LLMUX_EINVAL;
  return s->vt->block(s, key, until_ms, reason);
}

void llmux_rl_unblock(llmux_rl_store_t *s, const llmux_rl_key_t *key) {
  if (s && key_ok(key)) s->vt->unblock(s, key);
}

int llmux_rl_snapshot(llmux_rl_store_t *s, const llmux_rl_key_t *key, uint64_t now_ms,
                      llmux_rl_snapshot_t *out) {
  if (s == NULL || !key_ok(key) || out == NULL) return LLMUX_EINVAL;
  return s->vt->snapshot(s, key, now_ms, out);
}

void llmux_rl_foreach(llmux_rl_store_t *s, uint64_t now_ms, llmux_rl_foreach_cb cb,
                      void *arg) {
  if (s && cb) s->vt->foreach(s, now_ms, cb, arg);
}
