// The bfloat16 GEMM step of kernels/stream_step.cpp, for many streams under bfloat16 autocast:
// per layer, in torch's gate order i, f, g, o,
//   z = b + [x | h] W^T    ONE GEMM, [x | h] and W = [W_ih | W_hh] (4H, I + H) rounded to
//                          bfloat16, the sums float32 (MKL's cblas_gemm_bf16bf16f32: AMX or
//                          AVX-512 BF16 where the CPU has them)
//   i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g);  c' = f c + i g;  h' = o tanh(c')
// with c, the gates and the state update in float32. At a few streams the blocked product of
// blocked_lstm.h wins (a step there is the read of the weights); with more, the product is
// compute-bound, and bfloat16 tiles multiply several times faster than float32 FMAs.
#pragma once

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "simd_math.h"

// MKL's bfloat16 GEMM (CBLAS, 32-bit integers), as torch's CPU build carries it. Weak: where
// torch has no MKL it is null, and the GEMM path is never offered (has_bf16_gemm).
extern "C" void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                                       const std::uint16_t* a, int lda, const std::uint16_t* b, int ldb,
                                       float beta, float* c, int ldc) __attribute__((weak));

namespace gemm_lstm {

inline bool has_bf16_gemm() { return cblas_gemm_bf16bf16f32 != nullptr; }

// Whether x (B, I) and h, c (L, B, H) are shapes a stack of layers with these input sizes steps
// (every layer above the first reads the one below: its input size is H).
inline bool stack_fits(const std::vector<int64_t>& input_sizes, const at::Tensor& x, const at::Tensor& h,
                       const at::Tensor& c) {
  if (x.dim() != 2 || h.dim() != 3 || h.sizes() != c.sizes() || h.size(1) != x.size(0)) return false;
  for (size_t l = 1; l < input_sizes.size(); ++l)
    if (input_sizes[l] != h.size(2)) return false;
  return h.size(0) == static_cast<int64_t>(input_sizes.size()) && x.size(1) == input_sizes[0];
}

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // CBLAS's enum values

// A stack's weights for the GEMM step: per layer [W_ih | W_hh] (4H, I_l + H) as bfloat16 and
// b_ih + b_hh (4H) as float32.
class GemmStack {
 public:
  GemmStack(std::vector<at::Tensor> weights, std::vector<at::Tensor> biases, std::vector<int64_t> input_sizes)
      : weights_(std::move(weights)), biases_(std::move(biases)), input_sizes_(std::move(input_sizes)) {
    TORCH_CHECK(has_bf16_gemm(), "this torch build has no MKL bfloat16 GEMM");
    TORCH_CHECK(!weights_.empty() && weights_.size() == biases_.size() && weights_.size() == input_sizes_.size(),
                "one weight, bias and input size per layer expected");
    const int64_t gates = weights_[0].size(0);
    for (size_t l = 0; l < weights_.size(); ++l) {
      const auto &w = weights_[l], &b = biases_[l];
      TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.scalar_type() == at::kBFloat16 && w.size(0) == gates &&
                      w.size(1) == input_sizes_[l] + gates / 4 && b.is_contiguous() && b.numel() == gates &&
                      b.scalar_type() == at::kFloat && w.device().is_cpu(),
                  "layer ", l, ": bfloat16 weight (4H, I + H) and float32 bias (4H,) expected");
    }
  }

  // Whether x (B, I) and h, c (L, B, H) are the shapes these weights step.
  bool fits(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c) const {
    return stack_fits(input_sizes_, x, h, c) && weights_[0].size(0) == 4 * h.size(2);
  }

  // One step of every layer: (h'[L-1] (B, H), h' and c' (L, B, H)), all float32.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> step(const at::Tensor& x, const at::Tensor& h,
                                                      const at::Tensor& c) const {
    const int64_t layers = h.size(0), batch = x.size(0), hidden = h.size(2), plane = batch * hidden;
    const auto hc = h.contiguous(), cc = c.contiguous(), xc = x.contiguous();
    at::Tensor h_out = at::empty(h.sizes(), hc.options()), c_out = at::empty(h.sizes(), hc.options());
    const int64_t widest = input_sizes_[0] > hidden ? input_sizes_[0] : hidden;
    std::vector<std::uint16_t> xh(batch * (widest + hidden));
    std::vector<float> z(batch * 4 * hidden);
    {
      pybind11::gil_scoped_release no_gil;
      const float* input = xc.data_ptr<float>();
      for (int64_t l = 0; l < layers; ++l) {
        const int64_t in_size = l == 0 ? input_sizes_[0] : hidden;
        layer(l, input, in_size, hc.data_ptr<float>() + l * plane, cc.data_ptr<float>() + l * plane, batch, hidden,
              xh.data(), z.data(), h_out.data_ptr<float>() + l * plane, c_out.data_ptr<float>() + l * plane);
        input = h_out.data_ptr<float>() + l * plane;
      }
    }
    return {h_out[layers - 1].clone(), h_out, c_out};
  }

 private:
  // One layer for `batch` rows: in (B, I), h and c (B, H) to h_out, c_out (B, H); xh, z: scratch.
  void layer(int64_t l, const float* in, int64_t in_size, const float* h, const float* c, int64_t batch,
             int64_t hidden, std::uint16_t* xh, float* z, float* h_out, float* c_out) const {
    const int64_t width = in_size + hidden, gates = 4 * hidden;
    const float* bias = biases_[l].data_ptr<float>();
    for (int64_t b = 0; b < batch; ++b) {  // [x | h] rounded to bfloat16; z starts as the bias
      std::uint16_t* row = xh + b * width;
      for (int64_t k = 0; k < in_size; ++k) row[k] = rnnkit_simd::to_bfloat16(in[b * in_size + k]);
      for (int64_t k = 0; k < hidden; ++k) row[in_size + k] = rnnkit_simd::to_bfloat16(h[b * hidden + k]);
      std::copy(bias, bias + gates, z + b * gates);
    }
    cblas_gemm_bf16bf16f32(kRowMajor, kNoTrans, kTrans, batch, gates, width, 1.0f, xh, width,
                           static_cast<const std::uint16_t*>(weights_[l].data_ptr()), width, 1.0f, z, gates);
    at::parallel_for(0, batch, 8, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const float* zb = z + b * gates;
        const int64_t at = b * hidden;
#pragma omp simd
        for (int64_t j = 0; j < hidden; ++j) {
          const float i = rnnkit_simd::sigmoid(zb[j]), f = rnnkit_simd::sigmoid(zb[hidden + j]);
          const float g = rnnkit_simd::tanh_simd(zb[2 * hidden + j]), o = rnnkit_simd::sigmoid(zb[3 * hidden + j]);
          const float c_next = f * c[at + j] + i * g;
          c_out[at + j] = c_next;
          h_out[at + j] = o * rnnkit_simd::tanh_simd(c_next);
        }
      }
    });
  }

  std::vector<at::Tensor> weights_, biases_;
  std::vector<int64_t> input_sizes_;
};

}  // namespace gemm_lstm
