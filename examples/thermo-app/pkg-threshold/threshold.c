// baton: reactor
/*
 * threshold: is a Fahrenheit reading above the limit? For the thermo example app.
 *
 *   check(f) = 1 if f > limit, 0 otherwise, and -1 if limit.txt is missing or is not
 *   one decimal integer (optional sign, surrounding whitespace allowed, at most 64 bytes).
 *
 * limit.txt is a deployment-stage mount: shipped in the app image, placed next to the module
 * on the device, and read at every call, so changing it needs no rebuild. A WASI reactor:
 * the host calls _initialize once, then check() with the call directory preopened as ".".
 */
#include <stdint.h>
#include <stdio.h>

#define MAX_LIMIT_FILE 64

/* Parses "[ws][+-]digits[ws]" into *out; returns 0, or -1 if the text is anything else. */
static int parse_limit(const char *p, size_t n, int64_t *out) {
  size_t i = 0;
  while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n')) i++;
  int negative = 0;
  if (i < n && (p[i] == '-' || p[i] == '+')) negative = p[i++] == '-';
  size_t digits = 0;
  int64_t value = 0;
  for (; i < n && p[i] >= '0' && p[i] <= '9'; i++, digits++) {
    if (digits == 18) return -1; /* keep well inside int64_t */
    value = value * 10 + (p[i] - '0');
  }
  while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n')) i++;
  if (digits == 0 || i != n) return -1;
  *out = negative ? -value : value;
  return 0;
}

__attribute__((export_name("check"))) int64_t check(int64_t fahrenheit) {
  char text[MAX_LIMIT_FILE + 1];
  FILE *f = fopen("limit.txt", "rb");
  if (f == NULL) return -1;
  size_t n = fread(text, 1, sizeof text, f);
  int failed = ferror(f);
  fclose(f);
  int64_t limit;
  if (failed || n > MAX_LIMIT_FILE || parse_limit(text, n, &limit) != 0) return -1;
  return fahrenheit > limit ? 1 : 0;
}
