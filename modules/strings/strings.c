// baton: reactor
/*
 * strings: the bytes ABI. The host calls alloc(n), writes n bytes into
 * memory and passes (ptr, len); results that are bytes come back as one i64
 * packed as (ptr << 32) | len, which the host reads and then dealloc()s.
 *   shout(ptr, len) -> the text with ASCII letters upper-cased
 *   stats(ptr, len) -> JSON {"length":N,"words":W} (bytes, whitespace-separated words)
 *   mean(a, b)      -> (a + b) / 2
 */
#include <stdint.h>
#include <stdlib.h>

__attribute__((export_name("alloc"))) void *wasm_alloc(uint32_t n) { return malloc(n ? n : 1); }
__attribute__((export_name("dealloc"))) void wasm_dealloc(void *p) { free(p); }

static uint64_t pack(const void *ptr, uint32_t len) {
  return ((uint64_t)(uintptr_t)ptr << 32) | len;
}

__attribute__((export_name("shout"))) uint64_t shout(const uint8_t *text, uint32_t len) {
  uint8_t *out = malloc(len ? len : 1);
  if (out == NULL) return 0;
  for (uint32_t i = 0; i < len; i++) {
    uint8_t c = text[i];
    out[i] = (c >= 'a' && c <= 'z') ? (uint8_t)(c - ('a' - 'A')) : c;
  }
  return pack(out, len);
}

static int is_space(uint8_t c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* Appends the decimal digits of v at out; returns the new end. */
static char *put_uint(char *out, uint32_t v) {
  char digits[10];
  int n = 0;
  do {
    digits[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0) *out++ = digits[--n];
  return out;
}

static char *put_str(char *out, const char *s) {
  while (*s) *out++ = *s++;
  return out;
}

__attribute__((export_name("stats"))) uint64_t stats(const uint8_t *text, uint32_t len) {
  uint32_t words = 0;
  int in_word = 0;
  for (uint32_t i = 0; i < len; i++) {
    if (is_space(text[i])) {
      in_word = 0;
    } else if (!in_word) {
      in_word = 1;
      words++;
    }
  }
  char *json = malloc(64);
  if (json == NULL) return 0;
  char *end = put_str(json, "{\"length\":");
  end = put_uint(end, len);
  end = put_str(end, ",\"words\":");
  end = put_uint(end, words);
  end = put_str(end, "}");
  return pack(json, (uint32_t)(end - json));
}

__attribute__((export_name("mean"))) double mean(double a, double b) { return (a + b) / 2.0; }
