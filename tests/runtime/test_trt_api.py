"""EdgeFlow's TensorRT code driven through a strict fake built from the real TensorRT 10.3 bindings.

The bindings come from ``../shared/tools/trt-api-surface.sh`` (NVIDIA's wheel over stub libraries;
``.ci/run`` sets it up and exports ``EDGEFLOW_TRT_SURFACE`` and ``LD_LIBRARY_PATH``). Every class,
method signature, property and enum the code touches is checked against them (``trt_fake``);
pycuda is mirrored by hand. Engine "execution" runs the very ONNX the engine was built from on
ONNX Runtime, so a Session on the TensorRT backend must give the ONNX Runtime Session's answers.
What only a device can show (real kernels, DLA placement, timings) is `edgeflow doctor`'s.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from edgeflow.errors import BackendError
from tests.runtime.trt_fake import FakeCuda, FakeObject, StrictAPIError, StrictTensorRT


def _bindings():
    if "tensorrt_bindings" in sys.modules:
        return sys.modules["tensorrt_bindings"]
    try:  # `eval "$(../shared/tools/trt-api-surface.sh)"` in this shell
        import tensorrt_bindings

        return tensorrt_bindings
    except ImportError:
        pass
    surface = os.environ.get("EDGEFLOW_TRT_SURFACE")
    init = Path(surface or "/nonexistent") / "site" / "tensorrt_bindings" / "__init__.py"
    if not init.is_file():
        pytest.skip("the TensorRT API surface is not set up: run `eval \"$(../shared/tools/"
                    "trt-api-surface.sh)\"` first, or set EDGEFLOW_TRT_SURFACE (.ci/run does)")
    spec = importlib.util.spec_from_file_location("tensorrt_bindings", init,
                                                  submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["tensorrt_bindings"] = module  # its own relative imports look it up there
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        del sys.modules["tensorrt_bindings"]
        pytest.skip(f"TensorRT bindings do not load ({exc}); LD_LIBRARY_PATH must name the stubs")
    return module


@pytest.fixture
def api(monkeypatch):
    """(fake tensorrt 10.3, fake pycuda) installed as the modules EdgeFlow imports."""
    trt, cuda = StrictTensorRT(_bindings()), FakeCuda()
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    pkg = types.ModuleType("pycuda")
    pkg.__spec__ = importlib.machinery.ModuleSpec("pycuda", None, is_package=True)
    pkg.driver = cuda
    cuda.__spec__ = importlib.machinery.ModuleSpec("pycuda.driver", None)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    return trt, cuda


def test_the_fake_refuses_what_the_real_api_refuses(api):
    """The fake can fail: unknown members, wrong arity, keywords and types, read-only properties."""
    trt, _ = api
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 20)
    config.DLA_core = 1
    with pytest.raises(StrictAPIError, match="no attribute 'set_flags'"):
        config.set_flags(trt.BuilderFlag.FP16)
    with pytest.raises(StrictAPIError, match="fits no real signature"):
        config.set_flag("FP16")  # a string where the enum goes
    with pytest.raises(StrictAPIError, match="fits no real signature"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)  # missing pool_size
    with pytest.raises(StrictAPIError, match="fits no real signature"):
        config.set_timing_cache(config.create_timing_cache(b""), ignore=False)  # wrong keyword
    with pytest.raises(StrictAPIError, match="fits no real signature"):
        builder.create_network(1.5)
    with pytest.raises(StrictAPIError, match="not a writable property"):
        builder.num_DLA_cores = 2
    with pytest.raises(StrictAPIError, match="fits no real signature"):
        config.default_device_type = "DLA"
    with pytest.raises(AttributeError):
        trt.BuilderFlag.SPARSE  # noqa: B018  (the real enum has SPARSE_WEIGHTS)
    with pytest.raises(StrictAPIError, match="no attribute"):
        trt.Engine  # noqa: B018
    with pytest.raises(StrictAPIError, match="fits no real signature"):
        trt.Builder()  # the logger is required


# ---- engine building -----------------------------------------------------------------------

def _script_builder(trt, *, parse_ok=True, engine=b"fake-engine", timing_ok=True, log_error=None):
    """Scripts for a build: parse result, engine bytes (None = failed build), timing cache."""
    from edgeflow.runtime import trt_build

    trt.script("OnnxParser.parse", lambda obj, model, *a, **k: parse_ok)
    trt.script("OnnxParser.num_errors", lambda obj: 0 if parse_ok else 1)
    trt.script("OnnxParser.get_error", lambda obj, i: "Unsupported ONNX op: QLinearConv")
    trt.script("IBuilderConfig.set_timing_cache", lambda obj, cache, ignore_mismatch: timing_ok)
    trt.script("ITimingCache.serialize", lambda obj: b"timing")

    def build(obj, network, config):
        if log_error:
            trt_build._LOGGER.log(trt.ILogger.Severity.ERROR, log_error)
        return engine

    trt.script("Builder.build_serialized_network", build)


def _onnx(tmp_path) -> Path:
    from edgeflow.runtime.doctor import tiny_graph

    path = tmp_path / "tiny.onnx"
    tiny_graph(path)
    return path


def _inputs():
    from edgeflow.runtime import TensorSpec

    return [TensorSpec("x", ("N", 3, 16, 16), "float32")]


def _flags(trt, key: str) -> list[str]:
    return [a[0].name for a, _ in trt.called(key)]


@pytest.mark.parametrize(("version", "network_flags"), [("10.3.0", 0), ("8.5.2", 1)])
def test_build_engine_sets_what_the_plan_says(api, tmp_path, version, network_flags):
    from edgeflow.runtime.trt_build import BuildOptions, DeviceInfo, build_engine, select_flags

    trt, _ = api
    trt.__version__ = version
    _script_builder(trt)
    dev = DeviceInfo(version, "Orin", (8, 7), dla_cores=2)
    fp16 = BuildOptions.for_precision("fp16", batch=(1, 4, 8), workspace_bytes=1 << 26)
    engine, timing = build_engine(_onnx(tmp_path), _inputs(), fp16, select_flags(fp16, dev), b"")
    assert (engine, timing) == (b"fake-engine", b"timing")
    # explicit batch below TensorRT 10 (0 there is the implicit-batch mode the parser rejects)
    assert trt.called("Builder.create_network") == [((network_flags,), {})]
    assert _flags(trt, "IBuilderConfig.set_flag") == ["FP16"]
    assert _flags(trt, "IBuilderConfig.clear_flag") == []
    assert trt.called("IOptimizationProfile.set_shape")[0][0] == (
        "x", (1, 3, 16, 16), (4, 3, 16, 16), (8, 3, 16, 16))
    assert trt.called("IBuilderConfig.set_memory_pool_limit")[0][0][1] == 1 << 26


def test_fp32_clears_tf32_and_dla_builds_are_static(api, tmp_path):
    from edgeflow.runtime.trt_build import BuildOptions, DeviceInfo, build_engine, select_flags

    trt, _ = api
    _script_builder(trt)
    dev = DeviceInfo("10.3.0", "AGX Orin", (8, 7), dla_cores=2)
    fp32 = BuildOptions.for_precision("fp32", batch=(1, 4, 8))
    build_engine(_onnx(tmp_path), _inputs(), fp32, select_flags(fp32, dev), b"")
    assert _flags(trt, "IBuilderConfig.clear_flag") == ["TF32"]
    trt.calls.clear()
    dla = BuildOptions.for_precision("fp16", batch=(1, 4, 8), dla_core=1)
    build_engine(_onnx(tmp_path), _inputs(), dla, select_flags(dla, dev), b"")
    assert _flags(trt, "IBuilderConfig.set_flag") == ["FP16", "GPU_FALLBACK"]
    assert trt.called("IBuilderConfig.default_device_type=")[0][0] == (trt.DeviceType.DLA,)
    assert trt.called("IBuilderConfig.DLA_core=")[0][0] == (1,)
    assert trt.called("IOptimizationProfile.set_shape")[0][0][1:] == ((4, 3, 16, 16),) * 3


def test_build_errors_carry_tensorrt_s_words_and_logs_stay_off_stdout(api, tmp_path, capsys, caplog):
    from edgeflow.runtime.trt_build import BuildOptions, DeviceInfo, build_engine, select_flags

    trt, _ = api
    dev = DeviceInfo("10.3.0", "Orin", (8, 7))
    fp16 = BuildOptions.for_precision("fp16")
    plan = select_flags(fp16, dev)
    _script_builder(trt, parse_ok=False)
    with pytest.raises(BackendError, match=r"QLinearConv.*ONNX parser rejected"):
        build_engine(_onnx(tmp_path), _inputs(), fp16, plan, b"")
    _script_builder(trt, engine=None, log_error="Requested amount of GPU memory could not be allocated")
    with caplog.at_level(logging.ERROR, logger="edgeflow.tensorrt"), \
            pytest.raises(BackendError, match=r"GPU memory could not be allocated.*workspace"):
        build_engine(_onnx(tmp_path), _inputs(), fp16, plan, b"")
    assert "TensorRT: Requested amount" in caplog.text
    assert capsys.readouterr().out == ""
    # a timing cache TensorRT refuses (another device): the build goes on with a fresh one
    _script_builder(trt, timing_ok=False)
    trt.calls.clear()
    assert build_engine(_onnx(tmp_path), _inputs(), fp16, plan, b"stale")[0] == b"fake-engine"
    assert [a[0] for a, _ in trt.called("IBuilderConfig.create_timing_cache")] == [b"stale", b""]


# ---- the whole TensorRT backend: bundle -> engines -> Session -------------------------------

def _script_engines(trt, cuda):
    """Engines whose execution runs the ONNX they were built from on ONNX Runtime."""
    import onnxruntime as ort

    def parser_init(obj, network, logger):
        obj.state["network"] = network

    def parse(obj, model, *a, **k):
        obj.state["network"].state["onnx"] = bytes(model)
        return True

    def set_shape(obj, name, lo, opt, hi):
        obj.state.setdefault("shapes", {})[name] = [list(lo), list(opt), list(hi)]

    def add_profile(obj, profile):
        obj.state["profile"] = profile.state.get("shapes", {})
        return 0

    def build(obj, network, config):
        header = json.dumps({"profile": config.state.get("profile", {})}).encode()
        return b"fake-engine\n" + header + b"\n" + network.state["onnx"]

    trt.script("OnnxParser.__init__", parser_init)
    trt.script("OnnxParser.parse", parse)
    trt.script("IOptimizationProfile.set_shape", set_shape)
    trt.script("IBuilderConfig.add_optimization_profile", add_profile)
    trt.script("Builder.build_serialized_network", build)
    trt.script("ITimingCache.serialize", lambda obj: b"timing")
    trt.script("Builder.num_DLA_cores", lambda obj: 0)

    def deserialize(obj, data):
        data = bytes(data)
        if not data.startswith(b"fake-engine\n"):
            return None
        _, header, model = data.split(b"\n", 2)
        engine = FakeObject(trt, trt._bindings.ICudaEngine)
        sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        engine.state.update(session=sess, profile=json.loads(header)["profile"],
                            io=[*sess.get_inputs(), *sess.get_outputs()],
                            n_in=len(sess.get_inputs()))
        return engine

    def io(engine, name):
        return next(t for t in engine.state["io"] if t.name == name)

    trt.script("Runtime.deserialize_cuda_engine", deserialize)
    trt.script("ICudaEngine.num_io_tensors", lambda e: len(e.state["io"]))
    trt.script("ICudaEngine.get_tensor_name", lambda e, i: e.state["io"][i].name)
    trt.script("ICudaEngine.get_tensor_shape", lambda e, name: tuple(
        d if isinstance(d, int) else -1 for d in io(e, name).shape))
    trt.script("ICudaEngine.get_tensor_dtype", lambda e, name: trt.DataType.FLOAT)
    trt.script("ICudaEngine.get_tensor_mode", lambda e, name: trt.TensorIOMode.INPUT if any(
        t.name == name for t in e.state["io"][:e.state["n_in"]]) else trt.TensorIOMode.OUTPUT)
    trt.script("ICudaEngine.get_tensor_profile_shape",
               lambda e, name, k: [tuple(s) for s in e.state["profile"][name]])

    def make_context(engine):
        ctx = FakeObject(trt, trt._bindings.IExecutionContext)
        ctx.state.update(engine=engine, shapes={}, addresses={})
        return ctx

    def set_input_shape(ctx, name, shape):
        prof = ctx.state["engine"].state["profile"].get(name)
        if prof and not all(lo <= d <= hi for lo, d, hi in zip(prof[0], shape, prof[2], strict=True)):
            return False  # what TensorRT does outside the profile
        ctx.state["shapes"][name] = tuple(shape)
        return True

    def symbols(ctx):
        out = {}
        for t in ctx.state["engine"].state["io"][:ctx.state["engine"].state["n_in"]]:
            for d, v in zip(t.shape, ctx.state["shapes"][t.name], strict=True):
                if not isinstance(d, int):
                    out[d] = v
        return out

    def get_shape(ctx, name):
        if name in ctx.state["shapes"]:
            return ctx.state["shapes"][name]
        sym = symbols(ctx)
        return tuple(d if isinstance(d, int) else sym[d] for d in io(ctx.state["engine"], name).shape)

    def set_address(ctx, name, address):
        ctx.state["addresses"][name] = address
        return True

    def execute(ctx, handle):
        eng = ctx.state["engine"].state
        feed = {t.name: cuda.read(ctx.state["addresses"][t.name], ctx.state["shapes"][t.name],
                                  np.float32) for t in eng["io"][:eng["n_in"]]}
        outs = eng["session"].run(None, feed)
        for t, value in zip(eng["io"][eng["n_in"]:], outs, strict=True):
            cuda.write(ctx.state["addresses"][t.name], value.astype(np.float32))
        return True

    trt.script("ICudaEngine.create_execution_context", make_context)
    trt.script("IExecutionContext.set_input_shape", set_input_shape)
    trt.script("IExecutionContext.get_tensor_shape", get_shape)
    trt.script("IExecutionContext.set_tensor_address", set_address)
    trt.script("IExecutionContext.execute_async_v3", execute)


def _episode(bundle):
    from tests.export.helpers import cifar_test

    ds = cifar_test(200)
    classes = np.unique(ds.labels)[:5]
    sup = np.concatenate([np.flatnonzero(ds.labels == c)[:5] for c in classes])
    qry = np.concatenate([np.flatnonzero(ds.labels == c)[5:9] for c in classes])
    return ds.images[sup], ds.labels[sup], ds.images[qry]


def test_tensorrt_session_equals_onnxruntime_and_manages_its_memory(api, drift_bundle, tmp_path):
    """Session(backend="tensorrt") through the real API: same labels and scores as ONNX Runtime;
    buffers allocated once and reused, every copy from page-locked memory, everything freed with
    the context pushed (here from another thread than the one that built the session); engines
    cached under several keys."""
    import shutil

    from edgeflow.runtime import Session

    trt, cuda = api
    _script_engines(trt, cuda)
    bundle = tmp_path / "b"
    shutil.copytree(drift_bundle[0], bundle)
    sx, sy, qx = _episode(bundle)
    with Session(bundle, backend="onnxruntime") as ref:
        want_labels, want_scores = ref.predict(qx, ref.adapt(sx, sy))
    s = Session(bundle, backend="tensorrt", precision="fp16", batch_size=8)
    assert s.backend == "tensorrt" and s.engines == dict.fromkeys(
        ["backbone", "task_encoder", "drift"], "built")
    task = s.adapt(sx, sy)
    labels, scores = s.predict(qx, task)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(scores, want_scores, atol=1e-4)
    allocated = len(cuda.allocations)
    s.predict(qx, task)  # same batch sizes: no new buffers
    assert len(cuda.allocations) == allocated
    assert cuda.copies and all(pinned for _, pinned in cuda.copies)
    # the drift graphs are FP32 engines: TF32 cleared for each of them, the backbone keeps FP16
    assert _flags(trt, "IBuilderConfig.clear_flag").count("TF32") == 2
    closer = threading.Thread(target=s.close)
    closer.start()
    closer.join()
    assert all(a.freed for a in cuda.allocations) and all(p.freed for p in cuda.pinned)
    assert not any(cuda.stack() for _ in [0])  # nothing left pushed in this thread
    # a second Session (fp32 now) builds its own backbone key and keeps the fp16 engines cached
    with Session(bundle, backend="tensorrt", precision="fp32") as s32:
        np.testing.assert_array_equal(s32.predict(qx, s32.adapt(sx, sy))[0], want_labels)
    with Session(bundle, backend="tensorrt", precision="fp16") as again:
        assert set(again.engines.values()) == {"cached"}
    builds = len(trt.called("Builder.build_serialized_network"))
    assert builds == 4  # 3 graphs at fp16 + the fp32 backbone (the drift engines were reused)
    assert len(list((bundle / "engines").glob("backbone-*.engine"))) == 2


def test_static_batch_engine_pads_and_refuses_a_shape_outside_the_profile(api, tmp_path):
    from edgeflow.runtime import TrtRunner
    from edgeflow.runtime.trt_build import BuildOptions, DeviceInfo, build_engine, select_flags

    trt, cuda = api
    _script_engines(trt, cuda)
    dev = DeviceInfo("10.3.0", "AGX Orin", (8, 7), dla_cores=2)
    path = _onnx(tmp_path)
    x = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    from edgeflow.runtime.doctor import tiny_graph

    _, ref = tiny_graph(tmp_path / "again.onnx")
    dla = BuildOptions.for_precision("fp16", batch=(1, 4, 8), dla_core=0)
    engine, _ = build_engine(path, _inputs(), dla, select_flags(dla, dev), b"")
    with TrtRunner(engine) as r:
        assert r.static_batch == 4 and r.max_batch == 4
        out = r.infer({"x": x})["y"]  # 3 images padded to the engine's 4
        np.testing.assert_allclose(out, ref(x), atol=1e-4)
        with pytest.raises(BackendError, match="exactly 4"):
            r.infer({"x": np.zeros((5, 3, 16, 16), np.float32)})
    gpu = BuildOptions.for_precision("fp16", batch=(1, 4, 8))
    engine, _ = build_engine(path, _inputs(), gpu, select_flags(gpu, dev), b"")
    with TrtRunner(engine) as r:
        assert r.static_batch is None and r.max_batch == 8
        with pytest.raises(BackendError, match="refused by the engine's optimisation profile"):
            r.infer({"x": np.zeros((9, 3, 16, 16), np.float32)})


def test_foreign_engine_is_told_apart_from_other_failures(api):
    from edgeflow.runtime.trt_build import engine_loader, trt_logger

    trt, _ = api

    def deserialize(obj, data):
        trt_logger(trt).log(trt.ILogger.Severity.ERROR, bytes(data).decode())
        return None

    trt.script("Runtime.deserialize_cuda_engine", deserialize)
    load = engine_loader()
    foreign = load(b"IRuntime::deserializeCudaEngine: Serialization assertion magicTagRead failed")
    assert "another TensorRT version" in foreign
    oom = load(b"Requested amount of GPU memory (2147483648 bytes) could not be allocated")
    assert "ran out of memory" in oom and "another TensorRT" not in oom


def test_calibrator_uses_the_primary_context_and_feeds_tensorrt(api, tmp_path):
    """INT8 from the FP32 graph: the calibrator is a real IInt8EntropyCalibrator2 subclass, its
    buffers live in the primary context (no pycuda.autoinit), and the build attaches it with a
    calibration profile fixed at its batch."""
    from edgeflow.export.trt_calibrator import make_entropy_calibrator
    from edgeflow.runtime.trt_build import BuildOptions, DeviceInfo, build_engine, select_flags

    trt, cuda = api
    sample = np.random.default_rng(0).normal(size=(8, 3, 16, 16)).astype(np.float32)
    calib = make_entropy_calibrator(sample, input_name="x", batch_size=4, cache_dir=tmp_path)
    assert isinstance(calib, trt._bindings.IInt8EntropyCalibrator2)
    assert "pycuda.autoinit" not in sys.modules and cuda.stack() == []
    fed = []

    def build(obj, network, config):  # TensorRT drives the calibrator during the build
        c = config.state["int8_calibrator"]
        while (ptrs := c.get_batch(["x"])) is not None:
            fed.append(cuda.read(ptrs[0], (4, 3, 16, 16), np.float32))
        c.write_calibration_cache(f"TRT-{100300}-EntropyCalibration2\nimages: 3c000000\n".encode())
        return b"int8-engine"

    _script_builder(trt)
    trt.script("Builder.build_serialized_network", build)
    trt.script("IBuilderConfig.set_calibration_profile", lambda obj, profile: True)
    dev = DeviceInfo("10.3.0", "Orin", (8, 7))
    int8 = BuildOptions.for_precision("int8")
    plan = select_flags(int8, dev, has_calibrator=True)
    assert build_engine(_onnx(tmp_path), _inputs(), int8, plan, b"", calibrator=calib)[0] == b"int8-engine"
    np.testing.assert_array_equal(np.concatenate(fed), sample)
    shapes = [a for a, _ in trt.called("IOptimizationProfile.set_shape")]
    assert ("x", (4, 3, 16, 16), (4, 3, 16, 16), (4, 3, 16, 16)) in shapes
    assert _flags(trt, "IBuilderConfig.set_flag") == ["FP16", "INT8"]
    assert list(tmp_path.glob("calib-trt10.3.0-*.cache"))
    calib.free()
    assert all(a.freed for a in cuda.allocations)


def test_int8_on_tensorrt_builds_tensorrt_s_qdq_graph_else_calibrates_else_says_how(
        api, drift_bundle, tmp_path):
    """The bundle's ONNX Runtime INT8 graph never reaches TensorRT: INT8 builds TensorRT's Q/DQ
    graph; without it, the FP32 graph with the calibrator on the bundle's sample; without both, an
    error naming the fix. A Jetson target picks int8 only where TensorRT can build it."""
    import shutil

    from typer.testing import CliRunner

    from edgeflow.cli.app import app
    from edgeflow.errors import ConfigError
    from edgeflow.export.int8_trt import TENSORRT_INT8_FILE
    from edgeflow.runtime import Session
    from edgeflow.runtime.bundle import update_bundle
    from tests.conftest import shared_file

    trt, cuda = api
    _script_engines(trt, cuda)
    plain = tmp_path / "plain"
    shutil.copytree(drift_bundle[0], plain)
    with pytest.raises(ConfigError, match="no INT8 graph TensorRT can build"):
        Session(plain, backend="tensorrt", precision="int8")
    with Session(plain, target="jetson-orin-nano-8gb") as s:
        assert (s.backend, s.precision) == ("tensorrt", "fp16")
    bundle = tmp_path / "calibrated"
    shutil.copytree(drift_bundle[0], bundle)
    res = CliRunner().invoke(app, ["calibrate", str(bundle), "--data",
                                   str(shared_file("data/cifar10/train.zip")), "--samples", "32"])
    assert res.exit_code == 0, res.output
    trt.calls.clear()
    with Session(bundle, target="jetson-orin-nano-8gb") as s:
        assert (s.backend, s.precision) == ("tensorrt", "int8")
        sx, sy, qx = _episode(bundle)
        assert s.predict(qx, s.adapt(sx, sy))[0].shape == (len(qx),)
    parsed = [a[0] for a, _ in trt.called("OnnxParser.parse")]
    assert (bundle / TENSORRT_INT8_FILE).read_bytes() in parsed
    assert (bundle / "backbone.int8.onnx").read_bytes() not in parsed
    assert "INT8" in _flags(trt, "IBuilderConfig.set_flag")
    assert not trt.called("IBuilderConfig.int8_calibrator=")
    # a bundle calibrated before TensorRT's graph existed: implicit calibration on the device
    update_bundle(bundle, manifest={"tensorrt": {}})
    trt.script("IBuilderConfig.set_calibration_profile", lambda obj, profile: True)
    trt.calls.clear()
    with Session(bundle, backend="tensorrt", precision="int8") as s:
        assert s.engines["backbone"] == "built"
    assert len(trt.called("IBuilderConfig.int8_calibrator=")) == 1
    assert (bundle / "backbone.onnx").read_bytes() in [a[0] for a, _ in trt.called("OnnxParser.parse")]
    assert all(a.freed for a in cuda.allocations)  # the calibrator's buffers too


def test_doctor_checks_every_tensorrt_path_and_fails_visibly(api, tmp_path):
    """`edgeflow doctor` on a (fake) device: import/version, device, FP32/FP16/INT8 and DLA builds
    compared with ONNX Runtime, the cache folder; a build that fails is a FAIL row and exit 1."""
    from typer.testing import CliRunner

    from edgeflow.cli.app import app

    trt, cuda = api
    _script_engines(trt, cuda)
    trt.script("Builder.num_DLA_cores", lambda obj: 2)
    res = CliRunner().invoke(app, ["doctor", "--cache", str(tmp_path / "engines"), "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["check"]: r for r in json.loads(res.stdout)["checks"]}
    assert rows["tensorrt: import and version"]["detail"] == "TensorRT 10.3.0"
    assert "Orin, SM 8.7, 2 DLA cores" in rows["cuda: device"]["detail"]
    for name in ("tensorrt fp32", "tensorrt fp16", "tensorrt int8", "tensorrt fp16 on DLA"):
        assert rows[f"{name}: build + run vs onnxruntime"]["ok"] is True, rows
    assert rows["engine cache: writable"]["ok"] is True
    dla = [a for a, _ in trt.called("IBuilderConfig.DLA_core=")]
    assert dla == [(0,)]
    trt.script("Builder.build_serialized_network", lambda obj, network, config: None)
    trt.__version__ = "10.3.0"
    res = CliRunner().invoke(app, ["doctor", "--cache", str(tmp_path / "other"), "--json"])
    assert res.exit_code == 1
    rows = {r["check"]: r for r in json.loads(res.stdout)["checks"]}
    assert rows["tensorrt fp16: build + run vs onnxruntime"]["ok"] is False
    assert "returned no engine" in rows["tensorrt fp16: build + run vs onnxruntime"]["detail"]
    trt.__version__ = "8.4.1"
    rows = {r["check"]: r for r in json.loads(CliRunner().invoke(
        app, ["doctor", "--json"]).stdout)["checks"]}
    assert rows["tensorrt: import and version"]["ok"] is False
    assert "not supported" in rows["tensorrt: import and version"]["detail"]


def test_build_says_what_it_built_where_and_whether_it_was_cached(api, drift_bundle, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from edgeflow.cli.app import app

    trt, cuda = api
    _script_engines(trt, cuda)
    trt.script("Builder.num_DLA_cores", lambda obj: 2)
    bundle = tmp_path / "b"
    shutil.copytree(drift_bundle[0], bundle)
    args = ["build", str(bundle), "--target", "jetson-orin-nx-16gb", "--dla-core", "1"]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    details = json.loads(res.stdout)["details"]
    bb = details["backbone"]
    assert bb["result"] == "built" and bb["device"] == "DLA core 1"
    assert bb["flags"] == ["FP16", "SPARSE_WEIGHTS", "GPU_FALLBACK"]
    assert bb["profile"]["images"][0] == bb["profile"]["images"][2]  # static for DLA
    assert Path(bb["engine"]).parent == bundle / "engines" and Path(bb["engine"]).is_file()
    assert details["drift"]["device"] == "GPU" and details["drift"]["cleared_flags"] == ["TF32"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "backbone: cached" in text and "on DLA core 1" in text
    assert "profile images static 4x3x32x32" in text
    assert "drift: cached" in text and "(cleared TF32)" in text and "-> " in text


def test_tensorrt_refuses_a_graph_changed_after_the_bundle_was_verified(api, drift_bundle, tmp_path):
    import shutil

    from edgeflow.errors import BundleError
    from edgeflow.runtime import Session, load_bundle

    trt, cuda = api
    _script_engines(trt, cuda)
    bundle = tmp_path / "b"
    shutil.copytree(drift_bundle[0], bundle)
    loaded = load_bundle(bundle)  # verified now
    (bundle / "drift.onnx").write_bytes((bundle / "drift.onnx").read_bytes()[:-1] + b"\0")
    with pytest.raises(BundleError, match="changed after the bundle was verified"):
        Session(loaded, backend="tensorrt")
    assert not trt.called("OnnxParser.parse") or all(
        a[0] != (bundle / "drift.onnx").read_bytes() for a, _ in trt.called("OnnxParser.parse"))
