/* ARES request and answer shapes (see agent.h). */
#include "gateway/agent.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "base/util.h"

/* ---- request ------------------------------------------------------------- */

static const llmux_agent_conf_t *find_agent(const llmux_config_t *cfg, const char *name) {
  size_t i;
  for (i = 0; i < cfg->nagents; i++) {
    if (strcasecmp(cfg->agents[i]->name, name) == 0) return cfg->agents[i];
  }
  return NULL;
}

static int bad(char *msg, size_t msglen, int rc, const char *text) {
  snprintf(msg, msglen, "%s", text);
  return rc;
}

static int check_history(const json_t *h, char *msg, size_t msglen) {
  size_t i;
  json_t *m;
  if (!json_is_array(h))
    return bad(msg, msglen, LLMUX_EINVAL, "'history' must be an array of OpenAI messages.");
  json_array_foreach(h, i, m) {
    if (!json_is_object(m) || !json_is_string(json_object_get(m, "role")))
      return bad(msg, msglen, LLMUX_EINVAL,
                 "Each 'history' entry must be an object with a string 'role'.");
  }
  return 0;
}

/* Checks the optional fields and copies them into the OpenAI body. */
static int copy_options(const json_t *in, json_t *out, char *msg, size_t msglen) {
  json_t *v = json_object_get(in, "max_tokens");
  if (v && !json_is_null(v)) {
    if (!json_is_integer(v) || json_integer_value(v) < 1)
      return bad(msg, msglen, LLMUX_EINVAL, "'max_tokens' must be a positive integer.");
    json_object_set(out, "max_tokens", v);
  }
  v = json_object_get(in, "temperature");
  if (v && !json_is_null(v)) {
    if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 2)
      return bad(msg, msglen, LLMUX_EINVAL, "'temperature' must be a number from 0 to 2.");
    json_object_set(out, "temperature", v);
  }
  v = json_object_get(in, "stream");
  if (v && !json_is_null(v) && !json_is_boolean(v))
    return bad(msg, msglen, LLMUX_EINVAL, "'stream' must be a boolean.");
  if (json_is_true(v)) {
    json_object_set_new(out, "stream", json_true());
    /* Exact usage at the end of the stream, for the final event and quotas. */
    json_object_set_new(out, "stream_options", json_pack("{s:b}", "include_usage", 1));
  }
  return 0;
}

static int build_messages(const json_t *in, json_t *msgs, char *msg, size_t msglen) {
  json_t *sys = json_object_get(in, "system"), *hist = json_object_get(in, "history");
  json_t *text = json_object_get(in, "message");
  size_t i;
  json_t *m;
  if (!json_is_string(text) || json_string_length(text) == 0)
    return bad(msg, msglen, LLMUX_EINVAL, "'message' must be a non-empty string.");
  if (sys && !json_is_null(sys)) {
    if (!json_is_string(sys))
      return bad(msg, msglen, LLMUX_EINVAL, "'system' must be a string.");
    json_array_append_new(msgs, json_pack("{s:s,s:O}", "role", "system", "content", sys));
  }
  if (hist && !json_is_null(hist)) {
    if (check_history(hist, msg, msglen) != 0) return LLMUX_EINVAL;
    json_array_foreach(hist, i, m) json_array_append(msgs, m);
  }
  json_array_append_new(msgs, json_pack("{s:s,s:O}", "role", "user", "content", text));
  return 0;
}

int llmux_agent_build_request(const llmux_config_t *cfg, const llmux_tenant_conf_t *tenant,
                              const char *body, size_t len, llmux_agent_req_t *req,
                              llmux_buf_t *out, char *msg, size_t msglen) {
  json_error_t jerr;
  json_t *in = json_loadb(body ? body : "", len, 0, &jerr), *o = NULL, *msgs, *at;
  char *text = NULL;
  int rc = LLMUX_EINVAL;
  memset(req, 0, sizeof *req);
  if (!json_is_object(in)) {
    snprintf(msg, msglen, "The body must be a JSON object with 'message' and 'agent_type'%s%s.",
             in ? "" : ": ", in ? "" : jerr.text);
    goto done;
  }
  at = json_object_get(in, "agent_type");
  if (!json_is_string(at) || json_string_length(at) == 0) {
    bad(msg, msglen, 0, "'agent_type' must be a non-empty string.");
    goto done;
  }
  req->agent = find_agent(cfg, json_string_value(at));
  if (req->agent == NULL) {
    snprintf(msg, msglen, "Unknown agent_type '%.100s'.", json_string_value(at));
    rc = LLMUX_ENOTFOUND;
    goto done;
  }
  req->profile = llmux_tenant_agent_profile(tenant, req->agent);
  o = json_object();
  msgs = json_array();
  json_object_set_new(o, "model", json_string(req->profile->name));
  json_object_set_new(o, "messages", msgs);
  if (build_messages(in, msgs, msg, msglen) != 0 || copy_options(in, o, msg, msglen) != 0)
    goto done;
  req->stream = json_is_true(json_object_get(o, "stream"));
  text = json_dumps(o, JSON_COMPACT);
  rc = text && llmux_buf_appends(out, text) == 0 ? 0 : LLMUX_ENOMEM;
done:
  free(text);
  json_decref(o);
  json_decref(in);
  return rc;
}

/* ---- answers ------------------------------------------------------------- */

static void put_info(json_t *o, const llmux_agent_info_t *info) {
  json_object_set_new(o, "agent_type", json_string(info->agent_type));
  json_object_set_new(o, "tier", json_string(info->tier));
  json_object_set_new(o, "model", json_string(info->model));
  json_object_set_new(o, "provider", json_string(info->provider));
}

static json_t *usage_obj(int64_t in, int64_t out) {
  if (in < 0) in = 0;
  if (out < 0) out = 0;
  return json_pack("{s:I,s:I,s:I}", "prompt_tokens", (json_int_t)in, "completion_tokens",
                   (json_int_t)out, "total_tokens", (json_int_t)(in + out));
}

static int dump_to(json_t *o, llmux_buf_t *out) {
  char *s = json_dumps(o, JSON_COMPACT);
  int rc = s ? llmux_buf_appends(out, s) : LLMUX_ENOMEM;
  free(s);
  json_decref(o);
  return rc;
}

static int64_t int_field(const json_t *o, const char *k) {
  json_t *v = json_object_get(o, k);
  return json_is_integer(v) ? (int64_t)json_integer_value(v) : -1;
}

int llmux_agent_answer(const char *openai, size_t len, const llmux_agent_info_t *info,
                       llmux_buf_t *out) {
  json_t *in = json_loadb(openai, len, 0, NULL), *ch, *msg, *u, *o;
  const char *content, *finish;
  int rc;
  ch = json_array_get(json_object_get(in, "choices"), 0);
  msg = json_object_get(ch, "message");
  if (!json_is_object(msg)) {
    json_decref(in);
    return LLMUX_EUPSTREAM;
  }
  content = json_string_value(json_object_get(msg, "content"));
  finish = json_string_value(json_object_get(ch, "finish_reason"));
  u = json_object_get(in, "usage");
  o = json_object();
  json_object_set_new(o, "id", json_string(json_string_value(json_object_get(in, "id"))
                                               ? json_string_value(json_object_get(in, "id"))
                                               : ""));
  put_info(o, info);
  json_object_set_new(o, "message", json_string(content ? content : ""));
  json_object_set_new(o, "finish_reason", finish ? json_string(finish) : json_null());
  json_object_set_new(o, "usage", usage_obj(int_field(u, "prompt_tokens"),
                                            int_field(u, "completion_tokens")));
  rc = dump_to(o, out);
  json_decref(in);
  return rc;
}

/* ---- streams ------------------------------------------------------------- */

/* One upstream `data:` payload. */
static int stream_event(llmux_agent_stream_t *st, const char *p, size_t n, llmux_buf_t *out) {
  json_t *ev, *ch, *u, *v;
  const char *s;
  int rc = 0;
  if (n == 6 && memcmp(p, "[DONE]", 6) == 0) return 0;
  ev = json_loadb(p, n, 0, NULL);
  if (!json_is_object(ev)) {
    json_decref(ev);
    return 0; /* not ours to judge: the plugin passed it on */
  }
  if (!st->id[0] && (s = json_string_value(json_object_get(ev, "id"))) != NULL)
    snprintf(st->id, sizeof st->id, "%s", s);
  ch = json_array_get(json_object_get(ev, "choices"), 0);
  if ((s = json_string_value(json_object_get(ch, "finish_reason"))) != NULL)
    snprintf(st->finish, sizeof st->finish, "%s", s);
  u = json_object_get(ev, "usage");
  if (json_is_object(u)) {
    st->prompt_tokens = int_field(u, "prompt_tokens");
    st->completion_tokens = int_field(u, "completion_tokens");
  }
  v = json_object_get(json_object_get(ch, "delta"), "content");
  if (json_is_string(v) && json_string_length(v) > 0) {
    rc = llmux_buf_append(&st->text, json_string_value(v), json_string_length(v));
    if (rc == 0) rc = llmux_buf_appends(out, "data: ");
    if (rc == 0) rc = dump_to(json_pack("{s:s,s:O}", "type", "delta", "content", v), out);
    if (rc == 0) rc = llmux_buf_appends(out, "\n\n");
  }
  json_decref(ev);
  return rc;
}

int llmux_agent_stream_feed(llmux_agent_stream_t *st, const char *data, size_t len,
                            llmux_buf_t *out) {
  size_t start = 0, i;
  int rc = 0;
  if (!st->started) {
    st->started = 1;
    st->prompt_tokens = st->completion_tokens = -1;
  }
  if (llmux_buf_append(&st->pending, data, len) != 0) return LLMUX_ENOMEM;
  for (i = 0; rc == 0 && i < st->pending.len; i++) {
    const char *line = st->pending.base + start;
    size_t n = i - start;
    if (st->pending.base[i] != '\n') continue;
    if (n > 0 && line[n - 1] == '\r') n--;
    if (n >= 5 && memcmp(line, "data:", 5) == 0) {
      line += 5;
      n -= 5;
      if (n > 0 && *line == ' ') { line++; n--; }
      rc = stream_event(st, line, n, out);
    }
    start = i + 1;
  }
  llmux_buf_consume(&st->pending, start);
  return rc;
}

int llmux_agent_stream_end(llmux_agent_stream_t *st, const llmux_agent_info_t *info,
                           llmux_buf_t *out) {
  json_t *o = json_object();
  int rc;
  if (!st->started) st->prompt_tokens = st->completion_tokens = -1;
  json_object_set_new(o, "type", json_string("done"));
  json_object_set_new(o, "id", json_string(st->id));
  put_info(o, info);
  json_object_set_new(o, "message", json_stringn(st->text.base ? st->text.base : "",
                                                 st->text.len));
  json_object_set_new(o, "finish_reason", st->finish[0] ? json_string(st->finish) : json_null());
  json_object_set_new(o, "usage", usage_obj(st->prompt_tokens, st->completion_tokens));
  rc = llmux_buf_appends(out, "data: ");
  if (rc == 0) rc = dump_to(o, out);
  else json_decref(o);
  if (rc == 0) rc = llmux_buf_appends(out, "\n\n");
  return rc;
}

void llmux_agent_stream_free(llmux_agent_stream_t *st) {
  llmux_buf_free(&st->pending);
  llmux_buf_free(&st->text);
}

/* ---- errors -------------------------------------------------------------- */

const char *llmux_agent_error_code(int status, const char *code) {
  static const char *const ares[] = {"RATE_LIMIT_EXCEEDED", "QUOTA_EXCEEDED",
                                     "UNKNOWN_AGENT_TYPE", "INVALID_API_KEY",
                                     "UPSTREAM_UNAVAILABLE", "INVALID_REQUEST",
                                     "AGENT_NOT_ALLOWED"};
  size_t i;
  for (i = 0; code != NULL && i < LLMUX_COUNTOF(ares); i++) {
    if (strcmp(code, ares[i]) == 0) return ares[i];
  }
  if (code != NULL && strcmp(code, "invalid_api_key") == 0) return "INVALID_API_KEY";
  if (status == 429) return "RATE_LIMIT_EXCEEDED";
  if (status == 401) return "INVALID_API_KEY";
  if (status == 403) return "AGENT_NOT_ALLOWED";
  if (status >= 500) return "UPSTREAM_UNAVAILABLE";
  return "INVALID_REQUEST";
}

int llmux_agent_error_json(llmux_buf_t *out, const char *msg, const char *code,
                           uint64_t retry_after_s) {
  int rc = llmux_buf_appends(out, "{\"error\":");
  if (rc == 0) rc = llmux_buf_append_json_str(out, msg, strlen(msg));
  if (rc == 0) rc = llmux_buf_printf(out, ",\"code\":\"%s\"", code);
  if (rc == 0 && retry_after_s > 0)
    rc = llmux_buf_printf(out, ",\"retry_after\":%llu", (unsigned long long)retry_after_s);
  if (rc == 0) rc = llmux_buf_appends(out, "}");
  return rc;
}
