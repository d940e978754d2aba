"""Procedural training pairs with exact ground-truth flow, in the spirit of FlyingChairs/AutoFlow.

A scene is a stack of layers (Dosovitskiy et al., ICCV 2015, "FlowNet"; Sun et al., CVPR 2021,
"AutoFlow"): a moving background plane at the bottom and a few textured shapes with sharp edges
on top, each with its own motion. A layer paints its texture in its own *texture coordinates*
``c`` (one unit = one texel), and both frames are rendered by backward mapping each pixel ``x``
to the texture coordinates of the topmost layer that covers it:

- frame 1: ``c = A1^-1(x)``, with ``A1`` the layer's affine map, inverted exactly;
- frame 2: ``c = A2^-1(x + d(x))``, with ``A2`` the moved affine map and ``d`` a smooth
  non-rigid deformation (a sum of plane waves, `Waves`).

The flow at a frame-1 pixel ``p`` is ``q - p``, where ``q`` is where the texture point
``c = A1^-1(p)`` of the layer visible at ``p`` lands in frame 2: the solution of
``q + d(q) = A2(c)``. It is found by the fixed-point iteration ``q <- A2(c) - d(q)``, run until
the error bound is below `TOLERANCE` (1e-10 px). Every deformation has a Lipschitz constant
``L <= MAX_LIPSCHITZ = 0.5``, and ``L < 1`` is what makes this exact: ``x -> x + d(x)`` is then a
bijection of the plane (``|x + d(x) - y - d(y)| >= (1 - L) |x - y|``), so frame 2 never folds
over itself and each texture point has one position in it, and the iteration is a contraction
that converges to that position from anywhere, its error shrinking by ``L`` per step
(``L <= 0.5`` keeps that to a few dozen steps at worst). The flow is thus known at every pixel
(``valid`` is all True, as in `unroll.data.datasets.Sample`: "ground truth known"); a pixel is
``occluded`` unless the same layer is on top at ``q`` in frame 2 and ``q`` lies inside the image.

Photometric changes (blur, contrast, brightness, noise) are applied to the rendered frames
afterwards and do not touch the flow.

Conventions: frames ``(H, W, 3)`` float32 on 0..255; flow ``(H, W, 2)`` float32 ``(u, v)`` in
pixels, pixel ``(x, y)`` of frame 1 moves to ``(x + u, y + v)`` in frame 2; ``valid`` and
``occluded`` ``(H, W)`` bool. Points are ``(2, N)`` float64 arrays, rows ``x`` and ``y``.

Modules, each importing only those above it: `motion` (affine maps, `Waves`), `shapes`,
`textures`, `config` (`SyntheticConfig`), `layer` (`Layer`, the fixed-point iteration), `scene`
(`Scene`, the renderer), `sampling` (`sample_scene`), `pairs` (`generate_pair`,
`SyntheticDataset`, photometric changes).

Example:
    >>> pair = generate_pair(SyntheticConfig(size=(64, 80)), seed=0)
    >>> pair["frame1"].shape, pair["flow"].shape, bool(pair["valid"].all()), pair["occluded"].dtype
    ((64, 80, 3), (64, 80, 2), True, dtype('bool'))
"""

from unroll.data.synthetic.config import SyntheticConfig
from unroll.data.synthetic.layer import TOLERANCE, Layer
from unroll.data.synthetic.motion import MAX_LIPSCHITZ, WAVE_SLOPE, Waves
from unroll.data.synthetic.pairs import SyntheticDataset, generate_pair
from unroll.data.synthetic.sampling import sample_scene
from unroll.data.synthetic.scene import Scene
from unroll.data.synthetic.shapes import Blob, Ellipse, Plane, Polygon
from unroll.data.synthetic.textures import Texture

__all__ = ["SyntheticConfig", "generate_pair", "SyntheticDataset", "sample_scene", "Scene",
           "Layer", "Texture", "Waves", "Plane", "Ellipse", "Polygon", "Blob",
           "MAX_LIPSCHITZ", "TOLERANCE", "WAVE_SLOPE"]
