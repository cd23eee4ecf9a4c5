"""The model artifact contract, torch-free: what export/ writes and service/ reads.

    contract.artifact  file names, manifest format, hash verification
    contract.latents   latents_for_seed: the stable seed -> latents function
    contract.pixels    to_uint8: model output -> 8-bit pixels
    contract.store     registration in the BentoML model store (`python -m contract.store ARTIFACT_DIR`)

It imports numpy (and bentoml in contract.store) only, so the serving image carries it whole.
"""
