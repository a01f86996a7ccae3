"""The README's generated sections: each benchmark rewrites its own, between its markers."""

import contextlib
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


@contextlib.contextmanager
def log_log_figure(path: Path, ylabel: str, title: str, title_size: float = 10):
    """The axes of a figure of something against parameter count, both axes logarithmic, for the
    caller to draw its series on; labelled, gridded and saved to `path` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    yield axes
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("parameters")
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=title_size)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
