"""``maedet-search`` against hostile and careless input (issue 12 and 11.11): every case one sentence, exit 2,
nothing written or touched, no hang, nothing unbounded."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import threading
import time

import pytest

from maedet.search import Search, SearchSettings, make_executor, preset_budget
from maedet.search.cli import main
from maedet.search.evolution import CHECKPOINT_NAME, ForwardOptions
from maedet.search.executors import LocalProcessExecutor, SerialExecutor
from maedet.zoo import builtin_structure

LOCK_NAME = ".maedet-search.lock"  # maedet.search.output_folder.LOCK_NAME, spelled out: it is part of the contract
SMALL_RUN = ["run", "--preset", "maedet-s", "--iterations", "200", "--population", "16", "--quiet"]


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("maedet-search: error: ")
    return err


class _Records(logging.Handler):
    """Every record a logger emits, kept in a list (``records``, and their messages as ``text``)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(record.getMessage() for record in self.records)


@pytest.fixture()
def search_log():
    """Records of the search's own loggers, heard where they are emitted: whatever earlier tests did to the logging
    tree (a CLI's ``maedet`` handler on a closed stream without propagation, a library's ``dictConfig`` disabling
    existing loggers, a global ``logging.disable``) cannot hide them."""
    from maedet.search import eta, executors

    loggers = [executors.LOGGER, eta.LOGGER]  # the very objects the code logs through
    handler = _Records()
    saved = [(logger.level, logger.disabled) for logger in loggers]
    disabled_below = logging.root.manager.disable
    logging.disable(logging.NOTSET)
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.disabled = False
    yield handler
    for logger, (level, disabled) in zip(loggers, saved, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.disabled = disabled
    logging.disable(disabled_below)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---------------------------------------------------------------------------------------------- 12.4 bounds
def test_workers_are_capped_at_the_cpu_count(search_log):
    cores = os.cpu_count() or 1
    executor = make_executor("local", workers=1000)
    try:
        if cores == 1:
            assert isinstance(executor, SerialExecutor)
        else:
            assert isinstance(executor, LocalProcessExecutor) and executor.workers == cores
    finally:
        executor.close()
    assert f"1000 workers asked for, but this machine has {cores} CPU cores: using {cores}." in search_log.text


def test_unreachable_ray_address_fails_in_one_sentence_within_the_timeout(tmp_path, capsys):
    pytest.importorskip("ray")
    out = tmp_path / "run"
    started = time.monotonic()
    argv = [*SMALL_RUN, "--executor", "ray", "--ray-address", "127.0.0.1:1", "--ray-timeout", "2", "--out", str(out)]
    err = _error(capsys, argv)
    assert time.monotonic() - started < 60
    assert "cannot reach the Ray cluster at 127.0.0.1:1 within 2 s" in err and "--ray-address" in err
    assert not out.exists()  # the folder this run created is gone again: no checkpoint, no results


def test_no_ray_cluster_at_auto_is_one_sentence(tmp_path, capsys, monkeypatch):
    services = pytest.importorskip("ray._private.services")
    if services.find_gcs_addresses() or services.find_bootstrap_address(None):  # Ray's own lookup for 'auto'
        pytest.skip("a Ray cluster is running on this machine, so 'auto' would find it")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "run"
    err = _error(capsys, [*SMALL_RUN, "--executor", "ray", "--ray-address", "auto", "--out", str(out)])
    assert "cannot connect to Ray at auto (Could not find any running Ray instance" in err
    assert not out.exists()


def test_mutations_are_bounded_with_the_reason(tmp_path, capsys):
    err = _error(capsys, [*SMALL_RUN, "--iterations", "1", "--mutations", "100000", "--out", str(tmp_path / "o")])
    assert "mutations must be at most 64, got 100,000" in err and "unrelated to their parents" in err
    assert not (tmp_path / "o").exists()


def test_score_of_a_fifo_does_not_hang(tmp_path, capsys):
    fifo = tmp_path / "structure.json"
    os.mkfifo(fifo)
    unblocked = threading.Event()

    def unblock_a_blocked_reader():  # without the fix the reader waits forever for a writer: be that writer
        if not done.wait(15):
            unblocked.set()
            with open(fifo, "w") as fh:
                fh.write("[]")

    done = threading.Event()
    threading.Thread(target=unblock_a_blocked_reader, daemon=True).start()
    try:
        assert main(["score", str(fifo)]) == 2
    finally:
        done.set()
    assert not unblocked.is_set(), "maedet-search score waited for a writer on a FIFO"
    err = capsys.readouterr().err
    assert err.startswith("maedet-search: error: ") and err.count("\n") == 1


@pytest.mark.slow
def test_score_of_dev_zero_is_refused_with_bounded_memory():
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))\n"
        "from maedet.search.cli import main\n"
        "sys.exit(main(['score', '/dev/zero']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("maedet-search: error: ") and done.stderr.count("\n") == 1


def test_astronomical_channels_are_one_sentence(tmp_path, capsys):
    structure = builtin_structure("maedet_s").to_dict()
    structure["blocks"][1]["out"] = structure["blocks"][2]["in"] = 10**400
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(structure))
    _error(capsys, ["score", str(path)])
    _error(capsys, [*SMALL_RUN, "--init", str(path), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- 12.5 output paths
def test_out_that_cannot_hold_a_search_is_refused_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "exists and is not a folder" in _error(capsys, [*SMALL_RUN, "--out", str(a_file)])
    under = _error(capsys, [*SMALL_RUN, "--out", str(a_file / "sub")])
    assert f"cannot create the output folder {str(a_file / 'sub')!r}: {str(a_file)!r} is a file" in under
    # /proc refuses new files even to root, whose permission checks always pass
    in_proc = _error(capsys, [*SMALL_RUN, "--out", "/proc"])
    assert "cannot write" in in_proc and "'/proc'" in in_proc
    assert a_file.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_refused(tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert "is not writable" in _error(capsys, [*SMALL_RUN, "--out", str(locked / "run")])
    finally:
        locked.chmod(0o755)


def test_symlink_at_an_output_name_is_refused_and_its_target_untouched(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*SMALL_RUN, "--out", str(out)]) == 0
    checkpoint = (out / CHECKPOINT_NAME).read_bytes()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / "best.json").unlink()
    (out / "best.json").symlink_to(victim)
    err = _error(capsys, [*SMALL_RUN, "--iterations", "400", "--resume", "--out", str(out)])
    assert "best.json" in err and "is a symbolic link" in err
    assert victim.read_text() == "precious" and (out / "best.json").is_symlink()
    assert (out / CHECKPOINT_NAME).read_bytes() == checkpoint  # refused before the search ran on


# ---------------------------------------------------------------------------------------------- 12.5/12.6 checkpoints
@pytest.fixture(scope="module")
def checkpoint_text(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("search") / "run"
    assert main([*SMALL_RUN, "--out", str(out)]) == 0
    return (out / CHECKPOINT_NAME).read_text()


def _damaged(state: dict, how: str) -> str:
    genome = state["population"][0][1]
    if how == "missing key":
        del state["candidates"]
    elif how == "short genome":
        state["population"][0][1] = genome[:5]
    elif how == "empty population":
        state["population"] = []
    elif how == "population of the wrong type":
        state["population"] = {"a": 1}
    elif how == "zero genome":
        state["population"][0][1] = [0] * len(genome)
    elif how == "astronomical channels":
        state["population"][0][1] = [10**400] * len(genome)
    elif how == "string score":
        state["population"][0][0] = "high"
    elif how == "rng of the wrong type":
        state["rng"] = 3
    elif how == "seen not base64":
        state["seen"] = "!!!"
    elif how == "history row of the wrong type":
        state["history"] = [{"candidates": "x"}]
    text = json.dumps(state)
    if how == "NaN score":
        text = text.replace(f"[{state['population'][0][0]}, ", "[NaN, ", 1)
    return text


DAMAGES = [
    "missing key",
    "short genome",
    "empty population",
    "population of the wrong type",
    "zero genome",
    "astronomical channels",
    "string score",
    "NaN score",
    "rng of the wrong type",
    "seen not base64",
    "history row of the wrong type",
]


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_checkpoint_is_one_sentence_on_resume(how, checkpoint_text, tmp_path, capsys):
    damaged = _damaged(json.loads(checkpoint_text), how)
    (tmp_path / CHECKPOINT_NAME).write_text(damaged)
    err = _error(capsys, [*SMALL_RUN, "--iterations", "400", "--resume", "--out", str(tmp_path)])
    assert "checkpoint" in err and ("damaged" in err or "cannot read" in err), err
    assert (tmp_path / CHECKPOINT_NAME).read_text() == damaged
    assert not (tmp_path / "best.json").exists()


def test_the_undamaged_checkpoint_resumes(checkpoint_text, tmp_path):
    (tmp_path / CHECKPOINT_NAME).write_text(checkpoint_text)
    assert main([*SMALL_RUN, "--iterations", "400", "--resume", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "best.json").read_text())["candidates"] == 400


# ---------------------------------------------------------------------------------------------- 12.6 values
@pytest.mark.parametrize("ratios", ["nan,0,1,1,6", "0,0,1,1,inf", "0,0,-1,1,6"])
def test_non_finite_or_negative_ratios_are_refused(ratios, tmp_path, capsys):
    err = _error(capsys, [*SMALL_RUN, "--ratios", ratios, "--out", str(tmp_path / "o")])
    assert "ratios must be finite non-negative numbers" in err
    assert "ratios must be finite" in _error(capsys, ["score", "maedet_s", "--ratios", ratios])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option", ["--top-k", "--workers"])
@pytest.mark.parametrize("value", ["-5", "0"])
def test_counts_below_one_are_refused(option, value, tmp_path, capsys):
    err = _error(capsys, [*SMALL_RUN, option, value, "--out", str(tmp_path / "o")])
    assert f"argument {option}: expected a whole number at least 1" in err
    assert not (tmp_path / "o").exists()


def test_nan_never_reaches_a_written_file(tmp_path):
    settings = SearchSettings(init=builtin_structure("r50_like_init"), budget=preset_budget("maedet-s"), iterations=2)
    search = Search(settings)
    _, genome = search.best
    search._keys[0] = (-math.nan, genome)
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        search.checkpoint(tmp_path / CHECKPOINT_NAME)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- 12.8 one per folder
def test_a_second_search_on_the_same_out_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(out / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    other = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        err = _error(capsys, [*SMALL_RUN, "--out", str(out)])
        assert f"another search is running in {str(out)!r}" in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    finally:
        other.communicate("", timeout=30)
    assert main([*SMALL_RUN, "--out", str(out)]) == 0  # the lock went with the process
    assert json.loads((out / "best.json").read_text())["candidates"] == 200


@pytest.mark.slow
def test_two_real_searches_at_once_one_is_refused(tmp_path):
    out = tmp_path / "run"
    argv = [*SMALL_RUN[:4], "300000", "--population", "16", "--checkpoint-every", "1000", "--quiet", "--out", str(out)]
    cmd = [sys.executable, "-m", "maedet.search.cli", *argv]
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / CHECKPOINT_NAME).exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert (out / CHECKPOINT_NAME).exists()
        second = subprocess.run([*cmd, "--force"], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr == f"maedet-search: error: another search is running in {str(out)!r}; wait for it " + (
            "to finish or choose another --out.\n"
        )
    finally:
        first.kill()
        first.communicate(timeout=30)


@pytest.mark.slow
# ---------------------------------------------------------------------------------------------- 12.7 leftovers
def test_temporary_files_of_killed_writers_are_removed_on_the_next_run(tmp_path):
    out = tmp_path / "run"
    assert main([*SMALL_RUN, "--out", str(out)]) == 0
    dead = _dead_pid()
    stale = [f".checkpoint.json.{dead}.k3j9x2.maedet-tmp", f".checkpoint.json.{dead}.tmp", f".best.json.{dead}.tmp"]
    alive = [f".checkpoint.json.{os.getppid()}.tmp", f".notes.txt.{dead}.tmp"]  # a live writer's, not our name
    for name in stale + alive:
        (out / name).write_text("half a file")
    assert main([*SMALL_RUN, "--iterations", "400", "--resume", "--out", str(out)]) == 0
    left = {p.name for p in out.iterdir()}
    assert not left & set(stale)
    assert set(alive) <= left


# ---------------------------------------------------------------------------------------------- 11.11 forward ETA
def test_forward_search_estimates_its_duration_up_front(tmp_path, search_log):
    from maedet.search.eta import LONG_RUN_S, format_duration, log_forward_eta

    forward = ForwardOptions(batch=1, resolution=32, repeats=1)
    settings = SearchSettings(
        init=builtin_structure("r50_like_init"),
        budget=preset_budget("maedet-s"),
        score="forward",
        forward=forward,
        iterations=100_000,
    )
    search = Search(settings)
    total = log_forward_eta(search, parallelism=2)
    record = search_log.records[-1]
    assert record.levelno == (logging.WARNING if total > LONG_RUN_S else logging.INFO)
    message = record.getMessage()
    assert "the remaining 99,999 candidates will take about " + format_duration(total) in message
    assert "with 2 workers" in message


@pytest.mark.slow
def test_forward_run_logs_the_estimate_and_the_bar_shows_an_eta(tmp_path, capsys):
    argv = ["run", "--preset", "maedet-s", "--iterations", "4", "--candidates-per-step", "2", "--population", "4"]
    forward = [
        "--score",
        "forward",
        "--forward-batch-size",
        "1",
        "--forward-resolution",
        "32",
        "--forward-repeats",
        "1",
    ]
    assert main([*argv, *forward, "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "maedet-search: --score forward takes about" in err and "the remaining 3 candidates" in err
    assert "eta 0 s" in err  # the finished bar: nothing left


def test_format_duration_reads_like_a_person_would_say_it():
    from maedet.search.eta import format_duration

    assert [format_duration(s) for s in (40, 7 * 60 + 3, 5 * 3600 + 12 * 60, 2 * 86_400 + 3 * 3600)] == [
        "40 s",
        "7 min",
        "5 h 12 min",
        "2 d 3 h",
    ]
