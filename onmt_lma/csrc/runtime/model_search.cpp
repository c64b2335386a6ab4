// The Model's side of the search (../search.h): begin, top_k, keep; translate and teacher-forced scores.
#include <algorithm>
#include <stdexcept>

#include "model.h"

namespace runtime {

std::vector<std::vector<search::Hypothesis>> Model::translate(const std::vector<std::vector<int64_t>>& sources,
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

void Model::begin(const std::vector<std::vector<int64_t>>& sources, int64_t rows_per_source, int64_t capacity) {
  encode(sources);
  rows_ = static_cast<int64_t>(sources.size()) * rows_per_source;
  allocate(rows_, capacity + 1);
  sentence_of_row_.resize(rows_);
  for (int64_t r = 0; r < rows_; ++r) sentence_of_row_[r] = r / rows_per_source;
}

void Model::top_k(const std::vector<int64_t>& tokens, int64_t step, int64_t k, const std::vector<int64_t>& banned,
                  std::vector<float>* values, std::vector<int64_t>* ids) {
  if (static_cast<int64_t>(tokens.size()) != rows_)
    throw std::invalid_argument("runtime: " + std::to_string(tokens.size()) + " tokens for " + std::to_string(rows_) +
                                " hypotheses");
  if (step + 1 > capacity_) throw std::invalid_argument("runtime: a step past the room begin() made");
  const auto before = Clock::now();
  const float* logits = decoder_step(rows_, step, tokens.data(), sentence_of_row_.data());
  tops_.assign(rows_, TopK{k, {}, {}});
  pool_.parallel_for(rows_, std::max<int64_t>(1, 65536 / vocab_), [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) log_softmax(logits + r * vocab_, &tops_[r], banned);
  });
  values->resize(rows_ * k), ids->resize(rows_ * k);
  for (int64_t r = 0; r < rows_; ++r)
    for (int64_t j = 0; j < k; ++j) (*values)[r * k + j] = tops_[r].values[j], (*ids)[r * k + j] = tops_[r].ids[j];
  length_ = step + 1;
  profile_["decoder_s"] += seconds(before);
  profile_["steps"] += 1;
}

void Model::keep(const std::vector<int64_t>& from) {
  for (int64_t f : from)
    if (f < 0 || f >= rows_) throw std::invalid_argument("runtime: a kept row outside the hypotheses");
  reorder_caches(from, length_);
  std::vector<int64_t> sentences(from.size());
  for (size_t r = 0; r < from.size(); ++r) sentences[r] = sentence_of_row_[from[r]];
  sentence_of_row_.swap(sentences);
  rows_ = static_cast<int64_t>(from.size());
}

std::pair<double, int64_t> Model::score(const std::vector<std::vector<int64_t>>& sources,
                                        const std::vector<std::vector<int64_t>>& targets) {
  const int64_t count = static_cast<int64_t>(sources.size());
  if (static_cast<int64_t>(targets.size()) != count) throw std::invalid_argument("runtime: as many targets as sources");
  encode(sources);
  int64_t longest = 1;
  for (const auto& t : targets) longest = std::max<int64_t>(longest, static_cast<int64_t>(t.size()));
  allocate(count, longest);
  std::vector<int64_t> sentence_of_row(count), tokens(count, special_.bos);
  for (int64_t r = 0; r < count; ++r) sentence_of_row[r] = r;
  double total = 0;
  int64_t counted = 0;
  for (int64_t step = 0; step < longest; ++step) {  // a finished line's later steps are computed, not counted
    const float* logits = decoder_step(count, step, tokens.data(), sentence_of_row.data());
    for (int64_t r = 0; r < count; ++r) {
      const auto& gold = targets[r];
      if (step >= static_cast<int64_t>(gold.size())) continue;
      if (gold[step] < 0 || gold[step] >= vocab_) throw std::invalid_argument("runtime: target id out of the vocabulary");
      const LogSoftmax row = log_softmax(logits + r * vocab_, nullptr, {});
      total += row.at(logits[r * vocab_ + gold[step]]), ++counted;
      tokens[r] = gold[step];
    }
  }
  return {total, counted};
}

}  // namespace runtime
