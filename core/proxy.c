/* Proxying one client request to a provider: validate, resolve, translate
 * with the provider's plugin, send upstream, and stream the answer back.
 *
 * One proxy_t lives from the client's request until both sides are done.
 * It dies in exactly one place, proxy_free(), reached when the response to
 * the client is finished or the client went away, and never while the
 * upstream request is running (it is cancelled first). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_scan.h"
#include "log.h"
#include "plugin.h"
#include "registry.h"
#include "server.h"
#include "util.h"

/* Stop reading from the provider while this much is queued for the client. */
#define CLIENT_HIGH_WATER (256 * 1024)
#define ERROR_BODY_MAX (64 * 1024)
#define MAX_RESP_HEADERS 64

typedef struct proxy_s {
  llmux_gateway_t *gw;
  llmux_http_req_t *client;       /* NULL once finished or aborted */
  llmux_buf_t body;               /* the client's body, taken from the request */
  int endpoint;
  int stream;
  char model_name[256];
  char rid[160];
  llmux_resolution_t res;
  const llmux_route_conf_t *route;
  llmux_provider_rt_t *prov;
  llmux_host_txn_t ht;
  int txn_live;                   /* translate_request ran: txn_free owed */
  llmux_upstream_req_t up;
  int up_running;
  uv_buf_t iov[LLMUX_TXN_MAX_BODY_PARTS];
  llmux_buf_t up_path;
  llmux_buf_t up_headers;
  llmux_buf_t out;                /* non-stream: the whole answer; stream: unused */
  llmux_buf_t err_body;           /* non-2xx: the provider's body */
  llmux_buf_t resp_hdr_store;     /* copies of the provider's response headers */
  llmux_header_t resp_headers[MAX_RESP_HEADERS];
  size_t nresp_headers;
  int started;                    /* stream: the client has our head */
  int emit_failed;
  uint64_t t_start, t_up_start, t_up_head, t_up_end;
} proxy_t;

static void proxy_free(proxy_t *p) {
  if (p->up_running) llmux_upstream_cancel(&p->up);
  if (p->txn_live && p->prov->plugin->vt->txn_free)
    p->prov->plugin->vt->txn_free(p->prov->instance, &p->ht.txn);
  llmux_host_txn_free(&p->ht);
  llmux_buf_free(&p->body);
  llmux_buf_free(&p->up_path);
  llmux_buf_free(&p->up_headers);
  llmux_buf_free(&p->out);
  llmux_buf_free(&p->err_body);
  llmux_buf_free(&p->resp_hdr_store);
  free(p);
}

/* Marks the client side finished; frees the proxy. */
static void proxy_finish(proxy_t *p) {
  p->client = NULL;
  proxy_free(p);
}

static void on_client_abort(llmux_http_req_t *req) {
  proxy_t *p = req->data;
  llmux_debug("%s: client went away; cancelling the upstream request", p->rid);
  proxy_finish(p);
}

static void on_client_drain(llmux_http_req_t *req) {
  proxy_t *p = req->data;
  if (p->up_running) llmux_upstream_resume(&p->up);
}

static void fail_client(proxy_t *p, int status, const char *type, const char *code,
                        const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static void fail_client(proxy_t *p, int status, const char *type, const char *code,
                        const char *param, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (p->client) llmux_http_send_error(p->client, status, type, code, msg, param);
  proxy_finish(p);
}

/* ---- validation --------------------------------------------------------- */

enum { F_MODEL, F_STREAM, F_MESSAGES, F_PROMPT, F_INPUT, F_COUNT };

static int validate(proxy_t *p, llmux_str_t *model_value) {
  llmux_json_field_t f[F_COUNT] = {{"model"}, {"stream"}, {"messages"}, {"prompt"}, {"input"}};
  size_t off = 0;
  const char *why = NULL;
  if (p->body.len == 0) {
    fail_client(p, 400, "invalid_request_error", "invalid_json", NULL,
                "The request has no body: send a JSON object with at least 'model'.");
    return -1;
  }
  if (llmux_json_scan(p->body.base, p->body.len, f, F_COUNT, &off, &why) != 0) {
    fail_client(p, 400, "invalid_request_error", "invalid_json", NULL,
                "We could not parse the JSON body of your request: %s at byte %zu.", why, off);
    return -1;
  }
  if (f[F_MODEL].type == LLMUX_JSON_NONE) {
    fail_client(p, 400, "invalid_request_error", "missing_required_parameter", "model",
                "You must provide a model parameter.");
    return -1;
  }
  if (f[F_MODEL].type != LLMUX_JSON_STRING ||
      llmux_json_unquote(f[F_MODEL].value, p->model_name, sizeof p->model_name) != 0 ||
      p->model_name[0] == '\0') {
    fail_client(p, 400, "invalid_request_error", "invalid_type", "model",
                "'model' must be a non-empty string of at most %zu bytes.",
                sizeof p->model_name - 1);
    return -1;
  }
  if (f[F_STREAM].type != LLMUX_JSON_NONE && f[F_STREAM].type != LLMUX_JSON_TRUE &&
      f[F_STREAM].type != LLMUX_JSON_FALSE && f[F_STREAM].type != LLMUX_JSON_NULL) {
    fail_client(p, 400, "invalid_request_error", "invalid_type", "stream",
                "'stream' must be a boolean.");
    return -1;
  }
  p->stream = f[F_STREAM].type == LLMUX_JSON_TRUE;
  if (p->endpoint == LLMUX_ENDPOINT_CHAT && f[F_MESSAGES].type != LLMUX_JSON_ARRAY) {
    fail_client(p, 400, "invalid_request_error",
                f[F_MESSAGES].type == LLMUX_JSON_NONE ? "missing_required_parameter"
                                                      : "invalid_type",
                "messages", "'messages' must be an array of message objects.");
    return -1;
  }
  if (p->endpoint == LLMUX_ENDPOINT_COMPLETIONS && f[F_PROMPT].type == LLMUX_JSON_NONE) {
    fail_client(p, 400, "invalid_request_error", "missing_required_parameter", "prompt",
                "You must provide a prompt parameter.");
    return -1;
  }
  if (p->endpoint == LLMUX_ENDPOINT_EMBEDDINGS && f[F_INPUT].type != LLMUX_JSON_STRING &&
      f[F_INPUT].type != LLMUX_JSON_ARRAY) {
    fail_client(p, 400, "invalid_request_error",
                f[F_INPUT].type == LLMUX_JSON_NONE ? "missing_required_parameter"
                                                   : "invalid_type",
                "input", "'input' must be a string or an array.");
    return -1;
  }
  *model_value = f[F_MODEL].value;
  return 0;
}

/* ---- responses to the client ---------------------------------------------- */

static uint64_t overhead_us(const proxy_t *p, uint64_t now, int upstream_done) {
  uint64_t total = now - p->t_start;
  uint64_t upstream = (upstream_done ? p->t_up_end : p->t_up_head) - p->t_up_start;
  return total > upstream ? total - upstream : 0;
}

/* Fills h[] with our response headers; returns how many. `num` holds the
 * overhead's digits. */
static size_t our_headers(proxy_t *p, llmux_http_header_t *h, const char *ctype, char *num,
                          uint64_t overhead) {
  size_t n = 0;
  h[n++] = (llmux_http_header_t){{"Content-Type", 12}, {ctype, strlen(ctype)}};
  h[n++] = (llmux_http_header_t){{"x-request-id", 12}, {p->rid, strlen(p->rid)}};
  if (p->route) {
    h[n++] = (llmux_http_header_t){{"x-llmux-provider", 16},
                                   {p->route->provider->name, strlen(p->route->provider->name)}};
    h[n++] = (llmux_http_header_t){{"x-llmux-model", 13},
                                   {p->route->model->id, strlen(p->route->model->id)}};
  }
  snprintf(num, 24, "%llu", (unsigned long long)overhead);
  h[n++] = (llmux_http_header_t){{"x-llmux-overhead-us", 19}, {num, strlen(num)}};
  return n;
}

static int emit_to_client(void *owner, const char *data, size_t len) {
  proxy_t *p = owner;
  int queued;
  if (p->client == NULL) return LLMUX_ECANCELED;
  if (!p->stream) return llmux_buf_append(&p->out, data, len);
  queued = llmux_http_write(p->client, data, len);
  if (queued < 0) {
    p->emit_failed = 1;
    return queued;
  }
  if ((size_t)queued > CLIENT_HIGH_WATER && p->up_running) llmux_upstream_pause(&p->up);
  return 0;
}

static void start_stream(proxy_t *p) {
  llmux_http_header_t h[8];
  char num[24];
  size_t n = our_headers(p, h, "text/event-stream", num,
                         overhead_us(p, llmux_now_us(), 0));
  h[n++] = (llmux_http_header_t){{"Cache-Control", 13}, {"no-cache", 8}};
  llmux_http_start(p->client, 200, h, n);
  p->started = 1;
}

/* The stream broke after the client got our head: tell it in-band. */
static void end_stream_with_error(proxy_t *p, const char *code, const char *msg) {
  llmux_buf_t ev = {0};
  llmux_buf_appends(&ev, "data: {\"error\":");
  llmux_buf_t tmp = {0};
  llmux_http_error_json(&tmp, "upstream_error", code, msg, NULL);
  /* llmux_http_error_json writes {"error":{...}}: keep the inner object. */
  if (tmp.len > 10 && memcmp(tmp.base, "{\"error\":", 9) == 0)
    llmux_buf_append(&ev, tmp.base + 9, tmp.len - 10);
  else
    llmux_buf_appends(&ev, "{}");
  llmux_buf_appends(&ev, "}\n\n");
  llmux_buf_free(&tmp);
  llmux_http_write_buf(p->client, &ev);
  llmux_http_end(p->client);
  proxy_finish(p);
}

static void finish_ok(proxy_t *p) {
  llmux_http_header_t h[8];
  char num[24];
  size_t n;
  if (p->stream) {
    llmux_http_end(p->client);
    proxy_finish(p);
    return;
  }
  /* The body passed through untouched, so check it once: a provider that
   * answers 200 with something that is not JSON is a 502, not the
   * client's parse error. */
  if (llmux_json_scan(p->out.base, p->out.len, NULL, 0, NULL, NULL) != 0) {
    fail_client(p, 502, "upstream_error", "upstream_garbage", NULL,
                "Provider '%s' answered 200 with a body that is not a JSON object.",
                p->route->provider->name);
    return;
  }
  n = our_headers(p, h, "application/json", num, overhead_us(p, llmux_now_us(), 1));
  llmux_http_respond_buf(p->client, 200, h, n, &p->out);
  proxy_finish(p);
}

/* ---- upstream callbacks --------------------------------------------------- */

static void on_up_head(llmux_upstream_req_t *up, int status, const llmux_str_t *hdrs,
                       size_t n) {
  proxy_t *p = up->data;
  size_t i, total = 0, off = 0;
  p->t_up_head = llmux_now_us();
  /* Keep the headers for the plugin (retry-after, rate limits). */
  if (n > MAX_RESP_HEADERS) n = MAX_RESP_HEADERS;
  for (i = 0; i < 2 * n; i++) total += hdrs[i].len + 1;
  p->resp_hdr_store.len = 0;
  if (llmux_buf_reserve(&p->resp_hdr_store, total) != 0) n = 0;
  for (i = 0; i < n; i++) {
    char *base = p->resp_hdr_store.base;
    memcpy(base + off, hdrs[2 * i].base, hdrs[2 * i].len);
    p->resp_headers[i].name = (llmux_str_t){base + off, hdrs[2 * i].len};
    off += hdrs[2 * i].len;
    memcpy(base + off, hdrs[2 * i + 1].base, hdrs[2 * i + 1].len);
    p->resp_headers[i].value = (llmux_str_t){base + off, hdrs[2 * i + 1].len};
    off += hdrs[2 * i + 1].len;
  }
  p->resp_hdr_store.len = off;
  p->nresp_headers = n;
  p->ht.txn.status = status;
  p->ht.txn.resp_headers = p->resp_headers;
  p->ht.txn.nresp_headers = n;
  if (status >= 200 && status < 300 && p->stream && p->client) start_stream(p);
}

static void on_up_body(llmux_upstream_req_t *up, const char *data, size_t len) {
  proxy_t *p = up->data;
  int status = p->ht.txn.status;
  if (status < 200 || status >= 300) {
    if (p->err_body.len + len <= ERROR_BODY_MAX) llmux_buf_append(&p->err_body, data, len);
    return;
  }
  if (p->prov->plugin->vt->parse_response(p->prov->instance, &p->ht.txn, data, len, 0) != 0 &&
      !p->emit_failed) {
    p->emit_failed = 2; /* the plugin could not make sense of the body */
  }
}

static int client_status_for(const llmux_error_info_t *e, int upstream_status) {
  switch (e->cls) {
    case LLMUX_FAIL_RATE_LIMITED:
    case LLMUX_FAIL_QUOTA: return 429;
    case LLMUX_FAIL_BAD_REQUEST:
    case LLMUX_FAIL_CONTEXT_LENGTH:
    case LLMUX_FAIL_CONTENT_FILTER:
      return upstream_status >= 400 && upstream_status < 500 ? upstream_status : 400;
    case LLMUX_FAIL_OVERLOADED: return 503;
    case LLMUX_FAIL_TIMEOUT: return 504;
    default: return 502;
  }
}

static const char *code_for(llmux_fail_class_t c) {
  switch (c) {
    case LLMUX_FAIL_RATE_LIMITED: return "rate_limit_exceeded";
    case LLMUX_FAIL_QUOTA: return "insufficient_quota";
    case LLMUX_FAIL_OVERLOADED: return "provider_overloaded";
    case LLMUX_FAIL_SERVER: return "upstream_error";
    case LLMUX_FAIL_TIMEOUT: return "upstream_timeout";
    case LLMUX_FAIL_AUTH: return "upstream_auth_failed";
    case LLMUX_FAIL_BAD_REQUEST: return "invalid_request";
    case LLMUX_FAIL_CONTEXT_LENGTH: return "context_length_exceeded";
    case LLMUX_FAIL_MODEL_NOT_FOUND: return "model_not_found";
    case LLMUX_FAIL_CONTENT_FILTER: return "content_filter";
    default: return "upstream_error";
  }
}

static void finish_upstream_error(proxy_t *p) {
  llmux_error_info_t e;
  llmux_buf_t body = {0};
  llmux_http_header_t h[10];
  char num[24], ra[24];
  size_t n;
  int status;
  memset(&e, 0, sizeof e);
  p->prov->plugin->vt->classify_error(p->prov->instance, &p->ht.txn, p->err_body.base,
                                      p->err_body.len, &e);
  status = client_status_for(&e, p->ht.txn.status);
  {
    llmux_buf_t msg = {0};
    llmux_buf_printf(&msg, "Provider '%s' answered %d: %s", p->route->provider->name,
                     p->ht.txn.status, e.message.len ? e.message.base : "no details");
    llmux_http_error_json(&body,
                          status == 429 ? "rate_limit_error"
                          : status < 500 ? "invalid_request_error"
                                         : "upstream_error",
                          code_for(e.cls), msg.base, NULL);
    llmux_buf_free(&msg);
  }
  llmux_warn("%s: %s %s -> %d (%s)", p->rid, p->route->provider->name, p->route->id,
             p->ht.txn.status, code_for(e.cls));
  n = our_headers(p, h, "application/json", num, overhead_us(p, llmux_now_us(), 1));
  if (status == 429) {
    snprintf(ra, sizeof ra, "%llu",
             (unsigned long long)(e.retry_after_ms ? (e.retry_after_ms + 999) / 1000 : 1));
    h[n++] = (llmux_http_header_t){{"Retry-After", 11}, {ra, strlen(ra)}};
  }
  llmux_buf_free(&e.message);
  llmux_http_respond_buf(p->client, status, h, n, &body);
  proxy_finish(p);
}

static void on_up_done(llmux_upstream_req_t *up, int status) {
  proxy_t *p = up->data;
  p->up_running = 0;
  p->t_up_end = llmux_now_us();
  if (p->client == NULL) { proxy_free(p); return; }
  if (status < 0) {
    int code = status == LLMUX_ETIMEOUT ? 504 : 502;
    llmux_warn("%s: %s %s failed: %s (%s)", p->rid, p->route->provider->name, p->route->id,
               llmux_strerror(status), up->error);
    if (p->started) {
      char msg[300];
      snprintf(msg, sizeof msg, "The stream from provider '%s' broke: %s.",
               p->route->provider->name, up->error[0] ? up->error : llmux_strerror(status));
      end_stream_with_error(p, status == LLMUX_ETIMEOUT ? "upstream_timeout" : "upstream_error",
                            msg);
      return;
    }
    fail_client(p, code, "upstream_error",
                status == LLMUX_ETIMEOUT ? "upstream_timeout" : llmux_err_code(status), NULL,
                "Provider '%s' could not be reached for model '%s': %s.",
                p->route->provider->name, p->route->model->id,
                up->error[0] ? up->error : llmux_strerror(status));
    return;
  }
  if (status < 200 || status >= 300) { finish_upstream_error(p); return; }
  p->prov->plugin->vt->parse_response(p->prov->instance, &p->ht.txn, NULL, 0, 1);
  if (p->emit_failed == 2 && !p->started) {
    fail_client(p, 502, "upstream_error", "upstream_garbage", NULL,
                "Provider '%s' sent a response llmux could not understand.",
                p->route->provider->name);
    return;
  }
  if (p->emit_failed == 2) {
    end_stream_with_error(p, "upstream_garbage", "The provider's stream was malformed.");
    return;
  }
  finish_ok(p);
}

/* ---- sending ------------------------------------------------------------ */

static const llmux_route_conf_t *pick_route(proxy_t *p) {
  size_t i;
  for (i = 0; i < p->res.nroutes; i++) {
    const llmux_route_conf_t *r = p->res.routes[i];
    llmux_provider_rt_t *rt = &p->gw->provs->items[r->provider->index];
    if (r->provider->enabled && rt->instance != NULL) {
      p->prov = rt;
      return r;
    }
  }
  return NULL;
}

static void no_route(proxy_t *p) {
  llmux_buf_t why = {0};
  size_t i;
  for (i = 0; i < p->res.nroutes && i < 6; i++)
    llmux_buf_printf(&why, "%s%s (%s)", i ? ", " : "", p->res.routes[i]->provider->name,
                     p->res.routes[i]->provider->disabled_reason
                         ? p->res.routes[i]->provider->disabled_reason
                         : "unavailable");
  fail_client(p, 503, "upstream_error", "no_provider_available", "model",
              "No provider can serve model '%s' now%s%s.", p->model_name,
              why.len ? ": " : " (no route is configured for it)", why.len ? why.base : "");
  llmux_buf_free(&why);
}

static int build_upstream(proxy_t *p) {
  const llmux_provider_conf_t *pc = p->prov->conf;
  llmux_txn_t *t = &p->ht.txn;
  size_t i;
  p->up_path.len = 0;
  llmux_buf_appends(&p->up_path, p->prov->base_path);
  llmux_buf_append(&p->up_path, t->path.base, t->path.len);
  p->up_headers.len = 0;
  llmux_buf_appends(&p->up_headers, "Content-Type: application/json\r\n");
  llmux_buf_appends(&p->up_headers,
                    p->stream ? "Accept: text/event-stream\r\n" : "Accept: application/json\r\n");
  llmux_buf_printf(&p->up_headers, "X-Request-Id: %s\r\n", p->rid);
  llmux_buf_append(&p->up_headers, t->headers.base, t->headers.len);
  for (i = 0; i < pc->nheaders; i++)
    llmux_buf_printf(&p->up_headers, "%s: %s\r\n", pc->headers[i].key, pc->headers[i].value);
  for (i = 0; i < t->nbody_parts; i++) {
    p->iov[i].base = (char *)t->body_parts[i].base;
    p->iov[i].len = t->body_parts[i].len;
  }
  llmux_upstream_req_init(&p->up);
  p->up.data = p;
  p->up.https = p->prov->tls;
  p->up.host = p->prov->host;
  p->up.port = (uint16_t)p->prov->port;
  p->up.tls_ctx = p->prov->tls_ctx;
  p->up.method = t->method ? t->method : "POST";
  p->up.path = p->up_path.base;
  p->up.headers = p->up_headers.base;
  p->up.headers_len = p->up_headers.len;
  p->up.body = p->iov;
  p->up.nbody = t->nbody_parts;
  p->up.connect_timeout_ms = pc->connect_timeout_ms;
  p->up.first_byte_timeout_ms = pc->timeout_ms;
  p->up.idle_timeout_ms = pc->stream_timeout_ms;
  p->up.total_timeout_ms = pc->total_timeout_ms;
  p->up.on_head = on_up_head;
  p->up.on_body = on_up_body;
  p->up.on_done = on_up_done;
  return 0;
}

static void send_to_route(proxy_t *p, llmux_str_t model_value) {
  llmux_txn_t *t = &p->ht.txn;
  int rc;
  t->size = sizeof *t;
  t->endpoint = (llmux_endpoint_t)p->endpoint;
  t->body = (llmux_str_t){p->body.base, p->body.len};
  t->model_value = model_value;
  t->stream = p->stream;
  t->canonical_model = p->route->model->id;
  t->provider_model = p->route->id;
  p->ht.owner = p;
  p->ht.emit = emit_to_client;
  llmux_host_txn_clear_out(&p->ht);
  p->txn_live = 1;
  rc = p->prov->plugin->vt->translate_request(p->prov->instance, t);
  if (rc != 0 || t->nbody_parts == 0 || t->nbody_parts > LLMUX_TXN_MAX_BODY_PARTS) {
    fail_client(p, 502, "upstream_error", "translation_failed", NULL,
                "Plugin '%s' could not translate the request for provider '%s': %s.",
                p->prov->plugin->name, p->route->provider->name, llmux_strerror(rc));
    return;
  }
  build_upstream(p);
  p->t_up_start = llmux_now_us();
  rc = llmux_upstream_start(p->gw->up, &p->up);
  if (rc != 0) {
    fail_client(p, 502, "upstream_error", llmux_err_code(rc), NULL,
                "Could not start the request to provider '%s': %s.",
                p->route->provider->name, llmux_strerror(rc));
    return;
  }
  p->up_running = 1;
}

void llmux_proxy_handle(llmux_gateway_t *gw, llmux_http_req_t *req, int endpoint) {
  proxy_t *p = calloc(1, sizeof *p);
  llmux_str_t model_value;
  if (p == NULL) {
    llmux_http_send_error(req, 503, "server_error", "out_of_memory", "Out of memory.", NULL);
    return;
  }
  p->gw = gw;
  p->client = req;
  p->endpoint = endpoint;
  p->t_start = req->start_us;
  req->data = p;
  req->on_abort = on_client_abort;
  req->on_drain = on_client_drain;
  llmux_api_request_id(gw, req, p->rid);
  llmux_http_req_take_body(req, &p->body);
  if (validate(p, &model_value) != 0) return;
  if (llmux_resolve(gw->cfg, p->model_name, &p->res) != 0) {
    llmux_api_model_not_found(req, p->model_name, &p->res);
    proxy_finish(p);
    return;
  }
  p->route = pick_route(p);
  if (p->route == NULL) { no_route(p); return; }
  llmux_debug("%s: %s -> %s/%s", p->rid, p->model_name, p->route->provider->name, p->route->id);
  send_to_route(p, model_value);
}
