"""The DC-IGN clamped forward pass and invariance-targeted backward pass.

Seed 001 section 3.1 (steps 1-8) and section 3.2, figure 3. Training shows the network a
minibatch in which only one scene factor varies (e.g. the azimuth); the code units of that
factor's group are *active*, all others *inactive*:

* **Forward** (step 5): each inactive unit's output is replaced by its mean over the batch
  ("clamped"), so the active group alone must explain all the variation in the batch:
  ``out[k, i] = mean_j z[j, i]`` for inactive ``i``; ``out[k, i] = z[k, i]`` for active ``i``.
* **Backward** (step 7 and sec. 3.2): the active units receive the decoder's gradient unchanged.
  The inactive units' gradient is *replaced* (the decoder's gradient for them is discarded) by the
  invariance target, the difference from the batch mean, scaled by a small factor (1/100 in the
  paper): ``grad z[k, i] = invariance_scale * (z[k, i] - mean_j z[j, i])``.

Sign: this is the gradient of a *loss*. A descent step ``z <- z - lr * grad`` moves each inactive
unit toward its batch mean, which is what the paper intends ("a signal which nudges them to be
closer to their respective averages over the batch"). It equals exactly the gradient of the
penalty ``invariance_scale / 2 * sum_k sum_i (z[k, i] - mean_j z[j, i])^2`` over inactive ``i``
(the mean's own dependence on ``z`` contributes ``-sum_k (z[k,i] - mean) / B = 0``), i.e. the "L2
regularization of z_k - mean z_k" of seed 000 figure 4. Because it *replaces* the gradient rather
than adding to it, its size is relative to however the reconstruction loss is reduced; the paper's
1/100 assumes the reconstruction gradient is the "true training signal" of comparable magnitude.

Seed 000 section 3.2 describes an earlier variant: clamp to the *first* example's code and pass
zero gradient to the clamped units. ``clamp_to="first"`` with ``invariance_scale=0`` gives that.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["clamp_inactive", "active_mask"]

_CLAMP_TO = ("mean", "first")


def active_mask(
    active_indices: Sequence[int] | torch.Tensor, code_size: int, device: torch.device | str
) -> torch.Tensor:
    """Bool tensor ``(code_size,)`` on ``device``: True at the active units.

    ``active_indices`` is a sequence of ints, an int64 index tensor, or a bool mask of length
    ``code_size``. Raises ValueError when it is empty or out of range.
    """
    if isinstance(active_indices, torch.Tensor):
        if active_indices.dtype == torch.bool:
            if active_indices.shape != (code_size,):
                raise ValueError(
                    f"a bool active mask must have shape ({code_size},), got "
                    f"{tuple(active_indices.shape)}."
                )
            mask = active_indices.to(device)
            empty = not bool(mask.any())
        else:
            if active_indices.dtype.is_floating_point or active_indices.dim() != 1:
                raise ValueError(
                    "active_indices must be a 1-D integer index tensor, a bool mask or a "
                    f"sequence of ints; got a {active_indices.dtype} tensor of shape "
                    f"{tuple(active_indices.shape)}."
                )
            indices = active_indices.to(device=device, dtype=torch.long)
            if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= code_size):
                raise ValueError(
                    f"active_indices must lie in [0, {code_size}), got {indices.tolist()}."
                )
            mask = torch.zeros(code_size, dtype=torch.bool, device=device)
            mask[indices] = True
            empty = indices.numel() == 0
    else:
        if isinstance(active_indices, (str, bytes)) or not hasattr(active_indices, "__iter__"):
            raise ValueError(
                "active_indices must be a sequence of ints, an index tensor or a bool mask; "
                f"got {active_indices!r}. (Group names are resolved by DCIGN.forward or "
                "CodeLayout.indices.)"
            )
        items = list(active_indices)
        bad = [
            i
            for i in items
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < code_size
        ]
        if bad:
            raise ValueError(
                f"active_indices must be ints in [0, {code_size}); got the invalid entries {bad}."
            )
        mask = torch.zeros(code_size, dtype=torch.bool, device=device)
        mask[items] = True
        empty = not items
    if empty:
        raise ValueError(
            "no code unit is active: give the unit indices of the factor that varies in this "
            "batch (e.g. layout['azimuth'])."
        )
    return mask


class _ClampInactive(torch.autograd.Function):
    """Forward: inactive units -> batch reference. Backward: inactive gradient -> invariance
    target ``scale * (z - batch mean)``; active gradient unchanged."""

    @staticmethod
    def forward(ctx, code, inactive, invariance_scale, clamp_to):  # noqa: D102
        reference = code[:1] if clamp_to == "first" else code.mean(dim=0, keepdim=True)
        ctx.save_for_backward(code, inactive)
        ctx.invariance_scale = invariance_scale
        return torch.where(inactive, reference.expand_as(code), code)

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        code, inactive = ctx.saved_tensors
        # The invariance target always uses the batch mean (seed 001 fig. 3, seed 000 fig. 4).
        target = ctx.invariance_scale * (code - code.mean(dim=0, keepdim=True))
        grad_code = torch.where(inactive, target.to(grad_output.dtype), grad_output)
        return grad_code, None, None, None


def clamp_inactive(
    code: torch.Tensor,
    active_indices: Sequence[int] | torch.Tensor,
    invariance_scale: float = 0.01,
    *,
    clamp_to: str = "mean",
) -> torch.Tensor:
    """Clamp the inactive code units to the batch mean; train them toward it (seed 001 sec. 3).

    Args:
        code: ``(B, K)`` floating codes for one one-factor-varies minibatch (any device).
        active_indices: the units of the factor that varies in the batch: ints, an int64 index
            tensor, or a bool mask ``(K,)``. All other units are inactive.
        invariance_scale: the factor on the invariance target (seed 001: about 1/100);
            0 gives the zero-gradient variant of seed 000.
        clamp_to: what the inactive units are replaced by in the forward pass: ``"mean"`` (batch
            mean, seed 001) or ``"first"`` (the first example's code, seed 000 sec. 3.2).

    Returns:
        ``(B, K)`` tensor, same dtype and device: ``code`` with inactive units replaced. In the
        backward pass ``grad code[:, active]`` is the incoming gradient unchanged and
        ``grad code[:, inactive] = invariance_scale * (code - code.mean(0))[:, inactive]``.
    """
    if not isinstance(code, torch.Tensor) or code.dim() != 2 or not code.dtype.is_floating_point:
        raise ValueError(
            "clamp_inactive expects code as a floating (B, K) tensor, got "
            + (
                f"{code.dtype} of shape {tuple(code.shape)}"
                if isinstance(code, torch.Tensor)
                else type(code).__name__
            )
            + "."
        )
    if code.shape[0] < 1:
        raise ValueError("clamp_inactive needs a batch of at least one code, got B = 0.")
    scale_ok = isinstance(invariance_scale, (int, float)) and not isinstance(invariance_scale, bool)
    if not scale_ok or not 0 <= float(invariance_scale) < float("inf"):
        raise ValueError(
            f"invariance_scale must be a finite number >= 0 (the paper uses 0.01), got "
            f"{invariance_scale!r}."
        )
    if clamp_to not in _CLAMP_TO:
        raise ValueError(f"clamp_to must be one of {_CLAMP_TO}, got {clamp_to!r}.")
    inactive = ~active_mask(active_indices, code.shape[1], code.device)
    return _ClampInactive.apply(code, inactive, float(invariance_scale), clamp_to)
