// The Transformer's parts on plain float buffers: tensors as the export wrote them, layer norms, linear
// layers on packed panels, the feed-forward activations (OpenNMT-py 3.5.1's pre-norm layers).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.h"
#include "threads.h"

namespace runtime {

struct Tensor {
  std::vector<float> data;
  std::vector<int64_t> shape;
  int64_t size(int d) const { return shape.at(d); }
};

using Weights = std::map<std::string, Tensor>;

inline const Tensor& get(const Weights& weights, const std::string& name) {
  auto found = weights.find(name);
  if (found == weights.end()) throw std::invalid_argument("runtime: weight " + name + " is missing");
  return found->second;
}

inline const Tensor* maybe(const Weights& weights, const std::string& name) {
  auto found = weights.find(name);
  return found == weights.end() ? nullptr : &found->second;
}

struct Norm {
  std::vector<float> weight, bias;  // bias empty: none
  float eps = 1e-6f;
  // rows of x (n, dim) into y: mean and variance in double, the rest as torch's float kernel
  void operator()(const float* x, float* y, int64_t rows, int64_t dim) const {
    for (int64_t r = 0; r < rows; ++r) {
      const float* in = x + r * dim;
      float* out = y + r * dim;
      double sum = 0, squares = 0;
      for (int64_t i = 0; i < dim; ++i) sum += in[i];
      const double mean = sum / dim;
      for (int64_t i = 0; i < dim; ++i) squares += (in[i] - mean) * (in[i] - mean);
      const float m = static_cast<float>(mean);
      const float rstd = static_cast<float>(1.0 / std::sqrt(squares / dim + eps));
      for (int64_t i = 0; i < dim; ++i) out[i] = (in[i] - m) * rstd * weight[i] + (bias.empty() ? 0.0f : bias[i]);
    }
  }
};

struct Linear {
  Panels panels;
  int64_t outputs() const { return panels.out; }
  int64_t inputs() const { return panels.in; }
  // y (rows, out) = x (rows, in) W^T + b, panels shared out among the pool's threads
  void operator()(const Kernels& k, ThreadPool& pool, const float* x, int64_t rows, float* y) const {
    const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, rows * panels.in * 16));
    pool.parallel_for(panels.count(), grain,
                      [&](int64_t first, int64_t last) { k.panel_product(panels, x, rows, first, last, y); });
  }
};

enum class Kind { ReLU, GELU, SiLU, LMA, PReLU, Swish, APLU };
const std::map<std::string, Kind> kKinds = {{"relu", Kind::ReLU}, {"gelu", Kind::GELU}, {"silu", Kind::SiLU},
                                            {"lma", Kind::LMA},   {"prelu", Kind::PReLU}, {"swish", Kind::Swish},
                                            {"aplu", Kind::APLU}};

struct Activation {
  Kind kind = Kind::ReLU;
  // LMA: slopes, intercepts (k,); PReLU: weight (units,); Swish: beta (units,); APLU: (hinges, units) x 2
  std::vector<float> a, b;
  int64_t hinges = 0;
  float mean = 0, inv = 0;

  void operator()(const Kernels& k, ThreadPool& pool, float* h, int64_t rows, int64_t units) const {
    pool.parallel_for(rows, std::max<int64_t>(1, 32768 / units), [&](int64_t begin, int64_t end) {
      float* x = h + begin * units;
      const int64_t n = (end - begin) * units;
      switch (kind) {
        case Kind::ReLU:
          for (int64_t i = 0; i < n; ++i) x[i] = std::max(x[i], 0.0f);
          break;
        case Kind::GELU:
          for (int64_t i = 0; i < n; ++i) x[i] = x[i] * 0.5f * (1.0f + std::erf(x[i] * static_cast<float>(M_SQRT1_2)));
          break;
        case Kind::SiLU:
          for (int64_t i = 0; i < n; ++i) x[i] = x[i] / (1.0f + std::exp(-x[i]));
          break;
        case Kind::Swish:
          for (int64_t i = 0; i < n; ++i) x[i] = x[i] * (1.0f / (1.0f + std::exp(-(x[i] * a[i % units]))));
          break;
        case Kind::LMA:
          k.lma(x, n, a.data(), b.data(), static_cast<int64_t>(a.size()), mean, inv);
          break;
        case Kind::PReLU:
          for (int64_t i = 0; i < n; ++i) x[i] = x[i] >= 0 ? x[i] : a[i % units] * x[i];
          break;
        case Kind::APLU:  // relu(x) + sum_s slope_s * relu(point_s - x), hinge after hinge as the module adds them
          for (int64_t i = 0; i < n; ++i) {
            const int64_t u = i % units;
            const float v = x[i];
            float out = std::max(v, 0.0f);
            for (int64_t s = 0; s < hinges; ++s) out = out + a[s * units + u] * std::max(b[s * units + u] - v, 0.0f);
            x[i] = out;
          }
          break;
      }
    });
  }
};

struct FeedForward {
  Norm norm;
  Linear w1, w2;
  Activation activation;
};

struct EncoderLayer {
  Norm norm;
  Linear qkv, out;
  FeedForward ffn;
};

struct DecoderLayer {
  Norm norm1, norm2;
  Linear qkv, out, context_query, context_keys, context_values, context_out;
  FeedForward ffn;
};

// top-k of a row by (value desc, index asc): a scan in index order keeps the first of equal values
struct TopK {
  int64_t k = 1;
  std::vector<float> values;
  std::vector<int64_t> ids;
  void reset() { values.assign(k, -INFINITY); ids.assign(k, INT64_MAX); }
  void offer(float v, int64_t id) {
    if (!(v > values[k - 1])) return;
    int64_t at = k - 1;
    while (at > 0 && v > values[at - 1]) values[at] = values[at - 1], ids[at] = ids[at - 1], --at;
    values[at] = v, ids[at] = id;
  }
  void insert(float v, int64_t id) {  // out of index order: ranked by (value desc, index asc) all the same
    const auto before = [&](int64_t at) { return v > values[at] || (v == values[at] && id < ids[at]); };
    if (!before(k - 1)) return;
    int64_t at = k - 1;
    while (at > 0 && before(at - 1)) values[at] = values[at - 1], ids[at] = ids[at - 1], --at;
    values[at] = v, ids[at] = id;
  }
};

}  // namespace runtime
