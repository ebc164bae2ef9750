#define _GNU_SOURCE /* timegm */
/* The `ollama` provider plugin: Ollama's native API behind OpenAI's format.
 *
 *   POST /v1/chat/completions -> POST /api/chat  (NDJSON stream -> SSE chunks,
 *                                                 or one JSON -> chat.completion)
 *   POST /v1/embeddings       -> POST /api/embed (embeddings -> OpenAI list)
 *   llmux models              -> GET  /api/tags  (model names)
 *
 * Requests are rebuilt with jansson from the host's parsed body (the formats
 * differ too much for a splice). Responses are read one NDJSON line at a
 * time by the host's splitter, whatever the read boundaries; a stream is
 * translated line by line as it arrives, a plain answer is gathered and
 * sent once at the end.
 *
 * Ids: Ollama sends none, so they derive from a 64-bit FNV-1a hash H of the
 * client's request body: the answer is "chatcmpl-<H in hex>" and the tool
 * call at index i is "call_<hex of mix64(FNV-1a over "#i" seeded with H)>",
 * mix64 being splitmix64's finaliser. The same
 * request gets the same ids (a retry, a replay), different requests or
 * indexes different ones.
 *
 * Numbers from Ollama are untrusted: a token count (prompt_eval_count,
 * eval_count) that is not an integer of 0 to USAGE_MAX reaches the host as
 * unknown (-1) and is logged once per answer; created_at is read digit by
 * digit; a logprobs entry without a string token and a number is skipped.
 *
 * OpenAI features Ollama lacks are emulated or refused, never dropped in
 * silence:
 *  - tool_choice: Ollama has no such field. A named function sends only
 *    that tool, "required" sends them all, and both add a system line
 *    saying a tool call is required (the model may still answer in text);
 *    "none" sends no tools.
 *  - image_url with an http(s) URL: refused (400): Ollama takes inline
 *    images only, and the gateway does not fetch URLs for clients.
 *  - logprobs / top_logprobs map to Ollama's own (top-level `logprobs`,
 *    `top_logprobs` 0-20), and each line's `logprobs` entries come back as
 *    OpenAI's choices[].logprobs.content[] (token, logprob, bytes,
 *    top_logprobs), per chunk in streams.
 * Refusals reach the client in the plugin's words through txn->refusal
 * (ABI 1.4). */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "llmux/provider.h"

static const llmux_host_api_t *host;

#define LINE_MAX_BYTES ((size_t)64 << 20) /* one NDJSON line, or a whole plain body */
/* The most tokens one request is believed to use; a larger count is a
 * fault, not usage. */
#define USAGE_MAX 1000000000
#define TOP_LOGPROBS_MAX 20 /* OpenAI's and Ollama's limit */
/* Log probabilities are printed with 15 significant digits: "-0.1", not
 * jansson's default "-0.10000000000000001" (a log probability does not
 * need the last ulp). */
#define LOGPROB_PRECISION JSON_REAL_PRECISION(15)
#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

static const llmux_config_key_t ollama_keys[] = {
  {"keep_alive", LLMUX_KEY_STRING, NULL,
   "how long Ollama keeps the model loaded after a request (\"5m\", \"-1\" for ever)"},
  {"num_ctx", LLMUX_KEY_INT, NULL, "context window Ollama allocates (options.num_ctx)"},
  {NULL, 0, NULL, NULL}
};

/* One `[provider]` section. */
typedef struct {
  llmux_buf_t auth_line;  /* "Authorization: Bearer KEY\r\n" when a key is set */
  llmux_buf_t url;        /* base_url, for the user's advice */
  const char *name;       /* the section's name, borrowed from cfg, for logs */
  json_t *keep_alive;     /* NULL: Ollama's default */
  json_int_t num_ctx;     /* 0: Ollama's default */
} ollama_t;

/* One attempt. Everything here is the plugin's, freed in txn_free. */
typedef struct {
  llmux_buf_t body;       /* the upstream request JSON */
  llmux_split_t *lines;   /* the host's NDJSON splitter, made on first use */
  llmux_buf_t out;        /* the SSE frame or body being built */
  llmux_buf_t delta;      /* a chunk's delta object */
  uint64_t hash;          /* FNV-1a of the client's body: ids derive from it */
  char id[40];            /* "chatcmpl-..." */
  long long created;      /* from the first line's created_at */
  int include_usage;      /* stream_options.include_usage */
  int embed_base64;       /* encoding_format "base64" */
  int started;            /* saw a first line */
  int done;               /* saw done:true or an error line: ignore the rest */
  int failed;             /* garbage: no answer to give */
  int errored;            /* an {"error"} line: reported in-band (stream) */
  int as_reals;           /* the line at hand was read with integers as reals */
  const char *provider;   /* the instance's name, for logs */
  unsigned ntools;        /* tool calls so far: the next one's index */
  const char *done_reason;/* static */
  /* a plain (non-stream) answer, gathered line by line */
  llmux_buf_t content;
  llmux_buf_t thinking;
  json_t *tool_calls;     /* OpenAI tool_calls array, or NULL */
  /* logprobs, when the client asked: OpenAI entries not yet sent (a
   * stream's next chunk carries them) or, plain, all of them */
  int logprobs;
  json_t *lp;             /* array, or NULL */
} ollama_txn_t;

/* ---- small helpers ------------------------------------------------------ */

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
  const unsigned char *p = data;
  size_t i;
  for (i = 0; i < n; i++) {
    h ^= p[i];
    h *= FNV_PRIME;
  }
  return h;
}

/* A finaliser (splitmix64's) so ids of neighbouring indexes look unrelated. */
static uint64_t mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static int aps(llmux_buf_t *b, const char *s) {
  return host->buf_append(b, s, strlen(s));
}

static int dump_cb(const char *data, size_t n, void *ud) {
  return host->buf_append(ud, data, n) == 0 ? 0 : -1;
}

/* Appends v serialised compactly; 0 or LLMUX_ENOMEM. */
static int dump_json(llmux_buf_t *b, const json_t *v, size_t flags) {
  return json_dump_callback(v, dump_cb, b, JSON_COMPACT | JSON_ENCODE_ANY | flags) == 0
             ? 0 : LLMUX_ENOMEM;
}

static const char *str_of(const json_t *obj, const char *key) {
  return json_string_value(json_object_get(obj, key));
}

/* One line of Ollama's. jansson refuses a whole document for one integer
 * beyond 64 bits; rather than lose the answer over a count, such a line is
 * read again with every integer as a real (*as_reals set), and the count
 * checks refuse the huge ones. */
static json_t *load_json(const char *s, size_t n, int *as_reals) {
  json_t *v = json_loadb(s, n, 0, NULL);
  *as_reals = v == NULL;
  return v ? v : json_loadb(s, n, JSON_DECODE_INT_AS_REAL, NULL);
}

/* line[key] as a token count: 1 and *out when an integer of 0 to USAGE_MAX
 * (in a line read with integers as reals, a whole real: exact below 2^53),
 * 0 when absent or null, -1 for anything else, noted in `why` for the log. */
static int count_of(const ollama_txn_t *t, const json_t *line, const char *key, int64_t *out,
                    llmux_buf_t *why) {
  const json_t *v = json_object_get(line, key);
  double d;
  char *text;
  if (v == NULL || json_is_null(v)) return 0;
  if (json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) <= USAGE_MAX) {
    *out = json_integer_value(v);
    return 1;
  }
  d = json_real_value(v);
  if (t->as_reals && json_is_real(v) && d >= 0 && d <= USAGE_MAX && d == (double)(int64_t)d) {
    *out = (int64_t)d;
    return 1;
  }
  text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
  host->buf_printf(why, " %s=%.24s", key, text ? text : "?");
  free(text);
  return -1;
}

/* A count for the host: the value, or -1 (unknown) when bad; absent leaves *dst. */
static void read_count(const ollama_txn_t *t, const json_t *line, const char *key, int64_t *dst,
                       llmux_buf_t *why) {
  int64_t v = -1;
  int rc = count_of(t, line, key, &v, why);
  if (rc != 0) *dst = rc > 0 ? v : -1;
}

/* Logs the bad counts of an answer (read once, from its last line). */
static void log_bad_counts(const ollama_txn_t *t, llmux_buf_t *why) {
  if (why->len)
    host->log(LLMUX_LOG_LEVEL_WARN,
              "ollama: provider '%s' answered usage%.*s: not a count of 0 to %d tokens, "
              "reported as unknown", t->provider ? t->provider : "?", (int)why->len, why->base,
              USAGE_MAX);
  host->buf_free(why);
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
  host->log(LLMUX_LOG_LEVEL_INFO, "ollama: refused: %s", why);
  if (LLMUX_TXN_HAS(txn, refusal)) {
    txn->refusal.len = 0;
    aps(&txn->refusal, why);
  }
  return LLMUX_EINVAL;
}

/* ---- instance ----------------------------------------------------------- */

/* keep_alive as Ollama reads it: a number of seconds or a duration string. */
static json_t *keep_alive_value(const char *s) {
  char *end;
  long long v;
  if (s == NULL || *s == '\0') return NULL;
  v = strtoll(s, &end, 10);
  return *end == '\0' ? json_integer(v) : json_string(s);
}

static int ollama_create(const llmux_provider_config_t *cfg, void **instance, char *err,
                         size_t errlen) {
  ollama_t *p = host->malloc(sizeof *p);
  const char *ctx = cfg->get(cfg, "num_ctx");
  int rc = 0;
  if (p == NULL) return LLMUX_ENOMEM;
  memset(p, 0, sizeof *p);
  if (cfg->api_key != NULL && *cfg->api_key != '\0')
    rc |= host->buf_printf(&p->auth_line, "Authorization: Bearer %s\r\n", cfg->api_key);
  rc |= aps(&p->url, cfg->base_url ? cfg->base_url : "");
  p->name = cfg->name;
  p->keep_alive = keep_alive_value(cfg->get(cfg, "keep_alive"));
  if (ctx != NULL) p->num_ctx = strtoll(ctx, NULL, 10);
  if (rc != 0) {
    snprintf(err, errlen, "out of memory");
    host->buf_free(&p->auth_line);
    host->buf_free(&p->url);
    json_decref(p->keep_alive);
    host->free(p);
    return LLMUX_ENOMEM;
  }
  /* A common slip: the OpenAI-compatible URL given to the native plugin. */
  if (cfg->base_path != NULL && (strstr(cfg->base_path, "/v1") || strstr(cfg->base_path, "/api")))
    host->log(LLMUX_LOG_LEVEL_WARN,
              "provider '%s': plugin ollama appends /api/...: base_url %s should be the "
              "server's root (http://localhost:11434)", cfg->name, cfg->base_url);
  *instance = p;
  return 0;
}

static void ollama_destroy(void *instance) {
  ollama_t *p = instance;
  host->buf_free(&p->auth_line);
  host->buf_free(&p->url);
  json_decref(p->keep_alive);
  host->free(p);
}

/* ---- requests: messages --------------------------------------------------- */

/* "data:image/png;base64,AAAA" -> "AAAA"; NULL for anything else (Ollama
 * takes images inline only, it does not fetch URLs). */
static const char *data_url_base64(const char *url) {
  const char *comma;
  if (url == NULL || strncmp(url, "data:", 5) != 0) return NULL;
  comma = strchr(url, ',');
  if (comma == NULL || comma - url < 12 || strncmp(comma - 7, ";base64", 7) != 0) return NULL;
  return comma + 1;
}

static int is_web_url(const char *url) {
  return url != NULL && (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0);
}

/* Why a request cannot go to Ollama, for the client (after "Provider 'NAME' "). */
#define WHY_IMAGE_URL "takes only inline images (data: URLs); llmux does not fetch image URLs"

/* OpenAI content (string, null or parts) -> msg's content and images. An
 * image Ollama cannot take sets *why. */
static int convert_content(const json_t *content, json_t *msg, const char **why) {
  llmux_buf_t text = {0};
  json_t *images = NULL, *part;
  size_t i;
  int rc = 0, nomem = 0;
  if (json_is_string(content) || content == NULL || json_is_null(content)) {
    json_object_set_new(msg, "content", json_string(json_is_string(content)
                                                        ? json_string_value(content) : ""));
    return 0;
  }
  if (!json_is_array(content)) return LLMUX_EINVAL;
  json_array_foreach(content, i, part) {
    const char *type = str_of(part, "type"), *s;
    if (type && strcmp(type, "text") == 0 && (s = str_of(part, "text")) != NULL) {
      if (text.len) nomem |= aps(&text, "\n");
      nomem |= aps(&text, s);
    } else if (type && strcmp(type, "image_url") == 0) {
      const json_t *iu = json_object_get(part, "image_url");
      const char *url = json_is_string(iu) ? json_string_value(iu) : str_of(iu, "url");
      const char *b64 = data_url_base64(url);
      if (b64 == NULL) {
        host->log(LLMUX_LOG_LEVEL_WARN, "ollama: images must be data: URLs with base64 data");
        if (is_web_url(url)) *why = WHY_IMAGE_URL;
        rc = LLMUX_EINVAL;
        break;
      }
      if (images == NULL) images = json_array();
      json_array_append_new(images, json_string(b64));
    }
  }
  if (rc == 0) {
    json_object_set_new(msg, "content", json_stringn(text.base ? text.base : "", text.len));
    if (images) json_object_set(msg, "images", images);
  }
  json_decref(images);
  host->buf_free(&text);
  return rc ? rc : nomem ? LLMUX_ENOMEM : 0;
}

/* An assistant's OpenAI tool_calls -> Ollama's (arguments as objects), and
 * each id's function name remembered for the tool messages that answer. */
static int convert_tool_calls(const json_t *calls, json_t *msg, json_t *names) {
  json_t *out = json_array(), *call;
  size_t i;
  json_array_foreach(calls, i, call) {
    const json_t *fn = json_object_get(call, "function");
    const char *name = str_of(fn, "name"), *args = str_of(fn, "arguments"), *id;
    json_t *obj = args && *args ? json_loads(args, 0, NULL) : json_object();
    if (name == NULL || !json_is_object(obj)) {
      json_decref(obj);
      json_decref(out);
      return LLMUX_EINVAL;
    }
    json_array_append_new(out, json_pack("{s:{s:s,s:o}}", "function", "name", name,
                                         "arguments", obj));
    if ((id = str_of(call, "id")) != NULL) json_object_set_new(names, id, json_string(name));
  }
  json_object_set_new(msg, "tool_calls", out);
  return 0;
}

static int convert_message(const json_t *m, json_t *names, json_t *out, const char **why) {
  const char *role = str_of(m, "role"), *id, *name;
  json_t *msg;
  int rc;
  if (role == NULL) return LLMUX_EINVAL;
  if (strcmp(role, "developer") == 0) role = "system";
  if (strcmp(role, "function") == 0) role = "tool";
  msg = json_pack("{s:s}", "role", role);
  rc = convert_content(json_object_get(m, "content"), msg, why);
  if (rc == 0 && strcmp(role, "assistant") == 0 &&
      json_array_size(json_object_get(m, "tool_calls")) > 0)
    rc = convert_tool_calls(json_object_get(m, "tool_calls"), msg, names);
  if (rc == 0 && strcmp(role, "tool") == 0) {
    id = str_of(m, "tool_call_id");
    name = id ? json_string_value(json_object_get(names, id)) : str_of(m, "name");
    if (name) json_object_set_new(msg, "tool_name", json_string(name));
  }
  if (rc == 0) json_array_append(out, msg);
  json_decref(msg);
  return rc;
}

static int convert_messages(const json_t *in, json_t *req, const char **why) {
  json_t *out = json_array(), *names = json_object(), *m;
  size_t i;
  int rc = 0;
  json_array_foreach(in, i, m) {
    if ((rc = convert_message(m, names, out, why)) != 0) break;
  }
  if (rc == 0) json_object_set(req, "messages", out);
  json_decref(out);
  json_decref(names);
  return rc;
}

/* ---- requests: options, tools, format ------------------------------------ */

static void copy_number(const json_t *from, const char *key, json_t *to, const char *as) {
  const json_t *v = json_object_get(from, key);
  if (json_is_number(v)) json_object_set(to, as, (json_t *)v);
}

static json_t *convert_options(const ollama_t *p, const json_t *body) {
  json_t *o = json_object();
  const json_t *stop = json_object_get(body, "stop");
  copy_number(body, "temperature", o, "temperature");
  copy_number(body, "top_p", o, "top_p");
  copy_number(body, "seed", o, "seed");
  copy_number(body, "frequency_penalty", o, "frequency_penalty");
  copy_number(body, "presence_penalty", o, "presence_penalty");
  copy_number(body, "max_tokens", o, "num_predict");
  copy_number(body, "max_completion_tokens", o, "num_predict"); /* the newer name wins */
  if (json_is_string(stop)) json_object_set_new(o, "stop", json_pack("[O]", stop));
  else if (json_is_array(stop) && json_array_size(stop) > 0) json_object_set(o, "stop", (json_t *)stop);
  if (p->num_ctx > 0) json_object_set_new(o, "num_ctx", json_integer(p->num_ctx));
  return o;
}

/* OpenAI tools -> Ollama's: the same shape, without OpenAI-only keys. */
static json_t *convert_tools(const json_t *tools) {
  json_t *out = json_array(), *t;
  size_t i;
  json_array_foreach(tools, i, t) {
    const json_t *fn = json_object_get(t, "function");
    json_t *f;
    if (!json_is_object(fn) || str_of(fn, "name") == NULL) continue;
    f = json_pack("{s:O}", "name", json_object_get(fn, "name"));
    if (json_object_get(fn, "description"))
      json_object_set(f, "description", json_object_get(fn, "description"));
    if (json_object_get(fn, "parameters"))
      json_object_set(f, "parameters", json_object_get(fn, "parameters"));
    json_array_append_new(out, json_pack("{s:s,s:o}", "type", "function", "function", f));
  }
  return out;
}

/* response_format: json_object -> "json"; json_schema -> the schema. */
static json_t *convert_format(const json_t *rf) {
  const char *type = str_of(rf, "type");
  const json_t *schema;
  if (type == NULL) return NULL;
  if (strcmp(type, "json_object") == 0) return json_string("json");
  schema = json_object_get(json_object_get(rf, "json_schema"), "schema");
  if (strcmp(type, "json_schema") == 0 && json_is_object(schema)) return json_incref((json_t *)schema);
  return NULL;
}

/* A line for the model at the top of the conversation: appended to a
 * leading system message, or as one. */
static void add_system_line(json_t *req, const char *line) {
  json_t *msgs = json_object_get(req, "messages"), *first = json_array_get(msgs, 0);
  const char *role = str_of(first, "role"), *text = str_of(first, "content");
  llmux_buf_t b = {0};
  if (role != NULL && strcmp(role, "system") == 0 && text != NULL) {
    if (*text) aps(&b, text), aps(&b, "\n\n");
    aps(&b, line);
    if (b.base) json_object_set_new(first, "content", json_stringn(b.base, b.len));
    host->buf_free(&b);
    return;
  }
  json_array_insert_new(msgs, 0, json_pack("{s:s,s:s}", "role", "system", "content", line));
}

/* The tool in `tools` named `name`, or NULL. */
static const json_t *tool_named(const json_t *tools, const char *name) {
  const json_t *t;
  size_t i;
  json_array_foreach(tools, i, t) {
    const char *n = str_of(json_object_get(t, "function"), "name");
    if (n != NULL && strcmp(n, name) == 0) return t;
  }
  return NULL;
}

/* tools and tool_choice: Ollama has no tool_choice, so a forced choice
 * sends only what may be called, and says a call is required. */
static int choose_tools(const ollama_t *p, llmux_txn_t *txn, const json_t *body, json_t *req) {
  const json_t *tools = json_object_get(body, "tools"), *tc = json_object_get(body, "tool_choice");
  const char *choice = json_string_value(tc);
  const char *name = str_of(json_object_get(tc, "function"), "name");
  const json_t *one;
  json_t *list;
  char line[160];
  if (json_array_size(tools) == 0 || (choice && strcmp(choice, "none") == 0)) return 0;
  if (name != NULL) {
    if ((one = tool_named(tools, name)) == NULL)
      return refuse(txn, "Provider '%s': tool_choice names the function '%.64s', which is not "
                    "in tools", p->name ? p->name : "ollama", name);
    list = json_pack("[O]", one);
    json_object_set_new(req, "tools", convert_tools(list));
    json_decref(list);
    snprintf(line, sizeof line, "You must answer by calling the tool `%.64s`.", name);
    add_system_line(req, line);
    return 0;
  }
  json_object_set_new(req, "tools", convert_tools(tools));
  if (choice && strcmp(choice, "required") == 0)
    add_system_line(req, "You must answer by calling one or more of the provided tools.");
  return 0;
}

/* logprobs: true (or top_logprobs above 0) -> Ollama's own fields. */
static void ask_logprobs(ollama_txn_t *t, const json_t *body, json_t *req) {
  const json_t *top = json_object_get(body, "top_logprobs");
  json_int_t n = json_is_integer(top) ? json_integer_value(top) : 0;
  if (!json_is_true(json_object_get(body, "logprobs")) && n <= 0) return;
  t->logprobs = 1;
  json_object_set_new(req, "logprobs", json_true());
  if (n > 0) json_object_set_new(req, "top_logprobs",
                                 json_integer(n > TOP_LOGPROBS_MAX ? TOP_LOGPROBS_MAX : n));
}

static int build_chat(const ollama_t *p, llmux_txn_t *txn, const json_t *body, json_t *req) {
  const char *why = NULL;
  json_t *options, *format;
  int rc = convert_messages(json_object_get(body, "messages"), req, &why);
  if (rc != 0 && why != NULL) return refuse(txn, "Provider '%s' %s", p->name ? p->name : "ollama", why);
  if (rc != 0) return rc;
  json_object_set_new(req, "stream", json_boolean(txn->stream));
  options = convert_options(p, body);
  if (json_object_size(options) > 0) json_object_set(req, "options", options);
  json_decref(options);
  if ((rc = choose_tools(p, txn, body, req)) != 0) return rc;
  if ((format = convert_format(json_object_get(body, "response_format"))) != NULL)
    json_object_set_new(req, "format", format);
  ask_logprobs(txn->data, body, req);
  return 0;
}

/* input: a string or strings (token arrays are OpenAI-only). */
static int build_embed(const ollama_t *p, const json_t *body, json_t *req) {
  const json_t *input = json_object_get(body, "input"), *v;
  size_t i;
  if (json_is_array(input)) {
    json_array_foreach(input, i, v) {
      if (!json_is_string(v)) return LLMUX_EINVAL;
    }
  } else if (!json_is_string(input)) {
    return LLMUX_EINVAL;
  }
  json_object_set(req, "input", (json_t *)input);
  copy_number(body, "dimensions", req, "dimensions");
  if (p->num_ctx > 0) json_object_set_new(req, "options", json_pack("{s:I}", "num_ctx", p->num_ctx));
  return 0;
}

static void txn_reset(ollama_txn_t *t) {
  t->body.len = t->out.len = t->delta.len = 0;
  host->split_reset(t->lines);
  t->content.len = t->thinking.len = 0;
  json_decref(t->tool_calls);
  t->tool_calls = NULL;
  json_decref(t->lp);
  t->lp = NULL;
  t->logprobs = 0;
  t->started = t->done = t->failed = t->errored = 0;
  t->ntools = 0;
  t->created = 0;
  t->done_reason = NULL;
}

static int ollama_translate_request(void *instance, llmux_txn_t *txn) {
  ollama_t *p = instance;
  ollama_txn_t *t = txn->data;
  const json_t *body = host->request_json(txn);
  const char *path = txn->endpoint == LLMUX_ENDPOINT_CHAT ? "/api/chat"
                   : txn->endpoint == LLMUX_ENDPOINT_EMBEDDINGS ? "/api/embed" : NULL;
  json_t *req;
  int rc;
  if (path == NULL || !json_is_object(body)) return LLMUX_EINVAL;
  if (t == NULL) {
    if ((t = host->malloc(sizeof *t)) == NULL) return LLMUX_ENOMEM;
    memset(t, 0, sizeof *t);
    txn->data = t;
  }
  txn_reset(t);
  t->provider = p->name;
  t->hash = fnv1a(FNV_OFFSET, txn->body.base, txn->body.len);
  snprintf(t->id, sizeof t->id, "chatcmpl-%016llx", (unsigned long long)t->hash);
  t->include_usage = json_is_true(json_object_get(json_object_get(body, "stream_options"),
                                                  "include_usage"));
  t->embed_base64 = str_of(body, "encoding_format") &&
                    strcmp(str_of(body, "encoding_format"), "base64") == 0;
  req = json_pack("{s:s}", "model", txn->provider_model);
  rc = txn->endpoint == LLMUX_ENDPOINT_CHAT ? build_chat(p, txn, body, req)
                                            : build_embed(p, body, req);
  if (rc == 0 && p->keep_alive) json_object_set(req, "keep_alive", p->keep_alive);
  if (rc == 0) rc = dump_json(&t->body, req, 0);
  json_decref(req);
  if (rc != 0) return rc;
  if (host->buf_append(&txn->path, path, strlen(path)) != 0) return LLMUX_ENOMEM;
  if (p->auth_line.len &&
      host->buf_append(&txn->headers, p->auth_line.base, p->auth_line.len) != 0)
    return LLMUX_ENOMEM;
  txn->body_parts[0] = (llmux_str_t){t->body.base, t->body.len};
  txn->nbody_parts = 1;
  return 0;
}

/* ---- responses: SSE frames --------------------------------------------- */

static int append_model(llmux_buf_t *b, const llmux_txn_t *txn) {
  if (txn->served_model.len)
    return host->buf_append_json_str(b, txn->served_model.base, txn->served_model.len);
  return host->buf_append_json_str(b, txn->provider_model, strlen(txn->provider_model));
}

/* "data: {...chunk head...,"choices":[" into t->out. */
static int chunk_begin(ollama_txn_t *t, const llmux_txn_t *txn) {
  int rc = 0;
  t->out.len = 0;
  rc |= host->buf_printf(&t->out, "data: {\"id\":\"%s\",\"object\":\"chat.completion.chunk\","
                         "\"created\":%lld,\"model\":", t->id, t->created);
  rc |= append_model(&t->out, txn);
  rc |= aps(&t->out, ",\"system_fingerprint\":\"fp_ollama\",\"choices\":[");
  return rc ? LLMUX_ENOMEM : 0;
}

/* One chunk whose delta is t->delta; finish may be NULL. The logprobs
 * entries not sent yet go with it. */
static int send_delta(ollama_txn_t *t, llmux_txn_t *txn, const char *finish) {
  int rc = chunk_begin(t, txn);
  rc |= aps(&t->out, "{\"index\":0,\"delta\":");
  rc |= host->buf_append(&t->out, t->delta.base, t->delta.len);
  rc |= aps(&t->out, ",\"logprobs\":");
  if (json_array_size(t->lp) > 0) {
    rc |= aps(&t->out, "{\"content\":");
    rc |= dump_json(&t->out, t->lp, LOGPROB_PRECISION);
    rc |= aps(&t->out, "}");
    json_array_clear(t->lp);
  } else {
    rc |= aps(&t->out, "null");
  }
  if (finish) rc |= host->buf_printf(&t->out, ",\"finish_reason\":\"%s\"}]}\n\n", finish);
  else rc |= aps(&t->out, ",\"finish_reason\":null}]}\n\n");
  if (rc != 0) return LLMUX_ENOMEM;
  return host->emit(txn, t->out.base, t->out.len);
}

static int send_text_delta(ollama_txn_t *t, llmux_txn_t *txn, const char *key, const char *s) {
  int rc;
  t->delta.len = 0;
  rc = host->buf_printf(&t->delta, "{\"%s\":", key);
  rc |= host->buf_append_json_str(&t->delta, s, strlen(s));
  rc |= aps(&t->delta, "}");
  return rc ? LLMUX_ENOMEM : send_delta(t, txn, NULL);
}

/* The stream ends in-band in OpenAI's error shape (no [DONE] after it). */
static int send_error_event(ollama_txn_t *t, llmux_txn_t *txn, const char *msg) {
  int rc;
  t->out.len = 0;
  rc = aps(&t->out, "data: {\"error\":{\"message\":");
  rc |= host->buf_append_json_str(&t->out, msg, strlen(msg));
  rc |= aps(&t->out, ",\"type\":\"upstream_error\",\"param\":null,\"code\":\"upstream_error\"}}\n\n");
  return rc ? LLMUX_ENOMEM : host->emit(txn, t->out.base, t->out.len);
}

static long long usage_or_zero(int64_t v) {
  return v > 0 ? (long long)v : 0;
}

/* The finish chunk, the usage chunk when asked for, and [DONE]. */
static int send_end(ollama_txn_t *t, llmux_txn_t *txn) {
  int rc;
  t->delta.len = 0;
  if (aps(&t->delta, "{}") != 0) return LLMUX_ENOMEM;
  if ((rc = send_delta(t, txn, t->done_reason)) != 0) return rc;
  if (t->include_usage) {
    long long pt = usage_or_zero(txn->usage.prompt_tokens);
    long long ct = usage_or_zero(txn->usage.completion_tokens);
    rc = chunk_begin(t, txn);
    rc |= host->buf_printf(&t->out, "],\"usage\":{\"prompt_tokens\":%lld,\"completion_tokens\":"
                           "%lld,\"total_tokens\":%lld}}\n\n", pt, ct, pt + ct);
    if (rc != 0) return LLMUX_ENOMEM;
    if ((rc = host->emit(txn, t->out.base, t->out.len)) != 0) return rc;
  }
  return host->emit(txn, "data: [DONE]\n\n", 14);
}

/* ---- responses: one Ollama line ---------------------------------------- */

/* The number in s[at..at+n), all digits (checked by the caller). */
static int digits_at(const char *s, int at, int n) {
  int v = 0;
  for (; n > 0; n--, at++) v = v * 10 + (s[at] - '0');
  return v;
}

/* "2024-08-07T03:57:33.0365888Z" -> Unix seconds (UTC); now when unreadable.
 * Matched against a fixed shape, so no field can overflow (sscanf's %d
 * would on "99999999999-..."): each is a few digits, then range-checked. */
static long long parse_created(const char *s) {
  static const char shape[] = "dddd-dd-ddTdd:dd:dd";
  struct tm tm;
  int i;
  for (i = 0; s != NULL && shape[i] != '\0'; i++) {
    if (shape[i] == 'd' ? s[i] < '0' || s[i] > '9' : s[i] != shape[i]) break;
  }
  if (s == NULL || shape[i] != '\0') return (long long)time(NULL);
  memset(&tm, 0, sizeof tm);
  tm.tm_year = digits_at(s, 0, 4) - 1900;
  tm.tm_mon = digits_at(s, 5, 2) - 1;
  tm.tm_mday = digits_at(s, 8, 2);
  tm.tm_hour = digits_at(s, 11, 2);
  tm.tm_min = digits_at(s, 14, 2);
  tm.tm_sec = digits_at(s, 17, 2);
  if (tm.tm_year < 70 || tm.tm_mon > 11 || tm.tm_mon < 0 || tm.tm_mday < 1 ||
      tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60)
    return (long long)time(NULL);
  return (long long)timegm(&tm);
}

/* Ollama's {"function":{"name","arguments":{}}} -> OpenAI's call with a
 * generated id and string arguments; index only inside stream deltas. */
static json_t *openai_tool_call(const ollama_txn_t *t, unsigned index, const json_t *call,
                                int with_index) {
  const json_t *fn = json_object_get(call, "function"), *args = json_object_get(fn, "arguments");
  const char *name = str_of(fn, "name");
  llmux_buf_t a = {0};
  char num[16], id[48];
  json_t *out;
  uint64_t h;
  snprintf(num, sizeof num, "#%u", index);
  h = mix64(fnv1a(t->hash, num, strlen(num)));
  snprintf(id, sizeof id, "call_%016llx", (unsigned long long)h);
  if (json_is_string(args)) aps(&a, json_string_value(args));
  else if (args != NULL && !json_is_null(args)) dump_json(&a, args, 0);
  else aps(&a, "{}");
  out = with_index ? json_pack("{s:I}", "index", (json_int_t)index) : json_object();
  json_object_set_new(out, "id", json_string(id));
  json_object_set_new(out, "type", json_string("function"));
  json_object_set_new(out, "function", json_pack("{s:s,s:s%}", "name", name ? name : "",
                                                 "arguments", a.base ? a.base : "", a.len));
  host->buf_free(&a);
  return out;
}

static int on_tool_calls(ollama_txn_t *t, llmux_txn_t *txn, const json_t *calls) {
  const json_t *call;
  size_t i;
  int rc = 0;
  json_array_foreach(calls, i, call) {
    json_t *oc = openai_tool_call(t, t->ntools, call, txn->stream);
    t->ntools++;
    if (!txn->stream) {
      if (t->tool_calls == NULL) t->tool_calls = json_array();
      json_array_append_new(t->tool_calls, oc);
      continue;
    }
    t->delta.len = 0;
    rc = aps(&t->delta, "{\"tool_calls\":[");
    rc |= dump_json(&t->delta, oc, 0);
    rc |= aps(&t->delta, "]}");
    json_decref(oc);
    if (rc != 0 || (rc = send_delta(t, txn, NULL)) != 0) return rc ? rc : LLMUX_ENOMEM;
  }
  return 0;
}

static int on_message(ollama_txn_t *t, llmux_txn_t *txn, const json_t *msg) {
  const char *content = str_of(msg, "content"), *thinking = str_of(msg, "thinking");
  int rc = 0;
  if (thinking && *thinking) {
    if (txn->stream) rc = send_text_delta(t, txn, "reasoning_content", thinking);
    else rc = aps(&t->thinking, thinking);
  }
  if (rc == 0 && content && *content) {
    if (txn->stream) rc = send_text_delta(t, txn, "content", content);
    else rc = aps(&t->content, content);
  }
  if (rc == 0 && json_array_size(json_object_get(msg, "tool_calls")) > 0)
    rc = on_tool_calls(t, txn, json_object_get(msg, "tool_calls"));
  return rc;
}

static const char *finish_reason(const ollama_txn_t *t, const char *done_reason) {
  if (done_reason && strcmp(done_reason, "length") == 0) return "length";
  return t->ntools > 0 ? "tool_calls" : "stop";
}

static void on_done(ollama_txn_t *t, llmux_txn_t *txn, const json_t *line) {
  llmux_buf_t why = {0};
  t->done = 1;
  t->done_reason = finish_reason(t, str_of(line, "done_reason"));
  read_count(t, line, "prompt_eval_count", &txn->usage.prompt_tokens, &why);
  read_count(t, line, "eval_count", &txn->usage.completion_tokens, &why);
  log_bad_counts(t, &why);
}

/* The first line: the model that answered and the time, then (stream) the
 * role chunk OpenAI streams start with. */
static int on_first(ollama_txn_t *t, llmux_txn_t *txn, const json_t *line) {
  const char *model = str_of(line, "model");
  t->started = 1;
  t->created = parse_created(str_of(line, "created_at"));
  if (model && *model) {
    txn->served_model.len = 0;
    if (aps(&txn->served_model, model) != 0) return LLMUX_ENOMEM;
  }
  if (!txn->stream || txn->endpoint != LLMUX_ENDPOINT_CHAT) return 0;
  t->delta.len = 0;
  if (aps(&t->delta, "{\"role\":\"assistant\",\"content\":\"\"}") != 0) return LLMUX_ENOMEM;
  return send_delta(t, txn, NULL);
}

/* An {"error": "..."} line (Ollama's way of failing mid-stream). */
static int on_error_line(ollama_txn_t *t, llmux_txn_t *txn, const char *msg) {
  char text[600];
  t->done = t->errored = 1;
  snprintf(text, sizeof text, "Ollama: %s", msg);
  host->log(LLMUX_LOG_LEVEL_WARN, "ollama: error in a 200 answer: %s", msg);
  return txn->stream ? send_error_event(t, txn, text) : 0;
}

/* Ollama's {"token","logprob","bytes"} as OpenAI's, bytes from the token's
 * own when Ollama's are not a list of byte values; NULL when not a token. */
static json_t *openai_token_logprob(const json_t *e) {
  const json_t *lp = json_object_get(e, "logprob"), *bytes = json_object_get(e, "bytes"), *v;
  const char *token = str_of(e, "token");
  json_t *out, *list = json_array();
  size_t i, n;
  int ok = json_is_array(bytes);
  if (token == NULL || !json_is_number(lp)) {
    json_decref(list);
    return NULL;
  }
  json_array_foreach(bytes, i, v) {
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 255) ok = 0;
  }
  if (ok) {
    json_array_extend(list, (json_t *)bytes);
  } else {
    n = json_string_length(json_object_get(e, "token"));
    for (i = 0; i < n; i++) json_array_append_new(list, json_integer((unsigned char)token[i]));
  }
  out = json_pack("{s:s%,s:f,s:o}", "token", token, json_string_length(json_object_get(e, "token")),
                  "logprob", json_number_value(lp), "bytes", list);
  return out;
}

/* A line's `logprobs` entries, as OpenAI's, onto t->lp (when asked). */
static void read_logprobs(ollama_txn_t *t, const json_t *line) {
  const json_t *entries = json_object_get(line, "logprobs"), *e, *alt;
  size_t i, j;
  if (!t->logprobs || !json_is_array(entries)) return;
  if (t->lp == NULL && (t->lp = json_array()) == NULL) return;
  json_array_foreach(entries, i, e) {
    json_t *entry = openai_token_logprob(e), *top = json_array();
    if (entry == NULL) {
      json_decref(top);
      continue;
    }
    json_array_foreach(json_object_get(e, "top_logprobs"), j, alt) {
      json_t *a = openai_token_logprob(alt);
      if (a != NULL) json_array_append_new(top, a);
    }
    json_object_set_new(entry, "top_logprobs", top);
    json_array_append_new(t->lp, entry);
  }
}

static int on_chat_line(ollama_txn_t *t, llmux_txn_t *txn, const json_t *line) {
  const json_t *msg = json_object_get(line, "message");
  int rc;
  if (json_is_string(json_object_get(line, "error")))
    return on_error_line(t, txn, str_of(line, "error"));
  if (!t->started && (rc = on_first(t, txn, line)) != 0) return rc;
  read_logprobs(t, line); /* after the role chunk: they go with this line's content */
  if (json_is_object(msg) && (rc = on_message(t, txn, msg)) != 0) return rc;
  if (json_is_true(json_object_get(line, "done"))) {
    on_done(t, txn, line);
    if (txn->stream) return send_end(t, txn);
  }
  return 0;
}

/* ---- responses: embeddings --------------------------------------------- */

static int append_base64(llmux_buf_t *b, const unsigned char *p, size_t n) {
  static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  char o[4];
  size_t i;
  int rc = 0;
  for (i = 0; i < n; i += 3) {
    unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) |
                 (i + 2 < n ? p[i + 2] : 0);
    o[0] = tbl[v >> 18 & 63];
    o[1] = tbl[v >> 12 & 63];
    o[2] = i + 1 < n ? tbl[v >> 6 & 63] : '=';
    o[3] = i + 2 < n ? tbl[v & 63] : '=';
    rc |= host->buf_append(b, o, 4);
  }
  return rc;
}

/* One vector: a JSON array of floats, or OpenAI's base64 of little-endian
 * float32 values (what the openai npm client asks for by default). */
static int append_vector(const ollama_txn_t *t, llmux_buf_t *b, const json_t *vec) {
  const json_t *x;
  size_t i, n = json_array_size(vec);
  unsigned char *raw;
  int rc = 0;
  if (!t->embed_base64) return dump_json(b, vec, JSON_REAL_PRECISION(9));
  if ((raw = host->malloc(n * 4 + 1)) == NULL) return LLMUX_ENOMEM;
  json_array_foreach(vec, i, x) {
    float f = (float)json_number_value(x);
    uint32_t u;
    memcpy(&u, &f, 4);
    raw[4 * i] = (unsigned char)u;
    raw[4 * i + 1] = (unsigned char)(u >> 8);
    raw[4 * i + 2] = (unsigned char)(u >> 16);
    raw[4 * i + 3] = (unsigned char)(u >> 24);
  }
  rc |= aps(b, "\"");
  rc |= append_base64(b, raw, n * 4);
  rc |= aps(b, "\"");
  host->free(raw);
  return rc ? LLMUX_ENOMEM : 0;
}

/* {"model","embeddings":[[...]],"prompt_eval_count"} -> OpenAI's list. */
static int send_embeddings(ollama_txn_t *t, llmux_txn_t *txn, const json_t *root) {
  const json_t *embs = json_object_get(root, "embeddings"), *vec;
  llmux_buf_t why = {0};
  int64_t count = -1;
  long long pt;
  size_t i;
  int rc = 0;
  if (!json_is_array(embs)) return LLMUX_EUPSTREAM;
  read_count(t, root, "prompt_eval_count", &count, &why);
  log_bad_counts(t, &why);
  pt = usage_or_zero(count);
  t->out.len = 0;
  rc |= aps(&t->out, "{\"object\":\"list\",\"data\":[");
  json_array_foreach(embs, i, vec) {
    if (!json_is_array(vec)) return LLMUX_EUPSTREAM;
    rc |= host->buf_printf(&t->out, "%s{\"object\":\"embedding\",\"index\":%zu,\"embedding\":",
                           i ? "," : "", i);
    rc |= append_vector(t, &t->out, vec);
    rc |= aps(&t->out, "}");
  }
  rc |= aps(&t->out, "],\"model\":");
  rc |= append_model(&t->out, txn);
  rc |= host->buf_printf(&t->out, ",\"usage\":{\"prompt_tokens\":%lld,\"total_tokens\":%lld}}\n",
                         pt, pt);
  if (rc != 0) return LLMUX_ENOMEM;
  txn->usage.prompt_tokens = count;
  txn->usage.completion_tokens = 0;
  return host->emit(txn, t->out.base, t->out.len);
}

/* ---- responses: plain chat answer ---------------------------------------- */

static int send_completion(ollama_txn_t *t, llmux_txn_t *txn) {
  json_t *msg, *root, *lp;
  long long pt = usage_or_zero(txn->usage.prompt_tokens);
  long long ct = usage_or_zero(txn->usage.completion_tokens);
  int rc;
  msg = json_pack("{s:s}", "role", "assistant");
  json_object_set_new(msg, "content", t->content.len || t->tool_calls == NULL
                                          ? json_stringn(t->content.base ? t->content.base : "",
                                                         t->content.len)
                                          : json_null());
  if (t->thinking.len)
    json_object_set_new(msg, "reasoning_content", json_stringn(t->thinking.base, t->thinking.len));
  if (t->tool_calls) json_object_set(msg, "tool_calls", t->tool_calls);
  json_object_set_new(msg, "refusal", json_null());
  lp = json_array_size(t->lp) > 0 ? json_pack("{s:O}", "content", t->lp) : json_null();
  root = json_pack("{s:s,s:s,s:I,s:s%,s:s,s:[{s:i,s:o,s:o,s:s}],s:{s:I,s:I,s:I}}",
                   "id", t->id, "object", "chat.completion", "created", (json_int_t)t->created,
                   "model", txn->served_model.len ? txn->served_model.base : txn->provider_model,
                   txn->served_model.len ? txn->served_model.len : strlen(txn->provider_model),
                   "system_fingerprint", "fp_ollama", "choices", "index", 0, "message", msg,
                   "logprobs", lp, "finish_reason", t->done_reason ? t->done_reason : "stop",
                   "usage", "prompt_tokens", (json_int_t)pt, "completion_tokens", (json_int_t)ct,
                   "total_tokens", (json_int_t)(pt + ct));
  if (root == NULL) return LLMUX_ENOMEM;
  t->out.len = 0;
  rc = dump_json(&t->out, root, LOGPROB_PRECISION); /* its only reals */
  json_decref(root);
  if (rc == 0) rc = aps(&t->out, "\n") ? LLMUX_ENOMEM : 0;
  return rc ? rc : host->emit(txn, t->out.base, t->out.len);
}

/* ---- responses: NDJSON lines --------------------------------------------- */

static int on_line(ollama_txn_t *t, llmux_txn_t *txn, const char *s, size_t n) {
  json_t *line;
  int rc;
  while (n > 0 && (s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
  while (n > 0 && (*s == ' ' || *s == '\t')) s++, n--;
  if (n == 0 || t->done) return 0;
  line = load_json(s, n, &t->as_reals);
  if (!json_is_object(line)) {
    json_decref(line);
    t->failed = t->done = 1;
    return LLMUX_EUPSTREAM;
  }
  if (txn->endpoint == LLMUX_ENDPOINT_CHAT) {
    rc = on_chat_line(t, txn, line);
  } else if (json_is_string(json_object_get(line, "error"))) {
    rc = on_error_line(t, txn, str_of(line, "error"));
  } else {
    rc = t->started ? 0 : on_first(t, txn, line);
    if (rc == 0) rc = send_embeddings(t, txn, line);
    t->done = 1;
    if (rc != 0) t->failed = 1;
  }
  json_decref(line);
  return rc;
}

/* Handles each complete line of data (with eof, the last one even without
 * its newline) until the answer is done; what follows is ignored. */
static int feed(ollama_txn_t *t, llmux_txn_t *txn, const char *data, size_t len, int eof) {
  llmux_str_t line;
  int rc = 0, more = 0;
  if (t->lines == NULL && (t->lines = host->split_new(LLMUX_SPLIT_NDJSON, LINE_MAX_BYTES)) == NULL)
    return LLMUX_ENOMEM;
  while (rc == 0 && !t->done && (more = host->split_next(t->lines, &data, &len, eof, &line)) > 0)
    rc = on_line(t, txn, line.base, line.len);
  return rc ? rc : more < 0 ? more : 0;
}

/* The end of the body. A failure seen earlier was already returned to the
 * host (which reports it); one found only now is reported here. */
static int finish(ollama_txn_t *t, llmux_txn_t *txn) {
  int failed_before = t->failed, rc = 0;
  if (!t->done) rc = feed(t, txn, NULL, 0, 1); /* a last line without its newline */
  if (txn->endpoint != LLMUX_ENDPOINT_CHAT)
    return rc ? rc : t->failed || t->errored || !t->done ? LLMUX_EUPSTREAM : 0;
  if (!txn->stream) {
    if (rc || t->failed || t->errored || !t->started) return rc ? rc : LLMUX_EUPSTREAM;
    return send_completion(t, txn);
  }
  if (failed_before) return LLMUX_EUPSTREAM;
  if (t->errored || (rc == 0 && t->done)) return 0; /* an error line was sent in-band */
  /* Cut short, mid-line or without done:true: say so rather than end as if complete. */
  send_error_event(t, txn, "Ollama's stream ended before its final (done) line.");
  return LLMUX_EUPSTREAM;
}

static int ollama_parse_response(void *instance, llmux_txn_t *txn, const char *data, size_t len,
                                 int eof) {
  ollama_txn_t *t = txn->data;
  int rc = 0;
  (void)instance;
  if (len > 0) rc = feed(t, txn, data, len, 0);
  if (rc == 0 && eof) rc = finish(t, txn);
  return rc;
}

/* ---- errors ----------------------------------------------------------------- */

static int has_word(const char *s, const char *word) {
  return s != NULL && strcasestr(s, word) != NULL;
}

/* The host's reading of the status, refined by Ollama's words. */
static void classify(int status, const char *msg, llmux_error_info_t *out) {
  llmux_fail_class_t cls = host->classify_status(status, out);
  if (cls == LLMUX_FAIL_SERVER) {
    out->retry_same = !has_word(msg, "memory"); /* too big for this machine: go elsewhere */
  } else if (cls != LLMUX_FAIL_BAD_REQUEST) {
    return;
  } else if (has_word(msg, "context length") || has_word(msg, "context window")) {
    out->cls = LLMUX_FAIL_CONTEXT_LENGTH;
    out->retry_elsewhere = 1;
  } else if (has_word(msg, "does not support")) { /* tools, vision...: another model may */
    out->retry_elsewhere = 1;
  }
}

/* The NAME in `model "NAME" not found` (or 'NAME'); 0 when msg is not that. */
static int missing_model(const char *msg, char *name, size_t size) {
  const char *p = msg ? strstr(msg, "model ") : NULL, *end;
  char q;
  if (p == NULL || !has_word(msg, "not found")) return 0;
  p += 6;
  q = *p;
  if (q != '"' && q != '\'') return 0;
  end = strchr(p + 1, q);
  if (end == NULL || (size_t)(end - p - 1) >= size) return 0;
  memcpy(name, p + 1, (size_t)(end - p - 1));
  name[end - p - 1] = '\0';
  return 1;
}

static int ollama_classify_error(void *instance, llmux_txn_t *txn, const char *body, size_t len,
                                 llmux_error_info_t *out) {
  json_t *root = len ? json_loadb(body, len, 0, NULL) : NULL;
  const char *msg = str_of(root, "error");
  char name[256];
  (void)instance;
  classify(txn->status, msg, out);
  out->retry_after_ms = 0;
  if (txn->status == 404 && msg != NULL && has_word(msg, "not found")) {
    if (!missing_model(msg, name, sizeof name))
      snprintf(name, sizeof name, "%s", txn->provider_model);
    host->buf_printf(&out->message, "model '%s' is not pulled: run `ollama pull %s`", name, name);
  } else if (txn->status == 404 && msg == NULL) {
    host->buf_printf(&out->message, "Ollama has no such endpoint (%.*s): base_url should be the "
                     "server's root, like http://localhost:11434", (int)(len > 100 ? 100 : len),
                     body ? body : "");
  } else if (msg != NULL) {
    aps(&out->message, msg);
  } else if (len > 0) {
    host->buf_append(&out->message, body, len > 300 ? 300 : len);
  }
  json_decref(root);
  return 0;
}

/* The advice reaches API clients: it names no address (the gateway logs
 * that for the operator). */
static int ollama_explain_error(void *instance, int err, const char *detail, llmux_buf_t *out) {
  (void)instance;
  if (err == LLMUX_ECONNREFUSED)
    return host->buf_printf(out, "Ollama is not running: start it with `ollama serve`");
  if (err == LLMUX_EDNS)
    return host->buf_printf(out, "cannot resolve the host of Ollama's base_url (%s)",
                            detail ? detail : "no details");
  return 1;
}

/* ---- model listing --------------------------------------------------------- */

static int ollama_models_request(void *instance, llmux_txn_t *txn) {
  const ollama_t *p = instance;
  txn->method = "GET";
  if (aps(&txn->path, "/api/tags") != 0) return LLMUX_ENOMEM;
  if (p->auth_line.len &&
      host->buf_append(&txn->headers, p->auth_line.base, p->auth_line.len) != 0)
    return LLMUX_ENOMEM;
  return 0;
}

/* {"models":[{"name":"llama3.1:latest",...}]} -> "llama3.1:latest\0..." */
static int ollama_parse_models(void *instance, const char *body, size_t len, llmux_buf_t *names) {
  json_t *root = json_loadb(body, len, 0, NULL), *m;
  const json_t *models = json_object_get(root, "models");
  size_t i;
  int rc = json_is_array(models) ? 0 : LLMUX_EUPSTREAM;
  (void)instance;
  if (rc == 0) {
    json_array_foreach(models, i, m) {
      const char *name = str_of(m, "name");
      if (name == NULL) name = str_of(m, "model");
      if (name && host->buf_append(names, name, strlen(name) + 1) != 0) {
        rc = LLMUX_ENOMEM;
        break;
      }
    }
  }
  json_decref(root);
  return rc;
}

static void ollama_txn_free(void *instance, llmux_txn_t *txn) {
  ollama_txn_t *t = txn->data;
  (void)instance;
  if (t == NULL) return;
  host->buf_free(&t->body);
  host->split_free(t->lines);
  host->buf_free(&t->out);
  host->buf_free(&t->delta);
  host->buf_free(&t->content);
  host->buf_free(&t->thinking);
  json_decref(t->tool_calls);
  json_decref(t->lp);
  host->free(t);
  txn->data = NULL;
}

static const llmux_provider_t ollama_provider = {
  .abi_major = LLMUX_PROVIDER_ABI_MAJOR,
  .abi_minor = LLMUX_PROVIDER_ABI_MINOR,
  .size = sizeof(llmux_provider_t),
  .name = "ollama",
  .description = "Ollama's native API: /api/chat, /api/embed, /api/tags",
  .config = ollama_keys,
  .create = ollama_create,
  .destroy = ollama_destroy,
  .translate_request = ollama_translate_request,
  .parse_response = ollama_parse_response,
  .classify_error = ollama_classify_error,
  .txn_free = ollama_txn_free,
  .explain_error = ollama_explain_error,
  .models_request = ollama_models_request,
  .parse_models = ollama_parse_models,
  /* Ollama sends no rate-limit headers: the host's default (generic). */
};

/* Needs the host services of ABI 1.3 (status, NDJSON splitter). */
LLMUX_PROVIDER_ENTRY_MIN(host, ollama_provider, 3)
