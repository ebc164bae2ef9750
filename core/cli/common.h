/* Shared by the commands (cli.c, chat.c, cli_tenant.c). */
#ifndef LLMUX_CLI_COMMON_H
#define LLMUX_CLI_COMMON_H

#include "config/config.h"

/* -c, else LLMUX_CONFIG, else config/llmux.ini, else /etc/llmux/llmux.ini. */
const char *llmux_cli_config_path(const char *given);
/* The configured plugin_dir, else plugins/ beside the binary, else the
 * installed plugin directory. Owned by the caller (free). */
char *llmux_cli_plugin_dir(const llmux_config_t *cfg);
/* Prints diagnostics to stderr, one per line; warnings only if asked. */
void llmux_cli_print_diag(const llmux_diag_t *d, int warnings);

#endif
