/* OpenAI's Responses API, minimal (POST .../responses): the shapes OpenAI
 * documents, for llmux's native passthrough (issue 15) to pass on.
 *
 * Plain: one `response` object, status completed, one message output item
 * with one output_text part (the mock's usual content), and usage with
 * input_tokens / output_tokens. Stream: the documented event sequence,
 * each `event: TYPE\ndata: {"type":TYPE,"sequence_number":N,...}`:
 * response.created, response.in_progress, response.output_item.added,
 * response.content_part.added, one response.output_text.delta per token,
 * response.output_text.done, response.content_part.done,
 * response.output_item.done, response.completed (the whole response, with
 * usage). No [DONE]: the Responses API has none. Faults, knobs and
 * max_output_tokens work as on chat. */
#include "mock.h"

/* Events besides the deltas. */
#define FIXED_EVENTS 8

int64_t mock_responses_nevents(const mock_call_t *call) {
  return call->tokens + FIXED_EVENTS;
}

static void ap_text_part(llmux_buf_t *b, const mock_conn_t *c, int done) {
  AL(b, "{\"type\":\"output_text\",\"text\":\"");
  if (done) mock_ap_content(b, c);
  AL(b, "\",\"annotations\":[]}");
}

static void ap_item(llmux_buf_t *b, const mock_conn_t *c, int done) {
  AL(b, "{\"id\":\"msg_mock");
  ap_u64(b, c->call.id);
  AL(b, "\",\"type\":\"message\",\"status\":\"");
  ap_s(b, done ? "completed" : "in_progress");
  AL(b, "\",\"role\":\"assistant\",\"content\":[");
  if (done) ap_text_part(b, c, 1);
  AL(b, "]}");
}

static void ap_usage(llmux_buf_t *b, const mock_call_t *call) {
  AL(b, "{\"input_tokens\":");
  ap_u64(b, call->prompt_tokens);
  AL(b, ",\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":");
  ap_u64(b, (uint64_t)call->tokens);
  AL(b, ",\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":");
  ap_u64(b, call->prompt_tokens + (uint64_t)call->tokens);
  AL(b, "}");
}

/* The response object; `done`: completed, with output and usage. */
static void ap_response(llmux_buf_t *b, const mock_conn_t *c, int done) {
  const mock_call_t *call = &c->call;
  AL(b, "{\"id\":\"resp_mock");
  ap_u64(b, call->id);
  AL(b, "\",\"object\":\"response\",\"created_at\":");
  ap_u64(b, call->created);
  AL(b, ",\"status\":\"");
  ap_s(b, done ? (call->truncated ? "incomplete" : "completed") : "in_progress");
  AL(b, "\",\"error\":null,\"incomplete_details\":");
  if (done && call->truncated) AL(b, "{\"reason\":\"max_output_tokens\"}");
  else AL(b, "null");
  AL(b, ",\"instructions\":null,\"max_output_tokens\":null,\"model\":\"");
  ap_buf(b, &call->model);
  AL(b, "\",\"output\":[");
  if (done) ap_item(b, c, 1);
  AL(b, "],\"parallel_tool_calls\":true,\"previous_response_id\":null,"
        "\"reasoning\":{\"effort\":null,\"summary\":null},\"store\":true,\"temperature\":1.0,"
        "\"text\":{\"format\":{\"type\":\"text\"}},\"tool_choice\":\"auto\",\"tools\":[],"
        "\"top_p\":1.0,\"truncation\":\"disabled\",\"usage\":");
  if (done) ap_usage(b, call);
  else AL(b, "null");
  AL(b, ",\"user\":null,\"metadata\":{}}");
}

void mock_responses_body(mock_conn_t *c) {
  ap_response(&c->body, c, 1);
  AL(&c->body, "\n");
}

static void ev_begin(llmux_buf_t *e, const char *type, int64_t k) {
  AL(e, "event: ");
  ap_s(e, type);
  AL(e, "\ndata: {\"type\":\"");
  ap_s(e, type);
  AL(e, "\",\"sequence_number\":");
  ap_u64(e, (uint64_t)k);
}

static void ap_where(llmux_buf_t *e, const mock_conn_t *c, int part) {
  AL(e, ",\"item_id\":\"msg_mock");
  ap_u64(e, c->call.id);
  AL(e, "\",\"output_index\":0");
  if (part) AL(e, ",\"content_index\":0");
}

/* Stream event k (0 <= k < mock_responses_nevents), unframed, into e. */
void mock_responses_event(llmux_buf_t *e, const mock_conn_t *c, int64_t k) {
  int64_t t = c->call.tokens, d = k - 4; /* deltas: 4 .. 4 + t - 1 */
  if (k == 0 || k == 1) {
    ev_begin(e, k == 0 ? "response.created" : "response.in_progress", k);
    AL(e, ",\"response\":");
    ap_response(e, c, 0);
  } else if (k == 2 || k == t + 6) {
    ev_begin(e, k == 2 ? "response.output_item.added" : "response.output_item.done", k);
    AL(e, ",\"output_index\":0,\"item\":");
    ap_item(e, c, k != 2);
  } else if (k == 3 || k == t + 5) {
    ev_begin(e, k == 3 ? "response.content_part.added" : "response.content_part.done", k);
    ap_where(e, c, 1);
    AL(e, ",\"part\":");
    ap_text_part(e, c, k != 3);
  } else if (d >= 0 && d < t) {
    ev_begin(e, "response.output_text.delta", k);
    ap_where(e, c, 1);
    AL(e, ",\"delta\":\"");
    mock_ap_token(e, c->srv, d);
    AL(e, "\"");
  } else if (k == t + 4) {
    ev_begin(e, "response.output_text.done", k);
    ap_where(e, c, 1);
    AL(e, ",\"text\":\"");
    mock_ap_content(e, c);
    AL(e, "\"");
  } else {
    ev_begin(e, "response.completed", k);
    AL(e, ",\"response\":");
    ap_response(e, c, 1);
  }
  AL(e, "}\n\n");
}
