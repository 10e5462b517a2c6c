"""ONNX translations splitfx adds to the dynamo exporter's own (``custom_translation_table``).

The exporter translates ``scaled_dot_product_attention`` for 4-D query, key and value only
(microsoft/onnxscript#2558 aligned onnxscript with torch.onnx's assertion), while PyTorch accepts any
number of leading batch dims: Hiera's mask-unit attention is 5-D, (B, heads, windows, tokens, dim),
and without this its dynamo export fails and its TorchScript fallback has no antialiased bicubic
resize. The translation flattens the leading dims into one and calls the exporter's own 4-D one.
"""
from __future__ import annotations

from typing import Any

import torch
from onnxscript import ir
from onnxscript import opset18 as op
from onnxscript.function_libs.torch_lib.ops.nn import aten_scaled_dot_product_attention as attention_4d


def _as_4d(t: Any) -> Any:
    """(N, …, H, L, E) → (N·…, H, L, E), its rank recorded so the 4-D translation accepts it."""
    flat = op.Reshape(t, op.Concat(op.Constant(value_ints=[-1]), op.Shape(t, start=-3), axis=0))
    flat.shape = ir.Shape([None, *t.shape[-3:]])
    return flat


def attention_nd(query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0,
                 is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> Any:
    """``aten.scaled_dot_product_attention`` for query, key and value of rank 3 and up with the same
    leading dims. Unless the inputs are 4-D, a mask must have rank ≤ 3: it then spans only the last
    three dims, (H, L, S), which flattening keeps, and broadcasts over the flattened one as it did over
    the dims flattened into it (SAM's ViT: 3-D inputs and a 3-D relative-position bias). Anything else
    raises, and the exporter reports it (splitfx then tries TorchScript)."""
    if len(query.shape) == 4:
        return attention_4d(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    if attn_mask is not None and len(attn_mask.shape) > 3:
        raise NotImplementedError(f"a {len(attn_mask.shape)}-D attention mask with {len(query.shape)}-D inputs")
    if not query.shape[:-3] == key.shape[:-3] == value.shape[:-3]:
        raise NotImplementedError("query, key and value broadcast over their leading dims")
    out = attention_4d(_as_4d(query), _as_4d(key), _as_4d(value), attn_mask=attn_mask, dropout_p=dropout_p,
                       is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    return op.Reshape(out, op.Concat(op.Shape(query, end=-1), op.Shape(value, start=-1), axis=0))


TRANSLATIONS = {torch.ops.aten.scaled_dot_product_attention.default: attention_nd}
