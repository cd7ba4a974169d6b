// One step of a stack of plain LSTM layers in one call: the streaming path of cells/streaming.py
// without a Python round trip per op. Per layer, gates in torch's order i, f, g, o:
//   z = W_ih x + W_hh h + b;  i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
//   c' = f * c + i * g;       h' = o * tanh(c')
//
// Two ways to compute it:
// - BlockedStack.step (small batches): our own matrix-vector product, fused with the gates
//   and the state update, over weights laid out for it (see blocked_layer). Each layer is ONE
//   pass over its weights in the order they sit in memory, so a step costs what reading the
//   weights costs (the memory floor), and no ATen op is dispatched.
// - lstm_stack_step (larger batches): MKL's packed GEMM on [W_ih | W_hh] (rows i, f, o, g), then a
//   handful of ATen ops dispatched from C++; there the product is compute-bound and MKL wins.
//
// Under bfloat16 autocast the blocked product reads its weights stored as bfloat16 (half the
// bytes: a step costs about half) and widens each to float32 exactly on load (a bfloat16 is the
// top half of a float32); x, h, c, the sums and the gates stay float32 (BlockedStackBF16).
//
// Built ahead of time on the machine that runs it, with -O3 -march=native: the vectors below
// (GCC/Clang vector extensions) are as wide as the CPU's (AVX-512, AVX2, SSE/NEON), and so are
// the blocks of the weight layout (LANES, read by cells/streaming.py).
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>

namespace {

// ---------------------------------------------------------------- MKL path (larger batches)

at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& weight,
                         const at::Tensor& bias) {
  if (!packed.defined() || packed.numel() == 0) return at::addmm(bias, x, weight.t());
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkl::_mkl_linear", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, int64_t)>();
  return op.call(x, packed, weight, bias, x.size(0));
}

// ------------------------------------------------------------- blocked path (small batches)

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
typedef int ivec __attribute__((vector_size(4 * kLanes)));
typedef float uvec __attribute__((vector_size(4 * kLanes), aligned(4)));  // an unaligned load/store

#define HOT inline __attribute__((always_inline))  // in the step's loop: never a call

inline vec load(const float* p) { return *reinterpret_cast<const uvec*>(p); }
inline void store(float* p, vec v) { *reinterpret_cast<uvec*>(p) = v; }

// exp(x) to ~1 ulp (Cephes' expf): x = n ln2 + r, |r| <= ln2/2, exp(r) by a degree-7 polynomial,
// 2^n built in the exponent bits. x is clamped to [-87, 88], where float's exp is finite.
HOT vec vexp(vec x) {
  const vec lo = vec{} - 87.0f, hi = vec{} + 88.0f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const vec n = (x * 1.44269504088896341f + magic) - magic;
  const vec r = x - n * 0.693359375f + n * 2.12194440e-4f;  // ln2 in two parts: exact n * ln2_hi
  vec p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const ivec bits = (__builtin_convertvector(n, ivec) + 127) << 23;  // 2^n
  return p * reinterpret_cast<const vec&>(bits);
}

HOT vec vsigmoid(vec x) { return 1.0f / (1.0f + vexp(-x)); }
HOT vec vtanh(vec x) { return 2.0f / (1.0f + vexp(-2.0f * x)) - 1.0f; }  // absolute error ~1e-7

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

// One layer for `Rows` batch rows and the unit blocks [first, last): weights (U, I + H, 4, kLanes),
// bias (U, 4, kLanes); x (Rows, I), h and c (Rows, H) row-major; writes h_out, c_out (Rows, H).
// (or its bfloat16 Layout);
template <int Rows, typename W>
void blocked_rows(const W* weight, const float* bias, const float* x, int64_t input_size,
                  const float* h, const float* c, int64_t hidden, float* h_out, float* c_out,
                  int64_t first, int64_t last) {
  using L = Layout<W>;
  const int64_t input_rows = L::rows(input_size), width = input_rows + L::rows(hidden);
  for (int64_t u = first; u < last; ++u) {
    const W* w = weight + u * width * L::row;
    vec acc[kTile][4];
    for (int b = 0; b < Rows; ++b)
      for (int gate = 0; gate < 4; ++gate) acc[b][gate] = load(bias + u * kBlock + gate * kLanes);
    accumulate<Rows>(acc, w, x, input_size, input_size);
    accumulate<Rows>(acc, w + input_rows * L::row, h, hidden, hidden);
    const int64_t unit = u * kLanes;
    const int n = static_cast<int>(std::min<int64_t>(kLanes, hidden - unit));
    for (int b = 0; b < Rows; ++b) {
      const vec c_next = vsigmoid(acc[b][1]) * load_part(c + b * hidden + unit, n) +
                         vsigmoid(acc[b][0]) * vtanh(acc[b][2]);
      store_part(c_out + b * hidden + unit, c_next, n);
      store_part(h_out + b * hidden + unit, vsigmoid(acc[b][3]) * vtanh(c_next), n);
    }
  }
}

// One layer for the whole batch: batch tiles of kTile rows, each one pass over the weights;
// the unit blocks split across torch's intra-op threads (each takes >= ~256 KB of weights).
template <typename W>
void blocked_layer(const W* weight, int64_t blocks, const float* bias, const float* x,
                   int64_t input_size, const float* h, const float* c, int64_t batch, int64_t hidden,
                   float* h_out, float* c_out) {
  using L = Layout<W>;
  const int64_t block_bytes = (L::rows(input_size) + L::rows(hidden)) * L::row * static_cast<int64_t>(sizeof(W));
  const int64_t grain = std::max<int64_t>(1, (256 << 10) / block_bytes);
  at::parallel_for(0, blocks, grain, [&](int64_t first, int64_t last) {
    for (int64_t row = 0; row < batch; row += kTile) {
      const float *xr = x + row * input_size, *hr = h + row * hidden, *cr = c + row * hidden;
      float *hor = h_out + row * hidden, *cor = c_out + row * hidden;
      switch (std::min<int64_t>(kTile, batch - row)) {  // the row count is a compile-time constant inside
        case 1: blocked_rows<1>(weight, bias, xr, input_size, hr, cr, hidden, hor, cor, first, last); break;
#if defined(__AVX512F__)  // kTile == 4
        case 3: blocked_rows<3>(weight, bias, xr, input_size, hr, cr, hidden, hor, cor, first, last); break;
        case 4: blocked_rows<4>(weight, bias, xr, input_size, hr, cr, hidden, hor, cor, first, last); break;
#endif
        default: blocked_rows<2>(weight, bias, xr, input_size, hr, cr, hidden, hor, cor, first, last);
      }
    }
  });
}

}  // namespace

using Step = std::tuple<at::Tensor, at::Tensor, at::Tensor>;  // (h'[L-1], h' (L, B, H), c' (L, B, H))

// A stack's weights in the blocked layout, with the parameters they were made from (storage
// and version counter of each), so that every step checks in C++ that they are still fresh:
// an optimiser step, load_state_dict or a .data swap changes one or the other. W: the
// weights' storage type, float (float32) or std::uint16_t (bfloat16 bits).
template <typename W>
class BlockedStack {
 public:
  // weights[l] (U, I_l + H, 4, LANES) and biases[l] (U, 4, LANES), U = ceil(H / LANES): row k of
  // block u holds the i, f, g, o weights of units LANES*u .. LANES*u + LANES-1 from input k (zero
  // past H). As bfloat16: (U, ceil(I_l/2) + ceil(H/2), 4, LANES, 2), inputs 2k and 2k+1 side by side.
  BlockedStack(std::vector<at::Tensor> weights, std::vector<at::Tensor> biases, std::vector<int64_t> input_sizes,
               const std::vector<at::Tensor>& params)
      : weights_(std::move(weights)), biases_(std::move(biases)), input_sizes_(std::move(input_sizes)),
        sources_(sources_of(params)) {
    TORCH_CHECK(!weights_.empty() && weights_.size() == biases_.size() && weights_.size() == input_sizes_.size(),
                "one weight, bias and input size per layer expected");
    const auto type = std::is_same_v<W, float> ? at::kFloat : at::kBFloat16;
    const int64_t blocks = weights_[0].size(0), hidden_rows = weights_[0].size(1) - Layout<W>::rows(input_sizes_[0]);
    for (size_t l = 0; l < weights_.size(); ++l) {
      const auto &w = weights_[l], &b = biases_[l];
      TORCH_CHECK(w.is_contiguous() && w.size(0) == blocks && w.size(1) == Layout<W>::rows(input_sizes_[l]) + hidden_rows &&
                      w.numel() == blocks * w.size(1) * Layout<W>::row && w.scalar_type() == type && w.device().is_cpu() &&
                      b.is_contiguous() && b.numel() == blocks * kBlock && b.scalar_type() == at::kFloat,
                  "layer ", l, ": blocked weight (", std::is_same_v<W, float> ? "float32" : "bfloat16",
                  ") and float32 bias (U, 4, LANES) expected");
    }
  }

  // x (B, I); h, c (L, B, H). None when a parameter changed since this was built (rebuild it).
  std::optional<Step> step(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c,
                           const std::vector<at::Tensor>& params) const {
    if (!fresh(params)) return std::nullopt;
    TORCH_CHECK(x.scalar_type() == at::kFloat && h.scalar_type() == at::kFloat && c.scalar_type() == at::kFloat &&
                    x.device().is_cpu() && h.device().is_cpu() && c.device().is_cpu(),
                "the blocked streaming kernel runs float32 CPU tensors only");
    const int64_t layers = h.size(0), batch = x.size(0), hidden = h.size(2), plane = batch * hidden;
    TORCH_CHECK(x.dim() == 2 && h.dim() == 3 && h.sizes() == c.sizes() && h.size(1) == batch &&
                    layers == static_cast<int64_t>(weights_.size()) && x.size(1) == input_sizes_[0] &&
                    weights_[0].size(0) == (hidden + kLanes - 1) / kLanes &&
                    weights_[0].size(1) == Layout<W>::rows(x.size(1)) + Layout<W>::rows(hidden),
                "x (B, I) and h, c (L, B, H) matching the weights expected");
    const auto hc = h.contiguous(), cc = c.contiguous(), xc = x.contiguous();
    auto h_out = at::empty(h.sizes(), h.options()), c_out = at::empty(h.sizes(), h.options());
    const float* input = xc.data_ptr<float>();
    int64_t input_size = x.size(1);
    for (int64_t l = 0; l < layers; ++l) {
      TORCH_CHECK(input_sizes_[l] == input_size, "layer ", l, ": input size mismatch");
      float *h_next = h_out.data_ptr<float>() + l * plane, *c_next = c_out.data_ptr<float>() + l * plane;
      blocked_layer(static_cast<const W*>(weights_[l].data_ptr()), weights_[l].size(0), biases_[l].data_ptr<float>(),
                    input, input_size, hc.data_ptr<float>() + l * plane, cc.data_ptr<float>() + l * plane, batch,
                    hidden, h_next, c_next);
      input = h_next;
      input_size = hidden;
    }
    return Step{h_out[layers - 1], h_out, c_out};
  }

 private:
  // What a parameter was when the weights were laid out. Holding its tensor and storage keeps
  // both alive, so a new parameter or new data can never reuse their addresses unnoticed.
  struct Source {
    at::Tensor param;
    c10::Storage storage;
    const void* data;
    int64_t version;
    bool same(const at::Tensor& p) const {
      return p.unsafeGetTensorImpl() == param.unsafeGetTensorImpl() && p.const_data_ptr() == data &&
             p._version() == version && p.storage().unsafeGetStorageImpl() == storage.unsafeGetStorageImpl();
    }
  };

  bool fresh(const std::vector<at::Tensor>& params) const {
    if (params.size() != sources_.size()) return false;
    for (size_t i = 0; i < params.size(); ++i)
      if (!sources_[i].same(params[i])) return false;
    return true;
  }

  static std::vector<Source> sources_of(const std::vector<at::Tensor>& params) {
    std::vector<Source> sources;
    for (const auto& p : params) sources.push_back({p, p.storage(), p.const_data_ptr(), p._version()});
    return sources;
  }

  std::vector<at::Tensor> weights_, biases_;
  std::vector<int64_t> input_sizes_;
  std::vector<Source> sources_;
};

template <typename W>
void bind_stack(pybind11::module& m, const char* name, const char* doc) {
  pybind11::class_<BlockedStack<W>>(m, name, doc)
      .def(pybind11::init<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<int64_t>,
                          const std::vector<at::Tensor>&>())
      .def("step", &BlockedStack<W>::step, "one step of every layer; None if a parameter changed since");
}

// x (B, I); h, c (L, B, H); weights[l] (4H, I_l + H), rows i, f, o, g; biases[l] (4H,); packed[l] or empty.
// Returns (h'[L-1], h' (L, B, H), c' (L, B, H)).
std::vector<at::Tensor> lstm_stack_step(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c,
                                        const std::vector<at::Tensor>& weights,
                                        const std::vector<at::Tensor>& biases,
                                        const std::vector<at::Tensor>& packed) {
  at::NoGradGuard no_grad;
  const int64_t layers = h.size(0), hidden = h.size(2);
  auto h_out = at::empty_like(h);
  auto c_out = at::empty_like(c);
  at::Tensor input = x;
  for (int64_t l = 0; l < layers; ++l) {
    auto z = packed_linear(at::cat({input, h[l]}, 1), packed[l], weights[l], biases[l]);  // (B, 4H)
    auto ifo = z.narrow(1, 0, 3 * hidden).sigmoid_();
    auto g = z.narrow(1, 3 * hidden, hidden).tanh_();
    auto i = ifo.narrow(1, 0, hidden), f = ifo.narrow(1, hidden, hidden), o = ifo.narrow(1, 2 * hidden, hidden);
    auto c_next = c_out[l];
    at::mul_out(c_next, f, c[l]);
    c_next.addcmul_(i, g);
    auto h_next = h_out[l];
    at::mul_out(h_next, o, at::tanh(c_next));
    input = h_next;
  }
  return {input, h_out, c_out};
}

// Reads every float of `t` once (a sum): the memory floor the blocked product is measured against.
double stream_read(const at::Tensor& t) {
  TORCH_CHECK(t.is_contiguous() && t.scalar_type() == at::kFloat, "a contiguous float32 tensor expected");
  const float* p = t.data_ptr<float>();
  const int64_t n = t.numel(), whole = n / kBlock * kBlock;
  vec a0 = {}, a1 = {}, a2 = {}, a3 = {};  // four chains: the adds never wait on each other
  for (int64_t i = 0; i < whole; i += kBlock) {
    a0 += load(p + i);
    a1 += load(p + i + kLanes);
    a2 += load(p + i + 2 * kLanes);
    a3 += load(p + i + 3 * kLanes);
  }
  const vec a = a0 + a1 + a2 + a3;
  double sum = 0;
  for (int j = 0; j < kLanes; ++j) sum += a[j];
  for (int64_t i = whole; i < n; ++i) sum += p[i];
  return sum;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  bind_stack<float>(m, "BlockedStack", "a stack's weights in the blocked layout, for small batches");
  bind_stack<std::uint16_t>(m, "BlockedStackBF16", "the same, weights stored as bfloat16 (autocast)");
  m.def("lstm_stack_step", &lstm_stack_step, "one step of a stack of plain LSTM layers: MKL packed GEMM");
  m.def("stream_read", &stream_read, "sum of a contiguous float32 tensor, read once");
  m.attr("LANES") = kLanes;
}
