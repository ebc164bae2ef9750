/* Helpers shared by the fuzz targets: control bytes read off the front of
 * an input, a deterministic plan for cutting bytes into pieces, and a check
 * that fails loudly (libFuzzer keeps the input that made it abort).
 * Header-only. */
#ifndef LLMUX_FUZZ_H
#define LLMUX_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* A property every input must keep: prints where and why, then aborts. */
#define FUZZ_CHECK(cond, ...)                                                   \
  do {                                                                          \
    if (!(cond)) {                                                              \
      fprintf(stderr, "%s:%d: fuzz check failed: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                             \
      fputc('\n', stderr);                                                      \
      abort();                                                                  \
    }                                                                           \
  } while (0)

/* The rest of an input, consumed from the front. */
typedef struct {
  const uint8_t *p;
  size_t n;
} fuzz_in_t;

/* The next byte, or 0 once the input is used up. */
static inline uint8_t fuzz_byte(fuzz_in_t *in) {
  if (in->n == 0) return 0;
  in->n--;
  return *in->p++;
}

/* Piece sizes for feeding bytes in several reads. The seed byte chooses:
 * 0 all at once, 1 one byte at a time, otherwise sizes drawn from
 * [1, seed] by a xorshift generator (salt varies it between streams). */
typedef struct {
  uint32_t state;
  unsigned max;
} fuzz_split_t;

static inline uint32_t fuzz_rand(uint32_t *s) {
  uint32_t x = *s ? *s : 0x9e3779b9u;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  *s = x;
  return x;
}

static inline void fuzz_split_init(fuzz_split_t *sp, uint8_t seed, unsigned salt) {
  sp->max = seed;
  sp->state = 0x2545f491u ^ (seed * 0x01000193u) ^ (salt * 0x9e3779b9u);
}

/* Size of the next piece, 1..left (left > 0). */
static inline size_t fuzz_split_next(fuzz_split_t *sp, size_t left) {
  size_t k;
  if (sp->max == 0) return left;
  if (sp->max == 1) return 1;
  k = 1 + fuzz_rand(&sp->state) % sp->max;
  return k < left ? k : left;
}

#endif /* LLMUX_FUZZ_H */
