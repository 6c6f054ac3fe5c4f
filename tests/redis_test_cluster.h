// A throwaway Redis Cluster for a test: scripts/redis-cluster.sh (6 nodes on 127.0.0.1, 3
// masters and 3 replicas) in a temporary directory, on ports chosen from the test's pid (ctest
// runs tests in parallel), stopped when the object goes — and also if the test process dies
// without unwinding (a crash, a kill): a reaper child waits for the end of a pipe only this
// process holds and then runs the script's stop.
//
// A machine without redis-server FAILS these tests with a message saying so (CI must not pass
// them by skipping).
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "test_helpers.h"

namespace m3::test {

class RedisTestCluster {
 public:
  struct Node {
    std::string id;
    int port = 0;
    bool master = false;
    bool failed = false;        // flagged fail (or pfail) by the node asked
    std::string master_id;      // for a replica
    std::vector<std::pair<int, int>> slots;
  };

  RedisTestCluster() {
    if (run("command -v redis-server && command -v redis-cli").exit_code != 0) {
      ADD_FAILURE() << "redis-server and redis-cli are needed for the Redis Cluster tests and are not installed "
                       "(scripts/setup.sh installs them: apt-get install redis-server)";
      throw std::runtime_error("redis-server is not installed");
    }
    const std::string script = std::string(M3_SOURCE_DIR) + "/scripts/redis-cluster.sh";
    std::string last;
    for (int attempt = 0; attempt < 4; ++attempt) {
      // 12 consecutive ports (clients, then the cluster bus) in 12000..29999, below the ephemeral range.
      base_ = 12000 + int((uint64_t(::getpid()) * 7 + uint64_t(attempt) * 131) % 1500) * 12;
      dir_ = tmp_.file("cluster-" + std::to_string(base_));
      start_reaper(script);
      const auto t0 = std::chrono::steady_clock::now();
      const RunResult r = run(script + " start " + dir_ + " " + std::to_string(base_));
      start_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r.exit_code == 0) return;
      last = r.out;
      stop();
    }
    ADD_FAILURE() << "could not start a Redis Cluster: " << last;
    throw std::runtime_error("no Redis Cluster");
  }

  ~RedisTestCluster() { stop(); }
  RedisTestCluster(const RedisTestCluster&) = delete;
  RedisTestCluster& operator=(const RedisTestCluster&) = delete;

  int port(int i) const { return base_ + i; }
  double start_seconds() const { return start_seconds_; }
  // Two seeds are enough: any reachable node gives the slot map.
  std::string seeds() const { return "127.0.0.1:" + std::to_string(port(0)) + ",127.0.0.1:" + std::to_string(port(1)); }
  std::string uri(const std::string& bank, const std::string& options = "") const {
    return "redis://" + seeds() + "/" + bank + (options.empty() ? "" : "?" + options);
  }

  // redis-cli -p PORT ARGS (output, trimmed of the final newline).
  std::string cli(int node_port, const std::string& args) const {
    std::string out = run("redis-cli -p " + std::to_string(node_port) + " " + args).out;
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
    return out;
  }

  // CLUSTER NODES as `asked` sees it.
  std::vector<Node> nodes(int asked) const {
    std::vector<Node> out;
    std::istringstream in(cli(asked, "cluster nodes"));
    for (std::string line; std::getline(in, line);) {
      std::istringstream f(line);
      Node n;
      std::string addr, flags, master, ping, pong, epoch, link;
      if (!(f >> n.id >> addr >> flags >> master >> ping >> pong >> epoch >> link)) continue;
      n.port = std::stoi(addr.substr(addr.find(':') + 1, addr.find('@') - addr.find(':') - 1));
      n.master = flags.find("master") != std::string::npos;
      n.failed = flags.find("fail") != std::string::npos;
      n.master_id = master == "-" ? "" : master;
      for (std::string range; f >> range;) {
        if (range[0] == '[') continue;  // a migrating/importing note
        const size_t dash = range.find('-');
        const int lo = std::stoi(range.substr(0, dash));
        n.slots.push_back({lo, dash == std::string::npos ? lo : std::stoi(range.substr(dash + 1))});
      }
      out.push_back(n);
    }
    return out;
  }
  static bool owns(const Node& n, int slot) {
    for (const auto& [lo, hi] : n.slots)
      if (lo <= slot && slot <= hi) return true;
    return false;
  }

  // SIGKILL for the node on `node_port` (its pid file is in the cluster's directory).
  void kill_node(int node_port) const {
    const std::string pid_text = read_all(dir_ + "/" + std::to_string(node_port) + "/redis.pid");
    ASSERT_FALSE(pid_text.empty()) << "no pid file for port " << node_port;
    ASSERT_EQ(::kill(pid_t(std::stol(pid_text)), SIGKILL), 0);
  }

  void stop() {
    if (dir_.empty()) return;
    run(std::string(M3_SOURCE_DIR) + "/scripts/redis-cluster.sh stop " + dir_);
    if (reaper_fd_ >= 0) {
      ::close(reaper_fd_);  // the reaper runs stop once more (nothing left to kill) and exits
      reaper_fd_ = -1;
      int status = 0;
      ::waitpid(reaper_, &status, 0);
    }
    dir_.clear();
  }

 private:
  void start_reaper(const std::string& script) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    const pid_t pid = ::fork();
    if (pid == 0) {
      // Only async-signal-safe calls until exec. Close everything but the read end, so that no
      // other reaper keeps this one's pipe open.
      for (int fd = 3; fd < 1024; ++fd)
        if (fd != fds[0]) ::close(fd);
      char c;
      for (;;) {
        const ssize_t r = ::read(fds[0], &c, 1);
        if (r == 0 || (r < 0 && errno != EINTR)) break;
      }
      ::execl("/bin/bash", "bash", script.c_str(), "stop", dir_.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(fds[0]);
    reaper_ = pid;
    reaper_fd_ = fds[1];
  }

  TempDir tmp_;
  std::string dir_;
  int base_ = 0;
  double start_seconds_ = 0;
  pid_t reaper_ = -1;
  int reaper_fd_ = -1;
};

}  // namespace m3::test
