/* Generations: built from the files, pinned by requests, freed by the last
 * one; what they share (limits, route state, plugins) outlives them; an
 * invalid configuration builds nothing. And the admin endpoints' peer
 * check. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>
#include <mbedtls/sha256.h>

#include "gateway/admin.h"
#include "gateway/generation.h"
#include "base/util.h"

#define PLUGIN_DIR LLMUX_BUILD_DIR "/plugins"

/* A route limited to 5 requests a minute on the in-process `simple`
 * provider, and a tenant limited to 7. */
#define VALID(rpm)                                                             \
  "[server]\nlisten = 127.0.0.1:0\n"                                           \
  "[model e]\ntier = 1\ncapabilities = embeddings\n"                           \
  "[provider simple]\nplugin = simple\n"                                       \
  "[route simple e]\nid = e-id\nrequests_per_minute = " rpm "\n"               \
  "[tenant t]\nkey_sha256 = "                                                  \
  "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n"         \
  "requests_per_minute = 7\n"

typedef struct fixture_s {
  char dir[64];
  char path[96];
  llmux_gen_shared_t sh;
  llmux_route_table_t *routes;
  llmux_rl_store_t *rl, *tenant_rl;
  llmux_provider_cache_t cache;
  int freed;                 /* generations whose on_free ran */
} fixture_t;

static void write_config(fixture_t *f, const char *text) {
  FILE *fp = fopen(f->path, "w");
  assert_non_null(fp);
  fputs(text, fp);
  fclose(fp);
}

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof *f);
  snprintf(f->dir, sizeof f->dir, "/tmp/llmux-generation-XXXXXX");
  if (mkdtemp(f->dir) == NULL) return -1;
  snprintf(f->path, sizeof f->path, "%s/llmux.ini", f->dir);
  llmux_provider_cache_init(&f->cache);
  if (llmux_route_table_new(&f->routes) != 0 ||
      llmux_rl_memory_store_new(64, &f->rl) != 0 ||
      llmux_rl_memory_store_new(64, &f->tenant_rl) != 0)
    return -1;
  f->sh.routes = f->routes;
  f->sh.rl = f->rl;
  f->sh.tenant_rl = f->tenant_rl;
  f->sh.cache = &f->cache;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  llmux_route_table_free(f->routes);
  llmux_rl_store_destroy(f->rl);
  llmux_rl_store_destroy(f->tenant_rl);
  llmux_provider_cache_free(&f->cache);
  unlink(f->path);
  rmdir(f->dir);
  free(f);
  return 0;
}

static void count_free(llmux_generation_t *gen) {
  ((fixture_t *)gen->data)->freed++;
}

static llmux_generation_t *load(fixture_t *f, const char *text, uint64_t number) {
  llmux_generation_t *gen = NULL;
  llmux_diag_t diag;
  write_config(f, text);
  llmux_diag_init(&diag);
  if (llmux_generation_load(&f->sh, f->path, PLUGIN_DIR, number, &diag, &gen) != 0)
    llmux_diag_print(&diag, stderr);
  llmux_diag_free(&diag);
  assert_non_null(gen);
  gen->data = f;
  gen->on_free = count_free;
  return gen;
}

static void a_pinned_generation_outlives_its_replacement_until_unpinned(void **state) {
  fixture_t *f = *state;
  llmux_generation_t *first = load(f, VALID("5"), 1), *second, *pin;
  assert_int_equal(first->refs, 1);
  assert_non_null(first->provs->items[0].instance);
  pin = llmux_generation_ref(first); /* a request starts */

  second = load(f, VALID("5"), 2);
  llmux_generation_unref(first);     /* the gateway moves to the second */
  assert_int_equal(f->freed, 0);     /* the request still has the first */
  assert_int_equal(pin->number, 1);
  assert_non_null(pin->provs->items[0].instance);

  llmux_generation_unref(pin);       /* its last byte */
  assert_int_equal(f->freed, 1);
  llmux_generation_unref(second);
  assert_int_equal(f->freed, 2);
  assert_int_equal(f->cache.plugins.n, 1); /* simple.so, loaded once for both */
}

static void limits_and_their_counts_are_kept_by_name_with_the_new_values(void **state) {
  fixture_t *f = *state;
  llmux_rl_key_t route = {"simple", "e-id"}, tenant = {"tenant:t", NULL};
  llmux_rl_reservation_t r1, r2;
  llmux_rl_snapshot_t snap;
  llmux_generation_t *first = load(f, VALID("5"), 1), *second;
  memset(&r1, 0, sizeof r1);
  memset(&r2, 0, sizeof r2);
  llmux_rl_reserve(f->rl, &route, 10, 1000, &r1);
  llmux_rl_commit(&r1, 10, 1000);
  llmux_rl_reserve(f->tenant_rl, &tenant, 10, 1000, &r2);
  llmux_rl_commit(&r2, 10, 1000);

  second = load(f, VALID("9"), 2);
  llmux_generation_unref(first);

  assert_int_equal(llmux_rl_snapshot(f->rl, &route, 1001, &snap), 0);
  assert_int_equal(snap.dims[LLMUX_RL_REQ_MINUTE].limit, 9);
  assert_int_equal(snap.dims[LLMUX_RL_REQ_MINUTE].used, 1);
  assert_int_equal(llmux_rl_snapshot(f->tenant_rl, &tenant, 1001, &snap), 0);
  assert_int_equal(snap.dims[LLMUX_RL_REQ_MINUTE].limit, 7);
  assert_int_equal(snap.dims[LLMUX_RL_REQ_MINUTE].used, 1);
  llmux_generation_unref(second);
}

static void an_invalid_configuration_builds_nothing_and_changes_no_limit(void **state) {
  fixture_t *f = *state;
  llmux_rl_key_t route = {"simple", "e-id"};
  llmux_rl_snapshot_t snap;
  llmux_generation_t *first = load(f, VALID("5"), 1), *second = NULL;
  llmux_diag_t diag;
  char text[1024];
  snprintf(text, sizeof text, "%s%s", VALID("9"), "this line is wrong\n");
  write_config(f, text);
  llmux_diag_init(&diag);

  assert_int_equal(llmux_generation_load(&f->sh, f->path, PLUGIN_DIR, 2, &diag, &second),
                   LLMUX_ECONFIG);

  assert_null(second);
  assert_int_equal(diag.errors, 1);
  assert_string_equal(diag.items[0].file, f->path);
  assert_int_equal(diag.items[0].line, 14);
  assert_int_equal(llmux_rl_snapshot(f->rl, &route, 1000, &snap), 0);
  assert_int_equal(snap.dims[LLMUX_RL_REQ_MINUTE].limit, 5);
  llmux_diag_free(&diag);
  llmux_generation_unref(first);
}

static void the_files_carry_the_sha256_of_the_bytes_read(void **state) {
  fixture_t *f = *state;
  llmux_generation_t *gen = load(f, VALID("5"), 1);
  unsigned char want[32];
  mbedtls_sha256_ret((const unsigned char *)VALID("5"), strlen(VALID("5")), want, 0);
  assert_int_equal(gen->cfg->nfiles, 1);
  assert_string_equal(gen->cfg->files[0], f->path);
  assert_memory_equal(gen->cfg->file_sha256[0], want, 32);
  llmux_generation_unref(gen);
}

static struct sockaddr_storage addr(const char *ip) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (strchr(ip, ':')) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    a->sin6_family = AF_INET6;
    assert_int_equal(inet_pton(AF_INET6, ip, &a->sin6_addr), 1);
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    assert_int_equal(inet_pton(AF_INET, ip, &a->sin_addr), 1);
  }
  return ss;
}

static void admin_without_a_key_is_for_loopback_peers_only(void **state) {
  static const char *const loopback[] = {"127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"};
  static const char *const others[] = {"10.0.0.1", "128.0.0.1", "0.0.0.0", "::",
                                       "::ffff:10.0.0.1", "2001:db8::1", "::2"};
  size_t i;
  (void)state;
  for (i = 0; i < sizeof loopback / sizeof *loopback; i++) {
    struct sockaddr_storage ss = addr(loopback[i]);
    assert_true(llmux_admin_peer_is_loopback(&ss));
  }
  for (i = 0; i < sizeof others / sizeof *others; i++) {
    struct sockaddr_storage ss = addr(others[i]);
    assert_false(llmux_admin_peer_is_loopback(&ss));
  }
}

static void only_admin_paths_are_admin(void **state) {
  (void)state;
  assert_true(llmux_admin_path((llmux_str_t){"/admin/config", 13}));
  assert_true(llmux_admin_path((llmux_str_t){"/admin", 6}));
  assert_false(llmux_admin_path((llmux_str_t){"/administrator", 14}));
  assert_false(llmux_admin_path((llmux_str_t){"/v1/admin/x", 11}));
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
    T(a_pinned_generation_outlives_its_replacement_until_unpinned),
    T(limits_and_their_counts_are_kept_by_name_with_the_new_values),
    T(an_invalid_configuration_builds_nothing_and_changes_no_limit),
    T(the_files_carry_the_sha256_of_the_bytes_read),
    cmocka_unit_test(admin_without_a_key_is_for_loopback_peers_only),
    cmocka_unit_test(only_admin_paths_are_admin),
  };
  if (access(PLUGIN_DIR "/simple.so", R_OK) != 0) {
    fprintf(stderr, "%s/simple.so is not built (target plugin_simple)\n", PLUGIN_DIR);
    return 1;
  }
  return cmocka_run_group_tests(tests, NULL, NULL);
}
