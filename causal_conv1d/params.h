// The one parameter block every backend receives. Built and validated on the
// host by checks.cpp; read by the CPU and CUDA kernels alike. Plain data only
// (no ATen types) so it can be passed by value to CUDA kernels.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define CAUSAL_CONV1D_HOST_DEVICE __host__ __device__
#else
#define CAUSAL_CONV1D_HOST_DEVICE
#endif

namespace causal_conv1d {

enum class DType : int8_t { Float32, Float16, BFloat16, Float64 };

// A strided view of up to three dimensions: element (i, j, k) lives at
// data + i * s0 + j * s1 + k * s2 (strides in elements, 64-bit).
// data == nullptr means "not given".
struct Strided {
  void* data = nullptr;
  int64_t s0 = 0, s1 = 0, s2 = 0;
  CAUSAL_CONV1D_HOST_DEVICE bool given() const { return data != nullptr; }
};

// Sequence offsets (cu_seqlens), int32 or int64: upstream's
// causal_conv1d_varlen_states takes either, and torch.cumsum of int lengths
// gives int64, so callers pass both. Read through operator[] so every kernel
// handles the two widths the same way.
struct Offsets {
  const void* data = nullptr;
  int64_t s0 = 0;
  bool is_int64 = false;
  CAUSAL_CONV1D_HOST_DEVICE int64_t operator[](int64_t i) const {
    return is_int64 ? static_cast<const int64_t*>(data)[i * s0]
                    : static_cast<const int32_t*>(data)[i * s0];
  }
};

// A (rows, cols) table of int32 or int64 entries (token tree parents):
// element (i, j) at data + i * s0 + j * s1.
struct IntTable {
  const void* data = nullptr;
  int64_t s0 = 0, s1 = 0;
  bool is_int64 = false;
  int64_t cols = 0;
  CAUSAL_CONV1D_HOST_DEVICE bool given() const { return data != nullptr; }
  CAUSAL_CONV1D_HOST_DEVICE int64_t operator()(int64_t i, int64_t j) const {
    return is_int64 ? static_cast<const int64_t*>(data)[i * s0 + j * s1]
                    : static_cast<const int32_t*>(data)[i * s0 + j * s1];
  }
};

// A strided view of four dimensions (the intermediate conv windows).
struct Strided4 {
  void* data = nullptr;
  int64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  CAUSAL_CONV1D_HOST_DEVICE bool given() const { return data != nullptr; }
};

struct ConvParams {
  // ---- sizes -------------------------------------------------------------
  int64_t batch = 0;   // B (number of sequences for packed ops)
  int64_t dim = 0;     // D channels
  int64_t seqlen = 0;  // L (tokens per row; total tokens T for packed ops)
  int64_t width = 0;   // W

  // ---- options -----------------------------------------------------------
  bool silu = false;
  DType x_dtype = DType::Float32;       // x, out, states, dout, dx use this
  DType weight_dtype = DType::Float32;  // weight and bias use this

  // ---- forward / backward tensors -----------------------------------------
  Strided x;               // (B, D, L)          packed ops: (1, D, T)
  Strided weight;          // (D, W)             s0 = dim stride, s1 = width stride
  Strided bias;            // (D,)               s0
  Strided out;             // (B, D, L)          same convention as x
  Strided seq_idx;         // (B, L) int32       s0 = batch, s1 = position
  Strided initial_states;  // (B, D, W-1)        x dtype
  Strided final_states;    // (B, D, W-1)        x dtype, written by fwd

  // ---- backward only --------------------------------------------------------
  Strided dout;             // (B, D, L)
  Strided dfinal_states;    // (B, D, W-1), optional incoming gradient
  Strided dx;               // (B, D, L)
  Strided dinitial_states;  // (B, D, W-1), written when initial_states given
  // Accumulators: contiguous (D, W) and (D,), float32 (float64 for fp64 x),
  // zero-filled by the host before the launch.
  void* dweight_acc = nullptr;
  void* dbias_acc = nullptr;  // nullptr when bias is not given
  bool deterministic = false;

  // ---- decode (update) and pooled states ------------------------------------
  // conv_state: (N, D, S) pool, x dtype. For update without indices N == B.
  Strided conv_state;
  int64_t state_len = 0;     // S
  int64_t num_states = 0;    // N, rows in the pool
  Strided cache_seqlens;     // (B,) int32, s0; circular-buffer write positions
  Strided state_indices;     // (B,) int32, s0; row of the pool per batch row,
                             // < 0 (or == pad_slot_id) marks a padding row

  // ---- packed sequences (varlen_states, fwd_packed) -------------------------
  Offsets cu_seqlens;          // (B+1,) offsets into the T tokens
  Strided has_initial_state;   // (B,) bool, s0; fwd_packed only
  int64_t pad_slot_id = -1;    // fwd_packed, update_serving: pool index meaning "skip"

  // ---- serving decode step (update_serving) ---------------------------------
  // x and out are (B, D, L) with L = seqlen tokens per sequence, or packed
  // (1, D, T) with query_start_loc giving sequence b tokens [qsl[b], qsl[b+1]).
  Offsets query_start_loc;     // (B+1,), data == nullptr: x is (B, D, L)
  // state_indices (B,) or, with the two columns below, a (B, blocks) table
  // whose s1 steps along blocks: read row = table[b, read_block[b]],
  // written row = table[b, write_block[b]].
  Strided read_block;          // (B,) int32, s0 (initial_state_idx)
  Strided write_block;         // (B,) int32, s0 (block_idx_last_scheduled_token)
  int64_t table_blocks = 0;    // the table's second dimension
  // Speculative decoding: the window of the first token starts at state
  // column num_accepted[b] - 1 and the state is rewritten from column 0.
  Offsets num_accepted;        // (B,)
  IntTable parents;            // (B, >= L): token j's parent in [0, j) (j >= 1)
  // Intermediate windows (N2, >= L, D, W-1): entry [row, j] is the window
  // after token j (its last W-1 inputs along its ancestors). When given, the
  // state pool is only read.
  Strided4 windows;
  int64_t num_windows = 0;     // N2
  int64_t window_tokens = 0;   // windows' dimension 1
  Strided window_indices;      // (B,) int32, s0: windows row per sequence (default b)
  // Prefix caching in packed prefill (with the table above): the state
  // after each whole block of block_size tokens, counting the sequence's
  // num_computed_tokens earlier ones, goes to table[b, first_block[b] + k]
  // for the k-th block completed inside this call; has_initial_state (above)
  // false reads zeros instead of the read row.
  Strided first_block;         // (B,) int32, s0 (block_idx_first_scheduled_token)
  Strided computed;            // (B,) int32, s0 (num_computed_tokens)
  int64_t block_size = 0;      // 0: no block states
};

}  // namespace causal_conv1d
