/* A plugin whose entry point refuses to load. */
#include "llmux/provider.h"

LLMUX_PLUGIN_EXPORT int llmux_provider_init(const llmux_host_api_t *host,
                                            const llmux_provider_t **out) {
  (void)host;
  (void)out;
  return LLMUX_EABI;
}
