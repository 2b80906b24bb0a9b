// baton: reactor
/*
 * textfile: functions that work on files in the call's working directory.
 *
 * The host preopens the per-call working directory as "." and calls
 * _initialize once per instance; files are opened by relative name.
 *   upper()  input.txt -> output.txt (ASCII upper-cased); returns its length
 *   prefix() prefix.txt (deployment data file) + input.txt -> prefixed.txt
 *   size()   byte size of input.txt
 * Every function returns -1 when a file cannot be read or written.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

/* Reads a whole file; returns NULL on error. *len gets its size. */
static unsigned char *read_file(const char *name, size_t *len) {
  FILE *f = fopen(name, "rb");
  if (f == NULL) return NULL;
  size_t cap = 4096, n = 0;
  unsigned char *buf = malloc(cap);
  while (buf != NULL) {
    n += fread(buf + n, 1, cap - n, f);
    if (n < cap) break;
    cap *= 2;
    unsigned char *bigger = realloc(buf, cap);
    if (bigger == NULL) free(buf);
    buf = bigger;
  }
  int failed = buf == NULL || ferror(f);
  fclose(f);
  if (failed) {
    free(buf);
    return NULL;
  }
  *len = n;
  return buf;
}

/* Writes the concatenation of two buffers; returns 0 or -1. */
static int write_file(const char *name, const unsigned char *a, size_t alen,
                      const unsigned char *b, size_t blen) {
  FILE *f = fopen(name, "wb");
  if (f == NULL) return -1;
  int ok = fwrite(a, 1, alen, f) == alen && fwrite(b, 1, blen, f) == blen;
  return (fclose(f) == 0 && ok) ? 0 : -1;
}

__attribute__((export_name("upper"))) int32_t upper(void) {
  size_t n;
  unsigned char *text = read_file("input.txt", &n);
  if (text == NULL) return -1;
  for (size_t i = 0; i < n; i++) {
    if (text[i] >= 'a' && text[i] <= 'z') text[i] -= 'a' - 'A';
  }
  int rc = write_file("output.txt", text, n, NULL, 0);
  free(text);
  return rc == 0 ? (int32_t)n : -1;
}

__attribute__((export_name("prefix"))) int32_t prefix(void) {
  size_t plen, ilen;
  unsigned char *pre = read_file("prefix.txt", &plen);
  if (pre == NULL) return -1;
  unsigned char *text = read_file("input.txt", &ilen);
  if (text == NULL) {
    free(pre);
    return -1;
  }
  int rc = write_file("prefixed.txt", pre, plen, text, ilen);
  free(pre);
  free(text);
  return rc == 0 ? (int32_t)(plen + ilen) : -1;
}

__attribute__((export_name("size"))) int32_t size(void) {
  struct stat st;
  if (stat("input.txt", &st) != 0) return -1;
  return (int32_t)st.st_size;
}
