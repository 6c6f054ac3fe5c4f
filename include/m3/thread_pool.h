// m3/thread_pool.h — a fixed set of worker threads for data-parallel loops.
//
// One pool per process is the rule: kernels split rows across it, and OpenBLAS runs single-threaded
// inside the pool's threads (matmul sets that), so no second set of threads competes for the cores.
// parallel_for is called from one thread at a time (REQUIRES: external synchronization); it
// returns after every chunk ran. The calling thread works too, as thread index 0, and then runs
// any range whose worker has not started it yet (a worker the OS has not scheduled must not stall
// the caller): each range index runs exactly once per call, on whichever thread claims it first.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace m3 {

class ThreadPool {
 public:
  // n_threads <= 0 means "all hardware threads".
  explicit ThreadPool(int n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(begin, end, thread) over [0, n) split into size() contiguous ranges.
  using RangeFn = std::function<void(int64_t begin, int64_t end, int thread)>;
  void parallel_for(int64_t n, const RangeFn& fn);

 private:
  void worker(int index);

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  const RangeFn* job_ = nullptr;
  int64_t job_n_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};  // ranges of the current job not yet finished
  // claimed_[i]: the last generation whose range i was claimed (by worker i or by the caller).
  std::unique_ptr<std::atomic<uint64_t>[]> claimed_;
  bool claim(int index, uint64_t gen);
  bool stop_ = false;
};

// Sets OpenBLAS's own thread count. m3's matmul sets 1 on first use; benchmarks of raw sgemm may
// raise it.
void set_blas_threads(int n);

}  // namespace m3
