#include "checks.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/SmallVector.h>

namespace causal_conv1d {
namespace {

std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(t.size(i));
  }
  return s + "]";
}

// Everything one check needs to phrase its message.
struct Ctx {
  const char* op;      // public function name, e.g. "causal_conv1d_fn"
  at::Device device;   // where x lives; every tensor must be there
};

// The name Python users know: "torch.float32", "torch.int64", ...
std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kShort: return "torch.int16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kBool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(t);
  }
}

bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    case at::kDouble: return DType::Float64;
    default: return DType::Float32;
  }
}

void check_device(const Ctx& c, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device() == c.device, c.op, ": ", name, " must be on ", c.device,
                    " like x, got ", t.device());
}

// rank and exact sizes; a size of -1 matches anything.
void check_shape(const Ctx& c, const at::Tensor& t, const char* name, at::IntArrayRef sizes,
                 const char* meaning) {
  const auto have = t.sizes();
  bool ok = have.size() == sizes.size();
  for (size_t i = 0; ok && i < sizes.size(); ++i) ok = sizes[i] < 0 || have[i] == sizes[i];
  if (ok) return;
  std::string want = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i) want += ", ";
    want += sizes[i] < 0 ? std::string("*") : std::to_string(sizes[i]);
  }
  want += "]";
  TORCH_CHECK_VALUE(false, c.op, ": ", name, " must have shape ", want, " ", meaning, ", got ",
                    shape_str(t));
}

void check_dtype(const Ctx& c, const at::Tensor& t, const char* name, at::ScalarType want,
                 const char* why) {
  TORCH_CHECK_TYPE(t.scalar_type() == want, c.op, ": ", name, " must be ", dtype_name(want), " (",
                   why, "), got ", dtype_name(t.scalar_type()));
}

void check_int32(const Ctx& c, const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kInt, c.op, ": ", name, " must be torch.int32, got ",
                   dtype_name(t.scalar_type()));
}

void check_float(const Ctx& c, const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), c.op, ": ", name,
                   " must be float32, float16 or bfloat16 (float64 on CPU), got ",
                   dtype_name(t.scalar_type()));
  TORCH_CHECK_TYPE(t.scalar_type() != at::kDouble || t.device().is_cpu(), c.op, ": ", name,
                   " is float64, which is supported on CPU only");
}

// x and weight: any of fp32/fp16/bf16 in any pairing; fp64 only with fp64.
void check_x_weight_dtypes(const Ctx& c, const at::Tensor& x, const at::Tensor& weight) {
  check_float(c, x, "x");
  check_float(c, weight, "weight");
  bool x64 = x.scalar_type() == at::kDouble, w64 = weight.scalar_type() == at::kDouble;
  TORCH_CHECK_TYPE(x64 == w64, c.op, ": float64 x needs float64 weight and vice versa, got x ",
                   dtype_name(x.scalar_type()), " and weight ", dtype_name(weight.scalar_type()));
}

void check_width(const Ctx& c, const at::Tensor& weight) {
  const int64_t w = weight.sizes().back();
  TORCH_CHECK_VALUE(w >= 1 && w <= kMaxWidth, c.op, ": weight width (last dimension) must be in [1, ",
                    kMaxWidth, "], got ", w);
}

// The bytes [lo, hi) a strided tensor's elements touch, whatever storage
// object holds them: two Python objects (torch.from_numpy, frombuffer,
// DLPack) can alias one buffer, so storage identity says nothing. False for
// tensors that touch no memory (undefined, empty, meta).
bool byte_range(const at::Tensor& t, uintptr_t& lo, uintptr_t& hi) {
  if (!t.defined() || t.numel() == 0 || t.is_meta()) return false;
  const auto sizes = t.sizes(), strides = t.strides();
  int64_t below = 0, above = 0;  // element offsets reachable from data_ptr
  for (size_t d = 0; d < sizes.size(); ++d) {
    const int64_t span = (sizes[d] - 1) * strides[d];
    (span < 0 ? below : above) += span;
  }
  const auto base = reinterpret_cast<uintptr_t>(t.data_ptr());
  const auto item = static_cast<int64_t>(t.element_size());
  lo = base + below * item;
  hi = base + (above + 1) * item;
  return true;
}

// Refuses a write target whose byte range meets an argument's. Interleaved
// views whose ranges meet but whose elements do not are refused too: telling
// them apart costs more than any caller gains from passing them.
// out's byte range [out_lo, out_hi) is given: a target checked against
// several inputs computes it once.
void check_disjoint(const Ctx& c, uintptr_t out_lo, uintptr_t out_hi, const char* out_name,
                    const at::Tensor& in, const char* in_name) {
  uintptr_t in_lo, in_hi;
  if (!byte_range(in, in_lo, in_hi)) return;
  TORCH_CHECK_VALUE(out_hi <= in_lo || in_hi <= out_lo, c.op, ": ", out_name,
                    " must not share memory with ", in_name);
}

void check_no_overlap(const Ctx& c, const at::Tensor& out, const char* out_name,
                      const at::Tensor& in, const char* in_name) {
  uintptr_t out_lo, out_hi;
  if (byte_range(out, out_lo, out_hi)) check_disjoint(c, out_lo, out_hi, out_name, in, in_name);
}

// Whether two elements of t may share memory: with the dims of size > 1 in
// increasing stride order, each stride must step past everything the
// smaller-stride dims reach. Exact for every layout torch produces except
// contrived as_strided interleavings, which are refused as if they overlapped.
bool may_self_overlap(const at::Tensor& t) {
  // torch keeps this flag with the strides: a dense permutation (any
  // tensor torch allocates) needs no sort.
  if (t.is_non_overlapping_and_dense()) return false;
  const auto sizes = t.sizes(), strides = t.strides();
  c10::SmallVector<std::pair<int64_t, int64_t>, 4> dims;  // (|stride|, size)
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] > 1) dims.emplace_back(std::abs(strides[d]), sizes[d]);
  }
  std::sort(dims.begin(), dims.end());
  int64_t reach = 0;
  for (const auto& [stride, size] : dims) {
    if (stride <= reach) return true;
    reach += (size - 1) * stride;
  }
  return false;
}

// A tensor the op writes: the result would depend on the order of writes if
// two of its elements shared memory.
void check_writable(const Ctx& c, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(!may_self_overlap(t), c.op, ": ", name,
                    " has overlapping elements (e.g. an expanded or as_strided view) and "
                    "cannot be written");
}

// Data pointer of a tensor the kernels will read or write; meta tensors have
// none (ops only check them, see ops.cpp).
void* data_of(const at::Tensor& t) { return t.is_meta() ? nullptr : t.data_ptr(); }

// An optional tensor's data for the kernels, which learn from a non-null
// pointer that it was given (given()): an empty tensor (e.g. windows of
// width - 1 = 0 values) may have none, and gets one through which no
// element is ever read or written. Meta tensors keep none: no kernel runs.
void* given_data(const at::Tensor& t) {
  static char no_elements;
  return t.numel() == 0 && !t.is_meta() ? &no_elements : data_of(t);
}

Strided view3(const at::Tensor& t) {
  const auto st = t.strides();
  return {data_of(t), st[0], st[1], st[2]};
}
Strided view2(const at::Tensor& t) {
  const auto st = t.strides();
  return {data_of(t), st[0], st[1], 0};
}
Strided view1(const at::Tensor& t) { return {data_of(t), t.strides()[0], 0, 0}; }
// update's x and out: (B, D, L), or (B, D) as one token, (B, D, 1) with the
// last stride x.unsqueeze(-1) would have.
Strided view_tokens(const at::Tensor& t) {
  return t.dim() == 2 ? Strided{data_of(t), t.strides()[0], t.strides()[1], 1} : view3(t);
}

// weight (D, width) for x's D channels and bias (D,) in weight's dtype,
// checked; returns the params every op fills alike: dim, width, dtypes,
// weight, bias, silu (the op adds batch, lengths and its own tensors).
ConvParams weight_params(const Ctx& c, const at::Tensor& x, int64_t D, const at::Tensor& weight,
                         OptTensorRef bias, bool silu) {
  TORCH_CHECK_VALUE(weight.dim() == 2, c.op, ": weight must be 2-D (dim, width), got shape ",
                    shape_str(weight));
  check_device(c, weight, "weight");
  check_x_weight_dtypes(c, x, weight);
  check_width(c, weight);
  TORCH_CHECK_VALUE(weight.sizes()[0] == D, c.op, ": weight must have shape [", D,
                    ", width] to match x's dim, got ", shape_str(weight));
  ConvParams p;
  p.dim = D;
  p.width = weight.sizes()[1];
  p.silu = silu;
  p.x_dtype = to_dtype(x.scalar_type());
  p.weight_dtype = to_dtype(weight.scalar_type());
  p.weight = view2(weight);
  if (bias) {
    check_device(c, *bias, "bias");
    check_shape(c, *bias, "bias", {D}, "(dim,)");
    check_dtype(c, *bias, "bias", weight.scalar_type(), "weight's dtype");
    p.bias = view1(*bias);
  }
  return p;
}

// Shared by fwd and bwd: x (B, D, L), weight (D, W), bias, seq_idx, initial_states.
ConvParams conv_inputs(const Ctx& c, const at::Tensor& x, const at::Tensor& weight,
                       OptTensorRef bias, OptTensorRef seq_idx, OptTensorRef initial_states,
                       bool silu) {
  TORCH_CHECK_VALUE(x.dim() == 3, c.op, ": x must be 3-D (batch, dim, seqlen), got shape ",
                    shape_str(x));
  const int64_t B = x.size(0), D = x.size(1), L = x.size(2);
  ConvParams p = weight_params(c, x, D, weight, bias, silu);
  const int64_t W = p.width;
  p.batch = B;
  p.seqlen = L;
  p.x = view3(x);
  if (seq_idx) {
    check_device(c, *seq_idx, "seq_idx");
    check_int32(c, *seq_idx, "seq_idx");
    check_shape(c, *seq_idx, "seq_idx", {B, L}, "(batch, seqlen)");
    p.seq_idx = view2(*seq_idx);
  }
  if (initial_states) {
    check_device(c, *initial_states, "initial_states");
    check_shape(c, *initial_states, "initial_states", {B, D, W - 1}, "(batch, dim, width - 1)");
    check_dtype(c, *initial_states, "initial_states", x.scalar_type(), "x's dtype");
    p.initial_states = view3(*initial_states);
  }
  return p;
}

// An output of x's dtype and the given shape that must not alias any input.
void check_output(const Ctx& c, const at::Tensor& t, const char* name, at::IntArrayRef sizes,
                  const char* meaning, at::ScalarType dtype,
                  std::initializer_list<std::pair<const at::Tensor*, const char*>> inputs) {
  check_device(c, t, name);
  check_shape(c, t, name, sizes, meaning);
  check_dtype(c, t, name, dtype, "x's dtype");
  check_writable(c, t, name);
  for (auto& [in, in_name] : inputs) check_no_overlap(c, t, name, *in, in_name);
}

const at::Tensor& or_undefined(OptTensorRef t) {
  static const at::Tensor undefined;
  return t ? *t : undefined;
}

// Host-side value checks for int32 index tensors (skipped for device tensors:
// device kernels guard every index themselves instead).
bool on_host(const at::Tensor& t) { return t.device().is_cpu(); }

template <typename I>
void check_offsets_values(const Ctx& c, const at::Tensor& cu, const char* name, int64_t total) {
  auto a = cu.accessor<I, 1>();
  TORCH_CHECK_VALUE(a[0] >= 0, c.op, ": ", name, "[0] must be >= 0, got ", a[0]);
  for (int64_t i = 1; i < cu.size(0); ++i)
    TORCH_CHECK_VALUE(a[i] >= a[i - 1], c.op, ": ", name, " must be non-decreasing, but ", name,
                      "[", i, "] = ", a[i], " < ", name, "[", i - 1, "] = ", a[i - 1]);
  TORCH_CHECK_VALUE(a[cu.size(0) - 1] <= total, c.op, ": ", name, "[-1] = ", a[cu.size(0) - 1],
                    " is past the end of x's ", total, " tokens");
}

// Sequence offsets (cu_seqlens, query_start_loc) may be int32 or int64, as
// upstream's varlen states accept both.
Offsets check_offsets(const Ctx& c, const at::Tensor& cu, const char* name, int64_t total) {
  check_device(c, cu, name);
  const bool is_int64 = cu.scalar_type() == at::kLong;
  TORCH_CHECK_TYPE(is_int64 || cu.scalar_type() == at::kInt, c.op, ": ", name,
                   " must be torch.int32 or torch.int64, got ", dtype_name(cu.scalar_type()));
  TORCH_CHECK_VALUE(cu.dim() == 1 && cu.size(0) >= 1, c.op, ": ", name,
                    " must be 1-D (batch + 1,) with at least one entry, got shape ",
                    shape_str(cu));
  if (on_host(cu)) {
    if (is_int64) check_offsets_values<int64_t>(c, cu, name, total);
    else check_offsets_values<int32_t>(c, cu, name, total);
  }
  return {data_of(cu), cu.stride(0), is_int64};
}

Offsets check_cu_seqlens(const Ctx& c, const at::Tensor& cu, int64_t total) {
  return check_offsets(c, cu, "cu_seqlens", total);
}

// Pool row per batch row: < 0 or == pad_slot_id marks padding; the others
// must be in [0, N) and distinct (two rows writing one pool row would race).
void check_pool_indices(const Ctx& c, const at::Tensor& idx, const char* name, int64_t N,
                        int64_t pad_slot_id) {
  auto a = idx.accessor<int32_t, 1>();
  std::vector<bool> used(N, false);
  for (int64_t i = 0; i < idx.size(0); ++i) {
    if (a[i] < 0 || a[i] == pad_slot_id) continue;
    TORCH_CHECK_VALUE(a[i] < N, c.op, ": ", name, "[", i, "] = ", a[i],
                      " is out of range for a state pool of ", N,
                      " rows (negative values mark padding)");
    TORCH_CHECK_VALUE(!used[a[i]], c.op, ": ", name, " uses pool row ", a[i],
                      " twice; each live row needs its own state");
    used[a[i]] = true;
  }
}

// A state pool (N, D, state_len >= W - 1) of x's dtype that the op writes in
// place (p.conv_state, state_len, num_states). `rows` names what its first
// dimension counts, for the messages.
void pool_params(const Ctx& c, ConvParams& p, const at::Tensor& pool, const char* name,
                 const char* rows, const at::Tensor& x, const at::Tensor& weight,
                 OptTensorRef bias) {
  check_device(c, pool, name);
  TORCH_CHECK_VALUE(pool.dim() == 3, c.op, ": ", name, " must be 3-D (", rows,
                    ", dim, state_len), got shape ", shape_str(pool));
  check_dtype(c, pool, name, x.scalar_type(), "x's dtype");
  TORCH_CHECK_VALUE(pool.sizes()[1] == p.dim, c.op, ": ", name, " must have dim ", p.dim,
                    " (x's dim) in dimension 1, got shape ", shape_str(pool));
  TORCH_CHECK_VALUE(pool.sizes()[2] >= p.width - 1, c.op, ": the state_len of ", name,
                    " (last dimension) must be >= width - 1 = ", p.width - 1, ", got ",
                    pool.sizes()[2]);
  check_writable(c, pool, name);
  uintptr_t lo, hi;
  if (byte_range(pool, lo, hi)) {
    check_disjoint(c, lo, hi, name, x, "x");
    check_disjoint(c, lo, hi, name, weight, "weight");
    if (bias) check_disjoint(c, lo, hi, name, *bias, "bias");
  }
  p.conv_state = view3(pool);
  p.state_len = pool.sizes()[2];
  p.num_states = pool.sizes()[0];
}

// The optional (batch,) int32 pool row per batch row or sequence
// (p.state_indices); host values must be in range and distinct (see
// check_pool_indices).
void pool_index_params(const Ctx& c, ConvParams& p, OptTensorRef idx, const char* name,
                       const at::Tensor& pool, const char* pool_name, int64_t pad_slot_id) {
  if (!idx) return;
  check_device(c, *idx, name);
  check_int32(c, *idx, name);
  check_shape(c, *idx, name, {p.batch}, "(batch,)");
  check_no_overlap(c, pool, pool_name, *idx, name);
  if (on_host(*idx)) check_pool_indices(c, *idx, name, p.num_states, pad_slot_id);
  p.state_indices = view1(*idx);
}

// Outputs the op allocated itself: their shapes follow from the validated
// inputs, so a mismatch is a bug here, not a user error.
void assert_allocated(const at::Tensor& t, at::IntArrayRef sizes, const at::Tensor& x) {
  TORCH_INTERNAL_ASSERT(t.sizes() == sizes && t.scalar_type() == x.scalar_type() &&
                        t.device() == x.device());
}

}  // namespace

ConvParams fwd_params(const at::Tensor& x, const at::Tensor& weight, OptTensorRef bias,
                      OptTensorRef seq_idx, OptTensorRef initial_states, bool silu) {
  Ctx c{"causal_conv1d_fn", x.device()};
  return conv_inputs(c, x, weight, bias, seq_idx, initial_states, silu);
}

void check_fwd_outputs(const ConvParams& p, const at::Tensor& x, const at::Tensor& weight,
                       OptTensorRef bias, OptTensorRef seq_idx, OptTensorRef initial_states,
                       const at::Tensor& out, OptTensorRef final_states) {
  Ctx c{"causal_conv1d_fn", x.device()};
  const int64_t B = p.batch, D = p.dim, L = p.seqlen, W = p.width;
  const auto& b = or_undefined(bias);
  const auto& s = or_undefined(seq_idx);
  const auto& init = or_undefined(initial_states);
  check_output(c, out, "out", {B, D, L}, "(batch, dim, seqlen)", x.scalar_type(),
               {{&x, "x"}, {&weight, "weight"}, {&b, "bias"}, {&s, "seq_idx"},
                {&init, "initial_states"}});
  if (final_states) {
    check_output(c, *final_states, "final_states_out", {B, D, W - 1}, "(batch, dim, width - 1)",
                 x.scalar_type(),
                 {{&x, "x"}, {&weight, "weight"}, {&b, "bias"}, {&s, "seq_idx"},
                  {&init, "initial_states"}, {&out, "out"}});
  }
}

void set_fwd_outputs(ConvParams& p, const at::Tensor& out, OptTensorRef final_states) {
  TORCH_INTERNAL_ASSERT(out.dim() == 3 && (!final_states || final_states->dim() == 3));
  p.out = view3(out);
  if (final_states) p.final_states = view3(*final_states);
}

ConvParams bwd_params(const at::Tensor& x, const at::Tensor& weight, OptTensorRef bias,
                      OptTensorRef seq_idx, OptTensorRef initial_states, const at::Tensor& dout,
                      OptTensorRef dfinal_states, bool silu, bool deterministic) {
  Ctx c{"causal_conv1d_fn backward", x.device()};
  ConvParams p = conv_inputs(c, x, weight, bias, seq_idx, initial_states, silu);
  const int64_t B = p.batch, D = p.dim, L = p.seqlen, W = p.width;
  check_device(c, dout, "dout");
  check_shape(c, dout, "dout", {B, D, L}, "(batch, dim, seqlen)");
  check_dtype(c, dout, "dout", x.scalar_type(), "x's dtype");
  p.dout = view3(dout);
  if (dfinal_states) {
    check_device(c, *dfinal_states, "dfinal_states");
    check_shape(c, *dfinal_states, "dfinal_states", {B, D, W - 1}, "(batch, dim, width - 1)");
    check_dtype(c, *dfinal_states, "dfinal_states", x.scalar_type(), "x's dtype");
    p.dfinal_states = view3(*dfinal_states);
  }
  p.deterministic = deterministic;
  return p;
}

void set_bwd_outputs(ConvParams& p, const at::Tensor& x, const at::Tensor& dx,
                     OptTensorRef dinitial_states, const at::Tensor& dweight_acc,
                     OptTensorRef dbias_acc) {
  const int64_t B = p.batch, D = p.dim, L = p.seqlen, W = p.width;
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  assert_allocated(dx, {B, D, L}, x);
  p.dx = view3(dx);
  if (dinitial_states) {
    assert_allocated(*dinitial_states, {B, D, W - 1}, x);
    p.dinitial_states = view3(*dinitial_states);
  }
  // The kernels index the accumulators densely.
  TORCH_INTERNAL_ASSERT(dweight_acc.is_contiguous() && dweight_acc.scalar_type() == acc_type &&
                        dweight_acc.sizes() == at::IntArrayRef({D, W}));
  p.dweight_acc = data_of(dweight_acc);
  if (dbias_acc) {
    TORCH_INTERNAL_ASSERT(dbias_acc->is_contiguous() && dbias_acc->scalar_type() == acc_type &&
                          dbias_acc->numel() == D);
    p.dbias_acc = data_of(*dbias_acc);
  }
}

ConvParams update_params(const at::Tensor& x, const at::Tensor& conv_state,
                         const at::Tensor& weight, OptTensorRef bias, OptTensorRef cache_seqlens,
                         OptTensorRef conv_state_indices, bool silu) {
  Ctx c{"causal_conv1d_update", x.device()};
  TORCH_CHECK_VALUE(x.dim() == 2 || x.dim() == 3, c.op,
                    ": x must be 2-D (batch, dim) or 3-D (batch, dim, seqlen), got shape ",
                    shape_str(x));
  const auto xs = x.sizes();
  const bool single_token = xs.size() == 2;
  const int64_t B = xs[0], D = xs[1], L = single_token ? 1 : xs[2];
  ConvParams p = weight_params(c, x, D, weight, bias, silu);
  p.batch = B;
  p.seqlen = L;
  p.x = view_tokens(x);
  pool_params(c, p, conv_state, "conv_state", "batch or pool size", x, weight, bias);
  if (cache_seqlens) {
    check_device(c, *cache_seqlens, "cache_seqlens");
    check_int32(c, *cache_seqlens, "cache_seqlens");
    check_shape(c, *cache_seqlens, "cache_seqlens", {B}, "(batch,)");
    check_no_overlap(c, conv_state, "conv_state", *cache_seqlens, "cache_seqlens");
    // The write position is cache_seqlens[b] % state_len: an empty circular
    // buffer has no position at all.
    TORCH_CHECK_VALUE(p.state_len >= 1 || B * D == 0, c.op,
                      ": cache_seqlens needs conv_state's state_len >= 1 (a circular buffer), "
                      "got state_len 0");
    if (on_host(*cache_seqlens)) {
      auto a = cache_seqlens->accessor<int32_t, 1>();
      for (int64_t i = 0; i < B; ++i)
        TORCH_CHECK_VALUE(a[i] >= 0, c.op, ": cache_seqlens must be >= 0, got cache_seqlens[", i,
                          "] = ", a[i]);
    }
    p.cache_seqlens = view1(*cache_seqlens);
  }
  pool_index_params(c, p, conv_state_indices, "conv_state_indices", conv_state, "conv_state", -1);
  TORCH_CHECK_VALUE(conv_state_indices || p.num_states == B, c.op, ": conv_state must have batch ",
                    B, " rows (x's batch) when conv_state_indices is not given, got ",
                    p.num_states);
  return p;
}

void set_update_output(ConvParams& p, const at::Tensor& x, const at::Tensor& out) {
  assert_allocated(out, x.sizes(), x);
  p.out = view_tokens(out);
}

namespace {

// An int32 or int64 index tensor's entry i (host tensors only).
int64_t int_at(const at::Tensor& t, int64_t i) {
  return t.scalar_type() == at::kLong ? t.data_ptr<int64_t>()[i * t.stride(0)]
                                      : t.data_ptr<int32_t>()[i * t.stride(0)];
}
int64_t int_at(const at::Tensor& t, int64_t i, int64_t j) {
  const int64_t at = i * t.stride(0) + j * t.stride(1);
  return t.scalar_type() == at::kLong ? t.data_ptr<int64_t>()[at] : t.data_ptr<int32_t>()[at];
}

void check_int(const Ctx& c, const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, c.op, ": ", name,
                   " must be torch.int32 or torch.int64, got ", dtype_name(t.scalar_type()));
}

// An index tensor of shape (batch,) and the given integer dtype(s).
void check_per_sequence(const Ctx& c, const at::Tensor& t, const char* name, int64_t B,
                        bool int64_too) {
  check_device(c, t, name);
  if (int64_too) check_int(c, t, name);
  else check_int32(c, t, name);
  check_shape(c, t, name, {B}, "(batch,)");
}

// has_initial_state: one bool per sequence (packed prefill, both ops).
Strided initial_state_flags(const Ctx& c, const at::Tensor& flags, int64_t B) {
  check_device(c, flags, "has_initial_state");
  check_dtype(c, flags, "has_initial_state", at::kBool, "one flag per sequence");
  check_shape(c, flags, "has_initial_state", {B}, "(batch,)");
  return view1(flags);
}

// What update_serving's host value checks need to know per sequence.
struct SequenceRows {
  int64_t read = -1, write = -1, len = 0;
};

}  // namespace

ConvParams update_serving_params(const at::Tensor& x, const at::Tensor& conv_state,
                                 const at::Tensor& weight, OptTensorRef bias,
                                 OptTensorRef conv_state_indices, OptTensorRef num_accepted_tokens,
                                 OptTensorRef query_start_loc, OptTensorRef retrieve_parent_token,
                                 OptTensorRef intermediate_conv_window,
                                 OptTensorRef intermediate_state_indices,
                                 OptTensorRef initial_state_idx,
                                 OptTensorRef block_idx_last_scheduled_token,
                                 OptTensorRef has_initial_state,
                                 OptTensorRef block_idx_first_scheduled_token,
                                 OptTensorRef num_computed_tokens, int64_t block_size,
                                 int64_t pad_slot_id, bool silu) {
  // causal_conv1d_packed_fwd's prefix-cached prefill runs through this op too
  const bool prefill = has_initial_state || block_size != 0 || block_idx_first_scheduled_token ||
                       num_computed_tokens;
  Ctx c{prefill ? "causal_conv1d_packed_fwd" : "causal_conv1d_update", x.device()};
  const bool packed = query_start_loc.has_value();
  if (packed) {
    TORCH_CHECK_VALUE(x.dim() == 2, c.op,
                      ": with query_start_loc, x must be 2-D packed tokens (num_tokens, dim), "
                      "got shape ", shape_str(x));
  } else {
    TORCH_CHECK_VALUE(x.dim() == 2 || x.dim() == 3, c.op,
                      ": x must be 2-D (batch, dim) or 3-D (batch, dim, seqlen), got shape ",
                      shape_str(x));
  }
  // packed x arrives as (D, T) (functions.py transposes a (T, D) tensor).
  const int64_t D = packed ? x.size(0) : x.size(1);
  ConvParams p = weight_params(c, x, D, weight, bias, silu);
  const int64_t W = p.width;
  std::vector<const at::Tensor*> inputs;  // what the written tensors must not overlap
  std::vector<const char*> input_names;
  // (the pointers are to the caller's tensors: an optional made here from a
  // Tensor would be a temporary)
  auto read_only = [&](OptTensorRef t, const char* name) {
    if (t) {
      inputs.push_back(&*t);
      input_names.push_back(name);
    }
  };
  inputs = {&weight, &x};
  input_names = {"weight", "x"};
  read_only(bias, "bias");
  int64_t B;
  if (packed) {
    p.seqlen = x.size(1);
    p.query_start_loc = check_offsets(c, *query_start_loc, "query_start_loc", p.seqlen);
    B = query_start_loc->size(0) - 1;
    p.x = {data_of(x), 0, x.stride(0), x.stride(1)};
    read_only(query_start_loc, "query_start_loc");
  } else {
    B = x.size(0);
    p.seqlen = x.dim() == 2 ? 1 : x.size(2);
    p.x = view_tokens(x);
  }
  p.batch = B;
  p.pad_slot_id = pad_slot_id;
  pool_params(c, p, conv_state, "conv_state", "batch or pool size", x, weight, bias);
  const int64_t S = p.state_len;

  // Rows: (B,) indices, or a (B, blocks) table read and written at the
  // columns the two per-sequence indices give.
  const bool table = initial_state_idx || block_idx_last_scheduled_token;
  if (table) {
    TORCH_CHECK_VALUE(initial_state_idx && block_idx_last_scheduled_token, c.op,
                      ": initial_state_idx and block_idx_last_scheduled_token come together (the "
                      "table columns to read and to write), got only ",
                      initial_state_idx ? "initial_state_idx" : "block_idx_last_scheduled_token");
    TORCH_CHECK_VALUE(conv_state_indices && conv_state_indices->dim() == 2, c.op,
                      ": initial_state_idx and block_idx_last_scheduled_token index the columns "
                      "of a 2-D conv_state_indices (batch, blocks) table, got ",
                      conv_state_indices ? "shape " + shape_str(*conv_state_indices)
                                         : std::string("no conv_state_indices"));
  }
  if (conv_state_indices) {
    const auto& idx = *conv_state_indices;
    check_device(c, idx, "conv_state_indices");
    check_int32(c, idx, "conv_state_indices");
    if (table) {
      check_shape(c, idx, "conv_state_indices", {B, -1}, "(batch, blocks)");
      // (a shape check, so device tables get it too: the kernels would take
      // a table without entries for no table at all)
      TORCH_CHECK_VALUE(idx.size(1) >= 1 || B == 0, c.op,
                        ": the conv_state_indices table needs at least one column (block), "
                        "got shape ", shape_str(idx));
      check_per_sequence(c, *initial_state_idx, "initial_state_idx", B, false);
      check_per_sequence(c, *block_idx_last_scheduled_token, "block_idx_last_scheduled_token", B,
                         false);
      p.state_indices = view2(idx);
      p.table_blocks = idx.size(1);
      p.read_block = view1(*initial_state_idx);
      p.write_block = view1(*block_idx_last_scheduled_token);
      read_only(initial_state_idx, "initial_state_idx");
      read_only(block_idx_last_scheduled_token, "block_idx_last_scheduled_token");
    } else {
      TORCH_CHECK_VALUE(idx.dim() == 1, c.op,
                        ": a 2-D conv_state_indices (batch, blocks) table needs "
                        "initial_state_idx and block_idx_last_scheduled_token, got shape ",
                        shape_str(idx));
      check_shape(c, idx, "conv_state_indices", {B}, "(batch,)");
      p.state_indices = view1(idx);
    }
    read_only(conv_state_indices, "conv_state_indices");
  } else {
    TORCH_CHECK_VALUE(p.num_states == B, c.op, ": conv_state must have batch ", B,
                      " rows (x's batch) when conv_state_indices is not given, got ",
                      p.num_states);
  }
  if (num_accepted_tokens) {
    check_per_sequence(c, *num_accepted_tokens, "num_accepted_tokens", B, true);
    p.num_accepted = {data_of(*num_accepted_tokens), num_accepted_tokens->stride(0),
                      num_accepted_tokens->scalar_type() == at::kLong};
    read_only(num_accepted_tokens, "num_accepted_tokens");
    TORCH_CHECK_VALUE(packed || W - 2 + p.seqlen <= S || B * D == 0, c.op,
                      ": with num_accepted_tokens, conv_state's state_len must hold width - 2 + ",
                      "the tokens per sequence = ", W - 2 + p.seqlen, " columns, got ", S);
  }
  if (has_initial_state) {
    p.has_initial_state = initial_state_flags(c, *has_initial_state, B);
    read_only(has_initial_state, "has_initial_state");
  }
  const bool blocks = block_size != 0 || block_idx_first_scheduled_token || num_computed_tokens;
  if (blocks) {
    TORCH_CHECK_VALUE(block_size > 0, c.op, ": block_size must be > 0 to write block states, got ",
                      block_size);
    TORCH_CHECK_VALUE(block_idx_first_scheduled_token && num_computed_tokens && table, c.op,
                      ": block states need block_size, block_idx_first_scheduled_token, "
                      "num_computed_tokens and the conv_state_indices table with "
                      "initial_state_idx and block_idx_last_scheduled_token");
    TORCH_CHECK_VALUE(!num_accepted_tokens && !retrieve_parent_token && !intermediate_conv_window,
                      c.op, ": block states are for prefill and do not combine with "
                      "num_accepted_tokens, retrieve_parent_token or intermediate_conv_window");
    check_per_sequence(c, *block_idx_first_scheduled_token, "block_idx_first_scheduled_token", B,
                       false);
    check_per_sequence(c, *num_computed_tokens, "num_computed_tokens", B, false);
    p.first_block = view1(*block_idx_first_scheduled_token);
    p.computed = view1(*num_computed_tokens);
    p.block_size = block_size;
    read_only(block_idx_first_scheduled_token, "block_idx_first_scheduled_token");
    read_only(num_computed_tokens, "num_computed_tokens");
  }
  int64_t max_len = packed ? 0 : p.seqlen;  // host-known longest sequence
  if (packed && on_host(*query_start_loc)) {
    for (int64_t b = 0; b < B; ++b)
      max_len = std::max(max_len, int_at(*query_start_loc, b + 1) - int_at(*query_start_loc, b));
  }
  if (retrieve_parent_token) {
    const auto& par = *retrieve_parent_token;
    check_device(c, par, "retrieve_parent_token");
    check_int(c, par, "retrieve_parent_token");
    check_shape(c, par, "retrieve_parent_token", {B, -1}, "(batch, tokens)");
    TORCH_CHECK_VALUE(par.size(1) >= max_len, c.op,
                      ": retrieve_parent_token needs an entry per token: ", max_len,
                      " columns, got shape ", shape_str(par));
    p.parents = {given_data(par), par.stride(0), par.stride(1), par.scalar_type() == at::kLong,
                 par.size(1)};
    read_only(retrieve_parent_token, "retrieve_parent_token");
  }
  if (intermediate_state_indices) {
    TORCH_CHECK_VALUE(intermediate_conv_window, c.op,
                      ": intermediate_state_indices picks rows of intermediate_conv_window, "
                      "which is not given");
    check_per_sequence(c, *intermediate_state_indices, "intermediate_state_indices", B, false);
    p.window_indices = view1(*intermediate_state_indices);
    read_only(intermediate_state_indices, "intermediate_state_indices");
  }
  if (intermediate_conv_window) {
    const auto& win = *intermediate_conv_window;
    check_device(c, win, "intermediate_conv_window");
    check_shape(c, win, "intermediate_conv_window", {-1, -1, D, W - 1},
                "(rows, tokens, dim, width - 1)");
    check_dtype(c, win, "intermediate_conv_window", x.scalar_type(), "x's dtype");
    TORCH_CHECK_VALUE(win.size(1) >= max_len, c.op,
                      ": intermediate_conv_window needs a window per token: ", max_len,
                      " in dimension 1, got shape ", shape_str(win));
    TORCH_CHECK_VALUE(intermediate_state_indices || win.size(0) >= B, c.op,
                      ": intermediate_conv_window needs a row per sequence (", B,
                      ") when intermediate_state_indices is not given, got shape ",
                      shape_str(win));
    check_writable(c, win, "intermediate_conv_window");
    for (size_t i = 0; i < inputs.size(); ++i)
      check_no_overlap(c, win, "intermediate_conv_window", *inputs[i], input_names[i]);
    check_no_overlap(c, win, "intermediate_conv_window", conv_state, "conv_state");
    p.windows = {given_data(win), win.stride(0), win.stride(1), win.stride(2), win.stride(3)};
    p.num_windows = win.size(0);
    p.window_tokens = win.size(1);
  }
  // conv_state is written unless the windows are; pool_params checked x,
  // weight and bias against it.
  for (size_t i = 2; i < inputs.size(); ++i)
    check_no_overlap(c, conv_state, "conv_state", *inputs[i], input_names[i]);

  // Host values. Each check names the sequence and the argument; none of
  // them runs for device tensors, whose kernels clamp instead (serving.h).
  const bool host_rows = !conv_state_indices ||
                         (on_host(*conv_state_indices) &&
                          (!table || (on_host(*initial_state_idx) &&
                                      on_host(*block_idx_last_scheduled_token))));
  if (!host_rows || (packed && !on_host(*query_start_loc))) return p;
  std::vector<SequenceRows> rows(B);
  auto live = [&](int64_t r) { return r >= 0 && r != pad_slot_id; };
  // whether sequence b reads its row (not when has_initial_state says zeros)
  const bool host_flags = has_initial_state && on_host(*has_initial_state);
  auto reads = [&](int64_t b) {
    return !has_initial_state || !host_flags || has_initial_state->data_ptr<bool>()[
        b * has_initial_state->stride(0)];
  };
  for (int64_t b = 0; b < B; ++b) {
    SequenceRows& r = rows[b];
    r.len = packed ? int_at(*query_start_loc, b + 1) - int_at(*query_start_loc, b) : p.seqlen;
    if (!conv_state_indices) {
      r.read = r.write = b;
    } else if (!table) {
      r.read = r.write = int_at(*conv_state_indices, b);
    } else {
      const int64_t blocks = conv_state_indices->size(1);
      const int64_t rc = int_at(*initial_state_idx, b), wc = int_at(*block_idx_last_scheduled_token, b);
      TORCH_CHECK_VALUE(rc >= 0 && rc < blocks, c.op, ": initial_state_idx[", b, "] = ", rc,
                        " is past the ", blocks, " columns of conv_state_indices");
      TORCH_CHECK_VALUE(wc >= 0 && wc < blocks, c.op, ": block_idx_last_scheduled_token[", b,
                        "] = ", wc, " is past the ", blocks, " columns of conv_state_indices");
      r.read = int_at(*conv_state_indices, b, rc);
      r.write = int_at(*conv_state_indices, b, wc);
      TORCH_CHECK_VALUE(live(r.read) == live(r.write), c.op, ": sequence ", b,
                        " reads conv_state row ", r.read, " and writes row ", r.write,
                        "; a padding sequence is padding in both columns");
    }
    for (int64_t row : {r.read, r.write}) {
      TORCH_CHECK_VALUE(!live(row) || row < p.num_states, c.op, ": conv_state_indices of sequence ",
                        b, " = ", row, " is out of range for a state pool of ", p.num_states,
                        " rows (pad_slot_id or negative values mark padding)");
    }
  }
  // Block states: the table columns of the blocks each sequence completes.
  std::vector<std::vector<int64_t>> block_rows(B);
  const bool host_blocks = blocks && on_host(*block_idx_first_scheduled_token) &&
                           on_host(*num_computed_tokens);
  if (host_blocks) {
    const int64_t cols = conv_state_indices->size(1);
    for (int64_t b = 0; b < B; ++b) {
      const SequenceRows& r = rows[b];
      if (!live(r.read) || r.len == 0) continue;
      const int64_t done = int_at(*num_computed_tokens, b);
      TORCH_CHECK_VALUE(done >= 0, c.op, ": num_computed_tokens[", b, "] = ", done,
                        " must be >= 0");
      const int64_t n = (done + r.len - 1) / block_size - done / block_size;
      const int64_t first = int_at(*block_idx_first_scheduled_token, b);
      const int64_t last = int_at(*block_idx_last_scheduled_token, b);
      TORCH_CHECK_VALUE(last - first == n, c.op, ": sequence ", b, " completes ", n,
                        " blocks of ", block_size, " tokens (", done, " computed, ", r.len,
                        " scheduled), so block_idx_last_scheduled_token - "
                        "block_idx_first_scheduled_token must be ", n, ", got ", last, " - ",
                        first);
      TORCH_CHECK_VALUE(first >= 0 && first + n <= cols, c.op,
                        ": block_idx_first_scheduled_token[", b, "] = ", first,
                        " puts block states past the ", cols, " columns of conv_state_indices");
      for (int64_t k = 0; k < n; ++k) {
        const int64_t row = int_at(*conv_state_indices, b, first + k);
        if (!live(row)) continue;
        TORCH_CHECK_VALUE(row < p.num_states, c.op, ": conv_state_indices of sequence ", b,
                          " = ", row, " is out of range for a state pool of ", p.num_states,
                          " rows");
        block_rows[b].push_back(row);
      }
    }
  }
  // Two sequences writing one row, or one reading a row another writes,
  // would race.
  if (!intermediate_conv_window) {
    std::vector<int64_t> writer(p.num_states, -1);
    for (int64_t b = 0; b < B; ++b) {
      std::vector<int64_t> written = block_rows[b];
      if (live(rows[b].write) && rows[b].len > 0) written.push_back(rows[b].write);
      for (int64_t row : written) {
        TORCH_CHECK_VALUE(writer[row] < 0, c.op, ": sequences ", writer[row], " and ", b,
                          " both write conv_state row ", row,
                          "; each live sequence needs its own state");
        writer[row] = b;
      }
    }
    for (int64_t b = 0; b < B; ++b) {
      const int64_t r = rows[b].read;
      if (!reads(b) || rows[b].len == 0) continue;
      TORCH_CHECK_VALUE(!live(r) || writer[r] < 0 || writer[r] == b, c.op, ": sequence ", b,
                        " reads conv_state row ", r, ", which sequence ", writer[live(r) ? r : 0],
                        " writes");
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    const SequenceRows& r = rows[b];
    if (!live(r.read) || r.len == 0) continue;
    if (num_accepted_tokens && on_host(*num_accepted_tokens)) {
      const int64_t n = int_at(*num_accepted_tokens, b);
      TORCH_CHECK_VALUE(n >= 1 && n <= S - W + 2, c.op, ": num_accepted_tokens[", b, "] = ", n,
                        " must be in [1, state_len - width + 2] = [1, ", S - W + 2,
                        "]: the accepted tokens of the previous step, which the state holds "
                        "after its width - 2 history columns");
      TORCH_CHECK_VALUE(W - 2 + r.len <= S, c.op, ": sequence ", b, " has ", r.len,
                        " tokens; with num_accepted_tokens, conv_state's state_len must hold "
                        "width - 2 + tokens = ", W - 2 + r.len, " columns, got ", S);
    }
    if (retrieve_parent_token && on_host(*retrieve_parent_token)) {
      for (int64_t j = 1; j < r.len; ++j) {
        const int64_t parent = int_at(*retrieve_parent_token, b, j);
        TORCH_CHECK_VALUE(parent >= 0 && parent < j, c.op, ": retrieve_parent_token[", b, ", ",
                          j, "] = ", parent, " is not an earlier token of the sequence: a "
                          "token's parent must be in [0, ", j, ")");
      }
    }
  }
  if (intermediate_state_indices && on_host(*intermediate_state_indices)) {
    std::vector<bool> used(p.num_windows, false);
    for (int64_t b = 0; b < B; ++b) {
      if (!live(rows[b].read) || rows[b].len == 0) continue;
      const int64_t w = int_at(*intermediate_state_indices, b);
      if (w < 0) continue;
      TORCH_CHECK_VALUE(w < p.num_windows, c.op, ": intermediate_state_indices[", b, "] = ", w,
                        " is out of range for intermediate_conv_window's ", p.num_windows,
                        " rows (negative values write no windows)");
      TORCH_CHECK_VALUE(!used[w], c.op, ": intermediate_state_indices uses row ", w,
                        " twice; each sequence needs its own windows");
      used[w] = true;
    }
  }
  return p;
}

void set_update_serving_output(ConvParams& p, const at::Tensor& x, const at::Tensor& out,
                               bool packed) {
  assert_allocated(out, x.sizes(), x);
  p.out = packed ? Strided{data_of(out), 0, out.stride(0), out.stride(1)} : view_tokens(out);
}

ConvParams varlen_states_params(const at::Tensor& x, const at::Tensor& cu_seqlens,
                                int64_t state_len) {
  Ctx c{"causal_conv1d_varlen_states", x.device()};
  TORCH_CHECK_VALUE(x.dim() == 2, c.op, ": x must be 2-D (total_tokens, dim), got shape ",
                    shape_str(x));
  check_float(c, x, "x");
  TORCH_CHECK_VALUE(state_len >= 0, c.op, ": state_len must be >= 0, got ", state_len);
  const Offsets offsets = check_cu_seqlens(c, cu_seqlens, x.size(0));
  const int64_t T = x.size(0), D = x.size(1), B = cu_seqlens.size(0) - 1;
  ConvParams p;
  p.batch = B;
  p.dim = D;
  p.seqlen = T;
  p.x_dtype = to_dtype(x.scalar_type());
  p.x = {data_of(x), 0, x.stride(1), x.stride(0)};
  p.cu_seqlens = offsets;
  p.state_len = state_len;
  return p;
}

void set_varlen_states_output(ConvParams& p, const at::Tensor& x, const at::Tensor& out) {
  assert_allocated(out, {p.batch, p.dim, p.state_len}, x);
  p.out = view3(out);
}

ConvParams fwd_packed_params(const at::Tensor& x, const at::Tensor& weight, OptTensorRef bias,
                             const at::Tensor& cu_seqlens, const at::Tensor& conv_states,
                             OptTensorRef cache_indices, OptTensorRef has_initial_state,
                             int64_t pad_slot_id, bool silu) {
  Ctx c{"causal_conv1d_packed_fwd", x.device()};
  TORCH_CHECK_VALUE(x.dim() == 2, c.op, ": x must be 2-D packed tokens, got shape ", shape_str(x));
  const int64_t D = x.size(0), T = x.size(1);
  ConvParams p = weight_params(c, x, D, weight, bias, silu);
  const Offsets offsets = check_cu_seqlens(c, cu_seqlens, T);
  const int64_t B = cu_seqlens.size(0) - 1;
  p.batch = B;
  p.seqlen = T;
  p.x = {data_of(x), 0, x.stride(0), x.stride(1)};
  p.cu_seqlens = offsets;
  p.pad_slot_id = pad_slot_id;
  pool_params(c, p, conv_states, "conv_states", "pool size", x, weight, bias);
  check_no_overlap(c, conv_states, "conv_states", cu_seqlens, "cu_seqlens");
  pool_index_params(c, p, cache_indices, "cache_indices", conv_states, "conv_states", pad_slot_id);
  TORCH_CHECK_VALUE(cache_indices || p.num_states >= B, c.op, ": conv_states needs at least ", B,
                    " rows (one per sequence) when cache_indices is not given, got ",
                    p.num_states);
  if (has_initial_state) {
    check_no_overlap(c, conv_states, "conv_states", *has_initial_state, "has_initial_state");
    p.has_initial_state = initial_state_flags(c, *has_initial_state, B);
  }
  return p;
}

void set_fwd_packed_output(ConvParams& p, const at::Tensor& x, const at::Tensor& out) {
  assert_allocated(out, x.sizes(), x);
  p.out = {data_of(out), 0, out.stride(0), out.stride(1)};
}

}  // namespace causal_conv1d
