"""One failure convention for every command.

Exit codes: 0 the run finished and read every input in full; 1 the run failed, or no input file could be read
(no output is written); 2 usage: an option value, a path or a model given on the command line cannot be used, or
an output would overwrite a file or discard an earlier run's work; 3 the run finished and wrote its outputs, but
some inputs failed or were cut short (listed; `--report` has the details). Files found in folders that are not
captures at all (notes.txt, .DS_Store) are listed apart and count as neither.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator, NoReturn

import typer
import typer.exceptions

from pktnin.errors import UsageError
from pktnin.extras import missing_extra

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT); SIGTERM and SIGHUP exit 128 + their number (143, 129)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (how batch schedulers and a closed terminal stop a job), raised in the main thread so
    that the run stops as on Ctrl-C: the batch in flight is dropped, finished files stay recorded for --resume,
    the lock and temporary parts are removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def interrupt_exit_code(exc: KeyboardInterrupt) -> int:
    return exc.exit_code if isinstance(exc, Terminated) else EXIT_INTERRUPTED


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """While the body runs, SIGTERM and SIGHUP raise Terminated (a KeyboardInterrupt) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        raise Terminated(signum)

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def fail(message: str, code: int = EXIT_FAILED, hint: str | None = None) -> NoReturn:
    """Print one error line (and a hint) on stderr and leave with `code`."""
    # Plain text, not the rich console: a message is one line however wide the terminal, and file names in it
    # may hold [brackets].
    typer.echo(f"error: {message}", err=True)
    if hint:
        typer.echo(hint, err=True)
    raise typer.Exit(code)


def usage(message: str) -> NoReturn:
    fail(message, EXIT_USAGE)


@contextmanager
def exit_codes(hint: str | None = None, setup: bool = True) -> Iterator[None]:
    """Run a command's body under the convention.

    While setting up (`setup`: checking options, opening what the user named), a UsageError (options objects,
    model checks) or a missing file or folder exits 2. Any other error, and every error once the run is under way
    (setup False), is a failed run: one line naming its type, exit 1. A ValueError from deep inside the library
    is such a failure, not a usage message.
    """
    try:
        yield
    except (typer.Exit, typer.Abort, typer.exceptions.TyperException, KeyboardInterrupt):
        raise
    except UsageError as exc:
        if not setup:  # refused once under way (e.g. another run holds the output): the hint does not apply
            fail(f"{type(exc).__name__}: {exc}", EXIT_FAILED)
        usage(str(exc))
    except FileNotFoundError as exc:
        if not setup:
            fail(f"{type(exc).__name__}: {exc}", EXIT_FAILED, hint)
        usage(str(exc) if exc.filename is None else f"{exc.filename}: {exc.strerror or 'not found'}")
    except ModuleNotFoundError as exc:
        missing = missing_extra(exc)
        if missing is None:
            fail(f"{type(exc).__name__}: {exc}", EXIT_FAILED, hint)
        usage(str(missing))
    except Exception as exc:  # noqa: BLE001 - one clear line, then the failure exit code
        fail(f"{type(exc).__name__}: {exc}", EXIT_FAILED, hint)


def check_inputs_read(reports) -> None:
    """Exit 1 when not one input file could be read, 3 when some failed or were cut short (others were read)."""
    from pktnin.packets import input_failures

    reports = list(reports)
    inputs = [r for r in reports if not r.not_capture]
    if reports and all(r.failed for r in inputs):
        fail("no input file could be read", EXIT_FAILED)
    failures = input_failures(reports)
    if failures:
        fail(f"{len(failures)} of {len(inputs)} input files failed or were cut short (listed above)", EXIT_PARTIAL)
