// baton: pure
/*
 * sensors: reads a DHT22 through the host functions dht.getTemperature and
 * dht.getHumidity (degrees Celsius, relative humidity %).
 *   temperature(), humidity()  the current readings
 *   comfort()                  1 if 18 <= t <= 26 and 30 <= h <= 60, else 0
 */
#include <stdint.h>

__attribute__((import_module("dht"), import_name("getTemperature"))) float dht_temperature(void);
__attribute__((import_module("dht"), import_name("getHumidity"))) float dht_humidity(void);

__attribute__((export_name("temperature"))) float temperature(void) { return dht_temperature(); }

__attribute__((export_name("humidity"))) float humidity(void) { return dht_humidity(); }

__attribute__((export_name("comfort"))) int32_t comfort(void) {
  float t = dht_temperature();
  float h = dht_humidity();
  return t >= 18.0f && t <= 26.0f && h >= 30.0f && h <= 60.0f;
}
