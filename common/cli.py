"""User-facing errors of every command-line tool: one clear line on stderr and a documented exit code, never a traceback.

Every `python -m ...` of this repository exits with:

    0    success
    1    Failed: the input was good, but a check or a step failed (a parity limit, registration, a GPU
         check stage); what failed has been printed, and the line says what to do next
    2    UserError, or a bad flag (OneLineErrorParser): bad input; the line says what to fix
    130  interrupted (Ctrl-C)

Tools raise UserError or Failed and never exit themselves: `cli_main` turns each into its line and its
exit code, here and nowhere else.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import NoReturn

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """Bad input from the user (a flag, a file, a run dir). The message says what to do. Exit 2."""


class Failed(Exception):
    """A check or a step failed on good input; what failed has been printed. The message says what to do. Exit 1."""


def _exit(code: int, line: str) -> NoReturn:
    print(line, file=sys.stderr)
    raise SystemExit(code)


def cli_main(fn):
    """Wrap a CLI entry point: UserError -> `error: <message>`, exit 2; Failed -> `error: <message>`, exit 1;
    Ctrl-C -> `interrupted`, exit 130."""

    @functools.wraps(fn)
    def wrapper(argv=None):
        try:
            return fn(argv)
        except UserError as e:
            _exit(EXIT_USAGE, f"error: {e}")
        except Failed as e:
            _exit(EXIT_FAILED, f"error: {e}")
        except KeyboardInterrupt:
            _exit(EXIT_INTERRUPTED, "interrupted")

    return wrapper


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag gets one line (not the usage block) and exit 2, as a UserError does."""

    def error(self, message):
        _exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)")
