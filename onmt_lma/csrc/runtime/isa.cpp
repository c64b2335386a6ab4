#include "isa.h"

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace runtime {

Isa detected_isa() {
#if defined(__x86_64__) && !defined(ONMT_LMA_GENERIC_ONLY)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
#endif
  return Isa::Generic;
}

const char* isa_name(Isa isa) { return isa == Isa::Avx2 ? "AVX2" : "GENERIC"; }

Isa active_isa() {
  static const Isa chosen = [] {
    const Isa best = detected_isa();
    const char* forced = std::getenv("ONMT_LMA_FORCE_CPU_ISA");
    if (forced == nullptr || *forced == '\0') return best;
    const std::string name(forced);
    Isa asked;
    if (name == "GENERIC") {
      asked = Isa::Generic;
    } else if (name == "AVX2") {
      asked = Isa::Avx2;
    } else {
      throw std::invalid_argument("ONMT_LMA_FORCE_CPU_ISA=" + name + ": expected GENERIC or AVX2");
    }
    if (static_cast<int>(asked) > static_cast<int>(best))
      throw std::invalid_argument("ONMT_LMA_FORCE_CPU_ISA=" + name + ": this CPU or build runs at most " +
                                  isa_name(best));
    return asked;
  }();
  return chosen;
}

}  // namespace runtime
