"""Faults and bad input at the command line: nothing lost, nothing silent, nothing left behind.

CLI behaviour runs in-process through `milcompress.tools.cli.main(argv)`; real subprocesses only
where the operating system is the point: signals, and the console entry point. Full and read-only
disks are real tmpfs mounts where this machine lets us mount (as root in a container), and
skipped elsewhere; the same failures are also injected in-process, so every platform checks them.
"""

import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import coremltools as ct
import milcompress
from milcompress._coremltools import IOS18, mb, types
from milcompress.errors import InputError
from milcompress.packages import save_model
from milcompress.tools.cli import main

SCRIPT = shutil.which("milcompress", path=str(Path(sys.executable).parent)) or "milcompress"


def cli(capsys, *args):
    """(exit code, stdout, stderr) of `milcompress ARGS`, run in this process. The warnings filters
    and log levels the command line sets for itself are put back afterwards."""
    capsys.readouterr()
    loggers = [logging.getLogger(name) for name in ("coremltools", "milcompress")]
    levels = [logger.level for logger in loggers]
    try:
        with warnings.catch_warnings():
            code = main([str(a) for a in args])
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    out, err = capsys.readouterr()
    return code, out, err


def _program(rows=128, columns=64, poison=False, layers=1):
    rng = np.random.default_rng(0)
    weights = [rng.normal(0, 0.1, (rows if i == 0 else columns, columns if i == 0 else rows)).astype(np.float16) for i in range(layers)]
    if poison:  # an inf in the first weight: every output is NaN or infinite
        weights[0][0, 0] = np.float16(np.inf)
    shapes = [(1, columns)]

    @mb.program(input_specs=[mb.TensorSpec(shapes[0], dtype=types.fp16)], opset_version=IOS18)
    def prog(x):
        for index, weight in enumerate(weights):
            x = mb.linear(x=x, weight=mb.const(val=weight, name=f"w{index + 1}"), name=f"fc{index + 1}")
        return x

    return prog


def _save(prog, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=IOS18, pass_pipeline=ct.PassPipeline.EMPTY).save(str(path))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _save(_program(), tmp_path_factory.mktemp("models") / "dense.mlpackage")


def _digest(package: Path) -> dict:
    return {str(p.relative_to(package)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(package.rglob("*")) if p.is_file()}


def _ours(directory: Path) -> list:
    """Temporaries of our naming left in `directory`."""
    return sorted(p.name for p in directory.iterdir() if ".milcompress-" in p.name)


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------------
# 1. The input is never the output


@pytest.mark.parametrize("where", ["same", "inside", "holds"])
def test_an_output_that_is_the_input_or_holds_it_or_lies_inside_it_is_refused_even_with_force(capsys, tmp_path, model, where):
    work = tmp_path / "work"
    work.mkdir()
    source = work / "in.mlpackage"
    shutil.copytree(model, source)
    output = {"same": source, "inside": source / "Data" / "x.mlpackage", "holds": work}[where]
    before = _digest(source)
    code, out, err = cli(capsys, "run", source, "-o", output, "--pipeline", "INT8", "--force")
    assert code == 2
    relation = {"same": "is the input", "inside": "lies inside the input", "holds": "holds the input"}[where]
    assert f"the output {relation} {source}; milcompress never modifies its input" in _one_line(err)
    assert "compressed" not in out  # refused before any work
    assert _digest(source) == before and _ours(work) == []


def test_a_relative_path_to_the_input_is_recognised(capsys, tmp_path, model, monkeypatch):
    shutil.copytree(model, tmp_path / "in.mlpackage")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    code, _, err = cli(capsys, "run", "in.mlpackage", "-o", "sub/../in.mlpackage", "--pipeline", "INT8", "--force")
    assert code == 2 and "is the input in.mlpackage" in err


def test_the_config_file_is_an_input_too(capsys, tmp_path, model):
    config = tmp_path / "c.yaml"
    config.write_text("config_type: PalettizeConfig\nglobal_config: {nbits: 4}\n")
    for flags, message in [(["-o", config, "--force"], "the output is the input"), (["-o", tmp_path / "o.mlpackage", "--report", config], "the report is the input")]:
        code, _, err = cli(capsys, "run", model, "--config", config, *flags)
        assert code == 2 and f"{message} {config}" in _one_line(err)
    assert config.read_text() == "config_type: PalettizeConfig\nglobal_config: {nbits: 4}\n"


def test_save_model_refuses_the_package_the_model_came_from(tmp_path, model):
    source = tmp_path / "in.mlpackage"
    shutil.copytree(model, source)
    before = _digest(source)
    small = milcompress.linear_quantize_weights(ct.models.MLModel(str(source), skip_model_load=True), milcompress.LinearQuantizeConfig())
    with pytest.raises(InputError, match="the output is the input"):
        save_model(small, source, force=True)
    with pytest.raises(InputError, match="the output lies inside the input"):
        save_model(small, source / "copy.mlpackage", force=True)
    with pytest.raises(InputError, match="the output holds the input"):
        save_model(small, tmp_path, force=True, sources=[source])
    assert _digest(source) == before
    save_model(small, tmp_path / "out.mlpackage")  # anywhere else is fine
    assert (tmp_path / "out.mlpackage" / "Manifest.json").is_file() and _ours(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# 2 and 3. Output locations checked before any work; the model before the report; I/O errors exit 2


def test_an_unusable_report_path_is_refused_before_any_work(capsys, tmp_path, model):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file, not a directory")
    for report, message in [
        (blocker / "report.json", f"{blocker}: not a directory, so the report report.json cannot go there"),
        (tmp_path / "missing" / "report.json", "no such directory for the report report.json"),
        (tmp_path, "is a directory; give a file name for the report"),
        (model / "report.json", f"the report lies inside the input {model}; milcompress never modifies its input"),
        (tmp_path / "out.mlpackage", "the report is the output"),
    ]:
        code, out, err = cli(capsys, "run", model, "-o", tmp_path / "out.mlpackage", "--pipeline", "INT8", "--report", report)
        assert code == 2 and message in _one_line(err), err
        assert "compressed" not in out and not (tmp_path / "out.mlpackage").exists()


def test_an_unusable_output_directory_is_refused_before_any_work(capsys, tmp_path, model):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = cli(capsys, "run", model, "-o", blocker / "out.mlpackage", "--pipeline", "INT8")
    assert code == 2 and f"{blocker}: not a directory, so the output out.mlpackage cannot go there" in _one_line(err)
    code, out, err = cli(capsys, "run", model, "-o", tmp_path / "nowhere" / "out.mlpackage", "--pipeline", "INT8")
    assert code == 2 and "no such directory for the output out.mlpackage" in _one_line(err)
    code, out, err = cli(capsys, "run", model, "-o", "/proc/out.mlpackage", "--pipeline", "INT8")  # a directory nobody can write
    assert code == 2 and _one_line(err).startswith("milcompress: error: /proc/out.mlpackage: cannot write: ")
    assert "compressed" not in out


def test_a_report_that_fails_to_write_keeps_the_model_and_leaves_no_partial_report(capsys, tmp_path, model, monkeypatch):
    import milcompress.packages as packages

    report = tmp_path / "report.json"
    real_replace = os.replace

    def disk_full_for_the_report(source, destination):
        if Path(destination) == report:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(source, destination)

    monkeypatch.setattr(packages.os, "replace", disk_full_for_the_report)
    code, _, err = cli(capsys, "run", model, "-o", tmp_path / "out.mlpackage", "--pipeline", "INT8", "--report", report)
    assert code == 2
    assert _one_line(err) == f"milcompress: error: {report}: cannot write: No space left on device"
    assert (tmp_path / "out.mlpackage" / "Manifest.json").is_file()  # the model was written first
    assert not report.exists() and _ours(tmp_path) == []


def test_the_report_is_written_whole_after_the_model(capsys, tmp_path, model):
    report = tmp_path / "report.json"
    code, _, _ = cli(capsys, "run", model, "-o", tmp_path / "out.mlpackage", "--pipeline", "INT8", "--report", report)
    assert code == 0
    assert json.loads(report.read_text())[0]["totals"]["compressed"] == 1
    assert report.stat().st_mtime_ns >= (tmp_path / "out.mlpackage" / "Manifest.json").stat().st_mtime_ns
    assert report.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert _ours(tmp_path) == []


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
        OSError(errno.EROFS, os.strerror(errno.EROFS)),
        shutil.Error([("src/weight.bin", "dst/weight.bin", "[Errno 28] No space left on device")]),
    ],
    ids=["full", "read-only", "copytree"],
)
def test_output_io_errors_exit_2_with_one_line_naming_the_path_and_the_cause(capsys, tmp_path, model, monkeypatch, failure):
    def failing_save(self, path):
        Path(path).mkdir(parents=True)
        (Path(path) / "half-written").write_bytes(b"x" * 1000)
        raise failure

    monkeypatch.setattr(ct.models.MLModel, "save", failing_save)
    out = tmp_path / "out.mlpackage"
    code, _, err = cli(capsys, "run", model, "-o", out, "--pipeline", "INT8")
    assert code == 2
    cause = "No space left on device" if failure.args[0] != errno.EROFS else "Read-only file system"
    assert _one_line(err) == f"milcompress: error: {out}: cannot write: {cause if not isinstance(failure, shutil.Error) else failure.args[0][0][2]}"
    assert not out.exists() and _ours(tmp_path) == []


def test_coremltools_writers_failing_on_a_full_disk_exit_2(capsys, tmp_path, model, monkeypatch):
    """What coremltools' C++ writers raise when the disk is full (RuntimeErrors) while it writes
    the compressed model's temporary package, inside the staging directory next to the output."""
    import milcompress._coremltools as private

    for failure, cause in [
        (RuntimeError("filesystem error: cannot copy: No space left on device [/a/b.mlmodel] [/c/d.mlmodel]"), "No space left on device"),
        (RuntimeError("[MIL FileWriter]: Unknown error occurred while writing data to the file."), "coremltools could not write the weight file ("),
    ]:
        def failing(prog, like, failure=failure):
            raise failure

        monkeypatch.setattr(private, "mlmodel_from_program", failing)
        out = tmp_path / "out.mlpackage"
        code, _, err = cli(capsys, "run", model, "-o", out, "--pipeline", "INT8")
        assert code == 2 and _one_line(err).startswith(f"milcompress: error: {out}: cannot write: {cause}")
        assert _ours(tmp_path) == []
    monkeypatch.setattr(private, "mlmodel_from_program", lambda prog, like: (_ for _ in ()).throw(RuntimeError("a bug")))
    code, _, err = cli(capsys, "run", model, "-o", tmp_path / "out.mlpackage", "--pipeline", "INT8")
    assert code == 3 and "a pass failed: RuntimeError: a bug" in err  # other errors are not disguised as I/O


@pytest.fixture
def tmpfs(tmp_path):
    """mount(options) -> a fresh tmpfs directory; skipped where mounting is not allowed."""
    mounted = []

    def mount(options: str) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], capture_output=True)


def test_a_full_disk_and_a_read_only_disk_exit_2_and_leave_nothing(capsys, tmp_path, model, slow_model, tmpfs):
    full = tmpfs("size=16k")  # room for the staging directory, not for the package
    code, _, err = cli(capsys, "run", model, "-o", full / "out.mlpackage", "--pipeline", "INT8")
    assert code == 2 and _one_line(err) == f"milcompress: error: {full / 'out.mlpackage'}: cannot write: No space left on device"
    assert list(full.iterdir()) == []
    # A larger model fills the disk while its compressed weights are kept on disk (a saved package
    # streams through a scratch space in the staging directory), or while coremltools writes its
    # weight file, whose error says no more.
    code, _, err = cli(capsys, "run", slow_model, "-o", full / "out.mlpackage", "--pipeline", "INT8")
    line = _one_line(err)
    assert code == 2 and (
        line == f"milcompress: error: {full / 'out.mlpackage'}: cannot write: No space left on device"
        or line.startswith(f"milcompress: error: {full / 'out.mlpackage'}: cannot write: coremltools could not write the weight file (")
    )
    assert list(full.iterdir()) == []
    read_only = tmpfs("ro,size=1m")
    code, out, err = cli(capsys, "run", model, "-o", read_only / "out.mlpackage", "--pipeline", "INT8")
    assert code == 2 and _one_line(err) == f"milcompress: error: {read_only / 'out.mlpackage'}: cannot write: Read-only file system"
    assert "compressed" not in out  # found before any work
    code, out, err = cli(capsys, "run", model, "-o", tmp_path / "out.mlpackage", "--pipeline", "INT8", "--report", read_only / "r.json")
    assert code == 2 and "Read-only file system" in _one_line(err) and not (tmp_path / "out.mlpackage").exists()


# ------------------------------------------------------------------------------------------------
# 4. Signals; every temporary in one directory of ours; stale ones removed by the next run


def test_a_signal_during_the_save_removes_every_temporary_and_exits_143(capsys, tmp_path, model, monkeypatch):
    """SIGTERM arrives while the output is being saved: coremltools' temporary package of the
    compressed model exists by then, and it lives in our staging directory, not in $TMPDIR."""
    import milcompress.packages as packages

    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    seen = {}
    real_save_in = packages._save_in

    def save_then_signal(new_model, path, staging):
        seen["temporary package"] = Path(new_model.package_path)
        seen["staging"] = staging
        real_save_in(new_model, path, staging)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this

    monkeypatch.setattr(packages, "_save_in", save_then_signal)
    out = tmp_path / "out" / "o.mlpackage"
    out.parent.mkdir()
    code, _, err = cli(capsys, "run", model, "-o", out, "--pipeline", "INT8")
    assert code == 143
    assert _one_line(err) == "milcompress: interrupted by SIGTERM; temporary files removed"
    assert seen["staging"] in seen["temporary package"].parents  # coremltools' temporary package was ours
    assert not seen["staging"].exists() and list(system_tmp.iterdir()) == [] and _ours(out.parent) == []
    assert tempfile.tempdir == str(system_tmp)  # restored
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_signal_never_falls_between_moving_the_old_output_away_and_the_new_one_in():
    """`--force` moves the old output aside, then renames the new one in: a signal in between
    would have the cleanup delete the old output with nothing in its place, so it waits."""
    from milcompress.packages import _signals_deferred

    order = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: order.append("signal"))
    try:
        with _signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            order.append("renamed")
        order.append("after")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert order == ["renamed", "signal", "after"]


def test_stale_staging_of_a_process_that_is_gone_is_removed_by_the_next_run(capsys, tmp_path, model):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".out.mlpackage.milcompress-{gone}-abc123de"
    (stale / "package-x").mkdir(parents=True)
    (stale / "package-x" / "weight.bin").write_bytes(b"\0" * 4096)
    stale_report = tmp_path / f".r.json.milcompress-{gone}-xyz98765.tmp"
    stale_report.write_text("{")
    running = tmp_path / f".out.mlpackage.milcompress-{os.getppid()}-live0000"  # a process that still runs
    running.mkdir()
    unrelated = tmp_path / ".out.mlpackage.someone-else"
    unrelated.mkdir()
    code, _, _ = cli(capsys, "run", model, "-o", tmp_path / "out.mlpackage", "--pipeline", "INT8", "--report", tmp_path / "r.json")
    assert code == 0
    assert not stale.exists() and not stale_report.exists()
    assert running.exists() and unrelated.exists()


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    """Three 2048x2048 weights (24 MB): choosing their forms for a target size takes seconds on
    this machine, time to interrupt the work."""
    return _save(_program(rows=2048, columns=2048, layers=3), tmp_path_factory.mktemp("slow") / "slow.mlpackage")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_the_console_script_interrupted_exits_with_the_signal_code_no_traceback_and_no_leftovers(tmp_path, slow_model, signum, code):
    system_tmp, out_dir = tmp_path / "tmp", tmp_path / "out"
    system_tmp.mkdir()
    out_dir.mkdir()
    env = {**os.environ, "TMPDIR": str(system_tmp)}
    process = subprocess.Popen(
        [SCRIPT, "run", str(slow_model), "-o", str(out_dir / "o.mlpackage"), "--target-bpw", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    deadline = time.monotonic() + 60
    while not _ours(out_dir) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into the loading and compression
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert _one_line(stderr) == f"milcompress: interrupted by {signal.Signals(signum).name}; temporary files removed"
    assert list(out_dir.iterdir()) == [] and list(system_tmp.iterdir()) == []


def test_a_signal_during_an_import_waits_for_the_import_to_end(tmp_path, monkeypatch):
    """An extension module's initialisation may be C++ calling Python (torch's), where an
    exception raised by the signal handler aborts the process ("terminate called after throwing
    an instance of 'pybind11::error_already_set'"): the interrupt waits until the import is done."""
    from milcompress.tools import cli as cli_module

    (tmp_path / "slow_import.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "start = time.monotonic()\n"
        "while time.monotonic() - start < 0.3:\n"
        "    pass\n"
        "FINISHED = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "slow_import", raising=False)
    reached = []
    with pytest.raises(cli_module._Interrupted) as raised:
        with cli_module._signals_interrupt():
            import slow_import  # noqa: F401

            reached.append(slow_import.FINISHED)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                pass
    assert reached == [True] and raised.value.name == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_console_script_refuses_the_input_as_output(tmp_path, model):
    source = tmp_path / "in.mlpackage"
    shutil.copytree(model, source)
    result = subprocess.run([SCRIPT, "run", str(source), "-o", str(source), "--force", "--pipeline", "INT8"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "the output is the input" in _one_line(result.stderr)


# ------------------------------------------------------------------------------------------------
# 5. Silent wrongs


@pytest.mark.parametrize(
    "entry, message",
    [
        ("nbits: 4.5", "global_config.nbits: must be an integer or null, got 4.5"),
        ("nbits: 4\n  group_size: 16.5", "global_config.group_size: must be an integer, got 16.5"),
        ("nbits: 4\n  enable_per_channel_scale: 'no'", "global_config.enable_per_channel_scale: must be true or false, got 'no'"),
    ],
)
def test_coremltools_layout_configs_are_as_strict_as_ours(capsys, tmp_path, model, entry, message):
    config = tmp_path / "c.yaml"
    config.write_text(f"config_type: OpPalettizerConfig\nglobal_config:\n  {entry}\n")
    code, _, err = cli(capsys, "run", model, "-o", tmp_path / "o.mlpackage", "--config", config)
    assert code == 2 and message in _one_line(err)
    ours = tmp_path / "ours.yaml"
    ours.write_text("config_type: PalettizeConfig\nglobal_config:\n  nbits: 4.5\n")
    code, _, err = cli(capsys, "run", model, "-o", tmp_path / "o.mlpackage", "--config", ours)
    assert code == 2 and "global_config.nbits: must be an integer, got 4.5" in err


@pytest.fixture(scope="module")
def two_layer_model(tmp_path_factory):
    return _save(_program(rows=64, columns=64, layers=2), tmp_path_factory.mktemp("two") / "two.mlpackage")


def test_config_entries_that_match_nothing_are_warned_reported_and_fail_under_strict(capsys, tmp_path, two_layer_model):
    config = tmp_path / "c.yaml"
    config.write_text(
        "config_type: PalettizeConfig\nglobal_config: {nbits: 4}\n"
        "op_name_configs:\n  w_2: null\n  fc1: null\nop_type_configs:\n  lineer: {nbits: 2}\n"
    )
    report = tmp_path / "r.json"
    code, out, err = cli(capsys, "run", two_layer_model, "-o", tmp_path / "o.mlpackage", "--config", config, "--report", report)
    assert code == 0, err
    expected = [
        "op_name_configs['w_2'] matches no weight or op reading a weight, so it applies to nothing (closest: w2)",
        "op_type_configs['lineer'] matches no op type reading a weight, so it applies to nothing (closest: linear)",
    ]
    assert [line.removeprefix("warning: ") for line in out.splitlines() if line.startswith("warning: ")] == expected
    assert json.loads(report.read_text())[0]["warnings"] == expected
    assert "compressed 1 of 2 weights" in out  # fc1's weight is left alone; w2 is compressed, as the typo made it

    code, out, err = cli(capsys, "run", two_layer_model, "-o", tmp_path / "strict.mlpackage", "--config", config, "--strict")
    assert code == 2 and f"{expected[0]}; and 1 more" in _one_line(err)
    assert not (tmp_path / "strict.mlpackage").exists() and "compressed" not in out
    assert "strict=true" in out.splitlines()[0]  # printed back as run


def test_verify_reports_nan_and_infinite_outputs_and_fails(capsys, tmp_path, model):
    broken = _save(_program(poison=True), tmp_path / "broken.mlpackage")
    code, out, err = cli(capsys, "verify", model, broken, "--random", "2")
    assert code == 1, err
    row = next(line for line in out.splitlines() if line.startswith("fc1"))
    assert row.split()[1:] == ["nan", "nan", "nan", "nan", "nan", "-", "-"]  # no "top-1 agree 1.000" (nor a KL divergence)
    assert "FAILED: output 'fc1' of the compressed model has 2 NaN or infinite values" in out
    code, out, _ = cli(capsys, "verify", model, broken, "--random", "2", "--json")
    data = json.loads(out, parse_constant=lambda name: pytest.fail(f"not JSON: {name}"))
    assert code == 1 and data["outputs"][0]["nonfinite_compressed"] == 2 and data["problems"]
    assert data["outputs"][0]["snr_db"] == "nan" and data["outputs"][0]["top1_agreement"] is None
    code, out, _ = cli(capsys, "verify", model, model, "--random", "2")
    assert code == 0 and "FAILED" not in out


# ------------------------------------------------------------------------------------------------
# 6. Clear errors for damaged packages and missing config files


def _damaged(model: Path, tmp_path: Path, how: str) -> Path:
    broken = tmp_path / f"{how}.mlpackage"
    shutil.copytree(model, broken)
    weights = broken / "Data" / "com.apple.CoreML" / "weights"
    if how == "truncated":
        blob = weights / "weight.bin"
        blob.write_bytes(blob.read_bytes()[:100])
    elif how == "no-weights-directory":
        shutil.rmtree(weights)
    elif how == "no-weight-file":
        (weights / "weight.bin").unlink()
    return broken


@pytest.mark.parametrize(
    "how, message",
    [
        ("truncated", "truncated package: the program reads weights beyond the end of its weight file (Data/com.apple.CoreML/weights/weight.bin 100 bytes"),
        ("no-weights-directory", "its weights are missing: Data/com.apple.CoreML/weights, listed in Manifest.json, does not exist"),
        ("no-weight-file", "its weights are missing"),
    ],
)
def test_damaged_packages_are_named_and_described(capsys, tmp_path, model, how, message):
    broken = _damaged(model, tmp_path, how)
    code, _, err = cli(capsys, "run", broken, "-o", tmp_path / "o.mlpackage", "--pipeline", "INT8")
    assert code == 2 and f"{broken}: {message}" in _one_line(err)
    code, _, err = cli(capsys, "verify", model, broken, "--random", "1")
    assert code == 2 and f"{broken}: {message}" in _one_line(err)


def test_a_package_truncated_after_it_was_opened_is_named_by_the_python_api(tmp_path, model):
    broken = tmp_path / "later.mlpackage"
    shutil.copytree(model, broken)
    opened = ct.models.MLModel(str(broken), skip_model_load=True)
    _damaged(model, tmp_path, "truncated")
    shutil.copy(tmp_path / "truncated.mlpackage" / "Data" / "com.apple.CoreML" / "weights" / "weight.bin", broken / "Data" / "com.apple.CoreML" / "weights" / "weight.bin")
    with pytest.raises(InputError, match=f"{broken}: truncated package"):
        milcompress.palettize_weights(opened, milcompress.PalettizeConfig(nbits=4))


def test_a_missing_config_file_in_a_pass_spec_says_so(capsys, tmp_path, model):
    code, _, err = cli(capsys, "run", model, "-o", tmp_path / "o.mlpackage", "--passes", "palettize_weights{config=x}")
    assert code == 2 and "config: x: no such config file" in _one_line(err)
    code, _, err = cli(capsys, "run", model, "-o", tmp_path / "o.mlpackage", "--passes", "palettize_weights{config=missing.yaml}")
    assert code == 2 and "config: cannot read missing.yaml: No such file or directory" in _one_line(err)


@given(
    source=st.lists(st.sampled_from(["a", "b", "c.mlpackage"]), min_size=1, max_size=3),
    output=st.lists(st.sampled_from(["a", "b", "c.mlpackage", ".", ".."]), min_size=1, max_size=4),
)
def test_an_output_is_refused_exactly_when_it_is_the_input_or_one_holds_the_other(tmp_path_factory, source, output):
    from milcompress.packages import check_output

    root = tmp_path_factory.getbasetemp() / "overlap" / "r"
    root.mkdir(parents=True, exist_ok=True)
    source_path, output_path = root.joinpath(*source), root.joinpath(*output)
    a, b = source_path.resolve(), output_path.resolve()
    overlaps = a == b or a in b.parents or b in a.parents
    try:
        check_output(output_path, force=True, sources=[source_path])
        refused = False
    except InputError as error:
        refused = "the input" in str(error)
        assert refused or "no such directory" in str(error) or "not a directory" in str(error), error
    assert refused == overlaps
