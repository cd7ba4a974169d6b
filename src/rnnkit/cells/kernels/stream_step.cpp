// One step of a stack of plain LSTM layers in one call: the streaming path of cells/streaming.py
// without a Python round trip per op. Two ways to compute it:
// - StreamStack.step (small batches): the blocked product of blocked_lstm.h, fused with the gates
//   and the state update, one pass over each half of each layer's weights (the memory floor),
//   in an order that alternates from step to step (see BlockedStack::step), no ATen op
//   dispatched; its arguments checked here in C++, so the call is the whole step's dispatch.
//   Under bfloat16 autocast it reads the weights stored as bfloat16 (half the bytes: a step costs
//   about half); x, h, c, the sums and the gates stay float32. From gemm_from_batch streams on,
//   under bfloat16 autocast, the step is instead one bfloat16 GEMM per layer (gemm_lstm.h).
// - lstm_stack_step (larger batches): MKL's packed GEMM on [W_ih | W_hh] (rows i, f, o, g), then a
//   handful of ATen ops dispatched from C++; there the product is compute-bound and MKL wins.
#include <torch/extension.h>

#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "blocked_lstm.h"
#include "gemm_lstm.h"

using namespace blocked_lstm;
using gemm_lstm::GemmStack;

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

namespace py = pybind11;

// A stack's weights in the blocked layout, W: their storage type, float (float32) or
// std::uint16_t (bfloat16 bits).
template <typename W>
class BlockedStack {
 public:
  // weights[l] (U, I_l + H, 4, LANES) and biases[l] (U, 4, LANES), U = ceil(H / LANES): row k of
  // block u holds the i, f, g, o weights of units LANES*u .. LANES*u + LANES-1 from input k (zero
  // past H). As bfloat16: (U, ceil(I_l/2) + ceil(H/2), 4, LANES, 2), inputs 2k and 2k+1 side by side.
  BlockedStack(std::vector<at::Tensor> weights, std::vector<at::Tensor> biases, std::vector<int64_t> input_sizes)
      : weights_(std::move(weights)), biases_(std::move(biases)), input_sizes_(std::move(input_sizes)) {
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

  // Whether x (B, I) and h, c (L, B, H) are the shapes these weights step.
  bool fits(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c) const {
    const int64_t hidden = h.dim() == 3 ? h.size(2) : 0;
    return gemm_lstm::stack_fits(input_sizes_, x, h, c) && weights_[0].size(0) == (hidden + kLanes - 1) / kLanes &&
           weights_[0].size(1) == Layout<W>::rows(input_sizes_[0]) + Layout<W>::rows(hidden);
  }

  // One step of every layer, x (B, I), h and c (L, B, H) float32 and fitting: the last layer's
  // h' (B, H), and h', c' (L, B, H). Allocated without a dispatch (empty_cpu), and h'[L-1]
  // copied rather than viewed: each dispatched op costs about what a small layer's math does.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> step(const at::Tensor& x, const at::Tensor& h,
                                                      const at::Tensor& c) const {
    const int64_t layers = h.size(0), batch = x.size(0), hidden = h.size(2), plane = batch * hidden;
    const auto hc = h.contiguous(), cc = c.contiguous(), xc = x.contiguous();
    at::Tensor h_out = at::detail::empty_cpu(h.sizes(), at::kFloat), c_out = at::detail::empty_cpu(h.sizes(), at::kFloat),
               y = at::detail::empty_cpu({batch, hidden}, at::kFloat);
    const float *input = xc.data_ptr<float>(), *h_in = hc.data_ptr<float>(), *c_in = cc.data_ptr<float>();
    float *h_next = h_out.data_ptr<float>(), *c_next = c_out.data_ptr<float>();
    const int64_t blocks = weights_[0].size(0), sums = batch * blocks * kBlock;
    thread_local std::vector<float> scratch;  // per layer: the input half's sums, then the state half's
    scratch.resize(2 * layers * sums);
    {
      py::gil_scoped_release no_gil;  // the weights' read: other Python threads may run meanwhile
      const bool odd = steps_.fetch_add(1, std::memory_order_relaxed) & 1;
      auto half = [&](int64_t l, Half which, bool descending) {
        const float* in = which == kHiddenHalf ? h_in + l * plane : (l == 0 ? input : h_next + (l - 1) * plane);
        half_pass(static_cast<const W*>(weights_[l].data_ptr()), blocks, l == 0 ? x.size(1) : hidden, hidden, which,
                  in, batch, scratch.data() + (2 * l + which) * sums, descending);
      };
      // Every other step the passes run in another order, so that the weights one step read
      // last, still in L2, are what the next reads first (for a 2-layer stack):
      //   even: W_ih0 (descending), W_hh0, W_ih1, W_hh1     odd: W_hh1 (descending), W_hh0, W_ih0, W_ih1
      // W_ih of a layer above needs the layer below finished; W_hh needs only the last state.
      // This pays on a CPU whose L2 holds half the weights: a batch-1 step reads less from L3.
      if (odd) half(layers - 1, kHiddenHalf, true);
      for (int64_t l = 0; l < layers; ++l) {
        if (odd) {
          if (l != layers - 1) half(l, kHiddenHalf, false);
          half(l, kInputHalf, false);
        } else {
          half(l, kInputHalf, l == 0);
          half(l, kHiddenHalf, false);
        }
        finish_layer(biases_[l].data_ptr<float>(), scratch.data() + 2 * l * sums, scratch.data() + (2 * l + 1) * sums,
                     c_in + l * plane, batch, hidden, blocks, h_next + l * plane, c_next + l * plane);
      }
    }
    std::memcpy(y.data_ptr<float>(), h_next + (layers - 1) * plane, plane * sizeof(float));
    return {y, h_out, c_out};
  }

 private:
  mutable std::atomic<std::uint64_t> steps_{0};  // which order the next step's passes run in
  std::vector<at::Tensor> weights_, biases_;
  std::vector<int64_t> input_sizes_;
};

// A plain LSTM stack (a torch.nn.ModuleList of cells) stepped by the blocked kernel in ONE call
// that checks everything itself, so a batch-1 step costs little more than reading its weights:
// Python's checks would cost a fixed time per step, a visible share of the step at H=256 and most
// of it for small models.
//
// step() returns None wherever it cannot run, and the caller takes its checked Python path:
// arguments that are not float32 CPU tensors of shapes these weights step, more than max_batch
// streams (unless the bfloat16 GEMM step takes them), a gradient wanted, a parameter changed
// since the weights were laid out (rebuild), or no weights laid out yet for the precision in
// force (float32, or bfloat16 under CPU autocast).
//
// "Changed" is checked by identity and counters, never by reading the values: the same cells in
// the list, the same parameter objects in each cell, each with the data pointer, storage and
// version counter it had. An optimiser step or load_state_dict bumps the version, a .data swap
// changes the storage, assigning a new Parameter or cell changes an object.
class StreamStack {
 public:
  StreamStack(const py::object& cells, int64_t max_batch) : max_batch_(max_batch) {
    const py::object modules = cells.attr("_modules");
    watch(modules);
    for (const auto& item : py::reinterpret_borrow<py::dict>(modules)) {
      const py::object params = item.second.attr("_parameters");
      watch(params);
      for (const auto& entry : py::reinterpret_borrow<py::dict>(params)) {
        if (entry.second.is_none()) continue;
        TORCH_CHECK(THPVariable_Check(entry.second.ptr()), "a cell's parameter is not a tensor");
        const at::Tensor& p = THPVariable_Unpack(entry.second.ptr());
        sources_.push_back({p, p.storage(), p.const_data_ptr(), p._version()});
      }
    }
  }

  void set_weights(bool bf16, std::vector<at::Tensor> weights, std::vector<at::Tensor> biases,
                   std::vector<int64_t> input_sizes) {
    if (bf16)
      bfloat16_.emplace(std::move(weights), std::move(biases), std::move(input_sizes));
    else
      float32_.emplace(std::move(weights), std::move(biases), std::move(input_sizes));
  }

  bool has_weights(bool bf16) const { return bf16 ? bfloat16_.has_value() : float32_.has_value(); }

  // The bfloat16 GEMM step's weights (gemm_lstm.h), used under autocast from `from_batch` streams on.
  void set_gemm_weights(std::vector<at::Tensor> weights, std::vector<at::Tensor> biases,
                        std::vector<int64_t> input_sizes, int64_t from_batch) {
    gemm_.emplace(std::move(weights), std::move(biases), std::move(input_sizes));
    gemm_from_batch_ = from_batch;
  }

  bool fresh() const {
    for (const auto& w : watched_)
      if (!w.same()) return false;
    for (const auto& s : sources_)
      if (!s.same()) return false;
    return true;
  }

  // (h'[L-1], (h', c')) for x (B, I) and h, c (L, B, H), or None (see above).
  py::object step(py::handle x_obj, py::handle h_obj, py::handle c_obj) const {
    if (!THPVariable_Check(x_obj.ptr()) || !THPVariable_Check(h_obj.ptr()) || !THPVariable_Check(c_obj.ptr()))
      return py::none();
    const at::Tensor &x = THPVariable_Unpack(x_obj.ptr()), &h = THPVariable_Unpack(h_obj.ptr()),
                     &c = THPVariable_Unpack(c_obj.ptr());
    const bool bf16 = at::autocast::is_autocast_enabled(at::kCPU) &&
                      at::autocast::get_autocast_dtype(at::kCPU) == at::kBFloat16;
    for (const at::Tensor* t : {&x, &h, &c})
      if (t->scalar_type() != at::kFloat || !t->device().is_cpu()) return py::none();
    if (x.dim() != 2 || wants_gradient(x, h, c) || !fresh()) return py::none();
    const bool gemm = bf16 && gemm_ && x.size(0) >= gemm_from_batch_;
    if (!gemm && x.size(0) > max_batch_) return py::none();
    const auto [y, h_out, c_out] = gemm ? run(gemm_, x, h, c) : bf16 ? run(bfloat16_, x, h, c) : run(float32_, x, h, c);
    if (!y.defined()) return py::none();
    return py::make_tuple(y, py::make_tuple(h_out, c_out));
  }

 private:
  // A Python dict whose values must stay the same objects, in the same order.
  struct Watched {
    py::object dict;
    std::vector<py::object> values;
    bool same() const {
      if (PyDict_Size(dict.ptr()) != static_cast<Py_ssize_t>(values.size())) return false;
      Py_ssize_t position = 0;
      PyObject *key, *value;
      for (size_t i = 0; PyDict_Next(dict.ptr(), &position, &key, &value); ++i)
        if (value != values[i].ptr()) return false;
      return true;
    }
  };

  // What a parameter was when the weights were laid out. Holding its tensor and storage keeps
  // both alive, so a new parameter or new data can never reuse their addresses unnoticed.
  struct Source {
    at::Tensor param;
    c10::Storage storage;
    const void* data;
    int64_t version;
    bool same() const {
      return param.const_data_ptr() == data && param._version() == version &&
             param.storage().unsafeGetStorageImpl() == storage.unsafeGetStorageImpl();
    }
  };

  void watch(const py::object& dict) {
    Watched w{dict, {}};
    for (const auto& item : py::reinterpret_borrow<py::dict>(dict)) w.values.push_back(py::reinterpret_borrow<py::object>(item.second));
    watched_.push_back(std::move(w));
  }

  bool wants_gradient(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c) const {
    if (!at::GradMode::is_enabled()) return false;
    if (x.requires_grad() || h.requires_grad() || c.requires_grad()) return true;
    for (const auto& s : sources_)
      if (s.param.requires_grad()) return true;
    return false;
  }

  template <typename Stack>
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> run(const std::optional<Stack>& stack,
                                                             const at::Tensor& x, const at::Tensor& h,
                                                             const at::Tensor& c) {
    if (!stack || !stack->fits(x, h, c)) return {};
    return stack->step(x, h, c);
  }

  int64_t max_batch_;
  std::vector<Watched> watched_;  // the ModuleList's cells, then each cell's parameters
  std::vector<Source> sources_;
  std::optional<BlockedStack<float>> float32_;
  std::optional<BlockedStack<std::uint16_t>> bfloat16_;
  std::optional<GemmStack> gemm_;
  int64_t gemm_from_batch_ = 0;
};

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

// Reads every float of `t` once (a sum), from the first or (descending) the last: the memory
// floor the blocked product is measured against.
double stream_read(const at::Tensor& t, bool descending) {
  TORCH_CHECK(t.is_contiguous() && t.scalar_type() == at::kFloat, "a contiguous float32 tensor expected");
  const float* p = t.data_ptr<float>();
  const int64_t n = t.numel(), whole = n / kBlock * kBlock;
  vec a0 = {}, a1 = {}, a2 = {}, a3 = {};  // four chains: the adds never wait on each other
  for (int64_t j = 0; j < whole; j += kBlock) {
    const int64_t i = descending ? whole - kBlock - j : j;
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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  py::class_<StreamStack>(m, "StreamStack", "a plain LSTM stack stepped by the blocked kernel, for small batches")
      .def(py::init<const py::object&, int64_t>(), py::arg("cells"), py::arg("max_batch"))
      .def("set_weights", &StreamStack::set_weights, "lay out (bfloat16 if bf16) weights, biases, input sizes")
      .def("has_weights", &StreamStack::has_weights, "whether the weights of that precision are laid out")
      .def("set_gemm_weights", &StreamStack::set_gemm_weights,
           "bfloat16 (4H, I + H) weights, float32 biases and input sizes for the GEMM step from from_batch streams on")
      .def("fresh", &StreamStack::fresh, "whether every parameter is still what it was when built")
      .def("step", &StreamStack::step, "(y, (h, c)) of one step of every layer, or None where it cannot run");
  m.def("lstm_stack_step", &lstm_stack_step, "one step of a stack of plain LSTM layers: MKL packed GEMM");
  m.def("stream_read", &stream_read, "sum of a contiguous float32 tensor, read once", py::arg("t"),
        py::arg("descending") = false);
  m.attr("LANES") = kLanes;
  m.attr("HAS_BF16_GEMM") = gemm_lstm::has_bf16_gemm();
}
