"""`python -m training.bench` moved to `python -m research.train_bench`; this keeps the old command working."""

from common.cli import moved

if __name__ == "__main__":
    moved("training.bench", "research.train_bench")
