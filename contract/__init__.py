"""The model artifact contract, torch-free: what export/ writes and service/ reads.

    contract.artifact        file names, manifest format, hash verification
    contract.golden_outputs  the golden outputs: fixed seeds' images recorded at export, checked where served
    contract.latents         latents_for_seed: the stable seed -> latents function
    contract.onnx_cpu        ONNX Runtime session options for the generator on a CPU
    contract.pixels          to_uint8: model output -> 8-bit pixels
    contract.providers       ONNX Runtime's provider names (CUDA, CPU), spelled once
    contract.store           registration in the BentoML model store (`python -m contract.store ARTIFACT_DIR`)

It imports numpy, onnxruntime (contract.onnx_cpu) and bentoml (contract.store) only, so the serving image carries it whole.
"""
