/* TLS sessions driven by the caller's event loop.
 *
 * A session never touches a socket: the caller feeds it the ciphertext it
 * read, takes plaintext out, and sends whatever ciphertext the session has
 * queued. So the same code serves the upstream client (client role) and the
 * mock provider in the tests (server role), and nothing ever blocks.
 *
 * Typical client use on a libuv stream:
 *   llmux_tls_new(&t, ctx, "api.groq.com");
 *   loop: on read -> llmux_tls_feed(); llmux_tls_handshake() until 0;
 *         then llmux_tls_read() for plaintext; llmux_tls_write() to send;
 *         after every call, flush llmux_tls_out() to the socket and
 *         llmux_tls_out_consume() what was written.
 */
#ifndef LLMUX_TLS_H
#define LLMUX_TLS_H

#include <stddef.h>
#include <sys/types.h>

#include "llmux/common.h"

typedef struct llmux_tls_ctx_s llmux_tls_ctx_t;
typedef struct llmux_tls_s llmux_tls_t;

/* Client context. ca_file NULL means the system bundle
 * (/etc/ssl/certs/ca-certificates.crt). verify 0 turns certificate checks
 * off (the caller logs the warning). Returns 0 or a negative LLMUX_E*;
 * on error `err` (if not NULL, size errlen) says why, with the file name.
 * Parsing the system bundle (~140 certificates) costs milliseconds, so make
 * one client context per provider at start-up (before the loop runs) and
 * share it between all of that provider's connections; never per request.
 * A context also owns the entropy source and CTR-DRBG its sessions use.
 * Sessions negotiate TLS 1.2 (the minimum) and offer ALPN "http/1.1". */
int llmux_tls_ctx_client_new(llmux_tls_ctx_t **out, const char *ca_file, int verify,
                             char *err, size_t errlen);
/* Server context from PEM certificate chain and key files. */
int llmux_tls_ctx_server_new(llmux_tls_ctx_t **out, const char *cert_file,
                             const char *key_file, char *err, size_t errlen);
void llmux_tls_ctx_free(llmux_tls_ctx_t *ctx);

/* A session borrows ctx, which must outlive it. sni_host is copied; it is
 * the name sent as SNI and checked against the certificate (client role;
 * ignored for servers). */
int llmux_tls_new(llmux_tls_t **out, llmux_tls_ctx_t *ctx, const char *sni_host);
void llmux_tls_free(llmux_tls_t *t);

/* Queues ciphertext received from the peer (copied). */
int llmux_tls_feed(llmux_tls_t *t, const char *data, size_t len);
/* Advances the handshake: 0 when complete, LLMUX_EAGAIN when it needs more
 * input (flush llmux_tls_out first), LLMUX_ECERT when the peer certificate
 * failed verification, LLMUX_ETLS for any other failure. */
int llmux_tls_handshake(llmux_tls_t *t);
/* Plaintext out: bytes read (> 0), LLMUX_EAGAIN when no full record is
 * buffered, LLMUX_EEOF on close_notify, LLMUX_ETLS on failure. */
ssize_t llmux_tls_read(llmux_tls_t *t, char *buf, size_t cap);
/* Encrypts all of `len` bytes into the outgoing queue: 0 or LLMUX_ETLS. */
int llmux_tls_write(llmux_tls_t *t, const char *data, size_t len);
/* Queues a close_notify alert. */
void llmux_tls_close_notify(llmux_tls_t *t);
/* Ciphertext waiting to be sent: pointer and length (0 if none). The
 * pointer stays valid until the next call on the session. */
size_t llmux_tls_out(llmux_tls_t *t, const char **data);
void llmux_tls_out_consume(llmux_tls_t *t, size_t n);
/* Moves all queued ciphertext into `dst` without copying: the two buffers'
 * storage is swapped, so `dst`'s old storage (its len is reset to 0) is
 * reused by the session. `dst` then owns the bytes and stays valid while
 * the session keeps working, e.g. for the duration of a uv_write. Returns
 * the number of bytes moved (0: nothing queued, `dst` untouched). */
size_t llmux_tls_out_take(llmux_tls_t *t, llmux_buf_t *dst);
/* Bytes fed or decrypted but not yet returned by llmux_tls_read (non-zero
 * means more input is buffered: a connection is not idle). */
size_t llmux_tls_pending(llmux_tls_t *t);
/* Protocol chosen by ALPN after the handshake, or NULL. */
const char *llmux_tls_alpn(llmux_tls_t *t);
/* A description of the last failure (verification flags spelled out). */
const char *llmux_tls_last_error(llmux_tls_t *t);

#endif /* LLMUX_TLS_H */
