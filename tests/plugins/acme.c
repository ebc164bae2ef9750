/* A third-party plugin, built from the SDK header alone: it speaks to an
 * OpenAI-compatible provider whose rate-limit headers are Groq's (requests
 * counted per day), and says so in its vtable, so the gateway reads them
 * right whatever the provider's section is called. It passes bodies
 * through and leans on the host's 1.3 services for everything else. */
#include <string.h>

#include "llmux/provider.h"

/* acme_future.so is built with a dialect this llmux does not know. */
#ifndef ACME_DIALECT
#define ACME_DIALECT "groq"
#endif

static const llmux_host_api_t *host;

static int acme_create(const llmux_provider_config_t *cfg, void **instance, char *err,
                       size_t errlen) {
  (void)cfg, (void)err, (void)errlen;
  *instance = (void *)&host; /* no state of its own */
  return 0;
}

static int acme_translate_request(void *instance, llmux_txn_t *txn) {
  (void)instance;
  if (host->buf_append(&txn->path, "/chat/completions", 17) != 0) return LLMUX_ENOMEM;
  txn->body_parts[0] = txn->body;
  txn->nbody_parts = 1;
  return 0;
}

static int acme_parse_response(void *instance, llmux_txn_t *txn, const char *data, size_t len,
                               int eof) {
  (void)instance, (void)eof;
  return len ? host->emit(txn, data, len) : 0;
}

static int acme_classify_error(void *instance, llmux_txn_t *txn, const char *body, size_t len,
                               llmux_error_info_t *out) {
  const llmux_str_t *ra = host->header_get(txn->resp_headers, txn->nresp_headers, "retry-after");
  (void)instance;
  host->classify_status(txn->status, out);
  if (ra == NULL || host->parse_retry_after(ra->base, ra->len, 0, &out->retry_after_ms) != 0)
    out->retry_after_ms = 0;
  return host->buf_append(&out->message, body, len);
}

static const llmux_provider_t acme_provider = {
  .abi_major = LLMUX_PROVIDER_ABI_MAJOR,
  .abi_minor = LLMUX_PROVIDER_ABI_MINOR,
  .size = sizeof(llmux_provider_t),
  .name = "acme",
  .description = "a third party's OpenAI-compatible provider with Groq's rate-limit headers",
  .create = acme_create,
  .translate_request = acme_translate_request,
  .parse_response = acme_parse_response,
  .classify_error = acme_classify_error,
  .ratelimit_dialect = ACME_DIALECT,
};

LLMUX_PROVIDER_ENTRY_MIN(host, acme_provider, 3)
