/* Name resolution: every alias type of seed 003's table, route order, and
 * the closest names for a 404. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config/config.h"
#include "config/registry.h"
#include "base/util.h"

#define CATALOG LLMUX_SOURCE_DIR "/config/llmux.ini"
#define GOOD LLMUX_TEST_DATA "/config/good/llmux.ini"

static llmux_config_t *catalog;
static llmux_config_t *good;

static llmux_config_t *load(const char *path) {
  llmux_diag_t d = {0};
  llmux_config_t *cfg = NULL;
  if (llmux_config_load(path, &cfg, &d) != 0) llmux_diag_print(&d, stderr);
  llmux_diag_free(&d);
  return cfg;
}

static int setup(void **state) {
  (void)state;
  unsetenv("LLMUX_LISTEN");
  unsetenv("LLMUX_TEST_UNSET_KEY");
  setenv("GROQ_API_KEY", "gsk-secret-value", 1);
  setenv("LLMUX_TEST_GOOD_KEY", "k", 1);
  catalog = load(CATALOG);
  good = load(GOOD);
  return catalog && good ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  llmux_config_free(catalog);
  llmux_config_free(good);
  return 0;
}

static llmux_resolution_t resolve_ok(const llmux_config_t *cfg, const char *name) {
  llmux_resolution_t res;
  int r = llmux_resolve(cfg, name, &res);
  if (r != 0) fail_msg("'%s' did not resolve (%d)", name, r);
  return res;
}

static void assert_route(const llmux_route_conf_t *r, const char *provider, const char *id) {
  assert_string_equal(r->provider->name, provider);
  assert_string_equal(r->id, id);
}

/* ---- Seed 003's alias types -------------------------------------------- */

static void canonical_id_resolves_to_its_routes_by_provider_priority(void **state) {
  llmux_resolution_t res = resolve_ok(catalog, "llama-3.3-70b");
  size_t i;
  (void)state;
  assert_int_equal(res.kind, LLMUX_NAME_CANONICAL);
  assert_int_equal(res.target_kind, LLMUX_NAME_CANONICAL);
  assert_string_equal(res.target, "llama-3.3-70b");
  assert_int_equal(res.nchain, 1);
  assert_int_equal(res.nmodels, 1);
  assert_ptr_equal(res.models[0], res.model);
  assert_int_equal(res.nroutes, 4);
  assert_route(res.routes[0], "groq", "llama-3.3-70b-versatile");
  assert_route(res.routes[1], "cerebras", "llama-3.3-70b");
  for (i = 1; i < res.nroutes; i++)
    assert_true(res.routes[i - 1]->provider->priority <= res.routes[i]->provider->priority);
  /* The key was set in setup: groq enabled, cerebras not. */
  assert_true(res.routes[0]->provider->enabled);
  assert_false(res.routes[1]->provider->enabled);
}

static void variant_name_resolves_through_builtin_alias(void **state) {
  llmux_resolution_t res = resolve_ok(catalog, "llama-3.3-70b-versatile");
  (void)state;
  assert_int_equal(res.kind, LLMUX_NAME_ALIAS);
  assert_string_equal(res.target, "llama-3.3-70b");
  assert_int_equal(res.nchain, 2);
  assert_int_equal(res.chain[0].kind, LLMUX_NAME_ALIAS);
  assert_string_equal(res.chain[0].name, "llama-3.3-70b-versatile");
  assert_int_equal(res.chain[1].kind, LLMUX_NAME_CANONICAL);
  res = resolve_ok(catalog, "llama-3.3-70b-instruct");
  assert_string_equal(res.target, "llama-3.3-70b");
}

static void provider_prefixed_names_resolve(void **state) {
  llmux_resolution_t res = resolve_ok(catalog, "meta-llama/llama-3.3-70b");
  (void)state;
  assert_int_equal(res.kind, LLMUX_NAME_ALIAS);
  assert_string_equal(res.target, "llama-3.3-70b");
  res = resolve_ok(catalog, "qwen/qwen-2.5-72b");
  assert_string_equal(res.target, "qwen-2.5-72b");
  /* Seed 003's worked example: entries for groq and cerebras. */
  res = resolve_ok(catalog, "meta-llama/llama-3.1-8b");
  assert_string_equal(res.target, "llama-3.1-8b");
  assert_route(res.routes[0], "groq", "llama-3.1-8b-instant");
  assert_route(res.routes[1], "cerebras", "llama3.1-8b");
}

static void names_are_case_insensitive(void **state) {
  llmux_resolution_t res = resolve_ok(catalog, "LLAMA-3.3-70B");
  (void)state;
  assert_int_equal(res.kind, LLMUX_NAME_CANONICAL);
  assert_string_equal(res.chain[0].name, "llama-3.3-70b"); /* config spelling */
  res = resolve_ok(catalog, "Meta-Llama/Llama-3.3-70B");
  assert_string_equal(res.target, "llama-3.3-70b");
  res = resolve_ok(catalog, "Best-Large");
  assert_int_equal(res.kind, LLMUX_NAME_GENERIC);
}

static void assert_all_tier(const llmux_resolution_t *res, int tier) {
  size_t i;
  assert_true(res->nmodels > 0);
  for (i = 0; i < res->nmodels; i++) assert_int_equal(res->models[i]->tier, tier);
}

static void generic_aliases_expand_to_their_tiers(void **state) {
  llmux_resolution_t res = resolve_ok(catalog, "best-large");
  (void)state;
  assert_int_equal(res.kind, LLMUX_NAME_GENERIC);
  assert_int_equal(res.target_kind, LLMUX_NAME_GENERIC);
  assert_non_null(res.generic);
  assert_all_tier(&res, 3);
  assert_string_equal(res.models[0]->id, "llama-3.3-70b"); /* config order */
  assert_route(res.routes[0], "groq", "llama-3.3-70b-versatile");
  res = resolve_ok(catalog, "70b");
  assert_all_tier(&res, 3);
  res = resolve_ok(catalog, "best-xl");
  assert_all_tier(&res, 4);
  res = resolve_ok(catalog, "best-medium");
  assert_all_tier(&res, 2);
  res = resolve_ok(catalog, "32b");
  assert_all_tier(&res, 2);
  res = resolve_ok(catalog, "best-small");
  assert_all_tier(&res, 1);
  res = resolve_ok(catalog, "8b");
  assert_all_tier(&res, 1);
  assert_string_equal(res.models[0]->id, "llama-3.1-8b");
}

static void best_prefers_the_highest_tier_and_skips_embedding_models(void **state) {
  llmux_resolution_t res = resolve_ok(catalog, "best");
  size_t i, n = 0;
  (void)state;
  assert_string_equal(res.models[0]->id, "deepseek-r1");
  for (i = 1; i < res.nmodels; i++)
    assert_true(res.models[i - 1]->tier >= res.models[i]->tier);
  for (i = 0; i < res.nmodels; i++)
    assert_false(res.models[i]->capabilities & LLMUX_CAP_EMBEDDINGS);
  for (i = 0; i < res.nmodels; i++) n += res.models[i]->nroutes;
  assert_int_equal(res.nroutes, n);
  assert_int_equal(res.nmodels, catalog->nmodels - 3); /* three embedding models */
}

static void generic_with_min_and_max_tier(void **state) {
  llmux_resolution_t res = resolve_ok(good, "mid");
  (void)state;
  assert_int_equal(res.nmodels, 1);
  assert_string_equal(res.models[0]->id, "beta");
  res = resolve_ok(good, "best");
  assert_int_equal(res.nmodels, 4);
  assert_string_equal(res.models[0]->id, "delta");
  assert_string_equal(res.models[1]->id, "beta");
  assert_string_equal(res.models[2]->id, "alpha");
  assert_string_equal(res.models[3]->id, "gamma");
}

static void user_alias_maps_openai_names(void **state) {
  llmux_resolution_t res = resolve_ok(catalog, "gpt-4");
  (void)state;
  assert_int_equal(res.kind, LLMUX_NAME_USER_ALIAS);
  assert_string_equal(res.target, "llama-3.3-70b");
  assert_int_equal(res.nchain, 2);
  res = resolve_ok(catalog, "gpt-3.5-turbo");
  assert_string_equal(res.target, "llama-3.1-8b");
}

static void user_alias_wins_over_builtin_alias(void **state) {
  /* alpha-instruct is alpha's built-in alias, and a user alias to beta. */
  llmux_resolution_t res = resolve_ok(good, "alpha-instruct");
  (void)state;
  assert_int_equal(res.kind, LLMUX_NAME_USER_ALIAS);
  assert_string_equal(res.target, "beta");
}

static void user_aliases_chain(void **state) {
  llmux_resolution_t res = resolve_ok(good, "chain1");
  (void)state;
  assert_int_equal(res.kind, LLMUX_NAME_USER_ALIAS);
  assert_int_equal(res.nchain, 4);
  assert_string_equal(res.chain[0].name, "chain1");
  assert_string_equal(res.chain[1].name, "chain2");
  assert_string_equal(res.chain[2].name, "alpha-instruct");
  assert_int_equal(res.chain[2].kind, LLMUX_NAME_USER_ALIAS);
  assert_int_equal(res.chain[3].kind, LLMUX_NAME_CANONICAL);
  assert_string_equal(res.target, "beta");
  res = resolve_ok(good, "to-generic");
  assert_int_equal(res.target_kind, LLMUX_NAME_GENERIC);
  assert_string_equal(res.target, "best");
}

static void profile_expands_models_in_listed_order(void **state) {
  llmux_resolution_t res = resolve_ok(catalog, "balanced");
  (void)state;
  assert_int_equal(res.kind, LLMUX_NAME_PROFILE);
  assert_non_null(res.profile);
  assert_int_equal(res.profile->strategy, LLMUX_STRATEGY_PRIORITY);
  assert_int_equal(res.nmodels, 3);
  assert_string_equal(res.models[0]->id, "llama-3.3-70b");
  assert_string_equal(res.models[1]->id, "qwen-2.5-72b");
  assert_string_equal(res.models[2]->id, "claude-3.5-sonnet");
  assert_route(res.routes[0], "groq", "llama-3.3-70b-versatile");
  assert_string_equal(res.routes[res.nroutes - 1]->model->id, "claude-3.5-sonnet");
}

static void weighted_profile_keeps_weights_and_accepts_aliases(void **state) {
  llmux_resolution_t res = resolve_ok(good, "duo");
  (void)state;
  assert_int_equal(res.profile->strategy, LLMUX_STRATEGY_WEIGHTED);
  assert_int_equal(res.nmodels, 2);
  assert_string_equal(res.models[0]->id, "gamma");
  assert_string_equal(res.models[1]->id, "alpha"); /* listed as vendor/alpha */
  assert_int_equal(res.profile->nweights, 2);
  assert_true(res.profile->weights[1] > 2.9 && res.profile->weights[1] < 3.1);
}

static void agent_resolves_through_its_profile(void **state) {
  llmux_resolution_t res = resolve_ok(catalog, "analyst");
  (void)state;
  assert_int_equal(res.kind, LLMUX_NAME_AGENT);
  assert_int_equal(res.target_kind, LLMUX_NAME_PROFILE);
  assert_string_equal(res.target, "powerful");
  assert_string_equal(res.agent->name, "analyst");
  assert_string_equal(res.models[0]->id, "claude-3.5-sonnet");
  assert_route(res.routes[0], "anthropic", "claude-3-5-sonnet-20241022");
  res = resolve_ok(catalog, "code-review");
  assert_string_equal(res.target, "deepseek");
  res = resolve_ok(catalog, "classifier");
  assert_string_equal(res.target, "fast");
  assert_route(res.routes[0], "groq", "llama-3.1-8b-instant");
  res = resolve_ok(catalog, "product");
  assert_string_equal(res.target, "balanced");
  res = resolve_ok(good, "to-agent");
  assert_int_equal(res.nchain, 3);
  assert_int_equal(res.chain[1].kind, LLMUX_NAME_AGENT);
  assert_int_equal(res.chain[2].kind, LLMUX_NAME_PROFILE);
}

static void local_profile_goes_to_ollama(void **state) {
  llmux_resolution_t res = resolve_ok(catalog, "local");
  (void)state;
  assert_int_equal(res.nroutes, 1);
  assert_route(res.routes[0], "ollama", "ministral-3:3b");
  assert_true(res.routes[0]->provider->enabled);
}

static void display_name_is_read_and_dumped(void **state) {
  const llmux_model_conf_t *m = llmux_config_find_model(catalog, "llama-3.3-70b");
  llmux_buf_t out = {0};
  (void)state;
  assert_non_null(m);
  assert_string_equal(m->display_name, "Llama 3.3 70B");
  assert_null(llmux_config_find_model(good, "alpha")->display_name);
  assert_int_equal(llmux_registry_dump(catalog, &out), 0);
  assert_non_null(strstr(out.base, "  llama-3.3-70b  tier 3  \"Llama 3.3 70B\""));
  llmux_buf_free(&out);
}

/* ---- Passthrough (issue 16) ------------------------------------------- */

static void passthrough_sends_any_id_to_the_provider(void **state) {
  llmux_passthrough_t pt;
  llmux_resolution_t res;
  const char *name = "openrouter/anthropic/claude-3-opus";
  (void)state;
  assert_int_equal(llmux_resolve(catalog, name, &res), LLMUX_ENOTFOUND);
  assert_int_equal(llmux_resolve_passthrough(catalog, name, strlen(name), &pt, &res), 0);
  assert_int_equal(res.kind, LLMUX_NAME_PASSTHROUGH);
  assert_string_equal(res.target, name);
  assert_int_equal(res.nroutes, 1);
  assert_route(res.routes[0], "openrouter", "anthropic/claude-3-opus");
  assert_true(res.routes[0]->passthrough);
  assert_string_equal(res.routes[0]->model->id, name);
  assert_int_equal(res.routes[0]->model->capabilities, 0);
  /* The provider's limits, under the one key all its passthrough models share. */
  assert_int_equal(res.routes[0]->limits.requests_per_minute, 20);
  assert_string_equal(LLMUX_ROUTE_LIMIT_ID(res.routes[0]), "*");
  assert_ptr_equal(catalog->routes[res.routes[0]->index],
                   res.routes[0]->provider->passthrough_route);
  name = "OLLAMA/llama3.2:1b";
  assert_int_equal(llmux_resolve_passthrough(catalog, name, strlen(name), &pt, &res), 0);
  assert_route(res.routes[0], "ollama", "llama3.2:1b");
  assert_string_equal(res.target, "ollama/llama3.2:1b");
}

static void passthrough_needs_a_passthrough_provider_and_an_id(void **state) {
  static const char *const names[] = {"groq/llama-3.1-8b-instant", "openrouter/", "nowhere/x",
                                      "qwen2.5", "/x"};
  llmux_passthrough_t pt;
  llmux_resolution_t res;
  size_t i;
  (void)state;
  for (i = 0; i < LLMUX_COUNTOF(names); i++) {
    assert_int_equal(llmux_resolve_passthrough(catalog, names[i], strlen(names[i]), &pt, &res),
                     LLMUX_ENOTFOUND);
    assert_int_equal(res.nroutes, 0);
  }
  assert_null(llmux_config_find_provider(catalog, "groq")->passthrough_route);
}

static void passthrough_route_is_not_a_name(void **state) {
  llmux_resolution_t res;
  (void)state;
  /* The provider's own route is no catalog name and is offered to no one. */
  assert_int_equal(llmux_resolve(catalog, "openrouter/*", &res), LLMUX_ENOTFOUND);
  assert_int_equal(llmux_resolve(catalog, "openrouter/llama-3.3-70b", &res), LLMUX_ENOTFOUND);
}

/* ---- Route order ------------------------------------------------------- */

static void routes_order_by_priority_then_config_order(void **state) {
  llmux_resolution_t res = resolve_ok(good, "alpha");
  (void)state;
  assert_int_equal(res.nroutes, 3);
  assert_route(res.routes[0], "early", "early-alpha"); /* priority 1 */
  assert_route(res.routes[1], "zeta", "zeta/alpha");   /* 5, loaded first */
  assert_route(res.routes[2], "tie", "tie-alpha");     /* 5, loaded later */
  assert_false(res.routes[2]->provider->enabled);
  assert_int_equal(res.routes[1]->limits.requests_per_minute, 10);
}

/* ---- Unknown names ----------------------------------------------------- */

static void unknown_name_suggests_closest_names(void **state) {
  llmux_resolution_t res;
  (void)state;
  assert_int_equal(llmux_resolve(catalog, "lama-3.3-70b", &res), LLMUX_ENOTFOUND);
  assert_int_equal(res.nroutes, 0);
  assert_true(res.nsuggestions >= 1 && res.nsuggestions <= 3);
  assert_string_equal(res.suggestions[0], "llama-3.3-70b");
  assert_int_equal(llmux_resolve(catalog, "gpt4", &res), LLMUX_ENOTFOUND);
  assert_string_equal(res.suggestions[0], "gpt-4");
  assert_int_equal(llmux_resolve(catalog, "qqqqqqqqqqqqqqqqqqqq", &res), LLMUX_ENOTFOUND);
  assert_int_equal(res.nsuggestions, 0);
  assert_int_equal(llmux_resolve(catalog, "", &res), LLMUX_ENOTFOUND);
}

static void resolven_takes_a_slice(void **state) {
  const char *path = "llama-3.3-70b/more";
  llmux_resolution_t res;
  (void)state;
  assert_int_equal(llmux_resolven(catalog, path, 13, &res), 0);
  assert_string_equal(res.target, "llama-3.3-70b");
  assert_int_equal(llmux_resolven(catalog, path, 12, &res), LLMUX_ENOTFOUND);
}

/* ---- Listing ----------------------------------------------------------- */

static void dump_lists_routes_and_never_keys(void **state) {
  llmux_buf_t b = {0};
  (void)state;
  assert_int_equal(llmux_registry_dump(catalog, &b), 0);
  assert_non_null(strstr(b.base, "llama-3.3-70b  tier 3"));
  assert_non_null(strstr(b.base, "-> groq llama-3.3-70b-versatile"));
  assert_non_null(strstr(b.base, "best-large  tier 3: llama-3.3-70b"));
  assert_non_null(strstr(b.base, "code-review -> profile deepseek"));
  assert_null(strstr(b.base, "gsk-secret-value"));
  llmux_buf_free(&b);
}

static void catalog_arrays_list_models_generics_and_profiles(void **state) {
  size_t i;
  (void)state;
  assert_int_equal(catalog->nmodels, 29); /* 15, and 14 from seeds 000 and 001 */
  assert_int_equal(catalog->ngenerics, 8);
  assert_true(catalog->nprofiles >= 5);
  assert_int_equal(catalog->nagents, 4);
  for (i = 0; i < catalog->nmodels; i++) assert_int_equal(catalog->models[i]->index, i);
}

/* ---- Scale: thousands of names ------------------------------------------ */

static void thousands_of_names_all_resolve(void **state) {
  char dir[] = "/tmp/llmux-reg-XXXXXX", path[256], name[64];
  llmux_config_t *big;
  llmux_resolution_t res;
  FILE *fp;
  int i;
  (void)state;
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof(path), "%s/llmux.ini", dir);
  fp = fopen(path, "w");
  assert_non_null(fp);
  fprintf(fp, "[provider p]\nplugin = openai\nbase_url = http://127.0.0.1:1/v1\n");
  for (i = 0; i < 3000; i++) {
    fprintf(fp, "[model m%d]\ntier = %d\naliases = m%d-a, org/m%d\n", i, i % 5 + 1, i, i);
    fprintf(fp, "[route p m%d]\nid = p-m%d\n", i, i);
  }
  fclose(fp);
  big = load(path);
  unlink(path);
  rmdir(dir);
  assert_non_null(big);
  for (i = 0; i < 100000; i++) {
    snprintf(name, sizeof(name), "ORG/M%d", i % 3000);
    assert_int_equal(llmux_resolve(big, name, &res), 0);
    assert_int_equal(res.nroutes, 1);
  }
  /* Speed is the benchmark's business, not a test's: this proves every
   * one of 9000 names resolves among thousands of entries. */
  assert_int_equal(llmux_resolve(big, "m2999-a", &res), 0);
  assert_string_equal(res.routes[0]->id, "p-m2999");
  llmux_config_free(big);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(canonical_id_resolves_to_its_routes_by_provider_priority),
    cmocka_unit_test(variant_name_resolves_through_builtin_alias),
    cmocka_unit_test(provider_prefixed_names_resolve),
    cmocka_unit_test(names_are_case_insensitive),
    cmocka_unit_test(generic_aliases_expand_to_their_tiers),
    cmocka_unit_test(best_prefers_the_highest_tier_and_skips_embedding_models),
    cmocka_unit_test(generic_with_min_and_max_tier),
    cmocka_unit_test(user_alias_maps_openai_names),
    cmocka_unit_test(user_alias_wins_over_builtin_alias),
    cmocka_unit_test(user_aliases_chain),
    cmocka_unit_test(profile_expands_models_in_listed_order),
    cmocka_unit_test(weighted_profile_keeps_weights_and_accepts_aliases),
    cmocka_unit_test(agent_resolves_through_its_profile),
    cmocka_unit_test(local_profile_goes_to_ollama),
    cmocka_unit_test(display_name_is_read_and_dumped),
    cmocka_unit_test(passthrough_sends_any_id_to_the_provider),
    cmocka_unit_test(passthrough_needs_a_passthrough_provider_and_an_id),
    cmocka_unit_test(passthrough_route_is_not_a_name),
    cmocka_unit_test(routes_order_by_priority_then_config_order),
    cmocka_unit_test(unknown_name_suggests_closest_names),
    cmocka_unit_test(resolven_takes_a_slice),
    cmocka_unit_test(dump_lists_routes_and_never_keys),
    cmocka_unit_test(catalog_arrays_list_models_generics_and_profiles),
    cmocka_unit_test(thousands_of_names_all_resolve),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
