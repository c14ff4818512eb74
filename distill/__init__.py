"""segdistill: knowledge distillation for semantic segmentation, from training to a deployed TensorRT engine.

The import package is ``segdistill``; its parts live in the folders the project is known by
(docs/architecture.md §2): this folder (``distill/``) is the training library itself, and ``segdistill.kernels``,
``segdistill.export``, ``segdistill.deploy`` and ``segdistill.study`` are ``kernels/``, ``export/``, ``deploy/``
and ``study/``. Importing this package imports nothing else.
"""
