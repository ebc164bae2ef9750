/* A validating scan of a JSON request body that records where the values of
 * chosen top-level keys are, without building a DOM or allocating.
 *
 * The proxy needs only a few facts about a request (model, stream, whether
 * it has tools or images) and must pass the body on untouched; a DOM parse
 * and re-serialisation would cost more than the whole hop. */
#ifndef LLMUX_JSON_SCAN_H
#define LLMUX_JSON_SCAN_H

#include <stddef.h>
#include <stdint.h>

#include "llmux/common.h"

typedef enum {
  LLMUX_JSON_NONE = 0, /* key absent */
  LLMUX_JSON_OBJECT,
  LLMUX_JSON_ARRAY,
  LLMUX_JSON_STRING,
  LLMUX_JSON_NUMBER,
  LLMUX_JSON_TRUE,
  LLMUX_JSON_FALSE,
  LLMUX_JSON_NULL
} llmux_json_type_t;

typedef struct llmux_json_field_s {
  const char *key;        /* in: the top-level key to find (under 64 bytes) */
  llmux_json_type_t type; /* out */
  llmux_str_t value;      /* out: the value's bytes (strings keep their quotes) */
  unsigned count;         /* out: how often the key occurs at the top level */
  /* out, what a token estimate reads of the value: the bytes of its strings
   * (not keys; as written, escapes included) and the objects directly in it */
  uint64_t text_bytes;
  uint64_t objects;
} llmux_json_field_t;

/* Scans body[0..len): it must be one JSON object (surrounding white space
 * allowed) and valid JSON throughout, nested no deeper than 64. Fills the
 * fields whose keys appear at the top level. Keys are compared as the text
 * they spell, after unescaping ("m\u006fdel" is "model"), as the provider's
 * parser will read them.
 *
 * A key asked for that occurs twice is an error ("duplicate key"): parsers
 * disagree on which occurrence wins, and what the gateway checks must be
 * what the provider gets. Keys not asked for may repeat.
 *
 * Returns 0, or LLMUX_EINVAL with *err_off set to the byte offset of the
 * first error and *err_msg to a short description. On a duplicate the
 * field's count is 2 or more (llmux_json_duplicate finds it); on invalid
 * JSON every field reads as absent. */
int llmux_json_scan(const char *body, size_t len, llmux_json_field_t *fields,
                    size_t nfields, size_t *err_off, const char **err_msg);

/* The same, also telling whether an object key spelled `probe` (after
 * unescaping, like the fields) occurs at any depth (e.g. "image_url" inside
 * messages), at no extra pass. */
int llmux_json_scan_probe(const char *body, size_t len, llmux_json_field_t *fields,
                          size_t nfields, const char *probe, int *probe_hit, size_t *err_off,
                          const char **err_msg);

/* After a scan: the first field whose key occurred more than once, or NULL. */
const llmux_json_field_t *llmux_json_duplicate(const llmux_json_field_t *fields,
                                               size_t nfields);

/* Decodes a JSON string value (quotes included) into out (NUL-terminated,
 * at most cap-1 bytes): 0, or LLMUX_ETOOLARGE / LLMUX_EINVAL (a \u0000,
 * which a C string cannot hold). Handles \uXXXX escapes including surrogate
 * pairs; a lone surrogate becomes U+FFFD, so the result is valid UTF-8
 * whenever the value was valid JSON. */
int llmux_json_unquote(llmux_str_t value, char *out, size_t cap);

#endif
