/* OpenAI's Responses API in front of the chat path (gateway/inbound.h):
 * a Responses request becomes the equivalent chat request; a chat answer
 * becomes a `response` object; a chat stream, fed whole or one byte at a
 * time, becomes the event sequence OpenAI documents; previous_response_id
 * replays a stored record; what is saved is the input and the output.
 *
 * The expected event sequences are those of OpenAI's streaming guide
 * (https://platform.openai.com/docs/guides/streaming-responses and the API
 * reference's "Streaming events": a text answer is response.created,
 * response.in_progress, output_item.added, content_part.added,
 * output_text.delta..., output_text.done, content_part.done,
 * output_item.done, response.completed; a function call is
 * output_item.added, function_call_arguments.delta...,
 * function_call_arguments.done, output_item.done), written as their types
 * and the fields the SDKs read. */
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

static const llmux_inbound_t *const in = &llmux_inbound_responses;
static const llmux_inbound_ctx_t ctx = {"req_0123456789abcdef", 42};

/* ---- helpers ------------------------------------------------------------- */

static void assert_json_eq(const char *got, const char *want) {
  json_t *g = json_loads(got, 0, NULL), *w = json_loads(want, 0, NULL);
  assert_non_null(w);
  if (g == NULL || !json_equal(g, w)) fail_msg("got  %s\nwant %s", got, want);
  json_decref(g);
  json_decref(w);
}

static void assert_converts(const char *body, const char *chat_body) {
  llmux_buf_t chat = {0};
  llmux_inbound_err_t err;
  void *st = NULL;
  int rc = in->request(body, strlen(body), 0, &chat, &st, &err);
  if (rc != 0) fail_msg("conversion failed (%d): %s\nbody: %s", rc, err.message, body);
  in->state_free(st);
  llmux_buf_append(&chat, "", 1);
  assert_json_eq(chat.base, chat_body);
  llmux_buf_free(&chat);
}

static void assert_refused(const char *body, const char *needle) {
  llmux_buf_t chat = {0};
  llmux_inbound_err_t err;
  void *st = NULL;
  int rc = in->request(body, strlen(body), 0, &chat, &st, &err);
  in->state_free(st);
  llmux_buf_free(&chat);
  assert_int_equal(rc, LLMUX_EINVAL);
  assert_int_equal(err.status, 400);
  if (strstr(err.message, needle) == NULL) fail_msg("'%s' does not say '%s'", err.message, needle);
}

/* A fake gateway argument: keeps what is saved. */
typedef struct fake_arg_s {
  llmux_inbound_responses_arg_t base;
  char saved_id[64];
  char *saved;
  int released;
} fake_arg_t;

static void fake_save(llmux_inbound_responses_arg_t *a, const char *id, const char *rec,
                      size_t len) {
  fake_arg_t *f = (fake_arg_t *)a;
  snprintf(f->saved_id, sizeof f->saved_id, "%s", id);
  free(f->saved);
  f->saved = strndup(rec, len);
}

static void fake_release(llmux_inbound_responses_arg_t *a) {
  ((fake_arg_t *)a)->released++;
}

static void fake_init(fake_arg_t *f, const char *prior) {
  memset(f, 0, sizeof *f);
  snprintf(f->base.id, sizeof f->base.id, "resp_abc");
  f->base.save = fake_save;
  f->base.release = fake_release;
  if (prior) {
    f->base.prior = (char *)prior;
    f->base.prior_len = strlen(prior);
  }
}

static void *start(const char *body, fake_arg_t *f, llmux_buf_t *chat) {
  llmux_inbound_err_t err;
  void *st = NULL;
  int rc = in->request_arg(f, body, strlen(body), 0, chat, &st, &err);
  if (rc != 0) fail_msg("conversion failed (%d): %s", rc, err.message);
  return st;
}

/* Feeds a chat SSE stream whole or one byte at a time; the events out. */
static json_t *run_stream(void *st, const char *sse, int bytewise) {
  llmux_buf_t out = {0};
  size_t i, n = strlen(sse);
  json_t *events = json_array();
  char *p;
  if (bytewise) {
    for (i = 0; i < n; i++) assert_int_equal(in->stream_feed(st, &ctx, sse + i, 1, &out), 0);
  } else {
    assert_int_equal(in->stream_feed(st, &ctx, sse, n, &out), 0);
  }
  assert_int_equal(in->stream_end(st, &ctx, &out), 0);
  llmux_buf_append(&out, "", 1);
  /* Each frame: "event: T\ndata: {...}\n\n", T the data's type. */
  for (p = out.base; *p;) {
    char type[96], *data, *end;
    json_t *ev;
    assert_int_equal(sscanf(p, "event: %95[^\n]", type), 1);
    data = strstr(p, "\ndata: ");
    assert_non_null(data);
    data += 7;
    end = strstr(data, "\n\n");
    assert_non_null(end);
    ev = json_loadb(data, (size_t)(end - data), 0, NULL);
    assert_non_null(ev);
    assert_string_equal(json_string_value(json_object_get(ev, "type")), type);
    json_array_append_new(events, ev);
    p = end + 2;
  }
  llmux_buf_free(&out);
  return events;
}

static void assert_types(json_t *events, const char *const *want, size_t n) {
  size_t i, j = 0;
  json_t *ev;
  json_array_foreach(events, i, ev) {
    const char *t = json_string_value(json_object_get(ev, "type"));
    assert_int_equal(json_integer_value(json_object_get(ev, "sequence_number")), (json_int_t)i);
    /* a run of deltas is one entry of `want` */
    if (j > 0 && strstr(t, ".delta") && strcmp(want[j - 1], t) == 0) continue;
    if (j >= n || strcmp(t, want[j]) != 0)
      fail_msg("event %zu is %s, expected %s", i, t, j < n ? want[j] : "(end)");
    j++;
  }
  assert_int_equal(j, n);
}

#define CHUNK(x) "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\"," x "}\n\n"

static const char text_stream[] =
    CHUNK("\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]")
    CHUNK("\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]")
    CHUNK("\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there\"}}]")
    CHUNK("\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]")
    CHUNK("\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,"
          "\"total_tokens\":9}")
    "data: [DONE]\n\n";

static const char tool_stream[] =
    CHUNK("\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"tool_calls\":[{\"index\":0,"
          "\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
          "\"arguments\":\"\"}}]}}]")
    CHUNK("\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":"
          "{\"arguments\":\"{\\\"city\\\":\"}}]}}]")
    CHUNK("\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":"
          "{\"arguments\":\"\\\"Paris\\\"}\"}}]}}]")
    CHUNK("\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]")
    "data: [DONE]\n\n";

/* ---- requests ------------------------------------------------------------ */

static void test_a_string_input_and_instructions_become_messages(void **s) {
  (void)s;
  assert_converts("{\"model\":\"m\",\"instructions\":\"Be brief.\",\"input\":\"Hi\"}",
                  "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
                  "{\"role\":\"user\",\"content\":\"Hi\"}]}");
}

static void test_items_become_chat_turns(void **s) {
  (void)s;
  assert_converts(
      "{\"model\":\"m\",\"input\":["
      "{\"role\":\"developer\",\"content\":\"Metric.\"},"
      "{\"type\":\"message\",\"role\":\"user\",\"content\":[{\"type\":\"input_text\",\"text\":\"What?\"},"
      "{\"type\":\"input_image\",\"image_url\":\"data:image/png;base64,AA\",\"detail\":\"auto\"}]},"
      "{\"type\":\"message\",\"role\":\"assistant\",\"content\":[{\"type\":\"output_text\",\"text\":\"Look.\"}]},"
      "{\"type\":\"function_call\",\"call_id\":\"c1\",\"name\":\"f\",\"arguments\":\"{}\"},"
      "{\"type\":\"function_call\",\"call_id\":\"c2\",\"name\":\"g\",\"arguments\":\"{}\"},"
      "{\"type\":\"function_call_output\",\"call_id\":\"c1\",\"output\":\"1\"},"
      "{\"type\":\"function_call_output\",\"call_id\":\"c2\",\"output\":[{\"type\":\"input_text\",\"text\":\"2\"}]},"
      "{\"type\":\"reasoning\",\"summary\":[]}]}",
      "{\"model\":\"m\",\"messages\":["
      "{\"role\":\"system\",\"content\":\"Metric.\"},"
      "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"What?\"},{\"type\":\"image_url\","
      "\"image_url\":{\"url\":\"data:image/png;base64,AA\",\"detail\":\"auto\"}}]},"
      "{\"role\":\"assistant\",\"content\":\"Look.\",\"tool_calls\":["
      "{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}},"
      "{\"id\":\"c2\",\"type\":\"function\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]},"
      "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"1\"},"
      "{\"role\":\"tool\",\"tool_call_id\":\"c2\",\"content\":\"2\"}]}");
}

static void test_options_tools_and_formats_translate(void **s) {
  (void)s;
  assert_converts(
      "{\"model\":\"m\",\"input\":\"x\",\"temperature\":0.5,\"top_p\":0.5,\"max_output_tokens\":64,"
      "\"stream\":true,\"store\":false,\"metadata\":{\"a\":\"b\"},\"parallel_tool_calls\":false,"
      "\"tools\":[{\"type\":\"function\",\"name\":\"f\",\"parameters\":{\"type\":\"object\"},\"strict\":true}],"
      "\"tool_choice\":\"required\",\"text\":{\"format\":{\"type\":\"json_object\"}}}",
      "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
      "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\"},"
      "\"strict\":true}}],\"tool_choice\":\"required\",\"response_format\":{\"type\":\"json_object\"},"
      "\"temperature\":0.5,\"top_p\":0.5,\"max_tokens\":64,\"parallel_tool_calls\":false,"
      "\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
}

static void test_what_chat_cannot_say_is_a_400_naming_it(void **s) {
  (void)s;
  assert_refused("{\"model\":\"m\"}", "'input'");
  assert_refused("{\"input\":\"x\"}", "'model'");
  assert_refused("{\"model\":\"m\",\"input\":\"x\",\"temperature\":9}", "temperature");
  assert_refused("{\"model\":\"m\",\"input\":\"x\",\"tools\":[{\"type\":\"web_search\"}]}",
                 "web_search");
  assert_refused("{\"model\":\"m\",\"input\":[{\"type\":\"item_reference\",\"id\":\"x\"}]}",
                 "item_reference");
  assert_refused("{\"model\":\"m\",\"input\":[{\"role\":\"user\",\"content\":[{\"type\":"
                 "\"input_file\",\"file_id\":\"f\"}]}]}", "input_file");
  assert_refused("{\"model\":\"m\",\"input\":\"x\",\"input\":\"y\"}", "JSON");
  assert_refused("{\"model\":\"m\",\"input\":\"x\",\"previous_response_id\":\"resp_x\"}",
                 "not found");
}

/* ---- answers ------------------------------------------------------------- */

static void test_a_chat_completion_becomes_a_response(void **s) {
  fake_arg_t f;
  llmux_buf_t chat = {0}, out = {0};
  void *st;
  json_t *r, *rec;
  (void)s;
  fake_init(&f, NULL);
  st = start("{\"model\":\"m\",\"input\":\"Hi\",\"tools\":[{\"type\":\"function\",\"name\":\"f\"}]}",
             &f, &chat);
  const char *c = "{\"id\":\"x\",\"model\":\"m-1\",\"choices\":[{\"index\":0,\"message\":{"
                  "\"role\":\"assistant\",\"content\":\"Hello\",\"tool_calls\":[{\"id\":\"call_9\","
                  "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},"
                  "\"finish_reason\":\"tool_calls\"}],\"usage\":{\"prompt_tokens\":3,"
                  "\"completion_tokens\":4,\"prompt_tokens_details\":{\"cached_tokens\":1}}}";
  assert_int_equal(in->answer(st, &ctx, c, strlen(c), &out), 0);
  llmux_buf_append(&out, "", 1);
  r = json_loads(out.base, 0, NULL);
  assert_non_null(r);
  json_object_del(r, "created_at");
  json_object_del(r, "completed_at");
  json_object_del(json_object_get(r, "tools"), "x");
  {
    char *got = json_dumps(r, JSON_COMPACT);
    assert_json_eq(got,
        "{\"id\":\"resp_abc\",\"object\":\"response\",\"status\":\"completed\",\"error\":null,"
        "\"incomplete_details\":null,\"instructions\":null,\"max_output_tokens\":null,"
        "\"model\":\"m\",\"output\":[{\"id\":\"msg_abc_0\",\"type\":\"message\",\"status\":"
        "\"completed\",\"content\":[{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],"
        "\"text\":\"Hello\"}],\"role\":\"assistant\"},{\"id\":\"fc_abc_1\",\"type\":"
        "\"function_call\",\"status\":\"completed\",\"arguments\":\"{}\",\"call_id\":\"call_9\","
        "\"name\":\"f\"}],\"parallel_tool_calls\":true,\"previous_response_id\":null,"
        "\"reasoning\":{\"effort\":null,\"summary\":null},\"store\":true,\"temperature\":1.0,"
        "\"text\":{\"format\":{\"type\":\"text\"}},\"tool_choice\":\"auto\",\"tools\":[{\"type\":"
        "\"function\",\"name\":\"f\"}],\"top_p\":1.0,\"truncation\":\"disabled\",\"user\":null,"
        "\"metadata\":{},\"output_text\":\"Hello\",\"usage\":{\"input_tokens\":3,"
        "\"input_tokens_details\":{\"cached_tokens\":1},\"output_tokens\":4,"
        "\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":7}}");
    free(got);
  }
  /* Saved: the response and its input. */
  assert_string_equal(f.saved_id, "resp_abc");
  rec = json_loads(f.saved, 0, NULL);
  assert_non_null(rec);
  assert_true(json_equal(json_object_get(json_object_get(rec, "response"), "output"),
                         json_object_get(r, "output")));
  assert_string_equal(json_string_value(json_object_get(
                          json_array_get(json_object_get(rec, "input"), 0), "content")), "Hi");
  json_decref(rec);
  json_decref(r);
  in->state_free(st);
  assert_int_equal(f.released, 1);
  free(f.saved);
  llmux_buf_free(&chat);
  llmux_buf_free(&out);
}

static void test_length_is_incomplete_with_max_output_tokens(void **s) {
  fake_arg_t f;
  llmux_buf_t chat = {0}, out = {0};
  void *st;
  json_t *r;
  const char *c = "{\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":\"Hel\"},"
                  "\"finish_reason\":\"length\"}]}";
  (void)s;
  fake_init(&f, NULL);
  st = start("{\"model\":\"m\",\"input\":\"Hi\",\"store\":false}", &f, &chat);
  assert_int_equal(in->answer(st, &ctx, c, strlen(c), &out), 0);
  llmux_buf_append(&out, "", 1);
  r = json_loads(out.base, 0, NULL);
  assert_string_equal(json_string_value(json_object_get(r, "status")), "incomplete");
  assert_string_equal(json_string_value(json_object_get(json_object_get(r, "incomplete_details"),
                                                        "reason")), "max_output_tokens");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "usage"), "input_tokens")),
                   42); /* the gateway's estimate when the provider did not say */
  assert_null(f.saved); /* store: false */
  json_decref(r);
  in->state_free(st);
  llmux_buf_free(&chat);
  llmux_buf_free(&out);
}

static void test_previous_response_id_replays_input_and_output(void **s) {
  fake_arg_t f;
  llmux_buf_t chat = {0};
  void *st;
  const char *prior =
      "{\"response\":{\"output\":[{\"id\":\"msg_1\",\"type\":\"message\",\"status\":\"completed\","
      "\"role\":\"assistant\",\"content\":[{\"type\":\"output_text\",\"text\":\"Hello Ada\","
      "\"annotations\":[]}]}]},\"input\":[{\"role\":\"user\",\"content\":\"I am Ada\"}]}";
  (void)s;
  fake_init(&f, prior);
  st = start("{\"model\":\"m\",\"input\":\"Who am I?\",\"previous_response_id\":\"resp_1\"}", &f,
             &chat);
  llmux_buf_append(&chat, "", 1);
  assert_json_eq(chat.base, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
                            "\"I am Ada\"},{\"role\":\"assistant\",\"content\":\"Hello Ada\"},"
                            "{\"role\":\"user\",\"content\":\"Who am I?\"}]}");
  in->state_free(st);
  llmux_buf_free(&chat);
}

/* ---- streams ------------------------------------------------------------- */

static const char *const text_events[] = {
    "response.created",           "response.in_progress",      "response.output_item.added",
    "response.content_part.added", "response.output_text.delta", "response.output_text.done",
    "response.content_part.done", "response.output_item.done", "response.completed"};

static void check_text_stream(int bytewise) {
  fake_arg_t f;
  llmux_buf_t chat = {0};
  void *st;
  json_t *ev, *done, *last;
  fake_init(&f, NULL);
  st = start("{\"model\":\"m\",\"input\":\"Hi\",\"stream\":true}", &f, &chat);
  ev = run_stream(st, text_stream, bytewise);
  assert_types(ev, text_events, LLMUX_COUNTOF(text_events));
  /* created: in progress, no output; deltas name their item and place */
  assert_string_equal(json_string_value(json_object_get(json_object_get(json_array_get(ev, 0),
                                                                         "response"), "status")),
                      "in_progress");
  assert_string_equal(json_string_value(json_object_get(json_array_get(ev, 4), "item_id")),
                      "msg_abc_0");
  assert_int_equal(json_integer_value(json_object_get(json_array_get(ev, 4), "output_index")), 0);
  assert_int_equal(json_integer_value(json_object_get(json_array_get(ev, 4), "content_index")), 0);
  done = json_array_get(ev, 6);
  assert_string_equal(json_string_value(json_object_get(done, "text")), "Hi there");
  last = json_object_get(json_array_get(ev, json_array_size(ev) - 1), "response");
  assert_string_equal(json_string_value(json_object_get(last, "status")), "completed");
  assert_string_equal(json_string_value(json_object_get(last, "output_text")), "Hi there");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(last, "usage"),
                                                      "output_tokens")), 2);
  assert_non_null(f.saved);
  json_decref(ev);
  in->state_free(st);
  free(f.saved);
  llmux_buf_free(&chat);
}

static void test_a_text_stream_is_the_documented_sequence(void **s) {
  (void)s;
  check_text_stream(0);
}

static void test_a_stream_cut_into_single_bytes_is_the_same(void **s) {
  (void)s;
  check_text_stream(1);
}

static void test_a_tool_call_stream_is_the_documented_sequence(void **s) {
  static const char *const want[] = {
      "response.created", "response.in_progress", "response.output_item.added",
      "response.function_call_arguments.delta", "response.function_call_arguments.done",
      "response.output_item.done", "response.completed"};
  fake_arg_t f;
  llmux_buf_t chat = {0};
  void *st;
  json_t *ev, *item;
  (void)s;
  fake_init(&f, NULL);
  st = start("{\"model\":\"m\",\"input\":\"Hi\",\"stream\":true,\"store\":false}", &f, &chat);
  ev = run_stream(st, tool_stream, 0);
  assert_types(ev, want, LLMUX_COUNTOF(want));
  item = json_object_get(json_array_get(ev, 2), "item");
  assert_string_equal(json_string_value(json_object_get(item, "call_id")), "call_1");
  assert_string_equal(json_string_value(json_object_get(item, "name")), "get_weather");
  assert_string_equal(json_string_value(json_object_get(json_array_get(ev, 5), "arguments")),
                      "{\"city\":\"Paris\"}");
  assert_null(f.saved);
  json_decref(ev);
  in->state_free(st);
  llmux_buf_free(&chat);
}

static void test_an_error_mid_stream_is_error_then_response_failed(void **s) {
  static const char *const want[] = {"response.created", "response.in_progress",
                                     "response.output_item.added",
                                     "response.content_part.added",
                                     "response.output_text.delta", "error", "response.failed"};
  const char *sse = CHUNK("\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]")
      "data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\",\"code\":\"overloaded\"}}\n\n";
  fake_arg_t f;
  llmux_buf_t chat = {0};
  void *st;
  json_t *ev;
  (void)s;
  fake_init(&f, NULL);
  st = start("{\"model\":\"m\",\"input\":\"Hi\",\"stream\":true}", &f, &chat);
  ev = run_stream(st, sse, 0);
  assert_types(ev, want, LLMUX_COUNTOF(want));
  assert_string_equal(json_string_value(json_object_get(json_array_get(ev, 5), "message")), "boom");
  assert_null(f.saved); /* a failed response is not kept */
  json_decref(ev);
  in->state_free(st);
  llmux_buf_free(&chat);
}

static void test_errors_are_openais_shape(void **s) {
  llmux_buf_t b = {0};
  (void)s;
  in->error_body(&b, 400, "invalid_request_error", LLMUX_RESPONSES_PREV_NOT_FOUND,
                 "Previous response with id 'resp_x' not found.", NULL);
  llmux_buf_append(&b, "", 1);
  assert_json_eq(b.base, "{\"error\":{\"message\":\"Previous response with id 'resp_x' not "
                         "found.\",\"type\":\"invalid_request_error\",\"param\":"
                         "\"previous_response_id\",\"code\":\"previous_response_not_found\"}}");
  llmux_buf_free(&b);
}

/* ---- native passthrough: usage read from a provider's own Response ------- */

static void native_usage_of(const char *json, int64_t *tin, int64_t *tout) {
  llmux_inbound_responses.native_usage(json, strlen(json), tin, tout);
}

static void test_native_usage_of_a_response_and_of_response_completed(void **state) {
  int64_t tin = -1, tout = -1;
  (void)state;
  assert_int_equal(llmux_inbound_responses.native_endpoint, LLMUX_ENDPOINT_RESPONSES);
  assert_int_equal(llmux_inbound_responses.native_feature, LLMUX_FEATURE_RESPONSES);
  native_usage_of("{\"id\":\"resp_1\",\"object\":\"response\",\"output\":[],\"usage\":"
                  "{\"input_tokens\":9,\"input_tokens_details\":{\"cached_tokens\":0},"
                  "\"output_tokens\":4,\"total_tokens\":13}}", &tin, &tout);
  assert_int_equal(tin, 9);
  assert_int_equal(tout, 4);
  tin = tout = -1;
  native_usage_of("{\"type\":\"response.created\",\"sequence_number\":0,\"response\":"
                  "{\"id\":\"r\",\"usage\":null}}", &tin, &tout);
  assert_int_equal(tin, -1);
  native_usage_of("{\"type\":\"response.completed\",\"sequence_number\":9,\"response\":"
                  "{\"id\":\"r\",\"usage\":{\"input_tokens\":30,\"output_tokens\":8}}}", &tin, &tout);
  assert_int_equal(tin, 30);
  assert_int_equal(tout, 8);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_string_input_and_instructions_become_messages),
      cmocka_unit_test(test_items_become_chat_turns),
      cmocka_unit_test(test_options_tools_and_formats_translate),
      cmocka_unit_test(test_what_chat_cannot_say_is_a_400_naming_it),
      cmocka_unit_test(test_a_chat_completion_becomes_a_response),
      cmocka_unit_test(test_length_is_incomplete_with_max_output_tokens),
      cmocka_unit_test(test_previous_response_id_replays_input_and_output),
      cmocka_unit_test(test_a_text_stream_is_the_documented_sequence),
      cmocka_unit_test(test_a_stream_cut_into_single_bytes_is_the_same),
      cmocka_unit_test(test_a_tool_call_stream_is_the_documented_sequence),
      cmocka_unit_test(test_an_error_mid_stream_is_error_then_response_failed),
      cmocka_unit_test(test_errors_are_openais_shape),
      cmocka_unit_test(test_native_usage_of_a_response_and_of_response_completed),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
