"""Where work runs (`milcompress.parallel`): results in order with a bounded number of jobs in
flight, weights given as arrays or as references loaded in the worker, and compressed packages,
reports and progress byte-identical whether the per-weight jobs run here, in a pool of processes
or on a Dask cluster."""

import dataclasses
import hashlib
import json
import math
import operator
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import coremltools as ct
import milcompress
from milcompress import ConfigError, LinearQuantizeConfig, MagnitudePruneConfig, PalettizeConfig
from milcompress._coremltools import IOS18, mb, types
from milcompress.config import CompressionConfig, kmeans_workers_hint
from milcompress.ops.jobs import CompressJob, compress_attempts, load_weight
from milcompress.packages import save_model
from milcompress.parallel import POOL_MIN_ELEMENTS, InProcess, ProcessPool, check_workers, executor_for, machine_workers
from milcompress.progress import Progress
from tests.storage_helpers import StoredWeight

RNG = np.random.default_rng(3)
WEIGHTS = {
    "w1": RNG.standard_t(5, (96, 64)).astype(np.float16) * np.float16(0.05),
    "w2": RNG.normal(0, 0.1, (64, 96)).astype(np.float16),
    "w3": RNG.normal(0, 0.1, (48, 64)).astype(np.float16),
    "w4": RNG.laplace(0, 0.1, (40, 48)).astype(np.float16),
}


@pytest.fixture(scope="module")
def pool():
    with ProcessPool(2) as executor:
        yield executor


@given(st.lists(st.integers(-1000, 1000), max_size=30), st.integers(1, 4))
@settings(max_examples=10)
def test_results_come_back_in_order_in_process_and_in_a_pool(pool, values, in_flight):
    pool.in_flight = in_flight
    assert list(pool.map(operator.neg, values)) == [-v for v in values]
    assert list(InProcess().map(operator.neg, values)) == [-v for v in values]


def test_no_more_jobs_are_taken_than_the_bound_before_the_first_result(pool):
    pool.in_flight = 3
    taken = []

    def jobs():
        for value in range(20):
            taken.append(value)
            yield value

    results = pool.map(operator.neg, jobs())
    assert next(results) == 0
    assert len(taken) <= 4  # three in flight, then one more submitted after the first came back
    assert list(results) == [-v for v in range(1, 20)]


def test_an_aborted_pool_stops_its_workers_at_once():
    """After Ctrl-C or an error the pool's workers are stopped, busy or still starting: none is
    left to print a traceback when the parent's queues are gone, or to write into scratch space
    the caller removes."""
    pool = ProcessPool(2)
    for _ in range(2):
        pool._submit(time.sleep, 30)
    workers = list(pool._pool._processes.values())
    assert workers
    started = time.perf_counter()
    pool.close(abort=True)
    while any(worker.is_alive() for worker in workers) and time.perf_counter() - started < 10:
        time.sleep(0.05)
    assert not any(worker.is_alive() for worker in workers)  # within 10 s: not the 30 s of the jobs in hand


def test_a_weight_reference_is_loaded_inside_the_job(tmp_path, pool):
    value = WEIGHTS["w1"]
    np.save(tmp_path / "w1.npy", value)
    reference = StoredWeight(tmp_path / "w1.npy")
    assert np.array_equal(load_weight(reference), value) and np.array_equal(load_weight(value), value)
    config = PalettizeConfig(nbits=4, weight_threshold=0)
    job = lambda weight: CompressJob(weight, (config,), 0, 1, value.nbytes)  # noqa: E731
    (by_reference,) = list(pool.map(compress_attempts, [job(reference)]))[0]
    (by_value,) = compress_attempts(job(value))
    assert np.array_equal(by_reference.params.indices, by_value.params.indices)
    assert np.array_equal(by_reference.params.lut, by_value.params.lut)
    assert by_reference.snr_db == by_value.snr_db > 10


def test_workers_are_checked_and_the_default_runs_small_work_here():
    assert check_workers(None) is None and check_workers("3") == 3
    for bad in (0, -2, 1.5, "two", True):
        with pytest.raises(ConfigError, match="workers"):
            check_workers(bad)
    assert isinstance(executor_for(None, work=1000), InProcess)
    assert isinstance(executor_for(4, work=1000, jobs=1), InProcess)
    assert isinstance(executor_for(None, work=POOL_MIN_ELEMENTS - 1), InProcess)
    big = executor_for(None, work=POOL_MIN_ELEMENTS)
    assert big.workers == machine_workers() and (machine_workers() == 1 or isinstance(big, ProcessPool))
    assert isinstance(executor_for(2, work=10), ProcessPool)


def test_num_kmeans_workers_is_a_hint_above_one():
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OpPalettizerConfig, OptimizationConfig

    assert kmeans_workers_hint(OptimizationConfig(global_config=OpPalettizerConfig(nbits=4))) is None  # coremltools' default, 1
    config = OptimizationConfig(global_config=OpPalettizerConfig(nbits=4, num_kmeans_workers=3),
                                op_type_configs={"linear": OpLinearQuantizerConfig()})
    assert kmeans_workers_hint(config) == 3
    assert kmeans_workers_hint(OpPalettizerConfig(nbits=4, num_kmeans_workers=2)) == 2
    assert kmeans_workers_hint(CompressionConfig.of(PalettizeConfig(nbits=4))) is None
    graph_pass = milcompress.passes.CompressWeights(config=config)
    assert graph_pass._workers_hint == 3


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    @mb.program(input_specs=[mb.TensorSpec((1, 64), dtype=types.fp16)], opset_version=IOS18)
    def prog(x):
        y = mb.relu(x=mb.linear(x=x, weight=mb.const(val=WEIGHTS["w1"], name="w1"), name="fc1"))
        y = mb.relu(x=mb.linear(x=y, weight=mb.const(val=WEIGHTS["w2"], name="w2"), name="fc2"))
        y = mb.linear(x=y, weight=mb.const(val=WEIGHTS["w3"], name="w3"), name="fc3")
        return mb.linear(x=y, weight=mb.const(val=WEIGHTS["w4"], name="w4"), name="fc4")

    path = tmp_path_factory.mktemp("parallel") / "dense.mlpackage"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=IOS18, pass_pipeline=ct.PassPipeline.EMPTY).save(str(path))
    return ct.models.MLModel(str(path), skip_model_load=True)


class Recorder(Progress):
    def __init__(self):
        self.events = []

    def stage(self, name, total=None, unit="steps"):
        import contextlib

        @contextlib.contextmanager
        def recording():
            self.events.append(("stage", name, total, unit))
            yield lambda item="", steps=1: self.events.append((name, item, steps))

        return recording()


MIXED = CompressionConfig(
    global_config=PalettizeConfig(nbits=4, granularity="per_grouped_channel", group_size=16, min_snr_db=40.0, weight_threshold=0),
    op_name_configs={
        "w2": LinearQuantizeConfig(dtype="int4", granularity="per_block", block_size=32, weight_threshold=0),
        "w4": MagnitudePruneConfig(target_sparsity=0.5, weight_threshold=0),
    },
)


def _compressed(tmp_path: Path, name: str, function, *args, **options):
    """The saved package's bytes, the report as JSON and the progress a call gave."""
    recorder = Recorder()
    model = function(*args, progress=recorder, **options)
    path = tmp_path / f"{name}.mlpackage"
    save_model(model, path)
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())).hexdigest()
    report = json.loads(milcompress.report_of(model).to_json())
    report.get("summary", {}).pop("seconds", None)  # the size allocation's wall time of each stage
    return digest, report, recorder.events


def test_outputs_are_byte_identical_with_one_worker_or_two(package, tmp_path):
    """Mixed algorithms with SNR fallback (so several forms per weight), then the size
    allocation: the package, the report and the progress are the same from a pool of two."""
    cases = [
        ("mixed", milcompress.compress_weights, (package, MIXED), {"snr_fallback": True}),
        ("sized", milcompress.compress_to_size, (package, 4.0), {"weight_threshold": 0}),
    ]
    for name, function, args, options in cases:
        alone = _compressed(tmp_path, f"{name}_1", function, *args, workers=1, **options)
        two = _compressed(tmp_path, f"{name}_2", function, *args, workers=2, **options)
        assert alone == two, name
        assert "fell back" in json.dumps(alone[1]) or name == "sized"


@pytest.fixture(scope="module")
def cluster_client():
    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None)
        client = distributed.Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


def test_a_dask_cluster_gives_the_same_package_report_and_progress(package, tmp_path, cluster_client):
    """Two worker processes of a LocalCluster."""
    from milcompress.parallel import DaskExecutor

    assert DaskExecutor(cluster_client).workers == 2
    here = _compressed(tmp_path, "here", milcompress.compress_weights, package, MIXED, snr_fallback=True, workers=1)
    assert _compressed(tmp_path, "dask", milcompress.compress_weights, package, MIXED, snr_fallback=True, client=cluster_client) == here


@pytest.mark.slow
def test_the_size_allocation_on_a_dask_cluster_by_address_gives_the_same_package(package, tmp_path, cluster_client):
    sized = _compressed(tmp_path, "sized", milcompress.compress_to_size, package, 4.0, weight_threshold=0, workers=1)
    address = cluster_client.scheduler.address
    assert _compressed(tmp_path, "sized_dask", milcompress.compress_to_size, package, 4.0, weight_threshold=0, client=address) == sized


def test_an_unreachable_scheduler_is_a_config_error_naming_it(monkeypatch):
    pytest.importorskip("distributed")
    from milcompress import parallel
    from milcompress.parallel import dask_client

    monkeypatch.setattr(parallel, "CONNECT_TIMEOUT", "1s")

    with pytest.raises(ConfigError, match="tcp://127.0.0.1:9"):
        with dask_client("tcp://127.0.0.1:9"):
            pass


def test_the_command_line_takes_workers_and_refuses_bad_counts(package, tmp_path, capsys):
    from milcompress.tools.cli import main

    source = tmp_path / "in.mlpackage"
    save_model(package, source)
    digests = []
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}.mlpackage"
        assert main(["run", str(source), "-o", str(out), "--pipeline", "PALETTIZE_4BIT_GROUPED", "--workers", workers]) == 0
        digests.append(hashlib.sha256(b"".join(p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file())).hexdigest())
    assert digests[0] == digests[1]
    capsys.readouterr()
    assert main(["run", str(source), "-o", str(tmp_path / "bad.mlpackage"), "--pipeline", "INT8", "--workers", "0"]) == 2
    assert "--workers must be a whole number of at least 1, not '0'" in capsys.readouterr().err
    assert not (tmp_path / "bad.mlpackage").exists()


def test_an_error_stops_the_pool_and_the_next_map_starts_a_new_one():
    executor = ProcessPool(2)
    with pytest.raises(ValueError, match="math domain error"):
        with executor:
            for _ in executor.map(math.log, [1.0, 0.0] + [2.0] * 6):  # a job's error comes back as raised
                pass
    assert executor._pool is None
    with executor:
        assert list(executor.map(abs, [-1, -2, 3])) == [1, 2, 3]


def test_a_worker_that_dies_is_a_pass_error_that_says_what_to_do():
    from milcompress.errors import PassError

    with ProcessPool(2) as executor:
        with pytest.raises(PassError, match="workers=1"):
            list(executor.map(os._exit, [3, 3]))


def test_a_script_without_a_main_guard_is_not_run_again_by_the_workers(tmp_path):
    """Spawned processes import their parent's main module; the pool hides a script's, so one
    without `if __name__ == "__main__":` runs once (else every worker would run it, and fail)."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text("import operator\nfrom milcompress.parallel import ProcessPool\nprint('ran')\n"
                      "with ProcessPool(2) as pool:\n    print(list(pool.map(operator.neg, [1, 2, 3])))\n")
    root = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": root})
    assert (done.returncode, done.stdout) == (0, "ran\n[-1, -2, -3]\n"), done.stderr


# -- the size allocation's sensitivity runs -------------------------------------------------------


@pytest.fixture(scope="module")
def decoder_package(tmp_path_factory):
    """A 2-layer Llama-shaped decoder saved as a package: data-free compress_to_size measures every
    weight's sensitivity on it (the synthetic check)."""
    from benchmarks.models.llama import LlamaConfig
    from benchmarks.models.llama_package import write_llama_package

    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=192, num_layers=2, num_heads=4, num_kv_heads=2)
    return write_llama_package(config, tmp_path_factory.mktemp("decoder") / "decoder.mlpackage", sequence_length=16)


def _sensitivity_executor(caplog) -> str:
    found = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sensitivity of ")]
    assert len(found) == 1, found
    return found[0].split(": ")[-1]


def test_sensitivity_runs_on_workers_give_the_same_package_report_and_progress(decoder_package, tmp_path, caplog):
    """The workers open the package themselves; every sensitivity (in the report's choices, to the
    last bit), every choice and every byte are those measured here."""
    caplog.set_level("INFO", logger="milcompress.passes.size")
    model = ct.models.MLModel(str(decoder_package), skip_model_load=True)
    here = _compressed(tmp_path, "here", milcompress.compress_to_size, model, 4.0, weight_threshold=0, workers=1)
    assert _sensitivity_executor(caplog) == "InProcess(workers=1)"
    assert here[1]["summary"]["synthetic"] and here[1]["summary"]["sensitivity_measured"] == len(here[1]["summary"]["choices"]) == 17
    caplog.clear()
    pooled = _compressed(tmp_path, "pooled", milcompress.compress_to_size, model, 4.0, weight_threshold=0, workers=2)
    assert _sensitivity_executor(caplog) == "ProcessPool(workers=2)"
    assert pooled == here


@pytest.mark.slow
def test_sensitivity_runs_on_a_dask_cluster_give_the_same_package(decoder_package, tmp_path, cluster_client, caplog):
    caplog.set_level("INFO", logger="milcompress.passes.size")
    model = ct.models.MLModel(str(decoder_package), skip_model_load=True)
    here = _compressed(tmp_path, "here", milcompress.compress_to_size, model, 4.0, weight_threshold=0, workers=1)
    caplog.clear()
    assert _compressed(tmp_path, "dask", milcompress.compress_to_size, model, 4.0, weight_threshold=0, client=cluster_client) == here
    assert _sensitivity_executor(caplog) == "DaskExecutor(workers=2)"
    assert cluster_client.run(lambda: __import__("milcompress.parallel").parallel.worker_state) == {a: {} for a in cluster_client.nthreads()}


def test_a_program_held_in_memory_or_changed_by_a_pass_measures_here(decoder_package, caplog):
    """Workers are sent the package's path, never a program: only a program read from a package
    that it still is qualifies."""
    from milcompress.packages import load_model, program_at
    from milcompress.passes.sensitivity import package_source
    from milcompress.passes.size import compress_program_to_size

    _, prog = load_model(decoder_package)
    path, at_least_ios16, digest = package_source(prog, "main")
    assert (path, at_least_ios16) == (str(decoder_package), False)
    held = program_at(decoder_package)  # read on demand, but not recorded as read from a package
    assert package_source(held, "main") is None
    caplog.set_level("INFO", logger="milcompress.passes.size")
    assert compress_program_to_size(held, target_bits_per_weight=4.0, weight_threshold=0, workers=2).sensitivity_measured == 17
    assert _sensitivity_executor(caplog) == "InProcess(workers=1)"
    from milcompress.passes.compress import compress_program

    const = next(op for op in prog.functions["main"].operations if op.op_type == "const" and "mlp" in op.name)
    compress_program(prog, CompressionConfig(op_name_configs={const.name: LinearQuantizeConfig(weight_threshold=0)}), workers=1)
    assert package_source(prog, "main") is None  # a pass before the allocation changed it


def test_a_sensitivity_job_checks_the_package_and_its_deadline(decoder_package):
    """Run here, as a worker runs it: a weight measured; none once the deadline has passed; a
    package whose structure is not the one the job was made for refused."""
    from milcompress.errors import PassError
    from milcompress.packages import load_model
    from milcompress.parallel import _clear_worker_state
    from milcompress.passes.sensitivity import SensitivityJob, WeightProbe, measure_sensitivities, package_source
    from milcompress.reference import Interpreter
    from milcompress.reference.decoder import Decoder

    _, prog = load_model(decoder_package)
    path, at_least_ios16, digest = package_source(prog, "main")
    weight = next(op for op in prog.functions["main"].operations if op.op_type == "const" and "mlp" in op.name)
    sample = [Decoder.of(Interpreter(prog)).call(np.arange(16, dtype=np.int32), 16)]
    job = SensitivityJob(path, at_least_ios16, "main", digest, "m1", {0: sample}, (WeightProbe(weight.outputs[0].name, 0, 1),),
                         bias_correction=False, held_bytes=0, deadline=math.inf)
    try:
        (found,) = measure_sensitivities(job)
        assert found > 0
        assert measure_sensitivities(dataclasses.replace(job, deadline=time.time() - 1)) == []
        with pytest.raises(PassError, match="changed on disk"):
            measure_sensitivities(dataclasses.replace(job, measurement="m2", digest="0" * 64))
    finally:
        _clear_worker_state()
