"""The README's generated sections: each benchmark rewrites its own, between its markers."""

from pathlib import Path


def replace_section(readme: Path, start: str, end: str, section: str, heading: str) -> None:
    """Put `section` (which begins with the `start` marker and ends with the `end` one) in place of
    the text between those markers in `readme`; where the markers are absent, add it at the end
    under a `## heading`."""
    text = readme.read_text()
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + section + "\n"
    readme.write_text(text)
