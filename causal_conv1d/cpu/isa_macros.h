// The feature macros of a tier's instruction set, for the tier files
// (tier_*.cpp). A tier file selects its target with `#pragma GCC target`
// before any include, which keeps build.toml free of per-architecture
// flags; but GCC's C++ front end reads the whole file before it applies the
// pragma, so the pragma does not define the feature macros that ATen's,
// Sleef's and c10's headers test (__AVX2__, __ARM_FEATURE_SVE, ...). This
// header defines them as the equivalent command-line flags do. A tier file
// defines the level it targets (CAUSAL_CONV1D_ISA_AVX2, _AVX512,
// _AVX512_BF16, _SVE or _SVE_BF16), then includes this after its pragma
// and before kernels.h. Each level implies the ones below it.
#pragma once

#if defined(CAUSAL_CONV1D_ISA_AVX512_BF16)
#define CAUSAL_CONV1D_ISA_AVX512
#define __AVX512BF16__ 1
#endif

#if defined(CAUSAL_CONV1D_ISA_AVX512)
#define CAUSAL_CONV1D_ISA_AVX2
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
// GCC 12's _mm512_undefined_* initialize a variable with itself, and every
// at::vec bf16/fp16 conversion or transpose that inlines one is reported
// as using it uninitialized (GCC bug 105593, fixed in GCC 13: kernel-builder's
// GCC 14 is silent). Left on, those false alarms would bury a real one. Off
// for the rest of an AVX-512 tier file under GCC 12 only; the same kernels
// are still checked in the default and avx2 tiers and by tools/ci/gcc14.sh.
// (A push/pop around ATen's headers does not work: they leave a push open.)
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#endif

#if defined(CAUSAL_CONV1D_ISA_AVX2)
#define __SSE3__ 1
#define __SSSE3__ 1
#define __SSE4_1__ 1
#define __SSE4_2__ 1
#define __POPCNT__ 1
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define __FP_FAST_FMA 1
#define __FP_FAST_FMAF 1
#endif

#if defined(CAUSAL_CONV1D_ISA_SVE_BF16)
#define CAUSAL_CONV1D_ISA_SVE
#define __ARM_FEATURE_BF16_SCALAR_ARITHMETIC 1
#define __ARM_FEATURE_BF16_VECTOR_ARITHMETIC 1
#define __ARM_FEATURE_BF16 1  // ACLE's name for the extension; GCC 12 omits it
#endif

#if defined(CAUSAL_CONV1D_ISA_SVE)
#define __ARM_FEATURE_ATOMICS 1
#define __ARM_FEATURE_CRC32 1
#define __ARM_FEATURE_QRDMX 1
#define __ARM_FEATURE_FP16_SCALAR_ARITHMETIC 1
#define __ARM_FEATURE_FP16_VECTOR_ARITHMETIC 1
#define __ARM_FEATURE_SVE 1
#define __ARM_FEATURE_SVE_VECTOR_OPERATORS 1
#endif
