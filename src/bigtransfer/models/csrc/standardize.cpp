// Weight standardization of (O, K) filter rows in one pass per filter (the filter stays in cache), written
// straight into the convolution's dtype.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <cmath>

#include "common.h"
#include "kernels.h"

namespace bigtransfer {
namespace {

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

}  // namespace

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

at::Tensor ws_backward(const at::Tensor& g, const at::Tensor& w, const at::Tensor& mean, const at::Tensor& rstd) {
  auto dw = at::empty_like(w);
  dispatch(g, [&](auto t) {
    using T = decltype(t);
    ws_bwd<T>(ptr<const T>(g), w.data_ptr<float>(), mean.data_ptr<float>(), rstd.data_ptr<float>(),
              dw.data_ptr<float>(), w.size(0), w.size(1));
  });
  return dw;
}

}  // namespace bigtransfer
