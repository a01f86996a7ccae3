"""Progress of long jobs: each stage reported to the Progress object the caller passes, drawn only
when asked (a tqdm bar per stage), and nothing printed otherwise, coremltools' own bars included."""

import contextlib
import io
import warnings

import numpy as np
import pytest

import coremltools as ct
import milcompress
from milcompress._coremltools import IOS18, Function, Program, mb
from milcompress.progress import NO_PROGRESS, Progress, TqdmProgress, as_progress


class Recorder(Progress):
    """Every stage as [name, total, steps advanced, items named]."""

    def __init__(self):
        self.stages = []

    @contextlib.contextmanager
    def stage(self, name, total=None, unit="steps"):
        record = [name, total, 0, []]
        self.stages.append(record)

        def advance(item="", steps=1):
            record[2] += steps
            if item:
                record[3].append(item)

        yield advance

    def names(self):
        return [stage[0] for stage in self.stages]

    def __getitem__(self, name):
        (stage,) = [s for s in self.stages if s[0] == name]
        return stage


def _program(seed=0) -> Program:
    rng = np.random.default_rng(seed)
    with Function({"x": mb.placeholder(shape=(4, 64))}, IOS18) as function:
        y = mb.cast(x=function.inputs["x"], dtype="fp16")
        for index, shape in enumerate([(128, 64), (96, 128)]):
            y = mb.linear(x=y, weight=mb.const(val=rng.standard_normal(shape).astype(np.float16), name=f"w{index}"), name=f"fc{index}")
        function.set_outputs([mb.cast(x=y, dtype="fp32", name="scores")])
    program = Program()
    program.add_function("main", function)
    return program


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):  # ct.convert's own bars, outside our calls
        warnings.simplefilter("ignore")
        return ct.convert(_program(), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18, pass_pipeline=ct.PassPipeline.EMPTY)


def _calibration(samples=6):
    return {"x": np.random.default_rng(1).standard_normal((samples, 4, 64)).astype(np.float32)}


def test_compress_to_size_reports_every_stage(model):
    recorder = Recorder()
    milcompress.compress_to_size(model, 4.5, calibration=_calibration(), sensitivity_seconds=30, error_feedback=True, progress=recorder)
    assert recorder.names() == ["calibration", "evaluation", "sensitivity", "rewrite", "error feedback", "building the model"]
    assert recorder["calibration"][:3] == ["calibration", 6, 6]
    for stage in ("evaluation", "sensitivity", "rewrite"):
        assert recorder[stage][1:] == [2, 2, ["w0", "w1"]] or recorder[stage][1:] == [2, 2, ["w1", "w0"]]
    chosen = recorder["error feedback"]
    assert chosen[1] == chosen[2] == len(chosen[3]) >= 1
    assert recorder["building the model"][1:3] == [1, 1]


def test_data_free_compress_to_size_has_no_calibration_steps(model):
    recorder = Recorder()
    milcompress.compress_to_size(model, 6, progress=recorder)
    assert recorder.names() == ["evaluation", "rewrite", "building the model"]


def test_passes_decompression_and_verify_report_their_weights_and_samples(model):
    recorder = Recorder()
    small = milcompress.palettize_weights(model, milcompress.PalettizeConfig(nbits=4), progress=recorder)
    assert recorder.stages == [["palettize_weights", 2, 2, ["w0", "w1"]], ["building the model", 1, 1, []]]
    recorder = Recorder()
    milcompress.decompress_weights(small, progress=recorder)
    assert [stage[:3] for stage in recorder.stages] == [["decompress", 2, 2], ["building the model", 1, 1]]
    recorder = Recorder()
    milcompress.verify(model, small, _calibration(3), progress=recorder)
    assert recorder.stages == [["running the original", 3, 3, []], ["running the compressed", 3, 3, []]]


def test_progress_true_draws_tqdm_bars_and_the_default_prints_nothing(model, capsys):
    milcompress.compress_to_size(model, 4.5, calibration=_calibration(), progress=True)
    drawn = capsys.readouterr()
    assert drawn.out == ""
    for stage in ("calibration: 100%", "evaluation: 100%", "rewrite: 100%", "building the model: 100%"):
        assert stage in drawn.err, drawn.err
    milcompress.compress_to_size(model, 4.5, calibration=_calibration())
    milcompress.linear_quantize_weights(model, milcompress.LinearQuantizeConfig())
    quiet = capsys.readouterr()
    assert quiet.out == "" and quiet.err == ""  # no bar of ours, and none of coremltools' ("Running MIL ... pipeline")


def test_tqdm_progress_shows_counts_and_the_item():
    out = io.StringIO()
    with TqdmProgress(file=out).stage("evaluation", total=3, unit="weights") as advance:
        for name in ("a", "b", "conv_weight"):
            advance(name)
    text = out.getvalue()
    assert "evaluation: 100%" in text and "3/3" in text and "conv_weight" in text
    out = io.StringIO()
    with TqdmProgress(file=out, disable=None).stage("evaluation", total=3) as advance:  # not a terminal: nothing drawn
        advance()
    assert out.getvalue() == ""


def test_as_progress():
    assert as_progress(None) is NO_PROGRESS and as_progress(False) is NO_PROGRESS
    assert isinstance(as_progress(True), TqdmProgress)
    recorder = Recorder()
    assert as_progress(recorder) is recorder
    with pytest.raises(TypeError, match="progress must be True, False, None or an object with a stage"):
        as_progress("yes")
