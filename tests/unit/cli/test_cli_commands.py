"""The `corral` parser built from the group modules: every command it offers has a handler."""

import argparse
import inspect

from cli.main import parser


Leaf = tuple[tuple[str, ...], argparse.ArgumentParser]


def leaves(p: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[Leaf]:
    """Each command with its words (`("instance", "start")`), walking the groups."""
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(path, p)]
    return [leaf for name, child in subs[0].choices.items() for leaf in leaves(child, (*path, name))]


def test_every_command_has_a_handler_and_the_groups_keep_their_order():
    commands = leaves(parser())
    missing = [" ".join(path) for path, p in commands if not callable(p.get_default("run"))]
    assert not missing, missing
    groups = list(dict.fromkeys(path[0] for path, _ in commands))
    assert groups == ["cluster", "node", "instance", "events", "job", "drill", "user", "os", "network", "search-tags", "backup"]


def test_every_command_that_waits_for_a_job_takes_the_job_options():
    """A handler calling ctx.job reads --submit and --timeout: without them it would crash after submitting."""
    missing = [" ".join(path) for path, p in leaves(parser())
               if "ctx.job(" in inspect.getsource(getattr(p.get_default("run"), "func", p.get_default("run")))
               and "--submit" not in {s for a in p._actions for s in a.option_strings}]
    assert not missing, missing
