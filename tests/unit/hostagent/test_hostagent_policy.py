"""The cluster's instance policy: parsed with every problem named, and each bound an instance breaks."""

from __future__ import annotations

from hostagent.master.decide import policy


def test_bounds_are_parsed_sizes_and_counts_and_an_empty_value_lifts_one():
    problems: list[str] = []
    assert policy.parse({"max_memory": "4G", "min_vcpus": 1, "max_disks": 4, "max_disk_size": "100G",
                         "min_memory": ""}, problems) == \
        {"max_memory_mib": 4096, "min_vcpus": 1, "max_disks": 4, "max_disk_mib": 102400}
    assert problems == []
    policy.parse({"max_memory": "lots", "max_vcpus": 0, "speed": 3, "min_vcpus": 4}, problems)
    assert any("max_memory" in p for p in problems) and any("unknown bound 'speed'" in p for p in problems)
    assert any("max_vcpus: 0 is not a whole number" in p for p in problems)


def test_violations_name_the_bound():
    bounds = {"max_memory_mib": 1024, "max_vcpus": 2, "max_disks": 1, "max_disk_mib": 2048, "min_memory_mib": 128}
    assert policy.violations(512, 2, [1024], bounds) == []
    found = policy.violations(2048, 4, [1024, 4096], bounds)
    assert len(found) == 4 and "memory 2G is above the cluster's policy maximum 1G" in found[0]
    assert "a disk of 4G is above the cluster's policy maximum disk size 2G" in found[3]
    assert "below the cluster's policy minimum 128M" in policy.violations(64, 1, [], bounds)[0]
