from hostagent.node.gossip import describe
from membership.members import Member, MemberEvent


def member(name, role=None):
    return Member(name=name, addr="127.0.0.2", port=7946, tags={"role": role} if role else {}, status="alive")


def test_member_events_become_operator_lines_with_node_names():
    assert describe(MemberEvent("member-failed", (member("n2"),))) == \
        ["gossip: node 'n2' (127.0.0.2) stopped answering gossip (failed)"]
    assert describe(MemberEvent("member-update", (member("n3", "master"),))) == \
        ["gossip: node 'n3' (127.0.0.2) changed its tags; role master"]
    assert len(describe(MemberEvent("member-join", (member("a"), member("b"))))) == 2
