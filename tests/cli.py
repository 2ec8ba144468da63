"""What the tests of every command line share."""
from typing import Callable

import pytest


def error_line(call: Callable[[], object]) -> str:
    """The one line a command line ends with on a user's mistake (Python prints it on stderr, status 1)."""
    with pytest.raises(SystemExit) as info:
        call()
    line = str(info.value.code)
    assert line.startswith("error: ") and "\n" not in line, line
    return line
