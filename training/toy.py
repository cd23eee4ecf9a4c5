"""`python -m training.toy` moved to `python -m research.toy`; this keeps the old command working."""

from common.cli import moved

if __name__ == "__main__":
    moved("training.toy", "research.toy")
