/* Front door request and connection lifetimes: aborts, server close,
 * streamed responses, backpressure, timeouts. Every test ends with
 * uv_loop_close() == 0 (fixture_finish). */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <cmocka.h>

#include "../support/http_test_fixture.h"

static const char *find(const llmux_buf_t *b, const char *s) {
  return tclient_find(b->base, b->len, s, strlen(s));
}

#define assert_has(buf, s) \
  do { if (find((buf), (s)) == NULL) fail_msg("missing %s in: %s", (s), (buf)->base); } while (0)

/* A request the handler keeps: counts its aborts; may tick a stream. */
typedef struct {
  uv_timer_t timer;
  fixture_t *f;
  llmux_http_req_t *req;
  unsigned abort_calls, ticks;
} held_t;

static void held_free(uv_handle_t *h) { free(h->data); }

static void on_held_abort(llmux_http_req_t *req) {
  held_t *h = req->data;
  h->abort_calls++;
  h->f->aborts++;
  assert_int_equal(h->abort_calls, 1);
  h->req = NULL;
  uv_close((uv_handle_t *)&h->timer, held_free);
  fixture__maybe_finish(h->f);
}

static held_t *hold(fixture_t *f, llmux_http_req_t *req) {
  held_t *h = llmux_xcalloc(1, sizeof(*h));
  h->f = f;
  h->req = req;
  uv_timer_init(&f->loop, &h->timer);
  h->timer.data = h;
  req->data = h;
  req->on_abort = on_held_abort;
  return h;
}

static void h_hold(fixture_t *f, llmux_http_req_t *req) { hold(f, req); }

static void test_client_disconnect_aborts_the_request_once(void **state) {
  fixture_t f;
  const char *pieces[] = {"GET /hold HTTP/1.1\r\nHost: h\r\n\r\n"};
  fixture_init(&f, NULL, h_hold);
  fixture_client(&f, pieces, 1, 0, NULL)->close_after_write = 1;
  f.expect_aborts = 1;
  fixture_run(&f);
  assert_int_equal(f.requests, 1);
  assert_int_equal(f.aborts, 1);
  fixture_finish(&f);
}

static void on_close_server(uv_timer_t *t) {
  held_t *h = t->data;
  llmux_http_server_close(&h->f->srv, fixture__server_closed); /* aborts h, frees it */
}

static void h_hold_then_close_server(fixture_t *f, llmux_http_req_t *req) {
  held_t *h = hold(f, req);
  uv_timer_start(&h->timer, on_close_server, 5, 0);
}

static void test_server_close_aborts_requests_in_flight(void **state) {
  fixture_t f;
  const char *pieces[] = {"GET /hold HTTP/1.1\r\nHost: h\r\n\r\n"};
  fixture_init(&f, NULL, h_hold_then_close_server);
  fixture_client(&f, pieces, 1, 0, NULL);
  fixture_run(&f);
  assert_int_equal(f.aborts, 1);
  assert_true(f.clients[0].got_eof || f.clients[0].got_error);
  assert_int_equal(f.clients[0].in.len, 0);
  fixture_finish(&f);
}

static void h_ok(fixture_t *f, llmux_http_req_t *req) {
  req->on_abort = on_held_abort; /* must never run: the request is finished */
  llmux_http_respond(req, 200, NULL, 0, "done|", 5);
}

static void test_no_abort_after_the_response_is_finished(void **state) {
  fixture_t f;
  const char *pieces[] = {"GET / HTTP/1.1\r\nHost: h\r\n\r\n"};
  fixture_init(&f, NULL, h_ok);
  fixture_client(&f, pieces, 1, 0, "done|");
  fixture_run(&f);
  assert_int_equal(f.aborts, 0);
  assert_has(&f.clients[0].in, "Content-Length: 5\r\n\r\ndone|");
  fixture_finish(&f);
}

static void h_stream(fixture_t *f, llmux_http_req_t *req) {
  static const llmux_http_header_t hs[] = {LLMUX_HTTP_HEADER_LIT("X-S", "1"),
                                           LLMUX_HTTP_HEADER_LIT("Content-Length", "99"),
                                           LLMUX_HTTP_HEADER_LIT("X-Evil", "a\r\nInjected: 1")};
  llmux_buf_t owned = {0};
  llmux_buf_appends(&owned, "world");
  assert_int_equal(llmux_http_start(req, 200, hs, LLMUX_COUNTOF(hs)), 0);
  assert_true(llmux_http_write(req, "hello", 5) >= 0);
  assert_true(llmux_http_write_buf(req, &owned) >= 0);
  /* written without a copy: the buffer is the caller's again, emptied, when
   * the socket took it all, else the write's (then zeroed here) */
  assert_int_equal(owned.len, 0);
  llmux_buf_free(&owned);
  assert_true(llmux_http_write(req, "", 0) >= 0); /* must not end the stream */
  assert_int_equal(llmux_http_end(req), 0);
}

static void test_streamed_response_is_chunked(void **state) {
  fixture_t f;
  const char *pieces[] = {"GET /s HTTP/1.1\r\nHost: h\r\n\r\n"};
  fixture_init(&f, NULL, h_stream);
  fixture_client(&f, pieces, 1, 0, "0\r\n\r\n");
  fixture_run(&f);
  assert_has(&f.clients[0].in, "X-S: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                               "5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n");
  assert_null(find(&f.clients[0].in, "Content-Length"));
  assert_null(find(&f.clients[0].in, "Injected"));
  fixture_finish(&f);
}

static void test_stream_to_http10_is_close_delimited(void **state) {
  llmux_buf_t out;
  fixture_once(NULL, h_stream, "GET /s HTTP/1.0\r\n\r\n", &out);
  assert_has(&out, "X-S: 1\r\nConnection: close\r\n\r\nhelloworld");
  assert_null(find(&out, "Transfer-Encoding"));
  assert_int_equal(strcmp(out.base + out.len - 10, "helloworld"), 0);
  llmux_buf_free(&out);
}

/* Writes 256 KiB pieces until the client's queue backs up, then waits for
 * on_drain; 32 MiB in all. */
#define BP_PIECE (256 * 1024)
#define BP_TOTAL (32u * 1024 * 1024)

static void bp_pump(llmux_http_req_t *req) {
  held_t *h = req->data;
  while (h->ticks * BP_PIECE < BP_TOTAL) {
    llmux_buf_t b = {0};
    int q;
    llmux_buf_reserve(&b, BP_PIECE);
    memset(b.base, 'z', BP_PIECE);
    b.len = BP_PIECE;
    h->ticks++;
    q = llmux_http_write_buf(req, &b);
    llmux_buf_free(&b); /* the caller's again when it all went at once */
    if (q < 0) fail_msg("write: %d at %u", q, h->ticks);
    if (q > 0) return; /* wait for on_drain */
  }
  req->on_drain = NULL;
  llmux_http_end(req);
  uv_close((uv_handle_t *)&h->timer, held_free);
}

static void bp_drain(llmux_http_req_t *req) {
  held_t *h = req->data;
  h->f->drains++;
  bp_pump(req);
}

static void h_backpressure(fixture_t *f, llmux_http_req_t *req) {
  hold(f, req);
  req->on_drain = bp_drain;
  assert_int_equal(llmux_http_start(req, 200, NULL, 0), 0);
  bp_pump(req);
}

static void test_slow_client_gets_backpressure_and_drain(void **state) {
  fixture_t f;
  const char *pieces[] = {"GET /big HTTP/1.1\r\nHost: h\r\n\r\n"};
  fixture_init(&f, NULL, h_backpressure);
  fixture_client(&f, pieces, 1, 0, "\r\n0\r\n\r\n");
  fixture_run(&f);
  assert_true(f.drains >= 1);
  assert_int_equal(f.aborts, 0);
  assert_true(f.clients[0].in.len > BP_TOTAL);
  fixture_finish(&f);
}

static void h_echo_body(fixture_t *f, llmux_http_req_t *req) {
  llmux_buf_t body = {0};
  llmux_http_req_take_body(req, &body);
  assert_int_equal(req->body.len, 0);
  llmux_buf_appends(&body, "|");
  llmux_http_respond_buf(req, 201, NULL, 0, &body);
}

static void test_taken_body_can_be_sent_back_without_copy(void **state) {
  fixture_t f;
  const char *pieces[] = {"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 7\r\n\r\npayload"};
  fixture_init(&f, NULL, h_echo_body);
  fixture_client(&f, pieces, 1, 0, "|");
  fixture_run(&f);
  assert_has(&f.clients[0].in, "HTTP/1.1 201 Created\r\n");
  assert_has(&f.clients[0].in, "Content-Length: 8\r\n\r\npayload|");
  fixture_finish(&f);
}

static void on_tick(uv_timer_t *t) {
  held_t *h = t->data;
  llmux_http_write(h->req, "data: x\n\n", 9);
  h->ticks++;
}

static void h_endless_stream(fixture_t *f, llmux_http_req_t *req) {
  held_t *h = hold(f, req);
  llmux_http_start(req, 200, NULL, 0);
  uv_timer_start(&h->timer, on_tick, 2, 2);
}

static void test_client_abort_mid_stream_stops_the_stream(void **state) {
  fixture_t f;
  const char *pieces[] = {"GET /sse HTTP/1.1\r\nHost: h\r\n\r\n"};
  tclient_t *cl;
  fixture_init(&f, NULL, h_endless_stream);
  cl = fixture_client(&f, pieces, 1, 0, "data: x");
  cl->until_count = 3;
  f.expect_aborts = 1;
  fixture_run(&f);
  assert_int_equal(f.aborts, 1);
  fixture_finish(&f);
}

static void h_error(fixture_t *f, llmux_http_req_t *req) {
  llmux_http_send_error(req, 404, "invalid_request_error", "model_not_found",
                        "model \"x\"\nnot found", "model");
}

static void test_send_error_escapes_the_message(void **state) {
  fixture_t f;
  const char *pieces[] = {"GET / HTTP/1.1\r\nHost: h\r\n\r\n"};
  fixture_init(&f, NULL, h_error);
  fixture_client(&f, pieces, 1, 0, "}}");
  fixture_run(&f);
  assert_has(&f.clients[0].in, "HTTP/1.1 404 Not Found\r\n");
  assert_has(&f.clients[0].in, "Content-Type: application/json\r\n");
  assert_has(&f.clients[0].in,
             "{\"error\":{\"message\":\"model \\\"x\\\"\\nnot found\",\"type\":"
             "\"invalid_request_error\",\"param\":\"model\",\"code\":\"model_not_found\"}}");
  fixture_finish(&f);
}

static void test_error_json_uses_null_for_missing_fields(void **state) {
  llmux_buf_t b = {0};
  assert_int_equal(llmux_http_error_json(&b, "server_error", NULL, "boom", NULL), 0);
  assert_string_equal(b.base, "{\"error\":{\"message\":\"boom\",\"type\":\"server_error\","
                              "\"param\":null,\"code\":null}}");
  llmux_buf_free(&b);
}

static void test_idle_keep_alive_connection_closes_quietly(void **state) {
  llmux_http_options_t o = {.idle_timeout_ms = 50};
  fixture_t f;
  const char *pieces[] = {"GET / HTTP/1.1\r\nHost: h\r\n\r\n"};
  uint64_t t0;
  fixture_init(&f, &o, h_ok);
  fixture_client(&f, pieces, 1, 0, NULL);
  t0 = uv_now(&f.loop);
  fixture_run(&f);
  assert_true(f.clients[0].got_eof);
  assert_true(uv_now(&f.loop) - t0 >= 45);
  /* One response, then nothing. */
  assert_int_equal(strcmp(f.clients[0].in.base + f.clients[0].in.len - 5, "done|"), 0);
  fixture_finish(&f);
}

static void test_stalled_header_gets_408(void **state) {
  llmux_http_options_t o = {.header_timeout_ms = 50};
  llmux_buf_t out;
  fixture_once(&o, h_ok, "GET / HTTP/1.1\r\nHost: h\r\n", &out);
  assert_int_equal(strncmp(out.base, "HTTP/1.1 408 Request Timeout\r\n", 30), 0);
  assert_has(&out, "\"code\":\"request_timeout\"");
  llmux_buf_free(&out);
}

static void test_stalled_body_gets_408(void **state) {
  llmux_http_options_t o = {.header_timeout_ms = 50};
  llmux_buf_t out;
  fixture_once(&o, h_ok, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc", &out);
  assert_int_equal(strncmp(out.base, "HTTP/1.1 408 ", 13), 0);
  llmux_buf_free(&out);
}

static void test_silent_connection_closes_after_header_timeout(void **state) {
  llmux_http_options_t o = {.header_timeout_ms = 50};
  fixture_t f;
  fixture_init(&f, &o, h_ok);
  fixture_client(&f, NULL, 0, 0, NULL);
  fixture_run(&f);
  assert_true(f.clients[0].got_eof);
  assert_int_equal(f.clients[0].in.len, 0);
  assert_int_equal(f.requests, 0);
  fixture_finish(&f);
}

static void never_called(llmux_http_req_t *req) { fail(); }

static void test_server_listens_on_ipv6_and_closes_cleanly(void **state) {
  uv_loop_t loop;
  llmux_http_server_t srv;
  llmux_http_options_t o = {.on_request = never_called};
  int rc;
  assert_int_equal(uv_loop_init(&loop), 0);
  assert_int_equal(llmux_http_server_init(&loop, &srv, &o), 0);
  rc = llmux_http_server_listen(&srv, "::1", 0);
  if (rc == 0) assert_true(srv.port > 0);
  else assert_int_equal(rc, LLMUX_EADDRNOTAVAIL); /* no IPv6 here */
  assert_int_equal(srv.opts.max_header, 16 * 1024); /* defaults applied */
  llmux_http_server_close(&srv, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* libuv's codes share their numbers with ours (UV_ENOENT is LLMUX_ENOMEM):
 * the front door translates, so the operator reads the real reason. */
static void test_listen_on_a_taken_port_says_address_in_use(void **state) {
  uv_loop_t loop;
  llmux_http_server_t first, second;
  llmux_http_options_t o = {.on_request = never_called};
  int rc;
  assert_int_equal(uv_loop_init(&loop), 0);
  assert_int_equal(llmux_http_server_init(&loop, &first, &o), 0);
  assert_int_equal(llmux_http_server_listen(&first, "127.0.0.1", 0), 0);
  assert_int_equal(llmux_http_server_init(&loop, &second, &o), 0);
  rc = llmux_http_server_listen(&second, "127.0.0.1", first.port);
  assert_int_equal(rc, LLMUX_EADDRINUSE);
  assert_string_equal(llmux_strerror(rc), "address already in use");
  assert_int_equal(llmux_http_server_listen(&second, "not-an-address", 80), LLMUX_EINVAL);
  llmux_http_server_close(&first, NULL);
  llmux_http_server_close(&second, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* on_status: each response's status, once, as its head goes out. */
static int statuses[8];
static size_t nstatuses;
static llmux_http_conn_stats_t stats_in_handler;

static void record_status(llmux_http_req_t *req, int status) {
  if (nstatuses < LLMUX_COUNTOF(statuses)) statuses[nstatuses++] = status;
}

static void h_by_path(fixture_t *f, llmux_http_req_t *req) {
  llmux_http_server_conn_stats(req->server, &stats_in_handler);
  if (req->path.len == 2 && req->path.base[1] == 's') {
    h_stream(f, req);
    return;
  }
  llmux_http_send_error(req, 404, "invalid_request_error", "unknown_url", "no", NULL);
}

static void test_on_status_sees_each_response_status_once(void **state) {
  fixture_t f;
  llmux_http_options_t o = {0};
  const char *pieces[] = {"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"
                          "GET /s HTTP/1.1\r\nHost: h\r\n\r\n"};
  o.on_status = record_status;
  nstatuses = 0;
  fixture_init(&f, &o, h_by_path);
  fixture_client(&f, pieces, 1, 0, "0\r\n\r\n");
  fixture_run(&f);
  assert_int_equal(nstatuses, 2);
  assert_int_equal(statuses[0], 404);
  assert_int_equal(statuses[1], 200);
  /* the handler saw its own connection as the one active connection */
  assert_int_equal(stats_in_handler.active, 1);
  assert_int_equal(stats_in_handler.idle + stats_in_handler.reading + stats_in_handler.closing, 0);
  fixture_finish(&f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_client_disconnect_aborts_the_request_once),
      cmocka_unit_test(test_server_close_aborts_requests_in_flight),
      cmocka_unit_test(test_no_abort_after_the_response_is_finished),
      cmocka_unit_test(test_streamed_response_is_chunked),
      cmocka_unit_test(test_stream_to_http10_is_close_delimited),
      cmocka_unit_test(test_slow_client_gets_backpressure_and_drain),
      cmocka_unit_test(test_taken_body_can_be_sent_back_without_copy),
      cmocka_unit_test(test_client_abort_mid_stream_stops_the_stream),
      cmocka_unit_test(test_send_error_escapes_the_message),
      cmocka_unit_test(test_error_json_uses_null_for_missing_fields),
      cmocka_unit_test(test_idle_keep_alive_connection_closes_quietly),
      cmocka_unit_test(test_stalled_header_gets_408),
      cmocka_unit_test(test_stalled_body_gets_408),
      cmocka_unit_test(test_silent_connection_closes_after_header_timeout),
      cmocka_unit_test(test_server_listens_on_ipv6_and_closes_cleanly),
      cmocka_unit_test(test_listen_on_a_taken_port_says_address_in_use),
      cmocka_unit_test(test_on_status_sees_each_response_status_once),
  };
  signal(SIGPIPE, SIG_IGN);
  return cmocka_run_group_tests(tests, NULL, NULL);
}
