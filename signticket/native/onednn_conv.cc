// 2D convolutions for XLA:CPU through oneDNN, as XLA FFI handlers.
//
// XLA:CPU's own conv kernels run ResNet-20's kernel gradients at 0.24-0.56x of oneDNN on the
// same machine (bench/conv_ops.py); these handlers give JAX the three ops of a conv
// (forward, input gradient, kernel gradient) from oneDNN, on the caller's NHWC / HWIO buffers.
//
//   y  = conv(x, w)             x: [N, H, W, C]    w: [KH, KW, C, O]   y: [N, OH, OW, O]
//   dx = conv_input_grad(dy, w) the adjoint of x -> conv(x, w), applied to dy
//   dw = conv_kernel_grad(x, dy) the adjoint of w -> conv(x, w), applied to dy
//
// float32 or bfloat16 (all three operands alike; oneDNN accumulates bf16 convs in float32).
// Attributes: strides = (sh, sw), padding = (top, bottom, left, right), batched = (a, b): which
// operand carries a leading axis of vmapped members (one conv per member, shared operands
// reused; the output has the axis when either does). Activations stay in
// the caller's layout (oneDNN's brgemm convs run NHWC directly); only the small kernel is
// reordered into oneDNN's blocked layout and back. Primitives are built once per shape and
// cached. XLA runs independent ops on several threads at once (a layer's input and kernel
// gradients, say), so nothing mutable is shared: primitives use user-managed scratchpads, and
// each calling thread carves its scratchpad and blocked kernel from its own buffer.

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

enum class Op { kForward, kInputGrad, kKernelGrad };

// One conv's geometry: everything a primitive depends on.
struct Geometry {
  dt type;
  int64_t n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr;
  auto key() const {
    return std::make_tuple(static_cast<int>(type), n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt,
                           pb, pl, pr);
  }
};

struct Cached {
  dnnl::primitive conv;
  memory::desc act_in, weights, act_out;  // the primitive's operand layouts
  memory::desc user_weights;              // HWIO
  dnnl::reorder weights_reorder;          // user <-> blocked, when they differ
  bool reorder_weights = false;
  memory::desc conv_scratchpad, reorder_scratchpad;
};

constexpr size_t kAlign = 64;

size_t Aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// A grow-only buffer per thread: a thread runs one op at a time, so its scratch is never shared.
char* ThreadScratch(size_t bytes) {
  thread_local std::vector<char> buffer;
  if (buffer.size() < bytes + kAlign) buffer.resize(bytes + kAlign);
  auto address = reinterpret_cast<uintptr_t>(buffer.data());
  return buffer.data() + (Aligned(address) - address);
}

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

Cached Build(Op op, const Geometry& g) {
  auto& eng = Engine();
  memory::desc src({g.n, g.c, g.h, g.w}, g.type, tag::nhwc);
  memory::desc dst({g.n, g.o, g.oh, g.ow}, g.type, tag::nhwc);
  memory::desc wei_any({g.o, g.c, g.kh, g.kw}, g.type, tag::any);
  memory::desc wei_user({g.o, g.c, g.kh, g.kw}, g.type, tag::hwio);
  memory::dims strides{g.sh, g.sw}, pad_l{g.pt, g.pl}, pad_r{g.pb, g.pr};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto fwd = dnnl::convolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src, wei_any,
      dst, strides, pad_l, pad_r, attr);
  Cached c;
  c.user_weights = wei_user;
  switch (op) {
    case Op::kForward:
      c.conv = dnnl::convolution_forward(fwd);
      c.act_in = fwd.src_desc();
      c.weights = fwd.weights_desc();
      c.act_out = fwd.dst_desc();
      c.conv_scratchpad = fwd.scratchpad_desc();
      break;
    case Op::kInputGrad: {
      auto pd = dnnl::convolution_backward_data::primitive_desc(
          eng, dnnl::algorithm::convolution_direct, src, wei_any, dst, strides, pad_l, pad_r,
          fwd, attr);
      c.conv = dnnl::convolution_backward_data(pd);
      c.act_in = pd.diff_dst_desc();
      c.weights = pd.weights_desc();
      c.act_out = pd.diff_src_desc();
      c.conv_scratchpad = pd.scratchpad_desc();
      break;
    }
    case Op::kKernelGrad: {
      auto pd = dnnl::convolution_backward_weights::primitive_desc(
          eng, dnnl::algorithm::convolution_direct, src, wei_any, dst, strides, pad_l, pad_r,
          fwd, attr);
      c.conv = dnnl::convolution_backward_weights(pd);
      c.act_in = pd.src_desc();
      c.act_out = pd.diff_dst_desc();
      c.weights = pd.diff_weights_desc();
      c.conv_scratchpad = pd.scratchpad_desc();
      break;
    }
  }
  c.reorder_weights = c.weights != wei_user;
  if (c.reorder_weights) {
    auto pd = op == Op::kKernelGrad
                  ? dnnl::reorder::primitive_desc(eng, c.weights, eng, wei_user, attr)
                  : dnnl::reorder::primitive_desc(eng, wei_user, eng, c.weights, attr);
    c.weights_reorder = dnnl::reorder(pd);
    c.reorder_scratchpad = pd.scratchpad_desc();
  }
  return c;
}

const Cached& Lookup(Op op, const Geometry& g) {
  static std::mutex mu;
  static std::map<std::tuple<int, decltype(g.key())>, std::unique_ptr<Cached>> cache;
  auto key = std::make_tuple(static_cast<int>(op), g.key());
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it == cache.end()) {
    it = cache.emplace(key, std::make_unique<Cached>(Build(op, g))).first;
  }
  return *it->second;
}

// The trailing four dimensions of a buffer (a leading member axis, if any, is stripped).
std::vector<int64_t> ConvDims(const ffi::AnyBuffer& buffer) {
  auto dims = buffer.dimensions();
  return std::vector<int64_t>(dims.end() - 4, dims.end());
}

ffi::Error Run(Op op, ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
               ffi::Span<const int64_t> batched, const ffi::AnyBuffer& a,
               const ffi::AnyBuffer& b, ffi::Result<ffi::AnyBuffer>& out) {
  if (strides.size() != 2 || padding.size() != 4 || batched.size() != 2) {
    return ffi::Error::InvalidArgument(
        "onednn conv: strides, padding and batched must have 2, 4 and 2 entries");
  }
  auto element = a.element_type();
  if (b.element_type() != element || out->element_type() != element ||
      (element != ffi::DataType::F32 && element != ffi::DataType::BF16)) {
    return ffi::Error::InvalidArgument("onednn conv: operands must be all float32 or bfloat16");
  }
  // Vmapped members (a leading axis on each operand flagged in `batched`, and on the output
  // when any is): one conv per member on offsets into the same buffers, no copies.
  bool a_batched = batched[0] != 0, b_batched = batched[1] != 0;
  size_t out_rank = (a_batched || b_batched) ? 5 : 4;
  if (a.dimensions().size() != (a_batched ? 5u : 4u) ||
      b.dimensions().size() != (b_batched ? 5u : 4u) || out->dimensions().size() != out_rank) {
    return ffi::Error::InvalidArgument("onednn conv: operands must be NHWC / HWIO (rank 4), "
                                       "with a leading member axis where batched (rank 5)");
  }
  int64_t members = out_rank == 5 ? out->dimensions()[0] : 1;
  if (members == 0) return ffi::Error::Success();
  // Which buffer is which: forward (x, w) -> y; input grad (dy, w) -> dx; kernel grad (x, dy) -> dw.
  auto x_dims = ConvDims(op == Op::kInputGrad ? *out : a);
  auto w_dims = ConvDims(op == Op::kKernelGrad ? *out : b);
  auto y_dims = ConvDims(op == Op::kForward ? *out : (op == Op::kInputGrad ? a : b));
  dt type = element == ffi::DataType::F32 ? dt::f32 : dt::bf16;
  Geometry g{type,      x_dims[0],  x_dims[1],  x_dims[2],  x_dims[3],  w_dims[0],
             w_dims[1], w_dims[3],  y_dims[1],  y_dims[2],  strides[0], strides[1],
             padding[0], padding[1], padding[2], padding[3]};
  size_t a_step = a_batched ? a.size_bytes() / members : 0;
  size_t b_step = b_batched ? b.size_bytes() / members : 0;
  size_t out_step = out->size_bytes() / members;
  try {
    const Cached& c = Lookup(op, g);
    auto& eng = Engine();
    dnnl::stream stream(eng);
    // This thread's scratch: [blocked kernel | conv scratchpad | reorder scratchpad].
    size_t weights_bytes = c.reorder_weights ? Aligned(c.weights.get_size()) : 0;
    size_t conv_bytes = Aligned(c.conv_scratchpad.get_size());
    char* scratch = ThreadScratch(weights_bytes + conv_bytes + c.reorder_scratchpad.get_size());
    memory conv_scratchpad(c.conv_scratchpad, eng, scratch + weights_bytes);
    memory reorder_scratchpad(c.reorder_scratchpad, eng, scratch + weights_bytes + conv_bytes);
    auto reorder = [&](memory& from, memory& to) {
      c.weights_reorder.execute(stream, {{DNNL_ARG_FROM, from},
                                         {DNNL_ARG_TO, to},
                                         {DNNL_ARG_SCRATCHPAD, reorder_scratchpad}});
    };
    auto* a_base = static_cast<char*>(a.untyped_data());
    auto* b_base = static_cast<char*>(b.untyped_data());
    auto* out_base = static_cast<char*>(out->untyped_data());
    for (int64_t m = 0; m < members; ++m) {
      char* a_ptr = a_base + m * a_step;
      char* b_ptr = b_base + m * b_step;
      char* out_ptr = out_base + m * out_step;
      memory user_w(c.user_weights, eng, op == Op::kKernelGrad ? out_ptr : b_ptr);
      memory w = c.reorder_weights ? memory(c.weights, eng, scratch) : user_w;
      // Shared weights are reordered once for all members.
      bool fresh_weights = m == 0 || b_batched;
      if (c.reorder_weights && op != Op::kKernelGrad && fresh_weights) reorder(user_w, w);
      memory act_in(c.act_in, eng, a_ptr);
      switch (op) {
        case Op::kForward:
          c.conv.execute(stream, {{DNNL_ARG_SRC, act_in},
                                  {DNNL_ARG_WEIGHTS, w},
                                  {DNNL_ARG_DST, memory(c.act_out, eng, out_ptr)},
                                  {DNNL_ARG_SCRATCHPAD, conv_scratchpad}});
          break;
        case Op::kInputGrad:
          c.conv.execute(stream, {{DNNL_ARG_DIFF_DST, act_in},
                                  {DNNL_ARG_WEIGHTS, w},
                                  {DNNL_ARG_DIFF_SRC, memory(c.act_out, eng, out_ptr)},
                                  {DNNL_ARG_SCRATCHPAD, conv_scratchpad}});
          break;
        case Op::kKernelGrad:
          c.conv.execute(stream, {{DNNL_ARG_SRC, act_in},
                                  {DNNL_ARG_DIFF_DST, memory(c.act_out, eng, b_ptr)},
                                  {DNNL_ARG_DIFF_WEIGHTS, w},
                                  {DNNL_ARG_SCRATCHPAD, conv_scratchpad}});
          if (c.reorder_weights) reorder(w, user_w);
          break;
      }
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn conv: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer w,
                   ffi::Result<ffi::AnyBuffer> y, ffi::Span<const int64_t> strides,
                   ffi::Span<const int64_t> padding, ffi::Span<const int64_t> batched) {
  return Run(Op::kForward, strides, padding, batched, x, w, y);
}

ffi::Error InputGrad(ffi::AnyBuffer dy, ffi::AnyBuffer w,
                     ffi::Result<ffi::AnyBuffer> dx, ffi::Span<const int64_t> strides,
                     ffi::Span<const int64_t> padding, ffi::Span<const int64_t> batched) {
  return Run(Op::kInputGrad, strides, padding, batched, dy, w, dx);
}

ffi::Error KernelGrad(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                      ffi::Result<ffi::AnyBuffer> dw, ffi::Span<const int64_t> strides,
                      ffi::Span<const int64_t> padding, ffi::Span<const int64_t> batched) {
  return Run(Op::kKernelGrad, strides, padding, batched, x, dy, dw);
}

}  // namespace

#define SIGNTICKET_CONV_HANDLER(symbol, impl)                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(symbol, impl,                                       \
                                ffi::Ffi::Bind()                                    \
                                    .Arg<ffi::AnyBuffer>()                          \
                                    .Arg<ffi::AnyBuffer>()                          \
                                    .Ret<ffi::AnyBuffer>()                          \
                                    .Attr<ffi::Span<const int64_t>>("strides")      \
                                    .Attr<ffi::Span<const int64_t>>("padding")      \
                                    .Attr<ffi::Span<const int64_t>>("batched"));

SIGNTICKET_CONV_HANDLER(signticket_conv_forward, Forward)
SIGNTICKET_CONV_HANDLER(signticket_conv_input_grad, InputGrad)
SIGNTICKET_CONV_HANDLER(signticket_conv_kernel_grad, KernelGrad)

// Whether this CPU runs bfloat16 convolutions (all three ops) natively; queried once from
// Python, which otherwise keeps bfloat16 convs on XLA.
extern "C" int signticket_conv_bf16_supported() {
  Geometry g{dt::bf16, 2, 8, 8, 16, 3, 3, 16, 8, 8, 1, 1, 1, 1, 1, 1};
  try {
    for (Op op : {Op::kForward, Op::kInputGrad, Op::kKernelGrad}) Lookup(op, g);
  } catch (const dnnl::error&) {
    return 0;
  }
  return dnnl::get_effective_cpu_isa() >= dnnl::cpu_isa::avx512_core_bf16 ? 1 : 0;
}
