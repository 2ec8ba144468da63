"""The one way a command line fails: errors that are the user's to fix end in one line and a status.

* :class:`UserError` is the base of every error a user can fix (a bad CSV, checkpoint, output
  folder, a non-finite loss...): the message says what is wrong and what to do. Anything else is a
  bug and keeps its traceback.
* :class:`Interrupted` ends a run that stopped on SIGINT or SIGTERM after saving what resumes it
  (see ``engine.interrupt``).
* :func:`number` is an argparse ``type`` with bounds: a flag out of them is a parse error in one line.
* :func:`exit_on_error` is what every entry point wraps its work in: a user error becomes the line
  ``error: <message>`` on stderr and exit status 1 (or the ``status`` given), an interruption its own
  line and status 128 + the signal number, a Ctrl-C that stops at once one line and status 130.

Errors raised in another process reach the entry point as the same type:

* a DataLoader worker's exception is re-raised by torch as ``type(error)(message=text)``, ``text``
  being "Caught X in DataLoader worker process N" plus the worker's traceback (torch does so for
  classes with a ``message`` attribute). :class:`UserError` has one, takes that keyword (every
  subclass too: see ``__init_subclass__``) and keeps the worker's own message, read from the
  traceback's last line, which names the class. ``.origin`` keeps the whole text;
* a spawned trainer's error is carried to the launcher by ``engine.distributed.launch``, which
  pickles it (``__reduce__`` below rebuilds any subclass without calling its constructor).
"""
from __future__ import annotations

import argparse
import functools
import math
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

WORKER_HEADER = "Caught "  # torch's ExceptionWrapper: "Caught X in DataLoader worker process N.\nOriginal Traceback..."


def number(kind: type = int, *, least: float | None = None, above: float | None = None,
           most: float | None = None) -> Callable[[str], float]:
    """An argparse ``type``: a ``kind`` (int or float) with ``least <= value``, ``above < value`` and
    ``value <= most`` where given. argparse turns a value out of bounds into its one-line usage error,
    naming the flag: ``argument --seq: must be at least 1, got 0`` (status 2)."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if math.isnan(value) or (least is not None and value < least) or (above is not None and value <= above) \
                or (most is not None and value > most):
            bounds = [f"at least {least:g}" if least is not None else "", "positive" if above == 0 else
                      f"above {above:g}" if above is not None else "", f"at most {most:g}" if most is not None else ""]
            raise argparse.ArgumentTypeError(f"must be {' and '.join(b for b in bounds if b)}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names a type by it in its own messages
    return parse




def _type_name(cls: type) -> str:
    """The name ``traceback`` prints for an exception class: ``module.Qualname`` (bare in __main__, builtins)."""
    module = cls.__module__
    return cls.__qualname__ if module in ("__main__", "builtins") else f"{module}.{cls.__qualname__}"


def worker_message(text: str, cls: type) -> str:
    """The message of the ``cls`` error whose traceback ``text`` a DataLoader worker sent; ``text`` itself
    when it is not such a traceback. The traceback's last exception is printed as ``module.Class: message``."""
    if not (text.startswith(WORKER_HEADER) and "Traceback (most recent call last)" in text):
        return text
    marker = f"\n{_type_name(cls)}: "
    at = text.rfind(marker)
    return text[at + len(marker):].rstrip("\n") if at >= 0 else text


def _rebuild(cls: type, message: str, state: dict) -> "UserError":
    """Unpickle a user error without calling its constructor (whose arguments may differ from ``args``)."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class UserError(Exception):
    """An error the user can fix; its message says what is wrong and what to do, in one line.

    Subclasses may define any constructor; each also accepts ``message=`` alone, which is how torch's
    DataLoader rebuilds a worker's error (see the module docstring)."""

    def __init__(self, *args, message: str | None = None):
        if message is not None:
            self.origin = message
            args = (worker_message(message, type(self)),)
        super().__init__(*args)

    @property
    def message(self) -> str:
        """The one-line message (also a class attribute that tells the DataLoader to pass ``message=``)."""
        return str(self)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def accept_worker_text(self, *args, message: str | None = None, **kw):
            if message is not None and not args and not kw:  # rebuilt from a DataLoader worker's traceback
                UserError.__init__(self, message=message)
            else:
                init(self, *args, **kw)

        cls.__init__ = accept_worker_text

    def __reduce__(self):
        return _rebuild, (type(self), str(self), dict(self.__dict__))


class Interrupted(Exception):
    """A run stopped on a signal after saving what resumes it; ``status`` is 128 + the signal number.

    The message (one line, possibly empty on processes that should stay quiet) is what
    :func:`exit_on_error` prints."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    @property
    def status(self) -> int:
        return 128 + self.signum

    def __reduce__(self):
        return type(self), (str(self), self.signum)


class ErrorExit(SystemExit):
    """The ``SystemExit`` of :func:`exit_on_error`; ``str()`` is its one line.

    With status 1 its ``code`` is the line itself, which Python prints on stderr when the exit reaches
    the top (exit status 1), so in-process callers read the message from ``code``; with another
    status ``code`` is that number and the line was printed when the exit was raised."""

    def __init__(self, line: str, status: int):
        super().__init__(line if status == 1 and line else status)
        self.line = line

    def __str__(self) -> str:
        return self.line


def _leave(line: str, status: int) -> ErrorExit:
    """The exit to raise; the line is printed on stderr now unless Python will print it (status 1)."""
    if line and status != 1:
        print(line, file=sys.stderr, flush=True)
    return ErrorExit(line, status)


@contextmanager
def exit_on_error(status: int = 1) -> Iterator[None]:
    """Run the block of a command line; turn what the user can act on into one line and an exit status.

    * :class:`UserError` -> ``error: <message>`` on stderr, ``status`` (1 unless a tool documents another);
    * :class:`Interrupted` -> its line, status 128 + signal (130 for SIGINT, 143 for SIGTERM);
    * ``KeyboardInterrupt`` (a Ctrl-C that stops at once, or one before a run installs its handlers)
      -> one line, status 130;
    * a spawned worker's traceback that is not a user error -> ``error in a worker process:`` and the
      traceback, status 1.

    Everything else propagates with its traceback. The exception raised is an :class:`ErrorExit`
    (a ``SystemExit``), so in-process callers can catch it and read ``str()`` and ``.code``."""
    try:
        yield
    except UserError as e:
        raise _leave(f"error: {e}", status) from e
    except Interrupted as e:
        raise _leave(str(e), e.status) from e
    except KeyboardInterrupt as e:
        raise _leave("interrupted: stopped at once, saving nothing more", 130) from e
    except Exception as e:
        from torch.multiprocessing import ProcessRaisedException  # a bug in a spawned worker: show its traceback

        if isinstance(e, ProcessRaisedException):
            raise _leave(f"error in a worker process:\n{e}", 1) from e
        raise
