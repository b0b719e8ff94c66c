"""The learned-renderer scene of seeds 000/001: a DC-IGN graphics code decoded into an image.

The graphics code is split into the named groups of the network's
:class:`~probgraphics.nets.CodeLayout` (for the face layout: ``azimuth`` z1, ``elevation`` z2,
``light`` z3, ``intrinsic`` z4..n). Each group is its own latent site:

================  ==========================================  ===============
site              prior / value                               event shape
================  ==========================================  ===============
one per group     ``Normal(0, 1).expand([group size])``       ``(group size,)``
``render``        deterministic: DC-IGN decoder of the code   ``(C, S, S)``
``image``         ``Normal(render, noise)``                   ``(C, S, S)``
================  ==========================================  ===============

The groups are placed at their units of the code (code order, whatever the group order); units in
no group are held at 0, the prior mean. The decoder's sigmoid keeps ``render`` in (0, 1).

>>> from probgraphics.nets import DCIGN, DCIGNConfig
>>> from probgraphics.programs import simulate
>>> from probgraphics.programs.dcign import dcign
>>> net = DCIGN(DCIGNConfig(image_size=32, channels=(8, 8), decoder_channels=(8, 8),
...                         padding=2, code_size=16))
>>> program = dcign(net)
>>> scene = simulate(program, n=4, seed=0)
>>> tuple(scene["azimuth"].shape), tuple(scene["intrinsic"].shape), tuple(scene["image"].shape)
((4, 1), (4, 13), (4, 1, 32, 32))
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from probgraphics.nets import DCIGN, CodeLayout
from probgraphics.programs.registry import register

__all__ = ["DCIGNProgram", "dcign", "DEFAULT_DCIGN"]

#: The bundled network ``dcign()`` uses when no ``model`` is given (once bundled weights exist).
DEFAULT_DCIGN = "dcign-face-64"

# Site names every program uses for its own outputs; a code group may not take them.
_RESERVED_SITES = ("render", "image")


# --------------------------------------------------------------------------------------------
# Helpers shared with the voxel program
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in eval mode, restoring its mode afterwards.

    A scene's render must not depend on the other scenes in its batch (batch norm in training
    mode would make it), or the program would not be batch-polymorphic.
    """
    was_training = module.training
    if was_training:
        module.eval()
    try:
        yield
    finally:
        if was_training:
            module.train()


def _resolve_network(model, expected: type, default_name: str, program: str) -> nn.Module:
    """``model`` as a module of class ``expected``: a module is checked, a name (or ``None`` for
    ``default_name``) is loaded with ``probgraphics.nets.pretrained(name, kind="model")``."""
    if model is None or isinstance(model, str):
        name = default_name if model is None else model
        from probgraphics.nets.pretrained import pretrained

        model = pretrained(name, kind="model")
    if not isinstance(model, expected):
        raise TypeError(
            f"{program}(): model must be a {expected.__name__} module or the name of a bundled "
            f"one, got {type(model).__name__}."
        )
    return model


def _module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(module.parameters(), None)
    if parameter is None:
        return torch.device("cpu"), torch.float32
    return parameter.device, parameter.dtype


def _check_noise(noise, program: str) -> float:
    if (
        isinstance(noise, bool)
        or not isinstance(noise, int | float)
        or not (math.isfinite(noise) and noise > 0)
    ):
        raise ValueError(f"{program}(): noise must be a finite float > 0, got {noise!r}; try 0.02.")
    return float(noise)


# --------------------------------------------------------------------------------------------
# The program
# --------------------------------------------------------------------------------------------


class DCIGNProgram:
    """A callable Pyro model of a DC-IGN scene; build it with :func:`dcign`.

    Attributes: ``model`` (the :class:`~probgraphics.nets.DCIGN`), ``layout`` (its
    :class:`~probgraphics.nets.CodeLayout`), ``noise``, ``channels``, ``resolution``,
    ``latent_sites`` (the group names, in layout order).
    """

    def __init__(self, *, model: DCIGN, noise: float) -> None:
        self.model = model
        self.layout: CodeLayout = model.layout
        self.noise = noise
        self.channels = model.config.in_channels
        self.resolution = model.config.image_size
        self.latent_sites = tuple(self.layout.names)
        self.group_sizes = {name: len(self.layout[name]) for name in self.latent_sites}
        # code[..., u] = concatenated_groups[..., gather[u]]; uncovered units read an appended 0.
        covered = [unit for name in self.latent_sites for unit in self.layout[name]]
        gather = torch.full((self.layout.code_size,), len(covered), dtype=torch.long)
        gather[torch.tensor(covered, dtype=torch.long)] = torch.arange(len(covered))
        self._gather = gather
        self._covers_code = len(covered) == self.layout.code_size

    def __repr__(self) -> str:
        return (
            f"dcign(code_size={self.layout.code_size}, groups={list(self.latent_sites)}, "
            f"resolution={self.resolution}, channels={self.channels}, noise={self.noise})"
        )

    # -- the Pyro program ---------------------------------------------------------------------
    def __call__(self) -> torch.Tensor:
        device, dtype = _module_device_dtype(self.model)
        zero = torch.zeros((), device=device, dtype=dtype)
        one = torch.ones((), device=device, dtype=dtype)
        groups = {
            name: pyro.sample(name, dist.Normal(zero, one).expand([size]).to_event(1))
            for name, size in self.group_sizes.items()
        }
        render = pyro.deterministic("render", self.render(**groups), event_dim=3)
        return pyro.sample("image", dist.Normal(render, self.noise).to_event(3))

    # -- deterministic parts ------------------------------------------------------------------
    def code(self, **groups: torch.Tensor) -> torch.Tensor:
        """Assemble graphics codes from their groups.

        Args:
            **groups: one tensor ``(*S_g, group size)`` per group of the layout, by name; the
                leading shapes ``S_g`` broadcast to a common ``S``.

        Returns:
            ``(*S, code_size)`` on the network's device and dtype, each group at its units; units
            in no group are 0. Differentiable with respect to every group.
        """
        missing = [name for name in self.latent_sites if name not in groups]
        unknown = [name for name in groups if name not in self.group_sizes]
        if missing or unknown:
            raise ValueError(
                f"DCIGNProgram.code needs exactly the groups {list(self.latent_sites)}; "
                f"missing {missing}, unknown {unknown}."
            )
        device, dtype = _module_device_dtype(self.model)
        shapes = []
        for name in self.latent_sites:
            value = groups[name]
            size = self.group_sizes[name]
            if not isinstance(value, torch.Tensor) or value.dim() < 1 or value.shape[-1] != size:
                got = (
                    tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                )
                raise ValueError(
                    f"group {name!r} must be a tensor of shape (..., {size}), got {got}."
                )
            shapes.append(value.shape[:-1])
        try:
            batch = torch.broadcast_shapes(*shapes)
        except RuntimeError:
            raise ValueError(
                "the groups' leading (batch) shapes do not broadcast: "
                f"{ {n: tuple(s) for n, s in zip(self.latent_sites, shapes)} }."
            ) from None
        parts = [
            groups[name].to(device=device, dtype=dtype).expand(*batch, self.group_sizes[name])
            for name in self.latent_sites
        ]
        if not self._covers_code:
            parts.append(torch.zeros(*batch, 1, device=device, dtype=dtype))
        return torch.cat(parts, dim=-1)[..., self._gather.to(device)]

    def render(self, **groups: torch.Tensor) -> torch.Tensor:
        """Decode graphics codes given by their groups (see :meth:`code`) into images.

        Returns:
            ``(*S, C, S_img, S_img)`` in (0, 1), the network's device and dtype. The network runs
            in eval mode (restored afterwards). Differentiable with respect to every group.
        """
        code = self.code(**groups)
        batch = code.shape[:-1]
        n = math.prod(batch)
        c, s = self.channels, self.resolution
        if n == 0:
            return code.new_zeros(*batch, c, s, s)
        with _evaluation_mode(self.model):
            images = self.model.decode(code.reshape(n, self.layout.code_size))
        return images.reshape(*batch, c, s, s)


@register("dcign")
def dcign(model: DCIGN | str | None = None, *, noise: float = 0.02) -> DCIGNProgram:
    """Build the DC-IGN scene program: a named graphics code decoded into an image.

    Args:
        model: a :class:`~probgraphics.nets.DCIGN` (its decoder is the renderer, its layout
            names the latent sites), or the name of a bundled network
            (``probgraphics.nets.pretrained``; ``None`` means :data:`DEFAULT_DCIGN`).
        noise: standard deviation of the Gaussian pixel noise of the ``image`` site, > 0.

    Returns:
        A :class:`DCIGNProgram`, a Pyro model taking no arguments. It does not register the
        network's parameters with Pyro: SVI on the program trains guides, not the decoder.
    """
    model = _resolve_network(model, DCIGN, DEFAULT_DCIGN, "dcign")
    noise = _check_noise(noise, "dcign")
    clashes = [name for name in model.layout.names if name in _RESERVED_SITES]
    if clashes:
        raise ValueError(
            f"dcign(): code groups {clashes} would clash with the program's sites "
            f"{list(_RESERVED_SITES)}; rename them in the network's CodeLayout."
        )
    return DCIGNProgram(model=model, noise=noise)
