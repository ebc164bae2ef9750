/* The front door's drain (llmux_http_server_drain, issue 12): the graceful
 * close behind SIGTERM. Idle connections go at once, a request in flight is
 * answered (its response the connection's last), new connections are
 * refused, and the drain's callback runs once the last connection is gone.
 * In these tests the drain, not the fixture, closes the server; every test
 * ends with uv_loop_close() == 0 (fixture_finish). */
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

/* Per test: the request the handler holds (answered once the idle client
 * saw its EOF, or the late client was refused), a timer that plays the
 * operator (drain now), a client started after the drain began, and what
 * the drain's callback saw. */
typedef struct {
  fixture_t *f;
  uv_timer_t timer;
  llmux_http_req_t *req;
  unsigned want;           /* start the drain once this many requests arrived */
  int stream;              /* answer with a stream started before the drain */
  int close_during_drain;  /* hurry the drain with llmux_http_server_close */
  int late_client;         /* connect once the drain began */
  tclient_t late;
  unsigned aborts;
  unsigned drained_calls, closed_calls;
  int drained_status;
} drain_t;

static void on_drained(llmux_http_server_t *srv, int status) {
  fixture_t *f = srv->data;
  drain_t *d = f->data;
  d->drained_calls++;
  d->drained_status = status;
  f->server_closed = 1;
  if (!f->finishing) { /* the run ends here, not in the fixture */
    f->finishing = 1;
    uv_close((uv_handle_t *)&f->guard, NULL);
  }
  if (!uv_is_closing((uv_handle_t *)&d->timer)) uv_close((uv_handle_t *)&d->timer, NULL);
}

static void on_closed(llmux_http_server_t *srv) {
  fixture_t *f = srv->data;
  drain_t *d = f->data;
  d->closed_calls++;
  assert_int_equal(d->drained_calls, 1); /* the drain's callback comes first */
}

static void start_drain(drain_t *d) {
  assert_int_equal(llmux_http_server_drain(&d->f->srv, on_drained), 0);
  assert_int_equal(d->drained_calls, 0); /* never inside the call */
  assert_int_equal(llmux_http_server_drain(&d->f->srv, on_drained), LLMUX_EINVAL);
}

static void drain_init(drain_t *d, fixture_t *f, const llmux_http_options_t *o,
                       fixture_handler h) {
  memset(d, 0, sizeof(*d));
  fixture_init(f, o, h);
  d->f = f;
  f->data = d;
  /* Never reached: the fixture would close the server itself once its
   * clients are done; here only the drain (or the guard) ends the run. */
  f->expect_aborts = UINT32_MAX;
  uv_timer_init(&f->loop, &d->timer);
  d->timer.data = d;
}

static void drain_finish(drain_t *d) {
  llmux_buf_free(&d->late.in);
  fixture_finish(d->f);
}

/* ---- the handler ------------------------------------------------------- */

static void on_held_abort(llmux_http_req_t *req) {
  drain_t *d = req->data;
  d->aborts++;
  d->req = NULL;
}

static void answer(drain_t *d) {
  assert_int_equal(d->drained_calls, 0); /* the drain waits for this answer */
  assert_non_null(d->req);
  if (d->stream) {
    assert_true(llmux_http_write(d->req, "after|", 6) >= 0);
    assert_int_equal(llmux_http_end(d->req), 0);
  } else {
    assert_int_equal(llmux_http_respond(d->req, 200, NULL, 0, "late|", 5), 0);
  }
  d->req = NULL;
}

static void on_late_done(tclient_t *cl) {
  drain_t *d = cl->data;
  assert_false(d->late.connected); /* refused, not accepted and dropped */
  answer(d);
}

/* The idle client saw EOF while the other request is still held. */
static void on_idle_client_done(tclient_t *cl) {
  fixture_t *f = cl->data;
  assert_true(cl->got_eof);
  answer(f->data);
}

/* Plays the operator: drains from the loop, as a signal handler would. */
static void on_drain_now(uv_timer_t *t) {
  drain_t *d = t->data;
  start_drain(d);
  if (d->close_during_drain) {
    llmux_http_server_close(&d->f->srv, on_closed); /* aborts the held request */
  } else if (d->late_client) {
    d->late.data = d;
    d->late.on_done = on_late_done;
    tclient_start(&d->late, &d->f->loop, d->f->srv.port);
  }
}

/* /quick is answered at once, anything else is held; the drain starts once
 * `want` requests have arrived. */
static void h_drain_test(fixture_t *f, llmux_http_req_t *req) {
  drain_t *d = f->data;
  if (strcmp(req->path.base, "/quick") == 0) {
    llmux_http_respond(req, 200, NULL, 0, "done|", 5);
  } else {
    d->req = req;
    req->data = d;
    req->on_abort = on_held_abort;
    if (d->stream) {
      assert_int_equal(llmux_http_start(req, 200, NULL, 0), 0);
      assert_true(llmux_http_write(req, "before|", 7) >= 0);
    }
  }
  if (f->requests == d->want) uv_timer_start(&d->timer, on_drain_now, 1, 0);
}

static const char *quick[] = {"GET /quick HTTP/1.1\r\nHost: h\r\n\r\n"};
static const char *slow[] = {"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n"};

/* ---- tests ---------------------------------------------------------------- */

static void test_drain_closes_idle_keep_alive_connections_at_once(void **state) {
  llmux_http_options_t o = {.idle_timeout_ms = 60000}; /* far beyond the 5 s guard */
  fixture_t f;
  drain_t d;
  drain_init(&d, &f, &o, h_drain_test);
  d.want = 1;
  fixture_client(&f, quick, 1, 0, NULL); /* keeps the connection until EOF */
  fixture_run(&f);
  assert_true(f.clients[0].got_eof);
  assert_has(&f.clients[0].in, "HTTP/1.1 200 OK\r\n");
  assert_int_equal(strcmp(f.clients[0].in.base + f.clients[0].in.len - 5, "done|"), 0);
  assert_int_equal(d.drained_calls, 1);
  assert_int_equal(d.drained_status, 0);
  drain_finish(&d);
}

/* Drains once the server holds a connection (accepted, not in the backlog). */
static void on_drain_when_connected(uv_timer_t *t) {
  drain_t *d = t->data;
  if (d->f->srv.nconns == 0) return;
  uv_timer_stop(t);
  on_drain_now(t);
}

static void test_drain_closes_a_connection_that_sent_nothing(void **state) {
  fixture_t f;
  drain_t d;
  drain_init(&d, &f, NULL, h_drain_test);
  fixture_client(&f, NULL, 0, 0, NULL);
  uv_timer_start(&d.timer, on_drain_when_connected, 1, 1);
  fixture_run(&f);
  assert_true(f.clients[0].got_eof);
  assert_int_equal(f.clients[0].in.len, 0);
  assert_int_equal(f.requests, 0);
  assert_int_equal(d.drained_status, 0);
  drain_finish(&d);
}

static void test_drain_lets_a_request_in_flight_finish_with_connection_close(void **state) {
  fixture_t f;
  drain_t d;
  tclient_t *idle;
  drain_init(&d, &f, NULL, h_drain_test);
  d.want = 2;
  fixture_client(&f, slow, 1, 0, NULL);
  idle = fixture_client(&f, quick, 1, 0, NULL);
  idle->on_done = on_idle_client_done; /* answers the held request */
  fixture_run(&f);
  assert_int_equal(d.aborts, 0);
  assert_has(&f.clients[0].in, "HTTP/1.1 200 OK\r\n");
  assert_has(&f.clients[0].in, "Connection: close\r\n");
  assert_int_equal(strcmp(f.clients[0].in.base + f.clients[0].in.len - 5, "late|"), 0);
  assert_true(f.clients[0].got_eof);
  drain_finish(&d);
}

static void test_drain_cb_runs_once_the_last_connection_closes(void **state) {
  fixture_t f;
  drain_t d;
  tclient_t *idle;
  drain_init(&d, &f, NULL, h_drain_test);
  d.want = 2;
  fixture_client(&f, slow, 1, 0, NULL);
  idle = fixture_client(&f, quick, 1, 0, NULL);
  idle->on_done = on_idle_client_done; /* asserts the cb has not run yet */
  fixture_run(&f);
  assert_int_equal(d.drained_calls, 1);
  assert_int_equal(d.drained_status, 0);
  drain_finish(&d);
}

static void test_drain_lets_a_started_stream_end_whole_then_closes(void **state) {
  fixture_t f;
  drain_t d;
  tclient_t *idle;
  drain_init(&d, &f, NULL, h_drain_test);
  d.want = 2;
  d.stream = 1;
  fixture_client(&f, slow, 1, 0, NULL);
  idle = fixture_client(&f, quick, 1, 0, NULL);
  idle->on_done = on_idle_client_done;
  fixture_run(&f);
  assert_int_equal(d.aborts, 0);
  assert_has(&f.clients[0].in, "7\r\nbefore|\r\n6\r\nafter|\r\n0\r\n\r\n");
  assert_true(f.clients[0].got_eof);
  assert_int_equal(d.drained_status, 0);
  drain_finish(&d);
}

static void test_drain_refuses_new_connections(void **state) {
  fixture_t f;
  drain_t d;
  drain_init(&d, &f, NULL, h_drain_test);
  d.want = 1;
  d.late_client = 1; /* connects after the drain began; then the request is answered */
  fixture_client(&f, slow, 1, 0, NULL);
  fixture_run(&f);
  assert_false(d.late.connected);
  assert_true(d.late.got_error);
  assert_int_equal(f.requests, 1); /* the late client never reached the handler */
  assert_has(&f.clients[0].in, "late|");
  assert_int_equal(d.drained_status, 0);
  drain_finish(&d);
}

static void test_drain_with_no_connection_ends_when_the_listener_closes(void **state) {
  fixture_t f;
  drain_t d;
  drain_init(&d, &f, NULL, h_drain_test);
  uv_timer_start(&d.timer, on_drain_now, 1, 0);
  fixture_run(&f);
  assert_int_equal(d.drained_calls, 1);
  assert_int_equal(d.drained_status, 0);
  drain_finish(&d);
}

static void test_close_during_a_drain_aborts_and_cancels_it(void **state) {
  fixture_t f;
  drain_t d;
  drain_init(&d, &f, NULL, h_drain_test);
  d.want = 1;
  d.close_during_drain = 1;
  fixture_client(&f, slow, 1, 0, NULL);
  fixture_run(&f);
  assert_int_equal(d.aborts, 1);
  assert_int_equal(f.clients[0].in.len, 0);
  assert_int_equal(d.drained_calls, 1);
  assert_int_equal(d.drained_status, LLMUX_ECANCELED);
  assert_int_equal(d.closed_calls, 1);
  drain_finish(&d);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_drain_closes_idle_keep_alive_connections_at_once),
      cmocka_unit_test(test_drain_closes_a_connection_that_sent_nothing),
      cmocka_unit_test(test_drain_lets_a_request_in_flight_finish_with_connection_close),
      cmocka_unit_test(test_drain_cb_runs_once_the_last_connection_closes),
      cmocka_unit_test(test_drain_lets_a_started_stream_end_whole_then_closes),
      cmocka_unit_test(test_drain_refuses_new_connections),
      cmocka_unit_test(test_drain_with_no_connection_ends_when_the_listener_closes),
      cmocka_unit_test(test_close_during_a_drain_aborts_and_cancels_it),
  };
  signal(SIGPIPE, SIG_IGN);
  return cmocka_run_group_tests(tests, NULL, NULL);
}
