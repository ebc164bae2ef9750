/* The ollama plugin (build/plugins/ollama.so), loaded as the gateway loads
 * it and driven through the ABI with the host's own service table:
 * requests and responses recorded in Ollama's documented format live in
 * tests/data/ollama/, and each test feeds one in and checks what a client
 * (or Ollama) would receive. */
#include <dlfcn.h>
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "plugin/plugin.h"
#include "test_plugin_support.h"
#include "base/util.h"

#define DATA LLMUX_SOURCE_DIR "/tests/data/ollama/"
#define PLUGIN LLMUX_BUILD_DIR "/plugins/ollama.so"
#define BAD_USAGE_LOG "not a count of 0 to 1000000000 tokens"

static void *dl;
static const llmux_provider_t *vt;
static void *inst;

/* ---- fixture ------------------------------------------------------------ */

static const char *cfg_get(const llmux_provider_config_t *cfg, const char *key) {
  (void)cfg;
  if (strcmp(key, "keep_alive") == 0) return "10m";
  if (strcmp(key, "num_ctx") == 0) return "8192";
  return NULL;
}

static int group_setup(void **state) {
  llmux_provider_init_fn init;
  llmux_provider_config_t cfg;
  char err[128];
  (void)state;
  dl = dlopen(PLUGIN, RTLD_NOW | RTLD_LOCAL);
  if (dl == NULL) {
    fprintf(stderr, "test_plugin_ollama: %s not built (build target plugin_ollama): %s\n",
            PLUGIN, dlerror());
    return -1;
  }
  init = (llmux_provider_init_fn)dlsym(dl, LLMUX_PROVIDER_INIT_SYMBOL);
  if (init == NULL || init(llmux_host_api(), &vt) != 0) return -1;
  memset(&cfg, 0, sizeof cfg);
  cfg.size = sizeof cfg;
  cfg.name = "ollama";
  cfg.base_url = "http://127.0.0.1:11434";
  cfg.base_path = "";
  cfg.get = cfg_get;
  return vt->create(&cfg, &inst, err, sizeof err);
}

static int group_teardown(void **state) {
  (void)state;
  if (vt && inst) vt->destroy(inst);
  if (dl) dlclose(dl);
  return 0;
}

static char *slurp(const char *name, size_t *len) {
  char path[512];
  FILE *f;
  char *buf;
  long n;
  snprintf(path, sizeof path, DATA "%s", name);
  f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  n = ftell(f);
  fseek(f, 0, SEEK_SET);
  buf = malloc((size_t)n + 1);
  assert_non_null(buf);
  assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
  buf[n] = '\0';
  fclose(f);
  if (len) *len = (size_t)n;
  return buf;
}

/* One attempt: the host's txn with an emit that collects the client's bytes. */
typedef struct {
  llmux_host_txn_t ht;
  llmux_buf_t client;
  char *body;
} attempt_t;

static int collect(void *owner, const char *data, size_t len) {
  return llmux_buf_append(&((attempt_t *)owner)->client, data, len);
}

static void attempt_start(attempt_t *a, llmux_endpoint_t ep, const char *body_file, int stream) {
  size_t len;
  memset(a, 0, sizeof *a);
  a->body = slurp(body_file, &len);
  a->ht.owner = a;
  a->ht.emit = collect;
  llmux_host_txn_clear_out(&a->ht);
  a->ht.txn.size = sizeof a->ht.txn;
  a->ht.txn.endpoint = ep;
  a->ht.txn.body = (llmux_str_t){a->body, len};
  a->ht.txn.stream = stream;
  a->ht.txn.canonical_model = "llama-3.1-8b";
  a->ht.txn.provider_model = ep == LLMUX_ENDPOINT_EMBEDDINGS ? "nomic-embed-text" : "llama3.1";
  assert_int_equal(vt->translate_request(inst, &a->ht.txn), 0);
  a->ht.txn.status = 200;
}

static void attempt_end(attempt_t *a) {
  vt->txn_free(inst, &a->ht.txn);
  assert_null(a->ht.txn.data);
  llmux_host_txn_free(&a->ht);
  llmux_buf_free(&a->client);
  free(a->body);
}

/* The upstream body the plugin built, parsed. */
static json_t *upstream_json(const attempt_t *a) {
  const llmux_txn_t *t = &a->ht.txn;
  json_error_t e;
  json_t *j;
  assert_int_equal(t->nbody_parts, 1);
  j = json_loadb(t->body_parts[0].base, t->body_parts[0].len, 0, &e);
  assert_non_null(j);
  return j;
}

static void assert_json_file(const json_t *got, const char *file) {
  json_t *want;
  char path[512];
  snprintf(path, sizeof path, DATA "%s", file);
  want = json_load_file(path, 0, NULL);
  assert_non_null(want);
  if (!json_equal(got, want)) {
    char *g = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS);
    fprintf(stderr, "got:  %s\n", g);
    free(g);
    fail_msg("the upstream body differs from %s", file);
  }
  json_decref(want);
}

/* Feeds a recorded body to parse_response `step` bytes at a time. */
static int feed_file(attempt_t *a, const char *file, size_t step) {
  size_t len, off;
  char *data = slurp(file, &len);
  int rc = 0;
  for (off = 0; off < len && rc == 0; off += step) {
    size_t n = len - off < step ? len - off : step;
    rc = vt->parse_response(inst, &a->ht.txn, data + off, n, 0);
  }
  if (rc == 0) rc = vt->parse_response(inst, &a->ht.txn, NULL, 0, 1);
  free(data);
  return rc;
}

/* Feeds text[0..len) whole, then eof. */
static int feed_text(attempt_t *a, const char *text, size_t len) {
  int rc = vt->parse_response(inst, &a->ht.txn, text, len, 0);
  return rc ? rc : vt->parse_response(inst, &a->ht.txn, NULL, 0, 1);
}

/* The client's SSE frames as JSON (NULL for [DONE]); returns the count. */
static size_t sse_frames(const llmux_buf_t *b, json_t **out, size_t max) {
  size_t n = 0;
  const char *p = b->base, *end = b->base + b->len;
  while (p < end) {
    const char *sep = strstr(p, "\n\n");
    assert_non_null(sep);
    assert_memory_equal(p, "data: ", 6);
    assert_true(n < max);
    if ((size_t)(sep - p) == 12 && memcmp(p + 6, "[DONE]", 6) == 0) out[n++] = NULL;
    else {
      out[n] = json_loadb(p + 6, (size_t)(sep - p - 6), 0, NULL);
      assert_non_null(out[n]);
      n++;
    }
    p = sep + 2;
  }
  return n;
}

static void free_frames(json_t **f, size_t n) {
  size_t i;
  for (i = 0; i < n; i++) json_decref(f[i]);
}

static const json_t *delta_of(const json_t *chunk) {
  return json_object_get(json_array_get(json_object_get(chunk, "choices"), 0), "delta");
}

static const char *finish_of(const json_t *chunk) {
  return json_string_value(
      json_object_get(json_array_get(json_object_get(chunk, "choices"), 0), "finish_reason"));
}

/* ---- requests ------------------------------------------------------------ */

static void chat_request_maps_messages_options_tools_images_and_format(void **state) {
  attempt_t a;
  json_t *up;
  (void)state;
  attempt_start(&a, LLMUX_ENDPOINT_CHAT, "chat_request.json", 1);
  assert_string_equal(a.ht.txn.path.base, "/api/chat");
  assert_null(a.ht.txn.method);
  assert_int_equal(a.ht.txn.headers.len, 0); /* no key: no Authorization */
  up = upstream_json(&a);
  assert_json_file(up, "chat_request.expected.json");
  json_decref(up);
  attempt_end(&a);
}

static void json_schema_becomes_format_and_tool_choice_none_drops_tools(void **state) {
  attempt_t a;
  json_t *up;
  (void)state;
  attempt_start(&a, LLMUX_ENDPOINT_CHAT, "schema_request.json", 0);
  up = upstream_json(&a);
  assert_json_file(up, "schema_request.expected.json");
  json_decref(up);
  attempt_end(&a);
}

static void embeddings_request_goes_to_api_embed(void **state) {
  attempt_t a;
  json_t *up;
  (void)state;
  attempt_start(&a, LLMUX_ENDPOINT_EMBEDDINGS, "embed_request.json", 0);
  assert_string_equal(a.ht.txn.path.base, "/api/embed");
  up = upstream_json(&a);
  assert_json_file(up, "embed_request.expected.json");
  json_decref(up);
  attempt_end(&a);
}

static void retranslation_is_idempotent(void **state) {
  attempt_t a;
  char *first;
  (void)state;
  attempt_start(&a, LLMUX_ENDPOINT_CHAT, "chat_request.json", 1);
  first = strndup(a.ht.txn.body_parts[0].base, a.ht.txn.body_parts[0].len);
  llmux_host_txn_clear_out(&a.ht);
  a.ht.txn.attempt = 1;
  assert_int_equal(vt->translate_request(inst, &a.ht.txn), 0);
  assert_int_equal(a.ht.txn.body_parts[0].len, strlen(first));
  assert_memory_equal(a.ht.txn.body_parts[0].base, first, strlen(first));
  assert_string_equal(a.ht.txn.path.base, "/api/chat");
  free(first);
  attempt_end(&a);
}

static void image_urls_that_are_not_data_urls_are_refused(void **state) {
  static const char body[] =
      "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
      "\"image_url\":{\"url\":\"https://example.com/cat.png\"}}]}]}";
  llmux_host_txn_t ht;
  (void)state;
  memset(&ht, 0, sizeof ht);
  ht.txn.endpoint = LLMUX_ENDPOINT_CHAT;
  ht.txn.body = (llmux_str_t){body, sizeof body - 1};
  ht.txn.provider_model = "llava";
  assert_int_equal(vt->translate_request(inst, &ht.txn), LLMUX_EINVAL);
  vt->txn_free(inst, &ht.txn);
  llmux_host_txn_free(&ht);
}

/* ---- what Ollama lacks: emulated, refused or mapped ---------------------- */

/* Translates an inline body; returns translate_request's result. */
static int start_inline(attempt_t *a, const char *body, int stream) {
  size_t len = strlen(body);
  memset(a, 0, sizeof *a);
  a->body = malloc(len + 1);
  assert_non_null(a->body);
  memcpy(a->body, body, len + 1);
  a->ht.owner = a;
  a->ht.emit = collect;
  llmux_host_txn_clear_out(&a->ht);
  a->ht.txn.size = sizeof a->ht.txn;
  a->ht.txn.endpoint = LLMUX_ENDPOINT_CHAT;
  a->ht.txn.body = (llmux_str_t){a->body, len};
  a->ht.txn.stream = stream;
  a->ht.txn.canonical_model = "llama-3.1-8b";
  a->ht.txn.provider_model = "llama3.1";
  a->ht.txn.status = 200;
  return vt->translate_request(inst, &a->ht.txn);
}

static int refusal_is(const attempt_t *a, const char *want) {
  const llmux_buf_t *r = &a->ht.txn.refusal;
  return r->len == strlen(want) && memcmp(r->base, want, r->len) == 0;
}

#define TWO_TOOLS                                                                      \
  "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":" \
  "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}}}},{\"type\":"       \
  "\"function\",\"function\":{\"name\":\"get_time\"}}]"

static const char *tool_name_at(const json_t *req, size_t i) {
  return json_string_value(json_object_get(
      json_object_get(json_array_get(json_object_get(req, "tools"), i), "function"), "name"));
}

static const char *message_text(const json_t *req, size_t i, const char *role) {
  const json_t *m = json_array_get(json_object_get(req, "messages"), i);
  assert_string_equal(json_string_value(json_object_get(m, "role")), role);
  return json_string_value(json_object_get(m, "content"));
}

static void named_tool_choice_sends_only_that_tool_and_says_so(void **state) {
  attempt_t a;
  json_t *req;
  (void)state;
  assert_int_equal(start_inline(&a, "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":"
                                    "\"Be brief.\"},{\"role\":\"user\",\"content\":\"Time?\"}],"
                                    TWO_TOOLS ",\"tool_choice\":{\"type\":\"function\","
                                    "\"function\":{\"name\":\"get_time\"}}}", 0), 0);
  req = upstream_json(&a);
  assert_int_equal(json_array_size(json_object_get(req, "tools")), 1);
  assert_string_equal(tool_name_at(req, 0), "get_time");
  assert_int_equal(json_array_size(json_object_get(req, "messages")), 2);
  assert_string_equal(message_text(req, 0, "system"),
                      "Be brief.\n\nYou must answer by calling the tool `get_time`.");
  assert_null(json_object_get(req, "tool_choice")); /* Ollama has no such field */
  json_decref(req);
  attempt_end(&a);
}

static void required_tool_choice_sends_every_tool_and_a_system_line(void **state) {
  attempt_t a;
  json_t *req;
  (void)state;
  assert_int_equal(start_inline(&a, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
                                    "\"Hi\"}]," TWO_TOOLS ",\"tool_choice\":\"required\"}", 1), 0);
  req = upstream_json(&a);
  assert_int_equal(json_array_size(json_object_get(req, "tools")), 2);
  assert_string_equal(tool_name_at(req, 0), "get_weather");
  assert_string_equal(message_text(req, 0, "system"),
                      "You must answer by calling one or more of the provided tools.");
  assert_string_equal(message_text(req, 1, "user"), "Hi");
  json_decref(req);
  attempt_end(&a);
  /* auto (or none given): every tool, nothing said */
  assert_int_equal(start_inline(&a, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
                                    "\"Hi\"}]," TWO_TOOLS ",\"tool_choice\":\"auto\"}", 0), 0);
  req = upstream_json(&a);
  assert_int_equal(json_array_size(json_object_get(req, "tools")), 2);
  assert_int_equal(json_array_size(json_object_get(req, "messages")), 1);
  json_decref(req);
  attempt_end(&a);
  /* a forced choice without tools is nothing to force */
  assert_int_equal(start_inline(&a, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
                                    "\"Hi\"}],\"tool_choice\":\"required\"}", 0), 0);
  req = upstream_json(&a);
  assert_null(json_object_get(req, "tools"));
  assert_int_equal(json_array_size(json_object_get(req, "messages")), 1);
  json_decref(req);
  attempt_end(&a);
}

static void tool_choice_naming_a_missing_tool_is_refused_in_words(void **state) {
  attempt_t a;
  (void)state;
  assert_int_equal(start_inline(&a, "{\"model\":\"m\",\"messages\":[]," TWO_TOOLS
                                    ",\"tool_choice\":{\"type\":\"function\",\"function\":"
                                    "{\"name\":\"nope\"}}}", 0), LLMUX_EINVAL);
  assert_true(refusal_is(&a, "Provider 'ollama': tool_choice names the function 'nope', which "
                             "is not in tools"));
  attempt_end(&a);
}

static void web_image_urls_are_refused_in_words(void **state) {
  static const char *const urls[] = {"https://example.com/cat.png", "http://x/y.jpg",
                                     "HTTPS://EXAMPLE.COM/A.PNG"};
  char body[512];
  attempt_t a;
  size_t i;
  (void)state;
  for (i = 0; i < sizeof urls / sizeof urls[0]; i++) {
    snprintf(body, sizeof body, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
             "[{\"type\":\"text\",\"text\":\"What is it?\"},{\"type\":\"image_url\",\"image_url\":"
             "{\"url\":\"%s\"}}]}]}", urls[i]);
    assert_int_equal(start_inline(&a, body, 0), LLMUX_EINVAL);
    assert_true(refusal_is(&a, "Provider 'ollama' takes only inline images (data: URLs); llmux "
                               "does not fetch image URLs"));
    attempt_end(&a);
  }
  /* Not a URL at all: refused, without a claim about fetching. */
  assert_int_equal(start_inline(&a, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
                                    "[{\"type\":\"image_url\",\"image_url\":{\"url\":\"ftp://x\"}}]}]}",
                                0), LLMUX_EINVAL);
  assert_int_equal(a.ht.txn.refusal.len, 0);
  attempt_end(&a);
}

static void logprobs_map_to_ollamas_fields(void **state) {
  static const struct { const char *ask; int logprobs; json_int_t top; } t[] = {
    {"\"logprobs\":true", 1, -1},
    {"\"logprobs\":true,\"top_logprobs\":3", 1, 3},
    {"\"logprobs\":true,\"top_logprobs\":99", 1, 20},
    {"\"top_logprobs\":2", 1, 2},
    {"\"logprobs\":false", 0, -1},
    {"\"logprobs\":false,\"top_logprobs\":0", 0, -1},
    {"\"logprobs\":\"yes\",\"top_logprobs\":-4", 0, -1},
  };
  char body[256];
  attempt_t a;
  size_t i;
  (void)state;
  for (i = 0; i < sizeof t / sizeof t[0]; i++) {
    json_t *req;
    snprintf(body, sizeof body, "{\"model\":\"m\",\"messages\":[],%s}", t[i].ask);
    assert_int_equal(start_inline(&a, body, 0), 0);
    req = upstream_json(&a);
    assert_int_equal(json_is_true(json_object_get(req, "logprobs")), t[i].logprobs);
    if (t[i].top < 0) assert_null(json_object_get(req, "top_logprobs"));
    else assert_int_equal(json_integer_value(json_object_get(req, "top_logprobs")), t[i].top);
    json_decref(req);
    attempt_end(&a);
  }
}

/* Two tokens as Ollama reports them: the first with bytes and an
 * alternative, the second without bytes (llmux adds its own) and with a
 * garbage alternative; then an entry that is not a token (skipped). */
#define OLLAMA_LOGPROBS                                                                      \
  "\"logprobs\":[{\"token\":\"Hel\",\"logprob\":-0.25,\"bytes\":[72,101,108],\"top_logprobs\":" \
  "[{\"token\":\"Hel\",\"logprob\":-0.25,\"bytes\":[72,101,108]},{\"token\":\"Hi\","          \
  "\"logprob\":-1.5}]},{\"token\":\"lo\",\"logprob\":0,\"bytes\":[300],\"top_logprobs\":"     \
  "[{\"token\":7}]},{\"token\":null,\"logprob\":-1}]"

static void assert_openai_logprobs(const json_t *lp) {
  const json_t *content = json_object_get(lp, "content"), *e0, *e1, *top;
  json_t *bytes0 = json_pack("[iii]", 72, 101, 108), *bytes1 = json_pack("[ii]", 108, 111);
  assert_int_equal(json_array_size(content), 2);
  e0 = json_array_get(content, 0);
  e1 = json_array_get(content, 1);
  assert_string_equal(json_string_value(json_object_get(e0, "token")), "Hel");
  assert_true(json_real_value(json_object_get(e0, "logprob")) == -0.25);
  assert_true(json_equal(json_object_get(e0, "bytes"), bytes0));
  top = json_object_get(e0, "top_logprobs");
  assert_int_equal(json_array_size(top), 2);
  assert_string_equal(json_string_value(json_object_get(json_array_get(top, 1), "token")), "Hi");
  assert_true(json_number_value(json_object_get(json_array_get(top, 1), "logprob")) == -1.5);
  assert_true(json_is_array(json_object_get(json_array_get(top, 1), "bytes")));
  assert_string_equal(json_string_value(json_object_get(e1, "token")), "lo");
  assert_true(json_number_value(json_object_get(e1, "logprob")) == 0);
  assert_true(json_equal(json_object_get(e1, "bytes"), bytes1)); /* 300 is no byte */
  assert_int_equal(json_array_size(json_object_get(e1, "top_logprobs")), 0);
  json_decref(bytes0);
  json_decref(bytes1);
}

static void plain_answer_logprobs_become_openais_content_list(void **state) {
  static const char answer[] =
      "{\"model\":\"llama3.1\",\"created_at\":\"2024-08-07T03:57:33Z\",\"message\":{\"role\":"
      "\"assistant\",\"content\":\"Hello\"}," OLLAMA_LOGPROBS ",\"done\":true,\"done_reason\":"
      "\"stop\",\"prompt_eval_count\":3,\"eval_count\":2}";
  attempt_t a;
  json_t *root;
  (void)state;
  assert_int_equal(start_inline(&a, "{\"model\":\"m\",\"messages\":[],\"logprobs\":true,"
                                    "\"top_logprobs\":2}", 0), 0);
  assert_int_equal(feed_text(&a, answer, sizeof answer - 1), 0);
  root = json_loadb(a.client.base, a.client.len, 0, NULL);
  assert_non_null(root);
  assert_openai_logprobs(json_object_get(json_array_get(json_object_get(root, "choices"), 0),
                                         "logprobs"));
  assert_non_null(strstr(a.client.base, "\"logprob\":-0.25,")); /* not -0.25000000000000000 */
  json_decref(root);
  attempt_end(&a);
  /* Not asked for: null, whatever Ollama sends. */
  assert_int_equal(start_inline(&a, "{\"model\":\"m\",\"messages\":[]}", 0), 0);
  assert_int_equal(feed_text(&a, answer, sizeof answer - 1), 0);
  root = json_loadb(a.client.base, a.client.len, 0, NULL);
  assert_true(json_is_null(json_object_get(
      json_array_get(json_object_get(root, "choices"), 0), "logprobs")));
  json_decref(root);
  attempt_end(&a);
}

static void streamed_logprobs_go_with_the_chunk_of_their_line(void **state) {
  static const char lines[] =
      "{\"model\":\"llama3.1\",\"created_at\":\"2024-08-07T03:57:33Z\",\"message\":{\"role\":"
      "\"assistant\",\"content\":\"Hello\"}," OLLAMA_LOGPROBS ",\"done\":false}\n"
      "{\"model\":\"llama3.1\",\"created_at\":\"2024-08-07T03:57:33Z\",\"message\":{\"role\":"
      "\"assistant\",\"content\":\"\"},\"logprobs\":\"garbage\",\"done\":true,\"done_reason\":"
      "\"stop\",\"prompt_eval_count\":3,\"eval_count\":2}\n";
  size_t step;
  (void)state;
  for (step = 1; step <= sizeof lines; step += 37) {
    json_t *frames[16];
    size_t n, off, i;
    attempt_t a;
    int rc = 0;
    assert_int_equal(start_inline(&a, "{\"model\":\"m\",\"stream\":true,\"messages\":[],"
                                      "\"logprobs\":true,\"top_logprobs\":2}", 1), 0);
    for (off = 0; off < sizeof lines - 1 && rc == 0; off += step)
      rc = vt->parse_response(inst, &a.ht.txn, lines + off,
                              sizeof lines - 1 - off < step ? sizeof lines - 1 - off : step, 0);
    assert_int_equal(rc, 0);
    assert_int_equal(vt->parse_response(inst, &a.ht.txn, NULL, 0, 1), 0);
    n = sse_frames(&a.client, frames, 16);
    assert_int_equal(n, 4); /* role, content, finish, [DONE] */
    for (i = 0; i < 3; i++) {
      const json_t *lp = json_object_get(json_array_get(json_object_get(frames[i], "choices"), 0),
                                         "logprobs");
      if (i == 1) assert_openai_logprobs(lp);
      else assert_true(json_is_null(lp));
    }
    assert_string_equal(json_string_value(json_object_get(delta_of(frames[1]), "content")), "Hello");
    free_frames(frames, n);
    attempt_end(&a);
  }
}

/* ---- streamed chat -------------------------------------------------------- */

static void stream_fed_one_byte_at_a_time_becomes_chunks_then_done(void **state) {
  attempt_t a;
  json_t *f[16];
  size_t n, i;
  llmux_buf_t text = {0};
  (void)state;
  attempt_start(&a, LLMUX_ENDPOINT_CHAT, "chat_request.json", 1); /* include_usage */
  assert_int_equal(feed_file(&a, "chat_stream.ndjson", 1), 0);
  n = sse_frames(&a.client, f, 16);
  /* role, 3 contents, finish, usage, [DONE] */
  assert_int_equal(n, 7);
  assert_string_equal(json_string_value(json_object_get(delta_of(f[0]), "role")), "assistant");
  for (i = 0; i + 1 < n; i++) {
    assert_string_equal(json_string_value(json_object_get(f[i], "object")),
                        "chat.completion.chunk");
    assert_string_equal(json_string_value(json_object_get(f[i], "model")), "llama3.1");
    /* created_at 2024-08-07T03:57:33Z of the first line */
    assert_int_equal(json_integer_value(json_object_get(f[i], "created")), 1723003053);
    assert_string_equal(json_string_value(json_object_get(f[i], "id")),
                        json_string_value(json_object_get(f[0], "id")));
  }
  for (i = 1; i <= 3; i++) {
    assert_null(finish_of(f[i]));
    llmux_buf_appends(&text, json_string_value(json_object_get(delta_of(f[i]), "content")));
  }
  assert_string_equal(text.base, "Hello! \"Bonjour\"\n\xc3\xa9 \xe2\x9c\x93");
  assert_string_equal(finish_of(f[4]), "stop");
  assert_int_equal(json_array_size(json_object_get(f[5], "choices")), 0);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(f[5], "usage"),
                                                      "prompt_tokens")), 10);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(f[5], "usage"),
                                                      "completion_tokens")), 17);
  assert_null(f[6]);
  assert_int_equal(a.ht.txn.usage.prompt_tokens, 10);
  assert_int_equal(a.ht.txn.usage.completion_tokens, 17);
  assert_string_equal(a.ht.txn.served_model.base, "llama3.1");
  free_frames(f, n);
  llmux_buf_free(&text);
  attempt_end(&a);
}

/* The ids of one run of the tools stream, for comparing runs. */
static void run_tools_stream(size_t step, char ids[3][64]) {
  attempt_t a;
  json_t *f[16];
  size_t n, i;
  attempt_start(&a, LLMUX_ENDPOINT_CHAT, "schema_request.json", 1);
  assert_int_equal(feed_file(&a, "chat_tools_stream.ndjson", step), 0);
  n = sse_frames(&a.client, f, 16);
  assert_int_equal(n, 6); /* role, 3 tool calls, finish, [DONE] (no usage asked) */
  for (i = 0; i < 3; i++) {
    const json_t *tc = json_array_get(json_object_get(delta_of(f[i + 1]), "tool_calls"), 0);
    const char *id = json_string_value(json_object_get(tc, "id"));
    const char *args = json_string_value(
        json_object_get(json_object_get(tc, "function"), "arguments"));
    json_t *parsed = json_loads(args, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(tc, "index")), (json_int_t)i);
    assert_string_equal(json_string_value(json_object_get(tc, "type")), "function");
    assert_non_null(id);
    assert_memory_equal(id, "call_", 5);
    assert_true(json_is_object(parsed)); /* arguments: a string holding a JSON object */
    snprintf(ids[i], 64, "%s", id);
    json_decref(parsed);
  }
  assert_string_equal(
      json_string_value(json_object_get(json_object_get(
          json_array_get(json_object_get(delta_of(f[2]), "tool_calls"), 0), "function"), "arguments")),
      "{\"city\":\"Lyon\",\"units\":\"celsius\"}");
  assert_string_equal(finish_of(f[4]), "tool_calls");
  assert_null(f[5]);
  free_frames(f, n);
  attempt_end(&a);
}

static void streamed_tool_calls_keep_their_indexes_and_get_stable_ids(void **state) {
  char one[3][64], two[3][64];
  (void)state;
  run_tools_stream(1, one);
  run_tools_stream(7, two);
  assert_string_not_equal(one[0], one[1]);
  assert_string_not_equal(one[1], one[2]);
  assert_string_not_equal(one[0], one[2]);
  assert_string_equal(one[0], two[0]); /* same request, same ids */
  assert_string_equal(one[2], two[2]);
}

static void error_line_mid_stream_becomes_an_sse_error_event(void **state) {
  attempt_t a;
  json_t *f[8];
  size_t n;
  const char *msg;
  (void)state;
  attempt_start(&a, LLMUX_ENDPOINT_CHAT, "schema_request.json", 1);
  assert_int_equal(feed_file(&a, "chat_error_mid_stream.ndjson", 3), 0);
  n = sse_frames(&a.client, f, 8);
  assert_int_equal(n, 3); /* role, "Once", error; no [DONE] */
  assert_string_equal(json_string_value(json_object_get(delta_of(f[1]), "content")), "Once");
  msg = json_string_value(json_object_get(json_object_get(f[2], "error"), "message"));
  assert_non_null(msg);
  assert_non_null(strstr(msg, "llama runner process has terminated"));
  free_frames(f, n);
  attempt_end(&a);
}

static void stream_cut_before_done_ends_with_an_error_event(void **state) {
  static const char part[] =
      "{\"model\":\"llama3.1\",\"created_at\":\"2025-01-02T10:00:00Z\",\"message\":"
      "{\"role\":\"assistant\",\"content\":\"Hi\"},\"done\":false}\n{\"model\":\"lla";
  attempt_t a;
  json_t *f[8];
  size_t n;
  (void)state;
  attempt_start(&a, LLMUX_ENDPOINT_CHAT, "schema_request.json", 1);
  assert_int_equal(vt->parse_response(inst, &a.ht.txn, part, sizeof part - 1, 0), 0);
  assert_int_not_equal(vt->parse_response(inst, &a.ht.txn, NULL, 0, 1), 0);
  n = sse_frames(&a.client, f, 8);
  assert_int_equal(n, 3);
  assert_non_null(json_object_get(f[2], "error"));
  free_frames(f, n);
  attempt_end(&a);
}

static void garbage_line_is_refused(void **state) {
  attempt_t a;
  (void)state;
  attempt_start(&a, LLMUX_ENDPOINT_CHAT, "schema_request.json", 1);
  assert_int_equal(vt->parse_response(inst, &a.ht.txn, "<html>oops</html>\n", 18, 0),
                   LLMUX_EUPSTREAM);
  attempt_end(&a);
}

/* ---- plain chat and embeddings -------------------------------------------- */

static json_t *client_json(const attempt_t *a) {
  json_t *j = json_loadb(a->client.base, a->client.len, 0, NULL);
  assert_non_null(j);
  return j;
}

static void plain_answer_with_tool_calls_becomes_a_chat_completion(void **state) {
  attempt_t a;
  json_t *r;
  const json_t *choice, *msg, *calls, *usage;
  (void)state;
  attempt_start(&a, LLMUX_ENDPOINT_CHAT, "schema_request.json", 0);
  assert_int_equal(feed_file(&a, "chat_tools.json", 5), 0);
  r = client_json(&a);
  choice = json_array_get(json_object_get(r, "choices"), 0);
  msg = json_object_get(choice, "message");
  calls = json_object_get(msg, "tool_calls");
  usage = json_object_get(r, "usage");
  assert_string_equal(json_string_value(json_object_get(r, "object")), "chat.completion");
  assert_string_equal(json_string_value(json_object_get(choice, "finish_reason")), "tool_calls");
  assert_true(json_is_null(json_object_get(msg, "content")));
  assert_int_equal(json_array_size(calls), 2);
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(json_array_get(calls, 1), "function"), "arguments")),
                      "{\"tz\":\"Europe/Paris\"}");
  assert_string_not_equal(json_string_value(json_object_get(json_array_get(calls, 0), "id")),
                          json_string_value(json_object_get(json_array_get(calls, 1), "id")));
  assert_int_equal(json_integer_value(json_object_get(usage, "prompt_tokens")), 122);
  assert_int_equal(json_integer_value(json_object_get(usage, "completion_tokens")), 33);
  assert_int_equal(json_integer_value(json_object_get(usage, "total_tokens")), 155);
  json_decref(r);
  attempt_end(&a);
}

static void done_reason_length_becomes_finish_length(void **state) {
  attempt_t a;
  json_t *r;
  const json_t *choice;
  (void)state;
  attempt_start(&a, LLMUX_ENDPOINT_CHAT, "schema_request.json", 0);
  assert_int_equal(feed_file(&a, "chat_length.json", 1000), 0);
  r = client_json(&a);
  choice = json_array_get(json_object_get(r, "choices"), 0);
  assert_string_equal(json_string_value(json_object_get(choice, "finish_reason")), "length");
  assert_string_equal(json_string_value(json_object_get(json_object_get(choice, "message"),
                                                        "content")), "The sky is");
  json_decref(r);
  attempt_end(&a);
}

static void embeddings_become_an_openai_list(void **state) {
  attempt_t a;
  json_t *r;
  const json_t *data;
  (void)state;
  attempt_start(&a, LLMUX_ENDPOINT_EMBEDDINGS, "embed_request.json", 0);
  assert_int_equal(feed_file(&a, "embed_response.json", 11), 0);
  r = client_json(&a);
  data = json_object_get(r, "data");
  assert_string_equal(json_string_value(json_object_get(r, "object")), "list");
  assert_int_equal(json_array_size(data), 2);
  assert_int_equal(json_integer_value(json_object_get(json_array_get(data, 1), "index")), 1);
  assert_true(json_real_value(json_array_get(
                  json_object_get(json_array_get(data, 0), "embedding"), 1)) == -0.25);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "usage"),
                                                      "prompt_tokens")), 8);
  assert_string_equal(json_string_value(json_object_get(r, "model")), "nomic-embed-text");
  json_decref(r);
  attempt_end(&a);
}

static void embeddings_in_base64_are_little_endian_float32(void **state) {
  static const char body[] = "{\"model\":\"e\",\"input\":\"x\",\"encoding_format\":\"base64\"}";
  static const char resp[] = "{\"model\":\"e\",\"embeddings\":[[0.5,-0.25,1,0]]}";
  llmux_host_txn_t ht;
  attempt_t a;
  json_t *r;
  (void)state;
  memset(&a, 0, sizeof a);
  memset(&ht, 0, sizeof ht);
  ht.owner = &a;
  ht.emit = collect;
  ht.txn.endpoint = LLMUX_ENDPOINT_EMBEDDINGS;
  ht.txn.body = (llmux_str_t){body, sizeof body - 1};
  ht.txn.provider_model = "e";
  assert_int_equal(vt->translate_request(inst, &ht.txn), 0);
  assert_int_equal(vt->parse_response(inst, &ht.txn, resp, sizeof resp - 1, 1), 0);
  r = json_loadb(a.client.base, a.client.len, 0, NULL);
  assert_non_null(r);
  /* 0.5 = 00 00 00 3f, -0.25 = 00 00 80 be, 1 = 00 00 80 3f, 0 */
  assert_string_equal(json_string_value(json_object_get(json_array_get(
                          json_object_get(r, "data"), 0), "embedding")),
                      "AAAAPwAAgL4AAIA/AAAAAA==");
  json_decref(r);
  vt->txn_free(inst, &ht.txn);
  llmux_host_txn_free(&ht);
  llmux_buf_free(&a.client);
}

/* ---- untrusted numbers ---------------------------------------------------- */

/* Feeds text[0..len) `step` bytes at a time, then eof, capturing the log:
 * no assertion meanwhile. Returns the last result. */
static int feed_logged(attempt_t *a, const char *text, size_t len, size_t step, char **logged) {
  log_capture_t c;
  size_t off;
  int rc = 0;
  log_capture_start(&c);
  for (off = 0; off < len && rc == 0; off += step) {
    size_t n = len - off < step ? len - off : step;
    rc = vt->parse_response(inst, &a->ht.txn, text + off, n, 0);
  }
  if (rc == 0) rc = vt->parse_response(inst, &a->ht.txn, NULL, 0, 1);
  *logged = log_capture_end(&c);
  return rc;
}

static void counts_that_are_not_token_counts_are_unknown_and_logged_once(void **state) {
  static const struct {
    const char *prompt, *eval;
    int64_t in, out;
  } cases[] = {
    {"99999999999999999999999", "5", -1, 5},
    {"9223372036854775808", "5", -1, 5},
    {"9223372036854775807", "5", -1, 5},
    {"-1", "5", -1, 5},
    {"1e30", "5", -1, 5},
    {"\"12\"", "5", -1, 5},
    {"12.5", "5", -1, 5},
    {"7", "18446744073709551616", 7, -1},
    {"9223372036854775807", "9223372036854775807", -1, -1},
  };
  size_t i;
  (void)state;
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    llmux_buf_t line = {0};
    attempt_t a;
    json_t *r;
    char *logged;
    llmux_buf_printf(&line, "{\"model\":\"llama3.1\",\"created_at\":\"2025-01-02T10:00:01Z\","
                            "\"message\":{\"role\":\"assistant\",\"content\":\"hi\"},"
                            "\"done_reason\":\"stop\",\"done\":true,\"prompt_eval_count\":%s,"
                            "\"eval_count\":%s}\n", cases[i].prompt, cases[i].eval);
    attempt_start(&a, LLMUX_ENDPOINT_CHAT, "schema_request.json", 0);
    assert_int_equal(feed_logged(&a, line.base, line.len, line.len, &logged), 0);
    if (a.ht.txn.usage.prompt_tokens != cases[i].in ||
        a.ht.txn.usage.completion_tokens != cases[i].out)
      fail_msg("%s/%s: usage %lld/%lld", cases[i].prompt, cases[i].eval,
               (long long)a.ht.txn.usage.prompt_tokens,
               (long long)a.ht.txn.usage.completion_tokens);
    if (occurrences(logged, BAD_USAGE_LOG) != 1)
      fail_msg("%s/%s: logged\n%s", cases[i].prompt, cases[i].eval, logged);
    /* the client still gets its answer, unknown counts as 0 */
    r = client_json(&a);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "usage"),
                                                        "total_tokens")),
                     (cases[i].in < 0 ? 0 : cases[i].in) + (cases[i].out < 0 ? 0 : cases[i].out));
    json_decref(r);
    free(logged);
    llmux_buf_free(&line);
    attempt_end(&a);
  }
}

static void stream_with_bad_counts_ends_normally_and_logs_once(void **state) {
  attempt_t a;
  json_t *f[8];
  size_t len, n;
  char *body = slurp("chat_stream_bad_counts.ndjson", &len), *logged;
  (void)state;
  attempt_start(&a, LLMUX_ENDPOINT_CHAT, "chat_request.json", 1); /* include_usage */
  assert_int_equal(feed_logged(&a, body, len, 1, &logged), 0);
  n = sse_frames(&a.client, f, 8);
  /* role, content, finish, usage, [DONE] */
  assert_int_equal(n, 5);
  assert_string_equal(json_string_value(json_object_get(delta_of(f[1]), "content")), "Hi");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(f[3], "usage"),
                                                      "total_tokens")), 0);
  assert_null(f[4]);
  assert_int_equal(a.ht.txn.usage.prompt_tokens, -1);
  assert_int_equal(a.ht.txn.usage.completion_tokens, -1);
  if (occurrences(logged, BAD_USAGE_LOG) != 1) fail_msg("logged\n%s", logged);
  free_frames(f, n);
  free(logged);
  free(body);
  attempt_end(&a);
}

static void embeddings_with_a_bad_count_still_answer(void **state) {
  static const char resp[] =
      "{\"model\":\"nomic-embed-text\",\"embeddings\":[[0.5,1]],\"prompt_eval_count\":1e30}";
  attempt_t a;
  json_t *r;
  char *logged;
  (void)state;
  attempt_start(&a, LLMUX_ENDPOINT_EMBEDDINGS, "embed_request.json", 0);
  assert_int_equal(feed_logged(&a, resp, sizeof resp - 1, 5, &logged), 0);
  r = client_json(&a);
  assert_int_equal(json_array_size(json_object_get(r, "data")), 1);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "usage"),
                                                      "prompt_tokens")), 0);
  assert_int_equal(a.ht.txn.usage.prompt_tokens, -1);
  if (occurrences(logged, BAD_USAGE_LOG) != 1) fail_msg("logged\n%s", logged);
  json_decref(r);
  free(logged);
  attempt_end(&a);
}

/* A created_at that is not a plausible date gives the time of the answer
 * (any time after 2023, below), not a number made of its digits. */
static void created_at_that_is_not_a_date_is_not_believed(void **state) {
  static const char *const dates[] = {
    "99999999999-01-01T00:00:00Z", "2024-08-07T99:99:99Z", "1900-01-01T00:00:00Z",
    "2024-8-7T03:57:33Z", "yesterday", "",
  };
  size_t i;
  (void)state;
  for (i = 0; i < sizeof dates / sizeof dates[0]; i++) {
    llmux_buf_t line = {0};
    attempt_t a;
    json_t *r;
    llmux_buf_printf(&line, "{\"model\":\"llama3.1\",\"created_at\":\"%s\",\"message\":"
                            "{\"role\":\"assistant\",\"content\":\"hi\"},\"done\":true}\n",
                     dates[i]);
    attempt_start(&a, LLMUX_ENDPOINT_CHAT, "schema_request.json", 0);
    assert_int_equal(feed_text(&a, line.base, line.len), 0);
    r = client_json(&a);
    if (json_integer_value(json_object_get(r, "created")) < 1700000000)
      fail_msg("created_at %s became %lld", dates[i],
               (long long)json_integer_value(json_object_get(r, "created")));
    json_decref(r);
    llmux_buf_free(&line);
    attempt_end(&a);
  }
}

/* ---- errors and model listing -------------------------------------------- */

static void unknown_model_says_to_pull_it(void **state) {
  llmux_txn_t txn;
  llmux_error_info_t e;
  size_t len;
  char *body = slurp("error_model_not_found.json", &len);
  (void)state;
  memset(&txn, 0, sizeof txn);
  memset(&e, 0, sizeof e);
  txn.status = 404;
  txn.provider_model = "llama9";
  assert_int_equal(vt->classify_error(inst, &txn, body, len, &e), 0);
  assert_int_equal(e.cls, LLMUX_FAIL_MODEL_NOT_FOUND);
  assert_true(e.retry_elsewhere);
  assert_string_equal(e.message.base, "model 'llama9' is not pulled: run `ollama pull llama9`");
  llmux_buf_free(&e.message);
  free(body);
}

static void other_errors_are_classified_for_the_router(void **state) {
  static const struct { int status; const char *body; llmux_fail_class_t cls; int elsewhere, same; }
  cases[] = {
    {503, "{\"error\":\"server busy, please try again.\"}", LLMUX_FAIL_OVERLOADED, 1, 1},
    {500, "{\"error\":\"llama runner process has terminated\"}", LLMUX_FAIL_SERVER, 1, 1},
    {500, "{\"error\":\"model requires more system memory (9 GiB) than is available\"}",
     LLMUX_FAIL_SERVER, 1, 0},
    {400, "{\"error\":\"registry.ollama.ai/library/gemma:2b does not support tools\"}",
     LLMUX_FAIL_BAD_REQUEST, 1, 0},
    {400, "{\"error\":\"invalid options\"}", LLMUX_FAIL_BAD_REQUEST, 0, 0},
    {401, "{\"error\":\"unauthorized\"}", LLMUX_FAIL_AUTH, 1, 0},
  };
  size_t i;
  (void)state;
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    llmux_txn_t txn;
    llmux_error_info_t e;
    memset(&txn, 0, sizeof txn);
    memset(&e, 0, sizeof e);
    txn.status = cases[i].status;
    txn.provider_model = "m";
    vt->classify_error(inst, &txn, cases[i].body, strlen(cases[i].body), &e);
    assert_int_equal(e.cls, cases[i].cls);
    assert_int_equal(e.retry_elsewhere, cases[i].elsewhere);
    assert_int_equal(e.retry_same, cases[i].same);
    assert_non_null(e.message.base);
    assert_null(strchr(e.message.base, '{')); /* Ollama's words, not its JSON */
    llmux_buf_free(&e.message);
  }
}

static void connection_refused_says_to_start_ollama(void **state) {
  llmux_buf_t out = {0};
  (void)state;
  assert_int_equal(vt->explain_error(inst, LLMUX_ECONNREFUSED, "connection refused", &out), 0);
  /* The advice reaches API clients: it names no address. */
  assert_string_equal(out.base, "Ollama is not running: start it with `ollama serve`");
  out.len = 0;
  assert_int_not_equal(vt->explain_error(inst, LLMUX_ETLS, "tls", &out), 0);
  assert_int_equal(out.len, 0);
  llmux_buf_free(&out);
}

static void models_are_listed_from_api_tags(void **state) {
  llmux_host_txn_t ht;
  llmux_buf_t names = {0};
  size_t len;
  char *body = slurp("tags.json", &len);
  static const char want[] = "llama3.1:latest\0nomic-embed-text:latest";
  (void)state;
  memset(&ht, 0, sizeof ht);
  assert_int_equal(vt->models_request(inst, &ht.txn), 0);
  assert_string_equal(ht.txn.method, "GET");
  assert_string_equal(ht.txn.path.base, "/api/tags");
  assert_int_equal(vt->parse_models(inst, body, len, &names), 0);
  assert_int_equal(names.len, sizeof want);
  assert_memory_equal(names.base, want, sizeof want);
  assert_int_not_equal(vt->parse_models(inst, "[]", 2, &names), 0);
  llmux_host_txn_free(&ht);
  llmux_buf_free(&names);
  free(body);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(chat_request_maps_messages_options_tools_images_and_format),
    cmocka_unit_test(json_schema_becomes_format_and_tool_choice_none_drops_tools),
    cmocka_unit_test(embeddings_request_goes_to_api_embed),
    cmocka_unit_test(retranslation_is_idempotent),
    cmocka_unit_test(image_urls_that_are_not_data_urls_are_refused),
    cmocka_unit_test(stream_fed_one_byte_at_a_time_becomes_chunks_then_done),
    cmocka_unit_test(streamed_tool_calls_keep_their_indexes_and_get_stable_ids),
    cmocka_unit_test(error_line_mid_stream_becomes_an_sse_error_event),
    cmocka_unit_test(stream_cut_before_done_ends_with_an_error_event),
    cmocka_unit_test(garbage_line_is_refused),
    cmocka_unit_test(plain_answer_with_tool_calls_becomes_a_chat_completion),
    cmocka_unit_test(done_reason_length_becomes_finish_length),
    cmocka_unit_test(embeddings_become_an_openai_list),
    cmocka_unit_test(embeddings_in_base64_are_little_endian_float32),
    cmocka_unit_test(counts_that_are_not_token_counts_are_unknown_and_logged_once),
    cmocka_unit_test(stream_with_bad_counts_ends_normally_and_logs_once),
    cmocka_unit_test(embeddings_with_a_bad_count_still_answer),
    cmocka_unit_test(created_at_that_is_not_a_date_is_not_believed),
    cmocka_unit_test(unknown_model_says_to_pull_it),
    cmocka_unit_test(other_errors_are_classified_for_the_router),
    cmocka_unit_test(connection_refused_says_to_start_ollama),
    cmocka_unit_test(models_are_listed_from_api_tags),
    cmocka_unit_test(named_tool_choice_sends_only_that_tool_and_says_so),
    cmocka_unit_test(required_tool_choice_sends_every_tool_and_a_system_line),
    cmocka_unit_test(tool_choice_naming_a_missing_tool_is_refused_in_words),
    cmocka_unit_test(web_image_urls_are_refused_in_words),
    cmocka_unit_test(logprobs_map_to_ollamas_fields),
    cmocka_unit_test(plain_answer_logprobs_become_openais_content_list),
    cmocka_unit_test(streamed_logprobs_go_with_the_chunk_of_their_line),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
