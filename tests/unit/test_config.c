/* Configuration loading: the shipped catalog, defaults, environment, and a
 * file:line diagnostic for every kind of mistake. */
#define _GNU_SOURCE /* nftw's FTW_DEPTH */
#include <ftw.h>
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

#include "config/config.h"
#include "base/log.h"
#include "config/registry.h"
#include "base/util.h"

#define DATA LLMUX_TEST_DATA "/config/"

static const char *const key_vars[] = {
  "GROQ_API_KEY", "CEREBRAS_API_KEY", "OPENROUTER_API_KEY", "ANTHROPIC_API_KEY",
  "NVIDIA_API_KEY", "OPENAI_API_KEY", "LLMUX_TEST_GOOD_KEY", "LLMUX_TEST_UNSET_KEY",
  "LLMUX_LISTEN", "LLMUX_PLUGIN_DIR",
};

/* Every test starts from an environment without keys or overrides. */
static int clean_env(void **state) {
  size_t i;
  (void)state;
  for (i = 0; i < LLMUX_COUNTOF(key_vars); i++) unsetenv(key_vars[i]);
  return 0;
}

/* Finds the diagnostic at exactly file:line whose message contains `text`. */
static const llmux_diag_entry_t *find_diag(const llmux_diag_t *d, const char *file, int line,
                                           const char *text) {
  size_t i;
  for (i = 0; i < d->len; i++) {
    const llmux_diag_entry_t *e = &d->items[i];
    if (strcmp(e->file, file) == 0 && e->line == line && strstr(e->message, text)) return e;
  }
  return NULL;
}

static void dump(const llmux_diag_t *d) {
  llmux_diag_print(d, stderr);
}

#define assert_diag(d, file, line, sev, text)                               \
  do {                                                                      \
    const llmux_diag_entry_t *e_ = find_diag((d), (file), (line), (text));  \
    if (e_ == NULL) {                                                       \
      dump(d);                                                              \
      fail_msg("no diagnostic %s:%d: %s", (file), (line), (text));          \
    }                                                                       \
    assert_int_equal(e_->severity, (sev));                                  \
  } while (0)

static llmux_config_t *load_ok(const char *path, llmux_diag_t *d) {
  llmux_config_t *cfg = NULL;
  int r = llmux_config_load(path, &cfg, d);
  if (r != 0) dump(d);
  assert_int_equal(r, 0);
  assert_non_null(cfg);
  return cfg;
}

/* ---- The shipped catalog ----------------------------------------------- */

static void shipped_catalog_loads_without_errors_and_without_keys(void **state) {
  llmux_diag_t d = {0};
  llmux_config_t *cfg = load_ok(LLMUX_SOURCE_DIR "/config/llmux.ini", &d);
  (void)state;
  assert_int_equal(d.errors, 0);
  /* One warning per provider whose key variable is unset; Ollama needs none. */
  assert_int_equal(d.warnings, 6);
  assert_int_equal(cfg->nproviders, 8); /* simple needs no key either */
  assert_int_equal(cfg->nfiles, 9);
  assert_true(llmux_config_find_provider(cfg, "ollama")->enabled);
  assert_null(llmux_config_find_provider(cfg, "ollama")->api_key);
  assert_false(llmux_config_find_provider(cfg, "groq")->enabled);
  assert_string_equal(llmux_config_find_provider(cfg, "groq")->disabled_reason,
                      "GROQ_API_KEY is not set");
  assert_diag(&d, LLMUX_SOURCE_DIR "/config/providers/groq.ini", 3, LLMUX_DIAG_WARNING,
              "provider 'groq' disabled: environment variable GROQ_API_KEY is not set");
  llmux_config_free(cfg);
  llmux_diag_free(&d);
}

static void shipped_catalog_has_every_model_generic_profile_and_agent(void **state) {
  static const char *const models[] = {
    "llama-3.1-8b", "llama-3.3-70b", "llama-3.1-405b", "qwen-2.5-72b", "qwen-2.5-32b",
    "gemma-2-9b", "gemma-2-27b", "deepseek-r1", "deepseek-r1-distill-llama-70b",
    "claude-3.5-sonnet", "gpt-4o", "ministral-3b", "nomic-embed-text",
    "text-embedding-3-small"};
  static const char *const others[] = {
    "best", "best-xl", "best-large", "best-medium", "best-small", "70b", "32b", "8b",
    "fast", "balanced", "powerful", "deepseek", "local", "classifier", "product",
    "analyst", "code-review", "gpt-4", "gpt-3.5-turbo"};
  llmux_diag_t d = {0};
  llmux_config_t *cfg = load_ok(LLMUX_SOURCE_DIR "/config/llmux.ini", &d);
  llmux_resolution_t res;
  size_t i;
  (void)state;
  for (i = 0; i < LLMUX_COUNTOF(models); i++) {
    const llmux_model_conf_t *m = llmux_config_find_model(cfg, models[i]);
    if (m == NULL) fail_msg("model %s missing", models[i]);
    assert_true(m->nroutes > 0);
    assert_true(m->tier >= 1 && m->tier <= 5);
  }
  for (i = 0; i < LLMUX_COUNTOF(others); i++) {
    if (llmux_resolve(cfg, others[i], &res) != 0) fail_msg("%s does not resolve", others[i]);
    assert_true(res.nroutes > 0);
  }
  llmux_config_free(cfg);
  llmux_diag_free(&d);
}

static void shipped_providers_use_real_endpoints_and_headers(void **state) {
  llmux_diag_t d = {0};
  llmux_config_t *cfg = load_ok(LLMUX_SOURCE_DIR "/config/llmux.ini", &d);
  const llmux_provider_conf_t *or = llmux_config_find_provider(cfg, "openrouter");
  const llmux_provider_conf_t *ol = llmux_config_find_provider(cfg, "ollama");
  (void)state;
  assert_string_equal(llmux_config_find_provider(cfg, "groq")->base_url,
                      "https://api.groq.com/openai/v1");
  assert_string_equal(ol->base_url, "http://localhost:11434"); /* the native API's root */
  assert_null(ol->api_key_env);
  assert_string_equal(or->plugin, "openai");
  assert_int_equal(or->nheaders, 2);
  assert_string_equal(or->headers[0].key, "HTTP-Referer");
  assert_string_equal(or->headers[1].key, "X-Title");
  assert_string_equal(llmux_config_find_provider(cfg, "groq")->api_key_env, "GROQ_API_KEY");
  llmux_config_free(cfg);
  llmux_diag_free(&d);
}

static void provider_with_key_in_environment_is_enabled(void **state) {
  llmux_diag_t d = {0};
  llmux_config_t *cfg;
  const llmux_provider_conf_t *p;
  (void)state;
  setenv("GROQ_API_KEY", "gsk-test", 1);
  cfg = load_ok(LLMUX_SOURCE_DIR "/config/llmux.ini", &d);
  p = llmux_config_find_provider(cfg, "groq");
  assert_true(p->enabled);
  assert_string_equal(p->api_key, "gsk-test");
  assert_int_equal(d.warnings, 5);
  llmux_config_free(cfg);
  llmux_diag_free(&d);
}

/* ---- Values, defaults, environment ------------------------------------- */

static void fixture_values_and_provider_defaults(void **state) {
  llmux_diag_t d = {0};
  llmux_config_t *cfg;
  const llmux_provider_conf_t *zeta, *tie;
  const llmux_model_conf_t *alpha;
  (void)state;
  setenv("LLMUX_TEST_GOOD_KEY", "k", 1);
  cfg = load_ok(DATA "good/llmux.ini", &d);
  assert_string_equal(cfg->server.host, "::1");
  assert_int_equal(cfg->server.port, 0);
  assert_int_equal(cfg->server.max_body, 1u << 20);
  assert_int_equal(cfg->server.max_header, 16u << 10);     /* default */
  assert_int_equal(cfg->server.header_timeout_ms, 10000);  /* default */
  assert_int_equal(cfg->server.idle_timeout_ms, 5000);
  assert_int_equal(cfg->server.log_level, LLMUX_LOG_DEBUG);
  assert_null(cfg->server.plugin_dir);

  alpha = llmux_config_find_model(cfg, "alpha");
  assert_int_equal(alpha->capabilities, LLMUX_CAP_TOOLS | LLMUX_CAP_JSON);
  assert_int_equal(alpha->context_window, 4096);
  assert_true(alpha->price_out > 0.19 && alpha->price_out < 0.21);
  assert_string_equal(alpha->family, "tiny");

  zeta = llmux_config_find_provider(cfg, "zeta");
  assert_string_equal(zeta->base_url, "https://zeta.example.com/v1"); /* no '/' */
  assert_int_equal(zeta->priority, 5);
  assert_int_equal(zeta->connect_timeout_ms, 5000);
  assert_int_equal(zeta->timeout_ms, 60000);
  assert_int_equal(zeta->stream_timeout_ms, 60000);
  assert_int_equal(zeta->total_timeout_ms, 300000);
  assert_true(zeta->tls_verify);
  assert_true(zeta->enabled);       /* no api_key_env: needs no key */
  assert_null(zeta->api_key);
  assert_string_equal(llmux_config_find_provider(cfg, "early")->api_key, "k");
  tie = llmux_config_find_provider(cfg, "tie");
  assert_false(tie->enabled);
  assert_diag(&d, DATA "good/providers/30-tie.ini", 1, LLMUX_DIAG_WARNING,
              "LLMUX_TEST_UNSET_KEY is not set");
  llmux_config_free(cfg);
  llmux_diag_free(&d);
}

static void unknown_provider_keys_are_kept_for_the_plugin(void **state) {
  llmux_diag_t d = {0};
  llmux_config_t *cfg = load_ok(DATA "good/llmux.ini", &d);
  const llmux_provider_conf_t *zeta = llmux_config_find_provider(cfg, "zeta");
  (void)state;
  assert_int_equal(zeta->nextra, 1);
  assert_string_equal(zeta->extra[0].key, "custom_knob");
  /* An indented line continues the value. */
  assert_string_equal(zeta->extra[0].value, "42, and more");
  assert_string_equal(zeta->extra[0].file, DATA "good/providers/10-zeta.ini");
  assert_int_equal(zeta->extra[0].line, 8);
  assert_int_equal(zeta->nheaders, 1);
  assert_string_equal(zeta->headers[0].key, "X-Title");
  assert_string_equal(zeta->headers[0].value, "llmux-test");
  llmux_config_free(cfg);
  llmux_diag_free(&d);
}

static void route_limits_override_provider_defaults(void **state) {
  llmux_diag_t d = {0};
  llmux_config_t *cfg = load_ok(DATA "good/llmux.ini", &d);
  const llmux_model_conf_t *beta = llmux_config_find_model(cfg, "beta");
  const llmux_route_conf_t *r = beta->routes[0];
  (void)state;
  assert_int_equal(beta->nroutes, 1);
  assert_string_equal(r->id, "beta"); /* no id: the canonical id */
  assert_int_equal(r->limits.tokens_per_minute, 5);
  assert_int_equal(r->limits.requests_per_minute, 10);
  assert_int_equal(r->limits.set, LLMUX_LIMIT_TPM);
  llmux_config_free(cfg);
  llmux_diag_free(&d);
}

static void environment_overrides_listen_and_plugin_dir(void **state) {
  llmux_diag_t d = {0};
  llmux_config_t *cfg;
  (void)state;
  setenv("LLMUX_LISTEN", "127.0.0.1:9999", 1);
  setenv("LLMUX_PLUGIN_DIR", "/opt/llmux/plugins", 1);
  cfg = load_ok(DATA "good/llmux.ini", &d);
  assert_string_equal(cfg->server.listen, "127.0.0.1:9999");
  assert_string_equal(cfg->server.host, "127.0.0.1");
  assert_int_equal(cfg->server.port, 9999);
  assert_string_equal(cfg->server.plugin_dir, "/opt/llmux/plugins");
  llmux_config_free(cfg);
  llmux_diag_free(&d);
}

static void bad_listen_override_is_an_error(void **state) {
  llmux_diag_t d = {0};
  llmux_config_t *cfg = (llmux_config_t *)&d;
  (void)state;
  setenv("LLMUX_LISTEN", "::1:80", 1);
  assert_int_equal(llmux_config_load(DATA "good/llmux.ini", &cfg, &d), LLMUX_ECONFIG);
  assert_null(cfg);
  assert_diag(&d, "LLMUX_LISTEN", 0, LLMUX_DIAG_ERROR, "bad listen address '::1:80'");
  llmux_diag_free(&d);
}

static void provider_files_load_in_name_order_and_others_are_ignored(void **state) {
  llmux_diag_t d = {0};
  llmux_config_t *cfg = load_ok(DATA "good/llmux.ini", &d);
  (void)state;
  assert_int_equal(cfg->nfiles, 4);
  assert_string_equal(cfg->files[1], DATA "good/providers/10-zeta.ini");
  assert_string_equal(cfg->files[2], DATA "good/providers/20-early.ini");
  assert_string_equal(cfg->files[3], DATA "good/providers/30-tie.ini");
  llmux_config_free(cfg);
  llmux_diag_free(&d);
}

static void missing_main_file_is_reported(void **state) {
  llmux_diag_t d = {0};
  llmux_config_t *cfg = NULL;
  (void)state;
  assert_int_equal(llmux_config_load(DATA "nope/llmux.ini", &cfg, &d), LLMUX_ECONFIG);
  assert_null(cfg);
  assert_diag(&d, DATA "nope/llmux.ini", 0, LLMUX_DIAG_ERROR, "cannot read");
  llmux_diag_free(&d);
}

/* ---- Every mistake with its file:line ---------------------------------- */

#define SYNTAX DATA "errors/syntax.ini"

static void syntax_errors_each_have_file_and_line(void **state) {
  llmux_diag_t d = {0};
  llmux_config_t *cfg = NULL;
  const int E = LLMUX_DIAG_ERROR;
  (void)state;
  assert_int_equal(llmux_config_load(SYNTAX, &cfg, &d), LLMUX_ECONFIG);
  assert_null(cfg);
  assert_diag(&d, SYNTAX, 2, E, "key 'orphan' outside of any section");
  assert_diag(&d, SYNTAX, 4, E, "bad value for 'listen': '127.0.0.1:99999'");
  assert_diag(&d, SYNTAX, 5, E, "bad value for 'max_body': 'lots'");
  assert_diag(&d, SYNTAX, 6, E, "bad value for 'header_timeout': '10 parsecs'");
  assert_diag(&d, SYNTAX, 7, E, "bad value for 'log_level': 'loud'");
  assert_diag(&d, SYNTAX, 8, E, "malformed line");
  assert_diag(&d, SYNTAX, 9, E, "unknown section type 'modle'; did you mean 'model'?");
  assert_diag(&d, SYNTAX, 12, E, "unknown key 'tire' in [model]; did you mean 'tier'?");
  assert_diag(&d, SYNTAX, 13, E, "bad value for 'tier': '6' (expected a tier from 1 to 5)");
  assert_diag(&d, SYNTAX, 14, E, "bad value for 'context_window': '-5'");
  assert_diag(&d, SYNTAX, 15, E, "bad value for 'price_in': 'cheap'");
  assert_diag(&d, SYNTAX, 16, E, "unknown capability 'telepathy'");
  assert_diag(&d, SYNTAX, 17, E,
              "unknown key 'flavour' in [model] (valid keys: tier, family, aliases,");
  assert_diag(&d, SYNTAX, 20, E, "duplicate key 'tier' (first set on line 19)");
  assert_diag(&d, SYNTAX, 22, E, "indented line continues 'family'");
  assert_diag(&d, SYNTAX, 23, E, "missing ']'");
  assert_diag(&d, SYNTAX, 27, E, "bad value for 'base_url': 'ftp://example.com'");
  assert_diag(&d, SYNTAX, 28, E, "bad value for 'tls_verify': 'maybe'");
  assert_diag(&d, SYNTAX, 29, E, "bad value for 'timeout': 'soon'");
  assert_diag(&d, SYNTAX, 30, E, "bad value for 'priority': 'first'");
  assert_diag(&d, SYNTAX, 31, E, "generic 'g' needs exactly one of 'tier' or 'min_tier'");
  assert_diag(&d, SYNTAX, 36, E, "bad value for 'strategy': 'random'");
  assert_diag(&d, SYNTAX, 39, E, "unknown key 'color' in [route]");
  assert_diag(&d, SYNTAX, 42, E, "line too long (249 characters, at most 197)");
  assert_diag(&d, SYNTAX, 43, E, "bad section header: expected [model ID]");
  /* A provider without base_url is the plugin's business (a local plugin
   * such as simple needs none): llmux check reports it, see cli.test.mjs. */
  assert_null(find_diag(&d, SYNTAX, 25, "base_url"));
  /* Keys under a broken header are not reported again (lines 10 and 24). */
  assert_null(find_diag(&d, SYNTAX, 10, ""));
  assert_null(find_diag(&d, SYNTAX, 24, ""));
  /* The too-long line was not split into pieces parsed as lines. */
  assert_null(find_diag(&d, SYNTAX, 43, "malformed"));
  assert_int_equal(d.errors, 26);
  llmux_diag_free(&d);
}

#define NAMES DATA "names/llmux.ini"

/* `llmux check` goes on after errors: the partial load keeps what it parsed. */
static void partial_load_keeps_the_configuration_despite_errors(void **state) {
  llmux_diag_t d = {0};
  llmux_config_t *cfg = NULL;
  (void)state;
  assert_int_equal(llmux_config_load_partial(SYNTAX, &cfg, &d), LLMUX_ECONFIG);
  assert_non_null(cfg);
  assert_true(d.errors > 0);
  assert_diag(&d, SYNTAX, 9, LLMUX_DIAG_ERROR, "unknown section type 'modle'; did you mean 'model'?");
  llmux_config_free(cfg);
  llmux_diag_free(&d);
}

static void provider_keys_are_listed_for_the_plugin_checks(void **state) {
  size_t i;
  int base_url = 0;
  (void)state;
  for (i = 0; llmux_config_provider_key(i) != NULL; i++)
    base_url |= strcmp(llmux_config_provider_key(i), "base_url") == 0;
  assert_true(base_url);
  assert_true(i > 10);
}

static void name_errors_each_have_file_and_line(void **state) {
  llmux_diag_t d = {0};
  llmux_config_t *cfg = NULL;
  const int E = LLMUX_DIAG_ERROR;
  (void)state;
  assert_int_equal(llmux_config_load(NAMES, &cfg, &d), LLMUX_ECONFIG);
  assert_diag(&d, NAMES, 7, E, "duplicate model 'a' (first defined at " NAMES ":1)");
  assert_diag(&d, NAMES, 6, E,
              "duplicate alias 'shared': for model 'b' here and for model 'a' at " NAMES ":3");
  assert_diag(&d, NAMES, 6, E, "alias 'a' of model 'b' is the id of model 'a' defined at "
                               NAMES ":1");
  assert_diag(&d, NAMES, 12, E, "profile 'p' names unknown model 'nosuch'");
  assert_diag(&d, NAMES, 14, E, "agent 'ag' names unknown profile 'pp'; did you mean 'p'?");
  assert_diag(&d, NAMES, 30, E, "agent 'ag2' names 'best', which is a generic, not a profile");
  assert_diag(&d, NAMES, 27, E, "profile 'best' has the same name as generic 'best' defined at "
                                NAMES ":9");
  assert_diag(&d, NAMES, 16, E, "alias cycle: x -> y -> z -> x");
  assert_diag(&d, NAMES, 20, E, "alias cycle: self -> self");
  assert_diag(&d, NAMES, 19, E, "alias 'w' points to unknown name 'unknown-thing'");
  assert_diag(&d, NAMES, 21, E, "provider 'noplug' has no plugin");
  assert_diag(&d, NAMES, 21, E, "provider 'noplug' has no base_url");
  assert_diag(&d, NAMES, 22, E, "'api_key' puts a secret in a config file: set api_key_env");
  assert_diag(&d, NAMES, 23, E, "'header.Authorization' puts a secret in a config file");
  assert_diag(&d, NAMES, 24, E, "route names unknown provider 'ghost'");
  assert_diag(&d, NAMES, 25, E, "route names unknown model 'zzz'");
  assert_diag(&d, NAMES, 26, E, "route names 'a-alias', an alias of model 'a'");
  assert_int_equal(d.errors, 17);
  llmux_diag_free(&d);
}

static void secrets_never_appear_in_diagnostics(void **state) {
  llmux_diag_t d = {0};
  llmux_config_t *cfg = NULL;
  llmux_buf_t b = {0};
  size_t i;
  (void)state;
  llmux_config_load(NAMES, &cfg, &d);
  for (i = 0; i < d.len; i++) llmux_diag_format(&d.items[i], &b);
  assert_null(strstr(b.base, "sk-not-a-real-key"));
  llmux_buf_free(&b);
  llmux_diag_free(&d);
}

#define MULTI DATA "multi/"

static void duplicates_across_files_name_both_definitions(void **state) {
  llmux_diag_t d = {0};
  llmux_config_t *cfg = NULL;
  const int E = LLMUX_DIAG_ERROR;
  (void)state;
  assert_int_equal(llmux_config_load(MULTI "llmux.ini", &cfg, &d), LLMUX_ECONFIG);
  assert_diag(&d, MULTI "providers/b.ini", 3, E,
              "duplicate alias 'dup': for model 'n' here and for model 'm' at "
              MULTI "llmux.ini:5");
  assert_diag(&d, MULTI "providers/b.ini", 9, E,
              "duplicate alias 'big' (first defined at " MULTI "llmux.ini:7)");
  assert_diag(&d, MULTI "providers/b.ini", 5, E,
              "duplicate provider 'one' (first defined at " MULTI "providers/a.ini:1)");
  assert_int_equal(d.errors, 3);
  llmux_diag_free(&d);
}

static void write_file(const char *path, const char *text) {
  FILE *fp = fopen(path, "wb");
  assert_non_null(fp);
  fputs(text, fp);
  fclose(fp);
}

/* BOM, CRLF, inline comments, `key: value`, and a long section name that
 * inih's own 50-byte section buffer would truncate. */
static void bom_crlf_and_long_section_names_parse(void **state) {
  char dir[] = "/tmp/llmux-cfg-XXXXXX", main_path[128], sub[128], prov[160];
  llmux_diag_t d = {0};
  llmux_config_t *cfg = NULL;
  const char *long_id = "a-very-long-model-identifier-that-is-longer-than-fifty-bytes";
  llmux_buf_t text = {0};
  (void)state;
  assert_non_null(mkdtemp(dir));
  snprintf(main_path, sizeof(main_path), "%s/main.ini", dir);
  snprintf(sub, sizeof(sub), "%s/providers", dir);
  snprintf(prov, sizeof(prov), "%s/providers/x.ini", dir);
  llmux_buf_printf(&text, "\xEF\xBB\xBF[model %s]\r\ntier: 2 ; inline\r\n"
                          "aliases = short ; comment\r\n", long_id);
  write_file(main_path, text.base);
  assert_int_equal(mkdir(sub, 0700), 0);
  write_file(prov, "[server]\nlisten = 127.0.0.1:1\n");
  assert_int_equal(llmux_config_load(main_path, &cfg, &d), LLMUX_ECONFIG);
  assert_diag(&d, prov, 1, LLMUX_DIAG_ERROR, "[server] belongs in the main file");
  assert_int_equal(d.errors, 1);
  unlink(prov);
  llmux_diag_free(&d);
  cfg = load_ok(main_path, &d);
  assert_int_equal(d.errors, 0);
  assert_non_null(llmux_config_find_model(cfg, long_id));
  assert_int_equal(cfg->models[0]->tier, 2);
  assert_int_equal(cfg->models[0]->aliases.len, 1);
  assert_string_equal(cfg->models[0]->aliases.items[0], "short");
  llmux_config_free(cfg);
  llmux_diag_free(&d);
  llmux_buf_free(&text);
  unlink(main_path);
  rmdir(sub);
  rmdir(dir);
}

/* ---- A scratch configuration tree --------------------------------------- */

typedef struct tree_s {
  char dir[64];
  char main_path[96];
  char providers[96];
} tree_t;

/* dir/llmux.ini holding `main_text`, and an empty dir/providers. */
static void tree_init(tree_t *t, const char *main_text) {
  snprintf(t->dir, sizeof t->dir, "/tmp/llmux-cfg-XXXXXX");
  assert_non_null(mkdtemp(t->dir));
  snprintf(t->main_path, sizeof t->main_path, "%s/llmux.ini", t->dir);
  snprintf(t->providers, sizeof t->providers, "%s/providers", t->dir);
  write_file(t->main_path, main_text);
  assert_int_equal(mkdir(t->providers, 0700), 0);
}

static const char *tree_path(const tree_t *t, const char *rel, char *out, size_t n) {
  snprintf(out, n, "%s/%s", t->dir, rel);
  return out;
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void tree_free(tree_t *t) {
  nftw(t->dir, remove_one, 8, FTW_DEPTH | FTW_PHYS);
}

/* ---- Only regular files are read --------------------------------------- */

/* Before the loader checked, these tests hung (a FIFO) or read without end
 * (/dev/zero): the alarm turns a hang into a failure. It bounds nothing a
 * working loader comes near. */
#define HANG_GUARD() alarm(60)

static void assert_refused_at_once(const tree_t *t, const char *file, const char *kind) {
  llmux_diag_t d = {0};
  llmux_config_t *cfg = NULL;
  char msg[96];
  snprintf(msg, sizeof msg, "not a regular file (%s)", kind);
  HANG_GUARD();
  assert_int_equal(llmux_config_load(t->main_path, &cfg, &d), LLMUX_ECONFIG);
  alarm(0);
  assert_null(cfg);
  assert_diag(&d, file, 0, LLMUX_DIAG_ERROR, msg);
  assert_int_equal(d.errors, 1);
  llmux_diag_free(&d);
}

static void provider_file_linked_to_dev_zero_is_refused_at_once(void **state) {
  tree_t t;
  char link[128];
  (void)state;
  tree_init(&t, "[model m]\ntier = 1\n");
  assert_int_equal(symlink("/dev/zero", tree_path(&t, "providers/zero.ini", link, sizeof link)), 0);
  assert_refused_at_once(&t, link, "character device");
  tree_free(&t);
}

static void provider_file_that_is_a_fifo_is_refused_at_once(void **state) {
  tree_t t;
  char fifo[128];
  (void)state;
  tree_init(&t, "[model m]\ntier = 1\n");
  assert_int_equal(mkfifo(tree_path(&t, "providers/pipe.ini", fifo, sizeof fifo), 0600), 0);
  assert_refused_at_once(&t, fifo, "FIFO");
  tree_free(&t);
}

static void directory_named_like_a_provider_file_is_refused(void **state) {
  tree_t t;
  char sub[128];
  (void)state;
  tree_init(&t, "[model m]\ntier = 1\n");
  assert_int_equal(mkdir(tree_path(&t, "providers/x.ini", sub, sizeof sub), 0700), 0);
  assert_refused_at_once(&t, sub, "directory");
  tree_free(&t);
}

static void main_file_that_is_a_device_is_refused(void **state) {
  llmux_diag_t d = {0};
  llmux_config_t *cfg = NULL;
  (void)state;
  HANG_GUARD();
  assert_int_equal(llmux_config_load("/dev/zero", &cfg, &d), LLMUX_ECONFIG);
  alarm(0);
  assert_diag(&d, "/dev/zero", 0, LLMUX_DIAG_ERROR, "not a regular file (character device)");
  llmux_diag_free(&d);
}

static void provider_file_linked_to_a_regular_file_is_read(void **state) {
  tree_t t;
  char target[128], link[128];
  llmux_diag_t d = {0};
  llmux_config_t *cfg;
  (void)state;
  tree_init(&t, "[model m]\ntier = 1\n");
  write_file(tree_path(&t, "shared.ini", target, sizeof target),
             "[provider p]\nplugin = openai\nbase_url = https://p.example.com/v1\n");
  tree_path(&t, "providers/p.ini", link, sizeof link);
  assert_int_equal(symlink("../shared.ini", link), 0);
  cfg = load_ok(t.main_path, &d);
  assert_int_equal(d.errors, 0);
  assert_non_null(llmux_config_find_provider(cfg, "p"));
  assert_string_equal(cfg->files[1], link);
  llmux_config_free(cfg);
  llmux_diag_free(&d);
  tree_free(&t);
}

/* ---- Literal secrets, in any value ------------------------------------- */

/* Keys are assembled at run time, so that nothing scanning this file for
 * leaked keys finds one. 24 characters with digits and capitals: shorter
 * than any real key, longer than the threshold. */
#define KEY_BODY "Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2"

static void literal_keys_are_refused_in_every_value_without_echo(void **state) {
  static const char *const prefixes[] = {"sk-", "gsk_", "csk-", "nvapi-", "sk-ant-", "sk-or-"};
  tree_t t;
  llmux_buf_t text = {0}, out = {0};
  llmux_diag_t d = {0};
  llmux_config_t *cfg = NULL;
  size_t i;
  int line;
  (void)state;
  /* One header per prefix (lines 4-9), then other places a key can hide. */
  llmux_buf_appends(&text, "[provider p]\nplugin = openai\nbase_url = https://p.example.com/v1\n");
  for (i = 0; i < LLMUX_COUNTOF(prefixes); i++)
    llmux_buf_printf(&text, "header.X-Custom-%zu = %s" KEY_BODY "\n", i, prefixes[i]);
  llmux_buf_appends(&text,
                    "header.X-Upstream-Auth = Bearer " KEY_BODY "\n"    /* 10 */
                    "custom_knob = a, b,\n"                             /* 11 */
                    "    sk-" KEY_BODY "\n"                             /* 12 */
                    "[model m]\ntier = 1\n"                             /* 13-14 */
                    "family = prefix:nvapi-" KEY_BODY "\n"              /* 15 */
                    "[provider q]\nplugin = openai\n"                   /* 16-17 */
                    "base_url = https://user:" KEY_BODY "@q.example.com/v1\n" /* 18 */
                    "base_url2 = https://q.example.com/v1?key=gsk_" KEY_BODY "\n"); /* 19 */
  tree_init(&t, text.base);
  assert_int_equal(llmux_config_load(t.main_path, &cfg, &d), LLMUX_ECONFIG);
  for (line = 4; line <= 9; line++)
    assert_diag(&d, t.main_path, line, LLMUX_DIAG_ERROR, "looks like a literal key");
  assert_diag(&d, t.main_path, 4, LLMUX_DIAG_ERROR, "header_env.X-Custom-0 = VARIABLE");
  assert_diag(&d, t.main_path, 10, LLMUX_DIAG_ERROR, "looks like a literal key (Bearer ...)");
  assert_diag(&d, t.main_path, 12, LLMUX_DIAG_ERROR, "looks like a literal key (sk-...)");
  assert_diag(&d, t.main_path, 15, LLMUX_DIAG_ERROR,
              "'family' holds what looks like a literal key");
  assert_diag(&d, t.main_path, 15, LLMUX_DIAG_ERROR, "api_key_env = VARIABLE");
  assert_diag(&d, t.main_path, 18, LLMUX_DIAG_ERROR, "'base_url' carries credentials");
  assert_diag(&d, t.main_path, 19, LLMUX_DIAG_ERROR, "looks like a literal key (gsk_...)");
  assert_int_equal(d.errors, 11);
  for (i = 0; i < d.len; i++) llmux_diag_format(&d.items[i], &out);
  assert_null(strstr(out.base, KEY_BODY));
  llmux_buf_free(&out);
  llmux_buf_free(&text);
  llmux_diag_free(&d);
  tree_free(&t);
}

static void ordinary_values_are_not_mistaken_for_keys(void **state) {
  tree_t t;
  llmux_diag_t d = {0};
  llmux_config_t *cfg;
  const llmux_provider_conf_t *p;
  (void)state;
  tree_init(&t, "[model sk-1.5-chat]\ntier = 1\nfamily = gsk_small\n"
                "aliases = sk-learn, nvapi-docs, csk-2\n"
                "[provider p]\nplugin = openai\nbase_url = https://p.example.com/v1\n"
                "header.X-Title = task-" KEY_BODY "\n"   /* "sk-" inside a word */
                "header.X-Words = sk-some-long-lowercase-words-here\n"
                "header.X-Scheme = Bearer\n"
                "header.X-Note = bearer auth\n"
                "header.HTTP-Referer = https://github.com/llmux/llmux\n"
                "[route p sk-1.5-chat]\nid = org/sk-1.5-chat\n");
  cfg = load_ok(t.main_path, &d);
  assert_int_equal(d.errors, 0);
  p = llmux_config_find_provider(cfg, "p");
  assert_int_equal(p->nheaders, 5);
  assert_string_equal(p->headers[0].value, "task-" KEY_BODY);
  llmux_config_free(cfg);
  llmux_diag_free(&d);
  tree_free(&t);
}

static void header_env_takes_a_header_value_from_the_environment(void **state) {
  tree_t t;
  llmux_diag_t d = {0};
  llmux_config_t *cfg;
  const llmux_provider_conf_t *p, *q;
  (void)state;
  setenv("LLMUX_TEST_GOOD_KEY", "from-env", 1);
  tree_init(&t, "[provider p]\nplugin = openai\nbase_url = https://p.example.com/v1\n"
                "header_env.X-Api-Token = LLMUX_TEST_GOOD_KEY\n"
                "[provider q]\nplugin = openai\nbase_url = https://q.example.com/v1\n"
                "header_env.X-Api-Token = LLMUX_TEST_UNSET_KEY\n");
  cfg = load_ok(t.main_path, &d);
  p = llmux_config_find_provider(cfg, "p");
  q = llmux_config_find_provider(cfg, "q");
  assert_true(p->enabled);
  assert_int_equal(p->nheaders, 1);
  assert_string_equal(p->headers[0].key, "X-Api-Token");
  assert_string_equal(p->headers[0].value, "from-env");
  assert_false(q->enabled);
  assert_string_equal(q->disabled_reason, "LLMUX_TEST_UNSET_KEY is not set");
  assert_diag(&d, t.main_path, 8, LLMUX_DIAG_WARNING,
              "provider 'q' disabled: environment variable LLMUX_TEST_UNSET_KEY is not set");
  llmux_config_free(cfg);
  llmux_diag_free(&d);
  tree_free(&t);
}

static void header_env_must_name_a_variable(void **state) {
  tree_t t;
  llmux_diag_t d = {0};
  llmux_config_t *cfg = NULL;
  (void)state;
  tree_init(&t, "[provider p]\nplugin = openai\nbase_url = https://p.example.com/v1\n"
                "header_env.X-Api-Token = not a variable\n");
  assert_int_equal(llmux_config_load(t.main_path, &cfg, &d), LLMUX_ECONFIG);
  assert_diag(&d, t.main_path, 4, LLMUX_DIAG_ERROR,
              "'header_env.X-Api-Token' must name an environment variable");
  assert_null(strstr(d.items[0].message, "not a variable"));
  llmux_diag_free(&d);
  tree_free(&t);
}

static void diag_format_is_file_line_message(void **state) {
  llmux_diag_t d = {0};
  llmux_buf_t b = {0};
  (void)state;
  llmux_diag_add(&d, "a.ini", 3, LLMUX_DIAG_ERROR, "unknown key '%s'", "x");
  llmux_diag_add(&d, "b.ini", 4, LLMUX_DIAG_WARNING, "w");
  llmux_diag_add(&d, "c.ini", 0, LLMUX_DIAG_ERROR, "gone");
  assert_int_equal(d.errors, 2);
  assert_int_equal(d.warnings, 1);
  llmux_diag_format(&d.items[0], &b);
  assert_string_equal(b.base, "a.ini:3: unknown key 'x'");
  b.len = 0;
  llmux_diag_format(&d.items[1], &b);
  assert_string_equal(b.base, "b.ini:4: warning: w");
  b.len = 0;
  llmux_diag_format(&d.items[2], &b);
  assert_string_equal(b.base, "c.ini: gone");
  llmux_buf_free(&b);
  llmux_diag_free(&d);
}

/* [server] otlp_endpoint: a collector's http:// base URL, kept without its
 * trailing '/'; https and malformed URLs are errors at their line. */
static void otlp_endpoint_is_an_http_collector_url(void **state) {
  static const char *const bad[] = {
    "https://collector:4318", "collector:4318", "http://", "http://:4318", "http://collector:",
    "http://collector:0", "http://collector:65536", "http://collector:43x8",
    "http://collector:4318/v1?x=1", "http://[::1/", "http://[]:4318"};
  tree_t t;
  llmux_diag_t d = {0};
  llmux_config_t *cfg = NULL;
  char text[256];
  size_t i;
  (void)state;
  tree_init(&t, "[server]\notlp_endpoint = http://[::1]:4318/otel/\n");
  cfg = load_ok(t.main_path, &d);
  assert_string_equal(cfg->server.otlp_endpoint, "http://[::1]:4318/otel");
  llmux_config_free(cfg);
  llmux_diag_free(&d);
  tree_free(&t);
  tree_init(&t, "[server]\nlisten = 127.0.0.1:1\n");
  cfg = load_ok(t.main_path, &d);
  assert_null(cfg->server.otlp_endpoint); /* the default: no traces */
  llmux_config_free(cfg);
  llmux_diag_free(&d);
  tree_free(&t);
  for (i = 0; i < LLMUX_COUNTOF(bad); i++) {
    snprintf(text, sizeof text, "[server]\notlp_endpoint = %s\n", bad[i]);
    tree_init(&t, text);
    assert_int_equal(llmux_config_load(t.main_path, &cfg, &d), LLMUX_ECONFIG);
    assert_diag(&d, t.main_path, 2, LLMUX_DIAG_ERROR,
                i == 0 ? "'otlp_endpoint' must be http://" : "bad value for 'otlp_endpoint'");
    assert_int_equal(d.errors, 1);
    llmux_diag_free(&d);
    tree_free(&t);
  }
}

/* [server] shared_state and its companions, workers: defaults, good
 * values, and each mistake at its line (a password in the URL never
 * echoed). */
static void shared_state_and_workers(void **state) {
  static const struct { const char *line; const char *msg; } bad[] = {
    {"shared_state = http://127.0.0.1:6379", "bad value for 'shared_state'"},
    {"shared_state = rediss://cache:6380", "llmux does not speak TLS to Redis"},
    {"shared_state = redis://:hunter2@cache", "carries credentials"},
    {"shared_state = redis://cache:0", "bad value for 'shared_state'"},
    {"shared_state = redis://cache/x", "bad value for 'shared_state'"},
    {"shared_state = redis://cache/70000", "bad value for 'shared_state'"},
    {"shared_state = redis://", "bad value for 'shared_state'"},
    {"shared_state_fail = maybe", "open or closed"},
    {"shared_state_password_env = p@ss word", "must name an environment variable"},
    {"workers = 0", "from 1 to 1024, or auto"},
    {"workers = many", "from 1 to 1024, or auto"},
  };
  tree_t t;
  llmux_diag_t d = {0};
  llmux_config_t *cfg = NULL;
  char text[256];
  size_t i;
  (void)state;
  tree_init(&t, "[server]\nlisten = 127.0.0.1:1\n");
  cfg = load_ok(t.main_path, &d);
  assert_null(cfg->server.shared_state);
  assert_string_equal(cfg->server.shared_state_prefix, "llmux:");
  assert_int_equal(cfg->server.shared_state_fail_closed, 0);
  assert_int_equal(cfg->server.shared_state_timeout_ms, 50);
  assert_int_equal(cfg->server.workers, 1);
  llmux_config_free(cfg);
  llmux_diag_free(&d);
  tree_free(&t);
  tree_init(&t, "[server]\nshared_state = redis://[::1]:7000/3\nshared_state_prefix = eu:\n"
                "shared_state_fail = closed\nshared_state_password_env = REDIS_PW\n"
                "workers = auto\n");
  cfg = load_ok(t.main_path, &d);
  assert_string_equal(cfg->server.shared_state, "redis://[::1]:7000/3");
  assert_string_equal(cfg->server.shared_state_prefix, "eu:");
  assert_string_equal(cfg->server.shared_state_password_env, "REDIS_PW");
  assert_int_equal(cfg->server.shared_state_fail_closed, 1);
  assert_int_equal(cfg->server.workers_auto, 1);
  assert_true(cfg->server.workers >= 1);
  assert_int_equal(d.len, 0);
  llmux_config_free(cfg);
  llmux_diag_free(&d);
  tree_free(&t);
  /* Several workers and nothing to share through: said, with the line. */
  tree_init(&t, "[server]\nlisten = 127.0.0.1:1\nworkers = 3\n");
  cfg = load_ok(t.main_path, &d);
  assert_int_equal(cfg->server.workers, 3);
  assert_diag(&d, t.main_path, 3, LLMUX_DIAG_WARNING, "workers = 3 without shared_state");
  llmux_config_free(cfg);
  llmux_diag_free(&d);
  tree_free(&t);
  tree_init(&t, "[server]\nusage_db = u.db\nworkers = 2\n");
  assert_int_equal(llmux_config_load(t.main_path, &cfg, &d), LLMUX_ECONFIG);
  assert_diag(&d, t.main_path, 3, LLMUX_DIAG_ERROR, "overwrite each other's usage rows");
  llmux_diag_free(&d);
  tree_free(&t);
  for (i = 0; i < LLMUX_COUNTOF(bad); i++) {
    snprintf(text, sizeof text, "[server]\n%s\n", bad[i].line);
    tree_init(&t, text);
    assert_int_equal(llmux_config_load(t.main_path, &cfg, &d), LLMUX_ECONFIG);
    assert_diag(&d, t.main_path, 2, LLMUX_DIAG_ERROR, bad[i].msg);
    for (size_t j = 0; j < d.len; j++) assert_null(strstr(d.items[j].message, "hunter2"));
    llmux_diag_free(&d);
    tree_free(&t);
  }
}

/* [server] cache, cache_size, cache_ttl (issue 17): off by default, a
 * mode it does not know refused at its line, and redis only with a shared
 * state. */
static void cache_is_off_by_default_memory_or_redis_when_asked(void **state) {
  tree_t t;
  llmux_diag_t d = {0};
  llmux_config_t *cfg;
  (void)state;
  tree_init(&t, "[server]\nlisten = 127.0.0.1:1\n");
  cfg = load_ok(t.main_path, &d);
  assert_int_equal(cfg->server.cache, LLMUX_CACHE_OFF);
  assert_int_equal(cfg->server.cache_size, 64u << 20);
  assert_int_equal(cfg->server.cache_ttl_ms, 3600000);
  llmux_config_free(cfg);
  llmux_diag_free(&d);
  tree_free(&t);
  tree_init(&t, "[server]\ncache = memory\ncache_size = 8m\ncache_ttl = 10m\n");
  cfg = load_ok(t.main_path, &d);
  assert_int_equal(cfg->server.cache, LLMUX_CACHE_MEMORY);
  assert_int_equal(cfg->server.cache_size, 8u << 20);
  assert_int_equal(cfg->server.cache_ttl_ms, 600000);
  llmux_config_free(cfg);
  llmux_diag_free(&d);
  tree_free(&t);
  tree_init(&t, "[server]\nlisten = 127.0.0.1:1\ncache = disk\n");
  assert_int_equal(llmux_config_load(t.main_path, &cfg, &d), LLMUX_ECONFIG);
  assert_diag(&d, t.main_path, 3, LLMUX_DIAG_ERROR, "bad value for 'cache'");
  llmux_diag_free(&d);
  tree_free(&t);
  /* Redis keeps the answers only where there is a shared state. */
  tree_init(&t, "[server]\nlisten = 127.0.0.1:1\ncache = redis\n");
  assert_int_equal(llmux_config_load(t.main_path, &cfg, &d), LLMUX_ECONFIG);
  assert_diag(&d, t.main_path, 3, LLMUX_DIAG_ERROR, "no shared_state");
  llmux_diag_free(&d);
  tree_free(&t);
  tree_init(&t, "[server]\ncache = redis\nshared_state = redis://127.0.0.1:6379\n");
  cfg = load_ok(t.main_path, &d);
  assert_int_equal(cfg->server.cache, LLMUX_CACHE_REDIS);
  llmux_config_free(cfg);
  llmux_diag_free(&d);
  tree_free(&t);
}

/* [server] access_log: a file beside the main one, stdout, or off (the
 * default). */
static void access_log_is_a_path_stdout_or_off(void **state) {
  static const struct { const char *value, *want; } cases[] = {
    {"logs/access.log", "/logs/access.log"}, {"/var/log/llmux.log", "/var/log/llmux.log"},
    {"stdout", "stdout"}, {"off", NULL}, {"OFF", NULL}, {"", NULL}};
  tree_t t;
  llmux_diag_t d = {0};
  llmux_config_t *cfg;
  char text[160], want[256];
  size_t i;
  (void)state;
  tree_init(&t, "[server]\nlisten = 127.0.0.1:1\n");
  cfg = load_ok(t.main_path, &d);
  assert_null(cfg->server.access_log);
  llmux_config_free(cfg);
  llmux_diag_free(&d);
  tree_free(&t);
  for (i = 0; i < LLMUX_COUNTOF(cases); i++) {
    snprintf(text, sizeof text, "[server]\naccess_log = %s\n", cases[i].value);
    tree_init(&t, text);
    cfg = load_ok(t.main_path, &d);
    if (cases[i].want == NULL) {
      assert_null(cfg->server.access_log);
    } else {
      snprintf(want, sizeof want, "%s%s", cases[i].want[0] == '/' && i == 0 ? t.dir : "",
               cases[i].want);
      assert_string_equal(cfg->server.access_log, want);
    }
    llmux_config_free(cfg);
    llmux_diag_free(&d);
    tree_free(&t);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup(fn, clean_env)
    T(shipped_catalog_loads_without_errors_and_without_keys),
    T(shipped_catalog_has_every_model_generic_profile_and_agent),
    T(shipped_providers_use_real_endpoints_and_headers),
    T(provider_with_key_in_environment_is_enabled),
    T(fixture_values_and_provider_defaults),
    T(unknown_provider_keys_are_kept_for_the_plugin),
    T(route_limits_override_provider_defaults),
    T(environment_overrides_listen_and_plugin_dir),
    T(bad_listen_override_is_an_error),
    T(provider_files_load_in_name_order_and_others_are_ignored),
    T(missing_main_file_is_reported),
    T(syntax_errors_each_have_file_and_line),
    T(partial_load_keeps_the_configuration_despite_errors),
    T(provider_keys_are_listed_for_the_plugin_checks),
    T(name_errors_each_have_file_and_line),
    T(secrets_never_appear_in_diagnostics),
    T(duplicates_across_files_name_both_definitions),
    T(bom_crlf_and_long_section_names_parse),
    T(provider_file_linked_to_dev_zero_is_refused_at_once),
    T(provider_file_that_is_a_fifo_is_refused_at_once),
    T(directory_named_like_a_provider_file_is_refused),
    T(main_file_that_is_a_device_is_refused),
    T(provider_file_linked_to_a_regular_file_is_read),
    T(literal_keys_are_refused_in_every_value_without_echo),
    T(ordinary_values_are_not_mistaken_for_keys),
    T(header_env_takes_a_header_value_from_the_environment),
    T(header_env_must_name_a_variable),
    T(diag_format_is_file_line_message),
    T(otlp_endpoint_is_an_http_collector_url),
    T(access_log_is_a_path_stdout_or_off),
    T(shared_state_and_workers),
    T(cache_is_off_by_default_memory_or_redis_when_asked),
#undef T
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
