"""The sweep end to end, with real engine child processes."""

from __future__ import annotations

import csv
import dataclasses
import logging
import threading
import time
from pathlib import Path

import pytest

from carbontop.config import RunConfig
from carbontop.core.store import load_run
from carbontop.core.tomlcompat import tomllib
from carbontop.engines.base import Phase, Progress
from carbontop.errors import CarbontopError
from carbontop.sweep import events
from carbontop.sweep.runner import SweepRunner


def run_toml(run_dir: Path) -> dict:
    """run.toml's tables as written, for what the views do not read (the engine's own record)."""
    return tomllib.loads((Path(run_dir) / "run.toml").read_text())


def small(tmp_path, **kw) -> RunConfig:
    base = dict(model="tiny", device="cpu", dataset="synthetic", num_prompts=4, max_input_len=16,
                max_output_len=16, batch_sizes="1,2", out=str(tmp_path / "run"))
    base.update(kw)
    return RunConfig(**base)


def with_engine(runner: SweepRunner, engine: str) -> None:
    runner.prepare()
    runner.engine_spec = dataclasses.replace(runner.engine_spec, engine=engine)


def test_tiny_model_sweep_in_a_child_process(tmp_path) -> None:
    seen: list = []
    # static batches with a window shorter than one batch: each point runs exactly one batch
    runner = SweepRunner(small(tmp_path, batch_sizes="1,4", batching="static", min_window_s=0.01,
                               slo_s_per_token=10.0), seen.append)
    runner.prepare()
    runner.run()
    run = load_run(tmp_path / "run")
    assert run.state == "done"
    assert [p.batch_size for p in run.points] == [1, 4]
    for p in run.points:
        b = p.batch_size
        assert p.status == "ok"
        assert p.n_requests == b and p.output_tokens == 16 * b
        assert p.tokens_per_s > 0 and p.energy_j > 0
        assert p.energy_source in ("rapl", "estimate")
        assert p.j_per_token == pytest.approx(p.energy_j / (16 * b))
        assert p.gco2e_per_token == pytest.approx(p.energy_j / 3.6e6 * 413 / (16 * b), rel=1e-6)
        assert p.ttft_p50_s < p.duration_s
    assert run.requests_count == 5
    assert run.samples, "power.csv holds the samples"
    assert run_toml(run.path)["engine"]["model_class"] == "LlamaForCausalLM"
    assert run.meta.status.recommended_batch in (1, 4)
    kinds = [type(e) for e in seen]
    assert kinds[0] is events.SweepStarted and kinds[-1] is events.SweepFinished
    assert kinds.count(events.PointFinished) == 2
    phases = {e.phase for e in seen if isinstance(e, events.PhaseChanged)}
    assert {Phase.IDLE_POWER, Phase.LOADING, Phase.WARMUP, Phase.MEASURING} <= phases


@pytest.mark.parametrize(
    ("engine", "failed"),
    [
        ("engines_for_tests:OOMAbove", "oom"),
        # killed, but not by the OOM killer (no oom_kill in the cgroup): tried twice, then the
        # search takes it as the boundary and says it crashed
        ("engines_for_tests:KilledAbove", "crashed"),
    ],
)
def test_auto_search_survives_oom_and_finds_the_boundary(tmp_path, engine: str, failed: str) -> None:
    runner = SweepRunner(small(tmp_path, batch_sizes="auto", max_batch=64))
    with_engine(runner, engine)
    runner.run()
    run = load_run(tmp_path / "run")
    statuses = {p.batch_size: p.status for p in run.points}
    assert statuses == {1: "ok", 2: "ok", 4: "ok", 8: failed, 6: failed, 5: "ok"}
    assert run.meta.status.largest_ok_batch == 5
    assert run.meta.status.smallest_failed_batch == 6


def test_a_crash_is_recorded_and_the_sweep_goes_on_in_a_fresh_child(tmp_path) -> None:
    runner = SweepRunner(small(tmp_path, batch_sizes="1,2,4,8"))
    with_engine(runner, "engines_for_tests:CrashesAt")
    runner.run()
    run = load_run(tmp_path / "run")
    assert [(p.batch_size, p.status) for p in run.points] == [(1, "ok"), (2, "ok"), (4, "crashed")]
    assert "exited with code 3" in run.points[2].message
    assert "tried twice, in two engine processes" in run.points[2].message


def test_cancel_keeps_finished_points(tmp_path) -> None:
    seen: list = []
    runner = SweepRunner(small(tmp_path, batch_sizes="1,2"), seen.append)
    with_engine(runner, "engines_for_tests:Hangs")
    thread = threading.Thread(target=runner.run)
    thread.start()
    deadline = time.time() + 30
    while not any(isinstance(e, events.PointStarted) for e in seen) and time.time() < deadline:
        time.sleep(0.05)
    runner.cancel()
    thread.join(30)
    assert not thread.is_alive()
    run = load_run(tmp_path / "run")
    assert run.state == "cancelled"
    assert run.points[-1].status == "cancelled"
    assert isinstance(seen[-1], events.SweepFinished) and seen[-1].status == "cancelled"


def test_bad_setups_fail_in_one_sentence(tmp_path) -> None:
    with pytest.raises(CarbontopError, match="Unknown model"):
        SweepRunner(small(tmp_path, model="llama-99b")).prepare()
    with pytest.raises(CarbontopError, match="positions"):
        SweepRunner(small(tmp_path, model="gpt2", max_input_len=1000, max_output_len=1000)).prepare()
    with pytest.raises(CarbontopError, match="weights"):
        SweepRunner(small(tmp_path, weights="auto")).prepare()


def test_inflight_point_through_the_runner(tmp_path) -> None:
    """A point plan through the real host and runner: window, intervals and occupancy."""
    runner = SweepRunner(small(tmp_path, batch_sizes="2", dataset="synthetic", num_prompts=8,
                               min_window_s=1.0, max_point_s=10.0))
    with_engine(runner, "engines_for_tests:Scheduler")
    runner.run()
    run = load_run(tmp_path / "run")
    (p,) = run.points
    assert p.status == "ok" and p.batching == "inflight"
    assert p.duration_s >= 1.0 and p.window_target_s == 1.0 and p.point_s > p.duration_s
    assert p.slot_occupancy >= 0.95
    assert p.ci_batches >= 2 and p.j_per_token_ci95 is not None
    assert p.j_per_token == pytest.approx(p.energy_j / p.output_tokens, rel=0.05)
    assert run.meta.environment.idle_power_loaded_w is not None
    assert run.meta.status.recommendation.startswith("batch 2: lowest")
    # every step is kept: the tokens of the steps inside W are the point's tokens
    with open(tmp_path / "run" / "steps.csv", newline="") as fh:
        steps = list(csv.DictReader(fh))
    assert steps and {s["batch_size"] for s in steps} == {"2"}
    inside = sum(int(s["tokens"]) for s in steps
                 if p.window_start_s < float(s["t_s"]) <= p.window_end_s)
    assert inside == p.output_tokens
    assert p.j_per_token_drift is not None and p.j_per_token_drift_ci95 is not None


def test_repeats_run_in_shuffled_order_and_combine(tmp_path) -> None:
    runner = SweepRunner(small(tmp_path, batch_sizes="1,2,4", min_window_s=0.3, max_point_s=5.0,
                               repeats=2, seed=3))
    with_engine(runner, "engines_for_tests:Scheduler")
    runner.run()
    run = load_run(tmp_path / "run")
    order = run_toml(run.path)["repeats"]["order"]
    assert sorted(order) == sorted(f"{b}:{k}" for b in (1, 2, 4) for k in (1, 2))
    assert order != sorted(order, key=lambda s: (int(s.split(":")[1]), int(s.split(":")[0])))
    measured = [(p.batch_size, p.repeat) for p in run.points]
    assert measured[:3] == [(1, 0), (2, 0), (4, 0)]
    assert [f"{b}:{k}" for b, k in measured[3:]] == order
    from carbontop.core.repeats import combine

    combined = combine(run.points)
    assert [p.repeats for p in combined] == [2, 2, 2]


def test_eta_counts_warm_up_until_the_window_opens(tmp_path) -> None:
    from carbontop.core.records import Batching, PointPlan, Prompt

    runner = SweepRunner(small(tmp_path))
    runner._overhead_s = 5.0  # the last point spent 5 s outside its window (warm-up, ramp-up)
    plan = PointPlan(2, Batching.INFLIGHT, (Prompt("p", 4, 4),), min_window_s=20.0, max_point_s=90.0)
    now = time.time()
    before = runner._progress(2, Progress(done=0), [now, now - 2.0], plan)
    assert before.eta_s == pytest.approx(20.0 + 5.0 - 2.0, abs=0.1) and before.total is None
    during = runner._progress(2, Progress(done=7, window_s=12.5, window_target_s=20.0, tokens=300),
                              [now, now - 30], plan)
    assert during.eta_s == pytest.approx(7.5) and during.window_s == 12.5 and during.tokens == 300


@pytest.mark.parametrize("misses", [1, 2])
def test_a_missing_closing_counter_reading_re_measures_once_then_flags(tmp_path, misses) -> None:
    calls: list[float] = []

    def on_event(event) -> None:
        # once the point starts (the idle readings are done), the reading after the window's
        # end never comes, `misses` times
        if isinstance(event, events.PointStarted) and not calls:
            real_wait = runner.sampler.wait_for

            def wait_for(t_s, timeout_s=2.0):
                calls.append(t_s)
                return False if len(calls) <= misses else real_wait(t_s, timeout_s)

            runner.sampler.wait_for = wait_for

    runner = SweepRunner(small(tmp_path, batch_sizes="2", min_window_s=0.3, max_point_s=5.0),
                         on_event)
    with_engine(runner, "engines_for_tests:Scheduler")
    runner.run()
    (p,) = load_run(tmp_path / "run").points  # one row: the first attempt is not kept
    assert len(calls) == 2  # measured twice either way
    assert p.energy_incomplete is (misses == 2)
    assert ("no energy-counter reading came after the window's end" in (p.message or "")) is (
        misses == 2)


# ---- the engine doubles' failures, one runner test each --------------------------------------


def statuses_of(tmp_path) -> list[tuple[int, str]]:
    return [(p.batch_size, p.status.value) for p in load_run(tmp_path / "run").points]


def test_a_kv_bound_point_is_kept_as_a_boundary_with_the_concurrency_it_reached(tmp_path) -> None:
    runner = SweepRunner(small(tmp_path, batch_sizes="1,8"))
    with_engine(runner, "engines_for_tests:KVBoundAbove")
    runner.run()
    assert statuses_of(tmp_path) == [(1, "ok"), (8, "kv_bound")]
    bound = load_run(tmp_path / "run").points[1]
    assert bound.concurrency_reached == 5 and "kept at most 5 of 8 requests" in bound.message


def test_an_oom_without_recovery_goes_on_in_a_fresh_engine_process(tmp_path) -> None:
    seen: list = []
    runner = SweepRunner(small(tmp_path, batch_sizes="auto", max_batch=8), seen.append)
    with_engine(runner, "engines_for_tests:OOMNoRecoveryAbove")
    runner.run()
    assert statuses_of(tmp_path) == [(1, "ok"), (2, "ok"), (4, "ok"), (8, "oom"), (6, "oom"), (5, "ok")]
    # the point after each OOM (6, then 5) starts a fresh process; one that recovers goes on in
    # the same (OOMAbove, test_auto_search_survives_oom_and_finds_the_boundary)
    assert [e.batch_size for e in seen
            if isinstance(e, events.PhaseChanged) and e.phase is Phase.RESTARTING] == [6, 5]


def test_an_engine_failure_that_is_not_memory_ends_the_sweep_in_one_sentence(tmp_path) -> None:
    runner = SweepRunner(small(tmp_path, batch_sizes="1,2,4"))
    with_engine(runner, "engines_for_tests:FailsAt2")
    with pytest.raises(CarbontopError, match=r"^Batch 2 failed: The server answered 500"):
        runner.run()
    assert load_run(tmp_path / "run").state == "error"
    assert statuses_of(tmp_path) == [(1, "ok"), (2, "error")]


def test_a_model_that_cannot_load_ends_the_sweep_in_one_sentence(tmp_path) -> None:
    runner = SweepRunner(small(tmp_path))
    with_engine(runner, "engines_for_tests:LoadFails")
    with pytest.raises(CarbontopError, match="failed to load the model: OSError: the weights file is truncated"):
        runner.run()
    run = load_run(tmp_path / "run")
    assert run.state == "error" and run.points == ()


def test_an_unexpected_exception_is_a_crash_tried_twice_and_the_sweep_goes_on(tmp_path) -> None:
    runner = SweepRunner(small(tmp_path, batch_sizes="1,2"))
    with_engine(runner, "engines_for_tests:RaisesAt2")
    runner.run()
    run = load_run(tmp_path / "run")
    assert run.state == "done" and statuses_of(tmp_path) == [(1, "ok"), (2, "crashed")]
    assert "ZeroDivisionError: division by zero in a kernel launcher" in run.points[1].message
    assert "tried twice, in two engine processes" in run.points[1].message


def test_a_failing_viewer_is_logged_to_the_run_and_the_sweep_goes_on(tmp_path) -> None:
    def viewer(event) -> None:
        if isinstance(event, events.PointFinished):
            raise RuntimeError("a bug in the viewer")

    runner = SweepRunner(small(tmp_path, batch_sizes="1"), viewer)
    with_engine(runner, "engines_for_tests:OOMAbove")
    runner.run()
    run = load_run(tmp_path / "run")
    assert run.state == "done" and [p.status for p in run.points] == ["ok"]
    text = (tmp_path / "run" / "carbontop.log").read_text()
    assert "The sweep's viewer failed on PointFinished" in text
    assert "RuntimeError: a bug in the viewer" in text  # with its traceback
    # the run's log is the run's only: once it ends, nothing more is written there
    assert not [h for h in logging.getLogger("carbontop").handlers if isinstance(h, logging.FileHandler)]
