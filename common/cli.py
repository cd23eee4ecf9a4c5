"""User-facing errors: one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import functools
import sys


class UserError(Exception):
    """Bad input from the user (a flag, a file, a run dir). The message says what to do."""


def cli_main(fn):
    """Wrap a CLI entry point: a UserError prints `error: <message>` on stderr and exits 2."""

    @functools.wraps(fn)
    def wrapper(argv=None):
        try:
            return fn(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag gets one line (not the usage block) and exit 2."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)
