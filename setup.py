"""Build script: setuptools + CMake/ninja/pybind11 for the C++ trajectory store (``cxrl._C``).

``benchmarks/`` (top level in the repository) is installed as ``cxrl.benchmarks``.
``CXRL_BUILD_EXT=0`` skips the extension for a pure-Python install; ``cxrl.backend_report()`` then
says the C++ store is inactive and why. Any other build failure fails the install with a message that
says what is missing.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: Path):
        super().__init__(name, sources=[])
        self.source_dir = str(source_dir)


def _missing_tool_message(what: str, hint: str) -> str:
    return (
        f"\n\ncxrl: cannot build the C++ extension cxrl._C: {what}.\n{hint}\n"
        "To install without the extension (pure-Python trajectory store, slower), set CXRL_BUILD_EXT=0.\n"
    )


class CMakeBuild(build_ext):
    def run(self):
        if os.environ.get("CXRL_BUILD_EXT", "1") == "0":
            print("cxrl: CXRL_BUILD_EXT=0 -> skipping the C++ extension", file=sys.stderr)
            return
        super().run()

    def build_extension(self, ext: CMakeExtension):
        cmake = shutil.which("cmake")
        if cmake is None:
            try:  # the `cmake` wheel from build-system.requires puts it here
                import cmake as cmake_pkg

                cmake = os.path.join(cmake_pkg.CMAKE_BIN_DIR, "cmake")
            except ImportError:
                raise RuntimeError(_missing_tool_message("CMake was not found", "Install it: `pip install cmake` or `apt-get install cmake`."))
        compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
        if compiler is None:
            raise RuntimeError(_missing_tool_message("no C++17 compiler (c++, g++ or clang++) on PATH", "Install one: `apt-get install g++` (Debian/Ubuntu) or Xcode command line tools (macOS)."))
        try:
            import pybind11
        except ImportError:
            raise RuntimeError(_missing_tool_message("pybind11 is not importable", "Install it: `pip install pybind11`."))

        ext_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_temp = Path(self.build_temp).resolve() / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        cfg = "Debug" if self.debug else "Release"
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={ext_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DCMAKE_CXX_COMPILER={compiler}",
        ]
        if shutil.which("ninja") or _ninja_from_wheel():
            args += ["-G", "Ninja"]
            ninja = shutil.which("ninja") or _ninja_from_wheel()
            args += [f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        try:
            subprocess.run([cmake, ext.source_dir, *args], cwd=build_temp, check=True)
            subprocess.run([cmake, "--build", ".", "--config", cfg, "-j", str(os.cpu_count() or 2)], cwd=build_temp, check=True)
        except subprocess.CalledProcessError as err:
            raise RuntimeError(_missing_tool_message(f"the CMake build failed ({err})", "Read the compiler output above.")) from err


def _ninja_from_wheel():
    try:
        import ninja

        path = os.path.join(ninja.BIN_DIR, "ninja")
        return path if os.path.exists(path) else None
    except (ImportError, AttributeError):
        return None


# benchmarks/ lives at the top of the repository and installs as cxrl.benchmarks. The Triton kernels live inside
# the package (cxrl/kernels/): a top-level kernels/ shadowed Hugging Face's `kernels` (a dependency of transformers
# >= 5.x) for anything run from the repository root, and `import transformers` then failed.
packages = find_packages(include=["cxrl", "cxrl.*"]) + ["cxrl.benchmarks"]

setup(
    packages=packages,
    package_dir={"cxrl.benchmarks": "benchmarks"},
    package_data={"cxrl": ["assets/**/*", "assets/*", "configs/*.yaml"]},
    include_package_data=True,
    ext_modules=[CMakeExtension("cxrl._C", ROOT)],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
