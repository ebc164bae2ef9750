/* What every command shares: where the configuration and the plugins are,
 * and how diagnostics are printed. */
#include "cli/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "base/util.h"

#ifndef LLMUX_PLUGIN_INSTALL_DIR
#define LLMUX_PLUGIN_INSTALL_DIR "/usr/local/lib/llmux/plugins"
#endif

const char *llmux_cli_config_path(const char *given) {
  const char *env = getenv("LLMUX_CONFIG");
  if (given != NULL) return given;
  if (env != NULL && *env != '\0') return env;
  if (access("config/llmux.ini", R_OK) == 0) return "config/llmux.ini";
  return "/etc/llmux/llmux.ini";
}

/* plugins/ beside the binary (the build tree), else the installed dir. */
char *llmux_cli_plugin_dir(const llmux_config_t *cfg) {
  char exe[4096];
  size_t n = sizeof exe;
  if (cfg != NULL && cfg->server.plugin_dir) return llmux_xstrdup(cfg->server.plugin_dir);
  if (uv_exepath(exe, &n) == 0) {
    llmux_buf_t dir = {0};
    char *slash = strrchr(exe, '/');
    if (slash != NULL) *slash = '\0';
    llmux_buf_printf(&dir, "%s/plugins", exe);
    if (access(dir.base, R_OK) == 0) return dir.base;
    llmux_buf_free(&dir);
  }
  return llmux_xstrdup(LLMUX_PLUGIN_INSTALL_DIR);
}

/* Warnings (disabled providers...) matter when serving or checking; the
 * listing commands show errors only. */
void llmux_cli_print_diag(const llmux_diag_t *d, int warnings) {
  llmux_buf_t line = {0};
  size_t i;
  for (i = 0; i < d->len; i++) {
    if (!warnings && d->items[i].severity != LLMUX_DIAG_ERROR) continue;
    line.len = 0;
    llmux_diag_format(&d->items[i], &line);
    fprintf(stderr, "%s\n", line.base ? line.base : "");
  }
  llmux_buf_free(&line);
}
