/* Shared by the plugin tests: what a plugin logs through the host's log
 * service (which writes to stderr), captured around a few calls so a test
 * can say "logged once". Make no assertion while capturing: its message
 * would land in the capture. A sanitizer report while capturing lands
 * there too; the run then stops at that test with exit status 1 (run it
 * under gdb, or drop the capture, to read the report). */
#ifndef TEST_PLUGIN_SUPPORT_H
#define TEST_PLUGIN_SUPPORT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
  int saved;  /* the real stderr */
  FILE *file; /* where stderr goes meanwhile */
} log_capture_t;

static __attribute__((unused)) void log_capture_start(log_capture_t *c) {
  fflush(stderr);
  c->file = tmpfile();
  c->saved = dup(2);
  if (c->file == NULL || c->saved < 0 || dup2(fileno(c->file), 2) < 0) {
    fprintf(stderr, "log_capture_start: cannot redirect stderr\n");
    abort();
  }
}

/* Restores stderr; returns what was logged meanwhile (free it). */
static __attribute__((unused)) char *log_capture_end(log_capture_t *c) {
  long n;
  char *text;
  fflush(stderr);
  dup2(c->saved, 2);
  close(c->saved);
  n = ftell(c->file);
  text = calloc(1, (size_t)(n > 0 ? n : 0) + 1);
  rewind(c->file);
  if (text == NULL || (n > 0 && fread(text, 1, (size_t)n, c->file) != (size_t)n)) abort();
  fclose(c->file);
  return text;
}

/* How many times `needle` occurs in `text`. */
static __attribute__((unused)) size_t occurrences(const char *text, const char *needle) {
  size_t k = 0;
  const char *p = text;
  while ((p = strstr(p, needle)) != NULL) {
    k++;
    p += strlen(needle);
  }
  return k;
}

#endif
