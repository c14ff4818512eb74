"""Several processes on CPU (gloo) through ``accelerate launch``: each sample is seen once per epoch over
both processes, and validation metrics are reduced over both (they equal a single-process evaluation
of the saved model on the whole validation set); parameters no loss reaches do not stop DDP; the
processes die with their launcher; two "machines" on this host train and resume as one machine does."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from segdistill.checkpoint import state_dirs
from segdistill.evaluate import main as evaluate
from tests.helpers import ROOT, TINY, run_python, subprocess_env


def launch(port: int, processes: int = 2) -> list[str]:
    """``python ARGS``: accelerate launch of distill/train.py as gloo processes on this machine."""
    return [
        "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), "distill/train.py",
    ]  # fmt: skip


@pytest.mark.slow
def test_two_process_distillation(tiny_teacher: Path, tmp_path: Path) -> None:
    args = [*launch(29517), *TINY, f"output_dir={tmp_path}", "data.synthetic.num_val=7", "data.batch_size=2",
        "train.iterations=6", "train.record_samples=true", f"teacher.checkpoint={tiny_teacher}",
        "losses=[{name: pixel_kd, params: {tau: 2.0}}]",
    ]  # fmt: skip
    done = run_python(args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "2 process(es)" in done.stdout

    # 16 samples, 2 per process, 2 processes: 4 steps per epoch; steps 0-3 are epoch 0.
    seen = {}
    for rank in (0, 1):
        lines = (tmp_path / f"samples_rank{rank}.txt").read_text().splitlines()
        assert len(lines) == 6
        seen[rank] = [int(i) for line in lines if line.split()[0] == "0" for i in line.split()[2:]]
    assert not set(seen[0]) & set(seen[1]), "the two processes shared samples within an epoch"
    assert sorted(seen[0] + seen[1]) == list(range(16)), "an epoch must visit every sample exactly once"

    reported = json.loads((tmp_path / "metrics.json").read_text())["miou"]
    alone = evaluate(["--checkpoint", str(tmp_path / "final"), "--workers", "0", "--overlays", "0"])["miou"]
    assert reported == pytest.approx(alone, abs=1e-9), "validation was not reduced over both processes"


def weights_at(run: Path, step: int) -> dict[str, torch.Tensor]:
    """The parameters (not the BatchNorm statistics, which a frozen module still updates) of a training state."""
    saved = load_file(run / "checkpoints" / f"step_{step:07d}" / "model.safetensors")
    return {name: value for name, value in saved.items() if "running_" not in name and "num_batches" not in name}


@pytest.mark.slow
@pytest.mark.parametrize("aux_distilled", [False, True], ids=["aux-weight-0", "aux-head-distilled"])
def test_parameters_no_loss_reaches_are_frozen_under_ddp(tiny_teacher: Path, tmp_path: Path, aux_distilled: bool) -> None:
    """An auxiliary head with loss weight 0 stopped both processes (DDP: "parameters that were not used in
    producing loss"); it is now frozen. Reached by a distillation loss alone, it is not: it keeps learning."""
    kd = [f"teacher.checkpoint={tiny_teacher}", "losses=[{name: pixel_kd, student: aux_logits, teacher: logits}]"]
    args = [*launch(29518), *TINY, f"output_dir={tmp_path}", "data.batch_size=2", "train.aux_weight=0", *(kd if aux_distilled else [])]
    done = run_python(args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert ("note: no loss reaches student.aux_head: frozen" in done.stdout) != aux_distilled

    before, after = weights_at(tmp_path, 2), weights_at(tmp_path, 4)
    changed = {name.split(".")[1] for name in before if not torch.equal(before[name], after[name])}
    assert changed == ({"backbone", "head", "aux_head"} if aux_distilled else {"backbone", "head"})


@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_training_processes_die_with_their_launcher(tmp_path: Path, signal_number: int) -> None:
    """The launcher starts each worker in a session of its own: killed with SIGKILL, it left both training
    to the end, unattended (on SIGTERM its own clean-up ends them)."""
    args = [*launch(29519), *TINY, f"output_dir={tmp_path}", "data.batch_size=2", "train.iterations=100000"]
    launcher = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        while not state_dirs(tmp_path):  # training has begun: its first checkpoint is written
            assert launcher.poll() is None, "the launch ended before it could be killed"
            assert time.monotonic() < deadline, "training did not begin"
            time.sleep(0.2)
        workers = [p for p in psutil.Process(launcher.pid).children(recursive=True) if "distill/train.py" in p.cmdline()]
        assert len(workers) == 2
        launcher.send_signal(signal_number)
        launcher.wait()
        _, alive = psutil.wait_procs(workers, timeout=60)
        assert not alive, f"training processes outlived their launcher: {[p.pid for p in alive]}"
    finally:  # a failed test leaves nothing running
        with contextlib.suppress(psutil.NoSuchProcess):
            for proc in workers or psutil.Process(launcher.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
        launcher.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_machines(port: int, args: list[str]) -> list[subprocess.Popen]:
    """Two "machines" on this host, as a user launches them on two nodes: 2 processes each, 4 in all."""
    return [
        subprocess.Popen(
            [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank),
             "--num_processes", "4", "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
             "--mixed_precision", "no", "--dynamo_backend", "no", "distill/train.py", *args],
            cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]


@pytest.mark.slow
def test_two_machines_train_and_resume_as_one_four_process_run(tmp_path: Path) -> None:
    """Two launches as machine_rank 0 and 1 (gloo over loopback) train as one 4-process run on one machine
    does, bit for bit, and share each epoch between their 4 processes; killed after a checkpoint and
    launched again with --resume, they end as that run resumed from the same checkpoint. (Not quite as the
    uninterrupted run: DDP's first step after a start reduces all gradients as one bucket, later steps in
    buckets of its own choosing, and gloo then sums in another order: float rounding, amplified by training.)"""
    args = [*TINY, "data.batch_size=2", "train.iterations=12", "train.checkpoint_interval=3", "train.eval_interval=6",
            "train.keep_checkpoints=4", "train.record_samples=true"]  # fmt: skip
    reference = tmp_path / "reference"
    done = run_python([*launch(free_port(), processes=4), *args, f"output_dir={reference}"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    run = tmp_path / "run"
    machines = start_machines(free_port(), [*args, f"output_dir={run}"])
    processes = [psutil.Process(m.pid) for m in machines]
    deadline = time.monotonic() + 300
    while not state_dirs(run):  # the first checkpoint (step 3 of 12)
        assert all(m.poll() is None for m in machines), "a machine ended before it could be killed"
        assert time.monotonic() < deadline, "training did not begin"
        time.sleep(0.05)
    processes += [child for p in processes for child in p.children(recursive=True)]
    for proc in processes:  # both machines go down at once, launchers and training processes
        proc.kill()
    psutil.wait_procs(processes)
    assert not (run / "final").exists()
    step, state = state_dirs(run)[-1]
    assert step < 12
    assert_same_weights(reference / "checkpoints" / state.name / "model.safetensors", state / "model.safetensors")

    machines = start_machines(free_port(), [*args, f"output_dir={run}", "--resume"])
    outputs = [m.communicate(timeout=600)[0] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "4 process(es)" in outputs[0] and f"resumed from {state} at step {step}" in outputs[0]
    resumed = tmp_path / "reference_resumed"
    shutil.copytree(reference / "checkpoints" / state.name, resumed / "checkpoints" / state.name)
    done = run_python([*launch(free_port(), processes=4), *args, f"output_dir={resumed}", "--resume"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert_same_weights(resumed / "final/model.safetensors", run / "final/model.safetensors")

    # 16 samples, 2 per process, 4 processes: 2 steps per epoch (the killed run's lines may be lost unflushed)
    by_epoch: dict[int, list[int]] = {}
    for rank in range(4):
        for line in set((run / f"samples_rank{rank}.txt").read_text().splitlines()):
            epoch, _, *indices = map(int, line.split())
            by_epoch.setdefault(epoch, []).extend(indices)
    for epoch in range(step // 2 + 1, 6):  # the epochs the resumed run trained whole
        assert sorted(by_epoch[epoch]) == list(range(16)), f"the 4 processes did not partition epoch {epoch}"


def assert_same_weights(expected: Path, actual: Path) -> None:
    a, b = load_file(expected), load_file(actual)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
