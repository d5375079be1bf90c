"""Every order the master sends has a handler in the node's one order table, and an unknown name is refused.

The names the master sends are read from its source: the op of every `store.order(node, op, args)` call (its
one way to send), of the drill's direct `NodeClient.order`, and of repair's `Step(op=...)`; an op that is a
variable must come from a loop over literal (node, op, args) rows. Reading the source, not a list kept by
hand, is what makes a new order without a handler fail here instead of on a cluster.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from hostagent.agent import Agent
from hostagent.config import AgentConfig
from hostagent.node.executor import OrderError

HOSTAGENT = Path(__file__).resolve().parents[3] / "hostagent"


def _looped_rows(tree: ast.AST) -> dict[str, list[ast.expr]]:
    """Variable -> the values a `for a, op, b in ((...), (...))` over literal rows gives it."""
    values: dict[str, list[ast.expr]] = {}
    for loop in ast.walk(tree):
        if isinstance(loop, ast.For) and isinstance(loop.target, ast.Tuple) and isinstance(loop.iter, ast.Tuple):
            for i, target in enumerate(loop.target.elts):
                if isinstance(target, ast.Name):
                    values.setdefault(target.id, []).extend(
                        row.elts[i] for row in loop.iter.elts if isinstance(row, ast.Tuple))
    return values


def _op_argument(call: ast.Call) -> ast.expr | None:
    """The op of an order call: `store.order(node, op, args)` or `NodeClient.order(name, address, port, op, args,
    token)`, told apart by their number of arguments."""
    if not isinstance(call.func, ast.Attribute) or call.func.attr != "order":
        return None
    if len(call.args) >= 5:
        return call.args[3]
    return call.args[1] if len(call.args) >= 2 else None


def sent_orders() -> dict[str, str]:
    """Each order name the master's code sends -> one place it is sent from."""
    sent: dict[str, str] = {}
    unknown: list[str] = []
    for path in sorted(HOSTAGENT.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        looped = _looped_rows(tree)
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            where = f"{path.relative_to(HOSTAGENT.parent)}:{call.lineno}"
            ops = [k.value for k in call.keywords if k.arg == "op"]  # repair's Step(op=...), sent as step.op
            op = _op_argument(call)
            if isinstance(op, ast.Name) and op.id in looped:
                ops.extend(looped[op.id])
            elif isinstance(op, ast.Name) and isinstance(call.func, ast.Attribute) and call.func.attr == "order":
                pass  # the store passing its own op on to NodeClient.order
            elif op is not None and not isinstance(op, ast.Attribute):  # an attribute: a Step's op, read above
                ops.append(op)
            for value in ops:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    sent.setdefault(value.value, where)
                else:
                    unknown.append(where)
    assert not unknown, f"order names this test cannot read (make them literals, or teach it): {unknown}"
    return sent


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    return Agent(AgentConfig(node_name="n1", address="127.0.0.1", state_dir=str(tmp_path / "state"),
                             run_dir=str(tmp_path / "run"), log_dir=str(tmp_path / "log"),
                             os_search_paths=(), image_paths=(), iso_dirs=()))


def test_the_source_scan_finds_the_orders_of_every_kind() -> None:
    sent = sent_orders()
    for name in ("instance.start", "instance.migrate-cancel", "instance.replica-unexport", "node.hello",
                 "etcd.join", "secrets.ca-retire", "instance.cdrom-check", "instance.disk-fetch"):
        assert name in sent


def test_every_order_the_master_sends_has_a_handler_on_the_node(agent: Agent) -> None:
    missing = {name: where for name, where in sent_orders().items() if name not in agent.orders}
    assert not missing, f"orders sent with no handler in the node's order table: {missing}"


def test_no_node_module_takes_an_order_name_another_already_has(agent: Agent) -> None:
    parts = [agent.executor.orders(), agent.replication.orders(), agent.media.orders(), agent.diskcopy.orders(),
             agent.drbd.orders(), agent.adoption.orders(), agent.snapshots.orders(), agent.backups.orders()]
    assert len(agent.orders) == sum(len(p) for p in parts) + 8  # + the agent's own: node.*, etcd.*, secrets.*


@pytest.mark.parametrize("op", ["instance.nope", "node.nope", "", "instance.console_tail"])
def test_an_unknown_order_is_refused_by_its_name(agent: Agent, op: str) -> None:
    with pytest.raises(OrderError) as refused:
        asyncio.run(agent.node_order(op, {}))
    assert str(refused.value) == f"unknown order {op!r}"
