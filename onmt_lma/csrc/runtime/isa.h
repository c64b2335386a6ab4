// The CPU instruction sets the runtime has kernels for, chosen once per process: the best this CPU runs, or
// the one ONMT_LMA_FORCE_CPU_ISA names (GENERIC, AVX2; never one the CPU lacks), as CTranslate2's
// CT2_FORCE_CPU_ISA.  Every kernel has a generic path, plain C++ that any compiler builds for any CPU.
#pragma once

namespace runtime {

enum class Isa { Generic, Avx2 };

Isa detected_isa();  // the best this CPU and this build run
Isa active_isa();    // detected_isa(), or the forced one; throws std::invalid_argument on a bad value
const char* isa_name(Isa isa);

}  // namespace runtime
