// The per-row math of kernels/lstm_scan.cpp: one LSTM step, forward and backward, for one batch
// row, with optional layer norm and peepholes (the equations at the top of lstm_scan.cpp and in
// cells/lstm.py), plus the layer norm's moments and backward. Plain loops under `omp simd`, so
// they vectorise; no tensor, no ATen op.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "simd_math.h"

namespace lstm_rows {

using rnnkit_simd::sigmoid;
using rnnkit_simd::tanh_simd;

constexpr double kEps = 1e-5;  // nn.LayerNorm's default, as scan.py

// The mean and 1 / sqrt(var + eps) of n values (two passes: no cancellation).
template <typename T>
inline void moments(const T* x, int64_t n, T& mean, T& rstd) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += x[j];
  const T m = s / T(n);
  T v = 0;
#pragma omp simd reduction(+ : v)
  for (int64_t j = 0; j < n; ++j) v += (x[j] - m) * (x[j] - m);
  mean = m;
  rstd = T(1) / std::sqrt(v / T(n) + T(kEps));
}

// d(input) of y = w * x_hat + b from dy, over n values: rstd (g - mean(g) - x_hat mean(g x_hat)),
// g = dy w; and the parameters' gradients accumulated: dw += dy x_hat, db += dy.
template <typename T>
inline void layer_norm_backward(const T* dy, const T* x_hat, const T* w, T rstd, int64_t n, T* dx, T* dw, T* db) {
  T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t j = 0; j < n; ++j) {
    const T g = dy[j] * w[j];
    s1 += g;
    s2 += g * x_hat[j];
    dw[j] += dy[j] * x_hat[j];
    db[j] += dy[j];
  }
  const T m1 = s1 / T(n), m2 = s2 / T(n);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dx[j] = rstd * (dy[j] * w[j] - m1 - x_hat[j] * m2);
}

// Where each parameter gradient sits in a thread's accumulators (13H), in units of H: the sum
// of dz (the bias's, also LN_hh's bias's), of dz x_hat (LN_hh's weight's), of dc_out c_hat and
// dc_out (LN_c's weight's and bias's), and the peepholes' (3H).
constexpr int64_t kSumDz = 0, kLnHhW = 4, kLnCW = 8, kLnCB = 9, kPeep = 10, kAcc = 13;

// The parameters as raw pointers: bias (4H) is zeros when absent; the others null when absent.
template <typename T>
struct Weights {
  const T* bias;
  const T* peephole;  // (3, H): p_i, p_f, p_o
  const T *ln_hh_w, *ln_hh_b, *ln_c_w, *ln_c_b;
};

// What one step writes, time-major rows of step t (the batch row is added in the pass).
template <typename T>
struct Step {
  T *gates, *tcs, *a_hats, *a_rstds, *c_hats, *c_rstds;
};

template <typename T, bool LN, bool PEEP>
void forward_row(const Weights<T>& w, const T* x, const T* a, const T* h, const T* c, T* h_next, T* c_next,
                 T* out, const Step<T>& s, int64_t b, bool valid, const int64_t H) {
  T* gate = s.gates + b * 4 * H;
  T* tc = s.tcs + b * H;
  T* a_hat = LN ? s.a_hats + b * 4 * H : nullptr;
  T mean = 0, rstd = 1;
  if (LN) {
    moments(a, 4 * H, mean, rstd);
    s.a_rstds[b] = rstd;
  }
  const T *bias = w.bias, *p = w.peephole;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    T z[4];
    for (int k = 0; k < 4; ++k) {
      const int64_t q = k * H + j;
      T r = a[q];
      if (LN) {
        const T ah = (r - mean) * rstd;
        a_hat[q] = ah;
        r = w.ln_hh_b[q] + ah * w.ln_hh_w[q];
      }
      z[k] = x[q] + r + bias[q];
    }
    const T cp = c[j];
    const T i = sigmoid(PEEP ? z[0] + p[j] * cp : z[0]);
    const T f = sigmoid(PEEP ? z[1] + p[H + j] * cp : z[1]);
    const T g = tanh_simd(z[2]);
    const T cn = f * cp + i * g;
    const T o = sigmoid(PEEP ? z[3] + p[2 * H + j] * cn : z[3]);
    gate[j] = i;
    gate[H + j] = f;
    gate[2 * H + j] = g;
    gate[3 * H + j] = o;
    c_next[j] = cn;
    if (!LN) {
      const T t = tanh_simd(cn);
      tc[j] = t;
      h_next[j] = o * t;
    }
  }
  if (LN) {
    T cm, cr;
    moments(c_next, H, cm, cr);
    s.c_rstds[b] = cr;
    T* c_hat = s.c_hats + b * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T ch = (c_next[j] - cm) * cr;
      c_hat[j] = ch;
      const T t = tanh_simd(w.ln_c_b[j] + ch * w.ln_c_w[j]);
      tc[j] = t;
      h_next[j] = gate[3 * H + j] * t;
    }
  }
  if (valid) {
    std::copy(h_next, h_next + H, out);
  } else {  // padding: the state stays, the output is 0
    std::fill(out, out + H, T(0));
    std::copy(h, h + H, h_next);
    std::copy(c, c + H, c_next);
  }
}

// One step back for one batch row. dh: dL/dh_t from later steps; dc: dL/dc_t in, dL/dc_{t-1}
// out. Writes dz (4H, the gate pre-activations' gradient) and with layer norm da (4H, the
// recurrent product's, before its layer norm); adds this step's share of every parameter
// gradient to acc (kAcc H). scratch: H.
template <typename T, bool LN, bool PEEP>
void backward_row(const Weights<T>& w, const T* d_out, const T* dh, T* dc, const T* c, const T* gate, const T* tc,
                  const T* a_hat, T a_rstd, const T* c_hat, T c_rstd, T* dz, T* da, T* acc, T* scratch, bool valid,
                  const int64_t H) {
  if (!valid) {  // nothing flows into a padded step's gates; dc passes through unchanged
    std::fill(dz, dz + 4 * H, T(0));
    if (LN) std::fill(da, da + 4 * H, T(0));
    return;
  }
  const T* p = w.peephole;
  T* dc_out = scratch;  // d(the cell's output, tanh's input)
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T dhn = d_out[j] + dh[j], o = gate[3 * H + j], t = tc[j];
    dc_out[j] = dhn * o * (T(1) - t * t);
    dz[3 * H + j] = dhn * t * (o * (T(1) - o));
  }
  T* dcn = LN ? dz : dc_out;  // d(c_t) before the carry: in dz's first H while it is free
  if (LN) layer_norm_backward(dc_out, c_hat, w.ln_c_w, c_rstd, H, dcn, acc + kLnCW * H, acc + kLnCB * H);
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T i = gate[j], f = gate[H + j], g = gate[2 * H + j];
    T d = dcn[j] + dc[j];
    if (PEEP) d += dz[3 * H + j] * p[2 * H + j];
    const T dzi = d * g * (i * (T(1) - i));
    const T dzf = d * c[j] * (f * (T(1) - f));
    dz[j] = dzi;
    dz[H + j] = dzf;
    dz[2 * H + j] = d * i * (T(1) - g * g);
    dc[j] = PEEP ? d * f + dzi * p[j] + dzf * p[H + j] : d * f;
    if (PEEP) {
      T* dp = acc + kPeep * H;
      dp[j] += dzi * c[j];
      dp[H + j] += dzf * c[j];
      dp[2 * H + j] += dz[3 * H + j] * (f * c[j] + i * g);  // p_o reads c_t = f c + i g
    }
  }
  if (LN) {
    layer_norm_backward(dz, a_hat, w.ln_hh_w, a_rstd, 4 * H, da, acc + kLnHhW * H, acc + kSumDz * H);
  } else {
#pragma omp simd
    for (int64_t q = 0; q < 4 * H; ++q) acc[kSumDz * H + q] += dz[q];
  }
}

}  // namespace lstm_rows
