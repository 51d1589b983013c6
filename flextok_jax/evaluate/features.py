"""Feature networks for Fréchet distances: one interface over Inception-v3, DINOv2 and the
project's Fashion-MNIST classifier.

A ``FeatureNetwork`` maps images [B, H, W, 3] in [-1, 1] (NHWC) to features [B, dim] and, when
the network has a classifier, logits [B, classes] (for the Inception Score). ``features`` is one
jitted program over the global batch: on a mesh the images are split over its batch axes, the
weights replicated, and the outputs keep the batch sharding.

- ``inception``: pytorch-fid's Inception-v3 pool3 (2048) -> FID; logits without the classifier
  bias (1008) -> IS, as the ADM evaluator.
- ``dinov2``: the DINOv2 class token at 224 px -> FD-DINOv2; no logits.
- ``fmnist``: the penultimate layer (128) of the Fashion-MNIST classifier
  (``evaluate.classifier``) -> FID-FMNIST, a proxy for small runs: **not comparable to Inception
  FID**; its 10 logits give an "IS-FMNIST".
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flextok_jax.evaluate import classifier
from flextok_jax.evaluate.dinov2 import cls_features, load_dinov2
from flextok_jax.evaluate.inception import FEATURE_DIM, NUM_CLASSES, load_inception
from flextok_jax.parallel import batch_sharding, mesh_batch_axes

NETWORKS = ("inception", "dinov2", "fmnist")
FMNIST_NOTE = "not comparable to Inception FID"

# (params, images [B, H, W, 3] in [-1, 1]) -> (features [B, dim], logits [B, C] or None)
FeatureFn = Callable[[Any, jax.Array], tuple[jax.Array, jax.Array | None]]


class FeatureNetwork:
    """A named feature extractor: ``features(images [B, H, W, 3] in [-1, 1]) -> (features
    float32 [B, dim], logits [B, num_classes] or None)``.

    ``metric``: what the Fréchet distance of its features is called (FID, FD-DINOv2,
    FID-FMNIST); ``note``: printed next to every number (e.g. that FID-FMNIST is a proxy);
    ``weights``: the file the parameters came from (None: given in memory).
    """

    def __init__(self, name: str, metric: str, dim: int, fn: FeatureFn, params: Any, *,
                 num_classes: int | None = None, weights: str | None = None, note: str = "") -> None:
        self.name, self.metric, self.dim, self.note = name, metric, int(dim), note
        self.num_classes, self.weights = num_classes, weights
        self._fn, self._params = fn, params
        self._programs: dict[Any, tuple[Callable[..., Any], Any]] = {}

    @property
    def has_logits(self) -> bool:
        return self.num_classes is not None

    @property
    def label(self) -> str:
        """The metric's name with its note, as printed: 'FID-FMNIST, not comparable to Inception FID'."""
        return f"{self.metric}, {self.note}" if self.note else self.metric

    def describe(self) -> dict[str, Any]:
        """JSON-able identity (results.json, the resume plan)."""
        return {"name": self.name, "metric": self.metric, "label": self.label, "dim": self.dim,
                "num_classes": self.num_classes, "weights": None if self.weights is None else os.path.abspath(self.weights)}

    def _program(self, mesh: Mesh | None) -> tuple[Callable[..., Any], Any]:
        key = mesh  # Mesh is hashable; None: the default device
        if key not in self._programs:
            if mesh is None:
                self._programs[key] = (jax.jit(self._fn), jax.tree_util.tree_map(jnp.asarray, self._params))
            else:
                rows = batch_sharding(mesh, mesh_batch_axes(mesh))
                params = jax.device_put(self._params, NamedSharding(mesh, P()))
                out = (rows, rows if self.has_logits else None)
                self._programs[key] = (jax.jit(self._fn, out_shardings=out), params)
        return self._programs[key]

    def features(self, images: Any, mesh: Mesh | None = None) -> tuple[jax.Array, jax.Array | None]:
        """images [B, H, W, 3] in [-1, 1] -> (features [B, dim], logits [B, C] or None).

        With ``mesh``: numpy input is laid out with the batch sharding (B divisible by the batch
        shards); a jax.Array is used as it is placed. Outputs are batch-sharded on the mesh.
        """
        program, params = self._program(mesh)
        if mesh is not None and not isinstance(images, jax.Array):
            images = jax.device_put(np.asarray(images, np.float32),
                                    batch_sharding(mesh, mesh_batch_axes(mesh)))
        feats, logits = program(params, images)
        if feats.shape[-1] != self.dim:
            raise ValueError(f"{self.name} returned features of width {feats.shape[-1]}, declared {self.dim}")
        return feats, logits


def _require_file(path: str | os.PathLike, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} weights file not found: {path}")
    return path


def inception_network(weights: str | os.PathLike | None = None, *, model_params: tuple[Any, Any] | None = None,
                      precision: str | None = "highest") -> FeatureNetwork:
    """pytorch-fid's Inception-v3 (``load_inception``) from a safetensors file, or a given
    (model, params) pair: pool3 [B, 2048] and the bias-free logits [B, 1008]."""
    if model_params is None:
        if weights is None:
            raise ValueError("inception_network needs a weights file (or model_params)")
        model, params = load_inception(_require_file(weights, "Inception-v3"), precision)
    else:
        model, params = model_params

    def fn(p: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = model.apply({"params": p}, images)
        return out["pool3"], out["logits_unbiased"]

    return FeatureNetwork("inception", "FID", FEATURE_DIM, fn, params, num_classes=NUM_CLASSES,
                          weights=None if weights is None else os.fspath(weights))


def dinov2_network(weights: str | os.PathLike | None = None, *, model_params: tuple[Any, Any] | None = None,
                   num_heads: int | None = None) -> FeatureNetwork:
    """DINOv2 (``load_dinov2``) class-token features at 224 px [B, D] for FD-DINOv2; no logits."""
    if model_params is None:
        if weights is None:
            raise ValueError("dinov2_network needs a weights file (or model_params)")
        model, params = load_dinov2(_require_file(weights, "DINOv2"), num_heads)
    else:
        model, params = model_params

    def fn(p: Any, images: jax.Array) -> tuple[jax.Array, None]:
        return cls_features(model, p, images), None

    return FeatureNetwork("dinov2", "FD-DINOv2", model.config.embed_dim, fn, params,
                          weights=None if weights is None else os.fspath(weights))


def fmnist_network(weights: str | os.PathLike | dict) -> FeatureNetwork:
    """The Fashion-MNIST classifier's penultimate features [B, 128] and logits [B, 10], from its
    ``save_classifier`` file or from its parameters. Images must be 32x32 (grey or RGB)."""
    if isinstance(weights, dict):
        params, path = weights, None
    else:
        path = _require_file(weights, "Fashion-MNIST classifier")
        params = classifier.load_classifier(path)

    def fn(p: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        if images.shape[1:3] != (classifier.IMAGE_SIZE, classifier.IMAGE_SIZE):
            raise ValueError(f"the fmnist network takes 32x32 images, got {images.shape}")
        return classifier.features_and_logits(p, images)

    return FeatureNetwork("fmnist", "FID-FMNIST", classifier.FEATURE_DIM, fn, params,
                          num_classes=len(classifier.CLASS_NAMES), weights=path, note=FMNIST_NOTE)


def get_network(name: str, weights: str | os.PathLike, **kwargs: Any) -> FeatureNetwork:
    """``name`` in NETWORKS -> its FeatureNetwork from the weights file (missing file: an error naming it)."""
    factories = {"inception": inception_network, "dinov2": dinov2_network, "fmnist": fmnist_network}
    if name not in factories:
        raise ValueError(f"unknown feature network {name!r}; expected one of {NETWORKS}")
    return factories[name](weights, **kwargs)
