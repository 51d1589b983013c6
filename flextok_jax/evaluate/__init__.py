"""Evaluation: reconstructions per token count, image grids, and the feature networks and
metrics of the field (Inception-v3 FID / IS / precision-recall, DINOv2 and FD-DINOv2)."""
from flextok_jax.evaluate.dinov2 import (
    DinoV2,
    DinoV2Config,
    cls_features,
    load_dinov2,
    make_repa_teacher,
    patch_features,
)
from flextok_jax.evaluate.fid import (
    FeatureStats,
    StatsAccumulator,
    feature_statistics,
    frechet_distance,
    stats_distance,
)
from flextok_jax.evaluate.grid import grid_image, save_labelled_grid, save_png
from flextok_jax.evaluate.inception import InceptionV3FID, convert_pytorch_fid_checkpoint, load_inception
from flextok_jax.evaluate.inception_score import inception_score
from flextok_jax.evaluate.precision_recall import precision_recall
from flextok_jax.evaluate.reconstruct import (
    evaluate_run,
    format_error_table,
    held_out_images,
    reconstruct_by_k,
    reconstruction_errors,
    save_loss_curve,
    save_reconstructions,
)
from flextok_jax.evaluate.reference_batch import load_reference_batch, load_reference_stats, save_reference_batch
from flextok_jax.model.flextok import token_budgets

__all__ = [
    "DinoV2",
    "DinoV2Config",
    "FeatureStats",
    "InceptionV3FID",
    "StatsAccumulator",
    "cls_features",
    "convert_pytorch_fid_checkpoint",
    "evaluate_run",
    "feature_statistics",
    "format_error_table",
    "frechet_distance",
    "grid_image",
    "held_out_images",
    "inception_score",
    "load_dinov2",
    "load_inception",
    "load_reference_batch",
    "load_reference_stats",
    "make_repa_teacher",
    "patch_features",
    "precision_recall",
    "reconstruct_by_k",
    "reconstruction_errors",
    "save_labelled_grid",
    "save_loss_curve",
    "save_png",
    "save_reconstructions",
    "save_reference_batch",
    "stats_distance",
    "token_budgets",
]
