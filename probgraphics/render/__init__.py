"""Renderers: a batched mesh rasterizer and voxel-grid operations.

* :func:`render_mesh` draws triangle meshes (Gouraud-shaded, Lambertian, weak perspective) for a
  batch of scenes, with a numba CPU kernel and a differentiable torch path (any device).
* :func:`rotate_about_vertical`, :func:`project` and :func:`voxelize` work on occupancy grids.

This package never imports Pyro; it is plain tensors in, tensors out.
"""

from __future__ import annotations

from probgraphics.render.mesh import RenderOutput, render_mesh, rotation_matrix, vertex_normals
from probgraphics.render.voxel import project, rotate_about_vertical, voxelize

__all__ = [
    "RenderOutput",
    "render_mesh",
    "rotation_matrix",
    "vertex_normals",
    "rotate_about_vertical",
    "project",
    "voxelize",
]
