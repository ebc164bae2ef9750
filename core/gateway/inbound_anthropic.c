#define _GNU_SOURCE
/* Anthropic's Messages API in front of the chat path (inbound.h, issue 15).
 *
 * Request: the Messages body is checked the way Anthropic checks it (a 400
 * invalid_request_error names the field) and rewritten as a chat body:
 * system -> a system message; text and image blocks -> content parts;
 * tool_use -> an assistant's tool_calls; tool_result -> tool messages (put
 * before the rest of their user turn, as chat wants them right after the
 * calls); tools -> function tools with input_schema as parameters;
 * tool_choice auto/any/tool/none -> auto/required/{function}/none;
 * stop_sequences -> stop; metadata.user_id -> user; stream -> stream with
 * stream_options.include_usage, so the stream ends with the exact usage.
 * Dropped, for chat has no place for them: top_k, thinking, cache_control,
 * citations, is_error, service_tier and thinking blocks of past turns.
 * Refused (400): server tools, documents and images inside tool results.
 *
 * Answer: a chat.completion becomes a Message; a chat stream becomes
 * Anthropic's events through a per-request state machine: message_start
 * (input_tokens the gateway's estimate), per text run and per tool call a
 * content_block_start / _delta (text_delta, input_json_delta) / _stop, a
 * ping after the first block opens (as in Anthropic's documented streams),
 * and at the end message_delta (stop_reason, usage) and message_stop. A chat
 * error event becomes `event: error`, and nothing follows it.
 *
 * Chat cannot say which stop sequence ended an answer, so a stop is always
 * end_turn, never stop_sequence. */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/json_scan.h"
#include "base/split.h"
#include "base/util.h"
#include "gateway/inbound.h"

/* The most tokens an answer may ask for, and be believed to have used. */
#define MAX_TOKENS_LIMIT 1000000000
/* Tool calls of one streamed answer that get a block; more are dropped. */
#define MAX_STREAM_TOOLS 128

enum { BLOCK_NONE = 0, BLOCK_TEXT, BLOCK_TOOL };

typedef struct anth_state_s {
  char model[256];          /* the model the client asked for */
  /* streams */
  llmux_split_t *sse;       /* the chat stream, split into events */
  int started;              /* message_start went out */
  int pinged;
  int done;                 /* an error went out: nothing more */
  int block;                /* the open block's index */
  int kind;                 /* BLOCK_*: what is open */
  int nblocks;              /* blocks opened so far */
  int tool_block[MAX_STREAM_TOOLS]; /* chat tool call index -> block, -1 none */
  char finish[32];
  int64_t in_tokens, out_tokens; /* -1 until the provider says */
} anth_state_t;

/* ==== errors ============================================================== */

static const char *const anth_types[] = {
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
    "request_too_large",     "rate_limit_error",     "api_error",        "overloaded_error",
    "billing_error",         "timeout_error"};

static const char *anth_type_named(const char *s) {
  size_t i;
  for (i = 0; s != NULL && i < LLMUX_COUNTOF(anth_types); i++)
    if (strcmp(s, anth_types[i]) == 0) return anth_types[i];
  return NULL;
}

static int contains(const char *s, const char *what) {
  return s != NULL && strstr(s, what) != NULL;
}

/* By status when there is one; in-band (status 0) by the words we have. */
const char *llmux_inbound_anthropic_error_type(int status, const char *type, const char *code) {
  const char *t;
  switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    case 503:
    case 529: return "overloaded_error";
    default: break;
  }
  if (status >= 500) return "api_error";
  if (status >= 400) return "invalid_request_error";
  if ((t = anth_type_named(code)) != NULL || (t = anth_type_named(type)) != NULL) return t;
  if (contains(code, "rate_limit") || contains(code, "RATE_LIMIT") || contains(type, "rate_limit"))
    return "rate_limit_error";
  if (contains(code, "overloaded") || contains(code, "shutting_down")) return "overloaded_error";
  return "api_error";
}

static int error_json(llmux_buf_t *out, const char *atype, const char *msg, size_t len,
                      const char *request_id) {
  int rc = llmux_buf_appends(out, "{\"type\":\"error\",\"error\":{\"type\":\"");
  rc |= llmux_buf_appends(out, atype);
  rc |= llmux_buf_appends(out, "\",\"message\":");
  rc |= llmux_buf_append_json_str(out, msg, len);
  rc |= llmux_buf_appends(out, "}");
  if (request_id != NULL) {
    rc |= llmux_buf_appends(out, ",\"request_id\":");
    rc |= llmux_buf_append_json_str(out, request_id, strlen(request_id));
  }
  rc |= llmux_buf_appends(out, "}");
  return rc ? LLMUX_ENOMEM : 0;
}

static int anth_error_body(llmux_buf_t *out, int status, const char *type, const char *code,
                           const char *msg, const char *request_id) {
  return error_json(out, llmux_inbound_anthropic_error_type(status, type, code), msg,
                    strlen(msg), request_id);
}

/* ==== request: Messages -> chat =========================================== */

static int bad(llmux_inbound_err_t *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int bad(llmux_inbound_err_t *err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof err->message, fmt, ap);
  va_end(ap);
  err->status = 400;
  return LLMUX_EINVAL;
}

static const char *str_at(const json_t *o, const char *key) {
  return json_string_value(json_object_get(o, key));
}

/* Appends the string at o[key] (NUL bytes and all). */
static int append_str_at(llmux_buf_t *b, const json_t *o, const char *key) {
  const json_t *v = json_object_get(o, key);
  return llmux_buf_append(b, json_string_value(v), json_string_length(v));
}

static const char *type_of(const json_t *block) {
  return str_at(block, "type");
}

/* A number of lo to hi (a JSON number, integer or not). */
static int number_in(const json_t *v, double lo, double hi) {
  double d;
  if (!json_is_number(v)) return 0;
  d = json_number_value(v);
  return d >= lo && d <= hi;
}

/* A text block's text, which Anthropic requires. */
static json_t *text_of(const json_t *b, llmux_inbound_err_t *err, const char *where, size_t i,
                       size_t j) {
  json_t *text = json_object_get(b, "text");
  if (!json_is_string(text)) bad(err, "%s.%zu.content.%zu.text: Field required", where, i, j);
  return json_is_string(text) ? text : NULL;
}

/* An image block as a chat image_url part. */
static json_t *image_part(const json_t *b, llmux_inbound_err_t *err, size_t i, size_t j) {
  json_t *src = json_object_get(b, "source");
  const char *st = str_at(src, "type");
  llmux_buf_t url = {0};
  json_t *part = NULL;
  if (st != NULL && strcmp(st, "url") == 0 && str_at(src, "url") != NULL)
    return json_pack("{s:s,s:{s:O}}", "type", "image_url", "image_url", "url",
                     json_object_get(src, "url"));
  if (st == NULL || strcmp(st, "base64") != 0 || str_at(src, "media_type") == NULL ||
      str_at(src, "data") == NULL) {
    bad(err, "messages.%zu.content.%zu.source: an image needs a source of type 'base64' "
        "(media_type, data) or 'url' (url)", i, j);
    return NULL;
  }
  if (llmux_buf_appends(&url, "data:") == 0 &&
      llmux_buf_appends(&url, str_at(src, "media_type")) == 0 &&
      llmux_buf_appends(&url, ";base64,") == 0 &&
      append_str_at(&url, src, "data") == 0)
    part = json_pack("{s:s,s:{s:s%}}", "type", "image_url", "image_url", "url", url.base, url.len);
  llmux_buf_free(&url);
  return part;
}

/* A tool_result block as a tool message: its content (a string, or text
 * blocks joined by newlines). */
static json_t *tool_message(const json_t *b, llmux_inbound_err_t *err, size_t i, size_t j) {
  json_t *id = json_object_get(b, "tool_use_id"), *content = json_object_get(b, "content"), *c;
  llmux_buf_t text = {0};
  json_t *msg = NULL;
  size_t k;
  if (!json_is_string(id))
    return bad(err, "messages.%zu.content.%zu.tool_use_id: Field required", i, j), NULL;
  if (json_is_array(content)) {
    json_array_foreach(content, k, c) {
      const char *t = type_of(c);
      if (t == NULL || strcmp(t, "text") != 0 || str_at(c, "text") == NULL) {
        bad(err, "messages.%zu.content.%zu.content.%zu: only text blocks can be translated "
            "inside a tool_result", i, j, k);
        goto done;
      }
      if ((k && llmux_buf_appends(&text, "\n")) ||
          append_str_at(&text, c, "text"))
        goto done;
    }
  } else if (json_is_string(content)) {
    if (llmux_buf_append(&text, json_string_value(content), json_string_length(content))) goto done;
  } else if (content != NULL && !json_is_null(content)) {
    bad(err, "messages.%zu.content.%zu.content: Input should be a valid string or list", i, j);
    goto done;
  }
  msg = json_pack("{s:s,s:O,s:s%}", "role", "tool", "tool_call_id", id, "content",
                  text.base ? text.base : "", text.len);
done:
  llmux_buf_free(&text);
  return msg;
}

/* A tool_use block as a chat tool call. */
static json_t *tool_call(const json_t *b, llmux_inbound_err_t *err, size_t i, size_t j) {
  json_t *input = json_object_get(b, "input"), *call;
  char *args;
  if (!json_is_string(json_object_get(b, "id")) || !json_is_string(json_object_get(b, "name")))
    return bad(err, "messages.%zu.content.%zu: a tool_use block needs an id and a name", i, j),
           NULL;
  if (!json_is_object(input))
    return bad(err, "messages.%zu.content.%zu.input: Input should be a valid dictionary", i, j),
           NULL;
  if ((args = json_dumps(input, JSON_COMPACT | JSON_REAL_PRECISION(17))) == NULL) return NULL;
  call = json_pack("{s:O,s:s,s:{s:O,s:s}}", "id", json_object_get(b, "id"), "type", "function",
                   "function", "name", json_object_get(b, "name"), "arguments", args);
  free(args);
  return call;
}

/* Chat content from parts: a lone text part as a plain string. */
static json_t *parts_content(json_t *parts) {
  json_t *only = json_array_get(parts, 0);
  if (json_array_size(parts) == 0) return json_string("");
  if (json_array_size(parts) == 1 && strcmp(type_of(only), "text") == 0)
    return json_incref(json_object_get(only, "text"));
  return json_incref(parts);
}

/* A user turn of blocks: its tool messages first, then the rest. */
static int user_blocks(json_t *content, json_t *msgs, llmux_inbound_err_t *err, size_t i) {
  json_t *parts = json_array(), *tools = json_array(), *b, *x;
  size_t j;
  int rc = LLMUX_EINVAL;
  json_array_foreach(content, j, b) {
    const char *t = type_of(b);
    x = NULL;
    if (t == NULL) {
      bad(err, "messages.%zu.content.%zu.type: Field required", i, j);
      goto done;
    } else if (strcmp(t, "text") == 0) {
      json_t *text = text_of(b, err, "messages", i, j);
      if (text == NULL) goto done;
      x = json_pack("{s:s,s:O}", "type", "text", "text", text);
      if (x == NULL || json_array_append_new(parts, x)) goto done;
    } else if (strcmp(t, "image") == 0) {
      if ((x = image_part(b, err, i, j)) == NULL || json_array_append_new(parts, x)) goto done;
    } else if (strcmp(t, "tool_result") == 0) {
      if ((x = tool_message(b, err, i, j)) == NULL || json_array_append_new(tools, x)) goto done;
    } else {
      bad(err, "messages.%zu.content.%zu: content blocks of type '%.40s' cannot be translated "
          "for this model's provider", i, j, t);
      goto done;
    }
  }
  rc = LLMUX_ENOMEM;
  if (json_array_extend(msgs, tools)) goto done;
  if ((json_array_size(parts) > 0 || json_array_size(tools) == 0) &&
      json_array_append_new(msgs, json_pack("{s:s,s:o}", "role", "user", "content",
                                            parts_content(parts))))
    goto done;
  rc = 0;
done:
  json_decref(parts);
  json_decref(tools);
  return rc;
}

/* An assistant turn of blocks: its text joined, its tool_use blocks as
 * tool_calls; thinking blocks are dropped. */
static int assistant_blocks(json_t *content, json_t *msgs, llmux_inbound_err_t *err, size_t i) {
  json_t *calls = json_array(), *b, *msg = NULL, *x;
  llmux_buf_t text = {0};
  size_t j;
  int rc = LLMUX_EINVAL;
  json_array_foreach(content, j, b) {
    const char *t = type_of(b);
    if (t == NULL) {
      bad(err, "messages.%zu.content.%zu.type: Field required", i, j);
      goto done;
    } else if (strcmp(t, "text") == 0) {
      json_t *s = text_of(b, err, "messages", i, j);
      if (s == NULL) goto done;
      if (llmux_buf_append(&text, json_string_value(s), json_string_length(s))) goto done;
    } else if (strcmp(t, "tool_use") == 0) {
      if ((x = tool_call(b, err, i, j)) == NULL || json_array_append_new(calls, x)) goto done;
    } else if (strcmp(t, "thinking") != 0 && strcmp(t, "redacted_thinking") != 0) {
      bad(err, "messages.%zu.content.%zu: content blocks of type '%.40s' cannot be translated "
          "in an assistant turn", i, j, t);
      goto done;
    }
  }
  rc = LLMUX_ENOMEM;
  msg = json_pack("{s:s}", "role", "assistant");
  if (msg == NULL) goto done;
  if (text.len || json_array_size(calls) == 0)
    json_object_set_new(msg, "content", json_stringn(text.base ? text.base : "", text.len));
  else
    json_object_set_new(msg, "content", json_null());
  if (json_array_size(calls)) json_object_set(msg, "tool_calls", calls);
  if (json_array_append(msgs, msg)) goto done;
  rc = 0;
done:
  json_decref(msg);
  json_decref(calls);
  llmux_buf_free(&text);
  return rc;
}

static int one_message(json_t *m, json_t *msgs, llmux_inbound_err_t *err, size_t i) {
  const char *role = str_at(m, "role");
  json_t *content = json_object_get(m, "content");
  int user;
  if (!json_is_object(m)) return bad(err, "messages.%zu: Input should be a valid dictionary", i);
  if (role == NULL || (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0))
    return bad(err, "messages.%zu.role: Input should be 'user' or 'assistant'", i);
  user = strcmp(role, "user") == 0;
  if (json_is_string(content))
    return json_array_append_new(msgs, json_pack("{s:s,s:O}", "role", role, "content", content))
               ? LLMUX_ENOMEM : 0;
  if (!json_is_array(content))
    return bad(err, "messages.%zu.content: Input should be a valid string or list", i);
  return user ? user_blocks(content, msgs, err, i) : assistant_blocks(content, msgs, err, i);
}

/* system: a string, or text blocks joined by blank lines. */
static int system_message(json_t *sys, json_t *msgs, llmux_inbound_err_t *err) {
  llmux_buf_t text = {0};
  json_t *b;
  size_t j;
  int rc = 0;
  if (sys == NULL || json_is_null(sys)) return 0;
  if (json_is_string(sys)) {
    if (json_string_length(sys) == 0) return 0;
    return json_array_append_new(msgs, json_pack("{s:s,s:O}", "role", "system", "content", sys))
               ? LLMUX_ENOMEM : 0;
  }
  if (!json_is_array(sys)) return bad(err, "system: Input should be a valid string or list");
  json_array_foreach(sys, j, b) {
    const char *t = type_of(b);
    if (t == NULL || strcmp(t, "text") != 0 || str_at(b, "text") == NULL) {
      rc = bad(err, "system.%zu: system blocks must be text blocks", j);
      break;
    }
    if ((text.len && llmux_buf_appends(&text, "\n\n")) ||
        append_str_at(&text, b, "text")) {
      rc = LLMUX_ENOMEM;
      break;
    }
  }
  if (rc == 0 && text.len &&
      json_array_append_new(msgs, json_pack("{s:s,s:s%}", "role", "system", "content", text.base,
                                            text.len)))
    rc = LLMUX_ENOMEM;
  llmux_buf_free(&text);
  return rc;
}

static int add_messages(json_t *in, json_t *out, llmux_inbound_err_t *err) {
  json_t *messages = json_object_get(in, "messages"), *msgs, *m;
  size_t i;
  int rc;
  if (messages == NULL) return bad(err, "messages: Field required");
  if (!json_is_array(messages)) return bad(err, "messages: Input should be a valid list");
  if (json_array_size(messages) == 0) return bad(err, "messages: at least one message is required");
  msgs = json_array();
  json_object_set_new(out, "messages", msgs);
  if ((rc = system_message(json_object_get(in, "system"), msgs, err)) != 0) return rc;
  json_array_foreach(messages, i, m) {
    if ((rc = one_message(m, msgs, err, i)) != 0) return rc;
  }
  return 0;
}

/* tools -> function tools; tool_choice -> chat's (only with tools). */
static int add_tools(json_t *in, json_t *out, llmux_inbound_err_t *err) {
  json_t *tools = json_object_get(in, "tools"), *tc = json_object_get(in, "tool_choice"), *t;
  json_t *list;
  const char *ct;
  size_t i;
  if (tools == NULL || json_is_null(tools)) return 0;
  if (!json_is_array(tools)) return bad(err, "tools: Input should be a valid list");
  list = json_array();
  json_object_set_new(out, "tools", list);
  json_array_foreach(tools, i, t) {
    const char *type = type_of(t);
    json_t *fn, *schema = json_object_get(t, "input_schema");
    if (type != NULL && strcmp(type, "custom") != 0)
      return bad(err, "tools.%zu: tools of type '%.40s' cannot be translated; only custom "
                 "tools (name, description, input_schema) can", i, type);
    if (str_at(t, "name") == NULL || json_string_length(json_object_get(t, "name")) == 0)
      return bad(err, "tools.%zu.name: Field required", i);
    if (!json_is_object(schema)) return bad(err, "tools.%zu.input_schema: Field required", i);
    fn = json_pack("{s:O}", "name", json_object_get(t, "name"));
    if (str_at(t, "description") != NULL)
      json_object_set(fn, "description", json_object_get(t, "description"));
    json_object_set(fn, "parameters", schema);
    if (json_array_append_new(list, json_pack("{s:s,s:o}", "type", "function", "function", fn)))
      return LLMUX_ENOMEM;
  }
  if (tc == NULL || json_is_null(tc)) return 0;
  if ((ct = type_of(tc)) == NULL) return bad(err, "tool_choice.type: Field required");
  if (json_array_size(list) == 0) return 0;
  if (strcmp(ct, "auto") == 0) json_object_set_new(out, "tool_choice", json_string("auto"));
  else if (strcmp(ct, "any") == 0) json_object_set_new(out, "tool_choice", json_string("required"));
  else if (strcmp(ct, "none") == 0) json_object_set_new(out, "tool_choice", json_string("none"));
  else if (strcmp(ct, "tool") == 0 && str_at(tc, "name") != NULL)
    json_object_set_new(out, "tool_choice",
                        json_pack("{s:s,s:{s:O}}", "type", "function", "function", "name",
                                  json_object_get(tc, "name")));
  else if (strcmp(ct, "tool") == 0) return bad(err, "tool_choice.name: Field required");
  else return bad(err, "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'");
  if (json_is_true(json_object_get(tc, "disable_parallel_tool_use")) && strcmp(ct, "none") != 0)
    json_object_set_new(out, "parallel_tool_calls", json_false());
  return 0;
}

/* Sampling, stop sequences, metadata and stream. */
static int add_options(json_t *in, json_t *out, llmux_inbound_err_t *err) {
  json_t *v, *s;
  size_t i;
  if ((v = json_object_get(in, "stop_sequences")) != NULL && !json_is_null(v)) {
    if (!json_is_array(v)) return bad(err, "stop_sequences: Input should be a valid list");
    json_array_foreach(v, i, s) {
      if (!json_is_string(s))
        return bad(err, "stop_sequences.%zu: Input should be a valid string", i);
    }
    if (json_array_size(v)) json_object_set(out, "stop", v);
  }
  if ((v = json_object_get(in, "temperature")) != NULL && !json_is_null(v)) {
    if (!number_in(v, 0, 1)) return bad(err, "temperature: Input should be a number from 0 to 1");
    json_object_set(out, "temperature", v);
  }
  if ((v = json_object_get(in, "top_p")) != NULL && !json_is_null(v)) {
    if (!number_in(v, 0, 1)) return bad(err, "top_p: Input should be a number from 0 to 1");
    json_object_set(out, "top_p", v);
  }
  /* top_k: chat has no such field; checked, then dropped. */
  if ((v = json_object_get(in, "top_k")) != NULL && !json_is_null(v) &&
      (!json_is_integer(v) || json_integer_value(v) < 0))
    return bad(err, "top_k: Input should be a non-negative integer");
  if ((v = json_object_get(in, "metadata")) != NULL && !json_is_null(v)) {
    if (!json_is_object(v)) return bad(err, "metadata: Input should be a valid dictionary");
    s = json_object_get(v, "user_id");
    if (s != NULL && !json_is_null(s) && !json_is_string(s))
      return bad(err, "metadata.user_id: Input should be a valid string");
    if (json_is_string(s) && json_string_length(s)) json_object_set(out, "user", s);
  }
  v = json_object_get(in, "stream");
  if (v != NULL && !json_is_null(v) && !json_is_boolean(v))
    return bad(err, "stream: Input should be a valid boolean");
  if (json_is_true(v)) {
    json_object_set_new(out, "stream", json_true());
    json_object_set_new(out, "stream_options", json_pack("{s:b}", "include_usage", 1));
  }
  return 0;
}

/* model and max_tokens, which Anthropic requires. */
static int add_head(json_t *in, json_t *out, anth_state_t *st, unsigned flags,
                    llmux_inbound_err_t *err) {
  json_t *model = json_object_get(in, "model"), *mt = json_object_get(in, "max_tokens");
  if (model == NULL) return bad(err, "model: Field required");
  if (!json_is_string(model) || json_string_length(model) == 0 ||
      json_string_length(model) >= sizeof st->model ||
      strlen(json_string_value(model)) != json_string_length(model))
    return bad(err, "model: Input should be a non-empty string of at most %zu bytes",
               sizeof st->model - 1);
  if (mt == NULL && !(flags & LLMUX_INBOUND_COUNT_ONLY))
    return bad(err, "max_tokens: Field required");
  if (mt != NULL && (!json_is_integer(mt) || json_integer_value(mt) < 1 ||
                     json_integer_value(mt) > MAX_TOKENS_LIMIT))
    return bad(err, "max_tokens: Input should be an integer from 1 to %d", MAX_TOKENS_LIMIT);
  memcpy(st->model, json_string_value(model), json_string_length(model) + 1);
  json_object_set(out, "model", model);
  return 0;
}

static int anth_request(const char *body, size_t len, unsigned flags, llmux_buf_t *chat,
                        void **state, llmux_inbound_err_t *err) {
  json_error_t je;
  json_t *in, *out = NULL;
  anth_state_t *st;
  char *text = NULL;
  int rc;
  *state = st = calloc(1, sizeof *st);
  if (st == NULL) return LLMUX_ENOMEM;
  err->status = 0;
  err->message[0] = '\0';
  /* Duplicate keys are refused at any depth: which one a parser keeps
   * differs, and what we check must be what the provider reads. */
  in = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES, &je);
  if (in == NULL) return bad(err, "The request body is not valid JSON: %s", je.text);
  if (!json_is_object(in)) {
    rc = bad(err, "The request body must be a JSON object.");
    goto done;
  }
  out = json_object();
  if ((rc = add_head(in, out, st, flags, err)) != 0 || (rc = add_messages(in, out, err)) != 0)
    goto done;
  if (json_object_get(in, "max_tokens") != NULL)
    json_object_set(out, "max_tokens", json_object_get(in, "max_tokens"));
  if ((rc = add_options(in, out, err)) != 0 || (rc = add_tools(in, out, err)) != 0) goto done;
  text = json_dumps(out, JSON_COMPACT | JSON_REAL_PRECISION(15));
  rc = text != NULL && llmux_buf_appends(chat, text) == 0 ? 0 : LLMUX_ENOMEM;
done:
  /* A failure that named no reason is an allocation that failed. */
  if (rc == LLMUX_EINVAL && err->status == 0) rc = LLMUX_ENOMEM;
  free(text);
  json_decref(out);
  json_decref(in);
  return rc;
}

/* ==== answers: shared ===================================================== */

static const char *stop_reason(const char *finish) {
  if (finish == NULL) return "end_turn";
  if (strcmp(finish, "length") == 0) return "max_tokens";
  if (strcmp(finish, "tool_calls") == 0 || strcmp(finish, "function_call") == 0)
    return "tool_use";
  if (strcmp(finish, "content_filter") == 0) return "refusal";
  return "end_turn";
}

/* The Message id: Anthropic's own when the answer came from Anthropic,
 * else the chat id (or the request's) after "msg_". */
static void message_id(char *out, size_t cap, const char *chat_id, const char *rid) {
  if (chat_id != NULL && strncmp(chat_id, "msg_", 4) == 0)
    snprintf(out, cap, "%s", chat_id);
  else if (chat_id != NULL && *chat_id)
    snprintf(out, cap, "msg_%s", chat_id);
  else
    snprintf(out, cap, "msg_%s", rid && *rid ? rid : "llmux");
}

/* ==== answers: plain ====================================================== */

/* A tool call's arguments as the tool_use block's input object. */
static json_t *tool_input(const char *args) {
  json_t *v;
  size_t i;
  for (i = 0; args != NULL && args[i] == ' '; i++) {}
  if (args == NULL || args[i] == '\0') return json_object();
  v = json_loads(args, JSON_DECODE_ANY, NULL);
  if (json_is_object(v)) return v;
  json_decref(v);
  return NULL;
}

static int answer_content(json_t *msg, json_t *content, const llmux_inbound_ctx_t *ctx) {
  json_t *text = json_object_get(msg, "content"), *calls = json_object_get(msg, "tool_calls");
  json_t *c, *part;
  size_t i;
  if (json_is_string(text) && json_string_length(text) > 0)
    json_array_append_new(content, json_pack("{s:s,s:O}", "type", "text", "text", text));
  json_array_foreach(text, i, part) { /* content as parts: their text */
    json_t *t = json_object_get(part, "text");
    const char *pt = type_of(part);
    if (pt != NULL && strcmp(pt, "text") == 0 && json_is_string(t) && json_string_length(t) > 0)
      json_array_append_new(content, json_pack("{s:s,s:O}", "type", "text", "text", t));
  }
  json_array_foreach(calls, i, c) {
    json_t *fn = json_object_get(c, "function"), *input = tool_input(str_at(fn, "arguments"));
    char id[160];
    if (input == NULL || str_at(fn, "name") == NULL) {
      json_decref(input);
      return LLMUX_EUPSTREAM;
    }
    if (str_at(c, "id") != NULL) snprintf(id, sizeof id, "%s", str_at(c, "id"));
    else snprintf(id, sizeof id, "toolu_%s_%zu", ctx->request_id ? ctx->request_id : "", i);
    json_array_append_new(content, json_pack("{s:s,s:s,s:O,s:o}", "type", "tool_use", "id", id,
                                             "name", json_object_get(fn, "name"), "input",
                                             input));
  }
  return 0;
}

static int anth_answer(void *state, const llmux_inbound_ctx_t *ctx, const char *chat,
                       size_t len, llmux_buf_t *out) {
  anth_state_t *st = state;
  json_t *in = llmux_inbound_load_chat(chat, len), *ch, *msg, *usage, *content, *o = NULL;
  const char *model;
  char id[200], *text = NULL;
  int64_t pin, pout;
  int rc = LLMUX_EUPSTREAM;
  ch = json_array_get(json_object_get(in, "choices"), 0);
  msg = json_object_get(ch, "message");
  if (!json_is_object(msg)) goto done;
  content = json_array();
  if ((rc = answer_content(msg, content, ctx)) != 0) {
    json_decref(content);
    goto done;
  }
  usage = json_object_get(in, "usage");
  pin = llmux_inbound_usage_count(usage, "prompt_tokens");
  pout = llmux_inbound_usage_count(usage, "completion_tokens");
  model = str_at(in, "model");
  message_id(id, sizeof id, str_at(in, "id"), ctx->request_id);
  o = json_pack("{s:s,s:s,s:s,s:s,s:o,s:s,s:n,s:{s:I,s:I}}", "id", id, "type", "message", "role",
                "assistant", "model", model && *model ? model : st->model, "content", content,
                "stop_reason", stop_reason(str_at(ch, "finish_reason")), "stop_sequence",
                "usage", "input_tokens", (json_int_t)(pin >= 0 ? pin : (int64_t)ctx->prompt_tokens),
                "output_tokens", (json_int_t)(pout >= 0 ? pout : 0));
  text = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
  rc = text != NULL && llmux_buf_appends(out, text) == 0 ? 0 : LLMUX_ENOMEM;
done:
  free(text);
  json_decref(o);
  json_decref(in);
  return rc;
}

/* ==== answers: streams ==================================================== */

static int ev_begin(llmux_buf_t *o, const char *name) {
  int rc = llmux_buf_appends(o, "event: ");
  rc |= llmux_buf_appends(o, name);
  rc |= llmux_buf_appends(o, "\ndata: {\"type\":\"");
  rc |= llmux_buf_appends(o, name);
  rc |= llmux_buf_appends(o, "\"");
  return rc;
}

static int ev_end(llmux_buf_t *o) {
  return llmux_buf_appends(o, "}\n\n");
}

static int json_field(llmux_buf_t *o, const char *key, const char *s, size_t n) {
  int rc = llmux_buf_printf(o, ",\"%s\":", key);
  return rc | llmux_buf_append_json_str(o, s, n);
}

static int message_start(anth_state_t *st, const llmux_inbound_ctx_t *ctx, const char *chat_id,
                         const char *model, llmux_buf_t *o) {
  char id[200];
  int rc;
  message_id(id, sizeof id, chat_id, ctx->request_id);
  if (model == NULL || *model == '\0') model = st->model;
  st->started = 1;
  rc = ev_begin(o, "message_start");
  rc |= llmux_buf_appends(o, ",\"message\":{\"id\":");
  rc |= llmux_buf_append_json_str(o, id, strlen(id));
  rc |= llmux_buf_appends(o, ",\"type\":\"message\",\"role\":\"assistant\"");
  rc |= json_field(o, "model", model, strlen(model));
  rc |= llmux_buf_printf(o, ",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,"
                            "\"usage\":{\"input_tokens\":%llu,\"output_tokens\":0}}",
                         (unsigned long long)ctx->prompt_tokens);
  return rc | ev_end(o);
}

static int block_stop(anth_state_t *st, llmux_buf_t *o) {
  int rc;
  if (st->kind == BLOCK_NONE) return 0;
  rc = ev_begin(o, "content_block_stop");
  rc |= llmux_buf_printf(o, ",\"index\":%d", st->block);
  st->kind = BLOCK_NONE;
  return rc | ev_end(o);
}

/* Opens block number st->nblocks of `kind`: text, or a tool_use with its
 * id and name; a ping follows the first, as in Anthropic's streams. */
static int block_start(anth_state_t *st, int kind, const char *id, const char *name,
                       llmux_buf_t *o) {
  int rc = block_stop(st, o);
  st->block = st->nblocks++;
  st->kind = kind;
  rc |= ev_begin(o, "content_block_start");
  rc |= llmux_buf_printf(o, ",\"index\":%d,\"content_block\":{\"type\":", st->block);
  if (kind == BLOCK_TEXT) {
    rc |= llmux_buf_appends(o, "\"text\",\"text\":\"\"}");
  } else {
    rc |= llmux_buf_appends(o, "\"tool_use\"");
    rc |= json_field(o, "id", id, strlen(id));
    rc |= json_field(o, "name", name, strlen(name));
    rc |= llmux_buf_appends(o, ",\"input\":{}}");
  }
  rc |= ev_end(o);
  if (!st->pinged) {
    st->pinged = 1;
    rc |= ev_begin(o, "ping") | ev_end(o);
  }
  return rc;
}

static int block_delta(int index, const char *dtype, const char *field, json_t *s,
                       llmux_buf_t *o) {
  int rc = ev_begin(o, "content_block_delta");
  rc |= llmux_buf_printf(o, ",\"index\":%d,\"delta\":{\"type\":\"%s\"", index, dtype);
  rc |= json_field(o, field, json_string_value(s), json_string_length(s));
  return rc | llmux_buf_appends(o, "}") | ev_end(o);
}

static int text_delta(anth_state_t *st, json_t *s, llmux_buf_t *o) {
  int rc = 0;
  if (!json_is_string(s) || json_string_length(s) == 0) return 0;
  if (st->kind != BLOCK_TEXT) rc = block_start(st, BLOCK_TEXT, NULL, NULL, o);
  return rc | block_delta(st->block, "text_delta", "text", s, o);
}

/* One entry of a chunk's delta.tool_calls: a call's head (id, name) opens
 * its tool_use block; argument pieces go to that block, even when another
 * block opened since (OpenAI never interleaves calls; a provider that does
 * still has every piece delivered to the right index). */
static int tool_delta(anth_state_t *st, const llmux_inbound_ctx_t *ctx, json_t *tc, size_t pos,
                      llmux_buf_t *o) {
  json_t *fn = json_object_get(tc, "function"), *args = json_object_get(fn, "arguments");
  json_t *jidx = json_object_get(tc, "index");
  json_int_t idx = json_is_integer(jidx) ? json_integer_value(jidx) : (json_int_t)pos;
  int rc = 0;
  if (idx < 0 || idx >= MAX_STREAM_TOOLS) return 0;
  if (st->tool_block[idx] < 0) {
    char id[160];
    const char *name = str_at(fn, "name");
    if (str_at(tc, "id") != NULL) snprintf(id, sizeof id, "%s", str_at(tc, "id"));
    else snprintf(id, sizeof id, "toolu_%s_%d", ctx->request_id ? ctx->request_id : "", (int)idx);
    rc = block_start(st, BLOCK_TOOL, id, name ? name : "", o);
    st->tool_block[idx] = st->block;
  }
  if (json_is_string(args) && json_string_length(args) > 0)
    rc |= block_delta(st->tool_block[idx], "input_json_delta", "partial_json", args, o);
  return rc;
}

/* A chat error event as Anthropic's, the last event of the stream. */
static int stream_error_event(anth_state_t *st, const char *atype, const char *msg, size_t n,
                              llmux_buf_t *o) {
  int rc = llmux_buf_appends(o, "event: error\ndata: ");
  st->done = 1;
  rc |= error_json(o, atype, msg, n, NULL);
  return rc | llmux_buf_appends(o, "\n\n");
}

static int chunk(anth_state_t *st, const llmux_inbound_ctx_t *ctx, json_t *ev, llmux_buf_t *o) {
  json_t *err = json_object_get(ev, "error"), *ch, *delta, *u, *calls, *tc;
  const char *s;
  size_t i;
  int rc = 0;
  if (json_is_object(err)) {
    json_t *m = json_object_get(err, "message");
    const char *atype = llmux_inbound_anthropic_error_type(0, str_at(err, "type"),
                                                          str_at(err, "code"));
    return stream_error_event(st, atype, json_is_string(m) ? json_string_value(m)
                                                                : "The provider failed.",
                                   json_is_string(m) ? json_string_length(m) : 20, o);
  }
  if (!st->started) rc |= message_start(st, ctx, str_at(ev, "id"), str_at(ev, "model"), o);
  if (json_is_object(u = json_object_get(ev, "usage"))) {
    st->in_tokens = llmux_inbound_usage_count(u, "prompt_tokens");
    st->out_tokens = llmux_inbound_usage_count(u, "completion_tokens");
  }
  ch = json_array_get(json_object_get(ev, "choices"), 0);
  delta = json_object_get(ch, "delta");
  rc |= text_delta(st, json_object_get(delta, "content"), o);
  calls = json_object_get(delta, "tool_calls");
  json_array_foreach(calls, i, tc) rc |= tool_delta(st, ctx, tc, i, o);
  if ((s = str_at(ch, "finish_reason")) != NULL) snprintf(st->finish, sizeof st->finish, "%s", s);
  return rc ? LLMUX_ENOMEM : 0;
}

static int chunk_cb(void *st, const llmux_inbound_ctx_t *ctx, json_t *ev, llmux_buf_t *o) {
  return chunk(st, ctx, ev, o);
}

static int feed(anth_state_t *st, const llmux_inbound_ctx_t *ctx, const char *data, size_t len,
                int eof, llmux_buf_t *o) {
  if (st->sse == NULL) {
    size_t i;
    for (i = 0; i < MAX_STREAM_TOOLS; i++) st->tool_block[i] = -1;
    st->in_tokens = st->out_tokens = -1;
  }
  return llmux_inbound_read_chat(&st->sse, &st->done, chunk_cb, st, ctx, data, len, eof, o);
}

static int anth_stream_feed(void *state, const llmux_inbound_ctx_t *ctx, const char *data,
                            size_t len, llmux_buf_t *out) {
  return feed(state, ctx, data, len, 0, out);
}

static int anth_stream_end(void *state, const llmux_inbound_ctx_t *ctx, llmux_buf_t *o) {
  anth_state_t *st = state;
  int rc = feed(st, ctx, NULL, 0, 1, o);
  if (rc != 0 || st->done) return rc;
  if (!st->started) rc |= message_start(st, ctx, NULL, NULL, o);
  rc |= block_stop(st, o);
  rc |= ev_begin(o, "message_delta");
  rc |= llmux_buf_printf(o, ",\"delta\":{\"stop_reason\":\"%s\",\"stop_sequence\":null},"
                            "\"usage\":{",
                         stop_reason(st->finish[0] ? st->finish : NULL));
  if (st->in_tokens >= 0)
    rc |= llmux_buf_printf(o, "\"input_tokens\":%lld,", (long long)st->in_tokens);
  rc |= llmux_buf_printf(o, "\"output_tokens\":%lld}",
                         (long long)(st->out_tokens >= 0 ? st->out_tokens : 0));
  rc |= ev_end(o);
  rc |= ev_begin(o, "message_stop") | ev_end(o);
  st->done = 1;
  return rc ? LLMUX_ENOMEM : 0;
}

static int anth_stream_error(void *state, const char *type, const char *code, const char *msg,
                             llmux_buf_t *out) {
  anth_state_t *st = state;
  if (st->done) return 0;
  return stream_error_event(st, llmux_inbound_anthropic_error_type(0, type, code), msg,
                            strlen(msg), out) ? LLMUX_ENOMEM : 0;
}

static void anth_state_free(void *state) {
  anth_state_t *st = state;
  if (st == NULL) return;
  llmux_split_free(st->sse);
  free(st);
}

/* ---- native passthrough: usage of Anthropic's own answer ----------------- */

json_t *llmux_inbound_load_chat(const char *s, size_t n) {
  json_t *v = json_loadb(s, n, JSON_ALLOW_NUL, NULL);
  return v ? v : json_loadb(s, n, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, NULL);
}

int64_t llmux_inbound_usage_count(const json_t *usage, const char *key) {
  json_t *v = json_object_get(usage, key);
  double d;
  if (json_is_integer(v))
    return json_integer_value(v) >= 0 && json_integer_value(v) <= LLMUX_INBOUND_USAGE_MAX
               ? (int64_t)json_integer_value(v) : -1;
  if (!json_is_real(v)) return -1;
  d = json_real_value(v);
  return d >= 0 && d <= LLMUX_INBOUND_USAGE_MAX && d == (double)(int64_t)d ? (int64_t)d : -1;
}

int llmux_inbound_read_chat(llmux_split_t **sse, const int *done, llmux_inbound_chunk_fn on_chunk,
                            void *st, const llmux_inbound_ctx_t *ctx, const char *data,
                            size_t len, int eof, llmux_buf_t *o) {
  llmux_str_t item;
  int rc = 0, more;
  if (*sse == NULL && (*sse = llmux_split_new(LLMUX_SPLIT_SSE, 0)) == NULL) return LLMUX_ENOMEM;
  while (rc == 0 && (more = llmux_split_next(*sse, &data, &len, eof, &item)) != 0) {
    json_t *ev;
    if (more < 0) return more == LLMUX_ENOMEM ? more : 0; /* an event beyond 16 MiB: dropped */
    if (*done || (item.len == 6 && memcmp(item.base, "[DONE]", 6) == 0)) continue;
    ev = llmux_inbound_load_chat(item.base, item.len);
    /* Not ours to judge: the plugin vouched for its stream. */
    rc = json_is_object(ev) ? on_chunk(st, ctx, ev, o) : 0;
    json_decref(ev);
  }
  return rc;
}

int64_t llmux_inbound_count(const char *num, size_t len) {
  int64_t x = 0;
  size_t i;
  for (i = 0; i < len; i++) {
    if (num[i] < '0' || num[i] > '9' || x > LLMUX_INBOUND_USAGE_MAX) return -1;
    x = x * 10 + (num[i] - '0');
  }
  return len > 0 && x <= LLMUX_INBOUND_USAGE_MAX ? x : -1;
}

static int64_t count_of(const llmux_json_field_t *f) {
  return f->type == LLMUX_JSON_NUMBER ? llmux_inbound_count(f->value.base, f->value.len) : -1;
}

static int has_value(const llmux_json_field_t *f) {
  return f->type != LLMUX_JSON_NONE && f->type != LLMUX_JSON_NULL;
}

/* A Message's usage (the plain answer, or message_start's "message"), or
 * message_delta's. Input counts cache reads and writes too, as the plugin
 * reports it (OpenAI's prompt_tokens includes them). */
static void anth_native_usage(const char *json, size_t len, int64_t *in, int64_t *out) {
  llmux_json_field_t top[] = {{"usage"}, {"message"}};
  llmux_json_field_t msg[] = {{"usage"}};
  llmux_json_field_t u[] = {{"input_tokens"}, {"cache_read_input_tokens"},
                            {"cache_creation_input_tokens"}, {"output_tokens"}};
  llmux_str_t usage;
  int64_t n, k;
  int i;
  if (memmem(json, len, "\"usage\"", 7) == NULL ||
      llmux_json_scan(json, len, top, 2, NULL, NULL) != 0)
    return;
  usage = top[0].value;
  if (top[0].type != LLMUX_JSON_OBJECT) {
    if (top[1].type != LLMUX_JSON_OBJECT ||
        llmux_json_scan(top[1].value.base, top[1].value.len, msg, 1, NULL, NULL) != 0 ||
        msg[0].type != LLMUX_JSON_OBJECT)
      return;
    usage = msg[0].value;
  }
  if (llmux_json_scan(usage.base, usage.len, u, 4, NULL, NULL) != 0) return;
  if (has_value(&u[0])) {
    n = count_of(&u[0]);
    for (i = 1; i <= 2 && n >= 0; i++)
      if (has_value(&u[i])) n = (k = count_of(&u[i])) < 0 ? -1 : n + k;
    *in = n > LLMUX_INBOUND_USAGE_MAX ? -1 : n;
  }
  if (has_value(&u[3])) *out = count_of(&u[3]);
}

const llmux_inbound_t llmux_inbound_anthropic = {
    "anthropic",       "request-id",      anth_request,      anth_answer,
    anth_stream_feed,  anth_stream_end,   anth_stream_error, anth_error_body,
    anth_state_free,   NULL,
    LLMUX_ENDPOINT_MESSAGES, LLMUX_FEATURE_MESSAGES, anth_native_usage,
};
