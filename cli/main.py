"""`corral`: the command line for the whole cluster, usable on any node.

Reads come from the local agent's config replica; changes become jobs whose
log is streamed until they end (`--submit` returns the job id at once).
Exit codes: 0 ok, 1 the operation failed, 2 bad input, 3 agent unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any
from urllib.parse import quote, urlencode

from cli import jobs, many, networks, tags
from cli.client import EXIT_UNREACHABLE, AgentClient, AgentUnreachable, ApiError, socket_path
from cli.render import mib, table, warn_if_stale, when
from hostagent.callers import describe as caller_words
from hostagent.units import SizeError, parse_mib

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    pass


def _memory(value: str) -> str:
    """--memory as typed, once it parses as a size (the agent reads it again)."""
    try:
        parse_mib(value, "memory")
    except SizeError as exc:
        raise UsageError(str(exc)) from None
    return value


def _policy_value(value: str) -> Any:
    """A policy bound as typed: a count stays a number, a size stays text (the agent reads units)."""
    return int(value) if value.isdigit() else value


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    if value is None or value == "":
        return "-"
    return str(value)


def _pending(changes: dict[str, Any]) -> str:
    words = []
    if "memory_mib" in changes:
        words.append(f"memory {mib(changes['memory_mib'])}")
    if "vcpus" in changes:
        words.append(f"{changes['vcpus']} vCPUs")
    if "cdrom" in changes:
        words.append(f"a CD-ROM drive ({changes['cdrom'] or 'empty'})")
    if "hvparams" in changes:
        words.append("hypervisor parameters " + (",".join(f"{k}={v}" for k, v in sorted(changes["hvparams"].items()))
                                                 or "(the cluster's)"))
    return ", ".join(words)


def _kv_list(values: list[str] | None, what: str) -> dict[str, str]:
    """Parse repeated 'k=v,k2=v2' options into one dict."""
    out: dict[str, str] = {}
    for value in values or []:
        for part in value.split(","):
            if "=" not in part or not part.split("=", 1)[0]:
                raise UsageError(f"{what}: {part!r} is not NAME=VALUE (e.g. accel=tcg)")
            key, val = part.split("=", 1)
            out[key.strip()] = val.strip()
    return out


def _whole(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{what}: {value!r} is not a whole number") from None


def since_words(ts: float | None) -> str:
    return f" since {when(ts)}" if ts else ""


def _disk(spec: str) -> dict[str, str]:
    """'10G' or '10G,format=qcow2' or 'size=10G,format=qcow2'."""
    disk: dict[str, str] = {}
    for i, part in enumerate(spec.split(",")):
        if "=" in part:
            key, val = part.split("=", 1)
            if key not in ("size", "format"):
                raise UsageError(f"--disk: unknown option {key!r} (size, format)")
            disk[key] = val
        elif i == 0:
            disk["size"] = part
        else:
            raise UsageError(f"--disk: {part!r} is not NAME=VALUE")
    if "size" not in disk:
        raise UsageError("--disk needs a size, e.g. --disk 10G or --disk 10G,format=qcow2")
    try:
        parse_mib(disk["size"], "disk size")
    except SizeError as exc:
        raise UsageError(str(exc)) from None
    return disk


def _boot_arguments(s: argparse.ArgumentParser, modify: bool = False) -> None:
    s.add_argument("--boot-pattern", metavar="REGEX",
                   help="each boot must print a console line matching REGEX (e.g. 'login:') or it counts as a "
                        "failed start" + ("; '' removes the check" if modify else ""))
    s.add_argument("--boot-timeout", type=float, metavar="S", help="seconds a boot may take to print it (default 120)")


def _boot_options(a: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if a.boot_pattern is not None:
        body["boot_pattern"] = a.boot_pattern
    if a.boot_timeout is not None:
        body["boot_timeout_s"] = a.boot_timeout
    return body


class Cli:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.client = AgentClient(socket_path(args.socket))

    def out(self, answer: dict[str, Any], human: Any) -> int:
        if self.args.json:
            print(json.dumps(answer["data"], indent=2, sort_keys=True))
        else:
            warn_if_stale(answer)
            human(answer["data"])
        return 0

    def job(self, answer: dict[str, Any]) -> int:
        job_id = answer["data"]["job_id"]
        if self.args.submit:
            print(json.dumps({"job_id": job_id}) if self.args.json else job_id)
            return 0
        job = jobs.watch(self.client, job_id, self.args.timeout, quiet=self.args.json)
        if self.args.json:
            print(json.dumps(job, indent=2, sort_keys=True))
        return jobs.finish(job)

    # ---- cluster -----------------------------------------------------------
    def cluster_init(self) -> int:
        hv = _kv_list(self.args.hv, "--hv")
        return self.job(self.client.post("/v1/cluster/init", {"name": self.args.name, "hvparams": hv,
                                                              "candidate_pool_size": self.args.candidates,
                                                              "sync_rate_mib_s": self.args.sync_rate,
                                                              "restart_backoff_s": self.args.restart_backoff}))

    def cluster_info(self) -> int:
        def human(d: dict[str, Any]) -> None:
            if not d["initialized"]:
                print(f"node '{d['this_node']}' is not in a cluster yet: `corral cluster init --name NAME`")
                return
            print(f"cluster:      {d['name']}")
            print(f"master:       {d['master'] or 'NONE ELECTED'}" + (f" (token {d['token']})" if d["token"] else ""))
            print(f"candidates:   {', '.join(d['candidates']) or '-'}")
            print(f"nodes:        {d['nodes']}    instances: {d['instances']}")
            print(f"this node:    {d['this_node']}" + (" (master)" if d["this_node_is_master"] else ""))
            quorum = d.get("quorum") or {}
            print("quorum:       " + ("yes (etcd has a leader; changes are accepted)" if quorum.get("ok")
                                      else f"NO - changes are refused: {quorum.get('reason')}"))
            if d["hvparams"]:
                print("hv defaults:  " + ", ".join(f"{k}={v}" for k, v in sorted(d["hvparams"].items())))
            print(f"instances:    new ones get {mib(d.get('default_memory_mib', 512))} and {d.get('default_vcpus', 1)} "
                  f"vCPU(s) unless they say; templates {', '.join(d.get('enabled_disk_templates') or ['all'])}"
                  + ("; an owner is required" if d.get("require_owner") else ""))
            if d.get("policy"):
                print("policy:       " + ", ".join(f"{k.replace('_mib', '')}="
                                               + (mib(v) if k.endswith("_mib") else str(v))
                                               for k, v in sorted(d["policy"].items())))
            if d.get("tags"):
                print(f"tags:         {', '.join(d['tags'])}")
            print(f"failover:     auto-failover default {'on' if d.get('auto_failover') else 'off'}; more than "
                  f"{d.get('max_lost_nodes') or 'max(1, nodes/3)'} node(s) lost at once raise the alert; failback "
                  + (f"after {d['failback_after_s']:.0f} s back" if d.get("failback_after_s") else "only on request"))
            if d.get("fencing") == "disarmed":
                print(f"FENCING:      DISARMED{since_words(d.get('fencing_since'))}: nodes cut off keep running "
                      "their instances and NOTHING fails over automatically; `corral cluster fencing arm`")
            else:
                print("fencing:      armed (a node cut off stops its auto-failover instances; the master fails "
                      "them over once its lease expires)")
            if d.get("alert"):
                print(f"ALERT:        {d['alert']['reason']}{since_words(d['alert'].get('since'))}")
        return self.out(self.client.get("/v1/cluster"), human)

    def cluster_fencing(self) -> int:
        answer = self.client.post("/v1/cluster/fencing", {"armed": self.args.state == "arm"})
        return self.out(answer, lambda d: print(f"fencing is {d['fencing']}" + ("" if d["changed"] else
                                                                               " (it already was)")))

    def cluster_alert_clear(self) -> int:
        return self.out(self.client.post("/v1/cluster/alert/clear"),
                        lambda d: print(f"alert cleared (it said: {d['cleared']['reason']})"))

    def cluster_modify(self) -> int:
        body: dict[str, Any] = {}
        if self.args.auto_failover:
            body["auto_failover"] = self.args.auto_failover == "yes"
        if self.args.failback_after is not None:
            body["failback_after_s"] = self.args.failback_after
        if self.args.max_lost_nodes:
            body["max_lost_nodes"] = None if self.args.max_lost_nodes == "default" else _whole(
                self.args.max_lost_nodes, "--max-lost-nodes")
        if self.args.default_memory:
            body["default_memory"] = self.args.default_memory
        if self.args.default_vcpus is not None:
            body["default_vcpus"] = self.args.default_vcpus
        if self.args.require_owner:
            body["require_owner"] = self.args.require_owner == "yes"
        if self.args.job_archive_after is not None:
            body["job_archive_after_s"] = self.args.job_archive_after
        if self.args.hv:  # NAME= puts NAME back to its built-in default
            body["hvparams"] = {k: (v or None) for k, v in _kv_list(self.args.hv, "--hv").items()}
        if self.args.candidates is not None:
            body["candidate_pool_size"] = self.args.candidates
        if self.args.sync_rate is not None:
            body["sync_rate_mib_s"] = self.args.sync_rate
        if self.args.restart_backoff is not None:
            body["restart_backoff_s"] = self.args.restart_backoff
        if self.args.disk_templates:
            body["enabled_disk_templates"] = [t.strip() for t in self.args.disk_templates.split(",") if t.strip()]
        if self.args.policy:  # NAME= lifts that bound
            body["policy"] = {k: (_policy_value(v) if v else None)
                              for k, v in _kv_list(self.args.policy, "--policy").items()}
        return self.out(self.client.post("/v1/cluster/modify", body),
                        lambda d: print(", ".join(f"{k}={'default' if v is None else v}" for k, v in d.items())))

    def cluster_simulate(self) -> int:
        def human(d: dict[str, Any]) -> None:
            print(f"if {', '.join(d['fail'])} failed now:")
            for e in d["events"]:
                print(f"  {e['kind']:<11} {e['message']}")
            if not d["failovers"]:
                print("  nothing would be failed over")
            print("everything that should move would fit" if d["fits"] else
                  f"NOT everything would fit: no memory for {', '.join(d['short'])} (see above)")
        return self.out(self.client.get("/v1/cluster/simulate?fail=" + ",".join(self.args.fail)), human)

    def cluster_join(self) -> int:
        answer = self.client.post("/v1/cluster/join", {"address": self.args.address, "token": self.args.token})
        return self.out(answer, lambda d: print(f"node '{d['node']}' joined cluster '{d['cluster']}' "
                                                f"(master: {d['master']})"))

    def cluster_master_failover(self) -> int:
        before = self.client.get("/v1/cluster")["data"]["master"]
        self.client.post("/v1/cluster/master-failover", {"to": self.args.to} if self.args.to else {})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = self.client.get("/v1/cluster")["data"]
            if info["master"] not in (None, before):
                print(json.dumps({"from": before, "to": info["master"]}) if self.args.json
                      else f"master is now '{info['master']}' (was '{before}')")
                return 0
            time.sleep(0.2)
        print(f"error: no new master within 30 s after '{before}' stepped down; see `corral cluster info`",
              file=sys.stderr)
        return 1

    def cluster_rotate_secrets(self) -> int:
        return self.job(self.client.post("/v1/cluster/rotate-secrets", {"new_ca": self.args.new_ca}))

    def cluster_replica(self) -> int:
        return self.out(self.client.get("/v1/cluster/replica"), lambda d: print(
            f"node '{d['node']}': replica at revision {d['revision']}, config checksum {d['checksum'][:16]} "
            f"(without node reports)"))

    def cluster_verify(self) -> int:
        """With --repair: first what the master did about each finding, then a fresh verify."""
        steps = self.client.post("/v1/cluster/repair")["data"] if self.args.repair else None
        if steps is not None and not self.args.json:
            for step in steps:
                print(f"{step['outcome'].upper()}: {step['message']}")
                print(f"    {step['action'] + ': ' if step['action'] else ''}{step['detail']}")
            print("verifying again:" if steps else "cluster verify --repair: nothing to repair")
        answer = self.client.get("/v1/cluster/verify")
        findings = answer["data"]
        if steps is not None and self.args.json:
            print(json.dumps({"repair": steps, "findings": findings}, indent=2, sort_keys=True))
        else:
            self.out(answer, lambda d: print("\n".join(f"{f['severity'].upper()}: {f['message']}" for f in d)
                                             or "cluster verify: no problems found"))
        return 1 if any(f["severity"] == "error" for f in findings) else 0

    # ---- nodes -------------------------------------------------------------
    def node_list(self) -> int:
        def flags(r: dict[str, Any]) -> str:
            return ",".join(f for f in ("drained", "offline") if r[f]) or "-"

        def human(rows: list[dict[str, Any]]) -> None:
            print(table(["NODE", "ROLE", "STATUS", "GOSSIP", "ETCD", "LEASE", "FLAGS", "MEM FREE/TOTAL",
                         "DISK FREE/TOTAL", "CPUS", "PINST", "SINST", "PROBLEMS"],
                        [[r["name"], r["role"], r["status"], r["gossip"], r["etcd"], r["lease"], flags(r),
                          f"{mib(r['memory_free'])}/{mib(r['memory_total'])}",
                          f"{mib(r['disk_free'])}/{mib(r['disk_total'])}", r["cpus"],
                          r["primary_instances"], r["secondary_instances"], "; ".join(r["problems"]) or ""]
                         for r in rows]))
        return self.out(self.client.get("/v1/nodes"), human)

    def node_info(self) -> int:
        def human(r: dict[str, Any]) -> None:
            for key in ("name", "role", "status", "address", "gossip", "drained", "offline", "cpus", "load_1m",
                        "version", "report_age_s"):
                print(f"{key + ':':14}{r[key]}")
            print(f"{'memory:':14}{mib(r['memory_free'])} free of {mib(r['memory_total'])}")
            print(f"{'disk:':14}{mib(r['disk_free'])} free of {mib(r['disk_total'])}")
            if r.get("loop_lag_ms") is not None:
                print(f"{'loop lag:':14}{r['loop_lag_ms']:g} ms at worst in the last minute (agent's event loop)")
            lvm = r.get("lvm")
            if lvm:
                print(f"{'lvm:':14}volume group {lvm['vg']}: " + (lvm["error"] if "error" in lvm else
                      f"{mib(lvm['free_mib'])} free of {mib(lvm['size_mib'])}"))
            print(f"{'instances:':14}{', '.join(r['instances']) or '-'}")
            fencing = r.get("fencing")
            if fencing:
                left = fencing.get("deadline_in_s")
                print(f"{'fencing:':14}" + ("disarmed: stops nothing when cut off" if not fencing["armed"] else
                      f"stops {', '.join(fencing['guarded']) or 'nothing'} if its lease is not renewed"
                      + (f" within {left:.0f} s" if left is not None else "")))
            print(f"{'os:':14}{', '.join(sorted(r['os'])) or '-'}")
            if r["problems"]:
                print(f"{'problems:':14}{'; '.join(r['problems'])}")
        return self.out(self.client.get(f"/v1/nodes/{quote(self.args.name)}"), human)

    def node_add(self) -> int:
        body: dict[str, Any] = {"name": self.args.name, "address": self.args.address}
        if self.args.ttl:
            body["ttl_s"] = self.args.ttl
        answer = self.client.post("/v1/nodes", body)

        def human(d: dict[str, Any]) -> None:
            print(f"join token for node '{d['node']}' at {d['address']} (one use, expires {when(d['expires'])}):")
            print(f"  {d['token']}")
            print(f"on {d['node']}, with its agent running: corral cluster join <ADDRESS OF A NODE> --token {d['token']}")
        return self.out(answer, human)

    def node_tokens(self) -> int:
        def human(rows: list[dict[str, Any]]) -> None:
            print(table(["NODE", "ADDRESS", "CREATED", "EXPIRES", "STATE"],
                        [[r["node"], r["address"], when(r["created"]), when(r["expires"]), r["state"]]
                         for r in rows]) if rows else "no join tokens (used and expired ones are deleted)")
        return self.out(self.client.get("/v1/join-tokens"), human)

    def node_token_revoke(self) -> int:
        answer = self.client.delete(f"/v1/join-tokens/{quote(self.args.name)}")
        return self.out(answer, lambda d: print(f"revoked {d['revoked']} join token(s) for node '{d['node']}'"))

    def node_remove(self) -> int:
        suffix = "?force=1" if self.args.force else ""
        answer = self.client.delete(f"/v1/nodes/{quote(self.args.name)}{suffix}")
        return self.out(answer, lambda d: print(f"node '{d['node']}' removed"
                                                + (f"; its instances now show node-down: {', '.join(d['instances_left'])}"
                                                   if d["instances_left"] else "")))

    def node_modify(self) -> int:
        changes = {k: v == "yes" for k, v in (("candidate", self.args.candidate), ("drained", self.args.drained),
                                              ("offline", self.args.offline)) if v is not None}
        if not changes:
            raise UsageError("nothing to change: give --candidate, --drained or --offline (yes|no)")
        answer = self.client.post(f"/v1/nodes/{quote(self.args.name)}/modify", changes)
        return self.out(answer, lambda d: print(f"node '{d['name']}': " + ", ".join(
            f"{k}={'yes' if v else 'no'}" for k, v in changes.items())))

    # ---- users -------------------------------------------------------------
    def user_add(self) -> int:
        answer = self.client.post("/v1/users", {"name": self.args.name, "role": self.args.role})

        def human(d: dict[str, Any]) -> None:
            print(f"user '{d['name']}' ({d['role']}) created; its token (shown only now):")
            print(f"  {d['token']}")
            print("use it as the HTTP header  Authorization: Bearer <token>  on any node's API "
                  f"(port {d.get('api_port', 7947)})")
        return self.out(answer, human)

    def user_list(self) -> int:
        return self.out(self.client.get("/v1/users"), lambda rows: print(table(
            ["USER", "ROLE", "CREATED"], [[u["name"], u["role"], when(u["created"])] for u in rows])))

    def user_remove(self) -> int:
        answer = self.client.delete(f"/v1/users/{quote(self.args.name)}")
        return self.out(answer, lambda d: print(f"user '{d['name']}' removed"))

    # ---- instances ---------------------------------------------------------
    def instance_add(self) -> int:
        a = self.args
        body: dict[str, Any] = {"name": a.name, "os": a.os, "disk_template": a.disk_template,
                                "start": not a.no_start,
                                "disks": [_disk(d) for d in (a.disk or ["1G"])],
                                "nics": [networks.nic_spec(n) for n in (a.net or ["mode=user"])],
                                "hvparams": _kv_list(a.hv, "--hv"), "osparams": _kv_list(a.os_param, "--os-param")}
        for field in ("owner", "description"):
            if getattr(a, field) is not None:
                body[field] = getattr(a, field)
        if a.tag:
            body["tags"] = a.tag
        if a.memory is not None:  # otherwise the cluster's default (`cluster modify --default-memory`)
            body["memory"] = _memory(a.memory)
        if a.vcpus is not None:
            body["vcpus"] = a.vcpus
        if a.node:
            body["node"] = a.node
        if a.priority:
            body["priority"] = a.priority
        if a.after:
            body["after"] = a.after
        body.update(_boot_options(a))
        if a.auto_failover:
            body["auto_failover"] = a.auto_failover == "yes"
        if a.cdrom is not None:
            body["cdrom"] = a.cdrom
        return self.job(self.client.post("/v1/instances", body))

    def instance_modify(self) -> int:
        a = self.args
        body: dict[str, Any] = _boot_options(a)
        if a.priority:
            body["priority"] = a.priority
        if a.after or a.no_after:
            body["after"] = a.after or []
        if a.auto_failover:
            body["auto_failover"] = {"yes": True, "no": False, "default": None}[a.auto_failover]
        if a.memory:
            body["memory"] = _memory(a.memory)
        if a.vcpus is not None:
            body["vcpus"] = a.vcpus
        for text in ("owner", "description"):
            if getattr(a, text) is not None:
                body[text] = getattr(a, text)
        for option, field in ((a.hv, "hvparams"), (a.os_param, "osparams")):
            if option:  # NAME= (no value) removes NAME: back to the default
                body[field] = {k: (v or None) for k, v in _kv_list(option, f"--{field[:2]}").items()}
        if a.net:
            body["nics"] = [networks.nic_change(n) for n in a.net]
        if a.cdrom is not None:
            body["cdrom"] = a.cdrom
        if not body:
            raise UsageError("nothing to change: give --cdrom, --memory, --vcpus, --hv, --os-param, --net, --owner, "
                             "--description, --priority, --after/--no-after, --boot-pattern, --boot-timeout or "
                             "--auto-failover")
        body.update({"restart": a.restart, "force": a.force})
        return self.job(self.client.post(f"/v1/instances/{quote(a.name)}/modify", body))

    def instance_list(self) -> int:
        a = self.args
        query = {k: v for k, v in (("tag", a.tag), ("node", a.node), ("status", a.status), ("owner", a.owner)) if v}
        url = "/v1/instances" + ("?" + urlencode(query) if query else "")

        def chosen(rows: list[dict[str, Any]]) -> None:
            fields = [f.strip() for f in a.output.split(",") if f.strip()]
            unknown = [f for f in fields if rows and f not in rows[0]]
            if unknown:
                raise UsageError(f"-o: no field {', '.join(unknown)} (fields: {', '.join(sorted(rows[0]))})")
            print(table([f.upper() for f in fields], [[_cell(r.get(f)) for f in fields] for r in rows]))

        if a.output:
            return self.out(self.client.get(url), chosen)

        def human(rows: list[dict[str, Any]]) -> None:
            print(table(["INSTANCE", "STATUS", "NODE", "TEMPLATE", "MEMORY", "VCPUS", "OS", "REASON"],
                        [[r["name"], r["status"],
                          r["primary_node"] + (f":{r['secondary_node']}" if r["secondary_node"] else ""),
                          r["disk_template"] + (f" ({r['replication']['summary']})" if r.get("replication") else ""),
                          mib(r["memory"]) + ("*" if "memory_mib" in r.get("pending", {}) else ""),
                          f"{r['vcpus']}" + ("*" if "vcpus" in r.get("pending", {}) else ""), r["os"],
                          "; ".join(filter(None, [r["reason"], "pending: restart to apply" if r.get("pending")
                                                  else ""]))] for r in rows]))
        return self.out(self.client.get(url), human)

    def instance_info(self) -> int:
        def human(r: dict[str, Any]) -> None:
            print(f"instance:     {r['name']} ({r['uuid']})")
            print(f"status:       {r['status']}" + (f" - {r['reason']}" if r["reason"] else "")
                  + (f" (pid {r['pid']})" if r["pid"] else ""))
            for label, value in (("owner:", r.get("owner")), ("description:", r.get("description")),
                                 ("tags:", ", ".join(r.get("tags") or []))):
                if value:
                    print(f"{label:14}{value}")
            if r.get("pending"):
                print(f"pending:      {_pending(r['pending'])}: takes effect at the next restart "
                      f"(`corral instance reboot {r['name']}`)")
            print(f"admin state:  {r['admin_state']} (restart priority {r['priority']}"
                  + (f", after {', '.join(r['after'])})" if r["after"] else ")"))
            boot = "none"
            if r.get("boot_pattern"):
                boot = f"a console line matching '{r['boot_pattern']}' within {r['boot_timeout_s']:.0f} s"
                boot += f" (this boot: {r['boot']})" if r.get("boot") else ""
            print(f"boot check:   {boot}")
            own = r.get("auto_failover")
            print("auto failover: " + (("yes" if own else "no") if own is not None else
                                       f"default ({'yes' if r.get('auto_failover_default') else 'no'})"))
            print(f"nodes:        primary {r['primary_node']}" + (f", secondary {r['secondary_node']}" if r["secondary_node"] else ""))
            print(f"os:           {r['os']}")
            if r.get("cdrom") is not None:
                print(f"cdrom:        {r['cdrom'] or '(empty)'}")
            print(f"resources:    {mib(r['memory'])} memory, {r['vcpus']} vcpus")
            rep = r.get("replication")
            if rep:
                print(f"replication:  to {rep['secondary']}: {rep['summary']}")
                since = rep.get("record_since")
                print(f"failover:     the copy is recorded {rep.get('record', 'unknown')}"
                      + (f" since {when(since)}" if since else ""))
                last = rep.get("last_degraded")
                if last:
                    print(f"last degraded: {when(last['at'])}: {last['reason']}; guest paused "
                          f"{last['pause_ms']} ms until the master recorded the copy out of date")
            states = {s["index"]: s for s in (rep or {}).get("disks", [])}
            for d in r["disks"]:
                where = f" on {r['primary_node']}" + (f" + {rep['secondary']}" if rep else "")
                state = states.get(d["index"])
                extra = ""
                if state:
                    extra = f", {state['status'].replace('_', ' ')}"
                    if state["status"] == "syncing":
                        extra += f" {state['percent']:.1f} %" + (f", ETA {state['eta_s']:.0f} s" if state["eta_s"] else "")
                print(f"disk {d['index']}:       {r['disk_template']} {mib(d['size_mib'])} {d['format']}{where}{extra}")
            for i, n in enumerate(r["nics"]):
                print(f"nic {i}:        {n['mode']} {n['mac']}" + (f" bridge {n['bridge']}" if n["bridge"] else "")
                      + (f" vlan {n['vlan']}" if n.get("vlan") else "")
                      + (f" network {n['network']} ip {n.get('ip') or 'none'}" if n.get("network") else ""))
            if r["hvparams"]:
                print("hv overrides: " + ", ".join(f"{k}={v}" for k, v in sorted(r["hvparams"].items())))
            print(f"created:      {when(r['ctime'])}")
            if r.get("console_tail"):
                print("console (last lines):")
                for line in r["console_tail"]:
                    print(f"  | {line}")
        return self.out(self.client.get(f"/v1/instances/{quote(self.args.name)}"), human)

    def instance_action(self, action: str) -> int:
        body = self._action_body(action)
        if action in ("start", "stop", "reboot"):
            if self.args.name and many.selected(self.args):
                raise UsageError("give an instance name or --all/--node/--tag/--owner, not both")
            if not self.args.name:
                if not many.selected(self.args):
                    raise UsageError("which instance? give its name, or --all, --node N, --tag T or --owner O")
                try:
                    names = many.choose(self.client, self.args)
                except many.NothingSelected as exc:
                    raise UsageError(str(exc)) from None
                return many.run(self.client, action, names, body, self.args.parallel, self.args.timeout,
                                self.args.json)
        return self.job(self.client.post(f"/v1/instances/{quote(self.args.name)}/{action}", body))

    def _action_body(self, action: str) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if action == "stop":
            body = {"force": self.args.force, "timeout_s": self.args.shutdown_timeout}
        elif action == "reboot":
            body = {"type": self.args.type}
        elif action == "migrate":
            body = {"node": self.args.node, "max_bandwidth_mib_s": self.args.max_bandwidth}
        elif action == "failover":
            body = {"ignore_consistency": self.args.ignore_consistency}
        elif action in ("move", "replace-secondary"):
            body = {"node": self.args.node}
        elif action == "grow-disk":
            body = {"disk": self.args.disk, "size": self.args.size}
        elif action == "add-disk":
            size, _, fmt = self.args.size.partition(",format=")
            body = {"size": size, "format": fmt or "raw"}
        elif action == "remove-disk":
            body = {"disk": self.args.disk, "destroy_data": self.args.destroy_data}
        elif action == "rename":
            body = {"new_name": self.args.new_name}
        elif action == "reinstall":
            body = {"yes": self.args.yes, "os": self.args.os,
                    "osparams": _kv_list(self.args.os_param, "--os-param") if self.args.os_param else None}
        return body

    def instance_remove(self) -> int:
        return self.job(self.client.delete(f"/v1/instances/{quote(self.args.name)}"))

    def instance_console(self) -> int:
        if self.args.listen and not self.args.vnc:
            raise UsageError("--listen relays the VNC display: give --vnc too")
        if self.args.vnc:
            return self.instance_vnc()
        from cli.console import attach  # imports aiohttp: only for this command
        return attach(self.client.path, self.args.name)

    def instance_vnc(self) -> int:
        """How to reach the VNC display (its password too, for vnc=tcp); with --listen, relay it here."""
        from cli import vnc  # imports aiohttp: only for this command
        try:
            listen = vnc.parse_listen(self.args.listen) if self.args.listen else None
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        answer = self.client.get(f"/v1/instances/{quote(self.args.name)}/vnc")
        d = answer["data"]
        d["ssh"] = f"ssh -N -L 5901:{d['socket']} root@{d['address']}" if d["mode"] == "unix" else ""

        def human(d: dict[str, Any]) -> None:
            if listen is not None:
                print(f"the VNC display of '{d['name']}' (node '{d['node']}') is relayed on {listen[0]}:{listen[1]}: "
                      "point a VNC viewer there; Ctrl-C stops")
                if not vnc.is_loopback(listen[0]):
                    print(f"WARNING: {listen[0]} is not loopback: whoever reaches that port reaches the display"
                          + (" with no password" if d["mode"] == "unix" else ""), file=sys.stderr)
            elif d["mode"] == "unix":
                print(f"the VNC display of '{d['name']}' is the unix socket {d['socket']} on node '{d['node']}', "
                      "which only root there can open; relay it to a port here (from any node) with")
                print(f"  corral instance console {d['name']} --vnc --listen 5901")
                print(f"or bring it here with `{d['ssh']}`; then point a VNC viewer at localhost:5901")
            else:
                print(f"the VNC display of '{d['name']}' is at {d['host']}:{d['port']} on node '{d['node']}'")
            if d["mode"] == "tcp":
                print(f"VNC password: {d['password'] or '(none recorded: `corral instance modify` gives it one)'}")
        status = self.out(answer, human)
        if listen is None or status:
            return status
        sys.stdout.flush()
        return vnc.listen(self.client.path, self.args.name, *listen)

    def node_evacuate(self, action: str) -> int:
        body = {"ignore_consistency": self.args.ignore_consistency} if action == "failover" else {}
        data = self.client.post(f"/v1/nodes/{quote(self.args.name)}/{action}", body)["data"]
        for line in data["skipped"]:
            print(f"skipped {line}", file=sys.stderr)
        if not data["job_ids"]:
            print(f"node '{self.args.name}' is the primary of no replicated instance")
        worst = 0
        for job_id in data["job_ids"]:
            worst = max(worst, self.job({"data": {"job_id": job_id}}))
        return worst

    def node_drain(self, drained: bool) -> int:
        answer = self.client.post(f"/v1/nodes/{quote(self.args.name)}/{'drain' if drained else 'undrain'}")

        def human(d: dict[str, Any]) -> None:
            if not d["changed"]:
                print(f"node '{d['node']}' {'was already' if drained else 'was not'} drained; nothing changed")
            elif drained:
                print(f"node '{d['node']}' drained: no new instances are placed there "
                      f"(`corral node evacuate {d['node']}` moves its instances off)")
            else:
                print(f"node '{d['node']}' undrained: it takes new instances again")
        return self.out(answer, human)

    def node_evacuate_all(self) -> int:
        path = f"/v1/nodes/{quote(self.args.name)}/evacuate"
        if not self.args.dry_run:
            return self.job(self.client.post(path, {}))
        answer = self.client.post(path, {"dry_run": True})

        def human(plan: dict[str, Any]) -> None:
            steps = plan["steps"]
            print(f"evacuating node '{plan['node']}' would take {len(steps)} step(s)"
                  + (":" if steps else " (it holds no instance)"))
            for index, step in enumerate(steps, 1):
                print(f"  {index}. {step['description']}")
            for problem in plan["problems"]:
                print(f"  cannot: {problem}")
            print("dry run: nothing was changed" + ("" if plan["fits"] else
                                                    "; without --dry-run the evacuation would be refused"))
        self.out(answer, human)
        return 0 if answer["data"]["fits"] else 1

    # ---- jobs and OS -------------------------------------------------------
    def events(self) -> int:
        query = "&".join(f"{k}={quote(v)}" for k, v in (("instance", self.args.instance), ("node", self.args.node),
                                                          ("limit", str(self.args.limit))) if v)
        return self.out(self.client.get(f"/v1/events?{query}"), lambda rows: print(table(
            ["TIME", "KIND", "INSTANCE", "NODE", "WHY"],
            [[when(e["time"]), e["kind"], e["instance"], e["node"],
              e["message"] + (f" (by {caller_words(e['caller'])})" if e.get("caller") else "")] for e in rows])))

    def job_list(self) -> int:
        def human(rows: list[dict[str, Any]]) -> None:
            print(table(["ID", "STATUS", "CREATED", "SUMMARY", "ERROR"],
                        [[r["id"], r["status"], when(r["created"]), r["summary"], r["error"] or ""] for r in rows]))
        a = self.args
        query = {k: v for k, v in (("archived", "1" if a.archived else ""),
                                   ("status", "running" if a.running else "error" if a.failed else "")) if v}
        return self.out(self.client.get("/v1/jobs" + ("?" + urlencode(query) if query else "")), human)

    def job_info(self) -> int:
        def human(j: dict[str, Any]) -> None:
            print(f"job {j['id']}: {j['summary']} ({j['op']})")
            print(f"status:   {j['status']}" + (f" - {j['error']}" if j["error"] else ""))
            print(f"created:  {when(j['created'])}  started: {when(j['started'])}  ended: {when(j['ended'])}")
            print(f"master:   {j['master']}")
            print(f"by:       {caller_words(j.get('caller'))}")
            print("log:")
            for t, line in j["log"]:
                print(f"  {when(t)} {line}")
        return self.out(self.client.get(f"/v1/jobs/{self.args.id}"), human)

    def job_cancel(self) -> int:
        self.client.post(f"/v1/jobs/{self.args.id}/cancel")
        print(f"job {self.args.id} canceled")
        return 0

    def job_watch(self) -> int:
        job = jobs.watch(self.client, self.args.id, self.args.timeout, quiet=self.args.json)
        if self.args.json:
            print(json.dumps(job, indent=2, sort_keys=True))
        return jobs.finish(job)

    def drill_master_failover(self) -> int:
        from cli.drill import master_failover
        return master_failover(self.client, self.args.rounds, self.args.mode, self.args.freeze_seconds,
                               self.args.json)

    def drill_node_loss(self) -> int:
        from cli.drill_nodeloss import node_loss
        return node_loss(self.client, self.args.node, self.args.mode, self.args.duration, self.args.json)

    def os_list(self) -> int:
        def human(d: dict[str, Any]) -> None:
            print(table(["OS", "KIND", "VARIANTS", "PATH"],
                        [[r["name"], r["kind"], ",".join(r["variants"]) or "-", r["path"]] for r in d["os"]]))
            for p in d["problems"]:
                print(f"warning: {p}", file=sys.stderr)
        return self.out(self.client.get("/v1/os"), human)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS,
                        help="agent socket (default $CORRAL_SOCKET or /run/corral/agent.sock)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    jobopts = argparse.ArgumentParser(add_help=False)
    jobopts.add_argument("--submit", action="store_true", help="print the job id and return at once")
    jobopts.add_argument("--timeout", type=float, default=3600, help="stop waiting for the job after S seconds")

    p = argparse.ArgumentParser(prog="corral", description="Corral: a KVM cluster with no fixed master",
                                parents=[common])
    top = p.add_subparsers(dest="group", required=True,
                           metavar="{cluster,node,instance,network,job,events,user,drill,os,search-tags}")

    def group(name: str, help_: str) -> argparse._SubParsersAction:
        g = top.add_parser(name, help=help_, parents=[common])
        return g.add_subparsers(dest="cmd", required=True)

    c = group("cluster", "the cluster as a whole")
    s = c.add_parser("init", help="create a cluster with this node as master", parents=[common, jobopts])
    s.add_argument("--name", required=True)
    s.add_argument("--hv", action="append", help="default hypervisor parameters, e.g. accel=tcg")
    s.add_argument("--candidates", type=int, default=3, choices=(1, 3, 5),
                   help="master candidates (etcd members) to keep when nodes allow (default 3)")
    s.add_argument("--restart-backoff", type=float, metavar="S",
                   help="seconds before the master's second attempt to restart an instance that died; "
                        "doubles up to 60 s, 5 attempts (default 2)")
    s.add_argument("--sync-rate", type=float, default=0.0, metavar="MIB_S",
                   help="cap on the background copy of replicated disks (full syncs, resyncs); "
                        "guest writes are never slowed (default 0: no cap)")
    c.add_parser("info", help="name, master, candidates, quorum", parents=[common])
    s = c.add_parser("verify", help="check the cluster; non-zero exit on errors", parents=[common])
    s.add_argument("--repair", action="store_true",
                   help="have the master fix what is safe (stray QEMUs, orphan NBD exports, leftover restart "
                        "tracks; never disks), print what it did, then verify again")
    c.add_parser("replica", help="this node's config replica: revision and checksum", parents=[common])
    s = c.add_parser("rotate-secrets", help="new gossip key and node certificates, without downtime",
                     parents=[common, jobopts])
    s.add_argument("--new-ca", action="store_true",
                   help="also replace the cluster CA (etcd members restart one at a time; "
                        "join tokens issued before stop working)")
    s = c.add_parser("join", help="join this node to a cluster (token from `corral node add`)", parents=[common])
    s.add_argument("address", help="any cluster node's address, ADDRESS or ADDRESS:PORT")
    s.add_argument("--token", required=True)
    s = c.add_parser("master-failover", help="hand the master role to another candidate", parents=[common])
    s.add_argument("--to", help="the candidate to become master (default: any)")
    s = c.add_parser("fencing", help="disarm fencing for network maintenance (nothing self-fences or fails "
                                     "over), or arm it again", parents=[common])
    s.add_argument("state", choices=("arm", "disarm"))
    s = c.add_parser("alert", help="clear the alert raised when many nodes were lost at once", parents=[common])
    s.add_argument("action", choices=("clear",))
    s = c.add_parser("modify", help="cluster-wide settings: failover, instance defaults", parents=[common])
    s.add_argument("--auto-failover", choices=("yes", "no"),
                   help="default for instances without their own setting (default no)")
    s.add_argument("--max-lost-nodes", metavar="N|default",
                   help="more nodes lost at once raise the alert and stop automatic moves "
                        "(default: one, or a third of the nodes)")
    s.add_argument("--failback-after", type=float, metavar="S",
                   help="instances failed over automatically migrate back once their node has been back S "
                        "seconds and their copy there is in sync (default 0: only with `instance migrate`)")
    s.add_argument("--default-memory", metavar="SIZE", help="memory of new instances that give none (512M)")
    s.add_argument("--default-vcpus", type=int, metavar="N", help="vCPUs of new instances that give none (1)")
    s.add_argument("--hv", action="append", metavar="NAME=VALUE",
                   help="hypervisor defaults every instance inherits (NAME= resets one); at each instance's "
                        "next start")
    s.add_argument("--candidates", type=int, choices=(1, 3, 5), help="master candidates (etcd members) to keep")
    s.add_argument("--sync-rate", type=float, metavar="MIB_S", help="cap on background disk copies (0: none)")
    s.add_argument("--restart-backoff", type=float, metavar="S", help="seconds before the second restart attempt")
    s.add_argument("--disk-templates", metavar="T[,T]", help="templates new instances may use, e.g. file,mirror")
    s.add_argument("--policy", action="append", metavar="BOUND=VALUE",
                   help="instance bounds: min_memory, max_memory, max_disk_size (e.g. 4G), min_vcpus, max_vcpus, "
                        "max_disks; BOUND= lifts one")
    s.add_argument("--job-archive-after", type=float, metavar="S",
                   help="finished jobs move to the archive S seconds after they ended (default 21600: 6 h)")
    s.add_argument("--require-owner", choices=("yes", "no"),
                   help="every new instance must name its owner; verify lists those without one")
    s = c.add_parser("simulate", help="what the master would do if a node died now (nothing is changed)",
                     parents=[common])
    s.add_argument("--fail", action="append", required=True, metavar="NODE", help="a node to take away (repeat)")

    n = group("node", "nodes")
    n.add_parser("list", help="all nodes", parents=[common])
    s = n.add_parser("info", help="one node", parents=[common])
    s.add_argument("name")
    s = n.add_parser("add", help="issue a one-time join token for a new node", parents=[common])
    s.add_argument("name")
    s.add_argument("--address", required=True, help="the new node's IP address")
    s.add_argument("--ttl", type=float, help="token lifetime in seconds (default 3600)")
    n.add_parser("tokens", help="join tokens that can still be used (never their secret)", parents=[common])
    s = n.add_parser("token-revoke", help="revoke the join token(s) of a node not yet joined", parents=[common])
    s.add_argument("name")
    s = n.add_parser("remove", help="remove a node from the cluster", parents=[common])
    s.add_argument("name")
    s.add_argument("--force", action="store_true", help="even if it still hosts instances")
    s = n.add_parser("migrate", help="live-migrate every replicated primary instance off the node",
                     parents=[common, jobopts])
    s.add_argument("name")
    s = n.add_parser("failover", help="fail over every replicated primary instance of the node",
                     parents=[common, jobopts])
    s.add_argument("name")
    s.add_argument("--ignore-consistency", action="store_true", help="as for `instance failover`")
    for name, help_ in (("drain", "place no new instances on the node"),
                        ("undrain", "let the node take new instances again")):
        s = n.add_parser(name, help=help_, parents=[common])
        s.add_argument("name")
    s = n.add_parser("evacuate", help="drain the node and move every instance and disk copy off it (one job)",
                     parents=[common, jobopts])
    s.add_argument("name")
    s.add_argument("--dry-run", action="store_true", help="print the plan only; change nothing")
    s = n.add_parser("modify", help="change a node's flags", parents=[common])
    s.add_argument("name")
    for flag, help_ in (("candidate", "may be a master candidate (etcd member)"),
                        ("drained", "takes no new instances"), ("offline", "out of service")):
        s.add_argument(f"--{flag}", choices=("yes", "no"), help=help_)

    i = group("instance", "instances (virtual machines)")
    s = i.add_parser("add", help="create an instance", parents=[common, jobopts])
    s.add_argument("name")
    s.add_argument("--os", "-o", required=True, help="OS definition or image (`corral os list`)")
    s.add_argument("--node", "-n", help="PRIMARY or PRIMARY:SECONDARY (default: chosen by the master)")
    s.add_argument("--disk-template", "-t", default="file",
                   help="file (local files) or mirror (copied synchronously to a secondary node)")
    s.add_argument("--disk", action="append", help="SIZE[,format=raw|qcow2]; repeat for more disks (default 1G)")
    s.add_argument("--memory", "-m", help="e.g. 512M, 2G (default: the cluster's, 512M unless changed)")
    s.add_argument("--vcpus", type=int, help="virtual CPUs (default: the cluster's, 1 unless changed)")
    s.add_argument("--net", action="append", help=networks.NET_HELP + "; repeat for more NICs")
    s.add_argument("--hv", action="append", help="hypervisor parameters, e.g. accel=tcg,kernel_path=/boot/vmlinuz")
    s.add_argument("--os-param", action="append", help="OS parameters NAME=VALUE")
    s.add_argument("--no-start", action="store_true", help="create but do not start")
    s.add_argument("--owner", help="who to ask about this instance (`cluster modify --require-owner yes` "
                                   "makes it required)")
    s.add_argument("--description", help="one line saying what it is for")
    s.add_argument("--cdrom", metavar="PATH", help="an ISO file in the node's iso_dirs as a CD-ROM "
                                                   "(boot from it with --hv boot=cdrom)")
    s.add_argument("--tag", action="append", metavar="TAG", help="a tag; repeat for more")
    s.add_argument("--priority", choices=("critical", "high", "normal", "low"),
                   help="restart order after an outage (default normal)")
    s.add_argument("--after", action="append", metavar="INSTANCE",
                   help="restart only once INSTANCE runs; repeat for more")
    _boot_arguments(s)
    s.add_argument("--auto-failover", choices=("yes", "no"),
                   help="fail over to the secondary when the primary node is lost (default: the cluster's)")
    s = i.add_parser("modify", help="change an instance: memory, vCPUs, parameters, how it is kept running",
                     parents=[common, jobopts])
    s.add_argument("name")
    s.add_argument("--priority", choices=("critical", "high", "normal", "low"), help="restart order after an outage")
    after = s.add_mutually_exclusive_group()
    after.add_argument("--after", action="append", metavar="INSTANCE",
                       help="restart only once INSTANCE runs; repeat for more (replaces the list)")
    after.add_argument("--no-after", action="store_true", help="wait for no other instance")
    _boot_arguments(s, modify=True)
    s.add_argument("--auto-failover", choices=("yes", "no", "default"),
                   help="fail over when the primary node is lost; default: follow the cluster's setting")
    s.add_argument("--memory", "-m", help="e.g. 1G (a running instance: at its next restart)")
    s.add_argument("--vcpus", type=int, help="virtual CPUs (a running instance: at its next restart)")
    s.add_argument("--hv", action="append", metavar="NAME=VALUE",
                   help="hypervisor parameters; NAME= resets NAME to the cluster's (at the next restart)")
    s.add_argument("--os-param", action="append", metavar="NAME=VALUE",
                   help="OS parameters for the next install; NAME= removes NAME")
    s.add_argument("--net", action="append", metavar="CHANGE",
                   help="NICs of a stopped instance, at its next start: " + networks.MODIFY_NET_HELP)
    s.add_argument("--owner", help="who to ask about this instance ('' clears it)")
    s.add_argument("--description", help="one line saying what it is for ('' clears it)")
    s.add_argument("--cdrom", metavar="PATH|none", help="insert an ISO file (live if the running instance has a "
                                                        "CD-ROM drive, else at its next start); none ejects")
    s.add_argument("--restart", action="store_true", help="restart the instance now if changes are pending")
    s.add_argument("--force", action="store_true",
                   help="write a memory increase even if its nodes cannot promise it (N+1), with a warning")
    s = i.add_parser("list", help="all instances, or those matching every filter given", parents=[common])
    s.add_argument("--tag", help="only instances with this tag")
    s.add_argument("--node", help="only instances on this node (primary or secondary)")
    s.add_argument("--status", help="only instances in this status (running, stopped, node-down, ...)")
    s.add_argument("--owner", help="only instances of this owner")
    s.add_argument("-o", "--output", metavar="FIELDS", help="these fields as columns, e.g. name,status,owner,tags")
    for name, help_ in (("info", "one instance"), ("console", "attach to the serial console (Ctrl-] detaches)")):
        s = i.add_parser(name, help=help_, parents=[common])
        s.add_argument("name")
    s.add_argument("--vnc", action="store_true",
                   help="print how to reach the instance's VNC display (hvparam vnc=localhost or tcp) instead")
    s.add_argument("--listen", metavar="[ADDR:]PORT",
                   help="with --vnc: relay the display to this TCP port here (127.0.0.1 unless ADDR) until Ctrl-C")
    s = i.add_parser("start", help="start an instance (or many: --all, --node, --tag, --owner)",
                     parents=[common, jobopts])
    s.add_argument("name", nargs="?")
    many.add_selectors(s)
    s = i.add_parser("stop", help="ACPI power-down, then hard stop after the timeout", parents=[common, jobopts])
    s.add_argument("name", nargs="?")
    s.add_argument("--force", action="store_true", help="hard stop at once")
    s.add_argument("--shutdown-timeout", type=float, help="seconds before the hard stop")
    many.add_selectors(s)
    s = i.add_parser("reboot", help="soft (power-down + start) or hard (reset)", parents=[common, jobopts])
    s.add_argument("name", nargs="?")
    s.add_argument("--type", choices=("soft", "hard"), default="soft")
    many.add_selectors(s)
    s = i.add_parser("add-disk", help="add a blank disk: hot-plugged into a running file instance; a replicated "
                     "instance's (and its copy) while stopped",
                     parents=[common, jobopts])
    s.add_argument("name")
    s.add_argument("size", help="e.g. 10G, or 10G,format=qcow2")
    s = i.add_parser("remove-disk", help="remove the last disk (unplugged from a running file instance) and delete its data",
                     parents=[common, jobopts])
    s.add_argument("name")
    s.add_argument("disk", type=int, help="the disk's index (the last one)")
    s.add_argument("--destroy-data", action="store_true", help="confirm: its data is deleted on every node")
    s = i.add_parser("rename", help="give a stopped instance a new name (same UUID, MACs, disks)",
                     parents=[common, jobopts])
    s.add_argument("name")
    s.add_argument("new_name")
    s = i.add_parser("reinstall", help="install the OS again on fresh disks (destroys their content)",
                     parents=[common, jobopts])
    s.add_argument("name")
    s.add_argument("--os", "-o", help="another OS (default: the instance's own)")
    s.add_argument("--os-param", action="append", metavar="NAME=VALUE",
                   help="OS parameters (replace the instance's when given)")
    s.add_argument("--yes", action="store_true", help="confirm: the content of the disks is destroyed")
    s = i.add_parser("remove", help="stop an instance and delete it with its disks", parents=[common, jobopts])
    s.add_argument("name")
    s = i.add_parser("migrate", help="live-migrate a replicated instance to its secondary node",
                     parents=[common, jobopts])
    s.add_argument("name")
    s.add_argument("--node", "-n", help="target node (only its secondary, for now)")
    s.add_argument("--max-bandwidth", type=float, default=1024.0, help="MiB/s for the memory copy (default 1024)")
    s = i.add_parser("move", help="copy a stopped instance's disks to another node and move it there",
                     parents=[common, jobopts])
    s.add_argument("name")
    s.add_argument("--node", "-n", required=True, help="the node to move to")
    s = i.add_parser("replace-secondary", help="copy a replicated instance to a new secondary node",
                     parents=[common, jobopts])
    s.add_argument("name")
    s.add_argument("--node", "-n", required=True, help="the new secondary node")
    s = i.add_parser("activate-disks", help="check the disks (re-create missing copies, restart the mirror) "
                     "and print their paths", parents=[common, jobopts])
    s.add_argument("name")
    s = i.add_parser("grow-disk", help="grow one disk (also while running)", parents=[common, jobopts])
    s.add_argument("name")
    s.add_argument("disk", type=int, help="disk index (0 is the first)")
    s.add_argument("size", help="the new size, e.g. 20G")
    s = i.add_parser("failover", help="restart a replicated instance on its secondary node",
                     parents=[common, jobopts])
    s.add_argument("name")
    s.add_argument("--ignore-consistency", action="store_true",
                   help="go on when the primary does not answer, or the copy is not known to be in sync")

    s = top.add_parser("events", help="what the master decided by itself (restarts, giving up), and why",
                       parents=[common])
    s.set_defaults(cmd="")
    s.add_argument("--instance", help="only this instance")
    s.add_argument("--node", help="only this node")
    s.add_argument("--limit", type=int, default=50, help="the newest N (default 50; 0 for all)")

    j = group("job", "jobs (every change is one)")
    s = j.add_parser("list", help="jobs not yet archived (finished ones are, after 6 h by default)",
                     parents=[common])
    s.add_argument("--archived", action="store_true", help="the archived jobs instead (kept 30 days)")
    which = s.add_mutually_exclusive_group()
    which.add_argument("--running", action="store_true", help="only running jobs")
    which.add_argument("--failed", action="store_true", help="only failed jobs")
    for name, help_ in (("info", "one job with its log"), ("watch", "follow a job until it ends"),
                        ("cancel", "cancel a job that has not started")):
        s = j.add_parser(name, help=help_, parents=[common] + ([jobopts] if name == "watch" else []))
        s.add_argument("id", type=int)
    d = group("drill", "failure drills on a live cluster")
    s = d.add_parser("master-failover", help="kill or freeze the master and check that nothing else moved",
                     parents=[common])
    s.add_argument("--rounds", type=int, default=1)
    s.add_argument("--mode", choices=("kill", "freeze"), default="kill",
                   help="kill: SIGKILL the master's agent (its supervisor restarts it); "
                        "freeze: SIGSTOP it past its lease, then SIGCONT")
    s.add_argument("--freeze-seconds", type=float, default=20.0, help="how long a freeze lasts")
    s = d.add_parser("node-loss", help="cut a node off (or kill it) and check that its auto-failover instances "
                                       "came back elsewhere, never on two nodes", parents=[common])
    s.add_argument("node")
    s.add_argument("--mode", choices=("isolate", "kill"), default="isolate",
                   help="isolate: the node stops renewing its lease, reporting and gossiping, then comes back; "
                        "kill: every process of the node dies, QEMUs included, and it stays down for the "
                        "duration, its supervisor held off (test and demo clusters)")
    s.add_argument("--duration", type=float, metavar="S",
                   help="how long the node is cut off or stays down: longer than its lease, at most 120 s "
                        "(default: the node lease time + 40 s)")
    u = group("user", "API users for the TCP API (people and scripts)")
    s = u.add_parser("add", help="create a user and print its token", parents=[common])
    s.add_argument("name")
    s.add_argument("--role", required=True, choices=("read", "write", "admin"),
                   help="read: look; write: instances and jobs; admin: also users, nodes, cluster settings "
                        "and secrets (README: Users and roles)")
    u.add_parser("list", help="all users", parents=[common])
    s = u.add_parser("remove", help="remove a user", parents=[common])
    s.add_argument("name")
    o = group("os", "operating system definitions and images")
    o.add_parser("list", help="OS definitions and images on this node", parents=[common])
    tags.add_parsers({"instance": i, "node": n, "cluster": c}, common)
    networks.add_parsers(group("network", "networks with an IPv4 address pool for instance NICs"), common)
    s = top.add_parser("search-tags", help="every tag of the cluster, its nodes and instances matching PATTERN",
                       parents=[common])
    s.set_defaults(cmd="")
    s.add_argument("pattern", help="an RE2 regular expression, found anywhere in the tag (e.g. ^project:)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.socket = getattr(args, "socket", None)
    args.json = getattr(args, "json", False)
    cli = Cli(args)
    dispatch = {
        ("cluster", "init"): cli.cluster_init, ("cluster", "info"): cli.cluster_info,
        ("cluster", "verify"): cli.cluster_verify, ("cluster", "join"): cli.cluster_join,
        ("cluster", "replica"): cli.cluster_replica, ("cluster", "rotate-secrets"): cli.cluster_rotate_secrets,
        ("cluster", "master-failover"): cli.cluster_master_failover, ("node", "list"): cli.node_list,
        ("cluster", "fencing"): cli.cluster_fencing, ("cluster", "alert"): cli.cluster_alert_clear,
        ("cluster", "modify"): cli.cluster_modify, ("cluster", "simulate"): cli.cluster_simulate,
        ("node", "info"): cli.node_info, ("node", "add"): cli.node_add, ("node", "tokens"): cli.node_tokens,
        ("node", "token-revoke"): cli.node_token_revoke, ("node", "remove"): cli.node_remove,
        ("node", "modify"): cli.node_modify, ("user", "add"): cli.user_add, ("user", "list"): cli.user_list,
        ("user", "remove"): cli.user_remove, ("instance", "add"): cli.instance_add,
        ("instance", "list"): cli.instance_list, ("instance", "info"): cli.instance_info,
        ("instance", "start"): lambda: cli.instance_action("start"),
        ("instance", "stop"): lambda: cli.instance_action("stop"),
        ("instance", "reboot"): lambda: cli.instance_action("reboot"),
        ("instance", "migrate"): lambda: cli.instance_action("migrate"),
        ("instance", "failover"): lambda: cli.instance_action("failover"),
        ("instance", "move"): lambda: cli.instance_action("move"),
        ("instance", "replace-secondary"): lambda: cli.instance_action("replace-secondary"),
        ("instance", "activate-disks"): lambda: cli.instance_action("activate-disks"),
        ("instance", "grow-disk"): lambda: cli.instance_action("grow-disk"),
        ("instance", "reinstall"): lambda: cli.instance_action("reinstall"),
        ("instance", "rename"): lambda: cli.instance_action("rename"),
        ("instance", "add-disk"): lambda: cli.instance_action("add-disk"),
        ("instance", "remove-disk"): lambda: cli.instance_action("remove-disk"),
        ("node", "migrate"): lambda: cli.node_evacuate("migrate"),
        ("node", "failover"): lambda: cli.node_evacuate("failover"),
        ("node", "drain"): lambda: cli.node_drain(True), ("node", "undrain"): lambda: cli.node_drain(False),
        ("node", "evacuate"): cli.node_evacuate_all,
        ("instance", "remove"): cli.instance_remove, ("instance", "console"): cli.instance_console,
        ("instance", "modify"): cli.instance_modify,
        ("job", "list"): cli.job_list, ("job", "info"): cli.job_info, ("job", "watch"): cli.job_watch,
        ("job", "cancel"): cli.job_cancel, ("drill", "master-failover"): cli.drill_master_failover,
        ("drill", "node-loss"): cli.drill_node_loss,
        ("os", "list"): cli.os_list, ("events", ""): cli.events,
        ("search-tags", ""): lambda: tags.search(cli.client, args),
        **{key: h for kind in tags.KINDS for key, h in tags.handlers(kind, cli.client, args).items()},
        **networks.handlers(cli.client, args),
    }
    try:
        return dispatch[(args.group, args.cmd)]()
    except BrokenPipeError:  # the reader went away (`corral ... | head`, `| grep -q`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except (UsageError, networks.NetSpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except AgentUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ApiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_BAD_INPUT if exc.status in (400, 404, 409) else 1


if __name__ == "__main__":
    sys.exit(main())
