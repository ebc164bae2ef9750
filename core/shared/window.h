/* Sliding windows on a clock the fleet shares, with per-slot counts that can
 * be set, added to and combined: the shape the Redis store needs to mirror
 * what Redis holds and to carry what it has not confirmed yet.
 *
 * The slots are those of route/ratelimit.h (60 per window: 1 s for the
 * minute, 24 min for the day). Slot k covers [k * w, (k + 1) * w) and is
 * counted until the whole of it is one window old, at (k + 1 + 60) * w. A
 * window keeps its newest slot `head` and the 60 before it; a slot older
 * than that reads as 0 and an add to it is dropped (it no longer counts).
 * Counts are signed so that a window can hold deltas (a release not yet
 * sent); sums of views clamp each slot at 0.
 *
 * Which window: LLMUX_WIN_MINUTE or LLMUX_WIN_DAY. Kind: 0 requests,
 * 1 tokens. Rate-limit dimension d uses window d % 2 and kind d / 2.
 *
 * The in-memory store (route/ratelimit.c) keeps its own copy of this ring on
 * its own clock; moving it onto this module is a later clean-up. */
#ifndef LLMUX_SHARED_WINDOW_H
#define LLMUX_SHARED_WINDOW_H

#include <stdint.h>

#define LLMUX_WIN_SLOTS 60
#define LLMUX_WIN_RING (LLMUX_WIN_SLOTS + 1)

enum { LLMUX_WIN_MINUTE = 0, LLMUX_WIN_DAY = 1 };

extern const uint64_t llmux_win_slot_ms[2];

typedef struct llmux_win_s {
  uint64_t head;                       /* the newest slot kept */
  int64_t count[2][LLMUX_WIN_RING];    /* [kind][slot % ring] */
} llmux_win_t;

/* The slot of `now_ms` in window `which`. */
static inline uint64_t llmux_win_slot(int which, uint64_t now_ms) {
  return now_ms / llmux_win_slot_ms[which];
}

/* The oldest slot still counted at `now_ms` (by a window whose head is
 * `head`: a clock that went back counts as of head). */
uint64_t llmux_win_first(int which, uint64_t head, uint64_t now_ms);

/* Moves head forward to `slot`, clearing the slots that leave. */
void llmux_win_advance(llmux_win_t *w, uint64_t slot);

/* Adds n to `slot` (advancing head if it is newer); dropped when the slot
 * is older than the ring. */
void llmux_win_add(llmux_win_t *w, int kind, uint64_t slot, int64_t n);
/* Sets `slot` to n (advancing head if it is newer); dropped when the slot
 * is older than the ring. */
void llmux_win_set(llmux_win_t *w, int kind, uint64_t slot, int64_t n);
/* The count of `slot`, 0 outside the ring. */
int64_t llmux_win_get(const llmux_win_t *w, int kind, uint64_t slot);
/* Sets every count to 0 and head to `slot`. */
void llmux_win_reset(llmux_win_t *w, uint64_t slot);

/* out = the slot-by-slot sum of the n windows (NULLs skipped), each slot
 * clamped at 0, with head the newest of their heads and `now_slot`. */
void llmux_win_combine(llmux_win_t *out, const llmux_win_t *const *ws, int n,
                       uint64_t now_slot);

/* On a combined window (no negative slot): what is counted at now, the
 * time until it next goes down (0 when nothing is), and the time until
 * `cost` fits under `limit` (0 if it does; a cost above the limit fits once
 * the window is empty). */
uint64_t llmux_win_sum(const llmux_win_t *w, int which, int kind, uint64_t now_ms);
uint64_t llmux_win_frees_in(const llmux_win_t *w, int which, int kind, uint64_t now_ms);
uint64_t llmux_win_wait(const llmux_win_t *w, int which, int kind, uint64_t limit,
                        uint64_t cost, uint64_t now_ms);

#endif /* LLMUX_SHARED_WINDOW_H */
