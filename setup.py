"""Builds patchfold's optional C loops; everything else is in pyproject.toml.

The extension is optional: where no C compiler is available the install still succeeds and
patchfold uses its numpy loops (same results, slower fold).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "patchfold._kernels",
            ["core/_kernels.c"],
            extra_compile_args=["-O3", "-std=c11", "-funroll-loops"],
            optional=True,
        ),
    ]
)
