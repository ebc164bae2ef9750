/* Providers' rate-limit header dialects: the value parsers and the
 * readers of each dialect's headers. Pure functions of their input (the
 * wall clock is passed in). See dialects.h. */
#include "route/dialects.h"

#include <string.h>
#include <strings.h>

#include "base/util.h"

/* A reset or a wait further away than this is not believed (a misread
 * epoch, a number in the wrong unit). */
#define MAX_WAIT_MS (2u * 86400000u)

/* ---- Names ------------------------------------------------------------- */

static const char *const style_names[] = {"generic", "openai", "groq", "cerebras",
                                          "anthropic"};

int llmux_rl_style_parse(const char *name, llmux_rl_style_t *out) {
  size_t i;
  if (name == NULL) return LLMUX_EINVAL;
  for (i = 0; i < LLMUX_COUNTOF(style_names); i++) {
    if (strcasecmp(name, style_names[i]) == 0) {
      *out = (llmux_rl_style_t)i;
      return 0;
    }
  }
  return LLMUX_EINVAL;
}

llmux_rl_style_t llmux_rl_style_from_name(const char *name) {
  llmux_rl_style_t style = LLMUX_RL_STYLE_GENERIC;
  llmux_rl_style_parse(name, &style);
  return style;
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

/* A wait: "<digits>[.<digits>]" of `unit_ns` units and nothing else (spaces
 * around aside), at most MAX_WAIT_MS once rounded up to the ms. No sign,
 * exponent, "inf" or empty fraction: a header is not a C literal. */
static int parse_wait_ms(const char *s, size_t n, uint64_t unit_ns, uint64_t *out_ms) {
  const char *p, *end;
  uint64_t ns = 0, ms;
  trim(&s, &n);
  p = s;
  end = s + n;
  if (n == 0 || !is_digit(s[0]) || !is_digit(s[n - 1])) return LLMUX_EINVAL;
  if (add_number(&p, end, unit_ns, &ns) != 0 || p != end) return LLMUX_EINVAL;
  ms = ns_to_ms_up(ns);
  if (ms > MAX_WAIT_MS) return LLMUX_EINVAL;
  *out_ms = ms;
  return 0;
}

int llmux_rl_parse_retry_after(const char *s, size_t n, int64_t wall_ms,
                               uint64_t *out_ms) {
  int64_t at;
  uint64_t ms;
  trim(&s, &n);
  if (n && is_digit(s[0])) return parse_wait_ms(s, n, 1000000000u, out_ms);
  if (llmux_rl_parse_http_date(s, n, &at) != 0) return LLMUX_EINVAL;
  ms = delay_until(at, wall_ms);
  if (ms > MAX_WAIT_MS) return LLMUX_EINVAL;
  *out_ms = ms;
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
    if (v > MAX_WAIT_MS) return 0;
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
  out->size = sizeof(*out);
  memset(cand, 0, sizeof(cand));
  for (i = 0; i < n; i++) {
    const char *name = headers[i].name.base;
    size_t len = headers[i].name.len;
    llmux_str_t val = headers[i].value;
    if (ci_equal(name, len, "retry-after-ms")) {
      if (parse_wait_ms(val.base, val.len, 1000000u, &v) == 0) {
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
