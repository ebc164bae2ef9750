/* llmux public definitions shared by the gateway and its plugins.
 *
 * Everything here is part of the plugin ABI: values are only ever added,
 * never renumbered or reordered. */
#ifndef LLMUX_COMMON_H
#define LLMUX_COMMON_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes are negative ints. XX(NAME, value, "openai_code", "message").
 * The same table gives llmux_strerror() and the `code` of the OpenAI-shaped
 * error bodies the gateway sends. */
#define LLMUX_ERRNO_MAP(XX)                                                  \
  XX(AGAIN,       -1,  "again",              "more data needed")             \
  XX(NOMEM,       -2,  "out_of_memory",      "out of memory")                \
  XX(INVAL,       -3,  "invalid_argument",   "invalid argument")             \
  XX(PROTO,       -4,  "protocol_error",     "protocol error")               \
  XX(TIMEOUT,     -5,  "timeout",            "timed out")                    \
  XX(CONNREFUSED, -6,  "connection_refused", "connection refused")           \
  XX(CONNRESET,   -7,  "connection_reset",   "connection reset by peer")     \
  XX(DNS,         -8,  "dns_error",          "name resolution failed")       \
  XX(TLS,         -9,  "tls_error",          "TLS failure")                  \
  XX(CERT,        -10, "certificate_error",  "certificate verification failed") \
  XX(EOF,         -11, "unexpected_eof",     "unexpected end of stream")     \
  XX(CANCELED,    -12, "canceled",           "operation canceled")           \
  XX(TOOLARGE,    -13, "too_large",          "too large")                    \
  XX(NOTFOUND,    -14, "not_found",          "not found")                    \
  XX(IO,          -15, "io_error",           "input/output error")           \
  XX(ABI,         -16, "abi_mismatch",       "ABI version mismatch")         \
  XX(CONFIG,      -17, "config_error",       "configuration error")          \
  XX(UPSTREAM,    -18, "upstream_error",     "invalid upstream response")    \
  XX(ADDRINUSE,   -19, "address_in_use",     "address already in use")       \
  XX(ACCES,       -20, "permission_denied",  "permission denied")            \
  XX(ADDRNOTAVAIL, -21, "address_not_available", "address not available")   \
  XX(STALE,       -22, "stale_state",        "state must be refreshed first") \

typedef enum {
#define LLMUX__ERR_ENUM(name, val, code, msg) LLMUX_E##name = (val),
  LLMUX_ERRNO_MAP(LLMUX__ERR_ENUM)
#undef LLMUX__ERR_ENUM
  LLMUX__ERR_MIN = -1000
} llmux_errno_t;

/* A growable byte buffer. `base` is owned by whoever owns the struct and is
 * released with the same allocator that grew it (the host's, for plugins). */
typedef struct llmux_buf_s {
  char *base;
  size_t len;
  size_t cap;
} llmux_buf_t;

/* A borrowed byte range: never owns memory. */
typedef struct llmux_str_s {
  const char *base;
  size_t len;
} llmux_str_t;

#ifdef __cplusplus
}
#endif
#endif /* LLMUX_COMMON_H */
