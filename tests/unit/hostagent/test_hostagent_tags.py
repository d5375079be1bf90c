"""Tags: Ganeti's characters, changes that say what was wrong, and an RE2 search."""

from __future__ import annotations

import pytest

from hostagent.master.decide import tags
from hostagent.errors import BadRequest


def test_changes_keep_order_drop_duplicates_and_refuse_what_is_wrong():
    assert tags.changed(["a", "b"], ["c", "a", "c"], ["b"]) == ["a", "c"]
    with pytest.raises(BadRequest, match="'no spaces' is not a tag"):
        tags.changed([], ["no spaces"], None)
    with pytest.raises(BadRequest, match="not tagged 'x'"):
        tags.changed(["a"], None, ["x"])
    with pytest.raises(BadRequest, match="no tags to change"):
        tags.changed(["a"], [], [])
    with pytest.raises(BadRequest, match="at most 64 tags"):
        tags.changed([f"t{i}" for i in range(64)], ["one-more"], None)


def test_the_search_is_re2_and_names_kind_and_object():
    objects = [("cluster", "", {"tags": ["lab:cs"]}), ("instance", "web1", {"tags": ["project:x", "web"]}),
               ("node", "n1", {})]
    assert tags.search("^(lab|project):", objects) == [
        {"kind": "cluster", "name": "", "tag": "lab:cs"}, {"kind": "instance", "name": "web1", "tag": "project:x"}]
    assert tags.search("(.+)+NEVER", [("instance", "a", {"tags": ["x" * 128]})]) == []  # linear time
    with pytest.raises(BadRequest, match="not an RE2 regular expression"):
        tags.search("(", objects)
