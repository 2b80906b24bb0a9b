// baton: reactor
/*
 * sensors: reads a DHT22 through the host functions dht.getTemperature and
 * dht.getHumidity (degrees Celsius, relative humidity %).
 *   temperature(), humidity()  the current readings
 *   comfort()                  1 if 18 <= t <= 26 and 30 <= h <= 60, else 0
 *   sample(count, interval_ms) takes `count` readings (clamped to 1..500),
 *       waiting sys.delay(interval_ms) between two readings (interval clamped to
 *       0..60000 ms; the device may cap a delay further), and writes them to the
 *       output mount readings.csv: the header "index,elapsed_ms,temperature,humidity"
 *       then one line per reading, "<i>,<ms>,<t>,<h>\n": i counts from 0, ms is
 *       sys.millis() just before the reading minus that of the first reading (so
 *       the first line has 0), t and h have exactly two decimals ("%.2f").
 *       Returns the number of readings; -1 and no file if a reading is not a
 *       finite number or the file cannot be written.
 * A reactor (not pure) since sample() needs stdio and files; the other functions
 * behave as they did in the pure build.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>

#define MAX_SAMPLES 500
#define MAX_INTERVAL_MS 60000

__attribute__((import_module("dht"), import_name("getTemperature"))) float dht_temperature(void);
__attribute__((import_module("dht"), import_name("getHumidity"))) float dht_humidity(void);
__attribute__((import_module("sys"), import_name("delay"))) void sys_delay(int32_t ms);
__attribute__((import_module("sys"), import_name("millis"))) int32_t sys_millis(void);

__attribute__((export_name("temperature"))) float temperature(void) { return dht_temperature(); }

__attribute__((export_name("humidity"))) float humidity(void) { return dht_humidity(); }

__attribute__((export_name("comfort"))) int32_t comfort(void) {
  float t = dht_temperature();
  float h = dht_humidity();
  return t >= 18.0f && t <= 26.0f && h >= 30.0f && h <= 60.0f;
}

__attribute__((export_name("sample"))) int32_t sample(int32_t count, int32_t interval_ms) {
  if (count < 1) count = 1;
  if (count > MAX_SAMPLES) count = MAX_SAMPLES;
  if (interval_ms < 0) interval_ms = 0;
  if (interval_ms > MAX_INTERVAL_MS) interval_ms = MAX_INTERVAL_MS;
  FILE *f = fopen("readings.csv", "wb");
  if (f == NULL) return -1;
  int ok = fputs("index,elapsed_ms,temperature,humidity\n", f) >= 0;
  uint32_t start = 0;
  for (int32_t i = 0; ok && i < count; i++) {
    if (i > 0) sys_delay(interval_ms);
    uint32_t now = (uint32_t)sys_millis();
    if (i == 0) start = now;
    float t = dht_temperature();
    float h = dht_humidity();
    /* A failed DHT read can come back as NaN: never write it as if it were a reading. */
    if (!isfinite(t) || !isfinite(h)) {
      ok = 0;
      break;
    }
    /* The device clock may wrap (Baton's does so within the positive i32 range, as the
     * reference's millis cannot fit an i32): keep the difference in 31 bits. */
    uint32_t elapsed = (now - start) & 0x7FFFFFFFu;
    ok = fprintf(f, "%d,%u,%.2f,%.2f\n", (int)i, (unsigned)elapsed, (double)t, (double)h) > 0;
  }
  ok = fclose(f) == 0 && ok;
  if (!ok) {
    remove("readings.csv"); /* a partial file must not reach the next step */
    return -1;
  }
  return count;
}
