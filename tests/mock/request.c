/* Reads the request body fields the mock's answer depends on: model,
 * stream, stream_options.include_usage, tools (and tool_choice), max_tokens,
 * embeddings input/dimensions/encoding_format, and the optional "mock"
 * object that carries per-request knobs through gateways that do not pass
 * x-mock-* headers on. */
#include "mock.h"

#include <stdlib.h>

typedef struct body_scan_s {
  mock_call_t *call;
  mock_knobs_t *knobs;
  int have_model;
  int have_input;
  int tool_choice_none;
  uint64_t input_tokens;
} body_scan_t;

uint64_t mock_fnv1a(const char *p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  size_t i;
  for (i = 0; i < n; i++) { h ^= (unsigned char)p[i]; h *= 0x100000001b3ull; }
  return h;
}

int64_t mock_json_int(llmux_str_t v) {
  int64_t x = 0;
  size_t i;
  if (v.len == 0 || v.len > 12) return -1;
  for (i = 0; i < v.len; i++) {
    if (v.base[i] < '0' || v.base[i] > '9') return -1; /* negative, fraction: ignored */
    x = x * 10 + (v.base[i] - '0');
  }
  return x;
}

static void copy_str(llmux_buf_t *dst, llmux_str_t val) {
  llmux_str_t s = mock_json_strval(val);
  dst->len = 0;
  if (llmux_buf_append(dst, s.base, s.len) != 0) abort();
}

static int on_stream_option(void *ud, llmux_str_t key, llmux_str_t val) {
  if (mock_json_is(key, "include_usage") && mock_json_is(val, "true"))
    ((body_scan_t *)ud)->call->include_usage = 1;
  return 0;
}

static int on_function_member(void *ud, llmux_str_t key, llmux_str_t val) {
  if (mock_json_is(key, "name") && mock_json_type(val) == '"')
    copy_str(&((body_scan_t *)ud)->call->tool_name, val);
  return 0;
}

static int on_tool_member(void *ud, llmux_str_t key, llmux_str_t val) {
  if (mock_json_is(key, "function") && mock_json_type(val) == '{')
    mock_json_object(val.base, val.len, on_function_member, ud);
  return 0;
}

static int on_tool(void *ud, size_t index, llmux_str_t val) {
  body_scan_t *s = ud;
  s->call->tools = 1;
  if (mock_json_type(val) == '{') mock_json_object(val.base, val.len, on_tool_member, ud);
  return 1; /* the mock calls the first tool only */
}

static void add_input(body_scan_t *s, llmux_str_t val) {
  uint64_t seed = mock_fnv1a(val.base, val.len);
  if (llmux_buf_append(&s->call->seeds, &seed, sizeof(seed)) != 0) abort();
  s->input_tokens += val.len / 4 + 1;
}

static int on_input(void *ud, size_t index, llmux_str_t val) {
  body_scan_t *s = ud;
  if (index == 0 && mock_json_type(val) == '0') return 2; /* one array of token ids */
  add_input(s, mock_json_type(val) == '"' ? mock_json_strval(val) : val);
  return 0;
}

static void scan_input(body_scan_t *s, llmux_str_t val) {
  if (mock_json_type(val) == '"') add_input(s, mock_json_strval(val));
  else if (mock_json_type(val) == '[' && mock_json_array(val.base, val.len, on_input, s) == 2)
    add_input(s, val);
  s->have_input = s->call->seeds.len > 0;
}

static int on_mock_knob(void *ud, llmux_str_t key, llmux_str_t val) {
  llmux_str_t v = mock_json_type(val) == '"' ? mock_json_strval(val) : val;
  mock_knob_set(((body_scan_t *)ud)->knobs, key.base, key.len, v.base, v.len);
  return 0;
}

static int on_member(void *ud, llmux_str_t key, llmux_str_t val) {
  body_scan_t *s = ud;
  mock_call_t *call = s->call;
  int t = mock_json_type(val);
  if (mock_json_is(key, "model")) {
    s->have_model = t == '"' && val.len > 2;
    if (s->have_model) copy_str(&call->model, val);
  } else if (mock_json_is(key, "stream")) {
    call->stream = mock_json_is(val, "true");
  } else if (mock_json_is(key, "stream_options") && t == '{') {
    mock_json_object(val.base, val.len, on_stream_option, s);
  } else if (mock_json_is(key, "tools") && t == '[') {
    mock_json_array(val.base, val.len, on_tool, s);
  } else if (mock_json_is(key, "tool_choice")) {
    s->tool_choice_none = mock_json_is(val, "\"none\"");
  } else if ((mock_json_is(key, "max_tokens") || mock_json_is(key, "max_completion_tokens") ||
              mock_json_is(key, "max_output_tokens")) &&
             mock_json_int(val) > 0) {
    call->tokens = mock_json_int(val);
  } else if (mock_json_is(key, "input")) {
    scan_input(s, val);
  } else if (mock_json_is(key, "dimensions") && mock_json_int(val) > 0) {
    call->dimensions = mock_json_int(val);
  } else if (mock_json_is(key, "encoding_format")) {
    call->base64 = mock_json_is(val, "\"base64\"");
  } else if (mock_json_is(key, "mock") && t == '{') {
    mock_json_object(val.base, val.len, on_mock_knob, s);
  }
  return 0;
}

int mock_parse_body(mock_call_t *call, mock_req_t *r, mock_knobs_t *body_knobs) {
  body_scan_t s;
  memset(&s, 0, sizeof(s));
  s.call = call;
  s.knobs = body_knobs;
  call->dimensions = 16;
  if (r->body.len == 0 || mock_json_object(r->body.base, r->body.len, on_member, &s) != 0)
    return MOCK_BODY_NOT_JSON;
  if (!s.have_model) return MOCK_BODY_NO_MODEL;
  if (s.tool_choice_none) call->tools = 0;
  if (call->tools && call->tool_name.len == 0) {
    if (llmux_buf_appends(&call->tool_name, "tool") != 0) abort();
  }
  if (call->dimensions > 8192) call->dimensions = 8192;
  if (call->endpoint == MOCK_EP_EMBEDDINGS) {
    if (!s.have_input) return MOCK_BODY_NO_INPUT;
    call->prompt_tokens = s.input_tokens;
  } else {
    call->prompt_tokens = r->body.len / 4 + 1;
  }
  return MOCK_BODY_OK;
}
