/* A request its model cannot serve (gateway/unsupported.h): only when the
 * capability filter removed every route is it the client's 400, and the
 * message names what is missing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "base/util.h"
#include "gateway/unsupported.h"
#include "llmux/provider.h"

static llmux_route_skip_t skips[4];
static llmux_route_plan_t plan;
static llmux_buf_t msg;

static int setup(void **st) {
  (void)st;
  memset(skips, 0, sizeof skips);
  memset(&plan, 0, sizeof plan);
  plan.skipped = skips;
  msg = (llmux_buf_t){0};
  return 0;
}

static int teardown(void **st) {
  (void)st;
  llmux_buf_free(&msg);
  return 0;
}

static void skipped_for(llmux_skip_reason_t reason, unsigned missing) {
  skips[plan.nskipped].reason = reason;
  skips[plan.nskipped].missing_caps = missing;
  plan.nskipped++;
}

static void test_tools_no_route_declares(void **st) {
  (void)st;
  skipped_for(LLMUX_SKIP_CAPABILITY, LLMUX_CAP_TOOLS);
  skipped_for(LLMUX_SKIP_CAPABILITY, LLMUX_CAP_TOOLS);
  assert_int_equal(llmux_unsupported_message(&plan, LLMUX_ENDPOINT_CHAT, "m", &msg), 1);
  assert_string_equal(msg.base,
                      "Model 'm' does not support tools (no route of it declares the 'tools' "
                      "capability).");
}

static void test_several_capabilities_missing_everywhere(void **st) {
  (void)st;
  skipped_for(LLMUX_SKIP_CAPABILITY, LLMUX_CAP_TOOLS | LLMUX_CAP_VISION);
  assert_int_equal(llmux_unsupported_message(&plan, LLMUX_ENDPOINT_CHAT, "m", &msg), 1);
  assert_string_equal(msg.base, "Model 'm' does not support tools and vision (no route of it "
                                "declares the capabilities 'tools', 'vision').");
}

static void test_each_route_lacking_a_different_one(void **st) {
  (void)st;
  skipped_for(LLMUX_SKIP_CAPABILITY, LLMUX_CAP_TOOLS);
  skipped_for(LLMUX_SKIP_CAPABILITY, LLMUX_CAP_JSON);
  assert_int_equal(llmux_unsupported_message(&plan, LLMUX_ENDPOINT_CHAT, "p", &msg), 1);
  assert_string_equal(msg.base, "Model 'p' does not support tools and json in one request (no "
                                "route of it declares all of 'tools', 'json').");
}

static void test_embeddings_to_a_chat_model_and_chat_to_an_embeddings_one(void **st) {
  (void)st;
  skipped_for(LLMUX_SKIP_CAPABILITY, LLMUX_CAP_EMBEDDINGS);
  assert_int_equal(llmux_unsupported_message(&plan, LLMUX_ENDPOINT_EMBEDDINGS, "c", &msg), 1);
  assert_string_equal(msg.base, "Model 'c' is not an embeddings model (no route of it declares "
                                "the 'embeddings' capability).");
  msg.len = 0;
  skips[0].missing_caps = 0; /* the router's word for "an embeddings model" */
  assert_int_equal(llmux_unsupported_message(&plan, LLMUX_ENDPOINT_CHAT, "e", &msg), 1);
  assert_string_equal(msg.base, "Model 'e' is an embeddings model: it serves /v1/embeddings only.");
}

static void test_any_other_reason_or_a_candidate_keeps_the_503(void **st) {
  static const llmux_skip_reason_t others[] = {LLMUX_SKIP_DISABLED, LLMUX_SKIP_CONTEXT,
                                               LLMUX_SKIP_COOLDOWN, LLMUX_SKIP_RATE_LIMITED};
  size_t i;
  (void)st;
  assert_int_equal(llmux_unsupported_message(&plan, LLMUX_ENDPOINT_CHAT, "m", &msg), 0);
  skipped_for(LLMUX_SKIP_CAPABILITY, LLMUX_CAP_TOOLS);
  for (i = 0; i < sizeof others / sizeof others[0]; i++) {
    plan.nskipped = 1;
    skipped_for(others[i], 0);
    assert_int_equal(llmux_unsupported_message(&plan, LLMUX_ENDPOINT_CHAT, "m", &msg), 0);
  }
  plan.nskipped = 1;
  plan.nroutes = 1; /* another route remains: it decides */
  assert_int_equal(llmux_unsupported_message(&plan, LLMUX_ENDPOINT_CHAT, "m", &msg), 0);
  assert_int_equal(msg.len, 0);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_tools_no_route_declares),
      T(test_several_capabilities_missing_everywhere),
      T(test_each_route_lacking_a_different_one),
      T(test_embeddings_to_a_chat_model_and_chat_to_an_embeddings_one),
      T(test_any_other_reason_or_a_candidate_keeps_the_503),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
