"""A job's own transitions: one ending, a shutdown's suspension, whose cancel stands, step timing."""

from __future__ import annotations

from sdxl_server.errors import ShuttingDown
from sdxl_server.jobs.job import Job
from sdxl_server.jobs.states import JobStatus
from sdxl_server.params import GenerationParams


def _job() -> Job:
    return Job(GenerationParams(prompt="x", negative_prompt="", width=64, height=64, steps=4, guidance_scale=1.0, seed=1))


async def test_a_job_ends_once_and_may_end_again_only_if_its_ending_was_not_recorded():
    job = _job()
    assert job.settle(JobStatus.SUCCEEDED) and job.settled
    assert not job.settle(JobStatus.FAILED)  # a second ending is refused
    job.unsettle()  # the first could not be recorded
    assert job.settle(JobStatus.FAILED) and not job.done
    job.wake()
    assert job.done


async def test_a_suspended_job_may_only_be_cancelled():
    job = _job()
    assert job.suspend() and job.suspended
    assert not job.suspend()
    assert not job.settle(JobStatus.FAILED) and not job.settle(JobStatus.SUCCEEDED)
    assert job.settle(JobStatus.CANCELLED)
    ending = _job()
    ending.settle(JobStatus.SUCCEEDED)
    assert not ending.suspend()  # a job that is ending is not kept for the next start


async def test_a_clients_cancel_stands_over_a_shutdowns():
    clients, shutdowns = _job(), _job()
    clients.request_cancel()
    clients.request_cancel(ShuttingDown("stopping"))
    assert clients.cancel_requested() and clients.cancel_reason is None
    shutdowns.request_cancel(ShuttingDown("stopping"))
    assert isinstance(shutdowns.cancel_reason, ShuttingDown)
    clients.withdraw_cancel()
    assert not clients.cancel_requested()


async def test_a_step_is_timed_only_after_the_one_before_it():
    job = _job()
    job.time_steps_from(10.0)
    assert job.advance(1, 4, 12.0) is None  # the first step also encoded the prompt
    assert job.advance(2, 4, 12.5) == 0.5
    assert job.advance(4, 4, 13.0) is None and (job.step, job.total_steps) == (4, 4)  # a step was not reported
    job.request_stop_early()
    assert job.stop_early_requested()
