"""Tags on instances, nodes and the cluster, and the search over them: pure.

Tags are short labels operators and their scripts attach ("project:thesis",
"backup", "owner-team:web"); Ganeti's character set and length, so tags
brought from Ganeti fit. The search pattern is RE2 (linear time), as every
pattern a user may send.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from hostagent.node.bootpattern import BootPattern, BootPatternError
from hostagent.errors import BadRequest

TAG_RE = re.compile(r"^[A-Za-z0-9._+*/:@-]{1,128}\Z")
TAG_WORDS = "1-128 letters, digits and . _ + * / : @ -"
MAX_TAGS = 64
MAX_PATTERN_CHARS = 200


def checked(tags: Any, what: str) -> list[str]:
    """A list of valid tags (duplicates dropped, order kept), or BadRequest naming each bad one."""
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise BadRequest(f"{what}: {tags!r} is not a list of tags")
    bad = [t for t in tags if not TAG_RE.match(t)]
    if bad:
        raise BadRequest(f"{what}: {', '.join(repr(t[:130]) for t in bad[:5])} "
                         f"{'is not a tag' if len(bad) == 1 else 'are not tags'} ({TAG_WORDS})")
    return list(dict.fromkeys(tags))


def changed(current: Iterable[str], add: Any, remove: Any) -> list[str]:
    """The tags after adding `add` and removing `remove` (removing one that is not there is refused)."""
    now = list(current)
    adding, removing = checked(add or [], "add"), checked(remove or [], "remove")
    if not adding and not removing:
        raise BadRequest("no tags to change: give tags to add or to remove")
    missing = [t for t in removing if t not in now]
    if missing:
        raise BadRequest(f"remove: not tagged {', '.join(repr(t) for t in missing)} "
                         f"(tags: {', '.join(now) or 'none'})")
    result = [t for t in now if t not in removing] + [t for t in adding if t not in now]
    if len(result) > MAX_TAGS:
        raise BadRequest(f"at most {MAX_TAGS} tags per object, this would make {len(result)}")
    return result


def search(pattern: str, objects: Iterable[tuple[str, str, Mapping[str, Any]]]) -> list[dict[str, str]]:
    """Every (kind, name, tag) whose tag matches `pattern` (RE2, searched anywhere in the tag)."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise BadRequest(f"the pattern is longer than {MAX_PATTERN_CHARS} characters")
    try:
        compiled = BootPattern(pattern)  # the same linear-time matcher as boot patterns
    except BootPatternError as exc:
        raise BadRequest(f"pattern {pattern!r} is not an RE2 regular expression: {exc}") from None
    return [{"kind": kind, "name": name, "tag": tag}
            for kind, name, record in objects for tag in record.get("tags") or [] if compiled.search(tag)]
