"""The project's error base class, and the data error.

`MenetError` is the base of every error menet-jax reports as one line (`error: <message>`, exit code 2). It is
defined here, in the lowest package of the project, because the datasets package imports nothing of `menet_jax`
while its `DataError` must still be a `MenetError`; `menet_jax.errors` re-exports both beside the others.
"""


class MenetError(Exception):
    """A problem the user can fix, described in one line that names the file, value or setting at fault."""


class DataError(MenetError, ValueError):
    """A problem with input data (a missing folder, an unreadable file...).

    The message is always a single line that names the offending file or
    folder, so command-line tools can print it as ``error: <message>``.
    """
