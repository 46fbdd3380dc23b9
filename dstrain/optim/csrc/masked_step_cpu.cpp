// Fused masked SGD / AdamW steps for CPU tensors: one pass over parameter, gradient,
// optimizer state and mask, pruned entries written as +0.0 in the parameter and every
// state buffer.  Built at run time by dstrain/optim/cpu_kernels.py.
//
// Rounding: each element goes through exactly the fp32 operations of the PyTorch
// reference (dstrain/optim/functional.py) as torch's CPU kernels evaluate them.  The
// file is compiled with -ffp-contract=off, so the compiler never fuses a multiply
// and an add on its own; FMA() appears exactly where torch's vectorised kernels call
// vec::fmadd (add with alpha, lerp, addcmul).  Torch's DEFAULT (non-FMA) build
// evaluates those as a rounded multiply then an add, and so does FMA() when this file
// is built without -mfma (DSTRAIN_HAS_FMA is set by the loader from torch's own CPU
// capability).  Division is IEEE in both; sqrt is IEEE here (see adamw_block).
//
// Layout: every tensor is addressed as flat memory.  That is only right when the
// parameter is non-overlapping and dense and its gradient, state and byte mask have
// the same strides (contiguous, or all channels-last); packed bit masks number bits in
// logical (contiguous) order, so they need a contiguous parameter.  Tensors that do not
// qualify are reported back to the caller, which runs the reference on them.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef DSTRAIN_HAS_FMA
#define FMA(a, b, c) std::fma((a), (b), (c))
#else
#define FMA(a, b, c) ((a) * (b) + (c))
#endif

namespace {

constexpr int64_t kBlock = 1024;       // elements per inner loop (stack buffers stay in L1)
constexpr int64_t kChunk = 1 << 16;    // elements per parallel work item (a multiple of kBlock)

enum class MaskKind { kDense, kByte, kBit };

struct View {
  float* p = nullptr;
  const void* g = nullptr;
  at::ScalarType g_type = at::kFloat;
  float* s0 = nullptr;  // momentum buffer / exp_avg
  float* s1 = nullptr;  // exp_avg_sq
  const void* mask = nullptr;
  MaskKind mask_kind = MaskKind::kDense;
  int64_t numel = 0;
  float a = 0.f, b = 0.f;  // per-tensor AdamW scalars: -step_size, sqrt(bias_correction2)
  bool first = false;      // SGD: momentum buffer not yet initialised (buf = grad)
};

struct Item {
  int32_t view;
  int64_t start, end;
};

// --- argument checks: ValueError naming the argument, like kernels/validate.py ---------------

void check_like(const at::Tensor& t, const at::Tensor& p, const char* name, int64_t i) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, "[", i, "] is on ", t.device(),
                    " but backend='cpu' updates CPU tensors; move it with .cpu() or use backend='auto'");
  TORCH_CHECK_VALUE(t.sizes() == p.sizes(), name, "[", i, "] has shape ", t.sizes(),
                    " but its parameter has shape ", p.sizes());
}

void check_param(const at::Tensor& p, int64_t i) {
  TORCH_CHECK_VALUE(p.device().is_cpu(), "params[", i, "] is on ", p.device(),
                    "; backend='cpu' updates CPU tensors: use backend='auto' or 'triton' for CUDA");
  TORCH_CHECK_VALUE(p.scalar_type() == at::kFloat, "params[", i, "] has dtype ", p.scalar_type(),
                    "; the fused CPU step updates fp32 (master) weights: keep fp32 params or use backend='torch'");
}

void check_grad(const at::Tensor& g, const at::Tensor& p, int64_t i) {
  check_like(g, p, "grads", i);
  auto t = g.scalar_type();
  TORCH_CHECK_VALUE(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf, "grads[", i, "] has dtype ", t,
                    "; expected float32, bfloat16 or float16: convert it with .to()");
}

void check_state(const at::Tensor& s, const at::Tensor& p, const char* name, int64_t i) {
  check_like(s, p, name, i);
  TORCH_CHECK_VALUE(s.scalar_type() == at::kFloat, name, "[", i, "] has dtype ", s.scalar_type(),
                    "; optimizer state is fp32: convert it with .float()");
}

MaskKind check_mask(const std::optional<at::Tensor>& m, const at::Tensor& p, int64_t i) {
  if (!m.has_value() || !m->defined()) return MaskKind::kDense;
  const auto& t = *m;
  TORCH_CHECK_VALUE(t.device().is_cpu(), "masks[", i, "] is on ", t.device(), " but its parameter is on cpu");
  if (t.scalar_type() == at::kInt) {  // BitMask.words
    int64_t words = (p.numel() + 31) / 32;
    TORCH_CHECK_VALUE(t.dim() == 1 && t.numel() == words, "masks[", i, "] has ", t.numel(),
                      " int32 words but its parameter has ", p.numel(), " elements (", words,
                      " words); pack_mask() the parameter's own bool mask");
    TORCH_CHECK_VALUE(t.is_contiguous(), "masks[", i, "].words is not contiguous: build it with pack_mask()");
    return MaskKind::kBit;
  }
  TORCH_CHECK_VALUE(t.scalar_type() == at::kBool || t.scalar_type() == at::kByte, "masks[", i, "] has dtype ",
                    t.scalar_type(), "; expected bool or uint8 (or a BitMask from pack_mask())");
  check_like(t, p, "masks", i);
  return MaskKind::kByte;
}

// Flat addressing is right when p is dense and everything else shares its strides.
bool flat_ok(const at::Tensor& p, std::initializer_list<const at::Tensor*> others, MaskKind mk) {
  if (!p.is_non_overlapping_and_dense()) return false;
  if (mk == MaskKind::kBit && !p.is_contiguous()) return false;
  for (const at::Tensor* t : others) {
    if (t != nullptr && t->defined() && t->strides() != p.strides()) return false;
  }
  return true;
}

// One optimizer state tensor of a parameter, with the argument name its errors use.
struct StateArg {
  const at::Tensor* t;
  const char* name;
};

// Checks parameter i with its gradient, state tensors and mask (in that order), then fills
// the View fields every optimizer shares.  False: nothing for the kernel to do; a layout
// it cannot address flat is also appended to ``skipped`` for the caller's reference path.
bool prepare_view(int64_t i, const at::Tensor& p, const at::Tensor& g, const std::optional<at::Tensor>& m,
                  StateArg s0, StateArg s1, std::vector<int64_t>& skipped, View& v) {
  check_param(p, i);
  check_grad(g, p, i);
  for (const StateArg& s : {s0, s1}) {
    if (s.t != nullptr) check_state(*s.t, p, s.name, i);
  }
  const MaskKind mk = check_mask(m, p, i);
  const at::Tensor* mask_t = (mk == MaskKind::kByte) ? &*m : nullptr;
  if (!flat_ok(p, {&g, s0.t, s1.t, mask_t}, mk)) {
    skipped.push_back(i);
    return false;
  }
  if (p.numel() == 0) return false;
  v.p = p.data_ptr<float>();
  v.g = g.data_ptr();
  v.g_type = g.scalar_type();
  v.s0 = s0.t != nullptr ? s0.t->data_ptr<float>() : nullptr;
  v.s1 = s1.t != nullptr ? s1.t->data_ptr<float>() : nullptr;
  v.mask = mk == MaskKind::kDense ? nullptr : m->data_ptr();
  v.mask_kind = mk;
  v.numel = p.numel();
  return true;
}

std::vector<Item> work_items(const std::vector<View>& views) {
  std::vector<Item> items;
  for (size_t v = 0; v < views.size(); ++v) {
    for (int64_t s = 0; s < views[v].numel; s += kChunk) {
      items.push_back({static_cast<int32_t>(v), s, std::min(s + kChunk, views[v].numel)});
    }
  }
  return items;
}

// --- per-block helpers ------------------------------------------------------------------------

// The gradient of elements [start, start+n) as fp32: the tensor itself when it is fp32
// (and not negated), else converted (exactly) into buf.
inline const float* grad_block(const View& v, int64_t start, int64_t n, bool negate, float* buf) {
  if (v.g_type == at::kFloat) {
    const float* g = static_cast<const float*>(v.g) + start;
    if (!negate) return g;
    for (int64_t i = 0; i < n; ++i) buf[i] = -g[i];
    return buf;
  }
  if (v.g_type == at::kBFloat16) {
    const uint16_t* g = static_cast<const uint16_t*>(v.g) + start;
    for (int64_t i = 0; i < n; ++i) {
      uint32_t bits = static_cast<uint32_t>(g[i]) << 16;
      float f;
      std::memcpy(&f, &bits, sizeof(f));
      buf[i] = f;
    }
  } else {
    const c10::Half* g = static_cast<const c10::Half*>(v.g) + start;
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(g[i]);
  }
  if (negate) {
    for (int64_t i = 0; i < n; ++i) buf[i] = -buf[i];
  }
  return buf;
}

// Which elements survive (non-zero byte), or nullptr for a dense tensor.  Blocks start at
// multiples of kBlock, hence of 32, so a block covers whole words of a bit mask.
inline const uint8_t* keep_block(const View& v, int64_t start, int64_t n, uint8_t* buf) {
  if (v.mask_kind == MaskKind::kDense) return nullptr;
  if (v.mask_kind == MaskKind::kByte) return static_cast<const uint8_t*>(v.mask) + start;
  const uint32_t* words = static_cast<const uint32_t*>(v.mask) + start / 32;
  for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<uint8_t>((words[i >> 5] >> (i & 31)) & 1u);
  return buf;
}

// --- SGD ------------------------------------------------------------------------------------

struct SgdScalars {
  float neg_lr, momentum, one_minus_damp, weight_decay;
};

// MOM: 0 no momentum, 1 first step (buf = grad), 2 later steps.
template <bool MASKED, bool HAS_WD, int MOM, bool NESTEROV>
void sgd_block(float* __restrict p, const float* __restrict g, float* __restrict buf, const uint8_t* __restrict keep,
               int64_t n, SgdScalars s) {
  for (int64_t i = 0; i < n; ++i) {
    float pi = p[i];
    float gi = g[i];
    if (HAS_WD) gi = FMA(pi, s.weight_decay, gi);  // grad.add(param, alpha=wd)
    float bi = gi;
    if (MOM == 2) bi = FMA(gi, s.one_minus_damp, buf[i] * s.momentum);  // buf.mul_(m).add_(g, alpha=1-d)
    if (MOM != 0) gi = NESTEROV ? FMA(bi, s.momentum, gi) : bi;          // grad.add(buf, alpha=m) / buf
    pi = FMA(gi, s.neg_lr, pi);                                          // param.add_(grad, alpha=-lr)
    if (MASKED) {
      bool k = keep[i] != 0;
      pi = k ? pi : 0.f;
      bi = k ? bi : 0.f;
    }
    p[i] = pi;
    if (MOM != 0) buf[i] = bi;
  }
}

template <bool MASKED, bool HAS_WD, int MOM>
void sgd_block_n(float* p, const float* g, float* buf, const uint8_t* keep, int64_t n, SgdScalars s, bool nesterov) {
  if (nesterov) {
    sgd_block<MASKED, HAS_WD, MOM, true>(p, g, buf, keep, n, s);
  } else {
    sgd_block<MASKED, HAS_WD, MOM, false>(p, g, buf, keep, n, s);
  }
}

template <bool MASKED, bool HAS_WD>
void sgd_block_m(float* p, const float* g, float* buf, const uint8_t* keep, int64_t n, SgdScalars s, int mom,
                 bool nesterov) {
  if (mom == 0) {
    sgd_block<MASKED, HAS_WD, 0, false>(p, g, buf, keep, n, s);
  } else if (mom == 1) {
    sgd_block_n<MASKED, HAS_WD, 1>(p, g, buf, keep, n, s, nesterov);
  } else {
    sgd_block_n<MASKED, HAS_WD, 2>(p, g, buf, keep, n, s, nesterov);
  }
}

void sgd_range(const View& v, int64_t start, int64_t end, SgdScalars s, bool has_momentum, bool nesterov,
               bool maximize) {
  alignas(64) float gbuf[kBlock];
  alignas(64) uint8_t kbuf[kBlock];
  const bool has_wd = s.weight_decay != 0.f;
  const int mom = has_momentum ? (v.first ? 1 : 2) : 0;
  for (int64_t b = start; b < end; b += kBlock) {
    const int64_t n = std::min(kBlock, end - b);
    const float* g = grad_block(v, b, n, maximize, gbuf);
    const uint8_t* keep = keep_block(v, b, n, kbuf);
    float* p = v.p + b;
    float* buf = has_momentum ? v.s0 + b : nullptr;
    if (keep != nullptr) {
      has_wd ? sgd_block_m<true, true>(p, g, buf, keep, n, s, mom, nesterov)
             : sgd_block_m<true, false>(p, g, buf, keep, n, s, mom, nesterov);
    } else {
      has_wd ? sgd_block_m<false, true>(p, g, buf, keep, n, s, mom, nesterov)
             : sgd_block_m<false, false>(p, g, buf, keep, n, s, mom, nesterov);
    }
  }
}

// Returns the indices of the tensors it did not update (layout not flat), for the
// caller to run through the reference.  ``first[i]``: momentum buffer i was just
// allocated and is set to the (decayed) gradient, as torch's first step does.
std::vector<int64_t> masked_sgd_cpu(at::TensorList params, at::TensorList grads, at::TensorList bufs,
                                    const c10::List<std::optional<at::Tensor>>& masks, c10::List<bool> first,
                                    double lr, double momentum, double dampening, bool nesterov,
                                    double weight_decay, bool maximize) {
  const int64_t n = static_cast<int64_t>(params.size());
  const bool has_momentum = momentum != 0;
  TORCH_CHECK_VALUE(static_cast<int64_t>(grads.size()) == n && static_cast<int64_t>(masks.size()) == n &&
                        (!has_momentum || (static_cast<int64_t>(bufs.size()) == n &&
                                           static_cast<int64_t>(first.size()) == n)),
                    "params, grads, masks (and with momentum: momentum_buffers) need one entry per parameter");
  std::vector<View> views;
  std::vector<int64_t> skipped;
  views.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    View v;
    if (prepare_view(i, params[i], grads[i], masks.get(i), {has_momentum ? &bufs[i] : nullptr, "momentum_buffers"},
                     {nullptr, nullptr}, skipped, v)) {
      v.first = has_momentum && first.get(i);
      views.push_back(v);
    }
  }
  // Scalars rounded to fp32 as torch rounds a Python float for an fp32 tensor op.
  const SgdScalars s{static_cast<float>(-lr), static_cast<float>(momentum), static_cast<float>(1.0 - dampening),
                     static_cast<float>(weight_decay)};
  const std::vector<Item> items = work_items(views);
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t w = lo; w < hi; ++w) {
      const Item& it = items[w];
      sgd_range(views[it.view], it.start, it.end, s, has_momentum, nesterov, maximize);
    }
  });
  return skipped;
}

// --- AdamW ----------------------------------------------------------------------------------

struct AdamScalars {
  float decay, lerp_w, beta2, one_minus_beta2, eps;
};

// The square root is the hardware's (correctly rounded, like the Triton kernels' sqrt_rn).
// torch.sqrt on the CPU is MKL's vmsSqrt in high-accuracy mode when torch is built with
// MKL (ATen/cpu/vml.h), which is off by one ulp for ~15% of inputs; calling it here made
// the parameters bitwise equal to the reference but cost ~1 ns per element on a 2-core
// EPYC (2x torch's dense fused AdamW, which does not use it either).  So the moments are
// bitwise those of the reference and the parameter is within the reference's documented
// 1-2 ulp, exactly as for the Triton kernels.
// LERP_SMALL: torch's lerp takes self + w*(end-self) for |w| < 0.5, else end - (end-self)*(1-w);
// lerp_w holds w, or w - 1 (so both are one FMA).
template <bool MASKED, bool LERP_SMALL>
void adamw_block(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
                 const uint8_t* __restrict keep, int64_t n, AdamScalars s, float neg_ss, float bc2) {
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    float pi = p[i] * s.decay;                                        // param.mul_(1 - lr*wd)
    float mi = m[i];
    const float d = gi - mi;
    mi = LERP_SMALL ? FMA(s.lerp_w, d, mi) : FMA(s.lerp_w, d, gi);    // exp_avg.lerp_(grad, 1-beta1)
    float vi = FMA(gi * s.one_minus_beta2, gi, v[i] * s.beta2);       // mul_(b2).addcmul_(g, g, value=1-b2)
    const float denom = std::sqrt(vi) / bc2 + s.eps;                   // (sqrt(v) / bc2).add_(eps)
    pi = pi + (neg_ss * mi) / denom;                                   // param.addcdiv_(m, denom, value=-ss)
    if (MASKED) {
      const bool k = keep[i] != 0;
      pi = k ? pi : 0.f;
      mi = k ? mi : 0.f;
      vi = k ? vi : 0.f;
    }
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

void adamw_range(const View& v, int64_t start, int64_t end, AdamScalars s, bool lerp_small, bool maximize) {
  alignas(64) float gbuf[kBlock];
  alignas(64) uint8_t kbuf[kBlock];
  for (int64_t b = start; b < end; b += kBlock) {
    const int64_t n = std::min(kBlock, end - b);
    const float* g = grad_block(v, b, n, maximize, gbuf);
    const uint8_t* keep = keep_block(v, b, n, kbuf);
    float* p = v.p + b;
    float* m = v.s0 + b;
    float* vv = v.s1 + b;
    if (keep != nullptr) {
      lerp_small ? adamw_block<true, true>(p, g, m, vv, keep, n, s, v.a, v.b)
                 : adamw_block<true, false>(p, g, m, vv, keep, n, s, v.a, v.b);
    } else {
      lerp_small ? adamw_block<false, true>(p, g, m, vv, keep, n, s, v.a, v.b)
                 : adamw_block<false, false>(p, g, m, vv, keep, n, s, v.a, v.b);
    }
  }
}

// neg_step_sizes[i] = -lr / (1 - beta1**step_i) and bc2_sqrts[i] = sqrt(1 - beta2**step_i),
// computed in double precision by the caller exactly as the reference does.
std::vector<int64_t> masked_adamw_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                                      at::TensorList exp_avg_sqs, const c10::List<std::optional<at::Tensor>>& masks,
                                      c10::ArrayRef<double> neg_step_sizes, c10::ArrayRef<double> bc2_sqrts,
                                      double lr, double beta1, double beta2, double eps, double weight_decay,
                                      bool maximize) {
  const int64_t n = static_cast<int64_t>(params.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(grads.size()) == n && static_cast<int64_t>(exp_avgs.size()) == n &&
                        static_cast<int64_t>(exp_avg_sqs.size()) == n && static_cast<int64_t>(masks.size()) == n &&
                        static_cast<int64_t>(neg_step_sizes.size()) == n &&
                        static_cast<int64_t>(bc2_sqrts.size()) == n,
                    "params, grads, exp_avgs, exp_avg_sqs, steps and masks need one entry per parameter");
  std::vector<View> views;
  std::vector<int64_t> skipped;
  views.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    View v;
    if (prepare_view(i, params[i], grads[i], masks.get(i), {&exp_avgs[i], "exp_avgs"},
                     {&exp_avg_sqs[i], "exp_avg_sqs"}, skipped, v)) {
      v.a = static_cast<float>(neg_step_sizes[i]);
      v.b = static_cast<float>(bc2_sqrts[i]);
      views.push_back(v);
    }
  }
  const float w = static_cast<float>(1.0 - beta1);  // lerp's weight, as torch rounds it
  const bool lerp_small = std::abs(w) < 0.5f;
  const AdamScalars s{static_cast<float>(1.0 - lr * weight_decay), lerp_small ? w : w - 1.0f,
                      static_cast<float>(beta2), static_cast<float>(1.0 - beta2), static_cast<float>(eps)};
  const std::vector<Item> items = work_items(views);
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t w = lo; w < hi; ++w) {
      const Item& it = items[w];
      adamw_range(views[it.view], it.start, it.end, s, lerp_small, maximize);
    }
  });
  return skipped;
}

// How many threads one at::parallel_for over ``items`` work items really runs on: the
// step's own parallel region, so a build that loses OpenMP (the header's pragma is then
// ignored and the loop runs serially) shows up in a test rather than as a slow step.
int64_t parallel_threads(int64_t items) {
  std::vector<int64_t> seen(static_cast<size_t>(std::max<int64_t>(items, 1)), -1);
  at::parallel_for(0, items, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t w = lo; w < hi; ++w) seen[static_cast<size_t>(w)] = at::get_thread_num();
  });
  int64_t threads = 0;
  for (int64_t t : seen) threads = std::max(threads, t + 1);
  return threads;
}

}  // namespace

TORCH_LIBRARY(dstrain_cpu, m) {
  m.def("parallel_threads(int items) -> int", &parallel_threads);
  m.def("masked_sgd(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, Tensor?[] masks, "
        "bool[] first, float lr, float momentum, float dampening, bool nesterov, float weight_decay, "
        "bool maximize) -> int[]",
        &masked_sgd_cpu);
  m.def("masked_adamw(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor?[] masks, float[] neg_step_sizes, float[] bc2_sqrts, float lr, float beta1, float beta2, "
        "float eps, float weight_decay, bool maximize) -> int[]",
        &masked_adamw_cpu);
}
