// The runtime's Transformer: OpenNMT-py 3.5.1's pre-norm encoder and cached decoder steps on the export's
// float32 weights (onmt_lma/deploy/native.py documents their names), the search's model (../search.h).
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "../search.h"
#include "layers.h"

namespace runtime {

class Model {
 public:
  // config: dim, heads, vocab, eps, bos, eos, unk, src_pad, banned_score; threads (0: one per core)
  Model(const Weights& weights, const std::map<std::string, double>& config, const std::string& activation,
        Isa isa);

  // n_best (score, target ids) per source line, best first: search::beam_search, at most max_steps tokens
  std::vector<std::vector<search::Hypothesis>> translate(const std::vector<std::vector<int64_t>>& sources,
                                                         const search::Decoding& decoding, int64_t max_steps);
  // teacher forcing: (sum of the log-probabilities of each target's ids, which end with the end token, their count)
  std::pair<double, int64_t> score(const std::vector<std::vector<int64_t>>& sources,
                                   const std::vector<std::vector<int64_t>>& targets);

  // the search's model interface (search.h)
  void begin(const std::vector<std::vector<int64_t>>& sources, int64_t rows_per_source, int64_t capacity);
  void top_k(const std::vector<int64_t>& tokens, int64_t step, int64_t k, const std::vector<int64_t>& banned,
             std::vector<float>* values, std::vector<int64_t>* ids);
  void keep(const std::vector<int64_t>& from);
  int64_t vocab() const { return vocab_; }

  std::map<std::string, double> profile() const { return profile_; }
  Isa isa() const { return isa_; }
  int threads() const { return pool_.size(); }

 private:
  using Clock = std::chrono::steady_clock;
  static double seconds(Clock::time_point since) {
    return std::chrono::duration<double>(Clock::now() - since).count();
  }
  Linear linear(const Weights& weights, const std::string& name) const;
  Norm norm(const Weights& weights, const std::string& name) const;
  FeedForward feed_forward(const Weights& weights, const std::string& p) const;
  void ffn(const FeedForward& f, float* x, int64_t rows);
  void project_add(const Linear& projection, const float* input, float* x, int64_t rows);
  void attend(const float* q, const float* keys, const float* values, int64_t length, int64_t stride, float* out,
              std::vector<float>& scores) const;
  void encode(const std::vector<std::vector<int64_t>>& sources);
  void allocate(int64_t rows, int64_t capacity);
  void reorder_caches(const std::vector<int64_t>& from, int64_t length);
  const float* decoder_step(int64_t rows, int64_t step, const int64_t* tokens, const int64_t* sentence_of_row);
  struct LogSoftmax {
    float max = 0, log_sum = 0;
    float at(float logit) const { return (logit - max) - log_sum; }
  };
  LogSoftmax log_softmax(const float* row, TopK* top, const std::vector<int64_t>& banned) const;

  Isa isa_;
  const Kernels& kernels_;
  mutable ThreadPool pool_;
  int64_t dim_ = 0, heads_ = 0, head_dim_ = 0, vocab_ = 0, source_vocab_ = 0, positions_count_ = 0, source_pad_ = 1;
  float eps_ = 1e-6f;
  Kind kind_ = Kind::ReLU;
  search::Special special_{0, 0, 0, 0.0f};
  std::vector<float> src_embeddings_, tgt_embeddings_, positions_;
  std::vector<EncoderLayer> encoder_;
  std::vector<DecoderLayer> decoder_;
  Norm encoder_norm_, decoder_norm_;
  Linear generator_;
  // per batch: the sources' lengths, the memory's keys and values per decoder layer, the step's buffers
  std::vector<int64_t> source_lengths_;
  int64_t source_length_ = 1, capacity_ = 0, units_ = 0;
  std::vector<std::vector<float>> memory_keys_, memory_values_, keys_, values_, spare_keys_, spare_values_;
  std::vector<float> x_, normed_, qkv_, context_, projected_, queries_, hidden_, logits_;
  // the search's state: hypotheses, the source each reads, the positions they hold
  int64_t rows_ = 0, length_ = 0;
  std::vector<int64_t> sentence_of_row_;
  std::vector<TopK> tops_;
  // onmt_lma.deploy.search.PROFILE_KEYS
  std::map<std::string, double> profile_ = {{"encoder_s", 0}, {"decoder_s", 0}, {"search_s", 0}, {"steps", 0}, {"sentences", 0}};
};

}  // namespace runtime
