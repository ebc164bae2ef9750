#ifndef LLMUX_CLI_H
#define LLMUX_CLI_H
/* Runs the llmux command line; returns the process exit status. */
int llmux_cli_main(int argc, char **argv);
#endif
