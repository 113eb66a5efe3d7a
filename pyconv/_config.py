"""Process-wide switches read by the ops layer."""
import os

# Tests set PYCONV_DEBUG_FILL=1: outputs start as NaN and native workspaces as 0xA5 garbage, so an
# element a kernel forgets to write cannot pass by accident.
DEBUG_FILL = os.environ.get("PYCONV_DEBUG_FILL", "0") not in ("", "0")

# PYCONV_ISA=generic|avx2|avx512 runs the native kernels compiled for that instruction set instead
# of the best one the CPU has (never above it); read by pyconv._C at its first call.
ISA_NAMES = ("generic", "avx2", "avx512")  # lowest first, as csrc/cpu/isa.h's Isa
if os.environ.get("PYCONV_ISA", "") not in ("",) + ISA_NAMES:
    import warnings
    warnings.warn(f"PYCONV_ISA={os.environ['PYCONV_ISA']!r} is not one of {ISA_NAMES}: ignored, the kernels "
                  f"use the best instruction set this CPU has", RuntimeWarning, stacklevel=2)
