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
//
// oneDNN 3.2's jit_1x1 kernel gradient (AVX2 and AVX-512) writes past its reduce-to-unit-stride
// workspace when the conv is strided on NHWC inputs whose channel count is below its SIMD
// block (uxlfoundation/oneDNN#6035, open): silently wrong kernel gradients, a corrupted
// barrier that spins forever, or a crash. Build() never picks that implementation for strided
// kernel gradients. signticket_conv_self_check() checks any geometry against a direct-loop
// reference before Python lets XLA use it (signticket/native/conv.py).
//
// Team placement of the OpenMP teams oneDNN runs on: team_placement.h.

#include <omp.h>
#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"
#include "team_placement.h"

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
      // oneDNN#6035 (see the top of this file): the next implementation in oneDNN's list is its
      // generic direct conv, as fast on these small 1x1 shortcut convs.
      bool strided = g.sh > 1 || g.sw > 1;
      while (strided && std::string(pd.impl_info_str()).rfind("jit_1x1", 0) == 0) {
        if (!pd.next_impl()) throw dnnl::error(dnnl_unimplemented, "no safe implementation");
      }
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

// Tests of the self-check corrupt one op's output on purpose (signticket_conv_testing_corrupt).
std::atomic<int>& CorruptedOps() {
  static std::atomic<int> ops{0};
  return ops;
}

void Corrupt(dt type, char* out, size_t elements) {
  for (size_t i = 0; i < elements; ++i) {
    if (type == dt::f32) {
      reinterpret_cast<float*>(out)[i] += 1.0f;
    } else {
      reinterpret_cast<uint16_t*>(out)[i] ^= 0x4000;  // bfloat16: flips the top exponent bit
    }
  }
}

// Runs `members` convs of one geometry on raw buffers: a, b -> out as in Run(), each operand
// advancing by its step per member (0 for one shared by all members). Throws dnnl::error.
void Execute(Op op, const Geometry& g, char* a_base, char* b_base, char* out_base,
             int64_t members, size_t a_step, size_t b_step, size_t out_step) {
  const Cached& c = Lookup(op, g);
  placement::TeamPlacement team;
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
  for (int64_t m = 0; m < members; ++m) {
    char* a_ptr = a_base + m * a_step;
    char* b_ptr = b_base + m * b_step;
    char* out_ptr = out_base + m * out_step;
    memory user_w(c.user_weights, eng, op == Op::kKernelGrad ? out_ptr : b_ptr);
    memory w = c.reorder_weights ? memory(c.weights, eng, scratch) : user_w;
    // Shared weights are reordered once for all members.
    bool fresh_weights = m == 0 || b_step != 0;
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
  if (CorruptedOps() & (1 << static_cast<int>(op))) {
    int64_t elements = op == Op::kForward      ? g.n * g.oh * g.ow * g.o
                       : op == Op::kInputGrad ? g.n * g.h * g.w * g.c
                                              : g.kh * g.kw * g.c * g.o;
    Corrupt(g.type, out_base, static_cast<size_t>(elements));
  }
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
  try {
    Execute(op, g, static_cast<char*>(a.untyped_data()), static_cast<char*>(b.untyped_data()),
            static_cast<char*>(out->untyped_data()), members,
            a_batched ? a.size_bytes() / members : 0, b_batched ? b.size_bytes() / members : 0,
            out->size_bytes() / members);
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

// -- self-check -------------------------------------------------------------------------------
// Before Python lets XLA call a geometry (signticket/native/conv.py), each of the three ops
// runs on random operands twice at once from two threads (as XLA runs independent ops): both
// outputs must be bit-identical and finite, and agree with
// a direct-loop reference on every element (or, for large convs, on sampled elements that
// cover every index of every axis).

namespace {

// Operands are multiples of 1/8 in [-1, 1]: exact in bfloat16, and float32 sums of their
// products are exact up to 2^18 terms, so a correct kernel matches the reference to rounding of
// the output alone.
struct Operand {
  int64_t d[4];
  std::vector<float> v;
  Operand(int64_t a, int64_t b, int64_t c, int64_t e, uint64_t seed) : d{a, b, c, e} {
    v.resize(a * b * c * e);
    for (auto& x : v) {
      seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
      x = static_cast<float>(static_cast<int>((seed >> 33) % 17) - 8) / 8.0f;
    }
  }
  float at(int64_t i, int64_t j, int64_t k, int64_t l) const {
    return v[((i * d[1] + j) * d[2] + k) * d[3] + l];
  }
};

struct Sum {
  double value = 0, magnitude = 0;  // sum of products and of their absolute values
  void add(double a, double b) { value += a * b; magnitude += std::fabs(a * b); }
};

std::vector<char> Encode(const Operand& t, dt type) {
  std::vector<char> bytes(t.v.size() * (type == dt::f32 ? 4 : 2));
  for (size_t i = 0; i < t.v.size(); ++i) {
    uint32_t u;
    std::memcpy(&u, &t.v[i], 4);
    if (type == dt::f32) {
      std::memcpy(bytes.data() + 4 * i, &u, 4);
    } else {
      uint16_t top = static_cast<uint16_t>(u >> 16);  // exact for multiples of 1/8
      std::memcpy(bytes.data() + 2 * i, &top, 2);
    }
  }
  return bytes;
}

float Decode(const std::vector<char>& bytes, dt type, int64_t i) {
  uint32_t u = 0;
  if (type == dt::f32) {
    std::memcpy(&u, bytes.data() + 4 * i, 4);
  } else {
    uint16_t top;
    std::memcpy(&top, bytes.data() + 2 * i, 2);
    u = static_cast<uint32_t>(top) << 16;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The reference value of one output element of `op` (direct loops over the conv's definition).
Sum Reference(Op op, const Geometry& g, const Operand& x, const Operand& w, const Operand& dy,
              const int64_t* at) {
  Sum s;
  switch (op) {
    case Op::kForward:  // y[n, p, q, o]
      for (int64_t i = 0; i < g.kh; ++i)
        for (int64_t j = 0; j < g.kw; ++j) {
          int64_t h = at[1] * g.sh + i - g.pt, ww = at[2] * g.sw + j - g.pl;
          if (h < 0 || h >= g.h || ww < 0 || ww >= g.w) continue;
          for (int64_t c = 0; c < g.c; ++c) s.add(x.at(at[0], h, ww, c), w.at(i, j, c, at[3]));
        }
      break;
    case Op::kInputGrad:  // dx[n, h, w, c]
      for (int64_t i = 0; i < g.kh; ++i)
        for (int64_t j = 0; j < g.kw; ++j) {
          int64_t ph = at[1] + g.pt - i, qw = at[2] + g.pl - j;
          if (ph < 0 || qw < 0 || ph % g.sh || qw % g.sw) continue;
          int64_t p = ph / g.sh, q = qw / g.sw;
          if (p >= g.oh || q >= g.ow) continue;
          for (int64_t o = 0; o < g.o; ++o) s.add(dy.at(at[0], p, q, o), w.at(i, j, at[3], o));
        }
      break;
    case Op::kKernelGrad:  // dw[i, j, c, o]
      for (int64_t n = 0; n < g.n; ++n)
        for (int64_t p = 0; p < g.oh; ++p)
          for (int64_t q = 0; q < g.ow; ++q) {
            int64_t h = p * g.sh + at[0] - g.pt, ww = q * g.sw + at[1] - g.pl;
            if (h < 0 || h >= g.h || ww < 0 || ww >= g.w) continue;
            s.add(x.at(n, h, ww, at[2]), dy.at(n, p, q, at[3]));
          }
      break;
  }
  return s;
}

const char* kOpNames[] = {"forward", "input_grad", "kernel_grad"};

// "" when `op` passes on geometry `g`, else what failed.
std::string CheckOp(Op op, const Geometry& g) {
  Operand x(g.n, g.h, g.w, g.c, 1), w(g.kh, g.kw, g.c, g.o, 2), dy(g.n, g.oh, g.ow, g.o, 3);
  const Operand& a = op == Op::kInputGrad ? dy : x;
  const Operand& b = op == Op::kKernelGrad ? dy : w;
  const Operand& shape = op == Op::kForward ? dy : (op == Op::kInputGrad ? x : w);
  std::vector<char> a_bytes = Encode(a, g.type), b_bytes = Encode(b, g.type);
  std::vector<char> out_bytes = Encode(Operand(shape.d[0], shape.d[1], shape.d[2], shape.d[3], 4),
                                       g.type);
  std::vector<std::vector<char>> outs(2, out_bytes);  // pre-filled with noise, not zeros
  auto run = [&](int k) {
    Execute(op, g, a_bytes.data(), b_bytes.data(), outs[k].data(), 1, 0, 0, 0);
  };
  std::string concurrent_error;
  std::thread other([&] {
    try {
      run(1);
    } catch (const dnnl::error& e) {
      concurrent_error = e.what();
    }
  });
  run(0);
  other.join();
  if (!concurrent_error.empty()) throw dnnl::error(dnnl_runtime_error, concurrent_error.c_str());
  std::string name = kOpNames[static_cast<int>(op)];
  if (outs[1] != outs[0]) return name + ": outputs differ between identical runs (a race)";
  int64_t size = static_cast<int64_t>(shape.v.size());
  for (int64_t i = 0; i < size; ++i) {
    if (!std::isfinite(Decode(outs[0], g.type, i))) return name + ": non-finite output";
  }
  // Every element when the reference is cheap (< 2^25 multiply-adds for all of them), else
  // samples: for every axis and every index on it one random element, plus 64 more.
  std::vector<std::vector<int64_t>> samples;
  int64_t macs = g.n * g.oh * g.ow * g.kh * g.kw * g.c * g.o;
  uint64_t seed = 5;
  auto random_below = [&seed](int64_t n) {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<int64_t>((seed >> 33) % static_cast<uint64_t>(n));
  };
  auto random_index = [&] {
    std::vector<int64_t> at(4);
    for (int axis = 0; axis < 4; ++axis) at[axis] = random_below(shape.d[axis]);
    return at;
  };
  if (macs < (int64_t{1} << 25)) {
    for (int64_t i = 0; i < shape.d[0]; ++i)
      for (int64_t j = 0; j < shape.d[1]; ++j)
        for (int64_t k = 0; k < shape.d[2]; ++k)
          for (int64_t l = 0; l < shape.d[3]; ++l) samples.push_back({i, j, k, l});
  } else {
    for (int axis = 0; axis < 4; ++axis)
      for (int64_t v = 0; v < shape.d[axis]; ++v) {
        auto at = random_index();
        at[axis] = v;
        samples.push_back(at);
      }
    for (int k = 0; k < 64; ++k) samples.push_back(random_index());
  }
  // float32: a correct kernel is exact here, up to accumulation order on very long sums;
  // bfloat16: the output's own rounding (8 significant bits).
  double relative = g.type == dt::f32 ? 1e-5 : 1e-2;
  for (const auto& at : samples) {
    Sum ref = Reference(op, g, x, w, dy, at.data());
    int64_t flat = ((at[0] * shape.d[1] + at[1]) * shape.d[2] + at[2]) * shape.d[3] + at[3];
    double got = Decode(outs[0], g.type, flat);
    if (std::fabs(got - ref.value) > relative * ref.magnitude + 1e-6) {
      char message[256];
      std::snprintf(message, sizeof message, ": element [%lld, %lld, %lld, %lld] is %.6g, the "
                    "reference %.6g", static_cast<long long>(at[0]),
                    static_cast<long long>(at[1]), static_cast<long long>(at[2]),
                    static_cast<long long>(at[3]), got, ref.value);
      return name + message;
    }
  }
  return "";
}

void Copy(const std::string& text, char* buffer, int length) {
  if (length > 0) std::snprintf(buffer, length, "%s", text.c_str());
}

}  // namespace

// Checks the three ops of one geometry: 1 when all pass, 0 when one disagrees (what, in
// `message`), -1 when oneDNN cannot run it. `geometry`: n, h, w, c, kh, kw, o, sh, sw, pad top,
// bottom, left, right; `bf16`: operands in bfloat16 instead of float32.
extern "C" int signticket_conv_self_check(const int64_t* geometry, int bf16, char* message,
                                          int message_length) {
  const int64_t* q = geometry;
  Geometry g{bf16 ? dt::bf16 : dt::f32, q[0], q[1], q[2], q[3], q[4], q[5], q[6], 0, 0, q[7],
             q[8], q[9], q[10], q[11], q[12]};
  g.oh = (g.h + g.pt + g.pb - g.kh) / g.sh + 1;
  g.ow = (g.w + g.pl + g.pr - g.kw) / g.sw + 1;
  try {
    for (Op op : {Op::kForward, Op::kInputGrad, Op::kKernelGrad}) {
      std::string failure = CheckOp(op, g);
      if (!failure.empty()) {
        Copy(failure, message, message_length);
        return 0;
      }
    }
  } catch (const dnnl::error& e) {
    Copy(std::string("oneDNN: ") + e.what(), message, message_length);
    return -1;
  }
  Copy("", message, message_length);
  return 1;
}

// For tests of the self-check: from now on, op k's output (bit k of `ops`: forward, input grad,
// kernel grad) is corrupted after every run. 0 restores correct results.
extern "C" void signticket_conv_testing_corrupt(int ops) { CorruptedOps() = ops; }

// How convs called from here place their teams (what the library decides, for reports):
// 0 never pinned, 1 pinned while no other process loads the CPUs, 2 always pinned.
extern "C" int signticket_conv_team_placement() {
  if (!placement::Applies()) return 0;
  return placement::ModeFromEnv() == placement::Mode::kAlways ? 2 : 1;
}

// For tests of the load check: judge the CPUs as if others had used `share` of them since the
// last measurement (negative: measure again).
extern "C" void signticket_conv_testing_force_others_share(double share) {
  placement::Load::Get().Force(share);
}

// For tests of the load measurement: the share of the allowed CPUs others used over the
// `milliseconds` this call sleeps.
extern "C" double signticket_conv_testing_measure_others_share(int milliseconds) {
  const std::vector<int>& cpus = placement::AllowedCpus();
  placement::Sample from = placement::TakeSample(cpus);
  std::this_thread::sleep_for(std::chrono::milliseconds(milliseconds));
  return placement::OthersShareBetween(from, placement::TakeSample(cpus),
                                       static_cast<int>(cpus.size()));
}

// For tests of the load arithmetic: others' share of CPUs `cpus[0..n)` between two /proc/stat
// texts, given this process's CPU seconds and the wall seconds between them (-1: a CPU's line
// is missing).
extern "C" double signticket_conv_testing_others_share(const char* before, const char* after,
                                                       const int* cpus, int n, double ticks_per_s,
                                                       double self_s, double wall_s) {
  std::vector<int> list(cpus, cpus + n);
  long long from = placement::BusyTicks(before, list), to = placement::BusyTicks(after, list);
  if (from < 0 || to < 0) return -1;
  return placement::OthersShare(to - from, ticks_per_s, self_s, wall_s, n);
}

// For tests of team placement: runs one OpenMP region under the calling thread's placement and
// writes each member's CPU (-1 where its mask allows more than one) to `cpus`; returns the team
// size (at most `capacity` entries are written).
extern "C" int signticket_conv_testing_team_cpus(int* cpus, int capacity) {
  placement::TeamPlacement team;
  int size = 0;
#pragma omp parallel
  {
    cpu_set_t mask;
    CPU_ZERO(&mask);
    int cpu = -1;
    if (pthread_getaffinity_np(pthread_self(), sizeof mask, &mask) == 0 &&
        CPU_COUNT(&mask) == 1) {
      for (int i = 0; i < CPU_SETSIZE; ++i) {
        if (CPU_ISSET(i, &mask)) cpu = i;
      }
    }
    int member = omp_get_thread_num();
    if (member < capacity) cpus[member] = cpu;
#pragma omp single
    size = omp_get_num_threads();
  }
  return size;
}

// "oneDNN <version>, <ISA oneDNN dispatches to>": part of a self-check verdict's identity.
extern "C" void signticket_conv_runtime(char* buffer, int length) {
  using isa = dnnl::cpu_isa;
  const std::pair<isa, const char*> names[] = {
      {isa::avx512_core_amx_fp16, "avx512_core_amx_fp16"}, {isa::avx512_core_amx, "avx512_core_amx"},
      {isa::avx512_core_fp16, "avx512_core_fp16"}, {isa::avx512_core_bf16, "avx512_core_bf16"},
      {isa::avx512_core_vnni, "avx512_core_vnni"}, {isa::avx512_core, "avx512_core"},
      {isa::avx2_vnni_2, "avx2_vnni_2"}, {isa::avx2_vnni, "avx2_vnni"}, {isa::avx2, "avx2"},
      {isa::avx, "avx"}, {isa::sse41, "sse41"}};
  isa effective = dnnl::get_effective_cpu_isa();
  std::string name = "isa" + std::to_string(static_cast<int>(effective));
  for (const auto& [value, text] : names) {
    if (effective == value) name = text;
  }
  const dnnl_version_t* v = dnnl_version();
  Copy("oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
           std::to_string(v->patch) + ", " + name,
       buffer, length);
}
