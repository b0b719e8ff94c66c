"""The voxel scene of seed 004 (mu-VAE): a shape code decoded to a 3D occupancy grid, turned by an
azimuth and projected.

================  =================================================  ==============
site              prior / value                                      event shape
================  =================================================  ==============
``shape``         N(0, I_k), k = the mu-VAE's ``shape_code_size``    ``(k,)``
``azimuth``       see ``azimuth=`` below                             ``(m,)`` or ``()``
``angle``         deterministic: the azimuth in radians, [-pi, pi]   ``()``
``render``        deterministic: the noise-free image                ``(1, R, R)``
``image``         ``Normal(render, noise)``                          ``(1, R, R)``
================  =================================================  ==============

The azimuth (seed 004 sec. 3.2), chosen with ``azimuth=``:

* ``"latent"`` (default; seed 004's final model, case 2b): the site ``azimuth`` holds the
  *unconstrained* azimuth latent ``Z_theta ~ N(0, I_m)`` (``m`` = the mu-VAE's
  ``azimuth_latent_size``), and the angle is the mu-VAE's :class:`~probgraphics.nets.AzimuthNet`
  of it, ``pi * tanh(...)``. A standard-normal site whitens and moves freely under ABC and SVI;
  the angle's prior is whatever the trained net makes of ``N(0, I_m)``. The bundled
  ``muvae-shapes`` was trained with the angle search, which leaves this net unused; it was
  then fitted so that the prior is ``Uniform(-pi, pi)``
  (:func:`probgraphics.training.fit_uniform_azimuth_net`).
* ``"uniform"`` (case 2a): the site ``azimuth`` is the angle itself, ``Uniform(-pi, pi)``.
* ``"fixed"`` (case 1): no azimuth site; the angle is 0 and the grid is projected unrotated.

Either way ``angle`` records the radians used. The renderer: the mu-VAE's 3D decoder gives an
occupancy grid ``(*S, D, D, D)`` (axes y, z, x; ``D`` = 28 in the paper),
:func:`~probgraphics.render.rotate_about_vertical` turns it by the angle,
:func:`~probgraphics.render.project` takes ``1 - exp(-tau * sum along rays)`` (seed 004 eq. 2), the
optional texturizer shades the projection, and the image is resized to ``resolution`` if asked.

>>> from probgraphics.nets import MuVAE, MuVAEConfig
>>> from probgraphics.programs import simulate
>>> from probgraphics.programs.voxel import voxel
>>> net = MuVAE(MuVAEConfig(encoder_channels=(8,), decoder_channels=(8, 4), shape_code_size=6,
...                         texturizer=False))
>>> program = voxel(net)
>>> scene = simulate(program, n=3, seed=0)
>>> tuple(scene["shape"].shape), tuple(scene["angle"].shape), tuple(scene["image"].shape)
((3, 6), (3,), (3, 1, 28, 28))
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

from probgraphics.nets import MuVAE
from probgraphics.programs.dcign import (
    _check_noise,
    _evaluation_mode,
    _module_device_dtype,
    _resolve_network,
)
from probgraphics.programs.registry import register
from probgraphics.render.voxel import project, rotate_about_vertical

__all__ = ["VoxelProgram", "voxel", "DEFAULT_MUVAE", "AZIMUTH_PRIORS"]

#: The bundled network ``voxel()`` uses when no ``model`` is given (once bundled weights exist).
DEFAULT_MUVAE = "muvae-shapes"

#: The ways the azimuth can be modelled (seed 004 sec. 3.2 cases 2b, 2a and 1).
AZIMUTH_PRIORS = ("latent", "uniform", "fixed")

_ROTATION_MODES = ("bilinear", "nearest")


class VoxelProgram:
    """A callable Pyro model of a voxel scene; build it with :func:`voxel`.

    Attributes are the bound configuration: ``model`` (the :class:`~probgraphics.nets.MuVAE`),
    ``noise``, ``tau``, ``texturizer`` (bool), ``azimuth_prior``, ``rotation_mode``,
    ``voxel_size`` (``D``), ``resolution`` (``R``), ``channels`` (1), ``latent_sites``.
    """

    channels = 1

    def __init__(
        self,
        *,
        model: MuVAE,
        noise: float,
        tau: float,
        texturizer: bool,
        azimuth_prior: str,
        rotation_mode: str,
        resolution: int,
    ) -> None:
        self.model = model
        self.noise = noise
        self.tau = tau
        self.texturizer = texturizer
        self.azimuth_prior = azimuth_prior
        self.rotation_mode = rotation_mode
        self.voxel_size = model.config.voxel_size
        self.resolution = resolution
        self.shape_size = model.config.shape_code_size
        self.azimuth_size = model.config.azimuth_latent_size
        self.latent_sites = ("shape",) if azimuth_prior == "fixed" else ("shape", "azimuth")

    def __repr__(self) -> str:
        return (
            f"voxel(shape_code_size={self.shape_size}, azimuth={self.azimuth_prior!r}, "
            f"voxel_size={self.voxel_size}, resolution={self.resolution}, tau={self.tau}, "
            f"texturizer={self.texturizer}, noise={self.noise})"
        )

    # -- the Pyro program ---------------------------------------------------------------------
    def __call__(self) -> torch.Tensor:
        device, dtype = _module_device_dtype(self.model)
        zero = torch.zeros((), device=device, dtype=dtype)
        one = torch.ones((), device=device, dtype=dtype)
        shape = pyro.sample("shape", dist.Normal(zero, one).expand([self.shape_size]).to_event(1))
        if self.azimuth_prior == "latent":
            latent = pyro.sample(
                "azimuth", dist.Normal(zero, one).expand([self.azimuth_size]).to_event(1)
            )
            angle = self.azimuth_angle(latent)
        elif self.azimuth_prior == "uniform":
            angle = pyro.sample("azimuth", dist.Uniform(-math.pi * one, math.pi * one))
        else:
            angle = torch.zeros(shape.shape[:-1], device=shape.device, dtype=shape.dtype)
        angle = pyro.deterministic("angle", angle)
        render = self.render(shape=shape, angle=None if self.azimuth_prior == "fixed" else angle)
        render = pyro.deterministic("render", render, event_dim=3)
        return pyro.sample("image", dist.Normal(render, self.noise).to_event(3))

    # -- deterministic parts ------------------------------------------------------------------
    def azimuth_angle(self, latent: torch.Tensor) -> torch.Tensor:
        """Azimuth latents ``(*S, m)`` -> angles ``(*S,)`` radians in [-pi, pi], through the
        mu-VAE's :class:`~probgraphics.nets.AzimuthNet` (network's device and dtype)."""
        m = self.azimuth_size
        if not isinstance(latent, torch.Tensor) or latent.dim() < 1 or latent.shape[-1] != m:
            got = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
            raise ValueError(f"the azimuth latent must have shape (..., {m}), got {got}.")
        device, dtype = _module_device_dtype(self.model)
        batch = latent.shape[:-1]
        # AzimuthNet wants at least one batch dimension; flatten any leading shape to one.
        flat = latent.to(device=device, dtype=dtype).reshape(math.prod(batch), m)
        with _evaluation_mode(self.model):
            return self.model.azimuth_net(flat).reshape(batch)

    def grid(self, shape: torch.Tensor) -> torch.Tensor:
        """Shape codes ``(*S, k)`` -> occupancy grids ``(*S, D, D, D)`` in (0, 1), canonical pose
        (axes y, z, x), through the mu-VAE's 3D decoder in eval mode."""
        k, d = self.shape_size, self.voxel_size
        if not isinstance(shape, torch.Tensor) or shape.dim() < 1 or shape.shape[-1] != k:
            got = tuple(shape.shape) if isinstance(shape, torch.Tensor) else type(shape).__name__
            raise ValueError(f"the shape code must have shape (..., {k}), got {got}.")
        device, dtype = _module_device_dtype(self.model)
        batch = shape.shape[:-1]
        n = math.prod(batch)
        if n == 0:
            return torch.zeros(*batch, d, d, d, device=device, dtype=dtype)
        with _evaluation_mode(self.model):
            grids = self.model.decode(shape.to(device=device, dtype=dtype).reshape(n, k))
        return grids.reshape(*batch, d, d, d)

    def render(self, *, shape: torch.Tensor, angle: torch.Tensor | None) -> torch.Tensor:
        """Render scenes with any common leading batch shape ``S``.

        Args:
            shape: ``(*S, k)`` shape codes.
            angle: ``S``-broadcastable azimuths in radians, or ``None`` for the canonical pose
                (no resampling).

        Returns:
            ``(*S, 1, R, R)`` in [0, 1], the network's device and dtype. Differentiable with
            respect to ``shape`` and (with ``rotation_mode="bilinear"``) ``angle``.
        """
        grids = self.grid(shape)
        d = self.voxel_size
        batch = grids.shape[:-3]
        if angle is not None:
            if not isinstance(angle, torch.Tensor):
                angle = torch.as_tensor(angle, dtype=grids.dtype, device=grids.device)
            try:
                batch = torch.broadcast_shapes(batch, angle.shape)
            except RuntimeError:
                raise ValueError(
                    f"angle of shape {tuple(angle.shape)} does not broadcast with the shape "
                    f"codes' batch shape {tuple(batch)}."
                ) from None
            grids = grids.expand(*batch, d, d, d)
            angle = angle.to(device=grids.device, dtype=grids.dtype).expand(batch)
            grids = rotate_about_vertical(grids, angle, mode=self.rotation_mode)
        images = project(grids, tau=self.tau)
        n = math.prod(batch)
        if self.texturizer and n:
            with _evaluation_mode(self.model):
                images = self.model.texturizer(images.reshape(n, 1, d, d)).reshape(*batch, 1, d, d)
        if self.resolution != d and n:
            # Antialiased bilinear weights are non-negative and sum to 1: values stay in [0, 1].
            images = F.interpolate(
                images.reshape(n, 1, d, d),
                size=(self.resolution, self.resolution),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            ).reshape(*batch, 1, self.resolution, self.resolution)
        elif self.resolution != d:
            images = images.new_zeros(*batch, 1, self.resolution, self.resolution)
        return images


@register("voxel")
def voxel(
    model: MuVAE | str | None = None,
    *,
    noise: float = 0.02,
    tau: float = 1.0,
    texturizer: bool = False,
    azimuth: str = "latent",
    resolution: int | None = None,
    rotation_mode: str = "bilinear",
) -> VoxelProgram:
    """Build the voxel scene program of seed 004.

    Args:
        model: a :class:`~probgraphics.nets.MuVAE` (its decoder, azimuth net and texturizer are
            the renderer), or the name of a bundled one (``probgraphics.nets.pretrained``;
            ``None`` means :data:`DEFAULT_MUVAE`).
        noise: standard deviation of the Gaussian pixel noise of the ``image`` site, > 0.
        tau: density per unit of occupancy in the projection ``1 - exp(-tau * sum)``; 1 as in
            seed 004 eq. 2.
        texturizer: pass the projection through the mu-VAE's texturizer (the model must have
            one).
        azimuth: ``"latent"``, ``"uniform"`` or ``"fixed"``; see the module docstring.
        resolution: image height and width; ``None`` keeps the grid's ``voxel_size`` (28).
            Other sizes resize the image with antialiased bilinear interpolation.
        rotation_mode: ``"bilinear"`` (smooth, differentiable in the angle) or ``"nearest"``
            (seed 004's floor sampling).

    Returns:
        A :class:`VoxelProgram`, a Pyro model taking no arguments. The network's parameters are
        not registered with Pyro: SVI on the program trains guides, not the renderer.
    """
    model = _resolve_network(model, MuVAE, DEFAULT_MUVAE, "voxel")
    noise = _check_noise(noise, "voxel")
    if (
        isinstance(tau, bool)
        or not isinstance(tau, int | float)
        or not (math.isfinite(tau) and tau > 0)
    ):
        raise ValueError(f"voxel(): tau must be a finite float > 0, got {tau!r}; try 1.0.")
    if not isinstance(texturizer, bool):
        raise TypeError(f"voxel(): texturizer must be True or False, got {texturizer!r}.")
    if texturizer and model.texturizer is None:
        raise ValueError(
            "voxel(texturizer=True) needs a mu-VAE with a texturizer, but this one was built "
            "with MuVAEConfig(texturizer=False); pass texturizer=False or another model."
        )
    if azimuth not in AZIMUTH_PRIORS:
        raise ValueError(f"voxel(): azimuth must be one of {AZIMUTH_PRIORS}, got {azimuth!r}.")
    if rotation_mode not in _ROTATION_MODES:
        raise ValueError(
            f"voxel(): rotation_mode must be one of {_ROTATION_MODES}, got {rotation_mode!r}."
        )
    if resolution is None:
        resolution = model.config.voxel_size
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(
            f"voxel(): resolution must be None (the grid size) or an int >= 1, got {resolution!r}."
        )
    return VoxelProgram(
        model=model,
        noise=noise,
        tau=float(tau),
        texturizer=texturizer,
        azimuth_prior=azimuth,
        rotation_mode=rotation_mode,
        resolution=resolution,
    )
