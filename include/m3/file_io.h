// m3/file_io.h — whole-file reads and crash-safe whole-file writes, shared by everything that
// persists state (checkpoints, token shards, banks, indexes).
#pragma once

#include <string>

namespace m3 {

// The whole file. Throws m3::Error "<path>: cannot open (<reason>)" when it cannot be read.
std::string read_file(const std::string& path);

// Replaces `path` with `bytes` so that a reader (or a process restarted after a crash) sees the
// old or the new content, never a mix: writes <path>.tmp.<pid>, fsyncs it, renames it over
// `path`, fsyncs the directory. The temporary file is the process's own, so several processes
// may replace one file at once (servers refreshing a shared bank cache): the last rename wins.
void write_file_atomic(const std::string& path, const std::string& bytes);

// The current time as recorded in persisted metadata: "2026-11-26T10:36:15Z" (UTC).
std::string utc_timestamp();

// fsync a file or a directory (its entries: renames and creations inside it).
void fsync_path(const std::string& path, bool directory);

}  // namespace m3
