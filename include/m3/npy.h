// m3/npy.h — NumPy .npy v1.0 files of float32 / int32 (C order, little-endian): how m3 trades
// arrays with the PyTorch reference (`m3 logits -o`, golden files).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace m3 {

struct NpyArray {
  std::string dtype;              // "<f4" or "<i4"
  std::vector<int64_t> shape;
  std::vector<float> f32;         // filled when dtype is "<f4"
  std::vector<int32_t> i32;       // filled when dtype is "<i4"
};

void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape);
// Throws m3::Error naming the file for anything but little-endian f4/i4, C order.
NpyArray read_npy(const std::string& path);

}  // namespace m3
