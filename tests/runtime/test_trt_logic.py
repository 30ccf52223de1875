"""Everything around TensorRT that does not need a GPU: flags, profiles, cache keys and
invalidation, error translation, and the Session's fallback to ONNX Runtime.

The engine cache is exercised with stand-in builder/loader callables (TensorRT cannot be installed
here); the real ones are run by `edgeflow doctor` and the runner conformance test on a device.
"""

import hashlib
import json

import pytest

from edgeflow.errors import BackendError, ConfigError
from edgeflow.runtime import BuildOptions, DeviceInfo, EngineCache, Session, TensorSpec, cache_key
from edgeflow.runtime.trt_build import profile_shapes, select_flags, translate_error

ORIN = DeviceInfo("10.3.0", "Orin", (8, 7), dla_cores=2)
ORIN_NANO = DeviceInfo("10.3.0", "Orin Nano", (8, 7), dla_cores=0)
XAVIER = DeviceInfo("8.5.2", "Xavier", (7, 2), dla_cores=2)


def test_flags_from_target_options():
    fp16 = BuildOptions.for_precision("fp16")
    assert select_flags(fp16, ORIN).flags == ("FP16",)
    assert select_flags(BuildOptions.for_precision("fp32"), ORIN).flags == ()
    int8 = BuildOptions.for_precision("int8")
    assert select_flags(int8, ORIN, has_qdq=True).flags == ("FP16", "INT8")
    with pytest.raises(ConfigError, match="INT8 needs a Q/DQ"):
        select_flags(int8, ORIN)
    sparse = BuildOptions(precisions=("fp32", "fp16"), sparse_weights=True)
    assert "SPARSE_WEIGHTS" in select_flags(sparse, ORIN).flags
    plan = select_flags(sparse, XAVIER)  # SM 7.2: no sparse tensor cores
    assert "SPARSE_WEIGHTS" not in plan.flags and "no sparse tensor cores" in plan.notes[0]
    dla = BuildOptions(precisions=("fp32", "fp16"), dla_core=1)
    plan = select_flags(dla, ORIN)
    assert plan.dla_core == 1 and plan.flags == ("FP16", "GPU_FALLBACK")
    plan = select_flags(dla, ORIN_NANO)  # Orin Nano has no DLA: build for the GPU and say so
    assert plan.dla_core is None and "has 0 DLA cores" in plan.notes[0]
    with pytest.raises(ConfigError, match="DLA runs FP16/INT8 only"):
        select_flags(BuildOptions(precisions=("fp32",), dla_core=0), ORIN)
    trt11 = select_flags(fp16, DeviceInfo("11.4.1", "Thor", (11, 0)))
    assert trt11.flags == () and "precision from the ONNX" in trt11.notes[0]


def test_options_validation_and_target_mapping():
    with pytest.raises(ConfigError, match="unknown precision"):
        BuildOptions(precisions=("fp8",))
    with pytest.raises(ConfigError, match="batch range"):
        BuildOptions(batch=(4, 2, 8))

    from edgeflow.targets import Target

    nx = Target.load("jetson-orin-nx-16gb")
    opts = BuildOptions.from_target(nx, precision="fp16", dla_core=1)
    assert opts.sparse_weights and opts.dla_core == 1
    assert opts.workspace_bytes == nx.workspace_mb << 20
    assert opts.batch == (nx.batch_min, nx.batch_opt, nx.batch_max)
    xavier = BuildOptions.from_target(Target.load("jetson-xavier-nx"), precision="int8")
    assert not xavier.sparse_weights and xavier.dla_core is None and "int8" in xavier.precisions
    with pytest.raises(ConfigError, match="has 0 DLA cores"):
        BuildOptions.from_target(Target.load("jetson-orin-nano-8gb"), dla_core=0)


def test_profile_shapes_cover_dynamic_dims_only():
    inputs = [TensorSpec("images", ("N", 3, 32, 32), "float32"), TensorSpec("theta", (688,), "float32")]
    opts = BuildOptions(batch=(1, 16, 64))
    assert profile_shapes(inputs, opts) == {"images": ((1, 3, 32, 32), (16, 3, 32, 32), (64, 3, 32, 32))}
    enc = [TensorSpec("prototypes", (1, "W", 64), "float32"), TensorSpec("mask", (1, "W"), "float32")]
    shapes = profile_shapes(enc, BuildOptions(ways=(2, 5, 20)))
    assert shapes["prototypes"] == ((1, 2, 64), (1, 5, 64), (1, 20, 64))
    assert shapes["mask"][2] == (1, 20)
    # a shot-token encoder: its shots count images ("N", the batch range), one-hot over "W"
    shots = [TensorSpec("shots", (1, "N", 64), "float32"),
             TensorSpec("shot_labels", (1, "N", "W"), "float32")]
    shapes = profile_shapes(shots, BuildOptions(batch=(1, 16, 64), ways=(2, 5, 20)))
    assert shapes["shots"] == ((1, 1, 64), (1, 16, 64), (1, 64, 64))
    assert shapes["shot_labels"] == ((1, 1, 2), (1, 16, 5), (1, 64, 20))


def test_cache_key_changes_with_every_ingredient():
    opts = BuildOptions()
    base = cache_key(ORIN, "a" * 64, opts)
    assert base == cache_key(ORIN, "a" * 64, BuildOptions())
    variants = [cache_key(DeviceInfo("10.4.0", "Orin", (8, 7), 2), "a" * 64, opts),
                cache_key(DeviceInfo("10.3.0", "Orin Nano", (8, 7), 2), "a" * 64, opts),
                cache_key(DeviceInfo("10.3.0", "Orin", (7, 2), 2), "a" * 64, opts),
                cache_key(ORIN, "b" * 64, opts),
                cache_key(ORIN, "a" * 64, BuildOptions(workspace_bytes=1 << 28))]
    assert len({base, *variants}) == 6


class FakeTRT:
    """Stand-in builder/loader: an 'engine' is bytes naming the device it was built for."""

    def __init__(self, device: DeviceInfo) -> None:
        self.device, self.builds = device, 0

    def builder(self, onnx_path, inputs, options, plan, timing):
        self.builds += 1
        return (f"engine:{self.device.trt_version}:{onnx_path.read_bytes().hex()[:8]}".encode(),
                timing + b"t")

    def loader(self, data: bytes) -> str | None:
        if data.startswith(f"engine:{self.device.trt_version}:".encode()):
            return None
        return "magic tag does not match"


def test_engine_cache_reuses_rebuilds_stale_and_foreign(tmp_path):
    onnx = tmp_path / "backbone.onnx"
    onnx.write_bytes(b"graph-v1")
    inputs = [TensorSpec("images", ("N", 3, 32, 32), "float32")]
    cache, fake, opts = EngineCache(tmp_path / "engines"), FakeTRT(ORIN), BuildOptions()
    plan = select_flags(opts, ORIN)
    get = lambda **kw: cache.get("backbone", onnx, inputs, opts, ORIN, builder=fake.builder,  # noqa: E731
                                 loader=fake.loader, plan=plan, **kw)
    path, how = get()
    assert how == "built" and fake.builds == 1
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["key"] == cache_key(ORIN, hashlib.sha256(b"graph-v1").hexdigest(), opts)
    assert side["flags"] == ["FP16"] and cache.timing_cache_path(ORIN).read_bytes() == b"t"
    assert get() == (path, "cached") and fake.builds == 1
    # a foreign engine under the right name (copied from another TensorRT): rebuilt
    path.write_bytes(b"engine:8.5.2:xxxx")
    side["engine_sha256"] = hashlib.sha256(b"engine:8.5.2:xxxx").hexdigest()
    path.with_suffix(".json").write_text(json.dumps(side))
    assert get()[1].startswith("rebuilt: TensorRT could not deserialize")
    # a truncated engine: rebuilt
    path.write_bytes(path.read_bytes()[:5])
    assert get()[1] == "rebuilt: engine file changed or truncated"
    # the timing cache grows and is passed back in
    assert cache.timing_cache_path(ORIN).read_bytes() == b"ttt"
    # a new ONNX (re-exported bundle): new key; the old engine stays (least recently used goes
    # first when the cache is full), so going back to the old graph costs no rebuild
    onnx.write_bytes(b"graph-v2")
    new_path, how = get()
    assert how == "built" and new_path != path and path.exists()
    assert get(force=True)[1] == "rebuilt: forced"


def test_engine_cache_keeps_several_keys_and_evicts_the_least_recently_used(tmp_path):
    """fp16 and int8 engines of one graph, and a `build --target` engine beside a default
    Session's, all stay cached: switching between them never rebuilds (the old cache deleted
    every other key of the graph). Beyond max_engines the least recently used goes."""
    import os

    onnx = tmp_path / "backbone.onnx"
    onnx.write_bytes(b"graph")
    inputs = [TensorSpec("images", ("N", 3, 32, 32), "float32")]
    cache, fake = EngineCache(tmp_path / "engines", max_engines=3), FakeTRT(ORIN)
    variants = [BuildOptions.for_precision("fp16"), BuildOptions.for_precision("fp32"),
                BuildOptions.for_precision("fp16", batch=(1, 1, 8)),
                BuildOptions.for_precision("fp16", sparse_weights=True)]

    def get(opts):
        return cache.get("backbone", onnx, inputs, opts, ORIN, builder=fake.builder,
                         loader=fake.loader, plan=select_flags(opts, ORIN))

    paths = []
    for k, opts in enumerate(variants[:3]):
        paths.append(get(opts)[0])
        os.utime(paths[-1], ns=(k * 10**9, k * 10**9))  # distinct use times on any filesystem
    assert fake.builds == 3
    for opts in variants[:3]:  # switching precision or profile: all cached
        assert get(opts)[1] == "cached"
    assert fake.builds == 3
    os.utime(paths[0], ns=(10**12, 10**12))  # fp16 used last, fp32 least recently
    os.utime(paths[1], ns=(0, 0))
    os.utime(paths[2], ns=(10**11, 10**11))
    new, how = get(variants[3])
    assert how == "built" and fake.builds == 4
    left = {p.name for p in cache.engines()}
    assert left == {paths[0].name, paths[2].name, new.name}  # fp32, the least recent, went
    assert not paths[1].with_suffix(".json").exists()
    with pytest.raises(ConfigError, match="max_engines"):
        EngineCache(tmp_path, max_engines=0)


def test_fp32_clears_tf32_and_low_precision_keeps_it():
    """TensorRT enables TF32 by default: an FP32 engine (the drift graphs) must clear it."""
    assert select_flags(BuildOptions.for_precision("fp32"), ORIN).clear == ("TF32",)
    assert select_flags(BuildOptions.for_precision("fp16"), ORIN).clear == ()


def test_dla_builds_get_a_static_profile():
    """DLA runs one shape: min = opt = max (a dynamic profile sends every layer to the GPU)."""
    inputs = [TensorSpec("images", ("N", 3, 32, 32), "float32"), TensorSpec("theta", (688,), "float32")]
    opts = BuildOptions(batch=(1, 4, 16), dla_core=0)
    plan = select_flags(opts, ORIN)
    assert plan.dla_core == 0 and any("fixed at 4" in n for n in plan.notes)
    static = profile_shapes(inputs, opts, static=plan.dla_core is not None)
    assert static == {"images": ((4, 3, 32, 32),) * 3}
    assert profile_shapes(inputs, opts)["images"][2] == (16, 3, 32, 32)


def test_network_flags_and_supported_versions():
    """Below TensorRT 10 create_network(0) is implicit batch, which the ONNX parser rejects."""
    from edgeflow.runtime.trt_options import check_version, network_flags

    assert network_flags("8.5.2.2", 0) == 1 and network_flags("8.6.2", 0) == 1
    assert network_flags("10.3.0", 0) == 0 and network_flags("10.13.1", 0) == 0
    for ok in ("8.5.2", "8.6.1", "10.0.1", "10.3.0.30", "10.8.0", "10.13.0", "11.1.0"):
        check_version(ok)
    for bad in ("8.4.1", "7.1.3", "9.3.0"):
        with pytest.raises(BackendError, match="not supported"):
            check_version(bad)
    with pytest.raises(ConfigError, match="not like"):
        check_version("ten")


def test_calibrated_int8_is_planned_only_with_a_calibrator_and_not_on_trt11():
    int8 = BuildOptions.for_precision("int8")
    plan = select_flags(int8, ORIN, has_calibrator=True)
    assert plan.calibrate and "INT8" in plan.flags
    assert not select_flags(int8, ORIN, has_qdq=True).calibrate
    with pytest.raises(ConfigError, match="no implicit INT8 calibration"):
        select_flags(int8, DeviceInfo("11.0.0", "Thor", (11, 0)), has_calibrator=True)


def test_error_translation_names_the_fix():
    e = translate_error("IRuntime::deserializeCudaEngine: Error Code 1: Serialization (Serialization "
                        "assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not match)")
    assert isinstance(e, BackendError) and "--force" in str(e)
    assert "workspace" in str(translate_error("Requested amount of GPU memory (1073741824 bytes) "
                                              "could not be allocated"))
    assert "thread" in str(translate_error("cuMemcpyHtoDAsync failed: invalid device context"))
    assert "GPU fallback" in str(translate_error("Layer X is not supported on DLA"))
    assert str(translate_error("something odd")) == "TensorRT failed: something odd"


def test_session_falls_back_to_onnxruntime_and_says_why(plain_bundle, monkeypatch):
    from edgeflow.runtime import backends

    with Session(plain_bundle[0], backend="auto") as s:
        assert s.backend == "onnxruntime" and "not installed" in s.fallback_reason
    with pytest.raises(BackendError, match="TensorRT backend unavailable"):
        Session(plain_bundle[0], backend="tensorrt")
    # TensorRT "installed" but unusable (here: the import fails inside engine building)
    monkeypatch.setattr(backends, "tensorrt_available", lambda: None)
    with Session(plain_bundle[0], backend="auto", precision="fp16") as s:
        assert s.backend == "onnxruntime" and s.precision == "fp32"
        assert s.fallback_reason.startswith("TensorRT failed")
        assert "fp16 does not run on ONNX Runtime" in s.fallback_reason
    with pytest.raises(ConfigError, match="unknown backend"):
        Session(plain_bundle[0], backend="cuda")
    with pytest.raises(ConfigError, match="needs the tensorrt backend"):
        Session(plain_bundle[0], backend="onnxruntime", precision="fp16")
