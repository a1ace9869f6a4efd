// What one sequence of a serving decode step (run_update_serving) reads and
// writes, computed the same way by the CPU and CUDA kernels so that the two
// backends cannot disagree on an index. Every value read from an index
// tensor is clamped or treated as padding here: the host checks them when
// they live in host memory, but device kernels cannot, and no value may make
// a kernel touch memory outside its tensors.
//
// Sequence b's stream is its history followed by its len tokens:
//   history   the first hist_len columns of its read row (the whole row, or
//             with speculative decoding the columns up to the last accepted
//             token: num_accepted[b] + W - 2)
//   window    the history's last W-1 columns: the inputs before token 0
// Token j convolves the W inputs ending at it: in order (j, j-1, ...) or,
// with a token tree, along (j, parent(j), parent(parent(j)), ..., 0), then
// back through the window.
// The written row receives count columns, new[c] = stream[shift + c]:
//   plain       count = S,           shift = len  (the last S inputs)
//   speculative count = W - 2 + len, shift = num_accepted (the W-2 inputs
//               before the window's end, then the len tokens; later columns
//               are left as they were)
#pragma once

#include "params.h"

namespace causal_conv1d {

struct SeqPlan {
  int64_t first = 0;      // index of token 0 along x's token axis
  int64_t len = 0;        // tokens (0: nothing to do)
  int64_t read_row = -1;  // pool rows; -1 marks a padding sequence
  int64_t write_row = -1;
  int64_t hist_len = 0;   // history columns in the stream
  int64_t shift = 0;      // new[c] = stream[shift + c]
  int64_t count = 0;      // columns written (0 when the windows are written instead)
  int64_t window_row = -1;  // intermediate windows row, -1: none
  bool zero_history = false;  // the history is zeros (no initial state)
  // Block states: the k-th (k < boundaries) after first_boundary + k * block
  // tokens of this call, to table column first_block + k.
  int64_t boundaries = 0;
  int64_t first_boundary = 0;
  int64_t first_block = 0;
};

CAUSAL_CONV1D_HOST_DEVICE inline int64_t clamp_index(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

CAUSAL_CONV1D_HOST_DEVICE inline int64_t int32_at(const Strided& v, int64_t i) {
  return static_cast<const int32_t*>(v.data)[i * v.s0];
}

// A pool row from an index entry, or -1 for padding: pad_slot_id, negative,
// or (never trusted) past the pool.
CAUSAL_CONV1D_HOST_DEVICE inline int64_t live_row(const ConvParams& p, int64_t row) {
  return (row == p.pad_slot_id || row < 0 || row >= p.num_states) ? -1 : row;
}

CAUSAL_CONV1D_HOST_DEVICE inline SeqPlan plan_sequence(const ConvParams& p, int64_t b) {
  SeqPlan s;
  if (p.query_start_loc.data != nullptr) {
    const int64_t start = clamp_index(p.query_start_loc[b], 0, p.seqlen);
    s.first = start;
    s.len = clamp_index(p.query_start_loc[b + 1], start, p.seqlen) - start;
    // Offsets on the device are not checked against the token tree's or
    // the windows' columns (the host checks need their values): a longer
    // sequence is cut to them, its other tokens output 0 like tokens
    // outside every sequence, rather than read or write past them.
    if (p.parents.given()) s.len = clamp_index(s.len, 0, p.parents.cols);
    if (p.windows.given()) s.len = clamp_index(s.len, 0, p.window_tokens);
  } else {
    s.len = p.seqlen;
  }
  const int64_t W = p.width, S = p.state_len;
  if (!p.state_indices.given()) {
    s.read_row = s.write_row = live_row(p, b);
  } else if (!p.read_block.given()) {
    s.read_row = s.write_row = live_row(p, int32_at(p.state_indices, b));
  } else {
    // A column past the table is as untrusted as a row past the pool.
    const int64_t cols = p.table_blocks;
    const int64_t rc = int32_at(p.read_block, b), wc = int32_at(p.write_block, b);
    const auto* table = static_cast<const int32_t*>(p.state_indices.data) + b * p.state_indices.s0;
    s.read_row = rc >= 0 && rc < cols ? live_row(p, table[rc * p.state_indices.s1]) : -1;
    s.write_row = wc >= 0 && wc < cols ? live_row(p, table[wc * p.state_indices.s1]) : -1;
    if (s.write_row < 0) s.read_row = -1;
  }
  if (p.num_accepted.data != nullptr) {
    // The window [n - 1, n + W - 2) lies in the row: 1 <= n <= S - W + 2.
    const int64_t n = clamp_index(p.num_accepted[b], 1, S - W + 2);
    s.hist_len = n + W - 2;
    s.shift = n;
    s.count = clamp_index(W - 2 + s.len, 0, S);
  } else {
    s.hist_len = S;
    s.shift = s.len;
    s.count = S;
  }
  if (p.has_initial_state.given()) {
    s.zero_history = static_cast<const bool*>(p.has_initial_state.data)[b * p.has_initial_state.s0] == 0;
  }
  if (p.block_size > 0 && s.len > 0) {
    const int64_t bs = p.block_size;
    const int64_t done = int32_at(p.computed, b) < 0 ? 0 : int32_at(p.computed, b);
    s.first_boundary = bs - done % bs;
    // blocks completed strictly inside the call; one ending with it holds
    // the final state, written to the last block's column
    s.boundaries = (done + s.len - 1) / bs - done / bs;
    s.first_block = int32_at(p.first_block, b);
  }
  if (p.windows.given()) {
    s.count = 0;
    const int64_t r = p.window_indices.given() ? int32_at(p.window_indices, b) : b;
    s.window_row = r >= 0 && r < p.num_windows ? r : -1;
  }
  return s;
}

// The pool row of block state k of sequence b, or -1 (padding, or a table
// column past the table: never trusted).
CAUSAL_CONV1D_HOST_DEVICE inline int64_t block_state_row(const ConvParams& p, int64_t b,
                                                         const SeqPlan& s, int64_t k) {
  const int64_t col = s.first_block + k;
  if (col < 0 || col >= p.table_blocks) return -1;
  const auto* table = static_cast<const int32_t*>(p.state_indices.data) + b * p.state_indices.s0;
  return live_row(p, table[col * p.state_indices.s1]);
}

// Token j's i-th input back (i = 0 is the token itself), as a token index
// >= 0, or as -1 - c for history column c. `walk` holds the position
// reached for i - 1 (start it at j for i = 0): call with i = 0, 1, ... in
// order.
CAUSAL_CONV1D_HOST_DEVICE inline int64_t step_back(const ConvParams& p, int64_t b,
                                                   const SeqPlan& s, int64_t i, int64_t* walk) {
  int64_t at = *walk;
  if (i > 0) {
    if (at > 0) {
      at = p.parents.given() ? clamp_index(p.parents(b, at), 0, at - 1) : at - 1;
    } else {
      at -= 1;  // into the history: -1 is the window's last column
    }
    *walk = at;
  }
  return at >= 0 ? at : -1 - (s.hist_len + at);
}

}  // namespace causal_conv1d
