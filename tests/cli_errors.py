"""The one check of the project's error contract: a command fails with exit code 2 and one stderr line
`error: <message>` that names what is wrong."""


def one_line_error(capsys, *fragments, run=None, last_line: bool = False) -> str:
    """The `error: ...` line a command printed, after checking it is the only line on stderr (`last_line`: the last
    one, after log lines of a library such as TensorFlow Datasets) and contains every fragment. With `run=(main,
    argv)` the command is run here first and must return 2."""
    if run is not None:
        main, argv = run
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    line = err.splitlines()[-1] if last_line and err else err
    assert line.startswith("error: ") and "\n" not in line, err
    for fragment in fragments:
        assert str(fragment) in line, err
    return line
