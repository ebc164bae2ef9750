#include <malloc.h>

#include "cli/cli.h"

int main(int argc, char **argv) {
  /* Request bodies and answers are tens of KiB, allocated and freed per
   * request. glibc's defaults give the heap's top back to the kernel as
   * soon as 128 KiB are free and take it again on the next request: a brk
   * pair plus fresh zeroed pages per request. Keep a few MiB instead. */
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  mallopt(M_TRIM_THRESHOLD, 8 << 20);
  mallopt(M_TOP_PAD, 1 << 20);
  return llmux_cli_main(argc, argv);
}
