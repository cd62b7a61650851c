// GroupNorm + ReLU for channels_last activations, vectorized over channels at every map size.
//
// Activations are (N, HW, C) rows. Per-channel sums are taken in float over blocks of rows and joined
// in double; the group statistics and the backward's coefficients are then applied in one pass.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"
#include "kernels.h"

namespace bigtransfer {
namespace {

constexpr int64_t kBlock = 32;  // rows summed in float before joining the double total

// The rows of each sample are split into P tasks of `rows` rows, enough tasks to keep every thread busy.
struct Split {
  int64_t P, rows;
  Split(int64_t N, int64_t HW) {
    const int64_t want = (2 * at::get_num_threads() + N - 1) / N;
    P = std::max<int64_t>(1, std::min<int64_t>((HW + kBlock - 1) / kBlock, want));
    rows = (HW + P - 1) / P;
  }
};

// Two per-channel sums over each task's rows: task t (sample t / P) holds them at acc[t * 2C + c] and
// acc[t * 2C + C + c]. add_row(n, r, s1, s2) adds row r of sample n into the block sums s1 and s2.
template <typename F>
std::vector<double> channel_sums(int64_t N, int64_t HW, int64_t C, const Split& sp, F&& add_row) {
  std::vector<double> acc(N * sp.P * 2 * C, 0.0);
  at::parallel_for(0, N * sp.P, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> blk(2 * C);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / sp.P, r0 = (t % sp.P) * sp.rows, r1 = std::min(HW, r0 + sp.rows);
      double* __restrict__ s = acc.data() + t * 2 * C;
      for (int64_t rb = r0; rb < r1; rb += kBlock) {
        std::fill(blk.begin(), blk.end(), 0.f);
        for (int64_t r = rb; r < std::min(r1, rb + kBlock); ++r) add_row(n, r, blk.data(), blk.data() + C);
        for (int64_t c = 0; c < 2 * C; ++c) s[c] += blk[c];
      }
    }
  });
  return acc;
}

template <typename T>
void forward(const T* x, const float* gamma, const float* beta, T* y, float* mean, float* rstd,
             int64_t N, int64_t HW, int64_t C, int64_t G, double eps) {
  const int64_t D = C / G;
  const Split sp(N, HW);
  // Sums are taken around a per-group shift (the group's first value) against cancellation.
  std::vector<float> shift(N * C), a(N * C), b(N * C);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) shift[n * C + c] = ld(x, n * HW * C + (c / D) * D);
  const auto acc = channel_sums(N, HW, C, sp, [&](int64_t n, int64_t r, float* __restrict__ s1,
                                                  float* __restrict__ s2) {
    const float* __restrict__ k = shift.data() + n * C;
    const T* __restrict__ xr = x + (n * HW + r) * C;
    for (int64_t c = 0; c < C; ++c) {
      const float v = ld(xr, c) - k[c];
      s1[c] += v;
      s2[c] += v * v;
    }
  });
  const double M = double(D * HW);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < G; ++g) {
      double s1 = 0, s2 = 0;
      for (int64_t p = 0; p < sp.P; ++p) {
        const double* q = acc.data() + (n * sp.P + p) * 2 * C + g * D;
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

// dgamma and dbeta from the per-channel sums of g and g * x (g: the gradient through the ReLU).
void affine_grads(const std::vector<double>& db, const std::vector<double>& ds, const float* mean, const float* rstd,
                  float* dgamma, float* dbeta, int64_t N, int64_t C, int64_t G) {
  const int64_t D = C / G;
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
}

template <typename T>
void backward(const T* dy, const T* y, const T* x, const float* mean, const float* rstd, const float* gamma,
              T* dx, float* dgamma, float* dbeta, int64_t N, int64_t HW, int64_t C, int64_t G) {
  const int64_t D = C / G;
  const Split sp(N, HW);
  const auto acc = channel_sums(N, HW, C, sp, [&](int64_t n, int64_t r, float* __restrict__ sg,
                                                  float* __restrict__ sgx) {
    const int64_t o = (n * HW + r) * C;
    for (int64_t c = 0; c < C; ++c) {
      const float g = ld(y, o + c) > 0.f ? ld(dy, o + c) : 0.f;  // through the ReLU
      sg[c] += g;
      sgx[c] += g * ld(x, o + c);
    }
  });
  std::vector<double> db(N * C, 0.0), ds(N * C, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t p = 0; p < sp.P; ++p) {
      const double* q = acc.data() + (n * sp.P + p) * 2 * C;
      for (int64_t c = 0; c < C; ++c) {
        db[n * C + c] += q[c];
        ds[n * C + c] += q[C + c];
      }
    }
  affine_grads(db, ds, mean, rstd, dgamma, dbeta, N, C, G);
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

}  // namespace

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

}  // namespace bigtransfer
