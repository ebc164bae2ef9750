#define _GNU_SOURCE /* memmem */
/* One provider plugin (FUZZ_PLUGIN_NAME, its source compiled into this
 * target) driven through its vtable as the proxy drives it, with the host's
 * own service table (core/plugin/).
 *
 * Input: two control bytes, then the bytes fed to the plugin.
 *   byte 0, bits 0-2: what the bytes are:
 *            0-1 a 2xx response body, 2-3 a 2xx stream body,
 *            4 an error response (status below; "name: value" header lines,
 *              a blank line, then the body), 5 a model list,
 *            6-7 a client's request body;
 *           bit 3: the request asks for stream_options.include_usage;
 *           bits 4-5: endpoint: chat, completions, embeddings, chat;
 *           bit 6: embeddings asked for as base64; bit 7: the request has tools;
 *           bits 6-7 also shift the error's status (with byte 1).
 *   byte 1: how the third pass cuts the body (see fuzz.h); for an error,
 *           which status it has.
 *
 * Properties:
 *  - a response body gives the client the same bytes, the same result, the
 *    same usage and the same served model whether it arrives whole, one
 *    byte at a time, or in pieces ("created" timestamps aside);
 *  - what a chat translation sends the client is JSON: one document for a
 *    complete answer, or SSE frames of "data: " JSON (or [DONE]);
 *  - a request translates to the same upstream request twice (a retry),
 *    and a client body that jansson reads gives an upstream body it reads;
 *  - errors get a failure class the router knows; model lists are names
 *    each ending in NUL;
 *  - nothing leaks, overflows or hits undefined behaviour. */
#include <jansson.h>
#include <stdint.h>
#include <string.h>

#include "fuzz.h"
#include "base/json_scan.h"
#include "plugin/plugin.h"
#include "base/log.h"
#include "base/util.h"

#ifndef FUZZ_PLUGIN_NAME
#error "FUZZ_PLUGIN_NAME names the plugin compiled in"
#endif

#define PROVIDER_MODEL "fuzz-provider-model"

static const llmux_provider_t *vt;
static void *inst;

/* ---- the plugin, created once ------------------------------------------ */

static const char *conf_get(const llmux_provider_config_t *cfg, const char *key) {
  const llmux_config_key_t *k;
  (void)cfg;
  for (k = vt->config; k != NULL && k->name != NULL; k++)
    if (strcmp(k->name, key) == 0) return k->default_value;
  return NULL;
}

static void setup(void) {
  llmux_provider_config_t cfg;
  char err[256] = "";
  llmux_log_level = -1; /* quiet: inputs are meant to be wrong */
  FUZZ_CHECK(llmux_provider_init(llmux_host_api(), &vt) == 0 && vt != NULL, "init");
  FUZZ_CHECK(strcmp(vt->name, FUZZ_PLUGIN_NAME) == 0, "compiled in: %s", vt->name);
  memset(&cfg, 0, sizeof cfg);
  cfg.size = sizeof cfg;
  cfg.name = "fuzz";
  cfg.base_url = "http://127.0.0.1:9/v1";
  cfg.base_path = "/v1";
  cfg.api_key = "fuzz-key";
  cfg.get = conf_get;
  FUZZ_CHECK(vt->create(&cfg, &inst, err, sizeof err) == 0, "create: %s", err);
}

/* ---- one transaction ----------------------------------------------------- */

typedef struct {
  llmux_host_txn_t ht;
  llmux_buf_t req; /* the client's body */
  llmux_buf_t out; /* what the client got */
  int rc;          /* the first failure parse_response returned, or 0 */
} run_t;

static int capture(void *owner, const char *data, size_t len) {
  return llmux_buf_append(&((run_t *)owner)->out, data, len);
}

/* A request the host accepted, as the proxy hands it over. */
static void run_init(run_t *r, llmux_endpoint_t ep, const char *body, size_t len,
                     llmux_str_t model_value, int stream) {
  memset(r, 0, sizeof *r);
  llmux_buf_append(&r->req, body, len);
  llmux_buf_append(&r->req, "", 1); /* NUL-terminated, outside the body */
  r->ht.owner = r;
  r->ht.emit = capture;
  r->ht.txn.size = sizeof r->ht.txn;
  r->ht.txn.endpoint = ep;
  r->ht.txn.body = (llmux_str_t){r->req.base, len};
  if (model_value.base != NULL)
    r->ht.txn.model_value = (llmux_str_t){r->req.base + (model_value.base - body),
                                          model_value.len};
  r->ht.txn.stream = stream;
  r->ht.txn.canonical_model = "fuzz-model";
  r->ht.txn.provider_model = PROVIDER_MODEL;
  llmux_host_txn_clear_out(&r->ht);
}

static int translate(run_t *r, unsigned attempt) {
  llmux_host_txn_clear_out(&r->ht);
  r->ht.txn.attempt = attempt;
  return vt->translate_request(inst, &r->ht.txn);
}

static void run_free(run_t *r) {
  vt->txn_free(inst, &r->ht.txn);
  FUZZ_CHECK(r->ht.txn.data == NULL, "txn_free left txn->data");
  llmux_host_txn_free(&r->ht);
  llmux_buf_free(&r->req);
  llmux_buf_free(&r->out);
}

/* ---- a fixed request, for the response modes ----------------------------- */

static llmux_endpoint_t endpoint_of(uint8_t ctl) {
  static const llmux_endpoint_t eps[4] = {LLMUX_ENDPOINT_CHAT, LLMUX_ENDPOINT_COMPLETIONS,
                                          LLMUX_ENDPOINT_EMBEDDINGS, LLMUX_ENDPOINT_CHAT};
  return eps[(ctl >> 4) & 3];
}

/* Starts r on a valid request for the endpoint ctl names (chat when the
 * plugin serves no other). 0, or -1 when the plugin refuses even chat. */
static int start_fixed(run_t *r, uint8_t ctl, int stream) {
  llmux_buf_t b = {0};
  llmux_endpoint_t ep = endpoint_of(ctl);
  llmux_json_field_t f[1] = {{"model"}};
  int rc;
  for (;;) {
    b.len = 0;
    llmux_buf_appends(&b, "{\"model\":\"fuzz-model\",");
    if (ep == LLMUX_ENDPOINT_EMBEDDINGS)
      llmux_buf_appends(&b, (ctl & 0x40) ? "\"input\":[\"a\",\"b\"],\"encoding_format\":\"base64\""
                                         : "\"input\":\"hello\"");
    else if (ep == LLMUX_ENDPOINT_COMPLETIONS)
      llmux_buf_appends(&b, "\"prompt\":\"Say hi\",\"max_tokens\":16");
    else
      llmux_buf_appends(&b, "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]");
    if (ep != LLMUX_ENDPOINT_EMBEDDINGS && (ctl & 0x80))
      llmux_buf_appends(&b, ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
                            "\"parameters\":{\"type\":\"object\"}}}]");
    llmux_buf_printf(&b, ",\"stream\":%s", stream ? "true" : "false");
    if (ctl & 0x08) llmux_buf_appends(&b, ",\"stream_options\":{\"include_usage\":true}");
    llmux_buf_appends(&b, "}");
    FUZZ_CHECK(llmux_json_scan(b.base, b.len, f, 1, NULL, NULL) == 0, "fixed request");
    run_init(r, ep, b.base, b.len, f[0].value, stream);
    rc = translate(r, 0);
    if (rc == 0 || ep == LLMUX_ENDPOINT_CHAT) break;
    run_free(r);
    ep = LLMUX_ENDPOINT_CHAT;
  }
  llmux_buf_free(&b);
  if (rc != 0) run_free(r);
  return rc == 0 ? 0 : -1;
}

/* ---- responses: the same body cut three ways ----------------------------- */

/* Feeds one piece as the proxy does: after a failure no more bytes, only
 * the end. */
static void feed(run_t *r, const char *data, size_t len, int eof) {
  int rc;
  if (r->rc != 0) {
    if (!eof) return;
    data = NULL;
    len = 0;
  }
  rc = vt->parse_response(inst, &r->ht.txn, data, len, eof);
  if (r->rc == 0) r->rc = rc;
}

/* The client's bytes with every "created":DIGITS made "created":0. */
static void normalise(const llmux_buf_t *in, llmux_buf_t *out) {
  static const char key[] = "\"created\":";
  const char *p, *end, *hit;
  out->len = 0;
  if (in->len == 0) return;
  p = in->base;
  end = in->base + in->len;
  while ((hit = memmem(p, (size_t)(end - p), key, sizeof key - 1)) != NULL) {
    hit += sizeof key - 1;
    llmux_buf_append(out, p, (size_t)(hit - p));
    llmux_buf_append(out, "0", 1);
    for (p = hit; p < end && *p >= '0' && *p <= '9'; p++) {}
  }
  llmux_buf_append(out, p, (size_t)(end - p));
}

/* SSE frames of JSON, or one JSON document. */
static void check_client_json(const llmux_buf_t *out, int stream, int complete) {
  json_error_t e;
  json_t *j;
  if (!stream) {
    if (!complete || out->len == 0) return;
    j = json_loadb(out->base, out->len, 0, &e);
    FUZZ_CHECK(j != NULL, "the client got invalid JSON: %s: %.*s", e.text, (int)out->len,
               out->base);
    json_decref(j);
    return;
  }
  if (out->len > 0) {
    const char *p = out->base, *end = out->base + out->len;
    while (p < end) {
      const char *sep = memmem(p, (size_t)(end - p), "\n\n", 2);
      FUZZ_CHECK(sep != NULL, "an SSE frame without its end: %.*s", (int)(end - p), p);
      FUZZ_CHECK(sep - p >= 6 && memcmp(p, "data: ", 6) == 0, "not a data frame: %.*s",
                 (int)(sep - p), p);
      if (!(sep - p == 12 && memcmp(p + 6, "[DONE]", 6) == 0)) {
        j = json_loadb(p + 6, (size_t)(sep - p - 6), 0, &e);
        FUZZ_CHECK(j != NULL, "an SSE frame of invalid JSON: %s: %.*s", e.text,
                   (int)(sep - p), p);
        json_decref(j);
      }
      p = sep + 2;
    }
  }
}

static void compare_runs(run_t *a, run_t *b, const char *how) {
  llmux_buf_t na = {0}, nb = {0};
  llmux_txn_t *ta = &a->ht.txn, *tb = &b->ht.txn;
  normalise(&a->out, &na);
  normalise(&b->out, &nb);
  FUZZ_CHECK(a->rc == b->rc, "whole: rc %d, %s: rc %d", a->rc, how, b->rc);
  FUZZ_CHECK(na.len == nb.len && (na.len == 0 || memcmp(na.base, nb.base, na.len) == 0),
             "the client got different bytes whole and %s:\n%.*s\n----\n%.*s", how,
             (int)na.len, na.base, (int)nb.len, nb.base);
  FUZZ_CHECK(ta->usage.prompt_tokens == tb->usage.prompt_tokens &&
             ta->usage.completion_tokens == tb->usage.completion_tokens,
             "usage %lld/%lld whole, %lld/%lld %s", (long long)ta->usage.prompt_tokens,
             (long long)ta->usage.completion_tokens, (long long)tb->usage.prompt_tokens,
             (long long)tb->usage.completion_tokens, how);
  FUZZ_CHECK(ta->served_model.len == tb->served_model.len &&
             (ta->served_model.len == 0 ||
              memcmp(ta->served_model.base, tb->served_model.base, ta->served_model.len) == 0),
             "served model \"%.*s\" (%zu bytes) whole, \"%.*s\" (%zu bytes) %s",
             (int)ta->served_model.len, ta->served_model.base, ta->served_model.len,
             (int)tb->served_model.len, tb->served_model.base, tb->served_model.len, how);
  llmux_buf_free(&na);
  llmux_buf_free(&nb);
}

static void fuzz_response(uint8_t ctl, uint8_t cut, const char *data, size_t len, int stream) {
  run_t whole, bytes, pieces;
  fuzz_split_t sp;
  size_t i, k;
  if (start_fixed(&whole, ctl, stream) != 0) return;
  start_fixed(&bytes, ctl, stream);
  start_fixed(&pieces, ctl, stream);
  whole.ht.txn.status = bytes.ht.txn.status = pieces.ht.txn.status = 200;

  feed(&whole, data, len, 1);
  for (i = 0; i < len; i++) feed(&bytes, data + i, 1, 0);
  feed(&bytes, NULL, 0, 1);
  fuzz_split_init(&sp, cut, 0);
  for (i = 0; i < len; i += k) {
    k = fuzz_split_next(&sp, len - i);
    feed(&pieces, data + i, k, i + k == len);
  }
  if (len == 0) feed(&pieces, NULL, 0, 1);

  compare_runs(&whole, &bytes, "one byte at a time");
  compare_runs(&whole, &pieces, "in pieces");
  if (strcmp(FUZZ_PLUGIN_NAME, "openai") != 0 && whole.ht.txn.endpoint == LLMUX_ENDPOINT_CHAT)
    check_client_json(&whole.out, stream, whole.rc == 0);
  run_free(&whole);
  run_free(&bytes);
  run_free(&pieces);
}

/* ---- errors and model lists ---------------------------------------------- */

static const int STATUSES[] = {400, 401, 402, 403, 404, 408, 409, 413, 422, 429,
                               500, 502, 503, 504, 529, 418, 499, 300};

static size_t split_headers(const char *s, size_t n, llmux_header_t *h, size_t max) {
  size_t count = 0;
  const char *end = s + n;
  while (s < end && count < max) {
    const char *eol = memchr(s, '\n', (size_t)(end - s));
    const char *le = eol ? eol : end, *colon = memchr(s, ':', (size_t)(le - s));
    const char *v = colon ? colon + 1 : le;
    while (v < le && *v == ' ') v++;
    h[count].name = (llmux_str_t){s, (size_t)((colon ? colon : le) - s)};
    h[count].value = (llmux_str_t){v, (size_t)(le - v)};
    count++;
    s = eol ? eol + 1 : end;
  }
  return count;
}

static void fuzz_error(uint8_t ctl, uint8_t sel, const char *data, size_t len) {
  run_t r;
  llmux_header_t h[32];
  llmux_error_info_t e;
  const char *blank = memmem(data, len, "\n\n", 2), *body = data;
  size_t blen = len, nh = 0;
  llmux_buf_t advice = {0};
  if (start_fixed(&r, ctl, ctl & 1) != 0) return;
  if (blank != NULL) {
    nh = split_headers(data, (size_t)(blank - data), h, LLMUX_COUNTOF(h));
    body = blank + 2;
    blen = len - (size_t)(body - data);
  }
  r.ht.txn.status = STATUSES[(sel + (ctl >> 6)) % LLMUX_COUNTOF(STATUSES)];
  r.ht.txn.resp_headers = h;
  r.ht.txn.nresp_headers = nh;
  memset(&e, 0, sizeof e);
  FUZZ_CHECK(vt->classify_error(inst, &r.ht.txn, body, blen, &e) == 0, "classify_error");
  FUZZ_CHECK(e.cls > LLMUX_FAIL_NONE && e.cls <= LLMUX_FAIL_UPSTREAM_GARBAGE, "class %d",
             (int)e.cls);
  FUZZ_CHECK(e.message.len == 0 || e.message.len < e.message.cap, "message buffer");
  llmux_buf_free(&e.message);
  if (vt->explain_error != NULL) {
    static const int errs[] = {LLMUX_ECONNREFUSED, LLMUX_EDNS, LLMUX_ETIMEOUT, LLMUX_ETLS};
    char detail[128];
    snprintf(detail, sizeof detail, "%.*s", (int)(blen < 100 ? blen : 100), body);
    vt->explain_error(inst, errs[sel & 3], detail, &advice);
    llmux_buf_free(&advice);
  }
  run_free(&r);
}

static void fuzz_models(const char *data, size_t len) {
  llmux_buf_t names = {0};
  if (vt->parse_models == NULL) return;
  if (vt->parse_models(inst, data, len, &names) == 0)
    FUZZ_CHECK(names.len == 0 || names.base[names.len - 1] == '\0', "names end in NUL");
  llmux_buf_free(&names);
}

/* ---- requests ---------------------------------------------------------------- */

/* The upstream request as one byte string: method, path, headers, body. */
static void upstream_request(const llmux_txn_t *t, llmux_buf_t *out, llmux_buf_t *body) {
  unsigned i;
  out->len = body->len = 0;
  llmux_buf_printf(out, "%s %.*s\n%.*s\n", t->method ? t->method : "POST", (int)t->path.len,
                   t->path.base ? t->path.base : "", (int)t->headers.len,
                   t->headers.base ? t->headers.base : "");
  FUZZ_CHECK(t->nbody_parts <= LLMUX_TXN_MAX_BODY_PARTS, "%u body parts", t->nbody_parts);
  for (i = 0; i < t->nbody_parts; i++)
    llmux_buf_append(body, t->body_parts[i].base, t->body_parts[i].len);
  llmux_buf_append(out, body->base, body->len);
}

/* What proxy.c's validate_fields lets through to a plugin. */
static int host_accepts(llmux_endpoint_t ep, const llmux_json_field_t *f) {
  char model[256];
  if (f[0].type != LLMUX_JSON_STRING || llmux_json_unquote(f[0].value, model, sizeof model) != 0 ||
      model[0] == '\0')
    return 0;
  if (f[1].type != LLMUX_JSON_NONE && f[1].type != LLMUX_JSON_TRUE &&
      f[1].type != LLMUX_JSON_FALSE && f[1].type != LLMUX_JSON_NULL)
    return 0;
  if (ep == LLMUX_ENDPOINT_CHAT) return f[2].type == LLMUX_JSON_ARRAY;
  if (ep == LLMUX_ENDPOINT_COMPLETIONS) return f[3].type != LLMUX_JSON_NONE;
  return f[4].type == LLMUX_JSON_STRING || f[4].type == LLMUX_JSON_ARRAY;
}

static void fuzz_request(uint8_t ctl, const char *data, size_t len) {
  llmux_json_field_t f[] = {{"model"}, {"stream"}, {"messages"}, {"prompt"}, {"input"}};
  llmux_endpoint_t ep = endpoint_of(ctl);
  llmux_buf_t first = {0}, again = {0}, b1 = {0}, b2 = {0};
  run_t r;
  json_t *in, *up;
  int rc;
  if (llmux_json_scan(data, len, f, LLMUX_COUNTOF(f), NULL, NULL) != 0 || !host_accepts(ep, f))
    return;
  run_init(&r, ep, data, len, f[0].value, f[1].type == LLMUX_JSON_TRUE);
  rc = translate(&r, 0);
  if (rc == 0) {
    upstream_request(&r.ht.txn, &first, &b1);
    FUZZ_CHECK(translate(&r, 1) == 0, "the retry's translation failed");
    upstream_request(&r.ht.txn, &again, &b2);
    FUZZ_CHECK(first.len == again.len && memcmp(first.base, again.base, first.len) == 0,
               "a retry translates differently:\n%.*s\n----\n%.*s", (int)first.len, first.base,
               (int)again.len, again.base);
    in = json_loadb(data, len, 0, NULL);
    if (in != NULL && b1.len > 0) {
      up = json_loadb(b1.base, b1.len, 0, NULL);
      FUZZ_CHECK(up != NULL, "valid JSON in, invalid JSON upstream: %.*s", (int)b1.len,
                 b1.base);
      json_decref(up);
    }
    json_decref(in);
  } else {
    FUZZ_CHECK(rc < 0, "translate_request rc %d", rc);
  }
  run_free(&r);
  llmux_buf_free(&first);
  llmux_buf_free(&again);
  llmux_buf_free(&b1);
  llmux_buf_free(&b2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_in_t in = {data, size};
  uint8_t ctl = fuzz_byte(&in), sel = fuzz_byte(&in);
  const char *body = (const char *)in.p;
  if (vt == NULL) setup();
  switch (ctl & 7) {
    case 0: case 1: fuzz_response(ctl, sel, body, in.n, 0); break;
    case 2: case 3: fuzz_response(ctl, sel, body, in.n, 1); break;
    case 4: fuzz_error(ctl, sel, body, in.n); break;
    case 5: fuzz_models(body, in.n); break;
    default: fuzz_request(ctl, body, in.n); break;
  }
  return 0;
}
