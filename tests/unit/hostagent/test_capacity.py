"""Corral's capacity planner (hostagent.master.decide.capacity) against hspace's own answers on the same htools
files.

Known answers: what Debian's hspace 3.0.2 printed (`hspace -t FILE --standard-alloc=DISK,MEM,CPU,SPINDLES
--disk-template=T --machine-readable`, SPINDLES the std spec's spindle use: HTS_ALLOC_INSTANCES and
HTS_ALLOC_FAIL_REASON) for the bundled cluster and data sets of its ganeti-testsuite. The live test runs hspace
again when it is installed (make test installs it).
"""

import re
import subprocess
from pathlib import Path

import pytest
from ganeti_data import HTOOLS_DATA, htool, unavailable

from hostagent.master.decide import htools
from hostagent.master.decide.capacity import capacity, redundant, standard_spec
from hostagent.master.decide.balance import rules_of
from hostagent.master.decide.htools import ISpec
from hostagent.master.decide.htools_search import Search

BUNDLED = Path(__file__).resolve().parents[2] / "data" / "htools"

# (file, template, (memory, disk, vcpus) or None for the policy's std spec) -> hspace's count and reason
KNOWN = {
    ("corral-unbalanced.data", "drbd", (1024, 10240, 1)): (23, "FailMem"),
    ("corral-unbalanced.data", "plain", (1024, 10240, 1)): (23, "FailN1"),
    ("clean-nonzero-score.data", "drbd", None): (48, "FailDisk"),
    ("hbal-location-1.data", "drbd", (1024, 10240, 1)): (36, "FailMem"),
    ("hroller-online.data", "drbd", (1024, 10240, 1)): (61, "FailDisk"),
    ("hroller-online.data", "plain", (1024, 10240, 1)): (122, "FailDisk"),
    ("multiple-master.data", "drbd", (1024, 10240, 1)): (48, "FailDisk"),
    ("multiple-master.data", "plain", (1024, 10240, 1)): (96, "FailDisk"),
    ("partly-used.data", "drbd", (1024, 10240, 1)): (51, "FailDisk"),
    ("partly-used.data", "plain", (1024, 10240, 1)): (57, "FailN1"),
    ("hbal-location-2.data", "drbd", (1024, 10240, 1)): (1, "FailMem"),
    ("hbal-location-2.data", "plain", (1024, 10240, 1)): (0, "FailN1"),
    # node-01 reports 2 GiB more free than its record leaves: the checks take the smaller (unallocated memory)
    ("hbal-migration-1.data", "drbd", None): (38, "FailMem"),
    ("hbal-migration-2.data", "drbd", None): (38, "FailMem"),
    ("hbal-migration-3.data", "drbd", None): (38, "FailMem"),
    ("hbal-migration-1.data", "plain", None): (0, "FailN1"),
    # no ipolicy line: Ganeti's default vCPU ratio 4.0 holds node-4 (1 CPU) to 3 new primaries
    ("hbal-location-exclusion.data", "drbd", None): (32, "FailMem"),
    ("hbal-location-exclusion.data", "plain", None): (43, "FailN1"),
    # exclusive storage: each disk takes the spec's spindles from the node's free ones (hspace with
    # --standard-alloc=DISK,MEM,CPU,SPINDLES, the std spec's spindle use)
    ("hspace-tiered-exclusive.data", "drbd", None): (4, "FailMem"),
    ("hspace-tiered-exclusive.data", "plain", None): (4, "FailMem"),
    ("hspace-tiered-dualspec-exclusive.data", "drbd", None): (8, "FailDisk"),
    ("hspace-tiered-dualspec-exclusive.data", "plain", None): (10, "FailN1"),
}


def load(name: str) -> htools.HtoolsCluster:
    path = BUNDLED / name if (BUNDLED / name).exists() else HTOOLS_DATA / name
    if not path.exists():
        unavailable(f"Debian's ganeti-testsuite data sets are not there (no {path})")
    return htools.read_text(path.read_text())


def spec_of(cluster: htools.HtoolsCluster, size: tuple[int, int, int] | None) -> ISpec:
    std = standard_spec(cluster)
    if size is None:
        return std
    memory, disk, vcpus = size
    return ISpec(memory, vcpus, disk, 1, 1, std.spindle_use)


@pytest.mark.parametrize("name, template, size", sorted(KNOWN, key=str))
def test_as_many_fit_as_hspace_says_and_for_the_same_reason(name, template, size):
    cluster = load(name)
    found = capacity(cluster, spec_of(cluster, size), template)
    assert (found.count, found.reason) == KNOWN[(name, template, size)]
    assert sum(found.primaries.values()) == found.count


def test_nothing_fits_while_a_node_fails_n_plus_1_already():
    found = capacity(load("n1-failure.data"), ISpec(1024, 1, 10240, 1, 1, 1), "drbd")
    assert (found.count, found.reason) == (0, "FailN1")


def test_a_placement_must_leave_every_node_evacuable():
    cluster = load("corral-unbalanced.data")
    state = Search(cluster, None)
    rules = {g.uuid: rules_of(cluster, g) for g in cluster.groups}
    assert redundant(state, rules)
    found = capacity(cluster, ISpec(1024, 1, 10240, 1, 1, 1), "plain")
    # the next plain instance fits on some node's memory and disk, but no placement leaves every node evacuable
    assert found.reason == "FailN1" and found.failures["FailN1"] >= 1 and found.failures["FailN1"] > \
        found.failures["FailMem"]


def test_a_spec_outside_the_policy_fits_nowhere():
    cluster = load("corral-unbalanced.data")
    found = capacity(cluster, ISpec(1 << 20, 1, 10240, 1, 1, 1), "drbd")
    assert (found.count, found.reason) == (0, "FailMem")


# hspace also runs its tiered allocation each time: these files keep that under a few seconds
LIVE = [("corral-unbalanced.data", (2048, 20480, 2)), ("hspace-tiered-vcpu.data", None),
        ("hbal-excl-tags.data", (1024, 10240, 1)), ("hspace-tiered-ipolicy.data", None)]


@pytest.mark.parametrize("name, size", LIVE, ids=[n for n, _ in LIVE])
@pytest.mark.parametrize("template", ["drbd", "plain"])
def test_the_count_and_reason_are_hspaces_run_now(name, size, template):
    if not htool("hspace"):
        unavailable("ganeti-htools-3.0 is not installed")
    cluster = load(name)
    spec = spec_of(cluster, size)
    path = BUNDLED / name if (BUNDLED / name).exists() else HTOOLS_DATA / name
    out = subprocess.run([htool("hspace"), "-t", str(path), "--machine-readable", f"--disk-template={template}",
                          f"--standard-alloc={spec.disk_mib},{spec.memory_mib},{spec.cpus},{spec.spindle_use}"],
                         capture_output=True, text=True, timeout=120).stdout
    count, reason = re.search(r"HTS_ALLOC_INSTANCES=(\d+)", out), re.search(r"HTS_ALLOC_FAIL_REASON=(\S+)", out)
    assert count and reason, out
    found = capacity(cluster, spec, template)
    assert (found.count, found.reason.upper()) == (int(count[1]), reason[1])
