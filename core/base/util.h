/* Small helpers shared across the core: buffers, number parsing, strings. */
#ifndef LLMUX_UTIL_H
#define LLMUX_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "llmux/common.h"

#define LLMUX_COUNTOF(a) (sizeof(a) / sizeof((a)[0]))
#define llmux_container_of(ptr, type, member) \
  ((type *)((char *)(ptr) - offsetof(type, member)))

const char *llmux_strerror(int err);
const char *llmux_err_code(int err);

/* Allocation that aborts on failure: for small control structures only,
 * where running out of memory leaves nothing sensible to do. Request-driven
 * allocations use malloc and report LLMUX_ENOMEM instead. */
void *llmux_xmalloc(size_t n);
void *llmux_xcalloc(size_t n, size_t size);
char *llmux_xstrdup(const char *s);
char *llmux_xstrndup(const char *s, size_t n);

/* Buffers: 0 on success, LLMUX_ENOMEM on failure (buffer left unchanged). */
int llmux_buf_reserve(llmux_buf_t *b, size_t extra);
int llmux__buf_append_grow(llmux_buf_t *b, const void *data, size_t n);
/* Keeps the buffer NUL-terminated (not counted in len) so it can be used as
 * a C string whenever its content is text. Inline: most appends find room,
 * and a literal's length and copy then fold into a few moves. */
static inline int llmux_buf_append(llmux_buf_t *b, const void *data, size_t n) {
  if (b->cap - b->len <= n) return llmux__buf_append_grow(b, data, n);
  if (n) memcpy(b->base + b->len, data, n);
  b->len += n;
  b->base[b->len] = '\0';
  return 0;
}
static inline int llmux_buf_appends(llmux_buf_t *b, const char *s) {
  return llmux_buf_append(b, s, strlen(s));
}
int llmux_buf_printf(llmux_buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Decimal and hex digits of v into out (at least 21 bytes), NUL-terminated;
 * returns the length. For hot paths where printf's parsing shows up. */
size_t llmux_u64_dec(char *out, uint64_t v);
size_t llmux_u64_hex(char *out, uint64_t v, unsigned min_digits);
/* Appends `s` as a JSON string literal, quotes included. Any bytes give
 * valid UTF-8 JSON: each ill-formed UTF-8 piece becomes \ufffd. */
int llmux_buf_append_json_str(llmux_buf_t *b, const char *s, size_t n);
void llmux_buf_consume(llmux_buf_t *b, size_t n); /* drop n bytes at the front */
void llmux_buf_free(llmux_buf_t *b);
/* memset(p, 0, n) by libc's routine: for the large structs a request
 * zeroes, which compilers otherwise expand to `rep stos` (an instruction
 * a word, where libc's vector loop takes one for 32 bytes). */
void llmux_zero(void *p, size_t n);

/* "10s", "500ms", "2m", "1h", "1d"; a bare number is seconds. Result in ms.
 * 0 on success, LLMUX_EINVAL on anything else. */
int llmux_parse_duration(const char *s, uint64_t *out_ms);
/* "8m", "16k", "1g" (powers of 1024, case-insensitive, optional "b"/"ib");
 * a bare number is bytes. */
int llmux_parse_size(const char *s, uint64_t *out);
/* Non-negative decimal integer / double with nothing after it. */
int llmux_parse_u64(const char *s, uint64_t *out);
int llmux_parse_double(const char *s, double *out);
/* true/false, yes/no, on/off, 1/0. */
int llmux_parse_bool(const char *s, int *out);

/* Trims ASCII white space in place; returns s. */
char *llmux_trim(char *s);
/* Splits a comma-separated list in place into trimmed, non-empty items.
 * Returns the number of items stored (at most max). */
size_t llmux_split_list(char *s, char **items, size_t max);

int llmux_strcaseeq(const char *a, const char *b);
/* Levenshtein distance, case-insensitive, capped at `cap`. */
unsigned llmux_edit_distance(const char *a, const char *b, unsigned cap);

/* Monotonic clock in microseconds. */
uint64_t llmux_now_us(void);

#endif /* LLMUX_UTIL_H */
