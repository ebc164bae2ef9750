/* mock_upstream: command line, listener, signals.
 *
 *   mock_upstream [--listen HOST:PORT] [--tls-cert F --tls-key F]
 *                 [--latency-ms N] [--tokens N] [--token-delay-ms N]
 *                 [--fail-after N] [--retry-after S] [--fault F]
 *                 [--name NAME] [--no-record]
 *
 * Prints {"port":N,"tls":bool} on one line once listening. SIGTERM and
 * SIGINT close every handle and exit 0. */
#include "mock.h"

#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

#include "base/log.h"

typedef struct args_s {
  const char *listen;
  const char *cert;
  const char *key;
} args_t;

static void usage(void) {
  fprintf(stderr,
          "usage: mock_upstream [--listen HOST:PORT] [--tls-cert F --tls-key F]\n"
          "  [--latency-ms N] [--tokens N] [--token-delay-ms N] [--fail-after N]\n"
          "  [--retry-after S] [--fault F] [--name NAME] [--no-record]\n"
          "faults: 429 500 503 401 400 404-model context-length reset reset-mid-stream\n"
          "        stall stall-mid-stream garbage invalid-json slow-headers huge-usage\n");
}

static int valid_name(const char *s) {
  size_t i, n = strlen(s);
  if (n == 0 || n > 48) return 0;
  for (i = 0; i < n; i++) {
    char ch = s[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
          ch == '-' || ch == '_' || ch == '.'))
      return 0;
  }
  return 1;
}

/* One "--flag value" pair. 0, or -1 with a message printed. */
static int parse_flag(mock_server_t *srv, args_t *a, const char *flag, const char *val) {
  static const char *const knob_flags[] = {"--latency-ms", "--tokens", "--token-delay-ms",
                                           "--fail-after", "--retry-after", "--fault"};
  size_t i;
  if (strcmp(flag, "--listen") == 0) { a->listen = val; return 0; }
  if (strcmp(flag, "--tls-cert") == 0) { a->cert = val; return 0; }
  if (strcmp(flag, "--tls-key") == 0) { a->key = val; return 0; }
  if (strcmp(flag, "--name") == 0) {
    if (!valid_name(val)) {
      fprintf(stderr, "mock_upstream: --name must be 1-48 of [A-Za-z0-9._-]\n");
      return -1;
    }
    snprintf(srv->name, sizeof(srv->name), "%s", val);
    return 0;
  }
  for (i = 0; i < LLMUX_COUNTOF(knob_flags); i++) {
    if (strcmp(flag, knob_flags[i]) != 0) continue;
    if (mock_knob_set(&srv->defaults, flag + 2, strlen(flag + 2), val, strlen(val)) == 0)
      return 0;
    fprintf(stderr, "mock_upstream: bad value for %s: %s\n", flag, val);
    return -1;
  }
  fprintf(stderr, "mock_upstream: unknown flag %s\n", flag);
  usage();
  return -1;
}

static int parse_args(mock_server_t *srv, args_t *a, int argc, char **argv) {
  int i;
  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--no-record") == 0) { srv->record = 0; continue; }
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) { usage(); return -1; }
    if (i + 1 >= argc) {
      fprintf(stderr, "mock_upstream: %s needs a value\n", argv[i]);
      return -1;
    }
    if (parse_flag(srv, a, argv[i], argv[i + 1]) != 0) return -1;
    i++;
  }
  if ((a->cert == NULL) != (a->key == NULL)) {
    fprintf(stderr, "mock_upstream: --tls-cert and --tls-key go together\n");
    return -1;
  }
  return 0;
}

static int resolve_listen(const char *spec, struct sockaddr_storage *ss) {
  char host[256];
  const char *colon = strrchr(spec, ':');
  uint64_t port;
  size_t hlen;
  if (colon == NULL || llmux_parse_u64(colon + 1, &port) != 0 || port > 65535) return -1;
  hlen = (size_t)(colon - spec);
  if (hlen >= sizeof(host)) return -1;
  memcpy(host, spec, hlen);
  host[hlen] = '\0';
  if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
    host[hlen - 1] = '\0';
    return uv_ip6_addr(host + 1, (int)port, (struct sockaddr_in6 *)ss) == 0 ? 0 : -1;
  }
  return uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0 ? 0 : -1;
}

static void on_connection(uv_stream_t *server, int status) {
  mock_server_t *srv = server->data;
  if (status < 0 || srv->closing) return;
  mock_conn_accept(srv);
}

static void on_closed(uv_handle_t *h) {}

static void shutdown_all(mock_server_t *srv) {
  if (srv->closing) return;
  srv->closing = 1;
  uv_close((uv_handle_t *)&srv->listener, on_closed);
  uv_close((uv_handle_t *)&srv->sigterm, on_closed);
  uv_close((uv_handle_t *)&srv->sigint, on_closed);
  /* Closing restored the default actions: a second signal while the
   * connections close must not kill the process half way. */
  signal(SIGTERM, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  while (srv->conns) mock_conn_close(srv->conns); /* unlinks it */
}

static void on_signal(uv_signal_t *h, int signum) {
  shutdown_all(h->data);
}

static int start_listener(mock_server_t *srv, const char *spec) {
  struct sockaddr_storage ss;
  int len = sizeof(ss), r;
  if (resolve_listen(spec, &ss) != 0) {
    fprintf(stderr, "mock_upstream: bad --listen %s (want HOST:PORT)\n", spec);
    return -1;
  }
  uv_tcp_init(srv->loop, &srv->listener);
  srv->listener.data = srv;
  r = uv_tcp_bind(&srv->listener, (const struct sockaddr *)&ss, 0);
  if (r == 0) r = uv_listen((uv_stream_t *)&srv->listener, 4096, on_connection);
  if (r == 0) r = uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &len);
  if (r != 0) {
    fprintf(stderr, "mock_upstream: listen on %s: %s\n", spec, uv_strerror(r));
    return -1;
  }
  return ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                        : ((struct sockaddr_in *)&ss)->sin_port);
}

/* The benchmark opens thousands of connections. */
static void raise_fd_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

static void server_init(mock_server_t *srv) {
  memset(srv, 0, sizeof(*srv));
  srv->loop = uv_default_loop();
  srv->record = 1;
  snprintf(srv->name, sizeof(srv->name), "mock");
  mock_knobs_unset(&srv->defaults);
  srv->defaults.fault = MOCK_FAULT_NONE;
  srv->defaults.latency_ms = 0;
  srv->defaults.tokens = 8;
  srv->defaults.token_delay_ms = 0;
  srv->defaults.retry_after_s = 1;
}

int main(int argc, char **argv) {
  static mock_server_t srv;
  args_t a = {"127.0.0.1:0", NULL, NULL};
  char err[512] = "";
  int port, rc = 1;
  signal(SIGPIPE, SIG_IGN);
  server_init(&srv);
  if (parse_args(&srv, &a, argc, argv) != 0) return 2;
  raise_fd_limit();
  if (a.cert && llmux_tls_ctx_server_new(&srv.tls, a.cert, a.key, err, sizeof(err)) != 0) {
    fprintf(stderr, "mock_upstream: TLS: %s\n", err[0] ? err : "cannot load certificate");
    return 1;
  }
  if ((port = start_listener(&srv, a.listen)) < 0) goto out;
  uv_signal_init(srv.loop, &srv.sigterm);
  uv_signal_init(srv.loop, &srv.sigint);
  srv.sigterm.data = srv.sigint.data = &srv;
  uv_signal_start(&srv.sigterm, on_signal, SIGTERM);
  uv_signal_start(&srv.sigint, on_signal, SIGINT);
  printf("{\"port\":%d,\"tls\":%s}\n", port, srv.tls ? "true" : "false");
  fflush(stdout);
  uv_run(srv.loop, UV_RUN_DEFAULT);
  rc = 0;
out:
  if (!srv.closing && srv.listener.loop != NULL) { /* start failed after init */
    uv_close((uv_handle_t *)&srv.listener, on_closed);
    uv_run(srv.loop, UV_RUN_DEFAULT);
  }
  mock_log_clear(&srv);
  if (srv.spare) mock_req_free(srv.spare);
  if (srv.tls) llmux_tls_ctx_free(srv.tls);
  if (uv_loop_close(srv.loop) != 0) {
    llmux_error("mock_upstream: handles left open at exit");
    rc = 1;
  }
  return rc;
}
