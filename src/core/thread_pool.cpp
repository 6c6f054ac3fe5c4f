// Thread pool: workers sleep on a condition variable between jobs and spin briefly after one, so
// the ~150 back-to-back matmuls of a decoded token do not each pay a full wake-up. The caller,
// once its own range is done, claims and runs the ranges no worker has started: on a loaded
// machine a descheduled worker would otherwise hold every matmul of a token for a time slice.
#include "m3/thread_pool.h"

#include <algorithm>
#include <chrono>

extern "C" void openblas_set_num_threads(int);

namespace m3 {

namespace {
// Splits [0, n) into `parts` contiguous ranges; range `index` is [begin, end).
void split_range(int64_t n, int parts, int index, int64_t* begin, int64_t* end) {
  const int64_t base = n / parts, extra = n % parts;
  *begin = index * base + std::min<int64_t>(index, extra);
  *end = *begin + base + (index < extra ? 1 : 0);
}
}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0) n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  n_threads_ = n_threads;
  claimed_ = std::make_unique<std::atomic<uint64_t>[]>(static_cast<size_t>(n_threads_));
  for (int i = 0; i < n_threads_; ++i) claimed_[static_cast<size_t>(i)].store(0, std::memory_order_relaxed);
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

// Range `index` of generation `gen` runs on the thread that claims it first.
bool ThreadPool::claim(int index, uint64_t gen) {
  std::atomic<uint64_t>& slot = claimed_[static_cast<size_t>(index)];
  uint64_t seen = slot.load(std::memory_order_acquire);
  while (seen < gen)
    if (slot.compare_exchange_weak(seen, gen, std::memory_order_acq_rel)) return true;
  return false;
}

void ThreadPool::parallel_for(int64_t n, const RangeFn& fn) {
  if (n <= 0) return;
  if (n_threads_ == 1 || n == 1) {
    fn(0, n, 0);
    return;
  }
  uint64_t gen;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = &fn;
    job_n_ = n;
    pending_.store(n_threads_ - 1, std::memory_order_relaxed);
    gen = generation_.fetch_add(1, std::memory_order_release) + 1;
  }
  wake_.notify_all();
  int64_t begin, end;
  split_range(n, n_threads_, 0, &begin, &end);
  if (begin < end) fn(begin, end, 0);
  // Ranges no worker has claimed yet: run them here rather than wait for their thread.
  for (int i = 1; i < n_threads_; ++i) {
    if (!claim(i, gen)) continue;
    split_range(n, n_threads_, i, &begin, &end);
    if (begin < end) fn(begin, end, i);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
  // Wait for the workers that did claim theirs.
  while (pending_.load(std::memory_order_acquire) != 0) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }
}

void ThreadPool::worker(int index) {
  uint64_t seen = 0;
  for (;;) {
    // Spin a little for the next job before sleeping.
    uint64_t gen = generation_.load(std::memory_order_acquire);
    for (int spin = 0; gen == seen && spin < 4000; ++spin) {
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
      gen = generation_.load(std::memory_order_acquire);
    }
    if (gen == seen) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen || stop_; });
      gen = generation_.load(std::memory_order_acquire);
    }
    const RangeFn* job;
    int64_t n;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stop_) return;
      job = job_;
      n = job_n_;
      gen = generation_.load(std::memory_order_acquire);  // the job just read belongs to this generation
    }
    seen = gen;
    // The caller may have run this range already; then the job may be gone too, so touch nothing.
    if (!claim(index, gen)) continue;
    int64_t begin, end;
    split_range(n, n_threads_, index, &begin, &end);
    if (begin < end) (*job)(begin, end, index);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void set_blas_threads(int n) { openblas_set_num_threads(std::max(1, n)); }

}  // namespace m3
