import pytest

from hostagent.units import SizeError, format_mib, parse_mib


@pytest.mark.parametrize("text,mib", [("512M", 512), ("1G", 1024), ("1.5G", 1536), ("2t", 2 * 1024 * 1024),
                                      ("300", 300), ("1GiB", 1024), (" 64 M ", 64)])
def test_sizes_people_write_are_parsed(text, mib):
    assert parse_mib(text) == mib


@pytest.mark.parametrize("text", ["12Q", "", "-1G", "0", "0.3M", "G", "1e3M", "ten"])
def test_bad_sizes_are_refused_with_examples(text):
    with pytest.raises(SizeError, match="use a number of MiB or a number with a unit, e.g. 512M, 1G"):
        parse_mib(text, "disk size")


def test_sizes_are_rendered_compactly():
    assert [format_mib(v) for v in (512, 1024, 1536, 3 * 1024 * 1024)] == ["512M", "1G", "1.5G", "3T"]
