// Memory for the tensors the ops return (see output_memory.cpp).
#pragma once

#include <ATen/core/Tensor.h>

namespace causal_conv1d {

// A new uninitialized tensor of `sizes` and `strides` (dense: no gaps, no
// overlap) with `options`' dtype and device. Large CPU outputs come from a
// small cache of huge-page-backed blocks (output_memory.cpp); everything else
// from at::empty_strided.
at::Tensor empty_output(at::IntArrayRef sizes, at::IntArrayRef strides,
                        const at::TensorOptions& options);

}  // namespace causal_conv1d
