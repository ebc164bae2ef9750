#include "base/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "llmux/common.h"

int llmux_log_level = LLMUX_LOG_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

char llmux_log_tag[32];

/* One write per line, so that the lines of several processes sharing a
 * stderr (a master's workers) never mix; a line longer than the buffer is
 * cut and ends with "...". */
void llmux_log(int level, const char *fmt, ...) {
  char line[4096], ts[32];
  struct timespec now;
  struct tm tm;
  va_list ap;
  size_t n;
  int k;
  if (level & LLMUX_LOG_ALWAYS) level &= ~LLMUX_LOG_ALWAYS;
  else if (level > llmux_log_level) return;
  clock_gettime(CLOCK_REALTIME, &now);
  gmtime_r(&now.tv_sec, &tm);
  strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  k = snprintf(line, sizeof line, "%s.%03ldZ llmux%s%s %s: ", ts, now.tv_nsec / 1000000L,
               llmux_log_tag[0] ? " " : "", llmux_log_tag,
               level_names[level < 0 ? 0 : level > 3 ? 3 : level]);
  n = k > 0 ? (size_t)k : 0;
  va_start(ap, fmt);
  k = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
  va_end(ap);
  if (k > 0 && (size_t)k >= sizeof line - n - 1) {
    n = sizeof line - 5;
    memcpy(line + n, "...", 3);
    n += 3;
  } else if (k > 0) {
    n += (size_t)k;
  }
  line[n++] = '\n';
  fflush(stderr); /* whatever a caller printed with stdio goes first */
  while (n > 0) {
    ssize_t w = write(2, line, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    memmove(line, line + w, n - (size_t)w);
    n -= (size_t)w;
  }
}

int llmux_log_parse_level(const char *s, int *out) {
  int i;
  for (i = 0; i < 4; i++) {
    if (strcasecmp(s, level_names[i]) == 0) { *out = i; return 0; }
  }
  if (strcasecmp(s, "warning") == 0) { *out = LLMUX_LOG_WARN; return 0; }
  return LLMUX_EINVAL;
}
