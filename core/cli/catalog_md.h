/* `llmux models --markdown`: the catalog as Markdown (docs/models.md). */
#ifndef LLMUX_CLI_CATALOG_MD_H
#define LLMUX_CLI_CATALOG_MD_H

#include <stdio.h>

#include "config/config.h"

/* Writes the models (tier, family, aliases, capabilities, context window,
 * price, the providers that serve each) and the generic names, from the
 * configuration alone: no key or network is needed, so the page is the
 * same on every machine. */
void llmux_cli_catalog_markdown(const llmux_config_t *cfg, const char *config_path, FILE *out);

#endif
