// OpenNMT-py 3.5.1's beam search over any model that gives each hypothesis's best tokens: the C++ twin of
// onmt_lma/deploy/search.py (the reference, which documents the search), held to it step by step by
// tests/test_search.py.  `Decoding` is onmt_lma.deploy.decoding.Decoding field for field (the Python value
// sets every field by name, so a field missing here is an error there).
#pragma once

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace search {

enum class LengthPenalty { None, Avg, Wu };

struct Special {
  int64_t bos, eos, unk;
  float banned;  // the score of a forbidden token and of a closed beam (onmt_lma.deploy.search.BANNED)
};

struct Decoding {
  int64_t beam_size = 5, n_best = 1, max_length = 250, min_length = 0;
  double max_length_ratio = 1.25;  // read by the Python side, which gives the search its max_steps
  LengthPenalty length_penalty = LengthPenalty::Avg;
  double alpha = 1.0;
  bool ban_unk_token = false;
  int64_t block_ngram_repeat = 0;

  // what a finished hypothesis's score is divided by, `length` tokens long (LengthPenalty's __call__)
  float penalty(int64_t length) const {
    switch (length_penalty) {
      case LengthPenalty::Avg: return static_cast<float>(std::pow(static_cast<double>(length), alpha));
      case LengthPenalty::Wu: return static_cast<float>(std::pow((5.0 + length) / 6.0, alpha));
      default: return 1.0f;
    }
  }

  // the ids forbidden to every hypothesis by the step that makes it `length` tokens long (start token included)
  std::vector<int64_t> step_bans(int64_t length, const Special& special) const {
    std::vector<int64_t> banned;
    if (length <= min_length) banned.push_back(special.eos);
    if (ban_unk_token) banned.push_back(special.unk);
    return banned;
  }

  // the ids forbidden to one hypothesis: those that would end an n-gram it holds already (n = block_ngram_repeat)
  std::vector<int64_t> hypothesis_bans(const std::vector<int64_t>& hypothesis) const {
    const int64_t n = block_ngram_repeat, length = static_cast<int64_t>(hypothesis.size());
    std::vector<int64_t> found;
    if (n == 0 || length < n - 1) return found;
    for (int64_t i = 0; i + n - 1 < length; ++i)
      if (std::equal(hypothesis.begin() + i, hypothesis.begin() + i + n - 1, hypothesis.end() - (n - 1)))
        found.push_back(hypothesis[i + n - 1]);
    std::sort(found.begin(), found.end());
    found.erase(std::unique(found.begin(), found.end()), found.end());
    return found;
  }
};

inline void bind_decoding(pybind11::module_& m) {
  pybind11::enum_<LengthPenalty>(m, "LengthPenalty")
      .value("NONE", LengthPenalty::None)
      .value("AVG", LengthPenalty::Avg)
      .value("WU", LengthPenalty::Wu);
  pybind11::class_<Decoding>(m, "Decoding")
      .def(pybind11::init<>())
      .def_readwrite("beam_size", &Decoding::beam_size)
      .def_readwrite("n_best", &Decoding::n_best)
      .def_readwrite("max_length", &Decoding::max_length)
      .def_readwrite("min_length", &Decoding::min_length)
      .def_readwrite("max_length_ratio", &Decoding::max_length_ratio)
      .def_readwrite("length_penalty", &Decoding::length_penalty)
      .def_readwrite("alpha", &Decoding::alpha)
      .def_readwrite("ban_unk_token", &Decoding::ban_unk_token)
      .def_readwrite("block_ngram_repeat", &Decoding::block_ngram_repeat);
}

// each row's `beam` best of the model's, `banned` (every row's) left out; those the row's own bans forbid asked
// for on top, then scored special.banned and ranked again (value desc, id asc)
template <class Model>
void top_k(Model& model, const std::vector<int64_t>& tokens, int64_t step, const Decoding& d,
           const std::vector<int64_t>& banned, const std::vector<std::vector<int64_t>>& history, const Special& special,
           std::vector<float>* values, std::vector<int64_t>* ids) {
  const int64_t beam = d.beam_size, rows = static_cast<int64_t>(tokens.size());
  std::vector<std::vector<int64_t>> repeats(rows);
  size_t extra = 0;
  for (int64_t r = 0; r < rows; ++r) repeats[r] = d.hypothesis_bans(history[r]), extra = std::max(extra, repeats[r].size());
  if (extra == 0) return model.top_k(tokens, step, beam, banned, values, ids);
  const int64_t k = std::min<int64_t>(beam + static_cast<int64_t>(extra), model.vocab());
  std::vector<float> wide_values;
  std::vector<int64_t> wide_ids;
  model.top_k(tokens, step, k, banned, &wide_values, &wide_ids);
  values->resize(rows * beam), ids->resize(rows * beam);
  std::vector<std::pair<float, int64_t>> row(k);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t id = wide_ids[r * k + j];
      const bool repeated = std::binary_search(repeats[r].begin(), repeats[r].end(), id);
      row[j] = {repeated ? special.banned : wide_values[r * k + j], id};
    }
    std::stable_sort(row.begin(), row.end(), [](const auto& x, const auto& y) {
      return x.first > y.first || (x.first == y.first && x.second < y.second);
    });
    for (int64_t j = 0; j < beam; ++j) (*values)[r * beam + j] = row[j].first, (*ids)[r * beam + j] = row[j].second;
  }
}

using Hypothesis = std::pair<float, std::vector<int64_t>>;  // (penalized score, ids without the start token)

// `model.top_k(tokens, step, k, banned, values, ids)`: one token into each alive hypothesis, each row's k best
// (value desc, id asc; banned ids at special.banned) into values/ids (rows x k); `model.keep(rows)`: its state
// carried over to those rows of the last step, in that order; `model.vocab()`.
template <class Model>
std::vector<std::vector<Hypothesis>> beam_search(Model& model, int64_t count, const Decoding& d, int64_t max_steps,
                                                 const Special& special) {
  const int64_t beam = d.beam_size, vocab = model.vocab();
  int64_t rows = count * beam;
  std::vector<int64_t> tokens(rows, special.bos), offsets(count), parents(rows), best(rows), ids;
  std::vector<std::vector<int64_t>> history(rows);
  std::vector<float> beam_scores(rows, -std::numeric_limits<float>::infinity()), top_scores(rows), values;
  for (int64_t i = 0; i < count; ++i) beam_scores[i * beam] = 0.0f, offsets[i] = i;
  std::vector<std::vector<Hypothesis>> hypotheses(count), results(count);
  struct Candidate { float score; int64_t position; };
  std::vector<Candidate> candidates(beam * beam);
  for (int64_t step = 0; step < max_steps; ++step) {
    const int64_t length = step + 1, groups = rows / beam;
    top_k(model, tokens, step, d, d.step_bans(length, special), history, special, &values, &ids);
    const float penalty = d.penalty(length + 1);
    for (int64_t i = 0; i < groups; ++i) {
      for (int64_t b = 0; b < beam; ++b) {
        const int64_t r = i * beam + b;
        for (int64_t j = 0; j < beam; ++j) {
          const float candidate = values[r * beam + j] + beam_scores[r];
          candidates[b * beam + j] = {penalty != 1.0f ? candidate / penalty : candidate, b * vocab + ids[r * beam + j]};
        }
      }
      std::partial_sort(candidates.begin(), candidates.begin() + beam, candidates.end(),
                        [](const Candidate& x, const Candidate& y) {
                          return x.score > y.score || (x.score == y.score && x.position < y.position);
                        });
      for (int64_t j = 0; j < beam; ++j) top_scores[i * beam + j] = candidates[j].score, best[i * beam + j] = candidates[j].position;
    }
    std::vector<std::vector<int64_t>> grown(rows);
    std::vector<char> finished(rows);
    for (int64_t r = 0; r < rows; ++r) {
      parents[r] = best[r] / vocab + (r / beam) * beam, tokens[r] = best[r] % vocab;
      beam_scores[r] = top_scores[r] * penalty;
      grown[r] = history[parents[r]];
      grown[r].push_back(tokens[r]);
      finished[r] = tokens[r] == special.eos || length == max_steps;
    }
    history.swap(grown);
    std::vector<int64_t> going;
    for (int64_t i = 0; i < groups; ++i) {
      auto& found = hypotheses[offsets[i]];
      for (int64_t j = 0; j < beam; ++j) {
        const int64_t r = i * beam + j;
        if (!finished[r]) continue;
        found.emplace_back(top_scores[r], history[r]);
        beam_scores[r] = special.banned;
      }
      if (finished[i * beam] && static_cast<int64_t>(found.size()) >= d.n_best) {
        auto ranked = found;
        std::stable_sort(ranked.begin(), ranked.end(), [](const auto& x, const auto& y) { return x.first > y.first; });
        ranked.resize(d.n_best);
        results[offsets[i]] = std::move(ranked);
      } else {
        going.push_back(i);
      }
    }
    if (going.empty()) break;
    const int64_t kept_rows = static_cast<int64_t>(going.size()) * beam;
    std::vector<int64_t> from(kept_rows), kept_tokens(kept_rows), kept_offsets;
    std::vector<float> kept_scores(kept_rows);
    std::vector<std::vector<int64_t>> kept_history(kept_rows);
    for (size_t g = 0; g < going.size(); ++g) {
      kept_offsets.push_back(offsets[going[g]]);
      for (int64_t j = 0; j < beam; ++j) {
        const int64_t r = going[g] * beam + j, k = static_cast<int64_t>(g) * beam + j;
        from[k] = parents[r], kept_tokens[k] = tokens[r], kept_scores[k] = beam_scores[r];
        kept_history[k] = std::move(history[r]);
      }
    }
    model.keep(from);
    rows = kept_rows;
    tokens.swap(kept_tokens), beam_scores.swap(kept_scores), history.swap(kept_history), offsets.swap(kept_offsets);
  }
  return results;
}

}  // namespace search
