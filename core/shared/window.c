/* Sliding windows on the shared clock. See window.h. */
#include "shared/window.h"

#include <string.h>

const uint64_t llmux_win_slot_ms[2] = {1000u, 1440000u}; /* 60 s and 24 h in 60 */

#define RING LLMUX_WIN_RING

static int in_ring(uint64_t head, uint64_t slot) {
  return slot <= head && (head < RING || slot > head - RING);
}

uint64_t llmux_win_first(int which, uint64_t head, uint64_t now_ms) {
  uint64_t idx = llmux_win_slot(which, now_ms);
  if (idx < head) idx = head;
  return idx >= LLMUX_WIN_SLOTS ? idx - LLMUX_WIN_SLOTS : 0;
}

void llmux_win_advance(llmux_win_t *w, uint64_t slot) {
  uint64_t k;
  if (slot <= w->head) return;
  if (slot - w->head >= RING) {
    memset(w->count, 0, sizeof(w->count));
  } else {
    for (k = w->head + 1; k <= slot; k++) w->count[0][k % RING] = w->count[1][k % RING] = 0;
  }
  w->head = slot;
}

void llmux_win_add(llmux_win_t *w, int kind, uint64_t slot, int64_t n) {
  llmux_win_advance(w, slot);
  if (in_ring(w->head, slot)) w->count[kind][slot % RING] += n;
}

void llmux_win_set(llmux_win_t *w, int kind, uint64_t slot, int64_t n) {
  llmux_win_advance(w, slot);
  if (in_ring(w->head, slot)) w->count[kind][slot % RING] = n;
}

int64_t llmux_win_get(const llmux_win_t *w, int kind, uint64_t slot) {
  return in_ring(w->head, slot) ? w->count[kind][slot % RING] : 0;
}

void llmux_win_reset(llmux_win_t *w, uint64_t slot) {
  memset(w->count, 0, sizeof(w->count));
  w->head = slot;
}

void llmux_win_combine(llmux_win_t *out, const llmux_win_t *const *ws, int n,
                       uint64_t now_slot) {
  uint64_t head = now_slot, k;
  int i, kind;
  for (i = 0; i < n; i++)
    if (ws[i] && ws[i]->head > head) head = ws[i]->head;
  llmux_win_reset(out, head);
  for (k = head >= RING ? head - RING + 1 : 0; k <= head; k++) {
    for (kind = 0; kind < 2; kind++) {
      int64_t v = 0;
      for (i = 0; i < n; i++)
        if (ws[i]) v += llmux_win_get(ws[i], kind, k);
      out->count[kind][k % RING] = v > 0 ? v : 0;
    }
  }
}

uint64_t llmux_win_sum(const llmux_win_t *w, int which, int kind, uint64_t now_ms) {
  uint64_t k, sum = 0;
  for (k = llmux_win_first(which, w->head, now_ms); k <= w->head; k++)
    sum += (uint64_t)llmux_win_get(w, kind, k);
  return sum;
}

uint64_t llmux_win_frees_in(const llmux_win_t *w, int which, int kind, uint64_t now_ms) {
  uint64_t k, at;
  for (k = llmux_win_first(which, w->head, now_ms); k <= w->head; k++) {
    if (llmux_win_get(w, kind, k) == 0) continue;
    at = (k + 1 + LLMUX_WIN_SLOTS) * llmux_win_slot_ms[which];
    return at > now_ms ? at - now_ms : 0;
  }
  return 0;
}

uint64_t llmux_win_wait(const llmux_win_t *w, int which, int kind, uint64_t limit,
                        uint64_t cost, uint64_t now_ms) {
  uint64_t used = llmux_win_sum(w, which, kind, now_ms), k, freed = 0, at;
  if (cost > limit) cost = limit;
  if (used + cost <= limit) return 0;
  for (k = llmux_win_first(which, w->head, now_ms); k <= w->head; k++) {
    freed += (uint64_t)llmux_win_get(w, kind, k);
    if (used - freed + cost <= limit) break;
  }
  at = (k + 1 + LLMUX_WIN_SLOTS) * llmux_win_slot_ms[which];
  return at > now_ms ? at - now_ms : 0;
}
