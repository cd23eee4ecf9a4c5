"""ONNX Runtime's execution provider names, spelled once for the service, export's parity check and the benchmarks.

Plain strings, no imports: research/gpu_check.py reads them before anything is installed.
"""

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
