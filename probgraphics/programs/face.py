"""The 3DMM face scene of seed 000 section 4.1, as a Pyro program.

Latent sites (all declared with their event shapes, so the program is batch-polymorphic):

=============  =====================================  ==========
site           prior                                  event shape
=============  =====================================  ==========
``shape``      N(0, I_200)                            (200,)
``texture``    N(0, I_200)                            (200,)
``azimuth``    Uniform(-90, 90) degrees               ()
``elevation``  Uniform(-90, 90) degrees               ()
``light``      Uniform(-90, 90) degrees               ()
``camera``     Uniform(0, 1)^3: x offset, y offset,   (3,)
               scale
=============  =====================================  ==========

The noise-free render is recorded as ``pyro.deterministic("render", ...)`` and the observation is
``image ~ Normal(render, noise)`` with event shape ``(C, H, W)``. Wrapping the program in
``pyro.plate("chains", C)`` and conditioning the latents on tensors with a leading ``C`` renders
``C`` images in one call to the batched rasterizer.

>>> import probgraphics as pg
>>> program = pg.programs.face(resolution=32)
>>> scenes = pg.programs.simulate(program, n=4, seed=0)
>>> tuple(scenes["image"].shape)
(4, 1, 32, 32)
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch

from probgraphics.morphable import MorphableModel
from probgraphics.programs.dcign import _check_noise
from probgraphics.programs.registry import register
from probgraphics.render import render_mesh, rotation_matrix
from probgraphics.render.mesh import check_silhouette_blur

__all__ = ["FaceProgram", "face"]

# ITU-R BT.601 luma weights: grayscale albedo = RGB albedo @ _LUMA.
_LUMA = (0.299, 0.587, 0.114)


class FaceProgram:
    """A callable Pyro model of a face scene; build it with :func:`face`.

    Attributes are the bound configuration (``resolution``, ``channels``, ``noise``, ``model``,
    ``backend``, the angle ranges in degrees). :meth:`render` is the deterministic part, usable
    on its own with any leading batch shape.
    """

    latent_sites = ("shape", "texture", "azimuth", "elevation", "light", "camera")

    def __init__(
        self,
        *,
        resolution: int,
        color: str,
        noise: float,
        model: MorphableModel,
        backend: str,
        n_shape: int,
        n_texture: int,
        pose_range: tuple[float, float],
        light_range: tuple[float, float],
        light_elevation: float,
        ambient: float,
        diffuse: float,
        camera_offset: float,
        camera_scale: tuple[float, float],
        supersample: int = 1,
        silhouette_blur: float = 0.0,
    ) -> None:
        self.resolution = resolution
        self.supersample = supersample
        self.silhouette_blur = silhouette_blur
        self.color = color
        self.channels = 1 if color == "gray" else 3
        self.noise = noise
        self.model = model
        self.backend = backend
        self.n_shape = n_shape
        self.n_texture = n_texture
        self.pose_range = pose_range
        self.light_range = light_range
        self.light_elevation = light_elevation
        self.ambient = ambient
        self.diffuse = diffuse
        self.camera_offset = camera_offset
        self.camera_scale = camera_scale
        self._bases: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def __repr__(self) -> str:
        return (
            f"face(resolution={self.resolution}, color={self.color!r}, noise={self.noise}, "
            f"n_shape={self.n_shape}, n_texture={self.n_texture}, backend={self.backend!r}, "
            f"supersample={self.supersample}, silhouette_blur={self.silhouette_blur})"
        )

    # -- the Pyro program ---------------------------------------------------------------------
    def __call__(self) -> torch.Tensor:
        lo, hi = self.pose_range
        llo, lhi = self.light_range
        shape = pyro.sample("shape", dist.Normal(0.0, 1.0).expand([self.n_shape]).to_event(1))
        texture = pyro.sample(
            "texture", dist.Normal(0.0, 1.0).expand([self.n_texture]).to_event(1)
        )
        azimuth = pyro.sample("azimuth", dist.Uniform(lo, hi))
        elevation = pyro.sample("elevation", dist.Uniform(lo, hi))
        light = pyro.sample("light", dist.Uniform(llo, lhi))
        camera = pyro.sample("camera", dist.Uniform(0.0, 1.0).expand([3]).to_event(1))
        render = self.render(
            shape=shape,
            texture=texture,
            azimuth=azimuth,
            elevation=elevation,
            light=light,
            camera=camera,
        )
        render = pyro.deterministic("render", render, event_dim=3)
        return pyro.sample("image", dist.Normal(render, self.noise).to_event(3))

    # -- the deterministic renderer -----------------------------------------------------------
    def _basis(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Std-scaled bases as matrices, cached per device: one matmul each renders a batch.

        Returns ``(shape_mean (V*3,), shape_matrix (K_s, V*3), albedo_mean (V*C,),
        albedo_matrix (K_t, V*C), triangles (F, 3))``. For grayscale the texture basis is
        projected to luminance once here, which makes the texture product three times cheaper.
        """
        if device not in self._bases:
            m = self.model
            ks, kt = self.n_shape, self.n_texture
            shape_mean = m.mean_shape.reshape(-1)
            shape_matrix = (m.shape_std[:ks, None, None] * m.shape_basis[:ks]).reshape(ks, -1)
            albedo_mean = m.mean_albedo
            albedo_basis = m.texture_std[:kt, None, None] * m.texture_basis[:kt]
            if self.channels == 1:
                luma = torch.tensor(_LUMA, dtype=albedo_mean.dtype)
                albedo_mean = albedo_mean @ luma[:, None]
                albedo_basis = albedo_basis @ luma[:, None]
            matrices = tuple(
                t.to(device=device, dtype=torch.float32).contiguous()
                for t in (
                    shape_mean,
                    shape_matrix,
                    albedo_mean.reshape(-1),
                    albedo_basis.reshape(kt, -1),
                )
            )
            triangles = m.triangles.to(device=device, dtype=torch.int64).contiguous()
            self._bases[device] = (*matrices, triangles)
        return self._bases[device]

    def render(
        self,
        *,
        shape: torch.Tensor,
        texture: torch.Tensor,
        azimuth: torch.Tensor,
        elevation: torch.Tensor,
        light: torch.Tensor,
        camera: torch.Tensor,
    ) -> torch.Tensor:
        """Render scenes with any common leading batch shape ``S``.

        Args:
            shape: ``(*S, n_shape)`` float, standard-normal shape coefficients.
            texture: ``(*S, n_texture)`` float, standard-normal texture coefficients.
            azimuth, elevation, light: ``S`` float, degrees.
            camera: ``(*S, 3)`` float in [0, 1]: x offset, y offset, scale.

        Returns:
            ``(*S, C, H, W)`` float32 in [0, 1] on the inputs' device. Differentiable with
            respect to every input when the torch backend is used (``backend="torch"``, or
            ``"auto"`` with inputs that require grad).
        """
        batch = torch.broadcast_shapes(
            shape.shape[:-1],
            texture.shape[:-1],
            azimuth.shape,
            elevation.shape,
            light.shape,
            camera.shape[:-1],
        )
        n = math.prod(batch)
        device = shape.device
        shape_mean, shape_matrix, albedo_mean, albedo_matrix, triangles = self._basis(device)

        def flat(t: torch.Tensor, event: tuple[int, ...]) -> torch.Tensor:
            return t.to(torch.float32).expand(tuple(batch) + event).reshape(n, *event)

        # The basis products: one matmul each over the whole batch (the hot path).
        vertices = torch.addmm(shape_mean, flat(shape, (self.n_shape,)), shape_matrix)
        albedo = torch.addmm(albedo_mean, flat(texture, (self.n_texture,)), albedo_matrix)
        vertices = vertices.reshape(n, -1, 3)
        albedo = albedo.reshape(n, -1, self.channels).clamp(0.0, 1.0)

        rotation = rotation_matrix(
            torch.deg2rad(flat(azimuth, ())), torch.deg2rad(flat(elevation, ()))
        )
        light_angle = torch.deg2rad(flat(light, ()))
        light_up = math.radians(self.light_elevation)
        light_direction = torch.stack(
            [
                torch.sin(light_angle) * math.cos(light_up),
                torch.full_like(light_angle, math.sin(light_up)),
                torch.cos(light_angle) * math.cos(light_up),
            ],
            dim=-1,
        )
        cam = flat(camera, (3,))
        offset = (cam[:, :2] - 0.5) * (2.0 * self.camera_offset)
        smin, smax = self.camera_scale
        scale = smin + (smax - smin) * cam[:, 2]
        out = render_mesh(
            vertices,
            triangles,
            albedo,
            rotation=rotation,
            scale=scale,
            offset=offset,
            light_direction=light_direction,
            ambient=self.ambient,
            diffuse=self.diffuse,
            image_size=(self.resolution * self.supersample,) * 2,
            backend=self.backend,
            silhouette_blur=self.silhouette_blur * self.supersample,
        )
        image = out.image
        if self.supersample > 1:
            # A camera pixel integrates light over its area: the mean of s x s point samples.
            # It turns each silhouette pixel's jump between face and background into steps
            # s^2 times smaller, so the likelihood over pose has no tall cliffs between plateaus.
            image = torch.nn.functional.avg_pool2d(image, self.supersample)
        return image.reshape(*batch, self.channels, self.resolution, self.resolution)


def _check_range(name: str, value, lo_limit: float, hi_limit: float) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a pair (low, high) of numbers in degrees, got {value!r}"
        ) from None
    if not (lo_limit <= lo < hi <= hi_limit):
        raise ValueError(
            f"{name} must satisfy {lo_limit} <= low < high <= {hi_limit} (degrees), got {value!r}"
        )
    return lo, hi


@register("face")
def face(
    resolution: int = 64,
    *,
    color: str = "gray",
    noise: float = 0.02,
    n_shape: int = 200,
    n_texture: int = 200,
    model: MorphableModel | None = None,
    backend: str = "auto",
    pose_range: tuple[float, float] = (-90.0, 90.0),
    light_range: tuple[float, float] = (-90.0, 90.0),
    light_elevation: float = 20.0,
    ambient: float = 0.35,
    diffuse: float = 0.65,
    camera_offset: float = 0.15,
    camera_scale: tuple[float, float] = (0.75, 0.95),
    supersample: int = 1,
    silhouette_blur: float = 0.0,
) -> FaceProgram:
    """Build the face scene program of seed 000 section 4.1.

    Args:
        resolution: image height and width in pixels (64 default for CPU work; 150 as in the
            papers).
        color: ``"gray"`` (one channel, default) or ``"rgb"``.
        noise: standard deviation of the Gaussian pixel noise of the ``image`` site, > 0.
        n_shape, n_texture: how many of the model's components are latent (200 as in the paper).
        model: a :class:`~probgraphics.morphable.MorphableModel`; the bundled synthetic one by
            default, or e.g. ``MorphableModel.from_bfm(path)``.
        backend: rasterizer backend, ``"auto"`` (numba on CPU without gradients, else torch),
            ``"numba"`` or ``"torch"``.
        pose_range: (low, high) degrees of the azimuth and elevation priors.
        light_range: (low, high) degrees of the light's azimuth prior.
        light_elevation: fixed elevation of the light above the horizontal, degrees.
        ambient, diffuse: Lambertian shading weights.
        camera_offset: the image-plane offset range: camera x, y in [0, 1] map to
            ``(c - 0.5) * 2 * camera_offset`` in normalized device coordinates.
        camera_scale: (low, high) of the weak-perspective scale the camera's third coordinate maps
            to (NDC units per model unit).
        supersample: point samples per pixel side, >= 1: each pixel is the mean of
            ``supersample**2`` samples of the rasterizer (box-filter anti-aliasing), so its value
            moves in small steps as an edge crosses it. Costs about ``supersample**2`` times the
            pixel work of a render.
        silhouette_blur: width in pixels of the halo that softens the face's outline against
            the background (``render_mesh``'s "Soft silhouettes"), >= 0; 0 (default) draws hard
            edges. Above 0 the image changes continuously as the face moves (except where the
            face occludes itself) and its gradients reach the outline; a render costs about
            2.5 times the hard one on CPU (numba path; the torch path's halo is slower).

    Returns:
        A :class:`FaceProgram`, a Pyro model taking no arguments.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8:
        raise ValueError(
            f"resolution must be an int >= 8 (pixels), got {resolution!r}; try 64 or 150."
        )
    if isinstance(supersample, bool) or not isinstance(supersample, int) or supersample < 1:
        raise ValueError(
            f"supersample must be an int >= 1 (samples per pixel side), got {supersample!r}; "
            "try 1 (none) or 3."
        )
    if color not in ("gray", "rgb"):
        raise ValueError(f"color must be 'gray' or 'rgb', got {color!r}")
    silhouette_blur = check_silhouette_blur("face", silhouette_blur)
    noise = _check_noise(noise, "face")
    if backend not in ("auto", "numba", "torch"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}")
    if model is None:
        model = MorphableModel.synthetic()
    if not isinstance(model, MorphableModel):
        raise TypeError(f"model must be a MorphableModel, got {type(model).__name__}")
    for name, k, available in (
        ("n_shape", n_shape, model.n_shape),
        ("n_texture", n_texture, model.n_texture),
    ):
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= available:
            raise ValueError(
                f"{name} must be an int in [1, {available}] (the model's components), got {k!r}"
            )
    smin, smax = (float(s) for s in camera_scale)
    if not 0 < smin <= smax:
        raise ValueError(
            f"camera_scale must be (low, high) with 0 < low <= high, got {camera_scale!r}"
        )
    if not 0 <= camera_offset < 1:
        raise ValueError(f"camera_offset must be in [0, 1), got {camera_offset!r}")
    return FaceProgram(
        resolution=resolution,
        color=color,
        noise=noise,
        model=model,
        backend=backend,
        n_shape=n_shape,
        n_texture=n_texture,
        pose_range=_check_range("pose_range", pose_range, -180.0, 180.0),
        light_range=_check_range("light_range", light_range, -180.0, 180.0),
        light_elevation=float(light_elevation),
        ambient=float(ambient),
        diffuse=float(diffuse),
        camera_offset=float(camera_offset),
        camera_scale=(smin, smax),
        supersample=supersample,
        silhouette_blur=silhouette_blur,
    )
