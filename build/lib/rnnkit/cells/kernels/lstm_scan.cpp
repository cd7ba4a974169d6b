// The LSTM recurrence with optional peepholes and layer norm over a whole sequence on a CPU,
// forward and backward, each one C++ loop over time (cells/scan.py, `LSTMScan`; the equations
// are cells/lstm.py's). Gates in torch's order i, f, g, o; with x the input half (LN(W_ih x)
// with layer norm, else W_ih x + b_ih), precomputed for every step (one large product, outside):
//   a = W_hh h,  r = LN_hh(a) (layer norm over 4H) or a,  z = x + r + bias
//   i = s(z_i [+ p_i c]),  f = s(z_f [+ p_f c]),  g = tanh(z_g),  c' = f c + i g
//   o = s(z_o [+ p_o c']),  h' = o tanh(LN_c(c') (over H) or c'),  s = sigmoid
//
// Per step: one GEMM for a (MKL, through ATen, into a preallocated buffer), then ONE fused
// pass per batch row for everything pointwise (both layer norms, the gates, the cell update,
// the output), the rows split across threads (at::parallel_for). No tensor is allocated and
// no pointwise ATen op dispatched inside the loop. Backward, per step: one pass per row for
// every pointwise derivative (both layer-norm backwards included), then dh_{t-1} = da W_hh as
// one GEMM. The bias, layer-norm and peephole gradients are summed inside the backward passes
// (per thread, while the values are in registers); dW_hh, one GEMM over all steps, is left to
// the caller (scan.py). The per-row passes, forward and backward, are in lstm_rows.h.
//
// Layouts: xw, the outputs, d_out and dz (= d xw) are batch-first (B, T, .) like the layer's
// tensors (no transposing copies); everything kept for the backward is time-major (T, B, .),
// exactly what the Python backward of scan.py reads, so each step's rows are one contiguous
// matrix for the GEMMs. What backward keeps lives in one workspace the caller reuses; the
// states in (T + 1, B, H): hs[t] is the state entering step t (hs[0] = h0), hs[T] the last.
//
// valid (T, B) bool, optional: a padded step keeps the state and outputs 0 (and passes the
// state's gradient straight through).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <type_traits>
#include <utility>

#include "lstm_rows.h"

using namespace lstm_rows;

namespace {

// Batch rows per thread chunk: below ~8K elements a step's pass is cheaper than a thread wake-up.
int64_t grain(int64_t H) { return std::max<int64_t>(1, 8192 / (4 * H)); }

// Calls fn(std::bool_constant<LN>, std::bool_constant<PEEP>) with the runtime flags as types.
template <typename F>
void with_options(bool layer_norm, bool peephole, F&& fn) {
  if (layer_norm) {
    peephole ? fn(std::true_type{}, std::true_type{}) : fn(std::true_type{}, std::false_type{});
  } else {
    peephole ? fn(std::false_type{}, std::true_type{}) : fn(std::false_type{}, std::false_type{});
  }
}

template <typename T>
const T* ptr(const std::optional<at::Tensor>& x) {
  return x.has_value() && x->defined() ? x->data_ptr<T>() : nullptr;
}

bool given(const std::optional<at::Tensor>& x) { return x.has_value() && x->defined(); }

void check_options(const at::Tensor& like, int64_t H, const std::optional<at::Tensor>& peephole,
                   const std::optional<at::Tensor>& ln_hh_w, const std::optional<at::Tensor>& ln_c_w,
                   const std::optional<at::Tensor>& valid, int64_t T_, int64_t B) {
  if (given(peephole))
    TORCH_CHECK(peephole->is_contiguous() && peephole->numel() == 3 * H && peephole->scalar_type() == like.scalar_type(),
                "peephole must be a contiguous (3, H) tensor of the inputs' dtype");
  if (given(ln_hh_w))
    TORCH_CHECK(ln_hh_w->is_contiguous() && ln_hh_w->numel() == 4 * H && given(ln_c_w) && ln_c_w->numel() == H &&
                    ln_c_w->is_contiguous() && ln_hh_w->scalar_type() == like.scalar_type() &&
                    ln_c_w->scalar_type() == like.scalar_type(),
                "layer-norm weights (4H,) and (H,) of the inputs' dtype expected");
  if (given(valid))
    TORCH_CHECK(valid->scalar_type() == at::kBool && valid->is_contiguous() && valid->numel() == T_ * B,
                "valid must be a contiguous bool (T, B) tensor");
}

// Hands out consecutive views of one preallocated 1-D buffer (the caller's, reused across calls:
// a fresh 85 MB of per-step tensors costs more in page faults than the whole forward pass).
struct Carver {
  at::Tensor buffer;
  int64_t used = 0;
  at::Tensor take(at::IntArrayRef shape) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    TORCH_CHECK(used + n <= buffer.numel(), "workspace too small (see lstm_workspace_size)");
    auto view = buffer.narrow(0, used, n).view(shape);
    used += n;
    return view;
  }
};

}  // namespace

// Elements of the workspace: forward, what backward keeps (hs, cs, gates, tcs and the layer-norm
// statistics); backward, dz and da.
int64_t lstm_workspace_size(int64_t B, int64_t T_, int64_t H, bool layer_norm, bool backward) {
  if (backward) return B * T_ * 4 * H * (layer_norm ? 2 : 1);
  return 2 * (T_ + 1) * B * H + T_ * B * 5 * H + (layer_norm ? T_ * B * (5 * H + 2) : 0);
}

// xw (B, T, 4H), h0, c0 (B, H), weight_hh (4H, H); the options as in scan.py's LSTMScan;
// workspace: a 1-D tensor of at least lstm_workspace_size(B, T, H, layer_norm, false) elements.
// Returns outs (B, T, H), then views of the workspace: hs, cs (T + 1, B, H), gates (T, B, 4H),
// tcs = tanh of the cell's output (T, B, H), and with layer norm a_hats (T, B, 4H), a_rstds
// (T, B, 1), c_hats (T, B, H), c_rstds (T, B, 1) (else None).
std::vector<at::Tensor> lstm_forward(const at::Tensor& xw, const at::Tensor& h0, const at::Tensor& c0,
                                     const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias,
                                     const std::optional<at::Tensor>& peephole,
                                     const std::optional<at::Tensor>& ln_hh_w, const std::optional<at::Tensor>& ln_hh_b,
                                     const std::optional<at::Tensor>& ln_c_w, const std::optional<at::Tensor>& ln_c_b,
                                     const std::optional<at::Tensor>& valid, const at::Tensor& workspace) {
  TORCH_CHECK(xw.dim() == 3 && xw.stride(2) == 1, "xw (B, T, 4H) with contiguous rows expected");
  const int64_t B = xw.size(0), T_ = xw.size(1), H = xw.size(2) / 4;
  TORCH_CHECK(xw.size(2) == 4 * H && weight_hh.sizes() == at::IntArrayRef({4 * H, H}) && h0.sizes() == c0.sizes() &&
                  h0.size(0) == B && h0.size(1) == H,
              "xw, h0, c0 and weight_hh do not fit together");
  const bool layer_norm = given(ln_hh_w);
  check_options(xw, H, peephole, ln_hh_w, ln_c_w, valid, T_, B);
  for (const auto* v : {&bias, &ln_hh_b, &ln_c_b})
    TORCH_CHECK(!given(*v) || ((*v)->is_contiguous() && (*v)->scalar_type() == xw.scalar_type()),
                "biases must be contiguous and of the inputs' dtype");
  TORCH_CHECK(!given(bias) || bias->numel() == 4 * H, "bias (4H,) expected");
  TORCH_CHECK(given(ln_hh_b) == layer_norm && given(ln_c_b) == layer_norm, "layer norm needs all four tensors");
  TORCH_CHECK(workspace.dim() == 1 && workspace.is_contiguous() && workspace.scalar_type() == xw.scalar_type(),
              "workspace: a contiguous 1-D tensor of the inputs' dtype");
  auto opt = xw.options();
  Carver ws{workspace};
  auto hs = ws.take({T_ + 1, B, H}), cs = ws.take({T_ + 1, B, H});
  auto gates = ws.take({T_, B, 4 * H}), tcs = ws.take({T_, B, H});
  hs[0].copy_(h0);
  cs[0].copy_(c0);
  at::Tensor a_hats, a_rstds, c_hats, c_rstds;
  if (layer_norm) {
    a_hats = ws.take({T_, B, 4 * H});
    c_hats = ws.take({T_, B, H});
    a_rstds = ws.take({T_, B, 1});
    c_rstds = ws.take({T_, B, 1});
  }
  auto outs = at::empty({B, T_, H}, opt);  // not in the workspace: the caller may change it in place
  auto a = at::empty({B, 4 * H}, opt);
  const auto zeros = at::zeros({4 * H}, opt);
  const auto weight_t = weight_hh.t();
  const bool* mask = given(valid) ? valid->data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "lstm_forward", [&] {
    using T = scalar_t;
    const Weights<T> w{given(bias) ? ptr<T>(bias) : zeros.data_ptr<T>(), ptr<T>(peephole), ptr<T>(ln_hh_w),
                       ptr<T>(ln_hh_b), ptr<T>(ln_c_w), ptr<T>(ln_c_b)};
    const T* x = xw.data_ptr<T>();
    const int64_t sb = xw.stride(0), st = xw.stride(1);
    T *h_ = hs.data_ptr<T>(), *c_ = cs.data_ptr<T>(), *o_ = outs.data_ptr<T>(), *a_ = a.data_ptr<T>();
    with_options(layer_norm, given(peephole), [&](auto ln, auto peep) {
      constexpr bool LN = decltype(ln)::value, PEEP = decltype(peep)::value;
      for (int64_t t = 0; t < T_; ++t) {
        at::mm_out(a, hs[t], weight_t);  // (B, 4H): the recurrent half
        const Step<T> s{gates[t].data_ptr<T>(), tcs[t].data_ptr<T>(), LN ? a_hats[t].data_ptr<T>() : nullptr,
                        LN ? a_rstds[t].data_ptr<T>() : nullptr, LN ? c_hats[t].data_ptr<T>() : nullptr,
                        LN ? c_rstds[t].data_ptr<T>() : nullptr};
        at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            const int64_t now = (t * B + b) * H, next = ((t + 1) * B + b) * H;
            forward_row<T, LN, PEEP>(w, x + b * sb + t * st, a_ + b * 4 * H, h_ + now, c_ + now, h_ + next,
                                     c_ + next, o_ + (b * T_ + t) * H, s, b, mask == nullptr || mask[t * B + b], H);
          }
        });
      }
    });
  });
  return {outs, hs, cs, gates, tcs, a_hats, a_rstds, c_hats, c_rstds};
}

// The time loop of LSTMScan's backward, from what lstm_forward kept: d_out (B, T, H) batch-first
// with any row strides, d_hT, d_cT (B, H), c_prev = cs[:T]; workspace: at least
// lstm_workspace_size(B, T, H, layer_norm, true) elements. Returns dz (B, T, 4H) (the gate
// pre-activations' gradient, a workspace view), da (T, B, 4H) (the recurrent product's, before
// its layer norm; None without), dh0, dc0 (B, H), and the sums over all steps that make the
// parameter gradients (13H: see kSumDz ... kPeep).
std::vector<at::Tensor> lstm_backward(const at::Tensor& d_out, const at::Tensor& d_hT, const at::Tensor& d_cT,
                                      const at::Tensor& c_prev, const at::Tensor& gates, const at::Tensor& tcs,
                                      const at::Tensor& weight_hh, const std::optional<at::Tensor>& peephole,
                                      const std::optional<at::Tensor>& ln_hh_w, const std::optional<at::Tensor>& ln_c_w,
                                      const std::optional<at::Tensor>& valid, const std::optional<at::Tensor>& a_hats,
                                      const std::optional<at::Tensor>& a_rstds, const std::optional<at::Tensor>& c_hats,
                                      const std::optional<at::Tensor>& c_rstds, const at::Tensor& workspace) {
  const int64_t T_ = gates.size(0), B = gates.size(1), H = gates.size(2) / 4;
  TORCH_CHECK(d_out.dim() == 3 && d_out.size(0) == B && d_out.size(1) == T_ && d_out.size(2) == H &&
                  d_out.stride(2) == 1 && d_out.scalar_type() == gates.scalar_type(),
              "d_out (B, T, H) with contiguous rows expected");
  TORCH_CHECK(c_prev.is_contiguous() && gates.is_contiguous() && tcs.is_contiguous() && c_prev.size(0) == T_,
              "the saved tensors must be contiguous and time-major");
  TORCH_CHECK(workspace.dim() == 1 && workspace.is_contiguous() && workspace.scalar_type() == gates.scalar_type(),
              "workspace: a contiguous 1-D tensor of the inputs' dtype");
  const bool layer_norm = given(ln_hh_w);
  check_options(gates, H, peephole, ln_hh_w, ln_c_w, valid, T_, B);
  if (layer_norm)
    TORCH_CHECK(given(a_hats) && given(a_rstds) && given(c_hats) && given(c_rstds) && a_hats->is_contiguous() &&
                    c_hats->is_contiguous() && a_rstds->is_contiguous() && c_rstds->is_contiguous(),
                "layer norm needs its saved statistics");
  auto opt = gates.options();
  Carver ws{workspace};
  auto dz = ws.take({B, T_, 4 * H});
  at::Tensor da = layer_norm ? ws.take({T_, B, 4 * H}) : at::Tensor();
  // Per thread, not per batch row: 13H stays in L1/L2 while the step's rows stream past.
  const int64_t threads = at::get_num_threads();
  auto acc = at::zeros({threads, kAcc * H}, opt), scratch = at::empty({threads, H}, opt);
  auto dh = d_hT.contiguous().clone(), dh_next = at::empty({B, H}, opt), dc = d_cT.contiguous().clone();
  const bool* mask = given(valid) ? valid->data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    using T = scalar_t;
    const Weights<T> w{nullptr, ptr<T>(peephole), ptr<T>(ln_hh_w), nullptr, ptr<T>(ln_c_w), nullptr};
    const T *g_ = gates.data_ptr<T>(), *c_ = c_prev.data_ptr<T>(), *tc_ = tcs.data_ptr<T>(), *dy = d_out.data_ptr<T>();
    const T *ah_ = ptr<T>(a_hats), *ar_ = ptr<T>(a_rstds), *ch_ = ptr<T>(c_hats), *cr_ = ptr<T>(c_rstds);
    T *dz_ = dz.data_ptr<T>(), *da_ = layer_norm ? da.data_ptr<T>() : nullptr, *dc_ = dc.data_ptr<T>();
    T *acc_ = acc.data_ptr<T>(), *scratch_ = scratch.data_ptr<T>();
    const int64_t sb = d_out.stride(0), st = d_out.stride(1);
    with_options(layer_norm, given(peephole), [&](auto ln, auto peep) {
      constexpr bool LN = decltype(ln)::value, PEEP = decltype(peep)::value;
      for (int64_t t = T_ - 1; t >= 0; --t) {
        const T* dh_ = dh.data_ptr<T>();
        at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) {
          const int64_t thread = at::get_thread_num();
          TORCH_CHECK(thread < threads, "more threads than at::get_num_threads()");
          for (int64_t b = b0; b < b1; ++b) {
            const int64_t row = t * B + b, n = row * H, n4 = row * 4 * H;
            backward_row<T, LN, PEEP>(w, dy + b * sb + t * st, dh_ + b * H, dc_ + b * H, c_ + n, g_ + n4, tc_ + n,
                                      LN ? ah_ + n4 : nullptr, LN ? ar_[row] : T(1), LN ? ch_ + n : nullptr,
                                      LN ? cr_[row] : T(1), dz_ + (b * T_ + t) * 4 * H, LN ? da_ + n4 : nullptr,
                                      acc_ + thread * kAcc * H, scratch_ + thread * H, mask == nullptr || mask[row],
                                      H);
          }
        });
        at::mm_out(dh_next, LN ? da[t] : dz.select(1, t), weight_hh);  // dh_{t-1} = da W_hh
        if (mask != nullptr) {  // a padded step passed dh straight through
          T* dn = dh_next.data_ptr<T>();
          for (int64_t b = 0; b < B; ++b)
            if (!mask[t * B + b])
              for (int64_t j = 0; j < H; ++j) dn[b * H + j] += dh_[b * H + j];
        }
        std::swap(dh, dh_next);
      }
    });
  });
  return {dz, da, dh, dc, acc.sum(0)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lstm_workspace_size", &lstm_workspace_size, "elements of lstm_forward's (backward=False) or "
        "lstm_backward's workspace");
  m.def("lstm_forward", &lstm_forward, "LSTMScan's forward time loop (peepholes, layer norm)");
  m.def("lstm_backward", &lstm_backward, "LSTMScan's backward time loop and parameter-gradient sums");
}
