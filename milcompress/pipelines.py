"""Named pipelines for `ct.convert(..., pass_pipeline=...)`.

Each attribute access gives a fresh `ct.PassPipeline` (coremltools mutates the one it is given):
`milcompress.pipelines.PALETTIZE_4BIT`, `milcompress.pipelines.DEFAULT_PALETTIZATION`, ... ;
`names()` lists them and `describe()` says what each does. They are also registered with
coremltools as `milcompress_<name in lower case>`.
"""

from milcompress.passes.pipelines import PIPELINES, compression_passes, describe_pipelines, names, pipeline


def describe():
    return describe_pipelines()


def get(name: str, activations=None, calibration=None):
    """A fresh pipeline by name (case-insensitive); `activations="int8"` with `calibration` (an
    .npz path or samples) also quantizes activations, last (W8A8 is `get("INT8", "int8", ...)`)."""
    return pipeline(name.upper().removeprefix("MILCOMPRESS_"), activations, calibration)


def __getattr__(name: str):
    if name in PIPELINES:
        return pipeline(name)
    raise AttributeError(f"module 'milcompress.pipelines' has no attribute {name!r}")


__all__ = ["compression_passes", "describe", "get", "names", *PIPELINES]
