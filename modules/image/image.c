// baton: reactor
/*
 * image: grey-scaling and statistics for Netpbm images. It uses WASI files only
 * (no device host functions), so the orchestrator may place it on any device.
 *
 * Both functions parse untrusted bytes. The header they accept is the magic
 * ("P6" or "P5"), then width, height and maxval as decimal digits, each
 * preceded by at least one separator (a whitespace byte: space \t \n \v \f \r,
 * or a comment: '#' up to the next \n or \r), then exactly one whitespace byte,
 * then the raster. Width and height must be 1..16384, maxval exactly 255, the
 * raster exactly width * height * channels bytes (nothing after it), and the
 * file at most 32 MiB. Anything else is refused, never trusted.
 *
 *   grayscale()  image.ppm (P6) -> gray.pgm (P5: "P5\n<w> <h>\n255\n" + raster)
 *                at half size. Each pixel's luma is
 *                  L = (299 R + 587 G + 114 B + 500) / 1000
 *                and each output pixel the box average of a 2x2 block,
 *                  (L(2x,2y) + L(2x+1,2y) + L(2x,2y+1) + L(2x+1,2y+1) + 2) / 4
 *                (integer division throughout). An odd last row or column is
 *                dropped: the output is (width / 2) x (height / 2), so the input
 *                must be at least 2x2. Returns the output's pixel count; -1 and no
 *                gray.pgm for a missing or malformed image (the reason goes to
 *                stderr, which the supervisor keeps in the call's directory).
 *   summary()    gray.pgm (P5) -> JSON object
 *                  {"width":W,"height":H,"pixels":N,"min":m,"max":M,"mean":X.XX,
 *                   "histogram":[h0,h1,h2,h3],"dark":F.FFFF}
 *                mean = sum / N rounded half up to 2 decimals, computed exactly as
 *                (200 sum + N) / (2 N) hundredths; histogram bin k counts the values
 *                v with v / 64 == k (0-63, 64-127, 128-191, 192-255); dark = h0 / N,
 *                the fraction of pixels below 64, rounded half up to 4 decimals as
 *                (20000 h0 + N) / (2 N) ten-thousandths. A missing or malformed
 *                gray.pgm gives {"error":"gray.pgm: <reason>"} instead.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_FILE ((size_t)32 << 20)
#define MAX_SIDE 16384u
#define MAX_NUMBER 65535u /* Netpbm's largest maxval; bounds every header number */

__attribute__((export_name("alloc"))) void *wasm_alloc(uint32_t n) { return malloc(n ? n : 1); }
__attribute__((export_name("dealloc"))) void wasm_dealloc(void *p) { free(p); }

static uint64_t pack(const void *ptr, uint32_t len) {
  return ((uint64_t)(uintptr_t)ptr << 32) | len;
}

/* Reads all of `name` into a fresh buffer. Returns NULL and sets *why if the file is
 * missing, unreadable or larger than MAX_FILE; the buffer is never grown past 2 * MAX_FILE. */
static uint8_t *read_file(const char *name, size_t *len, const char **why) {
  FILE *f = fopen(name, "rb");
  if (f == NULL) {
    *why = "missing or unreadable";
    return NULL;
  }
  size_t cap = (size_t)1 << 16, n = 0;
  uint8_t *buf = malloc(cap);
  *why = NULL;
  while (buf != NULL) {
    n += fread(buf + n, 1, cap - n, f);
    if (n < cap) break; /* end of file, or a read error (checked below) */
    if (cap > MAX_FILE) break;
    uint8_t *bigger = realloc(buf, cap * 2);
    if (bigger == NULL) free(buf);
    buf = bigger;
    cap *= 2;
  }
  if (buf == NULL) {
    *why = "out of memory";
  } else if (ferror(f)) {
    *why = "read error";
  } else if (n > MAX_FILE) {
    *why = "larger than 32 MiB";
  }
  fclose(f);
  if (*why != NULL) {
    free(buf);
    return NULL;
  }
  *len = n;
  return buf;
}

static int is_space(uint8_t c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

typedef struct {
  const uint8_t *p;
  size_t n, i;
} Cursor;

/* Skips whitespace and comments; 0 if it skipped at least one byte (header numbers must
 * be separated), -1 otherwise. */
static int separators(Cursor *c) {
  size_t start = c->i;
  while (c->i < c->n) {
    uint8_t ch = c->p[c->i];
    if (ch == '#') {
      while (c->i < c->n && c->p[c->i] != '\n' && c->p[c->i] != '\r') c->i++;
    } else if (is_space(ch)) {
      c->i++;
    } else {
      break;
    }
  }
  return c->i > start ? 0 : -1;
}

/* Reads a decimal number of at least one digit and at most MAX_NUMBER; 0 or -1. */
static int number(Cursor *c, uint32_t *out) {
  size_t start = c->i;
  uint32_t v = 0;
  while (c->i < c->n && c->p[c->i] >= '0' && c->p[c->i] <= '9') {
    v = v * 10 + (uint32_t)(c->p[c->i] - '0'); /* v <= MAX_NUMBER before: cannot overflow */
    if (v > MAX_NUMBER) return -1;
    c->i++;
  }
  if (c->i == start) return -1;
  *out = v;
  return 0;
}

typedef struct {
  uint32_t width, height;
  const uint8_t *raster; /* width * height * channels bytes inside the parsed buffer */
} Image;

/* Parses a binary Netpbm image of magic "P<kind>" with `channels` bytes per pixel.
 * Returns NULL on success, else why the bytes are refused. */
static const char *parse(const uint8_t *p, size_t n, char kind, uint32_t channels, Image *img) {
  if (n < 2 || p[0] != 'P' || p[1] != kind) {
    return kind == '6' ? "not a binary PPM (P6)" : "not a binary PGM (P5)";
  }
  Cursor c = {p, n, 2};
  uint32_t maxval;
  if (separators(&c) != 0 || number(&c, &img->width) != 0) return "bad width";
  if (separators(&c) != 0 || number(&c, &img->height) != 0) return "bad height";
  if (separators(&c) != 0 || number(&c, &maxval) != 0) return "bad maxval";
  if (img->width < 1 || img->width > MAX_SIDE || img->height < 1 || img->height > MAX_SIDE) {
    return "width or height out of range";
  }
  if (maxval != 255) return "maxval is not 255";
  if (c.i >= n || !is_space(p[c.i])) return "no whitespace byte before the raster";
  c.i++;
  uint64_t size = (uint64_t)img->width * img->height * channels;
  uint64_t left = (uint64_t)(n - c.i);
  if (left < size) return "raster too short";
  if (left > size) return "bytes after the raster";
  img->raster = p + c.i;
  return NULL;
}

static int32_t refuse(const char *file, const char *why) {
  fprintf(stderr, "grayscale: %s: %s\n", file, why);
  return -1;
}

static uint32_t luma(const uint8_t *rgb) {
  return (299u * rgb[0] + 587u * rgb[1] + 114u * rgb[2] + 500u) / 1000u;
}

/* Writes `header` then `body` to `name`; removes a partial file on failure. 0 or -1. */
static int write_file(const char *name, const char *header, size_t hlen, const uint8_t *body,
                      size_t blen) {
  FILE *f = fopen(name, "wb");
  if (f == NULL) return -1;
  int ok = fwrite(header, 1, hlen, f) == hlen && fwrite(body, 1, blen, f) == blen;
  ok = fclose(f) == 0 && ok;
  if (!ok) remove(name); /* a truncated image must not reach the next step */
  return ok ? 0 : -1;
}

__attribute__((export_name("grayscale"))) int32_t grayscale(void) {
  size_t n;
  const char *why;
  uint8_t *data = read_file("image.ppm", &n, &why);
  if (data == NULL) return refuse("image.ppm", why);
  Image img;
  why = parse(data, n, '6', 3, &img);
  if (why == NULL && (img.width < 2 || img.height < 2)) why = "smaller than 2x2";
  if (why != NULL) {
    free(data);
    return refuse("image.ppm", why);
  }
  uint32_t ow = img.width / 2, oh = img.height / 2;
  size_t pixels = (size_t)ow * oh; /* <= 8192 * 8192: fits an int32_t */
  uint8_t *out = malloc(pixels);
  if (out == NULL) {
    free(data);
    return refuse("gray.pgm", "out of memory");
  }
  size_t stride = (size_t)img.width * 3;
  for (uint32_t y = 0; y < oh; y++) {
    const uint8_t *top = img.raster + (size_t)(2 * y) * stride;
    const uint8_t *bottom = top + stride;
    for (uint32_t x = 0; x < ow; x++) {
      size_t at = (size_t)(2 * x) * 3;
      uint32_t sum = luma(top + at) + luma(top + at + 3) + luma(bottom + at) +
                     luma(bottom + at + 3);
      out[(size_t)y * ow + x] = (uint8_t)((sum + 2) / 4);
    }
  }
  free(data);
  char header[32];
  int hlen = snprintf(header, sizeof header, "P5\n%" PRIu32 " %" PRIu32 "\n255\n", ow, oh);
  int rc = write_file("gray.pgm", header, (size_t)hlen, out, pixels);
  free(out);
  if (rc != 0) return refuse("gray.pgm", "cannot write the file");
  return (int32_t)pixels;
}

/* `file` and `why` are this module's own short literals: the object always fits 128 bytes. */
static uint64_t json_error(const char *file, const char *why) {
  char *json = malloc(128);
  if (json == NULL) return 0;
  int len = snprintf(json, 128, "{\"error\":\"%s: %s\"}", file, why);
  return pack(json, (uint32_t)len);
}

__attribute__((export_name("summary"))) uint64_t summary(void) {
  size_t n;
  const char *why;
  uint8_t *data = read_file("gray.pgm", &n, &why);
  if (data == NULL) return json_error("gray.pgm", why);
  Image img;
  why = parse(data, n, '5', 1, &img);
  if (why != NULL) {
    free(data);
    return json_error("gray.pgm", why);
  }
  uint64_t count = (uint64_t)img.width * img.height; /* >= 1 */
  uint64_t sum = 0, histogram[4] = {0, 0, 0, 0};
  uint32_t lo = 255, hi = 0;
  for (uint64_t i = 0; i < count; i++) {
    uint32_t v = img.raster[i];
    sum += v;
    histogram[v / 64]++;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  free(data);
  /* Exact integer rounding: no floating point, so any host can reproduce the numbers. */
  uint64_t mean100 = (200 * sum + count) / (2 * count);
  uint64_t dark10000 = (20000 * histogram[0] + count) / (2 * count);
  char *json = malloc(320);
  if (json == NULL) return 0;
  int len = snprintf(json, 320,
                     "{\"width\":%" PRIu32 ",\"height\":%" PRIu32 ",\"pixels\":%" PRIu64
                     ",\"min\":%" PRIu32 ",\"max\":%" PRIu32 ",\"mean\":%" PRIu64 ".%02" PRIu64
                     ",\"histogram\":[%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64
                     "],\"dark\":%" PRIu64 ".%04" PRIu64 "}",
                     img.width, img.height, count, lo, hi, mean100 / 100, mean100 % 100,
                     histogram[0], histogram[1], histogram[2], histogram[3], dark10000 / 10000,
                     dark10000 % 10000);
  return pack(json, (uint32_t)len);
}
