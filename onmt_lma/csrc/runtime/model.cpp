#include "model.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <thread>

namespace runtime {
namespace {

int64_t integer(const std::map<std::string, double>& config, const std::string& key) {
  auto found = config.find(key);
  if (found == config.end()) throw std::invalid_argument("runtime: config lacks " + key);
  return static_cast<int64_t>(found->second);
}

int thread_count(const std::map<std::string, double>& config) {
  auto found = config.find("threads");
  const int asked = found == config.end() ? 0 : static_cast<int>(found->second);
  return asked > 0 ? asked : std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace

Model::Model(const Weights& weights, const std::map<std::string, double>& config, const std::string& activation,
             Isa isa)
    : isa_(isa), kernels_(kernels(isa)), pool_(thread_count(config)) {
  dim_ = integer(config, "dim"), heads_ = integer(config, "heads"), vocab_ = integer(config, "vocab");
  head_dim_ = dim_ / heads_;
  if (head_dim_ > 64 || head_dim_ * heads_ != dim_)
    throw std::invalid_argument("runtime: heads of " + std::to_string(head_dim_) + " values; it takes up to 64");
  special_ = {integer(config, "bos"), integer(config, "eos"), integer(config, "unk"),
              static_cast<float>(config.at("banned_score"))};
  source_pad_ = integer(config, "src_pad");
  eps_ = static_cast<float>(config.at("eps"));
  if (!kKinds.count(activation)) throw std::invalid_argument("runtime: no kernel for activation " + activation);
  kind_ = kKinds.at(activation);
  src_embeddings_ = get(weights, "src_embeddings").data, tgt_embeddings_ = get(weights, "tgt_embeddings").data;
  source_vocab_ = get(weights, "src_embeddings").size(0);
  positions_ = get(weights, "positions").data, positions_count_ = get(weights, "positions").size(0);
  for (int64_t i = 0; maybe(weights, "encoder." + std::to_string(i) + ".norm.weight"); ++i) {
    const std::string p = "encoder." + std::to_string(i) + ".";
    encoder_.push_back({norm(weights, p + "norm"), linear(weights, p + "qkv"), linear(weights, p + "out"),
                        feed_forward(weights, p + "ffn")});
  }
  encoder_norm_ = norm(weights, "encoder.norm");
  for (int64_t i = 0; maybe(weights, "decoder." + std::to_string(i) + ".norm1.weight"); ++i) {
    const std::string p = "decoder." + std::to_string(i) + ".";
    decoder_.push_back({norm(weights, p + "norm1"), norm(weights, p + "norm2"), linear(weights, p + "qkv"),
                        linear(weights, p + "out"), linear(weights, p + "context_query"),
                        linear(weights, p + "context_keys"), linear(weights, p + "context_values"),
                        linear(weights, p + "context_out"), feed_forward(weights, p + "ffn")});
  }
  if (decoder_.empty()) throw std::invalid_argument("runtime: no decoder layer in the weights");
  decoder_norm_ = norm(weights, "decoder.norm");
  generator_ = linear(weights, "generator");
  units_ = decoder_[0].ffn.w1.outputs();
  for (const auto& l : encoder_) units_ = std::max(units_, l.ffn.w1.outputs());
}

Linear Model::linear(const Weights& weights, const std::string& name) const {
  const Tensor& w = get(weights, name + ".weight");
  const Tensor* b = maybe(weights, name + ".bias");
  Linear made;
  made.panels.pack(w.data.data(), b ? b->data.data() : nullptr, w.size(0), w.size(1));
  return made;
}

Norm Model::norm(const Weights& weights, const std::string& name) const {
  const Tensor* b = maybe(weights, name + ".bias");
  return {get(weights, name + ".weight").data, b ? b->data : std::vector<float>(), eps_};
}

FeedForward Model::feed_forward(const Weights& weights, const std::string& p) const {
  Activation act;
  act.kind = kind_;
  if (kind_ == Kind::LMA) {
    act.a = get(weights, p + ".slopes").data, act.b = get(weights, p + ".intercepts").data;
    act.mean = get(weights, p + ".mean").data.at(0), act.inv = get(weights, p + ".inv").data.at(0);
  } else if (kind_ == Kind::PReLU) {
    act.a = get(weights, p + ".weight").data;
  } else if (kind_ == Kind::Swish) {
    act.a = get(weights, p + ".beta").data;
  } else if (kind_ == Kind::APLU) {
    act.a = get(weights, p + ".hinge_slope").data, act.b = get(weights, p + ".hinge_point").data;
    act.hinges = get(weights, p + ".hinge_slope").size(0);
  }
  return {norm(weights, p + ".norm"), linear(weights, p + ".w1"), linear(weights, p + ".w2"), act};
}

void Model::ffn(const FeedForward& f, float* x, int64_t rows) {
  f.norm(x, normed_.data(), rows, dim_);
  f.w1(kernels_, pool_, normed_.data(), rows, hidden_.data());
  f.activation(kernels_, pool_, hidden_.data(), rows, f.w1.outputs());
  project_add(f.w2, hidden_.data(), x, rows);
}

void Model::project_add(const Linear& projection, const float* input, float* x, int64_t rows) {  // torch's order
  projection(kernels_, pool_, input, rows, projected_.data());
  for (int64_t i = 0, n = rows * dim_; i < n; ++i) x[i] = projected_[i] + x[i];
}

void Model::attend(const float* q, const float* keys, const float* values, int64_t length, int64_t stride, float* out,
                   std::vector<float>& scores) const {
  scores.resize(std::max<int64_t>(length, 1));
  kernels_.attend(q, keys, values, length, stride, out, scores.data(), heads_, head_dim_);
}

void Model::encode(const std::vector<std::vector<int64_t>>& sources) {
  const int64_t count = static_cast<int64_t>(sources.size());
  int64_t longest = 1;
  for (const auto& s : sources) longest = std::max<int64_t>(longest, static_cast<int64_t>(s.size()));
  if (longest > positions_count_)
    throw std::invalid_argument("runtime: a source of " + std::to_string(longest) + " tokens; the position table holds " +
                                std::to_string(positions_count_));
  const int64_t n = count * longest;
  source_lengths_.assign(count, 0), source_length_ = longest;
  std::vector<float> x(n * dim_, 0.0f), qkv(n * 3 * dim_), context(n * dim_, 0.0f);
  normed_.assign(n * dim_, 0.0f), projected_.assign(n * dim_, 0.0f), hidden_.assign(n * units_, 0.0f);
  const float root = std::sqrt(static_cast<float>(dim_));
  for (int64_t s = 0; s < count; ++s) {
    source_lengths_[s] = static_cast<int64_t>(sources[s].size());
    for (int64_t t = 0; t < longest; ++t) {
      const int64_t id = t < source_lengths_[s] ? sources[s][t] : source_pad_;
      if (id < 0 || id >= source_vocab_) throw std::invalid_argument("runtime: source id " + std::to_string(id) +
                                                                     " out of the vocabulary");
      float* row = x.data() + (s * longest + t) * dim_;
      for (int64_t e = 0; e < dim_; ++e) row[e] = src_embeddings_[id * dim_ + e] * root + positions_[t * dim_ + e];
    }
  }
  for (const EncoderLayer& layer : encoder_) {
    layer.norm(x.data(), normed_.data(), n, dim_);
    layer.qkv(kernels_, pool_, normed_.data(), n, qkv.data());
    pool_.parallel_for(n, std::max<int64_t>(1, 65536 / (longest * dim_ + 1)), [&](int64_t begin, int64_t end) {
      std::vector<float> scores;
      for (int64_t row = begin; row < end; ++row) {
        const int64_t s = row / longest, base = s * longest * 3 * dim_;
        if (row % longest >= source_lengths_[s]) continue;  // a padding position: never a key, never read
        attend(qkv.data() + row * 3 * dim_, qkv.data() + base + dim_, qkv.data() + base + 2 * dim_,
               source_lengths_[s], 3 * dim_, context.data() + row * dim_, scores);
      }
    });
    project_add(layer.out, context.data(), x.data(), n);
    ffn(layer.ffn, x.data(), n);
  }
  encoder_norm_(x.data(), normed_.data(), n, dim_);
  memory_keys_.assign(decoder_.size(), std::vector<float>(n * dim_));
  memory_values_.assign(decoder_.size(), std::vector<float>(n * dim_));
  for (size_t l = 0; l < decoder_.size(); ++l) {
    decoder_[l].context_keys(kernels_, pool_, normed_.data(), n, memory_keys_[l].data());
    decoder_[l].context_values(kernels_, pool_, normed_.data(), n, memory_values_[l].data());
  }
}

void Model::allocate(int64_t rows, int64_t capacity) {
  rows = std::max<int64_t>(rows, 1);
  for (auto* buffer : {&x_, &normed_, &context_, &projected_, &queries_}) buffer->assign(rows * dim_, 0.0f);
  qkv_.assign(rows * 3 * dim_, 0.0f), hidden_.assign(rows * units_, 0.0f), logits_.assign(rows * vocab_, 0.0f);
  capacity_ = capacity;
  for (auto* caches : {&keys_, &values_, &spare_keys_, &spare_values_})
    caches->assign(decoder_.size(), std::vector<float>(rows * capacity * dim_));
}

void Model::reorder_caches(const std::vector<int64_t>& from, int64_t length) {
  const int64_t rows = static_cast<int64_t>(from.size()), span = length * dim_, room = capacity_ * dim_;
  for (size_t l = 0; l < decoder_.size(); ++l) {
    for (auto [caches, spares] : {std::pair{&keys_, &spare_keys_}, std::pair{&values_, &spare_values_}}) {
      const float* old = (*caches)[l].data();
      float* now = (*spares)[l].data();
      pool_.parallel_for(rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(span, 1)), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) std::copy(old + from[r] * room, old + from[r] * room + span, now + r * room);
      });
      std::swap((*caches)[l], (*spares)[l]);
    }
  }
}

const float* Model::decoder_step(int64_t rows, int64_t step, const int64_t* tokens, const int64_t* sentence_of_row) {
  if (step >= positions_count_) throw std::invalid_argument("runtime: step past the position table");
  const float root = std::sqrt(static_cast<float>(dim_));
  const float* position = positions_.data() + step * dim_;
  for (int64_t r = 0; r < rows; ++r) {
    if (tokens[r] < 0 || tokens[r] >= vocab_) throw std::invalid_argument("runtime: target id out of the vocabulary");
    for (int64_t e = 0; e < dim_; ++e) x_[r * dim_ + e] = tgt_embeddings_[tokens[r] * dim_ + e] * root + position[e];
  }
  const int64_t grain = std::max<int64_t>(1, 65536 / ((step + source_length_) * dim_ + 1));
  const int64_t room = capacity_ * dim_;
  for (size_t l = 0; l < decoder_.size(); ++l) {
    const DecoderLayer& layer = decoder_[l];
    layer.norm1(x_.data(), normed_.data(), rows, dim_);
    layer.qkv(kernels_, pool_, normed_.data(), rows, qkv_.data());
    float* keys = keys_[l].data();
    float* values = values_[l].data();
    pool_.parallel_for(rows, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> scores;
      for (int64_t r = begin; r < end; ++r) {
        const float* q = qkv_.data() + r * 3 * dim_;
        std::copy(q + dim_, q + 2 * dim_, keys + r * room + step * dim_);
        std::copy(q + 2 * dim_, q + 3 * dim_, values + r * room + step * dim_);
        attend(q, keys + r * room, values + r * room, step + 1, dim_, context_.data() + r * dim_, scores);
      }
    });
    project_add(layer.out, context_.data(), x_.data(), rows);
    layer.norm2(x_.data(), normed_.data(), rows, dim_);
    layer.context_query(kernels_, pool_, normed_.data(), rows, queries_.data());
    pool_.parallel_for(rows, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> scores;
      for (int64_t r = begin; r < end; ++r) {
        const int64_t s = sentence_of_row[r], base = s * source_length_ * dim_;
        attend(queries_.data() + r * dim_, memory_keys_[l].data() + base, memory_values_[l].data() + base,
               source_lengths_[s], dim_, context_.data() + r * dim_, scores);
      }
    });
    project_add(layer.context_out, context_.data(), x_.data(), rows);
    ffn(layer.ffn, x_.data(), rows);
  }
  decoder_norm_(x_.data(), normed_.data(), rows, dim_);
  generator_(kernels_, pool_, normed_.data(), rows, logits_.data());
  return logits_.data();
}

// the row's log-softmax, (x - max) - log(sum exp(x - max)) as at::log_softmax, and with `top` its k best
// log-probabilities among the ids not banned, each banned id scored special_.banned; the logits read twice
Model::LogSoftmax Model::log_softmax(const float* row, TopK* top, const std::vector<int64_t>& banned) const {
  LogSoftmax found{*std::max_element(row, row + vocab_), 0};
  found.log_sum = std::log(kernels_.sum_exp(row, vocab_, found.max));
  if (top == nullptr) return found;
  top->reset();
  for (int64_t i = 0; i < vocab_; ++i)
    if (row[i] > top->values[top->k - 1] && std::find(banned.begin(), banned.end(), i) == banned.end())
      top->offer(row[i], i);
  for (int64_t j = 0; j < top->k; ++j)
    if (top->ids[j] < vocab_) top->values[j] = found.at(top->values[j]);
  for (int64_t id : banned) top->insert(special_.banned, id);
  return found;
}

}  // namespace runtime
