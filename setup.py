"""Build the Cython core.

MMEMU_DEBUG=1 builds with Cython bounds checking and C assertions on, for the
test run that hunts for out-of-bounds access in the core.
"""
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("MMEMU_DEBUG", "") not in ("", "0")

directives = {
    "language_level": "3",
    "boundscheck": debug,
    "wraparound": False,
    "initializedcheck": debug,
    "cdivision": True,
    "embedsignature": True,
}
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
if not debug:
    macros.append(("NDEBUG", None))

extensions = [
    Extension(
        f"mmemu.{name}",
        [f"mmemu/{name}.pyx"],
        include_dirs=[np.get_include()],
        define_macros=macros,
        # Python's own CFLAGS define NDEBUG: the debug build takes it back so that C assert()s hold
        extra_compile_args=["-O0", "-g", "-UNDEBUG"] if debug else ["-O3"],
    )
    for name in ("_core", "_host", "_buddy")
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives))
