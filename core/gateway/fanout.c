/* `n` > 1 for a provider without it: n copies, answers merged
 * (gateway/fanout.h). */
#include "gateway/fanout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/json_scan.h"
#include "base/split.h"
#include "base/util.h"
#include "route/ratelimit.h"

#define ERROR_BODY_MAX (64 * 1024)
#define MAX_RESP_HEADERS 64
#define USAGE_MAX_TOKENS 1000000000 /* as the proxy: more is not believed */

/* ==== Merging answers ===================================================== */

static const char *skip_ws(const char *s, const char *e) {
  while (s < e && (*s == ' ' || *s == '\n' || *s == '\r' || *s == '\t')) s++;
  return s;
}

/* The end of the JSON value starting at s. The text was validated already
 * (llmux_json_scan), so this only needs to find where the value ends. */
static const char *skip_value(const char *s, const char *e) {
  int depth = 0;
  for (; s < e; s++) {
    switch (*s) {
    case '"':
      for (s++; s < e && *s != '"'; s++)
        if (*s == '\\') s++;
      if (s >= e) return e;
      if (depth == 0) return s + 1;
      break;
    case '{':
    case '[': depth++; break;
    case '}':
    case ']':
      if (depth == 0) return s; /* a scalar ended by its container */
      if (--depth == 0) return s + 1;
      break;
    case ',':
    case ' ':
    case '\t':
    case '\r':
    case '\n':
      if (depth == 0) return s;
      break;
    default: break;
    }
  }
  return e;
}

/* Replacements of spans of one text, in order, without overlap. */
typedef struct edit_s {
  const char *from, *to;
  const char *with;
  size_t with_len;
} edit_t;

static int splice(const char *s, size_t len, edit_t *ed, size_t ned, llmux_buf_t *out) {
  const char *at = s;
  size_t i;
  int rc = 0;
  if (ned == 2 && ed[1].from < ed[0].from) {
    edit_t t = ed[0];
    ed[0] = ed[1];
    ed[1] = t;
  }
  for (i = 0; i < ned && rc == 0; i++) {
    rc = llmux_buf_append(out, at, (size_t)(ed[i].from - at));
    if (rc == 0) rc = llmux_buf_append(out, ed[i].with, ed[i].with_len);
    at = ed[i].to;
  }
  if (rc == 0) rc = llmux_buf_append(out, at, len - (size_t)(at - s));
  return rc;
}

static uint64_t number(const llmux_json_field_t *f) {
  uint64_t v = 0;
  size_t i;
  if (f->type != LLMUX_JSON_NUMBER) return 0;
  for (i = 0; i < f->value.len && f->value.base[i] >= '0' && f->value.base[i] <= '9'; i++)
    v = v * 10 + (uint64_t)(f->value.base[i] - '0');
  return v;
}

static void add_usage(llmux_fanout_usage_t *u, llmux_str_t obj) {
  llmux_json_field_t f[] = {{"prompt_tokens"}, {"completion_tokens"}, {"total_tokens"}};
  uint64_t in, out;
  if (llmux_json_scan(obj.base, obj.len, f, 3, NULL, NULL) != 0) return;
  in = number(&f[0]);
  out = number(&f[1]);
  u->prompt_tokens += in;
  u->completion_tokens += out;
  u->total_tokens += f[2].type == LLMUX_JSON_NUMBER ? number(&f[2]) : in + out;
  u->seen++;
}

static int usage_json(const llmux_fanout_usage_t *u, llmux_buf_t *out) {
  return llmux_buf_printf(out, "{\"prompt_tokens\":%llu,\"completion_tokens\":%llu,"
                          "\"total_tokens\":%llu}", (unsigned long long)u->prompt_tokens,
                          (unsigned long long)u->completion_tokens,
                          (unsigned long long)u->total_tokens);
}

/* One choice object with its index set to `index`, appended. */
static int put_choice(const char *s, const char *e, uint64_t index, llmux_buf_t *out) {
  llmux_json_field_t f[] = {{"index"}};
  char num[24];
  edit_t ed;
  llmux_u64_dec(num, index);
  if (llmux_json_scan(s, (size_t)(e - s), f, 1, NULL, NULL) != 0 || f[0].type == LLMUX_JSON_NONE) {
    /* Not an object with an index (no plugin sends that): give it one. */
    const char *brace = skip_ws(s, e);
    if (brace >= e || *brace != '{') return llmux_buf_append(out, s, (size_t)(e - s));
    ed = (edit_t){brace + 1, brace + 1, NULL, 0};
    llmux_buf_t with = {0};
    int rc = llmux_buf_printf(&with, "\"index\":%s%s", num,
                              *skip_ws(brace + 1, e) == '}' ? "" : ",");
    ed.with = with.base;
    ed.with_len = with.len;
    if (rc == 0) rc = splice(s, (size_t)(e - s), &ed, 1, out);
    llmux_buf_free(&with);
    return rc;
  }
  ed = (edit_t){f[0].value.base, f[0].value.base + f[0].value.len, num, strlen(num)};
  return splice(s, (size_t)(e - s), &ed, 1, out);
}

/* The elements of `choices` (an array) of copy `copy` of n, each with its
 * index rewritten, appended after *count elements already in out (joined
 * by commas). */
static int put_choices(llmux_str_t choices, unsigned copy, unsigned n, size_t *count,
                       llmux_buf_t *out) {
  const char *s = choices.base + 1, *e = choices.base + choices.len - 1;
  uint64_t j = 0;
  int rc = 0;
  for (s = skip_ws(s, e); s < e && rc == 0; j++) {
    const char *end = skip_value(s, e);
    if (*count > 0) rc = llmux_buf_append(out, ",", 1);
    if (rc == 0) rc = put_choice(s, end, copy + j * n, out);
    (*count)++;
    s = skip_ws(end, e);
    if (s < e && *s == ',') s = skip_ws(s + 1, e);
  }
  return rc;
}

int llmux_fanout_merge(const llmux_str_t *answers, unsigned n, llmux_buf_t *out) {
  llmux_json_field_t first[2] = {{0}};
  llmux_buf_t choices = {0}, usage = {0};
  llmux_fanout_usage_t sum = {0};
  edit_t ed[2];
  size_t count = 0, ned = 0;
  unsigned k;
  int rc = llmux_buf_append(&choices, "[", 1);
  for (k = 0; k < n && rc == 0; k++) {
    llmux_json_field_t f[] = {{"choices"}, {"usage"}};
    if (llmux_json_scan(answers[k].base, answers[k].len, f, 2, NULL, NULL) != 0 ||
        f[0].type != LLMUX_JSON_ARRAY) {
      rc = LLMUX_EUPSTREAM;
      break;
    }
    if (f[1].type == LLMUX_JSON_OBJECT) add_usage(&sum, f[1].value);
    if (k == 0) memcpy(first, f, sizeof first);
    rc = put_choices(f[0].value, k, n, &count, &choices);
  }
  if (rc == 0) rc = llmux_buf_append(&choices, "]", 1);
  if (rc == 0) {
    ed[ned++] = (edit_t){first[0].value.base, first[0].value.base + first[0].value.len,
                         choices.base, choices.len};
    if (first[1].type == LLMUX_JSON_OBJECT && sum.seen > 0) {
      rc = usage_json(&sum, &usage);
      ed[ned++] = (edit_t){first[1].value.base, first[1].value.base + first[1].value.len,
                           usage.base, usage.len};
    }
  }
  if (rc == 0) rc = splice(answers[0].base, answers[0].len, ed, ned, out);
  llmux_buf_free(&choices);
  llmux_buf_free(&usage);
  return rc;
}

static int frame(const char *data, size_t len, llmux_buf_t *out) {
  int rc = llmux_buf_append(out, "data: ", 6);
  if (rc == 0) rc = llmux_buf_append(out, data, len);
  if (rc == 0) rc = llmux_buf_append(out, "\n\n", 2);
  return rc;
}

static int is_done(const char *data, size_t len) {
  const char *s = skip_ws(data, data + len), *e = data + len;
  while (e > s && (e[-1] == ' ' || e[-1] == '\n' || e[-1] == '\r' || e[-1] == '\t')) e--;
  return e - s == 6 && memcmp(s, "[DONE]", 6) == 0;
}

int llmux_fanout_chunk(const char *data, size_t len, unsigned copy, unsigned n,
                       llmux_fanout_usage_t *usage, llmux_buf_t *out) {
  llmux_json_field_t f[] = {{"choices"}, {"usage"}};
  llmux_buf_t choices = {0};
  edit_t ed[2];
  size_t count = 0, ned = 0;
  int rc;
  if (is_done(data, len)) return LLMUX_FANOUT_DONE;
  if (llmux_json_scan(data, len, f, 2, NULL, NULL) != 0 || f[0].type != LLMUX_JSON_ARRAY)
    return frame(data, len, out) == 0 ? LLMUX_FANOUT_PASSED : LLMUX_ENOMEM;
  if (f[1].type == LLMUX_JSON_OBJECT) add_usage(usage, f[1].value);
  rc = llmux_buf_append(&choices, "[", 1);
  if (rc == 0) rc = put_choices(f[0].value, copy, n, &count, &choices);
  if (rc == 0) rc = llmux_buf_append(&choices, "]", 1);
  if (rc == 0 && count == 0 && f[1].type == LLMUX_JSON_OBJECT) { /* usage only: held */
    llmux_buf_free(&choices);
    return LLMUX_FANOUT_USAGE;
  }
  ed[ned++] = (edit_t){f[0].value.base, f[0].value.base + f[0].value.len, choices.base,
                       choices.len};
  if (f[1].type == LLMUX_JSON_OBJECT)
    ed[ned++] = (edit_t){f[1].value.base, f[1].value.base + f[1].value.len, "null", 4};
  if (rc == 0) rc = llmux_buf_append(out, "data: ", 6);
  if (rc == 0) rc = splice(data, len, ed, ned, out);
  if (rc == 0) rc = llmux_buf_append(out, "\n\n", 2);
  llmux_buf_free(&choices);
  return rc == 0 ? LLMUX_FANOUT_CHUNK : LLMUX_ENOMEM;
}

int llmux_fanout_usage_chunk(const char *tmpl, size_t len, const llmux_fanout_usage_t *usage,
                             llmux_buf_t *out) {
  llmux_json_field_t f[] = {{"choices"}, {"usage"}};
  llmux_buf_t u = {0};
  edit_t ed[2];
  size_t ned = 0;
  int rc;
  if (llmux_json_scan(tmpl, len, f, 2, NULL, NULL) != 0 || f[1].type == LLMUX_JSON_NONE)
    return LLMUX_EUPSTREAM;
  rc = usage_json(usage, &u);
  if (f[0].type != LLMUX_JSON_NONE)
    ed[ned++] = (edit_t){f[0].value.base, f[0].value.base + f[0].value.len, "[]", 2};
  ed[ned++] = (edit_t){f[1].value.base, f[1].value.base + f[1].value.len, u.base, u.len};
  if (rc == 0) rc = llmux_buf_append(out, "data: ", 6);
  if (rc == 0) rc = splice(tmpl, len, ed, ned, out);
  if (rc == 0) rc = llmux_buf_append(out, "\n\n", 2);
  llmux_buf_free(&u);
  return rc;
}

/* ==== Running the copies ================================================== */

typedef struct copy_s {
  llmux_fanout_t *f;
  unsigned index;
  llmux_host_txn_t ht;
  int translated;                /* txn_free is due */
  llmux_upstream_req_t up;
  int running;
  int bad;                       /* the plugin could not read the answer */
  llmux_rl_reservation_t resv;   /* copies 1..n-1: copy 0's is the caller's */
  llmux_split_t *sse;            /* a stream: the plugin's frames, split */
  llmux_buf_t path, headers, out, err_body, hdr_store;
  llmux_header_t resp_headers[MAX_RESP_HEADERS];
  uv_buf_t iov[LLMUX_TXN_MAX_BODY_PARTS];
  uint64_t t_start_ms;
} copy_t;

struct llmux_fanout_s {
  llmux_fanout_conf_t c;
  llmux_buf_t body;              /* the client's, with n = 1 */
  llmux_buf_t headers;           /* conf.headers, copied */
  llmux_buf_t held;              /* a stream's frames before its head went out */
  llmux_buf_t frames;            /* scratch: frames of one emit */
  llmux_buf_t usage_tmpl;        /* the last chunk that carried usage */
  llmux_fanout_usage_t usage;
  unsigned nheads, nended;
  int started;                   /* on_head was called */
  int over;                      /* on_done was called */
  llmux_error_info_t err;
  char detail[256];
  copy_t copies[];
};

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t now_ms(const llmux_fanout_t *f) {
  return uv_now(f->c.gw->loop);
}

static llmux_rl_key_t route_key(const llmux_fanout_t *f) {
  llmux_rl_key_t k = {f->c.route->provider->name, LLMUX_ROUTE_LIMIT_ID(f->c.route)};
  return k;
}

/* What a copy that answered used, as the proxy counts it (usage it does
 * not believe: the reservation). */
static uint64_t copy_tokens(const copy_t *c) {
  const llmux_usage_t *u = &c->ht.txn.usage;
  if (u->prompt_tokens < 0 || u->completion_tokens < 0 || u->prompt_tokens > USAGE_MAX_TOKENS ||
      u->completion_tokens > USAGE_MAX_TOKENS)
    return c->resv.tokens;
  return (uint64_t)(u->prompt_tokens + u->completion_tokens);
}

/* Stops a copy still running: the route is not blamed, and its share
 * stays counted (the provider saw the request). */
static void stop_copy(llmux_fanout_t *f, copy_t *c) {
  if (!c->running) return;
  llmux_upstream_cancel(&c->up);
  c->running = 0;
  llmux_router_inflight(f->c.router, f->c.route->index, -1);
  llmux_router_report(f->c.router, f->c.route->index, LLMUX_OUTCOME_NEUTRAL, 0, now_ms(f));
  llmux_rl_commit(&c->resv, c->resv.tokens, now_ms(f));
}

static void free_copy(llmux_fanout_t *f, copy_t *c) {
  const llmux_provider_t *vt = f->c.prov->plugin->vt;
  stop_copy(f, c);
  llmux_rl_commit(&c->resv, c->resv.tokens, now_ms(f));
  if (c->translated && LLMUX_PROVIDER_HAS(vt, txn_free))
    vt->txn_free(f->c.prov->instance, &c->ht.txn);
  llmux_host_txn_free(&c->ht);
  llmux_split_free(c->sse);
  llmux_buf_free(&c->path);
  llmux_buf_free(&c->headers);
  llmux_buf_free(&c->out);
  llmux_buf_free(&c->err_body);
  llmux_buf_free(&c->hdr_store);
}

void llmux_fanout_free(llmux_fanout_t *f) {
  unsigned k;
  if (f == NULL) return;
  for (k = 0; k < f->c.n; k++) free_copy(f, &f->copies[k]);
  llmux_buf_free(&f->body);
  llmux_buf_free(&f->headers);
  llmux_buf_free(&f->held);
  llmux_buf_free(&f->frames);
  llmux_buf_free(&f->usage_tmpl);
  llmux_buf_free(&f->err.message);
  free(f);
}

/* The end, once: every other copy stops, then the owner hears `status`
 * (and may free f inside). */
static void fail(llmux_fanout_t *f, int status) {
  unsigned k;
  if (f->over) return;
  f->over = 1;
  for (k = 0; k < f->c.n; k++) {
    copy_t *c = &f->copies[k];
    stop_copy(f, c);
    /* One that answered in full counts what it used (the caller's share
     * counts only its estimate then). */
    llmux_rl_commit(&c->resv, copy_tokens(c), now_ms(f));
  }
  f->c.on_done(f->c.owner, status);
}

static void finish(llmux_fanout_t *f) {
  llmux_buf_t out = {0};
  unsigned k;
  int rc = 0;
  if (f->c.request->stream) {
    if (f->usage.seen > 0 && f->usage_tmpl.len > 0)
      rc = llmux_fanout_usage_chunk(f->usage_tmpl.base, f->usage_tmpl.len, &f->usage, &out);
    if (rc == 0) rc = llmux_buf_appends(&out, "data: [DONE]\n\n");
  } else {
    llmux_str_t answers[LLMUX_FANOUT_MAX];
    for (k = 0; k < f->c.n; k++)
      answers[k] = (llmux_str_t){f->copies[k].out.base, f->copies[k].out.len};
    rc = llmux_fanout_merge(answers, f->c.n, &out);
  }
  if (rc == 0) rc = f->c.emit(f->c.owner, out.base, out.len);
  llmux_buf_free(&out);
  if (rc != 0) {
    fail(f, LLMUX_EUPSTREAM);
    return;
  }
  /* The caller's reservation carries the tokens of all (its commit uses
   * the summed usage); the others count their request only. */
  for (k = 0; k < f->c.n; k++) llmux_rl_commit(&f->copies[k].resv, 0, now_ms(f));
  f->over = 1;
  f->c.on_done(f->c.owner, 200);
}

/* Frames go to the owner once the head went out, and wait before. */
static int pass_frames(llmux_fanout_t *f) {
  int rc = 0;
  if (f->frames.len == 0) return 0;
  if (f->started) rc = f->c.emit(f->c.owner, f->frames.base, f->frames.len);
  else rc = llmux_buf_append(&f->held, f->frames.base, f->frames.len);
  f->frames.len = 0;
  return rc;
}

/* A stream's events, as the plugin emitted them, split and rewritten. */
static int feed_events(copy_t *c, const char *data, size_t len, int eof) {
  llmux_fanout_t *f = c->f;
  llmux_str_t item;
  int rc;
  while ((rc = llmux_split_next(c->sse, &data, &len, eof, &item)) == 1) {
    unsigned seen = f->usage.seen;
    rc = llmux_fanout_chunk(item.base, item.len, c->index, f->c.n, &f->usage, &f->frames);
    if (rc < 0) return rc;
    if (f->usage.seen != seen) {
      f->usage_tmpl.len = 0;
      if (llmux_buf_append(&f->usage_tmpl, item.base, item.len) != 0) return LLMUX_ENOMEM;
    }
  }
  if (rc < 0) return rc;
  return pass_frames(f);
}

static int copy_emit(void *owner, const char *data, size_t len) {
  copy_t *c = owner;
  if (c->f->over) return LLMUX_ECANCELED;
  if (!c->f->c.request->stream) return llmux_buf_append(&c->out, data, len);
  return feed_events(c, data, len, 0);
}

static void keep_headers(copy_t *c, const llmux_str_t *hdrs, size_t n) {
  size_t i, total = 0, off = 0;
  if (n > MAX_RESP_HEADERS) n = MAX_RESP_HEADERS;
  for (i = 0; i < 2 * n; i++) total += hdrs[i].len;
  c->hdr_store.len = 0;
  if (llmux_buf_reserve(&c->hdr_store, total) != 0) n = 0;
  for (i = 0; i < n; i++) {
    char *base = c->hdr_store.base;
    memcpy(base + off, hdrs[2 * i].base, hdrs[2 * i].len);
    c->resp_headers[i].name = (llmux_str_t){base + off, hdrs[2 * i].len};
    off += hdrs[2 * i].len;
    memcpy(base + off, hdrs[2 * i + 1].base, hdrs[2 * i + 1].len);
    c->resp_headers[i].value = (llmux_str_t){base + off, hdrs[2 * i + 1].len};
    off += hdrs[2 * i + 1].len;
  }
  c->hdr_store.len = off;
  c->ht.txn.resp_headers = c->resp_headers;
  c->ht.txn.nresp_headers = n;
}

static void on_head(llmux_upstream_req_t *up, int status, const llmux_str_t *hdrs, size_t n) {
  copy_t *c = up->data;
  llmux_fanout_t *f = c->f;
  llmux_rl_key_t key = route_key(f);
  keep_headers(c, hdrs, n);
  c->ht.txn.status = status;
  llmux_rl_sync_headers(f->c.gw->rl, &key, (llmux_rl_style_t)f->c.prov->rl_style,
                        c->resp_headers, c->ht.txn.nresp_headers, now_ms(f), wall_ms());
  if (status < 200 || status >= 300) return;
  llmux_router_report(f->c.router, f->c.route->index, LLMUX_OUTCOME_SUCCESS,
                      now_ms(f) - c->t_start_ms, now_ms(f));
  if (++f->nheads < f->c.n) return;
  f->started = 1;
  f->c.on_head(f->c.owner);
  if (f->held.len > 0 && f->c.emit(f->c.owner, f->held.base, f->held.len) != 0) c->bad = 1;
  f->held.len = 0;
}

static void on_body(llmux_upstream_req_t *up, const char *data, size_t len) {
  copy_t *c = up->data;
  llmux_fanout_t *f = c->f;
  int status = c->ht.txn.status;
  if (status < 200 || status >= 300) {
    if (c->err_body.len + len <= ERROR_BODY_MAX) llmux_buf_append(&c->err_body, data, len);
    return;
  }
  if (c->bad) return;
  if (f->c.prov->plugin->vt->parse_response(f->c.prov->instance, &c->ht.txn, data, len, 0) != 0)
    c->bad = 1;
}

static void on_read_end(llmux_upstream_req_t *up) {
  copy_t *c = up->data;
  if (c->f->started && c->f->c.request->stream && c->f->c.on_read_end)
    c->f->c.on_read_end(c->f->c.owner);
}

/* A copy failed before its answer: how, for the owner. */
static void copy_failed(copy_t *c, int status) {
  llmux_fanout_t *f = c->f;
  const llmux_provider_t *vt = f->c.prov->plugin->vt;
  if (status < 0) {
    int reached = !(status == LLMUX_ECONNREFUSED || status == LLMUX_EDNS ||
                    status == LLMUX_ECERT || status == LLMUX_ETLS || status == LLMUX_EINVAL);
    snprintf(f->detail, sizeof f->detail, "%s", c->up.error);
    if (reached) llmux_rl_commit(&c->resv, c->resv.tokens, now_ms(f));
    else llmux_rl_release(&c->resv, now_ms(f));
  } else {
    llmux_rl_commit(&c->resv, c->resv.tokens, now_ms(f));
    memset(&f->err, 0, sizeof f->err);
    vt->classify_error(f->c.prov->instance, &c->ht.txn, c->err_body.base, c->err_body.len,
                       &f->err);
  }
  fail(f, status);
}

static void on_done(llmux_upstream_req_t *up, int status) {
  copy_t *c = up->data;
  llmux_fanout_t *f = c->f;
  c->running = 0;
  llmux_router_inflight(f->c.router, f->c.route->index, -1);
  if (status < 200 || status >= 300) {
    copy_failed(c, status);
    return;
  }
  if (f->c.prov->plugin->vt->parse_response(f->c.prov->instance, &c->ht.txn, NULL, 0, 1) != 0)
    c->bad = 1;
  if (!c->bad && c->sse != NULL && feed_events(c, NULL, 0, 1) != 0) c->bad = 1;
  if (c->bad) {
    fail(f, LLMUX_EUPSTREAM);
    return;
  }
  if (++f->nended == f->c.n) finish(f);
}

/* The client's body with n = 1, and the model's place in it. */
static int copy_body(llmux_fanout_t *f, llmux_str_t *model) {
  const llmux_txn_t *r = f->c.request;
  const char *nv = f->c.n_value.base, *nend = nv + f->c.n_value.len;
  int rc = llmux_buf_append(&f->body, r->body.base, (size_t)(nv - r->body.base));
  if (rc == 0) rc = llmux_buf_append(&f->body, "1", 1);
  if (rc == 0) rc = llmux_buf_append(&f->body, nend, r->body.len - (size_t)(nend - r->body.base));
  if (rc != 0) return rc;
  *model = r->model_value;
  model->base = f->body.base + (r->model_value.base - r->body.base);
  if (r->model_value.base >= nend) model->base -= f->c.n_value.len - 1;
  return 0;
}

static int translate(llmux_fanout_t *f, copy_t *c, llmux_str_t model) {
  const llmux_txn_t *r = f->c.request;
  llmux_txn_t *t = &c->ht.txn;
  llmux_host_txn_clear_out(&c->ht);
  t->size = sizeof *t;
  t->endpoint = r->endpoint;
  t->body = (llmux_str_t){f->body.base, f->body.len};
  t->model_value = model;
  t->stream = r->stream;
  t->attempt = r->attempt;
  t->canonical_model = r->canonical_model;
  t->provider_model = r->provider_model;
  c->ht.owner = c;
  c->ht.emit = copy_emit;
  c->translated = 1;
  return f->c.prov->plugin->vt->translate_request(f->c.prov->instance, t);
}

int llmux_fanout_new(const llmux_fanout_conf_t *conf, llmux_fanout_t **out, llmux_buf_t *refusal) {
  llmux_fanout_t *f;
  llmux_str_t model;
  unsigned k;
  int rc;
  *out = NULL;
  if (conf->n < 2 || conf->n > LLMUX_FANOUT_MAX) return LLMUX_EINVAL;
  f = calloc(1, sizeof *f + conf->n * sizeof(copy_t));
  if (f == NULL) return LLMUX_ENOMEM;
  f->c = *conf;
  *out = f;
  rc = llmux_buf_append(&f->headers, conf->headers, conf->headers_len);
  if (rc == 0) rc = copy_body(f, &model);
  for (k = 0; k < f->c.n && rc == 0; k++) {
    copy_t *c = &f->copies[k];
    const llmux_txn_t *t = &c->ht.txn;
    c->f = f;
    c->index = k;
    rc = translate(f, c, model);
    if (rc == 0 && (t->nbody_parts == 0 || t->nbody_parts > LLMUX_TXN_MAX_BODY_PARTS))
      rc = LLMUX_EINVAL;
    if (rc == LLMUX_EINVAL && refusal != NULL && t->refusal.len > 0)
      llmux_buf_append(refusal, t->refusal.base, t->refusal.len);
    if (rc == 0 && t->stream && (c->sse = llmux_split_new(LLMUX_SPLIT_SSE, 0)) == NULL)
      rc = LLMUX_ENOMEM;
  }
  return rc;
}

static int build_request(llmux_fanout_t *f, copy_t *c) {
  const llmux_provider_rt_t *rt = f->c.prov;
  const llmux_provider_conf_t *pc = rt->conf;
  const llmux_txn_t *t = &c->ht.txn;
  uint64_t total = f->c.total_timeout_ms;
  size_t i;
  int rc = llmux_buf_appends(&c->path, rt->base_path);
  if (rc == 0) rc = llmux_buf_append(&c->path, t->path.base, t->path.len);
  if (rc == 0) rc = llmux_buf_append(&c->headers, f->headers.base, f->headers.len);
  if (rc == 0) rc = llmux_buf_append(&c->headers, t->headers.base, t->headers.len);
  for (i = 0; i < pc->nheaders && rc == 0; i++)
    rc = llmux_buf_printf(&c->headers, "%s: %s\r\n", pc->headers[i].key, pc->headers[i].value);
  if (rc != 0) return rc;
  for (i = 0; i < t->nbody_parts; i++) {
    c->iov[i].base = (char *)t->body_parts[i].base;
    c->iov[i].len = t->body_parts[i].len;
  }
  llmux_upstream_req_init(&c->up);
  c->up.data = c;
  c->up.https = rt->tls;
  c->up.host = rt->host;
  c->up.port = (uint16_t)rt->port;
  c->up.tls_ctx = rt->tls_ctx;
  c->up.method = t->method ? t->method : "POST";
  c->up.path = c->path.base;
  c->up.headers = c->headers.base;
  c->up.headers_len = c->headers.len;
  c->up.body = c->iov;
  c->up.nbody = t->nbody_parts;
  c->up.connect_timeout_ms = pc->connect_timeout_ms;
  c->up.first_byte_timeout_ms = pc->timeout_ms;
  c->up.idle_timeout_ms = pc->stream_timeout_ms;
  c->up.total_timeout_ms = pc->total_timeout_ms && pc->total_timeout_ms < total
                               ? pc->total_timeout_ms : total;
  c->up.on_head = on_head;
  c->up.on_body = on_body;
  c->up.on_done = on_done;
  c->up.on_read_end = on_read_end;
  return 0;
}

int llmux_fanout_send(llmux_fanout_t *f, char *why, size_t whylen) {
  llmux_rl_key_t key = route_key(f);
  unsigned k;
  int rc;
  for (k = 0; k < f->c.n; k++) {
    copy_t *c = &f->copies[k];
    if ((rc = build_request(f, c)) != 0) {
      snprintf(why, whylen, "%s", llmux_strerror(rc));
      return rc;
    }
    if (k > 0) llmux_rl_reserve(f->c.gw->rl, &key, f->c.tokens, now_ms(f), &c->resv);
    c->t_start_ms = now_ms(f);
    llmux_router_inflight(f->c.router, f->c.route->index, +1);
    rc = llmux_upstream_start(f->c.gw->up, &c->up);
    if (rc != 0) {
      llmux_router_inflight(f->c.router, f->c.route->index, -1);
      llmux_rl_release(&c->resv, now_ms(f));
      snprintf(why, whylen, "%s", c->up.error[0] ? c->up.error : llmux_strerror(rc));
      f->over = 1;
      return rc;
    }
    c->running = 1;
  }
  return 0;
}

llmux_usage_t llmux_fanout_usage(const llmux_fanout_t *f) {
  llmux_usage_t sum = {0, 0};
  unsigned k;
  for (k = 0; k < f->c.n; k++) {
    const llmux_usage_t *u = &f->copies[k].ht.txn.usage;
    /* Unknown, or more than believable (the proxy's rule): unknown. */
    int in_ok = u->prompt_tokens >= 0 && u->prompt_tokens <= USAGE_MAX_TOKENS;
    int out_ok = u->completion_tokens >= 0 && u->completion_tokens <= USAGE_MAX_TOKENS;
    if (sum.prompt_tokens >= 0) sum.prompt_tokens = in_ok ? sum.prompt_tokens + u->prompt_tokens : -1;
    if (sum.completion_tokens >= 0)
      sum.completion_tokens = out_ok ? sum.completion_tokens + u->completion_tokens : -1;
  }
  return sum;
}

const llmux_txn_t *llmux_fanout_txn(const llmux_fanout_t *f, unsigned copy) {
  return copy < f->c.n ? &f->copies[copy].ht.txn : NULL;
}

void llmux_fanout_error(llmux_fanout_t *f, llmux_error_info_t *e) {
  *e = f->err;
  memset(&f->err, 0, sizeof f->err);
}

const char *llmux_fanout_error_detail(const llmux_fanout_t *f) {
  return f->detail;
}
