"""setup.py drives CMake: it builds pyconv._C (and pyconv._C_cuda where nvcc exists) from csrc/."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


def find_nvcc():
    """nvcc's presence decides whether pyconv._C_cuda is built (never whether a GPU is present)."""
    if os.environ.get("PYCONV_NO_CUDA"):
        return None
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.exists(cand):
            return cand
    return None


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        if ext.name in ("pyconv._C_cuda", "pyconv._C_cuda_emu"):
            # Built by the same CMake run as pyconv._C (listed so editable installs copy it).
            if not Path(self.get_ext_fullpath(ext.name)).exists():
                raise RuntimeError(f"CMake did not build {ext.name}")
            return
        import pybind11

        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_temp = Path(self.build_temp) / "cmake"
        build_temp.mkdir(parents=True, exist_ok=True)
        cfg = os.environ.get("PYCONV_BUILD_TYPE", "Release")
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
        ]
        if os.environ.get("PYCONV_SANITIZE"):
            args.append(f"-DPYCONV_SANITIZE={os.environ['PYCONV_SANITIZE']}")
        if find_nvcc():
            args += ["-DPYCONV_REQUIRE_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={find_nvcc()}"]
        else:
            args.append("-DPYCONV_NO_CUDA=ON")
        try:
            import ninja  # noqa: F401

            args.append("-GNinja")
        except ImportError:
            pass
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_temp, check=True)
        subprocess.run(["cmake", "--build", ".", "-j", jobs], cwd=build_temp, check=True)


setup(
    packages=["pyconv", "pyconv.ops", "pyconv.backends", "pyconv.bench", "pyconv.kernels",
              "pyconv.kernels.cpu", "pyconv.kernels.cuda"],
    package_dir={"pyconv": "pyconv", "pyconv.kernels": "kernels"},
    ext_modules=[CMakeExtension("pyconv._C"), CMakeExtension("pyconv._C_cuda_emu")] + ([CMakeExtension("pyconv._C_cuda")] if find_nvcc() else []),
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
