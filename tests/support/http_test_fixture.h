/* A front-door server and some raw clients on one private loop, for cmocka
 * tests. The test sets a handler and clients, runs the loop once, and the
 * fixture closes the server when every client is done (and the expected
 * number of aborts happened), or when the 5 s guard fires. fixture_finish
 * asserts that the loop closed every handle. Include after <cmocka.h>. */
#ifndef LLMUX_HTTP_TEST_FIXTURE_H
#define LLMUX_HTTP_TEST_FIXTURE_H

#include "http/http_server.h"
#include "http_test_client.h"

#define FIXTURE_MAX_CLIENTS 64

typedef struct fixture_s fixture_t;
typedef void (*fixture_handler)(fixture_t *f, llmux_http_req_t *req);

struct fixture_s {
  uv_loop_t loop;
  llmux_http_server_t srv;
  uv_timer_t guard;
  fixture_handler handler;
  tclient_t clients[FIXTURE_MAX_CLIENTS];
  size_t nclients, ndone;
  unsigned expect_aborts; /* the run ends only after this many aborts */
  unsigned requests, aborts, drains, in_flight, max_in_flight;
  int finishing, server_closed, timed_out;
  void *data;
};

static void fixture__maybe_finish(fixture_t *f);

static void fixture__on_request(llmux_http_req_t *req) {
  fixture_t *f = req->server->data;
  f->requests++;
  f->handler(f, req);
}

static void fixture__server_closed(llmux_http_server_t *srv) {
  fixture_t *f = srv->data;
  f->server_closed = 1;
}

static void fixture__client_done(tclient_t *cl) {
  fixture_t *f = cl->data;
  f->ndone++;
  fixture__maybe_finish(f);
}

static void fixture__on_guard(uv_timer_t *t) {
  fixture_t *f = t->data;
  size_t i;
  f->timed_out = 1;
  f->expect_aborts = 0;
  for (i = 0; i < f->nclients; i++) tclient_close(&f->clients[i]);
  fixture__maybe_finish(f);
}

static void fixture__maybe_finish(fixture_t *f) {
  if (f->finishing || f->ndone < f->nclients || f->aborts < f->expect_aborts) return;
  f->finishing = 1;
  uv_close((uv_handle_t *)&f->guard, NULL);
  llmux_http_server_close(&f->srv, fixture__server_closed);
}

/* opts may be NULL (defaults); its on_request is replaced. */
static void fixture_init(fixture_t *f, const llmux_http_options_t *opts, fixture_handler h) {
  llmux_http_options_t o = {0};
  memset(f, 0, sizeof(*f));
  if (opts != NULL) o = *opts;
  o.on_request = fixture__on_request;
  f->handler = h;
  assert_int_equal(uv_loop_init(&f->loop), 0);
  assert_int_equal(llmux_http_server_init(&f->loop, &f->srv, &o), 0);
  f->srv.data = f;
  assert_int_equal(llmux_http_server_listen(&f->srv, "127.0.0.1", 0), 0);
  assert_true(f->srv.port > 0);
  uv_timer_init(&f->loop, &f->guard);
  f->guard.data = f;
}

static tclient_t *fixture_client(fixture_t *f, const char *const *pieces, size_t n,
                                 unsigned gap_ms, const char *until) {
  tclient_t *cl;
  assert_true(f->nclients < FIXTURE_MAX_CLIENTS);
  cl = &f->clients[f->nclients++];
  cl->data = f;
  cl->pieces = pieces;
  cl->npieces = n;
  cl->gap_ms = gap_ms;
  cl->until = until;
  cl->on_done = fixture__client_done;
  return cl;
}

static void fixture_run(fixture_t *f) {
  size_t i;
  /* Only turns a hang into a failure: generous, so a loaded machine under
   * a sanitizer never trips it. */
  uv_timer_start(&f->guard, fixture__on_guard, 30000, 0);
  for (i = 0; i < f->nclients; i++) tclient_start(&f->clients[i], &f->loop, f->srv.port);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_false(f->timed_out);
  assert_true(f->server_closed);
}

static void fixture_finish(fixture_t *f) {
  size_t i;
  for (i = 0; i < f->nclients; i++) llmux_buf_free(&f->clients[i].in);
  assert_int_equal(uv_loop_close(&f->loop), 0);
}

/* Runs one raw request (one piece) against a fresh server; returns the bytes
 * received until EOF in *out (caller frees). Not every test file uses it. */
__attribute__((unused)) static void fixture_once(const llmux_http_options_t *opts, fixture_handler h, const char *raw,
                         llmux_buf_t *out) {
  fixture_t f;
  const char *pieces[1];
  pieces[0] = raw;
  fixture_init(&f, opts, h);
  fixture_client(&f, pieces, 1, 0, NULL);
  fixture_run(&f);
  *out = f.clients[0].in;
  memset(&f.clients[0].in, 0, sizeof(f.clients[0].in));
  if (out->base == NULL) llmux_buf_append(out, "", 0);
  fixture_finish(&f);
}

#endif /* LLMUX_HTTP_TEST_FIXTURE_H */
