"""The restart duty waits for a node report made after a job on the instance ended (it would otherwise
"restart" a QEMU the job had just started, because the report before it shows none)."""

from hostagent.master.view import JOB_UNSEEN_MAX_S, unseen


def test_a_report_older_than_the_job_s_end_cannot_show_what_the_job_did() -> None:
    assert unseen(100.0, {"time": 99.5}, now=100.1)
    assert unseen(100.0, None, now=100.1)
    assert not unseen(100.0, {"time": 100.4}, now=100.5)


def test_no_job_or_a_job_long_ago_changes_nothing() -> None:
    assert not unseen(0.0, {"time": 1.0}, now=2.0)
    assert not unseen(100.0, {"time": 50.0}, now=100.0 + JOB_UNSEEN_MAX_S + 1)
