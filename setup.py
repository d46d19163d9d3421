"""Builds patchfold's optional C loops; everything else is in pyproject.toml.

The extension is optional: where no C compiler is available the install still succeeds and
patchfold uses its numpy loops (same results, slower fold). The loops are written once in the
template headers core/_kernels_fold.h, core/_kernels_unfold.h, core/_kernels_place.h,
core/_kernels_transpose.h and core/_kernels_gather.h, which core/_kernels.c includes
once per type (MANIFEST.in ships them in the sdist).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "patchfold._kernels",
            ["core/_kernels.c"],
            depends=[
                "core/_kernels_fold.h",
                "core/_kernels_unfold.h",
                "core/_kernels_place.h",
                "core/_kernels_transpose.h",
                "core/_kernels_gather.h",
            ],
            extra_compile_args=["-O3", "-std=c11", "-funroll-loops"],
            optional=True,
        ),
    ]
)
