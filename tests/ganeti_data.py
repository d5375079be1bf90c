"""Where Debian's ganeti-testsuite data sets are: unpacked by packaging/install-deps.sh for `make test` (the
package itself depends on all of Ganeti), or the installed package."""

import os
import shutil
from pathlib import Path
from collections.abc import Iterator
from typing import NoReturn

import pytest

from hostagent.master.decide import htools
from hostagent.master.decide.htools import Group, HtoolsCluster

INSTALLED = Path("/usr/share/ganeti/testsuite/test/data/htools")
UNPACKED = Path(os.environ.get("CORRAL_GANETI_TESTSUITE", "/var/cache/corral/ganeti-testsuite")) / "test/data/htools"
HTOOLS_DATA = UNPACKED if UNPACKED.is_dir() else INSTALLED


def data_set_groups() -> Iterator[tuple[Path, HtoolsCluster, Group]]:
    """Each node group with nodes of each data set the htools reader takes (one file of the suite is not a
    cluster it reads), with its file and cluster."""
    for path in sorted(HTOOLS_DATA.glob("*.data")):
        try:
            cluster = htools.read_text(path.read_text())
        except ValueError:
            continue
        for group in cluster.groups:
            if any(n.group_uuid == group.uuid for n in cluster.nodes):
                yield path, cluster, group


def htool(name: str) -> str:
    """The path of one of Debian's htools (hbal, hinfo, ...): on PATH, or where ganeti-htools-3.0 puts them
    (its /usr/bin links come with Ganeti itself); "" when not installed."""
    versioned = Path("/usr/lib/ganeti/3.0/usr/bin") / name
    return shutil.which(name) or (str(versioned) if versioned.exists() else "")


def unavailable(reason: str) -> NoReturn:
    """Skip a test whose Ganeti part is not installed, except under `make test` (CORRAL_GANETI_REQUIRED), which
    installs them all: there a missing one is a broken install step, and fails."""
    if os.environ.get("CORRAL_GANETI_REQUIRED"):
        pytest.fail(f"{reason}; `make test` should have installed it (packaging/install-deps.sh)")
    pytest.skip(f"{reason} (packaging/install-deps.sh installs it)")
