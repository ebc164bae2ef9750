#include "llmux/common.h"
#include "base/util.h"

const char *llmux_strerror(int err) {
  switch (err) {
#define XX(name, val, code, msg) case (val): return msg;
    LLMUX_ERRNO_MAP(XX)
#undef XX
  }
  return "unknown error";
}

const char *llmux_err_code(int err) {
  switch (err) {
#define XX(name, val, code, msg) case (val): return code;
    LLMUX_ERRNO_MAP(XX)
#undef XX
  }
  return "internal_error";
}
