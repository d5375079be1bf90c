"""The API's answer to a failed NBD export: a storage error (422 "storage"), as when the export lived in storage."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from hostagent.api.base import error_middleware
from kvm.daemon import LaunchFailed, LaunchNotStarted, LaunchTimeout
from kvm.nbdexport import ExportStartFailed, ExportStopFailed, InvalidExportSpec

ARGV = ["qemu-storage-daemon", "--daemonize", "--pidfile", "/run/corral/replication/vm1-disk0.pid"]


@pytest.mark.parametrize("error", [
    InvalidExportSpec(["port 0 must be 1-65535"]),
    ExportStartFailed("vm1-disk0", ARGV[3]),
    ExportStopFailed(ARGV[3], 4242),
    LaunchFailed(ARGV, 1, "Failed to bind socket: Address already in use"),
    LaunchTimeout(ARGV, 30.0),
    LaunchNotStarted(ARGV, FileNotFoundError(2, "No such file or directory")),
])
def test_a_failed_export_answers_as_a_storage_error(error: Exception) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise error

    answer = asyncio.run(error_middleware(make_mocked_request("POST", "/v1/node/orders"), handler))
    assert answer.status == 422
    assert json.loads(answer.text or "") == {"error": "storage", "message": str(error)}


def test_a_daemon_that_fails_to_start_is_worded_as_the_storage_runner_worded_it() -> None:
    assert str(LaunchFailed(ARGV, 1, "Address already in use\n")) == (
        "qemu-storage-daemon --daemonize exited with status 1: Address already in use")
    assert str(LaunchTimeout(ARGV, 30.0)) == "qemu-storage-daemon did not finish within 30 s and was killed"
    assert str(LaunchNotStarted(ARGV, FileNotFoundError(2, "No such file or directory"))) == (
        "could not execute qemu-storage-daemon: No such file or directory (is it installed and executable?)")
