// minGRU / minLSTM over a whole sequence on a CPU: the gates and the linear scan
//   h_t = a_t * h_{t-1} + b_t
// fused into one pass over time forward and one pass backward (cells/minimal.py, `_CompiledScan`).
//
// Input: the gate pre-activations without their bias, xw = x W^T, (B*T, C*H) with rows
// ordered (b, t) (C = 2 for minGRU [k_z | k_h], 3 for minLSTM [k_f | k_i | k_h]); the bias
// (C*H) is added on the fly. For a fixed b the rows of every tensor follow each other in
// memory, so each batch row is one sequential sweep over T; the inner loop runs over H
// (vectorised), batch rows are split across threads (at::parallel_for).
//
// Given x and W, the passes run the projection's GEMMs too, a chunk of steps at a time, on
// the chunk they are about to read (forward: xw = x W^T) or have just written (backward: dk
// into dW^T += x^T dk and dx = dk W): a chunk is in cache then, where the whole (B*T, C*H)
// tensor, 50 MB at T=1024, H=256, B=16, would go to memory and back.
//
//   minGRU:  z = s(k_z), a = 1 - z,          b = z g(k_h)
//   minLSTM: f, i = s(k_f), s(k_i), a = f/(f+i), b = i/(f+i) g(k_h)
//   g(v) = v + 1/2 for v >= 0, s(v) below; s = sigmoid
//
// Backward, with G_t = dL/dh_t over every path: G_t = dh_t + a_{t+1} G_{t+1} (reverse scan),
// then the gates' derivatives (written out in the cell functions below) and dh_0 = a_1 G_1.
// Nothing but xw and h is kept between the passes: the gates are recomputed, which costs
// less than writing and reading them back.
//
// Under bfloat16 autocast xw comes from a bfloat16 GEMM and stays bfloat16: the passes widen it
// to float32 as they read it (exactly: a bfloat16 is the top half of a float32) and the backward
// writes dk rounded to bfloat16 for the GEMMs after it, while the gates, the scan, dbias and dh0
// are float32 throughout: the numbers of a float32 pass over xw converted to float32, then dk
// converted to bfloat16 (to float32 rounding), without the two conversions' passes over memory.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>

#include "simd_math.h"

namespace {

using rnnkit_simd::exp_simd;
using rnnkit_simd::sigmoid;

// A stored gate pre-activation as its compute type: T itself, or bfloat16 bits widened.
template <typename T>
inline T widen(T v) {
  return v;
}
using rnnkit_simd::widen;
using rnnkit_simd::to_bfloat16;

// g(v) and g'(v) from s = sigmoid(v)
template <typename T>
inline T candidate(T v, T s) {
  return v >= T(0) ? v + T(0.5) : s;
}
template <typename T>
inline T candidate_slope(T v, T s) {
  return v >= T(0) ? T(1) : s * (T(1) - s);
}

// One element of a minGRU step. k points at the row's k_z; k_h is H further on.
template <typename T>
struct MinGRU {
  static constexpr int chunks = 2;

  template <typename K>
  static inline T step(const K* k, const T* bias, int64_t H, int64_t j, T h_prev) {
    const T z = sigmoid(widen(k[j]) + bias[j]);
    const T v = widen(k[H + j]) + bias[H + j];
    return (T(1) - z) * h_prev + z * candidate(v, sigmoid(v));
  }

  // dk (same layout as k) from G = dL/dh_t; returns a_t for the step before.
  template <typename K>
  static inline T grad(const K* k, const T* bias, int64_t H, int64_t j, T h_prev, T G, T* dk) {
    const T z = sigmoid(widen(k[j]) + bias[j]);
    const T v = widen(k[H + j]) + bias[H + j];
    const T s = sigmoid(v);
    const T c = candidate(v, s);
    dk[j] = G * (c - h_prev) * z * (T(1) - z);  // dh/dz = c - h_{t-1}
    dk[H + j] = G * z * candidate_slope(v, s);
    return T(1) - z;
  }
};

// With u = 1 + e^{-k_f}, w = 1 + e^{-k_i} (f = 1/u, i = 1/w) the normalised gates are
// a = f/(f+i) = w/(u+w) and i/(f+i) = u/(u+w): one division instead of three. Backward:
// dk_f = G e^{-k_f} w (h_{t-1} - c)/(u+w)^2, dk_i = -G e^{-k_i} u (h_{t-1} - c)/(u+w)^2,
// dk_h = G u/(u+w) g'. u and w are scaled by e^{-m}, m = max(0, -k_f, -k_i), so that no
// exponent is positive: when both gates are shut (k < -87) their ratio stays exact.
template <typename T>
struct MinLSTM {
  static constexpr int chunks = 3;

  struct Gates {
    T ef, ei, u, w, r;  // e^{-k_f - m}, e^{-k_i - m}, u e^{-m}, w e^{-m}, 1/(u + w) e^{m}
  };

  static inline Gates gates(T k_f, T k_i) {
    const T m = std::max(T(0), std::max(-k_f, -k_i));
    const T one = exp_simd(-m);
    Gates g;
    g.ef = exp_simd(-k_f - m);
    g.ei = exp_simd(-k_i - m);
    g.u = one + g.ef;
    g.w = one + g.ei;
    g.r = T(1) / (g.u + g.w);
    return g;
  }

  template <typename K>
  static inline T step(const K* k, const T* bias, int64_t H, int64_t j, T h_prev) {
    const Gates g = gates(widen(k[j]) + bias[j], widen(k[H + j]) + bias[H + j]);
    const T v = widen(k[2 * H + j]) + bias[2 * H + j];
    return g.w * g.r * h_prev + g.u * g.r * candidate(v, sigmoid(v));
  }

  template <typename K>
  static inline T grad(const K* k, const T* bias, int64_t H, int64_t j, T h_prev, T G, T* dk) {
    const Gates g = gates(widen(k[j]) + bias[j], widen(k[H + j]) + bias[H + j]);
    const T v = widen(k[2 * H + j]) + bias[2 * H + j];
    const T s = sigmoid(v);
    const T q = G * (h_prev - candidate(v, s));
    dk[j] = q * (g.ef * g.r) * (g.w * g.r);
    dk[H + j] = -q * (g.ei * g.r) * (g.u * g.r);
    dk[2 * H + j] = G * g.u * g.r * candidate_slope(v, s);
    return g.w * g.r;
  }
};

// Steps t_lo .. t_hi-1 of batch row b (h_{t_lo - 1}: h0's row, or h's previous step); xw stored
// as K: T, or bfloat16 bits.
template <typename Cell, typename T, typename K>
void forward_steps(const K* xw, const T* bias, const T* h0, T* h, int64_t b, int64_t t_lo, int64_t t_hi,
                   int64_t T_, int64_t H) {
  const int64_t width = Cell::chunks * H;
  const T* h_prev = t_lo > 0 ? h + (b * T_ + t_lo - 1) * H : h0 + b * H;
  for (int64_t t = t_lo; t < t_hi; ++t) {
    const K* k = xw + (b * T_ + t) * width;
    T* out = h + (b * T_ + t) * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) out[j] = Cell::step(k, bias, H, j, h_prev[j]);
    h_prev = out;
  }
}

// Steps per chunk of the fused passes. Forward: a chunk's xw (768 KB for minLSTM at H=256) is
// still in cache (L2, or L3) when the pass reads it, right after its GEMM; backward: its dk
// (384 KB) stays in L2 between the pass that writes it and the GEMMs that read it. Measured on
// a Xeon with 2 MB of L2: smaller forward chunks make the GEMM slower than the reads they save.
constexpr int64_t kForwardChunk = 256, kBackwardChunk = 128;

// Backward walks time in reverse, which the hardware prefetchers follow poorly: fetch the
// rows kAhead steps back explicitly (a cache line is 64 bytes).
constexpr int64_t kAhead = 4;

template <typename T, typename K>
inline void prefetch_rows(const K* k, int64_t width, const T* g, const T* h_prev, int64_t H) {
  for (int64_t j = 0; j < width; j += 64 / sizeof(K)) __builtin_prefetch(k + j);
  constexpr int64_t line = 64 / sizeof(T);
  for (int64_t j = 0; j < H; j += line) {
    __builtin_prefetch(g + j);
    __builtin_prefetch(h_prev + j);
  }
}

// Steps t_hi-1 down to t_lo of batch row b. carry (2H): a_{t+1} and G_{t+1}, zero past the last
// step and carried from one range to the next; step t's dk goes to row t - t_lo of dk_rows, as
// D (T, or bfloat16 bits: then computed in scratch (C*H) first); dbias (C*H) accumulates in T.
template <typename Cell, typename T, typename K, typename D>
void backward_steps(const K* xw, const T* bias, const T* h, const T* h0, const T* dh, D* dk_rows, T* dbias,
                    T* carry, T* scratch, int64_t b, int64_t t_lo, int64_t t_hi, int64_t T_, int64_t H) {
  constexpr bool rounded = !std::is_same_v<D, T>;
  const int64_t width = Cell::chunks * H;
  T* a_next = carry;
  T* G_next = carry + H;
  for (int64_t t = t_hi - 1; t >= t_lo; --t) {
    const int64_t row = b * T_ + t;
    const K* k = xw + row * width;
    D* out = dk_rows + (t - t_lo) * width;
    T* d;
    if constexpr (rounded) d = scratch; else d = out;
    const T* g_out = dh + row * H;
    const T* h_prev = t > 0 ? h + (row - 1) * H : h0 + b * H;
    if (t >= kAhead + 1) prefetch_rows(xw + (row - kAhead) * width, width, dh + (row - kAhead) * H,
                                       h + (row - kAhead - 1) * H, H);
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T G = g_out[j] + a_next[j] * G_next[j];
      a_next[j] = Cell::grad(k, bias, H, j, h_prev[j], G, d);
      G_next[j] = G;
    }
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) dbias[j] += d[j];
    if constexpr (rounded) {
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) out[j] = to_bfloat16(d[j]);
    }
  }
}

// dh0 of batch row b once its steps are done: a_1 G_1.
template <typename T>
inline void finish_row(const T* carry, T* dh0, int64_t b, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) dh0[b * H + j] = carry[j] * carry[H + j];
}

void check(const at::Tensor& xw, const at::Tensor& bias, const at::Tensor& h0, int64_t chunks) {
  TORCH_CHECK(chunks == 2 || chunks == 3, "chunks must be 2 (minGRU) or 3 (minLSTM)");
  TORCH_CHECK(xw.dim() == 2 && xw.is_contiguous() && h0.is_contiguous() && bias.is_contiguous(),
              "contiguous xw (B*T, C*H), bias (C*H), h0 (B, H) expected");
  TORCH_CHECK(xw.size(1) == chunks * h0.size(1) && bias.numel() == xw.size(1) && xw.size(0) % h0.size(0) == 0,
              "xw, bias and h0 do not fit together");
  TORCH_CHECK(bias.scalar_type() == h0.scalar_type() &&
                  (xw.scalar_type() == h0.scalar_type() ||
                   (xw.scalar_type() == at::kBFloat16 && h0.scalar_type() == at::kFloat)),
              "one dtype expected (or xw bfloat16, the rest float32)");
}

// Runs fn(K{}) with K the storage type of xw: scalar_t (h0's type), or std::uint16_t for bfloat16 bits.
template <typename scalar_t, typename F>
void with_storage(const at::Tensor& xw, F&& fn) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (xw.scalar_type() == at::kBFloat16) return fn(std::uint16_t{});
  }
  fn(scalar_t{});
}

template <typename K>
const K* stored(const at::Tensor& t) {
  return static_cast<const K*>(t.const_data_ptr());
}

void check_projection(const at::Tensor& xw, const at::Tensor& x2, const at::Tensor& weight) {
  TORCH_CHECK(x2.dim() == 2 && x2.is_contiguous() && x2.size(0) == xw.size(0) && weight.dim() == 2 &&
                  weight.is_contiguous() && weight.size(0) == xw.size(1) && weight.size(1) == x2.size(1) &&
                  x2.scalar_type() == xw.scalar_type() && weight.scalar_type() == xw.scalar_type(),
              "contiguous x (B*T, I) and weight (C*H, I) of xw's dtype expected");
}

}  // namespace

// xw (B*T, C*H) = x W^T without the bias; bias (C*H,); h0 (B, H). Writes and returns h (B, T, H)
// (the caller may reuse it across calls, as dk below). Given x2 (B*T, I) and weight (C*H, I),
// xw is computed here, kForwardChunk steps at a time just before the pass reads them; else xw
// holds it already.
at::Tensor scan_forward(at::Tensor xw, const at::Tensor& bias, const at::Tensor& h0, int64_t chunks, at::Tensor h,
                        const std::optional<at::Tensor>& x2, const std::optional<at::Tensor>& weight) {
  check(xw, bias, h0, chunks);
  const int64_t B = h0.size(0), H = h0.size(1), T_ = xw.size(0) / B;
  TORCH_CHECK(h.is_contiguous() && h.sizes() == at::IntArrayRef({B, T_, H}) && h.scalar_type() == h0.scalar_type(),
              "h must be a contiguous (B, T, H) tensor of h0's dtype");
  const bool project = x2.has_value() && weight.has_value();
  if (project) check_projection(xw, *x2, *weight);
  // detached: grad mode is on in torch's other threads, and these GEMMs must not be recorded
  const at::Tensor x_ = project ? x2->detach() : at::Tensor(), w_t = project ? weight->detach().t() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "scan_forward", [&] {
    with_storage<scalar_t>(xw, [&](auto storage) {
      using K = decltype(storage);
      const K* k = stored<K>(xw);
      const auto *bi = bias.data_ptr<scalar_t>(), *h0_ = h0.data_ptr<scalar_t>();
      auto* out = h.data_ptr<scalar_t>();
      auto steps = chunks == 2 ? forward_steps<MinGRU<scalar_t>, scalar_t, K> : forward_steps<MinLSTM<scalar_t>, scalar_t, K>;
      const int64_t chunk = project ? kForwardChunk : T_;  // xw given: the whole row at once
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          for (int64_t t_lo = 0; t_lo < T_; t_lo += chunk) {
            const int64_t n = std::min(chunk, T_ - t_lo), row = b * T_ + t_lo;
            if (project) {
              at::Tensor xw_n = xw.narrow(0, row, n);
              at::mm_out(xw_n, x_.narrow(0, row, n), w_t);
            }
            steps(k, bi, h0_, out, b, t_lo, t_lo + n, T_, H);
          }
        }
      });
    });
  });
  return h;
}

// The gradients of scan_forward from dh (B, T, H): (dxw (B*T, C*H), dbias (C*H,), dh0 (B, H));
// dk: where dxw goes, like xw, bfloat16 too if xw is (the caller may reuse it across calls: a
// fresh 32 MB tensor costs more in page faults than this whole pass).
std::vector<at::Tensor> scan_backward(const at::Tensor& xw, const at::Tensor& bias, const at::Tensor& h,
                                      const at::Tensor& h0, const at::Tensor& dh, at::Tensor dk, int64_t chunks) {
  check(xw, bias, h0, chunks);
  TORCH_CHECK(h.is_contiguous() && dh.is_contiguous() && dh.sizes() == h.sizes(), "contiguous h, dh expected");
  TORCH_CHECK(dk.is_contiguous() && dk.sizes() == xw.sizes() && dk.scalar_type() == xw.scalar_type(),
              "dk must be like xw");
  TORCH_CHECK(h.scalar_type() == h0.scalar_type() && dh.scalar_type() == h0.scalar_type(), "h, dh of h0's dtype expected");
  const int64_t B = h0.size(0), H = h0.size(1), T_ = xw.size(0) / B, width = xw.size(1);
  auto dh0 = at::empty_like(h0);
  auto dbias_rows = at::zeros({B, width}, h0.options());  // per batch row: no two threads share one
  auto carry = at::empty({B, 2 * H}, h0.options());
  auto scratch = at::empty({B, width}, h0.options());  // per batch row: dk before its rounding to bfloat16
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "scan_backward", [&] {
    with_storage<scalar_t>(xw, [&](auto storage) {
      using K = decltype(storage);
      const K* k = stored<K>(xw);
      K* d = static_cast<K*>(dk.data_ptr());
      const auto *bi = bias.data_ptr<scalar_t>(), *h_ = h.data_ptr<scalar_t>(), *h0_ = h0.data_ptr<scalar_t>(),
                 *dh_ = dh.data_ptr<scalar_t>();
      auto *dh0_ = dh0.data_ptr<scalar_t>(), *db = dbias_rows.data_ptr<scalar_t>(), *c = carry.data_ptr<scalar_t>(),
           *s = scratch.data_ptr<scalar_t>();
      auto steps = chunks == 2 ? backward_steps<MinGRU<scalar_t>, scalar_t, K, K>
                               : backward_steps<MinLSTM<scalar_t>, scalar_t, K, K>;
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {  // one row at a time: its own dbias row and scratch
          scalar_t* carry_b = c + b * 2 * H;
          std::fill(carry_b, carry_b + 2 * H, scalar_t(0));
          steps(k, bi, h_, h0_, dh_, d + b * T_ * width, db + b * width, carry_b, s + b * width, b, 0, T_, T_, H);
          finish_row(carry_b, dh0_, b, H);
        }
      });
    });
  });
  return {dk, dbias_rows.sum(0), dh0};
}

// scan_backward fused with the projection's gradients, for x2 (B*T, I) and weight (C*H, I):
// (dweight (C*H, I), dbias, dh0, dx (B*T, I), or undefined unless input_grad). Each batch row's
// steps run backwards in chunks of kBackwardChunk, and each chunk's dk goes straight into
//   dW^T += x_chunk^T dk_chunk,   dx_chunk = dk_chunk W
// (the long reduction over B*T as x^T dk: MKL's faster layout), so the (B*T, C*H) dk is never
// written to memory and read back by the GEMMs: 100 MB at T=1024, H=256, B=16, about as long
// as the pass itself where one core streams memory at ~10-20 GB/s.
std::vector<at::Tensor> scan_backward_fused(const at::Tensor& xw, const at::Tensor& bias, const at::Tensor& h,
                                            const at::Tensor& h0, const at::Tensor& dh, const at::Tensor& x2,
                                            const at::Tensor& weight, int64_t chunks, bool input_grad) {
  check(xw, bias, h0, chunks);
  TORCH_CHECK(xw.scalar_type() == h0.scalar_type(), "xw of h0's dtype expected (bfloat16 runs scan_backward)");
  TORCH_CHECK(h.is_contiguous() && dh.is_contiguous() && dh.sizes() == h.sizes(), "contiguous h, dh expected");
  check_projection(xw, x2, weight);
  const int64_t B = h0.size(0), H = h0.size(1), T_ = xw.size(0) / B, width = xw.size(1), I = x2.size(1);
  const int64_t threads = at::get_num_threads();
  auto opt = xw.options();
  auto dweight_t = at::zeros({threads, I, width}, opt);  // per thread: dW^T (I, C*H)
  auto dbias_rows = at::zeros({B, width}, opt);
  auto dh0 = at::empty_like(h0);
  auto dx = input_grad ? at::empty({B * T_, I}, opt) : at::Tensor();
  // Detached: grad mode is per thread, on in torch's other threads, and these GEMMs must not
  // be recorded (an out= GEMM on a tensor that requires grad refuses to run at all).
  const at::Tensor x_ = x2.detach(), w_ = weight.detach();
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "scan_backward_fused", [&] {
    const auto *k = xw.data_ptr<scalar_t>(), *bi = bias.data_ptr<scalar_t>(), *h_ = h.data_ptr<scalar_t>(),
               *h0_ = h0.data_ptr<scalar_t>(), *dh_ = dh.data_ptr<scalar_t>();
    auto *dh0_ = dh0.data_ptr<scalar_t>(), *db = dbias_rows.data_ptr<scalar_t>();
    auto steps = chunks == 2 ? backward_steps<MinGRU<scalar_t>, scalar_t, scalar_t, scalar_t>
                             : backward_steps<MinLSTM<scalar_t>, scalar_t, scalar_t, scalar_t>;
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      const int64_t thread = at::get_thread_num();
      TORCH_CHECK(thread < threads, "more threads than at::get_num_threads()");
      at::Tensor dk = at::empty({kBackwardChunk, width}, opt), dwt = dweight_t[thread];
      auto carry = at::zeros({2 * H}, opt);
      scalar_t *d = dk.data_ptr<scalar_t>(), *c = carry.data_ptr<scalar_t>();
      for (int64_t b = b0; b < b1; ++b) {
        std::fill(c, c + 2 * H, scalar_t(0));
        for (int64_t t_hi = T_; t_hi > 0; t_hi -= kBackwardChunk) {
          const int64_t t_lo = std::max<int64_t>(0, t_hi - kBackwardChunk), n = t_hi - t_lo, row = b * T_ + t_lo;
          steps(k, bi, h_, h0_, dh_, d, db + b * width, c, nullptr, b, t_lo, t_hi, T_, H);
          const auto dk_n = dk.narrow(0, 0, n);
          dwt.addmm_(x_.narrow(0, row, n).t(), dk_n);
          if (input_grad) {
            at::Tensor dx_n = dx.narrow(0, row, n);
            at::mm_out(dx_n, dk_n, w_);
          }
        }
        finish_row(c, dh0_, b, H);
      }
    });
  });
  return {dweight_t.sum(0).t().contiguous(), dbias_rows.sum(0), dh0, dx};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scan_forward", &scan_forward, "minGRU/minLSTM gates and linear scan over a sequence (and the projection)",
        py::arg("xw"), py::arg("bias"), py::arg("h0"), py::arg("chunks"), py::arg("h"), py::arg("x2") = py::none(),
        py::arg("weight") = py::none());
  m.def("scan_backward", &scan_backward, "the gradient of scan_forward");
  m.def("scan_backward_fused", &scan_backward_fused, "the gradients of scan_forward and of the projection before it");
}
