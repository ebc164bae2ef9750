/* The inbound formats (core/gateway/inbound.h) on arbitrary bytes: a
 * client's body in Anthropic's Messages or OpenAI's Responses shape, and
 * the chat answers and streams a provider could send back.
 *
 * Control bytes: [0] the format (even: Messages, odd: Responses), [1] what
 * is fed (0 the client's body, 1 a whole chat answer, 2 a chat stream), [2]
 * the split seed for streams (fuzz.h). The rest is the input.
 *
 * Properties, for every input:
 *  - a converted request is a JSON object (jansson parses it) with a
 *    "model" string and a "messages" array, and a refusal says why;
 *  - a converted answer, or every event of a converted stream, is valid
 *    UTF-8, whatever the provider sent;
 *  - an Anthropic stream gives the same bytes whether fed whole or cut
 *    into pieces (the split only decides when bytes arrive, never what
 *    comes out; Responses events carry created_at, so only UTF-8 there);
 *  - the native usage scanner never reports a count outside 0..10^9;
 *  - nothing leaks (ASan/LSan). */
#include <jansson.h>
#include <stdint.h>
#include <string.h>

#include "base/util.h"
#include "fuzz.h"
#include "gateway/inbound.h"

extern const llmux_inbound_t llmux_inbound_responses;

/* Valid UTF-8 (RFC 3629: no overlongs, no surrogates, at most U+10FFFF). */
static int utf8_ok(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i], need, min;
    uint32_t cp;
    if (c < 0x80) { i++; continue; }
    if ((c & 0xe0) == 0xc0) { need = 1; cp = c & 0x1f; min = 0x80; }
    else if ((c & 0xf0) == 0xe0) { need = 2; cp = c & 0x0f; min = 0x800; }
    else if ((c & 0xf8) == 0xf0) { need = 3; cp = c & 0x07; min = 0x10000; }
    else return 0;
    if (i + need >= n) return 0; /* cut short */
    for (unsigned k = 1; k <= need; k++) {
      if ((s[i + k] & 0xc0) != 0x80) return 0;
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    i += need + 1;
  }
  return 1;
}

static void check_request(const llmux_inbound_t *f, const char *body, size_t len) {
  llmux_buf_t chat = {0};
  llmux_inbound_err_t err;
  void *state = NULL;
  int rc;
  memset(&err, 0, sizeof err);
  rc = f->request(body, len, 0, &chat, &state, &err);
  if (rc == 0) {
    json_error_t je;
    json_t *j = json_loadb(chat.base, chat.len, 0, &je);
    FUZZ_CHECK(j != NULL && json_is_object(j), "converted request is not a JSON object: %.*s",
               (int)(chat.len > 200 ? 200 : chat.len), chat.base ? chat.base : "");
    FUZZ_CHECK(json_is_string(json_object_get(j, "model")), "no model in the chat body");
    FUZZ_CHECK(json_is_array(json_object_get(j, "messages")), "no messages in the chat body");
    json_decref(j);
  } else if (rc == LLMUX_EINVAL) {
    FUZZ_CHECK(err.message[0] != '\0', "a refusal without a reason");
    FUZZ_CHECK(utf8_ok((const unsigned char *)err.message, strlen(err.message)),
               "the refusal is not UTF-8");
  }
  f->state_free(state);
  llmux_buf_free(&chat);
}

/* A state as a plain request makes it, for the answer paths. */
static void *new_state(const llmux_inbound_t *f) {
  static const char anth[] =
      "{\"model\":\"m\",\"max_tokens\":64,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
      "\"tools\":[{\"name\":\"t\",\"input_schema\":{\"type\":\"object\"}}]}";
  static const char resp[] =
      "{\"model\":\"m\",\"input\":\"hi\",\"tools\":[{\"type\":\"function\",\"name\":\"t\","
      "\"parameters\":{\"type\":\"object\"}}]}";
  const char *b = f == &llmux_inbound_anthropic ? anth : resp;
  llmux_buf_t chat = {0};
  llmux_inbound_err_t err;
  void *state = NULL;
  int rc = f->request(b, strlen(b), 0, &chat, &state, &err);
  FUZZ_CHECK(rc == 0, "the fixed request was refused: %s", err.message);
  llmux_buf_free(&chat);
  return state;
}

static void check_answer(const llmux_inbound_t *f, const char *data, size_t len) {
  llmux_inbound_ctx_t ctx = {"req_fuzz", 12};
  llmux_buf_t out = {0};
  void *state = new_state(f);
  if (f->answer(state, &ctx, data, len, &out) == 0)
    FUZZ_CHECK(utf8_ok((const unsigned char *)out.base, out.len), "the answer is not UTF-8");
  f->state_free(state);
  llmux_buf_free(&out);
  if (f->native_usage != NULL) {
    int64_t in = -2, outn = -2;
    f->native_usage(data, len, &in, &outn);
    FUZZ_CHECK(in == -2 || (in >= -1 && in <= LLMUX_INBOUND_USAGE_MAX), "input count %lld",
               (long long)in);
    FUZZ_CHECK(outn == -2 || (outn >= -1 && outn <= LLMUX_INBOUND_USAGE_MAX),
               "output count %lld", (long long)outn);
  }
}

static void stream(const llmux_inbound_t *f, const char *data, size_t len, uint8_t seed,
                   llmux_buf_t *out) {
  llmux_inbound_ctx_t ctx = {"req_fuzz", 12};
  fuzz_split_t sp;
  void *state = new_state(f);
  size_t off = 0;
  fuzz_split_init(&sp, seed, 7);
  while (off < len) {
    size_t k = fuzz_split_next(&sp, len - off);
    if (f->stream_feed(state, &ctx, data + off, k, out) != 0) break;
    off += k;
  }
  f->stream_end(state, &ctx, out);
  f->state_free(state);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_in_t in = {data, size};
  const llmux_inbound_t *f = fuzz_byte(&in) & 1 ? &llmux_inbound_responses
                                                : &llmux_inbound_anthropic;
  uint8_t mode = fuzz_byte(&in) % 3, seed = fuzz_byte(&in);
  const char *rest = (const char *)in.p;
  if (mode == 0) {
    check_request(f, rest, in.n);
  } else if (mode == 1) {
    check_answer(f, rest, in.n);
  } else {
    llmux_buf_t whole = {0}, cut = {0};
    stream(f, rest, in.n, 0, &whole);
    stream(f, rest, in.n, seed, &cut);
    FUZZ_CHECK(utf8_ok((const unsigned char *)whole.base, whole.len), "the stream is not UTF-8");
    FUZZ_CHECK(utf8_ok((const unsigned char *)cut.base, cut.len), "the cut stream is not UTF-8");
    /* Anthropic's events carry nothing time-dependent: byte for byte. */
    if (f == &llmux_inbound_anthropic)
      FUZZ_CHECK(whole.len == cut.len &&
                     (whole.len == 0 || memcmp(whole.base, cut.base, whole.len) == 0),
                 "cutting the stream changed it (%zu vs %zu bytes)", whole.len, cut.len);
    llmux_buf_free(&whole);
    llmux_buf_free(&cut);
  }
  return 0;
}
