// A small pool of threads for the runtime's parallel loops (no OpenMP: it does not build everywhere).
// Each index of a range is computed by exactly one thread, so results do not depend on the thread count.
// A decoding step is many short loops: workers spin a while on the next loop before they sleep (as
// OpenMP's do), since waking a sleeping thread costs more than a small loop.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace runtime {

class ThreadPool {
 public:
  explicit ThreadPool(int threads) {
    for (int t = 1; t < std::max(threads, 1); ++t) workers_.emplace_back([this, t] { work(t); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_.store(true);
    }
    wake_.notify_all();
    for (auto& worker : workers_) worker.join();
  }
  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // body(begin, end) over [0, n) in parts of at least `grain` indices, the caller's thread taking one
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
    const int64_t parts = std::min<int64_t>(size(), std::max<int64_t>(1, n / std::max<int64_t>(grain, 1)));
    if (parts <= 1) {
      if (n > 0) body(0, n);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      body_ = &body, n_ = n, parts_ = parts;
      pending_.store(parts - 1);
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    body(0, n / parts);
    while (pending_.load() != 0) {}  // the other parts are as short as this one
    body_ = nullptr;
  }

 private:
  void work(int index) {
    uint64_t seen = 0;
    while (true) {
      const auto spinning = std::chrono::steady_clock::now();
      while (generation_.load() == seen && !stopping_.load() &&
             std::chrono::steady_clock::now() - spinning < std::chrono::microseconds(200)) {}
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_.load() || generation_.load() != seen; });
      if (stopping_.load()) return;
      seen = generation_.load();
      if (index >= parts_) continue;
      const auto* body = body_;
      const int64_t begin = n_ * index / parts_, end = n_ * (index + 1) / parts_;
      lock.unlock();
      (*body)(begin, end);
      pending_.fetch_sub(1);
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  const std::function<void(int64_t, int64_t)>* body_ = nullptr;
  int64_t n_ = 0, parts_ = 0;
  std::atomic<int64_t> pending_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stopping_{false};
};

}  // namespace runtime
