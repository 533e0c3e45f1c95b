"""The engine is generic: a toy experiment (tests/toy_experiment.py: its own spec model and a
two-stage runner), registered from outside rrf_ray, runs through `python -m rrf_ray.sweep`,
resumes without recomputing its finished trials, grows by a seed, and is safe beside other
drivers: one driver per storage, a clean stop on SIGTERM/SIGINT, one private Ray per sweep.
No engine file names it."""

import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
from toy_experiment import Toy, kill_session, wait_for

from rrf_ray.engine.stopping import STOP_DEADLINE_S

RAY_INTERNALS = ("core_worker.cc", "logging.cc", "RayDeprecationWarning", "SIGTERM received")


def assert_quiet(console: str, stopped: bool = False) -> None:
    """No Ray internals on the console, nor, from the stop on, any traceback: a stop is no error (a
    failed trial's own traceback, before it, is the user's to read)."""
    for noise in RAY_INTERNALS:
        assert noise not in console, f"{noise!r} on the console:\n{console[-3000:]}"
    if stopped:  # from the signal's first line on (outside a Tune stage there is none: all of it)
        first = re.search(r"^\[sweep\] SIG(INT|TERM)", console, re.MULTILINE)  # "stopping once Tune ..." or
        after = console[first.start() if first else 0:]  # "reached this sweep's own Ray too" (engine.stopping)
        for noise in ("Traceback", "KeyboardInterrupt"):
            assert noise not in after, f"{noise!r} on the console after the stop:\n{after[-3000:]}"


def resume_line(console: str) -> list[str]:
    """The command the stopped driver printed, as argv (its `python` is this test's)."""
    lines = [ln for ln in console.splitlines() if ln.startswith("stopped (")]
    assert len(lines) == 1, console[-3000:]
    argv = shlex.split(lines[0].split("resume with", 1)[1])
    assert argv[:3] == ["python", "-m", "rrf_ray.sweep"] and "--resume" in argv
    return [sys.executable, *argv[1:]]


def in_trials_stage(toy: Toy, seed_done: int, seed_held: int):
    """Once `seed_done`'s trial has finished and `seed_held`'s is running (held by TOY_HOLD)."""
    return lambda: ((toy.result(seed_done) or {}).get("status") == "ok"
                    and f"trial {seed_held}" in toy.call_lines())


@pytest.mark.slow
def test_a_toy_experiment_registers_itself_runs_stops_resumes_and_grows(tmp_path):
    """One toy sweep through a user's whole session (one sweep, so that CI starts Ray five times, not
    seven): a failed trial is recorded; SIGTERM stops the driver in the trials stage with exit 143, no
    stack dumps and one line with the command that resumes; that command stopped by SIGINT (Ctrl-C)
    exits 130 and by a SIGTERM to its process group (which stops its Ray too) 143 as soon as the
    driver sees its Ray end; run once more it completes only the failed and the interrupted trials, finished ones
    untouched; `--resume` with one more seed computes only that seed; anything else is refused."""
    toy = Toy(tmp_path, seeds=(0, 1, 2), scale=3.0)

    dry = toy.run("--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "toy sweep toy: 3 seeds, 2 stages" in dry.stdout

    bad = toy.run("--set", "scael=1", "--dry-run")
    assert bad.returncode == 2 and "scael" in bad.stderr  # the toy's spec model, strict like every other

    (tmp_path / "FAIL").write_text("")  # seed 1's trial fails while it exists
    toy.hold.write_text("2")  # seed 2's trial waits while this lists it
    log = tmp_path / "first.log"
    first = toy.start(log=log)
    try:
        wait_for(lambda: ((toy.result(0) or {}).get("status"), (toy.result(1) or {}).get("status")) == ("ok", "failed")
                 and "trial 2" in toy.call_lines(), first, log, what="seed 0 done, seed 1 failed, seed 2 running")
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 143, log.read_text()[-3000:]
    finally:
        kill_session(first)
    console = log.read_text()
    assert_quiet(console, stopped=True)
    assert "[toy-seed0] value 1.0" in console  # a trial's own step line reaches the quiet console
    assert sorted(toy.call_lines()) == ["square 0", "square 1", "square 2", "trial 0", "trial 1", "trial 2"]
    assert toy.result(0)["metrics"] == {"value": 1.0}
    resume = resume_line(console)
    assert resume[3:] == [str(toy.yaml), "--storage", str(toy.storage), "--resume"]
    assert not (toy.root / "driver.lock").exists()
    finished = toy.result_bytes(0)

    for name, signum, code in (("second", signal.SIGINT, 130), ("third", signal.SIGTERM, 143)):
        toy.calls.write_text("")
        log = tmp_path / f"{name}.log"
        again = subprocess.Popen(resume, stdout=log.open("w"), stderr=subprocess.STDOUT, env=toy.env,
                                 start_new_session=True)
        try:
            wait_for(lambda: "trial 2" in toy.call_lines(), again, log, what="seed 2's trial restarted")
            os.killpg(again.pid, signum)  # as Ctrl-C in a terminal does, or `kill -TERM -PGID`
            assert again.wait(timeout=STOP_DEADLINE_S + 60) == code, log.read_text()[-3000:]
        finally:
            kill_session(again)
        # SIGINT spares Ray's processes (Tune saves); SIGTERM ends them too: the driver sees it and ends at once
        assert ("SIGTERM reached this sweep's own Ray too" in log.read_text()) == (signum == signal.SIGTERM)
        assert_quiet(log.read_text(), stopped=True)
        assert resume_line(log.read_text()) == resume
        assert not (toy.root / "driver.lock").exists()
        assert "trial 0" not in toy.call_lines()

    toy.hold.unlink()
    (tmp_path / "FAIL").unlink()
    toy.calls.write_text("")
    done = toy.run(args=resume)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(toy.call_lines()) == ["trial 1", "trial 2"]  # the failed and the interrupted trial only
    assert "[toy-seed2] value 13.0" in done.stdout
    assert_quiet(done.stdout + done.stderr)
    assert toy.result_bytes(0) == finished
    report = (toy.root / "report.md").read_text()
    assert "seed 1: ok {'value': 4.0}" in report and "seed 0: ok {'value': 1.0}" in report

    # grown by a seed: only the new seed is computed; the finished results stay byte for byte
    before = {s: toy.result_bytes(s) for s in (0, 1, 2)}
    toy.calls.write_text("")
    grown = toy.run("--resume", "--set", "seeds=[0, 1, 2, 3]")
    assert grown.returncode == 0, grown.stdout[-3000:] + grown.stderr[-3000:]
    assert "growing" in grown.stdout and "seeds + [3]" in grown.stdout
    assert grown.stdout.startswith("[ray] started a private local Ray")  # the first line, as in every run
    assert sorted(toy.call_lines()) == ["square 3", "trial 3"]
    assert {s: toy.result_bytes(s) for s in (0, 1, 2)} == before
    assert "seed 3: ok {'value': 28.0}" in (toy.root / "report.md").read_text()
    assert '"seeds": [\n  0,\n  1,\n  2,\n  3\n ]' in (toy.root / "spec.json").read_text()
    # shrinking, or changing anything else, is refused naming the field
    refused = toy.run("--resume", "--set", "seeds=[0, 1, 2, 3]", "--set", "scale=4")
    assert refused.returncode == 2 and "spec differs" in refused.stderr and " scale" in refused.stderr
    refused = toy.run("--resume", "--set", "seeds=[0, 1]")
    assert refused.returncode == 2 and " seeds" in refused.stderr

    rebuilt = subprocess.run([sys.executable, "-m", "rrf_ray.report", str(toy.root)], capture_output=True,
                             text=True, timeout=120, env=toy.env)
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]


@pytest.mark.slow  # starts Ray
def test_a_stop_outside_the_tune_stages_is_as_clean(tmp_path):
    """SIGTERM while the driver waits in ray.get (as in a dataset stage): exit 143 and the resume line."""
    toy = Toy(tmp_path, seeds=(0,))
    toy.hold.write_text("prepare")
    log = tmp_path / "driver.log"
    driver = toy.start(log=log)
    try:
        wait_for(lambda: "[toy] preparing" in log.read_text(), driver, log, what="the driver's ray.get")
        time.sleep(1)
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=120) == 143, log.read_text()[-3000:]
    finally:
        kill_session(driver)
    assert_quiet(log.read_text(), stopped=True)
    assert resume_line(log.read_text())[3:] == [str(toy.yaml), "--storage", str(toy.storage), "--resume"]
    assert not (toy.root / "driver.lock").exists()


@pytest.mark.slow
def test_two_sweeps_at_once_and_one_driver_per_storage(tmp_path):
    """Two toy sweeps on different storages at once each start their own Ray. A second driver on
    the first's storage exits 2 naming the first's pid. SIGKILLing the first leaves the other to
    complete, and `--resume` takes the killed driver's lock over and completes its sweep without
    recomputing its finished trial."""
    a, b = Toy(tmp_path / "a", seeds=(0, 1)), Toy(tmp_path / "b", seeds=(0, 1))
    for toy in (a, b):
        toy.hold.write_text("1")
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    proc_a = a.start(log=log_a)
    proc_b = b.start("--resume", log=log_b)  # nothing to resume there yet: it says so and starts
    try:
        wait_for(in_trials_stage(a, 0, 1), proc_a, log_a, what="sweep a's trials stage")
        wait_for(in_trials_stage(b, 0, 1), proc_b, log_b, what="sweep b's trials stage")
        ray_a, ray_b = (re.search(r"\[ray\] started a private local Ray \((\S+)\)", log.read_text())
                        for log in (log_a, log_b))
        assert ray_a and ray_b and ray_a.group(1) != ray_b.group(1)
        assert "holds no sweep yet; starting a new one" in log_b.read_text()

        second = a.run("--resume")
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
        assert f"in use by another driver: pid {proc_a.pid} " in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1  # one clear line

        os.kill(proc_a.pid, signal.SIGKILL)
        kill_session(proc_a)  # and its Ray, whose trials would outlive it for a while
        b.hold.unlink()
        assert proc_b.wait(timeout=240) == 0, log_b.read_text()[-3000:]
    finally:
        kill_session(proc_a)
        kill_session(proc_b)
    assert b.result(1)["status"] == "ok" and "seed 1: ok" in (b.root / "report.md").read_text()
    assert (a.root / "driver.lock").exists()  # left behind by the killed driver

    finished = a.result_bytes(0)
    a.hold.unlink()
    a.calls.write_text("")
    resumed = a.run("--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"took over {a.root}" in resumed.stdout and f"pid {proc_a.pid}" in resumed.stdout
    assert resumed.stdout.startswith("[ray] started a private local Ray")
    assert a.call_lines() == ["trial 1"]
    assert a.result_bytes(0) == finished and "seed 1: ok" in (a.root / "report.md").read_text()
    assert not (a.root / "driver.lock").exists()
