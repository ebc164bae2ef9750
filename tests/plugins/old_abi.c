/* A plugin as an older SDK built it: built twice, as ABI 1.2 and as ABI
 * 1.0, by declaring that minor and (for 1.0) the struct size of the time,
 * when the vtable ended before explain_error. The 1.2 build also leaves
 * a value in the word that 1.3 names ratelimit_dialect (a reserved slot in
 * 1.2): a host that trusted the slot without the plugin's minor would read
 * it. Both must load, work, and be treated as offering no newer slot. */
#include <stddef.h>

#include "llmux/provider.h"

#ifndef OLD_MINOR
#error "OLD_MINOR: the ABI minor this plugin pretends to be built with"
#endif

static const llmux_host_api_t *host;

static int old_create(const llmux_provider_config_t *cfg, void **instance, char *err,
                      size_t errlen) {
  (void)cfg, (void)err, (void)errlen;
  *instance = (void *)&host;
  return 0;
}

static int old_translate_request(void *instance, llmux_txn_t *txn) {
  (void)instance;
  if (host->buf_append(&txn->path, "/chat/completions", 17) != 0) return LLMUX_ENOMEM;
  txn->body_parts[0] = txn->body;
  txn->nbody_parts = 1;
  return 0;
}

static int old_parse_response(void *instance, llmux_txn_t *txn, const char *data, size_t len,
                              int eof) {
  (void)instance, (void)eof;
  return len ? host->emit(txn, data, len) : 0;
}

static int old_classify_error(void *instance, llmux_txn_t *txn, const char *body, size_t len,
                              llmux_error_info_t *out) {
  (void)instance, (void)body, (void)len;
  out->cls = txn->status == 429 ? LLMUX_FAIL_RATE_LIMITED : LLMUX_FAIL_SERVER;
  out->retry_elsewhere = 1;
  return 0;
}

#if OLD_MINOR >= 1
static int old_explain_error(void *instance, int err, const char *detail, llmux_buf_t *out) {
  (void)instance, (void)err, (void)detail;
  return host->buf_printf(out, "the old plugin's advice");
}
#endif

static const llmux_provider_t old_provider = {
  .abi_major = LLMUX_PROVIDER_ABI_MAJOR,
  .abi_minor = OLD_MINOR,
#if OLD_MINOR == 0
  .size = offsetof(llmux_provider_t, explain_error),
#else
  .size = sizeof(llmux_provider_t), /* unchanged since: 1.3 took a reserved slot */
#endif
  .name = "old_abi",
  .description = "a plugin built with an older ABI",
  .create = old_create,
  .translate_request = old_translate_request,
  .parse_response = old_parse_response,
  .classify_error = old_classify_error,
#if OLD_MINOR >= 1
  .explain_error = old_explain_error,
  .ratelimit_dialect = "groq", /* garbage in a 1.2 reserved word */
#endif
};

LLMUX_PROVIDER_ENTRY(host, old_provider)
