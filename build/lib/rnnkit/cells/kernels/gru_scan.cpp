// The GRU recurrence over a whole sequence on a CPU, forward and backward, each one C++ loop
// over time (cells/scan.py, `CompiledGRUScan`; the equations are cells/gru.py's):
//   r = s(x_r + W_hr h + b_hr),  z = s(x_z + W_hz h + b_hz),  s = sigmoid
//   n = tanh(x_n + r * (W_hn h + b_hn)),  h' = (1 - z) n + z h
// with x = W_ih x_t + b_ih precomputed for every step (one large product, outside).
//
// Per step: one GEMM for the recurrent product (MKL, through ATen, into a preallocated buffer),
// then ONE vectorised pass over the batch for all the pointwise gate math, so no tensor is
// allocated and no pointwise ATen op dispatched inside the loop. Backward, per step: the pass
// for every pointwise derivative, then dh_{t-1} += d(W_hh h) W_hh as one GEMM accumulating into
// the pointwise part; dW_hh is one GEMM over all steps at the end, the bias gradient is summed
// inside the passes (per thread, while the values are in registers).
//
// Layouts: xw, the outputs, d_out and d_xw are batch-first (B, T, .) like the layer's tensors,
// so no transposing copy is needed on either side of the kernel; what backward keeps from
// forward (gates r, z, n; W_hn h + b_hn; the state entering each step) is time-major (T, B, .)
// so that each step's rows are one contiguous matrix for the GEMMs.
//
// valid (B, T) bool, optional: a padded step keeps the state and outputs 0 (and passes the
// state's gradient straight through).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>

#include "simd_math.h"

namespace {

using rnnkit_simd::sigmoid;
using rnnkit_simd::tanh_simd;

// Batch rows per thread chunk: below ~4K elements a step's pass is cheaper than a thread wake-up.
int64_t grain(int64_t H) { return std::max<int64_t>(1, 4096 / (3 * H)); }

template <typename T>
struct Forward {
  const T* xw;        // (B, T, 3H)
  const T* hw;        // (B, 3H): W_hh h + b_hh of this step
  const T* h;         // (B, H): the state entering this step
  const bool* valid;  // (B, T) or nullptr
  T* gates;           // (B, 3H): r, z, n of this step
  T* hn;              // (B, H): W_hn h + b_hn
  T* h_next;          // (B, H)
  T* out;             // (B, T, H)
  int64_t T_, H, t;

  void rows(int64_t b0, int64_t b1) const {
    for (int64_t b = b0; b < b1; ++b) {
      const T* x = xw + (b * T_ + t) * 3 * H;
      const T* g = hw + b * 3 * H;
      const T* hp = h + b * H;
      T* gr = gates + b * 3 * H;
      T* hn_ = hn + b * H;
      T* hx = h_next + b * H;
      T* o = out + (b * T_ + t) * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T r = sigmoid(x[j] + g[j]);
        const T z = sigmoid(x[H + j] + g[H + j]);
        const T n = tanh_simd(x[2 * H + j] + r * g[2 * H + j]);
        const T h_new = n + z * (hp[j] - n);
        gr[j] = r;
        gr[H + j] = z;
        gr[2 * H + j] = n;
        hn_[j] = g[2 * H + j];
        hx[j] = o[j] = h_new;
      }
      if (valid != nullptr && !valid[b * T_ + t]) {  // padding: after the loop, so that the loop stays branch-free
        std::copy(hp, hp + H, hx);
        std::fill(o, o + H, T(0));
      }
    }
  }
};

template <typename T>
struct Backward {
  const T* d_out;     // (B, T, H)
  const T* gates;     // (B, 3H) of this step
  const T* hn;        // (B, H)
  const T* h;         // (B, H): the state entering this step
  const bool* valid;  // (B, T) or nullptr
  T* dh;              // (B, H): in dL/dh_t, out the pointwise part of dL/dh_{t-1}
  T* dhw;             // (B, 3H): d(W_hh h + b_hh) of this step
  T* dxw;             // (B, T, 3H)
  T* dbias;           // (B, 3H): each thread chunk accumulates into its first row
  int64_t T_, H, t;

  void rows(int64_t b0, int64_t b1) const {
    T* db = dbias + b0 * 3 * H;
    for (int64_t b = b0; b < b1; ++b) {
      T* dw = dhw + b * 3 * H;
      T* dx = dxw + (b * T_ + t) * 3 * H;
      if (valid != nullptr && !valid[b * T_ + t]) {  // padding: dh passes through unchanged
        std::fill(dw, dw + 3 * H, T(0));
        std::fill(dx, dx + 3 * H, T(0));
        continue;
      }
      const T* go = d_out + (b * T_ + t) * H;
      const T* gr = gates + b * 3 * H;
      const T* hn_ = hn + b * H;
      const T* hp = h + b * H;
      T* d = dh + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T r = gr[j], z = gr[H + j], n = gr[2 * H + j];
        const T g = go[j] + d[j];  // dL/dh_t over every path
        const T dz = g * (hp[j] - n) * z * (T(1) - z);
        const T dn = g * (T(1) - z) * (T(1) - n * n);
        const T dr = dn * hn_[j] * r * (T(1) - r);
        dw[j] = dx[j] = dr;
        dw[H + j] = dx[H + j] = dz;
        dw[2 * H + j] = dn * r;
        dx[2 * H + j] = dn;
        d[j] = g * z;
      }
#pragma omp simd
      for (int64_t j = 0; j < 3 * H; ++j) db[j] += dw[j];
    }
  }
};

void check(const at::Tensor& xw, const at::Tensor& h0, const at::Tensor& weight_hh,
           const std::optional<at::Tensor>& bias_hh, const std::optional<at::Tensor>& valid) {
  TORCH_CHECK(xw.dim() == 3 && h0.dim() == 2 && weight_hh.dim() == 2, "xw (B, T, 3H), h0 (B, H), weight_hh (3H, H)");
  const int64_t B = xw.size(0), T_ = xw.size(1), H = h0.size(1);
  TORCH_CHECK(xw.size(2) == 3 * H && h0.size(0) == B && weight_hh.size(0) == 3 * H && weight_hh.size(1) == H,
              "xw, h0 and weight_hh do not fit together");
  TORCH_CHECK(xw.is_contiguous() && h0.is_contiguous(), "contiguous xw and h0 expected");
  TORCH_CHECK(xw.scalar_type() == h0.scalar_type() && xw.scalar_type() == weight_hh.scalar_type(), "one dtype expected");
  if (bias_hh) TORCH_CHECK(bias_hh->numel() == 3 * H && bias_hh->scalar_type() == xw.scalar_type(), "bias_hh (3H,)");
  if (valid)
    TORCH_CHECK(valid->scalar_type() == at::kBool && valid->is_contiguous() && valid->size(0) == B &&
                    valid->size(1) == T_, "valid: contiguous bool (B, T)");
}

}  // namespace

// Returns (outputs (B, T, H), h_T (B, H), and for gru_backward: gates (T, B, 3H),
// hn (T, B, H), the states entering each step (T, B, H)).
std::vector<at::Tensor> gru_forward(const at::Tensor& xw, const at::Tensor& h0, const at::Tensor& weight_hh,
                                    const std::optional<at::Tensor>& bias_hh, const std::optional<at::Tensor>& valid) {
  check(xw, h0, weight_hh, bias_hh, valid);
  const int64_t B = xw.size(0), T_ = xw.size(1), H = h0.size(1);
  auto out = at::empty({B, T_, H}, xw.options());
  auto gates = at::empty({T_, B, 3 * H}, xw.options());
  auto hn = at::empty({T_, B, H}, xw.options());
  auto states = at::empty({T_, B, H}, xw.options());
  auto h_T = at::empty({B, H}, xw.options());
  auto hw = at::empty({B, 3 * H}, xw.options());
  const auto w_t = weight_hh.t();
  if (T_ > 0) states[0].copy_(h0);
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "gru_forward", [&] {
    Forward<scalar_t> f{xw.data_ptr<scalar_t>(), hw.data_ptr<scalar_t>(), nullptr,
                        valid ? valid->data_ptr<bool>() : nullptr, nullptr, nullptr, nullptr,
                        out.data_ptr<scalar_t>(), T_, H, 0};
    for (int64_t t = 0; t < T_; ++t) {
      const auto h = states[t];
      if (bias_hh)
        at::addmm_out(hw, *bias_hh, h, w_t);
      else
        at::mm_out(hw, h, w_t);
      f.t = t;
      f.h = h.data_ptr<scalar_t>();
      f.gates = gates[t].data_ptr<scalar_t>();
      f.hn = hn[t].data_ptr<scalar_t>();
      f.h_next = (t + 1 < T_ ? states[t + 1] : h_T).data_ptr<scalar_t>();
      at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) { f.rows(b0, b1); });
    }
  });
  if (T_ == 0) h_T.copy_(h0);
  return {out, h_T, gates, hn, states};
}

// The gradients of gru_forward from d_out (B, T, H) and d_hT (B, H), given what it kept:
// (d_xw (B, T, 3H), dh0 (B, H) or undefined unless need_dh0, dW_hh (3H, H), dbias (3H,) or
// undefined without a bias).
std::vector<at::Tensor> gru_backward(const at::Tensor& d_out, const at::Tensor& d_hT, const at::Tensor& gates,
                                     const at::Tensor& hn, const at::Tensor& states, const at::Tensor& weight_hh,
                                     const std::optional<at::Tensor>& valid, bool has_bias, bool need_dh0) {
  const int64_t T_ = gates.size(0), B = gates.size(1), H = hn.size(2);
  TORCH_CHECK(d_out.is_contiguous() && d_out.sizes() == at::IntArrayRef({B, T_, H}), "contiguous d_out (B, T, H)");
  TORCH_CHECK(d_hT.sizes() == at::IntArrayRef({B, H}) && gates.is_contiguous() && hn.is_contiguous() &&
                  states.is_contiguous(), "d_hT (B, H) and the tensors gru_forward kept expected");
  auto dh = d_hT.clone(at::MemoryFormat::Contiguous);
  auto dhw = at::empty({T_, B, 3 * H}, gates.options());
  auto dxw = at::empty({B, T_, 3 * H}, gates.options());
  auto dbias_rows = at::zeros({B, 3 * H}, gates.options());
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_backward", [&] {
    Backward<scalar_t> f{d_out.data_ptr<scalar_t>(), nullptr, nullptr, nullptr,
                         valid ? valid->data_ptr<bool>() : nullptr, dh.data_ptr<scalar_t>(), nullptr,
                         dxw.data_ptr<scalar_t>(), dbias_rows.data_ptr<scalar_t>(), T_, H, 0};
    for (int64_t t = T_ - 1; t >= 0; --t) {
      const auto dhw_t = dhw[t];
      f.t = t;
      f.gates = gates[t].data_ptr<scalar_t>();
      f.hn = hn[t].data_ptr<scalar_t>();
      f.h = states[t].data_ptr<scalar_t>();
      f.dhw = dhw_t.data_ptr<scalar_t>();
      at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) { f.rows(b0, b1); });
      if (t > 0 || need_dh0) dh.addmm_(dhw_t, weight_hh);  // dh_{t-1} = its pointwise part + dhw W_hh
    }
  });
  auto d_weight = dhw.view({T_ * B, 3 * H}).t().mm(states.view({T_ * B, H}));
  return {dxw, need_dh0 ? dh : at::Tensor(), d_weight, has_bias ? dbias_rows.sum(0) : at::Tensor()};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gru_forward", &gru_forward, "the GRU recurrence over a sequence (one GEMM + one fused pass per step)");
  m.def("gru_backward", &gru_backward, "the gradient of gru_forward");
}
