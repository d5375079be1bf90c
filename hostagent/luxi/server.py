"""The LUXI socket: `luxi.sock` in the agent's run directory, beside agent.sock, mode 0600 (LUXI has no
authentication: like Ganeti's master socket it is root's, and its jobs are recorded as local root's).

Each connection is its own task reading framed requests (hostagent.luxi.wire): a message is bounded in size,
a half-sent one must finish within PARTIAL_S and a silent connection closes after IDLE_S, so no client can
hold the event loop or memory. Answers come from the RAPI's objects (hostagent.luxi.query); a Ganeti job (hbal's
moves of one instance) is one Corral `instance.moves` job, submitted on the master as the RAPI submits its
changes (forwarded when this node is not the master). Every refusal is an answer {"success": false}; nothing a client sends stops the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import quote

from aiohttp import web

from hostagent import model
from hostagent.api import auth
from hostagent.callers import Caller
from hostagent.errors import BadRequest, Conflict, NotFound
from hostagent.luxi import jobs, opcodes, query, wire
from hostagent.master.node_ops import NodeOperations
from hostagent.master.operations import Operations
from hostagent.rapi.server import Rapi

log = logging.getLogger(__name__)

SOCKET_NAME = "luxi.sock"
IDLE_S = 600.0  # hbal polls a job every 15 s at most; a connection silent this long is gone
PARTIAL_S = 30.0  # a message started must be complete by then
WRITE_S = 30.0
MAX_CONNECTIONS = 32
MAX_JOBS_PER_SUBMIT = 200


class Refused(Exception):
    """Answered {"success": false} as Ganeti's OpPrereqError: what the caller asked cannot be done."""


class LuxiServer:
    """Ganeti's LUXI over this agent's replica and its master's jobs."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.rapi = Rapi(agent)
        self.path = os.path.join(agent.cfg.run_dir, SOCKET_NAME)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # ---- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)  # a leftover from a killed agent; we own this path
        old_umask = os.umask(0o077)
        try:
            self._server = await asyncio.start_unix_server(self._connection, self.path, limit=1 << 16)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):  # an idle client must not hold the agent's stop
                writer.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    # ---- connections ---------------------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._writers.add(writer)
        framer = wire.Framer()
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(1 << 16), PARTIAL_S if framer.pending else IDLE_S)
                except asyncio.TimeoutError:
                    return
                if not data:
                    return
                try:
                    messages = framer.feed(data)
                except wire.WireError as exc:
                    await self._send(writer, wire.failure("OpPrereqError", str(exc)))
                    return
                for raw in messages:
                    await self._send(writer, await self.answer(raw))
        except (ConnectionError, asyncio.TimeoutError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), WRITE_S)

    async def answer(self, raw: bytes) -> bytes:
        """One request's framed answer; never raises."""
        try:
            request = wire.decode(raw)
        except wire.WireError as exc:
            return wire.failure("OpPrereqError", str(exc))
        log.debug("LUXI %s %s", request.method, json.dumps(request.args)[:500])
        try:
            return wire.success(await self.call(request.method, request.args))
        except (Refused, query.QueryRefused, opcodes.OpcodeRefused, BadRequest, NotFound, Conflict) as exc:
            return wire.failure("OpPrereqError", str(exc))
        except Exception as exc:  # noqa: BLE001 - one answer per request, whatever went wrong
            if type(exc).__module__.startswith(("hostagent", "election")) or isinstance(exc, (ConnectionError,
                                                                                               TimeoutError)):
                return wire.failure("OpExecError", str(exc) or type(exc).__name__)
            log.exception("LUXI %s failed; please report this bug", request.method)
            return wire.failure("OpExecError", f"internal error: {exc!r} (please report this bug)")

    # ---- methods -------------------------------------------------------------------------------------------
    async def call(self, method: str, args: list[Any]) -> Any:
        if method == "Query":
            if len(args) != 3:
                raise Refused("Query takes [item type, fields, filter]")
            return query.answer(args[0], args[1], args[2], await self._items(args[0]))
        if method == "QueryClusterInfo":
            return await self.rapi._info()
        if method == "QueryJobs":
            if len(args) != 2 or not isinstance(args[0], list) or not isinstance(args[1], list):
                raise Refused("QueryJobs takes [job ids, fields]")
            return [jobs.pick(self._job(raw), args[1]) for raw in args[0]]
        if method == "SubmitManyJobs":
            if len(args) != 1 or not isinstance(args[0], list) or len(args[0]) > MAX_JOBS_PER_SUBMIT:
                raise Refused(f"SubmitManyJobs takes [list of at most {MAX_JOBS_PER_SUBMIT} jobs]")
            return [await self._submit_one(job) for job in args[0]]
        if method == "SubmitJob":
            if len(args) != 1:
                raise Refused("SubmitJob takes [list of opcodes]")
            ok, said = await self._submit_one(args[0])
            if not ok:
                raise Refused(str(said))
            return said
        raise Refused(f"LUXI method {method!r} is not supported by Corral (it answers Query on nodes, instances "
                      "and groups, QueryClusterInfo, SubmitJob, SubmitManyJobs and QueryJobs: what htools need)")

    async def _items(self, kind: str) -> list[dict[str, Any]]:
        if kind == "node":
            return await self.rapi._node_shapes()
        if kind == "instance":
            return self.rapi._instance_shapes()
        if kind == "group":
            return [self.rapi._group(await self.rapi._node_shapes())]
        return []  # query.answer refuses the kind by name

    # ---- jobs ----------------------------------------------------------------------------------------------
    def _record(self, job_id: int) -> dict[str, Any] | None:
        replica = self.agent.replica
        found = replica.get_json(model.job_key(job_id)) or replica.get_json(model.archived_job_key(job_id))
        return found if isinstance(found, dict) else None

    def _job(self, raw: Any) -> dict[str, Any] | None:
        try:
            job_id = int(raw)
        except (TypeError, ValueError, OverflowError):
            return None
        record = self._record(job_id)
        return jobs.single(record) if record is not None else None

    def _instances(self) -> Mapping[str, Mapping[str, Any]]:
        return {str(i["name"]): i for i in self.rapi._all(model.INSTANCES)}

    async def _submit_one(self, job: Any) -> list[Any]:
        """[true, job id] or [false, why]: the job's opcodes, all checked here, as one Corral job on the master
        (`instance.moves`: kept in the cluster's config like every job, so it outlives this agent)."""
        try:
            name, moves = opcodes.moves(job, self._instances())

            async def run(ops: Operations, nodes: NodeOperations) -> int:
                return await nodes.balancing.submit_moves(name, moves)
            # Rapi._change reads only the caller from its request when told the /v1 request to forward.
            asking = cast(web.Request, {auth.CALLER: Caller.root(self.agent.cfg.node_name)})
            answer = await self.rapi._change(asking, "POST", f"/v1/instances/{quote(name, safe='')}/moves",
                                             {"steps": moves}, run)
        except (Refused, opcodes.OpcodeRefused, BadRequest, NotFound, Conflict) as exc:
            return [False, str(exc)]
        except Exception as exc:  # noqa: BLE001 - the master's refusal, said to the caller
            if not type(exc).__module__.startswith(("hostagent", "election")) and \
                    not isinstance(exc, (ConnectionError, TimeoutError)):
                log.exception("LUXI job submission failed; please report this bug")
            return [False, str(exc) or type(exc).__name__]
        data = json.loads(answer.body) if isinstance(answer.body, bytes) else None
        if answer.status >= 400 or not isinstance(data, int):
            said = data.get("explain") or data.get("message") if isinstance(data, dict) else None
            return [False, f"moves of '{name}' refused: {said or answer.status}"]
        log.info("LUXI job %d: %s (local root)", data, ", ".join(opcodes.summary(op) for op in job))
        return [True, data]
