"""Quantized embedding tables: fp16, or int8 with one symmetric scale per row.

int8 (per-row symmetric): scale_r = max_j |x_rj| / 127, q_rj = round(x_rj / scale_r) in [-127, 127],
x ~ q * scale. Per row, because rows differ in norm by orders of magnitude (popular vs rare items);
symmetric, because inner products need no zero-point correction. A zero row keeps scale 1 (q = 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Precision = Literal["fp32", "fp16", "int8"]


@dataclass(frozen=True)
class QuantizedTable:
    precision: Precision
    values: np.ndarray  # float32 | float16 | int8, [rows, d]
    scale: np.ndarray | None  # float32 [rows, 1] for int8, else None


def quantize_rows(table: np.ndarray | torch.Tensor, precision: Precision) -> QuantizedTable:
    x = np.asarray(table.detach().cpu().numpy() if isinstance(table, torch.Tensor) else table, np.float32)
    if precision == "fp32":
        return QuantizedTable(precision, x, None)
    if precision == "fp16":
        if np.abs(x).max(initial=0) > np.finfo(np.float16).max:
            raise ValueError(f"embedding values up to {np.abs(x).max():.3g} overflow fp16")
        return QuantizedTable(precision, x.astype(np.float16), None)
    if precision == "int8":
        peak = np.abs(x).max(axis=1, keepdims=True)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.rint(x / scale), -127, 127).astype(np.int8)
        return QuantizedTable(precision, q, scale)
    raise ValueError(f"precision must be fp32, fp16 or int8, got {precision!r}")


def dequantize(table: QuantizedTable) -> torch.Tensor:
    values = torch.from_numpy(table.values.astype(np.float32))
    return values * torch.from_numpy(table.scale) if table.scale is not None else values


def table_bytes(table: QuantizedTable) -> int:
    """Bytes of the stored table (values + scales)."""
    return int(table.values.nbytes + (table.scale.nbytes if table.scale is not None else 0))
