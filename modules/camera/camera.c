// baton: reactor
/*
 * camera: captures images through the host function
 * camera.takeImageDynamicSize(outPtrPtr, outSizePtr). The host calls this
 * module's alloc(len), writes the image there and stores the pointer and the
 * length as little-endian u32 at the two out-pointers.
 *   image_size()      captures one image, returns its byte length
 *   image_checksum()  captures one image, returns the sum of its bytes
 */
#include <stdint.h>
#include <stdlib.h>

__attribute__((import_module("camera"), import_name("takeImageDynamicSize")))
void take_image_dynamic_size(uint8_t **out_ptr, uint32_t *out_size);

__attribute__((export_name("alloc"))) void *wasm_alloc(uint32_t n) { return malloc(n ? n : 1); }
__attribute__((export_name("dealloc"))) void wasm_dealloc(void *p) { free(p); }

/* Captures one image; *size is 0 (and the result NULL) if the host gave none. */
static uint8_t *capture(uint32_t *size) {
  uint8_t *image = NULL;
  *size = 0;
  take_image_dynamic_size(&image, size);
  if (image == NULL) *size = 0;
  return image;
}

__attribute__((export_name("image_size"))) int32_t image_size(void) {
  uint32_t size;
  uint8_t *image = capture(&size);
  free(image);
  return (int32_t)size;
}

__attribute__((export_name("image_checksum"))) int64_t image_checksum(void) {
  uint32_t size;
  uint8_t *image = capture(&size);
  uint64_t sum = 0;
  for (uint32_t i = 0; i < size; i++) sum += image[i];
  free(image);
  return (int64_t)sum;
}
