#define _GNU_SOURCE /* memmem */
/* The anthropic plugin, loaded from build/plugins/anthropic.so through the
 * host's own loader and host table: recorded OpenAI requests must become
 * the recorded Messages requests, recorded Anthropic answers (plain and
 * streamed, whole or one byte at a time) the recorded OpenAI answers, and
 * Anthropic's errors the right classes for the router. Data files live in
 * tests/data/anthropic/ (see its README). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "plugin/plugin.h"
#include "test_plugin_support.h"
#include "base/util.h"

#define DATA LLMUX_TEST_DATA "/anthropic/"
#define PROVIDER_MODEL "claude-3-5-sonnet-20241022"
#define BAD_USAGE_LOG "not a count of 0 to 1000000000 tokens"

typedef struct {
  llmux_plugins_t set;
  const llmux_provider_t *vt;
  void *inst;
} fixture_t;

/* ---- fixtures ---- */

typedef struct {
  const char *version;
  const char *max_tokens;
  const char *api_key;
} conf_t;

static const char *conf_get(const llmux_provider_config_t *cfg, const char *key) {
  const conf_t *c = (const conf_t *)cfg->reserved[0];
  if (strcmp(key, "anthropic_version") == 0) return c->version ? c->version : "2023-06-01";
  if (strcmp(key, "default_max_tokens") == 0) return c->max_tokens ? c->max_tokens : "4096";
  return NULL;
}

static int create_with(fixture_t *f, const conf_t *c, void **inst, char *err, size_t errlen) {
  llmux_provider_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.size = sizeof cfg;
  cfg.name = "anthropic";
  cfg.base_url = "https://api.anthropic.com/v1";
  cfg.base_path = "/v1";
  cfg.api_key = c->api_key;
  cfg.get = conf_get;
  cfg.reserved[0] = (void *)c;
  return f->vt->create(&cfg, inst, err, errlen);
}

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof *f);
  conf_t c = {NULL, NULL, "sk-ant-test-key"};
  char err[512] = "";
  llmux_plugin_t *pl;
  llmux_plugins_init(&f->set, LLMUX_BUILD_DIR "/plugins");
  pl = llmux_plugins_get(&f->set, "anthropic", err, sizeof err);
  if (pl == NULL) {
    fprintf(stderr, "cannot load the anthropic plugin (build target plugin_anthropic): %s\n",
            err);
    llmux_plugins_free(&f->set);
    free(f);
    return -1;
  }
  f->vt = pl->vt;
  if (create_with(f, &c, &f->inst, err, sizeof err) != 0) return -1;
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
  llmux_buf_t req;  /* the client's body */
  llmux_buf_t out;  /* what the client got */
  llmux_header_t resp_headers[4];
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
  while ((n = fread(chunk, 1, sizeof chunk, fp)) > 0) assert_int_equal(llmux_buf_append(b, chunk, n), 0);
  fclose(fp);
}

static json_t *load_json(const char *name) {
  llmux_buf_t b = {0};
  json_error_t e;
  json_t *j;
  read_file(name, &b);
  j = json_loadb(b.base, b.len, 0, &e);
  if (j == NULL) fail_msg("%s: %s at line %d", name, e.text, e.line);
  llmux_buf_free(&b);
  return j;
}

static void run_start(run_t *r, const char *body, int stream) {
  memset(r, 0, sizeof *r);
  assert_int_equal(llmux_buf_appends(&r->req, body), 0);
  r->ht.owner = r;
  r->ht.emit = capture;
  r->ht.txn.size = sizeof r->ht.txn;
  r->ht.txn.endpoint = LLMUX_ENDPOINT_CHAT;
  r->ht.txn.body = (llmux_str_t){r->req.base, r->req.len};
  r->ht.txn.stream = stream;
  r->ht.txn.canonical_model = "claude-3.5-sonnet";
  r->ht.txn.provider_model = PROVIDER_MODEL;
  llmux_host_txn_clear_out(&r->ht);
}

static void run_start_file(run_t *r, const char *name, int stream) {
  llmux_buf_t b = {0};
  read_file(name, &b);
  run_start(r, b.base, stream);
  llmux_buf_free(&b);
}

static int translate(fixture_t *f, run_t *r) {
  llmux_host_txn_clear_out(&r->ht);
  return f->vt->translate_request(f->inst, &r->ht.txn);
}

static void run_end(fixture_t *f, run_t *r) {
  f->vt->txn_free(f->inst, &r->ht.txn);
  assert_null(r->ht.txn.data);
  llmux_host_txn_free(&r->ht);
  llmux_buf_free(&r->req);
  llmux_buf_free(&r->out);
}

static json_t *sent_body(run_t *r) {
  llmux_txn_t *t = &r->ht.txn;
  json_error_t e;
  json_t *j;
  assert_int_equal(t->nbody_parts, 1);
  j = json_loadb(t->body_parts[0].base, t->body_parts[0].len, 0, &e);
  if (j == NULL) fail_msg("the plugin sent invalid JSON: %s", e.text);
  return j;
}

static void assert_json_equal(json_t *got, json_t *want) {
  if (!json_equal(got, want)) {
    char *g = json_dumps(got, JSON_INDENT(1) | JSON_SORT_KEYS);
    char *w = json_dumps(want, JSON_INDENT(1) | JSON_SORT_KEYS);
    fprintf(stderr, "got:\n%s\nwant:\n%s\n", g, w);
    free(g);
    free(w);
    fail_msg("JSON differs");
  }
}

static int contains(const llmux_buf_t *b, const char *s) {
  return b->base != NULL && memmem(b->base, b->len, s, strlen(s)) != NULL;
}

/* ---- requests ---- */

static void translates_a_full_conversation_with_tools_and_images(void **state) {
  fixture_t *f = *state;
  run_t r;
  json_t *got, *want = load_json("chat_full.anthropic.json");
  run_start_file(&r, "chat_full.openai.json", 1);
  assert_int_equal(translate(f, &r), 0);
  assert_null(r.ht.txn.method);
  assert_string_equal(r.ht.txn.path.base, "/messages");
  assert_true(contains(&r.ht.txn.headers, "x-api-key: sk-ant-test-key\r\n"));
  assert_true(contains(&r.ht.txn.headers, "anthropic-version: 2023-06-01\r\n"));
  got = sent_body(&r);
  assert_json_equal(got, want);
  /* Reals keep their shortest form: 0.7, not 0.69999999999999996. */
  assert_non_null(memmem(r.ht.txn.body_parts[0].base, r.ht.txn.body_parts[0].len,
                         "\"temperature\":0.7,", 18));
  json_decref(got);
  json_decref(want);
  run_end(f, &r);
}

static void translation_is_idempotent_across_retries(void **state) {
  fixture_t *f = *state;
  run_t r;
  llmux_buf_t first = {0};
  run_start_file(&r, "chat_full.openai.json", 1);
  assert_int_equal(translate(f, &r), 0);
  llmux_buf_append(&first, r.ht.txn.body_parts[0].base, r.ht.txn.body_parts[0].len);
  r.ht.txn.attempt = 1;
  assert_int_equal(translate(f, &r), 0);
  assert_int_equal(r.ht.txn.body_parts[0].len, first.len);
  assert_memory_equal(r.ht.txn.body_parts[0].base, first.base, first.len);
  assert_string_equal(r.ht.txn.path.base, "/messages");
  llmux_buf_free(&first);
  run_end(f, &r);
}

static void fills_max_tokens_merges_turns_and_drops_empty_stops(void **state) {
  fixture_t *f = *state;
  run_t r;
  json_t *got, *want = load_json("chat_plain.anthropic.json");
  run_start_file(&r, "chat_plain.openai.json", 0);
  assert_int_equal(translate(f, &r), 0);
  got = sent_body(&r);
  assert_json_equal(got, want);
  json_decref(got);
  json_decref(want);
  run_end(f, &r);
}

static void declared_keys_set_version_and_default_max_tokens(void **state) {
  fixture_t *f = *state;
  conf_t c = {"2024-10-22", "77", NULL};
  void *inst = NULL;
  char err[256];
  run_t r;
  json_t *got;
  assert_int_equal(create_with(f, &c, &inst, err, sizeof err), 0);
  run_start(&r, "{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", 0);
  llmux_host_txn_clear_out(&r.ht);
  assert_int_equal(f->vt->translate_request(inst, &r.ht.txn), 0);
  assert_true(contains(&r.ht.txn.headers, "anthropic-version: 2024-10-22\r\n"));
  assert_false(contains(&r.ht.txn.headers, "x-api-key"));
  got = sent_body(&r);
  assert_int_equal(json_integer_value(json_object_get(got, "max_tokens")), 77);
  assert_string_equal(json_string_value(json_object_get(
                          json_array_get(json_object_get(got, "messages"), 0), "content")),
                      "hi");
  json_decref(got);
  f->vt->txn_free(inst, &r.ht.txn);
  llmux_host_txn_free(&r.ht);
  llmux_buf_free(&r.req);
  f->vt->destroy(inst);

  c.max_tokens = "0";
  assert_int_equal(create_with(f, &c, &inst, err, sizeof err), LLMUX_ECONFIG);
  assert_non_null(strstr(err, "default_max_tokens"));
}

static void untranslatable_requests_are_refused(void **state) {
  static const char *const bodies[] = {
    "{\"model\":\"x\",\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"a\","
    "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{not json\"}}]}]}",
    "{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_audio\","
    "\"input_audio\":{\"data\":\"AAAA\",\"format\":\"wav\"}}]}]}",
    "{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
    "\"image_url\":{\"url\":\"ftp://host/x.png\"}}]}]}",
    "{\"model\":\"x\",\"messages\":[{\"role\":\"wizard\",\"content\":\"hi\"}]}",
    "{\"model\":\"x\",\"messages\":[{\"role\":\"tool\",\"content\":\"no id\"}]}",
    "{\"model\":\"x\",\"messages\":\"hi\"}",
    "{\"model\":\"x\",\"messages\":[],\"tools\":[{\"type\":\"code_interpreter\"}]}",
  };
  fixture_t *f = *state;
  size_t i;
  run_t r;
  for (i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
    run_start(&r, bodies[i], 0);
    assert_int_equal(translate(f, &r), LLMUX_EINVAL);
    run_end(f, &r);
  }
  run_start(&r, "{\"model\":\"x\",\"input\":\"hi\"}", 0);
  r.ht.txn.endpoint = LLMUX_ENDPOINT_EMBEDDINGS;
  assert_int_equal(translate(f, &r), LLMUX_EINVAL);
  run_end(f, &r);
}

/* ---- plain responses ---- */

static void plain(fixture_t *f, const char *response, const char *expected) {
  llmux_buf_t body = {0};
  json_t *got, *want = load_json(expected);
  run_t r;
  size_t half;
  run_start(&r, "{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", 0);
  assert_int_equal(translate(f, &r), 0);
  read_file(response, &body);
  half = body.len / 2;
  r.ht.txn.status = 200;
  assert_int_equal(f->vt->parse_response(f->inst, &r.ht.txn, body.base, half, 0), 0);
  assert_int_equal(r.out.len, 0); /* nothing until the whole message is in */
  assert_int_equal(f->vt->parse_response(f->inst, &r.ht.txn, body.base + half, body.len - half, 0), 0);
  assert_int_equal(f->vt->parse_response(f->inst, &r.ht.txn, NULL, 0, 1), 0);
  got = json_loadb(r.out.base, r.out.len, 0, NULL);
  assert_non_null(got);
  assert_true(json_integer_value(json_object_get(got, "created")) > 1700000000);
  json_object_del(got, "created");
  assert_json_equal(got, want);
  assert_string_equal(r.ht.txn.served_model.base, PROVIDER_MODEL);
  assert_int_equal(r.ht.txn.usage.prompt_tokens,
                   json_integer_value(json_object_get(json_object_get(want, "usage"), "prompt_tokens")));
  assert_int_equal(r.ht.txn.usage.completion_tokens,
                   json_integer_value(json_object_get(json_object_get(want, "usage"), "completion_tokens")));
  json_decref(got);
  json_decref(want);
  llmux_buf_free(&body);
  run_end(f, &r);
}

static void plain_text_answer_becomes_a_chat_completion(void **state) {
  plain(*state, "message_text.response.json", "message_text.expected.json");
}

static void plain_tool_use_becomes_tool_calls(void **state) {
  plain(*state, "message_tools.response.json", "message_tools.expected.json");
}

static void plain_answer_that_is_not_a_message_is_refused(void **state) {
  fixture_t *f = *state;
  run_t r;
  static const char body[] = "{\"type\":\"completion\",\"completion\":\"hi\"}";
  run_start(&r, "{\"model\":\"x\",\"messages\":[]}", 0);
  assert_int_equal(translate(f, &r), 0);
  assert_int_equal(f->vt->parse_response(f->inst, &r.ht.txn, body, sizeof body - 1, 1),
                   LLMUX_EUPSTREAM);
  assert_int_equal(r.out.len, 0);
  run_end(f, &r);
}

/* ---- streams ---- */

/* The client's bytes with `"created":N,` removed and frames ended by one
 * newline, to compare with an .expected.sse file byte for byte. */
static void normalise_sse(const llmux_buf_t *in, llmux_buf_t *out) {
  size_t i = 0;
  while (i < in->len) {
    if (in->len - i > 10 && memcmp(in->base + i, "\"created\":", 10) == 0) {
      i += 10;
      while (i < in->len && in->base[i] >= '0' && in->base[i] <= '9') i++;
      if (i < in->len && in->base[i] == ',') i++;
      continue;
    }
    if (in->len - i >= 2 && memcmp(in->base + i, "\n\n", 2) == 0) {
      llmux_buf_append(out, "\n", 1);
      i += 2;
      continue;
    }
    llmux_buf_append(out, in->base + i, 1);
    i++;
  }
}

/* Feeds `sse` in pieces of `step` bytes (0: all at once). Returns the
 * parse result of the last call. */
static int stream(fixture_t *f, run_t *r, const char *sse, size_t step, int include_usage) {
  llmux_buf_t body = {0};
  size_t off = 0;
  int rc = 0;
  run_start(r, include_usage ? "{\"model\":\"x\",\"stream\":true,\"stream_options\":"
                               "{\"include_usage\":true},\"messages\":[]}"
                             : "{\"model\":\"x\",\"stream\":true,\"messages\":[]}", 1);
  assert_int_equal(translate(f, r), 0);
  read_file(sse, &body);
  r->ht.txn.status = 200;
  while (off < body.len && rc == 0) {
    size_t n = step == 0 || body.len - off < step ? body.len - off : step;
    rc = f->vt->parse_response(f->inst, &r->ht.txn, body.base + off, n, 0);
    off += n;
  }
  if (rc == 0) rc = f->vt->parse_response(f->inst, &r->ht.txn, NULL, 0, 1);
  llmux_buf_free(&body);
  return rc;
}

static void assert_stream(fixture_t *f, const char *sse, const char *expected, size_t step,
                          int include_usage) {
  llmux_buf_t want = {0}, got = {0};
  run_t r;
  assert_int_equal(stream(f, &r, sse, step, include_usage), 0);
  read_file(expected, &want);
  normalise_sse(&r.out, &got);
  if (got.len != want.len || memcmp(got.base, want.base, got.len) != 0)
    fail_msg("step %zu: got\n%.*s\nwant\n%.*s", step, (int)got.len, got.base, (int)want.len,
             want.base);
  assert_string_equal(r.ht.txn.served_model.base, PROVIDER_MODEL);
  llmux_buf_free(&want);
  llmux_buf_free(&got);
  run_end(f, &r);
}

static void stream_of_text_becomes_chunks_whatever_the_byte_boundaries(void **state) {
  static const size_t steps[] = {0, 1, 2, 3, 7, 64};
  size_t i;
  for (i = 0; i < sizeof steps / sizeof steps[0]; i++)
    assert_stream(*state, "stream_text.sse", "stream_text.expected.sse", steps[i], 1);
}

static void stream_usage_is_reported_to_the_host(void **state) {
  fixture_t *f = *state;
  run_t r;
  assert_int_equal(stream(f, &r, "stream_text.sse", 1, 0), 0);
  assert_int_equal(r.ht.txn.usage.prompt_tokens, 25);
  assert_int_equal(r.ht.txn.usage.completion_tokens, 15);
  assert_false(contains(&r.out, "\"usage\"")); /* not asked for */
  run_end(f, &r);
}

static void stream_tool_use_becomes_indexed_tool_call_deltas(void **state) {
  static const size_t steps[] = {0, 1, 5, 13};
  size_t i;
  for (i = 0; i < sizeof steps / sizeof steps[0]; i++)
    assert_stream(*state, "stream_tools.sse", "stream_tools.expected.sse", steps[i], 0);
}

static void stream_error_event_ends_the_stream_in_openai_shape(void **state) {
  assert_stream(*state, "stream_error.sse", "stream_error.expected.sse", 0, 1);
  assert_stream(*state, "stream_error.sse", "stream_error.expected.sse", 1, 1);
}

static void stream_cut_before_message_stop_ends_with_an_error(void **state) {
  fixture_t *f = *state;
  llmux_buf_t body = {0};
  const char *cut;
  run_t r;
  run_start(&r, "{\"model\":\"x\",\"stream\":true,\"messages\":[]}", 1);
  assert_int_equal(translate(f, &r), 0);
  read_file("stream_text.sse", &body);
  cut = strstr(body.base, "event: message_delta");
  assert_non_null(cut);
  assert_int_equal(f->vt->parse_response(f->inst, &r.ht.txn, body.base,
                                         (size_t)(cut - body.base), 0), 0);
  assert_int_equal(f->vt->parse_response(f->inst, &r.ht.txn, NULL, 0, 1), 0);
  assert_true(contains(&r.out, "\"content\":\" \\\"w\xc3\xb6rld\\\"\\n!\""));
  assert_true(contains(&r.out, "ended before message_stop"));
  assert_false(contains(&r.out, "[DONE]"));
  llmux_buf_free(&body);
  run_end(f, &r);
}

static void stream_garbage_is_refused_and_nothing_follows(void **state) {
  fixture_t *f = *state;
  static const char bad[] = "event: message_start\ndata: {\"type\":\"message_start\",\n\n";
  run_t r;
  run_start(&r, "{\"model\":\"x\",\"stream\":true,\"messages\":[]}", 1);
  assert_int_equal(translate(f, &r), 0);
  assert_int_equal(f->vt->parse_response(f->inst, &r.ht.txn, bad, sizeof bad - 1, 0),
                   LLMUX_EUPSTREAM);
  f->vt->parse_response(f->inst, &r.ht.txn, NULL, 0, 1);
  assert_int_equal(r.out.len, 0); /* the host says it in its own words */
  run_end(f, &r);
}

/* ---- odd shapes and untrusted numbers ---- */

/* A tool_use block with no input (or one that is not an object) is a call
 * with no arguments; under LeakSanitizer this also proves nothing built
 * for the missing input outlives the answer. */
static void plain_tool_use_without_input_has_empty_arguments(void **state) {
  plain(*state, "message_tool_no_input.response.json", "message_tool_no_input.expected.json");
}

static void stream_tool_use_without_input_opens_a_call(void **state) {
  static const size_t steps[] = {0, 1};
  size_t i;
  for (i = 0; i < sizeof steps / sizeof steps[0]; i++)
    assert_stream(*state, "stream_tool_no_input.sse", "stream_tool_no_input.expected.sse",
                  steps[i], 1);
}

/* A plain message whose usage object is `usage`: what the host and the
 * client get, and what was logged. */
static void plain_usage(fixture_t *f, const char *usage, llmux_usage_t *u, json_t **client,
                        char **logged) {
  llmux_buf_t body = {0};
  log_capture_t c;
  run_t r;
  int rc;
  llmux_buf_printf(&body, "{\"id\":\"msg_u\",\"type\":\"message\",\"role\":\"assistant\","
                          "\"content\":[{\"type\":\"text\",\"text\":\"hi\"}],\"model\":\"m\","
                          "\"stop_reason\":\"end_turn\",\"usage\":%s}", usage);
  run_start(&r, "{\"model\":\"x\",\"messages\":[]}", 0);
  assert_int_equal(translate(f, &r), 0);
  log_capture_start(&c); /* no assertion until it ends */
  rc = f->vt->parse_response(f->inst, &r.ht.txn, body.base, body.len, 1);
  *logged = log_capture_end(&c);
  assert_int_equal(rc, 0);
  *u = r.ht.txn.usage;
  *client = json_loadb(r.out.base, r.out.len, 0, NULL);
  assert_non_null(*client);
  llmux_buf_free(&body);
  run_end(f, &r);
}

static void usage_that_is_not_a_token_count_is_unknown_and_logged_once(void **state) {
  static const struct {
    const char *usage;
    int64_t in, out;
  } cases[] = {
    {"{\"input_tokens\":99999999999999999999999,\"output_tokens\":12}", -1, 12},
    {"{\"input_tokens\":9223372036854775808,\"output_tokens\":12}", -1, 12},
    {"{\"input_tokens\":9223372036854775807,\"output_tokens\":12}", -1, 12},
    {"{\"input_tokens\":-1,\"output_tokens\":12}", -1, 12},
    {"{\"input_tokens\":1e30,\"output_tokens\":12}", -1, 12},
    {"{\"input_tokens\":\"12\",\"output_tokens\":12}", -1, 12},
    {"{\"input_tokens\":10,\"cache_read_input_tokens\":9223372036854775800,"
     "\"output_tokens\":12}", -1, 12},
    {"{\"input_tokens\":600000000,\"cache_creation_input_tokens\":600000000,"
     "\"output_tokens\":12}", -1, 12},
    {"{\"input_tokens\":10,\"output_tokens\":18446744073709551616}", 10, -1},
    {"{\"input_tokens\":10,\"output_tokens\":2.5}", 10, -1},
  };
  size_t i;
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    llmux_usage_t u;
    json_t *client, *cu;
    char *logged;
    plain_usage(*state, cases[i].usage, &u, &client, &logged);
    if (u.prompt_tokens != cases[i].in || u.completion_tokens != cases[i].out)
      fail_msg("%s: usage %lld/%lld", cases[i].usage, (long long)u.prompt_tokens,
               (long long)u.completion_tokens);
    if (occurrences(logged, BAD_USAGE_LOG) != 1) fail_msg("%s: logged\n%s", cases[i].usage, logged);
    assert_null(strstr(logged, "sk-ant-test-key"));
    /* the client still gets its answer, with unknown counts as 0 */
    cu = json_object_get(client, "usage");
    assert_int_equal(json_integer_value(json_object_get(cu, "prompt_tokens")),
                     cases[i].in < 0 ? 0 : cases[i].in);
    assert_int_equal(json_integer_value(json_object_get(cu, "completion_tokens")),
                     cases[i].out < 0 ? 0 : cases[i].out);
    json_decref(client);
    free(logged);
  }
}

static void usage_up_to_a_billion_tokens_is_believed(void **state) {
  llmux_usage_t u;
  json_t *client;
  char *logged;
  plain_usage(*state, "{\"input_tokens\":400000000,\"cache_read_input_tokens\":600000000,"
                      "\"output_tokens\":1000000000}", &u, &client, &logged);
  assert_int_equal(u.prompt_tokens, 1000000000);
  assert_int_equal(u.completion_tokens, 1000000000);
  assert_string_equal(logged, "");
  json_decref(client);
  free(logged);
}

/* Bad numbers in message_start and in message_delta: one log line for the
 * answer, and the stream goes on. */
static void stream_usage_that_is_not_a_count_is_unknown_and_logged_once(void **state) {
  fixture_t *f = *state;
  static const char sse[] =
      "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_s\",\"model\":\"m\","
      "\"usage\":{\"input_tokens\":99999999999999999999999,\"output_tokens\":1}}}\n\n"
      "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":"
      "\"text\",\"text\":\"\"}}\n\n"
      "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
      "\"text_delta\",\"text\":\"ok\"}}\n\n"
      "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},"
      "\"usage\":{\"output_tokens\":-7}}\n\n"
      "data: {\"type\":\"message_stop\"}\n\n";
  log_capture_t c;
  char *logged;
  run_t r;
  int rc;
  run_start(&r, "{\"model\":\"x\",\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                "\"messages\":[]}", 1);
  assert_int_equal(translate(f, &r), 0);
  log_capture_start(&c); /* no assertion until it ends */
  rc = f->vt->parse_response(f->inst, &r.ht.txn, sse, sizeof sse - 1, 0);
  rc |= f->vt->parse_response(f->inst, &r.ht.txn, NULL, 0, 1);
  logged = log_capture_end(&c);
  assert_int_equal(rc, 0);
  assert_int_equal(r.ht.txn.usage.prompt_tokens, -1);
  assert_int_equal(r.ht.txn.usage.completion_tokens, -1);
  if (occurrences(logged, BAD_USAGE_LOG) != 1) fail_msg("logged\n%s", logged);
  assert_true(contains(&r.out, "{\"content\":\"ok\"}"));
  assert_true(contains(&r.out, "\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":0,"));
  assert_true(contains(&r.out, "data: [DONE]"));
  free(logged);
  run_end(f, &r);
}

/* A content block's index that is not an integer cannot route deltas. */
static void stream_block_index_that_is_not_an_integer_is_refused(void **state) {
  static const char *const index[] = {"\"1\"", "1.5", "-1", "99999999999999999999999", "null"};
  fixture_t *f = *state;
  size_t i;
  for (i = 0; i < sizeof index / sizeof index[0]; i++) {
    llmux_buf_t sse = {0};
    run_t r;
    llmux_buf_printf(&sse,
                     "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{}}}\n\n"
                     "data: {\"type\":\"content_block_start\",\"index\":%s,\"content_block\":"
                     "{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}}\n\n",
                     index[i]);
    run_start(&r, "{\"model\":\"x\",\"stream\":true,\"messages\":[]}", 1);
    assert_int_equal(translate(f, &r), 0);
    if (f->vt->parse_response(f->inst, &r.ht.txn, sse.base, sse.len, 0) != LLMUX_EUPSTREAM)
      fail_msg("index %s was taken", index[i]);
    llmux_buf_free(&sse);
    run_end(f, &r);
  }
}

/* ---- errors ---- */

static llmux_fail_class_t class_named(const char *name) {
  static const char *const names[] = {"NONE", "RATE_LIMITED", "QUOTA", "OVERLOADED", "SERVER",
                                      "TIMEOUT", "AUTH", "BAD_REQUEST", "CONTEXT_LENGTH",
                                      "MODEL_NOT_FOUND"};
  size_t i;
  for (i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcmp(names[i], name) == 0) return (llmux_fail_class_t)i;
  fail_msg("unknown class %s", name);
  return LLMUX_FAIL_NONE;
}

static void errors_are_classified_for_the_router(void **state) {
  fixture_t *f = *state;
  json_t *cases = load_json("errors.json"), *c;
  size_t i;
  json_array_foreach(cases, i, c) {
    json_t *body = json_object_get(c, "body");
    char *text = json_is_string(body) ? strdup(json_string_value(body))
                                      : json_dumps(body, JSON_COMPACT);
    const char *ra = json_string_value(json_object_get(json_object_get(c, "headers"),
                                                       "retry-after"));
    llmux_error_info_t e;
    run_t r;
    run_start(&r, "{\"model\":\"x\",\"messages\":[]}", 0);
    assert_int_equal(translate(f, &r), 0);
    r.ht.txn.status = (int)json_integer_value(json_object_get(c, "status"));
    if (ra) {
      r.resp_headers[0].name = (llmux_str_t){"Retry-After", 11};
      r.resp_headers[0].value = (llmux_str_t){ra, strlen(ra)};
      r.ht.txn.resp_headers = r.resp_headers;
      r.ht.txn.nresp_headers = 1;
    }
    memset(&e, 0, sizeof e);
    assert_int_equal(f->vt->classify_error(f->inst, &r.ht.txn, text, strlen(text), &e), 0);
    if (e.cls != class_named(json_string_value(json_object_get(c, "class"))))
      fail_msg("case %zu (%s): class %d", i, text, (int)e.cls);
    assert_int_equal(e.retry_elsewhere, json_is_true(json_object_get(c, "retry_elsewhere")));
    assert_int_equal(e.retry_same, json_is_true(json_object_get(c, "retry_same")));
    assert_int_equal(e.retry_after_ms, json_integer_value(json_object_get(c, "retry_after_ms")));
    assert_true(e.message.len > 0);
    if (json_is_object(body))
      assert_non_null(strstr(e.message.base, json_string_value(json_object_get(
                                                 json_object_get(body, "error"), "message"))));
    llmux_buf_free(&e.message);
    free(text);
    run_end(f, &r);
  }
  json_decref(cases);
}

/* ---- what Anthropic lacks: emulated, refused or adjusted ---- */

#define PERSON_SCHEMA \
  "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"age\":{\"type\":" \
  "\"integer\"}},\"required\":[\"name\",\"age\"],\"additionalProperties\":false}"

static json_t *translated(fixture_t *f, run_t *r, const char *body) {
  run_start(r, body, 0);
  assert_int_equal(translate(f, r), 0);
  return sent_body(r);
}

static void json_schema_becomes_one_forced_tool_whose_schema_is_the_schema(void **state) {
  fixture_t *f = *state;
  run_t r;
  json_t *got = translated(f, &r,
      "{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"Who?\"}],"
      "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"person\","
      "\"description\":\"A person\",\"strict\":true,\"schema\":" PERSON_SCHEMA "}}}");
  json_t *want = json_pack("[{s:s, s:s, s:o}]", "name", "person", "description", "A person",
                           "input_schema", json_loads(PERSON_SCHEMA, 0, NULL));
  json_t *choice = json_pack("{s:s, s:s, s:b}", "type", "tool", "name", "person",
                             "disable_parallel_tool_use", 1);
  assert_json_equal(json_object_get(got, "tools"), want);
  assert_json_equal(json_object_get(got, "tool_choice"), choice);
  assert_null(json_object_get(got, "response_format"));
  assert_null(json_object_get(got, "system"));
  json_decref(want);
  json_decref(choice);
  json_decref(got);
  run_end(f, &r);
}

static void json_object_is_an_object_tool_and_a_system_line(void **state) {
  fixture_t *f = *state;
  run_t r;
  json_t *got = translated(f, &r,
      "{\"model\":\"x\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
      "{\"role\":\"user\",\"content\":\"A city?\"}],\"response_format\":{\"type\":\"json_object\"}}");
  json_t *tool = json_array_get(json_object_get(got, "tools"), 0);
  json_t *object = json_pack("{s:s}", "type", "object");
  assert_int_equal(json_array_size(json_object_get(got, "tools")), 1);
  assert_string_equal(json_string_value(json_object_get(tool, "name")), "json_output");
  assert_json_equal(json_object_get(tool, "input_schema"), object);
  assert_string_equal(json_string_value(json_object_get(json_object_get(got, "tool_choice"),
                                                        "name")), "json_output");
  assert_string_equal(json_string_value(json_object_get(got, "system")),
                      "Be brief.\n\nAnswer with a JSON object, given as the input of the "
                      "json_output tool.");
  json_decref(object);
  json_decref(got);
  run_end(f, &r);
}

static void json_schema_names_anthropic_cannot_take_become_json_output(void **state) {
  static const char *const names[] = {"\"my schema!\"", "\"\"", "42",
      "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\""}; /* 65 */
  fixture_t *f = *state;
  char body[512];
  size_t i;
  run_t r;
  for (i = 0; i < sizeof names / sizeof names[0]; i++) {
    json_t *got;
    snprintf(body, sizeof body, "{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":"
             "\"hi\"}],\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":%s,"
             "\"schema\":{\"type\":\"object\"}}}}", names[i]);
    got = translated(f, &r, body);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(got, "tools"), 0), "name")),
                        "json_output");
    json_decref(got);
    run_end(f, &r);
  }
}

static void json_format_with_the_clients_tools_is_refused_unless_tool_choice_is_none(void **state) {
  fixture_t *f = *state;
  run_t r;
  json_t *got;
  static const char body[] =
      "{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
      "\"response_format\":{\"type\":\"json_object\"},\"tools\":[{\"type\":\"function\","
      "\"function\":{\"name\":\"get_time\"}}]%s}";
  char text[512];
  snprintf(text, sizeof text, body, "");
  run_start(&r, text, 0);
  assert_int_equal(translate(f, &r), LLMUX_EINVAL);
  assert_true(contains(&r.ht.txn.refusal, "Provider 'anthropic' cannot combine response_format "
                                          "json_object with tools"));
  run_end(f, &r);
  /* tool_choice none: the tools would not be called anyway. */
  snprintf(text, sizeof text, body, ",\"tool_choice\":\"none\"");
  got = translated(f, &r, text);
  assert_int_equal(json_array_size(json_object_get(got, "tools")), 1);
  assert_string_equal(json_string_value(json_object_get(
                          json_array_get(json_object_get(got, "tools"), 0), "name")),
                      "json_output");
  json_decref(got);
  run_end(f, &r);
  /* json_schema without a schema object is the client's mistake. */
  run_start(&r, "{\"model\":\"x\",\"messages\":[],\"response_format\":{\"type\":\"json_schema\","
                "\"json_schema\":{\"name\":\"x\",\"schema\":\"no\"}}}", 0);
  assert_int_equal(translate(f, &r), LLMUX_EINVAL);
  assert_true(contains(&r.ht.txn.refusal, "needs a schema object"));
  run_end(f, &r);
  /* text, or a type nobody knows, is a plain answer. */
  got = translated(f, &r, "{\"model\":\"x\",\"messages\":[],\"response_format\":{\"type\":"
                          "\"text\"}}");
  assert_null(json_object_get(got, "tools"));
  json_decref(got);
  run_end(f, &r);
}

/* Feeds an answer to a request with response_format json_schema. */
static void json_answer(fixture_t *f, run_t *r, const char *answer, size_t step, int stream) {
  size_t off = 0, len = strlen(answer);
  int rc = 0;
  run_start(r, stream ? "{\"model\":\"x\",\"stream\":true,\"messages\":[],\"response_format\":"
                        "{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"person\","
                        "\"schema\":" PERSON_SCHEMA "}}}"
                      : "{\"model\":\"x\",\"messages\":[],\"response_format\":{\"type\":"
                        "\"json_schema\",\"json_schema\":{\"name\":\"person\",\"schema\":"
                        PERSON_SCHEMA "}}}", stream);
  assert_int_equal(translate(f, r), 0);
  r->ht.txn.status = 200;
  while (off < len && rc == 0) {
    size_t n = step == 0 || len - off < step ? len - off : step;
    rc = f->vt->parse_response(f->inst, &r->ht.txn, answer + off, n, 0);
    off += n;
  }
  assert_int_equal(rc, 0);
  assert_int_equal(f->vt->parse_response(f->inst, &r->ht.txn, NULL, 0, 1), 0);
}

static json_t *plain_choice(run_t *r, json_t **root) {
  *root = json_loadb(r->out.base, r->out.len, 0, NULL);
  assert_non_null(*root);
  return json_array_get(json_object_get(*root, "choices"), 0);
}

static void json_answer_is_the_forced_tools_input_as_content(void **state) {
  static const char answer[] =
      "{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"" PROVIDER_MODEL
      "\",\"content\":[{\"type\":\"text\",\"text\":\"Here you go:\"},{\"type\":\"tool_use\","
      "\"id\":\"toolu_1\",\"name\":\"person\",\"input\":{\"name\":\"Ada\",\"age\":36}}],"
      "\"stop_reason\":\"tool_use\",\"usage\":{\"input_tokens\":10,\"output_tokens\":5}}";
  fixture_t *f = *state;
  json_t *root, *choice, *msg;
  run_t r;
  json_answer(f, &r, answer, 7, 0);
  choice = plain_choice(&r, &root);
  msg = json_object_get(choice, "message");
  assert_string_equal(json_string_value(json_object_get(msg, "content")),
                      "{\"name\":\"Ada\",\"age\":36}");
  assert_null(json_object_get(msg, "tool_calls"));
  assert_string_equal(json_string_value(json_object_get(choice, "finish_reason")), "stop");
  json_decref(root);
  run_end(f, &r);
}

static void json_answer_cut_by_max_tokens_or_without_the_tool_says_so(void **state) {
  /* Cut short: the text there is (no tool use) and finish "length". */
  static const char cut[] =
      "{\"id\":\"m\",\"type\":\"message\",\"content\":[{\"type\":\"text\",\"text\":\"{\\\"na\"}],"
      "\"stop_reason\":\"max_tokens\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}";
  /* A hostile input that is not an object is an empty one. */
  static const char odd[] =
      "{\"id\":\"m\",\"type\":\"message\",\"content\":[{\"type\":\"tool_use\",\"id\":\"t\","
      "\"name\":\"person\",\"input\":[1,2]}],\"stop_reason\":\"tool_use\",\"usage\":{}}";
  fixture_t *f = *state;
  json_t *root, *choice;
  run_t r;
  json_answer(f, &r, cut, 0, 0);
  choice = plain_choice(&r, &root);
  assert_string_equal(json_string_value(json_object_get(json_object_get(choice, "message"),
                                                        "content")), "{\"na");
  assert_string_equal(json_string_value(json_object_get(choice, "finish_reason")), "length");
  json_decref(root);
  run_end(f, &r);
  json_answer(f, &r, odd, 0, 0);
  choice = plain_choice(&r, &root);
  assert_string_equal(json_string_value(json_object_get(json_object_get(choice, "message"),
                                                        "content")), "{}");
  assert_string_equal(json_string_value(json_object_get(choice, "finish_reason")), "stop");
  json_decref(root);
  run_end(f, &r);
}

#define SSE(type, data) "event: " type "\ndata: " data "\n\n"
static const char json_stream[] =
    SSE("message_start", "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":"
        "\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"" PROVIDER_MODEL "\","
        "\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}")
    SSE("content_block_start", "{\"type\":\"content_block_start\",\"index\":0,"
        "\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"person\","
        "\"input\":{}}}")
    SSE("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":"
        "{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}")
    SSE("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":"
        "{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"name\\\": \\\"A\"}}")
    SSE("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":"
        "{\"type\":\"input_json_delta\",\"partial_json\":\"da\\\", \\\"age\\\": 36}\"}}")
    SSE("content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0}")
    SSE("message_delta", "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},"
        "\"usage\":{\"output_tokens\":9}}")
    SSE("message_stop", "{\"type\":\"message_stop\"}");

/* The content deltas of a stream, joined; its finish_reason in *finish. */
static void stream_content(const llmux_buf_t *out, llmux_buf_t *content, char *finish,
                           int *tool_calls) {
  const char *p = out->base, *end = out->base + out->len;
  *tool_calls = 0;
  while (p < end) {
    const char *sep = memmem(p, (size_t)(end - p), "\n\n", 2);
    json_t *chunk, *choice;
    assert_non_null(sep);
    if (memcmp(p, "data: [DONE]", 12) != 0) {
      chunk = json_loadb(p + 6, (size_t)(sep - p - 6), 0, NULL);
      assert_non_null(chunk);
      choice = json_array_get(json_object_get(chunk, "choices"), 0);
      if (json_is_string(json_object_get(json_object_get(choice, "delta"), "content")))
        llmux_buf_appends(content, json_string_value(json_object_get(
                                       json_object_get(choice, "delta"), "content")));
      if (json_object_get(json_object_get(choice, "delta"), "tool_calls")) (*tool_calls)++;
      if (json_is_string(json_object_get(choice, "finish_reason")))
        snprintf(finish, 16, "%s", json_string_value(json_object_get(choice, "finish_reason")));
      json_decref(chunk);
    }
    p = sep + 2;
  }
}

static void streamed_json_answer_is_content_deltas_whatever_the_byte_boundaries(void **state) {
  static const size_t steps[] = {0, 1, 3, 17};
  fixture_t *f = *state;
  size_t i;
  for (i = 0; i < sizeof steps / sizeof steps[0]; i++) {
    llmux_buf_t content = {0};
    char finish[16] = "";
    int calls;
    run_t r;
    json_answer(f, &r, json_stream, steps[i], 1);
    stream_content(&r.out, &content, finish, &calls);
    assert_int_equal(content.len, strlen("{\"name\": \"Ada\", \"age\": 36}"));
    assert_memory_equal(content.base, "{\"name\": \"Ada\", \"age\": 36}", content.len);
    assert_string_equal(finish, "stop");
    assert_int_equal(calls, 0);
    assert_true(contains(&r.out, "data: [DONE]"));
    llmux_buf_free(&content);
    run_end(f, &r);
  }
}

static void streamed_json_answer_without_input_is_an_empty_object(void **state) {
  static const char sse[] =
      SSE("message_start", "{\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{}}}")
      SSE("content_block_start", "{\"type\":\"content_block_start\",\"index\":0,"
          "\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"person\"}}")
      SSE("content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0}")
      SSE("message_delta", "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"}}")
      SSE("message_stop", "{\"type\":\"message_stop\"}");
  static const char second[] =
      SSE("message_start", "{\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{}}}")
      SSE("content_block_start", "{\"type\":\"content_block_start\",\"index\":0,"
          "\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"person\"}}")
      SSE("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":"
          "{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}")
      SSE("content_block_start", "{\"type\":\"content_block_start\",\"index\":1,"
          "\"content_block\":{\"type\":\"tool_use\",\"id\":\"u\",\"name\":\"person\"}}")
      SSE("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":1,\"delta\":"
          "{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"x\\\":1}\"}}")
      SSE("content_block_stop", "{\"type\":\"content_block_stop\",\"index\":1}")
      SSE("message_delta", "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"}}")
      SSE("message_stop", "{\"type\":\"message_stop\"}");
  fixture_t *f = *state;
  llmux_buf_t content = {0};
  char finish[16] = "";
  int calls;
  run_t r;
  json_answer(f, &r, sse, 0, 1);
  stream_content(&r.out, &content, finish, &calls);
  assert_int_equal(content.len, 2);
  assert_memory_equal(content.base, "{}", 2);
  assert_string_equal(finish, "stop");
  llmux_buf_free(&content);
  run_end(f, &r);
  /* A second block of the tool (hostile: parallel use was disabled) adds
   * nothing to the answer, as in plain answers. */
  json_answer(f, &r, second, 1, 1);
  stream_content(&r.out, &content, finish, &calls);
  assert_int_equal(content.len, 2);
  assert_memory_equal(content.base, "{}", 2);
  assert_string_equal(finish, "stop");
  llmux_buf_free(&content);
  run_end(f, &r);
}

static void logprobs_are_refused_in_words_naming_the_provider(void **state) {
  static const char *const asks[] = {"\"logprobs\":true", "\"top_logprobs\":2",
                                     "\"logprobs\":true,\"top_logprobs\":0"};
  static const char *const fine[] = {"\"logprobs\":false", "\"top_logprobs\":0",
                                     "\"logprobs\":null"};
  fixture_t *f = *state;
  char body[256];
  size_t i;
  run_t r;
  for (i = 0; i < sizeof asks / sizeof asks[0]; i++) {
    snprintf(body, sizeof body, "{\"model\":\"x\",\"messages\":[],%s}", asks[i]);
    run_start(&r, body, 0);
    assert_int_equal(translate(f, &r), LLMUX_EINVAL);
    assert_int_equal(r.ht.txn.refusal.len, strlen("Provider 'anthropic' does not support logprobs"));
    assert_true(contains(&r.ht.txn.refusal, "Provider 'anthropic' does not support logprobs"));
    assert_int_equal(r.ht.txn.nbody_parts, 0);
    /* An older host's txn has no refusal: the plugin refuses all the same. */
    r.ht.txn.size = offsetof(llmux_txn_t, adjusted);
    assert_int_equal(translate(f, &r), LLMUX_EINVAL);
    assert_int_equal(r.ht.txn.refusal.len, 0);
    run_end(f, &r);
  }
  for (i = 0; i < sizeof fine / sizeof fine[0]; i++) {
    snprintf(body, sizeof body, "{\"model\":\"x\",\"messages\":[],%s}", fine[i]);
    run_start(&r, body, 0);
    assert_int_equal(translate(f, &r), 0);
    assert_int_equal(r.ht.txn.refusal.len, 0);
    run_end(f, &r);
  }
}

static void temperature_above_one_is_clamped_and_said(void **state) {
  fixture_t *f = *state;
  run_t r;
  json_t *got = translated(f, &r, "{\"model\":\"x\",\"messages\":[],\"temperature\":1.7}");
  assert_true(json_number_value(json_object_get(got, "temperature")) == 1.0);
  assert_int_equal(r.ht.txn.adjusted.len, strlen("temperature"));
  assert_memory_equal(r.ht.txn.adjusted.base, "temperature", r.ht.txn.adjusted.len);
  json_decref(got);
  /* A retry starts afresh: still one name, not two. */
  r.ht.txn.attempt = 1;
  assert_int_equal(translate(f, &r), 0);
  assert_int_equal(r.ht.txn.adjusted.len, strlen("temperature"));
  /* An older host's txn: clamped all the same, nothing written beyond it. */
  r.ht.txn.size = offsetof(llmux_txn_t, adjusted);
  assert_int_equal(translate(f, &r), 0);
  assert_int_equal(r.ht.txn.adjusted.len, 0);
  got = sent_body(&r);
  assert_true(json_number_value(json_object_get(got, "temperature")) == 1.0);
  json_decref(got);
  run_end(f, &r);

  got = translated(f, &r, "{\"model\":\"x\",\"messages\":[],\"temperature\":1}");
  assert_true(json_number_value(json_object_get(got, "temperature")) == 1.0);
  assert_int_equal(r.ht.txn.adjusted.len, 0);
  json_decref(got);
  run_end(f, &r);
}

/* ---- models ---- */

static void model_listing_reads_anthropic_models(void **state) {
  fixture_t *f = *state;
  static const char body[] =
      "{\"data\":[{\"type\":\"model\",\"id\":\"claude-sonnet-4-5-20250929\",\"display_name\":"
      "\"Claude Sonnet 4.5\",\"created_at\":\"2025-09-29T00:00:00Z\"},{\"type\":\"model\",\"id\":"
      "\"claude-3-5-haiku-20241022\"}],\"has_more\":false}";
  llmux_buf_t names = {0};
  run_t r;
  run_start(&r, "{}", 0);
  assert_int_equal(f->vt->models_request(f->inst, &r.ht.txn), 0);
  assert_string_equal(r.ht.txn.method, "GET");
  assert_non_null(strstr(r.ht.txn.path.base, "/models"));
  assert_true(contains(&r.ht.txn.headers, "x-api-key: sk-ant-test-key\r\n"));
  assert_int_equal(f->vt->parse_models(f->inst, body, sizeof body - 1, &names), 0);
  assert_int_equal(names.len, sizeof "claude-sonnet-4-5-20250929" + sizeof "claude-3-5-haiku-20241022");
  assert_string_equal(names.base, "claude-sonnet-4-5-20250929");
  assert_string_equal(names.base + sizeof "claude-sonnet-4-5-20250929", "claude-3-5-haiku-20241022");
  assert_int_equal(f->vt->parse_models(f->inst, "[]", 2, &names), LLMUX_EUPSTREAM);
  llmux_buf_free(&names);
  run_end(f, &r);
}

/* ---- native passthrough (ABI 1.4, LLMUX_FEATURE_MESSAGES) ---- */

static void a_messages_body_passes_through_with_only_the_model_replaced(void **state) {
  fixture_t *f = *state;
  static const char body[] = "{\"max_tokens\":9, \"model\":\"claude\",\"messages\":[{\"role\":"
                             "\"user\",\"content\":\"\\u00e9  hi\"}],\"stream\":true}";
  static const char want[] = "{\"max_tokens\":9, \"model\":\"claude-sonnet-4-5\",\"messages\":"
                             "[{\"role\":\"user\",\"content\":\"\\u00e9  hi\"}],\"stream\":true}";
  llmux_host_txn_t ht;
  llmux_buf_t sent = {0};
  unsigned i, round;
  assert_true(LLMUX_PROVIDER_HAS(f->vt, features));
  assert_int_equal(f->vt->features(f->inst), LLMUX_FEATURE_MESSAGES);
  memset(&ht, 0, sizeof ht);
  ht.txn.size = sizeof ht.txn;
  ht.txn.endpoint = LLMUX_ENDPOINT_MESSAGES;
  ht.txn.body = (llmux_str_t){body, sizeof body - 1};
  ht.txn.model_value = (llmux_str_t){strstr(body, "\"claude"), 8};
  ht.txn.stream = 1;
  ht.txn.provider_model = "claude-sonnet-4-5";
  for (round = 0; round < 2; round++) { /* a retry builds the same bytes */
    llmux_host_txn_clear_out(&ht);
    ht.txn.attempt = round;
    assert_int_equal(f->vt->translate_request(f->inst, &ht.txn), 0);
    assert_int_equal(ht.txn.path.len, 9);
    assert_memory_equal(ht.txn.path.base, "/messages", 9);
    assert_true(contains(&ht.txn.headers, "x-api-key: sk-ant-test-key\r\n"));
    assert_true(contains(&ht.txn.headers, "anthropic-version: "));
    sent.len = 0;
    for (i = 0; i < ht.txn.nbody_parts; i++)
      llmux_buf_append(&sent, ht.txn.body_parts[i].base, ht.txn.body_parts[i].len);
    assert_int_equal(sent.len, sizeof want - 1);
    assert_memory_equal(sent.base, want, sent.len);
  }
  f->vt->txn_free(f->inst, &ht.txn);
  llmux_host_txn_free(&ht);
  llmux_buf_free(&sent);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(translates_a_full_conversation_with_tools_and_images),
    cmocka_unit_test(translation_is_idempotent_across_retries),
    cmocka_unit_test(fills_max_tokens_merges_turns_and_drops_empty_stops),
    cmocka_unit_test(declared_keys_set_version_and_default_max_tokens),
    cmocka_unit_test(untranslatable_requests_are_refused),
    cmocka_unit_test(plain_text_answer_becomes_a_chat_completion),
    cmocka_unit_test(plain_tool_use_becomes_tool_calls),
    cmocka_unit_test(plain_answer_that_is_not_a_message_is_refused),
    cmocka_unit_test(stream_of_text_becomes_chunks_whatever_the_byte_boundaries),
    cmocka_unit_test(stream_usage_is_reported_to_the_host),
    cmocka_unit_test(stream_tool_use_becomes_indexed_tool_call_deltas),
    cmocka_unit_test(stream_error_event_ends_the_stream_in_openai_shape),
    cmocka_unit_test(stream_cut_before_message_stop_ends_with_an_error),
    cmocka_unit_test(stream_garbage_is_refused_and_nothing_follows),
    cmocka_unit_test(plain_tool_use_without_input_has_empty_arguments),
    cmocka_unit_test(stream_tool_use_without_input_opens_a_call),
    cmocka_unit_test(usage_that_is_not_a_token_count_is_unknown_and_logged_once),
    cmocka_unit_test(usage_up_to_a_billion_tokens_is_believed),
    cmocka_unit_test(stream_usage_that_is_not_a_count_is_unknown_and_logged_once),
    cmocka_unit_test(stream_block_index_that_is_not_an_integer_is_refused),
    cmocka_unit_test(errors_are_classified_for_the_router),
    cmocka_unit_test(model_listing_reads_anthropic_models),
    cmocka_unit_test(json_schema_becomes_one_forced_tool_whose_schema_is_the_schema),
    cmocka_unit_test(json_object_is_an_object_tool_and_a_system_line),
    cmocka_unit_test(json_schema_names_anthropic_cannot_take_become_json_output),
    cmocka_unit_test(json_format_with_the_clients_tools_is_refused_unless_tool_choice_is_none),
    cmocka_unit_test(json_answer_is_the_forced_tools_input_as_content),
    cmocka_unit_test(json_answer_cut_by_max_tokens_or_without_the_tool_says_so),
    cmocka_unit_test(streamed_json_answer_is_content_deltas_whatever_the_byte_boundaries),
    cmocka_unit_test(streamed_json_answer_without_input_is_an_empty_object),
    cmocka_unit_test(logprobs_are_refused_in_words_naming_the_provider),
    cmocka_unit_test(temperature_above_one_is_clamped_and_said),
    cmocka_unit_test(a_messages_body_passes_through_with_only_the_model_replaced),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
