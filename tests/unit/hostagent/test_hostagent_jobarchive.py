"""Which jobs move to the archive, and which archived ones are dropped."""

from __future__ import annotations

from hostagent.master.jobarchive import due, expired


def test_only_finished_jobs_that_ended_long_enough_ago_are_due():
    jobs = [{"id": 3, "status": "success", "ended": 100.0}, {"id": 1, "status": "error", "ended": 50.0},
            {"id": 2, "status": "running", "ended": None}, {"id": 4, "status": "canceled", "ended": 990.0},
            {"id": 5, "status": "queued", "ended": None}]
    assert due(jobs, now=1000.0, after_s=600.0) == [1, 3]
    assert due(jobs, now=1000.0, after_s=5.0) == [1, 3, 4]


def test_archived_jobs_older_than_the_keep_time_are_dropped():
    archived = [{"id": 1, "ended": 0.0}, {"id": 2, "ended": 900.0}]
    assert expired(archived, now=1000.0, keep_s=500.0) == [1]
