/* TLS sessions, client and server, driven entirely in memory: ciphertext is
 * moved between the two sessions by hand, so no socket is involved. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <unistd.h>

#include "net/tls.h"
#include "base/util.h"
#include "test_net_tls_support.h"

typedef struct {
  llmux_tls_ctx_t *cctx, *sctx;
  llmux_tls_t *c, *s;
  int cres, sres;
} pair_t;

static void shuttle(llmux_tls_t *from, llmux_tls_t *to) {
  const char *p;
  size_t n = llmux_tls_out(from, &p);
  if (n == 0) return;
  assert_int_equal(llmux_tls_feed(to, p, n), 0);
  llmux_tls_out_consume(from, n);
}

static void pair_open(pair_t *p, const char *ca, int verify, const char *srv_cert,
                      const char *srv_key, const char *sni) {
  char err[256];
  memset(p, 0, sizeof(*p));
  assert_int_equal(llmux_tls_ctx_client_new(&p->cctx, ca, verify, err, sizeof(err)), 0);
  assert_int_equal(llmux_tls_ctx_server_new(&p->sctx, srv_cert, srv_key, err, sizeof(err)), 0);
  assert_int_equal(llmux_tls_new(&p->c, p->cctx, sni), 0);
  assert_int_equal(llmux_tls_new(&p->s, p->sctx, NULL), 0);
}

/* Runs both handshakes until they finish or one side fails. */
static void pair_handshake(pair_t *p) {
  int i;
  for (i = 0; i < 20; i++) {
    p->cres = llmux_tls_handshake(p->c);
    shuttle(p->c, p->s);
    if (p->cres != 0 && p->cres != LLMUX_EAGAIN) return;
    p->sres = llmux_tls_handshake(p->s);
    shuttle(p->s, p->c);
    if (p->sres != 0 && p->sres != LLMUX_EAGAIN) return;
    if (p->cres == 0 && p->sres == 0) return;
  }
  fail_msg("handshake did not converge");
}

static void pair_close(pair_t *p) {
  llmux_tls_free(p->c);
  llmux_tls_free(p->s);
  llmux_tls_ctx_free(p->cctx);
  llmux_tls_ctx_free(p->sctx);
}

static void handshake_verified_with_ca_file_then_data_flows_both_ways(void **state) {
  pair_t p;
  char buf[64];
  ssize_t n;

  pair_open(&p, cert_path("ca.crt"), 1, cert_path("server.crt"), cert_path("server.key"),
            "localhost");
  pair_handshake(&p);
  assert_int_equal(p.cres, 0);
  assert_int_equal(p.sres, 0);
  assert_non_null(llmux_tls_alpn(p.c));
  assert_string_equal(llmux_tls_alpn(p.c), "http/1.1");

  assert_int_equal(llmux_tls_write(p.c, "ping", 4), 0);
  shuttle(p.c, p.s);
  n = llmux_tls_read(p.s, buf, sizeof(buf));
  assert_int_equal(n, 4);
  assert_memory_equal(buf, "ping", 4);
  assert_int_equal(llmux_tls_read(p.s, buf, sizeof(buf)), LLMUX_EAGAIN);

  assert_int_equal(llmux_tls_write(p.s, "pong!", 5), 0);
  llmux_tls_close_notify(p.s);
  shuttle(p.s, p.c);
  assert_true(llmux_tls_pending(p.c) > 0);
  assert_int_equal(llmux_tls_read(p.c, buf, sizeof(buf)), 5);
  assert_memory_equal(buf, "pong!", 5);
  assert_int_equal(llmux_tls_read(p.c, buf, sizeof(buf)), LLMUX_EEOF);
  pair_close(&p);
}

static void large_write_is_split_into_records_and_reassembled(void **state) {
  pair_t p;
  static char big[100000], got[100000];
  size_t total = 0, i;
  ssize_t n;

  for (i = 0; i < sizeof(big); i++) big[i] = (char)('a' + i % 26);
  pair_open(&p, cert_path("ca.crt"), 1, cert_path("server.crt"), cert_path("server.key"),
            "localhost");
  pair_handshake(&p);
  assert_int_equal(p.cres, 0);
  assert_int_equal(llmux_tls_write(p.c, big, sizeof(big)), 0);
  shuttle(p.c, p.s);
  while ((n = llmux_tls_read(p.s, got + total, sizeof(got) - total)) > 0) total += (size_t)n;
  assert_int_equal(n, LLMUX_EAGAIN);
  assert_int_equal(total, sizeof(big));
  assert_memory_equal(got, big, sizeof(big));
  pair_close(&p);
}

static void untrusted_certificate_fails_with_ecert_and_a_reason(void **state) {
  pair_t p;
  pair_open(&p, cert_path("ca.crt"), 1, cert_path("bad.crt"), cert_path("bad.key"),
            "localhost");
  pair_handshake(&p);
  assert_int_equal(p.cres, LLMUX_ECERT);
  assert_non_null(strstr(llmux_tls_last_error(p.c), "certificate verification failed"));
  assert_non_null(strstr(llmux_tls_last_error(p.c), "trusted"));
  assert_non_null(strstr(llmux_tls_last_error(p.c), "set ca_file = PATH"));
  pair_close(&p);
}

static void wrong_hostname_fails_with_ecert(void **state) {
  pair_t p;
  pair_open(&p, cert_path("ca.crt"), 1, cert_path("server.crt"), cert_path("server.key"),
            "api.example.com");
  pair_handshake(&p);
  assert_int_equal(p.cres, LLMUX_ECERT);
  assert_non_null(strstr(llmux_tls_last_error(p.c), "CN"));
  pair_close(&p);
}

/* A peer named by address is checked against the certificate's iPAddress
 * subjectAltNames: the server certificate carries 127.0.0.1 and ::1 is
 * not among them. */
static void ip_literals_are_matched_against_ip_san(void **state) {
  static const struct { const char *host; int ok; } cases[] = {
    {"127.0.0.1", 1}, {"[127.0.0.1]", 1}, {"10.0.0.1", 0}, {"::1", 0}, {"[::1]", 0},
  };
  size_t i;
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    pair_t p;
    pair_open(&p, cert_path("ca.crt"), 1, cert_path("server.crt"), cert_path("server.key"),
              cases[i].host);
    pair_handshake(&p);
    if (cases[i].ok) {
      assert_int_equal(p.cres, 0);
    } else {
      assert_int_equal(p.cres, LLMUX_ECERT);
      assert_non_null(strstr(llmux_tls_last_error(p.c), "CN"));
    }
    pair_close(&p);
  }
}

static void verify_off_accepts_an_untrusted_certificate(void **state) {
  pair_t p;
  pair_open(&p, NULL, 0, cert_path("bad.crt"), cert_path("bad.key"), "wrong.example");
  pair_handshake(&p);
  assert_int_equal(p.cres, 0);
  assert_int_equal(p.sres, 0);
  pair_close(&p);
}

static void missing_ca_file_is_a_config_error_naming_the_file(void **state) {
  llmux_tls_ctx_t *ctx = (llmux_tls_ctx_t *)1;
  char err[256] = "";
  assert_int_equal(llmux_tls_ctx_client_new(&ctx, "/nonexistent/ca.pem", 1, err, sizeof(err)),
                   LLMUX_ECONFIG);
  assert_null(ctx);
  assert_non_null(strstr(err, "/nonexistent/ca.pem"));
}

static void server_key_that_does_not_exist_is_a_config_error(void **state) {
  llmux_tls_ctx_t *ctx;
  char err[256] = "";
  assert_int_equal(llmux_tls_ctx_server_new(&ctx, cert_path("server.crt"), "/nonexistent.key",
                                            err, sizeof(err)),
                   LLMUX_ECONFIG);
  assert_non_null(strstr(err, "/nonexistent.key"));
}

static void system_bundle_loads_by_default(void **state) {
  llmux_tls_ctx_t *ctx;
  char err[256] = "";
  if (access("/etc/ssl/certs/ca-certificates.crt", R_OK) != 0) skip();
  assert_int_equal(llmux_tls_ctx_client_new(&ctx, NULL, 1, err, sizeof(err)), 0);
  llmux_tls_ctx_free(ctx);
}

static void out_take_hands_over_the_ciphertext_without_copying(void **state) {
  pair_t p;
  llmux_buf_t b = { 0 };
  const char *before, *after;
  size_t n;

  pair_open(&p, cert_path("ca.crt"), 1, cert_path("server.crt"), cert_path("server.key"),
            "localhost");
  assert_int_equal(llmux_tls_handshake(p.c), LLMUX_EAGAIN); /* ClientHello queued */
  n = llmux_tls_out(p.c, &before);
  assert_true(n > 0);
  assert_int_equal(llmux_tls_out_take(p.c, &b), n);
  assert_ptr_equal(b.base, before);
  assert_int_equal(b.len, n);
  assert_int_equal(llmux_tls_out(p.c, &after), 0);
  assert_int_equal(llmux_tls_out_take(p.c, &b), 0); /* nothing queued: untouched */
  assert_int_equal(b.len, n);
  llmux_buf_free(&b);
  pair_close(&p);
}

static void read_before_any_input_asks_for_more(void **state) {
  pair_t p;
  char buf[16];
  pair_open(&p, cert_path("ca.crt"), 1, cert_path("server.crt"), cert_path("server.key"),
            "localhost");
  assert_int_equal(llmux_tls_handshake(p.s), LLMUX_EAGAIN);
  assert_int_equal(llmux_tls_read(p.s, buf, sizeof(buf)), LLMUX_EAGAIN);
  pair_close(&p);
}

static void garbage_instead_of_a_handshake_is_etls(void **state) {
  pair_t p;
  static const char junk[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
  pair_open(&p, cert_path("ca.crt"), 1, cert_path("server.crt"), cert_path("server.key"),
            "localhost");
  assert_int_equal(llmux_tls_handshake(p.c), LLMUX_EAGAIN);
  assert_int_equal(llmux_tls_feed(p.c, junk, sizeof(junk) - 1), 0);
  assert_int_equal(llmux_tls_handshake(p.c), LLMUX_ETLS);
  assert_non_null(strstr(llmux_tls_last_error(p.c), "handshake"));
  pair_close(&p);
}

static int group_setup(void **state) {
  return certs_make();
}

static int group_teardown(void **state) {
  certs_remove();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(handshake_verified_with_ca_file_then_data_flows_both_ways),
    cmocka_unit_test(large_write_is_split_into_records_and_reassembled),
    cmocka_unit_test(untrusted_certificate_fails_with_ecert_and_a_reason),
    cmocka_unit_test(wrong_hostname_fails_with_ecert),
    cmocka_unit_test(ip_literals_are_matched_against_ip_san),
    cmocka_unit_test(verify_off_accepts_an_untrusted_certificate),
    cmocka_unit_test(missing_ca_file_is_a_config_error_naming_the_file),
    cmocka_unit_test(server_key_that_does_not_exist_is_a_config_error),
    cmocka_unit_test(system_bundle_loads_by_default),
    cmocka_unit_test(out_take_hands_over_the_ciphertext_without_copying),
    cmocka_unit_test(read_before_any_input_asks_for_more),
    cmocka_unit_test(garbage_instead_of_a_handshake_is_etls),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
