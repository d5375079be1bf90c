"""hbal's cluster score (hostagent.master.decide.htools_score) against Debian's real htools 3.0.2.

The expected values were measured once with Debian 12's hbal and hinfo
(ganeti-htools-3.0 3.0.2-3) on the data sets of its ganeti-testsuite package:
`hbal -t FILE -l 0 -G GROUP -v -v -v` prints "Initial coefficients: overall X"
and each term, `hinfo -t FILE` prints "Cluster score: X" over every node. The
live tests run the same commands again when the tools are installed.
"""

import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from ganeti_data import HTOOLS_DATA, htool, unavailable

from hostagent.master.decide import htools
from hostagent.master.decide.htools_score import TERMS, format_score, score, score_terms

BUNDLED_DIR = Path(__file__).resolve().parents[2] / "data" / "htools"
DEBIAN_DIR = HTOOLS_DATA  # Debian's ganeti-testsuite

# hbal's "Initial score" per (file, group with nodes) of the Debian data sets; hbal loads but does not score
# a cluster without instances ("Cluster is empty, exiting"), nor invalid-node.data (an unknown node).
HBAL = {
    ("clean-nonzero-score.data", "group-01"): "1.91573994",
    ("common-suffix.data", "default"): "2.20849373",
    ("hbal-cpu-speed.data", "group-01"): "0.77083333",
    ("hbal-desiredlocation-1.data", "group-01"): "2.60937500",
    ("hbal-desiredlocation-2.data", "group-01"): "5.13014453",
    ("hbal-desiredlocation-3.data", "group-01"): "4.12221395",
    ("hbal-desiredlocation-4.data", "group-01"): "3.60937500",
    ("hbal-dyn.data", "group-01"): "4.00000000",
    ("hbal-evac.data", "group-01"): "46.94539253",
    ("hbal-excl-tags.data", "group-01"): "3.67187500",
    ("hbal-forth.data", "default"): "0.05339306",
    ("hbal-location-1.data", "group-01"): "4.06250000",
    ("hbal-location-2.data", "group-01"): "3.39869220",
    ("hbal-location-exclusion.data", "group-01"): "2.98249548",
    ("hbal-migration-1.data", "group-01"): "10.13359773",
    ("hbal-migration-2.data", "group-01"): "10.13359773",
    ("hbal-migration-3.data", "group-01"): "10.13359773",
    ("hbal-soft-errors.data", "default"): "39.36461987",
    ("hbal-soft-errors2.data", "default"): "3.21875000",
    ("hbal-split-insts.data", "group-01"): "0.00585938",
    ("hbal-split-insts.data", "group-02"): "0.00195312",
    ("hroller-full.data", "group-01"): "0.00294054",
    ("hroller-nodegroups.data", "group-01"): "0.00000000",
    ("hroller-nodegroups.data", "group-02"): "0.00000000",
    ("hroller-nonredundant.data", "group-01"): "0.00000000",
    ("hroller-online.data", "group-01"): "1.84372991",
    ("hspace-bad-group.data", "group-01"): "0.00000000",
    ("hspace-bad-group.data", "group-bad"): "2.03735352",
    ("hspace-existing.data", "group-01"): "20.00000000",
    ("hspace-groups-one.data", "group-01"): "11.78957167",
    ("hspace-groups-two.data", "group-01"): "8.40582296",
    ("hspace-groups-two.data", "group-02"): "0.00000000",
    ("hsqueeze-mixed-instances.data", "group-01"): "2.22693634",
    ("hsqueeze-overutilized.data", "group-01"): "0.00000000",
    ("hsqueeze-underutilized.data", "group-01"): "2.05492678",
    ("multiple-tags.data", "group-01"): "1.53351869",
    ("n1-failure.data", "group-01"): "22.37526844",
    ("partly-used.data", "group-01"): "2.74131372",
    ("plain-n1-restriction.data", "group-01"): "4.64613614",
    ("shared-n1-failure.data", "group-01"): "3.46410162",
    ("shared-n1-restriction.data", "group-01"): "4.42793833",
    ("unique-reboot-order.data", "group-01"): "1.44536402",
}
# hinfo's "Cluster score" (every node) of each Debian data set the tools load.
HINFO = {
    "clean-nonzero-score.data": "1.91573994", "common-suffix.data": "2.20849373",
    "empty-cluster.data": "0.00000000", "hbal-cpu-speed.data": "0.77083333",
    "hbal-desiredlocation-1.data": "2.60937500", "hbal-desiredlocation-2.data": "5.13014453",
    "hbal-desiredlocation-3.data": "4.12221395", "hbal-desiredlocation-4.data": "3.60937500",
    "hbal-dyn.data": "4.00000000", "hbal-evac.data": "46.94539253", "hbal-excl-tags.data": "3.67187500",
    "hbal-forth.data": "0.05339306", "hbal-location-1.data": "4.06250000", "hbal-location-2.data": "3.39869220",
    "hbal-location-exclusion.data": "2.98249548", "hbal-migration-1.data": "10.13359773",
    "hbal-migration-2.data": "10.13359773", "hbal-migration-3.data": "10.13359773",
    "hbal-soft-errors.data": "39.36461987", "hbal-soft-errors2.data": "3.21875000",
    "hbal-split-insts.data": "0.00781250", "hroller-full.data": "0.00294054",
    "hroller-nodegroups.data": "3.83226734", "hroller-nonredundant.data": "0.00000000",
    "hroller-online.data": "1.84372991", "hspace-bad-group.data": "2.14671137",
    "hspace-existing.data": "20.00000000", "hspace-groups-one.data": "11.78957167",
    "hspace-groups-two.data": "11.78957167", "hspace-tiered-dualspec-exclusive.data": "0.16634815",
    "hspace-tiered-dualspec.data": "0.12304688", "hspace-tiered-exclusive.data": "0.16634815",
    "hspace-tiered-ipolicy.data": "0.04243524", "hspace-tiered-mixed.data": "0.12304688",
    "hspace-tiered-resourcetypes.data": "0.07274613", "hspace-tiered-vcpu.data": "0.22669140",
    "hspace-tiered.data": "0.12304688", "hsqueeze-mixed-instances.data": "2.22693634",
    "hsqueeze-overutilized.data": "0.00000000", "hsqueeze-underutilized.data": "2.05492678",
    "missing-resources.data": "1.00000000", "multiple-master.data": "0.00065908",
    "multiple-tags.data": "1.53351869", "n1-failure.data": "22.37526844", "partly-used.data": "2.74131372",
    "plain-n1-restriction.data": "4.64613614", "shared-n1-failure.data": "3.46410162",
    "shared-n1-restriction.data": "4.42793833", "unique-reboot-order.data": "1.44536402",
}
# The files in tests/data/htools (written for Corral): hinfo's cluster score (None) and hbal's per group.
BUNDLED = {
    "corral-edge-cases.data": {None: "56.65159701", "default": "54.19032051", "other": "0.26171875"},
    "corral-n1-offline-group.data": {None: "35.15377978", "main": "7.15377978", "dark": "0.00000000"},
    "corral-unbalanced.data": {None: "10.21626848", "default": "10.21626848"},
    "corral-zero-cpus.data": {None: "NaN", "g": "NaN"},
}
# hbal -v -v -v's 20 terms for those groups and some of Debian's, in the order of htools_score.TERMS.
BUNDLED_TERMS = {
    ("corral-edge-cases.data", "default"): (
        "0.08984132 0.12472191 0.00000000 0.05892557 2.00000000 2.00000000 0.61268736"
        " 0.47140452 0.47140452 0.47140452 0.47140452 2.00000000 0.18399502 0.24193445"
        " 0.11899098 0.59802917 0.20885352 4.00000000 3.00000000 0.62500000"),
    ("corral-edge-cases.data", "other"): (
        "0.00762939 0.20000000 0.00000000 0.00000000 0.00000000 0.00000000 0.00000000"
        " 0.00000000 0.00000000 0.00000000 0.00000000 0.00000000 0.00000000 0.00018311"
        " 0.30000000 0.01562500 0.00000000 0.00000000 0.00000000 0.00000000"),
    ("corral-n1-offline-group.data", "main"): (
        "0.19481762 0.16996732 4.00000000 0.21245915 0.00000000 0.00000000 0.42491829"
        " 0.47140452 0.47140452 0.47140452 0.47140452 0.00000000 0.01473139 0.38485347"
        " 0.16996732 0.42491829 0.01473139 0.00000000 0.00000000 0.62500000"),
    ("corral-n1-offline-group.data", "dark"): "",  # only offline nodes: no term at all (their instances count nowhere)
    ("corral-zero-cpus.data", "g"): (
        "0.25000000 0.00000000 0.00000000 0.00000000 0.00000000 0.00000000 NaN"
        " 0.50000000 0.50000000 0.50000000 0.50000000 0.00000000 NaN 0.25000000"
        " 0.00000000 NaN NaN 0.00000000 0.00000000 0.00000000"),
    ("hbal-forth.data", "default"): (
        "0.00000000 0.00000000 0.00000000 0.00000000 0.00000000 0.00000000 0.00000000"
        " 0.00000000 0.00000000 0.00000000 0.00000000 0.00000000 0.00000000 0.00276268"
        " 0.00090370 0.05892557 0.04419417 0.00000000 0.00000000 0.00000000"),
    ("hbal-location-exclusion.data", "group-01"): (
        "0.03125000 0.00000000 0.00000000 0.03125000 0.00000000 0.00000000 0.38874548"
        " 0.50000000 0.50000000 0.00000000 0.50000000 0.00000000 0.00000000 0.03125000"
        " 0.00000000 0.38874548 0.00000000 0.00000000 1.00000000 0.12500000"),
    ("n1-failure.data", "group-01"): (
        "0.50000000 0.00026844 16.00000000 0.25000000 0.00000000 0.00000000 0.06250000"
        " 1.00000000 1.00000000 2.00000000 1.00000000 0.00000000 0.06250000 0.50000000"
        " 0.00026844 0.06250000 0.06250000 0.00000000 0.00000000 2.00000000"),
    ("partly-used.data", "group-01"): (
        "0.03061862 0.12247449 0.00000000 0.03061862 0.00000000 0.00000000 0.03061862"
        " 0.48989795 0.48989795 0.97979590 0.48989795 0.00000000 0.03061862 0.03061862"
        " 0.12247449 0.03061862 0.03061862 0.00000000 0.00000000 0.18750000"),
}


def load(path: Path) -> htools.HtoolsCluster:
    return htools.read_text(path.read_text())


def needs_debian_data() -> None:
    if not DEBIAN_DIR.is_dir():
        unavailable(f"Debian's ganeti-testsuite data sets are not there (no {DEBIAN_DIR})")


def needs_tools() -> None:
    missing = [t for t in ("hbal", "hinfo") if not htool(t)]
    if missing:
        unavailable(f"{' and '.join(missing)} not installed (ganeti-htools-3.0)")


def check_terms(name: str, group: str, path: Path) -> None:
    got = score_terms(load(path), group)
    assert " ".join(format_score(v) for _, _, v in got) == BUNDLED_TERMS[name, group], (name, group)
    assert [(n, w) for n, w, _ in got] == [(n, w) for n, w, _, _ in TERMS][:len(got)]


def test_the_bundled_data_sets_score_as_hbal_and_hinfo_print_them():
    assert sorted(p.name for p in BUNDLED_DIR.glob("*.data")) == sorted(BUNDLED)
    for name, expected in BUNDLED.items():
        cluster = load(BUNDLED_DIR / name)
        for group, total in expected.items():
            assert format_score(score(cluster, group)) == total, (name, group)
    for name, group in [k for k in BUNDLED_TERMS if k[0] in BUNDLED]:
        check_terms(name, group, BUNDLED_DIR / name)


def test_the_terms_of_debian_data_sets_are_hbal_s():
    needs_debian_data()
    for name, group in [k for k in BUNDLED_TERMS if k[0] not in BUNDLED]:
        check_terms(name, group, DEBIAN_DIR / name)


def test_every_debian_data_set_scores_as_hbal_and_hinfo_printed():
    needs_debian_data()
    for (name, group), expected in HBAL.items():
        assert format_score(score(load(DEBIAN_DIR / name), group)) == expected, (name, group)
    for name, expected in HINFO.items():
        assert format_score(score(load(DEBIAN_DIR / name))) == expected, name


def test_the_recorded_scores_cover_every_debian_data_set_the_tools_load():
    needs_debian_data()
    loadable, refused = [], []
    for path in sorted(DEBIAN_DIR.glob("*.data")):
        try:
            load(path)
            loadable.append(path.name)
        except ValueError:
            refused.append(path.name)
    assert loadable == sorted(HINFO), "a data set is new or gone: measure it with hinfo and hbal"
    assert refused == ["invalid-node.data"]


def hbal_terms(path: Path, group: str) -> tuple[str, list[str]]:
    result = subprocess.run([htool("hbal"), "-t", str(path), "-G", group, "-l", "0", "-v", "-v", "-v"],
                            check=False, capture_output=True, text=True, timeout=60)
    found = re.search(r"Initial coefficients: overall (\S+)\n   Field\s+Value\s+Weight\n((?:   \S+ +\S+ +x\S+\n)*)",
                      result.stdout)
    assert found, f"hbal printed no initial score for {path.name} {group}: {result.stdout[-500:]}{result.stderr}"
    return found.group(1), [row.split()[1] for row in found.group(2).splitlines()]


def hinfo_score(path: Path) -> str:
    result = subprocess.run([htool("hinfo"), "-t", str(path)], check=False, capture_output=True, text=True, timeout=60)
    found = re.search(r"Cluster score: (\S+)", result.stdout)
    assert found, f"hinfo printed no cluster score for {path.name}: {result.stdout[-500:]}{result.stderr}"
    return found.group(1)


def test_scores_and_terms_agree_with_the_installed_hbal_and_hinfo():
    needs_tools()
    paths = sorted(BUNDLED_DIR.glob("*.data")) + (sorted(DEBIAN_DIR.glob("*.data")) if DEBIAN_DIR.is_dir() else [])
    compared = 0
    for path in paths:
        if path.name == "invalid-node.data":
            continue
        cluster = load(path)
        assert format_score(score(cluster)) == hinfo_score(path), path.name
        if not cluster.instances:
            continue  # hbal: "Cluster is empty, exiting", before the score
        for group in cluster.groups:
            if not any(n.group_uuid == group.uuid for n in cluster.nodes):
                continue  # hbal scores only a group with nodes
            total, terms = hbal_terms(path, group.name)
            assert format_score(score(cluster, group.name)) == total, (path.name, group.name)
            assert [format_score(v) for _, _, v in score_terms(cluster, group.name)] == terms, (path.name, group.name)
            compared += 1
    assert compared >= len(BUNDLED) + (len(HBAL) if DEBIAN_DIR.is_dir() else 0)


CLUSTER = """\
g|u|preferred||

a|8192|512|4000|100000|50000|4|M|u|1
b|8192|512|5000|100000|60000|4|N|u|1
c|8192|512|7600|100000|90000|4|N|u|1

i1|2048|10000|2|running|Y|a|b|drbd||1
i2|2048|10000|2|running|Y|a|b|drbd||1
i3|1024|10000|1|running|Y|c|b|drbd||1


"""


def terms(text: str) -> dict[str, float]:
    return {name: value for name, _, value in score_terms(htools.read_text(text))}


def test_a_node_fails_n_plus_1_when_one_primary_would_fail_over_more_memory_than_it_has_free():
    # b is secondary for 4096 MiB of a's instances and 1024 of c's: a failing is what it must absorb
    assert terms(CLUSTER)["n1_cnt"] == 0  # 5000 free
    short = CLUSTER.replace("b|8192|512|5000|", "b|8192|512|4000|")
    assert terms(short)["n1_cnt"] == 3  # b fails: its 0 primaries and 3 secondaries count
    assert terms(short)["reserved_mem_cv"] == terms(CLUSTER)["reserved_mem_cv"] > 0


def test_n_plus_1_reserves_nothing_for_instances_without_auto_balance_or_offline():
    short = CLUSTER.replace("b|8192|512|5000|", "b|8192|512|4000|")
    assert terms(short.replace("|running|Y|a|b|drbd", "|running|N|a|b|drbd"))["n1_cnt"] == 0
    assert terms(short.replace("|running|Y|a|b|drbd", "|ADMIN_offline|Y|a|b|drbd"))["n1_cnt"] == 0
    # a stopped instance still reserves: it may be started
    assert terms(short.replace("|running|Y|a|b|drbd", "|ADMIN_down|Y|a|b|drbd"))["n1_cnt"] == 3


def test_free_memory_is_the_smaller_of_what_the_node_reports_and_what_its_instances_leave():
    # a: 8192 - 512 - 4096 of running primaries = 3584 recorded, 4000 reported: 3584 counts
    # (its 4096 MiB of instances on b, 1024 of c's, make the other terms move too)
    values = terms(CLUSTER)
    less = terms(CLUSTER.replace("a|8192|512|4000|", "a|8192|512|3584|"))
    assert values["free_mem_cv"] == less["free_mem_cv"]
    assert values["free_mem_cv_forth"] != less["free_mem_cv_forth"]  # that one takes the report as it is


def test_instances_on_offline_nodes_weigh_most():
    offline = CLUSTER.replace("c|8192|512|7600|100000|90000|4|N|", "c|8192|512|7600|100000|90000|4|Y|")
    values = terms(offline)
    assert (values["offline_all_cnt"], values["offline_pri_cnt"]) == (1, 1)
    assert score(htools.read_text(offline)) > 4 + 16


def test_with_no_online_node_there_is_no_term_and_the_score_is_zero():
    dark = CLUSTER.replace("|M|u|", "|Y|u|").replace("|N|u|", "|Y|u|")
    assert score_terms(htools.read_text(dark)) == []
    assert score(htools.read_text(dark)) == 0.0


def test_a_group_is_named_by_its_name_or_its_uuid_and_an_unknown_one_is_refused():
    cluster = htools.read_text(CLUSTER)
    assert score(cluster, "g") == score(cluster, "u") == score(cluster)
    with pytest.raises(ValueError, match="no node group is named 'h'"):
        score(cluster, "h")


def test_scores_print_as_haskell_prints_them():
    assert format_score(0.001953125) == "0.00195312"  # half to even, as hbal printed for hbal-split-insts
    assert format_score(0.005859375) == "0.00585938"
    assert format_score(5.551115123125783e-17) == "0.00000000"
    assert format_score(46.945392531) == "46.94539253"
    assert format_score(float("nan")) == "NaN"
    assert format_score(1e20) == "100000000000000000000.00000000"


def test_a_cluster_whose_instances_or_nodes_point_nowhere_is_refused():
    cluster = htools.read_text(CLUSTER)
    with pytest.raises(ValueError, match="instance 'i1' is on a node the cluster does not have"):
        score(replace(cluster, instances=(replace(cluster.instances[0], secondary="z"),)))
    with pytest.raises(ValueError, match="node 'a' is in a group the cluster does not have"):
        score(replace(cluster, nodes=(replace(cluster.nodes[0], group_uuid="v"), *cluster.nodes[1:])))
