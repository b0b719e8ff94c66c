"""Scene programs: ordinary Pyro models that sample scene latents and render them.

Each bundled program is built by a function that binds its configuration and is registered by name:

>>> import probgraphics as pg
>>> program = pg.programs.get("face", resolution=32)   # same as pg.programs.face(resolution=32)
>>> scene = pg.programs.simulate(program, seed=0)       # one scene, unbatched
>>> tuple(scene["image"].shape), tuple(scene["shape"].shape)
((1, 32, 32), (200,))
"""

from probgraphics.programs.dcign import DCIGNProgram, dcign
from probgraphics.programs.face import FaceProgram, face
from probgraphics.programs.registry import available, get, register
from probgraphics.programs.sbibm_tasks import SBIBMTask, sbibm_task
from probgraphics.programs.simulate import simulate
from probgraphics.programs.simulator import SimulatorProgram, simulator
from probgraphics.programs.toy import linear_gaussian
from probgraphics.programs.voxel import VoxelProgram, voxel

__all__ = [
    "DCIGNProgram",
    "FaceProgram",
    "SBIBMTask",
    "SimulatorProgram",
    "VoxelProgram",
    "available",
    "face",
    "get",
    "linear_gaussian",
    "register",
    "sbibm_task",
    "simulate",
    "simulator",
    "voxel",
    "dcign",
]
