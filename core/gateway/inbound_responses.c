#define _GNU_SOURCE
/* OpenAI's Responses API in front of the chat path (inbound.h, issue 15).
 *
 * Request: the body is checked as OpenAI checks it (a 400 names the param)
 * and rewritten as a chat body: instructions -> a system message first;
 * input as a string -> a user message; input items: messages (roles user,
 * system, developer -> system, assistant) with input_text / input_image /
 * output_text / refusal parts, function_call items -> an assistant's
 * tool_calls (joined to the assistant message before them), and
 * function_call_output items -> tool messages; function tools -> chat
 * tools; tool_choice, parallel_tool_calls, temperature, top_p, user as they
 * are; max_output_tokens -> max_tokens; text.format json_object /
 * json_schema -> response_format; stream -> stream with
 * stream_options.include_usage. previous_response_id puts the stored
 * conversation (its input and output items) before the input; instructions
 * are not carried over, as with OpenAI. Dropped: reasoning items, include,
 * reasoning, truncation, service_tier, prompt_cache_key. Refused (400):
 * built-in tools (web_search, file_search ...), input_file parts, image
 * file ids, item references.
 *
 * Answer: a chat.completion becomes a `response` object (message items
 * with output_text, function_call items, status completed or incomplete
 * with incomplete_details.reason max_output_tokens / content_filter, usage
 * with details), the request's settings echoed as OpenAI does, and
 * output_text (the SDKs' convenience, also written for plain HTTP
 * clients). A chat stream becomes the documented events, each with
 * sequence_number: response.created, response.in_progress, per message
 * output_item.added / content_part.added / output_text.delta* /
 * output_text.done / content_part.done / output_item.done, per tool call
 * output_item.added / function_call_arguments.delta* / .done /
 * output_item.done, then response.completed (or response.incomplete). A
 * chat error event becomes `error`, then response.failed, and nothing
 * follows.
 *
 * A finished response (completed or incomplete) is handed to the
 * argument's save() unless the request said store: false. */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/json_scan.h"
#include "base/split.h"
#include "base/util.h"
#include "gateway/inbound.h"
#include "http/http_server.h"

#define MAX_TOKENS_LIMIT 1000000000
/* Output items of one streamed answer; tool calls beyond are dropped. */
#define MAX_ITEMS 130
#define MAX_STREAM_TOOLS 128

enum { ITEM_TEXT = 1, ITEM_TOOL };

typedef struct item_s {
  int kind;
  int closed;
  char id[112];             /* "fc_" or "msg_", the response id's base (80), "_", a number */
  json_t *call_id, *name;  /* ITEM_TOOL */
  llmux_buf_t buf;         /* the text, or the arguments, so far */
} item_t;

typedef struct resp_state_s {
  llmux_inbound_responses_arg_t *arg; /* owned; NULL allowed */
  json_t *echo;            /* the request's settings, as the response shows them */
  json_t *input;           /* input items, previous ones first: what is stored */
  int store;
  int64_t created_at;
  char id[96];
  /* streams */
  llmux_split_t *sse;
  int started, done;
  uint64_t seq;
  item_t items[MAX_ITEMS];
  int nitems, open;        /* open: the item receiving deltas, -1 none */
  int tool_item[MAX_STREAM_TOOLS];
  char finish[32];
  int64_t in_tokens, out_tokens, cached_tokens, reasoning_tokens;
} resp_state_t;

/* ==== errors ============================================================== */

static const char *type_for(int status, const char *type) {
  switch (status) {
    case 400:
    case 404:
    case 405:
    case 413:
    case 422: return "invalid_request_error";
    case 401: return "invalid_request_error";
    case 403: return "permission_error";
    case 429: return type && strcmp(type, "insufficient_quota") == 0 ? type : "rate_limit_error";
    default: break;
  }
  if (status >= 500) return type && *type ? type : "server_error";
  return type && *type ? type : "invalid_request_error";
}

static const char *param_for(const char *code) {
  if (code == NULL) return NULL;
  if (strcmp(code, LLMUX_RESPONSES_PREV_NOT_FOUND) == 0) return "previous_response_id";
  if (strcmp(code, "model_not_found") == 0) return "model";
  return NULL;
}

static int resp_error_body(llmux_buf_t *out, int status, const char *type, const char *code,
                           const char *msg, const char *request_id) {
  (void)request_id;
  return llmux_http_error_json(out, type_for(status, type), code, msg, param_for(code));
}

/* ==== request: Responses -> chat ========================================== */

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

static int is(const char *s, const char *lit) {
  return s != NULL && strcmp(s, lit) == 0;
}

static int number_in(const json_t *v, double lo, double hi) {
  double d;
  if (!json_is_number(v)) return 0;
  d = json_number_value(v);
  return d >= lo && d <= hi;
}

/* A content part of a message input item, as a chat part (text parts as
 * {"type":"text"}), or NULL with err set. */
static json_t *chat_part(const json_t *part, llmux_inbound_err_t *err, size_t i, size_t j) {
  const char *t = str_at(part, "type");
  if (is(t, "input_text") || is(t, "output_text") || is(t, "text")) {
    if (str_at(part, "text") == NULL)
      return bad(err, "Missing required parameter: 'input[%zu].content[%zu].text'.", i, j), NULL;
    return json_pack("{s:s,s:O}", "type", "text", "text", json_object_get(part, "text"));
  }
  if (is(t, "refusal") && str_at(part, "refusal") != NULL)
    return json_pack("{s:s,s:O}", "type", "text", "text", json_object_get(part, "refusal"));
  if (is(t, "input_image")) {
    json_t *img;
    if (str_at(part, "image_url") == NULL) {
      bad(err, "input[%zu].content[%zu]: only images given by image_url can be translated for "
          "this model's provider (file_id cannot).", i, j);
      return NULL;
    }
    img = json_pack("{s:O}", "url", json_object_get(part, "image_url"));
    if (img && str_at(part, "detail") != NULL)
      json_object_set(img, "detail", json_object_get(part, "detail"));
    return json_pack("{s:s,s:o}", "type", "image_url", "image_url", img);
  }
  bad(err, "input[%zu].content[%zu]: content of type '%.40s' cannot be translated for this "
      "model's provider.", i, j, t ? t : "(none)");
  return NULL;
}

/* Chat content from parts: text alone joined as a string. */
static json_t *parts_content(json_t *parts) {
  size_t i;
  json_t *p;
  llmux_buf_t text = {0};
  json_t *out;
  json_array_foreach(parts, i, p) {
    if (!is(str_at(p, "type"), "text")) return json_incref(parts);
  }
  json_array_foreach(parts, i, p) {
    json_t *t = json_object_get(p, "text");
    if (llmux_buf_append(&text, json_string_value(t), json_string_length(t))) {
      llmux_buf_free(&text);
      return NULL;
    }
  }
  out = json_stringn(text.base ? text.base : "", text.len);
  llmux_buf_free(&text);
  return out;
}

static int message_item(const json_t *it, json_t *msgs, llmux_inbound_err_t *err, size_t i) {
  const char *role = str_at(it, "role");
  json_t *content = json_object_get(it, "content"), *parts, *p, *c;
  size_t j;
  if (!is(role, "user") && !is(role, "assistant") && !is(role, "system") &&
      !is(role, "developer"))
    return bad(err, "Invalid value for 'input[%zu].role': expected one of 'user', "
               "'assistant', 'system' or 'developer'.", i);
  if (is(role, "developer")) role = "system";
  if (json_is_string(content))
    return json_array_append_new(msgs, json_pack("{s:s,s:O}", "role", role, "content", content))
               ? LLMUX_ENOMEM : 0;
  if (!json_is_array(content))
    return bad(err, "Invalid type for 'input[%zu].content': expected a string or an array.", i);
  parts = json_array();
  json_array_foreach(content, j, p) {
    if ((c = chat_part(p, err, i, j)) == NULL) {
      json_decref(parts);
      return err->status ? LLMUX_EINVAL : LLMUX_ENOMEM;
    }
    json_array_append_new(parts, c);
  }
  c = strcmp(role, "user") == 0 ? parts_content(parts) : NULL;
  if (c == NULL) { /* assistant and system turns take text only */
    size_t k;
    json_array_foreach(parts, k, p) {
      if (!is(str_at(p, "type"), "text")) {
        json_decref(parts);
        return bad(err, "input[%zu].content: a %s message can only hold text.", i, role);
      }
    }
    c = parts_content(parts);
  }
  json_decref(parts);
  if (c == NULL) return LLMUX_ENOMEM;
  return json_array_append_new(msgs, json_pack("{s:s,s:o}", "role", role, "content", c))
             ? LLMUX_ENOMEM : 0;
}

/* A function_call item joins the assistant message just before it (the
 * answer it was part of), else opens one. */
static int function_call_item(const json_t *it, json_t *msgs, llmux_inbound_err_t *err,
                              size_t i) {
  json_t *last = json_array_get(msgs, json_array_size(msgs) - 1), *calls, *call;
  if (str_at(it, "call_id") == NULL || str_at(it, "name") == NULL ||
      str_at(it, "arguments") == NULL)
    return bad(err, "input[%zu]: a function_call item needs call_id, name and arguments.", i);
  call = json_pack("{s:O,s:s,s:{s:O,s:O}}", "id", json_object_get(it, "call_id"), "type",
                   "function", "function", "name", json_object_get(it, "name"), "arguments",
                   json_object_get(it, "arguments"));
  if (call == NULL) return LLMUX_ENOMEM;
  if (!is(str_at(last, "role"), "assistant")) {
    last = json_pack("{s:s,s:n}", "role", "assistant", "content");
    if (last == NULL || json_array_append_new(msgs, last)) {
      json_decref(call);
      return LLMUX_ENOMEM;
    }
  }
  if ((calls = json_object_get(last, "tool_calls")) == NULL) {
    json_object_set_new(last, "tool_calls", calls = json_array());
    if (json_is_string(json_object_get(last, "content")) &&
        json_string_length(json_object_get(last, "content")) == 0)
      json_object_set_new(last, "content", json_null());
  }
  return json_array_append_new(calls, call) ? LLMUX_ENOMEM : 0;
}

static int function_output_item(const json_t *it, json_t *msgs, llmux_inbound_err_t *err,
                                size_t i) {
  json_t *out = json_object_get(it, "output"), *c;
  if (str_at(it, "call_id") == NULL)
    return bad(err, "Missing required parameter: 'input[%zu].call_id'.", i);
  if (json_is_string(out)) {
    c = json_incref(out);
  } else if (json_is_array(out)) {
    json_t *parts = json_array(), *p, *x;
    size_t j;
    json_array_foreach(out, j, p) {
      if ((x = chat_part(p, err, i, j)) == NULL || !is(str_at(x, "type"), "text")) {
        json_decref(x);
        json_decref(parts);
        if (err->status == 0)
          bad(err, "input[%zu].output: only text can be translated in a function_call_output.",
              i);
        return LLMUX_EINVAL;
      }
      json_array_append_new(parts, x);
    }
    c = parts_content(parts);
    json_decref(parts);
  } else {
    return bad(err, "Invalid type for 'input[%zu].output': expected a string or an array.", i);
  }
  return json_array_append_new(msgs, json_pack("{s:s,s:O,s:o}", "role", "tool", "tool_call_id",
                                               json_object_get(it, "call_id"), "content", c))
             ? LLMUX_ENOMEM : 0;
}

static int one_item(const json_t *it, json_t *msgs, llmux_inbound_err_t *err, size_t i) {
  const char *t = str_at(it, "type");
  if (!json_is_object(it))
    return bad(err, "Invalid type for 'input[%zu]': expected an object.", i);
  if (t == NULL || is(t, "message")) return message_item(it, msgs, err, i);
  if (is(t, "function_call")) return function_call_item(it, msgs, err, i);
  if (is(t, "function_call_output")) return function_output_item(it, msgs, err, i);
  if (is(t, "reasoning")) return 0; /* the provider's own: chat has no place for it */
  return bad(err, "input[%zu]: items of type '%.40s' cannot be translated for this model's "
             "provider.", i, t);
}

/* An output item of a stored response as an input item to replay: the
 * same object, minus what only an output has (status). */
static json_t *as_input(json_t *item) {
  json_t *c = json_deep_copy(item);
  json_object_del(c, "status");
  return c;
}

/* The input items, previous ones first, into st->input. */
static int collect_input(resp_state_t *st, const json_t *in, llmux_inbound_err_t *err) {
  json_t *input = json_object_get(in, "input"), *prev = json_object_get(in, "previous_response_id");
  size_t i;
  json_t *it;
  st->input = json_array();
  if (prev != NULL && !json_is_null(prev)) {
    json_t *rec, *out;
    if (!json_is_string(prev))
      return bad(err, "Invalid type for 'previous_response_id': expected a string.");
    if (st->arg == NULL || st->arg->prior == NULL) {
      err->status = 400;
      snprintf(err->message, sizeof err->message, "Previous response with id '%.100s' not found.",
               json_string_value(prev));
      return LLMUX_EINVAL;
    }
    rec = json_loadb(st->arg->prior, st->arg->prior_len, 0, NULL);
    json_array_extend(st->input, json_object_get(rec, "input"));
    out = json_object_get(json_object_get(rec, "response"), "output");
    json_array_foreach(out, i, it) json_array_append_new(st->input, as_input(it));
    json_decref(rec);
  }
  if (json_is_string(input)) {
    json_array_append_new(st->input, json_pack("{s:s,s:O}", "role", "user", "content", input));
  } else if (json_is_array(input)) {
    json_array_extend(st->input, input);
  } else if (input != NULL && !json_is_null(input)) {
    return bad(err, "Invalid type for 'input': expected a string or an array of items.");
  }
  if (json_array_size(st->input) == 0)
    return bad(err, "Missing required parameter: 'input'.");
  return 0;
}

static int add_messages(resp_state_t *st, const json_t *in, json_t *out,
                        llmux_inbound_err_t *err) {
  json_t *msgs = json_array(), *ins = json_object_get(in, "instructions"), *it;
  size_t i;
  int rc = 0;
  json_object_set_new(out, "messages", msgs);
  if (ins != NULL && !json_is_null(ins) && !json_is_string(ins))
    return bad(err, "Invalid type for 'instructions': expected a string.");
  if (json_is_string(ins) && json_string_length(ins) > 0)
    json_array_append_new(msgs, json_pack("{s:s,s:O}", "role", "system", "content", ins));
  if ((rc = collect_input(st, in, err)) != 0) return rc;
  json_array_foreach(st->input, i, it) {
    if ((rc = one_item(it, msgs, err, i)) != 0) return rc;
  }
  return 0;
}

static int add_tools(const json_t *in, json_t *out, llmux_inbound_err_t *err) {
  json_t *tools = json_object_get(in, "tools"), *tc = json_object_get(in, "tool_choice"), *t;
  json_t *ctools;
  size_t i;
  if (tools != NULL && !json_is_null(tools)) {
    if (!json_is_array(tools))
      return bad(err, "Invalid type for 'tools': expected an array.");
    ctools = json_array();
    json_object_set_new(out, "tools", ctools);
    json_array_foreach(tools, i, t) {
      json_t *fn;
      if (!is(str_at(t, "type"), "function"))
        return bad(err, "tools[%zu]: tools of type '%.40s' cannot be translated for this "
                   "model's provider; only function tools can.", i,
                   str_at(t, "type") ? str_at(t, "type") : "(none)");
      if (str_at(t, "name") == NULL)
        return bad(err, "Missing required parameter: 'tools[%zu].name'.", i);
      fn = json_pack("{s:O}", "name", json_object_get(t, "name"));
      if (json_object_get(t, "description") && !json_is_null(json_object_get(t, "description")))
        json_object_set(fn, "description", json_object_get(t, "description"));
      json_object_set_new(fn, "parameters",
                          json_is_object(json_object_get(t, "parameters"))
                              ? json_incref(json_object_get(t, "parameters"))
                              : json_pack("{s:s,s:{}}", "type", "object", "properties"));
      if (json_is_boolean(json_object_get(t, "strict")))
        json_object_set(fn, "strict", json_object_get(t, "strict"));
      json_array_append_new(ctools, json_pack("{s:s,s:o}", "type", "function", "function", fn));
    }
  }
  if (tc == NULL || json_is_null(tc)) return 0;
  if (json_is_string(tc)) {
    if (!is(json_string_value(tc), "auto") && !is(json_string_value(tc), "none") &&
        !is(json_string_value(tc), "required"))
      return bad(err, "Invalid value for 'tool_choice': expected 'auto', 'none', 'required' "
                 "or a function.");
    json_object_set(out, "tool_choice", tc);
    return 0;
  }
  if (is(str_at(tc, "type"), "function") && str_at(tc, "name") != NULL) {
    json_object_set_new(out, "tool_choice",
                        json_pack("{s:s,s:{s:O}}", "type", "function", "function", "name",
                                  json_object_get(tc, "name")));
    return 0;
  }
  return bad(err, "tool_choice of type '%.40s' cannot be translated for this model's provider.",
             str_at(tc, "type") ? str_at(tc, "type") : "(none)");
}

static int add_format(const json_t *in, json_t *out, llmux_inbound_err_t *err) {
  json_t *text = json_object_get(in, "text"), *f = json_object_get(text, "format"), *js;
  const char *t = str_at(f, "type");
  if (f == NULL || json_is_null(f) || is(t, "text")) return 0;
  if (is(t, "json_object")) {
    json_object_set_new(out, "response_format", json_pack("{s:s}", "type", "json_object"));
    return 0;
  }
  if (!is(t, "json_schema"))
    return bad(err, "Invalid value for 'text.format.type': expected 'text', 'json_object' or "
               "'json_schema'.");
  if (str_at(f, "name") == NULL || !json_is_object(json_object_get(f, "schema")))
    return bad(err, "text.format: a json_schema format needs a name and a schema.");
  js = json_pack("{s:O,s:O}", "name", json_object_get(f, "name"), "schema",
                 json_object_get(f, "schema"));
  if (json_is_boolean(json_object_get(f, "strict")))
    json_object_set(js, "strict", json_object_get(f, "strict"));
  if (json_is_string(json_object_get(f, "description")))
    json_object_set(js, "description", json_object_get(f, "description"));
  json_object_set_new(out, "response_format",
                      json_pack("{s:s,s:o}", "type", "json_schema", "json_schema", js));
  return 0;
}

/* Sampling and limits, checked, into chat. */
static int add_options(const json_t *in, json_t *out, llmux_inbound_err_t *err) {
  json_t *v;
  if ((v = json_object_get(in, "temperature")) != NULL && !json_is_null(v)) {
    if (!number_in(v, 0, 2)) return bad(err, "Invalid 'temperature': expected a number of 0 to 2.");
    json_object_set(out, "temperature", v);
  }
  if ((v = json_object_get(in, "top_p")) != NULL && !json_is_null(v)) {
    if (!number_in(v, 0, 1)) return bad(err, "Invalid 'top_p': expected a number of 0 to 1.");
    json_object_set(out, "top_p", v);
  }
  if ((v = json_object_get(in, "max_output_tokens")) != NULL && !json_is_null(v)) {
    if (!json_is_integer(v) || json_integer_value(v) < 16 ||
        json_integer_value(v) > MAX_TOKENS_LIMIT)
      return bad(err, "Invalid 'max_output_tokens': integer below minimum value. Expected a "
                 "value >= 16.");
    json_object_set(out, "max_tokens", v);
  }
  if ((v = json_object_get(in, "parallel_tool_calls")) != NULL && !json_is_null(v)) {
    if (!json_is_boolean(v)) return bad(err, "Invalid type for 'parallel_tool_calls'.");
    if (json_object_get(out, "tools") != NULL) json_object_set(out, "parallel_tool_calls", v);
  }
  if (json_is_string(v = json_object_get(in, "user"))) json_object_set(out, "user", v);
  if ((v = json_object_get(in, "metadata")) != NULL && !json_is_null(v)) {
    const char *k;
    json_t *x;
    if (!json_is_object(v) || json_object_size(v) > 16)
      return bad(err, "Invalid 'metadata': expected an object of at most 16 string values.");
    json_object_foreach(v, k, x) {
      if (!json_is_string(x) || strlen(k) > 64 || json_string_length(x) > 512)
        return bad(err, "Invalid 'metadata.%.64s': keys are at most 64 characters, values "
                   "strings of at most 512.", k);
    }
  }
  if ((v = json_object_get(in, "stream")) != NULL && !json_is_null(v)) {
    if (!json_is_boolean(v)) return bad(err, "Invalid type for 'stream': expected a boolean.");
    if (json_is_true(v)) {
      json_object_set_new(out, "stream", json_true());
      json_object_set_new(out, "stream_options", json_pack("{s:b}", "include_usage", 1));
    }
  }
  if ((v = json_object_get(in, "store")) != NULL && !json_is_null(v) && !json_is_boolean(v))
    return bad(err, "Invalid type for 'store': expected a boolean.");
  return 0;
}

/* What the response object repeats of the request, in OpenAI's order. */
static json_t *echo_of(const json_t *in) {
  json_t *e = json_object(), *v;
#define OR(key, dflt) \
  ((v = json_object_get(in, key)) != NULL && !json_is_null(v) ? json_incref(v) : (dflt))
  json_object_set_new(e, "instructions", OR("instructions", json_null()));
  json_object_set_new(e, "max_output_tokens", OR("max_output_tokens", json_null()));
  json_object_set_new(e, "model", OR("model", json_null()));
  json_object_set_new(e, "parallel_tool_calls", OR("parallel_tool_calls", json_true()));
  json_object_set_new(e, "previous_response_id", OR("previous_response_id", json_null()));
  json_object_set_new(e, "reasoning", json_pack("{s:n,s:n}", "effort", "summary"));
  json_object_set_new(e, "store", OR("store", json_true()));
  json_object_set_new(e, "temperature", OR("temperature", json_real(1.0)));
  json_object_set_new(e, "text", json_is_object(json_object_get(json_object_get(in, "text"),
                                                                "format"))
                                     ? json_pack("{s:O}", "format",
                                                 json_object_get(json_object_get(in, "text"),
                                                                 "format"))
                                     : json_pack("{s:{s:s}}", "format", "type", "text"));
  json_object_set_new(e, "tool_choice", OR("tool_choice", json_string("auto")));
  json_object_set_new(e, "tools", OR("tools", json_array()));
  json_object_set_new(e, "top_p", OR("top_p", json_real(1.0)));
  json_object_set_new(e, "truncation", json_string("disabled"));
  json_object_set_new(e, "user", OR("user", json_null()));
  json_object_set_new(e, "metadata", OR("metadata", json_object()));
#undef OR
  return e;
}

static int add_head(resp_state_t *st, const json_t *in, json_t *out, llmux_inbound_err_t *err) {
  json_t *model = json_object_get(in, "model"), *store = json_object_get(in, "store");
  if (!json_is_string(model) || json_string_length(model) == 0)
    return bad(err, "Missing required parameter: 'model'.");
  json_object_set(out, "model", model);
  st->store = !json_is_false(store);
  return 0;
}

static int resp_request_arg(void *arg, const char *body, size_t len, unsigned flags,
                            llmux_buf_t *chat, void **state, llmux_inbound_err_t *err) {
  json_error_t je;
  json_t *in, *out = NULL;
  resp_state_t *st;
  char *text = NULL;
  int rc;
  (void)flags;
  err->status = 0;
  err->message[0] = '\0';
  *state = st = calloc(1, sizeof *st);
  if (st == NULL) {
    llmux_inbound_responses_arg_t *a = arg;
    if (a != NULL && a->release != NULL) a->release(a);
    return LLMUX_ENOMEM;
  }
  st->arg = arg;
  st->open = -1;
  in = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES, &je);
  if (in == NULL) return bad(err, "We could not parse the JSON body of your request: %s", je.text);
  if (!json_is_object(in)) {
    rc = bad(err, "The request body must be a JSON object.");
    goto done;
  }
  out = json_object();
  if ((rc = add_head(st, in, out, err)) != 0 || (rc = add_messages(st, in, out, err)) != 0 ||
      (rc = add_tools(in, out, err)) != 0 || (rc = add_format(in, out, err)) != 0 ||
      (rc = add_options(in, out, err)) != 0)
    goto done;
  if ((st->echo = echo_of(in)) == NULL) {
    rc = LLMUX_ENOMEM;
    goto done;
  }
  st->created_at = (int64_t)time(NULL);
  text = json_dumps(out, JSON_COMPACT | JSON_REAL_PRECISION(15));
  rc = text != NULL && llmux_buf_appends(chat, text) == 0 ? 0 : LLMUX_ENOMEM;
done:
  if (rc == LLMUX_EINVAL && err->status == 0) rc = LLMUX_ENOMEM;
  free(text);
  json_decref(out);
  json_decref(in);
  return rc;
}

static int resp_request(const char *body, size_t len, unsigned flags, llmux_buf_t *chat,
                        void **state, llmux_inbound_err_t *err) {
  return resp_request_arg(NULL, body, len, flags, chat, state, err);
}

/* ==== answers: shared ===================================================== */

/* The response's id, and the base of its items' ids. */
static void ensure_id(resp_state_t *st, const llmux_inbound_ctx_t *ctx) {
  const char *rid = ctx->request_id && *ctx->request_id ? ctx->request_id : "llmux";
  if (st->id[0]) return;
  if (st->arg != NULL && st->arg->id[0]) {
    snprintf(st->id, sizeof st->id, "%s", st->arg->id);
    return;
  }
  if (strncmp(rid, "req_", 4) == 0) rid += 4;
  snprintf(st->id, sizeof st->id, "resp_%.80s", rid);
}

/* "msg_<base>_<n>" / "fc_<base>_<n>": unique within the response and
 * across responses (the base is the response id's). */
static void item_id(char *out, size_t cap, const resp_state_t *st, const char *prefix, int n) {
  char base[81]; /* out may be an item's id inside st: copy the base apart first */
  snprintf(base, sizeof base, "%s", st->id + 5);
  snprintf(out, cap, "%s_%s_%d", prefix, base, n);
}

static void usage_from(resp_state_t *st, const json_t *u) {
  if (!json_is_object(u)) return;
  st->in_tokens = llmux_inbound_usage_count(u, "prompt_tokens");
  st->out_tokens = llmux_inbound_usage_count(u, "completion_tokens");
  st->cached_tokens = llmux_inbound_usage_count(json_object_get(u, "prompt_tokens_details"), "cached_tokens");
  st->reasoning_tokens =
      llmux_inbound_usage_count(json_object_get(u, "completion_tokens_details"), "reasoning_tokens");
}

static json_t *usage_json(const resp_state_t *st, const llmux_inbound_ctx_t *ctx) {
  int64_t in = st->in_tokens >= 0 ? st->in_tokens : (int64_t)ctx->prompt_tokens;
  int64_t out = st->out_tokens >= 0 ? st->out_tokens : 0;
  return json_pack("{s:I,s:{s:I},s:I,s:{s:I},s:I}", "input_tokens", (json_int_t)in,
                   "input_tokens_details", "cached_tokens",
                   (json_int_t)(st->cached_tokens > 0 ? st->cached_tokens : 0), "output_tokens",
                   (json_int_t)out, "output_tokens_details", "reasoning_tokens",
                   (json_int_t)(st->reasoning_tokens > 0 ? st->reasoning_tokens : 0),
                   "total_tokens", (json_int_t)(in + out));
}

/* completed, or incomplete with its reason, from chat's finish_reason. */
static const char *status_of(const char *finish, const char **reason) {
  *reason = NULL;
  if (is(finish, "length")) *reason = "max_output_tokens";
  else if (is(finish, "content_filter")) *reason = "content_filter";
  return *reason ? "incomplete" : "completed";
}

static json_t *output_text_of(const json_t *output) {
  llmux_buf_t b = {0};
  json_t *it, *c, *s;
  size_t i, j;
  json_array_foreach(output, i, it) {
    if (!is(str_at(it, "type"), "message")) continue;
    json_array_foreach(json_object_get(it, "content"), j, c) {
      if (!is(str_at(c, "type"), "output_text")) continue;
      llmux_buf_append(&b, json_string_value(json_object_get(c, "text")),
                       json_string_length(json_object_get(c, "text")));
    }
  }
  s = json_stringn(b.base ? b.base : "", b.len);
  llmux_buf_free(&b);
  return s;
}

/* The response object: `output` (NULL: empty) and usage (0: null). */
static json_t *response_object(const resp_state_t *st, const llmux_inbound_ctx_t *ctx,
                               const char *status, const char *reason, json_t *output,
                               int with_usage) {
  json_t *r = json_pack("{s:s,s:s,s:I,s:s}", "id", st->id, "object", "response", "created_at",
                        (json_int_t)st->created_at, "status", status);
  const char *k;
  json_t *v;
  if (r == NULL) return NULL;
  if (!is(status, "in_progress") && !is(status, "failed"))
    json_object_set_new(r, "completed_at", json_integer((json_int_t)time(NULL)));
  json_object_set_new(r, "error", json_null());
  json_object_set_new(r, "incomplete_details",
                      reason ? json_pack("{s:s}", "reason", reason) : json_null());
  json_object_foreach(st->echo, k, v) {
    json_object_set(r, k, v);
    if (strcmp(k, "model") == 0)
      json_object_set_new(r, "output", output ? json_incref(output) : json_array());
  }
  if (json_object_get(r, "output") == NULL)
    json_object_set_new(r, "output", output ? json_incref(output) : json_array());
  json_object_set_new(r, "output_text", output_text_of(json_object_get(r, "output")));
  json_object_set_new(r, "usage", with_usage ? usage_json(st, ctx) : json_null());
  return r;
}

/* Hands a finished response to the store, with its input. */
static void save(resp_state_t *st, json_t *response) {
  json_t *rec;
  char *text;
  if (!st->store || st->arg == NULL || st->arg->save == NULL) return;
  rec = json_pack("{s:O,s:O}", "response", response, "input", st->input);
  text = rec ? json_dumps(rec, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
  if (text != NULL) st->arg->save(st->arg, st->id, text, strlen(text));
  free(text);
  json_decref(rec);
}

/* ==== answers: plain ====================================================== */

/* An output_text part; steals text. */
static json_t *text_part(json_t *text) {
  return json_pack("{s:s,s:[],s:[],s:o}", "type", "output_text", "annotations", "logprobs",
                   "text", text);
}

static int plain_output(resp_state_t *st, const json_t *msg, const char *status,
                        json_t *output) {
  json_t *text = json_object_get(msg, "content"), *calls = json_object_get(msg, "tool_calls");
  json_t *refusal = json_object_get(msg, "refusal"), *content = json_array(), *c, *part;
  char id[160];
  size_t i;
  if (json_is_string(text) && json_string_length(text) > 0)
    json_array_append_new(content, text_part(json_incref(text)));
  json_array_foreach(text, i, part) {
    if (is(str_at(part, "type"), "text") && str_at(part, "text") != NULL)
      json_array_append_new(content, text_part(json_incref(json_object_get(part, "text"))));
  }
  if (json_is_string(refusal) && json_string_length(refusal) > 0)
    json_array_append_new(content, json_pack("{s:s,s:O}", "type", "refusal", "refusal", refusal));
  if (json_array_size(content) > 0) {
    item_id(id, sizeof id, st, "msg", 0);
    json_array_append_new(output, json_pack("{s:s,s:s,s:s,s:o,s:s}", "id", id, "type", "message",
                                            "status", status, "content", content, "role",
                                            "assistant"));
  } else {
    json_decref(content);
  }
  json_array_foreach(calls, i, c) {
    json_t *fn = json_object_get(c, "function");
    const char *args = str_at(fn, "arguments");
    char call_id[160];
    if (str_at(fn, "name") == NULL) return LLMUX_EUPSTREAM;
    item_id(id, sizeof id, st, "fc", (int)i + 1);
    if (str_at(c, "id") != NULL) snprintf(call_id, sizeof call_id, "%s", str_at(c, "id"));
    else item_id(call_id, sizeof call_id, st, "call", (int)i + 1);
    json_array_append_new(output, json_pack("{s:s,s:s,s:s,s:s,s:s,s:O}", "id", id, "type",
                                            "function_call", "status", "completed", "arguments",
                                            args ? args : "", "call_id", call_id, "name",
                                            json_object_get(fn, "name")));
  }
  return 0;
}

static int resp_answer(void *state, const llmux_inbound_ctx_t *ctx, const char *chat,
                       size_t len, llmux_buf_t *out) {
  resp_state_t *st = state;
  json_t *in = llmux_inbound_load_chat(chat, len), *ch, *msg, *output = NULL, *r = NULL;
  const char *status, *reason;
  char *text = NULL;
  int rc = LLMUX_EUPSTREAM;
  ensure_id(st, ctx);
  st->in_tokens = st->out_tokens = -1;
  ch = json_array_get(json_object_get(in, "choices"), 0);
  msg = json_object_get(ch, "message");
  if (!json_is_object(msg)) goto done;
  status = status_of(str_at(ch, "finish_reason"), &reason);
  output = json_array();
  if ((rc = plain_output(st, msg, status, output)) != 0) goto done;
  usage_from(st, json_object_get(in, "usage"));
  r = response_object(st, ctx, status, reason, output, 1);
  text = r ? json_dumps(r, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
  rc = text != NULL && llmux_buf_appends(out, text) == 0 ? 0 : LLMUX_ENOMEM;
  if (rc == 0) save(st, r);
done:
  free(text);
  json_decref(r);
  json_decref(output);
  json_decref(in);
  return rc;
}

/* ==== answers: streams ==================================================== */

/* One event: `event: TYPE` and its data, {"type", ...ev, "sequence_number"}.
 * Steals ev. */
static int emit(resp_state_t *st, llmux_buf_t *o, const char *type, json_t *ev) {
  json_t *full = json_pack("{s:s}", "type", type);
  char *text;
  int rc;
  if (full == NULL || ev == NULL) {
    json_decref(full);
    json_decref(ev);
    return LLMUX_ENOMEM;
  }
  json_object_update(full, ev);
  json_decref(ev);
  json_object_set_new(full, "sequence_number", json_integer((json_int_t)st->seq++));
  text = json_dumps(full, JSON_COMPACT | JSON_REAL_PRECISION(17));
  json_decref(full);
  if (text == NULL) return LLMUX_ENOMEM;
  rc = llmux_buf_printf(o, "event: %s\ndata: ", type);
  rc |= llmux_buf_appends(o, text);
  rc |= llmux_buf_appends(o, "\n\n");
  free(text);
  return rc ? LLMUX_ENOMEM : 0;
}

static int started(resp_state_t *st, const llmux_inbound_ctx_t *ctx, llmux_buf_t *o) {
  int rc;
  if (st->started) return 0;
  st->started = 1;
  ensure_id(st, ctx);
  rc = emit(st, o, "response.created",
            json_pack("{s:o}", "response", response_object(st, ctx, "in_progress", NULL, NULL, 0)));
  rc |= emit(st, o, "response.in_progress",
             json_pack("{s:o}", "response",
                       response_object(st, ctx, "in_progress", NULL, NULL, 0)));
  return rc;
}

static json_t *str_of(const llmux_buf_t *b) {
  return json_stringn(b->base ? b->base : "", b->len);
}

/* The item as output_item.done and response.completed show it. */
static json_t *item_json(const resp_state_t *st, const item_t *it, const char *status) {
  if (it->kind == ITEM_TEXT)
    return json_pack("{s:s,s:s,s:s,s:[o],s:s}", "id", it->id, "type", "message", "status",
                     status, "content", text_part(str_of(&it->buf)), "role", "assistant");
  (void)st;
  return json_pack("{s:s,s:s,s:s,s:o,s:O,s:O}", "id", it->id, "type", "function_call", "status",
                   status, "arguments", str_of(&it->buf), "call_id", it->call_id, "name",
                   it->name);
}

static const char *final_status(const resp_state_t *st, const char **reason) {
  return status_of(st->finish[0] ? st->finish : NULL, reason);
}

static int item_close(resp_state_t *st, llmux_buf_t *o) {
  item_t *it;
  const char *reason, *status;
  int idx = st->open, rc = 0;
  if (idx < 0) return 0;
  it = &st->items[idx];
  st->open = -1;
  it->closed = 1;
  status = st->finish[0] ? final_status(st, &reason) : "completed";
  if (it->kind == ITEM_TEXT) {
    rc |= emit(st, o, "response.output_text.done",
               json_pack("{s:s,s:i,s:i,s:o,s:[]}", "item_id", it->id, "output_index", idx,
                         "content_index", 0, "text", str_of(&it->buf), "logprobs"));
    rc |= emit(st, o, "response.content_part.done",
               json_pack("{s:s,s:i,s:i,s:o}", "item_id", it->id, "output_index", idx,
                         "content_index", 0, "part", text_part(str_of(&it->buf))));
  } else {
    rc |= emit(st, o, "response.function_call_arguments.done",
               json_pack("{s:s,s:i,s:O,s:o}", "item_id", it->id, "output_index", idx, "name",
                         it->name, "arguments", str_of(&it->buf)));
  }
  rc |= emit(st, o, "response.output_item.done",
             json_pack("{s:i,s:o}", "output_index", idx, "item", item_json(st, it, status)));
  return rc;
}

static int item_open(resp_state_t *st, int kind, json_t *call_id, json_t *name,
                     llmux_buf_t *o) {
  item_t *it;
  int idx, rc = item_close(st, o);
  if (st->nitems >= MAX_ITEMS) return 1; /* no room: dropped */
  idx = st->open = st->nitems++;
  it = &st->items[idx];
  it->kind = kind;
  item_id(it->id, sizeof it->id, st, kind == ITEM_TEXT ? "msg" : "fc", idx);
  if (kind == ITEM_TEXT) {
    rc |= emit(st, o, "response.output_item.added",
               json_pack("{s:i,s:{s:s,s:s,s:s,s:[],s:s}}", "output_index", idx, "item", "id",
                         it->id, "type", "message", "status", "in_progress", "content", "role",
                         "assistant"));
    rc |= emit(st, o, "response.content_part.added",
               json_pack("{s:s,s:i,s:i,s:o}", "item_id", it->id, "output_index", idx,
                         "content_index", 0, "part", text_part(json_string(""))));
    return rc;
  }
  it->call_id = json_incref(call_id);
  it->name = json_incref(name);
  rc |= emit(st, o, "response.output_item.added",
             json_pack("{s:i,s:{s:s,s:s,s:s,s:s,s:O,s:O}}", "output_index", idx, "item", "id",
                       it->id, "type", "function_call", "status", "in_progress", "arguments", "",
                       "call_id", call_id, "name", name));
  return rc;
}

static int text_delta(resp_state_t *st, json_t *s, llmux_buf_t *o) {
  item_t *it;
  int rc = 0;
  if (!json_is_string(s) || json_string_length(s) == 0) return 0;
  if (st->open < 0 || st->items[st->open].kind != ITEM_TEXT) {
    if ((rc = item_open(st, ITEM_TEXT, NULL, NULL, o)) == 1) return 0;
  }
  it = &st->items[st->open];
  rc |= llmux_buf_append(&it->buf, json_string_value(s), json_string_length(s));
  rc |= emit(st, o, "response.output_text.delta",
             json_pack("{s:s,s:i,s:i,s:O,s:[]}", "item_id", it->id, "output_index", st->open,
                       "content_index", 0, "delta", s, "logprobs"));
  return rc;
}

static int tool_delta(resp_state_t *st, json_t *tc, size_t pos, llmux_buf_t *o) {
  json_t *fn = json_object_get(tc, "function"), *args = json_object_get(fn, "arguments");
  json_t *jidx = json_object_get(tc, "index");
  json_int_t idx = json_is_integer(jidx) ? json_integer_value(jidx) : (json_int_t)pos;
  item_t *it;
  int rc = 0;
  if (idx < 0 || idx >= MAX_STREAM_TOOLS) return 0;
  if (st->tool_item[idx] < 0) {
    json_t *call_id = json_object_get(tc, "id"), *name = json_object_get(fn, "name");
    char made[160];
    json_t *cid;
    if (!json_is_string(call_id)) {
      item_id(made, sizeof made, st, "call", (int)idx + 1);
      cid = json_string(made);
    } else {
      cid = json_incref(call_id);
    }
    name = json_is_string(name) ? json_incref(name) : json_string("");
    rc = item_open(st, ITEM_TOOL, cid, name, o);
    json_decref(name);
    json_decref(cid);
    if (rc == 1) return 0;
    st->tool_item[idx] = st->open;
  }
  it = &st->items[st->tool_item[idx]];
  if (json_is_string(args) && json_string_length(args) > 0) {
    rc |= llmux_buf_append(&it->buf, json_string_value(args), json_string_length(args));
    rc |= emit(st, o, "response.function_call_arguments.delta",
               json_pack("{s:s,s:i,s:O}", "item_id", it->id, "output_index",
                         st->tool_item[idx], "delta", args));
  }
  return rc;
}

/* The stream failed: `error`, then response.failed; nothing after. */
static int fail_events(resp_state_t *st, const llmux_inbound_ctx_t *ctx, const char *code,
                       const char *msg, llmux_buf_t *o) {
  json_t *r;
  int rc = 0;
  llmux_inbound_ctx_t none = {NULL, 0};
  if (ctx == NULL) ctx = &none;
  if (st->done) return 0;
  rc |= started(st, ctx, o); /* the SDKs build on response.created */
  rc |= emit(st, o, "error", json_pack("{s:s,s:s,s:n}", "code", code ? code : "server_error",
                                       "message", msg, "param"));
  r = response_object(st, ctx, "failed", NULL, NULL, 0);
  if (r != NULL)
    json_object_set_new(r, "error", json_pack("{s:s,s:s}", "code", "server_error", "message",
                                              msg));
  rc |= emit(st, o, "response.failed", json_pack("{s:o}", "response", r));
  st->done = 1;
  return rc;
}

static int chunk(resp_state_t *st, const llmux_inbound_ctx_t *ctx, json_t *ev, llmux_buf_t *o) {
  json_t *err = json_object_get(ev, "error"), *ch, *delta, *calls, *tc;
  const char *s;
  size_t i;
  int rc = 0;
  if (json_is_object(err)) {
    const char *m = str_at(err, "message");
    const char *code = str_at(err, "code");
    return fail_events(st, ctx, code ? code : str_at(err, "type"),
                       m ? m : "The provider failed.", o);
  }
  rc |= started(st, ctx, o);
  usage_from(st, json_object_get(ev, "usage"));
  ch = json_array_get(json_object_get(ev, "choices"), 0);
  delta = json_object_get(ch, "delta");
  rc |= text_delta(st, json_object_get(delta, "content"), o);
  calls = json_object_get(delta, "tool_calls");
  json_array_foreach(calls, i, tc) rc |= tool_delta(st, tc, i, o);
  if ((s = str_at(ch, "finish_reason")) != NULL) snprintf(st->finish, sizeof st->finish, "%s", s);
  return rc ? LLMUX_ENOMEM : 0;
}

static int chunk_cb(void *st, const llmux_inbound_ctx_t *ctx, json_t *ev, llmux_buf_t *o) {
  return chunk(st, ctx, ev, o);
}

static int feed(resp_state_t *st, const llmux_inbound_ctx_t *ctx, const char *data, size_t len,
                int eof, llmux_buf_t *o) {
  if (st->sse == NULL) {
    size_t i;
    for (i = 0; i < MAX_STREAM_TOOLS; i++) st->tool_item[i] = -1;
    st->in_tokens = st->out_tokens = st->cached_tokens = st->reasoning_tokens = -1;
  }
  return llmux_inbound_read_chat(&st->sse, &st->done, chunk_cb, st, ctx, data, len, eof, o);
}

static int resp_stream_feed(void *state, const llmux_inbound_ctx_t *ctx, const char *data,
                            size_t len, llmux_buf_t *out) {
  return feed(state, ctx, data, len, 0, out);
}

static int resp_stream_end(void *state, const llmux_inbound_ctx_t *ctx, llmux_buf_t *o) {
  resp_state_t *st = state;
  const char *reason, *status;
  json_t *output, *r;
  int rc = feed(st, ctx, NULL, 0, 1, o), i;
  if (rc != 0 || st->done) return rc;
  rc |= started(st, ctx, o);
  rc |= item_close(st, o);
  status = final_status(st, &reason);
  output = json_array();
  for (i = 0; i < st->nitems; i++)
    json_array_append_new(output, item_json(st, &st->items[i], status));
  r = response_object(st, ctx, status, reason, output, 1);
  json_decref(output);
  if (r == NULL) return LLMUX_ENOMEM;
  save(st, r);
  rc |= emit(st, o, is(status, "completed") ? "response.completed" : "response.incomplete",
             json_pack("{s:o}", "response", r));
  st->done = 1;
  return rc ? LLMUX_ENOMEM : 0;
}

static int resp_stream_error(void *state, const char *type, const char *code, const char *msg,
                             llmux_buf_t *out) {
  (void)type;
  return fail_events(state, NULL, code, msg, out) ? LLMUX_ENOMEM : 0;
}

static void resp_state_free(void *state) {
  resp_state_t *st = state;
  int i;
  if (st == NULL) return;
  for (i = 0; i < st->nitems; i++) {
    llmux_buf_free(&st->items[i].buf);
    json_decref(st->items[i].call_id);
    json_decref(st->items[i].name);
  }
  llmux_split_free(st->sse);
  json_decref(st->echo);
  json_decref(st->input);
  if (st->arg != NULL && st->arg->release != NULL) st->arg->release(st->arg);
  free(st);
}

/* ---- native passthrough: usage of a provider's own Responses answer ------ */

static int64_t resp_count_of(const llmux_json_field_t *f) {
  return f->type == LLMUX_JSON_NUMBER ? llmux_inbound_count(f->value.base, f->value.len) : -1;
}

/* A Response's usage: the plain answer's, or the "response" of a stream's
 * response.completed (earlier events carry "usage": null, left alone). */
static void resp_native_usage(const char *json, size_t len, int64_t *in, int64_t *out) {
  llmux_json_field_t top[] = {{"usage"}, {"response"}};
  llmux_json_field_t inner[] = {{"usage"}};
  llmux_json_field_t u[] = {{"input_tokens"}, {"output_tokens"}};
  llmux_str_t usage;
  if (memmem(json, len, "\"usage\"", 7) == NULL ||
      llmux_json_scan(json, len, top, 2, NULL, NULL) != 0)
    return;
  usage = top[0].value;
  if (top[0].type != LLMUX_JSON_OBJECT) {
    if (top[1].type != LLMUX_JSON_OBJECT ||
        llmux_json_scan(top[1].value.base, top[1].value.len, inner, 1, NULL, NULL) != 0 ||
        inner[0].type != LLMUX_JSON_OBJECT)
      return;
    usage = inner[0].value;
  }
  if (llmux_json_scan(usage.base, usage.len, u, 2, NULL, NULL) != 0) return;
  if (u[0].type != LLMUX_JSON_NONE && u[0].type != LLMUX_JSON_NULL) *in = resp_count_of(&u[0]);
  if (u[1].type != LLMUX_JSON_NONE && u[1].type != LLMUX_JSON_NULL) *out = resp_count_of(&u[1]);
}

const llmux_inbound_t llmux_inbound_responses = {
    "responses",       NULL,              resp_request,      resp_answer,
    resp_stream_feed,  resp_stream_end,   resp_stream_error, resp_error_body,
    resp_state_free,   resp_request_arg,
    LLMUX_ENDPOINT_RESPONSES, LLMUX_FEATURE_RESPONSES, resp_native_usage,
};
