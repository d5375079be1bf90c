"""The tree's own checks, run with the unit tests: ruff's error rules, mypy, the import contract and the clock seam.

The contract (shared/STYLE.md): the leaf packages (membership, election,
storage, kvm) do not import each other, nor hostagent or cli; hostagent
wires them together, and cli talks to the agent over its API, borrowing
only pure helpers (CLI_MAY_IMPORT).
"""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("hostagent", "kvm", "storage", "election", "membership", "cli")
LEAVES = ("membership", "election", "storage", "kvm")
CLI_MAY_IMPORT = {"hostagent.units",  # sizes parsed and printed the way the agent does
                  "hostagent.callers",  # a job's or event's caller named the way the agent does
                  "hostagent.api.relay",  # the VNC relay's bounded byte pump (cli/vnc.py), the agent's own
                  # the pure planners, run on an htools file with no cluster (cli/planning.py)
                  "hostagent.master.decide.htools", "hostagent.master.decide.balance",
                  "hostagent.master.decide.htools_score", "hostagent.master.decide.capacity"}


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is a test dependency (pip install -e .[test])"
    return found


def test_the_tree_has_no_undefined_names_unused_imports_or_syntax_errors():
    result = subprocess.run([tool("ruff"), "check", "--no-cache", "--select", "F,E9", "--output-format", "concise",
                             "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_the_packages_type_check():
    result = subprocess.run([tool("mypy"), *PACKAGES], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
    # mypy only notes a strict section whose modules are gone or misspelt, and would quietly check them loosely
    assert "unused section" not in result.stdout, result.stdout[-3000:]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_leaf_packages_import_no_other_corral_package_and_the_cli_not_the_agent():
    breaches = []
    for package in (*LEAVES, "cli"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for module in sorted(imported_modules(path)):
                top = module.split(".")[0]
                if top in PACKAGES and top != package and module not in (CLI_MAY_IMPORT if package == "cli" else ()):
                    breaches.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not breaches, "\n".join(breaches)


def module_graph() -> dict[str, set[str]]:
    """Each module of our packages -> the modules of our packages it imports, anywhere in the file (an import
    inside a function to dodge a circle still counts)."""
    files = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                          for a in node.names} & files.keys()
        graph[name] = found - {name}
    return graph


def test_no_module_imports_itself_back_through_others():
    graph = module_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(name: str) -> None:  # Tarjan's strongly connected components
        index[name] = low[name] = len(index)
        stack.append(name)
        for dep in sorted(graph[name]):
            if dep not in index:
                visit(dep)
                low[name] = min(low[name], low[dep])
            elif dep in stack:
                low[name] = min(low[name], index[dep])
        if low[name] == index[name]:
            group = stack[stack.index(name):]
            del stack[stack.index(name):]
            if len(group) > 1:
                circles.append(sorted(group))
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for name in sorted(graph):
        if name not in index:
            visit(name)
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


# What the master's pure decisions may reach, at any depth: each other, the config's shapes and the pure helpers.
DECIDE_MAY_REACH = ("hostagent.master.decide.", "hostagent.model", "hostagent.errors", "hostagent.units",
                    "hostagent.status", "hostagent.node.bootpattern", "kvm.hvparams")
IO_MODULES = {"asyncio", "aiohttp", "subprocess", "socket", "ssl", "sqlite3", "sqlite_utils", "psutil", "pyroute2",
              "shutil", "urllib", "http", "threading", "time"}


def test_the_pure_decisions_reach_no_io_module():
    graph = module_graph()
    reached: set[str] = set()
    todo = [m for m in graph if m.startswith("hostagent.master.decide.")]
    while todo:
        if (name := todo.pop()) not in reached:
            reached.add(name)
            todo.extend(graph[name])
    breaches = sorted(m for m in reached if not m.startswith(DECIDE_MAY_REACH))
    for name in sorted(reached):
        path = ROOT / (name.replace(".", "/") + ".py")
        stdlib = {m.split(".")[0] for m in imported_modules(path if path.exists() else path.with_suffix("") / "__init__.py")}
        breaches += [f"{name} imports {m}" for m in sorted(stdlib & IO_MODULES)]
    assert not breaches, "hostagent.master.decide reaches I/O:\n" + "\n".join(breaches)


def test_hostagent_has_a_floor_plan_few_files_at_its_top_and_no_long_module_without_its_reason():
    top = sorted(p.name for p in (ROOT / "hostagent").glob("*.py"))
    assert len(top) <= 15, f"hostagent/ holds {len(top)} modules at its top (the rest go in api/, master/, node/): {top}"
    long = []
    for path in sorted((ROOT / "hostagent").rglob("*.py")):
        lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > 400 and "Over 400 lines:" not in doc:
            long.append(f"{path.relative_to(ROOT)}: {lines} lines, and its docstring does not say why (Over 400 lines: ...)")
    assert not long, "\n".join(long)


# The wings lean one way: the API serves what the master and the nodes do; the master orders nodes over the
# network, never through their code; a node obeys and reports, knowing neither.
WING_MAY_NOT_IMPORT = {"hostagent.master": ("hostagent.api",), "hostagent.node": ("hostagent.api", "hostagent.master")}


def test_the_wings_lean_one_way():
    breaches = [f"{name} imports {dep}" for name, deps in sorted(module_graph().items()) for dep in sorted(deps)
                for wing, banned in WING_MAY_NOT_IMPORT.items()
                if name.startswith(wing + ".") and dep.startswith(tuple(b + "." for b in banned))]
    assert not breaches, "\n".join(breaches)


# hostagent reads the time through hostagent.clock (loops take a Clock, pure code takes `now`), so that a test or a
# simulation sets it; only these modules read the host's clocks themselves, each for its reason.
TIME_READS = {"time", "time_ns", "monotonic", "monotonic_ns", "clock_gettime", "clock_gettime_ns"}
MAY_READ_THE_TIME = {
    "hostagent/clock.py": "the seam itself: SYSTEM, the host's clocks",
    "hostagent/api/accesslog.py": "stamps its lines from the host's clock, as logging stamps the agent log's",
}


def time_reads(path: Path) -> list[str]:
    """Each `time.time`, `time.monotonic`, `time.clock_gettime` (or their _ns) in `path`, called or passed on."""
    tree = ast.parse(path.read_text(), str(path))
    aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
               if a.name == "time"}
    found = [f"line {n.lineno}: time.{n.attr}" for n in ast.walk(tree)
             if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases
             and n.attr in TIME_READS]
    found += [f"line {n.lineno}: from time import {a.name}" for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.module == "time" for a in n.names if a.name in TIME_READS]
    return found


def test_hostagent_reads_the_time_only_through_its_clock():
    reads = {str(p.relative_to(ROOT)): time_reads(p) for p in sorted((ROOT / "hostagent").rglob("*.py"))}
    breaches = [f"{path} {read}" for path, found in reads.items() if path not in MAY_READ_THE_TIME for read in found]
    assert not breaches, "read the time through hostagent.clock (take a Clock, or `now`):\n" + "\n".join(breaches)
    unused = sorted(path for path in MAY_READ_THE_TIME if not reads.get(path))
    assert not unused, f"allowed to read the time but no longer does (remove them from MAY_READ_THE_TIME): {unused}"


def test_test_modules_have_unique_names():
    """pytest imports test modules by their base name (the test folders are no packages): two with one name in
    different folders stop the whole run at collection, which the fast tier alone would not show."""
    seen: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert not {name: paths for name, paths in seen.items() if len(paths) > 1}
