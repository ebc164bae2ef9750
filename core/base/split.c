/* NDJSON lines and Server-Sent Events out of a body fed in pieces. See
 * split.h; the formats are described with LLMUX_SPLIT_* in
 * llmux/provider.h (SSE as the WHATWG HTML standard parses it, except
 * that at the end of the body an unfinished event still counts). */
#include "base/split.h"

#include <stdlib.h>
#include <string.h>

#include "base/util.h"

llmux_split_t *llmux_split_new(int mode, size_t max) {
  llmux_split_t *s;
  if (mode != LLMUX_SPLIT_NDJSON && mode != LLMUX_SPLIT_SSE) return NULL;
  if ((s = calloc(1, sizeof *s)) == NULL) return NULL;
  s->mode = mode;
  s->max = max ? max : LLMUX_SPLIT_DEFAULT_MAX;
  return s;
}

void llmux_split_reset(llmux_split_t *s) {
  if (s == NULL) return;
  s->line.len = s->event.len = 0;
  s->borrowed = (llmux_str_t){NULL, 0};
  s->line_done = s->skip_lf = s->has_data = s->yielded = 0;
}

void llmux_split_free(llmux_split_t *s) {
  if (s == NULL) return;
  llmux_buf_free(&s->line);
  llmux_buf_free(&s->event);
  free(s);
}

/* The end of the line starting at p: '\n', and for SSE '\r' too. */
static const char *find_eol(const llmux_split_t *s, const char *p, const char *end) {
  if (s->mode == LLMUX_SPLIT_NDJSON) return p < end ? memchr(p, '\n', (size_t)(end - p)) : NULL;
  for (; p < end; p++)
    if (*p == '\n' || *p == '\r') return p;
  return NULL;
}

/* The next complete line from the caller's bytes (borrowed) or finishing
 * the one kept from before (in s->line): 1 with *ln, 0 when every byte is
 * taken and kept, LLMUX_EUPSTREAM / LLMUX_ENOMEM. Its bound counts every
 * byte before the end of line, so the verdict does not depend on where the
 * body was cut. */
static int take_line(llmux_split_t *s, const char **data, size_t *len, llmux_str_t *ln,
                     int *borrowed) {
  const char *p, *end, *eol;
  if (s->line_done) s->line.len = 0, s->line_done = 0;
  if (*len == 0) return 0; /* (and *data may be NULL) */
  p = *data;
  end = p + *len;
  if (s->skip_lf) { /* the '\n' of a "\r\n" cut in two */
    s->skip_lf = 0;
    if (*p == '\n') p++;
  }
  eol = find_eol(s, p, end);
  if (eol == NULL) {
    if (s->line.len + (size_t)(end - p) > s->max) return LLMUX_EUPSTREAM;
    if (p < end && llmux_buf_append(&s->line, p, (size_t)(end - p)) != 0) return LLMUX_ENOMEM;
    *data = end;
    *len = 0;
    return 0;
  }
  if (s->line.len + (size_t)(eol - p) > s->max) return LLMUX_EUPSTREAM;
  *borrowed = s->line.len == 0;
  if (*borrowed) {
    *ln = (llmux_str_t){p, (size_t)(eol - p)};
  } else {
    if (llmux_buf_append(&s->line, p, (size_t)(eol - p)) != 0) return LLMUX_ENOMEM;
    *ln = (llmux_str_t){s->line.base, s->line.len};
    s->line_done = 1;
  }
  s->skip_lf = *eol == '\r';
  *data = eol + 1;
  *len = (size_t)(end - eol - 1);
  return 1;
}

/* At the end of the body: the unfinished line kept, if any. */
static int take_last_line(llmux_split_t *s, llmux_str_t *ln, int *borrowed) {
  if (s->line_done) s->line.len = 0, s->line_done = 0;
  s->skip_lf = 0;
  if (s->line.len == 0) return 0;
  *ln = (llmux_str_t){s->line.base, s->line.len};
  *borrowed = 0;
  s->line_done = 1;
  return 1;
}

/* ---- SSE --------------------------------------------------------------- */

/* Moves a borrowed data line into the event's own buffer. */
static int sse_own(llmux_split_t *s) {
  if (s->borrowed.base == NULL) return 0;
  if (llmux_buf_append(&s->event, s->borrowed.base, s->borrowed.len) != 0) return LLMUX_ENOMEM;
  s->borrowed = (llmux_str_t){NULL, 0};
  return 0;
}

/* One data line's value joins the event (after a '\n' if not its first). */
static int sse_data(llmux_split_t *s, llmux_str_t v, int borrowed) {
  size_t had = s->event.len + s->borrowed.len + (s->has_data ? 1 : 0);
  if (had + v.len > s->max) return LLMUX_EUPSTREAM;
  if (!s->has_data && borrowed) { /* most events: one line, referenced */
    s->borrowed = v;
    s->has_data = 1;
    return 0;
  }
  if (sse_own(s) != 0 || (s->has_data && llmux_buf_append(&s->event, "\n", 1) != 0) ||
      (v.len && llmux_buf_append(&s->event, v.base, v.len) != 0))
    return LLMUX_ENOMEM;
  s->has_data = 1;
  return 0;
}

/* The event ends: 1 with its data, or 0 when it has none. */
static int sse_dispatch(llmux_split_t *s, llmux_str_t *item) {
  if (!s->has_data) return 0;
  if (s->borrowed.base != NULL) *item = s->borrowed;
  else *item = (llmux_str_t){s->event.base ? s->event.base : "", s->event.len};
  s->yielded = 1;
  return 1;
}

/* "field:value", "field: value", "field" or ":comment". */
static int sse_line(llmux_split_t *s, llmux_str_t ln, int borrowed, llmux_str_t *item) {
  const char *colon;
  llmux_str_t v;
  if (ln.len == 0) return sse_dispatch(s, item);
  colon = memchr(ln.base, ':', ln.len);
  if ((colon ? (size_t)(colon - ln.base) : ln.len) != 4 || memcmp(ln.base, "data", 4) != 0)
    return 0; /* a comment, event, id, retry or unknown field */
  v = (llmux_str_t){ln.base + ln.len, 0};
  if (colon != NULL) {
    v = (llmux_str_t){colon + 1, ln.len - 5};
    if (v.len && *v.base == ' ') v.base++, v.len--;
  }
  return sse_data(s, v, borrowed);
}

/* ---- The service ------------------------------------------------------- */

int llmux_split_next(llmux_split_t *s, const char **data, size_t *len, int eof,
                     llmux_str_t *item) {
  llmux_str_t ln;
  int rc, borrowed = 0;
  if (s->yielded) {
    s->event.len = 0;
    s->borrowed = (llmux_str_t){NULL, 0};
    s->has_data = s->yielded = 0;
  }
  for (;;) {
    rc = take_line(s, data, len, &ln, &borrowed);
    if (rc == 0 && eof) rc = take_last_line(s, &ln, &borrowed);
    if (rc <= 0) break;
    if (s->mode == LLMUX_SPLIT_NDJSON) {
      if (ln.len && ln.base[ln.len - 1] == '\r') ln.len--;
      if (ln.len == 0) continue;
      *item = ln;
      return 1;
    }
    if ((rc = sse_line(s, ln, borrowed, item)) != 0) return rc;
  }
  if (rc < 0 || s->mode != LLMUX_SPLIT_SSE) return rc;
  /* Every byte is taken: the caller's go away, so keep what we referenced. */
  return eof ? sse_dispatch(s, item) : sse_own(s);
}
