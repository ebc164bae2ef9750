/* The plugin ABI across versions, through the real loader and providers
 * build: a third party's 1.3 plugin names its provider's rate-limit
 * dialect and is read by it whatever the provider is called; plugins built
 * as ABI 1.2 and 1.0 still load, work, and offer no slot of a later ABI;
 * a section's ratelimit_headers wins over the plugin. Nothing is guessed
 * from a provider's name or host. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/util.h"
#include "config/config.h"
#include "plugin/providers.h"
#include "route/ratelimit.h"

#define TEST_PLUGINS LLMUX_BUILD_DIR "/tests/plugins"
#define WALL 1714564800000LL /* 2024-05-01T12:00:00Z */

typedef struct fixture_s {
  char dir[64];
  llmux_config_t *cfg;
  llmux_providers_t set;
  llmux_diag_t diag;
  int built;
} fixture_t;

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  assert_int_equal(fputs(text, f) >= 0, 1);
  assert_int_equal(fclose(f), 0);
}

/* A configuration whose providers/ holds `providers`, loaded and built
 * with instances created (plugins from the test plugin directory). */
static int build(fixture_t *f, const char *providers) {
  char path[128];
  snprintf(f->dir, sizeof f->dir, "/tmp/llmux-abi-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(path, sizeof path, "%s/llmux.ini", f->dir);
  write_file(path, "[server]\nlisten = 127.0.0.1:0\n[model m]\ntier = 1\n");
  snprintf(path, sizeof path, "%s/providers", f->dir);
  assert_int_equal(mkdir(path, 0700), 0);
  snprintf(path, sizeof path, "%s/providers/p.ini", f->dir);
  write_file(path, providers);
  snprintf(path, sizeof path, "%s/llmux.ini", f->dir);
  llmux_diag_init(&f->diag);
  if (llmux_config_load(path, &f->cfg, &f->diag) != 0) {
    llmux_diag_print(&f->diag, stderr);
    fail_msg("the test configuration does not load");
  }
  f->built = 1;
  return llmux_providers_build(&f->set, f->cfg, TEST_PLUGINS, LLMUX_PROVIDERS_CREATE, &f->diag);
}

static const llmux_provider_rt_t *provider(fixture_t *f, const char *name) {
  size_t i;
  for (i = 0; i < f->set.n; i++)
    if (strcmp(f->set.items[i].conf->name, name) == 0) return &f->set.items[i];
  fail_msg("no provider %s", name);
  return NULL;
}

static void remove_tree(const char *dir) {
  char path[128];
  snprintf(path, sizeof path, "%s/providers/p.ini", dir);
  unlink(path);
  snprintf(path, sizeof path, "%s/providers", dir);
  rmdir(path);
  snprintf(path, sizeof path, "%s/llmux.ini", dir);
  unlink(path);
  rmdir(dir);
}

static int setup(void **state) {
  static fixture_t f;
  memset(&f, 0, sizeof f);
  if (access(TEST_PLUGINS "/acme.so", R_OK) != 0 ||
      access(TEST_PLUGINS "/old_abi12.so", R_OK) != 0) {
    fprintf(stderr, "the test plugins are not built (targets testplugin_*)\n");
    return -1;
  }
  *state = &f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  if (!f->built) return 0;
  llmux_providers_free(&f->set);
  llmux_config_free(f->cfg);
  llmux_diag_free(&f->diag);
  remove_tree(f->dir);
  memset(f, 0, sizeof *f);
  return 0;
}

/* ---- a third party's 1.3 plugin ---------------------------------------- */

static void a_plugin_names_its_dialect_and_a_neutral_provider_is_read_by_it(void **state) {
  fixture_t *f = *state;
  const llmux_provider_rt_t *acme;
  llmux_rl_store_t *s = NULL;
  llmux_rl_key_t key = {"acme", "acme-70b"};
  llmux_rl_snapshot_t snap;
  /* Groq's meaning: x-ratelimit-*-requests count per day. */
  llmux_header_t h[] = {
    {{"x-ratelimit-limit-requests", 26}, {"14400", 5}},
    {{"x-ratelimit-remaining-requests", 30}, {"14370", 5}},
    {{"x-ratelimit-reset-requests", 26}, {"2m59.56s", 8}},
  };
  assert_int_equal(build(f, "[provider acme]\nplugin = acme\nbase_url = http://127.0.0.1:9/v1\n"
                            "[route acme m]\nid = acme-70b\n"), 0);
  acme = provider(f, "acme");
  assert_non_null(acme->instance);
  assert_true(LLMUX_PROVIDER_HAS(acme->plugin->vt, ratelimit_dialect));
  assert_int_equal(acme->rl_style, LLMUX_RL_STYLE_GROQ);

  /* What the proxy does with each answer's headers. */
  assert_int_equal(llmux_rl_memory_store_new(4, &s), 0);
  assert_int_equal(llmux_rl_sync_headers(s, &key, (llmux_rl_style_t)acme->rl_style, h, 3, 1000,
                                         WALL), 0);
  assert_int_equal(llmux_rl_snapshot(s, &key, 1000, &snap), 0);
  assert_true(snap.dims[LLMUX_RL_REQ_DAY].synced);
  assert_int_equal(snap.dims[LLMUX_RL_REQ_DAY].synced_remaining, 14370);
  assert_false(snap.dims[LLMUX_RL_REQ_MINUTE].synced);
  llmux_rl_store_destroy(s);
}

static void ratelimit_headers_in_the_section_wins_over_the_plugin(void **state) {
  fixture_t *f = *state;
  const llmux_provider_rt_t *acme;
  assert_int_equal(build(f, "[provider acme]\nplugin = acme\nbase_url = http://127.0.0.1:9/v1\n"
                            "ratelimit_headers = cerebras\n[route acme m]\nid = acme-70b\n"), 0);
  acme = provider(f, "acme");
  assert_int_equal(acme->rl_style, LLMUX_RL_STYLE_CEREBRAS);
  /* Cerebras counts prompt + max tokens against the limit up front. */
  assert_int_equal(llmux_rl_tokens_to_reserve((llmux_rl_style_t)acme->rl_style, 100, 4000, 0),
                   4100);
}

/* The shipped provider files with the built-in plugins: each provider's
 * headers are read in its own dialect, by its section or its plugin. */
static void the_shipped_providers_read_their_own_dialects(void **state) {
  static const struct { const char *name; llmux_rl_style_t style; } want[] = {
    {"groq", LLMUX_RL_STYLE_GROQ},           /* openai plugin, ratelimit_headers = groq */
    {"cerebras", LLMUX_RL_STYLE_CEREBRAS},   /* openai plugin, ratelimit_headers = cerebras */
    {"openai", LLMUX_RL_STYLE_OPENAI},       /* the openai plugin's own */
    {"openrouter", LLMUX_RL_STYLE_OPENAI},
    {"nvidia", LLMUX_RL_STYLE_OPENAI},
    {"anthropic", LLMUX_RL_STYLE_ANTHROPIC}, /* the anthropic plugin's own */
    {"ollama", LLMUX_RL_STYLE_GENERIC},      /* the ollama plugin declares none */
  };
  fixture_t *f = *state;
  size_t i;
  llmux_diag_init(&f->diag);
  if (llmux_config_load(LLMUX_SOURCE_DIR "/config/llmux.ini", &f->cfg, &f->diag) != 0) {
    llmux_diag_print(&f->diag, stderr);
    fail_msg("the shipped configuration does not load");
  }
  if (llmux_providers_build(&f->set, f->cfg, LLMUX_BUILD_DIR "/plugins", 0, &f->diag) != 0) {
    llmux_diag_print(&f->diag, stderr);
    fail_msg("the shipped providers do not build");
  }
  for (i = 0; i < LLMUX_COUNTOF(want); i++)
    if (provider(f, want[i].name)->rl_style != (int)want[i].style)
      fail_msg("%s: dialect %s, want %s", want[i].name,
               llmux_rl_style_name((llmux_rl_style_t)provider(f, want[i].name)->rl_style),
               llmux_rl_style_name(want[i].style));
  llmux_providers_free(&f->set);
  llmux_config_free(f->cfg);
  llmux_diag_free(&f->diag);
}

static void nothing_is_guessed_from_a_provider_name_or_host(void **state) {
  fixture_t *f = *state;
  /* Called groq, at Groq's host, on a plugin that declares no dialect:
   * generic, unless its section says groq. */
  assert_int_equal(build(f, "[provider groq]\nplugin = old_abi12\n"
                            "base_url = https://api.groq.com/openai/v1\n"
                            "[route groq m]\nid = llama\n"
                            "[provider cerebras]\nplugin = old_abi12\n"
                            "base_url = https://api.cerebras.ai/v1\nratelimit_headers = cerebras\n"
                            "[route cerebras m]\nid = llama\n"), 0);
  assert_int_equal(provider(f, "groq")->rl_style, LLMUX_RL_STYLE_GENERIC);
  assert_int_equal(provider(f, "cerebras")->rl_style, LLMUX_RL_STYLE_CEREBRAS);
}

static void an_unknown_ratelimit_headers_value_is_a_configuration_error(void **state) {
  fixture_t *f = *state;
  size_t i;
  int found = 0;
  assert_int_equal(build(f, "[provider acme]\nplugin = acme\nbase_url = http://127.0.0.1:9/v1\n"
                            "ratelimit_headers = acme\n[route acme m]\nid = x\n"),
                   LLMUX_ECONFIG);
  for (i = 0; i < f->diag.len; i++)
    found |= strstr(f->diag.items[i].message, "ratelimit_headers must be one of") != NULL;
  assert_true(found);
}

static void a_dialect_this_llmux_does_not_know_is_read_as_generic_with_a_warning(void **state) {
  fixture_t *f = *state;
  size_t i;
  int warned = 0;
  assert_int_equal(build(f, "[provider acme]\nplugin = acme_future\n"
                            "base_url = http://127.0.0.1:9/v1\n[route acme m]\nid = x\n"), 0);
  assert_int_equal(provider(f, "acme")->rl_style, LLMUX_RL_STYLE_GENERIC);
  for (i = 0; i < f->diag.len; i++)
    warned |= f->diag.items[i].severity == LLMUX_DIAG_WARNING &&
              strstr(f->diag.items[i].message, "'groq-2027'") != NULL;
  assert_true(warned);
}

/* ---- older plugins --------------------------------------------------------- */

static void a_1_2_plugin_loads_and_its_reserved_word_is_not_read_as_a_dialect(void **state) {
  fixture_t *f = *state;
  const llmux_provider_rt_t *rt;
  const llmux_provider_t *vt;
  llmux_buf_t advice = {0};
  assert_int_equal(build(f, "[provider old]\nplugin = old_abi12\n"
                            "base_url = http://127.0.0.1:9/v1\n[route old m]\nid = x\n"), 0);
  rt = provider(f, "old");
  vt = rt->plugin->vt;
  assert_non_null(rt->instance);
  assert_int_equal(vt->abi_minor, 2);
  assert_int_equal(vt->size, sizeof(llmux_provider_t));
  /* The word holds a pointer, but 1.2 did not define it. */
  assert_non_null(vt->ratelimit_dialect);
  assert_false(LLMUX_PROVIDER_HAS(vt, ratelimit_dialect));
  assert_int_equal(rt->rl_style, LLMUX_RL_STYLE_GENERIC);
  /* Its 1.1 slot is there and works; its 1.2 slot is not set. */
  assert_true(LLMUX_PROVIDER_HAS(vt, explain_error));
  assert_false(LLMUX_PROVIDER_HAS(vt, respond_local));
  assert_int_equal(vt->explain_error(rt->instance, LLMUX_ECONNREFUSED, "x", &advice), 0);
  assert_string_equal(advice.base, "the old plugin's advice");
  llmux_buf_free(&advice);
}

static void a_1_0_plugin_loads_and_offers_no_later_slot(void **state) {
  fixture_t *f = *state;
  const llmux_provider_rt_t *rt;
  const llmux_provider_t *vt;
  assert_int_equal(build(f, "[provider old]\nplugin = old_abi10\n"
                            "base_url = http://127.0.0.1:9/v1\n[route old m]\nid = x\n"), 0);
  rt = provider(f, "old");
  vt = rt->plugin->vt;
  assert_non_null(rt->instance);
  assert_int_equal(vt->size, offsetof(llmux_provider_t, explain_error));
  /* Nothing past its size is read: not even to see whether it is NULL. */
  assert_false(LLMUX_PROVIDER_HAS(vt, explain_error));
  assert_false(LLMUX_PROVIDER_HAS(vt, models_request));
  assert_false(LLMUX_PROVIDER_HAS(vt, respond_local));
  assert_false(LLMUX_PROVIDER_HAS(vt, ratelimit_dialect));
  assert_int_equal(rt->rl_style, LLMUX_RL_STYLE_GENERIC);
}

static void a_provider_without_base_url_needs_respond_local_even_from_an_old_plugin(void **state) {
  fixture_t *f = *state;
  assert_int_equal(build(f, "[provider old]\nplugin = old_abi10\n[route old m]\nid = x\n"),
                   LLMUX_ECONFIG);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(a_plugin_names_its_dialect_and_a_neutral_provider_is_read_by_it,
                                    setup, teardown),
    cmocka_unit_test_setup_teardown(ratelimit_headers_in_the_section_wins_over_the_plugin, setup,
                                    teardown),
    cmocka_unit_test_setup_teardown(the_shipped_providers_read_their_own_dialects, setup,
                                    teardown),
    cmocka_unit_test_setup_teardown(nothing_is_guessed_from_a_provider_name_or_host, setup,
                                    teardown),
    cmocka_unit_test_setup_teardown(an_unknown_ratelimit_headers_value_is_a_configuration_error,
                                    setup, teardown),
    cmocka_unit_test_setup_teardown(
        a_dialect_this_llmux_does_not_know_is_read_as_generic_with_a_warning, setup, teardown),
    cmocka_unit_test_setup_teardown(a_1_2_plugin_loads_and_its_reserved_word_is_not_read_as_a_dialect,
                                    setup, teardown),
    cmocka_unit_test_setup_teardown(a_1_0_plugin_loads_and_offers_no_later_slot, setup, teardown),
    cmocka_unit_test_setup_teardown(
        a_provider_without_base_url_needs_respond_local_even_from_an_old_plugin, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
