/* Metrics in Prometheus's text exposition format (0.0.4).
 *
 * A registry holds metric families (counter, gauge, histogram), each with a
 * fixed list of label names. A family's series are created on first use from
 * their label values and live as long as the registry: callers look a series
 * up once (at start-up, or when a route or tenant first appears) and keep the
 * pointer, so recording a value on the hot path is an addition, never a
 * lookup. Label values must be bounded by configuration (providers, models,
 * tenants, endpoints): never a request id or free text.
 *
 * Gauges whose value lives elsewhere (a breaker's state, what a limit store
 * thinks is left, RSS) are set by collectors: callbacks run by
 * llmux_metrics_render() just before the text is written, so they cost
 * nothing between scrapes.
 *
 * Single-threaded, like the loop that owns it. */
#ifndef LLMUX_BASE_METRICS_H
#define LLMUX_BASE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "base/util.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct llmux_metrics_s llmux_metrics_t;
typedef struct llmux_metric_s llmux_metric_t;
typedef struct llmux_series_s llmux_series_t;

typedef enum {
  LLMUX_METRIC_COUNTER,
  LLMUX_METRIC_GAUGE,
  LLMUX_METRIC_HISTOGRAM
} llmux_metric_type_t;

#define LLMUX_METRIC_MAX_LABELS 6

/* Runs at render time; sets gauges from state kept elsewhere. */
typedef void (*llmux_metrics_collect_cb)(llmux_metrics_t *m, void *arg);

llmux_metrics_t *llmux_metrics_new(void);
void llmux_metrics_free(llmux_metrics_t *m);

/* Declares a family. `name` and the label names must be valid Prometheus
 * names and stay valid for the registry's life (string literals). `buckets`
 * (histograms only) are the upper bounds in ascending order, without +Inf;
 * copied. Returns NULL on a programmer's mistake (bad name, too many labels,
 * a name declared twice) or out of memory. */
llmux_metric_t *llmux_metrics_declare(llmux_metrics_t *m, llmux_metric_type_t type,
                                      const char *name, const char *help,
                                      const char *const *labels, size_t nlabels,
                                      const double *buckets, size_t nbuckets);

/* The series with these label values (as many as the family has labels),
 * created at zero on first use. Values are copied. NULL only when out of
 * memory. The pointer stays valid until llmux_metrics_free(). A lookup
 * with the same value addresses as a recent one (configuration strings,
 * request after request) skips the hash; the bytes are compared all the
 * same. */
llmux_series_t *llmux_metric_series(llmux_metric_t *f, const char *const *values);
/* The same for families with no more than three labels, without an array. */
llmux_series_t *llmux_metric_series3(llmux_metric_t *f, const char *a, const char *b,
                                     const char *c);

/* The series' i-th label value (i < the family's label count), valid as
 * long as the series. */
const char *llmux_series_label(const llmux_series_t *s, size_t i);

/* Counters: add (v >= 0). Gauges: add (any sign) or set. Histograms: observe. */
void llmux_series_add(llmux_series_t *s, double v);
void llmux_series_set(llmux_series_t *s, double v);
void llmux_series_observe(llmux_series_t *s, double v);
double llmux_series_value(const llmux_series_t *s);    /* counter/gauge value; histogram sum */
uint64_t llmux_series_count(const llmux_series_t *s);  /* histogram observations */

/* Gauge series that a collector no longer sets (a route removed by a
 * reload) disappear from the output: a collector marks what it set with
 * llmux_series_set(), and llmux_metric_reset_unset() before it runs makes
 * every series of the family unset. Counters and histograms never vanish. */
void llmux_metric_reset_unset(llmux_metric_t *f);

/* Registers a collector; collectors run in registration order. 0 or
 * LLMUX_ENOMEM. */
int llmux_metrics_on_collect(llmux_metrics_t *m, llmux_metrics_collect_cb cb, void *arg);

/* Runs the collectors, then appends every family in declaration order, in
 * the text format (HELP, TYPE, series; histograms as _bucket{le=...},
 * _sum, _count). A family with no series is written with HELP and TYPE
 * only. 0 or LLMUX_ENOMEM. */
int llmux_metrics_render(llmux_metrics_t *m, llmux_buf_t *out);

#define LLMUX_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#ifdef __cplusplus
}
#endif
#endif /* LLMUX_BASE_METRICS_H */
