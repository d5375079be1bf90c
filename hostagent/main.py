"""`corral-agent --config FILE`: run one node's agent until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from aiohttp import web

from election.etcd import EtcdError
from hostagent import pki
from hostagent.api import accesslog
from hostagent.node import holddown, priority
from hostagent.agent import Agent, AlreadyRunning
from hostagent.api.app import build_app
from hostagent.rapi.server import build_rapi
from hostagent.luxi.server import LuxiServer
from hostagent.config import DEFAULT_CONFIG_PATH, AgentConfig, ConfigError, load_config
from hostagent.node.notify import Notifier

log = logging.getLogger("corral-agent")


class StartupFailed(Exception):
    """The agent cannot serve; the message says why in one sentence."""


async def _serve(cfg: AgentConfig, guest_nice: int | None) -> None:
    notifier = Notifier()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(cfg, notifier, guest_nice)
    runners: list[web.AppRunner] = []
    access = accesslog.open_log(cfg.log_dir) if cfg.access_log else None

    local = web.AppRunner(build_app(agent, node_site=False), access_log=access,
                          access_log_class=accesslog.AccessLog)
    await local.setup()
    if os.path.exists(cfg.socket):
        os.unlink(cfg.socket)  # a leftover from a killed agent; we own this path
    old_umask = os.umask(0o077)  # the unix socket is for root only
    try:
        await web.UnixSite(local, cfg.socket).start()
    finally:
        os.umask(old_umask)
    runners.append(local)
    log.info("node '%s': local API on %s", cfg.node_name, cfg.socket)
    luxi = LuxiServer(agent)  # Ganeti's LUXI for htools (hbal -L -X), root's like agent.sock
    try:
        await luxi.start()
        log.info("node '%s': Ganeti LUXI on %s", cfg.node_name, luxi.path)
    except OSError as exc:
        log.error("node '%s': Ganeti's LUXI is not served: cannot listen on %s: %s", cfg.node_name, luxi.path,
                  exc.strerror or exc)

    async def start_node_site() -> None:
        if len(runners) > 1:
            return  # already serving (a retried cluster init)
        remote = web.AppRunner(build_app(agent, node_site=True), access_log=access,
                               access_log_class=accesslog.AccessLog)
        await remote.setup()
        agent.server_ssl = pki.server_context(agent.pki)
        try:
            await web.TCPSite(remote, cfg.address, cfg.api_port, ssl_context=agent.server_ssl).start()
        except OSError as exc:
            await remote.cleanup()
            raise StartupFailed(f"cannot serve the node API on {cfg.address}:{cfg.api_port}: "
                                f"{exc.strerror or exc}") from None
        runners.append(remote)
        log.info("node '%s': node API on https://%s:%d (mutual TLS)", cfg.node_name, cfg.address, cfg.api_port)
        if cfg.rapi_port:
            await start_rapi()

    async def start_rapi() -> None:
        """Ganeti's Remote API on its own port, same certificate; a port taken costs only the RAPI, said in the log."""
        rapi = web.AppRunner(build_rapi(agent), access_log=access, access_log_class=accesslog.AccessLog)
        await rapi.setup()
        try:
            await web.TCPSite(rapi, cfg.address, cfg.rapi_port, ssl_context=agent.server_ssl).start()
        except OSError as exc:
            await rapi.cleanup()
            log.error("node '%s': Ganeti's Remote API is not served: cannot listen on %s:%d: %s", cfg.node_name,
                      cfg.address, cfg.rapi_port, exc.strerror or exc)
            return
        runners.append(rapi)
        log.info("node '%s': Ganeti Remote API v2 on https://%s:%d", cfg.node_name, cfg.address, cfg.rapi_port)

    agent.node_site = start_node_site
    try:
        local_cluster = agent.cluster_file.read()
        if local_cluster is not None:
            try:
                await agent.activate()
            except EtcdError as exc:
                raise StartupFailed(f"etcd did not come up: {exc} (see {cfg.log_dir}/etcd.log)") from None
            found = agent.qemu.discover()
            log.info("member of cluster '%s'; found %d running instance(s) on this node%s", local_cluster["name"],
                     len(found), (": " + ", ".join(sorted(found))) if found else "")
            status = f"member of cluster '{local_cluster['name']}', {len(found)} instance(s) running here"
        else:
            log.info("not in a cluster yet: run `corral cluster init --name NAME`")
            status = "waiting for `corral cluster init`"
        notifier.ready(status)
        interval = notifier.watchdog_interval_s()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval or 3600)
            except asyncio.TimeoutError:
                notifier.watchdog()
        log.info("stopping agent (instances keep running)")
    finally:
        notifier.stopping()
        await luxi.close()
        await agent.shutdown()
        for runner in runners:
            await runner.cleanup()
        notifier.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="corral-agent", description="Corral node agent")
    parser.add_argument("--config", default=DEFAULT_CONFIG_PATH, help=f"agent config (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--debug", action="store_true", help="log wire traffic too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s corral-agent[%(process)d] %(levelname)s %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"corral-agent: {exc}", file=sys.stderr)
        return 2
    notifier = Notifier()
    holddown.wait_out(cfg.run_dir, notifier)  # a drill powered this node off: stay down until its time
    notifier.close()
    base_nice = priority.raise_control_plane()
    changed = os.getpriority(os.PRIO_PROCESS, 0) != base_nice
    try:
        asyncio.run(_serve(cfg, base_nice if changed else None))
    except (AlreadyRunning, StartupFailed) as exc:
        print(f"corral-agent: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
