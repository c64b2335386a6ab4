// onmt-lma's native CPU engine: OpenNMT-py 3.5.1's pre-norm Transformer and its beam search in one
// compiled loop (onmt_lma/deploy/native.py loads it and documents the weights it takes).
//
// A small student spends a decoding step in per-operation costs, not arithmetic: the engine keeps the
// matrix products on ATen (MKL, as PyTorch) and writes everything between them (layer norms, attention
// over the key/value caches, activations, top-k, the search's bookkeeping) as plain loops over
// preallocated buffers.  The arithmetic follows deploy/graphs.py's graphs, operation for operation:
// embeddings x sqrt(dim) + the sinusoid, queries divided by sqrt(head_dim), softmax in float32,
// log-probabilities by at::log_softmax's formula, (x - max) - log(sum exp(x - max)), LMA's segment from
// (x - mean) * inv + k / 2 (Xu et al. 2020).  The log-probabilities are never written out: a row's maximum,
// log-sum and top k come from two reads of its logits (the search needs no more).
#include <torch/extension.h>
#include <pybind11/stl.h>

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/native/quantized/PackedParams.h>
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "search.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

double seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

// Small float32 products without per-call dispatch: the weight is packed once, at load, in panels of 16
// outputs (input-major), and up to kPanelRows rows are multiplied by it with AVX2 FMA, each output
// summed from its bias in input order: a small student's step pays ATen's per-call cost on products of a
// few rows, where the arithmetic is far cheaper; past kPanelRows rows MKL's blocking wins (the engine's
// config "panel_rows" overrides it; 0: ATen always).
constexpr int64_t kPanelRows = 24;
constexpr int64_t kPanelTaskMacs = 65536;  // multiply-adds per parallel task (a region costs a few us)

struct Panels {
  std::vector<float> data, bias;  // ceil(out / 16) panels of (in, 16), zero-padded; bias padded likewise
  int64_t in = 0, out = 0;
  bool ready() const { return out > 0; }
  void pack(const at::Tensor& weight, const at::Tensor& b) {  // weight (out, in), contiguous float32
    out = weight.size(0), in = weight.size(1);
    const int64_t panels = (out + 15) / 16;
    const float* w = weight.data_ptr<float>();
    data.assign(panels * in * 16, 0.0f), bias.assign(panels * 16, 0.0f);
    for (int64_t o = 0; o < out; ++o) {
      float* column = data.data() + (o / 16) * in * 16 + o % 16;
      for (int64_t k = 0; k < in; ++k) column[k * 16] = w[o * in + k];
      if (b.defined()) bias[o] = b.data_ptr<float>()[o];
    }
  }
};

// rows x[0, MR) (row stride in) times one panel into y's `cols` (<= 16) columns (row stride ldy)
template <int MR>
__attribute__((target("avx2,fma"))) void panel_block(const float* x, const float* panel, const float* bias, int64_t in,
                                                     float* y, int64_t ldy, int64_t cols) {
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

// y (rows, out) = x (rows, in) W^T + b over panels [first, last)
void panel_product(const Panels& w, const float* x, int64_t rows, int64_t first, int64_t last, float* y) {
  for (int64_t p = first; p < last; ++p) {
    const float* panel = w.data.data() + p * w.in * 16;
    const float* bias = w.bias.data() + p * 16;
    const int64_t cols = std::min<int64_t>(16, w.out - p * 16);
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) panel_block<4>(x + r * w.in, panel, bias, w.in, y + r * w.out + p * 16, w.out, cols);
    const float* xr = x + r * w.in;
    float* yr = y + r * w.out + p * 16;
    switch (rows - r) {
      case 3: panel_block<3>(xr, panel, bias, w.in, yr, w.out, cols); break;
      case 2: panel_block<2>(xr, panel, bias, w.in, yr, w.out, cols); break;
      case 1: panel_block<1>(xr, panel, bias, w.in, yr, w.out, cols); break;
      default: break;
    }
  }
}

struct Linear {
  at::Tensor weight_t, bias;  // weight_t: (in, out), a view of the (out, in) weight; bias may be undefined
  // int8: PyTorch's dynamically quantized Linear (fbgemm; int8 weight rows, each batch's activations
  // quantized on the fly, reduce_range as torch.ao.nn.quantized.dynamic.Linear)
  c10::intrusive_ptr<LinearPackedParamsBase> packed;
  // large float32 weights: oneDNN's linear on a weight reordered once at load (mkldnn::_linear_pointwise);
  // MKL's sgemm repacks the weight at every call, which a small batch pays in full
  at::Tensor reordered;
  Panels panels;  // float32 on an AVX2/FMA CPU: up to panel_rows rows without ATen
  int64_t outputs = 0, panel_rows = 0;
  mutable int64_t panel_calls = 0;  // products that ran on the panels (the engine's profile counts them)
  // x W^T + b: in `out`, or in the tensor fbgemm or oneDNN returned (no copy of it); returns where it is
  at::Tensor operator()(const at::Tensor& x, at::Tensor out) const {
    const int64_t rows = x.size(0);
    if (panels.ready() && rows <= panel_rows && x.is_contiguous() && out.is_contiguous()) {
      const float* in = x.data_ptr<float>();
      float* y = out.data_ptr<float>();
      const int64_t panel_count = (panels.out + 15) / 16;
      ++panel_calls;
      at::parallel_for(0, panel_count, std::max<int64_t>(1, kPanelTaskMacs / (rows * panels.in * 16)),
                       [&](int64_t first, int64_t last) { panel_product(panels, in, rows, first, last, y); });
      return out;
    }
    if (packed) return packed->apply_dynamic(x, /*reduce_range=*/true);
    if (reordered.defined()) {
      static const c10::OperatorHandle op =
          c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
      torch::jit::Stack stack{x, reordered, bias.defined() ? c10::IValue(bias) : c10::IValue(), std::string("none"),
                              c10::List<std::optional<at::Scalar>>(), c10::IValue()};
      op.callBoxed(&stack);
      return stack[0].toTensor();
    }
    return bias.defined() ? at::addmm_out(out, bias, x, weight_t) : at::mm_out(out, x, weight_t);
  }
};

struct Norm {
  at::Tensor weight, bias;
  float eps = 1e-6f;
  // rows of x (n, dim) into y, mean and variance in double, the rest as torch's float kernel
  void operator()(const float* x, float* y, int64_t rows, int64_t dim) const {
    const float* w = weight.data_ptr<float>();
    const float* b = bias.defined() ? bias.data_ptr<float>() : nullptr;
    for (int64_t r = 0; r < rows; ++r) {
      const float* in = x + r * dim;
      float* out = y + r * dim;
      double sum = 0, squares = 0;
      for (int64_t i = 0; i < dim; ++i) sum += in[i];
      const double mean = sum / dim;
      for (int64_t i = 0; i < dim; ++i) squares += (in[i] - mean) * (in[i] - mean);
      const float m = static_cast<float>(mean);
      const float rstd = static_cast<float>(1.0 / std::sqrt(squares / dim + eps));
      for (int64_t i = 0; i < dim; ++i) out[i] = (in[i] - m) * rstd * w[i] + (b ? b[i] : 0.0f);
    }
  }
};

enum class Kind { ReLU, GELU, SiLU, LMA, PReLU, Swish, APLU };
const std::map<std::string, Kind> kKinds = {{"relu", Kind::ReLU}, {"gelu", Kind::GELU}, {"silu", Kind::SiLU},
                                            {"lma", Kind::LMA},   {"prelu", Kind::PReLU}, {"swish", Kind::Swish},
                                            {"aplu", Kind::APLU}};

// LMA-k with k <= 8 reads its slopes and intercepts from one AVX2 register
__attribute__((target("avx2"))) void lma_avx2(float* x, int64_t n, const float* slopes, const float* intercepts,
                                              int64_t k, float mean, float inv) {
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
    const __m256 y = _mm256_add_ps(_mm256_mul_ps(_mm256_permutevar8x32_ps(vs, j), v), _mm256_permutevar8x32_ps(vc, j));
    _mm256_storeu_ps(x + i, y);
  }
  for (; i < n; ++i) {
    const float position = std::min(std::max((x[i] - mean) * inv + static_cast<float>(k) / 2.0f, 0.0f),
                                    static_cast<float>(k - 1));
    const int64_t j = static_cast<int64_t>(position);
    x[i] = slopes[j] * x[i] + intercepts[j];
  }
}

struct Activation {
  Kind kind = Kind::ReLU;
  at::Tensor a, b;  // LMA: slopes, intercepts (k,); PReLU: weight (units,); Swish: beta (units,); APLU: (hinges, units) x 2
  float mean = 0, inv = 0;

  void operator()(at::Tensor h) const {  // (rows, units), in place
    const int64_t rows = h.size(0), units = h.size(1);
    float* x = h.data_ptr<float>();
    switch (kind) {
      case Kind::ReLU: at::relu_(h); return;
      case Kind::GELU: h.copy_(at::gelu(h)); return;
      case Kind::SiLU: at::silu_(h); return;
      case Kind::Swish: { at::Tensor gate = at::sigmoid(h * a); h.mul_(gate); return; }
      default: break;
    }
    const int64_t grain = std::max<int64_t>(1, 32768 / units);
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      float* chunk = x + begin * units;
      const int64_t n = (end - begin) * units;
      if (kind == Kind::LMA) {
        const float* s = a.data_ptr<float>();
        const float* c = b.data_ptr<float>();
        const int64_t k = a.numel();
        if (k <= 8 && __builtin_cpu_supports("avx2")) {
          lma_avx2(chunk, n, s, c, k, mean, inv);
          return;
        }
        for (int64_t i = 0; i < n; ++i) {
          const float position = std::min(std::max((chunk[i] - mean) * inv + static_cast<float>(k) / 2.0f, 0.0f),
                                          static_cast<float>(k - 1));
          const int64_t j = static_cast<int64_t>(position);
          chunk[i] = s[j] * chunk[i] + c[j];
        }
      } else if (kind == Kind::PReLU) {
        const float* w = a.data_ptr<float>();
        for (int64_t i = 0; i < n; ++i) chunk[i] = chunk[i] >= 0 ? chunk[i] : w[i % units] * chunk[i];
      } else {  // APLU: relu(x) + sum_s slope_s * relu(point_s - x), hinge after hinge as the module adds them
        const int64_t hinges = a.size(0);
        const float* slope = a.data_ptr<float>();
        const float* point = b.data_ptr<float>();
        for (int64_t i = 0; i < n; ++i) {
          const int64_t u = i % units;
          const float v = chunk[i];
          float out = std::max(v, 0.0f);
          for (int64_t s = 0; s < hinges; ++s) out = out + slope[s * units + u] * std::max(point[s * units + u] - v, 0.0f);
          chunk[i] = out;
        }
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
  int64_t k;
  std::vector<float> values;
  std::vector<int64_t> ids;
  void reset() { values.assign(k, kMinusInf); ids.assign(k, std::numeric_limits<int64_t>::max()); }
  void offer(float v, int64_t id) {
    if (!(v > values[k - 1])) return;
    int64_t at = k - 1;
    while (at > 0 && v > values[at - 1]) { values[at] = values[at - 1]; ids[at] = ids[at - 1]; --at; }
    values[at] = v, ids[at] = id;
  }
  void insert(float v, int64_t id) {  // out of index order: ranked by (value desc, index asc) all the same
    const auto before = [&](int64_t at) { return v > values[at] || (v == values[at] && id < ids[at]); };
    if (!before(k - 1)) return;
    int64_t at = k - 1;
    while (at > 0 && before(at - 1)) { values[at] = values[at - 1]; ids[at] = ids[at - 1]; --at; }
    values[at] = v, ids[at] = id;
  }
};

// e^x for x <= 0 (softmax's shifted scores), 8 at a time: Cephes' expf (within about 1 ulp of std::exp)
__attribute__((target("avx2,fma"))) __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));  // 2^-126 and above: normal floats
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

__attribute__((target("avx2,fma"))) float horizontal_sum(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_hadd_ps(x, x);
  return _mm_cvtss_f32(_mm_hadd_ps(x, x));
}

// A row of logits' log-softmax, log p = (x - max) - log_sum, as at::log_softmax computes it (the sum of
// exponentials in another order: the same to a few ulps); `banned`: ids the step forbids
struct LogSoftmax {
  float max = 0, log_sum = 0;
  float at(float logit) const { return (logit - max) - log_sum; }
};

bool is_banned(int64_t id, const std::vector<int64_t>& banned) {
  return std::find(banned.begin(), banned.end(), id) != banned.end();
}

// the sum of exp(x - max) over row[first, n) and those ids offered to `top`: the scalar path, and the
// vector path's last few values
float sum_exp_offer(const float* row, int64_t first, int64_t n, float max, TopK* top, const std::vector<int64_t>& banned) {
  float total = 0;
  for (int64_t i = first; i < n; ++i) {
    total += std::exp(row[i] - max);
    if (top && !is_banned(i, banned)) top->offer(row[i], i);
  }
  return total;
}

LogSoftmax log_softmax_scalar(const float* row, int64_t n, TopK* top, const std::vector<int64_t>& banned) {
  LogSoftmax found{*std::max_element(row, row + n), 0};
  found.log_sum = std::log(sum_exp_offer(row, 0, n, found.max, top, banned));
  return found;
}

__attribute__((target("avx2,fma"))) LogSoftmax log_softmax_avx2(const float* row, int64_t n, TopK* top,
                                                                const std::vector<int64_t>& banned) {
  __m256 most = _mm256_set1_ps(kMinusInf);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) most = _mm256_max_ps(most, _mm256_loadu_ps(row + i));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, most);
  LogSoftmax found{*std::max_element(lanes, lanes + 8), 0};
  for (; i < n; ++i) found.max = std::max(found.max, row[i]);
  const __m256 shift = _mm256_set1_ps(found.max);
  __m256 totals[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(row + i);
    totals[(i / 8) & 1] = _mm256_add_ps(totals[(i / 8) & 1], exp_nonpositive(_mm256_sub_ps(v, shift)));
    if (!top) continue;
    int mask = _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(top->values[top->k - 1]), _CMP_GT_OQ));
    while (mask) {
      const int64_t id = i + __builtin_ctz(mask);
      if (!is_banned(id, banned)) top->offer(row[id], id);
      mask &= mask - 1;
    }
  }
  const float total = horizontal_sum(_mm256_add_ps(totals[0], totals[1]));
  found.log_sum = std::log(total + sum_exp_offer(row, i, n, found.max, top, banned));
  return found;
}

// the row's log-softmax and, with `top`, its top k log-probabilities among the ids not banned, each banned
// id scored `banned_score` as OpenNMT-py scores it after its log_softmax; the logits are read twice, nothing written
LogSoftmax log_softmax_top_k(const float* row, int64_t n, TopK* top, const std::vector<int64_t>& banned,
                             float banned_score) {
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (top) top->reset();
  const LogSoftmax found = avx2 ? log_softmax_avx2(row, n, top, banned) : log_softmax_scalar(row, n, top, banned);
  if (top) {
    for (int64_t j = 0; j < top->k; ++j)
      if (top->ids[j] < n) top->values[j] = found.at(top->values[j]);
    for (int64_t id : banned) top->insert(banned_score, id);
  }
  return found;
}

// Engine::attend for heads of 8, 16, ..., 64 values: a head's dot products, exponentials and weighted sum
// in AVX2 registers
__attribute__((target("avx2,fma"))) void attend_avx2(const float* q, const float* keys, const float* values,
                                                     int64_t length, int64_t stride, float* out, float* scores,
                                                     int64_t heads, int64_t head_dim) {
  const __m256 scale = _mm256_set1_ps(std::sqrt(static_cast<float>(head_dim)));
  const int64_t chunks = head_dim / 8;
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t o = h * head_dim;
    __m256 qh[8], acc[8];
    for (int64_t c = 0; c < chunks; ++c) qh[c] = _mm256_div_ps(_mm256_loadu_ps(q + o + 8 * c), scale);
    float top = kMinusInf;
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

class Engine {
 public:
  Engine(const std::map<std::string, at::Tensor>& weights, const std::map<std::string, double>& config,
         const std::string& activation)
      : weights_(weights) {
    dim_ = static_cast<int64_t>(config.at("dim"));
    heads_ = static_cast<int64_t>(config.at("heads"));
    head_dim_ = dim_ / heads_;
    TORCH_CHECK(head_dim_ <= 64, "native engine: heads of ", head_dim_, " values; it takes up to 64");
    vector_attention_ = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && head_dim_ % 8 == 0;
    vocab_ = static_cast<int64_t>(config.at("vocab"));
    bos_ = static_cast<int64_t>(config.at("bos"));
    eos_ = static_cast<int64_t>(config.at("eos"));
    unk_ = static_cast<int64_t>(config.at("unk"));
    source_pad_ = static_cast<int64_t>(config.at("src_pad"));
    special_ = {bos_, eos_, unk_, static_cast<float>(config.at("banned_score"))};
    eps_ = static_cast<float>(config.at("eps"));
    panel_rows_ = config.count("panel_rows") ? static_cast<int64_t>(config.at("panel_rows")) : kPanelRows;
    TORCH_CHECK(kKinds.count(activation), "native engine: no kernel for activation ", activation);
    kind_ = kKinds.at(activation);
    src_embeddings_ = get("src_embeddings");
    tgt_embeddings_ = get("tgt_embeddings");
    positions_ = get("positions");
    for (int64_t i = 0; has("encoder." + std::to_string(i) + ".norm.weight"); ++i) {
      const std::string p = "encoder." + std::to_string(i) + ".";
      encoder_.push_back({norm(p + "norm"), linear(p + "qkv"), linear(p + "out"), feed_forward(p + "ffn")});
    }
    encoder_norm_ = norm("encoder.norm");
    for (int64_t i = 0; has("decoder." + std::to_string(i) + ".norm1.weight"); ++i) {
      const std::string p = "decoder." + std::to_string(i) + ".";
      decoder_.push_back({norm(p + "norm1"), norm(p + "norm2"), linear(p + "qkv"), linear(p + "out"),
                          linear(p + "context_query"), linear(p + "context_keys"), linear(p + "context_values"),
                          linear(p + "context_out"), feed_forward(p + "ffn")});
    }
    decoder_norm_ = norm("decoder.norm");
    generator_ = linear("generator");
  }

  // n_best (score, target ids) per source line, best first: search::beam_search, at most max_steps tokens
  std::vector<std::vector<search::Hypothesis>> translate(const std::vector<std::vector<int64_t>>& sources,
                                                         const search::Decoding& decoding, int64_t max_steps) {
    const auto started = Clock::now();
    const double decoder_before = profile_["decoder_s"];
    begin(sources, decoding.beam_size, max_steps);
    const double encoded = seconds(started);
    auto found = search::beam_search(*this, static_cast<int64_t>(sources.size()), decoding, max_steps, special_);
    profile_["encoder_s"] += encoded;
    profile_["search_s"] += seconds(started) - encoded - (profile_["decoder_s"] - decoder_before);
    profile_["sentences"] += static_cast<double>(sources.size());
    return found;
  }

  // the search's model (search.h): encode the sources, room for rows_per_source hypotheses each, capacity steps
  void begin(const std::vector<std::vector<int64_t>>& sources, int64_t rows_per_source, int64_t capacity) {
    encode(sources);
    rows_ = static_cast<int64_t>(sources.size()) * rows_per_source;
    allocate(rows_, capacity + 1);
    sentence_of_row_.resize(rows_);
    for (int64_t r = 0; r < rows_; ++r) sentence_of_row_[r] = r / rows_per_source;
  }

  void top_k(const std::vector<int64_t>& tokens, int64_t step, int64_t k, const std::vector<int64_t>& banned,
             std::vector<float>* values, std::vector<int64_t>* ids) {
    TORCH_CHECK(static_cast<int64_t>(tokens.size()) == rows_, "native engine: ", tokens.size(), " tokens for ", rows_,
                " hypotheses");
    TORCH_CHECK(step + 1 <= capacity_, "native engine: step ", step, " past the room begin() made");
    const auto before = Clock::now();
    const at::Tensor logits = decoder_step(rows_, step, tokens.data(), sentence_of_row_.data());
    tops_.assign(rows_, TopK{k, {}, {}});
    log_softmax_rows(logits, rows_, tops_.data(), banned, nullptr);
    values->resize(rows_ * k), ids->resize(rows_ * k);
    for (int64_t r = 0; r < rows_; ++r)
      for (int64_t j = 0; j < k; ++j) (*values)[r * k + j] = tops_[r].values[j], (*ids)[r * k + j] = tops_[r].ids[j];
    length_ = step + 1;
    profile_["decoder_s"] += seconds(before);
    profile_["steps"] += 1;
  }

  void keep(const std::vector<int64_t>& from) {
    for (int64_t f : from) TORCH_CHECK(f >= 0 && f < rows_, "native engine: row ", f, " of ", rows_, " kept");
    reorder_caches(from, length_);
    std::vector<int64_t> sentences(from.size());
    for (size_t r = 0; r < from.size(); ++r) sentences[r] = sentence_of_row_[from[r]];
    sentence_of_row_.swap(sentences);
    rows_ = static_cast<int64_t>(from.size());
  }

  int64_t vocab() const { return vocab_; }

  // teacher forcing: (sum of the log-probabilities of each target's ids, which end with the end token, their count)
  std::pair<double, int64_t> score(const std::vector<std::vector<int64_t>>& sources,
                                   const std::vector<std::vector<int64_t>>& targets) {
    const int64_t count = static_cast<int64_t>(sources.size());
    TORCH_CHECK(static_cast<int64_t>(targets.size()) == count, "native engine: as many targets as sources");
    encode(sources);
    int64_t longest = 1;
    for (const auto& t : targets) longest = std::max<int64_t>(longest, static_cast<int64_t>(t.size()));
    allocate(count, longest);
    std::vector<int64_t> sentence_of_row(count), tokens(count, bos_);
    for (int64_t r = 0; r < count; ++r) sentence_of_row[r] = r;
    double total = 0;
    int64_t counted = 0;
    for (int64_t step = 0; step < longest; ++step) {  // a finished line's later steps are computed, not counted
      const at::Tensor logits = decoder_step(count, step, tokens.data(), sentence_of_row.data());
      std::vector<LogSoftmax> rows(count);
      log_softmax_rows(logits, count, nullptr, {}, rows.data());
      const float* row = logits.data_ptr<float>();
      for (int64_t r = 0; r < count; ++r) {
        const auto& gold = targets[r];
        if (step >= static_cast<int64_t>(gold.size())) continue;
        TORCH_CHECK(gold[step] >= 0 && gold[step] < vocab_, "native engine: target id ", gold[step], " out of the vocabulary");
        total += rows[r].at(row[r * vocab_ + gold[step]]), ++counted;
        tokens[r] = gold[step];
      }
    }
    return {total, counted};
  }

  std::map<std::string, double> profile() const {
    auto found = profile_;
    double panel_calls = static_cast<double>(generator_.panel_calls);
    for (const auto& l : encoder_)
      for (const Linear* x : {&l.qkv, &l.out, &l.ffn.w1, &l.ffn.w2}) panel_calls += static_cast<double>(x->panel_calls);
    for (const auto& l : decoder_)
      for (const Linear* x : {&l.qkv, &l.out, &l.context_query, &l.context_keys, &l.context_values, &l.context_out,
                              &l.ffn.w1, &l.ffn.w2})
        panel_calls += static_cast<double>(x->panel_calls);
    found["panel_products"] = panel_calls;
    return found;
  }

 private:
  bool has(const std::string& name) const { return weights_.count(name) > 0; }
  at::Tensor get(const std::string& name) const {
    auto found = weights_.find(name);
    TORCH_CHECK(found != weights_.end(), "native engine: weight ", name, " is missing");
    TORCH_CHECK(found->second.scalar_type() == at::kFloat && found->second.is_contiguous(),
                "native engine: weight ", name, " must be contiguous float32");
    return found->second;
  }
  at::Tensor maybe(const std::string& name) const { return has(name) ? get(name) : at::Tensor(); }
  Linear linear(const std::string& name) const {
    auto found = weights_.find(name + ".weight");
    Linear made;
    if (found != weights_.end() && found->second.is_quantized()) {  // a per-row qint8 weight
      static auto prepack = c10::Dispatcher::singleton()
                                .findSchemaOrThrow("quantized::linear_prepack", "")
                                .typed<c10::intrusive_ptr<LinearPackedParamsBase>(at::Tensor, std::optional<at::Tensor>)>();
      at::Tensor bias = maybe(name + ".bias");
      made.packed = prepack.call(found->second, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt);
      made.outputs = found->second.size(0);
      return made;
    }
    made.weight_t = get(name + ".weight").t(), made.bias = maybe(name + ".bias");
    made.outputs = made.weight_t.size(1);
    static const bool fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (fma && panel_rows_ > 0) made.panels.pack(get(name + ".weight"), made.bias), made.panel_rows = panel_rows_;
    auto reordered = weights_.find(name + ".reordered");
    if (reordered != weights_.end()) made.reordered = reordered->second;
    return made;
  }
  Norm norm(const std::string& name) const { return {get(name + ".weight"), maybe(name + ".bias"), eps_}; }
  FeedForward feed_forward(const std::string& p) const {
    Activation act;
    act.kind = kind_;
    if (kind_ == Kind::LMA) {
      act.a = get(p + ".slopes"), act.b = get(p + ".intercepts");
      act.mean = get(p + ".mean").item<float>(), act.inv = get(p + ".inv").item<float>();
    } else if (kind_ == Kind::PReLU) {
      act.a = get(p + ".weight");
    } else if (kind_ == Kind::Swish) {
      act.a = get(p + ".beta");
    } else if (kind_ == Kind::APLU) {
      act.a = get(p + ".hinge_slope"), act.b = get(p + ".hinge_point");
    }
    return {norm(p + ".norm"), linear(p + ".w1"), linear(p + ".w2"), act};
  }

  void ffn(const FeedForward& f, float* x, int64_t rows) {
    f.norm(x, normed_.data_ptr<float>(), rows, dim_);
    at::Tensor hidden = f.w1(normed_.narrow(0, 0, rows), hidden_.narrow(0, 0, rows));
    f.activation(hidden);
    project_add(f.w2, hidden, x, rows);
  }

  // x += projection(input): torch's order, (input W^T + b) + x
  void project_add(const Linear& projection, const at::Tensor& input, float* x, int64_t rows) {
    const at::Tensor out = projection(input, projected_.narrow(0, 0, rows));
    const float* p = out.data_ptr<float>();
    for (int64_t i = 0, n = rows * dim_; i < n; ++i) x[i] = p[i] + x[i];
  }

  // softmax(q . keys / sqrt(head_dim)) values for one query row of every head; keys/values rows of `stride`
  void attend(const float* q, const float* keys, const float* values, int64_t length, int64_t stride, float* out,
              std::vector<float>& scores) const {
    scores.resize(length);
    if (vector_attention_) {
      attend_avx2(q, keys, values, length, stride, out, scores.data(), heads_, head_dim_);
      return;
    }
    const float scale = std::sqrt(static_cast<float>(head_dim_));
    for (int64_t h = 0; h < heads_; ++h) {
      const int64_t o = h * head_dim_;
      float qh[64];
      for (int64_t e = 0; e < head_dim_; ++e) qh[e] = q[o + e] / scale;
      float top = kMinusInf;
      for (int64_t j = 0; j < length; ++j) {
        const float* key = keys + j * stride + o;
        float s = 0;
        for (int64_t e = 0; e < head_dim_; ++e) s += qh[e] * key[e];
        scores[j] = s;
        top = std::max(top, s);
      }
      float sum = 0;
      for (int64_t j = 0; j < length; ++j) sum += (scores[j] = std::exp(scores[j] - top));
      for (int64_t e = 0; e < head_dim_; ++e) out[o + e] = 0;
      for (int64_t j = 0; j < length; ++j) {
        const float p = scores[j] / sum;
        const float* value = values + j * stride + o;
        for (int64_t e = 0; e < head_dim_; ++e) out[o + e] += p * value[e];
      }
    }
  }

  void encode(const std::vector<std::vector<int64_t>>& sources) {
    const int64_t count = static_cast<int64_t>(sources.size());
    int64_t longest = 1;
    for (const auto& s : sources) longest = std::max<int64_t>(longest, static_cast<int64_t>(s.size()));
    TORCH_CHECK(longest <= positions_.size(0), "native engine: a source of ", longest, " tokens; the position table holds ",
                positions_.size(0));
    const int64_t n = count * longest;
    source_lengths_.assign(count, 0);
    source_length_ = longest;
    at::Tensor x = at::zeros({n, dim_}), normed = at::empty({n, dim_}), qkv = at::empty({n, 3 * dim_}),
               context = at::zeros({n, dim_});
    normed_ = normed, projected_ = at::empty({n, dim_}), hidden_ = at::empty({n, feed_forward_units()});
    float* xs = x.data_ptr<float>();
    const float root = std::sqrt(static_cast<float>(dim_));
    const float* table = src_embeddings_.data_ptr<float>();
    const float* position = positions_.data_ptr<float>();
    for (int64_t s = 0; s < count; ++s) {
      source_lengths_[s] = static_cast<int64_t>(sources[s].size());
      for (int64_t t = 0; t < longest; ++t) {
        const int64_t id = t < source_lengths_[s] ? sources[s][t] : source_pad_;
        TORCH_CHECK(id >= 0 && id < src_embeddings_.size(0), "native engine: source id ", id, " out of the vocabulary");
        float* row = xs + (s * longest + t) * dim_;
        for (int64_t e = 0; e < dim_; ++e) row[e] = table[id * dim_ + e] * root + position[t * dim_ + e];
      }
    }
    for (const EncoderLayer& layer : encoder_) {
      layer.norm(xs, normed.data_ptr<float>(), n, dim_);
      const at::Tensor projected = layer.qkv(normed, qkv);
      const float* q = projected.data_ptr<float>();
      float* ctx = context.data_ptr<float>();
      at::parallel_for(0, n, std::max<int64_t>(1, 65536 / (longest * dim_ + 1)), [&](int64_t begin, int64_t end) {
        std::vector<float> scores;
        for (int64_t row = begin; row < end; ++row) {
          const int64_t s = row / longest, base = s * longest * 3 * dim_;
          if (row % longest >= source_lengths_[s]) continue;  // a padding position: never a key, never read
          attend(q + row * 3 * dim_, q + base + dim_, q + base + 2 * dim_, source_lengths_[s], 3 * dim_,
                 ctx + row * dim_, scores);
        }
      });
      project_add(layer.out, context, xs, n);
      ffn(layer.ffn, xs, n);
    }
    encoder_norm_(xs, normed.data_ptr<float>(), n, dim_);
    memory_keys_.clear(), memory_values_.clear();
    for (const DecoderLayer& layer : decoder_) {
      memory_keys_.push_back(layer.context_keys(normed, at::empty({n, dim_})));
      memory_values_.push_back(layer.context_values(normed, at::empty({n, dim_})));
    }
  }

  int64_t feed_forward_units() const {
    return encoder_.empty() ? decoder_[0].ffn.w1.outputs : encoder_[0].ffn.w1.outputs;
  }

  void allocate(int64_t rows, int64_t capacity) {
    rows = std::max<int64_t>(rows, 1);
    x_ = at::empty({rows, dim_}), normed_ = at::empty({rows, dim_}), qkv_ = at::empty({rows, 3 * dim_});
    context_ = at::empty({rows, dim_}), projected_ = at::empty({rows, dim_}), queries_ = at::empty({rows, dim_});
    hidden_ = at::empty({rows, feed_forward_units()}), logits_ = at::empty({rows, vocab_});
    capacity_ = capacity;
    keys_.clear(), values_.clear(), spare_keys_.clear(), spare_values_.clear();
    for (size_t l = 0; l < decoder_.size(); ++l) {
      for (auto* caches : {&keys_, &values_, &spare_keys_, &spare_values_}) caches->push_back(at::empty({rows, capacity, dim_}));
    }
  }

  void reorder_caches(const std::vector<int64_t>& from, int64_t length) {
    const int64_t rows = static_cast<int64_t>(from.size()), span = length * dim_;
    for (size_t l = 0; l < decoder_.size(); ++l) {
      for (auto [caches, spares] : {std::pair{&keys_, &spare_keys_}, std::pair{&values_, &spare_values_}}) {
        const float* old = (*caches)[l].data_ptr<float>();
        float* now = (*spares)[l].data_ptr<float>();
        at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / span), [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r)
            std::copy(old + from[r] * capacity_ * dim_, old + from[r] * capacity_ * dim_ + span, now + r * capacity_ * dim_);
        });
        std::swap((*caches)[l], (*spares)[l]);
      }
    }
  }

  // one position of `rows` hypotheses: their self-attention caches grow by it; returns their logits
  at::Tensor decoder_step(int64_t rows, int64_t step, const int64_t* tokens, const int64_t* sentence_of_row) {
    TORCH_CHECK(step < positions_.size(0), "native engine: step ", step, " past the position table");
    float* x = x_.data_ptr<float>();
    const float root = std::sqrt(static_cast<float>(dim_));
    const float* table = tgt_embeddings_.data_ptr<float>();
    const float* position = positions_.data_ptr<float>() + step * dim_;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t e = 0; e < dim_; ++e) x[r * dim_ + e] = table[tokens[r] * dim_ + e] * root + position[e];
    at::Tensor normed = normed_.narrow(0, 0, rows), qkv = qkv_.narrow(0, 0, rows), context = context_.narrow(0, 0, rows);
    // rows of attention in one task: ~64k multiply-adds (a parallel region costs more than a few rows)
    const int64_t grain = std::max<int64_t>(1, 65536 / ((step + source_length_) * dim_ + 1));
    for (size_t l = 0; l < decoder_.size(); ++l) {
      const DecoderLayer& layer = decoder_[l];
      layer.norm1(x, normed.data_ptr<float>(), rows, dim_);
      const at::Tensor projected = layer.qkv(normed, qkv);
      const float* q = projected.data_ptr<float>();
      float* keys = keys_[l].data_ptr<float>();
      float* values = values_[l].data_ptr<float>();
      float* ctx = context.data_ptr<float>();
      at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        std::vector<float> scores;
        for (int64_t r = begin; r < end; ++r) {
          float* key_row = keys + r * capacity_ * dim_;
          float* value_row = values + r * capacity_ * dim_;
          std::copy(q + r * 3 * dim_ + dim_, q + r * 3 * dim_ + 2 * dim_, key_row + step * dim_);
          std::copy(q + r * 3 * dim_ + 2 * dim_, q + r * 3 * dim_ + 3 * dim_, value_row + step * dim_);
          attend(q + r * 3 * dim_, key_row, value_row, step + 1, dim_, ctx + r * dim_, scores);
        }
      });
      project_add(layer.out, context, x, rows);
      layer.norm2(x, normed.data_ptr<float>(), rows, dim_);
      const at::Tensor queries = layer.context_query(normed, queries_.narrow(0, 0, rows));
      const float* cq = queries.data_ptr<float>();
      const float* memory_keys = memory_keys_[l].data_ptr<float>();
      const float* memory_values = memory_values_[l].data_ptr<float>();
      at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        std::vector<float> scores;
        for (int64_t r = begin; r < end; ++r) {
          const int64_t s = sentence_of_row[r], base = s * source_length_ * dim_;
          attend(cq + r * dim_, memory_keys + base, memory_values + base, source_lengths_[s], dim_, ctx + r * dim_, scores);
        }
      });
      project_add(layer.context_out, context, x, rows);
      ffn(layer.ffn, x, rows);
    }
    decoder_norm_(x, normed.data_ptr<float>(), rows, dim_);
    return generator_(normed, logits_.narrow(0, 0, rows)).contiguous();
  }

  // each row's log-softmax (into `found`, where given) and top k (into `tops`, where given), rows in parallel
  void log_softmax_rows(const at::Tensor& logits, int64_t rows, TopK* tops, const std::vector<int64_t>& banned,
                        LogSoftmax* found) const {
    const float* x = logits.data_ptr<float>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / vocab_), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const LogSoftmax row = log_softmax_top_k(x + r * vocab_, vocab_, tops ? tops + r : nullptr, banned,
                                                 special_.banned);
        if (found) found[r] = row;
      }
    });
  }

  std::map<std::string, at::Tensor> weights_;
  int64_t dim_ = 0, heads_ = 0, head_dim_ = 0, vocab_ = 0, bos_ = 0, eos_ = 0, unk_ = 0, source_pad_ = 1;
  int64_t panel_rows_ = kPanelRows;
  bool vector_attention_ = false;
  float eps_ = 1e-6f;
  Kind kind_ = Kind::ReLU;
  at::Tensor src_embeddings_, tgt_embeddings_, positions_;
  std::vector<EncoderLayer> encoder_;
  std::vector<DecoderLayer> decoder_;
  Norm encoder_norm_, decoder_norm_;
  Linear generator_;
  // per batch: the sources' lengths, the memory's keys and values per decoder layer, and the step's buffers
  std::vector<int64_t> source_lengths_;
  int64_t source_length_ = 1, capacity_ = 0;
  std::vector<at::Tensor> memory_keys_, memory_values_, keys_, values_, spare_keys_, spare_values_;
  at::Tensor x_, normed_, qkv_, context_, projected_, queries_, hidden_, logits_;
  // the search's state (begin, top_k, keep): hypotheses, the source each reads, the positions they hold
  search::Special special_{0, 0, 0, 0.0f};
  int64_t rows_ = 0, length_ = 0;
  std::vector<int64_t> sentence_of_row_;
  std::vector<TopK> tops_;
  // onmt_lma.deploy.search.PROFILE_KEYS (tests/test_search.py checks they are the same)
  std::map<std::string, double> profile_ = {{"encoder_s", 0}, {"decoder_s", 0}, {"search_s", 0}, {"steps", 0}, {"sentences", 0}};
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  search::bind_decoding(m);
  pybind11::class_<Engine>(m, "Engine")
      .def(pybind11::init<const std::map<std::string, at::Tensor>&, const std::map<std::string, double>&,
                          const std::string&>())
      .def("translate", &Engine::translate, pybind11::call_guard<pybind11::gil_scoped_release>())
      .def("begin", &Engine::begin)
      .def("top_k", [](Engine& engine, const std::vector<int64_t>& tokens, int64_t step, int64_t k,
                       const std::vector<int64_t>& banned) {
        std::vector<float> values;
        std::vector<int64_t> ids;
        engine.top_k(tokens, step, k, banned, &values, &ids);
        return std::make_pair(values, ids);
      })
      .def("keep", &Engine::keep)
      .def("score", &Engine::score, pybind11::call_guard<pybind11::gil_scoped_release>())
      .def("profile", &Engine::profile);
  m.def("activations", [] {
    std::vector<std::string> names;
    for (const auto& entry : kKinds) names.push_back(entry.first);
    return names;
  });
#ifdef LMA_SOURCE_SHA256
  m.attr("source_sha256") = LMA_SOURCE_SHA256;  // set by setup.py
#endif
}
