"""Scale an update back: a LoRA adapter between the current and the candidate one.

What "scale s" means: the merged weights of every adapted module become

    W + (1 - s) * dW_cur + s * dW_cand,        dW = scaling * B @ A,  scaling = alpha / r

(``alpha / sqrt(r)`` with rsLoRA), i.e. the update from the current adapter to the
candidate, taken a fraction ``s`` of the way. LoRA stores dW as the product ``B @ A``
(``B: [out, r]``, ``A: [r, in]``), so the interpolation is done on the products, not
on A and B separately (interpolating the factors would create cross terms):

- **no current adapter** (the base model serves): dW_cur = 0, so the result is the
  candidate with ``B`` multiplied by ``s`` -- same rank, same config, exact.
- **a current adapter**: two products with different A and B are not one product of
  the same rank. We stack them (rank ``r_cur + r_cand``)::

      A = [A_cur; A_cand]                                   [r_cur + r_cand, in]
      B = [(1 - s) * sc_cur * B_cur,  s * sc_cand * B_cand]   [out, r_cur + r_cand]

  and write ``lora_alpha = r`` (scaling 1, the per-adapter scalings folded into B):
  ``B @ A`` is exactly the interpolated delta. With ``max_rank`` set and the stacked
  rank larger, the delta is instead replaced by its best rank-``max_rank``
  approximation (an SVD of the small ``[R, R]`` core after QR of the factors, never of
  the full ``[out, in]`` matrix); the relative error of that truncation is returned.
  The gate uses ``max_rank = max(r_cur, r_cand)`` so that repeated scale-backs do not
  double the rank of the lineage each time, and it *scores the written adapter*, so
  what passes is exactly what is committed. vLLM serves the result if its
  ``max_lora_rank`` is at least the written rank.

The result is a plain PEFT LoRA folder (``adapter_config.json`` +
``adapter_model.safetensors``, bias "none", no ``modules_to_save``), with the weights
already scaled: the scale recorded in a manifest is informational and must not be
applied again when serving. DoRA, LoRA biases and rank/alpha patterns are refused in
the stacked case (their deltas are not ``scaling * B @ A``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from seal_agent._fs import staged_dir
from seal_agent.errors import AdapterError, ValidationError

__all__ = ["ScaledAdapter", "lora_deltas", "write_scaled_adapter"]

_CONFIG = "adapter_config.json"
_WEIGHTS = "adapter_model.safetensors"


class ScaledAdapter(dict):
    """What `write_scaled_adapter` wrote: ``path``, ``scale``, ``rank``, ``truncation_error``."""


def _read(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    cfg_path, w_path = adapter_dir / _CONFIG, adapter_dir / _WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise AdapterError(f"not a PEFT adapter folder with {_CONFIG} and {_WEIGHTS}: {adapter_dir}")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
        weights = load_file(str(w_path))
    except Exception as exc:  # bad JSON, truncated safetensors
        raise AdapterError(f"cannot read adapter {adapter_dir}: {exc}") from exc
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"only LoRA adapters can be scaled, {adapter_dir} holds {config.get('peft_type')}")
    return config, weights


def _scaling(config: dict[str, Any], where: Path) -> float:
    for bad in ("rank_pattern", "alpha_pattern"):
        if config.get(bad):
            raise AdapterError(f"cannot interpolate {where}: per-module {bad} is not supported")
    if config.get("use_dora") or config.get("lora_bias"):
        raise AdapterError(f"cannot interpolate {where}: DoRA / LoRA bias deltas are not scaling * B @ A")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _factors(weights: dict[str, torch.Tensor], where: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module: (A [r, in], B [out, r])}`` from a saved adapter's state dict."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in weights.items():
        if key.endswith(".lora_A.weight"):
            out.setdefault(key[: -len(".lora_A.weight")], {})["A"] = t.float()
        elif key.endswith(".lora_B.weight"):
            out.setdefault(key[: -len(".lora_B.weight")], {})["B"] = t.float()
        else:
            raise AdapterError(f"cannot interpolate {where}: unsupported tensor {key} (only linear LoRA A/B)")
    for mod, ab in out.items():
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"adapter {where} has an incomplete LoRA pair for {mod}")
    return {mod: (ab["A"], ab["B"]) for mod, ab in out.items()}


def lora_deltas(adapter_dir: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """``{module: scaling * B @ A}`` ([out, in], float32) of a linear LoRA adapter."""
    path = Path(adapter_dir)
    config, weights = _read(path)
    sc = _scaling(config, path)
    return {mod: sc * (b @ a) for mod, (a, b) in _factors(weights, path).items()}


def write_scaled_adapter(
    candidate_dir: str | os.PathLike[str],
    current_dir: str | os.PathLike[str] | None,
    scale: float,
    out_dir: str | os.PathLike[str],
    *,
    max_rank: int | None = None,
) -> ScaledAdapter:
    """Write the adapter whose delta is ``(1 - scale) * dW_cur + scale * dW_cand``.

    Args:
        candidate_dir: The candidate's PEFT LoRA folder.
        current_dir: The current adapter's folder, or None when the base model serves.
        scale: Fraction of the update kept, in (0, 1].
        out_dir: Where to write; must not exist or be empty. Written atomically.
        max_rank: With a current adapter: cap the written rank (SVD truncation) when
            the exact stacked rank ``r_cur + r_cand`` exceeds it. None: always exact.

    Returns:
        A `ScaledAdapter` dict: ``path``, ``scale``, ``rank``, ``truncation_error``
        (relative Frobenius error of the truncation over all modules; 0.0 when exact).

    Raises:
        ValidationError: Bad ``scale``, ``max_rank`` or ``out_dir``.
        AdapterError: An adapter folder is unreadable or not a linear LoRA adapter.
    """
    from safetensors.torch import save_file

    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 1:
        raise ValidationError("scale", scale, "must be a number in (0, 1]")
    if max_rank is not None and (isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1):
        raise ValidationError("max_rank", max_rank, "must be a positive integer or None")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValidationError("out_dir", str(out), "must not exist or be an empty folder")
    cand_path = Path(candidate_dir)
    cand_cfg, cand_w = _read(cand_path)
    dtype = next(iter(cand_w.values())).dtype
    err_num = err_den = 0.0

    if current_dir is None:
        if cand_cfg.get("use_dora"):
            raise AdapterError(f"cannot scale {cand_path}: a DoRA delta is not linear in B")
        # dW = sc * B @ A is linear in B: scaling B scales the whole delta, exactly.
        tensors = {k: (t * scale if ".lora_B." in k or "lora_embedding_B" in k else t) for k, t in cand_w.items()}
        config, rank = dict(cand_cfg), int(cand_cfg["r"])
    else:
        cur_path = Path(current_dir)
        cur_cfg, cur_w = _read(cur_path)
        sc_cur, sc_cand = _scaling(cur_cfg, cur_path), _scaling(cand_cfg, cand_path)
        f_cur, f_cand = _factors(cur_w, cur_path), _factors(cand_w, cand_path)
        r_cur, r_cand = int(cur_cfg["r"]), int(cand_cfg["r"])
        stacked = r_cur + r_cand
        rank = stacked if max_rank is None or stacked <= max_rank else max_rank
        tensors = {}
        for mod in sorted(set(f_cur) | set(f_cand)):
            a_c, b_c = f_cur.get(mod) or _zeros_like_pair(f_cand[mod], r_cur)
            a_n, b_n = f_cand.get(mod) or _zeros_like_pair(f_cur[mod], r_cand)
            a = torch.cat([a_c, a_n], 0)  # [r_cur + r_cand, in]
            b = torch.cat([(1 - scale) * sc_cur * b_c, scale * sc_cand * b_n], 1)  # [out, r_cur + r_cand]
            if rank < stacked:
                a, b, num, den = _truncate(a, b, rank)
                err_num, err_den = err_num + num, err_den + den
            tensors[f"{mod}.lora_A.weight"] = a.to(dtype).contiguous()
            tensors[f"{mod}.lora_B.weight"] = b.to(dtype).contiguous()
        config = dict(cand_cfg)
        leaves = sorted({mod.rsplit(".", 1)[-1] for mod in set(f_cur) | set(f_cand)})
        config.update(r=rank, lora_alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={},
                      target_modules=leaves)  # scaling = alpha / r = 1: the factors carry everything
    config.update(bias="none", modules_to_save=None, inference_mode=True)

    with staged_dir(out) as tmp:
        save_file(tensors, str(tmp / _WEIGHTS), metadata={"format": "pt"})
        (tmp / _CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    error = math.sqrt(err_num / err_den) if err_den > 0 else 0.0
    return ScaledAdapter(path=out, scale=float(scale), rank=rank, truncation_error=error)


def _zeros_like_pair(pair: tuple[torch.Tensor, torch.Tensor], r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero LoRA pair of rank r for a module only the other adapter adapts."""
    a, b = pair
    return torch.zeros(r, a.shape[1]), torch.zeros(b.shape[0], r)


def _truncate(a: torch.Tensor, b: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Best rank-k factors of ``b @ a`` (b: [out, R], a: [R, in]) and the squared error/norm.

    ``b = Qb Rb`` and ``a.T = Qa Ra`` (reduced QR), so ``b @ a = Qb (Rb Ra.T) Qa.T`` and
    the SVD of the ``[R, R]`` core ``Rb Ra.T = U S Vh`` gives the SVD of the product.
    """
    qb, rb = torch.linalg.qr(b.double())  # [out, R], [R, R]
    qa, ra = torch.linalg.qr(a.double().T)  # [in, R], [R, R]
    u, s, vh = torch.linalg.svd(rb @ ra.T)  # [R, R], [R], [R, R]
    root = s[:k].sqrt()
    new_b = (qb @ u[:, :k]) * root  # [out, k]
    new_a = root[:, None] * (vh[:k] @ qa.T)  # [k, in]
    return new_a.float(), new_b.float(), float((s[k:] ** 2).sum()), float((s**2).sum())
