// The AVX2 + FMA path (x86-64 only; each function compiled for those instructions, chosen at run time).
#if defined(__x86_64__) && !defined(ONMT_LMA_GENERIC_ONLY)
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "kernels.h"

namespace runtime {
namespace avx2 {
namespace {

#define AVX2 __attribute__((target("avx2,fma")))

// e^x for x <= 0, 8 at a time: Cephes' expf (generic::exp_nonpositive, lane for lane)
AVX2 __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  for (float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
  y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  const __m256i power = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(power));
}

AVX2 float horizontal_sum(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_hadd_ps(x, x);
  return _mm_cvtss_f32(_mm_hadd_ps(x, x));
}

// rows x[0, MR) (row stride in) times one panel into y's `cols` (<= 16) columns (row stride ldy)
template <int MR>
AVX2 void panel_block(const float* x, const float* panel, const float* bias, int64_t in, float* y, int64_t ldy,
                      int64_t cols) {
  __m256 acc[MR][2];
  for (int i = 0; i < MR; ++i) acc[i][0] = _mm256_loadu_ps(bias), acc[i][1] = _mm256_loadu_ps(bias + 8);
  for (int64_t k = 0; k < in; ++k) {
    const __m256 w0 = _mm256_loadu_ps(panel + k * 16), w1 = _mm256_loadu_ps(panel + k * 16 + 8);
    for (int i = 0; i < MR; ++i) {
      const __m256 xv = _mm256_broadcast_ss(x + i * in + k);
      acc[i][0] = _mm256_fmadd_ps(xv, w0, acc[i][0]), acc[i][1] = _mm256_fmadd_ps(xv, w1, acc[i][1]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    alignas(32) float row[16];
    _mm256_store_ps(row, acc[i][0]), _mm256_store_ps(row + 8, acc[i][1]);
    std::copy(row, row + cols, y + i * ldy);
  }
}

AVX2 void panel_product(const Panels& w, const float* x, int64_t rows, int64_t first, int64_t last, float* y) {
  for (int64_t p = first; p < last; ++p) {
    const float* panel = w.data.data() + p * w.in * 16;
    const float* bias = w.bias.data() + p * 16;
    const int64_t cols = std::min<int64_t>(16, w.out - p * 16);
    int64_t r = 0;  // 6 rows x 16 outputs: 12 accumulators, 2 weight registers, 1 broadcast of the 16
    for (; r + 6 <= rows; r += 6) panel_block<6>(x + r * w.in, panel, bias, w.in, y + r * w.out + p * 16, w.out, cols);
    const float* xr = x + r * w.in;
    float* yr = y + r * w.out + p * 16;
    switch (rows - r) {
      case 5: panel_block<5>(xr, panel, bias, w.in, yr, w.out, cols); break;
      case 4: panel_block<4>(xr, panel, bias, w.in, yr, w.out, cols); break;
      case 3: panel_block<3>(xr, panel, bias, w.in, yr, w.out, cols); break;
      case 2: panel_block<2>(xr, panel, bias, w.in, yr, w.out, cols); break;
      case 1: panel_block<1>(xr, panel, bias, w.in, yr, w.out, cols); break;
      default: break;
    }
  }
}

AVX2 void attend(const float* q, const float* keys, const float* values, int64_t length, int64_t stride, float* out,
                 float* scores, int64_t heads, int64_t head_dim) {
  if (head_dim % 8 != 0) return generic::table.attend(q, keys, values, length, stride, out, scores, heads, head_dim);
  const __m256 scale = _mm256_set1_ps(std::sqrt(static_cast<float>(head_dim)));
  const int64_t chunks = head_dim / 8;
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t o = h * head_dim;
    __m256 qh[8], acc[8];
    for (int64_t c = 0; c < chunks; ++c) qh[c] = _mm256_div_ps(_mm256_loadu_ps(q + o + 8 * c), scale);
    float top = -INFINITY;
    for (int64_t j = 0; j < length; ++j) {
      const float* key = keys + j * stride + o;
      __m256 dot = _mm256_mul_ps(qh[0], _mm256_loadu_ps(key));
      for (int64_t c = 1; c < chunks; ++c) dot = _mm256_fmadd_ps(qh[c], _mm256_loadu_ps(key + 8 * c), dot);
      scores[j] = horizontal_sum(dot);
      top = std::max(top, scores[j]);
    }
    const __m256 vtop = _mm256_set1_ps(top);
    __m256 total = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= length; j += 8) {
      const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(scores + j), vtop));
      _mm256_storeu_ps(scores + j, e);
      total = _mm256_add_ps(total, e);
    }
    float sum = horizontal_sum(total);
    for (; j < length; ++j) sum += (scores[j] = std::exp(scores[j] - top));
    for (int64_t c = 0; c < chunks; ++c) acc[c] = _mm256_setzero_ps();
    for (j = 0; j < length; ++j) {
      const __m256 weight = _mm256_set1_ps(scores[j] / sum);
      const float* value = values + j * stride + o;
      for (int64_t c = 0; c < chunks; ++c) acc[c] = _mm256_fmadd_ps(weight, _mm256_loadu_ps(value + 8 * c), acc[c]);
    }
    for (int64_t c = 0; c < chunks; ++c) _mm256_storeu_ps(out + o + 8 * c, acc[c]);
  }
}

AVX2 float sum_exp(const float* row, int64_t n, float max) {
  const __m256 shift = _mm256_set1_ps(max);
  __m256 totals[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    totals[(i / 8) & 1] = _mm256_add_ps(totals[(i / 8) & 1], exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(row + i), shift)));
  float tail = 0;
  for (; i < n; ++i) tail += std::exp(row[i] - max);
  return horizontal_sum(_mm256_add_ps(totals[0], totals[1])) + tail;
}

// LMA-k with k <= 8 reads its slopes and intercepts from one register
AVX2 void lma(float* x, int64_t n, const float* slopes, const float* intercepts, int64_t k, float mean, float inv) {
  if (k > 8) return generic::table.lma(x, n, slopes, intercepts, k, mean, inv);
  float s[8] = {0}, c[8] = {0};
  for (int64_t j = 0; j < k; ++j) s[j] = slopes[j], c[j] = intercepts[j];
  const __m256 vs = _mm256_loadu_ps(s), vc = _mm256_loadu_ps(c), vmean = _mm256_set1_ps(mean),
               vinv = _mm256_set1_ps(inv), vhalf = _mm256_set1_ps(static_cast<float>(k) / 2.0f),
               vzero = _mm256_setzero_ps(), vtop = _mm256_set1_ps(static_cast<float>(k - 1));
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    __m256 position = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v, vmean), vinv), vhalf);
    position = _mm256_min_ps(_mm256_max_ps(position, vzero), vtop);
    const __m256i j = _mm256_cvttps_epi32(position);
    _mm256_storeu_ps(x + i, _mm256_add_ps(_mm256_mul_ps(_mm256_permutevar8x32_ps(vs, j), v),
                                          _mm256_permutevar8x32_ps(vc, j)));
  }
  generic::table.lma(x + i, n - i, slopes, intercepts, k, mean, inv);
}

}  // namespace

const Kernels table = {panel_product, attend, sum_exp, lma};

}  // namespace avx2
}  // namespace runtime
#endif
