"""`python -m export.register` moved to `python -m contract.store`; this keeps the old command working."""

from common.cli import moved

if __name__ == "__main__":
    moved("export.register", "contract.store")
