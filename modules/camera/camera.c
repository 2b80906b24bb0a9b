// baton: reactor
/*
 * camera: captures images through the host function
 * camera.takeImageDynamicSize(outPtrPtr, outSizePtr). The host calls this
 * module's alloc(len), writes the image there and stores the pointer and the
 * length as little-endian u32 at the two out-pointers.
 *   image_size()      captures one image, returns its byte length
 *   image_checksum()  captures one image, returns the sum of its bytes
 *   capture()         captures one image and writes it, unchanged, to the output
 *                     mount image.ppm (the simulated camera serves binary PPMs);
 *                     returns its byte length, or -1 (and no image.ppm) when the
 *                     host gave no image or the file cannot be written
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

__attribute__((import_module("camera"), import_name("takeImageDynamicSize")))
void take_image_dynamic_size(uint8_t **out_ptr, uint32_t *out_size);

__attribute__((export_name("alloc"))) void *wasm_alloc(uint32_t n) { return malloc(n ? n : 1); }
__attribute__((export_name("dealloc"))) void wasm_dealloc(void *p) { free(p); }

/* Captures one image; *size is 0 (and the result NULL) if the host gave none. */
static uint8_t *take_image(uint32_t *size) {
  uint8_t *image = NULL;
  *size = 0;
  take_image_dynamic_size(&image, size);
  if (image == NULL) *size = 0;
  return image;
}

__attribute__((export_name("image_size"))) int32_t image_size(void) {
  uint32_t size;
  uint8_t *image = take_image(&size);
  free(image);
  return (int32_t)size;
}

__attribute__((export_name("image_checksum"))) int64_t image_checksum(void) {
  uint32_t size;
  uint8_t *image = take_image(&size);
  uint64_t sum = 0;
  for (uint32_t i = 0; i < size; i++) sum += image[i];
  free(image);
  return (int64_t)sum;
}

__attribute__((export_name("capture"))) int32_t capture(void) {
  uint32_t size;
  uint8_t *image = take_image(&size);
  /* An empty capture is not an image: fail rather than hand the next step an empty file. */
  if (image == NULL || size == 0 || size > INT32_MAX) {
    free(image);
    return -1;
  }
  FILE *f = fopen("image.ppm", "wb");
  if (f == NULL) {
    free(image);
    return -1;
  }
  int ok = fwrite(image, 1, size, f) == size;
  ok = fclose(f) == 0 && ok;
  free(image);
  if (!ok) {
    /* A partial file must not reach the next step as if it were the image. */
    remove("image.ppm");
    return -1;
  }
  return (int32_t)size;
}
