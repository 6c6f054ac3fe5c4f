// Minimal .npy v1.0 reader/writer for float32 and int32 arrays.
#include "m3/npy.h"

#include <cstring>
#include <fstream>
#include <sstream>

#include "m3/error.h"

namespace m3 {

void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  int64_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    dict += std::to_string(shape[i]) + (shape.size() == 1 ? "," : (i + 1 < shape.size() ? ", " : ""));
    n *= shape[i];
  }
  dict += "), }";
  // Header (magic 6 + version 2 + len 2 + dict) padded with spaces to a multiple of 64, ends in \n.
  const size_t total = (10 + dict.size() + 1 + 63) / 64 * 64;
  dict.append(total - 10 - dict.size() - 1, ' ');
  dict += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) throw Error(path + ": cannot create");
  out.write("\x93NUMPY\x01\x00", 8);
  const uint16_t hlen = static_cast<uint16_t>(dict.size());
  out.write(reinterpret_cast<const char*>(&hlen), 2);
  out.write(dict.data(), static_cast<std::streamsize>(dict.size()));
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n * sizeof(float)));
  if (!out) throw Error(path + ": write failed");
}

NpyArray read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open");
  char magic[8];
  in.read(magic, 8);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw Error(path + ": not a .npy file (bad magic)");
  uint32_t hlen = 0;
  if (magic[6] == 1) {
    uint16_t h;
    in.read(reinterpret_cast<char*>(&h), 2);
    hlen = h;
  } else {
    in.read(reinterpret_cast<char*>(&hlen), 4);
  }
  std::string header(hlen, '\0');
  in.read(header.data(), hlen);
  if (!in) throw Error(path + ": truncated .npy header");
  NpyArray a;
  auto field = [&](const std::string& key) {
    const size_t p = header.find("'" + key + "'");
    if (p == std::string::npos) throw Error(path + ": .npy header lacks '" + key + "'");
    return header.substr(header.find(':', p) + 1);
  };
  std::string descr = field("descr");
  descr = descr.substr(descr.find('\'') + 1);
  a.dtype = descr.substr(0, descr.find('\''));
  if (a.dtype != "<f4" && a.dtype != "<i4") throw Error(path + ": .npy dtype " + a.dtype + " not supported (need <f4 or <i4)");
  if (field("fortran_order").find("False") != 0 && field("fortran_order").find(" False") != 0)
    throw Error(path + ": Fortran-order .npy not supported");
  std::string shape = field("shape");
  shape = shape.substr(shape.find('(') + 1, shape.find(')') - shape.find('(') - 1);
  std::stringstream ss(shape);
  std::string item;
  int64_t n = 1;
  while (std::getline(ss, item, ','))
    if (item.find_first_not_of(' ') != std::string::npos) {
      a.shape.push_back(std::stoll(item));
      n *= a.shape.back();
    }
  if (a.dtype == "<f4") {
    a.f32.resize(n);
    in.read(reinterpret_cast<char*>(a.f32.data()), n * 4);
  } else {
    a.i32.resize(n);
    in.read(reinterpret_cast<char*>(a.i32.data()), n * 4);
  }
  if (!in) throw Error(path + ": truncated .npy data");
  return a;
}

}  // namespace m3
