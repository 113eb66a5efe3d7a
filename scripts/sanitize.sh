#!/usr/bin/env bash
# Builds pyconv._C with AddressSanitizer + UndefinedBehaviorSanitizer into a private copy of the
# package (the normal install is untouched) and runs a fast representative subset of the CPU tests
# under it. Any report fails: ASan aborts by default, UBSan is built with -fno-sanitize-recover.
#   bash scripts/sanitize.sh            (uses the active python; PYCONV_SANITIZE_DIR to keep the build)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python}
OUT=${PYCONV_SANITIZE_DIR:-$ROOT/build/sanitize}
PKG=$OUT/pkg

# The build tools (pip builds the normal install in an isolated env, so they may be missing here).
"$PY" -c "import pybind11, cmake, ninja" 2>/dev/null || "$PY" -m pip install -q pybind11 cmake ninja setuptools

# A private package tree: the sources, the test files, and (below) the sanitized extension.
mkdir -p "$PKG"
rm -rf "$PKG/pyconv" "$PKG/tests"
cp -r "$ROOT/pyconv" "$PKG/pyconv"
rm -f "$PKG"/pyconv/_C*.so
rm -rf "$PKG/pyconv/kernels" && cp -r "$ROOT/kernels" "$PKG/pyconv/kernels"
cp -r "$ROOT/tests" "$PKG/tests"

# Debug-ish optimization keeps the build short on 2 cores and the reports readable.
PYCONV_SANITIZE=address,undefined PYCONV_NO_CUDA=1 PYCONV_BUILD_TYPE=RelWithDebInfo \
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
  "$PY" setup.py -q build_ext --build-temp "$OUT/tmp" --build-lib "$PKG" >"$OUT/build.log" 2>&1 \
  || { tail -50 "$OUT/build.log"; echo "sanitize.sh: build failed" >&2; exit 1; }
ls "$PKG"/pyconv/_C.*so >/dev/null

ASAN_LIB=$(gcc -print-file-name=libasan.so)
UBSAN_LIB=$(gcc -print-file-name=libubsan.so)
[ -f "$ASAN_LIB" ] || { echo "sanitize.sh: libasan.so not found ($ASAN_LIB)" >&2; exit 1; }

cd "$PKG"  # import pyconv from the private tree, not the checkout or site-packages
export LD_PRELOAD="$ASAN_LIB:$UBSAN_LIB"
# detect_leaks=0: CPython and torch keep allocations alive at exit by design.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYCONV_HYPOTHESIS_PROFILE=default
"$PY" -c "import pyconv, sys; assert pyconv._C.__file__.startswith('$PKG'), pyconv._C.__file__; print('sanitized', pyconv._C.__file__)"
"$PY" -m pytest -q -x -p no:cacheprovider \
  "tests/test_conv2d.py" -k "(grid or table) and cpp" \
  "$@"
# every forward kernel's inference epilogue (residual reads beside the output), depthwise included
"$PY" -m pytest -q -x -p no:cacheprovider tests/test_activation.py -k "cpp"
# the im2col packer's masked vector loads at the edges of x (rows, images, the whole buffer)
"$PY" -m pytest -q -x -p no:cacheprovider tests/test_conv_im2col.py -k "panel or agrees"
"$PY" -m pytest -q -x -p no:cacheprovider \
  tests/test_pool.py tests/test_batch_norm.py tests/test_conv_bn_relu.py tests/test_sizes.py \
  "tests/test_gemm.py" -k "not thread_counts or threads-3"
echo "sanitize.sh: no sanitizer reports"
