"""CPU kernels compiled on first use: GroupNorm + ReLU for channels_last activations, and weight
standardization straight into the convolution's dtype.

PyTorch's channels_last GroupNorm walks each group's few channels with a stride on feature maps under
32x32 (forward) or 48x48 (backward), which makes it several times slower than in NCHW for BiT's
group sizes; NCHW in turn makes every oneDNN convolution reorder its activations. This kernel keeps
channels_last and vectorizes over channels at every map size, applies the ReLU in the same pass, and
in the backward masks the gradient with the saved output. The standardization kernel makes one pass
per filter (the filter stays in cache) and writes bf16 directly under autocast, instead of
batch_norm's passes plus a cast. Both are built with the C++ compiler through
``torch.utils.cpp_extension`` once per machine (about a minute; cached under
``TORCH_EXTENSIONS_DIR``); without a compiler, or with ``BIGTRANSFER_NO_KERNELS=1``, ``load()``
returns None and callers use PyTorch's own operators.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("bigtransfer")

_SOURCE = r"""
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

inline float ld(const float* p, int64_t i) { return p[i]; }
inline float ld(const uint16_t* p, int64_t i) {  // bfloat16 -> float
  uint32_t u = uint32_t(p[i]) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void st(float* p, int64_t i, float v) { p[i] = v; }
inline void st(uint16_t* p, int64_t i, float v) {  // float -> bfloat16, round to nearest even
  uint32_t u;
  std::memcpy(&u, &v, 4);
  const uint16_t r = uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  p[i] = (v != v) ? uint16_t(0x7FC0) : r;
}

constexpr int64_t kBlock = 32;  // rows summed in float before joining the double total

// Rows [r0, r1) of sample n are split in tasks; each sums its rows per channel into acc (2 * C doubles).
int64_t tasks_per_sample(int64_t N, int64_t HW) {
  const int64_t want = (2 * at::get_num_threads() + N - 1) / N;
  return std::max<int64_t>(1, std::min<int64_t>((HW + kBlock - 1) / kBlock, want));
}

template <typename T>
void forward(const T* x, const float* gamma, const float* beta, T* y, float* mean, float* rstd,
             int64_t N, int64_t HW, int64_t C, int64_t G, double eps) {
  const int64_t D = C / G, P = tasks_per_sample(N, HW), rows = (HW + P - 1) / P;
  // Sums are taken around a per-group shift (the group's first value) against cancellation.
  std::vector<float> shift(N * C), a(N * C), b(N * C);
  std::vector<double> acc(N * P * 2 * C, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) shift[n * C + c] = ld(x, n * HW * C + (c / D) * D);
  at::parallel_for(0, N * P, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> blk(2 * C);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / P, r0 = (t % P) * rows, r1 = std::min(HW, r0 + rows);
      const float* __restrict__ k = shift.data() + n * C;
      double* __restrict__ s = acc.data() + t * 2 * C;
      for (int64_t rb = r0; rb < r1; rb += kBlock) {
        float* __restrict__ s1 = blk.data();
        float* __restrict__ s2 = s1 + C;
        std::fill(blk.begin(), blk.end(), 0.f);
        for (int64_t r = rb; r < std::min(r1, rb + kBlock); ++r) {
          const T* __restrict__ xr = x + (n * HW + r) * C;
          for (int64_t c = 0; c < C; ++c) {
            const float v = ld(xr, c) - k[c];
            s1[c] += v;
            s2[c] += v * v;
          }
        }
        for (int64_t c = 0; c < 2 * C; ++c) s[c] += blk[c];
      }
    }
  });
  const double M = double(D * HW);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < G; ++g) {
      double s1 = 0, s2 = 0;
      for (int64_t p = 0; p < P; ++p) {
        const double* q = acc.data() + (n * P + p) * 2 * C + g * D;
        for (int64_t d = 0; d < D; ++d) {
          s1 += q[d];
          s2 += q[C + d];
        }
      }
      const double m1 = s1 / M, var = std::max(s2 / M - m1 * m1, 0.0);
      const double mu = shift[n * C + g * D] + m1, rs = 1.0 / std::sqrt(var + eps);
      mean[n * G + g] = float(mu);
      rstd[n * G + g] = float(rs);
      for (int64_t c = g * D; c < (g + 1) * D; ++c) {
        a[n * C + c] = float(gamma[c] * rs);
        b[n * C + c] = float(beta[c] - mu * gamma[c] * rs);
      }
    }
  at::parallel_for(0, N * HW, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* __restrict__ an = a.data() + (i / HW) * C;
      const float* __restrict__ bn = b.data() + (i / HW) * C;
      const T* __restrict__ xr = x + i * C;
      T* __restrict__ yr = y + i * C;
      for (int64_t c = 0; c < C; ++c) st(yr, c, std::max(0.f, ld(xr, c) * an[c] + bn[c]));
    }
  });
}

template <typename T>
void backward(const T* dy, const T* y, const T* x, const float* mean, const float* rstd, const float* gamma,
              T* dx, float* dgamma, float* dbeta, int64_t N, int64_t HW, int64_t C, int64_t G) {
  const int64_t D = C / G, P = tasks_per_sample(N, HW), rows = (HW + P - 1) / P;
  std::vector<double> acc(N * P * 2 * C, 0.0);
  at::parallel_for(0, N * P, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> blk(2 * C);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / P, r0 = (t % P) * rows, r1 = std::min(HW, r0 + rows);
      double* __restrict__ s = acc.data() + t * 2 * C;
      for (int64_t rb = r0; rb < r1; rb += kBlock) {
        float* __restrict__ sg = blk.data();
        float* __restrict__ sgx = sg + C;
        std::fill(blk.begin(), blk.end(), 0.f);
        for (int64_t r = rb; r < std::min(r1, rb + kBlock); ++r) {
          const int64_t o = (n * HW + r) * C;
          for (int64_t c = 0; c < C; ++c) {
            const float g = ld(y, o + c) > 0.f ? ld(dy, o + c) : 0.f;  // through the ReLU
            sg[c] += g;
            sgx[c] += g * ld(x, o + c);
          }
        }
        for (int64_t c = 0; c < 2 * C; ++c) s[c] += blk[c];
      }
    }
  });
  std::vector<double> db(N * C, 0.0), ds(N * C, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t p = 0; p < P; ++p) {
      const double* q = acc.data() + (n * P + p) * 2 * C;
      for (int64_t c = 0; c < C; ++c) {
        db[n * C + c] += q[c];
        ds[n * C + c] += q[C + c];
      }
    }
  for (int64_t c = 0; c < C; ++c) {
    double sg = 0, sb = 0;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t i = n * G + c / D;
      sg += (ds[n * C + c] - double(mean[i]) * db[n * C + c]) * double(rstd[i]);
      sb += db[n * C + c];
    }
    dgamma[c] = float(sg);
    dbeta[c] = float(sb);
  }
  // dx = c1 * g + c2 * x + c3, with c1 per channel and c2, c3 per group.
  std::vector<float> c1(N * C), c2(N * C), c3(N * C);
  const double M = double(D * HW);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < G; ++g) {
      double dsg = 0, dbg = 0;
      for (int64_t c = g * D; c < (g + 1) * D; ++c) {
        dsg += gamma[c] * ds[n * C + c];
        dbg += gamma[c] * db[n * C + c];
      }
      const double mu = mean[n * G + g], rs = rstd[n * G + g];
      const double k2 = (dbg * mu - dsg) * rs * rs * rs / M, k3 = -k2 * mu - dbg * rs / M;
      for (int64_t c = g * D; c < (g + 1) * D; ++c) {
        c1[n * C + c] = float(gamma[c] * rs);
        c2[n * C + c] = float(k2);
        c3[n * C + c] = float(k3);
      }
    }
  at::parallel_for(0, N * HW, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i / HW, o = i * C;
      const float* __restrict__ a1 = c1.data() + n * C;
      const float* __restrict__ a2 = c2.data() + n * C;
      const float* __restrict__ a3 = c3.data() + n * C;
      for (int64_t c = 0; c < C; ++c) {
        const float g = ld(y, o + c) > 0.f ? ld(dy, o + c) : 0.f;
        st(dx, o + c, a1[c] * g + a2[c] * ld(x, o + c) + a3[c]);
      }
    }
  });
}

// Sum of a row with 16 float lanes (vectorizable without reassociating flags), joined in double.
template <typename F>
double row_sum(int64_t K, F&& term) {
  float lanes[16] = {0.f};
  int64_t k = 0;
  for (; k + 16 <= K; k += 16)
    for (int j = 0; j < 16; ++j) lanes[j] += term(k + j);
  for (; k < K; ++k) lanes[0] += term(k);
  double s = 0;
  for (int j = 0; j < 16; ++j) s += lanes[j];
  return s;
}

// Weight standardization of O rows of K values; y in float or bfloat16.
template <typename T>
void ws_fwd(const float* w, T* y, float* mean, float* rstd, int64_t O, int64_t K, double eps) {
  at::parallel_for(0, O, 1, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      const float* __restrict__ r = w + o * K;
      const float m = float(row_sum(K, [&](int64_t k) { return r[k]; }) / K);
      const double var = row_sum(K, [&](int64_t k) { return (r[k] - m) * (r[k] - m); }) / K;
      const float rs = float(1.0 / std::sqrt(var + eps));
      T* __restrict__ yr = y + o * K;
      for (int64_t k = 0; k < K; ++k) st(yr, k, (r[k] - m) * rs);
      mean[o] = m;
      rstd[o] = rs;
    }
  });
}

template <typename T>
void ws_bwd(const T* g, const float* w, const float* mean, const float* rstd, float* dw, int64_t O, int64_t K) {
  at::parallel_for(0, O, 1, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      const float* __restrict__ r = w + o * K;
      const T* __restrict__ gr = g + o * K;
      const float m = mean[o], rs = rstd[o];
      const float sg = float(row_sum(K, [&](int64_t k) { return ld(gr, k); }) / K);
      const float sgy = float(row_sum(K, [&](int64_t k) { return ld(gr, k) * (r[k] - m) * rs; }) / K);
      float* __restrict__ d = dw + o * K;
      for (int64_t k = 0; k < K; ++k) d[k] = rs * (ld(gr, k) - sg - (r[k] - m) * rs * sgy);
    }
  });
}

template <typename F>
void dispatch(const at::Tensor& x, F&& fn) {
  if (x.scalar_type() == at::kBFloat16) fn(uint16_t());
  else fn(float());
}

template <typename T>
T* ptr(const at::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }

}  // namespace

// x: (N, C, H, W) channels_last, float32 or bfloat16; returns relu(group_norm(x)) and the group stats.
std::vector<at::Tensor> gn_relu_forward(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
                                        int64_t groups, double eps) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  auto y = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto mean = at::empty({N, groups}, x.options().dtype(at::kFloat));
  auto rstd = at::empty({N, groups}, x.options().dtype(at::kFloat));
  auto g = gamma.to(at::kFloat).contiguous(), b = beta.to(at::kFloat).contiguous();
  dispatch(x, [&](auto t) {
    using T = decltype(t);
    forward<T>(ptr<const T>(x), g.data_ptr<float>(), b.data_ptr<float>(), ptr<T>(y), mean.data_ptr<float>(),
               rstd.data_ptr<float>(), N, HW, C, groups, eps);
  });
  return {y, mean, rstd};
}

// dy: gradient of the output y; all of dy, y, x channels_last. Returns dx, dgamma, dbeta.
std::vector<at::Tensor> gn_relu_backward(const at::Tensor& dy, const at::Tensor& y, const at::Tensor& x,
                                         const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& gamma,
                                         int64_t groups) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  auto dx = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto dgamma = at::empty({C}, x.options().dtype(at::kFloat));
  auto dbeta = at::empty({C}, x.options().dtype(at::kFloat));
  auto g = gamma.to(at::kFloat).contiguous();
  dispatch(x, [&](auto t) {
    using T = decltype(t);
    backward<T>(ptr<const T>(dy), ptr<const T>(y), ptr<const T>(x), mean.data_ptr<float>(), rstd.data_ptr<float>(),
                g.data_ptr<float>(), ptr<T>(dx), dgamma.data_ptr<float>(), dbeta.data_ptr<float>(), N, HW, C, groups);
  });
  return {dx, dgamma, dbeta};
}

// w: (O, K) float rows; returns the standardized rows in ``dtype`` (float or bfloat16), mean and rstd.
std::vector<at::Tensor> ws_forward(const at::Tensor& w, double eps, bool bf16) {
  const int64_t O = w.size(0), K = w.size(1);
  auto y = at::empty({O, K}, w.options().dtype(bf16 ? at::kBFloat16 : at::kFloat));
  auto mean = at::empty({O}, w.options()), rstd = at::empty({O}, w.options());
  dispatch(y, [&](auto t) {
    using T = decltype(t);
    ws_fwd<T>(w.data_ptr<float>(), ptr<T>(y), mean.data_ptr<float>(), rstd.data_ptr<float>(), O, K, eps);
  });
  return {y, mean, rstd};
}

// g: (O, K) gradient of the standardized rows (float or bfloat16); returns the float gradient of w.
at::Tensor ws_backward(const at::Tensor& g, const at::Tensor& w, const at::Tensor& mean, const at::Tensor& rstd) {
  auto dw = at::empty_like(w);
  dispatch(g, [&](auto t) {
    using T = decltype(t);
    ws_bwd<T>(ptr<const T>(g), w.data_ptr<float>(), mean.data_ptr<float>(), rstd.data_ptr<float>(),
                   dw.data_ptr<float>(), w.size(0), w.size(1));
  });
  return dw;
}
"""

_FLAGS = ["-O3", "-march=native"]
_module = None
_failed = False


def load():
    """The compiled kernel module, built on first call; None where it cannot be built or is disabled."""
    global _module, _failed
    if _module is not None or _failed:
        return _module
    if os.environ.get("BIGTRANSFER_NO_KERNELS") or os.name == "nt":  # the flags below are GCC/Clang flags
        _failed = True
        return None
    # -march=native code must not be reused on another CPU: the build name covers the CPU's features.
    # ... and the torch installation it links against, so two environments never rebuild each other's copy
    key = "\n".join([_SOURCE, *_FLAGS, torch.__version__, platform.machine(), _cpu_flags(),
                     os.path.dirname(torch.__file__)])
    name = "bigtransfer_kernels_" + hashlib.sha256(key.encode()).hexdigest()[:12]
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns about CUDA on CPU-only machines
    try:
        from torch.utils import cpp_extension

        if not _built(cpp_extension, name):
            log.info("compiling the bigtransfer CPU kernels (once per machine, about a minute)")
        _module = cpp_extension.load_inline(name, cpp_sources=_SOURCE, functions=[
            "gn_relu_forward", "gn_relu_backward", "ws_forward", "ws_backward"], extra_cflags=_FLAGS, verbose=False)
    except Exception as e:  # noqa: BLE001 - no compiler, no ninja, a compile error: fall back to PyTorch's ops
        _failed = True
        log.warning("bigtransfer CPU kernels unavailable (%s: %s); using PyTorch's operators",
                    type(e).__name__, (str(e).strip().splitlines() or [""])[-1][:160])
    finally:
        quiet.setLevel(level)
    return _module


def _built(cpp_extension, name: str) -> bool:
    try:
        return os.path.exists(os.path.join(cpp_extension._get_build_directory(name, False), f"{name}.so"))
    except Exception:  # noqa: BLE001 - only decides whether to announce a compilation
        return True


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


class _GroupNormReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps):
        y, mean, rstd = _module.gn_relu_forward(x, weight, bias, groups, eps)
        ctx.save_for_backward(x, y, mean, rstd, weight)
        ctx.groups = groups
        return y

    @staticmethod
    def backward(ctx, dy):
        x, y, mean, rstd, weight = ctx.saved_tensors
        dx, dw, db = _module.gn_relu_backward(dy.contiguous(memory_format=torch.channels_last), y, x, mean, rstd,
                                              weight, ctx.groups)
        return dx, dw.to(weight.dtype), db.to(weight.dtype), None, None


def _is_cl(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """A conv kernel as (out, in * kh * kw) rows in its memory order (a view when it is dense)."""
    return (t.permute(0, 2, 3, 1) if _is_cl(t) else t).reshape(t.shape[0], -1).contiguous()


def _unrows(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if _is_cl(like):
        o, i, kh, kw = like.shape
        return rows.view(o, kh, kw, i).permute(0, 3, 1, 2)
    return rows.view(like.shape)


class _Standardize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, eps, bf16):
        y, mean, rstd = _module.ws_forward(_rows(weight), eps, bf16)
        ctx.save_for_backward(weight, mean, rstd)
        return _unrows(y, weight)

    @staticmethod
    def backward(ctx, grad):
        weight, mean, rstd = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last if _is_cl(weight) else torch.contiguous_format)
        return _unrows(_module.ws_backward(_rows(grad), _rows(weight), mean, rstd), weight), None, None


def standardize(weight: torch.Tensor, eps: float, bf16: bool = False) -> torch.Tensor | None:
    """Weight standardization in one pass per filter, output in bf16 if asked; None where it does not apply."""
    if _module is None or weight.device.type != "cpu" or weight.dtype != torch.float32:
        return None
    return _Standardize.apply(weight, eps, bf16)


def fits(norm: nn.GroupNorm, x: torch.Tensor) -> bool:
    """Whether the fused kernel applies: CPU, float32/bfloat16, channels_last 4-D input, affine norm."""
    return (_module is not None and x.device.type == "cpu" and x.dim() == 4 and norm.affine
            and x.dtype in (torch.float32, torch.bfloat16) and x.is_contiguous(memory_format=torch.channels_last)
            and norm.weight.dtype == torch.float32)


def gn_relu(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``relu(norm(x))`` through the fused kernel where it applies (see :func:`fits`), else PyTorch's ops."""
    if fits(norm, x):
        return _GroupNormReLU.apply(x, norm.weight, norm.bias, norm.num_groups, norm.eps)
    return F.relu(norm(x), inplace=True)
