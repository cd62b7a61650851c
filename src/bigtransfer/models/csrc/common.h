// Helpers shared by the CPU kernels: bfloat16 loads and stores, and dispatch on the activation dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <cstring>

namespace bigtransfer {

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

// Calls fn(T()) with T = uint16_t for bfloat16 tensors, float otherwise.
template <typename F>
void dispatch(const at::Tensor& x, F&& fn) {
  if (x.scalar_type() == at::kBFloat16) {
    fn(uint16_t());
  } else {
    fn(float());
  }
}

template <typename T>
T* ptr(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

}  // namespace bigtransfer
