/* Configuration the caller's routing builds on (issue 16): prices per
 * route, a profile's preferred providers and MODEL@PROVIDER pins, each
 * mistake reported at its file and line. */
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

static const char base[] =
    "[server]\n"                       /* 1 */
    "listen = 127.0.0.1:0\n"           /* 2 */
    "[model m]\n"                      /* 3 */
    "tier = 2\n"                       /* 4 */
    "price_in = 1\n"                   /* 5 */
    "price_out = 2\n"                  /* 6 */
    "[model free]\n"                   /* 7 */
    "tier = 1\n"                       /* 8 */
    "[provider groq]\n"                /* 9 */
    "plugin = openai\n"                /* 10 */
    "base_url = http://127.0.0.1:1\n"  /* 11 */
    "priority = 1\n"                   /* 12 */
    "[provider nvidia]\n"              /* 13 */
    "plugin = openai\n"                /* 14 */
    "base_url = http://127.0.0.1:1\n"  /* 15 */
    "priority = 2\n"                   /* 16 */
    "[route groq m]\n"                 /* 17 */
    "price_out = 0.5\n"                /* 18 */
    "[route nvidia m]\n"               /* 19 */
    "[route groq free]\n"              /* 20 */
    "price_in = 0.25\n";               /* 21; tests append from line 22 */

typedef struct scratch_s {
  char dir[64];
  char path[96];
  llmux_diag_t diag;
  llmux_config_t *cfg;
} scratch_t;

/* Loads `base` followed by `more`; returns llmux_config_load's result. */
static int load(scratch_t *s, const char *more) {
  FILE *fp;
  memset(s, 0, sizeof *s);
  snprintf(s->dir, sizeof s->dir, "/tmp/llmux-steer-XXXXXX");
  assert_non_null(mkdtemp(s->dir));
  snprintf(s->path, sizeof s->path, "%s/llmux.ini", s->dir);
  fp = fopen(s->path, "w");
  assert_non_null(fp);
  fputs(base, fp);
  fputs(more, fp);
  fclose(fp);
  return llmux_config_load(s->path, &s->cfg, &s->diag);
}

static void unload(scratch_t *s) {
  llmux_config_free(s->cfg);
  llmux_diag_free(&s->diag);
  unlink(s->path);
  rmdir(s->dir);
}

static int has_diag(const scratch_t *s, int line, const char *text) {
  size_t i;
  for (i = 0; i < s->diag.len; i++) {
    const llmux_diag_entry_t *e = &s->diag.items[i];
    if (strcmp(e->file, s->path) == 0 && e->line == line && strstr(e->message, text) &&
        e->severity == LLMUX_DIAG_ERROR)
      return 1;
  }
  llmux_diag_print(&s->diag, stderr);
  return 0;
}

static const llmux_route_conf_t *find_route(const llmux_config_t *cfg, const char *provider,
                                            const char *model) {
  size_t i;
  for (i = 0; i < cfg->nroutes; i++) {
    const llmux_route_conf_t *r = cfg->routes[i];
    if (strcmp(r->provider->name, provider) == 0 && strcmp(r->model->id, model) == 0) return r;
  }
  fail_msg("no route %s/%s", provider, model);
  return NULL;
}

static void route_prices_override_the_models_key_by_key(void **state) {
  scratch_t s;
  const llmux_route_conf_t *r;
  (void)state;
  assert_int_equal(load(&s, ""), 0);
  r = find_route(s.cfg, "groq", "m");
  assert_true(r->has_price && r->price_in == 1 && r->price_out == 0.5);
  r = find_route(s.cfg, "nvidia", "m");
  assert_true(r->has_price && r->price_in == 1 && r->price_out == 2);
  r = find_route(s.cfg, "groq", "free"); /* the model has no price: the route's own */
  assert_true(r->has_price && r->price_in == 0.25 && r->price_out == 0);
  unload(&s);
}

static void a_bad_route_price_is_an_error_at_its_line(void **state) {
  scratch_t s;
  (void)state;
  assert_int_equal(load(&s, "[route nvidia free]\nprice_out = -1\n"), LLMUX_ECONFIG);
  assert_true(has_diag(&s, 23, "bad value for 'price_out'"));
  unload(&s);
}

static void a_profile_links_its_preferred_providers_and_pins(void **state) {
  scratch_t s;
  const llmux_profile_conf_t *p;
  llmux_resolution_t res;
  (void)state;
  assert_int_equal(load(&s, "[profile ares]\nmodels = m@nvidia, free\n"
                            "providers = nvidia, groq\n"), 0);
  assert_int_equal(llmux_resolve(s.cfg, "ares", &res), 0);
  p = res.profile;
  assert_int_equal(p->nproviders, 2);
  assert_string_equal(p->providers[0]->name, "nvidia");
  assert_string_equal(p->providers[1]->name, "groq");
  assert_int_equal(p->nmodels, 2);
  assert_string_equal(p->pins[0]->name, "nvidia");
  assert_null(p->pins[1]);
  /* m brings only its nvidia route, free its only one. */
  assert_int_equal(res.nroutes, 2);
  assert_string_equal(res.routes[0]->provider->name, "nvidia");
  assert_string_equal(res.routes[1]->model->id, "free");
  assert_int_equal(p->models_line, 23);
  unload(&s);
}

static void an_unknown_preferred_provider_is_an_error_at_its_line(void **state) {
  scratch_t s;
  (void)state;
  assert_int_equal(load(&s, "[profile ares]\nmodels = m\nproviders = nvidia,\n  grok\n"),
                   LLMUX_ECONFIG);
  assert_true(has_diag(&s, 25, "profile 'ares' names unknown provider 'grok'; did you mean "
                               "'groq'?"));
  unload(&s);
}

static void a_pin_to_an_unknown_provider_or_one_without_the_route_is_an_error(void **state) {
  scratch_t s;
  (void)state;
  assert_int_equal(load(&s, "[profile ares]\nmodels = m@nvidai\n"), LLMUX_ECONFIG);
  assert_true(has_diag(&s, 23, "profile 'ares' names unknown provider 'nvidai'"));
  unload(&s);
  assert_int_equal(load(&s, "[profile ares]\nmodels = free@nvidia\n"), LLMUX_ECONFIG);
  assert_true(has_diag(&s, 23, "pins model 'free' to provider 'nvidia', which has no route"));
  unload(&s);
  assert_int_equal(load(&s, "[profile ares]\nmodels = nope@nvidia\n"), LLMUX_ECONFIG);
  assert_true(has_diag(&s, 23, "profile 'ares' names unknown model 'nope'"));
  unload(&s);
}

static void escalate_links_a_profile_and_refuses_unknown_ones_and_circles(void **state) {
  scratch_t s;
  (void)state;
  assert_int_equal(load(&s, "[profile a]\nmodels = m\nescalate = b\n[profile b]\nmodels = free\n"),
                   0);
  assert_ptr_equal(s.cfg->profiles[0]->escalate, s.cfg->profiles[1]);
  assert_null(s.cfg->profiles[1]->escalate);
  unload(&s);
  assert_int_equal(load(&s, "[profile a]\nmodels = m\nescalate = bb\n[profile b]\nmodels = m\n"),
                   LLMUX_ECONFIG);
  assert_true(has_diag(&s, 24, "profile 'a' escalates to unknown profile 'bb'; did you mean 'b'?"));
  unload(&s);
  assert_int_equal(load(&s, "[profile a]\nmodels = m\nescalate = b\n"
                            "[profile b]\nmodels = m\nescalate = a\n"), LLMUX_ECONFIG);
  assert_true(has_diag(&s, 24, "profile 'a' escalates in a circle"));
  assert_true(has_diag(&s, 27, "profile 'b' escalates in a circle"));
  unload(&s);
}

/* The zero-key first run (issue 16): a profile none of whose routes has
 * its provider enabled resolves to its fallback_local while no provider
 * that takes a key has one (groq and nvidia here take none), and only then. */
static const char hosted[] =
    "[model big]\ntier = 3\n"
    "[provider keyed]\nplugin = openai\nbase_url = http://127.0.0.1:1\n"
    "api_key_env = LLMUX_TEST_STEER_KEY\n"
    "[route keyed big]\n"
    "[provider other]\nplugin = openai\nbase_url = http://127.0.0.1:1\n"
    "api_key_env = LLMUX_TEST_STEER_OTHER\n"
    "[profile hosted]\nmodels = big\nfallback_local = home\n"
    "[profile home]\nmodels = free\n"
    "[profile mixed]\nmodels = big, free\nfallback_local = home\n"
    "[agent helper]\nprofile = hosted\n";

static void fallback_local_resolves_while_no_route_has_a_key(void **state) {
  scratch_t s;
  llmux_resolution_t res;
  (void)state;
  unsetenv("LLMUX_TEST_STEER_KEY");
  assert_int_equal(load(&s, hosted), 0);
  assert_int_equal(llmux_resolve(s.cfg, "hosted", &res), 0);
  assert_string_equal(res.target, "home");
  assert_int_equal(res.nchain, 2);
  assert_string_equal(res.chain[0].name, "hosted");
  assert_string_equal(res.chain[1].name, "home");
  assert_string_equal(res.profile->name, "home");
  assert_int_equal(llmux_resolve(s.cfg, "helper", &res), 0);
  assert_string_equal(res.target, "home");
  assert_int_equal(llmux_resolve(s.cfg, "mixed", &res), 0);
  assert_string_equal(res.target, "mixed"); /* groq serves `free`: it has no key to miss */
  unload(&s);
  setenv("LLMUX_TEST_STEER_KEY", "k", 1);
  assert_int_equal(load(&s, hosted), 0);
  assert_int_equal(llmux_resolve(s.cfg, "hosted", &res), 0);
  assert_string_equal(res.target, "hosted");
  assert_int_equal(res.nchain, 1);
  unload(&s);
  unsetenv("LLMUX_TEST_STEER_KEY");
  /* Another provider's key set: hosted's own 503 (naming its key) is the
   * better answer than a quiet local model. */
  setenv("LLMUX_TEST_STEER_OTHER", "k", 1);
  assert_int_equal(load(&s, hosted), 0);
  assert_int_equal(llmux_resolve(s.cfg, "hosted", &res), 0);
  assert_string_equal(res.target, "hosted");
  unload(&s);
  unsetenv("LLMUX_TEST_STEER_OTHER");
}

static void fallback_local_refuses_unknown_profiles_and_itself(void **state) {
  scratch_t s;
  (void)state;
  assert_int_equal(load(&s, "[profile a]\nmodels = m\nfallback_local = bb\n"
                            "[profile b]\nmodels = m\n"), LLMUX_ECONFIG);
  assert_true(has_diag(&s, 24, "profile 'a' falls back to unknown profile 'bb'; did you mean 'b'?"));
  unload(&s);
  assert_int_equal(load(&s, "[profile a]\nmodels = m\nescalate = a2\nfallback_local = a\n"
                            "[profile a2]\nmodels = free\n"), LLMUX_ECONFIG);
  assert_true(has_diag(&s, 25, "profile 'a' falls back to itself"));
  unload(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(route_prices_override_the_models_key_by_key),
    cmocka_unit_test(a_bad_route_price_is_an_error_at_its_line),
    cmocka_unit_test(a_profile_links_its_preferred_providers_and_pins),
    cmocka_unit_test(an_unknown_preferred_provider_is_an_error_at_its_line),
    cmocka_unit_test(a_pin_to_an_unknown_provider_or_one_without_the_route_is_an_error),
    cmocka_unit_test(escalate_links_a_profile_and_refuses_unknown_ones_and_circles),
    cmocka_unit_test(fallback_local_resolves_while_no_route_has_a_key),
    cmocka_unit_test(fallback_local_refuses_unknown_profiles_and_itself),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
