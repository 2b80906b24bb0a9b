// baton: pure
/*
 * fibo: the wasmiot example, pure (no libc start-up, no imports).
 *
 * fibo(0) = fibo(1) = 1, fibo(n) = fibo(n-1) + fibo(n-2); iterative, so
 * fibo(5) = 8, fibo(12) = 233, fibo(34) = 9227465. Wraps modulo 2^64.
 */
#include <stdint.h>

__attribute__((export_name("fibo"))) int64_t fibo(int64_t n) {
  uint64_t a = 1, b = 1;
  for (int64_t i = 1; i < n; i++) {
    uint64_t next = a + b;
    a = b;
    b = next;
  }
  return (int64_t)b;
}

__attribute__((export_name("add"))) int64_t add(int64_t a, int64_t b) {
  return (int64_t)((uint64_t)a + (uint64_t)b);
}
