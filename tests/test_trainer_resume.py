"""The trainer's run folder under attack: checkpoints that were tampered with, resumes that do not fit,
two runs on one folder, unsafe pickles, full disks and data errors in loader workers. Each ends in one
clear message (exit status 2 from the script) and leaves the run's files as they were."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from segdistill.checkpoint import CheckpointError, NonFiniteLoss, state_dirs
from segdistill.data import DatasetError
from segdistill.errors import ConfigError
from segdistill.train import main, parse_args
from tests.helpers import ROOT, TINY, run_python, subprocess_env
from tests.test_datasets import make_camvid


class Evil:
    """Unpickling it would create ``path``: proof that the pickle's code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The script's error line, after checking that it exited with status 2 and printed no traceback."""
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-3000:]
    return errors[0]


@pytest.fixture
def run(tiny_teacher: Path, tmp_path: Path) -> Path:
    """A copy of a finished tiny run (checkpoints at steps 2 and 4) to attack."""
    return Path(shutil.copytree(tiny_teacher.parent, tmp_path / "run"))


# ---- item 8: the RNG states of a checkpoint ------------------------------------------------------


@pytest.mark.parametrize("attack", ["missing", "truncated", "malicious"])
def test_resume_refuses_rng_states_that_are_missing_truncated_or_malicious(run: Path, tmp_path: Path, attack: str) -> None:
    rng = run / "checkpoints/step_0000004/random_states_0.pkl"
    marker = tmp_path / "pickle_code_ran"
    if attack == "missing":
        rng.unlink()
    elif attack == "truncated":
        rng.write_bytes(rng.read_bytes()[:100])
    else:
        torch.save({"random_state": Evil(marker)}, rng)
    with pytest.raises(CheckpointError, match="random_states_0.pkl") as err:
        main([*TINY, f"output_dir={run}", "--resume"])
    assert "weights_only=False" not in str(err.value)
    assert not marker.exists(), "the checkpoint's pickle was executed"


# ---- item 9: resuming an older checkpoint --------------------------------------------------------


def test_resuming_an_older_checkpoint_moves_the_later_ones_aside(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    args = [*TINY, f"output_dir={run}", "train.iterations=6", "train.keep_checkpoints=5"]
    main(args)
    main([*args, "train.iterations=3", "--resume", str(run / "checkpoints/step_0000002")])
    # the resumed run ended at step 3; its abandoned continuation (4, 6) must not be the latest any more
    assert [step for step, _ in state_dirs(run)] == [2, 3]
    aside = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("abandoned_")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == ["step_0000004", "step_0000006"]
    assert f"later checkpoints moved to {aside[0]}" in capsys.readouterr().out


# ---- item 10: two trainings on one run folder ----------------------------------------------------


def test_second_run_on_a_busy_folder_stops_and_a_killed_runs_folder_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [*TINY, f"output_dir={run}", "train.iterations=100000", "train.checkpoint_interval=1", "train.eval_interval=100000"]
    first = subprocess.Popen([sys.executable, "-m", "segdistill.train", *args], cwd=ROOT, env=subprocess_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 300
        while not state_dirs(run) and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None and state_dirs(run), "the first run did not get to its first checkpoint"
        config = (run / "config.yaml").read_bytes()
        second = run_python(["-m", "segdistill.train", *TINY, f"output_dir={run}", "seed=2", "--resume"])
        assert f"is in use by process {first.pid} on host" in one_line_error(second)
        assert (run / "config.yaml").read_bytes() == config
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the kernel released the killed run's lock: its folder resumes at once
    resumed = run_python(["-m", "segdistill.train", *TINY, f"output_dir={run}", "train.iterations=1", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout


# ---- item 11: one line instead of a traceback ----------------------------------------------------


@pytest.mark.parametrize("key", ["teacher.weights", "model.pretrained"])
def test_a_pickle_that_is_not_tensors_is_refused_in_one_line(tmp_path: Path, key: str) -> None:
    marker, weights = tmp_path / "pickle_code_ran", tmp_path / "weights.pth"
    torch.save({"conv.weight": Evil(marker)}, weights)
    extra = ["losses=[{name: pixel_kd}]", "teacher.model={backbone: lcnet_050, head: fcn, head_channels: 16}"]
    done = run_python(["-m", "segdistill.train", *TINY, f"output_dir={tmp_path / 'run'}", f"{key}={weights}",
                       *(extra if key == "teacher.weights" else [])])  # fmt: skip
    line = one_line_error(done)
    assert str(weights) in line and "never unpickled" in line and "weights_only" not in done.stderr
    assert not marker.exists(), "the weights file's pickle was executed"


def test_a_tampered_optimizer_state_is_refused_in_one_line(run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pickle_code_ran"
    torch.save({"state": Evil(marker)}, run / "checkpoints/step_0000004/optimizer.bin")
    line = one_line_error(run_python(["-m", "segdistill.train", *TINY, f"output_dir={run}", "--resume"]))
    assert "step_0000004" in line and "never unpickled" in line and "weights_only" not in line
    assert not marker.exists(), "the checkpoint's pickle was executed"


def test_resume_of_a_missing_folder_or_a_model_checkpoint_is_refused(run: Path) -> None:
    with pytest.raises(CheckpointError, match="step_0000009'.*does not exist"):
        main([*TINY, f"output_dir={run}", "--resume", str(run / "checkpoints/step_0000009")])
    with pytest.raises(CheckpointError, match="final'.*is a model checkpoint"):
        main([*TINY, f"output_dir={run}", "--resume", str(run / "final")])


@pytest.mark.parametrize("first_write", ["best", "checkpoints"])
def test_a_full_disk_ends_in_one_line_and_leaves_no_temporary(tmp_path: Path, first_write: str) -> None:
    """A file-size limit (RLIMIT_FSIZE, EFBIG) stands in for a full disk: any user can set it, and the
    writers fail the same way as with ENOSPC (tried by hand on a small tmpfs)."""
    run = tmp_path / "run"
    # evaluating first writes best/ first; else the training state of step 2 is the first large file
    evals = "train.eval_interval=2" if first_write == "best" else "train.eval_interval=4"
    command = [sys.executable, "-m", "segdistill.train", *TINY, f"output_dir={run}", evals]

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    done = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=600, preexec_fn=limit_file_size)  # fmt: skip
    line = one_line_error(done)
    assert f"cannot write '{run / first_write}" in line and "File too large" in line
    assert not list(run.rglob("*.tmp*")), "a temporary file was left behind"
    assert not state_dirs(run), "an incomplete training state was given its final name"


@pytest.fixture
def read_only_folder(tmp_path: Path):
    """A folder nobody can write to: as root (whom chmod does not stop) a read-only tmpfs mount."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs as root here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_benchmark_checks_its_output_folder_before_measuring(tiny_teacher: Path, read_only_folder: Path) -> None:
    out = read_only_folder / "results"
    done = run_python(["deploy/benchmark.py", "--artifact", str(tiny_teacher), "--output", str(out), "--threads", "1"])
    assert f"cannot write '{out}'" in one_line_error(done)
    assert "round 1/" not in done.stdout, "it measured before finding that it could not write the results"


def test_a_corrupt_image_read_by_a_loader_worker_gives_the_same_one_line_error(tmp_path: Path) -> None:
    tree = make_camvid(tmp_path / "camvid")
    tree.images[1].write_bytes(b"\x00 not an image at all " * 8)
    messages = []
    for workers in (0, 2):
        with pytest.raises(DatasetError) as err:
            list(DataLoader(tree.build(), batch_size=1, num_workers=workers))
        messages.append(str(err.value))
    assert messages[1] == messages[0] and str(tree.images[1]) in messages[0] and "\n" not in messages[0]


# ---- item 12: the command line and the run's files ----------------------------------------------


def test_an_override_after_a_bare_resume_is_an_override() -> None:
    args = parse_args(["--config", "C", "output_dir=X", "--resume", "train.iterations=80"])
    assert (args.resume, args.overrides) == ("latest", ["output_dir=X", "train.iterations=80"])
    args = parse_args(["output_dir=X", "--resume", "runs/x/checkpoints/step_0000010", "train.iterations=80"])
    assert (args.resume, args.overrides) == ("runs/x/checkpoints/step_0000010", ["output_dir=X", "train.iterations=80"])


def test_a_failed_resume_attempt_keeps_the_runs_config(run: Path, tmp_path: Path) -> None:
    before = (run / "config.yaml").read_bytes()
    with pytest.raises(ConfigError, match="does not exist"):
        main([*TINY, f"output_dir={run}", "data.name=camvid", f"data.root={tmp_path / 'nowhere'}", "--resume"])
    assert (run / "config.yaml").read_bytes() == before


def test_resume_without_a_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="holds no complete checkpoint.*run without --resume"):
        main([*TINY, f"output_dir={tmp_path}", "--resume"])
    assert not (tmp_path / "config.yaml").exists()


def test_non_finite_loss_before_any_checkpoint_says_to_start_again(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLoss, match="no checkpoint was written yet, so start the run again without --resume") as err:
        main([*TINY, f"output_dir={tmp_path}", "train.optimizer.lr=1e30", "train.checkpoint_interval=1000", "train.iterations=20"])
    assert "resume from it" not in str(err.value)


@pytest.mark.slow
def test_a_two_process_checkpoint_is_not_resumed_by_one_process(tmp_path: Path) -> None:
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29518"]  # fmt: skip
    done = run_python([*launch, "distill/train.py", *TINY, f"output_dir={tmp_path}", "train.iterations=2"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert json.loads((tmp_path / "checkpoints/step_0000002/progress.json").read_text())["processes"] == 2
    line = one_line_error(run_python(["-m", "segdistill.train", *TINY, f"output_dir={tmp_path}", "--resume"]))
    assert "written by 2 process(es), and this run has 1" in line and "--num_processes 2" in line
