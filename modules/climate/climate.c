// baton: reactor
/*
 * climate: smoothing and alerting over temperature/humidity readings. It uses
 * WASI files only (no device host functions), so it may run on any device.
 *
 * Readings are handled as integer hundredths (fixed point), so every result is
 * exact and any host can reproduce it. A decimal is "[-]D[.F]": 1 to 6 integer
 * digits and, after a '.', 1 or 2 decimals. Every division rounds half away
 * from zero. Inputs are untrusted: each byte read is bounds-checked and
 * anything malformed is refused.
 *
 *   rolling()  reads the execution mount readings.csv as sensors.sample writes
 *              it: the header line "index,elapsed_ms,temperature,humidity", then
 *              1..10000 lines "<index>,<elapsed_ms>,<temperature>,<humidity>"
 *              (index counting 0, 1, 2, ...; elapsed_ms 1 to 10 digits; the two
 *              readings decimals); lines end in "\n" or "\r\n", the last one may
 *              end at the end of the file; at most 1 MiB. With N readings and a
 *              window W = min(5, N), the rolling mean at reading i (W-1 <= i < N)
 *              is the sum of readings i-W+1 .. i divided by W, rounded to
 *              hundredths. Returns the object
 *                {"samples":N,"window":W,"temperature":T,"humidity":H,
 *                 "temperature_min":..,"temperature_max":..,
 *                 "humidity_min":..,"humidity_max":..}
 *              where T and H are the last rolling means (named like alert's
 *              parameters, so a chain hands them on by name) and the min/max are
 *              the extremes of the rolling means, all with two decimals.
 *   alert(temperature, humidity)
 *              rounds each value to hundredths (llround(x * 100)) and compares
 *              it with its inclusive band in the deployment data file
 *              thresholds.txt: lines "<key> <min> <max>" (fields separated by
 *              spaces or tabs; key "temperature" or "humidity", each exactly
 *              once; min <= max, both decimals); blank lines and lines whose
 *              first non-blank byte is '#' are ignored; at most 64 KiB. Returns
 *                {"alert":A,"reasons":[...],"temperature":T,"humidity":H,
 *                 "limits":{"temperature":[min,max],"humidity":[min,max]}}
 *              with one reason per value outside its band, temperature first,
 *              "<key> <value> below <min>" or "<key> <value> above <max>" (values
 *              with two decimals), and A true iff there is a reason.
 * Both return {"error":"<file>: <reason>"} instead when a file is missing or
 * malformed, or a value is not a finite number within +-1e9.
 */
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW 5
#define MAX_READINGS 10000
#define MAX_CSV ((size_t)1 << 20)
#define MAX_THRESHOLDS ((size_t)64 << 10)
#define MAX_INT_DIGITS 6
#define MAX_VALUE 1e9

__attribute__((export_name("alloc"))) void *wasm_alloc(uint32_t n) { return malloc(n ? n : 1); }
__attribute__((export_name("dealloc"))) void wasm_dealloc(void *p) { free(p); }

static uint64_t pack(const void *ptr, uint32_t len) {
  return ((uint64_t)(uintptr_t)ptr << 32) | len;
}

/* Reads all of `name` (at most `limit` bytes) into a fresh buffer. Returns NULL and sets
 * *why if it is missing, unreadable or too large. */
static uint8_t *read_file(const char *name, size_t limit, size_t *len, const char **why) {
  FILE *f = fopen(name, "rb");
  if (f == NULL) {
    *why = "missing or unreadable";
    return NULL;
  }
  /* One byte more than the limit tells a file of exactly `limit` bytes from a larger one. */
  uint8_t *buf = malloc(limit + 1);
  size_t n = buf == NULL ? 0 : fread(buf, 1, limit + 1, f);
  *why = buf == NULL ? "out of memory" : ferror(f) ? "read error" : n > limit ? "too large" : NULL;
  fclose(f);
  if (*why != NULL) {
    free(buf);
    return NULL;
  }
  *len = n;
  return buf;
}

typedef struct {
  const uint8_t *p;
  size_t n, i;
} Cursor;

static int at(const Cursor *c, uint8_t ch) { return c->i < c->n && c->p[c->i] == ch; }

static int digit(const Cursor *c) { return c->i < c->n && c->p[c->i] >= '0' && c->p[c->i] <= '9'; }

/* Parses "[-]D[.F]" (1..MAX_INT_DIGITS digits, 1 or 2 decimals) into hundredths. 0 or -1. */
static int decimal(Cursor *c, int64_t *out) {
  int negative = at(c, '-');
  if (negative) c->i++;
  int64_t v = 0;
  int digits = 0;
  while (digit(c)) {
    if (++digits > MAX_INT_DIGITS) return -1;
    v = v * 10 + (c->p[c->i++] - '0');
  }
  if (digits == 0) return -1;
  v *= 100;
  if (at(c, '.')) {
    c->i++;
    int64_t scale = 10;
    int decimals = 0;
    while (digit(c)) {
      if (++decimals > 2) return -1;
      v += scale * (c->p[c->i++] - '0');
      scale /= 10;
    }
    if (decimals == 0) return -1;
  }
  *out = negative ? -v : v;
  return 0;
}

/* Parses 1..10 decimal digits. 0 or -1. */
static int whole(Cursor *c, int64_t *out) {
  int64_t v = 0;
  int digits = 0;
  while (digit(c)) {
    if (++digits > 10) return -1;
    v = v * 10 + (c->p[c->i++] - '0');
  }
  *out = v;
  return digits == 0 ? -1 : 0;
}

/* Consumes "\n", "\r\n" or the end of the input. 0 or -1. */
static int line_end(Cursor *c) {
  if (c->i == c->n) return 0;
  if (at(c, '\r')) c->i++;
  if (!at(c, '\n')) return -1;
  c->i++;
  return 0;
}

/* sum / d rounded half away from zero; d > 0. */
static int64_t round_div(int64_t sum, int64_t d) {
  return sum >= 0 ? (2 * sum + d) / (2 * d) : -((-2 * sum + d) / (2 * d));
}

/* Writes hundredths as a decimal with two places ("-0.05", "21.30") into out. */
static int fixed(char *out, size_t size, int64_t v) {
  uint64_t a = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
  return snprintf(out, size, "%s%" PRIu64 ".%02" PRIu64, v < 0 ? "-" : "", a / 100, a % 100);
}

/* `file` and `why` are this module's own short literals: the object always fits 160 bytes. */
static uint64_t json_error(const char *file, const char *why, long line) {
  char *json = malloc(160);
  if (json == NULL) return 0;
  int len = line > 0 ? snprintf(json, 160, "{\"error\":\"%s: line %ld: %s\"}", file, line, why)
                     : snprintf(json, 160, "{\"error\":\"%s: %s\"}", file, why);
  return pack(json, (uint32_t)len);
}

static const char HEADER[] = "index,elapsed_ms,temperature,humidity";

/* Parses readings.csv into t[] and h[] (room for MAX_READINGS each). Returns NULL and sets
 * *count, or the reason for refusing the file and the line (1-based) in *count. */
static const char *parse_csv(const uint8_t *p, size_t n, int64_t *t, int64_t *h, long *count) {
  Cursor c = {p, n, 0};
  size_t header = sizeof HEADER - 1;
  *count = 1;
  if (n < header || memcmp(p, HEADER, header) != 0) return "not the readings header";
  c.i = header;
  if (line_end(&c) != 0) return "not the readings header";
  long rows = 0;
  while (c.i < c.n) {
    int64_t index, elapsed;
    *count = rows + 2;
    if (rows == MAX_READINGS) return "more than 10000 readings";
    if (whole(&c, &index) != 0 || index != rows) return "bad index";
    if (!at(&c, ',')) return "expected ','";
    c.i++;
    if (whole(&c, &elapsed) != 0) return "bad elapsed_ms";
    if (!at(&c, ',')) return "expected ','";
    c.i++;
    if (decimal(&c, &t[rows]) != 0) return "bad temperature";
    if (!at(&c, ',')) return "expected ','";
    c.i++;
    if (decimal(&c, &h[rows]) != 0) return "bad humidity";
    if (line_end(&c) != 0) return "expected the end of the line";
    rows++;
  }
  if (rows == 0) {
    *count = 0;
    return "no readings";
  }
  *count = rows;
  return NULL;
}

typedef struct {
  int64_t last, lo, hi;
} Rolling;

static Rolling roll(const int64_t *v, long n, long w) {
  Rolling r = {0, INT64_MAX, INT64_MIN};
  int64_t sum = 0;
  for (long i = 0; i < n; i++) {
    sum += v[i];
    if (i >= w) sum -= v[i - w];
    if (i < w - 1) continue;
    r.last = round_div(sum, w);
    if (r.last < r.lo) r.lo = r.last;
    if (r.last > r.hi) r.hi = r.last;
  }
  return r;
}

__attribute__((export_name("rolling"))) uint64_t rolling(void) {
  size_t n;
  const char *why;
  uint8_t *data = read_file("readings.csv", MAX_CSV, &n, &why);
  if (data == NULL) return json_error("readings.csv", why, 0);
  int64_t *t = malloc(sizeof(int64_t) * MAX_READINGS);
  int64_t *h = malloc(sizeof(int64_t) * MAX_READINGS);
  long count = 0;
  why = t == NULL || h == NULL ? "out of memory" : parse_csv(data, n, t, h, &count);
  free(data);
  if (why != NULL) {
    free(t);
    free(h);
    return json_error("readings.csv", why, count);
  }
  long w = count < WINDOW ? count : WINDOW;
  Rolling rt = roll(t, count, w), rh = roll(h, count, w);
  free(t);
  free(h);
  char v[6][32];
  fixed(v[0], sizeof v[0], rt.last);
  fixed(v[1], sizeof v[1], rh.last);
  fixed(v[2], sizeof v[2], rt.lo);
  fixed(v[3], sizeof v[3], rt.hi);
  fixed(v[4], sizeof v[4], rh.lo);
  fixed(v[5], sizeof v[5], rh.hi);
  char *json = malloc(512);
  if (json == NULL) return 0;
  int len = snprintf(json, 512,
                     "{\"samples\":%ld,\"window\":%ld,\"temperature\":%s,\"humidity\":%s,"
                     "\"temperature_min\":%s,\"temperature_max\":%s,"
                     "\"humidity_min\":%s,\"humidity_max\":%s}",
                     count, w, v[0], v[1], v[2], v[3], v[4], v[5]);
  return pack(json, (uint32_t)len);
}

static const char *const KEYS[2] = {"temperature", "humidity"};

static int blank(const Cursor *c) { return at(c, ' ') || at(c, '\t'); }

static void skip_blanks(Cursor *c) {
  while (blank(c)) c->i++;
}

/* Parses thresholds.txt into lo[k], hi[k] for each of KEYS. Returns NULL, or why the file
 * is refused and the line (1-based, 0 for the whole file) in *line. */
static const char *parse_thresholds(const uint8_t *p, size_t n, int64_t lo[2], int64_t hi[2],
                                    long *line) {
  int seen[2] = {0, 0};
  size_t start = 0;
  *line = 0;
  while (start < n) {
    size_t end = start;
    while (end < n && p[end] != '\n') end++;
    size_t stop = end > start && p[end - 1] == '\r' ? end - 1 : end;
    Cursor c = {p, stop, start}; /* the line without its "\r\n" */
    ++*line;
    start = end + 1;
    skip_blanks(&c);
    if (c.i == c.n || at(&c, '#')) continue;
    size_t word = c.i;
    while (c.i < c.n && !blank(&c)) c.i++;
    int k = -1;
    for (int j = 0; j < 2; j++) {
      size_t len = strlen(KEYS[j]);
      if (c.i - word == len && memcmp(p + word, KEYS[j], len) == 0) k = j;
    }
    if (k < 0) return "unknown key (expected temperature or humidity)";
    if (seen[k]) return "key given twice";
    seen[k] = 1;
    skip_blanks(&c);
    if (decimal(&c, &lo[k]) != 0 || !blank(&c)) return "bad min";
    skip_blanks(&c);
    if (decimal(&c, &hi[k]) != 0) return "bad max";
    skip_blanks(&c);
    if (c.i != c.n) return "unexpected text after max";
    if (lo[k] > hi[k]) return "min is above max";
  }
  *line = 0;
  if (!seen[0] || !seen[1]) return "needs a temperature and a humidity line";
  return NULL;
}

__attribute__((export_name("alert"))) uint64_t alert(double temperature, double humidity) {
  double given[2] = {temperature, humidity};
  int64_t value[2], lo[2], hi[2];
  for (int k = 0; k < 2; k++) {
    if (!isfinite(given[k]) || fabs(given[k]) > MAX_VALUE) {
      return json_error(KEYS[k], "not a finite number within +-1e9", 0);
    }
    value[k] = llround(given[k] * 100.0);
  }
  size_t n;
  const char *why;
  long line = 0;
  uint8_t *data = read_file("thresholds.txt", MAX_THRESHOLDS, &n, &why);
  if (data == NULL) return json_error("thresholds.txt", why, 0);
  why = parse_thresholds(data, n, lo, hi, &line);
  free(data);
  if (why != NULL) return json_error("thresholds.txt", why, line);

  /* The longest object this can print is about 400 bytes (values are at most 14 characters,
   * limits 10), so no snprintf below is ever truncated and each `len` stays below 1024. */
  char *json = malloc(1024);
  if (json == NULL) return 0;
  char v[2][32], l[2][32], u[2][32];
  int len = snprintf(json, 1024, "{\"alert\":%s,\"reasons\":[",
                     (value[0] < lo[0] || value[0] > hi[0] || value[1] < lo[1] ||
                      value[1] > hi[1])
                         ? "true"
                         : "false");
  int reasons = 0;
  for (int k = 0; k < 2; k++) {
    fixed(v[k], sizeof v[k], value[k]);
    fixed(l[k], sizeof l[k], lo[k]);
    fixed(u[k], sizeof u[k], hi[k]);
    if (value[k] >= lo[k] && value[k] <= hi[k]) continue;
    len += snprintf(json + len, 1024 - (size_t)len, "%s\"%s %s %s %s\"", reasons ? "," : "",
                    KEYS[k], v[k], value[k] < lo[k] ? "below" : "above",
                    value[k] < lo[k] ? l[k] : u[k]);
    reasons++;
  }
  len += snprintf(json + len, 1024 - (size_t)len,
                  "],\"temperature\":%s,\"humidity\":%s,"
                  "\"limits\":{\"temperature\":[%s,%s],\"humidity\":[%s,%s]}}",
                  v[0], v[1], l[0], u[0], l[1], u[1]);
  return pack(json, (uint32_t)len);
}
