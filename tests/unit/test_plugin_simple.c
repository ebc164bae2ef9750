/* The `simple` embedding plugin, loaded from the build tree like the
 * gateway loads it, driven through the real host table: unit-length,
 * deterministic vectors whose length the `dimension` key sets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "plugin/plugin.h"
#include "base/util.h"

#define PLUGIN_DIR LLMUX_BUILD_DIR "/plugins"

typedef struct fixture_s {
  llmux_plugins_t set;
  const llmux_provider_t *vt;
  llmux_provider_config_t cfg;
  const char *dimension;   /* the `dimension` key, NULL: unset */
  void *instance;
  llmux_buf_t out;         /* what the plugin emitted */
} fixture_t;

static fixture_t *current;

static const char *cfg_get(const llmux_provider_config_t *cfg, const char *key) {
  const llmux_config_key_t *k;
  (void)cfg;
  if (strcmp(key, "dimension") == 0 && current->dimension) return current->dimension;
  for (k = current->vt->config; k && k->name; k++)
    if (strcmp(k->name, key) == 0) return k->default_value;
  return NULL;
}

static int collect(void *owner, const char *data, size_t len) {
  return llmux_buf_append(owner, data, len);
}

static int setup(void **state) {
  static fixture_t f;
  char err[512];
  llmux_plugin_t *p;
  memset(&f, 0, sizeof f);
  if (access(PLUGIN_DIR "/simple.so", R_OK) != 0) {
    fprintf(stderr, "skipping: %s/simple.so is not built (target plugin_simple)\n",
            PLUGIN_DIR);
    *state = NULL;
    return 0;
  }
  llmux_plugins_init(&f.set, PLUGIN_DIR);
  p = llmux_plugins_get(&f.set, "simple", err, sizeof err);
  if (p == NULL) {
    fprintf(stderr, "%s\n", err);
    return -1;
  }
  f.vt = p->vt;
  f.cfg.size = sizeof f.cfg;
  f.cfg.name = "simple";
  f.cfg.base_path = "";
  f.cfg.get = cfg_get;
  current = &f;
  *state = &f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  if (f == NULL) return 0;
  if (f->instance) f->vt->destroy(f->instance);
  llmux_buf_free(&f->out);
  llmux_plugins_free(&f->set);
  return 0;
}

#define NEED_PLUGIN(f) \
  do { if ((f) == NULL) skip(); } while (0)

static int create(fixture_t *f, const char *dimension, char *err, size_t errlen) {
  f->dimension = dimension;
  if (f->instance) f->vt->destroy(f->instance);
  f->instance = NULL;
  return f->vt->create(&f->cfg, &f->instance, err, errlen);
}

/* One embeddings request through respond_local; the answer in f->out. */
static int embed(fixture_t *f, llmux_endpoint_t ep, const char *body) {
  llmux_host_txn_t ht;
  int rc;
  memset(&ht, 0, sizeof ht);
  ht.txn.size = sizeof ht.txn;
  ht.txn.endpoint = ep;
  ht.txn.body = (llmux_str_t){body, strlen(body)};
  ht.txn.canonical_model = "simple-embed";
  ht.txn.provider_model = "simple-embed";
  ht.owner = &f->out;
  ht.emit = collect;
  llmux_host_txn_clear_out(&ht);
  f->out.len = 0;
  rc = f->vt->respond_local(f->instance, &ht.txn);
  if (f->vt->txn_free) f->vt->txn_free(f->instance, &ht.txn);
  llmux_host_txn_free(&ht);
  return rc;
}

/* The i-th vector of the answer, as doubles (n of them); NULL if none. */
static double *vector(fixture_t *f, size_t i, size_t *n) {
  json_t *root = json_loadb(f->out.base, f->out.len, 0, NULL), *v, *x;
  double *out = NULL;
  size_t k;
  v = json_object_get(json_array_get(json_object_get(root, "data"), i), "embedding");
  if (json_is_array(v)) {
    *n = json_array_size(v);
    out = llmux_xcalloc(*n + 1, sizeof *out);
    json_array_foreach(v, k, x) out[k] = json_number_value(x);
  }
  json_decref(root);
  return out;
}

static double dot(const double *a, const double *b, size_t n) {
  double s = 0;
  size_t i;
  for (i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

static void the_plugin_offers_respond_local_at_abi_1_2(void **state) {
  fixture_t *f = *state;
  NEED_PLUGIN(f);
  assert_string_equal(f->vt->name, "simple");
  assert_int_equal(f->vt->size, sizeof(llmux_provider_t));
  assert_true(f->vt->abi_minor >= 2);
  assert_non_null(f->vt->respond_local);
}

static void every_vector_has_unit_length(void **state) {
  fixture_t *f = *state;
  char err[256];
  size_t i, n;
  NEED_PLUGIN(f);
  assert_int_equal(create(f, NULL, err, sizeof err), 0);
  assert_int_equal(embed(f, LLMUX_ENDPOINT_EMBEDDINGS,
                         "{\"model\":\"simple-embed\",\"encoding_format\":\"float\",\"input\":"
                         "[\"hello world\",\"\",\"Zürich, 42!\",\"a\",[1,2,3]]}"),
                   0);
  for (i = 0; i < 5; i++) {
    double *v = vector(f, i, &n);
    assert_non_null(v);
    assert_int_equal(n, 256); /* the declared default */
    assert_true(dot(v, v, n) > 1 - 1e-5 && dot(v, v, n) < 1 + 1e-5);
    free(v);
  }
  assert_null(vector(f, 5, &n));
}

static void the_same_text_always_gives_the_same_vector(void **state) {
  fixture_t *f = *state;
  llmux_buf_t first = {0};
  char err[256];
  const char *body = "{\"model\":\"simple-embed\",\"input\":\"The quick brown fox\"}";
  double *a, *b, *c;
  size_t n;
  NEED_PLUGIN(f);
  assert_int_equal(create(f, "64", err, sizeof err), 0);
  assert_int_equal(embed(f, LLMUX_ENDPOINT_EMBEDDINGS, body), 0);
  llmux_buf_append(&first, f->out.base, f->out.len);
  /* A fresh instance: nothing is cached between calls. */
  assert_int_equal(create(f, "64", err, sizeof err), 0);
  assert_int_equal(embed(f, LLMUX_ENDPOINT_EMBEDDINGS, body), 0);
  assert_int_equal(first.len, f->out.len);
  assert_memory_equal(first.base, f->out.base, first.len);
  /* Case and punctuation do not matter; other words do. */
  assert_int_equal(embed(f, LLMUX_ENDPOINT_EMBEDDINGS,
                         "{\"model\":\"m\",\"input\":[\"The quick brown fox\",\"the QUICK "
                         "brown fox.\",\"the quick brown dog\",\"stock market report\"]}"),
                   0);
  a = vector(f, 0, &n);
  b = vector(f, 1, &n);
  c = vector(f, 2, &n);
  assert_true(dot(a, b, n) > 0.99999);
  assert_true(dot(a, c, n) < 0.999);
  free(c);
  c = vector(f, 3, &n);
  assert_true(dot(a, c, n) < dot(a, b, n) - 0.5); /* unrelated text is far away */
  free(a);
  free(b);
  free(c);
  llmux_buf_free(&first);
}

static void the_dimension_key_sets_the_length(void **state) {
  fixture_t *f = *state;
  char err[256];
  double *v;
  size_t n;
  NEED_PLUGIN(f);
  assert_int_equal(create(f, "16", err, sizeof err), 0);
  assert_int_equal(embed(f, LLMUX_ENDPOINT_EMBEDDINGS, "{\"model\":\"m\",\"input\":\"x y\"}"), 0);
  v = vector(f, 0, &n);
  assert_int_equal(n, 16);
  free(v);
  /* A request may ask for fewer (OpenAI's `dimensions`), never for more. */
  assert_int_equal(embed(f, LLMUX_ENDPOINT_EMBEDDINGS,
                         "{\"model\":\"m\",\"input\":\"x y\",\"dimensions\":8}"), 0);
  v = vector(f, 0, &n);
  assert_int_equal(n, 8);
  assert_true(dot(v, v, n) > 1 - 1e-5 && dot(v, v, n) < 1 + 1e-5);
  free(v);
  assert_int_equal(embed(f, LLMUX_ENDPOINT_EMBEDDINGS,
                         "{\"model\":\"m\",\"input\":\"x\",\"dimensions\":17}"), LLMUX_EINVAL);
}

static void a_bad_dimension_is_refused_with_a_reason(void **state) {
  fixture_t *f = *state;
  char err[256] = "";
  NEED_PLUGIN(f);
  assert_int_equal(create(f, "0", err, sizeof err), LLMUX_ECONFIG);
  assert_non_null(strstr(err, "dimension must be between 1 and 65536"));
  assert_int_equal(create(f, "70000", err, sizeof err), LLMUX_ECONFIG);
}

static void base64_carries_the_same_floats(void **state) {
  fixture_t *f = *state;
  static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  char err[256];
  unsigned char bytes[64];
  size_t i, n, nb = 0;
  uint32_t acc = 0;
  int bits = 0;
  double *v;
  json_t *root;
  const char *b64;
  NEED_PLUGIN(f);
  assert_int_equal(create(f, "16", err, sizeof err), 0);
  assert_int_equal(embed(f, LLMUX_ENDPOINT_EMBEDDINGS, "{\"model\":\"m\",\"input\":\"fox\"}"), 0);
  v = vector(f, 0, &n);
  assert_int_equal(embed(f, LLMUX_ENDPOINT_EMBEDDINGS,
                         "{\"model\":\"m\",\"input\":\"fox\",\"encoding_format\":\"base64\"}"),
                   0);
  root = json_loadb(f->out.base, f->out.len, 0, NULL);
  b64 = json_string_value(
      json_object_get(json_array_get(json_object_get(root, "data"), 0), "embedding"));
  assert_non_null(b64);
  for (i = 0; b64[i] && b64[i] != '='; i++) {
    acc = (acc << 6) | (uint32_t)(strchr(tab, b64[i]) - tab);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      assert_true(nb < sizeof bytes);
      bytes[nb++] = (unsigned char)(acc >> bits);
    }
  }
  assert_int_equal(nb, 16 * 4);
  for (i = 0; i < 16; i++) {
    uint32_t u = (uint32_t)bytes[4 * i] | (uint32_t)bytes[4 * i + 1] << 8 |
                 (uint32_t)bytes[4 * i + 2] << 16 | (uint32_t)bytes[4 * i + 3] << 24;
    float x;
    memcpy(&x, &u, 4);
    assert_true((double)x - v[i] < 1e-7 && v[i] - (double)x < 1e-7);
  }
  json_decref(root);
  free(v);
}

static void usage_counts_words_and_the_model_is_named(void **state) {
  fixture_t *f = *state;
  char err[256];
  json_t *root;
  NEED_PLUGIN(f);
  assert_int_equal(create(f, "8", err, sizeof err), 0);
  assert_int_equal(embed(f, LLMUX_ENDPOINT_EMBEDDINGS,
                         "{\"model\":\"m\",\"input\":[\"one two\",\"three\"]}"), 0);
  root = json_loadb(f->out.base, f->out.len, 0, NULL);
  assert_string_equal(json_string_value(json_object_get(root, "object")), "list");
  assert_string_equal(json_string_value(json_object_get(root, "model")), "simple-embed");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(root, "usage"),
                                                      "prompt_tokens")), 3);
  json_decref(root);
}

static void chat_and_malformed_input_are_refused(void **state) {
  fixture_t *f = *state;
  char err[256];
  NEED_PLUGIN(f);
  assert_int_equal(create(f, NULL, err, sizeof err), 0);
  assert_int_equal(embed(f, LLMUX_ENDPOINT_CHAT, "{\"model\":\"m\",\"messages\":[]}"),
                   LLMUX_EINVAL);
  assert_int_equal(embed(f, LLMUX_ENDPOINT_EMBEDDINGS, "{\"model\":\"m\",\"input\":{}}"),
                   LLMUX_EINVAL);
  assert_int_equal(embed(f, LLMUX_ENDPOINT_EMBEDDINGS, "{\"model\":\"m\",\"input\":[]}"),
                   LLMUX_EINVAL);
  assert_int_equal(embed(f, LLMUX_ENDPOINT_EMBEDDINGS,
                         "{\"model\":\"m\",\"input\":\"x\",\"encoding_format\":\"hex\"}"),
                   LLMUX_EINVAL);
  assert_int_equal(f->out.len, 0); /* nothing was emitted */
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(the_plugin_offers_respond_local_at_abi_1_2),
    cmocka_unit_test(every_vector_has_unit_length),
    cmocka_unit_test(the_same_text_always_gives_the_same_vector),
    cmocka_unit_test(the_dimension_key_sets_the_length),
    cmocka_unit_test(a_bad_dimension_is_refused_with_a_reason),
    cmocka_unit_test(base64_carries_the_same_floats),
    cmocka_unit_test(usage_counts_words_and_the_model_is_named),
    cmocka_unit_test(chat_and_malformed_input_are_refused),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
