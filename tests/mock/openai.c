/* The OpenAI wire format: endpoints, response bodies, SSE streams, error
 * objects and faults.
 *
 * Bodies are assembled with appends into per-connection buffers that are
 * reused across requests; the model the request named is echoed as the raw
 * JSON string content it arrived as, so it never needs unescaping. Content
 * is deterministic: token 0 is the mock's --name, token i is " tok<i>", so
 * tests can tell which mock answered and what the full text must be. */
#define _GNU_SOURCE /* memrchr */
#include "mock.h"

#include <math.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>

#define LIMIT_REQUESTS 14400
#define LIMIT_TOKENS 200000
#define SLOW_HEAD_DEFAULT_MS 100
#define RESET_GRACE_MS 10
#define DEFAULT_DIMENSIONS 16
#define MAX_DIMENSIONS 8192

/* ---- faults and knobs ---- */

static const char *const fault_names[] = {
  "none", "429", "500", "503", "401", "400", "404-model", "context-length", "reset",
  "reset-mid-stream", "stall", "stall-mid-stream", "garbage", "invalid-json",
  "slow-headers", "huge-usage",
};

int mock_fault_parse(const char *s, size_t len) {
  size_t i;
  for (i = 0; i < LLMUX_COUNTOF(fault_names); i++) {
    if (strlen(fault_names[i]) == len && strncasecmp(s, fault_names[i], len) == 0)
      return (int)i;
  }
  return -1;
}

void mock_knobs_unset(mock_knobs_t *k) {
  k->fault = -1;
  k->latency_ms = k->tokens = k->token_delay_ms = k->fail_after = k->retry_after_s = -1;
}

/* Knob names compare with '-' and '_' as the same character, so headers
 * (x-mock-latency-ms) and body keys (latency_ms) share one table. */
static int knob_name_is(const char *name, size_t nlen, const char *want) {
  size_t i;
  if (nlen != strlen(want)) return 0;
  for (i = 0; i < nlen; i++) {
    char a = name[i] == '_' ? '-' : name[i];
    if (a != want[i]) return 0;
  }
  return 1;
}

static int parse_num(const char *val, size_t len, int64_t max, int64_t *out) {
  int64_t v = 0;
  size_t i;
  if (len == 0 || len > 12) return -1;
  for (i = 0; i < len; i++) {
    if (val[i] < '0' || val[i] > '9') return -1;
    v = v * 10 + (val[i] - '0');
  }
  if (v > max) return -1;
  *out = v;
  return 0;
}

int mock_knob_set(mock_knobs_t *k, const char *name, size_t nlen, const char *val,
                  size_t vlen) {
  int64_t *slot = NULL;
  int64_t max = 3600000;
  if (knob_name_is(name, nlen, "fault")) {
    int f = mock_fault_parse(val, vlen);
    if (f < 0) return -1;
    k->fault = f;
    return 0;
  }
  if (knob_name_is(name, nlen, "latency-ms")) slot = &k->latency_ms;
  else if (knob_name_is(name, nlen, "token-delay-ms")) slot = &k->token_delay_ms;
  else if (knob_name_is(name, nlen, "retry-after")) slot = &k->retry_after_s;
  else if (knob_name_is(name, nlen, "tokens")) { slot = &k->tokens; max = MOCK_MAX_TOKENS; }
  else if (knob_name_is(name, nlen, "fail-after")) { slot = &k->fail_after; max = MOCK_MAX_TOKENS; }
  if (slot == NULL) return -1;
  return parse_num(val, vlen, max, slot);
}

static int64_t pick(int64_t header, int64_t body, int64_t dflt) {
  return header >= 0 ? header : body >= 0 ? body : dflt;
}

/* ---- appending (ap, AL, ap_s, ap_buf, ap_u64: mock.h) ---- */

static void ap_hex(llmux_buf_t *b, uint64_t v) {
  char tmp[24];
  size_t i = sizeof(tmp);
  do { tmp[--i] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v);
  ap(b, tmp + i, sizeof(tmp) - i);
}

/* Go-style durations as Groq and OpenAI send them: "60ms", "6s", "2m59.56s". */
static void ap_duration(llmux_buf_t *b, uint64_t ms) {
  char tmp[32];
  if (ms < 1000) { ap_u64(b, ms); AL(b, "ms"); return; }
  if (ms >= 60000) { ap_u64(b, ms / 60000); AL(b, "m"); ms %= 60000; }
  snprintf(tmp, sizeof(tmp), "%.2f", (double)ms / 1000.0);
  if (strchr(tmp, '.')) { /* trim "3.50" -> "3.5", "3.00" -> "3" */
    size_t n = strlen(tmp);
    while (tmp[n - 1] == '0') tmp[--n] = '\0';
    if (tmp[n - 1] == '.') tmp[--n] = '\0';
  }
  ap_s(b, tmp);
  AL(b, "s");
}

/* Token i of the deterministic answer. */
void mock_ap_token(llmux_buf_t *b, const mock_server_t *srv, int64_t i) {
  if (i == 0) { ap_s(b, srv->name); return; }
  AL(b, " tok");
  ap_u64(b, (uint64_t)i);
}

void mock_ap_content(llmux_buf_t *b, const mock_conn_t *c) {
  int64_t i;
  for (i = 0; i < c->call.tokens; i++) mock_ap_token(b, c->srv, i);
}

/* ---- streamed bodies: one HTTP chunk per SSE event (raw for HTTP/1.0) ---- */

static void ap_frame(llmux_buf_t *out, const mock_conn_t *c, const char *p, size_t n) {
  if (c->http10) { ap(out, p, n); return; }
  ap_hex(out, n);
  AL(out, "\r\n");
  ap(out, p, n);
  AL(out, "\r\n");
}

static void ap_last_frame(llmux_buf_t *out, const mock_conn_t *c) {
  if (!c->http10) AL(out, "0\r\n\r\n");
}

/* ---- the response head ---- */

const char *mock_status_reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 529: return "Site Overloaded"; /* Anthropic's overloaded_error */
    default: return "Unknown";
  }
}

static void ap_date(llmux_buf_t *b, mock_server_t *srv) {
  time_t now = time(NULL);
  if ((uint64_t)now != srv->date_sec) {
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(srv->date, sizeof(srv->date), "date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
    srv->date_sec = (uint64_t)now;
  }
  ap_s(b, srv->date);
}

/* x-ratelimit-*: plausible values that count down with traffic; a 429
 * reports the request budget exhausted until retry-after has passed. */
static void ap_ratelimit(llmux_buf_t *b, mock_conn_t *c, int limited) {
  const mock_call_t *call = &c->call;
  uint64_t used = call->prompt_tokens + (uint64_t)(call->tokens > 0 ? call->tokens : 0);
  uint64_t nreq = c->srv->stats.requests;
  AL(b, "x-ratelimit-limit-requests: " "14400" "\r\nx-ratelimit-limit-tokens: 200000\r\n");
  AL(b, "x-ratelimit-remaining-requests: ");
  ap_u64(b, limited ? 0 : LIMIT_REQUESTS - 1 - (nreq ? (nreq - 1) % LIMIT_REQUESTS : 0));
  AL(b, "\r\nx-ratelimit-remaining-tokens: ");
  ap_u64(b, used >= LIMIT_TOKENS ? 0 : LIMIT_TOKENS - used);
  AL(b, "\r\nx-ratelimit-reset-requests: ");
  ap_duration(b, limited ? (uint64_t)call->retry_after_s * 1000 : 6000);
  AL(b, "\r\nx-ratelimit-reset-tokens: ");
  ap_duration(b, limited ? (uint64_t)call->retry_after_s * 1000 : 60);
  AL(b, "\r\n");
  if (limited) {
    AL(b, "retry-after: ");
    ap_u64(b, (uint64_t)call->retry_after_s);
    AL(b, "\r\n");
  }
}

/* Writes the head into c->out (replacing what was there). clen < 0 means
 * a chunked SSE stream. */
static void head(mock_conn_t *c, int status, const char *ctype, int64_t clen) {
  llmux_buf_t *b = &c->out;
  b->len = 0;
  AL(b, "HTTP/1.1 ");
  ap_u64(b, (uint64_t)status);
  AL(b, " ");
  ap_s(b, mock_status_reason(status));
  AL(b, "\r\n");
  ap_date(b, c->srv);
  AL(b, "content-type: ");
  ap_s(b, ctype);
  if (clen >= 0) {
    AL(b, "\r\ncontent-length: ");
    ap_u64(b, (uint64_t)clen);
  } else if (c->http10) { /* no chunked encoding: the close ends the body */
    c->keep_alive = 0;
    AL(b, "\r\ncache-control: no-cache");
  } else {
    AL(b, "\r\ntransfer-encoding: chunked\r\ncache-control: no-cache");
  }
  if (c->keep_alive) AL(b, "\r\nconnection: keep-alive\r\nx-request-id: req_mock");
  else AL(b, "\r\nconnection: close\r\nx-request-id: req_mock");
  ap_hex(b, c->call.id);
  AL(b, "\r\nopenai-version: 2020-10-01\r\nopenai-processing-ms: ");
  ap_u64(b, (uint64_t)(c->call.latency_ms > 0 ? c->call.latency_ms : 0));
  AL(b, "\r\n");
  ap_ratelimit(b, c, status == 429);
  AL(b, "x-mock-name: ");
  ap_s(b, c->srv->name);
  AL(b, "\r\n\r\n");
}

/* ---- sending complete responses, with the faults that bend them ---- */

static int mid_stream_fault(int fault) {
  return fault == MOCK_FAULT_RESET_MID_STREAM || fault == MOCK_FAULT_STALL_MID_STREAM;
}

/* After the bytes before a mid-stream fault are out: RST or silence. */
static void apply_mid_stream_fault(mock_conn_t *c) {
  if (c->call.fault == MOCK_FAULT_STALL_MID_STREAM) return; /* stays BUSY */
  if (c->writes > 0) c->reset_after_write = 1;
  else mock_conn_timer(c, MOCK_TIMER_RESET, RESET_GRACE_MS);
}

static uint64_t slow_interval(const mock_conn_t *c) {
  return c->call.token_delay_ms > 0 ? (uint64_t)c->call.token_delay_ms : SLOW_HEAD_DEFAULT_MS;
}

/* Starts trickling c->slow one head line at a time. */
static void slow_start(mock_conn_t *c, int then_stream) {
  c->slow_off = 0;
  c->slow_then_stream = then_stream;
  mock_slow_head_tick(c);
}

/* c->out holds the head, c->body the body. */
static void finish(mock_conn_t *c) {
  uv_buf_t bufs[2];
  if (c->call.fault == MOCK_FAULT_SLOW_HEADERS) {
    c->slow.len = 0;
    ap_buf(&c->slow, &c->out);
    ap_buf(&c->slow, &c->body);
    slow_start(c, 0);
    return;
  }
  bufs[0] = uv_buf_init(c->out.base, (unsigned)c->out.len);
  bufs[1] = uv_buf_init(c->body.base, (unsigned)c->body.len);
  if (mid_stream_fault(c->call.fault)) { /* a non-stream answer cut in half */
    bufs[1].len /= 2;
    mock_conn_write(c, bufs, 2);
    apply_mid_stream_fault(c);
    return;
  }
  mock_conn_write(c, bufs, 2);
  mock_conn_done(c);
}

void mock_send_body(mock_conn_t *c, int status, const char *ctype, const char *body,
                    size_t len) {
  c->body.len = 0;
  ap(&c->body, body, len);
  head(c, status, ctype, (int64_t)len);
  finish(c);
}

/* {"error":{"message":...,"type":...,"param":...,"code":...}}; msg is
 * trusted text without characters that need escaping. */
void mock_send_error(mock_conn_t *c, int status, const char *type, const char *param,
                     const char *code, const char *msg) {
  llmux_buf_t *b = &c->body;
  b->len = 0;
  AL(b, "{\"error\":{\"message\":\"");
  ap_s(b, msg);
  AL(b, "\",\"type\":\"");
  ap_s(b, type);
  AL(b, "\",\"param\":");
  if (param) { AL(b, "\""); ap_s(b, param); AL(b, "\""); }
  else AL(b, "null");
  AL(b, ",\"code\":");
  if (code) { AL(b, "\""); ap_s(b, code); AL(b, "\""); }
  else AL(b, "null");
  AL(b, "}}\n");
  head(c, status, "application/json", (int64_t)b->len);
  finish(c);
}

void mock_slow_head_tick(mock_conn_t *c) {
  const char *p = c->slow.base + c->slow_off;
  const char *nl = memchr(p, '\n', c->slow.len - c->slow_off);
  size_t n = nl ? (size_t)(nl - p) + 1 : c->slow.len - c->slow_off;
  uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
  int last = n <= 2; /* the empty line that ends the head */
  if (last) b.len = (unsigned)(c->slow.len - c->slow_off); /* and the body with it */
  mock_conn_write(c, &b, 1);
  c->slow_off += b.len;
  if (!last) { mock_conn_timer(c, MOCK_TIMER_SLOW_HEAD, slow_interval(c)); return; }
  if (c->slow_then_stream) mock_stream_tick(c);
  else mock_conn_done(c);
}

/* ---- error answers ---- */

static void send_fault_error(mock_conn_t *c) {
  char msg[256];
  switch (c->call.fault) {
    case MOCK_FAULT_429:
      snprintf(msg, sizeof(msg), "Rate limit reached for requests on requests per day (RPD): "
               "Limit %d, Used %d, Requested 1. Please try again in %llds.", LIMIT_REQUESTS,
               LIMIT_REQUESTS, (long long)c->call.retry_after_s);
      mock_send_error(c, 429, "requests", NULL, "rate_limit_exceeded", msg);
      break;
    case MOCK_FAULT_500:
      mock_send_error(c, 500, "server_error", NULL, NULL,
                      "The server had an error while processing your request. Sorry about that!");
      break;
    case MOCK_FAULT_503:
      mock_send_error(c, 503, "server_error", NULL, "service_unavailable",
                      "The server is overloaded or not ready yet.");
      break;
    case MOCK_FAULT_401:
      mock_send_error(c, 401, "invalid_request_error", NULL, "invalid_api_key",
                      "Incorrect API key provided.");
      break;
    case MOCK_FAULT_400:
      mock_send_error(c, 400, "invalid_request_error", NULL, NULL,
                      "Invalid request (mock fault 400).");
      break;
    case MOCK_FAULT_404_MODEL:
      snprintf(msg, sizeof(msg), "The model `%s` does not exist or you do not have access "
               "to it.", c->call.model.len && c->call.model.len < 128 ? c->call.model.base
                                                                    : "unknown");
      mock_send_error(c, 404, "invalid_request_error", NULL, "model_not_found", msg);
      break;
    default: /* context-length */
      snprintf(msg, sizeof(msg), "This model's maximum context length is 8192 tokens. However, "
               "your messages resulted in %llu tokens. Please reduce the length of the "
               "messages.", (unsigned long long)(c->call.prompt_tokens + 8192));
      mock_send_error(c, 400, "invalid_request_error", "messages", "context_length_exceeded",
                      msg);
      break;
  }
}

static void send_body_error(mock_conn_t *c) {
  if (c->call.body_error == MOCK_BODY_NOT_JSON)
    mock_send_error(c, 400, "invalid_request_error", NULL, NULL,
                    "We could not parse the JSON body of your request. The body must be a "
                    "JSON object.");
  else if (c->call.body_error == MOCK_BODY_NO_INPUT)
    mock_send_error(c, 400, "invalid_request_error", "input", NULL,
                    "'input' is a required property");
  else
    mock_send_error(c, 400, "invalid_request_error", "model", NULL,
                    "you must provide a model parameter");
}

static void send_garbage(mock_conn_t *c) {
  static const char garbage[] = "SSH-2.0-mock this is not HTTP\r\n\x01\x02\x03\xff\xfe\r\n\r\n";
  uv_buf_t b = uv_buf_init((char *)garbage, sizeof(garbage) - 1);
  c->keep_alive = 0;
  mock_conn_write(c, &b, 1);
  mock_conn_done(c);
}

static void send_invalid_json(mock_conn_t *c) {
  static const char body[] = "{\"id\":\"chatcmpl-broken\",\"object\":\"chat.completion\",\"choices\":[{";
  static const char sse[] = "data: {\"id\":\"chatcmpl-broken\",\"choices\":[{\n\n";
  uv_buf_t b[2];
  if (!c->call.stream) {
    mock_send_body(c, 200, "application/json", body, sizeof(body) - 1);
    return;
  }
  head(c, 200, "text/event-stream; charset=utf-8", -1);
  c->body.len = 0;
  ap_frame(&c->body, c, sse, sizeof(sse) - 1);
  ap_frame(&c->body, c, "data: [DONE]\n\n", 14);
  ap_last_frame(&c->body, c);
  b[0] = uv_buf_init(c->out.base, (unsigned)c->out.len);
  b[1] = uv_buf_init(c->body.base, (unsigned)c->body.len);
  mock_conn_write(c, b, 2);
  mock_conn_done(c);
}

/* ---- non-streamed answers ---- */

static void ap_usage(llmux_buf_t *b, const mock_call_t *call) {
  if (call->fault == MOCK_FAULT_HUGE_USAGE) { /* a provider's bug: the gateway must not believe it */
    AL(b, "{\"prompt_tokens\":99999999999999999999999,\"completion_tokens\":");
    ap_u64(b, (uint64_t)call->tokens);
    AL(b, ",\"total_tokens\":99999999999999999999999}");
    return;
  }
  AL(b, "{\"prompt_tokens\":");
  ap_u64(b, call->prompt_tokens);
  AL(b, ",\"completion_tokens\":");
  ap_u64(b, (uint64_t)call->tokens);
  AL(b, ",\"total_tokens\":");
  ap_u64(b, call->prompt_tokens + (uint64_t)call->tokens);
  AL(b, "}");
}

static void ap_obj_start(llmux_buf_t *b, const mock_conn_t *c, const char *idp, const char *obj) {
  AL(b, "{\"id\":\"");
  ap_s(b, idp);
  ap_u64(b, c->call.id);
  AL(b, "\",\"object\":\"");
  ap_s(b, obj);
  AL(b, "\",\"created\":");
  ap_u64(b, c->call.created);
  AL(b, ",\"model\":\"");
  ap_buf(b, &c->call.model);
  AL(b, "\",\"system_fingerprint\":\"fp_mock_");
  ap_s(b, c->srv->name);
  AL(b, "\"");
}

static const char *finish_reason(const mock_call_t *call) {
  return call->truncated ? "length" : call->tools ? "tool_calls" : "stop";
}

/* Arguments of the mock's tool call: {"input":"<content>"}, quotes escaped
 * when the arguments sit inside a JSON string. */
static void ap_tool_args(llmux_buf_t *b, const mock_conn_t *c) {
  AL(b, "{\\\"input\\\":\\\"");
  mock_ap_content(b, c);
  AL(b, "\\\"}");
}

static void chat_body(mock_conn_t *c) {
  llmux_buf_t *b = &c->body;
  ap_obj_start(b, c, "chatcmpl-mock", "chat.completion");
  AL(b, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
  if (c->call.tools) {
    AL(b, "null,\"tool_calls\":[{\"id\":\"call_mock");
    ap_u64(b, c->call.id);
    AL(b, "\",\"type\":\"function\",\"function\":{\"name\":\"");
    ap_buf(b, &c->call.tool_name);
    AL(b, "\",\"arguments\":\"");
    ap_tool_args(b, c);
    AL(b, "\"}}]");
  } else {
    AL(b, "\"");
    mock_ap_content(b, c);
    AL(b, "\"");
  }
  AL(b, ",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"");
  ap_s(b, finish_reason(&c->call));
  AL(b, "\"}],\"usage\":");
  ap_usage(b, &c->call);
  AL(b, "}\n");
}

static void completion_body(mock_conn_t *c) {
  llmux_buf_t *b = &c->body;
  ap_obj_start(b, c, "cmpl-mock", "text_completion");
  AL(b, ",\"choices\":[{\"text\":\"");
  mock_ap_content(b, c);
  AL(b, "\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"");
  ap_s(b, c->call.truncated ? "length" : "stop");
  AL(b, "\"}],\"usage\":");
  ap_usage(b, &c->call);
  AL(b, "}\n");
}

/* Deterministic unit vector from a seed (xorshift64*). */
static void embedding_vector(uint64_t seed, float *v, int64_t n) {
  uint64_t x = seed ? seed : 0x9e3779b97f4a7c15ull;
  double norm = 0;
  int64_t i;
  for (i = 0; i < n; i++) {
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    v[i] = (float)((double)((x * 2685821657736338717ull) >> 11) / 9007199254740992.0 * 2 - 1);
    norm += (double)v[i] * v[i];
  }
  norm = sqrt(norm);
  for (i = 0; i < n && norm > 0; i++) v[i] = (float)(v[i] / norm);
}

static void ap_base64(llmux_buf_t *b, const unsigned char *p, size_t n) {
  static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t i;
  for (i = 0; i + 2 < n; i += 3) {
    char o[4] = {tbl[p[i] >> 2], tbl[((p[i] & 3) << 4) | (p[i + 1] >> 4)],
                 tbl[((p[i + 1] & 15) << 2) | (p[i + 2] >> 6)], tbl[p[i + 2] & 63]};
    ap(b, o, 4);
  }
  if (n - i == 1) {
    char o[4] = {tbl[p[i] >> 2], tbl[(p[i] & 3) << 4], '=', '='};
    ap(b, o, 4);
  } else if (n - i == 2) {
    char o[4] = {tbl[p[i] >> 2], tbl[((p[i] & 3) << 4) | (p[i + 1] >> 4)],
                 tbl[(p[i + 1] & 15) << 2], '='};
    ap(b, o, 4);
  }
}

static void ap_embedding(llmux_buf_t *b, const mock_call_t *call, uint64_t seed) {
  float v[MAX_DIMENSIONS];
  char tmp[32];
  int64_t i;
  embedding_vector(seed, v, call->dimensions);
  if (call->base64) { /* little-endian float32, as OpenAI's base64 format */
    AL(b, "\"");
    ap_base64(b, (const unsigned char *)v, (size_t)call->dimensions * sizeof(float));
    AL(b, "\"");
    return;
  }
  AL(b, "[");
  for (i = 0; i < call->dimensions; i++) {
    int n = snprintf(tmp, sizeof(tmp), "%s%.9g", i ? "," : "", (double)v[i]);
    ap(b, tmp, (size_t)n);
  }
  AL(b, "]");
}

static void embeddings_body(mock_conn_t *c) {
  llmux_buf_t *b = &c->body;
  const uint64_t *seeds = (const uint64_t *)(void *)c->call.seeds.base;
  size_t i, n = c->call.seeds.len / sizeof(uint64_t);
  AL(b, "{\"object\":\"list\",\"data\":[");
  for (i = 0; i < n; i++) {
    if (i) AL(b, ",");
    AL(b, "{\"object\":\"embedding\",\"index\":");
    ap_u64(b, i);
    AL(b, ",\"embedding\":");
    ap_embedding(b, &c->call, seeds[i]);
    AL(b, "}");
  }
  AL(b, "],\"model\":\"");
  ap_buf(b, &c->call.model);
  AL(b, "\",\"usage\":{\"prompt_tokens\":");
  ap_u64(b, c->call.prompt_tokens);
  AL(b, ",\"total_tokens\":");
  ap_u64(b, c->call.prompt_tokens);
  AL(b, "}}\n");
}

/* With ids an aggregator such as OpenRouter lists (issue 16). */
static const char *const model_ids[] = {"mock-small", "mock-large", "gpt-4o-mini",
                                        "text-embedding-3-small", "anthropic/claude-3-opus",
                                        "google/gemini-pro"};

static void ap_model(llmux_buf_t *b, const mock_server_t *srv, const char *id, size_t n) {
  AL(b, "{\"id\":\"");
  ap(b, id, n);
  AL(b, "\",\"object\":\"model\",\"created\":1700000000,\"owned_by\":\"mock-");
  ap_s(b, srv->name);
  AL(b, "\"}");
}

static void models_body(mock_conn_t *c) {
  llmux_buf_t *b = &c->body;
  size_t i;
  if (c->call.endpoint == MOCK_EP_MODEL) {
    ap_model(b, c->srv, c->call.model.base, c->call.model.len);
    AL(b, "\n");
    return;
  }
  AL(b, "{\"object\":\"list\",\"data\":[");
  for (i = 0; i < LLMUX_COUNTOF(model_ids); i++) {
    if (i) AL(b, ",");
    ap_model(b, c->srv, model_ids[i], strlen(model_ids[i]));
  }
  AL(b, "]}\n");
}

/* ---- streams ---- */

/* Events: chat = role [, tool-call args...], tokens, finish [, usage], DONE;
 * completion = tokens, finish [, usage], DONE. */
static int64_t stream_events(const mock_call_t *call) {
  if (call->endpoint == MOCK_EP_RESPONSES) return mock_responses_nevents(call);
  int64_t body = call->endpoint == MOCK_EP_COMPLETION ? call->tokens
               : call->tools ? call->tokens + 3 : call->tokens + 1;
  return body + 1 + (call->include_usage ? 1 : 0) + 1;
}

static void chunk_start(llmux_buf_t *b, const mock_conn_t *c) {
  if (c->call.endpoint == MOCK_EP_COMPLETION) ap_obj_start(b, c, "cmpl-mock", "text_completion");
  else ap_obj_start(b, c, "chatcmpl-mock", "chat.completion.chunk");
  AL(b, ",\"choices\":[");
}

static void chunk_end(llmux_buf_t *b, const mock_conn_t *c, const char *finish) {
  AL(b, ",\"logprobs\":null,\"finish_reason\":");
  if (finish) { AL(b, "\""); ap_s(b, finish); AL(b, "\"}]"); }
  else AL(b, "null}]");
  if (c->call.include_usage) AL(b, ",\"usage\":null");
  AL(b, "}");
}

/* The delta of chat event k (0 < k < body events). */
static void chat_delta(llmux_buf_t *b, const mock_conn_t *c, int64_t k) {
  if (!c->call.tools) {
    AL(b, "{\"content\":\"");
    mock_ap_token(b, c->srv, k - 1);
    AL(b, "\"}");
    return;
  }
  AL(b, "{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"");
  if (k == 1) AL(b, "{\\\"input\\\":\\\"");
  else if (k == c->call.tokens + 2) AL(b, "\\\"}");
  else mock_ap_token(b, c->srv, k - 2);
  AL(b, "\"}}]}");
}

static void chat_event(llmux_buf_t *b, const mock_conn_t *c, int64_t k, int64_t nbody) {
  chunk_start(b, c);
  AL(b, "{\"index\":0,\"delta\":");
  if (k == 0 && c->call.tools) {
    AL(b, "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_mock");
    ap_u64(b, c->call.id);
    AL(b, "\",\"type\":\"function\",\"function\":{\"name\":\"");
    ap_buf(b, &c->call.tool_name);
    AL(b, "\",\"arguments\":\"\"}}]}");
  } else if (k == 0) {
    AL(b, "{\"role\":\"assistant\",\"content\":\"\"}");
  } else if (k < nbody) {
    chat_delta(b, c, k);
  } else {
    AL(b, "{}");
  }
  chunk_end(b, c, k == nbody ? finish_reason(&c->call) : NULL);
}

static void completion_event(llmux_buf_t *b, const mock_conn_t *c, int64_t k, int64_t nbody) {
  chunk_start(b, c);
  AL(b, "{\"text\":\"");
  if (k < nbody) mock_ap_token(b, c->srv, k);
  AL(b, "\",\"index\":0");
  chunk_end(b, c, k == nbody ? (c->call.truncated ? "length" : "stop") : NULL);
}

/* Appends SSE event k, framed as one HTTP chunk, to c->out. */
static void stream_event(mock_conn_t *c, int64_t k) {
  llmux_buf_t *e = &c->body;
  int64_t nbody = stream_events(&c->call) - 2 - (c->call.include_usage ? 1 : 0);
  e->len = 0;
  if (c->call.endpoint == MOCK_EP_RESPONSES) {
    mock_responses_event(e, c, k);
  } else if (k == c->call.nevents - 1) {
    AL(e, "data: [DONE]\n\n");
  } else {
    AL(e, "data: ");
    if (k > nbody) { /* usage: no choices */
      chunk_start(e, c);
      AL(e, "],\"usage\":");
      ap_usage(e, &c->call);
      AL(e, "}");
    } else if (c->call.endpoint == MOCK_EP_COMPLETION) {
      completion_event(e, c, k, nbody);
    } else {
      chat_event(e, c, k, nbody);
    }
    AL(e, "\n\n");
  }
  ap_frame(&c->out, c, e->base, e->len);
}

static void flush_out(mock_conn_t *c) {
  mock_conn_write_buf(c, &c->out);
  c->out.len = 0;
}

/* Emits events until a delay, a fault or the end. c->out may already hold
 * the head. */
void mock_stream_tick(mock_conn_t *c) {
  mock_call_t *call = &c->call;
  if (call->ollama) { mock_ollama_stream_tick(c); return; }
  if (call->anthropic) { mock_anthropic_stream_tick(c); return; }
  while (call->event < call->nevents) {
    if (mid_stream_fault(call->fault) && call->event == call->fail_after) {
      flush_out(c);
      apply_mid_stream_fault(c);
      return;
    }
    stream_event(c, call->event++);
    if (call->token_delay_ms > 0 && call->event < call->nevents) {
      flush_out(c);
      mock_conn_timer(c, MOCK_TIMER_STREAM, (uint64_t)call->token_delay_ms);
      return;
    }
  }
  ap_last_frame(&c->out, c);
  flush_out(c);
  mock_conn_done(c);
}

static void start_stream(mock_conn_t *c) {
  mock_call_t *call = &c->call;
  c->srv->stats.streams++;
  call->nevents = stream_events(call);
  call->event = 0;
  if (call->fail_after < 0) call->fail_after = 2;
  if (call->fail_after > call->nevents - 1) call->fail_after = call->nevents - 1;
  head(c, 200, "text/event-stream; charset=utf-8", -1);
  if (call->fault == MOCK_FAULT_SLOW_HEADERS) {
    c->slow.len = 0;
    ap_buf(&c->slow, &c->out);
    c->out.len = 0;
    slow_start(c, 1);
    return;
  }
  mock_stream_tick(c);
}

/* ---- dispatch ---- */

static void respond_ok(mock_conn_t *c) {
  mock_call_t *call = &c->call;
  c->body.len = 0;
  if (call->body_error) { send_body_error(c); return; }
  switch (call->endpoint) {
    case MOCK_EP_CHAT:
    case MOCK_EP_COMPLETION:
      if (call->stream) { start_stream(c); return; }
      if (call->endpoint == MOCK_EP_CHAT) chat_body(c);
      else completion_body(c);
      break;
    case MOCK_EP_EMBEDDINGS: embeddings_body(c); break;
    case MOCK_EP_RESPONSES:
      if (call->stream) { start_stream(c); return; }
      mock_responses_body(c);
      break;
    case MOCK_EP_MODELS: case MOCK_EP_MODEL: models_body(c); break;
    default: break;
  }
  head(c, 200, "application/json", (int64_t)c->body.len);
  finish(c);
}

void mock_respond(mock_conn_t *c) {
  if (c->call.ollama) { mock_ollama_respond(c); return; }
  if (c->call.anthropic) { mock_anthropic_respond(c); return; }
  switch (c->call.fault) {
    case MOCK_FAULT_RESET: mock_conn_reset(c); return;
    case MOCK_FAULT_STALL: return; /* the conn stays BUSY until the peer leaves */
    case MOCK_FAULT_GARBAGE: send_garbage(c); return;
    case MOCK_FAULT_INVALID_JSON: send_invalid_json(c); return;
    case MOCK_FAULT_429: case MOCK_FAULT_500: case MOCK_FAULT_503: case MOCK_FAULT_401:
    case MOCK_FAULT_400: case MOCK_FAULT_404_MODEL: case MOCK_FAULT_CONTEXT_LENGTH:
      send_fault_error(c);
      return;
    default: break;
  }
  if (c->call.endpoint == MOCK_EP_NOTFOUND) {
    mock_send_error(c, 404, "invalid_request_error", NULL, "unknown_url", "Invalid URL.");
    return;
  }
  respond_ok(c);
}

static int ends_with(const char *s, size_t n, const char *suffix) {
  size_t m = strlen(suffix);
  return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

static int route(mock_req_t *r, const char *path, size_t plen, mock_call_t *call) {
  const char *slash;
  if (r->method == HTTP_POST) {
    if (ends_with(path, plen, "/chat/completions")) return MOCK_EP_CHAT;
    if (ends_with(path, plen, "/completions")) return MOCK_EP_COMPLETION;
    if (ends_with(path, plen, "/embeddings")) return MOCK_EP_EMBEDDINGS;
    if (ends_with(path, plen, "/responses")) return MOCK_EP_RESPONSES;
    return MOCK_EP_NOTFOUND;
  }
  if (r->method != HTTP_GET) return MOCK_EP_NOTFOUND;
  if (ends_with(path, plen, "/models")) return MOCK_EP_MODELS;
  slash = plen ? memrchr(path, '/', plen) : NULL;
  if (slash && slash - path >= 7 && ends_with(path, (size_t)(slash - path), "/models") &&
      (size_t)(slash - path) + 1 < plen) {
    call->model.len = 0;
    ap(&call->model, slash + 1, plen - (size_t)(slash - path) - 1);
    return MOCK_EP_MODEL;
  }
  return MOCK_EP_NOTFOUND;
}

static void call_reset(mock_call_t *call) {
  llmux_buf_t model = call->model, tool = call->tool_name, seeds = call->seeds;
  memset(call, 0, sizeof(*call));
  model.len = tool.len = seeds.len = 0;
  call->model = model;
  call->tool_name = tool;
  call->seeds = seeds;
  call->fail_after = -1;
}

void mock_call_free(mock_call_t *call) {
  llmux_buf_free(&call->model);
  llmux_buf_free(&call->tool_name);
  llmux_buf_free(&call->seeds);
}

static void resolve_knobs(mock_conn_t *c, const mock_knobs_t *h, const mock_knobs_t *bk) {
  const mock_knobs_t *d = &c->srv->defaults;
  mock_call_t *call = &c->call;
  int64_t tokens = pick(h->tokens, bk->tokens, d->tokens);
  call->fault = h->fault >= 0 ? h->fault : bk->fault >= 0 ? bk->fault : d->fault;
  call->latency_ms = pick(h->latency_ms, bk->latency_ms, d->latency_ms);
  call->token_delay_ms = pick(h->token_delay_ms, bk->token_delay_ms, d->token_delay_ms);
  call->fail_after = pick(h->fail_after, bk->fail_after, d->fail_after);
  call->retry_after_s = pick(h->retry_after_s, bk->retry_after_s, d->retry_after_s);
  /* max_tokens (already in call->tokens when the body set it) caps the answer. */
  if (call->tokens > 0 && call->tokens < tokens) call->truncated = 1;
  else call->tokens = tokens;
}

void mock_dispatch(mock_conn_t *c, mock_req_t *r) {
  mock_server_t *srv = c->srv;
  mock_knobs_t body_knobs;
  const char *path = r->url.base ? r->url.base : "";
  const char *q = memchr(path, '?', r->url.len);
  size_t plen = q ? (size_t)(q - path) : r->url.len;
  call_reset(&c->call);
  c->call.id = r->seq;
  if (plen >= 6 && memcmp(path, "/mock/", 6) == 0) {
    if (mock_introspect(c, r, path, plen) != 0)
      mock_send_error(c, 404, "invalid_request_error", NULL, "unknown_url", "Invalid URL.");
    mock_req_release(srv, r);
    return;
  }
  srv->stats.requests++;
  c->call.created = (uint64_t)time(NULL);
  if (mock_anthropic_match(r, path, plen)) { mock_anthropic_dispatch(c, r); return; }
  c->call.endpoint = route(r, path, plen, &c->call);
  mock_knobs_unset(&body_knobs);
  if (mock_ollama_route(&c->call, r, path, plen))
    c->call.body_error = mock_ollama_parse_body(&c->call, r, &body_knobs);
  else if ((c->call.endpoint >= MOCK_EP_CHAT && c->call.endpoint <= MOCK_EP_EMBEDDINGS) ||
           c->call.endpoint == MOCK_EP_RESPONSES)
    c->call.body_error = mock_parse_body(&c->call, r, &body_knobs);
  if (c->call.body_error == MOCK_BODY_NOT_JSON) mock_knobs_unset(&body_knobs);
  resolve_knobs(c, &r->knobs, &body_knobs);
  mock_log_push(srv, r);
  if (c->call.latency_ms > 0) mock_conn_timer(c, MOCK_TIMER_LATENCY, (uint64_t)c->call.latency_ms);
  else mock_respond(c);
}
