/* Front door request parsing, driven in-process: a raw client on the same
 * loop sends bytes, the test asserts what the handler saw and what went back
 * on the wire. Every test ends with uv_loop_close() == 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <cmocka.h>

#include "../support/http_test_fixture.h"

/* Responds with a one-line description of the request, ending in '|'. */
static void describe(llmux_http_req_t *req) {
  const llmux_str_t *xs = llmux_http_header(req, "X-SPACE");
  llmux_buf_t b = {0};
  assert_int_equal(req->path.base[req->path.len], '\0');
  assert_int_equal(req->query.base[req->query.len], '\0');
  assert_int_equal(req->body.base[req->body.len], '\0');
  assert_true(req->start_us > 0 && req->start_us <= llmux_now_us());
  llmux_buf_printf(&b, "M=%s P=%s Q=%s V=%d.%d H=%zu K=%d B=%zu:", req->method, req->path.base,
                   req->query.base, req->version_major, req->version_minor, req->nheaders,
                   req->keep_alive, req->body.len);
  llmux_buf_append(&b, req->body.base, req->body.len);
  if (xs != NULL) llmux_buf_printf(&b, " X=[%s]", xs->base);
  llmux_buf_appends(&b, "|");
  llmux_http_respond_buf(req, 200, NULL, 0, &b);
}

static void h_describe(fixture_t *f, llmux_http_req_t *req) { describe(req); }

static const char *find(const llmux_buf_t *b, const char *s) {
  return tclient_find(b->base, b->len, s, strlen(s));
}

#define assert_has(buf, s) \
  do { if (find((buf), (s)) == NULL) fail_msg("missing %s in: %s", (s), (buf)->base); } while (0)

static const char FIELDS_REQ[] =
    "GET /a/b?x=1&y HTTP/1.1\r\nHost: h\r\nX-Multi: 1\r\nx-multi: 2\r\n"
    "X-Space:   padded value \t\r\n\r\n";
static const char FIELDS_DESC[] = "M=GET P=/a/b Q=x=1&y V=1.1 H=4 K=1 B=0: X=[padded value]|";

static void test_request_fields_are_parsed(void **state) {
  fixture_t f;
  const char *pieces[] = {FIELDS_REQ};
  fixture_init(&f, NULL, h_describe);
  fixture_client(&f, pieces, 1, 0, "|");
  fixture_run(&f);
  assert_has(&f.clients[0].in, "HTTP/1.1 200 OK\r\nServer: llmux\r\n");
  assert_has(&f.clients[0].in, FIELDS_DESC);
  assert_null(find(&f.clients[0].in, "Connection: close"));
  fixture_finish(&f);
}

/* A handler's header with CR, LF or NUL in its name or value never reaches
 * the wire (it could forge headers); framing headers are the server's; the
 * clean ones pass as they are. */
static void h_forging(fixture_t *f, llmux_http_req_t *req) {
  llmux_http_header_t h[] = {
      LLMUX_HTTP_HEADER_LIT("X-Before", "kept"),
      LLMUX_HTTP_HEADER_LIT("X-Evil", "a\r\nX-Injected: 1"),
      LLMUX_HTTP_HEADER_LIT("X-Evil\nName", "b"),
      {{"X-Nul", 5}, {"c\0X-Injected: 2", 16}},
      LLMUX_HTTP_HEADER_LIT("Content-Length", "999"),
      LLMUX_HTTP_HEADER_LIT("X-After", "also kept")};
  llmux_http_respond(req, 200, h, LLMUX_COUNTOF(h), "ok|", 3);
}

static void test_response_headers_that_could_forge_are_dropped(void **state) {
  fixture_t f;
  const char *pieces[] = {"GET / HTTP/1.1\r\nHost: h\r\n\r\n"};
  fixture_init(&f, NULL, h_forging);
  fixture_client(&f, pieces, 1, 0, "|");
  fixture_run(&f);
  assert_has(&f.clients[0].in, "HTTP/1.1 200 OK\r\nServer: llmux\r\nX-Before: kept\r\n"
                               "X-After: also kept\r\nContent-Length: 3\r\n\r\nok|");
  assert_null(find(&f.clients[0].in, "X-Injected"));
  assert_null(find(&f.clients[0].in, "X-Evil"));
  assert_null(find(&f.clients[0].in, "X-Nul"));
  fixture_finish(&f);
}

/* Splits s into pieces of n bytes (caller frees each and the array). */
static char **split(const char *s, size_t n, size_t *count) {
  size_t len = strlen(s), i, k = (len + n - 1) / n;
  char **out = llmux_xcalloc(k, sizeof(*out));
  for (i = 0; i < k; i++) out[i] = llmux_xstrndup(s + i * n, len - i * n < n ? len - i * n : n);
  *count = k;
  return out;
}

static void free_split(char **p, size_t k) {
  size_t i;
  for (i = 0; i < k; i++) free(p[i]);
  free(p);
}

static void test_request_split_in_tiny_reads_parses_the_same(void **state) {
  fixture_t f;
  size_t k;
  char **pieces = split(FIELDS_REQ, 3, &k);
  fixture_init(&f, NULL, h_describe);
  fixture_client(&f, (const char *const *)pieces, k, 1, "|");
  fixture_run(&f);
  assert_has(&f.clients[0].in, FIELDS_DESC);
  fixture_finish(&f);
  free_split(pieces, k);
}

static void test_chunked_body_split_across_reads_is_decoded(void **state) {
  fixture_t f;
  size_t k;
  char **pieces = split("POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\nTrailer: t\r\n\r\n", 2, &k);
  fixture_init(&f, NULL, h_describe);
  fixture_client(&f, (const char *const *)pieces, k, 1, "|");
  fixture_run(&f);
  assert_has(&f.clients[0].in, "M=POST P=/c Q= V=1.1 H=2 K=1 B=9:Wikipedia|");
  fixture_finish(&f);
  free_split(pieces, k);
}

static void test_body_bytes_are_kept_exactly(void **state) {
  fixture_t f;
  static const char req[] = "PUT /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\na\0b\0c";
  const char *pieces[] = {req};
  const size_t lens[] = {sizeof(req) - 1};
  tclient_t *cl;
  fixture_init(&f, NULL, h_describe);
  cl = fixture_client(&f, pieces, 1, 0, "|");
  cl->lens = lens;
  fixture_run(&f);
  assert_non_null(tclient_find(cl->in.base, cl->in.len, "B=5:a\0b\0c|", 10));
  fixture_finish(&f);
}

static void expect_status(const llmux_http_options_t *o, const char *raw, const char *status) {
  llmux_buf_t out;
  fixture_once(o, h_describe, raw, &out);
  if (strncmp(out.base, status, strlen(status)) != 0)
    fail_msg("for %s expected %s, got: %s", raw, status, out.base);
  llmux_buf_free(&out);
}

static void test_body_limit_is_exact(void **state) {
  llmux_http_options_t o = {.max_body = 10};
  expect_status(&o, "POST / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 10\r\n\r\n"
                    "0123456789", "HTTP/1.1 200 ");
  expect_status(&o, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n01234567890",
                "HTTP/1.1 413 ");
  expect_status(&o, "POST / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n5\r\n01234\r\n5\r\n56789\r\n0\r\n\r\n",
                "HTTP/1.1 200 ");
  expect_status(&o, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "6\r\n012345\r\n5\r\n56789\r\n0\r\n\r\n", "HTTP/1.1 413 ");
}

static void test_header_limit_gives_431(void **state) {
  llmux_http_options_t o = {.max_header = 200};
  char big[400];
  expect_status(&o, "GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX-A: 0123456789\r\n\r\n",
                "HTTP/1.1 200 ");
  snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nHost: h\r\nX-A: %0250d\r\n\r\n", 7);
  expect_status(&o, big, "HTTP/1.1 431 ");
}

static void test_hostile_requests_get_the_right_status(void **state) {
  static const struct { const char *raw, *status; } cases[] = {
      {"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
       "HTTP/1.1 400 "},
      {"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
       "HTTP/1.1 400 "},
      {"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", "HTTP/1.1 400 "},
      {"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n",
       "HTTP/1.1 400 "},
      {"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", "HTTP/1.1 501 "},
      {"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "HTTP/1.1 400 "},
      {"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
       "fffffffffffffffffffff\r\n", "HTTP/1.1 4"},
      {"POST / HTTP/1.1\r\nHost: h\r\nExpect: nothing\r\nContent-Length: 0\r\n\r\n",
       "HTTP/1.1 417 "},
      {"GET / HTTP/2.0\r\nHost: h\r\n\r\n", "HTTP/1.1 505 "},
      {"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "},
      {"GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n", "HTTP/1.1 400 "},
      /* a name of anything but RFC 9110 tchar (llhttp's strict mode refuses it) */
      {"GET / HTTP/1.1\r\nHost: h\r\nX(y: x\r\n\r\n", "HTTP/1.1 400 "},
      {"GET / HTTP/1.1\r\nHost: h\r\nX\"y: x\r\n\r\n", "HTTP/1.1 400 "},
      {"GET / HTTP/1.1\r\nHost: h\r\nX@y: x\r\n\r\n", "HTTP/1.1 400 "},
      {"GET / HTTP/1.1\r\nHost: h\r\nX\x7fy: x\r\n\r\n", "HTTP/1.1 400 "},
      {"GET / HTTP/1.1\r\nHost: h\r\nX\xc3\xa9: x\r\n\r\n", "HTTP/1.1 400 "},
      {"GET / HTTP/1.1\r\nHost: h\r\n: x\r\n\r\n", "HTTP/1.1 400 "},
      {"GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n", "HTTP/1.1 400 "},
      {"GET / HTTP/1.1\r\nHost: h\r\nX: a\nY: b\r\n\r\n", "HTTP/1.1 400 "},
      {"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n folded\r\n\r\n", "HTTP/1.1 400 "},
      {"GET /\x01 HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 400 "},
      {"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "HTTP/1.1 400 "}, /* TLS hello */
      {"GARBAGE\r\n\r\n", "HTTP/1.1 400 "},
  };
  llmux_http_options_t o = {.header_timeout_ms = 200, .idle_timeout_ms = 200};
  size_t i;
  for (i = 0; i < LLMUX_COUNTOF(cases); i++) expect_status(&o, cases[i].raw, cases[i].status);
}

/* Framings another proxy in front of us may read differently: each is
 * refused with 400 and the connection closes, so nothing after it is served. */
static void test_smuggling_framings_are_refused_and_nothing_after_is_served(void **state) {
  static const char *const cases[] = {
      /* obs-fold whose first line is empty */
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"
      "GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
      /* chunk data not followed by CRLF */
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n"
      "GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
      /* two Host headers */
      "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
      /* Transfer-Encoding on HTTP/1.0 */
      "POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
      "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
  };
  llmux_http_options_t o = {.header_timeout_ms = 200, .idle_timeout_ms = 200};
  size_t i, k, n;
  for (i = 0; i < LLMUX_COUNTOF(cases); i++) {
    for (n = strlen(cases[i]); n >= 1; n = n > 7 ? n / 7 : 0) { /* whole, then in pieces */
      fixture_t f;
      char **pieces = split(cases[i], n, &k);
      tclient_t *cl;
      fixture_init(&f, &o, h_describe);
      cl = fixture_client(&f, (const char *const *)pieces, k, 1, NULL);
      fixture_run(&f);
      if (find(&cl->in, "HTTP/1.1 400 ") == NULL || find(&cl->in, "smuggled") != NULL)
        fail_msg("case %zu in pieces of %zu: %s", i, n, cl->in.base);
      assert_int_equal(f.requests, 0);
      fixture_finish(&f);
      free_split(pieces, k);
    }
  }
}

static void test_absolute_form_targets_are_served_by_their_path(void **state) {
  static const struct { const char *raw, *desc; } cases[] = {
      {"POST http://gw.example/v1/chat/completions?x=1 HTTP/1.1\r\nHost: gw.example\r\n"
       "Content-Length: 2\r\n\r\n{}", "M=POST P=/v1/chat/completions Q=x=1 V=1.1"},
      {"GET HTTPS://gw.example:8080 HTTP/1.1\r\nHost: gw.example\r\n\r\n", "M=GET P=/ Q= "},
      {"GET http://gw.example?a HTTP/1.1\r\nHost: gw.example\r\n\r\n", "M=GET P=/ Q=a "},
  };
  size_t i;
  for (i = 0; i < LLMUX_COUNTOF(cases); i++) {
    fixture_t f;
    const char *pieces[] = {cases[i].raw};
    fixture_init(&f, NULL, h_describe);
    fixture_client(&f, pieces, 1, 0, "|");
    fixture_run(&f);
    assert_has(&f.clients[0].in, "HTTP/1.1 200 OK");
    assert_has(&f.clients[0].in, cases[i].desc);
    fixture_finish(&f);
  }
}

static void test_error_responses_are_openai_shaped_and_close(void **state) {
  llmux_buf_t out;
  fixture_once(NULL, h_describe, "GARBAGE\r\n\r\n", &out);
  assert_has(&out, "Content-Type: application/json\r\n");
  assert_has(&out, "Connection: close\r\n");
  assert_has(&out, "{\"error\":{\"message\":\"malformed request: ");
  assert_has(&out, "\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"bad_request\"}}");
  llmux_buf_free(&out);
}

typedef struct {
  uv_timer_t timer;
  llmux_http_req_t *req;
  fixture_t *f;
} deferred_t;

static void on_deferred(uv_timer_t *t) {
  deferred_t *d = t->data;
  d->f->in_flight--;
  describe(d->req);
  uv_close((uv_handle_t *)t, (uv_close_cb)free);
}

/* Answers 10 ms later, from a timer. */
static void h_deferred(fixture_t *f, llmux_http_req_t *req) {
  deferred_t *d = llmux_xcalloc(1, sizeof(*d));
  d->req = req;
  d->f = f;
  if (++f->in_flight > f->max_in_flight) f->max_in_flight = f->in_flight;
  uv_timer_init(&f->loop, &d->timer);
  d->timer.data = d;
  uv_timer_start(&d->timer, on_deferred, 10, 0);
}

static void test_pipelined_requests_are_handled_one_at_a_time_in_order(void **state) {
  fixture_t f;
  const char *pieces[] = {"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
                          "POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"
                          "GET /3 HTTP/1.1\r\nHost: h\r\n\r\n"};
  const char *p1, *p2, *p3;
  tclient_t *cl;
  fixture_init(&f, NULL, h_deferred);
  cl = fixture_client(&f, pieces, 1, 0, "|");
  cl->until_count = 3;
  fixture_run(&f);
  assert_int_equal(f.requests, 3);
  assert_int_equal(f.max_in_flight, 1);
  p1 = find(&cl->in, "P=/1 ");
  p2 = find(&cl->in, "P=/2 Q= V=1.1 H=2 K=1 B=2:hi|");
  p3 = find(&cl->in, "P=/3 ");
  assert_true(p1 != NULL && p2 != NULL && p3 != NULL);
  assert_true(p1 < p2 && p2 < p3);
  fixture_finish(&f);
}

static void test_expect_100_continue_comes_before_the_response(void **state) {
  fixture_t f;
  const char *pieces[] = {
      "POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 4\r\n\r\n", "body"};
  fixture_init(&f, NULL, h_describe);
  fixture_client(&f, pieces, 2, 30, "|");
  fixture_run(&f);
  assert_int_equal(strncmp(f.clients[0].in.base, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
                           41), 0);
  assert_has(&f.clients[0].in, "B=4:body|");
  fixture_finish(&f);
}

static void test_connection_close_ends_the_pipeline(void **state) {
  fixture_t f;
  const char *pieces[] = {"GET /1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                          "GET /2 HTTP/1.1\r\nHost: h\r\n\r\n"};
  fixture_init(&f, NULL, h_describe);
  fixture_client(&f, pieces, 1, 0, NULL);
  fixture_run(&f);
  assert_true(f.clients[0].got_eof);
  assert_int_equal(f.requests, 1);
  assert_has(&f.clients[0].in, "Connection: close\r\n");
  assert_null(find(&f.clients[0].in, "P=/2"));
  fixture_finish(&f);
}

static void test_http10_closes_unless_keep_alive(void **state) {
  llmux_buf_t out;
  llmux_http_options_t o = {.idle_timeout_ms = 50};
  fixture_once(NULL, h_describe, "GET /old HTTP/1.0\r\n\r\n", &out);
  assert_has(&out, "Connection: close\r\n");
  assert_has(&out, "V=1.0 H=0 K=0");
  llmux_buf_free(&out);
  fixture_once(&o, h_describe, "GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                               "GET /again HTTP/1.0\r\n\r\n", &out);
  assert_has(&out, "Connection: keep-alive\r\n");
  assert_has(&out, "P=/again ");
  llmux_buf_free(&out);
}

/* Deterministic junk: random bytes, and a valid request with bytes flipped. */
static void test_hostile_bytes_never_crash_and_always_close(void **state) {
  static const char valid[] = "POST /x?y=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                              "X-A: b\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
  llmux_http_options_t o = {.max_header = 512, .max_body = 64, .header_timeout_ms = 100,
                            .idle_timeout_ms = 100};
  static char bufs[FIXTURE_MAX_CLIENTS][sizeof(valid)];
  const char *pieces[FIXTURE_MAX_CLIENTS];
  size_t lens[FIXTURE_MAX_CLIENTS];
  uint32_t seed = 12345;
  fixture_t f;
  size_t i, j;

  fixture_init(&f, &o, h_describe);
  for (i = 0; i < FIXTURE_MAX_CLIENTS; i++) {
    memcpy(bufs[i], valid, sizeof(valid));
    for (j = 0; j < 1 + i % 4; j++) {
      seed = seed * 1103515245u + 12345u;
      if (i % 2) bufs[i][(seed >> 8) % (sizeof(valid) - 1)] = (char)(seed >> 16);
      else bufs[i][(seed >> 8) % (sizeof(valid) - 1)] ^= 0x20;
    }
    if (i % 8 == 7)
      for (j = 0; j < sizeof(valid) - 1; j++) { seed = seed * 1103515245u + 12345u; bufs[i][j] = (char)(seed >> 16); }
    pieces[i] = bufs[i];
    lens[i] = sizeof(valid) - 1;
    fixture_client(&f, &pieces[i], 1, 0, NULL)->lens = &lens[i];
  }
  fixture_run(&f);
  for (i = 0; i < FIXTURE_MAX_CLIENTS; i++) {
    tclient_t *cl = &f.clients[i];
    assert_true(cl->got_eof || cl->got_error);
    /* Whatever came back is a sequence of HTTP/1.1 responses or nothing. */
    if (cl->in.len > 0) assert_int_equal(strncmp(cl->in.base, "HTTP/1.1 ", 9), 0);
  }
  fixture_finish(&f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_request_fields_are_parsed),
    cmocka_unit_test(test_response_headers_that_could_forge_are_dropped),
      cmocka_unit_test(test_request_split_in_tiny_reads_parses_the_same),
      cmocka_unit_test(test_chunked_body_split_across_reads_is_decoded),
      cmocka_unit_test(test_body_bytes_are_kept_exactly),
      cmocka_unit_test(test_body_limit_is_exact),
      cmocka_unit_test(test_header_limit_gives_431),
      cmocka_unit_test(test_hostile_requests_get_the_right_status),
      cmocka_unit_test(test_smuggling_framings_are_refused_and_nothing_after_is_served),
      cmocka_unit_test(test_absolute_form_targets_are_served_by_their_path),
      cmocka_unit_test(test_error_responses_are_openai_shaped_and_close),
      cmocka_unit_test(test_pipelined_requests_are_handled_one_at_a_time_in_order),
      cmocka_unit_test(test_expect_100_continue_comes_before_the_response),
      cmocka_unit_test(test_connection_close_ends_the_pipeline),
      cmocka_unit_test(test_http10_closes_unless_keep_alive),
      cmocka_unit_test(test_hostile_bytes_never_crash_and_always_close),
  };
  signal(SIGPIPE, SIG_IGN);
  return cmocka_run_group_tests(tests, NULL, NULL);
}
