// Entry points of the CPU kernels, bound to Python in bindings.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace bigtransfer {

// x: (N, C, H, W) channels_last, float32 or bfloat16; returns relu(group_norm(x)) and the group stats.
std::vector<at::Tensor> gn_relu_forward(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
                                        int64_t groups, double eps);

// dy: gradient of the output y; all of dy, y, x channels_last. Returns dx, dgamma, dbeta.
std::vector<at::Tensor> gn_relu_backward(const at::Tensor& dy, const at::Tensor& y, const at::Tensor& x,
                                         const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& gamma,
                                         int64_t groups);

// w: (O, K) float rows; returns the standardized rows in float or bfloat16 (bf16), their mean and rstd.
std::vector<at::Tensor> ws_forward(const at::Tensor& w, double eps, bool bf16);

// g: (O, K) gradient of the standardized rows (float or bfloat16); returns the float gradient of w.
at::Tensor ws_backward(const at::Tensor& g, const at::Tensor& w, const at::Tensor& mean, const at::Tensor& rstd);

}  // namespace bigtransfer
