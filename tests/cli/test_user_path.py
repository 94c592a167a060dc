"""The path a user follows (issue 25, item 6): text with brackets printed as written, progress as
plain lines when stdout is no terminal, Ctrl-C saying how to resume, ``--version``, "did you
mean" for presets and suites, and ``make demo`` downloading Fashion-MNIST before reaching for
apt-get."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from robustlr.cli import app
from robustlr.sim.lifecycle import Terminated

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


def flat(text: str) -> str:
    """The output without whitespace: rich wraps long lines."""
    return "".join(text.split())


# -- 1. brackets: user text is no rich markup -------------------------------------------------

def test_a_path_with_brackets_is_printed_whole(tmp_path, data_dir):
    folder = tmp_path / "mydata[v2]"
    folder.mkdir()
    (folder / "fashion-mnist").symlink_to(data_dir / "fashion-mnist")
    res = runner.invoke(app, ["data", "fashion-mnist", "--data-dir", str(folder)])
    assert res.exit_code == 0, res.output
    assert flat(f"train_images {folder}/fashion-mnist/train-images-idx3-ubyte.gz") in flat(res.output)


def test_a_list_of_paths_with_brackets_is_printed_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLR_DATA_DIR", str(tmp_path / "env[1]"))
    monkeypatch.setenv("ROBUSTLR_CACHE_DIR", str(tmp_path / "cache[2]"))
    res = runner.invoke(app, ["data", "cifar10", "--data-dir", str(tmp_path / "d[v2]")])
    assert res.exit_code == 1
    out = flat(res.output)
    for root in ("d[v2]", "env[1]", "cache[2]"):
        assert flat(f"{tmp_path / root}/cifar10/cifar10.npz (missing)") in out, res.output


def test_a_name_with_brackets_is_no_markup():
    res = runner.invoke(app, ["config", "iid-rlr", "--set", "name=[/x]"])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output and "MarkupError" not in res.output
    assert flat("(got '[/x]')") in flat(res.output)
    # a budget name is printed in the sweep's header before the suite refuses it
    res = runner.invoke(app, ["sweep", "table1-iid", "--budget", "[/x]", "--results", "unused"])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert "table1-iid([/x]):" in flat(res.output)
    assert "suite table1-iid has no budget '[/x]'" in " ".join(res.output.split())


def test_help_keeps_brackets():
    res = runner.invoke(app, ["report", "--help"])
    assert res.exit_code == 0
    assert "needs robustlr[tensorboard]" in " ".join(res.output.replace("│", " ").split())


def test_the_run_header_keeps_a_bracketed_out_folder(tmp_path, monkeypatch):
    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("robustlr.sim.loop.run_experiment", stop)
    out = tmp_path / "out[v2]"
    res = runner.invoke(app, ["run", "demo-iid", "--out", str(out)])
    assert res.exit_code == 130
    assert flat(f"demo-iid: fashion-mnist, fedavg + RLR θ=4.0, R=16 -> {out}") in flat(res.output)


# -- 2. progress as plain lines off a terminal ------------------------------------------------

def _rec(r, evaluated=True, seconds=1.5):
    return SimpleNamespace(round=r, evaluated=evaluated, val_acc=0.5 + r / 100, backdoor_acc=0.25,
                           flipped_fraction=None, seconds=seconds)


def test_line_progress_prints_one_line_per_round_with_an_eta():
    from rich.console import Console

    from robustlr.cli._common import LineProgress, progress_callback

    now = [100.0]
    buf = io.StringIO()
    progress = LineProgress(Console(file=buf, width=200, markup=False), clock=lambda: now[0])
    with progress:
        task = progress.add_task("resuming after round 4", total=10, completed=4, status="")
        on_round = progress_callback(progress, task, prefix="rlr_attack: ")
        now[0] = 130.0  # 30 s for round 5: 5 left -> 150 s
        on_round(_rec(5))
        now[0] = 150.0  # 50 s for 2 rounds: 4 left -> 100 s
        on_round(_rec(6, evaluated=False))
    assert buf.getvalue().splitlines() == [
        "rlr_attack: round 5  5/10  val 55.0%  backdoor 25.0%  1.5s/round  ETA 0:02:30",
        "rlr_attack: round 6  6/10  1.5s/round  ETA 0:01:40",
    ]


def test_the_bar_on_a_terminal_counts_the_rounds_done(monkeypatch):
    from rich.console import Console
    from rich.progress import Progress

    from robustlr.cli import _common

    monkeypatch.setattr(_common, "console", Console(file=io.StringIO(), force_terminal=True, width=120))
    monkeypatch.setenv("TTY_INTERACTIVE", "1")  # a StringIO is no tty: rich's switch says "live" anyway
    with _common.make_progress() as progress:
        assert isinstance(progress, Progress)
        # a bar that starts at 0 (the rounds before were not known) still reads 5/30 after round 5
        fresh = progress.add_task("starting", total=30, status="")
        _common.progress_callback(progress, fresh)(_rec(5))
        assert progress.tasks[0].completed == 5 and progress.tasks[0].description == "round 5"
        task = progress.add_task("resuming after round 4", total=30, completed=4, status="")
        assert progress.tasks[1].completed == 4
        _common.progress_callback(progress, task)(_rec(5))
        assert progress.tasks[1].completed == 5


def test_demo_off_a_terminal_prints_a_line_per_round(monkeypatch, tmp_path):
    def fake_run_demo(setting, out, data_dir=None, extra=None, on_round=None):
        for key in ("fedavg_clean", "fedavg_attack", "rlr_attack"):
            for r in (1, 2):
                on_round(key, _rec(r))
        runs = {k: {"val_acc": 0.5, "base_acc": 0.4, "backdoor_acc": 0.1, "seconds": 3} for k in
                ("fedavg_clean", "fedavg_attack", "rlr_attack")}
        return {"runs": runs, "data_source": "test", "wall_seconds": 9, "pretrain_seconds": 0}

    monkeypatch.setattr("robustlr.reports.demo.run_demo", fake_run_demo)
    res = runner.invoke(app, ["demo", "--set", "rounds=2", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if " round " in f" {line}" and "/2" in line]
    pattern = r"{0}: round {1}  {1}/2  val 5{1}\.0%  backdoor 25\.0%  1\.5s/round  ETA \d+:\d\d:\d\d"
    assert len(lines) == 6, res.output
    for line, (key, r) in zip(lines, [(k, r) for k in ("fedavg_clean", "fedavg_attack", "rlr_attack") for r in (1, 2)]):
        assert re.fullmatch(pattern.format(key, r), line), line
    assert lines[1].endswith("ETA 0:00:00")


def _robustlr(args, data_dir):
    return [str(Path(sys.executable).parent / "robustlr"), "run", "demo-iid", "--set", "rounds=2", "--set",
            "train_limit=300", "--set", "threads=1", "--set", "eval_every=1", "--data-dir", str(data_dir), *args]


def test_run_piped_prints_a_line_per_round_and_on_a_terminal_a_bar(tmp_path, data_dir):
    import pty

    env = {k: v for k, v in os.environ.items() if k not in ("TTY_INTERACTIVE", "TTY_COMPATIBLE", "TERM")}
    # piped, even with FORCE_COLOR (a CI's colours): plain lines
    res = subprocess.run(_robustlr(["--out", str(tmp_path / "piped")], data_dir), capture_output=True, text=True,
                         timeout=300, env={**env, "FORCE_COLOR": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
    rounds = [line for line in res.stdout.splitlines() if line.startswith("round ")]
    assert len(rounds) == 2, res.stdout
    for r, line in enumerate(rounds, 1):
        assert re.fullmatch(rf"round {r}  {r}/2  val \d+\.\d%  backdoor \d+\.\d%  flipped \d+\.\d%  "
                            rf"\d+\.\ds/round  ETA \d:\d\d:\d\d", line), line
    assert rounds[-1].endswith("ETA 0:00:00")
    # on a terminal: rich's bar (drawn in place with cursor controls), no plain round lines
    cmd = _robustlr(["--out", str(tmp_path / "tty")], data_dir)
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.execve(cmd[0], cmd, {**env, "TERM": "xterm-256color"})
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    shown = b"".join(chunks).decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, shown
    assert "\x1b[" in shown and "2/2" in shown and "━" in shown, shown
    assert not re.search(r"^round 1  1/2 ", shown, re.M), shown


def test_sweep_lines_one_per_finished_run_with_the_overall_eta():
    from robustlr.cli import experiments
    from robustlr.experiments.sweep import SweepState

    now = [0.0]
    printed = []
    lines = experiments._SweepLines(clock=lambda: now[0])
    original = experiments.console.print
    experiments.console.print = lambda text, **k: printed.append(text)
    try:
        state = SweepState(total=5, done=1, skipped=1)
        state.running = {"a": (Path("a"), 3, 0.0), "b": (Path("b"), 3, 0.0)}
        lines(state)
        lines(state)  # nothing ended: nothing printed
        now[0] = 60.0
        del state.running["a"]
        state.done = 2
        lines(state)
        now[0] = 90.0
        del state.running["b"]
        state.failed.append("b")
        state.running["c"] = (Path("c"), 3, 90.0)
        lines(state)
    finally:
        experiments.console.print = original
    assert printed == [
        "1 of 5 runs finished before; 4 to run",
        "run a done: 2/5 done, 3 left, ETA 0:03:00",  # 60 s per run, 3 not finished
        "run b failed: 2/5 done, 2 left, 1 failed, ETA 0:01:30",  # 45 s per run, 2 not finished
    ]


def test_sweep_off_a_terminal_says_each_run_as_it_ends(monkeypatch, tmp_path):
    from robustlr.experiments.sweep import SweepState

    def fake_sweep(suite, results, budget, jobs, data_dir, on_update=None, on_warning=None, backend=None):
        state = SweepState(total=2)
        state.running = {"r1": (tmp_path, 2, 0.0), "r2": (tmp_path, 2, 0.0)}
        on_update(state)
        del state.running["r1"]
        state.done = 1
        on_update(state)
        del state.running["r2"]
        state.done = 2
        on_update(state)
        return state

    monkeypatch.setattr("robustlr.experiments.sweep.sweep", fake_sweep)
    res = runner.invoke(app, ["sweep", "table1-iid", "--results", str(tmp_path)])
    assert res.exit_code == 0, res.output
    ends = [line for line in res.output.splitlines() if line.startswith("run r")]
    assert [line.split(", ETA")[0] for line in ends] == ["run r1 done: 1/2 done, 1 left", "run r2 done: 2/2 done, 0 left"]
    assert ends[-1].endswith("ETA 0:00:00")


# -- 3. Ctrl-C says how to resume; the resumed bar starts at the rounds done ----------------------

def test_ctrl_c_says_how_to_resume_and_the_resume_counts_from_there(tmp_path, data_dir, monkeypatch):
    from robustlr.cli import _common, run

    out = tmp_path / "run[1]"
    args = ["run", "demo-iid", "--set", "rounds=3", "--set", "train_limit=300", "--set", "threads=1",
            "--set", "checkpoint_every=1", "--set", "eval_every=1", "--out", str(out), "--data-dir", str(data_dir)]
    real = _common.progress_callback

    def interrupt_after_2(progress, task, prefix=""):
        cb = real(progress, task, prefix)

        def on_round(rec):
            cb(rec)
            if rec.round == 2:
                raise KeyboardInterrupt

        return on_round

    monkeypatch.setattr(run, "progress_callback", interrupt_after_2)
    res = runner.invoke(app, args)
    assert res.exit_code == 130, res.output
    assert res.stderr.startswith("interrupted; its checkpoint holds 2 of 3 rounds. To resume, run the same command "
                                 "again: robustlr run demo-iid --set rounds=3 --set train_limit=300 --set threads=1 "
                                 f"--set checkpoint_every=1 --set eval_every=1 --out '{out}' --data-dir {data_dir}")
    monkeypatch.setattr(run, "progress_callback", real)
    added = []

    class Recording(_common.LineProgress):
        def add_task(self, description, total, status="", completed=0):
            added.append((description, total, completed))
            return super().add_task(description, total, status, completed)

    monkeypatch.setattr(run, "make_progress", lambda: Recording(_common.console))
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert added == [("resuming after round 2", 3, 2)]
    assert [line.split("  ")[:2] for line in res.stdout.splitlines() if line.startswith("round ")] == [["round 3", "3/3"]]


@pytest.mark.parametrize("signal_exc, code, how", [(KeyboardInterrupt, 130, "interrupted"),
                                                   (Terminated, 143, "terminated by SIGTERM")])
def test_ctrl_c_in_a_demo_or_a_sweep_says_how_to_go_on(tmp_path, monkeypatch, signal_exc, code, how):
    def stop(*a, **k):
        raise signal_exc() if signal_exc is KeyboardInterrupt else signal_exc("SIGTERM")

    monkeypatch.setattr("robustlr.reports.demo.run_demo", stop)
    monkeypatch.setattr("robustlr.experiments.sweep.sweep", stop)
    out = tmp_path / "demo [1]"
    res = runner.invoke(app, ["demo", "--out", str(out), "--set", "rounds=2"])
    assert res.exit_code == code, res.output
    assert res.stderr == (f"{how}; the runs that finished are kept, the interrupted one goes on from its last "
                          "checkpoint (if it had one). To go on, run the same command again: robustlr demo "
                          f"--setting iid --out '{out}' --set rounds=2\n")
    res = runner.invoke(app, ["sweep", "table1-iid", "-r", str(tmp_path / "res"), "-j", "2"])
    assert res.exit_code == code, res.output
    assert res.stderr == (f"{how}; finished runs are kept in the store, interrupted ones go on from their last "
                          "checkpoint. To go on, run the same command again: robustlr sweep table1-iid --budget lite "
                          f"-r {tmp_path / 'res'} -j 2\n")


# -- 5. --version ---------------------------------------------------------------------------------

def test_version_prints_robustlr_and_torch():
    import torch

    from robustlr._version import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0
    assert res.output == f"robustlr {__version__} (torch {torch.__version__})\n"


# -- 6. did you mean ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["run", "iid-rlrr"], "config file 'iid-rlrr' not found (did you mean 'iid-rlr'?)"),
    (["config", "demo-idd"], "config file 'demo-idd' not found (did you mean 'demo-iid'?)"),
    (["sweep", "table1-idd"], "suite 'table1-idd' not found (did you mean 'table1-iid'?)"),
    (["bench", "engines", "--preset", "iid-fedavgg"], "(did you mean 'iid-fedavg'?)"),
])
def test_a_misspelt_name_gets_a_suggestion(args, fragment):
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert fragment in " ".join(res.output.split())


def test_an_extended_preset_misspelt_gets_a_suggestion(tmp_path):
    (tmp_path / "mine.toml").write_text('extends = "iid-rrl"\n')
    res = runner.invoke(app, ["config", str(tmp_path / "mine.toml")])
    assert res.exit_code == 2
    assert "unknown preset 'iid-rrl' (did you mean 'iid-rlr'?); presets: " in " ".join(res.output.split())


def test_did_you_mean_is_silent_without_a_close_name():
    from robustlr.errors import did_you_mean

    assert did_you_mean("zzz", ["iid-rlr", "demo-iid"]) == ""
    assert did_you_mean("iid-rl", ["iid-rlr", "demo-iid"]) == " (did you mean 'iid-rlr'?)"


# -- 4. make demo: the download first, apt-get only as the fallback ---------------------------------

@pytest.fixture
def fake_make(tmp_path):
    """`make fashion-mnist` with a stub robustlr (no copy found; --download succeeds unless
    $DOWNLOAD_FAILS) and stub apt-get / sudo that log their calls."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    (venv / "bin" / "robustlr").write_text(
        f'#!/bin/sh\necho "robustlr $*" >> {log}\n'
        'case "$*" in *--download*) [ -z "$DOWNLOAD_FAILS" ] && echo downloaded && exit 0; exit 1;; esac\nexit 1\n')
    bins = tmp_path / "bin"
    bins.mkdir()
    for name in ("apt-get", "sudo"):
        (bins / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n[ "{name}" = sudo ] && exec "$@"\nexit 0\n')
    for f in [venv / "bin" / "robustlr", bins / "apt-get", bins / "sudo"]:
        f.chmod(0o755)
    (venv / ".installed").touch()
    os.utime(venv / ".installed", (2**31 - 1, 2**31 - 1))  # newer than pyproject.toml: no install

    def make(**env):
        res = subprocess.run(["make", "-s", "fashion-mnist", f"VENV={venv}"], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "PATH": f"{bins}:{os.environ['PATH']}", **env})
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return res, calls

    return make


def test_make_fashion_mnist_downloads_before_apt_get(fake_make):
    res, calls = fake_make()
    assert res.returncode == 0, res.stdout + res.stderr
    assert calls == ["robustlr data fashion-mnist", "robustlr data fashion-mnist --download"]
    assert "Fashion-MNIST not found: downloading its 4 files (30 MB) into robustlr's cache" in res.stdout
    assert "apt-get" not in res.stdout


def test_make_fashion_mnist_falls_back_to_debian_when_the_download_fails(fake_make):
    res, calls = fake_make(DOWNLOAD_FAILS="1")
    assert res.returncode == 0, res.stdout + res.stderr
    apt = [c for c in calls if c.startswith("apt-get")]
    assert calls[:2] == ["robustlr data fashion-mnist", "robustlr data fashion-mnist --download"]
    assert apt == ["apt-get update -qq", "apt-get install -y -qq dataset-fashion-mnist"]
    assert "The download failed: installing Debian's dataset-fashion-mnist package instead (apt-get)" in res.stdout
