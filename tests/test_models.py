"""The model zoo and safe save/load."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advlab.errors import CheckpointError, ConfigError, UnknownNameError
from advlab.models import (
    Normalize,
    arch_kwargs,
    build_model,
    load_model,
    resolve_factory,
    save_model,
)
from advlab.registry import MODELS

# layers a certifier walking a zoo model has to know about
STANDARD_LAYERS = (Normalize, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear)


def _in_shape(name: str) -> tuple[int, ...]:
    return tuple(arch_kwargs(name)["in_shape"])


# --------------------------------------------------------------------------------------------
# zoo


@pytest.mark.parametrize("name", MODELS.names())
def test_zoo_model_builds_and_maps_inputs_to_logits(name: str) -> None:
    model = build_model(name, num_classes=7, seed=0).eval()
    shape = _in_shape(name)
    out = model(torch.rand(2, *shape, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    assert isinstance(model, nn.Sequential)
    assert isinstance(model[0], Normalize)
    assert all(isinstance(m, STANDARD_LAYERS) for m in model), [type(m) for m in model]
    assert MODELS.describe()[name]  # a one-line description for `advlab list models`


@pytest.mark.parametrize("name", MODELS.names())
def test_zoo_normalize_is_saved_with_the_weights(name: str) -> None:
    c = _in_shape(name)[0]
    model = build_model(name, mean=[0.25] * c, std=[0.5] * c)
    state = model.state_dict()
    assert torch.equal(state["0.mean"].flatten(), torch.full((c,), 0.25))
    assert torch.equal(state["0.std"].flatten(), torch.full((c,), 0.5))


@pytest.mark.parametrize("name", MODELS.names())
def test_zoo_seed_gives_same_init_and_leaves_global_rng_alone(name: str) -> None:
    before = torch.get_rng_state()
    a, b = build_model(name, seed=3), build_model(name, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    c = build_model(name, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_normalize_default_is_identity_and_standardizes() -> None:
    x = torch.rand(3, 2, 4, 4)
    assert torch.equal(Normalize()(x), x)
    norm = Normalize([0.5, 0.25], [0.5, 2.0])
    expected = torch.stack([(x[:, 0] - 0.5) / 0.5, (x[:, 1] - 0.25) / 2.0], dim=1)
    assert torch.allclose(norm(x), expected)


@pytest.mark.parametrize("std", [[0.0], [-1.0], [float("inf")], []])
def test_normalize_rejects_bad_std(std: list[float]) -> None:
    with pytest.raises(ConfigError):
        Normalize([0.0], std)


def test_papernot_matches_carlini_layout() -> None:
    model = build_model("papernot-mnist")
    fc = [m for m in model if isinstance(m, nn.Linear)]
    assert [m.out_features for m in fc] == [200, 200, 10]
    assert fc[0].in_features == 64 * 4 * 4  # 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64]
    assert all(c.kernel_size == (3, 3) and c.padding == (0, 0) for c in convs)
    color = build_model("papernot-mnist", in_shape=(3, 32, 32))
    assert next(m for m in color if isinstance(m, nn.Linear)).in_features == 64 * 5 * 5
    assert color(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_madry_width_scales_capacity() -> None:
    base, wide = build_model("madry-mnist"), build_model("madry-mnist", width=2.0)
    assert [m.out_channels for m in base if isinstance(m, nn.Conv2d)] == [32, 64]
    assert [m.out_channels for m in wide if isinstance(m, nn.Conv2d)] == [64, 128]
    assert next(m for m in wide if isinstance(m, nn.Linear)).out_features == 2048


def test_wong_and_mlp_layouts() -> None:
    wong = build_model("wong-mnist")
    assert next(m for m in wong if isinstance(m, nn.Linear)).in_features == 32 * 7 * 7
    mlp = build_model("mlp")
    assert [(m.in_features, m.out_features) for m in mlp if isinstance(m, nn.Linear)] == [
        (784, 100), (100, 100), (100, 10),
    ]  # fmt: skip


@settings(max_examples=15, deadline=None)
@given(
    name=st.sampled_from(MODELS.names()),
    c=st.integers(1, 3),
    h=st.integers(16, 36),
    w=st.integers(16, 36),
    k=st.integers(2, 12),
)
def test_zoo_accepts_any_reasonable_input_shape(name: str, c: int, h: int, w: int, k: int) -> None:
    model = build_model(name, in_shape=(c, h, w), num_classes=k, mean=[0.5], std=[0.5], seed=0)
    assert model(torch.rand(2, c, h, w)).shape == (2, k)


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("mlp", {"num_classes": 1}),
        ("mlp", {"num_classes": 2.5}),
        ("mlp", {"in_shape": (28, 28)}),
        ("mlp", {"hidden": (0,)}),
        ("mlp", {"mean": [0.1, 0.2]}),  # two means for one channel
        ("papernot-mnist", {"in_shape": (1, 8, 8)}),
        ("madry-mnist", {"width": 0}),
        ("mlp", {"widht": 2}),  # unknown argument
    ],
)
def test_zoo_rejects_bad_arguments(name: str, kw: dict) -> None:
    with pytest.raises(ConfigError):
        build_model(name, **kw)


def test_unknown_model_name_suggests_close_match() -> None:
    with pytest.raises(UnknownNameError, match="madry-mnist"):
        build_model("madry-mnst")


# --------------------------------------------------------------------------------------------
# save / load


@pytest.mark.parametrize("name", MODELS.names())
def test_save_load_roundtrip(name: str, tmp_path: Path) -> None:
    model = build_model(name, num_classes=5, seed=1).eval()
    path = save_model(
        model, tmp_path / "m", arch=name, arch_kwargs={"num_classes": 5}, dataset="mnist",
        clean_accuracy=0.987, recipe={"name": "standard", "params": {}}, seed=1,
        extra={"note": "test"},
    )  # fmt: skip
    assert path == tmp_path / "m.safetensors" and (tmp_path / "m.json").exists()
    loaded, meta = load_model(tmp_path / "m.safetensors")
    assert not loaded.training
    x = torch.rand(3, *_in_shape(name))
    assert torch.equal(loaded(x), model(x))
    assert meta["arch"] == name
    assert meta["arch_kwargs"]["num_classes"] == 5
    assert meta["arch_kwargs"]["in_shape"] == list(_in_shape(name))
    assert meta["dataset"] == "mnist" and meta["clean_accuracy"] == 0.987 and meta["seed"] == 1
    assert meta["recipe"] == {"name": "standard", "params": {}}
    assert meta["extra"] == {"note": "test"}
    assert set(meta["versions"]) == {"advlab", "torch", "python"}
    assert meta["created"] and len(meta["weights_sha256"]) == 64
    assert meta["format"] == "safetensors"


def test_save_accepts_path_with_suffix_and_load_without(tmp_path: Path) -> None:
    model = build_model("wong-mnist", seed=0).eval()
    save_model(model, tmp_path / "w.safetensors", arch="wong-mnist")
    for p in (tmp_path / "w", tmp_path / "w.safetensors", tmp_path / "w.json"):
        loaded, _ = load_model(p)
        x = torch.rand(2, 1, 28, 28)
        assert torch.equal(loaded(x), model(x))


def test_load_without_json_uses_the_header(tmp_path: Path) -> None:
    model = build_model("mlp", in_shape=(1, 8, 8), seed=0).eval()
    save_model(model, tmp_path / "m", arch="mlp", arch_kwargs={"in_shape": (1, 8, 8)})
    (tmp_path / "m.json").unlink()
    loaded, meta = load_model(tmp_path / "m.safetensors")
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(loaded(x), model(x)) and meta["arch"] == "mlp"


def test_save_rejects_arch_kwargs_that_do_not_describe_the_model(tmp_path: Path) -> None:
    model = build_model("mlp", num_classes=3)
    with pytest.raises(ConfigError, match="does not match"):
        save_model(model, tmp_path / "m", arch="mlp", arch_kwargs={"num_classes": 10})
    with pytest.raises(ConfigError, match="arch_kwargs"):
        save_model(model, tmp_path / "m", arch=None, arch_kwargs={"num_classes": 3})
    assert not list(tmp_path.iterdir())


USER_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(16, 4)
            self.dec = nn.Linear(4, 16)
            self.head = nn.Linear(16, 3)
            self.head.weight = nn.Parameter(torch.zeros(16, 3).t())  # non-contiguous
            self.tied = nn.Linear(16, 4, bias=False)
            self.tied.weight = self.enc.weight  # shared storage

        def forward(self, x):
            h = torch.relu(self.enc(x.flatten(1))) + self.tied(x.flatten(1))
            return self.head(self.dec(h))


    def make():
        return Tied()


    NOT_CALLABLE = 3
    """
)


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    pkg = tmp_path / "userpkg_advlab_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "userpkg_advlab_test.models"


def test_user_factory_roundtrip_with_tied_and_noncontiguous_weights(
    user_module: str, tmp_path: Path
) -> None:
    factory = resolve_factory(f"{user_module}:make")
    torch.manual_seed(0)
    model = factory().eval()
    with torch.no_grad():
        model.head.weight.normal_()
    path = save_model(model, tmp_path / "own", arch=None, dataset="toy")
    loaded, meta = load_model(path, factory=f"{user_module}:make")
    x = torch.rand(4, 1, 4, 4)
    assert torch.equal(loaded(x), model(x))
    assert meta["arch"] is None and meta["dataset"] == "toy"
    with pytest.raises(CheckpointError, match="factory"):
        load_model(path)  # no arch in the metadata, no factory


def test_state_dict_pt_loads_with_factory_only(user_module: str, tmp_path: Path) -> None:
    model = resolve_factory(f"{user_module}:make")().eval()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    loaded, meta = load_model(tmp_path / "sd.pt", factory=f"{user_module}:make")
    x = torch.rand(2, 16)
    assert torch.equal(loaded(x), model(x)) and meta["format"] == "state_dict"
    with pytest.raises(CheckpointError, match="factory"):
        load_model(tmp_path / "sd.pt")


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no_colon_here", "package.module:function"),
        ("a:b:c", "package.module:function"),
        (":make", "package.module:function"),
        ("advlab_no_such_module_xyz:make", "cannot import"),
        ("os:no_such_function_xyz", "no attribute"),
        ("{mod}:NOT_CALLABLE", "not a callable"),
    ],
)
def test_resolve_factory_errors(spec: str, match: str, user_module: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_factory(spec.format(mod=user_module))


def test_factory_must_return_a_module(tmp_path: Path, user_module: str) -> None:
    save_model(build_model("mlp", in_shape=(1, 4, 4)), tmp_path / "m", arch=None)
    with pytest.raises(ConfigError, match=r"nn\.Module"):
        load_model(tmp_path / "m", factory="os:getcwd")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace/save
def test_torchscript_loads_as_is(tmp_path: Path) -> None:
    model = build_model("wong-mnist", seed=0).eval()
    torch.jit.save(torch.jit.trace(model, torch.rand(1, 1, 28, 28)), tmp_path / "scripted.pt")
    loaded, meta = load_model(tmp_path / "scripted.pt")
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(loaded(x), model(x)) and meta["format"] == "torchscript"
    assert not loaded.training


def test_pickled_module_refused_unless_allowed(tmp_path: Path) -> None:
    model = build_model("mlp", in_shape=(1, 4, 4), seed=0).eval()
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match="--unsafe-allow-pickle") as err:
        load_model(tmp_path / "whole.pt")
    assert "executes code" in str(err.value)
    loaded, meta = load_model(tmp_path / "whole.pt", allow_unsafe_pickle=True)
    x = torch.rand(2, 1, 4, 4)
    assert torch.equal(loaded(x), model(x)) and meta["format"] == "pickle"


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nothing-here"):
        load_model(tmp_path / "nothing-here.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nothing-here.pt")


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save_model(build_model("mlp", in_shape=(1, 8, 8), seed=0), tmp_path / "m", arch="mlp",
                      arch_kwargs={"in_shape": (1, 8, 8)})  # fmt: skip


@pytest.mark.parametrize("keep", [0, 5, 100, -40])
def test_truncated_safetensors_is_reported(saved: Path, keep: int) -> None:
    data = saved.read_bytes()
    saved.write_bytes(data[:keep])
    saved.with_suffix(".json").unlink()  # no checksum to compare: the format itself must fail
    with pytest.raises(CheckpointError, match="corrupt or truncated; re-create it"):
        load_model(saved)


def test_sha_mismatch_is_reported(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    data[-3] ^= 0xFF  # same size, valid framing: only the checksum can tell
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(saved)


def test_corrupt_json_is_reported(saved: Path) -> None:
    saved.with_suffix(".json").write_text('{"arch": "mlp", ')
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(saved)


def test_garbage_pt_is_reported(tmp_path: Path) -> None:
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path / "bad.pt", factory="os:getcwd")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "text.pt")


def test_mismatched_architecture_names_the_keys(saved: Path) -> None:
    meta_path = saved.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["arch_kwargs"]["hidden"] = [100]  # one hidden layer fewer than the weights have
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"unexpected keys: 6\.bias, 6\.weight"):
        load_model(saved)


def test_a_model_of_your_own_saves_without_arch_and_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path of docs/audit-your-model.md: save_model(model, stem) with no arch; a factory in
    the current folder is found without PYTHONPATH; a missing factory is named precisely."""
    (tmp_path / "mymodels_advlab_cwd.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    model = resolve_factory("mymodels_advlab_cwd:make")().eval()  # found in the current folder
    assert str(tmp_path) not in sys.path  # the lookup left sys.path as it was
    path = save_model(model, "my_model")
    assert path == Path("my_model.safetensors")
    with pytest.raises(CheckpointError, match=r'"arch": null.*--factory'):
        load_model(path)
    (tmp_path / "my_model.json").unlink()
    with pytest.raises(CheckpointError, match=r"no my_model\.json beside it"):
        load_model(path)
    loaded, _ = load_model(path, factory="mymodels_advlab_cwd:make")
    x = torch.rand(2, 1, 4, 4)
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(ConfigError, match="run from the folder that holds it"):
        resolve_factory("no_such_module_advlab:make")
