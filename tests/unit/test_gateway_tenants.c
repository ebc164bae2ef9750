/* Tenants: keys and their lookup, the [tenant] section's checks, "may use",
 * tenant limits, usage aggregation and its SQLite round trip, and ARES's
 * request and answer shapes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "gateway/agent.h"
#include "config/config.h"
#include "config/registry.h"
#include "tenant/tenant.h"
#include "tenant/usage.h"
#include "base/util.h"

static char tmpdir[256];

static int make_tmpdir(void **state) {
  (void)state;
  snprintf(tmpdir, sizeof tmpdir, "/tmp/llmux-tenant-XXXXXX");
  assert_non_null(mkdtemp(tmpdir));
  return 0;
}

static int remove_tmpdir(void **state) {
  char cmd[300];
  (void)state;
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  assert_int_equal(system(cmd), 0);
  return 0;
}

static const char *write_file(const char *name, const char *text) {
  static char path[400];
  FILE *fp;
  snprintf(path, sizeof path, "%s/%s", tmpdir, name);
  fp = fopen(path, "w");
  assert_non_null(fp);
  fputs(text, fp);
  fclose(fp);
  return path;
}

static void hash_hex(const char *key, char hex[65]) {
  unsigned char h[LLMUX_KEY_HASH_LEN];
  llmux_key_sha256(key, strlen(key), h);
  llmux_key_hex(h, hex);
}

#define CATALOG                                                   \
  "[server]\nlisten = 127.0.0.1:0\n"                              \
  "[model llama]\ntier = 3\naliases = gpt-4\nprice_in = 1\nprice_out = 2\n" \
  "[model qwen]\ntier = 2\n"                                      \
  "[profile fast]\nmodels = qwen\n"                               \
  "[profile powerful]\nmodels = llama\n"                          \
  "[agent product]\nprofile = fast\n"                             \
  "[agent analyst]\nprofile = powerful\n"

static llmux_config_t *load_text(const char *text, llmux_diag_t *d) {
  llmux_config_t *cfg = NULL;
  llmux_config_load(write_file("llmux.ini", text), &cfg, d);
  return cfg;
}

static int has_diag(const llmux_diag_t *d, int line, const char *text) {
  size_t i;
  for (i = 0; i < d->len; i++) {
    if (d->items[i].line == line && strstr(d->items[i].message, text)) return 1;
  }
  llmux_diag_print(d, stderr);
  return 0;
}

/* ---- keys ----------------------------------------------------------------- */

static void sha256_matches_the_standard_vector(void **state) {
  char hex[65];
  (void)state;
  hash_hex("abc", hex);
  assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static void a_new_key_is_llmux_prefixed_base64url_and_fresh(void **state) {
  char a[LLMUX_KEY_STRLEN], b[LLMUX_KEY_STRLEN];
  size_t i;
  (void)state;
  assert_int_equal(llmux_key_generate(a), 0);
  assert_int_equal(llmux_key_generate(b), 0);
  assert_int_equal(strlen(a), 6 + 43);
  assert_memory_equal(a, "llmux-", 6);
  for (i = 6; a[i]; i++)
    assert_non_null(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", a[i]));
  assert_string_not_equal(a, b);
}

static void keys_are_found_by_hash_and_rotated_keys_both_work(void **state) {
  char h1[65], h2[65], h3[65], text[2048];
  llmux_diag_t d = {0};
  llmux_config_t *cfg;
  llmux_tenants_t ts;
  (void)state;
  hash_hex("llmux-one", h1);
  hash_hex("llmux-two", h2);
  hash_hex("llmux-three", h3);
  snprintf(text, sizeof text, CATALOG "[tenant acme]\nkey_sha256 = %s\nkey_sha256 = %s\n"
           "[tenant beta]\nkey_sha256 = %s\n", h1, h2, h3);
  cfg = load_text(text, &d);
  assert_non_null(cfg);
  assert_int_equal(llmux_tenants_init(&ts, cfg, NULL), 0);
  assert_int_equal(ts.n, 2);
  assert_string_equal(llmux_tenants_auth(&ts, "llmux-one", 9)->conf->name, "acme");
  assert_string_equal(llmux_tenants_auth(&ts, "llmux-two", 9)->conf->name, "acme");
  assert_string_equal(llmux_tenants_auth(&ts, "llmux-three", 11)->conf->name, "beta");
  assert_null(llmux_tenants_auth(&ts, "llmux-four", 10));
  assert_null(llmux_tenants_auth(&ts, "llmux-on", 8));
  assert_null(llmux_tenants_auth(&ts, "", 0));
  /* Keys that authenticated are remembered; what is remembered still
   * matches only the whole key, and a key of its own each. */
  assert_non_null(ts.seen);
  assert_true(ts.nseen >= 3);
  assert_string_equal(llmux_tenants_auth(&ts, "llmux-one", 9)->conf->name, "acme");
  assert_string_equal(llmux_tenants_auth(&ts, "llmux-three", 11)->conf->name, "beta");
  assert_null(llmux_tenants_auth(&ts, "llmux-onex", 10));
  assert_null(llmux_tenants_auth(&ts, "llmux-on", 8));
  assert_null(llmux_tenants_auth(&ts, "llmux-one\0", 10));
  assert_null(llmux_tenants_auth(&ts, "llmux-thre", 10));
  llmux_tenants_free(&ts);
  llmux_config_free(cfg);
  llmux_diag_free(&d);
}

/* ---- config ----------------------------------------------------------------- */

static void a_literal_key_in_the_config_is_an_error_that_does_not_echo_it(void **state) {
  llmux_diag_t d = {0};
  size_t i;
  (void)state;
  assert_null(load_text(CATALOG "[tenant acme]\nkey_sha256 = llmux-secretsecret\n"
                                "key = llmux-othersecret\nkey_sha256 = abcd\n", &d));
  assert_true(has_diag(&d, 19, "holds a key, not its SHA-256"));
  assert_true(has_diag(&d, 20, "would put a tenant's key in a config file"));
  assert_true(has_diag(&d, 21, "64 hex digits"));
  for (i = 0; i < d.len; i++) assert_null(strstr(d.items[i].message, "secret"));
  llmux_diag_free(&d);
}

static void tenant_references_are_checked_with_file_and_line(void **state) {
  char h[65], text[2048];
  llmux_diag_t d = {0};
  (void)state;
  hash_hex("llmux-k", h);
  snprintf(text, sizeof text, CATALOG
           "[tenant acme]\nkey_sha256 = %s\nmodels = llama, nosuch\nagent.nobody = fast\n"
           "agent.product = huge\nrequests_per_day = 5\n"
           "[tenant beta]\nkey_sha256 = %s\n", h, h);
  assert_null(load_text(text, &d));
  assert_true(has_diag(&d, 20, "unknown model 'nosuch'"));
  assert_true(has_diag(&d, 21, "unknown agent 'nobody'"));
  assert_true(has_diag(&d, 22, "unknown profile 'huge'"));
  assert_true(has_diag(&d, 23, "unknown key 'requests_per_day'"));
  assert_true(has_diag(&d, 25, "already given to tenant 'acme'"));
  llmux_diag_free(&d);
}

static void may_use_follows_listed_names_and_their_targets(void **state) {
  char h[65], text[2048];
  llmux_diag_t d = {0};
  llmux_config_t *cfg;
  llmux_tenants_t ts;
  const llmux_tenant_t *t;
  (void)state;
  hash_hex("llmux-k", h);
  snprintf(text, sizeof text, CATALOG "[tenant acme]\nkey_sha256 = %s\nmodels = gpt-4, fast\n"
           "agent.analyst = fast\n", h);
  cfg = load_text(text, &d);
  assert_non_null(cfg);
  assert_int_equal(llmux_tenants_init(&ts, cfg, NULL), 0);
  t = &ts.items[0];
  assert_true(llmux_tenant_may_use_name(t, cfg, "gpt-4"));
  assert_true(llmux_tenant_may_use_name(t, cfg, "llama"));   /* gpt-4's target */
  assert_true(llmux_tenant_may_use_name(t, cfg, "product")); /* through profile fast */
  assert_false(llmux_tenant_may_use_name(t, cfg, "powerful"));
  assert_false(llmux_tenant_may_use_name(t, cfg, "qwen"));
  /* analyst goes through 'fast' for this tenant: allowed. */
  assert_ptr_equal(llmux_tenant_agent_profile(t->conf, cfg->agents[1]), cfg->profiles[0]);
  assert_true(llmux_tenant_may_use_agent(t, cfg, cfg->agents[1]));
  llmux_tenants_free(&ts);
  llmux_config_free(cfg);
  llmux_diag_free(&d);
}

/* ---- usage ----------------------------------------------------------------- */

static void usage_adds_up_per_day_and_month(void **state) {
  llmux_usage_store_t *s;
  llmux_usage_counts_t day, month;
  char err[200];
  int d0;
  (void)state;
  assert_int_equal(llmux_usage_parse_day("2024-05-10", &d0), 0);
  assert_int_equal(llmux_usage_open(NULL, NULL, d0, &s, err, sizeof err), 0);
  llmux_usage_add(s, "acme", "llama", d0 - 2, 10, 5, 0.5);
  llmux_usage_add(s, "acme", "llama", d0, 100, 20, 1.0);
  llmux_usage_add(s, "acme", "qwen", d0, 1, 2, 0.25);
  llmux_usage_add(s, "beta", "qwen", d0, 7, 7, 7);
  llmux_usage_tenant_totals(s, "acme", d0, &day, &month);
  assert_int_equal(day.requests, 2);
  assert_int_equal(day.input_tokens, 101);
  assert_int_equal(day.output_tokens, 22);
  assert_int_equal(month.requests, 3);
  assert_true(month.cost_usd > 1.749 && month.cost_usd < 1.751);
  /* A new day starts from zero; the month goes on. */
  llmux_usage_add(s, "acme", "llama", d0 + 1, 1, 1, 0);
  llmux_usage_tenant_totals(s, "acme", d0 + 1, &day, &month);
  assert_int_equal(day.requests, 1);
  assert_int_equal(month.requests, 4);
  /* June: both reset. */
  llmux_usage_tenant_totals(s, "acme", llmux_usage_next_month_start(d0), &day, &month);
  assert_int_equal(day.requests + month.requests, 0);
  llmux_usage_close(s, NULL, NULL);
}

static void days_print_and_parse_in_utc(void **state) {
  char day[11], mon[8];
  int d;
  (void)state;
  assert_int_equal(llmux_usage_parse_day("2024-02-29", &d), 0);
  llmux_usage_day_str(d, day);
  llmux_usage_month_str(d, mon);
  assert_string_equal(day, "2024-02-29");
  assert_string_equal(mon, "2024-02");
  llmux_usage_day_str(llmux_usage_month_start(d), day);
  assert_string_equal(day, "2024-02-01");
  llmux_usage_day_str(llmux_usage_next_month_start(d), day);
  assert_string_equal(day, "2024-03-01");
  assert_int_equal(llmux_usage_parse_day("1970-01-01", &d), 0);
  assert_int_equal(d, 0);
  assert_int_equal(llmux_usage_parse_day("2024-5-1", &d), LLMUX_EINVAL);
}

static void usage_survives_a_reopen_of_the_database(void **state) {
  char path[400], err[200];
  llmux_usage_store_t *s;
  llmux_usage_counts_t day, month;
  int d0;
  (void)state;
  snprintf(path, sizeof path, "%s/usage.db", tmpdir);
  assert_int_equal(llmux_usage_parse_day("2024-05-10", &d0), 0);
  assert_int_equal(llmux_usage_open(NULL, path, d0, &s, err, sizeof err), 0);
  llmux_usage_add(s, "acme", "llama", d0, 100, 20, 1.0);
  llmux_usage_add(s, "acme", "llama", d0, 100, 20, 1.0);
  llmux_usage_add(s, "acme", "llama", d0 - 20, 5, 5, 5); /* April: not loaded back */
  assert_int_equal(llmux_usage_flush(s), 0);
  llmux_usage_add(s, "acme", "qwen", d0, 1, 1, 0); /* written at close */
  llmux_usage_close(s, NULL, NULL);

  assert_int_equal(llmux_usage_open(NULL, path, d0, &s, err, sizeof err), 0);
  llmux_usage_tenant_totals(s, "acme", d0, &day, &month);
  assert_int_equal(day.requests, 3);
  assert_int_equal(day.input_tokens, 201);
  assert_int_equal(month.requests, 3);
  assert_true(month.cost_usd > 1.999 && month.cost_usd < 2.001);
  /* Counting goes on from the loaded values, and is written as a total. */
  llmux_usage_add(s, "acme", "llama", d0, 1, 1, 0);
  llmux_usage_close(s, NULL, NULL);
  assert_int_equal(llmux_usage_open(NULL, path, d0, &s, err, sizeof err), 0);
  llmux_usage_tenant_totals(s, "acme", d0, &day, &month);
  assert_int_equal(day.requests, 4);
  llmux_usage_close(s, NULL, NULL);
}

static void closed_cb(llmux_usage_store_t *s, void *arg) {
  (void)s;
  (*(int *)arg)++;
}

static void the_writer_thread_persists_and_close_flushes(void **state) {
  char path[400], err[200];
  llmux_usage_store_t *s;
  llmux_usage_counts_t day, month;
  uv_loop_t loop;
  int today = llmux_usage_today(), closed = 0;
  (void)state;
  snprintf(path, sizeof path, "%s/threaded.db", tmpdir);
  assert_int_equal(uv_loop_init(&loop), 0);
  assert_int_equal(llmux_usage_open(&loop, path, today, &s, err, sizeof err), 0);
  llmux_usage_add(s, "acme", "llama", today, 3, 4, 0);
  assert_int_equal(llmux_usage_flush(s), 0); /* through the thread */
  llmux_usage_add(s, "acme", "llama", today, 3, 4, 0);
  llmux_usage_close(s, closed_cb, &closed);
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(closed, 1);
  assert_int_equal(uv_loop_close(&loop), 0);
  assert_int_equal(llmux_usage_open(NULL, path, today, &s, err, sizeof err), 0);
  llmux_usage_tenant_totals(s, "acme", today, &day, &month);
  assert_int_equal(day.requests, 2);
  assert_int_equal(day.output_tokens, 8);
  llmux_usage_close(s, NULL, NULL);
}

/* ---- tenant limits ---------------------------------------------------------- */

static void tenant_limits_name_the_limit_that_refused(void **state) {
  char h[65], text[2048], err[200];
  llmux_diag_t d = {0};
  llmux_config_t *cfg;
  llmux_tenants_t ts;
  llmux_usage_store_t *u;
  llmux_rl_reservation_t r;
  llmux_tenant_verdict_t v;
  int64_t wall = 1715342400000LL; /* 2024-05-10T12:00:00Z */
  int today = (int)(wall / 86400000);
  (void)state;
  hash_hex("llmux-k", h);
  snprintf(text, sizeof text, CATALOG "[tenant acme]\nkey_sha256 = %s\nrequests_per_minute = 2\n"
           "tokens_per_day = 100\nbudget_usd_per_month = 1\n", h);
  cfg = load_text(text, &d);
  assert_non_null(cfg);
  assert_int_equal(llmux_tenants_init(&ts, cfg, NULL), 0);
  assert_int_equal(llmux_usage_open(NULL, NULL, today, &u, err, sizeof err), 0);
  assert_int_equal(llmux_tenant_admit(&ts, u, &ts.items[0], 10, 1000, wall, &r, &v), 0);
  llmux_rl_commit(&r, 10, 1000);
  assert_int_equal(llmux_tenant_admit(&ts, u, &ts.items[0], 10, 1000, wall, &r, &v), 0);
  llmux_rl_commit(&r, 10, 1000);
  assert_int_equal(llmux_tenant_admit(&ts, u, &ts.items[0], 10, 1000, wall, &r, &v), LLMUX_EAGAIN);
  assert_string_equal(v.limit, "requests_per_minute");
  assert_true(v.retry_after_ms > 0 && v.retry_after_ms <= 61000);
  /* A day's tokens spent: refused until midnight UTC, 12 h away. */
  llmux_usage_add(u, "acme", "llama", today, 90, 10, 0.5);
  assert_int_equal(llmux_tenant_admit(&ts, u, &ts.items[0], 10, 200000, wall, &r, &v), LLMUX_EAGAIN);
  assert_string_equal(v.limit, "tokens_per_day");
  assert_false(v.quota);
  assert_int_equal(v.retry_after_ms, 12 * 3600 * 1000);
  /* The month's budget spent: a quota. */
  llmux_usage_add(u, "acme", "llama", today - 1, 1, 1, 0.5);
  assert_int_equal(llmux_tenant_admit(&ts, u, &ts.items[0], 10, 200000, wall, &r, &v), LLMUX_EAGAIN);
  assert_string_equal(v.limit, "budget_usd_per_month");
  assert_true(v.quota);
  llmux_usage_close(u, NULL, NULL);
  llmux_tenants_free(&ts);
  llmux_config_free(cfg);
  llmux_diag_free(&d);
}

/* ---- ARES shapes ------------------------------------------------------------- */

static void the_agent_request_becomes_an_openai_body_through_the_override(void **state) {
  char h[65], text[2048], msg[256];
  llmux_diag_t d = {0};
  llmux_config_t *cfg;
  llmux_agent_req_t req;
  llmux_buf_t out = {0};
  const char *body = "{\"message\":\"hi\",\"agent_type\":\"product\",\"system\":\"be brief\","
                     "\"history\":[{\"role\":\"user\",\"content\":\"a\"}],\"max_tokens\":5,"
                     "\"stream\":true}";
  (void)state;
  hash_hex("llmux-k", h);
  snprintf(text, sizeof text, CATALOG "[tenant acme]\nkey_sha256 = %s\nagent.product = powerful\n", h);
  cfg = load_text(text, &d);
  assert_non_null(cfg);
  assert_int_equal(llmux_agent_build_request(cfg, cfg->tenants[0], body, strlen(body), &req,
                                             &out, msg, sizeof msg), 0);
  assert_string_equal(req.profile->name, "powerful");
  assert_true(req.stream);
  assert_string_equal(out.base,
                      "{\"model\":\"powerful\",\"messages\":[{\"role\":\"system\",\"content\":"
                      "\"be brief\"},{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\","
                      "\"content\":\"hi\"}],\"max_tokens\":5,\"stream\":true,\"stream_options\":"
                      "{\"include_usage\":true}}");
  out.len = 0;
  assert_int_equal(llmux_agent_build_request(cfg, NULL, body, strlen(body), &req, &out, msg,
                                             sizeof msg), 0);
  assert_string_equal(req.profile->name, "fast");
  assert_int_equal(llmux_agent_build_request(cfg, NULL, "{\"message\":\"x\",\"agent_type\":\"no\"}",
                                             33, &req, &out, msg, sizeof msg), LLMUX_ENOTFOUND);
  assert_int_equal(llmux_agent_build_request(cfg, NULL, "{\"agent_type\":\"product\"}", 24,
                                             &req, &out, msg, sizeof msg), LLMUX_EINVAL);
  assert_non_null(strstr(msg, "'message'"));
  llmux_buf_free(&out);
  llmux_config_free(cfg);
  llmux_diag_free(&d);
}

static void answers_and_stream_events_take_ares_shapes(void **state) {
  llmux_agent_info_t info = {"product", "fast", "qwen", "groq"};
  llmux_agent_stream_t st;
  llmux_buf_t out = {0};
  const char *answer = "{\"id\":\"c1\",\"choices\":[{\"message\":{\"content\":\"hello\"},"
                       "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,"
                       "\"completion_tokens\":1}}";
  const char *sse = "data: {\"id\":\"c2\",\"choices\":[{\"delta\":{\"content\":\"he\"}}]}\n\n"
                    "data: {\"id\":\"c2\",\"choices\":[{\"delta\":{\"content\":\"llo\"},"
                    "\"finish_reason\":\"stop\"}]}\r\n\r\n"
                    "data: {\"id\":\"c2\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,"
                    "\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
  size_t i;
  (void)state;
  assert_int_equal(llmux_agent_answer(answer, strlen(answer), &info, &out), 0);
  assert_string_equal(out.base,
                      "{\"id\":\"c1\",\"agent_type\":\"product\",\"tier\":\"fast\",\"model\":"
                      "\"qwen\",\"provider\":\"groq\",\"message\":\"hello\",\"finish_reason\":"
                      "\"stop\",\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,"
                      "\"total_tokens\":4}}");
  out.len = 0;
  memset(&st, 0, sizeof st);
  /* Byte by byte: events may be split anywhere. */
  for (i = 0; sse[i]; i++) assert_int_equal(llmux_agent_stream_feed(&st, sse + i, 1, &out), 0);
  assert_int_equal(llmux_agent_stream_end(&st, &info, &out), 0);
  assert_string_equal(out.base,
                      "data: {\"type\":\"delta\",\"content\":\"he\"}\n\n"
                      "data: {\"type\":\"delta\",\"content\":\"llo\"}\n\n"
                      "data: {\"type\":\"done\",\"id\":\"c2\",\"agent_type\":\"product\","
                      "\"tier\":\"fast\",\"model\":\"qwen\",\"provider\":\"groq\",\"message\":"
                      "\"hello\",\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":3,"
                      "\"completion_tokens\":2,\"total_tokens\":5}}\n\n");
  llmux_agent_stream_free(&st);
  out.len = 0;
  assert_int_equal(llmux_agent_error_json(&out, "Rate limit exceeded for provider 'groq'",
                                          llmux_agent_error_code(429, "RATE_LIMIT_EXCEEDED"), 60), 0);
  assert_string_equal(out.base, "{\"error\":\"Rate limit exceeded for provider 'groq'\","
                                "\"code\":\"RATE_LIMIT_EXCEEDED\",\"retry_after\":60}");
  assert_string_equal(llmux_agent_error_code(503, "no_provider_available"), "UPSTREAM_UNAVAILABLE");
  assert_string_equal(llmux_agent_error_code(400, "invalid_json"), "INVALID_REQUEST");
  llmux_buf_free(&out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(sha256_matches_the_standard_vector),
    cmocka_unit_test(a_new_key_is_llmux_prefixed_base64url_and_fresh),
    cmocka_unit_test(keys_are_found_by_hash_and_rotated_keys_both_work),
    cmocka_unit_test(a_literal_key_in_the_config_is_an_error_that_does_not_echo_it),
    cmocka_unit_test(tenant_references_are_checked_with_file_and_line),
    cmocka_unit_test(may_use_follows_listed_names_and_their_targets),
    cmocka_unit_test(usage_adds_up_per_day_and_month),
    cmocka_unit_test(days_print_and_parse_in_utc),
    cmocka_unit_test(usage_survives_a_reopen_of_the_database),
    cmocka_unit_test(the_writer_thread_persists_and_close_flushes),
    cmocka_unit_test(tenant_limits_name_the_limit_that_refused),
    cmocka_unit_test(the_agent_request_becomes_an_openai_body_through_the_override),
    cmocka_unit_test(answers_and_stream_events_take_ares_shapes),
  };
  return cmocka_run_group_tests(tests, make_tmpdir, remove_tmpdir);
}
