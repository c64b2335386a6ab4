// The generic path: plain C++ for any CPU, lane for lane the AVX2 path's arithmetic (kernels_avx2.cpp).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "kernels.h"

namespace runtime {

void Panels::pack(const float* weight, const float* b, int64_t outputs, int64_t inputs) {
  out = outputs, in = inputs;
  data.assign(count() * in * 16, 0.0f), bias.assign(count() * 16, 0.0f);
  for (int64_t o = 0; o < out; ++o) {
    float* column = data.data() + (o / 16) * in * 16 + o % 16;
    for (int64_t k = 0; k < in; ++k) column[k * 16] = weight[o * in + k];
    if (b != nullptr) bias[o] = b[o];
  }
}

const Kernels& kernels(Isa isa) {
#if defined(__x86_64__) && !defined(ONMT_LMA_GENERIC_ONLY)
  if (isa == Isa::Avx2) return avx2::table;
#endif
  if (isa != Isa::Generic) throw std::invalid_argument("no kernels for this instruction set in this build");
  return generic::table;
}

namespace generic {
namespace {

// _mm256's horizontal sum of 8 lanes: (v0 + v4) + (v1 + v5), then (v2 + v6) + (v3 + v7), then both
float horizontal_sum(const float* v) {
  const float x0 = v[0] + v[4], x1 = v[1] + v[5], x2 = v[2] + v[6], x3 = v[3] + v[7];
  return (x0 + x1) + (x2 + x3);
}

void panel_product(const Panels& w, const float* x, int64_t rows, int64_t first, int64_t last, float* y) {
  for (int64_t p = first; p < last; ++p) {
    const float* panel = w.data.data() + p * w.in * 16;
    const int64_t cols = std::min<int64_t>(16, w.out - p * 16);
    for (int64_t r = 0; r < rows; ++r) {
      float acc[16];
      std::copy(w.bias.data() + p * 16, w.bias.data() + p * 16 + 16, acc);
      const float* xr = x + r * w.in;
      for (int64_t k = 0; k < w.in; ++k)
        for (int c = 0; c < 16; ++c) acc[c] = std::fma(xr[k], panel[k * 16 + c], acc[c]);
      std::copy(acc, acc + cols, y + r * w.out + p * 16);
    }
  }
}

void attend(const float* q, const float* keys, const float* values, int64_t length, int64_t stride, float* out,
            float* scores, int64_t heads, int64_t head_dim) {
  const float scale = std::sqrt(static_cast<float>(head_dim));
  const bool lanes = head_dim % 8 == 0;  // the AVX2 path's shape; otherwise both run the loop below
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t o = h * head_dim;
    float qh[64];
    for (int64_t e = 0; e < head_dim; ++e) qh[e] = q[o + e] / scale;
    float top = -INFINITY;
    for (int64_t j = 0; j < length; ++j) {
      const float* key = keys + j * stride + o;
      float s;
      if (lanes) {
        float dot[8];
        for (int l = 0; l < 8; ++l) dot[l] = qh[l] * key[l];
        for (int64_t c = 1; c < head_dim / 8; ++c)
          for (int l = 0; l < 8; ++l) dot[l] = std::fma(qh[8 * c + l], key[8 * c + l], dot[l]);
        s = horizontal_sum(dot);
      } else {
        s = 0;
        for (int64_t e = 0; e < head_dim; ++e) s += qh[e] * key[e];
      }
      scores[j] = s;
      top = std::max(top, s);
    }
    float sum = 0;
    int64_t j = 0;
    if (lanes) {
      float total[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (; j + 8 <= length; j += 8)
        for (int l = 0; l < 8; ++l) total[l] += (scores[j + l] = exp_nonpositive(scores[j + l] - top));
      sum = horizontal_sum(total);
    }
    for (; j < length; ++j) sum += (scores[j] = std::exp(scores[j] - top));
    for (int64_t e = 0; e < head_dim; ++e) out[o + e] = 0;
    for (j = 0; j < length; ++j) {
      const float p = scores[j] / sum;
      const float* value = values + j * stride + o;
      if (lanes) {
        for (int64_t e = 0; e < head_dim; ++e) out[o + e] = std::fma(p, value[e], out[o + e]);
      } else {
        for (int64_t e = 0; e < head_dim; ++e) out[o + e] += p * value[e];
      }
    }
  }
}

float sum_exp(const float* row, int64_t n, float max) {
  float totals[2][8] = {{0, 0, 0, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 0, 0, 0}};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) totals[(i / 8) & 1][l] += exp_nonpositive(row[i + l] - max);
  float both[8];
  for (int l = 0; l < 8; ++l) both[l] = totals[0][l] + totals[1][l];
  float tail = 0;
  for (; i < n; ++i) tail += std::exp(row[i] - max);
  return horizontal_sum(both) + tail;
}

void lma(float* x, int64_t n, const float* slopes, const float* intercepts, int64_t k, float mean, float inv) {
  const float half = static_cast<float>(k) / 2.0f, last = static_cast<float>(k - 1);
  for (int64_t i = 0; i < n; ++i) {
    const float position = std::min(std::max((x[i] - mean) * inv + half, 0.0f), last);
    const int64_t j = static_cast<int64_t>(position);
    x[i] = slopes[j] * x[i] + intercepts[j];
  }
}

}  // namespace

float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);  // 2^-126 and above: normal floats
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = std::fma(-n, 0.693359375f, x);
  r = std::fma(-n, -2.12194440e-4f, r);
  float y = 1.9875691500e-4f;
  for (float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    y = std::fma(y, r, c);
  y = std::fma(y, r * r, r) + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float power;
  std::memcpy(&power, &bits, sizeof power);
  return y * power;
}

const Kernels table = {panel_product, attend, sum_exp, lma};

}  // namespace generic
}  // namespace runtime
