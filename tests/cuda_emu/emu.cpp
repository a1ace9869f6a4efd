// The fiber scheduler behind cuda_emu.h, and the CUDA variant's float64
// rule for the emulated ops (at the end).

// Before cuda_emu.h, whose CUDA keywords are macros.
#include <torch/library.h>

#include "cuda_emu.h"

#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

// AddressSanitizer must be told about every stack switch, or it reports the
// fibers' stacks as overflows.
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

namespace causal_conv1d::cuda::emu {
namespace {

constexpr unsigned kWarp = 32;
constexpr size_t kStackBytes = 256 * 1024;

enum Wait { kRunning = 0, kBlockBarrier = 1, kWarpBarrier = 2 };

struct Fiber {
  ucontext_t ctx;
  ThreadState state;
  Wait wait = kRunning;
  bool done = false;
  void* fake_stack = nullptr;  // ASan bookkeeping while switched out
};

struct Scheduler {
  ucontext_t main;
  std::vector<Fiber> fibers;
  std::vector<std::unique_ptr<char[]>> stacks;
  std::vector<float> slots;  // one per thread, for shuffles
  Fiber* cur = nullptr;
  const std::function<void()>* body = nullptr;
  dim3 block, bdim, gdim;
  const void* main_stack = nullptr;  // the scheduler's stack (for ASan)
  size_t main_stack_size = 0;
};

Scheduler& sched() {
  static Scheduler s;
  return s;
}

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "cuda_emu: %s (block %u)\n", what, sched().block.x);
  std::abort();
}

// Stack-switch notes for ASan: before a switch, where we go; after it, that
// we arrived (a fiber that is exiting passes no fake-stack slot).
void leave(void** fake_stack, const void* to, size_t size) {
#if EMU_ASAN
  __sanitizer_start_switch_fiber(fake_stack, to, size);
#else
  (void)fake_stack, (void)to, (void)size;
#endif
}
void arrive(void* fake_stack) {
#if EMU_ASAN
  Scheduler& s = sched();
  __sanitizer_finish_switch_fiber(fake_stack, &s.main_stack, &s.main_stack_size);
#else
  (void)fake_stack;
#endif
}

void switch_to_main(Fiber* me, bool exiting) {
  Scheduler& s = sched();
  leave(exiting ? nullptr : &me->fake_stack, s.main_stack, s.main_stack_size);
  if (!exiting) {
    swapcontext(&me->ctx, &s.main);
    arrive(me->fake_stack);
  }
}

void entry() {
  Scheduler& s = sched();
  arrive(nullptr);
  (*s.body)();
  s.cur->done = true;
  switch_to_main(s.cur, true);  // returning resumes uc_link (the scheduler)
}

void wait_at(Wait w) {
  Scheduler& s = sched();
  Fiber* me = s.cur;
  me->wait = w;
  switch_to_main(me, false);
}

// Releases every barrier whose group has fully arrived; false if none.
bool release() {
  Scheduler& s = sched();
  const size_t n = s.fibers.size();
  bool any = false;
  bool block_all = true, block_some = false;
  for (auto& f : s.fibers) {
    if (f.wait == kBlockBarrier) block_some = true;
    if (!f.done && f.wait != kBlockBarrier) block_all = false;
  }
  if (block_some) {
    for (auto& f : s.fibers)
      if (f.done) fail("__syncthreads reached after some threads of the block exited");
    if (block_all) {
      for (auto& f : s.fibers) f.wait = kRunning;
      return true;
    }
  }
  for (size_t w0 = 0; w0 < n; w0 += kWarp) {
    const size_t w1 = w0 + kWarp < n ? w0 + kWarp : n;
    bool all = true, some = false;
    for (size_t i = w0; i < w1; ++i) {
      if (s.fibers[i].wait == kWarpBarrier) some = true;
      if (s.fibers[i].wait != kWarpBarrier) all = false;
    }
    if (!some) continue;
    for (size_t i = w0; i < w1; ++i)
      if (s.fibers[i].done) fail("warp shuffle with lanes that already exited");
    if (all) {
      for (size_t i = w0; i < w1; ++i) s.fibers[i].wait = kRunning;
      any = true;
    }
  }
  return any;
}

void run_block(unsigned threads) {
  Scheduler& s = sched();
  s.fibers.assign(threads, Fiber{});
  while (s.stacks.size() < threads) s.stacks.emplace_back(new char[kStackBytes]);
  s.slots.assign(threads, 0.f);
  for (unsigned i = 0; i < threads; ++i) {
    Fiber& f = s.fibers[i];
    f.state.thread_idx.x = i;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = s.stacks[i].get();
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &s.main;
    makecontext(&f.ctx, entry, 0);
  }
  for (;;) {
    for (auto& f : s.fibers) {
      if (f.done || f.wait != kRunning) continue;
      s.cur = &f;
      void* main_fake = nullptr;
      leave(&main_fake, f.ctx.uc_stack.ss_sp, f.ctx.uc_stack.ss_size);
      swapcontext(&s.main, &f.ctx);
#if EMU_ASAN
      __sanitizer_finish_switch_fiber(main_fake, nullptr, nullptr);
#endif
      s.cur = nullptr;
    }
    bool live = false;
    for (auto& f : s.fibers) live = live || !f.done;
    if (!live) break;
    if (!release()) fail("deadlock: threads wait at barriers that can never complete");
  }
}

}  // namespace

ThreadState& current() {
  if (sched().cur == nullptr) fail("threadIdx used outside a kernel");
  return sched().cur->state;
}
dim3& block_idx() { return sched().block; }
dim3& block_dim() { return sched().bdim; }
dim3& grid_dim() { return sched().gdim; }

void run_grid(unsigned blocks, unsigned threads, const std::function<void()>& body) {
  Scheduler& s = sched();
  if (s.body != nullptr) fail("nested kernel launch");
  s.body = &body;
  s.bdim = dim3{threads, 1, 1};
  s.gdim = dim3{blocks, 1, 1};
  for (unsigned b = 0; b < blocks; ++b) {
    s.block = dim3{b, 1, 1};
    run_block(threads);
  }
  s.body = nullptr;
}

void syncthreads() { wait_at(kBlockBarrier); }

float shfl(float v, unsigned (*src_lane)(unsigned lane, int arg), int arg) {
  Scheduler& s = sched();
  const unsigned tid = s.cur->state.thread_idx.x;
  const unsigned src = (tid & ~(kWarp - 1)) | (src_lane(tid % kWarp, arg) % kWarp);
  s.slots[tid] = v;
  wait_at(kWarpBarrier);
  const float r = s.slots[src];
  wait_at(kWarpBarrier);
  return r;
}

}  // namespace causal_conv1d::cuda::emu

// ---------------------------------------------------------------------------
// float64, refused as the CUDA variant refuses it. checks.cpp allows float64
// x and weight on the CPU only, and the emulator's tensors are CPU tensors,
// so its check lets them through to kernels that have no float64 instance
// (dispatch_x runs anything that is not 16-bit as float). A BackendSelect
// kernel of each op (the key is in every call's key set and runs just before
// the backend's kernel) raises what checks.cpp raises for a CUDA tensor: the
// same exception type and text, for the same argument, and only where the
// checks that precede check_float in checks.cpp (the ranks of x and weight,
// weight on x's device) pass, so that any other error is still the native
// one. tests/test_fwd.py, test_bwd.py, test_update.py and test_packed.py
// compare the text with the one the native checks give for meta tensors.

namespace {

struct Float64Rule {
  const char* op;           // schema name, without the namespace
  const char* public_name;  // checks.cpp's Ctx::op
  int64_t x_rank_min, x_rank_max;
  int weight_arg;  // the weight's argument index, or -1: none
};

constexpr Float64Rule kFloat64Rules[] = {
    {"fwd", "causal_conv1d_fn", 3, 3, 1},
    {"fwd_out", "causal_conv1d_fn", 3, 3, 1},
    {"bwd", "causal_conv1d_fn backward", 3, 3, 1},
    {"update", "causal_conv1d_update", 2, 3, 2},
    {"varlen_states", "causal_conv1d_varlen_states", 2, 2, -1},
    {"fwd_packed", "causal_conv1d_packed_fwd", 2, 2, 1},
};

const Float64Rule& float64_rule(const c10::OperatorHandle& op) {
  const std::string& name = op.schema().name();
  const std::string base = name.substr(name.rfind(':') + 1);
  for (const Float64Rule& r : kFloat64Rules)
    if (base == r.op) return r;
  TORCH_INTERNAL_ASSERT(false, "cuda_emu: no float64 rule for ", name);
}

void refuse_float64(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                    torch::jit::Stack* stack) {
  const Float64Rule& rule = float64_rule(op);
  const size_t first = stack->size() - op.schema().arguments().size();
  const at::Tensor& x = (*stack)[first].toTensor();
  const at::Tensor* weight =
      rule.weight_arg >= 0 ? &(*stack)[first + rule.weight_arg].toTensor() : nullptr;
  const bool precede_pass = x.dim() >= rule.x_rank_min && x.dim() <= rule.x_rank_max &&
                            (weight == nullptr ||
                             (weight->dim() == 2 && weight->device() == x.device()));
  if (precede_pass) {
    TORCH_CHECK_TYPE(x.scalar_type() != at::kDouble, rule.public_name,
                     ": x is float64, which is supported on CPU only");
    TORCH_CHECK_TYPE(weight == nullptr || weight->scalar_type() != at::kDouble, rule.public_name,
                     ": weight is float64, which is supported on CPU only");
  }
  op.redispatchBoxed(keys & c10::DispatchKeySet(c10::DispatchKeySet::FULL_AFTER,
                                                c10::DispatchKey::BackendSelect),
                     stack);
}

}  // namespace

TORCH_LIBRARY_IMPL(TORCH_EXTENSION_NAME, BackendSelect, m) {
  for (const Float64Rule& r : kFloat64Rules)
    m.impl(r.op, torch::CppFunction::makeFromBoxedFunction<&refuse_float64>());
}
