"""Every `$ milcompress ...` command the README shows, in order, in an empty directory: each must
work on the files an earlier one wrote (the first is `milcompress demo --save demo`), and print
what the README says it prints first."""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from milcompress.tools.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands():
    """(argv, the first line the README shows under the command, or None) for each `$ milcompress`
    line, but those ending in a comment: they show files of the reader's own (or a full disk)."""
    lines = README.read_text().splitlines()
    found = []
    for index, line in enumerate(lines):
        if line.startswith("$ milcompress") and "  # " not in line:
            following = lines[index + 1] if index + 1 < len(lines) else ""
            expected = None if following.startswith(("$ ", "```")) else following
            found.append((shlex.split(line[2:])[1:], expected))
    return found


def test_the_readme_shows_commands_from_nothing():
    illustrations = [line for line in README.read_text().splitlines() if line.startswith("$ milcompress") and "  # " in line]
    assert len(illustrations) == 4  # as the README says
    commands = readme_commands()
    assert commands[0][0] == ["demo", "--save", "demo"]
    assert {argv[0] for argv, _ in commands} >= {"demo", "inspect", "run", "verify", "sweep", "pipelines", "--version"}


@pytest.mark.slow
def test_every_readme_command_works_on_files_an_earlier_one_wrote(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv, expected in readme_commands():
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()) as err:
            code = main(argv)
        assert code == 0, (argv, err.getvalue())
        if expected is not None:
            first = out.getvalue().splitlines()[0]
            assert first == expected or re.sub(r"\d", "#", first) == re.sub(r"\d", "#", expected), (argv, first, expected)
