// m3/error.h — the one error type of m3.
//
// Internals throw m3::Error with a message a person can act on: it names the file, the field and
// the limit that was broken ("model.gguf: tensor 'blk.3.attn_q.weight' has shape [64,32], expected
// [64,64]"). Entry points (CLI commands, tests) catch it, print one line and exit non-zero. Nothing
// else is thrown on purpose; std::bad_alloc and friends are bugs or resource exhaustion.
#pragma once

#include <stdexcept>
#include <string>

namespace m3 {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace m3
