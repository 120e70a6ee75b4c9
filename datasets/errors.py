"""Error type shared by the data-loading code."""


class DataError(ValueError):
    """A problem with input data (a missing folder, an unreadable file...).

    The message is always a single line that names the offending file or
    folder, so command-line tools can print it as ``error: <message>``.
    """
