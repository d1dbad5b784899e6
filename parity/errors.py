"""The harness's own error type and exit codes.

Every problem with user input (files, configs, checkpoints, dumps) is raised as a ``ParityError`` whose
message is one line naming the file or probe and what to do about it. The CLI prints that line and exits
with ``EXIT_BAD_INPUT``; it never shows a traceback unless ``--debug`` is given.
"""

EXIT_OK = 0
EXIT_PARITY_FAILURE = 1
EXIT_BAD_INPUT = 2


class ParityError(Exception):
    """Bad input: a one-line, user-facing message naming the file/probe and the fix."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str):
        message = " ".join(str(message).split())  # always one line
        super().__init__(message)


class ReferenceProblem(ParityError):
    """The reference itself is unusable (e.g. NaN/Inf in a reference state): not a subject failure."""


class MissingProbe(ParityError, KeyError):
    """A probe the comparison needs is not in the reference dump (e.g. a partial hand-made dump)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""
