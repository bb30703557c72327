"""The errors a command turns into one line: every user error is a `UserError` whose message is that
line (naming the file, key or value at fault), printed as `PROG: error: MESSAGE` with exit code 2;
a `RunFailure` is not the user's doing but is explained as fully by one line (exit code 1). Anything
else is a bug and keeps its traceback. (cli.run_cli does the printing.)

    UserError
      ConfigError        a config file or override (names the key)
      StartError         the run directory cannot start as asked (names the flag to use)
      CheckpointError    a checkpoint that cannot be used (names it)
        CheckpointWriteError   one could not be written; nothing earlier was touched
      DataError          data the user named
        SourceError          a source for `pack` cannot be used at all
        SequenceError        one sequence cannot be packed (skipped and reported by pack)
        PackError            pack stops before anything is written
        ShardFormatError     a shard or manifest does not match what the manifest promises
        DataStreamError      the training stream cannot go on (no usable data, bad settings)
      AutotuneError      auto-tune found no usable setting
      TrainingError      training cannot go on (diverged, nothing to roll back to)
      InferenceError     upscale/evaluate input or output
      BenchError         a benchmark's options or folders
    RunFailure
      RankLostError      another rank stopped; this one cannot go on alone
    Stopped            a stop signal ended a command that stops at once (pack): one line, exit code 128 + signal
"""

from __future__ import annotations


class UserError(ValueError):
    """A user error; the message is the one line the command prints."""

    def __init__(self, message: str = "", *args) -> None:
        # Raised in a DataLoader worker, it reaches the rank through torch's ExceptionWrapper.reraise,
        # which builds Type("Caught Type in DataLoader worker process N.\nOriginal Traceback ...
        # Type: MESSAGE"). The user needs MESSAGE, one line, not the worker's stack.
        name = type(self).__name__
        if isinstance(message, str) and message.startswith(f"Caught {name} ") and "\nOriginal Traceback" in message:
            message = message.rstrip().rsplit(f"{name}: ", 1)[-1]
        super().__init__(message, *args)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(UserError):
    """A config file or command-line override; the message names the key."""


class StartError(UserError):
    """The run cannot start as asked; the message says which flag to use."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message names it and says how to proceed."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written; nothing earlier was touched."""


class DataError(UserError):
    """Data the user named cannot be used as asked; the message names the file or folder."""


class SourceError(DataError):
    """A source the user named cannot be used at all (missing, empty, unreadable list)."""


class SequenceError(DataError):
    """One sequence cannot be packed (bad frame, decode failure, ...); it is skipped and reported."""


class PackError(DataError):
    """Stops the pack before anything is written."""


class ShardFormatError(DataError):
    """A shard or manifest that does not match what the manifest promises (or what the reader needs)."""


class DataStreamError(DataError):
    """The training stream cannot go on (no usable data, bad settings); the message says what to fix."""


class AutotuneError(UserError):
    """Auto-tune found no usable setting (or the ranks disagree). `result` holds what was measured,
    when anything was."""

    def __init__(self, message: str = "", result=None) -> None:
        super().__init__(message)
        self.result = result


class TrainingError(UserError):
    """Training cannot go on; the message says why and what to change."""


class InferenceError(UserError):
    """A user error in an inference command (bad input, output in the way)."""


class BenchError(UserError):
    """A benchmark's options or folders (bad folder, bad option, a work folder in the way)."""


class RunFailure(RuntimeError):
    """Not the user's input, but one line explains it; exit code 1."""


class RankLostError(RunFailure):
    """Another rank stopped (killed, crashed, its machine gone) and this one cannot go on alone."""


class Stopped(Exception):
    """Ctrl-C or SIGTERM ended a command that stops at once rather than at a step boundary (pack): the
    message says what was left behind, printed as `PROG: MESSAGE` with exit code 128 + the signal."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
