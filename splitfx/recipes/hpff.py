"""``hpff``: Hierarchical local learning with Patch Feature Fusion (Su et al., ECCV 2024).

Published (public code, CIFAR): independent and cascade paths (the loop of :mod:`.cascade`), loss
of block k ≥ 1 = ``wx·CE(independent classifier(B_k(x_k))) + wy·[λ1·PatchDecoder(z_k) +
λ2·CE(cascade classifier(z_k))]`` with (wx, wy) = (0.001, 0.999); each path has its own "2c2f"
classifier (2 × [conv3×3 → BN → ReLU] → GAP → Linear(128) → ReLU → Linear); the patch decoder is
four decoders, each reconstructing one image quadrant from the same quadrant of the features, the
four losses summed; λ linear in the cut index over K−2 from (λ1, λ2) = (5, 0.5) to (0, 0), the
README's command. Block 0 has no loss of its own; the last block uses the model's head on both paths.
Options: ``wx``, ``wy``, ``lambda1``, ``lambda2`` ((first cut, last cut)), ``recompute``.

Departures, and why:
- The published terms are grouped so that each loss runs two neighbouring blocks once (loss k =
  ``wx·I_k + wy·C_{k+1}``, :mod:`.cascade`): the summed gradients are the same, and a step holds two
  blocks where the public code holds block k twice beside block k−1. K = 2 is refused: its first
  loss would run the whole network.
- Each quadrant decoder is InfoPro's channel-reducing decoder (:mod:`.decoders`) at half the image
  size, not the CIFAR decoder that upsamples every channel first: same output, a fraction of the
  memory at 224². MSE on the input as given instead of Sigmoid + BCE (autocast-safe).
- None: terms whose λ is 0 (the last aux cut's cascade, by default) are computed at weight 0, as the
  public code does, so which blocks a loss reaches never depends on K. Note what that means at
  K = 3: block 0's only signal is block 1's cascade, at the last aux cut, so it gets zero gradient
  with the default λ, as it would in the public code; give e.g. ``lambda2=(0.5, 0.1)`` there.
- Patch feature fusion lowers memory (``recompute=True``, default): each quadrant's decoder is
  recomputed in backward on its own (:class:`~.decoders.PatchDecoder`), so the head keeps no decoder
  activations and backward holds one quadrant's. The public code runs the four decoders whole, and
  there fusion on and off keep the same bytes (METHODS.md); ``recompute=False`` does that. On
  ImageNet-sized inputs both paths' classifiers are the authors' ImageNet head where it keeps fewer
  bytes than 2c2f (:func:`~.heads.imagenet_lighter`: maps of 177 channels or more).
- A map with no 2×2 quadrants, a token sequence with no grid or a non-image input has no patch
  decoder (the cascade keeps its classifier); token grids drop the model's prefix tokens.
"""
from __future__ import annotations

from torch import nn

from .base import Boundary, GraphInfo
from .cascade import Cascade, CascadeHead
from .decoders import PatchDecoder
from .heads import NoHead, Scored
from .infopro import InfoProHead, Lambdas, classifier
from .registry import register_recipe
from .values import flag


class PatchCascade(InfoProHead):
    """HPFF's cascade path: the patch decoder (``decoder``) and a 2c2f classifier, weighted by λ."""

    def __init__(self, spec, shape, image_shape, recon: float, task: float, classifier, recompute: bool = True):
        super().__init__(spec, shape, image_shape, 0.0, 1.0, classifier)
        self.weights = {"task": task}
        if PatchDecoder.fits(spec, shape, image_shape):
            self.decoder = PatchDecoder(spec, shape, image_shape, recompute)
            self.weights = {"recon": recon, "task": task}


@register_recipe("hpff")
class HPFF(Cascade, Lambdas):
    paper = "Su et al., ECCV 2024"
    every_cut = False  # a cut whose λ are both 0 keeps the independent path's term

    def __init__(self, wx: float = 0.001, wy: float = 0.999, lambda1=(5.0, 0.0), lambda2=(0.5, 0.0),
                 recompute: bool = True):
        Cascade.__init__(self, wx, wy)
        Lambdas.__init__(self, lambda1, lambda2)
        self.recompute = flag("recompute", recompute)

    def make_head(self, boundary: Boundary, graph: GraphInfo) -> nn.Module:
        if boundary.index == 0:
            return NoHead()
        recon, task = self.weights(boundary)
        spec = graph.spec(boundary.shape, boundary.layout, boundary.input_shape)
        build = classifier(boundary, graph, boundary.shape, boundary.layout, convs=2)
        independent = Scored(build())
        cascade = PatchCascade(spec, boundary.shape, boundary.input_shape, recon, task, build, self.recompute)
        return CascadeHead(independent, cascade)

