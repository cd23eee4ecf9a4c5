"""`python -m loadtest.gpu_check` moved to `python -m research.gpu_check`; this keeps the old command working."""

from common.cli import moved

if __name__ == "__main__":
    moved("loadtest.gpu_check", "research.gpu_check")
