/* Memory a client can make the front door hold (issue 11): pipelined
 * requests whose answers are never read, bodies declared but not sent,
 * answers given at the head (on_head), max_connections and max_memory.
 * srv.mem_peak is the most the server held in read and body buffers at
 * once. Every test ends with uv_loop_close() == 0 (fixture_finish). */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <cmocka.h>

#include "../support/http_test_fixture.h"

#define KiB 1024u
#define MiB (1024u * 1024u)

static const char *find(const llmux_buf_t *b, const char *s) {
  return tclient_find(b->base, b->len, s, strlen(s));
}

#define assert_has(buf, s) \
  do { if (find((buf), (s)) == NULL) fail_msg("missing %s in: %s", (s), (buf)->base); } while (0)
#define assert_starts(buf, s) \
  do { \
    if (find((buf), (s)) != (buf)->base) fail_msg("%s is not first in: %s", (s), (buf)->base); \
  } while (0)

static void h_never(fixture_t *f, llmux_http_req_t *req) { fail_msg("on_request ran"); }

/* ---- pipelining without reading --------------------------------------- */

/* A client that writes its bytes at once and never reads: the write only
 * completes if the server takes every byte. */
typedef struct {
  fixture_t *f;
  uv_tcp_t tcp;
  uv_connect_t connect;
  uv_write_t w;
  uv_buf_t buf;
  int written, write_status;
} mute_t;

static void mute_closed(uv_handle_t *h) {
  mute_t *m = h->data;
  fixture__maybe_finish(m->f);
}

static void mute_wrote(uv_write_t *w, int status) {
  mute_t *m = w->data;
  m->written = 1;
  m->write_status = status;
  uv_close((uv_handle_t *)&m->tcp, mute_closed);
}

static void mute_connected(uv_connect_t *req, int status) {
  mute_t *m = req->data;
  assert_int_equal(status, 0);
  assert_int_equal(uv_write(&m->w, (uv_stream_t *)&m->tcp, &m->buf, 1, mute_wrote), 0);
}

static void mute_start(mute_t *m, fixture_t *f, char *data, size_t len) {
  struct sockaddr_in sa;
  memset(m, 0, sizeof(*m));
  m->f = f;
  m->buf = uv_buf_init(data, (unsigned)len);
  uv_ip4_addr("127.0.0.1", f->srv.port, &sa);
  uv_tcp_init(&f->loop, &m->tcp);
  m->tcp.data = m->connect.data = m->w.data = m;
  uv_tcp_connect(&m->connect, &m->tcp, (const struct sockaddr *)&sa, mute_connected);
}

static char big_answer[64 * KiB];

static void h_big_answer(fixture_t *f, llmux_http_req_t *req) {
  llmux_http_respond(req, 200, NULL, 0, big_answer, sizeof(big_answer));
}

static void test_pipelined_requests_are_not_read_while_answers_wait(void **state) {
  /* 32 MiB of pipelined GETs is more than the socket buffers hold: unless
   * the server reads (and keeps) them, the client's write cannot complete.
   * The server gives up on the client at the idle (send) timeout. */
  static const char get[] = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
  llmux_http_options_t o = {.idle_timeout_ms = 200};
  size_t n = 32 * MiB / (sizeof(get) - 1), i;
  char *flood = llmux_xmalloc(n * (sizeof(get) - 1));
  fixture_t f;
  mute_t m;
  for (i = 0; i < n; i++) memcpy(flood + i * (sizeof(get) - 1), get, sizeof(get) - 1);
  memset(big_answer, 'x', sizeof(big_answer));
  fixture_init(&f, &o, h_big_answer);
  mute_start(&m, &f, flood, n * (sizeof(get) - 1));
  fixture_run(&f);
  assert_true(m.written);
  assert_true(m.write_status < 0); /* closed by the server, never taken whole */
  assert_true(f.requests > 0 && f.requests < n);
  /* One read buffer, never grown: RBUF_SIZE + max_header at most. */
  assert_true(f.srv.mem_peak <= 32 * KiB);
  assert_int_equal(f.srv.mem_used, 0);
  fixture_finish(&f);
  free(flood);
}

/* ---- body buffers ----------------------------------------------------- */

static void test_declared_length_is_not_reserved(void **state) {
  llmux_http_options_t o = {.max_body = 16 * MiB, .header_timeout_ms = 100};
  static char req[2048];
  const char *pieces[] = {req};
  fixture_t f;
  int n = snprintf(req, sizeof(req),
                   "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 8000000\r\n\r\n");
  memset(req + n, 'x', 1000); /* the first 1000 of 8,000,000 bytes, then silence */
  fixture_init(&f, &o, h_never);
  fixture_client(&f, pieces, 1, 0, NULL);
  fixture_run(&f);
  assert_starts(&f.clients[0].in, "HTTP/1.1 408 ");
  assert_true(f.srv.mem_peak < 64 * KiB);
  assert_int_equal(f.srv.mem_used, 0);
  fixture_finish(&f);
}

#define BIG_BODY (1 * MiB)
#define BIG_PIECE (16 * KiB)

static void h_check_big_body(fixture_t *f, llmux_http_req_t *req) {
  size_t i;
  assert_int_equal(req->body.len, BIG_BODY);
  for (i = 0; i < BIG_BODY; i++)
    if (req->body.base[i] != (char)('a' + i % 26)) fail_msg("body byte %zu differs", i);
  assert_int_equal(req->body.base[BIG_BODY], '\0');
  llmux_http_respond(req, 200, NULL, 0, "ok|", 3);
}

static void test_large_body_grows_as_it_arrives_and_arrives_whole(void **state) {
  enum { NPIECES = 1 + BIG_BODY / BIG_PIECE };
  static const char head[] = "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 1048576\r\n\r\n";
  const char *pieces[NPIECES];
  size_t lens[NPIECES], i;
  char *body = llmux_xmalloc(BIG_BODY);
  fixture_t f;
  tclient_t *cl;
  for (i = 0; i < BIG_BODY; i++) body[i] = (char)('a' + i % 26);
  pieces[0] = head;
  lens[0] = sizeof(head) - 1;
  for (i = 1; i < NPIECES; i++) {
    pieces[i] = body + (i - 1) * BIG_PIECE;
    lens[i] = BIG_PIECE;
  }
  fixture_init(&f, NULL, h_check_big_body);
  cl = fixture_client(&f, pieces, NPIECES, 0, "ok|");
  cl->lens = lens;
  fixture_run(&f);
  assert_has(&cl->in, "HTTP/1.1 200 OK");
  /* The body buffer never went past the declared length (+1 for a NUL). */
  assert_true(f.srv.mem_peak <= BIG_BODY + 1 + 32 * KiB);
  assert_int_equal(f.srv.mem_used, 0);
  fixture_finish(&f);
  free(body);
}

static void test_body_beyond_max_memory_gets_503_overloaded(void **state) {
  enum { NPIECES = 1 + BIG_BODY / BIG_PIECE };
  static const char head[] = "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 1048576\r\n\r\n";
  llmux_http_options_t o = {.max_memory = 256 * KiB};
  const char *pieces[NPIECES];
  size_t lens[NPIECES], i;
  char *body = llmux_xcalloc(1, BIG_BODY);
  fixture_t f;
  tclient_t *cl;
  pieces[0] = head;
  lens[0] = sizeof(head) - 1;
  for (i = 1; i < NPIECES; i++) {
    pieces[i] = body + (i - 1) * BIG_PIECE;
    lens[i] = BIG_PIECE;
  }
  fixture_init(&f, &o, h_never);
  cl = fixture_client(&f, pieces, NPIECES, 1, NULL);
  cl->lens = lens;
  fixture_run(&f);
  assert_starts(&cl->in, "HTTP/1.1 503 Service Unavailable\r\n");
  assert_has(&cl->in, "Connection: close\r\n");
  assert_has(&cl->in, "\"type\":\"server_error\"");
  assert_has(&cl->in, "\"code\":\"overloaded\"");
  assert_true(f.srv.mem_peak <= 256 * KiB);
  assert_int_equal(f.srv.mem_used, 0);
  fixture_finish(&f);
  free(body);
}

/* ---- answers at the head ---------------------------------------------- */

static int key_marker;

/* Requests need an X-Key header; the key's holder goes on req->data. */
static void head_needs_key(llmux_http_req_t *req) {
  if (llmux_http_header(req, "x-key") == NULL) {
    assert_int_equal(req->body.len, 0);
    llmux_http_send_error(req, 401, "invalid_request_error", "invalid_api_key", "no key", NULL);
    return;
  }
  req->data = &key_marker;
}

static void test_on_head_answer_is_sent_before_the_body(void **state) {
  /* The client never sends its body: the answer cannot wait for it. */
  llmux_http_options_t o = {.on_head = head_needs_key};
  llmux_buf_t out;
  fixture_once(&o, h_never,
               "POST /v HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n"
               "Expect: 100-continue\r\n\r\n",
               &out);
  assert_starts(&out, "HTTP/1.1 401 Unauthorized\r\n");
  assert_has(&out, "Connection: close\r\n");
  assert_has(&out, "\"code\":\"invalid_api_key\"");
  assert_null(find(&out, "100 Continue"));
  llmux_buf_free(&out);
}

static void h_marker_and_body(fixture_t *f, llmux_http_req_t *req) {
  assert_ptr_equal(req->data, &key_marker);
  assert_int_equal(req->body.len, 7);
  assert_memory_equal(req->body.base, "payload", 7);
  llmux_http_respond(req, 200, NULL, 0, "ok|", 3);
}

static void test_on_head_passes_the_request_on_with_its_data(void **state) {
  llmux_http_options_t o = {.on_head = head_needs_key};
  const char *pieces[] = {"POST /v HTTP/1.1\r\nHost: h\r\nX-Key: k\r\nContent-Length: 7\r\n"
                          "Expect: 100-continue\r\n\r\n",
                          "payload"};
  fixture_t f;
  fixture_init(&f, &o, h_marker_and_body);
  fixture_client(&f, pieces, 2, 5, "ok|");
  fixture_run(&f);
  assert_has(&f.clients[0].in, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n");
  assert_null(find(&f.clients[0].in, "Connection: close"));
  assert_int_equal(f.requests, 1);
  fixture_finish(&f);
}

/* ---- max_connections -------------------------------------------------- */

static void on_second_client_done(tclient_t *cl) {
  fixture_t *f = cl->data;
  llmux_http_respond(f->data, 200, NULL, 0, "done|", 5); /* the first client's */
  fixture__client_done(cl);
}

/* Holds the first request and only then connects a second client, so the
 * order of the two connections is known. */
static void h_hold_and_connect_another(fixture_t *f, llmux_http_req_t *req) {
  static const char *pieces[] = {"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n"};
  tclient_t *cl = fixture_client(f, pieces, 1, 0, NULL);
  f->data = req;
  cl->on_done = on_second_client_done;
  tclient_start(cl, &f->loop, f->srv.port);
}

static void test_connection_beyond_max_connections_gets_503(void **state) {
  llmux_http_options_t o = {.max_connections = 1};
  const char *pieces[] = {"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"};
  fixture_t f;
  fixture_init(&f, &o, h_hold_and_connect_another);
  fixture_client(&f, pieces, 1, 0, "done|");
  fixture_run(&f);
  assert_int_equal(f.requests, 1);
  assert_has(&f.clients[0].in, "HTTP/1.1 200 OK\r\n");
  assert_starts(&f.clients[1].in, "HTTP/1.1 503 Service Unavailable\r\n");
  assert_has(&f.clients[1].in, "\"code\":\"too_many_connections\"");
  assert_true(f.clients[1].got_eof);
  fixture_finish(&f);
}

static void never_called(llmux_http_req_t *req) { fail(); }

static void test_limits_have_defaults(void **state) {
  uv_loop_t loop;
  llmux_http_server_t srv;
  llmux_http_options_t o = {.on_request = never_called};
  assert_int_equal(uv_loop_init(&loop), 0);
  assert_int_equal(llmux_http_server_init(&loop, &srv, &o), 0);
  assert_int_equal(srv.opts.max_connections, 10000);
  assert_int_equal(srv.opts.max_memory, 512 * MiB);
  llmux_http_server_close(&srv, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pipelined_requests_are_not_read_while_answers_wait),
      cmocka_unit_test(test_declared_length_is_not_reserved),
      cmocka_unit_test(test_large_body_grows_as_it_arrives_and_arrives_whole),
      cmocka_unit_test(test_body_beyond_max_memory_gets_503_overloaded),
      cmocka_unit_test(test_on_head_answer_is_sent_before_the_body),
      cmocka_unit_test(test_on_head_passes_the_request_on_with_its_data),
      cmocka_unit_test(test_connection_beyond_max_connections_gets_503),
      cmocka_unit_test(test_limits_have_defaults),
  };
  signal(SIGPIPE, SIG_IGN);
  return cmocka_run_group_tests(tests, NULL, NULL);
}
