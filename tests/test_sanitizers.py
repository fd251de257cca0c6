"""The C extensions (mint/data/_lzw.c, mint/data/_resample.c) built with AddressSanitizer and
UBSan and run on random and damaged input in a child process (tests/sanitized_child.py).

Result checks and the guard-page tests see a read past a buffer only where the buffer ends at a
page; a one-byte over-read inside the heap (an undersized scratch buffer, a table index one too
far) reads garbage that may not change a single output. The sanitizers see every such access,
and LeakSanitizer an allocation of ours never freed. Skipped where gcc and its libasan are not
installed (gcc is what CI and most clusters have) or ASan cannot start a Python.
"""

from __future__ import annotations

import os
import platform
import re
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
def sanitized(tmp_path_factory) -> tuple[Path, list[str], dict[str, str]]:
    """Both extensions built with the sanitizers, and how to start a Python that loads them:
    the command prefix and the environment."""
    cc = shutil.which("gcc")
    if cc is None or sys.platform != "linux":
        pytest.skip("needs gcc on Linux")
    libasan = _libasan(cc)
    include = sysconfig.get_paths()["include"]
    if not libasan or not Path(include, "Python.h").is_file():
        pytest.skip("no libasan or no Python.h")
    prefix, env = _no_aslr(), _sanitizer_env(libasan)
    try:
        probe = subprocess.run([*prefix, sys.executable, "-c", "pass"], env=env,
                               capture_output=True, text=True, timeout=60)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.skip("ASan hangs starting a Python here")
    if probe.returncode != 0:  # e.g. a kernel whose address layout gcc's ASan cannot shadow
        pytest.skip(f"ASan cannot run a Python here: {probe.stderr.strip()[:200]}")
    out = tmp_path_factory.mktemp("sanitized")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for name in ("_lzw", "_resample"):
        subprocess.run([cc, *CFLAGS, f"-I{include}", str(SOURCES / f"{name}.c"),
                        "-o", str(out / f"{name}{suffix}"), "-lm"], check=True)  # fmt: skip
    return out, prefix, env


def _no_aslr() -> list[str]:
    """Run the child without address randomisation where setarch can: gcc 12's ASan loops
    forever at start-up, at random, under the 32-bit mmap randomisation of newer kernels."""
    setarch = shutil.which("setarch")
    if setarch is None:
        return []
    cmd = [setarch, platform.machine(), "-R"]
    ok = subprocess.run([*cmd, "true"], capture_output=True).returncode == 0
    return cmd if ok else []


def _sanitizer_env(libasan: str) -> dict[str, str]:
    return dict(
        os.environ,
        LD_PRELOAD=libasan,  # ASan must come first: python itself is not instrumented
        PYTHONMALLOC="malloc",  # every object its own allocation, not in a pymalloc arena
        # leaks are reported (the interpreter's own too, at exit) but do not set the exit code;
        # the test looks for ours in the report
        ASAN_OPTIONS="detect_leaks=1",
        LSAN_OPTIONS="exitcode=0",
        UBSAN_OPTIONS="print_stacktrace=1",
        PYTHONPATH=str(HERE),
    )


#: a stack frame of a sanitizer report in mint's C code ("    #3 0x... in plan_groups
#: .../_resample.c:144" or, unsymbolised, "(.../_resample.cpython-311-x86_64-linux-gnu.so+0x...)")
OUR_FRAME = re.compile(r"^\s*#\d+ .*(_resample|_lzw)[.c]", re.M)


def test_no_out_of_bounds_access_leak_or_undefined_behaviour(sanitized):
    build, prefix, env = sanitized
    cmd = [*prefix, sys.executable, str(HERE / "sanitized_child.py"), str(build), "3000"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    report = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, report
    assert "resampler calls checked:" in done.stdout, report
    assert "lzw streams decoded, refused:" in done.stdout, report
    leaks = (
        done.stderr[done.stderr.find("LeakSanitizer") :] if "LeakSanitizer" in done.stderr else ""
    )
    ours = OUR_FRAME.findall(leaks)
    assert not ours, leaks[:4000]
