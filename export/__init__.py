"""Export: run dir -> model artifact (ONNX + TorchScript + torch.export + manifest). `python -m export RUN_DIR`.

The artifact's format, its verification and the model-store registration live in contract/, which is
torch-free so that service/ can read artifacts; export/ is the torch side that writes them.
"""
