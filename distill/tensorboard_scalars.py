"""Read back the scalars a training run logged to TensorBoard (``RUN/tensorboard``)."""

from __future__ import annotations

from pathlib import Path


def logged_scalars(run: str | Path) -> dict[str, list[float]]:
    """The TensorBoard scalars of a run folder, by tag, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((Path(run) / "tensorboard").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
