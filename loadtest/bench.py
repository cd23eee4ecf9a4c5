"""`python -m loadtest.bench` moved to `python -m loadtest.backend_bench`; this keeps the old command working."""

from common.cli import moved

if __name__ == "__main__":
    moved("loadtest.bench", "loadtest.backend_bench")
