// exp, sigmoid and tanh as plain arithmetic, so that `#pragma omp simd` loops vectorise them
// (glibc's expf and tanhf do not); shared by every kernel here (the streaming kernel's
// blocked_lstm.h calls exp_poly on its vectors); and bfloat16's conversions.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace rnnkit_simd {

// 2^n for an integral-valued n, built in the exponent bits: a float, or a GCC vector of them.
inline float pow2(float n) {
  const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return scale;
}

template <typename V>
inline V pow2(V n) {
  typedef std::int32_t Bits __attribute__((vector_size(sizeof(V))));
  const Bits bits = (__builtin_convertvector(n, Bits) + 127) << 23;
  V scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return scale;
}

// exp(x) to ~1 ulp for F = float, or a GCC vector of floats (blocked_lstm.h): Cephes' range
// reduction x = n ln2 + r, |r| <= ln2/2, and degree-6 polynomial; inlined always, so that it
// vectorises inside `omp simd` loops.
template <typename F>
inline __attribute__((always_inline)) F exp_poly(F x) {
  const F lo = F{} - 87.3f, hi = F{} + 87.0f;  // 2^n stays normal; 1 + 2 e^x stays finite
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const float shift = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const F n = (x * 1.44269504088896341f + shift) - shift;
  const F r = x - n * 0.693359375f + n * 2.12194440e-4f;  // ln2 in two parts: n * ln2_hi is exact
  F p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * pow2(n);
}

inline float exp_simd(float x) { return exp_poly(x); }

inline double exp_simd(double x) {  // float64: for gradcheck, not speed
  return std::exp(x < -708.0 ? -708.0 : (x > 708.0 ? 708.0 : x));
}

template <typename T>
inline T sigmoid(T v) {
  return T(1) / (T(1) + exp_simd(-v));
}

// tanh v = 2 sigmoid(2v) - 1: absolute error ~1e-7 in float (relative error grows near 0,
// where tanh v ~ v is tiny); float64 keeps std::tanh, exact to the last bit.
inline float tanh_simd(float v) { return 2.0f * sigmoid(2.0f * v) - 1.0f; }
inline double tanh_simd(double v) { return std::tanh(v); }

// bfloat16 as its bits (the top half of a float32): widened exactly, and rounded from float32 to
// nearest even as ATen's conversion is (a NaN stays a NaN).
inline float widen(std::uint16_t bits) {
  const std::uint32_t word = static_cast<std::uint32_t>(bits) << 16;
  float v;
  std::memcpy(&v, &word, sizeof v);
  return v;
}

inline std::uint16_t to_bfloat16(float v) {
  std::uint32_t word;
  std::memcpy(&word, &v, sizeof word);
  const std::uint32_t rounded = (word + 0x7FFFu + ((word >> 16) & 1u)) >> 16;
  return v != v ? std::uint16_t(0x7FC0) : static_cast<std::uint16_t>(rounded);
}

}  // namespace rnnkit_simd
