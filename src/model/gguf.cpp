// GGUF v3 reader (mmap, bounds-checked) and writer (atomic).
#include "m3/gguf.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "m3/error.h"

namespace m3 {

namespace {

const char* type_name(GGUFType t) {
  switch (t) {
    case GGUFType::UINT8: return "uint8";
    case GGUFType::INT8: return "int8";
    case GGUFType::UINT16: return "uint16";
    case GGUFType::INT16: return "int16";
    case GGUFType::UINT32: return "uint32";
    case GGUFType::INT32: return "int32";
    case GGUFType::FLOAT32: return "float32";
    case GGUFType::BOOL: return "bool";
    case GGUFType::STRING: return "string";
    case GGUFType::ARRAY: return "array";
    case GGUFType::UINT64: return "uint64";
    case GGUFType::INT64: return "int64";
    case GGUFType::FLOAT64: return "float64";
  }
  return "unknown";
}

size_t scalar_size(GGUFType t) {
  switch (t) {
    case GGUFType::UINT8: case GGUFType::INT8: case GGUFType::BOOL: return 1;
    case GGUFType::UINT16: case GGUFType::INT16: return 2;
    case GGUFType::UINT32: case GGUFType::INT32: case GGUFType::FLOAT32: return 4;
    case GGUFType::UINT64: case GGUFType::INT64: case GGUFType::FLOAT64: return 8;
    default: return 0;
  }
}

bool is_integer(GGUFType t) {
  switch (t) {
    case GGUFType::UINT8: case GGUFType::INT8: case GGUFType::UINT16: case GGUFType::INT16:
    case GGUFType::UINT32: case GGUFType::INT32: case GGUFType::UINT64: case GGUFType::INT64: return true;
    default: return false;
  }
}

// A cursor over the mapped bytes that refuses to read past the end.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size, const std::string& path) : p_(data), size_(size), path_(path) {}
  size_t offset() const { return off_; }
  size_t left() const { return size_ - off_; }
  void need(size_t n, const std::string& what) const {
    if (n > size_ - off_)
      throw Error(path_ + ": truncated file: " + what + " needs " + std::to_string(n) + " bytes at offset " +
                  std::to_string(off_) + " but the file has " + std::to_string(size_) + " bytes");
  }
  template <class T> T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + off_, sizeof(T));
    off_ += sizeof(T);
    return v;
  }
  std::string read_string(const std::string& what) {
    const uint64_t n = read<uint64_t>(what + " length");
    if (n > (1ull << 30)) throw Error(path_ + ": " + what + " has an impossible length " + std::to_string(n));
    need(n, what);
    std::string s(reinterpret_cast<const char*>(p_ + off_), n);
    off_ += n;
    return s;
  }
  const uint8_t* take(size_t n, const std::string& what) {
    need(n, what);
    const uint8_t* q = p_ + off_;
    off_ += n;
    return q;
  }

 private:
  const uint8_t* p_;
  size_t size_;
  size_t off_ = 0;
  const std::string& path_;
};

double scalar_as_double(GGUFType t, const uint8_t* p) {
  switch (t) {
    case GGUFType::UINT8: return *p;
    case GGUFType::INT8: return static_cast<int8_t>(*p);
    case GGUFType::BOOL: return *p ? 1 : 0;
    case GGUFType::UINT16: { uint16_t v; std::memcpy(&v, p, 2); return v; }
    case GGUFType::INT16: { int16_t v; std::memcpy(&v, p, 2); return v; }
    case GGUFType::UINT32: { uint32_t v; std::memcpy(&v, p, 4); return v; }
    case GGUFType::INT32: { int32_t v; std::memcpy(&v, p, 4); return v; }
    case GGUFType::FLOAT32: { float v; std::memcpy(&v, p, 4); return v; }
    case GGUFType::UINT64: { uint64_t v; std::memcpy(&v, p, 8); return static_cast<double>(v); }
    case GGUFType::INT64: { int64_t v; std::memcpy(&v, p, 8); return static_cast<double>(v); }
    case GGUFType::FLOAT64: { double v; std::memcpy(&v, p, 8); return v; }
    default: return 0;
  }
}

GGUFValue read_value(Cursor& c, GGUFType type, const std::string& key, const std::string& path) {
  GGUFValue v;
  v.type = type;
  const std::string what = "metadata key '" + key + "'";
  if (type == GGUFType::STRING) {
    v.s = c.read_string(what);
  } else if (type == GGUFType::ARRAY) {
    const uint32_t et = c.read<uint32_t>(what + " array type");
    if (et > static_cast<uint32_t>(GGUFType::FLOAT64) || et == static_cast<uint32_t>(GGUFType::ARRAY))
      throw Error(path + ": " + what + " has unsupported array element type " + std::to_string(et));
    v.array_type = static_cast<GGUFType>(et);
    const uint64_t n = c.read<uint64_t>(what + " array length");
    if (v.array_type == GGUFType::STRING) {
      if (n > (1ull << 26)) throw Error(path + ": " + what + " has an impossible array length " + std::to_string(n));
      v.strings.reserve(std::min<uint64_t>(n, c.left() / 8));  // each needs its 8-byte length: no huge reserve for a lying n
      for (uint64_t i = 0; i < n; ++i) v.strings.push_back(c.read_string(what + " element"));
    } else {
      const size_t es = scalar_size(v.array_type);
      if (n > (1ull << 40) / es) throw Error(path + ": " + what + " has an impossible array length " + std::to_string(n));
      const uint8_t* p = c.take(es * n, what + " array data");
      v.bytes.assign(p, p + es * n);
      v.numbers.resize(n);
      for (uint64_t i = 0; i < n; ++i) v.numbers[i] = scalar_as_double(v.array_type, p + i * es);
    }
  } else {
    const size_t es = scalar_size(type);
    if (es == 0) throw Error(path + ": " + what + " has unknown value type " + std::to_string(static_cast<uint32_t>(type)));
    const uint8_t* p = c.take(es, what);
    v.f = scalar_as_double(type, p);
    switch (type) {
      case GGUFType::UINT64: std::memcpy(&v.u, p, 8); v.i = static_cast<int64_t>(v.u); break;
      case GGUFType::INT64: std::memcpy(&v.i, p, 8); v.u = static_cast<uint64_t>(v.i); break;
      // A float lives in f alone: converting any float to an integer is undefined behaviour when
      // it is out of range or NaN (found by fuzz_gguf), and no getter reads a float as an integer.
      case GGUFType::FLOAT32: case GGUFType::FLOAT64: break;
      default: v.i = static_cast<int64_t>(v.f); v.u = static_cast<uint64_t>(v.i); break;  // ≤ 32-bit ints, bool: exact
    }
  }
  return v;
}

}  // namespace

std::unique_ptr<GGUFFile> GGUFFile::open(const std::string& path, FileLoad mode) {
  std::unique_ptr<GGUFFile> f(new GGUFFile());
  f->path_ = path;
  f->map_ = std::make_unique<MappedFile>(path, mode);
  Cursor c(f->map_->data(), f->map_->size(), f->path_);
  if (f->map_->size() < 4) throw Error(path + ": not a GGUF file (only " + std::to_string(f->map_->size()) + " bytes)");
  const uint32_t magic = c.read<uint32_t>("magic");
  if (magic != kGGUFMagic) {
    char m[5] = {};
    std::memcpy(m, f->map_->data(), 4);
    for (char& ch : m) if (ch && (ch < 32 || ch > 126)) ch = '?';
    throw Error(path + ": not a GGUF file (wrong magic '" + std::string(m) + "', expected 'GGUF')");
  }
  f->version_ = c.read<uint32_t>("version");
  if (f->version_ != 2 && f->version_ != 3)
    throw Error(path + ": unsupported GGUF version " + std::to_string(f->version_) + " (m3 reads versions 2 and 3)");
  const uint64_t n_tensors = c.read<uint64_t>("tensor count");
  const uint64_t n_kv = c.read<uint64_t>("metadata count");
  if (n_tensors > (1u << 20)) throw Error(path + ": impossible tensor count " + std::to_string(n_tensors));
  if (n_kv > (1u << 20)) throw Error(path + ": impossible metadata count " + std::to_string(n_kv));

  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.read_string("metadata key #" + std::to_string(i));
    const uint32_t t = c.read<uint32_t>("type of metadata key '" + key + "'");
    if (t > static_cast<uint32_t>(GGUFType::FLOAT64))
      throw Error(path + ": metadata key '" + key + "' has unknown type " + std::to_string(t));
    GGUFValue v = read_value(c, static_cast<GGUFType>(t), key, path);
    if (f->kv_.count(key)) throw Error(path + ": metadata key '" + key + "' appears twice");
    f->key_order_.push_back(key);
    f->kv_.emplace(std::move(key), std::move(v));
  }

  size_t alignment = kGGUFAlignment;
  if (auto a = f->get_int_opt("general.alignment")) {
    if (*a <= 0 || (*a & (*a - 1)) != 0) throw Error(path + ": general.alignment " + std::to_string(*a) + " is not a power of two");
    alignment = static_cast<size_t>(*a);
  }

  struct Info { TensorView view; uint64_t offset; };
  std::vector<Info> infos;
  infos.reserve(std::min<uint64_t>(n_tensors, c.left() / 32));  // a tensor info takes at least 32 bytes
  for (uint64_t i = 0; i < n_tensors; ++i) {
    Info info;
    info.view.name = c.read_string("tensor name #" + std::to_string(i));
    const std::string what = "tensor '" + info.view.name + "'";
    const uint32_t n_dims = c.read<uint32_t>(what + " dimension count");
    if (n_dims < 1 || n_dims > 4) throw Error(path + ": " + what + " has " + std::to_string(n_dims) + " dimensions (1 to 4 supported)");
    info.view.n_dims = static_cast<int>(n_dims);
    uint64_t elements = 1;  // kept below 2^56 so that no byte count computed from the shape overflows
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = c.read<uint64_t>(what + " shape");
      if (ne == 0 || ne > (1ull << 40)) throw Error(path + ": " + what + " has an impossible dimension " + std::to_string(ne));
      if (ne > (1ull << 56) / elements)
        throw Error(path + ": " + what + " has an impossible shape (more than 2^56 elements)");
      elements *= ne;
      info.view.ne[d] = static_cast<int64_t>(ne);
    }
    const uint32_t type = c.read<uint32_t>(what + " type");
    if (!dtype_is_supported(type))
      throw Error(path + ": " + what + " has ggml type " + std::to_string(type) + ", which m3 does not support (f32, f16, bf16, q8_0, q4_0)");
    info.view.type = static_cast<DType>(type);
    if (info.view.ne[0] % dtype_block_elems(info.view.type) != 0)
      throw Error(path + ": " + what + " has " + std::to_string(info.view.ne[0]) + " columns, not a multiple of the " +
                  dtype_name(info.view.type) + " block size");
    info.offset = c.read<uint64_t>(what + " offset");
    if (info.offset % alignment != 0) throw Error(path + ": " + what + " data offset " + std::to_string(info.offset) + " is not aligned");
    if (f->tensor_index_.count(info.view.name)) throw Error(path + ": " + what + " appears twice");
    f->tensor_index_[info.view.name] = infos.size();
    infos.push_back(std::move(info));
  }
  f->data_offset_ = (c.offset() + alignment - 1) / alignment * alignment;
  const size_t size = f->map_->size();
  for (auto& info : infos) {
    const size_t nbytes = info.view.nbytes();
    if (f->data_offset_ > size || info.offset > size - f->data_offset_ || nbytes > size - f->data_offset_ - info.offset)
      throw Error(path + ": truncated file: tensor '" + info.view.name + "' needs bytes " +
                  std::to_string(f->data_offset_ + info.offset) + ".." + std::to_string(f->data_offset_ + info.offset + nbytes) +
                  " but the file has " + std::to_string(size) + " bytes");
    info.view.data = f->map_->data() + f->data_offset_ + info.offset;
    f->tensors_.push_back(std::move(info.view));
  }
  return f;
}

const GGUFValue* GGUFFile::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

const TensorView* GGUFFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::string GGUFFile::get_string(const std::string& key) const {
  auto v = get_string_opt(key);
  if (!v) throw Error(path_ + ": missing metadata key '" + key + "'");
  return *v;
}
std::optional<std::string> GGUFFile::get_string_opt(const std::string& key) const {
  const GGUFValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GGUFType::STRING) throw Error(path_ + ": metadata key '" + key + "' is " + type_name(v->type) + ", expected string");
  return v->s;
}
int64_t GGUFFile::get_int(const std::string& key) const {
  auto v = get_int_opt(key);
  if (!v) throw Error(path_ + ": missing metadata key '" + key + "'");
  return *v;
}
std::optional<int64_t> GGUFFile::get_int_opt(const std::string& key) const {
  const GGUFValue* v = find(key);
  if (!v) return std::nullopt;
  if (!is_integer(v->type)) throw Error(path_ + ": metadata key '" + key + "' is " + type_name(v->type) + ", expected an integer");
  return v->i;
}
double GGUFFile::get_float(const std::string& key) const {
  auto v = get_float_opt(key);
  if (!v) throw Error(path_ + ": missing metadata key '" + key + "'");
  return *v;
}
std::optional<double> GGUFFile::get_float_opt(const std::string& key) const {
  const GGUFValue* v = find(key);
  if (!v) return std::nullopt;
  if (!is_integer(v->type) && v->type != GGUFType::FLOAT32 && v->type != GGUFType::FLOAT64)
    throw Error(path_ + ": metadata key '" + key + "' is " + type_name(v->type) + ", expected a number");
  return v->f;
}
bool GGUFFile::get_bool(const std::string& key) const {
  const GGUFValue* v = find(key);
  if (!v) throw Error(path_ + ": missing metadata key '" + key + "'");
  if (v->type != GGUFType::BOOL) throw Error(path_ + ": metadata key '" + key + "' is " + type_name(v->type) + ", expected bool");
  return v->f != 0;
}

// ------------------------------------------------------------------------------------------------
// Writer

void GGUFWriter::put(const std::string& key, GGUFValue v) {
  for (auto& e : entries_)
    if (e.key == key) { e.value = std::move(v); return; }
  entries_.push_back({key, std::move(v)});
}
void GGUFWriter::set_string(const std::string& key, const std::string& s) { GGUFValue v; v.type = GGUFType::STRING; v.s = s; put(key, std::move(v)); }
void GGUFWriter::set_u32(const std::string& key, uint32_t x) { GGUFValue v; v.type = GGUFType::UINT32; v.u = x; v.i = x; v.f = x; put(key, std::move(v)); }
void GGUFWriter::set_i32(const std::string& key, int32_t x) { GGUFValue v; v.type = GGUFType::INT32; v.i = x; v.u = static_cast<uint64_t>(x); v.f = x; put(key, std::move(v)); }
void GGUFWriter::set_u64(const std::string& key, uint64_t x) { GGUFValue v; v.type = GGUFType::UINT64; v.u = x; v.i = static_cast<int64_t>(x); v.f = static_cast<double>(x); put(key, std::move(v)); }
void GGUFWriter::set_f32(const std::string& key, float x) { GGUFValue v; v.type = GGUFType::FLOAT32; v.f = x; put(key, std::move(v)); }
void GGUFWriter::set_bool(const std::string& key, bool x) { GGUFValue v; v.type = GGUFType::BOOL; v.f = x; v.u = x; v.i = x; put(key, std::move(v)); }
void GGUFWriter::set_strings(const std::string& key, const std::vector<std::string>& xs) {
  GGUFValue v; v.type = GGUFType::ARRAY; v.array_type = GGUFType::STRING; v.strings = xs; put(key, std::move(v));
}
void GGUFWriter::set_f32s(const std::string& key, const std::vector<float>& xs) {
  GGUFValue v; v.type = GGUFType::ARRAY; v.array_type = GGUFType::FLOAT32;
  v.bytes.resize(xs.size() * 4); if (!xs.empty()) std::memcpy(v.bytes.data(), xs.data(), v.bytes.size()); put(key, std::move(v));
}
void GGUFWriter::set_i32s(const std::string& key, const std::vector<int32_t>& xs) {
  GGUFValue v; v.type = GGUFType::ARRAY; v.array_type = GGUFType::INT32;
  v.bytes.resize(xs.size() * 4); if (!xs.empty()) std::memcpy(v.bytes.data(), xs.data(), v.bytes.size()); put(key, std::move(v));
}
void GGUFWriter::set_bytes(const std::string& key, const std::string& xs) {
  GGUFValue v; v.type = GGUFType::ARRAY; v.array_type = GGUFType::UINT8; v.bytes.assign(xs.begin(), xs.end()); put(key, std::move(v));
}
void GGUFWriter::set_value(const std::string& key, const GGUFValue& v) { put(key, v); }

void GGUFWriter::add_tensor(const std::string& name, DType type, const std::vector<int64_t>& ne, const void* data) {
  if (ne.empty() || ne.size() > 4) throw Error("GGUF writer: tensor '" + name + "' must have 1 to 4 dimensions");
  int64_t rows = 1;
  for (size_t i = 1; i < ne.size(); ++i) rows *= ne[i];
  const size_t nbytes = dtype_row_bytes(type, ne[0]) * static_cast<size_t>(rows);
  for (auto& t : tensors_)
    if (t.name == name) throw Error("GGUF writer: tensor '" + name + "' added twice");
  tensors_.push_back({name, type, ne, data, nbytes});
}

namespace {
class Out {
 public:
  void bytes(const void* p, size_t n) { buf_.append(static_cast<const char*>(p), n); }
  template <class T> void pod(T v) { bytes(&v, sizeof(T)); }
  void str(const std::string& s) { pod<uint64_t>(s.size()); bytes(s.data(), s.size()); }
  void pad_to(size_t alignment) { while (buf_.size() % alignment) buf_.push_back('\0'); }
  std::string& buf() { return buf_; }

 private:
  std::string buf_;
};

void write_value(Out& o, const GGUFValue& v) {
  switch (v.type) {
    case GGUFType::STRING: o.str(v.s); break;
    case GGUFType::ARRAY:
      o.pod<uint32_t>(static_cast<uint32_t>(v.array_type));
      if (v.array_type == GGUFType::STRING) {
        o.pod<uint64_t>(v.strings.size());
        for (auto& s : v.strings) o.str(s);
      } else {
        const size_t es = scalar_size(v.array_type);
        o.pod<uint64_t>(v.bytes.size() / es);
        o.bytes(v.bytes.data(), v.bytes.size());
      }
      break;
    case GGUFType::UINT8: o.pod<uint8_t>(static_cast<uint8_t>(v.u)); break;
    case GGUFType::INT8: o.pod<int8_t>(static_cast<int8_t>(v.i)); break;
    case GGUFType::UINT16: o.pod<uint16_t>(static_cast<uint16_t>(v.u)); break;
    case GGUFType::INT16: o.pod<int16_t>(static_cast<int16_t>(v.i)); break;
    case GGUFType::UINT32: o.pod<uint32_t>(static_cast<uint32_t>(v.u)); break;
    case GGUFType::INT32: o.pod<int32_t>(static_cast<int32_t>(v.i)); break;
    case GGUFType::FLOAT32: o.pod<float>(static_cast<float>(v.f)); break;
    case GGUFType::BOOL: o.pod<uint8_t>(v.f != 0 ? 1 : 0); break;
    case GGUFType::UINT64: o.pod<uint64_t>(v.u); break;
    case GGUFType::INT64: o.pod<int64_t>(v.i); break;
    case GGUFType::FLOAT64: o.pod<double>(v.f); break;
  }
}

void write_all(int fd, const void* p, size_t n, const std::string& path) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw Error(path + ": write failed: " + std::strerror(errno));
    }
    c += w;
    n -= static_cast<size_t>(w);
  }
}
}  // namespace

void GGUFWriter::write(const std::string& path) const {
  Out o;
  o.pod<uint32_t>(kGGUFMagic);
  o.pod<uint32_t>(kGGUFVersion);
  o.pod<uint64_t>(tensors_.size());
  o.pod<uint64_t>(entries_.size());
  for (auto& e : entries_) {
    o.str(e.key);
    o.pod<uint32_t>(static_cast<uint32_t>(e.value.type));
    write_value(o, e.value);
  }
  uint64_t offset = 0;
  for (auto& t : tensors_) {
    o.str(t.name);
    o.pod<uint32_t>(static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) o.pod<uint64_t>(static_cast<uint64_t>(d));
    o.pod<uint32_t>(static_cast<uint32_t>(t.type));
    o.pod<uint64_t>(offset);
    offset += (t.nbytes + kGGUFAlignment - 1) / kGGUFAlignment * kGGUFAlignment;
  }
  o.pad_to(kGGUFAlignment);

  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(tmp + ": cannot create: " + std::strerror(errno));
  try {
    write_all(fd, o.buf().data(), o.buf().size(), tmp);
    static const char zeros[kGGUFAlignment] = {};
    for (auto& t : tensors_) {
      write_all(fd, t.data, t.nbytes, tmp);
      const size_t pad = (kGGUFAlignment - t.nbytes % kGGUFAlignment) % kGGUFAlignment;
      write_all(fd, zeros, pad, tmp);
    }
    if (::fsync(fd) != 0) throw Error(tmp + ": fsync failed: " + std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    throw Error(path + ": cannot rename temporary file into place: " + std::strerror(e));
  }
}

}  // namespace m3
