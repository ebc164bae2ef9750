#include "cli.h"

int main(int argc, char **argv) {
  return llmux_cli_main(argc, argv);
}
