#include "base/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <strings.h>
#include <time.h>

#include "llmux/common.h"

int llmux_log_level = LLMUX_LOG_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void llmux_log(int level, const char *fmt, ...) {
  char ts[32];
  struct timespec now;
  struct tm tm;
  va_list ap;
  if (level & LLMUX_LOG_ALWAYS) level &= ~LLMUX_LOG_ALWAYS;
  else if (level > llmux_log_level) return;
  clock_gettime(CLOCK_REALTIME, &now);
  gmtime_r(&now.tv_sec, &tm);
  strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  fprintf(stderr, "%s.%03ldZ llmux %s: ", ts, now.tv_nsec / 1000000L,
          level_names[level < 0 ? 0 : level > 3 ? 3 : level]);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

int llmux_log_parse_level(const char *s, int *out) {
  int i;
  for (i = 0; i < 4; i++) {
    if (strcasecmp(s, level_names[i]) == 0) { *out = i; return 0; }
  }
  if (strcasecmp(s, "warning") == 0) { *out = LLMUX_LOG_WARN; return 0; }
  return LLMUX_EINVAL;
}
