// The standard containers a tier file's kernels use, included by each
// tier_*.cpp before its `#pragma GCC target`, so that they are defined for
// the command line's target rather than the tier's.
//
// Since GCC 13, std::allocator's members are always_inline, and GCC
// compiles the destructors it generates implicitly (std::vector's
// _Vector_impl) for the command line's target, not the pragma's. An
// allocator defined under the pragma then cannot be inlined into them, and
// the tier fails to compile ("inlining failed in call to 'always_inline'
// ...: target specific option mismatch"); kernel-builder builds with GCC 14.
// Defined before the pragma, both are the command line's, and the tier's
// code may inline them (a target whose instructions are a subset of the
// caller's). It also keeps the instantiations other tiers share, which the
// linker merges into one copy, free of the tier's instructions.
#pragma once

#include <vector>
