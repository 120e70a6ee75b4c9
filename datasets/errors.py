"""The project's error base class, the data error, and the command-line parser whose usage errors are errors too.

`MenetError` is the base of every error menet-jax reports as one line (`error: <message>`, exit code 2). It is
defined here, in the lowest package of the project, because the datasets package imports nothing of `menet_jax`
while its `DataError` must still be a `MenetError`; `menet_jax.errors` re-exports both beside the others.
"""

import argparse


class MenetError(Exception):
    """A problem the user can fix, described in one line that names the file, value or setting at fault."""


class DataError(MenetError, ValueError):
    """A problem with input data (a missing folder, an unreadable file...).

    The message is always a single line that names the offending file or
    folder, so command-line tools can print it as ``error: <message>``.
    """


class UsageError(MenetError, ValueError):
    """A command line that does not parse: an unknown flag, a missing argument, a value of the wrong type."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, with its usage errors raised as one-line `UsageError`s (printed as `error: ...`, exit code
    2, by the commands' runner) instead of a usage block printed and `SystemExit` raised from inside `parse_args`."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")
