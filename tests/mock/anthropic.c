/* Anthropic's Messages API for mock_upstream: POST .../messages, answered
 * in Anthropic's exact wire format, plain or as an SSE stream, so the
 * anthropic plugin's translation is proven end to end.
 *
 * The request is validated the way Anthropic does (x-api-key,
 * anthropic-version, max_tokens, messages with alternating roles, content
 * blocks, tool_use ids answered by tool_result blocks in the next turn, no
 * fields Anthropic does not know) and a mistake gets Anthropic's 400. The
 * answer is the mock's deterministic content (token 0 is --name, token i is
 * " tok<i>"), cut by max_tokens or at a stop sequence; with tools it is one
 * tool_use block per tool (or the one tool_choice names) whose input is
 * {"input": "<content>"}, unless the last user turn carries tool results,
 * which is answered with text so a round trip ends. A tool forced by
 * tool_choice {"type":"tool"} whose input_schema has properties gets an
 * input built from that schema instead (what structured-output clients
 * check): each property by its type, strings being the content, integers
 * 42, numbers 4.5, booleans true, arrays one item, enums and consts their
 * first value; streamed as partial_json pieces of 8 bytes.
 *
 * Faults (x-mock-fault): 429 rate_limit_error with anthropic-ratelimit-*
 * and retry-after, 503 as 529 overloaded_error, 500 api_error, 401
 * authentication_error, 400 invalid_request_error, 404-model
 * not_found_error, context-length "prompt is too long", reset, stall,
 * garbage, invalid-json, reset-mid-stream, stall-mid-stream (slow-headers
 * is not offered here). `x-mock-stream-error: TYPE` ends a stream after
 * fail-after events with Anthropic's in-band `event: error`.
 *
 * The whole answer is rendered with jansson when the request arrives, into
 * the connection's body buffer (its status in call->anthropic_status); a
 * stream then sends it one event (one HTTP chunk) at a time, call->event
 * being the byte offset of the next event. Speed does not matter here: the
 * benchmark uses the OpenAI wire. */
#include "mock.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>

#define RL_REQUESTS 4000
#define RL_TOKENS 400000
#define MAX_TOOL_CALLS 3
#define DEFAULT_FAIL_AFTER 2

/* ---- appending (ap, AL, ap_s...: mock.h) ---- */

static void ap_fmt(llmux_buf_t *b, const char *fmt, unsigned long long v) {
  if (llmux_buf_printf(b, fmt, v) != 0) abort();
}

static void ap_json(llmux_buf_t *b, json_t *v) {
  char *s = json_dumps(v, JSON_COMPACT);
  if (s == NULL) abort();
  ap_s(b, s);
  free(s);
}

/* ---- routing ---- */

static int ends_with(const char *s, size_t n, const char *suffix) {
  size_t m = strlen(suffix);
  return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

int mock_anthropic_match(const mock_req_t *r, const char *path, size_t plen) {
  return r->method == HTTP_POST && ends_with(path, plen, "/messages");
}

/* A request header (names are stored lower-cased), or NULL. */
static const char *req_header(const mock_req_t *r, const char *name) {
  const char *p = r->hdrs.base;
  unsigned i;
  for (i = 0; p != NULL && i < r->nhdrs; i++) {
    const char *val = p + strlen(p) + 1;
    if (strcmp(p, name) == 0) return val;
    p = val + strlen(val) + 1;
  }
  return NULL;
}

/* ---- validation: Anthropic's own 400s ---- */

typedef struct {
  llmux_buf_t *msg;  /* the first mistake found, empty if none */
  json_t *tool_ids;  /* the previous assistant turn's tool_use ids */
} check_t;

static int bad(check_t *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int bad(check_t *k, const char *fmt, ...) {
  char tmp[512];
  va_list ap_;
  if (k->msg->len) return -1;
  va_start(ap_, fmt);
  vsnprintf(tmp, sizeof tmp, fmt, ap_);
  va_end(ap_);
  ap_s(k->msg, tmp);
  return -1;
}

static int known_field(const char *key) {
  static const char *const fields[] = {
    "model", "messages", "max_tokens", "system", "stop_sequences", "temperature", "top_p",
    "top_k", "tools", "tool_choice", "stream", "metadata", "thinking", "service_tier",
    "container", "mcp_servers"};
  size_t i;
  for (i = 0; i < LLMUX_COUNTOF(fields); i++)
    if (strcmp(fields[i], key) == 0) return 1;
  return 0;
}

static const char *type_of(json_t *obj) {
  const char *t = json_string_value(json_object_get(obj, "type"));
  return t ? t : "";
}

static int check_source(check_t *k, json_t *src, const char *where) {
  const char *type = type_of(src);
  if (strcmp(type, "base64") == 0 && json_is_string(json_object_get(src, "media_type")) &&
      json_is_string(json_object_get(src, "data")))
    return 0;
  if (strcmp(type, "url") == 0 && json_is_string(json_object_get(src, "url"))) return 0;
  return bad(k, "%s.source: Input tag '%s' found using 'type' does not match any of the "
             "expected tags: 'base64', 'url'", where, type);
}

/* One content block; tool_use ids go to `uses`, tool_result ids to `results`. */
static int check_block(check_t *k, json_t *b, const char *where, int user, json_t *uses,
                       json_t *results) {
  const char *type = type_of(b);
  if (strcmp(type, "text") == 0) {
    json_t *text = json_object_get(b, "text");
    if (!json_is_string(text)) return bad(k, "%s.text: Field required", where);
    if (json_string_length(text) == 0)
      return bad(k, "messages: text content blocks must be non-empty");
    return 0;
  }
  if (strcmp(type, "image") == 0 || strcmp(type, "document") == 0)
    return check_source(k, json_object_get(b, "source"), where);
  if (strcmp(type, "tool_use") == 0 && !user) {
    if (!json_is_string(json_object_get(b, "id")) || !json_is_string(json_object_get(b, "name")))
      return bad(k, "%s: tool_use blocks need an id and a name", where);
    if (!json_is_object(json_object_get(b, "input")))
      return bad(k, "%s.input: Input should be a valid dictionary", where);
    return json_array_append(uses, json_object_get(b, "id"));
  }
  if (strcmp(type, "tool_result") == 0 && user) {
    json_t *id = json_object_get(b, "tool_use_id");
    if (!json_is_string(id)) return bad(k, "%s.tool_use_id: Field required", where);
    return json_array_append(results, id);
  }
  return bad(k, "%s: Input tag '%s' found using 'type' does not match any of the expected "
             "tags for a %s message", where, type, user ? "user" : "assistant");
}

static int id_in(json_t *ids, const char *id) {
  size_t i;
  json_t *v;
  json_array_foreach(ids, i, v) {
    if (strcmp(json_string_value(v), id) == 0) return 1;
  }
  return 0;
}

/* The tool_use ids of the previous assistant turn must all be answered by
 * the tool_result blocks of user turn n, and nothing else. */
static int check_pairing(check_t *k, size_t n, json_t *results) {
  size_t i;
  json_t *v;
  json_array_foreach(results, i, v) {
    if (!id_in(k->tool_ids, json_string_value(v)))
      return bad(k, "messages.%zu.content.%zu: unexpected `tool_use_id` found in `tool_result` "
                 "blocks: %s. Each `tool_result` block must have a corresponding `tool_use` "
                 "block in the previous message.", n, i, json_string_value(v));
  }
  json_array_foreach(k->tool_ids, i, v) {
    if (!id_in(results, json_string_value(v)))
      return bad(k, "messages.%zu: `tool_use` ids were found without `tool_result` blocks "
                 "immediately after: %s. Each `tool_use` block must have a corresponding "
                 "`tool_result` block in the next message.", n - 1, json_string_value(v));
  }
  return 0;
}

static int check_content(check_t *k, json_t *content, size_t n, int user, json_t *uses,
                         json_t *results) {
  char where[64];
  json_t *b;
  size_t i;
  if (json_is_string(content) && json_string_length(content) > 0) return 0;
  if (!json_is_array(content) || json_array_size(content) == 0)
    return bad(k, "messages.%zu: all messages must have non-empty content except for the "
               "optional final assistant message", n);
  json_array_foreach(content, i, b) {
    snprintf(where, sizeof where, "messages.%zu.content.%zu", n, i);
    if (check_block(k, b, where, user, uses, results) != 0) return -1;
  }
  return 0;
}

static int check_message(check_t *k, json_t *m, size_t n, const char **prev_role) {
  const char *role = json_string_value(json_object_get(m, "role"));
  json_t *uses = json_array(), *results = json_array();
  int rc = -1, user;
  if (role == NULL || (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0)) {
    bad(k, "messages.%zu.role: Input should be 'user' or 'assistant'", n);
  } else if (*prev_role && strcmp(*prev_role, role) == 0) {
    bad(k, "messages: roles must alternate between \"user\" and \"assistant\", but found "
        "multiple \"%s\" roles in a row", role);
  } else if (n == 0 && strcmp(role, "user") != 0) {
    bad(k, "messages: first message must use the \"user\" role");
  } else {
    user = strcmp(role, "user") == 0;
    rc = check_content(k, json_object_get(m, "content"), n, user, uses, results);
    if (rc == 0 && user) rc = check_pairing(k, n, results);
    json_array_clear(k->tool_ids);
    if (!user) json_array_extend(k->tool_ids, uses);
    *prev_role = role;
  }
  json_decref(uses);
  json_decref(results);
  return rc;
}

static int check_messages(check_t *k, json_t *msgs) {
  const char *prev = NULL;
  size_t i;
  json_t *m;
  if (!json_is_array(msgs)) return bad(k, "messages: Field required");
  if (json_array_size(msgs) == 0) return bad(k, "messages: at least one message is required");
  json_array_foreach(msgs, i, m) {
    if (check_message(k, m, i, &prev) != 0) return -1;
  }
  return 0;
}

static int check_unit_interval(check_t *k, json_t *body, const char *key) {
  json_t *v = json_object_get(body, key);
  if (v == NULL) return 0;
  if (!json_is_number(v)) return bad(k, "%s: Input should be a valid number", key);
  if (json_number_value(v) < 0 || json_number_value(v) > 1)
    return bad(k, "%s: Input should be less than or equal to 1", key);
  return 0;
}

static int check_tools(check_t *k, json_t *body) {
  json_t *tools = json_object_get(body, "tools"), *t;
  json_t *choice = json_object_get(body, "tool_choice");
  const char *ct = type_of(choice);
  size_t i;
  if (tools != NULL && !json_is_array(tools)) return bad(k, "tools: Input should be a valid list");
  json_array_foreach(tools, i, t) {
    if (!json_is_string(json_object_get(t, "name")))
      return bad(k, "tools.%zu.custom.name: Field required", i);
    if (!json_is_object(json_object_get(t, "input_schema")))
      return bad(k, "tools.%zu.custom.input_schema: Field required", i);
  }
  if (choice == NULL) return 0;
  if (strcmp(ct, "auto") && strcmp(ct, "any") && strcmp(ct, "tool") && strcmp(ct, "none"))
    return bad(k, "tool_choice: Input tag '%s' found using 'type' does not match any of the "
               "expected tags: 'auto', 'any', 'tool', 'none'", ct);
  if (strcmp(ct, "tool") == 0 && !json_is_string(json_object_get(choice, "name")))
    return bad(k, "tool_choice.tool.name: Field required");
  return 0;
}

static int check_body(check_t *k, json_t *body) {
  const char *key;
  json_t *v, *sys;
  json_object_foreach(body, key, v) {
    if (!known_field(key)) return bad(k, "%s: Extra inputs are not permitted", key);
  }
  if (!json_is_string(json_object_get(body, "model"))) return bad(k, "model: Field required");
  v = json_object_get(body, "max_tokens");
  if (v == NULL) return bad(k, "max_tokens: Field required");
  if (!json_is_integer(v) || json_integer_value(v) < 1)
    return bad(k, "max_tokens: Input should be greater than or equal to 1");
  sys = json_object_get(body, "system");
  if (sys != NULL && !json_is_string(sys) && !json_is_array(sys))
    return bad(k, "system: Input should be a valid string");
  v = json_object_get(body, "stop_sequences");
  if (v != NULL && !json_is_array(v)) return bad(k, "stop_sequences: Input should be a valid list");
  v = json_object_get(body, "stream");
  if (v != NULL && !json_is_boolean(v)) return bad(k, "stream: Input should be a valid boolean");
  if (check_unit_interval(k, body, "temperature") || check_unit_interval(k, body, "top_p") ||
      check_tools(k, body))
    return -1;
  return check_messages(k, json_object_get(body, "messages"));
}

/* ---- the answer ---- */

typedef struct {
  mock_conn_t *c;
  json_t *body;
  json_t *calls;         /* tool names to call */
  const char *stop_seq;  /* the stop sequence that ended the text */
  int64_t ntok;          /* tokens of text produced */
  const char *stop_reason;
  const char *stream_error;
  json_t *schema;        /* the forced tool's input_schema, when it has properties */
} plan_t;

static void token_text(const mock_server_t *srv, int64_t i, llmux_buf_t *out) {
  out->len = 0;
  if (i == 0) ap_s(out, srv->name);
  else ap_fmt(out, " tok%llu", (unsigned long long)i);
}

/* Does the last user turn hand back tool results? */
static int last_turn_has_results(json_t *msgs) {
  json_t *last = json_array_get(msgs, json_array_size(msgs) - 1), *b;
  size_t i;
  json_array_foreach(json_object_get(last, "content"), i, b) {
    if (strcmp(type_of(b), "tool_result") == 0) return 1;
  }
  return 0;
}

static void plan_tools(plan_t *p) {
  json_t *tools = json_object_get(p->body, "tools"), *choice, *t;
  const char *ct;
  size_t i;
  p->calls = json_array();
  if (json_array_size(tools) == 0 || last_turn_has_results(json_object_get(p->body, "messages")))
    return;
  choice = json_object_get(p->body, "tool_choice");
  ct = json_string_value(json_object_get(choice, "type"));
  if (ct && strcmp(ct, "none") == 0) return;
  if (ct && strcmp(ct, "tool") == 0) {
    json_array_append(p->calls, json_object_get(choice, "name"));
    json_array_foreach(tools, i, t) {
      json_t *schema = json_object_get(t, "input_schema");
      if (json_equal(json_object_get(t, "name"), json_object_get(choice, "name")) &&
          json_object_size(json_object_get(schema, "properties")) > 0)
        p->schema = schema;
    }
    return;
  }
  json_array_foreach(tools, i, t) {
    if (i < MAX_TOOL_CALLS) json_array_append(p->calls, json_object_get(t, "name"));
  }
}

/* How much text, and why it stops. */
static void plan_text(plan_t *p) {
  mock_call_t *call = &p->c->call;
  json_t *stops = json_object_get(p->body, "stop_sequences"), *s;
  llmux_buf_t tok = {0};
  size_t j;
  int64_t i;
  p->ntok = call->tokens;
  p->stop_reason = call->truncated ? "max_tokens" : "end_turn";
  for (i = 0; i < call->tokens && p->stop_seq == NULL; i++) {
    token_text(p->c->srv, i, &tok);
    json_array_foreach(stops, j, s) {
      if (json_is_string(s) && strstr(tok.base, json_string_value(s))) {
        p->stop_seq = json_string_value(s);
        p->ntok = i;
        p->stop_reason = "stop_sequence";
        break;
      }
    }
  }
  llmux_buf_free(&tok);
  if (json_array_size(p->calls) > 0) p->stop_reason = "tool_use";
}

static json_t *text_of(plan_t *p, int64_t from, int64_t to) {
  llmux_buf_t all = {0}, tok = {0};
  json_t *s;
  int64_t i;
  for (i = from; i < to; i++) {
    token_text(p->c->srv, i, &tok);
    ap(&all, tok.base, tok.len);
  }
  s = json_stringn(all.base ? all.base : "", all.len);
  llmux_buf_free(&all);
  llmux_buf_free(&tok);
  return s;
}

static json_t *usage(plan_t *p, int start) {
  return json_pack("{s:I, s:i, s:i, s:I}", "input_tokens",
                   (json_int_t)p->c->call.prompt_tokens, "cache_creation_input_tokens", 0,
                   "cache_read_input_tokens", 0, "output_tokens",
                   (json_int_t)(start ? 1 : p->ntok > 0 ? p->ntok : 1));
}

static json_t *message_skeleton(plan_t *p) {
  char id[40];
  snprintf(id, sizeof id, "msg_mock%llx", (unsigned long long)p->c->call.id);
  return json_pack("{s:s, s:s, s:s, s:[], s:O, s:n, s:n}", "id", id, "type", "message",
                   "role", "assistant", "content", "model", json_object_get(p->body, "model"),
                   "stop_reason", "stop_sequence");
}

/* With tools, text before the calls only when the model chose freely. */
static int preface(plan_t *p) {
  const char *ct = json_string_value(json_object_get(json_object_get(p->body, "tool_choice"),
                                                     "type"));
  return ct == NULL || strcmp(ct, "auto") == 0;
}

/* A value that matches `schema` (see the top of the file). */
static json_t *sample(plan_t *p, json_t *schema, int depth) {
  json_t *type = json_object_get(schema, "type"), *v, *sub;
  const char *t = json_is_string(type) ? json_string_value(type)
                                       : json_string_value(json_array_get(type, 0));
  const char *key;
  if ((v = json_object_get(schema, "const")) != NULL) return json_incref(v);
  if (json_array_size(json_object_get(schema, "enum")) > 0)
    return json_incref(json_array_get(json_object_get(schema, "enum"), 0));
  if (json_array_size(json_object_get(schema, "anyOf")) > 0 && depth < 8)
    return sample(p, json_array_get(json_object_get(schema, "anyOf"), 0), depth + 1);
  if (t == NULL) t = json_object_get(schema, "properties") ? "object" : "string";
  if (strcmp(t, "object") == 0) {
    v = json_object();
    if (depth < 8) {
      json_object_foreach(json_object_get(schema, "properties"), key, sub)
        json_object_set_new(v, key, sample(p, sub, depth + 1));
    }
    return v;
  }
  if (strcmp(t, "array") == 0)
    return depth < 8 ? json_pack("[o]", sample(p, json_object_get(schema, "items"), depth + 1))
                     : json_array();
  if (strcmp(t, "integer") == 0) return json_integer(42);
  if (strcmp(t, "number") == 0) return json_real(4.5);
  if (strcmp(t, "boolean") == 0) return json_true();
  if (strcmp(t, "null") == 0) return json_null();
  return text_of(p, 0, p->c->call.tokens);
}

static json_t *tool_input(plan_t *p) {
  if (p->schema != NULL) return sample(p, p->schema, 0);
  return json_pack("{s:o}", "input", text_of(p, 0, p->c->call.tokens));
}

static void render_plain(plan_t *p, llmux_buf_t *out) {
  json_t *m = message_skeleton(p), *content = json_object_get(m, "content"), *name;
  size_t i;
  char id[48];
  if (json_array_size(p->calls) == 0) {
    json_array_append_new(content, json_pack("{s:s, s:o}", "type", "text", "text",
                                             text_of(p, 0, p->ntok)));
  } else {
    if (preface(p))
      json_array_append_new(content, json_pack("{s:s, s:o}", "type", "text", "text",
                                               text_of(p, 0, 1)));
    json_array_foreach(p->calls, i, name) {
      snprintf(id, sizeof id, "toolu_mock%llx_%zu", (unsigned long long)p->c->call.id, i);
      json_array_append_new(content, json_pack("{s:s, s:s, s:O, s:o}", "type", "tool_use",
                                                "id", id, "name", name, "input", tool_input(p)));
    }
  }
  json_object_set_new(m, "stop_reason", json_string(p->stop_reason));
  json_object_set_new(m, "stop_sequence", p->stop_seq ? json_string(p->stop_seq) : json_null());
  json_object_set_new(m, "usage", usage(p, 0));
  ap_json(out, m);
  ap_s(out, "\n");
  json_decref(m);
}

/* "event: TYPE\ndata: {...}\n\n"; takes ev. */
static void event(llmux_buf_t *out, json_t *ev) {
  ap_s(out, "event: ");
  ap_s(out, json_string_value(json_object_get(ev, "type")));
  ap_s(out, "\ndata: ");
  ap_json(out, ev);
  ap_s(out, "\n\n");
  json_decref(ev);
}

static void text_block_events(plan_t *p, llmux_buf_t *out, size_t index, int64_t from,
                              int64_t to) {
  int64_t i;
  event(out, json_pack("{s:s, s:I, s:{s:s, s:s}}", "type", "content_block_start", "index",
                       (json_int_t)index, "content_block", "type", "text", "text", ""));
  if (index == 0) event(out, json_pack("{s:s}", "type", "ping"));
  for (i = from; i < to; i++)
    event(out, json_pack("{s:s, s:I, s:{s:s, s:o}}", "type", "content_block_delta", "index",
                         (json_int_t)index, "delta", "type", "text_delta", "text",
                         text_of(p, i, i + 1)));
  event(out, json_pack("{s:s, s:I}", "type", "content_block_stop", "index", (json_int_t)index));
}

static void json_delta(llmux_buf_t *out, size_t index, json_t *partial) {
  event(out, json_pack("{s:s, s:I, s:{s:s, s:o}}", "type", "content_block_delta", "index",
                       (json_int_t)index, "delta", "type", "input_json_delta", "partial_json",
                       partial));
}

/* The input {"input": "<content>"} in fragments, as Anthropic streams it:
 * an empty one first, then pieces that are not JSON on their own. */
static void tool_block_events(plan_t *p, llmux_buf_t *out, size_t index, size_t n,
                              json_t *name) {
  char id[48];
  int64_t i;
  snprintf(id, sizeof id, "toolu_mock%llx_%zu", (unsigned long long)p->c->call.id, n);
  event(out, json_pack("{s:s, s:I, s:{s:s, s:s, s:O, s:{}}}", "type", "content_block_start",
                       "index", (json_int_t)index, "content_block", "type", "tool_use", "id", id,
                       "name", name, "input"));
  json_delta(out, index, json_string(""));
  if (p->schema != NULL) { /* the schema's sample in pieces */
    json_t *input = sample(p, p->schema, 0);
    char *text = json_dumps(input, JSON_COMPACT | JSON_ENSURE_ASCII); /* cut anywhere */
    size_t off, len;
    if (text == NULL) abort();
    len = strlen(text);
    for (off = 0; off < len; off += 8)
      json_delta(out, index, json_stringn(text + off, len - off < 8 ? len - off : 8));
    free(text);
    json_decref(input);
    event(out, json_pack("{s:s, s:I}", "type", "content_block_stop", "index", (json_int_t)index));
    return;
  }
  json_delta(out, index, json_string("{\"input\": \""));
  for (i = 0; i < p->c->call.tokens; i++) {
    json_t *t = text_of(p, i, i + 1);
    json_delta(out, index, t);
  }
  json_delta(out, index, json_string("\"}"));
  event(out, json_pack("{s:s, s:I}", "type", "content_block_stop", "index", (json_int_t)index));
}

static void render_stream(plan_t *p, llmux_buf_t *out) {
  json_t *m = message_skeleton(p), *name;
  size_t i, index = 0;
  json_object_set_new(m, "usage", usage(p, 1));
  event(out, json_pack("{s:s, s:o}", "type", "message_start", "message", m));
  if (json_array_size(p->calls) == 0) {
    text_block_events(p, out, index++, 0, p->ntok);
  } else {
    if (preface(p)) text_block_events(p, out, index++, 0, 1);
    json_array_foreach(p->calls, i, name) tool_block_events(p, out, index++, i, name);
  }
  event(out, json_pack("{s:s, s:{s:s, s:o}, s:{s:I}}", "type", "message_delta", "delta",
                       "stop_reason", p->stop_reason, "stop_sequence",
                       p->stop_seq ? json_string(p->stop_seq) : json_null(), "usage",
                       "output_tokens", (json_int_t)(p->ntok > 0 ? p->ntok : 1)));
  event(out, json_pack("{s:s}", "type", "message_stop"));
}

/* Cuts the rendered stream after `after` events and appends Anthropic's
 * in-band error event. */
static void cut_with_error(llmux_buf_t *out, int64_t after, const char *type) {
  size_t off = 0;
  int64_t n = 0;
  json_t *ev;
  while (n < after && off < out->len) {
    const char *end = strstr(out->base + off, "\n\n");
    if (end == NULL) break;
    off = (size_t)(end - out->base) + 2;
    n++;
  }
  out->len = off;
  ev = json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error", "type", type, "message",
                 strcmp(type, "overloaded_error") == 0 ? "Overloaded" : "Internal server error");
  event(out, ev);
}

/* ---- HTTP ---- */

static void ap_rfc3339(llmux_buf_t *b, time_t at) {
  char tmp[40];
  struct tm tm;
  gmtime_r(&at, &tm);
  strftime(tmp, sizeof tmp, "%Y-%m-%dT%H:%M:%SZ", &tm);
  ap_s(b, tmp);
}

/* anthropic-ratelimit-*: plenty left, or (429) the requests exhausted until
 * retry-after has passed. */
static void ap_ratelimit(llmux_buf_t *b, const mock_conn_t *c, int limited) {
  static const char *const kinds[] = {"tokens", "input-tokens", "output-tokens"};
  uint64_t nreq = c->srv->stats.requests;
  time_t now = time(NULL);
  time_t reset = now + (limited ? (time_t)c->call.retry_after_s : 60);
  size_t i;
  ap_fmt(b, "anthropic-ratelimit-requests-limit: %llu\r\n", RL_REQUESTS);
  ap_fmt(b, "anthropic-ratelimit-requests-remaining: %llu\r\n",
         limited ? 0 : RL_REQUESTS - 1 - (nreq ? (nreq - 1) % RL_REQUESTS : 0));
  ap_s(b, "anthropic-ratelimit-requests-reset: ");
  ap_rfc3339(b, reset);
  ap_s(b, "\r\n");
  for (i = 0; i < LLMUX_COUNTOF(kinds); i++) {
    llmux_buf_printf(b, "anthropic-ratelimit-%s-limit: %u\r\n", kinds[i], RL_TOKENS);
    llmux_buf_printf(b, "anthropic-ratelimit-%s-remaining: %llu\r\n", kinds[i],
                     (unsigned long long)(RL_TOKENS - c->call.prompt_tokens % RL_TOKENS));
    llmux_buf_printf(b, "anthropic-ratelimit-%s-reset: ", kinds[i]);
    ap_rfc3339(b, now + 60);
    ap_s(b, "\r\n");
  }
  if (limited || c->call.anthropic_status == 529)
    ap_fmt(b, "retry-after: %llu\r\n", (unsigned long long)c->call.retry_after_s);
}

/* The head into c->out; clen < 0: a chunked event stream. */
static void head(mock_conn_t *c, int status, int64_t clen) {
  llmux_buf_t *b = &c->out;
  char date[64];
  time_t now = time(NULL);
  struct tm tm;
  b->len = 0;
  ap_fmt(b, "HTTP/1.1 %llu ", (unsigned long long)status);
  ap_s(b, mock_status_reason(status));
  gmtime_r(&now, &tm);
  strftime(date, sizeof date, "\r\ndate: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
  ap_s(b, date);
  if (clen >= 0) {
    ap_fmt(b, "content-type: application/json\r\ncontent-length: %llu\r\n",
           (unsigned long long)clen);
  } else {
    ap_s(b, "content-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n");
    if (c->http10) c->keep_alive = 0;
    else ap_s(b, "transfer-encoding: chunked\r\n");
  }
  ap_s(b, c->keep_alive ? "connection: keep-alive\r\n" : "connection: close\r\n");
  ap_fmt(b, "request-id: req_mock%llx\r\nanthropic-organization-id: mock-org\r\n",
         (unsigned long long)c->call.id);
  ap_ratelimit(b, c, status == 429);
  ap_s(b, "x-mock-name: ");
  ap_s(b, c->srv->name);
  ap_s(b, "\r\n\r\n");
}

static void send_whole(mock_conn_t *c, int status, const llmux_buf_t *body) {
  uv_buf_t bufs[2];
  head(c, status, (int64_t)body->len);
  bufs[0] = uv_buf_init(c->out.base, (unsigned)c->out.len);
  bufs[1] = uv_buf_init(body->base, (unsigned)body->len);
  mock_conn_write(c, bufs, 2);
}

/* {"type":"error","error":{"type":...,"message":...},"request_id":...} */
static void send_error(mock_conn_t *c, int status, const char *type, const char *msg) {
  char rid[40];
  json_t *e;
  snprintf(rid, sizeof rid, "req_mock%llx", (unsigned long long)c->call.id);
  e = json_pack("{s:s, s:{s:s, s:s}, s:s}", "type", "error", "error", "type", type, "message",
                msg, "request_id", rid);
  c->call.anthropic_status = status;
  c->body.len = 0;
  ap_json(&c->body, e);
  json_decref(e);
  send_whole(c, status, &c->body);
  mock_conn_done(c);
}

static int send_fault(mock_conn_t *c) {
  char msg[256];
  switch (c->call.fault) {
    case MOCK_FAULT_429:
      send_error(c, 429, "rate_limit_error", "This request would exceed the rate limit for your "
                 "organization of 4,000 requests per minute. For details, refer to: "
                 "https://docs.claude.com/en/api/rate-limits.");
      return 1;
    case MOCK_FAULT_503:
      c->call.anthropic_status = 529;
      send_error(c, 529, "overloaded_error", "Overloaded");
      return 1;
    case MOCK_FAULT_500: send_error(c, 500, "api_error", "Internal server error"); return 1;
    case MOCK_FAULT_401: send_error(c, 401, "authentication_error", "invalid x-api-key"); return 1;
    case MOCK_FAULT_400:
      send_error(c, 400, "invalid_request_error", "Invalid request (mock fault 400).");
      return 1;
    case MOCK_FAULT_404_MODEL:
      snprintf(msg, sizeof msg, "model: %.100s", c->call.model.len ? c->call.model.base : "?");
      send_error(c, 404, "not_found_error", msg);
      return 1;
    case MOCK_FAULT_CONTEXT_LENGTH:
      snprintf(msg, sizeof msg, "prompt is too long: %llu tokens > 200000 maximum",
               (unsigned long long)c->call.prompt_tokens + 200000);
      send_error(c, 400, "invalid_request_error", msg);
      return 1;
    default: return 0;
  }
}

static void send_garbage(mock_conn_t *c) {
  static const char garbage[] = "SSH-2.0-mock this is not HTTP\r\n\x01\x02\xff\r\n\r\n";
  uv_buf_t b = uv_buf_init((char *)garbage, sizeof garbage - 1);
  c->keep_alive = 0;
  mock_conn_write(c, &b, 1);
  mock_conn_done(c);
}

static void ap_chunk(llmux_buf_t *out, const mock_conn_t *c, const char *p, size_t n) {
  if (!c->http10) ap_fmt(out, "%llx\r\n", (unsigned long long)n);
  ap(out, p, n);
  if (!c->http10) ap_s(out, "\r\n");
}

void mock_anthropic_stream_tick(mock_conn_t *c) {
  mock_call_t *call = &c->call;
  const llmux_buf_t *all = &c->body;
  while ((size_t)call->event < all->len) {
    const char *p = all->base + call->event, *end = strstr(p, "\n\n");
    size_t n = end ? (size_t)(end - p) + 2 : all->len - (size_t)call->event;
    if ((call->fault == MOCK_FAULT_RESET_MID_STREAM || call->fault == MOCK_FAULT_STALL_MID_STREAM) &&
        call->nevents == call->fail_after) {
      mock_conn_write_buf(c, &c->out);
      c->out.len = 0;
      if (call->fault == MOCK_FAULT_STALL_MID_STREAM) return; /* stays BUSY */
      if (c->writes > 0) c->reset_after_write = 1;
      else mock_conn_timer(c, MOCK_TIMER_RESET, 10);
      return;
    }
    ap_chunk(&c->out, c, p, n);
    call->event += (int64_t)n;
    call->nevents++;
    if (call->token_delay_ms > 0 && (size_t)call->event < all->len) {
      mock_conn_write_buf(c, &c->out);
      c->out.len = 0;
      mock_conn_timer(c, MOCK_TIMER_STREAM, (uint64_t)call->token_delay_ms);
      return;
    }
  }
  if (!c->http10) ap_s(&c->out, "0\r\n\r\n");
  mock_conn_write_buf(c, &c->out);
  c->out.len = 0;
  mock_conn_done(c);
}

void mock_anthropic_respond(mock_conn_t *c) {
  mock_call_t *call = &c->call;
  switch (call->fault) {
    case MOCK_FAULT_RESET: mock_conn_reset(c); return;
    case MOCK_FAULT_STALL: return;
    case MOCK_FAULT_GARBAGE: send_garbage(c); return;
    default: break;
  }
  if (call->anthropic_status != 200) { /* a validation error, already rendered */
    send_whole(c, call->anthropic_status, &c->body);
    mock_conn_done(c);
    return;
  }
  if (send_fault(c)) return;
  if (call->fault == MOCK_FAULT_INVALID_JSON) {
    c->body.len = call->stream ? c->body.len / 3 : c->body.len / 2;
    if (call->stream) ap_s(&c->body, "\n\n");
  }
  if (!call->stream) {
    send_whole(c, 200, &c->body);
    mock_conn_done(c);
    return;
  }
  c->srv->stats.streams++;
  call->event = 0;
  call->nevents = 0;
  if (call->fail_after < 0) call->fail_after = DEFAULT_FAIL_AFTER;
  head(c, 200, -1);
  mock_anthropic_stream_tick(c);
}

/* ---- dispatch ---- */

static void resolve_knobs(mock_conn_t *c, const mock_knobs_t *h) {
  const mock_knobs_t *d = &c->srv->defaults;
  mock_call_t *call = &c->call;
  int64_t tokens = h->tokens >= 0 ? h->tokens : d->tokens;
  call->fault = h->fault >= 0 ? h->fault : d->fault;
  call->latency_ms = h->latency_ms >= 0 ? h->latency_ms : d->latency_ms;
  call->token_delay_ms = h->token_delay_ms >= 0 ? h->token_delay_ms : d->token_delay_ms;
  call->fail_after = h->fail_after >= 0 ? h->fail_after : d->fail_after;
  call->retry_after_s = h->retry_after_s >= 0 ? h->retry_after_s : d->retry_after_s;
  if (call->tokens > 0 && call->tokens < tokens) call->truncated = 1;
  else call->tokens = tokens;
}

/* Anthropic's checks, in its order: 0, or the status with its message in
 * msg. Reads stream and max_tokens into call on success. */
static int validate(mock_call_t *call, const mock_req_t *r, json_t *body, llmux_buf_t *msg) {
  check_t k = {msg, json_array()};
  int status = 0;
  if (req_header(r, "x-api-key") == NULL) {
    status = 401;
    ap_s(msg, "x-api-key header is required");
  } else if (req_header(r, "anthropic-version") == NULL) {
    status = 400;
    ap_s(msg, "anthropic-version: header is required");
  } else if (!json_is_object(body)) {
    status = 400;
    ap_s(msg, "There was an issue with the request body: the body must be a JSON object.");
  } else if (check_body(&k, body) != 0) {
    status = 400;
  } else {
    call->stream = json_is_true(json_object_get(body, "stream"));
    call->tokens = json_integer_value(json_object_get(body, "max_tokens"));
    llmux_buf_appends(&call->model, json_string_value(json_object_get(body, "model")));
  }
  json_decref(k.tool_ids);
  return status;
}

static void render_error(llmux_buf_t *out, int status, const char *msg) {
  json_t *e = json_pack("{s:s, s:{s:s, s:s}, s:s}", "type", "error", "error", "type",
                        status == 401 ? "authentication_error" : "invalid_request_error",
                        "message", msg, "request_id", "req_mock");
  ap_json(out, e);
  json_decref(e);
}

/* Validates and renders the answer into c->body (status in
 * call->anthropic_status). */
static void prepare(mock_conn_t *c, mock_req_t *r, const char *stream_error) {
  mock_call_t *call = &c->call;
  llmux_buf_t msg = {0};
  json_t *body = json_loadb(r->body.base ? r->body.base : "", r->body.len, 0, NULL);
  plan_t p;
  int status = validate(call, r, body, &msg);
  resolve_knobs(c, &r->knobs);
  call->prompt_tokens = r->body.len / 4 + 1;
  call->anthropic_status = status ? status : 200;
  c->body.len = 0;
  if (status != 0) {
    render_error(&c->body, status, msg.base);
  } else {
    memset(&p, 0, sizeof p);
    p.c = c;
    p.body = body;
    plan_tools(&p);
    plan_text(&p);
    if (call->stream) render_stream(&p, &c->body);
    else render_plain(&p, &c->body);
    if (call->stream && stream_error)
      cut_with_error(&c->body, call->fail_after >= 0 ? call->fail_after : DEFAULT_FAIL_AFTER,
                     stream_error);
    json_decref(p.calls);
  }
  json_decref(body);
  llmux_buf_free(&msg);
}

void mock_anthropic_dispatch(mock_conn_t *c, mock_req_t *r) {
  char stream_error[64] = "";
  const char *se = req_header(r, "x-mock-stream-error");
  if (se != NULL) snprintf(stream_error, sizeof stream_error, "%s", se);
  c->call.anthropic = 1;
  c->call.endpoint = MOCK_EP_CHAT;
  prepare(c, r, stream_error[0] ? stream_error : NULL);
  mock_log_push(c->srv, r);
  if (c->call.latency_ms > 0) mock_conn_timer(c, MOCK_TIMER_LATENCY, (uint64_t)c->call.latency_ms);
  else mock_anthropic_respond(c);
}
