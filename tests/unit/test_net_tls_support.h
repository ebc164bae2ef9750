/* Shared by the net tests: throwaway certificates made at test time with
 * tests/data/tls/make-certs.sh into a temporary directory. */
#ifndef TEST_NET_TLS_SUPPORT_H
#define TEST_NET_TLS_SUPPORT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char cert_dir[256];

/* Returns 0 when ca.crt, server.crt/key and bad.crt/key exist in cert_dir. */
static __attribute__((unused)) int certs_make(void) {
  char cmd[512];
  snprintf(cert_dir, sizeof(cert_dir), "/tmp/llmux-certs-XXXXXX");
  if (mkdtemp(cert_dir) == NULL) return -1;
  snprintf(cmd, sizeof(cmd), "sh '%s/tls/make-certs.sh' '%s'", LLMUX_TEST_DATA, cert_dir);
  return system(cmd) == 0 ? 0 : -1;
}

static __attribute__((unused)) void certs_remove(void) {
  static const char *files[] = { "ca.crt", "ca.key", "server.crt", "server.key",
                                 "bad.crt", "bad.key" };
  char path[512];
  size_t i;
  if (cert_dir[0] == '\0') return;
  for (i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
    snprintf(path, sizeof(path), "%s/%s", cert_dir, files[i]);
    remove(path);
  }
  remove(cert_dir);
}

/* "<cert_dir>/<name>" in a rotating static buffer (a few at a time). */
static __attribute__((unused)) const char *cert_path(const char *name) {
  static char bufs[4][512];
  static unsigned n;
  char *b = bufs[n++ % 4];
  snprintf(b, 512, "%s/%s", cert_dir, name);
  return b;
}

#endif
