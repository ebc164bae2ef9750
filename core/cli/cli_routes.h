/* `llmux routes`: the route status table of a running gateway. */
#ifndef LLMUX_CLI_ROUTES_H
#define LLMUX_CLI_ROUTES_H

/* argv[0] is "routes". GETs URL/admin/routes (--url, default the
 * configured listen address) and prints one line per route. Returns the
 * exit status: 0, 1 when the gateway could not be asked or refused, 2 for
 * bad arguments. */
int llmux_cli_routes(int argc, char **argv);

#endif
