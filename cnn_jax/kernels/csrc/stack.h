// Kernels under jax.vmap: a stack of calls in one.
//
// ffi.py calls every kernel with vmap_method="expand_dims": vectorised (a sweep's seeds trained as one program,
// cnn_jax.training.vectorized), each operand gains one leading dimension per vmap, of the stack's size where it is
// batched and of size 1 where it is not (the images every seed shares, say). `Stacked<Body>::Call` is a handler of
// those operands of any rank: it runs `Body`, written for one call's operands, once per element of the stack, with
// each operand's slice for it (the whole operand along a size-1 dimension).
//
// With at least as many elements as this device has cores, the elements run side by side, each on one core, and
// each kernel inside runs on that core alone (UseShareOfCores); otherwise they run one after another, each on all
// of them. On 2 cores, four vmapped seeds of the seed network train 1.1-1.4x as fast as one after another on both
// cores: the small calls of one seed do not keep two cores busy (BENCHMARKS.md, "Vectorised seeds"). Which schedule
// runs depends on the shapes and the core count only, so a vectorised run computes the same bits every time; its
// bits can differ from a run alone, whose kernels split their sums over all the cores.
#pragma once

#include <omp.h>

#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "threads.h"
#include "xla/ffi/api/ffi.h"

namespace cnn_jax {

namespace ffi = xla::ffi;

// What a handler's parameter of type T becomes in a stacked handler (Any): a buffer of any rank for a buffer or a
// result of rank R (kRank; Whole gives the buffer, Of makes one call's parameter from its slice), the parameter
// itself for an attribute (kRank -1).
template <typename T>
struct Stacking {
  using Any = T;
  static constexpr int64_t kRank = -1;
};
template <ffi::DataType D, size_t R>
struct Stacking<ffi::Buffer<D, R>> {
  using Any = ffi::Buffer<D>;
  static constexpr int64_t kRank = R;
  static ffi::Buffer<D> Whole(const Any& whole) { return whole; }
  static ffi::Buffer<D, R> Of(const XLA_FFI_Buffer* slice) { return ffi::Buffer<D, R>(slice); }
};
template <ffi::DataType D, size_t R>
struct Stacking<ffi::Result<ffi::Buffer<D, R>>> {
  using Any = ffi::Result<ffi::Buffer<D>>;
  static constexpr int64_t kRank = R;
  static ffi::Buffer<D> Whole(Any whole) { return *whole; }
  static ffi::Result<ffi::Buffer<D, R>> Of(const XLA_FFI_Buffer* slice) { return ffi::Buffer<D, R>(slice); }
};

// The type a stacked handler binds for a parameter of type T of the handler it runs: use it in the Bind().
template <typename T>
using Any = typename Stacking<T>::Any;

// The stack's shape: the leading dimensions of every buffer (`lead` of them, the same number for all), each the
// largest of the buffers' sizes there.
struct Stack {
  int64_t lead = -1;
  std::vector<int64_t> dims;
  bool consistent = true;

  int64_t size() const {
    int64_t n = 1;
    for (auto d : dims) n *= d;
    return n;
  }

  // Takes in a buffer whose last `rank` dimensions are one call's: each of its leading ones is 1 or the stack's.
  template <ffi::DataType D>
  void Widen(const ffi::Buffer<D>& whole, int64_t rank) {
    const auto dims_of = whole.dimensions();
    const int64_t buffer_lead = static_cast<int64_t>(dims_of.size()) - rank;
    if (lead < 0 && buffer_lead >= 0) lead = buffer_lead, dims.assign(lead, 1);
    if (buffer_lead < 0 || buffer_lead != lead) {  // Too low a rank, or other leading axes than the others'.
      consistent = false;
      return;
    }
    for (int64_t d = 0; d < lead; ++d) {
      if (dims_of[d] == 1) continue;
      consistent = consistent && (dims[d] == 1 || dims[d] == dims_of[d]);
      dims[d] = dims_of[d];
    }
  }

  // Writes to `slice` element `item` (row-major over the stack) of `whole`, whose last `rank` dimensions are one
  // call's.
  template <ffi::DataType D>
  void Slice(const ffi::Buffer<D>& whole, int64_t rank, int64_t item, XLA_FFI_Buffer& slice) const {
    const auto dims_of = whole.dimensions();
    int64_t offset = 0, stride = 1;
    for (size_t d = lead; d < dims_of.size(); ++d) stride *= dims_of[d];
    for (int64_t d = lead - 1; d >= 0; --d) {
      if (dims_of[d] != 1) offset += (item % dims[d]) * stride;
      item /= dims[d];
      stride *= dims_of[d];
    }
    slice = XLA_FFI_Buffer{sizeof(XLA_FFI_Buffer), nullptr, static_cast<XLA_FFI_DataType>(D),
                           static_cast<char*>(whole.untyped_data()) + offset * ffi::ByteWidth(D), rank,
                           const_cast<int64_t*>(dims_of.begin()) + lead};
  }
};

template <auto Body>
struct Stacked;

template <typename... Args, ffi::Error (*Body)(Args...)>
struct Stacked<Body> {
  static_assert(std::is_same_v<std::tuple_element_t<sizeof...(Args) - 1, std::tuple<Args...>>, int64_t>,
                "a kernel's last attribute is its `devices`");

  static ffi::Error Call(Any<Args>... args) {
    Stack stack;
    (Widen<Args>(stack, args), ...);
    if (!stack.consistent) return ffi::Error::InvalidArgument("a kernel's operands are stacked to different shapes");
    const int64_t items = stack.size();
    const int cores = ShareOfCores(std::get<sizeof...(Args) - 1>(std::forward_as_tuple(args...)));
    auto run = [&](int64_t item) { return Run(stack, item, std::index_sequence_for<Args...>{}, args...); };
    if (items < cores || cores == 1) {
      for (int64_t item = 0; item < items; ++item)
        if (ffi::Error error = run(item); error.failure()) return error;
      return ffi::Error::Success();
    }
    std::vector<ffi::Error> errors(items, ffi::Error::Success());
#pragma omp parallel for num_threads(cores) schedule(static)
    for (int64_t item = 0; item < items; ++item) errors[item] = run(item);
    for (auto& error : errors)
      if (error.failure()) return error;
    return ffi::Error::Success();
  }

 private:
  template <typename T>
  static void Widen(Stack& stack, const Any<T>& arg) {
    if constexpr (Stacking<T>::kRank >= 0) stack.Widen(Stacking<T>::Whole(arg), Stacking<T>::kRank);
  }

  template <typename T>
  static T Element(const Stack& stack, int64_t item, const Any<T>& arg, XLA_FFI_Buffer& slice) {
    if constexpr (Stacking<T>::kRank >= 0) {
      stack.Slice(Stacking<T>::Whole(arg), Stacking<T>::kRank, item, slice);
      return Stacking<T>::Of(&slice);
    } else {
      return arg;
    }
  }

  template <size_t... I>
  static ffi::Error Run(const Stack& stack, int64_t item, std::index_sequence<I...>, const Any<Args>&... args) {
    XLA_FFI_Buffer slices[sizeof...(Args)];
    return Body(Element<Args>(stack, item, args, slices[I])...);
  }
};

}  // namespace cnn_jax

// Defines the FFI handler `name` for float32 and its twin `name`BF16 for bfloat16 (the names ffi.py calls): each
// runs `body` (a function template over the dtype) per element of a stack, with the bindings `bind<dtype>()`.
#define CNN_JAX_STACKED_HANDLERS(name, body, bind)                                                    \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, cnn_jax::Stacked<body<xla::ffi::F32>>::Call, bind<xla::ffi::F32>()); \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name##BF16, cnn_jax::Stacked<body<xla::ffi::BF16>>::Call, bind<xla::ffi::BF16>())
