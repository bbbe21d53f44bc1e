"""step.export / step.load_sparse: round trips, both formats, and every refusal."""

import copy
import json
import os
import pickle

import pytest
import torch
from helpers import DTYPES, HALF_DTYPES, assert_bits_equal
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import step
from step.export.format import (
    COMPRESSED_WEIGHTS,
    DENSE_SIDECAR,
    DENSE_WEIGHTS,
    positive_zeros,
    sha256,
)
from step.nn import SparseConv2d, SparseLinear, SparseWeightMixin

SPARSE = ("conv", "fc1", "fc2", "fc3")
PATTERNS = {
    "2:4": {},
    "1:4": {"n": 1, "m": 4},
    "2:8": {"n": 2, "m": 8},
    "mixed": {"overrides": {"fc2": (1, 4), "fc3": (2, 8)}},  # fc1, conv stay 2:4
}


class Net(nn.Module):
    """Embedding tied to a dense output layer, a Conv2d and three Linears. In half
    precision 2:4, fc1 (64 x 64) takes the cutlass_2to4 layout; fc2 (48 rows), fc3 (K=48)
    and the conv fall back to nm_positions."""

    def __init__(self, vocab=16, hidden=48):
        super().__init__()
        self.embed = nn.Embedding(vocab, 64)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, hidden)
        self.fc3 = nn.Linear(hidden, 64)
        self.norm = nn.LayerNorm(64)
        self.out = nn.Linear(64, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens):
        h = self.embed(tokens)
        b, t, d = h.shape
        img = h.reshape(b, t, 8, d // 8).transpose(1, 2)  # [b, 8 channels, t, 8]
        h = h + torch.relu(self.conv(img)).transpose(1, 2).reshape(b, t, d)
        h = torch.relu(self.fc1(h))
        h = self.norm(h + self.fc3(torch.relu(self.fc2(h))))
        return self.out(h)


def sparse_layers(model):
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, SparseWeightMixin)}


def trained(dtype=torch.float32, pattern="2:4", mode="ste", **net_kwargs):
    """A sparsified Net as after training: mask learning (``ste``), ASP's random fixed
    masks (``fixed``), untouched (``dense``) or frozen (``frozen``)."""
    model = step.sparsify(Net(**net_kwargs).to(dtype), **PATTERNS[pattern])
    assert sorted(sparse_layers(model)) == sorted(SPARSE)  # out: tied and last, dense
    for layer in sparse_layers(model).values():
        if mode in ("ste", "frozen"):
            layer.sparsity.set_mode("ste")
        elif mode == "fixed":
            random_nm = layer.sparsity.compute_mask(torch.randn_like(layer.weight))
            layer.sparsity.set_mode("fixed", random_nm)
    if mode == "frozen":
        step.freeze(model)
    return model.eval()


def tokens(vocab=16):
    return torch.randint(vocab, (2, 8))


@torch.no_grad()
def masked_weights(model):
    """The weights the masked training model computes with, +0.0 where pruned."""
    return {
        name: torch.where(layer.current_mask(), layer.weight, 0)
        for name, layer in sparse_layers(model).items()
    }


def make_target(kind, dtype, pattern="2:4", **net_kwargs):
    """A model to load into: a fresh dense one, or one already sparsified / frozen (with
    other weights and masks than the exported model)."""
    if kind == "dense":
        return Net(**net_kwargs).to(dtype)
    model = step.sparsify(Net(**net_kwargs).to(dtype), **PATTERNS[pattern])
    return step.freeze(model) if kind == "frozen" else model


def snapshot(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = {name: type(mod) for name, mod in model.named_modules()}
    modes = {
        name: (layer.sparsity.mode, layer.sparsity.mask, layer.frozen)
        for name, layer in sparse_layers(model).items()
    }
    return state, kinds, modes


def assert_unchanged(model, before):
    state, kinds, modes = before
    after = model.state_dict()
    assert after.keys() == state.keys()
    for key, t in state.items():
        assert_bits_equal(after[key], t)
    assert {name: type(mod) for name, mod in model.named_modules()} == kinds
    for name, layer in sparse_layers(model).items():
        mode, mask, frozen = modes[name]
        assert (layer.sparsity.mode, layer.frozen) == (mode, frozen)
        assert layer.sparsity.mask is mask


def assert_close_half(out, ref):
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("format", ["dense", "compressed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("target", ["dense", "sparsified", "frozen"])
def test_round_trip(tmp_path, format, dtype, pattern, target):
    """The loaded model computes as the masked training model (fp32: bit for bit)."""
    model = trained(dtype, pattern)
    x = tokens()
    with torch.no_grad():
        ref = model(x)
    report = step.export(model, tmp_path, format=format)
    assert report.format == format and report.sparse_layers == len(SPARSE)
    assert all(f.is_file() for f in report.files)

    fresh = make_target(target, dtype, pattern)
    loaded = step.load_sparse(tmp_path, model=fresh)
    assert loaded is fresh and not loaded.training
    assert loaded.out.weight is loaded.embed.weight  # still tied
    assert type(loaded.out) is nn.Linear and type(loaded.conv) is SparseConv2d
    assert all(type(getattr(loaded, name)) is SparseLinear for name in ("fc1", "fc2", "fc3"))
    with torch.no_grad():
        out = loaded(x)
    if dtype == torch.float32:
        assert torch.equal(out, ref)
    else:
        assert_close_half(out, ref)

    layers = sparse_layers(loaded)
    for name, w in masked_weights(model).items():
        layer, src = layers[name], getattr(model, name)
        assert layer.frozen and layer.sparsity.mode == "fixed"
        assert (layer.sparsity.n, layer.sparsity.m) == (src.sparsity.n, src.sparsity.m)
        assert torch.equal(layer.sparsity.mask, src.current_mask())
        assert_bits_equal(layer.weight.detach(), w)
    for key in ("embed.weight", "fc1.bias", "norm.weight", "norm.bias"):
        assert_bits_equal(loaded.state_dict()[key], model.state_dict()[key])
    half_24 = dtype in HALF_DTYPES and pattern in ("2:4", "mixed")
    assert layers["fc1"].compressed_weight().layout == (
        "cutlass_2to4" if half_24 else "nm_positions"
    )
    assert layers["fc2"].compressed_weight().layout == "nm_positions"


@pytest.mark.parametrize("format", ["dense", "compressed"])
@pytest.mark.parametrize("mode", ["ste", "fixed", "dense", "frozen"])
def test_round_trip_keeps_the_mask_in_force(tmp_path, format, mode):
    """STEP's learned mask, ASP's fixed (non-magnitude) mask, the magnitude mask of a
    dense-mode layer, a frozen model: each exports the weights it computes with."""
    model = trained(torch.float32, "mixed", mode)
    x = tokens()
    with torch.no_grad():  # a dense-mode layer computes unmasked: compare with it frozen
        ref = (step.freeze(copy.deepcopy(model)) if mode == "dense" else model)(x)
    step.export(model, tmp_path, format=format)
    loaded = step.load_sparse(tmp_path, model=Net())
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)
    for name, w in masked_weights(model).items():
        assert_bits_equal(getattr(loaded, name).weight.detach(), w)


@pytest.mark.parametrize("format", ["dense", "compressed"])
def test_load_from_the_weights_file(tmp_path, format):
    """load_sparse takes the export directory or its .safetensors file."""
    model = trained(torch.float16, "mixed")
    step.export(model, tmp_path, format=format)
    file = tmp_path / (DENSE_WEIGHTS if format == "dense" else COMPRESSED_WEIGHTS)
    x = tokens()
    a = step.load_sparse(tmp_path, model=Net().half())
    b = step.load_sparse(file, model=Net().half())
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


# ------------------------------------------------------------------------ dense format


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dense_format_is_plain_safetensors(tmp_path, dtype):
    """model.safetensors + sparsity.json: exact N:M along each layer's axis, +0.0 where
    pruned, kept values bit for bit (a kept -0.0 as +0.0); plain load_state_dict of the
    original class."""
    model = trained(dtype, "mixed")
    with torch.no_grad():
        model.fc1.weight[0, :4] = -0.0  # an all -0.0 group: two kept -0.0, two pruned
        model.fc1.weight[1, :4] = torch.tensor([-1.0, -2.0, -3.0, -4.0])
    x = tokens()
    with torch.no_grad():
        ref = model(x)
    step.export(model, tmp_path, format="dense")
    assert sorted(os.listdir(tmp_path)) == sorted([DENSE_WEIGHTS, DENSE_SIDECAR])

    sidecar = json.loads((tmp_path / DENSE_SIDECAR).read_text())
    assert sidecar["format"] == "step-sparsity-dense" and sidecar["format_version"] == 1
    assert sidecar["tensors"] == {
        "conv.weight": {"n": 2, "m": 4, "axis": 1},  # input channels
        "fc1.weight": {"n": 2, "m": 4, "axis": 1},
        "fc2.weight": {"n": 1, "m": 4, "axis": 1},
        "fc3.weight": {"n": 2, "m": 8, "axis": 1},
    }
    assert sidecar["aliases"] == {"out.weight": "embed.weight"}
    plan = {name: (spec["n"], spec["m"]) for name, spec in sidecar["plan"]["layers"].items()}
    assert plan == {"conv": (2, 4), "fc1": (2, 4), "fc2": (1, 4), "fc3": (2, 8)}

    state = load_file(tmp_path / DENSE_WEIGHTS)
    assert "out.weight" not in state  # tied: stored once
    assert set(sidecar["sha256"]) == set(state)
    for name, spec in sidecar["tensors"].items():
        layer, t = getattr(model, name.removesuffix(".weight")), state[name]
        mask = layer.current_mask()
        assert t.dtype == dtype and t.shape == layer.weight.shape
        pruned = t[~mask]
        assert (pruned == 0).all() and not torch.signbit(pruned).any()  # +0.0, never -0.0
        assert_bits_equal(t[mask], positive_zeros(layer.weight.detach()[mask]))
        groups = t.movedim(spec["axis"], -1).reshape(-1, spec["m"])
        assert ((groups != 0).sum(1) <= spec["n"]).all()
        assert (mask.movedim(spec["axis"], -1).reshape(-1, spec["m"]).sum(1) == spec["n"]).all()
        assert sidecar["sha256"][name] == sha256(t)
    assert not torch.signbit(state["fc1.weight"][0, :4]).any()  # kept -0.0 written +0.0
    for t in state.values():
        assert not ((t == 0) & torch.signbit(t)).any()  # no -0.0 anywhere
    conv_groups = state["conv.weight"].movedim(1, -1).reshape(-1, 4)
    assert ((conv_groups != 0).sum(1) == 2).all()  # random weights: exactly 2 of 4

    plain = Net().to(dtype)
    for alias, target in sidecar["aliases"].items():
        state[alias] = state[target]
    plain.load_state_dict(state, strict=True)
    assert not sparse_layers(plain)
    with torch.no_grad():
        out = plain(x)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)


def test_compressed_header(tmp_path):
    """sparse_model.safetensors: values + meta / indices per sparse weight, its entry in
    the header, tied tensors stored once."""
    model = trained(torch.float16, "mixed")
    step.export(model, tmp_path, format="compressed")
    assert os.listdir(tmp_path) == [COMPRESSED_WEIGHTS]
    with safe_open(tmp_path / COMPRESSED_WEIGHTS, "pt") as f:
        header, names = f.metadata(), set(f.keys())
    assert header["format"] == "step-sparsity-compressed" and header["format_version"] == "1"
    sparse = json.loads(header["sparse"])
    assert sparse["fc1.weight"] == {"n": 2, "m": 4, "shape": [64, 64], "dtype": "float16",
                                    "layout": "cutlass_2to4", "axis": 1}  # fmt: skip
    assert sparse["conv.weight"] == {"n": 2, "m": 4, "shape": [8, 8, 3, 3], "dtype": "float16",
                                     "layout": "nm_positions", "axis": 1}  # fmt: skip
    assert {k: (v["n"], v["m"], v["layout"]) for k, v in sparse.items() if k[:3] == "fc2"} == {
        "fc2.weight": (1, 4, "nm_positions")
    }
    assert sparse["fc3.weight"]["layout"] == "nm_positions" and sparse["fc3.weight"]["m"] == 8
    assert json.loads(header["aliases"]) == {"out.weight": "embed.weight"}
    assert {"fc1.weight.values", "fc1.weight.meta", "fc2.weight.indices"} <= names
    assert not names & {"fc1.weight", "conv.weight", "out.weight", "fc1.weight.indices"}
    assert set(json.loads(header["sha256"])) == names


# ------------------------------------------------------------------------ size


@pytest.mark.parametrize(
    "dtype,n,m,layout,ratio",
    [
        (torch.float16, 2, 4, "cutlass_2to4", 0.5625),  # values 1/2 + metadata 1/16
        (torch.bfloat16, 2, 4, "cutlass_2to4", 0.5625),
        (torch.float32, 2, 4, "nm_positions", 0.625),  # values 1/2 + one byte per value
        (torch.float16, 1, 4, "nm_positions", 0.375),
        (torch.float16, 2, 8, "nm_positions", 0.375),
    ],
)
def test_compressed_size(tmp_path, dtype, n, m, layout, ratio):
    """The report's per-layer rows and totals; the file is that much smaller on disk."""
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 64)).to(dtype)  # fmt: skip
    step.sparsify(model, n=n, m=m, include=["0", "2", "4"])
    report = step.export(model, tmp_path / "c", format="compressed")
    dense = step.export(model, tmp_path / "d", format="dense")
    assert [row[:3] for row in report.layers] == [
        (f"{i}.weight", f"{n}:{m}", layout) for i in (0, 2, 4)
    ]
    for name, _, _, dense_bytes, stored in report.layers:
        weight = model.get_submodule(name.removesuffix(".weight")).weight
        assert dense_bytes == weight.numel() * weight.element_size()
        assert stored == dense_bytes * ratio
    assert report.dense_bytes == dense.tensor_bytes == dense.dense_bytes
    assert dense.ratio == 1.0 and all(row[3] == row[4] for row in dense.layers)
    assert report.ratio == pytest.approx(ratio, abs=0.01)
    assert str(report).startswith("compressed export to ")
    on_disk = os.path.getsize(tmp_path / "c" / COMPRESSED_WEIGHTS)
    assert on_disk / os.path.getsize(tmp_path / "d" / DENSE_WEIGHTS) < ratio + 0.03
    if (dtype, n, m) == (torch.float16, 2, 4):
        assert report.ratio < 0.6


# ------------------------------------------------------------------------ export itself


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("mode", ["ste", "fixed", "frozen"])
def test_export_does_not_change_the_model(tmp_path, dtype, mode):
    model = trained(dtype, "mixed", mode)
    model.train()
    before = snapshot(model)
    step.export(model, tmp_path / "d", format="dense")
    step.export(model, tmp_path / "c", format="compressed")
    assert_unchanged(model, before)
    assert model.training and model.out.weight is model.embed.weight


def test_no_pickle(tmp_path, monkeypatch):
    """Only .safetensors and .json are written, and loading never unpickles."""
    model = trained(torch.float16, "mixed")
    for format in ("dense", "compressed"):
        step.export(model, tmp_path / format, format=format)
        files = list((tmp_path / format).rglob("*"))
        assert files and all(f.suffix in (".safetensors", ".json") for f in files)

    def refuse(*args, **kwargs):
        raise AssertionError("load_sparse unpickled something")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    for format in ("dense", "compressed"):
        assert sparse_layers(step.load_sparse(tmp_path / format, model=Net().half()))


def test_export_refusals(tmp_path):
    with pytest.raises(ValueError, match="no sparse layers"):
        step.export(Net(), tmp_path)
    with pytest.raises(ValueError, match="format must be one of"):
        step.export(trained(), tmp_path, format="pickle")
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------ refusals


def rewrite_compressed(path, tensors=None, header=None, fix_checksums=True):
    """Edit sparse_model.safetensors: ``tensors(dict)`` / ``header(dict)`` change them
    in place; the checksums are recomputed so only the check under test can object."""
    file = path / COMPRESSED_WEIGHTS
    with safe_open(file, "pt") as f:
        meta, data = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    if tensors:
        tensors(data)
    if header:
        header(meta)
    if fix_checksums:
        meta["sha256"] = json.dumps({k: sha256(t) for k, t in data.items()})
    save_file(data, file, metadata=meta)


def rewrite_dense(path, tensors=None, sidecar=None):
    """Edit model.safetensors / sparsity.json, checksums recomputed."""
    data = load_file(path / DENSE_WEIGHTS)
    side = json.loads((path / DENSE_SIDECAR).read_text())
    if tensors:
        tensors(data)
    if sidecar:
        sidecar(side)
    side["sha256"] = {k: sha256(t) for k, t in data.items()}
    save_file(data, path / DENSE_WEIGHTS, metadata={"format": "pt"})
    (path / DENSE_SIDECAR).write_text(json.dumps(side))


def set_nibble(code):
    def edit(data):
        meta = data["fc1.weight.meta"]
        word = (int(meta[3, 1]) & 0xFFFF & ~0xF0) | code << 4  # bits 4..7
        meta[3, 1] = word - 0x10000 if word >= 0x8000 else word

    return edit


def set_index(row, values):
    def edit(data):
        data["fc2.weight.indices"][row, :2] = torch.tensor(values, dtype=torch.uint8)

    return edit


def set_entry(key, **changes):
    def edit(meta):
        sparse = json.loads(meta["sparse"])
        sparse[key].update(changes)
        meta["sparse"] = json.dumps(sparse)

    return edit


def truncate(path, format):
    file = path / (COMPRESSED_WEIGHTS if format == "compressed" else DENSE_WEIGHTS)
    data = file.read_bytes()
    file.write_bytes(data[: len(data) - 100])


def flip_data_byte(path, format):
    """Corrupt one byte of tensor data (not the header); checksums left as they were."""
    file = path / (COMPRESSED_WEIGHTS if format == "compressed" else DENSE_WEIGHTS)
    data = bytearray(file.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start + (len(data) - start) // 2] ^= 0x40
    file.write_bytes(bytes(data))


def halve_values(data):
    data["fc1.weight.values"] = data["fc1.weight.values"][:, :16].contiguous()


def densify(data):
    data["fc1.weight"] = torch.randn_like(data["fc1.weight"]).abs() + 1


# name: (format, edit(path), target kind / Net kwargs / dtype, message)
REFUSALS = {
    "missing tensor": (
        "compressed", lambda p: rewrite_compressed(p, tensors=lambda d: d.pop("fc2.bias")),
        {}, r"missing tensors the model needs: \['fc2\.bias'\]",
    ),
    "missing alias": (
        "compressed", lambda p: rewrite_compressed(p, header=lambda h: h.update(aliases="{}")),
        {}, r"missing tensors the model needs: \['out\.weight'\]",
    ),
    "missing dense tensor": (
        "dense", lambda p: rewrite_dense(p, tensors=lambda d: d.pop("norm.bias")),
        {}, r"missing tensors the model needs: \['norm\.bias'\]",
    ),
    "extra tensor": (
        "compressed",
        lambda p: rewrite_compressed(p, tensors=lambda d: d.update(bogus=torch.zeros(3))),
        {}, r"tensors the model does not have: \['bogus'\]",
    ),
    "wrong shape (dense tensor)": (
        "compressed", None, {"vocab": 20},
        r"tensor 'embed\.weight' has shape \(16, 64\) but the model's is \(20, 64\)",
    ),
    "wrong shape (sparse weight)": (
        "dense", None, {"hidden": 32},
        r"tensor 'fc2\.weight' has shape \(48, 64\) but the model's is \(32, 64\)",
    ),
    "wrong shape (values)": (
        "compressed",
        lambda p: rewrite_compressed(p, tensors=halve_values),
        {}, r"'fc1\.weight\.values' should be torch\.float16 \(64, 32\)",
    ),
    "wrong dtype": (
        "compressed", None, {"dtype": torch.float32},
        r"tensor 'conv\.weight' is torch\.float16 but the model's is torch\.float32",
    ),
    "unknown format version (compressed)": (
        "compressed",
        lambda p: rewrite_compressed(p, header=lambda h: h.update(format_version="2")),
        {}, r"format_version '2' is unknown",
    ),
    "unknown format version (dense)": (
        "dense", lambda p: rewrite_dense(p, sidecar=lambda s: s.update(format_version=2)),
        {}, r"sparsity\.json: format_version 2 is unknown",
    ),
    "2:4 metadata code 0b0000": (
        "compressed", lambda p: rewrite_compressed(p, tensors=set_nibble(0b0000)),
        {}, r"fc1\.weight\.meta holds invalid 2:4 metadata: code 0x0 at word \(3, 1\)",
    ),
    "2:4 metadata code 0b0101": (
        "compressed", lambda p: rewrite_compressed(p, tensors=set_nibble(0b0101)),
        {}, r"fc1\.weight\.meta holds invalid 2:4 metadata: code 0x5 at word \(3, 1\)",
    ),
    "nm position >= m": (
        "compressed", lambda p: rewrite_compressed(p, tensors=set_index(5, [0, 4])),
        {}, r"fc2\.weight\.indices: indices hold a position >= m=4",
    ),
    "nm positions not ascending": (
        "compressed", lambda p: rewrite_compressed(p, tensors=set_index(5, [3, 1])),
        {}, r"fc2\.weight\.indices: indices must be strictly ascending",
    ),
    "nm positions repeated": (
        "compressed", lambda p: rewrite_compressed(p, tensors=set_index(0, [2, 2])),
        {}, r"fc2\.weight\.indices: indices must be strictly ascending",
    ),
    "n:m mismatch": (
        "compressed", None, {"sparsified": "1:4"},
        r"conv\.weight is 2:4 in the file but 1:4 in the model",
    ),
    "axis mismatch": (
        "compressed", lambda p: rewrite_compressed(p, header=set_entry("fc2.weight", axis=0)),
        {}, r"fc2\.weight is grouped along axis 0 in the file but the layer groups along axis 1",
    ),
    "dense file not n:m": (
        "dense", lambda p: rewrite_dense(p, tensors=densify),
        {}, r"fc1\.weight is not 2:4 sparse \(a group holds 4 nonzeros\)",
    ),
    "truncated (compressed)": (
        "compressed", lambda p: truncate(p, "compressed"), {}, r"truncated",
    ),
    "truncated (dense)": ("dense", lambda p: truncate(p, "dense"), {}, r"truncated"),
    "corrupted data (compressed)": (
        "compressed", lambda p: flip_data_byte(p, "compressed"),
        {}, r"tensor '[\w.]+' does not match its checksum: the file is corrupted",
    ),
    "corrupted data (dense)": (
        "dense", lambda p: flip_data_byte(p, "dense"),
        {}, r"tensor '[\w.]+' does not match its checksum: the file is corrupted",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusal_leaves_the_model_alone(tmp_path, case):
    """Each bad file is refused with a ValueError naming the problem, before the target
    model changes."""
    format, edit, target_kwargs, message = REFUSALS[case]
    target_kwargs = dict(target_kwargs)
    step.export(trained(torch.float16, "2:4"), tmp_path, format=format)
    if edit is not None:
        edit(tmp_path)
    dtype = target_kwargs.pop("dtype", torch.float16)
    sparsified = target_kwargs.pop("sparsified", None)
    target = Net(**target_kwargs).to(dtype)
    if sparsified:
        step.sparsify(target, **PATTERNS[sparsified])
    before = snapshot(target)
    with pytest.raises(ValueError, match=message):
        step.load_sparse(tmp_path, model=target)
    assert_unchanged(target, before)
    if not sparsified:
        assert not sparse_layers(target)
        assert all(type(getattr(target, name)) is nn.Linear for name in ("fc1", "fc2", "fc3"))
        assert type(target.conv) is nn.Conv2d
    assert target.out.weight is target.embed.weight


def test_missing_export(tmp_path):
    target = Net()
    before = snapshot(target)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        step.load_sparse(tmp_path / "nowhere", model=target)
    with pytest.raises(FileNotFoundError, match="holds no step-sparsity export"):
        step.load_sparse(tmp_path, model=target)
    (tmp_path / DENSE_WEIGHTS).write_bytes(b"")  # no sparsity.json: not an export
    with pytest.raises(FileNotFoundError, match="holds no step-sparsity export"):
        step.load_sparse(tmp_path, model=target)
    assert_unchanged(target, before)


@pytest.mark.parametrize("format", ["dense", "compressed"])
def test_no_model_needs_config_json(tmp_path, format):
    step.export(trained(), tmp_path, format=format)
    with pytest.raises(ValueError, match="has no config.json .* pass model="):
        step.load_sparse(tmp_path)


# ------------------------------------------------------------------------ semi-structured


def half_linears(dtype):
    """Two 2:4 linear layers of cutlass shapes (rows % 32 == 0, K % 64 == 0), mask
    learning mode."""
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64)).to(dtype)
    step.sparsify(model, include=["0", "2"])
    for layer in sparse_layers(model).values():
        layer.sparsity.set_mode("ste")
    return model.eval()


def test_semi_structured_needs_a_gpu(tmp_path):
    step.export(half_linears(torch.float16), tmp_path, format="compressed")
    target = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64)).half()
    with pytest.raises(ValueError, match="sm80"):
        step.load_sparse(tmp_path, model=target, semi_structured=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("format", ["dense", "compressed"])
def test_semi_structured_on_gpu(tmp_path, dtype, format):
    model = half_linears(dtype)
    step.export(model, tmp_path, format=format)
    target = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64)).to(dtype)
    loaded = step.load_sparse(tmp_path, model=target, device="cuda", semi_structured=True)
    for i in (0, 2):
        assert type(loaded[i]) is nn.Linear
        assert isinstance(loaded[i].weight, torch.sparse.SparseSemiStructuredTensor)
    x = torch.randn(16, 128, dtype=dtype)
    with torch.no_grad():
        ref = model.cuda()(x.cuda())
        out = loaded(x.cuda())
    assert out.dtype == dtype and out.device.type == "cuda"
    assert_close_half(out, ref)
