/* The command line's client side: `llmux chat` sends one request through
 * a gateway running in the same process, and `llmux models` asks the
 * providers that can list their own models (ABI 1.1 models_request). */
#ifndef LLMUX_CHAT_H
#define LLMUX_CHAT_H

#include <stdio.h>

#include "config/config.h"
#include "plugin/providers.h"

/* `llmux chat [OPTIONS] PROMPT`; argv[0] is "chat". Loads the configuration
 * and the plugins, starts the gateway on 127.0.0.1 (ephemeral port) on its
 * own loop, sends it one chat completion (streamed: content deltas go to
 * stdout as they arrive) or, with --embed, one embeddings request, then
 * closes every handle. Returns the exit status: 0 on an answer, 1 when the
 * gateway answered with an error (its message goes to stderr), 2 on a
 * usage error. */
int llmux_chat_main(int argc, char **argv);

/* For `llmux models`: asks every enabled provider whose plugin offers
 * models_request/parse_models for its model list (2 s timeout, all at
 * once on a private loop) and prints, in configuration order,
 * "models at NAME: a, b, c" or "NAME unreachable: reason" to `out`.
 * Prints nothing when no such provider is enabled. Creates the plugin
 * instances (and TLS contexts) it needs when `provs` was built without
 * them; instances stay in `provs` (freed by llmux_providers_free), TLS
 * contexts are freed before returning. Returns the number of providers
 * that could not be listed. */
int llmux_list_provider_models(llmux_config_t *cfg, llmux_providers_t *provs, FILE *out);

#endif /* LLMUX_CHAT_H */
