"""The C extensions (mint/data/_lzw.c, mint/data/_resample.c) built with AddressSanitizer and
UBSan and run on random and damaged input in a child process (tests/sanitized_child.py).

Result checks and the guard-page tests see a read past a buffer only where the buffer ends at a
page; a one-byte over-read inside the heap (an undersized scratch buffer, a table index one too
far) reads garbage that may not change a single output. The sanitizers see every such access.
Skipped where gcc and its libasan are not installed (gcc is what CI and most clusters have).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SOURCES = Path(__file__).parents[1] / "mint" / "data"
CFLAGS = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
          "-fno-sanitize-recover=all", "-shared", "-fPIC"]  # fmt: skip


def _libasan(cc: str) -> str:
    """Path of gcc's ASan runtime, or "" (gcc prints the bare name when it has none)."""
    found = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True)
    path = found.stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else ""


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory) -> tuple[Path, str]:
    """Both extensions built with the sanitizers, and the runtime to preload."""
    cc = shutil.which("gcc")
    if cc is None or sys.platform != "linux":
        pytest.skip("needs gcc on Linux")
    libasan = _libasan(cc)
    include = sysconfig.get_paths()["include"]
    if not libasan or not Path(include, "Python.h").is_file():
        pytest.skip("no libasan or no Python.h")
    probe = subprocess.run([sys.executable, "-c", "pass"], env=_sanitizer_env(libasan),
                           capture_output=True, text=True)  # fmt: skip
    if probe.returncode != 0:  # e.g. a kernel whose address layout gcc's ASan cannot shadow
        pytest.skip(f"ASan cannot run a Python here: {probe.stderr.strip()[:200]}")
    out = tmp_path_factory.mktemp("sanitized")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for name in ("_lzw", "_resample"):
        subprocess.run([cc, *CFLAGS, f"-I{include}", str(SOURCES / f"{name}.c"),
                        "-o", str(out / f"{name}{suffix}"), "-lm"], check=True)  # fmt: skip
    return out, libasan


def _sanitizer_env(libasan: str) -> dict[str, str]:
    return dict(
        os.environ,
        LD_PRELOAD=libasan,  # ASan must come first: python itself is not instrumented
        PYTHONMALLOC="malloc",  # every object its own allocation, not in a pymalloc arena
        ASAN_OPTIONS="detect_leaks=0",  # the interpreter leaves its own objects at exit
        UBSAN_OPTIONS="print_stacktrace=1",
        PYTHONPATH=str(HERE),
    )


def _run_child(build: Path, libasan: str, trials: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(HERE / "sanitized_child.py"), str(build), str(trials)]
    return subprocess.run(cmd, env=_sanitizer_env(libasan), capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def test_no_out_of_bounds_access_or_undefined_behaviour(sanitized):
    build, libasan = sanitized
    done = _run_child(build, libasan, trials=3000)
    report = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, report
    assert "resampler calls checked:" in done.stdout, report
    assert "lzw streams decoded, refused:" in done.stdout, report
