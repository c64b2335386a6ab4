// Fused CPU kernels for LMA (PAPER.md "LMA, exactly"): one pass over the input,
// parallel over chunks with ATen's thread pool (OpenMP), segment ids computed on
// the fly (never stored).
//
//   j = clamp(floor((x - mean) / width + k / 2), 0, k - 1),  width = 6 std / k
//   forward:  y = alpha[j] * x + beta[j]
//   backward: dx = g * alpha[j];  dalpha[j] += g * x;  dbeta[j] += g
//
// Arithmetic in float (double for double inputs); per-chunk partial sums for
// dalpha / dbeta in double, reduced in a fixed order (deterministic).
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/Parallel.h>

namespace {

constexpr int64_t kGrain = 1 << 14;

template <typename acc_t>
inline int32_t segment(acc_t x, acc_t mean, acc_t inv_width, acc_t half, acc_t last) {
  // floor() by truncation after clamping to [0, last]; branch-free so that the
  // compiler vectorizes it (NaN positions give 0)
  acc_t position = (x - mean) * inv_width + half;
  position = position > acc_t(0) ? position : acc_t(0);
  position = position < last ? position : last;
  return static_cast<int32_t>(position);
}

constexpr int64_t kBlock = 512;

template <typename acc_t>
acc_t inverse_width(double stddev, int64_t k) {
  double width = std::max(stddev, static_cast<double>(std::numeric_limits<acc_t>::min())) * 6.0 / k;
  return static_cast<acc_t>(1.0 / width);
}

}  // namespace

torch::Tensor lma_forward(torch::Tensor x, torch::Tensor alpha, torch::Tensor beta, double mean, double stddev) {
  TORCH_CHECK(x.device().is_cpu(), "lma_forward: CPU tensors only");
  auto input = x.contiguous();
  auto out = torch::empty_like(input);
  const int64_t n = input.numel();
  const int64_t k = alpha.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "lma_forward", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    auto a = alpha.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    auto b = beta.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* pa = a.data_ptr<acc_t>();
    const acc_t* pb = b.data_ptr<acc_t>();
    const scalar_t* px = input.data_ptr<scalar_t>();
    scalar_t* py = out.data_ptr<scalar_t>();
    const acc_t m = static_cast<acc_t>(mean);
    const acc_t inv = inverse_width<acc_t>(stddev, k);
    const acc_t half = static_cast<acc_t>(k) / 2;
    const acc_t last = static_cast<acc_t>(k - 1);
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      int32_t ids[kBlock];
      for (int64_t start = begin; start < end; start += kBlock) {
        const int64_t count = std::min(kBlock, end - start);
        const scalar_t* xs = px + start;
        for (int64_t i = 0; i < count; ++i) ids[i] = segment<acc_t>(static_cast<acc_t>(xs[i]), m, inv, half, last);
        for (int64_t i = 0; i < count; ++i) {
          const acc_t v = static_cast<acc_t>(xs[i]);
          py[start + i] = static_cast<scalar_t>(pa[ids[i]] * v + pb[ids[i]]);
        }
      }
    });
  });
  return out.view(x.sizes());
}

std::vector<torch::Tensor> lma_backward(torch::Tensor grad, torch::Tensor x, torch::Tensor alpha, double mean,
                                        double stddev, bool need_x, bool need_params) {
  auto input = x.contiguous();
  auto g = grad.contiguous();
  const int64_t n = input.numel();
  const int64_t k = alpha.numel();
  torch::Tensor grad_x = need_x ? torch::empty_like(input) : torch::Tensor();
  torch::Tensor grad_alpha, grad_beta;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "lma_backward", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    auto a = alpha.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* pa = a.data_ptr<acc_t>();
    const scalar_t* px = input.data_ptr<scalar_t>();
    const scalar_t* pg = g.data_ptr<scalar_t>();
    scalar_t* pdx = need_x ? grad_x.data_ptr<scalar_t>() : nullptr;
    const acc_t m = static_cast<acc_t>(mean);
    const acc_t inv = inverse_width<acc_t>(stddev, k);
    const acc_t half = static_cast<acc_t>(k) / 2;
    const acc_t last = static_cast<acc_t>(k - 1);
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads() * 4, (n + kGrain - 1) / kGrain));
    const int64_t per_chunk = (n + chunks - 1) / chunks;
    // partial sums per chunk (deterministic reduction order): [chunk][2k]
    std::vector<double> partial(need_params ? chunks * 2 * k : 0, 0.0);
    at::parallel_for(0, chunks, 1, [&](int64_t c_begin, int64_t c_end) {
      for (int64_t c = c_begin; c < c_end; ++c) {
        const int64_t begin = c * per_chunk;
        const int64_t end = std::min(n, begin + per_chunk);
        std::vector<double> da(need_params ? k : 0, 0.0), db(need_params ? k : 0, 0.0);
        std::vector<acc_t> block_da(need_params ? k : 0), block_db(need_params ? k : 0);
        int32_t ids[kBlock];
        for (int64_t start = begin; start < end; start += kBlock) {
          const int64_t count = std::min(kBlock, end - start);
          const scalar_t* xs = px + start;
          const scalar_t* gs = pg + start;
          for (int64_t i = 0; i < count; ++i) ids[i] = segment<acc_t>(static_cast<acc_t>(xs[i]), m, inv, half, last);
          if (pdx) {
            for (int64_t i = 0; i < count; ++i) pdx[start + i] = static_cast<scalar_t>(static_cast<acc_t>(gs[i]) * pa[ids[i]]);
          }
          if (need_params) {  // block sums in acc_t, totals in double
            std::fill(block_da.begin(), block_da.end(), acc_t(0));
            std::fill(block_db.begin(), block_db.end(), acc_t(0));
            for (int64_t i = 0; i < count; ++i) {
              const acc_t gi = static_cast<acc_t>(gs[i]);
              block_da[ids[i]] += gi * static_cast<acc_t>(xs[i]);
              block_db[ids[i]] += gi;
            }
            for (int64_t j = 0; j < k; ++j) {
              da[j] += block_da[j];
              db[j] += block_db[j];
            }
          }
        }
        if (need_params) {
          for (int64_t j = 0; j < k; ++j) {
            partial[c * 2 * k + j] = da[j];
            partial[c * 2 * k + k + j] = db[j];
          }
        }
      }
    });
    if (need_params) {
      auto sums = torch::zeros({2, k}, torch::kFloat64);
      double* ps = sums.data_ptr<double>();
      for (int64_t c = 0; c < chunks; ++c)
        for (int64_t j = 0; j < 2 * k; ++j) ps[j] += partial[c * 2 * k + j];
      grad_alpha = sums[0].to(alpha.scalar_type());
      grad_beta = sums[1].to(alpha.scalar_type());
    }
  });
  if (need_x) grad_x = grad_x.view(x.sizes());
  return {grad_x, grad_alpha, grad_beta};
}

// Mean and population standard deviation of all elements, one pass: per block
// of kBlock elements sums in 8 independent lanes of acc_t (vectorizable without
// reassociation), block totals in double.
std::vector<double> lma_stats(torch::Tensor x) {
  auto input = x.contiguous();
  const int64_t n = input.numel();
  TORCH_CHECK(n > 0, "lma_stats: empty input");
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads() * 4, (n + kGrain - 1) / kGrain));
  const int64_t per_chunk = (n + chunks - 1) / chunks;
  std::vector<double> partial(chunks * 2, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "lma_stats", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    const scalar_t* px = input.data_ptr<scalar_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t c_begin, int64_t c_end) {
      for (int64_t c = c_begin; c < c_end; ++c) {
        const int64_t begin = c * per_chunk;
        const int64_t end = std::min(n, begin + per_chunk);
        double sum = 0.0, squares = 0.0;
        for (int64_t start = begin; start < end; start += kBlock) {
          const int64_t count = std::min(kBlock, end - start);
          acc_t s[8] = {0}, q[8] = {0};
          int64_t i = 0;
          for (; i + 8 <= count; i += 8) {
            for (int l = 0; l < 8; ++l) {
              const acc_t v = static_cast<acc_t>(px[start + i + l]);
              s[l] += v;
              q[l] += v * v;
            }
          }
          for (; i < count; ++i) {
            const acc_t v = static_cast<acc_t>(px[start + i]);
            s[0] += v;
            q[0] += v * v;
          }
          for (int l = 0; l < 8; ++l) {
            sum += s[l];
            squares += q[l];
          }
        }
        partial[2 * c] = sum;
        partial[2 * c + 1] = squares;
      }
    });
  });
  double sum = 0.0, squares = 0.0;
  for (int64_t c = 0; c < chunks; ++c) {
    sum += partial[2 * c];
    squares += partial[2 * c + 1];
  }
  const double mean = sum / n;
  const double variance = std::max(squares / n - mean * mean, 0.0);
  return {mean, std::sqrt(variance)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("stats", &lma_stats, "mean and population std of all elements (CPU, one pass)");
  m.def("forward", &lma_forward, "LMA forward (CPU, fused)");
  m.def("backward", &lma_backward, "LMA backward (CPU, fused)");
}
