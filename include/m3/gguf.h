// m3/gguf.h — GGUF v3, the model container (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md).
//
// Layout: magic "GGUF", u32 version (3), u64 tensor count, u64 key-value count, the key-values,
// the tensor infos (name, n_dims, ne[], ggml type, offset), padding to general.alignment (32),
// then the tensor data. All little-endian. The reader maps the file and hands out TensorViews
// that point into the map; every size and offset is checked against the file's length first, so
// a truncated or corrupted file gives an m3::Error naming the file and the field, never a crash.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "m3/tensor.h"

namespace m3 {

enum class GGUFType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

struct GGUFValue {
  GGUFType type = GGUFType::UINT32;
  // Scalars: integers in i (signed) / u (unsigned), floats in f, bools in u, strings in s.
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0;
  std::string s;
  // Arrays: element type; strings in strings, numbers as f64 in numbers (exact for every
  // integer type up to 2^53), raw little-endian element bytes in bytes.
  GGUFType array_type = GGUFType::UINT8;
  std::vector<std::string> strings;
  std::vector<double> numbers;
  std::vector<uint8_t> bytes;
};

constexpr uint32_t kGGUFMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint32_t kGGUFVersion = 3;
constexpr size_t kGGUFAlignment = 32;

class GGUFFile {
 public:
  // Maps and validates the file. Throws m3::Error naming the path and the problem.
  static std::unique_ptr<GGUFFile> open(const std::string& path, FileLoad mode = FileLoad::Map);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  const std::map<std::string, GGUFValue>& metadata() const { return kv_; }
  const std::vector<std::string>& key_order() const { return key_order_; }
  const std::vector<TensorView>& tensors() const { return tensors_; }

  const GGUFValue* find(const std::string& key) const;
  const TensorView* find_tensor(const std::string& name) const;

  // Typed getters: throw m3::Error "<path>: metadata key '<key>' ..." when missing or mistyped.
  std::string get_string(const std::string& key) const;
  int64_t get_int(const std::string& key) const;     // any integer type
  double get_float(const std::string& key) const;    // any float or integer type
  bool get_bool(const std::string& key) const;
  std::optional<int64_t> get_int_opt(const std::string& key) const;
  std::optional<double> get_float_opt(const std::string& key) const;
  std::optional<std::string> get_string_opt(const std::string& key) const;

  size_t data_offset() const { return data_offset_; }
  const MappedFile& mapping() const { return *map_; }

 private:
  GGUFFile() = default;
  std::string path_;
  uint32_t version_ = 0;
  std::unique_ptr<MappedFile> map_;
  std::map<std::string, GGUFValue> kv_;
  std::vector<std::string> key_order_;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> tensor_index_;
  size_t data_offset_ = 0;
};

// Builds a GGUF file in memory order and writes it atomically (temp file + fsync + rename), so a
// killed writer never leaves a half-written model under the final name.
class GGUFWriter {
 public:
  void set_string(const std::string& key, const std::string& v);
  void set_u32(const std::string& key, uint32_t v);
  void set_i32(const std::string& key, int32_t v);
  void set_u64(const std::string& key, uint64_t v);
  void set_f32(const std::string& key, float v);
  void set_bool(const std::string& key, bool v);
  void set_strings(const std::string& key, const std::vector<std::string>& v);
  void set_f32s(const std::string& key, const std::vector<float>& v);
  void set_i32s(const std::string& key, const std::vector<int32_t>& v);
  void set_bytes(const std::string& key, const std::string& v);  // ARRAY of UINT8
  // Copies a value read from another file (used by quantize to keep metadata).
  void set_value(const std::string& key, const GGUFValue& v);

  // The data is not copied: it must stay alive until write() returns.
  void add_tensor(const std::string& name, DType type, const std::vector<int64_t>& ne, const void* data);

  void write(const std::string& path) const;

 private:
  struct Entry { std::string key; GGUFValue value; };
  struct Tensor { std::string name; DType type; std::vector<int64_t> ne; const void* data; size_t nbytes; };
  void put(const std::string& key, GGUFValue v);
  std::vector<Entry> entries_;
  std::vector<Tensor> tensors_;
};

}  // namespace m3
