// ThreadPool: every range of a parallel_for runs exactly once, before the call returns, under
// one thread index; and a worker the OS does not schedule cannot hold the caller, which runs the
// ranges no worker has claimed.
#include <gtest/gtest.h>
#include <sched.h>

#include <atomic>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "m3/thread_pool.h"

namespace {

TEST(ThreadPool, EveryIndexRunsExactlyOnceBeforeTheCallReturns) {
  for (int threads : {2, 3, 4}) {
    m3::ThreadPool pool(threads);
    for (int64_t n : {2, 3, 7, 100}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      std::vector<std::atomic<int>> per_thread(static_cast<size_t>(threads));
      for (int call = 0; call < 3000; ++call) {
        for (auto& h : hits) h.store(0);
        for (auto& t : per_thread) t.store(0);
        pool.parallel_for(n, [&](int64_t begin, int64_t end, int thread) {
          ASSERT_GE(thread, 0);
          ASSERT_LT(thread, threads);
          per_thread[static_cast<size_t>(thread)].fetch_add(1);
          for (int64_t i = begin; i < end; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
        });
        for (int64_t i = 0; i < n; ++i)
          ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << threads << " threads, n " << n << ", call " << call
                                                            << ", index " << i;
        for (int t = 0; t < threads; ++t)
          ASSERT_LE(per_thread[static_cast<size_t>(t)].load(), 1) << "thread index " << t << " ran twice in one call";
      }
    }
  }
}

// Pins every thread of this process to one CPU; false when the system does not allow it.
bool pin_process_to_one_cpu() {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(0, &one);
  bool ok = true;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/task")) {
    const pid_t tid = static_cast<pid_t>(std::stoi(entry.path().filename().string()));
    ok = sched_setaffinity(tid, sizeof one, &one) == 0 && ok;
  }
  return ok;
}

TEST(ThreadPool, CallerRunsTheRangesOfAWorkerThatIsNotScheduled) {
  cpu_set_t before;
  ASSERT_EQ(sched_getaffinity(0, sizeof before, &before), 0);
  m3::ThreadPool pool(2);
  // On one CPU the worker only runs when the caller is preempted, so most calls find range 1
  // unclaimed when range 0 is done. A caller that waited for the worker instead would never run it.
  if (!pin_process_to_one_cpu()) GTEST_SKIP() << "sched_setaffinity is not permitted here";
  const std::thread::id caller = std::this_thread::get_id();
  int by_caller = 0, calls = 2000;
  for (int call = 0; call < calls; ++call) {
    std::atomic<bool> range1_on_caller{false};
    pool.parallel_for(2, [&](int64_t, int64_t, int thread) {
      if (thread == 1 && std::this_thread::get_id() == caller) range1_on_caller = true;
    });
    by_caller += range1_on_caller ? 1 : 0;
  }
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/task"))
    sched_setaffinity(static_cast<pid_t>(std::stoi(entry.path().filename().string())), sizeof before, &before);
  EXPECT_GT(by_caller, 0) << "of " << calls << " calls on one CPU, the caller never ran the worker's range";
}

}  // namespace
