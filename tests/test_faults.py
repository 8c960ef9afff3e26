"""The fault table (docs/faults.md), one test per row: how a sweep ends, and what it leaves on disk.

Signal tests start a real `carbontop sweep` in its own session (as a shell starts a job) and
signal its process group, as a terminal, `timeout` or a dropped SSH session does. They use a
test-double engine through tests/sweep_hook.py so that the point to interrupt is known; one runs
the real tiny model.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from carbontop.cli import main
from carbontop.config import RunConfig
from carbontop.core.records import PointResult, PointStatus, Sample
from carbontop.core.store import RESERVE_NAME, RunWriter, load_run, new_run_dir
from carbontop.core.tomlcompat import tomllib
from carbontop.errors import CarbontopError


def run_toml(run_dir: Path) -> dict:
    """run.toml's tables as written, for what the views do not read (the engine's own record)."""
    return tomllib.loads((Path(run_dir) / "run.toml").read_text())

ROOT = Path(__file__).resolve().parents[1]
HOOK = Path(__file__).with_name("sweep_hook.py")
SMALL = ["--device", "cpu", "--dataset", "synthetic", "--num-prompts", "2",
         "--max-input-len", "8", "--max-output-len", "8", "--quiet"]


class Sweep:
    """A `carbontop sweep` process in its own process group, its stderr read as it comes."""

    def __init__(self, args: list[str], engine: str | None = None) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        cmd = [sys.executable, str(HOOK), engine, *args] if engine else [
            sys.executable, "-m", "carbontop", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, cwd=ROOT, start_new_session=True)
        self.err: list[str] = []
        self.out = ""
        self._reader = threading.Thread(target=self._read_err, daemon=True)
        self._reader.start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    def wait_for_file(self, path: Path, text: str, timeout_s: float = 60) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if path.exists() and text in path.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"{text!r} never appeared in {path}; stderr: {''.join(self.err)}")

    def signal_group(self, signum: int) -> None:
        os.killpg(self.proc.pid, signum)

    def finish(self, timeout_s: float = 60) -> int:
        # stdout only: stderr belongs to the reader thread (communicate() would race it for lines)
        assert self.proc.stdout is not None
        out: list[str] = []
        drain = threading.Thread(target=lambda: out.append(self.proc.stdout.read()), daemon=True)
        drain.start()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        drain.join(10)
        self._reader.join(10)
        self.out = "".join(out)
        return self.proc.returncode

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    @property
    def stderr(self) -> str:
        return "".join(self.err)


def interrupted_at_batch_2(tmp_path: Path) -> tuple[Sweep, Path]:
    """A sweep whose batch 1 finished and whose batch 2 is being measured (and never ends)."""
    run_dir = tmp_path / "run"
    sweep = Sweep(["sweep", *SMALL, "--batch-sizes", "1,2", "--out", str(run_dir)],
                  engine="engines_for_tests:HangsAbove1")
    sweep.wait_for_file(run_dir / "points.csv", "\n1,ok,")
    time.sleep(0.3)  # batch 2 is sent to the engine
    return sweep, run_dir


@pytest.mark.parametrize(
    ("signum", "code", "state", "reason"),
    [
        (signal.SIGINT, 130, "cancelled", "cancelled with Ctrl-C"),
        (signal.SIGTERM, 143, "interrupted", "stopped by SIGTERM"),
        (signal.SIGHUP, 129, "interrupted", "the terminal hung up (SIGHUP)"),
    ],
)
def test_a_signal_to_the_sweep_records_its_end(tmp_path, signum, code, state, reason) -> None:
    sweep, run_dir = interrupted_at_batch_2(tmp_path)
    sweep.signal_group(signum)
    assert sweep.finish() == code, sweep.stderr
    run = load_run(run_dir)
    assert run.state == state
    status = run.meta.status
    assert status.message == reason and status.finished is not None
    assert status.recommended_batch == 1
    assert [(p.batch_size, p.status) for p in run.points] == [(1, "ok"), (2, "cancelled")]
    assert run.points[1].message == reason
    assert "Traceback" not in sweep.stderr
    assert not (run_dir / RESERVE_NAME).exists()
    if signum != signal.SIGHUP:  # after a hang-up there is no terminal to print to
        assert "recommended batch" in sweep.out and f"({state})" in sweep.out


def test_ctrl_c_in_a_real_tiny_model_sweep(tmp_path) -> None:
    run_dir = tmp_path / "run"
    sweep = Sweep(["sweep", *SMALL, "--batch-sizes", "1,2,4,8,16", "--max-output-len", "64",
                   "--out", str(run_dir)])
    sweep.wait_for_file(run_dir / "points.csv", "\n1,ok,", timeout_s=120)
    sweep.signal_group(signal.SIGINT)
    assert sweep.finish() == 130, sweep.stderr
    run = load_run(run_dir)
    assert run.state == "cancelled"
    assert run.points[0].status == "ok"
    assert run.meta.status.recommended_batch == 1 or run.points[-1].status == "ok"
    assert "no batch met the latency target" not in sweep.out


def _gone(pid: int, timeout_s: float = 10) -> bool:
    """True once `pid` has ended; where it has not, it is killed (no orphan outlives the test)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
            stat = Path(f"/proc/{pid}/stat")
            if stat.exists() and ") Z" in stat.read_text():
                return True  # a zombie: dead, waiting for its (new) parent to reap it
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return False


def test_a_second_signal_quits_at_once_and_the_run_reads_interrupted(tmp_path) -> None:
    sweep, run_dir = interrupted_at_batch_2(tmp_path)
    engine_pid = run_toml(run_dir)["engine"]["pid"]
    # both signals arrive before the process runs again, so the second lands in the shutdown
    os.kill(sweep.proc.pid, signal.SIGSTOP)
    sweep.signal_group(signal.SIGINT)
    sweep.signal_group(signal.SIGTERM)
    os.kill(sweep.proc.pid, signal.SIGCONT)
    # the exit code is the second signal's; the kernel may hand the two over in either order
    assert sweep.finish() in (130, 143)
    run = load_run(run_dir)
    assert run.meta.status.state == "running"  # it had no time to record its end
    assert run.state == "interrupted" and "ended without recording" in run.state_note
    assert [p.status for p in run.points] == ["ok"]
    assert _gone(engine_pid), "the engine child outlived its parent"


def test_a_killed_sweep_reads_interrupted_and_its_engine_dies_with_it(tmp_path) -> None:
    sweep, run_dir = interrupted_at_batch_2(tmp_path)
    assert load_run(run_dir).state == "running"
    engine_pid = run_toml(run_dir)["engine"]["pid"]
    os.kill(sweep.proc.pid, signal.SIGKILL)
    sweep.finish()
    run = load_run(run_dir)
    assert run.state == "interrupted"
    assert f"PID {sweep.proc.pid}" in run.state_note
    assert [p.status for p in run.points] == ["ok"]
    assert main(["show", str(run_dir)]) == 0
    assert _gone(engine_pid), "the engine child outlived its parent"


def test_a_parent_killed_while_the_model_loads_takes_the_engine_with_it(tmp_path) -> None:
    run_dir = tmp_path / "run"
    sweep = Sweep(["sweep", *SMALL, "--batch-sizes", "1", "--out", str(run_dir)],
                  engine="engines_for_tests:SlowLoad")
    sweep.wait_for_file(run_dir / "engine.log", "loading in pid")
    engine_pid = int((run_dir / "engine.log").read_text().split("loading in pid")[1].split()[0])
    os.kill(sweep.proc.pid, signal.SIGKILL)
    sweep.finish()
    assert _gone(engine_pid, timeout_s=5), "the engine child outlived its parent"
    assert load_run(run_dir).state == "interrupted"


def test_a_silent_owner_on_another_host_reads_interrupted(tmp_path) -> None:
    writer = RunWriter(tmp_path / "r", {"run": {}})
    writer.meta["status"]["host"] = "elsewhere"
    writer.update_meta("status", {})
    assert load_run(tmp_path / "r").state == "running"
    old = time.time() - 3600
    os.utime(tmp_path / "r" / "run.toml", (old, old))
    run = load_run(tmp_path / "r")
    assert run.state == "interrupted" and "elsewhere" in run.state_note


# ---- a full disk --------------------------------------------------------------------------


def test_a_full_disk_keeps_whole_rows_and_records_the_end(tmp_path, monkeypatch) -> None:
    writer = RunWriter(tmp_path / "r", {"run": {}})
    writer.write_point(PointResult(batch_size=1, status=PointStatus.OK, tokens_per_s=1.0))
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        if len(data) > 40:  # write part of the row, then run out of space
            real_write(fd, bytes(data[:20]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(CarbontopError, match="the disk is full"):
        writer.write_samples([Sample(1.0, -1, 10.0, 100.0, 5.0, 6.0, 7.0, 8.0)] * 3)
    with pytest.raises(CarbontopError, match="points.csv: the disk is full"):
        writer.write_point(PointResult(batch_size=2, status=PointStatus.OK, tokens_per_s=2.0,
                                       message="x" * 100))
    real_replace = os.replace
    calls = []

    def replace_fails_until_the_reserve_is_gone(src, dst):
        calls.append(dst)
        if (tmp_path / "r" / RESERVE_NAME).exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_fails_until_the_reserve_is_gone)
    writer.finish("error", message="the disk is full")
    assert len(calls) == 2  # the second try, after the reserve was given back
    run = load_run(tmp_path / "r")
    assert run.state == "error"
    assert [p.batch_size for p in run.points] == [1]
    assert (tmp_path / "r" / "power.csv").read_text().endswith("\n")


def _small_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or sys.platform != "linux":
        return False
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def test_a_sweep_on_a_disk_that_fills_up_ends_recorded(tmp_path) -> None:
    disk = tmp_path / "disk"
    if not _small_tmpfs(disk, "2m"):
        pytest.skip("making a small file system needs root and tmpfs")
    try:
        run_dir = disk / "run"
        sweep = Sweep(["sweep", *SMALL, "--batch-sizes", "1,2", "--out", str(run_dir)],
                      engine="engines_for_tests:HangsAbove1")
        sweep.wait_for_file(run_dir / "points.csv", "\n1,ok,")
        with open(disk / "filler", "wb") as fh:  # fill the disk while batch 2 runs
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        assert sweep.finish() == 1  # power.csv's next flush fails: the sweep ends as an error
        assert "the disk is full" in sweep.stderr and "Traceback" not in sweep.stderr
        run = load_run(run_dir, with_power=True)
        assert run.state == "error" and "disk is full" in run.meta.status.message
        assert run.meta.status.recommended_batch == 1
        assert run.points[0].status == "ok"
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# ---- where the run goes -------------------------------------------------------------------


def test_sweeps_started_in_the_same_second_get_their_own_folders(tmp_path) -> None:
    made: list[Path] = []
    threads = [threading.Thread(target=lambda: made.append(new_run_dir(tmp_path, "tiny-hf")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8 and all(p.is_dir() for p in made)


def test_out_holding_the_users_own_run_toml_is_refused(tmp_path, capsys) -> None:
    mine = tmp_path / "run.toml"
    mine.write_text('# my settings\nmodel = "tiny"\n')
    assert main(["sweep", "--config", str(mine), "--device", "cpu", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "holds a run.toml" in err and len(err.strip().splitlines()) == 1
    assert mine.read_text().startswith("# my settings")


def test_an_unwritable_out_is_one_sentence(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["sweep", *SMALL, "--out", str(blocker / "run")]) == 1
    err = capsys.readouterr().err
    assert "Cannot create the run directory" in err and "Traceback" not in err
    ro = tmp_path / "ro"
    if not _small_tmpfs(ro, "1m"):
        ro.mkdir(exist_ok=True)
        ro.chmod(0o555)
        if os.access(ro, os.W_OK):
            pytest.skip("cannot make a folder this user cannot write")
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    try:
        assert main(["sweep", *SMALL, "--out", str(ro)]) == 1
        err = capsys.readouterr().err
        assert f"Cannot write {ro}" in err and len(err.strip().splitlines()) == 1
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


# ---- user mistakes: one sentence, non-zero exit --------------------------------------------


@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (["--batch-sizes", ""], None, "--batch-sizes was given an empty value"),
        (["--pue", ""], None, "--pue was given an empty value"),
        (["--intensity", " "], None, "--intensity was given an empty value"),
        (["--dataset", ""], None, "--dataset was given an empty value"),
        ([], "gpus = 1.5\n", "'gpus' must be GPU indices"),
        ([], 'gpus = [1.5, "x"]\n', "'gpus' must be GPU indices"),
        ([], "gpus = -1\n", "'gpus' must be GPU indices"),
        ([], '[runn]\nmodel = "tiny"\n', "table [runn]"),
        (["--gpus", "0"], None, "--gpus names GPUs, but --device cpu was chosen"),
        (["--trace", "t.csv", "--emaps-zone", "DE"], None, "two sources of carbon intensity"),
    ],
)
def test_user_mistakes(tmp_path, capsys, args, config, message) -> None:
    extra = []
    if config is not None:
        (tmp_path / "c.toml").write_text(config)
        extra = ["--config", str(tmp_path / "c.toml")]
    code = main(["sweep", *SMALL, *extra, *args, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_flag_replaces_the_files_carbon_source(tmp_path) -> None:
    from carbontop.cli import build_parser, config_from_args

    (tmp_path / "c.toml").write_text('zone = "FR"\n')
    args = build_parser().parse_args(["sweep", "--config", str(tmp_path / "c.toml"),
                                      "--emaps-zone", "DE"])
    cfg: RunConfig = config_from_args(args)
    assert (cfg.zone, cfg.emaps_zone) == (None, "DE")
    assert config_from_args(build_parser().parse_args(["sweep", "--gpus", "3"])).gpus == [3]


def test_runs_lists_every_run_when_one_is_damaged(tmp_path, capsys, monkeypatch) -> None:
    from carbontop import config

    base = tmp_path / "runs"
    good = new_run_dir(base, "good")
    RunWriter(good, {"run": {"model": "tiny"}}).finish("done")
    bad = new_run_dir(base, "bad")
    RunWriter(bad, {"run": {}}).finish("done")
    (bad / "run.toml").write_text("state = \n")
    monkeypatch.setattr(config, "runs_dir", lambda: base)
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert "unreadable" in out and "tiny" in out


def test_notes_are_shown_in_the_summary(tmp_path, capsys) -> None:
    writer = RunWriter(tmp_path / "r", {"run": {"model": "tiny"},
                                        "workload": {"notes": ["1 truncated record skipped"]},
                                        "carbon": {"notes": ["the trace does not cover this run"]}})
    writer.write_point(PointResult(batch_size=1, status=PointStatus.OK, tokens_per_s=1.0))
    writer.finish("done")
    assert main(["show", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "note: 1 truncated record skipped" in out
    assert "note: the trace does not cover this run" in out


# ---- resume -------------------------------------------------------------------------------


def _resume(run_dir: Path, engine: str = "engines_for_tests:OOMAbove") -> Sweep:
    sweep = Sweep(["resume", str(run_dir)], engine=engine)
    sweep.finish()
    return sweep


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_resume_after_each_interruption(tmp_path, signum) -> None:
    sweep, run_dir = interrupted_at_batch_2(tmp_path)
    sweep.signal_group(signum) if signum != signal.SIGKILL else os.kill(sweep.proc.pid, signum)
    sweep.finish()
    before = load_run(run_dir)
    assert before.state in ("cancelled", "interrupted")
    resumed = _resume(run_dir)
    assert resumed.proc.returncode == 0, resumed.stderr
    run = load_run(run_dir)
    assert run.state == "done" and run.meta.status.resumes == 1
    assert run.meta.status.started == before.meta.status.started
    # batch 1 is the row measured before the interruption; batch 2 is measured again
    assert [(p.batch_size, p.status) for p in run.points] == [(1, "ok"), (2, "ok")]
    assert run.points[0] == before.points[0]
    assert run.meta.status.recommended_batch in (1, 2)
    assert "recommended batch" in resumed.out and "(done)" in resumed.out


def test_resume_picks_the_search_up_where_it_stopped(tmp_path) -> None:
    run_dir = tmp_path / "run"
    sweep = Sweep(["sweep", *SMALL, "--batch-sizes", "auto", "--max-batch", "64",
                   "--out", str(run_dir)], engine="engines_for_tests:HangsAbove4")
    sweep.wait_for_file(run_dir / "points.csv", "\n4,ok,")
    time.sleep(0.3)
    sweep.signal_group(signal.SIGINT)
    assert sweep.finish() == 130
    assert [p.batch_size for p in load_run(run_dir).points] == [1, 2, 4, 8]
    resumed = _resume(run_dir)
    assert resumed.proc.returncode == 0, resumed.stderr
    run = load_run(run_dir)
    # the kept 1, 2, 4; then 8 measured again (it does not fit), and the bisection to 5
    assert [(p.batch_size, p.status) for p in run.points] == [
        (1, "ok"), (2, "ok"), (4, "ok"), (8, "oom"), (6, "oom"), (5, "ok")]
    assert run.meta.status.largest_ok_batch == 5
    assert run.meta.status.smallest_failed_batch == 6


def test_resume_refuses_what_cannot_be_carried_on(tmp_path, capsys) -> None:
    done = tmp_path / "done"
    RunWriter(done, {"run": {"model": "tiny"}}).finish("done")
    assert main(["resume", str(done)]) == 1
    assert "ran to its end" in capsys.readouterr().err
    live = tmp_path / "live"
    RunWriter(live, {"run": {"model": "tiny"}})  # this process is its owner: still running
    assert main(["resume", str(live)]) == 1
    assert "still being written by PID" in capsys.readouterr().err
    other = tmp_path / "other"
    writer = RunWriter(other, {"run": {"model": "tiny", "device": "cpu", "dataset": "synthetic"},
                               "environment": {"devices": ["NVIDIA H100 80GB HBM3"]}})
    writer.finish("interrupted")
    assert main(["resume", str(other)]) == 1
    err = capsys.readouterr().err
    assert "was measured on NVIDIA H100 80GB HBM3" in err and len(err.strip().splitlines()) == 1


# ---- the app -------------------------------------------------------------------------------


async def test_cancel_while_the_app_prepares_still_records_the_end(tmp_path) -> None:
    from test_tui_helpers import FixedSampler, wait_until

    from carbontop.sweep.runner import SweepRunner
    from carbontop.tui.app import CarbontopApp

    release = threading.Event()
    runners: list[SweepRunner] = []

    class HeldInPrepare(SweepRunner):
        def prepare(self) -> None:
            release.wait(30)  # the model and the workload are still being set up
            super().prepare()

    def factory(cfg, on_event):
        runners.append(HeldInPrepare(cfg, on_event))
        return runners[-1]

    cfg = RunConfig(model="tiny", device="cpu", dataset="synthetic", num_prompts=2,
                    max_input_len=8, max_output_len=8, batch_sizes="1", out=str(tmp_path / "run"))
    app = CarbontopApp(cfg, runner_factory=factory, idle_sampler_factory=lambda c: FixedSampler(),
                       runs_dir=lambda: tmp_path / "runs", remember=False)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: app.form.built, what="the form")
        await pilot.press("s")
        await wait_until(pilot, lambda: bool(runners) and app.sweep_running, what="the sweep")
        await pilot.press("c")
        release.set()
        await wait_until(pilot, lambda: not app.sweep_running, timeout_s=60, what="the end")
    run = load_run(tmp_path / "run")
    assert run.state == "cancelled" and run.points == ()
    assert not runners[0].sampler.running


async def test_the_app_offers_to_resume_an_interrupted_run(tmp_path, monkeypatch) -> None:
    import dataclasses

    from test_tui_helpers import FixedSampler, wait_until

    from carbontop.sweep import runner as runner_module
    from carbontop.tui.app import CarbontopApp

    sweep, run_dir = interrupted_at_batch_2(tmp_path)
    os.kill(sweep.proc.pid, signal.SIGKILL)
    sweep.finish()
    monkeypatch.setattr(runner_module, "IDLE_MEASURE_S", 0.2)

    class WithTestEngine(runner_module.SweepRunner):
        def prepare(self) -> None:
            super().prepare()
            self.engine_spec = dataclasses.replace(self.engine_spec,
                                                   engine="engines_for_tests:OOMAbove")

    app = CarbontopApp(RunConfig(), open_run=run_dir, runner_factory=WithTestEngine,
                       idle_sampler_factory=lambda c: FixedSampler(),
                       runs_dir=lambda: tmp_path / "runs", remember=False)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: app.showing_saved, what="the saved run")
        offers = [n.message for n in app._notifications]
        assert any("stopped before its end (interrupted" in m and "R (shift+r) carries it on" in m
                   for m in offers), offers
        assert app.check_action("resume", ()) is True
        await pilot.press("R")
        await wait_until(pilot, lambda: app.sweep_running, what="the resumed sweep")
        await wait_until(pilot, lambda: not app.sweep_running, timeout_s=60, what="its end")
        assert app.check_action("resume", ()) is False
    run = load_run(run_dir)
    assert run.state == "done" and run.meta.status.resumes == 1
    assert [(p.batch_size, p.status) for p in run.points] == [(1, "ok"), (2, "ok")]


# The app in a terminal: `carbontop app` in a pseudo-terminal that is its controlling terminal,
# as a shell over SSH runs it; the test types `s` and signals it, or hangs the terminal up.

# Run inside the new session: make the pty (our stdin) the controlling terminal, then become the app.
_TAKE_TERMINAL = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                  "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


class AppInTerminal:
    """`carbontop app ARGS` with a test-double engine, in a 120x40 pseudo-terminal of its own."""

    def __init__(self, args: list[str], engine: str) -> None:
        import fcntl
        import struct
        import termios

        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        env = dict(os.environ, PYTHONPATH=str(ROOT), TERM="xterm-256color", COLUMNS="120",
                   LINES="40")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _TAKE_TERMINAL, str(HOOK), engine, "app", *args],
            stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT, start_new_session=True)
        os.close(slave)
        self.screen = bytearray()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        import select

        while not self._closed.is_set():
            try:
                ready, _, _ = select.select([self.master], [], [], 0.05)
                if ready:
                    self.screen += os.read(self.master, 65536)  # the app blocks if nobody reads
            except OSError:  # EIO: the app closed its end
                return

    def start_sweep(self, run_dir: Path, timeout_s: float = 60) -> None:
        """Press s until the sweep has made its run directory (the form may not be built yet)."""
        deadline = time.time() + timeout_s
        while not (run_dir / "run.toml").exists():
            if time.time() > deadline or self.proc.poll() is not None:
                self.kill()
                raise AssertionError(f"the sweep never started; the screen: {self.text()[-2000:]}")
            os.write(self.master, b"s")
            time.sleep(0.5)

    def wait_for_file(self, path: Path, text: str, timeout_s: float = 60) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline and self.proc.poll() is None:
            if path.exists() and text in path.read_text(errors="replace"):
                return
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"{text!r} never appeared in {path}; the screen: {self.text()[-2000:]}")

    def hang_up(self) -> None:
        """Close the terminal, as a dropped SSH session does: the kernel sends SIGHUP."""
        self._closed.set()
        self._reader.join(5)
        os.close(self.master)
        self.master = -1

    def finish(self, timeout_s: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self.kill()
            if self.master >= 0:
                self._closed.set()
                self._reader.join(5)
                os.close(self.master)
                self.master = -1

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def text(self) -> str:
        return self.screen.decode(errors="replace")


@pytest.mark.parametrize(
    ("how", "code", "state", "reason"),
    [
        ("SIGTERM", 143, "interrupted", "stopped by SIGTERM"),
        ("SIGHUP", 129, "interrupted", "the terminal hung up (SIGHUP)"),
        ("hang-up", 129, "interrupted", "the terminal hung up (SIGHUP)"),
        ("SIGINT", 130, "cancelled", "cancelled with Ctrl-C"),  # kill -INT: Ctrl-C is a key here
    ],
)
def test_a_signal_to_the_app_records_the_sweeps_end(tmp_path, how, code, state, reason) -> None:
    run_dir = tmp_path / "run"
    app = AppInTerminal(["--device", "cpu", "--dataset", "synthetic", "--num-prompts", "2",
                         "--max-input-len", "8", "--max-output-len", "8", "--batch-sizes", "1,2",
                         "--out", str(run_dir)], engine="engines_for_tests:HangsAbove1")
    app.start_sweep(run_dir)
    app.wait_for_file(run_dir / "points.csv", "\n1,ok,")
    time.sleep(0.3)  # batch 2 is sent to the engine
    engine_pid = run_toml(run_dir)["engine"]["pid"]
    if how == "hang-up":
        app.hang_up()
    else:
        os.kill(app.proc.pid, getattr(signal, how))
    assert app.finish() == code, app.text()[-3000:]
    run = load_run(run_dir)
    assert run.state == state, run.meta.status
    status = run.meta.status
    assert status.message == reason and status.finished is not None
    assert status.recommended_batch == 1
    assert [(p.batch_size, p.status) for p in run.points] == [(1, "ok"), (2, "cancelled")]
    assert run.points[1].message == reason
    assert not (run_dir / RESERVE_NAME).exists()
    assert _gone(engine_pid), "the engine child outlived the app"
    if how != "hang-up":
        assert "Traceback" not in app.text()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_sigterm_to_the_app_in_a_real_tiny_model_sweep(tmp_path) -> None:
    run_dir = tmp_path / "run"
    app = AppInTerminal(["--model", "tiny", "--device", "cpu", "--dataset", "synthetic",
                         "--num-prompts", "2", "--max-input-len", "8", "--max-output-len", "64",
                         "--batch-sizes", "1,2,4,8,16", "--min-window-s", "0.3",
                         "--out", str(run_dir)], engine="hf")
    app.start_sweep(run_dir)
    app.wait_for_file(run_dir / "points.csv", "\n1,ok,", timeout_s=120)
    engines = [pid for pid in _children(app.proc.pid)
               if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(engines) == 1
    os.kill(app.proc.pid, signal.SIGTERM)
    assert app.finish() == 143, app.text()[-3000:]
    run = load_run(run_dir)
    assert run.state == "interrupted" and run.meta.status.message == "stopped by SIGTERM"
    assert run.points[0].status == "ok"
    # the point running when the signal came is marked; one that finished meanwhile stays ok
    assert run.points[-1].status in ("ok", "cancelled")
    assert run.meta.status.recommended_batch is not None
    assert _gone(engines[0]), "the engine child outlived the app"


def test_a_signal_to_the_app_with_no_sweep_closes_it_at_once(tmp_path) -> None:
    app = AppInTerminal(["--device", "cpu"], engine="engines_for_tests:HangsAbove1")
    deadline = time.time() + 30
    while "Quit" not in app.text() and time.time() < deadline:  # the footer: the app is up
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(app.proc.pid, signal.SIGTERM)
    assert app.finish(timeout_s=10) == 143, app.text()[-3000:]


# ---- the engine child: hangs, kills, out of memory -----------------------------------------


def _runner(tmp_path, engine: str, **kw):
    import dataclasses

    from carbontop.sweep import runner as runner_module

    base = dict(model="tiny", device="cpu", dataset="synthetic", num_prompts=2, max_input_len=8,
                max_output_len=8, batch_sizes="1,2,4", out=str(tmp_path / "run"))
    base.update(kw)
    seen: list = []
    runner = runner_module.SweepRunner(RunConfig(**base), seen.append)
    runner.prepare()
    runner.engine_spec = dataclasses.replace(runner.engine_spec, engine=engine)
    return runner, seen


def _statuses(tmp_path) -> list[tuple[int, str]]:
    return [(p.batch_size, p.status) for p in load_run(tmp_path / "run").points]


def test_a_stopped_engine_is_killed_by_the_watchdog_and_its_point_tried_again(tmp_path) -> None:
    from carbontop.sweep import events

    runner, seen = _runner(tmp_path, "engines_for_tests:Ticks", batch_sizes="1,2",
                           stall_timeout_s=1.5)
    thread = threading.Thread(target=runner.run)
    thread.start()
    deadline = time.time() + 60
    while time.time() < deadline and not any(
            isinstance(e, events.PointProgress) and e.batch_size == 2 for e in seen):
        time.sleep(0.05)
    first_engine = runner._host._proc.pid
    os.kill(first_engine, signal.SIGSTOP)  # healthy and busy until now: then not a word
    thread.join(60)
    assert not thread.is_alive()
    assert _gone(first_engine)
    run = load_run(tmp_path / "run")
    assert _statuses(tmp_path) == [(1, "ok"), (2, "ok")]
    message = run.points[1].message
    assert "measured on the second try, in a fresh engine process" in message
    assert "sent nothing for 1.5 s (its process was stopped)" in message


def test_an_engine_that_hangs_twice_is_recorded_hung_and_the_sweep_goes_on(tmp_path) -> None:
    runner, _ = _runner(tmp_path, "engines_for_tests:HangsAbove1", stall_timeout_s=1.0)
    runner.run()
    run = load_run(tmp_path / "run")
    assert run.state == "done"
    assert _statuses(tmp_path) == [(1, "ok"), (2, "hung")]  # 4 is above the boundary
    assert "tried twice, in two engine processes" in run.points[1].message
    assert run.meta.status.smallest_failed_batch == 2


def _loading_pid(run_dir: Path) -> int:
    return int((run_dir / "engine.log").read_text().split("loading in pid")[1].split()[0])


def test_an_engine_silent_while_it_loads_is_killed_and_the_sweep_ends_saying_so(tmp_path) -> None:
    runner, _ = _runner(tmp_path, "engines_for_tests:SlowLoad", stall_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(CarbontopError, match=r"The engine sent nothing for 1 s while loading the "
                                             r"model \(see .*engine.log\); raise --stall-timeout-s"):
        runner.run()
    assert time.monotonic() - started < 30  # not the 600 s the load would take
    assert _gone(_loading_pid(tmp_path / "run"), timeout_s=5), "the silent engine was left running"
    run = load_run(tmp_path / "run")
    assert run.state == "error" and "while loading the model" in run.meta.status.message
    assert run.points == ()


def test_a_fresh_engine_silent_while_it_loads_leaves_the_hung_point_recorded(tmp_path,
                                                                           monkeypatch) -> None:
    # batch 2 hangs; the fresh engine that would try it again sends nothing while it loads
    monkeypatch.setenv("CARBONTOP_TEST_MARK", str(tmp_path / "loaded-once"))
    runner, _ = _runner(tmp_path, "engines_for_tests:HangsAbove1ThenLoadsSilently",
                        stall_timeout_s=1.0)
    with pytest.raises(CarbontopError, match="while loading the model"):
        runner.run()
    assert _gone(_loading_pid(tmp_path / "run"), timeout_s=5), "the silent engine was left running"
    run = load_run(tmp_path / "run")
    assert run.state == "error" and "while loading the model" in run.meta.status.message
    assert _statuses(tmp_path) == [(1, "ok"), (2, "hung")]
    message = run.points[1].message
    assert message.startswith("the engine sent nothing for 1 s and was killed")
    assert ("not tried again, a fresh engine process did not start: the engine sent nothing for 1 s"
            " while loading the model") in message
    assert run.meta.status.recommended_batch == 1


def test_a_kill_that_is_not_an_oom_is_tried_again(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CARBONTOP_TEST_MARK", str(tmp_path / "killed-once"))
    runner, _ = _runner(tmp_path, "engines_for_tests:KilledOnceAt2")
    runner.run()
    run = load_run(tmp_path / "run")
    assert _statuses(tmp_path) == [(1, "ok"), (2, "ok"), (4, "ok")]
    message = run.points[1].message
    assert "measured on the second try" in message and "killed by signal 9" in message
    assert "out-of-memory" in message  # says whether the cgroup counted an OOM kill


def test_a_cpu_allocation_failure_is_an_oom(tmp_path) -> None:
    runner, _ = _runner(tmp_path, "engines_for_tests:CpuAllocFails")
    runner.run()
    run = load_run(tmp_path / "run")
    assert _statuses(tmp_path) == [(1, "ok"), (2, "oom")]
    assert "MemoryError" in run.points[1].message
    assert "second try" not in run.points[1].message  # a proven OOM is not tried again


def _memory_cgroup(tmp_name: str, limit_bytes: int) -> Path | None:
    """A fresh memory cgroup (v2 or v1) with a limit, where this process may make one."""
    if os.geteuid() != 0:
        return None
    for parent, limit_file in ((Path("/sys/fs/cgroup"), "memory.max"),
                               (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes")):
        if not (parent / "cgroup.procs").exists():
            continue
        group = parent / tmp_name
        try:
            group.mkdir()
            (group / limit_file).write_text(str(limit_bytes))
            if (group / "memory.swap.max").exists():
                (group / "memory.swap.max").write_text("0")
            if (group / "memory.memsw.limit_in_bytes").exists():
                (group / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
            return group
        except OSError:
            if group.exists():
                group.rmdir()
    return None


def test_a_kernel_oom_kill_in_the_cgroup_is_an_oom(tmp_path, monkeypatch) -> None:
    group = _memory_cgroup(f"carbontop-test-{os.getpid()}", 256 * 2**20)
    if group is None:
        pytest.skip("making a memory cgroup needs root and a writable cgroup file system")
    try:
        monkeypatch.setenv("CARBONTOP_TEST_CGROUP", str(group))
        runner, _ = _runner(tmp_path, "engines_for_tests:HogInCgroup", batch_sizes="1,2")
        runner.run()
        run = load_run(tmp_path / "run")
        assert _statuses(tmp_path) == [(1, "ok"), (2, "oom")]
        assert "out-of-memory killer ended the engine process" in run.points[1].message
        assert "second try" not in run.points[1].message
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def test_a_server_that_accepts_and_never_answers_fails_the_start_quickly(monkeypatch) -> None:
    import socket

    from test_engine_openai import Events, make_spec

    from carbontop.engines import openai as openai_engine
    from carbontop.engines.base import EngineFailure

    monkeypatch.setattr(openai_engine, "STARTUP_CHECK_TIMEOUT_S", 1.0)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_say_nothing() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept_and_say_nothing, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    engine = openai_engine.OpenAIEngine(make_spec(url, "served-model"), Events())
    started = time.monotonic()
    try:
        with pytest.raises(EngineFailure, match=r"did not answer GET /v1/models within 1 s"):
            engine.load()
    finally:
        stop.set()
        for conn in held:
            conn.close()
        listener.close()
    assert held, "the server accepted the connection"
    assert time.monotonic() - started < 10  # not the 600 s request timeout
