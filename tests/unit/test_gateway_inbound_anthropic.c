/* Anthropic's Messages API in front of the chat path (gateway/inbound.h):
 * a Messages request becomes the equivalent chat request; a chat answer
 * becomes a Message; a chat stream, fed in pieces cut anywhere, becomes
 * exactly the event sequence Anthropic documents; hostile bodies are 400s.
 *
 * The expected streams are the examples of Anthropic's streaming guide
 * (https://docs.anthropic.com/en/api/messages-streaming: "Basic streaming
 * request", "Streaming request with tool use", "Error events"), written
 * compactly, with these deliberate differences, each a fact of the
 * translation: message_start's output_tokens is 0 (nothing is generated
 * yet; Anthropic says 1), message_delta also carries input_tokens (the
 * provider's count, which replaces message_start's estimate), and no empty
 * input_json_delta opens a tool block (chat sends none). */
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "base/util.h"
#include "gateway/inbound.h"
#include "llmux/provider.h"

static const llmux_inbound_t *const in = &llmux_inbound_anthropic;

/* ---- helpers ------------------------------------------------------------- */

/* The chat body for a Messages body, NUL-terminated (free it); asserts the
 * conversion succeeds. */
static char *convert(const char *messages_body) {
  llmux_buf_t chat = {0};
  llmux_inbound_err_t err;
  void *st = NULL;
  int rc = in->request(messages_body, strlen(messages_body), 0, &chat, &st, &err);
  if (rc != 0) fail_msg("conversion failed (%d): %s\nbody: %s", rc, err.message, messages_body);
  in->state_free(st);
  llmux_buf_append(&chat, "", 1);
  return chat.base;
}

static void assert_json_eq(const char *got, const char *want) {
  json_t *g = json_loads(got, 0, NULL), *w = json_loads(want, 0, NULL);
  assert_non_null(w);
  if (g == NULL || !json_equal(g, w)) fail_msg("got  %s\nwant %s", got, want);
  json_decref(g);
  json_decref(w);
}

static void assert_converts(const char *messages_body, const char *chat_body) {
  char *got = convert(messages_body);
  assert_json_eq(got, chat_body);
  free(got);
}

/* The 400 a Messages body gets; its message must start with `prefix`. */
static void assert_refused(const char *body, size_t len, const char *prefix) {
  llmux_buf_t chat = {0};
  llmux_inbound_err_t err;
  void *st = NULL;
  int rc = in->request(body, len, 0, &chat, &st, &err);
  in->state_free(st);
  if (rc != LLMUX_EINVAL) fail_msg("accepted (%d): %.*s", rc, (int)len, body);
  assert_int_equal(err.status, 400);
  assert_int_equal(chat.len, 0);
  if (strncmp(err.message, prefix, strlen(prefix)) != 0)
    fail_msg("message [%s] does not start with [%s]", err.message, prefix);
  llmux_buf_free(&chat);
}

#define REFUSED(body, prefix) assert_refused(body, sizeof(body) - 1, prefix)

/* A stream's state, as POST /v1/messages with stream:true makes it. */
static void *stream_state(void) {
  static const char body[] = "{\"model\":\"claude-opus-4-20250514\",\"max_tokens\":1024,"
                             "\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}],"
                             "\"stream\":true}";
  llmux_buf_t chat = {0};
  llmux_inbound_err_t err;
  void *st = NULL;
  assert_int_equal(in->request(body, sizeof body - 1, 0, &chat, &st, &err), 0);
  llmux_buf_free(&chat);
  return st;
}

/* Feeds `chat` cut at the given offsets (ascending, ending with its
 * length), then ends the stream; returns the events, NUL-terminated. */
static char *run_stream(const char *chat, const size_t *cuts, size_t ncuts, uint64_t estimate) {
  llmux_inbound_ctx_t ctx = {"req_test", estimate};
  llmux_buf_t out = {0};
  void *st = stream_state();
  size_t i, at = 0;
  for (i = 0; i < ncuts; i++) {
    assert_int_equal(in->stream_feed(st, &ctx, chat + at, cuts[i] - at, &out), 0);
    at = cuts[i];
  }
  assert_int_equal(in->stream_end(st, &ctx, &out), 0);
  in->state_free(st);
  llmux_buf_append(&out, "", 1);
  return out.base;
}

static void assert_stream_whole(const char *chat, const char *want, uint64_t estimate) {
  size_t cut = strlen(chat);
  char *got = run_stream(chat, &cut, 1, estimate);
  if (strcmp(got, want) != 0) fail_msg("got:\n%s\nwant:\n%s", got, want);
  free(got);
}

/* ---- fixtures: chat streams and the events they must become -------------- */

#define CHUNK(delta, finish)                                                             \
  "data: {\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"object\":"                 \
  "\"chat.completion.chunk\",\"created\":1,\"model\":\"claude-opus-4-20250514\","       \
  "\"choices\":[{\"index\":0,\"delta\":" delta ",\"finish_reason\":" finish "}]}\n\n"
#define USAGE(in, out)                                                                   \
  "data: {\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"object\":"                 \
  "\"chat.completion.chunk\",\"created\":1,\"model\":\"claude-opus-4-20250514\","       \
  "\"choices\":[],\"usage\":{\"prompt_tokens\":" in ",\"completion_tokens\":" out ","     \
  "\"total_tokens\":0}}\n\n"
#define EV(name, json) "event: " name "\ndata: " json "\n\n"

/* "Basic streaming request": Hello! in two deltas. */
static const char basic_chat[] =
    CHUNK("{\"role\":\"assistant\",\"content\":\"\"}", "null")
    CHUNK("{\"content\":\"Hello\"}", "null")
    CHUNK("{\"content\":\"!\"}", "null")
    CHUNK("{}", "\"stop\"")
    USAGE("25", "15")
    "data: [DONE]\n\n";

static const char basic_events[] =
    EV("message_start", "{\"type\":\"message_start\",\"message\":{\"id\":"
       "\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"type\":\"message\",\"role\":\"assistant\","
       "\"model\":\"claude-opus-4-20250514\",\"content\":[],\"stop_reason\":null,"
       "\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":0}}}")
    EV("content_block_start", "{\"type\":\"content_block_start\",\"index\":0,"
       "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}")
    EV("ping", "{\"type\":\"ping\"}")
    EV("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,"
       "\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}")
    EV("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,"
       "\"delta\":{\"type\":\"text_delta\",\"text\":\"!\"}}")
    EV("content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0}")
    EV("message_delta", "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\","
       "\"stop_sequence\":null},\"usage\":{\"input_tokens\":25,\"output_tokens\":15}}")
    EV("message_stop", "{\"type\":\"message_stop\"}");

/* "Streaming request with tool use": text, then get_weather's input in
 * pieces. */
#define TOOL_ARGS(piece) \
  "{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"" piece "\"}}]}"
static const char tool_chat[] =
    CHUNK("{\"role\":\"assistant\",\"content\":\"\"}", "null")
    CHUNK("{\"content\":\"Okay\"}", "null")
    CHUNK("{\"content\":\", let's check the weather for San Francisco, CA:\"}", "null")
    CHUNK("{\"tool_calls\":[{\"index\":0,\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"type\":"
          "\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]}", "null")
    CHUNK(TOOL_ARGS("{\\\"location\\\":"), "null")
    CHUNK(TOOL_ARGS(" \\\"San Francisco, CA\\\""), "null")
    CHUNK(TOOL_ARGS(", \\\"unit\\\": \\\"fahrenheit\\\"}"), "null")
    CHUNK("{}", "\"tool_calls\"")
    USAGE("472", "89")
    "data: [DONE]\n\n";

#define JSON_DELTA(piece)                                                          \
  EV("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":1,"       \
     "\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"" piece "\"}}")
static const char tool_events[] =
    EV("message_start", "{\"type\":\"message_start\",\"message\":{\"id\":"
       "\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"type\":\"message\",\"role\":\"assistant\","
       "\"model\":\"claude-opus-4-20250514\",\"content\":[],\"stop_reason\":null,"
       "\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"output_tokens\":0}}}")
    EV("content_block_start", "{\"type\":\"content_block_start\",\"index\":0,"
       "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}")
    EV("ping", "{\"type\":\"ping\"}")
    EV("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,"
       "\"delta\":{\"type\":\"text_delta\",\"text\":\"Okay\"}}")
    EV("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,"
       "\"delta\":{\"type\":\"text_delta\",\"text\":\", let's check the weather for San "
       "Francisco, CA:\"}}")
    EV("content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0}")
    EV("content_block_start", "{\"type\":\"content_block_start\",\"index\":1,"
       "\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\","
       "\"name\":\"get_weather\",\"input\":{}}}")
    JSON_DELTA("{\\\"location\\\":")
    JSON_DELTA(" \\\"San Francisco, CA\\\"")
    JSON_DELTA(", \\\"unit\\\": \\\"fahrenheit\\\"}")
    EV("content_block_stop", "{\"type\":\"content_block_stop\",\"index\":1}")
    EV("message_delta", "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\","
       "\"stop_sequence\":null},\"usage\":{\"input_tokens\":472,\"output_tokens\":89}}")
    EV("message_stop", "{\"type\":\"message_stop\"}");

/* "Error events": an overloaded provider mid-answer, as the anthropic
 * plugin reports it in chat's shape. */
static const char error_chat[] =
    CHUNK("{\"role\":\"assistant\",\"content\":\"Hi\"}", "null")
    "data: {\"error\":{\"message\":\"Overloaded\",\"type\":\"overloaded_error\","
    "\"param\":null,\"code\":\"overloaded_error\"}}\n\n";

static const char error_events[] =
    EV("message_start", "{\"type\":\"message_start\",\"message\":{\"id\":"
       "\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"type\":\"message\",\"role\":\"assistant\","
       "\"model\":\"claude-opus-4-20250514\",\"content\":[],\"stop_reason\":null,"
       "\"stop_sequence\":null,\"usage\":{\"input_tokens\":7,\"output_tokens\":0}}}")
    EV("content_block_start", "{\"type\":\"content_block_start\",\"index\":0,"
       "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}")
    EV("ping", "{\"type\":\"ping\"}")
    EV("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,"
       "\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}")
    EV("error", "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
       "\"message\":\"Overloaded\"}}");

/* ---- requests -------------------------------------------------------------- */

static void test_a_plain_request_becomes_the_same_chat_request(void **state) {
  assert_converts(
      "{\"model\":\"claude-x\",\"max_tokens\":1024,\"system\":\"Be brief.\","
      "\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"},"
      "{\"role\":\"assistant\",\"content\":\"Hi!\"},{\"role\":\"user\",\"content\":\"Bye\"}]}",
      "{\"model\":\"claude-x\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
      "{\"role\":\"user\",\"content\":\"Hello\"},{\"role\":\"assistant\",\"content\":\"Hi!\"},"
      "{\"role\":\"user\",\"content\":\"Bye\"}],\"max_tokens\":1024}");
}

static void test_system_blocks_join_and_options_map_to_chat_names(void **state) {
  assert_converts(
      "{\"model\":\"m\",\"max_tokens\":5,\"system\":[{\"type\":\"text\",\"text\":\"A\","
      "\"cache_control\":{\"type\":\"ephemeral\"}},{\"type\":\"text\",\"text\":\"B\"}],"
      "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":0.5,\"top_p\":1,"
      "\"top_k\":40,\"stop_sequences\":[\"END\",\"STOP\"],\"metadata\":{\"user_id\":\"u1\"},"
      "\"stream\":true,\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":1024}}",
      "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"A\\n\\nB\"},"
      "{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":5,\"stop\":[\"END\",\"STOP\"],"
      "\"temperature\":0.5,\"top_p\":1,\"user\":\"u1\",\"stream\":true,"
      "\"stream_options\":{\"include_usage\":true}}");
}

static void test_content_blocks_become_parts_and_images_image_urls(void **state) {
  assert_converts(
      "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":["
      "{\"type\":\"text\",\"text\":\"What are these?\"},"
      "{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":\"image/png\","
      "\"data\":\"iVBORw0K\"}},"
      "{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":\"https://x.test/a.jpg\"}}]},"
      "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"One part\"}]}]}",
      "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":["
      "{\"type\":\"text\",\"text\":\"What are these?\"},"
      "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,iVBORw0K\"}},"
      "{\"type\":\"image_url\",\"image_url\":{\"url\":\"https://x.test/a.jpg\"}}]},"
      "{\"role\":\"user\",\"content\":\"One part\"}],\"max_tokens\":5}");
}

static void test_tool_use_and_tool_result_become_tool_calls_and_tool_messages(void **state) {
  assert_converts(
      "{\"model\":\"m\",\"max_tokens\":5,\"messages\":["
      "{\"role\":\"user\",\"content\":\"Weather in Paris and Rome?\"},"
      "{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\",\"thinking\":\"hm\","
      "\"signature\":\"s\"},{\"type\":\"text\",\"text\":\"Checking.\"},"
      "{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"w\",\"input\":{\"city\":\"Paris\"}},"
      "{\"type\":\"tool_use\",\"id\":\"toolu_2\",\"name\":\"w\",\"input\":{\"city\":\"Rome\"}}]},"
      "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Here:\"},"
      "{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_1\",\"content\":\"18C\"},"
      "{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_2\",\"is_error\":true,"
      "\"content\":[{\"type\":\"text\",\"text\":\"no\"},{\"type\":\"text\",\"text\":\"data\"}]}]},"
      "{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"toolu_3\","
      "\"name\":\"w\",\"input\":{}}]},"
      "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_3\"}]}]}",
      "{\"model\":\"m\",\"messages\":["
      "{\"role\":\"user\",\"content\":\"Weather in Paris and Rome?\"},"
      "{\"role\":\"assistant\",\"content\":\"Checking.\",\"tool_calls\":["
      "{\"id\":\"toolu_1\",\"type\":\"function\",\"function\":{\"name\":\"w\","
      "\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}},"
      "{\"id\":\"toolu_2\",\"type\":\"function\",\"function\":{\"name\":\"w\","
      "\"arguments\":\"{\\\"city\\\":\\\"Rome\\\"}\"}}]},"
      "{\"role\":\"tool\",\"tool_call_id\":\"toolu_1\",\"content\":\"18C\"},"
      "{\"role\":\"tool\",\"tool_call_id\":\"toolu_2\",\"content\":\"no\\ndata\"},"
      "{\"role\":\"user\",\"content\":\"Here:\"},"
      "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"toolu_3\","
      "\"type\":\"function\",\"function\":{\"name\":\"w\",\"arguments\":\"{}\"}}]},"
      "{\"role\":\"tool\",\"tool_call_id\":\"toolu_3\",\"content\":\"\"}],\"max_tokens\":5}");
}

static void test_tools_and_each_tool_choice_map_to_chat(void **state) {
  static const char *const choices[][2] = {
      {"{\"type\":\"auto\"}", "\"tool_choice\":\"auto\""},
      {"{\"type\":\"any\"}", "\"tool_choice\":\"required\""},
      {"{\"type\":\"none\"}", "\"tool_choice\":\"none\""},
      {"{\"type\":\"tool\",\"name\":\"w\"}",
       "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"w\"}}"},
      {"{\"type\":\"any\",\"disable_parallel_tool_use\":true}",
       "\"tool_choice\":\"required\",\"parallel_tool_calls\":false"},
  };
  size_t i;
  for (i = 0; i < LLMUX_COUNTOF(choices); i++) {
    char req[512], want[512];
    snprintf(req, sizeof req,
             "{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":"
             "\"x\"}],\"tools\":[{\"name\":\"w\",\"description\":\"Weather\",\"input_schema\":"
             "{\"type\":\"object\"},\"cache_control\":{\"type\":\"ephemeral\"}}],"
             "\"tool_choice\":%s}", choices[i][0]);
    snprintf(want, sizeof want,
             "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
             "\"max_tokens\":5,\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"w\","
             "\"description\":\"Weather\",\"parameters\":{\"type\":\"object\"}}}],%s}",
             choices[i][1]);
    assert_converts(req, want);
  }
}

static void test_count_tokens_needs_no_max_tokens_but_messages_does(void **state) {
  static const char body[] = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\","
                             "\"content\":\"x\"}]}";
  llmux_buf_t chat = {0};
  llmux_inbound_err_t err;
  void *st = NULL;
  assert_int_equal(
      in->request(body, sizeof body - 1, LLMUX_INBOUND_COUNT_ONLY, &chat, &st, &err), 0);
  in->state_free(st);
  llmux_buf_free(&chat);
  REFUSED("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
          "max_tokens: Field required");
}

/* ---- hostile requests -------------------------------------------------------- */

#define OK_MSGS "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]"

static void test_wrong_types_are_400_naming_the_field(void **state) {
  REFUSED("{\"model\":7,\"max_tokens\":5," OK_MSGS "}", "model:");
  REFUSED("{\"model\":\"\",\"max_tokens\":5," OK_MSGS "}", "model:");
  REFUSED("{\"max_tokens\":5," OK_MSGS "}", "model: Field required");
  REFUSED("{\"model\":\"m\",\"max_tokens\":\"5\"," OK_MSGS "}", "max_tokens:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":0," OK_MSGS "}", "max_tokens:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5.5," OK_MSGS "}", "max_tokens:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"messages\":{}}", "messages:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"messages\":[]}", "messages:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"messages\":[7]}", "messages.0:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"system\","
          "\"content\":\"x\"}]}",
          "messages.0.role:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":5}]}",
          "messages.0.content:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":"
          "[{\"type\":\"text\"}]}]}", "messages.0.content.0.text:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":"
          "[{\"type\":\"document\",\"source\":{}}]}]}", "messages.0.content.0:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":"
          "[{\"type\":\"image\",\"source\":{\"type\":\"file\"}}]}]}",
          "messages.0.content.0.source:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"assistant\",\"content\":"
          "[{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"w\",\"input\":[]}]}]}",
          "messages.0.content.0.input:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"system\":7," OK_MSGS "}", "system:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"temperature\":1.5," OK_MSGS "}", "temperature:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"temperature\":\"hot\"," OK_MSGS "}", "temperature:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"top_k\":-1," OK_MSGS "}", "top_k:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"stop_sequences\":[1]," OK_MSGS "}",
          "stop_sequences.0:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"stream\":\"yes\"," OK_MSGS "}", "stream:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"metadata\":{\"user_id\":5}," OK_MSGS "}",
          "metadata.user_id:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"tools\":[{\"name\":\"w\"}]," OK_MSGS "}",
          "tools.0.input_schema:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"tools\":[{\"type\":\"web_search_20250305\","
          "\"name\":\"web_search\"}]," OK_MSGS "}", "tools.0:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"tools\":[{\"name\":\"w\",\"input_schema\":{}}],"
          "\"tool_choice\":{\"type\":\"maybe\"}," OK_MSGS "}", "tool_choice.type:");
}

static void test_huge_numbers_bad_json_and_bad_utf8_are_400(void **state) {
  REFUSED("{\"model\":\"m\",\"max_tokens\":99999999999999999999999," OK_MSGS "}",
          "The request body is not valid JSON");
  REFUSED("{\"model\":\"m\",\"max_tokens\":1e400," OK_MSGS "}",
          "The request body is not valid JSON");
  REFUSED("{\"model\":\"m\",\"max_tokens\":2000000000," OK_MSGS "}", "max_tokens:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"temperature\":1e300," OK_MSGS "}", "temperature:");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":"
          "\"\xff\xfe\"}]}", "The request body is not valid JSON");
  REFUSED("{\"model\":\"m\\u0000x\",\"max_tokens\":5," OK_MSGS "}",
          "The request body is not valid JSON");
  REFUSED("[1,2]", "The request body must be a JSON object");
  REFUSED("", "The request body is not valid JSON");
  REFUSED("{\"model\":\"m\",", "The request body is not valid JSON");
}

static void test_duplicate_keys_anywhere_are_400(void **state) {
  REFUSED("{\"model\":\"m\",\"model\":\"n\",\"max_tokens\":5," OK_MSGS "}",
          "The request body is not valid JSON");
  REFUSED("{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"role\":"
          "\"assistant\",\"content\":\"x\"}]}", "The request body is not valid JSON");
}

/* ---- plain answers ------------------------------------------------------------ */

static char *answer(const char *chat, uint64_t estimate) {
  llmux_inbound_ctx_t ctx = {"req_abc", estimate};
  llmux_buf_t out = {0};
  void *st = stream_state();
  int rc = in->answer(st, &ctx, chat, strlen(chat), &out);
  in->state_free(st);
  if (rc != 0) {
    llmux_buf_free(&out);
    return NULL;
  }
  llmux_buf_append(&out, "", 1);
  return out.base;
}

static void test_a_chat_completion_becomes_a_message(void **state) {
  char *got = answer(
      "{\"id\":\"chatcmpl-9\",\"object\":\"chat.completion\",\"model\":\"gpt-4o-2024\","
      "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hi!\"},"
      "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,"
      "\"total_tokens\":15}}", 99);
  assert_non_null(got);
  assert_json_eq(got, "{\"id\":\"msg_chatcmpl-9\",\"type\":\"message\",\"role\":\"assistant\","
                      "\"model\":\"gpt-4o-2024\","
                      "\"content\":[{\"type\":\"text\",\"text\":\"Hi!\"}],"
                      "\"stop_reason\":\"end_turn\",\"stop_sequence\":null,"
                      "\"usage\":{\"input_tokens\":12,\"output_tokens\":3}}");
  free(got);
}

static void test_tool_calls_become_tool_use_blocks_with_parsed_input(void **state) {
  char *got = answer(
      "{\"id\":\"msg_01\",\"model\":\"claude-x\",\"choices\":[{\"index\":0,\"message\":{"
      "\"role\":\"assistant\",\"content\":\"Let me check.\",\"tool_calls\":["
      "{\"id\":\"toolu_9\",\"type\":\"function\",\"function\":{\"name\":\"w\","
      "\"arguments\":\"{\\\"city\\\":\\\"Paris\\\",\\\"days\\\":[1,2]}\"}},"
      "{\"type\":\"function\",\"function\":{\"name\":\"t\",\"arguments\":\"\"}}]},"
      "\"finish_reason\":\"tool_calls\"}]}", 40);
  assert_non_null(got);
  assert_json_eq(got, "{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\","
                      "\"model\":\"claude-x\",\"content\":["
                      "{\"type\":\"text\",\"text\":\"Let me check.\"},"
                      "{\"type\":\"tool_use\",\"id\":\"toolu_9\",\"name\":\"w\","
                      "\"input\":{\"city\":\"Paris\",\"days\":[1,2]}},"
                      "{\"type\":\"tool_use\",\"id\":\"toolu_req_abc_1\",\"name\":\"t\","
                      "\"input\":{}}],"
                      "\"stop_reason\":\"tool_use\",\"stop_sequence\":null,"
                      "\"usage\":{\"input_tokens\":40,\"output_tokens\":0}}");
  free(got);
}

static void test_content_given_as_parts_keeps_its_text(void **state) {
  char *got = answer("{\"choices\":[{\"message\":{\"content\":[{\"type\":\"text\","
                     "\"text\":\"a\"},{\"type\":\"refusal\",\"refusal\":\"no\"},"
                     "{\"type\":\"text\",\"text\":\"b\"}]},\"finish_reason\":\"stop\"}]}", 2);
  json_t *o = json_loads(got, 0, NULL);
  char *content = json_dumps(json_object_get(o, "content"), JSON_COMPACT);
  assert_string_equal(content, "[{\"type\":\"text\",\"text\":\"a\"},"
                               "{\"type\":\"text\",\"text\":\"b\"}]");
  free(content);
  json_decref(o);
  free(got);
}

static void test_finish_reasons_map_to_stop_reasons(void **state) {
  static const char *const map[][2] = {{"\"length\"", "max_tokens"},
                                       {"\"content_filter\"", "refusal"},
                                       {"\"stop\"", "end_turn"},
                                       {"null", "end_turn"}};
  size_t i;
  for (i = 0; i < LLMUX_COUNTOF(map); i++) {
    char chat[256];
    char *got;
    json_t *o;
    snprintf(chat, sizeof chat, "{\"choices\":[{\"message\":{\"content\":\"x\"},"
             "\"finish_reason\":%s}]}", map[i][0]);
    got = answer(chat, 1);
    assert_non_null(got);
    o = json_loads(got, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(o, "stop_reason")), map[i][1]);
    assert_string_equal(json_string_value(json_object_get(o, "model")), "claude-opus-4-20250514");
    assert_string_equal(json_string_value(json_object_get(o, "id")), "msg_req_abc");
    json_decref(o);
    free(got);
  }
}

static void test_an_answer_that_makes_no_sense_is_refused(void **state) {
  assert_null(answer("{\"choices\":[]}", 1));
  assert_null(answer("not json", 1));
  assert_null(answer("{\"choices\":[{\"message\":{\"tool_calls\":[{\"function\":{\"name\":"
                     "\"w\",\"arguments\":\"[1]\"}}]}}]}", 1));
  assert_null(answer("{\"choices\":[{\"message\":{\"tool_calls\":[{\"function\":{\"name\":"
                     "\"w\",\"arguments\":\"{oops\"}}]}}]}", 1));
}

/* ---- streams -------------------------------------------------------------------- */

static void test_a_text_stream_is_the_documented_event_sequence(void **state) {
  assert_stream_whole(basic_chat, basic_events, 25);
}

static void test_a_tool_stream_is_the_documented_event_sequence(void **state) {
  assert_stream_whole(tool_chat, tool_events, 472);
}

static void test_the_same_events_whatever_the_cuts(void **state) {
  const char *const chats[] = {basic_chat, tool_chat};
  const char *const wants[] = {basic_events, tool_events};
  const uint64_t estimates[] = {25, 472};
  size_t c, k, n;
  for (c = 0; c < 2; c++) {
    size_t len = strlen(chats[c]);
    size_t *cuts = malloc((len + 1) * sizeof *cuts);
    char *got;
    for (k = 0; k <= len; k++) { /* two pieces, cut at every byte */
      size_t two[2] = {k, len};
      got = run_stream(chats[c], two, 2, estimates[c]);
      if (strcmp(got, wants[c]) != 0) fail_msg("cut at %zu of fixture %zu:\n%s", k, c, got);
      free(got);
    }
    for (n = 0; n < len; n++) cuts[n] = n + 1; /* and one byte at a time */
    got = run_stream(chats[c], cuts, len, estimates[c]);
    assert_string_equal(got, wants[c]);
    free(got);
    free(cuts);
  }
}

static void test_an_error_mid_stream_is_the_last_event(void **state) {
  llmux_inbound_ctx_t ctx = {"req_test", 7};
  llmux_buf_t out = {0};
  void *st = stream_state();
  assert_int_equal(in->stream_feed(st, &ctx, error_chat, sizeof error_chat - 1, &out), 0);
  assert_int_equal(in->stream_feed(st, &ctx, basic_chat, sizeof basic_chat - 1, &out), 0);
  assert_int_equal(in->stream_end(st, &ctx, &out), 0);
  assert_int_equal(in->stream_error(st, "upstream_error", "upstream_garbage", "x", &out), 0);
  in->state_free(st);
  llmux_buf_append(&out, "", 1);
  assert_string_equal(out.base, error_events);
  llmux_buf_free(&out);
}

static void test_a_stream_the_gateway_breaks_ends_with_an_error_event(void **state) {
  llmux_inbound_ctx_t ctx = {"req_test", 7};
  llmux_buf_t out = {0};
  void *st = stream_state();
  static const char first[] = CHUNK("{\"content\":\"Hi\"}", "null");
  assert_int_equal(in->stream_feed(st, &ctx, first, sizeof first - 1, &out), 0);
  out.len = 0;
  assert_int_equal(in->stream_error(st, "server_error", "shutting_down",
                                    "the gateway is shutting down", &out), 0);
  llmux_buf_append(&out, "", 1);
  assert_string_equal(out.base, EV("error", "{\"type\":\"error\",\"error\":{\"type\":"
                                            "\"overloaded_error\",\"message\":\"the gateway is "
                                            "shutting down\"}}"));
  out.len = 0;
  assert_int_equal(in->stream_end(st, &ctx, &out), 0);
  assert_int_equal(out.len, 0);
  in->state_free(st);
  llmux_buf_free(&out);
}

static void test_an_empty_stream_still_opens_and_closes_a_message(void **state) {
  char *got = run_stream("", (size_t[]){0}, 1, 11);
  assert_string_equal(got,
      EV("message_start", "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_req_test\","
         "\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-opus-4-20250514\","
         "\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,"
         "\"usage\":{\"input_tokens\":11,\"output_tokens\":0}}}")
      EV("message_delta", "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\","
         "\"stop_sequence\":null},\"usage\":{\"output_tokens\":0}}")
      EV("message_stop", "{\"type\":\"message_stop\"}"));
  free(got);
}

static void test_text_after_a_tool_call_opens_a_new_block(void **state) {
  static const char chat[] =
      CHUNK("{\"tool_calls\":[{\"index\":0,\"id\":\"c1\",\"function\":{\"name\":\"a\","
            "\"arguments\":\"{}\"}}]}", "null")
      CHUNK("{\"content\":\"done\"}", "\"stop\"");
  size_t cut = sizeof chat - 1;
  char *got = run_stream(chat, &cut, 1, 3);
  const char *tool = strstr(got, "\"index\":0,\"content_block\":{\"type\":\"tool_use\"");
  const char *stop0 = strstr(got, "{\"type\":\"content_block_stop\",\"index\":0}");
  const char *text = strstr(got, "\"index\":1,\"content_block\":{\"type\":\"text\"");
  assert_non_null(tool);
  assert_non_null(stop0);
  assert_non_null(text);
  assert_true(tool < stop0 && stop0 < text);
  assert_non_null(strstr(got, "{\"type\":\"content_block_stop\",\"index\":1}"));
  free(got);
}

/* ---- errors ----------------------------------------------------------------------- */

static void test_error_types_follow_anthropics_table(void **state) {
  static const struct { int status; const char *type, *code, *want; } cases[] = {
      {400, "invalid_request_error", "invalid_json", "invalid_request_error"},
      {401, "invalid_request_error", "invalid_api_key", "authentication_error"},
      {403, "invalid_request_error", "AGENT_NOT_ALLOWED", "permission_error"},
      {404, "invalid_request_error", "model_not_found", "not_found_error"},
      {405, "invalid_request_error", "method_not_allowed", "invalid_request_error"},
      {413, "invalid_request_error", "too_large", "request_too_large"},
      {429, "rate_limit_error", "RATE_LIMIT_EXCEEDED", "rate_limit_error"},
      {500, "server_error", "internal_error", "api_error"},
      {502, "upstream_error", "upstream_garbage", "api_error"},
      {503, "upstream_error", "no_provider_available", "overloaded_error"},
      {504, "upstream_error", "upstream_timeout", "api_error"},
      {529, "upstream_error", "x", "overloaded_error"},
  };
  size_t i;
  for (i = 0; i < LLMUX_COUNTOF(cases); i++) {
    llmux_buf_t b = {0};
    char want[256];
    assert_int_equal(in->error_body(&b, cases[i].status, cases[i].type, cases[i].code,
                                    "Nope \"quoted\"", "req_1"), 0);
    llmux_buf_append(&b, "", 1);
    snprintf(want, sizeof want, "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":"
             "\"Nope \\\"quoted\\\"\"},\"request_id\":\"req_1\"}", cases[i].want);
    assert_string_equal(b.base, want);
    llmux_buf_free(&b);
  }
}

/* ---- native passthrough: usage read from Anthropic's own answer ---------- */

static void native_usage_of(const char *json, int64_t *tin, int64_t *tout) {
  llmux_inbound_anthropic.native_usage(json, strlen(json), tin, tout);
}

static void test_native_usage_of_a_message_counts_cache_tokens_as_input(void **state) {
  int64_t tin = -1, tout = -1;
  (void)state;
  assert_int_equal(llmux_inbound_anthropic.native_endpoint, LLMUX_ENDPOINT_MESSAGES);
  assert_int_equal(llmux_inbound_anthropic.native_feature, LLMUX_FEATURE_MESSAGES);
  native_usage_of("{\"id\":\"msg_1\",\"type\":\"message\",\"content\":[{\"type\":\"text\","
                  "\"text\":\"\\\"usage\\\": 99\"}],\"usage\":{\"input_tokens\":12,"
                  "\"cache_creation_input_tokens\":3,\"cache_read_input_tokens\":5,"
                  "\"output_tokens\":7}}", &tin, &tout);
  assert_int_equal(tin, 20);
  assert_int_equal(tout, 7);
}

static void test_native_usage_of_a_stream_takes_start_then_delta(void **state) {
  int64_t tin = -1, tout = -1;
  (void)state;
  native_usage_of("{\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":"
                  "{\"input_tokens\":25,\"output_tokens\":1}}}", &tin, &tout);
  assert_int_equal(tin, 25);
  assert_int_equal(tout, 1);
  native_usage_of("{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
                  "\"text_delta\",\"text\":\"usage\"}}", &tin, &tout);
  native_usage_of("{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},"
                  "\"usage\":{\"output_tokens\":15}}", &tin, &tout);
  assert_int_equal(tin, 25);
  assert_int_equal(tout, 15);
}

static void test_native_usage_that_is_not_a_count_is_unknown(void **state) {
  int64_t tin = 4, tout = 4;
  (void)state;
  native_usage_of("{\"usage\":{\"input_tokens\":-3,\"output_tokens\":1.5}}", &tin, &tout);
  assert_int_equal(tin, -1);
  assert_int_equal(tout, -1);
  tin = tout = 4;
  native_usage_of("{\"usage\":{\"input_tokens\":99999999999999999999,\"output_tokens\":\"7\"}}",
                  &tin, &tout);
  assert_int_equal(tin, -1);
  assert_int_equal(tout, -1);
  tin = tout = 4; /* not JSON, or no usage: left alone */
  native_usage_of("{\"usage\":{\"input_tokens\":1", &tin, &tout);
  native_usage_of("{\"type\":\"ping\"}", &tin, &tout);
  assert_int_equal(tin, 4);
  assert_int_equal(tout, 4);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_plain_request_becomes_the_same_chat_request),
      cmocka_unit_test(test_system_blocks_join_and_options_map_to_chat_names),
      cmocka_unit_test(test_content_blocks_become_parts_and_images_image_urls),
      cmocka_unit_test(test_tool_use_and_tool_result_become_tool_calls_and_tool_messages),
      cmocka_unit_test(test_tools_and_each_tool_choice_map_to_chat),
      cmocka_unit_test(test_count_tokens_needs_no_max_tokens_but_messages_does),
      cmocka_unit_test(test_wrong_types_are_400_naming_the_field),
      cmocka_unit_test(test_huge_numbers_bad_json_and_bad_utf8_are_400),
      cmocka_unit_test(test_duplicate_keys_anywhere_are_400),
      cmocka_unit_test(test_a_chat_completion_becomes_a_message),
      cmocka_unit_test(test_tool_calls_become_tool_use_blocks_with_parsed_input),
      cmocka_unit_test(test_content_given_as_parts_keeps_its_text),
      cmocka_unit_test(test_finish_reasons_map_to_stop_reasons),
      cmocka_unit_test(test_an_answer_that_makes_no_sense_is_refused),
      cmocka_unit_test(test_a_text_stream_is_the_documented_event_sequence),
      cmocka_unit_test(test_a_tool_stream_is_the_documented_event_sequence),
      cmocka_unit_test(test_the_same_events_whatever_the_cuts),
      cmocka_unit_test(test_an_error_mid_stream_is_the_last_event),
      cmocka_unit_test(test_a_stream_the_gateway_breaks_ends_with_an_error_event),
      cmocka_unit_test(test_an_empty_stream_still_opens_and_closes_a_message),
      cmocka_unit_test(test_text_after_a_tool_call_opens_a_new_block),
      cmocka_unit_test(test_error_types_follow_anthropics_table),
      cmocka_unit_test(test_native_usage_of_a_message_counts_cache_tokens_as_input),
      cmocka_unit_test(test_native_usage_of_a_stream_takes_start_then_delta),
      cmocka_unit_test(test_native_usage_that_is_not_a_count_is_unknown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
