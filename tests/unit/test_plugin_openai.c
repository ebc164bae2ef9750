/* The openai plugin, loaded from build/plugins/openai.so through the host's
 * own loader and host table: the request goes out with only the model
 * spliced in, answers come back byte for byte (whole or one byte at a
 * time), and the usage handed to the host is a token count or unknown,
 * whatever numbers the provider sends. Data files live in
 * tests/data/openai/ (see its README). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "plugin/plugin.h"
#include "test_plugin_support.h"
#include "base/util.h"

#define DATA LLMUX_TEST_DATA "/openai/"
#define PROVIDER_MODEL "llama-3.3-70b-versatile"
#define BAD_USAGE_LOG "not a count of 0 to 1000000000 tokens"

typedef struct {
  llmux_plugins_t set;
  const llmux_provider_t *vt;
  void *inst;
} fixture_t;

static const char *conf_get(const llmux_provider_config_t *cfg, const char *key) {
  const llmux_config_key_t *k;
  const llmux_provider_t *vt = cfg->reserved[0];
  for (k = vt->config; k && k->name; k++)
    if (strcmp(k->name, key) == 0) return k->default_value;
  return NULL;
}

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof *f);
  llmux_provider_config_t cfg;
  char err[512] = "";
  llmux_plugin_t *pl;
  llmux_plugins_init(&f->set, LLMUX_BUILD_DIR "/plugins");
  pl = llmux_plugins_get(&f->set, "openai", err, sizeof err);
  if (pl == NULL) {
    fprintf(stderr, "cannot load the openai plugin (build target plugin_openai): %s\n", err);
    llmux_plugins_free(&f->set);
    free(f);
    return -1;
  }
  f->vt = pl->vt;
  memset(&cfg, 0, sizeof cfg);
  cfg.size = sizeof cfg;
  cfg.name = "groq";
  cfg.base_url = "https://api.groq.com/openai/v1";
  cfg.base_path = "/openai/v1";
  cfg.api_key = "gsk_test_key";
  cfg.get = conf_get;
  cfg.reserved[0] = (void *)f->vt;
  if (f->vt->create(&cfg, &f->inst, err, sizeof err) != 0) return -1;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  f->vt->destroy(f->inst);
  llmux_plugins_free(&f->set);
  free(f);
  return 0;
}

/* ---- one request through the plugin ---- */

typedef struct {
  llmux_host_txn_t ht;
  llmux_buf_t req; /* the client's body */
  llmux_buf_t out; /* what the client got */
  llmux_header_t resp_headers[2];
} run_t;

static int capture(void *owner, const char *data, size_t len) {
  return llmux_buf_append(&((run_t *)owner)->out, data, len);
}

static void read_file(const char *name, llmux_buf_t *b) {
  char path[512];
  char chunk[4096];
  size_t n;
  FILE *fp;
  snprintf(path, sizeof path, DATA "%s", name);
  fp = fopen(path, "rb");
  if (fp == NULL) fail_msg("cannot open %s", path);
  while ((n = fread(chunk, 1, sizeof chunk, fp)) > 0)
    assert_int_equal(llmux_buf_append(b, chunk, n), 0);
  fclose(fp);
}

/* A translated chat request, stream or not, ready for its answer. */
static void run_start(fixture_t *f, run_t *r, int stream) {
  static const char model[] = "\"llama-3.3-70b\"";
  const char *body = stream ? "{\"model\":\"llama-3.3-70b\",\"stream\":true,\"messages\":[]}"
                            : "{\"model\":\"llama-3.3-70b\",\"messages\":[]}";
  memset(r, 0, sizeof *r);
  assert_int_equal(llmux_buf_appends(&r->req, body), 0);
  r->ht.owner = r;
  r->ht.emit = capture;
  r->ht.txn.size = sizeof r->ht.txn;
  r->ht.txn.endpoint = LLMUX_ENDPOINT_CHAT;
  r->ht.txn.body = (llmux_str_t){r->req.base, r->req.len};
  r->ht.txn.model_value = (llmux_str_t){strstr(r->req.base, model), sizeof model - 1};
  r->ht.txn.stream = stream;
  r->ht.txn.canonical_model = "llama-3.3-70b";
  r->ht.txn.provider_model = PROVIDER_MODEL;
  llmux_host_txn_clear_out(&r->ht);
  assert_int_equal(f->vt->translate_request(f->inst, &r->ht.txn), 0);
  r->ht.txn.status = 200;
}

static void run_end(fixture_t *f, run_t *r) {
  f->vt->txn_free(f->inst, &r->ht.txn);
  assert_null(r->ht.txn.data);
  llmux_host_txn_free(&r->ht);
  llmux_buf_free(&r->req);
  llmux_buf_free(&r->out);
}

/* Feeds body[0..len) in pieces of `step` bytes (0: all at once), then eof. */
static void feed(fixture_t *f, run_t *r, const char *body, size_t len, size_t step) {
  size_t off = 0;
  while (off < len) {
    size_t n = step == 0 || len - off < step ? len - off : step;
    assert_int_equal(f->vt->parse_response(f->inst, &r->ht.txn, body + off, n, 0), 0);
    off += n;
  }
  assert_int_equal(f->vt->parse_response(f->inst, &r->ht.txn, NULL, 0, 1), 0);
}

static int contains(const llmux_buf_t *b, const char *s) {
  size_t n = strlen(s), i;
  for (i = 0; b->base != NULL && i + n <= b->len; i++)
    if (memcmp(b->base + i, s, n) == 0) return 1;
  return 0;
}

/* ---- requests ---- */

static void the_provider_model_is_spliced_in_and_the_key_sent(void **state) {
  fixture_t *f = *state;
  llmux_buf_t sent = {0};
  run_t r;
  unsigned i;
  run_start(f, &r, 0);
  assert_string_equal(r.ht.txn.path.base, "/chat/completions");
  assert_true(contains(&r.ht.txn.headers, "Authorization: Bearer gsk_test_key\r\n"));
  for (i = 0; i < r.ht.txn.nbody_parts; i++)
    llmux_buf_append(&sent, r.ht.txn.body_parts[i].base, r.ht.txn.body_parts[i].len);
  assert_int_equal(sent.len, strlen("{\"model\":\"" PROVIDER_MODEL "\",\"messages\":[]}"));
  assert_memory_equal(sent.base, "{\"model\":\"" PROVIDER_MODEL "\",\"messages\":[]}", sent.len);
  llmux_buf_free(&sent);
  run_end(f, &r);
}

/* Issue 16: a passthrough provider's own list, GET {base_url}/models. */
static void models_are_listed_from_get_models(void **state) {
  fixture_t *f = *state;
  llmux_host_txn_t ht;
  llmux_buf_t names = {0};
  static const char body[] = "{\"object\":\"list\",\"data\":[{\"id\":\"anthropic/claude-3-opus\"},"
                             "{\"id\":\"google/gemini-pro\",\"name\":\"Gemini\"},{\"no\":1}]}";
  static const char want[] = "anthropic/claude-3-opus\0google/gemini-pro";
  memset(&ht, 0, sizeof ht);
  assert_int_equal(f->vt->models_request(f->inst, &ht.txn), 0);
  assert_string_equal(ht.txn.method, "GET");
  assert_memory_equal(ht.txn.path.base, "/models", 7);
  assert_int_equal(ht.txn.path.len, 7);
  assert_true(contains(&ht.txn.headers, "Authorization: Bearer gsk_test_key\r\n"));
  assert_int_equal(f->vt->parse_models(f->inst, body, strlen(body), &names), 0);
  assert_int_equal(names.len, sizeof want);
  assert_memory_equal(names.base, want, sizeof want);
  assert_int_not_equal(f->vt->parse_models(f->inst, "[]", 2, &names), 0);
  llmux_host_txn_free(&ht);
  llmux_buf_free(&names);
}

/* ---- answers ---- */

static void answer(fixture_t *f, const char *file, int stream, int64_t in, int64_t out,
                   const char *model) {
  static const size_t steps[] = {0, 1, 7};
  llmux_buf_t body = {0};
  size_t i;
  read_file(file, &body);
  for (i = 0; i < sizeof steps / sizeof steps[0]; i++) {
    run_t r;
    run_start(f, &r, stream);
    feed(f, &r, body.base, body.len, steps[i]);
    assert_int_equal(r.out.len, body.len); /* byte for byte */
    assert_memory_equal(r.out.base, body.base, body.len);
    assert_int_equal(r.ht.txn.usage.prompt_tokens, in);
    assert_int_equal(r.ht.txn.usage.completion_tokens, out);
    assert_string_equal(r.ht.txn.served_model.base, model);
    run_end(f, &r);
  }
  llmux_buf_free(&body);
}

static void a_plain_answer_passes_through_and_its_usage_is_read(void **state) {
  answer(*state, "chat.response.json", 0, 19, 10, "gpt-4o-2024-08-06");
}

static void a_stream_passes_through_and_its_last_usage_is_read(void **state) {
  answer(*state, "chat.stream.sse", 1, 9, 2, "gpt-4o-mini-2024-07-18");
}

/* A stream longer than the kept tail, its usage in the last event, read
 * however the reads are cut (the tail is a ring that wraps). An earlier
 * usage-like text is not the answer's: the last one is. */
static void a_long_stream_keeps_its_last_usage_across_reads(void **state) {
  static const size_t steps[] = {0, 1, 7, 333, 4095, 4096, 4097};
  llmux_buf_t body = {0};
  size_t i;
  llmux_buf_appends(&body, "data: {\"id\":\"c\",\"model\":\"m-1\",\"choices\":[],"
                           "\"x\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n");
  for (i = 0; i < 300; i++)
    llmux_buf_appends(&body, "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":"
                             "{\"content\":\"tok\"}}]}\n\n");
  llmux_buf_appends(&body, "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":"
                           "123,\"completion_tokens\":300,\"total_tokens\":423}}\n\ndata: [DONE]\n\n");
  assert_true(body.len > 3 * 4096);
  for (i = 0; i < sizeof steps / sizeof steps[0]; i++) {
    run_t r;
    run_start(*state, &r, 1);
    feed(*state, &r, body.base, body.len, steps[i]);
    assert_int_equal(r.out.len, body.len);
    assert_int_equal(r.ht.txn.usage.prompt_tokens, 123);
    assert_int_equal(r.ht.txn.usage.completion_tokens, 300);
    assert_string_equal(r.ht.txn.served_model.base, "m-1");
    run_end(*state, &r);
  }
  llmux_buf_free(&body);
}

/* The usage the host gets for an answer whose prompt_tokens is `value`
 * (completion_tokens 7), plain and streamed, with what was logged. */
static void usage_of(fixture_t *f, const char *value, int stream, llmux_usage_t *u,
                     char **logged) {
  llmux_buf_t body = {0};
  log_capture_t c;
  run_t r;
  int rc;
  if (stream)
    llmux_buf_printf(&body, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":"
                            "[],\"usage\":{\"prompt_tokens\":%s,\"completion_tokens\":7}}\n\n"
                            "data: [DONE]\n\n", value);
  else
    llmux_buf_printf(&body, "{\"id\":\"c\",\"object\":\"chat.completion\",\"choices\":[],"
                            "\"usage\":{\"prompt_tokens\":%s,\"completion_tokens\":7}}", value);
  run_start(f, &r, stream);
  log_capture_start(&c); /* no assertion until it ends */
  rc = f->vt->parse_response(f->inst, &r.ht.txn, body.base, body.len, 0);
  rc |= f->vt->parse_response(f->inst, &r.ht.txn, NULL, 0, 1);
  *logged = log_capture_end(&c);
  assert_int_equal(rc, 0);
  *u = r.ht.txn.usage;
  run_end(f, &r);
  llmux_buf_free(&body);
}

static void usage_that_is_not_a_token_count_is_unknown_and_logged_once(void **state) {
  static const char *const bad[] = {
    "99999999999999999999999", "9223372036854775808", "9223372036854775807",
    "18446744073709551616", "1000000001", "-1", "1e30", "12.5", "\"12\"", "true", "[]",
  };
  size_t i;
  int stream;
  for (stream = 0; stream <= 1; stream++) {
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      llmux_usage_t u;
      char *logged;
      usage_of(*state, bad[i], stream, &u, &logged);
      if (u.prompt_tokens != -1)
        fail_msg("prompt_tokens %s (stream %d) became %lld", bad[i], stream,
                 (long long)u.prompt_tokens);
      assert_int_equal(u.completion_tokens, 7);
      if (occurrences(logged, BAD_USAGE_LOG) != 1)
        fail_msg("prompt_tokens %s (stream %d) logged:\n%s", bad[i], stream, logged);
      assert_non_null(strstr(logged, "provider 'groq'"));
      assert_null(strstr(logged, "gsk_test_key"));
      free(logged);
    }
  }
}

static void usage_up_to_a_billion_tokens_is_believed_and_null_is_unknown(void **state) {
  llmux_usage_t u;
  char *logged;
  usage_of(*state, "1000000000", 0, &u, &logged);
  assert_int_equal(u.prompt_tokens, 1000000000);
  assert_string_equal(logged, "");
  free(logged);
  usage_of(*state, "0", 1, &u, &logged);
  assert_int_equal(u.prompt_tokens, 0);
  free(logged);
  usage_of(*state, "null", 0, &u, &logged);
  assert_int_equal(u.prompt_tokens, -1);
  assert_string_equal(logged, ""); /* absent, not wrong */
  free(logged);
}

static void an_answer_without_usage_leaves_it_unknown(void **state) {
  fixture_t *f = *state;
  static const char body[] = "{\"id\":\"c\",\"object\":\"chat.completion\",\"choices\":[]}";
  run_t r;
  run_start(f, &r, 0);
  feed(f, &r, body, sizeof body - 1, 0);
  assert_int_equal(r.ht.txn.usage.prompt_tokens, -1);
  assert_int_equal(r.ht.txn.usage.completion_tokens, -1);
  run_end(f, &r);
}

static void a_new_attempt_reads_only_its_own_answer(void **state) {
  fixture_t *f = *state;
  static const char garbage[] = "<html>\"model\":\"proxy\",\"prompt_tokens\":5,";
  static const char body[] = "{\"model\":\"m2\",\"usage\":{\"completion_tokens\":3}}";
  run_t r;
  run_start(f, &r, 0);
  assert_int_equal(f->vt->parse_response(f->inst, &r.ht.txn, garbage, sizeof garbage - 1, 1), 0);
  /* the host fails over and translates again, for another provider */
  llmux_host_txn_clear_out(&r.ht);
  r.ht.txn.attempt = 1;
  assert_int_equal(f->vt->translate_request(f->inst, &r.ht.txn), 0);
  feed(f, &r, body, sizeof body - 1, 1);
  assert_string_equal(r.ht.txn.served_model.base, "m2");
  assert_int_equal(r.ht.txn.usage.prompt_tokens, -1);
  assert_int_equal(r.ht.txn.usage.completion_tokens, 3);
  run_end(f, &r);
}

/* ---- errors ---- */

static uint64_t retry_after(fixture_t *f, const char *name, const char *value) {
  static const char body[] = "{\"error\":{\"message\":\"slow down\",\"type\":\"tokens\"}}";
  llmux_error_info_t e;
  run_t r;
  run_start(f, &r, 0);
  r.ht.txn.status = 429;
  r.resp_headers[0].name = (llmux_str_t){name, strlen(name)};
  r.resp_headers[0].value = (llmux_str_t){value, strlen(value)};
  r.ht.txn.resp_headers = r.resp_headers;
  r.ht.txn.nresp_headers = 1;
  memset(&e, 0, sizeof e);
  assert_int_equal(f->vt->classify_error(f->inst, &r.ht.txn, body, sizeof body - 1, &e), 0);
  assert_int_equal(e.cls, LLMUX_FAIL_RATE_LIMITED);
  assert_string_equal(e.message.base, "slow down");
  llmux_buf_free(&e.message);
  run_end(f, &r);
  return e.retry_after_ms;
}

static void retry_after_is_read_and_absurd_values_are_ignored(void **state) {
  fixture_t *f = *state;
  assert_int_equal(retry_after(f, "retry-after", "2"), 2000);
  assert_int_equal(retry_after(f, "Retry-After", " 1.5 "), 1500);
  assert_int_equal(retry_after(f, "retry-after-ms", "250"), 250);
  assert_int_equal(retry_after(f, "retry-after", "172800"), 172800000); /* two days */
  assert_int_equal(retry_after(f, "retry-after", "172801"), 0);
  assert_int_equal(retry_after(f, "retry-after", "99999999999999999999999"), 0);
  assert_int_equal(retry_after(f, "retry-after", "1e999"), 0);
  assert_int_equal(retry_after(f, "retry-after", "inf"), 0);
  assert_int_equal(retry_after(f, "retry-after", "-5"), 0);
  assert_int_equal(retry_after(f, "retry-after-ms", "1e30"), 0);
}

/* ---- native passthrough (ABI 1.4, LLMUX_FEATURE_RESPONSES*) ---- */

static void test_a_responses_body_goes_to_responses_with_only_the_model_replaced(void **state) {
  fixture_t *f = *state;
  static const char body[] = "{\"model\" : \"llama-3.3-70b\",\"input\":\"a  b\\u00e9\","
                             "\"store\":false}";
  static const char want[] = "{\"model\" : \"llama-3.3-70b-versatile\",\"input\":\"a  b\\u00e9\","
                             "\"store\":false}";
  llmux_host_txn_t ht;
  llmux_buf_t sent = {0};
  unsigned i;
  assert_true(LLMUX_PROVIDER_HAS(f->vt, features));
  assert_true(f->vt->features(f->inst) & LLMUX_FEATURE_RESPONSES_BY_MODEL);
  assert_false(f->vt->features(f->inst) & LLMUX_FEATURE_RESPONSES); /* responses = false */
  memset(&ht, 0, sizeof ht);
  ht.txn.size = sizeof ht.txn;
  ht.txn.endpoint = LLMUX_ENDPOINT_RESPONSES;
  ht.txn.body = (llmux_str_t){body, sizeof body - 1};
  ht.txn.model_value = (llmux_str_t){strstr(body, "\"llama"), 15};
  ht.txn.provider_model = PROVIDER_MODEL;
  llmux_host_txn_clear_out(&ht);
  assert_int_equal(f->vt->translate_request(f->inst, &ht.txn), 0);
  assert_memory_equal(ht.txn.path.base, "/responses", 10);
  for (i = 0; i < ht.txn.nbody_parts; i++)
    llmux_buf_append(&sent, ht.txn.body_parts[i].base, ht.txn.body_parts[i].len);
  assert_int_equal(sent.len, sizeof want - 1);
  assert_memory_equal(sent.base, want, sent.len);
  f->vt->txn_free(f->inst, &ht.txn);
  llmux_host_txn_free(&ht);
  llmux_buf_free(&sent);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(the_provider_model_is_spliced_in_and_the_key_sent),
    cmocka_unit_test(models_are_listed_from_get_models),
    cmocka_unit_test(a_plain_answer_passes_through_and_its_usage_is_read),
    cmocka_unit_test(a_stream_passes_through_and_its_last_usage_is_read),
    cmocka_unit_test(a_long_stream_keeps_its_last_usage_across_reads),
    cmocka_unit_test(usage_that_is_not_a_token_count_is_unknown_and_logged_once),
    cmocka_unit_test(usage_up_to_a_billion_tokens_is_believed_and_null_is_unknown),
    cmocka_unit_test(an_answer_without_usage_leaves_it_unknown),
    cmocka_unit_test(a_new_attempt_reads_only_its_own_answer),
    cmocka_unit_test(retry_after_is_read_and_absurd_values_are_ignored),
      cmocka_unit_test_setup_teardown(test_a_responses_body_goes_to_responses_with_only_the_model_replaced, setup, teardown),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
