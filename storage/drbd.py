"""The `drbd` template on one node: each disk a DRBD resource over a data LV and a metadata LV, replicated to a
second node with protocol C.

- LVs: the data LV is the `plain` template's (same name and tags, so `cluster verify` and the node's report
  see it as the disk); its metadata LV is `<data LV>-meta`, tagged `corral-drbd-meta=<N>` instead of
  `corral-disk=<N>` so it never counts as a disk. External metadata keeps the data LV the guest's disk
  byte for byte (a DRBD disk can be taken back as a plain LV), as Ganeti does.
- Configuration: one file per resource under `conf_dir`, used with `drbdadm -c`; drbdadm finds this node's
  `on` section through `__DRBD_NODE__` (storage.drbdconf), so node names need not be host names for the
  agent's own calls. The kernel runs the fence-peer handler through drbdadm with the machine's host name,
  so on a real node the host name must be the node name (as Ganeti requires too).
- Up is idempotent: a minor the kernel already has is `adjust`ed to the file (a new peer address, say),
  others are brought `up`; metadata is created only when `up` finds none, never over existing metadata
  (that would throw away the bitmap and the generation identifiers).
- Roles: a resource is Secondary on both nodes except while QEMU runs on the primary; `promote` retries
  once when DRBD refused because the fence-peer handler was still outdating the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from storage import runner
from storage.base import DiskNotFound, UnsupportedFormat, check_disk
from storage.drbdconf import (
    RESOURCE_PREFIX,
    DrbdPeer,
    DrbdResource,
    module_version,
    render_resource,
    resource_name,
)
from storage.drbdproc import MinorState, parse_proc_drbd
from storage.drbdstatus import ResourceState, parse_status_json
from storage.errors import CommandFailed, DiskSmallerThanImage, StorageError
from storage.lvm import PlainTemplate
from storage.lvmparse import TAG_INSTANCE

TAG_META = "corral-drbd-meta="
PROMOTE_RETRY_S = 1.0
CONNECT_WAIT_S = 60.0  # a new resource's peer, made at the same time: DRBD connects within seconds of both being up
CONNECT_POLL_S = 0.5
RESIZE_POLLS = 40  # of CONNECT_POLL_S: `drbdadm resize` returns once both nodes agreed, so this is a safety net
NOT_OUTDATED = "peer is not outdated"


class DrbdError(StorageError):
    """A DRBD step failed on this node; the message names the resource and what DRBD said."""


@dataclass(frozen=True)
class DrbdDisk:
    """One disk of a drbd instance as a node holds it: the master's minor, port and secret, and both ends."""

    instance: str
    index: int
    size_mib: int
    minor: int
    port: int
    secret: str
    node: str
    address: str
    peer: str
    peer_address: str
    meta_mib: int = 4  # the master's choice (hostagent.model.drbd_meta_mib)

    @property
    def name(self) -> str:
        return resource_name(self.instance, self.index)


class DrbdNode:
    """This node's DRBD resources: LVs, configuration files, the kernel's state."""

    def __init__(self, lvm: PlainTemplate, conf_dir: str, *, fence_peer: str = "",
                 resync_rate_mib_s: Callable[[], float] = lambda: 0.0, proc_path: str = "/proc/drbd",
                 timeout_s: float = 60.0, copy_timeout_s: float = 3600.0) -> None:
        """`fence_peer`: the handler's command line (cli.drbdfence). `resync_rate_mib_s`: the fixed resync rate
        each resource gets when it is next brought up or adjusted (0: DRBD's own controller)."""
        self.lvm = lvm
        self.conf_dir = conf_dir
        self.fence_peer = fence_peer
        self.resync_rate_mib_s = resync_rate_mib_s
        self.copy_timeout_s = copy_timeout_s
        self._run = runner.run
        self._proc_path = proc_path
        self._timeout_s = timeout_s
        self._version: str | None = None
        self._two_primaries: set[str] = set()  # resources in a switchover: their files say so, or `adjust` undoes it

    # ---- what the kernel has ----------------------------------------------------------------------------
    async def version(self) -> str | None:
        """The module's resource-file dialect ("8.4" or "9"), loading the module once; None without one."""
        if self._version is None:
            with contextlib.suppress(StorageError):
                await self._run(["modprobe", "drbd"], timeout_s=self._timeout_s, check=False)
            try:
                self._version = module_version(_read(self._proc_path))
            except (OSError, ValueError):
                return None
        return self._version

    async def states(self) -> dict[int, MinorState]:
        """Every configured minor ({} without the module): DRBD 8.4's /proc/drbd, DRBD 9's `drbdsetup status`."""
        if self._version == "9":
            result = await self._run(["drbdsetup", "status", "--json", "--statistics"], timeout_s=self._timeout_s)
            return {s.minor: state for s in parse_status_json(result.stdout)
                    if s.minor is not None and (state := minor_state(s)) is not None}
        try:
            return parse_proc_drbd(_read(self._proc_path))
        except OSError:
            return {}

    @staticmethod
    def device(minor: int) -> str:
        return f"/dev/drbd{minor}"

    # ---- bringing a disk up -----------------------------------------------------------------------------
    def resource(self, disk: DrbdDisk) -> DrbdResource:
        """The resource both nodes render alike: peers in node-name order (DRBD 9's node ids)."""
        data = self.lvm.path(disk.instance, disk.index, "raw")
        ends = sorted([(disk.node, disk.address), (disk.peer, disk.peer_address)])
        peers = tuple(DrbdPeer(node, i, address, disk.port, data, data + "-meta")
                      for i, (node, address) in enumerate(ends))
        assert len(peers) == 2
        return DrbdResource(disk.name, disk.minor, disk.secret, (peers[0], peers[1]),
                            fence_peer=self.fence_peer, resync_rate_mib_s=self.resync_rate_mib_s(),
                            two_primaries=disk.name in self._two_primaries)

    async def ensure(self, disk: DrbdDisk) -> str:
        """The disk's LVs, configuration and resource up (connecting to the peer); its device path."""
        check_disk(disk.instance, disk.index, disk.size_mib)
        version = await self.version()
        if version is None:
            raise DrbdError(f"node '{disk.node}' has no DRBD kernel module (modprobe drbd failed): "
                            f"disk {disk.index} of '{disk.instance}' cannot be replicated here")
        data = self.lvm.path(disk.instance, disk.index, "raw")
        if not await self.lvm.exists(disk.instance, disk.index):
            await self.lvm.create(disk.instance, disk.index, disk.size_mib, "raw")
        elif not os.path.exists(data):  # inactive, as after a node's reboot without LVM's udev rules
            await self._run(["lvchange", *self.lvm.lvm_args, "-ay", data.removeprefix("/dev/")],
                            timeout_s=self._timeout_s)
        fresh = await self._ensure_meta(disk)
        conf = self.conf_path(disk.name)
        os.makedirs(self.conf_dir, mode=0o700, exist_ok=True)
        text = render_resource(self.resource(disk), version)
        changed = _read_or_empty(conf) != text
        if changed:
            _write_secret_file(conf, text)
        if fresh:  # made just now: nothing on it to keep
            await self._drbdadm(disk.node, "create-md", "--force", disk.name)
        state = (await self.states()).get(disk.minor)
        if state is not None:
            if changed:  # a new peer, rate or switchover: the kernel takes the file's settings
                await self._drbdadm(disk.node, "adjust", disk.name)
            elif state.connection == "StandAlone":
                # It refused its peer (a split brain found when they met again, as when a cut-off primary came
                # back still Primary). Connecting again discards nothing here (no after-split-brain policy is
                # set): only a peer told --discard-my-data gives its data up, and a real split brain stays.
                await self._drbdadm(disk.node, "connect", disk.name)
            return self.device(disk.minor)
        try:
            await self._drbdadm(disk.node, "up", disk.name)
        except DrbdError as exc:
            if "no valid meta" not in str(exc).lower():
                raise
            # A metadata LV an interrupted run made but never initialized: the minor `up` left configured
            # (diskless) goes first, or create-md refuses it.
            await self._drbdadm(disk.node, "down", disk.name)
            await self._drbdadm(disk.node, "create-md", "--force", disk.name)
            await self._drbdadm(disk.node, "up", disk.name)
        return self.device(disk.minor)

    async def _ensure_meta(self, disk: DrbdDisk) -> bool:
        """The metadata LV there and active; True when it was made just now."""
        name = self.lvm.lv_name(disk.instance, disk.index) + "-meta"
        if os.path.exists(f"/dev/{self.lvm.vg}/{name}"):
            return False
        result = await self._run(["lvs", *self.lvm.lvm_args, "--noheadings", "-o", "lv_name", self.lvm.vg],
                                 timeout_s=self._timeout_s)
        if name in result.stdout.split():
            await self._run(["lvchange", *self.lvm.lvm_args, "-ay", f"{self.lvm.vg}/{name}"], timeout_s=self._timeout_s)
            return False
        await self._run(["lvcreate", *self.lvm.lvm_args, "--yes", "-W", "y", "-n", name,
                         "-L", f"{disk.meta_mib}m", "--addtag", f"{TAG_INSTANCE}{disk.instance}",
                         "--addtag", f"{TAG_META}{disk.index}", self.lvm.vg], timeout_s=self._timeout_s)
        return True

    # ---- roles ------------------------------------------------------------------------------------------
    async def promote(self, node: str, name: str, *, force: bool = False) -> None:
        """Primary on this node. `force`: from an Inconsistent or unknown disk (a new disk's first sync, or
        the operator's --ignore-consistency)."""
        extra = ["--force"] if force else []
        try:
            await self._drbdadm(node, "primary", *extra, name)
        except DrbdError as exc:
            if NOT_OUTDATED not in str(exc):
                raise
            await asyncio.sleep(PROMOTE_RETRY_S)  # the handler has outdated the peer by now, or it never will
            await self._drbdadm(node, "primary", *extra, name)

    async def demote(self, node: str, name: str) -> None:
        await self._drbdadm(node, "secondary", name)

    async def demote_instance(self, node: str, instance: str) -> None:
        """Every resource of `instance` that is Primary here back to Secondary."""
        states = await self.states()
        prefix = f"{RESOURCE_PREFIX}{instance}-"
        for name in self.configured():
            if not (name.startswith(prefix) and name[len(prefix):].isdigit()):
                continue
            minor = self._minor_of(name)
            if minor is not None and minor in states and states[minor].role == "Primary":
                await self.demote(node, name)

    def _minor_of(self, name: str) -> int | None:
        """The minor a resource file names (`device minor N;`)."""
        try:
            text = _read(self.conf_path(name))
        except OSError:
            return None
        found = re.search(r"device minor (\d+);", text)
        return int(found[1]) if found else None

    async def wait_connected(self, minor: int, within_s: float) -> bool:
        """Until the resource talks to its peer (bounded); whether it does."""
        for _ in range(max(1, int(within_s / CONNECT_POLL_S))):
            state = (await self.states()).get(minor)
            if state is not None and state.peer_disk != "DUnknown":
                return True
            await asyncio.sleep(CONNECT_POLL_S)
        return False

    async def resume_io(self, node: str, name: str) -> None:
        """Let a primary frozen by its fencing write again (to this node's disk only, the peer being away)."""
        await self._drbdadm(node, "resume-io", name)

    async def step_down(self, node: str, name: str) -> None:
        """Primary no more, then throw away everything this node has that its peer lacks and resync from the
        peer (for a node the instance was failed over away from: nothing it wrote since was acknowledged)."""
        await self.demote(node, name)
        await self.disconnect(node, name)
        await self._drbdadm(node, "connect", "--discard-my-data", name)

    async def down(self, node: str, name: str) -> None:
        """The resource gone from the kernel here (not Primary, no connection, its LVs let go); `ensure` brings
        it back. Idempotent."""
        await self._drbdadm(node, "down", name)

    @contextlib.asynccontextmanager
    async def taken_down(self, node: str, disks: Sequence[DrbdDisk]) -> AsyncIterator[None]:
        """The resources down while the body rewrites their data LVs underneath DRBD (a snapshot's revert, a
        backup's restore), up again after, however it ended. A device something holds open stops it before
        anything changed."""
        for disk in disks:
            await self.down(node, disk.name)
        try:
            yield
        finally:
            for disk in disks:
                await self.ensure(disk)

    async def forget_copy(self, disk: DrbdDisk) -> None:
        """This node's copy claims nothing any more: the resource down and its metadata made anew, so that when
        it is up again its peer copies every block to it (DRBD's rule for a peer with fresh metadata). For a
        secondary whose primary's disks are about to be rewritten underneath DRBD (a snapshot's revert)."""
        await self.ensure(disk)  # its files and LVs there, whatever state it was in
        await self.down(disk.node, disk.name)
        await self._drbdadm(disk.node, "create-md", "--force", disk.name)

    async def disconnect(self, node: str, name: str) -> None:
        """StandAlone: no connection, and no attempt to make one, until `connect`."""
        with contextlib.suppress(DrbdError):  # already StandAlone (a refused reconnection): nothing to end
            await self._drbdadm(node, "disconnect", name)

    async def dual_primary(self, node: str, name: str, allow: bool) -> None:
        """Allow (or forbid again) both nodes Primary: only for a live migration's switchover. Remembered, so the
        file that `ensure` writes says the same (its `adjust` would otherwise forbid it again)."""
        (self._two_primaries.add if allow else self._two_primaries.discard)(name)
        await self._drbdadm(node, "net-options", f"--allow-two-primaries={'yes' if allow else 'no'}", name)

    async def grow(self, disk: DrbdDisk, new_size_mib: int, *, resize: bool) -> None:
        """This node's data LV to the new size; with `resize` (on the primary, once the peer's LV has grown too)
        DRBD told to use it, which resyncs the new part to the peer. Idempotent: a grown LV stays as it is."""
        await self.lvm.grow(disk.instance, disk.index, new_size_mib)
        if not resize:
            return
        state = (await self.states()).get(disk.minor)
        promoted = state is not None and state.role != "Primary"
        if promoted:  # DRBD resizes only with a Primary (a stopped instance's disks are Secondary on both nodes)
            await self.promote(disk.node, disk.name)
        try:
            await self._drbdadm(disk.node, "resize", disk.name)
            want = new_size_mib * 2048
            for _ in range(RESIZE_POLLS):  # the kernel takes the new size once the peer has agreed to it
                if _sectors(disk.minor) >= want:
                    return
                await asyncio.sleep(CONNECT_POLL_S)
            raise DrbdError(f"DRBD resource {disk.name} on node '{disk.node}' still has "
                            f"{_sectors(disk.minor) // 2048} MiB after `drbdadm resize` (wanted {new_size_mib} MiB): "
                            "is its peer connected?")
        finally:
            if promoted:
                await self.demote(disk.node, disk.name)

    async def remove(self, node: str, instance: str, index: int) -> None:
        """The resource down, both LVs and the file gone (idempotent)."""
        name = resource_name(instance, index)
        conf = self.conf_path(name)
        if os.path.exists(conf):
            with contextlib.suppress(DrbdError):
                await self._drbdadm(node, "down", name)
        meta = f"{self.lvm.vg}/{self.lvm.lv_name(instance, index)}-meta"
        await self._run(["lvremove", *self.lvm.lvm_args, "-f", meta], timeout_s=self._timeout_s, check=False)
        await self.lvm.remove(instance, index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(conf)

    def conf_path(self, name: str) -> str:
        return os.path.join(self.conf_dir, f"{name}.res")

    def configured(self) -> list[str]:
        """The resources this node has a file for."""
        try:
            return sorted(f[:-4] for f in os.listdir(self.conf_dir) if f.endswith(".res"))
        except FileNotFoundError:
            return []

    def demote_argv(self, node: str, instance: str, index: int) -> list[str]:
        """The command that makes a disk's device Secondary here, for a process other than this one to run (the
        fence keeper, after it has killed the instance's QEMU). Only while connected to its peer: a node fenced
        with its agent hung but its network fine must let the peer be promoted; one cut off stays Primary with
        its I/O frozen, so that when it is back it discards what it never acknowledged (drbd.prepare), where a
        demoted one would meet its peer's new data as a split brain."""
        name = resource_name(instance, index)
        adm = shlex.join(["drbdadm", "-c", self.conf_path(name)])
        return ["env", f"PATH={_path()}", f"__DRBD_NODE__={node}", "sh", "-c",
                f'[ "$({adm} cstate {name})" = Connected ] && {adm} secondary {name}']

    async def _drbdadm(self, node: str, *args: str) -> None:
        name = args[-1]
        argv = ["drbdadm", "-c", self.conf_path(name), *args]
        env = {"PATH": _path(), "__DRBD_NODE__": node}
        try:
            await self._run(argv, timeout_s=self._timeout_s, env=env)
        except CommandFailed as exc:
            said = "; ".join(line for line in exc.stderr_tail.splitlines()
                             if line.strip() and "__DRBD_NODE__" not in line and "PRETENDING" not in line)
            raise DrbdError(f"drbdadm {' '.join(args[:-1])} of resource {name} failed on node '{node}': "
                            f"{said or 'no message'}") from exc


def minor_state(res: ResourceState) -> MinorState | None:
    """A DRBD 9 resource of one volume and one peer in /proc/drbd's (8.4's) terms; None for other shapes."""
    if res.minor is None or len(res.peers) != 1:
        return None
    peer = res.peers[0]
    connection = (peer.replication if peer.connected and peer.replication != "Established" else peer.connection)
    return MinorState(res.minor, connection, res.role, peer.peer_role, res.disk, peer.peer_disk, 0,
                      peer.percent_in_sync if peer.syncing else None, peer.eta_s)


def _sectors(minor: int) -> int:
    """The size the kernel gives the device, in 512-byte sectors (0 when it has none)."""
    try:
        return int(_read(f"/sys/block/drbd{minor}/size"))
    except (OSError, ValueError):
        return 0


def _path() -> str:
    return os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")


def _read_or_empty(path: str) -> str:
    try:
        return _read(path)
    except OSError:
        return ""


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _write_secret_file(path: str, text: str) -> None:
    """Written whole or not at all, readable by root only (it holds the shared secret)."""
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(path + ".tmp", path)


class DrbdDisks:
    """One drbd instance's disks on its primary, as an install sees a disk template (storage.install.Disks):
    creating a disk brings its resource up and makes this node Primary of a new, not yet synced disk."""

    formats = ("raw",)

    def __init__(self, drbd: DrbdNode, node: str, disks: Sequence[DrbdDisk]) -> None:
        self.drbd = drbd
        self.node = node
        self._disks = {d.index: d for d in disks}

    def _disk(self, instance: str, index: int) -> DrbdDisk:
        disk = self._disks.get(index)
        if disk is None or disk.instance != instance:
            raise DiskNotFound(instance, index, "the instance's DRBD resources")
        return disk

    def check_format(self, fmt: str) -> None:
        if fmt != "raw":
            raise UnsupportedFormat("drbd", fmt, self.formats)

    async def exists(self, instance: str, index: int) -> bool:
        return await self.drbd.lvm.exists(instance, index)

    def locate(self, instance: str, index: int) -> tuple[str, str]:
        return self.path(instance, index, "raw"), "raw"

    def path(self, instance: str, index: int, fmt: str) -> str:
        self.check_format(fmt)
        return self.drbd.device(self._disk(instance, index).minor)

    async def create(self, instance: str, index: int, size_mib: int, fmt: str) -> str:
        self.check_format(fmt)
        disk = self._disk(instance, index)
        path = await self.drbd.ensure(disk)
        # Connected first: a new disk promoted while its peer is still unknown would have fencing ask the master
        # to outdate a copy of an instance it does not know yet.
        await self.drbd.wait_connected(disk.minor, CONNECT_WAIT_S)
        await self.drbd.promote(disk.node, disk.name, force=True)
        return path

    async def clone_image(self, instance: str, index: int, image_path: str, size_mib: int, fmt: str, *,
                          image_fmt: str = "qcow2", progress_log: str | None = None) -> str:
        image_bytes = await self.drbd.lvm.image_bytes(image_path, image_fmt)
        if size_mib * 2**20 < image_bytes:  # before anything is made, on either node
            raise DiskSmallerThanImage(image_path, -(-image_bytes // 2**20), size_mib)
        path = await self.create(instance, index, size_mib, fmt)
        try:
            await runner.run(["qemu-img", "convert", "-p" if progress_log else "-q", "-n", "-f", image_fmt, "-O", "raw",
                              image_path, path], timeout_s=self.drbd.copy_timeout_s, log_path=progress_log)
        except BaseException:
            await self.remove(instance, index)
            raise
        return path

    async def remove(self, instance: str, index: int) -> None:
        await self.drbd.remove(self.node, instance, index)

    async def grow(self, instance: str, index: int, new_size_mib: int) -> None:
        """On the primary, after the secondary's data LV has grown (hostagent.master.diskops)."""
        await self.drbd.grow(self._disk(instance, index), new_size_mib, resize=True)

    async def activate(self, instance: str) -> None:
        """Every disk up and Primary here, before QEMU opens them: DRBD refuses a disk that is not UpToDate
        (its copy here missed writes) unless the peer has it, and a peer that is Primary."""
        for disk in self._disks.values():
            await self.drbd.ensure(disk)
            await self.drbd.promote(self.node, disk.name)

    async def deactivate(self, instance: str) -> None:
        await self.drbd.demote_instance(self.node, instance)
