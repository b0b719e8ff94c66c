"""Which latent site a run can collapse, and the sufficient statistics its moves need.

``infer(..., collapse="texture")`` draws the site from its Gaussian conditional at every move
(:mod:`~probgraphics.inference.kernels.collapsed`). That needs three things, checked here before
the pilot runs:

* the program offers the observation as an affine function of the site, by duck typing:

  .. code-block:: python

      def affine_observation(self, site, latents):
          # latents: site -> (B, *event) constrained values of every latent (the site's own
          # value is ignored). Returns offset (B, P) and matrix (B, P, K) with
          # mean(site=x).reshape(B, -1) == offset + matrix @ x, P the observation's elements.
          ...

  (``probgraphics.programs.face`` offers it for ``"texture"``: its render is linear in the
  albedo). It need not be exact, only a good proposal: the move's acceptance ratio corrects it;
* the site's prior is the standard normal ``N(0, I)`` (so its whitened coordinates are its values
  and the conditional has the closed form);
* the ABC kernel is Gaussian on the L2 distance of the observation itself, with the observation
  noise integrated out (``observation_noise="marginal"``), so the kernel is a Gaussian density
  in the site.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from pyro.distributions import ExpandedDistribution
from torch.distributions import Independent, Normal

from probgraphics.inference.kernels.collapsed import LinearSite
from probgraphics.inference.whitening import WhiteningLayout

__all__ = ["AFFINE_METHOD", "check_collapsible", "affine_statistics", "linear_site"]

#: The program method the collapsed move calls.
AFFINE_METHOD = "affine_observation"
#: Chains per call of the program's affine map (bounds the ``(B, P, K)`` matrix's memory).
STATISTICS_CHUNK = 16


def _standard_normal(fn: Any) -> bool:
    """``fn`` is ``Normal(0, 1)``, expanded and/or made an event (no transforms)."""
    while isinstance(fn, (Independent, ExpandedDistribution)):
        fn = fn.base_dist
    if not isinstance(fn, Normal):
        return False
    return bool((fn.loc == 0).all()) and bool((fn.scale == 1).all())


def check_collapsible(
    program: Any, site: Any, latent_sites: Mapping[str, Any], observed: Mapping[str, Any]
) -> str:
    """Validate ``collapse=site`` for ``program``; return the site name.

    Args:
        program: the Pyro program (an object; a plain function cannot offer the affine map).
        site: the user's ``collapse`` value.
        latent_sites: latent site name -> its traced sample site (``site["fn"]`` the prior).
        observed: observed site name -> observation.

    Raises:
        TypeError, ValueError: with what was expected, what came and what to do.
    """
    if not isinstance(site, str):
        raise TypeError(
            f"collapse must be the name of one latent site (a str, e.g. 'texture'), got {site!r}."
        )
    if site not in latent_sites:
        raise ValueError(
            f"collapse={site!r} is not a latent site of the program; its latents are "
            f"{sorted(latent_sites)}."
        )
    if len(observed) != 1:
        raise ValueError(
            f"collapse needs exactly one observed site, got {sorted(observed)}; the affine map is "
            "of that one observation."
        )
    if not callable(getattr(program, AFFINE_METHOD, None)):
        raise ValueError(
            f"collapse={site!r} needs the program to offer {AFFINE_METHOD}(site, latents) -> "
            f"(offset, matrix), the observation as an affine function of the site; "
            f"{type(program).__name__} has none. Write it (see probgraphics.inference.collapse) "
            "or leave collapse out."
        )
    if not _standard_normal(latent_sites[site]["fn"]):
        raise ValueError(
            f"collapse={site!r} needs the site's prior to be the standard normal N(0, I), got "
            f"{latent_sites[site]['fn']}; reparametrize it as loc + scale * N(0, I) in the "
            "program, or leave collapse out."
        )
    return site


def _probe(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A fixed vector of ``size`` positive numbers that are not round (deterministic)."""
    return (1.0 + torch.arange(size, dtype=torch.float64).mul(0.7548776662).remainder(1.0)).to(
        device=device, dtype=dtype
    )


def affine_statistics(
    offset: torch.Tensor, matrix: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``A^T A`` ``(B, K, K)`` and ``A^T (y - c)`` ``(B, K)``, float64, of a batch of affine maps.

    Args:
        offset: ``(B, P)`` the maps' offsets ``c``; matrix: ``(B, P, K)`` their matrices ``A``
            (float32 or float64, one device).
        target: ``(P,)`` the observation ``y``.

    Rows of ``A`` the site does not reach (pixels such as background) are skipped: on the face
    that is most of the image. They are found by one product with a fixed random vector (a row
    is skipped when its product is exactly zero, which a nonzero row's is only by a rounding
    accident; such a row would only make the conditional a slightly worse proposal, which the
    move's acceptance ratio corrects). ``A^T A`` is accumulated in the matrix's dtype, the
    projection in float64.
    """
    batch, _, size = matrix.shape
    gram = torch.empty(batch, size, size, dtype=torch.float64, device=matrix.device)
    projection = torch.empty(batch, size, dtype=torch.float64, device=matrix.device)
    residual = target.to(torch.float64) - offset.to(torch.float64)
    probe = _probe(size, matrix.dtype, matrix.device)
    reached_rows = (matrix @ probe).ne(0)  # (B, P)
    for index in range(batch):
        rows = matrix[index]
        reached = reached_rows[index].nonzero().squeeze(-1)
        kept = rows.index_select(0, reached)
        gram[index] = (kept.T @ kept).to(torch.float64)
        projection[index] = kept.T.to(torch.float64) @ residual[index].index_select(0, reached)
    return gram, projection


def linear_site(
    program: Any, layout: WhiteningLayout, site: str, target: torch.Tensor
) -> LinearSite:
    """The collapsed kernel's view of ``site`` (:class:`LinearSite`): its coordinates in ``u``
    and ``values (C, V) -> (A^T A, A^T (y - c))`` through ``program.affine_observation``.

    ``target``: the observation, any shape with ``P`` elements, on the run's device.
    """
    whitened = layout.site(site)
    mask = torch.zeros(layout.dim, dtype=torch.bool, device=target.device)
    mask[whitened.offset : whitened.offset + whitened.size] = True
    flat_target = target.reshape(-1)
    affine: Callable = getattr(program, AFFINE_METHOD)

    def statistics(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latents = layout.split_values(values)
        grams, projections = [], []
        for start in range(0, values.shape[0], STATISTICS_CHUNK):
            chunk = {
                name: value[start : start + STATISTICS_CHUNK] for name, value in latents.items()
            }
            with torch.no_grad():
                offset, matrix = affine(site, chunk)
            rows = next(iter(chunk.values())).shape[0]
            expected = (rows, flat_target.numel(), whitened.size)
            if tuple(matrix.shape) != expected or tuple(offset.shape) != expected[:2]:
                raise ValueError(
                    f"{type(program).__name__}.{AFFINE_METHOD}({site!r}, ...) returned offset "
                    f"{tuple(offset.shape)} and matrix {tuple(matrix.shape)}; expected "
                    f"{expected[:2]} and {expected} (batch, observation elements, site size)."
                )
            gram, projection = affine_statistics(offset, matrix, flat_target)
            grams.append(gram)
            projections.append(projection)
        return torch.cat(grams), torch.cat(projections)

    return LinearSite(mask, statistics)
