"""Device profiles: every built-in one loads; bad profiles fail naming the problem."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgeflow.errors import ConfigError
from edgeflow.targets import FIELDS, JETPACK_TRT, Target, builtin_targets, target_names

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ["cpu", "cuda", "jetson-orin-nano-8gb", "jetson-orin-nx-16gb", "jetson-agx-orin-64gb",
            "jetson-xavier-nx"]


def _text(name: str) -> str:
    return (ROOT / "targets" / f"{name}.toml").read_text()


def test_registry_is_the_folder():
    assert set(REQUIRED) <= set(target_names())
    assert sorted(p.stem for p in (ROOT / "targets").glob("*.toml")) == target_names()


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "targets").glob("*.toml")))
def test_every_profile_loads_and_validates(name):
    t = Target.load(name)
    assert t.name == name  # the file name is the registry key; they must agree
    assert t.backend in ("onnxruntime", "tensorrt")
    assert 1 <= t.batch_min <= t.batch_opt <= t.batch_max
    assert 0 <= t.workspace_mb < t.memory_budget_mb
    assert "fp32" in t.precisions
    for jp in t.jetpack:  # the JetPack -> TensorRT mapping of docs/tensorrt.md holds
        assert JETPACK_TRT[jp] in t.trt_versions
    table = {k: v for k, v in t.to_dict().items() if k != "source"}
    assert Target.from_dict(table, source=t.source) == t  # to_dict round-trips


def test_device_facts():
    nano, nx, agx, xavier = (Target.load(n) for n in ("jetson-orin-nano-8gb", "jetson-orin-nx-16gb",
                                                      "jetson-agx-orin-64gb", "jetson-xavier-nx"))
    assert nano.sparse_2_4 and nx.sparse_2_4 and agx.sparse_2_4 and not xavier.sparse_2_4
    assert nano.dla_cores == 0 and nx.dla_cores == 2 and agx.dla_cores == 2 and xavier.dla_cores == 2
    assert nano.gpu_sm == "8.7" and xavier.gpu_sm == "7.2" and xavier.sm_tuple == (7, 2)
    assert xavier.trt_versions == ("8.5",) and "10.3" in nano.trt_versions
    assert nano.supports_trt("10.3.0.30") and not xavier.supports_trt("10.3")
    cpu = Target.load("cpu")
    assert cpu.backend == "onnxruntime" and cpu.gpu_sm is None and not cpu.has_gpu
    assert cpu.supports("int8") and not cpu.supports("fp16")
    assert Target.load("cuda").backend == "tensorrt"


def test_pick_precision():
    cpu, nano = Target.load("cpu"), Target.load("jetson-orin-nano-8gb")
    assert cpu.pick_precision({"fp32": "b.onnx", "int8": "b.int8.onnx"}) == "int8"
    assert cpu.pick_precision(["fp32", "fp16"]) == "fp32"  # the CPU profile has no fp16
    assert nano.pick_precision(["fp32", "fp16"]) == "fp16"
    with pytest.raises(ConfigError, match="carries fp16"):
        cpu.pick_precision(["fp16"])


def test_user_profile_by_path(tmp_path):
    p = tmp_path / "my-board.toml"
    p.write_text(_text("jetson-orin-nano-8gb").replace('name = "jetson-orin-nano-8gb"',
                                                       'name = "my-board"'))
    t = Target.load(p)
    assert t.name == "my-board" and t.source == str(p)
    assert Target.load(str(p)) == t


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ConfigError) as e:
        Target.load("jetson-nano-2gb")
    msg = str(e.value)
    assert "jetson-nano-2gb" in msg and all(n in msg for n in REQUIRED)


def test_missing_path():
    with pytest.raises(ConfigError, match="does not exist"):
        Target.load("/nope/board.toml")


def test_unknown_and_missing_keys_are_named():
    text = _text("cpu").replace("dla_cores = 0", "dla_core = 0").replace("batch_opt = 1\n", "")
    with pytest.raises(ConfigError) as e:
        Target.from_toml(text, source="x.toml")
    msg = str(e.value)
    assert "unknown keys ['dla_core']" in msg and "missing keys ['dla_cores', 'batch_opt']" in msg
    assert "x.toml" in msg


@pytest.mark.parametrize(("old", "new", "fragment"), [
    ('backend = "onnxruntime"', 'backend = "openvino"', "backend 'openvino'"),
    ('precisions = ["fp32", "int8"]', 'precisions = ["fp32", "int4"]', "precisions"),
    ("dla_cores = 0", "dla_cores = true", "dla_cores = True must be a int"),
    ("dla_cores = 0", "dla_cores = 1", "dla_cores > 0 only exists on Jetson"),
    ("sparse_2_4 = false", "sparse_2_4 = true", "sparse_2_4 = true needs sparse tensor cores"),
    ("batch_max = 32", "batch_max = 0", "batch_min <= batch_opt <= batch_max"),
    ("memory_budget_mb = 2048", "memory_budget_mb = 2048.0", "memory_budget_mb = 2048.0 must be a int"),
    ("workspace_mb = 0", "workspace_mb = 4096", "below memory_budget_mb"),
    ("jetpack = []", 'jetpack = ["6.1"]', "ships TensorRT 10.3"),
    ('gpu_sm = "none"', 'gpu_sm = "sm87"', "gpu_sm 'sm87'"),
])
def test_inconsistent_values_fail_with_fix(old, new, fragment):
    text = _text("cpu")
    assert old in text
    with pytest.raises(ConfigError, match=r"x\.toml") as e:
        Target.from_toml(text.replace(old, new), source="x.toml")
    assert fragment in str(e.value)


def test_tensorrt_backend_needs_gpu_and_versions():
    text = _text("cpu").replace('backend = "onnxruntime"', 'backend = "tensorrt"')
    with pytest.raises(ConfigError) as e:
        Target.from_toml(text)
    assert "needs a GPU" in str(e.value) and "trt_versions" in str(e.value)


def test_bad_toml():
    with pytest.raises(ConfigError, match="not valid TOML"):
        Target.from_toml("name = ")


def test_fields_documented():
    assert set(FIELDS) == set(Target.load("cpu").to_dict()) - {"source"}


@pytest.mark.slow
def test_profiles_ship_in_the_wheel(tmp_path):
    """A non-editable install (wheel -> --target dir) finds the profiles without the source tree."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("edgeflow", "targets"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("edgeflow-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"edgeflow/_targets/{n}.toml" for n in target_names()} <= set(names)
    # every module of the source tree ships too (sub-packages without __init__.py included)
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "edgeflow").rglob("*.py")}
    assert modules <= set(names), sorted(modules - set(names))[:5]
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "-q", "--no-deps", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    code = ("import edgeflow.targets as t; assert t._source_dir() is None, t._source_dir(); "
            "print(','.join(t.target_names())); print(t.Target.load('jetson-xavier-nx').source)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         check=True, capture_output=True, text=True, timeout=120).stdout.splitlines()
    assert out[0].split(",") == target_names()
    assert out[1].startswith(str(site))


def test_builtin_targets_are_files():
    assert all(f.is_file() for f in builtin_targets().values())


def test_trt_versions_take_a_major_and_refuse_what_edgeflow_cannot_build(tmp_path):
    from edgeflow.targets import Target

    text = (Path(__file__).resolve().parents[1] / "targets" / "cuda.toml").read_text()
    assert Target.from_toml(text).supports_trt("10.8.0")
    for bad in ('["9.3"]', '["8.4"]', '["7"]', '["10.x"]'):
        with pytest.raises(ConfigError, match="trt_versions"):
            Target.from_toml(text.replace('trt_versions = ["10"]', f"trt_versions = {bad}"))
