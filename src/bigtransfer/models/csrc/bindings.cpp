// Python bindings of the CPU kernels.
#include <torch/extension.h>

#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gn_relu_forward", &bigtransfer::gn_relu_forward, "relu(group_norm(x)) on channels_last x, with its stats");
  m.def("gn_relu_backward", &bigtransfer::gn_relu_backward, "gradients of gn_relu_forward");
  m.def("ws_forward", &bigtransfer::ws_forward, "weight standardization of (O, K) rows");
  m.def("ws_backward", &bigtransfer::ws_backward, "gradient of ws_forward");
}
