"""Tap devices created with pyroute2 inside a network namespace of the test's own."""

import uuid
from collections.abc import AsyncIterator

import pytest
from pyroute2 import AsyncIPRoute, netns

from kvm.tap import TapError, create_tap, delete_tap, tap_name

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

GUEST_MAC = "52:54:00:ab:cd:ef"


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    """A fresh network namespace holding bridge 'br-test'; removed afterwards."""
    name = f"crl-test-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        async with AsyncIPRoute(netns=name, flags=0) as ipr:
            await ipr.link("add", ifname="br-test", kind="bridge")
        yield name
    finally:
        netns.remove(name)


async def link(ns: str, ifname: str) -> dict[str, object] | None:
    async with AsyncIPRoute(netns=ns, flags=0) as ipr:
        found = await ipr.link_lookup(ifname=ifname)
        if not found:
            return None
        msg = (await ipr.link("get", index=found[0]))[0]
        return {
            "index": msg["index"],
            "kind": msg.get(("linkinfo", "kind")),
            "master": msg.get("master"),
            "up": bool(msg["flags"] & 1),
            "address": msg.get("address"),
        }


async def test_created_tap_is_up_on_the_bridge_with_derived_mac(namespace):
    name = tap_name("web1", 0)
    await create_tap(name, "br-test", mac=GUEST_MAC, netns=namespace)
    tap = await link(namespace, name)
    bridge = await link(namespace, "br-test")
    assert tap is not None and bridge is not None
    assert tap["kind"] == "tun"
    assert tap["master"] == bridge["index"]
    assert tap["up"] is True
    assert tap["address"] == "fe:54:00:ab:cd:ef"


async def test_creating_an_existing_tap_repairs_it(namespace):
    name = tap_name("web1", 0)
    await create_tap(name, "br-test", netns=namespace)
    async with AsyncIPRoute(netns=namespace, flags=0) as ipr:
        index = (await ipr.link_lookup(ifname=name))[0]
        await ipr.link("set", index=index, state="down", master=0)
    await create_tap(name, "br-test", netns=namespace)
    tap = await link(namespace, name)
    bridge = await link(namespace, "br-test")
    assert tap is not None and bridge is not None
    assert tap["index"] == index
    assert tap["master"] == bridge["index"] and tap["up"] is True


async def test_missing_bridge_is_a_clear_error_and_creates_nothing(namespace):
    name = tap_name("web1", 1)
    with pytest.raises(TapError, match="bridge 'br-nope' does not exist"):
        await create_tap(name, "br-nope", netns=namespace)
    with pytest.raises(TapError, match="'lo' is not a bridge"):
        await create_tap(name, "lo", netns=namespace)
    assert await link(namespace, name) is None


async def test_name_taken_by_another_kind_of_interface_is_refused(namespace):
    with pytest.raises(TapError, match="another kind"):
        await create_tap("lo", "br-test", netns=namespace)
    loopback = await link(namespace, "lo")
    assert loopback is not None and loopback["master"] is None


async def test_delete_tap_is_idempotent(namespace):
    name = tap_name("web1", 0)
    await create_tap(name, "br-test", netns=namespace)
    await delete_tap(name, netns=namespace)
    assert await link(namespace, name) is None
    await delete_tap(name, netns=namespace)


async def test_delete_refuses_an_interface_that_is_not_a_tap(namespace):
    with pytest.raises(TapError, match="not a tap"):
        await delete_tap("br-test", netns=namespace)
    assert await link(namespace, "br-test") is not None


async def test_missing_namespace_is_a_tap_error_not_a_new_namespace():
    with pytest.raises(TapError):
        await delete_tap("crlx", netns="crl-no-such-ns")
    assert "crl-no-such-ns" not in netns.listnetns()
