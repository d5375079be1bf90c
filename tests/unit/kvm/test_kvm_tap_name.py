import pytest

from kvm.tap import tap_mac, tap_name


def test_tap_name_is_deterministic_and_fits_linux_limit():
    name = tap_name("a-very-long-instance-name.example.com", 999)
    assert name == tap_name("a-very-long-instance-name.example.com", 999)
    assert len(name) <= 15
    assert name.startswith("crl")


def test_tap_names_differ_per_instance_and_nic():
    names = {tap_name(i, n) for i in ("web1", "web2") for n in (0, 1)}
    assert len(names) == 4


def test_tap_name_rejects_out_of_range_index():
    with pytest.raises(ValueError):
        tap_name("web1", 1000)


def test_tap_mac_differs_from_guest_mac_in_first_octet():
    assert tap_mac("52:54:00:12:34:56") == "fe:54:00:12:34:56"
