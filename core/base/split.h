/* An incremental splitter of a byte stream into NDJSON lines or
 * Server-Sent Events: fed a body in pieces cut anywhere, it yields exactly
 * the items of the body fed whole. Plugins get it through the host table
 * (split_new, split_next, split_reset, split_free; modes LLMUX_SPLIT_*, see
 * llmux/provider.h for the formats); nothing here knows a provider.
 *
 * Items point into the caller's bytes whenever they are whole there (a
 * line, or an event of one data line), and into the splitter's own buffers
 * otherwise: nothing is copied that can be referenced. */
#ifndef LLMUX_SPLIT_H
#define LLMUX_SPLIT_H

#include <stddef.h>

#include "llmux/common.h"
#include "llmux/provider.h" /* llmux_split_t, LLMUX_SPLIT_* */

/* The default bound on a line or an item. */
#define LLMUX_SPLIT_DEFAULT_MAX ((size_t)16 << 20)

struct llmux_split_s {
  /* private */
  int mode;             /* LLMUX_SPLIT_* */
  size_t max;           /* bound on a line and an item */
  llmux_buf_t line;     /* an unfinished line, carried to the next call */
  int line_done;        /* `line` was handed out: empty it before reuse */
  int skip_lf;          /* SSE: the last line ended with '\r' */
  llmux_buf_t event;    /* SSE: the data of the event being gathered */
  llmux_str_t borrowed; /* SSE: its only data line, still in the caller's bytes */
  int has_data;         /* SSE: the event has a data field */
  int yielded;          /* an event was handed out: start a new one */
};

/* A splitter of `mode` (LLMUX_SPLIT_NDJSON or LLMUX_SPLIT_SSE), lines and
 * items at most `max` bytes (0: LLMUX_SPLIT_DEFAULT_MAX). NULL when out of
 * memory or for an unknown mode. */
llmux_split_t *llmux_split_new(int mode, size_t max);
/* The host service split_next: see llmux/provider.h. */
int llmux_split_next(llmux_split_t *s, const char **data, size_t *len, int eof,
                     llmux_str_t *item);
void llmux_split_reset(llmux_split_t *s);
void llmux_split_free(llmux_split_t *s);

#endif
