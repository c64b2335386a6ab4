// The runtime's kernels, one table per instruction set (isa.h).  Every path computes the same floats: the
// generic one does, in plain C++ with std::fma, the operations the AVX2 one does in registers (8 lanes,
// the same additions in the same order), so that a translation is the same on every CPU.
#pragma once

#include <cstdint>
#include <vector>

#include "isa.h"

namespace runtime {

// A linear layer's weight (out, in) packed once, at load, in panels of 16 outputs (input-major), zero-padded;
// y = x W^T + b sums each output from its bias in input order, one fused multiply-add an input.
struct Panels {
  std::vector<float> data, bias;
  int64_t in = 0, out = 0;
  void pack(const float* weight, const float* b, int64_t outputs, int64_t inputs);
  int64_t count() const { return (out + 15) / 16; }
};

struct Kernels {
  // y (rows, out) = x (rows, in) W^T + b over panels [first, last)
  void (*panel_product)(const Panels& w, const float* x, int64_t rows, int64_t first, int64_t last, float* y);
  // for each of `heads` heads: softmax(q . keys / sqrt(head_dim)) values, key/value rows `stride` apart;
  // `scores` holds `length` floats
  void (*attend)(const float* q, const float* keys, const float* values, int64_t length, int64_t stride,
                 float* out, float* scores, int64_t heads, int64_t head_dim);
  // sum of exp(row[i] - max) over the row (a log-softmax's denominator)
  float (*sum_exp)(const float* row, int64_t n, float max);
  // LMA-k in place (Xu et al. 2020, Eq. 2-3): segment clamp((x - mean) * inv + k / 2, 0, k - 1), truncated
  void (*lma)(float* x, int64_t n, const float* slopes, const float* intercepts, int64_t k, float mean, float inv);
};

const Kernels& kernels(Isa isa);

namespace generic {
extern const Kernels table;
float exp_nonpositive(float x);  // e^x for x <= 0: Cephes' expf, the AVX2 path's polynomial
}  // namespace generic

#if defined(__x86_64__) && !defined(ONMT_LMA_GENERIC_ONLY)
namespace avx2 {
extern const Kernels table;
}  // namespace avx2
#endif

}  // namespace runtime
