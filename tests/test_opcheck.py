"""torch.library.opcheck for every step:: op, on the reference and on Triton."""

import pytest
import torch

import step
from step.ops import OPS


def samples():
    w = torch.randn(64, 128, dtype=torch.float16)
    values, meta = step.to_sparse24(w)
    c = step.nm_compress(torch.randn(3, 24), 2, 6)
    x = torch.randn(3, 128, dtype=torch.float16)
    xf = torch.randn(2, 3, 16, requires_grad=True)
    wf = torch.randn(8, 16, requires_grad=True)
    ps = [torch.randn(8, 16), torch.randn(4, 12)]
    states = ([torch.randn_like(p) for p in ps] for _ in range(2))
    adam = (ps, *states, [torch.rand_like(p) for p in ps],
            1e-3, 0.9, 0.999, 1e-8, 0.01, 3, 2, False, 2e-4, 2, 4, True, [])  # fmt: skip
    return {
        "adam_update": adam,
        "nm_mask": (torch.randn(4, 16), 2, 4),
        "nm_soft_threshold": (torch.randn(2, 4, 16, dtype=torch.float16), 2, 8),
        "nm_compress": (torch.randn(2, 3, 16, dtype=torch.bfloat16), 1, 8),
        "nm_decompress": (c.values, c.indices, 2, 6),
        "sparse24_compress": (w,),
        "sparse24_decompress": (values, meta),
        "sparse24_linear": (x, values, meta, torch.randn(64, dtype=torch.float16)),
        "masked_linear": (xf, wf, 2, 4, torch.randn(8, requires_grad=True), None),
        "masked_linear_dx": (torch.randn(2, 3, 8), wf.detach(), step.nm_mask(wf.detach()), 4),
        "nm_linear": (torch.randn(5, 24), c.values, c.positions, 2, 6, torch.randn(3)),
    }


def test_opcheck_adam_update_with_given_masks():
    ps = [torch.randn(8, 16), torch.randn(4, 12)]
    states = ([torch.randn_like(p) for p in ps] for _ in range(2))
    masks = [torch.rand_like(p) < 0.5 for p in ps]
    args = (ps, *states, [torch.rand_like(p) for p in ps],
            1e-3, 0.9, 0.999, 1e-8, 0.01, 3, 2, False, 2e-4, 0, 0, False, masks)  # fmt: skip
    torch.library.opcheck(torch.ops.step.adam_update, args)


def test_opcheck_masked_linear_with_a_given_mask():
    xf = torch.randn(3, 16, requires_grad=True)
    wf = torch.randn(8, 16, requires_grad=True)
    mask = step.nm_mask(wf.detach(), 2, 4)
    torch.library.opcheck(torch.ops.step.masked_linear, (xf, wf, 2, 4, None, mask))


def test_every_op_has_a_sample():
    assert set(samples()) == set(OPS)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("op", OPS)
def test_opcheck(op, backend):
    implemented = step.ops.dispatch.implementations(op)
    if backend not in implemented:
        pytest.skip(f"step::{op} has no {backend} implementation yet (has {implemented})")
    with step.use_backend(f"{op}={backend}"):
        torch.library.opcheck(getattr(torch.ops.step, op), samples()[op])


def test_torch_compile_fullgraph_through_the_ops():
    """Fake kernels let torch.compile trace every op with no graph break."""

    def pipeline(w, x):
        values, meta = step.to_sparse24(w)
        mask = step.nm_mask(w, 2, 4)
        return step.sparse24_linear(x, values, meta), mask, step.from_sparse24(values, meta)

    w = torch.randn(64, 128, dtype=torch.float16)
    x = torch.randn(5, 128, dtype=torch.float16)
    compiled = torch.compile(pipeline, backend="aot_eager", fullgraph=True)
    for got, want in zip(compiled(w, x), pipeline(w, x), strict=True):
        torch.testing.assert_close(got, want)
