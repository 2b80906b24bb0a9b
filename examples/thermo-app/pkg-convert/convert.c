// baton: pure
/*
 * convert: Celsius to Fahrenheit in whole degrees, for the thermo example app.
 *
 *   c2f(c) = c * 9 / 5 + 32, with C's division (truncating toward zero):
 *   c2f(0) = 32, c2f(40) = 104, c2f(-40) = -40, c2f(37) = 98.
 *
 * Pure: no libc start-up, no imports, so the package requires no host function.
 */
#include <stdint.h>

__attribute__((export_name("c2f"))) int64_t c2f(int64_t celsius) {
  return celsius * 9 / 5 + 32;
}
