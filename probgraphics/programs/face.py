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
from probgraphics.render._torch_raster import (
    barycentric_weights,
    camera_transform,
    halo_pairs,
    vertex_normals,
)
from probgraphics.render.mesh import check_silhouette_blur

__all__ = ["FaceProgram", "face"]

# ITU-R BT.601 luma weights: grayscale albedo = RGB albedo @ _LUMA.
_LUMA = (0.299, 0.587, 0.114)

# Depth is camera_distance - z_cam (render_mesh's default); it only decides visibility here.
_CAMERA_DISTANCE = 10.0

# render_mesh's default, which the face's render keeps.
_CULL_BACKFACES = True

# The latent sites affine_observation offers a map for.
_AFFINE_SITES = ("texture",)


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
        self._affine_bases: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

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
        texture = pyro.sample("texture", dist.Normal(0.0, 1.0).expand([self.n_texture]).to_event(1))
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
        albedo_mean, albedo_matrix = self._basis(shape.device)[2:4]
        mesh = self._mesh_arguments(
            batch, shape=shape, azimuth=azimuth, elevation=elevation, light=light, camera=camera
        )
        # The texture product: one matmul over the whole batch (with the shape's, the hot path).
        texture = _flatten(texture, batch, (self.n_texture,))
        albedo = torch.addmm(albedo_mean, texture, albedo_matrix)
        albedo = albedo.reshape(n, albedo_mean.numel() // self.channels, self.channels)
        albedo = albedo.clamp(0.0, 1.0)
        image = render_mesh(albedo=albedo, **mesh).image
        if self.supersample > 1:
            # A camera pixel integrates light over its area: the mean of s x s point samples.
            # It turns each silhouette pixel's jump between face and background into steps
            # s^2 times smaller, so the likelihood over pose has no tall cliffs between plateaus.
            image = torch.nn.functional.avg_pool2d(image, self.supersample)
        return image.reshape(*batch, self.channels, self.resolution, self.resolution)

    def _mesh_arguments(
        self,
        batch: torch.Size,
        *,
        shape: torch.Tensor,
        azimuth: torch.Tensor,
        elevation: torch.Tensor,
        light: torch.Tensor,
        camera: torch.Tensor,
    ) -> dict:
        """Every keyword argument of ``render_mesh`` but the albedo, for ``prod(batch)`` scenes.

        The one place where the latents become geometry: the vertices (shape basis product),
        rotation, light direction, camera offset and scale, shading weights, image size (at the
        supersampled resolution), backend and silhouette blur. Tensors are flattened to one
        batch dimension ``n = prod(batch)``, float32, on ``shape``'s device.
        """
        shape_mean, shape_matrix, _, _, triangles = self._basis(shape.device)
        n = math.prod(batch)
        vertices = torch.addmm(shape_mean, _flatten(shape, batch, (self.n_shape,)), shape_matrix)
        rotation = rotation_matrix(
            torch.deg2rad(_flatten(azimuth, batch, ())),
            torch.deg2rad(_flatten(elevation, batch, ())),
        )
        light_angle = torch.deg2rad(_flatten(light, batch, ()))
        light_up = math.radians(self.light_elevation)
        light_direction = torch.stack(
            [
                torch.sin(light_angle) * math.cos(light_up),
                torch.full_like(light_angle, math.sin(light_up)),
                torch.cos(light_angle) * math.cos(light_up),
            ],
            dim=-1,
        )
        cam = _flatten(camera, batch, (3,))
        offset = (cam[:, :2] - 0.5) * (2.0 * self.camera_offset)
        smin, smax = self.camera_scale
        scale = smin + (smax - smin) * cam[:, 2]
        return dict(
            vertices=vertices.reshape(n, shape_mean.numel() // 3, 3),
            faces=triangles,
            rotation=rotation,
            scale=scale,
            offset=offset,
            light_direction=light_direction,
            ambient=self.ambient,
            diffuse=self.diffuse,
            image_size=(self.resolution * self.supersample,) * 2,
            camera_distance=_CAMERA_DISTANCE,
            backend=self.backend,
            silhouette_blur=self.silhouette_blur * self.supersample,
        )

    # -- the observation as an affine function of one latent ----------------------------------
    def _affine_basis(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The albedo basis per (channel, vertex), cached per device: ``mean (C*V,)`` and
        ``basis (C*V, K)``, row ``c*V + v`` for channel c of vertex v (channel-major, like the
        image's ``(C, H, W)``)."""
        if device not in self._affine_bases:
            _, _, albedo_mean, albedo_matrix, _ = self._basis(device)
            k, c = self.n_texture, self.channels
            mean = albedo_mean.reshape(-1, c).T.reshape(-1)
            basis = albedo_matrix.reshape(k, -1, c).permute(2, 1, 0).reshape(-1, k)
            self._affine_bases[device] = (mean.contiguous(), basis.contiguous())
        return self._affine_bases[device]

    def affine_observation(
        self, site: str, latents: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The noise-free observation as an affine function of one latent site, the others held.

        For the face the one supported site is ``"texture"``: the albedo is ``clamp(mean +
        texture @ basis, 0, 1)`` and, for fixed geometry, the image is linear in the per-vertex
        albedo (Gouraud shading ``albedo * (ambient + diffuse * max(0, n . l))`` interpolated
        with barycentric weights; the background is 0; supersampled pixels are averaged; with
        ``silhouette_blur > 0`` the halo of an uncovered pixel is a weighted mean of vertex
        colours whose weights, like its opacity, depend on the geometry only). So::

            image = render(**{**latents, "texture": x}).reshape(B, -1)
            image == offset + (matrix @ x[..., None]).squeeze(-1)

        **The map ignores the clamp**: it is the affine map of the unclamped albedo, so it equals
        :meth:`render` (to float32 rounding) exactly when no albedo value of a vertex of a
        visible triangle leaves [0, 1] at ``x``; where some is clamped the two differ at the
        pixels that vertex shades. Visibility (which triangle covers which pixel) and the
        halo's geometry (which triangles reach an uncovered pixel, how strongly, at which point
        of which edge) depend on the other latents only, so they are exact.

        The inference engine looks this method up by duck typing and calls it once per MCMC
        step for every chain, so it is built for speed: computed without gradients, it costs one
        rasterization (for the visible triangle of each pixel) plus writing the dense
        ``(B, P, K)`` matrix, which dominates for large batches (about 12-18 ms for 8 gray
        64-pixel scenes with K = 200 on one CPU thread). With ``silhouette_blur > 0`` the halo's
        geometry (torch ops, as ``backend="torch"`` renders it) adds about 20 ms there at
        ``silhouette_blur=0.5`` (it grows with the blur and the supersampling).

        Args:
            site: the latent site to map; only ``"texture"`` is supported.
            latents: site name -> tensor ``(B, *event)`` of constrained values (the keyword
                arguments of :meth:`render` with one leading batch dimension ``B``; any common
                leading batch shape ``S`` broadcast as in :meth:`render` works, giving outputs
                ``(*S, P)`` and ``(*S, P, K)``), for every site of :attr:`latent_sites`. The
                value of ``site`` itself is ignored (and may be left out).

        Returns:
            ``offset`` ``(B, P)`` and ``matrix`` ``(B, P, K)``, float32 on the device of the
            latents (``latents["shape"]``'s; all must share it), not requiring grad, with
            ``P = channels * H * W`` in ``(C, H, W)`` order (that of
            ``render(...).reshape(B, -1)``) and ``K = n_texture``.

        Raises:
            ValueError: for a site other than ``"texture"`` and for missing latents.
        """
        if site not in _AFFINE_SITES:
            raise ValueError(
                f"affine_observation: the face observation is offered as an affine function of "
                f"{_AFFINE_SITES} only, got site {site!r}."
            )
        held = tuple(name for name in self.latent_sites if name != site)
        missing = [name for name in held if name not in latents]
        if missing:
            raise ValueError(
                f"affine_observation: latents is missing the site(s) {missing}; give a value "
                f"(with a leading batch dimension) for every site of {held}."
            )
        shape, azimuth, elevation, light, camera = (latents[name] for name in held)
        with torch.no_grad():
            return self._affine_texture(shape, azimuth, elevation, light, camera)

    def _affine_texture(
        self,
        shape: torch.Tensor,
        azimuth: torch.Tensor,
        elevation: torch.Tensor,
        light: torch.Tensor,
        camera: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`affine_observation` for ``"texture"`` (validated inputs, no gradients)."""
        batch = torch.broadcast_shapes(
            shape.shape[:-1], azimuth.shape, elevation.shape, light.shape, camera.shape[:-1]
        )
        n = math.prod(batch)
        device = shape.device
        channels, k, s = self.channels, self.n_texture, self.supersample
        size = self.resolution * s
        mesh = self._mesh_arguments(
            batch, shape=shape, azimuth=azimuth, elevation=elevation, light=light, camera=camera
        )
        vertices, triangles = mesh["vertices"], mesh["faces"]
        mean, basis = self._affine_basis(device)

        # Visibility from the rasterizer (the albedo does not matter: one zero channel; the halo
        # leaves face ids as they are, so the hard render gives them).
        blank = torch.zeros((), dtype=torch.float32, device=device).expand(n, vertices.shape[1], 1)
        hard = {**mesh, "silhouette_blur": 0.0}
        face_ids = render_mesh(albedo=blank, **hard).face_ids  # (n, size, size)

        # Shading and barycentric weights: the arithmetic of _torch_raster.render.
        camera_space, screen_x, screen_y, _, camera_finite, drawable = camera_transform(
            vertices, mesh["rotation"], mesh["scale"], mesh["offset"], size, size, _CAMERA_DISTANCE
        )
        normals = vertex_normals(camera_space, camera_finite, triangles)
        cosine = (normals * mesh["light_direction"][:, None, :]).sum(-1).clamp_min(0)
        shade = self.ambient + self.diffuse * cosine  # (n, V)

        flat_ids = face_ids.reshape(-1)
        covered = (flat_ids >= 0).nonzero().squeeze(1)
        scene = covered // (size * size)
        pixel = covered % (size * size)
        row, col = pixel // size, pixel % size
        triangle = triangles[flat_ids[covered]]  # (N, 3)
        vertex = scene[:, None] * vertices.shape[1] + triangle  # (N, 3) flat (scene, vertex)
        l0, l1, l2 = barycentric_weights(
            screen_x.reshape(-1)[vertex], screen_y.reshape(-1)[vertex], row, col
        )
        # A supersampled pixel is the mean of its s*s samples (avg_pool2d in render).
        weight = torch.stack([l0, l1, l2], dim=1) * shade.reshape(-1)[vertex] / (s * s)
        n_vertices = vertices.shape[1]
        if self.silhouette_blur > 0:
            # The halo of the uncovered samples, at the supersampled resolution and blur that
            # render gives render_mesh: sample p takes alpha_p * sum_t s_t ((1 - t) colour[a_t]
            # + t colour[b_t]) / sum_t s_t over its (pixel, triangle) pairs t, edge a_t -> b_t:
            # two more weighted vertices per pair (and a zero third, for the covered layout).
            halo = halo_pairs(
                face_ids=face_ids,
                screen_x=screen_x,
                screen_y=screen_y,
                drawable=drawable,
                faces=triangles,
                cull_backfaces=_CULL_BACKFACES,
                blur=mesh["silhouette_blur"],
            )
            if halo is not None:
                # Pairs beyond the kernel's reach add nothing; index_select is much faster than
                # advanced indexing on CPU.
                reaches = (halo.strength > 0).nonzero().squeeze(1)

                def pick(values: torch.Tensor) -> torch.Tensor:
                    return values.index_select(0, reaches)

                halo_pixel = pick(halo.pixel)
                total = halo.weight.index_select(0, halo_pixel)
                scaled = halo.alpha.index_select(0, halo_pixel) * pick(halo.strength)
                scaled = scaled / (total * (s * s))
                ends = pick(torch.cat([halo.first, halo.second], dim=1))  # (M, 2) corners
                ends = pick(halo.vertex).gather(1, ends)  # (M, 2) flat (scene, vertex)
                t = pick(halo.t)
                pair_weight = torch.stack([scaled * (1 - t), scaled * t], dim=1)
                pair_weight = pair_weight * shade.reshape(-1)[ends]
                scene = torch.cat([scene, halo_pixel // (size * size)])
                pixel = torch.cat([pixel, halo_pixel % (size * size)])
                row, col = pixel // size, pixel % size
                triangle = torch.cat([triangle, torch.nn.functional.pad(ends % n_vertices, (0, 1))])
                weight = torch.cat([weight, torch.nn.functional.pad(pair_weight, (0, 1))])

        # Camera pixel c*H*W + (row // s)*W + col // s of each sample, per channel c, takes
        # sum_j weight_j * (mean + basis)[c*V + v_j]. That is a sparse (n*P, C*V) matrix
        # (3 entries per sample and channel) times the basis: embedding_bag computes it with one
        # bag per camera pixel (empty bags are the background's zero rows), writing each row of
        # the dense result once, without a zero fill, a gather of (N, K) rows or a scatter.
        res = self.resolution
        pixels = channels * res * res
        target = scene * pixels + (row // s) * res + col // s
        target = target[:, None] + torch.arange(channels, device=device) * (res * res)  # (N, C)
        channel_rows = torch.arange(channels, device=device)[:, None] * n_vertices
        columns = triangle[:, None, :] + channel_rows  # (N, C, 3)
        values = weight[:, None, :].expand(-1, channels, 3)
        target = target.reshape(-1)
        columns = columns.reshape(-1, 3)
        values = values.reshape(-1, 3)
        if channels > 1 or s > 1 or self.silhouette_blur > 0:
            # Bags must be contiguous: order the entries by camera pixel.
            target, order = torch.sort(target, stable=True)
            columns, values = columns.index_select(0, order), values.index_select(0, order)
        bag_ends = torch.bincount(target, minlength=n * pixels).cumsum(0) * 3
        bag_starts = torch.cat([bag_ends.new_zeros(1), bag_ends])

        def bags(table: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.embedding_bag(
                columns.reshape(-1),
                table,
                bag_starts,
                mode="sum",
                per_sample_weights=values.reshape(-1),
                include_last_offset=True,
            )

        matrix = bags(basis)  # (n*P, K)
        offset = bags(mean[:, None])  # (n*P, 1)
        return offset.reshape(*batch, pixels), matrix.reshape(*batch, pixels, k)


def _flatten(t: torch.Tensor, batch: torch.Size, event: tuple[int, ...]) -> torch.Tensor:
    """``t`` ``(*S', *event)`` broadcast to ``(*batch, *event)`` as float32 ``(prod(batch),
    *event)``."""
    return t.to(torch.float32).expand(tuple(batch) + event).reshape(math.prod(batch), *event)


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
