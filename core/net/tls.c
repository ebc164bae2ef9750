/* TLS sessions over memory buffers (see tls.h).
 *
 * mbedTLS talks to the network through two callbacks given to
 * mbedtls_ssl_set_bio(). Here they never touch a socket: `bio_recv` takes
 * bytes from the session's input queue (filled by llmux_tls_feed) and
 * answers WANT_READ when it is empty, `bio_send` appends to the output
 * queue, which the caller drains to its socket. So every mbedTLS call
 * returns at once and the session is a pure state machine on the loop.
 *
 * Contexts: a client context parses the CA bundle (the Debian system bundle
 * holds ~140 certificates and takes milliseconds to parse), so the gateway
 * makes one per provider at start-up and shares it between all of that
 * provider's connections; sessions only borrow it. Each context also owns
 * the one entropy source and CTR-DRBG its sessions draw from.
 */
#include "net/tls.h"

#include <stdio.h>
#include <stdlib.h>
#include <arpa/inet.h>
#include <string.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#include "llmux/common.h"
#include "base/util.h"

#define LLMUX_TLS_SYSTEM_BUNDLE "/etc/ssl/certs/ca-certificates.crt"

struct llmux_tls_ctx_s {
  int is_server;
  int verify;
  mbedtls_entropy_context entropy;
  mbedtls_ctr_drbg_context drbg;
  mbedtls_ssl_config conf;
  mbedtls_x509_crt ca;   /* client: trusted roots */
  mbedtls_x509_crt cert; /* server: own chain */
  mbedtls_pk_context key;
};

struct llmux_tls_s {
  llmux_tls_ctx_t *ctx;          /* borrowed */
  mbedtls_ssl_context ssl;
  llmux_buf_t in;                /* ciphertext fed, not yet taken by mbedTLS */
  size_t in_off;
  llmux_buf_t out;               /* ciphertext produced, not yet sent */
  size_t out_off;
  int failed;                    /* bio_send could not grow `out` */
  unsigned char ip[16];          /* client role, IP literal peer: its address */
  size_t iplen;                  /* 4 or 16; 0 for a host name */
  char err[512];
};

static const char *alpn_list[] = { "http/1.1", NULL };

static void set_err(char *err, size_t errlen, const char *fmt, const char *a, int rc) {
  char msg[128];
  if (err == NULL || errlen == 0) return;
  mbedtls_strerror(rc, msg, sizeof(msg));
  snprintf(err, errlen, fmt, a, msg);
}

static int ctx_alloc(llmux_tls_ctx_t **out, int is_server, char *err, size_t errlen) {
  static const char pers[] = "llmux-tls";
  llmux_tls_ctx_t *ctx;
  int rc;

  ctx = llmux_xcalloc(1, sizeof(*ctx));
  ctx->is_server = is_server;
  mbedtls_entropy_init(&ctx->entropy);
  mbedtls_ctr_drbg_init(&ctx->drbg);
  mbedtls_ssl_config_init(&ctx->conf);
  mbedtls_x509_crt_init(&ctx->ca);
  mbedtls_x509_crt_init(&ctx->cert);
  mbedtls_pk_init(&ctx->key);

  rc = mbedtls_ctr_drbg_seed(&ctx->drbg, mbedtls_entropy_func, &ctx->entropy,
                             (const unsigned char *)pers, sizeof(pers) - 1);
  if (rc != 0) {
    set_err(err, errlen, "%sseeding the random generator: %s", "", rc);
    goto fail;
  }
  rc = mbedtls_ssl_config_defaults(&ctx->conf,
                                   is_server ? MBEDTLS_SSL_IS_SERVER : MBEDTLS_SSL_IS_CLIENT,
                                   MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
  if (rc != 0) {
    set_err(err, errlen, "%sTLS configuration: %s", "", rc);
    goto fail;
  }
  mbedtls_ssl_conf_rng(&ctx->conf, mbedtls_ctr_drbg_random, &ctx->drbg);
  mbedtls_ssl_conf_min_version(&ctx->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                               MBEDTLS_SSL_MINOR_VERSION_3); /* TLS 1.2+ */
  mbedtls_ssl_conf_alpn_protocols(&ctx->conf, alpn_list);
  *out = ctx;
  return 0;

fail:
  llmux_tls_ctx_free(ctx);
  return LLMUX_ETLS;
}

int llmux_tls_ctx_client_new(llmux_tls_ctx_t **out, const char *ca_file, int verify,
                             char *err, size_t errlen) {
  llmux_tls_ctx_t *ctx;
  const char *path = ca_file ? ca_file : LLMUX_TLS_SYSTEM_BUNDLE;
  int rc;

  *out = NULL;
  rc = ctx_alloc(&ctx, 0, err, errlen);
  if (rc != 0) return rc;
  ctx->verify = verify;
  if (verify) {
    /* A positive result counts certificates that failed to parse; the
     * bundle is still usable if at least one parsed. */
    rc = mbedtls_x509_crt_parse_file(&ctx->ca, path);
    if (rc < 0 || ctx->ca.version == 0) {
      set_err(err, errlen, "cannot load CA file %s: %s", path, rc < 0 ? rc : -1);
      llmux_tls_ctx_free(ctx);
      return LLMUX_ECONFIG;
    }
    mbedtls_ssl_conf_ca_chain(&ctx->conf, &ctx->ca, NULL);
    mbedtls_ssl_conf_authmode(&ctx->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
  } else {
    mbedtls_ssl_conf_authmode(&ctx->conf, MBEDTLS_SSL_VERIFY_NONE);
  }
  *out = ctx;
  return 0;
}

int llmux_tls_ctx_server_new(llmux_tls_ctx_t **out, const char *cert_file,
                             const char *key_file, char *err, size_t errlen) {
  llmux_tls_ctx_t *ctx;
  int rc;

  *out = NULL;
  rc = ctx_alloc(&ctx, 1, err, errlen);
  if (rc != 0) return rc;
  rc = mbedtls_x509_crt_parse_file(&ctx->cert, cert_file);
  if (rc != 0) {
    set_err(err, errlen, "cannot load certificate %s: %s", cert_file, rc);
    goto fail;
  }
  rc = mbedtls_pk_parse_keyfile(&ctx->key, key_file, NULL);
  if (rc != 0) {
    set_err(err, errlen, "cannot load key %s: %s", key_file, rc);
    goto fail;
  }
  rc = mbedtls_ssl_conf_own_cert(&ctx->conf, &ctx->cert, &ctx->key);
  if (rc != 0) {
    set_err(err, errlen, "certificate %s does not match its key: %s", cert_file, rc);
    goto fail;
  }
  mbedtls_ssl_conf_authmode(&ctx->conf, MBEDTLS_SSL_VERIFY_NONE);
  *out = ctx;
  return 0;

fail:
  llmux_tls_ctx_free(ctx);
  return LLMUX_ECONFIG;
}

void llmux_tls_ctx_free(llmux_tls_ctx_t *ctx) {
  if (ctx == NULL) return;
  mbedtls_ssl_config_free(&ctx->conf);
  mbedtls_x509_crt_free(&ctx->ca);
  mbedtls_x509_crt_free(&ctx->cert);
  mbedtls_pk_free(&ctx->key);
  mbedtls_ctr_drbg_free(&ctx->drbg);
  mbedtls_entropy_free(&ctx->entropy);
  free(ctx);
}

/* mbedTLS wants ciphertext: hand over what has been fed, or ask for more. */
static int bio_recv(void *arg, unsigned char *buf, size_t len) {
  llmux_tls_t *t = arg;
  size_t avail = t->in.len - t->in_off;
  if (avail == 0) return MBEDTLS_ERR_SSL_WANT_READ;
  if (len > avail) len = avail;
  memcpy(buf, t->in.base + t->in_off, len);
  t->in_off += len;
  if (t->in_off == t->in.len) t->in.len = t->in_off = 0;
  return (int)len;
}

/* mbedTLS produced ciphertext: always accept all of it. */
static int bio_send(void *arg, const unsigned char *buf, size_t len) {
  llmux_tls_t *t = arg;
  if (llmux_buf_append(&t->out, buf, len) != 0) {
    t->failed = 1;
    return MBEDTLS_ERR_SSL_ALLOC_FAILED;
  }
  return (int)len;
}

/* An IP literal ("127.0.0.1", "::1", "[::1]") into t->ip; 0 if not one. */
static size_t parse_ip_literal(const char *host, unsigned char *ip) {
  char tmp[64];
  size_t n = strlen(host);
  if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
    if (n - 2 >= sizeof tmp) return 0;
    memcpy(tmp, host + 1, n - 2);
    tmp[n - 2] = '\0';
    host = tmp;
  }
  if (inet_pton(AF_INET, host, ip) == 1) return 4;
  if (inet_pton(AF_INET6, host, ip) == 1) return 16;
  return 0;
}

/* mbedTLS 2.28 matches a certificate against DNS names only. For a peer
 * named by an IP address the leaf certificate must carry that address as
 * an iPAddress subjectAltName (RFC 6125; what browsers and curl check). */
static int verify_ip_san(void *arg, mbedtls_x509_crt *crt, int depth, uint32_t *flags) {
  const llmux_tls_t *t = arg;
  const mbedtls_x509_sequence *san;
  if (depth != 0) return 0;
  for (san = &crt->subject_alt_names; san != NULL; san = san->next) {
    if (san->buf.tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7) && san->buf.len == t->iplen &&
        memcmp(san->buf.p, t->ip, t->iplen) == 0)
      return 0;
  }
  *flags |= MBEDTLS_X509_BADCERT_CN_MISMATCH;
  return 0;
}

int llmux_tls_new(llmux_tls_t **out, llmux_tls_ctx_t *ctx, const char *sni_host) {
  llmux_tls_t *t;
  int rc;

  *out = NULL;
  t = calloc(1, sizeof(*t));
  if (t == NULL) return LLMUX_ENOMEM;
  t->ctx = ctx;
  mbedtls_ssl_init(&t->ssl);
  rc = mbedtls_ssl_setup(&t->ssl, &ctx->conf);
  if (rc != 0) goto fail;
  /* Sets SNI and the name the certificate must match; an IP address is
   * sent as no SNI at all (RFC 6066) and checked against the iPAddress
   * subjectAltNames instead. */
  if (!ctx->is_server && sni_host != NULL) {
    t->iplen = parse_ip_literal(sni_host, t->ip);
    if (t->iplen > 0)
      mbedtls_ssl_set_verify(&t->ssl, verify_ip_san, t);
    else if ((rc = mbedtls_ssl_set_hostname(&t->ssl, sni_host)) != 0)
      goto fail;
  }
  mbedtls_ssl_set_bio(&t->ssl, t, bio_send, bio_recv, NULL);
  *out = t;
  return 0;

fail:
  llmux_tls_free(t);
  return rc == MBEDTLS_ERR_SSL_ALLOC_FAILED ? LLMUX_ENOMEM : LLMUX_ETLS;
}

void llmux_tls_free(llmux_tls_t *t) {
  if (t == NULL) return;
  mbedtls_ssl_free(&t->ssl);
  llmux_buf_free(&t->in);
  llmux_buf_free(&t->out);
  free(t);
}

int llmux_tls_feed(llmux_tls_t *t, const char *data, size_t len) {
  /* Reclaim consumed space before growing. */
  if (t->in_off > 0 && t->in_off >= t->in.len / 2) {
    llmux_buf_consume(&t->in, t->in_off);
    t->in_off = 0;
  }
  return llmux_buf_append(&t->in, data, len);
}

/* Spells out the verification flags as one line. */
static void describe_verify(llmux_tls_t *t) {
  char info[320];
  uint32_t flags = mbedtls_ssl_get_verify_result(&t->ssl);
  size_t n, i;
  int w;

  w = mbedtls_x509_crt_verify_info(info, sizeof(info), "", flags);
  n = w > 0 ? (size_t)w : 0;
  while (n > 0 && info[n - 1] == '\n') n--;
  info[n] = '\0';
  for (i = 0; i < n; i++)
    if (info[i] == '\n') info[i] = ';';
  /* The usual cause is a private CA (a proxy, a self-hosted server): say
   * where it goes, since the reason alone does not tell what to do. */
  snprintf(t->err, sizeof(t->err),
           "certificate verification failed: %s (a server with a private CA: set "
           "ca_file = PATH of its CA certificate in the provider's section)",
           n ? info : "unknown reason");
}

static int map_error(llmux_tls_t *t, int rc, const char *what) {
  char msg[128];
  if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) return LLMUX_EAGAIN;
  if (rc == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED) {
    describe_verify(t);
    return LLMUX_ECERT;
  }
  mbedtls_strerror(rc, msg, sizeof(msg));
  snprintf(t->err, sizeof(t->err), "TLS %s failed: %s (-0x%04x)", what, msg, (unsigned)-rc);
  return t->failed ? LLMUX_ENOMEM : LLMUX_ETLS;
}

int llmux_tls_handshake(llmux_tls_t *t) {
  int rc = mbedtls_ssl_handshake(&t->ssl);
  if (rc == 0) return 0;
  return map_error(t, rc, "handshake");
}

ssize_t llmux_tls_read(llmux_tls_t *t, char *buf, size_t cap) {
  int rc = mbedtls_ssl_read(&t->ssl, (unsigned char *)buf, cap);
  if (rc > 0) return rc;
  if (rc == 0 || rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) return LLMUX_EEOF;
  return map_error(t, rc, "read");
}

int llmux_tls_write(llmux_tls_t *t, const char *data, size_t len) {
  size_t done = 0;
  int rc;
  while (done < len) {
    rc = mbedtls_ssl_write(&t->ssl, (const unsigned char *)data + done, len - done);
    if (rc < 0) return map_error(t, rc, "write") == LLMUX_ENOMEM ? LLMUX_ENOMEM : LLMUX_ETLS;
    done += (size_t)rc;
  }
  return 0;
}

void llmux_tls_close_notify(llmux_tls_t *t) {
  (void)mbedtls_ssl_close_notify(&t->ssl);
}

size_t llmux_tls_out(llmux_tls_t *t, const char **data) {
  *data = t->out.base + t->out_off;
  return t->out.len - t->out_off;
}

void llmux_tls_out_consume(llmux_tls_t *t, size_t n) {
  t->out_off += n;
  if (t->out_off >= t->out.len) t->out.len = t->out_off = 0;
}

size_t llmux_tls_out_take(llmux_tls_t *t, llmux_buf_t *dst) {
  llmux_buf_t tmp;
  size_t n;
  if (t->out_off > 0) {
    llmux_buf_consume(&t->out, t->out_off);
    t->out_off = 0;
  }
  n = t->out.len;
  if (n == 0) return 0;
  dst->len = 0;
  tmp = *dst;
  *dst = t->out;
  t->out = tmp;
  return n;
}

size_t llmux_tls_pending(llmux_tls_t *t) {
  return (t->in.len - t->in_off) + mbedtls_ssl_get_bytes_avail(&t->ssl) +
         (size_t)(mbedtls_ssl_check_pending(&t->ssl) != 0);
}

const char *llmux_tls_alpn(llmux_tls_t *t) {
  return mbedtls_ssl_get_alpn_protocol(&t->ssl);
}

const char *llmux_tls_last_error(llmux_tls_t *t) {
  return t->err[0] ? t->err : "no error";
}
