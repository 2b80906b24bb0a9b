// baton: reactor
/*
 * probe: reports what the sandbox lets a guest see and do (used by tests).
 *   env_count()          number of environment variables the guest was given
 *   can_open(ptr, len)   1 if the path can be opened for reading, else 0
 *   can_write(ptr, len)  1 if the path can be created/opened for writing
 *                        (appends nothing; an existing file is left intact)
 * Paths are passed as bytes (not NUL-terminated) through alloc().
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <wasi/api.h>

__attribute__((export_name("alloc"))) void *wasm_alloc(uint32_t n) { return malloc(n ? n : 1); }
__attribute__((export_name("dealloc"))) void wasm_dealloc(void *p) { free(p); }

__attribute__((export_name("env_count"))) int32_t env_count(void) {
  __wasi_size_t count = 0, bytes = 0;
  if (__wasi_environ_sizes_get(&count, &bytes) != 0) return -1;
  return (int32_t)count;
}

static int try_open(const char *path, uint32_t len, int flags) {
  char *name = malloc(len + 1);
  if (name == NULL) return 0;
  memcpy(name, path, len);
  name[len] = '\0';
  int fd = strlen(name) == len ? open(name, flags, 0644) : -1; /* no embedded NULs */
  free(name);
  if (fd < 0) return 0;
  close(fd);
  return 1;
}

__attribute__((export_name("can_open"))) int32_t can_open(const char *path, uint32_t len) {
  return try_open(path, len, O_RDONLY);
}

__attribute__((export_name("can_write"))) int32_t can_write(const char *path, uint32_t len) {
  return try_open(path, len, O_WRONLY | O_CREAT | O_APPEND);
}
