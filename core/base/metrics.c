/* Prometheus text exposition: families, series, collectors, rendering. */
#include "base/metrics.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct llmux_series_s {
  llmux_metric_t *family;
  llmux_series_t *next;   /* in the family, creation order */
  llmux_series_t *hnext;  /* hash chain */
  uint64_t hash;
  char **values;          /* one per label, owned */
  double value;           /* counter/gauge value; histogram sum */
  uint64_t count;         /* histogram observations */
  uint64_t *buckets;      /* histogram: counts per bound, not cumulative */
  int set;                /* gauges: set since the last reset_unset */
};

#define MEMO_SLOTS 8 /* a power of two */

struct llmux_metric_s {
  llmux_metric_t *next;
  llmux_metrics_t *reg;
  llmux_metric_type_t type;
  const char *name;
  const char *help;
  const char *labels[LLMUX_METRIC_MAX_LABELS];
  size_t nlabels;
  double *bounds;
  size_t nbounds;
  llmux_series_t *first, *last;
  llmux_series_t **table;  /* open hashing, power-of-two size */
  size_t tcap, nseries;
  /* Series found lately, by the addresses of the values they were found
   * with: callers pass the same configuration strings request after
   * request, so most lookups need no hash of the bytes. */
  struct memo_s {
    const char *v[LLMUX_METRIC_MAX_LABELS];
    llmux_series_t *s;
  } memo[MEMO_SLOTS];
};

typedef struct collector_s {
  struct collector_s *next;
  llmux_metrics_collect_cb cb;
  void *arg;
} collector_t;

struct llmux_metrics_s {
  llmux_metric_t *first, *last;
  collector_t *collectors, *collectors_last;
};

llmux_metrics_t *llmux_metrics_new(void) {
  return calloc(1, sizeof(llmux_metrics_t));
}

static void series_free(llmux_series_t *s, size_t nlabels) {
  size_t i;
  for (i = 0; s->values != NULL && i < nlabels; i++) free(s->values[i]);
  free(s->values);
  free(s->buckets);
  free(s);
}

void llmux_metrics_free(llmux_metrics_t *m) {
  llmux_metric_t *f, *fn;
  collector_t *c, *cn;
  if (m == NULL) return;
  for (f = m->first; f != NULL; f = fn) {
    llmux_series_t *s, *sn;
    fn = f->next;
    for (s = f->first; s != NULL; s = sn) {
      sn = s->next;
      series_free(s, f->nlabels);
    }
    free(f->table);
    free(f->bounds);
    free(f);
  }
  for (c = m->collectors; c != NULL; c = cn) {
    cn = c->next;
    free(c);
  }
  free(m);
}

static int name_ok(const char *s) {
  size_t i;
  if (s == NULL || *s == '\0') return 0;
  for (i = 0; s[i]; i++) {
    char c = s[i];
    int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return 0;
  }
  return 1;
}

static llmux_metric_t *find(llmux_metrics_t *m, const char *name) {
  llmux_metric_t *f;
  for (f = m->first; f != NULL; f = f->next)
    if (strcmp(f->name, name) == 0) return f;
  return NULL;
}

llmux_metric_t *llmux_metrics_declare(llmux_metrics_t *m, llmux_metric_type_t type,
                                      const char *name, const char *help,
                                      const char *const *labels, size_t nlabels,
                                      const double *buckets, size_t nbuckets) {
  llmux_metric_t *f;
  size_t i;
  if (m == NULL || !name_ok(name) || nlabels > LLMUX_METRIC_MAX_LABELS || find(m, name))
    return NULL;
  if ((type == LLMUX_METRIC_HISTOGRAM) != (nbuckets > 0)) return NULL;
  for (i = 0; i < nlabels; i++)
    if (!name_ok(labels[i]) || strcmp(labels[i], "le") == 0) return NULL;
  for (i = 1; i < nbuckets; i++)
    if (!(buckets[i] > buckets[i - 1])) return NULL;
  f = calloc(1, sizeof(*f));
  if (f == NULL) return NULL;
  f->reg = m;
  f->type = type;
  f->name = name;
  f->help = help ? help : "";
  f->nlabels = nlabels;
  for (i = 0; i < nlabels; i++) f->labels[i] = labels[i];
  if (nbuckets > 0) {
    f->bounds = malloc(nbuckets * sizeof(double));
    if (f->bounds == NULL) {
      free(f);
      return NULL;
    }
    memcpy(f->bounds, buckets, nbuckets * sizeof(double));
    f->nbounds = nbuckets;
  }
  if (m->last) m->last->next = f;
  else m->first = f;
  m->last = f;
  return f;
}

static uint64_t hash_values(const char *const *v, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  size_t i;
  for (i = 0; i < n; i++) {
    const unsigned char *p = (const unsigned char *)(v[i] ? v[i] : "");
    for (; *p; p++) h = (h ^ *p) * 0x100000001b3ull;
    h = (h ^ 0xff) * 0x100000001b3ull; /* separator: ("ab","") != ("a","b") */
  }
  return h;
}

static int values_equal(const llmux_series_t *s, const char *const *v, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    if (strcmp(s->values[i], v[i] ? v[i] : "") != 0) return 0;
  return 1;
}

static int grow_table(llmux_metric_t *f) {
  size_t cap = f->tcap ? f->tcap * 2 : 16, i;
  llmux_series_t **t = calloc(cap, sizeof(*t));
  llmux_series_t *s;
  if (t == NULL) return -1;
  for (i = 0; i < f->tcap; i++) {
    llmux_series_t *next;
    for (s = f->table[i]; s != NULL; s = next) {
      next = s->hnext;
      s->hnext = t[s->hash & (cap - 1)];
      t[s->hash & (cap - 1)] = s;
    }
  }
  free(f->table);
  f->table = t;
  f->tcap = cap;
  return 0;
}

static llmux_series_t *series_new(llmux_metric_t *f, const char *const *v, uint64_t h) {
  llmux_series_t *s = calloc(1, sizeof(*s));
  size_t i;
  if (s == NULL) return NULL;
  s->family = f;
  s->hash = h;
  s->values = calloc(f->nlabels ? f->nlabels : 1, sizeof(char *));
  if (s->values == NULL) goto fail;
  for (i = 0; i < f->nlabels; i++)
    if ((s->values[i] = strdup(v[i] ? v[i] : "")) == NULL) goto fail;
  if (f->nbounds > 0 && (s->buckets = calloc(f->nbounds, sizeof(uint64_t))) == NULL) goto fail;
  return s;
fail:
  series_free(s, f->nlabels);
  return NULL;
}

static size_t memo_slot(const llmux_metric_t *f, const char *const *values) {
  uintptr_t h = 0;
  size_t i;
  for (i = 0; i < f->nlabels; i++) h = (h ^ (uintptr_t)values[i]) * (uintptr_t)0x9e3779b97f4a7c15ull;
  return (size_t)(h >> (sizeof h * 8 - 3)) & (MEMO_SLOTS - 1);
}

/* A memo hit: the same addresses, and (an address may have been freed and
 * reused for another string since) the same bytes. */
static llmux_series_t *memo_find(const struct memo_s *m, const char *const *values, size_t n) {
  size_t i;
  if (m->s == NULL) return NULL;
  for (i = 0; i < n; i++)
    if (m->v[i] != values[i]) return NULL;
  return values_equal(m->s, values, n) ? m->s : NULL;
}

static llmux_series_t *memo_keep(struct memo_s *m, const char *const *values, size_t n,
                                 llmux_series_t *s) {
  size_t i;
  for (i = 0; i < n; i++) m->v[i] = values[i];
  m->s = s;
  return s;
}

llmux_series_t *llmux_metric_series(llmux_metric_t *f, const char *const *values) {
  struct memo_s *m = &f->memo[memo_slot(f, values)];
  llmux_series_t *s = memo_find(m, values, f->nlabels);
  uint64_t h;
  if (s != NULL) return s;
  h = hash_values(values, f->nlabels);
  if (f->tcap > 0)
    for (s = f->table[h & (f->tcap - 1)]; s != NULL; s = s->hnext)
      if (s->hash == h && values_equal(s, values, f->nlabels))
        return memo_keep(m, values, f->nlabels, s);
  if ((f->nseries + 1) * 4 > f->tcap * 3 && grow_table(f) != 0) return NULL; /* load <= 3/4 */
  if ((s = series_new(f, values, h)) == NULL) return NULL;
  s->hnext = f->table[h & (f->tcap - 1)];
  f->table[h & (f->tcap - 1)] = s;
  if (f->last) f->last->next = s;
  else f->first = s;
  f->last = s;
  f->nseries++;
  return memo_keep(m, values, f->nlabels, s);
}

llmux_series_t *llmux_metric_series3(llmux_metric_t *f, const char *a, const char *b,
                                     const char *c) {
  const char *v[3] = {a, b, c};
  return llmux_metric_series(f, v);
}

void llmux_series_add(llmux_series_t *s, double v) {
  if (s == NULL) return;
  s->value += v;
  s->set = 1;
}

void llmux_series_set(llmux_series_t *s, double v) {
  if (s == NULL) return;
  s->value = v;
  s->set = 1;
}

void llmux_series_observe(llmux_series_t *s, double v) {
  const llmux_metric_t *f;
  size_t lo = 0, hi;
  if (s == NULL || s->buckets == NULL || isnan(v)) return;
  f = s->family;
  hi = f->nbounds;
  /* First bound >= v; none: only +Inf counts it. */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (f->bounds[mid] < v) lo = mid + 1;
    else hi = mid;
  }
  if (lo < f->nbounds) s->buckets[lo]++;
  s->value += v;
  s->count++;
}

double llmux_series_value(const llmux_series_t *s) { return s ? s->value : 0; }
uint64_t llmux_series_count(const llmux_series_t *s) { return s ? s->count : 0; }

const char *llmux_series_label(const llmux_series_t *s, size_t i) {
  assert(i < s->family->nlabels);
  return s->values[i];
}

void llmux_metric_reset_unset(llmux_metric_t *f) {
  llmux_series_t *s;
  for (s = f->first; s != NULL; s = s->next) s->set = 0;
}

int llmux_metrics_on_collect(llmux_metrics_t *m, llmux_metrics_collect_cb cb, void *arg) {
  collector_t *c = calloc(1, sizeof(*c));
  if (c == NULL) return LLMUX_ENOMEM;
  c->cb = cb;
  c->arg = arg;
  if (m->collectors_last) m->collectors_last->next = c;
  else m->collectors = c;
  m->collectors_last = c;
  return 0;
}

/* ---- rendering ---------------------------------------------------------- */

/* HELP text escapes backslash and newline; label values also the quote. */
static int append_escaped(llmux_buf_t *out, const char *s, int quote) {
  int rc = 0;
  const char *run = s;
  for (; *s; s++) {
    const char *rep = *s == '\\' ? "\\\\" : *s == '\n' ? "\\n" : (quote && *s == '"') ? "\\\"" : NULL;
    if (rep == NULL) continue;
    rc |= llmux_buf_append(out, run, (size_t)(s - run));
    rc |= llmux_buf_appends(out, rep);
    run = s + 1;
  }
  rc |= llmux_buf_append(out, run, (size_t)(s - run));
  return rc;
}

/* Go's strconv 'g' with the shortest exact form is what Prometheus writes;
 * %.17g round-trips, and integers print without an exponent. */
static int append_number(llmux_buf_t *out, double v) {
  char tmp[40];
  if (isnan(v)) return llmux_buf_appends(out, "NaN");
  if (isinf(v)) return llmux_buf_appends(out, v > 0 ? "+Inf" : "-Inf");
  if (v == (double)(int64_t)v && fabs(v) < 9.007199254740992e15) {
    snprintf(tmp, sizeof tmp, "%lld", (long long)v);
  } else {
    int prec;
    for (prec = 6; prec <= 17; prec++) {
      snprintf(tmp, sizeof tmp, "%.*g", prec, v);
      if (strtod(tmp, NULL) == v) break;
    }
  }
  return llmux_buf_appends(out, tmp);
}

/* {a="x",b="y"[,le="0.5"]} or nothing when there is no label at all. */
static int append_labels(llmux_buf_t *out, const llmux_metric_t *f, const llmux_series_t *s,
                         const char *le) {
  size_t i;
  int rc = 0;
  if (f->nlabels == 0 && le == NULL) return 0;
  rc |= llmux_buf_appends(out, "{");
  for (i = 0; i < f->nlabels; i++) {
    rc |= llmux_buf_printf(out, "%s%s=\"", i ? "," : "", f->labels[i]);
    rc |= append_escaped(out, s->values[i], 1);
    rc |= llmux_buf_appends(out, "\"");
  }
  if (le != NULL) rc |= llmux_buf_printf(out, "%sle=\"%s\"", f->nlabels ? "," : "", le);
  rc |= llmux_buf_appends(out, "}");
  return rc;
}

static int render_histogram(llmux_buf_t *out, const llmux_metric_t *f, const llmux_series_t *s) {
  uint64_t cum = 0;
  size_t i;
  int rc = 0;
  char le[40];
  for (i = 0; i <= f->nbounds; i++) {
    llmux_buf_t num = {0};
    if (i < f->nbounds) {
      cum += s->buckets[i];
      append_number(&num, f->bounds[i]);
      snprintf(le, sizeof le, "%s", num.base ? num.base : "0");
      llmux_buf_free(&num);
    } else {
      snprintf(le, sizeof le, "+Inf");
    }
    rc |= llmux_buf_printf(out, "%s_bucket", f->name);
    rc |= append_labels(out, f, s, le);
    rc |= llmux_buf_printf(out, " %llu\n", (unsigned long long)(i < f->nbounds ? cum : s->count));
  }
  rc |= llmux_buf_printf(out, "%s_sum", f->name);
  rc |= append_labels(out, f, s, NULL);
  rc |= llmux_buf_appends(out, " ");
  rc |= append_number(out, s->value);
  rc |= llmux_buf_printf(out, "\n%s_count", f->name);
  rc |= append_labels(out, f, s, NULL);
  rc |= llmux_buf_printf(out, " %llu\n", (unsigned long long)s->count);
  return rc;
}

static const char *type_name(llmux_metric_type_t t) {
  return t == LLMUX_METRIC_COUNTER ? "counter" : t == LLMUX_METRIC_GAUGE ? "gauge" : "histogram";
}

static int render_family(llmux_buf_t *out, const llmux_metric_t *f) {
  const llmux_series_t *s;
  int rc = llmux_buf_printf(out, "# HELP %s ", f->name);
  rc |= append_escaped(out, f->help, 0);
  rc |= llmux_buf_printf(out, "\n# TYPE %s %s\n", f->name, type_name(f->type));
  for (s = f->first; s != NULL && rc == 0; s = s->next) {
    if (f->type == LLMUX_METRIC_HISTOGRAM) {
      rc |= render_histogram(out, f, s);
      continue;
    }
    if (f->type == LLMUX_METRIC_GAUGE && !s->set) continue;
    rc |= llmux_buf_appends(out, f->name);
    rc |= append_labels(out, f, s, NULL);
    rc |= llmux_buf_appends(out, " ");
    rc |= append_number(out, s->value);
    rc |= llmux_buf_appends(out, "\n");
  }
  return rc;
}

int llmux_metrics_render(llmux_metrics_t *m, llmux_buf_t *out) {
  const collector_t *c;
  const llmux_metric_t *f;
  int rc = 0;
  for (c = m->collectors; c != NULL; c = c->next) c->cb(m, c->arg);
  for (f = m->first; f != NULL && rc == 0; f = f->next) rc = render_family(out, f);
  return rc ? LLMUX_ENOMEM : 0;
}
