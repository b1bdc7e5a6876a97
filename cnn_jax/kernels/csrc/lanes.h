// Float32 and bfloat16 tensors read and written as float32, one value (float) or eight (f32x8) at a time, so that
// one loop serves both. bfloat16 (XLA's BF16) is the top half of a float32's bits: widening is exact; narrowing
// rounds to nearest, ties to even, as XLA's conversion does, and keeps NaN a NaN.
#pragma once

#include <cstdint>
#include <cstring>

namespace cnn_jax {

typedef float f32x8 __attribute__((vector_size(32)));
using bf16 = uint16_t;
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));

template <typename F>
inline F Load(const float* p) {
  F v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void Store(float* p, float v) { *p = v; }
inline void Store(float* p, f32x8 v) { std::memcpy(p, &v, sizeof v); }

template <typename F>
inline F Load(const bf16* p) {
  F v;
  if constexpr (sizeof(F) == sizeof(float)) {
    const uint32_t bits = uint32_t(*p) << 16;
    std::memcpy(&v, &bits, sizeof v);
  } else {
    u16x8 narrow;
    std::memcpy(&narrow, p, sizeof narrow);
    const u32x8 bits = __builtin_convertvector(narrow, u32x8) << 16;
    std::memcpy(&v, &bits, sizeof v);
  }
  return v;
}

template <typename U>  // uint32_t or u32x8: float32 bits.
inline U RoundToBF16(U bits) {
  const U rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return (bits & 0x7FFFFFFFu) > 0x7F800000u ? (bits >> 16) | 0x40u : rounded;
}

inline void Store(bf16* p, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  *p = bf16(RoundToBF16(bits));
}

inline void Store(bf16* p, f32x8 v) {
  u32x8 bits;
  std::memcpy(&bits, &v, sizeof bits);
  const u16x8 narrow = __builtin_convertvector(RoundToBF16(bits), u16x8);
  std::memcpy(p, &narrow, sizeof narrow);
}

// A float32 value as itself, or a bfloat16 one widened: for loops that read either.
inline float Widen(float v) { return v; }
inline float Widen(bf16 v) { return Load<float>(&v); }

}  // namespace cnn_jax
