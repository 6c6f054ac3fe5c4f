// Shared helpers for tests: temp directories, small random models, running the m3 binary and other
// child processes.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <functional>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "m3/config.h"
#include "m3/error.h"
#include "m3/model.h"

namespace m3::test {

// A fresh directory under the system temp dir, removed at scope exit.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() / ("m3-test-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::error_code ec; std::filesystem::remove_all(path_, ec); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

inline std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void write_all(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Writes a random memory3-test model without a tokenizer.
inline ModelConfig write_test_model(const std::string& path, uint64_t seed = 3) {
  ModelConfig c = model_preset("memory3-test");
  save_model(path, c, "", init_weights(c, seed));
  return c;
}

// A wait status as a shell reports it: the exit code, or 128 + the signal that ended the process.
inline int exit_code_of(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

struct RunResult {
  int exit_code = -1;
  std::string out;  // stdout and stderr together
};

// Runs a shell command line, capturing its output.
inline RunResult run(const std::string& cmd) {
  RunResult r;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  r.exit_code = exit_code_of(::pclose(p));
  return r;
}

inline std::string m3_binary() { return M3_BINARY; }

// `m3 <args>` fails as bad input must: exactly one line of output, starting "m3: error:",
// containing `needle`, exit code 1.
inline void expect_error(const std::string& args, const std::string& needle) {
  const auto r = run(m3_binary() + " " + args);
  EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.out;
  EXPECT_EQ(r.out.rfind("m3: error: ", 0), 0u) << args << "\n" << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  EXPECT_NE(r.out.find(needle), std::string::npos) << "expected '" << needle << "' in: " << r.out;
}

// A child process with its stdout and stderr on a pipe, read through out(). A child not waited
// for is killed (SIGKILL) and reaped when the object goes, so that a failed ASSERT leaves no
// process running.
class ChildProcess {
 public:
  ChildProcess() = default;
  ChildProcess(pid_t pid, FILE* output) : pid_(pid), out_(output) {}  // takes both over
  ~ChildProcess() { release(); }
  ChildProcess(ChildProcess&& o) noexcept { *this = std::move(o); }
  ChildProcess& operator=(ChildProcess&& o) noexcept {
    if (this != &o) {
      release();
      pid_ = std::exchange(o.pid_, -1);
      out_ = std::exchange(o.out_, nullptr);
      reaped_ = std::exchange(o.reaped_, false);
    }
    return *this;
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  FILE* out() const { return out_; }

  // pid -1 would signal every process of this user (kill(2)): only a live child is signalled.
  void send_signal(int sig) {
    if (running()) ::kill(pid_, sig);
  }

  // Waits for the child to end: the exit_code_of() its status; -1 if there is no child to wait for.
  int wait_exit() {
    if (!running()) return -1;  // waitpid(-1) would reap any child
    int status = 0;
    ::waitpid(pid_, &status, 0);
    reaped_ = true;
    return exit_code_of(status);
  }

  // As wait_exit(), but a child still running after timeout_s is killed (SIGKILL) and -1 returned.
  int wait_exit(double timeout_s) {
    if (!running()) return -1;
    const auto t0 = std::chrono::steady_clock::now();
    int status = 0;
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < timeout_s) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        reaped_ = true;
        return exit_code_of(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    kill_and_reap();
    return -1;
  }

 private:
  bool running() const { return pid_ > 0 && !reaped_; }

  void kill_and_reap() {
    if (!running()) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    reaped_ = true;
  }

  void release() {
    kill_and_reap();
    if (out_) std::fclose(out_);
    out_ = nullptr;
  }

  pid_t pid_ = -1;
  FILE* out_ = nullptr;
  bool reaped_ = false;
};

// Starts args[0] (a path: no PATH search) with argv `args`, in this process's environment plus
// extra_env ("NAME=value"). extra_env is appended, so a NAME already set here keeps its value in
// the child (getenv finds the first).
inline ChildProcess spawn(const std::vector<std::string>& args, const std::vector<std::string>& extra_env = {}) {
  // Everything the child needs is built before fork: a forked child of a threaded process may
  // only make async-signal-safe calls (no malloc) before exec.
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) env.push_back(*e);
  env.insert(env.end(), extra_env.begin(), extra_env.end());
  std::vector<char*> argv, envp;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  argv.push_back(nullptr);
  envp.push_back(nullptr);
  int fds[2];
  EXPECT_EQ(::pipe2(fds, O_CLOEXEC), 0);  // O_CLOEXEC: no other child inherits either end
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  return ChildProcess(pid, ::fdopen(fds[0], "r"));
}

// One line from `in`, without its '\n'; "" at the end of the input (check feof to tell an empty line).
inline std::string read_line(FILE* in) {
  std::string line;
  for (int ch; (ch = std::fgetc(in)) != EOF && ch != '\n';) line += static_cast<char>(ch);
  return line;
}

// ‖a − b‖ / ‖b‖ (a against a double-precision reference b)
inline double rel_err(const float* a, const double* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

// Normalised mean squared error Σ(a−b)²/Σb², b the reference.
inline double nmse(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  return num / std::max(den, 1e-300);
}

// The message of the m3::Error that f throws, or "<no error>".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace m3::test
