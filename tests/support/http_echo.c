/* http_echo: the front door alone, for end-to-end tests of HTTP handling.
 *
 *   http_echo [--host H] [--port P] [--max-header N] [--max-body N]
 *             [--header-timeout-ms N] [--idle-timeout-ms N]
 *
 * Prints the bound port on the first line of stdout, then serves:
 *   /echo                 JSON: method, path, query, headers (count), x_test
 *                         (the X-Test header or null), version, keep_alive,
 *                         body_length, body
 *   /slow?ms=N            "slow N" after N ms
 *   /stream?n=N&ms=M      N SSE events, one every M ms, then [DONE]
 *   /error                an OpenAI-shaped 400
 *   /stats                {"requests":R,"aborts":A}
 * SIGTERM/SIGINT close every handle and exit 0 if the loop closed cleanly. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "http/http_server.h"
#include "base/util.h"

static llmux_http_server_t server;
static uv_signal_t sig_term, sig_int;
static unsigned long n_requests, n_aborts;

typedef struct {
  uv_timer_t timer;
  llmux_http_req_t *req; /* NULL once finished or aborted */
  unsigned left, i;
} job_t;

static void job_free(uv_handle_t *h) { free(h->data); }

static void job_done(job_t *j) {
  j->req = NULL;
  uv_close((uv_handle_t *)&j->timer, job_free);
}

static void on_job_abort(llmux_http_req_t *req) {
  n_aborts++;
  job_done(req->data);
}

static job_t *job_new(llmux_http_req_t *req) {
  job_t *j = llmux_xcalloc(1, sizeof(*j));
  uv_timer_init(server.loop, &j->timer);
  j->timer.data = j;
  j->req = req;
  req->data = j;
  req->on_abort = on_job_abort;
  return j;
}

/* Value of integer parameter `name` in the query, or def. */
static unsigned long query_num(const llmux_str_t *q, const char *name, unsigned long def) {
  size_t n = strlen(name);
  const char *p = q->base, *end = q->base + q->len;
  while (p < end) {
    const char *amp = memchr(p, '&', (size_t)(end - p));
    if (amp == NULL) amp = end;
    if ((size_t)(amp - p) > n && strncmp(p, name, n) == 0 && p[n] == '=')
      return strtoul(p + n + 1, NULL, 10);
    p = amp + 1;
  }
  return def;
}

static void add_str(llmux_buf_t *b, const char *key, llmux_str_t v) {
  llmux_buf_printf(b, "\"%s\":", key);
  llmux_buf_append_json_str(b, v.base, v.len);
  llmux_buf_appends(b, ",");
}

static void serve_echo(llmux_http_req_t *req) {
  static const llmux_http_header_t ct[] = {
      LLMUX_HTTP_HEADER_LIT("Content-Type", "application/json")};
  const llmux_str_t *xt = llmux_http_header(req, "x-test");
  llmux_buf_t b = {0};
  llmux_buf_appends(&b, "{");
  add_str(&b, "method", (llmux_str_t){req->method, strlen(req->method)});
  add_str(&b, "path", req->path);
  add_str(&b, "query", req->query);
  if (xt) add_str(&b, "x_test", *xt);
  else llmux_buf_appends(&b, "\"x_test\":null,");
  llmux_buf_printf(&b, "\"headers\":%zu,\"version\":\"%d.%d\",\"keep_alive\":%s,",
                   req->nheaders, req->version_major, req->version_minor,
                   req->keep_alive ? "true" : "false");
  llmux_buf_printf(&b, "\"body_length\":%zu,", req->body.len);
  add_str(&b, "body", req->body);
  b.base[b.len - 1] = '}'; /* replaces the last comma */
  llmux_buf_appends(&b, "\n");
  llmux_http_respond_buf(req, 200, ct, 1, &b);
}

static void on_slow(uv_timer_t *t) {
  job_t *j = t->data;
  char msg[32];
  int n = snprintf(msg, sizeof(msg), "slow %u", j->left);
  llmux_http_respond(j->req, 200, NULL, 0, msg, (size_t)n);
  job_done(j);
}

static void on_tick(uv_timer_t *t) {
  job_t *j = t->data;
  char ev[48];
  int n;
  if (j->i < j->left) {
    n = snprintf(ev, sizeof(ev), "data: {\"i\":%u}\n\n", j->i++);
    llmux_http_write(j->req, ev, (size_t)n);
    return;
  }
  llmux_http_write(j->req, "data: [DONE]\n\n", 14);
  llmux_http_end(j->req);
  job_done(j);
}

static void serve_stream(llmux_http_req_t *req) {
  static const llmux_http_header_t h[] = {
      LLMUX_HTTP_HEADER_LIT("Content-Type", "text/event-stream"),
      LLMUX_HTTP_HEADER_LIT("Cache-Control", "no-cache")};
  job_t *j = job_new(req);
  unsigned long ms = query_num(&req->query, "ms", 10);
  j->left = (unsigned)query_num(&req->query, "n", 3);
  llmux_http_start(req, 200, h, LLMUX_COUNTOF(h));
  uv_timer_start(&j->timer, on_tick, ms, ms ? ms : 1);
}

static int path_is(const llmux_http_req_t *req, const char *p) {
  return req->path.len == strlen(p) && memcmp(req->path.base, p, req->path.len) == 0;
}

static void on_request(llmux_http_req_t *req) {
  n_requests++;
  if (path_is(req, "/echo")) {
    serve_echo(req);
  } else if (path_is(req, "/slow")) {
    job_t *j = job_new(req);
    j->left = (unsigned)query_num(&req->query, "ms", 100);
    uv_timer_start(&j->timer, on_slow, j->left, 0);
  } else if (path_is(req, "/stream")) {
    serve_stream(req);
  } else if (path_is(req, "/error")) {
    llmux_http_send_error(req, 400, "invalid_request_error", "test_error",
                          "a \"quoted\" test error", "model");
  } else if (path_is(req, "/stats")) {
    char s[96];
    int n = snprintf(s, sizeof(s), "{\"requests\":%lu,\"aborts\":%lu}\n", n_requests, n_aborts);
    llmux_http_respond(req, 200, NULL, 0, s, (size_t)n);
  } else {
    llmux_http_send_error(req, 404, "invalid_request_error", "not_found", "no such path", NULL);
  }
}

static void on_signal(uv_signal_t *s, int signum) {
  uv_close((uv_handle_t *)&sig_term, NULL);
  uv_close((uv_handle_t *)&sig_int, NULL);
  llmux_http_server_close(&server, NULL);
}

static int parse_args(int argc, char **argv, llmux_http_options_t *o, const char **host,
                      int *port) {
  int i;
  for (i = 1; i + 1 < argc; i += 2) {
    uint64_t v;
    if (strcmp(argv[i], "--host") == 0) { *host = argv[i + 1]; continue; }
    if (llmux_parse_u64(argv[i + 1], &v) != 0) return -1;
    if (strcmp(argv[i], "--port") == 0) *port = (int)v;
    else if (strcmp(argv[i], "--max-header") == 0) o->max_header = v;
    else if (strcmp(argv[i], "--max-body") == 0) o->max_body = v;
    else if (strcmp(argv[i], "--header-timeout-ms") == 0) o->header_timeout_ms = v;
    else if (strcmp(argv[i], "--idle-timeout-ms") == 0) o->idle_timeout_ms = v;
    else return -1;
  }
  return i == argc ? 0 : -1;
}

int main(int argc, char **argv) {
  llmux_http_options_t opts = {0};
  const char *host = "127.0.0.1";
  int port = 0, rc;
  uv_loop_t *loop = uv_default_loop();

  opts.on_request = on_request;
  if (parse_args(argc, argv, &opts, &host, &port) != 0) {
    fprintf(stderr, "usage: http_echo [--host H] [--port P] [--max-header N] [--max-body N]"
                    " [--header-timeout-ms N] [--idle-timeout-ms N]\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  if ((rc = llmux_http_server_init(loop, &server, &opts)) != 0 ||
      (rc = llmux_http_server_listen(&server, host, port)) != 0) {
    fprintf(stderr, "http_echo: listen %s:%d: %s\n", host, port, llmux_strerror(rc));
    return 1;
  }
  uv_signal_init(loop, &sig_term);
  uv_signal_init(loop, &sig_int);
  uv_signal_start(&sig_term, on_signal, SIGTERM);
  uv_signal_start(&sig_int, on_signal, SIGINT);
  printf("%d\n", server.port);
  fflush(stdout);
  uv_run(loop, UV_RUN_DEFAULT);
  rc = uv_loop_close(loop);
  if (rc != 0) fprintf(stderr, "http_echo: loop not closed cleanly\n");
  return rc == 0 ? 0 : 1;
}
