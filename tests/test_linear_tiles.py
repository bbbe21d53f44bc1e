"""Tile sizes shared by the Triton matmul launchers (step.kernels.linear_io)."""

import torch
from step.kernels.linear_io import decode_rows, token_tile

from step.kernels import linear_io


def test_token_tile_by_token_count_and_dtype():
    assert token_tile(1, torch.float16) == (16, 4)
    assert token_tile(16, torch.bfloat16) == (16, 4)
    assert token_tile(17, torch.float16) == (64, 4)
    assert token_tile(64, torch.float16) == (64, 4)
    assert token_tile(65, torch.float16) == (128, 8)
    # float32's dot runs on the FMA units: smaller tiles, more warps
    assert token_tile(4096, torch.float32) == (64, 8)
    assert token_tile(4, torch.float32) == (16, 8)


def test_decode_rows_give_every_sm_two_programs(monkeypatch):
    assert linear_io._sm_count(torch.device("cpu")) == 0
    assert decode_rows(4096, torch.device("cpu")) == 64  # no SMs: the widest programs
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(linear_io, "_sm_count", lambda device: 132)
    assert decode_rows(4096, gpu) == 16  # 256 programs of 16 rows; 32 rows would be 128
    assert decode_rows(11008, gpu) == 32  # 344 programs
    assert decode_rows(65536, gpu) == 64
    assert decode_rows(4096, gpu, largest=32) == 16
    assert decode_rows(64, gpu) == 16  # too few rows for two per SM at any size
