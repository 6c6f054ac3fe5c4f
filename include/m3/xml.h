// m3/xml.h — text for XML/SVG documents (the loss plot, the evaluation chart).
#pragma once

#include <string>

namespace m3 {

// s with & < > " ' escaped; control characters other than tab and newline (not allowed in XML
// 1.0 text) become spaces.
inline std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n') out += ' ';
        else out += c;
    }
  }
  return out;
}

}  // namespace m3
