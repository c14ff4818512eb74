"""Student checkpoint -> deployable artifacts (ONNX, TorchScript / torch.export, QDQ INT8 ONNX, TensorRT
engine), each written with a JSON sidecar and checked against PyTorch by a parity gate."""
