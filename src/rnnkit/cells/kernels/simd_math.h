// exp, sigmoid and tanh as plain arithmetic, so that `#pragma omp simd` loops vectorise them
// (glibc's expf and tanhf do not); shared by linear_scan.cpp and gru_scan.cpp.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace rnnkit_simd {

// float: Cephes' range reduction x = n ln2 + r and degree-6 polynomial, ~1 ulp.
inline float exp_simd(float x) {
  x = x < -87.3f ? -87.3f : (x > 87.0f ? 87.0f : x);  // 2^n stays normal; 1 + 2 e^x stays finite
  const float shift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + shift) - shift;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

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

}  // namespace rnnkit_simd
