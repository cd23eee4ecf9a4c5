"""`python -m training.stacked_mnist` moved to `python -m research.stacked_mnist`; this keeps the old command working."""

from common.cli import moved

if __name__ == "__main__":
    moved("training.stacked_mnist", "research.stacked_mnist")
