// Output memory for the CPU ops.
//
// A fresh CPU output of a few MiB is first touched by the kernel that fills
// it, and with 4 KiB pages those page faults cost more than the kernel
// (`benchmarks/bench.py fwd` shows it: several times the forward's own
// time for a 16 MiB output). glibc reuses freed heap memory below
// its mmap threshold (at most 32 MiB), but trims the heap as soon as its
// free top passes twice that threshold, which a model's other allocations
// make happen all the time, and it unmaps blocks above the threshold on
// every free.
//
// So outputs of kMinBytes and more take their memory from here instead:
// blocks of whole 2 MiB huge pages (transparent huge pages on request,
// Linux's "madvise" mode: one fault per 2 MiB), and a freed block waits in a
// small LRU cache for the next output of the same rounded size, which is
// what a model's layers ask for call after call. Cached blocks stay
// resident (MADV_FREE, which would let the kernel reclaim them, costs as
// much in TLB flushes as the page faults it saves), so the cache is
// bounded: at most CAUSAL_CONV1D_CPU_CACHE_MB MiB
// (default 256; 0 unmaps every block when its tensor is freed), least
// recently freed blocks unmapped first.
//
// Not used (plain at::empty instead): on devices other than the CPU, off
// Linux, and under AddressSanitizer, which must see every buffer the
// kernels write.
#include "output_memory.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <list>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty_strided.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CAUSAL_CONV1D_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define CAUSAL_CONV1D_ASAN 1
#endif

#if defined(__linux__) && !defined(CAUSAL_CONV1D_ASAN)
#define CAUSAL_CONV1D_OUTPUT_BLOCKS 1
#include <pthread.h>
#include <sys/mman.h>
#endif

namespace causal_conv1d {

#if defined(CAUSAL_CONV1D_OUTPUT_BLOCKS)
namespace {

constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kMinBytes = size_t(2) << 20;  // smaller outputs: torch's allocator

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

size_t cache_limit_from_env() {
  const char* env = std::getenv("CAUSAL_CONV1D_CPU_CACHE_MB");
  if (env == nullptr || *env == '\0') return size_t(256) << 20;
  const std::string text(env);
  const bool digits = text.find_first_not_of("0123456789") == std::string::npos;
  errno = 0;
  const unsigned long long mb = digits ? std::strtoull(env, nullptr, 10) : 0;
  TORCH_CHECK(digits && errno != ERANGE && mb <= (std::numeric_limits<size_t>::max() >> 20),
              "CAUSAL_CONV1D_CPU_CACHE_MB must be a whole number of MiB, got '", env, "'");
  return size_t(mb) << 20;
}

class OutputBlocks final : public c10::Allocator {
 public:
  OutputBlocks() : limit_(cache_limit_from_env()) {
    // A fork while another thread holds the lock would leave it locked in
    // the child forever: hold it across fork() instead.
    pthread_atfork([] { get().mutex_.lock(); }, [] { get().mutex_.unlock(); },
                   [] { get().mutex_.unlock(); });
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes) return c10::GetCPUAllocator()->allocate(n);
    const size_t bytes = round_up(n, kHugePage);
    void* base = take_cached(bytes);
    if (base == nullptr) base = map_block(bytes);
    // Out of address space or memory: torch's allocator reports it properly.
    if (base == nullptr) return c10::GetCPUAllocator()->allocate(n);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_.emplace(base, bytes);
    }
    // Context == data, as torch's own CPU allocator does: copy-on-write
    // clones (torch._lazy_clone) accept only such "simple" data pointers.
    return {base, base, &OutputBlocks::release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }

  // The allocator outlives every tensor (it is never destroyed: tensors may
  // be freed during interpreter shutdown), so the deleter can reach it.
  static OutputBlocks& get() {
    static OutputBlocks* const instance = new OutputBlocks();
    return *instance;
  }

 private:
  struct Cached {
    void* base;
    size_t bytes;  // a multiple of kHugePage; base is aligned to kHugePage
  };

  void* take_cached(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = cache_.begin(); it != cache_.end(); ++it) {
      if (it->bytes == bytes) {
        void* base = it->base;
        cache_.erase(it);
        cached_bytes_ -= bytes;
        return base;
      }
    }
    return nullptr;
  }

  static void* map_block(size_t bytes) {
    // Map one huge page more than needed and cut it to an aligned range.
    const size_t span = bytes + kHugePage;
    void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const uintptr_t begin = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = round_up(begin, kHugePage);
    if (aligned > begin) munmap(raw, aligned - begin);
    const uintptr_t tail = aligned + bytes, end = begin + span;
    if (end > tail) munmap(reinterpret_cast<void*>(tail), end - tail);
    void* base = reinterpret_cast<void*>(aligned);
#if defined(MADV_HUGEPAGE)
    madvise(base, bytes, MADV_HUGEPAGE);  // refused where THP is off: then 4 KiB pages
#endif
    return base;
  }

  static void release(void* base) { get().give_back(base); }

  void give_back(void* base) {
    std::vector<Cached> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto it = live_.find(base);
      TORCH_INTERNAL_ASSERT(it != live_.end(), "causal_conv1d: freeing an unknown output block");
      const Cached block{base, it->second};
      live_.erase(it);
      if (block.bytes > limit_) {
        evicted.push_back(block);
      } else {
        cache_.push_front(block);
        cached_bytes_ += block.bytes;
        while (cached_bytes_ > limit_) {
          evicted.push_back(cache_.back());
          cached_bytes_ -= cache_.back().bytes;
          cache_.pop_back();
        }
      }
    }
    for (const Cached& old : evicted) munmap(old.base, old.bytes);
  }

  const size_t limit_;
  std::mutex mutex_;
  std::unordered_map<void*, size_t> live_;  // blocks held by tensors: base -> bytes
  std::list<Cached> cache_;                 // free blocks, most recently freed first
  size_t cached_bytes_ = 0;
};

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, at::IntArrayRef strides,
                        const at::TensorOptions& options) {
  if (!options.device().is_cpu()) return at::empty_strided(sizes, strides, options);
  return at::detail::empty_strided_generic(sizes, strides, &OutputBlocks::get(),
                                           c10::DispatchKeySet(c10::DispatchKey::CPU),
                                           c10::typeMetaToScalarType(options.dtype()));
}

#else

at::Tensor empty_output(at::IntArrayRef sizes, at::IntArrayRef strides,
                        const at::TensorOptions& options) {
  return at::empty_strided(sizes, strides, options);
}

#endif

}  // namespace causal_conv1d
