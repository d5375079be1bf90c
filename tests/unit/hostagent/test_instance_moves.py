"""The moves of one instance as one job (hostagent.master.balancing.planned_moves): each step from where the one
before leaves the instance, and what cannot be done refused before any job exists."""

from __future__ import annotations

import pytest

from hostagent.errors import BadRequest
from hostagent.master.balancing import planned_moves
from hostagent.master.decide.evacuation import Step

INST = {"name": "web1", "primary_node": "n1", "secondary_node": "n2"}
NODES = {"n1", "n2", "n3"}


def test_each_step_starts_where_the_one_before_left_the_instance() -> None:
    steps = planned_moves(INST, [{"action": "migrate"}, {"action": "replace-secondary", "node": "n3"},
                                 {"action": "migrate", "node": "n3"}], NODES)
    assert steps == [Step("migrate", "web1", "n1", "n2"), Step("replace-secondary", "web1", "n1", "n3"),
                     Step("migrate", "web1", "n2", "n3")]
    assert planned_moves(INST, [{"action": "failover"}], NODES) == [Step("failover", "web1", "n1", "n2")]


@pytest.mark.parametrize("asked, said", [
    ([], "1 to 8 moves"), ([{"action": "migrate"}] * 9, "1 to 8 moves"), ("migrate", "1 to 8 moves"),
    ([{"action": "move", "node": "n3"}], "not one of migrate, failover, replace-secondary"),
    ([{"action": "migrate", "node": "n3"}], "to its secondary 'n2' only"),
    ([{"action": "replace-secondary", "node": "n2"}], "needs a node other than"),
    ([{"action": "replace-secondary"}], "needs a node other than"),
    ([{"action": "replace-secondary", "node": "n9"}], "not a node of the cluster"),
    (["migrate"], "not one of"),
])
def test_what_cannot_be_done_is_refused_naming_the_step(asked: object, said: str) -> None:
    with pytest.raises(BadRequest, match=said):
        planned_moves(INST, asked, NODES)
    with pytest.raises(BadRequest, match="no secondary node"):
        planned_moves({**INST, "secondary_node": None}, [{"action": "migrate"}], NODES)
