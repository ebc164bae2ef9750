/* A request its model cannot serve (gateway/unsupported.h). */
#include "gateway/unsupported.h"

#include "base/util.h"
#include "llmux/provider.h"

/* "'tools'" or "'tools', 'vision'" */
static void quoted_caps(unsigned caps, llmux_buf_t *out) {
  static const unsigned bits[] = {LLMUX_CAP_TOOLS, LLMUX_CAP_VISION, LLMUX_CAP_JSON,
                                  LLMUX_CAP_EMBEDDINGS};
  size_t i;
  int first = 1;
  for (i = 0; i < LLMUX_COUNTOF(bits); i++) {
    if (!(caps & bits[i])) continue;
    llmux_buf_appends(out, first ? "'" : ", '");
    llmux_caps_format(bits[i], out);
    llmux_buf_appends(out, "'");
    first = 0;
  }
}

/* "tools" or "tools and vision" (caps_format joins with ',') */
static void plain_caps(unsigned caps, llmux_buf_t *out) {
  llmux_buf_t names = {0};
  size_t i, commas = 0;
  llmux_caps_format(caps, &names);
  for (i = 0; i < names.len; i++) commas += names.base[i] == ',';
  for (i = 0; i < names.len; i++) {
    if (names.base[i] != ',') llmux_buf_append(out, &names.base[i], 1);
    else llmux_buf_appends(out, --commas ? ", " : " and ");
  }
  llmux_buf_free(&names);
}

int llmux_unsupported_message(const llmux_route_plan_t *plan, int endpoint, const char *model,
                              llmux_buf_t *msg) {
  unsigned every = ~0u, any = 0; /* missing from every route / from some */
  size_t i;
  if (plan->nroutes != 0 || plan->nskipped == 0 || plan->skipped == NULL) return 0;
  for (i = 0; i < plan->nskipped; i++) {
    const llmux_route_skip_t *s = &plan->skipped[i];
    /* missing_caps 0: a chat request to an embeddings model, which lacks
     * everything a chat request may need. */
    unsigned miss = s->missing_caps ? s->missing_caps : ~0u;
    if (s->reason != LLMUX_SKIP_CAPABILITY) return 0;
    every &= miss;
    any |= s->missing_caps;
  }
  if (endpoint == LLMUX_ENDPOINT_EMBEDDINGS) {
    llmux_buf_printf(msg, "Model '%s' is not an embeddings model (no route of it declares the "
                     "'embeddings' capability).", model);
  } else if (any == 0) {
    llmux_buf_printf(msg, "Model '%s' is an embeddings model: it serves /v1/embeddings only.",
                     model);
  } else if ((every &= any) != 0) {
    llmux_buf_printf(msg, "Model '%s' does not support ", model);
    plain_caps(every, msg);
    llmux_buf_appends(msg, " (no route of it declares the ");
    if ((every & (every - 1)) == 0) {
      quoted_caps(every, msg);
      llmux_buf_appends(msg, " capability).");
    } else {
      llmux_buf_appends(msg, "capabilities ");
      quoted_caps(every, msg);
      llmux_buf_appends(msg, ").");
    }
  } else {
    llmux_buf_printf(msg, "Model '%s' does not support ", model);
    plain_caps(any, msg);
    llmux_buf_appends(msg, " in one request (no route of it declares all of ");
    quoted_caps(any, msg);
    llmux_buf_appends(msg, ").");
  }
  return 1;
}
