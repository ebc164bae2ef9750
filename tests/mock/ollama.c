/* Ollama's native API for the mock, with the field names Ollama uses:
 *
 *   POST /api/chat   NDJSON stream (application/x-ndjson, the default) or,
 *                    with "stream": false, one JSON object
 *   POST /api/embed  {"model","embeddings":[[...]],"prompt_eval_count",...}
 *   GET  /api/tags   {"models":[{"name","model","modified_at","size",...}]}
 *
 * Content follows openai.c's rule (token 0 is --name, token i " tok<i>").
 * With tools in the request the answer calls each tool (up to 4) with
 * arguments {"input":"<content>","call":i}; a stream sends one line per
 * call so indexes must carry across lines. Every NDJSON line goes out as
 * two HTTP chunks split mid-line, so readers must join partial lines.
 *
 * With "logprobs": true, each content line carries Ollama's top-level
 * "logprobs" list (the plain answer one entry per token): token k is
 * {"token","logprob":-(k+1)/8,"bytes":[...]} and, with "top_logprobs": N
 * (at most 20), "top_logprobs" holds N entries: the token itself, then
 * " alt<j>" at logprob -(k+1)/8 - j.
 *
 * Knobs: x-mock-* headers as everywhere (fault, tokens, token-delay-ms,
 * fail-after, latency-ms). Ollama-only triggers by model name: "missing..."
 * answers 404 {"error":"model \"NAME\" not found, try pulling it first"};
 * "crash..." streams fail-after lines (default 2) and then an {"error"} line,
 * as Ollama does when its runner dies mid-answer. */
#include "mock.h"

#include <stdlib.h>
#include <strings.h>
#include <time.h>

#define MAX_TOOLS 4
#define DEFAULT_DIMENSIONS 16
#define MAX_DIMENSIONS 8192


static int model_starts(const mock_call_t *call, const char *prefix) {
  size_t n = strlen(prefix);
  return call->model.len >= n && memcmp(call->model.base, prefix, n) == 0;
}

/* ---- routing and the request body ---- */

int mock_ollama_route(mock_call_t *call, const mock_req_t *r, const char *path, size_t plen) {
  int ep = MOCK_EP_NOTFOUND;
  if (plen == 9 && memcmp(path, "/api/chat", 9) == 0 && r->method == HTTP_POST) ep = MOCK_EP_CHAT;
  else if (plen == 10 && memcmp(path, "/api/embed", 10) == 0 && r->method == HTTP_POST)
    ep = MOCK_EP_EMBEDDINGS;
  else if (plen == 9 && memcmp(path, "/api/tags", 9) == 0 && r->method == HTTP_GET)
    ep = MOCK_EP_MODELS;
  if (ep == MOCK_EP_NOTFOUND) return 0;
  call->endpoint = ep;
  call->ollama = 1;
  return 1;
}

typedef struct scan_s {
  mock_call_t *call;
  mock_knobs_t *knobs;
  int have_model;
} scan_t;

static int on_option(void *ud, llmux_str_t key, llmux_str_t val) {
  scan_t *s = ud;
  if (mock_json_is(key, "num_predict") && mock_json_int(val) > 0) s->call->tokens = mock_json_int(val);
  return 0;
}

static int on_function(void *ud, llmux_str_t key, llmux_str_t val) {
  scan_t *s = ud;
  if (mock_json_is(key, "name") && mock_json_type(val) == '"') {
    llmux_str_t name = mock_json_strval(val);
    ap(&s->call->tool_name, name.base, name.len);
    ap(&s->call->tool_name, "", 1); /* names are NUL-separated */
    s->call->tools++;
  }
  return 0;
}

static int on_tool_member(void *ud, llmux_str_t key, llmux_str_t val) {
  if (mock_json_is(key, "function") && mock_json_type(val) == '{')
    mock_json_object(val.base, val.len, on_function, ud);
  return 0;
}

static int on_tool(void *ud, size_t index, llmux_str_t val) {
  scan_t *s = ud;
  if (s->call->tools >= MAX_TOOLS) return 1;
  if (mock_json_type(val) == '{') mock_json_object(val.base, val.len, on_tool_member, ud);
  return 0;
}

static void add_input(scan_t *s, llmux_str_t val) {
  uint64_t seed = mock_fnv1a(val.base, val.len);
  ap(&s->call->seeds, (const char *)&seed, sizeof(seed));
  s->call->prompt_tokens += val.len / 4 + 1;
}

static int on_input(void *ud, size_t index, llmux_str_t val) {
  if (mock_json_type(val) == '"') add_input(ud, mock_json_strval(val));
  return 0;
}

static int on_knob(void *ud, llmux_str_t key, llmux_str_t val) {
  llmux_str_t v = mock_json_type(val) == '"' ? mock_json_strval(val) : val;
  mock_knob_set(((scan_t *)ud)->knobs, key.base, key.len, v.base, v.len);
  return 0;
}

static int on_member(void *ud, llmux_str_t key, llmux_str_t val) {
  scan_t *s = ud;
  int t = mock_json_type(val);
  if (mock_json_is(key, "model") && t == '"' && val.len > 0) {
    llmux_str_t m = mock_json_strval(val);
    s->call->model.len = 0;
    ap(&s->call->model, m.base, m.len);
    s->have_model = m.len > 0;
  } else if (mock_json_is(key, "stream")) {
    s->call->stream = !mock_json_is(val, "false"); /* Ollama streams unless told not to */
  } else if (mock_json_is(key, "options") && t == '{') {
    mock_json_object(val.base, val.len, on_option, s);
  } else if (mock_json_is(key, "tools") && t == '[') {
    mock_json_array(val.base, val.len, on_tool, s);
  } else if (mock_json_is(key, "input")) {
    if (t == '"') add_input(s, mock_json_strval(val));
    else if (t == '[') mock_json_array(val.base, val.len, on_input, s);
  } else if (mock_json_is(key, "dimensions") && mock_json_int(val) > 0) {
    s->call->dimensions = mock_json_int(val) > MAX_DIMENSIONS ? MAX_DIMENSIONS : mock_json_int(val);
  } else if (mock_json_is(key, "mock") && t == '{') {
    mock_json_object(val.base, val.len, on_knob, s);
  } else if (mock_json_is(key, "logprobs")) {
    s->call->logprobs = mock_json_is(val, "true");
  } else if (mock_json_is(key, "top_logprobs") && mock_json_int(val) >= 0) {
    s->call->top_logprobs = mock_json_int(val) > 20 ? 20 : mock_json_int(val);
  }
  return 0;
}

int mock_ollama_parse_body(mock_call_t *call, mock_req_t *r, mock_knobs_t *body_knobs) {
  scan_t s = {call, body_knobs, 0};
  if (call->endpoint == MOCK_EP_MODELS) return MOCK_BODY_OK;
  call->stream = call->endpoint == MOCK_EP_CHAT;
  call->dimensions = DEFAULT_DIMENSIONS;
  if (r->body.len == 0 || mock_json_object(r->body.base, r->body.len, on_member, &s) != 0)
    return MOCK_BODY_NOT_JSON;
  if (!s.have_model) return MOCK_BODY_NO_MODEL;
  if (call->endpoint == MOCK_EP_EMBEDDINGS) {
    call->stream = 0;
    return call->seeds.len ? MOCK_BODY_OK : MOCK_BODY_NO_INPUT;
  }
  call->prompt_tokens = r->body.len / 4 + 1;
  return MOCK_BODY_OK;
}

/* ---- sending ---- */

static void head(mock_conn_t *c, int status, const char *ctype, int64_t clen) {
  llmux_buf_t *b = &c->out;
  char date[64];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(date, sizeof(date), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
  b->len = 0;
  AL(b, "HTTP/1.1 ");
  ap_u64(b, (uint64_t)status);
  ap_s(b, status == 200 ? " OK\r\n" : status == 404 ? " Not Found\r\n" : " Error\r\n");
  AL(b, "Content-Type: ");
  ap_s(b, ctype);
  AL(b, "\r\n");
  ap_s(b, date);
  if (clen >= 0) {
    AL(b, "Content-Length: ");
    ap_u64(b, (uint64_t)clen);
    AL(b, "\r\n");
  } else if (c->http10) {
    c->keep_alive = 0;
  } else {
    AL(b, "Transfer-Encoding: chunked\r\n");
  }
  ap_s(b, c->keep_alive ? "Connection: keep-alive\r\n" : "Connection: close\r\n");
  AL(b, "x-mock-name: ");
  ap_s(b, c->srv->name);
  AL(b, "\r\n\r\n");
}

static void send_body(mock_conn_t *c, int status, const char *ctype) {
  uv_buf_t bufs[2];
  head(c, status, ctype, (int64_t)c->body.len);
  bufs[0] = uv_buf_init(c->out.base, (unsigned)c->out.len);
  bufs[1] = uv_buf_init(c->body.base, (unsigned)c->body.len);
  if (c->call.fault == MOCK_FAULT_RESET_MID_STREAM) { /* a plain answer cut in half */
    bufs[1].len /= 2;
    mock_conn_write(c, bufs, 2);
    mock_conn_timer(c, MOCK_TIMER_RESET, 10);
    return;
  }
  mock_conn_write(c, bufs, 2);
  mock_conn_done(c);
}

/* Ollama's error body: {"error":"..."}; msg needs no escaping but '"'. */
static void send_error(mock_conn_t *c, int status, const char *msg) {
  llmux_buf_t *b = &c->body;
  const char *p;
  b->len = 0;
  AL(b, "{\"error\":\"");
  for (p = msg; *p; p++) {
    if (*p == '"') AL(b, "\\");
    ap(b, p, 1);
  }
  AL(b, "\"}");
  c->call.fault = MOCK_FAULT_NONE;
  send_body(c, status, "application/json; charset=utf-8");
}

static void send_not_found(mock_conn_t *c) {
  char msg[200];
  snprintf(msg, sizeof(msg), "model \"%.*s\" not found, try pulling it first",
           (int)(c->call.model.len < 120 ? c->call.model.len : 120), c->call.model.base);
  send_error(c, 404, msg);
}

static int send_fault(mock_conn_t *c) {
  static const char garbage[] = "SSH-2.0-mock this is not HTTP\r\n\x01\x02\xff\r\n\r\n";
  uv_buf_t g = uv_buf_init((char *)garbage, sizeof(garbage) - 1);
  switch (c->call.fault) {
    case MOCK_FAULT_RESET: mock_conn_reset(c); return 1;
    case MOCK_FAULT_STALL: return 1;
    case MOCK_FAULT_GARBAGE:
      c->keep_alive = 0;
      mock_conn_write(c, &g, 1);
      mock_conn_done(c);
      return 1;
    case MOCK_FAULT_429: send_error(c, 429, "too many requests"); return 1;
    case MOCK_FAULT_500: send_error(c, 500, "llama runner process has terminated: exit status 2"); return 1;
    case MOCK_FAULT_503: send_error(c, 503, "server busy, please try again.  maximum pending requests exceeded"); return 1;
    case MOCK_FAULT_401: send_error(c, 401, "unauthorized"); return 1;
    case MOCK_FAULT_400: send_error(c, 400, "invalid request (mock fault 400)"); return 1;
    case MOCK_FAULT_404_MODEL: send_not_found(c); return 1;
    case MOCK_FAULT_CONTEXT_LENGTH:
      send_error(c, 400, "the input length exceeds the context length");
      return 1;
    default: return 0;
  }
}

/* ---- bodies ---- */

static void ap_created_at(llmux_buf_t *b, const mock_call_t *call) {
  char tmp[48];
  time_t t = (time_t)call->created;
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(tmp, sizeof(tmp), "%Y-%m-%dT%H:%M:%S.123456789Z", &tm);
  ap_s(b, tmp);
}

/* {"model":"M","created_at":"...", */
static void line_start(llmux_buf_t *b, const mock_conn_t *c) {
  AL(b, "{\"model\":\"");
  ap_buf(b, &c->call.model);
  AL(b, "\",\"created_at\":\"");
  ap_created_at(b, &c->call);
  AL(b, "\",");
}

static const char *tool_name(const mock_call_t *call, int i) {
  const char *p = call->tool_name.base;
  while (i-- > 0) p += strlen(p) + 1;
  return p;
}

/* {"function":{"name":"N","arguments":{"input":"<content>","call":i}}} */
static void ap_tool_call(llmux_buf_t *b, const mock_conn_t *c, int i) {
  AL(b, "{\"function\":{\"name\":\"");
  ap_s(b, tool_name(&c->call, i));
  AL(b, "\",\"arguments\":{\"input\":\"");
  mock_ap_content(b, c);
  AL(b, "\",\"call\":");
  ap_u64(b, (uint64_t)i);
  AL(b, "}}}");
}

/* {"token":"T","logprob":L,"bytes":[...]} without its closing brace. */
static void ap_token_logprob(llmux_buf_t *b, const char *tok, size_t n, double logprob) {
  char num[40];
  size_t i;
  AL(b, "{\"token\":\"");
  ap(b, tok, n); /* the mock's tokens need no escaping */
  snprintf(num, sizeof(num), "%.6g", logprob);
  AL(b, "\",\"logprob\":");
  ap_s(b, num);
  AL(b, ",\"bytes\":[");
  for (i = 0; i < n; i++) {
    if (i) AL(b, ",");
    ap_u64(b, (unsigned char)tok[i]);
  }
  AL(b, "]");
}

/* Ollama's logprobs entry for token k (see the top of the file). */
static void ap_logprob(llmux_buf_t *b, const mock_conn_t *c, int64_t k) {
  llmux_buf_t tok = {0}, alt = {0};
  double lp = -(double)(k + 1) / 8;
  int64_t j;
  mock_ap_token(&tok, c->srv, k);
  ap_token_logprob(b, tok.base, tok.len, lp);
  if (c->call.top_logprobs > 0) {
    AL(b, ",\"top_logprobs\":[");
    for (j = 0; j < c->call.top_logprobs; j++) {
      if (j) AL(b, ",");
      alt.len = 0;
      if (j == 0) ap_buf(&alt, &tok);
      else AL(&alt, " alt"), ap_u64(&alt, (uint64_t)j);
      ap_token_logprob(b, alt.base, alt.len, lp - (double)j);
      AL(b, "}");
    }
    AL(b, "]");
  }
  AL(b, "}");
  llmux_buf_free(&tok);
  llmux_buf_free(&alt);
}

/* ,"logprobs":[...] for tokens from..to-1, when asked. */
static void ap_logprobs(llmux_buf_t *b, const mock_conn_t *c, int64_t from, int64_t to) {
  int64_t k;
  if (!c->call.logprobs || c->call.tools) return;
  AL(b, ",\"logprobs\":[");
  for (k = from; k < to; k++) {
    if (k > from) AL(b, ",");
    ap_logprob(b, c, k);
  }
  AL(b, "]");
}

/* The last line's tail: reason, counts and Ollama's nanosecond timings. */
static void ap_done(llmux_buf_t *b, const mock_conn_t *c) {
  AL(b, "\"done_reason\":\"");
  ap_s(b, c->call.truncated ? "length" : "stop");
  AL(b, "\",\"done\":true,\"total_duration\":5043500667,\"load_duration\":5025959,"
        "\"prompt_eval_count\":");
  ap_u64(b, c->call.prompt_tokens);
  AL(b, ",\"prompt_eval_duration\":325953000,\"eval_count\":");
  ap_u64(b, c->call.tools ? (uint64_t)c->call.tools * 10 : (uint64_t)c->call.tokens);
  AL(b, ",\"eval_duration\":4709213000}");
}

static void chat_body(mock_conn_t *c) {
  llmux_buf_t *b = &c->body;
  int i;
  line_start(b, c);
  AL(b, "\"message\":{\"role\":\"assistant\",\"content\":\"");
  if (!c->call.tools) mock_ap_content(b, c);
  AL(b, "\"");
  if (c->call.tools) {
    AL(b, ",\"tool_calls\":[");
    for (i = 0; i < c->call.tools; i++) {
      if (i) AL(b, ",");
      ap_tool_call(b, c, i);
    }
    AL(b, "]");
  }
  AL(b, "}");
  ap_logprobs(b, c, 0, c->call.tokens);
  AL(b, ",");
  ap_done(b, c);
}

static void ap_vector(llmux_buf_t *b, uint64_t seed, int64_t n) {
  uint64_t x = seed ? seed : 1;
  char tmp[32];
  int64_t i;
  AL(b, "[");
  for (i = 0; i < n; i++) {
    int len;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    len = snprintf(tmp, sizeof(tmp), "%s%.6f", i ? "," : "",
                   (double)(x >> 11) / 9007199254740992.0 * 2 - 1);
    ap(b, tmp, (size_t)len);
  }
  AL(b, "]");
}

static void embed_body(mock_conn_t *c) {
  llmux_buf_t *b = &c->body;
  const uint64_t *seeds = (const uint64_t *)(void *)c->call.seeds.base;
  size_t i, n = c->call.seeds.len / sizeof(uint64_t);
  AL(b, "{\"model\":\"");
  ap_buf(b, &c->call.model);
  AL(b, "\",\"embeddings\":[");
  for (i = 0; i < n; i++) {
    if (i) AL(b, ",");
    ap_vector(b, seeds[i], c->call.dimensions);
  }
  AL(b, "],\"total_duration\":14143917,\"load_duration\":1019500,\"prompt_eval_count\":");
  ap_u64(b, c->call.prompt_tokens);
  AL(b, "}");
}

/* Pulled models: the catalog's, and some it does not name (issue 16). */
static const char *const tags[] = {"llama3.1:latest", "ministral-3:3b", "nomic-embed-text:latest",
                                   "qwen2.5:latest", "codellama:latest", "llama3.2:1b"};

static void tags_body(mock_conn_t *c) {
  llmux_buf_t *b = &c->body;
  size_t i;
  AL(b, "{\"models\":[");
  for (i = 0; i < LLMUX_COUNTOF(tags); i++) {
    if (i) AL(b, ",");
    AL(b, "{\"name\":\"");
    ap_s(b, tags[i]);
    AL(b, "\",\"model\":\"");
    ap_s(b, tags[i]);
    AL(b, "\",\"modified_at\":\"2025-05-04T17:37:44.706015396-07:00\",\"size\":4920753328,"
          "\"digest\":\"46e0c10c039e019119339687c3c1757cc81b9da49709a3b3924863ba87ca666e\","
          "\"details\":{\"parent_model\":\"\",\"format\":\"gguf\",\"family\":\"llama\","
          "\"families\":[\"llama\"],\"parameter_size\":\"8.0B\",\"quantization_level\":\"Q4_K_M\"}}");
  }
  AL(b, "]}");
}

/* ---- streams: lines = tokens (or one per tool call), then done ---- */

/* One line as two HTTP chunks split mid-line (raw for HTTP/1.0). */
static void ap_line_frames(mock_conn_t *c, const llmux_buf_t *line) {
  size_t half = line->len / 2, parts[2] = {half, line->len - half}, off = 0;
  int i;
  for (i = 0; i < 2; i++) {
    char hex[24];
    int n = snprintf(hex, sizeof(hex), "%zx\r\n", parts[i]);
    if (!c->http10) ap(&c->out, hex, (size_t)n);
    ap(&c->out, line->base + off, parts[i]);
    if (!c->http10) AL(&c->out, "\r\n");
    off += parts[i];
  }
}

static void stream_line(mock_conn_t *c, int64_t k) {
  llmux_buf_t *b = &c->body;
  int64_t nbody = c->call.nevents - 1;
  b->len = 0;
  line_start(b, c);
  if (model_starts(&c->call, "crash") && k == c->call.fail_after) {
    b->len = 0;
    AL(b, "{\"error\":\"llama runner process has terminated: signal: killed\"}");
  } else if (k < nbody) {
    AL(b, "\"message\":{\"role\":\"assistant\",\"content\":\"");
    if (!c->call.tools) mock_ap_token(b, c->srv, k);
    AL(b, "\"");
    if (c->call.tools) {
      AL(b, ",\"tool_calls\":[");
      ap_tool_call(b, c, (int)k);
      AL(b, "]");
    }
    AL(b, "}");
    ap_logprobs(b, c, k, k + 1);
    AL(b, ",\"done\":false}");
  } else {
    AL(b, "\"message\":{\"role\":\"assistant\",\"content\":\"\"},");
    ap_done(b, c);
  }
  if (c->call.fault == MOCK_FAULT_INVALID_JSON && k == 1) {
    b->len = 0;
    AL(b, "{\"model\":\"broken\",\"message\":{");
  }
  AL(b, "\n");
  ap_line_frames(c, b);
}

static void flush_out(mock_conn_t *c) {
  mock_conn_write_buf(c, &c->out);
  c->out.len = 0;
}

void mock_ollama_stream_tick(mock_conn_t *c) {
  mock_call_t *call = &c->call;
  int crash = model_starts(call, "crash");
  while (call->event < call->nevents) {
    int64_t k = call->event++;
    if ((call->fault == MOCK_FAULT_RESET_MID_STREAM || call->fault == MOCK_FAULT_STALL_MID_STREAM) &&
        k == call->fail_after) {
      flush_out(c);
      if (call->fault == MOCK_FAULT_RESET_MID_STREAM) mock_conn_timer(c, MOCK_TIMER_RESET, 10);
      return;
    }
    stream_line(c, k);
    if ((crash && k == call->fail_after) || (call->fault == MOCK_FAULT_INVALID_JSON && k == 1))
      break; /* Ollama ends the answer after an error line */
    if (call->token_delay_ms > 0 && call->event < call->nevents) {
      flush_out(c);
      mock_conn_timer(c, MOCK_TIMER_STREAM, (uint64_t)call->token_delay_ms);
      return;
    }
  }
  if (!c->http10) AL(&c->out, "0\r\n\r\n");
  flush_out(c);
  mock_conn_done(c);
}

static void start_stream(mock_conn_t *c) {
  mock_call_t *call = &c->call;
  c->srv->stats.streams++;
  call->nevents = (call->tools ? call->tools : call->tokens) + 1;
  call->event = 0;
  if (call->fail_after < 0) call->fail_after = 2;
  if (call->fail_after > call->nevents - 1) call->fail_after = call->nevents - 1;
  head(c, 200, "application/x-ndjson", -1);
  mock_ollama_stream_tick(c);
}

/* ---- dispatch ---- */

void mock_ollama_respond(mock_conn_t *c) {
  mock_call_t *call = &c->call;
  c->body.len = 0;
  if (send_fault(c)) return;
  if (call->body_error == MOCK_BODY_NOT_JSON) { send_error(c, 400, "invalid character 'x' looking for beginning of value"); return; }
  if (call->body_error == MOCK_BODY_NO_MODEL) { send_error(c, 400, "model is required"); return; }
  if (call->body_error == MOCK_BODY_NO_INPUT) { send_error(c, 400, "invalid input type"); return; }
  if (call->endpoint != MOCK_EP_MODELS && model_starts(call, "missing")) { send_not_found(c); return; }
  switch (call->endpoint) {
    case MOCK_EP_CHAT:
      if (call->stream) { start_stream(c); return; }
      chat_body(c);
      break;
    case MOCK_EP_EMBEDDINGS: embed_body(c); break;
    default: tags_body(c); break;
  }
  send_body(c, 200, "application/json; charset=utf-8");
}
