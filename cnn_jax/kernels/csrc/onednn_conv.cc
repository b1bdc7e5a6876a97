// 2-D convolution and its two gradients on the CPU through oneDNN, as XLA FFI handlers.
//
// Tensors arrive in JAX's layouts: activations NHWC, kernels HWIO, all float32 or all bfloat16 (each handler is
// defined for both; oneDNN accumulates bfloat16 products in float32).
// Each direction of each geometry runs on oneDNN's own (blocked) activation
// layouts where they place every value as NHWC does (a blocked layout whose one
// block spans all channels, as with 16 channels), and otherwise on NHWC
// itself: reordering the activations into a blocked layout and back cost more
// than it saved in almost every layer of the zoo, in every direction (timed
// layer by layer, BENCHMARKS.md). The weights always take oneDNN's layout. The
// rule is fixed, not timed at run time, so a run computes the same bits every
// time (resuming a run must give the same result as not stopping it). Primitives are built
// once per shape and thread and cached, each with its own scratchpad, so the
// threads XLA runs several devices' programs on never wait for each other.
// (oneDNN's default scratchpad belongs to the thread that created a
// primitive: on CPUs whose kernels need one, such as AVX2's gemm-based weight
// gradient, a primitive run on another thread wrote past that thread's
// smaller scratchpad and crashed.)
#include <oneapi/dnnl/dnnl.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>

#include "onednn.h"
#include "stack.h"
#include "threads.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = memory::format_tag;

namespace {

enum class Direction { kForward, kInputGradient, kWeightGradient };

struct Geometry {
  memory::dims src, weights, dst, strides, pad_l, pad_r;
};

// One convolution direction for one geometry: its primitive and, for each of
// its three operands, the reorder between JAX's plain layout and oneDNN's.
struct Plan {
  dnnl::primitive conv;
  memory scratchpad;
  memory::desc plain[3], chosen[3];  // src (or diff_src), weights (or diff_weights), dst (or diff_dst)
  bool reorder[3];                    // Whether chosen[i] places values differently from plain[i].
  int args[3];
};

// What ElementStrides and SamePlaces read of a memory descriptor: oneDNN 2 exposes its C struct, oneDNN 3 answers
// queries.
struct Blocking {
  bool blocked;
  memory::data_type type;
  memory::dim offset0;
  memory::dims dims, padded_dims, padded_offsets, strides, inner_blks, inner_idxs;
};

Blocking Describe(const memory::desc& d) {
#if DNNL_VERSION_MAJOR >= 3
  return {d.get_format_kind() == memory::format_kind::blocked, d.get_data_type(), d.get_submemory_offset(),
          d.get_dims(), d.get_padded_dims(), d.get_padded_offsets(), d.get_strides(), d.get_inner_blks(),
          d.get_inner_idxs()};
#else
  const dnnl_memory_desc_t& m = d.data;
  const auto& b = m.format_desc.blocking;
  auto dims = [](const dnnl_dim_t* v, int n) { return memory::dims(v, v + n); };
  return {m.format_kind == dnnl_blocked, static_cast<memory::data_type>(m.data_type), m.offset0,
          dims(m.dims, m.ndims), dims(m.padded_dims, m.ndims), dims(m.padded_offsets, m.ndims),
          dims(b.strides, m.ndims), dims(b.inner_blks, b.inner_nblks), dims(b.inner_idxs, b.inner_nblks)};
#endif
}

// Each dimension's stride in elements, where `d` is a plain layout or has one block that spans its dimension
// (nChw16c with 16 channels); false for any other layout.
bool ElementStrides(const Blocking& d, memory::dims& strides) {
  if (!d.blocked || d.inner_blks.size() > 1) return false;
  strides = d.strides;
  if (d.padded_dims != d.dims || d.padded_offsets != memory::dims(d.dims.size(), 0)) return false;
  if (d.inner_blks.size() == 1) {
    const auto dim = d.inner_idxs[0];
    if (d.inner_blks[0] != d.dims[dim]) return false;
    strides[dim] = 1;  // The block is innermost and contiguous; the block index itself is always 0.
  }
  return true;
}

// Whether every value of `a` and `b` (same dims) has the same type and sits at the same offset, so no reorder is
// needed.
bool SamePlaces(const memory::desc& a, const memory::desc& b) {
  if (a == b) return true;
  const Blocking da = Describe(a), db = Describe(b);
  if (da.type != db.type) return false;
  memory::dims sa, sb;
  return da.offset0 == db.offset0 && ElementStrides(da, sa) && ElementStrides(db, sb) && sa == sb;
}

// A convolution's primitive descriptor (a backward one hinted by `fwd_pd`) with `attr` on `engine`: oneDNN 3 builds
// it from the shapes, oneDNN 2 from an operation descriptor.
#if DNNL_VERSION_MAJOR >= 3
#define CONV_PD(kind, ...) kind::primitive_desc(engine, __VA_ARGS__, attr)
#define BACKWARD_CONV_PD(kind, ...) kind::primitive_desc(engine, __VA_ARGS__, fwd_pd, attr)
#else
#define CONV_PD(kind, ...) kind::primitive_desc(kind::desc(__VA_ARGS__), attr, engine)
#define BACKWARD_CONV_PD(kind, ...) kind::primitive_desc(kind::desc(__VA_ARGS__), attr, engine, fwd_pd)
#endif

// oneDNN 3 ranks its brgemm-based convolutions ("brg..." implementations) first, but on CPUs without AVX-512 they
// are slower than its direct jit ones in the forward pass and the input gradient of a layer with few input
// channels (the seed network's second layer, batch 128, forward: 4.35 ms with brgconv:avx2 against 3.15 with
// jit:avx2; BENCHMARKS.md): there such a primitive descriptor moves on to the next implementation.
bool PreferDirect(const Geometry& g) {
  const auto avx512 = static_cast<int>(dnnl::cpu_isa::avx512_core);
  static const bool has_avx512 = (static_cast<int>(dnnl::get_effective_cpu_isa()) & avx512) == avx512;
  return !has_avx512 && g.src[1] < 32;
}

template <typename PrimitiveDesc>
void SkipBrgemm(PrimitiveDesc& pd) {
  while (std::string(pd.impl_info_str()).rfind("brg", 0) == 0 && pd.next_impl()) {
  }
}

// The plan of `direction` for `g` with activations in `activations`: tag::any (oneDNN's choice) or tag::nhwc.
std::unique_ptr<Plan> MakePlan(Direction direction, const Geometry& g, memory::data_type type, tag activations) {
  auto& engine = cnn_jax::Engine();
  memory::desc src_any(g.src, type, activations), w_any(g.weights, type, tag::any), dst_any(g.dst, type, activations);
  auto algo = dnnl::algorithm::convolution_direct;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  // A bfloat16 weight gradient is summed into float32 weights and rounded by the reorder to JAX's layout: faster
  // than oneDNN's own bfloat16 weight gradient (0.61 against 0.79 ms on the seed network's second layer).
  const memory::desc dw_any(g.weights, memory::data_type::f32, tag::any);
  auto fwd_pd = CONV_PD(dnnl::convolution_forward, dnnl::prop_kind::forward_training, algo, src_any, w_any, dst_any,
                         g.strides, g.pad_l, g.pad_r);
  auto plan = std::make_unique<Plan>();
  plan->plain[0] = memory::desc(g.src, type, tag::nhwc);
  plan->plain[1] = memory::desc(g.weights, type, tag::hwio);
  plan->plain[2] = memory::desc(g.dst, type, tag::nhwc);
  if (direction == Direction::kForward) {
    if (PreferDirect(g)) SkipBrgemm(fwd_pd);
    plan->conv = dnnl::convolution_forward(fwd_pd);
    plan->scratchpad = memory(fwd_pd.scratchpad_desc(), engine);
    plan->chosen[0] = fwd_pd.src_desc();
    plan->chosen[1] = fwd_pd.weights_desc();
    plan->chosen[2] = fwd_pd.dst_desc();
    plan->args[0] = DNNL_ARG_SRC, plan->args[1] = DNNL_ARG_WEIGHTS, plan->args[2] = DNNL_ARG_DST;
  } else if (direction == Direction::kInputGradient) {
    auto pd = BACKWARD_CONV_PD(dnnl::convolution_backward_data, algo, src_any, w_any, dst_any, g.strides, g.pad_l,
                               g.pad_r);
    if (PreferDirect(g)) SkipBrgemm(pd);
    plan->conv = dnnl::convolution_backward_data(pd);
    plan->scratchpad = memory(pd.scratchpad_desc(), engine);
    plan->chosen[0] = pd.diff_src_desc();
    plan->chosen[1] = pd.weights_desc();
    plan->chosen[2] = pd.diff_dst_desc();
    plan->args[0] = DNNL_ARG_DIFF_SRC, plan->args[1] = DNNL_ARG_WEIGHTS, plan->args[2] = DNNL_ARG_DIFF_DST;
  } else {
    const auto pd = BACKWARD_CONV_PD(dnnl::convolution_backward_weights, algo, src_any, dw_any, dst_any, g.strides,
                                     g.pad_l, g.pad_r);
    plan->conv = dnnl::convolution_backward_weights(pd);
    plan->scratchpad = memory(pd.scratchpad_desc(), engine);
    plan->chosen[0] = pd.src_desc();
    plan->chosen[1] = pd.diff_weights_desc();
    plan->chosen[2] = pd.diff_dst_desc();
    plan->args[0] = DNNL_ARG_SRC, plan->args[1] = DNNL_ARG_DIFF_WEIGHTS, plan->args[2] = DNNL_ARG_DIFF_DST;
  }
  for (int i = 0; i < 3; ++i) plan->reorder[i] = !SamePlaces(plan->chosen[i], plan->plain[i]);
  return plan;
}

// Runs `plan` on plain-layout buffers; `output` is the index (0, 1 or 2) of the operand it writes.
void Execute(Plan& plan, void* buffers[3], int output) {
  auto& engine = cnn_jax::Engine();
  dnnl::stream stream(engine);
  std::unordered_map<int, memory> args{{DNNL_ARG_SCRATCHPAD, plan.scratchpad}};
  memory plain[3], chosen[3];
  for (int i = 0; i < 3; ++i) {
    plain[i] = memory(plan.plain[i], engine, buffers[i]);
    chosen[i] = plan.reorder[i] ? memory(plan.chosen[i], engine) : memory(plan.chosen[i], engine, buffers[i]);
    if (i != output && plan.reorder[i]) dnnl::reorder(plain[i], chosen[i]).execute(stream, plain[i], chosen[i]);
    args[plan.args[i]] = chosen[i];
  }
  plan.conv.execute(stream, args);
  if (plan.reorder[output]) dnnl::reorder(chosen[output], plain[output]).execute(stream, chosen[output], plain[output]);
  stream.wait();
}

// Runs `direction` on plain-layout buffers; `output` is the index (0, 1 or 2) of the operand it writes.
void Run(Direction direction, const Geometry& g, memory::data_type type, void* buffers[3], int output) {
  thread_local std::map<std::string, std::unique_ptr<Plan>> plans;  // Per thread: a plan's scratchpad is its own.
  const auto key = cnn_jax::PlanKey(static_cast<int>(direction), type,
                                    {&g.src, &g.weights, &g.dst, &g.strides, &g.pad_l, &g.pad_r});
  auto& plan = plans[key];
  if (!plan) {
    plan = MakePlan(direction, g, type, tag::any);
    if (plan->reorder[0] || plan->reorder[2]) plan = MakePlan(direction, g, type, tag::nhwc);
  }
  Execute(*plan, buffers, output);
}

Geometry MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, ffi::Span<const int64_t> y,
                      int64_t stride_h, int64_t stride_w, int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                      int64_t pad_right) {
  // oneDNN's logical dims are NCHW / OIHW whatever the memory layout.
  return Geometry{{x[0], x[3], x[1], x[2]}, {w[3], w[2], w[0], w[1]}, {y[0], y[3], y[1], y[2]},
                  {stride_h, stride_w}, {pad_top, pad_left}, {pad_bottom, pad_right}};
}

#define CONV_ATTRS                                                                               \
  int64_t stride_h, int64_t stride_w, int64_t pad_top, int64_t pad_bottom, int64_t pad_left, \
      int64_t pad_right, int64_t devices

template <ffi::DataType D>
using Tensor = ffi::Buffer<D, 4>;
template <ffi::DataType D>
using TensorOut = ffi::ResultBuffer<D, 4>;

template <ffi::DataType D>
constexpr memory::data_type kType = D == ffi::BF16 ? memory::data_type::bf16 : memory::data_type::f32;

template <ffi::DataType D>
ffi::Error Forward(Tensor<D> x, Tensor<D> w, TensorOut<D> y, CONV_ATTRS) {
  cnn_jax::UseShareOfCores(devices);
  auto g = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), stride_h, stride_w, pad_top, pad_bottom,
                        pad_left, pad_right);
  void* buffers[3] = {x.untyped_data(), w.untyped_data(), y->untyped_data()};
  Run(Direction::kForward, g, kType<D>, buffers, 2);
  return ffi::Error::Success();
}

template <ffi::DataType D>
ffi::Error InputGradient(Tensor<D> dy, Tensor<D> w, TensorOut<D> dx, CONV_ATTRS) {
  cnn_jax::UseShareOfCores(devices);
  auto g = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), stride_h, stride_w, pad_top, pad_bottom,
                        pad_left, pad_right);
  void* buffers[3] = {dx->untyped_data(), w.untyped_data(), dy.untyped_data()};
  Run(Direction::kInputGradient, g, kType<D>, buffers, 0);
  return ffi::Error::Success();
}

template <ffi::DataType D>
ffi::Error WeightGradient(Tensor<D> x, Tensor<D> dy, TensorOut<D> dw, CONV_ATTRS) {
  cnn_jax::UseShareOfCores(devices);
  auto g = MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), stride_h, stride_w, pad_top, pad_bottom,
                        pad_left, pad_right);
  void* buffers[3] = {x.untyped_data(), dw->untyped_data(), dy.untyped_data()};
  Run(Direction::kWeightGradient, g, kType<D>, buffers, 1);
  return ffi::Error::Success();
}

// Every handler takes two tensors and returns one, all of type D.
template <ffi::DataType D>
auto Bind() {
  return ffi::Ffi::Bind()
      .template Arg<cnn_jax::Any<Tensor<D>>>()
      .template Arg<cnn_jax::Any<Tensor<D>>>()
      .template Ret<cnn_jax::Any<Tensor<D>>>()
      .template Attr<int64_t>("stride_h")
      .template Attr<int64_t>("stride_w")
      .template Attr<int64_t>("pad_top")
      .template Attr<int64_t>("pad_bottom")
      .template Attr<int64_t>("pad_left")
      .template Attr<int64_t>("pad_right")
      .template Attr<int64_t>("devices");
}

}  // namespace

CNN_JAX_STACKED_HANDLERS(OnednnConvForward, Forward, Bind);
CNN_JAX_STACKED_HANDLERS(OnednnConvInputGradient, InputGradient, Bind);
CNN_JAX_STACKED_HANDLERS(OnednnConvWeightGradient, WeightGradient, Bind);
