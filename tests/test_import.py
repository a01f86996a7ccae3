"""`import milcompress` is instant (coremltools and torch come later) and still registers the
passes and pipelines with coremltools: at once when coremltools came first, else at first use."""

import subprocess
import sys

import pytest

REGISTERED = (
    "from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY\n"
    "assert 'milcompress::palettize_weights' in PASS_REGISTRY\n"
    "assert 'milcompress_int8' in ct.PassPipeline.list_available_pipelines()\n"
    "assert ct.PassPipeline.get_pipeline('milcompress_int8').passes == milcompress.pipelines.INT8.passes\n"
)


@pytest.mark.parametrize(
    "code",
    [
        # coremltools first (the README's order): registered by the import itself.
        "import coremltools as ct\nimport milcompress\n",
        # milcompress first: nothing heavy imported; registered with the first use of anything in it.
        "import sys\nimport milcompress\n"
        "assert 'coremltools' not in sys.modules and 'torch' not in sys.modules\n"
        "import coremltools as ct\nmilcompress.PalettizeConfig\n",
    ],
    ids=["coremltools-first", "milcompress-first"],
)
def test_the_passes_and_pipelines_are_registered(code):
    done = subprocess.run([sys.executable, "-c", code + REGISTERED], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
