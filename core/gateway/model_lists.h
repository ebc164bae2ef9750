/* The model lists of passthrough providers (issue 16): what each one says
 * it serves (GET {base_url}/models for OpenAI's format, /api/tags for
 * Ollama: the plugin's models_request and parse_models, ABI 1.1), asked on
 * the loop when the gateway starts and after each reload.
 *
 * The lists are the gateway's, keyed by provider name, outside every
 * generation: a generation serves before its lists arrive (bare ids are
 * then 404 until they do), and a reload keeps the previous lists until the
 * new answers replace them. A provider that cannot be asked keeps what it
 * had; one that is no longer a passthrough provider is never consulted
 * (lookups go through the current configuration).
 *
 * Everything runs on the loop thread; nothing blocks. */
#ifndef LLMUX_GATEWAY_MODEL_LISTS_H
#define LLMUX_GATEWAY_MODEL_LISTS_H

#include "config/config.h"
#include "gateway/generation.h"
#include "net/upstream.h"

typedef struct llmux_model_lists_s llmux_model_lists_t;

/* Lists that fetch through `up` (borrowed: free the lists before it
 * closes). NULL on no memory. */
llmux_model_lists_t *llmux_model_lists_new(llmux_upstream_t *up);
/* Asks every enabled passthrough provider of `gen` whose plugin can list
 * its models; each answer replaces that provider's list when it comes.
 * Each fetch holds a reference on `gen` while it runs. */
void llmux_model_lists_refresh(llmux_model_lists_t *ml, llmux_generation_t *gen);
/* The passthrough provider of `cfg` whose list holds `id` (exactly, or as
 * "ID:latest", Ollama's default tag), the lowest priority first; NULL when
 * none does. */
const llmux_provider_conf_t *llmux_model_lists_find(const llmux_model_lists_t *ml,
                                                    const llmux_config_t *cfg, const char *id);
/* The list of provider `name` as NUL-terminated names one after the other
 * (`*len` bytes); NULL when none arrived. For tests and the admin. */
const char *llmux_model_lists_get(const llmux_model_lists_t *ml, const char *name, size_t *len);
/* Fetches in flight (they will be asked again later). */
size_t llmux_model_lists_pending(const llmux_model_lists_t *ml);
/* Cancels what is in flight and frees everything; NULL is a no-op. */
void llmux_model_lists_free(llmux_model_lists_t *ml);

#endif /* LLMUX_GATEWAY_MODEL_LISTS_H */
