// m3/dtype.h — element types of weights, with llama.cpp's (ggml's) block layouts and type ids,
// so that a GGUF written by m3 loads in llama.cpp and the other way round.
//
//   F32   4 bytes/element
//   F16   IEEE half, 2 bytes/element
//   BF16  bfloat16 (top half of an f32), 2 bytes/element
//   Q8_0  blocks of 32: fp16 scale d, 32 int8 q;           x = d*q            (34 bytes / 32)
//   Q4_0  blocks of 32: fp16 scale d, 16 bytes of nibbles;  x = d*(nibble-8)   (18 bytes / 32)
//         byte j holds element j in its low nibble and element j+16 in its high nibble.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace m3 {

// Values are ggml_type ids, as stored in GGUF tensor infos.
enum class DType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q8_0 = 8,
  BF16 = 30,
};

constexpr int kQuantBlock = 32;  // elements per Q8_0 / Q4_0 block

struct BlockQ8_0 {
  uint16_t d;  // fp16 scale
  int8_t qs[kQuantBlock];
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block must match ggml");

struct BlockQ4_0 {
  uint16_t d;  // fp16 scale
  uint8_t qs[kQuantBlock / 2];
};
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block must match ggml");

// Is this ggml type id one m3 can compute with?
bool dtype_is_supported(uint32_t ggml_type);
const char* dtype_name(DType t);                       // "f32", "f16", "bf16", "q8_0", "q4_0"
std::optional<DType> dtype_from_name(const std::string& name);
int64_t dtype_block_elems(DType t);                    // 1 for float types, 32 for quantized
size_t dtype_block_bytes(DType t);                     // bytes of one block
// Bytes of a row of n elements; n must be a multiple of dtype_block_elems (throws m3::Error otherwise).
size_t dtype_row_bytes(DType t, int64_t n);

// Scalar conversions (bit exact, round to nearest even).
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);
float bf16_to_fp32(uint16_t h);
uint16_t fp32_to_bf16(float f);

// Row conversions between f32 and any DType; n a multiple of the block size.
// quantize_row follows ggml's reference quantizers exactly (same rounding), so the bytes match
// what llama.cpp's quantize tool would write for the same floats.
void quantize_row(DType t, const float* x, void* y, int64_t n);
void dequantize_row(DType t, const void* x, float* y, int64_t n);

}  // namespace m3
