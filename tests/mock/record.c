/* The request log and the /mock/ endpoints tests use to see what reached
 * the provider: GET /mock/requests, GET /mock/stats, POST /mock/reset.
 * Requests to /mock/ are neither logged nor counted, nor subject to faults. */
#include "mock.h"

#include <jansson.h>
#include <stdlib.h>

mock_req_t *mock_req_new(mock_server_t *srv) {
  mock_req_t *r = srv->spare;
  if (r != NULL) {
    srv->spare = NULL;
    r->url.len = r->hdrs.len = r->body.len = 0;
    r->nhdrs = 0;
  } else {
    r = llmux_xcalloc(1, sizeof(*r));
  }
  mock_knobs_unset(&r->knobs);
  return r;
}

void mock_req_free(mock_req_t *r) {
  llmux_buf_free(&r->url);
  llmux_buf_free(&r->hdrs);
  llmux_buf_free(&r->body);
  free(r);
}

/* Keeps one request's buffers for the next, so a busy connection does not
 * reallocate them for every request. */
void mock_req_release(mock_server_t *srv, mock_req_t *r) {
  if (srv->spare == NULL && r->body.cap <= (1u << 20)) srv->spare = r;
  else mock_req_free(r);
}

void mock_log_push(mock_server_t *srv, mock_req_t *r) {
  mock_req_t *old;
  if (!srv->record) { mock_req_release(srv, r); return; }
  old = srv->log[srv->log_next];
  srv->log[srv->log_next] = r;
  srv->log_next = (srv->log_next + 1) % MOCK_LOG_SIZE;
  if (old) mock_req_release(srv, old);
}

void mock_log_clear(mock_server_t *srv) {
  unsigned i;
  for (i = 0; i < MOCK_LOG_SIZE; i++) {
    if (srv->log[i]) mock_req_free(srv->log[i]);
    srv->log[i] = NULL;
  }
  srv->log_next = 0;
}

/* Arbitrary bytes as a JSON string; jansson refuses invalid UTF-8. */
static json_t *bytes_json(const char *s, size_t n) {
  json_t *j = json_stringn(s, n);
  return j ? j : json_sprintf("<%zu bytes, not UTF-8>", n);
}

static json_t *req_headers_json(const mock_req_t *r) {
  json_t *h = json_object();
  const char *p = r->hdrs.base;
  unsigned i;
  for (i = 0; i < r->nhdrs; i++) {
    const char *val = p + strlen(p) + 1;
    json_t *prev = json_object_get(h, p);
    if (prev && json_is_string(prev)) { /* repeated header: join like HTTP does */
      json_object_set_new(h, p, json_sprintf("%s, %s", json_string_value(prev), val));
    } else {
      json_object_set_new(h, p, bytes_json(val, strlen(val)));
    }
    p = val + strlen(val) + 1;
  }
  return h;
}

static json_t *req_json(const mock_req_t *r) {
  return json_pack("{s:I, s:s, s:o, s:o, s:o}",
                   "seq", (json_int_t)r->seq,
                   "method", llhttp_method_name((llhttp_method_t)r->method),
                   "path", bytes_json(r->url.base ? r->url.base : "", r->url.len),
                   "headers", req_headers_json(r),
                   "body", bytes_json(r->body.base ? r->body.base : "", r->body.len));
}

static void send_json(mock_conn_t *c, json_t *j) {
  char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
  if (s == NULL) {
    mock_send_error(c, 500, "server_error", NULL, NULL, "mock could not build JSON");
  } else {
    mock_send_body(c, 200, "application/json", s, strlen(s));
  }
  free(s);
  json_decref(j);
}

static json_t *log_json(mock_server_t *srv) {
  json_t *arr = json_array();
  unsigned i;
  for (i = 0; i < MOCK_LOG_SIZE; i++) { /* oldest first */
    mock_req_t *r = srv->log[(srv->log_next + i) % MOCK_LOG_SIZE];
    if (r) json_array_append_new(arr, req_json(r));
  }
  return arr;
}

static json_t *stats_json(mock_server_t *srv) {
  return json_pack("{s:s, s:I, s:I, s:I, s:I, s:I}", "name", srv->name,
                   "requests", (json_int_t)srv->stats.requests,
                   "connections", (json_int_t)srv->stats.connections,
                   "active_connections", (json_int_t)srv->stats.active,
                   "aborted", (json_int_t)srv->stats.aborted,
                   "streams", (json_int_t)srv->stats.streams);
}

static int path_is(const char *path, size_t plen, const char *want) {
  return plen == strlen(want) && memcmp(path, want, plen) == 0;
}

int mock_introspect(mock_conn_t *c, mock_req_t *req, const char *path, size_t plen) {
  mock_server_t *srv = c->srv;
  int get = req->method == HTTP_GET, post = req->method == HTTP_POST;
  if (get && path_is(path, plen, "/mock/requests")) send_json(c, log_json(srv));
  else if (get && path_is(path, plen, "/mock/stats")) send_json(c, stats_json(srv));
  else if (post && path_is(path, plen, "/mock/reset")) {
    mock_log_clear(srv);
    send_json(c, json_pack("{s:b}", "ok", 1));
  } else {
    return -1;
  }
  return 0;
}
