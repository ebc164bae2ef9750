/* Usage per tenant, per model, per UTC day: requests, input and output
 * tokens, cost in USD. The counts live in memory and are updated on the
 * loop thread with no lock and no system call; a writer thread persists
 * them to SQLite.
 *
 * Persistence. Once a second a loop timer copies the rows changed since the
 * last copy into a snapshot and hands it to the writer thread (a mutex held
 * only to link the snapshot into a queue). The thread upserts the rows'
 * absolute values in one transaction, so a snapshot written twice or late
 * is harmless, then wakes the loop with a uv_async to report errors. At
 * close the last snapshot is written synchronously (the thread is joined),
 * so a clean stop loses nothing and a kill loses at most about a second.
 * The database has one writer: one gateway per file.
 *
 * At open, the rows of the current month are loaded, so per-day and
 * per-month totals (tokens_per_day, budget_usd_per_month) hold across a
 * restart.
 *
 * Days are counted in UTC, as days since 1970-01-01; in the database they
 * are 'YYYY-MM-DD' text. */
#ifndef LLMUX_USAGE_H
#define LLMUX_USAGE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "llmux/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct llmux_usage_store_s llmux_usage_store_t;

typedef struct llmux_usage_counts_s {
  uint64_t requests;
  uint64_t input_tokens;
  uint64_t output_tokens;
  double cost_usd;
} llmux_usage_counts_t;

/* One row: borrowed strings, valid during the callback only. */
typedef struct llmux_usage_row_s {
  const char *tenant;
  const char *model;
  int day;
  llmux_usage_counts_t counts;
} llmux_usage_row_t;

typedef void (*llmux_usage_row_cb)(void *arg, const llmux_usage_row_t *row);
typedef void (*llmux_usage_close_cb)(llmux_usage_store_t *s, void *arg);

/* Opens a store. `db_path` NULL: memory only. With `loop`, a writer thread
 * and a 1 s timer persist changes in the background; without it, nothing
 * is written until llmux_usage_flush (tests, the command line). Creates the
 * table when missing and loads the current month's rows (of `today`: pass
 * llmux_usage_today()). 0 and *out, or LLMUX_EIO with a reason in err. */
int llmux_usage_open(uv_loop_t *loop, const char *db_path, int today,
                     llmux_usage_store_t **out, char *err, size_t errlen);

/* Counts one answered request. Hot path: a hash lookup and additions;
 * allocates only for a (tenant, model, day) it has not seen. */
void llmux_usage_add(llmux_usage_store_t *s, const char *tenant, const char *model, int day,
                     uint64_t input_tokens, uint64_t output_tokens, double cost_usd);

/* Sets a row to absolute counts learnt elsewhere (the fleet's totals, from
 * shared state): the tenant's day and month totals move by the difference,
 * which may be negative. A change marks the row for writing, as an add
 * does (a store that is its fleet's writer persists the fleet's values);
 * setting the values it already holds does nothing. Allocates only for a
 * row it has not seen. */
void llmux_usage_set(llmux_usage_store_t *s, const char *tenant, const char *model, int day,
                     const llmux_usage_counts_t *counts);

/* Whether the store writes its database (1 when opened). Off: changes are
 * kept in memory only, and neither the timer, llmux_usage_flush nor close
 * writes (a fleet process that is not the elected writer). Turned on: every
 * row is marked changed, so the database gets everything the store holds. */
void llmux_usage_set_persist(llmux_usage_store_t *s, int on);

/* A tenant's totals for `day` and for the month that holds it. */
void llmux_usage_tenant_totals(llmux_usage_store_t *s, const char *tenant, int day,
                               llmux_usage_counts_t *today, llmux_usage_counts_t *month);

/* Every row of `tenant` (NULL: every tenant) with first_day <= day <=
 * last_day, in no particular order. */
void llmux_usage_foreach(llmux_usage_store_t *s, const char *tenant, int first_day,
                         int last_day, llmux_usage_row_cb cb, void *arg);

/* Writes every changed row now, on the calling thread (waits for the
 * writer thread when there is one). 0, or LLMUX_EIO. */
int llmux_usage_flush(llmux_usage_store_t *s);

/* Flushes synchronously, stops the thread, closes the database and the
 * loop handles; cb runs once the memory is freed (from the loop, or at once
 * without a loop). cb may be NULL. */
void llmux_usage_close(llmux_usage_store_t *s, llmux_usage_close_cb cb, void *arg);

/* The last write error ("" when none). */
const char *llmux_usage_last_error(const llmux_usage_store_t *s);

/* ---- Days (UTC) --------------------------------------------------------- */

int llmux_usage_today(void);
/* The first day of the month that holds `day`, and of the next month. */
int llmux_usage_month_start(int day);
int llmux_usage_next_month_start(int day);
/* "2024-05-01" into out[11]. */
void llmux_usage_day_str(int day, char out[11]);
/* "2024-05" into out[8]. */
void llmux_usage_month_str(int day, char out[8]);
/* "YYYY-MM-DD" -> day; LLMUX_EINVAL on anything else. */
int llmux_usage_parse_day(const char *s, int *day);

#ifdef __cplusplus
}
#endif
#endif /* LLMUX_USAGE_H */
