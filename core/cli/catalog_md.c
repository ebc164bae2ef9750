/* The catalog as Markdown tables, written from the configuration. */
#include "cli/catalog_md.h"

#include <inttypes.h>
#include <stdlib.h>

#include "base/util.h"

/* Markdown cells: a '|' in a name would end the cell. */
static void cell(FILE *out, const char *s) {
  fputs(" ", out);
  for (; s != NULL && *s; s++) {
    if (*s == '|') fputc('\\', out);
    fputc(*s, out);
  }
  fputs(" |", out);
}

static void model_row(const llmux_model_conf_t *m, FILE *out) {
  llmux_buf_t b = {0};
  size_t i;
  fputs("|", out);
  llmux_buf_printf(&b, "`%s`", m->id);
  cell(out, b.base);
  b.len = 0;
  llmux_buf_printf(&b, "%d", m->tier);
  cell(out, b.base);
  cell(out, m->family ? m->family : "");
  b.len = 0;
  for (i = 0; i < m->aliases.len; i++)
    llmux_buf_printf(&b, "%s`%s`", i ? ", " : "", m->aliases.items[i]);
  cell(out, b.len ? b.base : "");
  b.len = 0;
  llmux_caps_format(m->capabilities, &b);
  cell(out, b.len ? b.base : "");
  b.len = 0;
  if (m->context_window) llmux_buf_printf(&b, "%" PRIu64, m->context_window);
  cell(out, b.len ? b.base : "");
  b.len = 0;
  if (m->has_price) llmux_buf_printf(&b, "%g / %g", m->price_in, m->price_out);
  cell(out, b.len ? b.base : "");
  b.len = 0;
  for (i = 0; i < m->nroutes; i++)
    if (!m->routes[i]->passthrough)
      llmux_buf_printf(&b, "%s%s (`%s`)", b.len ? ", " : "", m->routes[i]->provider_name,
                       m->routes[i]->id);
  cell(out, b.len ? b.base : "none yet");
  fputs("\n", out);
  llmux_buf_free(&b);
}

static void generic_row(const llmux_generic_conf_t *g, FILE *out) {
  llmux_buf_t b = {0};
  size_t i;
  fputs("|", out);
  llmux_buf_printf(&b, "`%s`", g->name);
  cell(out, b.base);
  b.len = 0;
  if (g->tier) llmux_buf_printf(&b, "%d", g->tier);
  else if (g->max_tier) llmux_buf_printf(&b, "%d to %d", g->min_tier, g->max_tier);
  else llmux_buf_printf(&b, "%d and up", g->min_tier);
  cell(out, b.base);
  b.len = 0;
  for (i = 0; i < g->nmodels; i++)
    llmux_buf_printf(&b, "%s`%s`", i ? ", " : "", g->models[i]->id);
  cell(out, b.len ? b.base : "");
  fputs("\n", out);
  llmux_buf_free(&b);
}

void llmux_cli_catalog_markdown(const llmux_config_t *cfg, const char *config_path, FILE *out) {
  size_t i;
  fprintf(out,
          "# Models\n\n"
          "Generated from `%s` by `llmux models --markdown`; do not edit by hand.\n"
          "Prices are USD per million tokens (input / output). A model is served by\n"
          "the providers listed, in priority order, when their API key is set.\n\n",
          config_path);
  fputs("| Model | Tier | Family | Aliases | Capabilities | Context | Price | Providers |\n"
        "|---|---|---|---|---|---|---|---|\n",
        out);
  for (i = 0; i < cfg->nmodels; i++) model_row(cfg->models[i], out);
  if (cfg->ngenerics == 0) return;
  fputs("\n## Generic names\n\n"
        "A generic name tries every model of its tiers, highest tier first.\n\n"
        "| Name | Tiers | Models, in order |\n|---|---|---|\n",
        out);
  for (i = 0; i < cfg->ngenerics; i++) generic_row(cfg->generics[i], out);
}
