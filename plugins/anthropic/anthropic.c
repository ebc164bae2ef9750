#define _GNU_SOURCE
/* The `anthropic` provider plugin: Claude through Anthropic's own Messages
 * API (POST {base_url}/messages), for clients that speak only OpenAI's chat
 * format.
 *
 * Unlike the openai plugin this one rewrites both directions: the client's
 * chat request becomes a Messages request (system prompt hoisted, tool calls
 * and tool results turned into content blocks, same-role turns merged), and
 * the answer, plain or streamed, becomes an OpenAI chat completion. The
 * request is parsed once by the host (request_json) and the translation is
 * rebuilt from it on every attempt, so a retry sees exactly the same bytes.
 *
 * Streams are Server-Sent Events split by the host's splitter as they
 * arrive, whatever the byte boundaries: each Anthropic event is turned into
 * at most two OpenAI chunks and emitted at once, so nothing but the current
 * event is buffered.
 *
 * Numbers from Anthropic are untrusted: a usage count that is not an
 * integer of 0 to USAGE_MAX reaches the host as unknown (-1) and is logged
 * once per answer; a block index must be an integer in range.
 *
 * What Anthropic lacks is emulated or refused, never dropped in silence:
 *  - response_format json_schema / json_object: Anthropic has no JSON mode,
 *    so the answer is forced through one tool whose input_schema is the
 *    schema ({"type":"object"} for json_object, with a system line asking
 *    for JSON); that tool's input comes back as the message's content (a
 *    JSON string, finish_reason "stop", no tool_calls), and in streams its
 *    input_json_delta pieces become content deltas. Anthropic cannot force
 *    two things at once, so response_format with the client's own tools is
 *    refused (400), unless tool_choice is "none" (the tools are dropped).
 *  - logprobs / top_logprobs: refused (400 "Provider 'NAME' does not
 *    support logprobs"): the router tries a route that has them.
 *  - temperature above Anthropic's 1: clamped to 1, and the host told
 *    (x-llmux-adjusted: temperature).
 * Refusals reach the client in the plugin's words through txn->refusal
 * (ABI 1.4).
 *
 * A client that speaks Messages itself is not translated at all: the plugin
 * declares LLMUX_FEATURE_MESSAGES, and for LLMUX_ENDPOINT_MESSAGES it sends
 * the client's body with only the model id spliced in; the host passes the
 * answer back untouched (ABI 1.4, native passthrough). */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "llmux/provider.h"

static const llmux_host_api_t *host;

static const llmux_config_key_t anthropic_keys[] = {
  {"anthropic_version", LLMUX_KEY_STRING, "2023-06-01", "sent as the anthropic-version header"},
  {"default_max_tokens", LLMUX_KEY_INT, "4096",
   "max_tokens sent when the client sets neither max_tokens nor max_completion_tokens "
   "(Anthropic requires one)"},
  {NULL, 0, NULL, NULL}
};

/* A line or event of a stream longer than this is not Anthropic talking. */
#define LINE_MAX_BYTES (16u << 20)
/* Nor is a plain answer larger than this. */
#define BODY_MAX_BYTES (64u << 20)
/* The name of the tool that carries a JSON answer when the client's
 * json_schema has no usable name (and always for json_object). */
#define JSON_TOOL_DEFAULT "json_output"
/* block_tool's marks for the content block of that tool: its input is the
 * answer's content, not a tool call (a second such block, which Anthropic
 * does not send with parallel use disabled, is ignored, as in plain answers). */
#define JSON_BLOCK (-2)
#define JSON_IGNORED (-3)
/* The most tokens one request is believed to use; a larger count is a
 * fault, not usage. */
#define USAGE_MAX 1000000000

typedef struct {
  llmux_buf_t head;          /* "x-api-key: ...\r\nanthropic-version: ...\r\n" */
  json_int_t default_max_tokens;
  const char *name;          /* the section's name, borrowed from cfg, for logs */
} anthropic_t;

enum { STREAM_WAIT_START = 0, STREAM_OPEN, STREAM_DONE };

/* Per attempt. Everything here is reset by translate_request. */
typedef struct {
  llmux_buf_t body;          /* the Messages request we send */
  int include_usage;         /* the client asked stream_options.include_usage */

  llmux_buf_t in;            /* plain: the body so far */
  llmux_split_t *sse;        /* stream: the host's SSE splitter, made on first use */
  llmux_buf_t prefix;        /* stream: a chunk's JSON up to `"choices":[` */
  llmux_buf_t out;           /* stream: the frame being built */
  llmux_buf_t scratch;
  llmux_buf_t block_tool;    /* stream: int per content block, its tool-call index or -1 */
  int state;                 /* STREAM_* */
  int finish_sent;
  int ntools;
  int64_t prompt_tokens, completion_tokens, cached_tokens;
  int usage_logged;          /* a bad usage number was logged for this answer */
  int as_reals;              /* the document at hand was read with integers as reals */
  const char *provider;      /* the instance's name, for logs */
  char json_tool[65];        /* response_format emulated through this tool; "" when not */
  size_t json_sent;          /* stream: bytes of the JSON answer sent as content so far */
  int json_seen;             /* stream: the JSON answer's block has started */
} anthropic_txn_t;

/* ---- small helpers ------------------------------------------------------- */

static int buf_puts(llmux_buf_t *b, const char *s) {
  return host->buf_append(b, s, strlen(s));
}

static int buf_json_str(llmux_buf_t *b, const char *s) {
  return host->buf_append_json_str(b, s, strlen(s));
}

static const char *str_at(json_t *obj, const char *key) {
  return json_string_value(json_object_get(obj, key));
}

static int is_type(json_t *obj, const char *type) {
  const char *t = str_at(obj, "type");
  return t != NULL && strcmp(t, type) == 0;
}

static int starts_with(const char *s, const char *prefix) {
  return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Anthropic's JSON. jansson refuses a whole document for one integer
 * beyond 64 bits; rather than lose the answer over, say, a usage count,
 * such a document is read again with every integer as a real (*as_reals
 * set), and the checks on counts and indexes refuse the huge ones. */
static json_t *load_json(const char *s, size_t n, int *as_reals) {
  json_t *v = json_loadb(s, n, 0, NULL);
  *as_reals = v == NULL;
  return v ? v : json_loadb(s, n, JSON_DECODE_INT_AS_REAL, NULL);
}

/* v as an integer of lo to hi into *out: an integer, or in a document read
 * with integers as reals, a whole real (exact in a double below 2^53). */
static int int_in(json_t *v, int as_reals, json_int_t lo, json_int_t hi, json_int_t *out) {
  double d;
  if (json_is_integer(v)) {
    *out = json_integer_value(v);
    return *out >= lo && *out <= hi;
  }
  if (!as_reals || !json_is_real(v)) return 0;
  d = json_real_value(v);
  if (!(d >= (double)lo && d <= (double)hi) || d != (double)(json_int_t)d) return 0;
  *out = (json_int_t)d;
  return 1;
}

/* A real in the fewest digits that read back as the same double, so 0.7
 * stays "0.7" (jansson would print 0.69999999999999996). */
static int dump_real(llmux_buf_t *b, double v) {
  char tmp[40];
  int prec;
  for (prec = 15; prec <= 17; prec++) {
    snprintf(tmp, sizeof tmp, "%.*g", prec, v);
    if (strtod(tmp, NULL) == v) break;
  }
  return buf_puts(b, tmp);
}

/* Serialises v compactly, keys in insertion order. 0 or LLMUX_ENOMEM. */
static int dump_json(llmux_buf_t *b, json_t *v) {
  const char *key;
  json_t *item;
  size_t i;
  int rc = 0, first = 1;
  switch (json_typeof(v)) {
    case JSON_OBJECT:
      rc |= buf_puts(b, "{");
      json_object_foreach(v, key, item) {
        if (!first) rc |= buf_puts(b, ",");
        first = 0;
        rc |= buf_json_str(b, key);
        rc |= buf_puts(b, ":");
        rc |= dump_json(b, item);
      }
      return rc | buf_puts(b, "}");
    case JSON_ARRAY:
      rc |= buf_puts(b, "[");
      json_array_foreach(v, i, item) {
        if (i) rc |= buf_puts(b, ",");
        rc |= dump_json(b, item);
      }
      return rc | buf_puts(b, "]");
    case JSON_STRING:
      return host->buf_append_json_str(b, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
      return host->buf_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    case JSON_REAL: return dump_real(b, json_real_value(v));
    case JSON_TRUE: return buf_puts(b, "true");
    case JSON_FALSE: return buf_puts(b, "false");
    default: return buf_puts(b, "null");
  }
}

/* ---- lifecycle ----------------------------------------------------------- */

static int anthropic_create(const llmux_provider_config_t *cfg, void **instance, char *err,
                            size_t errlen) {
  anthropic_t *p;
  const char *version = cfg->get(cfg, "anthropic_version");
  const char *max = cfg->get(cfg, "default_max_tokens");
  long long n = max ? strtoll(max, NULL, 10) : 4096;
  int rc = 0;
  if (n < 1) {
    snprintf(err, errlen, "default_max_tokens must be at least 1 (Anthropic requires max_tokens)");
    return LLMUX_ECONFIG;
  }
  p = host->malloc(sizeof *p);
  if (p == NULL) return LLMUX_ENOMEM;
  memset(p, 0, sizeof *p);
  p->default_max_tokens = (json_int_t)n;
  p->name = cfg->name;
  /* Formatted once: the key never appears anywhere else, and never in a log. */
  if (cfg->api_key != NULL) rc |= host->buf_printf(&p->head, "x-api-key: %s\r\n", cfg->api_key);
  rc |= host->buf_printf(&p->head, "anthropic-version: %s\r\n",
                         version && *version ? version : "2023-06-01");
  if (rc != 0) {
    host->buf_free(&p->head);
    host->free(p);
    return LLMUX_ENOMEM;
  }
  *instance = p;
  return 0;
}

static void anthropic_destroy(void *instance) {
  anthropic_t *p = instance;
  host->buf_free(&p->head);
  host->free(p);
}

/* ---- request: messages ---------------------------------------------------- */

/* Why a request could not be translated: the host only learns EINVAL. */
static int bad_request(const char *why) {
  host->log(LLMUX_LOG_LEVEL_WARN, "anthropic: cannot translate the request: %s", why);
  return LLMUX_EINVAL;
}

/* A request this provider cannot serve as asked: LLMUX_EINVAL, with words
 * for the client in txn->refusal when the host has it (ABI 1.4). */
static int refuse(llmux_txn_t *txn, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int refuse(llmux_txn_t *txn, const char *fmt, ...) {
  char why[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  host->log(LLMUX_LOG_LEVEL_INFO, "anthropic: refused: %s", why);
  if (LLMUX_TXN_HAS(txn, refusal)) {
    txn->refusal.len = 0;
    buf_puts(&txn->refusal, why);
  }
  return LLMUX_EINVAL;
}

/* Tells the host a request field was changed to fit (ABI 1.4). */
static void note_adjusted(llmux_txn_t *txn, const char *field) {
  if (!LLMUX_TXN_HAS(txn, adjusted)) return;
  if (txn->adjusted.len) buf_puts(&txn->adjusted, ",");
  buf_puts(&txn->adjusted, field);
}

/* An OpenAI image URL as an Anthropic image source: data URLs become base64
 * sources, http(s) URLs url sources (Anthropic fetches them itself). */
static json_t *image_block(const char *url) {
  const char *semi, *comma;
  json_t *src;
  if (starts_with(url, "http://") || starts_with(url, "https://")) {
    src = json_pack("{s:s, s:s}", "type", "url", "url", url);
  } else if (starts_with(url, "data:") && (semi = strchr(url, ';')) != NULL &&
             (comma = strchr(semi, ',')) != NULL && (size_t)(comma - semi) == 7 &&
             strncmp(semi, ";base64", 7) == 0 && semi > url + 5) {
    src = json_pack("{s:s, s:s%, s:s}", "type", "base64", "media_type", url + 5,
                    (size_t)(semi - url - 5), "data", comma + 1);
  } else {
    return NULL;
  }
  return json_pack("{s:s, s:o}", "type", starts_with(url + 5, "application/pdf") ? "document"
                                                                                  : "image",
                   "source", src);
}

/* One OpenAI content part as an Anthropic block; NULL (with *skip) for an
 * empty text part, NULL alone for a part Anthropic cannot take. */
static json_t *part_block(json_t *part, int *skip) {
  const char *type = str_at(part, "type"), *url = NULL;
  json_t *block;
  *skip = 0;
  if (type == NULL) return NULL;
  if (strcmp(type, "text") == 0) {
    const char *text = str_at(part, "text");
    if (text == NULL) return NULL;
    if (*text == '\0') { *skip = 1; return NULL; }
    block = json_pack("{s:s, s:s}", "type", "text", "text", text);
    if (block && json_object_get(part, "cache_control"))
      json_object_set(block, "cache_control", json_object_get(part, "cache_control"));
    return block;
  }
  if (strcmp(type, "image_url") == 0) {
    json_t *iu = json_object_get(part, "image_url");
    url = json_is_string(iu) ? json_string_value(iu) : str_at(iu, "url");
  } else if (strcmp(type, "file") == 0) {
    url = str_at(json_object_get(part, "file"), "file_data"); /* a PDF as a data URL */
  }
  return url ? image_block(url) : NULL;
}

/* Appends the blocks of an OpenAI `content` (string, parts array or null)
 * to `blocks`. */
static int content_blocks(json_t *content, json_t *blocks) {
  size_t i;
  json_t *part;
  if (content == NULL || json_is_null(content)) return 0;
  if (json_is_string(content)) {
    if (json_string_length(content) == 0) return 0;
    return json_array_append_new(
        blocks, json_pack("{s:s, s:O}", "type", "text", "text", content)) ? LLMUX_ENOMEM : 0;
  }
  if (!json_is_array(content)) return bad_request("a message's content is not a string or array");
  json_array_foreach(content, i, part) {
    int skip;
    json_t *b = part_block(part, &skip);
    if (skip) continue;
    if (b == NULL) return bad_request("a content part is not text, an image or a PDF file");
    json_array_append_new(blocks, b);
  }
  return 0;
}

/* The text of a system message, appended to the system prompt. */
static int system_text(json_t *content, llmux_buf_t *sys) {
  json_t *blocks = json_array(), *b;
  size_t i;
  int rc = content_blocks(content, blocks);
  json_array_foreach(blocks, i, b) {
    const char *text = str_at(b, "text");
    if (rc != 0) break;
    if (text == NULL) { rc = bad_request("a system message holds something other than text"); break; }
    if (sys->len) rc |= buf_puts(sys, "\n\n");
    rc |= buf_puts(sys, text);
  }
  json_decref(blocks);
  return rc;
}

/* An assistant's tool_calls as tool_use blocks; arguments (a JSON string)
 * become the `input` object. */
static int tool_use_blocks(json_t *calls, json_t *blocks) {
  size_t i;
  json_t *call;
  if (calls == NULL || json_is_null(calls)) return 0;
  if (!json_is_array(calls)) return bad_request("tool_calls is not an array");
  json_array_foreach(calls, i, call) {
    json_t *fn = json_object_get(call, "function"), *input;
    const char *id = str_at(call, "id"), *name = str_at(fn, "name");
    const char *args = str_at(fn, "arguments");
    if (id == NULL || name == NULL) return bad_request("a tool call lacks its id or name");
    input = args && *args ? json_loads(args, 0, NULL) : json_object();
    if (json_is_null(input)) { json_decref(input); input = json_object(); }
    if (!json_is_object(input)) {
      json_decref(input);
      return bad_request("a tool call's arguments are not a JSON object");
    }
    json_array_append_new(blocks, json_pack("{s:s, s:s, s:s, s:o}", "type", "tool_use", "id",
                                            id, "name", name, "input", input));
  }
  return 0;
}

static int tool_result_block(json_t *msg, json_t *blocks) {
  json_t *content = json_object_get(msg, "content"), *block;
  const char *id = str_at(msg, "tool_call_id");
  if (id == NULL) return bad_request("a tool message lacks tool_call_id");
  block = json_pack("{s:s, s:s}", "type", "tool_result", "tool_use_id", id);
  if (json_is_string(content)) {
    json_object_set(block, "content", content);
  } else if (json_is_array(content)) {
    json_t *inner = json_array();
    int rc = content_blocks(content, inner);
    if (rc != 0) { json_decref(inner); json_decref(block); return rc; }
    json_object_set_new(block, "content", inner);
  }
  return json_array_append_new(blocks, block) ? LLMUX_ENOMEM : 0;
}

/* Adds a turn, merged into the previous one when the role is the same
 * (Anthropic wants user and assistant to alternate; consecutive tool
 * results thus land in one user turn). */
static void push_turn(json_t *turns, const char *role, json_t *blocks) {
  json_t *last = json_array_get(turns, json_array_size(turns) - 1);
  if (json_array_size(blocks) == 0) {
    json_decref(blocks);
    return;
  }
  if (last != NULL && strcmp(str_at(last, "role"), role) == 0) {
    json_array_extend(json_object_get(last, "content"), blocks);
    json_decref(blocks);
    return;
  }
  json_array_append_new(turns, json_pack("{s:s, s:o}", "role", role, "content", blocks));
}

/* A turn that is one plain text block is sent as a string, as people write it. */
static void simplify_turns(json_t *turns) {
  size_t i;
  json_t *turn;
  json_array_foreach(turns, i, turn) {
    json_t *content = json_object_get(turn, "content"), *only = json_array_get(content, 0);
    if (json_array_size(content) == 1 && is_type(only, "text") && json_object_size(only) == 2)
      json_object_set(turn, "content", json_object_get(only, "text"));
  }
}

static int one_message(json_t *m, json_t *turns, llmux_buf_t *sys) {
  const char *role = str_at(m, "role");
  json_t *content = json_object_get(m, "content"), *blocks;
  int rc;
  if (role == NULL) return bad_request("a message has no role");
  if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0)
    return system_text(content, sys);
  blocks = json_array();
  if (strcmp(role, "user") == 0) {
    rc = content_blocks(content, blocks);
  } else if (strcmp(role, "assistant") == 0) {
    rc = content_blocks(content, blocks);
    if (rc == 0) rc = tool_use_blocks(json_object_get(m, "tool_calls"), blocks);
  } else if (strcmp(role, "tool") == 0) {
    rc = tool_result_block(m, blocks);
    role = "user";
  } else {
    rc = bad_request("a message's role is not system, developer, user, assistant or tool");
  }
  if (rc != 0) {
    json_decref(blocks);
    return rc;
  }
  push_turn(turns, role, blocks);
  return 0;
}

/* Sets `system` (when any) and `messages` on out. */
static int add_messages(json_t *out, json_t *messages) {
  llmux_buf_t sys = {0};
  json_t *turns = json_array(), *m;
  size_t i;
  int rc = 0;
  json_array_foreach(messages, i, m) {
    if ((rc = one_message(m, turns, &sys)) != 0) goto fail;
  }
  simplify_turns(turns);
  if (sys.len) json_object_set_new(out, "system", json_stringn(sys.base, sys.len));
  json_object_set(out, "messages", turns);
fail:
  host->buf_free(&sys);
  json_decref(turns);
  return rc;
}

/* ---- request: options and tools ------------------------------------------ */

/* OpenAI's tool_choice (and parallel_tool_calls) as Anthropic's tool_choice,
 * or NULL to leave Anthropic's default (auto). */
static json_t *tool_choice(json_t *req) {
  json_t *tc = json_object_get(req, "tool_choice"), *choice = NULL;
  json_t *fn = json_object_get(tc, "function");
  if (json_is_string(tc)) {
    const char *s = json_string_value(tc);
    choice = json_pack("{s:s}", "type", strcmp(s, "required") == 0 ? "any"
                                        : strcmp(s, "none") == 0   ? "none"
                                                                   : "auto");
  } else if (json_is_object(tc) && json_is_string(json_object_get(fn, "name"))) {
    choice = json_pack("{s:s, s:O}", "type", "tool", "name", json_object_get(fn, "name"));
  } else if (json_is_object(tc)) {
    choice = json_pack("{s:s}", "type", "auto");
  }
  if (json_is_false(json_object_get(req, "parallel_tool_calls"))) {
    if (choice == NULL) choice = json_pack("{s:s}", "type", "auto");
    if (!is_type(choice, "none"))
      json_object_set_new(choice, "disable_parallel_tool_use", json_true());
  }
  return choice;
}

/* Function tools as Anthropic tools (name, description, input_schema); the
 * choice only when there are tools, as Anthropic wants. */
static int add_tools(json_t *out, json_t *req) {
  json_t *tools = json_object_get(req, "tools"), *tool, *list, *choice;
  size_t i;
  if (!json_is_array(tools) || json_array_size(tools) == 0) return 0;
  list = json_array();
  json_array_foreach(tools, i, tool) {
    json_t *fn = json_object_get(tool, "function"), *schema = json_object_get(fn, "parameters");
    json_t *t;
    if (!is_type(tool, "function") || str_at(fn, "name") == NULL) {
      json_decref(list);
      return bad_request("a tool is not a named function");
    }
    t = json_pack("{s:O}", "name", json_object_get(fn, "name"));
    if (json_is_string(json_object_get(fn, "description")))
      json_object_set(t, "description", json_object_get(fn, "description"));
    if (json_is_object(schema)) json_object_set(t, "input_schema", schema);
    else json_object_set_new(t, "input_schema", json_pack("{s:s, s:{}}", "type", "object",
                                                          "properties"));
    json_array_append_new(list, t);
  }
  json_object_set_new(out, "tools", list);
  if ((choice = tool_choice(req)) != NULL) json_object_set_new(out, "tool_choice", choice);
  return 0;
}

static void add_options(json_t *out, json_t *req, llmux_txn_t *txn) {
  json_t *stop = json_object_get(req, "stop"), *v;
  const char *user = str_at(req, "user");
  size_t i;
  if (json_is_string(stop) && json_string_length(stop) > 0) {
    json_object_set_new(out, "stop_sequences", json_pack("[O]", stop));
  } else if (json_is_array(stop)) {
    json_t *seqs = json_array();
    json_array_foreach(stop, i, v) {
      if (json_is_string(v) && json_string_length(v) > 0) json_array_append(seqs, v);
    }
    if (json_array_size(seqs)) json_object_set(out, "stop_sequences", seqs);
    json_decref(seqs);
  }
  if (json_is_number(v = json_object_get(req, "temperature"))) {
    /* OpenAI's range is 0-2, Anthropic's 0-1: clamped, and said so. */
    if (json_number_value(v) > 1) {
      json_object_set_new(out, "temperature", json_integer(1));
      note_adjusted(txn, "temperature");
    } else {
      json_object_set(out, "temperature", v);
    }
  }
  if (json_is_number(v = json_object_get(req, "top_p"))) json_object_set(out, "top_p", v);
  if (user != NULL && *user != '\0')
    json_object_set_new(out, "metadata", json_pack("{s:s}", "user_id", user));
}

/* ---- request: what Anthropic lacks ---------------------------------------- */

/* logprobs: true, or top_logprobs above 0: Anthropic returns none. */
static int wants_logprobs(json_t *req) {
  json_t *top = json_object_get(req, "top_logprobs");
  return json_is_true(json_object_get(req, "logprobs")) ||
         (json_is_integer(top) && json_integer_value(top) > 0);
}

/* A tool name Anthropic takes: [A-Za-z0-9_-]{1,64} (OpenAI's rule for a
 * json_schema's name too). */
static int tool_name_ok(const char *s) {
  size_t i;
  if (s == NULL || *s == '\0' || strlen(s) > 64) return 0;
  for (i = 0; s[i]; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '_' || c == '-'))
      return 0;
  }
  return 1;
}

/* Is response_format one Anthropic must emulate? Its type, else NULL
 * ("text", missing, or a type it does not know: left to Anthropic's
 * default, plain text). */
static const char *json_format(json_t *req) {
  const char *type = str_at(json_object_get(req, "response_format"), "type");
  if (type == NULL) return NULL;
  if (strcmp(type, "json_schema") == 0 || strcmp(type, "json_object") == 0) return type;
  return NULL;
}

static void append_system(json_t *out, const char *line) {
  const char *sys = str_at(out, "system");
  llmux_buf_t b = {0};
  if (sys != NULL && *sys != '\0') {
    buf_puts(&b, sys);
    buf_puts(&b, "\n\n");
  }
  buf_puts(&b, line);
  if (b.base != NULL) json_object_set_new(out, "system", json_stringn(b.base, b.len));
  host->buf_free(&b);
}

/* response_format as one forced tool: its input is the answer. The tool's
 * name is remembered in t->json_tool so the answer can be read back. */
static int add_json_tool(anthropic_txn_t *t, llmux_txn_t *txn, json_t *out, json_t *req,
                         const char *type) {
  json_t *js = json_object_get(json_object_get(req, "response_format"), "json_schema");
  json_t *schema = json_object_get(js, "schema"), *tool, *desc = json_object_get(js, "description");
  const char *name = str_at(js, "name"), *choice = str_at(req, "tool_choice");
  if (json_array_size(json_object_get(req, "tools")) > 0 &&
      !(choice != NULL && strcmp(choice, "none") == 0))
    return refuse(txn, "Provider '%s' cannot combine response_format %s with tools: Anthropic "
                  "has no JSON mode, and llmux emulates it with a forced tool", t->provider, type);
  if (strcmp(type, "json_object") == 0 || !tool_name_ok(name)) name = JSON_TOOL_DEFAULT;
  if (strcmp(type, "json_schema") == 0 && !json_is_object(schema))
    return refuse(txn, "Provider '%s': response_format json_schema needs a schema object",
                  t->provider);
  snprintf(t->json_tool, sizeof t->json_tool, "%s", name);
  tool = json_pack("{s:s, s:s}", "name", name, "description",
                   json_is_string(desc) ? json_string_value(desc)
                                        : "Give your answer as this tool's input: it must match "
                                          "the input schema.");
  if (strcmp(type, "json_object") == 0) {
    json_object_set_new(tool, "input_schema", json_pack("{s:s}", "type", "object"));
    append_system(out, "Answer with a JSON object, given as the input of the " JSON_TOOL_DEFAULT
                       " tool.");
  } else {
    json_object_set(tool, "input_schema", schema);
  }
  json_object_set_new(out, "tools", json_pack("[o]", tool));
  json_object_set_new(out, "tool_choice", json_pack("{s:s, s:s, s:b}", "type", "tool", "name",
                                                    name, "disable_parallel_tool_use", 1));
  return 0;
}

static json_int_t max_tokens(const anthropic_t *p, json_t *req) {
  json_t *v = json_object_get(req, "max_completion_tokens");
  if (!json_is_integer(v) || json_integer_value(v) < 1) v = json_object_get(req, "max_tokens");
  if (json_is_integer(v) && json_integer_value(v) >= 1) return json_integer_value(v);
  return p->default_max_tokens;
}

/* The Messages request for the client's chat request. */
static int build_request(const anthropic_t *p, llmux_txn_t *txn, json_t *req, json_t **res) {
  anthropic_txn_t *t = txn->data;
  json_t *out, *messages = json_object_get(req, "messages");
  const char *format = json_format(req);
  int rc;
  if (!json_is_array(messages)) return bad_request("messages is not an array");
  if (wants_logprobs(req)) return refuse(txn, "Provider '%s' does not support logprobs", t->provider);
  out = json_object();
  json_object_set_new(out, "model", json_string(txn->provider_model));
  json_object_set_new(out, "max_tokens", json_integer(max_tokens(p, req)));
  rc = add_messages(out, messages);
  if (rc == 0) rc = format ? add_json_tool(t, txn, out, req, format) : add_tools(out, req);
  if (rc != 0) {
    json_decref(out);
    return rc;
  }
  add_options(out, req, txn);
  if (txn->stream) json_object_set_new(out, "stream", json_true());
  *res = out;
  return 0;
}

static void txn_reset(anthropic_txn_t *t) {
  t->body.len = t->in.len = t->prefix.len = t->out.len = 0;
  host->split_reset(t->sse);
  t->scratch.len = t->block_tool.len = 0;
  t->include_usage = t->state = t->finish_sent = t->ntools = 0;
  t->prompt_tokens = t->completion_tokens = -1;
  t->cached_tokens = 0;
  t->usage_logged = 0;
  t->json_tool[0] = '\0';
  t->json_sent = 0;
  t->json_seen = 0;
}

/* Native passthrough (LLMUX_FEATURE_MESSAGES): the client spoke Messages
 * itself, so its body goes as it is, with only the model id spliced in
 * (kept in t->body); the host passes the answer back untouched. */
static int native_request(const anthropic_t *p, anthropic_txn_t *t, llmux_txn_t *txn) {
  const char *body = txn->body.base;
  size_t before, after;
  int rc = buf_puts(&txn->path, "/messages");
  rc |= host->buf_append(&txn->headers, p->head.base, p->head.len);
  if (rc != 0) return LLMUX_ENOMEM;
  if (txn->model_value.base == NULL || txn->model_value.base < body ||
      txn->model_value.base + txn->model_value.len > body + txn->body.len)
    return bad_request("the Messages body has no model to replace");
  if (buf_json_str(&t->body, txn->provider_model) != 0) return LLMUX_ENOMEM;
  before = (size_t)(txn->model_value.base - body);
  after = before + txn->model_value.len;
  txn->body_parts[0] = (llmux_str_t){body, before};
  txn->body_parts[1] = (llmux_str_t){t->body.base, t->body.len};
  txn->body_parts[2] = (llmux_str_t){body + after, txn->body.len - after};
  txn->nbody_parts = 3;
  return 0;
}

static int anthropic_translate_request(void *instance, llmux_txn_t *txn) {
  anthropic_t *p = instance;
  anthropic_txn_t *t = txn->data;
  json_t *req, *out = NULL;
  int rc;
  if (txn->endpoint != LLMUX_ENDPOINT_CHAT && txn->endpoint != LLMUX_ENDPOINT_MESSAGES)
    return bad_request("Anthropic's Messages API serves chat completions only");
  if (t == NULL) {
    if ((t = host->malloc(sizeof *t)) == NULL) return LLMUX_ENOMEM;
    memset(t, 0, sizeof *t);
    txn->data = t;
  }
  txn_reset(t);
  t->provider = p->name ? p->name : "anthropic";
  if (txn->endpoint == LLMUX_ENDPOINT_MESSAGES) return native_request(p, t, txn);
  req = host->request_json(txn);
  if (!json_is_object(req)) return bad_request("the body is not a JSON object");
  t->include_usage = json_is_true(
      json_object_get(json_object_get(req, "stream_options"), "include_usage"));
  if ((rc = build_request(p, txn, req, &out)) != 0) return rc;
  rc = dump_json(&t->body, out);
  json_decref(out);
  rc |= buf_puts(&txn->path, "/messages");
  rc |= host->buf_append(&txn->headers, p->head.base, p->head.len);
  if (rc != 0) return LLMUX_ENOMEM;
  txn->body_parts[0] = (llmux_str_t){t->body.base, t->body.len};
  txn->nbody_parts = 1;
  return 0;
}

/* ---- responses: shared ---------------------------------------------------- */

static const char *finish_reason(const char *stop_reason) {
  if (stop_reason == NULL) return "stop";
  if (strcmp(stop_reason, "max_tokens") == 0 ||
      strcmp(stop_reason, "model_context_window_exceeded") == 0)
    return "length";
  if (strcmp(stop_reason, "tool_use") == 0) return "tool_calls";
  if (strcmp(stop_reason, "refusal") == 0) return "content_filter";
  return "stop"; /* end_turn, stop_sequence, pause_turn */
}

/* The same for an answer whose JSON was emulated with a forced tool: that
 * tool's use is the answer itself, so it stops, unless a real call came
 * too (then tool_calls). */
static const char *finish_of(const anthropic_txn_t *t, const char *stop_reason) {
  if (t->json_tool[0] && t->ntools == 0 && stop_reason && strcmp(stop_reason, "tool_use") == 0)
    return "stop";
  return finish_reason(stop_reason);
}

enum { COUNT_ABSENT = 0, COUNT_OK, COUNT_BAD };

/* usage[key] as a token count in *out (left as it is unless COUNT_OK):
 * COUNT_ABSENT when missing or null, COUNT_BAD when not an integer of 0 to
 * USAGE_MAX (a real, a string, negative, huge), noted in `why` for the log. */
static int count_at(const anthropic_txn_t *t, json_t *usage, const char *key, int64_t *out,
                    llmux_buf_t *why) {
  json_t *v = json_object_get(usage, key);
  json_int_t n;
  char *text;
  if (v == NULL || json_is_null(v)) return COUNT_ABSENT;
  if (int_in(v, t->as_reals, 0, USAGE_MAX, &n)) {
    *out = n;
    return COUNT_OK;
  }
  text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
  host->buf_printf(why, " %s=%.24s", key, text ? text : "?");
  free(text);
  return COUNT_BAD;
}

/* Anthropic's usage (input excludes cache reads and writes; OpenAI's
 * prompt_tokens includes them). Fields absent leave the counts as they
 * are; a field that is not a count makes its count unknown (-1), logged
 * once per answer (a stream carries usage in two events). */
static void read_usage(anthropic_txn_t *t, json_t *usage) {
  llmux_buf_t why = {0};
  int64_t in = 0, read = 0, made = 0, out = 0;
  int rin = count_at(t, usage, "input_tokens", &in, &why);
  int rread = count_at(t, usage, "cache_read_input_tokens", &read, &why);
  int rmade = count_at(t, usage, "cache_creation_input_tokens", &made, &why);
  int rout = count_at(t, usage, "output_tokens", &out, &why);
  if (rin == COUNT_OK && rread != COUNT_BAD && rmade != COUNT_BAD) {
    int64_t sum = in + read + made; /* each at most USAGE_MAX: no overflow */
    if (sum > USAGE_MAX) host->buf_printf(&why, " input_tokens+cache_*=%lld", (long long)sum);
    t->prompt_tokens = sum > USAGE_MAX ? -1 : sum;
    t->cached_tokens = sum > USAGE_MAX ? 0 : read;
  } else if (rin != COUNT_ABSENT) {
    t->prompt_tokens = -1;
    t->cached_tokens = 0;
  }
  if (rout != COUNT_ABSENT) t->completion_tokens = rout == COUNT_OK ? out : -1;
  if (why.len && !t->usage_logged) {
    t->usage_logged = 1;
    host->log(LLMUX_LOG_LEVEL_WARN,
              "anthropic: provider '%s' answered usage%.*s: not a count of 0 to %d tokens, "
              "reported as unknown", t->provider ? t->provider : "?", (int)why.len, why.base,
              USAGE_MAX);
  }
  host->buf_free(&why);
}

static int usage_json(llmux_buf_t *b, const anthropic_txn_t *t) {
  int64_t in = t->prompt_tokens < 0 ? 0 : t->prompt_tokens;
  int64_t out = t->completion_tokens < 0 ? 0 : t->completion_tokens;
  int rc = host->buf_printf(b, "{\"prompt_tokens\":%lld,\"completion_tokens\":%lld,"
                               "\"total_tokens\":%lld", (long long)in, (long long)out,
                            (long long)(in + out));
  if (t->cached_tokens > 0)
    rc |= host->buf_printf(b, ",\"prompt_tokens_details\":{\"cached_tokens\":%lld}",
                           (long long)t->cached_tokens);
  return rc | buf_puts(b, "}");
}

static void set_served_model(llmux_txn_t *txn, const char *model) {
  if (model == NULL) return;
  txn->served_model.len = 0;
  host->buf_append(&txn->served_model, model, strlen(model));
}

/* ---- responses: plain ------------------------------------------------------ */

/* OpenAI's tool_calls entry for a tool_use block; one without an input
 * object is a call without arguments. */
static int tool_call_json(llmux_buf_t *b, llmux_buf_t *scratch, json_t *block) {
  json_t *input = json_object_get(block, "input");
  int rc;
  scratch->len = 0;
  rc = json_is_object(input) ? dump_json(scratch, input) : buf_puts(scratch, "{}");
  rc |= buf_puts(b, "{\"id\":");
  rc |= buf_json_str(b, str_at(block, "id") ? str_at(block, "id") : "");
  rc |= buf_puts(b, ",\"type\":\"function\",\"function\":{\"name\":");
  rc |= buf_json_str(b, str_at(block, "name") ? str_at(block, "name") : "");
  rc |= buf_puts(b, ",\"arguments\":");
  rc |= host->buf_append_json_str(b, scratch->base, scratch->len);
  return rc | buf_puts(b, "}}");
}

static int is_json_tool(const anthropic_txn_t *t, json_t *block) {
  const char *name = str_at(block, "name");
  return t->json_tool[0] && name != NULL && strcmp(name, t->json_tool) == 0;
}

/* The message object of the choice: content text and tool calls. With
 * response_format emulated, the forced tool's input is the content (any
 * text beside it is dropped: the client parses the content as JSON). */
static int message_json(llmux_buf_t *b, anthropic_txn_t *t, json_t *content) {
  llmux_buf_t text = {0}, calls = {0};
  json_t *block;
  size_t i;
  int rc = 0, ncalls = 0, answered = 0;
  json_array_foreach(content, i, block) {
    if (is_type(block, "tool_use") && is_json_tool(t, block) && !answered) {
      json_t *input = json_object_get(block, "input");
      answered = 1;
      text.len = 0;
      rc |= json_is_object(input) ? dump_json(&text, input) : buf_puts(&text, "{}");
    } else if (is_type(block, "text") && str_at(block, "text")) {
      if (!answered) rc |= buf_puts(&text, str_at(block, "text"));
    } else if (is_type(block, "tool_use")) {
      if (ncalls++) rc |= buf_puts(&calls, ",");
      rc |= tool_call_json(&calls, &t->scratch, block);
    } /* thinking and server-side blocks have no OpenAI counterpart */
  }
  t->ntools = ncalls;
  rc |= buf_puts(b, "{\"role\":\"assistant\",\"content\":");
  if (text.len || ncalls == 0) rc |= host->buf_append_json_str(b, text.base ? text.base : "",
                                                               text.len);
  else rc |= buf_puts(b, "null");
  if (ncalls) {
    rc |= buf_puts(b, ",\"tool_calls\":[");
    rc |= host->buf_append(b, calls.base, calls.len);
    rc |= buf_puts(b, "]");
  }
  rc |= buf_puts(b, ",\"refusal\":null}");
  host->buf_free(&text);
  host->buf_free(&calls);
  return rc;
}

/* The whole Anthropic message in t->in, emitted as one chat.completion. */
static int emit_message(llmux_txn_t *txn, anthropic_txn_t *t) {
  json_t *m = load_json(t->in.base, t->in.len, &t->as_reals);
  const char *id = str_at(m, "id"), *model = str_at(m, "model");
  llmux_buf_t *b = &t->out;
  int rc = 0;
  if (!is_type(m, "message") || !json_is_array(json_object_get(m, "content"))) {
    json_decref(m);
    return LLMUX_EUPSTREAM;
  }
  read_usage(t, json_object_get(m, "usage"));
  txn->usage.prompt_tokens = t->prompt_tokens;
  txn->usage.completion_tokens = t->completion_tokens;
  set_served_model(txn, model);
  b->len = 0;
  rc |= buf_puts(b, "{\"id\":");
  rc |= buf_json_str(b, id ? id : "msg_unknown");
  rc |= host->buf_printf(b, ",\"object\":\"chat.completion\",\"created\":%lld,\"model\":",
                         (long long)time(NULL));
  rc |= buf_json_str(b, model ? model : txn->provider_model);
  rc |= buf_puts(b, ",\"choices\":[{\"index\":0,\"message\":");
  rc |= message_json(b, t, json_object_get(m, "content"));
  rc |= host->buf_printf(b, ",\"logprobs\":null,\"finish_reason\":\"%s\"}],\"usage\":",
                         finish_of(t, str_at(m, "stop_reason")));
  rc |= usage_json(b, t);
  rc |= buf_puts(b, "}");
  json_decref(m);
  if (rc != 0) return LLMUX_ENOMEM;
  return host->emit(txn, b->base, b->len);
}

/* ---- responses: streams ---------------------------------------------------- */

static int emit_out(llmux_txn_t *txn, anthropic_txn_t *t) {
  return host->emit(txn, t->out.base, t->out.len);
}

/* One chat.completion.chunk: `delta` is a JSON object's text, `finish` NULL
 * for a chunk that finishes nothing. */
static int emit_chunk(llmux_txn_t *txn, anthropic_txn_t *t, const char *delta,
                      size_t dlen, const char *finish) {
  int rc = 0;
  t->out.len = 0;
  rc |= buf_puts(&t->out, "data: ");
  rc |= host->buf_append(&t->out, t->prefix.base, t->prefix.len);
  rc |= buf_puts(&t->out, "{\"index\":0,\"delta\":");
  rc |= host->buf_append(&t->out, delta, dlen);
  rc |= buf_puts(&t->out, ",\"logprobs\":null,\"finish_reason\":");
  if (finish) rc |= host->buf_printf(&t->out, "\"%s\"", finish);
  else rc |= buf_puts(&t->out, "null");
  rc |= buf_puts(&t->out, "}]}\n\n");
  return rc ? LLMUX_ENOMEM : emit_out(txn, t);
}

/* An error in OpenAI's shape, in-band, and the end of the stream. */
static int emit_stream_error(llmux_txn_t *txn, anthropic_txn_t *t, const char *type,
                             const char *msg) {
  int rc = 0;
  t->state = STREAM_DONE;
  t->out.len = 0;
  rc |= buf_puts(&t->out, "data: {\"error\":{\"message\":");
  rc |= buf_json_str(&t->out, msg);
  rc |= buf_puts(&t->out, ",\"type\":");
  rc |= buf_json_str(&t->out, type);
  rc |= buf_puts(&t->out, ",\"param\":null,\"code\":");
  rc |= buf_json_str(&t->out, type);
  rc |= buf_puts(&t->out, "}}\n\n");
  return rc ? LLMUX_ENOMEM : emit_out(txn, t);
}

static int on_message_start(llmux_txn_t *txn, anthropic_txn_t *t, json_t *ev) {
  json_t *msg = json_object_get(ev, "message");
  const char *id = str_at(msg, "id"), *model = str_at(msg, "model");
  static const char role[] = "{\"role\":\"assistant\",\"content\":\"\"}";
  int rc = 0;
  if (t->state != STREAM_WAIT_START) return LLMUX_EUPSTREAM;
  read_usage(t, json_object_get(msg, "usage"));
  txn->usage.prompt_tokens = t->prompt_tokens;
  set_served_model(txn, model);
  rc |= buf_puts(&t->prefix, "{\"id\":");
  rc |= buf_json_str(&t->prefix, id ? id : "msg_unknown");
  rc |= host->buf_printf(&t->prefix,
                         ",\"object\":\"chat.completion.chunk\",\"created\":%lld,\"model\":",
                         (long long)time(NULL));
  rc |= buf_json_str(&t->prefix, model ? model : txn->provider_model);
  rc |= buf_puts(&t->prefix, ",\"choices\":[");
  if (rc != 0) return LLMUX_ENOMEM;
  t->state = STREAM_OPEN;
  return emit_chunk(txn, t, role, sizeof role - 1, NULL);
}

/* The event's content block index; -1 when it is not an integer (a real,
 * a string, missing), which every use below refuses. */
static json_int_t block_index(const anthropic_txn_t *t, json_t *ev) {
  json_int_t i;
  return int_in(json_object_get(ev, "index"), t->as_reals, 0, INT32_MAX, &i) ? i : -1;
}

/* The tool-call index of content block `index`, JSON_BLOCK, or -1. */
static int block_tool(const anthropic_txn_t *t, json_int_t index) {
  const int *map = (const int *)(void *)t->block_tool.base;
  if (index < 0 || (size_t)index >= t->block_tool.len / sizeof(int)) return -1;
  return map[index];
}

static int set_block_tool(anthropic_txn_t *t, json_int_t index, int tool) {
  int none = -1;
  if (index < 0 || index > 4096) return LLMUX_EUPSTREAM;
  while (t->block_tool.len / sizeof(int) <= (size_t)index) {
    if (host->buf_append(&t->block_tool, &none, sizeof none) != 0) return LLMUX_ENOMEM;
  }
  ((int *)(void *)t->block_tool.base)[index] = tool;
  return 0;
}

static int emit_text(llmux_txn_t *txn, anthropic_txn_t *t, const char *text) {
  int rc;
  if (text == NULL || *text == '\0') return 0;
  t->scratch.len = 0;
  rc = buf_puts(&t->scratch, "{\"content\":");
  rc |= buf_json_str(&t->scratch, text);
  rc |= buf_puts(&t->scratch, "}");
  return rc ? LLMUX_ENOMEM : emit_chunk(txn, t, t->scratch.base, t->scratch.len, NULL);
}

/* A tool_use block opens a tool call: its index, id, name, no arguments yet. */
static int on_block_start(llmux_txn_t *txn, anthropic_txn_t *t, json_t *ev) {
  json_t *block = json_object_get(ev, "content_block");
  json_int_t index = block_index(t, ev);
  int rc, tool;
  if (is_type(block, "text")) return emit_text(txn, t, str_at(block, "text"));
  if (!is_type(block, "tool_use")) return 0; /* thinking, server tools: not OpenAI's */
  if (is_json_tool(t, block)) { /* content follows */
    rc = set_block_tool(t, index, t->json_seen ? JSON_IGNORED : JSON_BLOCK);
    t->json_seen = 1;
    return rc;
  }
  tool = t->ntools++;
  if ((rc = set_block_tool(t, index, tool)) != 0) return rc;
  t->scratch.len = 0;
  rc = host->buf_printf(&t->scratch, "{\"tool_calls\":[{\"index\":%d,\"id\":", tool);
  rc |= buf_json_str(&t->scratch, str_at(block, "id") ? str_at(block, "id") : "");
  rc |= buf_puts(&t->scratch, ",\"type\":\"function\",\"function\":{\"name\":");
  rc |= buf_json_str(&t->scratch, str_at(block, "name") ? str_at(block, "name") : "");
  rc |= buf_puts(&t->scratch, ",\"arguments\":\"\"}}]}");
  return rc ? LLMUX_ENOMEM : emit_chunk(txn, t, t->scratch.base, t->scratch.len, NULL);
}

static int on_block_delta(llmux_txn_t *txn, anthropic_txn_t *t, json_t *ev) {
  json_t *delta = json_object_get(ev, "delta");
  const char *part;
  int tool, rc;
  if (is_type(delta, "text_delta")) return emit_text(txn, t, str_at(delta, "text"));
  if (!is_type(delta, "input_json_delta")) return 0; /* thinking, signatures, citations */
  part = str_at(delta, "partial_json");
  tool = block_tool(t, block_index(t, ev));
  if (tool == JSON_BLOCK && part != NULL) { /* the emulated JSON answer, as content */
    t->json_sent += strlen(part);
    return emit_text(txn, t, part);
  }
  if (tool == JSON_IGNORED) return 0;
  if (tool < 0) return LLMUX_EUPSTREAM;
  if (part == NULL || *part == '\0') return 0;
  t->scratch.len = 0;
  rc = host->buf_printf(&t->scratch,
                        "{\"tool_calls\":[{\"index\":%d,\"function\":{\"arguments\":", tool);
  rc |= buf_json_str(&t->scratch, part);
  rc |= buf_puts(&t->scratch, "}}]}");
  return rc ? LLMUX_ENOMEM : emit_chunk(txn, t, t->scratch.base, t->scratch.len, NULL);
}

/* The end of the emulated JSON answer's block: one that streamed no input
 * at all was an empty object. */
static int on_block_stop(llmux_txn_t *txn, anthropic_txn_t *t, json_t *ev) {
  if (block_tool(t, block_index(t, ev)) != JSON_BLOCK || t->json_sent > 0) return 0;
  t->json_sent = 2;
  return emit_text(txn, t, "{}");
}

static int on_message_delta(llmux_txn_t *txn, anthropic_txn_t *t, json_t *ev) {
  json_t *stop = json_object_get(json_object_get(ev, "delta"), "stop_reason");
  read_usage(t, json_object_get(ev, "usage"));
  txn->usage.prompt_tokens = t->prompt_tokens;
  txn->usage.completion_tokens = t->completion_tokens;
  if (!json_is_string(stop) || t->finish_sent) return 0;
  t->finish_sent = 1;
  return emit_chunk(txn, t, "{}", 2, finish_of(t, json_string_value(stop)));
}

static int on_message_stop(llmux_txn_t *txn, anthropic_txn_t *t) {
  int rc = 0;
  if (!t->finish_sent) {
    t->finish_sent = 1;
    rc = emit_chunk(txn, t, "{}", 2, "stop");
  }
  if (rc == 0 && t->include_usage) {
    t->out.len = 0;
    rc = buf_puts(&t->out, "data: ");
    rc |= host->buf_append(&t->out, t->prefix.base, t->prefix.len);
    rc |= buf_puts(&t->out, "],\"usage\":");
    rc |= usage_json(&t->out, t);
    rc |= buf_puts(&t->out, "}\n\n");
    rc = rc ? LLMUX_ENOMEM : emit_out(txn, t);
  }
  t->state = STREAM_DONE;
  return rc ? rc : host->emit(txn, "data: [DONE]\n\n", 14);
}

static int on_error_event(llmux_txn_t *txn, anthropic_txn_t *t, json_t *ev) {
  json_t *err = json_object_get(ev, "error");
  const char *type = str_at(err, "type"), *msg = str_at(err, "message");
  char text[512];
  snprintf(text, sizeof text, "Anthropic ended the stream with %s: %s",
           type ? type : "an error", msg ? msg : "no details");
  return emit_stream_error(txn, t, type ? type : "api_error", text);
}

/* One complete SSE event: its data. */
static int on_event(llmux_txn_t *txn, anthropic_txn_t *t, llmux_str_t data) {
  json_t *ev = load_json(data.base, data.len, &t->as_reals);
  const char *type = str_at(ev, "type");
  int rc = 0;
  if (type == NULL) rc = LLMUX_EUPSTREAM;
  else if (strcmp(type, "error") == 0) rc = on_error_event(txn, t, ev);
  else if (strcmp(type, "message_start") == 0) rc = on_message_start(txn, t, ev);
  else if (strcmp(type, "ping") == 0) rc = 0;
  else if (t->state != STREAM_OPEN) rc = LLMUX_EUPSTREAM; /* nothing before message_start */
  else if (strcmp(type, "content_block_start") == 0) rc = on_block_start(txn, t, ev);
  else if (strcmp(type, "content_block_delta") == 0) rc = on_block_delta(txn, t, ev);
  else if (strcmp(type, "message_delta") == 0) rc = on_message_delta(txn, t, ev);
  else if (strcmp(type, "message_stop") == 0) rc = on_message_stop(txn, t);
  else if (strcmp(type, "content_block_stop") == 0) rc = on_block_stop(txn, t, ev);
  /* event types added later need nothing */
  json_decref(ev);
  return rc;
}

/* Feeds bytes to the splitter and handles each complete event, until the
 * stream is done (what follows message_stop is ignored). With eof, a last
 * event without its blank line still counts, and a stream that never said
 * message_stop is broken, which the client hears. */
static int feed_sse(llmux_txn_t *txn, anthropic_txn_t *t, const char *data, size_t len,
                    int eof) {
  llmux_str_t ev;
  int rc = 0, more = 0;
  if (t->sse == NULL && (t->sse = host->split_new(LLMUX_SPLIT_SSE, LINE_MAX_BYTES)) == NULL)
    return LLMUX_ENOMEM;
  while (rc == 0 && t->state != STREAM_DONE &&
         (more = host->split_next(t->sse, &data, &len, eof, &ev)) > 0)
    rc = on_event(txn, t, ev);
  if (rc == 0 && more < 0) rc = more;
  if (rc == 0 && eof && t->state != STREAM_DONE)
    return emit_stream_error(txn, t, "upstream_error",
                             "The stream from Anthropic ended before message_stop.");
  return rc;
}

static int anthropic_parse_response(void *instance, llmux_txn_t *txn, const char *data,
                                    size_t len, int eof) {
  anthropic_txn_t *t = txn->data;
  int rc = 0;
  (void)instance;
  if (t == NULL) return LLMUX_EINVAL;
  if (txn->stream) {
    if (len > 0 || eof) rc = feed_sse(txn, t, data, len, eof);
    /* After a failure the host ends the stream with its own error event:
     * nothing more from us, not even at eof. */
    if (rc != 0) t->state = STREAM_DONE;
    return rc;
  }
  if (len > 0) {
    if (t->in.len + len > BODY_MAX_BYTES) return LLMUX_EUPSTREAM;
    if (host->buf_append(&t->in, data, len) != 0) return LLMUX_ENOMEM;
  }
  return eof ? emit_message(txn, t) : 0;
}

/* ---- errors ---------------------------------------------------------------- */

static int mentions(const char *s, const char *word) {
  return s != NULL && strcasestr(s, word) != NULL;
}

/* Out of money rather than out of rate: Anthropic says so with a 429 whose
 * details carry enforced_spend_limit_reached, or a 400 about credit or
 * usage limits. Waiting a minute will not help; another provider will. */
static int is_spend_limit(const char *code, const char *msg) {
  return mentions(code, "spend_limit") || mentions(msg, "spend limit") ||
         mentions(msg, "credit balance") || mentions(msg, "billing") ||
         mentions(msg, "usage limit") || mentions(msg, "credits");
}

static int is_too_long(const char *msg) {
  return mentions(msg, "prompt is too long") || mentions(msg, "context limit") ||
         mentions(msg, "context window") || mentions(msg, "context length");
}

static int type_is(const char *type, const char *want) {
  return type != NULL && strcmp(type, want) == 0;
}

/* The status Anthropic documents for each error type: the type decides
 * when it is there (a proxy in between may change the status). */
static int status_of_type(const char *type, int status) {
  static const struct { const char *type; int status; } map[] = {
    {"invalid_request_error", 400}, {"authentication_error", 401}, {"billing_error", 402},
    {"permission_error", 403}, {"not_found_error", 404}, {"request_too_large", 413},
    {"rate_limit_error", 429}, {"api_error", 500}, {"timeout_error", 504},
    {"overloaded_error", 529},
  };
  size_t i;
  for (i = 0; type != NULL && i < sizeof map / sizeof map[0]; i++)
    if (type_is(type, map[i].type)) return map[i].status;
  return status;
}

/* The host's reading of the status, refined by what Anthropic says. */
static void classify(int status, const char *type, const char *code, const char *msg,
                     llmux_error_info_t *out) {
  llmux_fail_class_t cls = host->classify_status(status_of_type(type, status), out);
  if (cls == LLMUX_FAIL_RATE_LIMITED && is_spend_limit(code, msg)) {
    out->cls = LLMUX_FAIL_QUOTA;
  } else if (cls == LLMUX_FAIL_BAD_REQUEST && is_too_long(msg)) {
    out->cls = LLMUX_FAIL_CONTEXT_LENGTH;
    out->retry_elsewhere = 1;
  } else if (cls == LLMUX_FAIL_BAD_REQUEST && is_spend_limit(code, msg)) {
    out->cls = LLMUX_FAIL_QUOTA;
    out->retry_elsewhere = 1;
  }
}

/* retry-after in milliseconds, read by the host (Anthropic sends whole
 * seconds; a fraction or a date is taken too): 0 when absent or not
 * believed. */
static uint64_t retry_after_ms(const llmux_txn_t *txn) {
  const llmux_str_t *v = host->header_get(txn->resp_headers, txn->nresp_headers, "retry-after");
  uint64_t ms = 0;
  if (v == NULL || host->parse_retry_after(v->base, v->len, 0, &ms) != 0) return 0;
  return ms;
}

static int anthropic_classify_error(void *instance, llmux_txn_t *txn, const char *body,
                                    size_t len, llmux_error_info_t *out) {
  json_t *root = len ? json_loadb(body, len, 0, NULL) : NULL;
  json_t *err = json_object_get(root, "error");
  const char *type = str_at(err, "type"), *msg = str_at(err, "message");
  const char *code = str_at(json_object_get(err, "details"), "error_code");
  (void)instance;
  classify(txn->status, type, code, msg, out);
  out->retry_after_ms = retry_after_ms(txn);
  if (msg != NULL) {
    if (type) host->buf_printf(&out->message, "%s: ", type);
    buf_puts(&out->message, msg);
  } else if (len > 0) {
    host->buf_append(&out->message, body, len > 300 ? 300 : len);
  }
  json_decref(root);
  return 0;
}

static void anthropic_txn_free(void *instance, llmux_txn_t *txn) {
  anthropic_txn_t *t = txn->data;
  (void)instance;
  if (t == NULL) return;
  host->buf_free(&t->body);
  host->buf_free(&t->in);
  host->split_free(t->sse);
  host->buf_free(&t->prefix);
  host->buf_free(&t->out);
  host->buf_free(&t->scratch);
  host->buf_free(&t->block_tool);
  host->free(t);
  txn->data = NULL;
}

/* ---- model listing (GET /models) ------------------------------------------- */

static int anthropic_models_request(void *instance, llmux_txn_t *txn) {
  anthropic_t *p = instance;
  int rc;
  txn->method = "GET";
  rc = buf_puts(&txn->path, "/models?limit=1000");
  rc |= host->buf_append(&txn->headers, p->head.base, p->head.len);
  return rc ? LLMUX_ENOMEM : 0;
}

static int anthropic_parse_models(void *instance, const char *body, size_t len,
                                  llmux_buf_t *names) {
  json_t *root = json_loadb(body, len, 0, NULL), *m;
  json_t *data = json_object_get(root, "data");
  size_t i;
  int rc = 0;
  (void)instance;
  if (!json_is_array(data)) {
    json_decref(root);
    return LLMUX_EUPSTREAM;
  }
  json_array_foreach(data, i, m) {
    const char *id = str_at(m, "id");
    if (id != NULL) rc |= host->buf_append(names, id, strlen(id) + 1);
  }
  json_decref(root);
  return rc ? LLMUX_ENOMEM : 0;
}

/* Anthropic speaks Messages: a Messages client's request passes through. */
static unsigned anthropic_features(void *instance) {
  (void)instance;
  return LLMUX_FEATURE_MESSAGES;
}

static const llmux_provider_t anthropic_provider = {
  .abi_major = LLMUX_PROVIDER_ABI_MAJOR,
  .abi_minor = LLMUX_PROVIDER_ABI_MINOR,
  .size = sizeof(llmux_provider_t),
  .name = "anthropic",
  .description = "Anthropic's Messages API (Claude) behind OpenAI's chat format",
  .config = anthropic_keys,
  .create = anthropic_create,
  .destroy = anthropic_destroy,
  .translate_request = anthropic_translate_request,
  .parse_response = anthropic_parse_response,
  .classify_error = anthropic_classify_error,
  .txn_free = anthropic_txn_free,
  .models_request = anthropic_models_request,
  .parse_models = anthropic_parse_models,
  .ratelimit_dialect = "anthropic",
  .features = anthropic_features,
};

/* Needs the host services of ABI 1.3 (status, retry-after, SSE splitter). */
LLMUX_PROVIDER_ENTRY_MIN(host, anthropic_provider, 3)
