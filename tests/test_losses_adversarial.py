"""SKD holistic (adversarial) distillation, docs/loss_math.md §7.3: the SAGAN discriminator, the student's term,
the WGAN-GP and hinge discriminator losses against independent computations (the gradient penalty by
finite differences), float64 gradient checks, and the trainer's discriminator step: it trains the
discriminator with its own optimiser, saves it with the training state, and a run killed and resumed
ends bit for bit where an uninterrupted one does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from segdistill.config import LossConfig
from segdistill.errors import ConfigError
from segdistill.losses import LOSSES, LossContext, TaskLoss, build_criterion
from segdistill.losses.discriminator import SAGANDiscriminator, SelfAttention
from segdistill.models import SegOutput
from segdistill.parsing import parse_dataclass
from segdistill.train import main
from tests.helpers import TINY, kill_training_after, run_python
from tests.test_losses_relational import logged_scalars

NO_CONTEXT = LossContext(torch.zeros(1, 1, 1, dtype=torch.long), 255, 3)


def adversarial(shape: tuple[int, ...], **params):
    cls = LOSSES.get("skd_adversarial")
    torch.manual_seed(0)
    return cls(parse_dataclass(cls.Params, params, "params"), torch.Size(shape), torch.Size(shape))


def logits(seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(shape, generator=g, dtype=torch.float64), 2 * torch.randn(shape, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------
# The discriminator


def test_official_size_gives_one_score_and_padding_changes_nothing() -> None:
    torch.manual_seed(0)
    d = SAGANDiscriminator(3, conv_dim=4).eval()
    x = torch.randn(2, 3, 65, 65)
    # the official network, written out: BN, four SN convolutions (attention after the 3rd and 4th), last conv
    h = d.preprocess(x)
    for i, conv in enumerate(d.convs):
        h = F.leaky_relu(conv(h), 0.1)
        if i >= 2:
            h = d.attention[str(i)](h)
    official = d.last(h)
    assert official.shape == (2, 1, 1, 1)
    torch.testing.assert_close(d(x), official, rtol=0, atol=0)


@pytest.mark.parametrize("size", [(4, 4), (5, 7), (16, 16), (1, 1), (33, 20)])
def test_small_and_odd_maps_are_scored(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    d = SAGANDiscriminator(2, conv_dim=4)
    score = d(torch.randn(3, 2, *size))
    assert score.shape[:2] == (3, 1) and torch.isfinite(score).all()


def test_convolutions_are_spectrally_normalised() -> None:
    torch.manual_seed(0)
    d = SAGANDiscriminator(3, conv_dim=4)
    for _ in range(60):  # one power iteration per training forward
        d(torch.randn(2, 3, 16, 16))
    for conv in d.convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert float(sigma) == pytest.approx(1.0, abs=1e-3)
    assert float(torch.linalg.matrix_norm(d.last.weight.detach().flatten(1), ord=2)) != pytest.approx(1.0, abs=1e-2)


def test_self_attention_against_loops() -> None:
    torch.manual_seed(0)
    attention = SelfAttention(16)
    x = torch.randn(1, 16, 2, 3, dtype=torch.float64)
    attention.double()
    torch.testing.assert_close(attention(x), x)  # gamma starts at 0: the identity
    with torch.no_grad():
        attention.gamma.fill_(0.5)
    q, k, v = (conv(x)[0].flatten(1) for conv in (attention.query, attention.key, attention.value))  # (C', N)
    assert q.shape[0] == 2  # C / 8 query and key channels
    expected = torch.empty(16, 6, dtype=torch.float64)
    for i in range(6):
        weights = torch.softmax(torch.stack([q[:, i] @ k[:, j] for j in range(6)]), 0)
        expected[:, i] = sum(weights[j] * v[:, j] for j in range(6))
    torch.testing.assert_close(attention(x), 0.5 * expected.view(1, 16, 2, 3) + x)


# ----------------------------------------------------------------------------------------------------
# The losses


def test_student_term_reads_the_discriminator_without_training_it() -> None:
    loss = adversarial((2, 3, 8, 8)).double()
    loss.discriminator.eval()
    student, teacher = logits(1, (2, 3, 8, 8))
    student.requires_grad_(True)
    value = loss(student, teacher, NO_CONTEXT)
    assert value.item() == pytest.approx(loss.discriminator(student).mean().neg().item(), rel=1e-12)
    value.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.discriminator.parameters())
    assert all(p.requires_grad for p in loss.discriminator.parameters())
    # not a registered submodule: the student's optimiser and its DDP wrapper never see the discriminator
    assert not list(loss.parameters()) and "discriminator" not in dict(loss.named_modules())


def finite_difference_gradient_norms(d, x: torch.Tensor, step: float = 1e-6) -> torch.Tensor:
    """||d D(x_b) / d x_b||_2 per sample, by central differences (D in eval mode: samples independent)."""
    norms = []
    for sample in x:
        flat = sample.flatten()
        grad = torch.empty_like(flat)
        for i in range(flat.numel()):
            up, down = flat.clone(), flat.clone()
            up[i] += step
            down[i] -= step
            grad[i] = (d(up.view(1, *sample.shape)).sum() - d(down.view(1, *sample.shape)).sum()) / (2 * step)
        norms.append(grad.norm())
    return torch.stack(norms)


def test_wgan_gp_discriminator_loss_matches_formula() -> None:
    loss = adversarial((2, 2, 4, 4), conv_dim=4, discriminator_weight=0.1, gradient_penalty=10.0).double()
    d = loss.discriminator.eval()
    student, teacher = logits(2, (2, 2, 4, 4))
    torch.manual_seed(5)
    value = loss.discriminator_loss(student, teacher)
    torch.manual_seed(5)
    alpha = torch.rand(2, 1, 1, 1, dtype=torch.float64)  # one alpha per sample, drawn as the loss does
    with torch.no_grad():
        mixed = alpha * teacher + (1 - alpha) * student
        norms = finite_difference_gradient_norms(d, mixed)
        wasserstein = d(student).mean() - d(teacher).mean()
    expected = 0.1 * (wasserstein + 10.0 * ((norms - 1) ** 2).mean())
    assert value.item() == pytest.approx(float(expected), rel=1e-6)
    assert float(((norms - 1) ** 2).mean()) > 1e-3, "the penalty term must matter in this case"


def test_hinge_discriminator_loss_matches_formula() -> None:
    loss = adversarial((3, 2, 5, 5), conv_dim=4, variant="hinge", discriminator_weight=0.1).double()
    d = loss.discriminator.eval()
    student, teacher = logits(3, (3, 2, 5, 5))
    with torch.no_grad():
        d_s, d_t = d(student).flatten().tolist(), d(teacher).flatten().tolist()
    expected = 0.1 * (sum(max(0.0, 1 - v) for v in d_t) / len(d_t) + sum(max(0.0, 1 + v) for v in d_s) / len(d_s))
    assert loss.discriminator_loss(student, teacher).item() == pytest.approx(expected, rel=1e-12)


def test_discriminator_loss_trains_the_discriminator_only() -> None:
    loss = adversarial((2, 3, 8, 8), conv_dim=4)
    student, teacher = logits(4, (2, 3, 8, 8))
    student = student.float().requires_grad_(True)
    loss.discriminator_loss(student.detach(), teacher.float()).backward()
    assert student.grad is None
    grads = [p.grad for p in loss.discriminator.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum().item() for g in grads) > 0


def test_gradcheck_student_term_and_penalty() -> None:
    loss = adversarial((2, 2, 4, 4), conv_dim=4).double()
    loss.discriminator.eval()
    student, teacher = logits(5, (2, 2, 4, 4))
    student.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher, NO_CONTEXT), (student,))

    def penalised(s: torch.Tensor) -> torch.Tensor:  # the same alpha at every call
        torch.manual_seed(0)
        return loss.discriminator_loss(s, teacher)

    # the gradient penalty is a gradient itself: this checks its double backward
    assert torch.autograd.gradcheck(penalised, (student,))


@settings(max_examples=20, deadline=None)
@given(
    b=st.integers(2, 3),
    k=st.integers(1, 5),
    h=st.integers(1, 17),
    w=st.integers(1, 17),
    scale=st.floats(1e-3, 1e2),
    variant=st.sampled_from(["wgan-gp", "hinge"]),
    seed=st.integers(0, 2**16),
)
def test_finite_on_odd_sizes(b: int, k: int, h: int, w: int, scale: float, variant: str, seed: int) -> None:
    loss = adversarial((b, k, h, w), conv_dim=2, variant=variant)
    student, teacher = logits(seed, (b, k, h, w))
    student, teacher = scale * student.float(), scale * teacher.float()
    assert torch.isfinite(loss(student, teacher, NO_CONTEXT))
    assert torch.isfinite(loss.discriminator_loss(student, teacher))


def test_channel_mismatch_fails_at_build_time() -> None:
    student = SegOutput(torch.zeros(2, 3, 4, 4), None, {"head": torch.zeros(2, 8, 4, 4)})
    teacher = SegOutput(torch.zeros(2, 3, 4, 4), None, {"head": torch.zeros(2, 16, 4, 4)})
    with pytest.raises(ConfigError, match=r"losses\[0\]: loss 'skd_adversarial' \(student 'head'.*same number of channels"):
        build_criterion([LossConfig(name="skd_adversarial", student="head", teacher="head")], TaskLoss(255), student, teacher)


def test_student_logits_of_another_stride_are_resized_to_the_teacher() -> None:
    """The discriminator scores the student's stride-4 logits at the stride-8 teacher's size (a heterogeneous pair)."""
    student, teacher = logits(0, (2, 3, 8, 8))[0], logits(1, (2, 3, 4, 4))[0]
    resized = F.interpolate(student, size=(4, 4), mode="bilinear", align_corners=False)

    def both_terms(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss = adversarial((2, 3, 4, 4), conv_dim=2).double()  # a fresh copy: spectral norm updates at each call
        return loss(s, teacher, NO_CONTEXT), loss.discriminator_loss(s, teacher)

    assert all(torch.equal(x, y) for x, y in zip(both_terms(student), both_terms(resized), strict=True))


# ----------------------------------------------------------------------------------------------------
# The trainer's discriminator step


@pytest.mark.parametrize(
    "variant, discriminator_step",
    [
        ("wgan-gp", []),  # default: Adam 4e-4, constant
        ("hinge", ["train.discriminator.optimizer={name: sgd, lr: 4.0e-4, weight_decay: 5.0e-4}",
                   "train.discriminator.schedule.name=poly"]),  # SKD's official choice  # fmt: skip
    ],
)
def test_trainer_steps_the_discriminator(variant: str, discriminator_step: list[str], tiny_teacher: Path, tmp_path: Path) -> None:
    teacher_before = load_file(tiny_teacher / "model.safetensors")
    main([*TINY, f"output_dir={tmp_path}", f"teacher.checkpoint={tiny_teacher}", *discriminator_step,
          f"losses=[{{name: skd_adversarial, weight: 0.1, params: {{variant: {variant}, conv_dim: 8}}}}]"])  # fmt: skip
    d2 = load_file(tmp_path / "checkpoints/step_0000002/model_1.safetensors")
    d4 = load_file(tmp_path / "checkpoints/step_0000004/model_1.safetensors")
    assert any(k.startswith("discriminators.0.convs.") for k in d4)
    moved = [k for k in d4 if d4[k].is_floating_point() and not torch.equal(d2[k], d4[k])]
    assert any("weight" in k for k in moved), "the discriminator step did not change the discriminator"
    assert (tmp_path / "checkpoints/step_0000004/optimizer_1.bin").is_file()
    student = load_file(tmp_path / "checkpoints/step_0000004/model.safetensors")
    assert not any("discriminator" in k for k in student), "the discriminator must not be in the student's state"
    scalars = logged_scalars(tmp_path)
    assert len(scalars["discriminator/skd_adversarial"]) == 4 and len(scalars["loss/skd_adversarial"]) == 4
    teacher_after = load_file(tiny_teacher / "model.safetensors")
    assert all(torch.equal(teacher_before[k], teacher_after[k]) for k in teacher_before)


def test_resume_with_discriminator_and_memory_gives_the_same_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A run with a discriminator (its own optimiser) and CIRKD memory queues (buffers of the criterion),
    killed after its first checkpoint and resumed, ends bit for bit like an uninterrupted one: student,
    queues and discriminator."""
    losses = ("losses=[{name: skd_adversarial, weight: 0.1, params: {conv_dim: 8}}, "
              "{name: cirkd_memory, weight: 0.1, params: {pixel_memory: 40, region_memory: 6}}]")  # fmt: skip
    teacher = "teacher.model={backbone: lcnet_050, head: fcn, head_channels: 24}"  # random weights suffice
    args = [*TINY, "train.iterations=6", "train.checkpoint_interval=3", "train.eval_interval=6", teacher, losses]
    reference = tmp_path / "reference"
    main([*args, f"output_dir={reference}"])  # in this process (one thread, as the subprocess): saves a start-up

    killed = tmp_path / "killed"
    kill_training_after(args, killed)
    capsys.readouterr()
    main([*args, f"output_dir={killed}", "--resume"])
    assert "resumed from" in capsys.readouterr().out
    for name in ("model.safetensors", "model_1.safetensors"):  # student + criterion buffers; discriminator
        a = load_file(reference / "checkpoints/step_0000006" / name)
        b = load_file(killed / "checkpoints/step_0000006" / name)
        assert a.keys() == b.keys()
        assert any("pixel_queue" in k for k in a) if name == "model.safetensors" else any("convs" in k for k in a)
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.slow
def test_two_processes_with_discriminator_and_memory(tmp_path: Path) -> None:
    """DDP on CPU (gloo): the discriminator prepared as its own DDP module (its gradient penalty is a double
    backward), gradient accumulation without synchronisation for both modules, queues filled by all-gather."""
    args = [
        "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29527",
        "distill/train.py", *TINY, f"output_dir={tmp_path}", "data.batch_size=2", "train.iterations=2",
        "train.grad_accum=2", "teacher.model={backbone: lcnet_050, head: fcn, head_channels: 24}",
        "losses=[{name: skd_adversarial, weight: 0.1, params: {conv_dim: 8}}, "
        "{name: cirkd_memory, weight: 0.1, params: {pixel_memory: 400, region_memory: 50}}]",
    ]  # fmt: skip
    done = run_python(args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "2 process(es)" in done.stdout
    state = load_file(tmp_path / "checkpoints/step_0000002/model.safetensors")
    # 2 steps x 2 micro-batches x 2 images per process x 2 processes = 16 images enqueued, one region each
    # class they show: no class can have more than 16 entries, and the most frequent ones have more than
    # one process's 8 images could give
    region_counts = state["criterion.terms.1.region_queue_ptr"]
    assert int(region_counts.max()) > 8 and int(region_counts.max()) <= 16
    assert (tmp_path / "checkpoints/step_0000002/model_1.safetensors").is_file()
