"""Exports and loading lose nothing and are never silently wrong: no -0.0 written, files
readable as the umask says, a layer missing from the metadata refused, a failed load
leaving the model as it was, NaN bits kept by every backend, invalid positions refused."""

import json
import os

import pytest
import torch
from helpers import DTYPES, HALF_DTYPES, assert_bits_equal, random_weights
from safetensors import safe_open
from step.kernels.float_bits import MAGNITUDE_BITS, bits_view
from test_export import (
    Net,
    make_target,
    rewrite_compressed,
    rewrite_dense,
    sparse_layers,
    tokens,
    trained,
)

import step
from step.export import verify_export
from step.export.format import COMPRESSED_WEIGHTS, DENSE_WEIGHTS
from step.nn.sparsity import sparsity_of

FORMATS = ("dense", "compressed")


def tiny_gpt2():
    """A Hugging Face model (config.json, a plan in its config), with its own config."""
    import transformers

    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=64, vocab_size=64,
                                      n_positions=16)  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def negative_zeros(t):
    return (t == 0) & torch.signbit(t)


def file_tensors(path):
    """Every tensor of an export's safetensors file, by name."""
    file = path / (COMPRESSED_WEIGHTS if (path / COMPRESSED_WEIGHTS).is_file() else DENSE_WEIGHTS)
    with safe_open(file, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@torch.no_grad()
def with_negative_zeros(model):
    """-0.0 in kept weights (a whole group of fc1, so two of them are kept), in a
    conv weight, a bias, a norm weight and the embedding."""
    model.fc1.weight[0, :4] = -0.0
    model.conv.weight[0, :, 0, 0] = -0.0
    model.fc2.bias[:3] = -0.0
    model.norm.weight[1] = -0.0
    model.embed.weight[2, :5] = -0.0
    return model


# ------------------------------------------------------------------------ -0.0


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_exports_never_hold_negative_zero(tmp_path, format, dtype):
    model = with_negative_zeros(trained(dtype, "mixed"))
    x = tokens()
    with torch.no_grad():
        ref = model(x)
    step.export(model, tmp_path, format=format)
    stored = file_tensors(tmp_path)
    floats = [t for t in stored.values() if t.is_floating_point()]
    assert len(floats) >= 8 and not any(negative_zeros(t).any() for t in floats)
    assert torch.signbit(model.fc1.weight[0, :4]).all()  # the model is not changed
    loaded = step.load_sparse(tmp_path, model=Net().to(dtype))
    for t in loaded.state_dict().values():
        assert not negative_zeros(t).any()
    assert (loaded.fc1.weight[0, :4] == 0).all() and (loaded.fc2.bias[:3] == 0).all()
    with torch.no_grad():  # -0.0 and +0.0 are equal: the model computes the same
        torch.testing.assert_close(loaded(x).float(), ref.float(), rtol=2e-2, atol=2e-2)


def put_negative_zeros(data):
    """-0.0 written into a file as an older step-sparsity (or another tool) might."""
    for name, t in data.items():
        if t.is_floating_point() and name.split(".")[-1] in ("values", "bias", "weight"):
            t.view(-1)[: max(1, t.numel() // 7)] = -0.0


@pytest.mark.parametrize("format", FORMATS)
def test_load_reads_negative_zero_as_positive(tmp_path, format):
    """The documented choice: load_sparse normalises (as the exports do), in both
    formats, for sparse and dense tensors alike."""
    step.export(trained(torch.float16, "mixed"), tmp_path, format=format)
    if format == "dense":
        rewrite_dense(tmp_path, tensors=put_negative_zeros)
    else:
        rewrite_compressed(tmp_path, tensors=put_negative_zeros)
    assert sum(int(negative_zeros(t).sum()) for t in file_tensors(tmp_path).values()) > 100
    loaded = step.load_sparse(tmp_path, model=Net().half())
    state = loaded.state_dict()
    assert not any(negative_zeros(t).any() for t in state.values())
    assert (state["fc2.bias"][: 48 // 7] == 0).all()
    for layer in sparse_layers(loaded).values():
        cw = layer.compressed_weight() if layer.LINEAR_LIKE else None
        assert cw is None or not negative_zeros(cw.values).any()
    assert verify_export(tmp_path) == 4


# ------------------------------------------------------------------------ permissions


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
@pytest.mark.parametrize("format", FORMATS)
def test_files_follow_the_umask(tmp_path, format, umask):
    model = step.sparsify(tiny_gpt2())
    old = os.umask(umask)
    try:
        report = step.export(model, tmp_path / "out", format=format)
    finally:
        os.umask(old)
    suffixes = {f.suffix for f in report.files}
    assert suffixes == {".safetensors", ".json"}
    for f in report.files:
        assert os.stat(f).st_mode & 0o777 == 0o666 & ~umask, f


def test_an_existing_file_keeps_its_mode(tmp_path):
    model = trained()
    step.export(model, tmp_path, format="compressed")
    os.chmod(tmp_path / COMPRESSED_WEIGHTS, 0o640)
    step.export(model, tmp_path, format="compressed")
    assert os.stat(tmp_path / COMPRESSED_WEIGHTS).st_mode & 0o777 == 0o640


# ------------------------------------------------------------------------ incomplete metadata


def drop_tensor_entry(name):
    return lambda side: side["tensors"].pop(name)


def drop_plan_layer(name):
    def edit(meta):
        plan = meta["plan"] if isinstance(meta["plan"], dict) else json.loads(meta["plan"])
        plan["layers"].pop(name)
        meta["plan"] = plan if isinstance(meta["plan"], dict) else json.dumps(plan)

    return edit


def set_plan_nm(name, n, m):
    def edit(side):
        side["plan"]["layers"][name].update(n=n, m=m)

    return edit


INCOMPLETE = {
    "dense: a layer's tensors entry deleted": (
        "dense", lambda p: rewrite_dense(p, sidecar=drop_tensor_entry("fc2.weight")),
        r"sparsity\.json: layer 'fc2' is 1:4 sparse in the plan but its weight 'fc2\.weight' "
        r"has no entry in 'tensors', so it would load as a dense layer",
    ),
    "dense: the conv's tensors entry deleted": (
        "dense", lambda p: rewrite_dense(p, sidecar=drop_tensor_entry("conv.weight")),
        r"layer 'conv' is 2:4 sparse in the plan but its weight 'conv\.weight' has no entry",
    ),
    "dense: a layer's plan entry deleted": (
        "dense", lambda p: rewrite_dense(p, sidecar=drop_plan_layer("fc3")),
        r"'tensors' lists sparse weight\(s\) \['fc3\.weight'\] whose layers are not in the plan",
    ),
    "dense: plan and tensors disagree on N:M": (
        "dense", lambda p: rewrite_dense(p, sidecar=set_plan_nm("fc1", 1, 4)),
        r"layer 'fc1' is 1:4 in the plan but 2:4 in 'tensors'",
    ),
    "compressed: a layer's plan entry deleted": (
        "compressed", lambda p: rewrite_compressed(p, header=drop_plan_layer("fc1")),
        r"the header's 'sparse' entry lists sparse weight\(s\) \['fc1\.weight'\] whose layers",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(INCOMPLETE))
def test_a_layer_missing_from_the_metadata_is_refused(tmp_path, case):
    format, edit, message = INCOMPLETE[case]
    step.export(trained(torch.float16, "mixed"), tmp_path, format=format)
    edit(tmp_path)
    target = Net().half()
    with pytest.raises(ValueError, match=message):
        step.load_sparse(tmp_path, model=target)
    assert not sparse_layers(target)
    with pytest.raises(ValueError, match=message):
        verify_export(tmp_path)


@pytest.mark.parametrize("format", FORMATS)
def test_a_sparse_model_layer_stored_dense_is_refused(tmp_path, format):
    """The model has fc3 sparse, the file (from a model that left it dense) does not:
    its fixed mask would silently apply to the file's dense weight."""
    step.export(step.sparsify(Net().half(), include=["fc1", "fc2"]), tmp_path, format=format)
    target = step.freeze(step.sparsify(Net().half(), include=["fc1", "fc2", "fc3"]))
    before = Snapshot(target)
    with pytest.raises(ValueError, match=r"the model's layer 'fc3' is 2:4 sparse but the file "
                       r"holds 'fc3\.weight' as a dense tensor"):  # fmt: skip
        step.load_sparse(tmp_path, model=target)
    before.assert_same(target)


def test_export_refuses_a_sparse_weight_tied_to_a_dense_one(tmp_path):
    """An embedding stored first, tied to a sparse head: the head could not be pruned
    in the file and would load dense."""
    model = Net()
    step.sparsify(model, include=["fc1", "out"])  # out.weight is embed.weight
    with pytest.raises(ValueError, match=r"out\.weight is N:M sparse but tied to embed\.weight"):
        step.export(model, tmp_path)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------ failed loads


class Snapshot:
    """Everything a failed load must leave as it was: module objects and types,
    parameter and buffer objects, their bits and requires_grad, sparse layers' state,
    the parameters' sparsity attribute, training flags."""

    def __init__(self, model):
        self.modules = dict(model.named_modules(remove_duplicate=False))
        self.params = dict(model.named_parameters(remove_duplicate=False))
        self.buffers = dict(model.named_buffers(remove_duplicate=False))
        self.state = {k: v.clone() for k, v in model.state_dict().items()}
        self.grads = {k: p.requires_grad for k, p in self.params.items()}
        self.attached = {k: sparsity_of(p) for k, p in self.params.items()}
        self.layers = {
            name: (layer.sparsity, layer.sparsity.mode, layer.sparsity.mask, layer.frozen)
            for name, layer in sparse_layers(model).items()
        }  # fmt: skip
        self.training = {name: mod.training for name, mod in self.modules.items()}

    def assert_same(self, model):
        modules = dict(model.named_modules(remove_duplicate=False))
        assert modules.keys() == self.modules.keys()
        assert all(modules[k] is mod for k, mod in self.modules.items())
        params = dict(model.named_parameters(remove_duplicate=False))
        assert params.keys() == self.params.keys()
        assert all(params[k] is p for k, p in self.params.items())
        buffers = dict(model.named_buffers(remove_duplicate=False))
        assert buffers.keys() == self.buffers.keys()
        assert all(buffers[k] is b for k, b in self.buffers.items())
        state = model.state_dict()
        assert state.keys() == self.state.keys()
        for key, t in self.state.items():
            assert_bits_equal(state[key], t)
        assert {k: p.requires_grad for k, p in params.items()} == self.grads
        assert all(sparsity_of(p) is self.attached[k] for k, p in params.items())
        for name, layer in sparse_layers(model).items():
            state_obj, mode, mask, frozen = self.layers[name]
            assert layer.sparsity is state_obj and layer.frozen == frozen
            assert layer.sparsity.mode == mode and layer.sparsity.mask is mask
        assert {name: mod.training for name, mod in modules.items()} == self.training


class Boom(RuntimeError):
    pass


def fail_on_call(monkeypatch, owner, name, call=1):
    """Make ``owner.name`` raise :class:`Boom` on its ``call``-th call (earlier ones
    run), so the load fails part way through changing the model."""
    original = getattr(owner, name)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise Boom(f"injected failure in {name}")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def fail_in_freeze(monkeypatch):
    fail_on_call(monkeypatch, step.nn.SparseWeightMixin, "freeze", call=3)


def fail_after_convert(monkeypatch):
    from step.export import load

    original = load.convert

    def convert_then_fail(*args):
        original(*args)
        raise Boom("injected failure after convert")

    monkeypatch.setattr(load, "convert", convert_then_fail)


def fail_in_to(monkeypatch):
    fail_on_call(monkeypatch, Net, "to")


def fail_in_eager_compress(monkeypatch):
    """A forced backend that cannot run: nm_compress for fc2 and fc3 (the dense format
    compresses on freeze), after the conv and fc1 are frozen."""
    monkeypatch.setenv("STEP_BACKEND", "nm_compress=cuda")


# name: (format, arrange(monkeypatch) or load kwargs, the error)
FAILURES = {
    "unknown device": ("compressed", {"device": "tpu"}, (ValueError, "device 'tpu' is not")),
    "device without hardware": (
        "dense", {"device": "cuda:3"}, (ValueError, "device 'cuda:3' cannot be used"),
    ),
    "device of the wrong type": (
        "dense", {"device": 0.5}, (TypeError, "device must be a str or torch.device"),
    ),
    "semi_structured not a bool": (
        "dense", {"semi_structured": "yes"}, (TypeError, "semi_structured must be True or"),
    ),
    "failure in the 3rd freeze": ("compressed", fail_in_freeze, (Boom, "freeze")),
    "failure after convert": ("dense", fail_after_convert, (Boom, "after convert")),
    "failure in model.to": ("compressed", fail_in_to, (Boom, "to")),
    "forced backend cannot run": (
        "dense", fail_in_eager_compress, (step.BackendError, "forces 'cuda' for step::nm"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("target", ["dense", "sparsified", "frozen"])
@pytest.mark.parametrize("case", list(FAILURES))
def test_failed_load_leaves_the_model_as_it_was(tmp_path, monkeypatch, case, target):
    if case == "device without hardware" and torch.cuda.device_count() > 3:
        pytest.skip("this machine has a cuda:3")
    format, arrange, (error, message) = FAILURES[case]
    step.export(trained(torch.float16, "mixed"), tmp_path, format=format)
    model = make_target(target, torch.float16, "mixed")
    model.train()
    before = Snapshot(model)
    kwargs = arrange if isinstance(arrange, dict) else {}
    if callable(arrange):
        arrange(monkeypatch)
    with pytest.raises(error, match=message):
        step.load_sparse(tmp_path, model=model, **kwargs)
    before.assert_same(model)
    monkeypatch.undo()  # the same model then loads
    loaded = step.load_sparse(tmp_path, model=model)
    assert loaded is model and len(sparse_layers(model)) == 4


def test_failed_load_restores_a_hugging_face_plan(tmp_path, monkeypatch):
    step.export(step.sparsify(tiny_gpt2()), tmp_path)
    target = tiny_gpt2()
    assert not hasattr(target.config, "step_sparsity")
    before = Snapshot(target)
    fail_in_freeze(monkeypatch)
    with pytest.raises(Boom):
        step.load_sparse(tmp_path, model=target)
    before.assert_same(target)
    assert not hasattr(target.config, "step_sparsity")


# ------------------------------------------------------------------------ NaN bits


def special_values(dtype):
    """Bit patterns a decoder must not touch: NaNs (quiet, signalling, negative, with
    payloads), infinities, -0.0, the smallest subnormal."""
    patterns = {
        torch.float32: [0x7FC00000, 0x7F800001, 0xFFC00001, 0x7FFFFFFF, 0x7F800000, 0x80000000, 1],
        torch.float16: [0x7E00, 0x7C01, 0xFE00, 0x7FFF, 0x7C00, 0x8000, 1],
        torch.bfloat16: [0x7FC0, 0x7F81, 0xFFC0, 0x7FFF, 0x7F80, 0x8000, 1],
    }[dtype]
    width, _, _ = MAGNITUDE_BITS[dtype]
    bits = 8 * torch.empty(0, dtype=dtype).element_size()
    signed = [(p + 2 ** (bits - 1)) % 2**bits - 2 ** (bits - 1) for p in patterns]
    return torch.tensor(signed, dtype=width).view(dtype)


def kept_bits(w, mask):
    """``where(mask, w, +0.0)`` computed on the integer bits (no float op)."""
    bits = bits_view(w)
    return torch.where(mask, bits, torch.zeros((), dtype=bits.dtype)).view(w.dtype)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_decompress_keeps_every_bit(backend, dtype):
    w = random_weights((64, 64), dtype) * 1e-3
    special = special_values(dtype)
    slots = torch.randperm(w.numel())[: 5 * special.numel()]
    w.view(-1)[slots] = special.repeat(5)
    with step.use_backend(backend):
        for n, m in ((2, 4), (1, 4), (3, 8)):
            c = step.nm_compress(w, n, m)
            assert_bits_equal(step.nm_decompress(c), kept_bits(w, step.nm_mask(w, n, m)))
        if dtype in HALF_DTYPES:
            values, meta = step.to_sparse24(w)
            assert_bits_equal(step.from_sparse24(values, meta), kept_bits(w, step.nm_mask(w, 2, 4)))
    kept = kept_bits(w, step.nm_mask(w, 2, 4))
    assert torch.isnan(kept).sum() >= 10  # NaNs rank like inf: kept


def test_bfloat16_nan_bits_through_the_reference_scatter():
    """The case of the issue: 0x7FC0 came back as 0xFFFF."""
    values = special_values(torch.bfloat16)[:4].reshape(1, 4)
    indices = torch.tensor([[0, 3, 1, 2]], dtype=torch.uint8)
    with step.use_backend("reference"):
        dense = step.nm_decompress(step.NMCompressed(values, indices, 2, 4))
    assert dense.view(torch.int16)[0, 0] == 0x7FC0
    assert_bits_equal(dense[0, [0, 3, 5, 6]], values[0])


# ------------------------------------------------------------------------ invalid positions


def test_the_ops_trust_positions_as_documented():
    """docs/ops.md: the reference raises on a position >= m and keeps one of two
    repeated positions; Triton drops a position >= m. load_sparse validates."""
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    out_of_range = torch.tensor([[0, 4, 1, 3]], dtype=torch.uint8)
    with step.use_backend("reference"), pytest.raises(RuntimeError, match="out of bounds"):
        torch.ops.step.nm_decompress(values, out_of_range, 2, 4)
    with step.use_backend("triton"):
        dense = torch.ops.step.nm_decompress(values, out_of_range, 2, 4)
    assert dense[0, :4].tolist() == [1.0, 0.0, 0.0, 0.0]  # the value at 4 is dropped
    with pytest.raises(ValueError, match="position >= m=4"):
        step.NMCompressed(values, out_of_range, 2, 4).validate()
    with pytest.raises(ValueError, match="strictly ascending"):
        step.NMCompressed(values, torch.tensor([[1, 1, 0, 2]], dtype=torch.uint8), 2, 4).validate()


def set_meta_code(code, word=(0, 0), shift=0):
    def edit(data):
        meta = data["fc1.weight.meta"]
        value = (int(meta[word]) & 0xFFFF & ~(0xF << shift)) | code << shift
        meta[word] = value - 0x10000 if value >= 0x8000 else value

    return edit


def set_positions(row, positions, name="fc3.weight.indices"):
    def edit(data):
        data[name][row, : len(positions)] = torch.tensor(positions, dtype=torch.uint8)

    return edit


# every 2:4 code with i0 >= i1 (the six legal ones have i0 < i1), and N:M positions
# out of range, repeated or descending, in both the 1:4 and the 2:8 weight
BAD_DATA = {f"2:4 code {code:#x}": (set_meta_code(code, (5, 1), 8), rf"fc1\.weight\.meta holds "
            rf"invalid 2:4 metadata: code {code:#x} at word \(5, 1\) \(bits 8\.\.11\)")
            for code in (0x0, 0x1, 0x2, 0x3, 0x5, 0x6, 0x7, 0xA, 0xB, 0xF)}  # fmt: skip
BAD_DATA.update({
    "1:4 position 4": (set_positions(3, [4], "fc2.weight.indices"),
                       r"fc2\.weight\.indices: indices hold a position >= m=4"),
    "1:4 position 255": (set_positions(0, [255], "fc2.weight.indices"),
                         r"fc2\.weight\.indices: indices hold a position >= m=4"),
    "2:8 position 8": (set_positions(7, [0, 8]), r"fc3\.weight\.indices: .* position >= m=8"),
    "2:8 repeated": (set_positions(2, [5, 5]), r"fc3\.weight\.indices: .* strictly ascending"),
    "2:8 descending": (set_positions(9, [6, 1]), r"fc3\.weight\.indices: .* strictly ascending"),
})  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_load_refuses_invalid_positions_and_metadata(tmp_path, case):
    edit, message = BAD_DATA[case]
    step.export(trained(torch.float16, "mixed"), tmp_path, format="compressed")
    rewrite_compressed(tmp_path, tensors=edit)
    target = Net().half()
    before = Snapshot(target)
    with pytest.raises(ValueError, match=message):
        step.load_sparse(tmp_path, model=target)
    before.assert_same(target)
