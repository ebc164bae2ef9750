/* Commands for tenants: `llmux key new TENANT` and `llmux usage`. */
#ifndef LLMUX_CLI_TENANT_H
#define LLMUX_CLI_TENANT_H

/* argv[0] is "key". Prints a fresh key once and its config line. Returns
 * the exit status. */
int llmux_cli_key(int argc, char **argv);
/* Prints every tenant's usage from the usage_db of config_path's [server]. */
int llmux_cli_usage(const char *config_path);

#endif
