"""The one safe-name pattern: path components that cannot escape or split a shell word."""

import pytest

from mint.errors import MintError
from mint.safe import check_inside, check_name


@pytest.mark.parametrize(
    "name", ["TENX95", "NCBI783", "MEND139", "mint-no-dino", "uni2-h", "a.b_c"]
)
def test_real_names_pass(name):
    assert check_name(name, "sample id", "metadata.csv") == name


@pytest.mark.parametrize(
    "name", ["../../../ESCAPED", "..", ".hidden", "-rf", "a b", "x'$(touch PWNED)'", "a/b", "", 7]
)
def test_bad_input_unsafe_names_refused(name):
    with pytest.raises(MintError, match="metadata.csv: sample id .* is not a safe name"):
        check_name(name, "sample id", "metadata.csv")


def test_bad_input_path_outside_root(tmp_path):
    (tmp_path / "a").mkdir()
    assert check_inside(tmp_path / "a" / "f", tmp_path, "x") == (tmp_path / "a" / "f").resolve()
    with pytest.raises(MintError, match="lies outside"):
        check_inside(tmp_path / "a" / ".." / ".." / "f", tmp_path, "x")
