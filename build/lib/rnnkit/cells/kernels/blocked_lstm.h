// The blocked LSTM step of kernels/stream_step.cpp: one layer, a few batch rows, our own
// matrix-vector product fused with the gates and the state update. Per layer, gates in
// torch's order i, f, g, o:
//   z = W_ih x + W_hh h + b;  i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
//   c' = f * c + i * g;       h' = o * tanh(c')
// over weights laid out for it (blocks of LANES units, 4 gates x LANES floats per input), so
// each half of a layer's weights (W_ih, W_hh) is ONE pass in the order it sits in memory, and
// a step costs what reading the weights costs (the memory floor); a layer's finish then adds
// the halves' sums and applies the gates. The weights are float32, or bfloat16 widened
// exactly to float32 on load (a bfloat16 is the top half of a float32).
//
// Compiled with -O3 -march=native: the vectors (GCC/Clang vector extensions) are as wide as the
// CPU's (AVX-512, AVX2, SSE/NEON), and so are the blocks of the layout (kLanes).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "simd_math.h"

namespace blocked_lstm {

// One vector of the widest kind the CPU has; the weight layout follows it (LANES units per block).
// kTile: batch rows sharing one pass over the weights, 4 accumulators each, all in registers.
#if defined(__AVX512F__)
constexpr int kLanes = 16, kTile = 4;  // 16 of 32 zmm registers accumulate
#elif defined(__AVX__)
constexpr int kLanes = 8, kTile = 2;   // 8 of 16 ymm registers
#else
constexpr int kLanes = 4, kTile = 2;   // SSE or NEON
#endif
constexpr int kBlock = 4 * kLanes;     // floats per (block, k): gates i, f, g, o of kLanes units

typedef float vec __attribute__((vector_size(4 * kLanes)));
typedef float uvec __attribute__((vector_size(4 * kLanes), aligned(4)));  // an unaligned load/store

#define HOT inline __attribute__((always_inline))  // in the step's loop: never a call

inline vec load(const float* p) { return *reinterpret_cast<const uvec*>(p); }
inline void store(float* p, vec v) { *reinterpret_cast<uvec*>(p) = v; }

HOT vec vsigmoid(vec x) { return 1.0f / (1.0f + rnnkit_simd::exp_poly(-x)); }
HOT vec vtanh(vec x) { return 2.0f / (1.0f + rnnkit_simd::exp_poly(-2.0f * x)) - 1.0f; }  // absolute error ~1e-7

// kLanes floats of a row from `from` (only `n` <= kLanes of them exist there)
inline vec load_part(const float* from, int n) {
  if (n == kLanes) return load(from);
  float buffer[kLanes] = {};
  std::memcpy(buffer, from, n * sizeof(float));
  return load(buffer);
}

inline void store_part(float* to, vec v, int n) {
  if (n == kLanes) return store(to, v);
  float buffer[kLanes];
  store(buffer, v);
  std::memcpy(to, buffer, n * sizeof(float));
}

// Accumulate `length` inputs of `rows` batch rows (row b at in + b * stride) against the
// blocked weights w (length, 4, kLanes): acc[b][gate] += sum_k w[k][gate] * in[b][k].
template <int Rows>
HOT void accumulate(vec (&acc)[kTile][4], const float* w, const float* in, int64_t stride,
                       int64_t length) {
  for (int64_t k = 0; k < length; ++k, w += kBlock) {
    const vec wi = load(w), wf = load(w + kLanes), wg = load(w + 2 * kLanes), wo = load(w + 3 * kLanes);
    for (int b = 0; b < Rows; ++b) {
      const float v = in[b * stride + k];
      acc[b][0] += wi * v;
      acc[b][1] += wf * v;
      acc[b][2] += wg * v;
      acc[b][3] += wo * v;
    }
  }
}

// Weights stored as float32 (BlockedStack) or bfloat16 (BlockedStackBF16). A bfloat16 block
// row holds TWO inputs: (4, kLanes, 2) with inputs k, k+1 side by side in one 32-bit word,
// so one load yields both as float32 by one shift (input k, the low half) and one mask (k+1).
typedef unsigned int wvec __attribute__((vector_size(4 * kLanes), aligned(4)));  // 2 bfloat16 per lane

template <typename W>
struct Layout;
template <>
struct Layout<float> {  // (U, I + H, 4, kLanes)
  static int64_t rows(int64_t inputs) { return inputs; }
  static constexpr int64_t row = kBlock;
};
template <>
struct Layout<std::uint16_t> {  // (U, ceil(I/2) + ceil(H/2), 4, kLanes, 2)
  static int64_t rows(int64_t inputs) { return (inputs + 1) / 2; }
  static constexpr int64_t row = 2 * kBlock;
};

template <int Rows>
HOT void accumulate(vec (&acc)[kTile][4], const std::uint16_t* w, const float* in, int64_t stride,
                    int64_t length) {
  // Rows == 1 has too few independent sums to hide the FMA latency (two FMAs per sum per
  // row of weights): the odd inputs get their own accumulators, added at the end.
  constexpr bool split = Rows == 1;
  vec odd[kTile][4] = {};
  const int64_t pairs = length / 2;
  for (int64_t p = 0; p < pairs; ++p, w += 2 * kBlock) {
    for (int gate = 0; gate < 4; ++gate) {
      const wvec words = *reinterpret_cast<const wvec*>(w + gate * 2 * kLanes);
      const vec even_w = (vec)(words << 16), odd_w = (vec)(words & 0xFFFF0000u);
      for (int b = 0; b < Rows; ++b) {
        acc[b][gate] += even_w * in[b * stride + 2 * p];
        (split ? odd[b][gate] : acc[b][gate]) += odd_w * in[b * stride + 2 * p + 1];
      }
    }
  }
  if (length % 2) {  // the last input alone: its partner's weights are zero, and never read
    for (int gate = 0; gate < 4; ++gate) {
      const vec even_w = (vec)(*reinterpret_cast<const wvec*>(w + gate * 2 * kLanes) << 16);
      for (int b = 0; b < Rows; ++b) acc[b][gate] += even_w * in[b * stride + length - 1];
    }
  }
  if (split)
    for (int b = 0; b < Rows; ++b)
      for (int gate = 0; gate < 4; ++gate) acc[b][gate] += odd[b][gate];
}

// A layer's weights in two halves, each read by a pass of its own: W_ih (against the layer's
// input) and W_hh (against its state). A pass writes its sums, the layer's finish adds them.
enum Half { kInputHalf, kHiddenHalf };

// One half for `Rows` batch rows (row b at in + b * length) and the unit blocks [first, last),
// in ascending or descending order: sums[b][u] (4, kLanes) = W_half[u] in[b], gates i, f, g, o.
template <int Rows, typename W>
void half_rows(const W* weight, int64_t width, int64_t offset, const float* in, int64_t length, float* sums,
               int64_t blocks, int64_t first, int64_t last, bool descending) {
  using L = Layout<W>;
  for (int64_t i = first; i < last; ++i) {
    const int64_t u = descending ? first + last - 1 - i : i;
    vec acc[kTile][4] = {};
    accumulate<Rows>(acc, weight + (u * width + offset) * L::row, in, length, length);
    for (int b = 0; b < Rows; ++b)
      for (int gate = 0; gate < 4; ++gate) store(sums + ((b * blocks + u) * 4 + gate) * kLanes, acc[b][gate]);
  }
}

// One half of one layer for the whole batch, weights (U, I + H, 4, kLanes) (or their bfloat16
// Layout): batch tiles of kTile rows, each one pass over the half; the unit blocks split across
// torch's intra-op threads (each takes >= ~256 KB of the layer's weights), each thread's range
// in the order asked. sums (B, U, 4, kLanes).
template <typename W>
void half_pass(const W* weight, int64_t blocks, int64_t input_size, int64_t hidden, Half half, const float* in,
               int64_t batch, float* sums, bool descending) {
  using L = Layout<W>;
  const int64_t width = L::rows(input_size) + L::rows(hidden);
  const int64_t offset = half == kInputHalf ? 0 : L::rows(input_size), length = half == kInputHalf ? input_size : hidden;
  const int64_t block_bytes = width * L::row * static_cast<int64_t>(sizeof(W));
  const int64_t grain = std::max<int64_t>(1, (256 << 10) / block_bytes);
  at::parallel_for(0, blocks, grain, [&](int64_t first, int64_t last) {
    for (int64_t row = 0; row < batch; row += kTile) {
      const float* inr = in + row * length;
      float* out = sums + row * blocks * kBlock;
      switch (std::min<int64_t>(kTile, batch - row)) {  // the row count is a compile-time constant inside
        case 1: half_rows<1>(weight, width, offset, inr, length, out, blocks, first, last, descending); break;
#if defined(__AVX512F__)  // kTile == 4
        case 3: half_rows<3>(weight, width, offset, inr, length, out, blocks, first, last, descending); break;
        case 4: half_rows<4>(weight, width, offset, inr, length, out, blocks, first, last, descending); break;
#endif
        default: half_rows<2>(weight, width, offset, inr, length, out, blocks, first, last, descending);
      }
    }
  });
}

// The layer's gates and state update from its halves' sums: z = (b + W_ih x) + W_hh h, added in
// this order whichever half ran first, so a step's result never depends on the order of its
// passes. bias (U, 4, kLanes); c, h_out, c_out (B, H) row-major.
inline void finish_layer(const float* bias, const float* sums_x, const float* sums_h, const float* c, int64_t batch,
                         int64_t hidden, int64_t blocks, float* h_out, float* c_out) {
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t u = 0; u < blocks; ++u) {
      const int64_t at = (b * blocks + u) * kBlock;
      vec z[4];
      for (int gate = 0; gate < 4; ++gate) {
        const int64_t g = gate * kLanes;
        z[gate] = (load(bias + u * kBlock + g) + load(sums_x + at + g)) + load(sums_h + at + g);
      }
      const int64_t unit = u * kLanes, row = b * hidden + unit;
      const int n = static_cast<int>(std::min<int64_t>(kLanes, hidden - unit));
      const vec c_next = vsigmoid(z[1]) * load_part(c + row, n) + vsigmoid(z[0]) * vtanh(z[2]);
      store_part(c_out + row, c_next, n);
      store_part(h_out + row, vsigmoid(z[3]) * vtanh(c_next), n);
    }
  }
}

}  // namespace blocked_lstm
