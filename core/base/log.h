/* Logging to stderr. Never log secrets: keys and Authorization headers. */
#ifndef LLMUX_LOG_H
#define LLMUX_LOG_H

enum {
  LLMUX_LOG_ERROR = 0,
  LLMUX_LOG_WARN = 1,
  LLMUX_LOG_INFO = 2,
  LLMUX_LOG_DEBUG = 3
};

/* Or'ed into a level: print whatever the configured level (start-up and
 * shutdown lines that operators and scripts wait for). */
#define LLMUX_LOG_ALWAYS 0x100

extern int llmux_log_level;
/* Said after "llmux" on every line when set ("worker 2"); empty: nothing. */
extern char llmux_log_tag[32];

void llmux_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "error", "warn", "info", "debug" -> level; LLMUX_EINVAL if unknown. */
int llmux_log_parse_level(const char *s, int *out);

#define LLMUX_LOG_ENABLED(lvl) ((lvl) <= llmux_log_level)
#define llmux_error(...) llmux_log(LLMUX_LOG_ERROR, __VA_ARGS__)
#define llmux_warn(...) llmux_log(LLMUX_LOG_WARN, __VA_ARGS__)
#define llmux_info(...) \
  do { if (LLMUX_LOG_ENABLED(LLMUX_LOG_INFO)) llmux_log(LLMUX_LOG_INFO, __VA_ARGS__); } while (0)
#define llmux_debug(...) \
  do { if (LLMUX_LOG_ENABLED(LLMUX_LOG_DEBUG)) llmux_log(LLMUX_LOG_DEBUG, __VA_ARGS__); } while (0)

#endif
