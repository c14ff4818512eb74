"""Run the trainer with distill/train.py's arguments, then print the run's peak memory as one JSON line:
the CUDA allocator's peak on a GPU, the process's resident-set high-water mark on the CPU.

    python scripts/gpu_check_train.py --config ... train.kernels=triton

Used by scripts/gpu_check.py to compare ``train.kernels=triton`` with ``train.kernels=reference``.
"""

from __future__ import annotations

import json
import resource
import sys

import torch

from segdistill.train import main


def peak_memory() -> dict[str, int | str]:
    if torch.cuda.is_available():
        return {"peak_bytes": torch.cuda.max_memory_allocated(), "measured": "CUDA allocator peak"}
    return {"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "measured": "resident-set peak"}


if __name__ == "__main__":
    main(sys.argv[1:])
    print(json.dumps(peak_memory()))
