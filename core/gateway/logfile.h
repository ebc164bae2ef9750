/* A log file written off the hot path: lines are appended to a buffer on
 * the loop and written in batches by libuv's thread pool (uv_fs_write), at
 * most one write in flight, when the buffer passes `flush_bytes` or every
 * `flush_ms`. So a request costs a memcpy, never a syscall.
 *
 * Lifecycle, in libuv's voice: open -> append* -> [reopen]* -> close(cb).
 * The memory is the caller's and may be freed once cb has run. "stdout"
 * writes to descriptor 1 (never closed, never reopened).
 *
 * Bounded: past `max_bytes` waiting (a disk that stalls), lines are dropped
 * and counted in `dropped`, never buffered without limit.
 *
 * Reopen (SIGUSR1, a reload) opens the path again after the writes already
 * queued went to the old descriptor, so a rotated file is released and the
 * next line lands in the new one. */
#ifndef LLMUX_GATEWAY_LOGFILE_H
#define LLMUX_GATEWAY_LOGFILE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base/util.h"

typedef struct llmux_logfile_s llmux_logfile_t;
typedef void (*llmux_logfile_close_cb)(llmux_logfile_t *lf);

struct llmux_logfile_s {
  void *data; /* public */
  /* read-only */
  uv_loop_t *loop;
  char *path;
  uint64_t written;   /* bytes handed to the kernel */
  uint64_t dropped;   /* lines dropped past max_bytes */
  int last_error;     /* last write/open error (libuv code), 0 if none */
  /* private */
  int fd;
  int is_stdout;
  uv_fs_t wreq, oreq, creq;
  uv_timer_t timer;
  llmux_buf_t pending;   /* appended, not yet written */
  llmux_buf_t inflight;  /* being written */
  size_t flush_bytes, max_bytes;
  uint64_t flush_ms;
  int writing, opening, reopen_wanted, closing, close_started, timer_armed, handles;
  llmux_logfile_close_cb close_cb;
};

/* Opens `path` for appending (created 0640), or "stdout". flush_bytes 0:
 * 64 KiB; flush_ms 0: 200 ms; max_bytes 0: 16 MiB. Blocks for the open
 * itself (start-up and reload only). 0 or a libuv error. */
int llmux_logfile_open(llmux_logfile_t *lf, uv_loop_t *loop, const char *path,
                       size_t flush_bytes, uint64_t flush_ms, size_t max_bytes);
/* Appends bytes (a whole line, '\n' included). */
void llmux_logfile_append(llmux_logfile_t *lf, const void *data, size_t len);
/* Reopens the same path once the writes in flight are done. */
void llmux_logfile_reopen(llmux_logfile_t *lf);
/* Writes what is pending, closes, then calls cb (may be NULL). */
void llmux_logfile_close(llmux_logfile_t *lf, llmux_logfile_close_cb cb);

#endif
