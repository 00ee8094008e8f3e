"""Hostile and careless input, through the real CLI: every refusal is one line with its exit
code, and nothing outside the run's own folder changes (every other file is hashed before
and after). Covered here: run folders, concurrent runs, hostile data, file-system failures,
plausibility."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY

from fedvl.rounds.checkpoint import checkpoint_dirs


def fedvl(*args, cwd: Path, wait: bool = True, preexec=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "fedvl", *args]
    if not wait:
        # a shell's background job inherits SIGINT ignored, and Python then never raises KeyboardInterrupt:
        # give the child the default disposition, as a terminal's foreground job has
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=preexec or (lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)))
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, preexec_fn=preexec)


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """SHA-256 of every file under ``root`` except under ``skip`` (the run's own folder, the cache)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not any(p == s or s in p.parents for s in skip):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_line(r, code: int, text: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, r.stderr
    assert len(lines) == 1 and text in lines[0], r.stderr
    return lines[0]


@pytest.fixture
def world(tmp_path):
    """A working folder with a finished neighbour run and a folder outside the results."""
    work = tmp_path / "work"
    keep = work / "results" / "keep"
    keep.mkdir(parents=True)
    (keep / "status.json").write_text('{"state": "complete"}')
    (keep / "metrics.jsonl").write_text('{"round": 1}\n')
    (work / "victim").mkdir()
    (work / "victim" / "precious.txt").write_text("do not delete")
    return work


def args(work: Path, *extra: str) -> list[str]:
    return [*TINY, f"run.cache_dir={work.parent / 'cache'}", "--quiet", *extra]


# -- 1. run folders are owned and locked ------------------------------------------------------------

@pytest.mark.parametrize("name", ["../victim", ".", "..", "/ABS/victim", "a/b"])
def test_run_name_must_be_one_plain_folder_name(world, name):
    before = snapshot(world)
    r = fedvl("run", *args(world, f"run.name={name.replace('/ABS', str(world))}", "--overwrite"), cwd=world)
    one_line(r, 2, "must be one plain folder name")
    assert snapshot(world) == before


def test_overwrite_refuses_a_folder_that_is_not_a_fedvl_run(world):
    (world / "results" / "mine").mkdir()
    (world / "results" / "mine" / "thesis.tex").write_text("years of work")
    before = snapshot(world)
    r = fedvl("run", *args(world, "run.name=mine", "--overwrite"), cwd=world)
    one_line(r, 2, "is not a fedvl run folder (no status.json)")
    assert snapshot(world) == before


def test_second_run_of_one_name_refused_without_overwrite(world):
    before = snapshot(world)
    r = fedvl("run", *args(world, "run.name=keep"), cwd=world)
    one_line(r, 2, "already exists")
    assert snapshot(world) == before


@pytest.mark.slow
def test_two_runs_of_one_name_at_once_exactly_one_proceeds(world):
    before = snapshot(world, skip=(world / "results" / "same",))
    procs = [fedvl("run", *args(world, "run.name=same", f"run.seed={s}"), cwd=world, wait=False) for s in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], outs
    loser = outs[codes.index(2)][1].strip().splitlines()
    assert len(loser) == 1 and ("in use by another fedvl process" in loser[0] or "already exists" in loser[0])
    run = world / "results" / "same"
    winner_seed = codes.index(0)
    rounds = [json.loads(x)["round"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2]  # nothing interleaved
    assert f"seed: {winner_seed}" in (run / "config.yaml").read_text()
    assert f"seed {winner_seed}" in (run / "summary.md").read_text()
    assert snapshot(world, skip=(run,)) == before


def _wait_for_checkpoint(run: Path, proc, n: int = 1) -> None:
    deadline = time.time() + 300
    while not checkpoint_dirs(run) or checkpoint_dirs(run)[0][0] < n:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)


@pytest.mark.slow
def test_live_run_cannot_be_resumed_sigterm_marks_interrupted_and_edited_config_is_refused(world):
    run = world / "results" / "live"
    proc = fedvl("run", *args(world, "run.name=live", "algorithm.rounds=60"), cwd=world, wait=False)
    _wait_for_checkpoint(run, proc)
    before = snapshot(world, skip=(run,))
    r = fedvl("run", "--resume", str(run), "--quiet", cwd=world)
    one_line(r, 2, "is in use by another fedvl process")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    status = json.loads((run / "status.json").read_text())
    done = checkpoint_dirs(run)[0][0]
    assert status == {"state": "interrupted", "resume_from_round": done + 1}
    assert err.strip().splitlines()[-1].startswith("fedvl: interrupted by SIGTERM") and f"round {done + 1}" in err
    # the config is edited before resuming: one run would have two configs
    cfg = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(cfg.replace("rounds: 60", f"rounds: {done + 1}"))
    r = fedvl("run", "--resume", str(run), "--quiet", cwd=world)
    one_line(r, 2, "config.yaml changed since the checkpoint of round")
    assert json.loads((run / "status.json").read_text())["state"] == "interrupted"
    r = fedvl("run", "--resume", str(run), "--accept-config-change", "--quiet", cwd=world)
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    rounds = [json.loads(x)["round"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rounds == list(range(1, done + 2))  # every round once
    assert snapshot(world, skip=(run,)) == before


@pytest.mark.slow
def test_sigint_marks_the_run_interrupted(world):
    run = world / "results" / "ctrlc"
    proc = fedvl("run", *args(world, "run.name=ctrlc", "algorithm.rounds=60"), cwd=world, wait=False)
    _wait_for_checkpoint(run, proc)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted" and status["resume_from_round"] == checkpoint_dirs(run)[0][0] + 1


# -- 2. data are validated before anything is written ------------------------------------------------

def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header that claims ``width`` x ``height`` pixels, in a few bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def write_folder_dataset(folder: Path, damage: str = "") -> None:
    """A user's own data in the VQAv2 format (``folder:<dir>``), 8 questions per split, then one damage."""
    from real_fixtures import COLOURS, ten, write_image

    names = list(COLOURS)
    for split in ("train", "val"):
        qs, anns = [], []
        for i in range(8):
            image_id = f"{split}{i}.png"
            write_image(folder / "images" / image_id, names[i % 4])
            qid = 100 * (split == "val") + i
            qs.append({"image_id": image_id, "question": "What colour is it?", "question_id": qid})
            anns.append({"question_id": qs[-1]["question_id"], "answers": ten(names[i % 4])})
        if split == "train" and damage == "escape":
            write_image(folder.parent / "other" / "images" / "x.png", "red")
            qs[3]["image_id"] = "../../other/images/x.png"
        elif split == "train" and damage == "absolute":
            qs[3]["image_id"] = str(folder.parent / "other.png")
            write_image(folder.parent / "other.png", "red")
        elif split == "train" and damage == "bomb":
            (folder / "images" / "train3.png").write_bytes(png_claiming(60000, 60000))
        elif split == "train" and damage == "not_an_image":
            (folder / "images" / "train3.png").write_text("<html>this is not a picture</html>")
        elif split == "train" and damage == "duplicate":
            qs[3]["question_id"] = anns[3]["question_id"] = 2
        elif split == "train" and damage == "no_answer":
            anns[3]["answers"] = [{"answer": ""} for _ in range(10)]
        (folder / f"{split}_questions.json").write_text(json.dumps({"questions": qs}))
        (folder / f"{split}_annotations.json").write_text(json.dumps({"annotations": anns}))
        if split == "train" and damage == "shape":
            (folder / "train_questions.json").write_text(json.dumps({"questions": 5}))


def real_args(work: Path, *extra: str) -> list[str]:
    return args(work, "data.benchmark=real", f"data.root={work / 'data'}", "data.clients=folder:mine",
                "data.image_size=32", "data.answer_vocab=4", *extra)


@pytest.mark.parametrize("damage,message", [
    ("escape", "train_questions.json: question 3: image '../../other/images/x.png' lies outside the dataset folder"),
    ("absolute", "train_questions.json: question 3: image '/"),
    ("bomb", "train3.png claims more than 178,956,970 pixels"),
    ("not_an_image", "train3.png is not a readable image of a supported type"),
    ("shape", "train_questions.json: 'questions' must be a list of records, got int"),
    ("duplicate", "train_questions.json: duplicate question_id 2"),
    ("no_answer", "train_annotations.json: question 3 has no usable answer"),
])
def test_hostile_data_one_line_no_results_folder(world, damage, message):
    write_folder_dataset(world / "data" / "mine", damage)
    before = snapshot(world)
    r = fedvl("run", *real_args(world, "run.name=bad"), cwd=world)
    one_line(r, 2, message)
    assert not (world / "results" / "bad").exists()
    assert snapshot(world) == before


def test_gqa_question_id_twice_in_one_file_is_named(world):
    """GQA maps question id -> question in one JSON object: a repeated key would silently replace
    the question before it (json.load keeps the last), so it is refused like any duplicate id."""
    from real_fixtures import write_all

    write_all(world / "data", n=4)
    path = world / "data" / "gqa" / "questions" / "train_balanced_questions.json"
    doc = json.loads(path.read_text())
    again = json.dumps({**doc["train00002"], "answer": "blue"})
    path.write_text(json.dumps(doc)[:-1] + f', "train00002": {again}}}')
    before = snapshot(world)
    r = fedvl("run", *args(world, "data.benchmark=real", f"data.root={world / 'data'}", "data.clients=gqa",
                           "data.image_size=32", "data.answer_vocab=4", "run.name=bad"), cwd=world)
    one_line(r, 2, f"{path}: duplicate question id train00002 (every question needs its own id)")
    assert not (world / "results" / "bad").exists() and snapshot(world) == before


def test_overwrite_with_bad_data_keeps_the_old_run(world):
    write_folder_dataset(world / "data" / "mine", "duplicate")
    before = snapshot(world)
    r = fedvl("run", *real_args(world, "run.name=keep", "--overwrite"), cwd=world)
    one_line(r, 2, "duplicate question_id 2")
    assert snapshot(world) == before  # the old run included: it is only replaced by a run that can start


@pytest.mark.parametrize("command", ["run", "serve"])
def test_overwrite_of_a_live_run_is_refused_before_anything_is_built(world, command):
    """The lock of a run still going is looked at first: its data (bad here, so a later check would
    name them instead) are never built and nothing is started or written."""
    from fedvl.runfolder import RunFolder
    from fedvl.deploy.process import free_port

    write_folder_dataset(world / "data" / "mine", "duplicate")
    live = RunFolder(world / "results" / "keep").acquire(fresh=False)  # this process: the run still going
    try:
        before = snapshot(world)
        argv = real_args(world, "run.name=keep", "--overwrite")
        if command == "serve":  # it would start a SuperLink here
            argv = [a for a in argv if a != "--quiet"] + ["--port", str(free_port()), "--insecure"]
        r = fedvl(command, *argv, cwd=world)
        one_line(r, 2, "results folder results/keep is in use by another fedvl process "
                       f"(pid {os.getpid()}); wait for it to end or choose another run.name")
        assert snapshot(world) == before
    finally:
        live.release()


def test_serve_resume_waits_for_the_dead_servers_process_to_release_the_folder(tmp_path):
    """A ServerApp killed with its `fedvl serve` lets go of the results folder a moment later (its
    SuperLink stops it): `serve --resume` waits for that, and still refuses a run that stays live."""
    import threading

    from fedvl.runfolder import RunFolder, RunFolderError, wait_until_free

    run = tmp_path / "dep"
    run.mkdir()
    said = []
    held = RunFolder(run).acquire(fresh=False)
    timer = threading.Timer(0.5, held.release)
    timer.start()
    try:
        wait_until_free(run, 30, said.append)  # returns once the lock is gone
    finally:
        timer.join()
    assert len(said) == 1 and "waiting up to 30s for the previous process" in said[0]
    held = RunFolder(run).acquire(fresh=False)
    try:
        with pytest.raises(RunFolderError, match=f"in use by another fedvl process \\(pid {os.getpid()}\\)"):
            wait_until_free(run, 0.3, said.append)
    finally:
        held.release()


@pytest.mark.slow
def test_clean_folder_dataset_runs(world):
    """The fixture itself is fine: without damage the same command runs (so the tests above test the damage)."""
    write_folder_dataset(world / "data" / "mine")
    r = fedvl("run", *real_args(world, "run.name=good", "algorithm.rounds=1"), cwd=world)
    assert r.returncode == 0, r.stderr
    assert json.loads((world / "results" / "good" / "status.json").read_text())["state"] == "complete"


# -- 3. file-system failures are one line ---------------------------------------------------------------

@pytest.mark.parametrize("key,where", [("run.output_dir", "afile"), ("run.output_dir", "afile/results"),
                                       ("run.cache_dir", "afile")])
def test_output_or_cache_path_that_is_a_file(world, key, where):
    (world / "afile").write_text("not a folder")
    before = snapshot(world)
    r = fedvl("run", *args(world, "run.name=x", f"{key}={where}"), cwd=world)
    line = one_line(r, 2, "afile is a file, not a folder")
    assert line.startswith(f"fedvl: error: {key}={where}:")
    assert snapshot(world) == before


def test_output_dir_not_writable(world):
    if os.geteuid() == 0:  # root writes through permission bits; sysfs refuses even root
        target = "/sys/fedvl-hostile/results"
        try:
            os.mkdir("/sys/fedvl-hostile")
        except OSError:
            pass
        else:
            os.rmdir("/sys/fedvl-hostile")
            pytest.skip("/sys is writable here: no read-only place to test with")
    else:
        (world / "ro").mkdir()
        (world / "ro").chmod(0o500)
        target = str(world / "ro" / "results")
    before = snapshot(world)
    r = fedvl("run", *args(world, "run.name=x", f"run.output_dir={target}"), cwd=world)
    one_line(r, 2, "cannot write in")
    assert snapshot(world) == before


def test_full_disk_refused_before_the_run(tmp_path, monkeypatch):
    """The free-space check itself (a real full disk cannot be made here without root mounts)."""
    import shutil

    from fedvl.runfolder import RunFolderError, check_writable

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=3 << 20))
    with pytest.raises(RunFolderError, match=r"run.output_dir=.*: the disk holding .* is full \(3.0 MiB free\)"):
        check_writable(tmp_path / "results", "run.output_dir")
    assert list(tmp_path.iterdir()) == []  # the write probe left nothing behind


def _small_files_only():
    """In the child: files may grow to 200 kB, so the first checkpoint (300 kB of parameters) fails
    as on a full disk (EFBIG instead of ENOSPC: the same OSError path). Python ignores SIGXFSZ."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


@pytest.mark.slow
def test_disk_full_mid_run_fails_in_one_line_and_resumes(world):
    run = world / "results" / "full"
    before = snapshot(world, skip=(run, world.parent / "cache"))
    r = fedvl("run", *args(world, "run.name=full"), cwd=world, preexec=_small_files_only)
    line = one_line(r, 1, "fedvl: error: cannot write results:")
    assert "File too large" in line and f"fedvl run --resume {Path('results') / 'full'}" in line
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "File too large" in status["error"] and status["resume_from_round"] == 1
    assert snapshot(world, skip=(run, world.parent / "cache")) == before
    r = fedvl("run", "--resume", str(run), "--quiet", cwd=world)  # space freed: the run continues
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["round"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


# -- 5. plausibility ----------------------------------------------------------------------------------

def test_lr_nan_is_not_a_number(world):
    before = snapshot(world)
    one_line(fedvl("run", *args(world, "algorithm.lr=nan"), cwd=world), 2, "algorithm.lr is not a number (nan)")
    assert snapshot(world) == before


def test_empty_yaml_is_an_error(world):
    (world / "empty.yaml").write_text("# nothing here\n")
    before = snapshot(world)
    one_line(fedvl("run", "empty.yaml", "--quiet", cwd=world), 2, "config file empty.yaml is empty")
    assert snapshot(world) == before


def test_round_estimate_small_runs_stay_quiet(tiny_cfg):
    from fedvl.estimate import plausibility_warning, round_seconds

    assert plausibility_warning(tiny_cfg()) is None
    seconds, _ = round_seconds(tiny_cfg("data.num_clients=40", "data.cycle_variants=true", "data.train_images=160",
                                        "data.test_images=100"))
    assert 30 < seconds < 120  # measured: 53 s for this round (tiny model, 2 shared cores)
    # a real dataset without a cap: its size is known only once read, so no guess
    assert round_seconds(tiny_cfg("data.benchmark=real", "data.root=/nowhere", "data.clients=gqa")) is None


def test_hour_long_rounds_are_named_before_the_run_starts(world):
    proc = fedvl("run", *args(world, "run.name=huge", "data.num_clients=100000", "data.cycle_variants=true"),
                 cwd=world, wait=False)
    first = proc.stderr.readline()
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    assert first.startswith("fedvl: warning: this run needs about") and "h per round (100,000 clients" in first
    assert proc.returncode == 128 + signal.SIGTERM and "interrupted by SIGTERM" in rest


# -- 4. deployment that gives up cleanly --------------------------------------------------------------

def _processes_mentioning(text: str) -> list[str]:
    found = []
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if d.name.isdigit() and int(d.name) != os.getpid() and text in cmd:
            found.append(cmd)
    return found


def test_join_gives_up_on_an_unreachable_server_after_wait_s(tmp_path):
    from fedvl.deploy.process import free_port

    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    r = fedvl("join", "--server", f"127.0.0.1:{port}", "--partition", "0", "--insecure", "--wait-s", "2",
              "--state-dir", str(tmp_path / "s"), cwd=tmp_path)
    assert time.monotonic() - t0 < 60
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last == (f"fedvl join: error: cannot reach the SuperLink at 127.0.0.1:{port} after 2s "
                    "(Connection refused); giving up")
    assert not _processes_mentioning(f"127.0.0.1:{port}")  # no SuperNode left behind


@pytest.mark.parametrize("server", ["notahostport", "host:", ":9092", "host:99999"])
def test_join_refuses_a_malformed_server_address(tmp_path, server):
    r = fedvl("join", "--server", server, "--partition", "0", "--insecure", "--state-dir", str(tmp_path / "s"),
              cwd=tmp_path)
    one_line(r, 2, f"--server {server!r} is not HOST:PORT")


@pytest.mark.slow
def test_serve_with_garbage_tls_files_prints_the_superlinks_own_error(world):
    from fedvl.deploy.process import free_port

    (world / "bad.pem").write_text("garbage\n")
    port = free_port()
    before = snapshot(world)
    r = fedvl("serve", *TINY, "run.name=srv", "--port", str(port), "--ssl-certfile", "bad.pem", "--ssl-keyfile",
              "bad.pem", "--ssl-ca-certfile", "bad.pem", cwd=world)
    line = one_line(r, 1, "the SuperLink did not start")
    assert "SSL" in line and "full log:" in line
    assert snapshot(world) == before and not (world / "results" / "srv").exists()
    assert not _processes_mentioning(f":{port}")


def _descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (from /proc: pid -> parent pid, zombies left out)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            parent[int(d.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    out = set()
    for p in pids:
        try:
            if Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.add(p)
        except (OSError, IndexError):
            pass
    return out


@pytest.mark.slow
@pytest.mark.parametrize("executor, started", [("warm", 1), ("flower", 3)])
def test_sigkill_of_serve_leaves_no_flower_process_behind(world, executor, started):
    """warm: the SuperLink (and `flwr run` while it submits); flower: also its SuperExec and ServerApp."""
    from fedvl.deploy.process import free_port

    port = free_port()
    proc = fedvl("serve", *TINY, f"run.name=orphans-{executor}", "--port", str(port), "--insecure", "--executor",
                 executor, cwd=world, wait=False)
    try:
        deadline = time.time() + 120
        while "SuperLink listening" not in (line := proc.stdout.readline()):
            assert line or proc.poll() is None, proc.communicate()
            assert time.time() < deadline
        time.sleep(2)  # the run is submitted
        children = _descendants(proc.pid)
        assert len(children) >= started, children
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 30
        while _alive(children) and time.time() < deadline:
            time.sleep(0.5)
        assert not _alive(children), [Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in _alive(children)]
    finally:
        if proc.poll() is None:  # a failed assertion above: serve stops what it started
            proc.terminate()
            proc.wait(timeout=60)


@pytest.mark.slow
def test_node_with_a_partition_the_run_lacks_stops_and_serve_names_it(world):
    from fedvl.deploy.process import free_port

    port = free_port()
    srv = fedvl("serve", *TINY, "run.name=dep", "run.flower_wait_s=20", "--port", str(port), "--insecure",
                cwd=world, wait=False)
    try:
        r = fedvl("join", "--server", f"127.0.0.1:{port}", "--partition", "99", "--insecure", "--wait-s", "60",
                  "--state-dir", str(world.parent / "node"), cwd=world)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines()[-1] == ("fedvl join: error: this node holds partition 99, but the "
                                                     "experiment has partitions 0..3; stopping this node")
        # one refusal, not a traceback per message (the node's executor writes its traceback to stderr)
        assert (r.stdout + r.stderr).count("Traceback") == 1
        _, err = srv.communicate(timeout=240)
        assert srv.returncode == 1
        assert "refused:" in err and "this node holds partition 99" in err  # serve names the bad node
        status = json.loads((world / "results" / "dep" / "status.json").read_text())
        assert status["state"] == "failed" and "this node holds partition 99" in status["error"]
    finally:
        if srv.poll() is None:
            srv.terminate()
            srv.wait(timeout=60)


@pytest.mark.slow
def test_sigterm_on_serve_leaves_status_interrupted_not_running(world):
    from fedvl.deploy.process import free_port

    port = free_port()
    status = world / "results" / "stopped" / "status.json"
    srv = fedvl("serve", *TINY, "run.name=stopped", "run.flower_wait_s=300", "--port", str(port), "--insecure",
                cwd=world, wait=False)
    try:
        deadline = time.time() + 180
        while not status.is_file():  # the ServerApp has started the run and waits for nodes
            assert srv.poll() is None, srv.communicate()
            assert time.time() < deadline
            time.sleep(0.5)
        children = _descendants(srv.pid)
        srv.send_signal(signal.SIGTERM)
        _, err = srv.communicate(timeout=120)
        assert srv.returncode == 128 + signal.SIGTERM, err
        assert err.strip().splitlines()[-1] == "fedvl: interrupted by SIGTERM"
        record = json.loads(status.read_text())
        assert record["state"] == "interrupted" and "serve stopped" in record["reason"]
        time.sleep(2)
        assert not _alive(children)
    finally:
        if srv.poll() is None:
            srv.terminate()
            srv.wait(timeout=60)


@pytest.mark.slow
def test_join_exits_by_itself_once_the_run_has_ended(world):
    from fedvl.deploy.process import free_port, stop

    port = free_port()
    srv = fedvl("serve", *TINY, "data.num_clients=2", "run.name=ends", "--port", str(port), "--insecure",
                cwd=world, wait=False)
    nodes = []
    try:
        deadline = time.time() + 120
        while "SuperLink listening" not in (line := srv.stdout.readline()):
            assert line or srv.poll() is None, srv.communicate()
            assert time.time() < deadline
        for i in range(2):  # node output to a file: a full pipe would stall the node
            with open(world.parent / f"node{i}.log", "w") as log:
                nodes.append(subprocess.Popen(
                    [sys.executable, "-m", "fedvl", "join", "--server", f"127.0.0.1:{port}", "--partition", str(i),
                     "--insecure", "--wait-s", "5", "--state-dir", str(world.parent / f"node{i}")],
                    cwd=world, stdout=log, stderr=subprocess.PIPE, text=True, start_new_session=True))
        out, _ = srv.communicate(timeout=600)
        assert srv.returncode == 0, out[-3000:]
        t0 = time.monotonic()
        for node in nodes:  # the SuperLink is gone: 5 s of --wait-s, then each node stops itself
            _, err = node.communicate(timeout=60)
            assert node.returncode == 0, err
            assert err.strip().splitlines() == [(f"fedvl join: the run at 127.0.0.1:{port} has ended (its "
                                                 "SuperLink has been gone for 5s); stopping this node")]
        assert time.monotonic() - t0 < 60
        assert not _processes_mentioning(f"127.0.0.1:{port}")  # no SuperNode left behind
    finally:
        for node in nodes:
            stop(node, grace=5)  # the node and its SuperNode (its own session)
        if srv.poll() is None:
            srv.terminate()
            srv.wait(timeout=60)


def test_status_is_read_one_way_missing_damaged_or_a_record(tmp_path):
    """Every command reads status.json through runfolder: a missing one is None, one that is not a JSON
    object reads as state "damaged" (never as a finished or a live run), a written one comes back."""
    from fedvl.runfolder import has_status, read_status, write_status

    assert read_status(tmp_path) is None and not has_status(tmp_path)
    for garbage in ("{not json", "[1, 2]", "\xff"):
        (tmp_path / "status.json").write_text(garbage)
        assert read_status(tmp_path) == {"state": "damaged"}
    write_status(tmp_path, "failed", error="x")
    assert has_status(tmp_path) and read_status(tmp_path) == {"state": "failed", "error": "x"}
