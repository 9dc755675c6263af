"""What every ``meshscope`` client command shares: one error type and the rule that a failure is one line on
stderr with exit code 1, never a traceback (a closed pipe, as with ``| head``, is not a failure)."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable


class CliError(Exception):
    """A failure to report to the user as one line (bad flag value, HTTP error, unreachable server)."""


def run_guarded(fn: Callable[[], int | None], prefix: str = "Error") -> int:
    """Run a command body; map its failures to exit codes: CliError/anything else 1, Ctrl-C 130, EPIPE 0."""
    try:
        code = fn()
        sys.stdout.flush()
        return 0 if code is None else code
    except CliError as err:
        print(f"{prefix}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except Exception as err:  # noqa: BLE001 - never a traceback
        print(f"Error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
