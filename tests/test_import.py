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


def test_linear_quantization_never_loads_numba():
    """numba (the k-means kernels) adds about 60 MB of memory and 120 MB of mapped library to a
    process: it is imported with the first palette, never by a linear quantization."""
    code = (
        "import sys\n"
        "import numpy as np\n"
        "import milcompress\n"
        "from milcompress._coremltools import IOS18, Function, Program, mb\n"
        "from milcompress.passes import compress_program\n"
        "def program():\n"
        "    w = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float16)\n"
        "    with Function({'x': mb.placeholder(shape=(4, 128))}, IOS18) as f:\n"
        "        y = mb.linear(x=mb.cast(x=f.inputs['x'], dtype='fp16'), weight=mb.const(val=w, name='w0'))\n"
        "        f.set_outputs([mb.cast(x=y, dtype='fp32', name='out')])\n"
        "    result = Program()\n"
        "    result.add_function('main', f)\n"
        "    return result\n"
        "for config in (milcompress.LinearQuantizeConfig(dtype='int4', granularity='per_block', block_size=32, weight_threshold=0),\n"
        "               milcompress.LinearQuantizeConfig(dtype='int8', weight_threshold=0)):\n"
        "    assert [r.action for r in compress_program(program(), config, workers=1).records if r.name == 'w0'] == ['compressed']\n"
        "assert 'numba' not in sys.modules, 'numba loaded'\n"
        "compress_program(program(), milcompress.PalettizeConfig(nbits=4, weight_threshold=0), workers=1)\n"
        "assert 'numba' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
