"""Export: run dir -> model artifact (ONNX + TorchScript + torch.export + manifest). `python -m export RUN_DIR`.

This package's __init__ imports nothing heavy: `export.artifact` is torch-free and is read by service/.
"""
