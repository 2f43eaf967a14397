"""Triangle meshes ready for texturing: canonical placement, one UV per vertex, tangent frames.

Conventions (UV origin, tangent handedness) are in docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Mesh:
    """A canonicalized triangle mesh with a single index buffer (glTF style).

    positions: [V,3] float32, centred at the origin, longest bbox side = 2.
    faces:     [F,3] int64 indices into every per-vertex array.
    uvs:       [V,2] float32, glTF convention (origin top-left, v down).
    normals:   [V,3] float32 unit vertex normals.
    tangents:  [V,4] float32, xyz unit tangent along +u, w = handedness (+1/-1).
    uv_source: "existing" when the file's UVs were usable, "xatlas" when we unwrapped.
    stats:     facts for metadata.json (source format, original counts, scale, ...).
    """

    positions: torch.Tensor
    faces: torch.Tensor
    uvs: torch.Tensor
    normals: torch.Tensor
    tangents: torch.Tensor
    uv_source: str
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def num_vertices(self) -> int:
        return int(self.positions.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def to(self, device: torch.device | str) -> "Mesh":
        return Mesh(
            positions=self.positions.to(device),
            faces=self.faces.to(device),
            uvs=self.uvs.to(device),
            normals=self.normals.to(device),
            tangents=self.tangents.to(device),
            uv_source=self.uv_source,
            stats=dict(self.stats),
        )
