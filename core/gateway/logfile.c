/* Batched log writes through libuv's thread pool. */
#include "gateway/logfile.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"

static void kick(llmux_logfile_t *lf);

static void maybe_closed(llmux_logfile_t *lf) {
  if (!lf->close_started || lf->writing || lf->opening || lf->handles > 0) return;
  llmux_buf_free(&lf->pending);
  llmux_buf_free(&lf->inflight);
  free(lf->path);
  lf->path = NULL;
  if (lf->close_cb) lf->close_cb(lf);
}

static void on_timer_closed(uv_handle_t *h) {
  llmux_logfile_t *lf = h->data;
  lf->handles--;
  maybe_closed(lf);
}

static void on_fd_closed(uv_fs_t *req) {
  llmux_logfile_t *lf = req->data;
  uv_fs_req_cleanup(req);
  lf->handles--;
  maybe_closed(lf);
}

static void finish_close(llmux_logfile_t *lf) {
  if (lf->timer_armed) uv_timer_stop(&lf->timer);
  uv_close((uv_handle_t *)&lf->timer, on_timer_closed);
  if (!lf->is_stdout && lf->fd >= 0) {
    lf->creq.data = lf;
    lf->handles++;
    if (uv_fs_close(lf->loop, &lf->creq, lf->fd, on_fd_closed) != 0) lf->handles--;
    lf->fd = -1;
  }
}

static void on_opened(uv_fs_t *req) {
  llmux_logfile_t *lf = req->data;
  int old = lf->fd;
  lf->opening = 0;
  if (req->result < 0) {
    lf->last_error = (int)req->result;
    llmux_warn("access log: cannot reopen %s: %s (keeping the old file)", lf->path,
               uv_strerror((int)req->result));
  } else {
    lf->fd = (int)req->result;
    if (old >= 0) {
      uv_fs_t close_req;
      uv_fs_close(NULL, &close_req, old, NULL); /* already written: a quick close */
      uv_fs_req_cleanup(&close_req);
    }
  }
  uv_fs_req_cleanup(req);
  kick(lf);
}

static void start_reopen(llmux_logfile_t *lf) {
  lf->reopen_wanted = 0;
  lf->opening = 1;
  lf->oreq.data = lf;
  if (uv_fs_open(lf->loop, &lf->oreq, lf->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
                 0640, on_opened) != 0)
    lf->opening = 0;
}

static void write_inflight(llmux_logfile_t *lf);

static void on_written(uv_fs_t *req) {
  llmux_logfile_t *lf = req->data;
  ssize_t n = req->result;
  uv_fs_req_cleanup(req);
  lf->writing = 0;
  if (n < 0) {
    lf->last_error = (int)n;
    llmux_warn("access log: write to %s failed: %s", lf->path, uv_strerror((int)n));
    lf->inflight.len = 0; /* dropped: a failing disk must not grow memory */
  } else {
    lf->written += (uint64_t)n;
    llmux_buf_consume(&lf->inflight, (size_t)n);
  }
  if (lf->inflight.len > 0) write_inflight(lf); /* a short write: the rest first */
  else kick(lf);
}

static void write_inflight(llmux_logfile_t *lf) {
  uv_buf_t b = uv_buf_init(lf->inflight.base, (unsigned)lf->inflight.len);
  lf->writing = 1;
  lf->wreq.data = lf;
  if (uv_fs_write(lf->loop, &lf->wreq, lf->fd, &b, 1, -1, on_written) != 0) {
    lf->writing = 0;
    lf->inflight.len = 0;
  }
}

/* Starts the next step: a reopen, a write of what is pending, or the end. */
static void kick(llmux_logfile_t *lf) {
  llmux_buf_t t;
  if (lf->writing || lf->opening) return;
  if (lf->reopen_wanted && !lf->closing) {
    start_reopen(lf);
    if (lf->opening) return;
  }
  if (lf->pending.len > 0) {
    t = lf->inflight; /* empty here: swap the buffers, no copy */
    lf->inflight = lf->pending;
    lf->pending = t;
    lf->pending.len = 0;
    write_inflight(lf);
    return;
  }
  if (lf->closing && !lf->close_started) {
    lf->close_started = 1;
    finish_close(lf);
    maybe_closed(lf);
  }
}

static void on_timer(uv_timer_t *t) {
  llmux_logfile_t *lf = t->data;
  lf->timer_armed = 0;
  kick(lf);
}

int llmux_logfile_open(llmux_logfile_t *lf, uv_loop_t *loop, const char *path,
                       size_t flush_bytes, uint64_t flush_ms, size_t max_bytes) {
  uv_fs_t req;
  int rc;
  memset(lf, 0, sizeof *lf);
  lf->loop = loop;
  lf->fd = -1;
  lf->flush_bytes = flush_bytes ? flush_bytes : 64 * 1024;
  lf->flush_ms = flush_ms ? flush_ms : 200;
  lf->max_bytes = max_bytes ? max_bytes : 16u << 20;
  lf->path = llmux_xstrdup(path);
  if (strcmp(path, "stdout") == 0) {
    lf->is_stdout = 1;
    lf->fd = 1;
  } else {
    rc = uv_fs_open(NULL, &req, path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640, NULL);
    uv_fs_req_cleanup(&req);
    if (rc < 0) {
      free(lf->path);
      lf->path = NULL;
      return rc;
    }
    lf->fd = rc;
  }
  uv_timer_init(loop, &lf->timer);
  lf->timer.data = lf;
  lf->handles = 1;
  return 0;
}

void llmux_logfile_append(llmux_logfile_t *lf, const void *data, size_t len) {
  if (lf->closing) return;
  if (lf->pending.len + lf->inflight.len + len > lf->max_bytes ||
      llmux_buf_append(&lf->pending, data, len) != 0) {
    lf->dropped++;
    return;
  }
  if (lf->pending.len >= lf->flush_bytes) {
    kick(lf);
  } else if (!lf->timer_armed && !lf->writing) {
    lf->timer_armed = 1;
    uv_timer_start(&lf->timer, on_timer, lf->flush_ms, 0);
  }
}

void llmux_logfile_reopen(llmux_logfile_t *lf) {
  if (lf->is_stdout || lf->closing) return;
  lf->reopen_wanted = 1;
  kick(lf);
}

void llmux_logfile_close(llmux_logfile_t *lf, llmux_logfile_close_cb cb) {
  lf->closing = 1;
  lf->close_cb = cb;
  lf->reopen_wanted = 0;
  kick(lf);
}
