"""The compiled parts of mint; everything else about the package is in pyproject.toml.

Two C extensions of the slide reader, each optional: without a C compiler (or Python's
headers) the install goes on and a library does the same work, more slowly.

* ``mint.data._lzw`` decodes the LZW tiles of HEST's slides (why a decoder of our own: the
  header of mint/data/_lzw.c); without it imagecodecs does, about half as fast, and ``mint
  tile``'s log says which decoder ran.
* ``mint.data._resample`` is the bilinear pass that places each patch (why: the header of
  mint/data/_resample.c); without it OpenCV's warp does, 2-3.5x slower per patch.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("mint.data._lzw", sources=["mint/data/_lzw.c"], optional=True),
        Extension("mint.data._resample", sources=["mint/data/_resample.c"], optional=True),
    ]
)
