"""The one compiled part of mint; everything else about the package is in pyproject.toml.

``mint.data._lzw`` decodes the LZW tiles of HEST's slides for the direct slide reader (why a
decoder of our own: the header of mint/data/_lzw.c). It is optional: without a C compiler the
install goes on, and imagecodecs decodes those tiles, about half as fast; ``mint tile``'s log
says which decoder ran.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("mint.data._lzw", sources=["mint/data/_lzw.c"], optional=True),
    ]
)
