/* The usage store's additions for shared state: setting a row to values
 * learnt elsewhere, and the switch that stops a store from writing its
 * database (a fleet process that is not the elected writer). Stores here
 * have no loop: nothing is written until llmux_usage_flush or close. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tenant/usage.h"

#define DAY 19800 /* 2024-03-18 */

typedef struct {
  char path[64];
} db_t;

static void db_make(db_t *d) {
  int fd;
  snprintf(d->path, sizeof(d->path), "/tmp/llmux-usage-XXXXXX");
  fd = mkstemp(d->path);
  assert_true(fd >= 0);
  close(fd);
  unlink(d->path); /* the store creates it */
}

static void db_remove(db_t *d) {
  char p[96];
  unlink(d->path);
  snprintf(p, sizeof(p), "%s-wal", d->path);
  unlink(p);
  snprintf(p, sizeof(p), "%s-shm", d->path);
  unlink(p);
}

/* requests of a row in the file, -1 when it has none. */
static long long db_requests(const db_t *d, const char *tenant) {
  sqlite3 *db;
  sqlite3_stmt *st;
  long long v = -1;
  assert_int_equal(sqlite3_open(d->path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_prepare_v2(db, "SELECT requests FROM usage WHERE tenant = ?1", -1,
                                      &st, NULL),
                   SQLITE_OK);
  sqlite3_bind_text(st, 1, tenant, -1, SQLITE_STATIC);
  if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return v;
}

static void db_exec(const db_t *d, const char *sql) {
  sqlite3 *db;
  assert_int_equal(sqlite3_open(d->path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
}

static llmux_usage_counts_t counts(uint64_t req, uint64_t in, uint64_t out, double cost) {
  llmux_usage_counts_t c = {req, in, out, cost};
  return c;
}

static void set_moves_the_tenants_totals_by_the_difference(void **state) {
  llmux_usage_store_t *s;
  llmux_usage_counts_t today, month, c;
  char err[256];
  int first = llmux_usage_month_start(DAY);
  (void)state;
  assert_int_equal(llmux_usage_open(NULL, NULL, DAY, &s, err, sizeof(err)), 0);
  llmux_usage_add(s, "acme", "m", DAY, 10, 5, 0.5);
  llmux_usage_add(s, "acme", "m", DAY, 10, 5, 0.5);
  c = counts(7, 70, 35, 3.5); /* the fleet counted more */
  llmux_usage_set(s, "acme", "m", DAY, &c);
  llmux_usage_tenant_totals(s, "acme", DAY, &today, &month);
  assert_int_equal(today.requests, 7);
  assert_int_equal(today.input_tokens + today.output_tokens, 105);
  assert_int_equal(month.requests, 7);
  assert_true(month.cost_usd > 3.49 && month.cost_usd < 3.51);
  c = counts(3, 30, 15, 1.5); /* lower: e.g. a process's own adds not yet in Redis */
  llmux_usage_set(s, "acme", "m", DAY, &c);
  llmux_usage_tenant_totals(s, "acme", DAY, &today, &month);
  assert_int_equal(today.requests, 3);
  assert_int_equal(today.input_tokens, 30);
  assert_int_equal(month.output_tokens, 15);
  /* An earlier day of the month counts for the month only. */
  c = counts(4, 1, 1, 0);
  llmux_usage_set(s, "acme", "other", first, &c);
  llmux_usage_tenant_totals(s, "acme", DAY, &today, &month);
  assert_int_equal(today.requests, 3);
  assert_int_equal(month.requests, 7);
  /* A row never seen, for a tenant never seen. */
  c = counts(2, 2, 2, 0.25);
  llmux_usage_set(s, "beta", "m", DAY, &c);
  llmux_usage_tenant_totals(s, "beta", DAY, &today, &month);
  assert_int_equal(today.requests, 2);
  assert_true(month.cost_usd > 0.24 && month.cost_usd < 0.26);
  llmux_usage_close(s, NULL, NULL);
}

static void a_store_that_does_not_persist_writes_nothing_until_turned_on(void **state) {
  llmux_usage_store_t *s;
  llmux_usage_counts_t c = counts(5, 1, 1, 0);
  db_t d;
  char err[256];
  (void)state;
  db_make(&d);
  assert_int_equal(llmux_usage_open(NULL, d.path, DAY, &s, err, sizeof(err)), 0);
  llmux_usage_set_persist(s, 0);
  llmux_usage_add(s, "acme", "m", DAY, 1, 1, 0);
  llmux_usage_set(s, "beta", "m", DAY, &c);
  assert_int_equal(llmux_usage_flush(s), 0);
  assert_int_equal(db_requests(&d, "acme"), -1);
  assert_int_equal(db_requests(&d, "beta"), -1);
  /* Elected: everything held goes, set rows included. */
  llmux_usage_set_persist(s, 1);
  assert_int_equal(llmux_usage_flush(s), 0);
  assert_int_equal(db_requests(&d, "acme"), 1);
  assert_int_equal(db_requests(&d, "beta"), 5);
  llmux_usage_close(s, NULL, NULL);
  db_remove(&d);
}

static void close_without_persist_leaves_the_database_alone(void **state) {
  llmux_usage_store_t *s;
  db_t d;
  char err[256];
  (void)state;
  db_make(&d);
  assert_int_equal(llmux_usage_open(NULL, d.path, DAY, &s, err, sizeof(err)), 0);
  llmux_usage_add(s, "acme", "m", DAY, 1, 1, 0);
  assert_int_equal(llmux_usage_flush(s), 0);
  llmux_usage_add(s, "acme", "m", DAY, 1, 1, 0);
  llmux_usage_set_persist(s, 0); /* e.g. lost the writer lease */
  llmux_usage_close(s, NULL, NULL);
  assert_int_equal(db_requests(&d, "acme"), 1);
  db_remove(&d);
}

static void setting_the_values_a_row_holds_marks_nothing(void **state) {
  llmux_usage_store_t *s;
  llmux_usage_counts_t c = counts(2, 20, 10, 1.0);
  db_t d;
  char err[256];
  (void)state;
  db_make(&d);
  assert_int_equal(llmux_usage_open(NULL, d.path, DAY, &s, err, sizeof(err)), 0);
  llmux_usage_set(s, "acme", "m", DAY, &c);
  assert_int_equal(llmux_usage_flush(s), 0);
  assert_int_equal(db_requests(&d, "acme"), 2);
  db_exec(&d, "UPDATE usage SET requests = 99"); /* tells a write from none */
  llmux_usage_set(s, "acme", "m", DAY, &c);
  assert_int_equal(llmux_usage_flush(s), 0);
  assert_int_equal(db_requests(&d, "acme"), 99);
  c.requests = 3;
  llmux_usage_set(s, "acme", "m", DAY, &c);
  assert_int_equal(llmux_usage_flush(s), 0);
  assert_int_equal(db_requests(&d, "acme"), 3);
  llmux_usage_close(s, NULL, NULL);
  db_remove(&d);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(set_moves_the_tenants_totals_by_the_difference),
    cmocka_unit_test(a_store_that_does_not_persist_writes_nothing_until_turned_on),
    cmocka_unit_test(close_without_persist_leaves_the_database_alone),
    cmocka_unit_test(setting_the_values_a_row_holds_marks_nothing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
