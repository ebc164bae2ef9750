/* A plugin built for a future, incompatible ABI. */
#include "llmux/provider.h"

static const llmux_provider_t vt = {
  .abi_major = LLMUX_PROVIDER_ABI_MAJOR + 98,
  .abi_minor = 0,
  .size = sizeof(llmux_provider_t),
  .name = "bad_abi",
};

LLMUX_PLUGIN_EXPORT int llmux_provider_init(const llmux_host_api_t *host,
                                            const llmux_provider_t **out) {
  (void)host;
  *out = &vt;
  return 0;
}
