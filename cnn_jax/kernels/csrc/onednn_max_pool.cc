// Max-pooling over overlapping or padded windows of NHWC maps (GoogLeNet's 3×3 stride-1 and ceil-mode 3×3 stride-2
// poolings, ResNet's stem) and its gradient, through oneDNN, as XLA FFI handlers for float32 and bfloat16.
//
// The forward pass keeps each window's winner (its position in the window, one byte per output, in the output's
// layout: oneDNN's workspace), which the backward pass reads to add each output's gradient to its winner. Among
// tied maxima the first, row-major, wins, as XLA's select-and-scatter picks; padding never wins. XLA's fusions of
// the same (cnn_jax.layers.pooling) computed GoogLeNet's poolings at about a third of memory speed.
#include <oneapi/dnnl/dnnl.hpp>

#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>

#include "onednn.h"
#include "stack.h"
#include "threads.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = memory::format_tag;

namespace {

enum class Direction { kForward, kBackward };

struct Geometry {
  memory::dims src, dst, kernel, strides, pad_l, pad_r;
};

struct Plan {
  dnnl::primitive pool;
  memory::desc src, dst, workspace;
  memory scratchpad;
};

// The forward pass's primitive descriptor for `g` on `type`, with a user scratchpad: oneDNN 3 builds it from the
// shapes, oneDNN 2 from an operation descriptor.
dnnl::pooling_forward::primitive_desc ForwardDesc(const Geometry& g, const memory::desc& src,
                                                  const memory::desc& dst, const dnnl::primitive_attr& attr) {
  const auto max = dnnl::algorithm::pooling_max;
#if DNNL_VERSION_MAJOR >= 3
  const memory::dims no_dilation(g.kernel.size(), 0);
  return {cnn_jax::Engine(), dnnl::prop_kind::forward_training, max, src, dst, g.strides, g.kernel, no_dilation,
          g.pad_l, g.pad_r, attr};
#else
  return {{dnnl::prop_kind::forward_training, max, src, dst, g.strides, g.kernel, g.pad_l, g.pad_r}, attr,
          cnn_jax::Engine()};
#endif
}

std::unique_ptr<Plan> MakePlan(Direction direction, const Geometry& g, memory::data_type type) {
  auto& engine = cnn_jax::Engine();
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto plan = std::make_unique<Plan>();
  plan->src = memory::desc(g.src, type, tag::nhwc);
  plan->dst = memory::desc(g.dst, type, tag::nhwc);
  const auto fwd_pd = ForwardDesc(g, plan->src, plan->dst, attr);
  plan->workspace = fwd_pd.workspace_desc();
  if (direction == Direction::kForward) {
    plan->pool = dnnl::pooling_forward(fwd_pd);
    plan->scratchpad = memory(fwd_pd.scratchpad_desc(), engine);
    return plan;
  }
#if DNNL_VERSION_MAJOR >= 3
  const memory::dims no_dilation(g.kernel.size(), 0);
  dnnl::pooling_backward::primitive_desc pd(engine, dnnl::algorithm::pooling_max, plan->src, plan->dst, g.strides,
                                            g.kernel, no_dilation, g.pad_l, g.pad_r, fwd_pd, attr);
#else
  dnnl::pooling_backward::primitive_desc pd(
      {dnnl::algorithm::pooling_max, plan->src, plan->dst, g.strides, g.kernel, g.pad_l, g.pad_r}, attr, engine,
      fwd_pd);
#endif
  plan->pool = dnnl::pooling_backward(pd);
  plan->scratchpad = memory(pd.scratchpad_desc(), engine);
  return plan;
}

// The calling thread's plan of `direction` for `g` (built on first use: a plan's scratchpad is its thread's), or
// null where oneDNN has none whose workspace is one byte per output in the output's layout, as the handlers' buffers
// are.
Plan* PlanFor(Direction direction, const Geometry& g, memory::data_type type) {
  thread_local std::map<std::string, std::unique_ptr<Plan>> plans;
  auto& plan = plans[cnn_jax::PlanKey(static_cast<int>(direction), type,
                                      {&g.src, &g.dst, &g.kernel, &g.strides, &g.pad_l, &g.pad_r})];
  if (!plan) {
    try {
      plan = MakePlan(direction, g, type);
    } catch (const dnnl::error&) {
      return nullptr;
    }
  }
  return plan->workspace == memory::desc(g.dst, memory::data_type::u8, tag::nhwc) ? plan.get() : nullptr;
}

Geometry MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> y, int64_t window, int64_t stride,
                      int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  // oneDNN's logical dims are NCHW whatever the memory layout.
  return Geometry{{x[0], x[3], x[1], x[2]}, {y[0], y[3], y[1], y[2]}, {window, window}, {stride, stride},
                  {pad_top, pad_left}, {pad_bottom, pad_right}};
}

#define POOL_ATTRS                                                                                         \
  int64_t window, int64_t stride, int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right, \
      int64_t devices

template <ffi::DataType D>
using Tensor = ffi::Buffer<D, 4>;
template <ffi::DataType D>
using TensorOut = ffi::ResultBuffer<D, 4>;
using Winners = ffi::Buffer<ffi::U8, 4>;
using WinnersOut = ffi::ResultBuffer<ffi::U8, 4>;

template <ffi::DataType D>
constexpr memory::data_type kType = D == ffi::BF16 ? memory::data_type::bf16 : memory::data_type::f32;

ffi::Error Unsupported() {
  return ffi::Error::InvalidArgument("oneDNN has no max-pooling of this geometry that keeps one byte per output's "
                                     "winner: use XLA's max-pooling (CNN_JAX_KERNELS=xla)");
}

// Runs the calling thread's plan of `direction` for `g` on the buffers of `args` (argument -> data: the map, the
// pooled map, the winners; or their gradients), each in its plan's layout.
ffi::Error Run(Direction direction, const Geometry& g, memory::data_type type,
               std::initializer_list<std::pair<int, void*>> args) {
  Plan* plan = PlanFor(direction, g, type);
  if (!plan) return Unsupported();
  auto& engine = cnn_jax::Engine();
  std::unordered_map<int, memory> memories{{DNNL_ARG_SCRATCHPAD, plan->scratchpad}};
  for (const auto& [arg, data] : args) {
    const bool map = arg == DNNL_ARG_SRC || arg == DNNL_ARG_DIFF_SRC, winners = arg == DNNL_ARG_WORKSPACE;
    memories.emplace(arg, memory(map ? plan->src : winners ? plan->workspace : plan->dst, engine, data));
  }
  dnnl::stream stream(engine);
  plan->pool.execute(stream, memories);
  stream.wait();
  return ffi::Error::Success();
}

template <ffi::DataType D>
ffi::Error Forward(Tensor<D> x, TensorOut<D> y, WinnersOut winners, POOL_ATTRS) {
  cnn_jax::UseShareOfCores(devices);
  const auto g = MakeGeometry(x.dimensions(), y->dimensions(), window, stride, pad_top, pad_bottom, pad_left,
                              pad_right);
  return Run(Direction::kForward, g, kType<D>, {{DNNL_ARG_SRC, x.untyped_data()}, {DNNL_ARG_DST, y->untyped_data()},
                                                 {DNNL_ARG_WORKSPACE, winners->untyped_data()}});
}

template <ffi::DataType D>
ffi::Error Backward(Tensor<D> dy, Winners winners, TensorOut<D> dx, POOL_ATTRS) {
  cnn_jax::UseShareOfCores(devices);
  const auto g = MakeGeometry(dx->dimensions(), dy.dimensions(), window, stride, pad_top, pad_bottom, pad_left,
                              pad_right);
  return Run(Direction::kBackward, g, kType<D>, {{DNNL_ARG_DIFF_DST, dy.untyped_data()},
                                                  {DNNL_ARG_WORKSPACE, winners.untyped_data()},
                                                  {DNNL_ARG_DIFF_SRC, dx->untyped_data()}});
}

template <typename Binding>
auto WithAttrs(Binding binding) {
  return std::move(binding)
      .template Attr<int64_t>("window")
      .template Attr<int64_t>("stride")
      .template Attr<int64_t>("pad_top")
      .template Attr<int64_t>("pad_bottom")
      .template Attr<int64_t>("pad_left")
      .template Attr<int64_t>("pad_right")
      .template Attr<int64_t>("devices");
}

template <ffi::DataType D>
auto BindForward() {
  return WithAttrs(ffi::Ffi::Bind()
                       .template Arg<cnn_jax::Any<Tensor<D>>>()
                       .template Ret<cnn_jax::Any<Tensor<D>>>()
                       .template Ret<cnn_jax::Any<Winners>>());
}

template <ffi::DataType D>
auto BindBackward() {
  return WithAttrs(ffi::Ffi::Bind()
                       .template Arg<cnn_jax::Any<Tensor<D>>>()
                       .template Arg<cnn_jax::Any<Winners>>()
                       .template Ret<cnn_jax::Any<Tensor<D>>>());
}

}  // namespace

CNN_JAX_STACKED_HANDLERS(OnednnMaxPoolForward, Forward, BindForward);
CNN_JAX_STACKED_HANDLERS(OnednnMaxPoolBackward, Backward, BindBackward);
